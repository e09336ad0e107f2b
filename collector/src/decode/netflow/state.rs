//! Persisted template and options state, so that after a restart data records decode before
//! exporters re-send their templates (which can take minutes, or one template-refresh
//! interval). Written atomically: a crash mid-write leaves the previous file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ScopeKey;
use super::template::TemplateLayout;

pub const STATE_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateState {
    pub format: u32,
    pub scopes: Vec<ScopeState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeState {
    pub scope: ScopeKey,
    pub templates: Vec<TemplateLayout>,
    #[serde(default)]
    pub system_init_ms: Option<i64>,
    #[serde(default)]
    pub default_sampling_rate: Option<u32>,
    #[serde(default)]
    pub sampler_rates: Vec<(u64, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading template state {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template state {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("template state {path} has format {found}, this build reads {STATE_FORMAT}")]
    Format { path: String, found: u32 },
    #[error("writing template state {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl TemplateState {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Option<TemplateState>, StateError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let state: TemplateState =
            serde_json::from_slice(&text).map_err(|source| StateError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        if state.format != STATE_FORMAT {
            return Err(StateError::Format {
                path: path.display().to_string(),
                found: state.format,
            });
        }
        Ok(Some(state))
    }

    /// Writes the state to a temporary file, syncs it and renames it over `path`.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        hawking_schemas::state_file::write_atomically(path, &json).map_err(err)
    }
}
