//! The raw KV API of a single control node: revisions, ranges, transactions, auth, bad
//! input, and durability across a restart.

use crate::harness::{http, Node};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ready_control() -> (Node, std::net::SocketAddr, String) {
    let mut n = Node::up(&[]);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let token = n.admin_token();
    (n, api, token)
}

#[test]
fn kv_round_trip_carries_revisions() {
    let (_n, api, t) = ready_control();
    let t = Some(t.as_str());
    let (code, _, b1) = http(api, "PUT", "/api/v1/kv/app/a", t, "1").unwrap();
    assert_eq!(code, 200, "{b1}");
    let r1 = json(&b1)["revision"].as_u64().unwrap();
    let (_, _, b2) = http(api, "PUT", "/api/v1/kv/app/a", t, "2").unwrap();
    let v2 = json(&b2);
    let r2 = v2["revision"].as_u64().unwrap();
    assert!(r2 > r1);
    assert_eq!(v2["prev"]["value"], "1");

    let (code, head, body) = http(api, "GET", "/api/v1/kv/app/a", t, "").unwrap();
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["kv"]["value"], "2");
    assert_eq!(v["kv"]["mod_revision"], r2);
    assert_eq!(v["kv"]["create_revision"], r1);
    assert_eq!(v["kv"]["version"], 2);
    assert!(v["revision"].as_u64().unwrap() >= r2);
    assert!(head.contains("x-tessera-revision:"), "{head}");

    http(api, "PUT", "/api/v1/kv/app/b", t, "x").unwrap();
    let (_, _, body) = http(api, "GET", "/api/v1/kv/app/?prefix=true", t, "").unwrap();
    let v = json(&body);
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{body}");
    let (_, _, body) = http(api, "GET", "/api/v1/kv/app/?prefix=true&limit=1", t, "").unwrap();
    assert_eq!(json(&body)["more"], true);

    let cas = format!(
        r#"{{"compare":[{{"key":"app/a","op":"equal","target":{{"mod_revision":{r2}}}}}],
            "success":[{{"op":"put","key":"app/a","value":"3"}}],
            "failure":[]}}"#
    );
    let (code, _, body) = http(api, "POST", "/api/v1/kv/txn", t, &cas).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["succeeded"], true);
    let (_, _, body) = http(api, "POST", "/api/v1/kv/txn", t, &cas).unwrap();
    assert_eq!(json(&body)["succeeded"], false, "a stale compare must fail");

    let (_, _, body) = http(api, "DELETE", "/api/v1/kv/app/?prefix=true", t, "").unwrap();
    assert_eq!(json(&body)["deleted"], 2);
    let (code, _, body) = http(api, "GET", "/api/v1/kv/app/a", t, "").unwrap();
    assert_eq!(code, 404);
    assert_eq!(json(&body)["code"], "not_found");

    let (code, _, body) = http(api, "GET", "/api/v1/members", t, "").unwrap();
    assert_eq!(code, 200);
    let m = json(&body);
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(m["members"][0]["role"], "voter");
    assert_eq!(m["members"][0]["leader"], true);
}

#[test]
fn tokens_are_required() {
    let (_n, api, _) = ready_control();
    for token in [None, Some("tsr_wrong")] {
        let (code, _, body) = http(api, "GET", "/api/v1/kv/x", token, "").unwrap();
        assert_eq!(code, 401, "{body}");
        assert_eq!(json(&body)["code"], "unauthorized");
    }
    // Health and the public index need none.
    assert_eq!(http(api, "GET", "/healthz", None, "").unwrap().0, 200);
    assert_eq!(http(api, "GET", "/", None, "").unwrap().0, 200);
}

#[test]
fn bad_input_gets_clear_4xx_errors() {
    let (_n, api, t) = ready_control();
    let t = Some(t.as_str());
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("PUT", "/api/v1/kv/a%01b".into(), "v".into(), 400, "key"),
        (
            "PUT",
            format!("/api/v1/kv/{}", "k".repeat(1025)),
            "v".into(),
            400,
            "key",
        ),
        (
            "PUT",
            "/api/v1/kv/big".into(),
            "x".repeat((1 << 20) + 1),
            413,
            "limit",
        ),
        (
            "POST",
            "/api/v1/kv/txn".into(),
            "{not json".into(),
            400,
            "body",
        ),
        (
            "POST",
            "/api/v1/kv/txn".into(),
            r#"{"compare":[],"success":[{"op":"frob","key":"a"}]}"#.into(),
            400,
            "body",
        ),
        (
            "GET",
            "/api/v1/kv/a?consistency=eventual".into(),
            String::new(),
            400,
            "consistency",
        ),
        (
            "GET",
            "/api/v1/kv/a?limit=0".into(),
            String::new(),
            400,
            "limit",
        ),
        (
            "GET",
            "/api/v1/kv/a?bogus=1".into(),
            String::new(),
            400,
            "query",
        ),
    ];
    for (method, path, body, want, needle) in cases {
        let (code, _, resp) = http(api, method, &path, t, &body).unwrap();
        assert_eq!(
            code,
            want,
            "{method} {}: {resp}",
            &path[..path.len().min(60)]
        );
        let v = json(&resp);
        assert!(v["code"].is_string() && v["message"].is_string(), "{resp}");
        assert!(resp.contains(needle), "{resp} lacks {needle}");
    }
    // Nothing was written by the refused requests.
    let (code, _, _) = http(api, "GET", "/api/v1/kv/big", t, "").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_restart_keeps_every_acknowledged_write() {
    let (mut n, api, t) = ready_control();
    let mut last = 0;
    for i in 0..50 {
        let (code, _, body) = http(
            api,
            "PUT",
            &format!("/api/v1/kv/keep/{i:02}"),
            Some(&t),
            &i.to_string(),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        last = json(&body)["revision"].as_u64().unwrap();
    }
    n.restart();
    let api = n.addr("control", "api");
    n.wait_ready(api);
    assert_eq!(n.admin_token(), t, "the admin token survives a restart");
    let (_, _, body) = http(api, "GET", "/api/v1/kv/keep/?prefix=true", Some(&t), "").unwrap();
    let v = json(&body);
    assert_eq!(v["items"].as_array().unwrap().len(), 50, "{body}");
    assert!(v["revision"].as_u64().unwrap() >= last);
    let (_, _, body) = http(api, "PUT", "/api/v1/kv/keep/after", Some(&t), "x").unwrap();
    assert!(
        json(&body)["revision"].as_u64().unwrap() > last,
        "revisions keep increasing"
    );
}
