//! Regression tests for cluster-backend bugs fixed in e4296ff, each against a real Redis
//! Cluster (`support::cluster`) behind a real tandem:
//!
//! * commands redirected by a slot move are sent again in order, and later commands of the
//!   same connection wait behind them (before the fix a pipeline across a move was reordered);
//! * a WATCH pins the transaction to the watched key's node, so a change to the watched key
//!   aborts an EXEC whose writes go to another node (before the fix the block ran elsewhere
//!   and committed);
//! * clients on dedicated backend connections (CLIENT TRACKING ON) still see the whole
//!   keyspace through SCAN / DBSIZE / KEYS / cross-slot MGET (before the fix they saw one node,
//!   and SCAN failed with "ERR invalid cursor");
//! * a write mirrored from a database other than 0 is refused by a cluster target instead of
//!   landing in its database 0.
//!
//! Assertions about where data lives read the cluster nodes directly, never through tandem.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::cluster::text_request;
use support::load::{poll_until, MirrorStats};
use support::{encode_cmd, http, key_slot, wait_until, RawConn, RedisCluster, RedisServer, Tandem};
use tandem::route::Side;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn yaml_source_only(source_url: &str) -> String {
    format!("backends:\n  source:\n    url: {source_url}\n")
}

fn yaml_two(source_url: &str, target_url: &str, mirror_mode: &str) -> String {
    format!(
        "backends:\n  source:\n    url: {source_url}\n  target:\n    url: {target_url}\nmirror:\n  mode: {mirror_mode}\n"
    )
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// The next reply on `c` that is not a RESP3 push (tracking invalidations).
#[track_caller]
fn reply(c: &mut RawConn) -> Vec<u8> {
    loop {
        let r = c.read_reply();
        if !r.starts_with(b">") {
            return r;
        }
    }
}

/// Sends `args` and returns the next non-push reply.
#[track_caller]
fn request(c: &mut RawConn, args: &[&str]) -> Vec<u8> {
    c.send_cmd(args);
    reply(c)
}

/// A RESP2/RESP3 reply parsed, panicking with the raw bytes if it does not parse.
#[track_caller]
fn parse(reply: &[u8]) -> redis::Value {
    redis::parse_redis_value(reply).unwrap_or_else(|e| panic!("unparsable reply {:?}: {e}", text(reply)))
}

/// An array of bulk strings (or nils) as text; panics on anything else.
#[track_caller]
fn strings(reply: &[u8]) -> Vec<Option<String>> {
    match parse(reply) {
        redis::Value::Array(items) | redis::Value::Set(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::Nil => None,
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                redis::Value::SimpleString(s) => Some(s),
                other => panic!("unexpected array element {other:?} in {:?}", text(reply)),
            })
            .collect(),
        other => panic!("expected an array, got {other:?} ({:?})", text(reply)),
    }
}

/// The `redirects` counter of the (only) cluster backend in tandem's `/status`.
#[track_caller]
fn cluster_redirects(proxy: &Tandem) -> u64 {
    let status = http::status(proxy.admin_port());
    status["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find_map(|b| b["cluster"]["redirects"].as_u64()))
        .unwrap_or_else(|| panic!("no cluster backend with a redirects counter in /status: {status}"))
}

/// Waits until tandem's slot map sends `key` straight to its owner: a command on it
/// through `c` causes no redirect.
#[track_caller]
fn wait_map_current(proxy: &Tandem, c: &mut RawConn, key: &str) {
    let mut redirected = 0;
    let current = poll_until(Duration::from_secs(10), || {
        let before = cluster_redirects(proxy);
        let r = request(c, &["EXISTS", key]);
        assert!(r.starts_with(b":"), "EXISTS {key} through tandem: {:?}", text(&r));
        redirected = cluster_redirects(proxy) - before;
        redirected == 0
    });
    assert!(current, "tandem's slot map still sends {key} to the wrong node after 10 s ({redirected} redirects)");
}

/// Assigns `slot` (which must hold no keys) to the node `node_id`, on every primary, the way
/// a manual resharding finishes (`CLUSTER SETSLOT <slot> NODE <id>`).
#[track_caller]
fn assign_slot(cluster: &RedisCluster, slot: u16, node_id: &str) {
    for p in cluster.primaries() {
        let slot = slot.to_string();
        let r = text_request(p.port(), &["CLUSTER", "SETSLOT", &slot, "NODE", node_id]);
        assert_eq!(r.as_deref(), Ok("OK"), "CLUSTER SETSLOT {slot} NODE {node_id} on {}", p.addr());
    }
}

/// The first key `prefix{i}` (i = 0, 1, ...) that `pred` accepts.
fn find_key(prefix: &str, mut pred: impl FnMut(&str) -> bool) -> String {
    (0..100_000).map(|i| format!("{prefix}{i}")).find(|k| pred(k)).expect("a key with the wanted slot")
}

/// `list` as its ascending runs of consecutive numbers (`a..=b`), the first `max` of them: a
/// list in order is one run, a reordered one shows which commands overtook which.
fn runs(list: &[usize], max: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < list.len() && out.len() < max {
        let start = i;
        while i + 1 < list.len() && list[i + 1] == list[i] + 1 {
            i += 1;
        }
        out.push(format!("{}..={}", list[start], list[i]));
        i += 1;
    }
    if i < list.len() {
        out.push("...".to_string());
    }
    out.join(" ")
}

/// Polls until a GET through tandem answers (the slot map is loaded), then returns.
#[track_caller]
fn wait_proxy_serves(c: &mut RawConn) {
    let mut last = String::new();
    let served = poll_until(Duration::from_secs(10), || {
        let r = request(c, &["GET", "{warmup}probe"]);
        last = text(&r);
        matches!(r.as_slice(), b"$-1\r\n" | b"_\r\n")
    });
    assert!(served, "a GET through tandem is not served by the cluster after 10 s; last reply {last:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. Ordering across a slot move
// ---------------------------------------------------------------------------------------------

/// One connection pipelines 3,000 `RPUSH {ord}k i` right after the key's (empty) slot was
/// given to another primary. tandem's map is stale for the first of them, which the old owner
/// answers with `MOVED`; they are sent again while the later ones go straight to the new
/// owner. The list must still be 0..2999 in order, and every RPUSH must answer the length
/// it made, as on one Redis. Three rounds, moving the slot back and forth.
#[test]
fn a_pipeline_across_a_slot_move_stays_in_order() {
    const KEY: &str = "{ord}k";
    const N: usize = 3000;
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);
    let slot = key_slot(KEY.as_bytes());
    let ids: Vec<String> = (0..cluster.primaries().len()).map(|i| cluster.node_id(i)).collect();
    let first_owner = cluster.index_of_port(cluster.slot_owners()[slot as usize]).expect("owner of the slot");
    let other = (first_owner + 1) % ids.len();

    let mut c = RawConn::connect(proxy.addr());
    c.set_timeout(Duration::from_secs(10));
    wait_proxy_serves(&mut c);
    let payload: Vec<u8> = (0..N).flat_map(|i| encode_cmd(&["RPUSH", KEY, &i.to_string()])).collect();

    for round in 0..3 {
        let del = request(&mut c, &["DEL", KEY]);
        assert!(del.starts_with(b":"), "round {round}: DEL {KEY}: {:?}", text(&del));
        wait_map_current(&proxy, &mut c, KEY);
        let from = cluster.index_of_port(cluster.slot_owners()[slot as usize]).expect("owner of the slot");
        let to = if from == first_owner { other } else { first_owner };
        assert_eq!(
            text_request(cluster.primaries()[from].port(), &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
            Ok("0".to_string()),
            "round {round}: the slot is empty before the move"
        );
        let redirects_before = cluster_redirects(&proxy);

        assign_slot(&cluster, slot, &ids[to]);
        c.send(&payload);
        let replies: Vec<Vec<u8>> = (0..N).map(|_| reply(&mut c)).collect();

        let redirected = cluster_redirects(&proxy) - redirects_before;
        let errors: Vec<(usize, String)> =
            replies.iter().enumerate().filter(|(_, r)| r.starts_with(b"-")).map(|(i, r)| (i, text(r))).collect();
        let wrong_len: Vec<(usize, String)> = replies
            .iter()
            .enumerate()
            .filter(|(i, r)| r.as_slice() != format!(":{}\r\n", i + 1).as_bytes())
            .map(|(i, r)| (i, text(r)))
            .collect();
        let list: Vec<usize> = strings(&request(&mut c, &["LRANGE", KEY, "0", "-1"]))
            .into_iter()
            .map(|v| v.and_then(|s| s.parse().ok()).expect("a list element that is a number"))
            .collect();
        let inversions = list.windows(2).filter(|w| w[0] > w[1]).count();
        let first_bad = list.iter().enumerate().find(|(i, v)| *i != **v).map(|(i, v)| (i, *v));
        let order = runs(&list, 12);
        eprintln!(
            "round {round}: slot {slot} node {from} -> {to}; {redirected} redirects; {} errors; {} RPUSH replies \
             not their position; list of {} with {inversions} inversions (first out of place: {first_bad:?}); \
             execution order: {order}",
            errors.len(),
            wrong_len.len(),
            list.len()
        );
        assert!(errors.is_empty(), "round {round}: {} error replies, first: {:?}", errors.len(), &errors[..1]);
        assert!(redirected > 0, "round {round}: no command was redirected, so the move was not exercised");
        assert_eq!(list.len(), N, "round {round}: the list has every element");
        assert_eq!(
            inversions, 0,
            "round {round}: the list is reordered ({inversions} inversions, first out of place: {first_bad:?}; \
             {redirected} commands were redirected); execution order: {order}"
        );
        assert_eq!(list, (0..N).collect::<Vec<_>>(), "round {round}: LRANGE is 0..{N} in order");
        assert!(
            wrong_len.is_empty(),
            "round {round}: {} RPUSH replies are not the length they made, first: {:?}",
            wrong_len.len(),
            &wrong_len[..1]
        );
        // The new owner holds the list: the move really happened.
        assert_eq!(
            text_request(cluster.primaries()[to].port(), &["LLEN", KEY]),
            Ok(N.to_string()),
            "round {round}: LLEN on the new owner"
        );
    }
    eprintln!("ordering across slot moves: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. WATCH across nodes
// ---------------------------------------------------------------------------------------------

/// Whether an EXEC reply says the transaction did not run: a null (watched key changed) or
/// an EXECABORT error (the block was refused).
fn exec_aborted(reply: &[u8]) -> bool {
    matches!(reply, b"*-1\r\n" | b"_\r\n") || reply.starts_with(b"-EXECABORT")
}

/// `WATCH a`, another client changes `a`, then `MULTI; SET b; EXEC` where `b` lives on
/// another primary: the transaction must not commit, as on one Redis. And the positive
/// cases: with `a` untouched, a transaction on the watched key commits.
#[test]
fn watch_is_honoured_when_the_transaction_writes_to_another_node() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);
    let owners = cluster.slot_owners();
    let owner = |k: &str| owners[key_slot(k.as_bytes()) as usize];
    let a = "watch:a";
    let b = find_key("watch:b", |k| owner(k) != owner(a));
    eprintln!("{a} on :{}, {b} on :{}", owner(a), owner(&b));

    let mut ca = RawConn::connect(proxy.addr());
    let mut cb = RawConn::connect(proxy.addr());
    wait_proxy_serves(&mut cb);
    assert_eq!(request(&mut cb, &["SET", a, "0"]), b"+OK\r\n");
    assert!(request(&mut cb, &["DEL", &b]).starts_with(b":"));

    // The watched key changes before EXEC: nothing may be written, on any node.
    assert_eq!(request(&mut ca, &["WATCH", a]), b"+OK\r\n", "WATCH {a}");
    assert_eq!(request(&mut cb, &["SET", a, "changed"]), b"+OK\r\n", "the other client's SET {a}");
    assert_eq!(request(&mut ca, &["MULTI"]), b"+OK\r\n");
    let queued = request(&mut ca, &["SET", &b, "committed"]);
    let exec = request(&mut ca, &["EXEC"]);
    eprintln!("cross-node: SET {b} -> {:?}, EXEC -> {:?}", text(&queued), text(&exec));
    assert!(
        exec_aborted(&exec),
        "EXEC after the watched key changed must not commit (nil or EXECABORT), got {:?} (SET {b} answered {:?})",
        text(&exec),
        text(&queued)
    );
    assert!(
        matches!(request(&mut cb, &["GET", &b]).as_slice(), b"$-1\r\n" | b"_\r\n"),
        "{b} must not have been written through tandem"
    );
    let b_node = cluster.primary_for_key(&b);
    assert_eq!(b_node.cli(&["EXISTS", &b]), "0", "{b} must not exist on its node {}", b_node.addr());
    assert_eq!(cluster.primary_for_key(a).cli(&["GET", a]), "changed", "{a} keeps the other client's value");

    // Same node, watched key changed: aborted too (this worked before; a sanity check).
    assert_eq!(request(&mut ca, &["WATCH", a]), b"+OK\r\n");
    assert_eq!(request(&mut cb, &["SET", a, "changed-again"]), b"+OK\r\n");
    assert_eq!(request(&mut ca, &["MULTI"]), b"+OK\r\n");
    assert_eq!(request(&mut ca, &["SET", a, "mine"]), b"+QUEUED\r\n");
    let exec = request(&mut ca, &["EXEC"]);
    assert!(exec_aborted(&exec), "EXEC on the changed watched key: {:?}", text(&exec));
    assert_eq!(cluster.primary_for_key(a).cli(&["GET", a]), "changed-again");

    // Positive: the watched key untouched, the transaction on it commits.
    assert_eq!(request(&mut ca, &["WATCH", a]), b"+OK\r\n");
    assert_eq!(request(&mut ca, &["MULTI"]), b"+OK\r\n");
    assert_eq!(request(&mut ca, &["SET", a, "x"]), b"+QUEUED\r\n");
    let exec = request(&mut ca, &["EXEC"]);
    assert_eq!(exec, b"*1\r\n+OK\r\n", "EXEC with the watched key untouched: {:?}", text(&exec));
    assert_eq!(request(&mut cb, &["GET", a]), b"$1\r\nx\r\n");
    assert_eq!(cluster.primary_for_key(a).cli(&["GET", a]), "x");

    // And a plain transaction without WATCH still commits on the other node afterwards.
    assert_eq!(request(&mut ca, &["MULTI"]), b"+OK\r\n");
    assert_eq!(request(&mut ca, &["SET", &b, "later"]), b"+QUEUED\r\n");
    assert_eq!(request(&mut ca, &["EXEC"]), b"*1\r\n+OK\r\n");
    assert_eq!(b_node.cli(&["GET", &b]), "later");
    eprintln!("WATCH across nodes: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. Pinned clients see the whole keyspace
// ---------------------------------------------------------------------------------------------

/// A client with CLIENT TRACKING ON has dedicated backend connections; its whole-keyspace
/// and cross-slot commands must still cover every primary: SCAN to cursor 0 returns every
/// key exactly once, DBSIZE and KEYS count all of them, MGET over several slots is right.
#[test]
fn a_tracking_client_sees_the_whole_keyspace() {
    const N: usize = 3000;
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    let keys: Vec<String> = (0..N).map(|i| format!("pin:{i}")).collect();
    let sets: Vec<Vec<String>> = keys.iter().map(|k| vec!["SET".into(), k.clone(), format!("val-{k}")]).collect();
    for (cmd, r) in sets.iter().zip(cluster.request_many(&sets)) {
        assert_eq!(r, b"+OK\r\n", "{cmd:?} on the cluster");
    }
    assert_eq!(cluster.dbsize_total(), N as u64);
    let sizes = cluster.dbsizes();
    assert!(sizes.iter().all(|&n| n > 0), "keys on every primary: {sizes:?}");
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);

    let mut c = RawConn::connect(proxy.addr());
    c.set_timeout(Duration::from_secs(10));
    wait_proxy_serves(&mut c);
    let hello = request(&mut c, &["HELLO", "3"]);
    assert!(hello.starts_with(b"%"), "HELLO 3: {:?}", text(&hello));
    assert_eq!(request(&mut c, &["CLIENT", "TRACKING", "ON"]), b"+OK\r\n");
    assert_eq!(request(&mut c, &["GET", "pin:1"]), b"$9\r\nval-pin:1\r\n", "GET through the pinned client");

    // SCAN to cursor 0.
    let mut cursor = "0".to_string();
    let mut seen: Vec<String> = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 10_000, "SCAN did not come back to cursor 0 after 10,000 calls");
        let r = request(&mut c, &["SCAN", &cursor, "COUNT", "100"]);
        let (next, batch) = match parse(&r) {
            redis::Value::Array(mut parts) if parts.len() == 2 => {
                let batch = parts.pop().expect("keys");
                let next = match parts.pop().expect("cursor") {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => panic!("SCAN {cursor}: cursor {other:?}"),
                };
                (next, batch)
            }
            other => panic!("SCAN {cursor} (call {calls}, {} keys so far): {other:?} ({:?})", seen.len(), text(&r)),
        };
        match batch {
            redis::Value::Array(items) => {
                for item in items {
                    match item {
                        redis::Value::BulkString(b) => seen.push(String::from_utf8_lossy(&b).into_owned()),
                        other => panic!("SCAN {cursor}: key {other:?}"),
                    }
                }
            }
            other => panic!("SCAN {cursor}: keys {other:?}"),
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    let expected: HashSet<&String> = keys.iter().collect();
    let missing = expected.difference(&unique).count();
    let extra: Vec<&&String> = unique.difference(&expected).take(5).collect();
    eprintln!("pinned SCAN: {calls} calls, {} keys returned, {} unique, {missing} missing", seen.len(), unique.len());
    assert_eq!(missing, 0, "SCAN through the pinned client missed {missing} of {N} keys");
    assert!(extra.is_empty(), "SCAN returned keys that do not exist: {extra:?}");
    assert_eq!(seen.len(), N, "SCAN returned {} keys for {N}: duplicates", seen.len());

    let dbsize = request(&mut c, &["DBSIZE"]);
    assert_eq!(text(&dbsize), format!(":{N}\r\n"), "DBSIZE through the pinned client");

    let all = strings(&request(&mut c, &["KEYS", "*"]));
    assert_eq!(all.len(), N, "KEYS * through the pinned client has {} entries", all.len());
    let all: HashSet<String> = all.into_iter().flatten().collect();
    assert_eq!(all.len(), N, "KEYS * returns each key once");
    assert!(keys.iter().all(|k| all.contains(k)), "KEYS * returns every key");

    // MGET over keys of several slots on every primary, plus a missing one.
    let owners = cluster.slot_owners();
    let mut mget: Vec<String> = keys.iter().step_by(97).take(30).cloned().collect();
    mget.push("pin:missing".to_string());
    let nodes: HashSet<u16> = mget.iter().map(|k| owners[key_slot(k.as_bytes()) as usize]).collect();
    assert_eq!(nodes.len(), 3, "the MGET keys span every primary");
    let mut args = vec!["MGET"];
    args.extend(mget.iter().map(String::as_str));
    let got = strings(&request(&mut c, &args));
    let want: Vec<Option<String>> = mget.iter().map(|k| (k != "pin:missing").then(|| format!("val-{k}"))).collect();
    assert_eq!(got, want, "MGET over {} slots through the pinned client", mget.len());

    // Still pinned and working for single-key commands.
    assert_eq!(request(&mut c, &["GET", "pin:2999"]), b"$12\r\nval-pin:2999\r\n");
    eprintln!("pinned client keyspace: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. Mirrored writes from another database
// ---------------------------------------------------------------------------------------------

/// Waits until the mirror towards `side` has taken more than `after` writes and has none in
/// flight; returns its counters.
#[track_caller]
fn wait_mirror_settled(proxy: &Tandem, side: Side, after: u64) -> MirrorStats {
    let mut last = None;
    wait_until(Duration::from_secs(15), "the mirror took the write and has nothing in flight", || {
        let m = MirrorStats::of(&http::status(proxy.admin_port()), side);
        let done = m.enqueued > after && m.in_flight == 0;
        last = Some(m);
        done
    });
    last.expect("mirror stats")
}

/// Source = one redis-server, target = a cluster, async mirror. A client in database 3
/// writes a key: the source has it in database 3; the cluster (which only has database 0)
/// must not get it in database 0, and the mirror counts the write as an error, not applied.
/// A write from database 0 is mirrored normally (the control).
#[test]
fn a_mirrored_write_from_another_database_does_not_land_in_db0_of_a_cluster() {
    let started = Instant::now();
    let source = RedisServer::start();
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_two(&source.url(), &cluster.seed_url(), "async"), &[]);
    let mut c = RawConn::connect(proxy.addr());

    // Control: a write from database 0 reaches the cluster.
    assert_eq!(request(&mut c, &["SET", "dbzero:key", "v0"]), b"+OK\r\n");
    let s0 = wait_mirror_settled(&proxy, Side::Target, 0);
    eprintln!("after the db 0 write, mirror towards the target: {s0}");
    wait_until(Duration::from_secs(10), "the db 0 write is on the cluster", || {
        cluster.primary_for_key("dbzero:key").cli(&["GET", "dbzero:key"]) == "v0"
    });
    assert_eq!(s0.not_applied(), 0, "the db 0 write applied: {s0}");

    // The write from database 3.
    assert_eq!(request(&mut c, &["SELECT", "3"]), b"+OK\r\n");
    assert_eq!(request(&mut c, &["SET", "dbthree:key", "v3"]), b"+OK\r\n");
    let s1 = wait_mirror_settled(&proxy, Side::Target, s0.enqueued);
    eprintln!("after the db 3 write, mirror towards the target: {s1}");

    let mut src = RawConn::connect(source.addr());
    assert_eq!(request(&mut src, &["SELECT", "3"]), b"+OK\r\n");
    assert_eq!(request(&mut src, &["GET", "dbthree:key"]), b"$2\r\nv3\r\n", "the source has it in db 3");
    assert_eq!(source.cli(&["EXISTS", "dbthree:key"]), "0", "not in the source's db 0");

    let owner = cluster.primary_for_key("dbthree:key");
    assert_eq!(
        owner.cli(&["EXISTS", "dbthree:key"]),
        "0",
        "the write from db 3 landed in db 0 of the cluster (on {}); mirror: {s1}",
        owner.addr()
    );
    assert!(!cluster.all_keys().iter().any(|k| k == "dbthree:key"), "dbthree:key on no cluster node");
    assert!(s1.outcomes_within_enqueued(), "{s1}");
    assert_eq!(s1.applied, s0.applied, "the db 3 write must not count as applied: before {s0}, after {s1}");
    assert_eq!(s1.error, s0.error + 1, "the db 3 write counts as one error: before {s0}, after {s1}");
    eprintln!("mirror from another database: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 5. -ASK during a slot migration
// ---------------------------------------------------------------------------------------------

/// A slot half-way through a migration (MIGRATING on its owner, IMPORTING on the new node,
/// one key already moved with MIGRATE): the owner answers `-ASK` for the moved key and for a
/// key it does not have. Through tandem both read and write must still work, which only
/// `ASKING` on the importing node achieves (a plain retry there gets `-MOVED` back).
#[test]
fn commands_on_a_migrating_slot_follow_ask() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Tandem::start_config(&yaml_source_only(&cluster.seed_url()), &[]);
    let mut c = RawConn::connect(proxy.addr());
    c.set_timeout(Duration::from_secs(10));
    wait_proxy_serves(&mut c);

    let (moved, fresh) = ("{ask}moved", "{ask}fresh");
    let slot = key_slot(moved.as_bytes());
    assert_eq!(request(&mut c, &["SET", moved, "v1"]), b"+OK\r\n");
    wait_map_current(&proxy, &mut c, moved);
    let from = cluster.index_of_port(cluster.slot_owners()[slot as usize]).expect("owner of the slot");
    let to = (from + 1) % cluster.primaries().len();
    let (from_port, to_port) = (cluster.primaries()[from].port(), cluster.primaries()[to].port());
    let s = slot.to_string();
    let ok = |r: Result<String, String>, what: &str| assert_eq!(r.as_deref(), Ok("OK"), "{what}");
    ok(text_request(to_port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &cluster.node_id(from)]), "IMPORTING");
    ok(text_request(from_port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &cluster.node_id(to)]), "MIGRATING");
    let to_port_s = to_port.to_string();
    ok(text_request(from_port, &["MIGRATE", "127.0.0.1", &to_port_s, moved, "0", "5000"]), "MIGRATE");
    // Directly, the owner now redirects with ASK for both keys.
    let direct = support::cluster::raw_request(from_port, &["GET", moved]).expect("GET on the owner");
    assert!(direct.starts_with(b"-ASK "), "the owner should answer -ASK: {:?}", text(&direct));

    let before = cluster_redirects(&proxy);
    assert_eq!(text(&request(&mut c, &["GET", moved])), text(b"$2\r\nv1\r\n"), "GET of the moved key");
    assert_eq!(request(&mut c, &["SET", fresh, "v2"]), b"+OK\r\n", "SET of a new key in the migrating slot");
    assert!(cluster_redirects(&proxy) >= before + 2, "both commands were redirected");
    // The new key was written on the importing node (read there with ASKING).
    let mut on_to = RawConn::connect(format!("127.0.0.1:{to_port}"));
    on_to.send(&[encode_cmd(&["ASKING"]), encode_cmd(&["GET", fresh])].concat());
    assert_eq!(reply(&mut on_to), b"+OK\r\n");
    assert_eq!(text(&reply(&mut on_to)), text(b"$2\r\nv2\r\n"), "the new key is on the importing node");
}
