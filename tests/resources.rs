//! The typed resource API against a running control node: CRUD for every kind,
//! optimistic concurrency, cross-object invariants, apply idempotence, watch resume,
//! the authorization matrix, users, and the audit chain with `tessera audit verify`.

use crate::harness::{http, stderr, stdout, tessera, Node};
use serde_json::{json, Value};
use std::net::SocketAddr;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ready(env: &[(&str, &str)]) -> (Node, SocketAddr, String) {
    let mut n = Node::up_with_env(&[], env);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let t = n.admin_token();
    (n, api, t)
}

/// The estate every test starts from, one object of each user-declared kind.
pub(crate) const BASE: &str = r#"
apiVersion: tessera.io/v1
kind: Region
metadata: {name: hangzhou}
---
apiVersion: tessera.io/v1
kind: Region
metadata: {name: shanghai}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-a}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-b}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: sh-a}
spec: {region: shanghai}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz00, labels: {tier: core}}
spec: {type: RZone, zone: hz-a, standbyZone: hz-b, slots: ["00-49"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz01, labels: {tier: core}}
spec: {type: RZone, zone: hz-b, standbyZone: sh-a, slots: ["50-99"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: gz00}
spec: {type: GZone, zone: hz-a}
---
apiVersion: tessera.io/v1
kind: ShardMap
metadata: {name: default}
spec:
  slots: {"00-49": rz00, "50-99": rz01}
---
apiVersion: tessera.io/v1
kind: Cluster
metadata: {name: pool-hz-a}
spec: {type: vm-pool, zone: hz-a}
---
apiVersion: tessera.io/v1
kind: Node
metadata: {name: host-1}
spec: {zone: hz-a, cluster: pool-hz-a, address: 10.0.0.1}
---
apiVersion: tessera.io/v1
kind: Artifact
metadata: {name: echo-1}
spec: {version: "1.0.0"}
---
apiVersion: tessera.io/v1
kind: App
metadata: {name: echo}
spec: {mode: vm, artifact: "builtin:echo", port: 9000, healthCheck: {path: /healthz}}
---
apiVersion: tessera.io/v1
kind: Instance
metadata: {name: echo-rz00-0}
spec: {app: echo, unit: rz00, node: host-1}
---
apiVersion: tessera.io/v1
kind: Release
metadata: {name: echo-1-1}
spec: {app: echo, version: "1.1.0", artifact: echo-1, batches: [[rz00], [rz01]]}
---
apiVersion: tessera.io/v1
kind: TrafficRule
metadata: {name: echo-root}
spec: {app: echo, pathPrefix: /}
---
apiVersion: tessera.io/v1
kind: DataSource
metadata: {name: pay}
spec:
  database: pay
  shards:
    - {unit: rz00, primary: "10.0.1.1:3306", replicas: ["10.0.2.1:3306"]}
    - {unit: rz01, primary: "10.0.1.2:3306"}
"#;

fn apply(api: SocketAddr, t: &str, yaml: &str) -> (u16, Value) {
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(t), yaml).unwrap();
    (code, json(&body))
}

fn put(api: SocketAddr, t: &str, kinds: &str, obj: &Value) -> (u16, Value) {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let (code, _, body) = http(
        api,
        "PUT",
        &format!("/api/v1/{kinds}/{name}"),
        Some(t),
        &obj.to_string(),
    )
    .unwrap();
    (code, json(&body))
}

fn get(api: SocketAddr, t: &str, path: &str) -> (u16, Value) {
    let (code, _, body) = http(api, "GET", path, Some(t), "").unwrap();
    (code, json(&body))
}

const KINDS: [&str; 12] = [
    "regions",
    "zones",
    "units",
    "shardmaps",
    "clusters",
    "nodes",
    "artifacts",
    "apps",
    "instances",
    "releases",
    "trafficrules",
    "datasources",
];

#[test]
fn crud_for_every_kind_with_optimistic_concurrency() {
    let (_n, api, t) = ready(&[]);
    let (code, v) = apply(api, &t, BASE);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changed"], 17, "{v}");
    for kinds in KINDS {
        let (code, list) = get(api, &t, &format!("/api/v1/{kinds}"));
        assert_eq!(code, 200, "{kinds}: {list}");
        let items = list["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{kinds}");
        let mut obj = items[0].clone();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let rev = obj["metadata"]["revision"].as_u64().unwrap();
        assert!(obj["metadata"]["createdAt"].is_string(), "{obj}");
        // Update with the revision read: accepted, new revision.
        obj["metadata"]["labels"]["touched"] = json!("yes");
        let (code, updated) = put(api, &t, kinds, &obj);
        assert_eq!(code, 200, "{kinds}/{name}: {updated}");
        let rev2 = updated["metadata"]["revision"].as_u64().unwrap();
        assert!(rev2 > rev);
        // The same stale revision again: 409 naming the field.
        obj["metadata"]["labels"]["touched"] = json!("twice");
        let (code, err) = put(api, &t, kinds, &obj);
        assert_eq!(code, 409, "{kinds}/{name}: {err}");
        assert_eq!(err["code"], "stale_revision");
        assert_eq!(err["field"], "metadata.revision");
        let (code, one) = get(api, &t, &format!("/api/v1/{kinds}/{name}"));
        assert_eq!(code, 200);
        assert_eq!(one["metadata"]["labels"]["touched"], "yes");
        assert_eq!(one["metadata"]["revision"], rev2);
    }
    // Label selectors.
    let (_, core) = get(api, &t, "/api/v1/units?labelSelector=tier%3Dcore");
    assert_eq!(core["items"].as_array().unwrap().len(), 2, "{core}");
    let (_, notcore) = get(api, &t, "/api/v1/units?labelSelector=tier!%3Dcore");
    assert_eq!(notcore["items"].as_array().unwrap().len(), 1, "{notcore}");
    let (code, _) = get(api, &t, "/api/v1/units?labelSelector=%3Dx");
    assert_eq!(code, 400);
    // Delete everything, dependents first; each is gone afterwards.
    for kinds in KINDS.iter().rev() {
        let (_, list) = get(api, &t, &format!("/api/v1/{kinds}"));
        let mut items: Vec<Value> = list["items"].as_array().unwrap().clone();
        // Within units: the shard map went already; GZone/RZones in any order.
        items.sort_by_key(|i| i["metadata"]["name"].as_str().unwrap().to_string());
        for obj in items {
            let name = obj["metadata"]["name"].as_str().unwrap();
            let (code, _, body) = http(
                api,
                "DELETE",
                &format!("/api/v1/{kinds}/{name}"),
                Some(&t),
                "",
            )
            .unwrap();
            assert_eq!(code, 200, "{kinds}/{name}: {body}");
            let (code, _) = get(api, &t, &format!("/api/v1/{kinds}/{name}"));
            assert_eq!(code, 404);
        }
    }
    let (code, _, _) = http(api, "DELETE", "/api/v1/zones/hz-a", Some(&t), "").unwrap();
    assert_eq!(code, 404);
    let (code, _) = get(api, &t, "/api/v1/widgets");
    assert_eq!(code, 404);
}

#[test]
fn invariant_violations_are_refused_naming_the_field() {
    let (_n, api, t) = ready(&[]);
    assert_eq!(apply(api, &t, BASE).0, 200);
    let unit = |spec: Value| json!({"apiVersion": "tessera.io/v1", "kind": "Unit", "metadata": {"name": "rz09"}, "spec": spec});
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            unit(json!({"type": "RZone", "zone": "hz-a", "standbyZone": "hz-a", "slots": ["00"]})),
            422,
            "spec.standbyZone",
        ),
        (
            unit(json!({"type": "RZone", "zone": "nowhere", "slots": ["00"]})),
            422,
            "spec.zone",
        ),
        (
            unit(json!({"type": "RZone", "zone": "hz-a", "slots": ["40-45"]})),
            409,
            "spec.slots",
        ),
        (
            unit(json!({"type": "RZone", "zone": "hz-a", "slotz": ["40-45"]})),
            422,
            "spec",
        ),
        (
            unit(json!({"type": "QZone", "zone": "hz-a"})),
            422,
            "spec.type",
        ),
        (
            unit(json!({"type": "GZone", "zone": "hz-a", "slots": ["01"]})),
            422,
            "spec.slots",
        ),
    ];
    for (obj, status, field) in cases {
        let (code, err) = put(api, &t, "units", &obj);
        assert_eq!(code, status, "{obj}: {err}");
        assert!(
            err["field"].as_str().unwrap_or("").starts_with(field),
            "{obj}: {err}"
        );
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // A shard map with a hole; one sending slots to a unit that does not own them.
    let map = |slots: Value| json!({"apiVersion": "tessera.io/v1", "kind": "ShardMap", "metadata": {"name": "default"}, "spec": {"slots": slots}});
    let (code, err) = put(
        api,
        &t,
        "shardmaps",
        &map(json!({"00-48": "rz00", "50-99": "rz01"})),
    );
    assert_eq!(
        (code, err["field"].as_str()),
        (422, Some("spec.slots")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("49"), "{err}");
    let (code, err) = put(
        api,
        &t,
        "shardmaps",
        &map(json!({"00-39": "rz00", "40-99": "rz01"})),
    );
    assert_eq!(code, 409, "{err}");
    // Moving slots works when units and map change together, in one apply.
    let moved = BASE
        .replace("slots: [\"00-49\"]", "slots: [\"00-39\"]")
        .replace("slots: [\"50-99\"]", "slots: [\"40-99\"]")
        .replace(
            "{\"00-49\": rz00, \"50-99\": rz01}",
            "{\"00-39\": rz00, \"40-99\": rz01}",
        );
    let (code, v) = apply(api, &t, &moved);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changed"], 3, "{v}");
    // Nothing deleted while referenced: 409 naming the referrer.
    let (code, _, body) = http(api, "DELETE", "/api/v1/zones/sh-a", Some(&t), "").unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("unit `rz01`"), "{body}");
    // An apply with one bad document changes nothing.
    let (_, before) = get(api, &t, "/api/v1/regions");
    let bad = "apiVersion: tessera.io/v1\nkind: Region\nmetadata: {name: beijing}\n---\napiVersion: tessera.io/v1\nkind: Zone\nmetadata: {name: bj-a}\nspec: {region: nowhere}\n";
    let (code, err) = apply(api, &t, bad);
    assert_eq!(code, 422, "{err}");
    let (_, after) = get(api, &t, "/api/v1/regions");
    assert_eq!(before["items"], after["items"]);
    // Bad bodies: 4xx with a field, never 5xx.
    for (body, what) in [
        ("{", "truncated JSON"),
        ("{\"apiVersion\": \"v0\", \"kind\": \"Unit\", \"metadata\": {\"name\": \"x\"}}", "apiVersion"),
        ("{\"apiVersion\": \"tessera.io/v1\", \"kind\": \"Zone\", \"metadata\": {\"name\": \"x\"}}", "kind mismatch"),
        ("{\"apiVersion\": \"tessera.io/v1\", \"kind\": \"Unit\", \"metadata\": {\"name\": \"Bad_Name\"}}", "name"),
        ("[1,2]", "array"),
    ] {
        let (code, _, resp) = http(api, "PUT", "/api/v1/units/x", Some(&t), body).unwrap();
        assert!((400..500).contains(&code), "{what}: {code} {resp}");
        assert!(json(&resp)["field"].is_string(), "{what}: {resp}");
    }
    let (code, _, resp) = http(api, "POST", "/api/v1/apply", Some(&t), "kind: [").unwrap();
    assert_eq!(code, 400, "{resp}");
}

#[test]
fn apply_is_idempotent_and_the_cli_shows_units() {
    let (n, api, t) = ready(&[]);
    let file = crate::harness::write(n.data_dir.parent().unwrap(), "estate.yaml", BASE);
    let server = format!("http://{api}");
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &server, "--token", &t]);
        tessera(&all, &[])
    };
    let f = file.display().to_string();
    let first = run(&["apply", "-f", &f]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("unit/rz00 created"),
        "{}",
        stdout(&first)
    );
    let (_, audit1) = get(api, &t, "/api/v1/auditevents?limit=1000");
    let second = run(&["apply", "-f", &f]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("0 changed"), "{}", stderr(&second));
    assert!(!stdout(&second).contains("created") && !stdout(&second).contains("configured"));
    let (_, audit2) = get(api, &t, "/api/v1/auditevents?limit=1000");
    assert_eq!(
        audit1["items"], audit2["items"],
        "a no-op apply records nothing"
    );

    let table = run(&["get", "units", "-o", "table"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let out = stdout(&table);
    assert!(out.starts_with("NAME"), "{out}");
    for want in ["rz00", "RZone", "hz-a", "00-49", "gz00"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let one = run(&["get", "unit", "rz01", "-o", "yaml"]);
    assert!(
        stdout(&one).contains("standbyZone: sh-a"),
        "{}",
        stdout(&one)
    );
    let js = run(&["get", "zones", "-o", "json"]);
    assert!(json(&stdout(&js)).as_array().unwrap().len() == 3);
    // Readable errors and exit codes.
    let missing = run(&["get", "units", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
    let bad_kind = run(&["get", "widgets"]);
    assert_eq!(bad_kind.status.code(), Some(2));
    let typo = crate::harness::write(
        n.data_dir.parent().unwrap(),
        "typo.yaml",
        "apiVersion: tessera.io/v1\nkind: Zone\nmetadata: {name: z}\nspec: {regoin: hangzhou}\n",
    );
    let bad = run(&["apply", "-f", &typo.display().to_string()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("regoin"), "{}", stderr(&bad));
    let gone = run(&["delete", "trafficrule", "echo-root"]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    let refused = run(&["delete", "zone", "hz-a"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("still referenced"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn watch_resumes_after_reconnect_without_gaps_or_duplicates() {
    use std::io::Write;
    let (_n, api, t) = ready(&[]);
    let (_, v) = apply(api, &t, BASE);
    let start = v["revision"].as_u64().unwrap();
    let zone = |name: &str| {
        format!("apiVersion: tessera.io/v1\nkind: Zone\nmetadata: {{name: {name}}}\nspec: {{region: shanghai}}\n")
    };
    let open = |since: u64| {
        let mut s = std::net::TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        write!(s, "GET /api/v1/watch?kinds=zones,units&since={since} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").unwrap();
        s
    };
    let mut s = open(start);
    apply(api, &t, &zone("sh-b"));
    apply(api, &t, &zone("sh-c"));
    // Not watched: regions.
    apply(
        api,
        &t,
        "apiVersion: tessera.io/v1\nkind: Region\nmetadata: {name: beijing}\n",
    );
    let first = crate::kv_api::read_sse(&mut s, 2);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0].1, "ADDED");
    assert_eq!(first[0].2["object"]["metadata"]["name"], "sh-b");
    drop(s);
    // While disconnected: a change and a delete.
    apply(api, &t, &zone("sh-d"));
    let (code, _, _) = http(api, "DELETE", "/api/v1/zones/sh-b", Some(&t), "").unwrap();
    assert_eq!(code, 200);
    let last = first.last().unwrap().0;
    let mut s = open(last);
    let rest = crate::kv_api::read_sse(&mut s, 2);
    let names: Vec<(&str, &str)> = rest
        .iter()
        .map(|e| (e.1.as_str(), e.2["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, vec![("ADDED", "sh-d"), ("DELETED", "sh-b")]);
    let revs: Vec<u64> = first.iter().chain(&rest).map(|e| e.0).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    let (code, _, _) = http(api, "GET", "/api/v1/watch?kinds=widgets", Some(&t), "").unwrap();
    assert_eq!(code, 400);
    // With progress: one apply of two zones is two events, then PROGRESS at their
    // revision; an apply of a kind not watched sends nothing.
    let now = revs.last().copied().unwrap();
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    write!(s, "GET /api/v1/watch?kinds=zones&since={now}&progress=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").unwrap();
    let caught_up = crate::kv_api::read_sse(&mut s, 1);
    assert_eq!(
        caught_up.first().map(|e| (e.0, e.1.as_str())),
        Some((now, "PROGRESS")),
        "{caught_up:?}"
    );
    let (_, v) = apply(api, &t, &format!("{}---\n{}", zone("sh-e"), zone("sh-f")));
    let rev = v["revision"].as_u64().unwrap();
    let evs = crate::kv_api::read_sse(&mut s, 3);
    let kinds: Vec<(&str, u64)> = evs.iter().map(|e| (e.1.as_str(), e.0)).collect();
    assert_eq!(
        kinds,
        vec![("ADDED", rev), ("ADDED", rev), ("PROGRESS", rev)],
        "{evs:?}"
    );
}

#[test]
fn authorization_matrix_each_role_against_each_verb() {
    let (_n, api, admin) = ready(&[]);
    assert_eq!(apply(api, &admin, BASE).0, 200);
    let mut tokens = vec![("admin", admin.clone())];
    for role in ["operator", "approver", "viewer"] {
        let body = json!({"name": format!("{role}-1"), "role": role}).to_string();
        let (code, _, resp) = http(api, "POST", "/api/v1/users", Some(&admin), &body).unwrap();
        assert_eq!(code, 201, "{resp}");
        tokens.push((role, json(&resp)["token"].as_str().unwrap().to_string()));
    }
    let region =
        json!({"apiVersion": "tessera.io/v1", "kind": "Region", "metadata": {"name": "r-x"}})
            .to_string();
    let app = json!({"apiVersion": "tessera.io/v1", "kind": "App", "metadata": {"name": "a-x"}, "spec": {"mode": "container", "image": "reg/a:1", "port": 80}}).to_string();
    let user = json!({"name": "u-x", "role": "viewer"}).to_string();
    // (method, path, body, roles allowed)
    let matrix: Vec<(&str, &str, &str, &[&str])> = vec![
        (
            "GET",
            "/api/v1/units",
            "",
            &["admin", "operator", "approver", "viewer"],
        ),
        (
            "GET",
            "/api/v1/units/rz00",
            "",
            &["admin", "operator", "approver", "viewer"],
        ),
        ("PUT", "/api/v1/regions/r-x", &region, &["admin"]),
        ("PUT", "/api/v1/apps/a-x", &app, &["admin", "operator"]),
        ("POST", "/api/v1/apply", &app, &["admin", "operator"]),
        (
            "DELETE",
            "/api/v1/trafficrules/echo-root",
            "",
            &["admin", "operator"],
        ),
        ("GET", "/api/v1/users", "", &["admin"]),
        ("POST", "/api/v1/users", &user, &["admin"]),
        ("GET", "/api/v1/auditevents", "", &["admin", "approver"]),
        ("GET", "/api/v1/kv/x", "", &["admin"]),
    ];
    for (method, path, body, allowed) in &matrix {
        for (role, token) in &tokens {
            let (code, _, resp) = http(api, method, path, Some(token), body).unwrap();
            if allowed.contains(role) {
                assert!(
                    code != 401 && code != 403,
                    "{role} {method} {path}: {code} {resp}"
                );
            } else {
                assert_eq!(code, 403, "{role} {method} {path}: {resp}");
            }
            // Undo creations so the next role meets the same state.
            if code < 300 && *method == "PUT"
                || (*method == "POST" && path.ends_with("users") && code == 201)
            {
                let del = match *path {
                    "/api/v1/users" => "/api/v1/users/u-x".to_string(),
                    p => p.to_string(),
                };
                http(api, "DELETE", &del, Some(&admin), "").unwrap();
            }
            if *method == "DELETE" && code == 200 {
                apply(api, &admin, BASE);
            }
            if *method == "POST" && path.ends_with("apply") && code == 200 {
                http(api, "DELETE", "/api/v1/apps/a-x", Some(&admin), "").unwrap();
            }
        }
        let (code, _, _) = http(api, method, path, None, body).unwrap();
        assert_eq!(code, 401, "{method} {path} without a token");
    }
    // Users are not written through the generic PUT; a deleted user's token stops working.
    let (code, _, _) = http(api, "PUT", "/api/v1/users/x", Some(&admin), "{}").unwrap();
    assert_eq!(code, 405);
    let viewer = tokens[3].1.clone();
    let (code, _, body) = http(api, "DELETE", "/api/v1/users/viewer-1", Some(&admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&viewer), "").unwrap();
    assert_eq!(code, 401);
    // Refusals are audited.
    let (_, audit) = get(api, &admin, "/api/v1/auditevents?limit=1000");
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["outcome"] == "refused" && e["user"] == "viewer-1"));
}

#[test]
fn the_audit_chain_records_changes_and_verify_finds_tampering() {
    // Control alone: under `up`, the co-located agent's node registration and events
    // would join the chain whenever they happen to come, and the counts below are exact.
    let mut n = Node::run_profile(
        crate::harness::CONTROL_ONLY,
        &[],
        &[("TESSERA_TEST_ALLOW_AUDIT_TAMPERING", "1")],
    );
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let t = n.admin_token();
    assert_eq!(apply(api, &t, BASE).0, 200);
    let (code, _, _) = http(api, "DELETE", "/api/v1/zones/hz-a", Some(&t), "").unwrap();
    assert_eq!(code, 409);
    let (_, page) = get(api, &t, "/api/v1/auditevents?limit=1000");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 18, "17 creations and one refusal");
    let unit = items.iter().find(|e| e["name"] == "rz00").unwrap();
    assert_eq!(unit["action"], "create");
    assert_eq!(unit["user"], "admin");
    assert_eq!(unit["source"], "127.0.0.1");
    assert!(unit["requestId"].as_str().unwrap().len() >= 8);
    assert!(unit["diff"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["path"] == "spec.zone" && d["after"] == "hz-a"));
    let refused = items.last().unwrap();
    assert_eq!(refused["outcome"], "refused");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("still referenced"));
    // Filters.
    let (_, units) = get(api, &t, "/api/v1/auditevents?kind=units&limit=100");
    assert_eq!(units["items"].as_array().unwrap().len(), 3);
    let (code, _) = get(api, &t, "/api/v1/auditevents?since=yesterday");
    assert_eq!(code, 400);

    let server = format!("http://{api}");
    let verify = || {
        tessera(
            &["audit", "verify", "--server", &server, "--token", &t],
            &[],
        )
    };
    let listed = tessera(
        &[
            "audit", "list", "--kind", "units", "--user", "admin", "--server", &server, "--token",
            &t,
        ],
        &[],
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    let rows = stdout(&listed);
    assert_eq!(rows.lines().count(), 4, "a header and three units:\n{rows}");
    assert!(rows.contains("rz00") && rows.contains("gz00"), "{rows}");
    let ok = verify();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("18 events"), "{}", stdout(&ok));
    // Tamper with event 5 (test-only path: raw KV writes to the audit space are allowed
    // only with TESSERA_TEST_ALLOW_AUDIT_TAMPERING=1).
    let key = "/api/v1/kv//tessera/audit/events/00000000000000000005";
    let (code, _, body) = http(api, "GET", key, Some(&t), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut ev = json(json(&body)["kv"]["value"].as_str().unwrap());
    ev["user"] = json!("mallory");
    let (code, _, body) = http(api, "PUT", key, Some(&t), &ev.to_string()).unwrap();
    assert_eq!(code, 200, "{body}");
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stderr(&broken).contains("broken at event 5"),
        "{}",
        stderr(&broken)
    );
    drop(n);
}

#[test]
fn without_the_test_switch_the_audit_space_is_not_writable() {
    let (_n, api, t) = ready(&[]);
    for path in [
        "/api/v1/kv//tessera/audit/head",
        "/api/v1/kv//tessera/resources/units/x",
        "/api/v1/kv//tessera/history/shardmaps/x/1",
    ] {
        let (code, _, body) = http(api, "PUT", path, Some(&t), "x").unwrap();
        assert_eq!(code, 403, "{path}: {body}");
    }
    let (code, _, _) = http(
        api,
        "DELETE",
        "/api/v1/kv//tessera/?prefix=true",
        Some(&t),
        "",
    )
    .unwrap();
    assert_eq!(code, 403);
}

#[test]
fn shard_map_history_can_be_reviewed_and_reverted() {
    let (_n, api, t) = ready(&[]);
    assert_eq!(apply(api, &t, BASE).0, 200);
    let moved = BASE
        .replace("slots: [\"00-49\"]", "slots: [\"00-39\"]")
        .replace("slots: [\"50-99\"]", "slots: [\"40-99\"]")
        .replace(
            "{\"00-49\": rz00, \"50-99\": rz01}",
            "{\"00-39\": rz00, \"40-99\": rz01}",
        );
    assert_eq!(apply(api, &t, &moved).0, 200);
    let (code, h) = get(api, &t, "/api/v1/shardmaps/default/history");
    assert_eq!(code, 200, "{h}");
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let first = items[0]["revision"].as_u64().unwrap();
    // Reverting the map alone contradicts the units' slots: refused, naming why.
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/shardmaps/default/revert",
        Some(&t),
        &json!({"revision": first}).to_string(),
    )
    .unwrap();
    assert_eq!(code, 409, "{body}");
    // Move the units back, then the revert goes through.
    let units_back = BASE
        .split("---")
        .filter(|d| d.contains("kind: Unit"))
        .collect::<Vec<_>>()
        .join("---");
    let mut back = units_back.clone();
    back.push_str("---\napiVersion: tessera.io/v1\nkind: ShardMap\nmetadata: {name: default}\nspec:\n  slots: {\"00-39\": rz00, \"40-49\": rz00, \"50-99\": rz01}\n");
    let (code, v) = apply(api, &t, &back);
    assert_eq!(code, 200, "{v}");
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/shardmaps/default/revert",
        Some(&t),
        &json!({"revision": first}).to_string(),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["spec"]["slots"]["00-49"], "rz00");
    let (code, _, _) = http(
        api,
        "POST",
        "/api/v1/shardmaps/default/revert",
        Some(&t),
        "{\"revision\": 1}",
    )
    .unwrap();
    assert_eq!(code, 404);
}

#[test]
fn the_example_topologies_apply_cleanly_and_show_their_units() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in [
        "same-city-active-active.yaml",
        "two-sites-three-centers.yaml",
        "multi-region-active-active.yaml",
    ] {
        let (_n, api, t) = ready(&[]);
        let path = dir.join(file).display().to_string();
        let server = format!("http://{api}");
        let auth = ["--server", server.as_str(), "--token", t.as_str()];
        let mut args = vec!["apply", "-f", path.as_str()];
        args.extend(auth);
        let out = tessera(&args, &[]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        let mut args = vec!["get", "units", "-o", "table"];
        args.extend(auth);
        let table = tessera(&args, &[]);
        assert!(table.status.success(), "{file}: {}", stderr(&table));
        let rows = stdout(&table);
        assert!(
            rows.contains("RZone") && rows.contains("GZone"),
            "{file}:\n{rows}"
        );
        // Applying the same file again changes nothing.
        let mut args = vec!["apply", "-f", path.as_str()];
        args.extend(auth);
        let again = tessera(&args, &[]);
        assert!(
            stderr(&again).contains("0 changed"),
            "{file}: {}",
            stderr(&again)
        );
    }
}

#[test]
fn a_revoked_admin_stays_revoked_across_a_restart() {
    let (mut n, api, admin) = ready(&[]);
    let body = json!({"name": "ops-lead", "role": "admin"}).to_string();
    let (code, _, resp) = http(api, "POST", "/api/v1/users", Some(&admin), &body).unwrap();
    assert_eq!(code, 201, "{resp}");
    let other = json(&resp)["token"].as_str().unwrap().to_string();
    // An admin may not delete themselves; another admin may.
    let (code, _, _) = http(api, "DELETE", "/api/v1/users/admin", Some(&admin), "").unwrap();
    assert_eq!(code, 409);
    let (code, _, resp) = http(api, "DELETE", "/api/v1/users/admin", Some(&other), "").unwrap();
    assert_eq!(code, 200, "{resp}");
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&admin), "").unwrap();
    assert_eq!(code, 401);
    n.restart();
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&admin), "").unwrap();
    assert_eq!(
        code, 401,
        "the restart must not bring the deleted admin back"
    );
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&other), "").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn join_tokens_and_their_refusals_are_audited() {
    let (_n, api, t) = ready(&[]);
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/tokens",
        Some(&t),
        r#"{"role":"control"}"#,
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let (code, _, _) = http(
        api,
        "POST",
        "/api/v1/tokens",
        Some(&t),
        r#"{"role":"wizard"}"#,
    )
    .unwrap();
    assert_eq!(code, 400);
    let (code, _, _) = http(api, "DELETE", "/api/v1/members/nobody", Some(&t), "").unwrap();
    assert_eq!(code, 404);
    let (_, page) = get(api, &t, "/api/v1/auditevents?limit=100");
    let seen: Vec<(String, String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = |a: &str, n: &str, o: &str| (a.to_string(), n.to_string(), o.to_string());
    assert!(
        seen.contains(&want("token.create", "control", "accepted")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&want("token.create", "wizard", "refused")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&want("member.remove", "nobody", "refused")),
        "{seen:?}"
    );
    // The token itself never reaches the audit trail.
    assert!(!page.to_string().contains("tsr1."), "{page}");
}

#[test]
fn status_is_written_apart_from_spec_and_survives_user_writes() {
    let (_n, api, t) = ready(&[]);
    assert_eq!(apply(api, &t, BASE).0, 200);
    let (code, _, body) = http(
        api,
        "PUT",
        "/api/v1/nodes/host-1/status",
        Some(&t),
        r#"{"status": {"ready": true, "lastHeartbeat": "2026-11-22T09:00:00Z"}}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let after_status = json(&body)["metadata"]["revision"].as_u64().unwrap();
    // A user's apply leaves the status alone (and a no-op apply stays a no-op).
    let (_, v) = apply(api, &t, BASE);
    assert_eq!(v["changed"], 0, "{v}");
    let (_, node) = get(api, &t, "/api/v1/nodes/host-1");
    assert_eq!(node["status"]["ready"], true, "{node}");
    let mut changed = node.clone();
    changed["metadata"]["labels"] = json!({"rack": "r1"});
    let (code, updated) = put(api, &t, "nodes", &changed);
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["ready"], true, "{updated}");
    // Stale status writes and bad bodies are refused.
    let stale = format!(r#"{{"status": {{"ready": false}}, "revision": {after_status}}}"#);
    let (code, _, _) = http(api, "PUT", "/api/v1/nodes/host-1/status", Some(&t), &stale).unwrap();
    assert_eq!(code, 409);
    let (code, _, _) = http(
        api,
        "PUT",
        "/api/v1/nodes/host-1/status",
        Some(&t),
        r#"{"status": 3}"#,
    )
    .unwrap();
    assert_eq!(code, 400);
    let (code, _, _) = http(
        api,
        "PUT",
        "/api/v1/nodes/nope/status",
        Some(&t),
        r#"{"status": {}}"#,
    )
    .unwrap();
    assert_eq!(code, 404);
}

#[test]
fn extra_user_tokens_are_audited_and_revoked_with_the_user() {
    let (_n, api, admin) = ready(&[]);
    let body = json!({"name": "ops", "role": "viewer"}).to_string();
    let (code, _, _) = http(api, "POST", "/api/v1/users", Some(&admin), &body).unwrap();
    assert_eq!(code, 201);
    let (code, _, resp) = http(api, "POST", "/api/v1/users/ops/tokens", Some(&admin), "").unwrap();
    assert_eq!(code, 201, "{resp}");
    let second = json(&resp)["token"].as_str().unwrap().to_string();
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&second), "").unwrap();
    assert_eq!(code, 200);
    let (code, _, _) = http(api, "POST", "/api/v1/users/ghost/tokens", Some(&admin), "").unwrap();
    assert_eq!(code, 404);
    let (code, _, _) = http(api, "DELETE", "/api/v1/users/ops", Some(&admin), "").unwrap();
    assert_eq!(code, 200);
    let (code, _, _) = http(api, "GET", "/api/v1/units", Some(&second), "").unwrap();
    assert_eq!(code, 401);
    let (_, page) = get(api, &admin, "/api/v1/auditevents?user=admin&limit=100");
    let actions: Vec<(&str, &str)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("token.create", "accepted")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("token.create", "refused")),
        "{actions:?}"
    );
    assert!(actions.contains(&("delete", "accepted")), "{actions:?}");
    let server = format!("http://{api}");
    let verify = tessera(
        &["audit", "verify", "--server", &server, "--token", &admin],
        &[],
    );
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// `control.kek_file`: the data key that seals secrets is stored wrapped with a
/// key-encryption key kept outside the data dir. Backups carry it wrapped; a node with
/// another KEK cannot seal or open secrets and says why; the right KEK works again.
#[test]
fn the_data_key_is_wrapped_with_a_kek_kept_outside_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek");
    let write_kek = |hex: &str| {
        std::fs::write(&kek, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let (a, b) = ("ab".repeat(32), "cd".repeat(32));
    write_kek(&a);
    let profile = format!(
        "{}kek_file = \"{}\"\n",
        crate::harness::CONTROL_ONLY,
        kek.display()
    );
    // A KEK others can read, or one inside the data dir, is refused up front.
    let bad = keys.path().join("bad.toml");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &bad,
        profile.replace("DATA", &keys.path().join("d").display().to_string()),
    )
    .unwrap();
    let o = tessera(
        &["config", "check", "--profile", &bad.display().to_string()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("control.kek_file") && stderr(&o).contains("chmod 600"));
    write_kek(&a);
    let inside = profile.replace(
        &format!("kek_file = \"{}\"", kek.display()),
        "kek_file = \"DATA/kek\"",
    );
    std::fs::create_dir_all(keys.path().join("d")).unwrap();
    std::fs::copy(&kek, keys.path().join("d/kek")).unwrap();
    std::fs::write(
        &bad,
        inside.replace("DATA", &keys.path().join("d").display().to_string()),
    )
    .unwrap();
    let o = tessera(
        &["config", "check", "--profile", &bad.display().to_string()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside the data dir"), "{}", stderr(&o));

    let (mut c, api, token, _) = crate::harness::control(&profile);
    let (code, body) = apply(api, &token, crate::harness::TOPOLOGY);
    assert_eq!(code, 200, "{body}");
    let ds = |name: &str| {
        format!("apiVersion: tessera.io/v1\nkind: DataSource\nmetadata: {{name: {name}}}\nspec:\n  database: {name}\n  password: backend-secret\n  shards:\n    - {{unit: rz00, primary: \"10.0.1.1:3306\"}}\n")
    };
    let (code, body) = apply(api, &token, &ds("pay"));
    assert_eq!(code, 200, "{body}");
    // The backup holds the data key wrapped, never as a bare key.
    let (code, _, backup) = http(api, "GET", "/api/v1/snapshot", Some(&token), "").unwrap();
    assert_eq!(code, 200);
    let at = backup
        .find("/tessera/pki/datakey")
        .expect("the data key is in the backup");
    let around = &backup[at..(at + 200).min(backup.len())];
    assert!(around.contains("enc:v1:"), "{around}");
    // Another KEK: no secret can be sealed, and the answer says which setting is wrong.
    c.stop();
    write_kek(&b);
    c.start_again();
    let api = c.addr("control", "api");
    c.wait_ready(api);
    let (code, body) = apply(api, &token, &ds("pay2"));
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("control.kek_file"), "{body}");
    // The right one again: it works.
    c.stop();
    write_kek(&a);
    c.start_again();
    let api = c.addr("control", "api");
    c.wait_ready(api);
    let (code, body) = apply(api, &token, &ds("pay2"));
    assert_eq!(code, 200, "{body}");
}
