//! Field-level differences between two JSON documents, for audit events: each changed
//! leaf (or whole array) with its path, old and new value.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldChange {
    /// Dotted path, e.g. `spec.slots.00-49`.
    pub path: String,
    /// Absent: the field did not exist; `null`: it was null. The two must survive a
    /// round trip through JSON, since audit events are hashed as serialized.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub before: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub after: Option<Value>,
}

/// A field that is present is `Some`, even when it is `null` (serde's `Option` would
/// read `null` as `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The changes from `before` to `after` (None = absent), objects compared key by key.
pub fn diff(before: Option<&Value>, after: Option<&Value>) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldChange>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    let empty = serde_json::Map::new();
    fn as_obj<'v>(
        v: Option<&'v Value>,
        empty: &'v serde_json::Map<String, Value>,
    ) -> Option<&'v serde_json::Map<String, Value>> {
        match v {
            Some(Value::Object(m)) => Some(m),
            None => Some(empty),
            _ => None,
        }
    }
    if a == b {
        return;
    }
    match (as_obj(a, &empty), as_obj(b, &empty)) {
        // Objects (or an object and nothing) are compared key by key.
        (Some(x), Some(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                walk(&join(k), x.get(k), y.get(k), out);
            }
        }
        _ => out.push(FieldChange {
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            before: a.cloned(),
            after: b.cloned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaf_changes_with_paths() {
        let a = json!({"spec": {"zone": "a", "slots": ["00"]}, "labels": {}});
        let b = json!({"spec": {"zone": "b", "slots": ["00"], "standbyZone": "c"}, "labels": {}});
        let d = diff(Some(&a), Some(&b));
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "spec.standbyZone");
        assert_eq!(d[1].path, "spec.zone");
        assert_eq!(d[1].before, Some(json!("a")));
        assert!(diff(Some(&a), Some(&a)).is_empty());
        let created = diff(None, Some(&b));
        assert!(created
            .iter()
            .any(|c| c.path == "spec.zone" && c.before.is_none()));
    }
}
