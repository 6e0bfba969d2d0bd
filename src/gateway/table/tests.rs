use super::*;
use crate::model::parse_documents;

const ESTATE: &str = r#"
apiVersion: tessera.io/v1
kind: Region
metadata: {name: hangzhou}
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
metadata: {name: rz00}
spec: {type: RZone, zone: hz-a, standbyZone: hz-b, slots: ["00-49"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz01}
spec: {type: RZone, zone: hz-b, standbyZone: sh-a, slots: ["50-99"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: gz00}
spec: {type: GZone, zone: hz-a}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: cz-sh}
spec: {type: CZone, zone: sh-a}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: cz-hz}
spec: {type: CZone, zone: hz-b}
---
apiVersion: tessera.io/v1
kind: ShardMap
metadata: {name: default}
spec:
  slots: {"00-49": rz00, "50-99": rz01}
---
apiVersion: tessera.io/v1
kind: App
metadata: {name: echo}
spec:
  mode: external
  endpoints:
    - {address: "127.0.0.1:1000", unit: rz00, version: v1}
    - {address: "127.0.0.1:1001", unit: rz00, version: v2}
    - {address: "127.0.0.1:1002", unit: rz00, zone: hz-b, version: v1}
    - {address: "127.0.0.1:1010", unit: rz01, version: v1}
    - {address: "127.0.0.1:1020", unit: gz00, version: v1}
    - {address: "127.0.0.1:1030", unit: cz-sh}
    - {address: "127.0.0.1:1031", unit: cz-hz}
---
apiVersion: tessera.io/v1
kind: App
metadata: {name: web}
spec:
  mode: external
  endpoints:
    - {address: "127.0.0.2:1000", zone: hz-a}
    - {address: "127.0.0.2:1001", zone: hz-b}
"#;

fn inputs(extra: &str) -> Inputs {
    let mut objects = BTreeMap::new();
    for r in parse_documents(&format!("{ESTATE}\n---\n{extra}")).unwrap() {
        let kind = Kind::parse(&r.kind).unwrap();
        objects.insert(Inputs::key(kind, &r.metadata.name), r);
    }
    Inputs {
        revision: 7,
        objects,
    }
}

fn rule(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tessera.io/v1\nkind: TrafficRule\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

struct Req {
    method: http::Method,
    host: String,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
}

fn req(path: &str, headers: &[(&str, &str)]) -> Req {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Req {
        method: http::Method::GET,
        host: "api.bank.example".into(),
        path,
        query,
        headers: h,
    }
}

impl Req {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}

/// (unit, zone, candidate ports) or the refusal reason.
fn route(
    t: &RouteTable,
    s: &EndpointStates,
    r: &Req,
) -> Result<(String, String, Vec<u16>), &'static str> {
    match t.decide(&r.view(), s) {
        Decision::Route(r) => {
            let mut ports: Vec<u16> = r.candidates.iter().map(|e| e.addr.port()).collect();
            ports.sort();
            // The header values the proxy answers with say the same.
            assert_eq!(r.unit_hv.as_bytes(), r.unit.as_bytes());
            assert_eq!(r.zone_hv.as_bytes(), r.zone.as_bytes());
            Ok((r.unit.to_string(), r.zone.to_string(), ports))
        }
        Decision::Refuse { reason, .. } => Err(reason),
    }
}

#[test]
fn unit_routing_by_every_key_source() {
    let s = EndpointStates::default();
    let t = compile(
        &inputs(
            &[
                rule("h", "{app: echo, pathPrefix: /h}"),
                rule(
                    "c",
                    "{app: echo, pathPrefix: /c, routingKey: {source: cookie, name: uid}}",
                ),
                rule(
                    "q",
                    "{app: echo, pathPrefix: /q, routingKey: {source: query, name: uid}}",
                ),
                rule(
                    "p",
                    "{app: echo, pathPrefix: /p, routingKey: {source: pathSegment, segment: 1}}",
                ),
            ]
            .join("---\n"),
        ),
        Some("hz-a"),
        &s,
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let rz00 = Ok(("rz00".to_string(), "hz-a".to_string(), vec![1000, 1001]));
    let rz01 = Ok(("rz01".to_string(), "hz-b".to_string(), vec![1010]));
    assert_eq!(
        route(&t, &s, &req("/h", &[("x-tessera-uid", "2088000000000007")])),
        rz00
    );
    assert_eq!(
        route(
            &t,
            &s,
            &req("/h/x", &[("x-tessera-uid", "2088000000000057")])
        ),
        rz01
    );
    assert_eq!(
        route(&t, &s, &req("/c", &[("cookie", "a=b; uid=1299")])),
        rz01
    );
    assert_eq!(route(&t, &s, &req("/q?x=1&uid=1203", &[])), rz00);
    assert_eq!(route(&t, &s, &req("/p/1288/orders", &[])), rz01);
    assert_eq!(route(&t, &s, &req("/h", &[])), Err("no-routing-key"));
    // `/hx` is not under the prefix `/h`.
    assert_eq!(
        route(&t, &s, &req("/hx", &[("x-tessera-uid", "1")])),
        Err("no-rule")
    );
}

#[test]
fn global_city_and_parallel() {
    let s = EndpointStates::default();
    let t = compile(
        &inputs(
            &[
                rule("g", "{app: echo, pathPrefix: /g, routeBy: global}"),
                rule("c", "{app: echo, pathPrefix: /c, routeBy: city}"),
                rule("w", "{app: web, pathPrefix: /w, routeBy: parallel}"),
            ]
            .join("---\n"),
        ),
        Some("hz-a"),
        &s,
    );
    assert_eq!(
        route(&t, &s, &req("/g", &[])),
        Ok(("gz00".into(), "hz-a".into(), vec![1020]))
    );
    // hz-a is in hangzhou: the hangzhou CZone, not Shanghai's.
    assert_eq!(
        route(&t, &s, &req("/c", &[])),
        Ok(("cz-hz".into(), "hz-b".into(), vec![1031]))
    );
    assert_eq!(
        route(&t, &s, &req("/w", &[])),
        Ok(("-".into(), "hz-a".into(), vec![1000]))
    );
    // The local zone's endpoint ejected: the other zone serves.
    let ep = s.get("127.0.0.2:1000".parse().unwrap());
    for _ in 0..EJECT_AFTER {
        s.failure(&ep);
    }
    assert_eq!(
        route(&t, &s, &req("/w", &[])),
        Ok(("-".into(), "hz-b".into(), vec![1001]))
    );
    // Its ejection over: usable again; an answer from it clears the ejection time.
    ep.ejected_until_ms.store(s.now_ms(), Ordering::Relaxed);
    assert_eq!(
        route(&t, &s, &req("/w", &[])),
        Ok(("-".into(), "hz-a".into(), vec![1000]))
    );
    s.success(&ep);
    assert_eq!(ep.ejected_until_ms.load(Ordering::Relaxed), 0);
    assert_eq!(
        route(&t, &s, &req("/w", &[])),
        Ok(("-".into(), "hz-a".into(), vec![1000]))
    );
}

#[test]
fn failover_only_when_allowed_and_never_to_another_unit() {
    let s = EndpointStates::default();
    let t = compile(
        &inputs(
            &[
                rule("a", "{app: echo, pathPrefix: /a}"),
                rule("b", "{app: echo, pathPrefix: /b, failover: standby}"),
            ]
            .join("---\n"),
        ),
        None,
        &s,
    );
    for port in [1000, 1001] {
        s.get(format!("127.0.0.1:{port}").parse().unwrap())
            .unhealthy
            .store(true, Ordering::Relaxed);
    }
    let uid = [("x-tessera-uid", "7")];
    assert_eq!(route(&t, &s, &req("/a", &uid)), Err("no-healthy-endpoint"));
    assert_eq!(
        route(&t, &s, &req("/b", &uid)),
        Ok(("rz00".into(), "hz-b".into(), vec![1002]))
    );
    // rz01's standby zone sh-a has no endpoint: 503, never rz00's.
    s.get("127.0.0.1:1010".parse().unwrap())
        .unhealthy
        .store(true, Ordering::Relaxed);
    assert_eq!(
        route(&t, &s, &req("/b", &[("x-tessera-uid", "77")])),
        Err("no-healthy-endpoint")
    );
}

#[test]
fn canary_blue_green_and_mirror() {
    let s = EndpointStates::default();
    let t = compile(
        &inputs(&[
            rule("c", "{app: echo, pathPrefix: /c, canary: {version: v2, weight: 10, header: x-canary, cookie: beta=1}}"),
            rule("bg", "{app: echo, pathPrefix: /bg, activeVersion: v2}"),
            rule("m", "{app: echo, pathPrefix: /m, mirror: {percent: 100, version: v2}}"),
        ]
        .join("---\n")),
        None,
        &s,
    );
    let v2 = Ok(("rz00".to_string(), "hz-a".to_string(), vec![1001]));
    let v1 = Ok(("rz00".to_string(), "hz-a".to_string(), vec![1000]));
    // Slots below the weight go to the canary, the others stay.
    assert_eq!(route(&t, &s, &req("/c", &[("x-tessera-uid", "105")])), v2);
    assert_eq!(route(&t, &s, &req("/c", &[("x-tessera-uid", "110")])), v1);
    assert_eq!(
        route(
            &t,
            &s,
            &req("/c", &[("x-tessera-uid", "110"), ("x-canary", "")])
        ),
        v2
    );
    assert_eq!(
        route(
            &t,
            &s,
            &req("/c", &[("x-tessera-uid", "110"), ("cookie", "beta=1")])
        ),
        v2
    );
    assert_eq!(
        route(
            &t,
            &s,
            &req("/c", &[("x-tessera-uid", "110"), ("cookie", "beta=0")])
        ),
        v1
    );
    assert_eq!(route(&t, &s, &req("/bg", &[("x-tessera-uid", "30")])), v2);
    match t.decide(&req("/m", &[("x-tessera-uid", "30")]).view(), &s) {
        Decision::Route(r) => assert_eq!(r.shadow.map(|e| e.addr.port()), Some(1001)),
        other => panic!("{other:?}"),
    }
    // The canary's only endpoint draining: its users fall back to the stable version.
    let t2 = compile(
        &inputs(&format!(
            "{}---\napiVersion: tessera.io/v1\nkind: Instance\nmetadata: {{name: i1}}\nspec: {{app: echo, unit: rz01, version: v2}}\nstatus: {{endpoint: '127.0.0.9:1', ready: true, draining: true}}\n",
            rule("c", "{app: echo, canary: {version: v2, weight: 100}}")
        )),
        None,
        &s,
    );
    assert_eq!(
        route(&t2, &s, &req("/", &[("x-tessera-uid", "77")])),
        Ok(("rz01".into(), "hz-b".into(), vec![1010]))
    );
}

#[test]
fn most_specific_rule_wins() {
    let s = EndpointStates::default();
    let t = compile(
        &inputs(&[
            rule("any", "{app: web, routeBy: parallel}"),
            rule("api", "{app: echo, host: api.bank.example, pathPrefix: /api, routeBy: global}"),
            rule("wild", "{app: echo, host: '*.bank.example', pathPrefix: /api, routeBy: city}"),
            rule("exact", "{app: echo, path: /api/ping, routeBy: global, methods: [POST]}"),
            rule("hdr", "{app: web, pathPrefix: /api, host: api.bank.example, headers: {x-beta: '*'}, priority: 5, routeBy: parallel}"),
        ]
        .join("---\n")),
        None,
        &s,
    );
    let name = |r: &Req| t.matching(&r.view()).map(|r| r.name.to_string());
    assert_eq!(name(&req("/api/x", &[])).as_deref(), Some("api"));
    assert_eq!(
        name(&req("/api/x", &[("x-beta", "1")])).as_deref(),
        Some("hdr")
    );
    let mut other = req("/api/x", &[]);
    other.host = "m.bank.example".into();
    assert_eq!(name(&other).as_deref(), Some("wild"));
    other.host = "bank.example".into();
    assert_eq!(name(&other).as_deref(), Some("any"));
    let mut post = req("/api/ping", &[]);
    assert_eq!(name(&post).as_deref(), Some("api"));
    post.method = http::Method::POST;
    post.host = "other".into();
    assert_eq!(name(&post).as_deref(), Some("exact"));
}

#[test]
fn instances_register_endpoints_and_no_table_refuses() {
    let s = EndpointStates::default();
    assert!(matches!(
        RouteTable::default().decide(&req("/", &[]).view(), &s),
        Decision::Refuse {
            status: 503,
            reason: "no-route-table",
            ..
        }
    ));
    let t = compile(
        &inputs(&format!(
            "{}---\napiVersion: tessera.io/v1\nkind: Instance\nmetadata: {{name: i1}}\nspec: {{app: web, unit: rz01}}\nstatus: {{endpoint: '127.0.0.9:1', ready: true}}\n---\napiVersion: tessera.io/v1\nkind: Instance\nmetadata: {{name: i2}}\nspec: {{app: web, unit: rz01}}\nstatus: {{endpoint: '127.0.0.9:2', ready: false}}\n",
            rule("r", "{app: web}")
        )),
        None,
        &s,
    );
    assert_eq!(
        route(&t, &s, &req("/", &[("x-tessera-uid", "99")])),
        Ok(("rz01".into(), "hz-b".into(), vec![1, 1001]))
    );
    assert_eq!(
        t.endpoints.iter().filter(|e| e.instance.is_some()).count(),
        1
    );
}
