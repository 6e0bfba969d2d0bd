//! The gateway role: the L7 entrance. Today it binds its entrance and admin listeners and
//! answers every entrance request with 503 and `x-tessera-reason: no-route-table`, which is
//! the truth until routes arrive from the control plane (unit routing builds on this).
//! Its readiness does not depend on the control plane: the data plane never does.

use crate::admin;
use crate::config::Role;
use crate::net::probe;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Gateway);
    let entrance = bind_tcp("gateway.listen", cfg.gateway.listen.0).await?;
    let admin_l = bind_tcp("gateway.admin_listen", cfg.gateway.admin_listen.0).await?;
    let listeners = vec![
        ("entrance", local_addr(&entrance, cfg.gateway.listen.0)),
        ("admin", local_addr(&admin_l, cfg.gateway.admin_listen.0)),
    ];
    let urls = ctx.control_urls(&cfg.gateway.control);
    let gauge = ctx.metrics.control_reachable(Role::Gateway);
    let admin_router = admin::router(health.clone(), ctx.metrics.clone());
    Ok(Bound::new(Role::Gateway, listeners, move |shutdown| {
        Box::pin(async move {
            let probe = tokio::spawn(probe::watch_control(
                Role::Gateway,
                urls,
                Duration::from_secs(5),
                gauge,
                None,
                shutdown.clone(),
            ));
            health.set_ready();
            let entrance_router = Router::new().fallback(no_route);
            let (a, b) = tokio::join!(
                admin::serve(entrance, entrance_router, shutdown.clone()),
                admin::serve(admin_l, admin_router, shutdown)
            );
            let _ = probe.await;
            health.set_not_ready("stopped");
            a.and(b).map_err(|source| RoleError::Serve {
                role: Role::Gateway,
                what: "listener",
                source,
            })
        })
    }))
}

async fn no_route() -> Response {
    let body = json!({"code": "no_route", "message": "no traffic rule matches: this gateway has no route table yet"});
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("x-tessera-reason", "no-route-table")],
        Json(body),
    )
        .into_response()
}
