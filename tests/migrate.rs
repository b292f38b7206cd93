//! The migration tools (`tandem backfill`, `verify`, `repair`) against real redis-servers: bulk
//! copies with TTLs, copies racing live mirrored writes and deletes, resuming a killed run,
//! type-aware copies, every class of difference `verify` reports, and `repair` fixing them.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::cli::{self, run_tandem, strings, CliOut};
use support::{http, RawConn, RedisServer, Relay, Tandem};

// ---------------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------------

/// `tandem backfill --source S --target T --json --no-progress --checkpoint ... EXTRA...`.
///
/// Unless `extra` names a checkpoint, each call gets a fresh one in `dir`, so runs in one test
/// never see each other's checkpoints by accident.
fn backfill_args(dir: &Path, source: &str, target: &str, extra: &[&str]) -> Vec<String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut args = strings(&["backfill", "--source", source, "--target", target, "--json", "--no-progress"]);
    if !extra.contains(&"--checkpoint") {
        let n = N.fetch_add(1, Ordering::SeqCst);
        args.push("--checkpoint".into());
        args.push(dir.join(format!("backfill-{n}.checkpoint.json")).display().to_string());
    }
    args.extend(strings(extra));
    args
}

fn backfill(dir: &Path, source: &str, target: &str, extra: &[&str]) -> CliOut {
    run_tandem(dir, &backfill_args(dir, source, target, extra), Duration::from_secs(90))
}

/// `tandem verify --source S --target T --json --no-progress --ttl-tolerance 1s --recheck-delay
/// 100ms EXTRA...`.
fn verify(dir: &Path, source: &str, target: &str, extra: &[&str]) -> CliOut {
    cli::verify(dir, source, target, "100ms", extra, Duration::from_secs(90))
}

/// Runs verify and asserts it found the two keyspaces identical (exit 0, differences 0).
#[track_caller]
fn assert_no_differences(dir: &Path, source: &RedisServer, target: &RedisServer) -> Value {
    verify(dir, &source.url(), &target.url(), &[]).expect_no_differences()
}

fn repair(dir: &Path, source: &str, target: &str, extra: &[&str]) -> CliOut {
    let mut args = strings(&["repair", "--source", source, "--target", target, "--json"]);
    args.extend(strings(extra));
    run_tandem(dir, &args, Duration::from_secs(60))
}

/// A JSON counter as u64, panicking with the whole object if it is missing.
#[track_caller]
fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} missing or not a count in {v}"))
}

/// A child process killed (by PID, via its handle) and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// A blocking connection with bounded connect and read times.
fn conn(server: &RedisServer) -> redis::Connection {
    let c = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server.addr()));
    c.set_read_timeout(Some(Duration::from_secs(30))).expect("set_read_timeout");
    c.set_write_timeout(Some(Duration::from_secs(30))).expect("set_write_timeout");
    c
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A generated key and whether it was given an expiry.
#[derive(Clone, Debug)]
struct Key {
    name: String,
    ttl: bool,
}

const KINDS: [&str; 6] = ["str", "hash", "list", "set", "zset", "stream"];

/// Writes `n` keys named `{prefix}{kind}:{i}`, cycling through string, hash, list, set, zset
/// and stream, in pipelined batches. Of every ten keys two get no expiry, one an absolute
/// PEXPIREAT and seven a relative EXPIRE of 600..3600 s.
fn load_every_type(con: &mut redis::Connection, prefix: &str, n: usize) -> Vec<Key> {
    let now = now_ms();
    let mut keys = Vec::with_capacity(n);
    for start in (0..n).step_by(1000) {
        let mut p = redis::pipe();
        for i in start..(start + 1000).min(n) {
            let key = format!("{prefix}{}:{i}", KINDS[i % 6]);
            match i % 6 {
                0 => p.cmd("SET").arg(&key).arg(format!("value-{i}-{}", "x".repeat(i % 97))).ignore(),
                1 => p
                    .cmd("HSET")
                    .arg(&key)
                    .arg("a")
                    .arg(i)
                    .arg("b")
                    .arg("two")
                    .arg(format!("f{}", i % 7))
                    .arg("x")
                    .ignore(),
                2 => p.cmd("RPUSH").arg(&key).arg("first").arg(i).arg("first").arg(i % 13).ignore(),
                3 => p.cmd("SADD").arg(&key).arg("m1").arg("m2").arg(format!("m-{i}")).ignore(),
                4 => p.cmd("ZADD").arg(&key).arg(1).arg("a").arg(2.5).arg("b").arg(i).arg(format!("c{i}")).ignore(),
                _ => p
                    .cmd("XADD")
                    .arg(&key)
                    .arg("1-1")
                    .arg("field")
                    .arg("value")
                    .ignore()
                    .cmd("XADD")
                    .arg(&key)
                    .arg(format!("{}-0", i + 2))
                    .arg("n")
                    .arg(i)
                    .ignore(),
            };
            let ttl = match i % 10 {
                0 | 1 => false,
                2 => {
                    p.cmd("PEXPIREAT").arg(&key).arg(now + 1_500_000 + i as i64).ignore();
                    true
                }
                _ => {
                    p.cmd("EXPIRE").arg(&key).arg(600 + (i * 7) % 3000).ignore();
                    true
                }
            };
            keys.push(Key { name: key, ttl });
        }
        p.query::<()>(con).unwrap_or_else(|e| panic!("loading keys {start}..: {e}"));
    }
    keys
}

/// A few large keys (more than 1000 elements each), so copies that go element by element
/// need more than one batch.
fn load_big_keys(con: &mut redis::Connection) -> Vec<Key> {
    let mut p = redis::pipe();
    let fields: Vec<(String, String)> = (0..1500).map(|i| (format!("field-{i}"), format!("v{i}"))).collect();
    p.cmd("HSET").arg("big:hash").arg(&fields).ignore();
    p.cmd("EXPIRE").arg("big:hash").arg(1800).ignore();
    let items: Vec<String> = (0..3000).map(|i| format!("item-{}", i % 1700)).collect();
    p.cmd("RPUSH").arg("big:list").arg(&items).ignore();
    let members: Vec<String> = (0..2000).map(|i| format!("member-{i}")).collect();
    p.cmd("SADD").arg("big:set").arg(&members).ignore();
    p.cmd("EXPIRE").arg("big:set").arg(900).ignore();
    let ints: Vec<i64> = (0..1200).map(|i| i * 3 - 500).collect();
    p.cmd("SADD").arg("big:intset").arg(&ints).ignore();
    let scored: Vec<(f64, String)> = (0..1500).map(|i| (i as f64 / 7.0, format!("z-{i}"))).collect();
    p.cmd("ZADD").arg("big:zset").arg(&scored).ignore();
    p.cmd("PEXPIREAT").arg("big:zset").arg(now_ms() + 2_000_000).ignore();
    for i in 0..1200 {
        p.cmd("XADD").arg("big:stream").arg(format!("{}-{}", 1000 + i / 3, i % 3)).arg("n").arg(i).ignore();
    }
    p.cmd("EXPIRE").arg("big:stream").arg(3000).ignore();
    p.query::<()>(con).expect("loading big keys");
    [("big:hash", true), ("big:list", false), ("big:set", true), ("big:intset", false)]
        .into_iter()
        .chain([("big:zset", true), ("big:stream", true)])
        .map(|(k, ttl)| Key { name: k.to_string(), ttl })
        .collect()
}

/// PEXPIRETIME of every key, pipelined.
fn expiry_times(con: &mut redis::Connection, keys: &[Key]) -> Vec<i64> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("PEXPIRETIME").arg(&k.name);
        }
        let v: Vec<i64> = p.query(con).expect("PEXPIRETIME");
        out.extend(v);
    }
    out
}

/// Every key has the same absolute expiry on both sides (within `tolerance_ms`), and keys
/// written without one have none (-1) on either side.
#[track_caller]
fn assert_expiries_match(source: &RedisServer, target: &RedisServer, keys: &[Key], tolerance_ms: i64) {
    let src = expiry_times(&mut conn(source), keys);
    let dst = expiry_times(&mut conn(target), keys);
    for ((k, s), d) in keys.iter().zip(&src).zip(&dst) {
        if k.ttl {
            assert!(*s > 0, "{} was loaded with an expiry but has PEXPIRETIME {s} on the source", k.name);
            assert!((s - d).abs() <= tolerance_ms, "{}: source expires at {s}, target at {d}", k.name);
        } else {
            assert_eq!((*s, *d), (-1, -1), "{} has no expiry; PEXPIRETIME on source, target", k.name);
        }
    }
}

fn dbsize(server: &RedisServer) -> u64 {
    redis::cmd("DBSIZE").query(&mut conn(server)).expect("DBSIZE")
}

/// Every 100th key, plus every non-string key among the first 600 (so each type is in it).
fn sample(keys: &[Key]) -> Vec<Key> {
    keys.iter().enumerate().filter(|(i, _)| i % 100 == 0 || *i < 600).map(|(_, k)| k.clone()).collect()
}

/// The mirror's counters towards the target, from the proxy's admin status.
fn mirror_stats(proxy: &Tandem) -> Value {
    http::status(proxy.admin_port())["mirror"]["towards"]["target"].clone()
}

/// Waits until every mirrored write has settled (nothing in flight).
fn wait_mirror_idle(proxy: &Tandem) -> Value {
    let mut last = Value::Null;
    support::wait_until(Duration::from_secs(20), "mirror queue drained", || {
        last = mirror_stats(proxy);
        last["in_flight"] == 0
    });
    last
}

fn mirrored_proxy(source: &RedisServer, target: &RedisServer) -> Tandem {
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\nmirror:\n  mode: async\n",
        source.url(),
        target.url()
    );
    Tandem::start_config(&yaml, &[])
}

// ---------------------------------------------------------------------------------------------
// backfill
// ---------------------------------------------------------------------------------------------

#[test]
fn backfill_50k_keys_of_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut keys = load_every_type(&mut conn(&source), "", 50_000);
    // Keys that are not UTF-8 or hold spaces and newlines are keys like any other.
    let mut p = redis::pipe();
    p.cmd("SET").arg(&b"bin:\xff\x00\xfe"[..]).arg(&b"\x00\x01\x02"[..]).ignore();
    p.cmd("SET").arg("with space\r\nand newline").arg("v").ignore();
    p.query::<()>(&mut conn(&source)).unwrap();
    assert_eq!(dbsize(&source), 50_002);

    let started = Instant::now();
    let out = backfill(dir.path(), &source.url(), &target.url(), &[]);
    let took = started.elapsed();
    let r = out.json();
    for field in [
        "scanned",
        "copied",
        "skipped_existing",
        "gone",
        "expired",
        "deleted_after_copy",
        "changed_after_copy",
        "failed",
        "struct_copies",
        "elapsed_ms",
    ] {
        n(&r, field);
    }
    assert!(r["keys_per_sec"].is_number(), "keys_per_sec: {r}");
    assert_eq!(r["resumed"], false, "{r}");
    assert_eq!(r["dry_run"], false, "{r}");
    assert!(r["failed_keys"].as_array().is_some_and(|a| a.is_empty()), "failed_keys: {r}");
    assert_eq!(n(&r, "copied"), 50_002, "{out}");
    assert_eq!(n(&r, "failed"), 0, "{out}");
    assert_eq!(n(&r, "skipped_existing"), 0, "{out}");
    assert!(n(&r, "scanned") >= 50_002, "{out}");
    out.expect_code(0);
    eprintln!("backfill of 50k keys took {took:?}");
    assert_eq!(dbsize(&target), 50_002);
    let mut t = conn(&target);
    let bin: Vec<u8> = redis::cmd("GET").arg(&b"bin:\xff\x00\xfe"[..]).query(&mut t).unwrap();
    assert_eq!(bin, b"\x00\x01\x02");
    let odd: String = redis::cmd("GET").arg("with space\r\nand newline").query(&mut t).unwrap();
    assert_eq!(odd, "v");

    let started = Instant::now();
    let v = assert_no_differences(dir.path(), &source, &target);
    eprintln!("verify of 50k keys took {:?}", started.elapsed());
    assert_eq!(n(&v, "source_keys"), 50_002, "{v}");
    assert_eq!(n(&v, "target_keys"), 50_002, "{v}");
    keys = sample(&keys);
    assert!(keys.len() >= 500);
    assert_expiries_match(&source, &target, &keys, 1000);
}

#[test]
fn backfill_does_not_overwrite_live_writes() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    let proxy = mirrored_proxy(&source, &target);
    let preloaded = 20_000;
    {
        let mut c = conn(&source);
        for start in (0..preloaded).step_by(1000) {
            let mut p = redis::pipe();
            for i in start..start + 1000 {
                p.cmd("SET").arg(format!("pre:{i}")).arg(format!("orig-{i}")).arg("EX").arg(3600).ignore();
            }
            p.query::<()>(&mut c).unwrap();
        }
    }

    // A client writing through the proxy while the backfill runs: every other write updates
    // one of 2000 preloaded keys, the others create new keys. It remembers the last value it
    // wrote to each key.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes, addr) = (stop.clone(), writes.clone(), proxy.addr());
        std::thread::spawn(move || {
            let mut c = RawConn::connect(addr);
            let mut last = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let key = if i % 2 == 0 {
                    format!("pre:{}", (i / 2 * 10) % 20_000)
                } else {
                    format!("live:{}", i / 2 % 3000)
                };
                let value = format!("live-{i}");
                assert_eq!(c.request(&["SET", &key, &value, "EX", "600"]), b"+OK\r\n", "SET {key} through tandem");
                last.insert(key, value);
                writes.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            last
        })
    };
    support::wait_until(Duration::from_secs(10), "live writer under way", || {
        writes.load(Ordering::SeqCst) >= 500 || writer.is_finished()
    });
    // About two seconds of copying at 10k keys/s, with writes landing all along.
    let before = writes.load(Ordering::SeqCst);
    let out = backfill(dir.path(), &source.url(), &target.url(), &["--rate", "10000", "--count", "500"]);
    let during = writes.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    let last = writer.join().expect("live writer panicked");
    let r = out.json();
    out.expect_code(0);
    assert_eq!(n(&r, "failed"), 0, "{out}");
    assert!(n(&r, "elapsed_ms") >= 1000, "--rate 10000 over 20k keys should take about 2 s: {r}");
    assert!(n(&r, "skipped_existing") > 0, "the backfill met keys the mirror had already written: {r}");
    assert!(n(&r, "copied") > 0, "{r}");
    assert!(n(&r, "copied") + n(&r, "skipped_existing") >= preloaded, "every preloaded key copied or skipped: {r}");
    assert!(during >= 100, "only {during} live writes landed while the backfill ran");

    let stats = wait_mirror_idle(&proxy);
    assert_eq!(stats["dropped"], 0, "{stats}");
    assert_eq!(stats["error"], 0, "{stats}");
    // No live write was overwritten by an older copy: the target holds the last value
    // written through the proxy for every key.
    let keys: Vec<&String> = last.keys().collect();
    let mut t = conn(&target);
    let mut stale = Vec::new();
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("GET").arg(*k);
        }
        let got: Vec<Option<String>> = p.query(&mut t).unwrap();
        for (k, g) in chunk.iter().zip(got) {
            if g.as_deref() != Some(last[*k].as_str()) {
                stale.push(format!("{k}: target {g:?}, last written {:?}", last[*k]));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} live writes lost on the target, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert_eq!(dbsize(&source), dbsize(&target));
    assert_no_differences(dir.path(), &source, &target);
}

/// `INFO commandstats` calls of one command on a server (0 if never called).
fn command_calls(con: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn key_deleted_during_backfill_is_not_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    // The application's writes reach the target at once, through the proxy's mirror; the
    // backfill's reach it only after 800 ms, through a slow link.
    let proxy = mirrored_proxy(&source, &target);
    let slow = Relay::start(target.addr());
    slow.set_delay(Duration::from_millis(800));
    let mut src = conn(&source);
    let mut p = redis::pipe();
    for i in 0..20 {
        p.cmd("SET").arg(format!("keep:{i}")).arg(i).arg("EX").arg(900).ignore();
    }
    p.cmd("SET").arg("doomed").arg("session-data").arg("EX").arg(900).ignore();
    p.query::<()>(&mut src).unwrap();

    let config = dir.path().join("backfill.yaml");
    std::fs::write(
        &config,
        format!(
            "backends:\n  source:\n    url: {}\n  target:\n    url: {}\n    \
             connect_timeout: 10s\n    command_timeout: 30s\n",
            source.url(),
            slow.url()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    run_tandem(dir.path(), &strings(&["check", "--config", &config]), Duration::from_secs(10)).expect_code(0);

    let checkpoint = dir.path().join("cp.json").display().to_string();
    let args = strings(&[
        "backfill",
        "--config",
        &config,
        "--count",
        "1000",
        "--json",
        "--no-progress",
        "--checkpoint",
        &checkpoint,
    ]);
    let run_dir = dir.path().to_path_buf();
    let run = std::thread::spawn(move || run_tandem(&run_dir, &args, Duration::from_secs(60)));
    // The batch has been read from the source (its RESTOREs are on their way through the slow
    // link) when the application deletes one of its keys.
    support::wait_until(Duration::from_secs(20), "backfill to DUMP its batch from the source", || {
        command_calls(&mut src, "dump") > 0 || run.is_finished()
    });
    assert!(!run.is_finished(), "backfill finished before the delete could race it: {}", run.join().unwrap());
    let mut app = RawConn::connect(proxy.addr());
    assert_eq!(app.request(&["DEL", "doomed"]), b":1\r\n");
    wait_mirror_idle(&proxy);
    let out = run.join().expect("backfill thread panicked");
    let r = out.json();
    out.expect_code(0);
    let exists = |s: &RedisServer| -> i64 { redis::cmd("EXISTS").arg("doomed").query(&mut conn(s)).unwrap() };
    assert_eq!(exists(&source), 0);
    assert_eq!(exists(&target), 0, "the deleted key was resurrected on the target by the backfill: {r}");
    assert!(n(&r, "deleted_after_copy") >= 1, "the late RESTORE was noticed and undone: {r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert!(n(&r, "copied") >= 20, "{r}");
    for i in 0..20 {
        let v: Option<String> = redis::cmd("GET").arg(format!("keep:{i}")).query(&mut conn(&target)).unwrap();
        assert_eq!(v, Some(i.to_string()), "keep:{i} copied");
    }
}

#[test]
fn resume_after_kill_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    let total = 20_000u64;
    load_every_type(&mut conn(&source), "r:", total as usize);
    let checkpoint = dir.path().join("resume.checkpoint.json");
    let cp = checkpoint.display().to_string();

    // A throttled run (about 10 s for everything), killed once it has checkpointed progress.
    let args = backfill_args(dir.path(), &source.url(), &target.url(), &["--rate", "2000", "--checkpoint", &cp]);
    let mut cmd = Command::new(support::tandem_bin());
    cmd.args(&args).current_dir(dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = ChildGuard(cmd.spawn().expect("spawn backfill"));
    let mut last = Value::Null;
    support::wait_until(Duration::from_secs(15), "checkpoint with progress", || {
        // Tolerate a file caught mid-write: it is polled again.
        let Ok(text) = std::fs::read_to_string(&checkpoint) else { return false };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
        let moved = match &v["cursor"] {
            Value::Number(c) => c.as_u64() != Some(0),
            Value::String(c) => c != "0",
            _ => false,
        };
        last = v;
        last["done"] == false && moved
    });
    assert!(child.0.try_wait().unwrap().is_none(), "throttled backfill already exited; checkpoint {last}");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let copied_before = dbsize(&target);
    assert!(copied_before > 0 && copied_before < total, "killed run copied {copied_before} keys");

    // An unfinished checkpoint is not silently restarted or resumed.
    let refused = backfill(dir.path(), &source.url(), &target.url(), &["--checkpoint", &cp]);
    refused.expect_code(2);
    assert!(refused.stderr.contains("--resume"), "refusal names --resume\n{refused}");
    assert_eq!(dbsize(&target), copied_before, "the refused run copied nothing");

    let out = backfill(dir.path(), &source.url(), &target.url(), &["--resume", "--checkpoint", &cp]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!(r["resumed"], true, "{r}");
    assert!(n(&r, "scanned") < total, "resumed from the cursor, not from the start: {r}");
    assert!(n(&r, "copied") > 0, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert_eq!(dbsize(&target), total);
    assert_no_differences(dir.path(), &source, &target);

    // The job is done: a new run is not refused, scans everything and overwrites nothing.
    let again = backfill(dir.path(), &source.url(), &target.url(), &["--checkpoint", &cp]);
    let r = again.json();
    again.expect_code(0);
    assert_eq!(r["resumed"], false, "{r}");
    assert_eq!(n(&r, "copied"), 0, "{r}");
    assert_eq!(n(&r, "skipped_existing"), total, "{r}");
}

#[test]
fn struct_mode_copies_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut src = conn(&source);
    let mut keys = load_every_type(&mut src, "s:", 5000);
    keys.extend(load_big_keys(&mut src));
    // A key the mirror already wrote on the target, with a newer value: left alone.
    redis::cmd("HSET").arg("pre:hash").arg("f").arg("source").query::<()>(&mut src).unwrap();
    redis::cmd("HSET").arg("pre:hash").arg("f").arg("target").query::<()>(&mut conn(&target)).unwrap();
    let total = keys.len() as u64 + 1;

    let out = backfill(dir.path(), &source.url(), &target.url(), &["--mode", "struct"]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!(n(&r, "failed"), 0, "{out}");
    assert_eq!(n(&r, "copied"), total - 1, "{out}");
    assert_eq!(n(&r, "struct_copies"), n(&r, "copied"), "struct mode copies every key type-aware: {r}");
    assert_eq!(n(&r, "skipped_existing"), 1, "{r}");
    let kept: String = redis::cmd("HGET").arg("pre:hash").arg("f").query(&mut conn(&target)).unwrap();
    assert_eq!(kept, "target", "struct mode overwrote a key already on the target");
    assert_eq!(dbsize(&target), total);
    let len = |cmd: &str, key: &str| -> (u64, u64) {
        let q = |s: &RedisServer| redis::cmd(cmd).arg(key).query::<u64>(&mut conn(s)).unwrap();
        (q(&source), q(&target))
    };
    assert_eq!(len("HLEN", "big:hash"), (1500, 1500));
    assert_eq!(len("LLEN", "big:list"), (3000, 3000));
    assert_eq!(len("SCARD", "big:set"), (2000, 2000));
    assert_eq!(len("SCARD", "big:intset"), (1200, 1200));
    assert_eq!(len("ZCARD", "big:zset"), (1500, 1500));
    assert_eq!(len("XLEN", "big:stream"), (1200, 1200));

    // Once the two agree on the pre-existing key, everything is identical.
    redis::cmd("HSET").arg("pre:hash").arg("f").arg("target").query::<()>(&mut src).unwrap();
    assert_no_differences(dir.path(), &source, &target);
    assert_expiries_match(&source, &target, &keys, 1000);
}

// ---------------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------------

/// Runs `f` against both servers.
fn both(source: &RedisServer, target: &RedisServer, f: impl Fn(&mut redis::Connection)) {
    f(&mut conn(source));
    f(&mut conn(target));
}

fn run(con: &mut redis::Connection, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query::<redis::Value>(con).unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

/// `(key, class)` pairs of a `--report` file; non-UTF-8 keys as `hex:<lowercase hex>`.
#[track_caller]
fn report_entries(path: &Path) -> HashSet<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"));
    let diffs = v["differences"].as_array().unwrap_or_else(|| panic!("report has no differences array: {v}"));
    diffs
        .iter()
        .map(|d| {
            let key = match (d["key"].as_str(), d["key_hex"].as_str()) {
                (Some(k), _) => k.to_string(),
                (None, Some(h)) => format!("hex:{}", h.to_ascii_lowercase()),
                _ => panic!("report entry without key: {d}"),
            };
            (key, d["class"].as_str().unwrap_or_else(|| panic!("report entry without class: {d}")).to_string())
        })
        .collect()
}

#[test]
fn verify_reports_each_class_of_difference() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    load_every_type(&mut conn(&source), "", 300);
    load_every_type(&mut conn(&target), "", 300);
    let (mut s, mut t) = (conn(&source), conn(&target));
    let at = now_ms() + 3_600_000;
    let (at_s, at_60, at_300ms) = (at.to_string(), (at + 60_000).to_string(), (at + 300).to_string());

    // missing_on_target (2, one of them not UTF-8)
    run(&mut s, &["SET", "d:missing", "v"]);
    redis::cmd("SET").arg(&b"d:bin\xff\xfe"[..]).arg("v").query::<()>(&mut s).unwrap();
    // extra_on_target (1)
    run(&mut t, &["SET", "d:extra", "v"]);
    // type (1)
    run(&mut s, &["SET", "d:type", "x"]);
    run(&mut t, &["RPUSH", "d:type", "x"]);
    // value (5)
    run(&mut s, &["SET", "d:str", "a"]);
    run(&mut t, &["SET", "d:str", "b"]);
    run(&mut s, &["HSET", "d:hash", "f", "1", "g", "2"]);
    run(&mut t, &["HSET", "d:hash", "f", "1", "g", "3"]);
    run(&mut s, &["SADD", "d:set", "a", "b", "c"]);
    run(&mut t, &["SADD", "d:set", "a", "b", "d"]);
    run(&mut s, &["ZADD", "d:zset", "1", "a", "2", "b"]);
    run(&mut t, &["ZADD", "d:zset", "1", "a", "3", "b"]);
    run(&mut s, &["RPUSH", "d:list", "a", "b", "c"]);
    run(&mut t, &["RPUSH", "d:list", "a", "c", "b"]);
    // ttl (2): 60 s apart, and an expiry on one side only
    both(&source, &target, |c| run(c, &["SET", "d:ttl-far", "v"]));
    run(&mut s, &["PEXPIREAT", "d:ttl-far", &at_s]);
    run(&mut t, &["PEXPIREAT", "d:ttl-far", &at_60]);
    both(&source, &target, |c| run(c, &["SET", "d:ttl-one", "v"]));
    run(&mut s, &["PEXPIREAT", "d:ttl-one", &at_s]);

    // Not differences: the same members, fields and scores written in another order, and
    // expiries 300 ms apart (within the 1 s tolerance).
    let members: Vec<String> = (0..200).map(|i| format!("member-{i}")).collect();
    let fields: Vec<(String, String)> = (0..10).map(|i| (format!("f{i}"), format!("v{i}"))).collect();
    let scored: Vec<(u32, String)> = (0..50).map(|i| (i % 5, format!("z{i}"))).collect();
    redis::cmd("SADD").arg("o:set").arg(&members).query::<()>(&mut s).unwrap();
    redis::cmd("SADD").arg("o:set").arg(members.iter().rev().collect::<Vec<_>>()).query::<()>(&mut t).unwrap();
    redis::cmd("HSET").arg("o:hash").arg(&fields).query::<()>(&mut s).unwrap();
    redis::cmd("HSET").arg("o:hash").arg(fields.iter().rev().collect::<Vec<_>>()).query::<()>(&mut t).unwrap();
    redis::cmd("ZADD").arg("o:zset").arg(&scored).query::<()>(&mut s).unwrap();
    redis::cmd("ZADD").arg("o:zset").arg(scored.iter().rev().collect::<Vec<_>>()).query::<()>(&mut t).unwrap();
    both(&source, &target, |c| run(c, &["SET", "o:ttl-close", "v"]));
    run(&mut s, &["PEXPIREAT", "o:ttl-close", &at_s]);
    run(&mut t, &["PEXPIREAT", "o:ttl-close", &at_300ms]);

    let report = dir.path().join("report.json");
    let out = verify(dir.path(), &source.url(), &target.url(), &["--report", &report.display().to_string()]);
    let v = out.json();
    out.expect_code(1);
    let expected_classes = [("missing_on_target", 2), ("extra_on_target", 1), ("type", 1), ("value", 5), ("ttl", 2)];
    for (class, count) in expected_classes {
        assert_eq!(v["by_class"][class], count, "{class}\n{out}");
    }
    assert_eq!(n(&v, "differences"), 11, "{out}");
    assert_eq!(n(&v, "source_keys"), 300 + 14, "{v}");
    assert_eq!(n(&v, "target_keys"), 300 + 13, "{v}");
    n(&v, "compared");
    n(&v, "elapsed_ms");

    let sampled = |class: &str| -> HashSet<String> {
        v["samples"][class]
            .as_array()
            .unwrap_or_else(|| panic!("no samples for {class}: {v}"))
            .iter()
            .filter_map(|k| k.as_str().map(String::from))
            .collect()
    };
    assert!(sampled("missing_on_target").contains("d:missing"), "{v}");
    assert_eq!(sampled("extra_on_target"), HashSet::from(["d:extra".to_string()]), "{v}");
    assert_eq!(sampled("type"), HashSet::from(["d:type".to_string()]), "{v}");
    let value_keys: HashSet<String> = ["d:str", "d:hash", "d:set", "d:zset", "d:list"].map(String::from).into();
    assert_eq!(sampled("value"), value_keys, "{v}");
    assert_eq!(sampled("ttl"), HashSet::from(["d:ttl-far".to_string(), "d:ttl-one".to_string()]), "{v}");

    let mut expected: HashSet<(String, String)> = HashSet::new();
    let mut add = |key: &str, class: &str| expected.insert((key.to_string(), class.to_string()));
    add("d:missing", "missing_on_target");
    add("hex:643a62696efffe", "missing_on_target");
    add("d:extra", "extra_on_target");
    add("d:type", "type");
    for k in ["d:str", "d:hash", "d:set", "d:zset", "d:list"] {
        add(k, "value");
    }
    add("d:ttl-far", "ttl");
    add("d:ttl-one", "ttl");
    assert_eq!(report_entries(&report), expected, "--report lists exactly the injected differences");
}

// ---------------------------------------------------------------------------------------------
// repair
// ---------------------------------------------------------------------------------------------

#[test]
fn repair_fixes_what_verify_reported() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    load_every_type(&mut conn(&source), "", 200);
    load_every_type(&mut conn(&target), "", 200);
    let (mut s, mut t) = (conn(&source), conn(&target));
    let at = (now_ms() + 1_800_000).to_string();
    both(&source, &target, |c| {
        run(c, &["SET", "r:str", "good"]);
        run(c, &["HSET", "r:hash", "a", "1", "b", "2"]);
        run(c, &["RPUSH", "r:list", "x", "y", "z"]);
    });
    run(&mut s, &["PEXPIREAT", "r:str", &at]);
    run(&mut t, &["PEXPIREAT", "r:str", &at]);
    // Stale or missing on the target (source serves everything at cutover 0).
    run(&mut t, &["SET", "r:str", "stale", "KEEPTTL"]);
    run(&mut t, &["HSET", "r:hash", "b", "stale"]);
    run(&mut t, &["RPUSH", "r:list", "stale"]);
    run(&mut s, &["SET", "r:missing", "only-on-source", "EX", "1200"]);
    run(&mut t, &["SET", "r:extra", "deleted-on-source"]);

    let report = dir.path().join("report.json").display().to_string();
    verify(dir.path(), &source.url(), &target.url(), &["--report", &report]).expect_code(1);

    // A dry run changes nothing.
    let dry = repair(dir.path(), &source.url(), &target.url(), &["--report", &report, "--dry-run"]);
    dry.expect_code(0);
    let get = |c: &mut redis::Connection, k: &str| -> Option<String> { redis::cmd("GET").arg(k).query(c).unwrap() };
    assert_eq!(get(&mut t, "r:str").as_deref(), Some("stale"), "repair --dry-run wrote\n{dry}");
    assert_eq!(get(&mut t, "r:extra").as_deref(), Some("deleted-on-source"), "repair --dry-run deleted\n{dry}");

    let out = repair(dir.path(), &source.url(), &target.url(), &["--report", &report, "--cutover", "0"]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!(n(&r, "keys"), 5, "{r}");
    assert_eq!(n(&r, "copied"), 4, "{r}");
    assert_eq!(n(&r, "deleted"), 1, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert_eq!(r["cutover_percent"].as_f64(), Some(0.0), "{r}");
    assert_eq!(get(&mut t, "r:str").as_deref(), Some("good"));
    assert_eq!(get(&mut t, "r:extra"), None);
    assert_no_differences(dir.path(), &source, &target);
    let keys = [Key { name: "r:str".into(), ttl: true }, Key { name: "r:missing".into(), ttl: true }];
    assert_expiries_match(&source, &target, &keys, 1000);

    // At cutover 100 the target serves every key: repair copies target -> source.
    let later = (now_ms() + 2_400_000).to_string();
    run(&mut t, &["SET", "r:str", "newer-on-target", "PXAT", &later]);
    run(&mut t, &["HSET", "r:hash", "c", "3"]);
    run(&mut t, &["DEL", "r:list"]);
    let report2 = dir.path().join("report2.json").display().to_string();
    verify(dir.path(), &source.url(), &target.url(), &["--report", &report2]).expect_code(1);
    let out = repair(dir.path(), &source.url(), &target.url(), &["--report", &report2, "--cutover", "100"]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!((n(&r, "keys"), n(&r, "copied"), n(&r, "deleted"), n(&r, "failed")), (3, 2, 1, 0), "{r}");
    assert_eq!(r["cutover_percent"].as_f64(), Some(100.0), "{r}");
    assert_eq!(get(&mut s, "r:str").as_deref(), Some("newer-on-target"));
    let c: Option<String> = redis::cmd("HGET").arg("r:hash").arg("c").query(&mut s).unwrap();
    assert_eq!(c.as_deref(), Some("3"));
    let list: i64 = redis::cmd("EXISTS").arg("r:list").query(&mut s).unwrap();
    assert_eq!(list, 0, "a key missing on the serving side is deleted on the other");
    assert_no_differences(dir.path(), &source, &target);
    let src_exp: i64 = redis::cmd("PEXPIRETIME").arg("r:str").query(&mut s).unwrap();
    assert!((src_exp - later.parse::<i64>().unwrap()).abs() <= 1000, "expiry copied target -> source: {src_exp}");
}

#[test]
fn repair_copies_the_keys_in_the_proxy_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("repair.jsonl");
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\n    \
         connect_timeout: 200ms\n    command_timeout: 500ms\nmirror:\n  mode: async\n  journal: {}\n",
        source.url(),
        target.url(),
        journal.display()
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    let mut app = RawConn::connect(proxy.addr());
    // The target is down: these writes reach only the source, and the journal names them.
    target.stop();
    for i in 0..50 {
        assert_eq!(app.request(&["SET", &format!("lost:{i}"), &format!("v{i}"), "EX", "900"]), b"+OK\r\n");
    }
    support::wait_until(Duration::from_secs(15), "journal names the 50 lost writes", || {
        std::fs::read_to_string(&journal).unwrap_or_default().lines().count() >= 50
    });
    target.restart();
    assert_eq!(dbsize(&target), 0);

    let out = repair(dir.path(), &source.url(), &target.url(), &["--journal", &journal.display().to_string()]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!((n(&r, "keys"), n(&r, "copied"), n(&r, "failed")), (50, 50, 0), "{r}");
    let mut t = conn(&target);
    for i in 0..50 {
        let v: Option<String> = redis::cmd("GET").arg(format!("lost:{i}")).query(&mut t).unwrap();
        assert_eq!(v, Some(format!("v{i}")), "lost:{i} repaired");
    }
    let keys: Vec<Key> = (0..50).map(|i| Key { name: format!("lost:{i}"), ttl: true }).collect();
    assert_expiries_match(&source, &target, &keys, 1000);
}

// ---------------------------------------------------------------------------------------------
// Options and bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn backfill_match_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    load_every_type(&mut conn(&source), "a:", 300);
    load_every_type(&mut conn(&source), "b:", 200);

    let dry = backfill(dir.path(), &source.url(), &target.url(), &["--dry-run"]);
    let r = dry.json();
    dry.expect_code(0);
    assert_eq!(r["dry_run"], true, "{r}");
    assert_eq!(n(&r, "scanned"), 500, "{r}");
    assert_eq!(dbsize(&target), 0, "a dry run wrote to the target\n{dry}");

    let out = backfill(dir.path(), &source.url(), &target.url(), &["--match", "a:*"]);
    let r = out.json();
    out.expect_code(0);
    assert_eq!(n(&r, "copied"), 300, "{r}");
    assert_eq!(dbsize(&target), 300);
    let b: Vec<String> = redis::cmd("KEYS").arg("b:*").query(&mut conn(&target)).unwrap();
    assert!(b.is_empty(), "--match a:* copied {b:?}");
    // verify --match compares only that part of the keyspace.
    let v = verify(dir.path(), &source.url(), &target.url(), &["--match", "a:*"]);
    v.expect_code(0);
    assert_eq!(n(&v.json(), "source_keys"), 300, "{v}");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let nobody = format!("redis://127.0.0.1:{}", support::free_port());

    let out = backfill(dir.path(), &source.url(), &nobody, &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("target"), "the message names the unreachable target\n{out}");

    let out = run_tandem(dir.path(), &strings(&["verify", "--json", "--no-progress"]), Duration::from_secs(15));
    out.expect_code(2);
    assert!(!out.stderr.trim().is_empty(), "verify without a source says why\n{out}");

    let out = run_tandem(
        dir.path(),
        &strings(&["verify", "--source", &source.url(), "--target", &nobody, "--json", "--no-progress"]),
        Duration::from_secs(15),
    );
    out.expect_code(2);
    assert!(out.stderr.contains("target"), "{out}");

    // Copying a server onto itself is refused, not attempted.
    let out = backfill(dir.path(), &source.url(), &source.url(), &[]);
    out.expect_code(2);

    let out = repair(dir.path(), &source.url(), &nobody, &["--report", "/nonexistent/report.json"]);
    out.expect_code(2);
}

/// `--rate` holds backfill and verify to the given keys per second (a lower bound on their
/// time, which stays true however loaded the machine is).
#[test]
fn rate_limits_backfill_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedisServer::start();
    let target = RedisServer::start();
    load_every_type(&mut conn(&source), "rate:", 1_200);
    let started = std::time::Instant::now();
    let out = backfill(dir.path(), &source.url(), &target.url(), &["--rate", "1000", "--count", "100"]);
    out.expect_code(0);
    let copied = n(&out.json(), "copied");
    assert_eq!(copied, 1_200, "{out}");
    assert!(started.elapsed() >= Duration::from_millis(1_100), "1,200 keys at 1,000/s took {:?}", started.elapsed());
    // verify reads every key on both passes (source, then target): 2,400 keys at 1,500/s.
    let started = std::time::Instant::now();
    let out = verify(dir.path(), &source.url(), &target.url(), &["--rate", "1500", "--count", "100"]);
    out.expect_code(0);
    assert!(started.elapsed() >= Duration::from_millis(1_500), "2,400 keys at 1,500/s took {:?}", started.elapsed());
}
