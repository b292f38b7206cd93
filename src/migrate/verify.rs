//! `tandem verify`: compares the two keyspaces key by key.
//!
//! Two passes: every source key is read on both sides and compared (type, value, expiry);
//! then every target key is checked for existence on the source (keys only the target has).
//! Values are read by type and compared as values, not as `DUMP` payloads, so two servers that
//! encode the same hash differently (listpack against hashtable, another engine) agree; order
//! is ignored where the type has none.
//!
//! Live traffic makes a single look unreliable: a key written between the two reads, or
//! mirrored a moment later, differs for an instant. Every difference found is therefore read
//! again after `--recheck-delay`, and only those that persist are reported.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use super::client::Conn;
use super::copy::{self, ExpiryCommand, Payload, Read};
use super::{key_display, key_json, Endpoints, Progress, RateLimit};
use crate::proto::reply;
use crate::proto::value::Value;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Compare only keys matching this glob pattern (SCAN MATCH).
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Keys asked of each SCAN call (the batch size).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Compare at most this many keys per second.
    #[arg(long, value_name = "KEYS_PER_SEC")]
    pub rate: Option<f64>,
    /// Largest expiry difference that still counts as equal.
    #[arg(long, default_value = "1s", value_parser = crate::config::units::parse_duration)]
    pub ttl_tolerance: Duration,
    /// How long to wait before reading a difference again (live traffic settles).
    #[arg(long, default_value = "200ms", value_parser = crate::config::units::parse_duration)]
    pub recheck_delay: Duration,
    /// Keys shown per class of difference.
    #[arg(long, default_value_t = 10)]
    pub sample: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write every differing key (up to --max-report) to this JSON file, for `tandem repair`.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Most keys written to --report.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_report: usize,
    /// No progress bar or progress lines.
    #[arg(long)]
    pub no_progress: bool,
}

/// A class of difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    MissingOnTarget,
    ExtraOnTarget,
    Type,
    Value,
    Ttl,
}

impl Class {
    pub const ALL: [Class; 5] = [Class::MissingOnTarget, Class::ExtraOnTarget, Class::Type, Class::Value, Class::Ttl];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::MissingOnTarget => "missing_on_target",
            Class::ExtraOnTarget => "extra_on_target",
            Class::Type => "type",
            Class::Value => "value",
            Class::Ttl => "ttl",
        }
    }
}

/// Compares one key as read from both sides. `Err` when either read failed.
pub fn classify(source: &Read, target: &Read, ttl_tolerance_ms: i64) -> Result<Option<Class>, String> {
    match (source, target) {
        (Read::Failed(e), _) => Err(format!("source: {e}")),
        (_, Read::Failed(e)) => Err(format!("target: {e}")),
        (Read::Missing, Read::Missing) => Ok(None),
        (Read::Present(_), Read::Missing) => Ok(Some(Class::MissingOnTarget)),
        (Read::Missing, Read::Present(_)) => Ok(Some(Class::ExtraOnTarget)),
        (Read::Present(s), Read::Present(t)) => {
            let (Payload::Struct(sv), Payload::Struct(tv)) = (&s.payload, &t.payload) else {
                return Err("values were not read by type".into());
            };
            if sv.kind != tv.kind {
                return Ok(Some(Class::Type));
            }
            if sv.digest() != tv.digest() {
                return Ok(Some(Class::Value));
            }
            let ttl_differs = match (s.expire_at, t.expire_at) {
                (None, None) => false,
                (Some(a), Some(b)) => (a - b).abs() > ttl_tolerance_ms,
                _ => true,
            };
            Ok(ttl_differs.then_some(Class::Ttl))
        }
    }
}

/// Reads `keys` on both sides at once.
pub async fn read_both(
    source: &mut Conn,
    target: &mut Conn,
    keys: &[Bytes],
    exp: (ExpiryCommand, ExpiryCommand),
) -> anyhow::Result<(Vec<Read>, Vec<Read>)> {
    let (s, t) = tokio::join!(copy::read_struct(source, keys, exp.0), copy::read_struct(target, keys, exp.1));
    Ok((s?, t?))
}

#[derive(Default)]
struct Tally {
    source_keys: u64,
    target_keys: u64,
    compared: u64,
    unreadable: u64,
    unreadable_sample: Vec<String>,
    candidates: Vec<Bytes>,
    seen: HashSet<Bytes>,
}

impl Tally {
    fn candidate(&mut self, key: Bytes) {
        if self.seen.insert(key.clone()) {
            self.candidates.push(key);
        }
    }

    fn unreadable(&mut self, key: &[u8], why: &str) {
        self.unreadable += 1;
        if self.unreadable_sample.len() < 10 {
            self.unreadable_sample.push(format!("{}: {why}", key_display(key)));
        }
    }
}

pub fn run(args: VerifyArgs) -> ExitCode {
    match super::run_tool("verify", verify(&args)) {
        Err(code) => code,
        Ok(differences) if differences > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
    }
}

async fn verify(args: &VerifyArgs) -> Result<u64, String> {
    let start = Instant::now();
    let (_config, src, tgt) = args.endpoints.resolve()?;
    let mut source = Conn::open(&src).await.map_err(|e| format!("cannot connect to the source: {e}"))?;
    let mut target = Conn::open(&tgt).await.map_err(|e| format!("cannot connect to the target: {e}"))?;
    let exp = (
        ExpiryCommand::detect(&mut source).await.map_err(|e| e.to_string())?,
        ExpiryCommand::detect(&mut target).await.map_err(|e| e.to_string())?,
    );
    let total = source.dbsize().await.map_err(|e| e.to_string())? + target.dbsize().await.map_err(|e| e.to_string())?;
    let tol = args.ttl_tolerance.as_millis() as i64;
    let mut progress = Progress::new("verify", total, !args.no_progress);
    let mut rate = RateLimit::new(args.rate);
    let mut t = Tally::default();
    let e = |e: anyhow::Error| e.to_string();

    // Pass 1: every source key, on both sides.
    let mut cursor = 0;
    loop {
        let (next, keys) = source.scan(cursor, args.pattern.as_deref(), args.count).await.map_err(e)?;
        rate.admit(keys.len()).await;
        t.source_keys += keys.len() as u64;
        let (s, g) = read_both(&mut source, &mut target, &keys, exp).await.map_err(e)?;
        for ((key, s), g) in keys.into_iter().zip(s).zip(g) {
            if matches!(s, Read::Present(_)) {
                t.compared += 1;
            }
            match classify(&s, &g, tol) {
                Ok(None) => {}
                // Gone from the source meanwhile: pass 2 sees it if the target still has it.
                Ok(Some(Class::ExtraOnTarget)) => {}
                Ok(Some(_)) => t.candidate(key),
                Err(why) => t.unreadable(&key, &why),
            }
        }
        progress.update(t.source_keys, &format!("differences so far {}", t.candidates.len()));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }

    // Pass 2: keys only the target has.
    loop {
        let (next, keys) = target.scan(cursor, args.pattern.as_deref(), args.count).await.map_err(e)?;
        rate.admit(keys.len()).await;
        t.target_keys += keys.len() as u64;
        let cmds: Vec<Bytes> = keys.iter().map(|k| reply::command(&[b"EXISTS".as_slice(), k])).collect();
        let exists = source.call_many(&cmds).await.map_err(e)?;
        for (key, ex) in keys.into_iter().zip(exists) {
            if ex == Value::Int(0) {
                t.candidate(key);
            }
        }
        progress.update(t.source_keys + t.target_keys, &format!("differences so far {}", t.candidates.len()));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    progress.finish();

    // Read every difference again once traffic has had time to settle.
    let mut found: Vec<(Bytes, Class)> = Vec::new();
    if !t.candidates.is_empty() {
        tokio::time::sleep(args.recheck_delay).await;
        let candidates = std::mem::take(&mut t.candidates);
        for chunk in candidates.chunks(args.count as usize) {
            let (s, g) = read_both(&mut source, &mut target, chunk, exp).await.map_err(e)?;
            for ((key, s), g) in chunk.iter().zip(s).zip(g) {
                match classify(&s, &g, tol) {
                    Ok(None) => {}
                    Ok(Some(class)) => found.push((key.clone(), class)),
                    Err(why) => t.unreadable(key, &why),
                }
            }
        }
    }

    let mut by_class: BTreeMap<Class, u64> = Class::ALL.iter().map(|c| (*c, 0)).collect();
    let mut samples: BTreeMap<Class, Vec<String>> = BTreeMap::new();
    for (key, class) in &found {
        *by_class.entry(*class).or_default() += 1;
        let s = samples.entry(*class).or_default();
        if s.len() < args.sample {
            s.push(key_display(key));
        }
    }
    let differences = found.len() as u64;
    let elapsed = start.elapsed();

    if let Some(path) = &args.report {
        let doc = json!({
            "version": 1,
            "source": format!("{} db {}", src.addr, src.db),
            "target": format!("{} db {}", tgt.addr, tgt.db),
            "generated_ms": copy::now_ms(),
            "differences": found.iter().take(args.max_report).map(|(k, c)| {
                let mut v = key_json(k);
                v["class"] = json!(c.as_str());
                v
            }).collect::<Vec<_>>(),
            "truncated": found.len() > args.max_report,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("cannot write report {}: {e}", path.display()))?;
    }

    if args.json {
        let doc = json!({
            "source_keys": t.source_keys,
            "target_keys": t.target_keys,
            "compared": t.compared,
            "differences": differences,
            "by_class": by_class.iter().map(|(c, n)| (c.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "samples": samples.iter().map(|(c, ks)| (c.as_str().to_string(), json!(ks))).collect::<serde_json::Map<_, _>>(),
            "unreadable": t.unreadable,
            "unreadable_sample": t.unreadable_sample,
            "ttl_tolerance_ms": tol,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        println!("{doc}");
    } else {
        println!(
            "verify: {} source keys, {} target keys, {} compared in {:.1}s: {}",
            t.source_keys,
            t.target_keys,
            t.compared,
            elapsed.as_secs_f64(),
            if differences == 0 { "no differences".to_string() } else { format!("{differences} differences") }
        );
        for (class, n) in &by_class {
            println!("  {:<20}{n}", class.as_str());
            for k in samples.get(class).into_iter().flatten() {
                println!("      {k}");
            }
        }
        if t.unreadable > 0 {
            println!("  {:<20}{} (not compared)", "unreadable", t.unreadable);
            for k in &t.unreadable_sample {
                println!("      {k}");
            }
        }
        if differences > 0 {
            match &args.report {
                Some(p) => println!("next: tandem repair --report {}", p.display()),
                None => println!("next: run again with --report FILE, then tandem repair --report FILE"),
            }
        }
    }
    Ok(differences)
}
