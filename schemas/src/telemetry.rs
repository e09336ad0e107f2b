//! How every pipeline component reports what it did, the same way for all of them: what it
//! received, what it passed on, what it dropped and why, and its errors — as Prometheus
//! counters labelled by component, plus a log line naming the component when something is
//! dropped or fails. Components register their own detailed metrics through the same
//! [`Telemetry`], which hands out one metric family per name however many components use it.
//!
//! The families every component shares:
//! `hawking_component_received_events_total{kind, component}`,
//! `hawking_component_received_bytes_total{kind, component}`,
//! `hawking_component_sent_events_total{kind, component}`,
//! `hawking_component_dropped_events_total{kind, component, reason}`,
//! `hawking_component_errors_total{kind, component, error}`.
//! An event is a flow for sources and the stage, a row for sinks.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Where in the pipeline a component sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    Source,
    Stage,
    Sink,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Source => "source",
            ComponentKind::Stage => "stage",
            ComponentKind::Sink => "sink",
        }
    }
}

/// The metrics registry of one process, and the families shared by every component.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    shared: Arc<Shared>,
}

struct Shared {
    received: IntCounterVec,
    received_bytes: IntCounterVec,
    sent: IntCounterVec,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    /// Every family registered, by name, so a second component asking for it shares it.
    families: Mutex<HashMap<String, Box<dyn Any + Send>>>,
}

/// Least time between two warnings of one component (the counters count every event).
const WARN_INTERVAL_US: i64 = 10_000_000;

impl Telemetry {
    /// Registers the shared families in `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Telemetry> {
        let family = |name: &str, help: &str, extra: &[&str]| -> prometheus::Result<_> {
            let mut labels = vec!["kind", "component"];
            labels.extend_from_slice(extra);
            let c = IntCounterVec::new(Opts::new(name, help), &labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let shared = Shared {
            received: family(
                "hawking_component_received_events_total",
                "Events a component took in (flows for sources and the stage, rows for sinks)",
                &[],
            )?,
            received_bytes: family(
                "hawking_component_received_bytes_total",
                "Bytes a component read from its input",
                &[],
            )?,
            sent: family(
                "hawking_component_sent_events_total",
                "Events a component passed on (sources, the stage) or delivered (sinks)",
                &[],
            )?,
            dropped: family(
                "hawking_component_dropped_events_total",
                "Events a component dropped, by reason",
                &["reason"],
            )?,
            errors: family(
                "hawking_component_errors_total",
                "Errors a component met, by kind of error",
                &["error"],
            )?,
            families: Mutex::new(HashMap::new()),
        };
        Ok(Telemetry {
            registry,
            shared: Arc::new(shared),
        })
    }

    /// Telemetry into a registry of its own, which nothing serves: for tests, benchmarks and
    /// commands that run a stage without an endpoint.
    pub fn detached() -> Telemetry {
        Telemetry::new(Registry::new()).expect("fresh registry takes the shared families")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in Prometheus' text format, as `/metrics` serves it (for tests and
    /// commands that read their own counters).
    pub fn exposition(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        match prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The counters of one component.
    pub fn component(&self, kind: ComponentKind, name: &str) -> Component {
        let labels = [kind.as_str(), name];
        let s = &self.shared;
        Component {
            kind,
            name: name.into(),
            received: s.received.with_label_values(&labels),
            received_bytes: s.received_bytes.with_label_values(&labels),
            sent: s.sent.with_label_values(&labels),
            dropped: s.dropped.clone(),
            errors: s.errors.clone(),
            last_warning: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// The family `name`, registered on first use and shared afterwards.
    fn family<C>(
        &self,
        name: &str,
        make: impl FnOnce() -> prometheus::Result<C>,
    ) -> prometheus::Result<C>
    where
        C: prometheus::core::Collector + Clone + Send + 'static,
    {
        let mut families = self
            .shared
            .families
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = families.get(name) {
            return existing.downcast_ref::<C>().cloned().ok_or_else(|| {
                prometheus::Error::Msg(format!("metric {name} registered with another type"))
            });
        }
        let c = make()?;
        self.registry.register(Box::new(c.clone()))?;
        families.insert(name.to_string(), Box::new(c.clone()));
        Ok(c)
    }

    pub fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.family(name, || IntCounter::new(name, help))
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.family(name, || IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.family(name, || IntGauge::new(name, help))
    }

    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.family(name, || IntGaugeVec::new(Opts::new(name, help), labels))
    }

    pub fn histogram(&self, name: &str, help: &str) -> prometheus::Result<Histogram> {
        self.family(name, || {
            Histogram::with_opts(HistogramOpts::new(name, help))
        })
    }
}

/// One component's counters. Cheap to clone; call once per batch, not per event.
#[derive(Clone)]
pub struct Component {
    kind: ComponentKind,
    name: Arc<str>,
    received: IntCounter,
    received_bytes: IntCounter,
    sent: IntCounter,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    last_warning: Arc<AtomicI64>,
}

impl Component {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ComponentKind {
        self.kind
    }

    /// Took in `events` (and `bytes` of input, where bytes are the unit of the transport).
    pub fn received(&self, events: u64, bytes: u64) {
        self.received.inc_by(events);
        self.received_bytes.inc_by(bytes);
    }

    /// Passed on or delivered `events`.
    pub fn sent(&self, events: u64) {
        self.sent.inc_by(events);
    }

    /// Dropped `events` for `reason` (a short snake_case word, the metric's label). Logged as
    /// a warning naming the component, at most every 10 s per component.
    pub fn dropped(&self, events: u64, reason: &str) {
        if events == 0 {
            return;
        }
        self.dropped
            .with_label_values(&[self.kind.as_str(), &self.name, reason])
            .inc_by(events);
        if self.may_warn() {
            tracing::warn!(
                kind = self.kind.as_str(),
                component = %self.name,
                events,
                reason,
                "dropped"
            );
        }
    }

    /// Met an error of kind `error` (snake_case, the metric's label); `detail` goes to the log,
    /// at most every 10 s per component.
    pub fn error(&self, error: &str, detail: &dyn Display) {
        self.errors_of(1, error, detail);
    }

    /// Met `count` errors of kind `error`, `detail` describing one of them.
    pub fn errors_of(&self, count: u64, error: &str, detail: &dyn Display) {
        if count == 0 {
            return;
        }
        self.errors
            .with_label_values(&[self.kind.as_str(), &self.name, error])
            .inc_by(count);
        if self.may_warn() {
            tracing::error!(
                kind = self.kind.as_str(),
                component = %self.name,
                error,
                count,
                detail = %detail,
                "error"
            );
        }
    }

    fn may_warn(&self) -> bool {
        let now = crate::time::now_micros();
        let last = self.last_warning.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_INTERVAL_US
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn exposition(t: &Telemetry) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&t.registry().gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn components_count_in_shared_families_and_share_named_metrics() {
        let t = Telemetry::detached();
        let a = t.component(ComponentKind::Source, "netflow");
        let b = t.component(ComponentKind::Sink, "store");
        a.received(10, 1500);
        a.sent(9);
        a.dropped(1, "no_address");
        b.error("commit_failed", &"disk full");
        let text = exposition(&t);
        assert!(text.contains(
            "hawking_component_received_events_total{component=\"netflow\",kind=\"source\"} 10"
        ));
        assert!(text.contains(
            "hawking_component_dropped_events_total{component=\"netflow\",kind=\"source\",reason=\"no_address\"} 1"
        ));
        assert!(text.contains(
            "hawking_component_errors_total{component=\"store\",error=\"commit_failed\",kind=\"sink\"} 1"
        ));
        // Two components asking for one family get the same one, not a registration error.
        let x = t.counter_vec("hawking_test_total", "test", &["l"]).unwrap();
        let y = t.counter_vec("hawking_test_total", "test", &["l"]).unwrap();
        x.with_label_values(&["v"]).inc();
        y.with_label_values(&["v"]).inc();
        assert!(exposition(&t).contains("hawking_test_total{l=\"v\"} 2"));
        assert!(t.gauge("hawking_test_total", "other type").is_err());
    }
}
