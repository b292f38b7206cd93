//! A sentinel-managed master owned by a test: one primary, one replica and three sentinels,
//! all real `redis-server` processes on `127.0.0.1`.
//!
//! There is no separate `redis-sentinel` binary on Debian's `redis-server` package; a
//! sentinel is `redis-server <conf> --sentinel`, and the sentinel rewrites its config file
//! (it records the replicas, the other sentinels and failovers), so each [`Sentinel`] gets
//! a writable config in its own tempdir. Like [`RedisServer`], every sentinel is killed by
//! PID when dropped, never by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{info_field, raw_request, text_request};
use super::process::{kill_and_reap, log_stdio};
use super::redis_server::{redis_server_bin, spawn_until_ready};
use super::{free_port, read_lossy, RedisServer, STARTUP_TIMEOUT};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

/// How long the sentinels get to discover the replica and each other.
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server <conf> --sentinel` process on `127.0.0.1` and a free port, killed by
/// PID on drop.
pub struct Sentinel {
    child: Option<Child>,
    pid: u32,
    port: u16,
    conf_path: PathBuf,
    log_path: PathBuf,
    // Declared last so the directory is removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a sentinel monitoring `127.0.0.1:master_port` as `name` with quorum 2, a
    /// master considered down after 1 s without replies, and a 5 s failover timeout. Waits
    /// until it answers `PING`. Retries on a new port if the chosen one was taken.
    #[track_caller]
    pub fn start(name: &str, master_port: u16) -> Sentinel {
        Self::start_with(name, master_port, free_port(), "")
    }

    /// [`start`](Self::start) on `port` (if still free; else on another free port), with
    /// `extra_conf` lines appended to the config (e.g. `sentinel myid`, `sentinel
    /// known-sentinel ...`, `sentinel known-replica ...`, so a set is ready without waiting
    /// for the sentinels to discover each other).
    #[track_caller]
    pub fn start_with(name: &str, master_port: u16, port: u16, extra_conf: &str) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("tandem-sentinel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create tempdir for a sentinel: {e}"));
        let conf_path = dir.path().join("sentinel.conf");
        let log_path = dir.path().join("sentinel.log");
        let mut s = Sentinel { child: None, pid: 0, port: 0, conf_path, log_path, dir };
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            s.port = if attempt == 1 { port } else { free_port() };
            s.write_conf(name, master_port, extra_conf);
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(log) if attempt < ATTEMPTS && log.contains("Address already in use") => continue,
                Err(log) => panic!("sentinel on port {} did not become ready.\n--- log ---\n{log}", s.port),
            }
        }
        unreachable!()
    }

    fn write_conf(&self, name: &str, master_port: u16, extra_conf: &str) {
        let conf = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             protected-mode no\n\
             daemonize no\n\
             dir {dir}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n\
             {extra_conf}\n",
            port = self.port,
            dir = self.dir.path().display(),
        );
        std::fs::write(&self.conf_path, conf)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.conf_path.display()));
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "sentinel already running");
        let bin = redis_server_bin();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let mut cmd = Command::new(&bin);
        cmd.arg(&self.conf_path)
            .arg("--sentinel")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let addr = self.addr();
        let port = self.port;
        let reported_pid = || {
            text_request(port, &["INFO", "server"])
                .ok()
                .and_then(|t| info_field(&t, "process_id"))
                .and_then(|p| p.parse::<u32>().ok())
        };
        let child = spawn_until_ready(cmd, &self.log_path, &addr, reported_pid)?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The sentinel's config file (rewritten by the sentinel as it learns).
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// Sends one command and returns the raw reply (or why there is none), bounded.
    pub fn request(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        raw_request(self.port, args)
    }

    /// `SENTINEL MASTER name` as field -> value.
    pub fn master_state(&self, name: &str) -> Result<HashMap<String, String>, String> {
        let reply = self.request(&["SENTINEL", "MASTER", name])?;
        match redis::parse_redis_value(&reply) {
            Ok(v) => pairs(&v).ok_or_else(|| format!("SENTINEL MASTER: {:?}", String::from_utf8_lossy(&reply))),
            Err(e) => Err(format!("SENTINEL MASTER: {e}")),
        }
    }

    /// `SENTINEL REPLICAS name`, one field -> value map per replica.
    pub fn replicas_state(&self, name: &str) -> Result<Vec<HashMap<String, String>>, String> {
        let reply = self.request(&["SENTINEL", "REPLICAS", name])?;
        match redis::parse_redis_value(&reply) {
            Ok(redis::Value::Array(items)) => {
                items.iter().map(|v| pairs(v).ok_or_else(|| format!("SENTINEL REPLICAS entry: {v:?}"))).collect()
            }
            other => Err(format!("SENTINEL REPLICAS: {other:?}")),
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME name` as `(host, port)`.
    pub fn master_addr(&self, name: &str) -> Result<(String, u16), String> {
        let reply = self.request(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])?;
        match redis::parse_redis_value(&reply) {
            Ok(redis::Value::Array(items)) if items.len() == 2 => {
                let s = |v: &redis::Value| match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                };
                let host = s(&items[0]).ok_or("host not a string")?;
                let port = s(&items[1]).and_then(|p| p.parse().ok()).ok_or("port not a number")?;
                Ok((host, port))
            }
            other => Err(format!("GET-MASTER-ADDR-BY-NAME: {other:?}")),
        }
    }

    /// Everything the sentinel logged so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the sentinel (SIGKILL by PID) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel").field("addr", &self.addr()).field("pid", &self.pid).finish()
    }
}

/// A flat array of alternating field names and values (RESP2) or a map (RESP3) as a map.
fn pairs(v: &redis::Value) -> Option<HashMap<String, String>> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        redis::Value::Array(items) => {
            items.chunks(2).map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?))).collect::<Option<HashMap<_, _>>>()
        }
        redis::Value::Map(kvs) => kvs.iter().map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        _ => None,
    }
}

/// One primary, one replica and three sentinels monitoring them as [`MASTER_NAME`].
pub struct SentinelSet {
    // Sentinels first: dropped (killed) before the servers, so they never react to the
    // servers going away.
    sentinels: Vec<Sentinel>,
    /// `[initial primary, initial replica]`.
    servers: Vec<RedisServer>,
}

impl SentinelSet {
    /// Starts the primary, its replica (`--replicaof`) and three sentinels, and waits until
    /// the replica is in sync and every sentinel sees the master up, its replica with a
    /// working link, and the two other sentinels.
    #[track_caller]
    pub fn start() -> SentinelSet {
        // A full sync waits 5 s by default (repl-diskless-sync-delay) for more replicas to
        // join; with one replica there is nothing to wait for. Both servers get the setting:
        // either can be the master after a failover.
        let no_delay = ["--repl-diskless-sync-delay", "0"];
        let primary = RedisServer::start_with(&no_delay);
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port, no_delay[0], no_delay[1]]);
        super::wait_until(STARTUP_TIMEOUT, "the replica to sync with the primary", || {
            text_request(replica.port(), &["INFO", "replication"])
                .is_ok_and(|t| info_field(&t, "master_link_status").as_deref() == Some("up"))
        });
        // After a diskless full sync the primary streams writes to the replica only once the
        // replica's first REPLCONF ACK arrives (up to a second later): until then writes are
        // not replicated, and a failover in that window loses them. Wait until a write has
        // gone through, then remove it (its deletion replicated too).
        let marker = "tandem-harness:replication-check";
        assert_eq!(primary.cli(&["SET", marker, "1"]), "OK");
        super::wait_until(STARTUP_TIMEOUT, "a write to reach the replica", || {
            text_request(replica.port(), &["EXISTS", marker]).as_deref() == Ok("1")
        });
        assert_eq!(primary.cli(&["DEL", marker]), "1");
        super::wait_until(STARTUP_TIMEOUT, "a delete to reach the replica", || {
            text_request(replica.port(), &["EXISTS", marker]).as_deref() == Ok("0")
        });
        // Each sentinel is told its id, the other two and the replica up front: discovering
        // them (hello messages every 2 s, INFO every 10 s) would take 5-10 s.
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let ids: Vec<String> =
            ports.iter().map(|p| format!("{:08x}{:032x}", p, 0x7a9d_e41c_u128 * (*p as u128))).collect();
        let sentinels = (0..3)
            .map(|i| {
                let mut extra = format!("sentinel myid {}\n", ids[i]);
                extra.push_str(&format!("sentinel known-replica {MASTER_NAME} 127.0.0.1 {}\n", replica.port()));
                for j in (0..3).filter(|&j| j != i) {
                    extra.push_str(&format!(
                        "sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {} {}\n",
                        ports[j], ids[j]
                    ));
                }
                Sentinel::start_with(MASTER_NAME, primary.port(), ports[i], &extra)
            })
            .collect();
        let set = SentinelSet { sentinels, servers: vec![primary, replica] };
        set.wait_ready(SENTINEL_READY_TIMEOUT);
        set
    }

    /// Why the set is not ready, or `None` when every sentinel sees the current master up
    /// (flags exactly `master`), one replica with link status `ok`, and two other sentinels.
    pub fn not_ready_reason(&self) -> Option<String> {
        for (i, s) in self.sentinels.iter().enumerate() {
            let m = match s.master_state(MASTER_NAME) {
                Ok(m) => m,
                Err(e) => return Some(format!("sentinel {i}: {e}")),
            };
            let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("?");
            if get("flags") != "master" {
                return Some(format!("sentinel {i} sees the master with flags {}", get("flags")));
            }
            if get("num-slaves") != "1" {
                return Some(format!("sentinel {i} knows {} replicas", get("num-slaves")));
            }
            if get("num-other-sentinels") != "2" {
                return Some(format!("sentinel {i} knows {} other sentinels", get("num-other-sentinels")));
            }
            let replicas = match s.replicas_state(MASTER_NAME) {
                Ok(r) => r,
                Err(e) => return Some(format!("sentinel {i}: {e}")),
            };
            let good = replicas.iter().any(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            if !good {
                let seen: Vec<String> = replicas
                    .iter()
                    .map(|r| {
                        let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("?");
                        format!(
                            "{} flags={} role-reported={} master-link-status={}",
                            get("name"),
                            get("flags"),
                            get("role-reported"),
                            get("master-link-status")
                        )
                    })
                    .collect();
                return Some(format!("sentinel {i} sees no healthy replica: {seen:?}"));
            }
        }
        None
    }

    /// Polls until [`not_ready_reason`](Self::not_ready_reason) is `None`.
    #[track_caller]
    pub fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        let mut last_reason = String::new();
        loop {
            let reason = match self.not_ready_reason() {
                None => return,
                Some(r) => r,
            };
            if reason != last_reason {
                // Shown with --nocapture or on failure: what the sentinels were waiting for.
                eprintln!("sentinels at {:?}: {reason}", start.elapsed());
                last_reason = reason.clone();
            }
            if start.elapsed() >= within {
                panic!("sentinels not ready after {:?}: {reason}\n{}", start.elapsed(), self.logs_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", addrs.join(","))
    }

    /// [`url`](Self::url) with a database number: `.../mymaster/DB`.
    pub fn url_db(&self, db: u32) -> String {
        format!("{}/{db}", self.url())
    }

    pub fn sentinels(&self) -> &[Sentinel] {
        &self.sentinels
    }

    /// `[initial primary, initial replica]` (their roles change with failovers).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The server listening on `port`.
    #[track_caller]
    pub fn server_on_port(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of this sentinel set listens on port {port}"))
    }

    /// The master's port according to the first sentinel that answers.
    #[track_caller]
    pub fn current_master(&self) -> u16 {
        let mut errors = Vec::new();
        for s in &self.sentinels {
            match s.master_addr(MASTER_NAME) {
                Ok((_, port)) => return port,
                Err(e) => errors.push(e),
            }
        }
        panic!("no sentinel answered GET-MASTER-ADDR-BY-NAME: {errors:?}")
    }

    /// The server that is master according to the sentinels.
    #[track_caller]
    pub fn current_master_server(&self) -> &RedisServer {
        self.server_on_port(self.current_master())
    }

    /// The server that is not the current master.
    #[track_caller]
    pub fn current_replica_server(&self) -> &RedisServer {
        let master = self.current_master();
        self.servers.iter().find(|s| s.port() != master).expect("two servers")
    }

    /// `role` from `INFO replication` of `server` (`master` / `slave`), if it answers.
    pub fn role(server: &RedisServer) -> Option<String> {
        text_request(server.port(), &["INFO", "replication"]).ok().and_then(|t| info_field(&t, "role"))
    }

    /// Asks sentinel 0 for a forced failover (`SENTINEL FAILOVER mymaster`), retrying while
    /// it answers `NOGOODSLAVE` (its view of the replica is not fresh yet), for up to 10 s.
    /// Returns the port of the master before the failover.
    #[track_caller]
    pub fn failover(&self) -> u16 {
        let before = self.current_master();
        let start = Instant::now();
        loop {
            let reply = self.sentinels[0]
                .request(&["SENTINEL", "FAILOVER", MASTER_NAME])
                .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
            if reply == b"+OK\r\n" {
                return before;
            }
            let text = String::from_utf8_lossy(&reply).into_owned();
            if !text.starts_with("-NOGOODSLAVE") || start.elapsed() > Duration::from_secs(10) {
                panic!("SENTINEL FAILOVER {MASTER_NAME} answered {text:?}\n{}", self.logs_tail(20));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every sentinel names a master other than `old_port`, the new master
    /// reports `role:master` and the old one (if it answers) has become its replica.
    /// Returns the new master's port.
    #[track_caller]
    pub fn wait_switched(&self, old_port: u16, within: Duration) -> u16 {
        let mut new_port = 0;
        super::wait_until(within, "all sentinels to agree on a new master", || {
            let ports: Vec<Option<u16>> =
                self.sentinels.iter().map(|s| s.master_addr(MASTER_NAME).ok().map(|(_, p)| p)).collect();
            match ports[0] {
                Some(p) if p != old_port && ports.iter().all(|q| *q == Some(p)) => {
                    new_port = p;
                    Self::role(self.server_on_port(p)).as_deref() == Some("master")
                }
                _ => false,
            }
        });
        new_port
    }

    /// Waits until the set is healthy again after a failover (the old master demoted and
    /// in sync as the new master's replica, sentinels agreeing).
    #[track_caller]
    pub fn wait_settled(&self, within: Duration) {
        self.wait_ready(within);
        let replica = self.current_replica_server();
        super::wait_until(within, "the demoted master to sync with the new one", || {
            text_request(replica.port(), &["INFO", "replication"]).is_ok_and(|t| {
                info_field(&t, "role").as_deref() == Some("slave")
                    && info_field(&t, "master_link_status").as_deref() == Some("up")
            })
        });
    }

    /// The last `lines` lines of every sentinel's and server's log.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        let tail = |log: String| {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        for (i, x) in self.sentinels.iter().enumerate() {
            s.push_str(&format!("--- sentinel {i} ({}) log tail ---\n{}\n", x.addr(), tail(x.log())));
        }
        for (i, x) in self.servers.iter().enumerate() {
            s.push_str(&format!("--- server {i} ({}) log tail ---\n{}\n", x.addr(), tail(x.log())));
        }
        s
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(15));
        }
        // Fields drop next: sentinels (killed by PID) first, then the servers.
    }
}

impl std::fmt::Debug for SentinelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSet")
            .field("sentinels", &self.sentinels.iter().map(|s| s.addr()).collect::<Vec<_>>())
            .field("servers", &self.servers.iter().map(|s| s.addr()).collect::<Vec<_>>())
            .finish()
    }
}
