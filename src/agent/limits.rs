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
mod tests {
    use super::*;

    fn all() -> Resources {
        Resources {
            memory_mb: Some(256),
            cpu_millis: Some(500),
            open_files: Some(4096),
            pids: Some(128),
        }
    }

    /// A directory standing in for a cgroup v2 `/sys/fs/cgroup` (the real one needs
    /// root on a cgroup v2 host; this machine has v1).
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        root
    }

    #[test]
    fn cgroup_v2_is_used_when_it_has_the_controllers() {
        let root = fake_root("cpuset cpu io memory hugetlb pids rdma misc\n");
        let (m, why) = Mechanism::detect(root.path());
        assert_eq!(m, Mechanism::CgroupV2(root.path().join("tessera")), "{why}");
        assert_eq!(
            std::fs::read_to_string(root.path().join("tessera/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let me = std::process::id();
        let applied = m.apply(
            "echo-rz00-0",
            me,
            &Resources {
                open_files: None,
                ..all()
            },
        );
        let dir = root.path().join(format!("tessera/echo-rz00-0-{me}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "128");
        assert_eq!(read("cgroup.procs"), me.to_string());
        assert!(
            applied.starts_with("memory 256 MiB, cpu 0.50, pids 128, cgroup"),
            "{applied}"
        );
        assert!(!applied.contains("not applied"), "{applied}");

        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(m.reap("echo-rz00-0", me), "an OOM kill is seen");
        std::fs::write(dir.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        assert!(!m.reap("echo-rz00-0", me));
    }

    #[test]
    fn without_cgroup_v2_rlimits_are_set_on_the_process() {
        let none = tempfile::tempdir().unwrap();
        let (m, why) = Mechanism::detect(none.path());
        assert_eq!(m, Mechanism::Rlimits);
        assert!(why.contains("no cgroup v2"), "{why}");
        let (m2, why) = Mechanism::detect(fake_root("cpu io\n").path());
        assert_eq!(m2, Mechanism::Rlimits);
        assert!(why.contains("memory, pids"), "{why}");

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let applied = m.apply("x", child.id(), &all());
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            applied.contains("address space 256 MiB (rlimit)"),
            "{applied}"
        );
        assert!(applied.contains("open files 4096"), "{applied}");
        assert!(
            applied.contains("not applied: cpu: needs cgroup v2, pids: needs cgroup v2"),
            "{applied}"
        );
        let line = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {limits}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            line("Max address space").contains(&(256u64 << 20).to_string()),
            "{limits}"
        );
        assert!(line("Max open files").contains("4096 4096"), "{limits}");
        assert!(!m.reap("x", 1));
    }

    /// A directory standing in for a cgroup v1 `/sys/fs/cgroup`.
    fn fake_v1(pids: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let mut files = vec![
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
        ];
        if pids {
            files.push(("pids", "pids.max"));
        }
        // A real hierarchy gives a new group its controller's files; here they are made
        // beforehand.
        for (dir, file) in files {
            std::fs::create_dir_all(root.path().join(dir).join("tessera")).unwrap();
            std::fs::write(root.path().join(dir).join("cgroup.procs"), "").unwrap();
            std::fs::write(root.path().join(dir).join("tessera").join(file), "max").unwrap();
        }
        root
    }

    #[test]
    fn cgroup_v1_hierarchies_are_used_without_cgroup_v2() {
        let root = fake_v1(true);
        let (m, why) = Mechanism::detect(root.path());
        let r = root.path();
        assert_eq!(
            m,
            Mechanism::CgroupV1(V1 {
                memory: r.join("memory/tessera"),
                cpu: Some(r.join("cpu/tessera")),
                pids: Some(r.join("pids/tessera")),
            }),
            "{why}"
        );
        let me = std::process::id();
        let applied = m.apply("echo-rz00-0", me, &all());
        let g = format!("echo-rz00-0-{me}");
        let read = |d: &str, f: &str| {
            std::fs::read_to_string(r.join(d).join("tessera").join(&g).join(f)).unwrap()
        };
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids", "pids.max"), "128");
        for d in ["memory", "cpu", "pids"] {
            assert_eq!(read(d, "cgroup.procs"), me.to_string());
        }
        assert!(
            applied.starts_with(
                "memory 256 MiB (cgroup v1), cpu 0.50 (cgroup v1), pids 128 (cgroup v1)"
            ),
            "{applied}"
        );
        // An OOM kill is read from memory.oom_control.
        std::fs::write(
            r.join("memory/tessera").join(&g).join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert!(m.reap("echo-rz00-0", me));

        // Without a pids hierarchy, pids limits are reported as not applied.
        let (m, why) = Mechanism::detect(fake_v1(false).path());
        assert!(why.contains("no pids hierarchy"), "{why}");
        let applied = m.apply("x", me, &all());
        assert!(
            applied.contains("not applied: pids: no cgroup v1 pids hierarchy"),
            "{applied}"
        );
    }

    /// Groups whose process is gone are removed when the agent starts; others stay.
    #[test]
    fn groups_of_dead_processes_are_swept() {
        let root = fake_v1(true);
        let parent = root.path().join("memory/tessera");
        std::fs::create_dir_all(&parent).unwrap();
        let live = parent.join(format!("echo-rz00-0-{}", std::process::id()));
        let dead = parent.join("echo-rz00-0-4194305"); // above any pid_max
        let other = parent.join("not-a-group");
        for d in [&live, &dead, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        Mechanism::detect(root.path());
        assert!(live.exists() && other.exists() && !dead.exists());
    }

    /// On a machine with a writable cgroup v1 memory hierarchy (this one), a real
    /// process over its limit is killed by the kernel and the kill is seen as an OOM.
    #[test]
    fn a_real_cgroup_v1_limit_is_enforced_here() {
        let root = Path::new("/sys/fs/cgroup");
        let (m, why) = Mechanism::detect(root);
        if !matches!(m, Mechanism::CgroupV1(_)) {
            eprintln!("skipped: this machine gives no cgroup v1 to manage ({why})");
            return;
        }
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec tail /dev/zero"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let name = "limits-test";
        let applied = m.apply(
            name,
            pid,
            &Resources {
                memory_mb: Some(32),
                cpu_millis: Some(200),
                open_files: None,
                pids: Some(16),
            },
        );
        assert!(
            applied.starts_with("memory 32 MiB (cgroup v1)"),
            "{applied}"
        );
        if let Mechanism::CgroupV1(v1) = &m {
            for (have, what) in [
                (v1.cpu.is_some(), "cpu 0.20 (cgroup v1)"),
                (v1.pids.is_some(), "pids 16 (cgroup v1)"),
            ] {
                assert_eq!(applied.contains(what), have, "{applied}");
            }
            if let Some(pids) = &v1.pids {
                let max =
                    std::fs::read_to_string(pids.join(format!("{name}-{pid}/pids.max"))).unwrap();
                assert_eq!(max.trim(), "16");
            }
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.contains(&format!("tessera/{name}-{pid}")),
            "{cgroups}"
        );
        // Now it allocates without bound: the kernel stops it at 32 MiB.
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("not stopped at its memory limit");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(m.reap(name, pid), "the OOM kill is seen");
        let Mechanism::CgroupV1(v1) = &m else {
            unreachable!()
        };
        assert!(
            !v1.memory.join(format!("{name}-{pid}")).exists(),
            "the group is removed"
        );
    }

    #[test]
    fn oom_kill_counts_are_read() {
        assert_eq!(oom_kills("low 0\noom_kill 7\n"), 7);
        assert_eq!(oom_kills("low 0\n"), 0);
    }
}
