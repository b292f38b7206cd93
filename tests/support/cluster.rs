//! A Redis Cluster of real `redis-server` processes owned by a test.
//!
//! [`RedisCluster::start`] starts `primaries * (1 + replicas_per_primary)` cluster-enabled
//! servers (each a [`RedisServer`], so each is killed by PID on drop), joins them with
//! `redis-cli --cluster create` and waits until every node reports `cluster_state:ok` and
//! all of them agree on who owns which slot. The nodes are then ordered so that
//! `nodes()[..primaries]` are the primaries in slot order (node 0 owns slot 0), followed by
//! the replicas.
//!
//! The helpers talk to the nodes directly (never through tandem), so a test can check what
//! the proxy did against the cluster itself: [`RedisCluster::request_many`] sends each
//! command to the node owning its key and follows `MOVED` / `ASK` / `TRYAGAIN` like a
//! cluster client, [`RedisCluster::primary_for_key`] names the owner, and
//! [`RedisCluster::reshard`] moves slots with `redis-cli --cluster reshard`.
//!
//! The `redis` crate in the dev-dependencies has no `cluster` feature, so there is no
//! cluster-aware `redis` client here: slots are computed locally ([`key_slot`], CRC16 with
//! hash tags, checked against `CLUSTER KEYSLOT` in the harness test).

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::{output_with_timeout, redis_cli_bin};
use super::{encode_cmd, free_port, RawConn, RedisServer, IO_TIMEOUT};

/// Number of hash slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// How long the cluster gets to form (`--cluster create` plus agreement on the slot map).
pub const CLUSTER_FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The cluster slot of `key`: CRC16 of the key, or of its hash tag (the part between the
/// first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % CLUSTER_SLOTS
}

/// One line of `CLUSTER NODES`, as one node sees another (or itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The primary's id, for a replica.
    pub primary_id: Option<String>,
    /// Slot ranges served (inclusive), not counting importing/migrating markers.
    pub slots: Vec<(u16, u16)>,
    /// Whether the line shows a slot being imported or migrated (`[slot->-id]`).
    pub migrating: bool,
    pub link_connected: bool,
}

impl ClusterNode {
    pub fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }

    /// `fail`, `fail?`, `handshake` or `noaddr` flags.
    pub fn is_troubled(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }

    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|(a, b)| (*b - *a) as usize + 1).sum()
    }
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // ip:port@cport[,hostname]
        let port = f[1].split('@').next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
        let mut slots = Vec::new();
        let mut migrating = false;
        for s in &f[8..] {
            if s.starts_with('[') {
                migrating = true;
            } else if let Some((a, b)) = s.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    slots.push((a, b));
                }
            } else if let Ok(a) = s.parse() {
                slots.push((a, a));
            }
        }
        out.push(ClusterNode {
            id: f[0].to_string(),
            port,
            flags: f[2].split(',').map(String::from).collect(),
            primary_id: (f[3] != "-").then(|| f[3].to_string()),
            slots,
            migrating,
            link_connected: f[7] == "connected",
        });
    }
    out
}

/// Sends one command over a fresh raw connection to `127.0.0.1:port` and returns the raw
/// reply, or why there is none. Bounded by `IO_TIMEOUT`.
pub fn raw_request(port: u16, args: &[&str]) -> Result<Vec<u8>, String> {
    let mut c = RawConn::try_connect(("127.0.0.1", port), IO_TIMEOUT).map_err(|e| format!("connect :{port}: {e}"))?;
    c.try_send(&encode_cmd(args)).map_err(|e| format!("send to :{port}: {e}"))?;
    c.try_read_reply().map_err(|e| format!("reply from :{port}: {e}"))
}

/// [`raw_request`] whose reply is a bulk or simple string, returned as text. An error reply
/// or no reply is an `Err`.
pub fn text_request(port: u16, args: &[&str]) -> Result<String, String> {
    let reply = raw_request(port, args)?;
    match redis::parse_redis_value(&reply) {
        Ok(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(redis::Value::SimpleString(s)) => Ok(s),
        Ok(redis::Value::Okay) => Ok("OK".to_string()),
        Ok(redis::Value::VerbatimString { text, .. }) => Ok(text),
        Ok(redis::Value::Int(n)) => Ok(n.to_string()),
        _ => Err(format!("{args:?} on :{port}: {:?}", String::from_utf8_lossy(&reply))),
    }
}

/// The value of `field` in an `INFO`-style text (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':').map(String::from))
}

/// A redirection in an error reply: `MOVED slot host:port` / `ASK slot host:port`.
fn redirect(reply: &[u8]) -> Option<(bool, u16)> {
    let text = std::str::from_utf8(reply).ok()?;
    let (ask, rest) = if let Some(r) = text.strip_prefix("-MOVED ") {
        (false, r)
    } else if let Some(r) = text.strip_prefix("-ASK ") {
        (true, r)
    } else {
        return None;
    };
    let addr = rest.split_whitespace().nth(1)?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    Some((ask, port))
}

/// What every node must agree on about one node: id, primary or not, its primary, slots.
type NodeView = (String, bool, Option<String>, Vec<(u16, u16)>);

/// A Redis Cluster of `redis-server` processes, killed by PID on drop.
pub struct RedisCluster {
    /// Primaries first, in the order of their first slot, then replicas.
    nodes: Vec<RedisServer>,
    primaries: usize,
    replicas_per_primary: usize,
}

impl RedisCluster {
    /// Starts `primaries` primaries (at least 3, which `redis-cli --cluster create` needs)
    /// with `replicas_per_primary` replicas each, and waits until the cluster is formed and
    /// every node agrees on the slot map.
    #[track_caller]
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        assert!(primaries >= 3, "redis-cli --cluster create needs at least 3 primaries, got {primaries}");
        let total = primaries * (1 + replicas_per_primary);
        let nodes: Vec<RedisServer> = (0..total).map(|_| start_node()).collect();
        let mut cluster = RedisCluster { nodes, primaries, replicas_per_primary };

        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            cmd.arg(n.addr());
        }
        cmd.args(["--cluster-replicas", &replicas_per_primary.to_string(), "--cluster-yes"]);
        let out = output_with_timeout(cmd, CLUSTER_FORM_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("All 16384 slots covered") {
            panic!(
                "redis-cli --cluster create failed ({}):\nstdout: {stdout}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                cluster.logs_tail(20)
            );
        }
        cluster.wait_stable(CLUSTER_FORM_TIMEOUT);

        // Order: primaries by first slot, then replicas in the order of their primaries.
        let view = cluster.topology();
        let primaries_view: Vec<&ClusterNode> = {
            let mut p: Vec<&ClusterNode> = view.iter().filter(|n| n.is_primary()).collect();
            p.sort_by_key(|n| n.slots.iter().map(|s| s.0).min().unwrap_or(u16::MAX));
            p
        };
        assert_eq!(primaries_view.len(), primaries, "primaries after create: {view:?}");
        let mut order: Vec<u16> = primaries_view.iter().map(|n| n.port).collect();
        for p in &primaries_view {
            order.extend(view.iter().filter(|n| n.primary_id.as_deref() == Some(p.id.as_str())).map(|n| n.port));
        }
        assert_eq!(order.len(), total, "every node is a primary or a replica of one: {view:?}");
        let mut by_port: HashMap<u16, RedisServer> = cluster.nodes.drain(..).map(|n| (n.port(), n)).collect();
        cluster.nodes = order.iter().map(|p| by_port.remove(p).expect("node by port")).collect();
        cluster
    }

    /// Every node: primaries (in slot order, as formed) then replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The primaries as formed by [`start`](Self::start) (node 0 owned slot 0).
    pub fn primaries(&self) -> &[RedisServer] {
        &self.nodes[..self.primaries]
    }

    /// The replicas, grouped by primary.
    pub fn replicas(&self) -> &[RedisServer] {
        &self.nodes[self.primaries..]
    }

    pub fn replicas_per_primary(&self) -> usize {
        self.replicas_per_primary
    }

    /// `127.0.0.1:P` of every primary.
    pub fn seed_addrs(&self) -> Vec<String> {
        self.primaries().iter().map(|n| n.addr()).collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with the primaries as seeds.
    pub fn seed_url(&self) -> String {
        format!("redis+cluster://{}", self.seed_addrs().join(","))
    }

    /// The cluster node id of node `i` (`CLUSTER MYID`).
    #[track_caller]
    pub fn node_id(&self, i: usize) -> String {
        let port = self.nodes[i].port();
        text_request(port, &["CLUSTER", "MYID"]).unwrap_or_else(|e| panic!("CLUSTER MYID on node {i}: {e}"))
    }

    /// Index in [`nodes`](Self::nodes) of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// `CLUSTER NODES` as node `i` sees the cluster.
    pub fn topology_from(&self, i: usize) -> Result<Vec<ClusterNode>, String> {
        text_request(self.nodes[i].port(), &["CLUSTER", "NODES"]).map(|t| parse_cluster_nodes(&t))
    }

    /// `CLUSTER NODES` as the first node that answers sees it.
    #[track_caller]
    pub fn topology(&self) -> Vec<ClusterNode> {
        let mut errors = Vec::new();
        for i in 0..self.nodes.len() {
            match self.topology_from(i) {
                Ok(t) => return t,
                Err(e) => errors.push(e),
            }
        }
        panic!("no cluster node answered CLUSTER NODES: {errors:?}")
    }

    /// The port of the primary owning each slot (0 when none), as the first answering node
    /// sees it.
    #[track_caller]
    pub fn slot_owners(&self) -> Vec<u16> {
        let mut owners = vec![0u16; CLUSTER_SLOTS as usize];
        for n in self.topology().iter().filter(|n| n.is_primary()) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    owners[s as usize] = n.port;
                }
            }
        }
        owners
    }

    /// Slots served by node `i`, as node `i` sees itself.
    #[track_caller]
    pub fn slot_count(&self, i: usize) -> usize {
        let view = self.topology_from(i).unwrap_or_else(|e| panic!("CLUSTER NODES on node {i}: {e}"));
        view.iter().find(|n| n.is_myself()).map(|n| n.slot_count()).unwrap_or(0)
    }

    /// The node (primary) that owns `key`'s slot now.
    #[track_caller]
    pub fn primary_for_key(&self, key: &str) -> &RedisServer {
        let port = self.slot_owners()[key_slot(key.as_bytes()) as usize];
        let i = self.index_of_port(port).unwrap_or_else(|| panic!("slot of {key:?} is owned by unknown port {port}"));
        &self.nodes[i]
    }

    /// Why the cluster is not (yet) stable, or `None` when every node reports
    /// `cluster_state:ok`, knows every node, shows no failure flags or migrating slots, all
    /// 16384 slots are assigned, every node sees the same slot map and roles, and every
    /// replica's link to its primary is up.
    pub fn unstable_reason(&self) -> Option<String> {
        let mut reference: Option<(usize, Vec<NodeView>)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let port = node.port();
            let info = match text_request(port, &["CLUSTER", "INFO"]) {
                Ok(t) => t,
                Err(e) => return Some(format!("node {i}: {e}")),
            };
            if info_field(&info, "cluster_state").as_deref() != Some("ok") {
                return Some(format!("node {i} (:{port}) cluster_state is not ok"));
            }
            if info_field(&info, "cluster_slots_assigned").as_deref() != Some("16384") {
                return Some(format!("node {i} (:{port}) does not see all slots assigned"));
            }
            if info_field(&info, "cluster_known_nodes") != Some(self.nodes.len().to_string()) {
                return Some(format!("node {i} (:{port}) does not know every node yet"));
            }
            let view = match self.topology_from(i) {
                Ok(v) => v,
                Err(e) => return Some(format!("node {i}: {e}")),
            };
            if let Some(n) = view.iter().find(|n| n.is_troubled() || n.migrating || !n.link_connected) {
                return Some(format!("node {i} (:{port}) sees {n:?}"));
            }
            let mut norm: Vec<NodeView> =
                view.iter().map(|n| (n.id.clone(), n.is_primary(), n.primary_id.clone(), n.slots.clone())).collect();
            norm.sort();
            match &reference {
                None => reference = Some((i, norm)),
                Some((j, r)) if *r != norm => {
                    return Some(format!("node {i} and node {j} disagree on the cluster: {norm:?} vs {r:?}"))
                }
                Some(_) => {}
            }
            if view.iter().find(|n| n.is_myself()).is_some_and(|me| !me.is_primary()) {
                let repl = match text_request(port, &["INFO", "replication"]) {
                    Ok(t) => t,
                    Err(e) => return Some(format!("node {i}: {e}")),
                };
                if info_field(&repl, "master_link_status").as_deref() != Some("up") {
                    return Some(format!("replica node {i} (:{port}) has no link to its primary yet"));
                }
            }
        }
        None
    }

    /// Polls until [`unstable_reason`](Self::unstable_reason) is `None`; panics with the last
    /// reason and the nodes' log tails after `within`.
    #[track_caller]
    pub fn wait_stable(&self, within: Duration) {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let reason = match self.unstable_reason() {
                None => return,
                Some(r) => r,
            };
            if start.elapsed() >= within {
                panic!("cluster not stable after {:?}: {reason}\n{}", start.elapsed(), self.logs_tail(15));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The output of `redis-cli --cluster check` against node 0 (bounded to 10 s).
    pub fn check(&self) -> String {
        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "check", &self.nodes[0].addr()]);
        let out = output_with_timeout(cmd, Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `redis-cli --cluster reshard` command moving `slots` slots from node `from` to
    /// node `to` (indexes into [`nodes`](Self::nodes)).
    pub fn reshard_command(&self, from: usize, to: usize, slots: usize) -> Command {
        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "reshard", &self.nodes[from].addr()])
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .args(["--cluster-yes", "--cluster-pipeline", "100", "--cluster-timeout", "5000"]);
        cmd
    }

    /// Moves `slots` slots from node `from` to node `to` with `redis-cli --cluster reshard`,
    /// blocking (bounded by `timeout`), then waits until the cluster is stable again.
    #[track_caller]
    pub fn reshard(&self, from: usize, to: usize, slots: usize, timeout: Duration) -> Output {
        let out = output_with_timeout(self.reshard_command(from, to, slots), timeout);
        check_reshard(&out, self);
        self.wait_stable(Duration::from_secs(20));
        out
    }

    /// Starts the reshard of [`reshard`](Self::reshard) on a helper thread and returns at
    /// once. Join the handle (its output is checked with [`check_reshard`]) and call
    /// [`wait_stable`](Self::wait_stable) afterwards.
    pub fn reshard_in_background(&self, from: usize, to: usize, slots: usize, timeout: Duration) -> JoinHandle<Output> {
        let cmd = self.reshard_command(from, to, slots);
        std::thread::spawn(move || output_with_timeout(cmd, timeout))
    }

    /// `DBSIZE` of each primary as formed (index = node index).
    #[track_caller]
    pub fn dbsizes(&self) -> Vec<u64> {
        self.primaries()
            .iter()
            .map(|n| {
                text_request(n.port(), &["DBSIZE"])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("DBSIZE on {}", n.addr()))
            })
            .collect()
    }

    /// The sum of `DBSIZE` over the nodes that are primaries now.
    #[track_caller]
    pub fn dbsize_total(&self) -> u64 {
        self.topology()
            .iter()
            .filter(|n| n.is_primary())
            .map(|n| {
                text_request(n.port, &["DBSIZE"])
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("DBSIZE on :{}", n.port))
            })
            .sum()
    }

    /// Sends one keyed command (`args[1]` is the key) to the node owning the key, following
    /// `MOVED` / `ASK` and retrying `TRYAGAIN` / `CLUSTERDOWN` (bounded), like a cluster
    /// client. Returns the raw reply.
    #[track_caller]
    pub fn request(&self, args: &[&str]) -> Vec<u8> {
        let key = args.get(1).unwrap_or_else(|| panic!("cluster request without a key: {args:?}"));
        let port = self.slot_owners()[key_slot(key.as_bytes()) as usize];
        self.request_at(port, args)
    }

    #[track_caller]
    fn request_at(&self, mut port: u16, args: &[&str]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut asking = false;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let mut c = RawConn::try_connect(("127.0.0.1", port), IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("cluster request {args:?}: connect :{port}: {e}"));
            if asking {
                c.send_cmd(&["ASKING"]);
                let ok = c.read_reply();
                assert_eq!(ok, b"+OK\r\n", "ASKING on :{port}");
            }
            c.send_cmd(args);
            let reply = c.read_reply();
            match redirect(&reply) {
                Some((ask, to)) => {
                    asking = ask;
                    port = to;
                }
                None if reply.starts_with(b"-TRYAGAIN") || reply.starts_with(b"-CLUSTERDOWN") => {
                    asking = false;
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => return reply,
            }
            last = reply;
        }
        panic!("cluster request {args:?} still redirected after 10 s: {:?}", String::from_utf8_lossy(&last))
    }

    /// Sends many keyed commands (`cmd[1]` is the key), pipelined per owning node, and
    /// returns the raw replies in order. Replies that are redirections (the slot moved) are
    /// retried one by one with [`request`](Self::request).
    #[track_caller]
    pub fn request_many(&self, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
        let owners = self.slot_owners();
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let key = cmd.get(1).unwrap_or_else(|| panic!("cluster request without a key: {cmd:?}"));
            by_port.entry(owners[key_slot(key.as_bytes()) as usize]).or_default().push(i);
        }
        let mut replies: Vec<Vec<u8>> = vec![Vec::new(); cmds.len()];
        for (port, idxs) in by_port {
            let batch: Vec<Vec<String>> = idxs.iter().map(|&i| cmds[i].clone()).collect();
            let got = super::load::request_many(&format!("127.0.0.1:{port}"), &batch);
            for (&i, r) in idxs.iter().zip(got) {
                replies[i] = r;
            }
        }
        for (i, r) in replies.iter_mut().enumerate() {
            if redirect(r).is_some() || r.starts_with(b"-TRYAGAIN") {
                let args: Vec<&str> = cmds[i].iter().map(String::as_str).collect();
                *r = self.request(&args);
            }
        }
        replies
    }

    /// `GET` of each key straight from the cluster: `None` when absent.
    #[track_caller]
    pub fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let cmds: Vec<Vec<String>> = keys.iter().map(|k| vec!["GET".to_string(), k.clone()]).collect();
        self.request_many(&cmds)
            .into_iter()
            .zip(keys)
            .map(|(r, k)| match redis::parse_redis_value(&r) {
                Ok(redis::Value::Nil) => None,
                Ok(redis::Value::BulkString(b)) => Some(b),
                _ => panic!("GET {k} from the cluster: {:?}", String::from_utf8_lossy(&r)),
            })
            .collect()
    }

    /// Every key of every current primary (`KEYS *` on each; for test-sized data only).
    #[track_caller]
    pub fn all_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.topology().iter().filter(|n| n.is_primary()) {
            let reply = raw_request(n.port, &["KEYS", "*"]).unwrap_or_else(|e| panic!("KEYS on :{}: {e}", n.port));
            match redis::parse_redis_value(&reply) {
                Ok(redis::Value::Array(items)) => {
                    for item in items {
                        if let redis::Value::BulkString(b) = item {
                            out.push(String::from_utf8_lossy(&b).into_owned());
                        }
                    }
                }
                other => panic!("KEYS * on :{}: {other:?}", n.port),
            }
        }
        out
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.log();
            let all: Vec<&str> = log.lines().collect();
            s.push_str(&format!("--- cluster node {i} ({}) log tail ---\n", n.addr()));
            s.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            s.push('\n');
        }
        s
    }
}

/// Panics with the output unless a `redis-cli --cluster reshard` run succeeded.
#[track_caller]
pub fn check_reshard(out: &Output, cluster: &RedisCluster) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stdout.contains("[ERR]") || stderr.contains("[ERR]") {
        let tail: Vec<&str> = stdout.lines().collect();
        panic!(
            "redis-cli --cluster reshard failed ({}):\nstdout (last 40 lines):\n{}\nstderr: {stderr}\n{}",
            out.status,
            tail[tail.len().saturating_sub(40)..].join("\n"),
            cluster.logs_tail(15)
        );
    }
}

/// One cluster-enabled redis-server. The cluster bus port is chosen with `free_port` too
/// (`--cluster-port`), since the default port + 10000 may be taken or above 65535.
#[track_caller]
fn start_node() -> RedisServer {
    let bus = free_port().to_string();
    RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        // Relative to the server's private --dir.
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        &bus,
        "--appendonly",
        "no",
        // A replica's full sync would otherwise wait 5 s for more replicas to join.
        "--repl-diskless-sync-delay",
        "0",
    ])
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes.iter().map(|n| n.addr()).collect::<Vec<_>>())
            .field("primaries", &self.primaries)
            .field("replicas_per_primary", &self.replicas_per_primary)
            .finish()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // The RedisServers kill their processes by PID when dropped with `nodes`.
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(10));
        }
    }
}
