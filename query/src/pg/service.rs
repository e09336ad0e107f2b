//! datafusion-postgres's query service with limits around it: one deadline per statement
//! that covers planning *and* producing the rows (its own `statement_timeout` covers only
//! planning), cancel requests (psql's Ctrl-C) that stop the rows too, outcomes counted,
//! errors given PostgreSQL's SQLSTATEs, and timestamps written in PostgreSQL's text style.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use datafusion::error::DataFusionError;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::Parser as DfParser;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ErrorHandler, Type,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::data::DataRow;
use futures::{Sink, StreamExt};
use tokio::time::Instant;

use super::guard::{STATEMENT_TIMEOUT_KEY, user_error};
use super::metrics::PgMetrics;
use super::settings::Settings;

/// Limits shared by every connection.
#[derive(Clone)]
pub(crate) struct Limits {
    pub query_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub metrics: PgMetrics,
    /// Statements running or streaming now, server-wide: shutdown waits for them.
    pub running: Arc<AtomicUsize>,
}

impl Limits {
    /// The server's limit, or the client's `SET statement_timeout` when shorter.
    fn deadline<C: ClientInfo + ?Sized>(&self, client: &C) -> Instant {
        let client_ms = client
            .metadata()
            .get(STATEMENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0);
        let limit = match client_ms {
            Some(ms) => self.query_timeout.min(Duration::from_millis(ms)),
            None => self.query_timeout,
        };
        Instant::now() + limit
    }

    fn canceled(&self) -> PgWireError {
        self.metrics.statement("canceled");
        user_error("57014", "canceling statement due to user request".into())
    }

    fn timed_out(&self) -> PgWireError {
        user_error(
            "57014",
            "canceling statement due to statement timeout".into(),
        )
    }

    /// Counts the statement as running until the response (and its row stream) is done.
    fn running(&self) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.metrics.running.inc();
        Running {
            running: self.running.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Bounds a response's rows by the deadline and the connection's cancel requests, and
    /// rewrites timestamps.
    fn finish(
        &self,
        response: Response,
        deadline: Instant,
        running: Option<Running>,
        cancel: Option<Arc<ConnectionHandle>>,
    ) -> Response {
        match response {
            Response::Query(query) => {
                Response::Query(self.bounded(query, deadline, running, cancel))
            }
            other => {
                self.metrics.statement("ok");
                other
            }
        }
    }

    fn bounded(
        &self,
        query: QueryResponse,
        deadline: Instant,
        running: Option<Running>,
        cancel: Option<Arc<ConnectionHandle>>,
    ) -> QueryResponse {
        let mut query = query;
        let command_tag = query.command_tag().to_string();
        let row_schema = query.row_schema();
        let data_rows = std::mem::replace(query.data_rows(), Box::pin(futures::stream::empty()));
        let timestamps: Vec<usize> = row_schema
            .iter()
            .enumerate()
            .filter(|(_, f)| is_text_timestamp(f))
            .map(|(i, _)| i)
            .collect();
        let limits = self.clone();
        struct State {
            rows: datafusion_postgres::pgwire::api::results::SendableRowStream,
            /// Held until the rows are out or the stream is dropped.
            _running: Option<Running>,
            /// The connection's cancel handle until the first row is asked for, then the
            /// signal of a cancel request for this statement.
            handle: Option<Arc<ConnectionHandle>>,
            canceled: Option<futures::channel::oneshot::Receiver<()>>,
        }
        let rows = futures::stream::unfold(
            Some(State {
                rows: data_rows,
                _running: running,
                handle: cancel,
                canceled: None,
            }),
            move |state| {
                let limits = limits.clone();
                let timestamps = timestamps.clone();
                async move {
                    let mut state = state?;
                    if let Some(handle) = state.handle.take() {
                        // pgwire listens for cancel requests only while the statement is
                        // planned; rows are produced here, so listen again.
                        state.canceled = Some(handle.start_query().await);
                    }
                    let next = loop {
                        let next = tokio::time::timeout_at(deadline, state.rows.next());
                        let Some(canceled) = state.canceled.as_mut() else {
                            break next.await;
                        };
                        tokio::select! {
                            biased;
                            signal = canceled => match signal {
                                Ok(()) => return Some((Err(limits.canceled()), None)),
                                // The next statement took the handle over: nothing to hear.
                                Err(_) => state.canceled = None,
                            },
                            next = next => break next,
                        }
                    };
                    match next {
                        Ok(Some(Ok(row))) => {
                            let row = if timestamps.is_empty() {
                                row
                            } else {
                                postgres_timestamps(row, &timestamps)
                            };
                            Some((Ok(row), Some(state)))
                        }
                        // Dropping the row stream stops the query's execution.
                        Ok(Some(Err(e))) => Some((Err(e), None)),
                        Ok(None) => {
                            limits.metrics.statement("ok");
                            None
                        }
                        Err(_) => Some((Err(limits.timed_out()), None)),
                    }
                }
            },
        );
        let mut bounded = QueryResponse::new(row_schema, rows);
        bounded.set_command_tag(&command_tag);
        bounded
    }
}

struct Running {
    running: Arc<AtomicUsize>,
    metrics: PgMetrics,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.metrics.running.dec();
    }
}

fn is_text_timestamp(field: &FieldInfo) -> bool {
    field.format() == FieldFormat::Text
        && matches!(*field.datatype(), Type::TIMESTAMPTZ | Type::TIMESTAMP)
}

/// pgwire writes every fraction with six digits (`10:00:00.120000+00`); PostgreSQL drops
/// trailing zeros and a zero fraction (`10:00:00.12+00`, `10:00:00+00`). Clients that
/// compare text (and people reading psql) see what PostgreSQL would send.
fn postgres_timestamps(row: DataRow, columns: &[usize]) -> DataRow {
    let data = &row.data;
    let mut out = BytesMut::with_capacity(data.len());
    let mut at = 0usize;
    for column in 0..row.field_count as usize {
        let Some(len_bytes) = data.get(at..at + 4) else {
            return row;
        };
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        if len < 0 {
            out.put_i32(len);
            continue;
        }
        let Some(value) = data.get(at..at + len as usize) else {
            return row;
        };
        at += len as usize;
        if columns.contains(&column)
            && let Some(trimmed) = trim_fraction(value)
        {
            out.put_i32(trimmed.len() as i32);
            out.put_slice(&trimmed);
        } else {
            out.put_i32(len);
            out.put_slice(value);
        }
    }
    DataRow::new(out, row.field_count)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff[zone]` without the fraction's trailing zeros; `None` when
/// there is nothing to trim or the text is not in ISO style.
fn trim_fraction(value: &[u8]) -> Option<Vec<u8>> {
    let iso = value.len() > 20
        && value[4] == b'-'
        && value[10] == b' '
        && value[13] == b':'
        && value[19] == b'.';
    if !iso {
        return None;
    }
    let digits_end = value[20..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(value.len(), |p| 20 + p);
    let mut keep = digits_end;
    while keep > 20 && value[keep - 1] == b'0' {
        keep -= 1;
    }
    if keep == digits_end {
        return None;
    }
    let fraction_end = if keep == 20 { 19 } else { keep };
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(&value[..fraction_end]);
    out.extend_from_slice(&value[digits_end..]);
    Some(out)
}

/// `sql` with Grafana's search-path test answered for this connection (see
/// [`super::search_path`]).
fn resolve_search_path<'a>(sql: &'a str, settings: &Settings) -> std::borrow::Cow<'a, str> {
    let path = settings.get("search_path").unwrap_or_default();
    let user = settings.get("session_authorization").unwrap_or_default();
    super::search_path::resolve(sql, &path, &user)
}

/// A connection's query service: datafusion-postgres's (with the read-only guard among its
/// hooks) inside the limits.
pub(crate) struct LimitedService {
    pub inner: Arc<DfSessionService>,
    pub parser: Arc<LimitedParser>,
    pub limits: Limits,
    pub settings: Arc<Settings>,
}

#[async_trait]
impl SimpleQueryHandler for LimitedService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = self.limits.deadline(client);
        let running = self.limits.running();
        let query = resolve_search_path(query, &self.settings);
        let responses = tokio::time::timeout_at(
            deadline,
            SimpleQueryHandler::do_query(&*self.inner, client, &query),
        )
        .await
        .map_err(|_| self.limits.timed_out())??;
        let cancel = client
            .session_extensions()
            .get::<Arc<ConnectionHandle>>()
            .map(|h| Arc::clone(&*h));
        // The rows of every statement of a multi-statement query share the deadline; the
        // last response holds the running mark until its rows are out.
        let last = responses.len().saturating_sub(1);
        let mut running = Some(running);
        Ok(responses
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let mark = if i == last { running.take() } else { None };
                self.limits.finish(r, deadline, mark, cancel.clone())
            })
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for LimitedService {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = LimitedParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = self.limits.deadline(client);
        let running = self.limits.running();
        let response = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows),
        )
        .await
        .map_err(|_| self.limits.timed_out())??;
        let cancel = client
            .session_extensions()
            .get::<Arc<ConnectionHandle>>()
            .map(|h| Arc::clone(&*h));
        Ok(self
            .limits
            .finish(response, deadline, Some(running), cancel))
    }
}

/// datafusion-postgres's parser (which plans at Parse) under the statement deadline.
pub(crate) struct LimitedParser {
    pub inner: Arc<DfParser>,
    pub limits: Limits,
    pub settings: Arc<Settings>,
}

#[async_trait]
impl QueryParser for LimitedParser {
    type Statement = <DfParser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = resolve_search_path(sql, &self.settings);
        tokio::time::timeout_at(
            self.limits.deadline(client),
            self.inner.parse_sql(client, &sql, types),
        )
        .await
        .map_err(|_| self.limits.timed_out())?
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

/// Gives errors PostgreSQL's SQLSTATEs (clients and Grafana show them) and counts them.
pub(crate) struct Errors {
    pub limits: Limits,
}

impl ErrorHandler for Errors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        if let Some(info) = self.classify(error) {
            *error = PgWireError::UserError(Box::new(info));
        }
        let outcome = match error {
            PgWireError::UserError(info) => match info.code.as_str() {
                "25006" | "0A000" | "42501" | "55P02" => Some("refused"),
                "57014" => Some("timeout"),
                "53200" => Some("memory"),
                _ if info.severity == "FATAL" => None,
                _ => Some("error"),
            },
            // Failed logins are counted by the login handler; broken connections are no
            // statements.
            PgWireError::InvalidPassword(_)
            | PgWireError::UserNameRequired
            | PgWireError::IoError(_) => None,
            _ => Some("error"),
        };
        if let Some(outcome) = outcome {
            self.limits.metrics.statement(outcome);
            tracing::debug!(
                peer = %client.socket_addr(),
                user = client.metadata().get("user").map(String::as_str).unwrap_or(""),
                outcome,
                error = %error,
                "pg statement failed"
            );
        }
    }
}

impl Errors {
    fn classify(&self, error: &PgWireError) -> Option<ErrorInfo> {
        let PgWireError::ApiError(inner) = error else {
            return None;
        };
        let error_info = |code: &str, message: String| {
            Some(ErrorInfo::new("ERROR".into(), code.into(), message))
        };
        if let Some(parse) = inner.downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>()
        {
            return error_info("42601", parse.to_string());
        }
        let df = inner.downcast_ref::<DataFusionError>()?;
        match df.find_root() {
            DataFusionError::ResourcesExhausted(message) => error_info(
                "53200",
                format!(
                    "out of memory: the query needs more than this connection's {} bytes \
                     (query_memory_limit_bytes): {message}",
                    self.limits.memory_limit_bytes
                ),
            ),
            DataFusionError::SQL(parse, _) => error_info("42601", parse.to_string()),
            DataFusionError::SchemaError(..) => error_info("42703", df.to_string()),
            DataFusionError::Plan(message) if message.contains("not found") => {
                error_info("42P01", df.to_string())
            }
            DataFusionError::Plan(_) => error_info("42000", df.to_string()),
            DataFusionError::NotImplemented(_) => error_info("0A000", df.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trimmed(s: &str) -> String {
        trim_fraction(s.as_bytes())
            .map(|b| String::from_utf8(b).unwrap())
            .unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn timestamps_read_as_postgresql_writes_them() {
        assert_eq!(
            trimmed("2026-11-25 10:00:00.123000+00"),
            "2026-11-25 10:00:00.123+00"
        );
        assert_eq!(
            trimmed("2026-11-25 10:00:00.000000+00"),
            "2026-11-25 10:00:00+00"
        );
        assert_eq!(
            trimmed("2026-11-25 10:00:00.000001"),
            "2026-11-25 10:00:00.000001"
        );
        assert_eq!(
            trimmed("2026-11-25 10:00:00.500000"),
            "2026-11-25 10:00:00.5"
        );
        assert_eq!(trimmed("2026-11-25 10:00:00+00"), "2026-11-25 10:00:00+00");
        // Not ISO style (a client chose another DateStyle): left alone.
        assert_eq!(
            trimmed("11/25/2026 10:00:00.500000"),
            "11/25/2026 10:00:00.500000"
        );
    }

    #[test]
    fn only_timestamp_columns_of_a_row_are_rewritten() {
        let mut data = BytesMut::new();
        for value in [
            Some("2026-11-25 10:00:00.100000+00"),
            None,
            Some("10.000000"),
        ] {
            match value {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v.as_bytes());
                }
                None => data.put_i32(-1),
            }
        }
        let row = postgres_timestamps(DataRow::new(data, 3), &[0, 1]);
        let mut expected = BytesMut::new();
        expected.put_i32(24);
        expected.put_slice(b"2026-11-25 10:00:00.1+00");
        expected.put_i32(-1);
        expected.put_i32(9);
        expected.put_slice(b"10.000000");
        assert_eq!(row.data, expected);
    }
}
