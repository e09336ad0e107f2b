//! The listener: binds (so a taken port fails at start-up and port 0 works), accepts up to
//! `max_connections`, builds each connection's session and handlers, and shuts down
//! gracefully: no new connections, running statements get a grace period, then every
//! connection is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::{
    PgCatalogContextProvider, Role,
};
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::DefaultServerParameterProvider;
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::query::ExtendedQueryHandler;
use datafusion_postgres::pgwire::api::{ConnectionManager, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::ErrorInfo;
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use datafusion_postgres::pgwire::tokio::{TlsAcceptor, process_socket};
use datafusion_postgres::{DfSessionService, QueryHook};
use prometheus::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::auth::{Authenticator, LoginHandler, Md5Users, ScramUsers};
use super::guard::Guard;
use super::information_schema;
use super::metrics::PgMetrics;
use super::service::{Errors, LimitedParser, LimitedService, Limits};
use super::settings::{self, Settings};
use super::{PgConfig, PgError, SessionFactory};
use crate::QueryOptions;

/// A bound PostgreSQL-wire endpoint; [`PgServer::run`] serves it.
pub struct PgServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    factory: SessionFactory,
    options: QueryOptions,
    query_timeout: Duration,
    shutdown_grace: Duration,
    authenticator: Authenticator,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    cancel: Arc<DefaultCancelHandler>,
    slots: Arc<Semaphore>,
    roles: Roles,
}

impl PgServer {
    /// Checks the configuration, reads the passwords and TLS files, binds the address.
    /// `options` are the engine settings of every connection's session (the memory limit
    /// is replaced by `query_memory_limit_bytes`).
    pub async fn bind(
        config: &PgConfig,
        options: QueryOptions,
        factory: SessionFactory,
        registry: &Registry,
    ) -> Result<PgServer, PgError> {
        let logins = config.logins()?;
        let metrics = PgMetrics::register(registry)?;
        let (tls, tls_cert_pem) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let (acceptor, pem) = tls_acceptor(cert, key)?;
                (Some(acceptor), Some(pem))
            }
            _ => (None, None),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| PgError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| PgError::Bind {
            addr: config.listen,
            source,
        })?;
        if tls.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %local_addr,
                "PostgreSQL endpoint without TLS on a non-loopback address: logins are \
                 protected by the password exchange, query results are not"
            );
        }
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = settings::server_version();
        params.is_superuser = false;
        params.default_transaction_read_only = true;
        params.search_path = "\"$user\", public".into();
        params.time_zone = "UTC".into();
        let params = Arc::new(params);
        let connections = Arc::new(ConnectionManager::new());
        let limits = Limits {
            query_timeout: config.query_timeout(),
            memory_limit_bytes: config.query_memory_limit_bytes,
            metrics: metrics.clone(),
            running: Arc::new(AtomicUsize::new(0)),
        };
        let shared = Shared {
            factory,
            options: QueryOptions {
                memory_limit_bytes: Some(config.query_memory_limit_bytes),
                ..options
            },
            query_timeout: config.query_timeout(),
            shutdown_grace: config.shutdown_grace(),
            authenticator: Authenticator {
                method: config.auth,
                scram: Arc::new(ScramUsers::new(&logins)),
                md5: Arc::new(Md5Users::new(&logins)),
                tls_cert_pem,
                require_tls: config.require_tls,
                params,
                connections: connections.clone(),
                metrics,
            },
            tls,
            limits,
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            roles: Roles {
                users: Arc::new(logins.iter().map(|l| l.name.clone()).collect()),
            },
        };
        Ok(PgServer {
            listener,
            local_addr,
            shared: Arc::new(shared),
        })
    }

    /// The address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets running statements
    /// finish for the grace period and closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let PgServer {
            listener, shared, ..
        } = self;
        let metrics = &shared.limits.metrics;
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        metrics.connections.inc();
                        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
                            metrics.connections_rejected.inc();
                            tracing::warn!(%peer, "PostgreSQL connection refused: max_connections reached");
                            connections.spawn(refuse(socket, "53300", "sorry, too many clients already"));
                            continue;
                        };
                        let shared = shared.clone();
                        connections.spawn(async move {
                            shared.limits.metrics.open_connections.inc();
                            serve_connection(&shared, socket, peer).await;
                            shared.limits.metrics.open_connections.dec();
                            drop(slot);
                        });
                    }
                    // Out of file descriptors and the like: wait rather than spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a PostgreSQL connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        let grace = tokio::time::Instant::now() + shared.shutdown_grace;
        while shared.limits.running.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < grace
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open = connections.len();
        connections.shutdown().await;
        tracing::info!(closed = open, "PostgreSQL endpoint stopped");
    }
}

/// Answers a connection that will not be served with a FATAL error, as PostgreSQL does
/// when it is full: clients show the message instead of a bare disconnect.
async fn refuse(mut socket: TcpStream, code: &str, message: &str) {
    let mut buf = bytes::BytesMut::new();
    let error = PgWireBackendMessage::ErrorResponse(
        ErrorInfo::new("FATAL".into(), code.into(), message.into()).into(),
    );
    if error.encode(&mut buf).is_ok() {
        let _ = socket.write_all(&buf).await;
    }
    let _ = socket.shutdown().await;
}

async fn serve_connection(shared: &Shared, socket: TcpStream, peer: SocketAddr) {
    let handlers = match connection_handlers(shared).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(%peer, error = %e, "opening a session for a PostgreSQL connection");
            refuse(socket, "58000", &format!("cannot open the store: {e}")).await;
            return;
        }
    };
    if let Err(e) = process_socket(socket, shared.tls.clone(), handlers).await {
        tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
    }
}

/// One connection's session and handlers. The session is the caller's (tables, views,
/// functions) with its own memory pool, plus pg_catalog and the connection's parameters.
async fn connection_handlers(shared: &Shared) -> Result<ConnectionHandlers, super::BoxError> {
    let ctx: SessionContext = (shared.factory)(shared.options.clone()).await?;
    let catalog = ctx
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    setup_pg_catalog(&ctx, &catalog, shared.roles.clone()).map_err(|e| *e)?;
    information_schema::install(&ctx)?;
    let settings = Settings::new(shared.query_timeout);
    // After pg_catalog: `session_user` answers with the logged-in user, not "postgres".
    settings::register(&ctx, &settings);
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        // First: nothing passes that it has not classified (`BEGIN READ WRITE` included).
        Arc::new(Guard {
            settings: settings.clone(),
        }),
        // Transactions are no-ops (the data is read-only); after a failed statement in one,
        // everything is refused until ROLLBACK.
        Arc::new(TransactionStatementHook),
        Arc::new(SetShowHook),
    ];
    let inner = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
    let parser = Arc::new(LimitedParser {
        inner: ExtendedQueryHandler::query_parser(&*inner),
        limits: shared.limits.clone(),
        settings: settings.clone(),
    });
    Ok(ConnectionHandlers {
        service: Arc::new(LimitedService {
            inner,
            parser,
            limits: shared.limits.clone(),
            settings,
        }),
        login: Arc::new(shared.authenticator.for_connection()),
        cancel: shared.cancel.clone(),
        errors: Arc::new(Errors {
            limits: shared.limits.clone(),
        }),
    })
}

struct ConnectionHandlers {
    service: Arc<LimitedService>,
    login: Arc<LoginHandler>,
    cancel: Arc<DefaultCancelHandler>,
    errors: Arc<Errors>,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::auth::StartupHandler> {
        self.login.clone()
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::ErrorHandler> {
        self.errors.clone()
    }
}

/// `pg_roles` lists the configured users, none of them superusers. (A plain value, not an
/// `Arc`: datafusion-pg-catalog's provider impl for `Arc<T>` calls itself.)
#[derive(Clone, Debug)]
struct Roles {
    users: Arc<Vec<String>>,
}

#[async_trait::async_trait]
impl PgCatalogContextProvider for Roles {
    async fn roles(&self) -> Vec<String> {
        self.users.as_ref().clone()
    }

    async fn role(&self, name: &str) -> Option<Role> {
        self.users.iter().any(|u| u == name).then(|| Role {
            name: name.to_string(),
            is_superuser: false,
            can_login: true,
            can_create_db: false,
            can_create_role: false,
            can_create_user: false,
            can_replication: false,
            grants: Vec::new(),
            inherited_roles: Vec::new(),
        })
    }
}

/// A TLS acceptor for any PEM key type, announcing the `postgresql` ALPN protocol (needed
/// for direct TLS connections). Fails instead of falling back to plaintext.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(TlsAcceptor, Vec<u8>), PgError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let file_error = |path: &std::path::Path, e: &dyn std::fmt::Display| PgError::TlsFile {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let pem = std::fs::read(cert).map_err(|e| file_error(cert, &e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, &e))?;
    if chain.is_empty() {
        return Err(file_error(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| PgError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), pem))
}
