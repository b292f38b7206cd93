//! The state file: changes made through the admin API, and the file's values at the time,
//! so a restart keeps an API change unless the file changed that field since.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::route::MirrorMode;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// Values set through the API (None: the file's value is in force).
    pub cutover: Option<f64>,
    pub mirror: Option<String>,
    pub compare: Option<f64>,
    /// The file's values when the API values were set.
    pub file_cutover: Option<f64>,
    pub file_mirror: Option<String>,
    pub file_compare: Option<f64>,
}

/// `proxy.yaml` → `proxy.yaml.state.json`, beside it.
pub fn path_for(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_owned();
    name.push(".state.json");
    PathBuf::from(name)
}

pub fn load(path: &Path) -> Persisted {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, path = %path.display(), "ignoring unreadable state file");
            Persisted::default()
        }),
        Err(_) => Persisted::default(),
    }
}

/// Writes atomically (temp file + rename), so a crash never leaves half a file.
pub fn save(path: &Path, p: &Persisted) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

fn mode_of(name: &str) -> Option<MirrorMode> {
    match name {
        "off" => Some(MirrorMode::Off),
        "async" => Some(MirrorMode::Async),
        "sync" => Some(MirrorMode::Sync),
        _ => None,
    }
}

impl Persisted {
    /// Notes the file's current values (done whenever API values are saved or the file is
    /// applied).
    pub fn record_file(&mut self, c: &Config) {
        self.file_cutover = Some(c.cutover.percent);
        self.file_mirror = Some(super::mode_name(super::mirror_mode(c.mirror.mode)).to_string());
        self.file_compare = Some(c.compare.percent);
    }

    /// The values in force at startup: an API value holds while the file still has the
    /// value it had when the API change was made. Returns a description of what was
    /// restored from the API, if anything.
    pub fn effective(&self, c: &Config) -> (f64, MirrorMode, f64, Option<String>) {
        let file_mode = super::mirror_mode(c.mirror.mode);
        if c.backends.target.is_none() {
            // One backend: no split, nothing to mirror to.
            return (0.0, MirrorMode::Off, c.compare.percent, None);
        }
        let mut restored = Vec::new();
        let percent = match self.cutover {
            Some(p) if self.file_cutover == Some(c.cutover.percent) => {
                restored.push(format!("cutover {p}"));
                p
            }
            _ => c.cutover.percent,
        };
        let mode = match self.mirror.as_deref().and_then(mode_of) {
            Some(m) if self.file_mirror.as_deref() == Some(super::mode_name(file_mode)) => {
                restored.push(format!("mirror {}", super::mode_name(m)));
                m
            }
            _ => file_mode,
        };
        let compare = match self.compare {
            Some(p) if self.file_compare == Some(c.compare.percent) => {
                restored.push(format!("compare {p}"));
                p
            }
            _ => c.compare.percent,
        };
        (percent, mode, compare, (!restored.is_empty()).then(|| restored.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: f64) -> Config {
        Config::from_yaml_str(&format!(
            "backends:\n  source:\n    url: redis://127.0.0.1:1\n  target:\n    url: redis://127.0.0.1:2\ncutover:\n  percent: {percent}\n"
        ))
        .unwrap()
    }

    #[test]
    fn api_value_holds_until_the_file_changes_that_field() {
        let mut p = Persisted::default();
        p.record_file(&config(0.0));
        p.cutover = Some(50.0);
        assert_eq!(p.effective(&config(0.0)).0, 50.0, "file unchanged: the API change holds");
        assert_eq!(p.effective(&config(10.0)).0, 10.0, "file changed the field since: the file wins");
        assert!(p.effective(&config(0.0)).3.unwrap().contains("cutover 50"));
    }

    #[test]
    fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("proxy.yaml"));
        let mut p = Persisted::default();
        p.record_file(&config(5.0));
        p.mirror = Some("sync".into());
        save(&path, &p).unwrap();
        assert_eq!(load(&path), p);
    }
}
