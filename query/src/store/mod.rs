//! The Parquet store: hour-partitioned tables under one root directory, written by
//! [`writer::PartitionedWriter`] and listed for queries by [`list_files`].

pub mod compact;
pub mod hour;
pub mod layout;
pub mod maintenance;
pub mod object_hours;
pub mod retention;
pub mod retired_reads;
pub mod root;
pub mod sink;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_rows;
pub mod writer;

use std::path::{Path, PathBuf};

use hawking_schemas::pipeline::Table;
use layout::{IN_PROGRESS_SUFFIX, TimeRange, parse_date_dir, parse_hour_dir};

/// Encoding choices for `flows` (measured in `tests/bench/store_encode.rs`).
pub const FLOWS_TUNING: writer::ColumnTuning = writer::ColumnTuning {
    page_statistics: &["flow_start", "flow_end", "received_at", "src_ip", "dst_ip"],
    no_statistics: &[
        "tcp_flags",
        "bytes",
        "packets",
        "sampling_rate",
        "source_kind",
        "observation_domain",
    ],
    only_listed_statistics: false,
    no_dictionary: &[
        "flow_start",
        "flow_end",
        "received_at",
        "bytes",
        "packets",
        "src_port",
    ],
};

/// Encoding choices for `flows` files written at ingest, which compaction merges and
/// re-encodes with [`FLOWS_TUNING`] once their hour is closed: statistics only on the time
/// columns (what prunes the current hour's files); the min and max of unsorted text prune
/// nothing and cost about an eighth of the encoding (`store_encode` bench).
pub const FLOWS_INGEST_TUNING: writer::ColumnTuning = writer::ColumnTuning {
    page_statistics: &["flow_start", "flow_end", "received_at"],
    only_listed_statistics: true,
    ..FLOWS_TUNING
};

/// The encoding choices of `table`'s files as compaction and rewrites write them, to be
/// read for as long as they are kept.
pub fn tuning_of(table: Table) -> &'static writer::ColumnTuning {
    static HISTORY: writer::ColumnTuning = writer::ColumnTuning {
        page_statistics: &[],
        no_statistics: &[],
        no_dictionary: &[],
        only_listed_statistics: false,
    };
    match table {
        Table::Flows => &FLOWS_TUNING,
        _ => &HISTORY,
    }
}

/// The encoding choices of `table`'s files as ingest writes them.
pub fn ingest_tuning_of(table: Table) -> &'static writer::ColumnTuning {
    match table {
        Table::Flows => &FLOWS_INGEST_TUNING,
        _ => tuning_of(table),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("rows for {table} do not have its schema: {found}")]
    SchemaMismatch { table: String, found: String },
    #[error("no column {column} to partition by")]
    NoPartitionColumn { column: String },
    #[error("partition column {column} is not a µs timestamp")]
    PartitionColumnType { column: String },
    #[error("partition column {column} has nulls")]
    PartitionColumnNulls { column: String },
    #[error("{path} was replaced by someone else meanwhile; nothing was changed")]
    ConcurrentReplace { path: String },
    #[error("{path}: not a path the system can take")]
    BadPath { path: String },
    #[error(
        "{path}: no Hawking store there (no table directories, no serve state); give the directory `hawking serve --data` writes"
    )]
    NotAStore { path: String },
    #[error("{hour}: compaction read {read} rows but wrote {written}; the hour was left as it was")]
    CompactionLostRows {
        hour: String,
        read: u64,
        written: u64,
    },
    #[error("registering store metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("stopped before the work was done; nothing was changed")]
    Stopped,
    #[error("query engine: {0}")]
    DataFusion(Box<datafusion::error::DataFusionError>),
    #[error("{location}: {why}")]
    BadLocation { location: String, why: String },
    #[error("{location}: {source}")]
    ObjectStore {
        location: String,
        source: object_store::Error,
    },
    #[error("{location}: not a replacement marker Hawking wrote: {why}")]
    BadMarker { location: String, why: String },
    #[error(
        "{location}: another process maintains this store (its lease, .maintenance-lease.json, \
         was renewed within 30 minutes); stop it, or let it compact and prune"
    )]
    Maintained { location: String },
    #[error("{what} needs a store on the local file system; {location} is on an object store")]
    NeedsLocalStore { what: String, location: String },
    #[error("zstd level {level}: {source}")]
    ZstdLevel {
        level: i32,
        source: parquet::errors::ParquetError,
    },
}

impl StoreError {
    pub fn from_datafusion(e: datafusion::error::DataFusionError) -> Self {
        StoreError::DataFusion(Box::new(e))
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Whether `root` holds a Hawking store: a table's directory or the state `hawking serve`
/// keeps. A path that holds neither is a mistake to report, not an empty store.
pub fn is_store(root: &Path) -> bool {
    Table::ALL
        .iter()
        .any(|t| layout::table_dir(root, *t).is_dir())
        || root.join("state").is_dir()
}

/// `Ok` when `root` holds a Hawking store, else the error that says so: the commands that
/// read a store (`sql`, `whois`, `replay`) refuse a wrong `--data` rather than answer from
/// nothing.
pub fn require_store(root: &Path) -> Result<(), StoreError> {
    if root.to_str().is_some_and(root::names_a_bucket) {
        // The commands that take a local store only (`store`, `replay`) get a clear answer
        // rather than "no store there".
        return Err(StoreError::NeedsLocalStore {
            what: "this command".into(),
            location: root.display().to_string(),
        });
    }
    if is_store(root) {
        Ok(())
    } else {
        Err(StoreError::NotAStore {
            path: root.display().to_string(),
        })
    }
}

/// A visible data file of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub path: PathBuf,
    pub size: u64,
    /// Start of the hour partition holding the file (µs since the epoch).
    pub partition_start_us: i64,
}

/// Lists the complete files of the table at `table_dir` whose hour partition overlaps
/// `range`, in partition then name order. Directories outside the layout are ignored.
pub fn list_files(table_dir: &Path, range: TimeRange) -> Result<Vec<DataFile>, StoreError> {
    let mut files = Vec::new();
    let days = match std::fs::read_dir(table_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(StoreError::io(table_dir, e)),
    };
    let mut day_dirs: Vec<(i64, PathBuf)> = days
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((parse_date_dir(e.file_name().to_str()?)?, e.path())))
        .filter(|(day, _)| range.overlaps(*day, day + 24 * layout::HOUR_US))
        .collect();
    day_dirs.sort();
    for (day, day_path) in day_dirs {
        let Ok(hours) = std::fs::read_dir(&day_path) else {
            continue;
        };
        let mut hour_dirs: Vec<(i64, PathBuf)> = hours
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((day + parse_hour_dir(e.file_name().to_str()?)?, e.path())))
            .filter(|(hour, _)| range.overlaps(*hour, hour + layout::HOUR_US))
            .collect();
        hour_dirs.sort();
        for (hour, hour_path) in hour_dirs {
            let Ok(entries) = std::fs::read_dir(&hour_path) else {
                continue;
            };
            let mut in_hour: Vec<DataFile> = entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".parquet")
                        && !name.starts_with('.')
                        && !name.ends_with(IN_PROGRESS_SUFFIX)
                })
                .filter_map(|e| {
                    let size = e.metadata().ok()?.len();
                    Some(DataFile {
                        path: e.path(),
                        size,
                        partition_start_us: hour,
                    })
                })
                .collect();
            in_hour.sort_by(|a, b| a.path.cmp(&b.path));
            files.extend(in_hour);
        }
    }
    Ok(files)
}
