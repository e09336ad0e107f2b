//! Logins: SCRAM-SHA-256 or MD5 against the configured users, TLS when required, failures
//! counted. pgwire's SASL and MD5 handlers do the exchanges; they keep per-login state, so
//! one is made per connection.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::md5pass::{
    Md5PasswordAuthStartupHandler, hash_md5_password,
};
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{
    SCRAM_ITERATIONS, ScramAuth, gen_salted_password,
};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::{ClientInfo, ConnectionManager, METADATA_USER};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::Sink;

use super::PasswordAuth;
use super::config::Login;
use super::metrics::PgMetrics;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS random source failing is not something a login can recover from; a fixed
    // salt would only weaken hashing, never let a wrong password in, so fall back quietly.
    let _ = getrandom::fill(&mut bytes);
    bytes
}

/// SCRAM verifiers, computed once at start-up as PostgreSQL stores them (salt and
/// salted password), so a login costs no key derivation.
#[derive(Debug)]
pub(crate) struct ScramUsers {
    verifiers: HashMap<String, ([u8; 16], Vec<u8>)>,
}

impl ScramUsers {
    pub fn new(logins: &[Login]) -> ScramUsers {
        let verifiers = logins
            .iter()
            .map(|l| {
                let salt = random_bytes::<16>();
                let salted = gen_salted_password(&l.password, &salt, SCRAM_ITERATIONS);
                (l.name.clone(), (salt, salted))
            })
            .collect();
        ScramUsers { verifiers }
    }
}

#[async_trait]
impl AuthSource for ScramUsers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().ok_or(PgWireError::UserNameRequired)?;
        match self.verifiers.get(user) {
            Some((salt, salted)) => Ok(Password::new(Some(salt.to_vec()), salted.clone())),
            // An unknown user goes through the whole exchange against a random verifier and
            // fails like a wrong password: which names exist is not revealed.
            None => Ok(Password::new(
                Some(random_bytes::<16>().to_vec()),
                random_bytes::<32>().to_vec(),
            )),
        }
    }
}

/// MD5 needs the password itself: the hash the client sends is salted per login.
pub(crate) struct Md5Users {
    passwords: HashMap<String, String>,
}

impl Debug for Md5Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Md5Users")
            .field("users", &self.passwords.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Md5Users {
    pub fn new(logins: &[Login]) -> Md5Users {
        Md5Users {
            passwords: logins
                .iter()
                .map(|l| (l.name.clone(), l.password.clone()))
                .collect(),
        }
    }
}

#[async_trait]
impl AuthSource for Md5Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().ok_or(PgWireError::UserNameRequired)?;
        let salt = random_bytes::<4>().to_vec();
        let expected = match self.passwords.get(user) {
            Some(password) => hash_md5_password(user, password, &salt),
            None => format!("md5-unknown-user-{:x?}", random_bytes::<16>()),
        };
        Ok(Password::new(Some(salt), expected.into_bytes()))
    }
}

/// What every connection's login shares.
pub(crate) struct Authenticator {
    pub method: PasswordAuth,
    pub scram: Arc<ScramUsers>,
    pub md5: Arc<Md5Users>,
    /// PEM of the TLS certificate: offers SCRAM-SHA-256-PLUS (channel binding) over TLS.
    pub tls_cert_pem: Option<Vec<u8>>,
    pub require_tls: bool,
    pub params: Arc<DefaultServerParameterProvider>,
    pub connections: Arc<ConnectionManager>,
    pub metrics: PgMetrics,
}

impl Authenticator {
    /// A fresh handler for one connection (the exchanges keep state in the handler).
    pub fn for_connection(&self) -> LoginHandler {
        let inner = match self.method {
            PasswordAuth::ScramSha256 => {
                let mut scram = ScramAuth::new(self.scram.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                if let Some(pem) = &self.tls_cert_pem
                    && let Err(e) = scram.configure_certificate(pem)
                {
                    tracing::warn!(error = %e, "SCRAM channel binding unavailable");
                }
                Method::Scram(
                    SASLAuthStartupHandler::new(self.params.clone())
                        .with_scram(scram)
                        .with_connection_manager(self.connections.clone()),
                )
            }
            PasswordAuth::Md5 => Method::Md5(
                Md5PasswordAuthStartupHandler::new(self.md5.clone(), self.params.clone())
                    .with_connection_manager(self.connections.clone()),
            ),
        };
        LoginHandler {
            inner,
            require_tls: self.require_tls,
            metrics: self.metrics.clone(),
        }
    }
}

enum Method {
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
    Md5(Md5PasswordAuthStartupHandler<Md5Users, DefaultServerParameterProvider>),
}

pub(crate) struct LoginHandler {
    inner: Method,
    require_tls: bool,
    metrics: PgMetrics,
}

#[async_trait]
impl StartupHandler for LoginHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls
            && !client.is_secure()
            && matches!(message, PgWireFrontendMessage::Startup(_))
        {
            self.metrics.auth_failures.inc();
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server requires TLS (sslmode=require)".into(),
            ))));
        }
        let result = match &self.inner {
            Method::Scram(h) => h.on_startup(client, message).await,
            Method::Md5(h) => h.on_startup(client, message).await,
        };
        match result {
            Err(PgWireError::InvalidPassword(_)) => {
                self.metrics.auth_failures.inc();
                // SCRAM clients leave the user name out of their messages: name the user
                // from the start-up packet, as PostgreSQL does.
                let user = client.metadata().get(METADATA_USER).cloned();
                Err(PgWireError::InvalidPassword(user.unwrap_or_default()))
            }
            Err(e) => {
                if matches!(
                    e,
                    PgWireError::UserNameRequired
                        | PgWireError::InvalidScramMessage(_)
                        | PgWireError::UnsupportedSASLAuthMethod(_)
                        | PgWireError::InvalidSASLState
                ) {
                    self.metrics.auth_failures.inc();
                }
                Err(e)
            }
            ok => ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Vec<Login> {
        vec![Login {
            name: "grafana".into(),
            password: "pw".into(),
        }]
    }

    #[tokio::test]
    async fn scram_verifiers_match_the_password_and_unknown_users_get_a_decoy() {
        let users = ScramUsers::new(&login());
        let known = users
            .get_password(&LoginInfo::new(Some("grafana"), None, "127.0.0.1".into()))
            .await
            .unwrap();
        let salt = known.salt().unwrap();
        assert_eq!(
            known.password(),
            gen_salted_password("pw", salt, SCRAM_ITERATIONS)
        );
        let unknown = users
            .get_password(&LoginInfo::new(Some("mallory"), None, "127.0.0.1".into()))
            .await
            .unwrap();
        assert!(unknown.salt().is_some(), "the exchange proceeds");
        assert_ne!(
            unknown.password(),
            gen_salted_password("pw", unknown.salt().unwrap(), SCRAM_ITERATIONS)
        );
    }

    #[tokio::test]
    async fn md5_hashes_are_salted_per_login() {
        let users = Md5Users::new(&login());
        let info = LoginInfo::new(Some("grafana"), None, "127.0.0.1".into());
        let a = users.get_password(&info).await.unwrap();
        let b = users.get_password(&info).await.unwrap();
        assert_eq!(
            a.password(),
            hash_md5_password("grafana", "pw", a.salt().unwrap()).as_bytes()
        );
        assert_ne!(a.salt(), b.salt());
    }
}
