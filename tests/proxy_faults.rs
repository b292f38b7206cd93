//! The proxy under faults: backends that are down, restart, go silent or cut
//! a reply short; clients that misbehave or exceed the configured limits;
//! and a graceful shutdown that must not lose what clients already sent.

mod support;

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use support::{encode_cmd, free_port, wait_until, RawConn, RedisServer, Relay, Tandem};

/// What every client sees when the source backend cannot answer.
const UNAVAILABLE: &str = "-ERR tandem: backend source unavailable:";

fn proxy_for(redis: &RedisServer) -> Tandem {
    Tandem::start(&["--source".to_string(), redis.url()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends `args` and returns the reply together with how long it took,
/// panicking with `what` if no reply comes within the connection timeout.
#[track_caller]
fn timed_request(c: &mut RawConn, args: &[&str], what: &str) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    c.send_cmd(args);
    match c.try_read_reply() {
        Ok(reply) => (reply, started.elapsed()),
        Err(e) => panic!("{what}: no reply to {args:?} after {:?}: {e}", started.elapsed()),
    }
}

/// Asserts that `args` is answered with the "backend unavailable" error
/// within `limit`.
#[track_caller]
fn assert_fails_fast(c: &mut RawConn, args: &[&str], limit: Duration, what: &str) {
    let (reply, took) = timed_request(c, args, what);
    assert!(reply.starts_with(UNAVAILABLE.as_bytes()), "{what}: expected {UNAVAILABLE:?}..., got {:?}", text(&reply));
    assert!(took < limit, "{what}: the error took {took:?} (limit {limit:?})");
}

/// Opens a fresh connection and checks it is served (PING -> PONG). Never
/// panics on I/O problems: a refused or closed connection is just `false`.
fn fresh_connection_served(addr: &str) -> bool {
    let Ok(mut c) = RawConn::try_connect(addr, Duration::from_secs(2)) else {
        return false;
    };
    if c.try_send(&encode_cmd(&["PING"])).is_err() {
        return false;
    }
    matches!(c.try_read_reply(), Ok(r) if r == b"+PONG\r\n")
}

/// Number of connected clients according to the admin `/status` endpoint.
fn client_count(admin_port: u16) -> u64 {
    let body = support::http::get(admin_port, "/status");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    v["clients"].as_u64().unwrap_or_else(|| panic!("/status has no clients count: {body}"))
}

// ---------------------------------------------------------------------------
// Backends that are down, restart, go silent or cut replies short.
// ---------------------------------------------------------------------------

#[test]
fn backend_down_at_start_gives_fast_errors() {
    // Nothing listens on this port.
    let port = free_port();
    let t = Tandem::start(&["--source".to_string(), format!("redis://127.0.0.1:{port}")]);
    let mut c = RawConn::connect(t.addr());
    for i in 0..5 {
        assert_fails_fast(&mut c, &["GET", "k"], Duration::from_secs(2), &format!("GET #{i} with no backend"));
    }
    // The client connection itself stays usable for proxy-local commands.
    assert_eq!(c.request(&["CLIENT", "GETNAME"]), b"$-1\r\n");
}

#[test]
fn backend_refusing_connections_then_accepting_them_again() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr());
    relay.refuse(true);
    let t = Tandem::start(&["--source".to_string(), relay.url()]);
    let mut c = RawConn::connect(t.addr());
    for i in 0..5 {
        assert_fails_fast(
            &mut c,
            &["SET", "k", "v"],
            Duration::from_secs(2),
            &format!("SET #{i} while the backend refuses"),
        );
    }
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0");

    relay.refuse(false);
    wait_until(Duration::from_secs(5), "SET to succeed once the backend accepts connections", || {
        c.request(&["SET", "k", "v"]) == b"+OK\r\n"
    });
    assert_eq!(c.request(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(redis.cli(&["GET", "k"]), "v");
}

#[test]
fn backend_restart_keeps_the_client_connected() {
    let mut redis = RedisServer::start();
    let t = proxy_for(&redis);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.request(&["SET", "before", "1"]), b"+OK\r\n");

    redis.stop();
    for i in 0..5 {
        assert_fails_fast(
            &mut c,
            &["GET", "before"],
            Duration::from_secs(2),
            &format!("GET #{i} while the backend is down"),
        );
    }

    redis.restart();
    // Same client connection: it was never dropped by the proxy.
    wait_until(Duration::from_secs(5), "SET to succeed after the backend restarted", || {
        c.request(&["SET", "after", "2"]) == b"+OK\r\n"
    });
    assert_eq!(c.request(&["GET", "after"]), b"$1\r\n2\r\n");
    // The restarted server has no persistence: the old key is gone, and the
    // proxy reports what the new server says.
    assert_eq!(c.request(&["GET", "before"]), b"$-1\r\n");
    assert_eq!(redis.cli(&["GET", "after"]), "2");
}

#[test]
fn blackholed_backend_times_out_instead_of_hanging() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr());
    let yaml = format!("backends:\n  source:\n    url: {}\n    command_timeout: 500ms\n", relay.url());
    let t = Tandem::start_config(&yaml, &[]);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.request(&["SET", "k", "v"]), b"+OK\r\n");

    relay.blackhole(true);
    // command_timeout (500 ms) plus a generous margin for a loaded machine.
    assert_fails_fast(&mut c, &["GET", "k"], Duration::from_secs(3), "GET to a blackholed backend");
    assert_fails_fast(&mut c, &["GET", "k"], Duration::from_secs(3), "second GET to a blackholed backend");

    relay.blackhole(false);
    wait_until(Duration::from_secs(10), "GET to succeed once the partition heals", || {
        c.request(&["GET", "k"]) == b"$1\r\nv\r\n"
    });
    assert_eq!(c.request(&["SET", "k2", "v2"]), b"+OK\r\n");
    assert_eq!(redis.cli(&["GET", "k2"]), "v2");
}

#[test]
fn connection_cut_mid_reply_gives_an_error_then_full_values() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr());
    // One pooled connection, so the cut certainly hits the one carrying our GET.
    let yaml = format!("backends:\n  source:\n    url: {}\n    pool_size: 1\n", relay.url());
    let t = Tandem::start_config(&yaml, &[]);
    // The COMMAND reply fetched at startup also flows through the relay: let
    // it finish before arming the cut.
    t.wait_for_log("command table refreshed", Duration::from_secs(10));

    let value: String = (0..100_000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let expected = format!("$100000\r\n{value}\r\n").into_bytes();
    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.request(&["SET", "big", &value]), b"+OK\r\n");
    assert_eq!(c.request(&["GET", "big"]), expected, "GET before the cut");

    let accepted_before = relay.accepted();
    relay.cut_after_reply_bytes(Some(1000));
    let (reply, _) = timed_request(&mut c, &["GET", "big"], "GET cut mid-reply");
    assert!(
        reply.starts_with(UNAVAILABLE.as_bytes()),
        "a reply cut short must become an error, got {} bytes: {:?}",
        reply.len(),
        text(&reply[..reply.len().min(200)])
    );

    // Right after the error the pool may still be waiting out its reconnect
    // backoff: then the next GET fails fast as well, but it must never get
    // a leftover of the truncated reply.
    let (reply, _) = timed_request(&mut c, &["GET", "big"], "GET right after the cut");
    assert!(
        reply == expected || reply.starts_with(UNAVAILABLE.as_bytes()),
        "GET right after the cut: got {} bytes starting {:?}",
        reply.len(),
        text(&reply[..reply.len().min(200)])
    );

    // The proxy reconnects on its own (a new relayed connection appears);
    // from then on, the next GET gets the whole value, not a leftover of the
    // truncated one.
    wait_until(Duration::from_secs(10), "the proxy to reconnect to the backend", || relay.accepted() > accepted_before);
    let (reply, _) = timed_request(&mut c, &["GET", "big"], "GET after the cut");
    assert!(
        reply == expected,
        "GET after the cut: got {} bytes starting {:?}",
        reply.len(),
        text(&reply[..reply.len().min(200)])
    );
    assert_eq!(c.request(&["STRLEN", "big"]), b":100000\r\n");
}

// ---------------------------------------------------------------------------
// Misbehaving clients and limits.
// ---------------------------------------------------------------------------

#[test]
fn a_client_sending_garbage_is_closed_without_affecting_others() {
    let redis = RedisServer::start();
    let t = proxy_for(&redis);
    let mut b = RawConn::connect(t.addr());
    assert_eq!(b.request(&["SET", "b", "1"]), b"+OK\r\n");
    // B is in the middle of a command while the others misbehave.
    b.send(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n");

    for garbage in [&b"*1\r\n:5\r\n"[..], b"*1\r\n$abc\r\n", b"*2\r\n+PING\r\n"] {
        let mut a = RawConn::connect(t.addr());
        a.send(garbage);
        let reply = a.read_reply();
        assert!(reply.starts_with(b"-ERR Protocol error"), "reply to {:?}: {:?}", text(garbage), text(&reply));
        let rest = a.read_until_closed();
        assert!(rest.is_empty(), "bytes after the error: {:?}", text(&rest));
    }

    b.send(b"$1\r\n2\r\n");
    assert_eq!(b.read_reply(), b"+OK\r\n");
    assert_eq!(b.request(&["GET", "b"]), b"$1\r\n2\r\n");
    assert_eq!(b.request(&["PING"]), b"+PONG\r\n");
}

#[test]
fn max_clients_refuses_extra_connections_until_one_leaves() {
    let redis = RedisServer::start();
    let yaml = format!("backends:\n  source:\n    url: {}\nlimits:\n  max_clients: 2\n", redis.url());
    let t = Tandem::start_config(&yaml, &[]);
    // The readiness probe was a client too; wait until it is gone.
    wait_until(Duration::from_secs(5), "no clients connected", || client_count(t.admin_port()) == 0);

    let mut a = RawConn::connect(t.addr());
    assert_eq!(a.request(&["PING"]), b"+PONG\r\n");
    let mut b = RawConn::connect(t.addr());
    assert_eq!(b.request(&["PING"]), b"+PONG\r\n");

    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.read_reply(), b"-ERR max number of clients reached\r\n");
    let rest = c.read_until_closed();
    assert!(rest.is_empty(), "{:?}", text(&rest));

    assert_eq!(a.request(&["SET", "a", "1"]), b"+OK\r\n");
    assert_eq!(b.request(&["GET", "a"]), b"$1\r\n1\r\n");

    drop(a);
    wait_until(Duration::from_secs(5), "a new client to be accepted after one left", || {
        fresh_connection_served(&t.addr())
    });
    // b kept its slot throughout.
    assert_eq!(b.request(&["PING"]), b"+PONG\r\n");
}

#[test]
fn max_bulk_len_refuses_a_bulk_header_before_its_payload() {
    let redis = RedisServer::start();
    let yaml = format!("backends:\n  source:\n    url: {}\nlimits:\n  max_bulk_len: 1kb\n", redis.url());
    let t = Tandem::start_config(&yaml, &[]);

    // Within the limit: fine.
    let mut ok = RawConn::connect(t.addr());
    let small = "x".repeat(1000);
    assert_eq!(ok.request(&["SET", "small", &small]), b"+OK\r\n");

    // Only the header of a 2000-byte value: refused before the payload.
    let mut c = RawConn::connect(t.addr());
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n");
    let reply = text(&c.read_reply());
    assert!(reply.starts_with("-ERR") && reply.contains("invalid bulk length"), "{reply:?}");
    let rest = c.read_until_closed();
    assert!(rest.is_empty(), "{:?}", text(&rest));
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0");

    assert_eq!(ok.request(&["STRLEN", "small"]), b":1000\r\n");
}

#[test]
fn max_array_len_refuses_a_long_command_header() {
    let redis = RedisServer::start();
    let yaml = format!("backends:\n  source:\n    url: {}\nlimits:\n  max_array_len: 4\n", redis.url());
    let t = Tandem::start_config(&yaml, &[]);

    let mut ok = RawConn::connect(t.addr());
    assert_eq!(ok.request(&["HSET", "h", "f", "v"]), b":1\r\n");

    let mut c = RawConn::connect(t.addr());
    c.send(b"*10\r\n");
    let reply = text(&c.read_reply());
    assert!(reply.starts_with("-ERR") && reply.contains("invalid multibulk length"), "{reply:?}");
    let rest = c.read_until_closed();
    assert!(rest.is_empty(), "{:?}", text(&rest));

    assert_eq!(ok.request(&["HGET", "h", "f"]), b"$1\r\nv\r\n");
}

#[test]
fn idle_timeout_closes_idle_clients_only() {
    let redis = RedisServer::start();
    let yaml = format!("backends:\n  source:\n    url: {}\nlimits:\n  idle_timeout: 1s\n", redis.url());
    let t = Tandem::start_config(&yaml, &[]);

    let mut busy = RawConn::connect(t.addr());
    let mut idle = RawConn::connect(t.addr());
    assert_eq!(idle.request(&["PING"]), b"+PONG\r\n");
    let idle_since = Instant::now();

    // A client that keeps talking (every 300 ms, for 2 s) is never idle for 1 s.
    let busy_thread = thread::spawn(move || {
        let started = Instant::now();
        let mut pings = 0;
        while started.elapsed() < Duration::from_secs(2) {
            assert_eq!(busy.request(&["PING"]), b"+PONG\r\n", "busy client, PING #{pings} at {:?}", started.elapsed());
            pings += 1;
            // Pacing the workload, not synchronising.
            thread::sleep(Duration::from_millis(300));
        }
        busy
    });

    idle.set_timeout(Duration::from_secs(5));
    let rest = idle.read_until_closed();
    let idle_for = idle_since.elapsed();
    assert!(rest.is_empty(), "{:?}", text(&rest));
    assert!(idle_for >= Duration::from_millis(800), "closed after only {idle_for:?} of a 1 s idle_timeout");

    let mut busy = busy_thread.join().expect("busy client thread");
    assert_eq!(busy.request(&["PING"]), b"+PONG\r\n");
}

// ---------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------

#[test]
fn sigterm_drains_pipelined_commands_then_exits_cleanly() {
    const N: usize = 5000;
    let redis = RedisServer::start();
    // A little backend latency (20 ms each way) keeps the proxy busy with
    // the pipeline when SIGTERM arrives, however fast the machine: with
    // limits.max_pipeline (1024) commands in flight it stops reading the
    // client until replies come back, so most of the 5000 commands are still
    // unread by the proxy (though sent by the client) at that moment.
    let relay = Relay::start(redis.addr());
    let mut t = Tandem::start(&["--source".to_string(), relay.url(), "--drain-timeout".to_string(), "10s".to_string()]);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
    relay.set_delay(Duration::from_millis(20));

    let mut pipeline = Vec::new();
    for i in 0..N {
        pipeline.extend(encode_cmd(&["SET", &format!("key:{i}"), &format!("{i}")]));
    }
    c.send(&pipeline);
    let signalled = Instant::now();
    t.signal("TERM");

    for i in 0..N {
        match c.try_read_reply() {
            Ok(r) if r == b"+OK\r\n" => {}
            Ok(r) => panic!("reply #{i} of {N} after SIGTERM: {:?}", text(&r)),
            Err(e) => panic!(
                "only {i} of {N} replies arrived after SIGTERM ({e}); the rest of what the \
                 client sent was dropped"
            ),
        }
    }
    let rest = c.read_until_closed();
    assert!(rest.is_empty(), "bytes after the last reply: {:?}", text(&rest));

    let status = t
        .wait_exit(Duration::from_secs(10).saturating_sub(signalled.elapsed()))
        .unwrap_or_else(|| panic!("tandem still running {:?} after SIGTERM (drain timeout 10 s)", signalled.elapsed()));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_eq!(redis.cli(&["DBSIZE"]), N.to_string());

    match RawConn::try_connect(t.addr(), Duration::from_secs(2)) {
        Ok(_) => panic!("a connection to {} was accepted after exit", t.addr()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
    }
}

#[test]
fn sigterm_waits_for_a_blocked_command_to_finish() {
    let redis = RedisServer::start();
    let mut t = Tandem::start(&["--source".to_string(), redis.url(), "--drain-timeout".to_string(), "10s".to_string()]);
    let mut c = RawConn::connect(t.addr());
    c.send_cmd(&["BLPOP", "q", "2"]);
    let sent = Instant::now();
    // Wait until the backend really holds the client blocked.
    wait_until(Duration::from_secs(5), "BLPOP to block on the backend", || {
        redis.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    t.signal("TERM");
    let signalled = Instant::now();

    // The blocked command runs its course (2 s, nothing pushed) and its
    // reply is delivered before the connection closes.
    assert_eq!(c.read_reply(), b"*-1\r\n", "BLPOP reply during the drain");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "BLPOP answered after only {:?}: it was cut short",
        sent.elapsed()
    );
    let rest = c.read_until_closed();
    assert!(rest.is_empty(), "{:?}", text(&rest));
    let status = t
        .wait_exit(Duration::from_secs(10).saturating_sub(signalled.elapsed()))
        .unwrap_or_else(|| panic!("tandem still running {:?} after SIGTERM", signalled.elapsed()));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    match RawConn::try_connect(t.addr(), Duration::from_secs(2)) {
        Ok(_) => panic!("a connection to {} was accepted after exit", t.addr()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
    }
}
