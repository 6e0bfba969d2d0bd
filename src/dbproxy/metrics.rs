//! The DB proxy's Prometheus metrics (`tessera_dbproxy_*`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct DbMetrics {
    /// Statements by logical database, shard (unit) and class.
    pub statements: IntCounterVec,
    /// Statement latency by class, as the proxy sees it.
    pub latency: HistogramVec,
    /// ERR packets the proxy sent, by MySQL error code.
    pub errors: IntCounterVec,
    /// Backend failures by shard and role (primary / replica).
    pub backend_errors: IntCounterVec,
    pub logins: IntCounterVec,
    pub clients: IntGauge,
    /// Per backend server: open connections, in use, up (1/0), replication lag.
    pub pool_open: IntGaugeVec,
    pub pool_in_use: IntGaugeVec,
    pub backend_up: IntGaugeVec,
    pub replica_lag_ms: IntGaugeVec,
    pub topology_revision: IntGauge,
    /// Automatic failovers by database, unit and outcome.
    pub failovers: IntCounterVec,
    /// Every-shard writes (XA) by outcome (committed, rolled_back).
    pub xa: IntCounterVec,
    /// Prepared XA transactions left behind and finished by recovery, by action
    /// (committed, rolled_back).
    pub xa_recovered: IntCounterVec,
    /// Prepared XA transactions of other proxies seen at the last recovery pass.
    pub xa_foreign_prepared: IntGauge,
}

impl DbMetrics {
    // Every name and label below is a constant: `expect` cannot fire.
    pub fn new(registry: &Registry) -> DbMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric")
        };
        let server = ["database", "unit", "role", "server"];
        let m = DbMetrics {
            statements: counter(
                "tessera_dbproxy_statements_total",
                "Statements routed, by logical database, shard (unit) and class.",
                &["database", "unit", "class"],
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "tessera_dbproxy_statement_seconds",
                    "Statement latency by class, from the client's command to the end of the answer.",
                )
                .buckets(vec![
                    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0,
                ]),
                &["class"],
            )
            .expect("static metric"),
            errors: counter(
                "tessera_dbproxy_errors_total",
                "ERR packets sent to clients by the proxy itself, by MySQL error code.",
                &["code"],
            ),
            backend_errors: counter(
                "tessera_dbproxy_backend_errors_total",
                "Backend servers that could not be reached or broke, by shard and role.",
                &["unit", "role"],
            ),
            logins: counter(
                "tessera_dbproxy_logins_total",
                "Client logins by outcome (ok, denied).",
                &["outcome"],
            ),
            clients: IntGauge::new("tessera_dbproxy_client_connections", "Open client connections.")
                .expect("static metric"),
            pool_open: gauge(
                "tessera_dbproxy_backend_connections",
                "Open connections to each backend server.",
                &server,
            ),
            pool_in_use: gauge(
                "tessera_dbproxy_backend_connections_in_use",
                "Connections to each backend server held by sessions.",
                &server,
            ),
            backend_up: gauge(
                "tessera_dbproxy_backend_up",
                "1 when the last check or connection to the server succeeded.",
                &server,
            ),
            replica_lag_ms: gauge(
                "tessera_dbproxy_replica_lag_milliseconds",
                "Replication lag of each replica (-1 when it is not replicating).",
                &server,
            ),
            failovers: counter(
                "tessera_dbproxy_failovers_total",
                "Automatic failovers this proxy took part in, by outcome (promoted, promote_failed, lost to another proxy, refused).",
                &["database", "unit", "outcome"],
            ),
            xa: counter(
                "tessera_dbproxy_xa_transactions_total",
                "Writes to every-shard tables run as XA transactions, by outcome (committed, rolled_back).",
                &["outcome"],
            ),
            xa_recovered: counter(
                "tessera_dbproxy_xa_recovered_total",
                "Prepared XA transactions left behind (a shard or the proxy failed mid-commit) that recovery finished, by action.",
                &["action"],
            ),
            xa_foreign_prepared: IntGauge::new(
                "tessera_dbproxy_xa_foreign_prepared",
                "Prepared XA transactions of other proxies seen by the last recovery pass (theirs to finish; nonzero for long means a proxy is gone).",
            )
            .expect("static metric"),
            topology_revision: IntGauge::new(
                "tessera_dbproxy_topology_revision",
                "Control-plane revision of the data sources in use.",
            )
            .expect("static metric"),
        };
        for c in [
            Box::new(m.statements.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.latency.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.backend_errors.clone()),
            Box::new(m.logins.clone()),
            Box::new(m.clients.clone()),
            Box::new(m.pool_open.clone()),
            Box::new(m.pool_in_use.clone()),
            Box::new(m.backend_up.clone()),
            Box::new(m.replica_lag_ms.clone()),
            Box::new(m.topology_revision.clone()),
            Box::new(m.failovers.clone()),
            Box::new(m.xa.clone()),
            Box::new(m.xa_recovered.clone()),
            Box::new(m.xa_foreign_prepared.clone()),
        ] {
            let _ = registry.register(c);
        }
        m
    }
}
