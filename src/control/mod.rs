//! The control plane: every change to a running proxy, whether it comes from `proxy.yaml`
//! (file watch, a poll that also catches Kubernetes ConfigMap symlink swaps, SIGHUP) or from
//! the admin API, goes through [`Control`].
//!
//! Rules an operator can rely on:
//! - A new file is validated whole; an invalid one is rejected, the running config stays,
//!   and the error is logged, counted and shown in `/status`.
//! - The latest change wins, per field. A file edit applies `cutover.percent`, `mirror.mode`
//!   and `compare.percent` only if the file's own value for that field changed, so editing an
//!   unrelated limit never undoes a cutover made through the API.
//! - API changes are written to a small state file beside the config; after a restart they
//!   still hold, unless the file changed that field since.

pub mod ramp;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::backend::sentinel::Sentinels;
use crate::backend::{Backend, BackendSettings, Topology};
use crate::client::auth::Users;
use crate::config::{self, Config};
use crate::proto::request::Limits;
use crate::route::MirrorMode;
use crate::server::{FlipReport, Policy, Proxy};
use state::Persisted;

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeSource {
    Startup,
    File,
    Api,
    /// The automatic ramp (an advance or a guardrail rollback).
    Ramp,
}

/// What `/status` shows about configuration changes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlStatus {
    pub generation: u64,
    pub last_change: LastChange,
    pub last_reload_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    pub compare_percent: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LastChange {
    pub source: ChangeSource,
    pub at: String,
    pub what: String,
}

/// Command-line flags that override the file on every load.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
}

struct Inner {
    /// The file's config as last loaded successfully (with overrides applied).
    file: Config,
    file_digest: Option<[u8; 32]>,
    persisted: Persisted,
    /// What the settings read only at start (`read_at_start_only`) are in the running
    /// process: the config it started with, with `mirror.queue_len` updated whenever the
    /// backends, and so the queues, are replaced.
    running: Config,
}

pub struct Control {
    pub proxy: Arc<Proxy>,
    config_path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    overrides: Overrides,
    inner: tokio::sync::Mutex<Inner>,
    status: ArcSwap<ControlStatus>,
    /// The admin bearer token, if one is configured (reloadable).
    token: ArcSwap<Option<String>>,
    /// The automatic ramp, when `ramp:` is configured.
    ramp: std::sync::Mutex<Option<ramp::Ramp>>,
}

impl Control {
    /// Builds the proxy from a loaded config, applies any API changes persisted in the state
    /// file that the file has not overridden since, and returns the control plane.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        state_path: Option<PathBuf>,
        overrides: Overrides,
    ) -> anyhow::Result<Arc<Control>> {
        let state_path = state_path.or_else(|| config_path.as_ref().map(|p| state::path_for(p)));
        let persisted = state_path.as_deref().map(state::load).unwrap_or_default();
        let file_digest = config_path.as_deref().and_then(digest_file);

        let source = Backend::new(backend_settings("source", &config.backends.source));
        let target = config.backends.target.as_ref().map(|t| Backend::new(backend_settings("target", t)));
        let journal = match &config.mirror.journal {
            Some(path) => Some(Arc::new(
                crate::mirror::journal::Journal::open(path.clone(), config.mirror.journal_max_bytes)
                    .map_err(|e| anyhow::anyhow!("cannot open repair journal {}: {e}", path.display()))?,
            )),
            None => None,
        };
        // The file's values, then the persisted API values the file has not changed since.
        let (percent, mode, compare, what) = persisted.effective(&config);
        let routing = crate::route::Routing::new(percent, mode, target.is_some());
        let compare_log = match &config.compare.log {
            Some(path) => Some(
                crate::mirror::journal::Journal::open(path.clone(), config.compare.log_max_bytes)
                    .map_err(|e| anyhow::anyhow!("cannot open compare log {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut compare_settings = compare_settings(&config);
        compare_settings.percent = compare;
        let proxy = Proxy::new(
            policy(&config),
            routing,
            source,
            target,
            config.mirror.queue_len as usize,
            journal,
            (compare_settings, compare_log),
        );
        proxy.client_tls.store(Arc::new(config.tls_server().cloned()));
        if let Some(what) = &what {
            tracing::info!(restored = %what, "applied changes made through the admin API before the restart");
        }
        let token = config.admin.token().map(|t| t.expose().to_string());
        let status = ControlStatus {
            generation: 1,
            last_change: LastChange {
                source: if what.is_some() { ChangeSource::Api } else { ChangeSource::Startup },
                at: rfc3339(SystemTime::now()),
                what: what.unwrap_or_else(|| "started".into()),
            },
            last_reload_error: None,
            reloads_ok: 0,
            reloads_error: 0,
            compare_percent: compare,
        };
        proxy.metrics.config_generation.set(1);
        Ok(Arc::new(Control {
            proxy,
            config_path,
            state_path,
            overrides,
            inner: tokio::sync::Mutex::new(Inner { running: config.clone(), file: config, file_digest, persisted }),
            status: ArcSwap::from_pointee(status),
            token: ArcSwap::from_pointee(token),
            ramp: std::sync::Mutex::new(None),
        }))
    }

    /// Starts the ramp from the config (if any) and the task that drives it: every second it
    /// samples the target's traffic, checks the guardrails, and advances or rolls back.
    pub fn drive_ramp(self: &Arc<Control>, config: Option<&config::Ramp>) {
        self.set_ramp(config);
        let control = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            let mut history = LatencyHistory::default();
            loop {
                interval.tick().await;
                control.ramp_tick(&mut history).await;
            }
        });
    }

    fn set_ramp(&self, config: Option<&config::Ramp>) {
        let current = self.proxy.routing.load().plan.percent();
        let next = config.map(|c| ramp::Ramp::new(ramp_config(c), current, std::time::Instant::now()));
        if next.is_some() {
            tracing::info!(steps = ?config.map(|c| &c.steps), "cutover ramp started");
        }
        *self.ramp.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Pauses the ramp after an operator's own change: a person is steering now.
    fn pause_ramp(&self, why: &str) {
        if let Some(r) = self.ramp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.pause(why);
        }
    }

    /// The ramp's status for `/status`.
    pub fn ramp_status(&self) -> Option<ramp::RampStatus> {
        let unix_ms = crate::unix_ms();
        self.ramp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.status(std::time::Instant::now(), unix_ms))
    }

    async fn ramp_tick(&self, history: &mut LatencyHistory) {
        let metrics = &self.proxy.metrics;
        let (target_requests, target_errors) = metrics.serving_counts(crate::route::Side::Target);
        // The guardrail judges p99 over its whole window, not the last second's few samples.
        let window = self.inner.lock().await.file.ramp.as_ref().map(|r| r.guardrails.window).unwrap_or_default();
        let now_readings =
            [crate::route::Side::Source, crate::route::Side::Target].map(|side| metrics.serving_latency_buckets(side));
        let p99 = history.p99_over(window, now_readings);
        let (compared, mismatches) = self.proxy.compare.compared_and_mismatched();
        let sample = ramp::Sample {
            target_requests,
            target_errors,
            compared,
            mismatches,
            target_p99_ms: p99[1],
            source_p99_ms: p99[0],
        };
        let current = self.proxy.routing.load().plan.percent();
        let now = std::time::Instant::now();
        let decision = {
            let mut guard = self.ramp.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = guard.as_mut() else { return };
            r.observe(now, sample);
            r.tick(now, current)
        };
        let (to, what) = match decision {
            ramp::Decision::Hold | ramp::Decision::Done => return,
            ramp::Decision::Advance { to } => {
                metrics.ramp_advances.inc();
                (to, format!("ramp {current} -> {to}"))
            }
            ramp::Decision::Rollback { to, reason } => {
                metrics.guardrail_rollbacks.inc();
                tracing::warn!(from = current, to, reason = %reason, "guardrail tripped: rolling the cutover back");
                (to, format!("guardrail rollback {current} -> {to}: {reason}"))
            }
        };
        let mut inner = self.inner.lock().await;
        // An operator may have changed the cutover (or paused the ramp) while this decision
        // waited for the lock: the operator's change stands.
        let still_current = self.proxy.routing.load().plan.percent() == current;
        let still_running =
            self.ramp.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|r| {
                matches!(r.status(now, 0).state, ramp::RampState::Running | ramp::RampState::RolledBack)
            });
        if !still_current || !still_running {
            tracing::info!(decision = %what, "ramp decision dropped: the cutover changed meanwhile");
            return;
        }
        let report = self.proxy.set_cutover(to).await;
        if !report.applied {
            // Tried again on the next tick.
            tracing::warn!(decision = %what, reason = report.reason.as_deref().unwrap_or(""), "ramp decision not applied yet");
            return;
        }
        // Kept across restarts like an API change.
        let inner = &mut *inner;
        inner.persisted.cutover = Some(to);
        inner.persisted.record_file(&inner.file);
        self.save(&inner.persisted);
        if let Some(r) = self.ramp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.advanced(std::time::Instant::now(), to);
        }
        tracing::info!(change = %what, "cutover changed by the ramp");
        self.update_status(|s| {
            s.generation += 1;
            s.last_change =
                LastChange { source: ChangeSource::Ramp, at: rfc3339(SystemTime::now()), what: what.clone() };
        });
    }

    pub fn status(&self) -> Arc<ControlStatus> {
        self.status.load_full()
    }

    /// The admin bearer token, if one is required.
    pub fn token(&self) -> Option<String> {
        Option::clone(&self.token.load())
    }

    /// Watches the config file: filesystem events, a poll every `poll` (which also catches
    /// ConfigMap `..data` symlink swaps that some watchers miss), and SIGHUP.
    pub fn watch(self: &Arc<Control>, poll: Duration, file_events: bool) {
        let Some(path) = self.config_path.clone() else { return };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(16);
        // Filesystem events on the directory (a ConfigMap swaps a symlink next to the file).
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let events = tx.clone();
        let file_name = path.file_name().map(|n| n.to_os_string());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            // Only changes count: reading the file (as every reload check does) raises access
            // events, and reacting to those would make each check trigger the next.
            if matches!(event.kind, notify::EventKind::Access(_) | notify::EventKind::Other) {
                return;
            }
            // The config file itself, or a ConfigMap's `..data` symlink swap beside it.
            let relevant = event.paths.iter().any(|p| {
                let name = p.file_name();
                name == file_name.as_deref() || name.and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".."))
            });
            if relevant {
                let _ = events.try_send("file event");
            }
        });
        let watcher = match watcher {
            Ok(_) if !file_events => None,
            Ok(mut w) => {
                use notify::Watcher;
                match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch config directory; polling only");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; polling only");
                None
            }
        };
        let ticks = tx.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(poll);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if ticks.send("poll").await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                if tx.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
        let control = self.clone();
        tokio::spawn(async move {
            let _keep = watcher;
            while let Some(why) = rx.recv().await {
                control.reload(why == "SIGHUP", why).await;
            }
        });
    }

    /// Loads the file again if it changed (or always, when `force`), validates it whole and
    /// applies it.
    pub async fn reload(&self, force: bool, why: &str) {
        let Some(path) = &self.config_path else { return };
        let mut inner = self.inner.lock().await;
        let digest = digest_file(path);
        if !force && digest == inner.file_digest {
            return;
        }
        let loaded = Config::load(path).and_then(|mut c| {
            let o = &self.overrides;
            c.apply_overrides(o.listen.clone(), o.admin.clone(), o.source.clone(), o.target.clone())?;
            Ok(c)
        });
        let new = match loaded {
            Ok(c) => c,
            Err(errors) => {
                let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                tracing::error!(trigger = why, errors = %text, "config reload rejected; keeping the running config");
                self.proxy.metrics.reloads.with_label_values(&["error"]).inc();
                // Remember the digest so a bad file is reported once, not every poll.
                inner.file_digest = digest;
                self.update_status(|s| {
                    s.last_reload_error = Some(text.clone());
                    s.reloads_error += 1;
                });
                return;
            }
        };
        let old = std::mem::replace(&mut inner.file, new.clone());
        inner.file_digest = digest;
        let mut what = Vec::new();
        // A change the file asks for that could not be made yet (reported in /status).
        let mut pending: Option<String> = None;
        let later = read_at_start_only(&inner.running, &new, backends_changed(&old, &new));
        if !later.is_empty() {
            let fields = later.join(", ");
            tracing::warn!(fields = %fields, "changed in the config file but read only at start; restart tandem to apply");
            what.push(format!("{fields} kept until restart"));
        }

        self.proxy.policy.store(Arc::new(policy(&new)));
        // Certificate files are read again on every reload: rotation is rewrite + reload.
        self.proxy.client_tls.store(Arc::new(new.tls_server().cloned()));
        self.token.store(Arc::new(new.admin.token().map(|t| t.expose().to_string())));
        if backends_changed(&old, &new) {
            let source = Backend::new(backend_settings("source", &new.backends.source));
            let target = new.backends.target.as_ref().map(|t| Backend::new(backend_settings("target", t)));
            if target.is_none() {
                // Cleanup (the old target is now the source) or a rollback of the whole
                // migration: with one backend there is no split and nothing to mirror to,
                // whatever was set through the API before.
                self.pause_ramp("the target backend was removed");
                let mut routing = crate::route::Routing::clone(&self.proxy.routing.load_full());
                routing.plan = crate::route::CutoverPlan::new(0.0);
                routing.mirror = MirrorMode::Off;
                routing.moving = None;
                self.proxy.routing.store(Arc::new(routing));
                self.proxy.metrics.cutover_percent.set(0.0);
                inner.persisted = Persisted::default();
            }
            self.proxy.replace_backends(source, target, new.mirror.queue_len as usize);
            inner.running.mirror.queue_len = new.mirror.queue_len;
            what.push("backends".to_string());
        }
        if new.ramp != old.ramp {
            self.set_ramp(new.ramp.as_ref());
            what.push("ramp".to_string());
        }
        if new.mirror.mode != old.mirror.mode {
            self.pause_ramp("operator changed the mirror mode in the config file");
            self.proxy.set_mirror_mode(mirror_mode(new.mirror.mode));
            inner.persisted.mirror = None;
            what.push(format!("mirror {:?} -> {:?}", old.mirror.mode, new.mirror.mode).to_lowercase());
        }
        let mut settings = compare_settings(&new);
        settings.percent = self.proxy.compare.settings().percent;
        self.proxy.compare.set_settings(settings);
        if new.compare.percent != old.compare.percent {
            inner.persisted.compare = None;
            let p = new.compare.percent;
            self.proxy.compare.set_percent(p);
            self.update_status(|s| s.compare_percent = p);
            what.push(format!("compare {} -> {}", old.compare.percent, p));
        }
        if new.cutover.percent != old.cutover.percent {
            self.pause_ramp("operator changed the cutover in the config file");
            inner.persisted.cutover = None;
            let report = self.proxy.set_cutover(new.cutover.percent).await;
            if report.applied {
                what.push(format!("cutover {} -> {}", report.from_percent, report.to_percent));
            } else {
                // Keep the file's value pending: the next poll loads the file again and retries.
                inner.file_digest = None;
                inner.file.cutover.percent = report.from_percent;
                let why =
                    format!("cutover {} not applied yet: {}", new.cutover.percent, report.reason.unwrap_or_default());
                pending = Some(why.clone());
                what.push(why);
            }
        }
        inner.persisted.record_file(&new);
        self.save(&inner.persisted);
        let what = if what.is_empty() { "config reloaded".to_string() } else { what.join(", ") };
        tracing::info!(trigger = why, change = %what, "config reloaded");
        self.proxy.metrics.reloads.with_label_values(&["ok"]).inc();
        self.update_status(|s| {
            s.generation += 1;
            s.last_reload_error = pending.clone();
            s.reloads_ok += 1;
            s.last_change =
                LastChange { source: ChangeSource::File, at: rfc3339(SystemTime::now()), what: what.clone() };
        });
    }

    /// Moves the cutover (admin API).
    pub async fn set_cutover(&self, percent: f64, what: &str) -> FlipReport {
        let mut inner = self.inner.lock().await;
        self.pause_ramp(&format!("operator {what} through the admin API"));
        let report = self.proxy.set_cutover(percent).await;
        if report.applied {
            inner.persisted.cutover = Some(report.to_percent);
            self.api_changed(&mut inner, format!("{what} {} -> {}", report.from_percent, report.to_percent));
        }
        report
    }

    /// Changes the mirror mode (admin API).
    pub async fn set_mirror(&self, mode: MirrorMode) {
        let mut inner = self.inner.lock().await;
        self.pause_ramp("operator changed the mirror mode through the admin API");
        let from = self.proxy.routing.load().mirror;
        self.proxy.set_mirror_mode(mode);
        inner.persisted.mirror = Some(mode_name(mode).to_string());
        self.api_changed(&mut inner, format!("mirror {} -> {}", mode_name(from), mode_name(mode)));
    }

    /// Changes the share of compared reads (admin API).
    pub async fn set_compare(&self, percent: f64) {
        let mut inner = self.inner.lock().await;
        let from = self.status.load().compare_percent;
        inner.persisted.compare = Some(percent);
        self.proxy.compare.set_percent(percent);
        self.update_status(|s| s.compare_percent = percent);
        self.api_changed(&mut inner, format!("compare {from} -> {percent}"));
    }

    fn api_changed(&self, inner: &mut Inner, what: String) {
        inner.persisted.record_file(&inner.file);
        self.save(&inner.persisted);
        tracing::info!(change = %what, "changed through the admin API");
        self.update_status(|s| {
            s.generation += 1;
            s.last_change =
                LastChange { source: ChangeSource::Api, at: rfc3339(SystemTime::now()), what: what.clone() };
        });
    }

    fn save(&self, persisted: &Persisted) {
        if let Some(path) = &self.state_path {
            if let Err(e) = state::save(path, persisted) {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the state file; API changes will not survive a restart");
            }
        }
    }

    fn update_status(&self, f: impl Fn(&mut ControlStatus)) {
        self.status.rcu(|s| {
            let mut next = ControlStatus::clone(s);
            f(&mut next);
            next
        });
        self.proxy.metrics.config_generation.set(self.status.load().generation as i64);
    }
}

fn compare_settings(c: &Config) -> crate::compare::CompareSettings {
    crate::compare::CompareSettings {
        percent: c.compare.percent,
        recheck_delay: c.compare.recheck_delay,
        ttl_tolerance: c.compare.ttl_tolerance,
        log_values: c.compare.log_values,
    }
}

/// The ramp section of the config as the ramp state machine takes it.
pub fn ramp_config(c: &config::Ramp) -> ramp::RampConfig {
    ramp::RampConfig {
        steps: c.steps.clone(),
        hold: c.hold,
        guardrails: ramp::Guardrails {
            window: c.guardrails.window,
            max_target_error_ratio: c.guardrails.max_target_error_ratio,
            max_mismatch_ratio: c.guardrails.max_mismatch_ratio,
            max_p99_ratio: c.guardrails.max_p99_ratio,
            min_requests: c.guardrails.min_requests,
        },
    }
}

/// Cumulative latency histogram readings (source, target) taken each ramp tick, kept for
/// one guardrail window so p99 can be computed over the window.
#[derive(Default)]
struct LatencyHistory {
    readings: std::collections::VecDeque<(std::time::Instant, [Buckets; 2])>,
}

/// A cumulative histogram reading: (upper bound in seconds, count at or below it).
type Buckets = Vec<(f64, u64)>;

impl LatencyHistory {
    /// Records `now` and returns the p99 (ms) of source and target over the last `window`.
    fn p99_over(&mut self, window: Duration, now: [Buckets; 2]) -> [f64; 2] {
        let at = std::time::Instant::now();
        while self.readings.len() > 1 && self.readings.get(1).is_some_and(|(t, _)| at.duration_since(*t) >= window) {
            self.readings.pop_front();
        }
        let p99 = match self.readings.front() {
            Some((_, oldest)) => [windowed_p99_ms(&oldest[0], &now[0]), windowed_p99_ms(&oldest[1], &now[1])],
            None => [0.0, 0.0],
        };
        self.readings.push_back((at, now));
        p99
    }
}

/// The 99th percentile (ms) of the observations between two readings of a cumulative
/// histogram; 0 when there were none.
fn windowed_p99_ms(before: &[(f64, u64)], now: &[(f64, u64)]) -> f64 {
    let delta = |i: usize| now[i].1 - before.get(i).map(|b| b.1).unwrap_or(0).min(now[i].1);
    let Some(last) = now.len().checked_sub(1) else { return 0.0 };
    let total = delta(last);
    if total == 0 {
        return 0.0;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    (0..now.len()).find(|&i| delta(i) >= rank).map(|i| now[i].0 * 1000.0).unwrap_or(now[last].0 * 1000.0)
}

fn digest_file(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|bytes| Sha256::digest(&bytes).into())
}

/// The fields `new` sets differently from the `running` process that a reload cannot
/// apply: they are read only when tandem starts (`mirror.queue_len` also when the backends
/// change, as they do in this reload when `backends_replaced`).
fn read_at_start_only(running: &Config, new: &Config, backends_replaced: bool) -> Vec<&'static str> {
    let changed = [
        ("listen", running.listen != new.listen),
        ("admin.listen", running.admin.listen != new.admin.listen),
        ("log", running.log != new.log),
        ("workers", running.workers != new.workers),
        ("mirror.journal", running.mirror.journal != new.mirror.journal),
        ("mirror.journal_max_bytes", running.mirror.journal_max_bytes != new.mirror.journal_max_bytes),
        ("mirror.queue_len", !backends_replaced && running.mirror.queue_len != new.mirror.queue_len),
        ("compare.log", running.compare.log != new.compare.log),
        ("compare.log_max_bytes", running.compare.log_max_bytes != new.compare.log_max_bytes),
    ];
    changed.into_iter().filter(|(_, differs)| *differs).map(|(field, _)| field).collect()
}

fn backends_changed(old: &Config, new: &Config) -> bool {
    let key = |b: &config::Backend| {
        (
            b.url.to_string(),
            b.username.clone(),
            b.password().map(|p| p.expose().to_string()),
            b.pool_size,
            b.connect_timeout,
            b.command_timeout,
            b.reconnect_backoff.min,
            b.reconnect_backoff.max,
            b.tls.clone(),
        )
    };
    key(&old.backends.source) != key(&new.backends.source)
        || old.backends.target.as_ref().map(key) != new.backends.target.as_ref().map(key)
}

/// How a backend section of the config becomes connection settings.
pub fn backend_settings(name: &str, b: &config::Backend) -> BackendSettings {
    BackendSettings {
        name: name.into(),
        addr: b.url.addr(),
        db: b.url.db,
        username: b.username.clone(),
        password: b.password().map(|s| s.expose().to_string()),
        pool_size: b.pool_size as usize,
        connect_timeout: b.connect_timeout,
        command_timeout: b.command_timeout,
        backoff_min: b.reconnect_backoff.min,
        backoff_max: b.reconnect_backoff.max,
        tls: b.tls_client().cloned(),
        topology: match &b.url.topology {
            config::url::Topology::Single => Topology::Single,
            config::url::Topology::Cluster => Topology::Cluster { seeds: b.url.addrs() },
            config::url::Topology::Sentinel { master } => {
                Topology::Sentinel(Sentinels::new(name.into(), b.url.addrs(), master.clone(), b.connect_timeout))
            }
        },
    }
}

/// What the config says about serving clients, in the form the per-command path reads.
pub fn policy(config: &Config) -> Policy {
    let mut users = Users::default();
    for u in &config.auth.users {
        if let Some(p) = u.password() {
            users.add_password(&u.name, p.expose(), u.read_only);
        } else if let Some(d) = u.password_sha256_digest() {
            users.add_digest(&u.name, *d, u.read_only);
        }
    }
    let l = &config.limits;
    Policy {
        limits: Limits { max_bulk_len: l.max_bulk_len as usize, max_array_len: l.max_array_len as usize },
        max_clients: l.max_clients as usize,
        idle_timeout: (!l.idle_timeout.is_zero()).then_some(l.idle_timeout),
        max_pipeline: l.max_pipeline as usize,
        users,
        allow: config.allow_commands.clone(),
        mirror_timeout: config.mirror.timeout,
        flip_timeout: config.cutover.flip_timeout,
    }
}

pub fn mirror_mode(mode: config::MirrorMode) -> MirrorMode {
    match mode {
        config::MirrorMode::Off => MirrorMode::Off,
        config::MirrorMode::Async => MirrorMode::Async,
        config::MirrorMode::Sync => MirrorMode::Sync,
    }
}

pub fn mode_name(mode: MirrorMode) -> &'static str {
    match mode {
        MirrorMode::Off => "off",
        MirrorMode::Async => "async",
        MirrorMode::Sync => "sync",
    }
}

/// `2026-11-23T11:40:00Z`
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_computed_over_the_whole_window() {
        let mut h = LatencyHistory::default();
        let reading = |fast: u64, slow: u64| vec![(0.001, fast), (0.1, fast + slow)];
        // First reading: nothing to compare against yet.
        assert_eq!(h.p99_over(Duration::from_secs(60), [reading(0, 0), reading(0, 0)]), [0.0, 0.0]);
        // 1000 fast requests, then one slow one: over the window, p99 is still fast.
        h.p99_over(Duration::from_secs(60), [reading(1000, 0), reading(1000, 0)]);
        let p = h.p99_over(Duration::from_secs(60), [reading(1000, 0), reading(1000, 1)]);
        assert_eq!(p, [1.0, 1.0], "over the window, one slow request in 1001 leaves p99 in the 1 ms bucket");
        // A zero-length window only looks at the latest step: the slow request dominates.
        let mut short = LatencyHistory::default();
        short.p99_over(Duration::ZERO, [reading(1000, 0), reading(1000, 0)]);
        assert_eq!(short.p99_over(Duration::ZERO, [reading(1000, 0), reading(1000, 1)])[1], 100.0);
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(1_795_434_000)), "2026-11-23T11:40:00Z");
    }
}
