//! The configuration types. Defaults live in `defaults.rs`; meaning checks
//! in `validate.rs`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::commands::AllowList;
use crate::config::defaults;
use crate::config::secret::Secret;
use crate::config::units;
use crate::config::url::BackendUrl;

/// The whole proxy configuration. Obtain one through
/// [`Config::load`], [`Config::from_yaml_str`] or [`Config::from_overrides`],
/// which validate it and resolve its secrets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to, `host:port` (default `127.0.0.1:6380`).
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// TLS on the client listener (default: none, plain TCP).
    #[serde(default)]
    pub tls: Option<ListenTls>,
    /// The TLS server built from `tls` during validation.
    #[serde(skip)]
    pub(crate) tls_server: Option<crate::client::tls::ServerTls>,
    /// The admin HTTP endpoint.
    #[serde(default)]
    pub admin: Admin,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// The Redis servers: `source` (required) and `target` (the migration
    /// destination).
    pub backends: Backends,
    /// Protection against misbehaving or hostile clients.
    #[serde(default)]
    pub limits: Limits,
    /// Client authentication; no users means no authentication.
    #[serde(default)]
    pub auth: Auth,
    /// Normally refused commands this deployment lets through.
    #[serde(default)]
    pub allow_commands: AllowList,
    /// Which share of traffic is served by the target.
    #[serde(default)]
    pub cutover: Cutover,
    /// Copying writes to the target.
    #[serde(default)]
    pub mirror: Mirror,
    /// Shadow reads comparing source and target.
    #[serde(default)]
    pub compare: Compare,
    /// An automatic cutover ramp with guardrails (absent: no ramp).
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// Threads that run the proxy (default 1). Read at start only.
    #[serde(default)]
    pub workers: Workers,
}

/// How many threads run the proxy: a fixed number, or `auto` (one per CPU the process may
/// use, as its affinity mask and cgroup quota allow). With one (the default), everything
/// runs on a single event loop and no task is ever handed to another thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per available CPU.
    Auto,
    /// Exactly this many (1 to [`defaults::WORKERS_MAX`]).
    Fixed(u16),
}

impl Default for Workers {
    fn default() -> Self {
        Workers::Fixed(defaults::WORKERS)
    }
}

impl Workers {
    /// The number of threads this stands for on this machine.
    pub fn count(self) -> usize {
        match self {
            Workers::Fixed(n) => usize::from(n),
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"auto\" or a number of threads from 1 to {}", defaults::WORKERS_MAX)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Workers, E> {
                match u16::try_from(n) {
                    Ok(n) if (1..=defaults::WORKERS_MAX).contains(&n) => Ok(Workers::Fixed(n)),
                    _ => Err(E::custom(format!("must be \"auto\" or from 1 to {}, got {n}", defaults::WORKERS_MAX))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Workers, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => {
                        Err(E::custom(format!("must be \"auto\" or from 1 to {}, got {n}", defaults::WORKERS_MAX)))
                    }
                }
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Workers, E> {
                match text.trim() {
                    "auto" => Ok(Workers::Auto),
                    other => match other.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "must be \"auto\" or a number of threads from 1 to {}, got \"{other}\"",
                            defaults::WORKERS_MAX
                        ))),
                    },
                }
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// Steps the cutover advances through on its own while the guardrails hold.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// Cutover percentages, ascending, e.g. `[5, 25, 50, 100]`.
    pub steps: Vec<f64>,
    /// How long each step must stay healthy before the next.
    #[serde(deserialize_with = "units::duration")]
    pub hold: Duration,
    /// When to roll back on its own.
    #[serde(default)]
    pub guardrails: Guardrails,
}

/// Health checks over a sliding window; any that trips rolls the cutover back to the last
/// step that held.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guardrails {
    /// Sliding window the ratios are computed over (default 60s).
    #[serde(deserialize_with = "units::duration")]
    pub window: Duration,
    /// Largest share of target commands answered with an error (default 0.01).
    pub max_target_error_ratio: f64,
    /// Largest share of compared reads that mismatch (default 0.001).
    pub max_mismatch_ratio: f64,
    /// Largest target p99 latency as a multiple of the source's (default 3.0).
    pub max_p99_ratio: f64,
    /// Requests the window must hold before ratios are judged (default 100).
    pub min_requests: u64,
}

impl Default for Guardrails {
    /// The ramp's own defaults, so the two never disagree.
    fn default() -> Self {
        let d = crate::control::ramp::Guardrails::default();
        Guardrails {
            window: d.window,
            max_target_error_ratio: d.max_target_error_ratio,
            max_mismatch_ratio: d.max_mismatch_ratio,
            max_p99_ratio: d.max_p99_ratio,
            min_requests: d.min_requests,
        }
    }
}

/// The admin HTTP endpoint (metrics, status, cutover control).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin endpoint, `host:port` (default `127.0.0.1:9121`).
    pub listen: String,
    /// Name of an environment variable holding the bearer token required by
    /// the admin endpoint.
    pub token_env: Option<String>,
    /// File holding the bearer token (a trailing newline is ignored).
    pub token_file: Option<PathBuf>,
    #[serde(skip)]
    pub(crate) token: Option<Secret>,
}

impl Admin {
    /// The admin token, resolved from `token_env` / `token_file`; `None`
    /// when neither is set (the endpoint is then unauthenticated).
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive such as `info` or
    /// `tandem=debug,info` (default `info`). `RUST_LOG`, when set, wins.
    pub level: String,
}

/// The two Redis servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backends {
    /// Where the data is now. Required.
    pub source: Backend,
    /// Where the data is going. Required for mirroring, comparing and
    /// cutover.
    #[serde(default)]
    pub target: Option<Backend>,
}

/// One Redis server and how to talk to it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `redis://host:port[/db]`, `rediss://...` (TLS) or `host:port`.
    pub url: BackendUrl,
    /// ACL user name for `AUTH`; taken from the URL (`redis://user@host`)
    /// when not set here.
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Shared, pipelined connections to this server (1..=64, default 2).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: u32,
    /// Limit for establishing a connection (and TLS, AUTH, SELECT); default 1s.
    #[serde(default = "defaults::connect_timeout", deserialize_with = "units::duration")]
    pub connect_timeout: Duration,
    /// Limit for one command's reply; default 5s.
    #[serde(default = "defaults::command_timeout", deserialize_with = "units::duration")]
    pub command_timeout: Duration,
    /// Delay between reconnection attempts, doubling from `min` to `max`.
    #[serde(default)]
    pub reconnect_backoff: Backoff,
    /// TLS settings for a `rediss://` URL (optional: verification against the system's
    /// roots is the default).
    #[serde(default)]
    pub tls: Option<BackendTls>,
    #[serde(skip)]
    pub(crate) password: Option<Secret>,
    /// The TLS client built from `tls` during validation (`rediss://` only).
    #[serde(skip)]
    pub(crate) tls_client: Option<crate::backend::tls::TlsClient>,
}

/// TLS on the client listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
}

impl Config {
    /// The client listener's TLS setup, loaded during validation.
    pub fn tls_server(&self) -> Option<&crate::client::tls::ServerTls> {
        self.tls_server.as_ref()
    }
}

/// TLS to a backend: which CA to trust, an optional client certificate, the name to verify.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendTls {
    /// PEM file of the CA certificate(s) the server's certificate must chain to; default:
    /// the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate; default: the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate. Only for tests and emergencies; logged as a warning.
    pub insecure_skip_verify: bool,
}

impl Backend {
    /// The password, resolved from `password_env` / `password_file`; `None`
    /// when neither is set.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The TLS client for a `rediss://` URL, built during validation.
    pub fn tls_client(&self) -> Option<&crate::backend::tls::TlsClient> {
        self.tls_client.as_ref()
    }
}

/// Exponential reconnection backoff bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// First delay (default 50ms).
    #[serde(deserialize_with = "units::duration")]
    pub min: Duration,
    /// Largest delay (default 2s); must be at least `min`.
    #[serde(deserialize_with = "units::duration")]
    pub max: Duration,
}

/// Limits protecting the proxy from clients.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most simultaneous client connections (default 10000).
    pub max_clients: u32,
    /// Largest bulk string a client may send, in bytes (default 512 MiB).
    #[serde(deserialize_with = "units::byte_size")]
    pub max_bulk_len: u64,
    /// Most elements in one command array (default 1048576).
    pub max_array_len: u32,
    /// Close a client idle this long; zero (the default) never does.
    #[serde(deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// Commands in flight per client before the proxy stops reading from
    /// that client (default 1024).
    pub max_pipeline: u32,
}

/// Client authentication.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Accepted users; empty (the default) means clients need no `AUTH`.
    pub users: Vec<User>,
}

impl Auth {
    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user called `name`, if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// A user clients may authenticate as. Exactly one of `password_env`,
/// `password_file` and `password_sha256` must be set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User name (`AUTH name password`; a one-argument `AUTH password`
    /// means the user `default`).
    pub name: String,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// SHA-256 of the password, 64 hex characters.
    #[serde(default)]
    pub password_sha256: Option<Secret>,
    /// Only read commands are allowed (default false).
    #[serde(default)]
    pub read_only: bool,
    #[serde(skip)]
    pub(crate) credential: Option<UserPassword>,
}

impl User {
    /// How the user's password is checked; always `Some` after a
    /// successful load.
    pub fn credential(&self) -> Option<&UserPassword> {
        self.credential.as_ref()
    }

    /// The plaintext password when it came from `password_env` or
    /// `password_file`.
    pub fn password(&self) -> Option<&Secret> {
        match &self.credential {
            Some(UserPassword::Plain(secret)) => Some(secret),
            _ => None,
        }
    }

    /// The decoded SHA-256 digest when it came from `password_sha256`.
    pub fn password_sha256_digest(&self) -> Option<&[u8; 32]> {
        match &self.credential {
            Some(UserPassword::Sha256(digest)) => Some(digest),
            _ => None,
        }
    }
}

/// A user's resolved password.
#[derive(Clone)]
pub enum UserPassword {
    /// The password itself.
    Plain(Secret),
    /// The SHA-256 digest of the password.
    Sha256([u8; 32]),
}

impl fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserPassword::Plain(_) => f.write_str("Plain(***)"),
            UserPassword::Sha256(_) => f.write_str("Sha256(***)"),
        }
    }
}

/// Gradual cutover from source to target.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cutover {
    /// Share of traffic served by the target, 0..=100, fractions allowed
    /// (default 0).
    pub percent: f64,
    /// Longest wait for in-flight commands to drain when flipping (default 5s).
    #[serde(deserialize_with = "units::duration")]
    pub flip_timeout: Duration,
}

/// How writes are mirrored to the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// No mirroring.
    #[default]
    Off,
    /// Queue the write for the target; the client gets the source's reply
    /// at once.
    Async,
    /// Wait (up to `mirror.timeout`) for the target too before replying.
    Sync,
}

/// Write mirroring.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mirror {
    /// `off` (default), `async` or `sync`. Needs `backends.target`.
    pub mode: MirrorMode,
    /// Most writes in flight to the target in async mode: queued, or sent and not yet
    /// answered (default 100000).
    pub queue_len: u32,
    /// How long sync mode waits for the target (default 200ms).
    #[serde(deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// File recording keys whose mirror write failed, for later repair.
    pub journal: Option<PathBuf>,
    /// Size at which the journal stops growing (default 64 MiB).
    #[serde(deserialize_with = "units::byte_size")]
    pub journal_max_bytes: u64,
}

/// Shadow-read comparison.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compare {
    /// Share of reads also sent to the target and compared, 0..=100
    /// (default 0). Needs `backends.target`.
    pub percent: f64,
    /// Delay before re-reading a mismatch to rule out a race (default 250ms).
    #[serde(deserialize_with = "units::duration")]
    pub recheck_delay: Duration,
    /// TTL difference still counted as equal (default 2s).
    #[serde(deserialize_with = "units::duration")]
    pub ttl_tolerance: Duration,
    /// Put the differing values in mismatch logs (default false: keys only).
    pub log_values: bool,
    /// Mismatch log: one JSON line per confirmed mismatch (default: none).
    pub log: Option<PathBuf>,
    /// Size at which the mismatch log is rotated to `<log>.1` (default 64 MiB).
    #[serde(deserialize_with = "units::byte_size")]
    pub log_max_bytes: u64,
}
