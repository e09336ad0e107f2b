//! The history as stored, read back: the address intervals and gaps, and the NAT
//! translations still worth holding in memory, for the enrichment stage to start from (and
//! for replay to re-attribute with).

use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

use crate::session::{QueryError, QueryOptions, open_session};
use crate::store::root::StoreRoot;

/// The history views folded to one row per interval and one per gap.
pub struct StoredHistory {
    pub intervals: Vec<RecordBatch>,
    pub gaps: Vec<RecordBatch>,
}

/// The persisted NAT translations to reload: the open ones and those that closed less than
/// `keep` before the latest one began or ended (the NAT index's own clock, so a store of past
/// events loads as it was kept); and the highest translation ID ever stored, so new ones
/// never reuse one.
pub struct StoredTranslations {
    pub rows: Vec<RecordBatch>,
    pub max_id: i64,
}

/// Reads `ip_history` and `history_gaps` from the store at `root`: the history proper
/// (watched and imported), not what exporters' flows reported beside it.
pub async fn load_history(root: impl Into<StoreRoot>) -> Result<StoredHistory, QueryError> {
    let ctx = open_session(root, &QueryOptions::default()).await?;
    Ok(StoredHistory {
        intervals: ctx
            .sql("SELECT * FROM ip_history WHERE source IN ('watch', 'import')")
            .await?
            .collect()
            .await?,
        gaps: ctx
            .sql("SELECT * FROM history_gaps")
            .await?
            .collect()
            .await?,
    })
}

/// Reads the translations worth reloading from the store at `root`.
pub async fn load_translations(
    root: impl Into<StoreRoot>,
    keep: Duration,
) -> Result<StoredTranslations, QueryError> {
    let ctx = open_session(root, &QueryOptions::default()).await?;
    let sql = format!(
        "SELECT * FROM nat_history WHERE valid_to IS NULL \
         OR valid_to >= (SELECT greatest(max(valid_from), max(valid_to)) FROM nat_history) \
                        - INTERVAL '{} microseconds'",
        keep.as_micros()
    );
    let rows = ctx.sql(&sql).await?.collect().await?;
    let max = ctx
        .sql("SELECT coalesce(max(translation_id), 0) AS id FROM nat_history_log")
        .await?
        .collect()
        .await?;
    let max_id = max
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<Int64Type>()
                .map(|c| c.value(0))
        })
        .unwrap_or(0);
    Ok(StoredTranslations { rows, max_id })
}
