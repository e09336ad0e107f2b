//! Who held an address at a time, from the store: [`lookup`] finds the stored rows a
//! question needs and lets the enricher decide ([`hawking_enricher::whois`]); the SQL table
//! function `whois(ip, at [, cluster [, port, protocol]])` returns that answer as one row, so
//! SQL users and Grafana panels can ask it beside their flow queries:
//!
//! ```sql
//! SELECT * FROM whois('10.4.3.7', TIMESTAMP '2026-11-17 03:14:00');
//! SELECT pod, workload FROM whois('10.4.1.20', '2026-11-20 09:02:00', 'prod', 5432, 'tcp');
//! ```
//!
//! DataFusion calls table functions synchronously while planning, and the lookup reads the
//! store, so the call only checks its arguments and keeps a snapshot of the calling
//! session; the read happens when the plan is executed, on the query's own runtime.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use datafusion::prelude::{col, lit};
use hawking_enricher::OPEN;
use hawking_enricher::attribute::endpoint_columns;
use hawking_enricher::whois::{WhoisAnswer, WhoisQuery, WhoisRows, addresses_to_load, answer};
use hawking_schemas::ip::{ip_text, parse_ip};
use hawking_schemas::protocol::parse_protocol;
use hawking_schemas::time::parse_time;

use crate::session::QueryError;

/// Reads what `query` needs from the session's `nat_history`, `ip_history` and
/// `history_gaps` views, and answers it.
pub async fn lookup(ctx: &SessionContext, query: WhoisQuery) -> Result<WhoisAnswer, QueryError> {
    let by_cluster = |df: DataFrame| match &query.cluster {
        Some(c) => df.filter(col("cluster_name").eq(lit(c.as_str()))),
        None => Ok(df),
    };
    // A port may make the address a NAT's outside end: its translations then, and the
    // history of their inside addresses too.
    let translations = if query.port != 0 {
        ctx.table("nat_history")
            .await?
            .filter(
                col("outside_ip")
                    .eq(lit(ip_text(query.addr)))
                    .and(col("outside_port").eq(lit(query.port as i32)))
                    .and(col("protocol").eq(lit(query.protocol as i16)))
                    // Another cluster's translation would resolve in the wrong history.
                    .and(match &query.cluster {
                        Some(c) => col("cluster_name")
                            .eq(lit(c.as_str()))
                            .or(col("cluster_name").is_null()),
                        None => lit(true),
                    }),
            )?
            .collect()
            .await?
    } else {
        Vec::new()
    };
    let addrs = addresses_to_load(&query, &translations)?
        .into_iter()
        .map(|a| lit(ip_text(a)))
        .collect();
    let intervals = by_cluster(
        ctx.table("ip_history")
            .await?
            .filter(col("ip").in_list(addrs, false))?,
    )?
    .collect()
    .await?;
    let gaps = by_cluster(ctx.table("history_gaps").await?)?
        .collect()
        .await?;
    let rows = WhoisRows {
        translations,
        intervals,
        gaps,
    };
    Ok(answer(query, &rows)?)
}

/// The name the function is registered under.
pub const NAME: &str = "whois";

/// The row `whois(...)` returns. Column names follow the flows table's endpoint columns
/// (`cluster_name` as in `ip_history`: a bare `cluster` is an SQL keyword).
pub fn whois_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("ip", DataType::Utf8, false),
        Field::new("at_time", ts(), false),
        Field::new("cluster_name", DataType::Utf8, true),
        Field::new("attribution", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("pod", DataType::Utf8, true),
        Field::new("workload_kind", DataType::Utf8, true),
        Field::new("workload", DataType::Utf8, true),
        Field::new("node", DataType::Utf8, true),
        Field::new("service", DataType::Utf8, true),
        // The interval in which the owner held the address (valid_to null: still held).
        Field::new("valid_from", ts(), true),
        Field::new("valid_to", ts(), true),
        // Every possible owner when the attribution is ambiguous.
        Field::new("candidates", DataType::Utf8, true),
    ]))
}

#[derive(Debug, Default)]
pub struct WhoisFunction;

impl TableFunctionImpl for WhoisFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{NAME}: needs a DataFusion SessionState to read the history");
        };
        let values = constant_args(state, args.exprs())?;
        let query = whois_query(&values)?;
        let schema = whois_schema();
        let partition = WhoisPartition {
            schema: schema.clone(),
            state: state.clone(),
            query,
        };
        Ok(Arc::new(StreamingTable::try_new(
            schema,
            vec![Arc::new(partition)],
        )?))
    }
}

const USAGE: &str = "whois(ip, at [, cluster [, port, protocol]])";

/// The arguments as values: each must be a constant expression (`now() - INTERVAL '1
/// hour'` and `TIMESTAMP '…'` casts are folded first).
fn constant_args(state: &SessionState, exprs: &[Expr]) -> DfResult<Vec<ScalarValue>> {
    if !(2..=5).contains(&exprs.len()) || exprs.len() == 4 {
        return plan_err!("{USAGE}: got {} arguments", exprs.len());
    }
    let builder = SimplifyContext::builder().with_config_options(state.config_options().clone());
    // `now()` folds to the query's start when planning has fixed it, else to this moment.
    let context = match state.execution_props().query_execution_start_time {
        Some(t) => builder.with_query_execution_start_time(Some(t)),
        None => builder.with_current_time(),
    }
    .build();
    let simplifier = ExprSimplifier::new(context);
    exprs
        .iter()
        .enumerate()
        .map(|(i, e)| match simplifier.simplify(e.clone())? {
            Expr::Literal(v, _) => Ok(v),
            other => plan_err!(
                "{USAGE}: argument {} must be a constant, got {other}",
                i + 1
            ),
        })
        .collect()
}

fn text(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        _ => None,
    }
}

fn whois_query(values: &[ScalarValue]) -> DfResult<WhoisQuery> {
    let addr = match text(&values[0]) {
        Some(ip) => match parse_ip(ip) {
            Some(a) => a,
            None => return plan_err!("{USAGE}: {ip:?} is not an IP address"),
        },
        None => return plan_err!("{USAGE}: ip must be text, got {}", values[0]),
    };
    let at = match &values[1] {
        v if text(v).is_some() => parse_time(text(v).unwrap_or_default())
            .map_err(|e| DataFusionError::Plan(format!("{USAGE}: {e}")))?,
        v if matches!(v.data_type(), DataType::Timestamp(..)) && !v.is_null() => {
            let target = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            match v.cast_to(&target)? {
                ScalarValue::TimestampMicrosecond(Some(us), _) => us,
                other => return plan_err!("{USAGE}: cannot read {other} as a time"),
            }
        }
        v => return plan_err!("{USAGE}: at must be a timestamp or time text, got {v}"),
    };
    let cluster = match values.get(2) {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => match text(v) {
            Some(c) => Some(c.to_string()),
            None => return plan_err!("{USAGE}: cluster must be text or NULL, got {v}"),
        },
    };
    let port = match values.get(3) {
        None => 0,
        Some(v) => match v.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(p))) if (0..=65535).contains(&p) => p as u16,
            _ => return plan_err!("{USAGE}: port must be 0-65535, got {v}"),
        },
    };
    let protocol = match values.get(4) {
        None => 6,
        Some(v) => match text(v).and_then(parse_protocol) {
            Some(p) => p,
            None => match v.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(p))) if (0..=255).contains(&p) => p as u8,
                _ => {
                    return plan_err!("{USAGE}: protocol must be tcp, udp, sctp or 0-255, got {v}");
                }
            },
        },
    };
    Ok(WhoisQuery {
        addr,
        at,
        cluster,
        port,
        protocol,
    })
}

/// The one-row result, computed when executed.
struct WhoisPartition {
    schema: SchemaRef,
    state: SessionState,
    query: WhoisQuery,
}

impl std::fmt::Debug for WhoisPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhoisPartition")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl PartitionStream for WhoisPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 1);
        let tx = builder.tx();
        let ctx = SessionContext::new_with_state(self.state.clone());
        let query = self.query.clone();
        let schema = self.schema.clone();
        builder.spawn(async move {
            let row = answer_row(&ctx, query, schema).await;
            // A closed receiver means the query was cancelled: nothing left to tell.
            let _ = tx.send(row).await;
            Ok(())
        });
        builder.build()
    }
}

async fn answer_row(
    ctx: &SessionContext,
    query: WhoisQuery,
    schema: SchemaRef,
) -> DfResult<RecordBatch> {
    let answer = lookup(ctx, query)
        .await
        .map_err(|e| DataFusionError::External(e.into()))?;
    let history = answer.history();
    // The enricher's own column builder, so the row reads exactly like a flow endpoint.
    let [
        cluster,
        namespace,
        pod,
        workload_kind,
        workload,
        node,
        service,
        attribution,
        candidates,
    ]: [ArrayRef; 9] = endpoint_columns(history, &[answer.resolved])
        .try_into()
        .map_err(|_| DataFusionError::Internal("endpoint columns changed shape".into()))?;
    let held = answer.held_interval();
    let ts = |v: Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![ip_text(answer.query.addr)])),
        ts(Some(answer.query.at)),
        cluster,
        attribution,
        namespace,
        pod,
        workload_kind,
        workload,
        node,
        service,
        ts(held.map(|iv| iv.from)),
        ts(held.and_then(|iv| (iv.to != OPEN).then_some(iv.to))),
        candidates,
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
