//! The route table: compiled from the control plane's resources (traffic rules, apps,
//! instances, units, zones, shard maps), immutable once built, swapped whole. Pure: no I/O.
//!
//! A request is matched against the rules (most specific first), then sent by the rule's
//! mode: `unit` (routing key → slot → shard map → unit → the unit's zone), `global` (the
//! GZone unit), `city` (the CZone unit of the gateway's region) or `parallel` (any zone,
//! the local one first, else by weight). Endpoints are filtered by release controls
//! (canary, blue/green) and by their live state (draining, ejected, unhealthy), which is
//! shared across tables through [`EndpointStates`].

pub use crate::api::feed::Inputs;
use crate::model::slot::slot_of;
use crate::model::specs::{
    AppSpec, Failover, InstanceSpec, InstanceStatus, KeySource, ShardMapSpec, TrafficRuleSpec,
    UnitSpec, UnitType, ZoneSpec,
};
use crate::model::{Kind, Resource};
pub use compile::compile;
use http::HeaderValue;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The kinds a route table is built from (exactly what the gateway role may read).
pub const INPUT_KINDS: [Kind; 7] = crate::model::specs::GATEWAY_READS;

/// Live state of one upstream address, kept across table swaps.
#[derive(Debug, Default)]
pub struct EndpointState {
    pub inflight: AtomicUsize,
    /// Consecutive failures (connect errors, timeouts, 502-504).
    pub failures: AtomicU32,
    /// Ejected until this many milliseconds since `EndpointStates::epoch` (0 = not).
    pub ejected_until_ms: AtomicU64,
    /// How many times it was ejected in a row (backs off the ejection).
    pub ejections: AtomicU32,
    /// Cleared by active health checks while it fails them.
    pub unhealthy: AtomicBool,
    pub requests: AtomicU64,
    /// Active checks failed in a row.
    pub check_failures: AtomicU32,
    /// When the next active check is due (ms since `EndpointStates::epoch`).
    pub next_check_ms: AtomicU64,
}

/// Every upstream address's [`EndpointState`].
#[derive(Debug)]
pub struct EndpointStates {
    epoch: std::time::Instant,
    map: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

impl Default for EndpointStates {
    fn default() -> Self {
        EndpointStates {
            epoch: std::time::Instant::now(),
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// Failures in a row that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
const EJECT_BASE: Duration = Duration::from_secs(5);
const EJECT_MAX: Duration = Duration::from_secs(60);

impl EndpointStates {
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(addr).or_default().clone()
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Drops the states of addresses no table uses any more (idle ones only).
    pub fn retain(&self, keep: &dyn Fn(&SocketAddr) -> bool) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|a, s| keep(a) || s.inflight.load(Ordering::Relaxed) > 0);
    }

    pub fn success(&self, s: &EndpointState) {
        s.failures.store(0, Ordering::Relaxed);
        s.ejections.store(0, Ordering::Relaxed);
        // It answered, so its ejection (if any) is over: back to "never ejected", which
        // spares the next requests a clock read (`usable`).
        if s.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            s.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; returns true when it ejected the endpoint.
    pub fn failure(&self, s: &EndpointState) -> bool {
        let n = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < EJECT_AFTER {
            return false;
        }
        s.failures.store(0, Ordering::Relaxed);
        let k = s.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let d = (EJECT_BASE * 2u32.pow(k)).min(EJECT_MAX);
        s.ejected_until_ms
            .store(self.now_ms() + d.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// Not failing health checks and not ejected. `now` is read from the clock only
    /// when an endpoint has an ejection time to compare, at most once per `now` cell.
    fn usable(&self, s: &EndpointState, now: &Cell<Option<u64>>) -> bool {
        if s.unhealthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = s.ejected_until_ms.load(Ordering::Relaxed);
        until == 0
            || until
                <= now.get().unwrap_or_else(|| {
                    let n = self.now_ms();
                    now.set(Some(n));
                    n
                })
    }
}

/// One upstream endpoint as a table sees it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority (built once, not per request).
    pub authority: http::uri::Authority,
    pub app: Arc<str>,
    /// The unit it serves (`-` when it serves any).
    pub unit: Arc<str>,
    pub zone: Arc<str>,
    /// `unit` and `zone` as response header values (built once, not per request).
    pub unit_hv: HeaderValue,
    pub zone_hv: HeaderValue,
    pub version: Option<Arc<str>>,
    /// The instance it belongs to (absent for static endpoints).
    pub instance: Option<String>,
    pub draining: bool,
    /// The app's health check, probed by the gateway.
    pub probe: Option<Probe>,
    pub state: Arc<EndpointState>,
}

/// An active HTTP health check.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

type Ep = Arc<Endpoint>;

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.bank.example` → `.bank.example` (one or more labels before it).
    Suffix(String),
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug)]
struct UnitTarget {
    unit: Arc<str>,
    zone: Arc<str>,
    standby_zone: Option<Arc<str>>,
    /// The three above as response header values.
    unit_hv: HeaderValue,
    zone_hv: HeaderValue,
    standby_zone_hv: Option<HeaderValue>,
    primary: Vec<Ep>,
    standby: Vec<Ep>,
    /// Mirror candidates in this unit.
    shadow: Vec<Ep>,
    /// The rule's `requests_total{code="200"}` series for this unit, resolved by the
    /// proxy on first use (a table lives until the next change).
    ok_requests: OnceLock<prometheus::IntCounter>,
}

#[derive(Debug)]
enum Mode {
    /// Slot → unit (None: no unit owns the slot).
    Unit(Vec<Option<Arc<UnitTarget>>>),
    Fixed(Arc<UnitTarget>),
    Parallel {
        /// Per zone: weight and endpoints.
        zones: Vec<(Arc<str>, u32, Vec<Ep>)>,
        local: Option<usize>,
        shadow: Vec<Ep>,
    },
    /// The rule cannot route (e.g. `global` without a GZone): 503 with this reason.
    Broken(&'static str, String),
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    host: HostMatch,
    path: PathMatch,
    methods: Vec<http::Method>,
    headers: Vec<(http::HeaderName, Option<String>)>,
    key: TrafficRuleSpec,
    mode: Mode,
    pub timeout: Duration,
    pub retries: u8,
    pub failover: bool,
    /// Mirror sampling, percent.
    pub mirror_percent: u8,
    /// This rule's request-duration series, resolved by the proxy on first use.
    pub duration: OnceLock<prometheus::Histogram>,
}

impl Rule {
    fn specificity(&self) -> (u8, u8, usize, i32) {
        let host = match self.host {
            HostMatch::Exact(_) => 2,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 0,
        };
        let (exact, len) = match &self.path {
            PathMatch::Exact(p) => (1, p.len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        (host, exact, len, self.key.priority)
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The store revision it was built from.
    pub revision: u64,
    pub rules: Vec<Rule>,
    /// Every endpoint of every app, for the admin listener and health checks.
    pub endpoints: Vec<Ep>,
    /// Objects that could not be used, with why (shown on the admin listener).
    pub problems: Vec<String>,
}

/// What the proxy needs to know of a request.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// Host without port, lower case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Where a request goes.
#[derive(Debug)]
pub enum Decision<'t> {
    Route(Route<'t>),
    /// Answer this status with `x-tessera-reason: reason`.
    Refuse {
        status: u16,
        reason: &'static str,
        message: String,
        rule: Option<&'t Rule>,
    },
}

#[derive(Debug)]
pub struct Route<'t> {
    pub rule: &'t Rule,
    pub unit: Arc<str>,
    /// The zone served (the standby zone after a failover).
    pub zone: Arc<str>,
    /// `unit` and `zone` as response header values.
    pub unit_hv: HeaderValue,
    pub zone_hv: HeaderValue,
    /// The rule's `requests_total{code="200"}` series for this unit (unit routes).
    pub ok_requests: Option<&'t OnceLock<prometheus::IntCounter>>,
    pub slot: Option<u8>,
    pub canary: bool,
    pub failed_over: bool,
    /// Usable endpoints, best first is not implied: the proxy picks among them. The
    /// table's own list when every endpoint of it is usable (no copy per request).
    pub candidates: Cow<'t, [Ep]>,
    /// Where a copy goes, if this request is sampled for mirroring.
    pub shadow: Option<Ep>,
}

impl RouteTable {
    /// The first matching rule (most specific first).
    pub fn matching(&self, req: &RequestView) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(req))
    }

    pub fn decide<'t>(&'t self, req: &RequestView, states: &EndpointStates) -> Decision<'t> {
        let Some(rule) = self.matching(req) else {
            return Decision::Refuse {
                status: if self.revision == 0 { 503 } else { 404 },
                reason: if self.revision == 0 {
                    "no-route-table"
                } else {
                    "no-rule"
                },
                message: if self.revision == 0 {
                    "this gateway has no route table yet".into()
                } else {
                    format!(
                        "no traffic rule matches {} {}{}",
                        req.method, req.host, req.path
                    )
                },
                rule: None,
            };
        };
        rule.decide(req, states)
    }
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `name` or `name=value` against a lookup.
fn present<'a>(want: &str, get: impl Fn(&str) -> Option<&'a str>) -> bool {
    match want.split_once('=') {
        Some((n, v)) => get(n) == Some(v),
        None => get(want).is_some(),
    }
}

impl Rule {
    fn matches(&self, req: &RequestView) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => req.host == h,
            HostMatch::Suffix(s) => req.host.len() > s.len() && req.host.ends_with(s.as_str()),
        };
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => {
                req.path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || req.path.len() == p.len()
                        || req.path.as_bytes()[p.len()] == b'/')
            }
        };
        host_ok
            && path_ok
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self
                .headers
                .iter()
                .all(|(n, v)| match (req.headers.get(n), v) {
                    (Some(_), None) => true,
                    (Some(h), Some(v)) => h.as_bytes() == v.as_bytes(),
                    (None, _) => false,
                })
    }

    /// The routing key of a request, if it carries one.
    pub fn routing_key<'a>(&self, req: &RequestView<'a>) -> Option<&'a str> {
        let k = &self.key.routing_key;
        let v = match k.source {
            KeySource::Header => req
                .headers
                .get(k.name.as_str())
                .and_then(|v| v.to_str().ok()),
            KeySource::Cookie => cookie(req.headers, &k.name),
            KeySource::Query => query_param(req.query, &k.name),
            KeySource::PathSegment => req
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .nth(usize::from(k.segment)),
        };
        v.map(str::trim).filter(|v| !v.is_empty())
    }

    fn decide<'t>(&'t self, req: &RequestView, states: &EndpointStates) -> Decision<'t> {
        let refuse = |status, reason, message: String| Decision::Refuse {
            status,
            reason,
            message,
            rule: Some(self),
        };
        let slot = self.routing_key(req).map(|k| slot_of(k.as_bytes()));
        let canary = match &self.key.canary {
            None => false,
            Some(c) => {
                c.header.as_deref().is_some_and(|h| {
                    present(h, |n| req.headers.get(n).and_then(|v| v.to_str().ok()))
                }) || c
                    .cookie
                    .as_deref()
                    .is_some_and(|h| present(h, |n| cookie(req.headers, n)))
                    || match slot {
                        Some(s) => s < c.weight,
                        None => fastrand::u8(0..100) < c.weight,
                    }
            }
        };
        let now = Cell::new(None);
        let usable = |e: &&Ep| !e.draining && states.usable(&e.state, &now);
        let filter = |eps: &'t [Ep]| -> Cow<'t, [Ep]> {
            if self.key.active_version.is_none() && self.key.canary.is_none() {
                if eps.iter().all(|e| usable(&e)) {
                    return Cow::Borrowed(eps);
                }
                return eps.iter().filter(usable).cloned().collect();
            }
            let live: Vec<&Ep> = eps.iter().filter(usable).collect();
            let live: Vec<&Ep> = match &self.key.active_version {
                Some(v) => live
                    .into_iter()
                    .filter(|e| e.version.as_deref() == Some(v.as_str()))
                    .collect(),
                None => live,
            };
            let out: Vec<&Ep> = match &self.key.canary {
                None => live,
                Some(c) => {
                    let (canaries, stable): (Vec<&Ep>, Vec<&Ep>) = live
                        .into_iter()
                        .partition(|e| e.version.as_deref() == Some(c.version.as_str()));
                    // An empty side never fails a request: the other one serves it.
                    match (canary, canaries.is_empty(), stable.is_empty()) {
                        (true, false, _) | (false, _, true) => canaries,
                        _ => stable,
                    }
                }
            };
            out.into_iter().cloned().collect::<Vec<_>>().into()
        };
        let sample = |shadow: &[Ep]| -> Option<Ep> {
            if self.mirror_percent == 0
                || shadow.is_empty()
                || fastrand::u8(0..100) >= self.mirror_percent
            {
                return None;
            }
            let live: Vec<&Ep> = shadow.iter().filter(usable).collect();
            (!live.is_empty()).then(|| live[fastrand::usize(..live.len())].clone())
        };
        let unit_route = |t: &'t Arc<UnitTarget>| -> Decision<'t> {
            let primary = filter(&t.primary);
            if !primary.is_empty() {
                return Decision::Route(Route {
                    rule: self,
                    unit: t.unit.clone(),
                    zone: t.zone.clone(),
                    unit_hv: t.unit_hv.clone(),
                    zone_hv: t.zone_hv.clone(),
                    ok_requests: Some(&t.ok_requests),
                    slot,
                    canary,
                    failed_over: false,
                    candidates: primary,
                    shadow: sample(&t.shadow),
                });
            }
            if self.failover {
                let standby = filter(&t.standby);
                if let (false, Some(z), Some(zhv)) =
                    (standby.is_empty(), &t.standby_zone, &t.standby_zone_hv)
                {
                    return Decision::Route(Route {
                        rule: self,
                        unit: t.unit.clone(),
                        zone: z.clone(),
                        unit_hv: t.unit_hv.clone(),
                        zone_hv: zhv.clone(),
                        ok_requests: Some(&t.ok_requests),
                        slot,
                        canary,
                        failed_over: true,
                        candidates: standby,
                        shadow: sample(&t.shadow),
                    });
                }
            }
            refuse(
                503,
                "no-healthy-endpoint",
                format!(
                    "unit {} has no healthy endpoint of app {} in zone {}{}",
                    t.unit,
                    self.key.app,
                    t.zone,
                    match (&t.standby_zone, self.failover) {
                        (Some(z), true) => format!(" nor in its standby zone {z}"),
                        (Some(_), false) =>
                            " (the rule does not allow failover to the standby zone)".into(),
                        _ => String::new(),
                    }
                ),
            )
        };
        match &self.mode {
            Mode::Broken(reason, m) => refuse(503, reason, m.clone()),
            Mode::Fixed(t) => unit_route(t),
            Mode::Unit(slots) => {
                let Some(slot) = slot else {
                    return refuse(
                        400,
                        "no-routing-key",
                        format!(
                            "rule `{}` routes by unit: the request needs a routing key ({:?} `{}`)",
                            self.name, self.key.routing_key.source, self.key.routing_key.name
                        ),
                    );
                };
                match &slots[usize::from(slot)] {
                    Some(t) => unit_route(t),
                    None => refuse(503, "slot-unowned", format!("no unit owns slot {slot:02}")),
                }
            }
            Mode::Parallel {
                zones,
                local,
                shadow,
            } => {
                let live: Vec<(usize, Cow<'t, [Ep]>)> = zones
                    .iter()
                    .enumerate()
                    .map(|(i, (_, _, eps))| (i, filter(eps)))
                    .filter(|(_, eps)| !eps.is_empty())
                    .collect();
                if live.is_empty() {
                    return refuse(
                        503,
                        "no-healthy-endpoint",
                        format!("app {} has no healthy endpoint in any zone", self.key.app),
                    );
                }
                let pick = local
                    .and_then(|l| live.iter().position(|(i, _)| *i == l))
                    .unwrap_or_else(|| {
                        let weighted: Vec<(usize, u32)> = live
                            .iter()
                            .enumerate()
                            .map(|(j, (i, _))| (j, zones[*i].1))
                            .filter(|(_, w)| *w > 0)
                            .collect();
                        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
                        if total == 0 {
                            return fastrand::usize(..live.len());
                        }
                        let mut x = fastrand::u32(0..total);
                        for (j, w) in &weighted {
                            if x < *w {
                                return *j;
                            }
                            x -= w;
                        }
                        0
                    });
                let Some((i, candidates)) = live.into_iter().nth(pick) else {
                    return refuse(
                        503,
                        "no-healthy-endpoint",
                        format!("app {} has no healthy endpoint in any zone", self.key.app),
                    );
                };
                let zone = zones[i].0.clone();
                // Not empty (`live` keeps zones with endpoints); all of one zone.
                let first = &candidates[0];
                let zone_hv = first.zone_hv.clone();
                let (unit, unit_hv) = if candidates.iter().all(|e| e.unit == first.unit) {
                    (first.unit.clone(), first.unit_hv.clone())
                } else {
                    ("-".into(), HeaderValue::from_static("-"))
                };
                Decision::Route(Route {
                    rule: self,
                    unit,
                    zone,
                    unit_hv,
                    zone_hv,
                    ok_requests: None,
                    slot,
                    canary,
                    failed_over: false,
                    candidates,
                    shadow: sample(shadow),
                })
            }
        }
    }
}

/// A string as a header value; one that cannot be (never, for valid resource names) as `-`.
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"))
}

/// Picks one of `candidates` not yet `tried`: the less loaded of two at random.
pub fn pick(candidates: &[Ep], tried: &[SocketAddr]) -> Option<Ep> {
    // No allocation: this runs for every request.
    let left = || candidates.iter().filter(|e| !tried.contains(&e.addr));
    let chosen = match left().count() {
        0 => return None,
        1 => left().next(),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (left().nth(a)?, left().nth(b)?);
            let load = |e: &Ep| e.state.inflight.load(Ordering::Relaxed);
            Some(if load(eb) < load(ea) { eb } else { ea })
        }
    };
    chosen.cloned()
}

mod compile;
#[cfg(test)]
mod tests;
