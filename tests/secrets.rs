//! No secret ever leaves tandem: known backend passwords, a client user's password and the
//! admin token are planted, every kind of output is provoked (status, metrics, logs at debug
//! level, error replies, a failed backend login, a rejected reload, `tandem check`, `tandem ctl`,
//! the migration tools' reports), and each is searched for the secrets.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{http, output_with_timeout, redis_cli_output, tandem_bin, wait_until, RawConn, RedisServer, Tandem};

const SOURCE_PASS: &str = "src-S3cret-0a1b2c";
const TARGET_PASS: &str = "tgt-S3cret-3d4e5f";
const USER_PASS: &str = "usr-S3cret-6a7b8c";
const ADMIN_TOKEN: &str = "adm-S3cret-9d0e1f";

fn assert_clean(what: &str, text: &str) {
    for secret in [SOURCE_PASS, TARGET_PASS, USER_PASS, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{what} contains a secret ({secret}):\n{text}");
    }
}

fn yaml(source: &RedisServer, target: &RedisServer, target_pass_env: &str) -> String {
    format!(
        "log:\n  level: debug\nadmin:\n  token_env: T_ADMIN_TOKEN\nbackends:\n  source:\n    url: {}\n    password_env: T_SOURCE_PASS\n  \
         target:\n    url: {}\n    password_env: {target_pass_env}\n    connect_timeout: 300ms\n\
         mirror:\n  mode: async\ncompare:\n  percent: 100\nauth:\n  users:\n    - name: app\n      password_env: T_USER_PASS\n",
        source.url(),
        target.url()
    )
}

#[test]
fn secrets_appear_in_no_output() {
    let source = RedisServer::start_with(&["--requirepass", SOURCE_PASS]);
    let target = RedisServer::start_with(&["--requirepass", TARGET_PASS]);
    let proxy = Tandem::builder()
        .config(&yaml(&source, &target, "T_TARGET_PASS"))
        .env("T_SOURCE_PASS", SOURCE_PASS)
        .env("T_TARGET_PASS", TARGET_PASS)
        .env("T_USER_PASS", USER_PASS)
        .env("T_ADMIN_TOKEN", ADMIN_TOKEN)
        .start();

    // Client traffic: a wrong password, then the right one, writes, reads, errors.
    let mut c = RawConn::connect(proxy.addr());
    let mut replies = String::new();
    for cmd in [
        vec!["GET", "k"],
        vec!["AUTH", "app", "not-it"],
        vec!["AUTH", "app", USER_PASS],
        vec!["SET", "k", "v"],
        vec!["GET", "k"],
        vec!["CONFIG", "GET", "requirepass"],
        vec!["CLIENT", "LIST"],
        vec!["HELLO", "3", "AUTH", "app", USER_PASS],
        vec!["INCR", "k"],
        vec!["MULTI"],
        vec!["CONFIG", "GET", "requirepass"],
        vec!["EXEC"],
    ] {
        replies.push_str(&String::from_utf8_lossy(&c.request(&cmd)));
    }
    assert_clean("client replies", &replies);

    // The admin API, with the token.
    let (code, status) = http::request(proxy.admin_port(), "GET", "/status", None, Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{status}");
    assert_clean("/status", &status);
    let (code, metrics) = http::request(proxy.admin_port(), "GET", "/metrics", None, Some(ADMIN_TOKEN));
    assert_eq!(code, 200);
    assert_clean("/metrics", &metrics);
    let (code, refused) = http::request(proxy.admin_port(), "GET", "/status", None, Some("wrong-token"));
    assert_eq!(code, 401);
    assert_clean("a 401 reply", &refused);

    // `tandem ctl status`, with the token from the environment.
    let mut cmd = Command::new(tandem_bin());
    cmd.args(["ctl", "--admin", &proxy.admin_addr(), "--token-env", "T_ADMIN_TOKEN", "status"])
        .env("T_ADMIN_TOKEN", ADMIN_TOKEN);
    let out = output_with_timeout(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clean(
        "tandem ctl status",
        &format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    );

    // A reload with a wrong target password: the target login fails (and is logged).
    proxy.write_config(&yaml(&source, &target, "T_WRONG_PASS"));
    wait_until(Duration::from_secs(10), "the reload to be rejected or the target login to fail", || {
        let log = proxy.log();
        log.contains("T_WRONG_PASS")
    });
    let mut c2 = RawConn::connect(proxy.addr());
    c2.request(&["AUTH", "app", USER_PASS]);
    assert_clean("replies after the reload", &String::from_utf8_lossy(&c2.request(&["SET", "k2", "v2"])));

    // `tandem check` of the config, and the migration tools.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml(&source, &target, "T_TARGET_PASS")).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(tandem_bin());
        cmd.args(args)
            .env("T_SOURCE_PASS", SOURCE_PASS)
            .env("T_TARGET_PASS", TARGET_PASS)
            .env("T_USER_PASS", USER_PASS)
            .env("T_ADMIN_TOKEN", ADMIN_TOKEN);
        let out = output_with_timeout(cmd, Duration::from_secs(30));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let cfg = config.to_str().unwrap();
    assert_clean("tandem check", &run(&["check", "--config", cfg]));
    let cp = dir.path().join("cp.json");
    assert_clean("tandem backfill", &run(&["backfill", "--config", cfg, "--checkpoint", cp.to_str().unwrap()]));
    assert_clean("the backfill checkpoint", &std::fs::read_to_string(&cp).unwrap_or_default());
    let report = dir.path().join("report.json");
    assert_clean("tandem verify", &run(&["verify", "--config", cfg, "--report", report.to_str().unwrap()]));
    assert_clean("the verify report", &std::fs::read_to_string(&report).unwrap_or_default());
    // A backend that refuses the password: the error names the backend, not the password.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, yaml(&source, &target, "T_SOURCE_PASS")).unwrap();
    let out = run(&["verify", "--config", bad.to_str().unwrap()]);
    assert!(out.contains("target"), "{out}");
    assert_clean("a failed backend login", &out);

    // Finally the whole log, written at debug level.
    assert_clean("the proxy log", &proxy.log());
}

/// Rotating a backend password: the server accepts the new one (existing connections stay
/// logged in), the password file is rewritten and tandem reloads; new backend connections use
/// the new password, and a client connected throughout never sees an error.
#[test]
fn backend_password_rotation_drops_no_client() {
    let redis = RedisServer::start_with(&["--requirepass", SOURCE_PASS]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("source-password");
    std::fs::write(&secret, format!("{SOURCE_PASS}\n")).unwrap();
    let yaml = format!(
        "backends:\n  source:\n    url: {}\n    password_file: {}\n    connect_timeout: 1s\n",
        redis.url(),
        secret.display()
    );
    let proxy = Tandem::start_config(&yaml, &[]);
    let generation = || http::status(proxy.admin_port())["generation"].as_u64().unwrap_or(0);
    let before = generation();

    // A client writing throughout the rotation.
    let addr = proxy.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = RawConn::connect(addr);
            let (mut ok, mut errors) = (0u32, Vec::new());
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let r = c.request(&["INCR", "counter"]);
                if r.starts_with(b":") {
                    ok += 1;
                } else {
                    errors.push(String::from_utf8_lossy(&r).into_owned());
                }
            }
            (ok, errors)
        })
    };

    // Rotate: the server takes the new password, then the file changes and tandem reloads.
    redis.cli(&["CONFIG", "SET", "requirepass", TARGET_PASS]);
    std::fs::write(&secret, format!("{TARGET_PASS}\n")).unwrap();
    proxy.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload after SIGHUP", || generation() > before);
    // Old backend connections are gone for good: only the new password opens new ones.
    let cli = |args: &[&str]| {
        let out = redis_cli_output(redis.port(), Some(TARGET_PASS), args);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    let mut fresh = RawConn::connect(proxy.addr());
    assert_eq!(fresh.request(&["SET", "after", "rotation"]), b"+OK\r\n");
    assert_eq!(cli(&["GET", "after"]), "rotation");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors) = writer.join().unwrap();
    assert!(ok > 0, "the writer made no progress");
    // A command in flight on a killed backend connection may fail once; none may fail for
    // lack of the right password.
    assert!(errors.iter().all(|e| !e.contains("WRONGPASS") && !e.contains("NOAUTH")), "{errors:?}");
    assert!(errors.len() <= 2, "the writer saw {} errors: {errors:?}", errors.len());
    assert_clean("the proxy log", &proxy.log());
}
