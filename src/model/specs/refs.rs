//! The objects a spec names, by kind: what `world.rs` checks exist.

use super::*;

/// The objects a (valid) spec names.
pub fn references(kind: Kind, spec: &serde_json::Value) -> Vec<Reference> {
    let r = |field: &str, kind: Kind, name: &str| Reference {
        field: field.to_string(),
        kind,
        name: name.to_string(),
    };
    let mut out = Vec::new();
    match kind {
        Kind::Zone => {
            if let Ok(s) = parse::<ZoneSpec>(spec) {
                out.push(r("spec.region", Kind::Region, &s.region));
            }
        }
        Kind::Unit => {
            if let Ok(s) = parse::<UnitSpec>(spec) {
                out.push(r("spec.zone", Kind::Zone, &s.zone));
                if let Some(z) = &s.standby_zone {
                    out.push(r("spec.standbyZone", Kind::Zone, z));
                }
            }
        }
        Kind::ShardMap => {
            if let Ok(s) = parse::<ShardMapSpec>(spec) {
                for (range, unit) in &s.slots {
                    out.push(r(&format!("spec.slots.{range}"), Kind::Unit, unit));
                }
            }
        }
        Kind::Cluster => {
            if let Ok(s) = parse::<ClusterSpec>(spec) {
                out.push(r("spec.zone", Kind::Zone, &s.zone));
            }
        }
        Kind::Node => {
            if let Ok(s) = parse::<NodeSpec>(spec) {
                if let Some(z) = &s.zone {
                    out.push(r("spec.zone", Kind::Zone, z));
                }
                if let Some(c) = &s.cluster {
                    out.push(r("spec.cluster", Kind::Cluster, c));
                }
            }
        }
        Kind::App => {
            if let Ok(s) = parse::<AppSpec>(spec) {
                for (i, u) in s.units.iter().enumerate() {
                    out.push(r(&format!("spec.units[{i}]"), Kind::Unit, u));
                }
                for (i, e) in s.endpoints.iter().enumerate() {
                    if let Some(u) = &e.unit {
                        out.push(r(&format!("spec.endpoints[{i}].unit"), Kind::Unit, u));
                    }
                    if let Some(z) = &e.zone {
                        out.push(r(&format!("spec.endpoints[{i}].zone"), Kind::Zone, z));
                    }
                }
            }
        }
        Kind::Instance => {
            if let Ok(s) = parse::<InstanceSpec>(spec) {
                out.push(r("spec.app", Kind::App, &s.app));
                out.push(r("spec.unit", Kind::Unit, &s.unit));
                if let Some(n) = &s.node {
                    out.push(r("spec.node", Kind::Node, n));
                }
            }
        }
        Kind::Release => {
            if let Ok(s) = parse::<ReleaseSpec>(spec) {
                out.push(r("spec.app", Kind::App, &s.app));
                for (i, b) in s.batches.iter().enumerate() {
                    for (j, u) in b.iter().enumerate() {
                        out.push(r(&format!("spec.batches[{i}][{j}]"), Kind::Unit, u));
                    }
                }
            }
        }
        Kind::TrafficRule => {
            if let Ok(s) = parse::<TrafficRuleSpec>(spec) {
                out.push(r("spec.app", Kind::App, &s.app));
                if let Some(a) = s.mirror.as_ref().and_then(|m| m.app.as_ref()) {
                    out.push(r("spec.mirror.app", Kind::App, a));
                }
                for z in s.zone_weights.keys() {
                    out.push(r(&format!("spec.zoneWeights.{z}"), Kind::Zone, z));
                }
            }
        }
        Kind::DataSource => {
            if let Ok(s) = parse::<DataSourceSpec>(spec) {
                for (i, sh) in s.shards.iter().enumerate() {
                    out.push(r(&format!("spec.shards[{i}].unit"), Kind::Unit, &sh.unit));
                }
            }
        }
        _ => {}
    }
    out
}
