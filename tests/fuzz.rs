//! Schema-driven fuzzing of the control API: schemathesis (installed by
//! `scripts/deps.sh test`) reads the served `/api/v1/openapi.json` and sends generated
//! requests, valid and invalid, to every operation of a running node, with every check
//! it has: any 5xx, an undocumented status, content type or header, an answer off its
//! documented schema, invalid data accepted, or a request without a token accepted fails
//! the test. Deterministic (`--hypothesis-derandomize`) and bounded.
//! The SSE watch endpoints are left out (a stream never ends).

use crate::harness::Node;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("TESSERA_TOOLS") {
        candidates.push(PathBuf::from(t).join("venv/bin/schemathesis"));
    }
    candidates.push(PathBuf::from(
        "/var/cache/tessera/tools/venv/bin/schemathesis",
    ));
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/tessera/tools/venv/bin/schemathesis"));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("schemathesis is not installed: run `bash scripts/deps.sh test` (or set TESSERA_SCHEMATHESIS)")
}

#[test]
fn the_openapi_document_survives_schemathesis() {
    let bin = schemathesis();
    let mut n = Node::up(&[]);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let t = n.admin_token();
    let out_path = n.data_dir.parent().unwrap().join("schemathesis.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&bin)
        .args([
            "run",
            &format!("http://{api}/api/v1/openapi.json"),
            "-H",
            &format!("Authorization: Bearer {t}"),
            "--checks",
            "all",
            "--hypothesis-max-examples",
            "15",
            "--hypothesis-derandomize",
            "--hypothesis-deadline",
            "None",
            "--exclude-path-regex",
            "watch",
            "--request-timeout",
            "10000",
            "-w",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run schemathesis");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(&out_path).unwrap_or_default();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| !l.contains("returned only 4xx"))
        .collect();
    assert!(
        status.success(),
        "schemathesis found problems:\n{}",
        summary.join("\n")
    );
    assert!(report.contains("passed"), "{report}");
}
