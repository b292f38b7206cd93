//! Every default value, in one place. The example `proxy.yaml` documents
//! these, and a test checks that it agrees with them.

use std::time::Duration;

use crate::config::commands::AllowList;
use crate::config::types::{
    Admin, Auth, Backend, Backends, Backoff, Compare, Config, Cutover, Limits, Log, LogFormat, Mirror, MirrorMode,
    Workers,
};
use crate::config::url::BackendUrl;

/// `listen`: where clients connect.
pub const LISTEN: &str = "127.0.0.1:6380";
/// `admin.listen`: the admin HTTP endpoint.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9121";
/// `log.level`.
pub const LOG_LEVEL: &str = "info";
/// `workers`: one event loop, the cheapest per request where the proxy shares a few cores
/// with the application or Redis.
pub const WORKERS: u16 = 1;
/// Largest accepted `workers`.
pub const WORKERS_MAX: u16 = 1024;
/// `limits.max_clients`.
pub const MAX_CLIENTS: u32 = 10_000;
/// `limits.max_bulk_len`: 512 MiB, as Redis' `proto-max-bulk-len`.
pub const MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// `limits.max_array_len`.
pub const MAX_ARRAY_LEN: u32 = 1_048_576;
/// `limits.idle_timeout`: 0 = never close idle clients.
pub const IDLE_TIMEOUT: Duration = Duration::ZERO;
/// `limits.max_pipeline`.
pub const MAX_PIPELINE: u32 = 1024;
/// `backends.*.pool_size`.
pub const POOL_SIZE: u32 = 2;
/// Largest accepted `backends.*.pool_size`.
pub const POOL_SIZE_MAX: u32 = 64;
/// `backends.*.connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `backends.*.command_timeout`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// `backends.*.reconnect_backoff.min`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// `backends.*.reconnect_backoff.max`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// `cutover.percent`.
pub const CUTOVER_PERCENT: f64 = 0.0;
/// `cutover.flip_timeout`.
pub const FLIP_TIMEOUT: Duration = Duration::from_secs(5);
/// `mirror.queue_len`.
pub const MIRROR_QUEUE_LEN: u32 = 100_000;
/// `mirror.timeout`.
pub const MIRROR_TIMEOUT: Duration = Duration::from_millis(200);
/// `mirror.journal_max_bytes`: 64 MiB.
pub const JOURNAL_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `compare.percent`.
pub const COMPARE_PERCENT: f64 = 0.0;
/// `compare.recheck_delay`.
pub const RECHECK_DELAY: Duration = Duration::from_millis(250);
/// `compare.ttl_tolerance`.
pub const TTL_TOLERANCE: Duration = Duration::from_secs(2);

// Functions for `#[serde(default = "...")]` on fields of structs that have no
// `Default` (because they also have a required field).

pub(crate) fn listen() -> String {
    LISTEN.to_string()
}
pub(crate) fn pool_size() -> u32 {
    POOL_SIZE
}
pub(crate) fn connect_timeout() -> Duration {
    CONNECT_TIMEOUT
}
pub(crate) fn command_timeout() -> Duration {
    COMMAND_TIMEOUT
}

impl Default for Admin {
    fn default() -> Self {
        Admin { listen: ADMIN_LISTEN.to_string(), token_env: None, token_file: None, token: None }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Text, level: LOG_LEVEL.to_string() }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: MAX_CLIENTS,
            max_bulk_len: MAX_BULK_LEN,
            max_array_len: MAX_ARRAY_LEN,
            idle_timeout: IDLE_TIMEOUT,
            max_pipeline: MAX_PIPELINE,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min: BACKOFF_MIN, max: BACKOFF_MAX }
    }
}

impl Default for Cutover {
    fn default() -> Self {
        Cutover { percent: CUTOVER_PERCENT, flip_timeout: FLIP_TIMEOUT }
    }
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            mode: MirrorMode::Off,
            queue_len: MIRROR_QUEUE_LEN,
            timeout: MIRROR_TIMEOUT,
            journal: None,
            journal_max_bytes: JOURNAL_MAX_BYTES,
        }
    }
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            percent: COMPARE_PERCENT,
            recheck_delay: RECHECK_DELAY,
            ttl_tolerance: TTL_TOLERANCE,
            log: None,
            log_max_bytes: 64 * 1024 * 1024,
            log_values: false,
        }
    }
}

impl Backend {
    /// A backend at `url` with every other field at its default. Call
    /// [`Config::validate`] before use to resolve secrets.
    pub fn new(url: BackendUrl) -> Self {
        Backend {
            url,
            username: None,
            password_env: None,
            password_file: None,
            pool_size: POOL_SIZE,
            connect_timeout: CONNECT_TIMEOUT,
            command_timeout: COMMAND_TIMEOUT,
            reconnect_backoff: Backoff::default(),
            tls: None,
            password: None,
            tls_client: None,
        }
    }
}

impl Config {
    /// A configuration with `source` as the only backend and every other
    /// field at its default. Call [`Config::validate`] before use.
    pub fn with_source(source: Backend) -> Self {
        Config {
            listen: listen(),
            tls: None,
            tls_server: None,
            admin: Admin::default(),
            log: Log::default(),
            backends: Backends { source, target: None },
            limits: Limits::default(),
            auth: Auth::default(),
            allow_commands: AllowList::default(),
            cutover: Cutover::default(),
            mirror: Mirror::default(),
            compare: Compare::default(),
            ramp: None,
            workers: Workers::default(),
        }
    }
}
