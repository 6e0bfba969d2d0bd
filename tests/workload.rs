//! A concurrent KV workload against a control cluster, recorded into a
//! [`lincheck::History`](crate::lincheck::History), and the final verdict over it.
//!
//! Client threads loop for a bounded time and a bounded number of operations: each op
//! picks a node from its plan's targets, then gets, deletes or puts a unique value
//! (`c{client}-{seq}`) on one of a few hot keys, or puts a write-once key. Outcomes are
//! recorded as the checkers expect:
//!
//! * a write answered 200 is acknowledged at the revision in the body; 400/404/409 are
//!   definite failures; a request that could not even connect was never sent (failed);
//!   anything else (timeout, reset, 5xx, forwarding error) is an unknown outcome;
//! * a get answered 200 (or 404 `not_found`) is recorded with the value and the revision
//!   it observed; any other get is dropped (unknown).
//!
//! [`Verdict::judge`] runs every checker of `lincheck` over the result.

#![allow(dead_code)]

use crate::harness::{http_within, HttpFailure};
use crate::lincheck::{
    check_final_state, check_revisions, check_wgl, History, Op, OpId, Report, Status, WglBudget,
    WglReport,
};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, good enough for schedules and workloads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// A seed from the environment variable `var` (decimal or 0x-hex), else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    if let Ok(s) = std::env::var(var) {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        return parsed.unwrap_or_else(|_| panic!("{var}={s:?} is not a number"));
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
}

/// Seconds from the environment variable `var`, else `default`.
pub fn secs_from_env(var: &str, default: u64) -> Duration {
    let secs = std::env::var(var)
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{var}={s:?} is not a number of seconds"))
        })
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// What one client thread does.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// Node indexes (into [`Spec::apis`]); one is chosen at random per op.
    pub targets: Vec<usize>,
    /// Share of ops that are gets of a hot key.
    pub read_percent: u32,
    /// Share of ops that delete a hot key.
    pub delete_percent: u32,
    /// Share of puts that go to a fresh write-once key instead of a hot key.
    pub unique_percent: u32,
    /// Gets use `?consistency=stale` (the node's local state, no leader check).
    pub stale_reads: bool,
}

impl ClientPlan {
    /// Linearizable gets and puts on the hot keys, through any of `targets`.
    pub fn mixed(targets: Vec<usize>, read_percent: u32) -> ClientPlan {
        ClientPlan {
            targets,
            read_percent,
            delete_percent: 0,
            unique_percent: 0,
            stale_reads: false,
        }
    }
}

/// A workload: which keys, which nodes, which clients, and its bounds.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Key prefix, fresh per test: hot keys are `{prefix}/k{n}`, write-once keys
    /// `{prefix}/u/c{client}/{seq}`.
    pub prefix: String,
    pub hot_keys: usize,
    /// The nodes' API addresses (talked to directly, never through a relay).
    pub apis: Vec<SocketAddr>,
    pub clients: Vec<ClientPlan>,
    /// Limit of one request, end to end.
    pub timeout: Duration,
    pub max_ops_per_client: usize,
    /// The workload stops by itself after this long.
    pub limit: Duration,
    pub seed: u64,
}

impl Spec {
    pub fn hot_key(&self, n: usize) -> String {
        format!("{}/k{n}", self.prefix)
    }

    pub fn hot_keys(&self) -> Vec<String> {
        (0..self.hot_keys).map(|n| self.hot_key(n)).collect()
    }

    /// The prefix of client `c`'s write-once keys.
    pub fn unique_prefix(&self, c: usize) -> String {
        format!("{}/u/c{c}/", self.prefix)
    }
}

/// Which node an op was sent to, and how.
#[derive(Clone, Copy, Debug)]
pub struct OpMeta {
    pub id: OpId,
    pub client: usize,
    pub node: usize,
    pub stale: bool,
    /// The HTTP status of the answer; 0 when there was none (timeout, reset, refused).
    pub code: u16,
}

/// A running workload; [`Workload::finish`] stops it and collects the result.
pub struct Workload {
    pub spec: Spec,
    pub history: Arc<History>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<OpMeta>>>,
}

/// A finished workload.
pub struct Finished {
    pub spec: Spec,
    pub history: Arc<History>,
    /// Every op sent, by id.
    pub meta: Vec<OpMeta>,
}

impl Workload {
    pub fn start(spec: Spec, admin: &str) -> Workload {
        let history = Arc::new(History::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut seeder = Rng::new(spec.seed);
        let threads = (0..spec.clients.len())
            .map(|c| {
                let (spec, history, stop) = (spec.clone(), history.clone(), stop.clone());
                let admin = admin.to_string();
                let rng = Rng::new(seeder.next_u64());
                std::thread::Builder::new()
                    .name(format!("client-{c}"))
                    .spawn(move || client(c, &spec, &admin, &history, &stop, rng))
                    .expect("spawn client")
            })
            .collect();
        Workload {
            spec,
            history,
            stop,
            threads,
        }
    }

    /// Stops the clients (each finishes its current request, bounded by the timeout).
    pub fn finish(self) -> Finished {
        self.stop.store(true, SeqCst);
        let mut meta: Vec<OpMeta> = Vec::new();
        for t in self.threads {
            meta.extend(t.join().expect("client thread panicked"));
        }
        meta.sort_by_key(|m| m.id);
        Finished {
            spec: self.spec,
            history: self.history,
            meta,
        }
    }
}

fn client(
    c: usize,
    spec: &Spec,
    admin: &str,
    history: &History,
    stop: &AtomicBool,
    mut rng: Rng,
) -> Vec<OpMeta> {
    let plan = &spec.clients[c];
    let deadline = Instant::now() + spec.limit;
    let mut meta = Vec::new();
    for seq in 0..spec.max_ops_per_client {
        if stop.load(SeqCst) || Instant::now() >= deadline {
            break;
        }
        let node = *rng.pick(&plan.targets);
        let api = spec.apis[node];
        let hot = spec.hot_key(rng.below(spec.hot_keys as u64) as usize);
        let roll = rng.below(100) as u32;
        let (id, stale, (sent, code)) = if roll < plan.read_percent {
            let id = history.invoke_get(c, &hot);
            let r = get(
                history,
                id,
                api,
                admin,
                &hot,
                plan.stale_reads,
                spec.timeout,
            );
            (id, plan.stale_reads, r)
        } else if roll < plan.read_percent + plan.delete_percent {
            let id = history.invoke_delete(c, &hot);
            let r = write(history, id, api, admin, "DELETE", &hot, "", spec.timeout);
            (id, false, r)
        } else {
            let key = if rng.chance(plan.unique_percent) {
                format!("{}{seq:06}", spec.unique_prefix(c))
            } else {
                hot
            };
            let value = format!("c{c}-{seq}");
            let id = history.invoke_put(c, &key, &value);
            let r = write(history, id, api, admin, "PUT", &key, &value, spec.timeout);
            (id, false, r)
        };
        meta.push(OpMeta {
            id,
            client: c,
            node,
            stale,
            code,
        });
        if !sent {
            // The node is down: do not spin on refused connections, but come back soon,
            // so a restarted node gets requests from its first moments on.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    meta
}

fn kv_path(key: &str) -> String {
    format!("/api/v1/kv/{key}")
}

/// Sends a write and records its outcome; returns (whether it was sent at all, the HTTP
/// status or 0).
#[allow(clippy::too_many_arguments)]
fn write(
    history: &History,
    id: OpId,
    api: SocketAddr,
    admin: &str,
    method: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> (bool, u16) {
    match http_within(api, method, &kv_path(key), Some(admin), value, timeout) {
        Ok((200, _, body)) => {
            match serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["revision"].as_u64())
            {
                Some(rev) => history.ok_write(id, rev),
                None => history.info(id),
            }
            (true, 200)
        }
        Ok((code @ (400 | 404 | 409), _, _)) => {
            history.fail(id);
            (true, code)
        }
        Ok((code, _, _)) => {
            history.info(id);
            (true, code)
        }
        Err(HttpFailure::Exchange(_)) => {
            history.info(id);
            (true, 0)
        }
        Err(HttpFailure::Connect(_)) => {
            history.fail(id);
            (false, 0)
        }
    }
}

/// Sends a get and records its outcome; returns (whether it was sent at all, the HTTP
/// status or 0).
fn get(
    history: &History,
    id: OpId,
    api: SocketAddr,
    admin: &str,
    key: &str,
    stale: bool,
    timeout: Duration,
) -> (bool, u16) {
    let path = if stale {
        format!("{}?consistency=stale", kv_path(key))
    } else {
        kv_path(key)
    };
    match http_within(api, "GET", &path, Some(admin), "", timeout) {
        Ok((code @ (200 | 404), _, body)) => {
            match parse_get(code, &body) {
                Some((value, rev)) => history.ok_get(id, value, rev),
                None => history.info(id),
            }
            (true, code)
        }
        Ok((code, _, _)) => {
            history.info(id);
            (true, code)
        }
        Err(HttpFailure::Exchange(_)) => {
            history.info(id);
            (true, 0)
        }
        Err(HttpFailure::Connect(_)) => {
            history.info(id);
            (false, 0)
        }
    }
}

/// A single-key GET answer: (value, observed revision); `None` if it is not one.
pub fn parse_get(code: u16, body: &str) -> Option<(Option<String>, u64)> {
    let v: Value = serde_json::from_str(body).ok()?;
    let rev = v["revision"].as_u64()?;
    match code {
        200 => Some((Some(v["kv"]["value"].as_str()?.to_string()), rev)),
        404 if v["code"] == "not_found" => Some((None, rev)),
        _ => None,
    }
}

/// Counts of a finished workload, for assertions and the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub writes_ok: usize,
    pub writes_unknown: usize,
    pub writes_failed: usize,
    pub reads_ok: usize,
    pub reads_dropped: usize,
}

impl Finished {
    pub fn ops(&self) -> Vec<Op> {
        self.history.ops()
    }

    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        let ops = self.history.ops();
        let by_id: HashMap<OpId, &Op> = ops.iter().map(|o| (o.id, o)).collect();
        for m in &self.meta {
            let status = self.history.status(m.id);
            let write = by_id.get(&m.id).map(|o| o.is_write()).unwrap_or(true);
            match (write, status) {
                (true, Some(Status::Ok)) => t.writes_ok += 1,
                (true, Some(Status::Failed)) => t.writes_failed += 1,
                (true, _) => t.writes_unknown += 1,
                (false, Some(Status::Ok)) => t.reads_ok += 1,
                (false, _) => t.reads_dropped += 1,
            }
        }
        t
    }

    /// Per node: writes acknowledged, unknown (by HTTP status, 0 = no answer) and failed,
    /// and when the last acknowledged write to it completed.
    pub fn per_node(&self) -> String {
        let ops = self.history.ops();
        let by_id: HashMap<OpId, &Op> = ops.iter().map(|o| (o.id, o)).collect();
        let mut out = String::new();
        for node in 0..self.spec.apis.len() {
            let mut ok = 0;
            let mut failed = 0;
            let mut last_ack: Option<u64> = None;
            let mut unknown: std::collections::BTreeMap<u16, usize> = Default::default();
            for m in self.meta.iter().filter(|m| m.node == node) {
                let Some(op) = by_id.get(&m.id) else {
                    failed += 1;
                    continue;
                };
                if !op.is_write() {
                    continue;
                }
                match op.complete {
                    Some(c) => {
                        ok += 1;
                        last_ack = last_ack.max(Some(c));
                    }
                    None => *unknown.entry(m.code).or_default() += 1,
                }
            }
            out += &format!(
                "node {node}: writes ok {ok} (last at {}), unknown {unknown:?}, failed {failed}\n",
                last_ack.map_or("-".into(), |t| format!("{:.3}s", t as f64 / 1e9))
            );
        }
        out
    }

    /// Every key the workload wrote or read.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.history.ops().into_iter().map(|o| o.key).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The verdicts of every checker over one history.
pub struct Verdict {
    pub revisions: Report,
    pub final_state: Report,
    pub wgl: WglReport,
}

impl Verdict {
    /// Runs check_revisions, check_final_state and check_wgl.
    pub fn judge(
        ops: &[Op],
        final_state: &HashMap<String, Option<String>>,
        budget: &WglBudget,
    ) -> Verdict {
        Verdict {
            revisions: check_revisions(ops),
            final_state: check_final_state(ops, final_state),
            wgl: check_wgl(ops, budget),
        }
    }

    pub fn wgl_decided(&self) -> usize {
        self.wgl.keys.len() - self.wgl.unknown().len()
    }

    pub fn is_ok(&self) -> bool {
        self.revisions.is_ok() && self.final_state.is_ok() && !self.wgl.has_violation()
    }

    pub fn summary(&self) -> String {
        format!(
            "revisions: {} violation(s) over {} ops; final state: {} violation(s); WGL: {} key(s), {} not linearizable, {} unknown, {:?}",
            self.revisions.violations.len(),
            self.revisions.ops_checked,
            self.final_state.violations.len(),
            self.wgl.keys.len(),
            self.wgl.violations().len(),
            self.wgl.unknown().len(),
            self.wgl.elapsed,
        )
    }

    /// Everything the checkers said (violations and unknowns in full).
    pub fn report(&self) -> String {
        format!(
            "{}\n== revision checker ==\n{}\n== final state ==\n{}\n== {}",
            self.summary(),
            self.revisions,
            self.final_state,
            self.wgl
        )
    }
}

/// The default budget: the search is cut short rather than holding the test up.
pub fn budget() -> WglBudget {
    WglBudget {
        per_key: Duration::from_secs(5),
        total: Duration::from_secs(30),
        max_memory_bytes: 512 << 20,
    }
}
