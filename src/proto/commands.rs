//! The proxy's built-in Redis command table.
//!
//! Every command that passes through tandem has to be classified before it is
//! forwarded: is it a write (dual-write it), a read (shadow-read it), does it
//! block the backend connection, does it change per-connection state the proxy
//! has to own, and which arguments are keys (slot-based routing and cutover).
//! Asking the backend (`COMMAND INFO`) on the hot path is out of the question,
//! so the answers live here, in a table built once at start-up.
//!
//! The table covers every Redis 7.0 command and subcommand, plus the cheap 7.2
//! additions (`WAITAOF`, `CLIENT NO-TOUCH`, `CLIENT SETINFO`,
//! `CLUSTER MYSHARDID`). Arity, `WRITE`/`READONLY`/`ADMIN`/`BLOCKING`/`PUBSUB`
//! and the legacy first/last/step key ranges were checked against the
//! `COMMAND` reply of a real redis-server 7.0.15. The remaining flags are the
//! proxy's own classification, which Redis does not expose.
//!
//! Redis' legacy first/last/step triple cannot describe commands whose key
//! positions depend on the arguments (`EVAL`, `ZUNIONSTORE`, `XREAD`, `SORT`,
//! `MIGRATE`, `GEORADIUS ... STORE`, ...): for those the table carries a
//! [`KeySpec`] variant that knows how to parse the arguments, mirroring what
//! the server's own `getkeys` procedures do.
//!
//! At run time the table can be refreshed from a backend's `COMMAND` reply
//! with [`CommandTable::merge_command_reply`], which picks up module commands
//! and version differences while keeping the proxy's own knowledge.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bitflags::bitflags;
use redis_protocol::resp2::types::OwnedFrame;
use smallvec::SmallVec;

bitflags! {
    /// What the proxy needs to know about a command, as a cheap bit set.
    ///
    /// `WRITE`, `READONLY`, `ADMIN`, `BLOCKING`, `PUBSUB` and `MOVABLE_KEYS`
    /// mirror the server's own `COMMAND` flags and are refreshed by
    /// [`CommandTable::merge_command_reply`]. The others are the proxy's own
    /// classification and survive a merge.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Flags: u32 {
        /// May modify the keyspace: dual-written, never shadow-read.
        ///
        /// `EVAL`, `EVALSHA` and `FCALL` carry it too although Redis leaves
        /// them unflagged: a script may write, and a proxy that treated one as
        /// a read would let the two backends diverge.
        const WRITE = 1 << 0;
        /// Only reads the keyspace: safe to shadow-read.
        const READONLY = 1 << 1;
        /// Redis' `admin` flag: server administration, usually not something
        /// an application sends through a proxy.
        const ADMIN = 1 << 2;
        /// Always may block the backend connection until data arrives or a
        /// timeout passes: `BLPOP`, `BRPOP`, `BLMOVE`, `BRPOPLPUSH`, `BLMPOP`,
        /// `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`, `WAIT`, `WAITAOF`. Such a command
        /// needs a dedicated backend connection rather than a shared,
        /// pipelined one.
        const BLOCKING = 1 << 3;
        /// Blocks only when an argument asks for it: `XREAD` / `XREADGROUP`
        /// with `BLOCK`. Use [`CommandInfo::blocks`] to decide per call.
        const MAY_BLOCK = 1 << 4;
        /// Publish/subscribe: `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`,
        /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`, `PUBLISH`,
        /// `SPUBLISH`, `PUBSUB ...`.
        const PUBSUB = 1 << 5;
        /// Puts the connection into subscribe mode, after which the backend
        /// pushes messages unprompted: `SUBSCRIBE`, `PSUBSCRIBE`,
        /// `SSUBSCRIBE`.
        const SUBSCRIBE = 1 << 6;
        /// Transaction control whose state lives on one backend connection:
        /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
        const TRANSACTION = 1 << 7;
        /// Per-connection state the proxy has to handle itself instead of
        /// forwarding onto a shared backend connection: `AUTH`, `HELLO`,
        /// `SELECT`, `QUIT`, `RESET`, `READONLY`, `READWRITE`, `ASKING`, and
        /// the connection-scoped `CLIENT` subcommands (`SETNAME`, `GETNAME`,
        /// `ID`, `INFO`, `TRACKING`, `TRACKINGINFO`, `CACHING`, `GETREDIR`,
        /// `REPLY`, `NO-EVICT`, `NO-TOUCH`, `SETINFO`).
        const CONNECTION = 1 << 8;
        /// Keyless commands over the whole keyspace, which cannot be routed
        /// by key slot: `SCAN`, `KEYS`, `DBSIZE`, `RANDOMKEY`, `FLUSHDB`,
        /// `FLUSHALL`, `SWAPDB`.
        const KEYSPACE = 1 << 9;
        /// Refused by the proxy unless explicitly allowed, because it
        /// reconfigures or stops a backend, changes replication or cluster
        /// topology, affects other clients' connections, or would make the
        /// two backends of a migration diverge:
        ///
        /// `CONFIG SET`/`REWRITE`/`RESETSTAT`, `DEBUG`, `SHUTDOWN`,
        /// `REPLICAOF`, `SLAVEOF`, `MONITOR`, every `CLUSTER` subcommand,
        /// `FAILOVER`, `SAVE`, `BGSAVE`, `BGREWRITEAOF`, `SYNC`, `PSYNC`,
        /// `REPLCONF`, `MODULE LOAD`/`LOADEX`/`UNLOAD`,
        /// `ACL SETUSER`/`DELUSER`/`LOAD`/`SAVE`, `CLIENT KILL`/`PAUSE`/
        /// `UNPAUSE`/`UNBLOCK`, `PFDEBUG`, `PFSELFTEST`, `RESTORE-ASKING`.
        ///
        /// `SCRIPT KILL` and `FUNCTION KILL` are included: through a proxy the
        /// script being killed may belong to another client sharing the
        /// backend, and killing it on one backend only leaves the primary and
        /// the migration target with different data.
        ///
        /// Containers that have any dangerous subcommand (`CONFIG`, `CLUSTER`,
        /// `MODULE`, `ACL`, `CLIENT`, `SCRIPT`, `FUNCTION`) carry the flag
        /// themselves, so a subcommand this table does not know (say, from a
        /// newer server) is refused rather than waved through.
        const DANGEROUS = 1 << 10;
        /// The reply is not a pure function of the data, so comparing the
        /// replies of two backends (shadow reads) is meaningless: every
        /// command Redis 7 tips as `nondeterministic_output` (`RANDOMKEY`,
        /// `SRANDMEMBER`, `HRANDFIELD`, `ZRANDMEMBER`, `SPOP`, `TIME`, `INFO`,
        /// `LASTSAVE`, `TTL`, `PTTL`, `DUMP`, the `SCAN` family, `XADD`, ...)
        /// plus all of `OBJECT` and `MEMORY`, `CLIENT ID`, `DEBUG`, `ROLE`,
        /// `LOLWUT`, `XINFO` and `PUBSUB` introspection.
        const RANDOM = 1 << 11;
        /// Server-side scripting, whose scripts/libraries must exist on every
        /// backend: `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO`, `FCALL`,
        /// `FCALL_RO`, `SCRIPT ...`, `FUNCTION ...`.
        const SCRIPT = 1 << 12;
        /// Key positions depend on the arguments; [`CommandInfo::keys`] is a
        /// variant other than `None`/`Range` (or, for a command learned from
        /// a backend, the range is only a hint).
        const MOVABLE_KEYS = 1 << 13;
    }
}

/// Flags that a backend's `COMMAND` reply is authoritative for.
const SERVER_FLAGS: Flags = Flags::WRITE
    .union(Flags::READONLY)
    .union(Flags::ADMIN)
    .union(Flags::BLOCKING)
    .union(Flags::PUBSUB)
    .union(Flags::MOVABLE_KEYS);

/// Flags that only the proxy knows about; a merge never removes them.
const PROXY_FLAGS: Flags = Flags::MAY_BLOCK
    .union(Flags::SUBSCRIBE)
    .union(Flags::TRANSACTION)
    .union(Flags::CONNECTION)
    .union(Flags::KEYSPACE)
    .union(Flags::DANGEROUS)
    .union(Flags::RANDOM)
    .union(Flags::SCRIPT);

/// Where a command's keys are in its argument vector.
///
/// All indices are into the full argv, where `argv[0]` is the command name
/// (and `argv[1]` the subcommand name for container commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// The command takes no keys.
    None,
    /// Redis' legacy `COMMAND` first/last/step: keys at `first`,
    /// `first + step`, ... up to `last`. A negative `last` counts from the end
    /// (`-1` is the last argument, `-2` the one before it, ...), which is how
    /// `MSET` (1,-1,2) and `BLPOP` (1,-2,1) are described.
    Range {
        /// 1-based index of the first key; never 0 in a well-formed spec.
        first: u16,
        /// Index of the last key, or negative to count from the end.
        last: i16,
        /// Distance between keys (2 for `MSET`'s key/value pairs).
        step: u16,
    },
    /// A count of keys at `argv[numkeys_at]`, followed by that many keys:
    /// `EVAL`/`EVALSHA`/`EVAL_RO`/`EVALSHA_RO`/`FCALL`/`FCALL_RO`
    /// (`numkeys_at: 2`), `ZINTERCARD`, `SINTERCARD`, `LMPOP`, `ZMPOP`,
    /// `ZUNION`, `ZINTER`, `ZDIFF` (`numkeys_at: 1`) and `BLMPOP`/`BZMPOP`,
    /// whose timeout comes first (`numkeys_at: 2`).
    NumKeys {
        /// Index of the numkeys argument.
        numkeys_at: u16,
        /// `argv[1]` is a key too, before the count: the destination of
        /// `ZUNIONSTORE`, `ZINTERSTORE` and `ZDIFFSTORE`.
        first_key_before: bool,
    },
    /// `XREAD` / `XREADGROUP`: the keys are the first half of the arguments
    /// after the `STREAMS` option (the second half are IDs).
    Streams,
    /// `SORT` / `SORT_RO`: `argv[1]`, plus the argument after a `STORE` option.
    Sort,
    /// `MIGRATE`: `argv[3]`, or when that is empty, the arguments after the
    /// `KEYS` option.
    Migrate,
    /// `GEORADIUS` / `GEORADIUSBYMEMBER`: `argv[1]`, plus the argument after a
    /// `STORE` or `STOREDIST` option.
    GeoRadiusStore,
}

impl KeySpec {
    /// True for the argument-parsing variants that a `COMMAND` reply's
    /// first/last/step cannot express; a merge must not overwrite them.
    fn is_special(self) -> bool {
        !matches!(self, KeySpec::None | KeySpec::Range { .. })
    }
}

/// Everything the proxy knows about one command or subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lowercase name; subcommands are named `container|sub` (`config|get`),
    /// as Redis 7 names them in `COMMAND` replies and ACL rules.
    pub name: Box<str>,
    /// Redis arity convention, counting the command name (and subcommand):
    /// positive means exactly that many arguments, negative means at least
    /// `|arity|`.
    pub arity: i32,
    /// Classification, see [`Flags`].
    pub flags: Flags,
    /// Where the keys are, see [`KeySpec`].
    pub keys: KeySpec,
    /// Dense index of a built-in command (its row in the built-in table), used to count
    /// per-command metrics without hashing; [`OTHER_ID`] for commands learned from a backend,
    /// which keeps the metrics' label set bounded.
    pub id: u16,
}

/// The metrics id shared by commands that are not built in.
pub const OTHER_ID: u16 = u16::MAX;

/// The [`CommandInfo::id`] of a built-in command (`"config|get"` for a subcommand).
pub fn builtin_id(name: &str) -> Option<u16> {
    BUILTIN.iter().position(|row| row.0 == name).map(|i| i as u16)
}

/// The name of the built-in command with this [`CommandInfo::id`]; empty for [`OTHER_ID`].
pub fn builtin_name(id: u16) -> &'static str {
    BUILTIN.get(id as usize).map_or("", |row| row.0)
}

/// Names of the built-in commands, indexed by [`CommandInfo::id`].
pub fn builtin_names() -> impl ExactSizeIterator<Item = &'static str> {
    BUILTIN.iter().map(|row| row.0)
}

impl CommandInfo {
    /// Indices into `argv` of the key arguments, in argv order.
    ///
    /// Used for slot routing, so it mirrors the server's own key extraction,
    /// but it must never panic whatever a client sends: positions past the
    /// end of `argv` are ignored and a numkeys larger than the remaining
    /// arguments yields the keys that exist. Validating the command is left
    /// to the backend.
    pub fn key_indices<A: AsRef<[u8]>>(&self, argv: &[A]) -> SmallVec<[usize; 4]> {
        let argc = argv.len();
        let mut out = SmallVec::new();
        match self.keys {
            KeySpec::None => {}
            KeySpec::Range { first, last, step } => {
                range_keys(argc, first, last, step, &mut out);
            }
            KeySpec::NumKeys { numkeys_at, first_key_before } => {
                let at = usize::from(numkeys_at);
                if first_key_before && argc > 1 {
                    out.push(1);
                }
                if let Some(n) = argv.get(at).and_then(|a| parse_count(a.as_ref())) {
                    let start = at + 1;
                    let end = start.saturating_add(n).min(argc);
                    out.extend(start..end);
                }
            }
            KeySpec::Streams => {
                if let Some(start) = scan_xread(argv).streams_at {
                    let n = argc.saturating_sub(start) / 2;
                    out.extend(start..start + n);
                }
            }
            KeySpec::Sort => {
                if argc > 1 {
                    out.push(1);
                }
                if let Some(dst) = find_store(argv, 2, SORT_OPTIONS, &[b"store"]) {
                    out.push(dst);
                }
            }
            KeySpec::Migrate => migrate_keys(argv, &mut out),
            KeySpec::GeoRadiusStore => {
                if argc > 1 {
                    out.push(1);
                }
                // Options start at 5 for GEORADIUSBYMEMBER (key member radius
                // unit) and 6 for GEORADIUS; argv[5] of GEORADIUS is the unit,
                // which can never be STORE, so both scan from 5 like Redis
                // does, which also keeps a member named "store" from counting.
                if let Some(dst) = find_store(argv, 5, &[], &[b"store", b"storedist"]) {
                    out.push(dst);
                }
            }
        }
        out
    }

    /// True if `argc` (counting the command name) satisfies the arity, so the
    /// proxy can reject malformed commands without a backend round trip.
    ///
    /// An arity of 0 is not used by Redis; it is treated as "unknown" and
    /// accepts anything, leaving the judgement to the backend.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = i64::from(self.arity);
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        match arity {
            0 => true,
            a if a > 0 => argc == a,
            a => argc >= -a,
        }
    }

    /// True if this call may park the backend connection: always for
    /// `BLOCKING` commands, and for `MAY_BLOCK` ones (`XREAD`, `XREADGROUP`)
    /// only when a `BLOCK` option is given before `STREAMS`.
    pub fn blocks<A: AsRef<[u8]>>(&self, argv: &[A]) -> bool {
        if self.flags.contains(Flags::BLOCKING) {
            return true;
        }
        self.flags.contains(Flags::MAY_BLOCK) && scan_xread(argv).block
    }
}

/// Keys of a legacy first/last/step range, clipped to `argc`.
fn range_keys(argc: usize, first: u16, last: i16, step: u16, out: &mut SmallVec<[usize; 4]>) {
    if first == 0 || argc == 0 {
        return;
    }
    let first = usize::from(first);
    let last = if last >= 0 {
        usize::from(last.unsigned_abs())
    } else {
        match argc.checked_sub(usize::from(last.unsigned_abs())) {
            Some(l) => l,
            None => return,
        }
    };
    let last = last.min(argc - 1);
    let step = usize::from(step.max(1));
    let mut i = first;
    while i <= last {
        out.push(i);
        i += step;
    }
}

/// Parses a non-negative decimal count the way the server would accept it;
/// anything else (negative, garbage, empty) is `None`. Huge values saturate,
/// which the callers clip to the arguments present.
fn parse_count(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    let mut n: usize = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(usize::from(c - b'0'));
    }
    Some(n)
}

/// ASCII case-insensitive comparison against a lowercase literal.
fn eq_ic(arg: &[u8], lower: &[u8]) -> bool {
    arg.eq_ignore_ascii_case(lower)
}

/// What the option parser of `XREAD` / `XREADGROUP` found.
struct XreadScan {
    /// Index of the first argument after `STREAMS`.
    streams_at: Option<usize>,
    /// A `BLOCK` option was given.
    block: bool,
}

/// Walks the options of `XREAD [COUNT n] [BLOCK ms] STREAMS ...` and
/// `XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS ...` the way the
/// server parses them, skipping option values, so that a group, consumer or
/// count that happens to be spelled "streams" or "block" is not mistaken for
/// the keyword. Unknown tokens (options of a newer server) are stepped over.
fn scan_xread<A: AsRef<[u8]>>(argv: &[A]) -> XreadScan {
    let mut scan = XreadScan { streams_at: None, block: false };
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let arg = arg.as_ref();
        if eq_ic(arg, b"streams") {
            scan.streams_at = Some(i + 1);
            break;
        } else if eq_ic(arg, b"block") {
            scan.block = true;
            i += 2;
        } else if eq_ic(arg, b"count") {
            i += 2;
        } else if eq_ic(arg, b"group") {
            i += 3;
        } else {
            i += 1;
        }
    }
    scan
}

/// `SORT` options followed by a fixed number of values, which must be
/// skipped so a `BY`/`GET` pattern spelled "store" is not taken for `STORE`.
const SORT_OPTIONS: &[(&[u8], usize)] = &[(b"limit", 2), (b"by", 1), (b"get", 1)];

/// Scans from `argv[start]` for a store-like keyword (any of `keywords`) and
/// returns the index of the argument after the last one, as the server lets
/// the last occurrence win. `skip` lists options whose values are stepped
/// over.
fn find_store<A: AsRef<[u8]>>(argv: &[A], start: usize, skip: &[(&[u8], usize)], keywords: &[&[u8]]) -> Option<usize> {
    let mut found = None;
    let mut i = start;
    while let Some(arg) = argv.get(i) {
        let arg = arg.as_ref();
        if keywords.iter().any(|k| eq_ic(arg, k)) {
            if i + 1 < argv.len() {
                found = Some(i + 1);
            }
            i += 2;
        } else if let Some(&(_, n)) = skip.iter().find(|(k, _)| eq_ic(arg, k)) {
            i += 1 + n;
        } else {
            i += 1;
        }
    }
    found
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw]
/// [AUTH2 user pw] [KEYS key ...]`: the single key at 3, or with an empty
/// key, the arguments after `KEYS`. An empty key without `KEYS` is the key
/// "" itself, as the server treats it.
fn migrate_keys<A: AsRef<[u8]>>(argv: &[A], out: &mut SmallVec<[usize; 4]>) {
    let Some(key) = argv.get(3) else { return };
    if key.as_ref().is_empty() {
        let mut i = 6;
        while let Some(arg) = argv.get(i) {
            let arg = arg.as_ref();
            if eq_ic(arg, b"keys") {
                out.extend(i + 1..argv.len());
                return;
            } else if eq_ic(arg, b"auth") {
                i += 2;
            } else if eq_ic(arg, b"auth2") {
                i += 3;
            } else {
                i += 1;
            }
        }
    }
    out.push(3);
}

/// FNV-1a: command names are short and the table's keys are not chosen by
/// clients (lookups never insert), so a fast non-keyed hash is fine here and
/// cheaper than SipHash on every command.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvBuild = BuildHasherDefault<Fnv>;

/// A table entry: the public info plus whether `argv[1]` selects a
/// subcommand, so plain commands cost a single hash lookup.
#[derive(Debug, Clone)]
struct Entry {
    info: CommandInfo,
    has_subcommands: bool,
}

/// Size of the stack buffer used to lowercase lookup keys: a 32-byte command
/// plus `|` plus a 32-byte subcommand, with room to spare.
const KEY_BUF: usize = 72;

/// Lowercases `name` (and `|sub`) into `buf`, or into `spill` if it does not
/// fit, and returns the key bytes.
fn lowercase_key<'a>(buf: &'a mut [u8; KEY_BUF], spill: &'a mut Vec<u8>, name: &[u8], sub: Option<&[u8]>) -> &'a [u8] {
    let len = name.len() + sub.map_or(0, |s| s.len() + 1);
    if len <= KEY_BUF {
        buf[..name.len()].copy_from_slice(name);
        if let Some(sub) = sub {
            buf[name.len()] = b'|';
            buf[name.len() + 1..len].copy_from_slice(sub);
        }
        buf[..len].make_ascii_lowercase();
        &buf[..len]
    } else {
        spill.clear();
        spill.extend_from_slice(name);
        if let Some(sub) = sub {
            spill.push(b'|');
            spill.extend_from_slice(sub);
        }
        spill.make_ascii_lowercase();
        spill
    }
}

/// The command table: built-in Redis 7 commands, optionally refreshed from a
/// backend's `COMMAND` reply. Built once and shared read-only (wrap it in an
/// `Arc`/`ArcSwap` to replace it after a merge).
#[derive(Debug, Clone)]
pub struct CommandTable {
    /// Keyed by lowercase name, `container|sub` for subcommands.
    map: HashMap<Box<[u8]>, Entry, FnvBuild>,
    /// Longest key in `map`: longer names cannot match, so lookup rejects
    /// them before lowercasing anything.
    max_name_len: usize,
}

impl CommandTable {
    /// The built-in Redis 7.0 (+7.2) table.
    ///
    /// `MOVABLE_KEYS` is derived from the key spec rather than written in the
    /// rows, so the two can never disagree; containers are marked as such
    /// from their `container|sub` rows.
    pub fn builtin() -> Self {
        let mut table = CommandTable {
            map: HashMap::with_capacity_and_hasher(BUILTIN.len(), FnvBuild::default()),
            max_name_len: 0,
        };
        for (id, &(name, arity, bits, keys)) in BUILTIN.iter().enumerate() {
            let mut flags = Flags::from_bits_retain(bits);
            if keys.is_special() {
                flags |= Flags::MOVABLE_KEYS;
            }
            table.insert(CommandInfo { name: name.into(), arity, flags, keys, id: id as u16 });
        }
        table
    }

    /// Number of entries, counting containers and subcommands separately.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the table has no entries (never for [`CommandTable::builtin`]).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Exact, case-insensitive lookup by table name (`"get"`,
    /// `"config|get"`), for callers that already know the entry they want.
    pub fn get(&self, name: &str) -> Option<&CommandInfo> {
        if name.len() > self.max_name_len {
            return None;
        }
        let mut buf = [0u8; KEY_BUF];
        let mut spill = Vec::new();
        let key = lowercase_key(&mut buf, &mut spill, name.as_bytes(), None);
        self.map.get(key).map(|e| &e.info)
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &CommandInfo> + '_ {
        self.map.values().map(|e| &e.info)
    }

    /// Case-insensitive lookup of `argv[0]`, and of `argv[1]` as a subcommand
    /// when the command has subcommands (`CONFIG GET`, `CLIENT SETNAME`,
    /// `OBJECT ENCODING`, `XINFO STREAM`, ...).
    ///
    /// Returns the most specific entry: the subcommand's if known, else the
    /// container's (an unknown subcommand still gets the container's flags,
    /// e.g. `DANGEROUS`), or `None` for an unknown command.
    ///
    /// Runs for every command, so it does not touch the heap: the name (and
    /// `name|sub`) is lowercased into a 72-byte stack buffer, which holds any
    /// 32-byte command plus 32-byte subcommand, and names longer than every
    /// table entry are rejected before any lowercasing at all.
    pub fn lookup<A: AsRef<[u8]>>(&self, argv: &[A]) -> Option<&CommandInfo> {
        let name = argv.first()?.as_ref();
        // `config|set` is a table key, not a command a client can send.
        if name.len() > self.max_name_len || name.contains(&b'|') {
            return None;
        }
        let mut buf = [0u8; KEY_BUF];
        let mut spill = Vec::new();
        let entry = self.map.get(lowercase_key(&mut buf, &mut spill, name, None))?;
        if entry.has_subcommands {
            if let Some(sub) = argv.get(1).map(AsRef::as_ref) {
                if name.len() + 1 + sub.len() <= self.max_name_len {
                    let key = lowercase_key(&mut buf, &mut spill, name, Some(sub));
                    if let Some(sub_entry) = self.map.get(key) {
                        return Some(&sub_entry.info);
                    }
                }
            }
        }
        Some(&entry.info)
    }

    /// Merges a backend's `COMMAND` reply (the RESP2 array Redis sends, each
    /// element `[name, arity, flags, first, last, step, acl-categories, tips,
    /// key-specs, subcommands]`; Redis 6's shorter six/seven-element form is
    /// accepted too).
    ///
    /// - Unknown commands (module commands, newer Redis) are added with flags
    ///   mapped from the flag strings (`write`, `readonly`, `admin`,
    ///   `blocking`, `pubsub`, `movablekeys`, Redis 6 `random`) and the
    ///   `nondeterministic_output` tip, and a `Range` key spec from
    ///   first/last/step (`None` when first is 0). For a movable-keys module
    ///   command the range is only the server's legacy hint.
    /// - Known commands take the backend's arity and server-side flags, and
    ///   its range if theirs is a plain `Range`/`None`. Built-in argument
    ///   parsing key specs (`NumKeys`, `Streams`, `Sort`, ...) and the
    ///   proxy-only flags are kept. Where the backend declares neither
    ///   `write` nor `readonly` (scripts), the built-in classification stays;
    ///   a built-in `BLOCKING` stays (Redis 7.0 does not flag `WAIT`), and a
    ///   `MAY_BLOCK` command never becomes `BLOCKING`, since Redis flags
    ///   `XREAD` as blocking even without `BLOCK`.
    /// - Subcommands (element 9) are merged the same way as `container|sub`.
    ///
    /// Malformed entries are skipped, never panicked on. Returns how many
    /// entries were added.
    pub fn merge_command_reply(&mut self, reply: &OwnedFrame) -> usize {
        let OwnedFrame::Array(entries) = reply else {
            return 0;
        };
        entries.iter().map(|e| self.merge_entry(e, None)).sum()
    }

    /// Merges one command doc; `container` is set for subcommand docs, which
    /// are not searched for further subcommands (Redis has one level only,
    /// and it bounds recursion on hostile input).
    fn merge_entry(&mut self, frame: &OwnedFrame, container: Option<&str>) -> usize {
        let Some(doc) = ReplyDoc::parse(frame) else {
            return 0;
        };
        let mut name = doc.name.to_ascii_lowercase();
        if let Some(container) = container {
            match name.split_once('|') {
                Some((parent, _)) if parent == container => {}
                Some(_) => return 0,
                None => name = format!("{container}|{name}"),
            }
        }

        let mut added = 0;
        if let Some(entry) = self.map.get_mut(name.as_bytes()) {
            let info = &mut entry.info;
            let mut server = doc.flags & SERVER_FLAGS;
            if !server.intersects(Flags::WRITE | Flags::READONLY) {
                server |= info.flags & (Flags::WRITE | Flags::READONLY);
            }
            server |= info.flags & Flags::BLOCKING;
            if info.flags.contains(Flags::MAY_BLOCK) {
                server.remove(Flags::BLOCKING);
            }
            if info.keys.is_special() {
                server |= Flags::MOVABLE_KEYS;
            } else {
                info.keys = doc.keys;
            }
            info.arity = doc.arity;
            info.flags = (info.flags & PROXY_FLAGS) | server | (doc.flags & Flags::RANDOM);
        } else {
            self.insert(CommandInfo {
                name: name.as_str().into(),
                arity: doc.arity,
                flags: doc.flags,
                keys: doc.keys,
                id: OTHER_ID,
            });
            added += 1;
        }

        if container.is_none() {
            if let Some(subs) = doc.subcommands {
                for sub in subs {
                    added += self.merge_entry(sub, Some(&name));
                }
            }
        }
        added
    }

    /// Inserts or replaces an entry, marking its container (if any) as
    /// having subcommands.
    fn insert(&mut self, info: CommandInfo) {
        let key: Box<[u8]> = info.name.as_bytes().into();
        self.max_name_len = self.max_name_len.max(key.len());
        if let Some((parent, _)) = info.name.split_once('|') {
            if let Some(parent) = self.map.get_mut(parent.as_bytes()) {
                parent.has_subcommands = true;
            }
        }
        // A subcommand may have been merged before its container.
        let has_subcommands =
            self.map.keys().any(|k| k.len() > key.len() && k.starts_with(&key) && k[key.len()] == b'|');
        self.map.insert(key, Entry { info, has_subcommands });
    }
}

/// One parsed element of a `COMMAND` reply.
struct ReplyDoc<'a> {
    name: String,
    arity: i32,
    flags: Flags,
    keys: KeySpec,
    subcommands: Option<&'a [OwnedFrame]>,
}

impl<'a> ReplyDoc<'a> {
    /// Parses a command doc, or `None` if it is malformed (wrong shape,
    /// non-UTF-8 or empty name, out-of-range numbers).
    fn parse(frame: &'a OwnedFrame) -> Option<Self> {
        let OwnedFrame::Array(fields) = frame else {
            return None;
        };
        if fields.len() < 6 {
            return None;
        }
        let name = String::from_utf8(frame_bytes(&fields[0])?.to_vec()).ok()?;
        if name.is_empty() {
            return None;
        }
        let arity = i32::try_from(frame_int(&fields[1])?).ok()?;
        let OwnedFrame::Array(flag_frames) = &fields[2] else {
            return None;
        };
        let mut flags = Flags::empty();
        for f in flag_frames.iter().filter_map(frame_bytes) {
            flags |= match f.to_ascii_lowercase().as_slice() {
                b"write" => Flags::WRITE,
                b"readonly" => Flags::READONLY,
                b"admin" => Flags::ADMIN,
                b"blocking" => Flags::BLOCKING,
                b"pubsub" => Flags::PUBSUB,
                b"movablekeys" => Flags::MOVABLE_KEYS,
                b"random" => Flags::RANDOM,
                _ => Flags::empty(),
            };
        }
        if let Some(OwnedFrame::Array(tips)) = fields.get(7) {
            if tips.iter().filter_map(frame_bytes).any(|t| t.eq_ignore_ascii_case(b"nondeterministic_output")) {
                flags |= Flags::RANDOM;
            }
        }
        let first = u16::try_from(frame_int(&fields[3])?).ok()?;
        let last = i16::try_from(frame_int(&fields[4])?).ok()?;
        let step = u16::try_from(frame_int(&fields[5])?).ok()?;
        let keys = if first == 0 {
            KeySpec::None
        } else if step == 0 {
            return None;
        } else {
            KeySpec::Range { first, last, step }
        };
        let subcommands = match fields.get(9) {
            Some(OwnedFrame::Array(subs)) if !subs.is_empty() => Some(subs.as_slice()),
            _ => None,
        };
        Some(ReplyDoc { name, arity, flags, keys, subcommands })
    }
}

/// The bytes of a simple or bulk string frame.
fn frame_bytes(frame: &OwnedFrame) -> Option<&[u8]> {
    match frame {
        OwnedFrame::SimpleString(b) | OwnedFrame::BulkString(b) => Some(b),
        _ => None,
    }
}

/// An integer frame's value.
fn frame_int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The built-in rows. Short aliases keep each row on one line.

const W: u32 = Flags::WRITE.bits();
const R: u32 = Flags::READONLY.bits();
const A: u32 = Flags::ADMIN.bits();
const B: u32 = Flags::BLOCKING.bits();
const MB: u32 = Flags::MAY_BLOCK.bits();
const PS: u32 = Flags::PUBSUB.bits();
const SUB: u32 = Flags::SUBSCRIBE.bits();
const TX: u32 = Flags::TRANSACTION.bits();
const CN: u32 = Flags::CONNECTION.bits();
const KS: u32 = Flags::KEYSPACE.bits();
const DG: u32 = Flags::DANGEROUS.bits();
const RND: u32 = Flags::RANDOM.bits();
const SC: u32 = Flags::SCRIPT.bits();

/// No keys.
const NK: KeySpec = KeySpec::None;
/// One key at argv[1].
const K1: KeySpec = rg(1, 1, 1);
/// One key at argv[2], after a subcommand (`OBJECT ENCODING key`).
const K2: KeySpec = rg(2, 2, 1);
/// Source and destination (`RENAME`, `LMOVE`, `COPY`, ...).
const K12: KeySpec = rg(1, 2, 1);
/// Every argument is a key (`DEL`, `MGET`, ...).
const ALL: KeySpec = rg(1, -1, 1);
/// Key/value pairs (`MSET`).
const PAIRS: KeySpec = rg(1, -1, 2);
/// Every argument but the trailing timeout (`BLPOP`).
const BKEYS: KeySpec = rg(1, -2, 1);

const fn rg(first: u16, last: i16, step: u16) -> KeySpec {
    KeySpec::Range { first, last, step }
}

const fn nk(numkeys_at: u16, first_key_before: bool) -> KeySpec {
    KeySpec::NumKeys { numkeys_at, first_key_before }
}

/// `(name, arity, flags, keys)`, grouped as in the Redis documentation.
/// Arity and the server-side flags follow redis-server 7.0's `COMMAND` reply;
/// rows marked 7.2 follow that release.
#[rustfmt::skip]
static BUILTIN: &[(&str, i32, u32, KeySpec)] = &[
    // ---- string ----
    ("append", 3, W, K1),
    ("decr", 2, W, K1),
    ("decrby", 3, W, K1),
    ("get", 2, R, K1),
    ("getdel", 2, W, K1),
    ("getex", -2, W, K1),
    ("getrange", 4, R, K1),
    ("getset", 3, W, K1),
    ("incr", 2, W, K1),
    ("incrby", 3, W, K1),
    ("incrbyfloat", 3, W, K1),
    ("lcs", -3, R, K12),
    ("mget", -2, R, ALL),
    ("mset", -3, W, PAIRS),
    ("msetnx", -3, W, PAIRS),
    ("psetex", 4, W, K1),
    ("set", -3, W, K1),
    ("setex", 4, W, K1),
    ("setnx", 3, W, K1),
    ("setrange", 4, W, K1),
    ("strlen", 2, R, K1),
    ("substr", 4, R, K1),
    // ---- bitmap ----
    ("bitcount", -2, R, K1),
    ("bitfield", -2, W, K1),
    ("bitfield_ro", -2, R, K1),
    ("bitop", -4, W, rg(2, -1, 1)),
    ("bitpos", -3, R, K1),
    ("getbit", 3, R, K1),
    ("setbit", 4, W, K1),
    // ---- generic ----
    ("copy", -3, W, K12),
    ("del", -2, W, ALL),
    ("dump", 2, R | RND, K1),
    ("exists", -2, R, ALL),
    ("expire", -3, W, K1),
    ("expireat", -3, W, K1),
    ("expiretime", 2, R, K1),
    ("keys", 2, R | KS, NK),
    ("migrate", -6, W | RND, KeySpec::Migrate),
    ("move", 3, W, K1),
    ("object", -2, RND, NK),
    ("object|encoding", 3, R | RND, K2),
    ("object|freq", 3, R | RND, K2),
    ("object|help", 2, 0, NK),
    ("object|idletime", 3, R | RND, K2),
    ("object|refcount", 3, R | RND, K2),
    ("persist", 2, W, K1),
    ("pexpire", -3, W, K1),
    ("pexpireat", -3, W, K1),
    ("pexpiretime", 2, R, K1),
    ("pttl", 2, R | RND, K1),
    ("randomkey", 1, R | KS | RND, NK),
    ("rename", 3, W, K12),
    ("renamenx", 3, W, K12),
    ("restore", -4, W, K1),
    ("scan", -2, R | KS | RND, NK),
    ("sort", -2, W, KeySpec::Sort),
    ("sort_ro", -2, R, KeySpec::Sort),
    ("touch", -2, R, ALL),
    ("ttl", 2, R | RND, K1),
    ("type", 2, R, K1),
    ("unlink", -2, W, ALL),
    ("wait", 3, B, NK),
    ("waitaof", 4, B, NK), // 7.2
    // ---- list ----
    ("blmove", 6, W | B, K12),
    ("blmpop", -5, W | B, nk(2, false)),
    ("blpop", -3, W | B, BKEYS),
    ("brpop", -3, W | B, BKEYS),
    ("brpoplpush", 4, W | B, K12),
    ("lindex", 3, R, K1),
    ("linsert", 5, W, K1),
    ("llen", 2, R, K1),
    ("lmove", 5, W, K12),
    ("lmpop", -4, W, nk(1, false)),
    ("lpop", -2, W, K1),
    ("lpos", -3, R, K1),
    ("lpush", -3, W, K1),
    ("lpushx", -3, W, K1),
    ("lrange", 4, R, K1),
    ("lrem", 4, W, K1),
    ("lset", 4, W, K1),
    ("ltrim", 4, W, K1),
    ("rpop", -2, W, K1),
    ("rpoplpush", 3, W, K12),
    ("rpush", -3, W, K1),
    ("rpushx", -3, W, K1),
    // ---- set ----
    ("sadd", -3, W, K1),
    ("scard", 2, R, K1),
    ("sdiff", -2, R, ALL),
    ("sdiffstore", -3, W, ALL),
    ("sinter", -2, R, ALL),
    ("sintercard", -3, R, nk(1, false)),
    ("sinterstore", -3, W, ALL),
    ("sismember", 3, R, K1),
    ("smembers", 2, R, K1),
    ("smismember", -3, R, K1),
    ("smove", 4, W, K12),
    ("spop", -2, W | RND, K1),
    ("srandmember", -2, R | RND, K1),
    ("srem", -3, W, K1),
    ("sscan", -3, R | RND, K1),
    ("sunion", -2, R, ALL),
    ("sunionstore", -3, W, ALL),
    // ---- sorted-set ----
    ("bzmpop", -5, W | B, nk(2, false)),
    ("bzpopmax", -3, W | B, BKEYS),
    ("bzpopmin", -3, W | B, BKEYS),
    ("zadd", -4, W, K1),
    ("zcard", 2, R, K1),
    ("zcount", 4, R, K1),
    ("zdiff", -3, R, nk(1, false)),
    ("zdiffstore", -4, W, nk(2, true)),
    ("zincrby", 4, W, K1),
    ("zinter", -3, R, nk(1, false)),
    ("zintercard", -3, R, nk(1, false)),
    ("zinterstore", -4, W, nk(2, true)),
    ("zlexcount", 4, R, K1),
    ("zmpop", -4, W, nk(1, false)),
    ("zmscore", -3, R, K1),
    ("zpopmax", -2, W, K1),
    ("zpopmin", -2, W, K1),
    ("zrandmember", -2, R | RND, K1),
    ("zrange", -4, R, K1),
    ("zrangebylex", -4, R, K1),
    ("zrangebyscore", -4, R, K1),
    ("zrangestore", -5, W, K12),
    ("zrank", 3, R, K1),
    ("zrem", -3, W, K1),
    ("zremrangebylex", 4, W, K1),
    ("zremrangebyrank", 4, W, K1),
    ("zremrangebyscore", 4, W, K1),
    ("zrevrange", -4, R, K1),
    ("zrevrangebylex", -4, R, K1),
    ("zrevrangebyscore", -4, R, K1),
    ("zrevrank", 3, R, K1),
    ("zscan", -3, R | RND, K1),
    ("zscore", 3, R, K1),
    ("zunion", -3, R, nk(1, false)),
    ("zunionstore", -4, W, nk(2, true)),
    // ---- hash ----
    ("hdel", -3, W, K1),
    ("hexists", 3, R, K1),
    ("hget", 3, R, K1),
    ("hgetall", 2, R, K1),
    ("hincrby", 4, W, K1),
    ("hincrbyfloat", 4, W, K1),
    ("hkeys", 2, R, K1),
    ("hlen", 2, R, K1),
    ("hmget", -3, R, K1),
    ("hmset", -4, W, K1),
    ("hrandfield", -2, R | RND, K1),
    ("hscan", -3, R | RND, K1),
    ("hset", -4, W, K1),
    ("hsetnx", 4, W, K1),
    ("hstrlen", 3, R, K1),
    ("hvals", 2, R, K1),
    // ---- stream ----
    ("xack", -4, W, K1),
    ("xadd", -5, W | RND, K1),
    ("xautoclaim", -6, W | RND, K1),
    ("xclaim", -6, W | RND, K1),
    ("xdel", -3, W, K1),
    ("xgroup", -2, 0, NK),
    ("xgroup|create", -5, W, K2),
    ("xgroup|createconsumer", 5, W, K2),
    ("xgroup|delconsumer", 5, W, K2),
    ("xgroup|destroy", 4, W, K2),
    ("xgroup|help", 2, 0, NK),
    ("xgroup|setid", -5, W, K2),
    ("xinfo", -2, 0, NK),
    ("xinfo|consumers", 4, R | RND, K2),
    ("xinfo|groups", 3, R | RND, K2),
    ("xinfo|help", 2, 0, NK),
    ("xinfo|stream", -3, R | RND, K2),
    ("xlen", 2, R, K1),
    ("xpending", -3, R | RND, K1),
    ("xrange", -4, R, K1),
    ("xread", -4, R | MB, KeySpec::Streams),
    ("xreadgroup", -7, W | MB, KeySpec::Streams),
    ("xrevrange", -4, R, K1),
    ("xsetid", -3, W, K1),
    ("xtrim", -4, W | RND, K1),
    // ---- geo ----
    ("geoadd", -5, W, K1),
    ("geodist", -4, R, K1),
    ("geohash", -2, R, K1),
    ("geopos", -2, R, K1),
    ("georadius", -6, W, KeySpec::GeoRadiusStore),
    ("georadius_ro", -6, R, K1),
    ("georadiusbymember", -5, W, KeySpec::GeoRadiusStore),
    ("georadiusbymember_ro", -5, R, K1),
    ("geosearch", -7, R, K1),
    ("geosearchstore", -8, W, K12),
    // ---- hyperloglog ----
    ("pfadd", -2, W, K1),
    ("pfcount", -2, R, ALL),
    ("pfdebug", 3, W | A | DG, K2),
    ("pfmerge", -2, W, ALL),
    ("pfselftest", 1, A | DG, NK),
    // ---- pubsub ----
    ("psubscribe", -2, PS | SUB, NK),
    ("publish", 3, PS, NK),
    ("pubsub", -2, 0, NK),
    ("pubsub|channels", -2, PS | RND, NK),
    ("pubsub|help", 2, 0, NK),
    ("pubsub|numpat", 2, PS | RND, NK),
    ("pubsub|numsub", -2, PS | RND, NK),
    ("pubsub|shardchannels", -2, PS | RND, NK),
    ("pubsub|shardnumsub", -2, PS | RND, NK),
    ("punsubscribe", -1, PS, NK),
    ("spublish", 3, PS, K1),
    ("ssubscribe", -2, PS | SUB, ALL),
    ("subscribe", -2, PS | SUB, NK),
    ("sunsubscribe", -1, PS, ALL),
    ("unsubscribe", -1, PS, NK),
    // ---- scripting ----
    ("eval", -3, W | SC, nk(2, false)),
    ("eval_ro", -3, R | SC, nk(2, false)),
    ("evalsha", -3, W | SC, nk(2, false)),
    ("evalsha_ro", -3, R | SC, nk(2, false)),
    ("fcall", -3, W | SC, nk(2, false)),
    ("fcall_ro", -3, R | SC, nk(2, false)),
    ("function", -2, DG | SC, NK),
    ("function|delete", 3, W | SC, NK),
    ("function|dump", 2, SC, NK),
    ("function|flush", -2, W | SC, NK),
    ("function|help", 2, SC, NK),
    ("function|kill", 2, DG | SC, NK),
    ("function|list", -2, SC, NK),
    ("function|load", -3, W | SC, NK),
    ("function|restore", -3, W | SC, NK),
    ("function|stats", 2, RND | SC, NK),
    ("script", -2, DG | SC, NK),
    ("script|debug", 3, SC, NK),
    ("script|exists", -3, SC, NK),
    ("script|flush", -2, SC, NK),
    ("script|help", 2, SC, NK),
    ("script|kill", 2, DG | SC, NK),
    ("script|load", 3, SC, NK),
    // ---- transactions ----
    ("discard", 1, TX, NK),
    ("exec", 1, TX, NK),
    ("multi", 1, TX, NK),
    ("unwatch", 1, TX, NK),
    ("watch", -2, TX, ALL),
    // ---- connection ----
    ("auth", -2, CN, NK),
    ("client", -2, CN | DG, NK),
    ("client|caching", 3, CN, NK),
    ("client|getname", 2, CN, NK),
    ("client|getredir", 2, CN, NK),
    ("client|help", 2, 0, NK),
    ("client|id", 2, CN | RND, NK),
    ("client|info", 2, CN | RND, NK),
    ("client|kill", -3, A | DG, NK),
    ("client|list", -2, A | RND, NK),
    ("client|no-evict", 3, A | CN, NK),
    ("client|no-touch", 3, CN, NK), // 7.2
    ("client|pause", -3, A | DG, NK),
    ("client|reply", 3, CN, NK),
    ("client|setinfo", 4, CN, NK), // 7.2
    ("client|setname", 3, CN, NK),
    ("client|tracking", -3, CN, NK),
    ("client|trackinginfo", 2, CN, NK),
    ("client|unblock", -3, A | DG, NK),
    ("client|unpause", 2, A | DG, NK),
    ("echo", 2, 0, NK),
    ("hello", -1, CN, NK),
    ("ping", -1, 0, NK),
    ("quit", -1, CN, NK),
    ("reset", 1, CN, NK),
    ("select", 2, CN, NK),
    // ---- cluster ----
    ("asking", 1, CN, NK),
    ("cluster", -2, DG | RND, NK),
    ("cluster|addslots", -3, A | DG, NK),
    ("cluster|addslotsrange", -4, A | DG, NK),
    ("cluster|bumpepoch", 2, A | DG | RND, NK),
    ("cluster|count-failure-reports", 3, A | DG | RND, NK),
    ("cluster|countkeysinslot", 3, DG, NK),
    ("cluster|delslots", -3, A | DG, NK),
    ("cluster|delslotsrange", -4, A | DG, NK),
    ("cluster|failover", -2, A | DG, NK),
    ("cluster|flushslots", 2, A | DG, NK),
    ("cluster|forget", 3, A | DG, NK),
    ("cluster|getkeysinslot", 4, DG | RND, NK),
    ("cluster|help", 2, DG, NK),
    ("cluster|info", 2, DG | RND, NK),
    ("cluster|keyslot", 3, DG, NK),
    ("cluster|links", 2, DG | RND, NK),
    ("cluster|meet", -4, A | DG, NK),
    ("cluster|myid", 2, DG, NK),
    ("cluster|myshardid", 2, DG | RND, NK), // 7.2
    ("cluster|nodes", 2, DG | RND, NK),
    ("cluster|replicas", 3, A | DG | RND, NK),
    ("cluster|replicate", 3, A | DG, NK),
    ("cluster|reset", -2, A | DG, NK),
    ("cluster|saveconfig", 2, A | DG, NK),
    ("cluster|set-config-epoch", 3, A | DG, NK),
    ("cluster|setslot", -4, A | DG, NK),
    ("cluster|shards", 2, DG | RND, NK),
    ("cluster|slaves", 3, A | DG | RND, NK),
    ("cluster|slots", 2, DG | RND, NK),
    ("readonly", 1, CN, NK),
    ("readwrite", 1, CN, NK),
    // ---- server ----
    ("acl", -2, DG, NK),
    ("acl|cat", -2, 0, NK),
    ("acl|deluser", -3, A | DG, NK),
    ("acl|dryrun", -4, A, NK),
    ("acl|genpass", -2, 0, NK),
    ("acl|getuser", 3, A, NK),
    ("acl|help", 2, 0, NK),
    ("acl|list", 2, A, NK),
    ("acl|load", 2, A | DG, NK),
    ("acl|log", -2, A, NK),
    ("acl|save", 2, A | DG, NK),
    ("acl|setuser", -3, A | DG, NK),
    ("acl|users", 2, A, NK),
    ("acl|whoami", 2, 0, NK),
    ("bgrewriteaof", 1, A | DG, NK),
    ("bgsave", -1, A | DG, NK),
    ("command", -1, 0, NK),
    ("command|count", 2, 0, NK),
    ("command|docs", -2, 0, NK),
    ("command|getkeys", -4, 0, NK),
    ("command|getkeysandflags", -4, 0, NK),
    ("command|help", 2, 0, NK),
    ("command|info", -2, 0, NK),
    ("command|list", -2, 0, NK),
    ("config", -2, DG, NK),
    ("config|get", -3, A, NK),
    ("config|help", 2, 0, NK),
    ("config|resetstat", 2, A | DG, NK),
    ("config|rewrite", 2, A | DG, NK),
    ("config|set", -4, A | DG, NK),
    ("dbsize", 1, R | KS, NK),
    ("debug", -2, A | DG | RND, NK),
    ("failover", -1, A | DG, NK),
    ("flushall", -1, W | KS, NK),
    ("flushdb", -1, W | KS, NK),
    ("info", -1, RND, NK),
    ("lastsave", 1, RND, NK),
    ("latency", -2, RND, NK),
    ("latency|doctor", 2, A | RND, NK),
    ("latency|graph", 3, A | RND, NK),
    ("latency|help", 2, 0, NK),
    ("latency|histogram", -2, A | RND, NK),
    ("latency|history", 3, A | RND, NK),
    ("latency|latest", 2, A | RND, NK),
    ("latency|reset", -2, A, NK),
    ("lolwut", -1, R | RND, NK),
    ("memory", -2, RND, NK),
    ("memory|doctor", 2, RND, NK),
    ("memory|help", 2, 0, NK),
    ("memory|malloc-stats", 2, RND, NK),
    ("memory|purge", 2, 0, NK),
    ("memory|stats", 2, RND, NK),
    ("memory|usage", -3, R | RND, K2),
    ("module", -2, DG, NK),
    ("module|help", 2, 0, NK),
    ("module|list", 2, A, NK),
    ("module|load", -3, A | DG, NK),
    ("module|loadex", -3, A | DG, NK),
    ("module|unload", 3, A | DG, NK),
    ("monitor", 1, A | DG, NK),
    ("psync", -3, A | DG, NK),
    ("replconf", -1, A | DG, NK),
    ("replicaof", 3, A | DG, NK),
    ("restore-asking", -4, W | DG, K1),
    ("role", 1, RND, NK),
    ("save", 1, A | DG, NK),
    ("shutdown", -1, A | DG, NK),
    ("slaveof", 3, A | DG, NK),
    ("slowlog", -2, RND, NK),
    ("slowlog|get", -2, A | RND, NK),
    ("slowlog|help", 2, 0, NK),
    ("slowlog|len", 2, A | RND, NK),
    ("slowlog|reset", 2, A, NK),
    ("swapdb", 3, W | KS, NK),
    ("sync", 1, A | DG, NK),
    ("time", 1, RND, NK),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> CommandTable {
        CommandTable::builtin()
    }

    fn info<'t>(t: &'t CommandTable, argv: &[&str]) -> &'t CommandInfo {
        match t.lookup(argv) {
            Some(i) => i,
            None => panic!("no entry for {argv:?}"),
        }
    }

    /// Key arguments of `cmdline` (split on spaces; `""` stands for an empty
    /// argument), as strings.
    fn keys(cmdline: &str) -> Vec<String> {
        let argv: Vec<&str> = cmdline.split(' ').map(|a| if a == "\"\"" { "" } else { a }).collect();
        let t = table();
        let idx = info(&t, &argv).key_indices(&argv);
        idx.iter().map(|&i| argv[i].to_string()).collect()
    }

    fn idx(cmdline: &str) -> Vec<usize> {
        let argv: Vec<&str> = cmdline.split(' ').collect();
        info(&table(), &argv).key_indices(&argv).to_vec()
    }

    #[test]
    fn lookup_is_case_insensitive_and_resolves_subcommands() {
        let t = table();
        assert_eq!(&*info(&t, &["GeT", "k"]).name, "get");
        assert_eq!(&*info(&t, &["get"]).name, "get");

        let get = info(&t, &["config", "get", "maxmemory"]);
        assert_eq!(&*get.name, "config|get");
        assert!(!get.flags.contains(Flags::DANGEROUS));

        let set = info(&t, &["CONFIG", "SeT", "maxmemory", "1"]);
        assert_eq!(&*set.name, "config|set");
        assert!(set.flags.contains(Flags::DANGEROUS));

        let setname = info(&t, &["client", "SETNAME", "x"]);
        assert_eq!(&*setname.name, "client|setname");
        assert!(setname.flags.contains(Flags::CONNECTION));

        assert_eq!(&*info(&t, &["object", "ENCODING", "k"]).name, "object|encoding");
        assert_eq!(&*info(&t, &["XINFO", "stream", "s"]).name, "xinfo|stream");
        assert_eq!(&*info(&t, &["memory", "usage", "k"]).name, "memory|usage");
        assert_eq!(&*info(&t, &["script", "load", "x"]).name, "script|load");
        assert_eq!(&*info(&t, &["function", "load", "x"]).name, "function|load");
        assert_eq!(&*info(&t, &["command", "info"]).name, "command|info");
        assert_eq!(&*info(&t, &["acl", "whoami"]).name, "acl|whoami");

        // Container alone, and an unknown subcommand: the container, which
        // is dangerous because some of its subcommands are.
        assert_eq!(&*info(&t, &["config"]).name, "config");
        let unknown_sub = info(&t, &["config", "frobnicate"]);
        assert_eq!(&*unknown_sub.name, "config");
        assert!(unknown_sub.flags.contains(Flags::DANGEROUS));
        // Plain commands never look at argv[1].
        assert_eq!(&*info(&t, &["get", "config"]).name, "get");
        assert_eq!(&*info(&t, &["set", "k|x", "v"]).name, "set");

        assert!(t.lookup(&["nosuchcommand"]).is_none());
        assert!(t.lookup(&["config|set", "x", "y"]).is_none());
        assert!(t.lookup::<&str>(&[]).is_none());
        assert!(t.lookup(&[""]).is_none());
        assert!(t.lookup(&["x".repeat(10_000)]).is_none());
        assert!(t.lookup(&[b"g\xffet".as_slice()]).is_none());
        let long_sub = "y".repeat(1000);
        assert_eq!(&*info(&t, &["config", &long_sub]).name, "config");

        assert_eq!(t.get("CONFIG|GET").map(|i| &*i.name), Some("config|get"));
        assert!(t.get("config get").is_none());
    }

    #[test]
    fn key_indices_for_fixed_positions() {
        assert_eq!(keys("GET k"), ["k"]);
        assert_eq!(keys("MSET k1 v1 k2 v2"), ["k1", "k2"]);
        assert_eq!(keys("MGET a b c"), ["a", "b", "c"]);
        assert_eq!(keys("DEL a b c"), ["a", "b", "c"]);
        assert_eq!(keys("RENAME a b"), ["a", "b"]);
        assert_eq!(keys("LMOVE a b LEFT RIGHT"), ["a", "b"]);
        assert_eq!(keys("BLPOP a b 0"), ["a", "b"]);
        assert_eq!(keys("BRPOPLPUSH a b 0"), ["a", "b"]);
        assert_eq!(keys("SMOVE a b m"), ["a", "b"]);
        assert_eq!(keys("COPY a b REPLACE"), ["a", "b"]);
        assert_eq!(keys("LCS a b LEN"), ["a", "b"]);
        assert_eq!(keys("PFMERGE d a b"), ["d", "a", "b"]);
        assert_eq!(keys("BITOP AND d a b"), ["d", "a", "b"]);
        assert_eq!(keys("OBJECT ENCODING k"), ["k"]);
        assert_eq!(keys("object freq k"), ["k"]);
        assert_eq!(keys("MEMORY USAGE k SAMPLES 5"), ["k"]);
        assert_eq!(keys("XINFO STREAM s FULL"), ["s"]);
        assert_eq!(keys("XGROUP CREATE s g $"), ["s"]);
        assert_eq!(keys("GETEX k PERSIST"), ["k"]);
        assert_eq!(keys("GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km"), ["d", "s"]);
        assert!(keys("PING").is_empty());
        assert!(keys("CONFIG GET maxmemory").is_empty());
        // Malformed input: positions past the end are dropped.
        assert_eq!(keys("MSET k1 v1 k2"), ["k1", "k2"]);
        assert!(idx("GET").is_empty());
        assert!(idx("BLPOP").is_empty());
        assert!(idx("RENAME a").len() == 1);
    }

    #[test]
    fn key_indices_for_numkeys_commands() {
        assert_eq!(keys("EVAL script 2 k1 k2 a1"), ["k1", "k2"]);
        assert!(keys("EVAL script 0 a1 a2").is_empty());
        assert_eq!(keys("EVAL script 5 k1 k2"), ["k1", "k2"]);
        assert_eq!(keys("EVAL script 18446744073709551616 k1"), ["k1"]);
        assert!(keys("EVAL script -1 k1").is_empty());
        assert!(keys("EVAL script x k1").is_empty());
        assert!(idx("EVAL").is_empty());
        assert_eq!(keys("EVALSHA sha 1 k a"), ["k"]);
        assert_eq!(keys("FCALL fn 2 k1 k2 a"), ["k1", "k2"]);
        assert_eq!(keys("FCALL_RO fn 1 k1 a"), ["k1"]);
        assert_eq!(keys("ZUNIONSTORE dst 2 a b WEIGHTS 1 2"), ["dst", "a", "b"]);
        assert_eq!(keys("ZINTERSTORE dst 1 a"), ["dst", "a"]);
        assert_eq!(keys("ZDIFFSTORE dst 2 a b"), ["dst", "a", "b"]);
        assert_eq!(keys("ZUNION 2 a b WITHSCORES"), ["a", "b"]);
        assert_eq!(keys("ZINTERCARD 2 a b LIMIT 1"), ["a", "b"]);
        assert_eq!(keys("SINTERCARD 1 a"), ["a"]);
        assert_eq!(keys("LMPOP 2 a b LEFT"), ["a", "b"]);
        assert_eq!(keys("ZMPOP 1 z MIN"), ["z"]);
        assert_eq!(keys("BLMPOP 0 2 a b LEFT"), ["a", "b"]);
        assert_eq!(keys("BZMPOP 1.5 2 a b MAX COUNT 3"), ["a", "b"]);
        assert_eq!(idx("ZUNIONSTORE dst"), [1]);
    }

    #[test]
    fn key_indices_for_argument_parsed_commands() {
        assert_eq!(keys("XREAD COUNT 2 STREAMS s1 s2 0 0"), ["s1", "s2"]);
        assert_eq!(keys("xread block 0 streams s >"), ["s"]);
        assert_eq!(keys("XREADGROUP GROUP g c BLOCK 0 STREAMS s1 >"), ["s1"]);
        // A group and consumer named like the keyword are not the keyword.
        assert_eq!(keys("XREADGROUP GROUP streams streams STREAMS k >"), ["k"]);
        assert_eq!(keys("XREADGROUP GROUP g c NOACK COUNT 1 STREAMS a b 0 0"), ["a", "b"]);
        assert!(keys("XREAD COUNT 2").is_empty());
        assert!(keys("XREAD STREAMS").is_empty());
        // Unbalanced: only the keys that can have an id.
        assert_eq!(keys("XREAD STREAMS a b 0"), ["a"]);

        assert_eq!(keys("SORT k BY x STORE dst"), ["k", "dst"]);
        assert_eq!(keys("sort k store d1 store d2"), ["k", "d2"]);
        assert_eq!(keys("SORT k BY store GET store LIMIT 0 10"), ["k"]);
        assert_eq!(keys("SORT k STORE"), ["k"]);
        assert_eq!(keys("SORT_RO k BY w_* DESC"), ["k"]);

        assert_eq!(keys("MIGRATE host 6379 \"\" 0 5000 KEYS a b"), ["a", "b"]);
        assert_eq!(keys("MIGRATE host 6379 k 0 5000"), ["k"]);
        assert_eq!(keys("MIGRATE h 1 \"\" 0 5 COPY AUTH keys AUTH2 u keys KEYS a"), ["a"]);
        assert_eq!(idx("MIGRATE h 1"), Vec::<usize>::new());

        assert_eq!(keys("GEORADIUS g 1 2 3 km STORE d"), ["g", "d"]);
        assert_eq!(keys("GEORADIUS g 1 2 3 km WITHDIST STOREDIST d"), ["g", "d"]);
        assert_eq!(keys("GEORADIUSBYMEMBER g store 3 km COUNT 1"), ["g"]);
        assert_eq!(keys("GEORADIUSBYMEMBER g m 3 km STORE d"), ["g", "d"]);
        assert_eq!(keys("GEORADIUS_RO g 1 2 3 km"), ["g"]);
    }

    #[test]
    fn blocks_only_when_it_can() {
        let t = table();
        let b = |line: &str| {
            let argv: Vec<&str> = line.split(' ').collect();
            info(&t, &argv).blocks(&argv)
        };
        assert!(b("BLPOP a b 0"));
        assert!(b("BZMPOP 0 1 z MIN"));
        assert!(b("WAIT 1 0"));
        assert!(b("WAITAOF 1 0 0"));
        assert!(!b("XREAD STREAMS s 0"));
        assert!(!b("XREAD COUNT 1 STREAMS block 0"));
        assert!(b("XREAD BLOCK 100 STREAMS s $"));
        assert!(b("XREADGROUP GROUP g c block 0 STREAMS s >"));
        assert!(!b("XREADGROUP GROUP block block STREAMS s >"));
        assert!(!b("GET k"));
        assert!(!b("LPOP k"));
        assert!(!info(&t, &["xread"]).flags.contains(Flags::BLOCKING));
    }

    #[test]
    fn arity() {
        let t = table();
        let get = info(&t, &["get"]);
        assert!(get.arity_ok(2));
        assert!(!get.arity_ok(1));
        assert!(!get.arity_ok(3));
        let mset = info(&t, &["mset"]);
        assert!(!mset.arity_ok(2));
        assert!(mset.arity_ok(3));
        assert!(mset.arity_ok(1001));
        let config_set = info(&t, &["config", "set"]);
        assert!(!config_set.arity_ok(3));
        assert!(config_set.arity_ok(4));
        assert!(info(&t, &["ping"]).arity_ok(1));
        assert!(info(&t, &["ping"]).arity_ok(usize::MAX));
        assert!(!info(&t, &["xreadgroup"]).arity_ok(6));
    }

    /// Asserts that every entry named in `names` (space separated) has
    /// (`expect`) or lacks all of `flags`.
    fn check(t: &CommandTable, flags: Flags, expect: bool, names: &str) {
        for name in names.split_whitespace() {
            let Some(i) = t.get(name) else { panic!("missing {name}") };
            assert_eq!(i.flags.contains(flags), expect, "{name}: {:?}", i.flags);
        }
    }

    #[test]
    fn flags_classify_commands() {
        let t = table();
        let writes = "set getex getdel spop lpop xadd incrbyfloat expire persist restore \
                      setrange del eval evalsha fcall xreadgroup sort bitfield function|load \
                      xgroup|create flushall lmove blmove georadius";
        check(&t, Flags::WRITE, true, writes);
        check(&t, Flags::READONLY, false, writes);
        let reads = "get mget exists ttl pttl type scan smembers eval_ro fcall_ro sort_ro \
                     bitfield_ro xread object|encoding memory|usage georadius_ro keys dbsize \
                     lcs touch";
        check(&t, Flags::READONLY, true, reads);
        check(&t, Flags::WRITE, false, reads);
        check(&t, Flags::BLOCKING, true, "blpop brpop blmove brpoplpush blmpop bzpopmin bzpopmax bzmpop wait waitaof");
        check(&t, Flags::BLOCKING, false, "xread xreadgroup lpop get");
        check(&t, Flags::MAY_BLOCK, true, "xread xreadgroup");
        check(&t, Flags::SUBSCRIBE | Flags::PUBSUB, true, "subscribe psubscribe ssubscribe");
        check(&t, Flags::SUBSCRIBE, false, "unsubscribe punsubscribe sunsubscribe publish spublish pubsub");
        check(&t, Flags::PUBSUB, true, "publish spublish pubsub|channels unsubscribe sunsubscribe");
        check(&t, Flags::TRANSACTION, true, "multi exec discard watch unwatch");
        check(
            &t,
            Flags::CONNECTION,
            true,
            "auth hello select quit reset readonly readwrite asking client|setname \
             client|getname client|tracking client|reply",
        );
        check(&t, Flags::KEYSPACE, true, "scan keys dbsize randomkey flushdb flushall swapdb");
        check(
            &t,
            Flags::DANGEROUS,
            true,
            "config|set config|rewrite config|resetstat debug shutdown replicaof slaveof \
             monitor cluster cluster|info cluster|setslot failover save bgsave bgrewriteaof \
             sync psync module|load module|unload module|loadex acl|setuser acl|deluser \
             acl|load acl|save script|kill function|kill client|kill",
        );
        check(
            &t,
            Flags::DANGEROUS,
            false,
            "config|get get set client|setname acl|whoami module|list script|load \
             function|list flushall info eval",
        );
        check(
            &t,
            Flags::RANDOM,
            true,
            "randomkey srandmember hrandfield zrandmember spop time info lastsave object \
             object|freq memory|usage client|list client|info client|id debug scan",
        );
        check(&t, Flags::RANDOM, false, "get smembers");
        check(&t, Flags::SCRIPT, true, "eval evalsha eval_ro evalsha_ro fcall fcall_ro script function|load");
        check(&t, Flags::MOVABLE_KEYS, true, "eval zunionstore xread sort migrate georadius blmpop");
        check(&t, Flags::MOVABLE_KEYS, false, "get mset georadius_ro");
        check(&t, Flags::ADMIN, true, "config|set client|list");
    }

    #[test]
    fn table_is_consistent() {
        let t = table();
        assert_eq!(t.len(), BUILTIN.len(), "duplicate rows");
        assert!(t.len() > 350);
        assert!(!t.is_empty());
        for i in t.iter() {
            assert_eq!(&*i.name, i.name.to_ascii_lowercase(), "name must be lowercase");
            assert_ne!(i.arity, 0, "{}", i.name);
            assert!(!i.flags.contains(Flags::WRITE | Flags::READONLY), "{} is both WRITE and READONLY", i.name);
            assert_eq!(i.keys.is_special(), i.flags.contains(Flags::MOVABLE_KEYS), "{}", i.name);
            if let KeySpec::Range { first, step, .. } = i.keys {
                assert!(first > 0 && step > 0, "{}", i.name);
            }
            if let Some((container, sub)) = i.name.split_once('|') {
                assert!(t.get(container).is_some(), "{} has no container", i.name);
                let found = info(&t, &[container.to_ascii_uppercase().as_str(), sub]);
                assert_eq!(found.name, i.name);
                assert!(i.arity.unsigned_abs() >= 2, "{}", i.name);
            }
            if i.flags.contains(Flags::DANGEROUS) {
                if let Some((container, _)) = i.name.split_once('|') {
                    assert!(
                        t.get(container).is_some_and(|c| c.flags.contains(Flags::DANGEROUS)),
                        "container of {} must be DANGEROUS",
                        i.name
                    );
                }
            }
        }
    }

    fn arg_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"0".to_vec()),
            Just(b"1".to_vec()),
            Just(b"2".to_vec()),
            Just(b"7".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"99999999999999999999999".to_vec()),
            Just(b"STREAMS".to_vec()),
            Just(b"block".to_vec()),
            Just(b"COUNT".to_vec()),
            Just(b"GROUP".to_vec()),
            Just(b"store".to_vec()),
            Just(b"STOREDIST".to_vec()),
            Just(b"LIMIT".to_vec()),
            Just(b"BY".to_vec()),
            Just(b"KEYS".to_vec()),
            Just(b"AUTH2".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    proptest! {
        #[test]
        fn key_indices_never_panic_and_stay_in_bounds(
            rest in proptest::collection::vec(arg_strategy(), 0..12),
            which in any::<proptest::sample::Index>(),
        ) {
            let t = table();
            let mut names: Vec<&CommandInfo> = t.iter().collect();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            // Every entry, with the name (and subcommand) in front so the
            // positions line up as in real traffic; plus a raw argv.
            for i in &names {
                let mut argv: Vec<Vec<u8>> =
                    i.name.split('|').map(|p| p.as_bytes().to_vec()).collect();
                argv.extend(rest.iter().cloned());
                for candidate in [&argv[..], &rest[..], &argv[..1]] {
                    let idx = i.key_indices(candidate);
                    prop_assert!(idx.iter().all(|&k| k < candidate.len()), "{}: {:?}", i.name, idx);
                    prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "{}: {:?}", i.name, idx);
                    let _ = i.blocks(candidate);
                    let _ = i.arity_ok(candidate.len());
                }
            }
            let i = names[which.index(names.len())];
            let _ = t.lookup(&rest);
            let mut argv: Vec<Vec<u8>> = vec![i.name.to_ascii_uppercase().into_bytes()];
            argv.extend(rest);
            let _ = t.lookup(&argv);
        }
    }

    // --- merge_command_reply -------------------------------------------------

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    fn simple(s: &str) -> OwnedFrame {
        OwnedFrame::SimpleString(s.as_bytes().to_vec())
    }

    fn doc(name: &str, arity: i64, flags: &[&str], range: (i64, i64, i64), subs: Vec<OwnedFrame>) -> OwnedFrame {
        OwnedFrame::Array(vec![
            bulk(name),
            OwnedFrame::Integer(arity),
            OwnedFrame::Array(flags.iter().map(|f| simple(f)).collect()),
            OwnedFrame::Integer(range.0),
            OwnedFrame::Integer(range.1),
            OwnedFrame::Integer(range.2),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(subs),
        ])
    }

    #[test]
    fn merge_adds_module_commands_and_updates_known_ones() {
        let mut t = table();
        let before = t.len();
        let reply = OwnedFrame::Array(vec![
            doc("mymod.set", -3, &["write", "denyoom"], (1, 1, 1), vec![]),
            doc("get", -2, &["readonly", "fast"], (1, 1, 1), vec![]),
        ]);
        assert_eq!(t.merge_command_reply(&reply), 1);
        assert_eq!(t.len(), before + 1);

        let m = info(&t, &["MYMOD.SET", "k", "v"]);
        assert_eq!(&*m.name, "mymod.set");
        assert_eq!(m.arity, -3);
        assert_eq!(m.flags, Flags::WRITE);
        assert_eq!(m.keys, rg(1, 1, 1));
        assert_eq!(m.key_indices(&["mymod.set", "k", "v"]).as_slice(), &[1]);

        let get = info(&t, &["get"]);
        assert_eq!(get.arity, -2);
        assert_eq!(get.flags, Flags::READONLY);
        assert_eq!(get.keys, K1);

        // The built-in special key specs stay.
        assert_eq!(keys_of(&t, "EVAL s 1 k"), [3]);
        assert_eq!(info(&t, &["zunionstore"]).keys, nk(2, true));
        assert_eq!(info(&t, &["xread"]).keys, KeySpec::Streams);

        // Merging the same reply again adds nothing.
        assert_eq!(t.merge_command_reply(&reply), 0);
    }

    fn keys_of(t: &CommandTable, line: &str) -> Vec<usize> {
        let argv: Vec<&str> = line.split(' ').collect();
        info(t, &argv).key_indices(&argv).to_vec()
    }

    #[test]
    fn merge_keeps_proxy_knowledge() {
        let mut t = table();
        let reply = OwnedFrame::Array(vec![
            // Redis 7.0 describes these with 0/0/0 and movablekeys.
            doc("eval", -3, &["noscript", "movablekeys"], (0, 0, 0), vec![]),
            doc("xread", -4, &["readonly", "blocking", "movablekeys"], (0, 0, 0), vec![]),
            doc("sort", -2, &["write", "denyoom", "movablekeys"], (1, 1, 1), vec![]),
            doc("wait", 3, &["noscript"], (0, 0, 0), vec![]),
            doc(
                "config",
                -2,
                &[],
                (0, 0, 0),
                vec![
                    doc("config|set", -4, &["admin", "noscript"], (0, 0, 0), vec![]),
                    doc("config|newthing", 2, &["admin"], (0, 0, 0), vec![]),
                    doc("bogus", 2, &["admin"], (0, 0, 0), vec![]),
                    doc("client|kill", 2, &[], (0, 0, 0), vec![]),
                ],
            ),
            doc("mymod.get", 2, &["readonly", "random"], (1, 1, 1), vec![]),
        ]);
        // config|newthing, config|bogus (prefixed) and mymod.get are new;
        // client|kill under config is rejected.
        assert_eq!(t.merge_command_reply(&reply), 3);

        let eval = info(&t, &["eval"]);
        assert_eq!(eval.keys, nk(2, false));
        assert!(eval.flags.contains(Flags::WRITE | Flags::SCRIPT | Flags::MOVABLE_KEYS));

        let xread = info(&t, &["xread"]);
        assert_eq!(xread.keys, KeySpec::Streams);
        assert!(xread.flags.contains(Flags::MAY_BLOCK | Flags::READONLY));
        assert!(!xread.flags.contains(Flags::BLOCKING));
        assert!(!xread.blocks(&["xread", "streams", "s", "0"]));

        assert_eq!(info(&t, &["sort"]).keys, KeySpec::Sort);
        assert!(info(&t, &["wait"]).flags.contains(Flags::BLOCKING));

        let set = info(&t, &["config", "set"]);
        assert!(set.flags.contains(Flags::DANGEROUS | Flags::ADMIN));
        assert!(info(&t, &["config"]).flags.contains(Flags::DANGEROUS));
        let newthing = info(&t, &["CONFIG", "NEWTHING"]);
        assert_eq!(&*newthing.name, "config|newthing");
        assert_eq!(newthing.flags, Flags::ADMIN);
        assert!(t.get("config|bogus").is_some());
        assert!(info(&t, &["client", "kill"]).flags.contains(Flags::DANGEROUS));
        assert!(info(&t, &["mymod.get"]).flags.contains(Flags::RANDOM | Flags::READONLY));
    }

    #[test]
    fn merge_registers_subcommands_of_new_containers() {
        let mut t = table();
        let reply = OwnedFrame::Array(vec![doc(
            "mymod.admin",
            -2,
            &[],
            (0, 0, 0),
            vec![doc("mymod.admin|touch", 3, &["write"], (2, 2, 1), vec![])],
        )]);
        assert_eq!(t.merge_command_reply(&reply), 2);
        let touch = info(&t, &["MyMod.Admin", "TOUCH", "k"]);
        assert_eq!(&*touch.name, "mymod.admin|touch");
        assert_eq!(touch.key_indices(&["mymod.admin", "touch", "k"]).as_slice(), &[2]);
    }

    #[test]
    fn merge_skips_malformed_entries() {
        let mut t = table();
        let before = t.clone();
        let junk = OwnedFrame::Array(vec![
            OwnedFrame::Null,
            OwnedFrame::Integer(3),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![bulk("short"), OwnedFrame::Integer(2)]),
            // Arity is not an integer.
            OwnedFrame::Array(vec![
                bulk("x1"),
                bulk("2"),
                OwnedFrame::Array(vec![]),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
            ]),
            // Flags are not an array.
            OwnedFrame::Array(vec![
                bulk("x2"),
                OwnedFrame::Integer(2),
                bulk("write"),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
            ]),
            doc("", 2, &[], (0, 0, 0), vec![]),
            doc("x3", 2, &[], (-1, 0, 0), vec![]),
            doc("x4", 2, &[], (1, 1, 0), vec![]),
            doc("x5", 2, &[], (70000, 1, 1), vec![]),
            doc("x6", 1 << 40, &[], (1, 1, 1), vec![]),
            doc("get", 2, &[], (1, 40000, 1), vec![]),
            OwnedFrame::Array(vec![
                OwnedFrame::BulkString(vec![0xff, 0xfe]),
                OwnedFrame::Integer(2),
                OwnedFrame::Array(vec![]),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
                OwnedFrame::Integer(0),
            ]),
        ]);
        assert_eq!(t.merge_command_reply(&junk), 0);
        assert_eq!(t.merge_command_reply(&OwnedFrame::Null), 0);
        assert_eq!(t.merge_command_reply(&OwnedFrame::Error("ERR".into())), 0);
        assert_eq!(t.len(), before.len());
        assert_eq!(t.get("get"), before.get("get"));

        // A minimal Redis 6 style entry (six fields, RESP simple-string name).
        let old = OwnedFrame::Array(vec![OwnedFrame::Array(vec![
            simple("oldmod.cmd"),
            OwnedFrame::Integer(-2),
            OwnedFrame::Array(vec![simple("write"), OwnedFrame::Integer(1)]),
            OwnedFrame::Integer(1),
            OwnedFrame::Integer(-1),
            OwnedFrame::Integer(2),
        ])]);
        assert_eq!(t.merge_command_reply(&old), 1);
        let argv = ["oldmod.cmd", "a", "1", "b", "2"];
        assert_eq!(info(&t, &argv).key_indices(&argv).as_slice(), &[1, 3]);
    }

    /// `COMMAND INFO get xread zunionstore object` as sent by redis-server
    /// 7.0.15, byte for byte.
    const REAL_REPLY: &[u8] = b"\
        *4\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*3\r\n\
        +@read\r\n+@string\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n\
        +access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n\
        *2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\n\
        spec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n\
        *10\r\n$5\r\nxread\r\n:-4\r\n*3\r\n+readonly\r\n+blocking\r\n+movablekeys\r\n:0\r\n\
        :0\r\n:0\r\n*4\r\n+@read\r\n+@stream\r\n+@slow\r\n+@blocking\r\n*0\r\n*1\r\n*6\r\n$5\r\n\
        flags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$7\r\n\
        keyword\r\n$4\r\nspec\r\n*4\r\n$7\r\nkeyword\r\n$7\r\nSTREAMS\r\n$9\r\nstartfrom\r\n\
        :1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\n\
        lastkey\r\n:-1\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:2\r\n*0\r\n*10\r\n$11\r\n\
        zunionstore\r\n:-4\r\n*3\r\n+write\r\n+denyoom\r\n+movablekeys\r\n:1\r\n:1\r\n:1\r\n\
        *3\r\n+@write\r\n+@sortedset\r\n+@slow\r\n*0\r\n*2\r\n*6\r\n$5\r\nflags\r\n*2\r\n+OW\r\n\
        +update\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n\
        *2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\n\
        spec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*6\r\n\
        $5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\n\
        index\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:2\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\n\
        type\r\n$6\r\nkeynum\r\n$4\r\nspec\r\n*6\r\n$9\r\nkeynumidx\r\n:0\r\n$8\r\nfirstkey\r\n\
        :1\r\n$7\r\nkeystep\r\n:1\r\n*0\r\n*10\r\n$6\r\nobject\r\n:-2\r\n*0\r\n:0\r\n:0\r\n\
        :0\r\n*1\r\n+@slow\r\n*0\r\n*0\r\n*5\r\n*10\r\n$15\r\nobject|idletime\r\n:3\r\n*1\r\n\
        +readonly\r\n:2\r\n:2\r\n:1\r\n*3\r\n+@keyspace\r\n+@read\r\n+@slow\r\n*1\r\n$23\r\n\
        nondeterministic_output\r\n*1\r\n*6\r\n$5\r\nflags\r\n*1\r\n+RO\r\n$12\r\n\
        begin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n\
        :2\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\n\
        lastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n*10\r\n$11\r\n\
        object|help\r\n:2\r\n*2\r\n+loading\r\n+stale\r\n:0\r\n:0\r\n:0\r\n*2\r\n+@keyspace\r\n\
        +@slow\r\n*0\r\n*0\r\n*0\r\n*10\r\n$11\r\nobject|freq\r\n:3\r\n*1\r\n+readonly\r\n:2\r\n\
        :2\r\n:1\r\n*3\r\n+@keyspace\r\n+@read\r\n+@slow\r\n*1\r\n$23\r\n\
        nondeterministic_output\r\n*1\r\n*6\r\n$5\r\nflags\r\n*1\r\n+RO\r\n$12\r\n\
        begin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n\
        :2\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\n\
        lastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n*10\r\n$15\r\n\
        object|encoding\r\n:3\r\n*1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n*3\r\n+@keyspace\r\n\
        +@read\r\n+@slow\r\n*1\r\n$23\r\nnondeterministic_output\r\n*1\r\n*6\r\n$5\r\nflags\r\n\
        *1\r\n+RO\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n\
        *2\r\n$5\r\nindex\r\n:2\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\n\
        spec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n\
        *10\r\n$15\r\nobject|refcount\r\n:3\r\n*1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n*3\r\n\
        +@keyspace\r\n+@read\r\n+@slow\r\n*1\r\n$23\r\nnondeterministic_output\r\n*1\r\n*6\r\n\
        $5\r\nflags\r\n*1\r\n+RO\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n\
        $4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:2\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\n\
        range\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\n\
        limit\r\n:0\r\n*0\r\n";

    fn decode(bytes: &[u8]) -> OwnedFrame {
        match redis_protocol::resp2::decode::decode(bytes) {
            Ok(Some((frame, used))) => {
                assert_eq!(used, bytes.len());
                frame
            }
            other => panic!("cannot decode reply: {other:?}"),
        }
    }

    #[test]
    fn merge_real_redis_7_reply() {
        let reply = decode(REAL_REPLY);
        let mut t = table();
        let before = t.clone();
        // Everything in it is known already.
        assert_eq!(t.merge_command_reply(&reply), 0);
        assert_eq!(t.len(), before.len());
        for name in ["get", "xread", "zunionstore", "object", "object|encoding", "object|freq"] {
            assert_eq!(t.get(name), before.get(name), "{name} changed");
        }
        // A table that knows nothing learns them from the reply.
        let mut empty = CommandTable { map: HashMap::default(), max_name_len: 0 };
        assert_eq!(empty.merge_command_reply(&reply), 4 + 5);
        assert!(empty.get("xread").is_some_and(|i| i.flags.contains(Flags::BLOCKING)));
        let argv = ["OBJECT", "encoding", "k"];
        assert_eq!(empty.lookup(&argv).map(|i| i.key_indices(&argv).to_vec()), Some(vec![2]));
    }

    /// Compares the built-in table with a full `COMMAND` reply captured from a
    /// real server (raw RESP2 bytes, e.g. captured with
    /// `printf '*1\r\n$7\r\nCOMMAND\r\n' | nc -q1 127.0.0.1 6379 > reply.resp`).
    /// Uses the Redis 7.0 reply committed in `tests/data/`, or the file named by
    /// `TANDEM_COMMAND_REPLY` to re-check the table against a new Redis release.
    #[test]
    fn matches_captured_command_reply() {
        let path = std::env::var("TANDEM_COMMAND_REPLY")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/command_reply.resp").to_string());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => panic!("{path}: {e}"),
        };
        let reply = decode(&bytes);
        let t = table();
        let mut problems = Vec::new();
        let mut seen = 0;
        let OwnedFrame::Array(entries) = &reply else { panic!("not an array") };
        let mut docs: Vec<&OwnedFrame> = entries.iter().collect();
        while let Some(frame) = docs.pop() {
            let Some(d) = ReplyDoc::parse(frame) else {
                problems.push(format!("unparseable entry {frame:?}"));
                continue;
            };
            if let Some(subs) = d.subcommands {
                docs.extend(subs);
            }
            seen += 1;
            let Some(i) = t.get(&d.name) else {
                problems.push(format!("{}: missing from the table", d.name));
                continue;
            };
            if i.arity != d.arity {
                problems.push(format!("{}: arity {} vs server {}", d.name, i.arity, d.arity));
            }
            let mine = i.flags & SERVER_FLAGS;
            let mut theirs = d.flags & SERVER_FLAGS;
            // Deliberate differences, documented on Flags.
            if !theirs.intersects(Flags::WRITE | Flags::READONLY) {
                theirs |= mine & Flags::WRITE;
            }
            if i.flags.contains(Flags::MAY_BLOCK) {
                theirs.remove(Flags::BLOCKING);
            }
            theirs |= mine & Flags::BLOCKING & !d.flags;
            if mine != theirs {
                problems.push(format!("{}: flags {mine:?} vs server {theirs:?}", d.name));
            }
            if d.flags.contains(Flags::RANDOM) && !i.flags.contains(Flags::RANDOM) {
                problems.push(format!("{}: server says nondeterministic", d.name));
            }
            if !i.keys.is_special() && i.keys != d.keys {
                problems.push(format!("{}: keys {:?} vs server {:?}", d.name, i.keys, d.keys));
            }
        }
        // Merging a reply the table agrees with must change nothing.
        let mut merged = t.clone();
        merged.merge_command_reply(&reply);
        for i in t.iter() {
            if merged.get(&i.name) != Some(i) {
                problems.push(format!("{}: changed by merge: {:?}", i.name, merged.get(&i.name)));
            }
        }
        assert!(seen > 200, "only {seen} entries in {path}");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
