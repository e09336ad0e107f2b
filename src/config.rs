//! The `hawking serve` configuration: one TOML file (optional) whose every section has
//! defaults, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hawking_collector::NetflowSourceConfig;
use hawking_collector::source::capture::CaptureSourceConfig;
use hawking_collector::source::flow_file::FlowFileSourceConfig;
use hawking_collector::source::hubble_grpc::HubbleGrpcSourceConfig;
use hawking_enricher::EnricherConfig;
use hawking_kafka::source::StartFrom;
use hawking_kafka::{KafkaInputFormat, KafkaSinkConfig, KafkaSourceConfig};
use hawking_query::pg::PgConfig;
use hawking_query::{QueryOptions, StoreConfig, StoreRoot};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the Parquet store lives: a local directory, which also holds this machine's
    /// state and spools, or `s3://bucket/prefix` for an S3-compatible object store (reached
    /// as `[store.s3]` and the `AWS_*` environment variables say). Default `./data`.
    pub data_dir: Option<String>,
    /// This machine's own state (NetFlow templates, the watches' last moment in sync, flow
    /// files' read offsets) and Kafka spools, when the store is on an object store: they
    /// belong to the machine the exporters and brokers talk to, not to the shared store.
    /// Default `./hawking-local`. Ignored for a local store, which keeps them.
    pub local_dir: Option<PathBuf>,
    /// NetFlow v5/v9 and IPFIX over UDP, and IPFIX over TCP when `tcp_listen` is set.
    pub netflow: NetflowSourceConfig,
    /// Packets of an interface metered into flows; off unless an interface is named.
    pub capture: CaptureSourceConfig,
    /// In-cluster exporters' JSON lines (Hubble, NetObserv), each file a source of its own.
    pub flow_files: Vec<FlowFileSourceConfig>,
    /// Hubble servers whose flows are followed over the Observer gRPC API.
    pub hubble_grpc: Vec<HubbleGrpcSourceConfig>,
    /// Kafka topics consumed in a consumer group (goflow2's messages), offsets committed
    /// once the flows are stored.
    pub kafka_sources: Vec<KafkaSourceConfig>,
    /// How accepted flows become files.
    pub store: StoreConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Query engine settings (for `hawking sql` and served queries).
    pub query: QueryOptions,
    /// Kubernetes clusters and attribution.
    pub enricher: EnricherConfig,
    /// The PostgreSQL-wire endpoint (Grafana, psql); off unless users are configured.
    pub pg: PgConfig,
    /// Attributed flows to a Kafka topic; off unless brokers are set.
    pub kafka: KafkaSinkConfig,
    /// Collectors and enrichers on separate machines, meeting on a Kafka topic.
    pub roles: RolesConfig,
}

/// What one `hawking serve` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Receive, attribute and store (one machine).
    #[default]
    All,
    /// Receive and decode (NetFlow/IPFIX, capture, flow files, Hubble), and publish the
    /// flows raw to `[roles].topic`, keyed by exporter; no history, no store.
    Collector,
    /// Consume the raw flows in consumer group `[roles].group_id` (and any
    /// `[[kafka_sources]]`), attribute and store them; offsets are committed once stored.
    Enricher,
}

/// `[roles]`: where collectors publish raw flows and enrichers consume them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolesConfig {
    /// `all` (default), `collector` or `enricher`; `hawking serve --role` overrides it.
    pub role: Role,
    /// Bootstrap brokers, `host:port[,...]`; required by the collector and enricher roles.
    pub brokers: Option<String>,
    /// The raw flows topic. Default `hawking.raw`.
    pub topic: String,
    /// The enrichers' consumer group. Default `hawking-enrichers`.
    pub group_id: String,
    /// Bytes a collector may spool while the broker cannot take its messages (default
    /// 1073741824); beyond it they are dropped and counted (component `kafka_raw`,
    /// reason `spool_full`). Spooled in `<local_dir>/spool/kafka-raw`.
    pub spool_max_bytes: u64,
    /// Further librdkafka properties for both roles' clients, passed as given.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            role: Role::All,
            brokers: None,
            topic: "hawking.raw".into(),
            group_id: "hawking-enrichers".into(),
            spool_max_bytes: 1 << 30,
            properties: Default::default(),
        }
    }
}

impl RolesConfig {
    fn brokers(&self) -> anyhow::Result<String> {
        self.brokers.clone().with_context(|| {
            format!(
                "--role {:?} needs [roles] brokers: the Kafka the roles meet on",
                self.role
            )
        })
    }

    /// The collector's publisher of raw flows.
    pub fn publisher(&self) -> anyhow::Result<KafkaSinkConfig> {
        Ok(KafkaSinkConfig {
            brokers: Some(self.brokers()?),
            topic: self.topic.clone(),
            spool_max_bytes: self.spool_max_bytes,
            properties: self.properties.clone(),
            ..Default::default()
        })
    }

    /// The enricher's source of raw flows.
    pub fn consumer(&self) -> anyhow::Result<KafkaSourceConfig> {
        Ok(KafkaSourceConfig {
            brokers: self.brokers()?,
            topics: vec![self.topic.clone()],
            group_id: self.group_id.clone(),
            format: KafkaInputFormat::HawkingRaw,
            exporter: None,
            start_from: StartFrom::Earliest,
            properties: self.properties.clone(),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// Where the store lives, as given (`./data` by default).
    pub fn data_location(&self) -> String {
        self.data_dir
            .clone()
            .unwrap_or_else(|| "./data".to_string())
    }

    /// The store, opened as `data_dir` and `[store.s3]` say.
    pub fn store_root(&self) -> anyhow::Result<StoreRoot> {
        StoreRoot::open(&self.data_location(), &self.store.s3).context("data_dir")
    }

    /// The directory of this machine's state and spools: the store's own directory when it
    /// is local, else `local_dir`.
    pub fn local_dir(&self) -> PathBuf {
        let data = self.data_location();
        if hawking_query::store::root::names_a_bucket(&data) {
            self.local_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./hawking-local"))
        } else {
            PathBuf::from(data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hawking.example.toml");
        let example = Config::load(&path).unwrap();
        let defaults = Config::default();
        assert_eq!(example.data_location(), defaults.data_location());
        assert_eq!(example.local_dir, None);
        assert_eq!(example.store.s3, defaults.store.s3);
        assert_eq!(example.netflow.listen, defaults.netflow.listen);
        assert_eq!(example.netflow.tcp_listen, None);
        assert_eq!(
            example.netflow.max_tcp_connections,
            defaults.netflow.max_tcp_connections
        );
        assert_eq!(
            example.netflow.receive_buffer_bytes,
            defaults.netflow.receive_buffer_bytes
        );
        assert_eq!(
            example.netflow.decoder.pending_max_bytes,
            defaults.netflow.decoder.pending_max_bytes
        );
        assert_eq!(
            example.store.flush_interval_secs,
            defaults.store.flush_interval_secs
        );
        assert_eq!(
            example.store.writer.zstd_level,
            defaults.store.writer.zstd_level
        );
        assert_eq!(
            example.store.compaction.settle_secs,
            defaults.store.compaction.settle_secs
        );
        assert_eq!(
            example.store.compaction.writer.zstd_level,
            defaults.store.compaction.writer.zstd_level
        );
        assert_eq!(example.store.retention, defaults.store.retention);
        assert_eq!(example.metrics.listen, defaults.metrics.listen);
        assert_eq!(example.kafka, defaults.kafka);
        assert_eq!(example.roles, defaults.roles);
        assert_eq!(example.pg.listen, defaults.pg.listen);
        assert_eq!(example.pg.auth, defaults.pg.auth);
        assert!(example.pg.users.is_empty() && !example.pg.enabled());
        assert_eq!(
            example.pg.query_timeout_secs,
            defaults.pg.query_timeout_secs
        );
        assert_eq!(
            example.pg.query_memory_limit_bytes,
            defaults.pg.query_memory_limit_bytes
        );
        assert_eq!(example.pg.max_connections, defaults.pg.max_connections);
        assert_eq!(example.pg.require_tls, defaults.pg.require_tls);
        assert_eq!(
            example.pg.shutdown_grace_secs,
            defaults.pg.shutdown_grace_secs
        );
    }

    #[test]
    fn pg_users_name_where_their_password_is() {
        let config: Config = toml::from_str(
            "[pg]\nlisten = \"127.0.0.1:0\"\nusers = [{ name = \"grafana\", password_env = \"GRAFANA_PW\" }]\n",
        )
        .unwrap();
        assert!(config.pg.enabled());
        assert_eq!(
            config.pg.users[0].password_env.as_deref(),
            Some("GRAFANA_PW")
        );
        let err = toml::from_str::<Config>("[pg]\nusers = [{ name = \"x\", pass = \"y\" }]\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn the_kubernetes_manifest_carries_a_valid_config() {
        // The ConfigMap's `hawking.toml: |` block, de-indented as YAML does.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/hawking.yaml");
        let manifest = std::fs::read_to_string(path).unwrap();
        let block: String = manifest
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("hawking.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let config: Config = toml::from_str(&block).unwrap();
        let cluster = &config.enricher.clusters[0];
        assert!(cluster.in_cluster, "{block}");
        let exporters: Vec<String> = cluster.exporters.iter().map(|e| e.to_string()).collect();
        assert_eq!(exporters, ["10.0.0.0/24", "192.168.10.0/24"]);
        assert_eq!(config.netflow.listen.port(), 2055);
        assert_eq!(
            config.netflow.tcp_listen,
            Some("0.0.0.0:4739".parse().unwrap())
        );
    }

    #[test]
    fn unknown_settings_are_refused() {
        let err = toml::from_str::<Config>("[netflow]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_bad_range_is_refused_where_it_is_written() {
        let err = toml::from_str::<Config>(
            "[[enricher.clusters]]\nname = \"eu\"\nexporters = [\"10.0.0.0/24\", \"10.1.0.0/99\"]\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("10.1.0.0/99") && text.contains("line 3"),
            "{text}"
        );
    }
}
