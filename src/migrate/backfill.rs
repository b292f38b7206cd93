//! `tandem backfill`: copies the keys that already exist on the source to the target.
//!
//! Per batch of keys `SCAN` returns:
//! 1. read every key's value and absolute expiry from the source in one `MULTI`/`EXEC`;
//! 2. write them to the target without replacing: a key the live mirror already wrote is newer
//!    than the copy and wins (`BUSYKEY`, counted as skipped);
//! 3. ask the source whether the copied keys still exist. One deleted after step 1 may have been
//!    resurrected on the target by step 2 (the mirror's `DEL` found nothing to delete); it is
//!    deleted again, but only if the target still holds exactly the copied value.
//!
//! The `SCAN` cursor is saved to a checkpoint after every batch, so a killed run continues
//! where it stopped (`--resume`); keys copied twice are simply skipped the second time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::Conn;
use super::copy::{self, ExpiryCommand, Read, Snapshot, Undo, Written};
use super::{key_display, Endpoints, Progress, RateLimit};
use crate::proto::reply;
use crate::proto::value::Value;

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Copy only keys matching this glob pattern (SCAN MATCH).
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Keys asked of each SCAN call (the batch size).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Copy at most this many keys per second (default: as fast as the servers allow).
    #[arg(long, value_name = "KEYS_PER_SEC")]
    pub rate: Option<f64>,
    /// How values travel: `dump` (DUMP/RESTORE), `struct` (read and rebuild by type), or
    /// `auto` (dump, switching to struct when the target rejects a payload).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Where progress is saved after every batch.
    #[arg(long, default_value = "backfill.checkpoint.json")]
    pub checkpoint: PathBuf,
    /// Continue the unfinished run recorded in the checkpoint.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Start over even though the checkpoint records an unfinished run.
    #[arg(long)]
    pub restart: bool,
    /// Only count what would be copied (keys absent on the target) and what would be skipped.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or progress lines.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Dump,
    Struct,
}

/// Counts of one run (and, in the checkpoint, of all runs of one job).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub scanned: u64,
    pub copied: u64,
    pub skipped_existing: u64,
    pub gone: u64,
    pub expired: u64,
    pub deleted_after_copy: u64,
    pub changed_after_copy: u64,
    pub failed: u64,
    pub struct_copies: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.scanned += o.scanned;
        self.copied += o.copied;
        self.skipped_existing += o.skipped_existing;
        self.gone += o.gone;
        self.expired += o.expired;
        self.deleted_after_copy += o.deleted_after_copy;
        self.changed_after_copy += o.changed_after_copy;
        self.failed += o.failed;
        self.struct_copies += o.struct_copies;
    }

    fn line(&self) -> String {
        format!(
            "copied {} skipped {} gone {} failed {}",
            self.copied,
            self.skipped_existing,
            self.gone + self.expired,
            self.failed
        )
    }
}

/// What the checkpoint file holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    source: String,
    target: String,
    pattern: Option<String>,
    /// The SCAN cursor to continue from; every key before it has been handled.
    cursor: u64,
    done: bool,
    /// Counts over every run of this job.
    totals: Counts,
    updated_ms: i64,
}

impl Checkpoint {
    fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read checkpoint {}: {e}", path.display())),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("checkpoint {} is not valid: {e}", path.display())),
        }
    }

    /// Written to a temporary file and renamed, so a kill never leaves half a checkpoint.
    fn save(&mut self, path: &Path) -> std::io::Result<()> {
        self.updated_ms = copy::now_ms();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// The result of a run.
struct Outcome {
    counts: Counts,
    failed_keys: Vec<String>,
    elapsed: std::time::Duration,
    resumed: bool,
    dry_run: bool,
    mode_used: &'static str,
}

/// Failed keys kept for the summary.
const FAILED_SAMPLE: usize = 100;

pub fn run(args: BackfillArgs) -> ExitCode {
    let json = args.json;
    match super::run_tool("backfill", backfill(args)) {
        Err(code) => code,
        Ok(o) => {
            report(&o, json);
            if o.counts.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn report(o: &Outcome, json: bool) {
    let c = &o.counts;
    let secs = o.elapsed.as_secs_f64().max(0.001);
    let rate = (c.copied + c.skipped_existing) as f64 / secs;
    if json {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        let extra = json!({
            "elapsed_ms": o.elapsed.as_millis() as u64,
            "keys_per_sec": (rate * 10.0).round() / 10.0,
            "resumed": o.resumed,
            "dry_run": o.dry_run,
            "mode": o.mode_used,
            "failed_keys": o.failed_keys,
        });
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        println!("{v}");
        return;
    }
    let verb = if o.dry_run { "would copy" } else { "copied" };
    println!(
        "backfill {}: scanned {} keys in {:.1}s ({rate:.0} keys/s, {} copy)",
        if o.dry_run { "dry run" } else { "done" },
        c.scanned,
        secs,
        o.mode_used
    );
    println!("  {verb:<22}{}", c.copied);
    println!("  {:<22}{}", "skipped (on target)", c.skipped_existing);
    println!("  {:<22}{}", "gone before copy", c.gone);
    println!("  {:<22}{}", "expired before copy", c.expired);
    println!("  {:<22}{}", "deleted after copy", c.deleted_after_copy);
    println!("  {:<22}{}", "changed after copy", c.changed_after_copy);
    println!("  {:<22}{}", "copied by type", c.struct_copies);
    println!("  {:<22}{}", "failed", c.failed);
    for k in &o.failed_keys {
        println!("    failed: {k}");
    }
    if !o.dry_run {
        println!("next: `tandem verify` compares both keyspaces");
    }
}

struct Job {
    source: Conn,
    target: Conn,
    exp: ExpiryCommand,
    mode: Mode,
    dry_run: bool,
    counts: Counts,
    failed_keys: Vec<String>,
}

async fn backfill(args: BackfillArgs) -> Result<Outcome, String> {
    let (_config, src, tgt) = args.endpoints.resolve()?;
    let source_id = format!("{} db {}", src.addr, src.db);
    let target_id = format!("{} db {}", tgt.addr, tgt.db);

    // The checkpoint decides where to start.
    let previous = Checkpoint::load(&args.checkpoint)?;
    let mut checkpoint = match (&previous, args.resume, args.restart) {
        (None, true, _) => return Err(format!("--resume: no checkpoint at {}", args.checkpoint.display())),
        (Some(cp), false, false) if !cp.done && !args.dry_run => {
            return Err(format!(
                "an unfinished backfill left a checkpoint at {} (cursor {}, {} keys copied so far); \
                 pass --resume to continue it or --restart to start over",
                args.checkpoint.display(),
                cp.cursor,
                cp.totals.copied
            ))
        }
        (Some(cp), true, _) => {
            if cp.source != source_id || cp.target != target_id || cp.pattern != args.pattern {
                return Err(format!(
                    "the checkpoint at {} belongs to another job ({} -> {}, match {:?}); \
                     use another --checkpoint or --restart",
                    args.checkpoint.display(),
                    cp.source,
                    cp.target,
                    cp.pattern
                ));
            }
            cp.clone()
        }
        _ => Checkpoint {
            version: 1,
            source: source_id.clone(),
            target: target_id.clone(),
            pattern: args.pattern.clone(),
            cursor: 0,
            done: false,
            totals: Counts::default(),
            updated_ms: 0,
        },
    };
    let resumed = args.resume;
    let start = Instant::now();
    if resumed && checkpoint.done {
        eprintln!("tandem backfill: the checkpoint says this backfill already finished; nothing to do");
        return Ok(Outcome {
            counts: Counts::default(),
            failed_keys: Vec::new(),
            elapsed: start.elapsed(),
            resumed,
            dry_run: false,
            mode_used: "none",
        });
    }

    let mut source = Conn::open(&src).await.map_err(|e| format!("cannot connect to the source: {e}"))?;
    let target = Conn::open(&tgt).await.map_err(|e| format!("cannot connect to the target: {e}"))?;
    let exp = ExpiryCommand::detect(&mut source).await.map_err(|e| e.to_string())?;
    let total = source.dbsize().await.map_err(|e| e.to_string())?;
    let mut job = Job {
        source,
        target,
        exp,
        mode: args.mode,
        dry_run: args.dry_run,
        counts: Counts::default(),
        failed_keys: Vec::new(),
    };
    let mut progress = Progress::new("backfill", total, !args.no_progress);
    let mut rate = RateLimit::new(args.rate);
    let mut cursor = checkpoint.cursor;
    tracing::info!(source = %source_id, target = %target_id, cursor, resumed, "backfill starting");

    loop {
        let (next, keys) = job
            .source
            .scan(cursor, args.pattern.as_deref(), args.count)
            .await
            .map_err(|e| interrupted(&e, &args.checkpoint))?;
        rate.admit(keys.len()).await;
        let before = job.counts.clone();
        job.batch(keys).await.map_err(|e| interrupted(&e, &args.checkpoint))?;
        cursor = next;
        if !args.dry_run {
            let mut delta = job.counts.clone();
            delta.sub(&before);
            checkpoint.totals.add(&delta);
            checkpoint.cursor = cursor;
            checkpoint.done = cursor == 0;
            checkpoint
                .save(&args.checkpoint)
                .map_err(|e| format!("cannot write checkpoint {}: {e}", args.checkpoint.display()))?;
        }
        progress.update(job.counts.scanned, &job.counts.line());
        if cursor == 0 {
            break;
        }
    }
    progress.finish();
    let mode_used = match job.mode {
        Mode::Struct => "struct",
        _ => "dump",
    };
    Ok(Outcome {
        counts: job.counts,
        failed_keys: job.failed_keys,
        elapsed: start.elapsed(),
        resumed,
        dry_run: args.dry_run,
        mode_used,
    })
}

impl Counts {
    fn sub(&mut self, o: &Counts) {
        self.scanned -= o.scanned;
        self.copied -= o.copied;
        self.skipped_existing -= o.skipped_existing;
        self.gone -= o.gone;
        self.expired -= o.expired;
        self.deleted_after_copy -= o.deleted_after_copy;
        self.changed_after_copy -= o.changed_after_copy;
        self.failed -= o.failed;
        self.struct_copies -= o.struct_copies;
    }
}

fn interrupted(e: &anyhow::Error, checkpoint: &Path) -> String {
    format!("{e}\nprogress is saved in {}; run again with --resume to continue", checkpoint.display())
}

impl Job {
    async fn batch(&mut self, keys: Vec<Bytes>) -> anyhow::Result<()> {
        self.counts.scanned += keys.len() as u64;
        if keys.is_empty() {
            return Ok(());
        }
        if self.dry_run {
            return self.dry_batch(&keys).await;
        }
        let reads = match self.mode {
            Mode::Struct => copy::read_struct(&mut self.source, &keys, self.exp).await?,
            _ => copy::read_dump(&mut self.source, &keys, self.exp).await?,
        };
        let by_type = self.mode == Mode::Struct;
        let rejected = self.write(&keys, reads, by_type).await?;
        if !rejected.is_empty() {
            if self.mode == Mode::Auto {
                tracing::warn!(
                    reason = %rejected[0].1,
                    "the target rejects DUMP payloads (another engine or version?): copying by type from now on"
                );
                self.mode = Mode::Struct;
            }
            let keys: Vec<Bytes> = rejected.into_iter().map(|(k, _)| k).collect();
            if self.mode == Mode::Struct {
                let reads = copy::read_struct(&mut self.source, &keys, self.exp).await?;
                let again = self.write(&keys, reads, true).await?;
                for (k, why) in again {
                    self.fail(&k, &why);
                }
            } else {
                for k in &keys {
                    self.fail(k, "the target rejected the DUMP payload (try --mode struct)");
                }
            }
        }
        Ok(())
    }

    /// Writes what was read, then takes back copies whose source key vanished meanwhile.
    /// Returns the keys whose dump payload the target rejected.
    async fn write(&mut self, keys: &[Bytes], reads: Vec<Read>, by_type: bool) -> anyhow::Result<Vec<(Bytes, String)>> {
        let mut items: Vec<(&Bytes, Snapshot)> = Vec::with_capacity(keys.len());
        for (key, read) in keys.iter().zip(reads) {
            match read {
                Read::Missing => self.counts.gone += 1,
                Read::Failed(why) => self.fail(key, &why),
                Read::Present(snap) => items.push((key, snap)),
            }
        }
        let refs: Vec<(&Bytes, &Snapshot)> = items.iter().map(|(k, s)| (*k, s)).collect();
        let results = copy::write(&mut self.target, &refs, false).await?;
        let mut copied = Vec::new();
        let mut rejected = Vec::new();
        for ((key, snap), result) in items.into_iter().zip(results) {
            match result {
                Written::Copied => {
                    self.counts.copied += 1;
                    if by_type {
                        self.counts.struct_copies += 1;
                    }
                    copied.push((key, snap));
                }
                Written::Busy => self.counts.skipped_existing += 1,
                Written::Expired => self.counts.expired += 1,
                Written::Rejected(why) => rejected.push((key.clone(), why)),
                Written::Failed(why) => self.fail(key, &why),
            }
        }
        self.take_back_deleted(copied).await?;
        Ok(rejected)
    }

    /// Step 3: copies whose source key no longer exists are deleted from the target again,
    /// unless a live write has changed them since.
    async fn take_back_deleted(&mut self, copied: Vec<(&Bytes, Snapshot)>) -> anyhow::Result<()> {
        if copied.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Bytes> = copied.iter().map(|(k, _)| reply::command(&[b"EXISTS".as_slice(), k])).collect();
        let exists = self.source.call_many(&cmds).await?;
        for ((key, snap), e) in copied.into_iter().zip(exists) {
            if e != Value::Int(0) {
                continue;
            }
            match copy::delete_if_unchanged(&mut self.target, key, &snap).await? {
                Undo::Deleted => {
                    self.counts.deleted_after_copy += 1;
                    tracing::info!(key = %key_display(key), "deleted on the source while being copied: removed from the target again");
                }
                Undo::Gone => {}
                Undo::Changed => {
                    self.counts.changed_after_copy += 1;
                    tracing::warn!(
                        key = %key_display(key),
                        "deleted on the source while being copied, but changed on the target since: left alone (check with tandem verify)"
                    );
                }
            }
        }
        Ok(())
    }

    async fn dry_batch(&mut self, keys: &[Bytes]) -> anyhow::Result<()> {
        let cmds: Vec<Bytes> = keys.iter().map(|k| reply::command(&[b"EXISTS".as_slice(), k])).collect();
        for e in self.target.call_many(&cmds).await? {
            if e == Value::Int(0) {
                self.counts.copied += 1;
            } else {
                self.counts.skipped_existing += 1;
            }
        }
        Ok(())
    }

    fn fail(&mut self, key: &[u8], why: &str) {
        self.counts.failed += 1;
        tracing::warn!(key = %key_display(key), reason = why, "key not copied");
        if self.failed_keys.len() < FAILED_SAMPLE {
            self.failed_keys.push(format!("{}: {why}", key_display(key)));
        }
    }
}
