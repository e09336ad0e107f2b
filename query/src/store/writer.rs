//! Writes a table's rows into hour partitions. Rows are buffered per partition and each
//! commit turns every buffered partition into one complete Parquet file (written under a
//! hidden name, synced, then renamed), so a query never sees a partial file, and a failed
//! write leaves the rows buffered for the next commit instead of losing them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::layout::{IN_PROGRESS_SUFFIX, hour_of, partition_dir};

/// How files are encoded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterOptions {
    /// zstd level for files written at ingest. Default 1: fast; compaction rewrites closed
    /// hours at a higher level.
    pub zstd_level: i32,
    /// Rows per Parquet row group. Default 1048576.
    pub row_group_rows: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            zstd_level: 1,
            row_group_rows: 1 << 20,
        }
    }
}

impl WriterOptions {
    pub fn properties(&self) -> Result<WriterProperties, StoreError> {
        let level =
            ZstdLevel::try_new(self.zstd_level).map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("hawking {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// A file made visible by a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedFile {
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// Buffers rows per hour partition of one timestamp column and commits them as files.
pub struct PartitionedWriter {
    table_dir: PathBuf,
    schema: SchemaRef,
    time_column: usize,
    properties: WriterProperties,
    buffered: BTreeMap<i64, Vec<RecordBatch>>,
    buffered_rows: usize,
    sequence: u64,
}

impl PartitionedWriter {
    /// A writer for the table at `table_dir`, partitioned by the µs UTC timestamp column
    /// `time_column` of `schema`. Removes files a crashed writer left half-written.
    pub fn new(
        table_dir: &Path,
        schema: SchemaRef,
        time_column: &str,
        options: &WriterOptions,
    ) -> Result<Self, StoreError> {
        let time_column = schema
            .index_of(time_column)
            .map_err(|_| StoreError::Config(format!("no column {time_column} to partition by")))?;
        std::fs::create_dir_all(table_dir).map_err(|e| StoreError::io(table_dir, e))?;
        remove_in_progress(table_dir)?;
        Ok(PartitionedWriter {
            table_dir: table_dir.to_path_buf(),
            schema,
            time_column,
            properties: options.properties()?,
            buffered: BTreeMap::new(),
            buffered_rows: 0,
            sequence: 0,
        })
    }

    pub fn buffered_rows(&self) -> usize {
        self.buffered_rows
    }

    /// Buffers a batch, split by hour of the partition column.
    pub fn write(&mut self, batch: RecordBatch) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema().fields() != self.schema.fields() {
            return Err(StoreError::Schema(format!(
                "batch schema does not match the table: {:?}",
                batch.schema()
            )));
        }
        let times = batch
            .column(self.time_column)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| StoreError::Schema("partition column is not a µs timestamp".into()))?;
        if times.null_count() > 0 {
            return Err(StoreError::Schema("partition column has nulls".into()));
        }
        let values = times.values();
        let first = hour_of(values[0]);
        self.buffered_rows += batch.num_rows();
        if values.iter().all(|t| hour_of(*t) == first) {
            self.buffered.entry(first).or_default().push(batch);
            return Ok(());
        }
        let mut by_hour: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, t) in values.iter().enumerate() {
            by_hour.entry(hour_of(*t)).or_default().push(i as u32);
        }
        for (hour, rows) in by_hour {
            let part = take_record_batch(&batch, &UInt32Array::from(rows))?;
            self.buffered.entry(hour).or_default().push(part);
        }
        Ok(())
    }

    /// Writes every buffered partition as one file and makes it visible. On error, the
    /// partitions not yet committed stay buffered for the next attempt.
    pub fn commit(&mut self) -> Result<Vec<CommittedFile>, StoreError> {
        let mut committed = Vec::new();
        while let Some((&hour, _)) = self.buffered.first_key_value() {
            let batches = self.buffered.remove(&hour).expect("key exists");
            match self.write_file(hour, &batches) {
                Ok(file) => {
                    self.buffered_rows -= file.rows;
                    committed.push(file);
                }
                Err(e) => {
                    self.buffered.insert(hour, batches);
                    return Err(e);
                }
            }
        }
        Ok(committed)
    }

    /// Drops the oldest buffered partitions until at most `max_rows` remain; returns how many
    /// rows were dropped. For when commits keep failing and memory must stay bounded.
    pub fn shed_to(&mut self, max_rows: usize) -> usize {
        let mut dropped = 0;
        while self.buffered_rows > max_rows {
            let Some((_, batches)) = self.buffered.pop_first() else {
                break;
            };
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            self.buffered_rows -= rows;
            dropped += rows;
        }
        dropped
    }

    fn write_file(
        &mut self,
        hour: i64,
        batches: &[RecordBatch],
    ) -> Result<CommittedFile, StoreError> {
        let dir = partition_dir(&self.table_dir, hour);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        self.sequence += 1;
        let name = format!(
            "part-{}-{}-{:06}.parquet",
            unix_micros(),
            std::process::id(),
            self.sequence
        );
        let final_path = dir.join(&name);
        let tmp_path = dir.join(format!(".{name}{IN_PROGRESS_SUFFIX}"));
        let result = write_parquet(
            &tmp_path,
            self.schema.clone(),
            batches,
            self.properties.clone(),
        );
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        std::fs::rename(&tmp_path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        sync_dir(&dir);
        let bytes = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
        Ok(CommittedFile {
            path: final_path,
            rows,
            bytes,
        })
    }
}

/// Writes batches to a new Parquet file at `path` and syncs it to disk; returns the rows.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    properties: WriterProperties,
) -> Result<usize, StoreError> {
    let file = File::create(path).map_err(|e| StoreError::io(path, e))?;
    let mut writer = ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        schema,
        Some(properties),
    )?;
    let mut rows = 0;
    for b in batches {
        writer.write(b)?;
        rows += b.num_rows();
    }
    let file = writer
        .into_inner()?
        .into_inner()
        .map_err(|e| StoreError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| StoreError::io(path, e))?;
    Ok(rows)
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; failure only weakens crash safety, so it is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_in_progress(table_dir: &Path) -> Result<(), StoreError> {
    fn walk(dir: &Path, depth: usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() && depth < 2 {
                walk(&path, depth + 1)?;
            } else if path.to_string_lossy().ends_with(IN_PROGRESS_SUFFIX) {
                tracing::warn!(path = %path.display(), "removing a file left half-written by an earlier run");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    walk(table_dir, 0).map_err(|e| StoreError::io(table_dir, e))
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
