//! The command line itself: version, help, usage errors.

use crate::harness::{stderr, stdout, tessera};

#[test]
fn version_names_commit_and_build_date() {
    let o = tessera(&["--version"], &[]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.starts_with(concat!("tessera ", env!("CARGO_PKG_VERSION"), " (commit ")),
        "{out}"
    );
    assert!(out.contains(", built 20"), "{out}");
}

#[test]
fn help_lists_only_commands_that_work() {
    let o = tessera(&["--help"], &[]);
    assert!(o.status.success());
    let out = stdout(&o);
    for cmd in [
        "up", "run", "config", "token", "members", "snapshot", "apply", "get", "delete", "user",
        "audit", "failover", "demo-app", "doctor",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from help:\n{out}"
        );
    }
    for later in ["release", "bundle"] {
        assert!(
            !out.lines().any(|l| l.trim_start().starts_with(later)),
            "{later} listed but not built:\n{out}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["run"][..],
        &["frobnicate"][..],
        &["up", "--log-format", "xml"][..],
    ] {
        let o = tessera(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// `tessera doctor`: every check for the roles named, as a table or JSON; a listener
/// whose port is taken fails it (exit 1) and names the setting; a bad profile is
/// bad input (exit 2). Nothing is left behind in the data directory's parent.
#[test]
fn doctor_checks_the_machine_for_the_roles_a_profile_names() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_s = data.display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.61:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let profile = work.path().join("gw.toml");
    std::fs::write(
        &profile,
        format!(
            "node_name = \"gw-1\"\nroles = [\"gateway\"]\n[gateway]\nlisten = \"127.0.0.61:{port}\"\nadmin_listen = \"127.0.0.61:0\"\ncontrol = [\"http://127.0.0.1:7400\"]\njoin_token = \"x\"\n"
        ),
    )
    .unwrap();
    let p = profile.display().to_string();
    let o = tessera(
        &[
            "doctor",
            "--profile",
            &p,
            "--data-dir",
            &data_s,
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let checks: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let find = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {checks}"))
            .clone()
    };
    let gw = find("listen gateway.listen");
    assert_eq!(gw["status"], "fail", "{gw}");
    assert!(
        gw["detail"]
            .as_str()
            .unwrap()
            .contains("in use by another process"),
        "{gw}"
    );
    for ok in [
        "kernel",
        "data dir",
        "disk sync",
        "listen gateway.admin_listen",
    ] {
        assert_eq!(find(ok)["status"], "ok", "{ok}: {checks}");
    }
    for name in [
        "cpus",
        "memory",
        "disk space",
        "open files",
        "somaxconn",
        "local ports",
    ] {
        find(name);
    }
    // Only the roles named are checked: no agent, so no cgroups; no control listener.
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"cgroups") && !names.iter().any(|n| n.contains("control")),
        "{names:?}"
    );
    // The data dir was looked at, not made; the probe file is gone.
    assert!(!data.exists());
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        1,
        "only the profile is left"
    );

    // With the port free, and as `up` would run (every role, on ports set free): ok.
    drop(taken);
    let o = tessera(&["doctor", "--profile", &p, "--data-dir", &data_s], &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("Preflight of this machine for node gw-1 (roles: gateway"),
        "{table}"
    );
    assert!(table.contains(" 0 failures"), "{table}");
    let o = tessera(
        &[
            "doctor",
            "--data-dir",
            &data_s,
            "--set",
            "control.listen=127.0.0.61:0",
            "--set",
            "control.peer_listen=127.0.0.61:0",
            "--set",
            "agent.listen=127.0.0.61:0",
            "--set",
            "gateway.listen=127.0.0.61:0",
            "--set",
            "gateway.admin_listen=127.0.0.61:0",
            "--set",
            "dbproxy.listen=127.0.0.61:0",
            "--set",
            "dbproxy.admin_listen=127.0.0.61:0",
            "-o",
            "json",
        ],
        &[],
    );
    let all: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_default();
    let names: Vec<&str> = all
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        "cgroups",
        "listen control.peer_listen",
        "listen dbproxy.listen",
        "listen agent.listen",
    ] {
        assert!(names.contains(&want), "{want} in {all}\n{}", stderr(&o));
    }

    // A bad profile is bad input, named.
    std::fs::write(&profile, "roles = [\"nope\"]\n").unwrap();
    let o = tessera(&["doctor", "--profile", &p], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("roles"), "{}", stderr(&o));
}
