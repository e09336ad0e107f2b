//! A connection's run-time parameters: what `SHOW`, `current_setting()`, `SET` and the
//! start-up ParameterStatus messages agree on, plus the SQL functions that read them
//! (`current_setting`, `version`, `session_user`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

/// The PostgreSQL version clients are told: what Hawking's SQL surface resembles most (its
/// catalog tables come from PostgreSQL 16). Grafana reads it as `server_version_num / 100`.
pub(crate) const PG_VERSION: &str = "16.6";
pub(crate) const PG_VERSION_NUM: &str = "160006";

pub(crate) fn server_version() -> String {
    format!("{PG_VERSION} (Hawking {})", env!("CARGO_PKG_VERSION"))
}

/// Parameters that describe the server: a `SET` may repeat their value but not change it.
const FIXED: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "max_identifier_length",
    "is_superuser",
    "in_hot_standby",
    "default_transaction_read_only",
    "transaction_read_only",
    "session_authorization",
];

/// One parameter: the name PostgreSQL spells it with (the column name of `SHOW`) and its
/// value now.
#[derive(Clone, Debug)]
struct Param {
    name: String,
    value: String,
}

#[derive(Debug)]
pub(crate) struct Settings {
    defaults: RwLock<BTreeMap<String, Param>>,
    current: RwLock<BTreeMap<String, Param>>,
    adopted: AtomicBool,
}

/// Why a `SET` was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum SetError {
    Fixed(String),
    Encoding(String),
}

impl Settings {
    pub fn new(query_timeout: Duration) -> Arc<Settings> {
        let timeout_ms = query_timeout.as_millis();
        let statement_timeout = if timeout_ms.is_multiple_of(1000) {
            format!("{}s", timeout_ms / 1000)
        } else {
            format!("{timeout_ms}ms")
        };
        let version = server_version();
        let defaults: BTreeMap<String, Param> = [
            ("server_version", version.as_str()),
            ("server_version_num", PG_VERSION_NUM),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("search_path", "\"$user\", public"),
            ("TimeZone", "UTC"),
            // pgwire writes dates year-first; the ISO part is what clients parse by.
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "postgres"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("max_identifier_length", "63"),
            ("is_superuser", "off"),
            ("in_hot_standby", "off"),
            ("default_transaction_read_only", "on"),
            ("transaction_read_only", "on"),
            ("transaction_isolation", "read committed"),
            ("application_name", ""),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
            ("statement_timeout", statement_timeout.as_str()),
            // Known once the client has logged in: see `adopt_login`.
            ("session_authorization", ""),
        ]
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                Param {
                    name: name.to_string(),
                    value: value.to_string(),
                },
            )
        })
        .collect();
        Arc::new(Settings {
            current: RwLock::new(defaults.clone()),
            defaults: RwLock::new(defaults),
            adopted: AtomicBool::new(false),
        })
    }

    /// Takes the user and application name from the client's start-up packet, once: the
    /// session exists before the login it serves.
    pub fn adopt_login(&self, metadata: &HashMap<String, String>) {
        if self.adopted.swap(true, Ordering::Relaxed) {
            return;
        }
        // Locks in the same order as `reset`: defaults, then current.
        let mut defaults = self.defaults.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        for (param, key) in [
            ("session_authorization", "user"),
            ("application_name", "application_name"),
        ] {
            if let Some(value) = metadata.get(key) {
                // RESET returns to what the client started with, as in PostgreSQL.
                for map in [&mut *defaults, &mut *current] {
                    if let Some(p) = map.get_mut(param) {
                        p.value = value.clone();
                    }
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.get(&normalise(name)).map(|p| p.value.clone())
    }

    /// The name `SHOW` puts in its column header.
    pub fn display_name(&self, name: &str) -> String {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .get(&normalise(name))
            .map(|p| p.name.clone())
            .unwrap_or_else(|| normalise(name))
    }

    pub fn all(&self) -> Vec<(String, String)> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .values()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// Records a `SET`. Unknown names are kept (clients set PostgreSQL parameters Hawking
    /// has no use for, such as `lock_timeout`); they never reach the query engine.
    pub fn set(&self, name: &str, value: &str) -> Result<(), SetError> {
        let key = normalise(name);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if FIXED.contains(&key.as_str()) {
            let now = current.get(&key).map(|p| p.value.as_str()).unwrap_or("");
            if !now.eq_ignore_ascii_case(value) {
                return Err(SetError::Fixed(key));
            }
            return Ok(());
        }
        if key == "client_encoding"
            && !matches!(
                value.to_ascii_uppercase().as_str(),
                "UTF8" | "UTF-8" | "UNICODE"
            )
        {
            return Err(SetError::Encoding(value.to_string()));
        }
        let display = current
            .get(&key)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| key.clone());
        current.insert(
            key,
            Param {
                name: display,
                value: value.to_string(),
            },
        );
        Ok(())
    }

    pub fn reset(&self, name: &str) {
        let key = normalise(name);
        let defaults = self.defaults.read().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match defaults.get(&key) {
            Some(p) => {
                current.insert(key, p.clone());
            }
            None => {
                current.remove(&key);
            }
        }
    }

    pub fn reset_all(&self) {
        let defaults = self.defaults.read().unwrap_or_else(|e| e.into_inner());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = defaults.clone();
    }
}

/// PostgreSQL folds parameter names to lower case; `SHOW TIME ZONE` is `TimeZone`.
pub(crate) fn normalise(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "time zone" | "time_zone" => "timezone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "session authorization" => "session_authorization".into(),
        _ => lower,
    }
}

/// Registers the functions that answer from `settings` on this connection's session.
pub(crate) fn register(ctx: &SessionContext, settings: &Arc<Settings>) {
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting {
        settings: settings.clone(),
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Utf8]),
                TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
            ],
            Volatility::Stable,
        ),
    }));
    let version = format!(
        "PostgreSQL {PG_VERSION} (Hawking {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    ));
    let s = settings.clone();
    ctx.register_udf(create_udf(
        "session_user",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                s.get("session_authorization"),
            )))
        }),
    ));
}

/// `current_setting(name [, missing_ok])`, as in PostgreSQL.
#[derive(Debug)]
struct CurrentSetting {
    settings: Arc<Settings>,
    signature: Signature,
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }
}

impl Eq for CurrentSetting {}

impl std::hash::Hash for CurrentSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.settings).hash(state);
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        if arg_types.is_empty() {
            return plan_err!("current_setting(name [, missing_ok]) needs a name");
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let missing_ok = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Boolean(b))) => b.unwrap_or(false),
            Some(_) => return exec_err!("current_setting: missing_ok must be a constant"),
            None => false,
        };
        let lookup = |name: &str| -> DfResult<Option<String>> {
            match self.settings.get(name) {
                Some(v) => Ok(Some(v)),
                None if missing_ok => Ok(None),
                None => exec_err!("unrecognized configuration parameter \"{name}\""),
            }
        };
        match &args.args[0] {
            ColumnarValue::Scalar(s) => {
                let name = match s {
                    ScalarValue::Utf8(n) | ScalarValue::LargeUtf8(n) | ScalarValue::Utf8View(n) => {
                        n.clone()
                    }
                    other => return exec_err!("current_setting: name must be text, not {other}"),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(match name {
                    Some(n) => lookup(&n)?,
                    None => None,
                })))
            }
            ColumnarValue::Array(names) => {
                let names = names.as_string::<i32>();
                let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
                for i in 0..names.len() {
                    if names.is_null(i) {
                        out.append_null();
                    } else {
                        out.append_option(lookup(names.value(i))?);
                    }
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_show_and_reset_agree() {
        let s = Settings::new(Duration::from_secs(60));
        s.adopt_login(&HashMap::from([(
            "user".to_string(),
            "grafana".to_string(),
        )]));
        assert_eq!(s.get("server_version_num").as_deref(), Some(PG_VERSION_NUM));
        assert_eq!(s.get("statement_timeout").as_deref(), Some("60s"));
        assert_eq!(s.get("SESSION_AUTHORIZATION").as_deref(), Some("grafana"));
        assert_eq!(s.display_name("timezone"), "TimeZone");
        assert_eq!(s.display_name("time zone"), "TimeZone");

        s.set("application_name", "grafana").unwrap();
        s.set("lock_timeout", "5s").unwrap();
        assert_eq!(s.get("Application_Name").as_deref(), Some("grafana"));
        assert_eq!(s.get("lock_timeout").as_deref(), Some("5s"));
        s.reset("application_name");
        assert_eq!(s.get("application_name").as_deref(), Some(""));
        s.reset_all();
        assert_eq!(s.get("lock_timeout"), None);
    }

    #[test]
    fn what_describes_the_server_cannot_be_changed() {
        let s = Settings::new(Duration::from_secs(60));
        assert_eq!(
            s.set("default_transaction_read_only", "off"),
            Err(SetError::Fixed("default_transaction_read_only".into()))
        );
        assert_eq!(s.set("transaction_read_only", "ON"), Ok(()));
        assert_eq!(
            s.set("client_encoding", "LATIN1"),
            Err(SetError::Encoding("LATIN1".into()))
        );
        assert_eq!(s.set("client_encoding", "utf8"), Ok(()));
    }

    #[tokio::test]
    async fn current_setting_reads_this_connections_settings() {
        let ctx = SessionContext::new();
        let s = Settings::new(Duration::from_millis(1500));
        s.adopt_login(&HashMap::from([(
            "user".to_string(),
            "grafana".to_string(),
        )]));
        register(&ctx, &s);
        s.set("search_path", "public").unwrap();
        let batches = ctx
            .sql(
                "SELECT current_setting('server_version_num'), current_setting('search_path'), \
                 current_setting('statement_timeout'), current_setting('nope', true), \
                 current_setting('session_authorization')",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let row: Vec<Option<String>> = (0..5)
            .map(|c| {
                let col = batches[0].column(c).as_string::<i32>();
                (!col.is_null(0)).then(|| col.value(0).to_string())
            })
            .collect();
        assert_eq!(
            row,
            vec![
                Some(PG_VERSION_NUM.into()),
                Some("public".into()),
                Some("1500ms".into()),
                None,
                Some("grafana".into())
            ]
        );
        let err = ctx
            .sql("SELECT current_setting('no_such_parameter')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unrecognized configuration parameter \"no_such_parameter\""),
            "{err}"
        );
    }
}
