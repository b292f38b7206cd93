//! Soak: minutes of session-store load through tandem while the target fails and the cutover
//! moves, checking at the end that no acknowledged write was lost and that the mirror
//! accounting balances in both directions.
//!
//! Run it with `scripts/soak.sh [--minutes N]`, which builds the release binary and runs
//!
//! ```sh
//! SOAK_MINUTES=N cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! What it does, on loopback ports of its own:
//!
//! * a source redis-server, a target redis-server (with an fsync-always AOF, so a restart
//!   keeps what it acknowledged) behind a fault relay, and tandem mirroring asynchronously with
//!   a repair journal, 1% of reads compared;
//! * 8 client threads, each 250 ops/s: 80% GET, 14% SET with a 15-60 minute TTL, 2% each DEL,
//!   INCR and LPUSH, values of 1 KB, on short connections (20-200 commands each);
//! * one event every few seconds, in turn: the target blackholed for 3 s, slowed to 200 ms
//!   each way for 3 s or restarted; the cutover flipped 10 -> 50 -> 100 -> 0 -> ...; the
//!   config file rewritten (reloads). After each target fault, once the mirror settled,
//!   `tandem repair` re-copies the journaled keys, as an operator would before moving on;
//! * at the end: every key's last acknowledged write is read back from the backend serving it
//!   at the final cutover.
//!
//! It prints ops, errors by kind, stale reads, lost acknowledged writes, the mirror accounting
//! per direction and tandem's peak RSS, and fails if a write was lost, the accounting does not
//! balance or the mirror never settles. Bounded: the load stops at the deadline and every wait
//! after it is bounded too.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use support::load::{self, Load, LoadSpec, MirrorStats, Mix, RssSampler, StatusWatch};
use support::{http, output_with_timeout, tandem_bin, wait_until, RedisServer, Relay, Tandem};
use tandem::route::{slot, CutoverPlan, Side};

/// Keeps every acknowledged write across a SIGKILL and restart of the target.
const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

struct Soak {
    source: RedisServer,
    target: RedisServer,
    relay: Relay,
    proxy: Tandem,
    journal: std::path::PathBuf,
    started: Instant,
    /// Problems that fail the soak, as they happen.
    problems: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
    reloads: u64,
    /// Probe writes so far: each probe value is new, so an old one cannot pass for it.
    probes: u64,
    _dir: tempfile::TempDir,
}

fn config(source: &str, target: &str, journal: &Path, reload: u64) -> String {
    let backend = |url: &str| {
        format!(
            "    url: {url}\n    connect_timeout: 200ms\n    command_timeout: 1s\n    reconnect_backoff:\n      \
             min: 20ms\n      max: 500ms\n"
        )
    };
    format!(
        // Two worker threads: the test suite runs the default single event loop, and a long
        // run of faults under load is where tasks racing on two threads would show.
        "workers: 2\nbackends:\n  source:\n{}  target:\n{}mirror:\n  mode: async\n  journal: {}\ncutover:\n  flip_timeout: 10s\n\
         compare:\n  percent: {}\nlimits:\n  max_clients: {}\n",
        backend(source),
        backend(target),
        journal.display(),
        1 + reload % 3,
        10_000 + reload
    )
}

impl Soak {
    fn log(&self, line: &str) {
        println!("[{:>7.1}s] {line}", self.started.elapsed().as_secs_f64());
    }

    /// The mirror counters that matter between events, in one short line.
    fn mirror_line(&self) -> String {
        let status = self.status();
        let (s, t) = (MirrorStats::of(&status, Side::Source), MirrorStats::of(&status, Side::Target));
        format!(
            "to target: applied {} error {} diverged {} dropped {} in flight {}; to source: applied {} not applied {}",
            t.applied,
            t.error,
            t.diverged,
            t.dropped,
            t.in_flight,
            s.applied,
            s.not_applied()
        )
    }

    fn problem(&mut self, what: String) {
        self.log(&format!("PROBLEM: {what}"));
        self.problems.push(what);
    }

    fn bump(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn status(&self) -> serde_json::Value {
        http::status(self.proxy.admin_port())
    }

    /// Waits (bounded) until nothing is in flight towards either side; records a problem if
    /// the accounting does not balance or the mirror does not settle.
    fn settle(&mut self, within: Duration) -> Option<[MirrorStats; 2]> {
        let admin = self.proxy.admin_port();
        let mut last = [MirrorStats::default(); 2];
        let settled = load::poll_until(within, || {
            let status = http::status(admin);
            last = [MirrorStats::of(&status, Side::Source), MirrorStats::of(&status, Side::Target)];
            last.iter().any(|s| !s.outcomes_within_enqueued()) || last.iter().all(|s| s.in_flight == 0)
        });
        for (side, s) in [Side::Source, Side::Target].iter().zip(&last) {
            if !s.outcomes_within_enqueued() {
                self.problem(format!("mirror accounting towards the {} does not balance: {s}", side.name()));
                return None;
            }
        }
        if !settled {
            self.problem(format!(
                "mirror still in flight after {within:?}: to source {}, to target {}",
                last[0], last[1]
            ));
            return None;
        }
        Some(last)
    }

    /// Runs `tandem repair` over the journal, from the serving side of each key at the
    /// current cutover to the other side, as an operator does after a mirror outage.
    fn repair(&mut self, not_applied: u64) {
        // The journal writer is asynchronous: wait until it holds every write not applied.
        let journal = self.journal.clone();
        let lines = || std::fs::read_to_string(&journal).map(|t| t.lines().count() as u64).unwrap_or(0);
        if !load::poll_until(Duration::from_secs(30), || lines() >= not_applied) {
            self.problem(format!(
                "the journal holds {} entries, fewer than the {not_applied} writes not applied",
                lines()
            ));
        }
        let mut cmd = std::process::Command::new(tandem_bin());
        cmd.args(["repair", "--source", &self.source.url(), "--target", &self.target.url(), "--json"])
            .args(["--admin", &self.proxy.admin_addr()])
            .arg("--journal")
            .arg(&self.journal);
        let out = output_with_timeout(cmd, Duration::from_secs(180));
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
        self.bump("repairs");
        if v.is_null() || v["failed"].as_u64() != Some(0) {
            self.problem(format!(
                "tandem repair failed ({}): {text} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        } else {
            self.log(&format!(
                "repair: {} journaled keys, {} copied, {} deleted, {} still different (live writes)",
                v["keys"], v["copied"], v["deleted"], v["still_different"]
            ));
        }
    }

    /// Waits until the mirror towards the target works again after a fault (it may still be
    /// in its reconnect backoff, dropping writes): a write through tandem to a key the source
    /// serves reaches the target. Nothing to wait for at 100%, where nothing is mirrored there.
    fn wait_mirror_up(&mut self) {
        let plan = CutoverPlan::new(self.status()["cutover"]["percent"].as_f64().unwrap_or(0.0));
        let Some(key) =
            (0..10_000).map(|i| format!("soak-probe:{i}")).find(|k| plan.side(slot(k.as_bytes())) == Side::Source)
        else {
            return;
        };
        let (proxy, target) = (self.proxy.addr(), self.target.addr());
        let probes = &mut self.probes;
        let up = load::poll_until(Duration::from_secs(30), || {
            *probes += 1;
            let value = format!("probe-{probes}");
            let cmd = vec!["SET".to_string(), key.clone(), value.clone()];
            load::request_many(&proxy, &[cmd])[0] == b"+OK\r\n"
                && load::poll_until(Duration::from_millis(300), || {
                    load::get_many(&target, std::slice::from_ref(&key))[0].as_deref() == Some(value.as_bytes())
                })
        });
        if !up {
            self.problem("the mirror towards the target did not come back within 30 s of the fault's end".into());
        }
    }

    fn flip(&mut self, percent: f64) {
        let started = Instant::now();
        let (code, body) = http::post(self.proxy.admin_port(), "/cutover", &format!("{{\"percent\": {percent}}}"));
        let took = started.elapsed();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        self.bump("flips");
        if code != 200 {
            self.problem(format!("flip to {percent}% answered {code}: {body}"));
            return;
        }
        if v["drained"] != true {
            self.bump("flips not drained");
        }
        self.log(&format!(
            "flip -> {percent}%: {} slots moved, waited {} ms, drained {} ({:.0} ms)",
            v["moved_slots"],
            v["waited_ms"],
            v["drained"],
            took.as_secs_f64() * 1e3
        ));
    }

    fn reload(&mut self) {
        self.reloads += 1;
        let before = self.status()["generation"].as_u64().unwrap_or(0);
        self.proxy.write_config(&config(&self.source.url(), &self.relay.url(), &self.journal, self.reloads));
        let admin = self.proxy.admin_port();
        let applied = load::poll_until(Duration::from_secs(10), || {
            http::status(admin)["generation"].as_u64().unwrap_or(0) > before
        });
        self.bump("reloads");
        if applied && self.status()["last_reload_error"].is_null() {
            self.log(&format!("config reload #{} applied", self.reloads));
        } else {
            self.problem(format!("config reload #{} not applied within 10 s: {}", self.reloads, self.status()));
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Blackhole,
    Slow,
    Restart,
    Flip,
    Reload,
}

#[test]
#[ignore = "a soak of several minutes: run it with scripts/soak.sh [--minutes N]"]
fn soak() {
    let minutes: f64 = std::env::var("SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(5.0);
    assert!((0.1..=720.0).contains(&minutes), "SOAK_MINUTES must be within 0.1..720, got {minutes}");
    let length = Duration::from_secs_f64(minutes * 60.0);

    let source = RedisServer::start();
    let target = RedisServer::start_with(AOF);
    let relay = Relay::start(target.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("repair.jsonl");
    let proxy = Tandem::start_config(
        &config(&source.url(), &relay.url(), &journal, 0),
        &["--reload-poll".into(), "200ms".into(), "--drain-timeout".into(), "5s".into()],
    );
    println!("soak: {minutes} min; tandem {} (pid {}), {}", tandem_bin().display(), proxy.pid(), proxy.addr());
    let mut soak = Soak {
        source,
        target,
        relay,
        proxy,
        journal,
        started: Instant::now(),
        problems: Vec::new(),
        counts: BTreeMap::new(),
        reloads: 0,
        probes: 0,
        _dir: dir,
    };
    let rss = RssSampler::start(soak.proxy.pid(), Duration::from_millis(200));
    let watch = StatusWatch::start_with(soak.proxy.admin_port(), Duration::from_millis(250), length * 2);
    let load = Load::start(LoadSpec {
        workers: 8,
        prefix: "soak".into(),
        keys_per_worker: 500,
        value_len: 1024,
        rate_per_worker: 250,
        mix: Mix::session_store(),
        ttl_secs: Some((900, 3600)),
        reconnect_every: Some((20, 200)),
        reconnect_on_error: true,
        op_timeout: Duration::from_secs(10),
        max_duration: length + Duration::from_secs(60),
        ..LoadSpec::new(soak.proxy.addr())
    });

    let deadline = soak.started + length;
    let cycle = [
        Event::Blackhole,
        Event::Flip,
        Event::Reload,
        Event::Slow,
        Event::Flip,
        Event::Reload,
        Event::Restart,
        Event::Flip,
        Event::Reload,
        Event::Flip,
    ];
    let flips = [10.0, 50.0, 100.0, 0.0];
    let (mut n_flip, mut repaired_upto) = (0usize, 0u64);
    let calm = Duration::from_secs(4);
    for (i, event) in cycle.iter().cycle().enumerate() {
        // Each event takes well under 20 s (a 3 s fault, settling, a repair).
        if Instant::now() + calm + Duration::from_secs(20) > deadline || i > 100_000 {
            break;
        }
        let calm_from = Instant::now();
        wait_until(calm + Duration::from_secs(5), "a calm period", || calm_from.elapsed() >= calm);
        soak.log(&soak.mirror_line());
        match event {
            Event::Blackhole | Event::Slow | Event::Restart => {
                let fault = Duration::from_secs(3);
                match event {
                    Event::Blackhole => {
                        soak.log("target blackholed for 3 s");
                        soak.relay.blackhole(true);
                        let t = Instant::now();
                        wait_until(fault * 2, "the fault", || t.elapsed() >= fault);
                        soak.relay.blackhole(false);
                    }
                    Event::Slow => {
                        soak.log("target slowed to 200 ms each way for 3 s");
                        soak.relay.set_delay(Duration::from_millis(200));
                        let t = Instant::now();
                        wait_until(fault * 2, "the fault", || t.elapsed() >= fault);
                        soak.relay.set_delay(Duration::ZERO);
                    }
                    _ => {
                        soak.log("target restarted (SIGKILL, then start on the same port)");
                        soak.target.restart();
                    }
                }
                soak.wait_mirror_up();
                soak.bump(match event {
                    Event::Blackhole => "blackholes",
                    Event::Slow => "slowdowns",
                    _ => "target restarts",
                });
                let settled_from = Instant::now();
                if let Some(stats) = soak.settle(Duration::from_secs(60)) {
                    let not_applied = stats[0].not_applied() + stats[1].not_applied();
                    soak.log(&format!(
                        "mirror settled in {:.1}s; to target: {}; to source: {}",
                        settled_from.elapsed().as_secs_f64(),
                        stats[1],
                        stats[0]
                    ));
                    if not_applied > repaired_upto {
                        soak.repair(not_applied);
                        repaired_upto = not_applied;
                    }
                }
            }
            Event::Flip => {
                let percent = flips[n_flip % flips.len()];
                n_flip += 1;
                soak.flip(percent);
            }
            Event::Reload => soak.reload(),
        }
    }

    // Plain load until the deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    wait_until(left + Duration::from_secs(5), "the end of the soak", || Instant::now() >= deadline);
    let report = load.stop();
    soak.relay.blackhole(false);
    soak.relay.set_delay(Duration::ZERO);
    let settled = soak.settle(Duration::from_secs(120));
    let watched = watch.stop();
    let peak_kb = rss.stop();
    let percent = soak.status()["cutover"]["percent"].as_f64().unwrap_or(0.0);
    let verdict = load::check_ledger(
        &report.ledger,
        &soak.source.addr(),
        &soak.target.addr(),
        load::plan_sides(CutoverPlan::new(percent)),
    );
    let journaled: HashSet<String> = std::fs::read_to_string(&soak.journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(String::from))
        .collect();
    // Keys whose two copies differ: the mirror side's copy matters for the next rollback.
    let keys: Vec<String> =
        report.ledger.keys.iter().filter(|(_, h)| h.kind != load::KeyKind::List).map(|(k, _)| k.clone()).collect();
    let differing = load::get_many(&soak.source.addr(), &keys)
        .into_iter()
        .zip(load::get_many(&soak.target.addr(), &keys))
        .filter(|(a, b)| a != b)
        .count();

    println!("\n==================== soak summary ({minutes} min) ====================");
    print!("{}", report.summary());
    println!(
        "acknowledged writes: {} to {} keys; checked {} keys on their serving backend at cutover {percent}%",
        report.ledger.acked_writes(),
        report.ledger.acked_keys(),
        verdict.checked
    );
    println!(
        "LOST acknowledged writes: {}{}",
        verdict.lost.len(),
        if verdict.failed_write_applied > 0 {
            format!(" ({} keys hold a write that had failed, which is allowed)", verdict.failed_write_applied)
        } else {
            String::new()
        }
    );
    for l in verdict.lost.iter().take(20) {
        println!("  lost: {l}{}", if journaled.contains(&l.key) { " [journaled]" } else { "" });
    }
    println!("keys differing between source and target at the end: {differing} (the mirror side; repair fixes them)");
    match &settled {
        Some([to_source, to_target]) => {
            println!("mirror towards target: {to_target}");
            println!("mirror towards source: {to_source}");
        }
        None => println!("mirror: DID NOT SETTLE"),
    }
    println!(
        "/status samples: {}, accounting violations: {}, max in flight {}",
        watched.samples,
        watched.violations.len(),
        watched.max_in_flight
    );
    println!("events: {}", soak.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    println!("tandem peak RSS: {:.1} MB; journal entries: {}", peak_kb as f64 / 1024.0, journaled.len());
    let log = soak.proxy.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    println!("tandem warnings and errors logged: {}; the last ones:", warnings.len());
    for l in &warnings[warnings.len().saturating_sub(12)..] {
        println!("  {l}");
    }
    for p in &soak.problems {
        println!("problem: {p}");
    }
    println!("=====================================================================");

    let mut failed = Vec::new();
    if !verdict.lost.is_empty() {
        failed.push(format!("{} acknowledged writes lost", verdict.lost.len()));
    }
    if !watched.violations.is_empty() {
        failed.push(format!("mirror accounting did not balance: {:?}", watched.violations));
    }
    if settled.is_none() {
        failed.push("the mirror did not settle at the end".into());
    }
    failed.extend(soak.problems.iter().cloned());
    assert!(failed.is_empty(), "soak failed:\n  {}", failed.join("\n  "));
    println!("soak: PASS");
}
