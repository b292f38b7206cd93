//! A minimal HTTP/1.1 client for the admin API (std only, bounded by timeouts).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Status code and body of one request.
pub fn request(port: u16, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("admin connect :{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("set timeout");
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn get(port: u16, path: &str) -> String {
    let (status, body) = request(port, "GET", path, None, None);
    assert!(status == 200 || status == 503, "GET {path}: {status} {body}");
    body
}

pub fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    request(port, "POST", path, Some(body), None)
}

/// GET /status parsed as JSON.
pub fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/status")).expect("status is JSON")
}

/// Waits (up to 30 s) until no mirror direction has writes in flight; returns the last
/// `/status`.
#[track_caller]
pub fn wait_mirror_idle(port: u16) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    super::wait_until(std::time::Duration::from_secs(30), "mirror queues drained", || {
        last = status(port);
        last["mirror"]["towards"].as_object().is_some_and(|m| m.values().all(|d| d["in_flight"].as_u64() == Some(0)))
    });
    last
}
