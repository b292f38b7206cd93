//! Shadow-read comparison: a sample of reads is also sent to the backend that did not serve
//! them, and the two replies are compared off the client's path.
//!
//! A compared read travels through the other backend's ordered mirror queue, behind every
//! mirrored write enqueued before it, so a lagging mirror is not mistaken for a divergent
//! one. The comparison knows the command ([`rules`]): unordered replies compare as
//! multisets, floats within an epsilon, TTLs within a tolerance, random replies never. A
//! mismatch is read again from both sides after `compare.recheck_delay`: if it is gone it was
//! lag (*transient*); if it stays it is *confirmed*, logged with the key, the command, the
//! class and digests of both replies (values only when `compare.log_values` is on), and its
//! key goes to the repair journal. The work is bounded: when too many comparisons are in
//! flight, reads are skipped and counted.

pub mod rules;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::backend::{Backend, BackendError, Job, Reply, Sink};
use crate::mirror::journal::Journal;
use crate::mirror::{wrap_db, Mirrors};
use crate::proto::reply::Protocol;
use crate::proto::request::Request;
use crate::route::Side;
use rules::{Class, Rule, Verdict};

/// Comparisons in flight (including rechecks) before new samples are skipped.
const MAX_IN_FLIGHT: usize = 1024;
/// Confirmed mismatches kept for `/status`.
const RECENT: usize = 20;

/// Settings that can change at run time.
#[derive(Clone, Debug)]
pub struct CompareSettings {
    pub percent: f64,
    pub recheck_delay: Duration,
    pub ttl_tolerance: Duration,
    pub log_values: bool,
}

/// The outcome of one sampled read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Match,
    /// Differed at first, agreed on the recheck: mirror lag.
    Transient,
    /// Still differed on the recheck.
    Mismatch,
    /// Not compared (random command, too much in flight).
    Skipped,
    /// A backend failed to answer.
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Transient => "transient",
            Outcome::Mismatch => "mismatch",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

pub struct Comparer {
    settings: ArcSwap<CompareSettings>,
    in_flight: AtomicUsize,
    counts: [AtomicU64; 5],
    results: IntCounterVec,
    mismatches: IntCounterVec,
    recent: Mutex<VecDeque<serde_json::Value>>,
    log: Option<Journal>,
    /// The repair journal, for keys with a confirmed mismatch.
    repair: Option<Arc<Journal>>,
}

/// A comparison slot taken by [`Comparer::admit`]; given back when dropped, on every path.
pub struct Slot(Arc<Comparer>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One sampled read on its way.
pub struct Sample {
    /// Held for as long as the sample lives.
    pub slot: Slot,
    pub rule: Rule,
    pub command: String,
    pub key: Option<Bytes>,
    pub request: Request,
    pub db: u32,
    pub serving: Side,
}

impl Comparer {
    pub fn new(
        settings: CompareSettings,
        log: Option<Journal>,
        repair: Option<Arc<Journal>>,
        registry: &Registry,
    ) -> Comparer {
        let results = IntCounterVec::new(Opts::new("compare_total", "Sampled reads by comparison result"), &["result"])
            .expect("static");
        let _ = registry.register(Box::new(results.clone()));
        let mismatches = IntCounterVec::new(
            Opts::new("compare_mismatches_total", "Confirmed mismatches by command and class"),
            &["command", "class"],
        )
        .expect("static");
        let _ = registry.register(Box::new(mismatches.clone()));
        Comparer {
            settings: ArcSwap::from_pointee(settings),
            in_flight: AtomicUsize::new(0),
            counts: Default::default(),
            results,
            mismatches,
            recent: Mutex::new(VecDeque::new()),
            log,
            repair,
        }
    }

    pub fn settings(&self) -> Arc<CompareSettings> {
        self.settings.load_full()
    }

    pub fn set_settings(&self, s: CompareSettings) {
        self.settings.store(Arc::new(s));
    }

    pub fn set_percent(&self, percent: f64) {
        let mut s = CompareSettings::clone(&self.settings.load());
        s.percent = percent;
        self.settings.store(Arc::new(s));
    }

    /// Whether this read is in the sample (cheap: one random number).
    pub fn sampled(&self) -> bool {
        let p = self.settings.load().percent;
        p > 0.0 && (p >= 100.0 || fastrand::f64() * 100.0 < p)
    }

    /// Takes a slot for one comparison; None (and counted as skipped) when full.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.count(Outcome::Skipped);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.results.with_label_values(&[outcome.as_str()]).inc();
    }

    /// First look at a sample's two replies.
    pub fn first_verdict(&self, sample: &Sample, serving: &Bytes, mirror: &Bytes) -> Verdict {
        let tolerance = self.settings.load().ttl_tolerance.as_millis() as u64;
        rules::compare(sample.rule, serving, mirror, tolerance)
    }

    /// The recheck's verdict decides: transient or confirmed.
    pub fn conclude(&self, sample: &Sample, first: Class, serving: &Bytes, mirror: &Bytes) {
        let tolerance = self.settings.load().ttl_tolerance.as_millis() as u64;
        match rules::compare(sample.rule, serving, mirror, tolerance) {
            Verdict::Match => self.count(Outcome::Transient),
            Verdict::Mismatch(class) => self.confirm(sample, class, first, serving, mirror),
        }
    }

    fn confirm(&self, sample: &Sample, class: Class, first: Class, serving: &Bytes, mirror: &Bytes) {
        self.count(Outcome::Mismatch);
        self.mismatches.with_label_values(&[sample.command.as_str(), class.as_str()]).inc();
        let now = crate::unix_ms();
        let mut entry = serde_json::json!({
            "time_ms": now,
            "command": sample.command,
            "class": class.as_str(),
            "first_class": first.as_str(),
            "serving": sample.serving.name(),
            "serving_digest": rules::digest(sample.rule, serving),
            "mirror_digest": rules::digest(sample.rule, mirror),
        });
        let key = sample.key.as_deref().map(crate::migrate::key_display);
        match (&sample.key, entry.as_object_mut()) {
            (Some(k), Some(e)) => {
                if let serde_json::Value::Object(k) = crate::migrate::key_json(k) {
                    e.extend(k);
                }
            }
            (None, Some(e)) => {
                e.insert("key".into(), serde_json::Value::Null);
            }
            _ => {}
        }
        if self.settings.load().log_values {
            entry["serving_reply"] = String::from_utf8_lossy(serving).into_owned().into();
            entry["mirror_reply"] = String::from_utf8_lossy(mirror).into_owned().into();
        }
        tracing::warn!(key = key.as_deref().unwrap_or("-"), command = %sample.command, class = class.as_str(), "confirmed compare mismatch");
        if let Some(log) = &self.log {
            log.write_line(entry.to_string());
        }
        if let (Some(repair), Some(k)) = (&self.repair, &sample.key) {
            repair.record(
                sample.serving.other().name(),
                k,
                &sample.command,
                &format!("compare mismatch: {}", class.as_str()),
            );
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// Starts comparing `sample`, whose serving reply is `serving_reply`: the same read goes
    /// through the other side's ordered queue and the replies are judged when it answers.
    pub fn start(self: &Arc<Self>, mirrors: Arc<Mirrors>, serving: Arc<Backend>, sample: Sample, serving_reply: Bytes) {
        let me = self.clone();
        let payload = sample.request.raw().clone();
        let (to, db) = (sample.serving.other(), sample.db);
        let queue = mirrors.clone();
        let judge = Box::new(move |mirror_reply: Reply| match mirror_reply {
            // The other side's queue was full: the read never went.
            Err(BackendError::Overloaded { .. }) => me.count(Outcome::Skipped),
            Err(_) => me.count(Outcome::Error),
            Ok(m) => match me.first_verdict(&sample, &serving_reply, &m) {
                Verdict::Match => me.count(Outcome::Match),
                Verdict::Mismatch(class) => {
                    tokio::spawn(me.clone().recheck(queue, serving, sample, class));
                }
            },
        });
        if !mirrors.enqueue_read(to, payload, db, judge) {
            self.count(Outcome::Skipped);
        }
    }

    /// Reads both sides again after the recheck delay: lag or divergence?
    async fn recheck(self: Arc<Self>, mirrors: Arc<Mirrors>, serving: Arc<Backend>, sample: Sample, first: Class) {
        tokio::time::sleep(self.settings.load().recheck_delay).await;
        let raw = sample.request.raw().clone();
        let (payload, replies, pick) = wrap_db(raw.clone(), 1, sample.db, serving.settings().db);
        let (tx, rx) = tokio::sync::oneshot::channel();
        serving.shared(Protocol::Resp2, 0).send(Job { payload, replies, pick, sink: Sink::Reply(tx) }).await;
        let (mtx, mrx) = tokio::sync::oneshot::channel();
        let queued = mirrors.enqueue_read(
            sample.serving.other(),
            raw,
            sample.db,
            Box::new(move |r| {
                let _ = mtx.send(r);
            }),
        );
        if !queued {
            self.count(Outcome::Skipped);
        } else {
            match (rx.await, mrx.await) {
                (Ok(Ok(s)), Ok(Ok(m))) => self.conclude(&sample, first, &s, &m),
                (_, Ok(Err(BackendError::Overloaded { .. }))) => self.count(Outcome::Skipped),
                _ => self.count(Outcome::Error),
            }
        }
    }

    /// Reads compared so far and how many were confirmed mismatches (for the guardrails).
    pub fn compared_and_mismatched(&self) -> (u64, u64) {
        let c = |o: Outcome| self.counts[o as usize].load(Ordering::Relaxed);
        (c(Outcome::Match) + c(Outcome::Transient) + c(Outcome::Mismatch), c(Outcome::Mismatch))
    }

    /// Counters and the latest confirmed mismatches, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let c = |o: Outcome| self.counts[o as usize].load(Ordering::Relaxed);
        let recent: Vec<_> = self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        serde_json::json!({
            "percent": self.settings.load().percent,
            "match": c(Outcome::Match),
            "transient": c(Outcome::Transient),
            "mismatch": c(Outcome::Mismatch),
            "skipped": c(Outcome::Skipped),
            "error": c(Outcome::Error),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "recent_mismatches": recent,
        })
    }
}
