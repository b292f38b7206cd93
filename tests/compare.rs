//! Shadow-read comparison against two real redis-servers.

mod support;

use std::time::Duration;

use support::{http, RawConn, RedisServer, Relay, Tandem};

struct Setup {
    source: RedisServer,
    target: RedisServer,
    relay: Relay,
    proxy: Tandem,
    dir: tempfile::TempDir,
}

fn setup(extra: &str) -> Setup {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let relay = Relay::start(target.addr());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\nmirror:\n  mode: async\n  journal: {}\ncompare:\n  percent: 100\n  log: {}\n{extra}",
        source.url(),
        relay.url(),
        dir.path().join("repair.jsonl").display(),
        dir.path().join("mismatch.jsonl").display(),
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    Setup { source, target, relay, proxy, dir }
}

fn compare_status(s: &Setup) -> serde_json::Value {
    http::status(s.proxy.admin_port())["compare"].clone()
}

fn settle(s: &Setup) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    support::wait_until(Duration::from_secs(20), "comparisons settled", || {
        last = compare_status(s);
        last["in_flight"] == 0
    });
    last
}

/// Pipelines `cmds` through the proxy and reads every reply.
fn pipeline(c: &mut RawConn, cmds: &[Vec<String>]) {
    let mut batch = Vec::new();
    for cmd in cmds {
        let args: Vec<&str> = cmd.iter().map(|a| a.as_str()).collect();
        batch.extend(support::encode_cmd(&args));
    }
    c.send(&batch);
    for _ in cmds {
        c.read_reply();
    }
}

#[test]
fn identical_stores_give_no_mismatch_over_twenty_thousand_reads() {
    let s = setup("");
    let mut c = RawConn::connect(s.proxy.addr());
    let mut writes = Vec::new();
    for i in 0..200 {
        writes.push(vec!["SET".into(), format!("k{i}"), format!("v{i}")]);
        writes.push(vec!["SADD".into(), format!("s{i}"), "a".into(), "b".into(), "c".into(), format!("m{i}")]);
        writes.push(vec!["HSET".into(), format!("h{i}"), "f1".into(), "1".into(), "f2".into(), format!("{i}")]);
        writes.push(vec!["ZADD".into(), format!("z{i}"), "1.5".into(), "a".into(), "0.1".into(), "b".into()]);
        writes.push(vec!["SET".into(), format!("t{i}"), "v".into(), "EX".into(), "3600".into()]);
    }
    pipeline(&mut c, &writes);
    let mut reads = Vec::new();
    for i in 0..20_000 {
        let n = i % 200;
        reads.push(match i % 6 {
            0 => vec!["GET".into(), format!("k{n}")],
            1 => vec!["SMEMBERS".into(), format!("s{n}")],
            2 => vec!["HGETALL".into(), format!("h{n}")],
            3 => vec!["ZRANGE".into(), format!("z{n}"), "0".into(), "-1".into(), "WITHSCORES".into()],
            4 => vec!["TTL".into(), format!("t{n}")],
            _ => vec!["GET".into(), format!("missing{n}")],
        });
    }
    for chunk in reads.chunks(500) {
        pipeline(&mut c, chunk);
    }
    let st = settle(&s);
    let compared = st["match"].as_u64().unwrap() + st["transient"].as_u64().unwrap();
    eprintln!("compare results: {st}");
    assert_eq!(st["mismatch"], 0, "{st}");
    assert!(compared + st["skipped"].as_u64().unwrap() >= 20_000, "{st}");
    assert!(compared >= 15_000, "most reads were compared: {st}");
}

#[test]
fn a_value_changed_on_the_target_is_one_confirmed_value_mismatch_without_the_value() {
    let s = setup("  recheck_delay: 100ms\n");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["SET", "user:42", "correct-horse"]);
    support::wait_until(Duration::from_secs(5), "mirrored", || s.target.cli(&["GET", "user:42"]) == "correct-horse");
    s.target.cli(&["SET", "user:42", "battery-staple"]);
    assert_eq!(c.request(&["GET", "user:42"]), b"$13\r\ncorrect-horse\r\n", "the client gets the serving side's value");
    let st = settle(&s);
    assert_eq!(st["mismatch"], 1, "{st}");
    let m = &st["recent_mismatches"][0];
    assert_eq!(m["key"], "user:42");
    assert_eq!(m["command"], "get");
    assert_eq!(m["class"], "value");
    let log_path = s.dir.path().join("mismatch.jsonl");
    let mut log = String::new();
    support::wait_until(Duration::from_secs(5), "mismatch logged", || {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        !log.is_empty()
    });
    assert!(log.contains("user:42") && log.contains("serving_digest"), "{log}");
    let status = http::get(s.proxy.admin_port(), "/status");
    for secret in ["correct-horse", "battery-staple"] {
        assert!(!log.contains(secret), "values are redacted in the log: {log}");
        assert!(!status.contains(secret), "values are redacted in /status");
    }
    // The key is queued for repair.
    support::wait_until(Duration::from_secs(5), "repair journal", || {
        std::fs::read_to_string(s.dir.path().join("repair.jsonl")).unwrap_or_default().contains("user:42")
    });
    let metrics = http::get(s.proxy.admin_port(), "/metrics");
    assert!(metrics.contains(r#"tandem_compare_mismatches_total{class="value",command="get"} 1"#), "{metrics}");
}

#[test]
fn a_lagging_mirror_is_not_a_mismatch_and_a_fixed_difference_is_transient() {
    let s = setup("  recheck_delay: 1s\n");
    let mut c = RawConn::connect(s.proxy.addr());
    // The mirror runs 200 ms behind; a read right after the write still agrees, because the
    // compared read queues behind the mirrored write.
    s.relay.set_delay(Duration::from_millis(100));
    c.request(&["SET", "fresh", "v1"]);
    c.request(&["GET", "fresh"]);
    let st = settle(&s);
    assert_eq!(st["mismatch"], 0, "{st}");
    s.relay.set_delay(Duration::ZERO);
    // A difference that heals before the recheck is transient, not a mismatch.
    s.target.cli(&["SET", "healing", "wrong"]);
    s.source.cli(&["SET", "healing", "right"]);
    c.request(&["GET", "healing"]);
    support::wait_until(Duration::from_secs(5), "first look done", || {
        compare_status(&s)["in_flight"] == 1 && s.target.cli(&["GET", "healing"]) == "wrong"
    });
    s.target.cli(&["SET", "healing", "right"]);
    let st = settle(&s);
    assert_eq!(st["transient"], 1, "{st}");
    assert_eq!(st["mismatch"], 0, "{st}");
}

#[test]
fn random_commands_are_never_compared() {
    let s = setup("");
    let mut c = RawConn::connect(s.proxy.addr());
    c.request(&["SADD", "pool", "a", "b", "c", "d", "e", "f"]);
    settle(&s);
    let before = compare_status(&s);
    for _ in 0..50 {
        c.request(&["SRANDMEMBER", "pool"]);
    }
    let after = settle(&s);
    assert_eq!(after["skipped"].as_u64().unwrap(), before["skipped"].as_u64().unwrap() + 50, "{after}");
    assert_eq!(after["match"], before["match"]);
    assert_eq!(after["mismatch"], 0);
}
