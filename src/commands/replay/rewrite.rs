//! `replay --rewrite`: the stored attribution of the hours replayed is replaced by today's,
//! one hour partition at a time, each in one step (a query sees the hour's old files or its
//! new ones; a crash leaves the old ones).

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::kernels::zip::zip;
use hawking_query::store::hour::{HourReplacement, remove_retired};
use hawking_query::store::layout::table_dir;
use hawking_query::store::tuning_of;
use hawking_query::store::writer::write_parquet;
use hawking_query::{StoreError, WriterOptions};
use hawking_schemas::pipeline::Table;

use super::attribution::{Reattribution, attribution_column_names};
use super::hours::{Columns, OpenHour, Selection};

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
    let hour_files = OpenHour::open(data, hour)?;
    let mut done = HourRewritten::default();
    let mut out: Vec<RecordBatch> = Vec::new();
    hour_files.read(None, Columns::All, &mut |batch| {
        if interrupted() {
            anyhow::bail!(super::Interrupted);
        }
        done.flows += batch.num_rows() as u64;
        let mask = selection.mask(&batch)?;
        let n = mask.true_count();
        if n == 0 {
            out.push(batch);
            return Ok(());
        }
        done.selected += n as u64;
        let after = reattribution.reattribute(&batch)?;
        let (merged, changed) = merge(&batch, &after, &mask)?;
        done.changed += changed;
        out.push(merged);
        Ok(())
    })?;
    if done.changed == 0 {
        return Ok(done);
    }
    let table = table_dir(data, Table::Flows);
    let replacement = HourReplacement::begin(&table, hour, hour_files.files)?;
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
