//! The connection the migration tools use: one TCP stream to one server, commands written in
//! batches and replies read back in order (plain pipelining, RESP2).
//!
//! The tools copy and compare whole keyspaces, so a round trip per key would make them
//! latency-bound; every call here takes a batch.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{BackendSettings, Handshake};
use crate::proto::reply::{self, Protocol};
use crate::proto::value::{self, Value};

/// One pipelined connection to a backend.
pub struct Conn {
    name: String,
    stream: crate::backend::tls::BackendStream,
    buf: BytesMut,
    settings: BackendSettings,
}

impl Conn {
    /// Connects and authenticates with the backend's own credentials (RESP2).
    pub async fn open(settings: &BackendSettings) -> anyhow::Result<Conn> {
        let (stream, _version) = crate::backend::connect(settings, &Handshake::pooled(Protocol::Resp2))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Conn {
            name: settings.name.to_string(),
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            settings: settings.clone(),
        })
    }

    /// Another connection to the same server.
    pub async fn reopen(&self) -> anyhow::Result<Conn> {
        Conn::open(&self.settings).await
    }

    /// The backend's name (`source`, `target`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends every command, then reads one reply per command. Each reply is parsed; a server
    /// error is a [`Value::Error`] in its place, not a failure of the call.
    pub async fn call_many(&mut self, cmds: &[Bytes]) -> anyhow::Result<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let total: usize = cmds.iter().map(|c| c.len()).sum();
        let mut out = BytesMut::with_capacity(total);
        for c in cmds {
            out.extend_from_slice(c);
        }
        let timeout = self.settings.command_timeout.max(std::time::Duration::from_secs(5)) * 4;
        let io = async {
            self.stream.write_all(&out).await?;
            let mut replies = Vec::with_capacity(cmds.len());
            while replies.len() < cmds.len() {
                match reply::frame_len(&self.buf).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                    Some(n) => {
                        let frame = self.buf.split_to(n).freeze();
                        let v = value::parse(&frame)
                            .ok_or_else(|| anyhow::anyhow!("unparsable reply from {}", self.name))?;
                        replies.push(v);
                    }
                    None => {
                        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                            self.buf.reserve(64 * 1024);
                        }
                        if self.stream.read_buf(&mut self.buf).await? == 0 {
                            anyhow::bail!("{} closed the connection", self.name);
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(replies)
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{}: {e}", self.name)),
            Err(_) => anyhow::bail!("{}: no reply within {timeout:?}", self.name),
        }
    }

    /// One command, one reply; a server error becomes an `Err`.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> anyhow::Result<Value> {
        let mut r = self.call_many(&[reply::command(args)]).await?;
        let v = r.pop().expect("one reply per command");
        if let Value::Error(e) = &v {
            anyhow::bail!("{}: {}", self.name, String::from_utf8_lossy(e));
        }
        Ok(v)
    }

    /// `SCAN cursor [MATCH m] COUNT n [TYPE t]`: the next cursor and a batch of keys.
    pub async fn scan(&mut self, cursor: u64, pattern: Option<&str>, count: u32) -> anyhow::Result<(u64, Vec<Bytes>)> {
        let cursor_s = cursor.to_string();
        let count_s = count.to_string();
        let mut args: Vec<&[u8]> = vec![b"SCAN", cursor_s.as_bytes()];
        if let Some(p) = pattern {
            args.push(b"MATCH");
            args.push(p.as_bytes());
        }
        args.push(b"COUNT");
        args.push(count_s.as_bytes());
        match self.call(&args).await? {
            Value::Array(mut parts) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(Value::Array(ks)) => ks
                        .into_iter()
                        .filter_map(|k| match k {
                            Value::Bulk(b) | Value::Simple(b) => Some(b),
                            _ => None,
                        })
                        .collect(),
                    _ => anyhow::bail!("{}: malformed SCAN reply", self.name),
                };
                let next = parts[0]
                    .as_bytes()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("{}: malformed SCAN cursor", self.name))?;
                Ok((next, keys))
            }
            _ => anyhow::bail!("{}: malformed SCAN reply", self.name),
        }
    }

    /// `DBSIZE`, used as the total for progress bars.
    pub async fn dbsize(&mut self) -> anyhow::Result<u64> {
        Ok(self.call(&[b"DBSIZE"]).await?.as_int().unwrap_or(0).max(0) as u64)
    }
}
