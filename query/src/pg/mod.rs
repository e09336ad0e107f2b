//! The store over the PostgreSQL wire protocol, for Grafana, psql and any libpq/pgx/asyncpg
//! client. Built on datafusion-postgres (pgwire, pg_catalog, Arrow → PostgreSQL encoding)
//! with what a shared, network-facing endpoint needs on top:
//!
//! - password logins (SCRAM-SHA-256 or MD5) for the configured users, optional TLS;
//! - a session per connection (tables, views and functions from the caller's session
//!   factory) with its own memory pool, so `SET`s and a runaway query stay with their
//!   connection;
//! - read-only: every statement is checked before it is planned and every plan before it
//!   runs; DDL, DML, COPY, cursors and changes of engine settings are refused;
//! - a deadline per statement that covers producing the rows, not only planning;
//! - the settings clients ask for on connect (`SHOW`, `current_setting`, `version()`),
//!   answered consistently, and timestamps in PostgreSQL's own text style;
//! - PostgreSQL's `information_schema` (type names, `udt_name`) and Grafana's search-path
//!   test answered from the connection's `search_path`, so Grafana's query builder lists
//!   tables and columns as it does against PostgreSQL.

mod auth;
mod config;
mod guard;
mod information_schema;
mod metrics;
mod search_path;
mod server;
mod service;
mod settings;

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use crate::QueryOptions;

pub use config::{PasswordAuth, PgConfig, PgUser};
pub use server::PgServer;

/// Errors from a session factory, whatever the caller's error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens a fresh session (tables, views, functions) with the given engine options. Called
/// once per connection: a session is cheap (tables are registered, not read).
pub type SessionFactory =
    Arc<dyn Fn(QueryOptions) -> BoxFuture<'static, Result<SessionContext, BoxError>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("[pg] user {user:?}: set exactly one of password, password_env, password_file")]
    PasswordSource { user: String },
    #[error("[pg] user {user:?}: environment variable {var} is not set or empty")]
    PasswordEnv { user: String, var: String },
    #[error("[pg] user {user:?}: reading password_file {path}: {source}")]
    PasswordFile {
        user: String,
        path: String,
        source: std::io::Error,
    },
    #[error("[pg] user {user:?}: the password is empty")]
    EmptyPassword { user: String },
    #[error("[pg] user names must be non-empty and unique: {user:?}")]
    UserName { user: String },
    #[error("[pg] {0}")]
    Invalid(String),
    #[error("[pg] TLS: reading {path}: {message}")]
    TlsFile { path: String, message: String },
    #[error("[pg] TLS: {0}")]
    Tls(String),
    #[error("binding the PostgreSQL endpoint {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("registering PostgreSQL endpoint metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
