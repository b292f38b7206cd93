//! Per-connection state through the proxy, against a real redis-server: transactions,
//! WATCH, blocking commands, Pub/Sub (RESP2 and RESP3), SELECT, client names, the proxy's
//! own users, and refused admin commands.

mod support;

use std::time::{Duration, Instant};

use support::{RawConn, RedisServer, Tandem};

fn proxy_for(redis: &RedisServer) -> Tandem {
    Tandem::start(&["--source".to_string(), redis.url()])
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn multi_exec_runs_as_one_transaction() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["MULTI"]), b"+OK\r\n");
    assert_eq!(c.request(&["SET", "a", "1"]), b"+QUEUED\r\n");
    assert_eq!(c.request(&["INCR", "a"]), b"+QUEUED\r\n");
    // Nothing ran yet: another client does not see `a`.
    assert_eq!(redis.cli(&["EXISTS", "a"]), "0");
    assert_eq!(c.request(&["EXEC"]), b"*2\r\n+OK\r\n:2\r\n");
    assert_eq!(redis.cli(&["GET", "a"]), "2");
    // After EXEC the client is back on the shared pool and still works.
    assert_eq!(c.request(&["GET", "a"]), b"$1\r\n2\r\n");

    assert_eq!(c.request(&["MULTI"]), b"+OK\r\n");
    assert_eq!(c.request(&["SET", "a", "99"]), b"+QUEUED\r\n");
    assert_eq!(c.request(&["DISCARD"]), b"+OK\r\n");
    assert_eq!(redis.cli(&["GET", "a"]), "2");
}

#[test]
fn watch_detects_a_concurrent_write() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    let mut other = RawConn::connect(proxy.addr());
    c.request(&["SET", "balance", "10"]);
    assert_eq!(c.request(&["WATCH", "balance"]), b"+OK\r\n");
    other.request(&["SET", "balance", "20"]);
    c.request(&["MULTI"]);
    c.request(&["SET", "balance", "0"]);
    // The watched key changed: EXEC aborts with a null reply.
    assert_eq!(c.request(&["EXEC"]), b"*-1\r\n");
    assert_eq!(redis.cli(&["GET", "balance"]), "20");

    // Without interference the same transaction goes through.
    c.request(&["WATCH", "balance"]);
    c.request(&["MULTI"]);
    c.request(&["SET", "balance", "0"]);
    assert_eq!(c.request(&["EXEC"]), b"*1\r\n+OK\r\n");
}

#[test]
fn pipelined_transaction_keeps_order_across_connections() {
    // SET on the shared pool, then MULTI on a dedicated connection, all in one write: the
    // transaction must see the SET that was sent before it.
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    let mut batch = Vec::new();
    for cmd in
        [&["SET", "k", "before"][..], &["MULTI"], &["GET", "k"], &["EXEC"], &["SET", "k", "after"], &["GET", "k"]]
    {
        batch.extend(support::encode_cmd(cmd));
    }
    c.send(&batch);
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"+QUEUED\r\n");
    assert_eq!(c.read_reply(), b"*1\r\n$6\r\nbefore\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"$5\r\nafter\r\n");
}

#[test]
fn refused_command_inside_multi_aborts_the_transaction() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["MULTI"]);
    c.request(&["SET", "x", "1"]);
    assert!(text(c.request(&["CONFIG", "SET", "maxmemory", "1"])).starts_with("-ERR tandem: command 'CONFIG SET'"));
    assert!(text(c.request(&["EXEC"])).starts_with("-EXECABORT"));
    assert_eq!(redis.cli(&["EXISTS", "x"]), "0");
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
}

#[test]
fn blocking_command_waits_without_blocking_other_clients() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let addr = proxy.addr();
    let waiter = std::thread::spawn(move || {
        let mut c = RawConn::connect(addr);
        c.set_timeout(Duration::from_secs(10));
        let started = Instant::now();
        let reply = c.request(&["BLPOP", "jobs", "5"]);
        (reply, started.elapsed(), c.request(&["PING"]))
    });
    // While BLPOP waits, other clients are served at once by the shared pool.
    let mut other = RawConn::connect(proxy.addr());
    support::wait_until(Duration::from_secs(5), "BLPOP client blocked on the server", || {
        redis.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    let t = Instant::now();
    for i in 0..100 {
        other.request(&["SET", &format!("k{i}"), "v"]);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "shared pool stalled behind a blocked client");
    other.request(&["RPUSH", "jobs", "job-1"]);
    let (reply, waited, ping) = waiter.join().unwrap();
    assert_eq!(reply, b"*2\r\n$4\r\njobs\r\n$5\r\njob-1\r\n");
    assert!(waited < Duration::from_secs(5), "BLPOP returned on push, not on timeout");
    assert_eq!(ping, b"+PONG\r\n");
}

#[test]
fn blocking_stream_read_and_timeouts() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    // A timed-out BLPOP returns null after its timeout, like Redis.
    assert_eq!(c.request(&["BLPOP", "empty", "0.2"]), b"*-1\r\n");
    let addr = proxy.addr();
    let reader = std::thread::spawn(move || {
        let mut c = RawConn::connect(addr);
        c.set_timeout(Duration::from_secs(10));
        c.request(&["XREAD", "BLOCK", "5000", "STREAMS", "events", "$"])
    });
    support::wait_until(Duration::from_secs(5), "XREAD blocked", || {
        redis.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    c.request(&["XADD", "events", "1-1", "kind", "login"]);
    let got = text(reader.join().unwrap());
    assert!(got.contains("events") && got.contains("login"), "{got}");
}

#[test]
fn pubsub_delivers_messages_in_resp2() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut sub = RawConn::connect(proxy.addr());
    assert_eq!(sub.request(&["SUBSCRIBE", "news"]), b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    let mut publisher = RawConn::connect(proxy.addr());
    assert_eq!(publisher.request(&["PUBLISH", "news", "hello"]), b":1\r\n");
    assert_eq!(sub.read_reply(), b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    // Pattern subscriptions and PING in subscribed mode.
    let psub = sub.request(&["PSUBSCRIBE", "n*"]);
    assert!(text(psub).contains("psubscribe"));
    assert_eq!(publisher.request(&["PUBLISH", "news", "again"]), b":2\r\n");
    let a = text(sub.read_reply());
    let b = text(sub.read_reply());
    assert!(a.contains("again") && b.contains("again"), "{a} {b}");
    assert!(text(sub.request(&["PING"])).contains("pong"));
}

#[test]
fn pubsub_pushes_in_resp3() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut sub = RawConn::connect(proxy.addr());
    sub.request(&["HELLO", "3"]);
    assert_eq!(sub.request(&["SUBSCRIBE", "ch"]), b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    RawConn::connect(proxy.addr()).request(&["PUBLISH", "ch", "m1"]);
    assert_eq!(sub.read_reply(), b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm1\r\n");
    // RESP3 allows ordinary commands on a subscribed connection.
    assert_eq!(sub.request(&["SET", "k", "v"]), b"+OK\r\n");
}

#[test]
fn select_moves_the_client_to_another_database() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["SELECT", "2"]), b"+OK\r\n");
    c.request(&["SET", "only-in-2", "yes"]);
    assert_eq!(redis.cli(&["-n", "2", "GET", "only-in-2"]), "yes");
    assert_eq!(redis.cli(&["-n", "0", "EXISTS", "only-in-2"]), "0");
    // A pipelined burst in db 2 stays in db 2.
    for i in 0..50 {
        c.request(&["SET", &format!("k{i}"), "v"]);
    }
    assert_eq!(redis.cli(&["-n", "2", "DBSIZE"]), "51");
    // An out-of-range index gets the backend's error and the session stays in db 2.
    assert!(text(c.request(&["SELECT", "99"])).starts_with("-ERR DB index is out of range"));
    assert_eq!(c.request(&["GET", "only-in-2"]), b"$3\r\nyes\r\n");
    assert_eq!(c.request(&["SELECT", "0"]), b"+OK\r\n");
    assert_eq!(c.request(&["GET", "only-in-2"]), b"$-1\r\n");
    assert!(text(c.request(&["SELECT", "x"])).starts_with("-ERR value is not an integer"));
}

#[test]
fn client_name_is_kept_and_replayed_on_dedicated_connections() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["CLIENT", "GETNAME"]), b"$-1\r\n");
    assert_eq!(c.request(&["CLIENT", "SETNAME", "checkout-7"]), b"+OK\r\n");
    assert_eq!(c.request(&["CLIENT", "GETNAME"]), b"$10\r\ncheckout-7\r\n");
    assert!(text(c.request(&["CLIENT", "SETNAME", "has space"])).starts_with("-ERR Client names cannot"));
    // Another database needs a dedicated connection, which carries the name.
    assert!(!redis.cli(&["CLIENT", "LIST"]).contains("name=checkout-7"));
    c.request(&["SELECT", "1"]);
    assert!(redis.cli(&["CLIENT", "LIST"]).contains("name=checkout-7"));
    c.request(&["SELECT", "0"]);
    // CLIENT ID / INFO / LIST stay available through the proxy.
    assert!(text(c.request(&["CLIENT", "ID"])).starts_with(':'));
    assert!(text(c.request(&["CLIENT", "LIST"])).contains("cmd="));
    assert!(text(c.request(&["CLIENT", "REPLY", "OFF"])).starts_with("-ERR tandem: CLIENT REPLY is not supported"));
}

#[test]
fn dangerous_commands_are_refused_unless_allowed() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    for cmd in [
        &["CONFIG", "SET", "maxmemory", "1"][..],
        &["CONFIG", "REWRITE"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["MONITOR"],
        &["CLUSTER", "INFO"],
        &["BGSAVE"],
        &["FAILOVER"],
    ] {
        let r = text(c.request(cmd));
        let shown = format!("-ERR tandem: command '{}", cmd[0]);
        assert!(r.starts_with(&shown), "{cmd:?} → {r}");
        assert!(r.contains("allow_commands"), "the error says how to allow it: {r}");
    }
    // Read-only admin commands stay available.
    assert!(text(c.request(&["CONFIG", "GET", "maxmemory"])).contains("maxmemory"));
    assert!(text(c.request(&["INFO", "server"])).contains("redis_version"));
    assert!(text(c.request(&["COMMAND", "COUNT"])).starts_with(':'));
    assert_eq!(redis.cli(&["CONFIG", "GET", "maxmemory"]).lines().last(), Some("0"));

    // allow_commands lets an operator permit one.
    let yaml = format!("backends:\n  source:\n    url: {}\nallow_commands: [\"config set\"]\n", redis.url());
    let allowed = Tandem::start_config(&yaml, &[]);
    let mut c = RawConn::connect(allowed.addr());
    assert_eq!(c.request(&["CONFIG", "SET", "maxmemory-samples", "7"]), b"+OK\r\n");
    assert!(text(c.request(&["DEBUG", "SLEEP", "0"])).starts_with("-ERR tandem: command 'DEBUG"));
}

#[test]
fn proxy_users_authenticate_clients_in_resp2_and_resp3() {
    let redis = RedisServer::start();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\nauth:\n  users:\n    - name: app\n      password_env: TANDEM_TEST_APP_PASS\n    - name: reader\n      password_env: TANDEM_TEST_READER_PASS\n      read_only: true\n",
        redis.url()
    );
    let proxy = Tandem::builder()
        .config(&yaml)
        .env("TANDEM_TEST_APP_PASS", "app-pass")
        .env("TANDEM_TEST_READER_PASS", "reader-pass")
        .start();

    let mut c = RawConn::connect(proxy.addr());
    assert!(text(c.request(&["GET", "k"])).starts_with("-NOAUTH"));
    assert!(text(c.request(&["AUTH", "app", "wrong"])).starts_with("-WRONGPASS"));
    assert!(text(c.request(&["GET", "k"])).starts_with("-NOAUTH"));
    assert_eq!(c.request(&["AUTH", "app", "app-pass"]), b"+OK\r\n");
    assert_eq!(c.request(&["SET", "k", "v"]), b"+OK\r\n");

    // HELLO 3 AUTH authenticates and switches protocol in one step.
    let mut r3 = RawConn::connect(proxy.addr());
    assert!(text(r3.request(&["HELLO", "3"])).starts_with("-NOAUTH"));
    let hello = r3.request(&["HELLO", "3", "AUTH", "app", "app-pass", "SETNAME", "svc"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", text(hello));
    assert_eq!(r3.request(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(r3.request(&["CLIENT", "GETNAME"]), b"$3\r\nsvc\r\n");

    // A read-only user reads but cannot write.
    let mut ro = RawConn::connect(proxy.addr());
    assert_eq!(ro.request(&["AUTH", "reader", "reader-pass"]), b"+OK\r\n");
    assert_eq!(ro.request(&["GET", "k"]), b"$1\r\nv\r\n");
    assert!(text(ro.request(&["SET", "k", "x"])).starts_with("-NOPERM"));
    assert!(text(ro.request(&["DEL", "k"])).starts_with("-NOPERM"));
    assert_eq!(redis.cli(&["GET", "k"]), "v");

    // RESET forgets the authentication.
    assert_eq!(c.request(&["RESET"]), b"+RESET\r\n");
    assert!(text(c.request(&["GET", "k"])).starts_with("-NOAUTH"));

    // Repeated failures on one connection are answered more and more slowly (the first
    // failure on `c` was above): 100 ms, then 200 ms. Another connection is not slowed.
    for min_ms in [100, 200] {
        let asked = std::time::Instant::now();
        assert!(text(c.request(&["AUTH", "app", "guess"])).starts_with("-WRONGPASS"));
        let took = asked.elapsed();
        assert!(took >= std::time::Duration::from_millis(min_ms), "failure answered after {took:?}");
    }
    let mut fresh = RawConn::connect(proxy.addr());
    let asked = std::time::Instant::now();
    assert!(text(fresh.request(&["AUTH", "app", "typo"])).starts_with("-WRONGPASS"));
    assert!(asked.elapsed() < std::time::Duration::from_millis(100), "a first failure is not delayed");
    assert_eq!(fresh.request(&["AUTH", "app", "app-pass"]), b"+OK\r\n");
}

#[test]
fn auth_without_configured_users_is_an_error_not_a_passthrough() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    assert!(text(c.request(&["AUTH", "whatever"])).starts_with("-ERR AUTH <password> called without any password"));
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
}

#[test]
fn client_tracking_invalidations_reach_a_resp3_client() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["HELLO", "3"]);
    assert_eq!(c.request(&["CLIENT", "TRACKING", "ON"]), b"+OK\r\n");
    c.request(&["SET", "cached", "1"]);
    assert_eq!(c.request(&["GET", "cached"]), b"$1\r\n1\r\n");
    RawConn::connect(proxy.addr()).request(&["SET", "cached", "2"]);
    let push = text(c.read_reply());
    assert!(push.starts_with(">2") && push.contains("invalidate") && push.contains("cached"), "{push}");
}

#[test]
fn a_blocking_pop_left_by_a_departed_client_does_not_eat_the_next_item() {
    let redis = RedisServer::start();
    let yaml = format!("backends:\n  source:\n    url: {}\n    command_timeout: 300ms\n", redis.url());
    let proxy = Tandem::start_config(&yaml, &[]);
    {
        let mut c = RawConn::connect(proxy.addr());
        c.send(&support::encode_cmd(&["BLPOP", "jobs", "0"]));
        support::wait_until(Duration::from_secs(5), "BLPOP blocked on the server", || {
            redis.cli(&["INFO", "clients"]).contains("blocked_clients:1")
        });
    } // the client disconnects while blocked
    support::wait_until(Duration::from_secs(5), "orphaned BLPOP cancelled", || {
        redis.cli(&["INFO", "clients"]).contains("blocked_clients:0")
    });
    redis.cli(&["RPUSH", "jobs", "precious"]);
    assert_eq!(redis.cli(&["LRANGE", "jobs", "0", "-1"]), "precious", "nobody consumed the item");
    // Dedicated connections of departed clients are closed, not leaked.
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["SELECT", "3"]);
    drop(c);
    support::wait_until(Duration::from_secs(5), "dedicated connection closed", || {
        !redis.cli(&["CLIENT", "LIST"]).contains("db=3")
    });
}

#[test]
fn a_lost_watch_aborts_the_transaction() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["CLIENT", "SETNAME", "watcher"]);
    c.request(&["SET", "k", "1"]);
    assert_eq!(c.request(&["WATCH", "k"]), b"+OK\r\n");
    // The backend connection holding the WATCH dies (a failover, a network cut).
    let list = redis.cli(&["CLIENT", "LIST"]);
    let id = list
        .lines()
        .find(|l| l.contains("name=watcher"))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .expect("the dedicated connection carries the client's name")
        .to_string();
    redis.cli(&["CLIENT", "KILL", "ID", &id]);
    redis.cli(&["SET", "k", "changed-meanwhile"]);
    c.request(&["MULTI"]);
    c.request(&["SET", "k", "overwrite"]);
    assert_eq!(c.request(&["EXEC"]), b"*-1\r\n", "EXEC aborts: the watch cannot be honoured");
    assert_eq!(redis.cli(&["GET", "k"]), "changed-meanwhile");
}
