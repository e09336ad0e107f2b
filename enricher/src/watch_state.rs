//! When each watched cluster was last known to be in sync, persisted every few seconds so
//! that after a crash the time Hawking was not watching becomes a gap (flows in it are
//! `unknown`) instead of being attributed from stale history.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum WatchStateError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryState {
    /// Cluster name → the last time (µs since the epoch) its watches were all up.
    pub synced_until: BTreeMap<String, i64>,
}

impl HistoryState {
    pub fn load(path: &Path) -> Result<HistoryState, WatchStateError> {
        let name = || path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| WatchStateError::Parse {
                path: name(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HistoryState::default()),
            Err(source) => Err(WatchStateError::Read {
                path: name(),
                source,
            }),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), WatchStateError> {
        let write = |source| WatchStateError::Write {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).expect("a map of numbers serializes");
        hawking_schemas::state_file::write_atomically(path, &json).map_err(write)
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
