//! `replay --rewrite`: the stored attribution of the hours replayed is replaced by today's,
//! one hour partition at a time, each in one step (a query sees the hour's old files or its
//! new ones; a crash leaves the old ones).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::TimestampMicrosecondType;
use datafusion::physical_expr::PhysicalExpr;
use hawking_query::store::hour::{HourReplacement, remove_retired, visible_files};
use hawking_query::store::layout::{partition_dir, table_dir};
use hawking_query::store::tuning_of;
use hawking_query::store::writer::write_parquet;
use hawking_query::{StoreError, WriterOptions};
use hawking_schemas::pipeline::Table;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::attribution::{Reattribution, attribution_column_names};

/// Which stored flows a rewrite re-attributes.
pub struct Selection {
    /// `flow_start` in `[from, to)`, µs.
    pub from: i64,
    pub to: i64,
    /// The `--where` predicate, compiled against the stored schema.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
}

/// What rewriting one hour did.
#[derive(Clone, Copy, Debug, Default)]
pub struct HourRewritten {
    /// Flows in the hour, and those selected (re-attributed).
    pub flows: u64,
    pub selected: u64,
    /// Selected flows whose attribution changed.
    pub changed: u64,
    /// Whether the hour's files were replaced (nothing changed: left as they were).
    pub replaced: bool,
}

/// The stored files of the hour starting at `hour`.
pub fn hour_files(data: &Path, hour: i64) -> anyhow::Result<Vec<PathBuf>> {
    Ok(visible_files(&partition_dir(
        &table_dir(data, Table::Flows),
        hour,
    ))?)
}

/// Re-attributes the selected flows of one hour and replaces its files when any changed.
/// `interrupted` is polled between batches: an interrupted hour keeps its old files. When
/// another replacement (serve's background compaction) changed the hour first, the hour is
/// read again and rewritten from its new files.
pub fn rewrite_hour(
    data: &Path,
    hour: i64,
    selection: &Selection,
    reattribution: &Reattribution,
    interrupted: &dyn Fn() -> bool,
) -> anyhow::Result<HourRewritten> {
    const ATTEMPTS: usize = 5;
    for attempt in 1.. {
        match rewrite_hour_once(data, hour, selection, reattribution, interrupted) {
            Err(e)
                if attempt < ATTEMPTS
                    && matches!(
                        e.downcast_ref::<StoreError>(),
                        Some(StoreError::ConcurrentReplace { .. })
                    ) => {}
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

fn rewrite_hour_once(
    data: &Path,
    hour: i64,
    selection: &Selection,
    reattribution: &Reattribution,
    interrupted: &dyn Fn() -> bool,
) -> anyhow::Result<HourRewritten> {
    let files = hour_files(data, hour)?;
    let mut done = HourRewritten::default();
    let mut out: Vec<RecordBatch> = Vec::new();
    for file in &files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).with_context(|| file.display().to_string())?,
        )?
        .with_batch_size(64 * 1024)
        .build()?;
        for batch in reader {
            if interrupted() {
                anyhow::bail!(super::Interrupted);
            }
            let batch = batch.with_context(|| file.display().to_string())?;
            done.flows += batch.num_rows() as u64;
            let mask = selected(&batch, selection)?;
            let n = mask.true_count();
            if n == 0 {
                out.push(batch);
                continue;
            }
            done.selected += n as u64;
            let after = reattribution.reattribute(&batch)?;
            let (merged, changed) = merge(&batch, &after, &mask)?;
            done.changed += changed;
            out.push(merged);
        }
    }
    if done.changed == 0 {
        return Ok(done);
    }
    let table = table_dir(data, Table::Flows);
    let replacement = HourReplacement::begin(&table, hour, files)?;
    let name = format!(
        "part-{}-{}-replay.parquet",
        hawking_schemas::time::now_micros(),
        std::process::id()
    );
    let properties = WriterOptions::default().properties(tuning_of(Table::Flows))?;
    write_parquet(
        &replacement.dir().join(name),
        Table::Flows.schema(),
        &out,
        properties,
    )?;
    if interrupted() {
        anyhow::bail!(super::Interrupted);
    }
    replacement.commit()?;
    done.replaced = true;
    // Old sets past their keep time, from earlier rewrites or compactions.
    let _ = remove_retired(&table);
    Ok(done)
}

/// Which rows of `batch` are selected: in the time range and matching the predicate.
fn selected(batch: &RecordBatch, selection: &Selection) -> anyhow::Result<BooleanArray> {
    let starts = batch
        .column_by_name("flow_start")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .context("stored flows have no flow_start")?;
    let in_range: BooleanArray = starts
        .values()
        .iter()
        .map(|t| Some(*t >= selection.from && *t < selection.to))
        .collect();
    let Some(predicate) = &selection.predicate else {
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

/// `before` with the attribution of the `mask`ed rows taken from `after`; and how many of
/// those rows changed.
fn merge(
    before: &RecordBatch,
    after: &RecordBatch,
    mask: &BooleanArray,
) -> anyhow::Result<(RecordBatch, u64)> {
    let mut columns: Vec<ArrayRef> = before.columns().to_vec();
    let mut changed = vec![false; before.num_rows()];
    for name in attribution_column_names() {
        let i = before.schema().index_of(&name)?;
        let (old, new) = (before.column(i), after.column(i));
        let (o, n) = (old.as_string::<i32>(), new.as_string::<i32>());
        for (row, flag) in changed.iter_mut().enumerate() {
            if mask.value(row) && (o.is_null(row) != n.is_null(row) || o.value(row) != n.value(row))
            {
                *flag = true;
            }
        }
        columns[i] = zip(mask, new, old)?;
    }
    let changed = changed.iter().filter(|c| **c).count() as u64;
    Ok((RecordBatch::try_new(before.schema(), columns)?, changed))
}
