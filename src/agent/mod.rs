//! The agent role: the control plane's hand on each machine. Today it serves its admin
//! endpoints and keeps a probe of the control plane; it is ready once the control plane
//! answers. Enrolment, VM-mode instances and log collection build on this.

use crate::admin;
use crate::config::Role;
use crate::net::probe;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use std::time::Duration;

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Agent);
    health.set_not_ready("waiting for the control plane");
    let main = bind_tcp("agent.listen", cfg.agent.listen.0).await?;
    let mut listeners = vec![("api", local_addr(&main, cfg.agent.listen.0))];
    let extra = match cfg.agent.admin_listen.filter(|a| *a != cfg.agent.listen) {
        Some(a) => {
            let l = bind_tcp("agent.admin_listen", a.0).await?;
            listeners.push(("admin", local_addr(&l, a.0)));
            Some(l)
        }
        None => None,
    };
    let urls = ctx.control_urls(&cfg.agent.control);
    let gauge = ctx.metrics.control_reachable(Role::Agent);
    let router = admin::router(health.clone(), ctx.metrics.clone());
    Ok(Bound::new(Role::Agent, listeners, move |shutdown| {
        Box::pin(async move {
            let probe = tokio::spawn(probe::watch_control(
                Role::Agent,
                urls,
                Duration::from_secs(2),
                gauge,
                Some(health.clone()),
                shutdown.clone(),
            ));
            let serve_main = admin::serve(main, router.clone(), shutdown.clone());
            let result = match extra {
                Some(l) => {
                    let (a, b) = tokio::join!(serve_main, admin::serve(l, router, shutdown));
                    a.and(b)
                }
                None => serve_main.await,
            };
            let _ = probe.await;
            health.set_not_ready("stopped");
            result.map_err(|source| RoleError::Serve {
                role: Role::Agent,
                what: "listener",
                source,
            })
        })
    }))
}
