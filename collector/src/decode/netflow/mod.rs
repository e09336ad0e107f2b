//! NetFlow v5/v9 and IPFIX decoding: one [`NetflowDecoder`] turns exporter messages into
//! flow rows and NAT session events of a [`SourceBatch`].
//!
//! Division of labour: netflow_parser parses and validates template and options-template
//! sets (its limits on field counts and template sizes apply); each accepted template is
//! compiled ([`template::CompiledTemplate`]) and kept per *scope* — exporter address and port,
//! version, and observation domain / source ID, the template scope of RFC 7011 §8 — and every
//! data record, flow or options, is decoded by the compiled template straight into columns.
//! netflow_parser's own data path allocates a vector per record (about 360 ns per flow here),
//! more than the whole per-flow budget; its output remains the reference the decoder is
//! tested against.

pub mod frame;
pub mod metrics;
pub mod pending;
pub mod resolve;
pub mod state;
pub mod template;
pub mod wire;

#[cfg(test)]
mod nat_tests;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod session_tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hawking_schemas::flow::{FlowOrigin, SourceKind};
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use netflow_parser::variable_versions::{ipfix, v9};
use netflow_parser::{NetflowPacket, NetflowParser};
use serde::{Deserialize, Serialize};

use metrics::NetflowMetrics;
use pending::{PendingSet, PendingSets};
use resolve::{
    SamplingTable, TimeBase, TimeSource, resolve_flow, resolve_nat_event, translation_in_flow,
};
use state::{StateError, TemplateState};
use template::{
    CompiledTemplate, EnterpriseElements, FieldSpec, RawRecord, Target, TemplateLayout,
};
use wire::{Header, RawSet, Sets, Version, WireError};

/// Limits of the decoder's state. Every bound exists so a hostile or broken exporter costs a
/// bounded amount of memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderConfig {
    /// Most exporter scopes (address, port, version, domain) with template state; the one
    /// seen longest ago is forgotten first. Default 10000.
    pub max_scopes: usize,
    /// Most templates per scope; further new template IDs are refused. Default 4096.
    pub max_templates_per_scope: usize,
    /// Most fields in one template (netflow_parser's limit). Default 512.
    pub max_template_fields: usize,
    /// Bytes of data sets held while their template is unknown. Default 16 MiB.
    pub pending_max_bytes: usize,
    /// Seconds a held data set waits for its template before it is dropped. Default 60.
    pub pending_max_age_secs: u64,
    /// The private enterprise number NetObserv's flowlogs-pipeline IPFIX writer was given
    /// (its `write.ipfix.enterpriseId`): records then keep the Kubernetes names it added
    /// (`src_reported_namespace`/`_name`, `dst_…`), its TCP RTT (`rtt_ns`) and interface
    /// list (`interfaces`). NetObserv has no registered PEN, so there is no default: without
    /// it those elements are skipped like any other enterprise's (the records still decode).
    pub netobserv_enterprise_id: Option<u32>,
}

impl DecoderConfig {
    fn enterprise(&self) -> EnterpriseElements {
        EnterpriseElements {
            netobserv: self.netobserv_enterprise_id,
        }
    }
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_scopes: 10_000,
            max_templates_per_scope: 4096,
            max_template_fields: 512,
            pending_max_bytes: 16 << 20,
            pending_max_age_secs: 60,
            netobserv_enterprise_id: None,
        }
    }
}

/// One template namespace: RFC 7011 §8 scopes templates to the transport session (for UDP,
/// the exporter's address and port) and observation domain.
///
/// Over TCP the session is the connection, and the key names it just as well: the peer's
/// address *and port* tell two connections from one exporter apart (the kernel never has two
/// open with the same pair towards one listener), so each learns its own templates even when
/// both use the same template IDs for different layouts. What the address alone cannot say is
/// that a connection ended and a later one reuses the port: the TCP transport tells the
/// decoder ([`crate::decode::Decoder::session_ended`]) in order with the messages, and the
/// session's scopes go, so a reconnect decodes nothing until it has re-sent its templates,
/// as RFC 7011 §8.1 says it must. That is also why a TCP source keeps no template state
/// across restarts: a restart ends every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScopeKey {
    pub exporter: SocketAddr,
    pub version: Version,
    pub domain: u32,
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Version::V5 => "v5",
            Version::V9 => "v9",
            Version::Ipfix => "ipfix",
        })
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "v5" => Ok(Version::V5),
            "v9" => Ok(Version::V9),
            "ipfix" => Ok(Version::Ipfix),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["v5", "v9", "ipfix"],
            )),
        }
    }
}

/// What one exporter scope has announced.
#[derive(Debug, Default)]
struct Scope {
    templates: HashMap<u16, CompiledTemplate>,
    options_templates: usize,
    sampling: SamplingTable,
    system_init_ms: Option<i64>,
    last_seen_us: i64,
}

/// Counters for one exporter address, accumulated by the decoder and drained by whoever
/// publishes metrics (so the hot path touches no shared state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExporterCounters {
    pub packets: u64,
    pub packet_bytes: u64,
    pub flows: u64,
    /// Sum of the flows' (sampling-scaled) byte counters.
    pub flow_bytes: u64,
    pub decode_errors: HashMap<&'static str, u64>,
    /// Data sets held because their template was unknown.
    pub sets_held: u64,
    /// Held data sets decoded after their template arrived.
    pub sets_replayed: u64,
    /// Data sets dropped because their template never came (expired or pushed out).
    pub sets_dropped_missing_template: u64,
    /// Flows whose record had no usable time element (export time used instead).
    pub flows_timed_by_export: u64,
    pub templates_learned: u64,
    pub options_records: u64,
    /// NAT session events decoded (RFC 8158 records, and translations shown by flow records
    /// that carry both tuples), and those that were not a create/delete with both addresses
    /// (dropped).
    pub nat_events: u64,
    pub nat_events_dropped: u64,
    /// Flow records dropped because no address could be read: neither address fields with
    /// an address nor a readable packet section. Never stored with an invented address.
    pub flows_dropped_no_address: u64,
    /// Packet sections (IE 315/313) whose headers ended early or were not IP.
    pub frame_sections_unreadable: u64,
}

/// The decoder. One per listener thread; not shared.
pub struct NetflowDecoder {
    config: DecoderConfig,
    template_parser: NetflowParser,
    scopes: HashMap<ScopeKey, Scope>,
    pending: PendingSets,
    counters: HashMap<IpAddr, ExporterCounters>,
    /// Reused buffer: the packet's header and template sets, for netflow_parser.
    template_packet: Vec<u8>,
    templates_changed: bool,
    /// Where counters go at housekeeping; without it they wait for [`NetflowDecoder::drain_counters`].
    published: Option<(NetflowMetrics, Component)>,
    /// Where template state persists across restarts.
    state_path: Option<PathBuf>,
    /// What this decoder last added to the shared gauges: (pending sets, scopes).
    gauges_published: (i64, i64),
}

impl NetflowDecoder {
    pub fn new(config: DecoderConfig) -> Result<Self, netflow_parser::ConfigError> {
        let template_parser = NetflowParser::builder()
            .with_max_field_count(config.max_template_fields)
            .with_allowed_versions(&[9, 10])
            .build()?;
        Ok(NetflowDecoder {
            pending: PendingSets::new(
                config.pending_max_bytes,
                config.pending_max_age_secs as i64 * 1_000_000,
            ),
            config,
            template_parser,
            scopes: HashMap::new(),
            counters: HashMap::new(),
            template_packet: Vec::with_capacity(1500),
            templates_changed: false,
            published: None,
            state_path: None,
            gauges_published: (0, 0),
        })
    }

    /// Publishes the per-exporter counters to `metrics`, and what was dropped to `component`,
    /// at every housekeeping.
    pub fn publish_to(&mut self, metrics: NetflowMetrics, component: Component) {
        self.published = Some((metrics, component));
    }

    /// Keeps template state in `path`: restores what is there now (returning how many
    /// templates), saves changes at housekeeping and everything at the end.
    pub fn persist_at(&mut self, path: PathBuf) -> Result<usize, StateError> {
        let restored = match TemplateState::load(&path)? {
            Some(state) => self.restore(state),
            None => 0,
        };
        if restored > 0 {
            tracing::info!(templates = restored, path = %path.display(), "restored NetFlow template state");
        }
        self.state_path = Some(path);
        Ok(restored)
    }

    fn publish(&mut self) {
        let Some((metrics, component)) = &self.published else {
            return;
        };
        for (exporter, c) in self.counters.drain() {
            metrics.add(exporter, &c);
            component.dropped(c.sets_dropped_missing_template, "missing_template");
            component.dropped(c.nat_events_dropped, "unusable_nat_event");
            component.dropped(c.flows_dropped_no_address, "no_address");
            for (reason, n) in &c.decode_errors {
                component.errors_of(*n, "decode", &format_args!("exporter {exporter}: {reason}"));
            }
        }
        // The gauges are shared by every NetFlow source's decoder: each adds its own change.
        let (pending, scopes) = (self.pending.len() as i64, self.scopes.len() as i64);
        metrics.pending_sets.add(pending - self.gauges_published.0);
        metrics.scopes.add(scopes - self.gauges_published.1);
        self.gauges_published = (pending, scopes);
    }

    fn save_state_if_changed(&mut self) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        if let Some(state) = self.take_changed_state()
            && let Err(e) = state.save(&path)
        {
            tracing::warn!(error = %e, "could not persist NetFlow template state; will retry on the next change");
        }
    }

    /// Decodes one datagram from `from`, appending its flows to `out`. Malformed input is
    /// counted against the exporter; flows decoded before the fault are kept.
    pub fn decode(
        &mut self,
        from: SocketAddr,
        pkt: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) {
        let before = out.flows.len();
        let result = self.decode_inner(from, pkt, received_at_us, out);
        let c = self.counters.entry(from.ip()).or_default();
        c.packets += 1;
        c.packet_bytes += pkt.len() as u64;
        c.flows += (out.flows.len() - before) as u64;
        c.flow_bytes = c
            .flow_bytes
            .saturating_add(saturating_sum(&out.flows.bytes[before..]));
        if let Err(e) = result {
            *c.decode_errors.entry(e.reason()).or_default() += 1;
        }
    }

    fn decode_inner(
        &mut self,
        from: SocketAddr,
        pkt: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) -> Result<(), WireError> {
        let (header, body) = wire::parse_header(pkt)?;
        let origin = FlowOrigin {
            received_at: received_at_us,
            exporter: ip_to_u128(from.ip()),
            observation_domain: header.domain,
            source_kind: match header.version {
                Version::V5 => SourceKind::NetflowV5,
                Version::V9 => SourceKind::NetflowV9,
                Version::Ipfix => SourceKind::Ipfix,
            },
        };
        if header.version == Version::V5 {
            return self.decode_v5(&header, body, &origin, out);
        }
        let key = ScopeKey {
            exporter: from,
            version: header.version,
            domain: header.domain,
        };
        self.touch_scope(key, received_at_us);

        let mut result = Ok(());
        if Sets::new(body).any(|s| s.is_ok_and(|s| s.is_template()))
            && let Err(e) = self.learn_templates(&key, pkt, &header, body, out)
        {
            result = Err(e);
        }

        let scope = self.scopes.get_mut(&key).expect("touched above");
        // Options first: a sampling rate or boot time announced in this packet applies to the
        // flows that travel with it.
        if scope.options_templates > 0 {
            for set in Sets::new(body).flatten().filter(RawSet::is_data) {
                if let Some(t) = scope.templates.get(&set.id).filter(|t| t.is_options()) {
                    let counters = self.counters.entry(from.ip()).or_default();
                    let _ = decode_options(
                        t,
                        set.body,
                        &mut scope.sampling,
                        &mut scope.system_init_ms,
                        counters,
                    );
                }
            }
        }
        let base = TimeBase {
            export_ms: header.export_ms,
            sys_uptime_ms: header.sys_uptime_ms,
            system_init_ms: scope.system_init_ms,
        };
        for set in Sets::new(body) {
            let set = match set {
                Ok(set) => set,
                Err(e) => {
                    result = result.and(Err(e));
                    break;
                }
            };
            if !set.is_data() {
                continue;
            }
            match scope.templates.get(&set.id) {
                Some(t) if t.is_options() => {}
                Some(t) => {
                    let counters = self.counters.entry(from.ip()).or_default();
                    match decode_flows(t, set.body, &base, &scope.sampling, &origin, out, counters)
                    {
                        Ok(n) => counters.flows_timed_by_export += n,
                        Err(e) => result = result.and(Err(e)),
                    }
                }
                None => {
                    let held = PendingSet {
                        scope: key,
                        template_id: set.id,
                        header,
                        received_at_us,
                        body: set.body.to_vec(),
                    };
                    self.counters.entry(from.ip()).or_default().sets_held += 1;
                    let counters = &mut self.counters;
                    self.pending.hold(held, |d| {
                        counters
                            .entry(d.scope.exporter.ip())
                            .or_default()
                            .sets_dropped_missing_template += 1
                    });
                }
            }
        }
        let counters = &mut self.counters;
        self.pending.expire(received_at_us, |d| {
            counters
                .entry(d.scope.exporter.ip())
                .or_default()
                .sets_dropped_missing_template += 1
        });
        result
    }

    fn decode_v5(
        &mut self,
        header: &Header,
        body: &[u8],
        origin: &FlowOrigin,
        out: &mut SourceBatch,
    ) -> Result<(), WireError> {
        let interval = header.v5_sampling & 0x3fff;
        let sampling = SamplingTable {
            default_rate: Some(interval.max(1) as u32),
            by_id: Vec::new(),
        };
        let base = TimeBase {
            export_ms: header.export_ms,
            sys_uptime_ms: header.sys_uptime_ms,
            system_init_ms: None,
        };
        for rec in body.chunks_exact(wire::V5_RECORD_LEN) {
            let mut raw = RawRecord::default()
                .with(Target::InIf, wire::be16(rec, 12) as u64)
                .with(Target::OutIf, wire::be16(rec, 14) as u64)
                .with(Target::Packets, wire::be32(rec, 16) as u64)
                .with(Target::Bytes, wire::be32(rec, 20) as u64)
                .with(Target::StartSysUp, wire::be32(rec, 24) as u64)
                .with(Target::EndSysUp, wire::be32(rec, 28) as u64)
                .with(Target::SrcPort, wire::be16(rec, 32) as u64)
                .with(Target::DstPort, wire::be16(rec, 34) as u64)
                .with(Target::TcpFlags, rec[37] as u64)
                .with(Target::Protocol, rec[38] as u64);
            raw.src_ip = Some(hawking_schemas::ip::v4_to_u128(wire::be32(rec, 0)));
            raw.dst_ip = Some(hawking_schemas::ip::v4_to_u128(wire::be32(rec, 4)));
            let (record, _) = resolve_flow(&raw, &base, &sampling);
            out.flows.push(origin, &record);
        }
        Ok(())
    }

    fn touch_scope(&mut self, key: ScopeKey, now_us: i64) {
        if !self.scopes.contains_key(&key)
            && self.scopes.len() >= self.config.max_scopes
            && let Some(oldest) = self
                .scopes
                .iter()
                .min_by_key(|(_, s)| s.last_seen_us)
                .map(|(k, _)| *k)
        {
            self.forget_scope(&oldest);
        }
        self.scopes.entry(key).or_default().last_seen_us = now_us;
    }

    /// Forgets every scope of `exporter` (address and port; every version and domain): its
    /// transport session ended. Data sets it held for templates that can now never come are
    /// dropped and counted (`missing_template`).
    pub fn end_session(&mut self, exporter: SocketAddr) {
        let ended: Vec<ScopeKey> = self
            .scopes
            .keys()
            .filter(|k| k.exporter == exporter)
            .copied()
            .collect();
        for key in ended {
            self.forget_scope(&key);
        }
    }

    fn forget_scope(&mut self, key: &ScopeKey) {
        if let Some(s) = self.scopes.remove(key) {
            self.templates_changed |= !s.templates.is_empty();
        }
        let counters = &mut self.counters;
        self.pending.forget_scope(key, |d| {
            counters
                .entry(d.scope.exporter.ip())
                .or_default()
                .sets_dropped_missing_template += 1
        });
    }

    /// Runs the packet's template sets through netflow_parser, compiles what it accepts into
    /// the scope, applies IPFIX withdrawals, and decodes held sets the new templates unlock.
    fn learn_templates(
        &mut self,
        key: &ScopeKey,
        pkt: &[u8],
        header: &Header,
        body: &[u8],
        out: &mut SourceBatch,
    ) -> Result<(), WireError> {
        let header_len = header_len_of(header.version);
        self.template_packet.clear();
        self.template_packet.extend_from_slice(&pkt[..header_len]);
        let mut withdrawn = Vec::new();
        for set in Sets::new(body).flatten().filter(RawSet::is_template) {
            self.template_packet
                .extend_from_slice(&(set.id).to_be_bytes());
            self.template_packet
                .extend_from_slice(&((set.body.len() + 4) as u16).to_be_bytes());
            self.template_packet.extend_from_slice(set.body);
            if header.version == Version::Ipfix {
                wire::ipfix_withdrawals(&set, |id| withdrawn.push(id));
            }
        }
        if header.version == Version::Ipfix {
            let len = self.template_packet.len() as u16;
            self.template_packet[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let parsed = self.template_parser.parse_bytes(&self.template_packet);
        let mut layouts = Vec::new();
        for packet in &parsed.packets {
            collect_layouts(packet, &mut layouts);
        }
        let result = if parsed.error.is_some() {
            Err(WireError::BadTemplate)
        } else {
            Ok(())
        };

        let scope = self.scopes.get_mut(key).expect("scope exists");
        for id in withdrawn {
            let before = scope.templates.len();
            match id {
                2 => scope.templates.retain(|_, t| t.is_options()),
                3 => scope.templates.retain(|_, t| !t.is_options()),
                id => {
                    scope.templates.remove(&id);
                }
            }
            self.templates_changed |= scope.templates.len() != before;
        }
        let announced: Vec<u16> = layouts.iter().map(|l| l.template_id).collect();
        let mut learned = Vec::new();
        for layout in layouts {
            let id = layout.template_id;
            if scope.templates.get(&id).is_some_and(|t| t.layout == layout) {
                continue; // a refresh of what we have
            }
            if !scope.templates.contains_key(&id)
                && scope.templates.len() >= self.config.max_templates_per_scope
            {
                continue;
            }
            match CompiledTemplate::compile(layout, key.version, self.config.enterprise()) {
                Ok(t) => {
                    scope.templates.insert(id, t);
                    learned.push(id);
                }
                Err(_) => {
                    scope.templates.remove(&id);
                }
            }
        }
        scope.options_templates = scope.templates.values().filter(|t| t.is_options()).count();
        if announced
            .iter()
            .any(|id| scope.templates.get(id).is_some_and(|t| t.is_nat_events()))
        {
            out.nat_alive.push(hawking_schemas::nat::NatAlive {
                exporter: ip_to_u128(key.exporter.ip()),
                observation_domain: key.domain,
                at: header.export_ms * 1000,
            });
        }
        if !learned.is_empty() {
            self.templates_changed = true;
            self.counters
                .entry(key.exporter.ip())
                .or_default()
                .templates_learned += learned.len() as u64;
        }
        for id in learned {
            self.replay_pending(key, id, out);
        }
        result
    }

    /// Decodes the held sets of `key` waiting for template `id`, each with its own header.
    fn replay_pending(&mut self, key: &ScopeKey, id: u16, out: &mut SourceBatch) {
        let held = self.pending.take(key, id);
        if held.is_empty() {
            return;
        }
        let scope = self.scopes.get_mut(key).expect("scope exists");
        let Some(t) = scope.templates.get(&id) else {
            return;
        };
        let counters = self.counters.entry(key.exporter.ip()).or_default();
        for set in held {
            counters.sets_replayed += 1;
            if t.is_options() {
                let _ = decode_options(
                    t,
                    &set.body,
                    &mut scope.sampling,
                    &mut scope.system_init_ms,
                    counters,
                );
                continue;
            }
            let origin = FlowOrigin {
                received_at: set.received_at_us,
                exporter: ip_to_u128(key.exporter.ip()),
                observation_domain: key.domain,
                source_kind: if key.version == Version::V9 {
                    SourceKind::NetflowV9
                } else {
                    SourceKind::Ipfix
                },
            };
            let base = TimeBase {
                export_ms: set.header.export_ms,
                sys_uptime_ms: set.header.sys_uptime_ms,
                system_init_ms: scope.system_init_ms,
            };
            let before = out.flows.len();
            match decode_flows(t, &set.body, &base, &scope.sampling, &origin, out, counters) {
                Ok(n) => counters.flows_timed_by_export += n,
                Err(e) => *counters.decode_errors.entry(e.reason()).or_default() += 1,
            }
            counters.flows += (out.flows.len() - before) as u64;
            counters.flow_bytes = counters
                .flow_bytes
                .saturating_add(saturating_sum(&out.flows.bytes[before..]));
        }
    }

    /// Takes the counters accumulated since the last call, per exporter address.
    pub fn drain_counters(&mut self) -> impl Iterator<Item = (IpAddr, ExporterCounters)> + '_ {
        self.counters.drain()
    }

    /// Data sets currently held for a template, and their bytes.
    pub fn pending(&self) -> (usize, usize) {
        (self.pending.len(), self.pending.bytes())
    }

    /// Number of exporter scopes with state.
    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    /// The template state to persist, if it changed since the last call.
    pub fn take_changed_state(&mut self) -> Option<state::TemplateState> {
        if !std::mem::take(&mut self.templates_changed) {
            return None;
        }
        Some(self.state())
    }

    /// The template and options state of every scope.
    pub fn state(&self) -> state::TemplateState {
        let mut scopes: Vec<state::ScopeState> = self
            .scopes
            .iter()
            .filter(|(_, s)| !s.templates.is_empty())
            .map(|(key, s)| {
                let mut templates: Vec<TemplateLayout> =
                    s.templates.values().map(|t| t.layout.clone()).collect();
                templates.sort_by_key(|t| t.template_id);
                state::ScopeState {
                    scope: *key,
                    templates,
                    system_init_ms: s.system_init_ms,
                    default_sampling_rate: s.sampling.default_rate,
                    sampler_rates: s.sampling.by_id.clone(),
                }
            })
            .collect();
        scopes.sort_by_key(|s| (s.scope.exporter, s.scope.version, s.scope.domain));
        state::TemplateState {
            format: state::STATE_FORMAT,
            scopes,
        }
    }

    /// Restores persisted template state (after a restart), so data decodes before exporters
    /// re-send their templates. Templates that no longer compile are skipped and counted.
    pub fn restore(&mut self, saved: state::TemplateState) -> usize {
        let mut restored = 0;
        for s in saved.scopes {
            if self.scopes.len() >= self.config.max_scopes {
                break;
            }
            let scope = self.scopes.entry(s.scope).or_default();
            for layout in s.templates {
                if let Ok(t) =
                    CompiledTemplate::compile(layout, s.scope.version, self.config.enterprise())
                {
                    scope.templates.insert(t.layout.template_id, t);
                    restored += 1;
                }
            }
            scope.options_templates = scope.templates.values().filter(|t| t.is_options()).count();
            scope.system_init_ms = s.system_init_ms;
            scope.sampling = SamplingTable {
                default_rate: s.default_sampling_rate,
                by_id: s.sampler_rates,
            };
        }
        restored
    }
}

impl crate::decode::Decoder for NetflowDecoder {
    fn name(&self) -> &'static str {
        "netflow"
    }

    fn decode(
        &mut self,
        from: SocketAddr,
        message: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) {
        NetflowDecoder::decode(self, from, message, received_at_us, out)
    }

    fn session_ended(&mut self, from: SocketAddr) {
        self.end_session(from);
    }

    fn housekeeping(&mut self) {
        self.publish();
        self.save_state_if_changed();
    }

    fn finish(&mut self) -> Result<(), crate::decode::DecoderError> {
        self.publish();
        if let Some(path) = &self.state_path {
            self.state().save(path)?;
        }
        Ok(())
    }
}

/// Hostile counters can sum past u64: the metric saturates instead of wrapping.
fn saturating_sum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |a, b| a.saturating_add(*b))
}

fn header_len_of(version: Version) -> usize {
    match version {
        Version::V5 => wire::V5_HEADER_LEN,
        Version::V9 => wire::V9_HEADER_LEN,
        Version::Ipfix => wire::IPFIX_HEADER_LEN,
    }
}

/// Decodes a flow data set into `out`; returns how many flows had to be timed by the export
/// time. A NAT logging template's records become `out.nat_events` instead.
#[inline]
fn decode_flows(
    t: &CompiledTemplate,
    body: &[u8],
    base: &TimeBase,
    sampling: &SamplingTable,
    origin: &FlowOrigin,
    out: &mut SourceBatch,
    counters: &mut ExporterCounters,
) -> Result<u64, WireError> {
    if t.is_nat_events() {
        t.decode_set(body, |raw| {
            let event = resolve_nat_event(raw, base, origin);
            if event.kind.is_some() {
                counters.nat_events += 1;
                out.nat_events.push(event);
            } else {
                counters.nat_events_dropped += 1;
            }
        })?;
        return Ok(0);
    }
    let mut by_export = 0u64;
    t.decode_set(body, |raw| {
        counters.frame_sections_unreadable += raw.frame.is_some_and(|f| f.is_err()) as u64;
        if raw.flow_addresses().is_none() {
            counters.flows_dropped_no_address += 1;
            return;
        }
        let (record, source) = resolve_flow(raw, base, sampling);
        by_export += (source == TimeSource::ExportTime) as u64;
        if t.has_details() {
            out.flows
                .details_mut()
                .push(&resolve::details(raw, t.is_netobserv()));
        }
        out.flows.push(origin, &record);
        if raw.post_src_ip.is_some()
            && let Some(event) = translation_in_flow(raw, &record, origin)
        {
            counters.nat_events += 1;
            out.nat_events.push(event);
        }
    })?;
    Ok(by_export)
}

/// Applies an options data set (sampling, boot time) to its scope.
fn decode_options(
    t: &CompiledTemplate,
    body: &[u8],
    sampling: &mut SamplingTable,
    init: &mut Option<i64>,
    counters: &mut ExporterCounters,
) -> Result<(), WireError> {
    let n = t.decode_set(body, |raw| {
        sampling.learn(raw);
        if let Some(ms) = raw.get(Target::SysInitMs) {
            *init = Some(ms as i64);
        }
    })?;
    counters.options_records += n as u64;
    Ok(())
}

/// Extracts every template and options template netflow_parser accepted from its output.
fn collect_layouts(packet: &NetflowPacket, out: &mut Vec<TemplateLayout>) {
    fn v9_data(t: &v9::Template) -> TemplateLayout {
        TemplateLayout {
            template_id: t.template_id,
            scope_fields: 0,
            options: false,
            fields: t
                .fields
                .iter()
                .map(|f| FieldSpec {
                    id: f.field_type_number,
                    length: f.field_length,
                    enterprise: None,
                })
                .collect(),
        }
    }
    fn v9_options(t: &v9::OptionsTemplate) -> TemplateLayout {
        let scope = t.scope_fields.iter().map(|f| FieldSpec {
            id: f.field_type_number,
            length: f.field_length,
            enterprise: None,
        });
        let fields = t.option_fields.iter().map(|f| FieldSpec {
            id: f.field_type_number,
            length: f.field_length,
            enterprise: None,
        });
        TemplateLayout {
            template_id: t.template_id,
            scope_fields: t.scope_fields.len() as u16,
            options: true,
            fields: scope.chain(fields).collect(),
        }
    }
    fn ipfix_fields(fields: &[ipfix::TemplateField]) -> Vec<FieldSpec> {
        fields
            .iter()
            .map(|f| FieldSpec {
                id: f.field_type_number,
                length: f.field_length,
                enterprise: f.enterprise_number,
            })
            .collect()
    }
    fn ipfix_data(t: &ipfix::Template) -> TemplateLayout {
        TemplateLayout {
            template_id: t.template_id,
            scope_fields: 0,
            options: false,
            fields: ipfix_fields(&t.fields),
        }
    }
    fn ipfix_options(t: &ipfix::OptionsTemplate) -> TemplateLayout {
        TemplateLayout {
            template_id: t.template_id,
            scope_fields: t.scope_field_count,
            options: true,
            fields: ipfix_fields(&t.fields),
        }
    }
    match packet {
        NetflowPacket::V9(p) => {
            for fs in &p.flowsets {
                match &fs.body {
                    v9::FlowSetBody::Template(ts) => out.extend(ts.templates.iter().map(v9_data)),
                    v9::FlowSetBody::OptionsTemplate(ts) => {
                        out.extend(ts.templates.iter().map(v9_options))
                    }
                    _ => {}
                }
            }
        }
        NetflowPacket::IPFix(p) => {
            for fs in &p.flowsets {
                match &fs.body {
                    ipfix::FlowSetBody::Template(t) => out.push(ipfix_data(t)),
                    ipfix::FlowSetBody::Templates(ts) => out.extend(ts.iter().map(ipfix_data)),
                    ipfix::FlowSetBody::OptionsTemplate(t) => out.push(ipfix_options(t)),
                    ipfix::FlowSetBody::OptionsTemplates(ts) => {
                        out.extend(ts.iter().map(ipfix_options))
                    }
                    ipfix::FlowSetBody::V9Template(t) => out.push(v9_data(t)),
                    ipfix::FlowSetBody::V9Templates(ts) => out.extend(ts.iter().map(v9_data)),
                    ipfix::FlowSetBody::V9OptionsTemplate(t) => out.push(v9_options(t)),
                    ipfix::FlowSetBody::V9OptionsTemplates(ts) => {
                        out.extend(ts.iter().map(v9_options))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}
