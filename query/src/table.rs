//! A store table as a DataFusion table: lists only the hour partitions a query's time filter
//! can touch, then scans those files with DataFusion's Parquet reader (which prunes row
//! groups and pages by statistics and pushes filters into the decoder).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue, project_schema};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use crate::store::layout::TimeRange;
use crate::store::{DataFile, list_files};

/// A table of the store, partitioned by hour of `time_column`.
#[derive(Debug)]
pub struct StoreTable {
    table_dir: PathBuf,
    schema: SchemaRef,
    time_column: String,
}

impl StoreTable {
    pub fn new(table_dir: PathBuf, schema: SchemaRef, time_column: &str) -> Self {
        StoreTable {
            table_dir,
            schema,
            time_column: time_column.to_string(),
        }
    }

    /// The files a scan with these filters reads (exposed so pruning can be shown).
    pub fn files_for(&self, filters: &[Expr]) -> DfResult<Vec<DataFile>> {
        let range = time_range_from_filters(&self.time_column, filters);
        list_files(&self.table_dir, range)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters narrow the partitions listed and are pushed into the Parquet reader, but
        // rows are still checked above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.files_for(filters)?;
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        let groups = balance(files, state.config().target_partitions().max(1));
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(TableSchema::from(self.schema.clone()));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// Spreads files over `n` groups of similar total size (largest first, into the lightest).
fn balance(mut files: Vec<DataFile>, n: usize) -> Vec<FileGroup> {
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
        (0..n.min(files.len())).map(|_| (0, Vec::new())).collect();
    for f in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += f.size;
        lightest.1.push(PartitionedFile::new(
            f.path.to_string_lossy().into_owned(),
            f.size,
        ));
    }
    groups
        .into_iter()
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

/// The range of `column` that a conjunction of filters allows (anything it cannot read is
/// treated as unbounded, so pruning is always safe).
pub fn time_range_from_filters(column: &str, filters: &[Expr]) -> TimeRange {
    let mut range = TimeRange::ALL;
    for f in filters {
        for conjunct in split_conjunction(f) {
            range = range.intersect(range_of(column, conjunct));
        }
    }
    range
}

fn is_column(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == name)
}

fn literal_us(e: &Expr, round_up: bool) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    let (value, per_us_num, per_us_den): (i64, i64, i64) = match v {
        ScalarValue::TimestampSecond(Some(v), _) => (*v, 1_000_000, 1),
        ScalarValue::TimestampMillisecond(Some(v), _) => (*v, 1000, 1),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1, 1),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1, 1000),
        _ => return None,
    };
    let scaled = value.checked_mul(per_us_num)?;
    Some(if round_up {
        scaled.div_euclid(per_us_den) + (scaled.rem_euclid(per_us_den) != 0) as i64
    } else {
        scaled.div_euclid(per_us_den)
    })
}

fn range_of(column: &str, e: &Expr) -> TimeRange {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, lit) = if is_column(left, column) {
                (*op, right.as_ref())
            } else if is_column(right, column) {
                match op.swap() {
                    Some(op) => (op, left.as_ref()),
                    None => return TimeRange::ALL,
                }
            } else {
                return TimeRange::ALL;
            };
            let lower = |us| TimeRange {
                start_us: Some(us),
                end_us: None,
            };
            let upper = |us| TimeRange {
                start_us: None,
                end_us: Some(us),
            };
            match op {
                Operator::Gt | Operator::GtEq => literal_us(lit, false).map(lower),
                Operator::Lt => literal_us(lit, true).map(|us| upper(us - 1)),
                Operator::LtEq => literal_us(lit, true).map(upper),
                Operator::Eq => {
                    literal_us(lit, false)
                        .zip(literal_us(lit, true))
                        .map(|(lo, hi)| TimeRange {
                            start_us: Some(lo),
                            end_us: Some(hi),
                        })
                }
                _ => None,
            }
            .unwrap_or(TimeRange::ALL)
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, column) => TimeRange {
            start_us: literal_us(low, false),
            end_us: literal_us(high, true),
        },
        _ => TimeRange::ALL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn ts(us: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn reads_bounds_from_comparisons_between_and_conjunctions() {
        let f = col("flow_start")
            .gt_eq(ts(100))
            .and(col("flow_start").lt(ts(200)));
        assert_eq!(
            time_range_from_filters("flow_start", &[f]),
            TimeRange {
                start_us: Some(100),
                end_us: Some(199)
            }
        );
        let f = ts(500).gt(col("flow_start"));
        assert_eq!(
            time_range_from_filters("flow_start", &[f]).end_us,
            Some(499),
            "literal on the left"
        );
        let f = col("flow_start").between(ts(10), ts(20));
        assert_eq!(
            time_range_from_filters("flow_start", &[f]),
            TimeRange {
                start_us: Some(10),
                end_us: Some(20)
            }
        );
    }

    #[test]
    fn anything_unreadable_leaves_the_range_open() {
        let f = col("flow_start")
            .gt(ts(100))
            .or(col("flow_start").lt(ts(5)));
        assert_eq!(time_range_from_filters("flow_start", &[f]), TimeRange::ALL);
        let f = col("flow_end").gt(ts(100));
        assert_eq!(time_range_from_filters("flow_start", &[f]), TimeRange::ALL);
        let f = col("flow_start").not_between(ts(10), ts(20));
        assert_eq!(time_range_from_filters("flow_start", &[f]), TimeRange::ALL);
    }

    #[test]
    fn nanosecond_bounds_round_outwards() {
        let ns = |v| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        let f = col("flow_start")
            .gt_eq(ns(1_999))
            .and(col("flow_start").lt_eq(ns(3_001)));
        assert_eq!(
            time_range_from_filters("flow_start", &[f]),
            TimeRange {
                start_us: Some(1),
                end_us: Some(4)
            }
        );
    }
}
