//! Enricher configuration: the clusters to watch, which exporters' flows belong to which
//! cluster, and how long flows wait for history.

use std::path::PathBuf;
use std::str::FromStr;

use hawking_schemas::cidr::{BadCidr, Cidr};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::attribute::ClusterSelector;
use crate::history::IpHistory;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnricherConfig {
    /// How late history may arrive (the watch's lag): a flow is attributed once this long
    /// has passed since it ended. Flows that ended longer ago than that when they arrive (as
    /// exporters' timed-out flows do) are attributed at once; recent ones wait this long
    /// after they are received. While a watched cluster is out of sync every flow waits.
    /// Default 5.
    pub grace_secs: f64,
    /// Most flows held waiting; beyond it the oldest are attributed early (counted in
    /// `hawking_enricher_early_attributions_total`). Default 2000000.
    pub max_held_flows: usize,
    /// Clusters whose history attributes flows. None: flows are stored unattributed.
    pub clusters: Vec<ClusterConfig>,
    /// How flows seen outside a source NAT are mapped back through its translations.
    pub nat: NatConfig,
}

/// Source-NAT translations (from NAT session logging, RFC 8158, or `hawking nat-agent` on
/// nodes). A NAT's exporter address belongs to a cluster through that cluster's
/// `exporters`, like a flow exporter's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// How far apart the NAT's clock and a flow exporter's clock may be: a translation
    /// covers flows up to this long before it opened and after it closed. Two translations
    /// of one outside 5-tuple that close together make such flows `ambiguous`. Default 1000.
    pub clock_skew_ms: u64,
    /// Seconds a closed translation is kept in memory for late flows (long active timeouts,
    /// the grace period). Everything stays in `nat_history`. Default 7200.
    pub keep_closed_secs: u64,
    /// Seconds a NAT's last sign of life (an event, or its event templates, which
    /// `hawking nat-agent` re-sends every `--template-interval`) vouches for it. A flow
    /// through its outside addresses at a time it was silent longer, with no translation
    /// covering it, is `unknown` rather than the node: the translation may be among what
    /// was lost. Set above the NAT's template refresh interval; 0 trusts silence. Default 600.
    pub silent_after_secs: u64,
    /// Seconds an open TCP translation lasts when its delete never comes (conntrack's
    /// established timeout). Flows on its 5-tuple after that are `unknown`. 0: forever.
    /// Default 432000.
    pub idle_close_tcp_secs: u64,
    /// The same for UDP (conntrack's UDP stream timeout). Default 120.
    pub idle_close_udp_secs: u64,
    /// The same for other protocols with ports (SCTP, DCCP, UDP-Lite). Default 600.
    pub idle_close_other_secs: u64,
}

impl Default for NatConfig {
    fn default() -> Self {
        let trust = crate::nat::NatTrust::default();
        let secs = |us: i64| (us / 1_000_000) as u64;
        NatConfig {
            clock_skew_ms: 1000,
            keep_closed_secs: 7200,
            silent_after_secs: secs(trust.silent_after),
            idle_close_tcp_secs: secs(trust.idle_tcp),
            idle_close_udp_secs: secs(trust.idle_udp),
            idle_close_other_secs: secs(trust.idle_other),
        }
    }
}

impl NatConfig {
    /// The index's rules for silence and lost deletes.
    pub fn trust(&self) -> crate::nat::NatTrust {
        let us = |secs: u64| (secs as i64).saturating_mul(1_000_000);
        crate::nat::NatTrust {
            silent_after: us(self.silent_after_secs),
            idle_tcp: us(self.idle_close_tcp_secs),
            idle_udp: us(self.idle_close_udp_secs),
            idle_other: us(self.idle_close_other_secs),
        }
    }
}

impl Default for EnricherConfig {
    fn default() -> Self {
        EnricherConfig {
            grace_secs: 5.0,
            max_held_flows: 2_000_000,
            clusters: Vec::new(),
            nat: NatConfig::default(),
        }
    }
}

/// One Kubernetes cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name in the `*_cluster` columns and in `ip_history`.
    pub name: String,
    /// Watch the cluster live (default true). False: its history comes from imports only.
    pub watch: Option<bool>,
    /// Use the in-cluster service account (when Hawking runs in this cluster).
    pub in_cluster: bool,
    /// kubeconfig file (default: $KUBECONFIG or ~/.kube/config) and context to use.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// An API server URL used as is, without authentication (e.g. `kubectl proxy`).
    pub api_url: Option<String>,
    /// Exporters whose flows belong to this cluster: addresses or ranges, optionally with
    /// an observation domain (`192.168.10.0/24`, `192.168.10.5@7`). Exporters no cluster
    /// names are looked up in every cluster (an owner is named only if exactly one has it).
    pub exporters: Vec<ExporterMatch>,
    /// Pod ranges beyond those nodes announce in `spec.podCIDRs` (addresses in them that no
    /// history covers are `unknown`, never `external`).
    pub pod_cidrs: Vec<Cidr>,
    /// Service ranges (cluster IPs).
    pub service_cidrs: Vec<Cidr>,
}

/// Exporters an entry of a cluster's `exporters` names: an address range, and optionally
/// one observation domain (`192.168.10.5@7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExporterMatch {
    pub range: Cidr,
    pub domain: Option<u32>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadExporter {
    #[error(transparent)]
    Range(#[from] BadCidr),
    #[error(
        "bad observation domain in exporter {0:?} (expected ADDRESS[/LEN]@DOMAIN, e.g. 192.168.10.5@7)"
    )]
    Domain(String),
}

impl FromStr for ExporterMatch {
    type Err = BadExporter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (range, domain) = match s.split_once('@') {
            Some((range, domain)) => (
                range,
                Some(
                    domain
                        .trim()
                        .parse()
                        .map_err(|_| BadExporter::Domain(s.to_string()))?,
                ),
            ),
            None => (s, None),
        };
        Ok(ExporterMatch {
            range: range.parse()?,
            domain,
        })
    }
}

impl std::fmt::Display for ExporterMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.domain {
            Some(d) => write!(f, "{}@{d}", self.range),
            None => write!(f, "{}", self.range),
        }
    }
}

impl Serialize for ExporterMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExporterMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl ClusterConfig {
    pub fn watched(&self) -> bool {
        self.watch.unwrap_or(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("two clusters are named {0:?}")]
    Duplicate(String),
    #[error("a cluster has no name")]
    Unnamed,
}

impl EnricherConfig {
    /// Registers every cluster in `history` (with its configured ranges) and returns the
    /// exporter → cluster selector.
    pub fn apply(&self, history: &mut IpHistory) -> Result<ClusterSelector, ConfigError> {
        let mut selector = ClusterSelector::default();
        let mut seen = std::collections::HashSet::new();
        for c in &self.clusters {
            if c.name.is_empty() {
                return Err(ConfigError::Unnamed);
            }
            if !seen.insert(c.name.clone()) {
                return Err(ConfigError::Duplicate(c.name.clone()));
            }
            let id = history.cluster(&c.name);
            selector.add_cluster(id);
            for r in c.pod_cidrs.iter().chain(&c.service_cidrs) {
                history.add_range(id, *r);
            }
            for e in &c.exporters {
                selector.add_rule(e.range, e.domain, id);
            }
        }
        Ok(selector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::ip::parse_ip;

    #[test]
    fn exporters_with_domains_select_their_cluster() {
        let config = EnricherConfig {
            clusters: vec![
                ClusterConfig {
                    name: "eu".into(),
                    exporters: vec!["192.168.1.0/24".parse().unwrap()],
                    ..Default::default()
                },
                ClusterConfig {
                    name: "us".into(),
                    exporters: vec!["192.168.1.5@7".parse().unwrap()],
                    pod_cidrs: vec!["10.4.0.0/16".parse().unwrap()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut h = IpHistory::default();
        let sel = config.apply(&mut h).unwrap();
        let mut out = vec![];
        sel.clusters_for(parse_ip("192.168.1.5").unwrap(), 7, &mut out);
        assert_eq!(out, vec![0, 1]);
        sel.clusters_for(parse_ip("192.168.1.5").unwrap(), 8, &mut out);
        assert_eq!(out, vec![0]);
        sel.clusters_for(parse_ip("10.0.0.1").unwrap(), 0, &mut out);
        assert_eq!(out, vec![0, 1], "unnamed exporters consult every cluster");
    }

    #[test]
    fn bad_ranges_domains_and_duplicates_are_refused() {
        assert!("10.4.0.0/40".parse::<ExporterMatch>().is_err());
        assert!(matches!(
            "192.168.1.5@x".parse::<ExporterMatch>(),
            Err(BadExporter::Domain(_))
        ));
        assert_eq!(
            "192.168.1.5@7"
                .parse::<ExporterMatch>()
                .unwrap()
                .to_string(),
            "192.168.1.5/32@7"
        );
        let toml_err =
            serde_json::from_str::<ClusterConfig>(r#"{"pod_cidrs": ["10.4.0.0/40"]}"#).unwrap_err();
        assert!(toml_err.to_string().contains("10.4.0.0/40"), "{toml_err}");
        let dup = EnricherConfig {
            clusters: vec![
                ClusterConfig {
                    name: "eu".into(),
                    ..Default::default()
                },
                ClusterConfig {
                    name: "eu".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(matches!(
            dup.apply(&mut IpHistory::default()),
            Err(ConfigError::Duplicate(_))
        ));
    }
}
