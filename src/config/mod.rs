//! Configuration of the tandem proxy.
//!
//! Why it looks like this:
//!
//! * **One file.** Everything the proxy needs is in one YAML file (see the
//!   commented `proxy.yaml` at the repository root, which documents every
//!   field and its default). A few command-line flags (`--listen`, `--admin`,
//!   `--source`, `--target`) may override it, or stand in for it entirely
//!   ([`Config::apply_overrides`], [`Config::from_overrides`]).
//! * **Validated whole, before anything starts.** A migration proxy that
//!   starts with a half-understood configuration can mirror writes to the
//!   wrong server. Loading checks structure (unknown fields are errors, so
//!   a typo never silently becomes a default) and meaning (ranges,
//!   cross-field rules, that the secrets can be read) up front.
//! * **Every problem reported.** serde stops at the first error; an
//!   operator fixing a file one complaint per restart is miserable.
//!   [`ConfigErrors`] lists every problem, each with a dotted path such as
//!   `backends.target.url` or `auth.users[1].password_env`.
//! * **Secrets never inline.** Passwords and tokens are named by
//!   environment variable (`*_env`) or file (`*_file`) and resolved at load
//!   time into [`Secret`]s, which print as `***`. A URL with a password in
//!   it is rejected, and error messages never echo one.
//!
//! Units: durations are strings with a unit (`"250ms"`, `"2s"`, `"5m"`; a
//! bare `0` is also accepted, other bare numbers are rejected as ambiguous);
//! sizes are bytes or strings such as `"64kb"`, `"512mb"` (see [`units`]).

mod commands;
pub mod defaults;
mod error;
mod load;
mod secret;
#[cfg(test)]
mod tests;
mod types;
pub mod units;
pub mod url;
mod validate;

use std::path::Path;

pub use crate::config::commands::AllowList;
pub use crate::config::error::{ConfigError, ConfigErrors};
pub use crate::config::secret::Secret;
pub use crate::config::types::{
    Admin, Auth, Backend, BackendTls, Backends, Backoff, Compare, Config, Cutover, Guardrails, Limits, ListenTls, Log,
    LogFormat, Mirror, MirrorMode, Ramp, User, UserPassword, Workers,
};
pub use crate::config::url::{BackendUrl, UrlError, DEFAULT_REDIS_PORT};

impl Config {
    /// Parses, checks and resolves a configuration from YAML text.
    ///
    /// On failure every problem found is returned: all structural ones
    /// (unknown fields, wrong types, bad values, missing fields) and, when a
    /// configuration could still be assembled, all semantic ones.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigErrors> {
        let structural = load::deserialize_all(text);
        let mut errors = structural.errors;
        if let Some(mut config) = structural.config {
            errors.extend(validate::validate(&mut config, &structural.removed, Some(&structural.removals)));
            if errors.is_empty() {
                return Ok(config);
            }
        }
        Err(ConfigErrors::new(errors))
    }

    /// Reads and loads the file at `path` (see [`Config::from_yaml_str`]).
    /// A file that cannot be read is one error with an empty path.
    /// Relative `*_file` paths inside are resolved against the working
    /// directory, not the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single("", format!("cannot read {}: {e}", path.display())))?;
        Config::from_yaml_str(&text)
    }

    /// Checks a configuration built or changed in code and (re)resolves its
    /// secrets. The loaders call this already.
    pub fn validate(&mut self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self, &[], None);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors::new(errors))
        }
    }

    /// Applies command-line overrides: `--listen ADDR`, `--admin ADDR`,
    /// `--source URL`, `--target URL`, then re-validates the whole.
    ///
    /// A backend URL override replaces only that backend's `url` (its
    /// password, pool and timeouts stay); `--target` without a configured
    /// target creates one with defaults. Errors caused by a flag are reported
    /// with the flag as path (`--source: invalid port "x"`). On error `self`
    /// is left unchanged.
    pub fn apply_overrides(
        &mut self,
        listen: Option<String>,
        admin: Option<String>,
        source: Option<String>,
        target: Option<String>,
    ) -> Result<(), ConfigErrors> {
        let mut next = self.clone();
        let mut errors = Vec::new();
        let mut renames: Vec<(&str, &str)> = Vec::new();

        for (flag, path, value, slot) in [
            ("--listen", "listen", listen, &mut next.listen),
            ("--admin", "admin.listen", admin, &mut next.admin.listen),
        ] {
            if let Some(value) = value {
                if let Err(message) = url::parse_listen(&value) {
                    errors.push(ConfigError::new(flag, message));
                }
                *slot = value;
                renames.push((path, flag));
            }
        }
        if let Some(value) = source {
            match value.parse::<BackendUrl>() {
                Ok(url) => replace_url(&mut next.backends.source, url),
                Err(e) => errors.push(ConfigError::new("--source", e.to_string())),
            }
            renames.push(("backends.source.url", "--source"));
        }
        if let Some(value) = target {
            match value.parse::<BackendUrl>() {
                Ok(url) => match &mut next.backends.target {
                    Some(backend) => replace_url(backend, url),
                    None => next.backends.target = Some(Backend::new(url)),
                },
                Err(e) => errors.push(ConfigError::new("--target", e.to_string())),
            }
            renames.push(("backends.target.url", "--target"));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors::new(errors));
        }

        let errors = validate::validate(&mut next, &[], None);
        if errors.is_empty() {
            *self = next;
            return Ok(());
        }
        let rename = |text: &str| {
            renames
                .iter()
                .find(|(path, _)| *path == text)
                .map_or_else(|| text.to_string(), |(_, flag)| flag.to_string())
        };
        Err(ConfigErrors::new(
            errors
                .into_iter()
                .map(|e| {
                    let message = e.message.split(' ').map(rename).collect::<Vec<_>>().join(" ");
                    ConfigError::new(rename(&e.path), message)
                })
                .collect(),
        ))
    }

    /// Builds a configuration from command-line flags alone (no file):
    /// `source` is required, everything not given takes its default.
    pub fn from_overrides(
        listen: Option<String>,
        admin: Option<String>,
        source: Option<String>,
        target: Option<String>,
    ) -> Result<Config, ConfigErrors> {
        if source.is_none() {
            return Err(ConfigErrors::single("--source", "required when no configuration file is given"));
        }
        // A stand-in, always replaced by `source` (or the call fails).
        let placeholder = BackendUrl {
            tls: false,
            host: "127.0.0.1".to_string(),
            port: DEFAULT_REDIS_PORT,
            db: 0,
            username: None,
            topology: Default::default(),
            more: Vec::new(),
        };
        let mut config = Config::with_source(Backend::new(placeholder));
        config.apply_overrides(listen, admin, source, target)?;
        Ok(config)
    }
}

/// Points `backend` at `url`, forgetting a user name that came from the old
/// URL (one set explicitly in `username` stays).
fn replace_url(backend: &mut Backend, url: BackendUrl) {
    if backend.username.is_some() && backend.username == backend.url.username {
        backend.username = None;
    }
    backend.url = url;
}
