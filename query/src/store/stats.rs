//! What the store holds, per table and hour partition: files, rows (from the Parquet
//! footers, no data read) and bytes, and whether the hour is compacted. For operators
//! (`hawking store stats`) and for compaction's own checks.

use std::path::Path;

use hawking_schemas::pipeline::Table;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::StoreError;
use super::layout::TimeRange;
use super::root::StoreRoot;

/// One hour partition of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourStats {
    pub table: Table,
    pub hour_us: i64,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Files compaction wrote (the rest are ingest's).
    pub compacted_files: usize,
}

/// Rows (from the footer) and size of one data file.
pub fn file_rows_and_bytes(path: &Path) -> Result<(u64, u64), StoreError> {
    let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let bytes = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let reader = SerializedFileReader::new(file)?;
    let rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
    Ok((rows, bytes))
}

/// Per hour partition of `tables` overlapping `range`, in table then hour order.
pub async fn hour_stats(
    root: &StoreRoot,
    tables: &[Table],
    range: TimeRange,
) -> Result<Vec<HourStats>, StoreError> {
    let mut out: Vec<HourStats> = Vec::new();
    for &table in tables {
        let location = root.table(table);
        for file in location.list(range).await? {
            let (rows, bytes) = location.footprint(std::slice::from_ref(&file.path)).await?;
            let compacted = super::compact::is_compacted(&file.path) as usize;
            match out.last_mut() {
                Some(h) if h.table == table && h.hour_us == file.partition_start_us => {
                    h.files += 1;
                    h.rows += rows;
                    h.bytes += bytes;
                    h.compacted_files += compacted;
                }
                _ => out.push(HourStats {
                    table,
                    hour_us: file.partition_start_us,
                    files: 1,
                    rows,
                    bytes,
                    compacted_files: compacted,
                }),
            }
        }
    }
    Ok(out)
}
