//! When each watched cluster was last known to be in sync, persisted every few seconds so
//! that after a crash the time Hawking was not watching becomes a gap (flows in it are
//! `unknown`) instead of being attributed from stale history.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryState {
    /// Cluster name → the last time (µs since the epoch) its watches were all up.
    pub synced_until: BTreeMap<String, i64>,
}

impl HistoryState {
    pub fn load(path: &Path) -> anyhow::Result<HistoryState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HistoryState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/history.json");
        assert_eq!(HistoryState::load(&path).unwrap(), HistoryState::default());
        let mut s = HistoryState::default();
        s.synced_until.insert("prod".into(), 42);
        s.save(&path).unwrap();
        assert_eq!(HistoryState::load(&path).unwrap(), s);
        std::fs::write(&path, b"{broken").unwrap();
        assert!(HistoryState::load(&path).is_err());
    }
}
