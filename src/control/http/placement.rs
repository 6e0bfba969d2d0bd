//! Placement, the control leader's reconciler for VM-mode apps: each app keeps
//! `replicasPerUnit` instances (`<app>-<unit>-<i>`) in every unit it runs in, each placed
//! on a live node of the unit's zone (a node without a zone, such as `tessera up`'s, takes
//! any unit), the least loaded first. An instance whose node stopped reporting is moved
//! to another live node; instances it placed that are no longer wanted are deleted. A
//! node is live while its agent's heartbeat (`status.heartbeatMs`) is recent. Changes go
//! through the same validation and audit as any other (user `system:placement`).

use super::resources::{commit_system, read_world, Want};
use super::ApiState;
use crate::model::specs::{AppMode, AppSpec, InstanceSpec, UnitSpec, UnitType};
use crate::model::{Kind, Resource};
use crate::util::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(1);
/// A node whose last heartbeat is older than this is down.
pub const NODE_DEAD_AFTER_MS: u64 = 20_000;
const USER: &str = "system:placement";
pub const PLACED_BY: &str = "tessera.io/placed-by";

pub async fn run(s: ApiState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if !s.node.is_leader() {
            continue;
        }
        if let Err(e) = pass(&s).await {
            tracing::warn!(error = %e, "Placement pass failed; retrying");
        }
    }
}

/// Whether a node's agent reported recently.
pub fn node_alive(node: &Resource, now: u64) -> bool {
    node.status
        .get("heartbeatMs")
        .and_then(|v| v.as_u64())
        .is_some_and(|t| now.saturating_sub(t) < NODE_DEAD_AFTER_MS)
}

fn spec<T: serde::de::DeserializeOwned>(r: &Resource) -> Option<T> {
    serde_json::from_value(r.spec.clone()).ok()
}

async fn pass(s: &ApiState) -> Result<(), String> {
    let w = read_world(s, &[Kind::App, Kind::Unit, Kind::Node, Kind::Instance])?;
    let now = now_ms();
    let units: BTreeMap<String, UnitSpec> = w
        .of_kind(Kind::Unit)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    let live: Vec<(String, Option<String>)> = w
        .of_kind(Kind::Node)
        .filter(|n| node_alive(n, now))
        .map(|n| {
            let zone = n
                .spec
                .get("zone")
                .and_then(|z| z.as_str())
                .map(str::to_string);
            (n.metadata.name.clone(), zone)
        })
        .collect();
    let live_names: BTreeSet<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for i in w.of_kind(Kind::Instance) {
        if let Some(n) = spec::<InstanceSpec>(i).and_then(|s| s.node) {
            *load.entry(n).or_default() += 1;
        }
    }
    let mut wanted = BTreeSet::new();
    let mut puts: Vec<(Kind, Resource)> = Vec::new();
    for app in w.of_kind(Kind::App) {
        let Some(a) = spec::<AppSpec>(app) else {
            continue;
        };
        if a.mode != AppMode::Vm {
            continue;
        }
        let app_units: Vec<String> = if a.units.is_empty() {
            units
                .iter()
                .filter(|(_, u)| u.unit_type == UnitType::RZone)
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            a.units.clone()
        };
        for unit in app_units {
            let Some(u) = units.get(&unit) else { continue };
            let mut candidates: Vec<&String> = live
                .iter()
                .filter(|(_, z)| z.as_deref() == Some(u.zone.as_str()))
                .map(|(n, _)| n)
                .collect();
            if candidates.is_empty() {
                candidates = live
                    .iter()
                    .filter(|(_, z)| z.is_none())
                    .map(|(n, _)| n)
                    .collect();
            }
            for i in 0..a.replicas_per_unit {
                let name = format!("{}-{unit}-{i}", app.metadata.name);
                if crate::model::check_name("name", &name).is_err() {
                    tracing::warn!(instance = %name, "Instance name too long; not placed");
                    continue;
                }
                wanted.insert(name.clone());
                let existing = w.get(Kind::Instance, &name);
                let current = existing.and_then(spec::<InstanceSpec>).and_then(|s| s.node);
                if current.as_deref().is_some_and(|n| live_names.contains(n)) {
                    continue;
                }
                let Some(best) = candidates
                    .iter()
                    .min_by_key(|n| (load.get(n.as_str()).copied().unwrap_or(0), n.as_str()))
                    .map(|n| n.to_string())
                else {
                    continue; // no live node: nothing to place it on yet
                };
                *load.entry(best.clone()).or_default() += 1;
                let mut obj = match existing {
                    Some(e) => e.clone(),
                    None => {
                        let mut r = Resource::new(Kind::Instance, &name, serde_json::json!({}));
                        r.metadata
                            .labels
                            .insert(PLACED_BY.into(), "placement".into());
                        r
                    }
                };
                obj.spec =
                    serde_json::json!({"app": app.metadata.name, "unit": unit, "node": best});
                if let Some(v) = existing.and_then(|e| e.spec.get("version")).cloned() {
                    obj.spec["version"] = v;
                }
                obj.metadata.revision = None;
                tracing::info!(instance = %name, node = %best, moved_from = ?current, "Placing an instance");
                puts.push((Kind::Instance, obj));
            }
        }
    }
    if !puts.is_empty() {
        commit_system(s, USER, "place", Want::Put(puts)).await?;
    }
    let stale: Vec<String> = w
        .of_kind(Kind::Instance)
        .filter(|i| i.metadata.labels.get(PLACED_BY).map(String::as_str) == Some("placement"))
        .filter(|i| !wanted.contains(&i.metadata.name))
        .map(|i| i.metadata.name.clone())
        .collect();
    for name in stale {
        tracing::info!(instance = %name, "Removing an instance no longer wanted");
        commit_system(s, USER, "unplace", Want::Delete(Kind::Instance, name, None)).await?;
    }
    Ok(())
}
