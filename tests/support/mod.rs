//! Shared support code for tandem's integration tests.
//!
//! Every integration test file does `mod support;`, so this module is compiled
//! once per test binary and each binary only uses a part of it — hence the
//! crate-wide `dead_code` allowance below.
//!
//! Ground rules this module enforces for all tests:
//!
//! * every server listens on `127.0.0.1` only, on a port chosen by
//!   [`free_port`];
//! * every process a test starts is owned by a guard ([`RedisServer`],
//!   [`Tandem`]) that kills it *by PID* when dropped — never by name, so
//!   parallel tests (and other users of the machine) are never affected;
//! * nothing waits with a bare `sleep`: conditions are polled with a deadline
//!   via [`wait_until`] / [`wait_until_async`], so a broken test fails fast
//!   with a message instead of hanging or flaking;
//! * every blocking operation (connects, reads, child processes such as
//!   `redis-cli`) has a timeout.
#![allow(dead_code)]
// The `pub use` re-exports below are unused in test files that need only
// part of the module; that is expected, not worth a warning per file.
#![allow(unused_imports)]

pub mod cli;
pub mod cluster;
pub mod http;
pub mod load;
mod process;
mod raw;
mod redis_server;
mod relay;
pub mod sentinel;
mod tandem;

pub use cluster::{key_slot, RedisCluster};
pub use process::{output_with_timeout, process_alive, redis_cli_output};
pub use raw::{encode_cmd, resp_frame_len, RawConn};
pub use redis_server::RedisServer;
pub use relay::Relay;
pub use sentinel::{Sentinel, SentinelSet};
pub use tandem::{tandem_bin, Tandem, TandemBuilder};

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long servers and proxies get to become ready before a test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound for a single client operation done by the helpers
/// (connects, `redis-cli` runs, raw reads).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0`, lets the kernel pick, reads the port and releases it
/// so a child process can bind it. This is inherently racy against *other*
/// processes, but within one test binary we also remember every port handed
/// out so two servers started by concurrently running tests never get the
/// same one (the kernel may hand a just-released port out again).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("free_port: cannot bind 127.0.0.1:0: {e}"));
        let port = listener.local_addr().unwrap_or_else(|e| panic!("free_port: local_addr failed: {e}")).port();
        drop(listener);
        // A poisoned lock only means another test panicked while holding it;
        // the set itself is still valid.
        let mut set = handed_out.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("free_port: could not find an unused port after 1000 attempts");
}

/// Polls `f` until it returns `true`, panicking once `deadline` has elapsed.
///
/// This replaces `sleep`-based synchronisation: the test proceeds as soon as
/// the condition holds, and a condition that never holds fails with a message
/// naming `what` and how long we waited. Polling starts at 2 ms and backs off
/// to 50 ms so fast conditions are detected quickly without burning a core.
/// `f` is always evaluated at least once, and once more at the deadline.
///
/// `f` itself must not block indefinitely (use timeouts inside it).
///
/// In async tests use [`wait_until_async`] instead: this function blocks the
/// thread, so on a current-thread runtime no other task (e.g. a spawned
/// request, or a `redis` connection's driver) can make progress meanwhile and
/// a condition that depends on them will never become true.
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if f() {
            return;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {elapsed:?} (deadline {deadline:?}) waiting for: {what}");
        }
        std::thread::sleep(pause.min(deadline - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Async version of [`wait_until`]: `f` returns a future resolving to `bool`.
///
/// Each evaluation of `f` is itself bounded by the remaining time, so a
/// condition future that hangs (e.g. a request to a blackholed server) still
/// fails at the deadline instead of hanging the test.
#[track_caller]
pub fn wait_until_async<'a, F, Fut>(deadline: Duration, what: &'a str, mut f: F) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    // Capture the caller's location eagerly: `#[track_caller]` does not
    // propagate into the async block.
    let caller = std::panic::Location::caller();
    async move {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            // Always allow at least one evaluation, even with a zero deadline.
            let budget = remaining.max(Duration::from_millis(1));
            if let Ok(true) = tokio::time::timeout(budget, f()).await {
                return;
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                panic!(
                    "timed out after {elapsed:?} (deadline {deadline:?}) waiting for: {what} \
                     (wait_until_async called at {caller})"
                );
            }
            tokio::time::sleep(pause.min(deadline - elapsed)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Sends a RESP `PING` over a fresh raw TCP connection and returns the first
/// reply line (e.g. `+PONG`, `-NOAUTH ...`), or `None` if the server is not
/// reachable or does not answer within `timeout`.
///
/// Used as the readiness probe for both redis-server and tandem. It is raw on
/// purpose: it must work regardless of `requirepass`, RESP version or the
/// state of the `redis` crate connection logic.
pub fn probe_ping(addr: &str, timeout: Duration) -> Option<String> {
    let sock: SocketAddr = addr.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if Instant::now() >= deadline || buf.len() > 64 * 1024 {
            return None;
        }
        match read_some(&mut stream, &mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// [`Read::read`], retried when a signal interrupts it. A socket read with a timeout is not
/// restarted after a signal handler runs (SIGCHLD, when another test's child process
/// exits), so without this a test would see a spurious `Interrupted` error.
pub fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads a (log) file as text, tolerating invalid UTF-8 and a missing file.
pub fn read_lossy(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// Percent-encodes a URL userinfo component (password) for `redis://` URLs.
pub(crate) fn url_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens a multiplexed async connection with bounded connect and response
/// times, panicking with context on failure.
///
/// The response timeout (10 s) exists so that a test awaiting a reply that
/// never comes fails instead of hanging; tests that need a different bound
/// should build their own connection from `client()`.
pub async fn connect_async(client: &redis::Client, what: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(IO_TIMEOUT)
        .set_response_timeout(Duration::from_secs(10));
    match tokio::time::timeout(IO_TIMEOUT * 2, client.get_multiplexed_async_connection_with_config(&config)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("cannot open async connection to {what}: {e}"),
        Err(_) => panic!("timed out opening async connection to {what}"),
    }
}
