//! Mirroring: sending the effect of every write to the backend that did not serve it, in
//! the order the serving backend applied the writes, and accounting for each one exactly
//! once.
//!
//! Each destination backend has one [`MirrorQueue`]: a bounded job queue in front of a
//! connection of its own. Effects are enqueued by the *serving* connection's reader as each
//! reply arrives (see `backend::Sink::Callback`), which is the order the serving backend
//! applied them. A full queue or a down mirror never slows the client: the write is counted
//! as dropped and its key journaled for repair.
//!
//! Effects enqueued while a backend connection's reader handles one read of replies are
//! gathered ([`Batching`]) and queued as one job when it has handled them all: one channel
//! message, one wake-up and one write to the mirror for a whole pipeline, instead of one per
//! write. Sequence numbers are taken when the batch is queued, so they stay in queue order.
//!
//! Every enqueued write ends in exactly one of: applied, error (the mirror answered with an
//! error), diverged (a deterministic write whose reply differs from the serving reply) or
//! dropped (queue full, mirror down). Until then it is in flight, so
//! `enqueued = applied + error + diverged + dropped + in_flight` at every moment.

pub mod effect;
pub mod journal;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::{Backend, BackendError, Job, Reply, SharedConn, Sink};
use crate::metrics::{Metrics, Role};
use crate::proto::commands::CommandTable;
use crate::proto::reply;
use crate::proto::request::Request;
use crate::route::Side;
use effect::{Effect, ScriptCache};
use journal::Journal;
use smallvec::{smallvec, SmallVec};

/// Counters of one mirror queue. `in_flight` is derived, so the identity always holds.
///
/// Ops enter on the serving connection's thread and end on the mirror connection's, which
/// may be another core: the two groups of counters live on cache lines of their own so
/// neither side's updates evict the other's.
#[derive(Default, Debug)]
pub struct MirrorStats {
    entered: Entered,
    ended: Ended,
}

#[derive(Default, Debug)]
#[repr(align(128))]
struct Entered {
    enqueued: AtomicU64,
    /// Sequence number of the last op that entered the queue.
    queued_seq: AtomicU64,
    /// Jobs queued: each carries the writes (and compared reads) gathered from one read of
    /// the serving backend's replies, so writes per job is the mirror's batch size.
    jobs: AtomicU64,
}

#[derive(Default, Debug)]
#[repr(align(128))]
struct Ended {
    applied: AtomicU64,
    error: AtomicU64,
    diverged: AtomicU64,
    dropped: AtomicU64,
    /// Sequence number of the last op that left it (ops leave in order).
    done_seq: AtomicU64,
}

/// A consistent-enough reading of the counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub enqueued: u64,
    pub applied: u64,
    pub error: u64,
    pub diverged: u64,
    pub dropped: u64,
    pub in_flight: u64,
}

impl MirrorStats {
    /// Jobs queued towards the backend since the start.
    pub fn jobs(&self) -> u64 {
        self.entered.jobs.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        // Outcomes are read before `enqueued` so in_flight is never negative.
        let applied = self.ended.applied.load(Ordering::Acquire);
        let error = self.ended.error.load(Ordering::Acquire);
        let diverged = self.ended.diverged.load(Ordering::Acquire);
        let dropped = self.ended.dropped.load(Ordering::Acquire);
        let enqueued = self.entered.enqueued.load(Ordering::Acquire);
        let done = applied + error + diverged + dropped;
        StatsSnapshot { enqueued, applied, error, diverged, dropped, in_flight: enqueued.saturating_sub(done) }
    }
}

/// How a mirrored write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Error,
    Diverged,
    Dropped,
}

/// The queue of effects bound for one backend.
pub struct MirrorQueue {
    core: Arc<Core>,
}

/// What queueing an op needs, shared with the batches being gathered for the queue.
struct Core {
    backend: Arc<Backend>,
    conn: SharedConn,
    /// Most writes in flight (queued or sent and not yet answered).
    capacity: u64,
    /// What every op's accounting callback shares (one `Arc` per op instead of one per field).
    accounts: Arc<Accounts>,
    /// Held while ops take their sequence numbers and enter the queue, so sequence order
    /// is queue order (a flip's drain relies on it). Never held across an await.
    order: std::sync::Mutex<()>,
}

/// What the accounting of every op of one queue needs.
struct Accounts {
    side: Side,
    backend: Arc<str>,
    stats: Arc<MirrorStats>,
    common: Common,
}

/// What the accounting needs to know about one mirrored op.
struct Ticket {
    seq: u64,
    /// The command's metrics id ([`crate::proto::commands::CommandInfo::id`]).
    cmd: u16,
    /// The client's requests, kept to name the keys if the op fails.
    requests: SmallVec<[Request; 1]>,
    /// The serving backend's reply, when the mirror's must match it.
    expect: Option<Bytes>,
    done: Option<oneshot::Sender<()>>,
}

impl Ticket {
    /// Accounts for the op's `reply`, which came `elapsed` after the op was queued.
    fn finish(self, acc: &Accounts, reply: Reply, elapsed: Duration) {
        let (outcome, reason) = match &reply {
            Ok(frame) if reply::is_error(frame) => (Outcome::Error, error_text(frame)),
            Ok(frame) => match &self.expect {
                Some(expected) if !same_reply(expected, frame) => {
                    (Outcome::Diverged, "reply differs from serving backend".into())
                }
                _ => (Outcome::Applied, String::new()),
            },
            Err(e) => (Outcome::Dropped, e.to_string()),
        };
        let counter = match outcome {
            Outcome::Applied => &acc.stats.ended.applied,
            Outcome::Error => &acc.stats.ended.error,
            Outcome::Diverged => &acc.stats.ended.diverged,
            Outcome::Dropped => &acc.stats.ended.dropped,
        };
        // Ops that reached the queue leave it in order; one refused at the door never entered.
        if !matches!(reply, Err(BackendError::Overloaded { .. })) {
            acc.stats.ended.done_seq.fetch_max(self.seq, Ordering::AcqRel);
        }
        counter.fetch_add(1, Ordering::AcqRel);
        if outcome != Outcome::Applied {
            self.journal_keys(acc, outcome, &reason);
        }
        if let Some(metrics) = &acc.common.metrics {
            metrics.record(self.cmd, acc.side, Role::Mirror, outcome != Outcome::Applied, elapsed);
        }
        drop(self.done);
    }

    fn journal_keys(&self, acc: &Accounts, outcome: Outcome, reason: &str) {
        let what = match outcome {
            Outcome::Error => "error",
            Outcome::Diverged => "diverged",
            Outcome::Dropped => "dropped",
            Outcome::Applied => return,
        };
        tracing::debug!(backend = acc.side.name(), outcome = what, reason, "mirrored write not applied");
        let Some(journal) = &acc.common.journal else { return };
        let table = acc.common.commands.load();
        let reason = format!("{what}: {reason}");
        for req in &self.requests {
            let argv = req.argv();
            let name = String::from_utf8_lossy(req.arg(0)).to_ascii_lowercase();
            if let Some(info) = table.lookup(&argv) {
                for i in info.key_indices(&argv) {
                    journal.record(acc.side.name(), argv[i], &name, &reason);
                }
            }
        }
    }
}

/// Commands (each an argv) encoded one after another.
fn commands(cmds: &[Vec<Bytes>]) -> Bytes {
    let mut buf = BytesMut::new();
    for c in cmds {
        buf.put(reply::command(c));
    }
    buf.freeze()
}

fn error_text(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame.get(1..frame.len().saturating_sub(2)).unwrap_or_default()).into_owned()
}

/// Replies are compared as values, so a RESP3 client's reply (`_`, `#t`, maps) equals the
/// mirror connection's RESP2 reply of the same data.
fn same_reply(a: &Bytes, b: &Bytes) -> bool {
    if a == b {
        return true;
    }
    use crate::proto::value::{parse, Value};
    // A RESP3 double (`ZADD ... INCR`, `ZSCORE`) is a bulk string in RESP2.
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Double(d) => Some(*d),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y || matches!((number(&x), number(&y)), (Some(p), Some(q)) if p == q),
        _ => false,
    }
}

/// Both mirror queues and what building effects needs.
pub struct Mirrors {
    queues: [Option<MirrorQueue>; 2],
    pub scripts: Arc<ScriptCache>,
    common: Common,
}

/// What the queues' accounting shares, kept across reloads.
#[derive(Clone)]
struct Common {
    commands: Arc<ArcSwap<CommandTable>>,
    journal: Option<Arc<Journal>>,
    metrics: Option<Arc<Metrics>>,
}

impl Mirrors {
    /// Builds a queue towards each backend when a target exists; none otherwise. Each
    /// mirrored write's outcome and latency is recorded in `metrics` when given.
    pub fn new(
        source: &Arc<Backend>,
        target: Option<&Arc<Backend>>,
        queue_len: usize,
        commands: Arc<ArcSwap<CommandTable>>,
        journal: Option<Arc<Journal>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Mirrors {
        let common = Common { commands, journal, metrics };
        Mirrors::build(source, target, queue_len, common, [None, None], Arc::new(ScriptCache::new()))
    }

    /// New queues towards (possibly) new backends, keeping the accounting of `old` so the
    /// counters stay continuous across a reload. Ops already in the old queues finish there.
    pub fn rebuild(old: &Mirrors, source: &Arc<Backend>, target: Option<&Arc<Backend>>, queue_len: usize) -> Mirrors {
        let stats = [Side::Source, Side::Target].map(|side| old.queue(side).map(|q| q.stats().clone()));
        Mirrors::build(source, target, queue_len, old.common.clone(), stats, old.scripts.clone())
    }

    fn build(
        source: &Arc<Backend>,
        target: Option<&Arc<Backend>>,
        queue_len: usize,
        common: Common,
        [source_stats, target_stats]: [Option<Arc<MirrorStats>>; 2],
        scripts: Arc<ScriptCache>,
    ) -> Mirrors {
        let queues = match target {
            Some(target) => [
                Some(MirrorQueue::new(Side::Source, source.clone(), queue_len, &common, source_stats)),
                Some(MirrorQueue::new(Side::Target, target.clone(), queue_len, &common, target_stats)),
            ],
            None => [None, None],
        };
        Mirrors { queues, scripts, common }
    }

    /// The queue whose writes go to `side`.
    pub fn queue(&self, side: Side) -> Option<&MirrorQueue> {
        self.queues[side.index()].as_ref()
    }

    /// Enqueues the effect of `req`, which the other backend served with `reply`, towards
    /// `to`. `cmd` is the command's [`crate::proto::commands::CommandInfo::id`] (the client
    /// already looked it up); `db` is the client's database. `done` is dropped when the op
    /// completes (sync mode waits on it).
    pub fn enqueue_effect(
        &self,
        to: Side,
        cmd: u16,
        req: &Request,
        reply: &Bytes,
        db: u32,
        done: Option<oneshot::Sender<()>>,
    ) {
        let Some(queue) = self.queue(to) else { return };
        // Commands learned from a backend (`OTHER_ID`) have no built-in effect: forwarded as is.
        let name = crate::proto::commands::builtin_name(cmd);
        let argv = req.argv();
        let (payload, count, expect) = match effect::effect(name, &argv, reply, crate::unix_ms, &self.scripts) {
            Effect::Nothing => return,
            Effect::Same => {
                let expect = effect::compare_reply(name).then(|| reply.clone());
                (req.raw().clone(), 1, expect)
            }
            Effect::Rewritten(cmds) => (commands(&cmds), cmds.len() as u32, None),
            // A miss is a target that differs: counted as diverged and journaled.
            Effect::Removal(cmds) => (commands(&cmds), cmds.len() as u32, Some(Bytes::from_static(b":1\r\n"))),
        };
        drop(argv);
        queue.write(payload, count, db, expect, cmd, smallvec![req.clone()], done);
    }

    /// Enqueues a transaction that succeeded on the serving backend as one MULTI/EXEC block,
    /// each command rewritten to its effect from its entry in the EXEC reply.
    pub fn enqueue_transaction(
        &self,
        to: Side,
        cmds: &[Request],
        exec_reply: &Bytes,
        db: u32,
        done: Option<oneshot::Sender<()>>,
    ) {
        let Some(queue) = self.queue(to) else { return };
        let Some(parts) = split_array(exec_reply) else { return };
        let table = self.common.commands.load();
        let mut buf = BytesMut::new();
        buf.put(reply::command(&["MULTI"]));
        let mut count = 0u32;
        let mut writes = SmallVec::new();
        let mut first_cmd = None;
        for (req, part) in cmds.iter().zip(parts.iter()) {
            let argv = req.argv();
            let Some(info) = table.lookup(&argv) else { continue };
            if !info.flags.contains(crate::proto::commands::Flags::WRITE) {
                continue;
            }
            match effect::effect(&info.name, &argv, part, crate::unix_ms, &self.scripts) {
                Effect::Nothing => continue,
                Effect::Same => {
                    buf.put(req.raw().clone());
                    count += 1;
                }
                // In a transaction only the EXEC reply is looked at: a removal is not checked.
                Effect::Rewritten(rw) | Effect::Removal(rw) => {
                    for c in &rw {
                        buf.put(reply::command(c));
                        count += 1;
                    }
                }
            }
            first_cmd.get_or_insert(info.id);
            writes.push(req.clone());
        }
        if count == 0 {
            return;
        }
        buf.put(reply::command(&["EXEC"]));
        let cmd = first_cmd.unwrap_or(crate::proto::commands::OTHER_ID);
        queue.write(buf.freeze(), count + 2, db, None, cmd, writes, done);
    }

    /// Sends a read (a compared sample) through `to`'s ordered queue, behind every write
    /// mirrored before it. Not part of the write accounting. Returns false, without calling
    /// `done`, when there is no queue towards `to`; when the queue is full, `done` is called
    /// with [`BackendError::Overloaded`].
    pub fn enqueue_read(&self, to: Side, payload: Bytes, db: u32, done: Box<dyn FnOnce(Reply) + Send>) -> bool {
        let Some(queue) = self.queue(to) else { return false };
        let (payload, replies, pick) = wrap_db(payload, 1, db, queue.core.backend.settings().db);
        queue.core.enqueue(Staged { payload, answer: Answer { replies, pick, op: Op::Read(done) } });
        true
    }

    /// Ops towards `side` that never took effect there (failed or dropped), since the start.
    pub fn lost(&self, side: Side) -> u64 {
        self.queue(side).map_or(0, |q| {
            q.stats().ended.error.load(Ordering::Acquire) + q.stats().ended.dropped.load(Ordering::Acquire)
        })
    }

    /// Waits until every op that entered `side`'s queue before this call has left it, or
    /// `limit` passes. Returns false on timeout.
    pub async fn drain(&self, side: Side, limit: Duration) -> bool {
        let Some(queue) = self.queue(side) else { return true };
        let target = queue.stats().entered.queued_seq.load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        loop {
            if queue.stats().ended.done_seq.load(Ordering::Acquire) >= target {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl MirrorQueue {
    fn new(
        side: Side,
        backend: Arc<Backend>,
        capacity: usize,
        common: &Common,
        stats: Option<Arc<MirrorStats>>,
    ) -> MirrorQueue {
        let conn = backend.mirror_conn(capacity);
        let stats = stats.unwrap_or_default();
        let accounts = Arc::new(Accounts { side, backend: backend.name().clone(), stats, common: common.clone() });
        let core = Core { backend, conn, capacity: capacity as u64, accounts, order: std::sync::Mutex::new(()) };
        MirrorQueue { core: Arc::new(core) }
    }

    /// The queue's counters.
    pub fn stats(&self) -> &Arc<MirrorStats> {
        &self.core.accounts.stats
    }

    /// Mirrored writes in flight: waiting in the queue or sent and not yet answered.
    pub fn depth(&self) -> u64 {
        self.stats().snapshot().in_flight
    }

    /// Enqueues a write of `count` commands, wrapped for the client's database `db`.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        payload: Bytes,
        count: u32,
        db: u32,
        expect: Option<Bytes>,
        cmd: u16,
        requests: SmallVec<[Request; 1]>,
        done: Option<oneshot::Sender<()>>,
    ) {
        let (payload, replies, pick) = wrap_db(payload, count, db, self.core.backend.settings().db);
        let ticket = Ticket { seq: 0, cmd, requests, expect, done };
        self.core.enqueue(Staged { payload, answer: Answer { replies, pick, op: Op::Write(ticket) } });
    }
}

/// An op on its way into a queue: its bytes, and what answers it.
struct Staged {
    payload: Bytes,
    answer: Answer,
}

enum Op {
    /// A mirrored write, accounted for by its ticket (which takes its sequence number when
    /// it enters the queue).
    Write(Ticket),
    /// A compared read.
    Read(Box<dyn FnOnce(Reply) + Send>),
}

/// Most ops gathered into one job.
const BATCH_MAX: usize = 256;

/// Ops gathered for one queue on this thread.
struct Gathered {
    core: Arc<Core>,
    ops: Vec<Staged>,
    bytes: usize,
}

#[derive(Default)]
struct Stage {
    /// Live [`Batching`] guards on this thread.
    depth: u32,
    gathered: Vec<Gathered>,
    /// Replies held back until the gathered ops are queued (see [`release`]).
    held: Vec<(oneshot::Sender<Reply>, Reply)>,
}

thread_local! {
    static STAGE: std::cell::RefCell<Stage> = std::cell::RefCell::new(Stage::default());
}

/// While one is alive, mirror ops enqueued on this thread are gathered per queue, and queued
/// as one job per queue when the outermost one ends.
///
/// A backend connection's reader holds one while it hands out one read's worth of replies,
/// which is where effects are enqueued, in the order the serving backend applied them. The
/// guard is not `Send`, so it cannot be held across an await in a task: gathered ops wait
/// microseconds, and nothing else can enqueue on this thread in between.
pub struct Batching {
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Batching {
    pub fn start() -> Batching {
        STAGE.with(|s| s.borrow_mut().depth += 1);
        Batching { _thread_bound: std::marker::PhantomData }
    }
}

impl Drop for Batching {
    fn drop(&mut self) {
        let gathered = STAGE.with(|s| {
            let mut s = s.borrow_mut();
            s.depth -= 1;
            if s.depth > 0 {
                return None;
            }
            Some(std::mem::take(&mut s.gathered))
        });
        let Some(gathered) = gathered else { return };
        // Queued outside the borrow: a refused op's callback runs here.
        for g in gathered {
            g.core.queue(g.ops);
        }
        // Then the replies held behind them. Sending on a oneshot touches no thread-local
        // state, so the buffer is drained in place and kept for the next read.
        STAGE.with(|s| {
            for (tx, reply) in s.borrow_mut().held.drain(..) {
                let _ = tx.send(reply);
            }
        });
    }
}

/// Sends `reply` to whoever waits on `tx`: at once, or, while this thread gathers mirror ops,
/// right after they are queued.
///
/// Without this a client could hear that its write was done, and act on it (write the same
/// key through another connection, or let a cutover's fence through), before the write's
/// effect entered its mirror queue: the mirror would then apply the two writes in the wrong
/// order, or a flip's drain would not wait for it. Every reply delivered by a backend
/// connection goes through here.
pub fn release(tx: oneshot::Sender<Reply>, reply: Reply) {
    let mut now = Some((tx, reply));
    let _ = STAGE.try_with(|s| {
        let mut s = s.borrow_mut();
        // Nothing gathered yet: everything this reply could depend on is queued already.
        if s.depth > 0 && !s.gathered.is_empty() {
            s.held.extend(now.take());
        }
    });
    if let Some((tx, reply)) = now {
        let _ = tx.send(reply);
    }
}

impl Core {
    /// Queues `op` now, or with the batch gathered on this thread if one is.
    fn enqueue(self: &Arc<Core>, op: Staged) {
        let mut op = Some(op);
        // (`try_with`: while the thread's locals are torn down, nothing is gathered.)
        let full = STAGE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.depth == 0 {
                return None;
            }
            let i = match s.gathered.iter().position(|g| Arc::ptr_eq(&g.core, self)) {
                Some(i) => i,
                None => {
                    s.gathered.push(Gathered { core: self.clone(), ops: Vec::with_capacity(16), bytes: 0 });
                    s.gathered.len() - 1
                }
            };
            let g = &mut s.gathered[i];
            let op = op.take()?;
            g.bytes += op.payload.len();
            g.ops.push(op);
            // Bytes: a batch of large writes is cut short, as the connection's write buffer would.
            if g.ops.len() < BATCH_MAX && g.bytes < crate::backend::BATCH_BYTES {
                return None;
            }
            g.bytes = 0;
            Some(std::mem::take(&mut g.ops))
        });
        let full = full.ok().flatten();
        if let Some(op) = op {
            // Not gathering on this thread: queued on its own.
            self.queue(std::iter::once(op));
        } else if let Some(ops) = full {
            self.queue(ops);
        }
    }

    /// Gives `ops` their sequence numbers and queues them, in order: as one job when the
    /// connection takes batches, answered to one callback that accounts for each op. Writes
    /// beyond the capacity, and everything when the queue is full, are refused and accounted
    /// as dropped.
    fn queue(&self, ops: impl IntoIterator<Item = Staged>) {
        let stats = &self.accounts.stats;
        let batches = self.conn.takes_batches();
        let queued_at = Instant::now();
        let mut refused: Vec<Job> = Vec::new();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut answers: Vec<Answer> = Vec::new();
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut room = self.capacity.saturating_sub(stats.snapshot().in_flight);
        let mut last_seq = 0;
        for Staged { payload, mut answer } in ops {
            // The op's sequence number; 0 for a read, which is not part of the accounting.
            let mut seq = 0;
            if let Op::Write(ticket) = &mut answer.op {
                ticket.seq = stats.entered.enqueued.fetch_add(1, Ordering::AcqRel) + 1;
                if room == 0 {
                    refused.push(self.job(payload, answer, queued_at));
                    continue;
                }
                room -= 1;
                seq = ticket.seq;
            }
            if batches {
                last_seq = last_seq.max(seq);
                chunks.push(payload);
                answers.push(answer);
            } else {
                match self.conn.try_send(self.job(payload, answer, queued_at)) {
                    // Only an op that entered the queue may be waited for (a refused one never
                    // leaves it: a drain waiting for it would wait in vain).
                    Ok(()) => {
                        stats.entered.queued_seq.fetch_max(seq, Ordering::AcqRel);
                        stats.entered.jobs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(job) => refused.push(job),
                }
            }
        }
        if !answers.is_empty() {
            let replies = answers.iter().map(|a| a.replies).sum();
            let accounts = self.accounts.clone();
            let done = Box::new(move |frames, err| answer(&accounts, answers, frames, err, queued_at));
            let sink = Sink::Frames(chunks, done);
            match self.conn.try_send(Job { payload: Bytes::new(), replies, pick: 0, sink }) {
                Ok(()) => {
                    stats.entered.queued_seq.fetch_max(last_seq, Ordering::AcqRel);
                    stats.entered.jobs.fetch_add(1, Ordering::Relaxed);
                }
                Err(job) => refused.push(job),
            }
        }
        drop(order);
        if !refused.is_empty() {
            let err = BackendError::Overloaded { backend: self.backend.name().clone(), what: "mirror queue" };
            for job in refused {
                job.fail(&err);
            }
        }
    }

    /// The job of one op queued on its own.
    fn job(&self, payload: Bytes, answer: Answer, queued_at: Instant) -> Job {
        let Answer { replies, pick, op } = answer;
        let sink = match op {
            Op::Write(ticket) => {
                let accounts = self.accounts.clone();
                Sink::Callback(Box::new(move |r| ticket.finish(&accounts, r, queued_at.elapsed())))
            }
            Op::Read(done) => Sink::Callback(done),
        };
        Job { payload, replies, pick, sink }
    }
}

/// One op of a batch job: how many of the job's reply frames are its own, which of them
/// answers it, and who takes that answer.
struct Answer {
    replies: u32,
    pick: u32,
    op: Op,
}

/// Hands each op of a batch its answer from the batch's reply `frames`, in order. Ops whose
/// frames did not all arrive get `err` (the connection failed, or the job was refused).
fn answer(acc: &Accounts, answers: Vec<Answer>, frames: Vec<Bytes>, err: Option<BackendError>, queued_at: Instant) {
    let elapsed = queued_at.elapsed();
    let mut frames = frames.into_iter();
    for Answer { replies, pick, op } in answers {
        let mut got = 0;
        let mut picked = None;
        for frame in frames.by_ref().take(replies as usize) {
            if got == pick {
                picked = Some(frame);
            }
            got += 1;
        }
        let reply = match (got == replies, &err) {
            (true, _) => Ok(picked.unwrap_or_default()),
            (false, Some(e)) => Err(e.clone()),
            (false, None) => Err(BackendError::unavailable(&acc.backend, "reply missing from a batch")),
        };
        match op {
            Op::Write(ticket) => ticket.finish(acc, reply, elapsed),
            Op::Read(done) => done(reply),
        }
    }
}

/// Wraps a payload of `count` commands so it runs in database `db` on a connection that
/// otherwise stays in `base_db`; returns the payload, the replies it produces and which one
/// answers the wrapped command (the last of the `count`).
pub fn wrap_db(payload: Bytes, count: u32, db: u32, base_db: u32) -> (Bytes, u32, u32) {
    if db == 0 {
        return (payload, count, count - 1);
    }
    let mut buf = BytesMut::with_capacity(payload.len() + 48);
    buf.put(reply::command(&[b"SELECT".as_slice(), db.to_string().as_bytes()]));
    buf.put(payload);
    buf.put(reply::command(&[b"SELECT".as_slice(), base_db.to_string().as_bytes()]));
    (buf.freeze(), count + 2, count)
}

/// Splits an array reply into its element frames (RESP2 or RESP3); `None` if it is not an
/// array (a failed EXEC answers with an error or a null).
pub fn split_array(frame: &Bytes) -> Option<Vec<Bytes>> {
    let header_end = frame.iter().position(|&b| b == b'\n')?;
    if !matches!(frame.first(), Some(b'*') | Some(b'~')) {
        return None;
    }
    let n: i64 = std::str::from_utf8(&frame[1..header_end.saturating_sub(1)]).ok()?.parse().ok()?;
    if n < 0 {
        return None;
    }
    let mut pos = header_end + 1;
    let mut parts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = reply::frame_len(&frame[pos..]).ok()??;
        parts.push(frame.slice(pos..pos + len));
        pos += len;
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_array_returns_each_element() {
        let f = Bytes::from_static(b"*3\r\n+OK\r\n:5\r\n*1\r\n$1\r\na\r\n");
        let parts = split_array(&f).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[2][..], b"*1\r\n$1\r\na\r\n");
        assert!(split_array(&Bytes::from_static(b"*-1\r\n")).is_none());
        assert!(split_array(&Bytes::from_static(b"-EXECABORT x\r\n")).is_none());
    }

    fn accounts() -> Accounts {
        Accounts {
            side: Side::Target,
            backend: Arc::from("target"),
            stats: Arc::new(MirrorStats::default()),
            common: Common {
                journal: None,
                commands: Arc::new(ArcSwap::from_pointee(CommandTable::builtin())),
                metrics: None,
            },
        }
    }

    fn write(seq: u64, replies: u32, pick: u32, expect: &'static [u8]) -> Answer {
        let ticket = Ticket {
            seq,
            cmd: crate::proto::commands::OTHER_ID,
            requests: SmallVec::new(),
            expect: Some(Bytes::from_static(expect)),
            done: None,
        };
        Answer { replies, pick, op: Op::Write(ticket) }
    }

    /// A compared read's answer slot, and where its reply shows up.
    fn read() -> (Answer, std::sync::mpsc::Receiver<Reply>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Answer { replies: 1, pick: 0, op: Op::Read(Box::new(move |r| tx.send(r).unwrap())) }, rx)
    }

    fn frames(list: &[&'static [u8]]) -> Vec<Bytes> {
        list.iter().map(|f| Bytes::from_static(f)).collect()
    }

    #[test]
    fn a_batch_answers_each_op_with_its_own_frame() {
        let acc = accounts();
        let (read, rx) = read();
        // The second write ran in another database: SELECT n, the write, SELECT 0.
        let ops = vec![write(1, 1, 0, b":1\r\n"), write(2, 3, 1, b":7\r\n"), read];
        let all = frames(&[b":1\r\n", b"+OK\r\n", b":7\r\n", b"+OK\r\n", b"$1\r\nv\r\n"]);
        answer(&acc, ops, all, None, Instant::now());
        let s = acc.stats.snapshot();
        assert_eq!((s.applied, s.diverged, s.dropped), (2, 0, 0), "{s:?}");
        assert_eq!(acc.stats.ended.done_seq.load(Ordering::Acquire), 2);
        assert_eq!(&rx.try_recv().unwrap().unwrap()[..], b"$1\r\nv\r\n");
    }

    #[test]
    fn ops_whose_frames_never_came_get_the_connection_error() {
        let acc = accounts();
        let (read, rx) = read();
        let ops = vec![write(1, 1, 0, b":1\r\n"), write(2, 1, 0, b":2\r\n"), read];
        let err = BackendError::unavailable(&Arc::from("target"), "connection closed by backend");
        answer(&acc, ops, frames(&[b":1\r\n"]), Some(err), Instant::now());
        let s = acc.stats.snapshot();
        assert_eq!((s.applied, s.dropped), (1, 1), "{s:?}");
        // Both entered the queue, so both have left it.
        assert_eq!(acc.stats.ended.done_seq.load(Ordering::Acquire), 2);
        assert!(rx.try_recv().unwrap().is_err());

        // A batch refused at the door: nothing entered, nothing left.
        let acc = accounts();
        let refused = BackendError::Overloaded { backend: Arc::from("target"), what: "mirror queue" };
        answer(&acc, vec![write(1, 1, 0, b":1\r\n")], Vec::new(), Some(refused), Instant::now());
        assert_eq!(acc.stats.snapshot().dropped, 1);
        assert_eq!(acc.stats.ended.done_seq.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn replies_wait_until_the_mirror_ops_gathered_before_them_are_queued() {
        let yaml = "backends:\n  source:\n    url: redis://127.0.0.1:1\n  target:\n    url: redis://127.0.0.1:2\n";
        let config = crate::config::Config::from_yaml_str(yaml).expect("config");
        let backend = |name, b| Backend::new(crate::control::backend_settings(name, b));
        let source = backend("source", &config.backends.source);
        let target = backend("target", config.backends.target.as_ref().expect("target"));
        let commands = Arc::new(ArcSwap::from_pointee(CommandTable::builtin()));
        let mirrors = Mirrors::new(&source, Some(&target), 100, commands, None, None);
        let queue = mirrors.queue(Side::Target).expect("queue");
        let mut buf = bytes::BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"[..]);
        let limits = crate::proto::request::Limits { max_bulk_len: 1024, max_array_len: 16 };
        let req = crate::proto::request::parse(&mut buf, &limits).expect("parse").expect("a request");
        let set = crate::proto::commands::CommandTable::builtin().lookup(&req.argv()).expect("set").id;
        let (tx, mut rx) = oneshot::channel();

        let batching = Batching::start();
        mirrors.enqueue_effect(Side::Target, set, &req, &Bytes::from_static(b"+OK\r\n"), 0, None);
        release(tx, Ok(Bytes::from_static(b"+OK\r\n")));
        assert!(rx.try_recv().is_err(), "the reply left before its write was queued");
        assert_eq!(queue.stats().snapshot().enqueued, 0, "gathered, not queued yet");
        drop(batching);
        assert_eq!(queue.stats().snapshot().enqueued, 1);
        assert_eq!(queue.stats().entered.queued_seq.load(Ordering::Acquire), 1, "queued before the reply left");
        assert_eq!(&rx.try_recv().expect("released").expect("ok")[..], b"+OK\r\n");

        // Outside a batch, both go at once.
        let (tx, mut rx) = oneshot::channel();
        mirrors.enqueue_effect(Side::Target, set, &req, &Bytes::from_static(b"+OK\r\n"), 0, None);
        assert_eq!(queue.stats().snapshot().enqueued, 2);
        release(tx, Ok(Bytes::from_static(b"+OK\r\n")));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn nulls_compare_equal_across_protocols() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert!(same_reply(&b(b"_\r\n"), &b(b"$-1\r\n")));
        assert!(!same_reply(&b(b":1\r\n"), &b(b":2\r\n")));
        assert!(same_reply(&b(b",2.5\r\n"), &b(b"$3\r\n2.5\r\n")));
        assert!(same_reply(&b(b"#t\r\n"), &b(b"#t\r\n")));
    }
}
