//! Typed calls for the resource API, users and the audit trail.

use super::{Client, ClientError};
use crate::model::audit::AuditEvent;
use crate::model::{Kind, Resource};
use http::Method;
use serde::Deserialize;

/// The answer to an apply: what happened to each object.
#[derive(Clone, Debug, Deserialize)]
pub struct ApplyResult {
    pub revision: u64,
    pub changed: usize,
    pub results: Vec<ApplyOutcome>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ApplyOutcome {
    pub kind: String,
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct List {
    pub items: Vec<Resource>,
    pub revision: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    /// The sequence number to continue after.
    pub next: u64,
    pub more: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewToken {
    pub name: String,
    pub role: String,
    pub token: String,
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Client {
    /// Creates or updates `docs` in one transaction (all or nothing).
    pub async fn apply(&self, docs: &[Resource]) -> Result<ApplyResult, ClientError> {
        self.call(Method::POST, "/api/v1/apply", Some(&docs)).await
    }

    pub async fn list(&self, kind: Kind, selector: Option<&str>) -> Result<List, ClientError> {
        let mut path = format!("/api/v1/{}", kind.plural());
        if let Some(s) = selector.filter(|s| !s.is_empty()) {
            path.push_str(&format!("?labelSelector={}", enc(s)));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Resource, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/{}/{}", kind.plural(), enc(name)),
            None::<&()>,
        )
        .await
    }

    /// Replaces one object (only if still at `obj.metadata.revision`, when set).
    pub async fn put(&self, kind: Kind, obj: &Resource) -> Result<Resource, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/{}/{}", kind.plural(), enc(&obj.metadata.name)),
            Some(obj),
        )
        .await
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/{}/{}", kind.plural(), enc(name)),
            None::<&()>,
        )
        .await
    }

    /// Up to `limit` audit events after sequence number `after`, filtered.
    pub async fn audit_page(
        &self,
        after: u64,
        limit: usize,
        filters: &[(&str, &str)],
    ) -> Result<AuditPage, ClientError> {
        let mut path = format!("/api/v1/auditevents?after={after}&limit={limit}");
        for (k, v) in filters {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn create_user(&self, name: &str, role: &str) -> Result<NewToken, ClientError> {
        let body = serde_json::json!({"name": name, "role": role});
        self.call(Method::POST, "/api/v1/users", Some(&body)).await
    }

    pub async fn new_user_token(&self, name: &str) -> Result<NewToken, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/users/{}/tokens", enc(name)),
            None::<&()>,
        )
        .await
    }
}
