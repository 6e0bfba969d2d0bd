//! HTTPS on the control API listener: the same port as HTTP, the node's certificate from
//! the cluster CA; the CLI and a gateway talking to it over https.

use crate::harness::{self, Node, CONTROL_ONLY};
use std::process::Command;

#[test]
fn the_api_listener_speaks_https_with_the_cluster_ca_next_to_plain_http() {
    // "loopback": plain HTTP from this machine only (every client of this test is local;
    // the refusal of other machines is unit-tested in src/control/api_listener.rs).
    let profile = CONTROL_ONLY.replace(
        "bootstrap = true\n",
        "bootstrap = true\napi_plain_http = \"loopback\"\n",
    );
    let (control, api, token, _) = harness::control(&profile);
    let ca = control.data_dir.join("control").join("pki").join("ca.pem");
    assert!(
        ca.exists(),
        "the first control node keeps the cluster CA at {ca:?}"
    );
    let ca_arg = ca.display().to_string();

    // curl checks the certificate against the cluster CA alone; ALPN picks h2 or
    // http/1.1. Returns (body, "CODE HTTP-VERSION stderr").
    let curl = |url: &str, extra: &[&str]| -> (String, String) {
        let mut args = vec!["-sS", "--max-time", "10", "--cacert", &ca_arg];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-w", "\n%{http_code} %{http_version}", url]);
        let out = Command::new("curl").args(&args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
        (
            body.to_string(),
            format!("{status} {}", String::from_utf8_lossy(&out.stderr).trim()),
        )
    };
    let auth = format!("Authorization: Bearer {token}");
    let (body, status) = curl(&format!("https://{api}/api/v1/members"), &["-H", &auth]);
    assert_eq!(status.trim(), "200 2", "{body}");
    assert!(body.contains("ctl-1"), "{body}");
    let (_, status) = curl(&format!("https://{api}/healthz"), &["--http1.1"]);
    assert_eq!(status.trim(), "200 1.1");
    // The certificate names `localhost` too, since the node listens on a loopback IP.
    let port = api.port();
    let resolve = format!("localhost:{port}:{}", api.ip());
    let (_, status) = curl(
        &format!("https://localhost:{port}/healthz"),
        &["--resolve", &resolve],
    );
    assert!(status.starts_with("200 "), "{status}");
    // Without the token, the API still says 401 over TLS.
    let (_, status) = curl(&format!("https://{api}/api/v1/zones"), &[]);
    assert!(status.starts_with("401 "), "{status}");
    // Plain HTTP on the same port, as before.
    let (code, _, _) = harness::http_get(api, "/healthz").unwrap();
    assert_eq!(code, 200);

    // The CLI: the CA from --ca, or from --data-dir's control/pki/ca.pem.
    let https = format!("https://{api}");
    let data = control.data_dir.display().to_string();
    // `tessera get zones` over https with these flags: (exit code, stderr).
    let get_zones = |flags: &[&str]| {
        let mut args = vec!["get", "zones", "--server", &https, "--token", &token];
        args.extend_from_slice(flags);
        let out = harness::tessera(&args, &[]);
        (out.status.code(), harness::stderr(&out))
    };
    let (code, err) = get_zones(&["--ca", &ca_arg]);
    assert_eq!(code, Some(0), "{err}");
    let out = harness::tessera(&["members", "--server", &https, "--data-dir", &data], &[]);
    assert!(out.status.success(), "{}", harness::stderr(&out));
    assert!(harness::stdout(&out).contains("ctl-1"));
    // No CA: a usage error that says what to pass. A CA that did not sign the server's
    // certificate: refused, nothing sent.
    let nowhere = control.dir.path().join("nowhere").display().to_string();
    let (code, err) = get_zones(&["--data-dir", &nowhere]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--ca"), "{err}");
    let other_ca = harness::TestCa::new();
    let other = other_ca.ca_pem().display().to_string();
    let (code, err) = get_zones(&["--ca", &other]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate"), "{err}");

    // A gateway whose control URL is https: it enrols (the CA checked against the join
    // token's fingerprint), keeps that CA, and after a restart still reaches the API.
    let join = harness::join_token(api, &token, "gateway");
    let profile = format!(
        "node_name = \"gw-tls\"\nroles = [\"gateway\"]\ndata_dir = \"DATA\"\nzone = \"hz-a\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol = [\"https://{api}\"]\njoin_token = \"{join}\"\n"
    );
    let mut gateway = Node::run_profile(&profile, &[], &[]);
    let admin = gateway.addr("gateway", "admin");
    gateway.wait_ready(admin);
    let pinned = gateway.data_dir.join("gateway").join("ca.pem");
    assert_eq!(
        std::fs::read_to_string(&pinned).unwrap(),
        std::fs::read_to_string(&ca).unwrap()
    );
    let registered = || {
        let (_, _, body) = harness::http(api, "GET", "/api/v1/gateways", Some(&token), "").unwrap();
        body.contains("gw-tls")
    };
    wait_for(&registered, "the gateway registers over https");
    gateway.restart();
    let admin = gateway.addr("gateway", "admin");
    gateway.wait_ready(admin);
    assert!(
        !gateway.logs().contains("needs the cluster CA"),
        "{}",
        gateway.logs()
    );
}

fn wait_for(check: &dyn Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
