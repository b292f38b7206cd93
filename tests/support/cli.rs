//! Running the `tandem` CLI (`backfill`, `verify`, `repair`, `check`, ...) from a test: one
//! bounded run captured as a [`CliOut`], and the "verify finds the keyspaces identical" check
//! the migration, cluster and sentinel tests share.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one `tandem verify` run may take in [`verify_no_differences`].
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

/// Exit code and output of one `tandem` CLI run.
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub what: String,
}

impl CliOut {
    /// stdout parsed as exactly one JSON object (trailing text fails the parse).
    #[track_caller]
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("{}: stdout is not exactly one JSON document ({e})\n{self}", self.what);
        });
        assert!(v.is_object(), "{}: stdout is not a JSON object\n{self}", self.what);
        v
    }

    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "{}: unexpected exit code\n{self}", self.what);
        self
    }

    /// For a `tandem verify --json` run: asserts it found the two keyspaces identical
    /// (differences 0, exit 0) and returns the JSON summary.
    #[track_caller]
    pub fn expect_no_differences(&self) -> Value {
        let v = self.json();
        assert_eq!(v["differences"], 0, "verify found differences\n{self}");
        self.expect_code(0);
        v
    }
}

impl std::fmt::Display for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `["a", "b"]` as owned strings, for building argument lists.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `tandem ARGS...` in `cwd` (so a default file never lands in the repository), bounded by
/// `timeout`.
pub fn run_tandem<S: AsRef<str>>(cwd: &Path, args: &[S], timeout: Duration) -> CliOut {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cmd = Command::new(super::tandem_bin());
    cmd.args(&args).current_dir(cwd);
    let out = super::output_with_timeout(cmd, timeout);
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what: format!("tandem {}", args.join(" ")),
    }
}

/// `tandem verify --source S --target T --json --no-progress --ttl-tolerance 1s
/// --recheck-delay RECHECK_DELAY EXTRA...` in `cwd`, bounded by `timeout`.
pub fn verify(
    cwd: &Path,
    source: &str,
    target: &str,
    recheck_delay: &str,
    extra: &[&str],
    timeout: Duration,
) -> CliOut {
    let mut args = vec![
        "verify",
        "--source",
        source,
        "--target",
        target,
        "--json",
        "--no-progress",
        "--ttl-tolerance",
        "1s",
        "--recheck-delay",
        recheck_delay,
    ];
    args.extend_from_slice(extra);
    run_tandem(cwd, &args, timeout)
}

/// Runs `tandem verify --source S --target T --json --no-progress --ttl-tolerance 1s
/// --recheck-delay 200ms` in `dir` and asserts it found the two keyspaces identical (exit 0,
/// differences 0); returns the JSON summary.
#[track_caller]
pub fn verify_no_differences(dir: &Path, source_url: &str, target_url: &str) -> Value {
    let started = Instant::now();
    let out = verify(dir, source_url, target_url, "200ms", &[], VERIFY_TIMEOUT);
    let v = out.expect_no_differences();
    eprintln!("verify {source_url} -> {target_url}: {} in {:?}", out.stdout.trim(), started.elapsed());
    v
}
