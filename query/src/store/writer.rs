//! Writes a table's rows into hour partitions. Rows are encoded as they arrive, each
//! partition's into a Parquet file held in memory (a fraction of the rows' Arrow size, and
//! the encoding spread over the interval instead of stalling the commit); each commit
//! writes every partition's file (locally under a hidden name, synced, then renamed; on an
//! object store in one PUT), so a query never sees a partial file, and a failed write keeps
//! the encoded file, under the name it was given, for the next commit instead of losing its
//! rows (a write that did succeed though it was reported failed is then overwritten, not
//! doubled).

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
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::layout::{IN_PROGRESS_SUFFIX, hour_of, partition_dir};
use super::root::{StoreRoot, TableLocation};
use hawking_schemas::pipeline::Table;

/// How files are encoded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterOptions {
    /// Compression of files written at ingest: `zstd` (default), `lz4` or `none`.
    pub compression: Codec,
    /// zstd level. Default 1: fast.
    pub zstd_level: i32,
    /// Rows per Parquet row group. Default 1048576.
    pub row_group_rows: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Zstd,
    Lz4,
    None,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Codec::Zstd,
            zstd_level: 1,
            row_group_rows: 1 << 20,
        }
    }
}

/// A table's encoding choices by column: which carry page-level statistics (the columns
/// queries filter on, so pages can be skipped), which carry none (counters nobody filters
/// by), and which skip dictionary encoding (values that rarely repeat, where building a
/// dictionary only costs). Other columns get chunk statistics (none with
/// `only_listed_statistics`) and dictionaries.
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnTuning {
    pub page_statistics: &'static [&'static str],
    pub no_statistics: &'static [&'static str],
    pub no_dictionary: &'static [&'static str],
    /// Only the `page_statistics` columns carry statistics: for files that are merged and
    /// sorted before they are read for long, where the min and max of unsorted text prune
    /// nothing and cost two comparisons per value.
    pub only_listed_statistics: bool,
}

impl WriterOptions {
    pub fn properties(&self, tuning: &ColumnTuning) -> Result<WriterProperties, StoreError> {
        let compression = match self.compression {
            Codec::Zstd => {
                Compression::ZSTD(ZstdLevel::try_new(self.zstd_level).map_err(|source| {
                    StoreError::ZstdLevel {
                        level: self.zstd_level,
                        source,
                    }
                })?)
            }
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::None => Compression::UNCOMPRESSED,
        };
        let mut b = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_statistics_enabled(match tuning.only_listed_statistics {
                true => EnabledStatistics::None,
                false => EnabledStatistics::Chunk,
            })
            .set_created_by(format!("hawking {}", env!("CARGO_PKG_VERSION")));
        for c in tuning.page_statistics {
            b = b.set_column_statistics_enabled(ColumnPath::from(*c), EnabledStatistics::Page);
        }
        for c in tuning.no_statistics {
            b = b.set_column_statistics_enabled(ColumnPath::from(*c), EnabledStatistics::None);
        }
        for c in tuning.no_dictionary {
            b = b.set_column_dictionary_enabled(ColumnPath::from(*c), false);
        }
        Ok(b.build())
    }
}

/// Where files are written before they are moved into their hour partition.
const STAGING_DIR: &str = ".staging";

/// A file made visible by a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedFile {
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// Buffers rows per hour partition of one timestamp column and commits them as files.
pub struct PartitionedWriter {
    table: TableLocation,
    schema: SchemaRef,
    time_column: usize,
    properties: WriterProperties,
    buffered: BTreeMap<i64, Partition>,
    buffered_rows: usize,
    sequence: u64,
}

/// A complete file of one partition, waiting to be written.
struct EncodedFile {
    /// Chosen once: every attempt writes the same name.
    name: String,
    bytes: Vec<u8>,
    rows: usize,
}

/// One hour partition's rows not yet committed.
#[derive(Default)]
struct Partition {
    /// The file rows are being encoded into.
    encoding: Option<(ArrowWriter<Vec<u8>>, usize)>,
    /// Complete files whose commit failed, with their rows: written again next time.
    encoded: Vec<EncodedFile>,
}

impl Partition {
    fn rows(&self) -> usize {
        self.encoding.as_ref().map_or(0, |(_, rows)| *rows)
            + self.encoded.iter().map(|f| f.rows).sum::<usize>()
    }

    /// Bytes held in memory.
    fn memory(&self) -> usize {
        self.encoding.as_ref().map_or(0, |(w, _)| w.memory_size())
            + self.encoded.iter().map(|f| f.bytes.len()).sum::<usize>()
    }

    fn write(
        &mut self,
        batch: &RecordBatch,
        schema: &SchemaRef,
        properties: &WriterProperties,
    ) -> Result<(), StoreError> {
        let (writer, rows) = match &mut self.encoding {
            Some(open) => open,
            None => self.encoding.insert((
                ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties.clone()))?,
                0,
            )),
        };
        writer.write(batch)?;
        *rows += batch.num_rows();
        Ok(())
    }

    /// Completes the file being encoded, which joins those waiting to be written as `name`.
    fn finish(&mut self, name: impl FnOnce() -> String) -> Result<(), StoreError> {
        if let Some((writer, rows)) = self.encoding.take() {
            self.encoded.push(EncodedFile {
                name: name(),
                bytes: writer.into_inner()?,
                rows,
            });
        }
        Ok(())
    }
}

impl PartitionedWriter {
    /// A writer for `table` in the store at `root`, with the table's own encoding choices.
    pub fn for_table(
        root: impl Into<StoreRoot>,
        table: Table,
        options: &WriterOptions,
    ) -> Result<Self, StoreError> {
        PartitionedWriter::new(
            root.into().table(table),
            table.schema(),
            table.time_column(),
            options,
            super::ingest_tuning_of(table),
        )
    }

    /// A writer for the table at `table`, partitioned by the µs UTC timestamp column
    /// `time_column` of `schema`. Removes files a crashed writer left half-written (in a
    /// local directory: an object store has none).
    pub fn new(
        table: impl Into<TableLocation>,
        schema: SchemaRef,
        time_column: &str,
        options: &WriterOptions,
        tuning: &ColumnTuning,
    ) -> Result<Self, StoreError> {
        let time_column =
            schema
                .index_of(time_column)
                .map_err(|_| StoreError::NoPartitionColumn {
                    column: time_column.to_string(),
                })?;
        let table = table.into();
        if let TableLocation::Local(table_dir) = &table {
            std::fs::create_dir_all(table_dir).map_err(|e| StoreError::io(table_dir, e))?;
            remove_in_progress(table_dir)?;
        }
        Ok(PartitionedWriter {
            table,
            schema,
            time_column,
            properties: options.properties(tuning)?,
            buffered: BTreeMap::new(),
            buffered_rows: 0,
            sequence: 0,
        })
    }

    pub fn buffered_rows(&self) -> usize {
        self.buffered_rows
    }

    /// Bytes the rows not yet committed take in memory (encoded).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.values().map(Partition::memory).sum()
    }

    /// Encodes a batch into the files of its hours (split by hour of the partition column).
    /// On an encoding error the failing hour's rows are dropped, those buffered before
    /// included (`buffered_rows` tells how many are left).
    pub fn write(&mut self, batch: RecordBatch) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema().fields() != self.schema.fields() {
            return Err(StoreError::SchemaMismatch {
                table: self.table.to_string(),
                found: batch.schema().to_string(),
            });
        }
        let column = || self.schema.field(self.time_column).name().clone();
        let times = batch
            .column(self.time_column)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| StoreError::PartitionColumnType { column: column() })?;
        if times.null_count() > 0 {
            return Err(StoreError::PartitionColumnNulls { column: column() });
        }
        let values = times.values();
        let first = hour_of(values[0]);
        let parts = if values.iter().all(|t| hour_of(*t) == first) {
            vec![(first, batch)]
        } else {
            let mut by_hour: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, t) in values.iter().enumerate() {
                by_hour.entry(hour_of(*t)).or_default().push(i as u32);
            }
            by_hour
                .into_iter()
                .map(|(hour, rows)| {
                    Ok((hour, take_record_batch(&batch, &UInt32Array::from(rows))?))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        for (hour, part) in parts {
            let partition = self.buffered.entry(hour).or_default();
            if let Err(e) = partition.write(&part, &self.schema, &self.properties) {
                // The file may hold part of the batch now: its rows can no longer be told
                // apart. Encoding fails only on rows the schema check let through, so this
                // does not happen in practice; if it does, the partition's rows are lost,
                // and counted by the caller.
                let lost = self.buffered.remove(&hour).map_or(0, |p| p.rows());
                self.buffered_rows -= lost.min(self.buffered_rows);
                return Err(e);
            }
            self.buffered_rows += part.num_rows();
        }
        Ok(())
    }

    /// Writes every buffered partition as one file and makes it visible. On error, the
    /// partitions not yet committed stay buffered for the next attempt.
    pub fn commit(&mut self) -> Result<Vec<CommittedFile>, StoreError> {
        let mut committed = Vec::new();
        while let Some((&hour, _)) = self.buffered.first_key_value() {
            let mut partition = self.buffered.remove(&hour).expect("key exists");
            let result = partition.finish(|| self.next_name()).and_then(|()| {
                while let Some(encoded) = partition.encoded.first() {
                    let file = self.write_file(hour, encoded)?;
                    partition.encoded.remove(0);
                    self.buffered_rows -= file.rows;
                    committed.push(file);
                }
                Ok(())
            });
            if let Err(e) = result {
                if partition.rows() > 0 {
                    self.buffered.insert(hour, partition);
                }
                return Err(e);
            }
        }
        Ok(committed)
    }

    /// Drops the oldest buffered partitions until at most `max_rows` remain; returns how many
    /// rows were dropped. For when commits keep failing and memory must stay bounded.
    pub fn shed_to(&mut self, max_rows: usize) -> usize {
        let mut dropped = 0;
        while self.buffered_rows > max_rows {
            let Some((_, partition)) = self.buffered.pop_first() else {
                break;
            };
            let rows = partition.rows();
            self.buffered_rows -= rows;
            dropped += rows;
        }
        dropped
    }

    /// A new file's name, unique across processes and machines.
    fn next_name(&mut self) -> String {
        self.sequence += 1;
        format!(
            "part-{}-{}-{:06}-{:08x}.parquet",
            hawking_schemas::time::now_micros(),
            std::process::id(),
            self.sequence,
            writer_token()
        )
    }

    /// Writes one encoded file of the partition at `hour` and makes it visible.
    fn write_file(&self, hour: i64, file: &EncodedFile) -> Result<CommittedFile, StoreError> {
        let EncodedFile { name, bytes, rows } = file;
        let (name, rows) = (name.as_str(), *rows);
        let table_dir = match &self.table {
            TableLocation::Local(dir) => dir,
            TableLocation::Object { root, dir } => {
                return Ok(CommittedFile {
                    path: root.put_file(dir, hour, name, bytes)?,
                    rows,
                    bytes: bytes.len() as u64,
                });
            }
        };
        let dir = partition_dir(table_dir, hour);
        let final_path = dir.join(name);
        // Written outside the hour's directory, which a replacement may exchange meanwhile
        // (super::hour), and moved in under the hour's lock.
        let staging = table_dir.join(STAGING_DIR);
        std::fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
        let tmp_path = staging.join(format!(".{name}{IN_PROGRESS_SUFFIX}"));
        if let Err(e) = write_synced(&tmp_path, bytes) {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(StoreError::io(&tmp_path, e));
        }
        let moved = super::hour::lock_hour(table_dir, hour).and_then(|_lock| {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            std::fs::rename(&tmp_path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
            sync_dir(&dir);
            Ok(())
        });
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e);
        }
        Ok(CommittedFile {
            path: final_path,
            rows,
            bytes: bytes.len() as u64,
        })
    }
}

/// A Parquet file being written batch by batch: [`ParquetFile::finish`] syncs it to disk.
/// Dropped unfinished, it is left incomplete for the caller to remove (it is never under a
/// visible name while written).
pub struct ParquetFile {
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows: usize,
}

impl ParquetFile {
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, StoreError> {
        let file = File::create(path).map_err(|e| StoreError::io(path, e))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema,
            Some(properties),
        )?;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        self.writer.write(batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the file and syncs it to disk; returns its rows.
    pub fn finish(self) -> Result<usize, StoreError> {
        let file = self
            .writer
            .into_inner()?
            .into_inner()
            .map_err(|e| StoreError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(&self.path, e))?;
        Ok(self.rows)
    }
}

/// Writes batches to a new Parquet file at `path` and syncs it to disk; returns the rows.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    properties: WriterProperties,
) -> Result<usize, StoreError> {
    let mut file = ParquetFile::create(path, schema, properties)?;
    for b in batches {
        file.write(b)?;
    }
    file.finish()
}

/// Writes `bytes` to a new file at `path` and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; failure only weakens crash safety, so it is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A random number drawn once per process and put in its files' names: writers on several
/// machines (enrichers of one consumer group) may share a pid, and on an object store a
/// second file of the same name would replace the first.
pub(crate) fn writer_token() -> u32 {
    static TOKEN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        u32::from_ne_bytes(bytes)
    })
}

/// Whether the process that is writing `path` (its name carries the writer's pid:
/// `.part-<µs>-<pid>-<seq>.parquet.inprogress`) still runs: another process writing the same
/// table (a `history import` beside `hawking serve`) must not lose its file.
fn writer_alive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = name.split('-').nth(2).and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

fn remove_in_progress(table_dir: &Path) -> Result<(), StoreError> {
    fn walk(dir: &Path, depth: usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() && depth < 2 {
                walk(&path, depth + 1)?;
            } else if path.to_string_lossy().ends_with(IN_PROGRESS_SUFFIX) && !writer_alive(&path) {
                tracing::warn!(path = %path.display(), "removing a file left half-written by an earlier run");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    walk(table_dir, 0).map_err(|e| StoreError::io(table_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::{HOUR_US, TimeRange};
    use crate::store::{FLOWS_TUNING, list_files};
    use hawking_schemas::flow_schema;

    use crate::store::test_rows::{H, flows as batch};

    fn writer(dir: &Path) -> PartitionedWriter {
        PartitionedWriter::new(
            dir,
            flow_schema(),
            "flow_start",
            &WriterOptions::default(),
            &FLOWS_TUNING,
        )
        .unwrap()
    }

    #[test]
    fn rows_land_in_their_hour_and_become_visible_only_on_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = writer(tmp.path());
        w.write(batch(&[H + 1, H + HOUR_US + 5, H + 2])).unwrap();
        assert!(
            list_files(tmp.path(), TimeRange::ALL).unwrap().is_empty(),
            "nothing visible before commit"
        );
        let files = w.commit().unwrap();
        assert_eq!(files.iter().map(|f| f.rows).collect::<Vec<_>>(), vec![2, 1]);
        assert!(
            files[0]
                .path
                .to_string_lossy()
                .contains("date=2026-11-20/hour=10/")
        );
        assert!(
            files[1]
                .path
                .to_string_lossy()
                .contains("date=2026-11-20/hour=11/")
        );
        assert_eq!(w.buffered_rows(), 0);
        let eleven = TimeRange {
            start_us: Some(H + HOUR_US),
            end_us: None,
        };
        assert_eq!(
            list_files(tmp.path(), eleven).unwrap().len(),
            1,
            "the range prunes the 10:00 partition"
        );
    }

    #[test]
    fn a_failed_commit_keeps_the_rows_for_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = writer(tmp.path());
        w.write(batch(&[H, H + 1])).unwrap();
        // Make the partition directory impossible to create.
        std::fs::write(tmp.path().join("date=2026-11-20"), b"not a directory").unwrap();
        assert!(w.commit().is_err());
        assert_eq!(w.buffered_rows(), 2);
        std::fs::remove_file(tmp.path().join("date=2026-11-20")).unwrap();
        assert_eq!(w.commit().unwrap()[0].rows, 2);
    }

    #[test]
    fn rows_wait_for_the_commit_encoded_and_a_failed_commit_keeps_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = writer(tmp.path());
        let starts: Vec<i64> = (0..50_000).map(|i| H + i * 1_000).collect();
        let rows = batch(&starts);
        let arrow_size = rows.get_array_memory_size();
        w.write(rows).unwrap();
        assert!(
            w.buffered_bytes() * 2 < arrow_size,
            "held encoded: {} bytes for {arrow_size} bytes of rows",
            w.buffered_bytes()
        );
        std::fs::write(tmp.path().join("date=2026-11-20"), b"not a directory").unwrap();
        assert!(w.commit().is_err());
        // More rows for the same hour while the store is broken: a file of their own.
        w.write(batch(&[H + 7])).unwrap();
        assert_eq!(w.buffered_rows(), 50_001);
        std::fs::remove_file(tmp.path().join("date=2026-11-20")).unwrap();
        let files = w.commit().unwrap();
        assert_eq!(
            files.iter().map(|f| f.rows).collect::<Vec<_>>(),
            [50_000, 1]
        );
        assert_eq!(w.buffered_rows(), 0);
        assert_eq!(w.buffered_bytes(), 0);
        let staged = std::fs::read_dir(tmp.path().join(STAGING_DIR))
            .unwrap()
            .count();
        assert_eq!(
            staged, 0,
            "no staged file is left behind by the failed commit"
        );
        let rows: usize = files
            .iter()
            .map(|f| {
                let file = File::open(&f.path).unwrap();
                parquet::file::reader::SerializedFileReader::new(file)
                    .map(|r| {
                        use parquet::file::reader::FileReader;
                        r.metadata().file_metadata().num_rows() as usize
                    })
                    .unwrap()
            })
            .sum();
        assert_eq!(rows, 50_001, "every row is in the committed files");
    }

    #[test]
    fn half_written_files_from_a_crash_are_removed_and_never_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("date=2026-11-20/hour=10");
        std::fs::create_dir_all(&dir).unwrap();
        // Its writer (a pid beyond any pid_max) is gone.
        let stale = dir.join(".part-1-999999999-000001.parquet.inprogress");
        std::fs::write(&stale, b"PAR1 truncated").unwrap();
        // Another running process (this test's parent) is still writing this one.
        let staging = tmp.path().join(STAGING_DIR);
        std::fs::create_dir_all(&staging).unwrap();
        let live = staging.join(format!(
            ".part-1-{}-000001.parquet.inprogress",
            std::os::unix::process::parent_id()
        ));
        std::fs::write(&live, b"PAR1 being written").unwrap();
        assert!(list_files(tmp.path(), TimeRange::ALL).unwrap().is_empty());
        let _w = writer(tmp.path());
        assert!(!stale.exists());
        assert!(live.exists(), "a live writer's file is not removed");
    }

    #[test]
    fn shedding_drops_the_oldest_partitions_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = writer(tmp.path());
        w.write(batch(&[H + 2 * HOUR_US, H, H + HOUR_US])).unwrap();
        assert_eq!(w.shed_to(2), 1);
        let files = w.commit().unwrap();
        assert!(
            files[0].path.to_string_lossy().contains("hour=11"),
            "the 10:00 rows were shed"
        );
    }
}
