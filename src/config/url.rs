//! [`BackendUrl`]: where a Redis backend lives.
//!
//! Accepted forms: `redis://host:port[/db]`, `rediss://host:port[/db]` (TLS),
//! and a bare `host:port[/db]` (plain `redis://`). The port defaults to 6379
//! and the database to 0. Two more forms name a group of servers:
//! - `redis+cluster://host1:port,host2:port` (or `rediss+cluster://`): a Redis Cluster,
//!   reached through any of the listed nodes (the seeds); always database 0;
//! - `redis+sentinel://s1:port,s2:port/master-name[/db]` (or `rediss+sentinel://`): the
//!   master the sentinels know by that name (sentinel ports default to 26379).
//!
//! IPv6 literals go in brackets: `redis://[::1]:6379`.
//! A user name may be given as `redis://user@host:port`; a password may not:
//! it would sit in plain text in the file, in shell history and in process
//! listings, so `password_env` / `password_file` are the only ways in.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The port used when a URL names none.
pub const DEFAULT_REDIS_PORT: u16 = 6379;

/// The port used for a sentinel when a `redis+sentinel://` URL names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// What kind of deployment a URL names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://`).
    #[default]
    Single,
    /// A Redis Cluster; the URL's addresses are seeds for discovering it.
    Cluster,
    /// The master that the listed sentinels know as `master`.
    Sentinel { master: String },
}

/// A parsed backend address. `Display` gives the canonical
/// `redis[s]://[user@]host:port[/db]` form (the database is shown when not 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    /// `true` for `rediss://`.
    pub tls: bool,
    /// Host name or IP address; IPv6 addresses are stored without brackets.
    pub host: String,
    /// TCP port (6379 when the URL names none).
    pub port: u16,
    /// Database index selected after connecting (0 when the URL names none).
    pub db: u32,
    /// User name given in the URL (`redis://user@host`), if any.
    pub username: Option<String>,
    /// One server, a cluster or a sentinel-managed master.
    pub topology: Topology,
    /// The addresses after the first (`host`/`port`) in a cluster or sentinel URL.
    pub more: Vec<(String, u16)>,
}

/// Why a backend URL was rejected. Messages never contain a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Nothing was given.
    #[error("empty URL")]
    Empty,
    /// A scheme other than `redis` or `rediss`.
    #[error("unsupported scheme \"{0}\" (expected redis://, rediss://, redis+cluster:// or redis+sentinel://)")]
    UnsupportedScheme(String),
    /// `user:password@` in the URL.
    #[error("a password must not be written in the URL; remove it and use password_env or password_file instead")]
    InlinePassword,
    /// `@` with nothing before it.
    #[error("empty user name before \"@\"")]
    EmptyUser,
    /// A user name with spaces or control characters.
    #[error("invalid user name in URL")]
    InvalidUser,
    /// No host between the scheme and the port.
    #[error("missing host")]
    MissingHost,
    /// A host with characters no host name or IPv4 address has.
    #[error("invalid host \"{0}\"")]
    InvalidHost(String),
    /// A bracketed host that is not an IPv6 address.
    #[error("invalid IPv6 address \"{0}\"")]
    InvalidIpv6(String),
    /// An IPv6 address without brackets.
    #[error("IPv6 addresses must be written in brackets, e.g. redis://[::1]:6379")]
    UnbracketedIpv6,
    /// A port that is not a number in 1..=65535.
    #[error("invalid port \"{0}\"")]
    InvalidPort(String),
    /// A path that is not `/` followed by a database number.
    #[error("invalid database \"{0}\" (expected a number, e.g. redis://host:6379/0)")]
    InvalidDb(String),
    /// A cluster URL naming a database other than 0.
    #[error("a Redis Cluster has only database 0")]
    ClusterDb,
    /// A sentinel URL without `/master-name`.
    #[error("missing master name (expected redis+sentinel://host:port,.../master-name)")]
    MissingMaster,
    /// More than one address in a plain URL.
    #[error("several addresses need redis+cluster:// or redis+sentinel://")]
    ManyHosts,
    /// `?query` or `#fragment` (not echoed: it may hold a password).
    #[error("query parameters and fragments (\"?...\", \"#...\") are not supported; use the backend's fields instead")]
    QueryNotSupported,
}

impl BackendUrl {
    /// `host:port` for connecting, with IPv6 hosts in brackets.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// Every address in the URL (`host:port`): the server, the cluster's seeds or the
    /// sentinels.
    pub fn addrs(&self) -> Vec<String> {
        let mut out = vec![self.addr()];
        out.extend(self.more.iter().map(|(h, p)| join_host_port(h, *p)));
        out
    }

    /// Whether both URLs name the same server and database (host compared
    /// case-insensitively; names are not resolved, so `localhost` and
    /// `127.0.0.1` count as different). Clusters and sentinel groups are the same when
    /// they share an address (and, for sentinels, the master name).
    pub fn same_endpoint(&self, other: &BackendUrl) -> bool {
        if self.topology != other.topology {
            return false;
        }
        let same = |(h1, p1): (&str, u16), (h2, p2): (&str, u16)| h1.eq_ignore_ascii_case(h2) && p1 == p2;
        let mine =
            std::iter::once((self.host.as_str(), self.port)).chain(self.more.iter().map(|(h, p)| (h.as_str(), *p)));
        let theirs: Vec<(&str, u16)> = std::iter::once((other.host.as_str(), other.port))
            .chain(other.more.iter().map(|(h, p)| (h.as_str(), *p)))
            .collect();
        let shared = mine.into_iter().any(|a| theirs.iter().any(|&b| same(a, b)));
        shared && self.db == other.db
    }
}

impl FromStr for BackendUrl {
    type Err = UrlError;

    fn from_str(input: &str) -> Result<Self, UrlError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(UrlError::Empty);
        }
        let (tls, topology, rest) = match input.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "redis" => (false, Topology::Single, rest),
                "rediss" => (true, Topology::Single, rest),
                "redis+cluster" => (false, Topology::Cluster, rest),
                "rediss+cluster" => (true, Topology::Cluster, rest),
                "redis+sentinel" => (false, Topology::Sentinel { master: String::new() }, rest),
                "rediss+sentinel" => (true, Topology::Sentinel { master: String::new() }, rest),
                _ => return Err(UrlError::UnsupportedScheme(scheme.to_string())),
            },
            None => (false, Topology::Single, input),
        };
        if rest.contains(['?', '#']) {
            // Checked before anything is echoed: a query may carry a password.
            if rest.contains('@') && userinfo_has_password(rest) {
                return Err(UrlError::InlinePassword);
            }
            return Err(UrlError::QueryNotSupported);
        }

        // Userinfo ends at the last '@' (a password could contain '@' or '/').
        let (username, rest) = match rest.rfind('@') {
            Some(at) => {
                let (userinfo, after) = (&rest[..at], &rest[at + 1..]);
                if userinfo.contains(':') {
                    return Err(UrlError::InlinePassword);
                }
                if userinfo.is_empty() {
                    return Err(UrlError::EmptyUser);
                }
                if userinfo.contains('/') || userinfo.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(UrlError::InvalidUser);
                }
                (Some(userinfo.to_string()), after)
            }
            None => (None, rest),
        };

        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let default_port = match topology {
            Topology::Sentinel { .. } => DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_REDIS_PORT,
        };
        let mut addrs = Vec::new();
        for part in authority.split(',') {
            let (host, port) = split_host_port(part)?;
            let port = match port {
                None => default_port,
                Some(text) => parse_port(text)?,
            };
            addrs.push((host, port));
        }
        if addrs.len() > 1 && topology == Topology::Single {
            return Err(UrlError::ManyHosts);
        }
        let (topology, path) = match topology {
            Topology::Sentinel { .. } => {
                let (master, db) = path.split_once('/').unwrap_or((path, ""));
                if master.is_empty() {
                    return Err(UrlError::MissingMaster);
                }
                (Topology::Sentinel { master: master.to_string() }, db)
            }
            other => (other, path),
        };
        let db = if path.is_empty() {
            0
        } else {
            path.parse::<u32>()
                .ok()
                .filter(|_| path.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| UrlError::InvalidDb(path.to_string()))?
        };
        if topology == Topology::Cluster && db != 0 {
            return Err(UrlError::ClusterDb);
        }
        let mut addrs = addrs.into_iter();
        let (host, port) = addrs.next().ok_or(UrlError::MissingHost)?;
        Ok(BackendUrl { tls, host, port, db, username, topology, more: addrs.collect() })
    }
}

/// Whether the part before the last '@' has a ':' (i.e. `user:password@`).
fn userinfo_has_password(rest: &str) -> bool {
    rest.rfind('@').is_some_and(|at| rest[..at].contains(':'))
}

fn parse_port(text: &str) -> Result<u16, UrlError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(UrlError::InvalidPort(text.to_string())),
    }
}

/// Splits `host[:port]` or `[v6][:port]`, validating the host.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), UrlError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some(close) = bracketed.find(']') else {
            return Err(UrlError::InvalidIpv6(bracketed.to_string()));
        };
        let (inside, after) = (&bracketed[..close], &bracketed[close + 1..]);
        if inside.is_empty() {
            return Err(UrlError::MissingHost);
        }
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(UrlError::InvalidIpv6(inside.to_string()));
        }
        let port = if after.is_empty() {
            None
        } else {
            match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(UrlError::InvalidPort(after.to_string())),
            }
        };
        return Ok((inside.to_ascii_lowercase(), port));
    }
    let (host, port) = match authority.matches(':').count() {
        0 => (authority, None),
        1 => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
        _ => return Err(UrlError::UnbracketedIpv6),
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(UrlError::InvalidHost(host.to_string()));
    }
    Ok((host.to_string(), port))
}

/// `host:port`, with an IPv6 host in brackets.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { "rediss" } else { "redis" })?;
        f.write_str(match self.topology {
            Topology::Single => "://",
            Topology::Cluster => "+cluster://",
            Topology::Sentinel { .. } => "+sentinel://",
        })?;
        if let Some(user) = &self.username {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.addrs().join(","))?;
        if let Topology::Sentinel { master } = &self.topology {
            write!(f, "/{master}")?;
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

/// Deserializes from a URL string; the error is the [`UrlError`] message.
impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlVisitor;

        impl Visitor<'_> for UrlVisitor {
            type Value = BackendUrl;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Redis URL such as \"redis://127.0.0.1:6379\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendUrl, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(UrlVisitor)
    }
}

/// Splits a listen address `host:port` / `[v6]:port`, returning the host
/// and port. Port 0 is allowed (the OS picks one; useful in tests).
pub(crate) fn parse_listen(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid address \"{text}\" (expected host:port, e.g. 127.0.0.1:6380)");
    if text.contains(['/', '@', '?', '#']) || text.trim() != text {
        return Err(bad());
    }
    match split_host_port(text) {
        Ok((host, Some(port))) => port
            .parse::<u16>()
            .ok()
            .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
            .map(|port| (host, port))
            .ok_or_else(|| format!("invalid port \"{port}\" in address \"{text}\"")),
        Ok((_, None)) => Err(format!("address \"{text}\" has no port (expected host:port)")),
        Err(UrlError::UnbracketedIpv6) => {
            Err(format!("invalid address \"{text}\": IPv6 addresses must be in brackets, e.g. [::1]:6380"))
        }
        Err(_) => Err(bad()),
    }
}
