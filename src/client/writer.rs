//! The client's reply writer: writes replies in exactly the order the requests arrived.
//!
//! The reader queues one [`Out`] per request: a reply it already has (answered by the proxy
//! itself) or a receiver for a backend's reply. It hands them over in batches, one per read
//! of the client's socket ([`Outbox`]), so a pipeline of many commands costs one channel
//! message, not one each. The writer takes them in order, waiting for a backend reply only
//! when it is next, and gathers whatever is ready into one write. Before each read the
//! reader waits until fewer than `limits.max_pipeline` replies are owed, so a client that
//! pipelines faster than its replies come back is simply not read until they do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Notify};

use super::merge::{self, MergeKind, Part};
use crate::backend::{BackendError, Reply};
use crate::metrics::{Metrics, Role};
use crate::route::Side;
use std::time::Instant;

/// Replies larger than this are written straight from their buffer instead of being copied.
const DIRECT_WRITE: usize = 16 * 1024;
/// Flush the gathered replies once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

/// Most entries gathered before they are handed to the writer even if the read is not done.
const BATCH: usize = 64;

/// The writer is gone (the client's socket failed).
pub struct Closed;

/// Entries handed to the writer and not yet done with, and a wake-up for the reader when
/// the writer gets through some.
#[derive(Default)]
struct Owed {
    n: AtomicUsize,
    room: Notify,
}

/// Entries handed over together; a read that carried one command hands over one entry
/// without allocating a batch.
enum Handoff {
    One(Out),
    Many(Vec<Out>),
}

/// The reader's end of the reply order.
pub struct Outbox {
    tx: mpsc::UnboundedSender<Handoff>,
    pending: Vec<Out>,
    owed: Arc<Owed>,
}

/// The writer's end of the reply order.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Handoff>,
    owed: Arc<Owed>,
}

/// A reply order between one client's reader and its writer.
pub fn channel() -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let owed = Arc::new(Owed::default());
    (Outbox { tx, pending: Vec::new(), owed: owed.clone() }, Inbox { rx, owed })
}

impl Outbox {
    /// Queues an entry; it reaches the writer at the next [`Outbox::flush`].
    pub fn push(&mut self, out: Out) -> Result<(), Closed> {
        self.pending.push(out);
        if self.pending.len() >= BATCH {
            return self.flush();
        }
        Ok(())
    }

    /// Hands every queued entry to the writer.
    pub fn flush(&mut self) -> Result<(), Closed> {
        let handoff = match self.pending.len() {
            0 => return Ok(()),
            1 => Handoff::One(self.pending.pop().expect("one entry")),
            n => Handoff::Many(std::mem::replace(&mut self.pending, Vec::with_capacity(n))),
        };
        let n = match &handoff {
            Handoff::One(_) => 1,
            Handoff::Many(v) => v.len(),
        };
        self.owed.n.fetch_add(n, Ordering::AcqRel);
        self.tx.send(handoff).map_err(|_| Closed)
    }

    /// Waits until fewer than `max` entries are owed by the writer (flush first).
    pub async fn room(&self, max: usize) {
        loop {
            if self.owed.n.load(Ordering::Acquire) < max || self.tx.is_closed() {
                return;
            }
            let freed = self.owed.room.notified();
            if self.owed.n.load(Ordering::Acquire) < max {
                return;
            }
            freed.await;
        }
    }
}

impl Inbox {
    /// The writer is done with `n` entries.
    fn release(&self, n: usize) {
        if n > 0 {
            self.owed.n.fetch_sub(n, Ordering::AcqRel);
            self.owed.room.notify_one();
        }
    }
}

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
    mut inbox: Inbox,
    mut pushes: mpsc::UnboundedReceiver<Bytes>,
    metrics: std::sync::Arc<Metrics>,
) {
    // Grows with the replies it gathers: an idle client keeps next to nothing.
    let mut buf = BytesMut::new();
    let mut clock = Clock::new();
    let mut single = None;
    let mut batch = Vec::new().into_iter();
    let mut taken = 0;
    let result: std::io::Result<()> = async {
        loop {
            let item = match single.take().or_else(|| batch.next()) {
                Some(item) => item,
                None => {
                    inbox.release(std::mem::take(&mut taken));
                    let next = match inbox.rx.try_recv() {
                        Ok(next) => next,
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            flush(&mut wr, &mut buf).await?;
                            tokio::select! {
                                next = inbox.rx.recv() => match next {
                                    Some(next) => {
                                        clock.refresh();
                                        next
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
                    match next {
                        Handoff::One(out) => {
                            taken = 1;
                            single = Some(out);
                        }
                        Handoff::Many(outs) => {
                            taken = outs.len();
                            batch = outs.into_iter();
                        }
                    }
                    continue;
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
