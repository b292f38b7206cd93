//! tandem in front of a sentinel-managed master (`redis+sentinel://` backend URLs): it finds
//! the master through the sentinels, follows a failover under load within seconds without
//! hanging clients or losing writes acknowledged after the switch, and mirrors to a
//! sentinel-managed target across a failover.
//!
//! Every set is a real primary, its replica and three `redis-server --sentinel` processes
//! (see `support::sentinel`); assertions about where data lives read the servers directly.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::verify_no_differences;
use support::load::{self, MirrorStats};
use support::sentinel::MASTER_NAME;
use support::{encode_cmd, http, RawConn, RedisServer, SentinelSet, Tandem};
use tandem::route::Side;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn yaml_source_only(url: &str) -> String {
    format!("backends:\n  source:\n    url: {url}\n")
}

/// `GET key` on a server, straight (no proxy): `None` when absent.
fn get_direct(server: &RedisServer, key: &str) -> Option<String> {
    let mut c = RawConn::connect(server.addr());
    let reply = c.request(&["GET", key]);
    match redis::parse_redis_value(&reply) {
        Ok(redis::Value::Nil) => None,
        Ok(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        other => panic!("GET {key} on {}: {other:?}", server.addr()),
    }
}

/// The backend entries of `/status`.
fn backends(proxy: &Tandem) -> Vec<Value> {
    http::status(proxy.admin_port())["backends"].as_array().cloned().unwrap_or_default()
}

fn backend_up(proxy: &Tandem, name: &str) -> bool {
    backends(proxy).iter().any(|b| b["name"] == name && b["up"] == true)
}

// ---------------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------------

/// The sentinel harness on its own (no proxy): the set forms, the sentinels agree on the
/// master, and a forced failover promotes the replica and demotes the old master.
#[test]
fn harness_sentinel_set_forms_and_fails_over() {
    let started = Instant::now();
    let set = SentinelSet::start();
    eprintln!("primary + replica + 3 sentinels ready in {:?}", started.elapsed());
    let (primary, replica) = (&set.servers()[0], &set.servers()[1]);
    assert_eq!(set.current_master(), primary.port());
    assert!(set.url().starts_with("redis+sentinel://127.0.0.1:"), "{}", set.url());
    assert!(set.url().ends_with("/mymaster"), "{}", set.url());
    for s in set.sentinels() {
        let out = support::redis_cli_output(s.port(), None, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), format!("127.0.0.1\n{}", primary.port()), "sentinel {}", s.addr());
        assert!(std::fs::read_to_string(s.conf_path()).unwrap().contains("sentinel monitor mymaster"));
    }
    assert_eq!(primary.cli(&["SET", "before", "1"]), "OK");
    support::wait_until(Duration::from_secs(5), "replication", || get_direct(replica, "before").is_some());

    let t = Instant::now();
    let old = set.failover();
    assert_eq!(old, primary.port());
    let new = set.wait_switched(old, Duration::from_secs(15));
    eprintln!("failover: sentinels agree on the new master after {:?}", t.elapsed());
    assert_eq!(new, replica.port());
    assert_eq!(SentinelSet::role(replica).as_deref(), Some("master"));
    assert_eq!(replica.cli(&["SET", "after", "2"]), "OK");
    assert_eq!(get_direct(replica, "before").as_deref(), Some("1"), "replicated before the failover");
}

// ---------------------------------------------------------------------------------------------
// Sentinel as the source
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sentinel_source_serves_commands() {
    let set = SentinelSet::start();
    let master = &set.servers()[0];
    let proxy = Tandem::start_config(&yaml_source_only(&set.url()), &[]);
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["SET", "greeting", "hello"]), b"+OK\r\n");
    assert_eq!(c.request(&["GET", "greeting"]), b"$5\r\nhello\r\n");
    assert_eq!(get_direct(master, "greeting").as_deref(), Some("hello"), "written on the master");
    for i in 0..200 {
        assert_eq!(c.request(&["SET", &format!("k{i}"), &i.to_string()]), b"+OK\r\n");
    }
    assert_eq!(master.cli(&["DBSIZE"]), "201");
    assert_eq!(c.request(&["DBSIZE"]), b":201\r\n");
    assert_eq!(c.request(&["INCR", "k7"]), b":8\r\n");
    support::wait_until(Duration::from_secs(10), "/status shows the source up", || backend_up(&proxy, "source"));
    let b = backends(&proxy);
    eprintln!("/status backends: {}", serde_json::to_string(&b).unwrap());
    assert!(b[0]["last_error"].is_null() || b[0]["last_error"] == "", "{b:?}");

    // A database number after the master name.
    let proxy3 = Tandem::start_config(&yaml_source_only(&set.url_db(3)), &[]);
    let mut c3 = RawConn::connect(proxy3.addr());
    assert_eq!(c3.request(&["SET", "in-db-3", "x"]), b"+OK\r\n");
    assert_eq!(master.cli(&["-n", "3", "GET", "in-db-3"]), "x");
    assert_eq!(master.cli(&["-n", "0", "EXISTS", "in-db-3"]), "0");
}

/// One op of the failover load.
#[derive(Clone, Debug)]
struct Op {
    set: bool,
    key: String,
    value: String,
    /// Since the load started.
    start: Duration,
    end: Duration,
    /// `None` = the expected reply; else the error reply or the I/O error.
    error: Option<String>,
}

/// Workers writing a fresh key per SET (`fo:w{w}:{seq}` = `v{seq}`) and reading back the
/// key they wrote last, over their own connection (reconnecting after an I/O error), each
/// op bounded by `op_timeout`, until `stop` (or 60 s).
fn failover_load(
    addr: String,
    workers: usize,
    op_timeout: Duration,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    started: Instant,
) -> Vec<std::thread::JoinHandle<Vec<Op>>> {
    (0..workers)
        .map(|w| {
            let (addr, stop, ops) = (addr.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut conn: Option<RawConn> = None;
                let mut last_acked: Option<(String, String)> = None;
                let deadline = started + Duration::from_secs(60);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    // Pacing the workload (~250 ops/s per worker), not synchronisation.
                    std::thread::sleep(Duration::from_millis(4));
                    seq += 1;
                    let set = seq % 2 == 1 || last_acked.is_none();
                    let (key, value) = if set {
                        (format!("fo:w{w}:{seq}"), format!("v{seq}"))
                    } else {
                        last_acked.clone().expect("checked")
                    };
                    let start = started.elapsed();
                    let t0 = Instant::now();
                    if conn.is_none() {
                        match RawConn::try_connect(addr.as_str(), op_timeout) {
                            Ok(mut c) => {
                                c.set_timeout(op_timeout);
                                conn = Some(c);
                            }
                            Err(e) => {
                                let end = started.elapsed();
                                out.push(Op { set, key, value, start, end, error: Some(format!("io: connect: {e}")) });
                                ops.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected");
                    let cmd = if set { encode_cmd(&["SET", &key, &value]) } else { encode_cmd(&["GET", &key]) };
                    let left = op_timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
                    c.set_timeout(left);
                    let reply = c.try_send(&cmd).and_then(|_| c.try_read_reply());
                    let end = started.elapsed();
                    let error = match reply {
                        Err(e) => {
                            conn = None;
                            Some(format!("io: {:?}", e.kind()))
                        }
                        Ok(r) if set && r == b"+OK\r\n" => None,
                        Ok(r) if !set && r == format!("${}\r\n{value}\r\n", value.len()).as_bytes() => None,
                        Ok(r) => Some(String::from_utf8_lossy(&r).trim_end().chars().take(80).collect()),
                    };
                    if set && error.is_none() {
                        last_acked = Some((key.clone(), value.clone()));
                    }
                    out.push(Op { set, key, value, start, end, error });
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                out
            })
        })
        .collect()
}

#[test]
fn a_failover_under_load_is_followed_within_5s() {
    let set = SentinelSet::start();
    let (old_master, new_master) = (&set.servers()[0], &set.servers()[1]);
    let proxy = Tandem::start_config(&yaml_source_only(&set.url()), &[]);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    const OP_BOUND: Duration = Duration::from_secs(3);
    let workers = failover_load(proxy.addr(), 4, OP_BOUND, stop.clone(), ops.clone(), started);
    support::wait_until(Duration::from_secs(10), "the load to get going", || ops.load(Ordering::Relaxed) >= 400);

    let failover_at = started.elapsed();
    let t_failover = Instant::now();
    let old = set.failover();
    assert_eq!(old, old_master.port());

    // Follow: a SET through tandem succeeds and lands on the new master *as master* (its
    // role was already master when the SET was sent: before the promotion the replica would
    // also get the key, by replication from the old master).
    let mut probe: Option<RawConn> = None;
    let mut n = 0;
    let mut followed_after = None;
    let mut probe_errors: BTreeMap<String, u64> = BTreeMap::new();
    while t_failover.elapsed() < Duration::from_secs(15) {
        let promoted = SentinelSet::role(new_master).as_deref() == Some("master");
        n += 1;
        let (key, value) = (format!("probe:{n}"), format!("p{n}"));
        if probe.is_none() {
            probe = RawConn::try_connect(proxy.addr(), OP_BOUND).ok();
        }
        let reply = match probe.as_mut() {
            Some(c) => c.try_send(&encode_cmd(&["SET", &key, &value])).and_then(|_| c.try_read_reply()),
            None => Err(std::io::Error::other("connect failed")),
        };
        match reply {
            Ok(r) if r == b"+OK\r\n" => {
                if promoted && get_direct(new_master, &key).as_deref() == Some(value.as_str()) {
                    followed_after = Some(t_failover.elapsed());
                    break;
                }
            }
            Ok(r) => *probe_errors.entry(String::from_utf8_lossy(&r).trim_end().to_string()).or_default() += 1,
            Err(e) => {
                probe = None;
                *probe_errors.entry(format!("io: {:?}", e.kind())).or_default() += 1;
            }
        }
        // Probe pacing.
        std::thread::sleep(Duration::from_millis(20));
    }
    let followed_at = started.elapsed();
    let sentinels_agree = set.wait_switched(old, Duration::from_secs(15));
    assert_eq!(sentinels_agree, new_master.port());
    let sentinel_switch_after = t_failover.elapsed();
    // Keep the load running a little after the switch.
    let target_ops = ops.load(Ordering::Relaxed) + 600;
    support::wait_until(Duration::from_secs(15), "600 more ops after the switch", || {
        ops.load(Ordering::Relaxed) >= target_ops
    });
    stop.store(true, Ordering::Relaxed);
    let all: Vec<Op> = workers.into_iter().flat_map(|h| h.join().expect("load worker panicked")).collect();

    let errors: Vec<&Op> = all.iter().filter(|o| o.error.is_some()).collect();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for o in &errors {
        *by_kind.entry(load::error_kind(o.error.as_deref().unwrap_or(""))).or_default() += 1;
    }
    let max_latency = all.iter().map(|o| o.end - o.start).max().unwrap_or_default();
    let last_error_end = errors.iter().map(|o| o.end).max();
    eprintln!(
        "{} ops, {} errors {by_kind:?}; probe errors {probe_errors:?}; max latency {max_latency:?}; \
         followed after {followed_after:?} (probe {n}), sentinels agreed after {sentinel_switch_after:?}; \
         last error {:?} after the failover call",
        all.len(),
        errors.len(),
        last_error_end.map(|e| e.saturating_sub(failover_at))
    );

    let followed_after =
        followed_after.unwrap_or_else(|| panic!("tandem did not follow the new master within 15 s: {probe_errors:?}"));
    assert!(followed_after <= Duration::from_secs(5), "tandem followed the new master only after {followed_after:?}");
    assert!(max_latency < OP_BOUND, "an op took {max_latency:?}: clients hung during the switch");
    assert!(
        !errors.iter().any(|o| o.error.as_deref().is_some_and(|e| e.contains("TimedOut"))),
        "ops timed out: {by_kind:?}"
    );
    if let Some(last) = last_error_end {
        assert!(
            last <= failover_at + Duration::from_secs(5),
            "errors went on for {:?} after the failover call: {by_kind:?}",
            last.saturating_sub(failover_at)
        );
    }

    // Every SET acknowledged after tandem followed the switch is on the new master. (Writes
    // acknowledged by the old master just before it was demoted can be lost: asynchronous
    // replication; they are counted, not failed.)
    let acked: Vec<&Op> = all.iter().filter(|o| o.set && o.error.is_none()).collect();
    let mut lost_after = Vec::new();
    let mut lost_before_call = Vec::new();
    let mut lost_during = 0;
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|o| o.key.clone()).collect();
        let got = load::get_many(&new_master.addr(), &keys);
        for (o, v) in chunk.iter().zip(got) {
            if v.as_deref() != Some(o.value.as_bytes()) {
                let what = format!("{} (acked at {:?}, failover at {failover_at:?})", o.key, o.end);
                if o.start >= followed_at {
                    lost_after.push(what);
                } else if o.end < failover_at {
                    lost_before_call.push(what);
                } else {
                    lost_during += 1;
                }
            }
        }
    }
    let after = acked.iter().filter(|o| o.start >= followed_at).count();
    eprintln!(
        "{} SETs acknowledged ({after} after tandem followed); lost: {} acknowledged before the failover call, \
         {lost_during} between the call and the switch, {} after the switch",
        acked.len(),
        lost_before_call.len(),
        lost_after.len()
    );
    // Replication on loopback is far quicker than a sentinel's reaction: what the old master
    // acknowledged before the failover was asked for is on the new master.
    assert!(
        lost_before_call.is_empty(),
        "{} writes acknowledged before the failover call are not on the new master: {:?}",
        lost_before_call.len(),
        &lost_before_call[..lost_before_call.len().min(10)]
    );
    assert!(after >= 200, "only {after} SETs acknowledged after the switch");
    assert!(
        lost_after.is_empty(),
        "{} writes acknowledged after the switch are not on the new master: {:?}",
        lost_after.len(),
        &lost_after[..lost_after.len().min(10)]
    );
    // And the proxy still works against the new master.
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["SET", "final", "1"]), b"+OK\r\n");
    assert_eq!(get_direct(new_master, "final").as_deref(), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// Sentinel as the target
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sentinel_target_receives_the_mirror_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let set = SentinelSet::start();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\nmirror:\n  mode: async\n",
        source.url(),
        set.url()
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    let mut c = RawConn::connect(proxy.addr());
    for i in 0..500 {
        assert_eq!(c.request(&["SET", &format!("a:{i}"), &format!("v{i}")]), b"+OK\r\n");
    }
    assert_eq!(c.request(&["HSET", "h", "f", "1"]), b":1\r\n");
    http::wait_mirror_idle(proxy.admin_port());
    let master = set.current_master_server();
    assert_eq!(master.cli(&["DBSIZE"]), "501");
    assert_eq!(get_direct(master, "a:499").as_deref(), Some("v499"));
    verify_no_differences(dir.path(), &source.url(), &set.url());
    support::wait_until(Duration::from_secs(10), "/status shows the target up", || backend_up(&proxy, "target"));

    // The target fails over; the mirror follows it to the new master.
    let old = set.failover();
    let t = Instant::now();
    let new = set.wait_switched(old, Duration::from_secs(15));
    let new_master = set.server_on_port(new);
    let mut n = 0;
    support::wait_until(Duration::from_secs(10), "mirrored writes to reach the new master", || {
        n += 1;
        let key = format!("probe:{n}");
        c.request(&["SET", &key, "p"]) == b"+OK\r\n"
            && load::poll_until(Duration::from_millis(500), || get_direct(new_master, &key).is_some())
    });
    eprintln!("mirror follows the target's new master {:?} after the sentinels agreed ({n} probes)", t.elapsed());
    // Probes mirrored before tandem followed may have gone to the old master, which drops
    // them when it is demoted, or been in flight at the switch, which fails them (counted
    // dropped): delete them all (on both sides, through the mirror).
    for i in 1..=n {
        let reply = c.request(&["DEL", &format!("probe:{i}")]);
        assert!(reply.starts_with(b":"), "{:?}", String::from_utf8_lossy(&reply));
    }
    let around_switch = MirrorStats::of(&http::wait_mirror_idle(proxy.admin_port()), Side::Target);
    assert!(around_switch.dropped <= n as u64, "only probes may be dropped at the switch: {around_switch}");
    for i in 0..500 {
        assert_eq!(c.request(&["SET", &format!("b:{i}"), &format!("w{i}")]), b"+OK\r\n");
    }
    assert_eq!(c.request(&["DEL", "a:0", "a:1"]), b":2\r\n");
    let status = http::wait_mirror_idle(proxy.admin_port());
    let m = MirrorStats::of(&status, Side::Target);
    eprintln!("mirror towards the target: {m}");
    assert!(m.outcomes_within_enqueued(), "{m}");
    assert_eq!(m.dropped, around_switch.dropped, "a write after the switch was dropped: {m}");
    assert_eq!(get_direct(new_master, "b:499").as_deref(), Some("w499"));
    assert_eq!(get_direct(new_master, "a:0"), None);
    // Nothing but the probes was written between the failover call and the switch, so the
    // two stores are equal.
    verify_no_differences(dir.path(), &source.url(), &set.url());
}
