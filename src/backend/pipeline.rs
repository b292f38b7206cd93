//! The pipelining engine every backend connection runs.
//!
//! A writer drains the connection's job queue, copying as many queued commands as are ready
//! into one buffer and writing it with one syscall; for each job it records who waits for the
//! reply. A reader frames replies as they arrive and hands each to the oldest waiter. Both
//! run inside one task (joined with `select!`), so the lock on the queue of waiters is never
//! contended; it is held only between awaits.
//!
//! The engine ends when the socket fails, a reply cannot be framed, the backend stays silent
//! past the command timeout with replies owed, or the job queue closes and every owed reply
//! has arrived. Whoever still waits is then told why.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{BackendError, Job, Sink};
use crate::proto::reply::frame_len;

/// Stop filling a write batch past this many bytes.
const MAX_BATCH: usize = 256 * 1024;

/// Most commands one connection has written and not yet had answered (a client's gathered
/// pipeline counts per command, a mirror batch, [`Sink::Frames`], per reply). Beyond it the writer
/// stops taking jobs, so a backend that accepts bytes but never answers (a blackhole, a
/// stalled server) backs work up into the bounded queues in front of the connection, where it
/// is refused or dropped and counted, instead of piling up in memory until the silence
/// timeout declares the connection dead.
const MAX_OUTSTANDING: usize = 4096;

/// How a pipeline ended.
pub(super) enum End {
    /// The job queue closed and every reply was delivered.
    Finished,
    /// The connection failed; waiters were told with this error.
    Failed(BackendError),
}

struct Waiter {
    left: u32,
    /// Frames still to skip before the one to deliver.
    skip: u32,
    sink: Sink,
    picked: Option<bytes::Bytes>,
    /// Commands it stands for, towards [`MAX_OUTSTANDING`].
    weight: usize,
}

impl Waiter {
    fn take(&mut self, frame: bytes::Bytes) {
        self.left -= 1;
        if let Sink::Frames(frames, _) = &mut self.sink {
            // Its chunks were written: the vector now collects the reply frames.
            frames.push(frame);
        } else if self.skip == 0 && self.picked.is_none() {
            self.picked = Some(frame);
        } else {
            self.skip = self.skip.saturating_sub(1);
        }
    }

    /// Hands over what arrived: everything, or what did before `err` ended the connection.
    fn complete(self, err: Option<BackendError>) {
        match (self.sink, err) {
            (Sink::Frames(frames, f), err) => f(frames, err),
            (sink, None) => sink.deliver(Ok(self.picked.unwrap_or_default())),
            (sink, Some(err)) => sink.deliver(Err(err)),
        }
    }
}

struct Shared {
    waiters: Mutex<VecDeque<Waiter>>,
    base: Instant,
    /// When (ms after `base`) the oldest owed reply started waiting, or the last reply came.
    since_ms: AtomicU64,
    closing: AtomicBool,
    /// The weight of the waiters: commands written and not yet answered.
    owed: std::sync::atomic::AtomicUsize,
    /// Signalled when the owed commands fall below [`MAX_OUTSTANDING`].
    room: tokio::sync::Notify,
}

impl Shared {
    fn waiters(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter>> {
        // A panic while holding this lock cannot leave the queue half-updated.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        self.since_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.since_ms.load(Ordering::Relaxed)))
    }
}

/// Runs the connection until it ends. `silence` bounds how long owed replies may take;
/// `None` for connections that may legitimately block (BLPOP on a dedicated connection).
pub(super) async fn run(
    stream: super::tls::BackendStream,
    jobs: &mut mpsc::Receiver<Job>,
    silence: Option<Duration>,
    backend: &std::sync::Arc<str>,
    pushes: Option<&mpsc::UnboundedSender<bytes::Bytes>>,
    drain_limit: Duration,
    master: Option<super::sentinel::Watch>,
) -> End {
    let (sentinels, mut epoch) = match master {
        Some(w) => (Some(w.sentinels), Some(w.epoch)),
        None => (None, None),
    };
    let switched = async {
        match &mut epoch {
            Some(rx) => {
                let _ = rx.changed().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let shared = Shared {
        waiters: Mutex::new(VecDeque::with_capacity(64)),
        base: Instant::now(),
        since_ms: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        owed: std::sync::atomic::AtomicUsize::new(0),
        room: tokio::sync::Notify::new(),
    };

    let writer = async {
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            // Replies this batch may still add (one look at the queue per batch, not per job;
            // replies arriving meanwhile only make it conservative).
            let mut room = loop {
                let owed = shared.owed.load(Ordering::Acquire);
                if owed < MAX_OUTSTANDING {
                    break MAX_OUTSTANDING - owed;
                }
                let freed = shared.room.notified();
                if shared.owed.load(Ordering::Acquire) < MAX_OUTSTANDING {
                    continue;
                }
                freed.await;
            };
            let Some(job) = jobs.recv().await else {
                // The owner let go (client gone, backend replaced). Nothing owed: close now.
                // Replies owed: give them `drain_limit`, so writes already sent still get
                // their mirror effect, then close; closing also cancels a blocking command
                // whose client left, so it cannot pop an item nobody will receive.
                shared.closing.store(true, Ordering::Release);
                if shared.waiters().is_empty() {
                    return None;
                }
                tokio::time::sleep(drain_limit).await;
                return Some(BackendError::unavailable(backend, "connection closed with replies still owed"));
            };
            room = room.saturating_sub(push(&shared, &mut out, job));
            while out.len() < MAX_BATCH && room > 0 {
                match jobs.try_recv() {
                    Ok(job) => {
                        room = room.saturating_sub(push(&shared, &mut out, job));
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = wr.write_all(&out).await {
                return Some(BackendError::unavailable(backend, format!("write: {e}")));
            }
            out.clear();
            if out.capacity() > 4 * MAX_BATCH {
                out = BytesMut::with_capacity(16 * 1024);
            }
        }
    };

    let reader = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut framed = false;
        loop {
            // Mirror effects and compared reads enqueued by this read's replies go to their
            // queues together when it is handled.
            let batching = crate::mirror::Batching::start();
            loop {
                let len = match frame_len(&buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => return Err(BackendError::unavailable(backend, e)),
                };
                let frame = buf.split_to(len).freeze();
                if let Some(s) = &sentinels {
                    if frame.starts_with(b"-READONLY") {
                        // The master was demoted: find the new one.
                        s.suspect();
                    }
                }
                if frame.first() == Some(&b'>') {
                    // A RESP3 push (client tracking invalidation) is not a reply: it goes to
                    // the client out of band, or nowhere on a shared connection.
                    match pushes {
                        Some(tx) => {
                            let _ = tx.send(frame);
                        }
                        None => {
                            tracing::debug!(backend = %backend, "dropped unexpected push frame")
                        }
                    }
                    continue;
                }
                let mut waiters = shared.waiters();
                let Some(front) = waiters.front_mut() else {
                    return Err(BackendError::unavailable(backend, "reply without a request (protocol desync)"));
                };
                front.take(frame);
                if front.left == 0 {
                    if let Some(w) = waiters.pop_front() {
                        let before = shared.owed.fetch_sub(w.weight, Ordering::AcqRel);
                        let room = before >= MAX_OUTSTANDING && before - w.weight < MAX_OUTSTANDING;
                        drop(waiters);
                        if room {
                            shared.room.notify_one();
                        }
                        w.complete(None);
                    }
                }
                framed = true;
            }
            drop(batching);
            if framed {
                // Once per read, not per reply: the silence timer needs no finer grain.
                shared.touch();
                framed = false;
            }
            if shared.closing.load(Ordering::Acquire) && shared.waiters().is_empty() {
                return Ok(());
            }
            let read = match silence {
                None => rd.read_buf(&mut buf).await,
                Some(limit) => match tokio::time::timeout(limit / 2, rd.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        if !shared.waiters().is_empty() && shared.quiet_for() >= limit {
                            return Err(BackendError::unavailable(backend, format!("no reply within {limit:?}")));
                        }
                        continue;
                    }
                },
            };
            match read {
                Ok(0) => return Err(BackendError::unavailable(backend, "connection closed by backend")),
                Ok(_) => {}
                Err(e) => return Err(BackendError::unavailable(backend, format!("read: {e}"))),
            }
            if buf.capacity() > 4 * MAX_BATCH && buf.is_empty() {
                buf = BytesMut::with_capacity(16 * 1024);
            }
        }
    };

    let outcome = tokio::select! {
        err = writer => err.map_or(Ok(()), Err),
        res = reader => res,
        _ = switched => Err(BackendError::unavailable(backend, "master switched; reconnecting")),
    };
    match outcome {
        Ok(()) => End::Finished,
        Err(err) => {
            let owed: Vec<Waiter> = shared.waiters().drain(..).collect();
            for w in owed {
                w.complete(Some(err.clone()));
            }
            End::Failed(err)
        }
    }
}

/// Copies a job's bytes into the write batch and registers who waits for its replies;
/// returns how many commands it added towards [`MAX_OUTSTANDING`].
fn push(shared: &Shared, out: &mut BytesMut, job: Job) -> usize {
    let mut waiters = shared.waiters();
    if waiters.is_empty() {
        shared.touch();
    }
    out.extend_from_slice(&job.payload);
    let weight = match job.sink {
        Sink::Batch(jobs) => {
            let mut weight = 0;
            for job in jobs {
                out.extend_from_slice(&job.payload);
                weight += wait_for(&mut waiters, job.replies, job.pick, job.sink);
            }
            weight
        }
        Sink::Frames(mut chunks, f) => {
            for chunk in &chunks {
                out.extend_from_slice(chunk);
            }
            // The same vector collects the reply frames (`Waiter::take`).
            chunks.clear();
            chunks.reserve(job.replies as usize);
            wait_for(&mut waiters, job.replies, job.pick, Sink::Frames(chunks, f))
        }
        sink => wait_for(&mut waiters, job.replies, job.pick, sink),
    };
    shared.owed.fetch_add(weight, Ordering::AcqRel);
    weight
}

/// Registers who waits for `replies` frames; returns the commands it stands for.
fn wait_for(waiters: &mut VecDeque<Waiter>, replies: u32, pick: u32, sink: Sink) -> usize {
    let weight = if matches!(sink, Sink::Frames(..)) { replies as usize } else { 1 };
    let waiter = Waiter { left: replies, skip: pick, sink, picked: None, weight };
    if replies == 0 {
        waiter.complete(None);
        0
    } else {
        waiters.push_back(waiter);
        weight
    }
}
