//! What to send to the mirror backend so that it ends up with the same data as the serving one.
//!
//! # Why effects, not commands
//!
//! The obvious way to keep two stores identical is to send every write to both. That works for
//! deterministic writes (`SET k v`, `INCR k`, `LPUSH k a`), but many Redis writes are not
//! deterministic, and the mirror executes them later than the serving backend did (it may lag by
//! seconds, or replay a backlog after a reconnect):
//!
//! * **Relative expiries** (`EXPIRE k 10`, `SET k v EX 10`, `SETEX`, `RESTORE k 3000 ...`) are
//!   counted from the moment each server runs them, so a mirror running them 2 s late keeps the
//!   key 2 s longer. They are rewritten to absolute times (`PEXPIREAT`, `PXAT`, `ABSTTL`),
//!   computed from the proxy's clock when the serving reply arrived.
//! * **Random or arrival-dependent pops** (`SPOP`, and the blocking pops `BLPOP`, `BZPOPMIN`,
//!   `BLMPOP`, ... whose outcome depends on when data arrived, and which would block the mirror
//!   connection) are replaced by the removal of exactly what the serving backend reported
//!   popping, by value (`SREM k member`, `LREM key 1 elem`, `ZREM key member`; a blocking move
//!   pushes the element onto its destination first, then removes it from its source).
//! * **Floating-point increments** (`INCRBYFLOAT`, `HINCRBYFLOAT`) are replaced by setting the
//!   result, as Redis' own replication does, so that two builds whose float formatting differs
//!   cannot drift apart.
//! * **Auto-generated stream ids** (`XADD k * ...`) take the serving backend's clock; the id the
//!   serving backend assigned is written explicitly.
//! * **`EVALSHA`** fails with `NOSCRIPT` on a mirror that never saw the script; when the body is
//!   known (from an earlier `EVAL` or `SCRIPT LOAD`) it is sent as `EVAL`.
//!
//! This is the same idea as Redis' own "effects replication" to replicas and the AOF: replicate
//! what happened, not what was asked. Everything else is sent as the client sent it
//! ([`Effect::Same`]), and a write the serving backend refused ([`Effect::Nothing`]) is not sent
//! at all.
//!
//! Every function here is pure (apart from the [`ScriptCache`]), never panics on any argv or
//! reply, and falls back to [`Effect::Same`] when the input does not look like what the
//! serving backend would have accepted (in which case its reply was an error, and the result is
//! [`Effect::Nothing`] anyway).
//!
//! # Option order in rewrites
//!
//! Rewrites change as little as possible: a rewritten command keeps the client's spelling of the
//! command name and of every option, in the client's order, and only the relative-expiry option
//! is replaced *in place* (`SET k v EX 5 NX` becomes `SET k v PXAT <abs> NX`). Options that did
//! not exist are appended at the end (`RESTORE ... ABSTTL`). Commands that change name
//! (`SETEX` → `SET`, `EXPIRE` → `PEXPIREAT`, `BLPOP` → `LREM`, ...) use upper-case names.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::proto::value::{self, Value};

/// What to send to the mirror for one write that the serving backend executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send the client's own bytes unchanged.
    Same,
    /// Send these commands instead, in order (each an argv).
    Rewritten(Vec<Vec<Bytes>>),
    /// Send these commands instead; the last removes a popped element by value (`LREM`) and
    /// must answer `:1`: an element missing on the mirror means its list differs.
    Removal(Vec<Vec<Bytes>>),
    /// Nothing to mirror (the serving reply shows no change, e.g. `SPOP` on an empty set, or an
    /// error reply).
    Nothing,
}

/// Decides what the mirror must execute for one write the serving backend executed.
///
/// `name` is the command-table name, lowercase, with `container|sub` for subcommands (`set`,
/// `spop`, `script|load`); `argv` the full client argv (`argv[0]` as the client typed it);
/// `reply` the serving backend's complete raw reply frame (RESP2 or RESP3); `now_ms` reads the
/// proxy's wall-clock Unix time in milliseconds when that reply arrived, the base for turning
/// relative expiries into absolute ones (read only for a write that has one).
///
/// Scripts seen in `EVAL` / `SCRIPT LOAD` are remembered in `scripts` even when the reply is an
/// error: a script that failed at run time is still cached by the serving backend, and a later
/// `EVALSHA` of it must still be sendable as `EVAL`.
pub fn effect(name: &str, argv: &[&[u8]], reply: &Bytes, now_ms: impl Fn() -> u64, scripts: &ScriptCache) -> Effect {
    match name {
        "eval" | "eval_ro" => remember_arg(scripts, argv, 1),
        "script|load" => remember_arg(scripts, argv, 2),
        _ => {}
    }
    if is_error(reply) {
        return Effect::Nothing;
    }
    let now = || i64::try_from(now_ms()).unwrap_or(i64::MAX);
    match name {
        // Relative expiries → absolute.
        "expire" => expire(argv, now(), 1000, "PEXPIREAT"),
        "pexpire" => expire(argv, now(), 1, "PEXPIREAT"),
        "hexpire" => expire(argv, now(), 1000, "HPEXPIREAT"),
        "hpexpire" => expire(argv, now(), 1, "HPEXPIREAT"),
        "setex" => setex(argv, now(), 1000),
        "psetex" => setex(argv, now(), 1),
        "set" => expiry_options(argv, 3, &now, &SET_OPTIONS),
        "getex" => expiry_options(argv, 2, &now, &GETEX_OPTIONS),
        "hgetex" => expiry_options(argv, 2, &now, &HGETEX_OPTIONS),
        "hsetex" => expiry_options(argv, 2, &now, &HSETEX_OPTIONS),
        "restore" => restore(argv, now()),
        // Pops → removal of what was popped.
        "spop" => spop(argv, reply),
        // Blocking pops remove what was popped by value (see `blocking_pop`).
        "blpop" => blocking_pop(reply, true),
        "brpop" => blocking_pop(reply, false),
        "blmove" => blmove(argv, reply),
        "brpoplpush" => brpoplpush(argv, reply),
        "bzpopmin" | "bzpopmax" => bzpop(reply),
        "lmpop" => lmpop(argv, reply),
        "blmpop" => blmpop(argv, reply),
        "zmpop" => zmpop(reply),
        "bzmpop" => zmpop(reply),
        "zpopmin" | "zpopmax" => zpop(argv, reply),
        // Float increments → the result.
        "incrbyfloat" => incrbyfloat(argv, reply),
        "hincrbyfloat" => hincrbyfloat(argv, reply),
        // Generated ids → the id.
        "xadd" => xadd(argv, reply),
        // Scripts.
        "evalsha" => evalsha(argv, scripts, "EVAL"),
        "evalsha_ro" => evalsha(argv, scripts, "EVAL_RO"),
        _ => Effect::Same,
    }
}

/// Whether the mirror's reply to what [`effect`] sent should equal the serving reply when both
/// stores hold the same data, so that a difference means the stores have diverged.
///
/// This is an allow-list: a command not listed (including module commands and anything new)
/// answers `false`, since a false alarm about divergence is worse than a missed comparison.
/// Not compared: commands rewritten into something that answers differently (pops → `SREM` /
/// `LREM` / `ZREM`, `INCRBYFLOAT` → `SET`; a rewritten `LREM` is checked on its own, see
/// `mirror::Mirrors::enqueue_effect`), generated or random values (`XADD`, `SPOP`), scripts and
/// functions (their replies may depend on time or randomness), `SCRIPT LOAD`, `FLUSH*`,
/// `RESTORE`, and floating-point scores (`ZINCRBY`), whose formatting differs between Redis
/// versions.
pub fn compare_reply(name: &str) -> bool {
    matches!(
        name,
        // strings
        "set" | "setnx" | "setex" | "psetex" | "getex" | "getset" | "getdel" | "append"
            | "setrange" | "incr" | "decr" | "incrby" | "decrby" | "mset" | "msetnx"
            | "setbit" | "bitfield" | "bitop"
            // keys
            | "del" | "unlink" | "expire" | "pexpire" | "expireat" | "pexpireat" | "persist"
            | "rename" | "renamenx" | "copy" | "move"
            // hashes
            | "hset" | "hsetnx" | "hmset" | "hdel" | "hincrby" | "hgetdel" | "hgetex"
            | "hsetex" | "hexpire" | "hpexpire" | "hexpireat" | "hpexpireat" | "hpersist"
            // lists
            | "lpush" | "rpush" | "lpushx" | "rpushx" | "linsert" | "lset" | "lrem" | "ltrim"
            | "lpop" | "rpop" | "lmove" | "rpoplpush"
            // sets
            | "sadd" | "srem" | "smove" | "sinterstore" | "sunionstore" | "sdiffstore"
            // sorted sets
            | "zadd" | "zrem" | "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex"
            | "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore"
            // hyperloglog, geo, streams
            | "pfadd" | "pfmerge" | "geoadd" | "geosearchstore" | "xdel" | "xack"
            | "xgroup|create" | "xgroup|destroy" | "xgroup|createconsumer"
            | "xgroup|delconsumer" | "xgroup|setid" | "xsetid"
    )
}

// ---------------------------------------------------------------------------------------------
// Script cache

/// Default bound on the number of scripts kept.
const MAX_SCRIPTS: usize = 10_000;
/// Default bound on the total size of the script bodies kept.
const MAX_SCRIPT_BYTES: usize = 64 << 20;

/// Scripts seen in `SCRIPT LOAD` and `EVAL`, so that an `EVALSHA` can be mirrored as `EVAL`
/// (a mirror that never saw the script would answer `NOSCRIPT`).
///
/// Bounded in count and in total body size; when full, the least recently used script (by
/// `remember` or `body`) is evicted, so a script loaded once at start-up and then only called
/// by `EVALSHA` survives any number of one-off scripts. Thread-safe behind one `Mutex`; the
/// SHA1 is computed outside the lock, and lookups return a cheap `Bytes` clone.
#[derive(Debug)]
pub struct ScriptCache {
    inner: Mutex<ScriptsInner>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct ScriptsInner {
    scripts: HashMap<[u8; 20], Script>,
    /// Use order, oldest first. A script used again gets a new entry with a new stamp; older
    /// entries for it are stale (their stamp no longer matches) and are skipped or compacted.
    order: VecDeque<([u8; 20], u64)>,
    bytes: usize,
    clock: u64,
}

#[derive(Debug)]
struct Script {
    body: Bytes,
    stamp: u64,
}

impl ScriptCache {
    /// A cache bounded to 10,000 scripts and 64 MiB of script bodies.
    pub fn new() -> Self {
        Self::with_limits(MAX_SCRIPTS, MAX_SCRIPT_BYTES)
    }

    /// A cache bounded to `max_entries` scripts and `max_bytes` of script bodies. A body larger
    /// than `max_bytes` is never kept.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        ScriptCache { inner: Mutex::new(ScriptsInner::default()), max_entries, max_bytes }
    }

    /// Remembers a script body and returns its SHA1 as lowercase hex, as Redis computes it.
    pub fn remember(&self, body: &[u8]) -> String {
        let sha: [u8; 20] = Sha1::digest(body).into();
        let hex = to_hex(&sha);
        if body.len() > self.max_bytes || self.max_entries == 0 {
            return hex;
        }
        let mut inner = self.lock();
        let stamp = inner.tick();
        if let Some(script) = inner.scripts.get_mut(&sha) {
            script.stamp = stamp;
        } else {
            inner.bytes += body.len();
            let body = Bytes::copy_from_slice(body);
            inner.scripts.insert(sha, Script { body, stamp });
        }
        inner.order.push_back((sha, stamp));
        while inner.scripts.len() > self.max_entries || inner.bytes > self.max_bytes {
            if !inner.evict_oldest() {
                break;
            }
        }
        inner.compact();
        hex
    }

    /// The body of the script with this SHA1 (hex, any case), if known. Counts as a use.
    pub fn body(&self, sha: &[u8]) -> Option<Bytes> {
        let sha = from_hex(sha)?;
        let mut inner = self.lock();
        let stamp = inner.tick();
        let body = {
            let script = inner.scripts.get_mut(&sha)?;
            script.stamp = stamp;
            script.body.clone()
        };
        inner.order.push_back((sha, stamp));
        inner.compact();
        Some(body)
    }

    /// Number of scripts kept.
    pub fn len(&self) -> usize {
        self.lock().scripts.len()
    }

    /// Whether no script is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lock, even if another thread panicked while holding it: every update leaves the
    /// cache consistent enough (at worst a count slightly off), and losing EVALSHA mirroring
    /// over a poisoned lock would be worse.
    fn lock(&self) -> MutexGuard<'_, ScriptsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ScriptCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptsInner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Evicts the least recently used script; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((sha, stamp)) = self.order.pop_front() {
            if self.scripts.get(&sha).is_some_and(|s| s.stamp == stamp) {
                if let Some(script) = self.scripts.remove(&sha) {
                    self.bytes = self.bytes.saturating_sub(script.body.len());
                }
                return true;
            }
        }
        false
    }

    /// Drops stale use-order entries once they outnumber live ones, keeping `order` within
    /// about twice the number of scripts (amortised O(1) per use).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.scripts.len() + 64 {
            let scripts = &self.scripts;
            self.order.retain(|(sha, stamp)| scripts.get(sha).is_some_and(|s| s.stamp == *stamp));
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn from_hex(hex: &[u8]) -> Option<[u8; 20]> {
    if hex.len() != 40 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn remember_arg(scripts: &ScriptCache, argv: &[&[u8]], at: usize) {
    if let Some(body) = argv.get(at) {
        scripts.remember(body);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// True if the reply is an error (`-ERR`, RESP3 `!`), also behind a RESP3 attribute.
fn is_error(reply: &Bytes) -> bool {
    match reply.first() {
        Some(b'-' | b'!') => true,
        Some(b'|') => matches!(value::parse(reply), Some(Value::Error(_))),
        _ => false,
    }
}

fn keyword(arg: &[u8], kw: &str) -> bool {
    arg.eq_ignore_ascii_case(kw.as_bytes())
}

fn int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn name(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn copy(arg: &[u8]) -> Bytes {
    Bytes::copy_from_slice(arg)
}

fn copy_all(argv: &[&[u8]]) -> Vec<Bytes> {
    argv.iter().map(|a| copy(a)).collect()
}

fn number(n: i64) -> Bytes {
    Bytes::from(n.to_string())
}

/// `now + rel * unit_ms`, saturating: Redis itself refuses a TTL that overflows, so a
/// saturated value only appears for inputs the serving backend already rejected.
fn absolute(now: i64, rel: i64, unit_ms: i64) -> Bytes {
    number(now.saturating_add(rel.saturating_mul(unit_ms)))
}

fn one(cmd: Vec<Bytes>) -> Effect {
    Effect::Rewritten(vec![cmd])
}

/// The payload of a bulk string, still a slice of the reply frame.
///
/// Only bulk strings: every member, key, element, id and float result in a reply is one. A
/// simple string in their place is a status such as `+QUEUED` (the command was queued in a
/// `MULTI`, nothing happened yet) and must not be mistaken for data.
fn into_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::Bulk(b) => Some(b),
        _ => None,
    }
}

/// The `[key, payload]` of a multi-key pop reply (`LMPOP`, `ZMPOP`, `BLPOP`'s first two),
/// also accepting a one-entry map `{key: payload}`.
fn key_and_payload(v: Value) -> Option<(Bytes, Value)> {
    match v {
        Value::Array(items) if items.len() == 2 => {
            let mut it = items.into_iter();
            let key = into_bytes(it.next()?)?;
            Some((key, it.next()?))
        }
        Value::Map(pairs) if pairs.len() == 1 => {
            let (k, v) = pairs.into_iter().next()?;
            Some((into_bytes(k)?, v))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Relative expiries

/// `EXPIRE k s [flags]` → `PEXPIREAT k now+s*1000 [flags]` (and `PEXPIRE`, and the hash-field
/// `HEXPIRE k s [flags] FIELDS n f..` → `HPEXPIREAT`). Everything after the TTL is copied.
///
/// A zero or negative TTL gives an absolute time at or before `now`, which deletes the key just
/// as the relative form did, and keeps `NX`/`XX`/`GT`/`LT` comparisons exact.
fn expire(argv: &[&[u8]], now: i64, unit_ms: i64, target: &'static str) -> Effect {
    let (Some(key), Some(rel)) = (argv.get(1), argv.get(2)) else {
        return Effect::Same;
    };
    let Some(rel) = int(rel) else {
        return Effect::Same;
    };
    let mut cmd = Vec::with_capacity(argv.len());
    cmd.push(name(target));
    cmd.push(copy(key));
    cmd.push(absolute(now, rel, unit_ms));
    cmd.extend(argv[3..].iter().map(|a| copy(a)));
    one(cmd)
}

/// `SETEX k s v` → `SET k v PXAT now+s*1000` (and `PSETEX`).
fn setex(argv: &[&[u8]], now: i64, unit_ms: i64) -> Effect {
    let &[_, key, rel, val] = argv else {
        return Effect::Same;
    };
    let Some(rel) = int(rel) else {
        return Effect::Same;
    };
    one(vec![name("SET"), copy(key), copy(val), name("PXAT"), absolute(now, rel, unit_ms)])
}

/// The option grammar of a command with `EX`/`PX` options.
struct ExpiryGrammar {
    /// Options without an argument.
    flags: &'static [&'static str],
    /// Options with one argument (other than `EX`/`PX`/`EXAT`/`PXAT`).
    with_arg: &'static [&'static str],
    /// `FIELDS numfields ...` takes `numfields * fields_width` more arguments (0: no `FIELDS`).
    fields_width: usize,
}

/// `SET k v [NX|XX] [GET] [EX|PX|EXAT|PXAT n|KEEPTTL]`, plus the one-argument compare options
/// of newer servers (`IFEQ` in Valkey 8.1 and Redis 8.4, `IFNE`/`IFDEQ`/`IFDNE` in Redis 8.4).
const SET_OPTIONS: ExpiryGrammar = ExpiryGrammar {
    flags: &["NX", "XX", "GET", "KEEPTTL"],
    with_arg: &["IFEQ", "IFNE", "IFDEQ", "IFDNE"],
    fields_width: 0,
};
/// `GETEX k [EX|PX|EXAT|PXAT n|PERSIST]`
const GETEX_OPTIONS: ExpiryGrammar = ExpiryGrammar { flags: &["PERSIST"], with_arg: &[], fields_width: 0 };
/// `HGETEX k [EX|PX|EXAT|PXAT n|PERSIST] FIELDS n f..` (Redis 8.0)
const HGETEX_OPTIONS: ExpiryGrammar = ExpiryGrammar { flags: &["PERSIST"], with_arg: &[], fields_width: 1 };
/// `HSETEX k [FNX|FXX] [EX|PX|EXAT|PXAT n|KEEPTTL] FIELDS n f v..` (Redis 8.0)
const HSETEX_OPTIONS: ExpiryGrammar =
    ExpiryGrammar { flags: &["FNX", "FXX", "KEEPTTL"], with_arg: &[], fields_width: 2 };

/// Rewrites every `EX s` / `PX ms` among the options starting at `argv[start]` into
/// `PXAT abs`, in place, keeping everything else as the client sent it. `Same` when there is
/// no relative expiry, or when the options do not parse (the serving backend then refused the
/// command, so the caller never gets here with a success reply).
///
/// Redis lets a repeated `EX` win over an earlier one; rewriting each occurrence keeps that.
fn expiry_options(argv: &[&[u8]], start: usize, now: &dyn Fn() -> i64, grammar: &ExpiryGrammar) -> Effect {
    if argv.len() < start {
        return Effect::Same;
    }
    // Where each relative expiry is and its absolute time; the command is copied only if
    // there is one (a plain `SET k v`, the common case, is forwarded as sent).
    let mut rewrites: smallvec::SmallVec<[(usize, Bytes); 2]> = smallvec::SmallVec::new();
    let mut i = start;
    while let Some(&opt) = argv.get(i) {
        let unit_ms = if keyword(opt, "EX") {
            Some(1000)
        } else if keyword(opt, "PX") {
            Some(1)
        } else {
            None
        };
        if let Some(unit_ms) = unit_ms {
            let Some(rel) = argv.get(i + 1).and_then(|a| int(a)) else {
                return Effect::Same;
            };
            rewrites.push((i, absolute(now(), rel, unit_ms)));
            i += 2;
        } else if keyword(opt, "EXAT") || keyword(opt, "PXAT") {
            i += 2;
        } else if grammar.flags.iter().any(|f| keyword(opt, f)) {
            i += 1;
        } else if grammar.with_arg.iter().any(|f| keyword(opt, f)) {
            i += 2;
        } else if grammar.fields_width > 0 && keyword(opt, "FIELDS") {
            let Some(n) = argv.get(i + 1).and_then(|a| int(a)) else {
                return Effect::Same;
            };
            let skip = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(grammar.fields_width))
                .and_then(|n| n.checked_add(i + 2));
            match skip {
                Some(next) => i = next,
                None => return Effect::Same,
            }
        } else {
            return Effect::Same;
        }
    }
    if i != argv.len() || rewrites.is_empty() {
        return Effect::Same;
    }
    let mut cmd = copy_all(argv);
    for (at, when) in rewrites {
        cmd[at] = name("PXAT");
        cmd[at + 1] = when;
    }
    one(cmd)
}

/// `RESTORE k ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` with a relative `ttl > 0`
/// → `RESTORE k now+ttl payload ... ABSTTL`.
fn restore(argv: &[&[u8]], now: i64) -> Effect {
    let Some(ttl) = argv.get(2).and_then(|a| int(a)) else {
        return Effect::Same;
    };
    if ttl <= 0 || argv.len() < 4 {
        return Effect::Same;
    }
    let mut i = 4;
    while let Some(&opt) = argv.get(i) {
        if keyword(opt, "ABSTTL") {
            return Effect::Same;
        } else if keyword(opt, "REPLACE") {
            i += 1;
        } else if (keyword(opt, "IDLETIME") || keyword(opt, "FREQ")) && i + 1 < argv.len() {
            i += 2;
        } else {
            return Effect::Same;
        }
    }
    let mut cmd = copy_all(argv);
    cmd[2] = absolute(now, ttl, 1);
    cmd.push(name("ABSTTL"));
    one(cmd)
}

// ---------------------------------------------------------------------------------------------
// Pops

/// `SPOP k` → `SREM k member`; `SPOP k count` → `SREM k m1 m2 ..`; nothing popped → `Nothing`.
fn spop(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let Some(&key) = argv.get(1) else {
        return Effect::Same;
    };
    let members = match value::parse(reply) {
        Some(Value::Nil) => return Effect::Nothing,
        Some(Value::Array(items)) => items.into_iter().map(into_bytes).collect(),
        Some(v) => into_bytes(v).map(|m| vec![m]),
        None => None,
    };
    removal("SREM", copy(key), members)
}

/// `cmd key members..`; `Nothing` for no members, `Same` if the reply did not parse.
fn removal(cmd: &'static str, key: Bytes, members: Option<Vec<Bytes>>) -> Effect {
    match members {
        None => Effect::Same,
        Some(m) if m.is_empty() => Effect::Nothing,
        Some(m) => {
            let mut out = Vec::with_capacity(m.len() + 2);
            out.push(name(cmd));
            out.push(key);
            out.extend(m);
            one(out)
        }
    }
}

/// `BLPOP k.. t` → `LREM key 1 elem` for the reply `[key, elem]` (`BRPOP` → `LREM key -1
/// elem`). By value, not by position: a blocking pop's effect is queued only after a fence
/// through the serving backend's pooled connections (`fenced_mirror` in the client), so a
/// push to the same list that Redis ran just after the pop can reach the mirror first. An
/// `LPOP` would then take the newer element and leave the popped one. Removing the popped
/// value gives the source's list whenever the overtaking pushes went onto the other end (a
/// queue) or carried other values; a push of an equal value onto the same end can still
/// leave the two lists in a different order.
fn blocking_pop(reply: &Bytes, from_head: bool) -> Effect {
    match value::parse(reply) {
        Some(Value::Nil) => Effect::Nothing,
        Some(Value::Array(items)) if items.len() == 2 => {
            let mut it = items.into_iter();
            match (it.next().and_then(into_bytes), it.next().and_then(into_bytes)) {
                (Some(key), Some(elem)) => Effect::Removal(vec![lrem(key, from_head, elem)]),
                _ => Effect::Same,
            }
        }
        _ => Effect::Same,
    }
}

/// `LREM key 1 elem` (the first from the head) or `LREM key -1 elem` (from the tail).
fn lrem(key: Bytes, from_head: bool, elem: Bytes) -> Vec<Bytes> {
    vec![name("LREM"), key, number(if from_head { 1 } else { -1 }), elem]
}

/// `LEFT` → true, `RIGHT` → false.
fn list_end(word: &[u8]) -> Option<bool> {
    if keyword(word, "LEFT") {
        Some(true)
    } else if keyword(word, "RIGHT") {
        Some(false)
    } else {
        None
    }
}

/// The end `LMPOP`/`BLMPOP` pop from (true: `LEFT`): the word after the `numkeys` keys, with
/// `numkeys` at `argv[numkeys_at]`.
fn mpop_end(argv: &[&[u8]], numkeys_at: usize) -> Option<bool> {
    let numkeys = usize::try_from(int(argv.get(numkeys_at)?)?).ok()?;
    list_end(argv.get(numkeys.checked_add(numkeys_at + 1)?)?)
}

/// The popped element moved to `dst`: the push, then its removal from `src` by value.
fn moved(src: &[u8], from_head: bool, dst: &[u8], to_head: bool, reply: &Bytes) -> Effect {
    match value::parse(reply) {
        Some(Value::Nil) => Effect::Nothing,
        Some(v @ Value::Bulk(_)) => match into_bytes(v) {
            // Push first: with `src == dst` (a rotation) the removal then still finds the
            // element at the end it was taken from, and the last reply is the LREM's.
            Some(elem) => {
                let push = vec![name(if to_head { "LPUSH" } else { "RPUSH" }), copy(dst), elem.clone()];
                Effect::Removal(vec![push, lrem(copy(src), from_head, elem)])
            }
            None => Effect::Same,
        },
        _ => Effect::Same,
    }
}

/// `BLMOVE src dst from to t` → `LPUSH|RPUSH dst elem` + `LREM src ±1 elem`, if an element
/// moved (by value, as `blocking_pop` says why).
fn blmove(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let &[_, src, dst, from, to, _timeout] = argv else {
        return Effect::Same;
    };
    match (list_end(from), list_end(to)) {
        (Some(from_head), Some(to_head)) => moved(src, from_head, dst, to_head, reply),
        _ => Effect::Same,
    }
}

/// `BRPOPLPUSH src dst t` → `LPUSH dst elem` + `LREM src -1 elem`, if an element moved.
fn brpoplpush(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let &[_, src, dst, _timeout] = argv else {
        return Effect::Same;
    };
    moved(src, false, dst, true, reply)
}

/// `BLMPOP t numkeys k.. LEFT|RIGHT [COUNT c]` → one `LREM key ±1 elem` per element of the
/// reply `[key, [..]]`, in the order popped (by value, as `blocking_pop` says why).
fn blmpop(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let Some(from_head) = mpop_end(argv, 2) else {
        return Effect::Same;
    };
    match value::parse(reply) {
        Some(Value::Nil) => Effect::Nothing,
        Some(parsed) => match key_and_payload(parsed) {
            Some((key, Value::Array(elems))) => {
                let elems: Option<Vec<Bytes>> = elems.into_iter().map(into_bytes).collect();
                match elems {
                    Some(elems) if elems.is_empty() => Effect::Nothing,
                    Some(elems) => {
                        Effect::Removal(elems.into_iter().map(|e| lrem(key.clone(), from_head, e)).collect())
                    }
                    None => Effect::Same,
                }
            }
            _ => Effect::Same,
        },
        None => Effect::Same,
    }
}

/// `BZPOPMIN k.. t` → `ZREM key member` from the reply `[key, member, score]` (and `BZPOPMAX`).
fn bzpop(reply: &Bytes) -> Effect {
    match value::parse(reply) {
        Some(Value::Nil) => Effect::Nothing,
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut it = items.into_iter();
            match (it.next().and_then(into_bytes), it.next().and_then(into_bytes)) {
                (Some(key), Some(member)) => one(vec![name("ZREM"), key, member]),
                _ => Effect::Same,
            }
        }
        _ => Effect::Same,
    }
}

/// `LMPOP numkeys k.. LEFT|RIGHT [COUNT c]` → `LPOP key n` / `RPOP key n` for the `n` elements
/// of the reply `[key, [..]]`. The count form is always used, so it pops exactly what the
/// serving backend popped. (The blocking `BLMPOP` removes by value: `blmpop`.)
fn lmpop(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let cmd = match mpop_end(argv, 1) {
        Some(true) => "LPOP",
        Some(false) => "RPOP",
        None => return Effect::Same,
    };
    let Some(parsed) = value::parse(reply) else {
        return Effect::Same;
    };
    if parsed == Value::Nil {
        return Effect::Nothing;
    }
    match key_and_payload(parsed) {
        Some((key, Value::Array(elems))) => match i64::try_from(elems.len()) {
            Ok(0) => Effect::Nothing,
            Ok(n) => one(vec![name(cmd), key, number(n)]),
            Err(_) => Effect::Same,
        },
        _ => Effect::Same,
    }
}

/// `ZMPOP numkeys k.. MIN|MAX [COUNT c]` / `BZMPOP t numkeys ..` → `ZREM key members..` from
/// the reply `[key, [[member, score], ..]]`.
fn zmpop(reply: &Bytes) -> Effect {
    let Some(parsed) = value::parse(reply) else {
        return Effect::Same;
    };
    if parsed == Value::Nil {
        return Effect::Nothing;
    }
    match key_and_payload(parsed) {
        Some((key, Value::Array(entries))) => removal("ZREM", key, zset_members(entries)),
        _ => Effect::Same,
    }
}

/// `ZPOPMIN k [count]` → `ZREM k members..` (and `ZPOPMAX`).
fn zpop(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let Some(&key) = argv.get(1) else {
        return Effect::Same;
    };
    match value::parse(reply) {
        Some(Value::Nil) => Effect::Nothing,
        Some(Value::Array(items)) => removal("ZREM", copy(key), zset_members(items)),
        _ => Effect::Same,
    }
}

/// The members of a sorted-set pop reply, in either shape servers use: a flat
/// `[m1, s1, m2, s2, ..]` (RESP2, and RESP3 `ZPOPMIN` without count) or pairs
/// `[[m1, s1], [m2, s2], ..]` (`ZMPOP`, RESP3 `ZPOPMIN` with count).
fn zset_members(items: Vec<Value>) -> Option<Vec<Bytes>> {
    if items.iter().all(|v| matches!(v, Value::Array(_))) {
        items
            .into_iter()
            .map(|pair| match pair {
                Value::Array(p) if p.len() == 2 => p.into_iter().next().and_then(into_bytes),
                _ => None,
            })
            .collect()
    } else if items.len() % 2 == 0 {
        items.into_iter().step_by(2).map(into_bytes).collect()
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Float increments, stream ids, scripts

/// `INCRBYFLOAT k inc` → `SET k <result> KEEPTTL`, as Redis replicates it.
fn incrbyfloat(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let &[_, key, _inc] = argv else {
        return Effect::Same;
    };
    match value::parse(reply).and_then(into_bytes) {
        Some(result) => one(vec![name("SET"), copy(key), result, name("KEEPTTL")]),
        None => Effect::Same,
    }
}

/// `HINCRBYFLOAT k f inc` → `HSET k f <result>`, as Redis replicates it.
fn hincrbyfloat(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let &[_, key, field, _inc] = argv else {
        return Effect::Same;
    };
    match value::parse(reply).and_then(into_bytes) {
        Some(result) => one(vec![name("HSET"), copy(key), copy(field), result]),
        None => Effect::Same,
    }
}

/// `XADD k [NOMKSTREAM] [MAXLEN|MINID [=|~] n [LIMIT c]] *|ms-*|id f v ..`: an id the server
/// generates (`*`, `ms-*`) is replaced by the id it replied with. Options are parsed the way
/// Redis does (any order, case-insensitive) to find the id.
fn xadd(argv: &[&[u8]], reply: &Bytes) -> Effect {
    let mut i = 2;
    while let Some(&opt) = argv.get(i) {
        if keyword(opt, "NOMKSTREAM") {
            i += 1;
        } else if keyword(opt, "MAXLEN") || keyword(opt, "MINID") {
            i += 1;
            if argv.get(i).is_some_and(|a| *a == b"=" || *a == b"~") {
                i += 1;
            }
            i += 1;
        } else if keyword(opt, "LIMIT") {
            i += 2;
        } else {
            break;
        }
    }
    let Some(&id) = argv.get(i) else {
        return Effect::Same;
    };
    if !(id == b"*" || id.ends_with(b"-*")) {
        return Effect::Same;
    }
    match value::parse(reply) {
        // NOMKSTREAM on a missing key: nothing was added.
        Some(Value::Nil) => Effect::Nothing,
        Some(v) => match into_bytes(v) {
            Some(new_id) => {
                let mut cmd = copy_all(argv);
                cmd[i] = new_id;
                one(cmd)
            }
            None => Effect::Same,
        },
        None => Effect::Same,
    }
}

/// `EVALSHA sha numkeys ..` → `EVAL body numkeys ..` when the body is known.
fn evalsha(argv: &[&[u8]], scripts: &ScriptCache, eval: &'static str) -> Effect {
    let Some(body) = argv.get(1).and_then(|sha| scripts.body(sha)) else {
        return Effect::Same;
    };
    let mut cmd = Vec::with_capacity(argv.len());
    cmd.push(name(eval));
    cmd.push(body);
    cmd.extend(argv[2..].iter().map(|a| copy(a)));
    one(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::value::test_support::{arb_value, encode};
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;

    fn run_with(name: &str, argv: &[&str], reply: &str, scripts: &ScriptCache) -> Effect {
        let argv: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
        let reply = Bytes::copy_from_slice(reply.as_bytes());
        effect(name, &argv, &reply, || NOW, scripts)
    }

    fn run(name: &str, argv: &[&str], reply: &str) -> Effect {
        run_with(name, argv, reply, &ScriptCache::new())
    }

    fn argvs(cmds: &[&[&str]]) -> Vec<Vec<Bytes>> {
        cmds.iter().map(|c| c.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()).collect()
    }

    fn rewritten(cmds: &[&[&str]]) -> Effect {
        Effect::Rewritten(argvs(cmds))
    }

    fn removed(cmds: &[&[&str]]) -> Effect {
        Effect::Removal(argvs(cmds))
    }

    // --- errors and the default ---

    #[test]
    fn error_reply_means_nothing_for_every_command() {
        for name in ["set", "expire", "spop", "blpop", "xadd", "evalsha", "incr", "hset"] {
            assert_eq!(run(name, &[name, "k", "v"], "-ERR boom\r\n"), Effect::Nothing);
            assert_eq!(run(name, &[name, "k", "v"], "!4\r\nERR!\r\n"), Effect::Nothing);
            assert_eq!(run(name, &[name, "k", "v"], "|1\r\n+a\r\n+b\r\n-ERR x\r\n"), Effect::Nothing);
        }
        assert_eq!(run("expire", &["EXPIRE", "k", "10"], "-WRONGTYPE x\r\n"), Effect::Nothing);
    }

    #[test]
    fn deterministic_writes_are_sent_unchanged() {
        assert_eq!(run("set", &["SET", "k", "v"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("incr", &["INCR", "k"], ":1\r\n"), Effect::Same);
        assert_eq!(run("lpop", &["LPOP", "k"], "$1\r\na\r\n"), Effect::Same);
        assert_eq!(run("rpop", &["RPOP", "k", "2"], "*0\r\n"), Effect::Same);
        assert_eq!(run("fcall", &["FCALL", "f", "0"], ":1\r\n"), Effect::Same);
        assert_eq!(run("del", &["DEL", "a", "b"], ":2\r\n"), Effect::Same);
        assert_eq!(run("no-such-cmd", &[], ""), Effect::Same);
    }

    // --- rule 1: relative expiries ---

    #[test]
    fn expire_becomes_pexpireat() {
        assert_eq!(run("expire", &["EXPIRE", "k", "10"], ":1\r\n"), rewritten(&[&["PEXPIREAT", "k", "1010000"]]));
        assert_eq!(
            run("expire", &["expire", "k", "10", "nx"], ":0\r\n"),
            rewritten(&[&["PEXPIREAT", "k", "1010000", "nx"]])
        );
        assert_eq!(
            run("expire", &["EXPIRE", "k", "10", "XX", "GT"], ":1\r\n"),
            rewritten(&[&["PEXPIREAT", "k", "1010000", "XX", "GT"]])
        );
        assert_eq!(
            run("pexpire", &["PEXPIRE", "k", "1500", "LT"], ":1\r\n"),
            rewritten(&[&["PEXPIREAT", "k", "1001500", "LT"]])
        );
    }

    #[test]
    fn non_positive_expire_is_a_past_absolute_time() {
        assert_eq!(run("expire", &["EXPIRE", "k", "0"], ":1\r\n"), rewritten(&[&["PEXPIREAT", "k", "1000000"]]));
        assert_eq!(run("expire", &["EXPIRE", "k", "-5"], ":1\r\n"), rewritten(&[&["PEXPIREAT", "k", "995000"]]));
        assert_eq!(run("pexpire", &["PEXPIRE", "k", "-1"], ":1\r\n"), rewritten(&[&["PEXPIREAT", "k", "999999"]]));
    }

    #[test]
    fn expire_overflow_saturates_and_garbage_is_same() {
        assert_eq!(
            run("expire", &["EXPIRE", "k", "9223372036854775807"], ":1\r\n"),
            rewritten(&[&["PEXPIREAT", "k", "9223372036854775807"]])
        );
        assert_eq!(
            run("expire", &["EXPIRE", "k", "-9223372036854775808"], ":1\r\n"),
            rewritten(&[&["PEXPIREAT", "k", "-9223372036853775808"]])
        );
        let huge_now = effect(
            "pexpire",
            &[b"PEXPIRE", b"k", b"5"],
            &Bytes::from_static(b":1\r\n"),
            || u64::MAX,
            &ScriptCache::new(),
        );
        assert_eq!(huge_now, rewritten(&[&["PEXPIREAT", "k", "9223372036854775807"]]));
        assert_eq!(run("expire", &["EXPIRE", "k", "ten"], ":1\r\n"), Effect::Same);
        assert_eq!(run("expire", &["EXPIRE", "k"], ":1\r\n"), Effect::Same);
        assert_eq!(run("expire", &["EXPIRE", "k", "1.5"], ":1\r\n"), Effect::Same);
    }

    #[test]
    fn hash_field_expire_becomes_hpexpireat() {
        assert_eq!(
            run("hexpire", &["HEXPIRE", "h", "5", "NX", "FIELDS", "2", "a", "b"], "*2\r\n:1\r\n:1\r\n"),
            rewritten(&[&["HPEXPIREAT", "h", "1005000", "NX", "FIELDS", "2", "a", "b"]])
        );
        assert_eq!(
            run("hpexpire", &["HPEXPIRE", "h", "250", "FIELDS", "1", "a"], "*1\r\n:1\r\n"),
            rewritten(&[&["HPEXPIREAT", "h", "1000250", "FIELDS", "1", "a"]])
        );
    }

    #[test]
    fn setex_and_psetex_become_set_pxat() {
        assert_eq!(
            run("setex", &["SETEX", "k", "5", "v"], "+OK\r\n"),
            rewritten(&[&["SET", "k", "v", "PXAT", "1005000"]])
        );
        assert_eq!(
            run("psetex", &["psetex", "k", "250", "v"], "+OK\r\n"),
            rewritten(&[&["SET", "k", "v", "PXAT", "1000250"]])
        );
        assert_eq!(run("setex", &["SETEX", "k", "5"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("setex", &["SETEX", "k", "x", "v"], "+OK\r\n"), Effect::Same);
    }

    #[test]
    fn set_ex_px_become_pxat_in_place() {
        assert_eq!(
            run("set", &["SET", "k", "v", "EX", "5", "NX"], "+OK\r\n"),
            rewritten(&[&["SET", "k", "v", "PXAT", "1005000", "NX"]])
        );
        assert_eq!(
            run("set", &["set", "k", "v", "nx", "get", "px", "500"], "$-1\r\n"),
            rewritten(&[&["set", "k", "v", "nx", "get", "PXAT", "1000500"]])
        );
        assert_eq!(
            run("set", &["SET", "k", "v", "XX", "Ex", "1"], "_\r\n"),
            rewritten(&[&["SET", "k", "v", "XX", "PXAT", "1001000"]])
        );
        // Redis lets a repeated EX win; every occurrence is rewritten.
        assert_eq!(
            run("set", &["SET", "k", "v", "EX", "1", "EX", "2"], "+OK\r\n"),
            rewritten(&[&["SET", "k", "v", "PXAT", "1001000", "PXAT", "1002000"]])
        );
        assert_eq!(
            run("set", &["SET", "k", "v", "IFEQ", "old", "EX", "2"], "+OK\r\n"),
            rewritten(&[&["SET", "k", "v", "IFEQ", "old", "PXAT", "1002000"]])
        );
        // The key or value being spelled like an option does not confuse it.
        assert_eq!(
            run("set", &["SET", "EX", "PX", "EX", "3"], "+OK\r\n"),
            rewritten(&[&["SET", "EX", "PX", "PXAT", "1003000"]])
        );
    }

    #[test]
    fn set_without_relative_expiry_is_same() {
        assert_eq!(run("set", &["SET", "k", "v"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k", "v", "KEEPTTL"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k", "v", "EXAT", "2000", "NX"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k", "v", "PXAT", "2000"], "+OK\r\n"), Effect::Same);
        // Malformed options: the serving backend would have refused; never guess.
        assert_eq!(run("set", &["SET", "k", "v", "EX"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k", "v", "EX", "x"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k", "v", "BOGUS", "EX", "1"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("set", &["SET", "k"], "+OK\r\n"), Effect::Same);
    }

    #[test]
    fn getex() {
        assert_eq!(
            run("getex", &["GETEX", "k", "PX", "500"], "$1\r\nv\r\n"),
            rewritten(&[&["GETEX", "k", "PXAT", "1000500"]])
        );
        assert_eq!(
            run("getex", &["GETEX", "k", "EX", "5"], "$-1\r\n"),
            rewritten(&[&["GETEX", "k", "PXAT", "1005000"]])
        );
        for opts in [&["PERSIST"][..], &["EXAT", "9"], &["PXAT", "9"], &[]] {
            let mut argv = vec!["GETEX", "k"];
            argv.extend_from_slice(opts);
            assert_eq!(run("getex", &argv, "$1\r\nv\r\n"), Effect::Same, "{opts:?}");
        }
    }

    #[test]
    fn hgetex_and_hsetex() {
        assert_eq!(
            run("hgetex", &["HGETEX", "h", "EX", "5", "FIELDS", "2", "EX", "b"], "*2\r\n$-1\r\n$-1\r\n"),
            rewritten(&[&["HGETEX", "h", "PXAT", "1005000", "FIELDS", "2", "EX", "b"]])
        );
        assert_eq!(
            run("hsetex", &["HSETEX", "h", "FNX", "PX", "10", "FIELDS", "1", "f", "v"], ":1\r\n"),
            rewritten(&[&["HSETEX", "h", "FNX", "PXAT", "1000010", "FIELDS", "1", "f", "v"]])
        );
        assert_eq!(
            run("hsetex", &["HSETEX", "h", "FIELDS", "1", "f", "v", "EX", "1"], ":1\r\n"),
            rewritten(&[&["HSETEX", "h", "FIELDS", "1", "f", "v", "PXAT", "1001000"]])
        );
        assert_eq!(run("hsetex", &["HSETEX", "h", "KEEPTTL", "FIELDS", "1", "f", "v"], ":1\r\n"), Effect::Same);
        assert_eq!(run("hgetex", &["HGETEX", "h", "EX", "5", "FIELDS", "3", "a"], "*0\r\n"), Effect::Same);
    }

    #[test]
    fn restore_gets_an_absolute_ttl() {
        assert_eq!(
            run("restore", &["RESTORE", "k", "3000", "\u{0}\u{1}pay", "REPLACE"], "+OK\r\n"),
            rewritten(&[&["RESTORE", "k", "1003000", "\u{0}\u{1}pay", "REPLACE", "ABSTTL"]])
        );
        assert_eq!(
            run("restore", &["restore", "k", "10", "p", "IDLETIME", "5", "FREQ", "3"], "+OK\r\n"),
            rewritten(&[&["restore", "k", "1000010", "p", "IDLETIME", "5", "FREQ", "3", "ABSTTL"]])
        );
        assert_eq!(run("restore", &["RESTORE", "k", "0", "p"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("restore", &["RESTORE", "k", "5000", "p", "ABSTTL"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("restore", &["RESTORE", "k", "5000", "p", "absttl", "REPLACE"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("restore", &["RESTORE", "k", "5000"], "+OK\r\n"), Effect::Same);
        assert_eq!(run("restore", &["RESTORE", "k", "5000", "p", "IDLETIME"], "+OK\r\n"), Effect::Same);
    }

    // --- rule 2: pops ---

    #[test]
    fn spop_single() {
        assert_eq!(run("spop", &["SPOP", "s"], "$1\r\na\r\n"), rewritten(&[&["SREM", "s", "a"]]));
        assert_eq!(run("spop", &["SPOP", "s"], "$-1\r\n"), Effect::Nothing);
        assert_eq!(run("spop", &["SPOP", "s"], "_\r\n"), Effect::Nothing);
    }

    #[test]
    fn spop_count() {
        assert_eq!(
            run("spop", &["SPOP", "s", "2"], "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            rewritten(&[&["SREM", "s", "a", "b"]])
        );
        assert_eq!(
            run("spop", &["SPOP", "s", "2"], "~2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            rewritten(&[&["SREM", "s", "a", "b"]])
        );
        assert_eq!(run("spop", &["SPOP", "s", "2"], "*0\r\n"), Effect::Nothing);
        assert_eq!(run("spop", &["SPOP", "s", "2"], "~0\r\n"), Effect::Nothing);
        assert_eq!(run("spop", &["SPOP", "s", "2"], "*-1\r\n"), Effect::Nothing);
        // A reply that does not look like a pop (e.g. +QUEUED in MULTI): unchanged.
        assert_eq!(run("spop", &["SPOP", "s", "2"], "*1\r\n:1\r\n"), Effect::Same);
        assert_eq!(run("spop", &["SPOP", "s"], "garbage"), Effect::Same);
        assert_eq!(run("spop", &["SPOP"], "$1\r\na\r\n"), Effect::Same);
    }

    #[test]
    fn blpop_brpop() {
        assert_eq!(
            run("blpop", &["BLPOP", "a", "b", "0"], "*2\r\n$1\r\nb\r\n$1\r\nx\r\n"),
            removed(&[&["LREM", "b", "1", "x"]])
        );
        assert_eq!(
            run("brpop", &["BRPOP", "a", "1.5"], "*2\r\n$1\r\na\r\n$1\r\nx\r\n"),
            removed(&[&["LREM", "a", "-1", "x"]])
        );
        assert_eq!(run("blpop", &["BLPOP", "a", "1"], "*-1\r\n"), Effect::Nothing);
        assert_eq!(run("blpop", &["BLPOP", "a", "1"], "_\r\n"), Effect::Nothing);
    }

    #[test]
    fn blmove_brpoplpush() {
        assert_eq!(
            run("blmove", &["BLMOVE", "s", "d", "LEFT", "right", "0"], "$1\r\nx\r\n"),
            removed(&[&["RPUSH", "d", "x"], &["LREM", "s", "1", "x"]])
        );
        assert_eq!(
            run("blmove", &["BLMOVE", "s", "s", "right", "LEFT", "0"], "$1\r\nx\r\n"),
            removed(&[&["LPUSH", "s", "x"], &["LREM", "s", "-1", "x"]])
        );
        assert_eq!(run("blmove", &["BLMOVE", "s", "d", "UP", "LEFT", "0"], "$1\r\nx\r\n"), Effect::Same);
        assert_eq!(run("blmove", &["BLMOVE", "s", "d", "LEFT", "RIGHT", "0"], "_\r\n"), Effect::Nothing);
        assert_eq!(
            run("brpoplpush", &["BRPOPLPUSH", "s", "d", "0"], "$1\r\nx\r\n"),
            removed(&[&["LPUSH", "d", "x"], &["LREM", "s", "-1", "x"]])
        );
        assert_eq!(run("brpoplpush", &["BRPOPLPUSH", "s", "d", "0"], "$-1\r\n"), Effect::Nothing);
    }

    #[test]
    fn bzpopmin_bzpopmax() {
        assert_eq!(
            run("bzpopmin", &["BZPOPMIN", "z1", "z2", "0"], "*3\r\n$2\r\nz2\r\n$1\r\nm\r\n$1\r\n1\r\n"),
            rewritten(&[&["ZREM", "z2", "m"]])
        );
        assert_eq!(
            run("bzpopmax", &["BZPOPMAX", "z", "0"], "*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n"),
            rewritten(&[&["ZREM", "z", "m"]])
        );
        assert_eq!(run("bzpopmin", &["BZPOPMIN", "z", "1"], "*-1\r\n"), Effect::Nothing);
    }

    #[test]
    fn lmpop_blmpop_pop_exactly_what_was_popped() {
        let two = "*2\r\n$1\r\nb\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n";
        assert_eq!(
            run("lmpop", &["LMPOP", "2", "a", "b", "LEFT", "COUNT", "5"], two),
            rewritten(&[&["LPOP", "b", "2"]])
        );
        assert_eq!(
            run("blmpop", &["BLMPOP", "0", "1", "b", "right", "COUNT", "2"], two),
            removed(&[&["LREM", "b", "-1", "x"], &["LREM", "b", "-1", "y"]])
        );
        assert_eq!(
            run("lmpop", &["LMPOP", "1", "b", "RIGHT"], "*2\r\n$1\r\nb\r\n*1\r\n$1\r\nx\r\n"),
            rewritten(&[&["RPOP", "b", "1"]])
        );
        assert_eq!(run("lmpop", &["LMPOP", "1", "b", "LEFT"], "*-1\r\n"), Effect::Nothing);
        assert_eq!(run("blmpop", &["BLMPOP", "1", "1", "b", "LEFT"], "_\r\n"), Effect::Nothing);
        // Direction missing or numkeys wrong: unchanged (the server refused it anyway).
        assert_eq!(run("lmpop", &["LMPOP", "3", "a", "b", "LEFT"], two), Effect::Same);
        assert_eq!(run("lmpop", &["LMPOP", "-1", "a", "LEFT"], two), Effect::Same);
        assert_eq!(run("lmpop", &["LMPOP", "99999999999999999999", "a", "LEFT"], two), Effect::Same);
    }

    #[test]
    fn zmpop_resp2_and_resp3_shapes() {
        let resp2 = "*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n";
        let resp3 = "*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\na\r\n,1\r\n*2\r\n$1\r\nb\r\n,2\r\n";
        for reply in [resp2, resp3] {
            assert_eq!(
                run("zmpop", &["ZMPOP", "1", "z", "MIN", "COUNT", "2"], reply),
                rewritten(&[&["ZREM", "z", "a", "b"]])
            );
            assert_eq!(
                run("bzmpop", &["BZMPOP", "0", "1", "z", "MAX", "COUNT", "2"], reply),
                rewritten(&[&["ZREM", "z", "a", "b"]])
            );
        }
        // Flat pairs and a one-entry map are understood too.
        assert_eq!(
            run("zmpop", &["ZMPOP", "1", "z", "MIN"], "*2\r\n$1\r\nz\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n"),
            rewritten(&[&["ZREM", "z", "a"]])
        );
        assert_eq!(
            run("zmpop", &["ZMPOP", "1", "z", "MIN"], "%1\r\n$1\r\nz\r\n*1\r\n*2\r\n$1\r\na\r\n,1\r\n"),
            rewritten(&[&["ZREM", "z", "a"]])
        );
        assert_eq!(run("zmpop", &["ZMPOP", "1", "z", "MIN"], "*-1\r\n"), Effect::Nothing);
        assert_eq!(run("bzmpop", &["BZMPOP", "1", "1", "z", "MIN"], "_\r\n"), Effect::Nothing);
    }

    #[test]
    fn zpopmin_zpopmax_shapes() {
        // RESP2, with and without count: flat.
        assert_eq!(
            run("zpopmin", &["ZPOPMIN", "z", "2"], "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"),
            rewritten(&[&["ZREM", "z", "a", "b"]])
        );
        assert_eq!(
            run("zpopmax", &["ZPOPMAX", "z"], "*2\r\n$1\r\nc\r\n$1\r\n3\r\n"),
            rewritten(&[&["ZREM", "z", "c"]])
        );
        // RESP3 with count: pairs; without count: flat [member, double].
        assert_eq!(
            run("zpopmin", &["ZPOPMIN", "z", "2"], "*2\r\n*2\r\n$1\r\na\r\n,1\r\n*2\r\n$1\r\nb\r\n,2\r\n"),
            rewritten(&[&["ZREM", "z", "a", "b"]])
        );
        assert_eq!(run("zpopmin", &["ZPOPMIN", "z"], "*2\r\n$1\r\na\r\n,1\r\n"), rewritten(&[&["ZREM", "z", "a"]]));
        assert_eq!(run("zpopmin", &["ZPOPMIN", "z", "3"], "*0\r\n"), Effect::Nothing);
        assert_eq!(run("zpopmax", &["ZPOPMAX", "z"], "*0\r\n"), Effect::Nothing);
        assert_eq!(run("zpopmax", &["ZPOPMAX", "z"], "*1\r\n$1\r\na\r\n"), Effect::Same);
    }

    // --- rule 3: float increments ---

    #[test]
    fn incrbyfloat_sets_the_result() {
        assert_eq!(
            run("incrbyfloat", &["INCRBYFLOAT", "k", "0.1"], "$3\r\n3.5\r\n"),
            rewritten(&[&["SET", "k", "3.5", "KEEPTTL"]])
        );
        assert_eq!(
            run("incrbyfloat", &["INCRBYFLOAT", "k", "0.1"], "=7\r\ntxt:3.5\r\n"),
            rewritten(&[&["SET", "k", "3.5", "KEEPTTL"]])
        );
        assert_eq!(
            run("hincrbyfloat", &["HINCRBYFLOAT", "h", "f", "2"], "$4\r\n10.5\r\n"),
            rewritten(&[&["HSET", "h", "f", "10.5"]])
        );
        assert_eq!(run("incrbyfloat", &["INCRBYFLOAT", "k", "0.1"], "+QUEUED\r\n"), Effect::Same);
    }

    #[test]
    fn queued_replies_are_not_mistaken_for_data() {
        // Inside MULTI every reply is +QUEUED: nothing has happened yet.
        for (name, argv) in [
            ("spop", &["SPOP", "s"][..]),
            ("blmove", &["BLMOVE", "s", "d", "LEFT", "LEFT", "0"]),
            ("brpoplpush", &["BRPOPLPUSH", "s", "d", "0"]),
            ("hincrbyfloat", &["HINCRBYFLOAT", "h", "f", "1"]),
            ("xadd", &["XADD", "s", "*", "f", "v"]),
        ] {
            assert_eq!(run(name, argv, "+QUEUED\r\n"), Effect::Same, "{name}");
        }
        // Rewrites that need no reply still apply.
        assert_eq!(run("expire", &["EXPIRE", "k", "1"], "+QUEUED\r\n"), rewritten(&[&["PEXPIREAT", "k", "1001000"]]));
    }

    // --- rule 4: XADD ---

    #[test]
    fn xadd_generated_ids_are_made_explicit() {
        let id = "$15\r\n1700000000000-0\r\n";
        assert_eq!(
            run("xadd", &["XADD", "s", "*", "f", "v"], id),
            rewritten(&[&["XADD", "s", "1700000000000-0", "f", "v"]])
        );
        assert_eq!(
            run("xadd", &["xadd", "s", "NOMKSTREAM", "MAXLEN", "~", "100", "*", "f", "v"], id),
            rewritten(&[&["xadd", "s", "NOMKSTREAM", "MAXLEN", "~", "100", "1700000000000-0", "f", "v"]])
        );
        assert_eq!(
            run("xadd", &["XADD", "s", "MINID", "=", "5", "LIMIT", "10", "*", "f", "v"], id),
            rewritten(&[&["XADD", "s", "MINID", "=", "5", "LIMIT", "10", "1700000000000-0", "f", "v"]])
        );
        assert_eq!(
            run("xadd", &["XADD", "s", "maxlen", "100", "nomkstream", "1700000000000-*", "*", "v"], id),
            rewritten(&[&["XADD", "s", "maxlen", "100", "nomkstream", "1700000000000-0", "*", "v"]])
        );
        assert_eq!(run("xadd", &["XADD", "s", "NOMKSTREAM", "*", "f", "v"], "$-1\r\n"), Effect::Nothing);
        assert_eq!(run("xadd", &["XADD", "s", "NOMKSTREAM", "*", "f", "v"], "_\r\n"), Effect::Nothing);
    }

    #[test]
    fn xadd_explicit_id_is_same() {
        let id = "$3\r\n5-1\r\n";
        assert_eq!(run("xadd", &["XADD", "s", "5-1", "f", "v"], id), Effect::Same);
        assert_eq!(run("xadd", &["XADD", "s", "MAXLEN", "10", "5", "*", "v"], id), Effect::Same);
        assert_eq!(run("xadd", &["XADD", "s", "MAXLEN"], id), Effect::Same);
        assert_eq!(run("xadd", &["XADD", "s", "*", "f", "v"], ":1\r\n"), Effect::Same);
    }

    // --- rule 5: scripts ---

    #[test]
    fn evalsha_known_becomes_eval() {
        let scripts = ScriptCache::new();
        let body = "return redis.call('INCR', KEYS[1])";
        assert_eq!(run_with("eval", &["EVAL", body, "1", "k"], ":1\r\n", &scripts), Effect::Same);
        let sha = scripts.remember(body.as_bytes());
        assert_eq!(sha.len(), 40);
        assert_eq!(
            run_with("evalsha", &["EVALSHA", &sha, "1", "k", "arg"], ":2\r\n", &scripts),
            rewritten(&[&["EVAL", body, "1", "k", "arg"]])
        );
        assert_eq!(
            run_with("evalsha", &["evalsha", &sha.to_uppercase(), "0"], ":2\r\n", &scripts),
            rewritten(&[&["EVAL", body, "0"]])
        );
        assert_eq!(
            run_with("evalsha_ro", &["EVALSHA_RO", &sha, "0"], ":2\r\n", &scripts),
            rewritten(&[&["EVAL_RO", body, "0"]])
        );
    }

    #[test]
    fn evalsha_unknown_is_same() {
        let scripts = ScriptCache::new();
        let sha = "a".repeat(40);
        assert_eq!(run_with("evalsha", &["EVALSHA", &sha, "0"], ":1\r\n", &scripts), Effect::Same);
        assert_eq!(run_with("evalsha", &["EVALSHA", "zz", "0"], ":1\r\n", &scripts), Effect::Same);
        assert_eq!(run_with("evalsha", &["EVALSHA"], ":1\r\n", &scripts), Effect::Same);
    }

    #[test]
    fn script_load_and_eval_are_remembered_even_on_error() {
        let scripts = ScriptCache::new();
        let sha_reply = "$40\r\ne0e1f9fabfc9d4800c877a703b823ac0578ff8db\r\n";
        assert_eq!(run_with("script|load", &["SCRIPT", "LOAD", "return 1"], sha_reply, &scripts), Effect::Same);
        assert_eq!(scripts.body(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db").as_deref(), Some(&b"return 1"[..]));
        assert_eq!(
            run_with("eval", &["EVAL", "error('x')", "0"], "-ERR user_script:1: x\r\n", &scripts),
            Effect::Nothing
        );
        assert_eq!(scripts.len(), 2);
        run_with("eval_ro", &["EVAL_RO", "return 2", "0"], ":2\r\n", &scripts);
        assert_eq!(scripts.len(), 3);
    }

    #[test]
    fn script_sha_matches_redis() {
        // SCRIPT LOAD "return 1" in redis-cli answers this SHA1.
        let scripts = ScriptCache::new();
        assert_eq!(scripts.remember(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert!(!scripts.is_empty());
        assert_eq!(scripts.body(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8dB").as_deref(), Some(&b"return 1"[..]));
        assert_eq!(scripts.body(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8d"), None);
        assert_eq!(scripts.body(b"g0e1f9fabfc9d4800c877a703b823ac0578ff8db"), None);
    }

    #[test]
    fn script_cache_evicts_least_recently_used() {
        let scripts = ScriptCache::with_limits(3, 1 << 20);
        let a = scripts.remember(b"a");
        scripts.remember(b"b");
        scripts.remember(b"c");
        assert!(scripts.body(a.as_bytes()).is_some()); // `a` is now the most recent
        scripts.remember(b"d"); // evicts `b`
        assert_eq!(scripts.len(), 3);
        assert!(scripts.body(a.as_bytes()).is_some());
        assert!(scripts.body(scripts.remember(b"c").as_bytes()).is_some());
        let b_sha = to_hex(&<[u8; 20]>::from(Sha1::digest(b"b")));
        assert!(scripts.body(b_sha.as_bytes()).is_none());
    }

    #[test]
    fn script_cache_bounds_bytes_and_stays_compact() {
        let scripts = ScriptCache::with_limits(100, 10);
        scripts.remember(b"123456");
        scripts.remember(b"abcdef"); // 12 bytes > 10: evicts the first
        assert_eq!(scripts.len(), 1);
        let big = scripts.remember(b"this body is longer than ten bytes");
        assert_eq!(scripts.len(), 1);
        assert!(scripts.body(big.as_bytes()).is_none());
        // Repeated use of the same script must not grow the use-order queue without bound.
        let hot = scripts.remember(b"hot");
        for _ in 0..10_000 {
            scripts.remember(b"hot");
            scripts.body(hot.as_bytes());
        }
        assert!({
            let inner = scripts.lock();
            inner.order.len() <= 2 * inner.scripts.len() + 65
        });
        let none = ScriptCache::with_limits(0, 0);
        none.remember(b"x");
        assert!(none.is_empty());
    }

    #[test]
    fn script_cache_is_shareable_across_threads() {
        let scripts = std::sync::Arc::new(ScriptCache::with_limits(50, 1 << 20));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let scripts = scripts.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let sha = scripts.remember(format!("return {t}-{i}").as_bytes());
                        let _ = scripts.body(sha.as_bytes());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(scripts.len(), 50);
    }

    // --- compare_reply ---

    #[test]
    fn compare_reply_allow_list() {
        for yes in [
            "set", "setex", "psetex", "getex", "incr", "hincrby", "sadd", "lpush", "del", "hset", "zadd", "expire",
            "pexpire", "lmove", "lpop",
        ] {
            assert!(compare_reply(yes), "{yes}");
        }
        for no in [
            "spop",
            "blmove",
            "brpoplpush",
            "blpop",
            "brpop",
            "bzpopmin",
            "lmpop",
            "blmpop",
            "zmpop",
            "zpopmin",
            "incrbyfloat",
            "hincrbyfloat",
            "xadd",
            "eval",
            "evalsha",
            "fcall",
            "script|load",
            "flushall",
            "flushdb",
            "restore",
            "zincrby",
            "unknown",
        ] {
            assert!(!compare_reply(no), "{no}");
        }
    }

    // --- rule 7: never panic ---

    const WRITES: &[&str] = &[
        "set",
        "setex",
        "psetex",
        "getex",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "hexpire",
        "hpexpire",
        "hgetex",
        "hsetex",
        "restore",
        "spop",
        "blpop",
        "brpop",
        "blmove",
        "brpoplpush",
        "bzpopmin",
        "bzpopmax",
        "lmpop",
        "blmpop",
        "zmpop",
        "bzmpop",
        "zpopmin",
        "zpopmax",
        "incrbyfloat",
        "hincrbyfloat",
        "xadd",
        "eval",
        "eval_ro",
        "evalsha",
        "evalsha_ro",
        "script|load",
        "fcall",
        "del",
        "incr",
        "hset",
        "lpush",
        "zadd",
        "sadd",
        "lpop",
        "flushall",
    ];

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "EX",
                "px",
                "NX",
                "GET",
                "KEEPTTL",
                "EXAT",
                "PXAT",
                "PERSIST",
                "ABSTTL",
                "REPLACE",
                "IDLETIME",
                "FREQ",
                "FIELDS",
                "FNX",
                "LEFT",
                "right",
                "MIN",
                "COUNT",
                "*",
                "1-*",
                "NOMKSTREAM",
                "MAXLEN",
                "MINID",
                "~",
                "=",
                "LIMIT",
                "0",
                "1",
                "2",
                "-1",
                "",
                "9223372036854775807",
                "-9223372036854775808",
                "99999999999999999999",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    fn reply() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (arb_value(), any::<bool>()).prop_map(|(v, resp3)| encode(&v, resp3)),
            proptest::collection::vec(any::<u8>(), 0..32),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics(
            name in prop::sample::select(WRITES),
            argv in proptest::collection::vec(arg(), 0..10),
            reply in reply(),
            now in any::<u64>(),
        ) {
            let scripts = ScriptCache::with_limits(8, 1024);
            let argv_refs: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
            let reply = Bytes::from(reply);
            let out = effect(name, &argv_refs, &reply, || now, &scripts);
            if let Effect::Rewritten(cmds) | Effect::Removal(cmds) = &out {
                prop_assert!(!cmds.is_empty());
                prop_assert!(cmds.iter().all(|c| c.len() >= 2));
            }
            if matches!(reply.first(), Some(b'-' | b'!')) {
                prop_assert_eq!(out, Effect::Nothing);
            }
            let _ = compare_reply(name);
        }

        #[test]
        fn expire_is_now_plus_ttl(now in 0u64..1 << 50, secs in -(1i64 << 30)..1 << 30) {
            let s = secs.to_string();
            let out = effect("expire", &[b"EXPIRE", b"k", s.as_bytes()], &Bytes::from_static(b":1\r\n"), || now, &ScriptCache::new());
            let want = (now as i64 + secs * 1000).to_string();
            prop_assert_eq!(out, rewritten(&[&["PEXPIREAT", "k", &want]]));
        }
    }
}
