//! The enrichment stage's own metrics: attribution outcomes, held flows, the history's size
//! and gaps, and what NAT session events did.

use hawking_schemas::Attribution;
use hawking_schemas::telemetry::Telemetry;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::Clusters;
use crate::attribute::BatchAttribution;
use crate::nat::{NatCounters, NatIndex};

const ATTRIBUTIONS: [Attribution; 7] = [
    Attribution::Pod,
    Attribution::Snat,
    Attribution::Node,
    Attribution::Service,
    Attribution::External,
    Attribution::Ambiguous,
    Attribution::Unknown,
];

pub(super) struct StageMetrics {
    endpoints: IntCounterVec,
    pub early_attributions: IntCounter,
    pub settled_flows: IntCounter,
    pub held_flows: IntGauge,
    history_intervals: IntGauge,
    history_owners: IntGauge,
    cluster_in_gap: IntGaugeVec,
    nat_translations: IntGauge,
    nat_events: IntCounterVec,
    reported_checks: IntCounterVec,
    pub identities_sighted: IntCounter,
}

impl StageMetrics {
    pub fn register(t: &Telemetry) -> prometheus::Result<Self> {
        Ok(StageMetrics {
            endpoints: t.counter_vec(
                "hawking_endpoints_attributed_total",
                "Flow endpoints attributed, by attribution",
                &["attribution"],
            )?,
            early_attributions: t.counter(
                "hawking_enricher_early_attributions_total",
                "Flows attributed before their grace period ended because too many were held",
            )?,
            settled_flows: t.counter(
                "hawking_enricher_settled_flows_total",
                "Flows attributed without waiting: they ended more than a grace period before \
                 they arrived",
            )?,
            held_flows: t.gauge(
                "hawking_enricher_held_flows",
                "Flows waiting out the grace period",
            )?,
            history_intervals: t.gauge(
                "hawking_history_intervals",
                "Address intervals in the history index",
            )?,
            history_owners: t.gauge(
                "hawking_history_owners",
                "Pods, nodes and services in the history index",
            )?,
            cluster_in_gap: t.gauge_vec(
                "hawking_history_cluster_in_gap",
                "1 while a cluster's watch is down (its flows are unknown)",
                &["cluster"],
            )?,
            nat_translations: t.gauge(
                "hawking_nat_translations",
                "Source-NAT translations held in memory (open, or closed recently)",
            )?,
            nat_events: t.counter_vec(
                "hawking_nat_session_events_total",
                "NAT session events applied, by effect: opened, closed, superseded (a new \
                 session on a 5-tuple whose translation was open), duplicate, \
                 unmatched_delete (its create was never seen), portless (no ports to map: ignored), \
                 from_the_future (more than a minute ahead of this clock: dropped)",
                &["effect"],
            )?,
            reported_checks: t.counter_vec(
                "hawking_reported_identity_checks_total",
                "Flow endpoints whose owner an in-cluster exporter (Hubble, NetObserv) named, \
                 compared with Hawking's attribution at the flow's time: result agree, or \
                 conflict (either the history or the export is wrong)",
                &["side", "result"],
            )?,
            identities_sighted: t.counter(
                "hawking_reported_identities_sighted_total",
                "Endpoint identities from exporters' flows kept as ip_history evidence",
            )?,
        })
    }

    /// Counts one side's comparisons of reported identities with the attribution.
    pub fn count_reported(&self, source: bool, found: &[Option<bool>]) {
        let side = if source { "src" } else { "dst" };
        let conflicts = found.iter().filter(|f| **f == Some(true)).count() as u64;
        let agreed = found.iter().filter(|f| **f == Some(false)).count() as u64;
        if conflicts > 0 {
            self.reported_checks
                .with_label_values(&[side, "conflict"])
                .inc_by(conflicts);
        }
        if agreed > 0 {
            self.reported_checks
                .with_label_values(&[side, "agree"])
                .inc_by(agreed);
        }
    }

    pub fn count_endpoints(&self, attribution: &BatchAttribution) {
        let mut counts = [0u64; ATTRIBUTIONS.len()];
        for r in attribution.src.iter().chain(&attribution.dst) {
            counts[r.attribution as usize] += 1;
        }
        for (kind, n) in ATTRIBUTIONS.into_iter().zip(counts) {
            if n > 0 {
                self.endpoints.with_label_values(&[kind.as_str()]).inc_by(n);
            }
        }
    }

    pub fn nat_event(&self, effect: &str, n: u64) {
        if n > 0 {
            self.nat_events.with_label_values(&[effect]).inc_by(n);
        }
    }

    /// Publishes what the NAT index did since `before`.
    pub fn publish_nat(&self, now: &NatCounters, before: &NatCounters, index: &NatIndex) {
        for (effect, n) in [
            ("opened", now.opened - before.opened),
            ("closed", now.closed - before.closed),
            ("superseded", now.superseded - before.superseded),
            ("duplicate", now.duplicates - before.duplicates),
            (
                "unmatched_delete",
                now.unmatched_deletes - before.unmatched_deletes,
            ),
            ("portless", now.portless - before.portless),
            ("idle_closed", now.idle_closed - before.idle_closed),
        ] {
            self.nat_event(effect, n);
        }
        self.nat_translations.set(index.translation_count() as i64);
    }

    pub fn publish_gaps(&self, c: &Clusters) {
        for cluster in &c.watched {
            self.cluster_in_gap
                .with_label_values(&[cluster])
                .set(c.keeper.is_down(cluster) as i64);
        }
    }

    pub fn publish_history(&self, c: &Clusters) {
        let history = c.keeper.history();
        self.history_intervals.set(history.interval_count() as i64);
        self.history_owners.set(history.owners.len() as i64);
    }
}
