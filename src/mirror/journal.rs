//! The repair journal: one JSON line per mirrored write that did not apply cleanly (error,
//! diverged, dropped), naming the key so `tandem repair` can copy it again.
//!
//! Lines are handed to a writer thread through a bounded channel, so a mirror outage that
//! drops thousands of writes per second never blocks a backend connection on file I/O. The
//! file is rotated to `<path>.1` when it would grow past its size bound.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// Entries buffered for the writer before new ones are counted as lost.
const BUFFER: usize = 65_536;

pub struct Journal {
    tx: SyncSender<String>,
    /// Entries that could not be buffered (writer far behind).
    pub lost: AtomicU64,
    pub written: std::sync::Arc<AtomicU64>,
    path: PathBuf,
}

impl Journal {
    /// Opens (appending) the journal at `path`, rotating at `max_bytes`.
    pub fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Journal> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = sync_channel::<String>(BUFFER);
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let thread_path = path.clone();
        std::thread::Builder::new().name("tandem-journal".into()).spawn(move || {
            while let Ok(line) = rx.recv() {
                let mut batch = vec![line];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 4096 {
                        break;
                    }
                }
                let bytes: usize = batch.iter().map(|l| l.len() + 1).sum();
                if size + bytes as u64 > max_bytes && size > 0 {
                    let _ = file.flush();
                    let mut rotated = thread_path.clone().into_os_string();
                    rotated.push(".1");
                    let _ = std::fs::rename(&thread_path, &rotated);
                    match std::fs::OpenOptions::new().create(true).append(true).open(&thread_path) {
                        Ok(f) => {
                            file = f;
                            size = 0;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, path = %thread_path.display(), "cannot reopen repair journal")
                        }
                    }
                }
                let mut buf = String::with_capacity(bytes);
                for l in &batch {
                    buf.push_str(l);
                    buf.push('\n');
                }
                if let Err(e) = file.write_all(buf.as_bytes()).and_then(|_| file.flush()) {
                    tracing::error!(error = %e, "repair journal write failed");
                } else {
                    size += bytes as u64;
                    counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })?;
        Ok(Journal { tx, lost: AtomicU64::new(0), written, path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Records one key. Never blocks.
    pub fn record(&self, backend: &str, key: &[u8], command: &str, reason: &str) {
        let now = crate::unix_ms();
        let mut entry = serde_json::json!({
            "time_ms": now,
            "backend": backend,
            "command": command,
            "reason": reason,
        });
        // `key`, or `key_hex` for a key that is not UTF-8, so `tandem repair` reads it back exactly.
        if let (Some(e), serde_json::Value::Object(k)) = (entry.as_object_mut(), crate::migrate::key_json(key)) {
            e.extend(k);
        }
        let line = entry.to_string();
        self.write_line(line);
    }

    /// Appends one line (a JSON document). Never blocks.
    pub fn write_line(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}
