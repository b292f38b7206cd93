//! The connection the migration tools use: one TCP stream to one server, commands written in
//! batches and replies read back in order (plain pipelining, RESP2).
//!
//! The tools copy and compare whole keyspaces, so a round trip per key would make them
//! latency-bound; every call here takes a batch.
//!
//! On a Redis Cluster the connection is one stream per primary: each command (or
//! `MULTI ... EXEC` block) goes to the primary serving its first key's slot, a batch becomes
//! one pipelined exchange per node, redirected commands are sent again on a fresh slot map,
//! and SCAN walks the primaries one after another behind one cursor, as the proxy's does.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::cluster::{self, Redirect};
use crate::backend::{BackendSettings, Handshake, Topology};
use crate::proto::reply::{self, Protocol};
use crate::proto::value::{self, Value};

/// One pipelined connection to a backend (one per primary for a cluster).
pub struct Conn {
    name: String,
    link: Link,
    settings: BackendSettings,
}

enum Link {
    One(Node),
    Cluster(Box<ClusterLink>),
}

/// A stream to one server.
struct Node {
    addr: String,
    stream: crate::backend::tls::BackendStream,
    buf: BytesMut,
}

/// Streams to a cluster's primaries and which one serves each slot.
struct ClusterLink {
    /// Open streams, by address.
    nodes: Vec<Node>,
    /// Slot -> primary address.
    slots: Vec<String>,
    /// Primaries in SCAN order.
    primaries: Vec<String>,
    /// A WATCH was sent and no EXEC or UNWATCH yet.
    watching: bool,
}

impl Conn {
    /// Connects and authenticates with the backend's own credentials (RESP2).
    pub async fn open(settings: &BackendSettings) -> anyhow::Result<Conn> {
        let link = match &settings.topology {
            Topology::Cluster { seeds } => {
                let mut link =
                    ClusterLink { nodes: Vec::new(), slots: Vec::new(), primaries: Vec::new(), watching: false };
                link.refresh(settings, seeds).await?;
                Link::Cluster(Box::new(link))
            }
            _ => Link::One(Node::open(settings).await?),
        };
        Ok(Conn { name: settings.name.to_string(), link, settings: settings.clone() })
    }

    /// Another connection to the same server.
    pub async fn reopen(&self) -> anyhow::Result<Conn> {
        Conn::open(&self.settings).await
    }

    /// Whether this is a Redis Cluster (where one transaction cannot span slots).
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// The backend's name (`source`, `target`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends every command, then reads one reply per command. Each reply is parsed; a server
    /// error is a [`Value::Error`] in its place, not a failure of the call.
    pub async fn call_many(&mut self, cmds: &[Bytes]) -> anyhow::Result<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.timeout();
        let name = self.name.clone();
        let io = async {
            match &mut self.link {
                Link::One(node) => node.exchange(cmds).await,
                Link::Cluster(c) => c.call_many(&self.settings, cmds).await,
            }
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{name}: {e}")),
            Err(_) => anyhow::bail!("{name}: no reply within {timeout:?}"),
        }
    }

    /// How long one batch may take.
    fn timeout(&self) -> std::time::Duration {
        self.settings.command_timeout.max(std::time::Duration::from_secs(5)) * 4
    }

    /// One command on one cluster node, within the same time limit as [`Conn::call_many`].
    async fn on_node(&mut self, addr: &str, cmd: Bytes) -> anyhow::Result<Value> {
        let timeout = self.timeout();
        let Link::Cluster(c) = &mut self.link else { anyhow::bail!("{}: not a cluster", self.name) };
        let io = async { c.node(&self.settings, addr).await?.exchange(&[cmd]).await };
        match tokio::time::timeout(timeout, io).await {
            Ok(r) => Ok(r.map_err(|e| anyhow::anyhow!("{}: {e}", self.name))?.pop().unwrap_or(Value::Nil)),
            Err(_) => anyhow::bail!("{}: {addr}: no reply within {timeout:?}", self.name),
        }
    }

    /// One command, one reply; a server error becomes an `Err`.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> anyhow::Result<Value> {
        let mut r = self.call_many(&[reply::command(args)]).await?;
        let v = r.pop().expect("one reply per command");
        if let Value::Error(e) = &v {
            anyhow::bail!("{}: {}", self.name, String::from_utf8_lossy(e));
        }
        Ok(v)
    }

    /// `SCAN cursor [MATCH m] COUNT n [TYPE t]`: the next cursor and a batch of keys.
    pub async fn scan(&mut self, cursor: u64, pattern: Option<&str>, count: u32) -> anyhow::Result<(u64, Vec<Bytes>)> {
        let Link::Cluster(c) = &mut self.link else { return self.scan_node(cursor, pattern, count, None).await };
        let (index, inner) = cluster::split_scan_cursor(cursor);
        let Some(addr) = c.primaries.get(index).cloned() else {
            anyhow::bail!("{}: SCAN cursor {cursor} names no primary", self.name)
        };
        let primaries = c.primaries.len();
        let (inner, keys) = self.scan_node(inner, pattern, count, Some(&addr)).await?;
        let next = cluster::next_scan_cursor(inner, index, primaries)
            .ok_or_else(|| anyhow::anyhow!("{}: SCAN cursor out of range", self.name))?;
        Ok((next, keys))
    }

    /// One SCAN step on the server, or on one cluster primary.
    async fn scan_node(
        &mut self,
        cursor: u64,
        pattern: Option<&str>,
        count: u32,
        node: Option<&str>,
    ) -> anyhow::Result<(u64, Vec<Bytes>)> {
        let cursor_s = cursor.to_string();
        let count_s = count.to_string();
        let mut args: Vec<&[u8]> = vec![b"SCAN", cursor_s.as_bytes()];
        if let Some(p) = pattern {
            args.push(b"MATCH");
            args.push(p.as_bytes());
        }
        args.push(b"COUNT");
        args.push(count_s.as_bytes());
        let reply = match node {
            Some(addr) => self.on_node(addr, reply::command(&args)).await?,
            None => self.call(&args).await?,
        };
        match reply {
            Value::Error(e) => anyhow::bail!("{}: {}", self.name, String::from_utf8_lossy(&e)),
            Value::Array(mut parts) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(Value::Array(ks)) => ks
                        .into_iter()
                        .filter_map(|k| match k {
                            Value::Bulk(b) | Value::Simple(b) => Some(b),
                            _ => None,
                        })
                        .collect(),
                    _ => anyhow::bail!("{}: malformed SCAN reply", self.name),
                };
                let next = parts[0]
                    .as_bytes()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("{}: malformed SCAN cursor", self.name))?;
                Ok((next, keys))
            }
            _ => anyhow::bail!("{}: malformed SCAN reply", self.name),
        }
    }

    /// `DBSIZE` (summed over a cluster's primaries), used as the total for progress bars.
    pub async fn dbsize(&mut self) -> anyhow::Result<u64> {
        let Link::Cluster(c) = &mut self.link else {
            return Ok(self.call(&[b"DBSIZE"]).await?.as_int().unwrap_or(0).max(0) as u64);
        };
        let mut total = 0;
        for addr in c.primaries.clone() {
            total += self.on_node(&addr, reply::command(&["DBSIZE"])).await?.as_int().unwrap_or(0).max(0) as u64;
        }
        Ok(total)
    }
}

impl Node {
    async fn open(settings: &BackendSettings) -> anyhow::Result<Node> {
        let (stream, _version) = crate::backend::connect(settings, &Handshake::pooled(Protocol::Resp2))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Node { addr: settings.addr.clone(), stream, buf: BytesMut::with_capacity(64 * 1024) })
    }

    /// Writes the commands as one batch and reads one parsed reply per command.
    async fn exchange(&mut self, cmds: &[Bytes]) -> anyhow::Result<Vec<Value>> {
        let total: usize = cmds.iter().map(|c| c.len()).sum();
        let mut out = BytesMut::with_capacity(total);
        for c in cmds {
            out.extend_from_slice(c);
        }
        self.stream.write_all(&out).await?;
        let mut replies = Vec::with_capacity(cmds.len());
        while replies.len() < cmds.len() {
            match reply::frame_len(&self.buf).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                Some(n) => {
                    let frame = self.buf.split_to(n).freeze();
                    let v =
                        value::parse(&frame).ok_or_else(|| anyhow::anyhow!("unparsable reply from {}", self.addr))?;
                    replies.push(v);
                }
                None => {
                    if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                        self.buf.reserve(64 * 1024);
                    }
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        anyhow::bail!("{} closed the connection", self.addr);
                    }
                }
            }
        }
        Ok(replies)
    }
}

/// Where a command (or a `MULTI ... EXEC` block) goes on a cluster.
enum Dest {
    Slot(u16),
    /// Any primary will do.
    Any,
    /// Every primary (SCRIPT LOAD, UNWATCH): the first node's reply stands for all.
    All,
}

impl ClusterLink {
    /// Loads the slot map from a known primary or a seed.
    async fn refresh(&mut self, settings: &BackendSettings, seeds: &[String]) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        let mut candidates = self.primaries.clone();
        candidates.extend(seeds.iter().cloned());
        for addr in candidates {
            match cluster::fetch_slots(&settings.for_node(&addr)).await {
                Ok(ranges) if !ranges.is_empty() => {
                    let mut slots = vec![String::new(); 16384];
                    let mut starts = Vec::with_capacity(ranges.len());
                    for (start, end, addr) in ranges {
                        for s in start..=end {
                            slots[s as usize] = addr.clone();
                        }
                        starts.push((start, addr));
                    }
                    self.slots = slots;
                    // The proxy's order, so a resumed backfill's cursor names the same shard.
                    self.primaries = cluster::by_first_slot(starts);
                    return Ok(());
                }
                Ok(_) => errors.push(format!("{addr}: no slots assigned")),
                Err(e) => errors.push(e),
            }
        }
        anyhow::bail!("cluster slot map: {}", errors.join("; "))
    }

    /// The open stream to `addr`, connecting on first use.
    async fn node(&mut self, settings: &BackendSettings, addr: &str) -> anyhow::Result<&mut Node> {
        let at = match self.nodes.iter().position(|n| n.addr == addr) {
            Some(at) => at,
            None => {
                self.nodes.push(Node::open(&settings.for_node(addr)).await?);
                self.nodes.len() - 1
            }
        };
        Ok(&mut self.nodes[at])
    }

    /// Splits `cmds` into units (a command, or a MULTI ... EXEC block) with their destination.
    fn units(&self, cmds: &[Bytes]) -> Vec<(std::ops::Range<usize>, Dest)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < cmds.len() {
            let argv = cluster::command_args(&cmds[i]);
            let is = |w: &str| argv.first().is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()));
            let end = if is("MULTI") {
                let close = (i + 1..cmds.len()).find(|&j| {
                    let a = cluster::command_args(&cmds[j]);
                    a.first().is_some_and(|a| a.eq_ignore_ascii_case(b"EXEC") || a.eq_ignore_ascii_case(b"DISCARD"))
                });
                close.map_or(cmds.len(), |j| j + 1)
            } else {
                i + 1
            };
            let mut dest =
                if is("SCRIPT") || is("UNWATCH") || is("FLUSHALL") || is("FLUSHDB") { Dest::All } else { Dest::Any };
            for cmd in &cmds[i..end] {
                let argv = cluster::command_args(cmd);
                if let Some(k) =
                    cluster::builtin().lookup(&argv).and_then(|info| info.key_indices(&argv).first().copied())
                {
                    dest = Dest::Slot(crate::route::slot(argv[k]));
                    break;
                }
            }
            out.push((i..end, dest));
            i = end;
        }
        out
    }

    async fn call_many(&mut self, settings: &BackendSettings, cmds: &[Bytes]) -> anyhow::Result<Vec<Value>> {
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut todo = self.units(cmds);
        for attempt in 0..10 {
            // One pipelined exchange per node, in the order the units came.
            let mut per_node: Vec<(String, Vec<std::ops::Range<usize>>)> = Vec::new();
            for (range, dest) in &todo {
                let addrs = match dest {
                    Dest::Slot(s) => vec![self.slots[*s as usize].clone()],
                    Dest::Any => self.primaries.first().cloned().into_iter().collect(),
                    Dest::All => self.primaries.clone(),
                };
                for addr in addrs {
                    match per_node.iter_mut().find(|(a, _)| *a == addr) {
                        Some((_, v)) => v.push(range.clone()),
                        None => per_node.push((addr, vec![range.clone()])),
                    }
                }
            }
            let mut redirected = Vec::new();
            for (addr, ranges) in per_node {
                if addr.is_empty() {
                    redirected.extend(ranges);
                    continue;
                }
                let batch: Vec<Bytes> = ranges.iter().flat_map(|r| cmds[r.clone()].iter().cloned()).collect();
                let got = self.node(settings, &addr).await?.exchange(&batch).await?;
                let mut got = got.into_iter();
                for r in ranges {
                    let mut unit: Vec<Value> = got.by_ref().take(r.len()).collect();
                    let is = |w: &str| {
                        let argv = cluster::command_args(&cmds[r.start]);
                        argv.first().is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()))
                    };
                    if is("WATCH") {
                        self.watching = true;
                    } else if is("UNWATCH") || is("MULTI") {
                        // EXEC (or UNWATCH) ends a WATCH.
                        let watched = std::mem::replace(&mut self.watching, false);
                        if watched && is("MULTI") && unit.iter().any(is_redirect) {
                            // Sent again elsewhere, the block would run without its WATCH:
                            // answer as a WATCH that saw a change (the caller looks again).
                            if let Some(last) = unit.last_mut() {
                                *last = Value::Nil;
                            }
                        }
                    }
                    if unit.iter().any(is_redirect) && !matches!(unit.last(), Some(Value::Nil)) {
                        // A single command asked to go to a slot's importing node: ASKING first.
                        if let [Value::Error(e)] = unit.as_slice() {
                            if let Some(Redirect::Ask(to)) = Redirect::of_text(e, false) {
                                let asked = [reply::command(&["ASKING"]), cmds[r.start].clone()];
                                let mut got = self.node(settings, &to).await?.exchange(&asked).await?;
                                if let Some(v) = got.pop().filter(|v| !is_redirect(v)) {
                                    replies[r.start] = Some(v);
                                    continue;
                                }
                            }
                        }
                        redirected.push(r);
                        continue;
                    }
                    for (i, v) in r.zip(unit) {
                        // For units sent to every primary, the first reply stands.
                        if replies[i].is_none() {
                            replies[i] = Some(v);
                        }
                    }
                }
            }
            if redirected.is_empty() {
                break;
            }
            let seeds = match &settings.topology {
                Topology::Cluster { seeds } => seeds.clone(),
                _ => Vec::new(),
            };
            tokio::time::sleep(std::time::Duration::from_millis(20 * (attempt + 1))).await;
            self.refresh(settings, &seeds).await?;
            todo = self.units(cmds).into_iter().filter(|(r, _)| redirected.contains(r)).collect();
            for r in &redirected {
                for i in r.clone() {
                    replies[i] = None;
                }
            }
        }
        Ok(replies
            .into_iter()
            .map(|v| v.unwrap_or(Value::Error(Bytes::from_static(b"TRYAGAIN redirected too often"))))
            .collect())
    }
}

/// A reply that means "not here" or "not now" on a cluster.
fn is_redirect(v: &Value) -> bool {
    matches!(v, Value::Error(e) if Redirect::of_text(e, false).is_some())
}
