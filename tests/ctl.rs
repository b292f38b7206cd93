//! `tandem ctl` as an operator uses it: the real binary against a tiny fake admin server that
//! answers canned HTTP responses and records what it was sent. A fake rather than a real proxy
//! so these tests pin the client's side of the contract (request line, token, JSON body, output
//! and exit status) without needing Redis, and keep working while the server evolves.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

/// What the fake server saw of one request.
#[derive(Debug)]
struct Seen {
    request_line: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("request body {:?} is not JSON: {e}", self.body))
    }
}

/// A fake admin API: answers each connection with the next canned response (raw HTTP bytes).
struct Fake {
    addr: String,
    seen: mpsc::Receiver<Seen>,
}

impl Fake {
    fn start(responses: Vec<Vec<u8>>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake admin server");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut stream, _)) = listener.accept() else { return };
                let Some(request) = read_request(&mut stream) else { continue };
                let _ = stream.write_all(&response);
                let _ = stream.flush();
                let _ = tx.send(request);
            }
        });
        Fake { addr, seen }
    }

    /// One canned JSON response.
    fn json(status: &str, body: &str) -> Fake {
        Fake::start(vec![response(status, "application/json", body)])
    }

    fn request(&self) -> Seen {
        self.seen.recv_timeout(Duration::from_secs(10)).expect("the fake admin server received no request")
    }

    fn no_request(&self) {
        if let Ok(seen) = self.seen.recv_timeout(Duration::from_millis(300)) {
            panic!("expected no request, got {seen:?}");
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ndate: Mon, 23 Nov 2026 11:40:00 GMT\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut authorization = None;
    let mut content_type = None;
    let mut length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_string();
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value),
            "content-type" => content_type = Some(value),
            "content-length" => length = value.parse().ok()?,
            _ => {}
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { request_line, authorization, content_type, body: String::from_utf8_lossy(&body).to_string() })
}

/// `tandem ctl --admin ADDR ARGS...` with no token in the environment.
fn ctl(addr: &str, args: &[&str]) -> Output {
    ctl_env(addr, args, &[])
}

fn ctl_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("ctl").arg("--admin").arg(addr).args(args).env_remove("TANDEM_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tandem ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "exit status\nstdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(haystack.contains(needle), "expected {needle:?} in:\n{haystack}");
}

const FULL_STATUS: &str = r#"{
  "generation": 3,
  "last_change": {"source": "api", "at": "2026-11-23T11:40:00Z", "what": "cutover 10 -> 50"},
  "last_reload_error": "backends.target.url: invalid address",
  "reloads": {"ok": 2, "error": 1},
  "clients": 12,
  "backends": [
    {"name": "source", "addr": "127.0.0.1:6379", "up": true, "last_error": null, "server_version": "7.0.15"},
    {"name": "target", "addr": "127.0.0.1:6380", "up": false, "last_error": "connect refused", "server_version": null}
  ],
  "cutover": {"percent": 50.0, "moved_slots": 8192, "flip_in_progress": null},
  "mirror": {"mode": "async", "towards": {
    "target": {"enqueued": 100, "applied": 98, "error": 0, "diverged": 0, "dropped": 2, "in_flight": 0, "queue_depth": 0}
  }},
  "ramp": {"steps": [5, 25, 50, 100], "step": 1, "state": "running", "next_at": "2026-11-23T11:45:00Z",
           "last_rollback": {"at": "2026-11-23T11:30:00Z", "to": 25.0, "reason": "target error ratio 0.12 > 0.05"}},
  "compare": {"percent": 12.5}
}"#;

#[test]
fn status_prints_a_summary_of_the_key_facts() {
    let fake = Fake::json("200 OK", FULL_STATUS);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "GET /status HTTP/1.1");
    assert_eq!(seen.authorization, None, "no token configured, none sent");

    let text = stdout(&out);
    assert_contains(
        &text,
        &format!(
            "tandem at {} — config generation 3, last change: cutover 10 -> 50 (api, 2026-11-23T11:40:00Z)",
            fake.addr
        ),
    );
    assert_contains(&text, "clients:   12");
    assert_contains(
        &text,
        "backends:  source 127.0.0.1:6379 up (redis 7.0.15) | target 127.0.0.1:6380 DOWN: connect refused",
    );
    assert_contains(&text, "cutover:   50% of slots on the target (8192/16384)");
    assert_contains(
        &text,
        "mirror:    async   to target: enqueued 100 applied 98 error 0 diverged 0 dropped 2 in flight 0 (queue 0)",
    );
    assert_contains(&text, "ramp:      step 2/4 (25%), running, next at 2026-11-23T11:45:00Z");
    assert_contains(&text, "last rollback at 2026-11-23T11:30:00Z to 25%: target error ratio 0.12 > 0.05");
    assert_contains(&text, "compare:   12.5% of reads compared");
    assert_contains(&text, "reloads:   ok 2, error 1 — last error: backends.target.url: invalid address");
    assert!(stderr(&out).is_empty(), "stderr: {}", stderr(&out));
}

#[test]
fn status_tolerates_missing_and_unexpected_fields() {
    // An older server: no generation, last_change, reloads, ramp or compare; extra fields.
    let old = r#"{"clients": 0, "commands": 5, "command_table_size": 240,
        "backends": [{"name": "source", "addr": "127.0.0.1:6379", "up": true, "last_error": null, "server_version": null}],
        "cutover": {"percent": 0.0, "moved_slots": 0, "flip_in_progress": 12},
        "mirror": {"mode": "off", "towards": {}}}"#;
    let fake = Fake::json("200 OK", old);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert_contains(&text, "config generation -, last change: -");
    assert_contains(&text, "backends:  source 127.0.0.1:6379 up\n");
    assert_contains(&text, "cutover:   0% of slots on the target (0/16384), flip in progress (12 slots moving)");
    assert_contains(&text, "mirror:    off\n");
    assert_contains(&text, "ramp:      -");
    assert_contains(&text, "reloads:   -");

    // A bare object, and a ramp that is explicitly off.
    let fake = Fake::json("200 OK", r#"{"ramp": null, "backends": [{}], "mirror": {"towards": {"target": {}}}}"#);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert_contains(&text, "clients:   -");
    assert_contains(&text, "backends:  - - -");
    assert_contains(&text, "cutover:   -");
    assert_contains(&text, "mirror:    -       to target: enqueued - applied -");
    assert_contains(&text, "ramp:      none");
    assert_contains(&text, "compare:   -");
}

#[test]
fn status_reads_a_chunked_response() {
    let body = r#"{"generation": 7, "clients": 4}"#;
    let (a, b) = body.split_at(10);
    let raw = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let fake = Fake::start(vec![raw.into_bytes()]);
    let out = ctl(&fake.addr, &["--json", "status"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), format!("{body}\n"));
}

#[test]
fn json_prints_the_body_verbatim() {
    let fake = Fake::json("200 OK", FULL_STATUS);
    let out = ctl(&fake.addr, &["--json", "status"]);
    assert_exit(&out, 0);
    // The body has no trailing newline; ctl adds exactly one and changes nothing else.
    assert_eq!(stdout(&out), format!("{FULL_STATUS}\n"));

    let body =
        "{\"from_percent\": 0.0, \"to_percent\": 5.0, \"moved_slots\": 820, \"waited_ms\": 1, \"drained\": true}\n";
    let fake = Fake::json("200 OK", body);
    let out = ctl(&fake.addr, &["--json", "cutover", "5"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), body);
}

#[test]
fn cutover_posts_the_percentage_and_prints_the_report() {
    let fake = Fake::json(
        "200 OK",
        r#"{"from_percent": 10.0, "to_percent": 50.0, "moved_slots": 8192, "waited_ms": 12, "drained": true}"#,
    );
    let out = ctl(&fake.addr, &["cutover", "50"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "POST /cutover HTTP/1.1");
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.json(), serde_json::json!({"percent": 50.0}));
    assert_eq!(stdout(&out), "cutover 10% -> 50%: 8192 slots moved, waited 12 ms (backlog drained)\n");
    assert!(stderr(&out).is_empty(), "stderr: {}", stderr(&out));
}

#[test]
fn cutover_warns_when_the_backlog_did_not_drain() {
    let fake = Fake::json(
        "200 OK",
        r#"{"from_percent": 0.0, "to_percent": 0.5, "moved_slots": 1, "waited_ms": 5000, "drained": false}"#,
    );
    let out = ctl(&fake.addr, &["cutover", "0.5"]);
    assert_exit(&out, 0);
    assert_eq!(fake.request().json(), serde_json::json!({"percent": 0.5}));
    assert_contains(&stdout(&out), "cutover 0% -> 0.5%: 1 slot moved, waited 5000 ms (backlog NOT drained)");
    assert_contains(&stderr(&out), "WARNING: the mirror backlog did not drain within cutover.flip_timeout");
}

#[test]
fn out_of_range_percentages_are_rejected_before_sending() {
    for args in [&["cutover", "150"][..], &["cutover", "--", "-1"], &["cutover", "NaN"], &["rollback", "--to", "101"]] {
        let fake = Fake::json("200 OK", "{}");
        let out = ctl(&fake.addr, args);
        assert_exit(&out, 2);
        assert_contains(&stderr(&out), "percent must be within 0..100");
        fake.no_request();
    }
    // Not a number at all: clap rejects it.
    let fake = Fake::json("200 OK", "{}");
    let out = ctl(&fake.addr, &["cutover", "half"]);
    assert_exit(&out, 2);
    fake.no_request();
}

#[test]
fn rollback_without_and_with_to() {
    let report = r#"{"from_percent": 50.0, "to_percent": 0.0, "moved_slots": 8192, "waited_ms": 3, "drained": true}"#;
    let fake = Fake::json("200 OK", report);
    let out = ctl(&fake.addr, &["rollback"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "POST /rollback HTTP/1.1");
    assert_eq!(seen.json(), serde_json::json!({}));
    assert_eq!(stdout(&out), "rollback 50% -> 0%: 8192 slots moved, waited 3 ms (backlog drained)\n");

    let report = r#"{"from_percent": 50.0, "to_percent": 25.0, "moved_slots": 4096, "waited_ms": 0, "drained": true}"#;
    let fake = Fake::json("200 OK", report);
    let out = ctl(&fake.addr, &["rollback", "--to", "25"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "POST /rollback HTTP/1.1");
    assert_eq!(seen.json(), serde_json::json!({"to": 25.0}));
    assert_contains(&stdout(&out), "rollback 50% -> 25%: 4096 slots moved");
}

#[test]
fn mirror_sets_the_mode_and_clap_rejects_unknown_modes() {
    let fake = Fake::json("200 OK", r#"{"mode": "sync"}"#);
    let out = ctl(&fake.addr, &["mirror", "sync"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "POST /mirror HTTP/1.1");
    assert_eq!(seen.json(), serde_json::json!({"mode": "sync"}));
    assert_eq!(stdout(&out), "mirror mode: sync\n");

    let fake = Fake::json("200 OK", r#"{"mode": "sync"}"#);
    let out = ctl(&fake.addr, &["mirror", "sometimes"]);
    assert_exit(&out, 2);
    assert_contains(&stderr(&out), "invalid value 'sometimes'");
    fake.no_request();
}

#[test]
fn compare_posts_the_percentage_and_reports_not_implemented() {
    let fake = Fake::json("200 OK", r#"{"percent": 10.0}"#);
    let out = ctl(&fake.addr, &["compare", "10"]);
    assert_exit(&out, 0);
    let seen = fake.request();
    assert_eq!(seen.request_line, "POST /compare HTTP/1.1");
    assert_eq!(seen.json(), serde_json::json!({"percent": 10.0}));
    assert_eq!(stdout(&out), "compare: 10% of reads\n");

    let fake = Fake::json("501 Not Implemented", r#"{"error": "read comparison is not implemented yet"}"#);
    let out = ctl(&fake.addr, &["compare", "10"]);
    assert_exit(&out, 1);
    assert_eq!(
        stderr(&out),
        "tandem ctl: POST /compare: 501 Not Implemented: read comparison is not implemented yet\n"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn token_from_token_env_is_sent_as_bearer() {
    let fake = Fake::json("200 OK", "{}");
    let out = ctl_env(&fake.addr, &["--token-env", "MY_ADMIN_TOKEN", "status"], &[("MY_ADMIN_TOKEN", "s3cret-tok")]);
    assert_exit(&out, 0);
    assert_eq!(fake.request().authorization.as_deref(), Some("Bearer s3cret-tok"));
    assert!(!stdout(&out).contains("s3cret") && !stderr(&out).contains("s3cret"));

    // TANDEM_ADMIN_TOKEN is the fallback; --token-env wins over it.
    let fake = Fake::json("200 OK", "{}");
    let out = ctl_env(&fake.addr, &["status"], &[("TANDEM_ADMIN_TOKEN", "default-tok")]);
    assert_exit(&out, 0);
    assert_eq!(fake.request().authorization.as_deref(), Some("Bearer default-tok"));
    let fake = Fake::json("200 OK", "{}");
    let out = ctl_env(
        &fake.addr,
        &["--token-env", "MY_ADMIN_TOKEN", "status"],
        &[("TANDEM_ADMIN_TOKEN", "default-tok"), ("MY_ADMIN_TOKEN", "explicit-tok")],
    );
    assert_exit(&out, 0);
    assert_eq!(fake.request().authorization.as_deref(), Some("Bearer explicit-tok"));

    // A named variable that is not set is a usage error, not an unauthenticated request.
    let fake = Fake::json("200 OK", "{}");
    let out = ctl(&fake.addr, &["--token-env", "TANDEM_CTL_TEST_UNSET_VAR", "status"]);
    assert_exit(&out, 2);
    assert_contains(&stderr(&out), "environment variable TANDEM_CTL_TEST_UNSET_VAR (--token-env) is not set");
    fake.no_request();
}

#[test]
fn token_from_file_has_its_trailing_newline_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "file-tok\n").expect("write token");
    let fake = Fake::json("200 OK", "{}");
    let out = ctl(&fake.addr, &["--token-file", path.to_str().expect("utf-8 path"), "status"]);
    assert_exit(&out, 0);
    assert_eq!(fake.request().authorization.as_deref(), Some("Bearer file-tok"));

    let out = ctl(&fake.addr, &["--token-file", path.to_str().expect("utf-8 path"), "--token-env", "X", "status"]);
    assert_exit(&out, 2);

    let missing = dir.path().join("missing");
    let out = ctl(&fake.addr, &["--token-file", missing.to_str().expect("utf-8 path"), "status"]);
    assert_exit(&out, 2);
    assert_contains(&stderr(&out), "cannot read token file");
}

#[test]
fn config_gives_the_address_and_the_token() {
    let fake = Fake::json("200 OK", r#"{"clients": 1}"#);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: \"{}\"\n  token_env: CTL_TEST_CONFIG_TOKEN\nbackends:\n  source:\n    url: redis://127.0.0.1:6379\n",
            fake.addr
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["ctl", "--config", config.to_str().expect("utf-8 path"), "status"])
        .env_remove("TANDEM_ADMIN_TOKEN")
        .env("CTL_TEST_CONFIG_TOKEN", "config-tok")
        .output()
        .expect("run tandem ctl");
    assert_exit(&out, 0);
    assert_eq!(fake.request().authorization.as_deref(), Some("Bearer config-tok"));
    assert_contains(&stdout(&out), &format!("tandem at {} —", fake.addr));

    // The config's token variable is not set: the config is invalid, exit 2 with the problem.
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["ctl", "-c", config.to_str().expect("utf-8 path"), "status"])
        .env_remove("CTL_TEST_CONFIG_TOKEN")
        .output()
        .expect("run tandem ctl");
    assert_exit(&out, 2);
    assert_contains(&stderr(&out), "admin.token_env");
    assert_contains(&stderr(&out), "CTL_TEST_CONFIG_TOKEN");
    fake.no_request();
}

#[test]
fn unauthorized_exits_1_with_the_message() {
    let fake = Fake::json("401 Unauthorized", r#"{"error": "missing or invalid admin token"}"#);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert_contains(&err, "tandem ctl: GET /status: 401 Unauthorized: missing or invalid admin token\n");
    assert_contains(&err, "no token was sent");
    assert!(stdout(&out).is_empty());

    let fake = Fake::json("401 Unauthorized", r#"{"error": "missing or invalid admin token"}"#);
    let out = ctl_env(&fake.addr, &["--token-env", "T", "cutover", "5"], &[("T", "wrong-tok")]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert_contains(&err, "tandem ctl: POST /cutover: 401 Unauthorized: missing or invalid admin token");
    assert_contains(&err, "the token from environment variable T was refused");
    assert!(!err.contains("wrong-tok"), "the token must not be printed: {err}");
}

#[test]
fn http_errors_show_the_server_message() {
    let fake = Fake::json("409 Conflict", r#"{"error": "no target backend is configured"}"#);
    let out = ctl(&fake.addr, &["cutover", "10"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "tandem ctl: POST /cutover: 409 Conflict: no target backend is configured\n");

    // A plain-text error body (an older server without the endpoint).
    let fake = Fake::start(vec![response("404 Not Found", "text/plain", "not found\n")]);
    let out = ctl(&fake.addr, &["rollback"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "tandem ctl: POST /rollback: 404 Not Found: not found\n");

    // --json still prints the error body for scripts, and still exits 1.
    let fake = Fake::json("400 Bad Request", r#"{"error": "bad"}"#);
    let out = ctl(&fake.addr, &["--json", "mirror", "off"]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "{\"error\": \"bad\"}\n");

    // A 200 that is not JSON is reported, not printed as a summary.
    let fake = Fake::start(vec![response("200 OK", "text/html", "<html>proxy</html>")]);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 1);
    assert_contains(&stderr(&out), "GET /status: the response is not JSON");
}

#[test]
fn broken_responses_exit_1() {
    // Closes without answering.
    let fake = Fake::start(vec![Vec::new()]);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 1);
    assert_contains(&stderr(&out), "tandem ctl: GET /status: the connection closed without a response");

    // Promises more body than it sends.
    let fake = Fake::start(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}".to_vec()]);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 1);
    assert_contains(&stderr(&out), "closed before the whole response body arrived");

    // Not HTTP at all.
    let fake = Fake::start(vec![b"-ERR unknown command\r\n\r\n".to_vec()]);
    let out = ctl(&fake.addr, &["status"]);
    assert_exit(&out, 1);
    assert_contains(&stderr(&out), "not an HTTP/1.x response");
}

#[test]
fn unreachable_admin_api_exits_1() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let out = ctl(&addr, &["status"]);
    assert_exit(&out, 1);
    assert_contains(&stderr(&out), &format!("tandem ctl: cannot reach the admin API at {addr}: "));
    assert!(stdout(&out).is_empty());

    let out = ctl("127.0.0.1", &["status"]);
    assert_exit(&out, 2);
    assert_contains(&stderr(&out), "has no port");
}

#[test]
fn admin_address_forms() {
    // http:// prefix and trailing slash are tolerated; 0.0.0.0 dials loopback.
    let fake = Fake::json("200 OK", "{}");
    let port = fake.addr.rsplit_once(':').expect("port").1.to_string();
    let out = ctl(&format!("http://0.0.0.0:{port}/"), &["status"]);
    assert_exit(&out, 0);
    assert_eq!(fake.request().request_line, "GET /status HTTP/1.1");
    assert_contains(&stdout(&out), &format!("tandem at 127.0.0.1:{port} —"));
}
