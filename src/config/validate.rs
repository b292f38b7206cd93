//! The meaning pass: ranges, cross-field rules, and secret resolution.
//! Every problem is collected; nothing stops at the first.

use std::path::Path;

use crate::config::defaults::POOL_SIZE_MAX;
use crate::config::error::ConfigError;
use crate::config::load::{covers, Removals};
use crate::config::secret::Secret;
use crate::config::types::{Backend, Config, MirrorMode, User, UserPassword};
use crate::config::url::parse_listen;

/// Collects errors with paths in the file's coordinates, dropping those
/// about values the structural pass replaced with defaults (they would only
/// repeat or mislead).
struct Checks<'a> {
    errors: Vec<ConfigError>,
    removed: &'a [String],
    removals: Option<&'a Removals>,
}

impl Checks<'_> {
    /// `path` (in the assembled configuration) in the file's coordinates.
    fn orig(&self, path: &str) -> String {
        match self.removals {
            Some(removals) => removals.original_path(path),
            None => path.to_string(),
        }
    }

    fn error(&mut self, path: impl AsRef<str>, message: impl Into<String>) {
        let path = self.orig(path.as_ref());
        if !self.removed.iter().any(|r| covers(r, &path)) {
            self.errors.push(ConfigError::new(path, message));
        }
    }

    /// Whether `path`, something above it or something below it was cut out
    /// (its value is not what the user wrote).
    fn touched(&self, path: &str) -> bool {
        let path = self.orig(path);
        self.removed.iter().any(|r| covers(r, &path) || covers(&path, r))
    }
}

/// Checks `config` and resolves its secrets. `removed` lists paths the
/// structural pass cut out and `removals` maps list indices back to the
/// file's; both are empty/`None` for a configuration built in code.
pub(crate) fn validate(config: &mut Config, removed: &[String], removals: Option<&Removals>) -> Vec<ConfigError> {
    let mut checks = Checks { errors: Vec::new(), removed, removals };
    let c = &mut checks;

    let listen = check_listen(c, "listen", &config.listen);
    let admin = check_listen(c, "admin.listen", &config.admin.listen);
    match (listen, admin) {
        (Some(listen), Some(admin)) if listen == admin && listen.1 != 0 => {
            c.error("admin.listen", "same address as listen");
        }
        _ => {}
    }
    config.tls_server = None;
    if let Some(tls) = &config.tls {
        match crate::client::tls::ServerTls::build(tls) {
            Ok(server) => config.tls_server = Some(server),
            Err((field, message)) => c.error(field, message),
        }
    }
    config.admin.token =
        resolve_one_of(c, "admin", "token", config.admin.token_env.as_deref(), config.admin.token_file.as_deref());

    if config.log.level.trim().is_empty() {
        c.error("log.level", "must not be empty (e.g. \"info\")");
    }

    check_backend(c, "backends.source", &mut config.backends.source);
    if let Some(target) = &mut config.backends.target {
        check_backend(c, "backends.target", target);
        if target.url.same_endpoint(&config.backends.source.url) && !c.touched("backends.source.url") {
            c.error("backends.target.url", "same address as backends.source.url");
        }
    }
    // When the target was cut out for being invalid, "needs a target" errors
    // would only mislead.
    let has_target = config.backends.target.is_some() || c.touched("backends.target");

    let limits = &config.limits;
    for (name, value) in [
        ("max_clients", u64::from(limits.max_clients)),
        ("max_bulk_len", limits.max_bulk_len),
        ("max_array_len", u64::from(limits.max_array_len)),
        ("max_pipeline", u64::from(limits.max_pipeline)),
    ] {
        if value == 0 {
            c.error(format!("limits.{name}"), "must be at least 1");
        }
    }

    for i in 0..config.auth.users.len() {
        let path = format!("auth.users[{i}]");
        let earlier = config.auth.users[..i].iter().position(|u| u.name == config.auth.users[i].name);
        if let Some(j) = earlier {
            let other = c.orig(&format!("auth.users[{j}]"));
            c.error(format!("{path}.name"), format!("duplicate user \"{}\" (also {other})", config.auth.users[i].name));
        }
        check_user(c, &path, &mut config.auth.users[i]);
    }

    check_percent(c, "cutover.percent", config.cutover.percent);
    if config.cutover.percent > 0.0 && !has_target {
        c.error("cutover.percent", "cutover needs backends.target");
    }
    if config.cutover.flip_timeout.is_zero() {
        c.error("cutover.flip_timeout", "must be greater than 0");
    }

    if config.mirror.mode != MirrorMode::Off && !has_target {
        c.error("mirror.mode", "mirroring needs backends.target");
    }
    if config.mirror.queue_len == 0 {
        c.error("mirror.queue_len", "must be at least 1");
    }
    if config.mirror.timeout.is_zero() {
        c.error("mirror.timeout", "must be greater than 0");
    }
    if config.mirror.journal.as_deref() == Some(Path::new("")) {
        c.error("mirror.journal", "must not be empty (omit it for no journal)");
    }
    if config.mirror.journal_max_bytes == 0 {
        c.error("mirror.journal_max_bytes", "must be at least 1");
    }

    if let Some(ramp) = &config.ramp {
        if !has_target {
            c.error("ramp", "a ramp needs backends.target");
        }
        for (path, message) in crate::control::ramp::validate(&crate::control::ramp_config(ramp)) {
            c.error(&path, &message);
        }
    }
    check_percent(c, "compare.percent", config.compare.percent);
    if config.compare.percent > 0.0 && !has_target {
        c.error("compare.percent", "comparing needs backends.target");
    }

    checks.errors
}

fn check_listen(c: &mut Checks<'_>, path: &str, value: &str) -> Option<(String, u16)> {
    match parse_listen(value) {
        Ok((host, port)) => Some((host.to_ascii_lowercase(), port)),
        Err(message) => {
            c.error(path, message);
            None
        }
    }
}

fn check_percent(c: &mut Checks<'_>, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        c.error(path, format!("must be between 0 and 100, got {value}"));
    }
}

fn check_backend(c: &mut Checks<'_>, path: &str, backend: &mut Backend) {
    if !(1..=POOL_SIZE_MAX).contains(&backend.pool_size) {
        c.error(
            format!("{path}.pool_size"),
            format!("must be between 1 and {POOL_SIZE_MAX}, got {}", backend.pool_size),
        );
    }
    for (name, value) in [
        ("connect_timeout", backend.connect_timeout),
        ("command_timeout", backend.command_timeout),
        ("reconnect_backoff.max", backend.reconnect_backoff.max),
    ] {
        if value.is_zero() {
            c.error(format!("{path}.{name}"), "must be greater than 0");
        }
    }
    if backend.reconnect_backoff.min > backend.reconnect_backoff.max {
        c.error(
            format!("{path}.reconnect_backoff.min"),
            format!(
                "must not exceed reconnect_backoff.max ({:?} > {:?})",
                backend.reconnect_backoff.min, backend.reconnect_backoff.max
            ),
        );
    }

    match (&backend.username, &backend.url.username) {
        (Some(field), Some(in_url)) if field != in_url => c.error(
            format!("{path}.url"),
            format!("user name \"{in_url}\" in the URL differs from username \"{field}\""),
        ),
        (None, Some(in_url)) => backend.username = Some(in_url.clone()),
        _ => {}
    }
    if backend.username.as_deref() == Some("") {
        c.error(format!("{path}.username"), "must not be empty");
    }

    backend.tls_client = None;
    match (backend.url.tls, &backend.tls) {
        (false, Some(_)) => c.error(format!("{path}.tls"), "TLS settings need a rediss:// URL"),
        (false, None) => {}
        (true, settings) => {
            match crate::backend::tls::TlsClient::build(&settings.clone().unwrap_or_default(), &backend.url.host) {
                Ok(client) => backend.tls_client = Some(client),
                Err((field, message)) => c.error(format!("{path}.{field}"), message),
            }
        }
    }

    backend.password =
        resolve_one_of(c, path, "password", backend.password_env.as_deref(), backend.password_file.as_deref());
    let password_given = backend.password_env.is_some() || backend.password_file.is_some();
    if backend.username.is_some()
        && !password_given
        && !c.touched(&format!("{path}.password_env"))
        && !c.touched(&format!("{path}.password_file"))
    {
        c.error(format!("{path}.username"), "a user name needs a password: set password_env or password_file");
    }
}

fn check_user(c: &mut Checks<'_>, path: &str, user: &mut User) {
    if user.name.is_empty() {
        c.error(format!("{path}.name"), "must not be empty");
    } else if user.name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        c.error(format!("{path}.name"), "must not contain spaces or control characters");
    }
    let given = [user.password_env.is_some(), user.password_file.is_some(), user.password_sha256.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    user.credential = None;
    match given {
        0 => {
            let fields = ["password_env", "password_file", "password_sha256"];
            if !fields.iter().any(|f| c.touched(&format!("{path}.{f}"))) {
                c.error(path, "set one of password_env, password_file or password_sha256");
            }
        }
        1 => {
            if let Some(hash) = &user.password_sha256 {
                match decode_sha256(hash.expose()) {
                    Some(digest) => user.credential = Some(UserPassword::Sha256(digest)),
                    None => c.error(
                        format!("{path}.password_sha256"),
                        "must be exactly 64 hexadecimal characters (a SHA-256 digest)",
                    ),
                }
            } else {
                user.credential =
                    resolve_one_of(c, path, "password", user.password_env.as_deref(), user.password_file.as_deref())
                        .map(UserPassword::Plain);
            }
        }
        _ => {
            let second = if user.password_env.is_some() && user.password_file.is_some() {
                "password_file"
            } else {
                "password_sha256"
            };
            c.error(format!("{path}.{second}"), "set only one of password_env, password_file or password_sha256");
        }
    }
}

/// Resolves `<what>_env` or `<what>_file` under `path`; an error when both
/// are set, the variable is unset or empty, or the file is unreadable or
/// empty.
fn resolve_one_of(
    c: &mut Checks<'_>,
    path: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Option<Secret> {
    let env_path = format!("{path}.{what}_env");
    let file_path = format!("{path}.{what}_file");
    match (env, file) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            c.error(file_path, format!("set only one of {what}_env or {what}_file"));
            None
        }
        (Some(name), None) => match read_env(name) {
            Ok(secret) => Some(secret),
            Err(message) => {
                c.error(env_path, message);
                None
            }
        },
        (None, Some(file)) => match read_file(file) {
            Ok(secret) => Some(secret),
            Err(message) => {
                c.error(file_path, message);
                None
            }
        },
    }
}

fn read_env(name: &str) -> Result<Secret, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("invalid environment variable name \"{name}\""));
    }
    match std::env::var_os(name) {
        None => Err(format!("environment variable {name} is not set")),
        Some(value) => match value.into_string() {
            Err(_) => Err(format!("environment variable {name} is not valid UTF-8")),
            Ok(value) if value.is_empty() => Err(format!("environment variable {name} is empty")),
            Ok(value) => Ok(Secret::new(value)),
        },
    }
}

fn read_file(file: &Path) -> Result<Secret, String> {
    if file.as_os_str().is_empty() {
        return Err("must not be empty".to_string());
    }
    match std::fs::read_to_string(file) {
        Err(e) => Err(format!("cannot read \"{}\": {e}", file.display())),
        Ok(text) => {
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                Err(format!("file \"{}\" is empty", file.display()))
            } else {
                Ok(Secret::new(value))
            }
        }
    }
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *out = u8::try_from(high * 16 + low).ok()?;
    }
    Some(digest)
}
