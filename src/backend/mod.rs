//! Backend connections: how a command reaches a Redis-protocol store and how its reply
//! comes back to whoever is waiting for it.
//!
//! Two kinds of connection exist, both driven by the same pipelining engine
//! ([`pipeline::run`]):
//! - **shared**: a small pool per backend and protocol. Stateless commands from many clients
//!   are written to it back to back (batched into few syscalls) and the replies are matched
//!   to requests by order. A client always uses the same pooled connection, so its commands
//!   execute in the order it sent them.
//! - **dedicated**: opened for one client when it needs connection state the pool cannot
//!   share (MULTI/WATCH, blocking commands, another db, client tracking). The client's state
//!   (protocol, db, name) is replayed on it when it opens.
//!
//! A [`Job`] carries the bytes to write and a [`Sink`] for the reply. The sink may belong to a
//! client, or to anyone else (the mirror and compare paths), which is why replies travel over
//! one-shot channels rather than being written to a socket here.

pub mod cluster;
mod conn;
mod dedicated;
mod pipeline;
mod pool;
pub mod sentinel;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::proto::reply::{self, Protocol};

pub use conn::{connect, Handshake};
pub use dedicated::DedicatedConn;
use pool::NodeConn;
pub use pool::SharedConn;

/// Everything needed to connect to one backend, resolved from the config (secrets included,
/// which is why this type has no `Debug` that would print them).
#[derive(Clone)]
pub struct BackendSettings {
    /// The backend's name in `proxy.yaml` (`source`, `target`), used in errors and metrics.
    pub name: Arc<str>,
    /// `host:port`.
    pub addr: String,
    /// The database shared connections select (from the URL's `/db`).
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Shared pipelined connections per protocol.
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// A shared connection with replies outstanding and nothing received for this long is
    /// declared dead and reconnected.
    pub command_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Set for `rediss://` backends.
    pub tls: Option<tls::TlsClient>,
    /// One server, a cluster, or a master found through sentinels.
    pub topology: Topology,
}

/// How the server(s) behind a backend are found.
#[derive(Clone, Debug, Default)]
pub enum Topology {
    /// `addr` is the server.
    #[default]
    Single,
    /// A Redis Cluster discovered from these `host:port` seeds (`addr` is the first).
    Cluster { seeds: Vec<String> },
    /// The master these sentinels name (`addr` is the first sentinel, for display).
    Sentinel(Arc<sentinel::Sentinels>),
}

impl BackendSettings {
    /// The same settings for one node of a cluster.
    pub fn for_node(&self, addr: &str) -> BackendSettings {
        BackendSettings { addr: addr.to_string(), topology: Topology::Single, ..self.clone() }
    }

    pub(crate) fn sentinels(&self) -> Option<&Arc<sentinel::Sentinels>> {
        match &self.topology {
            Topology::Sentinel(s) => Some(s),
            _ => None,
        }
    }

    /// What `addr` means, for status pages: `cluster 10.0.0.1:6379,...`, `sentinel ...`.
    pub fn describe(&self) -> String {
        match &self.topology {
            Topology::Single => self.addr.clone(),
            Topology::Cluster { seeds } => format!("cluster {}", seeds.join(",")),
            Topology::Sentinel(s) => match s.current() {
                Some(master) => format!("{master} (master \"{}\" via sentinels)", s.master_name()),
                None => format!("master \"{}\" via sentinels (not yet found)", s.master_name()),
            },
        }
    }
}

impl std::fmt::Debug for BackendSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSettings")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("pool_size", &self.pool_size)
            .field("tls", &self.tls)
            .field("topology", &self.topology)
            .finish()
    }
}

/// Why a command could not be answered by a backend. Rendered to the client by
/// [`BackendError::to_resp`], the one place that wording lives.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {backend} unavailable: {reason}")]
    Unavailable { backend: Arc<str>, reason: Arc<str> },
    /// A bounded queue in front of the backend was full; the job never reached it.
    #[error("backend {backend} overloaded: {what} full")]
    Overloaded { backend: Arc<str>, what: &'static str },
}

impl BackendError {
    pub fn unavailable(backend: &Arc<str>, reason: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable { backend: backend.clone(), reason: reason.to_string().into() }
    }

    /// `-ERR tandem: backend <name> unavailable: <reason>`
    pub fn to_resp(&self) -> Bytes {
        reply::proxy_error(&self.to_string())
    }
}

/// A backend's reply frame, byte for byte, or why there is none.
pub type Reply = Result<Bytes, BackendError>;

/// Where a reply goes.
pub enum Sink {
    /// Someone awaits it (a client's writer).
    Reply(oneshot::Sender<Reply>),
    /// Called on the connection's reader as the reply arrives, so work that must follow the
    /// order in which the backend applied commands (enqueueing a mirror effect, accounting
    /// a mirrored write) happens in exactly that order.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// Runs the hook on the reader as the reply arrives (what must follow the backend's
    /// order: enqueueing a mirror effect, starting a comparison, redacting), then hands what
    /// it returns to the waiting client, after any mirror op gathered ahead of it
    /// ([`crate::mirror::release`]).
    Hook(ReplyHook, oneshot::Sender<Reply>),
    /// Nobody needs it (state replays such as `SELECT` on a dedicated connection).
    Discard,
    /// Several jobs sent as one (a client's pipeline gathered over one read), each written
    /// with its own bytes and answered in turn; the batch job's own payload is empty. Only
    /// for connections to one server: a cluster routes each command.
    Batch(Vec<Job>),
    /// Takes every reply frame of the job, in order, once they have all arrived; or those
    /// that did and the error that ended the connection before the rest. For a queue's own
    /// batch of commands (the mirror), which accounts for each command itself: one waiter and
    /// one callback for the whole batch. The batch's commands are the chunks, written after
    /// the job's payload without being joined first. Only for connections to one server, whose
    /// pipeline hands it every frame: delivered any other way ([`Sink::deliver`]) it gets a
    /// single frame, which only answers a one-command job.
    Frames(Vec<Bytes>, FramesFn),
}

/// What a [`Sink::Hook`] runs on a reply before the client gets it.
pub type ReplyHook = Box<dyn FnOnce(Reply) -> Reply + Send>;

/// What a [`Sink::Frames`] calls with the frames and, if the rest never came, why.
pub type FramesFn = Box<dyn FnOnce(Vec<Bytes>, Option<BackendError>) + Send>;

impl Sink {
    fn deliver(self, reply: Reply) {
        match self {
            // The receiver may have gone (client disconnected): nothing to do then.
            Sink::Reply(tx) => crate::mirror::release(tx, reply),
            Sink::Callback(f) => f(reply),
            Sink::Hook(f, tx) => crate::mirror::release(tx, f(reply)),
            Sink::Discard => {}
            Sink::Batch(parts) => {
                for part in parts {
                    part.sink.deliver(reply.clone());
                }
            }
            Sink::Frames(_, f) => match reply {
                Ok(frame) => f(vec![frame], None),
                Err(e) => f(Vec::new(), Some(e)),
            },
        }
    }
}

/// Bytes to write to a backend and how many reply frames they produce. One frame is
/// delivered: the one at index `pick` (a `MULTI ... EXEC` block is answered by its `EXEC`;
/// `SELECT n; cmd; SELECT 0` by the command in the middle).
pub struct Job {
    pub payload: Bytes,
    pub replies: u32,
    pub pick: u32,
    pub sink: Sink,
}

impl Job {
    /// One command, one reply, delivered to a new one-shot channel.
    pub fn single(payload: Bytes) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (Job { payload, replies: 1, pick: 0, sink: Sink::Reply(tx) }, rx)
    }

    /// One command whose reply nobody needs.
    pub fn discard(payload: Bytes) -> Job {
        Job { payload, replies: 1, pick: 0, sink: Sink::Discard }
    }

    pub fn fail(self, err: &BackendError) {
        self.sink.deliver(Err(err.clone()));
    }
}

/// Jobs joined into one, in order (a [`Sink::Batch`]; a lone job stays as it is). Each
/// joined job must deliver its own reply (not be a batch itself), and the result only goes to
/// a connection that takes batches ([`SharedConn::takes_batches`]). Nothing is copied: the
/// connection writes each job's bytes into its write buffer.
/// Bytes of commands joined into one job before it is cut (a client's gathered read, a
/// mirror queue's batch): large enough to fill a socket write, small enough to bound the
/// reply the last command waits behind.
pub const BATCH_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct JobBatch {
    /// A lone job, kept as it is: a read that carried one command allocates nothing here.
    first: Option<Job>,
    /// Every job once there are two or more.
    jobs: Vec<Job>,
    bytes: usize,
}

impl JobBatch {
    pub fn push(&mut self, job: Job) {
        self.bytes += job.payload.len();
        if self.jobs.is_empty() {
            match self.first.take() {
                None => return self.first = Some(job),
                Some(first) => {
                    self.jobs.reserve(16);
                    self.jobs.push(first);
                }
            }
        }
        self.jobs.push(job);
    }

    /// Jobs joined so far.
    pub fn len(&self) -> usize {
        self.jobs.len().max(usize::from(self.first.is_some()))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes joined so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The job carrying everything joined; the batch is empty again afterwards. A batch
    /// job's own `replies` is 0: each joined job counts its own.
    pub fn take(&mut self) -> Option<Job> {
        self.bytes = 0;
        if self.jobs.is_empty() {
            return self.first.take();
        }
        let jobs = std::mem::take(&mut self.jobs);
        Some(Job { payload: Bytes::new(), replies: 0, pick: 0, sink: Sink::Batch(jobs) })
    }
}

/// Whether a backend is reachable, as last observed by its pooled connections.
#[derive(Default)]
pub struct Health {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
    }

    fn set_down(&self, err: &BackendError) {
        self.up.store(false, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err.to_string());
        }
    }
}

/// One backend: its settings, its shared pools (one per protocol, opened on first use) and
/// its health.
pub struct Backend {
    settings: Arc<BackendSettings>,
    /// Set for a Redis Cluster: its slot map and node connections.
    cluster: Option<Arc<cluster::Cluster>>,
    pools: [OnceLock<Vec<SharedConn>>; 2],
    health: Arc<Health>,
    /// Set once the backend's `COMMAND` reply has been merged into the command table.
    commands_loaded: AtomicBool,
    server_version: OnceLock<String>,
}

impl Backend {
    pub fn new(settings: BackendSettings) -> Arc<Backend> {
        let health = Arc::new(Health::default());
        let settings = Arc::new(settings);
        let cluster = match &settings.topology {
            Topology::Cluster { seeds } => Some(cluster::Cluster::new(settings.clone(), seeds.clone(), health.clone())),
            _ => None,
        };
        Arc::new(Backend {
            settings,
            cluster,
            pools: [OnceLock::new(), OnceLock::new()],
            health,
            commands_loaded: AtomicBool::new(false),
            server_version: OnceLock::new(),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.settings.name
    }

    pub fn settings(&self) -> &BackendSettings {
        &self.settings
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The server version the backend reported in its `HELLO` reply, once known.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.get().map(|s| s.as_str())
    }

    /// The shared connection for `client_id` in protocol `proto`. The same client always
    /// gets the same connection, which keeps its commands in order.
    pub fn shared(&self, proto: Protocol, client_id: u64) -> &SharedConn {
        let idx = match proto {
            Protocol::Resp2 => 0,
            Protocol::Resp3 => 1,
        };
        let pool = self.pools[idx].get_or_init(|| {
            let width = self.settings.pool_size.max(1);
            match &self.cluster {
                Some(c) => {
                    let lanes = cluster::Lanes::new(c.clone(), proto, pool::QUEUE, width);
                    (0..width).map(|lane| SharedConn::cluster(lanes.clone(), lane)).collect()
                }
                None => (0..width)
                    .map(|_| SharedConn::node(NodeConn::spawn(self.settings.clone(), proto, self.health.clone())))
                    .collect(),
            }
        });
        &pool[(client_id % pool.len() as u64) as usize]
    }

    /// Opens the RESP2 pool now, so the first client does not pay for the connect.
    pub fn warm_up(&self) {
        if let Some(c) = &self.cluster {
            c.start();
        }
        let _ = self.shared(Protocol::Resp2, 0);
    }

    /// Finds keys with the proxy's live command table (matters for a cluster, which routes
    /// by key; module commands learned from `COMMAND` would otherwise look keyless).
    pub fn use_commands(&self, table: &Arc<arc_swap::ArcSwap<crate::proto::commands::CommandTable>>) {
        if let Some(c) = &self.cluster {
            c.use_commands(table);
        }
    }

    /// The cluster behind this backend, if it is one.
    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Resolves once every command sent to the pooled connections before the call has been
    /// answered (a PING through each connection; connections are FIFO). Used by flips: after
    /// the fence, every earlier write's mirror effect has been enqueued.
    pub async fn fence(&self) {
        let mut waits = Vec::new();
        for pool in &self.pools {
            if let Some(conns) = pool.get() {
                for conn in conns {
                    waits.extend(conn.fence().await);
                }
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// A connection of its own for mirrored writes, with a queue of `capacity` jobs that
    /// callers fill with [`SharedConn::try_send`] so a slow mirror never blocks them.
    pub fn mirror_conn(&self, capacity: usize) -> SharedConn {
        match &self.cluster {
            Some(c) => SharedConn::cluster(cluster::Lanes::new(c.clone(), Protocol::Resp2, capacity, 1), 0),
            None => SharedConn::node(NodeConn::spawn_with(
                self.settings.clone(),
                Protocol::Resp2,
                Arc::new(Health::default()),
                capacity,
            )),
        }
    }

    /// Opens a dedicated connection carrying the given per-connection state.
    /// RESP3 pushes arriving on it (client tracking) go to `pushes`.
    pub async fn dedicated(
        &self,
        hs: &Handshake,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<Bytes>>,
    ) -> Result<DedicatedConn, BackendError> {
        match &self.cluster {
            Some(c) => {
                let shared = self.shared(hs.proto, 0).lanes().expect("a cluster backend's pool is a cluster's");
                DedicatedConn::cluster(c.clone(), hs, pushes, shared).await
            }
            None => DedicatedConn::open(self.settings.clone(), hs, pushes).await,
        }
    }

    /// Opens a plain connection with the handshake done, for callers that drive the socket
    /// themselves (Pub/Sub pass-through, the command-table refresh).
    pub async fn raw(&self, hs: &Handshake) -> Result<tls::BackendStream, BackendError> {
        let (stream, version) = match &self.cluster {
            Some(c) => conn::connect(&c.any_node().await?, hs).await?,
            None => conn::connect(&self.settings, hs).await?,
        };
        if let Some(v) = version {
            let _ = self.server_version.set(v);
        }
        Ok(stream)
    }

    /// True the first time it is called: the caller should refresh the command table.
    pub fn claim_command_refresh(&self) -> bool {
        !self.commands_loaded.swap(true, Ordering::AcqRel)
    }

    /// Lets a later connection retry the command-table refresh after a failure.
    pub fn release_command_refresh(&self) {
        self.commands_loaded.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_batch_keeps_a_lone_job_and_joins_several_in_order() {
        let mut batch = JobBatch::default();
        assert!(batch.take().is_none());

        let (job, _rx) = Job::single(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
        batch.push(job);
        let lone = batch.take().expect("one job");
        assert!(matches!(lone.sink, Sink::Reply(_)), "a lone job is sent as it is");
        assert_eq!(&lone.payload[..], b"*1\r\n$4\r\nPING\r\n");
        assert!(batch.is_empty());

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, replies) in [1u32, 3, 1].into_iter().enumerate() {
            let tx = tx.clone();
            let sink = Sink::Callback(Box::new(move |r: Reply| {
                let _ = tx.send((i, r));
            }));
            batch.push(Job { payload: Bytes::from(vec![b'x'; i + 1]), replies, pick: 0, sink });
        }
        assert_eq!((batch.len(), batch.bytes()), (3, 6));
        let joined = batch.take().expect("a batch");
        assert_eq!((batch.len(), batch.bytes()), (0, 0));
        let Sink::Batch(jobs) = &joined.sink else { panic!("not a batch") };
        assert_eq!(jobs.iter().map(|j| j.payload.len()).collect::<Vec<_>>(), [1, 2, 3]);
        // Failing the batch tells every joined job, in order.
        joined.fail(&BackendError::unavailable(&Arc::from("b"), "down"));
        let told: Vec<(usize, bool)> =
            std::iter::from_fn(|| rx.try_recv().ok()).map(|(i, r)| (i, r.is_err())).collect();
        assert_eq!(told, [(0, true), (1, true), (2, true)]);
    }
}
