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
        applied
            .starts_with("memory 256 MiB (cgroup v1), cpu 0.50 (cgroup v1), pids 128 (cgroup v1)"),
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
    // (The stand-in is kept alive: `apply` below writes into it.)
    let without_pids = fake_v1(false);
    let (m, why) = Mechanism::detect(without_pids.path());
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
            let max = std::fs::read_to_string(pids.join(format!("{name}-{pid}/pids.max"))).unwrap();
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
