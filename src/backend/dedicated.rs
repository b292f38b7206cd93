//! A backend connection owned by one client, for work that needs connection state:
//! transactions, WATCH, blocking commands, a database other than the pool's, client-side
//! caching. It does not reconnect: losing it loses that state, so the client is told.
//!
//! On a Redis Cluster one client's state may be needed on several nodes (a WATCH on one, a
//! BLPOP on another): the connection then opens one connection per node on demand, routes
//! each command by its key's slot, and replays state changes on every node it holds.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::cluster::{Cluster, ClusterDedicated};
use super::conn::{connect, Handshake};
use super::pipeline::{self, End};
use super::{BackendError, BackendSettings, Job};

pub struct DedicatedConn {
    handshake: Handshake,
    backend: Arc<str>,
    inner: Inner,
}

enum Inner {
    Node(mpsc::Sender<Job>),
    Cluster(Box<ClusterDedicated>),
}

impl DedicatedConn {
    pub(super) async fn open(
        settings: Arc<BackendSettings>,
        hs: &Handshake,
        pushes: Option<mpsc::UnboundedSender<Bytes>>,
    ) -> Result<DedicatedConn, BackendError> {
        let tx = open_node(settings.clone(), hs, pushes).await?;
        Ok(DedicatedConn { handshake: hs.clone(), backend: settings.name.clone(), inner: Inner::Node(tx) })
    }

    /// A connection to a cluster; node connections open as commands need them.
    pub(super) async fn cluster(
        cluster: Arc<Cluster>,
        hs: &Handshake,
        pushes: Option<mpsc::UnboundedSender<Bytes>>,
        shared: Arc<super::cluster::Lanes>,
    ) -> Result<DedicatedConn, BackendError> {
        cluster.ready().await?;
        let backend = cluster.name().clone();
        Ok(DedicatedConn {
            handshake: hs.clone(),
            backend,
            inner: Inner::Cluster(Box::new(ClusterDedicated::new(cluster, pushes, shared))),
        })
    }

    /// The state this connection was opened with (kept current by the client).
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    pub fn handshake_mut(&mut self) -> &mut Handshake {
        &mut self.handshake
    }

    /// False once the connection (or, on a cluster, any of its node connections) has failed.
    pub fn is_alive(&self) -> bool {
        match &self.inner {
            Inner::Node(tx) => !tx.is_closed(),
            Inner::Cluster(c) => c.is_alive(),
        }
    }

    pub async fn send(&self, job: Job) -> Result<(), BackendError> {
        let tx = match &self.inner {
            Inner::Node(tx) => tx,
            Inner::Cluster(c) => return c.send(job, &self.handshake).await,
        };
        tx.send(job).await.map_err(|mpsc::error::SendError(job)| {
            let err = BackendError::unavailable(&self.backend, "dedicated connection lost");
            job.fail(&err);
            err
        })
    }
}

/// Opens one dedicated connection to one server; returns its job queue.
pub(super) async fn open_node(
    settings: Arc<BackendSettings>,
    hs: &Handshake,
    pushes: Option<mpsc::UnboundedSender<Bytes>>,
) -> Result<mpsc::Sender<Job>, BackendError> {
    let master = settings.sentinels().map(|s| s.watch());
    let (stream, _) = connect(&settings, hs).await?;
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    tokio::spawn(async move {
        // No silence limit: a BLPOP may rightly wait for as long as the client asked.
        if let End::Failed(err) =
            pipeline::run(stream, &mut rx, None, &settings.name, pushes.as_ref(), settings.command_timeout, master)
                .await
        {
            tracing::debug!(backend = %settings.name, error = %err, "dedicated connection ended");
            rx.close();
            while let Ok(job) = rx.try_recv() {
                job.fail(&err);
            }
        }
    });
    Ok(tx)
}
