//! The SQL-standard `information_schema` as PostgreSQL fills it, for the connections of the
//! PostgreSQL endpoint: PostgreSQL's type names (`bigint`, `timestamp with time zone`) and
//! the `udt_name` column that Grafana's schema API and query builder read. DataFusion's own
//! `information_schema` names Arrow types (`Int64`, `Utf8View`) and has no `udt_name`, so a
//! client that decides what a column is from it gets nothing usable.
//!
//! The views are computed when queried, from the session's catalogs as they are then, like
//! PostgreSQL's views over its catalog: opening a connection costs nothing.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemorySchemaProvider, SchemaProvider, Session};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_postgres::arrow_pg::datatypes::into_pg_type;
use datafusion_postgres::pgwire::api::Type;

/// The schema's name, as clients spell it.
const NAME: &str = "information_schema";

/// The views of the schema. Their columns are PostgreSQL's, in PostgreSQL's order, minus
/// those that describe features Hawking has not (collations, identity columns, generated
/// columns, typed tables).
#[derive(Clone, Copy, Debug)]
enum View {
    Schemata,
    Tables,
    Columns,
    Views,
}

impl View {
    const ALL: [View; 4] = [View::Schemata, View::Tables, View::Columns, View::Views];

    fn name(self) -> &'static str {
        match self {
            View::Schemata => "schemata",
            View::Tables => "tables",
            View::Columns => "columns",
            View::Views => "views",
        }
    }

    fn schema(self) -> SchemaRef {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        let int = |name: &str| Field::new(name, DataType::Int32, true);
        let fields = match self {
            View::Schemata => vec![
                text("catalog_name"),
                text("schema_name"),
                text("schema_owner"),
            ],
            View::Tables => vec![
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("table_type"),
                text("is_insertable_into"),
            ],
            View::Columns => vec![
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("column_name"),
                int("ordinal_position"),
                text("column_default"),
                text("is_nullable"),
                text("data_type"),
                int("character_maximum_length"),
                int("character_octet_length"),
                int("numeric_precision"),
                int("numeric_precision_radix"),
                int("numeric_scale"),
                int("datetime_precision"),
                text("udt_catalog"),
                text("udt_schema"),
                text("udt_name"),
                text("is_updatable"),
            ],
            View::Views => vec![
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("view_definition"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

/// Puts PostgreSQL's `information_schema` in place of DataFusion's in `ctx`.
pub(crate) fn install(ctx: &SessionContext) -> DfResult<()> {
    let state = ctx.state_ref();
    let catalog_name = {
        let mut state = state.write();
        // DataFusion answers `information_schema.*` itself while this is on, whatever is
        // registered under that name.
        state.config_mut().options_mut().catalog.information_schema = false;
        state.config().options().catalog.default_catalog.clone()
    };
    let catalog = ctx
        .catalog(&catalog_name)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog {catalog_name}")))?;
    let schema = MemorySchemaProvider::new();
    // Weak: the catalog list owns this schema; a strong reference back would be a cycle.
    let catalogs = Arc::downgrade(&state.read().catalog_list().clone());
    for view in View::ALL {
        schema.register_table(
            view.name().to_string(),
            Arc::new(CatalogView {
                view,
                catalogs: catalogs.clone(),
            }),
        )?;
    }
    catalog.register_schema(NAME, Arc::new(schema))?;
    Ok(())
}

/// One view of the schema, computed from the catalogs at each scan.
#[derive(Debug)]
struct CatalogView {
    view: View,
    catalogs: Weak<dyn CatalogProviderList>,
}

#[async_trait]
impl TableProvider for CatalogView {
    fn schema(&self) -> SchemaRef {
        self.view.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let catalogs = self.catalogs.upgrade().ok_or_else(|| {
            DataFusionError::Execution("the session of this view has been closed".into())
        })?;
        let batch = Rows::collect(self.view, catalogs.as_ref()).await?;
        let exec =
            MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}

/// The rows of one view, built column by column.
struct Rows {
    view: View,
    text: Vec<StringBuilder>,
    int: Vec<Int32Builder>,
}

/// A cell of a row being added.
enum Cell<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
}

impl Rows {
    async fn collect(view: View, catalogs: &dyn CatalogProviderList) -> DfResult<RecordBatch> {
        let mut rows = Rows {
            view,
            text: Vec::new(),
            int: Vec::new(),
        };
        for field in view.schema().fields() {
            match field.data_type() {
                DataType::Int32 => rows.int.push(Int32Builder::new()),
                _ => rows.text.push(StringBuilder::new()),
            }
        }
        let mut catalog_names = catalogs.catalog_names();
        catalog_names.sort();
        for catalog_name in &catalog_names {
            let Some(catalog) = catalogs.catalog(catalog_name) else {
                continue;
            };
            let mut schema_names = catalog.schema_names();
            schema_names.sort();
            for schema_name in &schema_names {
                let Some(schema) = catalog.schema(schema_name) else {
                    continue;
                };
                if let View::Schemata = view {
                    rows.push(&[
                        Cell::Text(Some(catalog_name)),
                        Cell::Text(Some(schema_name)),
                        Cell::Text(Some("hawking")),
                    ]);
                    continue;
                }
                rows.add_tables(catalog_name, schema_name, schema.as_ref())
                    .await?;
            }
        }
        rows.finish()
    }

    async fn add_tables(
        &mut self,
        catalog: &str,
        schema_name: &str,
        schema: &dyn SchemaProvider,
    ) -> DfResult<()> {
        let mut names = schema.table_names();
        names.sort();
        for name in &names {
            let Some(table) = schema.table(name).await? else {
                continue;
            };
            let is_view = table.table_type() == TableType::View;
            match self.view {
                View::Schemata => {}
                View::Tables => self.push(&[
                    Cell::Text(Some(catalog)),
                    Cell::Text(Some(schema_name)),
                    Cell::Text(Some(name)),
                    Cell::Text(Some(if is_view { "VIEW" } else { "BASE TABLE" })),
                    Cell::Text(Some("NO")),
                ]),
                View::Views => {
                    if is_view {
                        let definition = table.get_table_definition();
                        self.push(&[
                            Cell::Text(Some(catalog)),
                            Cell::Text(Some(schema_name)),
                            Cell::Text(Some(name)),
                            Cell::Text(definition),
                        ]);
                    }
                }
                View::Columns => {
                    for (i, field) in table.schema().fields().iter().enumerate() {
                        let t = ColumnType::of(field.data_type());
                        self.push(&[
                            Cell::Text(Some(catalog)),
                            Cell::Text(Some(schema_name)),
                            Cell::Text(Some(name)),
                            Cell::Text(Some(field.name())),
                            Cell::Int(Some(i as i32 + 1)),
                            Cell::Text(None),
                            Cell::Text(Some(if field.is_nullable() { "YES" } else { "NO" })),
                            Cell::Text(Some(&t.data_type)),
                            Cell::Int(None),
                            Cell::Int(t.octet_length),
                            Cell::Int(t.numeric_precision),
                            Cell::Int(t.numeric_radix),
                            Cell::Int(t.numeric_scale),
                            Cell::Int(t.datetime_precision),
                            Cell::Text(Some(catalog)),
                            Cell::Text(Some("pg_catalog")),
                            Cell::Text(Some(&t.udt_name)),
                            Cell::Text(Some("NO")),
                        ]);
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, cells: &[Cell]) {
        let (mut t, mut i) = (0, 0);
        for cell in cells {
            match cell {
                Cell::Text(v) => {
                    self.text[t].append_option(*v);
                    t += 1;
                }
                Cell::Int(v) => {
                    self.int[i].append_option(*v);
                    i += 1;
                }
            }
        }
    }

    fn finish(mut self) -> DfResult<RecordBatch> {
        let schema = self.view.schema();
        let (mut t, mut i) = (0, 0);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                if f.data_type() == &DataType::Int32 {
                    i += 1;
                    Arc::new(self.int[i - 1].finish())
                } else {
                    t += 1;
                    Arc::new(self.text[t - 1].finish())
                }
            })
            .collect();
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// How PostgreSQL describes a column's type in `information_schema.columns`.
struct ColumnType {
    data_type: String,
    udt_name: String,
    octet_length: Option<i32>,
    numeric_precision: Option<i32>,
    numeric_radix: Option<i32>,
    numeric_scale: Option<i32>,
    datetime_precision: Option<i32>,
}

impl ColumnType {
    /// The type the endpoint sends the column as (the same mapping that encodes its
    /// values), in PostgreSQL's words.
    fn of(arrow: &DataType) -> ColumnType {
        let arrow = match arrow {
            DataType::Dictionary(_, value) => value.as_ref(),
            other => other,
        };
        let pg = into_pg_type(arrow).unwrap_or(Type::TEXT);
        let udt_name = pg.name().to_string();
        let data_type = if udt_name.starts_with('_') {
            "ARRAY"
        } else {
            match udt_name.as_str() {
                "bool" => "boolean",
                "int2" => "smallint",
                "int4" => "integer",
                "int8" => "bigint",
                "float4" => "real",
                "float8" => "double precision",
                "varchar" => "character varying",
                "bpchar" => "character",
                "timestamp" => "timestamp without time zone",
                "timestamptz" => "timestamp with time zone",
                "time" => "time without time zone",
                "timetz" => "time with time zone",
                other => other,
            }
        }
        .to_string();
        let (precision, radix, scale) = match (udt_name.as_str(), arrow) {
            ("int2", _) => (Some(16), Some(2), Some(0)),
            ("int4", _) => (Some(32), Some(2), Some(0)),
            ("int8", _) => (Some(64), Some(2), Some(0)),
            ("float4", _) => (Some(24), Some(2), None),
            ("float8", _) => (Some(53), Some(2), None),
            ("numeric", DataType::Decimal128(p, s)) => (Some(*p as i32), Some(10), Some(*s as i32)),
            // UInt64: PostgreSQL's numeric(20,0) holds every value.
            ("numeric", _) => (Some(20), Some(10), Some(0)),
            _ => (None, None, None),
        };
        let datetime_precision = match udt_name.as_str() {
            "date" => Some(0),
            "timestamp" | "timestamptz" | "time" | "timetz" | "interval" => Some(6),
            _ => None,
        };
        // PostgreSQL's largest text value: 1 GB.
        let octet_length = matches!(udt_name.as_str(), "text" | "varchar").then_some(1 << 30);
        ColumnType {
            data_type,
            udt_name,
            octet_length,
            numeric_precision: precision,
            numeric_radix: radix,
            numeric_scale: scale,
            datetime_precision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Int32Type, TimeUnit};

    async fn session() -> SessionContext {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_information_schema(true),
        );
        ctx.sql("CREATE TABLE t (a BIGINT NOT NULL, b VARCHAR, c DOUBLE, d DECIMAL(10,3))")
            .await
            .unwrap();
        ctx.sql("CREATE VIEW v AS SELECT a FROM t").await.unwrap();
        install(&ctx).unwrap();
        ctx
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> Vec<Vec<Option<String>>> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                out.push(
                    b.columns()
                        .iter()
                        .map(|c| {
                            if c.is_null(r) {
                                None
                            } else if let Some(i) = c.as_primitive_opt::<Int32Type>() {
                                Some(i.value(r).to_string())
                            } else {
                                let text =
                                    datafusion::arrow::compute::cast(c, &DataType::Utf8).unwrap();
                                Some(text.as_string::<i32>().value(r).to_string())
                            }
                        })
                        .collect(),
                );
            }
        }
        out
    }

    fn owned(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|r| r.iter().map(|c| c.map(str::to_string)).collect())
            .collect()
    }

    #[tokio::test]
    async fn columns_are_described_in_postgresqls_words() {
        let ctx = session().await;
        let got = rows(
            &ctx,
            "SELECT column_name, ordinal_position, is_nullable, data_type, udt_name, \
             numeric_precision, numeric_scale FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position",
        )
        .await;
        assert_eq!(
            got,
            owned(&[
                &[
                    Some("a"),
                    Some("1"),
                    Some("NO"),
                    Some("bigint"),
                    Some("int8"),
                    Some("64"),
                    Some("0")
                ],
                &[
                    Some("b"),
                    Some("2"),
                    Some("YES"),
                    Some("text"),
                    Some("text"),
                    None,
                    None
                ],
                &[
                    Some("c"),
                    Some("3"),
                    Some("YES"),
                    Some("double precision"),
                    Some("float8"),
                    Some("53"),
                    None
                ],
                &[
                    Some("d"),
                    Some("4"),
                    Some("YES"),
                    Some("numeric"),
                    Some("numeric"),
                    Some("10"),
                    Some("3")
                ],
            ])
        );
    }

    #[tokio::test]
    async fn tables_views_and_schemata_list_what_the_session_has() {
        let ctx = session().await;
        let got = rows(
            &ctx,
            "SELECT table_name, table_type FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name",
        )
        .await;
        assert_eq!(
            got,
            owned(&[&[Some("t"), Some("BASE TABLE")], &[Some("v"), Some("VIEW")]])
        );
        let views = rows(
            &ctx,
            "SELECT table_name, CAST(view_definition IS NOT NULL AS VARCHAR) FROM information_schema.views \
             WHERE table_schema = 'public'",
        )
        .await;
        assert_eq!(views, owned(&[&[Some("v"), Some("true")]]));
        let schemata = rows(
            &ctx,
            "SELECT schema_name FROM information_schema.schemata ORDER BY 1",
        )
        .await;
        assert_eq!(
            schemata,
            owned(&[&[Some("information_schema")], &[Some("public")]])
        );
        // Its own views are listed too, as PostgreSQL lists its information_schema views.
        let own = rows(
            &ctx,
            "SELECT count(*)::int FROM information_schema.tables \
             WHERE table_schema = 'information_schema'",
        )
        .await;
        assert_eq!(own, owned(&[&[Some("4")]]));
    }

    #[test]
    fn timestamps_and_arrays_map_as_the_endpoint_encodes_them() {
        let ts = ColumnType::of(&DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        ));
        assert_eq!(
            (ts.data_type.as_str(), ts.udt_name.as_str()),
            ("timestamp with time zone", "timestamptz")
        );
        assert_eq!(ts.datetime_precision, Some(6));
        let list = ColumnType::of(&DataType::List(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        ))));
        assert_eq!(
            (list.data_type.as_str(), list.udt_name.as_str()),
            ("ARRAY", "_text")
        );
        let dict = ColumnType::of(&DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8),
        ));
        assert_eq!(dict.udt_name, "text");
    }
}
