//! What the control plane and the agents share about collected logs: the record, the
//! query, and the read grant.
//!
//! `GET /api/v1/logs` on a control node asks the agents of the nodes an app runs on
//! (`GET /logs` on each agent's listener). The control node proves the request with a
//! **grant** rather than the user's token (which never leaves the control plane): an
//! HMAC-SHA256 over `(node, expiry, caller)` keyed with the SHA-256 of the agent's own
//! credential, which the control plane stores (as the token's key) and the agent can
//! compute. A grant is good on one node, for reading logs only, for [`GRANT_TTL_MS`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One collected line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The agent's sequence number (per node, increasing).
    pub seq: u64,
    /// When the agent read it, ms since the epoch.
    pub t: u64,
    pub node: String,
    pub app: String,
    pub unit: String,
    /// The instance that wrote it (absent for a shared log directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `stdout`, `stderr`, or the path under the app's log directory.
    pub file: String,
    pub line: String,
}

/// A line of a logs answer: a record, or a node that could not be read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Record(Record),
    Problem { node: String, error: String },
}

/// Filters, the same on the control API and on an agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Lines read at or after this time: RFC 3339, or ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A regular expression (Rust `regex` syntax) the line must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// At most this many lines (the most recent), 1-10000; default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Keep the answer open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 10_000;
/// How long a grant is good for.
pub const GRANT_TTL_MS: u64 = 60_000;

/// A checked query: what an agent filters with.
#[derive(Debug)]
pub struct Filter {
    pub app: String,
    pub unit: Option<String>,
    pub instance: Option<String>,
    pub since_ms: u64,
    pub grep: Option<regex::Regex>,
    pub limit: usize,
    pub follow: bool,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        r.app == self.app
            && self.unit.as_ref().is_none_or(|u| *u == r.unit)
            && self
                .instance
                .as_ref()
                .is_none_or(|i| r.instance.as_ref() == Some(i))
            && r.t >= self.since_ms
            && self.grep.as_ref().is_none_or(|g| g.is_match(&r.line))
    }
}

impl Query {
    /// Checks every field; the error names the field.
    pub fn check(&self) -> Result<Filter, (&'static str, String)> {
        crate::model::check_name("app", &self.app).map_err(|e| ("app", e.message))?;
        for (field, v) in [("unit", &self.unit), ("instance", &self.instance)] {
            if let Some(v) = v {
                crate::model::check_name(field, v).map_err(|e| (field, e.message))?;
            }
        }
        let since_ms = match &self.since {
            None => 0,
            Some(s) => parse_time(s).ok_or((
                "since",
                format!("`{s}` is neither an RFC 3339 time (2026-11-30T08:00:00Z) nor ms since the epoch"),
            ))?,
        };
        let grep = match &self.grep {
            None => None,
            Some(g) if g.len() > 1000 => {
                return Err(("grep", "longer than 1000 characters".into()))
            }
            Some(g) => Some(
                regex::RegexBuilder::new(g)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ("grep", format!("not a regular expression: {e}")))?,
            ),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(("limit", format!("{limit} is out of range 1-{MAX_LIMIT}")));
        }
        Ok(Filter {
            app: self.app.clone(),
            unit: self.unit.clone(),
            instance: self.instance.clone(),
            since_ms,
            grep,
            limit,
            follow: self.follow,
        })
    }

    /// The query string (without `?`).
    pub fn to_query_string(&self) -> String {
        let mut parts = vec![format!("app={}", encode(&self.app))];
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(v)));
            }
        };
        add("unit", &self.unit);
        add("instance", &self.instance);
        add("since", &self.since);
        add("grep", &self.grep);
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if self.follow {
            parts.push("follow=true".into());
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_time(s: &str) -> Option<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms);
    }
    crate::util::parse_rfc3339_ms(s)
}

/// The key of a grant for the agent whose credential is `token`.
pub fn grant_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn message(node: &str, expiry_ms: u64, caller: &str) -> String {
    format!("tessera-logs-v1|{node}|{expiry_ms}|{caller}")
}

/// A grant for `node`, signed with every key the control plane holds for it (an agent
/// that enrolled again has more than one credential; it knows only its latest).
pub fn grant(node: &str, expiry_ms: u64, caller: &str, keys: &[[u8; 32]]) -> String {
    let msg = message(node, expiry_ms, caller);
    let macs: Vec<String> = keys
        .iter()
        .map(|k| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
            crate::util::hex(ring::hmac::sign(&key, msg.as_bytes()).as_ref())
        })
        .collect();
    format!(
        "tlg1.{expiry_ms}.{}.{}",
        crate::util::hex(caller.as_bytes()),
        macs.join("-")
    )
}

/// Checks a grant on `node` at `now_ms`; answers the caller it was made for.
pub fn verify_grant(
    grant: &str,
    node: &str,
    key: &[u8; 32],
    now_ms: u64,
) -> Result<String, String> {
    let mut parts = grant.splitn(4, '.');
    let (Some("tlg1"), Some(expiry), Some(caller), Some(macs)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a log read grant".into());
    };
    let expiry: u64 = expiry.parse().map_err(|_| "malformed expiry".to_string())?;
    if expiry < now_ms {
        return Err("the grant has expired".into());
    }
    if expiry > now_ms + 5 * GRANT_TTL_MS {
        return Err("the grant's expiry is too far ahead (clock skew?)".into());
    }
    let caller = crate::util::unhex(caller)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("malformed caller")?;
    let msg = message(node, expiry, &caller);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let ok = macs.split('-').take(16).any(|m| {
        crate::util::unhex(m)
            .is_some_and(|mac| ring::hmac::verify(&key, msg.as_bytes(), &mac).is_ok())
    });
    if ok {
        Ok(caller)
    } else {
        Err("the grant is not signed for this node's credential".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_hold_for_one_node_until_they_expire() {
        let mine = grant_key("agent-token");
        let old = grant_key("earlier-token");
        let g = grant("host-a", 1_000_000, "alice", &[old, mine]);
        assert_eq!(verify_grant(&g, "host-a", &mine, 990_000).unwrap(), "alice");
        assert_eq!(verify_grant(&g, "host-a", &old, 990_000).unwrap(), "alice");
        assert!(verify_grant(&g, "host-b", &mine, 990_000)
            .unwrap_err()
            .contains("not signed"));
        assert!(verify_grant(&g, "host-a", &grant_key("other"), 990_000).is_err());
        assert!(verify_grant(&g, "host-a", &mine, 1_000_001)
            .unwrap_err()
            .contains("expired"));
        assert!(verify_grant(&g, "host-a", &mine, 0)
            .unwrap_err()
            .contains("too far ahead"));
        // A changed caller or expiry breaks the MAC.
        let forged = g.replacen("1000000", "1000999", 1);
        assert!(verify_grant(&forged, "host-a", &mine, 990_000).is_err());
        let as_bob = g.replacen(&crate::util::hex(b"alice"), &crate::util::hex(b"bob"), 1);
        assert!(verify_grant(&as_bob, "host-a", &mine, 990_000).is_err());
        for junk in [
            "",
            "Bearer x",
            "tlg1.1.2",
            "tlg1.x.61.00",
            "tlg1.1000000.zz.00",
        ] {
            assert!(
                verify_grant(junk, "host-a", &mine, 990_000).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn queries_are_checked_field_by_field() {
        let q = |f: fn(&mut Query)| {
            let mut q = Query {
                app: "echo".into(),
                ..Query::default()
            };
            f(&mut q);
            q.check().map(|_| ()).map_err(|e| e.0)
        };
        assert_eq!(q(|_| {}), Ok(()));
        assert_eq!(q(|q| q.app = "Bad Name".into()), Err("app"));
        assert_eq!(q(|q| q.grep = Some("(unclosed".into())), Err("grep"));
        assert_eq!(q(|q| q.since = Some("yesterday".into())), Err("since"));
        assert_eq!(q(|q| q.limit = Some(0)), Err("limit"));
        assert_eq!(q(|q| q.since = Some("2026-11-30T08:00:00Z".into())), Ok(()));
        let f = Query {
            app: "echo".into(),
            since: Some("2026-11-30T08:00:00Z".into()),
            grep: Some("GET /x".into()),
            ..Query::default()
        }
        .check()
        .unwrap();
        assert_eq!(f.since_ms, 1_796_025_600_000);
        let r = Record {
            seq: 1,
            t: 1_796_025_600_000,
            node: "n".into(),
            app: "echo".into(),
            unit: "rz00".into(),
            instance: Some("echo-rz00-0".into()),
            file: "stdout".into(),
            line: "GET /x 200".into(),
        };
        assert!(f.matches(&r));
        assert!(!f.matches(&Record { t: 1, ..r.clone() }));
        assert!(!f.matches(&Record {
            line: "GET /y".into(),
            ..r
        }));
    }

    #[test]
    fn query_strings_are_encoded() {
        let q = Query {
            app: "echo".into(),
            grep: Some("a b&c=d".into()),
            follow: true,
            ..Query::default()
        };
        assert_eq!(
            q.to_query_string(),
            "app=echo&grep=a%20b%26c%3Dd&follow=true"
        );
    }
}
