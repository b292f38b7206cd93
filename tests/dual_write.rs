//! Dual-write and the slot split against two real redis-servers (source and target), with a
//! relay in front of the target to delay or cut the mirror.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::{encode_cmd, http, RawConn, RedisServer, Relay, Tandem};
use tandem::route::{slot, CutoverPlan, Side};

/// Source, target, a relay in front of one of them (the target, unless [`setup_with`] says
/// otherwise), and the proxy.
struct Setup {
    source: RedisServer,
    target: RedisServer,
    relay: Relay,
    proxy: Tandem,
}

fn setup(extra_yaml: &str) -> Setup {
    setup_with(Side::Target, "", extra_yaml)
}

/// [`setup`] with the relay in front of `relayed`, and `target_yaml` added to the target
/// backend's settings (4-space indented).
fn setup_with(relayed: Side, target_yaml: &str, extra_yaml: &str) -> Setup {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let relay = Relay::start(if relayed == Side::Source { source.addr() } else { target.addr() });
    let (source_url, target_url) =
        if relayed == Side::Source { (relay.url(), target.url()) } else { (source.url(), relay.url()) };
    let yaml = format!(
        "backends:\n  source:\n    url: {source_url}\n  target:\n    url: {target_url}\n{target_yaml}{extra_yaml}"
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    Setup { source, target, relay, proxy }
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

/// Polls until the target's copy of `key` satisfies `f`.
fn wait_target(s: &Setup, what: &str, mut f: impl FnMut(&RedisServer) -> bool) {
    support::wait_until(Duration::from_secs(10), what, || f(&s.target));
}

fn mirror_stats(s: &Setup, towards: &str) -> serde_json::Value {
    http::status(s.proxy.admin_port())["mirror"]["towards"][towards].clone()
}

fn wait_mirror_idle(s: &Setup, towards: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    support::wait_until(Duration::from_secs(15), "mirror queue drained", || {
        last = mirror_stats(s, towards);
        last["in_flight"] == 0
    });
    last
}

fn assert_identity(stats: &serde_json::Value) {
    let n = |k: &str| stats[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {stats}"));
    assert_eq!(
        n("enqueued"),
        n("applied") + n("error") + n("diverged") + n("dropped") + n("in_flight"),
        "accounting identity: {stats}"
    );
}

#[test]
fn keys_land_where_the_slot_plan_says() {
    for percent in [0.0, 37.5, 100.0] {
        let s = setup(&format!("cutover:\n  percent: {percent}\n"));
        let mut c = RawConn::connect(s.proxy.addr());
        let plan = CutoverPlan::new(percent);
        let mut expected = [0usize; 2];
        for i in 0..600 {
            let key = format!("user:{i}");
            assert_eq!(c.request(&["SET", &key, "v"]), b"+OK\r\n");
            expected[plan.side(slot(key.as_bytes())).index()] += 1;
        }
        assert_eq!(s.source.cli(&["DBSIZE"]), expected[0].to_string(), "source at {percent}%");
        assert_eq!(s.target.cli(&["DBSIZE"]), expected[1].to_string(), "target at {percent}%");
        // And every key is on its own side, read back through the proxy.
        for i in (0..600).step_by(37) {
            let key = format!("user:{i}");
            let on = if plan.side(slot(key.as_bytes())) == Side::Target { &s.target } else { &s.source };
            assert_eq!(on.cli(&["GET", &key]), "v", "{key} at {percent}%");
            assert_eq!(c.request(&["GET", &key]), b"$1\r\nv\r\n");
        }
    }
}

#[test]
fn async_mirror_copies_writes_and_accounts_for_each() {
    let s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    for i in 0..500 {
        c.request(&["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    c.request(&["HSET", "h", "a", "1", "b", "2"]);
    c.request(&["RPUSH", "l", "x", "y"]);
    c.request(&["INCR", "n"]);
    let stats = wait_mirror_idle(&s, "target");
    assert_identity(&stats);
    assert_eq!(stats["enqueued"], 503);
    assert_eq!(stats["applied"], 503);
    assert_eq!(s.target.cli(&["DBSIZE"]), "503");
    assert_eq!(s.target.cli(&["GET", "k499"]), "v499");
    assert_eq!(s.target.cli(&["LRANGE", "l", "0", "-1"]), "x\ny");
    // Reads are not mirrored.
    c.request(&["GET", "k1"]);
    assert_eq!(mirror_stats(&s, "target")["enqueued"], 503);
}

#[test]
fn a_pipeline_is_mirrored_in_batches_and_in_order() {
    let s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    let n = 1280;
    let mut pipeline = Vec::new();
    for i in 0..n {
        // INCR replies are compared with the mirror's: any reordering shows as diverged.
        let cmd = if i % 2 == 0 {
            vec!["INCR".to_string(), "counter".into()]
        } else {
            vec!["SET".into(), format!("p{i}"), i.to_string()]
        };
        pipeline.extend(encode_cmd(&cmd));
    }
    c.send(&pipeline);
    for _ in 0..n {
        assert!(!c.read_reply().starts_with(b"-"));
    }
    let stats = wait_mirror_idle(&s, "target");
    assert_identity(&stats);
    assert_eq!(stats["applied"], n as u64, "{stats}");
    assert_eq!(stats["diverged"], 0, "{stats}");
    assert_eq!(s.target.cli(&["GET", "counter"]), (n / 2).to_string());
    assert_eq!(s.target.cli(&["GET", "p1279"]), "1279");
    // The writes went to the mirror as a few jobs, one per read of the source's replies,
    // not as one job per write.
    let jobs = stats["jobs"].as_u64().expect("jobs in /status");
    // At least one per 256 writes: a job is cut at 256 ops.
    assert!(jobs >= (n as u64).div_ceil(256) && jobs <= n as u64 / 8, "{jobs} jobs for {n} pipelined writes: {stats}");
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    assert!(metrics.contains(&format!("tandem_mirror_jobs_total{{backend=\"target\"}} {jobs}")), "{metrics}");
}

#[test]
fn a_silent_mirror_is_sent_at_most_4096_unanswered_writes() {
    // The target accepts bytes and never answers; the silence timeout is long enough that
    // the mirror connection stays up for the whole test.
    let s = setup_with(Side::Target, "    command_timeout: 60s\n", "mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["SET", "warm", "up"]);
    wait_mirror_idle(&s, "target");
    s.relay.blackhole(true);

    // 8,000 writes of 1 KiB, pipelined: mirrored in batches of up to 256.
    let (n, value) = (8000, "x".repeat(1024));
    let mut pipeline = Vec::new();
    for i in 0..n {
        pipeline.extend(encode_cmd(&["SET", &format!("k{i:05}"), &value]));
    }
    let per_write = encode_cmd(&["SET", "k00000", &value]).len() as u64;
    c.set_timeout(Duration::from_secs(30));
    c.send(&pipeline);
    for _ in 0..n {
        assert_eq!(c.read_reply(), b"+OK\r\n");
    }
    // Wait until the mirror connection stops writing (nothing answers, so it stops at its
    // limit of unanswered commands, counted per write even inside a batch).
    let mut last = (u64::MAX, Instant::now());
    support::wait_until(Duration::from_secs(15), "the mirror stops writing", || {
        let now = s.relay.swallowed();
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() >= Duration::from_millis(500)
    });
    let sent = s.relay.swallowed();
    let limit = 4096 * per_write + 256 * 1024 + 64 * 1024;
    assert!(sent <= limit, "{sent} bytes sent to a silent mirror, more than 4096 writes ({limit})");
    assert!(sent >= 4000 * per_write, "only {sent} bytes reached the mirror");
    // The rest wait in the queue, all still accounted as in flight.
    let stats = mirror_stats(&s, "target");
    assert_eq!(stats["in_flight"], n as u64, "{stats}");
    assert_identity(&stats);
}

#[test]
fn relative_ttls_arrive_as_absolute_expiries() {
    let s = setup("mirror:\n  mode: async\n");
    // 150 ms each way: the mirror applies ~300 ms after the source.
    s.relay.set_delay(Duration::from_millis(150));
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["SET", "session", "data", "EX", "100"]);
    c.request(&["SETEX", "setex", "100", "v"]);
    c.request(&["SET", "px", "v"]);
    c.request(&["PEXPIRE", "px", "100000"]);
    c.request(&["SET", "getex", "v"]);
    c.request(&["GETEX", "getex", "PX", "100000"]);
    wait_mirror_idle(&s, "target");
    s.relay.set_delay(Duration::ZERO);
    for key in ["session", "setex", "px", "getex"] {
        assert!(s.target.cli(&["PTTL", key]).parse::<i64>().unwrap() > 90_000, "{key} has its TTL on the target");
        // Absolute expiry times, comparable without racing the clock between two reads. A
        // relative TTL replayed late would expire ~300 ms later on the target.
        let src: i64 = s.source.cli(&["PEXPIRETIME", key]).parse().unwrap();
        let dst: i64 = s.target.cli(&["PEXPIRETIME", key]).parse().unwrap();
        assert!((src - dst).abs() <= 50, "{key}: source expires at {src}, target at {dst}");
    }
}

#[test]
fn pops_and_generated_values_leave_identical_data() {
    let s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut sadd = vec!["SADD", "set"];
    sadd.extend(members.iter().map(|m| m.as_str()));
    c.request(&sadd);
    for _ in 0..10 {
        c.request(&["SPOP", "set"]);
    }
    c.request(&["SPOP", "set", "5"]);
    c.request(&["RPUSH", "queue", "a", "b", "c"]);
    assert_eq!(c.request(&["BLPOP", "queue", "1"]), b"*2\r\n$5\r\nqueue\r\n$1\r\na\r\n");
    c.request(&["INCRBYFLOAT", "f", "0.1"]);
    c.request(&["INCRBYFLOAT", "f", "0.2"]);
    let id = text(c.request(&["XADD", "stream", "*", "k", "v"]));
    c.request(&["ZADD", "z", "1", "a", "2", "b", "3", "c"]);
    c.request(&["ZPOPMIN", "z"]);
    assert!(text(c.request(&["BZPOPMIN", "z", "1"])).contains("b"));
    c.request(&["RPUSH", "from", "1", "2", "3", "4"]);
    c.request(&["BLMOVE", "from", "to", "LEFT", "RIGHT", "1"]);
    c.request(&["LMPOP", "1", "from", "RIGHT", "COUNT", "2"]);
    c.request(&["SET", "restored-src", "payload"]);
    let dump = c.request(&["DUMP", "restored-src"]);
    let dump = &dump[dump.iter().position(|&b| b == b'\n').unwrap() + 1..dump.len() - 2];
    let mut restore = support::encode_cmd(&["RESTORE", "restored", "100000"]);
    // RESTORE's payload is binary: patch it in as a raw bulk string.
    restore[1] = b'4';
    restore.extend_from_slice(format!("${}\r\n", dump.len()).as_bytes());
    restore.extend_from_slice(dump);
    restore.extend_from_slice(b"\r\n");
    c.send(&restore);
    assert_eq!(c.read_reply(), b"+OK\r\n");
    c.request(&["SET", "exp", "v"]);
    c.request(&["EXPIRE", "exp", "100"]);
    c.request(&["PSETEX", "psetex", "100000", "v"]);
    wait_mirror_idle(&s, "target");
    for (key, cmd) in [("from", "LRANGE"), ("to", "LRANGE")] {
        assert_eq!(s.source.cli(&[cmd, key, "0", "-1"]), s.target.cli(&[cmd, key, "0", "-1"]), "{key}");
    }
    assert_eq!(s.target.cli(&["LRANGE", "to", "0", "-1"]), "1");
    assert_eq!(s.target.cli(&["GET", "restored"]), "payload");
    for key in ["restored", "exp", "psetex"] {
        // Absolute expiry times: comparable without racing the clock between two reads.
        let src: i64 = s.source.cli(&["PEXPIRETIME", key]).parse().unwrap();
        let dst: i64 = s.target.cli(&["PEXPIRETIME", key]).parse().unwrap();
        assert!(dst > 0 && (src - dst).abs() <= 50, "{key}: {src} {dst}");
    }
    let sorted = |r: &RedisServer| {
        let mut v: Vec<String> = r.cli(&["SMEMBERS", "set"]).lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&s.source).len(), 35);
    assert_eq!(sorted(&s.source), sorted(&s.target), "SPOP left different sets");
    assert_eq!(s.source.cli(&["LRANGE", "queue", "0", "-1"]), s.target.cli(&["LRANGE", "queue", "0", "-1"]));
    assert_eq!(s.source.cli(&["GET", "f"]), s.target.cli(&["GET", "f"]));
    let id = id.lines().nth(1).unwrap_or_default().to_string();
    assert!(s.target.cli(&["XRANGE", "stream", "-", "+"]).contains(&id), "XADD * used the source's id {id}");
    assert_eq!(s.source.cli(&["ZRANGE", "z", "0", "-1"]), s.target.cli(&["ZRANGE", "z", "0", "-1"]));
}

#[test]
fn a_blocked_pop_woken_by_another_client_is_mirrored_after_the_push() {
    // The pop's reply (dedicated connection) and the push's (pooled connection) are read
    // on different tasks; mirrored in the wrong order, the target would LPOP an empty list
    // and then keep the pushed job, to be popped a second time after cutover. With two
    // worker threads the two replies are also read on different threads.
    for workers in [1, 2] {
        blocked_pops_follow_their_pushes(workers);
    }
}

/// One client per key, each blocked in `BLPOP key 10` on the source.
fn blocked_pops(s: &Setup, keys: &[String]) -> Vec<RawConn> {
    let waiters = keys
        .iter()
        .map(|key| {
            let mut c = RawConn::connect(s.proxy.addr());
            c.send_cmd(&["BLPOP", key, "10"]);
            c
        })
        .collect();
    support::wait_until(Duration::from_secs(10), "every BLPOP blocked on the source", || {
        s.source.cli(&["INFO", "clients"]).contains(&format!("blocked_clients:{}", keys.len()))
    });
    waiters
}

fn blocked_pops_follow_their_pushes(workers: u32) {
    let s = setup(&format!("mirror:\n  mode: async\nworkers: {workers}\n"));
    let mut pusher = RawConn::connect(s.proxy.addr());
    const WAITERS: usize = 40;
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let keys: Vec<String> = (0..WAITERS).map(|i| format!("q:{round}:{i}")).collect();
        let mut waiters = blocked_pops(&s, &keys);
        // One pipelined read of pushes feeds all of them.
        let mut pushes = Vec::new();
        for i in 0..WAITERS {
            pushes.extend_from_slice(&encode_cmd(&["RPUSH", &format!("q:{round}:{i}"), "job"]));
        }
        pusher.send(&pushes);
        for _ in 0..WAITERS {
            assert_eq!(pusher.read_reply(), b":1\r\n");
        }
        for (i, w) in waiters.iter_mut().enumerate() {
            let key = format!("q:{round}:{i}");
            assert_eq!(text(w.read_reply()), format!("*2\r\n${}\r\n{key}\r\n$3\r\njob\r\n", key.len()));
        }
    }
    // A stack: two pushes in one pipeline, the first woken pop takes the first push and the
    // second stays. The second push's reply reaches tandem before the fence is answered, so
    // its effect is queued before the pop's: a positional LPOP would take the wrong one.
    let keys: Vec<String> = (0..WAITERS).map(|i| format!("stack:{i}")).collect();
    let mut waiters = blocked_pops(&s, &keys);
    let mut pushes = Vec::new();
    for i in 0..WAITERS {
        let key = format!("stack:{i}");
        pushes.extend_from_slice(&encode_cmd(&["LPUSH", &key, "first"]));
        pushes.extend_from_slice(&encode_cmd(&["LPUSH", &key, "second"]));
    }
    pusher.send(&pushes);
    for _ in 0..WAITERS * 2 {
        pusher.read_reply();
    }
    for w in waiters.iter_mut() {
        assert!(text(w.read_reply()).ends_with("$5\r\nfirst\r\n"));
    }

    let stats = wait_mirror_idle(&s, "target");
    assert_identity(&stats);
    let left = s.target.cli(&["KEYS", "q:*"]);
    assert!(left.is_empty(), "jobs popped on the source but still queued on the target (workers: {workers}): {left}");
    for i in 0..WAITERS {
        let key = format!("stack:{i}");
        assert_eq!(s.source.cli(&["LRANGE", &key, "0", "-1"]), "second");
        assert_eq!(s.target.cli(&["LRANGE", &key, "0", "-1"]), "second", "{key} on the target, workers: {workers}");
    }
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    let fences = format!("tandem_mirror_pop_fence_seconds_count {}\n", WAITERS * (ROUNDS + 1));
    assert!(metrics.contains(&fences), "one fence per pop: {fences}\n{metrics}");
}

#[test]
fn a_client_s_pipelined_blocking_moves_are_mirrored_in_its_order() {
    // Both moves wait for a fence; the second's effect must still come after the first's.
    pinned_moves_keep_their_order(&["BLMOVE", "b", "c", "LEFT", "RIGHT", "10"]);
}

#[test]
fn a_write_behind_a_fenced_pop_on_the_same_connection_is_mirrored_after_it() {
    // The LMOVE is answered right after the BLMOVE; its effect would be queued at once while
    // the BLMOVE's waits for its fence.
    pinned_moves_keep_their_order(&["LMOVE", "b", "c", "LEFT", "RIGHT"]);
}

/// A client held on its dedicated connection (client tracking) pipelines `BLMOVE a b` and
/// then `second`, which moves on from `b` to `c`, ten times, each fed by one push onto `a`.
/// Mirrored out of order, the second move finds `b` still empty on the target.
fn pinned_moves_keep_their_order(second: &[&str]) {
    for workers in [1, 2] {
        let s = setup(&format!("mirror:\n  mode: async\nworkers: {workers}\n"));
        let mut mover = RawConn::connect(s.proxy.addr());
        assert_eq!(mover.request(&["CLIENT", "TRACKING", "ON"]), b"+OK\r\n");
        let mut pusher = RawConn::connect(s.proxy.addr());
        for i in 0..10 {
            let mut both = encode_cmd(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "10"]);
            both.extend_from_slice(&encode_cmd(second));
            mover.send(&both);
            support::wait_until(Duration::from_secs(10), "the BLMOVE blocked", || {
                s.source.cli(&["INFO", "clients"]).contains("blocked_clients:1")
            });
            let job = format!("job{i}");
            assert_eq!(pusher.request(&["RPUSH", "a", &job]), b":1\r\n");
            for _ in 0..2 {
                assert_eq!(text(mover.read_reply()), format!("${}\r\n{job}\r\n", job.len()));
            }
        }
        wait_mirror_idle(&s, "target");
        for key in ["a", "b", "c"] {
            let source = s.source.cli(&["LRANGE", key, "0", "-1"]);
            assert_eq!(s.target.cli(&["LRANGE", key, "0", "-1"]), source, "{key} with workers: {workers}");
        }
        assert_eq!(s.target.cli(&["LLEN", "c"]), "10");
    }
}

#[test]
fn a_pop_whose_fence_is_late_is_mirrored_after_mirror_timeout() {
    // The source answers 200 ms after each request (100 ms each way through the relay);
    // the fence may take 20 ms (mirror.timeout). The pop's effect goes anyway, counted late.
    let s = setup_with(Side::Source, "", "mirror:\n  mode: async\n  timeout: 20ms\n");
    let mut c = RawConn::connect(s.proxy.addr());
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
    s.relay.set_delay(Duration::from_millis(100));
    let mut waiter = RawConn::connect(s.proxy.addr());
    waiter.send_cmd(&["BLPOP", "late", "10"]);
    support::wait_until(Duration::from_secs(10), "the BLPOP blocked", || {
        s.source.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    assert_eq!(c.request(&["RPUSH", "late", "job"]), b":1\r\n");
    let started = Instant::now();
    assert_eq!(text(waiter.read_reply()), "*2\r\n$4\r\nlate\r\n$3\r\njob\r\n");
    // Without the bound the reply would wait for the fence's 200 ms round trip.
    assert!(started.elapsed() < Duration::from_millis(150), "the reply waited {:?}", started.elapsed());
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    assert!(metrics.contains("\ntandem_mirror_pop_fence_late_total 1\n"), "{metrics}");
    // Both effects were queued before the reply was released: the push, then the removal.
    let stats = http::wait_mirror_idle(s.proxy.admin_port())["mirror"]["towards"]["target"].clone();
    assert_eq!((stats["applied"].as_u64(), stats["diverged"].as_u64()), (Some(2), Some(0)), "{stats}");
    assert_eq!(s.target.cli(&["EXISTS", "late"]), "0");
}

#[test]
fn a_popped_element_missing_on_the_target_is_counted_as_diverged() {
    let s = setup("mirror:\n  mode: async\n");
    // Written to the source behind tandem's back: the target never had it.
    s.source.cli(&["RPUSH", "q", "job"]);
    let mut c = RawConn::connect(s.proxy.addr());
    assert_eq!(c.request(&["BLPOP", "q", "1"]), b"*2\r\n$1\r\nq\r\n$3\r\njob\r\n");
    let stats = wait_mirror_idle(&s, "target");
    assert_identity(&stats);
    assert_eq!(stats["diverged"], 1, "the LREM that removed nothing: {stats}");
}

#[test]
fn evalsha_unknown_to_the_mirror_is_sent_as_eval() {
    let s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    let script = "return redis.call('SET', KEYS[1], ARGV[1])";
    let sha = text(c.request(&["SCRIPT", "LOAD", script]));
    let sha = sha.lines().nth(1).unwrap().to_string();
    // SCRIPT LOAD is mirrored, so after cutover the target knows the script too.
    wait_mirror_idle(&s, "target");
    assert_eq!(s.target.cli(&["SCRIPT", "EXISTS", &sha]), "1");
    // A mirror that lost its script cache (restarted) still gets the effect, as EVAL.
    s.target.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(c.request(&["EVALSHA", &sha, "1", "scripted", "yes"]), b"+OK\r\n");
    wait_target(&s, "EVALSHA effect on target", |t| t.cli(&["GET", "scripted"]) == "yes");
}

#[test]
fn transactions_are_mirrored_as_one_block() {
    let s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["MULTI"]);
    c.request(&["SET", "a", "1"]);
    c.request(&["INCR", "a"]);
    c.request(&["SADD", "s", "x", "y", "z"]);
    c.request(&["SPOP", "s"]);
    c.request(&["GET", "a"]);
    let exec = text(c.request(&["EXEC"]));
    assert!(exec.starts_with("*5\r\n"), "{exec}");
    let stats = wait_mirror_idle(&s, "target");
    assert_eq!(stats["enqueued"], 1, "one block for the whole transaction");
    assert_eq!(stats["applied"], 1);
    assert_eq!(s.target.cli(&["GET", "a"]), "2");
    let members = |r: &RedisServer| {
        let mut v: Vec<String> = r.cli(&["SMEMBERS", "s"]).lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(members(&s.source), members(&s.target));
    // A failed transaction is not mirrored.
    c.request(&["MULTI"]);
    c.request(&["SET", "b", "1"]);
    c.request(&["NOSUCHCMD"]);
    assert!(text(c.request(&["EXEC"])).starts_with("-EXECABORT"));
    assert_eq!(mirror_stats(&s, "target")["enqueued"], 1);
}

#[test]
fn multi_key_commands_are_split_and_merged_across_sides() {
    let s = setup("cutover:\n  percent: 50\n");
    let plan = CutoverPlan::new(50.0);
    let keys: Vec<String> = (0..20).map(|i| format!("mk{i}")).collect();
    let sides: HashSet<Side> = keys.iter().map(|k| plan.side(slot(k.as_bytes()))).collect();
    assert_eq!(sides.len(), 2, "the keys cover both sides");
    let mut c = RawConn::connect(s.proxy.addr());
    let mut mset = vec!["MSET"];
    let values: Vec<String> = keys.iter().map(|k| format!("val-{k}")).collect();
    for (k, v) in keys.iter().zip(&values) {
        mset.push(k);
        mset.push(v);
    }
    assert_eq!(c.request(&mset), b"+OK\r\n");
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(|k| k.as_str()));
    mget.push("missing-key");
    // The merged reply is exactly what one Redis holding every key would answer.
    let single = RedisServer::start();
    single.cli(&mset);
    let mut direct = RawConn::connect(single.addr());
    assert_eq!(text(c.request(&mget)), text(direct.request(&mget)));
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(|k| k.as_str()));
    exists.push("missing-key");
    assert_eq!(c.request(&exists), b":20\r\n");
    let mut del = vec!["DEL"];
    del.extend(keys[..10].iter().map(|k| k.as_str()));
    assert_eq!(c.request(&del), b":10\r\n");
    assert_eq!(c.request(&exists), b":10\r\n");
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    assert!(metrics.contains("tandem_split_commands_total 5"), "{metrics}");
}

#[test]
fn split_writes_in_sync_mode_wait_for_every_mirror() {
    let s = setup("mirror:\n  mode: sync\n  timeout: 2s\ncutover:\n  percent: 50\n");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["PING"]);
    s.relay.set_delay(Duration::from_millis(100));
    let mut mset = vec!["MSET".to_string()];
    for i in 0..20 {
        mset.push(format!("sk{i}"));
        mset.push(format!("v{i}"));
    }
    let args: Vec<&str> = mset.iter().map(|a| a.as_str()).collect();
    assert_eq!(c.request(&args), b"+OK\r\n");
    // Acknowledged means both stores have every key, whichever side served it.
    for i in 0..20 {
        let key = format!("sk{i}");
        assert_eq!(s.source.cli(&["GET", &key]), format!("v{i}"), "{key} on source");
        assert_eq!(s.target.cli(&["GET", &key]), format!("v{i}"), "{key} on target");
    }
}

#[test]
fn sync_mode_waits_for_the_mirror_and_bounds_the_wait() {
    let s = setup("mirror:\n  mode: sync\n  timeout: 1s\n");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["PING"]);
    s.relay.set_delay(Duration::from_millis(100));
    let t = Instant::now();
    assert_eq!(c.request(&["SET", "k", "v"]), b"+OK\r\n");
    let took = t.elapsed();
    // The reply came only after the target applied it: it is there at once.
    assert_eq!(s.target.cli(&["GET", "k"]), "v");
    assert!(took >= Duration::from_millis(200), "sync reply did not wait for the mirror: {took:?}");
    // A dead mirror: the reply still comes, after the bounded wait.
    s.relay.set_delay(Duration::ZERO);
    s.relay.blackhole(true);
    let t = Instant::now();
    assert_eq!(c.request(&["SET", "k2", "v"]), b"+OK\r\n");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "bounded wait: {took:?}");
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    assert!(metrics.contains("tandem_sync_mirror_late_total 1"), "{metrics}");
    assert_eq!(s.source.cli(&["GET", "k2"]), "v");
}

#[test]
fn accounting_balances_and_journal_names_exactly_the_dropped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("repair.jsonl");
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\n    connect_timeout: 200ms\n    command_timeout: 500ms\n\
         mirror:\n  mode: async\n  journal: {}\n",
        source.url(),
        target.url(),
        journal.display()
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    let status = |towards: &str| http::status(proxy.admin_port())["mirror"]["towards"][towards].clone();
    let mut c = RawConn::connect(proxy.addr());
    for i in 0..200 {
        c.request(&["SET", &format!("ok:{i}"), "v"]);
    }
    support::wait_until(Duration::from_secs(10), "first batch applied", || status("target")["applied"] == 200);

    // The target dies mid-run; clients keep being served by the source.
    target.stop();
    for i in 0..200 {
        assert_eq!(c.request(&["SET", &format!("lost:{i}"), "v"]), b"+OK\r\n");
        assert_identity(&status("target"));
    }
    let mut stats = serde_json::Value::Null;
    support::wait_until(Duration::from_secs(15), "every mirrored write settled", || {
        stats = status("target");
        stats["in_flight"] == 0
    });
    assert_identity(&stats);
    assert_eq!(stats["enqueued"], 400);
    assert_eq!(stats["applied"], 200);
    assert_eq!(stats["dropped"], 200, "{stats}");

    let mut keys = HashSet::new();
    support::wait_until(Duration::from_secs(10), "journal written", || {
        keys = std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("journal line is JSON");
                assert_eq!(v["backend"], "target");
                assert!(v["reason"].as_str().unwrap().starts_with("dropped"), "{v}");
                v["key"].as_str().unwrap().to_string()
            })
            .collect();
        keys.len() == 200
    });
    let expected: HashSet<String> = (0..200).map(|i| format!("lost:{i}")).collect();
    assert_eq!(keys, expected, "the journal lists exactly the dropped keys");

    // Mirroring resumes by itself when the target returns.
    target.restart();
    support::wait_until(Duration::from_secs(15), "mirror resumes", || {
        c.request(&["SET", "after", "v"]);
        target.cli(&["EXISTS", "after"]) == "1"
    });
}

/// A client that writes then reads its own keys, counting reads that did not return what it
/// had just written.
fn spawn_checker(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let mut c = RawConn::connect(addr);
        c.set_timeout(Duration::from_secs(20));
        let (mut stale, mut checked) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            n += 1;
            let key = format!("own:{}", n % 64);
            let value = n.to_string();
            c.request(&["SET", &key, &value]);
            let got = c.request(&["GET", &key]);
            checked += 1;
            if got != format!("${}\r\n{value}\r\n", value.len()).into_bytes() {
                stale += 1;
            }
        }
        (stale, checked)
    })
}

/// Pipelines `count` large writes through the proxy so the mirror queue builds a backlog
/// behind the bandwidth-capped relay.
fn flood(addr: &str, count: usize) {
    let mut c = RawConn::connect(addr.to_string());
    c.set_timeout(Duration::from_secs(30));
    let value = "x".repeat(50_000);
    let mut batch = Vec::new();
    for i in 0..count {
        batch.extend(support::encode_cmd(&["SET", &format!("bulk:{i}"), &value]));
    }
    c.send(&batch);
    for _ in 0..count {
        assert_eq!(c.read_reply(), b"+OK\r\n");
    }
}

#[test]
fn flips_under_load_never_serve_a_stale_read() {
    let s = setup("mirror:\n  mode: async\ncutover:\n  flip_timeout: 20s\n");
    // The target is reached through a 2 MB/s link: 3 MB of writes put its mirror queue
    // more than a second behind the source.
    s.relay.set_bandwidth(Some(2_000_000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = spawn_checker(s.proxy.addr(), stop.clone());
    let progress = |min: u64| {
        let before = http::status(s.proxy.admin_port())["commands"].as_u64().unwrap();
        support::wait_until(Duration::from_secs(20), "checker made progress", || {
            http::status(s.proxy.admin_port())["commands"].as_u64().unwrap() > before + min
        });
    };
    let mut waits = Vec::new();
    for percent in ["100", "0", "100", "0"] {
        progress(20);
        // A backlog towards the side about to take over the checker's keys.
        flood(&s.proxy.addr(), 60);
        let (code, body) = http::post(s.proxy.admin_port(), "/cutover", &format!("{{\"percent\": {percent}}}"));
        assert_eq!(code, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["drained"], true, "{report}");
        waits.push(report["waited_ms"].as_u64().unwrap());
    }
    progress(20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stale, checked) = checker.join().unwrap();
    eprintln!("flip waits under load (ms): {waits:?}; {checked} read-after-write checks");
    assert!(checked > 50, "checker ran: {checked}");
    assert_eq!(stale, 0, "stale reads during flips ({checked} checked)");
    // Raising to 100% waited for the backlog towards the target.
    assert!(waits[0] >= 200, "{waits:?}");
}

#[test]
fn keyless_commands_go_to_the_source_and_flushes_are_mirrored() {
    let s = setup("mirror:\n  mode: async\ncutover:\n  percent: 100\n");
    let mut c = RawConn::connect(s.proxy.addr());
    s.source.cli(&["SET", "only-on-source", "1"]);
    // With mirroring on, the source is complete: DBSIZE, KEYS, SCAN read it.
    assert_eq!(c.request(&["DBSIZE"]), b":1\r\n");
    c.request(&["SET", "k", "v"]);
    assert_eq!(s.target.cli(&["GET", "k"]), "v", "served by the target at 100%");
    support::wait_until(Duration::from_secs(10), "mirrored back to the source", || s.source.cli(&["GET", "k"]) == "v");
    assert_eq!(c.request(&["FLUSHALL"]), b"+OK\r\n");
    support::wait_until(Duration::from_secs(10), "FLUSHALL mirrored", || {
        s.source.cli(&["DBSIZE"]) == "0" && s.target.cli(&["DBSIZE"]) == "0"
    });
    // PUBLISH is delivered once: it is not mirrored.
    c.request(&["PUBLISH", "ch", "m"]);
    // The SET was served by the target and mirrored to the source; FLUSHALL has no key, so
    // the source served it and it was mirrored to the target.
    assert_eq!(mirror_stats(&s, "source")["enqueued"], 1);
    assert_eq!(mirror_stats(&s, "target")["enqueued"], 1);
}

#[test]
fn client_tracking_covers_keys_on_both_sides() {
    let s = setup("cutover:\n  percent: 50\n");
    let plan = CutoverPlan::new(50.0);
    let key = (0..100).map(|i| format!("cached:{i}")).find(|k| plan.side(slot(k.as_bytes())) == Side::Target).unwrap();
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["HELLO", "3"]);
    assert_eq!(c.request(&["CLIENT", "TRACKING", "ON"]), b"+OK\r\n");
    c.request(&["SET", &key, "1"]);
    assert_eq!(c.request(&["GET", &key]), b"$1\r\n1\r\n");
    // Another client changes the key, which lives on the target.
    RawConn::connect(s.proxy.addr()).request(&["SET", &key, "2"]);
    let push = text(c.read_reply());
    assert!(push.starts_with(">2") && push.contains("invalidate") && push.contains(&key), "{push}");
}

/// Writes acknowledged to the client but still queued for the target when SIGTERM arrives
/// reach the target before the process exits.
#[test]
fn sigterm_drains_the_mirror_queue_before_exiting() {
    const N: usize = 400;
    let mut s = setup("mirror:\n  mode: async\n");
    let mut c = RawConn::connect(s.proxy.addr());
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
    // 400 KB of writes behind a 200 KB/s link: about two seconds of mirror backlog.
    s.relay.set_bandwidth(Some(200 * 1024));
    let value = "v".repeat(1024);
    let mut pipeline = Vec::new();
    for i in 0..N {
        pipeline.extend(encode_cmd(&["SET", &format!("k:{i}"), &value]));
    }
    c.send(&pipeline);
    for i in 0..N {
        assert_eq!(c.read_reply(), b"+OK\r\n", "reply {i}");
    }
    drop(c);
    let queued: u64 = s.target.cli(&["DBSIZE"]).parse().unwrap();
    assert!(queued < N as u64, "the backlog was already applied ({queued} keys): the test proves nothing");

    s.proxy.signal("TERM");
    let status = s.proxy.wait_exit(Duration::from_secs(15)).expect("tandem exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(s.target.cli(&["DBSIZE"]), N.to_string(), "mirror writes lost at shutdown");
    assert!(s.proxy.log().contains("mirror queues drained"), "{}", s.proxy.log());
}
