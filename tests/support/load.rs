//! Client load for the reliability tests and the soak.
//!
//! [`Load::start`] runs paced client threads that send a mix of commands through tandem, one
//! at a time per connection, and record for every op when it started, how long it took and
//! how it ended. Each worker owns its keys (`{prefix}:w{worker}:...`), so every key has one
//! writer and a well-defined history; the workers keep that history in a [`Ledger`]:
//!
//! * the last *acknowledged* write of each key (the value of the last `SET` answered `+OK`,
//!   the reply of the last `INCR`/`LPUSH`), and
//! * every write that failed (an error reply or a broken connection). Its fate is unknown —
//!   it may have been applied, and even later than a write acknowledged after it — so the
//!   final state may legitimately show it.
//!
//! [`check_ledger`] then reads every key from the backend that serves it and reports each one
//! whose state is older than its last acknowledged write: an acknowledged write lost. Reads
//! made during the load are checked against the ledger as they come back (read-your-writes),
//! and counted as stale when they return an older state.
//!
//! Values are `{worker}-{seq}-{padding}`, so a value read back says which write it came from.
//! Every loop is bounded in time and in ops; every socket operation has a timeout.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem::route::{slot, CutoverPlan, Side};

use super::{encode_cmd, resp_frame_len, RawConn};

/// What one op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Get,
    Set,
    Del,
    Incr,
    Lpush,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "GET",
            OpKind::Set => "SET",
            OpKind::Del => "DEL",
            OpKind::Incr => "INCR",
            OpKind::Lpush => "LPUSH",
        }
    }

    pub fn is_write(self) -> bool {
        self != OpKind::Get
    }
}

/// Relative weights of the op kinds.
#[derive(Clone, Debug)]
pub struct Mix {
    pub get: u32,
    pub set: u32,
    pub del: u32,
    pub incr: u32,
    pub lpush: u32,
}

impl Mix {
    /// `set_percent`% SET, the rest GET.
    pub fn set_get(set_percent: u32) -> Mix {
        Mix { get: 100 - set_percent.min(100), set: set_percent.min(100), del: 0, incr: 0, lpush: 0 }
    }

    /// A session store: 80% GET, 20% writes (mostly SET with a TTL, some DEL, INCR, LPUSH).
    pub fn session_store() -> Mix {
        Mix { get: 80, set: 14, del: 2, incr: 2, lpush: 2 }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> OpKind {
        let total = self.get + self.set + self.del + self.incr + self.lpush;
        let mut n = rng.u32(0..total.max(1));
        for (w, kind) in [
            (self.get, OpKind::Get),
            (self.set, OpKind::Set),
            (self.del, OpKind::Del),
            (self.incr, OpKind::Incr),
            (self.lpush, OpKind::Lpush),
        ] {
            if n < w {
                return kind;
            }
            n -= w;
        }
        OpKind::Get
    }
}

/// How a load runs. Start from [`LoadSpec::new`] and change what matters.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `host:port` of the proxy.
    pub addr: String,
    pub workers: usize,
    /// Key prefix, so several loads can share servers.
    pub prefix: String,
    /// String keys per worker (counters and lists: a tenth of it, at least 1).
    pub keys_per_worker: usize,
    /// Length of SET values.
    pub value_len: usize,
    /// Ops per second per worker; 0 = as fast as replies come back.
    pub rate_per_worker: u32,
    pub mix: Mix,
    /// SET with `EX` seconds drawn from this range (a session TTL); `None` = no TTL.
    pub ttl_secs: Option<(u64, u64)>,
    /// Short connections: reconnect after a number of ops drawn from this range.
    pub reconnect_every: Option<(u64, u64)>,
    /// After a broken connection, connect again (true) or end the worker (false).
    pub reconnect_on_error: bool,
    /// On stop, instead of closing its connection, a worker waits (at most this long) for
    /// the proxy to close it, and records how it ended (for graceful-shutdown tests).
    pub await_close_on_stop: Option<Duration>,
    /// Bound on each connect, write and read.
    pub op_timeout: Duration,
    /// Hard bounds: a worker stops after this long or this many ops, stopped or not.
    pub max_duration: Duration,
    pub max_ops_per_worker: u64,
    pub seed: u64,
}

impl LoadSpec {
    pub fn new(addr: impl Into<String>) -> LoadSpec {
        LoadSpec {
            addr: addr.into(),
            workers: 4,
            prefix: "load".into(),
            keys_per_worker: 200,
            value_len: 1024,
            rate_per_worker: 200,
            mix: Mix::set_get(50),
            ttl_secs: None,
            reconnect_every: None,
            reconnect_on_error: true,
            await_close_on_stop: None,
            op_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(120),
            max_ops_per_worker: 2_000_000,
            seed: 0x7a9d_e41c,
        }
    }
}

/// How an op ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error reply (`-ERR ...`).
    ErrorReply,
    /// A reply that does not fit the command (a sign of a desynchronised connection).
    Unexpected,
    /// No (complete) reply: timeout, EOF, reset, or the connect failed.
    Io,
}

/// One op: when it started (since the load started), how long it took, how it ended.
#[derive(Clone, Copy, Debug)]
pub struct OpRecord {
    pub at: Duration,
    pub latency: Duration,
    pub kind: OpKind,
    pub outcome: Outcome,
    pub worker: u16,
}

impl OpRecord {
    /// When the op ended, since the load started.
    pub fn done(&self) -> Duration {
        self.at + self.latency
    }
}

/// What kind of key a ledger entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Str,
    Counter,
    List,
}

/// A string key's state after a write: the sequence number of the value, or absent.
pub type StrState = Option<u64>;

/// The history of one key, as its only writer saw it.
#[derive(Clone, Debug)]
pub struct KeyHistory {
    pub kind: KeyKind,
    /// Str: the state left by the last acknowledged write (absent before any).
    pub acked_str: StrState,
    /// Counter / List: the reply of the last acknowledged INCR / LPUSH (0 before any).
    pub acked_n: i64,
    /// Str: the states failed writes would leave, should they have been applied.
    pub unsure_str: Vec<StrState>,
    /// Counter / List: failed INCR / LPUSH ops (each may have been applied).
    pub unsure_n: i64,
    pub acked_writes: u64,
    /// When the last acknowledged write ended, since the load started.
    pub last_ack: Duration,
}

impl KeyHistory {
    fn new(kind: KeyKind) -> KeyHistory {
        KeyHistory {
            kind,
            acked_str: None,
            acked_n: 0,
            unsure_str: Vec::new(),
            unsure_n: 0,
            acked_writes: 0,
            last_ack: Duration::ZERO,
        }
    }

    /// Whether a string key found in `state` is consistent with this history.
    pub fn accepts_str(&self, state: StrState) -> bool {
        state == self.acked_str || self.unsure_str.contains(&state)
    }

    /// Whether a counter value or list length `n` is consistent with this history.
    pub fn accepts_n(&self, n: i64) -> bool {
        n >= self.acked_n && n <= self.acked_n + self.unsure_n
    }

    /// The state the last acknowledged write left, for messages.
    pub fn expected(&self) -> String {
        match self.kind {
            KeyKind::Str => match self.acked_str {
                Some(seq) => format!("value #{seq}"),
                None => "absent".into(),
            },
            KeyKind::Counter => format!("counter >= {}", self.acked_n),
            KeyKind::List => format!("length >= {}", self.acked_n),
        }
    }

    fn fail_str(&mut self, state: StrState) {
        if !self.unsure_str.contains(&state) {
            self.unsure_str.push(state);
        }
    }
}

/// Every key the load wrote, with its history.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub keys: HashMap<String, KeyHistory>,
}

impl Ledger {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys that got at least one acknowledged write.
    pub fn acked_keys(&self) -> usize {
        self.keys.values().filter(|h| h.acked_writes > 0).count()
    }

    pub fn acked_writes(&self) -> u64 {
        self.keys.values().map(|h| h.acked_writes).sum()
    }
}

/// How a connection ended when the worker waited for the proxy to close it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// EOF, with no bytes after the last reply.
    Clean,
    /// The proxy sent bytes nobody asked for before closing.
    ExtraBytes(usize),
    /// A reset instead of a FIN.
    Reset,
    /// Still open when the wait ended.
    StillOpen,
    /// The connection had already broken before the stop.
    AlreadyGone,
}

/// Everything a finished load observed.
pub struct LoadReport {
    pub started: Instant,
    pub duration: Duration,
    pub records: Vec<OpRecord>,
    pub ledger: Ledger,
    /// Error replies and I/O failures by kind (`ERR tandem: backend source unavailable`,
    /// `io: timed out`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    pub stale_reads: u64,
    pub stale_examples: Vec<String>,
    pub connections: u64,
    /// Writes whose reply never came because the connection broke.
    pub unanswered: u64,
    /// Connections that ended with part of a reply received.
    pub partial_replies: u64,
    /// Workers that ended because their connection broke (with `reconnect_on_error: false`).
    pub ended_by_error: usize,
    pub closes: Vec<CloseOutcome>,
}

impl LoadReport {
    /// Offset of an instant from the start of the load.
    pub fn offset(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    /// Sorted latencies of the ops that started within `[from, to)`.
    pub fn latencies(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let (a, b) = (self.offset(from), self.offset(to));
        let mut v: Vec<Duration> = self.records.iter().filter(|r| r.at >= a && r.at < b).map(|r| r.latency).collect();
        v.sort();
        v
    }

    /// The `q` quantile (0..1) of the latencies of ops started within `[from, to)`.
    pub fn quantile(&self, from: Instant, to: Instant, q: f64) -> Option<Duration> {
        quantile(&self.latencies(from, to), q)
    }

    pub fn max_latency(&self) -> Duration {
        self.records.iter().map(|r| r.latency).max().unwrap_or_default()
    }

    pub fn ops(&self) -> usize {
        self.records.len()
    }

    /// Ops that did not end with the expected reply.
    pub fn failures(&self) -> usize {
        self.records.iter().filter(|r| r.outcome != Outcome::Ok).count()
    }

    pub fn count(&self, f: impl Fn(&OpRecord) -> bool) -> usize {
        self.records.iter().filter(|r| f(r)).count()
    }

    /// `kind: count` per error kind, one per line (empty when there were none).
    pub fn errors_summary(&self) -> String {
        self.errors_by_kind.iter().map(|(k, n)| format!("  {k}: {n}\n")).collect()
    }

    /// A few lines: ops by kind and outcome, latency quantiles, errors, stale reads.
    pub fn summary(&self) -> String {
        let mut by_kind: BTreeMap<OpKind, (u64, u64)> = BTreeMap::new();
        for r in &self.records {
            let e = by_kind.entry(r.kind).or_default();
            e.0 += 1;
            if r.outcome != Outcome::Ok {
                e.1 += 1;
            }
        }
        let kinds: Vec<String> = by_kind.iter().map(|(k, (n, f))| format!("{} {n} ({f} failed)", k.name())).collect();
        let all: Vec<Duration> = {
            let mut v: Vec<Duration> = self.records.iter().map(|r| r.latency).collect();
            v.sort();
            v
        };
        let q = |p| quantile(&all, p).map(|d| format!("{:.2}ms", d.as_secs_f64() * 1e3)).unwrap_or("-".into());
        let mut s = format!(
            "ops {} in {:.1}s ({:.0}/s): {}\nlatency p50 {} p99 {} p99.9 {} max {:.1}ms\nconnections opened {}, \
             stale reads {}, unanswered {}, partial replies {}\n",
            self.records.len(),
            self.duration.as_secs_f64(),
            self.records.len() as f64 / self.duration.as_secs_f64().max(0.001),
            kinds.join(", "),
            q(0.5),
            q(0.99),
            q(0.999),
            self.max_latency().as_secs_f64() * 1e3,
            self.connections,
            self.stale_reads,
            self.unanswered,
            self.partial_replies,
        );
        if self.errors_by_kind.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str("errors by kind:\n");
            s.push_str(&self.errors_summary());
        }
        for e in self.stale_examples.iter().take(5) {
            s.push_str(&format!("  stale read: {e}\n"));
        }
        s
    }
}

/// The `q` quantile of sorted durations (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Live counters, readable while the load runs.
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    failures: AtomicU64,
}

/// A running load. Stop it with [`Load::stop`]; dropping it also stops and joins it.
pub struct Load {
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    started: Instant,
    handles: Vec<JoinHandle<WorkerOut>>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::default());
        let started = Instant::now();
        let handles = (0..spec.workers)
            .map(|w| {
                let (spec, stop, live) = (spec.clone(), stop.clone(), live.clone());
                std::thread::Builder::new()
                    .name(format!("load-{w}"))
                    .spawn(move || Worker::new(w, spec, started, stop, live).run())
                    .expect("spawn load worker")
            })
            .collect();
        Load { stop, live, started, handles }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Ops completed so far, all workers.
    pub fn ops(&self) -> u64 {
        self.live.ops.load(Ordering::Relaxed)
    }

    /// Ops that failed so far.
    pub fn failures(&self) -> u64 {
        self.live.failures.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more ops have completed.
    #[track_caller]
    pub fn wait_for_ops(&self, n: u64, within: Duration) {
        let target = self.ops() + n;
        super::wait_until(within, &format!("the load to complete {n} more ops"), || self.ops() >= target);
    }

    /// Tells the workers to stop after their current op, without waiting for them.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the workers, waits for them and returns what they observed.
    pub fn stop(mut self) -> LoadReport {
        self.signal_stop();
        let outs: Vec<WorkerOut> =
            self.handles.drain(..).map(|h| h.join().unwrap_or_else(|_| panic!("a load worker panicked"))).collect();
        let mut report = LoadReport {
            started: self.started,
            duration: self.started.elapsed(),
            records: Vec::new(),
            ledger: Ledger::default(),
            errors_by_kind: BTreeMap::new(),
            stale_reads: 0,
            stale_examples: Vec::new(),
            connections: 0,
            unanswered: 0,
            partial_replies: 0,
            ended_by_error: 0,
            closes: Vec::new(),
        };
        for out in outs {
            report.records.extend(out.records);
            report.ledger.keys.extend(out.keys);
            for (k, n) in out.errors {
                *report.errors_by_kind.entry(k).or_default() += n;
            }
            report.stale_reads += out.stale_reads;
            report.stale_examples.extend(out.stale_examples);
            report.connections += out.connections;
            report.unanswered += out.unanswered;
            report.partial_replies += out.partial_replies;
            report.ended_by_error += out.ended_by_error as usize;
            report.closes.extend(out.close);
        }
        report.records.sort_by_key(|r| r.at);
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.signal_stop();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct WorkerOut {
    records: Vec<OpRecord>,
    keys: HashMap<String, KeyHistory>,
    errors: BTreeMap<String, u64>,
    stale_reads: u64,
    stale_examples: Vec<String>,
    connections: u64,
    unanswered: u64,
    partial_replies: u64,
    ended_by_error: bool,
    close: Option<CloseOutcome>,
}

struct Worker {
    id: usize,
    spec: LoadSpec,
    started: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    rng: fastrand::Rng,
    seq: u64,
    out: WorkerOut,
}

/// One command to send and what its reply means for the ledger.
struct Op {
    kind: OpKind,
    key: String,
    args: Vec<String>,
    /// Str writes: the state the write leaves.
    leaves: StrState,
}

impl Worker {
    fn new(id: usize, spec: LoadSpec, started: Instant, stop: Arc<AtomicBool>, live: Arc<Live>) -> Worker {
        let rng = fastrand::Rng::with_seed(spec.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Worker {
            id,
            spec,
            started,
            stop,
            live,
            rng,
            seq: 0,
            out: WorkerOut {
                records: Vec::new(),
                keys: HashMap::new(),
                errors: BTreeMap::new(),
                stale_reads: 0,
                stale_examples: Vec::new(),
                connections: 0,
                unanswered: 0,
                partial_replies: 0,
                ended_by_error: false,
                close: None,
            },
        }
    }

    fn run(mut self) -> WorkerOut {
        let spec = self.spec.clone();
        let interval = (spec.rate_per_worker > 0).then(|| Duration::from_secs_f64(1.0 / spec.rate_per_worker as f64));
        // Spread the workers' first ops over one interval so they do not fire in step.
        let mut next = Instant::now() + interval.map(|i| i.mul_f64(self.rng.f64())).unwrap_or_default();
        let deadline = self.started + spec.max_duration;
        let mut conn: Option<RawConn> = None;
        let mut left_on_conn = 0u64;
        let mut ops = 0u64;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < deadline && ops < spec.max_ops_per_worker {
            if let Some(interval) = interval {
                // Pacing the workload (not synchronisation): an open-loop schedule that does
                // not try to catch up after a long stall.
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(100) {
                    next = now;
                }
                next += interval;
            }
            if conn.is_none() {
                match RawConn::try_connect(spec.addr.as_str(), spec.op_timeout) {
                    Ok(mut c) => {
                        c.set_timeout(spec.op_timeout);
                        conn = Some(c);
                        self.out.connections += 1;
                        left_on_conn = match spec.reconnect_every {
                            Some((a, b)) => self.rng.u64(a.max(1)..=b.max(a.max(1))),
                            None => u64::MAX,
                        };
                    }
                    Err(e) => {
                        let at = self.started.elapsed();
                        self.record_error(format!("io: connect: {}", io_kind(&e)));
                        self.push_record(at, Duration::ZERO, OpKind::Get, Outcome::Io);
                        if !spec.reconnect_on_error {
                            self.out.ended_by_error = true;
                            break;
                        }
                        // Pacing the retries of a refused connect.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let op = self.next_op();
            let at = self.started.elapsed();
            let t0 = Instant::now();
            let sent = c.try_send(&encode_cmd(&op.args));
            let reply = sent.and_then(|_| c.try_read_reply());
            let latency = t0.elapsed();
            ops += 1;
            let outcome = match reply {
                Ok(reply) => self.apply(&op, &reply, at + latency),
                Err(e) => {
                    if !c.buffered().is_empty() {
                        self.out.partial_replies += 1;
                    }
                    self.record_error(format!("io: {}", io_kind(&e)));
                    self.fail(&op);
                    if op.kind.is_write() {
                        self.out.unanswered += 1;
                    }
                    conn = None;
                    Outcome::Io
                }
            };
            self.push_record(at, latency, op.kind, outcome);
            if outcome == Outcome::Io && !spec.reconnect_on_error {
                self.out.ended_by_error = true;
                break;
            }
            left_on_conn = left_on_conn.saturating_sub(1);
            if left_on_conn == 0 {
                conn = None;
            }
        }
        if let Some(wait) = spec.await_close_on_stop {
            self.out.close = Some(match conn.as_mut() {
                None => CloseOutcome::AlreadyGone,
                Some(c) => await_close(c, wait),
            });
        }
        self.out
    }

    fn push_record(&mut self, at: Duration, latency: Duration, kind: OpKind, outcome: Outcome) {
        self.live.ops.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Ok {
            self.live.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.out.records.push(OpRecord { at, latency, kind, outcome, worker: self.id as u16 });
    }

    fn record_error(&mut self, kind: String) {
        *self.out.errors.entry(kind).or_default() += 1;
    }

    fn next_op(&mut self) -> Op {
        let spec = &self.spec;
        let kind = spec.mix.pick(&mut self.rng);
        let small = (spec.keys_per_worker / 10).max(1);
        let (p, w) = (&spec.prefix, self.id);
        match kind {
            OpKind::Get | OpKind::Set | OpKind::Del => {
                let key = format!("{p}:w{w}:s{}", self.rng.usize(0..spec.keys_per_worker.max(1)));
                match kind {
                    OpKind::Get => Op { kind, args: vec!["GET".into(), key.clone()], key, leaves: None },
                    OpKind::Del => Op { kind, args: vec!["DEL".into(), key.clone()], key, leaves: None },
                    _ => {
                        self.seq += 1;
                        let mut value = format!("{w}-{}-", self.seq);
                        while value.len() < spec.value_len {
                            value.push((b'a' + (value.len() % 26) as u8) as char);
                        }
                        let mut args = vec!["SET".into(), key.clone(), value];
                        if let Some((a, b)) = spec.ttl_secs {
                            args.push("EX".into());
                            args.push(self.rng.u64(a..=b.max(a)).to_string());
                        }
                        Op { kind, args, key, leaves: Some(self.seq) }
                    }
                }
            }
            OpKind::Incr => {
                let key = format!("{p}:w{w}:c{}", self.rng.usize(0..small));
                Op { kind, args: vec!["INCR".into(), key.clone()], key, leaves: None }
            }
            OpKind::Lpush => {
                self.seq += 1;
                let key = format!("{p}:w{w}:l{}", self.rng.usize(0..small));
                Op { kind, args: vec!["LPUSH".into(), key.clone(), self.seq.to_string()], key, leaves: None }
            }
        }
    }

    fn history(&mut self, op: &Op) -> &mut KeyHistory {
        let kind = match op.kind {
            OpKind::Incr => KeyKind::Counter,
            OpKind::Lpush => KeyKind::List,
            _ => KeyKind::Str,
        };
        self.out.keys.entry(op.key.clone()).or_insert_with(|| KeyHistory::new(kind))
    }

    /// The op failed: its write may or may not have been applied.
    fn fail(&mut self, op: &Op) {
        match op.kind {
            OpKind::Get => {}
            OpKind::Set => self.history(op).fail_str(op.leaves),
            OpKind::Del => self.history(op).fail_str(None),
            OpKind::Incr | OpKind::Lpush => self.history(op).unsure_n += 1,
        }
    }

    /// Interprets a reply, updates the ledger and returns the outcome.
    fn apply(&mut self, op: &Op, reply: &[u8], done: Duration) -> Outcome {
        if reply.first() == Some(&b'-') {
            let text = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
            self.record_error(error_kind(&text));
            self.fail(op);
            return Outcome::ErrorReply;
        }
        let int = || -> Option<i64> { std::str::from_utf8(reply.strip_prefix(b":")?).ok()?.trim_end().parse().ok() };
        let ok = match op.kind {
            OpKind::Set if reply == b"+OK\r\n" => {
                let h = self.history(op);
                h.acked_str = op.leaves;
                h.acked_writes += 1;
                h.last_ack = done;
                true
            }
            OpKind::Del if int().is_some() => {
                let h = self.history(op);
                h.acked_str = None;
                h.acked_writes += 1;
                h.last_ack = done;
                true
            }
            OpKind::Incr | OpKind::Lpush if int().is_some() => {
                let n = int().unwrap_or_default();
                let h = self.history(op);
                h.acked_n = n;
                h.acked_writes += 1;
                h.last_ack = done;
                true
            }
            OpKind::Get => match parse_bulk(reply) {
                Some(value) => {
                    let state = value.as_deref().and_then(value_seq);
                    let known = self.out.keys.get(&op.key);
                    let fine = match known {
                        Some(h) => h.accepts_str(state),
                        None => state.is_none(),
                    };
                    if !fine {
                        self.out.stale_reads += 1;
                        if self.out.stale_examples.len() < 10 {
                            let expected = known.map(|h| h.expected()).unwrap_or_else(|| "absent".into());
                            self.out.stale_examples.push(format!(
                                "{} at {:.3}s: read {}, expected {expected}",
                                op.key,
                                done.as_secs_f64(),
                                state.map(|s| format!("value #{s}")).unwrap_or_else(|| "absent".into())
                            ));
                        }
                    }
                    true
                }
                None => false,
            },
            _ => false,
        };
        if ok {
            Outcome::Ok
        } else {
            let shown: String = String::from_utf8_lossy(reply).chars().take(40).collect();
            self.record_error(format!("unexpected reply to {}: {shown:?}", op.kind.name()));
            self.fail(op);
            Outcome::Unexpected
        }
    }
}

/// Waits for the peer to close `c`: how did it end?
fn await_close(c: &mut RawConn, wait: Duration) -> CloseOutcome {
    let deadline = Instant::now() + wait;
    let mut extra = c.buffered().len();
    let mut stream: &TcpStream = c.stream();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return CloseOutcome::StillOpen;
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return CloseOutcome::Reset;
        }
        match super::read_some(&mut stream, &mut buf) {
            Ok(0) if extra == 0 => return CloseOutcome::Clean,
            Ok(0) => return CloseOutcome::ExtraBytes(extra),
            Ok(n) => extra += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return CloseOutcome::Reset,
        }
    }
}

/// `Some(None)` for a null bulk, `Some(Some(bytes))` for a bulk string, `None` otherwise.
fn parse_bulk(reply: &[u8]) -> Option<Option<Vec<u8>>> {
    if reply == b"$-1\r\n" || reply == b"_\r\n" {
        return Some(None);
    }
    let rest = reply.strip_prefix(b"$")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let len: usize = std::str::from_utf8(&rest[..nl.saturating_sub(1)]).ok()?.parse().ok()?;
    rest.get(nl + 1..nl + 1 + len).map(|v| Some(v.to_vec()))
}

/// The sequence number of a value written by a load worker (`{worker}-{seq}-...`).
pub fn value_seq(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value.get(..value.len().min(48))?).ok()?;
    text.split('-').nth(1)?.parse().ok()
}

/// An error reply's kind: up to "unavailable"/"overloaded" for tandem's backend errors (the
/// reason after it varies), else its first words.
pub fn error_kind(text: &str) -> String {
    for word in [" unavailable", " overloaded"] {
        if let Some(i) = text.find(word) {
            return text[..i + word.len()].to_string();
        }
    }
    text.chars().take(60).collect()
}

fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::UnexpectedEof => "closed by peer".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        io::ErrorKind::InvalidData => "invalid RESP".into(),
        other => format!("{other:?}"),
    }
}

/// One key whose final state is older than its last acknowledged write.
#[derive(Clone, Debug)]
pub struct Lost {
    pub key: String,
    pub side: Side,
    pub expected: String,
    pub found: String,
    /// When the last acknowledged write to it ended, since the load started.
    pub last_ack: Duration,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on the {}: expected {} (acked at {:.3}s), found {}",
            self.key,
            self.side.name(),
            self.expected,
            self.last_ack.as_secs_f64(),
            self.found
        )
    }
}

/// The outcome of [`check_ledger`].
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub checked: usize,
    pub lost: Vec<Lost>,
    /// Keys found in the state of a write that had failed (allowed: it may have applied).
    pub failed_write_applied: usize,
}

impl Verdict {
    /// The first `n` lost keys, one per line.
    pub fn examples(&self, n: usize) -> String {
        self.lost.iter().take(n).map(|l| format!("  {l}\n")).collect()
    }
}

/// The side that serves each key under `plan`.
pub fn plan_sides(plan: CutoverPlan) -> impl Fn(&str) -> Side {
    move |key: &str| plan.side(slot(key.as_bytes()))
}

/// Reads every key of the ledger from the side `side_of` says serves it (`source` / `target`
/// are `host:port`) and reports each whose state is older than its last acknowledged write.
pub fn check_ledger(ledger: &Ledger, source: &str, target: &str, side_of: impl Fn(&str) -> Side) -> Verdict {
    let mut verdict = Verdict::default();
    let mut per_side: [Vec<(&String, &KeyHistory)>; 2] = [Vec::new(), Vec::new()];
    for (key, h) in &ledger.keys {
        per_side[side_of(key).index()].push((key, h));
    }
    for (side, addr) in [(Side::Source, source), (Side::Target, target)] {
        let entries = &per_side[side.index()];
        if entries.is_empty() {
            continue;
        }
        let cmds: Vec<Vec<String>> = entries
            .iter()
            .map(|(k, h)| match h.kind {
                KeyKind::List => vec!["LLEN".to_string(), k.to_string()],
                _ => vec!["GET".to_string(), k.to_string()],
            })
            .collect();
        let replies = request_many(addr, &cmds);
        for ((key, h), reply) in entries.iter().zip(replies) {
            verdict.checked += 1;
            let (fine, found, failed_applied) = match h.kind {
                KeyKind::Str => {
                    let state = parse_bulk(&reply).map(|v| v.as_deref().and_then(value_seq));
                    match state {
                        Some(s) => (
                            h.accepts_str(s),
                            s.map(|n| format!("value #{n}")).unwrap_or_else(|| "absent".into()),
                            s != h.acked_str,
                        ),
                        None => (false, format!("{:?}", String::from_utf8_lossy(&reply)), false),
                    }
                }
                KeyKind::Counter | KeyKind::List => {
                    let n = match parse_bulk(&reply) {
                        Some(Some(v)) => std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok()),
                        Some(None) => Some(0),
                        None => std::str::from_utf8(reply.strip_prefix(b":").unwrap_or(b"x"))
                            .ok()
                            .and_then(|s| s.trim_end().parse().ok()),
                    };
                    match n {
                        Some(n) => (h.accepts_n(n), n.to_string(), n != h.acked_n),
                        None => (false, format!("{:?}", String::from_utf8_lossy(&reply)), false),
                    }
                }
            };
            if !fine {
                verdict.lost.push(Lost {
                    key: key.to_string(),
                    side,
                    expected: h.expected(),
                    found,
                    last_ack: h.last_ack,
                });
            } else if failed_applied {
                verdict.failed_write_applied += 1;
            }
        }
    }
    verdict.lost.sort_by(|a, b| a.key.cmp(&b.key));
    verdict
}

/// Sends `cmds` to `addr` in pipelined chunks and returns the raw replies in order.
/// Panics (with context) if the server does not answer.
#[track_caller]
pub fn request_many(addr: &str, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
    let mut c = RawConn::connect(addr);
    c.set_timeout(Duration::from_secs(20));
    let mut out = Vec::with_capacity(cmds.len());
    for chunk in cmds.chunks(500) {
        let mut buf = Vec::new();
        for cmd in chunk {
            buf.extend(encode_cmd(cmd));
        }
        c.send(&buf);
        for _ in chunk {
            out.push(c.read_reply());
        }
    }
    out
}

/// `GET` of each key from `addr`: `None` when absent.
#[track_caller]
pub fn get_many(addr: &str, keys: &[String]) -> Vec<Option<Vec<u8>>> {
    let cmds: Vec<Vec<String>> = keys.iter().map(|k| vec!["GET".to_string(), k.clone()]).collect();
    request_many(addr, &cmds)
        .into_iter()
        .zip(keys)
        .map(|(r, k)| parse_bulk(&r).unwrap_or_else(|| panic!("GET {k} on {addr}: {:?}", String::from_utf8_lossy(&r))))
        .collect()
}

/// Sends `payload` (many commands) in one write from a helper thread while this thread
/// reads `replies` reply frames, so neither side's socket buffer can fill up and stall the
/// other. Every read is bounded by `timeout`.
pub fn pipeline(addr: &str, payload: Vec<u8>, replies: usize, timeout: Duration) -> io::Result<Vec<Vec<u8>>> {
    let sock: std::net::SocketAddr =
        addr.parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || writer.write_all(&payload));
    let mut reader = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(replies);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut start = 0;
    while out.len() < replies {
        match resp_frame_len(&buf[start..]) {
            Ok(Some(n)) => {
                out.push(buf[start..start + n].to_vec());
                start += n;
                continue;
            }
            Ok(None) => {}
            Err(msg) => return Err(io::Error::new(io::ErrorKind::InvalidData, msg)),
        }
        if start > 1 << 20 {
            buf.drain(..start);
            start = 0;
        }
        let n = super::read_some(&mut reader, &mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {} of {replies} replies", out.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    sender.join().map_err(|_| io::Error::other("pipeline writer panicked"))??;
    Ok(out)
}

/// Resident set size of a process in kB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every `every` on a thread of its own, keeping the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kb(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            // Bounded: at most ten minutes of sampling whatever happens to the test.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(kb) = rss_kb(pid) {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                // The sampling period (not synchronisation).
                std::thread::sleep(every);
            }
        });
        RssSampler { stop, peak, handle: Some(handle) }
    }

    pub fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns the peak in kB.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak_kb()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Raises this process's soft limit on open files to at least `want` (bounded by the hard
/// limit) and returns the soft limit now in force. Children started afterwards (tandem,
/// redis-server) inherit it.
#[cfg(target_os = "linux")]
pub fn raise_nofile(want: u64) -> u64 {
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut now = RLimit { cur: 0, max: 0 };
    // SAFETY: getrlimit writes one `struct rlimit` (two `rlim_t`, u64 on 64-bit Linux) into
    // the valid, exclusively borrowed `now`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut now) } != 0 {
        return 0;
    }
    if now.cur >= want {
        return now.cur;
    }
    let next = RLimit { cur: want.min(now.max), max: now.max };
    // SAFETY: setrlimit only reads the valid `next`.
    if unsafe { setrlimit(RLIMIT_NOFILE, &next) } == 0 {
        next.cur
    } else {
        now.cur
    }
}

#[cfg(not(target_os = "linux"))]
pub fn raise_nofile(_want: u64) -> u64 {
    0
}

/// The mirror counters of one direction, as `/status` shows them (`mirror.towards.<side>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    pub enqueued: u64,
    pub applied: u64,
    pub error: u64,
    pub diverged: u64,
    pub dropped: u64,
    pub in_flight: u64,
}

impl MirrorStats {
    /// The counters towards `towards` in a `/status` document; panics if they are missing.
    pub fn of(status: &serde_json::Value, towards: Side) -> MirrorStats {
        let v = &status["mirror"]["towards"][towards.name()];
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("mirror.towards.{}.{k} missing: {v}", towards.name()));
        MirrorStats {
            enqueued: n("enqueued"),
            applied: n("applied"),
            error: n("error"),
            diverged: n("diverged"),
            dropped: n("dropped"),
            in_flight: n("in_flight"),
        }
    }

    /// No write has more than one outcome: `applied + error + diverged + dropped` never
    /// exceeds `enqueued`. (`/status` derives `in_flight` as the difference, so the identity
    /// `enqueued = outcomes + in_flight` holds by construction and can only fail this way;
    /// that every write got its outcome is `in_flight == 0` once settled, and how many were
    /// enqueued is for each test to compare with what it wrote.)
    pub fn outcomes_within_enqueued(&self) -> bool {
        self.applied + self.error + self.diverged + self.dropped + self.in_flight == self.enqueued
    }

    /// Writes that did not apply on the mirror (each one journaled).
    pub fn not_applied(&self) -> u64 {
        self.error + self.diverged + self.dropped
    }
}

impl std::fmt::Display for MirrorStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "enqueued {} = applied {} + error {} + diverged {} + dropped {} + in flight {}{}",
            self.enqueued,
            self.applied,
            self.error,
            self.diverged,
            self.dropped,
            self.in_flight,
            if self.outcomes_within_enqueued() { "" } else { "  (MORE OUTCOMES THAN WRITES)" }
        )
    }
}

/// Samples `/status` on a thread of its own (every `every`, for at most `max`), checking the
/// mirror accounting identity of both directions at every sample.
pub struct StatusWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Watched>,
}

/// What a [`StatusWatch`] saw.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub samples: u64,
    pub max_in_flight: u64,
    /// Samples where the identity did not hold (the first 20).
    pub violations: Vec<String>,
}

impl StatusWatch {
    pub fn start(admin_port: u16) -> StatusWatch {
        StatusWatch::start_with(admin_port, Duration::from_millis(100), Duration::from_secs(300))
    }

    pub fn start_with(admin_port: u16, every: Duration, max: Duration) -> StatusWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut w = Watched::default();
            let deadline = Instant::now() + max;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let status = super::http::status(admin_port);
                w.samples += 1;
                for side in [Side::Source, Side::Target] {
                    let st = MirrorStats::of(&status, side);
                    w.max_in_flight = w.max_in_flight.max(st.in_flight);
                    if !st.outcomes_within_enqueued() && w.violations.len() < 20 {
                        w.violations.push(format!("towards the {}: {st}", side.name()));
                    }
                }
                // The sampling period (not synchronisation).
                std::thread::sleep(every);
            }
            w
        });
        StatusWatch { stop, handle }
    }

    /// Stops sampling and returns what was seen (re-raising a panic of the sampler).
    pub fn stop(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Polls `f` (backing off from 2 to 50 ms) until it returns true or `within` has passed;
/// returns whether it did. Unlike [`super::wait_until`], running out of time is an answer,
/// not a failure: for conditions whose failure the caller reports itself.
pub fn poll_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if f() {
            return true;
        }
        let elapsed = start.elapsed();
        if elapsed >= within {
            return false;
        }
        std::thread::sleep(pause.min(within - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
