//! Bearer tokens. A token is stored only as its SHA-256, under `/tessera/tokens/<hex>` in
//! the replicated store, with the user and role it stands for. The first control node
//! creates the `admin` token and writes it to `<data_dir>/admin.token` (0600).

use super::error::ApiError;
use super::ApiState;
use crate::control::store::types::Command;
use crate::control::store::RaftNode;
use crate::util::{hex, random_bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const TOKEN_PREFIX: &str = "/tessera/tokens/";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    /// `admin`, `operator`, `approver` or `viewer`.
    pub role: String,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == "admin" {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "user `{}` (role {}) may not do this: admin only",
                    self.user, self.role
                ),
            ))
        }
    }
}

pub fn token_key(token: &str) -> String {
    format!("{TOKEN_PREFIX}{}", hex(&Sha256::digest(token.as_bytes())))
}

/// Rejects requests without a valid bearer token (401) and records the caller.
pub async fn require_token(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer TOKEN`",
            )
        })?;
    // Token records change rarely; a local read is enough to authenticate.
    let (record, _) = state
        .node
        .store()
        .get(&token_key(token))
        .map_err(|e| ApiError::internal("token lookup", e))?;
    let caller: Caller = record
        .and_then(|kv| serde_json::from_str(&kv.value).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked token",
            )
        })?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Makes sure `<data_dir>/admin.token` exists and is registered. Run on the leader of a
/// freshly bootstrapped cluster (and harmlessly on restarts).
pub async fn ensure_admin_token(node: &RaftNode, data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join("admin.token");
    if std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty()) {
        // Registered when the file was written (the store write comes first). If the
        // store no longer knows it, an admin revoked it: a restart must not undo that.
        return Ok(());
    }
    let token = format!(
        "tsr_{}",
        hex(&random_bytes::<32>().map_err(|e| format!("reading /dev/urandom: {e}"))?)
    );
    let mut ops = vec![crate::control::store::types::Op::Put {
        key: token_key(&token),
        value: serde_json::to_string(&Caller {
            user: "admin".into(),
            role: "admin".into(),
        })
        .map_err(|e| e.to_string())?,
        lease: 0,
    }];
    // The admin user as a resource, so `GET /api/v1/users` lists it (a restored
    // cluster already has it).
    let user_key = super::resources::object_key(crate::model::Kind::User, "admin");
    if node.store().get(&user_key)?.0.is_none() {
        let mut user = crate::model::Resource::new(
            crate::model::Kind::User,
            "admin",
            serde_json::json!({"role": "admin"}),
        );
        user.metadata.created_at = Some(crate::model::now_rfc3339());
        ops.push(crate::control::store::types::Op::Put {
            key: user_key,
            value: serde_json::to_string(&user).map_err(|e| e.to_string())?,
            lease: 0,
        });
    }
    node.write(Command::Txn {
        compare: Vec::new(),
        success: ops,
        failure: Vec::new(),
    })
    .await
    .map_err(|e| format!("registering the admin token: {e}"))?;
    // An empty file left by an interrupted first start.
    let _ = std::fs::remove_file(&path);
    write_secret(&path, &token)?;
    tracing::info!(path = %path.display(), "Wrote the admin token");
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{secret}")
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
