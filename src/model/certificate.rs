//! Certificates of the gateways' HTTPS entrances kept in the control plane: a PEM chain,
//! its private key (sealed at rest and opened only for gateways, see
//! `control/http/secrets.rs`) and the host names it serves. The same parsing serves the
//! certificate files of a gateway's profile.

use super::Invalid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// Host names it serves (`*.domain` allowed); default: the DNS names in the
    /// certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Stored sealed (`enc:v1:...`); only
    /// gateways read it opened.
    pub key: String,
}

/// What is wrong with a certificate and its key: which part, and how.
#[derive(Debug)]
pub struct Problem {
    /// `cert`, `key` or `hosts`.
    pub part: &'static str,
    pub message: String,
}

fn problem(part: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        part,
        message: message.into(),
    }
}

/// The leaf's DNS names (subject alternative names) and its expiry (Unix seconds).
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), Problem> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| problem("cert", format!("the first certificate is not X.509: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// A host name a certificate may serve: a DNS name, or `*.` and one.
pub fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a host name (a DNS name, or *. and one)"
        ))
    }
}

/// The certificate chain in `cert_pem`, with its leaf's names and expiry.
fn chain(cert_pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, Vec<String>, i64), Problem> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| problem("cert", format!("not a PEM certificate chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| problem("cert", "holds no PEM certificate"))?;
    let (names, not_after) = leaf_facts(leaf)?;
    Ok((chain, names, not_after))
}

/// The hosts served: `hosts` if given, else the certificate's DNS names; lower case.
fn served(hosts: &[String], names: Vec<String>) -> Result<Vec<String>, Problem> {
    let hosts: Vec<String> = if hosts.is_empty() {
        names
    } else {
        hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    if hosts.is_empty() {
        return Err(problem(
            "hosts",
            "the certificate names no DNS host: list the hosts it serves",
        ));
    }
    for h in &hosts {
        check_host(h).map_err(|m| problem("hosts", m))?;
    }
    Ok(hosts)
}

/// A certificate ready to serve: the chain with its signing key, checked to belong
/// together, and the hosts it serves.
pub fn certified(
    cert_pem: &[u8],
    key_pem: &[u8],
    hosts: &[String],
) -> Result<(Vec<String>, Arc<CertifiedKey>), Problem> {
    let (chain, names, _) = chain(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| problem("key", format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| problem("key", format!("unsupported key: {e}")))?;
    let hosts = served(hosts, names)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        problem(
            "key",
            format!("the key does not belong to the certificate: {e}"),
        )
    })?;
    Ok((hosts, Arc::new(certified)))
}

/// Checks a `Certificate` spec as written: the chain parses and has not expired, the
/// hosts are names, and a key in plain text parses and matches (a sealed key was checked
/// when it was sealed).
pub fn check(spec: &CertificateSpec, sealed_prefix: &str) -> Result<(), Invalid> {
    let field = |p: &Problem| format!("spec.{}", p.part);
    let (_, names, not_after) =
        chain(spec.cert.as_bytes()).map_err(|p| Invalid::new(field(&p), p.message))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if not_after < now {
        return Err(Invalid::new(
            "spec.cert",
            format!(
                "the certificate expired at {}",
                time::OffsetDateTime::from_unix_timestamp(not_after)
                    .map(|t| format!(
                        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                        t.year(),
                        t.month() as u8,
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    ))
                    .unwrap_or_else(|_| not_after.to_string())
            ),
        ));
    }
    served(&spec.hosts, names).map_err(|p| Invalid::new(field(&p), p.message))?;
    if !spec.key.starts_with(sealed_prefix) {
        certified(spec.cert.as_bytes(), spec.key.as_bytes(), &spec.hosts)
            .map_err(|p| Invalid::new(field(&p), p.message))?;
    }
    Ok(())
}

/// What readers are shown of a certificate besides its spec, derived from `cert` on
/// every read (never stored): `notAfter` (RFC 3339) and the leaf's `dnsNames`. None when
/// the chain does not parse (it was checked when written).
pub fn facts(cert_pem: &str) -> Option<serde_json::Value> {
    let (_, names, not_after) = chain(cert_pem.as_bytes()).ok()?;
    let ms = u64::try_from(not_after).ok()?.checked_mul(1000)?;
    let at = crate::util::rfc3339_ms(ms);
    Some(serde_json::json!({
        "notAfter": at.replace(".000Z", "Z"),
        "dnsNames": names,
    }))
}

/// The leaf's expiry (Unix seconds), for listings.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    chain(cert_pem.as_bytes()).ok().map(|(_, _, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in ["shop.bank.example", "*.bank.example", "a-1.b"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*.", "a..b", "-a.b", "a_b.c", "*.*.b", "a b", "x.*.c"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_belong_together() {
        let (cert, key) = self_signed(&["shop.bank.example", "*.api.bank.example"]);
        let (hosts, _) = certified(cert.as_bytes(), key.as_bytes(), &[]).unwrap();
        assert_eq!(hosts, ["shop.bank.example", "*.api.bank.example"]);
        let (other_cert, other_key) = self_signed(&["x.example"]);
        let p = certified(cert.as_bytes(), other_key.as_bytes(), &[]).unwrap_err();
        assert_eq!(p.part, "key", "{}", p.message);
        let spec = CertificateSpec {
            hosts: vec![],
            cert: cert.clone(),
            key: key.clone(),
        };
        assert!(check(&spec, "enc:v1:").is_ok());
        let spec = CertificateSpec {
            hosts: vec!["Bad Host".into()],
            cert: cert.clone(),
            key,
        };
        assert_eq!(check(&spec, "enc:v1:").unwrap_err().field, "spec.hosts");
        // A sealed key is not parsed here.
        let spec = CertificateSpec {
            hosts: vec![],
            cert: other_cert,
            key: "enc:v1:00".into(),
        };
        assert!(check(&spec, "enc:v1:").is_ok());
        assert!(not_after(&cert).is_some());
    }

    #[test]
    fn garbage_is_named_by_part() {
        let p = certified(b"not pem", b"not pem", &[]).unwrap_err();
        assert_eq!(p.part, "cert");
        let spec = CertificateSpec {
            hosts: vec![],
            cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            key: "x".into(),
        };
        assert_eq!(check(&spec, "enc:v1:").unwrap_err().field, "spec.cert");
    }
}
