//! Self-test of the integration-test support code (`tests/support/`).
//!
//! Exercises every helper against real redis-server processes so that a
//! failure in a proxy test can be trusted to be about the proxy.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::*;

/// Extracts the message of a caught panic.
fn panic_message(err: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic>".to_string()
    }
}

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async::<String>(conn).await
}

// ---------------------------------------------------------------- basics

#[test]
fn free_port_hands_out_distinct_bindable_ports() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let unique: std::collections::HashSet<_> = ports.iter().collect();
    assert_eq!(unique.len(), ports.len(), "duplicate ports: {ports:?}");
    for p in &ports[..5] {
        std::net::TcpListener::bind(("127.0.0.1", *p)).expect("port should be bindable");
    }
}

#[test]
fn wait_until_returns_as_soon_as_condition_holds() {
    let start = Instant::now();
    let mut n = 0;
    wait_until(Duration::from_secs(5), "counter to reach 3", || {
        n += 1;
        n >= 3
    });
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "waiting for: the impossible")]
fn wait_until_panics_on_deadline() {
    wait_until(Duration::from_millis(50), "the impossible", || false);
}

#[tokio::test]
#[should_panic(expected = "waiting for: a future that never resolves")]
async fn wait_until_async_bounds_hanging_conditions() {
    // The condition future itself hangs: the deadline must still apply.
    wait_until_async(Duration::from_millis(100), "a future that never resolves", std::future::pending::<bool>).await;
}

#[tokio::test]
async fn wait_until_async_polls_until_true() {
    let mut n = 0;
    wait_until_async(Duration::from_secs(5), "counter", || {
        n += 1;
        let done = n >= 3;
        async move { done }
    })
    .await;
    assert_eq!(n, 3);
}

// ---------------------------------------------------------- RedisServer

#[tokio::test]
async fn two_servers_are_independent() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.addr(), format!("127.0.0.1:{}", a.port()));
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}", a.port()));

    let mut ca = a.conn().await;
    let mut cb = b.conn().await;
    let _: () = ca.set("k", "from-a").await.unwrap();
    let _: () = cb.set("k", "from-b").await.unwrap();
    assert_eq!(ca.get::<_, String>("k").await.unwrap(), "from-a");
    assert_eq!(cb.get::<_, String>("k").await.unwrap(), "from-b");

    // Sync client and redis-cli see the same data.
    let mut sync = a.client().get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut sync).unwrap();
    assert_eq!(v, "from-a");
    assert_eq!(b.cli(&["GET", "k"]), "from-b");
    assert_eq!(a.cli(&["PING"]), "PONG");
    assert!(a.cli(&["NOSUCHCOMMAND"]).starts_with("ERR"));
    assert!(a.log().contains("Ready to accept connections"), "{}", a.log());
}

#[tokio::test]
async fn restart_keeps_port_and_serves_again() {
    let mut s = RedisServer::start();
    let port = s.port();
    let old_pid = s.pid();
    let mut c = s.conn().await;
    let _: () = c.set("k", "v").await.unwrap();

    s.restart();
    assert_eq!(s.port(), port);
    assert_ne!(s.pid(), old_pid);
    assert!(!process_alive(old_pid), "old redis-server {old_pid} still alive");
    assert!(process_alive(s.pid()));

    // The old connection is dead; a new one works (data is gone: no persistence).
    assert!(ping(&mut c).await.is_err() || ping(&mut c).await.is_err());
    let mut c = s.conn().await;
    assert_eq!(c.get::<_, Option<String>>("k").await.unwrap(), None);
    let _: () = c.set("k", "v2").await.unwrap();
    assert_eq!(s.cli(&["GET", "k"]), "v2");
}

#[tokio::test]
async fn requirepass_server_is_ready_and_helpers_authenticate() {
    let s = RedisServer::start_with(&["--requirepass", "s3cr#t"]);
    assert_eq!(s.password(), Some("s3cr#t"));
    // Unauthenticated raw access is refused...
    let mut raw = RawConn::connect(s.addr());
    let reply = raw.request(&["PING"]);
    assert!(reply.starts_with(b"-NOAUTH"), "{:?}", String::from_utf8_lossy(&reply));
    // ...while the helpers are authenticated.
    assert_eq!(s.cli(&["PING"]), "PONG");
    let mut c = s.conn().await;
    assert_eq!(ping(&mut c).await.unwrap(), "PONG");
}

#[test]
fn stop_kills_the_process_and_is_idempotent() {
    let mut s = RedisServer::start();
    let pid = s.pid();
    assert!(process_alive(pid));
    s.stop();
    assert!(!process_alive(pid), "redis-server {pid} survived stop()");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    s.stop();
    assert!(!s.is_running());
    assert!(probe_ping(&s.addr(), Duration::from_millis(200)).is_none());
}

#[test]
fn drop_kills_the_process_and_removes_its_dir() {
    let (pid, dir) = {
        let s = RedisServer::start();
        assert!(process_alive(s.pid()));
        (s.pid(), s.dir().to_path_buf())
    };
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "redis-server {pid} leaked");
    assert!(!dir.exists(), "tempdir {} leaked", dir.display());
}

// ---------------------------------------------------------------- Relay

#[tokio::test]
async fn relay_passthrough() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    assert_eq!(relay.url(), format!("redis://127.0.0.1:{}", relay.port()));
    let client = redis::Client::open(relay.url()).unwrap();
    let mut c = connect_async(&client, "relay").await;
    let _: () = c.set("через", "relay").await.unwrap();
    assert_eq!(s.cli(&["GET", "через"]), "relay");
    assert_eq!(c.get::<_, String>("через").await.unwrap(), "relay");
    wait_until(Duration::from_secs(5), "one relayed connection", || relay.connections() == 1);
    drop(c);
    drop(client);
    // Async wait: the connection's driver task must get to run on this
    // (current-thread) runtime to close the socket.
    wait_until_async(Duration::from_secs(5), "relayed connection to close", || async { relay.connections() == 0 })
        .await;

    // A url()-style upstream works too.
    let relay2 = Relay::start(s.url());
    let mut raw = RawConn::connect(relay2.addr());
    assert_eq!(raw.request(&["GET", "через"]), b"$5\r\nrelay\r\n");
}

#[tokio::test]
async fn relay_delay_slows_round_trips_and_can_be_removed() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    let mut c = connect_async(&redis::Client::open(relay.url()).unwrap(), "relay").await;
    ping(&mut c).await.unwrap();

    relay.set_delay(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(ping(&mut c).await.unwrap(), "PONG");
    let slow = t.elapsed();
    assert!(slow >= Duration::from_millis(200), "round trip took only {slow:?}");

    relay.set_delay(Duration::ZERO);
    let t = Instant::now();
    ping(&mut c).await.unwrap();
    let fast = t.elapsed();
    assert!(fast < Duration::from_millis(200), "round trip still slow: {fast:?}");
}

#[test]
fn relay_delay_preserves_order_of_pipelined_replies() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    relay.set_delay(Duration::from_millis(50));
    let mut raw = RawConn::connect(relay.addr());
    let mut pipeline = Vec::new();
    for i in 0..20 {
        pipeline.extend(encode_cmd(&["ECHO", &i.to_string()]));
    }
    raw.send(&pipeline);
    for i in 0..20 {
        let want = format!("${}\r\n{i}\r\n", i.to_string().len());
        assert_eq!(raw.read_reply(), want.as_bytes());
    }
}

#[test]
fn relay_bandwidth_limit_throttles() {
    let s = RedisServer::start();
    s.cli(&["SET", "big", &"x".repeat(10_000)]);
    let relay = Relay::start(s.addr());
    let mut raw = RawConn::connect(relay.addr());
    relay.set_bandwidth(Some(20_000));
    let t = Instant::now();
    let reply = raw.request(&["GET", "big"]);
    let took = t.elapsed();
    assert_eq!(reply.len(), 10_000 + "$10000\r\n\r\n".len());
    assert!(took >= Duration::from_millis(350), "10 KB at 20 KB/s took only {took:?}");
    relay.set_bandwidth(None);
    let t = Instant::now();
    raw.request(&["GET", "big"]);
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn relay_blackhole_times_out_then_recovers_for_new_connections() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    let client = redis::Client::open(relay.url()).unwrap();
    let mut c = connect_async(&client, "relay").await;
    ping(&mut c).await.unwrap();

    relay.blackhole(true);
    let r = tokio::time::timeout(Duration::from_millis(300), ping(&mut c)).await;
    assert!(r.is_err(), "PING through a blackhole should time out, got {r:?}");
    assert_eq!(relay.connections(), 1, "blackholed connection should stay open");

    // Raw view: a new connection is accepted, but nothing comes back.
    let mut raw = RawConn::connect(relay.addr());
    raw.set_timeout(Duration::from_millis(200));
    raw.send_cmd(&["PING"]);
    let err = raw.try_read_reply().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

    relay.blackhole(false);
    let mut c2 = connect_async(&client, "relay").await;
    assert_eq!(ping(&mut c2).await.unwrap(), "PONG");
}

#[tokio::test]
async fn relay_reset_all_aborts_in_flight_requests() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    let mut c = connect_async(&redis::Client::open(relay.url()).unwrap(), "relay").await;
    ping(&mut c).await.unwrap();

    // A request in flight: BLPOP blocks server-side for up to 5 s.
    let mut c2 = c.clone();
    let blpop = tokio::spawn(async move {
        redis::cmd("BLPOP").arg("nokey").arg(5).query_async::<Option<(String, String)>>(&mut c2).await
    });
    // Raw connection, to see the RST itself.
    let mut raw = RawConn::connect(relay.addr());
    raw.send_cmd(&["BLPOP", "otherkey", "5"]);
    // Async wait, so the spawned BLPOP task gets to run meanwhile.
    wait_until_async(Duration::from_secs(5), "both BLPOPs to block", || async {
        s.cli(&["INFO", "clients"]).contains("blocked_clients:2")
    })
    .await;

    let t = Instant::now();
    relay.reset_all();
    assert_eq!(relay.connections(), 0);
    let res = tokio::time::timeout(Duration::from_secs(2), blpop)
        .await
        .expect("in-flight BLPOP should fail promptly after reset_all")
        .unwrap();
    assert!(res.is_err(), "expected an error, got {res:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let err = raw.try_read_reply().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // New connections are fine.
    let mut raw2 = RawConn::connect(relay.addr());
    assert_eq!(raw2.request(&["PING"]), b"+PONG\r\n");
}

#[tokio::test]
async fn relay_cut_truncates_a_reply() {
    let s = RedisServer::start();
    s.cli(&["SET", "long", &"v".repeat(10_000)]);
    let relay = Relay::start(s.addr());

    let mut raw = RawConn::connect(relay.addr());
    assert_eq!(raw.request(&["PING"]), b"+PONG\r\n");
    relay.cut_after_reply_bytes(Some(3));
    raw.send_cmd(&["GET", "long"]);
    assert_eq!(raw.read_until_closed(), b"$10", "reply should be cut after 3 bytes");

    // One-shot: disarmed now. Arm again for the redis crate.
    let mut c = connect_async(&redis::Client::open(relay.url()).unwrap(), "relay").await;
    assert_eq!(c.get::<_, String>("long").await.unwrap().len(), 10_000);
    relay.cut_after_reply_bytes(Some(100));
    let r = c.get::<_, String>("long").await;
    assert!(r.is_err(), "truncated GET should fail, got Ok");
}

#[test]
fn relay_corrupt_next_reply_garbles_one_chunk() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    let mut raw = RawConn::connect(relay.addr());
    relay.corrupt_next_reply(true);
    raw.send_cmd(&["PING"]);
    let err = raw.try_read_reply().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(raw.buffered(), b"?PONG\r\n");

    let mut raw2 = RawConn::connect(relay.addr());
    assert_eq!(raw2.request(&["PING"]), b"+PONG\r\n", "corruption is one-shot");
}

#[test]
fn relay_refuse_closes_new_connections() {
    let s = RedisServer::start();
    let relay = Relay::start(s.addr());
    let mut kept = RawConn::connect(relay.addr());
    assert_eq!(kept.request(&["PING"]), b"+PONG\r\n");

    relay.refuse(true);
    let mut raw = RawConn::connect(relay.addr());
    assert_eq!(raw.read_until_closed(), b"");
    assert_eq!(kept.request(&["PING"]), b"+PONG\r\n", "existing connections unaffected");

    relay.refuse(false);
    let mut raw = RawConn::connect(relay.addr());
    assert_eq!(raw.request(&["PING"]), b"+PONG\r\n");
    let before = relay.accepted();
    relay.set_upstream("127.0.0.1:1"); // nothing listens there
    let mut raw = RawConn::connect(relay.addr());
    assert_eq!(raw.read_until_closed(), b"", "unreachable upstream closes the client");
    assert_eq!(relay.accepted(), before + 1);
}

#[test]
fn relay_stop_and_drop_close_everything() {
    let s = RedisServer::start();
    let mut relay = Relay::start(s.addr());
    let addr = relay.addr();
    let mut raw = RawConn::connect(&addr);
    assert_eq!(raw.request(&["PING"]), b"+PONG\r\n");
    relay.stop();
    assert_eq!(relay.connections(), 0);
    assert_eq!(raw.read_until_closed(), b"");
    assert!(RawConn::try_connect(&addr, Duration::from_millis(500)).is_err());
    relay.stop(); // idempotent

    let addr2 = {
        let relay2 = Relay::start(s.addr());
        relay2.addr()
    };
    assert!(RawConn::try_connect(&addr2, Duration::from_millis(500)).is_err());
}

// -------------------------------------------------------------- RawConn

#[test]
fn raw_conn_reads_multibulk_byte_exactly() {
    let s = RedisServer::start();
    let mut raw = RawConn::connect(s.addr());
    assert_eq!(raw.request(&["RPUSH", "l", "a", "bb", "ccc", ""]), b":4\r\n");
    assert_eq!(raw.request(&["LRANGE", "l", "0", "-1"]), b"*4\r\n$1\r\na\r\n$2\r\nbb\r\n$3\r\nccc\r\n$0\r\n\r\n");
    // RESP2 nulls and errors; pipelined replies come out one frame at a time.
    raw.send(&[encode_cmd(&["GET", "missing"]), encode_cmd(&["LPOP", "missing", "1"]), encode_cmd(&["NOPE"])].concat());
    assert_eq!(raw.read_reply(), b"$-1\r\n");
    assert_eq!(raw.read_reply(), b"*-1\r\n");
    assert!(raw.read_reply().starts_with(b"-ERR unknown command"));
    // Inline commands and protocol errors.
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_reply(), b"+PONG\r\n");
    raw.send(b"*1\r\n$-5\r\n");
    assert!(raw.read_reply().starts_with(b"-ERR Protocol error"));
    assert_eq!(raw.read_until_closed(), b"", "redis closes after a protocol error");
}

#[test]
fn raw_conn_reads_resp3_byte_exactly() {
    let s = RedisServer::start();
    let mut raw = RawConn::connect(s.addr());
    let hello = raw.request(&["HELLO", "3"]);
    assert!(hello.starts_with(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{:?}", String::from_utf8_lossy(&hello));
    assert_eq!(raw.request(&["HSET", "h", "f1", "v1", "f2", "v2"]), b":2\r\n");
    assert_eq!(raw.request(&["HGETALL", "h"]), b"%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n");
    assert_eq!(raw.request(&["GET", "missing"]), b"_\r\n");
    raw.request(&["ZADD", "z", "1.5", "m"]);
    assert_eq!(raw.request(&["ZSCORE", "z", "m"]), b",1.5\r\n");
    assert_eq!(raw.request(&["SADD", "s", "x"]), b":1\r\n");
    assert_eq!(raw.request(&["SMEMBERS", "s"]), b"~1\r\n$1\r\nx\r\n");
    // Push message after SUBSCRIBE.
    assert_eq!(raw.request(&["SUBSCRIBE", "ch"]), b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
}

#[test]
fn resp_frame_len_handles_all_types() {
    assert_eq!(resp_frame_len(b"+OK\r\n+next"), Ok(Some(5)));
    assert_eq!(resp_frame_len(b"+OK\r"), Ok(None));
    assert_eq!(resp_frame_len(b""), Ok(None));
    assert_eq!(resp_frame_len(b"$3\r\nabc\r\n"), Ok(Some(9)));
    assert_eq!(resp_frame_len(b"$3\r\nab"), Ok(None));
    assert!(resp_frame_len(b"$3\r\nabcd\r\n").is_err());
    assert_eq!(resp_frame_len(b"*2\r\n:1\r\n*1\r\n_\r\n"), Ok(Some(15)));
    assert_eq!(resp_frame_len(b"*2\r\n:1\r\n"), Ok(None));
    assert_eq!(resp_frame_len(b"%1\r\n+k\r\n#t\r\n"), Ok(Some(12)));
    assert_eq!(resp_frame_len(b"=8\r\ntxt:abcd\r\n"), Ok(Some(14)));
    assert_eq!(resp_frame_len(b"!3\r\nERR\r\n"), Ok(Some(9)));
    assert_eq!(resp_frame_len(b"(123456789012345678901\r\n"), Ok(Some(24)));
    // Attribute + the value it annotates form one frame.
    assert_eq!(resp_frame_len(b"|1\r\n+a\r\n:1\r\n+v\r\n"), Ok(Some(16)));
    assert_eq!(resp_frame_len(b"|1\r\n+a\r\n:1\r\n"), Ok(None));
    assert!(resp_frame_len(b"?PONG\r\n").is_err());
    assert!(resp_frame_len(b"*x\r\n").is_err());
    assert_eq!(encode_cmd(&["SET", "k", ""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
}

// --------------------------------------------------------------- Tandem

/// A stand-in for the tandem binary: accepts `run --listen H:P --admin H:P
/// ...` and execs redis-server on the listen port, so the Tandem helper can
/// be exercised without the real proxy.
fn fake_tandem(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-tandem");
    let script = r#"#!/bin/sh
if [ "$1" != run ]; then echo "usage: fake-tandem run ..." >&2; exit 2; fi
shift
listen=""
while [ $# -gt 0 ]; do
  case "$1" in
    --listen) listen="$2"; shift 2 ;;
    --fail) echo "fake tandem: failing on purpose" >&2; exit 3 ;;
    *) shift ;;
  esac
done
echo "fake tandem: listening on $listen FAKE_ENV=$FAKE_ENV"
exec redis-server --port "${listen##*:}" --bind 127.0.0.1 --save "" --appendonly no
"#;
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn tandem_lifecycle_with_fake_binary() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_tandem(bin_dir.path());
    let upstream = RedisServer::start();
    let mut t = TandemBuilder::new()
        .bin(&bin)
        .config("source: redis://example\n")
        .args(["--source".to_string(), upstream.url()])
        .env("FAKE_ENV", "hello")
        .start();
    assert_ne!(t.port(), t.admin_port());
    assert_eq!(t.url(), format!("redis://127.0.0.1:{}", t.port()));
    assert_eq!(t.cli(&["PING"]), "PONG");
    let mut c = t.client().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("a").arg("1").query(&mut c).unwrap();
    assert_eq!(t.cli(&["GET", "a"]), "1");
    assert!(t.log().contains(&format!("listening on 127.0.0.1:{} FAKE_ENV=hello", t.port())), "{}", t.log());
    assert_eq!(std::fs::read_to_string(t.config_path()).unwrap(), "source: redis://example\n");

    // HUP is ignored by redis-server: still running.
    t.signal("HUP");
    assert_eq!(RawConn::connect(t.addr()).request(&["PING"]), b"+PONG\r\n");
    assert!(t.is_running());

    let pid = t.pid();
    t.signal("TERM");
    let status = t.wait_exit(Duration::from_secs(5)).expect("exits after TERM");
    assert!(status.success(), "{status}");
    assert_eq!(t.wait_exit(Duration::ZERO), Some(status));
    assert!(!process_alive(pid));
    // Signalling a reaped process is refused (its PID may be reused).
    let err = catch_unwind(AssertUnwindSafe(|| t.signal("TERM"))).unwrap_err();
    assert!(panic_message(err).contains("already exited"));
}

#[tokio::test]
async fn tandem_async_conn_and_drop() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_tandem(bin_dir.path());
    let pid = {
        let t = Tandem::builder().bin(&bin).start();
        let mut c = t.conn().await;
        assert_eq!(ping(&mut c).await.unwrap(), "PONG");
        t.pid()
    };
    assert!(!process_alive(pid), "tandem {pid} leaked after drop");
}

#[test]
fn tandem_startup_failure_reports_log() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_tandem(bin_dir.path());

    let mut t = TandemBuilder::new().bin(&bin).arg("--fail").spawn();
    let status = t.wait_exit(Duration::from_secs(5)).expect("fails fast");
    assert_eq!(status.code(), Some(3));
    assert!(t.log().contains("failing on purpose"));

    let err = catch_unwind(|| TandemBuilder::new().bin(&bin).arg("--fail").start()).unwrap_err();
    let msg = panic_message(err);
    assert!(msg.contains("tandem did not become ready"), "{msg}");
    assert!(msg.contains("failing on purpose"), "{msg}");
}

#[test]
fn tandem_bin_resolution() {
    if std::env::var_os("TANDEM_BIN").is_none() && option_env!("CARGO_BIN_EXE_tandem").is_none() {
        let msg = panic_message(catch_unwind(tandem_bin).unwrap_err());
        assert!(msg.contains("TANDEM_BIN"), "{msg}");
    } else {
        assert!(!tandem_bin().as_os_str().is_empty());
    }
}
