//! `config check` and `run` refuse bad input with exit 2 and a message naming the file,
//! the key and the problem.

use crate::harness::{stderr, stdout, tessera, write, Node};
use std::time::Duration;

const GOOD: &str = r#"
node_name = "n1"
roles = ["control", "gateway"]
data_dir = "DATA"
[control]
bootstrap = true
"#;

/// Writes `toml` as a profile in a fresh dir and runs `config check` on it.
fn check(toml: &str, extra: &[&str], env: &[(&str, &str)]) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let toml = toml.replace("DATA", &dir.path().join("data").display().to_string());
    let p = write(dir.path(), "profile.toml", &toml);
    let path = p.display().to_string();
    let mut args = vec!["config", "check", "--profile", &path];
    args.extend_from_slice(extra);
    (tessera(&args, env), path)
}

/// Asserts exit 2 and that stderr mentions every needle.
fn refused(toml: &str, extra: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let (o, path) = check(toml, extra, env);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit 2, got {:?}: {err}",
        o.status
    );
    for n in needles {
        let n = n.replace("FILE", &path);
        assert!(err.contains(&n), "stderr lacks `{n}`:\n{err}");
    }
}

#[test]
fn a_good_profile_passes() {
    let (o, _) = check(
        GOOD,
        &["--print"],
        &[
            ("TESSERA_TOKEN", "client-only"),
            ("TESSERA_SERVER", "http://x"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("roles: control, gateway"));
    assert!(
        stdout(&o).contains("listen = \"127.0.0.1:8080\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unknown_key_is_named_with_a_suggestion() {
    let toml = GOOD.replace(
        "bootstrap = true",
        "bootstrap = true\nlisen = \"127.0.0.1:1\"",
    );
    refused(
        &toml,
        &[],
        &[],
        &["FILE", "control.lisen", "did you mean `listen`"],
    );
    refused(
        &format!("nodename = \"x\"\n{GOOD}"),
        &[],
        &[],
        &["FILE", "nodename", "did you mean `node_name`"],
    );
}

#[test]
fn wrong_type_is_named() {
    refused(
        &format!("shutdown_grace_secs = \"soon\"\n{GOOD}"),
        &[],
        &[],
        &["FILE", "shutdown_grace_secs", "wrong type"],
    );
    refused(
        &GOOD.replace("bootstrap = true", "bootstrap = \"yes\""),
        &[],
        &[],
        &["control.bootstrap", "wrong type"],
    );
    refused(
        &GOOD.replace(
            "bootstrap = true",
            "bootstrap = true\napi_plain_http = \"never\"",
        ),
        &[],
        &[],
        &["control.api_plain_http", "never", "loopback"],
    );
}

#[test]
fn unparseable_address_is_named() {
    let toml = format!("{GOOD}\n[gateway]\nlisten = \"127.0.0.1:99999\"\n");
    refused(&toml, &[], &[], &["FILE", "gateway.listen", "IP:PORT"]);
    let toml = format!("{GOOD}\n[gateway]\nadmin_listen = \"gw.example:7403\"\n");
    refused(&toml, &[], &[], &["gateway.admin_listen", "IP:PORT"]);
    // An admin URL that is not http://HOST:PORT.
    let toml = format!("{GOOD}\n[gateway]\nadmin_advertise = \"gw.example:7403\"\n");
    refused(
        &toml,
        &[],
        &[],
        &["gateway.admin_advertise", "http://HOST:PORT"],
    );
    // A certificate entry without its key (the HTTPS entrance alone is fine: its
    // certificates may come from the control plane).
    let toml = format!("{GOOD}\n[gateway]\ntls_listen = \"127.0.0.1:8443\"\n[[gateway.certificates]]\ncert = \"/x.pem\"\n");
    refused(&toml, &[], &[], &["gateway.certificates", "key"]);
}

#[test]
fn unknown_role_is_named_with_a_suggestion() {
    refused(
        &GOOD.replace("\"gateway\"", "\"gatway\""),
        &[],
        &[],
        &[
            "FILE",
            "roles",
            "unknown role `gatway`",
            "did you mean `gateway`",
        ],
    );
    refused(
        &GOOD.replace("roles = [\"control\", \"gateway\"]", "roles = []"),
        &[],
        &[],
        &["roles", "no roles"],
    );
}

#[test]
fn duplicate_ports_between_roles_are_refused() {
    let toml = format!("{GOOD}\n[gateway]\nadmin_listen = \"127.0.0.1:7400\"\n");
    refused(
        &toml,
        &[],
        &[],
        &["gateway.admin_listen", "port 7400", "control.listen"],
    );
    // A wildcard address overlaps every address on the same port.
    let toml = format!("{GOOD}\n[gateway]\nlisten = \"0.0.0.0:7401\"\n");
    refused(&toml, &[], &[], &["gateway.listen", "control.peer_listen"]);
}

#[test]
fn control_needs_bootstrap_or_join() {
    let toml = GOOD.replace("bootstrap = true", "");
    refused(&toml, &[], &[], &["control.bootstrap", "join"]);
    let toml = GOOD.replace("bootstrap = true", "join = [\"http://10.0.0.1:7400\"]");
    refused(&toml, &[], &[], &["control.join_token"]);
    let toml = GOOD.replace(
        "bootstrap = true",
        "bootstrap = true\njoin = [\"http://10.0.0.1:7400\"]",
    );
    refused(&toml, &[], &[], &["control.join", "exclude"]);
}

#[test]
fn client_roles_need_a_control_plane() {
    let toml = "roles = [\"agent\"]\ndata_dir = \"DATA\"\n";
    refused(toml, &[], &[], &["agent.control", "control plane"]);
    let toml = "roles = [\"agent\"]\ndata_dir = \"DATA\"\n[agent]\ncontrol = [\"10.0.0.1:7400\"]\n";
    refused(toml, &[], &[], &["agent.control", "not a control URL"]);
}

#[test]
fn unwritable_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a-file", "x");
    let toml = GOOD.replace("DATA", &file.join("data").display().to_string());
    refused(&toml, &[], &[], &["data_dir", "not a directory"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = "roles = [\"control\", \"agent\"]\ndata_dir = \"DATA\"\nshutdown_grace_secs = 0\n";
    refused(
        toml,
        &[],
        &[],
        &["control.bootstrap", "shutdown_grace_secs", "2 problems"],
    );
}

#[test]
fn missing_and_malformed_profiles_are_refused() {
    let o = tessera(
        &["config", "check", "--profile", "/nonexistent/p.toml"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/p.toml"), "{}", stderr(&o));
    refused("roles = [control", &[], &[], &["FILE"]);
}

#[test]
fn environment_and_set_errors_name_their_source() {
    refused(
        GOOD,
        &[],
        &[("TESSERA_GATEWAY__LISTEN", "nowhere")],
        &["TESSERA_GATEWAY__LISTEN", "IP:PORT"],
    );
    refused(
        GOOD,
        &[],
        &[("TESSERA_CONTRL__LISTEN", "127.0.0.1:1")],
        &["contrl", "did you mean `control`"],
    );
    refused(
        GOOD,
        &["--set", "gateway.listen=nowhere"],
        &[],
        &["--set gateway.listen=nowhere", "gateway.listen"],
    );
    refused(GOOD, &["--set", "no-equals-sign"], &[], &["KEY=VALUE"]);
}

#[test]
fn run_refuses_bad_profiles_with_exit_2_before_starting() {
    let mut n = Node::run_profile("roles = [\"control\"]\ndata_dir = \"DATA\"\n", &[], &[]);
    let (status, _) = n.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    assert!(n.stderr().contains("control.bootstrap"), "{}", n.logs());
}

#[test]
fn shipped_profiles_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let data = tempfile::tempdir().unwrap();
    let set = format!("data_dir=\"{}\"", data.path().display());
    for name in ["allinone", "control", "gateway", "agent", "dbproxy"] {
        let path = format!("{root}/profiles/{name}.toml");
        let o = tessera(&["config", "check", "--profile", &path, "--set", &set], &[]);
        assert!(o.status.success(), "{path}: {}", stderr(&o));
    }
}

#[test]
fn bad_log_sinks_are_named_by_index_and_field() {
    let toml = r#"
node_name = "n1"
roles = ["control", "agent"]
data_dir = "DATA"
[control]
bootstrap = true
[[agent.log_sinks]]
name = "central"
url = "syslog+tls://10.0.0.5:6514"
[[agent.log_sinks]]
name = "central"
url = "syslog://10.0.0.5"
facility = "local9"
batch = 0
"#;
    refused(
        &format!(
            "{toml}[[agent.log_sinks]]\nname = \"x\"\nurl = \"http://h/\"\ntok_file = \"/t\"\n"
        ),
        &[],
        &[],
        &[
            "FILE",
            "key `agent.log_sinks[2].tok_file`: unknown key (did you mean `token_file`?)",
        ],
    );
    refused(
        toml,
        &[],
        &[],
        &[
            "FILE",
            "agent.log_sinks[0].ca_file",
            "set ca_file",
            "agent.log_sinks[1].url",
            "syslog+udp://HOST:PORT",
            "agent.log_sinks[1].facility",
            "agent.log_sinks[1].batch",
            "agent.log_sinks[1].name",
            "names two sinks",
        ],
    );
}
