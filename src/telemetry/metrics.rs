//! The process-wide Prometheus registry and per-role readiness.

use crate::config::Role;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared registry: build info, process metrics, role readiness, admin request counts.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    ready: IntGaugeVec,
    pub admin_requests: IntCounterVec,
    control_reachable: IntGaugeVec,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let registry = Registry::new_custom(None, None).unwrap_or_default();
        let info = IntGaugeVec::new(
            Opts::new(
                "tessera_build_info",
                "Build information; the value is always 1.",
            ),
            &["version", "commit", "build_date", "node"],
        )
        .expect("static metric definition"); // ok: constant, valid metric name and labels
        info.with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            super::GIT_COMMIT,
            super::BUILD_DATE,
            node,
        ])
        .set(1);
        let ready = IntGaugeVec::new(
            Opts::new("tessera_role_ready", "1 when the role is ready to serve."),
            &["role"],
        )
        .expect("static metric definition"); // ok: constant
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "tessera_admin_requests_total",
                "Requests to admin endpoints.",
            ),
            &["role", "path", "code"],
        )
        .expect("static metric definition"); // ok: constant
        let control_reachable = IntGaugeVec::new(
            Opts::new(
                "tessera_control_reachable",
                "1 when the role's last probe of the control plane succeeded.",
            ),
            &["role"],
        )
        .expect("static metric definition"); // ok: constant
        let _ = registry.register(Box::new(control_reachable.clone()));
        let _ = registry.register(Box::new(info));
        let _ = registry.register(Box::new(ready.clone()));
        let _ = registry.register(Box::new(admin_requests.clone()));
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            registry,
            ready,
            admin_requests,
            control_reachable,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything registered, in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "Encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The reachability gauge of `role`'s control-plane link.
    pub fn control_reachable(&self, role: Role) -> IntGauge {
        self.control_reachable.with_label_values(&[role.as_str()])
    }

    /// A readiness handle for `role`, not ready until told otherwise.
    pub fn health(&self, role: Role) -> Health {
        let gauge = self.ready.with_label_values(&[role.as_str()]);
        gauge.set(0);
        Health {
            role,
            inner: Arc::new(HealthInner {
                ready: AtomicBool::new(false),
                reason: Mutex::new("starting".into()),
                gauge,
            }),
        }
    }
}

/// Whether a role is ready to serve, and if not, why.
#[derive(Clone)]
pub struct Health {
    role: Role,
    inner: Arc<HealthInner>,
}

struct HealthInner {
    ready: AtomicBool,
    reason: Mutex<String>,
    gauge: IntGauge,
}

impl Health {
    pub fn role(&self) -> Role {
        self.role
    }

    pub fn set_ready(&self) {
        self.set(true, "ready");
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(false, &reason.into());
    }

    fn set(&self, ready: bool, reason: &str) {
        let was = self.inner.ready.swap(ready, Ordering::SeqCst);
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = reason.to_string();
        }
        self.inner.gauge.set(i64::from(ready));
        if was != ready {
            tracing::info!(role = %self.role, ready, reason, "Readiness changed");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> String {
        self.inner
            .reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}
