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
        "audit", "failover", "demo-app",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from help:\n{out}"
        );
    }
    for later in ["release", "bundle", "doctor"] {
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
