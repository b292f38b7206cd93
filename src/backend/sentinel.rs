//! A backend behind Redis Sentinel (`redis+sentinel://s1,s2/master-name`): which server is the
//! master right now, and noticing when that changes.
//!
//! The master's address is asked of the sentinels (`SENTINEL get-master-addr-by-name`) when a
//! connection is first needed. A watcher task then stays subscribed to `+switch-master` on one
//! sentinel and, every few seconds and whenever a connection suspects the master (it refused a
//! connection, or answered `-READONLY` because it was demoted), asks again. When the answer
//! changes, the epoch moves on: every pooled connection to the old master ends (owed replies
//! are failed, not left hanging) and reconnects to the new one at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::proto::reply;
use crate::proto::value::{self, Value};

/// A connection's view of its master: the sentinels to tell when it looks demoted, and the
/// epoch that moves on when the master switches.
pub struct Watch {
    pub sentinels: Arc<Sentinels>,
    pub epoch: watch::Receiver<u64>,
}

/// How often the watcher asks again even when nothing was announced.
const POLL: Duration = Duration::from_secs(2);

/// The sentinels of one master, and what they last said.
pub struct Sentinels {
    /// The backend's name (`source`, `target`) for logs.
    backend: Arc<str>,
    sentinels: Vec<String>,
    master: String,
    timeout: Duration,
    current: Mutex<Option<String>>,
    epoch: watch::Sender<u64>,
    suspect: Notify,
    watching: AtomicBool,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels").field("sentinels", &self.sentinels).field("master", &self.master).finish()
    }
}

impl Sentinels {
    pub fn new(backend: Arc<str>, sentinels: Vec<String>, master: String, timeout: Duration) -> Arc<Sentinels> {
        Arc::new(Sentinels {
            backend,
            sentinels,
            master,
            timeout,
            current: Mutex::new(None),
            epoch: watch::channel(0).0,
            suspect: Notify::new(),
            watching: AtomicBool::new(false),
        })
    }

    /// The master's name as the sentinels know it.
    pub fn master_name(&self) -> &str {
        &self.master
    }

    /// The master's address as last learned, if any.
    pub fn current(&self) -> Option<String> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// The master's `host:port`: the last answer, or a fresh one from the sentinels.
    pub async fn master(self: &Arc<Self>) -> Result<String, String> {
        self.start_watcher();
        if let Some(addr) = self.current() {
            return Ok(addr);
        }
        let addr = self.ask().await?;
        self.learn(addr.clone());
        Ok(addr)
    }

    /// Changes whenever the master does; connections to the old one end on it.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// What a connection to the master watches. Taken *before* connecting, so a switch that
    /// happens while the connection is being made ends it as soon as it runs.
    pub fn watch(self: &Arc<Self>) -> Watch {
        Watch { sentinels: self.clone(), epoch: self.epoch() }
    }

    /// A connection saw a sign that the master moved: ask the sentinels now.
    pub fn suspect(&self) {
        self.suspect.notify_one();
    }

    fn learn(&self, addr: String) {
        let Ok(mut current) = self.current.lock() else { return };
        if current.as_deref() == Some(addr.as_str()) {
            return;
        }
        match current.as_deref() {
            None => {
                tracing::info!(backend = %self.backend, master = %self.master, addr = %addr, "sentinel: master found")
            }
            Some(old) => tracing::warn!(
                backend = %self.backend, master = %self.master, from = %old, to = %addr,
                "sentinel: master switched; reconnecting"
            ),
        }
        *current = Some(addr);
        drop(current);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Asks each sentinel in turn until one answers.
    async fn ask(&self) -> Result<String, String> {
        let mut errors = Vec::new();
        for s in &self.sentinels {
            match tokio::time::timeout(self.timeout, query(s, &self.master)).await {
                Ok(Ok(addr)) => return Ok(addr),
                Ok(Err(e)) => errors.push(format!("{s}: {e}")),
                Err(_) => errors.push(format!("{s}: timed out")),
            }
        }
        Err(format!("no sentinel knows master \"{}\" ({})", self.master, errors.join("; ")))
    }

    /// Starts the watcher once.
    fn start_watcher(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(watcher(weak));
    }
}

/// Follows `+switch-master` on one sentinel at a time (moving to the next when it fails),
/// and asks again on every poll tick and every suspicion. Ends when the backend is dropped.
async fn watcher(weak: Weak<Sentinels>) {
    let mut next = 0usize;
    loop {
        let Some(me) = weak.upgrade() else { return };
        let addr = me.sentinels[next % me.sentinels.len()].clone();
        next += 1;
        let stream = tokio::time::timeout(me.timeout, TcpStream::connect(&addr)).await;
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            _ => {
                drop(me);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if stream.write_all(&reply::command(&["SUBSCRIBE", "+switch-master"])).await.is_err() {
            drop(me);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut buf = BytesMut::with_capacity(4096);
        drop(me);
        'conn: loop {
            let tick = tokio::time::sleep(POLL);
            let Some(me) = weak.upgrade() else { return };
            let suspect = me.suspect.notified();
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break 'conn;
                    }
                    while let Ok(Some(len)) = reply::frame_len(&buf) {
                        let frame = buf.split_to(len).freeze();
                        if let Some(addr) = switched(&frame, &me.master) {
                            me.learn(addr);
                        }
                    }
                }
                _ = tick => {
                    if let Ok(addr) = me.ask().await {
                        me.learn(addr);
                    }
                }
                _ = suspect => {
                    if let Ok(addr) = me.ask().await {
                        me.learn(addr);
                    }
                    // Every -READONLY on every connection suspects: ask at most 5 times a second.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // The sentinel went away: try the next one, without spinning if it comes and goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `message +switch-master "<name> <old-ip> <old-port> <new-ip> <new-port>"` for our master.
fn switched(frame: &bytes::Bytes, master: &str) -> Option<String> {
    let Value::Array(parts) = value::parse(frame)? else { return None };
    if parts.first()?.as_bytes()? != b"message" {
        return None;
    }
    let text = std::str::from_utf8(parts.get(2)?.as_bytes()?).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [name, _, _, ip, port] if *name == master => Some(crate::config::url::join_host_port(ip, port.parse().ok()?)),
        _ => None,
    }
}

/// `SENTINEL get-master-addr-by-name` on one sentinel.
async fn query(sentinel: &str, master: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(sentinel).await.map_err(|e| e.to_string())?;
    stream
        .write_all(&reply::command(&["SENTINEL", "get-master-addr-by-name", master]))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Ok(Some(len)) = reply::frame_len(&buf) {
            let frame = buf.split_to(len).freeze();
            return match value::parse(&frame) {
                Some(Value::Array(v)) if v.len() == 2 => {
                    let host = v[0].as_bytes().and_then(|b| std::str::from_utf8(b).ok());
                    let port = v[1].as_bytes().and_then(|b| std::str::from_utf8(b).ok()?.parse::<u16>().ok());
                    match (host, port) {
                        (Some(h), Some(p)) => Ok(crate::config::url::join_host_port(h, p)),
                        _ => Err("malformed reply".into()),
                    }
                }
                Some(Value::Nil) => Err("unknown master".into()),
                Some(Value::Error(e)) => Err(String::from_utf8_lossy(&e).into_owned()),
                _ => Err("unexpected reply".into()),
            };
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_messages_are_read_for_our_master_only() {
        let msg = |text: &str| {
            let mut b = BytesMut::new();
            b.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n");
            b.extend_from_slice(&reply::bulk(text.as_bytes()));
            b.freeze()
        };
        assert_eq!(
            switched(&msg("mymaster 127.0.0.1 6379 127.0.0.1 6380"), "mymaster").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(switched(&msg("other 127.0.0.1 6379 127.0.0.1 6380"), "mymaster"), None);
        assert_eq!(switched(&msg("mymaster ::1 6379 ::1 6380"), "mymaster").as_deref(), Some("[::1]:6380"));
        assert_eq!(switched(&msg("garbage"), "mymaster"), None);
    }
}
