//! A backend connection owned by one client, for work that needs connection state:
//! transactions, WATCH, blocking commands, a database other than the pool's, client-side
//! caching. It does not reconnect: losing it loses that state, so the client is told.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::conn::{connect, Handshake};
use super::pipeline::{self, End};
use super::{BackendError, BackendSettings, Job};

pub struct DedicatedConn {
    tx: mpsc::Sender<Job>,
    handshake: Handshake,
    backend: Arc<str>,
}

impl DedicatedConn {
    pub(super) async fn open(
        settings: Arc<BackendSettings>,
        hs: &Handshake,
        pushes: Option<mpsc::UnboundedSender<Bytes>>,
    ) -> Result<DedicatedConn, BackendError> {
        let (stream, _) = connect(&settings, hs).await?;
        let name = settings.name.clone();
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        tokio::spawn(async move {
            // No silence limit: a BLPOP may rightly wait for as long as the client asked.
            if let End::Failed(err) =
                pipeline::run(stream, &mut rx, None, &settings.name, pushes.as_ref(), settings.command_timeout).await
            {
                tracing::debug!(backend = %settings.name, error = %err, "dedicated connection ended");
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    job.fail(&err);
                }
            }
        });
        Ok(DedicatedConn { tx, handshake: hs.clone(), backend: name })
    }

    /// The state this connection was opened with (kept current by the client).
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    pub fn handshake_mut(&mut self) -> &mut Handshake {
        &mut self.handshake
    }

    /// False once the connection has failed.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    pub async fn send(&self, job: Job) -> Result<(), BackendError> {
        self.tx.send(job).await.map_err(|mpsc::error::SendError(job)| {
            let err = BackendError::unavailable(&self.backend, "dedicated connection lost");
            job.fail(&err);
            err
        })
    }
}
