//! A shared, pipelined backend connection and the task that keeps it connected.
//!
//! The task owns the job queue for its whole life. While connected it runs the pipeline;
//! when the connection fails it waits out a backoff (doubling, with jitter so a fleet of
//! sidecars does not reconnect in step) and, during that wait, fails every job at once with
//! the reason, so clients get a fast, clear error instead of a hang.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::conn::{connect, Handshake};
use super::pipeline::{self, End};
use super::{BackendError, BackendSettings, Health, Job};
use crate::proto::reply::Protocol;

/// Jobs queued per shared connection before senders wait (backpressure on clients).
const QUEUE: usize = 4096;

/// Handle to one pooled connection.
#[derive(Clone)]
pub struct SharedConn {
    tx: mpsc::Sender<Job>,
}

impl SharedConn {
    pub(super) fn spawn(settings: Arc<BackendSettings>, proto: Protocol, health: Arc<Health>) -> SharedConn {
        SharedConn::spawn_with(settings, proto, health, QUEUE)
    }

    pub(super) fn spawn_with(
        settings: Arc<BackendSettings>,
        proto: Protocol,
        health: Arc<Health>,
        capacity: usize,
    ) -> SharedConn {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(supervise(settings, proto, rx, health));
        SharedConn { tx }
    }

    /// Queues a job if there is room; gives it back otherwise.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        })
    }

    /// Jobs waiting in the queue (not yet written to the backend).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
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
        let err = match connect(&settings, &hs).await {
            Ok((stream, _)) => {
                if !health.is_up() {
                    tracing::info!(backend = %settings.name, addr = %settings.addr, proto = proto.version(), "backend connected");
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
