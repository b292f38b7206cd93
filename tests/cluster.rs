//! tandem in front of a real Redis Cluster (`redis+cluster://` backend URLs): one plain Redis
//! to the client over a sharded keyspace (routing by slot, multi-key commands split and
//! merged, keyless commands fanned out, SCAN with a composite cursor), resharding under
//! load, and migrations from a single server to a cluster and back.
//!
//! Every cluster here is real `redis-server --cluster-enabled yes` processes formed by
//! `redis-cli --cluster create` (see `support::cluster`); assertions about where data lives
//! read the nodes directly, never through the proxy.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::cli::{run_tandem, verify_no_differences, CliOut};
use support::cluster::{check_reshard, CLUSTER_SLOTS};
use support::load::{self, check_ledger, value_seq, KeyKind, Load, LoadSpec, MirrorStats, Mix};
use support::{http, key_slot, RawConn, RedisCluster, RedisServer, Tandem};
use tandem::route::Side;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A blocking `redis` connection to the proxy with bounded connect, read and write times.
fn conn(proxy: &Tandem) -> redis::Connection {
    let c = proxy
        .client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to tandem {}: {e}", proxy.addr()));
    c.set_read_timeout(Some(Duration::from_secs(20))).expect("set_read_timeout");
    c.set_write_timeout(Some(Duration::from_secs(20))).expect("set_write_timeout");
    c
}

fn yaml_source_only(source_url: &str) -> String {
    format!("backends:\n  source:\n    url: {source_url}\n")
}

fn yaml_two(source_url: &str, target_url: &str, mirror_mode: &str) -> String {
    format!(
        "backends:\n  source:\n    url: {source_url}\n  target:\n    url: {target_url}\nmirror:\n  mode: {mirror_mode}\n"
    )
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `tandem backfill --source S --target T --json --no-progress --checkpoint DIR/NAME`.
fn backfill(dir: &Path, name: &str, source: &str, target: &str) -> CliOut {
    let checkpoint = dir.join(format!("{name}.checkpoint.json")).display().to_string();
    let args =
        ["backfill", "--source", source, "--target", target, "--json", "--no-progress", "--checkpoint", &checkpoint];
    run_tandem(dir, &args, Duration::from_secs(90))
}

#[track_caller]
fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} missing or not a count in {v}"))
}

/// A string reply as text, panicking with the raw bytes otherwise.
#[track_caller]
fn bulk_text(reply: &[u8]) -> Option<String> {
    match redis::parse_redis_value(reply) {
        Ok(redis::Value::Nil) => None,
        Ok(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        other => panic!("expected a bulk string, got {other:?} ({:?})", String::from_utf8_lossy(reply)),
    }
}

/// SCAN through `c` until the cursor comes back as 0; every key returned, in order, with
/// duplicates kept (so the caller can assert there are none). Bounded in iterations.
#[track_caller]
fn scan_all(c: &mut redis::Connection, pattern: Option<&str>, count: usize) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(&cursor);
        if let Some(p) = pattern {
            cmd.arg("MATCH").arg(p);
        }
        cmd.arg("COUNT").arg(count);
        let (next, batch): (String, Vec<String>) = cmd.query(c).unwrap_or_else(|e| panic!("SCAN {cursor}: {e}"));
        keys.extend(batch);
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
    panic!("SCAN did not return cursor 0 after 100,000 calls ({} keys so far)", keys.len())
}

/// Types written by [`load_typed`].
const KINDS: [&str; 5] = ["str", "hash", "list", "set", "zset"];

/// `n` keys `{prefix}{kind}:{i}` cycling through string, hash, list, set and sorted set; of
/// every ten keys two have no expiry, one an absolute PEXPIREAT and seven an EXPIRE of
/// 600..3600 s. As commands (key at index 1), for a plain server or a cluster.
fn typed_commands(prefix: &str, n: usize) -> Vec<Vec<String>> {
    let now = now_ms();
    let mut cmds = Vec::with_capacity(n * 2);
    for i in 0..n {
        let key = format!("{prefix}{}:{i}", KINDS[i % 5]);
        let s = |v: &[String]| -> Vec<String> { v.to_vec() };
        let cmd = match i % 5 {
            0 => s(&["SET".into(), key.clone(), format!("value-{i}-{}", "x".repeat(i % 61))]),
            1 => s(&["HSET".into(), key.clone(), "a".into(), i.to_string(), "b".into(), "two".into()]),
            2 => s(&["RPUSH".into(), key.clone(), "first".into(), i.to_string(), "first".into()]),
            3 => s(&["SADD".into(), key.clone(), "m1".into(), "m2".into(), format!("m-{i}")]),
            _ => s(&[
                "ZADD".into(),
                key.clone(),
                "1".into(),
                "a".into(),
                "2.5".into(),
                "b".into(),
                i.to_string(),
                format!("c{i}"),
            ]),
        };
        cmds.push(cmd);
        match i % 10 {
            0 | 1 => {}
            2 => cmds.push(vec!["PEXPIREAT".into(), key.clone(), (now + 1_500_000 + i as i64).to_string()]),
            _ => cmds.push(vec!["EXPIRE".into(), key.clone(), (600 + (i * 7) % 3000).to_string()]),
        }
    }
    cmds
}

/// Sends commands to a plain server, pipelined; panics on any error reply.
#[track_caller]
fn run_on_server(server: &RedisServer, cmds: &[Vec<String>]) {
    for (cmd, reply) in cmds.iter().zip(load::request_many(&server.addr(), cmds)) {
        assert!(!reply.starts_with(b"-"), "{cmd:?} on {}: {:?}", server.addr(), String::from_utf8_lossy(&reply));
    }
}

/// Sends keyed commands straight to the cluster nodes; panics on any error reply.
#[track_caller]
fn run_on_cluster(cluster: &RedisCluster, cmds: &[Vec<String>]) {
    for (cmd, reply) in cmds.iter().zip(cluster.request_many(cmds)) {
        assert!(!reply.starts_with(b"-"), "{cmd:?} on the cluster: {:?}", String::from_utf8_lossy(&reply));
    }
}

/// A type-aware, order-independent rendering of a key's value read with `read`
/// (`TYPE` + the value), for comparing one store with another.
fn describe(mut read: impl FnMut(&[&str]) -> Vec<u8>, key: &str) -> String {
    let ty = String::from_utf8_lossy(&read(&["TYPE", key])).trim().trim_start_matches('+').to_string();
    let mut items: Vec<String> = match ty.as_str() {
        "string" => vec![bulk_text(&read(&["GET", key])).unwrap_or_default()],
        "hash" => flat(&read(&["HGETALL", key])),
        "list" => return format!("list {:?}", flat(&read(&["LRANGE", key, "0", "-1"]))),
        "set" => flat(&read(&["SMEMBERS", key])),
        "zset" => return format!("zset {:?}", flat(&read(&["ZRANGE", key, "0", "-1", "WITHSCORES"]))),
        "none" => vec![],
        other => vec![format!("unexpected type {other}")],
    };
    if ty == "hash" {
        let mut pairs: Vec<String> = items.chunks(2).map(|p| p.join("=")).collect();
        pairs.sort();
        return format!("hash {pairs:?}");
    }
    items.sort();
    format!("{ty} {items:?}")
}

/// An array reply of bulk strings as text.
fn flat(reply: &[u8]) -> Vec<String> {
    match redis::parse_redis_value(reply) {
        Ok(redis::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect(),
        other => vec![format!("not an array: {other:?}")],
    }
}

/// Checks a finished load against the ledger, reading every key through the proxy, and
/// every string key straight from the cluster too. Panics with examples on any loss.
#[track_caller]
fn assert_ledger_intact(report: &load::LoadReport, proxy: &Tandem, cluster: Option<&RedisCluster>) {
    let verdict = check_ledger(&report.ledger, &proxy.addr(), &proxy.addr(), |_| Side::Source);
    assert!(
        verdict.lost.is_empty(),
        "{} of {} keys read through tandem lost an acknowledged write:\n{}",
        verdict.lost.len(),
        verdict.checked,
        verdict.examples(10)
    );
    let Some(cluster) = cluster else { return };
    let strings: Vec<(&String, &load::KeyHistory)> =
        report.ledger.keys.iter().filter(|(_, h)| h.kind == KeyKind::Str).collect();
    let keys: Vec<String> = strings.iter().map(|(k, _)| k.to_string()).collect();
    let values = cluster.get_many(&keys);
    let mut lost = Vec::new();
    for ((key, h), v) in strings.iter().zip(values) {
        let state = v.as_deref().and_then(value_seq);
        if !h.accepts_str(state) {
            lost.push(format!("{key}: cluster has {state:?}, expected {}", h.expected()));
        }
    }
    assert!(
        lost.is_empty(),
        "{} string keys read from the cluster nodes are stale: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

// ---------------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------------

/// The cluster harness on its own (no proxy): formation with replicas, slots computed
/// locally agree with `CLUSTER KEYSLOT`, direct reads and writes follow the slot map, and a
/// reshard moves slots and keys.
#[test]
fn harness_cluster_forms_and_reshards() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1);
    eprintln!("3 primaries + 3 replicas formed in {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    let text = cluster.check();
    assert!(text.contains("[OK] All nodes agree about slots configuration."), "{text}");
    assert!(text.contains("[OK] All 16384 slots covered."), "{text}");
    for (i, p) in cluster.primaries().iter().enumerate() {
        assert!(p.cli(&["INFO", "replication"]).contains("role:master"), "node {i} is a primary");
    }
    for (i, r) in cluster.replicas().iter().enumerate() {
        assert!(r.cli(&["INFO", "replication"]).contains("role:slave"), "replica {i}");
    }
    assert!(cluster.slot_owners().iter().all(|&p| p != 0), "every slot has an owner");
    assert_eq!(cluster.slot_count(0) + cluster.slot_count(1) + cluster.slot_count(2), CLUSTER_SLOTS as usize);
    assert!(cluster.seed_url().starts_with("redis+cluster://127.0.0.1:"), "{}", cluster.seed_url());

    for key in ["", "a", "user:1000", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "{}x", "\u{e9}t\u{e9}"] {
        let via_server = cluster.nodes()[0].cli(&["CLUSTER", "KEYSLOT", key]);
        assert_eq!(key_slot(key.as_bytes()).to_string(), via_server, "slot of {key:?}");
    }

    let keys: Vec<String> = (0..2000).map(|i| format!("h:{i}")).collect();
    let sets: Vec<Vec<String>> = keys.iter().map(|k| vec!["SET".into(), k.clone(), format!("v-{k}")]).collect();
    run_on_cluster(&cluster, &sets);
    assert_eq!(cluster.dbsize_total(), 2000);
    assert!(cluster.dbsizes().iter().all(|&n| n > 400), "keys spread over the primaries: {:?}", cluster.dbsizes());
    let owner = cluster.primary_for_key("h:7");
    assert_eq!(owner.cli(&["GET", "h:7"]), "v-h:7", "the owner serves h:7 without a redirect");

    let before = (cluster.slot_count(0), cluster.slot_count(1));
    let t = Instant::now();
    let out = cluster.reshard(0, 1, 300, Duration::from_secs(60));
    eprintln!("reshard of 300 slots took {:?}", t.elapsed());
    check_reshard(&out, &cluster);
    assert_eq!((cluster.slot_count(0), cluster.slot_count(1)), (before.0 - 300, before.1 + 300));
    assert_eq!(cluster.dbsize_total(), 2000, "no key lost by the reshard");
    let got = cluster.get_many(&keys);
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_bytes()), "{k} after the reshard");
    }
    let mut all = cluster.all_keys();
    all.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(all, want);
    eprintln!("harness test done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// A cluster behind tandem looks like one Redis
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cluster_source_looks_like_one_redis() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);
    let mut c = conn(&proxy);

    // 1,000 keys over (nearly) as many slots, on every primary.
    let keys: Vec<String> = (0..1000).map(|i| format!("user:{i}")).collect();
    let slots: HashSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 950, "the keys use {} distinct slots", slots.len());
    for (i, chunk) in keys.chunks(100).enumerate() {
        if i % 2 == 0 {
            // One at a time...
            for k in chunk {
                let r: String = redis::cmd("SET").arg(k).arg(format!("v-{k}")).query(&mut c).unwrap();
                assert_eq!(r, "OK", "SET {k}");
            }
        } else {
            // ...and pipelined.
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("SET").arg(k).arg(format!("v-{k}"));
            }
            let r: Vec<String> = p.query(&mut c).unwrap_or_else(|e| panic!("pipelined SETs: {e}"));
            assert!(r.iter().all(|r| r == "OK"), "{r:?}");
        }
    }
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("GET").arg(k);
    }
    let got: Vec<Option<String>> = p.query(&mut c).unwrap();
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()), "GET {k} through tandem");
    }
    let direct = cluster.get_many(&keys);
    for (k, v) in keys.iter().zip(&direct) {
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_bytes()), "{k} on the node owning it");
    }
    let sizes = cluster.dbsizes();
    assert!(sizes.iter().all(|&n| n > 250), "each primary holds a share of the keys: {sizes:?}");
    let owner = cluster.primary_for_key("user:42");
    assert_eq!(owner.cli(&["GET", "user:42"]), "v-user:42");

    // Multi-key commands across slots: split per node, merged in the client's order.
    let mkeys: Vec<String> = (0..20).map(|i| format!("m:{i}")).collect();
    let mslots: HashSet<u16> = mkeys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(mslots.len() >= 15);
    let mut mset = redis::cmd("MSET");
    for k in &mkeys {
        mset.arg(k).arg(format!("mv-{k}"));
    }
    let r: String = mset.query(&mut c).unwrap_or_else(|e| panic!("MSET across slots: {e}"));
    assert_eq!(r, "OK");
    for k in &mkeys {
        assert_eq!(cluster.primary_for_key(k).cli(&["GET", k]), format!("mv-{k}"), "MSET wrote {k} on its node");
    }
    let mut mget = redis::cmd("MGET");
    mget.arg("m:5").arg("missing:1").arg(&mkeys).arg("m:0");
    let got: Vec<Option<String>> = mget.query(&mut c).unwrap_or_else(|e| panic!("MGET across slots: {e}"));
    let mut want: Vec<Option<String>> = vec![Some("mv-m:5".into()), None];
    want.extend(mkeys.iter().map(|k| Some(format!("mv-{k}"))));
    want.push(Some("mv-m:0".into()));
    assert_eq!(got, want, "MGET merged in request order");
    let exists: i64 =
        redis::cmd("EXISTS").arg("m:0").arg("m:0").arg("m:7").arg("missing:2").arg("m:13").query(&mut c).unwrap();
    assert_eq!(exists, 4, "EXISTS counts every named key that exists, repeats included");
    let touched: i64 = redis::cmd("TOUCH").arg("m:1").arg("m:2").arg("missing:3").query(&mut c).unwrap();
    assert_eq!(touched, 2);
    let deleted: i64 = redis::cmd("DEL").arg("m:0").arg("m:1").arg("m:2").arg("missing:4").query(&mut c).unwrap();
    assert_eq!(deleted, 3, "DEL across slots");
    let unlinked: i64 = redis::cmd("UNLINK").arg("m:3").arg("m:4").arg("m:3").query(&mut c).unwrap();
    assert_eq!(unlinked, 2, "UNLINK across slots");
    let got: Vec<Option<String>> = redis::cmd("MGET").arg("m:0").arg("m:3").arg("m:5").query(&mut c).unwrap();
    assert_eq!(got, vec![None, None, Some("mv-m:5".to_string())]);
    // Same-slot multi-key commands still work as on any Redis.
    let r: String = redis::cmd("MSET").arg("{tag}a").arg("1").arg("{tag}b").arg("2").query(&mut c).unwrap();
    assert_eq!(r, "OK");
    let renamed: String = redis::cmd("RENAME").arg("{tag}a").arg("{tag}c").query(&mut c).unwrap();
    assert_eq!(renamed, "OK");

    // A script loaded through tandem exists on every primary: EVALSHA works for keys
    // anywhere.
    let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query(&mut c).unwrap();
    for p in cluster.primaries() {
        assert_eq!(p.cli(&["SCRIPT", "EXISTS", &sha]), "1", "script on {}", p.addr());
    }
    let mut on_each = HashSet::new();
    for i in 0..100 {
        let key = format!("counter:{i}");
        on_each.insert(cluster.primary_for_key(&key).port());
        let n: i64 = redis::cmd("EVALSHA").arg(&sha).arg(1).arg(&key).arg(5).query(&mut c).unwrap();
        assert_eq!(n, 5, "EVALSHA on {key}");
        let _ = redis::cmd("DEL").arg(&key).query::<i64>(&mut c).unwrap();
        if on_each.len() == 3 {
            break;
        }
    }
    assert_eq!(on_each.len(), 3, "EVALSHA ran on every primary");

    // Keyless commands fan out over the primaries.
    // user:*, m:* minus 3 deleted and 2 unlinked, {tag}b and {tag}c.
    let total = 1000 + 20 - 3 - 2 + 2;
    assert_eq!(cluster.dbsize_total(), total);
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(dbsize, total, "DBSIZE through tandem is the sum over the primaries");

    let mut all_direct = cluster.all_keys();
    all_direct.sort();
    for count in [10, 100, 1000] {
        let scanned = scan_all(&mut c, None, count);
        let unique: HashSet<&String> = scanned.iter().collect();
        assert_eq!(unique.len(), scanned.len(), "SCAN COUNT {count} returned a key twice");
        let mut scanned = scanned.clone();
        scanned.sort();
        assert_eq!(scanned, all_direct, "SCAN COUNT {count} through tandem returns every key once");
    }
    let mut users = scan_all(&mut c, Some("user:*"), 200);
    users.sort();
    let mut want_users = keys.clone();
    want_users.sort();
    assert_eq!(users, want_users, "SCAN MATCH user:*");
    let mut all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    all.sort();
    assert_eq!(all, all_direct, "KEYS * through tandem");
    let some: Vec<String> = redis::cmd("KEYS").arg("m:1*").query(&mut c).unwrap();
    let some: BTreeMap<String, ()> = some.into_iter().map(|k| (k, ())).collect();
    assert_eq!(
        some.keys().cloned().collect::<Vec<_>>(),
        ["m:10", "m:11", "m:12", "m:13", "m:14", "m:15", "m:16", "m:17", "m:18", "m:19"]
    );

    let r: String = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(r, "OK");
    assert_eq!(cluster.dbsize_total(), 0, "FLUSHALL reached every primary");
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(dbsize, 0);
    assert!(scan_all(&mut c, None, 100).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Resharding under load
// ---------------------------------------------------------------------------------------------

/// What [`multi_key_traffic`] saw.
struct MultiKeyReport {
    ops: u64,
    errors: Vec<String>,
    /// The last value written (acknowledged) to the three keys of each tag.
    last: HashMap<u32, String>,
}

/// Multi-key traffic through the proxy until `stop` (or 60 s): MSET of three keys sharing a
/// hash tag (one slot: while that slot migrates, a node answers TRYAGAIN when the keys are
/// split between the two nodes), then MGET of the three plus one key of another tag, checked
/// against the values written last.
fn multi_key_traffic(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<MultiKeyReport> {
    std::thread::spawn(move || {
        let mut c = RawConn::connect(addr.as_str());
        c.set_timeout(Duration::from_secs(5));
        let mut r = MultiKeyReport { ops: 0, errors: Vec::new(), last: HashMap::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        let keys = |tag: u32| -> Vec<String> { ["a", "b", "c"].iter().map(|k| format!("{{mk{tag}}}:{k}")).collect() };
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i += 1;
            let (tag, other) = (i % 300, (i + 150) % 300);
            let value = format!("m{i}");
            let k = keys(tag);
            let mset = ["MSET", &k[0], &value, &k[1], &value, &k[2], &value];
            let reply = match c.try_send(&support::encode_cmd(&mset)).and_then(|_| c.try_read_reply()) {
                Ok(reply) => reply,
                Err(e) => {
                    r.errors.push(format!("MSET io: {e}"));
                    return r;
                }
            };
            r.ops += 1;
            if reply != b"+OK\r\n" {
                r.errors.push(format!("MSET {tag}: {:?}", String::from_utf8_lossy(&reply)));
                continue;
            }
            r.last.insert(tag, value.clone());
            let o = keys(other);
            let mget = ["MGET", &k[0], &k[1], &k[2], &o[0]];
            let reply = match c.try_send(&support::encode_cmd(&mget)).and_then(|_| c.try_read_reply()) {
                Ok(reply) => reply,
                Err(e) => {
                    r.errors.push(format!("MGET io: {e}"));
                    return r;
                }
            };
            r.ops += 1;
            let want: Vec<Option<String>> =
                vec![Some(value.clone()), Some(value.clone()), Some(value.clone()), r.last.get(&other).cloned()];
            let got: Option<Vec<Option<String>>> = match redis::parse_redis_value(&reply) {
                Ok(redis::Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        redis::Value::Nil => Some(None),
                        redis::Value::BulkString(b) => Some(Some(String::from_utf8_lossy(&b).into_owned())),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            if got.as_ref() != Some(&want) {
                r.errors.push(format!("MGET {tag} {other}: {:?}, want {want:?}", String::from_utf8_lossy(&reply)));
            }
            // Pacing the traffic, not synchronisation.
            std::thread::sleep(Duration::from_millis(2));
        }
        r
    })
}

#[test]
fn a_reshard_under_load_is_invisible_to_clients() {
    let cluster = RedisCluster::start(3, 0);
    // Data in the slots that move, so the reshard has keys to MIGRATE while the load runs.
    let pre: Vec<Vec<String>> =
        (0..15_000).map(|i| vec!["SET".into(), format!("pre:{i}"), format!("pre-value-{i}")]).collect();
    run_on_cluster(&cluster, &pre);
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);

    let mut spec = LoadSpec::new(proxy.addr());
    spec.prefix = "rs".into();
    spec.workers = 4;
    spec.keys_per_worker = 400;
    spec.value_len = 64;
    spec.rate_per_worker = 250;
    spec.mix = Mix { get: 50, set: 35, del: 5, incr: 5, lpush: 5 };
    spec.op_timeout = Duration::from_secs(5);
    spec.max_duration = Duration::from_secs(90);
    let load = Load::start(spec);
    let stop_multi = Arc::new(AtomicBool::new(false));
    let multi = multi_key_traffic(proxy.addr(), stop_multi.clone());
    load.wait_for_ops(500, Duration::from_secs(15));

    let before = (cluster.slot_count(0), cluster.slot_count(1));
    let reshard_started = Instant::now();
    let ops_before = load.ops();
    let out = cluster.reshard(0, 1, 2000, Duration::from_secs(60));
    let reshard_took = reshard_started.elapsed();
    let ops_during = load.ops() - ops_before;
    let moved = String::from_utf8_lossy(&out.stdout).matches("Moving slot").count();
    eprintln!(
        "reshard of 2000 slots took {reshard_took:?}; {ops_during} ops ran meanwhile; {moved} 'Moving slot' lines"
    );
    load.wait_for_ops(500, Duration::from_secs(15));
    let report = load.stop();
    stop_multi.store(true, Ordering::Relaxed);
    let multi = multi.join().expect("multi-key traffic panicked");
    eprintln!("{}", report.summary());
    eprintln!("multi-key traffic: {} MSET/MGET ops, {} errors", multi.ops, multi.errors.len());
    let backends = http::status(proxy.admin_port())["backends"].clone();
    eprintln!("cluster state in /status: {}", backends[0]["cluster"]);

    assert_eq!((cluster.slot_count(0), cluster.slot_count(1)), (before.0 - 2000, before.1 + 2000), "the slots moved");
    assert!(ops_during >= 200, "only {ops_during} ops ran during the reshard");
    assert_eq!(report.failures(), 0, "client-visible errors during the reshard:\n{}", report.summary());
    assert_eq!(report.stale_reads, 0, "stale reads during the reshard:\n{}", report.summary());
    assert_ledger_intact(&report, &proxy, Some(&cluster));
    assert!(multi.ops >= 200, "only {} multi-key ops", multi.ops);
    assert!(
        multi.errors.is_empty(),
        "{} multi-key commands failed during the reshard: {:?}",
        multi.errors.len(),
        &multi.errors[..multi.errors.len().min(10)]
    );
    let tags: Vec<(&u32, &String)> = multi.last.iter().collect();
    let mkeys: Vec<String> = tags.iter().flat_map(|(t, _)| ["a", "b", "c"].map(|k| format!("{{mk{t}}}:{k}"))).collect();
    let got = cluster.get_many(&mkeys);
    for (i, (_, value)) in tags.iter().enumerate() {
        for j in 0..3 {
            assert_eq!(got[i * 3 + j].as_deref(), Some(value.as_bytes()), "{} on the cluster", mkeys[i * 3 + j]);
        }
    }

    // The preloaded keys all survived, and tandem serves them from their new owners.
    let live = report
        .ledger
        .keys
        .values()
        .filter(|h| if h.kind == KeyKind::Str { h.acked_str.is_some() } else { h.acked_n > 0 })
        .count();
    assert_eq!(
        cluster.dbsize_total() as usize,
        15_000 + live + 3 * multi.last.len(),
        "keys in the cluster: preloaded + live keys that exist"
    );
    let sample: Vec<String> = (0..15_000).step_by(7).map(|i| format!("pre:{i}")).collect();
    let via = load::get_many(&proxy.addr(), &sample);
    for (k, v) in sample.iter().zip(via) {
        let i = &k[4..];
        assert_eq!(v.as_deref(), Some(format!("pre-value-{i}").as_bytes()), "{k} through tandem after the reshard");
    }
}

// ---------------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------------

/// The whole migration from one server to a cluster: mirror, live workload, backfill,
/// verify, ramp 0 -> 50 -> 100, verify again, reads at 100% served by the cluster.
#[test]
fn single_server_to_cluster_migration_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let preload = typed_commands("old:", 20_000);
    run_on_server(&source, &preload);
    let old_keys: Vec<String> = (0..20_000).map(|i| format!("old:{}:{i}", KINDS[i % 5])).collect();
    assert_eq!(source.cli(&["DBSIZE"]), "20000");
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_two(&source.url(), &cluster.seed_url(), "async"), &[]);

    // The application: SET (with TTLs) / GET / DEL — writes that overwrite, so a copy racing
    // the mirror can never leave a different value (README's caveat on LPUSH and friends).
    let mut spec = LoadSpec::new(proxy.addr());
    spec.prefix = "live".into();
    spec.workers = 3;
    spec.keys_per_worker = 500;
    spec.value_len = 128;
    spec.rate_per_worker = 200;
    spec.mix = Mix { get: 70, set: 25, del: 5, incr: 0, lpush: 0 };
    spec.ttl_secs = Some((600, 3600));
    spec.op_timeout = Duration::from_secs(5);
    spec.max_duration = Duration::from_secs(120);
    let load = Load::start(spec);
    load.wait_for_ops(300, Duration::from_secs(15));

    let t = Instant::now();
    let out = backfill(dir.path(), "to-cluster", &source.url(), &cluster.seed_url());
    let r = out.json();
    eprintln!("backfill into the cluster took {:?}: {}", t.elapsed(), out.stdout.trim());
    out.expect_code(0);
    assert_eq!(n(&r, "failed"), 0, "{out}");
    assert!(n(&r, "copied") + n(&r, "skipped_existing") >= 20_000, "every preloaded key copied or skipped: {out}");
    assert!(n(&r, "copied") >= 19_000, "{out}");
    assert!(cluster.dbsize_total() >= 20_000, "the cluster holds the copies: {}", cluster.dbsize_total());
    assert!(cluster.dbsizes().iter().all(|&k| k > 5_000), "spread over the primaries: {:?}", cluster.dbsizes());
    load.wait_for_ops(200, Duration::from_secs(15));

    let v = verify_no_differences(dir.path(), &source.url(), &cluster.seed_url());
    assert!(n(&v, "source_keys") >= 20_000, "{v}");

    // The cluster reshards while it is the mirror target under live writes: mirrored writes
    // to the moving slots are redirected (MOVED/ASK), none is lost or misplaced.
    let reshard = cluster.reshard_in_background(0, 1, 1_000, Duration::from_secs(60));
    load.wait_for_ops(300, Duration::from_secs(15));
    let out = reshard.join().expect("reshard thread");
    support::cluster::check_reshard(&out, &cluster);
    cluster.wait_stable(Duration::from_secs(15));
    load.wait_for_ops(200, Duration::from_secs(15));
    verify_no_differences(dir.path(), &source.url(), &cluster.seed_url());

    for percent in [50, 100] {
        let (code, body) = http::post(proxy.admin_port(), "/cutover", &format!(r#"{{"percent": {percent}}}"#));
        assert_eq!(code, 200, "cutover to {percent}: {body}");
        let s = http::status(proxy.admin_port());
        assert_eq!(s["cutover"]["percent"].as_f64(), Some(percent as f64), "{s}");
        load.wait_for_ops(300, Duration::from_secs(15));
    }
    verify_no_differences(dir.path(), &source.url(), &cluster.seed_url());
    let report = load.stop();
    eprintln!("{}", report.summary());
    assert_eq!(report.failures(), 0, "client-visible errors during the migration:\n{}", report.summary());
    assert_eq!(report.stale_reads, 0, "stale reads during the migration:\n{}", report.summary());
    let status = http::wait_mirror_idle(proxy.admin_port());
    for side in [Side::Source, Side::Target] {
        if status["mirror"]["towards"].get(side.name()).is_some() {
            let m = MirrorStats::of(&status, side);
            eprintln!("mirror towards the {}: {m}", side.name());
            assert!(m.outcomes_within_enqueued(), "{m}");
            assert_eq!(m.not_applied(), 0, "mirror writes towards the {} not applied: {m}", side.name());
        }
    }

    // Quiet now: both stores hold exactly the same keys.
    let v = verify_no_differences(dir.path(), &source.url(), &cluster.seed_url());
    let source_size: u64 = source.cli(&["DBSIZE"]).parse().unwrap();
    assert_eq!(n(&v, "source_keys"), source_size, "{v}");
    assert_eq!(n(&v, "target_keys"), cluster.dbsize_total(), "verify counts each cluster key once: {v}");
    assert_eq!(source_size, cluster.dbsize_total(), "{v}");

    // At 100% every read is served by the cluster, with the right values.
    assert_ledger_intact(&report, &proxy, Some(&cluster));
    run_on_cluster(&cluster, &[vec!["SET".into(), "only-in-cluster".into(), "c".into()]]);
    let mut raw = RawConn::connect(proxy.addr());
    assert_eq!(raw.request(&["GET", "only-in-cluster"]), b"$1\r\nc\r\n", "reads at 100% come from the cluster");
    assert_eq!(source.cli(&["EXISTS", "only-in-cluster"]), "0");
    let (mut via, mut src) = (RawConn::connect(proxy.addr()), RawConn::connect(source.addr()));
    for key in old_keys.iter().step_by(97) {
        let via_proxy = describe(|args| via.request(args), key);
        let on_source = describe(|args| src.request(args), key);
        assert_eq!(via_proxy, on_source, "{key}: through tandem at 100% vs the source");
        assert!(!via_proxy.starts_with("none"), "{key} exists");
    }
    // TTLs came along with absolute expiries.
    for key in old_keys.iter().skip(3).step_by(10).take(50) {
        let src: i64 = source.cli(&["PEXPIRETIME", key]).parse().unwrap();
        let reply = cluster.request(&["PEXPIRETIME", key]);
        let dst: i64 = String::from_utf8_lossy(&reply[1..]).trim().parse().unwrap();
        assert!(src > 0 && (src - dst).abs() <= 1000, "{key}: source expires at {src}, cluster at {dst}");
    }
    // A write at 100% lands on the cluster first (and is mirrored back to the source).
    assert_eq!(raw.request(&["SET", "after-cutover", "x"]), b"+OK\r\n");
    assert_eq!(cluster.primary_for_key("after-cutover").cli(&["GET", "after-cutover"]), "x");
    support::wait_until(Duration::from_secs(10), "the write mirrored back to the source", || {
        source.cli(&["GET", "after-cutover"]) == "x"
    });
}

/// The other direction, mixed: a cluster as the source and one server as the target, with
/// dual-write (sync) mirroring. Writes through tandem reach both stores before the reply;
/// the preexisting keys are backfilled out of the cluster; verify finds no difference.
#[test]
fn cluster_source_single_server_target_dual_write() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(3, 0);
    run_on_cluster(&cluster, &typed_commands("pre:", 5_000));
    let target = RedisServer::start();
    let proxy = Tandem::start_config(&yaml_two(&cluster.seed_url(), &target.url(), "sync"), &[]);
    let mut c = RawConn::connect(proxy.addr());

    // Single-key writes of each kind; with sync mirroring both stores have them at the reply.
    let writes: Vec<Vec<&str>> = vec![
        vec!["SET", "dw:str", "v1"],
        vec!["SET", "dw:ttl", "v", "EX", "1000"],
        vec!["HSET", "dw:hash", "f", "1", "g", "2"],
        vec!["RPUSH", "dw:list", "a", "b", "c"],
        vec!["SADD", "dw:set", "x", "y"],
        vec!["ZADD", "dw:zset", "1", "a", "2", "b"],
        vec!["INCR", "dw:counter"],
        vec!["INCRBY", "dw:counter", "41"],
        vec!["APPEND", "dw:str", "-more"],
        vec!["EXPIRE", "dw:hash", "2000"],
    ];
    for w in &writes {
        let reply = c.request(w);
        assert!(!reply.starts_with(b"-"), "{w:?}: {:?}", String::from_utf8_lossy(&reply));
    }
    assert_eq!(target.cli(&["GET", "dw:str"]), "v1-more");
    assert_eq!(cluster.primary_for_key("dw:str").cli(&["GET", "dw:str"]), "v1-more");
    assert_eq!(target.cli(&["GET", "dw:counter"]), "42");
    assert_eq!(cluster.primary_for_key("dw:counter").cli(&["GET", "dw:counter"]), "42");
    assert_eq!(target.cli(&["LRANGE", "dw:list", "0", "-1"]), "a\nb\nc");
    // Multi-key writes across slots, split over the nodes and mirrored whole.
    let mut mset = vec!["MSET"];
    let mkeys: Vec<String> = (0..30).map(|i| format!("dw:m:{i}")).collect();
    let mvals: Vec<String> = (0..30).map(|i| format!("mv{i}")).collect();
    for (k, v) in mkeys.iter().zip(&mvals) {
        mset.push(k);
        mset.push(v);
    }
    assert_eq!(c.request(&mset), b"+OK\r\n");
    assert_eq!(c.request(&["DEL", "dw:m:0", "dw:m:1", "dw:m:2", "dw:nothing"]), b":3\r\n");
    assert_eq!(c.request(&["UNLINK", "dw:m:3", "dw:m:4"]), b":2\r\n");
    for (i, k) in mkeys.iter().enumerate() {
        let want = if i < 5 { "" } else { mvals[i].as_str() };
        assert_eq!(target.cli(&["GET", k]), want, "{k} on the target");
        assert_eq!(cluster.primary_for_key(k).cli(&["GET", k]), want, "{k} on its cluster node");
    }
    // A stream of writes over many slots.
    for i in 0..2000 {
        let key = format!("dw:k:{i}");
        let reply = c.request(&["SET", &key, &format!("val-{i}")]);
        assert_eq!(reply, b"+OK\r\n", "SET {key}");
    }
    assert_eq!(target.cli(&["GET", "dw:k:1999"]), "val-1999");

    // The keys that were in the cluster before tandem: copied out of it by the backfill (it
    // scans every primary).
    let out = backfill(dir.path(), "from-cluster", &cluster.seed_url(), &target.url());
    let r = out.json();
    out.expect_code(0);
    assert_eq!(n(&r, "failed"), 0, "{out}");
    assert!(n(&r, "copied") >= 5_000, "the preexisting keys were copied out of every primary: {out}");
    let status = http::wait_mirror_idle(proxy.admin_port());
    let m = MirrorStats::of(&status, Side::Target);
    eprintln!("mirror towards the target: {m}");
    assert!(m.outcomes_within_enqueued(), "{m}");
    assert_eq!(m.not_applied(), 0, "{m}");
    assert!(m.applied >= 2000 + writes.len() as u64, "{m}");

    let v = verify_no_differences(dir.path(), &cluster.seed_url(), &target.url());
    let expected = cluster.dbsize_total();
    assert_eq!(n(&v, "source_keys"), expected, "verify read every primary: {v}");
    assert_eq!(target.cli(&["DBSIZE"]), expected.to_string());
    let mut raw = support::RawConn::connect(proxy.addr());
    assert_eq!(raw.request(&["DBSIZE"]), format!(":{expected}\r\n").as_bytes());
}
