//! `tandem repair`: re-copies the keys a verify report or the proxy's repair journal lists,
//! from the side that serves each key under the current cutover to the other side.
//!
//! The serving side is the truth clients see, so it is never written: its value (and
//! absolute expiry) replaces the other side's, and a key missing there is deleted on the other.
//! Each repaired key is read again on both sides afterwards and counted as fixed or not.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;

use super::client::Conn;
use super::copy::{self, ExpiryCommand, Read, Snapshot, Written};
use super::verify::{classify, read_both};
use super::{key_display, key_from_json, Endpoints};
use crate::proto::reply;
use crate::route::{self, CutoverPlan, Side};

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// A report written by `tandem verify --report` (repeatable).
    #[arg(long)]
    pub report: Vec<PathBuf>,
    /// A repair journal written by the proxy (`mirror.journal`, `compare.log`; repeatable).
    #[arg(long)]
    pub journal: Vec<PathBuf>,
    /// The cutover percentage that decides which side serves a key. Default: asked of the
    /// running proxy (admin API from --config / --admin), else `cutover.percent` of the config,
    /// else 0 (the source serves every key).
    #[arg(long)]
    pub cutover: Option<f64>,
    /// Admin address of the running proxy to ask for the cutover.
    #[arg(long)]
    pub admin: Option<String>,
    /// Keys per pipeline.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Only say what would be copied, in which direction.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Counts {
    keys: u64,
    to_target: u64,
    to_source: u64,
    deleted: u64,
    failed: u64,
    fixed: u64,
    still_different: u64,
}

pub fn run(args: RepairArgs) -> ExitCode {
    match super::run_tool("repair", repair(&args)) {
        Err(code) => code,
        Ok(c) if c.failed > 0 || c.still_different > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
    }
}

/// Keys from every report and journal, each once, in the order first seen.
fn collect_keys(args: &RepairArgs) -> Result<Vec<Bytes>, String> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    let mut push = |k: Bytes| {
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    };
    for path in &args.report {
        let text = std::fs::read(path).map_err(|e| format!("cannot read report {}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("report {} is not valid JSON: {e}", path.display()))?;
        let Some(entries) = doc.get("differences").and_then(|d| d.as_array()) else {
            return Err(format!(
                "report {} has no \"differences\" list (is it from tandem verify --report?)",
                path.display()
            ));
        };
        for (i, entry) in entries.iter().enumerate() {
            push(key_from_json(entry).ok_or_else(|| format!("report {}: entry {i} has no key", path.display()))?);
        }
    }
    for path in &args.journal {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read journal {}: {e}", path.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("cannot read journal {}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            // A line cut short by a crash is skipped, not fatal.
            match serde_json::from_str::<serde_json::Value>(&line).ok().as_ref().and_then(key_from_json) {
                Some(k) => push(k),
                None => {
                    tracing::warn!(journal = %path.display(), line = i + 1, "skipping a journal line without a key")
                }
            }
        }
    }
    Ok(keys)
}

/// The cutover percentage and where it came from.
fn cutover(args: &RepairArgs, config: &crate::config::Config) -> Result<(f64, String), String> {
    if let Some(p) = args.cutover {
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("--cutover {p}: must be between 0 and 100"));
        }
        return Ok((p, "--cutover".into()));
    }
    if args.admin.is_none() && args.endpoints.config.is_none() {
        return Ok((0.0, "default (no --cutover, --config or --admin)".into()));
    }
    match crate::ctl::fetch_status(args.endpoints.config.clone(), args.admin.clone()) {
        Ok(status) => match status.pointer("/cutover/percent").and_then(|p| p.as_f64()) {
            Some(p) => Ok((p, "the running proxy".into())),
            None => Err("the running proxy's /status has no cutover.percent".into()),
        },
        Err(e) if args.admin.is_some() => Err(e),
        Err(e) => {
            eprintln!("tandem repair: {e}; using cutover.percent from the config");
            Ok((config.cutover.percent, "cutover.percent in the config".into()))
        }
    }
}

async fn repair(args: &RepairArgs) -> Result<Counts, String> {
    let start = Instant::now();
    if args.report.is_empty() && args.journal.is_empty() {
        return Err("nothing to repair: give --report FILE (from tandem verify) and/or --journal FILE".into());
    }
    let (config, src, tgt) = args.endpoints.resolve()?;
    let keys = collect_keys(args)?;
    let (percent, origin) = cutover(args, &config)?;
    let plan = CutoverPlan::new(percent);
    let mut c = Counts { keys: keys.len() as u64, ..Counts::default() };

    let mut source = Conn::open(&src).await.map_err(|e| format!("cannot connect to the source: {e}"))?;
    let mut target = Conn::open(&tgt).await.map_err(|e| format!("cannot connect to the target: {e}"))?;
    let exp = (
        ExpiryCommand::detect(&mut source).await.map_err(|e| e.to_string())?,
        ExpiryCommand::detect(&mut target).await.map_err(|e| e.to_string())?,
    );
    let e = |e: anyhow::Error| e.to_string();
    let mut failed_sample = Vec::new();

    for chunk in keys.chunks(args.count as usize) {
        let (from_source, from_target): (Vec<Bytes>, Vec<Bytes>) =
            chunk.iter().cloned().partition(|k| plan.side(route::slot(k)) == Side::Source);
        if args.dry_run {
            c.to_target += from_source.len() as u64;
            c.to_source += from_target.len() as u64;
            continue;
        }
        for (keys, from_is_source) in [(from_source, true), (from_target, false)] {
            if keys.is_empty() {
                continue;
            }
            let (from, to, from_exp) =
                if from_is_source { (&mut source, &mut target, exp.0) } else { (&mut target, &mut source, exp.1) };
            let outcome = copy_over(from, to, &keys, from_exp).await.map_err(e)?;
            for (key, result) in keys.iter().zip(outcome) {
                match result {
                    Ok(true) if from_is_source => c.to_target += 1,
                    Ok(true) => c.to_source += 1,
                    Ok(false) => c.deleted += 1,
                    Err(why) => {
                        c.failed += 1;
                        tracing::warn!(key = %key_display(key), reason = %why, "key not repaired");
                        if failed_sample.len() < 100 {
                            failed_sample.push(format!("{}: {why}", key_display(key)));
                        }
                    }
                }
            }
        }
        // Read both sides again: the repair worked if they now agree.
        let (s, g) = read_both(&mut source, &mut target, chunk, exp).await.map_err(e)?;
        for (s, g) in s.iter().zip(&g) {
            match classify(s, g, 1000) {
                Ok(None) => c.fixed += 1,
                _ => c.still_different += 1,
            }
        }
    }

    let elapsed = start.elapsed();
    if args.json {
        println!(
            "{}",
            json!({
                "keys": c.keys,
                "copied": c.to_target + c.to_source,
                "copied_to_target": c.to_target,
                "copied_to_source": c.to_source,
                "deleted": c.deleted,
                "failed": c.failed,
                "failed_keys": failed_sample,
                "fixed": c.fixed,
                "still_different": c.still_different,
                "cutover_percent": percent,
                "cutover_from": origin,
                "dry_run": args.dry_run,
                "elapsed_ms": elapsed.as_millis() as u64,
            })
        );
    } else {
        let verb = if args.dry_run { "would copy" } else { "copied" };
        println!("repair: {} keys, cutover {percent}% (from {origin}), {:.1}s", c.keys, elapsed.as_secs_f64());
        println!("  {verb} source -> target   {}", c.to_target);
        println!("  {verb} target -> source   {}", c.to_source);
        if !args.dry_run {
            println!("  deleted (gone on the serving side)  {}", c.deleted);
            println!("  failed                              {}", c.failed);
            println!("  now equal on both sides             {}", c.fixed);
            println!("  still different (live writes?)      {}", c.still_different);
            for k in &failed_sample {
                println!("    failed: {k}");
            }
        }
    }
    Ok(c)
}

/// Makes `to` hold what `from` holds for each key: `Ok(true)` copied, `Ok(false)` deleted
/// (absent on `from`), `Err` why not.
async fn copy_over(
    from: &mut Conn,
    to: &mut Conn,
    keys: &[Bytes],
    exp: ExpiryCommand,
) -> anyhow::Result<Vec<Result<bool, String>>> {
    let reads = copy::read_dump(from, keys, exp).await?;
    let mut out: Vec<Option<Result<bool, String>>> = vec![None; keys.len()];
    let mut present: Vec<(usize, Snapshot)> = Vec::new();
    let mut absent = Vec::new();
    for (i, r) in reads.into_iter().enumerate() {
        match r {
            Read::Present(s) => present.push((i, s)),
            Read::Missing => absent.push(i),
            Read::Failed(why) => out[i] = Some(Err(why)),
        }
    }
    if !absent.is_empty() {
        let cmds: Vec<Bytes> = absent.iter().map(|&i| reply::command(&[b"DEL".as_slice(), &keys[i]])).collect();
        to.call_many(&cmds).await?;
        for i in absent {
            out[i] = Some(Ok(false));
        }
    }
    let items: Vec<(&Bytes, &Snapshot)> = present.iter().map(|(i, s)| (&keys[*i], s)).collect();
    let written = copy::write(to, &items, true).await?;
    let mut rejected = Vec::new();
    for ((i, _), w) in present.iter().zip(written) {
        out[*i] = Some(match w {
            Written::Copied | Written::Expired => Ok(true),
            Written::Busy => Err("the key exists (not replaced)".into()),
            Written::Rejected(_) => {
                rejected.push(*i);
                continue;
            }
            Written::Failed(why) => Err(why),
        });
    }
    if !rejected.is_empty() {
        // The other side does not take this server's DUMP payloads: copy by type.
        let ks: Vec<Bytes> = rejected.iter().map(|&i| keys[i].clone()).collect();
        let reads = copy::read_struct(from, &ks, exp).await?;
        let mut snaps = Vec::new();
        for (&i, r) in rejected.iter().zip(reads) {
            match r {
                Read::Present(s) => snaps.push((i, s)),
                Read::Missing => {
                    to.call(&[b"DEL".as_slice(), &keys[i]]).await?;
                    out[i] = Some(Ok(false));
                }
                Read::Failed(why) => out[i] = Some(Err(why)),
            }
        }
        let items: Vec<(&Bytes, &Snapshot)> = snaps.iter().map(|(i, s)| (&keys[*i], s)).collect();
        for ((i, _), w) in snaps.iter().zip(copy::write(to, &items, true).await?) {
            out[*i] = Some(match w {
                Written::Copied | Written::Expired => Ok(true),
                Written::Busy => Err("the key exists (not replaced)".into()),
                Written::Rejected(why) | Written::Failed(why) => Err(why),
            });
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Err("not processed".into()))).collect())
}
