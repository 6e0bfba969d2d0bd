//! The web console as a browser meets it: the embedded single-page app at `/` with its
//! security headers, SPA fallback, precompressed and cacheable assets; and the two API
//! calls the console added (`apply?dryRun=true`, `auditevents/verify`). The console's
//! own behaviour is tested in `ui/` (Vitest, and Playwright against `up --demo`).

use crate::harness::{control_with, http, stderr, tessera, write};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const REGION: &str =
    "apiVersion: tessera.io/v1\nkind: Region\nmetadata:\n  name: hangzhou\nspec: {}\n";

/// A GET with extra header lines; returns (status, lowercased head, body bytes).
fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    request(addr, "GET", path, headers)
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, buf[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn console_is_served_with_strict_headers_fallback_and_precompressed_assets() {
    let (_control, api, _token) = control_with(REGION);

    let (code, head, body) = get(api, "/", "");
    let html = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 200, "{head}");
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = header(&head, "content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside origin: {html}"
    );

    // The app's own routes get the same page (deep links and reloads work).
    for route in ["/topology", "/apps/echo", "/audit"] {
        let (code, _, b) = get(api, route, "");
        assert_eq!(code, 200, "{route}");
        assert_eq!(b, body, "{route} is the app's page");
    }
    // Revalidation.
    let etag = header(&head, "etag").expect("an etag").to_string();
    let (code, _, _) = get(api, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(code, 304);

    // The entry script: hashed, immutable, and sent precompressed when accepted.
    let script = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("no /assets/*.js in the page: {html}"))
        .to_string();
    let (code, plain_head, plain) = get(api, &script, "");
    assert_eq!(code, 200);
    assert!(header(&plain_head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        header(&plain_head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&plain_head, "content-encoding"), None);
    let (_, br_head, br) = get(api, &script, "Accept-Encoding: gzip, deflate, br\r\n");
    assert_eq!(
        header(&br_head, "content-encoding"),
        Some("br"),
        "{br_head}"
    );
    assert!(br.len() < plain.len(), "brotli is smaller");
    let (_, gz_head, gz) = get(api, &script, "Accept-Encoding: gzip, br;q=0\r\n");
    assert_eq!(
        header(&gz_head, "content-encoding"),
        Some("gzip"),
        "{gz_head}"
    );
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip stream");
    assert_eq!(header(&gz_head, "vary"), Some("accept-encoding"));

    // Files that do not exist are 404, not the page; the API keeps its JSON errors.
    let (code, _, _) = get(api, "/assets/missing-0000.js", "");
    assert_eq!(code, 404);
    let (code, _, _) = get(api, "/favicon-nope.png", "");
    assert_eq!(code, 404);
    let (code, head, b) = get(api, "/api/v1/nope", "");
    assert_eq!(code, 404);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(String::from_utf8_lossy(&b).contains("no such endpoint"));
    // Bad requests: clear answers, never the page.
    let (code, _, _) = get(api, "/%2e%2e/%2e%2e/etc/passwd", "");
    assert_eq!(code, 400);
    let (code, _, _) = get(api, "/a/../../etc/passwd", "");
    assert_eq!(code, 400);
    let (code, _, _) = request(api, "DELETE", "/", "");
    assert_eq!(code, 405);
    let (code, head, b) = request(api, "HEAD", &script, "");
    assert_eq!(code, 200);
    assert!(b.is_empty());
    assert_eq!(
        header(&head, "content-length"),
        Some(plain.len().to_string().as_str())
    );
}

#[test]
fn dry_run_apply_validates_without_committing_and_the_audit_chain_verifies() {
    let (_control, api, token) = control_with(REGION);
    let zone = "apiVersion: tessera.io/v1\nkind: Zone\nmetadata:\n  name: hz-a\nspec:\n  region: hangzhou\n";
    let audit_len = || {
        let (code, _, body) = http(
            api,
            "GET",
            "/api/v1/auditevents?limit=1000",
            Some(&token),
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["items"].as_array().unwrap().len()
    };
    let before = audit_len();

    let (code, _, body) =
        http(api, "POST", "/api/v1/apply?dryRun=true", Some(&token), zone).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"][0]["action"], "created", "{body}");
    let (code, _, _) = http(api, "GET", "/api/v1/zones/hz-a", Some(&token), "").unwrap();
    assert_eq!(code, 404, "a dry run commits nothing");

    // Invalid input: the same field error as a real apply, and no audit event for it.
    let bad = zone.replace("region: hangzhou", "region: hangzhou\n  colour: blue");
    let (code, _, body) =
        http(api, "POST", "/api/v1/apply?dryRun=true", Some(&token), &bad).unwrap();
    assert!(code == 400 || code == 422, "{code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["field"], "document 1: spec.colour", "{body}");
    let missing = zone.replace("hangzhou", "nowhere");
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/apply?dryRun=true",
        Some(&token),
        &missing,
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("nowhere"), "{body}");
    assert_eq!(audit_len(), before, "dry runs leave the audit trail alone");

    // The real apply commits and is audited; the chain checks out end to end.
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), zone).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(audit_len() > before);
    let (code, _, body) = http(api, "GET", "/api/v1/auditevents/verify", Some(&token), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true, "{body}");
    assert_eq!(v["checked"], v["head"]["seq"], "{body}");
    assert!(v["checked"].as_u64().unwrap() >= 2, "{body}");
    let (code, _, _) = http(api, "GET", "/api/v1/auditevents/verify", None, "").unwrap();
    assert_eq!(code, 401);
}

#[test]
fn console_dir_must_hold_a_built_console() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.toml",
        &format!(
            "roles = [\"control\"]\ndata_dir = \"{}\"\n[control]\nbootstrap = true\nconsole_dir = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("nope").display()
        ),
    );
    let o = tessera(
        &["config", "check", "--profile", &p.display().to_string()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("control.console_dir") && err.contains("index.html"),
        "{err}"
    );
}
