//! A backend that is a Redis Cluster (`redis+cluster://seed1,seed2`), seen by clients as one
//! plain Redis.
//!
//! - **Topology.** The slot map comes from `CLUSTER SLOTS`, asked of a known primary or a
//!   seed. It is refreshed every few seconds, and at once when a node redirects a command
//!   (`-MOVED`), says the cluster is down, or cannot be reached.
//! - **Routing.** A command goes to the primary serving its first key's slot, over a pooled,
//!   pipelined connection per node (one set per lane, so one client's commands to one node
//!   keep their order). Keyless commands go to any primary.
//! - **Redirects.** `-MOVED` is retried on the named node, `-ASK` with `ASKING` first,
//!   `-TRYAGAIN` and `-CLUSTERDOWN` after a short pause; a client sees the final answer only.
//! - **Multi-key commands** (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) whose keys span slots
//!   are split per slot and the replies merged, as the proxy does between its two backends.
//! - **Whole-keyspace commands.** DBSIZE and KEYS ask every primary and add up; FLUSHALL,
//!   FLUSHDB, SCRIPT LOAD and SCRIPT FLUSH run on every primary; SCAN walks the primaries one
//!   after the other behind one cursor (`node cursor * 1024 + primary index`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::conn::{self, Handshake};
use super::pool::NodeConn;
use super::{BackendError, BackendSettings, Health, Job, Reply, Sink};
use crate::client::merge::{self, MergeKind, Part};
use crate::proto::commands::CommandTable;
use crate::proto::reply::{self, Protocol};
use crate::proto::value::{self, Value};

const SLOTS: usize = 16384;
/// A slot no known node serves.
const NONE: u32 = u32::MAX;
/// How many times one command follows redirects before its last answer is returned.
const MAX_ATTEMPTS: u32 = 12;
/// The slot map is asked for again this often even when nothing suggests a change.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// SCAN cursors carry the primary's index in their low part.
const SCAN_SPREAD: u64 = 1024;

/// Which primary serves each slot.
struct SlotMap {
    /// Bumped whenever the map changes.
    version: u64,
    slots: Box<[u32]>,
    /// Node ids of the primaries, ordered by the first slot they serve (the SCAN order).
    primaries: Vec<u32>,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap { version: 0, slots: vec![NONE; SLOTS].into_boxed_slice(), primaries: Vec::new() }
    }
}

/// The cluster: seeds, slot map and the registry of nodes ever seen.
pub struct Cluster {
    settings: Arc<BackendSettings>,
    seeds: Vec<String>,
    map: ArcSwap<SlotMap>,
    /// Node id -> settings for that node (ids are indices and never reused).
    nodes: RwLock<Vec<Arc<BackendSettings>>>,
    by_addr: Mutex<HashMap<String, u32>>,
    health: Arc<Health>,
    wanted: tokio::sync::Notify,
    /// Held while the map is being fetched; holds the last failure, which callers that
    /// waited for that fetch get instead of fetching again.
    refreshing: tokio::sync::Mutex<Option<BackendError>>,
    generation: AtomicU64,
    started: AtomicBool,
    redirects: AtomicU64,
    /// The proxy's command table (with what the backends' `COMMAND` replies added, e.g.
    /// module commands), so keys are found the way the proxy finds them; the built-in table
    /// until it is given one (the migration tools never do).
    commands: OnceLock<Arc<ArcSwap<CommandTable>>>,
    /// Every connection set made for this cluster, so nodes that stop being primaries can
    /// be let go.
    lanes: Mutex<Vec<std::sync::Weak<Lanes>>>,
}

impl Cluster {
    pub fn new(settings: Arc<BackendSettings>, seeds: Vec<String>, health: Arc<Health>) -> Arc<Cluster> {
        Arc::new(Cluster {
            settings,
            seeds,
            map: ArcSwap::from_pointee(SlotMap::empty()),
            nodes: RwLock::new(Vec::new()),
            by_addr: Mutex::new(HashMap::new()),
            health,
            wanted: tokio::sync::Notify::new(),
            refreshing: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            started: AtomicBool::new(false),
            redirects: AtomicU64::new(0),
            lanes: Mutex::new(Vec::new()),
            commands: OnceLock::new(),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.settings.name
    }

    /// Redirects (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) followed so far.
    pub fn redirects(&self) -> u64 {
        self.redirects.load(Ordering::Relaxed)
    }

    /// The primaries' addresses, in SCAN order.
    pub fn primaries(&self) -> Vec<String> {
        self.primaries_of(&self.map.load())
    }

    /// Routes by `table` from now on (the proxy's live command table).
    pub fn use_commands(&self, table: &Arc<ArcSwap<CommandTable>>) {
        let _ = self.commands.set(table.clone());
    }

    /// The command table to find keys with: the proxy's, else the built-in one.
    fn table(&self) -> TableRef {
        match self.commands.get() {
            Some(t) => TableRef::Live(t.load()),
            None => TableRef::Builtin(builtin()),
        }
    }

    /// Starts the task that keeps the slot map current (once).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                {
                    let Some(me) = weak.upgrade() else { return };
                    if let Err(e) = me.refresh().await {
                        tracing::warn!(backend = %me.settings.name, error = %e, "cluster: slot map refresh failed");
                    }
                    tokio::select! {
                        _ = me.wanted.notified() => {}
                        _ = tokio::time::sleep(REFRESH_EVERY) => {}
                    }
                }
                // At most ten refreshes a second, however many redirects ask for one.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Asks for a refresh of the slot map soon.
    fn want_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Waits until a slot map is known (loading it now if none is).
    pub async fn ready(self: &Arc<Self>) -> Result<(), BackendError> {
        self.start();
        if !self.map.load().primaries.is_empty() {
            return Ok(());
        }
        self.refresh().await
    }

    /// Settings for connecting to any one primary (for Pub/Sub and the command table).
    pub async fn any_node(self: &Arc<Self>) -> Result<BackendSettings, BackendError> {
        self.ready().await?;
        let map = self.map.load();
        let id = map.primaries.first().copied().ok_or_else(|| self.unavailable("no primary known"))?;
        Ok(self.node(id).as_ref().clone())
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> BackendError {
        BackendError::unavailable(&self.settings.name, why)
    }

    fn node(&self, id: u32) -> Arc<BackendSettings> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes[id as usize].clone()
    }

    /// The id of the node at `addr`, registering it the first time it is seen.
    fn node_id(&self, addr: &str) -> u32 {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = by_addr.get(addr) {
            return id;
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let id = nodes.len() as u32;
        nodes.push(Arc::new(self.settings.for_node(addr)));
        by_addr.insert(addr.to_string(), id);
        id
    }

    /// The primary for `slot`, or any primary when the slot is not covered (it will
    /// redirect or say the cluster is down, and the map will be refreshed).
    fn slot_node(&self, map: &SlotMap, slot: u16, lane: usize) -> Option<u32> {
        match map.slots[slot as usize] {
            NONE => {
                self.want_refresh();
                pick(&map.primaries, lane)
            }
            id => Some(id),
        }
    }

    /// Reloads the slot map from the first primary or seed that answers.
    pub async fn refresh(&self) -> Result<(), BackendError> {
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.refreshing.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // Someone else fetched the map while this call waited: share its outcome.
            return match &*last {
                Some(err) => Err(err.clone()),
                None => Ok(()),
            };
        }
        let mut candidates = self.primaries();
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut errors = Vec::new();
        for addr in candidates {
            match fetch_slots(&self.settings.for_node(&addr)).await {
                Ok(ranges) if !ranges.is_empty() => {
                    self.install(&ranges);
                    *last = None;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.health.set_up();
                    return Ok(());
                }
                Ok(_) => errors.push(format!("{addr}: no slots assigned")),
                Err(e) => errors.push(e),
            }
        }
        let err = self.unavailable(format!("cluster slot map: {}", errors.join("; ")));
        self.health.set_down(&err);
        *last = Some(err.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        Err(err)
    }

    fn install(&self, ranges: &[(u16, u16, String)]) {
        let mut map = SlotMap::empty();
        // Primaries are ordered by the first slot they serve, which a failover (a replica with
        // another address taking over) does not change: SCAN cursors stay valid across it.
        let mut starts = Vec::with_capacity(ranges.len());
        for (start, end, addr) in ranges {
            let id = self.node_id(addr);
            for slot in *start..=*end {
                map.slots[slot as usize] = id;
            }
            starts.push((*start, id));
        }
        map.primaries = by_first_slot(starts);
        let old = self.map.load();
        map.version = old.version;
        if old.primaries != map.primaries || old.slots != map.slots {
            map.version += 1;
            let covered = map.slots.iter().filter(|&&n| n != NONE).count();
            tracing::info!(
                backend = %self.settings.name,
                primaries = %self.primaries_of(&map).join(","),
                covered,
                "cluster: slot map updated"
            );
        }
        let primaries = map.primaries.clone();
        self.map.store(Arc::new(map));
        // Close the connections to nodes that no longer serve slots (a failed primary, a
        // removed shard); a redirect to one of them opens them again.
        let mut sets = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|w| match w.upgrade() {
            Some(lanes) => {
                lanes.keep_only(&primaries);
                true
            }
            None => false,
        });
    }

    fn primaries_of(&self, map: &SlotMap) -> Vec<String> {
        map.primaries.iter().map(|&n| self.node(n).addr.clone()).collect()
    }

    /// Where a command (or a block of commands) goes.
    fn route(&self, payload: &Bytes, replies: u32, lane: usize) -> Route {
        self.route_in(&self.map.load(), payload, replies, lane)
    }

    /// [`Cluster::route`] on a given map.
    fn route_in(&self, map: &SlotMap, payload: &Bytes, replies: u32, lane: usize) -> Route {
        let any = || match pick(&map.primaries, lane) {
            Some(n) => Route::One(n),
            None => Route::Reply(BackendError::unavailable(&self.settings.name, "no cluster primary known").to_resp()),
        };
        let table = self.table();
        let table = table.get();
        let Some((argv, _)) = parse_command(payload) else { return any() };
        if argv.len() == 2 && argv[0].eq_ignore_ascii_case(b"select") && argv[1] != b"0" {
            // A mirrored write from another database (`SELECT n; cmd; SELECT 0`) must not
            // land in database 0: refuse it whole, so it is counted as failed.
            return Route::Reply(reply::error("ERR tandem: a Redis Cluster has only database 0"));
        }
        if replies != 1 {
            // A MULTI block or a SELECT-wrapped command: the first key decides.
            let mut rest = &payload[..];
            while let Some((argv, used)) = parse_command(rest) {
                rest = &rest[used..];
                if let Some(info) = table.lookup(&argv) {
                    if let Some(&k) = info.key_indices(&argv).first() {
                        return self.slot_node(map, crate::route::slot(argv[k]), lane).map_or_else(any, Route::One);
                    }
                }
            }
            return any();
        }
        let Some(info) = table.lookup(&argv) else { return any() };
        let keys = info.key_indices(&argv);
        if keys.is_empty() {
            return match &*info.name {
                "dbsize" => Route::All(Fan::Sum, map.primaries.clone()),
                "keys" => Route::All(Fan::Concat, map.primaries.clone()),
                "flushall" | "flushdb" | "script|flush" | "function|delete" | "function|flush" | "function|restore" => {
                    Route::All(Fan::AllOk, map.primaries.clone())
                }
                "script|load" | "function|load" => Route::All(Fan::Same, map.primaries.clone()),
                "scan" => self.route_scan(map, &argv),
                _ => any(),
            };
        }
        let first = crate::route::slot(argv[keys[0]]);
        let kind = MergeKind::for_command(&info.name);
        if kind.is_none() || keys.iter().all(|&k| crate::route::slot(argv[k]) == first) {
            return self.slot_node(map, first, lane).map_or_else(any, Route::One);
        }
        // Keys in several slots: one command per slot.
        let kind = kind.unwrap_or(MergeKind::Sum);
        let with_value = kind == MergeKind::AllOk;
        // (slot, arguments, positions of its keys among all keys)
        type Group<'a> = (u16, Vec<&'a [u8]>, Vec<usize>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (n, &k) in keys.iter().enumerate() {
            let slot = crate::route::slot(argv[k]);
            let at = match groups.iter().position(|g| g.0 == slot) {
                Some(at) => at,
                None => {
                    groups.push((slot, vec![argv[0]], Vec::new()));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            g.1.push(argv[k]);
            if with_value {
                if let Some(v) = argv.get(k + 1) {
                    g.1.push(v);
                }
            }
            g.2.push(n);
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (slot, args, positions) in groups {
            let Some(node) = self.slot_node(map, slot, lane) else { return any() };
            parts.push((node, reply::command(&args), positions));
        }
        Route::Split { kind, total: keys.len(), parts }
    }

    fn route_scan(&self, map: &SlotMap, argv: &[&[u8]]) -> Route {
        let bad = || Route::Reply(reply::error("ERR invalid cursor"));
        let Some(cursor) = argv.get(1).and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok()) else {
            return bad();
        };
        let (index, inner) = split_scan_cursor(cursor);
        let Some(&node) = map.primaries.get(index) else { return bad() };
        let inner = inner.to_string();
        let mut args: Vec<&[u8]> = argv.to_vec();
        args[1] = inner.as_bytes();
        Route::Scan { node, index, count: map.primaries.len(), payload: reply::command(&args) }
    }
}

/// The distinct nodes of `(first slot of a range, node)` pairs, ordered by the first slot
/// each serves: the SCAN order, which a failover (a replica with another address taking
/// over the same slots) does not change.
pub(crate) fn by_first_slot<N: PartialEq + Ord>(mut starts: Vec<(u16, N)>) -> Vec<N> {
    starts.sort();
    let mut out: Vec<N> = Vec::new();
    for (_, n) in starts {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The cursor to hand back after primary `index` (of `count`) answered SCAN with `inner`:
/// the same primary's next cursor, the next primary's start, or 0 after the last; `None`
/// when `inner` is too large to carry the index.
pub(crate) fn next_scan_cursor(inner: u64, index: usize, count: usize) -> Option<u64> {
    if inner != 0 {
        inner.checked_mul(SCAN_SPREAD).map(|n| n + index as u64)
    } else if index + 1 < count {
        Some(index as u64 + 1)
    } else {
        Some(0)
    }
}

/// A client's SCAN cursor as (primary index, that primary's own cursor).
pub(crate) fn split_scan_cursor(cursor: u64) -> (usize, u64) {
    ((cursor % SCAN_SPREAD) as usize, cursor / SCAN_SPREAD)
}

/// A primary for keyless work, spread over the lanes.
fn pick(primaries: &[u32], lane: usize) -> Option<u32> {
    (!primaries.is_empty()).then(|| primaries[lane % primaries.len()])
}

/// A command table to read: the proxy's current one, or the built-in one.
enum TableRef {
    Live(arc_swap::Guard<Arc<CommandTable>>),
    Builtin(&'static CommandTable),
}

impl TableRef {
    fn get(&self) -> &CommandTable {
        match self {
            TableRef::Live(t) => t,
            TableRef::Builtin(t) => t,
        }
    }
}

/// The built-in command table, built once (key positions for routing).
pub(crate) fn builtin() -> &'static CommandTable {
    static TABLE: OnceLock<CommandTable> = OnceLock::new();
    TABLE.get_or_init(CommandTable::builtin)
}

/// How the replies of a command sent to every primary combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fan {
    /// DBSIZE: add up.
    Sum,
    /// KEYS: one array of every node's elements.
    Concat,
    /// FLUSHALL: `+OK` when every node said so.
    AllOk,
    /// SCRIPT LOAD: every node answers the same; the first error wins.
    Same,
}

enum Route {
    One(u32),
    Split {
        kind: MergeKind,
        total: usize,
        parts: Vec<(u32, Bytes, Vec<usize>)>,
    },
    All(Fan, Vec<u32>),
    Scan {
        node: u32,
        index: usize,
        count: usize,
        payload: Bytes,
    },
    /// Answered without a backend.
    Reply(Bytes),
}

/// Why a node declined a command, and what to do about it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    Moved(String),
    Ask(String),
    /// TRYAGAIN, CLUSTERDOWN, or a transaction aborted (possibly by a MOVED inside it).
    Later,
}

impl Redirect {
    /// `aborted_too`: count an aborted transaction (a block of several commands, tried once
    /// before) as a reason to try again.
    fn of(frame: &[u8], aborted_too: bool) -> Option<Redirect> {
        if frame.first() != Some(&b'-') {
            return None;
        }
        Redirect::of_text(frame.get(1..frame.len().saturating_sub(2))?, aborted_too)
    }

    /// The same, from an error's text (without the `-` and the line end).
    pub(crate) fn of_text(text: &[u8], aborted_too: bool) -> Option<Redirect> {
        let mut words = std::str::from_utf8(text).ok()?.split(' ');
        match words.next()? {
            "MOVED" => Some(Redirect::Moved(words.nth(1)?.to_string())),
            "ASK" => Some(Redirect::Ask(words.nth(1)?.to_string())),
            "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Later),
            "EXECABORT" if aborted_too => Some(Redirect::Later),
            _ => None,
        }
    }
}

/// A job as the client made it, kept so it can be sent again after a redirect.
struct Pending {
    payload: Bytes,
    replies: u32,
    pick: u32,
    sink: Sink,
    attempt: u32,
}

/// A set of connections to every node: `width` lanes of pipelined connections, each with a
/// queue of `capacity` jobs. A backend has one set per protocol for clients, and one for each
/// mirror queue.
pub struct Lanes {
    cluster: Arc<Cluster>,
    proto: Protocol,
    capacity: usize,
    width: usize,
    conns: RwLock<Vec<Option<Arc<[NodeConn]>>>>,
    /// Jobs waiting for the first slot map.
    waiting: std::sync::atomic::AtomicUsize,
    /// Per lane: the ordered queue of work to send again.
    retries: Box<[Retries]>,
}

#[derive(Default)]
struct Retries {
    tx: OnceLock<mpsc::UnboundedSender<Again>>,
    /// Items in the queue or being sent.
    pending: std::sync::atomic::AtomicUsize,
    /// New work goes through the queue while set.
    hold: AtomicBool,
    /// Commands sent on this lane and not yet answered.
    inflight: std::sync::atomic::AtomicUsize,
    /// Signalled when `inflight` drops to 0.
    idle: tokio::sync::Notify,
    /// The map version this lane last routed on.
    seen: AtomicU64,
}

/// Work for a lane's retry task.
enum Again {
    Redirected(Redirect, Pending),
    Fresh(Job),
}

impl Lanes {
    pub fn new(cluster: Arc<Cluster>, proto: Protocol, capacity: usize, width: usize) -> Arc<Lanes> {
        cluster.start();
        let lanes = Arc::new(Lanes {
            cluster,
            proto,
            capacity,
            width: width.max(1),
            conns: RwLock::new(Vec::new()),
            waiting: Default::default(),
            retries: (0..width.max(1)).map(|_| Retries::default()).collect(),
        });
        let mut sets = lanes.cluster.lanes.lock().unwrap_or_else(|p| p.into_inner());
        sets.push(Arc::downgrade(&lanes));
        drop(sets);
        lanes
    }

    /// Drops the connections to nodes not in `primaries`.
    fn keep_only(&self, primaries: &[u32]) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        for (id, set) in conns.iter_mut().enumerate() {
            if set.is_some() && !primaries.contains(&(id as u32)) {
                *set = None;
            }
        }
    }

    fn conn(&self, node: u32, lane: usize) -> NodeConn {
        if let Some(Some(set)) = self.conns.read().unwrap_or_else(|p| p.into_inner()).get(node as usize) {
            return set[lane % set.len()].clone();
        }
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        if conns.len() <= node as usize {
            conns.resize(node as usize + 1, None);
        }
        let set = conns[node as usize].get_or_insert_with(|| {
            let settings = self.cluster.node(node);
            (0..self.width)
                // Each node's connections keep their own health: the backend is up when its
                // slot map can be fetched, not down whenever some node is (a failed primary
                // stays in the registry after its replica took over).
                .map(|_| NodeConn::spawn_with(settings.clone(), self.proto, Arc::new(Health::default()), self.capacity))
                .collect()
        });
        set[lane % set.len()].clone()
    }

    /// Lane `lane`'s connection to every node opened so far.
    pub(super) fn node_conns(&self, lane: usize) -> Vec<NodeConn> {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        conns.iter().flatten().map(|set| set[lane % set.len()].clone()).collect()
    }

    pub(super) async fn send(self: &Arc<Self>, job: Job, lane: usize) {
        if self.redirecting(lane) {
            // Earlier commands of this lane are being redirected: queue behind them.
            self.enqueue(lane, Again::Fresh(job));
            return;
        }
        let mut map = self.cluster.map.load();
        if map.primaries.is_empty() {
            if let Err(e) = self.cluster.ready().await {
                job.fail(&e);
                return;
            }
            map = self.cluster.map.load();
        }
        if self.map_moved(lane, &map) {
            // Commands sent on the old map may still be on their way to a node that will
            // redirect them: nothing routed on the new map may overtake them.
            self.enqueue(lane, Again::Fresh(job));
            return;
        }
        let route = self.cluster.route_in(&map, &job.payload, job.replies, lane);
        drop(map);
        for (node, job) in self.issue(route, job, lane) {
            self.conn(node, lane).send(job).await;
        }
    }

    /// Queues a job only if every connection it needs has room; gives it back otherwise.
    pub(super) fn try_send(self: &Arc<Self>, job: Job, lane: usize) -> Result<(), Job> {
        if self.redirecting(lane) {
            self.enqueue(lane, Again::Fresh(job));
            return Ok(());
        }
        let map = self.cluster.map.load();
        if map.primaries.is_empty() {
            // No map yet (the first moments after start): up to a queue's worth of jobs wait
            // for it; beyond that they are refused (the caller counts them as dropped).
            if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(job);
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.send(job, lane).await;
                me.waiting.fetch_sub(1, Ordering::AcqRel);
            });
            return Ok(());
        }
        if self.map_moved(lane, &map) {
            self.enqueue(lane, Again::Fresh(job));
            return Ok(());
        }
        let route = self.cluster.route_in(&map, &job.payload, job.replies, lane);
        drop(map);
        let nodes: SmallVec<[u32; 4]> = match &route {
            Route::One(n) => smallvec::smallvec![*n],
            Route::Split { parts, .. } => parts.iter().map(|p| p.0).collect(),
            Route::All(_, nodes) => nodes.iter().copied().collect(),
            Route::Scan { node, .. } => smallvec::smallvec![*node],
            Route::Reply(_) => SmallVec::new(),
        };
        let conns: SmallVec<[NodeConn; 4]> = nodes.iter().map(|&n| self.conn(n, lane)).collect();
        if !conns.iter().all(NodeConn::has_room) {
            return Err(job);
        }
        // `issue` yields the jobs in the order of `nodes`.
        for ((_, job), conn) in self.issue(route, job, lane).into_iter().zip(&conns) {
            if let Err(job) = conn.try_send(job) {
                // Lost a race for the last slot of the queue: count it as refused.
                job.fail(&BackendError::Overloaded { backend: self.cluster.settings.name.clone(), what: "queue" });
            }
        }
        Ok(())
    }

    /// Turns a routed job into the jobs to send, each wrapped to follow redirects.
    fn issue(self: &Arc<Self>, route: Route, job: Job, lane: usize) -> SmallVec<[(u32, Job); 1]> {
        let Job { payload, replies, pick, sink } = job;
        match route {
            Route::One(node) => {
                let p = Pending { payload, replies, pick, sink, attempt: 0 };
                smallvec::smallvec![(node, self.guard(p, lane, false))]
            }
            Route::Reply(frame) => {
                sink.deliver(Ok(frame));
                SmallVec::new()
            }
            Route::Split { kind, total, parts } => {
                let gather = Gather::new(parts.len(), sink, move |replies| merge::merge(kind, total, replies));
                parts
                    .into_iter()
                    .map(|(node, payload, positions)| {
                        let g = gather.clone();
                        let sink = Sink::Callback(Box::new(move |reply| g.put(Part { positions, reply })));
                        (node, self.guard(Pending { payload, replies: 1, pick: 0, sink, attempt: 0 }, lane, false))
                    })
                    .collect()
            }
            Route::All(fan, nodes) => {
                let gather = Gather::new(nodes.len(), sink, move |replies| combine(fan, replies));
                nodes
                    .into_iter()
                    .map(|node| {
                        let g = gather.clone();
                        let sink = Sink::Callback(Box::new(move |reply| g.put(Part { positions: Vec::new(), reply })));
                        let p = Pending { payload: payload.clone(), replies: 1, pick: 0, sink, attempt: 0 };
                        (node, self.guard(p, lane, false))
                    })
                    .collect()
            }
            Route::Scan { node, index, count, payload } => {
                let sink = Sink::Callback(Box::new(move |reply: Reply| {
                    sink.deliver(reply.map(|frame| scan_reply(&frame, index, count)));
                }));
                // A SCAN is not retried elsewhere: its cursor belongs to this node.
                smallvec::smallvec![(node, Job { payload, replies: 1, pick: 0, sink })]
            }
        }
    }

    /// The job to send for `p`, whose reply is checked for redirects before it is delivered.
    fn guard(self: &Arc<Self>, p: Pending, lane: usize, asking: bool) -> Job {
        let (payload, replies, pick) = if asking {
            let mut buf = BytesMut::with_capacity(p.payload.len() + 20);
            buf.put(reply::command(&["ASKING"]));
            buf.put(p.payload.clone());
            (buf.freeze(), p.replies + 1, p.pick + 1)
        } else {
            (p.payload.clone(), p.replies, p.pick)
        };
        let me = self.clone();
        self.retries[lane % self.retries.len()].inflight.fetch_add(1, Ordering::AcqRel);
        let sink = Sink::Callback(Box::new(move |reply: Reply| {
            let redirect = match &reply {
                Ok(frame) if p.attempt + 1 < MAX_ATTEMPTS => Redirect::of(frame, p.replies > 1 && p.attempt == 0),
                Ok(_) => None,
                Err(_) => {
                    // A node that cannot be reached may have failed over or left.
                    me.cluster.want_refresh();
                    None
                }
            };
            match redirect {
                None => {
                    me.answered(lane);
                    p.sink.deliver(reply)
                }
                Some(r) => {
                    me.cluster.redirects.fetch_add(1, Ordering::Relaxed);
                    // Queued before it counts as answered: the retry task, once nothing is
                    // in flight, finds every redirect already in its queue.
                    me.enqueue(lane, Again::Redirected(r, p));
                    me.answered(lane);
                }
            }
        }));
        Job { payload, replies, pick, sink }
    }

    /// Whether lane `lane` is holding new work back behind redirected work.
    fn redirecting(&self, lane: usize) -> bool {
        self.retries[lane % self.retries.len()].hold.load(Ordering::Acquire)
    }

    /// Whether the slot map changed since this lane last sent directly while commands it
    /// sent are still unanswered (they may reach a node that then redirects them, and must
    /// not be overtaken by later commands routed on the new map).
    fn map_moved(&self, lane: usize, map: &SlotMap) -> bool {
        let r = &self.retries[lane % self.retries.len()];
        let now = map.version;
        if r.seen.load(Ordering::Acquire) == now {
            return false;
        }
        if r.inflight.load(Ordering::Acquire) > 0 {
            return true;
        }
        r.seen.store(now, Ordering::Release);
        false
    }

    fn answered(&self, lane: usize) {
        let r = &self.retries[lane % self.retries.len()];
        if r.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            r.idle.notify_waiters();
        }
    }

    /// Waits (up to the command timeout) until every command the lane sent is answered.
    async fn quiet(&self, lane: usize) {
        let r = &self.retries[lane % self.retries.len()];
        let deadline = tokio::time::sleep(self.cluster.settings.command_timeout);
        tokio::pin!(deadline);
        loop {
            let idle = r.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if r.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                _ = &mut idle => {}
                _ = &mut deadline => return,
            }
        }
    }

    /// Queues work on the lane's retry task, which sends it in order: redirected commands in
    /// the order their replies came, and commands sent meanwhile behind them, so one client's
    /// commands to a moved slot are not reordered by the move.
    fn enqueue(self: &Arc<Self>, lane: usize, again: Again) {
        let r = &self.retries[lane % self.retries.len()];
        r.pending.fetch_add(1, Ordering::AcqRel);
        r.hold.store(true, Ordering::Release);
        let tx = r.tx.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Again>();
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    let Some(me) = weak.upgrade() else { return };
                    // Once everything sent earlier is answered, every redirect among it is
                    // queued: send those again first, in order, then the work held back.
                    me.quiet(lane).await;
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let n = batch.len();
                    let mut fresh = Vec::new();
                    for again in batch {
                        match again {
                            Again::Redirected(r, p) => me.retry(r, p, lane).await,
                            Again::Fresh(job) => fresh.push(job),
                        }
                    }
                    // One map for the whole batch: all of it goes where the first goes, in order.
                    let map = me.cluster.map.load_full();
                    me.retries[lane % me.retries.len()].seen.store(map.version, Ordering::Release);
                    for job in fresh {
                        let route = me.cluster.route_in(&map, &job.payload, job.replies, lane);
                        for (node, job) in me.issue(route, job, lane) {
                            me.conn(node, lane).send(job).await;
                        }
                    }
                    let r = &me.retries[lane % me.retries.len()];
                    r.pending.fetch_sub(n, Ordering::AcqRel);
                    // Go back to sending directly only when nothing of this lane is in
                    // flight or queued, so nothing sent later can overtake it.
                    me.quiet(lane).await;
                    if r.pending.load(Ordering::Acquire) == 0 {
                        r.hold.store(false, Ordering::Release);
                        if r.pending.load(Ordering::Acquire) > 0 {
                            r.hold.store(true, Ordering::Release);
                        }
                    }
                }
            });
            tx
        });
        if let Err(mpsc::error::SendError(again)) = tx.send(again) {
            r.pending.fetch_sub(1, Ordering::AcqRel);
            let err = self.cluster.unavailable("shutting down");
            match again {
                Again::Redirected(_, p) => p.sink.deliver(Err(err)),
                Again::Fresh(job) => job.fail(&err),
            }
        }
    }

    /// Waits (up to the command timeout) until the lane has no redirected work left, so a
    /// fence sent afterwards comes after every earlier command.
    pub(super) async fn settle(&self, lane: usize) {
        let deadline = tokio::time::Instant::now() + self.cluster.settings.command_timeout;
        while self.redirecting(lane) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn retry(self: &Arc<Self>, redirect: Redirect, mut p: Pending, lane: usize) {
        p.attempt += 1;
        match redirect {
            Redirect::Moved(addr) => {
                self.cluster.want_refresh();
                let node = self.cluster.node_id(&addr);
                let job = self.guard(p, lane, false);
                self.conn(node, lane).send(job).await;
            }
            Redirect::Ask(addr) => {
                let node = self.cluster.node_id(&addr);
                let job = self.guard(p, lane, true);
                self.conn(node, lane).send(job).await;
            }
            Redirect::Later => {
                self.cluster.want_refresh();
                tokio::time::sleep(Duration::from_millis(10 * u64::from(p.attempt))).await;
                if p.replies > 1 {
                    // An aborted transaction may have met a MOVED: route it on a fresh map.
                    let _ = self.cluster.refresh().await;
                }
                match self.cluster.route(&p.payload, p.replies, lane) {
                    Route::One(node) => {
                        let job = self.guard(p, lane, false);
                        self.conn(node, lane).send(job).await;
                    }
                    // Only single-node routes are ever retried; anything else is answered.
                    _ => p.sink.deliver(Err(self.cluster.unavailable("cluster topology changed"))),
                }
            }
        }
    }
}

/// Collects the replies of the parts of one command and delivers their combination.
struct Gather<F> {
    state: Mutex<(Vec<Part>, Option<Sink>)>,
    left: AtomicU32,
    combine: F,
}

impl<F: Fn(Vec<Part>) -> Bytes + Send + Sync + 'static> Gather<F> {
    fn new(n: usize, sink: Sink, combine: F) -> Arc<Gather<F>> {
        Arc::new(Gather {
            state: Mutex::new((Vec::with_capacity(n), Some(sink))),
            left: AtomicU32::new(n as u32),
            combine,
        })
    }

    fn put(&self, part: Part) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.push(part);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let parts = std::mem::take(&mut state.0);
            let sink = state.1.take();
            drop(state);
            if let Some(sink) = sink {
                sink.deliver(Ok((self.combine)(parts)));
            }
        }
    }
}

/// Combines the replies of a command every primary ran.
fn combine(fan: Fan, parts: Vec<Part>) -> Bytes {
    match fan {
        Fan::Sum => merge::merge(MergeKind::Sum, 0, parts),
        Fan::AllOk => merge::merge(MergeKind::AllOk, 0, parts),
        Fan::Same => {
            let mut first = None;
            for p in parts {
                match p.reply {
                    Err(e) => return e.to_resp(),
                    Ok(f) if reply::is_error(&f) => return f,
                    Ok(f) => {
                        first.get_or_insert(f);
                    }
                }
            }
            first.unwrap_or_else(reply::ok)
        }
        Fan::Concat => {
            let mut items = Vec::new();
            for p in parts {
                match p.reply {
                    Err(e) => return e.to_resp(),
                    Ok(f) if reply::is_error(&f) => return f,
                    Ok(f) => match crate::mirror::split_array(&f) {
                        Some(mut v) => items.append(&mut v),
                        None => return reply::error("ERR tandem: malformed reply from a cluster node"),
                    },
                }
            }
            let mut out = BytesMut::new();
            out.put_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in items {
                out.put(i);
            }
            out.freeze()
        }
    }
}

/// Rewrites a node's SCAN reply so its cursor names the node too: the next cursor on the
/// same node, or the start of the next node once this one is done, or 0 after the last.
fn scan_reply(frame: &Bytes, index: usize, count: usize) -> Bytes {
    let Some(parts) = crate::mirror::split_array(frame) else { return frame.clone() };
    if parts.len() != 2 {
        return frame.clone();
    }
    let inner = value::parse(&parts[0])
        .and_then(|v| v.as_bytes().and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok()));
    let Some(inner) = inner else { return frame.clone() };
    let Some(next) = next_scan_cursor(inner, index, count) else {
        return reply::error("ERR tandem: cluster SCAN cursor out of range");
    };
    let mut out = BytesMut::with_capacity(frame.len() + 8);
    out.put_slice(b"*2\r\n");
    reply::put_bulk(&mut out, next.to_string().as_bytes());
    out.put(parts[1].clone());
    out.freeze()
}

/// Splits the first RESP command in `buf` into its arguments; returns them and the bytes
/// used. `None` for anything but a complete array of bulk strings.
fn parse_command(buf: &[u8]) -> Option<(SmallVec<[&[u8]; 8]>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(i64, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(buf.get(at + 1..end)?).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (n, mut at) = line(buf, 0)?;
    let mut argv = SmallVec::new();
    for _ in 0..n.max(0) {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len, start) = line(buf, at)?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        argv.push(buf.get(start..end)?);
        at = end + 2;
    }
    (at <= buf.len()).then_some((argv, at))
}

/// `CLUSTER SLOTS` from one node: `(first slot, last slot, primary address)` ranges.
pub(crate) async fn fetch_slots(settings: &BackendSettings) -> Result<Vec<(u16, u16, String)>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", settings.addr);
    let (mut stream, _) = conn::connect(settings, &Handshake::pooled(Protocol::Resp2)).await.map_err(|e| fail(&e))?;
    let exchange = async {
        stream.write_all(&reply::command(&["CLUSTER", "SLOTS"])).await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Ok(Some(len)) = reply::frame_len(&buf) {
                return Ok(buf.split_to(len).freeze());
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
        }
    };
    let frame = match tokio::time::timeout(settings.command_timeout, exchange).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(fail(&e)),
        Err(_) => return Err(fail(&"CLUSTER SLOTS timed out")),
    };
    let asked_host = settings.addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or("");
    parse_slots(&frame, asked_host).ok_or_else(|| fail(&format!("unexpected CLUSTER SLOTS reply {:?}", short(&frame))))
}

fn short(frame: &[u8]) -> String {
    String::from_utf8_lossy(&frame[..frame.len().min(120)]).into_owned()
}

/// Reads a `CLUSTER SLOTS` reply. An empty host means "the node you asked".
fn parse_slots(frame: &Bytes, asked_host: &str) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = value::parse(frame)? else { return None };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(r) = r else { return None };
        let start = u16::try_from(r.first()?.as_int()?).ok()?;
        let end = u16::try_from(r.get(1)?.as_int()?).ok()?;
        let Value::Array(primary) = r.get(2)? else { return None };
        let host = std::str::from_utf8(primary.first()?.as_bytes()?).ok()?;
        let host = if host.is_empty() || host == "?" { asked_host } else { host };
        let port = u16::try_from(primary.get(1)?.as_int()?).ok()?;
        if usize::from(end) >= SLOTS || start > end {
            return None;
        }
        out.push((start, end, crate::config::url::join_host_port(host, port)));
    }
    Some(out)
}

/// A client's dedicated connection to a cluster: one connection per node, opened when a
/// command first needs that node.
pub struct ClusterDedicated {
    cluster: Arc<Cluster>,
    pushes: Option<mpsc::UnboundedSender<Bytes>>,
    conns: tokio::sync::Mutex<Vec<(u32, mpsc::Sender<Job>)>>,
    /// The node keyless commands go to: the last one used.
    home: AtomicU32,
    /// The node holding the client's WATCH: its transaction must run there.
    watching: AtomicU32,
    lost: AtomicBool,
    /// Whole-keyspace and cross-slot commands carry no connection state: they take the
    /// shared path, which fans them out and merges.
    shared: Arc<Lanes>,
}

impl ClusterDedicated {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        pushes: Option<mpsc::UnboundedSender<Bytes>>,
        shared: Arc<Lanes>,
    ) -> ClusterDedicated {
        ClusterDedicated {
            cluster,
            pushes,
            conns: tokio::sync::Mutex::new(Vec::new()),
            home: AtomicU32::new(NONE),
            watching: AtomicU32::new(NONE),
            lost: AtomicBool::new(false),
            shared,
        }
    }

    pub(super) fn is_alive(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return false;
        }
        match self.conns.try_lock() {
            Ok(conns) => conns.iter().all(|(_, tx)| !tx.is_closed()),
            Err(_) => true,
        }
    }

    pub(super) async fn send(&self, job: Job, hs: &Handshake) -> Result<(), BackendError> {
        let (is_watch, is_unwatch, is_multi) = {
            let argv = command_args(&job.payload);
            let is = |w: &[u8]| argv.first().is_some_and(|a| a.eq_ignore_ascii_case(w));
            (is(b"watch"), is(b"unwatch"), is(b"multi"))
        };
        let mut conns = self.conns.lock().await;
        if matches!(job.sink, Sink::Discard) {
            // A state change (database, name, UNWATCH): every node connection needs it;
            // connections opened later get it from the handshake.
            if is_unwatch {
                self.watching.store(NONE, Ordering::Release);
            }
            for (_, tx) in conns.iter() {
                let _ = tx.send(Job::discard(job.payload.clone())).await;
            }
            return Ok(());
        }
        let node = match self.cluster.route(&job.payload, job.replies, 0) {
            Route::One(n) => n,
            Route::Reply(frame) => {
                job.sink.deliver(Ok(frame));
                return Ok(());
            }
            _ => {
                drop(conns);
                self.shared.send(job, 0).await;
                return Ok(());
            }
        };
        let watched = self.watching.load(Ordering::Acquire);
        let node = if is_multi && watched != NONE {
            // EXEC ends the WATCH wherever it ran; run the block where the WATCH is, so a
            // change to a watched key aborts it (or the node refuses keys it does not serve).
            self.watching.store(NONE, Ordering::Release);
            watched
        } else {
            match (self.home.load(Ordering::Acquire), is_keyless(self.cluster.table().get(), &job.payload)) {
                (home, true) if home != NONE => home,
                _ => node,
            }
        };
        if is_watch {
            self.watching.store(node, Ordering::Release);
        }
        let tx = match conns.iter().find(|(n, _)| *n == node) {
            Some((_, tx)) => tx.clone(),
            None => {
                let settings = self.cluster.node(node);
                match super::dedicated::open_node(settings, hs, self.pushes.clone()).await {
                    Ok(tx) => {
                        conns.push((node, tx.clone()));
                        tx
                    }
                    Err(err) => {
                        self.cluster.want_refresh();
                        job.fail(&err);
                        return Err(err);
                    }
                }
            }
        };
        self.home.store(node, Ordering::Release);
        drop(conns);
        // Redirects are not followed here (the connection's state lives on one node), but
        // they refresh the map so the next command goes to the right place.
        let cluster = self.cluster.clone();
        let Job { payload, replies, pick, sink } = job;
        let sink = Sink::Callback(Box::new(move |reply: Reply| {
            if let Ok(frame) = &reply {
                if Redirect::of(frame, replies > 1).is_some() {
                    cluster.want_refresh();
                }
            }
            sink.deliver(reply)
        }));
        tx.send(Job { payload, replies, pick, sink }).await.map_err(|mpsc::error::SendError(job)| {
            self.lost.store(true, Ordering::Release);
            let err = self.cluster.unavailable("dedicated connection lost");
            job.fail(&err);
            err
        })
    }
}

/// The arguments of the first command in `payload` (empty when it is not one).
pub(crate) fn command_args(payload: &[u8]) -> SmallVec<[&[u8]; 8]> {
    parse_command(payload).map(|(argv, _)| argv).unwrap_or_default()
}

/// Whether the (first) command in `payload` names no key.
fn is_keyless(table: &CommandTable, payload: &[u8]) -> bool {
    let mut rest = payload;
    while let Some((argv, used)) = parse_command(rest) {
        rest = &rest[used..];
        if table.lookup(&argv).is_some_and(|i| !i.key_indices(&argv).is_empty()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_into_arguments() {
        let cmd = reply::command(&["SET", "k", "v"]);
        let (argv, used) = parse_command(&cmd).unwrap();
        assert_eq!(argv.as_slice(), [b"SET".as_slice(), b"k", b"v"]);
        assert_eq!(used, cmd.len());
        assert!(parse_command(b"*2\r\n$3\r\nGET\r\n").is_none());
        assert!(parse_command(b"PING\r\n").is_none());
        assert!(parse_command(b"*1\r\n$99\r\nGET\r\n").is_none());
    }

    #[test]
    fn redirects_are_recognised() {
        assert_eq!(
            Redirect::of(b"-MOVED 3999 127.0.0.1:6381\r\n", false),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(Redirect::of(b"-ASK 3999 127.0.0.1:6381\r\n", false), Some(Redirect::Ask("127.0.0.1:6381".into())));
        assert_eq!(
            Redirect::of(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n", false),
            Some(Redirect::Later)
        );
        assert_eq!(Redirect::of(b"-EXECABORT Transaction discarded\r\n", true), Some(Redirect::Later));
        assert_eq!(Redirect::of(b"-EXECABORT Transaction discarded\r\n", false), None);
        assert_eq!(Redirect::of(b"-ERR wrong\r\n", true), None);
        assert_eq!(Redirect::of(b"+OK\r\n", true), None);
    }

    #[test]
    fn scan_cursors_walk_every_primary() {
        let reply = |cursor: &str| {
            let mut b = BytesMut::new();
            b.put_slice(b"*2\r\n");
            reply::put_bulk(&mut b, cursor.as_bytes());
            b.put_slice(b"*1\r\n$1\r\nk\r\n");
            b.freeze()
        };
        let cursor = |frame: &Bytes| {
            let parts = crate::mirror::split_array(frame).unwrap();
            String::from_utf8(parts[0][4..parts[0].len() - 2].to_vec()).unwrap()
        };
        assert_eq!(cursor(&scan_reply(&reply("17"), 2, 3)), (17 * SCAN_SPREAD + 2).to_string());
        assert_eq!(cursor(&scan_reply(&reply("0"), 0, 3)), "1");
        assert_eq!(cursor(&scan_reply(&reply("0"), 2, 3)), "0");
        assert!(scan_reply(&reply("0"), 0, 3).ends_with(b"*1\r\n$1\r\nk\r\n"));
    }

    #[test]
    fn slot_ranges_are_read() {
        let frame = Bytes::from_static(
            b"*2\r\n*3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n:8192\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n",
        );
        let ranges = parse_slots(&frame, "10.0.0.9").unwrap();
        assert_eq!(ranges, [(0, 8191, "127.0.0.1:7000".to_string()), (8192, 16383, "10.0.0.9:7001".to_string())]);
        assert!(parse_slots(&Bytes::from_static(b"-ERR This instance has cluster support disabled\r\n"), "").is_none());
    }
}
