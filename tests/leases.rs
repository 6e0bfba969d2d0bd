//! Leases (TTL, keep-alive, expiry deletes keys) and history compaction on a single
//! control node, through the REST API.

use crate::harness::{http, Node};
use serde_json::Value;
use std::time::{Duration, Instant};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ready(extra: &[&str]) -> (Node, std::net::SocketAddr, String) {
    let mut n = Node::up(extra);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let token = n.admin_token();
    (n, api, token)
}

#[test]
fn an_expired_lease_deletes_its_keys_and_keepalives_hold_it() {
    let (_n, api, t) = ready(&[]);
    let t = Some(t.as_str());
    let (code, _, body) = http(api, "POST", "/api/v1/leases", t, r#"{"ttl_secs":2}"#).unwrap();
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_u64().unwrap();
    let (code, _, body) = http(
        api,
        "PUT",
        &format!("/api/v1/kv/live/node-1?lease={id}"),
        t,
        "up",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    http(api, "PUT", "/api/v1/kv/live/plain", t, "stays").unwrap();
    let (_, _, body) = http(api, "GET", "/api/v1/kv/live/node-1", t, "").unwrap();
    assert_eq!(json(&body)["kv"]["lease"], id);

    // Kept alive for twice its TTL, the key stays.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (code, _, body) = http(
            api,
            "POST",
            &format!("/api/v1/leases/{id}/keepalive"),
            t,
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, _, body) = http(api, "GET", &format!("/api/v1/leases/{id}"), t, "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["keys"], serde_json::json!(["live/node-1"]));
    assert!(v["remaining_ms"].as_u64().unwrap() > 0, "{body}");

    // Left alone, it expires and takes its key (only its key) with it.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (code, _, _) = http(api, "GET", "/api/v1/kv/live/node-1", t, "").unwrap();
        if code == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leased key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, _) = http(api, "GET", "/api/v1/kv/live/plain", t, "").unwrap();
    assert_eq!(code, 200);
    let (code, _, body) = http(api, "GET", &format!("/api/v1/leases/{id}"), t, "").unwrap();
    assert_eq!(code, 404, "{body}");
    assert_eq!(json(&body)["code"], "lease_not_found");
    // A put naming the ended lease is refused and changes nothing.
    let (code, _, body) = http(
        api,
        "PUT",
        &format!("/api/v1/kv/live/node-1?lease={id}"),
        t,
        "again",
    )
    .unwrap();
    assert_eq!(code, 404, "{body}");
    assert_eq!(json(&body)["field"], "lease");
    let (code, _, _) = http(api, "GET", "/api/v1/kv/live/node-1", t, "").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_once_and_bad_input_is_named() {
    let (_n, api, t) = ready(&[]);
    let t = Some(t.as_str());
    let (_, _, body) = http(api, "POST", "/api/v1/leases", t, r#"{"ttl_secs":600}"#).unwrap();
    let id = json(&body)["id"].as_u64().unwrap();
    let txn = format!(
        r#"{{"success":[{{"op":"put","key":"s/a","value":"1","lease":{id}}},{{"op":"put","key":"s/b","value":"2","lease":{id}}}]}}"#
    );
    let (code, _, body) = http(api, "POST", "/api/v1/kv/txn", t, &txn).unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, _, body) = http(api, "GET", "/api/v1/leases", t, "").unwrap();
    assert_eq!(json(&body)["items"][0]["id"], id, "{body}");
    let (code, _, body) = http(api, "DELETE", &format!("/api/v1/leases/{id}"), t, "").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["deleted"], 2);
    let (_, _, body) = http(api, "GET", "/api/v1/kv/s/?prefix=true", t, "").unwrap();
    assert_eq!(json(&body)["items"], serde_json::json!([]));
    let (code, _, _) = http(api, "DELETE", &format!("/api/v1/leases/{id}"), t, "").unwrap();
    assert_eq!(code, 404);

    for (method, path, body, field) in [
        ("POST", "/api/v1/leases", r#"{"ttl_secs":0}"#, "ttl_secs"),
        (
            "POST",
            "/api/v1/leases",
            r#"{"ttl_secs":99999999}"#,
            "ttl_secs",
        ),
        ("POST", "/api/v1/leases", r#"{"ttl":5}"#, "body"),
        ("POST", "/api/v1/leases", "not json", "body"),
        ("POST", "/api/v1/leases/abc/keepalive", "", "id"),
        ("DELETE", "/api/v1/leases/0", "", "id"),
    ] {
        let (code, _, resp) = http(api, method, path, t, body).unwrap();
        assert_eq!(code, 400, "{method} {path} {body}: {resp}");
        assert_eq!(json(&resp)["field"], field, "{resp}");
    }
    let (code, _, resp) = http(api, "PUT", "/api/v1/kv/x?lease=-1", t, "v").unwrap();
    assert_eq!(code, 400, "{resp}");
    let (code, _, resp) = http(api, "POST", "/api/v1/leases/77777/keepalive", t, "").unwrap();
    assert_eq!(code, 404, "{resp}");
}

#[test]
fn compaction_bounds_history_and_watches_below_it_are_refused() {
    // A small history bound, so automatic compaction happens within the test.
    let (_n, api, t) = ready(&["--set", "control.history_revisions=1000"]);
    let t = Some(t.as_str());
    let (_, _, body) = http(api, "PUT", "/api/v1/kv/c/first", t, "1").unwrap();
    let first = json(&body)["revision"].as_u64().unwrap();
    for i in 0..40 {
        http(api, "PUT", &format!("/api/v1/kv/c/{i}"), t, "x").unwrap();
    }
    let (_, _, body) = http(api, "PUT", "/api/v1/kv/c/last", t, "1").unwrap();
    let last = json(&body)["revision"].as_u64().unwrap();

    for (body, code, want) in [
        (
            format!(r#"{{"revision":{}}}"#, last + 1000),
            400,
            "revision",
        ),
        ("{}".to_string(), 400, "body"),
        (r#"{"revision":"x"}"#.to_string(), 400, "body"),
    ] {
        let (c, _, resp) = http(api, "POST", "/api/v1/kv-compact", t, &body).unwrap();
        assert_eq!(c, code, "{body}: {resp}");
        assert_eq!(json(&resp)["field"], want, "{resp}");
    }
    let (c, _, resp) = http(
        api,
        "POST",
        "/api/v1/kv-compact",
        t,
        &format!(r#"{{"revision":{}}}"#, first + 5),
    )
    .unwrap();
    assert_eq!(c, 200, "{resp}");
    // Below the floor now: a watch cannot replay it, a second compaction cannot undo it.
    let (c, _, resp) = http(
        api,
        "GET",
        &format!("/api/v1/kv-watch?prefix=c/&since={first}"),
        t,
        "",
    )
    .unwrap();
    assert_eq!(c, 410, "{resp}");
    assert_eq!(json(&resp)["code"], "compacted");
    let (c, _, resp) = http(
        api,
        "POST",
        "/api/v1/kv-compact",
        t,
        &format!(r#"{{"revision":{first}}}"#),
    )
    .unwrap();
    assert_eq!(c, 409, "{resp}");
    // The values themselves are untouched.
    let (c, _, _) = http(api, "GET", "/api/v1/kv/c/first", t, "").unwrap();
    assert_eq!(c, 200);

    // The leader keeps at most history_revisions (+10%) on its own.
    for i in 0..1200 {
        http(api, "PUT", &format!("/api/v1/kv/bulk/{}", i % 7), t, "y").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, _, resp) = http(api, "GET", "/api/v1/kv-compact", t, "").unwrap();
        assert_eq!(c, 200, "{resp}");
        let v = json(&resp);
        let (floor, rev) = (
            v["compacted"].as_u64().unwrap(),
            v["revision"].as_u64().unwrap(),
        );
        assert!(floor <= rev, "{resp}");
        if rev - floor <= 1100 && floor > last {
            break;
        }
        assert!(Instant::now() < deadline, "no automatic compaction: {resp}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
