//! Reading the stored flows replay works on, one hour partition at a time, straight from the
//! hour's Parquet files: which rows a replay selects, and those rows in `flow_start` order.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::physical_expr::PhysicalExpr;
use hawking_query::store::compact::is_compacted;
use hawking_query::store::hour::visible_files;
use hawking_query::store::layout::{HOUR_US, partition_dir, table_dir};
use hawking_schemas::pipeline::Table;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::file::statistics::Statistics;

/// Rows per batch read from the store.
pub const BATCH_ROWS: usize = 64 * 1024;

/// Which stored flows a replay re-attributes.
pub struct Selection {
    /// `flow_start` in `[from, to)`, µs.
    pub from: i64,
    pub to: i64,
    /// The `--where` predicate, compiled against the stored schema.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
}

impl Selection {
    /// The start of every hour partition the selection reaches, oldest first.
    pub fn hours(&self) -> impl Iterator<Item = i64> + use<> {
        let to = self.to;
        let first = hawking_query::store::layout::hour_of(self.from);
        (0..)
            .map(move |i| first + i * HOUR_US)
            .take_while(move |h| *h < to)
    }

    /// Which rows of `batch` are selected: in the time range and matching the predicate.
    pub fn mask(&self, batch: &RecordBatch) -> anyhow::Result<BooleanArray> {
        let starts = batch
            .column_by_name("flow_start")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .context("stored flows have no flow_start")?;
        let in_range: BooleanArray = starts
            .values()
            .iter()
            .map(|t| Some(*t >= self.from && *t < self.to))
            .collect();
        let Some(predicate) = &self.predicate else {
            return Ok(in_range);
        };
        let matched = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let matched = matched
            .as_boolean_opt()
            .context("--where is not a true/false condition")?;
        // A NULL outcome selects nothing, as in SQL's WHERE.
        Ok(in_range
            .iter()
            .zip(matched.iter())
            .map(|(a, b)| Some(a == Some(true) && b == Some(true)))
            .collect())
    }

    /// Whether a row group whose `flow_start` lies in `[min, max]` can hold a selected row.
    fn reaches(&self, min: i64, max: i64) -> bool {
        max >= self.from && min < self.to
    }
}

/// The stored files of the hour starting at `hour`.
pub fn hour_files(data: &Path, hour: i64) -> anyhow::Result<Vec<PathBuf>> {
    Ok(visible_files(&partition_dir(
        &table_dir(data, Table::Flows),
        hour,
    ))?)
}

/// One hour's files, opened together: a replacement of the hour (compaction, a rewrite)
/// after this point retires them, and open files read on whole.
pub struct OpenHour {
    pub files: Vec<PathBuf>,
    opened: Vec<File>,
}

impl OpenHour {
    /// Opens the files of the hour starting at `hour`. Should a replacement retire one
    /// between the listing and its opening, the hour is listed again.
    pub fn open(data: &Path, hour: i64) -> anyhow::Result<OpenHour> {
        const ATTEMPTS: usize = 5;
        let mut attempt = 0;
        'list: loop {
            attempt += 1;
            let files = hour_files(data, hour)?;
            let mut opened = Vec::with_capacity(files.len());
            for f in &files {
                match File::open(f) {
                    Ok(file) => opened.push(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < ATTEMPTS => {
                        continue 'list;
                    }
                    Err(e) => return Err(e).with_context(|| f.display().to_string()),
                }
            }
            return Ok(OpenHour { files, opened });
        }
    }

    /// Rows in the hour's files (from their footers).
    pub fn rows(&self) -> anyhow::Result<u64> {
        let mut rows = 0;
        for (path, file) in self.files.iter().zip(&self.opened) {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file.try_clone()?)
                .with_context(|| path.display().to_string())?;
            rows += builder.metadata().file_metadata().num_rows() as u64;
        }
        Ok(rows)
    }

    /// Whether the files, read in name order, give rows in `flow_start` order: one
    /// compaction's output (a time-sorted merge cut into consecutive files), or nothing.
    fn in_time_order(&self) -> bool {
        self.files.iter().all(|f| is_compacted(f))
            && self
                .files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|n| compaction_run(&n.to_string_lossy()).to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                <= 1
    }

    /// Reads the hour's rows as stored, file by file, in batches of about [`BATCH_ROWS`];
    /// with `within`, only the row groups its time range can reach. `columns` says whether
    /// the stored attribution is read too (a replay that replaces it need not decode it).
    pub fn read(
        &self,
        within: Option<&Selection>,
        columns: Columns,
        each: &mut dyn FnMut(RecordBatch) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let schema = columns.schema();
        for (path, file) in self.files.iter().zip(&self.opened) {
            let at = || path.display().to_string();
            for batch in reader(path, file, within, &schema)? {
                each(conform(&batch.with_context(at)?, &schema).with_context(at)?)?;
            }
        }
        Ok(())
    }

    /// The hour's selected rows in `flow_start` order, in batches of about [`BATCH_ROWS`].
    /// An hour compaction wrote is read in order as it streams; any other (flushes not yet
    /// compacted, a rewrite's output) is gathered and sorted: at most one hour's selected
    /// rows are held.
    pub fn selected(
        &self,
        selection: &Selection,
        columns: Columns,
        each: &mut dyn FnMut(RecordBatch) -> anyhow::Result<()>,
        read: &mut dyn FnMut(u64),
    ) -> anyhow::Result<()> {
        let sorted = self.in_time_order();
        let mut held: Vec<RecordBatch> = Vec::new();
        self.read(Some(selection), columns, &mut |batch| {
            read(batch.num_rows() as u64);
            let mask = selection.mask(&batch)?;
            let batch = match mask.true_count() {
                0 => return Ok(()),
                n if n == batch.num_rows() => batch,
                _ => filter_record_batch(&batch, &mask)?,
            };
            if sorted {
                each(batch)
            } else {
                held.push(batch);
                Ok(())
            }
        })?;
        if held.is_empty() {
            return Ok(());
        }
        let all = concat_batches(&held[0].schema(), &held)?;
        drop(held);
        let order = sort_to_indices(
            all.column_by_name("flow_start").context("no flow_start")?,
            None,
            None,
        )?;
        let all = take_record_batch(&all, &order)?;
        let mut offset = 0;
        while offset < all.num_rows() {
            let n = BATCH_ROWS.min(all.num_rows() - offset);
            each(all.slice(offset, n))?;
            offset += n;
        }
        Ok(())
    }
}

/// The run a compacted file's name belongs to: its name without the trailing file number
/// (`compacted-STAMP-PID-NNNN.parquet` → `compacted-STAMP-PID`).
fn compaction_run(name: &str) -> &str {
    name.trim_end_matches(".parquet")
        .rsplit_once('-')
        .map_or(name, |(run, _)| run)
}

/// Which stored columns a replay reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Columns {
    /// Every column: the stored attribution is compared or kept.
    All,
    /// All but the stored attribution, which is replaced.
    WithoutAttribution,
    /// Every column, the stored attribution read dictionary-encoded as the files hold it
    /// (its values are not copied out of the dictionary pages): it is compared, not kept.
    ToCompare,
}

impl Columns {
    /// The columns read, in the flows table's order.
    pub fn schema(self) -> SchemaRef {
        let table = Table::Flows.schema();
        match self {
            Columns::All => table,
            Columns::ToCompare => {
                let compared = super::attribution::attribution_column_names();
                let fields: Vec<Field> = table
                    .fields()
                    .iter()
                    .map(|f| match compared.iter().any(|n| n == f.name()) {
                        true => f.as_ref().clone().with_data_type(stored_dictionary()),
                        false => f.as_ref().clone(),
                    })
                    .collect();
                Arc::new(Schema::new_with_metadata(fields, table.metadata().clone()))
            }
            Columns::WithoutAttribution => {
                let replaced = super::attribution::attribution_column_names();
                let indices: Vec<usize> = (0..table.fields().len())
                    .filter(|i| !replaced.iter().any(|n| n == table.field(*i).name()))
                    .collect();
                Arc::new(
                    table
                        .project(&indices)
                        .expect("indices of the table's fields"),
                )
            }
        }
    }
}

/// How [`Columns::ToCompare`] reads the stored attribution columns.
fn stored_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// A reader of `file`'s row groups (those `within`'s time range can reach, if given) and of
/// the columns `schema` names that the file has.
fn reader(
    path: &Path,
    file: &File,
    within: Option<&Selection>,
    schema: &SchemaRef,
) -> anyhow::Result<ParquetRecordBatchReader> {
    let at = || path.display().to_string();
    let mut metadata =
        ArrowReaderMetadata::load(file, ArrowReaderOptions::new()).with_context(at)?;
    // Text columns `schema` wants dictionary-encoded are read so: the reader keeps the
    // file's dictionary pages instead of copying out every value.
    let stored = metadata.schema().clone();
    if stored.fields().iter().any(|f| wants_dictionary(schema, f)) {
        let fields: Vec<Field> = stored
            .fields()
            .iter()
            .map(|f| match wants_dictionary(schema, f) {
                true => f.as_ref().clone().with_data_type(stored_dictionary()),
                false => f.as_ref().clone(),
            })
            .collect();
        let hint = Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()));
        metadata = ArrowReaderMetadata::try_new(
            metadata.metadata().clone(),
            ArrowReaderOptions::new().with_schema(hint),
        )
        .with_context(at)?;
    }
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
        file.try_clone().with_context(at)?,
        metadata,
    )
    .with_batch_size(BATCH_ROWS);
    let wanted: Vec<usize> = builder
        .parquet_schema()
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| schema.field_with_name(c.name()).is_ok())
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::leaves(builder.parquet_schema(), wanted);
    let builder = builder.with_projection(mask);
    let metadata = builder.metadata().clone();
    let column = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "flow_start");
    let Some(selection) = within else {
        return builder.build().with_context(at);
    };
    let groups: Vec<usize> = (0..metadata.num_row_groups())
        .filter(|g| {
            let stats = column.and_then(|c| metadata.row_group(*g).column(c).statistics());
            match stats {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => selection.reaches(*min, *max),
                    _ => true,
                },
                _ => true,
            }
        })
        .collect();
    builder.with_row_groups(groups).build().with_context(at)
}

/// Whether `schema` wants the file's text column `stored` read dictionary-encoded.
fn wants_dictionary(schema: &SchemaRef, stored: &Field) -> bool {
    matches!(
        stored.data_type(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ) && schema
        .field_with_name(stored.name())
        .is_ok_and(|f| matches!(f.data_type(), DataType::Dictionary(..)))
}

/// `batch` as a batch of `schema` (the flows table's current columns, or some of them):
/// columns matched by name, a column an older file lacks read as nulls.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> anyhow::Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )?);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> anyhow::Result<ArrayRef> {
            match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
                None if f.is_nullable() => Ok(new_null_array(f.data_type(), batch.num_rows())),
                None => anyhow::bail!("stored flows have no column {}", f.name()),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_query::WriterOptions;
    use hawking_query::store::tuning_of;
    use hawking_query::store::writer::write_parquet;
    use hawking_schemas::FlowBatch;
    use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
    use hawking_schemas::ip::v4_to_u128;

    const HOUR: i64 = 1_796_083_200 * S; // 2026-12-01T00:00:00Z
    const S: i64 = 1_000_000;

    /// Flows starting at `HOUR + s` seconds for each `s`, as the store holds them.
    fn rows(starts: &[i64]) -> RecordBatch {
        let mut b = FlowBatch::default();
        let origin = FlowOrigin {
            received_at: HOUR,
            exporter: v4_to_u128(0x7f00_0001),
            observation_domain: 0,
            source_kind: SourceKind::Ipfix,
        };
        for s in starts {
            b.push(
                &origin,
                &FlowRecord {
                    flow_start: HOUR + s * S,
                    flow_end: HOUR + s * S + S,
                    src_ip: v4_to_u128(0x0a00_0001),
                    dst_ip: v4_to_u128(0x0a00_0002),
                    src_port: *s as u16,
                    protocol: 6,
                    ..Default::default()
                },
            );
        }
        b.to_record_batch_unattributed().unwrap()
    }

    fn store(files: &[(&str, &[i64])], row_group_rows: usize) -> tempfile::TempDir {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(&table_dir(data.path(), Table::Flows), HOUR);
        std::fs::create_dir_all(&dir).unwrap();
        let options = WriterOptions {
            row_group_rows,
            ..Default::default()
        };
        for (name, starts) in files {
            let properties = options.properties(tuning_of(Table::Flows)).unwrap();
            write_parquet(
                &dir.join(name),
                Table::Flows.schema(),
                &[rows(starts)],
                properties,
            )
            .unwrap();
        }
        data
    }

    fn everything() -> Selection {
        Selection {
            from: HOUR,
            to: HOUR + HOUR_US,
            predicate: None,
        }
    }

    /// The selected rows' start seconds, in the order replay hands them on, and the stored
    /// rows read to find them.
    fn replayed(data: &Path, selection: &Selection, columns: Columns) -> (Vec<i64>, u64) {
        let (mut starts, mut read) = (Vec::new(), 0);
        OpenHour::open(data, HOUR)
            .unwrap()
            .selected(
                selection,
                columns,
                &mut |batch| {
                    assert_eq!(batch.schema(), columns.schema());
                    let c = batch.column_by_name("flow_start").unwrap();
                    let c = c.as_primitive::<TimestampMicrosecondType>();
                    starts.extend(c.values().iter().map(|t| (t - HOUR) / S));
                    Ok(())
                },
                &mut |n| read += n,
            )
            .unwrap();
        (starts, read)
    }

    #[test]
    fn an_hour_of_ingest_files_is_replayed_in_time_order() {
        let data = store(
            &[
                ("part-1.parquet", &[30, 10, 50]),
                ("part-2.parquet", &[20, 40, 5]),
            ],
            1 << 20,
        );
        let (starts, read) = replayed(data.path(), &everything(), Columns::All);
        assert_eq!(starts, [5, 10, 20, 30, 40, 50]);
        assert_eq!(read, 6);
    }

    #[test]
    fn only_the_time_range_and_the_condition_are_selected() {
        let data = store(&[("part-1.parquet", &[30, 10, 50, 20, 40])], 1 << 20);
        let schema =
            datafusion::common::DFSchema::try_from(hawking_schemas::flow_schema().as_ref().clone())
                .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let expr = ctx.parse_sql_expr("src_port <> 40", &schema).unwrap();
        let selection = Selection {
            from: HOUR + 20 * S,
            to: HOUR + 50 * S,
            predicate: Some(ctx.create_physical_expr(expr, &schema).unwrap()),
        };
        let (starts, _) = replayed(data.path(), &selection, Columns::All);
        assert_eq!(starts, [20, 30], "50 is past --to, 40 fails --where");
    }

    #[test]
    fn row_groups_outside_the_time_range_are_not_read() {
        let starts: Vec<i64> = (0..100).collect();
        let data = store(&[("compacted-1-2-0000.parquet", &starts)], 10);
        let selection = Selection {
            from: HOUR + 25 * S,
            to: HOUR + 35 * S,
            ..everything()
        };
        let (got, read) = replayed(data.path(), &selection, Columns::WithoutAttribution);
        assert_eq!(got, (25..35).collect::<Vec<_>>());
        assert_eq!(read, 20, "the row groups of 20..30 and 30..40 only");
    }

    #[test]
    fn without_attribution_the_stored_answer_is_not_read() {
        let data = store(&[("part-1.parquet", &[1])], 1 << 20);
        let schema = Columns::WithoutAttribution.schema();
        assert!(schema.field_with_name("src_pod").is_err());
        assert!(schema.field_with_name("dst_attribution").is_err());
        assert!(schema.field_with_name("src_ip").is_ok());
        let (got, _) = replayed(data.path(), &everything(), Columns::WithoutAttribution);
        assert_eq!(got, [1]);
    }
}
