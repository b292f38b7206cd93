//! The ramp with guardrails: walks the cutover share (percent of hash slots served by the
//! target) up through configured steps while health checks hold, and rolls it back by itself
//! when they trip.
//!
//! Why it exists:
//!
//! - **A ramp lets an operator walk away.** Moving from 0% to 100% by hand means hours of
//!   watching graphs and typing the next percentage. The ramp holds each step for `hold` and
//!   takes the next one only once the current one has carried real traffic without tripping.
//! - **Guardrails bound the damage.** A target that errors, returns different data or is much
//!   slower than the source is noticed within one sliding `window`, and at that point it serves
//!   only the share of the step that exposed it. Nobody needs to be awake for that.
//! - **Rollback goes to the last step that held, not to 0.** Earlier steps ran healthy on real
//!   traffic for a full hold, so they are proven safe. Falling all the way back would throw that
//!   progress away and move more slots than the fault requires (every slot move drains commands
//!   in flight). A rollback is final: the ramp stays rolled back until an operator resumes it,
//!   because a fault that tripped once is for a person to understand, not for a timer to retry.
//!
//! This module is pure logic, with no I/O and no clock reads. The proxy's control loop samples
//! its counters, feeds them in with [`Ramp::observe`], asks [`Ramp::tick`] what to do, applies the
//! decision to the cutover and reports that with [`Ramp::advanced`]:
//!
//! ```text
//! every second:
//!     ramp.observe(now, sample);
//!     match ramp.tick(now, plan.percent()) {
//!         Decision::Advance { to } | Decision::Rollback { to, .. } => {
//!             flip_cutover(to).await?;            // on failure: no advanced(), the next tick asks again
//!             ramp.advanced(Instant::now(), to);
//!         }
//!         Decision::Hold | Decision::Done => {}
//!     }
//! ```
//!
//! Rules that go beyond the obvious ones:
//!
//! - A step can only be "held" with evidence. Besides lasting `hold`, the window must contain at
//!   least `min_requests` target requests when the step is due. Otherwise the ramp waits: a quiet
//!   night must not carry the cutover to 100% on no data. The 0% position is the exception,
//!   because the target serves nothing there.
//! - A ramp started at 0% takes its first step at once. A ramp started at a non-zero cutover,
//!   and any resumed ramp, first holds the cutover in force, like any step, because that cutover
//!   has not yet been judged.
//! - If `tick` sees a cutover it did not set, someone changed it by hand without telling the ramp.
//!   The ramp pauses, just as [`Ramp::pause`] would. The one exception is the target of the
//!   `Advance` it just handed out: that is taken as applied, even though [`Ramp::advanced`] was not called.
//! - A rollback goes to the highest cutover that held under this ramp and is below the current one,
//!   or to 0 if none did.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Hard cap on the samples kept in the window. Samples closer together than `window / 2500`
/// are merged (the newer replaces the older, and the counts are added), so in practice the
/// window keeps at most about 5,000 samples however often the proxy samples. This cap is only a backstop.
const MAX_SAMPLES: usize = 10_000;

/// A new sample replaces the newest stored one when it is less than `window / MERGE_DIVISOR`
/// after the stored sample before that one. So any two stored samples that are two apart are at
/// least that far apart, and the window holds at most about `2 * MERGE_DIVISOR` samples.
const MERGE_DIVISOR: u32 = (MAX_SAMPLES / 4) as u32;

/// Tolerance when comparing cutover percentages (they go through config parsing and arithmetic).
const EPS: f64 = 1e-9;

/// Health checks that gate every step. A check that trips rolls the cutover back.
#[derive(Clone, Debug, PartialEq)]
pub struct Guardrails {
    /// Length of the sliding window the ratios are computed over.
    pub window: Duration,
    /// Roll back when target errors / target requests over the window exceeds this.
    pub max_target_error_ratio: f64,
    /// Roll back when confirmed compare mismatches / compared reads over the window exceeds this.
    pub max_mismatch_ratio: f64,
    /// Roll back when target p99 latency exceeds this multiple of the source's p99 (both
    /// measured over the window, by the caller).
    pub max_p99_ratio: f64,
    /// Ratios are only judged once the window holds at least this many target requests
    /// (compared reads, for the mismatch ratio), so 1 error out of 2 requests does not trip.
    /// A step also needs this much traffic before it counts as held.
    pub min_requests: u64,
}

impl Default for Guardrails {
    /// 60s window, 1% target errors, 0.1% mismatches, 3x the source's p99, 100 requests.
    fn default() -> Guardrails {
        Guardrails {
            window: Duration::from_secs(60),
            max_target_error_ratio: 0.01,
            max_mismatch_ratio: 0.001,
            max_p99_ratio: 3.0,
            min_requests: 100,
        }
    }
}

/// What the ramp walks through and how carefully.
#[derive(Clone, Debug, PartialEq)]
pub struct RampConfig {
    /// Cutover percents in ascending order, e.g. `[5, 25, 50, 100]`.
    pub steps: Vec<f64>,
    /// Time spent at each step, healthy, before the ramp advances (e.g. 10 minutes).
    pub hold: Duration,
    /// Health checks that must hold at every step.
    pub guardrails: Guardrails,
}

/// Cumulative counters and current latency readings, sampled by the proxy (e.g. every second).
///
/// Counters only ever grow, except when the process restarts them. A smaller value than the
/// previous sample's is read as a reset, and the new value is taken as the increase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Commands served by the target (cutover traffic, not mirrored writes).
    pub target_requests: u64,
    /// Of those, the ones that failed (error replies, timeouts, connection errors).
    pub target_errors: u64,
    /// Reads that were also sent to the target and compared.
    pub compared: u64,
    /// Comparisons that still differed after the recheck.
    pub mismatches: u64,
    /// Target p99 latency over the window, in milliseconds (0: unknown).
    pub target_p99_ms: f64,
    /// Source p99 latency over the window, in milliseconds (0: unknown).
    pub source_p99_ms: f64,
}

/// What [`Ramp::tick`] asks the caller to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do now.
    Hold,
    /// Raise the cutover to `to` (a configured step), then call [`Ramp::advanced`].
    Advance {
        /// The next configured step above the current cutover.
        to: f64,
    },
    /// A guardrail tripped. Lower the cutover to `to`, then call [`Ramp::advanced`]. The ramp
    /// is now rolled back and will not move again unless resumed.
    Rollback {
        /// The highest cutover that held under this ramp below the current one, or 0.
        to: f64,
        /// Which check tripped, with its value and threshold, e.g. "target error ratio 0.120 >
        /// 0.010 over 60s (37 errors / 308 requests)".
        reason: String,
    },
    /// The last step has held. The ramp is finished.
    Done,
}

/// Where the ramp stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RampState {
    /// Holding steps and advancing while the guardrails hold.
    Running,
    /// Stopped by an operator (or a cutover change made by hand). Waits for [`Ramp::resume`].
    Paused,
    /// The last step held.
    Done,
    /// A guardrail tripped and the cutover was sent back. Waits for [`Ramp::resume`].
    RolledBack,
}

/// The ramp as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RampStatus {
    /// The configured steps.
    pub steps: Vec<f64>,
    /// Index of the step in force: the highest configured step at or below the cutover the ramp
    /// knows about. None while below the first step.
    pub step: Option<usize>,
    /// Running, paused, done or rolled back.
    pub state: RampState,
    /// Time left before the current step has been held long enough to advance, while running
    /// (0: due, and waiting for enough traffic to judge or for the caller to apply it). None
    /// otherwise.
    pub next_in_ms: Option<u64>,
    /// The rollback that stopped the ramp, if any. It is kept after a resume.
    pub last_rollback: Option<RollbackInfo>,
    /// Why the ramp is paused, while it is.
    pub paused_reason: Option<String>,
}

/// A rollback the ramp decided.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackInfo {
    /// When it was decided, in Unix milliseconds.
    pub at_unix_ms: u64,
    /// Cutover percent it rolled back from.
    pub from: f64,
    /// Cutover percent it rolled back to.
    pub to: f64,
    /// Which check tripped (see [`Decision::Rollback`]).
    pub reason: String,
}

/// The counters' growth between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    errors: u64,
    compared: u64,
    mismatches: u64,
}

impl Counts {
    /// Growth from `prev` to `cur`. If a counter went down, it was reset, and its new value is
    /// taken as the growth.
    fn between(prev: &Sample, cur: &Sample) -> Counts {
        fn grew(prev: u64, cur: u64) -> u64 {
            if cur >= prev {
                cur - prev
            } else {
                cur
            }
        }
        Counts {
            requests: grew(prev.target_requests, cur.target_requests),
            errors: grew(prev.target_errors, cur.target_errors),
            compared: grew(prev.compared, cur.compared),
            mismatches: grew(prev.mismatches, cur.mismatches),
        }
    }

    fn plus(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_add(other.requests),
            errors: self.errors.saturating_add(other.errors),
            compared: self.compared.saturating_add(other.compared),
            mismatches: self.mismatches.saturating_add(other.mismatches),
        }
    }
}

/// A stored sample and how much the counters grew since the previous stored one.
#[derive(Clone, Copy, Debug)]
struct Point {
    at: Instant,
    sample: Sample,
    grown: Counts,
}

/// What the window says.
#[derive(Clone, Copy, Debug, Default)]
struct WindowStats {
    /// Time between the oldest and newest samples.
    span: Duration,
    counts: Counts,
    target_p99_ms: f64,
    source_p99_ms: f64,
}

/// A rollback, timed by the monotonic clock (converted to Unix time only for display).
#[derive(Clone, Debug)]
struct Rollback {
    at: Instant,
    from: f64,
    to: f64,
    reason: String,
}

/// Walks the cutover up through the configured steps while the guardrails hold. See the module
/// docs for the rules.
#[derive(Clone, Debug)]
pub struct Ramp {
    cfg: RampConfig,
    state: RampState,
    /// The cutover the ramp believes is in force.
    position: f64,
    /// When the hold at `position` started. None means the first step is due at once.
    since: Option<Instant>,
    /// The target of the Advance handed out and not yet reported applied.
    pending: Option<f64>,
    /// Cutovers that held a full hold under this ramp, ascending, without duplicates.
    held: Vec<f64>,
    /// Samples inside the window, oldest first.
    window: VecDeque<Point>,
    paused_reason: Option<String>,
    last_rollback: Option<Rollback>,
}

impl Ramp {
    /// Starts a ramp from the current cutover percent. The first step is the first configured
    /// step above `current`. If `current` is already at or above the last step, the ramp is
    /// done at once. From 0 the first step is due at once; from a non-zero cutover, that cutover
    /// is held first.
    pub fn new(cfg: RampConfig, current: f64, now: Instant) -> Ramp {
        let position = sanitize(current);
        let mut ramp = Ramp {
            cfg,
            state: RampState::Running,
            position,
            since: if position > 0.0 { Some(now) } else { None },
            pending: None,
            held: Vec::new(),
            window: VecDeque::new(),
            paused_reason: None,
            last_rollback: None,
        };
        if ramp.next_step_above(position).is_none() {
            ramp.state = RampState::Done;
        }
        ramp
    }

    /// Feeds a sample taken at `now`. Samples older than the window are dropped, and samples
    /// that come faster than `window / 2500` are merged, so memory stays bounded (a few thousand
    /// samples at most) whatever the sampling rate. A `now` earlier than the previous sample's
    /// is treated as equal to it.
    pub fn observe(&mut self, now: Instant, sample: Sample) {
        let at = match self.window.back() {
            Some(last) if last.at > now => last.at,
            _ => now,
        };
        let min_gap = self.cfg.guardrails.window / MERGE_DIVISOR;
        let len = self.window.len();
        let merge = len >= 2 && at.saturating_duration_since(self.window[len - 2].at) < min_gap;
        match self.window.back_mut() {
            Some(last) if merge => {
                // Growth from the one before `last` to the new sample, resets included.
                last.grown = last.grown.plus(Counts::between(&last.sample, &sample));
                last.sample = sample;
                last.at = at;
            }
            Some(last) => {
                let grown = Counts::between(&last.sample, &sample);
                self.window.push_back(Point { at, sample, grown });
            }
            None => self.window.push_back(Point { at, sample, grown: Counts::default() }),
        }
        let window = self.cfg.guardrails.window;
        while self.window.front().is_some_and(|p| at.saturating_duration_since(p.at) > window) {
            self.window.pop_front();
        }
        while self.window.len() > MAX_SAMPLES {
            self.window.pop_front();
        }
    }

    /// What to do now, given `current`, the cutover percent in force.
    ///
    /// - Done → `Done`. Paused or rolled back → `Hold`.
    /// - A `current` the ramp did not set → pause, `Hold`. (If it is the target of the
    ///   `Advance` just handed out, it is recorded as applied instead.)
    /// - Any guardrail tripping while `current > 0` → `Rollback` to the highest cutover below
    ///   `current` that held a full hold (0 if none), and the ramp is rolled back for good.
    /// - The current step held for `hold` (with at least `min_requests` target requests in
    ///   the window, unless at 0) → `Advance` to the next step above `current`, or `Done` after
    ///   the last. The caller applies it and calls [`Ramp::advanced`]. Until then the same
    ///   `Advance` is returned.
    /// - Otherwise `Hold`.
    pub fn tick(&mut self, now: Instant, current: f64) -> Decision {
        match self.state {
            RampState::Done => return Decision::Done,
            RampState::Paused | RampState::RolledBack => return Decision::Hold,
            RampState::Running => {}
        }

        if !same(current, self.position) {
            match self.pending {
                Some(to) if same(current, to) => self.advanced(now, to),
                _ => {
                    let reason =
                        format!("cutover changed outside the ramp: expected {}%, found {}%", self.position, current);
                    self.pause(&reason);
                }
            }
            return Decision::Hold;
        }

        let stats = self.stats();
        if current > 0.0 {
            if let Some(reason) = self.tripped(&stats) {
                let to = self.held.iter().copied().filter(|&h| h < current - EPS).fold(0.0, f64::max);
                self.state = RampState::RolledBack;
                self.pending = None;
                self.last_rollback = Some(Rollback { at: now, from: current, to, reason: reason.clone() });
                return Decision::Rollback { to, reason };
            }
        }

        let due = match self.since {
            None => true,
            Some(since) => {
                now.saturating_duration_since(since) >= self.cfg.hold
                    && (self.position <= 0.0 || stats.counts.requests >= self.cfg.guardrails.min_requests)
            }
        };
        if !due {
            return Decision::Hold;
        }
        if self.since.is_some() && self.position > 0.0 {
            self.mark_held(self.position);
        }
        match self.next_step_above(current) {
            Some(to) => {
                self.pending = Some(to);
                Decision::Advance { to }
            }
            None => {
                self.state = RampState::Done;
                self.pending = None;
                Decision::Done
            }
        }
    }

    /// The caller applied an `Advance` or `Rollback`: `to` is now in force. Records it, restarts
    /// the hold timer and empties the window so the new cutover is judged on its own traffic.
    /// The state does not change (a rolled-back ramp stays rolled back).
    pub fn advanced(&mut self, now: Instant, to: f64) {
        self.position = sanitize(to);
        self.since = Some(now);
        self.pending = None;
        self.window.clear();
    }

    /// An operator changed the cutover or mirroring by hand. The ramp pauses, keeps `reason`
    /// for the status, and does not advance (or roll back) until [`Ramp::resume`]. A ramp that
    /// is done or rolled back is left as it is.
    pub fn pause(&mut self, reason: &str) {
        if matches!(self.state, RampState::Running | RampState::Paused) {
            self.state = RampState::Paused;
            self.paused_reason = Some(reason.to_string());
            self.pending = None;
        }
    }

    /// Restarts the ramp from `current`, the cutover now in force, whatever the state. The
    /// hold timer restarts at `now` and the window is emptied, so the next step comes after a
    /// full, healthy hold at `current`. At or above the last step, the ramp is done. The last
    /// rollback is kept for display.
    pub fn resume(&mut self, now: Instant, current: f64) {
        self.position = sanitize(current);
        self.since = Some(now);
        self.pending = None;
        self.window.clear();
        self.paused_reason = None;
        self.state = if self.next_step_above(self.position).is_some() { RampState::Running } else { RampState::Done };
    }

    /// The ramp's status as of `now`. `unix_ms_now` is the same moment in Unix milliseconds,
    /// used only to date the last rollback.
    pub fn status(&self, now: Instant, unix_ms_now: u64) -> RampStatus {
        let next_in_ms = (self.state == RampState::Running).then(|| match self.since {
            None => 0,
            Some(since) => ceil_ms(self.cfg.hold.saturating_sub(now.saturating_duration_since(since))),
        });
        let last_rollback = self.last_rollback.as_ref().map(|r| RollbackInfo {
            at_unix_ms: unix_ms_now.saturating_sub(ceil_ms(now.saturating_duration_since(r.at))),
            from: r.from,
            to: r.to,
            reason: r.reason.clone(),
        });
        RampStatus {
            steps: self.cfg.steps.clone(),
            step: self.step_index(),
            state: self.state,
            next_in_ms,
            last_rollback,
            paused_reason: if self.state == RampState::Paused { self.paused_reason.clone() } else { None },
        }
    }

    /// The lowest configured step above `current`, if any. Steps that are not numbers are ignored.
    fn next_step_above(&self, current: f64) -> Option<f64> {
        self.cfg.steps.iter().copied().filter(|&s| s.is_finite() && s > current + EPS).reduce(f64::min)
    }

    /// Index of the highest configured step at or below the position.
    fn step_index(&self) -> Option<usize> {
        self.cfg
            .steps
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s.is_finite() && s <= self.position + EPS)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    }

    fn mark_held(&mut self, percent: f64) {
        if !self.held.iter().any(|&h| same(h, percent)) {
            self.held.push(percent);
            self.held.sort_by(f64::total_cmp);
        }
    }

    /// Counter growth between the oldest and newest samples in the window (resets included),
    /// with the newest latency readings.
    fn stats(&self) -> WindowStats {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return WindowStats::default();
        };
        WindowStats {
            span: last.at.saturating_duration_since(first.at),
            counts: self.window.iter().skip(1).fold(Counts::default(), |sum, p| sum.plus(p.grown)),
            target_p99_ms: last.sample.target_p99_ms,
            source_p99_ms: last.sample.source_p99_ms,
        }
    }

    /// Every guardrail that trips on `stats`, as one sentence each, joined by "; ".
    fn tripped(&self, stats: &WindowStats) -> Option<String> {
        let g = &self.cfg.guardrails;
        let c = stats.counts;
        let over = fmt_span(stats.span);
        let mut trips = Vec::new();
        let enough_requests = c.requests > 0 && c.requests >= g.min_requests;

        if enough_requests {
            let ratio = c.errors as f64 / c.requests as f64;
            if ratio > g.max_target_error_ratio {
                let (value, limit) = fmt_pair(ratio, g.max_target_error_ratio, 3);
                trips.push(format!(
                    "target error ratio {value} > {limit} over {over} ({} errors / {} requests)",
                    c.errors, c.requests
                ));
            }
        }
        if c.compared > 0 && c.compared >= g.min_requests {
            let ratio = c.mismatches as f64 / c.compared as f64;
            if ratio > g.max_mismatch_ratio {
                let (value, limit) = fmt_pair(ratio, g.max_mismatch_ratio, 3);
                trips.push(format!(
                    "compare mismatch ratio {value} > {limit} over {over} \
                     ({} confirmed mismatches / {} compared reads)",
                    c.mismatches, c.compared
                ));
            }
        }
        let (target, source) = (stats.target_p99_ms, stats.source_p99_ms);
        if enough_requests && target > 0.0 && source > 0.0 {
            let ratio = target / source;
            if ratio > g.max_p99_ratio {
                let (value, limit) = fmt_pair(ratio, g.max_p99_ratio, 2);
                trips.push(format!(
                    "target p99 latency ratio {value} > {limit} over {over} \
                     (target p99 {target:.1}ms / source p99 {source:.1}ms)"
                ));
            }
        }
        if trips.is_empty() {
            None
        } else {
            Some(trips.join("; "))
        }
    }
}

/// Checks a ramp config: steps non-empty, each in (0, 100], strictly ascending; hold, window
/// and ratios greater than 0. Returns every problem as (field path, message), e.g.
/// `("ramp.steps[2]", "must be greater than the previous step (50)")`. Empty means valid.
pub fn validate(cfg: &RampConfig) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if cfg.steps.is_empty() {
        errors.push(("ramp.steps".to_string(), "must not be empty (e.g. [5, 25, 50, 100])".to_string()));
    }
    // The highest valid step so far, which the next one must exceed.
    let mut prev: Option<(usize, f64)> = None;
    for (i, &step) in cfg.steps.iter().enumerate() {
        let path = format!("ramp.steps[{i}]");
        let in_range = step > 0.0 && step <= 100.0;
        if !in_range {
            errors.push((path, format!("must be greater than 0 and at most 100 (got {step})")));
            continue;
        }
        match prev {
            Some((j, p)) if step <= p => {
                let message = if j + 1 == i {
                    format!("must be greater than the previous step ({p})")
                } else {
                    format!("must be greater than ramp.steps[{j}] ({p})")
                };
                errors.push((path, message));
            }
            _ => prev = Some((i, step)),
        }
    }
    if cfg.hold.is_zero() {
        errors.push(("ramp.hold".to_string(), "must be greater than 0".to_string()));
    }
    let g = &cfg.guardrails;
    if g.window.is_zero() {
        errors.push(("ramp.guardrails.window".to_string(), "must be greater than 0".to_string()));
    }
    for (name, value) in [
        ("max_target_error_ratio", g.max_target_error_ratio),
        ("max_mismatch_ratio", g.max_mismatch_ratio),
        ("max_p99_ratio", g.max_p99_ratio),
    ] {
        let valid = value.is_finite() && value > 0.0;
        if !valid {
            errors.push((format!("ramp.guardrails.{name}"), format!("must be a number greater than 0 (got {value})")));
        }
    }
    errors
}

/// Whether two cutover percents are the same (within rounding).
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= EPS
}

/// A cutover percent that is not a number counts as 0, as it does in the cutover plan.
fn sanitize(percent: f64) -> f64 {
    if percent.is_finite() {
        percent
    } else {
        0.0
    }
}

/// Whole milliseconds, rounded up so "0" only ever means "now".
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// `value` and `limit` with at least `min_decimals` decimals, and more (up to 9) when needed to
/// tell them apart, so a reason never reads "0.001 > 0.001".
fn fmt_pair(value: f64, limit: f64, min_decimals: usize) -> (String, String) {
    let mut decimals = min_decimals;
    loop {
        let (v, l) = (format!("{value:.decimals$}"), format!("{limit:.decimals$}"));
        if v != l || decimals >= 9 {
            return (v, l);
        }
        decimals += 1;
    }
}

/// "60s", "1.5s" or "250ms".
fn fmt_span(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOLD: Duration = Duration::from_secs(600);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn cfg() -> RampConfig {
        RampConfig { steps: vec![5.0, 25.0, 50.0, 100.0], hold: HOLD, guardrails: Guardrails::default() }
    }

    /// A control loop standing in for the proxy: one sample and one tick a second, applying
    /// decisions the way the proxy would.
    struct Sim {
        ramp: Ramp,
        base: Instant,
        at: Duration,
        sample: Sample,
        current: f64,
    }

    impl Sim {
        fn new(cfg: RampConfig, current: f64) -> Sim {
            let base = Instant::now();
            let sample = Sample { target_p99_ms: 2.0, source_p99_ms: 1.5, ..Sample::default() };
            Sim { ramp: Ramp::new(cfg, current, base), base, at: Duration::ZERO, sample, current }
        }

        fn now(&self) -> Instant {
            self.base + self.at
        }

        /// Ticks without a new sample and applies the decision.
        fn tick(&mut self) -> Decision {
            let decision = self.ramp.tick(self.now(), self.current);
            if let Decision::Advance { to } | Decision::Rollback { to, .. } = decision {
                self.current = to;
                self.ramp.advanced(self.now(), to);
            }
            decision
        }

        /// One second of traffic (`requests` target requests, `errors` of them failed, as many
        /// reads compared, none mismatched), sampled at its end.
        fn feed(&mut self, requests: u64, errors: u64) {
            self.at += secs(1);
            self.sample.target_requests += requests;
            self.sample.target_errors += errors;
            self.sample.compared += requests;
            self.ramp.observe(self.now(), self.sample);
        }

        /// [`Sim::feed`], then a tick.
        fn second(&mut self, requests: u64, errors: u64) -> Decision {
            self.feed(requests, errors);
            self.tick()
        }

        /// `n` healthy seconds (10 requests each). Returns the decisions that were not Hold,
        /// with the offset they came at.
        fn healthy(&mut self, n: u64) -> Vec<(Duration, Decision)> {
            let mut out = Vec::new();
            for _ in 0..n {
                let d = self.second(10, 0);
                if d != Decision::Hold {
                    out.push((self.at, d));
                }
            }
            out
        }

        /// Starts at 0 and walks healthily up to `percent` (a step of `cfg()`), returning right
        /// after the advance to it.
        fn walk_to(percent: f64) -> Sim {
            let mut sim = Sim::new(cfg(), 0.0);
            assert_eq!(sim.tick(), Decision::Advance { to: 5.0 });
            while sim.current < percent {
                sim.healthy(600);
            }
            assert_eq!(sim.current, percent);
            sim
        }
    }

    #[test]
    fn advances_through_steps_with_exact_timing() {
        let mut sim = Sim::new(cfg(), 0.0);
        assert_eq!(sim.ramp.status(sim.now(), 0).step, None);
        // From 0 the first step is taken at once.
        assert_eq!(sim.tick(), Decision::Advance { to: 5.0 });
        assert_eq!(sim.ramp.status(sim.now(), 0).step, Some(0));

        for (i, next) in [25.0, 50.0, 100.0].into_iter().enumerate() {
            let started = sim.at;
            assert!(sim.healthy(599).is_empty(), "advanced before the hold at step {i}");
            assert_eq!(sim.ramp.status(sim.now(), 0).next_in_ms, Some(1000));
            // One millisecond short of the hold: still holding.
            let almost = sim.base + started + HOLD - Duration::from_millis(1);
            assert_eq!(sim.ramp.tick(almost, sim.current), Decision::Hold);
            // Exactly at the hold: advance.
            assert_eq!(sim.second(10, 0), Decision::Advance { to: next });
            assert_eq!(sim.at, started + HOLD);
            assert_eq!(sim.ramp.status(sim.now(), 0).step, Some(i + 1));
            assert_eq!(sim.ramp.status(sim.now(), 0).next_in_ms, Some(HOLD.as_millis() as u64));
        }
        assert_eq!(sim.current, 100.0);
    }

    #[test]
    fn done_after_the_last_step_and_stays_done() {
        let mut sim = Sim::walk_to(100.0);
        let started = sim.at;
        assert!(sim.healthy(599).is_empty());
        assert_eq!(sim.second(10, 0), Decision::Done);
        assert_eq!(sim.at, started + HOLD);
        let status = sim.ramp.status(sim.now(), 0);
        assert_eq!(status.state, RampState::Done);
        assert_eq!(status.next_in_ms, None);
        assert_eq!(status.step, Some(3));
        // Done is final, even if the target misbehaves afterwards.
        for _ in 0..120 {
            assert_eq!(sim.second(10, 10), Decision::Done);
        }
    }

    #[test]
    fn error_spike_at_50_rolls_back_to_25_and_then_holds() {
        let mut sim = Sim::walk_to(50.0);
        let advanced_at = sim.at;
        // The baseline sample at the moment of the advance, then 60 seconds: 308 requests,
        // 37 errors in the last ten seconds.
        sim.ramp.observe(sim.now(), sim.sample);
        for i in 1..=60u64 {
            let requests = if i == 60 { 13 } else { 5 };
            let errors = match i {
                51..=57 => 4,
                58..=60 => 3,
                _ => 0,
            };
            sim.feed(requests, errors);
        }
        assert_eq!(
            sim.tick(),
            Decision::Rollback {
                to: 25.0,
                reason: "target error ratio 0.120 > 0.010 over 60s (37 errors / 308 requests)".to_string(),
            }
        );
        assert_eq!(sim.current, 25.0);
        let rolled_back_at = sim.at;
        assert_eq!(rolled_back_at, advanced_at + secs(60));

        // It stays rolled back, however healthy and however long.
        assert!(sim.healthy(3 * 600).is_empty());
        assert_eq!(sim.current, 25.0);

        let unix_now = 1_700_000_000_000;
        let status = sim.ramp.status(sim.now(), unix_now);
        assert_eq!(status.state, RampState::RolledBack);
        assert_eq!(status.step, Some(1));
        assert_eq!(status.next_in_ms, None);
        let rollback = status.last_rollback.expect("rollback recorded");
        assert_eq!((rollback.from, rollback.to), (50.0, 25.0));
        assert_eq!(rollback.at_unix_ms, unix_now - 1800 * 1000);
        assert!(rollback.reason.starts_with("target error ratio 0.120"));
    }

    #[test]
    fn error_spike_before_any_step_held_rolls_back_to_zero() {
        let mut sim = Sim::new(cfg(), 0.0);
        assert_eq!(sim.tick(), Decision::Advance { to: 5.0 });
        sim.healthy(100);
        let d = (0..60).map(|_| sim.second(10, 5)).find(|d| *d != Decision::Hold);
        assert!(matches!(d, Some(Decision::Rollback { to, .. }) if to == 0.0), "{d:?}");
    }

    #[test]
    fn below_min_requests_no_trip() {
        let mut sim = Sim::walk_to(25.0);
        // Every request fails, but there are only 30 in the window.
        for _ in 0..99 {
            sim.second(0, 0);
            assert_eq!(sim.second(1, 1), Decision::Hold);
        }
        assert_eq!(sim.ramp.stats().counts.requests, 30);
        assert_eq!(sim.ramp.status(sim.now(), 0).state, RampState::Running);
        // With enough requests it trips.
        let d = sim.second(100, 0);
        assert!(
            matches!(&d, Decision::Rollback { to, reason } if *to == 5.0 && reason.starts_with("target error ratio"))
        );
    }

    #[test]
    fn mismatch_ratio_trips() {
        let mut sim = Sim::walk_to(25.0);
        sim.ramp.observe(sim.now(), sim.sample);
        // 4 mismatches in 40 compared reads: far over 0.1%, but below min_requests.
        sim.sample.compared += 40;
        sim.sample.mismatches += 4;
        sim.at += secs(1);
        sim.ramp.observe(sim.now(), sim.sample);
        assert_eq!(sim.tick(), Decision::Hold);
        // 5 in 1000: 0.5%.
        sim.sample.compared += 960;
        sim.sample.mismatches += 1;
        sim.sample.target_requests += 1000;
        sim.at += secs(1);
        sim.ramp.observe(sim.now(), sim.sample);
        assert_eq!(
            sim.tick(),
            Decision::Rollback {
                to: 5.0,
                reason: "compare mismatch ratio 0.005 > 0.001 over 2s (5 confirmed mismatches / 1000 compared reads)"
                    .to_string(),
            }
        );
    }

    #[test]
    fn mismatch_ratio_shows_enough_decimals() {
        let mut sim = Sim::walk_to(25.0);
        sim.ramp.observe(sim.now(), sim.sample);
        sim.sample.compared += 10_000;
        sim.sample.mismatches += 12;
        sim.sample.target_requests += 10_000;
        sim.at += secs(1);
        sim.ramp.observe(sim.now(), sim.sample);
        let Decision::Rollback { reason, .. } = sim.tick() else { panic!("no rollback") };
        assert!(reason.starts_with("compare mismatch ratio 0.0012 > 0.0010 over 1s"), "{reason}");
    }

    #[test]
    fn p99_ratio_trips() {
        let mut sim = Sim::walk_to(50.0);
        sim.healthy(30);
        // Unknown source p99: not judged.
        sim.sample.target_p99_ms = 90.0;
        sim.sample.source_p99_ms = 0.0;
        assert_eq!(sim.second(10, 0), Decision::Hold);
        // 3x exactly is allowed.
        sim.sample.source_p99_ms = 30.0;
        assert_eq!(sim.second(10, 0), Decision::Hold);
        sim.sample.target_p99_ms = 45.0;
        sim.sample.source_p99_ms = 10.0;
        assert_eq!(
            sim.second(10, 0),
            Decision::Rollback {
                to: 25.0,
                reason: "target p99 latency ratio 4.50 > 3.00 over 32s (target p99 45.0ms / source p99 10.0ms)"
                    .to_string(),
            }
        );
    }

    #[test]
    fn p99_not_judged_below_min_requests() {
        let mut sim = Sim::walk_to(50.0);
        sim.sample.target_p99_ms = 500.0;
        sim.sample.source_p99_ms = 1.0;
        for _ in 0..10 {
            assert_eq!(sim.second(10, 0), Decision::Hold);
        }
        // The eleventh sample brings the window to 100 requests (the first is the baseline).
        assert!(matches!(sim.second(10, 0), Decision::Rollback { .. }));
    }

    #[test]
    fn several_trips_are_all_named() {
        let mut sim = Sim::walk_to(50.0);
        sim.ramp.observe(sim.now(), sim.sample);
        sim.sample.target_p99_ms = 40.0;
        sim.sample.source_p99_ms = 1.0;
        sim.sample.mismatches += 100;
        let Decision::Rollback { reason, .. } = sim.second(1000, 500) else { panic!("no rollback") };
        let parts: Vec<&str> = reason.split("; ").collect();
        assert_eq!(parts.len(), 3, "{reason}");
        assert!(parts[0].starts_with("target error ratio 0.500 > 0.010"));
        assert!(parts[1].starts_with("compare mismatch ratio 0.100 > 0.001"));
        assert!(parts[2].starts_with("target p99 latency ratio 40.00 > 3.00"));
    }

    #[test]
    fn counter_reset_handled() {
        let mut sim = Sim::walk_to(25.0);
        // Large historic counters, with many old errors.
        sim.sample = Sample {
            target_requests: 1_000_000,
            target_errors: 50_000,
            compared: 1_000_000,
            mismatches: 50_000,
            ..sim.sample
        };
        sim.ramp.observe(sim.now(), sim.sample);
        sim.healthy(30);
        // The proxy restarts its counters: everything goes back near zero.
        sim.sample = Sample { target_requests: 10, ..Sample::default() };
        sim.at += secs(1);
        sim.ramp.observe(sim.now(), sim.sample);
        assert_eq!(sim.tick(), Decision::Hold);
        assert_eq!(sim.ramp.stats().counts, Counts { requests: 310, errors: 0, compared: 300, mismatches: 0 });
        assert!(sim.healthy(100).is_empty());
        // Errors after the reset still count, across the reset.
        for _ in 0..40 {
            sim.feed(10, 0);
        }
        sim.sample = Sample::default();
        sim.at += secs(1);
        sim.ramp.observe(sim.now(), sim.sample);
        assert_eq!(sim.tick(), Decision::Hold);
        let d = (0..5).map(|_| sim.second(10, 5)).find(|d| *d != Decision::Hold);
        let Some(Decision::Rollback { to, reason }) = d else { panic!("no rollback: {d:?}") };
        assert_eq!(to, 5.0);
        assert!(reason.contains("(10 errors / 590 requests)"), "{reason}");
    }

    #[test]
    fn pause_stops_advancing_and_resume_restarts_the_hold() {
        let mut sim = Sim::walk_to(25.0);
        sim.healthy(300);
        sim.ramp.pause("cutover set by hand through the admin API");
        assert!(sim.healthy(2000).is_empty());
        // Not even rollbacks while paused: the operator has the controls.
        assert_eq!(sim.second(100, 100), Decision::Hold);
        let status = sim.ramp.status(sim.now(), 0);
        assert_eq!(status.state, RampState::Paused);
        assert_eq!(status.paused_reason.as_deref(), Some("cutover set by hand through the admin API"));
        assert_eq!(status.next_in_ms, None);

        sim.current = 30.0;
        sim.ramp.resume(sim.now(), 30.0);
        let resumed = sim.at;
        let status = sim.ramp.status(sim.now(), 0);
        assert_eq!((status.state, status.paused_reason, status.next_in_ms), (RampState::Running, None, Some(600_000)));
        assert_eq!(status.step, Some(1));
        assert_eq!(sim.healthy(600), vec![(resumed + HOLD, Decision::Advance { to: 50.0 })]);
    }

    #[test]
    fn a_cutover_changed_behind_the_ramps_back_pauses_it() {
        let mut sim = Sim::walk_to(25.0);
        sim.healthy(10);
        sim.current = 12.0;
        assert_eq!(sim.second(10, 0), Decision::Hold);
        let status = sim.ramp.status(sim.now(), 0);
        assert_eq!(status.state, RampState::Paused);
        assert_eq!(status.paused_reason.as_deref(), Some("cutover changed outside the ramp: expected 25%, found 12%"));
        assert!(sim.healthy(1200).is_empty());
    }

    #[test]
    fn an_applied_but_unreported_advance_is_recorded() {
        let mut sim = Sim::walk_to(5.0);
        sim.healthy(599);
        sim.at += secs(1);
        assert_eq!(sim.ramp.tick(sim.now(), 5.0), Decision::Advance { to: 25.0 });
        // Not applied yet: asked again.
        assert_eq!(sim.ramp.tick(sim.now(), 5.0), Decision::Advance { to: 25.0 });
        // Applied, but advanced() was not called: taken as applied, the hold starts now.
        sim.current = 25.0;
        let applied = sim.at;
        assert_eq!(sim.ramp.tick(sim.now(), 25.0), Decision::Hold);
        assert_eq!(sim.ramp.status(sim.now(), 0).state, RampState::Running);
        assert_eq!(sim.ramp.status(sim.now(), 0).step, Some(1));
        assert_eq!(sim.healthy(600), vec![(applied + HOLD, Decision::Advance { to: 50.0 })]);
    }

    #[test]
    fn rollback_goes_below_current_even_if_current_held() {
        // 5 and 25 held; the advance to 50 is handed out but never applied, and then 25 trips.
        let mut sim = Sim::walk_to(25.0);
        sim.healthy(599);
        sim.at += secs(1);
        assert_eq!(sim.ramp.tick(sim.now(), 25.0), Decision::Advance { to: 50.0 });
        let d = (0..60).map(|_| sim.second(10, 10)).find(|d| *d != Decision::Hold);
        assert!(matches!(d, Some(Decision::Rollback { to, .. }) if to == 5.0), "{d:?}");
    }

    #[test]
    fn no_advance_without_enough_traffic() {
        let mut sim = Sim::walk_to(5.0);
        // One request a second: 60 in any window, below min_requests.
        for _ in 0..1200 {
            assert_eq!(sim.second(1, 0), Decision::Hold);
        }
        assert_eq!(sim.ramp.status(sim.now(), 0).next_in_ms, Some(0));
        let d = (0..60).map(|_| sim.second(10, 0)).find(|d| *d != Decision::Hold);
        assert_eq!(d, Some(Decision::Advance { to: 25.0 }));
    }

    #[test]
    fn starting_at_30_picks_50_after_holding_30() {
        let mut sim = Sim::new(cfg(), 30.0);
        let status = sim.ramp.status(sim.now(), 0);
        assert_eq!((status.state, status.step, status.next_in_ms), (RampState::Running, Some(1), Some(600_000)));
        assert_eq!(sim.tick(), Decision::Hold);
        assert_eq!(sim.healthy(600), vec![(HOLD, Decision::Advance { to: 50.0 })]);
        // 30 held, so a trip at 50 goes back to 30.
        let d = (0..60).map(|_| sim.second(10, 10)).find(|d| *d != Decision::Hold);
        assert!(matches!(d, Some(Decision::Rollback { to, .. }) if to == 30.0), "{d:?}");
    }

    #[test]
    fn starting_at_or_above_the_last_step_is_done() {
        let now = Instant::now();
        for current in [100.0, 150.0] {
            let mut ramp = Ramp::new(cfg(), current, now);
            assert_eq!(ramp.tick(now, current), Decision::Done);
            assert_eq!(ramp.status(now, 0).state, RampState::Done);
        }
        let mut ramp = Ramp::new(RampConfig { steps: vec![], ..cfg() }, 0.0, now);
        assert_eq!(ramp.tick(now, 0.0), Decision::Done);
    }

    #[test]
    fn status_serializes_for_the_admin_api() {
        let mut sim = Sim::walk_to(25.0);
        sim.ramp.pause("mirror turned off");
        let json = serde_json::to_value(sim.ramp.status(sim.now(), 1000)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "steps": [5.0, 25.0, 50.0, 100.0],
                "step": 1,
                "state": "paused",
                "next_in_ms": null,
                "last_rollback": null,
                "paused_reason": "mirror turned off",
            })
        );
        sim.ramp.resume(sim.now(), 25.0);
        let d = (0..60).map(|_| sim.second(10, 10)).find(|d| *d != Decision::Hold);
        assert!(matches!(d, Some(Decision::Rollback { .. })));
        let json = serde_json::to_value(sim.ramp.status(sim.now(), 5000)).unwrap();
        assert_eq!(json["state"], "rolled_back");
        assert_eq!(json["last_rollback"]["from"], 25.0);
        assert_eq!(json["last_rollback"]["to"], 5.0);
        assert_eq!(json["last_rollback"]["at_unix_ms"], 5000);
    }

    #[test]
    fn validate_accepts_a_good_config() {
        assert!(validate(&cfg()).is_empty());
        assert!(validate(&RampConfig { steps: vec![0.5, 100.0], ..cfg() }).is_empty());
    }

    #[test]
    fn validate_catches_each_error_with_its_path() {
        let err = |path: &str, message: &str| (path.to_string(), message.to_string());
        assert_eq!(
            validate(&RampConfig { steps: vec![], ..cfg() }),
            vec![err("ramp.steps", "must not be empty (e.g. [5, 25, 50, 100])")]
        );
        assert_eq!(
            validate(&RampConfig { steps: vec![5.0, 25.0, 50.0, 50.0, 40.0, 0.0, 101.0, f64::NAN, 100.0], ..cfg() }),
            vec![
                err("ramp.steps[3]", "must be greater than the previous step (50)"),
                err("ramp.steps[4]", "must be greater than ramp.steps[2] (50)"),
                err("ramp.steps[5]", "must be greater than 0 and at most 100 (got 0)"),
                err("ramp.steps[6]", "must be greater than 0 and at most 100 (got 101)"),
                err("ramp.steps[7]", "must be greater than 0 and at most 100 (got NaN)"),
            ]
        );
        assert_eq!(
            validate(&RampConfig { steps: vec![-5.0, 12.5, 12.5], ..cfg() }),
            vec![
                err("ramp.steps[0]", "must be greater than 0 and at most 100 (got -5)"),
                err("ramp.steps[2]", "must be greater than the previous step (12.5)"),
            ]
        );
        assert_eq!(
            validate(&RampConfig { hold: Duration::ZERO, ..cfg() }),
            vec![err("ramp.hold", "must be greater than 0")]
        );
        let bad_guardrails = Guardrails {
            window: Duration::ZERO,
            max_target_error_ratio: 0.0,
            max_mismatch_ratio: -0.1,
            max_p99_ratio: f64::NAN,
            min_requests: 0,
        };
        assert_eq!(
            validate(&RampConfig { guardrails: bad_guardrails, ..cfg() }),
            vec![
                err("ramp.guardrails.window", "must be greater than 0"),
                err("ramp.guardrails.max_target_error_ratio", "must be a number greater than 0 (got 0)"),
                err("ramp.guardrails.max_mismatch_ratio", "must be a number greater than 0 (got -0.1)"),
                err("ramp.guardrails.max_p99_ratio", "must be a number greater than 0 (got NaN)"),
            ]
        );
        let infinite = Guardrails { max_p99_ratio: f64::INFINITY, ..Guardrails::default() };
        assert_eq!(
            validate(&RampConfig { guardrails: infinite, ..cfg() }),
            vec![err("ramp.guardrails.max_p99_ratio", "must be a number greater than 0 (got inf)")]
        );
    }

    #[test]
    fn memory_is_bounded() {
        let base = Instant::now();
        let mut ramp = Ramp::new(cfg(), 0.0, base);
        let mut sample = Sample::default();
        let mut most = 0;
        for i in 1..=1_000_000u64 {
            sample.target_requests += 1;
            ramp.observe(base + Duration::from_millis(i), sample);
            most = most.max(ramp.window.len());
        }
        assert!(most <= MAX_SAMPLES, "{most} samples stored");
        // Merging keeps the whole window, and the counts exact.
        let stats = ramp.stats();
        assert!(stats.span >= secs(59) && stats.span <= secs(60), "{:?}", stats.span);
        let first = ramp.window.front().unwrap().sample.target_requests;
        assert_eq!(stats.counts.requests, 1_000_000 - first);
    }

    #[test]
    fn samples_older_than_the_window_are_dropped() {
        let base = Instant::now();
        let mut ramp = Ramp::new(cfg(), 0.0, base);
        for i in 0..=120 {
            ramp.observe(base + secs(i), Sample { target_requests: i * 10, ..Sample::default() });
        }
        assert_eq!(ramp.window.len(), 61);
        assert_eq!(ramp.stats().span, secs(60));
        assert_eq!(ramp.stats().counts.requests, 600);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Time passes (ms), the counters grow (or reset), and a sample is taken.
        Observe {
            ms: u32,
            grow: [u32; 4],
            reset: bool,
            target_p99: f64,
            source_p99: f64,
        },
        /// A tick, following the cutover the ramp set.
        Tick {
            ms: u32,
        },
        /// A tick with an arbitrary cutover.
        TickAt {
            ms: u32,
            current: f64,
        },
        /// The caller applies the last Advance/Rollback (or not).
        Apply,
        Pause,
        Resume {
            current: f64,
        },
        /// Time goes backwards.
        Rewind {
            ms: u32,
        },
    }

    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), 0.0..500.0, Just(f64::NAN), Just(f64::INFINITY), Just(-1.0)]
    }

    fn percent() -> impl Strategy<Value = f64> {
        prop_oneof![0.0..=100.0, Just(0.0), Just(5.0), Just(50.0), Just(100.0), -10.0..110.0, Just(f64::NAN)]
    }

    fn observe_op() -> impl Strategy<Value = Op> {
        let grow = [0..50u32, 0..10u32, 0..50u32, 0..3u32];
        (0..3000u32, grow, prop::bool::weighted(0.02), latency(), latency()).prop_map(
            |(ms, grow, reset, target_p99, source_p99)| Op::Observe { ms, grow, reset, target_p99, source_p99 },
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => observe_op(),
            4 => (0..5000u32).prop_map(|ms| Op::Tick { ms }),
            1 => (0..5000u32, percent()).prop_map(|(ms, current)| Op::TickAt { ms, current }),
            3 => Just(Op::Apply),
            1 => Just(Op::Pause),
            1 => percent().prop_map(|current| Op::Resume { current }),
            1 => (0..5000u32).prop_map(|ms| Op::Rewind { ms }),
        ]
    }

    fn steps() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![0.01..=100.0, Just(100.0), Just(50.0)], 1..6).prop_map(|mut v| {
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        })
    }

    fn guardrails() -> impl Strategy<Value = Guardrails> {
        (1..120_000u64, 0.0001..0.5, 0.0001..0.5, 1.0..5.0, 0..200u64).prop_map(|(ms, err, mis, p99, min)| Guardrails {
            window: Duration::from_millis(ms),
            max_target_error_ratio: err,
            max_mismatch_ratio: mis,
            max_p99_ratio: p99,
            min_requests: min,
        })
    }

    fn check(decision: &Decision, current: f64, steps: &[f64]) -> Result<(), TestCaseError> {
        match decision {
            Decision::Advance { to } => {
                prop_assert!(steps.contains(to), "advance to {} is not a step of {:?}", to, steps);
                prop_assert!(*to > current, "advance to {} from {}", to, current);
            }
            Decision::Rollback { to, reason } => {
                prop_assert!(*to < current && *to >= 0.0, "rollback to {} from {}", to, current);
                prop_assert!(!reason.is_empty());
            }
            Decision::Hold | Decision::Done => {}
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the samples, times and operator actions: no panic, advances only to
        /// configured steps above the cutover, rollbacks only below it, bounded memory, and Done
        /// and RolledBack are only left through resume.
        #[test]
        fn tick_is_safe_whatever_happens(
            steps in steps(),
            hold_ms in 1..20_000u64,
            guardrails in guardrails(),
            start in percent(),
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let cfg = RampConfig { steps: steps.clone(), hold: Duration::from_millis(hold_ms), guardrails };
            let base = Instant::now() + Duration::from_secs(3600);
            let mut at = Duration::from_secs(1800);
            let mut ramp = Ramp::new(cfg, start, base + at);
            let mut current = sanitize(start);
            let mut sample = Sample::default();
            let mut last: Option<f64> = None;
            for op in ops {
                let before = ramp.state;
                let mut resumed = false;
                match op {
                    Op::Observe { ms, grow, reset, target_p99, source_p99 } => {
                        at += Duration::from_millis(ms.into());
                        if reset {
                            sample = Sample::default();
                        }
                        sample.target_requests += u64::from(grow[0]);
                        sample.target_errors += u64::from(grow[1]);
                        sample.compared += u64::from(grow[2]);
                        sample.mismatches += u64::from(grow[3]);
                        sample.target_p99_ms = target_p99;
                        sample.source_p99_ms = source_p99;
                        ramp.observe(base + at, sample);
                    }
                    Op::Tick { ms } | Op::TickAt { ms, .. } => {
                        at += Duration::from_millis(ms.into());
                        let tick_at = if let Op::TickAt { current, .. } = op { current } else { current };
                        let d = ramp.tick(base + at, tick_at);
                        check(&d, tick_at, &steps)?;
                        if let Decision::Advance { to } | Decision::Rollback { to, .. } = d {
                            last = Some(to);
                        }
                        if matches!(d, Decision::Rollback { .. }) {
                            prop_assert_eq!(ramp.state, RampState::RolledBack);
                        }
                    }
                    Op::Apply => {
                        if let Some(to) = last.take() {
                            current = to;
                            ramp.advanced(base + at, to);
                        }
                    }
                    Op::Pause => ramp.pause("by hand"),
                    Op::Resume { current: c } => {
                        current = sanitize(c);
                        ramp.resume(base + at, c);
                        resumed = true;
                    }
                    Op::Rewind { ms } => at = at.saturating_sub(Duration::from_millis(ms.into())),
                }
                if !resumed {
                    if before == RampState::Done {
                        prop_assert_eq!(ramp.state, RampState::Done);
                    }
                    if before == RampState::RolledBack {
                        prop_assert_eq!(ramp.state, RampState::RolledBack);
                    }
                }
                prop_assert!(ramp.window.len() <= MAX_SAMPLES);
                let status = ramp.status(base + at, 1_000_000);
                if let Some(next) = status.next_in_ms {
                    prop_assert!(next <= hold_ms);
                }
            }
        }

        /// Nonsense configurations (unsorted, out of range, not numbers, zero durations) still never panic.
        #[test]
        fn tick_never_panics_on_nonsense_configs(
            steps in prop::collection::vec(prop_oneof![any::<f64>(), -10.0..200.0], 0..6),
            hold_ms in 0..1000u64,
            window_ms in 0..1000u64,
            ratio in prop_oneof![any::<f64>(), Just(0.0), Just(f64::NAN)],
            ops in prop::collection::vec(op(), 1..100),
        ) {
            let guardrails = Guardrails {
                window: Duration::from_millis(window_ms),
                max_target_error_ratio: ratio,
                max_mismatch_ratio: ratio,
                max_p99_ratio: ratio,
                min_requests: 0,
            };
            let cfg = RampConfig { steps: steps.clone(), hold: Duration::from_millis(hold_ms), guardrails };
            let _ = validate(&cfg);
            let base = Instant::now();
            let mut at = Duration::ZERO;
            let mut ramp = Ramp::new(cfg, 0.0, base);
            let mut current = 0.0;
            let mut sample = Sample::default();
            for op in ops {
                at += Duration::from_millis(7);
                match op {
                    Op::Observe { grow, target_p99, source_p99, .. } => {
                        sample.target_requests += u64::from(grow[0]);
                        sample.target_errors += u64::from(grow[1]);
                        sample.target_p99_ms = target_p99;
                        sample.source_p99_ms = source_p99;
                        ramp.observe(base + at, sample);
                    }
                    Op::Pause => ramp.pause("by hand"),
                    Op::Resume { current: c } => {
                        current = sanitize(c);
                        ramp.resume(base + at, c);
                    }
                    _ => {
                        let d = ramp.tick(base + at, current);
                        check(&d, current, &steps)?;
                        if let Decision::Advance { to } | Decision::Rollback { to, .. } = d {
                            current = to;
                            ramp.advanced(base + at, to);
                        }
                    }
                }
                let _ = ramp.status(base + at, 0);
            }
        }
    }
}
