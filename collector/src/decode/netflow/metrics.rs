//! Prometheus counters of the NetFlow/IPFIX decoder, per exporter address. The decoder
//! accumulates plain integers; they are added here once per batch, never per flow.

use std::net::IpAddr;

use hawking_schemas::telemetry::Telemetry;
use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::ExporterCounters;
use crate::transport::tcp::TcpCounters;

#[derive(Clone)]
pub struct NetflowMetrics {
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
    /// Data sets currently held for a template.
    pub pending_sets: IntGauge,
    /// Exporter scopes with template state.
    pub scopes: IntGauge,
}

/// The kernel's count of NetFlow datagrams dropped because the listener's socket buffer was
/// full (the UDP transport adds to it).
pub fn socket_drops(telemetry: &Telemetry) -> prometheus::Result<IntCounter> {
    telemetry.counter(
        "hawking_netflow_socket_drops_total",
        "Datagrams dropped by the kernel because the listener's receive buffer was full",
    )
}

/// The IPFIX-over-TCP listener's counters (the TCP transport adds to them).
pub fn tcp_counters(telemetry: &Telemetry) -> prometheus::Result<TcpCounters> {
    Ok(TcpCounters {
        connections: telemetry.counter(
            "hawking_netflow_tcp_connections_total",
            "IPFIX/TCP exporter connections accepted (those refused at the limit included)",
        )?,
        open: telemetry.gauge(
            "hawking_netflow_tcp_connections_open",
            "IPFIX/TCP exporter connections open",
        )?,
        dropped: telemetry.counter_vec(
            "hawking_netflow_tcp_dropped_total",
            "IPFIX/TCP connections whose input was cut short, by reason: partial_message \
             (closed mid-message), read_error (reset mid-message), bad_version and bad_length \
             (not IPFIX framing: disconnected), connection_limit (refused), shutdown",
            &["reason"],
        )?,
        dropped_bytes: telemetry.counter_vec(
            "hawking_netflow_tcp_dropped_bytes_total",
            "Bytes received over IPFIX/TCP and thrown away, by the reasons of \
             hawking_netflow_tcp_dropped_total",
            &["reason"],
        )?,
    })
}

impl NetflowMetrics {
    pub fn register(telemetry: &Telemetry) -> prometheus::Result<Self> {
        let ex = &["exporter"];
        let per_exporter = |name: &str, help: &str| telemetry.counter_vec(name, help, ex);
        Ok(NetflowMetrics {
            packets: per_exporter("hawking_netflow_packets_total", "Datagrams received")?,
            packet_bytes: per_exporter(
                "hawking_netflow_packet_bytes_total",
                "Datagram payload bytes received",
            )?,
            flows: per_exporter("hawking_flows_total", "Flow records decoded")?,
            flow_bytes: per_exporter(
                "hawking_flow_bytes_total",
                "Sum of decoded flows' byte counters, scaled by sampling rate",
            )?,
            decode_errors: telemetry.counter_vec(
                "hawking_decode_errors_total",
                "Datagrams (or parts of them) that could not be decoded, by reason",
                &["exporter", "reason"],
            )?,
            sets_held: per_exporter(
                "hawking_netflow_sets_held_total",
                "Data sets held because their template was not yet known",
            )?,
            sets_replayed: per_exporter(
                "hawking_netflow_sets_replayed_total",
                "Held data sets decoded once their template arrived",
            )?,
            sets_dropped: telemetry.counter_vec(
                "hawking_flows_dropped_total",
                "Flow data dropped, by reason; for reason=missing_template the unit is data sets \
                 (a set whose template never arrives cannot be split into records)",
                &["exporter", "reason"],
            )?,
            flows_timed_by_export: per_exporter(
                "hawking_flows_timed_by_export_total",
                "Flows whose record carried no usable time element; the export time was used",
            )?,
            templates_learned: per_exporter(
                "hawking_netflow_templates_learned_total",
                "New or changed templates learned",
            )?,
            options_records: per_exporter(
                "hawking_netflow_options_records_total",
                "Options data records applied (sampling, system init time)",
            )?,
            nat_events: telemetry.counter_vec(
                "hawking_netflow_nat_events_total",
                "NAT session events (RFC 8158 records) by outcome: accepted, or dropped when \
                 not a create/delete naming both the inside and the outside address",
                &["exporter", "outcome"],
            )?,
            pending_sets: telemetry.gauge(
                "hawking_netflow_pending_sets",
                "Data sets held waiting for their template",
            )?,
            scopes: telemetry.gauge(
                "hawking_netflow_scopes",
                "Exporter template scopes (address, port, version, domain) with state",
            )?,
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
        if c.frame_sections_unreadable > 0 {
            self.decode_errors
                .with_label_values(&[ex.as_str(), "unreadable_packet_section"])
                .inc_by(c.frame_sections_unreadable);
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
