//! A real `redis-server` child process owned by a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::process::{kill_and_reap, log_stdio, missing_binary, redis_cli, redis_cli_output};
use super::{free_port, probe_ping, read_lossy, url_encode_userinfo, RawConn, STARTUP_TIMEOUT};

/// A `redis-server` started for one test, on `127.0.0.1` and a free port,
/// with persistence disabled and its working directory in a private tempdir.
///
/// The process is killed by PID when this value is dropped (also when the
/// test panics), so tests never leak servers and never touch servers they
/// did not start.
///
/// If the server was started with `--requirepass PW`, [`client`](Self::client),
/// [`conn`](Self::conn) and [`cli`](Self::cli) authenticate with `PW`: they
/// are the test's privileged back door to the backend. [`url`](Self::url)
/// stays credential-free (use [`auth_url`](Self::auth_url) for the other).
pub struct RedisServer {
    child: Option<Child>,
    /// PID of the current, or most recently started, process.
    pid: u32,
    port: u16,
    extra_args: Vec<String>,
    password: Option<String>,
    log_path: PathBuf,
    // Declared last so the directory is removed after the process is gone.
    dir: tempfile::TempDir,
}

/// Path of the `redis-server` binary (`REDIS_SERVER_BIN` overrides `PATH`).
pub(super) fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_string())
}

impl RedisServer {
    /// Starts a plain redis-server and waits until it answers `PING`.
    #[track_caller]
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts redis-server with extra command-line config appended, e.g.
    /// `&["--requirepass", "secret"]` or `&["--maxmemory", "10mb"]`.
    ///
    /// Waits (polling, up to 10 s) until a raw `PING` gets `+PONG` or
    /// `-NOAUTH`. Panics with the server log if it does not come up. If the
    /// chosen port was taken in the meantime by another process, retries on
    /// a new port a few times.
    #[track_caller]
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tandem-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create tempdir for redis-server: {e}"));
        let log_path = dir.path().join("redis.log");
        let extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let password = extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra_args.get(i + 1).cloned())
            .filter(|p| !p.is_empty());
        let mut server = RedisServer { child: None, pid: 0, port: 0, extra_args, password, log_path, dir };
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(log) if attempt < ATTEMPTS && log.contains("Address already in use") => {
                    continue;
                }
                Err(log) => panic!(
                    "redis-server on port {} did not become ready (args {:?}).\n--- log ---\n{log}",
                    server.port, server.extra_args
                ),
            }
        }
        unreachable!()
    }

    /// Spawns the process on `self.port` / `self.dir` and polls until ready.
    /// On failure the process is killed and the log returned as the error.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let bin = redis_server_bin();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let addr = self.addr();
        let child = spawn_until_ready(cmd, &self.log_path, &addr, || self.reported_pid(&addr))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// Asks the server on `addr` for its `process_id` (INFO server), logging in
    /// first if we have a password. `None` if it cannot be determined.
    fn reported_pid(&self, addr: &str) -> Option<u32> {
        let mut conn = RawConn::try_connect(addr, Duration::from_secs(2)).ok()?;
        if let Some(pw) = &self.password {
            conn.send_cmd(&["AUTH", pw]);
            conn.try_read_reply().ok()?;
        }
        conn.send_cmd(&["INFO", "server"]);
        let reply = conn.try_read_reply().ok()?;
        let text = String::from_utf8_lossy(&reply);
        text.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|v| v.trim().parse().ok())
    }

    /// The TCP port the server listens on (stable across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` — without credentials, even with `--requirepass`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Like [`url`](Self::url) but including the `--requirepass` password, if any.
    pub fn auth_url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{}@127.0.0.1:{}", url_encode_userinfo(pw), self.port),
            None => self.url(),
        }
    }

    /// The `--requirepass` password this server was started with, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A `redis` crate client for this server (authenticated if `--requirepass`).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.auth_url()).unwrap_or_else(|e| panic!("invalid redis url {}: {e}", self.auth_url()))
    }

    /// A multiplexed async connection (authenticated if `--requirepass`), with
    /// bounded connect (5 s) and response (10 s) times.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        super::connect_async(&self.client(), &format!("redis-server {}", self.addr())).await
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its stdout, trimmed.
    /// Error replies come back as text (`ERR ...`); failing to run or
    /// connect panics with redis-cli's stderr. Bounded to 5 s.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, self.password.as_deref(), args)
    }

    /// Raw `redis-cli` output (exit status, stdout, stderr) for tests that
    /// need to look at failures.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        redis_cli_output(self.port, self.password.as_deref(), args)
    }

    /// PID of the running process, or of the most recent one after
    /// [`stop`](Self::stop) (handy to assert it is gone).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether our process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's private working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Contents of the server log (stdout + stderr, all restarts) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Kills the server (SIGKILL by PID) and reaps it. Idempotent.
    ///
    /// SIGKILL rather than SHUTDOWN on purpose: it models a crash, is instant,
    /// and cannot be blocked by a misbehaving server. Clients see their
    /// connections reset/closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Stops the server (if running) and starts a new one on the SAME port
    /// and directory with the same arguments, waiting until it is ready.
    /// Data is not preserved (persistence is off).
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!(
                "redis-server restart on port {} failed (port taken by someone else?)\n--- log ---\n{log}",
                self.port
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("addr", &self.addr())
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Spawns a redis-server (`cmd`, logging to `log_path`) and polls `addr` until it answers
/// PING. `reported_pid` asks the answering server for its PID, so a server of someone else's
/// that grabbed the port first is not taken for ours (our child then fails with "Address
/// already in use"). On failure the child is killed and the log is in the error.
pub(super) fn spawn_until_ready(
    mut cmd: Command,
    log_path: &Path,
    addr: &str,
    reported_pid: impl Fn() -> Option<u32>,
) -> Result<Child, String> {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_binary(&redis_server_bin(), &e),
        Err(e) => panic!("cannot spawn {:?}: {e}", cmd.get_program()),
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(line) = probe_ping(addr, Duration::from_millis(500)) {
            if line.starts_with("+PONG") || line.starts_with("-NOAUTH") {
                return match reported_pid() {
                    Some(pid) if pid != child.id() => {
                        kill_and_reap(&mut child);
                        Err(format!("Address already in use: {addr} is served by PID {pid}, not ours"))
                    }
                    _ => Ok(child),
                };
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited early with {status}\n{}", read_lossy(log_path)));
        }
        if start.elapsed() >= STARTUP_TIMEOUT {
            kill_and_reap(&mut child);
            return Err(format!("timed out after {:?} waiting for PING\n{}", start.elapsed(), read_lossy(log_path)));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
