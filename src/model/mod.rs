//! The resource model: the kinds of CONTRACT.md, their typed specs, and the checks that
//! keep an estate consistent. Pure data and rules, no I/O: the control API validates
//! with it, the CLI and every role's client share its types.
//!
//! A resource has the Kubernetes-like shape
//! `{apiVersion: "tessera.io/v1", kind, metadata: {name, revision, labels, createdAt},
//! spec, status}`. `spec` is what people declare; `status` is written by tessera itself
//! (reconcilers, agents) and ignored on user writes. `metadata.revision` is the store
//! revision of the object's last change; a write that names a revision succeeds only
//! if the object is still at it (optimistic concurrency).
//!
//! - `kinds.rs`: the kinds, who may write them, which kinds each may name.
//! - `specs.rs`: the specs (serde types with `deny_unknown_fields`, so a misspelt
//!   field is an error naming it), their checks and references.
//! - `world.rs`: a consistent set of resources and the cross-object rules (references
//!   exist, nothing deleted while referenced, every slot owned by one RZone, shard maps
//!   complete and consistent with their units).
//! - `audit.rs`: audit events and their hash chain.
//! - `diff.rs`: field-level differences between two objects (for audit events).

pub mod audit;
pub mod certificate;
pub mod diff;
pub mod kinds;
pub mod slot;
pub mod specs;
pub mod world;

/// How a secret inside a resource starts once it is sealed (`control/http/secrets.rs`).
pub const SEALED_PREFIX: &str = "enc:v1:";

pub use kinds::Kind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "tessera.io/v1";

/// One resource as stored and served. `spec` and `status` stay JSON here; [`kinds`]
/// gives them their types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub status: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    /// The store revision of the last change (0 = not stored yet). On a write: the
    /// revision the writer last saw, or absent for "whatever is there".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, set when the object is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// Input that breaks a rule: what is wrong and where (a dotted path such as
/// `spec.standbyZone`), so the API can answer `{code, message, field}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub field: String,
    pub message: String,
    /// `invalid` (the object itself is wrong: 422) or `conflict` (it contradicts other
    /// objects: 409).
    #[serde(skip)]
    pub conflict: bool,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
            conflict: false,
        }
    }

    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            conflict: true,
            ..Invalid::new(field, message)
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Names are DNS labels: 1-63 of `a-z 0-9 -`, starting and ending alphanumeric.
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("`{name}` is not a valid name: 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"),
        ))
    }
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > 64 {
        return Err(Invalid::new(field, "at most 64 entries"));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "keys are 1-253 characters of letters, digits, '-', '_', '.' and '/'",
            ));
        }
        if v.len() > 253 || v.chars().any(char::is_control) {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "values are at most 253 characters without control characters",
            ));
        }
    }
    Ok(())
}

impl Resource {
    /// A new resource of `kind` (as stored: no revision yet).
    pub fn new(kind: Kind, name: &str, spec: serde_json::Value) -> Resource {
        Resource {
            api_version: API_VERSION.into(),
            kind: kind.singular().into(),
            metadata: Metadata {
                name: name.into(),
                ..Default::default()
            },
            spec,
            status: serde_json::Value::Null,
        }
    }

    /// Checks the envelope and the spec of a resource someone wants to write, and
    /// returns its kind. `expect` is the kind named by the URL, if any.
    pub fn check(&self, expect: Option<Kind>) -> Result<Kind, Invalid> {
        if self.api_version != API_VERSION {
            return Err(Invalid::new(
                "apiVersion",
                format!("`{}`: expected {API_VERSION}", self.api_version),
            ));
        }
        let kind = Kind::parse(&self.kind).ok_or_else(|| {
            Invalid::new(
                "kind",
                format!(
                    "`{}` is not a kind; kinds are {}",
                    self.kind,
                    Kind::ALL.map(|k| k.singular()).join(", ")
                ),
            )
        })?;
        if let Some(e) = expect {
            if e != kind {
                return Err(Invalid::new(
                    "kind",
                    format!("`{}` sent to the {} endpoint", self.kind, e.plural()),
                ));
            }
        }
        check_name("metadata.name", &self.metadata.name)?;
        check_labels("metadata.labels", &self.metadata.labels)?;
        check_labels("metadata.annotations", &self.metadata.annotations)?;
        specs::check_spec(kind, &self.spec)?;
        Ok(kind)
    }

    /// The parts a user declares (labels, annotations, spec): two objects with the same
    /// declared parts are the same change, whatever their revisions and status.
    pub fn declared(&self) -> serde_json::Value {
        serde_json::json!({
            "labels": self.metadata.labels,
            "annotations": self.metadata.annotations,
            "spec": self.spec,
        })
    }
}

/// A label selector: `key=value`, `key==value`, `key!=value`, `key` (present) and
/// `!key` (absent), comma-separated, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key_ok = |k: &str| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            };
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &r {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            if !key_ok(key) {
                return Err(format!(
                    "`{part}`: expected key=value, key!=value, key or !key"
                ));
            }
            out.push(r);
        }
        Ok(Selector(out))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// Reads one or more resources from YAML (documents separated by `---`) or JSON (one
/// object, an array, or a `{"items": [...]}` list). Errors name the document.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, Invalid> {
    let trimmed = text.trim_start();
    let values: Vec<serde_json::Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(mut v) => match v.get_mut("items").map(serde_json::Value::take) {
                Some(serde_json::Value::Array(items))
                    if v.get("kind")
                        .is_none_or(|k| k.as_str().is_some_and(|k| k.ends_with("List"))) =>
                {
                    items
                }
                _ => vec![v],
            },
            Err(e) => return Err(Invalid::new("body", format!("not valid JSON: {e}"))),
        }
    } else {
        let mut out = Vec::new();
        for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let v = serde_json::Value::deserialize(doc).map_err(|e| {
                Invalid::new(
                    format!("document {}", i + 1),
                    format!("not valid YAML: {e}"),
                )
            })?;
            if !v.is_null() {
                out.push(v);
            }
        }
        out
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let what = format!("document {}", i + 1);
        let r: Resource = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            Invalid::new(
                if path == "." {
                    what.clone()
                } else {
                    format!("{what}: {path}")
                },
                e.into_inner().to_string(),
            )
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let mut l = BTreeMap::new();
        l.insert("tier".to_string(), "core".to_string());
        assert!(Selector::parse("tier=core").unwrap().matches(&l));
        assert!(Selector::parse("tier==core,!gone").unwrap().matches(&l));
        assert!(!Selector::parse("tier!=core").unwrap().matches(&l));
        assert!(!Selector::parse("env").unwrap().matches(&l));
        assert!(Selector::parse("=x").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("n", "rz00").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_from_yaml_and_json() {
        let y = "apiVersion: tessera.io/v1\nkind: Region\nmetadata: {name: a}\n---\n---\napiVersion: tessera.io/v1\nkind: Region\nmetadata: {name: b}\n";
        assert_eq!(parse_documents(y).unwrap().len(), 2);
        let j = r#"[{"apiVersion":"tessera.io/v1","kind":"Region","metadata":{"name":"a"}}]"#;
        assert_eq!(parse_documents(j).unwrap().len(), 1);
        let e = parse_documents("kind: Region\nmetadata: {name: a, nmae: b}\n").unwrap_err();
        assert!(e.field.contains("document 1"), "{e}");
        assert!(parse_documents("a: [").is_err());
    }
}
