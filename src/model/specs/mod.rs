//! The specs of the kinds, their checks, and the references they make.
//!
//! Every spec type has `deny_unknown_fields`: a misspelt field is refused with its path
//! rather than silently ignored. References to other objects are plain names; which
//! kind each names is declared by [`references`], and `world.rs` checks they exist.

use super::kinds::{Kind, Reference};
use super::Invalid;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod check;
mod refs;

pub use check::check_spec;
#[cfg(test)]
use check::compress;
pub use refs::references;

fn parse<T: serde::de::DeserializeOwned>(spec: &serde_json::Value) -> Result<T, Invalid> {
    let v = if spec.is_null() {
        serde_json::json!({})
    } else {
        spec.clone()
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        Invalid::new(field, e.into_inner().to_string())
    })
}

fn name_ref(field: &str, name: &str) -> Result<(), Invalid> {
    super::check_name(field, name)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionSpec {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneSpec {
    /// The region the zone (a data center or availability zone) belongs to.
    pub region: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UnitType {
    /// Owns a share of the users (slots of the shard map); one copy per share.
    RZone,
    /// Global: data that cannot be split by user, one writable copy.
    GZone,
    /// City-level: read-mostly copies of global data near the RZones.
    CZone,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitSpec {
    #[serde(rename = "type")]
    pub unit_type: UnitType,
    /// Where the unit runs.
    pub zone: String,
    /// Where it fails over to; must differ from `zone`.
    #[serde(default)]
    pub standby_zone: Option<String>,
    /// For an RZone: the slots (00-99) whose users it owns, as `"NN"` or `"NN-MM"`.
    #[serde(default)]
    pub slots: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardMapSpec {
    /// Slot ranges (`"NN"` or `"NN-MM"`) to the RZone serving them; together they must
    /// cover 00-99 exactly once.
    pub slots: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterType {
    Kubernetes,
    VmPool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(rename = "type")]
    pub cluster_type: ClusterType,
    pub zone: String,
    /// Kubernetes: the API server URL (adopted clusters).
    #[serde(default)]
    pub api_server: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_gb: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    /// The agent's address (IP).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub capacity: Capacity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AppMode {
    Vm,
    Container,
    /// Runs outside tessera: reached only through `endpoints`.
    External,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path probed on the app's port.
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
}

fn default_health_path() -> String {
    "/healthz".into()
}
fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    2
}
fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    pub mode: AppMode,
    /// VM mode: what to run (an artifact name, or `builtin:echo`).
    #[serde(default)]
    pub artifact: Option<String>,
    /// Container mode: the image.
    #[serde(default)]
    pub image: Option<String>,
    /// VM mode: the command line (default: the artifact's own).
    #[serde(default)]
    pub command: Vec<String>,
    /// The port its instances listen on (vm and container modes).
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Instances in each unit the app runs in.
    #[serde(default = "one")]
    pub replicas_per_unit: u32,
    /// The units it runs in (default: every RZone).
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the app writes logs (collected by the agent); an absolute path.
    #[serde(default)]
    pub log_dir: Option<String>,
    /// Fixed endpoints, e.g. of a service outside tessera, used besides its instances.
    #[serde(default)]
    pub endpoints: Vec<StaticEndpoint>,
    /// VM mode: limits on each instance (cgroup v2 or v1 where the agent may use it, rlimits
    /// otherwise; the instance's `status.limits` says what was applied).
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// Limits on one instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory in MiB (cgroup `memory.max` or v1 `memory.limit_in_bytes`, or the address-space rlimit).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// CPU in thousandths of a core (cgroup `cpu.max` or v1 `cpu.cfs_quota_us`; 1000 = one core).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub open_files: Option<u64>,
    /// Processes and threads (cgroup `pids.max`).
    #[serde(default)]
    pub pids: Option<u64>,
}

/// An endpoint declared in an app's spec rather than registered by an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoint {
    /// `IP:PORT`.
    pub address: String,
    /// The unit it serves (absent: it serves any unit, e.g. a stateless service).
    #[serde(default)]
    pub unit: Option<String>,
    /// Where it runs (default: its unit's zone).
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// What an instance's agent reports in its status (read by gateways).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `IP:PORT` it serves on, once started.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where it runs (default: its unit's zone).
    #[serde(default)]
    pub zone: Option<String>,
    /// Passing its health check.
    #[serde(default)]
    pub ready: bool,
    /// Being stopped: gateways send it no new requests.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    pub app: String,
    pub unit: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSpec {
    /// The app it is a version of (informational; apps name artifacts in `artifact`).
    #[serde(default)]
    pub app: Option<String>,
    pub version: String,
    /// SHA-256 of the file, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    /// Where agents fetch it (inside the air-gapped estate).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    Canary,
    BlueGreen,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    pub app: String,
    pub version: String,
    /// VM mode: the artifact to roll out; container mode: the image.
    #[serde(default)]
    pub artifact: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "rolling")]
    pub strategy: Strategy,
    /// Units in rollout order, one batch each (default: every unit the app runs in).
    #[serde(default)]
    pub batches: Vec<Vec<String>>,
    /// Canary: percent of traffic to the new version in the first step.
    #[serde(default)]
    pub canary_weight: Option<u8>,
    /// Approvals needed before it may start.
    #[serde(default = "one")]
    pub approvals: u32,
}

fn rolling() -> Strategy {
    Strategy::Rolling
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    Header,
    Cookie,
    Query,
    /// The `segment`-th segment of the path (0 = the first after `/`).
    PathSegment,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingKey {
    #[serde(default = "header")]
    pub source: KeySource,
    /// Header, cookie or query parameter name.
    #[serde(default = "uid_header")]
    pub name: String,
    /// `pathSegment`: which segment (0 = the first).
    #[serde(default)]
    pub segment: u8,
}

fn header() -> KeySource {
    KeySource::Header
}
fn uid_header() -> String {
    "x-tessera-uid".into()
}

impl Default for RoutingKey {
    fn default() -> Self {
        RoutingKey {
            source: header(),
            name: uid_header(),
            segment: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// Percent of slots (0-100) whose users go to `version`: slots below it (a user stays
    /// on one side); requests without a routing key go there with that probability.
    #[serde(default)]
    pub weight: u8,
    /// Requests with this header (`name`: any value, or `name=value`) go to the canary.
    #[serde(default)]
    pub header: Option<String>,
    /// Requests with this cookie (`name`: any value, or `name=value`) go to the canary.
    #[serde(default)]
    pub cookie: Option<String>,
    pub version: String,
}

/// A copy of a sampled share of requests, sent to a shadow subset; its answers are discarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Percent of requests copied (1-100).
    pub percent: u8,
    /// The app receiving the copies (default: the rule's app).
    #[serde(default)]
    pub app: Option<String>,
    /// Only its endpoints of this version.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Failover {
    /// No healthy endpoint in the unit's zone: 503.
    #[default]
    None,
    /// No healthy endpoint in the unit's zone: its standby zone's.
    Standby,
}

/// How a rule picks where a request goes.
pub const ROUTE_BY: [&str; 4] = ["unit", "global", "city", "parallel"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRuleSpec {
    /// Host to match: exact (`api.bank.example`) or a wildcard (`*.bank.example`); absent = any.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "root")]
    pub path_prefix: String,
    /// An exact path; when set, `pathPrefix` is not used.
    #[serde(default)]
    pub path: Option<String>,
    /// Methods to match (absent = any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with these values (`*` = any value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub app: String,
    #[serde(default)]
    pub routing_key: RoutingKey,
    /// `unit` (by the routing key's slot, the shard map and the unit's zone; the
    /// default), `global` (to the GZone), `city` (to the CZone of the gateway's region),
    /// or `parallel` (not unitized: across zones by weight, the local zone first).
    #[serde(default = "by_unit")]
    pub route_by: String,
    /// `parallel`: relative weight per zone (absent zones: 1; 0 = only when no other).
    #[serde(default)]
    pub zone_weights: BTreeMap<String, u32>,
    /// `parallel`: prefer the gateway's own zone while it has a healthy endpoint.
    #[serde(default = "yes")]
    pub local_first: bool,
    #[serde(default)]
    pub canary: Option<Canary>,
    /// Blue/green: only endpoints of this version get traffic (switch by changing it).
    #[serde(default)]
    pub active_version: Option<String>,
    #[serde(default)]
    pub mirror: Option<Mirror>,
    #[serde(default)]
    pub failover: Failover,
    /// Upstream answer timeout.
    #[serde(default = "thirty_s")]
    pub timeout_ms: u32,
    /// Extra attempts of an idempotent request on another endpoint of the same unit (0-5).
    #[serde(default = "two")]
    pub retries: u8,
    /// Higher wins among rules that match equally specifically.
    #[serde(default)]
    pub priority: i32,
}

fn yes() -> bool {
    true
}
fn thirty_s() -> u32 {
    30_000
}
fn two() -> u8 {
    2
}

fn root() -> String {
    "/".into()
}
fn by_unit() -> String {
    "unit".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shard {
    pub unit: String,
    /// `host:port` of the writable database.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The physical database name on that server (default: the logical name).
    #[serde(default)]
    pub database: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSourceSpec {
    /// The logical database applications connect to.
    pub database: String,
    /// The column whose value is the user id (the shard key) in every table not listed in
    /// `tables`.
    #[serde(default)]
    pub shard_key: Option<String>,
    pub shards: Vec<Shard>,
    /// The account the DB proxy logs in to the shards' servers with.
    #[serde(default)]
    pub user: Option<String>,
    /// That account's password.
    #[serde(default)]
    pub password: Option<String>,
    /// Tables that are not sharded by `shardKey`: global ones, ones copied in every
    /// shard, or ones with their own shard-key column.
    #[serde(default)]
    pub tables: Vec<TableRule>,
    /// The accounts applications log in to the DB proxy with (not the backend account).
    #[serde(default)]
    pub proxy_users: Vec<ProxyUser>,
    /// Reads go to a replica only while its replication lag is at most this.
    #[serde(default = "five_thousand")]
    pub max_replica_lag_ms: u32,
    /// `manual` (default): a dead primary gives clear errors until an operator acts.
    /// `auto`: after `failoverAfterMs` of a primary unreachable while a replica is up,
    /// a DB proxy promotes that replica (recorded in the spec and the audit trail).
    #[serde(default)]
    pub failover: FailoverMode,
    #[serde(default = "five_thousand")]
    pub failover_after_ms: u32,
    /// TLS on the DB proxy's connections to these servers.
    #[serde(default)]
    pub tls: BackendTls,
}

/// TLS from the DB proxy to a data source's servers, as the `mysql` client's
/// `--ssl-mode` has it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTls {
    #[serde(default)]
    pub mode: BackendTlsMode,
    /// PEM CA certificates the servers' certificates must chain to (`verifyCa`,
    /// `verifyIdentity`).
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackendTlsMode {
    /// Plain TCP.
    Disabled,
    /// TLS when the server offers it, its certificate unchecked (the default).
    #[default]
    Preferred,
    /// TLS or no connection; the certificate unchecked.
    Required,
    /// TLS with a certificate that chains to `ca`.
    VerifyCa,
    /// TLS with a certificate that chains to `ca` and names the server's host.
    VerifyIdentity,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailoverMode {
    #[default]
    Manual,
    Auto,
}

fn five_thousand() -> u32 {
    5_000
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TableType {
    /// Rows live in the shard of their shard key's unit.
    #[default]
    Sharded,
    /// One copy, in the shard of the GZone unit.
    Global,
    /// A copy in every shard (dictionaries): reads go to one, writes to all.
    EveryShard,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableRule {
    pub name: String,
    #[serde(rename = "type", default)]
    pub table_type: TableType,
    /// For a sharded table: its shard-key column, when not the data source's.
    #[serde(default)]
    pub shard_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyUser {
    pub name: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    pub role: String,
}

pub const ROLES: [&str; 7] = [
    "admin", "operator", "approver", "viewer", "gateway", "agent", "dbproxy",
];

/// What a gateway reads: everything its route table is built from, and the
/// certificates of its HTTPS entrance.
pub const GATEWAY_READS: [Kind; 7] = [
    Kind::Zone,
    Kind::Unit,
    Kind::ShardMap,
    Kind::App,
    Kind::Instance,
    Kind::TrafficRule,
    Kind::Certificate,
];

/// What a service role (a gateway's, agent's or DB proxy's own credential) may read;
/// people's roles read every kind but users.
pub fn service_reads(role: &str) -> Option<&'static [Kind]> {
    match role {
        "gateway" => Some(&GATEWAY_READS),
        "dbproxy" => Some(&[Kind::Zone, Kind::Unit, Kind::ShardMap, Kind::DataSource]),
        "agent" => Some(&[
            Kind::Zone,
            Kind::Unit,
            Kind::Cluster,
            Kind::Node,
            Kind::App,
            Kind::Instance,
            Kind::Artifact,
        ]),
        _ => None,
    }
}

/// A slot range `NN` or `NN-MM` (00-99).
pub fn parse_slots(field: &str, s: &str) -> Result<std::ops::RangeInclusive<u8>, Invalid> {
    let bad = || {
        Invalid::new(
            field,
            format!("`{s}` is not a slot or slot range: expected NN or NN-MM within 00-99"),
        )
    };
    let one = |t: &str| -> Result<u8, Invalid> {
        let t = t.trim();
        if t.len() != 2 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<u8>().map_err(|_| bad())
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let a = one(s)?;
            (a, a)
        }
    };
    if a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// A unit's owned slots (empty unless it is a valid RZone).
pub fn unit_slots(spec: &serde_json::Value) -> Vec<u8> {
    let Ok(s) = parse::<UnitSpec>(spec) else {
        return Vec::new();
    };
    if s.unit_type != UnitType::RZone {
        return Vec::new();
    }
    s.slots
        .iter()
        .filter_map(|r| parse_slots("", r).ok())
        .flatten()
        .collect()
}

/// A unit's type, if the spec is a valid unit.
pub fn unit_type(spec: &serde_json::Value) -> Option<UnitType> {
    parse::<UnitSpec>(spec).ok().map(|s| s.unit_type)
}

/// A shard map's slot → unit table (None unless valid).
pub fn shard_table(spec: &serde_json::Value) -> Option<Vec<(u8, String)>> {
    let s: ShardMapSpec = parse(spec).ok()?;
    let mut out = Vec::new();
    for (range, unit) in &s.slots {
        for slot in parse_slots("", range).ok()? {
            out.push((slot, unit.clone()));
        }
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_stay_within_refers_to() {
        let samples = [
            (Kind::Zone, json!({"region": "r"})),
            (
                Kind::Unit,
                json!({"type": "RZone", "zone": "a", "standbyZone": "b", "slots": ["00"]}),
            ),
            (Kind::ShardMap, json!({"slots": {"00-99": "u"}})),
            (Kind::Cluster, json!({"type": "vm-pool", "zone": "a"})),
            (Kind::Node, json!({"zone": "a", "cluster": "c"})),
            (
                Kind::App,
                json!({"mode": "vm", "artifact": "x", "port": 1, "units": ["u"]}),
            ),
            (
                Kind::Instance,
                json!({"app": "a", "unit": "u", "node": "n"}),
            ),
            (
                Kind::Release,
                json!({"app": "a", "version": "1", "batches": [["u"]]}),
            ),
            (Kind::TrafficRule, json!({"app": "a"})),
            (
                Kind::DataSource,
                json!({"database": "d", "shards": [{"unit": "u", "primary": "h:1"}]}),
            ),
        ];
        for (kind, spec) in samples {
            let refs = references(kind, &spec);
            assert!(!refs.is_empty(), "{kind:?}");
            for r in refs {
                assert!(
                    kind.refers_to().contains(&r.kind),
                    "{kind:?} -> {:?}",
                    r.kind
                );
            }
        }
        assert!(Kind::Zone.checked_with().contains(&Kind::Unit));
        assert!(Kind::Unit.checked_with().contains(&Kind::Instance));
        assert_eq!(Kind::Event.checked_with(), vec![Kind::Event]);
    }

    #[test]
    fn unit_rules() {
        let ok =
            json!({"type": "RZone", "zone": "hz-a", "standbyZone": "hz-b", "slots": ["00-49"]});
        check_spec(Kind::Unit, &ok).unwrap();
        let same = json!({"type": "RZone", "zone": "hz-a", "standbyZone": "hz-a", "slots": ["00"]});
        assert_eq!(
            check_spec(Kind::Unit, &same).unwrap_err().field,
            "spec.standbyZone"
        );
        let typo = json!({"type": "RZone", "zone": "hz-a", "slot": ["00"]});
        let e = check_spec(Kind::Unit, &typo).unwrap_err();
        assert!(e.message.contains("unknown field `slot`"), "{e}");
        let gz = json!({"type": "GZone", "zone": "hz-a", "slots": ["00"]});
        assert_eq!(check_spec(Kind::Unit, &gz).unwrap_err().field, "spec.slots");
        let twice = json!({"type": "RZone", "zone": "a", "slots": ["00-10", "10"]});
        assert_eq!(
            check_spec(Kind::Unit, &twice).unwrap_err().field,
            "spec.slots[1]"
        );
        let bad = json!({"type": "RZone", "zone": "a", "slots": ["5"]});
        assert!(check_spec(Kind::Unit, &bad).is_err());
        let badtype = json!({"type": "XZone", "zone": "a"});
        assert_eq!(
            check_spec(Kind::Unit, &badtype).unwrap_err().field,
            "spec.type"
        );
    }

    #[test]
    fn shard_maps_cover_every_slot_once() {
        let ok = json!({"slots": {"00-49": "rz00", "50-99": "rz01"}});
        check_spec(Kind::ShardMap, &ok).unwrap();
        let hole = json!({"slots": {"00-48": "rz00", "50-99": "rz01"}});
        let e = check_spec(Kind::ShardMap, &hole).unwrap_err();
        assert!(e.message.contains("missing: 49"), "{e}");
        let overlap = json!({"slots": {"00-50": "rz00", "50-99": "rz01"}});
        assert!(check_spec(Kind::ShardMap, &overlap)
            .unwrap_err()
            .message
            .contains("slot 50"));
        assert_eq!(
            compress(&["00".into(), "01".into(), "02".into(), "05".into()]),
            "00-02, 05"
        );
    }

    #[test]
    fn apps_and_datasources() {
        let vm = json!({"mode": "vm", "port": 8080});
        assert_eq!(
            check_spec(Kind::App, &vm).unwrap_err().field,
            "spec.artifact"
        );
        let vm =
            json!({"mode": "vm", "artifact": "builtin:echo", "port": 8080, "env": {"A_1": "x"}});
        check_spec(Kind::App, &vm).unwrap();
        let port = json!({"mode": "vm", "artifact": "x", "port": 70000});
        assert_eq!(check_spec(Kind::App, &port).unwrap_err().field, "spec.port");
        let ds = json!({"database": "pay", "shards": [{"unit": "rz00", "primary": "10.0.0.1:3306"}, {"unit": "rz00", "primary": "h:1"}]});
        assert_eq!(
            check_spec(Kind::DataSource, &ds).unwrap_err().field,
            "spec.shards[1].unit"
        );
        let ds = json!({"database": "pay", "shards": [{"unit": "rz00", "primary": "nohost"}]});
        assert_eq!(
            check_spec(Kind::DataSource, &ds).unwrap_err().field,
            "spec.shards[0].primary"
        );
    }
}
