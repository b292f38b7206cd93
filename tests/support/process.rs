//! Child-process plumbing shared by [`super::RedisServer`] and [`super::Tandem`]:
//! bounded command execution, kill-by-PID ownership and liveness checks.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Is there a live (non-zombie) process with this PID?
///
/// Looks at `/proc/PID/stat`: a missing entry means the PID is gone (reaped);
/// state `Z` means it exited but was not yet reaped, which we also count as
/// "not alive" because it no longer runs or holds sockets.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) S ..."; comm may contain spaces/parens, so take the
    // state after the *last* ')'.
    match stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) {
        Some(state) => state != "Z" && state != "X",
        None => true,
    }
}

/// Opens `path` for appending and returns two handles usable as a child's
/// stdout and stderr, so both streams land interleaved in one log file.
/// Appending (rather than truncating) keeps the history across restarts.
pub(crate) fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()));
    let err = file.try_clone().unwrap_or_else(|e| panic!("cannot clone log file handle {}: {e}", path.display()));
    (Stdio::from(file), Stdio::from(err))
}

/// Kills `child` (SIGKILL, by its PID via the `Child` handle) and reaps it.
///
/// Safe to call on a child that already exited: std makes `kill` a no-op
/// once the status has been collected, and an unreaped zombie still holds
/// its PID so the signal cannot hit an unrelated process.
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    // After SIGKILL the exit is immediate; still bound the wait so a process
    // stuck in uninterruptible sleep cannot hang the test suite.
    let _ = wait_timeout(child, Duration::from_secs(5));
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("try_wait on child {} failed: {e}", child.id()),
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return None;
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with captured stdout/stderr, killing it (by PID)
/// and panicking if it takes longer than `timeout`.
///
/// std's `Command::output` has no timeout; a hung `redis-cli` (e.g. against a
/// blackholed proxy) would otherwise hang the whole test binary.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing_binary(&program, &e),
        _ => panic!("cannot spawn {desc}: {e}"),
    });
    // Drain both pipes on helper threads so a chatty child cannot block on a
    // full pipe while we wait for it.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            kill_and_reap(&mut child);
            let stdout = out_t.join().unwrap_or_default();
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "{desc} did not finish within {timeout:?}; killed it.\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

/// Path of the `redis-cli` binary (`REDIS_CLI_BIN` overrides `PATH` lookup).
pub(crate) fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".to_string())
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT [auth] ARGS...` (bounded by
/// [`super::IO_TIMEOUT`]) and returns the raw output, whatever the exit code.
///
/// Note that redis-cli exits 0 for error *replies* (it prints `ERR ...` on
/// stdout) and non-zero for connection failures.
pub fn redis_cli_output(port: u16, password: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(redis_cli_bin());
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    cmd.args(args);
    output_with_timeout(cmd, super::IO_TIMEOUT)
}

/// [`redis_cli_output`] that returns trimmed stdout and panics (with stderr)
/// if redis-cli itself failed, e.g. could not connect.
#[track_caller]
pub(crate) fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let out = redis_cli_output(port, password, args);
    if !out.status.success() {
        panic!(
            "redis-cli -p {port} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Panic message for a missing binary, pointing at the documented fix.
pub(crate) fn missing_binary(bin: &str, err: &std::io::Error) -> ! {
    panic!(
        "cannot run `{bin}` ({err}). The integration tests need a real Redis \
         (redis-server, redis-cli). Run the test command from the README, which \
         installs them (Debian/Ubuntu package `redis-server`), or point \
         REDIS_SERVER_BIN / REDIS_CLI_BIN at the binaries."
    )
}
