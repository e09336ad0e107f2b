//! Prometheus counters of the NetFlow/IPFIX listener, per exporter address. The decoder
//! accumulates plain integers; they are added here once per batch, never per flow.

use std::net::IpAddr;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::netflow::ExporterCounters;

#[derive(Clone)]
pub struct CollectorMetrics {
    packets: IntCounterVec,
    packet_bytes: IntCounterVec,
    flows: IntCounterVec,
    flow_bytes: IntCounterVec,
    decode_errors: IntCounterVec,
    sets_held: IntCounterVec,
    sets_replayed: IntCounterVec,
    sets_dropped: IntCounterVec,
    flows_timed_by_export: IntCounterVec,
    templates_learned: IntCounterVec,
    options_records: IntCounterVec,
    nat_events: IntCounterVec,
    /// Datagrams the kernel dropped because the socket buffer was full.
    pub socket_drops: IntCounter,
    /// Data sets currently held for a template.
    pub pending_sets: IntGauge,
    /// Exporter scopes with template state.
    pub scopes: IntGauge,
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl CollectorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ex = &["exporter"];
        let socket_drops = IntCounter::new(
            "hawking_netflow_socket_drops_total",
            "Datagrams dropped by the kernel because the listener's receive buffer was full",
        )?;
        registry.register(Box::new(socket_drops.clone()))?;
        let pending_sets = IntGauge::new(
            "hawking_netflow_pending_sets",
            "Data sets held waiting for their template",
        )?;
        registry.register(Box::new(pending_sets.clone()))?;
        let scopes = IntGauge::new(
            "hawking_netflow_scopes",
            "Exporter template scopes (address, port, version, domain) with state",
        )?;
        registry.register(Box::new(scopes.clone()))?;
        Ok(CollectorMetrics {
            packets: counter_vec(
                registry,
                "hawking_netflow_packets_total",
                "Datagrams received",
                ex,
            )?,
            packet_bytes: counter_vec(
                registry,
                "hawking_netflow_packet_bytes_total",
                "Datagram payload bytes received",
                ex,
            )?,
            flows: counter_vec(registry, "hawking_flows_total", "Flow records decoded", ex)?,
            flow_bytes: counter_vec(
                registry,
                "hawking_flow_bytes_total",
                "Sum of decoded flows' byte counters, scaled by sampling rate",
                ex,
            )?,
            decode_errors: counter_vec(
                registry,
                "hawking_decode_errors_total",
                "Datagrams (or parts of them) that could not be decoded, by reason",
                &["exporter", "reason"],
            )?,
            sets_held: counter_vec(
                registry,
                "hawking_netflow_sets_held_total",
                "Data sets held because their template was not yet known",
                ex,
            )?,
            sets_replayed: counter_vec(
                registry,
                "hawking_netflow_sets_replayed_total",
                "Held data sets decoded once their template arrived",
                ex,
            )?,
            sets_dropped: counter_vec(
                registry,
                "hawking_flows_dropped_total",
                "Flow data dropped, by reason; for reason=missing_template the unit is data sets \
                 (a set whose template never arrives cannot be split into records)",
                &["exporter", "reason"],
            )?,
            flows_timed_by_export: counter_vec(
                registry,
                "hawking_flows_timed_by_export_total",
                "Flows whose record carried no usable time element; the export time was used",
                ex,
            )?,
            templates_learned: counter_vec(
                registry,
                "hawking_netflow_templates_learned_total",
                "New or changed templates learned",
                ex,
            )?,
            options_records: counter_vec(
                registry,
                "hawking_netflow_options_records_total",
                "Options data records applied (sampling, system init time)",
                ex,
            )?,
            nat_events: counter_vec(
                registry,
                "hawking_netflow_nat_events_total",
                "NAT session events (RFC 8158 records) by outcome: accepted, or dropped when \
                 not a create/delete naming both the inside and the outside address",
                &["exporter", "outcome"],
            )?,
            socket_drops,
            pending_sets,
            scopes,
        })
    }

    /// Adds one exporter's accumulated counters.
    pub fn add(&self, exporter: IpAddr, c: &ExporterCounters) {
        let ex = exporter.to_string();
        let l = &[ex.as_str()];
        self.packets.with_label_values(l).inc_by(c.packets);
        self.packet_bytes
            .with_label_values(l)
            .inc_by(c.packet_bytes);
        self.flows.with_label_values(l).inc_by(c.flows);
        self.flow_bytes.with_label_values(l).inc_by(c.flow_bytes);
        for (reason, n) in &c.decode_errors {
            self.decode_errors
                .with_label_values(&[ex.as_str(), reason])
                .inc_by(*n);
        }
        if c.sets_held > 0 {
            self.sets_held.with_label_values(l).inc_by(c.sets_held);
        }
        if c.sets_replayed > 0 {
            self.sets_replayed
                .with_label_values(l)
                .inc_by(c.sets_replayed);
        }
        if c.sets_dropped_missing_template > 0 {
            self.sets_dropped
                .with_label_values(&[ex.as_str(), "missing_template"])
                .inc_by(c.sets_dropped_missing_template);
        }
        if c.flows_timed_by_export > 0 {
            self.flows_timed_by_export
                .with_label_values(l)
                .inc_by(c.flows_timed_by_export);
        }
        if c.templates_learned > 0 {
            self.templates_learned
                .with_label_values(l)
                .inc_by(c.templates_learned);
        }
        if c.options_records > 0 {
            self.options_records
                .with_label_values(l)
                .inc_by(c.options_records);
        }
        for (outcome, n) in [
            ("accepted", c.nat_events),
            ("dropped", c.nat_events_dropped),
        ] {
            if n > 0 {
                self.nat_events
                    .with_label_values(&[ex.as_str(), outcome])
                    .inc_by(n);
            }
        }
    }
}
