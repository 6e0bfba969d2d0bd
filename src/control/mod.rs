//! The control role: the metadata store (`store`, the only importer of rocksdb) and the
//! REST API (`http`). Raft replication, the resource model and the console build on these.

mod http;
pub mod store;

use crate::admin;
use crate::config::Role;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};

/// Opens the store and binds the API listener (and the optional admin-only listener).
pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Control);
    let store_dir = cfg.data_dir.join("control").join("store");
    let store = {
        let dir = store_dir.clone();
        let node = cfg.node_name.clone();
        tokio::task::spawn_blocking(move || store::Store::open(&dir, &node))
            .await
            .map_err(|e| RoleError::Failed {
                role: Role::Control,
                message: format!("store open task: {e}"),
            })?
            .map_err(|e| RoleError::Failed {
                role: Role::Control,
                message: e.to_string(),
            })?
    };
    tracing::info!(path = %store_dir.display(), "Store opened");

    let api = bind_tcp("control.listen", cfg.control.listen.0).await?;
    let api_addr = local_addr(&api, cfg.control.listen.0);
    let mut listeners = vec![("api", api_addr)];
    let extra_admin = match cfg
        .control
        .admin_listen
        .filter(|a| *a != cfg.control.listen)
    {
        Some(a) => {
            let l = bind_tcp("control.admin_listen", a.0).await?;
            listeners.push(("admin", local_addr(&l, a.0)));
            Some(l)
        }
        None => None,
    };

    let router =
        http::router(store.clone()).merge(admin::router(health.clone(), ctx.metrics.clone()));
    let admin_router = admin::router(health.clone(), ctx.metrics.clone());
    Ok(Bound::new(Role::Control, listeners, move |shutdown| {
        Box::pin(async move {
            health.set_ready();
            let serve_api = admin::serve(api, router, shutdown.clone());
            let result = match extra_admin {
                Some(l) => {
                    let (a, b) = tokio::join!(serve_api, admin::serve(l, admin_router, shutdown));
                    a.and(b)
                }
                None => serve_api.await,
            };
            health.set_not_ready("stopped");
            // The store closes (and flushes) when its last handle drops, here.
            drop(store);
            result.map_err(|source| RoleError::Serve {
                role: Role::Control,
                what: "API listener",
                source,
            })
        })
    }))
}
