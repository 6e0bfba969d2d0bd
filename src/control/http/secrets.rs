//! Secrets inside resources: a DataSource's backend `password` and its proxy users'
//! passwords, and a Certificate's private `key`, are sealed before they are stored
//! (AES-256-GCM under the cluster's data key, bound to the object and the field), so the
//! store, its snapshots and backups, the audit trail, watches and `tessera get` carry
//! only `enc:v1:…`.
//!
//! Only the role that uses them gets them opened, in list, get and watch answers: the DB
//! proxies for `datasources`, the gateways for `certificates`. An admin who needs one
//! resets it. The data key is made on the first
//! sealed write and kept in the reserved `/tessera/pki/` space (never readable through
//! the KV API).
//!
//! With `control.kek_file` (a key-encryption key kept outside the data dir, the same on
//! every control node) the data key is stored wrapped with it (AES-256-GCM), so a
//! control node's disk, or a backup, opens no secret without the KEK. A data key stored
//! before a KEK was configured is wrapped at the next secret write. Without a KEK the
//! data key lives in the same store as the values it seals: that keeps secrets out of
//! every API answer, export and audit record, not away from someone holding the disk.

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, Op};
use crate::model::{Kind, Resource};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde_json::Value;

pub const DATA_KEY: &str = "/tessera/pki/datakey";
const SEALED: &str = crate::model::SEALED_PREFIX;

pub type DataKey = [u8; 32];

fn parse_key(v: &str) -> Option<DataKey> {
    let b = crate::util::unhex(v.trim())?;
    b.try_into().ok()
}

/// What a wrapped data key is bound to.
const KEK_AAD: &str = "tessera data key";

/// The data key if one was made, and whether it is stored wrapped with a KEK.
fn read_key(s: &ApiState) -> Result<Option<(DataKey, bool, u64)>, ApiError> {
    let (kv, _) = s
        .node
        .store()
        .get(DATA_KEY)
        .map_err(|e| ApiError::internal("data key read", e))?;
    let Some(kv) = kv else {
        return Ok(None);
    };
    let v = kv.value.trim();
    if !v.starts_with(SEALED) {
        return Ok(parse_key(v).map(|k| (k, false, kv.mod_revision)));
    }
    let Some(kek) = &s.kek else {
        return Err(ApiError::unavailable(
            "the cluster's data key is wrapped with a key-encryption key and this control node has none: set control.kek_file (the same file on every control node)",
        ));
    };
    let plain = open(kek, KEK_AAD, v).ok_or_else(|| {
        ApiError::unavailable(
            "control.kek_file does not open the cluster's data key: it is not the key-encryption key the data key was wrapped with",
        )
    })?;
    Ok(parse_key(&plain).map(|k| (k, true, kv.mod_revision)))
}

/// The data key if one was made.
pub fn stored_key(s: &ApiState) -> Result<Option<DataKey>, ApiError> {
    Ok(read_key(s)?.map(|(k, _, _)| k))
}

/// The data key, made now (once, cluster-wide) when there is none, and wrapped with the
/// KEK when one is configured and the key is not yet. Leader only.
pub async fn data_key(s: &ApiState) -> Result<DataKey, ApiError> {
    let (key, expect) = match read_key(s)? {
        Some((k, wrapped, _)) if wrapped || s.kek.is_none() => return Ok(k),
        Some((k, _, rev)) => (k, rev),
        None => (
            crate::util::random_bytes::<32>().map_err(|e| ApiError::internal("data key", e))?,
            0,
        ),
    };
    let value = match &s.kek {
        Some(kek) => seal(kek, KEK_AAD, &crate::util::hex(&key))?,
        None => crate::util::hex(&key),
    };
    let cmd = Command::Txn {
        compare: vec![Compare {
            key: DATA_KEY.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(expect),
        }],
        success: vec![Op::Put {
            key: DATA_KEY.into(),
            value,
            lease: 0,
        }],
        failure: Vec::new(),
    };
    s.node
        .write(cmd)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if expect != 0 {
        tracing::info!(
            "Wrapped the cluster's data key with the key-encryption key (control.kek_file)"
        );
    }
    stored_key(s)?.ok_or_else(|| ApiError::internal("data key", "missing after it was written"))
}

fn seal(key: &DataKey, aad: &str, plain: &str) -> Result<String, ApiError> {
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| ApiError::internal("seal", "bad key"))?,
    );
    let nonce_bytes =
        crate::util::random_bytes::<NONCE_LEN>().map_err(|e| ApiError::internal("seal", e))?;
    let mut data = plain.as_bytes().to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad.as_bytes()),
        &mut data,
    )
    .map_err(|_| ApiError::internal("seal", "encryption failed"))?;
    let mut out = nonce_bytes.to_vec();
    out.extend(data);
    Ok(format!("{SEALED}{}", crate::util::hex(&out)))
}

fn open(key: &DataKey, aad: &str, sealed: &str) -> Option<String> {
    let raw = crate::util::unhex(sealed.strip_prefix(SEALED)?)?;
    if raw.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut data = rest.to_vec();
    let plain = k
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// The secret fields of a spec: (JSON pointer, associated data).
fn fields(kind: Kind, name: &str, spec: &Value) -> Vec<(String, String)> {
    if kind == Kind::Certificate {
        return vec![("/key".to_string(), format!("certificates/{name}/key"))];
    }
    let mut out = vec![(
        "/password".to_string(),
        format!("datasources/{name}/password"),
    )];
    if let Some(users) = spec.get("proxyUsers").and_then(Value::as_array) {
        for (i, u) in users.iter().enumerate() {
            let user = u.get("name").and_then(Value::as_str).unwrap_or_default();
            out.push((
                format!("/proxyUsers/{i}/password"),
                format!("datasources/{name}/proxyUsers/{user}"),
            ));
        }
    }
    out
}

/// `/proxyUsers/0/password` → `spec.proxyUsers[0].password`.
fn field_name(ptr: &str) -> String {
    let mut out = String::from("spec");
    for part in ptr.split('/').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            out.push('.');
            out.push_str(part);
        }
    }
    out
}

/// Does this kind carry secrets?
pub fn has_secrets(kind: Kind) -> bool {
    reader(kind).is_some()
}

/// The one role that reads this kind's secrets opened.
fn reader(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::DataSource => Some("dbproxy"),
        Kind::Certificate => Some("gateway"),
        _ => None,
    }
}

/// Seals every plain secret in `spec` (a value equal to what `current` holds keeps its
/// sealed form, so reapplying a file changes nothing); a sealed value must be one this
/// cluster sealed for this very field.
pub fn seal_spec(
    key: &DataKey,
    kind: Kind,
    name: &str,
    spec: &mut Value,
    current: Option<&Value>,
) -> Result<(), ApiError> {
    for (ptr, aad) in fields(kind, name, spec) {
        let Some(v) = spec
            .pointer(&ptr)
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        let field = field_name(&ptr);
        if v.starts_with(SEALED) {
            if open(key, &aad, &v).is_none() {
                return Err(ApiError::bad_field(
                    field,
                    "a sealed value (enc:v1:...) that this cluster did not seal for this field; give it in plain text",
                ));
            }
            continue;
        }
        let kept = current
            .and_then(|c| c.pointer(&ptr))
            .and_then(Value::as_str)
            .filter(|c| open(key, &aad, c).as_deref() == Some(v.as_str()))
            .map(str::to_string);
        let sealed = match kept {
            Some(c) => c,
            None => seal(key, &aad, &v)?,
        };
        if let Some(slot) = spec.pointer_mut(&ptr) {
            *slot = Value::String(sealed);
        }
    }
    Ok(())
}

/// Opens the secrets of `r` for the role that uses them; others see them sealed.
pub fn reveal(s: &ApiState, caller: &Caller, kind: Kind, r: &mut Resource) {
    if reader(kind) != Some(caller.role.as_str()) {
        return;
    }
    let key = match stored_key(s) {
        Ok(Some(key)) => key,
        Ok(None) => return,
        Err(e) => {
            // A missing or wrong KEK: the reader gets the sealed form, and the reason
            // is here.
            tracing::warn!(kind = kind.singular(), name = %r.metadata.name, reader = %caller.user, error = %e.message, "Cannot open secrets for their reader");
            return;
        }
    };
    let name = r.metadata.name.clone();
    for (ptr, aad) in fields(kind, &name, &r.spec) {
        let opened = r
            .spec
            .pointer(&ptr)
            .and_then(Value::as_str)
            .and_then(|v| open(&key, &aad, v));
        if let (Some(plain), Some(slot)) = (opened, r.spec.pointer_mut(&ptr)) {
            *slot = Value::String(plain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_data_key_opens_with_its_kek_only() {
        let (kek, other) = ([1u8; 32], [2u8; 32]);
        let key = [9u8; 32];
        let wrapped = seal(&kek, KEK_AAD, &crate::util::hex(&key)).unwrap();
        assert!(wrapped.starts_with(SEALED));
        let opened = open(&kek, KEK_AAD, &wrapped).and_then(|p| parse_key(&p));
        assert_eq!(opened, Some(key));
        assert_eq!(open(&other, KEK_AAD, &wrapped), None);
        assert_eq!(open(&kek, "another use", &wrapped), None);
    }

    #[test]
    fn sealing_is_bound_to_its_field_and_reapplying_keeps_the_sealed_form() {
        let key = [7u8; 32];
        let mut spec = serde_json::json!({
            "password": "backend",
            "proxyUsers": [{"name": "app", "password": "p1"}, {"name": "ro", "password": "p2"}]
        });
        seal_spec(&key, Kind::DataSource, "db", &mut spec, None).unwrap();
        let sealed = spec.clone();
        for p in [
            "/password",
            "/proxyUsers/0/password",
            "/proxyUsers/1/password",
        ] {
            assert!(spec
                .pointer(p)
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with(SEALED));
        }
        assert!(!spec.to_string().contains("backend"));
        assert_eq!(
            open(
                &key,
                "datasources/db/password",
                spec["password"].as_str().unwrap()
            )
            .as_deref(),
            Some("backend")
        );
        // Another field's or data source's associated data does not open it.
        assert!(open(
            &key,
            "datasources/other/password",
            spec["password"].as_str().unwrap()
        )
        .is_none());
        // Plain text equal to what is stored keeps the stored form; sealed input stays.
        let mut again = serde_json::json!({
            "password": "backend",
            "proxyUsers": [{"name": "app", "password": "p1"}, {"name": "ro", "password": "p2"}]
        });
        seal_spec(&key, Kind::DataSource, "db", &mut again, Some(&sealed)).unwrap();
        assert_eq!(again, sealed);
        let mut round = sealed.clone();
        seal_spec(&key, Kind::DataSource, "db", &mut round, Some(&sealed)).unwrap();
        assert_eq!(round, sealed);
        // A sealed value moved to another field, or forged, is refused.
        let mut moved = sealed.clone();
        moved["password"] = sealed["proxyUsers"][0]["password"].clone();
        assert!(seal_spec(&key, Kind::DataSource, "db", &mut moved, None).is_err());
        let mut forged = serde_json::json!({"password": "enc:v1:00ff"});
        assert!(seal_spec(&key, Kind::DataSource, "db", &mut forged, None).is_err());
        assert_eq!(
            field_name("/proxyUsers/1/password"),
            "spec.proxyUsers[1].password"
        );
    }
}
