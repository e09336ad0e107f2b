//! The read-only gate: every statement is classified before anything plans it, and every
//! plan is checked before it runs (`SELECT ... INTO` is a query that plans to DDL). What a
//! client may do: queries (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, `DESCRIBE`, `SHOW TABLES`),
//! `SET`/`SHOW`/`RESET` of connection parameters, transaction no-ops. Everything else is
//! refused with SQLSTATE 25006 (read-only) or 0A000 (not supported) and a message that
//! names the statement; nothing reaches DataFusion's DDL/DML/COPY execution or its engine
//! settings.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, Expr, Reset, ResetStatement, Set, Statement, TransactionAccessMode,
    TransactionMode, Value,
};
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{
    DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::response::TransactionStatus;
use datafusion_postgres::pgwire::messages::startup::ParameterStatus;
use datafusion_postgres::pgwire::types::format::FormatOptions;

use super::settings::{SetError, Settings, normalise};

pub(crate) fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// SQLSTATE 25006, read_only_sql_transaction: what PostgreSQL answers a write on a
/// read-only connection.
pub(crate) fn read_only(what: &str) -> PgWireError {
    user_error(
        "25006",
        format!("cannot execute {what}: Hawking's PostgreSQL endpoint is read-only"),
    )
}

fn not_supported(message: String) -> PgWireError {
    user_error("0A000", message)
}

/// Parameters pgwire and datafusion-postgres act on (formatting, the client's statement
/// timeout): after recording them, the `SET` is left to datafusion-postgres's hook.
const PASSED_ON: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "intervalstyle",
    "bytea_output",
    "application_name",
    "extra_float_digits",
    "search_path",
];

/// The statement kinds the gate tells apart.
enum Kind {
    /// Planned, checked and run.
    Query,
    /// Left to the transaction hook (no real transactions: the data is read-only).
    Transaction,
    Set,
    Show(String),
    ShowAll,
    Reset(Option<String>),
    /// Accepted and ignored: `DISCARD`, `UNLISTEN`, savepoints, `CLOSE ALL`,
    /// `DEALLOCATE` (what connection pools send to clean up).
    NoOp(&'static str),
    Refused(PgWireError),
}

fn classify(stmt: &Statement) -> Kind {
    match stmt {
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => Kind::Query,
        Statement::Explain { statement, .. } => match classify(statement) {
            Kind::Query => Kind::Query,
            _ => Kind::Refused(read_only(&format!("EXPLAIN {}", statement_name(statement)))),
        },
        Statement::StartTransaction { modes, .. } => {
            if modes.iter().any(|m| {
                matches!(
                    m,
                    TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
                )
            }) {
                Kind::Refused(read_only("BEGIN READ WRITE"))
            } else {
                Kind::Transaction
            }
        }
        Statement::Commit { .. } | Statement::Rollback { .. } => Kind::Transaction,
        Statement::Set(_) => Kind::Set,
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            if name.eq_ignore_ascii_case("all") {
                Kind::ShowAll
            } else {
                Kind::Show(name)
            }
        }
        Statement::Reset(ResetStatement { reset }) => match reset {
            Reset::ALL => Kind::Reset(None),
            Reset::ConfigurationParameter(name) => Kind::Reset(Some(name.to_string())),
        },
        Statement::Discard { .. } => Kind::NoOp("DISCARD ALL"),
        Statement::UNLISTEN { .. } => Kind::NoOp("UNLISTEN"),
        Statement::Savepoint { .. } => Kind::NoOp("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Kind::NoOp("RELEASE"),
        Statement::Deallocate { .. } => Kind::NoOp("DEALLOCATE"),
        // No cursor can exist (DECLARE is refused), so closing them all is done.
        Statement::Close {
            cursor: CloseCursor::All,
        } => Kind::NoOp("CLOSE CURSOR"),
        Statement::Close {
            cursor: CloseCursor::Specific { name },
        }
        | Statement::Fetch { name, .. } => Kind::Refused(user_error(
            "34000",
            format!("cursor \"{}\" does not exist", name.value),
        )),
        // A cursor would outlive the statement deadline and memory accounting.
        Statement::Declare { .. } => Kind::Refused(not_supported(
            "cursors (DECLARE) are not supported by Hawking's PostgreSQL endpoint: use LIMIT and \
             OFFSET, or fetch the result in one go"
                .into(),
        )),
        Statement::Copy { .. } => Kind::Refused(not_supported(
            "COPY is not supported by Hawking's PostgreSQL endpoint (it is read-only and reads \
             or writes no files): run the SELECT instead"
                .into(),
        )),
        Statement::Prepare { .. } | Statement::Execute { .. } => {
            Kind::Refused(not_supported(format!(
                "{} is not supported: use the extended query protocol (prepared statements of \
                 your client library) instead",
                statement_name(stmt)
            )))
        }
        other => Kind::Refused(read_only(&statement_name(other))),
    }
}

/// The statement's leading keywords (`INSERT`, `CREATE EXTERNAL TABLE`, ...) for messages.
fn statement_name(stmt: &Statement) -> String {
    const OBJECTS: &[&str] = &[
        "TABLE",
        "VIEW",
        "SCHEMA",
        "INDEX",
        "FUNCTION",
        "DATABASE",
        "SEQUENCE",
        "TYPE",
        "ROLE",
        "USER",
        "EXTENSION",
        "PROCEDURE",
        "TRIGGER",
        "MACRO",
        "DOMAIN",
        "POLICY",
        "CATALOG",
    ];
    let text = stmt.to_string();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("statement").to_ascii_uppercase();
    let mut name = first.clone();
    if matches!(first.as_str(), "CREATE" | "DROP" | "ALTER") {
        for word in words.take(4) {
            let upper = word.to_ascii_uppercase();
            if matches!(upper.as_str(), "IF" | "NOT" | "EXISTS")
                || !ALL_KEYWORDS.contains(&upper.as_str())
            {
                break;
            }
            name.push(' ');
            name.push_str(&upper);
            if OBJECTS.contains(&upper.as_str()) {
                break;
            }
        }
    }
    name
}

/// Refuses plans that would change anything: DDL (also `SELECT ... INTO`), DML, COPY, and
/// statements such as `SET datafusion.*`, wherever they hide (EXPLAIN, subqueries).
pub(crate) fn check_plan(plan: &LogicalPlan) -> PgWireResult<()> {
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        refused = match node {
            // `SELECT ... INTO t` plans to an in-memory CREATE TABLE AS.
            LogicalPlan::Ddl(ddl) if ddl.name() == "CreateMemoryTable" => {
                Some("SELECT INTO (CREATE TABLE AS)".to_string())
            }
            LogicalPlan::Ddl(ddl) => Some(words(ddl.name())),
            LogicalPlan::Dml(dml) => Some(dml.op.to_string().to_ascii_uppercase()),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(s) => Some(words(s.name())),
            _ => None,
        };
        Ok(if refused.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    match refused {
        Some(what) => Err(read_only(&what)),
        None => Ok(()),
    }
}

/// `CreateExternalTable` → `CREATE EXTERNAL TABLE`.
fn words(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

async fn plan_checked(ctx: &SessionContext, stmt: &Statement) -> PgWireResult<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
            stmt.clone(),
        )))
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    check_plan(&plan)?;
    Ok(plan)
}

/// A plan for statements answered without one: no columns, no rows.
fn nothing() -> LogicalPlan {
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(datafusion::common::DFSchema::empty()),
    })
}

/// The plan a `SHOW` describes itself with in the extended protocol: text columns.
fn text_columns(names: &[&str]) -> PgWireResult<LogicalPlan> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    );
    let schema = datafusion::common::DFSchema::try_from(schema)
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        schema: Arc::new(schema),
    }))
}

fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> PgWireResult<Response> {
    let fields = Arc::new(
        columns
            .iter()
            .map(|c| FieldInfo::new(c.to_string(), None, None, Type::TEXT, FieldFormat::Text))
            .collect::<Vec<_>>(),
    );
    let mut encoded = Vec::with_capacity(rows.len());
    for row in rows {
        let mut encoder = DataRowEncoder::new(fields.clone());
        for value in &row {
            encoder.encode_field(&Some(value.as_str()))?;
        }
        encoded.push(Ok(encoder.take_row()));
    }
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(encoded),
    )))
}

/// The text of a `SET` value as PostgreSQL stores it: `'UTC'`, `UTC`, `5000`, `a, b`.
fn set_value(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) struct Guard {
    pub settings: Arc<Settings>,
}

impl Guard {
    /// Answers what the gate answers itself; `None` lets the next hook (or the default
    /// query path, for checked queries) go on.
    async fn respond(
        &self,
        stmt: &Statement,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match classify(stmt) {
            Kind::Query | Kind::Transaction => None,
            Kind::Refused(e) => Some(Err(e)),
            Kind::NoOp(tag) => Some(Ok(Response::Execution(Tag::new(tag)))),
            Kind::Show(name) => {
                let value = self.settings.get(&name);
                Some(match value {
                    Some(v) => text_rows(&[&self.settings.display_name(&name)], vec![vec![v]]),
                    None => Err(user_error(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    )),
                })
            }
            Kind::ShowAll => Some(text_rows(
                &["name", "setting", "description"],
                self.settings
                    .all()
                    .into_iter()
                    .map(|(n, v)| vec![n, v, String::new()])
                    .collect(),
            )),
            Kind::Reset(name) => {
                match name {
                    Some(name) => {
                        self.settings.reset(&name);
                        if normalise(&name) == "statement_timeout" {
                            client.metadata_mut().remove(STATEMENT_TIMEOUT_KEY);
                        }
                    }
                    None => {
                        self.settings.reset_all();
                        client.metadata_mut().remove(STATEMENT_TIMEOUT_KEY);
                    }
                }
                Some(Ok(Response::Execution(Tag::new("RESET"))))
            }
            Kind::Set => {
                let Statement::Set(set) = stmt else {
                    return None;
                };
                self.set(set, client).await
            }
        }
    }

    async fn set(&self, set: &Set, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
        let done = || Some(Ok(Response::Execution(Tag::new("SET"))));
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = variable.to_string();
                let key = normalise(&name);
                if key.starts_with("datafusion.") {
                    return Some(Err(user_error(
                        "42501",
                        format!(
                            "permission denied to set parameter \"{name}\": query engine settings \
                             are fixed by Hawking's configuration"
                        ),
                    )));
                }
                let value = set_value(values);
                if value.eq_ignore_ascii_case("default") {
                    self.settings.reset(&key);
                    return done();
                }
                if let Err(e) = self.settings.set(&key, &value) {
                    return Some(Err(match e {
                        SetError::Fixed(p) => {
                            user_error("55P02", format!("parameter \"{p}\" cannot be changed"))
                        }
                        SetError::Encoding(v) => user_error(
                            "22023",
                            format!("client encoding {v:?} is not supported: only UTF8"),
                        ),
                    }));
                }
                if PASSED_ON.contains(&key.as_str()) {
                    return None;
                }
                if matches!(key.as_str(), "timezone" | "client_encoding") {
                    let status = ParameterStatus::new(
                        self.settings.display_name(&key),
                        self.settings.get(&key).unwrap_or_default(),
                    );
                    if let Err(e) = client
                        .send_message(PgWireBackendMessage::ParameterStatus(status))
                        .await
                    {
                        return Some(Err(e));
                    }
                }
                done()
            }
            Set::SetTimeZone { value, .. } => {
                let value = set_value(std::slice::from_ref(value));
                if let Err(e) = self.settings.set("timezone", &value) {
                    return Some(Err(user_error("22023", format!("{e:?}"))));
                }
                // datafusion-postgres reports it to the client; timestamps still come out
                // in UTC with an explicit offset, the same instants.
                None
            }
            Set::SetNames { charset_name, .. } => {
                match self.settings.set("client_encoding", &charset_name.value) {
                    Ok(()) => done(),
                    Err(_) => Some(Err(user_error(
                        "22023",
                        format!(
                            "client encoding {:?} is not supported: only UTF8",
                            charset_name.value
                        ),
                    ))),
                }
            }
            Set::SetNamesDefault {} => done(),
            Set::SetTransaction { modes, .. } => {
                if modes.iter().any(|m| {
                    matches!(
                        m,
                        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
                    )
                }) {
                    Some(Err(read_only("SET TRANSACTION READ WRITE")))
                } else {
                    done()
                }
            }
            Set::SetRole { .. } | Set::SetSessionAuthorization(_) => Some(Err(user_error(
                "42501",
                "changing the role or session user is not allowed".into(),
            ))),
            other => Some(Err(not_supported(format!(
                "{other} is not supported: set one parameter at a time"
            )))),
        }
    }
}

/// Where datafusion-postgres keeps the client's `SET statement_timeout` (milliseconds).
pub(crate) const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.settings.adopt_login(client.metadata());
        if let Kind::Query = classify(statement) {
            if client.transaction_status() == TransactionStatus::Error {
                return Some(Err(user_error(
                    "25P01",
                    "current transaction is aborted, commands ignored until end of transaction \
                     block"
                        .into(),
                )));
            }
            // Run here rather than on datafusion-postgres's default path: that one plans
            // and executes in one step (DDL would have run before any check).
            return Some(run_query(session_context, statement, client).await);
        }
        self.respond(statement, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        self.settings.adopt_login(client.metadata());
        Some(match classify(statement) {
            Kind::Query => plan_checked(session_context, statement).await,
            Kind::Transaction => return None,
            Kind::Refused(e) => Err(e),
            Kind::Show(name) => text_columns(&[&self.settings.display_name(&name)]),
            Kind::ShowAll => text_columns(&["name", "setting", "description"]),
            Kind::Set | Kind::Reset(_) | Kind::NoOp(_) => Ok(nothing()),
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.settings.adopt_login(client.metadata());
        if let Kind::Query = classify(statement) {
            // Checked at Parse already; checking the plan that runs costs nothing.
            return check_plan(logical_plan).err().map(Err);
        }
        self.respond(statement, client).await
    }
}

async fn run_query(
    ctx: &SessionContext,
    stmt: &Statement,
    client: &dyn HookClient,
) -> PgWireResult<Response> {
    let plan = plan_checked(ctx, stmt).await?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let response = df::encode_dataframe(frame, &Format::UnifiedText, Some(format)).await?;
    Ok(Response::Query(response))
}

#[cfg(test)]
mod tests {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    use super::*;

    fn parse(sql: &str) -> Statement {
        PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap()
            .remove(0)
    }

    fn refusal(sql: &str) -> (String, String) {
        match classify(&parse(sql)) {
            Kind::Refused(PgWireError::UserError(info)) => {
                (info.code.clone(), info.message.clone())
            }
            _ => panic!("{sql} was not refused"),
        }
    }

    #[test]
    fn writes_and_file_access_are_refused_by_name() {
        for (sql, code, named) in [
            ("INSERT INTO flows (bytes) VALUES (1)", "25006", "INSERT"),
            ("UPDATE flows SET bytes = 0", "25006", "UPDATE"),
            ("DELETE FROM flows", "25006", "DELETE"),
            ("TRUNCATE flows", "25006", "TRUNCATE"),
            ("DROP TABLE flows", "25006", "DROP TABLE"),
            (
                "CREATE TABLE copy AS SELECT 1",
                "25006",
                "cannot execute CREATE TABLE:",
            ),
            (
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'",
                "25006",
                "CREATE EXTERNAL TABLE",
            ),
            ("CREATE VIEW v AS SELECT 1", "25006", "CREATE VIEW"),
            ("COPY flows TO '/tmp/x.csv'", "0A000", "COPY"),
            ("COPY (SELECT 1) TO STDOUT", "0A000", "COPY"),
            (
                "EXPLAIN INSERT INTO flows (bytes) VALUES (1)",
                "25006",
                "EXPLAIN INSERT",
            ),
            ("DECLARE c CURSOR FOR SELECT 1", "0A000", "cursors"),
            ("BEGIN READ WRITE", "25006", "READ WRITE"),
        ] {
            let (got_code, message) = refusal(sql);
            assert_eq!(got_code, code, "{sql}: {message}");
            assert!(message.contains(named), "{sql}: {message}");
        }
    }

    #[test]
    fn queries_are_let_through_to_planning() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
        ] {
            assert!(matches!(classify(&parse(sql)), Kind::Query), "{sql}");
        }
    }

    #[tokio::test]
    async fn plans_that_write_are_refused_even_from_a_select() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE VIEW v AS SELECT 1 AS x").await.unwrap();
        let err = plan_checked(&ctx, &parse("SELECT * INTO t FROM v"))
            .await
            .unwrap_err();
        let PgWireError::UserError(info) = err else {
            panic!("{err:?}")
        };
        assert_eq!(info.code, "25006", "{}", info.message);
        assert!(info.message.contains("SELECT INTO"), "{}", info.message);
        assert!(ctx.table("t").await.is_err(), "nothing was created");
        plan_checked(&ctx, &parse("SELECT * FROM v")).await.unwrap();
    }
}
