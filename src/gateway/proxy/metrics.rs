//! The gateway's Prometheus series, registered once, and the end of every request:
//! counted by rule, unit and status, timed by rule, and written to the access log.

use super::Gateway;
use crate::gateway::table::Route;
use http::Method;
use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::net::SocketAddr;
use std::time::Instant;

pub struct GatewayMetrics {
    pub(super) requests: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) upstream_failures: IntCounterVec,
    pub(super) mirrors: IntCounterVec,
    pub table_revision: IntGauge,
    pub table_swaps: IntGauge,
    pub endpoints: IntGaugeVec,
    pub ejections: IntCounter,
    pub tls_failures: IntCounter,
    /// Open protocol-switch tunnels (WebSocket).
    pub tunnels: IntGauge,
    /// Idle pooled connections to endpoints (sampled every 5 s).
    pub upstream_idle: IntGauge,
}

impl GatewayMetrics {
    pub fn new(r: &Registry) -> GatewayMetrics {
        let gauge = |name: &str, help: &str| registered(r, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| registered(r, IntCounter::new(name, help));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            registered(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let latency = HistogramOpts::new(
            "tessera_gateway_request_seconds",
            "Request latency by rule, as seen by the gateway.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        GatewayMetrics {
            requests: counters(
                "tessera_gateway_requests_total",
                "Requests by rule, unit and status.",
                &["rule", "unit", "code"],
            ),
            duration: registered(r, HistogramVec::new(latency, &["rule"])),
            upstream_failures: counters(
                "tessera_gateway_upstream_failures_total",
                "Failed upstream attempts by kind (connect, timeout, reset, 5xx).",
                &["kind"],
            ),
            mirrors: counters(
                "tessera_gateway_mirrored_total",
                "Mirror copies by outcome (sent, failed, dropped).",
                &["outcome"],
            ),
            table_revision: gauge(
                "tessera_gateway_table_revision",
                "Store revision of the active route table.",
            ),
            table_swaps: gauge(
                "tessera_gateway_table_swaps",
                "Route tables applied since start.",
            ),
            endpoints: registered(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tessera_gateway_endpoints",
                        "Endpoints in the active table by state.",
                    ),
                    &["state"],
                ),
            ),
            tls_failures: counter(
                "tessera_gateway_tls_handshake_failures_total",
                "Client TLS handshakes that failed or timed out.",
            ),
            tunnels: gauge(
                "tessera_gateway_tunnels",
                "Open protocol-switch (WebSocket) tunnels.",
            ),
            upstream_idle: gauge(
                "tessera_gateway_upstream_idle_connections",
                "Idle pooled connections to endpoints.",
            ),
            ejections: counter(
                "tessera_gateway_ejections_total",
                "Endpoints ejected after consecutive failures.",
            ),
        }
    }
}

/// A metric of constant, valid name and labels (so creating it cannot fail), registered.
fn registered<C: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<C>) -> C {
    let c = made.expect("static metric"); // ok: constant, valid name and labels
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Gateway {
    /// Counts and logs a request. `route`, when it was routed, carries the metric series
    /// resolved once per table (no label hashing per request).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        route: Option<&Route<'_>>,
        method: &Method,
        host: &str,
        path: &str,
        rule: &str,
        unit: &str,
        zone: &str,
        upstream: Option<&SocketAddr>,
        status: u16,
        reason: &str,
        start: Instant,
        attempts: usize,
        client: SocketAddr,
    ) {
        let elapsed = start.elapsed();
        let code = itoa_status(status);
        let m = &self.metrics;
        match route.and_then(|r| r.ok_requests) {
            Some(ok) if status == 200 => ok
                .get_or_init(|| m.requests.with_label_values(&[rule, unit, code]))
                .inc(),
            _ => m.requests.with_label_values(&[rule, unit, code]).inc(),
        }
        match route {
            Some(r) => r
                .rule
                .duration
                .get_or_init(|| m.duration.with_label_values(&[rule]))
                .observe(elapsed.as_secs_f64()),
            None => m
                .duration
                .with_label_values(&[rule])
                .observe(elapsed.as_secs_f64()),
        }
        if self.access_log {
            tracing::info!(
                target: "tessera::access",
                method = %method,
                host,
                path,
                rule,
                unit,
                zone,
                upstream = %upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
                status,
                reason,
                attempts,
                duration_us = elapsed.as_micros() as u64,
                client = %client.ip(),
                "request"
            );
        }
    }
}

fn itoa_status(s: u16) -> &'static str {
    match s {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
