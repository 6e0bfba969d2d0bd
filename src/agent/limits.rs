//! Resource limits of VM-mode instances (`spec.resources` of an app).
//!
//! - **cgroup v2**, when the unified hierarchy is mounted at `/sys/fs/cgroup` and this
//!   agent may create groups there: each instance gets a group under `tessera/` with
//!   `memory.max`, `memory.swap.max = 0`, `cpu.max` and `pids.max` (named
//!   `tessera/<instance>-<pid>`: one per process); the instance's
//!   process moves in right after it starts. An exit is checked against the group's
//!   `memory.events`, so a kill by the OOM killer is reported as such.
//! - **cgroup v1** (RHEL/CentOS 7 and other hosts with the legacy hierarchies), when
//!   `/sys/fs/cgroup/memory` (and `cpu`, `pids` where mounted) let this agent make a
//!   `tessera` group: the same per-process groups in each controller's hierarchy, with
//!   `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, no swap, where swap
//!   accounting is on), `cpu.cfs_quota_us` per `cpu.cfs_period_us`, and `pids.max`. OOM
//!   kills are read from `memory.oom_control`.
//! - **rlimits** otherwise (no cgroup this agent may manage): set on the started
//!   process with prlimit(2): `RLIMIT_AS` for memory (an address-space cap, so
//!   allocations fail rather than the kernel killing the process), `RLIMIT_NOFILE`.
//!   There is no CPU share without cgroups; the status says so.
//!
//! Either way `openFiles` is an rlimit (cgroups have no such knob). What was applied is
//! reported in the instance's `status.limits`. Groups of processes that are gone (an
//! agent killed before it could remove them) are removed when the agent starts.

use crate::model::specs::Resources;
use std::path::{Path, PathBuf};

/// How this machine limits instances.
#[derive(Clone, Debug, PartialEq)]
pub enum Mechanism {
    /// The parent group (`<root>/tessera`) under which each instance gets its own.
    CgroupV2(PathBuf),
    /// cgroup v1: the `tessera` group in each controller's hierarchy this agent may use.
    CgroupV1(V1),
    Rlimits,
}

/// The `tessera` parent groups of the cgroup v1 hierarchies (memory is required).
#[derive(Clone, Debug, PartialEq)]
pub struct V1 {
    pub memory: PathBuf,
    pub cpu: Option<PathBuf>,
    pub pids: Option<PathBuf>,
}

impl Mechanism {
    /// cgroup v2 when `root` is a unified hierarchy in which a `tessera` group can be
    /// made and given the memory, cpu and pids controllers; else cgroup v1 when its
    /// memory hierarchy is mounted under `root` and a `tessera` group can be made there;
    /// rlimits otherwise.
    pub fn detect(root: &Path) -> (Mechanism, String) {
        let (m, why) = Mechanism::detect_v2(root);
        if m != Mechanism::Rlimits {
            return (m, why);
        }
        match detect_v1(root) {
            Ok((v1, how)) => {
                sweep(&v1.parents());
                (Mechanism::CgroupV1(v1), how)
            }
            Err(no) => (Mechanism::Rlimits, format!("{why}; {no}")),
        }
    }

    fn detect_v2(root: &Path) -> (Mechanism, String) {
        let controllers = match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) => c,
            Err(_) => {
                return (
                    Mechanism::Rlimits,
                    format!("no cgroup v2 hierarchy at {}", root.display()),
                )
            }
        };
        let have: Vec<&str> = controllers.split_whitespace().collect();
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        if !missing.is_empty() {
            return (
                Mechanism::Rlimits,
                format!("cgroup v2 lacks the {} controller(s)", missing.join(", ")),
            );
        }
        let parent = root.join("tessera");
        let enable =
            |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
        let made = std::fs::create_dir_all(&parent)
            .and_then(|_| enable(root))
            .and_then(|_| enable(&parent));
        match made {
            Ok(()) => {
                sweep(std::slice::from_ref(&parent));
                (
                    Mechanism::CgroupV2(parent.clone()),
                    format!("cgroup v2 under {}", parent.display()),
                )
            }
            Err(e) => (
                Mechanism::Rlimits,
                format!("cannot manage cgroups under {}: {e}", root.display()),
            ),
        }
    }

    /// Puts process `pid` of `instance` under `limits`; answers what was applied, for
    /// the instance's status. Failing to apply a limit is reported, never fatal.
    pub fn apply(&self, instance: &str, pid: u32, limits: &Resources) -> String {
        let mut applied = Vec::new();
        let mut problems = Vec::new();
        match self {
            Mechanism::CgroupV2(parent) => {
                let dir = parent.join(group(instance, pid));
                let mut write = |file: &str, value: String, what: String| match std::fs::write(
                    dir.join(file),
                    &value,
                ) {
                    Ok(()) => applied.push(what),
                    Err(e) => problems.push(format!("{file}: {e}")),
                };
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    problems.push(format!("cgroup {}: {e}", dir.display()));
                } else {
                    if let Some(mb) = limits.memory_mb {
                        write(
                            "memory.max",
                            (mb << 20).to_string(),
                            format!("memory {mb} MiB"),
                        );
                        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    }
                    if let Some(m) = limits.cpu_millis {
                        // Quota per 100 ms period: 1000 millicores = one whole CPU.
                        write(
                            "cpu.max",
                            format!("{} 100000", u64::from(m) * 100),
                            format!("cpu {}", cpus(m)),
                        );
                    }
                    if let Some(n) = limits.pids {
                        write("pids.max", n.to_string(), format!("pids {n}"));
                    }
                    write(
                        "cgroup.procs",
                        pid.to_string(),
                        format!("cgroup {}", dir.display()),
                    );
                }
            }
            Mechanism::CgroupV1(v1) => {
                let g = group(instance, pid);
                // Makes the group under `parent`, writes its settings, moves the process in.
                let join = |parent: &Path, settings: &[(&str, String)]| -> Result<(), String> {
                    let dir = parent.join(&g);
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
                    for (file, value) in settings {
                        std::fs::write(dir.join(file), value)
                            .map_err(|e| format!("{file}: {e}"))?;
                    }
                    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                        .map_err(|e| format!("{}/cgroup.procs: {e}", dir.display()))
                };
                let mut record = |r: Result<(), String>, what: String| match r {
                    Ok(()) => applied.push(what),
                    Err(e) => problems.push(e),
                };
                if let Some(mb) = limits.memory_mb {
                    let r = join(
                        &v1.memory,
                        &[("memory.limit_in_bytes", (mb << 20).to_string())],
                    );
                    record(r, format!("memory {mb} MiB (cgroup v1)"));
                    // No swap beyond the limit, where swap is accounted (memsw must not
                    // be below the memory limit, so it is written after it).
                    let memsw = v1.memory.join(&g).join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        let _ = std::fs::write(memsw, (mb << 20).to_string());
                    }
                }
                if let Some(m) = limits.cpu_millis {
                    let r = match &v1.cpu {
                        Some(cpu) => join(
                            cpu,
                            &[
                                ("cpu.cfs_period_us", "100000".to_string()),
                                ("cpu.cfs_quota_us", (u64::from(m) * 100).to_string()),
                            ],
                        ),
                        None => Err("cpu: no cgroup v1 cpu hierarchy".into()),
                    };
                    record(r, format!("cpu {} (cgroup v1)", cpus(m)));
                }
                if let Some(n) = limits.pids {
                    let r = match &v1.pids {
                        Some(pids) => join(pids, &[("pids.max", n.to_string())]),
                        None => Err("pids: no cgroup v1 pids hierarchy".into()),
                    };
                    record(r, format!("pids {n} (cgroup v1)"));
                }
            }
            Mechanism::Rlimits => {
                if let Some(mb) = limits.memory_mb {
                    match set(pid, rustix::process::Resource::As, mb << 20) {
                        Ok(()) => applied.push(format!("address space {mb} MiB (rlimit)")),
                        Err(e) => problems.push(format!("RLIMIT_AS: {e}")),
                    }
                }
                if limits.cpu_millis.is_some() {
                    problems.push("cpu: needs cgroup v2".into());
                }
                // RLIMIT_NPROC counts the whole user's processes, not the instance's.
                if limits.pids.is_some() {
                    problems.push("pids: needs cgroup v2".into());
                }
            }
        }
        if let Some(n) = limits.open_files {
            match set(pid, rustix::process::Resource::Nofile, n) {
                Ok(()) => applied.push(format!("open files {n}")),
                Err(e) => problems.push(format!("RLIMIT_NOFILE: {e}")),
            }
        }
        let mut out = applied.join(", ");
        if !problems.is_empty() {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str("not applied: ");
            out.push_str(&problems.join(", "));
        }
        out
    }

    /// After an instance's process ended: whether the OOM killer ended it (cgroups
    /// only), and its groups removed.
    pub fn reap(&self, instance: &str, pid: u32) -> bool {
        let g = group(instance, pid);
        match self {
            Mechanism::CgroupV2(parent) => {
                let dir = parent.join(g);
                let oom = std::fs::read_to_string(dir.join("memory.events"))
                    .ok()
                    .is_some_and(|events| oom_kills(&events) > 0);
                let _ = std::fs::remove_dir(&dir);
                oom
            }
            Mechanism::CgroupV1(v1) => {
                let oom = std::fs::read_to_string(v1.memory.join(&g).join("memory.oom_control"))
                    .ok()
                    .is_some_and(|c| oom_kills(&c) > 0);
                for parent in v1.parents() {
                    let _ = std::fs::remove_dir(parent.join(&g));
                }
                oom
            }
            Mechanism::Rlimits => false,
        }
    }
}

impl V1 {
    fn parents(&self) -> Vec<PathBuf> {
        std::iter::once(self.memory.clone())
            .chain(self.cpu.clone())
            .chain(self.pids.clone())
            .collect()
    }
}

/// The cgroup v1 hierarchies under `root` in which a `tessera` group can be made
/// (memory required; cpu and pids where mounted and writable).
fn detect_v1(root: &Path) -> Result<(V1, String), String> {
    // A hierarchy is there when it has groups (`cgroup.procs`); it is the controller's
    // when a group made in it has the controller's file (the root group of the pids
    // hierarchy has no `pids.max`, its children do).
    let usable = |controller: &str, probe: &str| -> Result<PathBuf, String> {
        let hierarchy = root.join(controller);
        if !hierarchy.join("cgroup.procs").exists() {
            return Err(format!(
                "no cgroup v1 {controller} hierarchy at {}",
                hierarchy.display()
            ));
        }
        let parent = hierarchy.join("tessera");
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        if !parent.join(probe).exists() {
            return Err(format!("{} has no {probe}", parent.display()));
        }
        Ok(parent)
    };
    let memory = usable("memory", "memory.limit_in_bytes")?;
    let cpu = usable("cpu", "cpu.cfs_quota_us").ok();
    let pids = usable("pids", "pids.max").ok();
    let mut how = format!("cgroup v1 under {}", memory.display());
    for (name, p) in [("cpu", &cpu), ("pids", &pids)] {
        match p {
            Some(p) => how.push_str(&format!(", {}", p.display())),
            None => how.push_str(&format!(
                " (no {name} hierarchy: {name} limits not applied)"
            )),
        }
    }
    Ok((V1 { memory, cpu, pids }, how))
}

/// Removes the groups under `parents` whose process is gone (named `<instance>-<pid>`;
/// an agent killed before it could remove them leaves them behind). A group that
/// still has processes cannot be removed, so nothing live is touched.
fn sweep(parents: &[PathBuf]) {
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if e.path().is_dir() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// One group per process, so that during an upgrade the old and the new process of an
/// instance are limited each on its own.
fn group(instance: &str, pid: u32) -> String {
    format!("{instance}-{pid}")
}

fn set(pid: u32, resource: rustix::process::Resource, value: u64) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::other("no such process"))?;
    let limit = rustix::process::Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    rustix::process::prlimit(Some(pid), resource, limit)?;
    Ok(())
}

fn cpus(millis: u32) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{:.2}", f64::from(millis) / 1000.0)
    }
}

/// The `oom_kill` count of a cgroup's `memory.events` (v2) or `memory.oom_control` (v1).
fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
