//! The agent's work loop: register this machine as a node and keep its heartbeat, run
//! the VM-mode instances placed on it as supervised processes, and report each one's
//! status (endpoint, readiness) so gateways route to it.
//!
//! - Registration: `PUT /api/v1/nodes/<node>` when the node does not exist yet (zone,
//!   address, capacity read from the machine); then `PUT …/status` every few seconds
//!   with the heartbeat and the machine's facts. Placement treats a node whose
//!   heartbeat is older than 20 s as down.
//! - Inputs: the instances, apps, units and artifacts come from a feed (`api::feed`: one
//!   list, then a watch; no polling), kept in [`Watched`]. The agent reconciles when a
//!   new set arrives and every second (health, restarts, stops), and only while the feed
//!   is connected: with the control plane away it changes nothing.
//! - Instances: the agent runs the instances placed on it. A new one is
//!   started (`builtin:echo` runs this binary's `demo-app`; otherwise the app's
//!   `command`), with `PORT` from `agent.ports` and `TESSERA_APP/UNIT/ZONE/VERSION/
//!   INSTANCE`, in its own process group, output to
//!   `<data_dir>/agent/instances/<name>/{stdout,stderr}.log`. It is ready once its health
//!   check (the app's `healthCheck` path, else a TCP connect) passes; a crash restarts it
//!   with backoff (1 s doubling to 30 s). An instance no longer placed here is stopped:
//!   SIGTERM after a grace for gateways to stop sending, SIGKILL after 5 s more. An
//!   instance whose definition changed is upgraded by surge: the new process starts on
//!   a new port, the old endpoint stays reported until the new one is ready, then the
//!   old process drains and stops the same way.
//! - Restart: the agent keeps `<data_dir>/agent/instances.json` (pid and port per
//!   instance) and adopts processes still running when it starts again.

mod drain;
mod inputs;
mod node;
mod prune;

use drain::{begin_leaving, step_stop, stop_now};
pub use inputs::Watched;

use super::artifacts::{self, ArtifactError, Unpacked};
use crate::api::Client;
use crate::model::specs::{AppSpec, ArtifactSpec, InstanceSpec, UnitSpec};
use crate::model::{Kind, Resource};
use crate::util::now_ms;
use http::Method;
use node::push_event;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// An instance's artifact made ready: the directory it runs in, and what it is.
type Prepared = Result<(PathBuf, Unpacked), ArtifactError>;
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct Supervisor {
    pub node: String,
    pub zone: Option<String>,
    pub ip: IpAddr,
    pub ports: RangeInclusive<u16>,
    /// `<data_dir>/agent`.
    pub dir: PathBuf,
    pub stop_on_exit: bool,
    pub exe: PathBuf,
    procs: BTreeMap<String, Proc>,
    /// Earlier processes of instances whose definition changed: they keep serving until
    /// the new process is ready and reported, then drain and stop.
    retiring: Vec<(String, Proc)>,
    /// Unpacked versions each instance keeps (`agent.keep_versions`), and when the
    /// node's disk was last pruned (see `prune.rs`).
    pub keep_versions: usize,
    /// `agent.instance_dir_grace_secs`.
    pub instance_dir_grace: Duration,
    last_prune: Option<Instant>,
    last_heartbeat: Option<Instant>,
    /// Node events not yet recorded (`events` resources named `<node>-<ms>-<n>`).
    events: Vec<Value>,
    event_seq: u64,
    /// How instances' `spec.resources` are enforced on this machine.
    limits: super::limits::Mechanism,
    /// What the agent works from, kept current by its feed.
    pub inputs: Option<std::sync::Arc<Watched>>,
    /// The control plane refused the credential (seen by the heartbeat).
    refused: Option<crate::api::ClientError>,
    /// This agent's listener, reported with the heartbeat as `agentApi` (control nodes
    /// read logs there): `https://IP:PORT` once it has its certificate, `http://` before.
    pub agent_api: Option<(std::net::SocketAddr, super::tls::AgentTls)>,
    /// The `agentApi` the last heartbeat reported (a change is reported at once).
    reported_api: Option<String>,
    /// Pressure thresholds in MiB (0 = off), and the conditions that held last time.
    pub pressure_mb: (u64, u64),
    pressure: Vec<&'static str>,
    /// The files the log collector follows, set on every pass.
    pub log_sources: std::sync::Arc<std::sync::Mutex<Vec<super::logs::follow::Source>>>,
}

/// What is kept on disk to adopt running instances after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kept {
    pid: u32,
    port: u16,
    #[serde(default)]
    launch: String,
}

struct Proc {
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    port: u16,
    /// What it was started with (app spec + version); a change restarts it.
    launch: String,
    ready: bool,
    restarts: u32,
    next_start: Instant,
    backoff: Duration,
    phase: &'static str,
    message: Option<String>,
    /// Set once it is no longer placed here: when that happened.
    leaving: Option<Instant>,
    /// Whether the gateways have drained its endpoint (see `drain.rs`).
    drain: Option<std::sync::Arc<std::sync::atomic::AtomicU8>>,
    term_sent: Option<Instant>,
    reported: Option<Value>,
    unit_zone: String,
    /// It exited without ever becoming ready on `port`: another process may hold that
    /// port (taken between the agent's check and the instance's bind), so the next
    /// start gets a fresh one.
    new_port: bool,
    /// The resource limits applied to the running process, as reported.
    limits: Option<String>,
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, sig);
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Whether process `pid` was started for `instance` (its environment says so).
fn is_instance(pid: u32, instance: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv == format!("TESSERA_INSTANCE={instance}").as_bytes())
        })
        .unwrap_or(false)
}

impl Supervisor {
    pub fn new(
        node: String,
        zone: Option<String>,
        ip: IpAddr,
        ports: RangeInclusive<u16>,
        dir: PathBuf,
        stop_on_exit: bool,
    ) -> Supervisor {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tessera"));
        let (limits, how) = super::limits::Mechanism::detect(Path::new("/sys/fs/cgroup"));
        tracing::info!(how = %how, "Instance resource limits");
        Supervisor {
            node,
            zone,
            ip,
            ports,
            dir,
            stop_on_exit,
            exe,
            procs: BTreeMap::new(),
            retiring: Vec::new(),
            keep_versions: 2,
            instance_dir_grace: Duration::from_secs(86_400),
            last_prune: None,
            last_heartbeat: None,
            events: Vec::new(),
            event_seq: 0,
            limits,
            agent_api: None,
            reported_api: None,
            inputs: None,
            refused: None,
            pressure_mb: (0, 0),
            pressure: Vec::new(),
            log_sources: Default::default(),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("instances.json")
    }

    fn save(&self) {
        let kept: BTreeMap<&String, Kept> = self
            .procs
            .iter()
            .filter_map(|(n, p)| {
                Some((
                    n,
                    Kept {
                        pid: p.pid?,
                        port: p.port,
                        launch: p.launch.clone(),
                    },
                ))
            })
            .collect();
        if let Ok(body) = serde_json::to_vec(&kept) {
            if let Err(e) = crate::util::write_atomic(&self.state_path(), &body, 0o600) {
                tracing::warn!(error = %e, "Saving the instance list failed");
            }
        }
    }

    /// Adopts instances that kept running while the agent was away.
    fn adopt(&mut self) {
        let Ok(bytes) = std::fs::read(self.state_path()) else {
            return;
        };
        let Ok(kept) = serde_json::from_slice::<BTreeMap<String, Kept>>(&bytes) else {
            return;
        };
        for (name, k) in kept {
            if pid_alive(k.pid) && is_instance(k.pid, &name) {
                tracing::info!(instance = %name, pid = k.pid, port = k.port, "Adopted a running instance");
                self.procs.insert(
                    name,
                    Proc {
                        child: None,
                        pid: Some(k.pid),
                        port: k.port,
                        launch: k.launch,
                        ready: false,
                        restarts: 0,
                        next_start: Instant::now(),
                        backoff: Duration::from_secs(1),
                        phase: "running",
                        message: None,
                        leaving: None,
                        drain: None,
                        term_sent: None,
                        reported: None,
                        unit_zone: String::new(),
                        new_port: false,
                        limits: None,
                    },
                );
            }
        }
    }

    /// Adopts what kept running (once, before the first [`Supervisor::run`]).
    pub fn start(&mut self) {
        let _ = std::fs::create_dir_all(self.dir.join("instances"));
        self.adopt();
        let adopted = self.procs.len();
        self.event(
            "Normal",
            "AgentStarted",
            None,
            format!(
                "agent {} started; adopted {adopted} running instance(s)",
                crate::telemetry::VERSION
            ),
        );
    }

    /// Works until shutdown (Ok) or until the control plane refuses the credential
    /// (Err: enrol again; the instances keep running meanwhile).
    pub async fn run(
        &mut self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        self.register(client).await;
        let watched = self.inputs.clone();
        loop {
            match self.tick(client).await {
                Ok(()) => {}
                Err(e) if e.status() == Some(401) => return Err(e.to_string()),
                Err(e) => tracing::warn!(error = %e, "Agent pass failed; retrying"),
            }
            // A new set of inputs wakes the loop at once (an upgrade starts without
            // waiting for the next second).
            let changed = async {
                match &watched {
                    Some(w) => w.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
                _ = changed => {}
            }
        }
        Ok(())
    }

    /// At shutdown: stop the instances, or leave them to be adopted.
    pub async fn finish(&mut self) {
        if self.stop_on_exit {
            self.stop_all().await;
        } else {
            self.save();
        }
    }

    async fn tick(&mut self, client: &Client) -> Result<(), crate::api::ClientError> {
        self.heartbeat(client).await;
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let Some(inputs) = self.inputs.as_ref().and_then(|w| w.current()) else {
            // No current inputs (the feed is not connected): place nothing new and stop
            // nothing new; stops already under way finish.
            self.stop_leaving().await;
            self.save();
            return Ok(());
        };
        let spec_map = |kind: Kind| -> BTreeMap<String, Value> {
            inputs
                .of_kind(kind)
                .map(|r| (r.metadata.name.clone(), r.spec.clone()))
                .collect()
        };
        let artifacts: BTreeMap<String, ArtifactSpec> = spec_map(Kind::Artifact)
            .into_iter()
            .filter_map(|(n, v)| Some((n, serde_json::from_value(v).ok()?)))
            .collect();
        let apps: BTreeMap<String, (Resource, Option<AppSpec>)> = inputs
            .of_kind(Kind::App)
            .map(|r| {
                let s = serde_json::from_value(r.spec.clone()).ok();
                (r.metadata.name.clone(), (r.clone(), s))
            })
            .collect();
        let units: BTreeMap<String, UnitSpec> = spec_map(Kind::Unit)
            .into_iter()
            .filter_map(|(n, v)| Some((n, serde_json::from_value(v).ok()?)))
            .collect();
        let mut mine = BTreeMap::new();
        for i in inputs.of_kind(Kind::Instance) {
            let Ok(s) = serde_json::from_value::<InstanceSpec>(i.spec.clone()) else {
                continue;
            };
            if s.node.as_deref() == Some(self.node.as_str()) {
                mine.insert(i.metadata.name.clone(), s);
            }
        }
        // Instances no longer placed here leave.
        let ip = self.ip;
        for (name, p) in self.procs.iter_mut() {
            if !mine.contains_key(name) && p.leaving.is_none() {
                tracing::info!(instance = %name, "Instance no longer placed here; draining it");
                begin_leaving(name, p, client, ip);
            }
        }
        let mut current_shas = BTreeMap::new();
        let mut prepared_any = false;
        for (name, spec) in &mine {
            let Some((_, Some(app))) = apps.get(&spec.app) else {
                continue;
            };
            let unit_zone = units
                .get(&spec.unit)
                .map(|u| u.zone.clone())
                .unwrap_or_default();
            // What the app runs from: a pushed artifact (by name), or builtin:echo / a command.
            let artifact = app
                .artifact
                .as_deref()
                .filter(|a| *a != "builtin:echo")
                .map(|a| match artifacts.get(a) {
                    Some(ArtifactSpec {
                        sha256: Some(sha), ..
                    }) => Ok(sha.clone()),
                    Some(_) => Err(format!("artifact `{a}` has no content (no sha256): push it with `tessera artifact push`")),
                    None => Err(format!("no artifact `{a}`: push it with `tessera artifact push`")),
                });
            let version = spec
                .version
                .clone()
                .or_else(|| {
                    app.artifact
                        .as_deref()
                        .and_then(|a| artifacts.get(a))
                        .map(|a| a.version.clone())
                })
                .unwrap_or_else(|| "v1".into());
            let launch = format!(
                "{}|{}|{}",
                serde_json::to_string(app).unwrap_or_default(),
                version,
                spec.unit
            );
            let restart = self
                .procs
                .get(name)
                .is_some_and(|p| p.launch != launch && !p.launch.is_empty());
            if restart {
                // Surge: the old process serves until the new one is ready and reported.
                tracing::info!(instance = %name, "Instance definition changed; starting the new version beside the old");
                if let Some(old) = self.procs.remove(name) {
                    self.retiring.push((name.clone(), old));
                }
            }
            if !self.procs.contains_key(name) {
                let port = self.free_port();
                self.procs.insert(
                    name.clone(),
                    Proc {
                        child: None,
                        pid: None,
                        port,
                        launch: launch.clone(),
                        ready: false,
                        restarts: 0,
                        next_start: Instant::now(),
                        backoff: Duration::from_secs(1),
                        phase: "starting",
                        message: None,
                        leaving: None,
                        drain: None,
                        term_sent: None,
                        reported: None,
                        unit_zone: unit_zone.clone(),
                        new_port: false,
                        limits: None,
                    },
                );
            }
            let Some(p) = self.procs.get_mut(name) else {
                continue;
            };
            p.unit_zone = unit_zone;
            if p.launch.is_empty() {
                p.launch = launch; // adopted: take the current definition as its own
            }
            if p.new_port && p.pid.is_none() {
                let port = self.free_port();
                if let Some(p) = self.procs.get_mut(name) {
                    p.port = port;
                    p.new_port = false;
                }
            }
            // The artifact is fetched (once per node) and unpacked (once per instance)
            // only when the process is about to start.
            let starting = self
                .procs
                .get(name)
                .is_some_and(|p| p.pid.is_none() && Instant::now() >= p.next_start);
            if let Some(Ok(sha)) = &artifact {
                current_shas.insert(name.clone(), sha.clone());
            }
            let prepared = match (artifact, starting) {
                (Some(a), true) => Some(self.prepare(client, name, a).await),
                _ => None,
            };
            prepared_any |= matches!(prepared, Some(Ok(_)));
            self.supervise(name, spec, app, &version, prepared).await;
        }
        self.collect_logs_of(&mine, &apps);
        let live = |s: &Self| {
            s.procs
                .values()
                .chain(s.retiring.iter().map(|(_, p)| p))
                .filter(|p| p.pid.is_some())
                .count()
        };
        let before = live(self);
        self.stop_leaving().await;
        // A version is pruned once nothing runs from it: after a start, or a stop.
        let stopped = live(self) < before;
        let placed = mine.keys().cloned().collect();
        self.prune(placed, current_shas, prepared_any || stopped)
            .await;
        self.save();
        self.report(client).await;
        self.flush_events(client).await;
        Ok(())
    }

    /// Tells the log collector what to follow: each instance's stdout and stderr, and
    /// its app's log directory (shared by an app's instances on this node).
    fn collect_logs_of(
        &self,
        mine: &BTreeMap<String, InstanceSpec>,
        apps: &BTreeMap<String, (Resource, Option<AppSpec>)>,
    ) {
        use super::logs::follow::Source;
        let mut per_app: BTreeMap<&str, usize> = BTreeMap::new();
        for spec in mine.values() {
            *per_app.entry(spec.app.as_str()).or_default() += 1;
        }
        let mut sources: Vec<Source> = Vec::new();
        for (name, spec) in mine {
            let dir = self.dir.join("instances").join(name);
            for f in ["stdout", "stderr"] {
                sources.push(Source {
                    path: dir.join(format!("{f}.log")),
                    dir: false,
                    app: spec.app.clone(),
                    unit: spec.unit.clone(),
                    instance: Some(name.clone()),
                    label: f.into(),
                });
            }
            let log_dir = apps
                .get(&spec.app)
                .and_then(|(_, a)| a.as_ref()?.log_dir.clone());
            if let Some(d) = log_dir {
                let path = PathBuf::from(d);
                if sources.iter().any(|s| s.path == path) {
                    continue;
                }
                let alone = per_app.get(spec.app.as_str()) == Some(&1);
                sources.push(Source {
                    path,
                    dir: true,
                    app: spec.app.clone(),
                    unit: spec.unit.clone(),
                    instance: alone.then(|| name.clone()),
                    label: String::new(),
                });
            }
        }
        *self.log_sources.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    fn free_port(&self) -> u16 {
        let used: Vec<u16> = self
            .procs
            .values()
            .chain(self.retiring.iter().map(|(_, p)| p))
            .map(|p| p.port)
            .collect();
        for port in self.ports.clone() {
            if used.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(SocketAddr::new(self.ip, port)).is_ok() {
                return port;
            }
        }
        *self.ports.start()
    }

    /// Keeps one instance running and finds out whether it is ready.
    /// Downloads (checking the digest) and unpacks an instance's artifact.
    async fn prepare(
        &mut self,
        client: &Client,
        name: &str,
        sha: Result<String, String>,
    ) -> Prepared {
        let sha = sha.map_err(ArtifactError::Failed)?;
        let file = artifacts::fetch(client, &self.dir.join("artifacts"), &sha).await?;
        let dest = self
            .dir
            .join("instances")
            .join(name)
            .join(format!("app-{}", &sha[..12.min(sha.len())]));
        let d = dest.clone();
        let kind = tokio::task::spawn_blocking(move || artifacts::unpack(&file, &d))
            .await
            .map_err(|e| ArtifactError::Failed(e.to_string()))?
            .map_err(|e| ArtifactError::Failed(format!("artifact {sha}: {e}")))?;
        Ok((dest, kind))
    }

    async fn supervise(
        &mut self,
        name: &str,
        spec: &InstanceSpec,
        app: &AppSpec,
        version: &str,
        prepared: Option<Prepared>,
    ) {
        let (ip, exe, dir) = (
            self.ip,
            self.exe.clone(),
            self.dir.join("instances").join(name),
        );
        let stop_on_exit = self.stop_on_exit;
        let limits = self.limits.clone();
        let (events, seq, node) = (&mut self.events, &mut self.event_seq, self.node.as_str());
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        if p.leaving.is_some() {
            return;
        }
        // Reap an exit.
        let exited = match (&mut p.child, p.pid) {
            (Some(c), _) => match c.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => None,
            },
            (None, Some(pid)) if !pid_alive(pid) => Some("exited".into()),
            _ => None,
        };
        if let Some(mut how) = exited {
            if p.pid.is_some_and(|pid| limits.reap(name, pid)) {
                let mb = app.resources.as_ref().and_then(|r| r.memory_mb);
                how = format!(
                    "killed by the OOM killer at its memory limit of {} MiB",
                    mb.unwrap_or(0)
                );
                push_event(
                    events,
                    seq,
                    node,
                    "Warning",
                    "OOMKilled",
                    Some(name),
                    format!("instance {name}: {how}"),
                );
            }
            p.new_port = !p.ready;
            tracing::warn!(instance = %name, status = %how, restarts = p.restarts, "Instance exited; restarting it with backoff");
            push_event(
                events,
                seq,
                node,
                "Warning",
                "InstanceExited",
                Some(name),
                format!(
                    "instance {name} exited ({how}); restarting it in {:?}",
                    p.backoff
                ),
            );
            p.child = None;
            p.pid = None;
            p.ready = false;
            p.restarts += 1;
            p.phase = "restarting";
            p.message = Some(format!("exited: {how}"));
            p.next_start = Instant::now() + p.backoff;
            p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
        }
        if p.pid.is_none() && Instant::now() >= p.next_start {
            let mut cwd = None;
            let planned: Result<Vec<String>, (String, &str)> = match prepared {
                _ if app.artifact.as_deref() == Some("builtin:echo") && app.command.is_empty() => {
                    Ok(vec![
                        exe.display().to_string(),
                        "demo-app".into(),
                        "--listen".into(),
                        SocketAddr::new(ip, p.port).to_string(),
                    ])
                }
                Some(Ok((dest, kind))) => {
                    let argv = artifacts::command(&app.command, &dest, &kind)
                        .map_err(|m| (m, "ArtifactFailed"));
                    cwd = Some(dest);
                    argv
                }
                Some(Err(ArtifactError::Corrupt(m))) => Err((m, "ArtifactCorrupt")),
                Some(Err(ArtifactError::Failed(m))) => Err((m, "ArtifactFailed")),
                None if !app.command.is_empty() => Ok(app.command.clone()),
                None => Err((
                    "the app has neither an artifact nor a command".into(),
                    "ArtifactFailed",
                )),
            };
            let argv = match planned {
                Ok(argv) => argv,
                Err((message, reason)) => {
                    tracing::warn!(instance = %name, reason, %message, "Cannot start an instance");
                    if p.message.as_deref() != Some(message.as_str()) {
                        push_event(
                            events,
                            seq,
                            node,
                            "Warning",
                            reason,
                            Some(name),
                            format!("instance {name}: {message}"),
                        );
                    }
                    p.phase = "failed";
                    p.message = Some(message);
                    p.next_start = Instant::now() + p.backoff;
                    p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                    return;
                }
            };
            let _ = std::fs::create_dir_all(&dir);
            let open = |f: &str| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(f))
            };
            let (Ok(out), Ok(err)) = (open("stdout.log"), open("stderr.log")) else {
                p.phase = "failed";
                p.message = Some(format!("cannot write logs under {}", dir.display()));
                return;
            };
            let mut cmd = tokio::process::Command::new(&argv[0]);
            if stop_on_exit {
                // `demo-app` dies with this process even if it is killed outright.
                cmd.env("TESSERA_PARENT_PID", std::process::id().to_string());
            }
            cmd.args(&argv[1..])
                .envs(&app.env)
                .env("PORT", p.port.to_string())
                .env("TESSERA_APP", &spec.app)
                .env("TESSERA_UNIT", &spec.unit)
                .env("TESSERA_ZONE", &p.unit_zone)
                .env("TESSERA_VERSION", version)
                .env("TESSERA_INSTANCE", name)
                .env("TESSERA_IP", ip.to_string())
                .stdin(std::process::Stdio::null())
                .current_dir(cwd.as_deref().unwrap_or(&dir))
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(false);
            match cmd.spawn() {
                Ok(child) => {
                    p.pid = child.id();
                    p.child = Some(child);
                    p.limits = match (&app.resources, p.pid) {
                        (Some(r), Some(pid)) => Some(limits.apply(name, pid, r)),
                        _ => None,
                    };
                    p.phase = "starting";
                    tracing::info!(instance = %name, pid = ?p.pid, port = p.port, "Started an instance");
                }
                Err(e) => {
                    p.phase = "failed";
                    p.message = Some(format!("cannot start `{}`: {e}", argv[0]));
                    push_event(
                        events,
                        seq,
                        node,
                        "Warning",
                        "InstanceStartFailed",
                        Some(name),
                        format!("instance {name}: cannot start `{}`: {e}", argv[0]),
                    );
                    p.next_start = Instant::now() + p.backoff;
                    p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if p.pid.is_some() {
            let addr = SocketAddr::new(ip, p.port);
            let ok = match app.health_check.as_ref() {
                Some(h) => http_ok(addr, &h.path).await,
                None => tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
            };
            if ok != p.ready {
                tracing::info!(instance = %name, ready = ok, "Instance readiness changed");
            }
            p.ready = ok;
            if ok {
                p.phase = "running";
                p.backoff = Duration::from_secs(1);
            }
        }
    }

    async fn stop_leaving(&mut self) {
        let limits = &self.limits;
        // A stopped process's cgroup (if any) is removed with it.
        let stop = |name: &str, p: &mut Proc| {
            let pid = p.pid;
            let gone = step_stop(name, p);
            if let (true, Some(pid)) = (gone, pid) {
                limits.reap(name, pid);
            }
            gone
        };
        let mut gone = Vec::new();
        for (name, p) in self.procs.iter_mut() {
            if stop(name, p) {
                gone.push(name.clone());
            }
        }
        for n in gone {
            self.procs.remove(&n);
        }
        self.retiring.retain_mut(|(name, p)| !stop(name, p));
    }

    async fn stop_all(&mut self) {
        for p in self.procs.values_mut() {
            stop_now(p).await;
        }
        for (_, p) in self.retiring.iter_mut() {
            stop_now(p).await;
        }
        self.procs.clear();
        self.retiring.clear();
        let _ = std::fs::remove_file(self.state_path());
    }

    /// Writes each instance's status when it changed.
    async fn report(&mut self, client: &Client) {
        let zone = self.zone.clone();
        for (name, p) in self.procs.iter_mut() {
            if p.leaving.is_some() {
                continue;
            }
            // During an upgrade the old process is what serves until the new one is ready.
            let old = self
                .retiring
                .iter()
                .find(|(n, o)| n == name && o.leaving.is_none() && o.ready);
            let (port, ready, pid) = match old {
                Some((_, o)) if !p.ready => (o.port, true, o.pid),
                _ => (p.port, p.ready, p.pid),
            };
            let status = json!({
                "endpoint": SocketAddr::new(self.ip, port).to_string(),
                "zone": zone.clone().unwrap_or_else(|| p.unit_zone.clone()),
                "ready": ready,
                "draining": false,
                "phase": p.phase,
                "pid": pid,
                "restarts": p.restarts,
                "message": p.message,
                "limits": p.limits,
            });
            if p.reported.as_ref() == Some(&status) {
                continue;
            }
            let path = format!("/api/v1/instances/{name}/status");
            match client
                .call::<Value>(Method::PUT, &path, Some(&json!({"status": status})))
                .await
            {
                Ok(_) => {
                    // The new process is what gateways route to now: retire the old.
                    if p.ready {
                        for (n, o) in self.retiring.iter_mut() {
                            if n == name && o.leaving.is_none() {
                                tracing::info!(instance = %name, "New version serving; draining the old process");
                                begin_leaving(n, o, client, self.ip);
                            }
                        }
                    }
                    p.reported = Some(status)
                }
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "Reporting instance status failed")
                }
            }
        }
    }
}

/// One HTTP/1.1 GET; true on a 2xx answer within a second.
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
