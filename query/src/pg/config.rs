//! `[pg]`: the PostgreSQL-wire endpoint's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PgError;

/// The PostgreSQL-wire endpoint (Grafana, psql). It runs only when at least one user is
/// configured: there is no login without a password.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgConfig {
    /// Address to listen on. Default `127.0.0.1:5433` (5432 is left to a real PostgreSQL).
    pub listen: SocketAddr,
    /// Who may log in, each with exactly one of `password`, `password_env` (the name of an
    /// environment variable holding it) or `password_file` (a file holding it; one trailing
    /// newline is ignored). Default: none, and then the endpoint is off.
    pub users: Vec<PgUser>,
    /// Password exchange: `scram-sha-256` (default; the password never crosses the wire) or
    /// `md5` (for old clients).
    pub auth: PasswordAuth,
    /// PEM certificate chain for TLS (with `tls_key`). Default: no TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, RSA or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse logins that did not negotiate TLS. Default false (needs `tls_cert`).
    pub require_tls: bool,
    /// Longest a statement may run, from parsing to its last row; a client's
    /// `SET statement_timeout` can only shorten it. Default 60.
    pub query_timeout_secs: f64,
    /// Memory each connection's queries may use for sorts, joins and aggregations, in
    /// bytes; beyond it a query spills to disk where it can, else fails with an error
    /// (SQLSTATE 53200) while other connections and ingest go on. Default 268435456
    /// (256 MiB). The worst case in total is `max_connections` times this.
    pub query_memory_limit_bytes: usize,
    /// Concurrent connections; more are refused with "too many clients" (SQLSTATE 53300).
    /// Default 32.
    pub max_connections: usize,
    /// On shutdown, how long running statements may take to finish before their
    /// connections are closed. Default 5.
    pub shutdown_grace_secs: f64,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            users: Vec::new(),
            auth: PasswordAuth::ScramSha256,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            query_timeout_secs: 60.0,
            query_memory_limit_bytes: 256 << 20,
            max_connections: 32,
            shutdown_grace_secs: 5.0,
        }
    }
}

/// A login.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUser {
    /// The user name clients log in with.
    pub name: String,
    /// The password itself (prefer `password_env` or `password_file` outside tests).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password, not even into a debug log.
        f.debug_struct("PgUser")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasswordAuth {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

/// A user with the password read from wherever the configuration points.
#[derive(Clone)]
pub(crate) struct Login {
    pub name: String,
    pub password: String,
}

impl PgConfig {
    /// Whether the endpoint runs: only with users to log in.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    pub(crate) fn query_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.query_timeout_secs)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_secs.max(0.0))
    }

    /// Checks the settings and reads every password (from the file, the environment or the
    /// configuration), so a bad setting fails at start-up, not at the first login.
    pub(crate) fn logins(&self) -> Result<Vec<Login>, PgError> {
        if !(self.query_timeout_secs.is_finite() && self.query_timeout_secs > 0.0) {
            return Err(PgError::Invalid(format!(
                "query_timeout_secs must be positive, not {}",
                self.query_timeout_secs
            )));
        }
        if self.query_memory_limit_bytes == 0 {
            return Err(PgError::Invalid(
                "query_memory_limit_bytes must be positive".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(PgError::Invalid("max_connections must be positive".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(PgError::Invalid(
                "tls_cert and tls_key go together: set both or neither".into(),
            ));
        }
        if self.require_tls && self.tls_cert.is_none() {
            return Err(PgError::Invalid(
                "require_tls needs tls_cert and tls_key".into(),
            ));
        }
        let mut logins: Vec<Login> = Vec::with_capacity(self.users.len());
        for user in &self.users {
            if user.name.is_empty() || logins.iter().any(|l| l.name == user.name) {
                return Err(PgError::UserName {
                    user: user.name.clone(),
                });
            }
            let password = match (&user.password, &user.password_env, &user.password_file) {
                (Some(p), None, None) => p.clone(),
                (None, Some(var), None) => std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| PgError::PasswordEnv {
                        user: user.name.clone(),
                        var: var.clone(),
                    })?,
                (None, None, Some(path)) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
                            user: user.name.clone(),
                            path: path.display().to_string(),
                            source,
                        })?;
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_string()
                }
                _ => {
                    return Err(PgError::PasswordSource {
                        user: user.name.clone(),
                    });
                }
            };
            if password.is_empty() {
                return Err(PgError::EmptyPassword {
                    user: user.name.clone(),
                });
            }
            logins.push(Login {
                name: user.name.clone(),
                password,
            });
        }
        Ok(logins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> PgUser {
        PgUser {
            name: name.into(),
            password: None,
            password_env: None,
            password_file: None,
        }
    }

    #[test]
    fn without_users_the_endpoint_is_off() {
        assert!(!PgConfig::default().enabled());
    }

    #[test]
    fn a_password_comes_from_exactly_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut config = PgConfig {
            users: vec![
                PgUser {
                    password: Some("inline".into()),
                    ..user("a")
                },
                PgUser {
                    password_file: Some(file.clone()),
                    ..user("b")
                },
            ],
            ..PgConfig::default()
        };
        let logins = config.logins().unwrap();
        assert_eq!(logins[0].password, "inline");
        assert_eq!(logins[1].password, "from-file");

        config.users = vec![PgUser {
            password: Some("x".into()),
            password_file: Some(file),
            ..user("c")
        }];
        assert!(matches!(
            config.logins(),
            Err(PgError::PasswordSource { .. })
        ));
        config.users = vec![user("d")];
        assert!(matches!(
            config.logins(),
            Err(PgError::PasswordSource { .. })
        ));
        config.users = vec![PgUser {
            password_env: Some("HAWKING_TEST_SURELY_UNSET_VARIABLE".into()),
            ..user("e")
        }];
        let err = config.logins().err().unwrap();
        assert!(
            err.to_string()
                .contains("HAWKING_TEST_SURELY_UNSET_VARIABLE"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_users_and_half_tls_settings_are_refused() {
        let mut config = PgConfig::default();
        let with_pw = || PgUser {
            password: Some("pw".into()),
            ..user("grafana")
        };
        config.users = vec![with_pw(), with_pw()];
        assert!(matches!(config.logins(), Err(PgError::UserName { .. })));
        config.users = vec![with_pw()];
        config.tls_cert = Some("cert.pem".into());
        assert!(config.logins().is_err());
        config.tls_cert = None;
        config.require_tls = true;
        assert!(config.logins().is_err());
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let u = PgUser {
            password: Some("s3cret".into()),
            ..user("grafana")
        };
        assert!(!format!("{u:?}").contains("s3cret"));
    }
}
