//! Fault injection under concurrent load: SIGKILL the leader, SIGSTOP a follower, isolate
//! a minority behind harness-owned relays, snapshot/purge churn, and a seeded random soak.
//! Every run ends with the linearizability checkers of `lincheck` over the recorded
//! history (revisions, final state, WGL); one test proves they catch the stale reads of
//! a deliberately broken read path (`?consistency=stale` on a partitioned follower).
//!
//! Layout: test `t` runs nodes `i = 0..3` on 127.0.0.(40 + 4t + i). Each node has its
//! real API and peer listeners plus two relays on its own IP: `peer_advertise` and
//! `api_advertise` point at the relays, so every byte between nodes (Raft, and requests
//! a follower forwards to the leader, which share the peer connection) passes a relay
//! that can cut it by source IP. Test clients talk to the real API
//! ports from 127.0.0.1 and are never cut off.
//!
//! Besides safety (the checkers, nothing acknowledged by an isolated minority), the tests
//! check liveness: after each fault is undone, a write through every node must commit
//! within 10 s. A liveness failure is recorded with every node's view and a write probe
//! and fails the test at its end, after the safety checks have run.
//!
//! Knobs: `TESSERA_STRESS_SECS` (snapshot churn, default 20), `TESSERA_SOAK_SECS`
//! (default 30), `TESSERA_SOAK_SEED` (replay a soak schedule; the seed is printed),
//! `TESSERA_STRESS_SEED` (the churn schedule), `TESSERA_KEEP_LOGS=DIR` (keep every
//! node's log in `DIR/<test>/`). nextest ends a test after 120 s (`.config/nextest.toml`),
//! so run long soaks with `cargo test`, e.g. `TESSERA_SOAK_SECS=600 cargo test --release
//! --test tests faults::soak -- --nocapture`.

use crate::harness::{free_port, http_within, Node};
use crate::lincheck::{check_revisions, check_wgl, Op, OpId, Status};
use crate::relay::Relay;
use crate::workload::{
    budget, parse_get, secs_from_env, seed_from_env, ClientPlan, Finished, Rng, Spec, Verdict,
    Workload,
};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;
/// Limit of one workload request.
const OP_TIMEOUT: Duration = Duration::from_millis(2500);
/// Limit of one control request made by the test itself.
const CTL_TIMEOUT: Duration = Duration::from_secs(2);

fn json(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok()
}

/// Elapsed time since `t0`, for the test's own log lines.
fn at(t0: Instant) -> String {
    format!("{:>7.3}s", t0.elapsed().as_secs_f64())
}

/// A control node with its two relays.
struct Member {
    node: Node,
    name: String,
    ip: IpAddr,
    /// The real API listener (test clients use it directly).
    api: SocketAddr,
    /// In front of the peer listener: what other nodes dial for Raft.
    peer_relay: Relay,
    /// In front of the API listener: the advertised API URL (forwarding itself goes
    /// over the peer channel, through `peer_relay`).
    api_relay: Relay,
    /// Killed and not started again.
    down: bool,
    /// SIGSTOPped.
    stopped: bool,
}

struct Cluster {
    test: String,
    members: Vec<Member>,
    admin: String,
    t0: Instant,
    /// Node id (as `/api/v1/members` shows it) -> index.
    ids: HashMap<String, usize>,
    /// Liveness failures seen so far (a node that stopped taking writes). They do not stop
    /// the test at once, so the safety checks still run; [`Cluster::assert_live`] fails
    /// the test at its end.
    stuck: Vec<String>,
    /// Nodes whose last write attempt failed (reported once until they recover).
    wedged: HashSet<usize>,
}

impl Cluster {
    /// Forms a 3-node cluster for test number `slot` (which picks its IPs); `extra` is
    /// added to every node's `[control]` section.
    fn start(test: &str, slot: u8, extra: &str) -> Cluster {
        let t0 = Instant::now();
        let mut members: Vec<Member> = Vec::new();
        let mut admin = String::new();
        for i in 0..3u8 {
            let ip: IpAddr = format!("127.0.0.{}", 40 + 4 * slot + i).parse().unwrap();
            let api = SocketAddr::new(ip, free_port(ip));
            let peer = SocketAddr::new(ip, free_port(ip));
            let peer_relay = Relay::start(SocketAddr::new(ip, free_port(ip)), peer);
            let api_relay = Relay::start(SocketAddr::new(ip, free_port(ip)), api);
            let membership = if i == 0 {
                "bootstrap = true".to_string()
            } else {
                let token = new_token(members[0].api, &admin);
                format!(
                    "join = [\"http://{}\"]\njoin_token = \"{token}\"",
                    members[0].api
                )
            };
            let name = format!("{test}-{i}");
            let profile = format!(
                "node_name = \"{name}\"\nroles = [\"control\"]\ndata_dir = \"DATA\"\n\
                 [control]\nlisten = \"{api}\"\npeer_listen = \"{peer}\"\n\
                 peer_advertise = \"{}\"\napi_advertise = \"http://{}\"\n{membership}\n\
                 heartbeat_ms = 50\nelection_timeout_min_ms = {ELECTION_MIN_MS}\n\
                 election_timeout_max_ms = {ELECTION_MAX_MS}\n{extra}\n",
                peer_relay.addr(),
                api_relay.addr()
            );
            let mut node = Node::run_profile(&profile, &[], &[]);
            if i == 0 {
                node.wait_ready(api);
                admin = node.admin_token();
            }
            members.push(Member {
                node,
                name,
                ip,
                api,
                peer_relay,
                api_relay,
                down: false,
                stopped: false,
            });
        }
        let mut c = Cluster {
            test: test.to_string(),
            members,
            admin,
            t0,
            ids: HashMap::new(),
            stuck: Vec::new(),
            wedged: HashSet::new(),
        };
        for i in 0..3 {
            let api = c.members[i].api;
            c.members[i].node.wait_ready(api);
        }
        // Every member is a voter, and ids are known.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = c.members_view(0) {
                let list = m["members"].as_array().cloned().unwrap_or_default();
                let voters = list.iter().filter(|x| x["role"] == "voter").count();
                if voters == 3 {
                    for x in &list {
                        let name = x["name"].as_str().unwrap_or_default();
                        let i = c.members.iter().position(|m| m.name == name).unwrap();
                        c.ids.insert(x["id"].as_str().unwrap().to_string(), i);
                    }
                    break;
                }
            }
            c.check_deadline(deadline, "three voters");
            std::thread::sleep(Duration::from_millis(100));
        }
        c.log(&format!(
            "cluster formed: {}",
            c.members
                .iter()
                .map(|m| format!(
                    "{} api {} peer-relay {} api-relay {}",
                    m.name,
                    m.api,
                    m.peer_relay.addr(),
                    m.api_relay.addr()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        c
    }

    fn log(&self, what: &str) {
        eprintln!("[{} {}] {what}", self.test, at(self.t0));
    }

    fn apis(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.api).collect()
    }

    fn check_deadline(&self, deadline: Instant, what: &str) {
        if Instant::now() > deadline {
            panic!("{}: timed out waiting for {what}", self.test);
        }
    }

    /// `GET /api/v1/members` from node `i` (bounded); `None` if it does not answer.
    fn members_view(&self, i: usize) -> Option<Value> {
        let m = &self.members[i];
        if m.down || m.stopped {
            return None;
        }
        match http_within(
            m.api,
            "GET",
            "/api/v1/members",
            Some(&self.admin),
            "",
            CTL_TIMEOUT,
        ) {
            Ok((200, _, body)) => json(&body),
            _ => None,
        }
    }

    /// The leader as node `i` sees it, if it knows one.
    fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let v = self.members_view(i)?;
        self.ids.get(v["leader"].as_str()?).copied()
    }

    /// A leader that says so itself, found within `limit`.
    fn leader(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            for i in 0..self.members.len() {
                if let Some(l) = self.leader_seen_by(i) {
                    if self.members_view(l).is_some_and(|v| v["state"] == "leader") {
                        return Some(l);
                    }
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn followers_of(&self, leader: usize) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| i != leader).collect()
    }

    /// Cuts node `i` off from the others in both directions, Raft and forwarding.
    fn isolate(&self, i: usize) {
        let me = &self.members[i];
        for (j, other) in self.members.iter().enumerate() {
            if j == i {
                continue;
            }
            other.peer_relay.block(me.ip);
            other.api_relay.block(me.ip);
            me.peer_relay.block(other.ip);
            me.api_relay.block(other.ip);
        }
        self.log(&format!("isolated {}", me.name));
    }

    fn heal(&self) {
        for m in &self.members {
            m.peer_relay.heal();
            m.api_relay.heal();
        }
        self.log("healed every partition");
    }

    fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.node.kill();
        m.down = true;
        m.stopped = false;
        let name = m.name.clone();
        self.log(&format!("SIGKILL {name}"));
    }

    /// Starts a killed node again (not waiting for it).
    fn start_again(&mut self, i: usize) {
        self.wedged.remove(&i);
        let m = &mut self.members[i];
        m.node.start_again();
        m.down = false;
        let name = m.name.clone();
        self.log(&format!("started {name} again"));
    }

    fn wait_ready(&mut self, i: usize) {
        let m = &mut self.members[i];
        let api = m.api;
        m.node.wait_ready(api);
        let name = m.name.clone();
        self.log(&format!("{name} is ready"));
    }

    fn pause(&mut self, i: usize) {
        self.members[i].node.signal("STOP");
        self.members[i].stopped = true;
        self.log(&format!("SIGSTOP {}", self.members[i].name));
    }

    fn resume(&mut self, i: usize) {
        self.members[i].node.signal("CONT");
        self.members[i].stopped = false;
        self.log(&format!("SIGCONT {}", self.members[i].name));
    }

    /// Writes `value` to `key` through node `i` (forwarded if it is a follower), retried
    /// within `limit`; returns the revision.
    fn put_through(&self, i: usize, key: &str, value: &str, limit: Duration) -> Option<u64> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _, body)) = http_within(
                self.members[i].api,
                "PUT",
                &format!("/api/v1/kv/{key}"),
                Some(&self.admin),
                value,
                CTL_TIMEOUT,
            ) {
                return json(&body).and_then(|v| v["revision"].as_u64());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node is up, agrees on one leader and takes a write; returns
    /// the marker value last written (every node has applied it once it reads it).
    fn settle(&mut self) -> String {
        for i in 0..self.members.len() {
            if self.members[i].stopped {
                self.resume(i);
            }
            if self.members[i].down {
                self.start_again(i);
            }
        }
        self.heal();
        for i in 0..self.members.len() {
            self.wait_ready(i);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen: Vec<Option<usize>> = (0..self.members.len())
                .map(|i| self.leader_seen_by(i))
                .collect();
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: the nodes did not agree on a leader within 30s: {seen:?}\n{}\n{}",
                    self.test,
                    self.views(),
                    self.tails(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A write through each node in turn; the marker is the last one that committed.
        let marker = format!("{}/settled", self.test);
        let mut value = None;
        for i in 0..self.members.len() {
            let v = format!("settled-through-{i}");
            if self.write_through(i, &marker, &v, Duration::from_secs(10), "after healing") {
                value = Some(v);
            }
        }
        let Some(value) = value else {
            panic!(
                "{}: no write through any node after healing\n{}\n{}",
                self.test,
                self.views(),
                self.tails(60)
            );
        };
        self.log("settled: one leader, writes committed");
        value
    }

    /// Writes through node `i` within `limit`; a failure is recorded in `stuck` (once per
    /// incident) with what every node says. Returns whether it committed.
    fn write_through(
        &mut self,
        i: usize,
        key: &str,
        value: &str,
        limit: Duration,
        when: &str,
    ) -> bool {
        // A node already known to be stuck is not waited for again at length.
        let limit = if self.wedged.contains(&i) {
            limit.min(Duration::from_secs(2))
        } else {
            limit
        };
        if self.put_through(i, key, value, limit).is_some() {
            if self.wedged.remove(&i) {
                self.log(&format!("{} takes writes again", self.members[i].name));
            }
            return true;
        }
        if self.wedged.insert(i) {
            let report = format!(
                "{} stopped taking writes: none through it within {limit:?} {when} ({})\n{}\n{}",
                self.members[i].name,
                at(self.t0).trim(),
                self.views(),
                self.write_probe()
            );
            self.log(&format!("LIVENESS FAILURE: {report}"));
            self.stuck.push(report);
        }
        false
    }

    /// Fails the test if any node stopped taking writes at some point.
    fn assert_live(&self) {
        assert!(
            self.stuck.is_empty(),
            "{}: {} liveness failure(s) (the safety checks passed):\n{}",
            self.test,
            self.stuck.len(),
            self.stuck.join("\n")
        );
    }

    /// A write through every running node commits within `limit` (each node's own
    /// attempt); failures are recorded (see [`Cluster::assert_live`]).
    fn check_writes_commit(&mut self, limit: Duration, when: &str) {
        let key = format!("{}/live", self.test);
        let mut all = true;
        for i in 0..self.members.len() {
            if self.members[i].down || self.members[i].stopped {
                continue;
            }
            all &= self.write_through(i, &key, &format!("through-{i}"), limit, when);
        }
        if all {
            self.log("writes commit through every node");
        }
    }

    /// One key read through node `i`; `None` if it did not answer.
    fn read(&self, i: usize, key: &str, stale: bool) -> Option<Option<String>> {
        let q = if stale { "?consistency=stale" } else { "" };
        match http_within(
            self.members[i].api,
            "GET",
            &format!("/api/v1/kv/{key}{q}"),
            Some(&self.admin),
            "",
            CTL_TIMEOUT,
        ) {
            Ok((code, _, body)) => parse_get(code, &body).map(|(v, _)| v),
            Err(_) => None,
        }
    }

    /// Every key under `prefix` on node `i` (at most 10000; asserts there are no more).
    fn range(&self, i: usize, prefix: &str, stale: bool) -> Option<HashMap<String, String>> {
        let q = if stale { "&consistency=stale" } else { "" };
        let (code, _, body) = http_within(
            self.members[i].api,
            "GET",
            &format!("/api/v1/kv/{prefix}?prefix=true&limit=10000{q}"),
            Some(&self.admin),
            "",
            Duration::from_secs(10),
        )
        .ok()?;
        if code != 200 {
            return None;
        }
        let v = json(&body)?;
        assert_eq!(v["more"], false, "more than 10000 keys under {prefix}");
        Some(
            v["items"]
                .as_array()?
                .iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_string(),
                        kv["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    /// The final value of every key the workload touched, through linearizable reads
    /// (retried through any node).
    fn final_state(&self, w: &Finished) -> HashMap<String, Option<String>> {
        let mut out = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0usize;
        for key in w.spec.hot_keys() {
            loop {
                n += 1;
                if let Some(v) = self.read(n % self.members.len(), &key, false) {
                    out.insert(key.clone(), v);
                    break;
                }
                self.check_deadline(deadline, "final linearizable reads");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for c in 0..w.spec.clients.len() {
            if w.spec.clients[c].unique_percent == 0 {
                continue;
            }
            let prefix = w.spec.unique_prefix(c);
            loop {
                n += 1;
                if let Some(items) = self.range(n % self.members.len(), &prefix, false) {
                    out.extend(items.into_iter().map(|(k, v)| (k, Some(v))));
                    break;
                }
                self.check_deadline(deadline, "final linearizable range reads");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        out
    }

    /// Every node, once it has applied the marker write, holds exactly `expected` for
    /// every key the workload touched (read from its local state).
    fn assert_converged(
        &self,
        w: &Finished,
        marker: &str,
        expected: &HashMap<String, Option<String>>,
    ) {
        let marker_key = format!("{}/settled", self.test);
        for i in 0..self.members.len() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.read(i, &marker_key, true) != Some(Some(marker.to_string())) {
                if Instant::now() > deadline {
                    panic!(
                        "{}: {} did not apply the settle marker within 30s\n{}",
                        self.test,
                        self.members[i].name,
                        self.tails(60)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut local: HashMap<String, Option<String>> = HashMap::new();
            for key in w.spec.hot_keys() {
                let v = self
                    .read(i, &key, true)
                    .unwrap_or_else(|| panic!("stale read of {key} on {}", self.members[i].name));
                local.insert(key, v);
            }
            for c in 0..w.spec.clients.len() {
                if w.spec.clients[c].unique_percent == 0 {
                    continue;
                }
                let prefix = w.spec.unique_prefix(c);
                let items = self
                    .range(i, &prefix, true)
                    .unwrap_or_else(|| panic!("stale range {prefix} on {}", self.members[i].name));
                local.extend(items.into_iter().map(|(k, v)| (k, Some(v))));
            }
            let mut diffs = Vec::new();
            let keys: HashSet<&String> = expected.keys().chain(local.keys()).collect();
            for k in keys {
                let (e, l) = (
                    expected.get(k).cloned().flatten(),
                    local.get(k).cloned().flatten(),
                );
                if e != l {
                    diffs.push(format!(
                        "{k}: cluster {e:?}, {} {l:?}",
                        self.members[i].name
                    ));
                }
            }
            diffs.sort();
            assert!(
                diffs.is_empty(),
                "{}: {} diverges from the cluster after catching up ({} keys):\n{}",
                self.test,
                self.members[i].name,
                diffs.len(),
                diffs
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        self.log(&format!(
            "every node holds the same {} keys",
            expected.len()
        ));
    }

    /// What every node says about the cluster (`/api/v1/members`), for failure messages.
    fn views(&self) -> String {
        let mut out = String::from("members views:\n");
        for (i, m) in self.members.iter().enumerate() {
            let v = self
                .members_view(i)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(no answer)".into());
            out += &format!("  {}: {v}\n", m.name);
        }
        out
    }

    /// For a cluster that stopped taking writes: what a direct write to each node does,
    /// and each node's Raft and proposal counters (`/metrics`) before and after it.
    fn write_probe(&self) -> String {
        let metrics = |i: usize| -> String {
            match http_within(
                self.members[i].api,
                "GET",
                "/metrics",
                None,
                "",
                CTL_TIMEOUT,
            ) {
                Ok((200, _, body)) => body
                    .lines()
                    .filter(|l| {
                        l.starts_with("tessera_raft") || l.starts_with("tessera_store_revision")
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => format!("{other:?}"),
            }
        };
        let mut out = String::from("write probe:\n");
        for (i, m) in self.members.iter().enumerate() {
            let before = metrics(i);
            let put = http_within(
                m.api,
                "PUT",
                &format!("/api/v1/kv/{}/probe", self.test),
                Some(&self.admin),
                "probe",
                Duration::from_secs(3),
            );
            let put = match put {
                Ok((code, _, body)) => format!("{code} {body}"),
                Err(e) => e.to_string(),
            };
            // A linearizable read takes the same forwarding path but not the proposer.
            let get = match http_within(
                m.api,
                "GET",
                &format!("/api/v1/kv/{}/probe", self.test),
                Some(&self.admin),
                "",
                Duration::from_secs(3),
            ) {
                Ok((code, _, body)) => format!("{code} {body}"),
                Err(e) => e.to_string(),
            };
            out += &format!(
                "  {}: PUT -> {put}\n    GET -> {get}\n    metrics before: {before}\n    metrics after:  {}\n",
                m.name,
                metrics(i)
            );
        }
        out
    }

    /// The last `n` lines of every node's log.
    fn tails(&self, n: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let logs = m.node.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let from = lines.len().saturating_sub(n);
            out += &format!("===== {} (last {n} lines) =====\n", m.name);
            out += &lines[from..].join("\n");
            out.push('\n');
        }
        out
    }

    /// No node panicked or reported a fatal Raft or storage error.
    fn assert_healthy_logs(&self) {
        for m in &self.members {
            let logs = m.node.logs();
            let bad: Vec<&str> = logs
                .lines()
                .filter(|l| {
                    l.contains("panicked")
                        || l.contains("Fatal")
                        || l.contains("StorageError")
                        || l.contains("Internal error")
                })
                .take(20)
                .collect();
            assert!(
                bad.is_empty(),
                "{}: {} logged failures:\n{}",
                self.test,
                m.name,
                bad.join("\n")
            );
        }
    }

    /// How many snapshot installs the nodes' logs show.
    fn snapshot_installs(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.node.stderr().matches("Installed snapshot").count())
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if m.stopped {
                m.node.signal("CONT");
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.tails(80));
        }
        // Keep the nodes' logs for a closer look (the data dirs are temporary).
        if let Some(dir) = std::env::var_os("TESSERA_KEEP_LOGS") {
            let dir = std::path::Path::new(&dir).join(&self.test);
            if std::fs::create_dir_all(&dir).is_ok() {
                for m in &self.members {
                    let _ = std::fs::write(dir.join(format!("{}.log", m.name)), m.node.logs());
                }
                eprintln!("{}: node logs kept in {}", self.test, dir.display());
            }
        }
    }
}

fn new_token(api: SocketAddr, admin: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((201, _, body)) = http_within(
            api,
            "POST",
            "/api/v1/tokens",
            Some(admin),
            r#"{"role":"control","ttl_secs":600}"#,
            CTL_TIMEOUT,
        ) {
            if let Some(t) = json(&body).and_then(|v| v["token"].as_str().map(String::from)) {
                return t;
            }
        }
        assert!(Instant::now() < deadline, "no join token within 20s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mixed linearizable gets and puts on hot keys from `clients` threads, each sending to
/// a random node.
fn mixed_spec(c: &Cluster, clients: usize, hot_keys: usize, limit: Duration, seed: u64) -> Spec {
    Spec {
        prefix: c.test.clone(),
        hot_keys,
        apis: c.apis(),
        clients: (0..clients)
            .map(|_| ClientPlan {
                delete_percent: 5,
                ..ClientPlan::mixed(vec![0, 1, 2], 45)
            })
            .collect(),
        timeout: OP_TIMEOUT,
        max_ops_per_client: 20_000,
        limit,
        seed,
    }
}

/// Client `i` always talks to node `i % 3`.
fn pinned(mut spec: Spec) -> Spec {
    let n = spec.apis.len();
    for (i, plan) in spec.clients.iter_mut().enumerate() {
        plan.targets = vec![i % n];
    }
    spec
}

/// Stops the workload, heals and settles the cluster, reads the final state, checks the
/// nodes converged and runs every checker; panics with the full report on a violation.
fn finish_and_check(c: &mut Cluster, w: Workload) -> (Finished, Verdict) {
    let w = w.finish();
    let t = w.tally();
    c.log(&format!("workload stopped: {t:?}\n{}", w.per_node()));
    let marker = c.settle();
    let final_state = c.final_state(&w);
    c.assert_converged(&w, &marker, &final_state);
    let ops = w.ops();
    let verdict = Verdict::judge(&ops, &final_state, &budget());
    c.log(&verdict.summary());
    assert!(verdict.is_ok(), "{}: {}", c.test, verdict.report());
    for (key, why) in verdict.wgl.unknown() {
        c.log(&format!("WGL gave no verdict for {key:?}: {why}"));
    }
    c.assert_healthy_logs();
    assert!(
        t.writes_ok >= 20 && t.reads_ok >= 10,
        "{}: too little was acknowledged to judge anything: {t:?}",
        c.test
    );
    (w, verdict)
}

/// Writes sent to node `node` that were invoked after `from` and acknowledged before
/// `to` (history nanoseconds).
fn acked_writes_to(w: &Finished, node: usize, from: u64, to: u64) -> Vec<Op> {
    let ops = w.ops();
    let by_id: HashMap<OpId, &Op> = ops.iter().map(|o| (o.id, o)).collect();
    w.meta
        .iter()
        .filter(|m| m.node == node)
        .filter_map(|m| by_id.get(&m.id).copied())
        .filter(|o| o.is_write() && o.invoke >= from && o.complete.is_some_and(|c| c < to))
        .cloned()
        .collect()
}

/// Writes acknowledged by nodes other than `node`, invoked after `from`, completed
/// before `to`.
fn acked_writes_elsewhere(w: &Finished, node: usize, from: u64, to: u64) -> usize {
    (0..w.spec.apis.len())
        .filter(|&n| n != node)
        .map(|n| acked_writes_to(w, n, from, to).len())
        .sum()
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

#[test]
fn leader_sigkill_under_load_loses_nothing() {
    // Frequent snapshots: a killed leader comes back behind the purged log and catches up
    // by snapshot install.
    let mut c = Cluster::start("fault-kill", 0, "snapshot_logs = 100");
    // Two clients per node, each always talking to its own node, so the restarted node
    // takes requests from its first moment on.
    let w = Workload::start(
        pinned(mixed_spec(&c, 6, 8, Duration::from_secs(90), 0x6b11)),
        &c.admin.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut kills = Vec::new();
    for _ in 0..2 {
        let old = c.leader(Duration::from_secs(10)).expect("a leader");
        c.kill(old);
        kills.push((old, w.history.now()));
        // A new leader among the survivors, and writes keep being acknowledged.
        let new = c.leader(Duration::from_secs(15)).expect("a new leader");
        assert_ne!(new, old, "the killed node is still reported as leader");
        c.log(&format!("new leader: {}", c.members[new].name));
        std::thread::sleep(Duration::from_secs(3));
        c.start_again(old);
        c.wait_ready(old);
        std::thread::sleep(Duration::from_secs(2));
        // The restarted node takes writes again (it forwards them to the new leader).
        c.check_writes_commit(
            Duration::from_secs(10),
            "after restarting the killed leader",
        );
    }
    let (w, _) = finish_and_check(&mut c, w);
    for (old, killed_at) in kills {
        let after =
            acked_writes_elsewhere(&w, old, killed_at + ns(Duration::from_secs(2)), u64::MAX);
        assert!(
            after > 0,
            "no write was acknowledged after the leader was killed"
        );
    }
    c.assert_live();
}

#[test]
fn follower_sigstop_under_load() {
    let mut c = Cluster::start("fault-stop", 1, "snapshot_logs = 100");
    // Two clients per node, each always talking to its own node: the ones on the stopped
    // node wait, the others show whether the cluster keeps committing.
    let w = Workload::start(
        pinned(mixed_spec(&c, 6, 8, Duration::from_secs(90), 0x5709)),
        &c.admin.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut windows = Vec::new();
    // A few times, each longer than several election timeouts: the stopped follower
    // campaigns when it wakes up, so the leader is deposed and usually re-elected.
    for cycle in 0..3 {
        let leader = c.leader(Duration::from_secs(10)).expect("a leader");
        let f = c.followers_of(leader)[cycle % 2];
        c.pause(f);
        let stopped_at = w.history.now();
        std::thread::sleep(Duration::from_millis(6 * ELECTION_MAX_MS));
        let resumed_at = w.history.now();
        c.resume(f);
        windows.push((f, stopped_at, resumed_at));
        std::thread::sleep(Duration::from_secs(1));
        c.check_writes_commit(Duration::from_secs(10), "after SIGCONT");
    }
    let (w, _) = finish_and_check(&mut c, w);
    for (f, stopped_at, resumed_at) in windows {
        let during =
            acked_writes_elsewhere(&w, f, stopped_at + ns(Duration::from_secs(1)), resumed_at);
        c.log(&format!(
            "{during} writes acknowledged while {} was stopped",
            c.members[f].name
        ));
        assert!(
            during >= 10,
            "the cluster did not keep committing while a follower was stopped ({during} writes)"
        );
    }
    c.assert_live();
}

#[test]
fn isolated_minority_cannot_commit() {
    let mut c = Cluster::start("fault-isolate", 2, "snapshot_logs = 100");
    // Three clients per node, each always talking to its own node, so the isolated node
    // keeps receiving requests while it is cut off.
    let spec = pinned(mixed_spec(&c, 9, 8, Duration::from_secs(60), 0x150));
    let w = Workload::start(spec, &c.admin.clone());
    std::thread::sleep(Duration::from_secs(3));
    let mut windows = Vec::new();
    let hold = Duration::from_secs(6);
    // First the leader, then a follower of whoever leads next.
    for phase in ["leader", "follower"] {
        let leader = c.leader(Duration::from_secs(15)).expect("a leader");
        let victim = if phase == "leader" {
            leader
        } else {
            c.followers_of(leader)[1]
        };
        c.isolate(victim);
        let cut = w.history.now();
        std::thread::sleep(hold);
        // The majority has a leader of its own by now.
        let other = c.followers_of(victim)[0];
        let majority_leader = c.leader_seen_by(other);
        c.log(&format!(
            "majority's leader while {} is isolated: {:?}",
            c.members[victim].name,
            majority_leader.map(|l| c.members[l].name.clone())
        ));
        let healed = w.history.now();
        c.heal();
        windows.push((phase, victim, cut, healed));
        std::thread::sleep(Duration::from_secs(2));
        // The node that was cut off takes writes again once healed.
        c.check_writes_commit(
            Duration::from_secs(10),
            &format!("after healing the isolated {phase}"),
        );
    }
    let (w, _) = finish_and_check(&mut c, w);
    let ops = w.ops();
    let by_id: HashMap<OpId, &Op> = ops.iter().map(|o| (o.id, o)).collect();
    for (phase, victim, cut, healed) in windows {
        let name = &c.members[victim].name;
        let minority = acked_writes_to(&w, victim, cut + ns(Duration::from_secs(1)), healed);
        let shown: Vec<String> = minority.iter().take(10).map(|o| o.to_string()).collect();
        assert!(
            minority.is_empty(),
            "the isolated {phase} {name} acknowledged {} write(s) invoked more than 1s after the cut:\n{}",
            minority.len(),
            shown.join("\n")
        );
        let sent = w
            .meta
            .iter()
            .filter(|m| m.node == victim)
            .filter(|m| {
                by_id.get(&m.id).is_some_and(|o| {
                    o.is_write()
                        && o.invoke >= cut + ns(Duration::from_secs(1))
                        && o.invoke < healed
                })
            })
            .count();
        let reads = w
            .meta
            .iter()
            .filter(|m| m.node == victim)
            .filter_map(|m| by_id.get(&m.id))
            .filter(|o| !o.is_write() && o.complete.is_some())
            .filter(|o| o.invoke >= cut + ns(Duration::from_secs(1)) && o.invoke < healed)
            .count();
        c.log(&format!(
            "the isolated {phase} answered {reads} linearizable read(s) invoked during the cut"
        ));
        let majority = acked_writes_elsewhere(&w, victim, cut + ns(Duration::from_secs(2)), healed);
        c.log(&format!(
            "isolated {phase} {name}: {sent} write(s) sent to it during the cut, none acknowledged; the majority acknowledged {majority}"
        ));
        assert!(
            sent > 0,
            "no write reached the isolated {phase}: the test proved nothing"
        );
        assert!(
            majority >= 10,
            "the majority did not keep committing while the {phase} was isolated ({majority})"
        );
    }
    c.assert_live();
}

#[test]
fn the_checker_catches_stale_reads() {
    let mut c = Cluster::start("fault-stale", 3, "");
    let leader = c.leader(Duration::from_secs(10)).expect("a leader");
    let lagging = c.followers_of(leader)[0];
    let majority: Vec<usize> = c.followers_of(lagging);
    // Writers and linearizable readers on the majority; stale readers on the follower
    // that is about to be cut off: the broken read path under test.
    let mut clients: Vec<ClientPlan> = (0..4)
        .map(|_| ClientPlan::mixed(majority.clone(), 30))
        .collect();
    clients.extend((0..2).map(|_| ClientPlan {
        stale_reads: true,
        ..ClientPlan::mixed(vec![lagging], 100)
    }));
    let spec = Spec {
        prefix: c.test.clone(),
        hot_keys: 4,
        apis: c.apis(),
        clients,
        timeout: OP_TIMEOUT,
        max_ops_per_client: 20_000,
        limit: Duration::from_secs(60),
        seed: 0x57a1e,
    };
    let w = Workload::start(spec, &c.admin.clone());
    std::thread::sleep(Duration::from_secs(2));
    c.isolate(lagging);
    let cut = w.history.now();
    std::thread::sleep(Duration::from_secs(4));
    let healed = w.history.now();
    c.heal();
    std::thread::sleep(Duration::from_secs(1));
    let w = w.finish();
    c.log(&format!("workload stopped: {:?}", w.tally()));
    let marker = c.settle();
    let final_state = c.final_state(&w);
    c.assert_converged(&w, &marker, &final_state);

    // The honest history: every op but the stale reads. It must pass.
    let ops = w.ops();
    let stale: HashSet<OpId> = w.meta.iter().filter(|m| m.stale).map(|m| m.id).collect();
    let honest: Vec<Op> = ops
        .iter()
        .filter(|o| !stale.contains(&o.id))
        .cloned()
        .collect();
    let clean = Verdict::judge(&honest, &final_state, &budget());
    c.log(&format!("without stale reads: {}", clean.summary()));
    assert!(clean.is_ok(), "{}", clean.report());

    // Add the stale reads the partitioned follower answered more than 1s into the cut:
    // both checkers must object, and on those reads.
    let partitioned: Vec<Op> = ops
        .iter()
        .filter(|o| stale.contains(&o.id) && o.complete.is_some())
        .filter(|o| o.invoke >= cut + ns(Duration::from_secs(1)) && o.invoke < healed)
        .cloned()
        .collect();
    assert!(
        partitioned.len() >= 10,
        "the partitioned follower answered only {} stale reads",
        partitioned.len()
    );
    let bad: HashSet<OpId> = partitioned.iter().map(|o| o.id).collect();
    let mut mixed = honest.clone();
    mixed.extend(partitioned.iter().cloned());
    mixed.sort_by_key(|o| o.id);
    let verdict = Verdict::judge(&mixed, &final_state, &budget());
    c.log(&format!(
        "with {} stale reads from the partitioned follower: {}",
        partitioned.len(),
        verdict.summary()
    ));
    let first: Vec<&str> = verdict
        .revisions
        .violations
        .iter()
        .take(5)
        .map(|v| v.message.as_str())
        .collect();
    eprintln!(
        "first revision violations:\n{}\n{}",
        first.join("\n"),
        verdict.wgl
    );
    assert!(
        !verdict.revisions.is_ok(),
        "the revision checker accepted stale reads from a partitioned follower"
    );
    assert!(
        verdict
            .revisions
            .violations
            .iter()
            .all(|v| v.ops.iter().any(|id| bad.contains(id))),
        "a violation that involves no stale read, though the same history without them passed"
    );
    assert!(
        verdict.wgl.has_violation(),
        "WGL accepted stale reads from a partitioned follower:\n{}",
        verdict.wgl
    );
    c.assert_healthy_logs();
    c.assert_live();
}

#[test]
fn snapshot_and_purge_under_load() {
    let run_for = secs_from_env("TESSERA_STRESS_SECS", 20);
    let mut c = Cluster::start("fault-snap", 4, "snapshot_logs = 100");
    let mut rng = Rng::new(seed_from_env("TESSERA_STRESS_SEED"));
    // Mostly writes, half of them to write-once keys (every one must survive), some
    // reads, from 8 clients to every node.
    let spec = Spec {
        prefix: c.test.clone(),
        hot_keys: 16,
        apis: c.apis(),
        clients: (0..8)
            .map(|_| ClientPlan {
                targets: vec![0, 1, 2],
                read_percent: 10,
                delete_percent: 2,
                unique_percent: 50,
                stale_reads: false,
            })
            .collect(),
        timeout: OP_TIMEOUT,
        max_ops_per_client: 18_000,
        limit: run_for + Duration::from_secs(60),
        seed: rng.next_u64(),
    };
    let w = Workload::start(spec, &c.admin.clone());
    let deadline = Instant::now() + run_for;
    let mut cycles = 0;
    std::thread::sleep(Duration::from_secs(2));
    while Instant::now() < deadline {
        let Some(leader) = c.leader(Duration::from_secs(10)) else {
            c.log("no leader within 10s; retrying");
            continue;
        };
        let f = *rng.pick(&c.followers_of(leader));
        c.kill(f);
        std::thread::sleep(rng.millis(800, 2000));
        c.start_again(f);
        if rng.chance(40) {
            // Kill it again while it is likely catching up (installing a snapshot).
            std::thread::sleep(rng.millis(100, 700));
            c.kill(f);
            std::thread::sleep(rng.millis(200, 600));
            c.start_again(f);
        }
        c.wait_ready(f);
        c.check_writes_commit(Duration::from_secs(10), "after restarting a follower");
        cycles += 1;
        std::thread::sleep(rng.millis(500, 1500));
    }
    let installs = c.snapshot_installs();
    c.log(&format!(
        "{cycles} kill cycles, {installs} snapshot installs"
    ));
    let (w, _) = finish_and_check(&mut c, w);
    let t = w.tally();
    assert!(
        installs > 0,
        "no follower caught up through a snapshot: the path under test was not exercised"
    );
    assert!(
        t.writes_ok >= 1000,
        "too few writes for a stress test: {t:?}"
    );
    c.assert_live();
}

/// The faults the soak draws from.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    KillFollower,
    Stop,
    Isolate,
}

#[test]
fn soak_randomized_faults() {
    let run_for = secs_from_env("TESSERA_SOAK_SECS", 30);
    let seed = seed_from_env("TESSERA_SOAK_SEED");
    eprintln!(
        "soak: TESSERA_SOAK_SEED={seed} TESSERA_SOAK_SECS={}",
        run_for.as_secs()
    );
    let mut rng = Rng::new(seed);
    let mut c = Cluster::start("fault-soak", 5, "snapshot_logs = 100");
    let spec = mixed_spec(&c, 6, 10, run_for + Duration::from_secs(60), rng.next_u64());
    let w = Workload::start(spec, &c.admin.clone());
    let deadline = Instant::now() + run_for;
    // (node, cut, healed) of every isolation, to check the minority never committed.
    let mut isolations = Vec::new();
    let mut steps = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    while Instant::now() < deadline {
        let fault = *rng.pick(&[
            Fault::KillLeader,
            Fault::KillFollower,
            Fault::Stop,
            Fault::Isolate,
        ]);
        let hold = rng.millis(1000, 4000);
        let Some(leader) = c.leader(Duration::from_secs(10)) else {
            c.log("no leader within 10s; waiting");
            continue;
        };
        let victim = match fault {
            Fault::KillLeader => leader,
            Fault::KillFollower => *rng.pick(&c.followers_of(leader)),
            Fault::Stop | Fault::Isolate => rng.below(3) as usize,
        };
        c.log(&format!(
            "fault {fault:?} on {} for {hold:?}",
            c.members[victim].name
        ));
        steps.push(format!("{fault:?} {} {hold:?}", c.members[victim].name));
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                c.kill(victim);
                std::thread::sleep(hold);
                c.start_again(victim);
                c.wait_ready(victim);
            }
            Fault::Stop => {
                c.pause(victim);
                std::thread::sleep(hold);
                c.resume(victim);
            }
            Fault::Isolate => {
                c.isolate(victim);
                let cut = w.history.now();
                std::thread::sleep(hold);
                isolations.push((victim, cut, w.history.now()));
                c.heal();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        c.check_writes_commit(Duration::from_secs(10), &format!("after {fault:?}"));
        std::thread::sleep(rng.millis(0, 1500));
    }
    let (w, _) = finish_and_check(&mut c, w);
    for (victim, cut, healed) in isolations {
        let minority = acked_writes_to(&w, victim, cut + ns(Duration::from_secs(1)), healed);
        let shown: Vec<String> = minority.iter().take(10).map(|o| o.to_string()).collect();
        assert!(
            minority.is_empty(),
            "seed {seed}: isolated {} acknowledged {} write(s) invoked more than 1s after the cut:\n{}",
            c.members[victim].name,
            minority.len(),
            shown.join("\n")
        );
    }
    c.log(&format!(
        "soak with seed {seed}: safety checks passed: {} faults: {}",
        steps.len(),
        steps.join(", ")
    ));
    if !c.stuck.is_empty() {
        eprintln!("soak: replay with TESSERA_SOAK_SEED={seed}");
    }
    c.assert_live();
}

/// The checkers are wired to the recorded history the way the tests above rely on: a
/// write acknowledged at a revision below a read's that the read does not reflect is
/// flagged. (No cluster: a synthetic history through the same `History` recorder.)
#[test]
fn workload_recording_feeds_the_checkers() {
    let h = crate::lincheck::History::new();
    let w = h.invoke_put(0, "k", "a");
    h.ok_write(w, 5);
    let r = h.invoke_get(1, "k");
    h.ok_get(r, None, 6);
    let lost = h.invoke_put(0, "k", "b");
    h.info(lost);
    assert_eq!(h.status(lost), Some(Status::Unknown));
    let ops = h.ops();
    assert!(!check_revisions(&ops).is_ok());
    assert!(check_wgl(&ops, &budget()).has_violation());
}
