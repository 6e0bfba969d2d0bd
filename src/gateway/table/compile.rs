//! Building a route table from the control plane's resources: zones, units, shard maps,
//! apps, instances and traffic rules become rules with their targets resolved (one target
//! per unit, its endpoints and header values), sorted most specific first. What cannot be
//! used (an endpoint with no zone, a traffic rule whose spec does not parse) is listed in
//! the table's `problems` and left out, rather than failing the whole table.

use super::*;

fn spec<T: serde::de::DeserializeOwned>(r: &Resource) -> Option<T> {
    let v = if r.spec.is_null() {
        serde_json::json!({})
    } else {
        r.spec.clone()
    };
    serde_json::from_value(v).ok()
}

/// Builds the table; `local_zone` is the gateway's own zone (profile `zone`).
pub fn compile(inputs: &Inputs, local_zone: Option<&str>, states: &EndpointStates) -> RouteTable {
    let mut problems = Vec::new();
    let zones: BTreeMap<String, ZoneSpec> = inputs
        .of_kind(Kind::Zone)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    let units: BTreeMap<String, UnitSpec> = inputs
        .of_kind(Kind::Unit)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    let apps: BTreeMap<String, AppSpec> = inputs
        .of_kind(Kind::App)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();

    // Endpoints per app.
    let mut by_app: BTreeMap<String, Vec<Ep>> = BTreeMap::new();
    let mut all: Vec<Ep> = Vec::new();
    let mut add = |app: &str,
                   addr: SocketAddr,
                   unit: Option<&str>,
                   zone: Option<&str>,
                   version: Option<&str>,
                   instance: Option<String>,
                   draining: bool| {
        let a = apps.get(app);
        let unit_zone = unit.and_then(|u| units.get(u)).map(|u| u.zone.as_str());
        let Some(zone) = zone.or(unit_zone) else {
            return Err(format!(
                "endpoint {addr} of app `{app}` has neither a zone nor a unit with one"
            ));
        };
        let Ok(authority) = http::uri::Authority::try_from(addr.to_string()) else {
            return Err(format!(
                "endpoint {addr} of app `{app}` is not a URI authority"
            ));
        };
        let ep = Arc::new(Endpoint {
            addr,
            authority,
            app: app.into(),
            unit: unit.unwrap_or("-").into(),
            zone: zone.into(),
            unit_hv: header_value(unit.unwrap_or("-")),
            zone_hv: header_value(zone),
            version: version.map(Into::into),
            instance,
            draining,
            probe: a.and_then(|a| a.health_check.as_ref()).map(|h| Probe {
                path: h.path.clone(),
                interval: Duration::from_secs(u64::from(h.interval_secs)),
                timeout: Duration::from_secs(u64::from(h.timeout_secs)),
            }),
            state: states.get(addr),
        });
        by_app.entry(app.to_string()).or_default().push(ep.clone());
        all.push(ep);
        Ok(())
    };
    for (name, a) in &apps {
        for e in &a.endpoints {
            let Ok(addr) = e.address.parse() else {
                continue;
            };
            if let Err(p) = add(
                name,
                addr,
                e.unit.as_deref(),
                e.zone.as_deref(),
                e.version.as_deref(),
                None,
                false,
            ) {
                problems.push(p);
            }
        }
    }
    for r in inputs.of_kind(Kind::Instance) {
        let Some(s) = spec::<InstanceSpec>(r) else {
            continue;
        };
        let st: InstanceStatus = serde_json::from_value(r.status.clone()).unwrap_or_default();
        let Some(addr) = st
            .endpoint
            .as_deref()
            .and_then(|e| e.parse::<SocketAddr>().ok())
        else {
            continue; // not started yet
        };
        if !st.ready && !st.draining {
            continue;
        }
        if let Err(p) = add(
            &s.app,
            addr,
            Some(&s.unit),
            st.zone.as_deref(),
            s.version.as_deref(),
            Some(r.metadata.name.clone()),
            st.draining,
        ) {
            problems.push(p);
        }
    }

    // Slot → unit: the shard map (`default`, else the only one), else the units' own slots.
    let maps: Vec<(String, ShardMapSpec)> = inputs
        .of_kind(Kind::ShardMap)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    let slot_unit = crate::model::slot::slot_units(&units, &maps);

    let local_region = local_zone
        .and_then(|z| zones.get(z))
        .map(|z| z.region.clone());
    let target = |rule: &TrafficRuleSpec,
                  unit: &str,
                  shadow_app: Option<&[Ep]>|
     -> Option<Arc<UnitTarget>> {
        let u = units.get(unit)?;
        let eps = by_app.get(&rule.app).map(Vec::as_slice).unwrap_or(&[]);
        let serves = |e: &Ep| &*e.unit == unit || &*e.unit == "-";
        let primary = eps
            .iter()
            .filter(|e| serves(e) && *e.zone == *u.zone)
            .cloned()
            .collect();
        let standby = match &u.standby_zone {
            Some(sz) => eps
                .iter()
                .filter(|e| serves(e) && *e.zone == **sz)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let shadow = shadow_app
            .map(|s| {
                let same: Vec<Ep> = s.iter().filter(|e| serves(e)).cloned().collect();
                if same.is_empty() {
                    s.to_vec()
                } else {
                    same
                }
            })
            .unwrap_or_default();
        Some(Arc::new(UnitTarget {
            unit: unit.into(),
            zone: u.zone.as_str().into(),
            standby_zone: u.standby_zone.as_deref().map(Into::into),
            unit_hv: header_value(unit),
            zone_hv: header_value(&u.zone),
            standby_zone_hv: u.standby_zone.as_deref().map(header_value),
            primary,
            standby,
            shadow,
            ok_requests: OnceLock::new(),
        }))
    };

    let mut rules = Vec::new();
    for r in inputs.of_kind(Kind::TrafficRule) {
        let name = r.metadata.name.clone();
        let Some(s) = spec::<TrafficRuleSpec>(r) else {
            problems.push(format!("trafficrule `{name}`: spec does not parse"));
            continue;
        };
        let shadow_eps: Option<Vec<Ep>> = s.mirror.as_ref().map(|m| {
            let app = m.app.as_deref().unwrap_or(&s.app);
            by_app
                .get(app)
                .map(|v| {
                    v.iter()
                        .filter(|e| {
                            m.version
                                .as_deref()
                                .is_none_or(|want| e.version.as_deref() == Some(want))
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        });
        let shadow = shadow_eps.as_deref();
        let mode = if !apps.contains_key(&s.app) {
            Mode::Broken(
                "no-app",
                format!("rule `{name}` names app `{}`, which does not exist", s.app),
            )
        } else {
            match s.route_by.as_str() {
                "unit" => {
                    // One target per unit, shared by its slots.
                    let mut per_unit: HashMap<&str, Option<Arc<UnitTarget>>> = HashMap::new();
                    Mode::Unit(
                        slot_unit
                            .iter()
                            .map(|u| {
                                let u = u.as_deref()?;
                                per_unit
                                    .entry(u)
                                    .or_insert_with(|| target(&s, u, shadow))
                                    .clone()
                            })
                            .collect(),
                    )
                }
                "global" => match units
                    .iter()
                    .find(|(_, u)| u.unit_type == UnitType::GZone)
                    .and_then(|(n, _)| target(&s, n, shadow))
                {
                    Some(t) => Mode::Fixed(t),
                    None => Mode::Broken(
                        "no-gzone",
                        format!("rule `{name}` routes to the GZone, and there is none"),
                    ),
                },
                "city" => {
                    let czones: Vec<&String> = units
                        .iter()
                        .filter(|(_, u)| u.unit_type == UnitType::CZone)
                        .map(|(n, _)| n)
                        .collect();
                    let local = czones.iter().find(|n| {
                        let z = &units[n.as_str()].zone;
                        zones.get(z).map(|z| &z.region) == local_region.as_ref()
                    });
                    match local.or(czones.first()).and_then(|n| target(&s, n, shadow)) {
                        Some(t) => Mode::Fixed(t),
                        None => Mode::Broken(
                            "no-czone",
                            format!("rule `{name}` routes to a CZone, and there is none"),
                        ),
                    }
                }
                _ => {
                    let eps = by_app.get(&s.app).cloned().unwrap_or_default();
                    let mut zmap: BTreeMap<Arc<str>, Vec<Ep>> = BTreeMap::new();
                    for e in eps {
                        zmap.entry(e.zone.clone()).or_default().push(e);
                    }
                    let zones: Vec<(Arc<str>, u32, Vec<Ep>)> = zmap
                        .into_iter()
                        .map(|(z, v)| {
                            let w = s.zone_weights.get(&*z).copied().unwrap_or(1);
                            (z, w, v)
                        })
                        .collect();
                    let local = if s.local_first {
                        local_zone.and_then(|lz| zones.iter().position(|(z, _, _)| **z == *lz))
                    } else {
                        None
                    };
                    Mode::Parallel {
                        zones,
                        local,
                        shadow: shadow_eps.clone().unwrap_or_default(),
                    }
                }
            }
        };
        let host = match s.host.as_deref() {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let path = match &s.path {
            Some(p) => PathMatch::Exact(p.clone()),
            None => PathMatch::Prefix(s.path_prefix.clone()),
        };
        let methods = s.methods.iter().filter_map(|m| m.parse().ok()).collect();
        let headers = s
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let n = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
                Some((n, (v != "*").then(|| v.clone())))
            })
            .collect();
        rules.push(Rule {
            name: name.as_str().into(),
            host,
            path,
            methods,
            headers,
            timeout: Duration::from_millis(u64::from(s.timeout_ms)),
            retries: s.retries,
            failover: s.failover == Failover::Standby,
            mirror_percent: s.mirror.as_ref().map_or(0, |m| m.percent),
            key: s,
            mode,
            duration: OnceLock::new(),
        });
    }
    rules.sort_by(|a, b| {
        b.specificity()
            .cmp(&a.specificity())
            .then_with(|| a.name.cmp(&b.name))
    });
    RouteTable {
        revision: inputs.revision,
        rules,
        endpoints: all,
        problems,
    }
}
