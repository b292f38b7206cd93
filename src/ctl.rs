//! `tandem ctl`: drive a running proxy through its admin HTTP API.
//!
//! Why it exists and why it looks like this:
//!
//! * **Operators should not hand-write `curl` during a migration.** Moving the cutover or
//!   rolling it back is the riskiest moment of the whole exercise; a typo in a JSON body
//!   sent at 3 a.m. should be impossible. `ctl` checks the arguments locally (percentages
//!   in 0..=100, mirror modes from a fixed list) before anything is sent.
//! * **Same config, same token.** `--config proxy.yaml` reads `admin.listen` and the admin
//!   token exactly as the proxy does ([`Config::load`]), so the client talks to the proxy that
//!   file describes with the token it expects. Flags override, then `TANDEM_ADMIN_TOKEN`.
//!   Tokens are only ever read from an environment variable or a file, never from argv
//!   (which `ps` shows to every user on the host).
//! * **Readable summaries, raw JSON on request.** The human output is a short aligned summary
//!   that treats every field as optional, so one `ctl` keeps working against older and newer
//!   proxies; `--json` prints the server's body verbatim for scripts.
//! * **No HTTP client dependency.** The admin API is a handful of small JSON requests on a
//!   loopback socket, so this is a minimal blocking HTTP/1.1 client over
//!   [`std::net::TcpStream`] (one request per connection, `Connection: close`, 30 s timeouts,
//!   `Content-Length` or chunked responses, bounded size): nothing new to build or audit.
//!
//! Exit status: 0 on success, 1 when the request failed (unreachable proxy, HTTP error,
//! unreadable response), 2 for a local usage problem (bad config, missing token, bad value).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::Config;

/// Admin address used when neither `--admin` nor `--config` gives one.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9121";
/// Environment variable consulted for the token when nothing else names one.
pub const DEFAULT_TOKEN_ENV: &str = "TANDEM_ADMIN_TOKEN";

/// Connect, write and (by default) read timeout.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted; `/status` is a few kilobytes.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Hash slots in a Redis Cluster keyspace, which the cutover percentage is a share of.
const TOTAL_SLOTS: u64 = 16384;
/// Width of the labels in the status summary (`"backends:  "`).
const LABEL_WIDTH: usize = 11;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Admin address of the running proxy. Default: admin.listen from --config, else 127.0.0.1:9121.
    #[arg(long)]
    pub admin: Option<String>,
    /// Read the admin address (and token_env/token_file) from this proxy.yaml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Bearer token: the name of an environment variable holding it (default: admin.token_env from --config, else TANDEM_ADMIN_TOKEN if set).
    #[arg(long, conflicts_with = "token_file")]
    pub token_env: Option<String>,
    /// Bearer token from a file (trailing newline trimmed).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the raw JSON instead of the human-readable summary.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlAction {
    /// Show the proxy's status.
    Status,
    /// Move the cutover to PERCENT (0-100) of hash slots served by the target.
    Cutover { percent: f64 },
    /// Roll back: cutover to 0 at once, or to --to N.
    Rollback {
        #[arg(long)]
        to: Option<f64>,
    },
    /// Set the mirror mode.
    Mirror {
        #[arg(value_parser = ["off", "async", "sync"])]
        mode: String,
    },
    /// Set the share of reads compared between the two backends.
    Compare { percent: f64 },
}

/// Fetches a running proxy's `/status` document, resolving the admin address and token the way
/// `tandem ctl` does (`admin`, then `admin.listen` and the token from `config`, then the
/// defaults). Used by tools that must act on the live cutover (`tandem repair`).
pub fn fetch_status(config: Option<PathBuf>, admin: Option<String>) -> Result<Value, String> {
    let args = CtlArgs { admin, config, token_env: None, token_file: None, json: true, action: CtlAction::Status };
    let target = Target::resolve(&args)?;
    let reply = exchange(&target, "GET", "/status", None).map_err(|e| match e {
        Failure::Unreachable(e) => format!("cannot reach the admin API at {}: {e}", target.addr),
        Failure::Exchange(e) => format!("GET /status from {}: {e}", target.addr),
    })?;
    if reply.status != 200 {
        return Err(format!("GET /status from {}: {}", target.addr, describe_error(&reply)));
    }
    serde_json::from_slice(&reply.body).map_err(|e| format!("GET /status from {}: invalid JSON: {e}", target.addr))
}

/// Runs one `tandem ctl` command and returns the process exit status.
pub fn run(args: CtlArgs) -> ExitCode {
    let call = match Call::new(&args.action) {
        Ok(call) => call,
        Err(message) => return usage_error(&message),
    };
    let target = match Target::resolve(&args) {
        Ok(target) => target,
        Err(message) => return usage_error(&message),
    };
    let body = call.body.as_ref().map(|b| b.to_string());
    let reply = match exchange(&target, call.method, call.path, body.as_deref()) {
        Ok(reply) => reply,
        Err(Failure::Unreachable(e)) => {
            eprintln!("tandem ctl: cannot reach the admin API at {}: {e}", target.addr);
            return ExitCode::FAILURE;
        }
        Err(Failure::Exchange(e)) => {
            eprintln!("tandem ctl: {} {}: {e}", call.method, call.path);
            return ExitCode::FAILURE;
        }
    };

    if !(200..300).contains(&reply.status) {
        if args.json && !reply.body.is_empty() {
            emit_raw(&reply.body);
        }
        eprintln!("tandem ctl: {} {}: {}", call.method, call.path, describe_error(&reply));
        if reply.status == 401 {
            match &target.token_origin {
                None => eprintln!(
                    "tandem ctl: no token was sent; give one with --token-env VAR, --token-file PATH, \
                     --config proxy.yaml or {DEFAULT_TOKEN_ENV}"
                ),
                Some(origin) => eprintln!("tandem ctl: the token from {origin} was refused"),
            }
        }
        return ExitCode::FAILURE;
    }

    if args.json {
        emit_raw(&reply.body);
        return ExitCode::SUCCESS;
    }
    let value: Value = match serde_json::from_slice(&reply.body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "tandem ctl: {} {}: the response is not JSON ({e}): {}",
                call.method,
                call.path,
                snippet(&reply.body)
            );
            return ExitCode::FAILURE;
        }
    };
    match call.kind {
        Kind::Status => emit(&format_status(&target.addr, &value)),
        Kind::Flip(verb) => {
            emit(&format_flip(verb, &value));
            if value.get("drained").and_then(Value::as_bool) == Some(false) {
                eprintln!(
                    "WARNING: the mirror backlog did not drain within cutover.flip_timeout; the flip went ahead \
                     anyway, so writes still in flight may land after the switch (check `tandem ctl status`)"
                );
            }
        }
        Kind::Mirror => emit(&format!("mirror mode: {}", text(value.get("mode")))),
        Kind::Compare => emit(&format!("compare: {} of reads", percent(value.get("percent")))),
    }
    ExitCode::SUCCESS
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("tandem ctl: {message}");
    ExitCode::from(2)
}

// ---------------------------------------------------------------------------------------------
// What to send.

/// How a successful response is summarised.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Status,
    /// A cutover move; the verb names it in the report ("cutover", "rollback").
    Flip(&'static str),
    Mirror,
    Compare,
}

#[derive(Debug)]
struct Call {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    kind: Kind,
}

impl Call {
    /// Builds the request for `action`, rejecting values the server would refuse anyway.
    fn new(action: &CtlAction) -> Result<Call, String> {
        let post = |path, body, kind| Call { method: "POST", path, body: Some(body), kind };
        Ok(match action {
            CtlAction::Status => Call { method: "GET", path: "/status", body: None, kind: Kind::Status },
            CtlAction::Cutover { percent } => {
                post("/cutover", json!({ "percent": check_percent("cutover", *percent)? }), Kind::Flip("cutover"))
            }
            CtlAction::Rollback { to: None } => post("/rollback", json!({}), Kind::Flip("rollback")),
            CtlAction::Rollback { to: Some(to) } => {
                post("/rollback", json!({ "to": check_percent("rollback --to", *to)? }), Kind::Flip("rollback"))
            }
            CtlAction::Mirror { mode } => post("/mirror", json!({ "mode": mode }), Kind::Mirror),
            CtlAction::Compare { percent } => {
                post("/compare", json!({ "percent": check_percent("compare", *percent)? }), Kind::Compare)
            }
        })
    }
}

fn check_percent(what: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{what}: percent must be within 0..100, got {value}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Where to send it, and with which token.

#[derive(Debug)]
struct Target {
    /// `host:port` as it is dialled and shown.
    addr: String,
    token: Option<String>,
    /// Where the token came from, for the 401 hint (never the token itself).
    token_origin: Option<String>,
    /// How long to wait for a response. A cutover waits up to `cutover.flip_timeout` for the
    /// backlog to drain before answering, so with `--config` this covers that too.
    read_timeout: Duration,
}

impl Target {
    fn resolve(args: &CtlArgs) -> Result<Target, String> {
        let config = match &args.config {
            None => None,
            Some(path) => Some(Config::load(path).map_err(|errors| {
                let mut message = format!("{}: {} problem(s)", path.display(), errors.len());
                for e in errors.iter() {
                    message.push_str(&format!("\n  {e}"));
                }
                message
            })?),
        };
        let addr = match (&args.admin, &config) {
            (Some(addr), _) => addr.clone(),
            (None, Some(config)) => config.admin.listen.clone(),
            (None, None) => DEFAULT_ADMIN.to_string(),
        };
        let addr = dial_addr(&addr)?;

        let (token, token_origin) = if let Some(path) = &args.token_file {
            (Some(token_from_file(path)?), Some(format!("--token-file {}", path.display())))
        } else if let Some(name) = &args.token_env {
            (Some(token_from_env(name)?), Some(format!("environment variable {name}")))
        } else if let (Some(path), Some(admin)) = (&args.config, config.as_ref().map(|c| &c.admin)) {
            match (admin.token(), &admin.token_env) {
                (Some(secret), Some(name)) => {
                    (Some(secret.expose().to_string()), Some(format!("{} (admin.token_env {name})", path.display())))
                }
                (Some(secret), None) => {
                    (Some(secret.expose().to_string()), Some(format!("{} (admin.token_file)", path.display())))
                }
                (None, _) => default_token(),
            }
        } else {
            default_token()
        };
        if let (Some(token), Some(origin)) = (&token, &token_origin) {
            if token.chars().any(char::is_control) {
                return Err(format!("the token from {origin} contains control characters"));
            }
        }

        let read_timeout = match &config {
            Some(c) => TIMEOUT.max(c.cutover.flip_timeout.saturating_add(Duration::from_secs(10))),
            None => TIMEOUT,
        };
        Ok(Target { addr, token, token_origin, read_timeout })
    }
}

/// Turns an admin listen address into one to dial: tolerates an `http://` prefix and a trailing
/// slash, and dials loopback when the proxy listens on every interface.
fn dial_addr(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("https://") {
        return Err(format!("admin address {text}: the admin API speaks plain HTTP"));
    }
    let addr = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("admin address \"{text}\" has no port (expected host:port, e.g. {DEFAULT_ADMIN})"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() || port.starts_with('+') {
        return Err(format!("invalid admin address \"{text}\" (expected host:port, e.g. {DEFAULT_ADMIN})"));
    }
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    Ok(format!("{host}:{port}"))
}

/// `TANDEM_ADMIN_TOKEN` when it is set and not empty.
fn default_token() -> (Option<String>, Option<String>) {
    match std::env::var(DEFAULT_TOKEN_ENV) {
        Ok(token) if !token.is_empty() => (Some(token), Some(format!("environment variable {DEFAULT_TOKEN_ENV}"))),
        _ => (None, None),
    }
}

fn token_from_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

fn token_from_env(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("invalid environment variable name \"{name}\""));
    }
    match std::env::var_os(name) {
        None => Err(format!("environment variable {name} (--token-env) is not set")),
        Some(value) => match value.into_string() {
            Err(_) => Err(format!("environment variable {name} is not valid UTF-8")),
            Ok(value) if value.is_empty() => Err(format!("environment variable {name} is empty")),
            Ok(value) => Ok(value),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, one request per connection.

#[derive(Debug)]
struct Reply {
    status: u16,
    reason: String,
    body: Vec<u8>,
}

#[derive(Debug)]
enum Failure {
    /// No connection could be made.
    Unreachable(String),
    /// Connected, but the request or response failed.
    Exchange(String),
}

fn exchange(target: &Target, method: &str, path: &str, body: Option<&str>) -> Result<Reply, Failure> {
    let mut stream = connect(&target.addr).map_err(Failure::Unreachable)?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tandem-ctl/{}\r\nAccept: application/json\r\n\
         Connection: close\r\n",
        target.addr,
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(token) = &target.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        request.push_str("\r\n");
    }
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| Failure::Exchange(format!("socket setup failed: {e}")))?;
    stream.write_all(request.as_bytes()).map_err(|e| Failure::Exchange(format!("cannot send the request: {e}")))?;
    stream.flush().map_err(|e| Failure::Exchange(format!("cannot send the request: {e}")))?;
    read_reply(&mut stream, target.read_timeout).map_err(Failure::Exchange)
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let candidates: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolved to no address");
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                last = format!("connect timed out after {}s", TIMEOUT.as_secs())
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one response from `stream`, waiting at most `timeout` in total.
fn read_reply(stream: &mut TcpStream, timeout: Duration) -> Result<Reply, String> {
    let deadline = Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let mut head: Option<(u16, String, Framing, usize)> = None;
    loop {
        if let Some((status, reason, framing, start)) = &head {
            let body = &buf[*start..];
            let complete = match framing {
                Framing::Length(n) if body.len() >= *n => Some(body[..*n].to_vec()),
                Framing::Chunked => decode_chunked(body)?,
                _ => None,
            };
            if let Some(body) = complete {
                return Ok(Reply { status: *status, reason: reason.clone(), body });
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!("no complete response within {}s", timeout.as_secs()));
        }
        stream.set_read_timeout(Some(remaining)).map_err(|e| format!("socket setup failed: {e}"))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no complete response within {}s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("cannot read the response: {e}")),
        };
        if n == 0 {
            return match head {
                None if buf.is_empty() => Err("the connection closed without a response".to_string()),
                None => Err(format!("the connection closed in the middle of the response headers: {}", snippet(&buf))),
                Some((status, reason, Framing::UntilClose, start)) => {
                    Ok(Reply { status, reason, body: buf[start..].to_vec() })
                }
                Some(_) => Err("the connection closed before the whole response body arrived".to_string()),
            };
        }
        if buf.len() + n > MAX_RESPONSE {
            return Err(format!("the response is larger than {} MiB", MAX_RESPONSE >> 20));
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let (status, reason, framing) = parse_head(&buf[..end])?;
                head = Some((status, reason, framing, end + 4));
            }
        }
    }
}

/// Parses a status line and headers (without the blank line that ends them).
fn parse_head(head: &[u8]) -> Result<(u16, String, Framing), String> {
    let text = std::str::from_utf8(head).map_err(|_| "the response headers are not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let status = match code.parse::<u16>() {
        Ok(status) if version.starts_with("HTTP/1.") && code.len() == 3 => status,
        _ => return Err(format!("not an HTTP/1.x response: {}", snippet(status_line.as_bytes()))),
    };
    let mut framing = Framing::UntilClose;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")) {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length") && !matches!(framing, Framing::Chunked) {
            let n = value.parse::<usize>().map_err(|_| format!("invalid Content-Length \"{value}\""))?;
            if n > MAX_RESPONSE {
                return Err(format!("the response is larger than {} MiB", MAX_RESPONSE >> 20));
            }
            framing = Framing::Length(n);
        }
    }
    Ok((status, reason, framing))
}

/// Decodes a chunked body: `Ok(None)` while incomplete, the body once the last chunk and the
/// trailers have arrived.
fn decode_chunked(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else { return Ok(None) };
        let line = String::from_utf8_lossy(&data[pos..pos + eol]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|_| !size_text.is_empty() && !size_text.starts_with('+'))
            .ok_or_else(|| format!("invalid chunk size \"{}\"", snippet(size_text.as_bytes())))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, if any, then an empty line.
            loop {
                let Some(eol) = find(&data[pos..], b"\r\n") else { return Ok(None) };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(out));
                }
            }
        }
        let end = match pos.checked_add(size).and_then(|e| e.checked_add(2)) {
            Some(end) if size <= MAX_RESPONSE => end,
            _ => return Err("invalid chunk size".to_string()),
        };
        if data.len() < end {
            return Ok(None);
        }
        if &data[end - 2..end] != b"\r\n" {
            return Err("malformed chunked body".to_string());
        }
        out.extend_from_slice(&data[pos..end - 2]);
        pos = end;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A short, single-line rendering of some bytes for an error message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let one_line: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() > 200 {
        format!("{}...", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// `401 Unauthorized: missing or invalid admin token`, from a JSON `{"error": ...}` body or
/// whatever text the server sent.
fn describe_error(reply: &Reply) -> String {
    let status =
        if reply.reason.is_empty() { reply.status.to_string() } else { format!("{} {}", reply.status, reply.reason) };
    let message = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(Value::Object(map)) => match map.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(map).to_string(),
        },
        _ => snippet(&reply.body),
    };
    if message.is_empty() {
        status
    } else {
        format!("{status}: {message}")
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

fn emit(text: &str) {
    // A closed stdout (`tandem ctl status | head -1`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

fn emit_raw(body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(body);
    if !body.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
}

/// A scalar for display: missing or null → `-`.
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `50%`, `12.5%`, or `-`.
fn percent(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(p) => format!("{}%", number(p)),
        None => text(v),
    }
}

/// A number without a pointless fraction, rounded to two decimals.
fn number(n: f64) -> String {
    let fixed = format!("{n:.2}");
    fixed.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn label(name: &str) -> String {
    format!("{:<LABEL_WIDTH$}", format!("{name}:"))
}

fn format_status(addr: &str, s: &Value) -> String {
    let mut lines = Vec::new();
    let change = match s.get("last_change") {
        Some(Value::Object(c)) => {
            format!("{} ({}, {})", text(c.get("what")), text(c.get("source")), text(c.get("at")))
        }
        other => text(other),
    };
    lines.push(format!("tandem at {addr} — config generation {}, last change: {change}", text(s.get("generation"))));
    lines.push(format!("{}{}", label("clients"), text(s.get("clients"))));
    lines.push(format!("{}{}", label("backends"), backends(s.get("backends"))));
    lines.push(format!("{}{}", label("cutover"), cutover(s.get("cutover"))));
    lines.extend(mirror(s.get("mirror")));
    lines.extend(ramp(s.get("ramp")));
    let compare = match s.get("compare") {
        Some(Value::Object(c)) => format!("{} of reads compared", percent(c.get("percent"))),
        other => text(other),
    };
    lines.push(format!("{}{compare}", label("compare")));
    let mut reloads = match s.get("reloads") {
        Some(Value::Object(r)) => format!("ok {}, error {}", text(r.get("ok")), text(r.get("error"))),
        other => text(other),
    };
    if let Some(e) = s.get("last_reload_error").filter(|e| !e.is_null()) {
        reloads.push_str(&format!(" — last error: {}", text(Some(e))));
    }
    lines.push(format!("{}{reloads}", label("reloads")));
    lines.join("\n")
}

fn backends(v: Option<&Value>) -> String {
    let Some(Value::Array(list)) = v else { return text(v) };
    if list.is_empty() {
        return "none".to_string();
    }
    let shown: Vec<String> = list
        .iter()
        .map(|b| {
            let state = match b.get("up").and_then(Value::as_bool) {
                Some(true) => match b.get("server_version").and_then(Value::as_str).filter(|v| !v.is_empty()) {
                    Some(version) => format!("up (redis {version})"),
                    None => "up".to_string(),
                },
                Some(false) => match b.get("last_error").filter(|e| !e.is_null()) {
                    Some(e) => format!("DOWN: {}", text(Some(e))),
                    None => "DOWN".to_string(),
                },
                None => "-".to_string(),
            };
            format!("{} {} {state}", text(b.get("name")), text(b.get("addr")))
        })
        .collect();
    shown.join(" | ")
}

fn cutover(v: Option<&Value>) -> String {
    let Some(Value::Object(c)) = v else { return text(v) };
    let mut line =
        format!("{} of slots on the target ({}/{TOTAL_SLOTS})", percent(c.get("percent")), text(c.get("moved_slots")));
    match c.get("flip_in_progress") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => line.push_str(&format!(", flip in progress ({n} slots moving)")),
        Some(_) => line.push_str(", flip in progress"),
    }
    line
}

fn mirror(v: Option<&Value>) -> Vec<String> {
    let Some(Value::Object(m)) = v else { return vec![format!("{}{}", label("mirror"), text(v))] };
    let mode = text(m.get("mode"));
    let towards: Vec<String> = match m.get("towards") {
        Some(Value::Object(sides)) => sides
            .iter()
            .map(|(side, st)| {
                format!(
                    "to {side}: enqueued {} applied {} error {} diverged {} dropped {} in flight {} (queue {})",
                    text(st.get("enqueued")),
                    text(st.get("applied")),
                    text(st.get("error")),
                    text(st.get("diverged")),
                    text(st.get("dropped")),
                    text(st.get("in_flight")),
                    text(st.get("queue_depth")),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    if towards.is_empty() {
        return vec![format!("{}{mode}", label("mirror"))];
    }
    let indent = " ".repeat(LABEL_WIDTH + 8);
    towards
        .into_iter()
        .enumerate()
        .map(|(i, side)| if i == 0 { format!("{}{mode:<8}{side}", label("mirror")) } else { format!("{indent}{side}") })
        .collect()
}

fn ramp(v: Option<&Value>) -> Vec<String> {
    let r = match v {
        Some(Value::Object(r)) => r,
        Some(Value::Null) => return vec![format!("{}none", label("ramp"))],
        other => return vec![format!("{}{}", label("ramp"), text(other))],
    };
    let steps = r.get("steps").and_then(Value::as_array);
    let step = r.get("step").and_then(Value::as_u64).and_then(|s| usize::try_from(s).ok());
    let position = match (step, steps) {
        (Some(i), Some(steps)) => match steps.get(i) {
            Some(p) => format!("step {}/{} ({})", i + 1, steps.len(), percent(Some(p))),
            None => format!("step {}/{}", i + 1, steps.len()),
        },
        (Some(i), None) => format!("step {}", i + 1),
        (None, _) => "step -".to_string(),
    };
    let mut first = format!("{}{position}, {}", label("ramp"), text(r.get("state")));
    if let Some(next) = r.get("next_at").filter(|n| !n.is_null()) {
        first.push_str(&format!(", next at {}", text(Some(next))));
    }
    let mut lines = vec![first];
    if let Some(Value::Object(rb)) = r.get("last_rollback") {
        lines.push(format!(
            "{}last rollback at {} to {}: {}",
            " ".repeat(LABEL_WIDTH),
            text(rb.get("at")),
            percent(rb.get("to")),
            text(rb.get("reason"))
        ));
    }
    lines
}

/// `cutover 10% -> 50%: 8192 slots moved, waited 12 ms (backlog drained)`.
fn format_flip(verb: &str, r: &Value) -> String {
    let moved = match r.get("moved_slots").and_then(Value::as_u64) {
        Some(1) => "1 slot".to_string(),
        Some(n) => format!("{n} slots"),
        None => format!("{} slots", text(r.get("moved_slots"))),
    };
    let mut line = format!(
        "{verb} {} -> {}: {moved} moved, waited {} ms",
        percent(r.get("from_percent")),
        percent(r.get("to_percent")),
        text(r.get("waited_ms"))
    );
    match r.get("drained").and_then(Value::as_bool) {
        Some(true) => line.push_str(" (backlog drained)"),
        Some(false) => line.push_str(" (backlog NOT drained)"),
        None => {}
    }
    line
}
