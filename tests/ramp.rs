//! The cutover ramp with guardrails against real servers.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{http, RawConn, RedisServer, Tandem};

/// Steady traffic over many keys (so both sides serve some), until `stop` or 60 s.
fn traffic(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = RawConn::connect(addr);
        c.set_timeout(Duration::from_secs(5));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            i += 1;
            let key = format!("session:{}", i % 500);
            if c.try_send(&support::encode_cmd(&["SET", &key, "v"])).is_err() || c.try_read_reply().is_err() {
                return;
            }
        }
    })
}

fn config(source: &RedisServer, target: &RedisServer, ramp: &str) -> String {
    format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\n    connect_timeout: 200ms\n    command_timeout: 500ms\nmirror:\n  mode: async\n{ramp}",
        source.url(),
        target.url()
    )
}

#[test]
fn the_ramp_walks_its_steps_while_healthy() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let ramp = "ramp:\n  steps: [25, 50, 100]\n  hold: 1s\n  guardrails:\n    window: 5s\n    min_requests: 10\n    max_p99_ratio: 1000\n";
    let proxy = Tandem::start_config(&config(&source, &target, ramp), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(proxy.addr(), stop.clone());
    support::wait_until(Duration::from_secs(20), "ramp done at 100%", || {
        let s = http::status(proxy.admin_port());
        s["cutover"]["percent"] == 100.0 && s["ramp"]["state"] == "done"
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let s = http::status(proxy.admin_port());
    assert_eq!(s["last_change"]["source"], "ramp", "{s}");
    let metrics = http::get(proxy.admin_port(), "/metrics");
    assert!(metrics.contains("tandem_ramp_advances_total 3"), "{metrics}");
}

#[test]
fn a_guardrail_trips_when_the_target_fails_and_the_cutover_goes_back() {
    let (source, mut target) = (RedisServer::start(), RedisServer::start());
    let ramp = "ramp:\n  steps: [50, 100]\n  hold: 10m\n  guardrails:\n    window: 3s\n    max_target_error_ratio: 0.05\n    min_requests: 20\n    max_p99_ratio: 1000\n";
    let proxy = Tandem::start_config(&config(&source, &target, ramp), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(proxy.addr(), stop.clone());
    support::wait_until(Duration::from_secs(10), "first step", || {
        http::status(proxy.admin_port())["cutover"]["percent"] == 50.0
    });
    target.stop();
    support::wait_until(Duration::from_secs(20), "automatic rollback", || {
        http::status(proxy.admin_port())["cutover"]["percent"] == 0.0
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let s = http::status(proxy.admin_port());
    assert_eq!(s["ramp"]["state"], "rolled_back", "{s}");
    let reason = s["ramp"]["last_rollback"]["reason"].as_str().unwrap();
    assert!(reason.contains("target error ratio"), "{reason}");
    assert!(s["last_change"]["what"].as_str().unwrap().starts_with("guardrail rollback 50 -> 0"), "{s}");
    assert!(http::get(proxy.admin_port(), "/metrics").contains("tandem_guardrail_rollbacks_total 1"));
    // Every write since the rollback is served by the source, which has them all.
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["SET", "after-rollback", "1"]), b"+OK\r\n");
    assert_eq!(source.cli(&["GET", "after-rollback"]), "1");
}

#[test]
fn an_operator_change_pauses_the_ramp() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let ramp = "ramp:\n  steps: [25, 50, 100]\n  hold: 1s\n  guardrails:\n    window: 5s\n    min_requests: 10\n    max_p99_ratio: 1000\n";
    let proxy = Tandem::start_config(&config(&source, &target, ramp), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(proxy.addr(), stop.clone());
    support::wait_until(Duration::from_secs(10), "first step", || {
        http::status(proxy.admin_port())["cutover"]["percent"] == 25.0
    });
    let (code, body) = http::post(proxy.admin_port(), "/cutover", r#"{"percent": 10}"#);
    assert_eq!(code, 200, "{body}");
    let s = http::status(proxy.admin_port());
    assert_eq!(s["ramp"]["state"], "paused", "{s}");
    // Well past the hold, the operator's value still stands.
    let waited = std::time::Instant::now();
    support::wait_until(Duration::from_secs(10), "3 s of traffic", || waited.elapsed() > Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(http::status(proxy.admin_port())["cutover"]["percent"], 10.0);
}
