//! [`AllowList`]: commands an operator explicitly lets through.

use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Commands the proxy would otherwise refuse (administrative or dangerous
/// ones such as `CONFIG SET`, `DEBUG`, `FLUSHALL`) that this deployment
/// allows.
///
/// Entries are normalised at load time to lowercase, with a subcommand
/// joined by `|` (Redis' own ACL notation): `"CONFIG SET"` becomes
/// `"config|set"`. An entry without a subcommand (`"config"`) allows the
/// command with every subcommand. Derefs to the normalised entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<String>);

impl AllowList {
    /// Builds a list from entries written as in the configuration file.
    pub fn new<I, S>(entries: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for entry in entries {
            let normalised = normalize(entry.as_ref())?;
            if !list.contains(&normalised) {
                list.push(normalised);
            }
        }
        Ok(AllowList(list))
    }

    /// Whether `name` is allowed. `name` is a command (`"flushall"`) or a
    /// command with its subcommand (`"config|set"` or `"CONFIG SET"`), in any
    /// case. It is allowed when the list holds exactly that, or holds the
    /// bare command (`"config"` allows `"config|set"`; `"config|set"` does not
    /// allow `"config"` or `"config|get"`).
    pub fn allows(&self, name: &str) -> bool {
        let Some((command, sub)) = split(name) else {
            return false;
        };
        self.0.iter().any(|entry| {
            let (entry_command, entry_sub) = match entry.split_once('|') {
                Some((c, s)) => (c, Some(s)),
                None => (entry.as_str(), None),
            };
            entry_command.eq_ignore_ascii_case(command)
                && match (entry_sub, sub) {
                    (None, _) => true,
                    (Some(e), Some(s)) => e.eq_ignore_ascii_case(s),
                    (Some(_), None) => false,
                }
        })
    }
}

impl Deref for AllowList {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.0
    }
}

/// Splits `"cmd"`, `"cmd|sub"` or `"cmd sub"` into its parts; `None` when
/// malformed.
fn split(name: &str) -> Option<(&str, Option<&str>)> {
    let mut parts = name.split(|c: char| c == '|' || c.is_whitespace()).filter(|p| !p.is_empty());
    let command = parts.next()?;
    let sub = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((command, sub))
}

fn valid_word(word: &str) -> bool {
    word.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Normalises one entry to `cmd` or `cmd|sub`, lowercase.
fn normalize(entry: &str) -> Result<String, String> {
    if entry.trim().is_empty() {
        return Err("empty command name".to_string());
    }
    let Some((command, sub)) = split(entry) else {
        return Err(format!(
            "invalid command \"{entry}\" (expected a command such as \"FLUSHALL\" or a command and subcommand such as \"CONFIG SET\")"
        ));
    };
    if !valid_word(command) || !sub.map_or(true, valid_word) {
        return Err(format!("invalid command name \"{entry}\""));
    }
    Ok(match sub {
        Some(sub) => format!("{}|{}", command.to_ascii_lowercase(), sub.to_ascii_lowercase()),
        None => command.to_ascii_lowercase(),
    })
}

/// One list entry, validated and normalised while deserializing so that a
/// bad entry is reported at its own index (`allow_commands[2]`).
struct Entry(String);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl Visitor<'_> for EntryVisitor {
            type Value = Entry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command name such as \"FLUSHALL\" or \"CONFIG SET\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Entry, E> {
                normalize(v).map(Entry).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EntryVisitor)
    }
}

impl<'de> Deserialize<'de> for AllowList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<Entry>::deserialize(deserializer)?;
        let mut list: Vec<String> = Vec::with_capacity(entries.len());
        for Entry(entry) in entries {
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
        Ok(AllowList(list))
    }
}
