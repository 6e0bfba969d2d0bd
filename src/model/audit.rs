//! Audit events and their hash chain.
//!
//! Every accepted change and every refused one appends an event. Each event carries
//! the hash of the one before it (`prevHash`) and its own `hash`: SHA-256 over the
//! event's JSON with `hash` empty. Changing, removing or reordering any stored event
//! breaks the chain at that point, which [`verify`] reports; the server never has to be
//! trusted to check itself (`tessera audit verify` recomputes it client-side).

use super::diff::FieldChange;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prevHash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub user: String,
    pub role: String,
    /// `create`, `update`, `delete`, `revert`, `user.create`, `token.create`, ...
    pub action: String,
    pub kind: String,
    pub name: String,
    /// `accepted` or `refused`.
    pub outcome: String,
    /// Why a change was refused (the error the caller saw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<FieldChange>,
    pub request_id: String,
    /// The client's IP address as the receiving control node saw it.
    pub source: String,
    pub prev_hash: String,
    #[serde(default)]
    pub hash: String,
}

impl AuditEvent {
    /// The hash this event should carry.
    pub fn compute_hash(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.hash = String::new();
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        crate::util::hex(&Sha256::digest(&bytes))
    }

    /// Links this event after `prev_hash` at `seq` and seals it.
    pub fn seal(mut self, seq: u64, prev_hash: &str) -> AuditEvent {
        self.seq = seq;
        self.prev_hash = prev_hash.to_string();
        self.hash = self.compute_hash();
        self
    }
}

/// Where a chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Checks events in order, the first of which follows `prev` (its hash and seq).
/// Returns the last (seq, hash) on success.
pub fn verify<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
    prev: (u64, &str),
) -> Result<(u64, String), Broken> {
    let (mut seq, mut hash) = (prev.0, prev.1.to_string());
    for e in events {
        if e.seq != seq + 1 {
            return Err(Broken {
                seq: seq + 1,
                reason: format!(
                    "expected event {} next, found {}: events are missing or out of order",
                    seq + 1,
                    e.seq
                ),
            });
        }
        if e.prev_hash != hash {
            return Err(Broken {
                seq: e.seq,
                reason: "its prevHash is not the hash of the event before it: an earlier event was changed or removed".into(),
            });
        }
        if e.compute_hash() != e.hash {
            return Err(Broken {
                seq: e.seq,
                reason: "its content does not match its hash: the event was changed".into(),
            });
        }
        seq = e.seq;
        hash = e.hash.clone();
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> AuditEvent {
        AuditEvent {
            seq: 0,
            time: "2026-01-01T00:00:00Z".into(),
            user: "admin".into(),
            role: "admin".into(),
            action: "create".into(),
            kind: "Region".into(),
            name: name.into(),
            outcome: "accepted".into(),
            reason: None,
            diff: vec![],
            request_id: "r".into(),
            source: "127.0.0.1".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Events are verified as read back from JSON: a field that changed to `null` (an
    /// agent's event with no instance) must hash the same after the round trip.
    #[test]
    fn events_with_null_values_verify_after_a_round_trip() {
        let mut e = ev("n");
        e.diff = crate::model::diff::diff(
            None,
            Some(&serde_json::json!({"spec": {"instance": null, "node": "vm"}})),
        );
        assert!(e
            .diff
            .iter()
            .any(|c| c.after == Some(serde_json::Value::Null)));
        let sealed = e.seal(1, GENESIS);
        let text = serde_json::to_string(&sealed).unwrap();
        let back: AuditEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sealed);
        assert_eq!(verify(&[back], (0, GENESIS)).unwrap().0, 1);
    }

    #[test]
    fn a_changed_event_breaks_the_chain_where_it_was_changed() {
        let a = ev("a").seal(1, GENESIS);
        let b = ev("b").seal(2, &a.hash);
        let c = ev("c").seal(3, &b.hash);
        let chain = vec![a, b, c];
        assert_eq!(verify(&chain, (0, GENESIS)).unwrap().0, 3);
        let mut tampered = chain.clone();
        tampered[1].name = "evil".into();
        assert_eq!(verify(&tampered, (0, GENESIS)).unwrap_err().seq, 2);
        let mut resealed = chain.clone();
        resealed[1].name = "evil".into();
        resealed[1].hash = resealed[1].compute_hash();
        assert_eq!(verify(&resealed, (0, GENESIS)).unwrap_err().seq, 3);
        let gap = vec![chain[0].clone(), chain[2].clone()];
        assert_eq!(verify(&gap, (0, GENESIS)).unwrap_err().seq, 2);
    }
}
