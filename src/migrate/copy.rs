//! Reading keys (value and absolute expiry) from one server and writing them to another.
//!
//! Two ways to carry a value:
//! - **dump**: `DUMP` on one side, `RESTORE ... ABSTTL` on the other. Fast and exact, but the
//!   payload is the server's own serialisation, which another engine or an older version may
//!   reject.
//! - **struct**: read the value by type (`GET`, `HGETALL`, `LRANGE`, `SMEMBERS`,
//!   `ZRANGE ... WITHSCORES`, `XRANGE`) and rebuild it with a script on the other side. Works
//!   between engines; slower.
//!
//! Reads of a batch run inside one `MULTI`/`EXEC`, so each key's value and expiry are
//! consistent with each other. Expiries are read as absolute times (`PEXPIRETIME`, or `PTTL`
//! plus the local clock on servers older than 7.0) and written as absolute times, so the time
//! a key spends in transit does not stretch its life.

use bytes::Bytes;

use super::client::Conn;
use crate::proto::reply;
use crate::proto::value::Value;

/// A key's type, as `TYPE` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
    List,
    Set,
    Zset,
    Stream,
    /// A type the struct copy cannot carry (module types).
    Other(String),
}

impl Kind {
    fn parse(name: &[u8]) -> Option<Kind> {
        Some(match name {
            b"none" => return None,
            b"string" => Kind::String,
            b"hash" => Kind::Hash,
            b"list" => Kind::List,
            b"set" => Kind::Set,
            b"zset" => Kind::Zset,
            b"stream" => Kind::Stream,
            other => Kind::Other(String::from_utf8_lossy(other).into_owned()),
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::Zset => "zset",
            Kind::Stream => "stream",
            Kind::Other(s) => s,
        }
    }

    /// The command that reads the whole value.
    fn read_command(&self, key: &[u8]) -> Option<Bytes> {
        let args: Vec<&[u8]> = match self {
            Kind::String => vec![b"GET", key],
            Kind::Hash => vec![b"HGETALL", key],
            Kind::List => vec![b"LRANGE", key, b"0", b"-1"],
            Kind::Set => vec![b"SMEMBERS", key],
            Kind::Zset => vec![b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"],
            Kind::Stream => vec![b"XRANGE", key, b"-", b"+"],
            Kind::Other(_) => return None,
        };
        Some(reply::command(&args))
    }
}

/// A value read by type, flattened into the arguments the rebuild script takes:
/// string `[value]`; hash `[field, value, ...]`; list `[element, ...]`; set `[member, ...]`;
/// zset `[member, score, ...]`; stream `[id, 2n, field, value, ...(n pairs), id, ...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Structured {
    pub kind: Kind,
    pub data: Vec<Bytes>,
}

impl Structured {
    /// A digest of the value that ignores order where the type has none (hash fields, set and
    /// zset members) and the spelling of zset scores.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut items: Vec<Vec<u8>> = match self.kind {
            Kind::Hash => self.data.chunks(2).map(frame).collect(),
            Kind::Set => self.data.iter().map(|m| frame(std::slice::from_ref(m))).collect(),
            Kind::Zset => self
                .data
                .chunks(2)
                .map(|c| {
                    let score = c
                        .get(1)
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .and_then(|s| s.parse::<f64>().ok())
                        .map_or_else(
                            || c.get(1).cloned().unwrap_or_default(),
                            |f| Bytes::from(f.to_bits().to_string()),
                        );
                    frame(&[c[0].clone(), score])
                })
                .collect(),
            _ => vec![frame(&self.data)],
        };
        if matches!(self.kind, Kind::Hash | Kind::Set | Kind::Zset) {
            items.sort_unstable();
        }
        let mut h = Sha256::new();
        h.update(self.kind.name().as_bytes());
        h.update([0]);
        for item in &items {
            h.update(item);
        }
        h.finalize().into()
    }
}

/// Length-prefixes each part so concatenations are unambiguous.
fn frame(parts: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 9).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
        out.push(b'|');
    }
    out
}

/// How a value travels.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Dump(Bytes),
    Struct(Structured),
}

/// One key as read from a server.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Absolute expiry in Unix milliseconds; `None` when the key does not expire.
    pub expire_at: Option<i64>,
    pub payload: Payload,
}

/// The outcome of reading one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    Present(Snapshot),
    /// The key does not exist (any more).
    Missing,
    /// The server refused to give the value (e.g. a module type in struct mode).
    Failed(String),
}

/// How the absolute expiry is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryCommand {
    /// `PEXPIRETIME` (Redis ≥ 7.0): exact.
    PExpireTime,
    /// `PTTL` plus the local clock: within a round trip of the truth.
    Pttl,
}

impl ExpiryCommand {
    /// Asks the server whether it knows `PEXPIRETIME`.
    pub async fn detect(conn: &mut Conn) -> anyhow::Result<ExpiryCommand> {
        let r = conn.call_many(&[reply::command(&[b"PEXPIRETIME".as_slice(), b"tandem:probe"])]).await?;
        Ok(match r.first() {
            Some(Value::Error(e)) if e.to_ascii_lowercase().windows(7).any(|w| w == b"unknown") => ExpiryCommand::Pttl,
            _ => ExpiryCommand::PExpireTime,
        })
    }

    fn command(self, key: &[u8]) -> Bytes {
        match self {
            ExpiryCommand::PExpireTime => reply::command(&[b"PEXPIRETIME".as_slice(), key]),
            ExpiryCommand::Pttl => reply::command(&[b"PTTL".as_slice(), key]),
        }
    }

    /// `Ok(None)`: no expiry; `Err(())`: the key is missing.
    fn interpret(self, v: &Value, now_ms: i64) -> Result<Option<i64>, ()> {
        match v.as_int() {
            Some(-2) => Err(()),
            Some(-1) | None => Ok(None),
            Some(t) => Ok(Some(match self {
                ExpiryCommand::PExpireTime => t,
                ExpiryCommand::Pttl => now_ms + t,
            })),
        }
    }
}

/// Now, in the signed milliseconds expiries are compared in.
pub fn now_ms() -> i64 {
    crate::unix_ms() as i64
}

/// Runs `cmds` inside `MULTI`/`EXEC` and returns EXEC's replies, one per command.
async fn transaction(conn: &mut Conn, cmds: Vec<Bytes>) -> anyhow::Result<Vec<Value>> {
    if conn.is_cluster() {
        return cluster_transactions(conn, cmds).await;
    }
    let n = cmds.len();
    let mut all = Vec::with_capacity(n + 2);
    all.push(reply::command(&[b"MULTI"]));
    all.extend(cmds);
    all.push(reply::command(&[b"EXEC"]));
    let mut replies = conn.call_many(&all).await?;
    match replies.pop() {
        Some(Value::Array(results)) if results.len() == n => Ok(results),
        Some(Value::Error(e)) => {
            // EXECABORT: report the first queued command's own error, which says why.
            let why = replies.iter().find_map(|r| match r {
                Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
                _ => None,
            });
            anyhow::bail!(
                "{}: transaction refused: {}",
                conn.name(),
                why.unwrap_or_else(|| String::from_utf8_lossy(&e).into())
            )
        }
        other => anyhow::bail!("{}: unexpected EXEC reply {other:?}", conn.name()),
    }
}

/// [`transaction`] on a cluster, where one transaction cannot span slots: one `MULTI`/`EXEC`
/// per slot (each key's reads stay together), all sent in one batch.
async fn cluster_transactions(conn: &mut Conn, cmds: Vec<Bytes>) -> anyhow::Result<Vec<Value>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let argv = crate::backend::cluster::command_args(cmd);
        let slot = crate::route::slot(argv.get(1).copied().unwrap_or_default());
        match groups.iter_mut().find(|g| g.0 == slot) {
            Some(g) => g.1.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    let mut all = Vec::with_capacity(cmds.len() + 2 * groups.len());
    for (_, members) in &groups {
        all.push(reply::command(&[b"MULTI"]));
        all.extend(members.iter().map(|&i| cmds[i].clone()));
        all.push(reply::command(&[b"EXEC"]));
    }
    let replies = conn.call_many(&all).await?;
    let mut out = vec![Value::Nil; cmds.len()];
    let mut at = 0;
    for (_, members) in &groups {
        let unit = &replies[at..at + members.len() + 2];
        at += members.len() + 2;
        match unit.last() {
            Some(Value::Array(results)) if results.len() == members.len() => {
                for (&i, v) in members.iter().zip(results) {
                    out[i] = v.clone();
                }
            }
            other => {
                let why = unit.iter().find_map(|r| match r {
                    Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
                    _ => None,
                });
                anyhow::bail!("{}: transaction refused: {}", conn.name(), why.unwrap_or_else(|| format!("{other:?}")))
            }
        }
    }
    Ok(out)
}

/// Reads `DUMP` payloads and expiries of `keys` in one transaction.
pub async fn read_dump(conn: &mut Conn, keys: &[Bytes], exp: ExpiryCommand) -> anyhow::Result<Vec<Read>> {
    let mut cmds = Vec::with_capacity(keys.len() * 2);
    for k in keys {
        cmds.push(reply::command(&[b"DUMP".as_slice(), k]));
        cmds.push(exp.command(k));
    }
    let now = now_ms();
    let results = transaction(conn, cmds).await?;
    Ok(results
        .chunks(2)
        .map(|pair| match (&pair[0], exp.interpret(&pair[1], now)) {
            (Value::Error(e), _) => Read::Failed(String::from_utf8_lossy(e).into_owned()),
            (_, Err(())) | (Value::Nil, _) => Read::Missing,
            (Value::Bulk(payload), Ok(expire_at)) => {
                Read::Present(Snapshot { expire_at, payload: Payload::Dump(payload.clone()) })
            }
            (other, _) => Read::Failed(format!("unexpected DUMP reply {other:?}")),
        })
        .collect())
}

/// Reads the values of `keys` by type. Two round trips: the types, then (in one transaction)
/// the type again, the expiry and the value. A key whose type changed in between is read again.
pub async fn read_struct(conn: &mut Conn, keys: &[Bytes], exp: ExpiryCommand) -> anyhow::Result<Vec<Read>> {
    let mut out: Vec<Option<Read>> = vec![None; keys.len()];
    let mut todo: Vec<usize> = (0..keys.len()).collect();
    for _attempt in 0..5 {
        if todo.is_empty() {
            break;
        }
        let types =
            transaction(conn, todo.iter().map(|&i| reply::command(&[b"TYPE".as_slice(), &keys[i]])).collect()).await?;
        let kinds: Vec<Option<Kind>> = types.iter().map(|t| t.as_bytes().and_then(Kind::parse)).collect::<Vec<_>>();
        let mut cmds = Vec::new();
        let mut shape = Vec::with_capacity(todo.len());
        for (&i, kind) in todo.iter().zip(&kinds) {
            cmds.push(reply::command(&[b"TYPE".as_slice(), &keys[i]]));
            cmds.push(exp.command(&keys[i]));
            let read = kind.as_ref().and_then(|k| k.read_command(&keys[i]));
            let has_read = read.is_some();
            cmds.extend(read);
            shape.push(has_read);
        }
        let now = now_ms();
        let results = transaction(conn, cmds).await?;
        let mut pos = 0;
        let mut again = Vec::new();
        for ((&i, kind), has_read) in todo.iter().zip(kinds).zip(shape) {
            let now_type = results[pos].as_bytes().and_then(Kind::parse);
            let expiry = exp.interpret(&results[pos + 1], now);
            let value = has_read.then(|| &results[pos + 2]);
            pos += 2 + usize::from(has_read);
            if now_type != kind {
                again.push(i);
                continue;
            }
            out[i] = Some(match (kind, expiry, value) {
                (None, _, _) | (_, Err(()), _) => Read::Missing,
                (Some(Kind::Other(name)), _, _) => {
                    Read::Failed(format!("type {name} cannot be copied by type; use --mode dump"))
                }
                (Some(kind), Ok(expire_at), Some(v)) => match flatten(&kind, v) {
                    Ok(data) if data.is_empty() && kind != Kind::Stream => Read::Missing,
                    Ok(data) => {
                        Read::Present(Snapshot { expire_at, payload: Payload::Struct(Structured { kind, data }) })
                    }
                    Err(e) => Read::Failed(e),
                },
                (Some(_), Ok(_), None) => Read::Failed("no value read".into()),
            });
        }
        todo = again;
    }
    for &i in &todo {
        out[i] = Some(Read::Failed("type kept changing while being read".into()));
    }
    Ok(out.into_iter().map(|r| r.unwrap_or(Read::Missing)).collect())
}

/// Turns a by-type read reply into the flat argument list of [`Structured`].
fn flatten(kind: &Kind, v: &Value) -> Result<Vec<Bytes>, String> {
    let bulk = |v: &Value| match v {
        Value::Bulk(b) | Value::Simple(b) => Ok(b.clone()),
        Value::Int(n) => Ok(Bytes::from(n.to_string())),
        Value::Double(f) => Ok(Bytes::from(f.to_string())),
        other => Err(format!("unexpected element {other:?}")),
    };
    match (kind, v) {
        (_, Value::Error(e)) => Err(String::from_utf8_lossy(e).into_owned()),
        (Kind::String, Value::Nil) => Ok(Vec::new()),
        (Kind::String, v) => Ok(vec![bulk(v)?]),
        (Kind::Stream, Value::Array(entries)) => {
            let mut out = Vec::new();
            for e in entries {
                let Value::Array(parts) = e else { return Err("malformed stream entry".into()) };
                let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
                    return Err("malformed stream entry".into());
                };
                out.push(bulk(id)?);
                out.push(Bytes::from(fields.len().to_string()));
                for f in fields {
                    out.push(bulk(f)?);
                }
            }
            Ok(out)
        }
        (_, Value::Array(items)) => items.iter().map(bulk).collect(),
        (_, Value::Map(pairs)) => {
            let mut out = Vec::with_capacity(pairs.len() * 2);
            for (k, v) in pairs {
                out.push(bulk(k)?);
                out.push(bulk(v)?);
            }
            Ok(out)
        }
        (_, Value::Nil) => Ok(Vec::new()),
        (_, other) => Err(format!("unexpected reply {other:?}")),
    }
}

/// What became of one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// The key now holds the copied value.
    Copied,
    /// The key already existed and was left alone (write without replace).
    Busy,
    /// The expiry had already passed; nothing was written (with replace: the key was deleted).
    Expired,
    /// The target does not accept this dump payload (other engine or version).
    Rejected(String),
    Failed(String),
}

/// Rebuilds a structured value on the target: atomically, only if the key is absent (or
/// replacing it when `ARGV[1]` is `1`), with its absolute expiry.
const REBUILD: &str = r#"
local k = KEYS[1]
if ARGV[1] == '1' then
  redis.call('DEL', k)
elseif redis.call('EXISTS', k) == 1 then
  return 0
end
local t = ARGV[2]
local exp = tonumber(ARGV[3])
local n = #ARGV
local function chunks(cmd)
  for i = 4, n, 1000 do
    redis.call(cmd, k, unpack(ARGV, i, math.min(i + 999, n)))
  end
end
if t == 'string' then
  redis.call('SET', k, ARGV[4])
elseif t == 'hash' then
  chunks('HSET')
elseif t == 'list' then
  chunks('RPUSH')
elseif t == 'set' then
  chunks('SADD')
elseif t == 'zset' then
  local args = {}
  for i = 4, n, 2 do
    args[#args + 1] = ARGV[i + 1]
    args[#args + 1] = ARGV[i]
    if #args >= 1000 then
      redis.call('ZADD', k, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', k, unpack(args)) end
elseif t == 'stream' then
  local i = 4
  while i <= n do
    local c = tonumber(ARGV[i + 1])
    redis.call('XADD', k, ARGV[i], unpack(ARGV, i + 2, i + 1 + c))
    i = i + 2 + c
  end
else
  return redis.error_reply('ERR tandem: cannot rebuild type ' .. t)
end
if exp > 0 then redis.call('PEXPIREAT', k, exp) end
return 1
"#;

/// The SHA-1 of [`REBUILD`], for `EVALSHA`.
pub fn rebuild_sha() -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(REBUILD.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes snapshots in one pipeline. `replace` overwrites what the target holds; without it an
/// existing key is left alone ([`Written::Busy`]).
pub async fn write(conn: &mut Conn, items: &[(&Bytes, &Snapshot)], replace: bool) -> anyhow::Result<Vec<Written>> {
    let now = now_ms();
    let sha = rebuild_sha();
    let mut cmds = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for (key, snap) in items {
        if let Some(at) = snap.expire_at {
            if at <= now {
                slots.push(None);
                if replace {
                    cmds.push(reply::command(&[b"DEL".as_slice(), key]));
                }
                continue;
            }
        }
        slots.push(Some(cmds.len()));
        cmds.push(write_command(key, snap, replace, &sha));
    }
    let mut replies = conn.call_many(&cmds).await?;
    if replies.iter().any(|r| matches!(r, Value::Error(e) if e.starts_with(b"NOSCRIPT"))) {
        conn.call(&[b"SCRIPT".as_slice(), b"LOAD", REBUILD.as_bytes()]).await?;
        replies = conn.call_many(&cmds).await?;
    }
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            None => Written::Expired,
            Some(i) => match &replies[i] {
                Value::Simple(_) => Written::Copied,
                Value::Int(1) => Written::Copied,
                Value::Int(0) => Written::Busy,
                Value::Error(e) => classify_error(e),
                other => Written::Failed(format!("unexpected reply {other:?}")),
            },
        })
        .collect())
}

fn write_command(key: &Bytes, snap: &Snapshot, replace: bool, sha: &str) -> Bytes {
    let exp = snap.expire_at.unwrap_or(0).to_string();
    match &snap.payload {
        Payload::Dump(payload) => {
            let mut args: Vec<&[u8]> = vec![b"RESTORE", key, exp.as_bytes(), payload, b"ABSTTL"];
            if replace {
                args.push(b"REPLACE");
            }
            reply::command(&args)
        }
        Payload::Struct(s) => {
            let mut args: Vec<&[u8]> = Vec::with_capacity(s.data.len() + 7);
            args.extend([
                b"EVALSHA".as_slice(),
                sha.as_bytes(),
                b"1",
                key,
                if replace { b"1" } else { b"0" },
                s.kind.name().as_bytes(),
                exp.as_bytes(),
            ]);
            args.extend(s.data.iter().map(|d| d.as_ref()));
            reply::command(&args)
        }
    }
}

fn classify_error(e: &[u8]) -> Written {
    let text = String::from_utf8_lossy(e).into_owned();
    let lower = text.to_ascii_lowercase();
    if text.starts_with("BUSYKEY") {
        Written::Busy
    } else if lower.contains("payload version") || lower.contains("bad data format") || lower.contains("checksum") {
        Written::Rejected(text)
    } else {
        Written::Failed(text)
    }
}

/// What [`delete_if_unchanged`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// The copied value was still there and is now deleted.
    Deleted,
    /// The key is already gone.
    Gone,
    /// The key holds something else now (a live write changed it): left alone.
    Changed,
}

/// Deletes `key` from the target only if it still holds exactly what was copied: the value is
/// read under `WATCH` and the delete runs in `MULTI`/`EXEC`, so a write landing in between wins.
pub async fn delete_if_unchanged(conn: &mut Conn, key: &Bytes, copied: &Snapshot) -> anyhow::Result<Undo> {
    for _ in 0..5 {
        conn.call(&[b"WATCH".as_slice(), key]).await?;
        let same = match (read_plain(conn, key, &copied.payload).await?, &copied.payload) {
            (None, _) => {
                conn.call(&[b"UNWATCH"]).await?;
                return Ok(Undo::Gone);
            }
            (Some(Payload::Dump(now)), Payload::Dump(then)) => now == *then,
            (Some(Payload::Struct(now)), Payload::Struct(then)) => now.digest() == then.digest(),
            _ => false,
        };
        if !same {
            conn.call(&[b"UNWATCH"]).await?;
            return Ok(Undo::Changed);
        }
        let cmds = [reply::command(&[b"MULTI"]), reply::command(&[b"DEL".as_slice(), key]), reply::command(&[b"EXEC"])];
        match conn.call_many(&cmds).await?.pop() {
            Some(Value::Array(_)) => return Ok(Undo::Deleted),
            // The key was touched after it was read: look again.
            Some(Value::Nil) => continue,
            other => anyhow::bail!("{}: unexpected EXEC reply {other:?}", conn.name()),
        }
    }
    Ok(Undo::Changed)
}

/// Reads one key's value in the same form as `like`, without a transaction (so an enclosing
/// `WATCH` stays in force). `None` when the key is missing.
async fn read_plain(conn: &mut Conn, key: &Bytes, like: &Payload) -> anyhow::Result<Option<Payload>> {
    match like {
        Payload::Dump(_) => match conn.call(&[b"DUMP".as_slice(), key]).await? {
            Value::Bulk(b) => Ok(Some(Payload::Dump(b))),
            _ => Ok(None),
        },
        Payload::Struct(_) => {
            let Some(kind) = conn.call(&[b"TYPE".as_slice(), key]).await?.as_bytes().and_then(Kind::parse) else {
                return Ok(None);
            };
            let Some(cmd) = kind.read_command(key) else { return Ok(Some(Payload::Dump(Bytes::new()))) };
            let v = conn.call_many(&[cmd]).await?.pop().unwrap_or(Value::Nil);
            let data = flatten(&kind, &v).map_err(|e| anyhow::anyhow!("{}: {e}", conn.name()))?;
            Ok(Some(Payload::Struct(Structured { kind, data })))
        }
    }
}
