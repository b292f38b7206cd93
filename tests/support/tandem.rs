//! The proxy binary under test, run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{kill_and_reap, log_stdio, output_with_timeout, redis_cli, redis_cli_output, wait_timeout};
use super::{free_port, probe_ping, read_lossy, IO_TIMEOUT, STARTUP_TIMEOUT};

/// Path of the tandem binary to test.
///
/// `TANDEM_BIN` (runtime env var) wins if set, so a test run can target any
/// build. Otherwise Cargo's `CARGO_BIN_EXE_tandem`, which Cargo sets at
/// compile time for integration tests of a package with a `tandem` binary
/// (and builds that binary first). `option_env!` keeps this compiling in
/// crates without that binary.
pub fn tandem_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_tandem") {
        return PathBuf::from(p);
    }
    panic!(
        "cannot locate the tandem binary: CARGO_BIN_EXE_tandem was not set at compile \
         time (no `tandem` bin target in this package) and the TANDEM_BIN env var is \
         not set. Run the tests from the tandem repository with `cargo test`, or set \
         TANDEM_BIN=/path/to/tandem."
    )
}

/// A running tandem proxy (`tandem run --listen 127.0.0.1:P --admin
/// 127.0.0.1:A ...`) with stdout+stderr captured to a log file.
///
/// Killed by PID on drop. If the test is panicking at that point, the tail of
/// the proxy log is printed to stderr (which the test harness shows for the
/// failed test), since it usually explains the failure.
pub struct Tandem {
    child: Option<Child>,
    /// PID of the current, or most recent, process.
    pid: u32,
    /// Exit status once the process has been reaped (its PID may be reused
    /// from then on, so it must not be signalled any more).
    exit_status: Option<ExitStatus>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    admin_port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    config_path: PathBuf,
    // Declared last so the directory is removed after the process is gone.
    dir: tempfile::TempDir,
}

/// Builder for [`Tandem`] when the shortcuts are not enough: explicit
/// binary, environment variables (e.g. `RUST_LOG`), config + args, and
/// whether to wait for readiness.
///
/// ```ignore
/// let t = TandemBuilder::new()
///     .config("source: redis://127.0.0.1:6379\n")
///     .args(["--log-level", "debug"])
///     .env("RUST_LOG", "tandem=trace")
///     .start();
/// ```
#[derive(Debug, Clone, Default)]
pub struct TandemBuilder {
    bin: Option<PathBuf>,
    args: Vec<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
}

impl TandemBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binary to run instead of [`tandem_bin`] (e.g. a stub in harness tests).
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Appends one argument (after `run --listen .. --admin ..` and `--config`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Writes `yaml` to `proxy.yaml` in the instance dir and passes
    /// `--config <path>` before the other arguments.
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = Some(yaml.to_string());
        self
    }

    /// Sets an environment variable for the proxy process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Spawns and waits (up to 10 s) until the listener answers a raw PING
    /// with any RESP reply. Panics with the log on failure; retries on fresh
    /// ports if the log reports "address already in use".
    #[track_caller]
    pub fn start(self) -> Tandem {
        let mut t = self.build();
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            t.spawn_process();
            match t.try_wait_ready(STARTUP_TIMEOUT) {
                Ok(()) => return t,
                Err(why) => {
                    let log = t.log();
                    let lower = log.to_ascii_lowercase();
                    let port_clash = lower.contains("address already in use") || lower.contains("addrinuse");
                    t.stop();
                    if port_clash && attempt < ATTEMPTS {
                        // Another process took one of our ports between
                        // free_port() and bind(); try fresh ones.
                        t.port = free_port();
                        t.admin_port = free_port();
                        continue;
                    }
                    panic!(
                        "tandem did not become ready: {why}\nbinary: {}\nargs: {:?}\n--- tandem log ---\n{log}",
                        t.bin.display(),
                        t.full_args()
                    );
                }
            }
        }
        unreachable!()
    }

    /// Spawns WITHOUT waiting for readiness, for tests that expect tandem to
    /// fail (bad config...). Pair with [`Tandem::wait_exit`] and
    /// [`Tandem::log`], or call [`Tandem::wait_ready`].
    pub fn spawn(self) -> Tandem {
        let mut t = self.build();
        t.spawn_process();
        t
    }

    fn build(self) -> Tandem {
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create tempdir for tandem: {e}"));
        let log_path = dir.path().join("tandem.log");
        let config_path = dir.path().join("proxy.yaml");
        let mut args = Vec::new();
        if let Some(yaml) = &self.config {
            write_config_file(dir.path(), yaml);
            args.push("--config".to_string());
            args.push(config_path.display().to_string());
        }
        args.extend(self.args);
        Tandem {
            child: None,
            pid: 0,
            exit_status: None,
            bin: self.bin.unwrap_or_else(tandem_bin),
            env: self.env,
            port: free_port(),
            admin_port: free_port(),
            args,
            log_path,
            config_path,
            dir,
        }
    }
}

impl Tandem {
    /// Starts tandem with `args` appended after the generated
    /// `run --listen 127.0.0.1:P --admin 127.0.0.1:A` (e.g. `--source
    /// redis://...`) and waits (up to 10 s) until its listener answers a raw
    /// `PING` with any RESP reply. Panics with the log on failure.
    #[track_caller]
    pub fn start(args: &[String]) -> Tandem {
        TandemBuilder::new().args(args.iter().cloned()).start()
    }

    /// Writes `yaml` to `proxy.yaml` in the instance's tempdir and starts
    /// tandem with `--config <that file>` followed by `extra_args`.
    #[track_caller]
    pub fn start_config(yaml: &str, extra_args: &[String]) -> Tandem {
        TandemBuilder::new().config(yaml).args(extra_args.iter().cloned()).start()
    }

    /// Spawns tandem WITHOUT waiting for readiness (see [`TandemBuilder::spawn`]).
    pub fn spawn(args: &[String]) -> Tandem {
        TandemBuilder::new().args(args.iter().cloned()).spawn()
    }

    /// Shortcut for [`TandemBuilder::new`].
    pub fn builder() -> TandemBuilder {
        TandemBuilder::new()
    }

    fn full_args(&self) -> Vec<String> {
        let mut v = vec![
            "run".to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{}", self.port),
            "--admin".to_string(),
            format!("127.0.0.1:{}", self.admin_port),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    fn spawn_process(&mut self) {
        assert!(self.child.is_none(), "tandem already running");
        let bin = self.bin.clone();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let mut cmd = Command::new(&bin);
        cmd.args(self.full_args()).current_dir(self.dir.path()).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // ETXTBSY: a freshly written executable may still be open for
        // writing in a child forked concurrently by another test thread
        // (before its exec closes the fd). It is transient, so retry briefly.
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(26) && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot spawn tandem binary {}: {e}", bin.display()),
            }
        };
        self.pid = child.id();
        self.exit_status = None;
        self.child = Some(child);
    }

    /// Polls until the proxy answers a raw PING with any RESP reply, the
    /// process exits, or `timeout` passes.
    fn try_wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let addr = self.addr();
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(line) = probe_ping(&addr, Duration::from_millis(500)) {
                if line.bytes().next().is_some_and(|b| b"+-:$*%~>|=(,#_!".contains(&b)) {
                    return Ok(());
                }
            }
            if let Some(status) = self.try_exit_status() {
                return Err(format!("tandem exited during startup with {status}"));
            }
            if start.elapsed() >= timeout {
                return Err(format!("no RESP reply to PING on {addr} after {:?}", start.elapsed()));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits (up to 10 s) until a process started with [`spawn`](Self::spawn)
    /// answers PING; panics with the log otherwise.
    #[track_caller]
    pub fn wait_ready(&mut self) {
        if let Err(why) = self.try_wait_ready(STARTUP_TIMEOUT) {
            panic!("tandem did not become ready: {why}\n--- tandem log ---\n{}", self.log());
        }
    }

    /// Non-blocking: the exit status if the process has exited (reaping it).
    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit_status = Some(status);
                }
            }
        }
        self.exit_status
    }

    /// Client listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Admin listener port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `"127.0.0.1:PORT"` of the client listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"127.0.0.1:ADMIN_PORT"` of the admin listener.
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// `"redis://127.0.0.1:PORT"` of the client listener.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A `redis` crate client pointed at the proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap_or_else(|e| panic!("invalid redis url {}: {e}", self.url()))
    }

    /// A multiplexed async connection to the proxy, with bounded connect
    /// (5 s) and response (10 s) times.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        super::connect_async(&self.client(), &format!("tandem {}", self.addr())).await
    }

    /// Runs `redis-cli -p PORT ARGS...` against the proxy; returns trimmed
    /// stdout (error replies as `ERR ...` text). Panics if redis-cli fails
    /// to run or connect. Bounded to 5 s.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, None, args)
    }

    /// Raw `redis-cli` output against the proxy, whatever the exit status.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        redis_cli_output(self.port, None, args)
    }

    /// Everything the proxy wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Waits (bounded) until the log contains `needle`; panics with the log.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() >= timeout {
                panic!("tandem log did not contain {needle:?} within {timeout:?}\n--- tandem log ---\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// PID of the current (or most recent) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The instance's private directory (log file, config file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of `proxy.yaml` in the instance's directory (only exists if
    /// started from a config or after [`write_config`](Self::write_config)).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Overwrites `proxy.yaml` (atomically, via rename), e.g. before
    /// `signal("HUP")` to test config reload.
    pub fn write_config(&self, yaml: &str) {
        write_config_file(self.dir.path(), yaml);
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`, `"INT"`, `"KILL"`...) via
    /// `kill -s SIG PID`. Panics if the process has already been reaped,
    /// because its PID could then belong to an unrelated process.
    #[track_caller]
    pub fn signal(&self, sig: &str) {
        if self.child.is_none() || self.exit_status.is_some() {
            panic!("cannot send SIG{sig} to tandem (PID {}): it has already exited ({:?})", self.pid, self.exit_status);
        }
        // Not yet reaped by us, so the PID is still ours (at worst a zombie).
        let mut cmd = Command::new("kill");
        cmd.args(["-s", sig, &self.pid.to_string()]);
        let out = output_with_timeout(cmd, IO_TIMEOUT);
        if !out.status.success() {
            panic!("kill -s {sig} {} failed: {}", self.pid, String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Waits up to `timeout` for the process to exit; `Some(status)` if it
    /// did (also on later calls), `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.exit_status = wait_timeout(child, timeout);
            }
        }
        self.exit_status
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit_status().is_none()
    }

    /// Kills the proxy (SIGKILL by PID) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            if self.exit_status.is_none() {
                self.exit_status = child.try_wait().ok().flatten();
            }
        }
    }

    /// Stops the proxy if running and starts it again with the same ports,
    /// arguments and directory, waiting until ready.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_process();
        self.wait_ready();
    }
}

/// Writes `yaml` to `dir/proxy.yaml` via a temp file + rename, so a
/// concurrently reloading proxy never reads a half-written file.
/// With `TANDEM_TEST_WORKERS=N` in the environment, a config that does not choose `workers`
/// gets `workers: N`: `scripts/test.sh` runs the mirror and fault tests a second time that
/// way, on the multi-threaded runtime, as the rest of the suite runs the default one thread.
fn with_test_workers(yaml: &str) -> String {
    match std::env::var("TANDEM_TEST_WORKERS") {
        Ok(n) if !yaml.lines().any(|l| l.starts_with("workers:")) => format!("workers: {n}\n{yaml}"),
        _ => yaml.to_string(),
    }
}

fn write_config_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("proxy.yaml");
    let tmp = dir.join(".proxy.yaml.tmp");
    std::fs::write(&tmp, with_test_workers(yaml)).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("cannot rename config into {}: {e}", path.display()));
    path
}

impl Drop for Tandem {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- tandem log (PID {}, last {} lines) ---\n{}\n--- end tandem log ---",
                self.pid,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl std::fmt::Debug for Tandem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tandem")
            .field("addr", &self.addr())
            .field("admin", &self.admin_addr())
            .field("pid", &self.pid)
            .field("args", &self.args)
            .finish()
    }
}
