//! The control plane against real servers: hot reload (file edit, ConfigMap symlink swap,
//! SIGHUP), rejected configs, the admin API with and without its token, API changes that
//! survive a restart, backend changes without dropped clients, and Prometheus metrics.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{http, RawConn, RedisServer, Tandem};

fn yaml(source: &RedisServer, target: &RedisServer, percent: f64, extra: &str) -> String {
    format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\ncutover:\n  percent: {percent}\n{extra}",
        source.url(),
        target.url()
    )
}

/// Which backend a fresh key lands on, written through the proxy.
fn served_by(c: &mut RawConn, source: &RedisServer, n: &mut u32) -> &'static str {
    *n += 1;
    let key = format!("probe:{n}");
    c.request(&["SET", &key, "1"]);
    if source.cli(&["EXISTS", &key]) == "1" {
        "source"
    } else {
        "target"
    }
}

fn wait_served_by(c: &mut RawConn, source: &RedisServer, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    support::wait_until(within, &format!("keys served by the {want}"), || {
        // At 0% or 100% every key is on one side: three in a row settle it.
        (0..3).all(|_| served_by(c, source, &mut n) == want)
    });
    started.elapsed()
}

#[test]
fn editing_the_file_moves_the_cutover_within_seconds() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &[]);
    let mut c = RawConn::connect(proxy.addr());
    let mut n = 0;
    assert_eq!(served_by(&mut c, &source, &mut n), "source");
    proxy.write_config(&yaml(&source, &target, 100.0, ""));
    let took = wait_served_by(&mut c, &source, "target", Duration::from_secs(3));
    eprintln!("file edit observed in routing after {took:?}");
    let status = http::status(proxy.admin_port());
    assert_eq!(status["last_change"]["source"], "file");
    assert!(status["last_change"]["what"].as_str().unwrap().contains("cutover 0 -> 100"), "{status}");
    // The client connection stayed open throughout.
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
}

/// Kubernetes mounts a ConfigMap as `proxy.yaml -> ..data/proxy.yaml`, `..data -> ..<timestamp>`
/// and updates it by swapping the `..data` symlink atomically.
fn configmap_write(dir: &Path, version: u32, content: &str) {
    let versioned = dir.join(format!("..2026_11_23_v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("proxy.yaml"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("proxy.yaml").exists() {
        std::os::unix::fs::symlink("..data/proxy.yaml", dir.join("proxy.yaml")).unwrap();
    }
}

#[test]
fn a_configmap_symlink_swap_is_picked_up() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    configmap_write(dir.path(), 1, &yaml(&source, &target, 0.0, ""));
    let config = dir.path().join("proxy.yaml");
    // A ConfigMap mount is read-only: API state lives on another volume.
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("tandem-state.json");
    let proxy = Tandem::start(&[
        "--config".to_string(),
        config.display().to_string(),
        "--state-file".to_string(),
        state.display().to_string(),
    ]);
    http::post(proxy.admin_port(), "/compare", r#"{"percent": 5}"#);
    assert!(std::fs::read_to_string(&state).unwrap().contains("\"compare\": 5"), "state written to --state-file");
    let mut c = RawConn::connect(proxy.addr());
    let mut n = 0;
    assert_eq!(served_by(&mut c, &source, &mut n), "source");
    configmap_write(dir.path(), 2, &yaml(&source, &target, 100.0, ""));
    let took = wait_served_by(&mut c, &source, "target", Duration::from_secs(3));
    eprintln!("ConfigMap swap observed in routing after {took:?}");
}

#[test]
fn sighup_reloads_even_without_polling() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let args = ["--reload-poll".to_string(), "1h".to_string(), "--no-watch".to_string()];
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &args);
    let mut c = RawConn::connect(proxy.addr());
    proxy.write_config(&yaml(&source, &target, 100.0, ""));
    // Neither a file event nor the poll can pick this up: only the signal.
    let mut n = 0;
    assert_eq!(served_by(&mut c, &source, &mut n), "source");
    proxy.signal("HUP");
    wait_served_by(&mut c, &source, "target", Duration::from_secs(3));
}

#[test]
fn an_invalid_file_is_rejected_whole_and_the_running_config_stays() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, "mirror:\n  mode: async\n"), &[]);
    let mut c = RawConn::connect(proxy.addr());
    // Broken YAML, and a file with a valid cutover next to an invalid field.
    proxy.write_config("backends: [this is: not valid\n");
    support::wait_until(Duration::from_secs(5), "reload error reported", || {
        !http::status(proxy.admin_port())["last_reload_error"].is_null()
    });
    proxy.write_config(&yaml(&source, &target, 100.0, "mirror:\n  mode: sometimes\n"));
    support::wait_until(Duration::from_secs(5), "second reload error reported", || {
        http::status(proxy.admin_port())["reloads"]["error"] == 2
    });
    let status = http::status(proxy.admin_port());
    assert!(status["last_reload_error"].as_str().unwrap().contains("mirror.mode"), "{status}");
    // Nothing of the rejected file was applied.
    let mut n = 0;
    assert_eq!(served_by(&mut c, &source, &mut n), "source");
    assert_eq!(status["mirror"]["mode"], "async");
    assert_eq!(status["cutover"]["percent"], 0.0);
    let metrics = http::get(proxy.admin_port(), "/metrics");
    assert!(metrics.contains("tandem_config_reloads_total{result=\"error\"} 2"), "{metrics}");
    // A good file clears the error.
    proxy.write_config(&yaml(&source, &target, 0.0, "mirror:\n  mode: sync\n"));
    support::wait_until(Duration::from_secs(5), "good reload", || {
        let s = http::status(proxy.admin_port());
        s["last_reload_error"].is_null() && s["mirror"]["mode"] == "sync"
    });
}

#[test]
fn admin_endpoints_require_the_token_when_one_is_set() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let proxy = Tandem::builder()
        .config(&yaml(&source, &target, 0.0, "admin:\n  token_env: TANDEM_TEST_ADMIN_TOKEN\n"))
        .env("TANDEM_TEST_ADMIN_TOKEN", "t0ken-value")
        .start();
    let port = proxy.admin_port();
    let gets = ["/status", "/metrics", "/readyz"];
    let posts = [
        ("/cutover", r#"{"percent": 10}"#),
        ("/rollback", "{}"),
        ("/mirror", r#"{"mode": "async"}"#),
        ("/compare", r#"{"percent": 5}"#),
    ];
    for path in gets {
        assert_eq!(http::request(port, "GET", path, None, None).0, 401, "GET {path} without token");
        assert_eq!(http::request(port, "GET", path, None, Some("wrong")).0, 401, "GET {path} wrong token");
        assert_eq!(http::request(port, "GET", path, None, Some("t0ken-value")).0, 200, "GET {path} with token");
    }
    for (path, body) in posts {
        assert_eq!(http::request(port, "POST", path, Some(body), None).0, 401, "POST {path} without token");
        let (code, out) = http::request(port, "POST", path, Some(body), Some("t0ken-value"));
        assert_eq!(code, 200, "POST {path}: {out}");
    }
    // Liveness never needs the token.
    assert_eq!(http::request(port, "GET", "/healthz", None, None).0, 200);
    // Bad bodies say what is wrong.
    let t = Some("t0ken-value");
    for (path, body, needle) in [
        ("/cutover", "{}", "percent"),
        ("/cutover", r#"{"percent": 150}"#, "within 0..100"),
        ("/cutover", "not json", "not valid JSON"),
        ("/mirror", r#"{"mode": "fast"}"#, "off"),
        ("/rollback", r#"{"to": 90}"#, "only lowers"),
    ] {
        let (code, out) = http::request(port, "POST", path, Some(body), t);
        assert_eq!(code, 400, "{path} {body}: {out}");
        assert!(out.contains(needle), "{path} {body}: {out}");
    }
    // The token never appears in what the API returns.
    let status = http::request(port, "GET", "/status", None, t).1;
    let metrics = http::request(port, "GET", "/metrics", None, t).1;
    assert!(!status.contains("t0ken-value") && !metrics.contains("t0ken-value"));
}

#[test]
fn an_admin_api_beyond_loopback_needs_a_token() {
    let source = RedisServer::start();
    let out = std::process::Command::new(support::tandem_bin())
        .args(["run", "--source", &source.url(), "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn api_changes_survive_a_restart_unless_the_file_changed_since() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let mut proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &[]);
    let (code, body) = http::post(proxy.admin_port(), "/cutover", r#"{"percent": 100}"#);
    assert_eq!(code, 200, "{body}");
    http::post(proxy.admin_port(), "/mirror", r#"{"mode": "async"}"#);
    proxy.restart();
    let status = http::status(proxy.admin_port());
    assert_eq!(status["cutover"]["percent"], 100.0, "{status}");
    assert_eq!(status["mirror"]["mode"], "async");
    assert_eq!(status["last_change"]["source"], "api");

    // Editing an unrelated field does not undo the API's cutover.
    proxy.write_config(&yaml(&source, &target, 0.0, "limits:\n  max_clients: 500\n"));
    support::wait_until(Duration::from_secs(5), "reload applied", || {
        http::status(proxy.admin_port())["last_change"]["source"] == "file"
    });
    assert_eq!(http::status(proxy.admin_port())["cutover"]["percent"], 100.0);

    // Changing the field in the file is the latest change: it wins, now and after a restart.
    proxy.write_config(&yaml(&source, &target, 25.0, "limits:\n  max_clients: 500\n"));
    support::wait_until(Duration::from_secs(5), "file cutover applied", || {
        http::status(proxy.admin_port())["cutover"]["percent"] == 25.0
    });
    proxy.restart();
    assert_eq!(http::status(proxy.admin_port())["cutover"]["percent"], 25.0);
    assert_eq!(http::status(proxy.admin_port())["mirror"]["mode"], "async", "the API's mirror change still holds");
}

#[test]
fn a_backend_url_change_moves_traffic_without_dropping_clients() {
    let (source, target, other) = (RedisServer::start(), RedisServer::start(), RedisServer::start());
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &[]);
    let mut c = RawConn::connect(proxy.addr());
    c.request(&["SET", "before", "1"]);
    assert_eq!(source.cli(&["GET", "before"]), "1");
    proxy.write_config(&format!(
        "backends:\n  source:\n    url: {}\n  target:\n    url: {}\n",
        other.url(),
        target.url()
    ));
    support::wait_until(Duration::from_secs(5), "new source in use", || {
        c.request(&["SET", "after", "1"]);
        other.cli(&["EXISTS", "after"]) == "1"
    });
    // Same client connection, still served.
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
    let status = http::status(proxy.admin_port());
    assert!(status["backends"][0]["addr"].as_str().unwrap().ends_with(&other.port().to_string()), "{status}");
}

#[test]
fn metrics_parse_as_prometheus_text_and_move() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, "mirror:\n  mode: async\n"), &[]);
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = http::get(proxy.admin_port(), "/metrics");
    let mut c = RawConn::connect(proxy.addr());
    for i in 0..50 {
        c.request(&["SET", &format!("k{i}"), "v"]);
    }
    support::wait_until(Duration::from_secs(5), "mirror applied", || {
        value(
            &http::get(proxy.admin_port(), "/metrics"),
            "tandem_mirror_writes_total{backend=\"target\",outcome=\"applied\"}",
        ) >= 50.0
    });
    let after = http::get(proxy.admin_port(), "/metrics");
    // Every line is a comment or `name{labels} value`.
    for line in after.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, v) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        assert!(name.starts_with("tandem_"), "{line}");
        v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}"));
    }
    assert!(value(&after, "tandem_commands_total") >= value(&before, "tandem_commands_total") + 50.0);
    assert_eq!(value(&after, "tandem_cutover_percent"), 0.0);
    assert!(value(&after, "tandem_commands_served_total{backend=\"source\"}") >= 50.0);
    assert_eq!(value(&after, "tandem_config_generation"), 1.0);
    // Per backend, role, command and outcome; latency per backend and role.
    let serving = r#"tandem_backend_commands_total{backend="source",command="set",outcome="ok",role="serving"}"#;
    let mirror = r#"tandem_backend_commands_total{backend="target",command="set",outcome="ok",role="mirror"}"#;
    assert_eq!(value(&after, serving), 50.0, "{after}");
    assert_eq!(value(&after, mirror), 50.0, "{after}");
    assert!(value(&after, r#"tandem_backend_latency_seconds_count{backend="source",role="serving"}"#) >= 50.0);
    c.request(&["FROBNICATE"]);
    let later = http::get(proxy.admin_port(), "/metrics");
    let other = r#"tandem_backend_commands_total{backend="source",command="other",outcome="error",role="serving"}"#;
    assert_eq!(value(&later, other), 1.0, "unknown commands share one label: {later}");
}

#[test]
fn cleanup_makes_the_target_the_only_backend_whatever_the_api_set() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let mut proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &[]);
    http::post(proxy.admin_port(), "/mirror", r#"{"mode": "async"}"#);
    let (code, body) = http::post(proxy.admin_port(), "/cutover", r#"{"percent": 100}"#);
    assert_eq!(code, 200, "{body}");
    let mut c = RawConn::connect(proxy.addr());
    // Cleanup: the target becomes the source, mirroring off, no target.
    proxy.write_config(&format!("backends:\n  source:\n    url: {}\n", target.url()));
    support::wait_until(Duration::from_secs(5), "cleanup applied", || {
        let s = http::status(proxy.admin_port());
        s["backends"].as_array().map(|b| b.len()) == Some(1) && s["mirror"]["mode"] == "off"
    });
    let s = http::status(proxy.admin_port());
    assert_eq!(s["cutover"]["percent"], 0.0, "{s}");
    c.request(&["SET", "after-cleanup", "1"]);
    assert_eq!(target.cli(&["GET", "after-cleanup"]), "1");
    assert_eq!(source.cli(&["EXISTS", "after-cleanup"]), "0", "nothing reaches the old store");
    // And a restart does not bring back the API's cutover or mirror.
    proxy.restart();
    let s = http::status(proxy.admin_port());
    assert_eq!((s["cutover"]["percent"].as_f64(), s["mirror"]["mode"].as_str()), (Some(0.0), Some("off")), "{s}");
}

/// Reading the config to check it for changes must not itself look like a change: an idle
/// proxy once spun on its own file-access events.
#[test]
fn an_idle_proxy_watching_its_config_uses_almost_no_cpu() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let proxy = Tandem::start_config(&yaml(&source, &target, 0.0, ""), &["--reload-poll".into(), "100ms".into()]);
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks();
    let started = std::time::Instant::now();
    support::wait_until(Duration::from_secs(5), "2 s of idling", || started.elapsed() >= Duration::from_secs(2));
    let used = cpu_ticks() - before;
    // 100 ticks per second; the spin used ~110 in this window, a quiet proxy 0-3.
    assert!(used < 30, "idle proxy used {used} CPU ticks in 2 s");
}

/// Threads of a running process named `tandem-worker` (the runtime's worker threads).
fn workers_of(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tandem-worker")
        .count()
}

#[test]
fn workers_sets_the_proxy_threads_and_a_reload_keeps_them_with_a_warning() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let extra = "mirror:\n  mode: async\nworkers: 1\n";
    let proxy = Tandem::start_config(&yaml(&source, &target, 50.0, extra), &[]);
    proxy.wait_for_log("workers=1", Duration::from_secs(5));
    // One event loop on the main thread: no worker threads at all.
    assert_eq!(workers_of(proxy.pid()), 0, "workers: 1 started worker threads");

    // Everything still works on one thread: pipelined writes served from both sides and
    // mirrored, a blocking pop on a dedicated connection woken by another client, the admin API.
    let mut c = RawConn::connect(proxy.addr());
    let mut pipeline = Vec::new();
    for i in 0..500 {
        pipeline.extend_from_slice(&support::encode_cmd(&["SET", &format!("w:{i}"), "v"]));
    }
    c.send(&pipeline);
    for _ in 0..500 {
        assert_eq!(c.read_reply(), b"+OK\r\n");
    }
    let mut blocked = RawConn::connect(proxy.addr());
    blocked.send_cmd(&["BLPOP", "w:queue", "10"]);
    support::wait_until(Duration::from_secs(5), "BLPOP blocked on a backend", || {
        [&source, &target].iter().any(|r| r.cli(&["INFO", "clients"]).contains("blocked_clients:1"))
    });
    assert_eq!(c.request(&["RPUSH", "w:queue", "job"]), b":1\r\n");
    assert_eq!(blocked.read_reply(), b"*2\r\n$7\r\nw:queue\r\n$3\r\njob\r\n");
    http::wait_mirror_idle(proxy.admin_port());
    for r in [&source, &target] {
        let keys = r.cli(&["KEYS", "w:[0-9]*"]);
        assert_eq!(keys.lines().count(), 500, "both sides hold every key written");
    }

    // A reload cannot change the thread count: it says so and keeps the running value.
    proxy.write_config(&yaml(&source, &target, 50.0, "mirror:\n  mode: async\nworkers: 4\n"));
    proxy.wait_for_log("read only at start", Duration::from_secs(5));
    let status = http::status(proxy.admin_port());
    let what = status["last_change"]["what"].as_str().unwrap_or_default();
    assert!(what.contains("workers kept until restart"), "{status}");
    assert_eq!(workers_of(proxy.pid()), 0, "worker threads started on reload");
    assert_eq!(c.request(&["PING"]), b"+PONG\r\n");
    // Compared with what runs, not with the previous file: a later reload still says so.
    proxy.write_config(&yaml(&source, &target, 60.0, "mirror:\n  mode: async\nworkers: 4\n"));
    support::wait_until(Duration::from_secs(5), "a second warning", || {
        proxy.log().matches("read only at start").count() >= 2
    });
    // Other start-only fields say so too: the repair journal is opened once, at start.
    let journal = proxy.dir().join("journal.jsonl");
    let extra = format!("mirror:\n  mode: async\n  journal: {}\nworkers: 4\n", journal.display());
    proxy.write_config(&yaml(&source, &target, 60.0, &extra));
    support::wait_until(Duration::from_secs(5), "a warning naming the journal", || {
        http::status(proxy.admin_port())["last_change"]["what"]
            .as_str()
            .is_some_and(|w| w.contains("workers, mirror.journal kept until restart"))
    });

    // The next start reads it.
    let proxy4 = Tandem::start_config(&yaml(&source, &target, 50.0, "workers: 4\n"), &[]);
    proxy4.wait_for_log("workers=4", Duration::from_secs(5));
    assert_eq!(workers_of(proxy4.pid()), 4, "workers: 4");
    let metrics = http::get(proxy4.admin_port(), "/metrics");
    assert!(metrics.contains("\ntandem_process_threads "), "{metrics}");
}
