//! The migration tools: `backfill` copies the keys that existed before mirroring started,
//! `verify` compares both keyspaces, `repair` re-copies the keys that differ.
//!
//! They talk to the backends directly (not through a running proxy), read the same
//! `proxy.yaml` (or `--source` / `--target`), and are built to run beside live traffic: a
//! backfill never overwrites a key the mirror already wrote, and takes back a copy whose
//! source key was deleted while it was in flight.

pub mod backfill;
pub mod client;
pub mod copy;
pub mod repair;
pub mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::backend::BackendSettings;
use crate::config::Config;

/// Where the two stores are: a config file, flags, or both (flags win).
#[derive(clap::Args, Debug, Clone)]
pub struct Endpoints {
    /// The proxy's config file; its backends (and their credentials) are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Source URL (redis://host:port[/db]), overriding `backends.source.url`.
    #[arg(long)]
    pub source: Option<String>,
    /// Target URL, overriding `backends.target.url`.
    #[arg(long)]
    pub target: Option<String>,
}

impl Endpoints {
    /// The config and both backends' connection settings, or a message for the user.
    pub fn resolve(&self) -> Result<(Config, BackendSettings, BackendSettings), String> {
        let describe = |what: String, errors: crate::config::ConfigErrors| {
            let mut message = format!("{what}: {} problem(s)", errors.len());
            for e in errors.iter() {
                message.push_str(&format!("\n  {e}"));
            }
            message
        };
        let config = match &self.config {
            Some(path) => {
                let mut c = Config::load(path).map_err(|e| describe(path.display().to_string(), e))?;
                c.apply_overrides(None, None, self.source.clone(), self.target.clone())
                    .map_err(|e| describe("command line".into(), e))?;
                c
            }
            None => {
                if self.source.is_none() {
                    return Err("give --config proxy.yaml, or --source URL and --target URL".into());
                }
                Config::from_overrides(None, None, self.source.clone(), self.target.clone())
                    .map_err(|e| describe("command line".into(), e))?
            }
        };
        let Some(target) = &config.backends.target else {
            return Err("no target backend: set backends.target in the config or pass --target URL".into());
        };
        let source = crate::control::backend_settings("source", &config.backends.source);
        let target = crate::control::backend_settings("target", target);
        if source.addr == target.addr && source.db == target.db {
            return Err(format!("source and target are the same server ({} db {})", source.addr, source.db));
        }
        Ok((config, source, target))
    }
}

/// How a key is shown to people: as text when it is printable UTF-8, else with `\xNN` escapes.
pub fn key_display(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => key.escape_ascii().to_string(),
    }
}

/// How a key is written to reports: `{"key": "..."}`, or `{"key_hex": "..."}` when it is not
/// UTF-8 (so it can be read back exactly).
pub fn key_json(key: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(key) {
        Ok(s) => json!({ "key": s }),
        Err(_) => json!({ "key_hex": key.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// Reads a key back from a report or journal entry written by [`key_json`].
pub fn key_from_json(entry: &serde_json::Value) -> Option<Bytes> {
    if let Some(hex) = entry.get("key_hex").and_then(|v| v.as_str()) {
        if hex.len() % 2 != 0 {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Bytes::from);
    }
    entry.get("key").and_then(|v| v.as_str()).map(|s| Bytes::copy_from_slice(s.as_bytes()))
}

/// Holds a tool to `rate` keys per second on average (no limit when `None`).
pub struct RateLimit {
    rate: Option<f64>,
    start: Instant,
    admitted: u64,
}

impl RateLimit {
    pub fn new(rate: Option<f64>) -> RateLimit {
        RateLimit { rate: rate.filter(|r| *r > 0.0), start: Instant::now(), admitted: 0 }
    }

    /// Waits until `n` more keys fit under the rate.
    pub async fn admit(&mut self, n: usize) {
        self.admitted += n as u64;
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(self.admitted as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Progress shown while a tool runs: a bar on a terminal, a line every few seconds otherwise
/// (logs, CI), nothing with `--no-progress`.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    what: &'static str,
    last_line: Instant,
    start: Instant,
    total: u64,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(what: &'static str, total: u64, enabled: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = (enabled && tty).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} keys  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, lines: enabled && !tty, what, last_line: Instant::now(), start: Instant::now(), total }
    }

    /// Updates the position (keys done) and the counts shown beside it.
    pub fn update(&mut self, done: u64, counts: &str) {
        if let Some(bar) = &self.bar {
            if done > bar.length().unwrap_or(0) {
                bar.set_length(done);
            }
            bar.set_position(done);
            bar.set_message(counts.to_string());
        } else if self.lines && self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(0.001);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 && self.total > done {
                format!("{:.0}s", (self.total - done) as f64 / rate)
            } else {
                "-".into()
            };
            eprintln!("tandem {}: {done}/{} keys, {rate:.0} keys/s, ETA {eta}, {counts}", self.what, self.total);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs a tool's work on a single-threaded runtime (the work is I/O-bound, and the servers
/// keep the other cores). A failure to run at all is printed as `tandem <tool>: <message>`
/// and becomes exit status 2, the tools' "could not run".
pub fn run_tool<T>(tool: &str, work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, ExitCode> {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(work));
    result.map_err(|message| {
        eprintln!("tandem {tool}: {message}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_reports() {
        for key in [b"plain".as_slice(), b"sp ace", b"\xff\x00bin", b""] {
            let j = key_json(key);
            assert_eq!(key_from_json(&j).as_deref(), Some(key), "{j}");
        }
        assert_eq!(key_display(b"a\nb"), "a\\nb");
        assert_eq!(key_display(b"\xffz"), "\\xffz");
    }
}
