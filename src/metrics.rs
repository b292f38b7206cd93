//! Every metric the proxy exports, defined in one place with one registry.
//!
//! Counters touched per command are resolved once here (no label lookup on the hot path)
//! and bumped in batches by the client reader.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::HistogramVec;

use crate::mirror::Mirrors;
use crate::proto::commands::{builtin_names, OTHER_ID};
use crate::route::Side;

/// Why a backend ran a command: to answer the client, to mirror a write, or to compare a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serving = 0,
    Mirror = 1,
    Compare = 2,
}

const ROLES: [&str; 3] = ["serving", "mirror", "compare"];
const OUTCOMES: [&str; 2] = ["ok", "error"];

/// Per command, backend, role and outcome: plain atomics indexed by the command's table id,
/// so counting costs one relaxed add on the hot path. Exported at scrape time.
struct CommandCounters {
    names: Vec<&'static str>,
    cells: Box<[AtomicU64]>,
    exported: IntCounterVec,
}

impl CommandCounters {
    fn index(&self, cmd: u16, side: Side, role: Role, error: bool) -> usize {
        let cmd = if cmd == OTHER_ID || cmd as usize >= self.names.len() { self.names.len() } else { cmd as usize };
        ((cmd * 2 + side.index()) * 3 + role as usize) * 2 + error as usize
    }
}

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
    /// Redirects (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) followed for a cluster backend.
    pub cluster_redirects: IntCounterVec,
    /// Primaries in a cluster backend's slot map.
    pub cluster_primaries: IntGaugeVec,
    pub command_table_refresh: IntCounterVec,
    /// Commands served, by side (`served[Side::index()]`).
    pub served: [IntCounter; 2],
    pub cross_side: IntCounter,
    pub split: IntCounter,
    pub sync_mirror_late: IntCounter,
    pub flips: IntCounterVec,
    pub flip_wait: Histogram,
    pub pop_fence: Histogram,
    pub pop_fence_late: IntCounter,
    pub cutover_percent: Gauge,
    mirror_writes: IntCounterVec,
    mirror_queue_depth: IntGaugeVec,
    mirror_jobs: IntCounterVec,
    commands_by: CommandCounters,
    latency: [[Histogram; 3]; 2],
    pub config_generation: IntGauge,
    pub reloads: IntCounterVec,
    pub guardrail_rollbacks: IntCounter,
    pub ramp_advances: IntCounter,
    pub admin_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tandem".into()), None).expect("static prefix is valid");
        // CPU seconds, resident memory, open files and threads of this process
        // (tandem_process_*): with one worker thread, CPU near 1 s/s means it needs more.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector registers once per registry");
        let counter = |name: &str, help: &str| {
            register(&registry, IntCounter::new(name, help).expect("static metric definition"))
        };
        let client_connections =
            register(&registry, IntGauge::new("client_connections", "Client connections open now").expect("static"));
        let backend_up = register(
            &registry,
            IntGaugeVec::new(Opts::new("backend_up", "1 if the backend's pooled connections are up"), &["backend"])
                .expect("static"),
        );
        let cluster_redirects = register(
            &registry,
            IntCounterVec::new(
                Opts::new("cluster_redirects_total", "Cluster redirects (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) followed"),
                &["backend"],
            )
            .expect("static"),
        );
        let cluster_primaries = register(
            &registry,
            IntGaugeVec::new(Opts::new("cluster_primaries", "Primaries in a cluster backend's slot map"), &["backend"])
                .expect("static"),
        );
        let command_table_refresh = register(
            &registry,
            IntCounterVec::new(
                Opts::new("command_table_refresh_total", "Command table refreshes from a backend's COMMAND reply"),
                &["backend", "result"],
            )
            .expect("static"),
        );
        let served_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new("commands_served_total", "Commands served, by the backend that served them"),
                &["backend"],
            )
            .expect("static"),
        );
        let flips = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "flips_total",
                    "Cutover changes, by result (ok: backlog drained; timeout: swapped at flip_timeout)",
                ),
                &["result"],
            )
            .expect("static"),
        );
        let flip_wait = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("flip_wait_seconds", "How long a cutover change waited for the mirror backlog")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("static"),
        );
        let pop_fence = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "mirror_pop_fence_seconds",
                    "How long a blocking pop's mirror effect waited for the serving backend's earlier replies",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("static"),
        );
        let cutover_percent = register(
            &registry,
            Gauge::new("cutover_percent", "Share of hash slots served by the target").expect("static"),
        );
        let mirror_writes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("mirror_writes_total", "Mirrored writes by destination backend and outcome"),
                &["backend", "outcome"],
            )
            .expect("static"),
        );
        let mirror_jobs = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "mirror_jobs_total",
                    "Jobs queued towards each backend's mirror connection; each carries the mirrored writes \
                     gathered from one read of serving replies (writes per job is the batch size)",
                ),
                &["backend"],
            )
            .expect("static"),
        );
        let mirror_queue_depth = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "mirror_queue_depth",
                    "Mirrored writes in flight (queued, or sent and not yet answered), by destination backend",
                ),
                &["backend"],
            )
            .expect("static"),
        );
        let config_generation = register(
            &registry,
            IntGauge::new("config_generation", "Configuration generation (bumps on every applied change)")
                .expect("static"),
        );
        let reloads = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Config file reloads, by result (ok, error: rejected and kept the old)",
                ),
                &["result"],
            )
            .expect("static"),
        );
        let admin_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new("admin_requests_total", "Admin API requests by endpoint and status code"),
                &["endpoint", "code"],
            )
            .expect("static"),
        );
        let names: Vec<&'static str> = builtin_names().collect();
        let cells = (0..(names.len() + 1) * 2 * 3 * 2).map(|_| AtomicU64::new(0)).collect();
        let exported = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "backend_commands_total",
                    "Commands run by each backend, by role (serving, mirror, compare), command and outcome",
                ),
                &["backend", "role", "command", "outcome"],
            )
            .expect("static"),
        );
        let latency_vec = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "backend_latency_seconds",
                    "Time from sending a command to its reply, by backend and role",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
                &["backend", "role"],
            )
            .expect("static"),
        );
        let latency = [Side::Source, Side::Target]
            .map(|side| ROLES.map(|role| latency_vec.with_label_values(&[side.name(), role])));
        let guardrail_rollbacks = register(
            &registry,
            IntCounter::new(
                "guardrail_rollbacks_total",
                "Automatic rollbacks of the cutover because a ramp guardrail tripped",
            )
            .expect("static"),
        );
        let ramp_advances = register(
            &registry,
            IntCounter::new("ramp_advances_total", "Cutover steps taken by the ramp").expect("static"),
        );
        Metrics {
            guardrail_rollbacks,
            ramp_advances,
            commands_by: CommandCounters { names, cells, exported },
            latency,
            config_generation,
            reloads,
            admin_requests,
            served: [served_vec.with_label_values(&["source"]), served_vec.with_label_values(&["target"])],
            cross_side: counter(
                "cross_side_total",
                "Multi-key commands with keys on both sides served by the first key's side",
            ),
            split: counter("split_commands_total", "Multi-key commands split between the two backends"),
            sync_mirror_late: counter(
                "sync_mirror_late_total",
                "Sync-mode writes whose mirror did not finish within mirror.timeout (reply sent anyway)",
            ),
            flips,
            flip_wait,
            pop_fence,
            pop_fence_late: counter(
                "mirror_pop_fence_late_total",
                "Blocking pops mirrored after mirror.timeout without their fence answered",
            ),
            cutover_percent,
            mirror_writes,
            mirror_queue_depth,
            mirror_jobs,
            client_connections,
            client_connections_total: counter("client_connections_total", "Client connections accepted"),
            clients_rejected: counter("clients_rejected_total", "Client connections refused at limits.max_clients"),
            commands: counter("commands_total", "Client commands received"),
            protocol_errors: counter("protocol_errors_total", "Clients closed for malformed or oversize requests"),
            refused: counter("commands_refused_total", "Commands refused by the proxy (dangerous, not allowed)"),
            auth_failures: counter("auth_failures_total", "Failed AUTH / HELLO AUTH attempts"),
            dedicated_opened: counter(
                "dedicated_connections_total",
                "Dedicated backend connections opened (transactions, blocking, Pub/Sub, other db)",
            ),
            backend_up,
            cluster_redirects,
            cluster_primaries,
            command_table_refresh,
            registry,
        }
    }

    /// The registry, for components that define their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one command answered by a backend (`cmd` is the command table id).
    pub fn record(&self, cmd: u16, side: Side, role: Role, error: bool, took: Duration) {
        let i = self.commands_by.index(cmd, side, role, error);
        if let Some(cell) = self.commands_by.cells.get(i) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[side.index()][role as usize].observe(took.as_secs_f64());
    }

    /// Commands served by `side` so far, and how many of them failed (for the guardrails).
    pub fn serving_counts(&self, side: Side) -> (u64, u64) {
        let c = &self.commands_by;
        let (mut total, mut errors) = (0, 0);
        for cmd in 0..=c.names.len() {
            for error in [false, true] {
                let i = ((cmd * 2 + side.index()) * 3 + Role::Serving as usize) * 2 + error as usize;
                let n = c.cells.get(i).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
                total += n;
                if error {
                    errors += n;
                }
            }
        }
        (total, errors)
    }

    /// Cumulative bucket counts of `side`'s serving latency, for windowed percentiles.
    pub fn serving_latency_buckets(&self, side: Side) -> Vec<(f64, u64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.latency[side.index()][Role::Serving as usize].collect() {
            for m in family.get_metric() {
                for b in m.get_histogram().get_bucket() {
                    out.push((b.upper_bound(), b.cumulative_count()));
                }
            }
        }
        out
    }

    fn export_commands(&self) {
        let c = &self.commands_by;
        for (i, cell) in c.cells.iter().enumerate() {
            let value = cell.load(Ordering::Relaxed);
            if value == 0 {
                continue;
            }
            let error = i % 2;
            let role = (i / 2) % 3;
            let side = (i / 6) % 2;
            let cmd = i / 12;
            let name = c.names.get(cmd).copied().unwrap_or("other");
            let backend = if side == 0 { "source" } else { "target" };
            let counter = c.exported.with_label_values(&[backend, ROLES[role], name, OUTCOMES[error]]);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }

    /// Brings the mirror counters up to date from the queues' own accounting.
    pub fn observe_mirrors(&self, mirrors: &Mirrors) {
        for side in [Side::Source, Side::Target] {
            let Some(q) = mirrors.queue(side) else { continue };
            let s = q.stats().snapshot();
            for (outcome, value) in [
                ("enqueued", s.enqueued),
                ("applied", s.applied),
                ("error", s.error),
                ("diverged", s.diverged),
                ("dropped", s.dropped),
            ] {
                let c = self.mirror_writes.with_label_values(&[side.name(), outcome]);
                c.inc_by(value.saturating_sub(c.get()));
            }
            self.mirror_queue_depth.with_label_values(&[side.name()]).set(q.depth() as i64);
            let jobs = self.mirror_jobs.with_label_values(&[side.name()]);
            jobs.inc_by(q.stats().jobs().saturating_sub(jobs.get()));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.export_commands();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers a metric and hands it back, so definitions read as one expression.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
