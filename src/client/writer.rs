//! The client's reply writer: writes replies in exactly the order the requests arrived.
//!
//! The reader queues one [`Out`] per request: a reply it already has (answered by the proxy
//! itself) or a receiver for a backend's reply. The writer takes them in order, waiting for a
//! backend reply only when it is next, and gathers whatever is ready into one write. The
//! queue is bounded by `limits.max_pipeline`, so a client that pipelines faster than its
//! replies come back is simply not read until they do.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::merge::{self, MergeKind, Part};
use crate::backend::{BackendError, Reply};
use crate::metrics::{Metrics, Role};
use crate::route::Side;
use std::time::Instant;

/// Replies larger than this are written straight from their buffer instead of being copied.
const DIRECT_WRITE: usize = 16 * 1024;
/// Flush the gathered replies once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

/// One entry in the client's reply order.
pub enum Out {
    /// A reply the proxy already has.
    Ready(Bytes),
    /// A backend reply still to come, and what to count it as.
    Pending(oneshot::Receiver<Reply>, Tag),
    /// A backend reply that, in sync mirror mode, is held until the mirror has applied the
    /// write too, or `limit` has passed (then it is counted as late and sent anyway).
    Mirrored { reply: oneshot::Receiver<Reply>, mirror: oneshot::Receiver<()>, limit: std::time::Duration, tag: Tag },
    /// A multi-key command split between the two backends.
    /// `mirrors`: in sync mode, each part's mirror completion, awaited up to `limit`.
    Merge {
        kind: MergeKind,
        total: usize,
        parts: Vec<(Vec<usize>, oneshot::Receiver<Reply>)>,
        mirrors: Vec<oneshot::Receiver<()>>,
        limit: std::time::Duration,
    },
    /// Signalled when every earlier reply has been taken: the reader waits on it before it
    /// moves the client to another backend connection, so execution order is kept.
    Barrier(oneshot::Sender<()>),
    /// Copy this backend stream to the client until it ends (Pub/Sub pass-through).
    Pipe(crate::backend::tls::ReadHalf),
    /// Write what is queued, then close the connection (QUIT, protocol errors).
    Close,
}

/// Which command a pending reply answers and when it was sent, for the per-command
/// metrics and the latency histograms.
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    pub cmd: u16,
    pub side: Side,
    pub started: Instant,
}

impl Tag {
    /// `started`: when the command was read from the client.
    pub fn new(cmd: u16, side: Side, started: Instant) -> Tag {
        Tag { cmd, side, started }
    }

    /// Records the command with its latency up to the writer's clock.
    fn record(&self, metrics: &Metrics, reply: &Reply, clock: &mut Clock) {
        let mut now = clock.now();
        if now < self.started {
            // Read after the clock's last reading: look again.
            clock.refresh();
            now = clock.now;
        }
        let error = match reply {
            Ok(frame) => crate::proto::reply::is_error(frame),
            Err(_) => true,
        };
        metrics.record(self.cmd, self.side, Role::Serving, error, now.saturating_duration_since(self.started));
    }
}

/// Runs until the reader is gone and every queued reply is written, or the client's socket
/// fails. `pushes` carries RESP3 push frames from a dedicated connection (client tracking).
pub async fn run<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    mut pushes: mpsc::UnboundedReceiver<Bytes>,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut clock = Clock::new();
    let result: std::io::Result<()> = async {
        loop {
            let item = match rx.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    flush(&mut wr, &mut buf).await?;
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(item) => {
                                clock.refresh();
                                item
                            }
                            None => break,
                        },
                        Some(push) = pushes.recv() => {
                            wr.write_all(&push).await?;
                            continue;
                        }
                    }
                }
            };
            match item {
                Out::Ready(bytes) => put(&mut wr, &mut buf, bytes).await?,
                Out::Pending(mut reply_rx, tag) => {
                    let reply = match reply_rx.try_recv() {
                        Ok(reply) => reply,
                        Err(oneshot::error::TryRecvError::Empty) => {
                            flush(&mut wr, &mut buf).await?;
                            let reply = reply_rx.await.unwrap_or_else(|_| Err(dropped()));
                            clock.refresh();
                            reply
                        }
                        Err(oneshot::error::TryRecvError::Closed) => Err(dropped()),
                    };
                    tag.record(&metrics, &reply, &mut clock);
                    match reply {
                        Ok(bytes) => put(&mut wr, &mut buf, bytes).await?,
                        Err(e) => buf.extend_from_slice(&e.to_resp()),
                    }
                }
                Out::Mirrored { reply, mirror, limit, tag } => {
                    flush(&mut wr, &mut buf).await?;
                    let reply = reply.await.unwrap_or_else(|_| Err(dropped()));
                    clock.refresh();
                    tag.record(&metrics, &reply, &mut clock);
                    // The sender is dropped when the mirror op completes (or never entered).
                    if tokio::time::timeout(limit, mirror).await.is_err() {
                        metrics.sync_mirror_late.inc();
                    }
                    match reply {
                        Ok(bytes) => put(&mut wr, &mut buf, bytes).await?,
                        Err(e) => buf.extend_from_slice(&e.to_resp()),
                    }
                }
                Out::Merge { kind, total, parts, mirrors, limit } => {
                    flush(&mut wr, &mut buf).await?;
                    let mut done = Vec::with_capacity(parts.len());
                    for (positions, rx) in parts {
                        done.push(Part { positions, reply: rx.await.unwrap_or_else(|_| Err(dropped())) });
                    }
                    let deadline = tokio::time::Instant::now() + limit;
                    for m in mirrors {
                        if tokio::time::timeout_at(deadline, m).await.is_err() {
                            metrics.sync_mirror_late.inc();
                        }
                    }
                    put(&mut wr, &mut buf, merge::merge(kind, total, done)).await?;
                }
                Out::Barrier(done) => {
                    let _ = done.send(());
                }
                Out::Pipe(mut backend) => {
                    flush(&mut wr, &mut buf).await?;
                    tokio::io::copy(&mut backend, &mut wr).await?;
                    break;
                }
                Out::Close => break,
            }
            if buf.len() >= FLUSH_AT {
                flush(&mut wr, &mut buf).await?;
            }
        }
        flush(&mut wr, &mut buf).await?;
        wr.shutdown().await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "client write failed");
    }
}

/// The writer's idea of "now" for latency measurements: read again after every wait, and at
/// least every few uses while replies keep arriving without one, so a busy connection costs
/// a fraction of a clock read per reply and the time stays within microseconds of the truth.
struct Clock {
    now: Instant,
    uses: u32,
}

impl Clock {
    const USES_PER_READ: u32 = 8;

    fn new() -> Clock {
        Clock { now: Instant::now(), uses: 0 }
    }

    fn refresh(&mut self) {
        self.now = Instant::now();
        self.uses = 0;
    }

    fn now(&mut self) -> Instant {
        if self.uses >= Self::USES_PER_READ {
            self.refresh();
        }
        self.uses += 1;
        self.now
    }
}

async fn put<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut, bytes: Bytes) -> std::io::Result<()> {
    if bytes.len() >= DIRECT_WRITE {
        flush(wr, buf).await?;
        wr.write_all(&bytes).await
    } else {
        buf.extend_from_slice(&bytes);
        Ok(())
    }
}

async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut) -> std::io::Result<()> {
    if !buf.is_empty() {
        wr.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}

fn dropped() -> BackendError {
    BackendError::Unavailable { backend: "backend".into(), reason: "reply lost".into() }
}
