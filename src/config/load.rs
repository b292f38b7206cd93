//! The structural pass: YAML text to [`Config`], reporting every unknown
//! field, wrong type, bad value and missing field rather than the first.
//!
//! serde stops at the first error. So the text is parsed once into a
//! [`Value`] tree and deserialized repeatedly: each failure is recorded with
//! its path, the offending node is cut out of the tree (an unknown key is
//! removed; a bad value is removed so its default applies; a missing
//! required field gets a placeholder, or failing that its struct is removed
//! as a whole) and the next round finds the next problem. Checks of meaning
//! then skip whatever was cut out or stood in for. Paths are reported in the coordinates of the original file even
//! after sequence elements have been removed.

use std::collections::HashMap;

use serde_yaml_ng::Value;

use crate::config::error::ConfigError;
use crate::config::types::Config;

/// Most rounds before giving up (each round reports one problem).
const MAX_ROUNDS: usize = 64;

/// One step of a path into the YAML tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders `a.b[2].c`; the empty path renders as "".
pub(crate) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Parses a path rendered by [`render`] (keys hold no `.` or `[`).
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            segs.push(Seg::Key(key.to_string()));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => segs.push(Seg::Index(i)),
                Err(_) => segs.push(Seg::Key(format!("[{index}"))),
            }
        }
    }
    segs
}

/// Result of the structural pass.
pub(crate) struct Structural {
    /// The configuration with bad parts replaced by defaults; `None` when the
    /// document could not be made into one at all.
    pub config: Option<Config>,
    /// Problems found, in the order found.
    pub errors: Vec<ConfigError>,
    /// Rendered paths (original coordinates) of nodes that were cut out:
    /// their values are defaults, not the user's, so later checks on them are
    /// skipped.
    pub removed: Vec<String>,
    /// Maps paths in the assembled configuration (where removed list
    /// elements are gone) back to the file's.
    pub removals: Removals,
}

/// Tracks sequence elements removed so far, to map current indices back to
/// the file's.
#[derive(Default)]
pub(crate) struct Removals {
    /// Original path of a sequence -> original indices removed from it.
    by_seq: HashMap<Vec<Seg>, Vec<usize>>,
}

impl Removals {
    fn original(&self, current: &[Seg]) -> Vec<Seg> {
        let mut out = Vec::with_capacity(current.len());
        for seg in current {
            match seg {
                Seg::Key(_) => out.push(seg.clone()),
                Seg::Index(i) => {
                    let mut original = *i;
                    if let Some(removed) = self.by_seq.get(&out) {
                        // `removed` is sorted: skip over every gap at or
                        // before the candidate.
                        for r in removed {
                            if *r <= original {
                                original += 1;
                            }
                        }
                    }
                    out.push(Seg::Index(original));
                }
            }
        }
        out
    }

    /// Translates a rendered path in the assembled configuration into the
    /// file's coordinates.
    pub(crate) fn original_path(&self, path: &str) -> String {
        if self.by_seq.is_empty() {
            return path.to_string();
        }
        render(&self.original(&parse_path(path)))
    }

    fn record(&mut self, original: &[Seg]) {
        if let Some((Seg::Index(i), parent)) = original.split_last() {
            let list = self.by_seq.entry(parent.to_vec()).or_default();
            let at = list.partition_point(|r| r < i);
            list.insert(at, *i);
        }
    }
}

/// Parses and deserializes `text`, collecting every structural problem.
pub(crate) fn deserialize_all(text: &str) -> Structural {
    let mut out = Structural { config: None, errors: Vec::new(), removed: Vec::new(), removals: Removals::default() };
    let mut root: Value = match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            out.errors.push(ConfigError::new("", format!("invalid YAML: {e}")));
            return out;
        }
    };
    if root.is_null() {
        // An empty file is an empty mapping: report what is missing.
        root = Value::Mapping(Default::default());
    }
    if let Err(e) = root.apply_merge() {
        out.errors.push(ConfigError::new("", format!("invalid YAML merge (<<): {e}")));
        return out;
    }

    let mut placeheld: Vec<String> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let error = match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
            Ok(config) => {
                out.config = Some(config);
                return out;
            }
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let mut current = Vec::new();
        let mut unknown_segment = false;
        for seg in error.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => current.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                    current.push(Seg::Key(key.clone()))
                }
                serde_path_to_error::Segment::Unknown => {
                    unknown_segment = true;
                    break;
                }
            }
        }
        let original = out.removals.original(&current);

        if unknown_segment {
            // A mapping key that is not a string (e.g. `1: x`): report at the
            // mapping and drop such keys.
            let keys = remove_non_string_keys(&mut root, &current);
            if keys.is_empty() {
                out.errors.push(ConfigError::new(render(&original), humanize(&message)));
                return out;
            }
            for key in keys {
                out.errors
                    .push(ConfigError::new(render(&original), format!("invalid key {key}: keys must be field names")));
            }
            continue;
        }

        if let Some(field) = quoted_after(&message, "missing field `") {
            let mut full = original.clone();
            full.push(Seg::Key(field.to_string()));
            let full = render(&full);
            // A missing field that was present but removed as invalid has
            // already been reported (at itself or below).
            if !out.errors.iter().any(|e| covers(&full, &e.path)) {
                out.errors.push(ConfigError::new(full.clone(), "missing required field"));
            }
            // Stand in a placeholder so the rest (including the meaning
            // checks) can still be examined; its path counts as removed, so
            // nothing is reported about the placeholder itself.
            let value = if placeheld.contains(&full) { None } else { placeholder(field) };
            if let Some(value) = value {
                if insert_at(&mut root, &current, field, value) {
                    out.removed.push(full.clone());
                    placeheld.push(full);
                    continue;
                }
            }
        } else {
            let path = render(&original);
            if !out.errors.iter().any(|e| e.path == path) {
                out.errors.push(ConfigError::new(path, humanize(&message)));
            }
        }
        // Cut out the failing node: an unknown key, a bad value, or the
        // struct lacking a required field. When the path does not exist as
        // such in the tree (e.g. it names an enum variant given by a YAML
        // tag), cut out the nearest enclosing node. The root cannot be cut.
        let mut depth = current.len();
        while depth > 0 && !remove_at(&mut root, &current[..depth]) {
            depth -= 1;
        }
        if depth == 0 {
            return out;
        }
        out.removals.record(&original[..depth]);
        out.removed.push(render(&original[..depth]));
    }
    out.errors.push(ConfigError::new("", format!("too many problems; stopped after {MAX_ROUNDS}")));
    out
}

/// Whether `reported` is `path` itself or lies below it.
pub(crate) fn covers(path: &str, reported: &str) -> bool {
    reported == path
        || (path.is_empty() && !reported.is_empty())
        || reported.strip_prefix(path).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The node at `path`, looking through YAML tags.
fn node_mut<'a>(mut node: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    for seg in path {
        while let Value::Tagged(tagged) = node {
            node = &mut tagged.value;
        }
        node = match (seg, node) {
            (Seg::Key(key), Value::Mapping(map)) => map.get_mut(key.as_str())?,
            (Seg::Index(i), Value::Sequence(seq)) => seq.get_mut(*i)?,
            _ => return None,
        };
    }
    while let Value::Tagged(tagged) = node {
        node = &mut tagged.value;
    }
    Some(node)
}

/// A stand-in for a missing required field, so that its parent (and the
/// rest of the file) can still be checked.
fn placeholder(field: &str) -> Option<Value> {
    let url = || {
        let mut backend = serde_yaml_ng::Mapping::new();
        backend.insert("url".into(), PLACEHOLDER_URL.into());
        Value::Mapping(backend)
    };
    match field {
        "url" => Some(PLACEHOLDER_URL.into()),
        "name" => Some(Value::String(String::new())),
        "source" => Some(url()),
        "backends" => {
            let mut backends = serde_yaml_ng::Mapping::new();
            backends.insert("source".into(), url());
            Some(Value::Mapping(backends))
        }
        _ => None,
    }
}

/// Placeholder backend URL (`.invalid` is reserved and never resolves).
const PLACEHOLDER_URL: &str = "redis://placeholder.invalid:6379";

/// Inserts `key: value` into the mapping at `path`; false when there is no
/// mapping there.
fn insert_at(root: &mut Value, path: &[Seg], key: &str, value: Value) -> bool {
    match node_mut(root, path) {
        Some(Value::Mapping(map)) => {
            map.insert(key.into(), value);
            true
        }
        _ => false,
    }
}

/// Removes the node at `path` (non-empty); false when there is none.
fn remove_at(root: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, node_mut(root, parent)) {
        (Seg::Key(key), Some(Value::Mapping(map))) => map.shift_remove(key.as_str()).is_some(),
        (Seg::Index(i), Some(Value::Sequence(seq))) if *i < seq.len() => {
            seq.remove(*i);
            true
        }
        _ => false,
    }
}

/// Removes every non-string key of the mapping at `path`, returning them
/// for display.
fn remove_non_string_keys(root: &mut Value, path: &[Seg]) -> Vec<String> {
    let mut removed = Vec::new();
    if let Some(Value::Mapping(map)) = node_mut(root, path) {
        map.retain(|key, _| {
            if key.is_string() {
                return true;
            }
            removed.push(match key {
                Value::Null => "null".to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => "(a collection)".to_string(),
            });
            false
        });
    }
    removed
}

/// The text between `prefix` and the next backtick, when `message` starts
/// with `prefix`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.find('`').map(|end| &rest[..end])
}

/// All backtick-quoted words in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Rewrites serde's messages for people: quotes instead of backticks, the
/// accepted names as a list, and a suggestion for a near miss.
fn humanize(message: &str) -> String {
    for (prefix, noun) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        if let Some(name) = quoted_after(message, prefix) {
            let rest = &message[prefix.len() + name.len() + 1..];
            let expected = backticked(rest);
            let mut out = format!("unknown {noun} \"{name}\"");
            if expected.is_empty() {
                if noun == "field" {
                    out.push_str(" (no fields are accepted here)");
                }
            } else {
                out.push_str(", expected one of: ");
                out.push_str(&expected.join(", "));
                if let Some(best) = closest(name, &expected) {
                    out.push_str(&format!(" (did you mean \"{best}\"?)"));
                }
            }
            return out;
        }
    }
    let message = message
        .replace("expected u32", "expected a whole number from 0 to 4294967295")
        .replace("expected u64", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("unit value", "nothing (null)");
    let message = match message.find("expected struct ") {
        Some(at) => format!("{}expected a mapping of fields", &message[..at]),
        None => message,
    };
    message.replace('`', "\"")
}

/// The candidate within edit distance 2 of `name` (closest first), if any.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
