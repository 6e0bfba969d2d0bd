//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.0 document. Resource schemas are
//! generated from the Rust types in `crate::model` (schemars, OpenAPI 3 settings), so
//! the document cannot drift from what the server accepts; the paths are listed here.

use super::ApiState;
use crate::model::audit::AuditEvent;
use crate::model::kinds::Writers;
use crate::model::specs as kinds;
use crate::model::{Kind, Metadata};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn ok(status: &str, schema: Value) -> Value {
    json!({
        status: {"description": "success", "content": {"application/json": {"schema": schema}}},
        "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}},
    })
}

fn op(id: &str, summary: &str, params: Vec<Value>, body: Option<Value>, responses: Value) -> Value {
    let mut o = json!({"operationId": id, "summary": summary, "responses": responses});
    if !params.is_empty() {
        o["parameters"] = Value::Array(params);
    }
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    o
}

fn path_param(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

fn build() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut schemas = Map::new();
    let metadata = g.subschema_for::<Metadata>();
    let audit = g.subschema_for::<AuditEvent>();
    let mut paths = Map::new();
    let mut any_resource = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::AuditEvent {
            continue;
        }
        let spec = match kind {
            Kind::Region => g.subschema_for::<kinds::RegionSpec>(),
            Kind::Zone => g.subschema_for::<kinds::ZoneSpec>(),
            Kind::Unit => g.subschema_for::<kinds::UnitSpec>(),
            Kind::ShardMap => g.subschema_for::<kinds::ShardMapSpec>(),
            Kind::Cluster => g.subschema_for::<kinds::ClusterSpec>(),
            Kind::Node => g.subschema_for::<kinds::NodeSpec>(),
            Kind::App => g.subschema_for::<kinds::AppSpec>(),
            Kind::Instance => g.subschema_for::<kinds::InstanceSpec>(),
            Kind::Artifact => g.subschema_for::<kinds::ArtifactSpec>(),
            Kind::Release => g.subschema_for::<kinds::ReleaseSpec>(),
            Kind::TrafficRule => g.subschema_for::<kinds::TrafficRuleSpec>(),
            Kind::DataSource => g.subschema_for::<kinds::DataSourceSpec>(),
            Kind::Certificate => g.subschema_for::<crate::model::certificate::CertificateSpec>(),
            Kind::User => g.subschema_for::<kinds::UserSpec>(),
            Kind::Event | Kind::AuditEvent => schemars::json_schema!({"type": "object"}),
        };
        let name = kind.singular();
        schemas.insert(
            name.to_string(),
            json!({
                "type": "object",
                "required": ["apiVersion", "kind", "metadata"],
                "properties": {
                    "apiVersion": {"type": "string", "enum": [crate::model::API_VERSION]},
                    "kind": {"type": "string", "enum": [name]},
                    "metadata": metadata.clone(),
                    "spec": spec,
                    "status": {"type": "object", "description": "written by tessera; ignored on writes"},
                },
            }),
        );
        schemas.insert(
            format!("{name}List"),
            json!({"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "items": {"type": "array", "items": r(name)},
                "revision": {"type": "integer", "format": "int64", "minimum": 0},
            }}),
        );
        let plural = kind.plural();
        let name_param = path_param("name", json!({"type": "string", "pattern": NAME_PATTERN}));
        let mut list_ops = Map::new();
        list_ops.insert(
            "get".into(),
            op(
                &format!("list_{plural}"),
                &format!("List {plural}"),
                vec![
                    query("labelSelector", json!({"type": "string"}), "a=b,c!=d,e,!f"),
                    query(
                        "consistency",
                        json!({"type": "string", "enum": ["linearizable", "stale"]}),
                        "read mode",
                    ),
                ],
                None,
                ok("200", r(&format!("{name}List"))),
            ),
        );
        let mut one_ops = Map::new();
        one_ops.insert(
            "get".into(),
            op(
                &format!("get_{plural}"),
                &format!("Show one of {plural}"),
                vec![name_param.clone()],
                None,
                ok("200", r(name)),
            ),
        );
        match kind.writers() {
            Writers::System if kind == Kind::User => {
                list_ops.insert(
                    "post".into(),
                    op(
                        "create_user",
                        "Create a user and its first token (admin)",
                        vec![],
                        Some(json!({"type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                            "name": {"type": "string", "pattern": NAME_PATTERN},
                            "role": {"type": "string", "enum": kinds::ROLES},
                        }})),
                        ok("201", r("NewToken")),
                    ),
                );
                one_ops.insert(
                    "delete".into(),
                    op(
                        "delete_user",
                        "Delete a user and its tokens (admin)",
                        vec![name_param.clone()],
                        None,
                        ok("200", json!({"type": "object"})),
                    ),
                );
                paths.insert(
                    "/api/v1/users/{name}/tokens".into(),
                    json!({"post": op("create_user_token", "Another token for a user (admin)", vec![name_param.clone()], None, ok("201", r("NewToken")))}),
                );
            }
            Writers::System => {}
            _ => {
                any_resource.push(r(name));
                one_ops.insert(
                    "put".into(),
                    op(
                        &format!("put_{plural}"),
                        &format!("Create (201) or replace (200) one of {plural}"),
                        vec![name_param.clone()],
                        Some(r(name)),
                        {
                            let mut resp = ok("200", r(name));
                            resp["201"] = resp["200"].clone();
                            resp
                        },
                    ),
                );
                one_ops.insert(
                    "delete".into(),
                    op(
                        &format!("delete_{plural}"),
                        &format!("Delete one of {plural}"),
                        vec![
                            name_param.clone(),
                            query(
                                "revision",
                                json!({"type": "integer", "format": "int64", "minimum": 0}),
                                "only if still at this revision",
                            ),
                        ],
                        None,
                        ok("200", json!({"type": "object"})),
                    ),
                );
            }
        }
        paths.insert(
            format!("/api/v1/{plural}/{{name}}/status"),
            json!({"put": op(
                &format!("put_{plural}_status"),
                &format!("Replace the status of one of {plural} (tessera's components; admin)"),
                vec![name_param.clone()],
                Some(json!({"type": "object", "required": ["status"], "additionalProperties": false, "properties": {
                    "status": {"type": "object"},
                    "revision": {"type": "integer", "format": "int64", "minimum": 0},
                }})),
                ok("200", r(name)),
            )}),
        );
        if kind == Kind::Node {
            paths.insert(
                "/api/v1/nodes/{name}/certificate".to_string(),
                json!({"post": op(
                    "issue_agent_certificate",
                    "Sign the certificate of this node's agent listener (that node's agent only; audited): names `agent.<name>` and `ips`, server authentication only",
                    vec![name_param.clone()],
                    Some(json!({"type": "object", "required": ["csr", "ips"], "additionalProperties": false, "properties": {
                        "csr": {"type": "string", "description": "PEM certificate signing request"},
                        "ips": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "string"}},
                    }})),
                    ok("201", json!({"type": "object", "required": ["cert", "ca"], "properties": {"cert": {"type": "string"}, "ca": {"type": "string"}}})),
                )}),
            );
        }
        if kind == Kind::DataSource {
            paths.insert(
                "/api/v1/datasources/{name}/failover".to_string(),
                json!({"post": op(
                    "failover_datasource",
                    "Make a replica of a shard its primary in place of `from` (DB proxies, admins, operators; audited; 409 when `from` is no longer the primary)",
                    vec![name_param.clone()],
                    Some(json!({"type": "object", "required": ["unit", "from", "to"], "additionalProperties": false, "properties": {
                        "unit": {"type": "string"},
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                    }})),
                    ok("200", r(name)),
                )}),
            );
        }
        paths.insert(format!("/api/v1/{plural}"), Value::Object(list_ops));
        paths.insert(format!("/api/v1/{plural}/{{name}}"), Value::Object(one_ops));
    }
    let map_name = path_param("name", json!({"type": "string", "pattern": NAME_PATTERN}));
    let int = json!({"type": "integer", "format": "int64", "minimum": 0});
    let extra = json!({
        "/api/v1/apply": {"post": op("apply", "Create or update many resources, all or nothing", vec![query("dryRun", json!({"type": "boolean"}), "validate and answer what would change, committing nothing")], Some(json!({"type": "array", "maxItems": 50, "items": {"oneOf": any_resource}})), ok("200", json!({"type": "object"})))},
        "/api/v1/watch": {"get": {"operationId": "watch", "summary": "Server-Sent Events of resource changes", "parameters": [
            query("kinds", json!({"type": "string"}), "comma-separated kinds"), query("since", int.clone(), "last revision seen"),
            query("progress", json!({"type": "boolean"}), "also PROGRESS events: every change up to their revision has been sent")],
            "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}}}}},
        "/api/v1/shardmaps/{name}/history": {"get": op("shardmap_history", "Kept versions of a shard map", vec![map_name.clone()], None, ok("200", json!({"type": "object"})))},
        "/api/v1/shardmaps/{name}/revert": {"post": op("shardmap_revert", "Make a shard map what it was at a revision", vec![map_name], Some(json!({"type": "object", "required": ["revision"], "additionalProperties": false, "properties": {"revision": int.clone()}})), ok("200", r("ShardMap")))},
        "/api/v1/auditevents": {"get": op("list_auditevents", "The audit trail, in order", vec![
            query("after", int.clone(), "events after this sequence number"),
            query("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000}), "page size"),
            query("kind", json!({"type": "string"}), "only this kind"),
            query("name", json!({"type": "string"}), "only this object"),
            query("user", json!({"type": "string"}), "only this user"),
            query("since", json!({"type": "string", "format": "date-time"}), "RFC 3339"),
            query("until", json!({"type": "string", "format": "date-time"}), "RFC 3339"),
        ], None, ok("200", json!({"type": "object", "properties": {"items": {"type": "array", "items": audit}, "next": int.clone(), "more": {"type": "boolean"}}})))},
        "/api/v1/blobs/{sha256}": {
            "put": {"operationId": "put_blob", "summary": "Store an artifact's content (checked against its SHA-256) on every control node", "parameters": [path_param("sha256", json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}))],
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}}, "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}}}},
            "get": {"operationId": "get_blob", "summary": "An artifact's content", "parameters": [path_param("sha256", json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}))],
                "responses": {"200": {"description": "the bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}}}}},
        "/api/v1/logs": {"get": {"operationId": "logs", "summary": "An app's collected log lines from every node it runs on (NDJSON: records, and {node, error} for a node that could not be read)", "parameters": [
            {"name": "app", "in": "query", "required": true, "schema": {"type": "string", "pattern": NAME_PATTERN}},
            query("unit", json!({"type": "string", "pattern": NAME_PATTERN}), "only this unit's instances"),
            query("instance", json!({"type": "string", "pattern": NAME_PATTERN}), "only this instance"),
            query("since", json!({"type": "string"}), "RFC 3339 time or ms since the epoch"),
            query("grep", json!({"type": "string", "maxLength": 1000}), "a regular expression the line must match"),
            query("limit", json!({"type": "integer", "minimum": 1, "maximum": 10000}), "the most recent lines, at most (default 500)"),
            query("follow", json!({"type": "boolean"}), "keep the answer open for new lines")],
            "responses": {"200": {"description": "NDJSON lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}}}}},
        "/api/v1/auditevents/verify": {"get": op("verify_auditevents", "Check the whole audit chain: sequence, links and hashes, up to the head", vec![], None, ok("200", json!({"type": "object", "required": ["ok", "checked"], "properties": {"ok": {"type": "boolean"}, "checked": int.clone(), "seq": int.clone(), "message": {"type": "string"}, "head": {"type": "object"}}})))},
        "/api/v1/auditevents/{seq}": {"get": op("get_auditevent", "One audit event", vec![path_param("seq", int.clone())], None, ok("200", r("AuditEvent")))},
        "/api/v1/kv/{key}": {
            "get": op("kv_get", "Read a key (admin)", vec![path_param("key", json!({"type": "string"})), query("prefix", json!({"type": "boolean"}), "range"), query("limit", json!({"type": "integer"}), "range size"), query("consistency", json!({"type": "string"}), "linearizable or stale")], None, ok("200", json!({"type": "object"}))),
            "delete": op("kv_delete", "Delete a key or range (admin)", vec![path_param("key", json!({"type": "string"})), query("prefix", json!({"type": "boolean"}), "range")], None, ok("200", json!({"type": "object"}))),
        },
        "/api/v1/kv/txn": {"post": op("kv_txn", "Compare, then put/delete atomically (admin)", vec![], Some(json!({"type": "object", "properties": {
            "compare": {"type": "array", "items": {"type": "object"}}, "success": {"type": "array", "items": {"type": "object"}}, "failure": {"type": "array", "items": {"type": "object"}}}})), ok("200", json!({"type": "object"})))},
        "/api/v1/kv-compact": {
            "get": op("kv_compaction", "Compaction floor and current revision", vec![], None, ok("200", json!({"type": "object"}))),
            "post": op("kv_compact", "Drop history before a revision (admin)", vec![], Some(json!({"type": "object", "required": ["revision"], "properties": {"revision": int.clone()}})), ok("200", json!({"type": "object"}))),
        },
        "/api/v1/leases": {
            "get": op("leases", "Leases", vec![], None, ok("200", json!({"type": "object"}))),
            "post": op("lease_grant", "Grant a lease", vec![], Some(json!({"type": "object", "required": ["ttl_secs"], "properties": {"ttl_secs": int.clone()}})), ok("201", json!({"type": "object"}))),
        },
        "/api/v1/leases/{id}": {
            "get": op("lease", "One lease", vec![path_param("id", int.clone())], None, ok("200", json!({"type": "object"}))),
            "delete": op("lease_revoke", "Revoke a lease", vec![path_param("id", int.clone())], None, ok("200", json!({"type": "object"}))),
        },
        "/api/v1/leases/{id}/keepalive": {"post": op("lease_keepalive", "Restart a lease's TTL", vec![path_param("id", int.clone())], None, ok("200", json!({"type": "object"})))},
        "/api/v1/members": {"get": op("members", "Raft members, leader, term", vec![], None, ok("200", json!({"type": "object"})))},
        "/api/v1/gateways": {"get": op("gateways", "Registered gateways, their admin URLs and liveness", vec![], None, ok("200", json!({"type": "object"})))},
        "/api/v1/gateways/{name}": {"put": op("gateway_register", "A gateway's registration (its own credential or an admin)", vec![path_param("name", json!({"type": "string"}))], Some(json!({"type": "object", "required": ["admin"], "additionalProperties": false, "properties": {"admin": {"type": "string"}, "zone": {"type": "string"}, "revision": int.clone()}})), ok("200", json!({"type": "object"})))},
        "/api/v1/tokens": {"post": op("join_token", "A single-use join token (admin)", vec![], Some(json!({"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}, "ttl_secs": int.clone()}})), ok("200", json!({"type": "object"})))},
        "/api/v1/openapi.json": {"get": op("openapi", "This document", vec![], None, ok("200", json!({"type": "object"})))},
    });
    if let Value::Object(m) = extra {
        paths.extend(m);
    }
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}),
    );
    schemas.insert(
        "NewToken".into(),
        json!({"type": "object", "properties": {
        "name": {"type": "string"}, "role": {"type": "string"}, "token": {"type": "string"}}}),
    );
    schemas.extend(g.take_definitions(true));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tessera control API",
            "version": crate::telemetry::VERSION,
            "description": "Resources, users, audit trail and the raw replicated store of a tessera control plane. Every request needs `Authorization: Bearer TOKEN`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// The document, built once per process.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

pub async fn serve(State(_): State<ApiState>) -> Response {
    Json(document()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let doc = super::build();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
        assert!(schemas["UnitSpec"]["properties"]["standbyZone"].is_object());
        assert_eq!(schemas["UnitSpec"]["additionalProperties"], false);
    }
}
