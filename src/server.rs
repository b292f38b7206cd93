//! The running proxy: shared state every client reads, the accept loop, and shutdown.
//!
//! State read on every command (the policy derived from the config, the command table)
//! lives behind `ArcSwap`: readers take a snapshot without a lock; a reload builds a new
//! value and swaps it in.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::backend::{Backend, Handshake};
use crate::client::auth::Users;
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::proto::commands::CommandTable;
use crate::proto::reply::{self, Protocol};
use crate::proto::request::Limits;
use crate::route::{CutoverPlan, MirrorMode, Routing, Side};

/// What the config says about serving clients, in the form the per-command path wants.
#[derive(Clone, Debug)]
pub struct Policy {
    pub limits: Limits,
    pub max_clients: usize,
    pub idle_timeout: Option<Duration>,
    pub max_pipeline: usize,
    pub users: Users,
    /// Lower-case command names (`config|set`) or containers (`config`) allowed despite
    /// being dangerous.
    pub allow: crate::config::AllowList,
    /// How long a sync-mode reply waits for its mirror.
    pub mirror_timeout: Duration,
    /// How long a cutover change waits for the mirror backlog before swapping anyway.
    pub flip_timeout: Duration,
}

impl Policy {
    pub fn allows(&self, name: &str) -> bool {
        self.allow.allows(name)
    }
}

/// The backends in use and the mirror queues between them. Replaced whole when a reload
/// changes a backend: clients pick up the new set on their next command, while commands
/// already sent finish on the old connections, which then close.
pub struct BackendSet {
    pub source: Arc<Backend>,
    pub target: Option<Arc<Backend>>,
    pub mirrors: Arc<Mirrors>,
}

impl BackendSet {
    /// The backend on `side` (the source when no target is configured).
    pub fn get(&self, side: Side) -> &Arc<Backend> {
        match side {
            Side::Target => self.target.as_ref().unwrap_or(&self.source),
            Side::Source => &self.source,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Backend>> {
        std::iter::once(&self.source).chain(self.target.iter())
    }
}

/// State shared by every connection of a running proxy.
pub struct Proxy {
    pub policy: ArcSwap<Policy>,
    pub commands: Arc<ArcSwap<CommandTable>>,
    pub routing: ArcSwap<Routing>,
    pub backends: ArcSwap<BackendSet>,
    pub metrics: Arc<Metrics>,
    pub compare: Arc<crate::compare::Comparer>,
    clients: AtomicUsize,
    next_id: AtomicU64,
    /// One cutover change at a time.
    flip_lock: tokio::sync::Mutex<()>,
    /// The routing generation in force, and how many commands are between reading the
    /// routing of each generation (by parity) and queueing their job.
    routing_generation: std::sync::atomic::AtomicU64,
    routing_users: [AtomicUsize; 2],
    /// TLS for new client connections (`tls` in the config), replaced on every reload.
    pub client_tls: ArcSwap<Option<crate::client::tls::ServerTls>>,
}

/// Held by a command from the moment it reads the routing until its job is queued.
pub struct RoutingGuard<'p> {
    proxy: &'p Proxy,
    parity: usize,
}

impl RoutingGuard<'_> {
    /// Keeps the registration past the guard's scope (the command's job is queued later, with
    /// others); returns the generation parity to hand to [`Proxy::release_routing`] then.
    pub fn keep(self) -> usize {
        let parity = self.parity;
        std::mem::forget(self);
        parity
    }
}

impl Drop for RoutingGuard<'_> {
    fn drop(&mut self) {
        self.proxy.routing_users[self.parity].fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a cutover change did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlipReport {
    pub from_percent: f64,
    pub to_percent: f64,
    pub moved_slots: usize,
    pub waited_ms: u64,
    /// True when every write acknowledged before the change reached the side gaining slots;
    /// a change is only made then, so this equals `applied` (kept for API clients).
    pub drained: bool,
    /// False when the change was not made: the backlog towards the side gaining slots did not
    /// drain within `cutover.flip_timeout`, or some of it could not be applied (dropped,
    /// failed). Serving those slots from that side would lose acknowledged writes, so the old
    /// split stays in force; `reason` says why.
    pub applied: bool,
    pub reason: Option<String>,
}

impl Proxy {
    pub fn new(
        policy: Policy,
        routing: Routing,
        source: Arc<Backend>,
        target: Option<Arc<Backend>>,
        mirror_queue_len: usize,
        journal: Option<Arc<crate::mirror::journal::Journal>>,
        compare: (crate::compare::CompareSettings, Option<crate::mirror::journal::Journal>),
    ) -> Arc<Proxy> {
        let commands = Arc::new(ArcSwap::from_pointee(CommandTable::builtin()));
        for b in std::iter::once(&source).chain(target.iter()) {
            b.use_commands(&commands);
        }
        let metrics = Arc::new(Metrics::new());
        let comparer =
            Arc::new(crate::compare::Comparer::new(compare.0, compare.1, journal.clone(), metrics.registry()));
        let mirrors = Arc::new(Mirrors::new(
            &source,
            target.as_ref(),
            mirror_queue_len,
            commands.clone(),
            journal,
            Some(metrics.clone()),
        ));
        metrics.cutover_percent.set(routing.plan.percent());
        Arc::new(Proxy {
            policy: ArcSwap::from_pointee(policy),
            commands,
            routing: ArcSwap::from_pointee(routing),
            backends: ArcSwap::from_pointee(BackendSet { source, target, mirrors }),
            metrics,
            compare: comparer,
            clients: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            flip_lock: tokio::sync::Mutex::new(()),
            routing_generation: std::sync::atomic::AtomicU64::new(0),
            routing_users: [AtomicUsize::new(0), AtomicUsize::new(0)],
            client_tls: ArcSwap::from_pointee(None),
        })
    }

    /// The routing for one command, registered so a flip that starts meanwhile waits until
    /// the command's job is queued (keep the guard until then).
    pub fn route(&self) -> (arc_swap::Guard<Arc<Routing>>, RoutingGuard<'_>) {
        loop {
            let generation = self.routing_generation.load(Ordering::Acquire);
            let parity = (generation % 2) as usize;
            self.routing_users[parity].fetch_add(1, Ordering::AcqRel);
            let routing = self.routing.load();
            if routing.generation == generation {
                return (routing, RoutingGuard { proxy: self, parity });
            }
            // A flip moved on between the two reads: register with the new generation.
            self.routing_users[parity].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends registrations kept with [`RoutingGuard::keep`]: `held[parity]` of each.
    pub fn release_routing(&self, held: [usize; 2]) {
        for (users, n) in self.routing_users.iter().zip(held) {
            if n > 0 {
                users.fetch_sub(n, Ordering::AcqRel);
            }
        }
    }

    /// The backends in use now.
    pub fn backend_set(&self) -> Arc<BackendSet> {
        self.backends.load_full()
    }

    /// The backend on `side` now (the source when no target is configured).
    pub fn backend(&self, side: Side) -> Arc<Backend> {
        self.backends.load().get(side).clone()
    }

    /// The mirror queues now.
    pub fn mirrors(&self) -> Arc<Mirrors> {
        self.backends.load().mirrors.clone()
    }

    pub fn has_target(&self) -> bool {
        self.backends.load().target.is_some()
    }

    /// Swaps in new backends (a reload changed one). Mirror accounting carries over.
    pub fn replace_backends(&self, source: Arc<Backend>, target: Option<Arc<Backend>>, queue_len: usize) {
        let old = self.backends.load_full();
        let mirrors = Arc::new(Mirrors::rebuild(&old.mirrors, &source, target.as_ref(), queue_len));
        for b in std::iter::once(&source).chain(target.iter()) {
            b.use_commands(&self.commands);
            b.warm_up();
        }
        let has_target = target.is_some();
        self.backends.store(Arc::new(BackendSet { source, target, mirrors }));
        let mut routing = Routing::clone(&self.routing.load_full());
        routing.has_target = has_target;
        self.routing.store(Arc::new(routing));
    }

    pub fn mirror_timeout(&self) -> Duration {
        self.policy.load().mirror_timeout
    }

    /// Changes the mirror mode at once (no data moves between sides).
    pub fn set_mirror_mode(&self, mode: MirrorMode) {
        let current = self.routing.load_full();
        let mut next = Routing::clone(&current);
        next.mirror = mode;
        self.routing.store(Arc::new(next));
        tracing::info!(mode = ?mode, "mirror mode changed");
    }

    /// Moves the cutover to `percent` without breaking read-your-writes.
    ///
    /// While the mirror backlog drains, writes to the slots changing sides are mirrored
    /// synchronously; once every write acknowledged before the change has reached the side
    /// gaining slots, the new plan is swapped in at once. The wait is bounded by
    /// `cutover.flip_timeout`. When it runs out, or when part of that backlog could not be
    /// applied (the side is failing), the change is not made: swapping anyway would serve
    /// those slots from a side that lacks acknowledged writes, and later let the old queued
    /// writes overwrite newer ones. The event is logged and counted, and the caller told
    /// why. With mirroring off there is nothing to wait for.
    pub async fn set_cutover(&self, percent: f64) -> FlipReport {
        let _one_at_a_time = self.flip_lock.lock().await;
        let started = std::time::Instant::now();
        let current = self.routing.load_full();
        let next_plan = CutoverPlan::new(percent);
        let moving = current.plan.moving(&next_plan);
        let from = current.plan.percent();
        let mut reason = None;
        // The side that starts serving the moving slots must have every acknowledged write.
        let gaining = if percent > from { Side::Target } else { Side::Source };
        if !moving.is_empty() && current.mirror != MirrorMode::Off && current.has_target {
            let mut transition = Routing::clone(&current);
            transition.moving = Some(moving.clone());
            transition.generation = current.generation + 1;
            let old_parity = (current.generation % 2) as usize;
            self.routing.store(Arc::new(transition));
            self.routing_generation.store(current.generation + 1, Ordering::Release);
            let limit = self.policy.load().flip_timeout;
            let wait = async {
                // Commands that routed with the old plan (and may not see the moving slots)
                // are queued first, so the fence below covers them.
                while self.routing_users[old_parity].load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // After the fence every write sent before the change has been answered, so
                // its effect is in a mirror queue; then wait for those queues to drain.
                let set = self.backend_set();
                let lost_before = set.mirrors.lost(gaining);
                for b in set.iter() {
                    b.fence().await;
                }
                if !set.mirrors.drain(gaining, limit).await {
                    return Err(format!(
                        "the mirror backlog towards the {} did not drain within cutover.flip_timeout ({limit:?})",
                        gaining.name()
                    ));
                }
                let lost = set.mirrors.lost(gaining) - lost_before;
                if lost > 0 {
                    return Err(format!(
                        "{lost} mirror write(s) to the {} failed or were dropped while draining (see the repair journal)",
                        gaining.name()
                    ));
                }
                Ok(())
            };
            let outcome = match tokio::time::timeout(limit, wait).await {
                Ok(r) => r,
                Err(_) => Err(format!("the flip did not complete within cutover.flip_timeout ({limit:?})")),
            };
            reason = outcome.err();
        }
        let mut next = Routing::clone(&self.routing.load_full());
        if reason.is_none() {
            next.plan = next_plan;
        }
        next.moving = None;
        self.routing.store(Arc::new(next));
        let waited = started.elapsed();
        self.metrics.flip_wait.observe(waited.as_secs_f64());
        self.metrics.flips.with_label_values(&[if reason.is_none() { "ok" } else { "aborted" }]).inc();
        if let Some(why) = &reason {
            tracing::warn!(
                from,
                to = percent,
                moved_slots = moving.len(),
                waited_ms = waited.as_millis() as u64,
                reason = %why,
                "cutover NOT changed: the side gaining slots lacks acknowledged writes"
            );
            return FlipReport {
                from_percent: from,
                to_percent: from,
                moved_slots: 0,
                waited_ms: waited.as_millis() as u64,
                drained: false,
                applied: false,
                reason,
            };
        }
        self.metrics.cutover_percent.set(percent.clamp(0.0, 100.0));
        tracing::info!(
            from,
            to = percent,
            moved_slots = moving.len(),
            waited_ms = waited.as_millis() as u64,
            "cutover changed"
        );
        FlipReport {
            from_percent: from,
            to_percent: percent.clamp(0.0, 100.0),
            moved_slots: moving.len(),
            waited_ms: waited.as_millis() as u64,
            drained: true,
            applied: true,
            reason: None,
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Accepts clients until `shutdown` fires, then waits (at most `drain`) for connected clients
/// to finish what they sent.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
    for backend in proxy.backend_set().iter() {
        backend.warm_up();
        tokio::spawn(refresh_command_table(proxy.clone(), backend.clone()));
    }
    // Every client task holds a clone of `alive`; when all are gone, `done` yields None.
    let (alive, mut done) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let max = proxy.policy.load().max_clients;
                let tls = Option::clone(&proxy.client_tls.load());
                if proxy.clients.load(Ordering::Relaxed) >= max {
                    proxy.metrics.clients_rejected.inc();
                    tracing::warn!(%peer, max_clients = max, "refusing client: limits.max_clients reached");
                    if tls.is_some() {
                        // No plain-text error on a TLS port: just close.
                        drop(stream);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ = stream.write_all(&reply::error("ERR max number of clients reached")).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                }
                let id = proxy.next_id.fetch_add(1, Ordering::Relaxed);
                proxy.clients.fetch_add(1, Ordering::Relaxed);
                proxy.metrics.client_connections.inc();
                proxy.metrics.client_connections_total.inc();
                let proxy = proxy.clone();
                let shutdown = shutdown.clone();
                let alive = alive.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => crate::client::serve_tls(stream, tls, proxy.clone(), id, shutdown).await,
                        None => crate::client::serve(stream, proxy.clone(), id, shutdown).await,
                    }
                    proxy.clients.fetch_sub(1, Ordering::Relaxed);
                    proxy.metrics.client_connections.dec();
                    drop(alive);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(alive);
    tracing::info!(clients = proxy.client_count(), "stopped accepting; draining clients");
    let started = std::time::Instant::now();
    if tokio::time::timeout(drain, done.recv()).await.is_err() {
        tracing::warn!(clients = proxy.client_count(), ?drain, "drain timed out; closing remaining clients");
    }
    // Writes acknowledged to clients may still sit in the mirror queues: give them what is
    // left of the drain time (at least a second) to reach the other store.
    let limit = drain.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
    let set = proxy.backends.load_full();
    let (to_target, to_source) =
        tokio::join!(set.mirrors.drain(Side::Target, limit), set.mirrors.drain(Side::Source, limit));
    if to_target && to_source {
        tracing::info!("mirror queues drained");
    } else {
        tracing::warn!(
            ?limit,
            "mirror queues not drained in time: the writes still queued did not reach the other store (run tandem verify, then repair)"
        );
    }
}

/// Merges the backend's `COMMAND` reply into the command table, so module commands and
/// commands newer than the built-in table route by their real key positions.
async fn refresh_command_table(proxy: Arc<Proxy>, backend: Arc<Backend>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match fetch_command_reply(&backend).await {
            Ok(frame) => {
                let mut added = 0;
                proxy.commands.rcu(|table| {
                    let mut table = CommandTable::clone(table);
                    added = table.merge_command_reply(&frame);
                    table
                });
                proxy.metrics.command_table_refresh.with_label_values(&[backend.name().as_ref(), "ok"]).inc();
                tracing::info!(backend = %backend.name(), added, total = proxy.commands.load().len(), "command table refreshed");
                return;
            }
            Err(e) => {
                proxy.metrics.command_table_refresh.with_label_values(&[backend.name(), "error"]).inc();
                tracing::debug!(backend = %backend.name(), error = %e, "command table refresh failed; will retry");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn fetch_command_reply(backend: &Backend) -> anyhow::Result<redis_protocol::resp2::types::OwnedFrame> {
    let mut stream = backend.raw(&Handshake::pooled(Protocol::Resp2)).await?;
    stream.write_all(&reply::command(&["COMMAND"])).await?;
    let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
    let read = async {
        loop {
            if let Some((frame, _)) = redis_protocol::resp2::decode::decode(&buf)? {
                return Ok::<_, anyhow::Error>(frame);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("connection closed");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await?
}
