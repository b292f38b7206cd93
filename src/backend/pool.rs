//! A shared, pipelined backend connection and the task that keeps it connected.
//!
//! The task owns the job queue for its whole life. While connected it runs the pipeline;
//! when the connection fails it waits out a backoff (doubling, with jitter so a fleet of
//! sidecars does not reconnect in step) and, during that wait, fails every job at once with
//! the reason, so clients get a fast, clear error instead of a hang.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::cluster::Lanes;
use super::conn::{connect, Handshake};
use super::pipeline::{self, End};
use super::{BackendError, BackendSettings, Health, Job, Reply};
use crate::proto::reply::Protocol;

/// Jobs queued per shared connection before senders wait (backpressure on clients).
pub(super) const QUEUE: usize = 4096;

/// Handle to one pooled connection: to one server, or to a cluster (whose jobs are routed to
/// the node serving their slot).
#[derive(Clone)]
pub struct SharedConn(Shared);

#[derive(Clone)]
enum Shared {
    Node(NodeConn),
    Cluster(Arc<Lanes>, usize),
}

impl SharedConn {
    pub(super) fn node(conn: NodeConn) -> SharedConn {
        SharedConn(Shared::Node(conn))
    }

    /// Lane `lane` of a cluster's connection set.
    pub(super) fn cluster(lanes: Arc<Lanes>, lane: usize) -> SharedConn {
        SharedConn(Shared::Cluster(lanes, lane))
    }

    /// The cluster connection set behind this handle, if it is one.
    pub(super) fn lanes(&self) -> Option<Arc<Lanes>> {
        match &self.0 {
            Shared::Cluster(lanes, _) => Some(lanes.clone()),
            Shared::Node(_) => None,
        }
    }

    /// True for a connection to one server, which takes [`super::Sink::Batch`] jobs.
    pub fn takes_batches(&self) -> bool {
        matches!(self.0, Shared::Node(_))
    }

    /// Queues a job if there is room; gives it back otherwise.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        match &self.0 {
            Shared::Node(c) => c.try_send(job),
            Shared::Cluster(lanes, lane) => lanes.try_send(job, *lane),
        }
    }

    /// Queues a job; waits only if a connection's queue is full.
    pub async fn send(&self, job: Job) {
        match &self.0 {
            Shared::Node(c) => c.send(job).await,
            Shared::Cluster(lanes, lane) => lanes.send(job, *lane).await,
        }
    }

    /// Sends a PING through every underlying connection; the receivers resolve once every
    /// job queued before it has been answered.
    pub(super) async fn fence(&self) -> Vec<oneshot::Receiver<Reply>> {
        match &self.0 {
            Shared::Node(c) => vec![c.ping().await],
            Shared::Cluster(lanes, lane) => {
                lanes.settle(*lane).await;
                let mut out = Vec::new();
                for c in lanes.node_conns(*lane) {
                    out.push(c.ping().await);
                }
                out
            }
        }
    }
}

/// Handle to one pooled connection to one server.
#[derive(Clone)]
pub struct NodeConn {
    tx: mpsc::Sender<Job>,
}

impl NodeConn {
    pub(super) fn spawn(settings: Arc<BackendSettings>, proto: Protocol, health: Arc<Health>) -> NodeConn {
        NodeConn::spawn_with(settings, proto, health, QUEUE)
    }

    pub(super) fn spawn_with(
        settings: Arc<BackendSettings>,
        proto: Protocol,
        health: Arc<Health>,
        capacity: usize,
    ) -> NodeConn {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(supervise(settings, proto, rx, health));
        NodeConn { tx }
    }

    /// Whether a job could be queued now without waiting.
    pub(super) fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    async fn ping(&self) -> oneshot::Receiver<Reply> {
        let (job, rx) = Job::single(bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
        self.send(job).await;
        rx
    }

    /// Queues a job if there is room; gives it back otherwise.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        })
    }

    /// Queues a job; waits only if the connection's queue is full.
    pub async fn send(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            // Only happens while the process shuts down.
            job.fail(&BackendError::Unavailable { backend: "pool".into(), reason: "shutting down".into() });
        }
    }
}

async fn supervise(settings: Arc<BackendSettings>, proto: Protocol, mut rx: mpsc::Receiver<Job>, health: Arc<Health>) {
    let hs = Handshake::pooled(proto);
    let mut backoff = settings.backoff_min;
    loop {
        let mut was_up = false;
        let master = settings.sentinels().map(|s| s.watch());
        let err = match connect(&settings, &hs).await {
            Ok((stream, _)) => {
                if !health.is_up() {
                    tracing::info!(backend = %settings.name, addr = %settings.describe(), proto = proto.version(), "backend connected");
                }
                health.set_up();
                was_up = true;
                backoff = settings.backoff_min;
                match pipeline::run(
                    stream,
                    &mut rx,
                    Some(settings.command_timeout),
                    &settings.name,
                    None,
                    settings.command_timeout,
                    master,
                )
                .await
                {
                    End::Finished => return,
                    End::Failed(err) => err,
                }
            }
            Err(err) => err,
        };
        if was_up {
            // A connection that was working dropped (a backend restart, an idle cut by a
            // load balancer): try again at once before failing anyone.
            tracing::warn!(backend = %settings.name, error = %err, "backend connection lost; reconnecting");
            continue;
        }
        if health.is_up() {
            tracing::warn!(backend = %settings.name, error = %err, "backend unavailable");
        } else {
            tracing::debug!(backend = %settings.name, error = %err, "backend still unavailable");
        }
        health.set_down(&err);

        let jitter = 0.5 + fastrand::f64();
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(settings.backoff_max);
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                job = rx.recv() => match job {
                    Some(job) => job.fail(&err),
                    None => return,
                },
            }
        }
    }
}
