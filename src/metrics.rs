//! Every metric the proxy exports, defined in one place with one registry.
//!
//! Counters touched per command are resolved once here (no label lookup on the hot path)
//! and bumped in batches by the client reader.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub clients_rejected: IntCounter,
    pub commands: IntCounter,
    pub protocol_errors: IntCounter,
    pub refused: IntCounter,
    pub auth_failures: IntCounter,
    pub dedicated_opened: IntCounter,
    pub backend_up: IntGaugeVec,
    pub command_table_refresh: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("tandem".into()), None).expect("static prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let client_connections =
            IntGauge::new("client_connections", "Client connections open now").expect("static");
        registry
            .register(Box::new(client_connections.clone()))
            .expect("metric registered once");
        let backend_up = IntGaugeVec::new(
            Opts::new("backend_up", "1 if the backend's pooled connections are up"),
            &["backend"],
        )
        .expect("static");
        registry
            .register(Box::new(backend_up.clone()))
            .expect("metric registered once");
        let command_table_refresh = IntCounterVec::new(
            Opts::new(
                "command_table_refresh_total",
                "Command table refreshes from a backend's COMMAND reply",
            ),
            &["backend", "result"],
        )
        .expect("static");
        registry
            .register(Box::new(command_table_refresh.clone()))
            .expect("metric registered once");
        Metrics {
            client_connections,
            client_connections_total: counter(
                "client_connections_total",
                "Client connections accepted",
            ),
            clients_rejected: counter(
                "clients_rejected_total",
                "Client connections refused at limits.max_clients",
            ),
            commands: counter("commands_total", "Client commands received"),
            protocol_errors: counter(
                "protocol_errors_total",
                "Clients closed for malformed or oversize requests",
            ),
            refused: counter(
                "commands_refused_total",
                "Commands refused by the proxy (dangerous, not allowed)",
            ),
            auth_failures: counter("auth_failures_total", "Failed AUTH / HELLO AUTH attempts"),
            dedicated_opened: counter(
                "dedicated_connections_total",
                "Dedicated backend connections opened (transactions, blocking, Pub/Sub, other db)",
            ),
            backend_up,
            command_table_refresh,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
