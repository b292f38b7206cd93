//! The core proxy against a real redis-server: transparent forwarding, pipelining and
//! ordering, RESP3, and the redis-cli / redis-benchmark tools.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{RawConn, RedisServer, Tandem};

fn proxy_for(redis: &RedisServer) -> Tandem {
    Tandem::start(&["--source".to_string(), redis.url()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_backend_and_replies_come_back() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = proxy.conn().await;

    let _: () = c.set("greeting", "hello").await.unwrap();
    let v: String = c.get("greeting").await.unwrap();
    assert_eq!(v, "hello");
    let n: i64 = c.incr("counter", 5).await.unwrap();
    assert_eq!(n, 5);
    let _: () = c.rpush("list", &["a", "b", "c"]).await.unwrap();
    let l: Vec<String> = c.lrange("list", 0, -1).await.unwrap();
    assert_eq!(l, ["a", "b", "c"]);
    let missing: Option<String> = c.get("nope").await.unwrap();
    assert_eq!(missing, None);

    // The backend really holds what went through the proxy.
    assert_eq!(redis.cli(&["GET", "greeting"]), "hello");
    assert_eq!(redis.cli(&["LLEN", "list"]), "3");
}

#[test]
fn replies_are_byte_identical_to_direct_redis() {
    // Two empty servers fed the same script: one directly, one through the proxy.
    let direct_server = RedisServer::start();
    let proxied_server = RedisServer::start();
    let proxy = proxy_for(&proxied_server);
    let mut direct = RawConn::connect(direct_server.addr());
    let mut via = RawConn::connect(proxy.addr());
    let script: &[&[&str]] = &[
        &["SET", "k", "v"],
        &["GET", "k"],
        &["GET", "missing"],
        &["HSET", "h", "f1", "1", "f2", "2"],
        &["HGETALL", "h"],
        &["INCRBYFLOAT", "f", "1.5"],
        &["LPUSH", "l", "x"],
        &["TYPE", "l"],
        &["GET", "l"],
        &["EXISTS", "k", "missing"],
        &["NOSUCHCOMMAND", "x"],
        &["SET", "k"],
        &["PING"],
        &["ECHO", "hi"],
        &["ZADD", "z", "1.5", "a", "2", "b"],
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
    ];
    for cmd in script {
        let a = direct.request(cmd);
        let b = via.request(cmd);
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b), "reply to {cmd:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_commands_keep_their_order() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = proxy.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("INCR").arg("seq");
        if i % 1000 == 0 {
            pipe.cmd("SET").arg(format!("mark:{i}")).arg(i);
        }
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut c).await.unwrap();
    let counts: Vec<i64> = replies
        .into_iter()
        .filter_map(|v| match v {
            redis::Value::Int(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(counts, (1..=10_000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_the_pool_without_mixing_replies() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut tasks = Vec::new();
    for client in 0..50 {
        let c = proxy.client();
        tasks.push(tokio::spawn(async move {
            let mut c = c.get_multiplexed_async_connection().await.unwrap();
            for i in 0..200 {
                let key = format!("c{client}:k{i}");
                let value = format!("v{client}-{i}");
                let _: () = c.set(&key, &value).await.unwrap();
                let got: String = c.get(&key).await.unwrap();
                assert_eq!(got, value);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "10000");
}

#[test]
fn resp3_after_hello_3_and_back() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["HSET", "h", "a", "1"]);
    assert!(c.request(&["HGETALL", "h"]).starts_with(b"*2\r\n"), "RESP2 array before HELLO");

    let hello = c.request(&["HELLO", "3"]);
    assert!(hello.starts_with(b"%7\r\n"), "HELLO 3 answers with a map: {}", String::from_utf8_lossy(&hello));
    assert!(String::from_utf8_lossy(&hello).contains("proto\r\n:3"));
    assert_eq!(c.request(&["HGETALL", "h"]), b"%1\r\n$1\r\na\r\n$1\r\n1\r\n");
    assert_eq!(c.request(&["GET", "missing"]), b"_\r\n");

    let hello2 = c.request(&["HELLO", "2"]);
    assert!(hello2.starts_with(b"*14\r\n"));
    assert_eq!(c.request(&["GET", "missing"]), b"$-1\r\n");
    assert!(c.request(&["HELLO", "4"]).starts_with(b"-NOPROTO"));
}

#[test]
fn redis_cli_dash_3_sees_resp3_types() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    redis.cli(&["HSET", "h", "field", "value"]);
    // --no-raw makes redis-cli show types as on a terminal: RESP3 maps print as `k => v`.
    let out = support::redis_cli_output(proxy.port(), None, &["-3", "--no-raw", "HGETALL", "h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1# \"field\" => \"value\""), "{text}");
    let out = support::redis_cli_output(proxy.port(), None, &["-3", "--no-raw", "GET", "missing"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "(nil)");
}

#[test]
fn inline_commands_work_like_telnet() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    c.send(b"SET inline \"two words\"\r\nGET inline\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"$9\r\ntwo words\r\n");
}

#[test]
fn unknown_commands_are_forwarded() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let mut c = RawConn::connect(proxy.addr());
    let r = String::from_utf8_lossy(&c.request(&["FROBNICATE", "x"])).to_string();
    assert!(r.starts_with("-ERR unknown command 'FROBNICATE'"), "{r}");
}

#[test]
fn command_table_is_refreshed_from_the_backend() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    proxy.wait_for_log("command table refreshed", Duration::from_secs(10));
    let metrics = support::http::get(proxy.admin_port(), "/metrics");
    assert!(metrics.contains("tandem_command_table_refresh_total{backend=\"source\",result=\"ok\"} 1"), "{metrics}");
}

#[test]
fn redis_benchmark_through_the_proxy_has_no_errors() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let started = Instant::now();
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["-t", "set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,lrange,mset"])
        .args(["-n", "5000", "-P", "16", "-c", "20", "-q"])
        .output()
        .expect("redis-benchmark runs");
    assert!(out.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.to_lowercase().contains("error"), "{text}");
    for test in ["SET:", "GET:", "INCR:", "LPUSH:", "SPOP:", "LRANGE_100", "MSET"] {
        assert!(text.contains(test), "{test} missing from: {text}");
    }
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// A pipeline arriving in one read is sent to the backend as one job: whatever ends the read
/// early (QUIT, a switch to a dedicated connection for a blocking pop) must still send the
/// commands before it, in order.
#[test]
fn one_read_pipelines_run_in_order_across_quit_and_a_blocking_pop() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis);
    let encode = |cmds: &[&[&str]]| cmds.iter().flat_map(|c| support::encode_cmd(c)).collect::<Vec<u8>>();

    // The pop can only find the item if the push ran first, and only returns at all if the
    // push was sent before the client moved to its dedicated connection.
    let mut c = RawConn::connect(proxy.addr());
    c.send(&encode(&[&["RPUSH", "queue", "item"], &["BLPOP", "queue", "2"], &["INCR", "n"], &["INCR", "n"]]));
    assert_eq!(c.read_reply(), b":1\r\n");
    assert_eq!(c.read_reply(), b"*2\r\n$5\r\nqueue\r\n$4\r\nitem\r\n");
    assert_eq!(c.read_reply(), b":1\r\n");
    assert_eq!(c.read_reply(), b":2\r\n");

    // Commands before a QUIT in the same read still run, and are answered before the close.
    let mut c = RawConn::connect(proxy.addr());
    c.send(&encode(&[&["SET", "a", "1"], &["INCR", "a"], &["QUIT"], &["INCR", "a"]]));
    assert_eq!(c.read_until_closed(), b"+OK\r\n:2\r\n+OK\r\n");
    assert_eq!(redis.cli(&["GET", "a"]), "2");
}
