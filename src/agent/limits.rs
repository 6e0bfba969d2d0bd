//! Resource limits of VM-mode instances (`spec.resources` of an app).
//!
//! - **cgroup v2**, when the unified hierarchy is mounted at `/sys/fs/cgroup` and this
//!   agent may create groups there: each instance gets a group under `tessera/` with
//!   `memory.max`, `memory.swap.max = 0`, `cpu.max` and `pids.max` (named
//!   `tessera/<instance>-<pid>`: one per process); the instance's
//!   process moves in right after it starts. An exit is checked against the group's
//!   `memory.events`, so a kill by the OOM killer is reported as such.
//! - **rlimits** otherwise (cgroup v1, no delegation, no root): set on the started
//!   process with prlimit(2): `RLIMIT_AS` for memory (an address-space cap, so
//!   allocations fail rather than the kernel killing the process), `RLIMIT_NOFILE`.
//!   There is no CPU share without cgroups; the status says so.
//!
//! Either way `openFiles` is an rlimit (cgroups have no such knob). What was applied is
//! reported in the instance's `status.limits`.

use crate::model::specs::Resources;
use std::path::{Path, PathBuf};

/// How this machine limits instances.
#[derive(Clone, Debug, PartialEq)]
pub enum Mechanism {
    /// The parent group (`<root>/tessera`) under which each instance gets its own.
    CgroupV2(PathBuf),
    Rlimits,
}

impl Mechanism {
    /// cgroup v2 when `root` is a unified hierarchy in which a `tessera` group can be
    /// made and given the memory, cpu and pids controllers; rlimits otherwise.
    pub fn detect(root: &Path) -> (Mechanism, String) {
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
            Ok(()) => (
                Mechanism::CgroupV2(parent.clone()),
                format!("cgroup v2 under {}", parent.display()),
            ),
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

    /// After an instance's process ended: whether the OOM killer ended it (cgroup v2
    /// only), and the group removed.
    pub fn reap(&self, instance: &str, pid: u32) -> bool {
        let Mechanism::CgroupV2(parent) = self else {
            return false;
        };
        let dir = parent.join(group(instance, pid));
        let oom = std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .is_some_and(|events| oom_kills(&events) > 0);
        let _ = std::fs::remove_dir(&dir);
        oom
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

/// The `oom_kill` count of a cgroup's `memory.events`.
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

    /// A directory standing in for `/sys/fs/cgroup` (the real one needs root on a
    /// cgroup v2 host; this machine has v1).
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

    #[test]
    fn oom_kill_counts_are_read() {
        assert_eq!(oom_kills("low 0\noom_kill 7\n"), 7);
        assert_eq!(oom_kills("low 0\n"), 0);
    }
}
