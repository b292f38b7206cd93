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
use crate::proto::commands::CommandTable;
use crate::proto::reply::{self, Protocol};
use crate::proto::request::Limits;

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
}

impl Policy {
    pub fn allows(&self, name: &str) -> bool {
        self.allow.allows(name)
    }
}

/// State shared by every connection of a running proxy.
pub struct Proxy {
    pub policy: ArcSwap<Policy>,
    pub commands: ArcSwap<CommandTable>,
    pub source: Arc<Backend>,
    pub target: Option<Arc<Backend>>,
    pub metrics: Metrics,
    clients: AtomicUsize,
    next_id: AtomicU64,
}

impl Proxy {
    pub fn new(policy: Policy, source: Arc<Backend>, target: Option<Arc<Backend>>) -> Arc<Proxy> {
        Arc::new(Proxy {
            policy: ArcSwap::from_pointee(policy),
            commands: ArcSwap::from_pointee(CommandTable::builtin()),
            source,
            target,
            metrics: Metrics::new(),
            clients: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        std::iter::once(&self.source).chain(self.target.iter())
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Accepts clients until `shutdown` fires, then waits (at most `drain`) for connected clients
/// to finish what they sent.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    for backend in proxy.backends() {
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
                if proxy.clients.load(Ordering::Relaxed) >= max {
                    proxy.metrics.clients_rejected.inc();
                    tracing::warn!(%peer, max_clients = max, "refusing client: limits.max_clients reached");
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
                    crate::client::serve(stream, proxy.clone(), id, shutdown).await;
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
    tracing::info!(
        clients = proxy.client_count(),
        "stopped accepting; draining clients"
    );
    if tokio::time::timeout(drain, done.recv()).await.is_err() {
        tracing::warn!(
            clients = proxy.client_count(),
            ?drain,
            "drain timed out; closing remaining clients"
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
                proxy
                    .metrics
                    .command_table_refresh
                    .with_label_values(&[backend.name(), "ok"])
                    .inc();
                tracing::info!(backend = %backend.name(), added, total = proxy.commands.load().len(), "command table refreshed");
                return;
            }
            Err(e) => {
                proxy
                    .metrics
                    .command_table_refresh
                    .with_label_values(&[backend.name(), "error"])
                    .inc();
                tracing::debug!(backend = %backend.name(), error = %e, "command table refresh failed; will retry");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn fetch_command_reply(
    backend: &Backend,
) -> anyhow::Result<redis_protocol::resp2::types::OwnedFrame> {
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
