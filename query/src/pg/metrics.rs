//! What the endpoint counts, for the Prometheus registry of `hawking serve`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub(crate) struct PgMetrics {
    /// Connections accepted (before login).
    pub connections: IntCounter,
    /// Connections open now.
    pub open_connections: IntGauge,
    /// Connections turned away at `max_connections`.
    pub connections_rejected: IntCounter,
    /// Failed logins: unknown user, wrong password, TLS required.
    pub auth_failures: IntCounter,
    /// Statements run, by outcome: ok, error, refused (read-only), timeout, memory.
    pub statements: IntCounterVec,
    /// Statements producing rows now.
    pub running: IntGauge,
}

impl PgMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<PgMetrics> {
        let connections = IntCounter::new(
            "hawking_pg_connections_total",
            "PostgreSQL-wire connections accepted",
        )?;
        let open_connections = IntGauge::new(
            "hawking_pg_connections_open",
            "PostgreSQL-wire connections open",
        )?;
        let connections_rejected = IntCounter::new(
            "hawking_pg_connections_rejected_total",
            "PostgreSQL-wire connections refused at max_connections",
        )?;
        let auth_failures = IntCounter::new(
            "hawking_pg_auth_failures_total",
            "PostgreSQL-wire logins refused (unknown user, wrong password, TLS required)",
        )?;
        let statements = IntCounterVec::new(
            Opts::new(
                "hawking_pg_statements_total",
                "PostgreSQL-wire statements by outcome (ok, error, refused, timeout, memory)",
            ),
            &["outcome"],
        )?;
        let running = IntGauge::new(
            "hawking_pg_statements_running",
            "PostgreSQL-wire statements running or streaming rows",
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(statements.clone()))?;
        registry.register(Box::new(running.clone()))?;
        Ok(PgMetrics {
            connections,
            open_connections,
            connections_rejected,
            auth_failures,
            statements,
            running,
        })
    }

    pub fn statement(&self, outcome: &str) {
        self.statements.with_label_values(&[outcome]).inc();
    }
}
