//! The `tandem` command line as an operator meets it: `tandem check`, startup
//! errors, JSON logs, and backend credentials that never leak.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{tandem_bin, wait_until, RawConn, RedisServer, Tandem, TandemBuilder};

/// `tandem check --config PATH`, bounded to 10 s; returns (exit code, stdout + stderr).
fn tandem_check(path: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(tandem_bin());
    cmd.arg("check").arg("--config").arg(path);
    let out = support::output_with_timeout(cmd, Duration::from_secs(10));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn check_reports_every_problem_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "backends:\n  source:\n    url: redis://127.0.0.1:6379\n  target:\n    url: redis://127.0.0.1:63799x\n\
         limits:\n  max_clientz: 10\ncutover:\n  percent: 150\n",
    )
    .unwrap();
    let started = Instant::now();
    let (code, text) = tandem_check(&path);
    assert!(started.elapsed() < Duration::from_secs(10), "check took {:?}", started.elapsed());
    assert_eq!(code, Some(1), "exit code of `tandem check`; output:\n{text}");

    let has_line = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(has_line("backends.target.url: invalid port \"63799x\""), "bad port not reported at its path:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("limits.max_clientz") && l.contains("unknown field")),
        "unknown nested field not reported at its path:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("cutover.percent:") && l.contains("150")),
        "out-of-range percent not reported at its path:\n{text}"
    );
    assert!(text.contains("3 problem"), "expected exactly three problems to be counted:\n{text}");
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml");
    let (code, text) = tandem_check(&path);
    assert_eq!(code, Some(0), "`tandem check` on proxy.yaml; output:\n{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn run_with_an_invalid_source_url_fails_fast_naming_the_flag() {
    let started = Instant::now();
    let mut t = Tandem::spawn(&["--source".to_string(), "redis://127.0.0.1:63799x".to_string()]);
    let status = t
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("tandem kept running with a bad --source:\n{}", t.log()));
    let elapsed = started.elapsed();
    assert!(!status.success(), "exit status {status}; log:\n{}", t.log());
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?} to reject the flag");
    let log = t.log();
    assert!(
        log.lines().any(|l| l.contains("--source") && l.contains("invalid port")),
        "error does not name --source:\n{log}"
    );
    // It never got as far as listening.
    assert!(RawConn::try_connect(t.addr(), Duration::from_secs(1)).is_err());
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let redis = RedisServer::start();
    let mut t = Tandem::start(&["--source".to_string(), redis.url(), "--log-format".to_string(), "json".to_string()]);
    t.wait_for_log("tandem started", Duration::from_secs(10));
    t.wait_for_log("command table refreshed", Duration::from_secs(10));
    // Something logged at runtime too: a client's protocol error.
    let mut c = RawConn::connect(t.addr());
    c.send(b"*1\r\n:5\r\n");
    assert!(c.read_reply().starts_with(b"-ERR Protocol error"));
    c.read_until_closed();
    t.wait_for_log("protocol error", Duration::from_secs(10));
    // And the shutdown lines, so the log is complete when we read it.
    t.signal("TERM");
    let status = t.wait_exit(Duration::from_secs(15)).expect("tandem exits after SIGTERM");
    assert!(status.success(), "exit status {status}");

    let log = t.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}\n--- log ---\n{log}"));
        let obj = v.as_object().unwrap_or_else(|| panic!("log line is not a JSON object: {line}"));
        assert!(obj.get("level").is_some_and(|l| l.is_string()), "no \"level\" in: {line}");
        let message = obj.get("fields").and_then(|f| f.get("message")).or_else(|| obj.get("message"));
        assert!(message.is_some_and(|m| m.is_string()), "no message in: {line}");
    }
    assert!(lines >= 4, "expected several log lines, got {lines}:\n{log}");
    assert!(log.contains("tandem started") && log.contains("tandem stopped"));
}

#[test]
fn backend_password_comes_from_env_and_never_leaks() {
    const SECRET: &str = "s3cret";
    let redis = RedisServer::start_with(&["--requirepass", SECRET]);
    let yaml =
        format!("log:\n  level: debug\nbackends:\n  source:\n    url: {}\n    password_env: SRC_PASS\n", redis.url());
    let t = TandemBuilder::new().config(&yaml).env("SRC_PASS", SECRET).start();

    // The client never sends AUTH: the proxy authenticates on its behalf.
    let mut c = RawConn::connect(t.addr());
    assert_eq!(c.request(&["SET", "k", "through-proxy"]), b"+OK\r\n");
    assert_eq!(c.request(&["GET", "k"]), b"$13\r\nthrough-proxy\r\n");
    assert_eq!(redis.cli(&["GET", "k"]), "through-proxy");
    // A blocking command takes a dedicated connection, which must authenticate too.
    assert_eq!(c.request(&["LPUSH", "q", "x"]), b":1\r\n");
    assert_eq!(c.request(&["BLPOP", "q", "1"]), b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");

    t.wait_for_log("command table refreshed", Duration::from_secs(10));
    let (code, status) = support::http::request(t.admin_port(), "GET", "/status", None, None);
    assert_eq!(code, 200, "{status}");
    assert!(status.contains("\"up\": true"), "{status}");
    let (code, metrics) = support::http::request(t.admin_port(), "GET", "/metrics", None, None);
    assert_eq!(code, 200, "{metrics}");
    let readyz = support::http::get(t.admin_port(), "/readyz");
    let log = t.log();
    for (what, text) in [("tandem log", &log), ("/status", &status), ("/metrics", &metrics), ("/readyz", &readyz)] {
        assert!(!text.contains(SECRET), "{what} leaks the password:\n{text}");
    }
    // The config file the proxy read names the variable, not the value.
    let config = std::fs::read_to_string(t.config_path()).unwrap();
    assert!(!config.contains(SECRET));

    // Sanity: without the variable the proxy cannot authenticate, so the
    // success above really came from SRC_PASS.
    let without = TandemBuilder::new().config(&yaml).spawn();
    let mut without = without;
    let exited = without.wait_exit(Duration::from_secs(10));
    if exited.is_none() {
        // Still running: then it must at least not serve commands.
        without.wait_ready();
        let mut c = RawConn::connect(without.addr());
        wait_until(Duration::from_secs(5), "an error reply without SRC_PASS", || {
            c.request(&["GET", "k"]).starts_with(b"-")
        });
    } else {
        let log = without.log();
        assert!(log.contains("SRC_PASS"), "{log}");
        assert!(!log.contains(SECRET), "{log}");
    }
}

#[test]
fn a_log_pipe_nobody_reads_never_stops_the_proxy() {
    // Every client closed for a protocol error logs a line. With stderr a pipe that is
    // never read, a proxy writing its log synchronously stops once the pipe's 64 KiB are
    // full (about 400 lines); tandem's log writer drops lines instead.
    let redis = RedisServer::start();
    let (port, admin) = (support::free_port(), support::free_port());
    /// Stops the proxy by PID even when an assertion fails first.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Stop(
        Command::new(tandem_bin())
            .args(["run", "--source", &redis.url(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn tandem"),
    );
    let addr = format!("127.0.0.1:{port}");
    support::wait_until(Duration::from_secs(10), "tandem listening", || {
        support::probe_ping(&addr, Duration::from_millis(200)).is_some()
    });
    for _ in 0..3000 {
        let mut c = RawConn::connect(&addr);
        c.send(b"*1\r\n:5\r\n");
        assert!(c.read_reply().starts_with(b"-ERR Protocol error"));
    }
    let mut c = RawConn::connect(&addr);
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
}
