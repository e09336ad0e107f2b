//! `KafkaSink`: the enrichment stage's attributed flows to a Kafka topic, one message per
//! flow, through an idempotent `acks=all` producer; what the broker cannot take waits in the
//! on-disk [`Spool`] and is sent when it can.
//!
//! A flow handed to the sink is in one of three places: the producer's queue (memory, until
//! the broker acknowledges it or the delivery timeout gives up on it), the spool (disk), or
//! delivered. Failed deliveries return to the sink through the delivery callback and are
//! spooled at the next commit; a spool segment is removed only after every message read
//! from it was delivered or spooled again. What a SIGKILL can lose is what sat in the
//! producer's queue (normally milliseconds of flows); a clean shutdown spools it. Spooled
//! messages are delivered out of their original order, and a message whose acknowledgement
//! was lost (purged in flight at shutdown) can be delivered twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::RecordBatch;
use hawking_schemas::pipeline::{Committed, Sink, SinkError, Table};
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use prometheus::IntGauge;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};

use hawking_schemas::ip::push_ip_text;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::raw::{self, RAW_SCHEMA};

use crate::config::KafkaSinkConfig;
use crate::encode::EncodedBatch;
use crate::spool::{Spool, SpoolError, Spooled};

/// The header every message carries, saying what it is (`MessageFormat::schema_header`), so
/// consumers can tell formats and versions apart.
pub const SCHEMA_HEADER: &str = "hawking-schema";

/// Flows in one raw flow message at most (about 450 KB without details).
const RAW_MESSAGE_FLOWS: usize = 4096;

/// Bytes of one raw flow message at most: under the default limit of 1 MB
/// (`message.max.bytes`, lower when configured lower), whatever the details' text.
const RAW_MESSAGE_BYTES: usize = 900_000;

/// How long a send waits for room in the producer's queue before it spools instead.
const QUEUE_WAIT: Duration = Duration::from_millis(200);

/// How long shutdown waits for the producer to deliver what it holds.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Why the Kafka sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("[kafka] has no brokers")]
    NoBrokers,
    #[error("[kafka] producer: {0}")]
    Producer(#[from] KafkaError),
    #[error("[kafka] {0}")]
    Spool(#[from] SpoolError),
    #[error("[kafka] metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Opaque of a message sent from the spool (live flows carry 0).
const FROM_SPOOL: usize = 1;

/// What the producer's delivery callbacks tell the sink. Successes touch only counters;
/// a failure (the broker away) takes a lock to hand its message back.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    /// Messages of the spool segment being sent still unanswered.
    spool_outstanding: AtomicU64,
    failed: Mutex<Vec<Spooled>>,
    /// Messages the broker refused for their size: spooling them would not help.
    too_large: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// A delivery failed in a way that leaves this producer's idempotence state unusable
    /// (fenced, a broken sequence): the next commit makes a new producer.
    producer_broken: AtomicBool,
}

impl Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        // Brokers down are reported here every few seconds; the counters and the spool say
        // what it costs, the log says why once per occurrence.
        tracing::debug!(target: "kafka", "{error}: {reason}");
        *self.last_error.lock().expect("not poisoned") = Some(format!("{error}: {reason}"));
    }

    fn delivery(&self, result: &DeliveryResult<'_>, origin: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _))
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
            {
                self.too_large.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                let spooled = Spooled {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                self.failed.lock().expect("not poisoned").push(spooled);
                *self.last_error.lock().expect("not poisoned") = Some(error.to_string());
                if breaks_the_producer(error) {
                    self.producer_broken.store(true, Ordering::Relaxed);
                }
            }
        }
        // After the failure is handed back: a segment is removed only once this reaches 0.
        if origin == FROM_SPOOL {
            self.spool_outstanding.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Whether a delivery error means the producer's id or epoch is no longer accepted: every
/// later message of this producer would fail the same way (seen with brokers that fence an
/// idempotent producer bumping its own epoch after a message timed out).
fn breaks_the_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// The spool's size as the metrics show it.
struct SpoolGauges {
    messages: IntGauge,
    bytes: IntGauge,
    age_seconds: IntGauge,
}

/// The Kafka sink of `hawking serve`.
pub struct KafkaSink {
    producer: ThreadedProducer<SharedDeliveries>,
    /// How the producer was made, to make another when one fails fatally.
    client: ClientConfig,
    deliveries: Arc<Deliveries>,
    config: KafkaSinkConfig,
    /// The `hawking-schema` header of every message.
    header: &'static str,
    /// Bytes a raw flow message may take: under the producer's `message.max.bytes`.
    raw_message_bytes: usize,
    spool: Spool,
    gauges: SpoolGauges,
    component: Component,
    encoded: EncodedBatch,
    /// The spool segment being sent, if any.
    sending_segment: Option<u64>,
    /// Deliveries counted into commits so far.
    reported: u64,
    /// When the producer last had to give up waiting for room or a delivery failed: the
    /// broker is away, so new flows go straight to the spool until the next retry.
    failing_since: Option<Instant>,
    last_retry: Instant,
    /// Flows handed over since the last commit (for `commit_due`).
    pending: u64,
    last_commit: Instant,
}

impl KafkaSink {
    /// Connects the producer (it reaches the brokers in the background) and opens the spool
    /// (`data_dir/spool/kafka` unless configured), which may hold flows of an earlier run.
    pub fn open(
        config: &KafkaSinkConfig,
        data_dir: &Path,
        telemetry: &Telemetry,
    ) -> Result<KafkaSink, KafkaSinkError> {
        let spool = data_dir.join("spool").join("kafka");
        let header = config.format.schema_header();
        Self::open_as(config, header, spool, "kafka", telemetry)
    }

    /// A collector's publisher of raw flows (`hawking.raw.v1`, one message per exporter's
    /// part of a source batch, see [`Self::publish_raw`]) to `config.topic`, spooling in
    /// `data_dir/spool/kafka-raw` unless configured. Its counters are component `kafka_raw`'s.
    pub fn open_raw(
        config: &KafkaSinkConfig,
        data_dir: &Path,
        telemetry: &Telemetry,
    ) -> Result<KafkaSink, KafkaSinkError> {
        let spool = data_dir.join("spool").join("kafka-raw");
        Self::open_as(config, RAW_SCHEMA, spool, "kafka_raw", telemetry)
    }

    fn open_as(
        config: &KafkaSinkConfig,
        header: &'static str,
        default_spool: PathBuf,
        name: &str,
        telemetry: &Telemetry,
    ) -> Result<KafkaSink, KafkaSinkError> {
        let brokers = config.brokers.as_deref().ok_or(KafkaSinkError::NoBrokers)?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "262144");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                ((config.delivery_timeout_secs * 1000.0) as u64)
                    .max(1)
                    .to_string(),
            );
        let deliveries = Arc::new(Deliveries::default());
        let producer = ThreadedProducer::from_config_and_context(
            &client,
            SharedDeliveries(deliveries.clone()),
        )?;
        let spool_dir = config.spool_dir.clone().unwrap_or(default_spool);
        let spool = Spool::open(&spool_dir, config.spool_max_bytes)?;
        let gauges = SpoolGauges {
            messages: telemetry.gauge(
                "hawking_kafka_spool_messages",
                "Flows waiting in the Kafka sink's spool for the broker",
            )?,
            bytes: telemetry.gauge(
                "hawking_kafka_spool_bytes",
                "Bytes of the Kafka sink's spool on disk",
            )?,
            age_seconds: telemetry.gauge(
                "hawking_kafka_spool_age_seconds",
                "How long the oldest flow in the Kafka sink's spool has waited",
            )?,
        };
        if spool.messages() > 0 {
            tracing::info!(
                messages = spool.messages(),
                dir = %spool_dir.display(),
                "the Kafka spool holds flows of an earlier run; they are sent when the broker takes them"
            );
        }
        let sink = KafkaSink {
            producer,
            client,
            deliveries,
            config: config.clone(),
            header,
            raw_message_bytes: config
                .properties
                .get("message.max.bytes")
                .and_then(|v| v.parse::<usize>().ok())
                // Room for the record's key, headers and framing.
                .map_or(RAW_MESSAGE_BYTES, |limit| {
                    RAW_MESSAGE_BYTES.min(limit.saturating_sub(1024))
                }),
            spool,
            gauges,
            component: telemetry.component(ComponentKind::Sink, name),
            encoded: EncodedBatch::default(),
            sending_segment: None,
            reported: 0,
            failing_since: None,
            last_retry: Instant::now(),
            pending: 0,
            last_commit: Instant::now(),
        };
        sink.publish_gauges();
        Ok(sink)
    }

    fn publish_gauges(&self) {
        self.gauges.messages.set(self.spool.messages() as i64);
        self.gauges.bytes.set(self.spool.bytes() as i64);
        self.gauges
            .age_seconds
            .set(self.spool.age(SystemTime::now()).as_secs() as i64);
    }

    fn headers(&self) -> OwnedHeaders {
        OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some(self.header),
        })
    }

    /// Hands one message to the producer, waiting up to `wait` for room in its queue; a
    /// message it will not take comes back.
    fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        origin: usize,
        wait: Duration,
    ) -> Result<(), KafkaError> {
        // The clock is read only once the queue is full: a send is per flow.
        let mut deadline = None;
        loop {
            let mut record = BaseRecord::with_opaque_to(&self.config.topic, origin)
                .payload(payload)
                .headers(self.headers());
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < *deadline.get_or_insert_with(|| Instant::now() + wait) =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// How long a send may wait for room: while the broker is away new messages go to the
    /// spool at once instead of waiting for room that will not come.
    fn queue_wait(&self) -> Duration {
        match self.failing_since {
            Some(_) => Duration::ZERO,
            None => QUEUE_WAIT,
        }
    }

    /// Sends one message, or adds it to `refused` (once one is refused, the rest of a write
    /// follows it to the spool, keeping their order); one larger than the producer's
    /// `message.max.bytes` is dropped and counted.
    fn offer(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        wait: Duration,
        refused: &mut Vec<Spooled>,
    ) {
        let sent = match refused.is_empty() {
            true => self.send(key, payload, 0, wait),
            false => Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
        };
        match sent {
            Ok(()) => {}
            // The broker's limit (`message.max.bytes`) will not change by waiting in the
            // spool: dropped and counted, the rest goes on.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                self.component.dropped(1, "message_too_large")
            }
            Err(_) => refused.push(Spooled {
                key: key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
            }),
        }
    }

    /// Spools what the producer would not take: the broker is failing.
    fn spool_refused(&mut self, refused: &[Spooled]) {
        if !refused.is_empty() {
            self.failing_since.get_or_insert_with(Instant::now);
            let _ = self.spool_messages(refused, None);
            self.publish_gauges();
        }
    }

    /// Publishes what a source batch carries as raw flow messages (a sink opened with
    /// [`Self::open_raw`]): one per exporter, keyed by its address, so that one exporter's
    /// flows keep their order on one partition; NAT events and signs of life go with their
    /// exporter's message.
    pub fn publish_raw(&mut self, batch: &SourceBatch) {
        let flows = &batch.flows;
        // Rows grouped by exporter, each exporter's in their order.
        let mut order: Vec<usize> = (0..flows.len()).collect();
        order.sort_by_key(|&i| flows.exporter[i]);
        let mut exporters: Vec<u128> = order.iter().map(|&i| flows.exporter[i]).collect();
        exporters.extend(batch.nat_events.iter().map(|e| e.exporter));
        exporters.extend(batch.nat_alive.iter().map(|a| a.exporter));
        exporters.sort_unstable();
        exporters.dedup();
        let wait = self.queue_wait();
        let (mut refused, mut key, mut payload) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = &order[..];
        for exporter in exporters {
            let own = rest.partition_point(|&i| flows.exporter[i] == exporter);
            let (mut rows, after) = rest.split_at(own);
            rest = after;
            let events: Vec<_> = batch
                .nat_events
                .iter()
                .filter(|e| e.exporter == exporter)
                .copied()
                .collect();
            let alive: Vec<_> = batch
                .nat_alive
                .iter()
                .filter(|a| a.exporter == exporter)
                .copied()
                .collect();
            key.clear();
            push_ip_text(&mut key, exporter);
            // Messages stay under the broker's limit: an exporter's rows go in several when
            // they are many; its NAT events and signs of life go with the first.
            let (mut first, mut most) = (true, RAW_MESSAGE_FLOWS);
            while first || !rows.is_empty() {
                let take = loop {
                    let take = rows.len().min(most);
                    payload.clear();
                    let (events, alive) = match first {
                        true => (&events[..], &alive[..]),
                        false => (&[][..], &[][..]),
                    };
                    raw::encode(flows, &rows[..take], events, alive, &mut payload);
                    if payload.len() <= self.raw_message_bytes || take <= 1 {
                        break take;
                    }
                    // The exporter's next messages are as small as this one must be.
                    most = take / 2;
                };
                rows = &rows[take..];
                first = false;
                self.component.received(1, payload.len() as u64);
                self.pending += 1;
                self.offer(Some(&key), &payload, wait, &mut refused);
            }
        }
        self.spool_refused(&refused);
    }

    /// Writes `messages` to the spool, counting what did not fit (or could not be written:
    /// a disk error loses them, counted and logged, rather than stopping the pipeline).
    /// With `replacing`, the messages include what failed of that segment, which is removed
    /// next: its room is theirs. Whether the spool took them (all, or all that fit).
    fn spool_messages(&mut self, messages: &[Spooled], replacing: Option<u64>) -> bool {
        if messages.is_empty() {
            return true;
        }
        match self.spool.append(messages, replacing) {
            Ok(done) => {
                if done.dropped > 0 {
                    self.component.dropped(done.dropped, "spool_full");
                }
                true
            }
            Err(e) => {
                self.component.error("spool_write_failed", &e);
                self.component
                    .dropped(messages.len() as u64, "spool_write_failed");
                false
            }
        }
    }

    /// Spools the deliveries that failed, and removes the spool segment being sent once
    /// every message of it is answered.
    fn settle(&mut self) -> Result<(), SpoolError> {
        let segment_answered = self.sending_segment.is_some()
            && self.deliveries.spool_outstanding.load(Ordering::Acquire) == 0;
        let failed = std::mem::take(&mut *self.deliveries.failed.lock().expect("not poisoned"));
        let too_large = self.deliveries.too_large.swap(0, Ordering::Relaxed);
        self.component.dropped(too_large, "message_too_large");
        if !failed.is_empty() {
            self.failing_since.get_or_insert_with(Instant::now);
            let why = self
                .deliveries
                .last_error
                .lock()
                .expect("not poisoned")
                .clone();
            self.component.errors_of(
                failed.len() as u64,
                "delivery_failed",
                &format!(
                    "{} flows not delivered ({}); spooled",
                    failed.len(),
                    why.as_deref().unwrap_or("no reason given")
                ),
            );
        }
        let answered = match segment_answered {
            true => self.sending_segment.take(),
            false => None,
        };
        // A segment whose failures could not be written again stays, to be sent again
        // (what of it was delivered then arrives twice, rather than the rest never).
        if self.spool_messages(&failed, answered)
            && let Some(id) = answered
        {
            self.spool.remove(id)?;
        }
        Ok(())
    }

    /// Sends the oldest spool segment when none is being sent and the broker is not known
    /// to be away (or a retry is due).
    fn send_spool(&mut self) -> Result<(), SpoolError> {
        if self.sending_segment.is_some() {
            return Ok(());
        }
        let Some(segment) = self.spool.oldest().cloned() else {
            self.failing_since = None;
            return Ok(());
        };
        let retry = Duration::from_secs_f64(self.config.retry_interval_secs);
        if self.failing_since.is_some() && self.last_retry.elapsed() < retry {
            return Ok(());
        }
        self.last_retry = Instant::now();
        let (messages, damage) = self.spool.read(&segment);
        if let Some(e) = damage {
            self.component.error("spool_damaged", &e);
        }
        self.deliveries
            .spool_outstanding
            .store(messages.len() as u64, Ordering::Release);
        self.sending_segment = Some(segment.id);
        let mut refused = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if let Err(e) = self.send(m.key.as_deref(), &m.payload, FROM_SPOOL, QUEUE_WAIT) {
                tracing::debug!(target: "kafka", "spool send stopped: {e}");
                refused.extend_from_slice(&messages[i..]);
                break;
            }
        }
        if !refused.is_empty() {
            // Not handed over: back to the spool as a new segment, before the old one can go.
            self.failing_since.get_or_insert_with(Instant::now);
            self.deliveries
                .spool_outstanding
                .fetch_sub(refused.len() as u64, Ordering::AcqRel);
            let _ = self.spool_messages(&refused, None);
        }
        Ok(())
    }

    /// An idempotent producer that met a fatal error (fenced by the broker, say, after an
    /// outage) fails every message from then on: a new one takes over. Dropping the old one
    /// hands back what it held as failed deliveries, which the next settle spools.
    fn replace_if_fatal(&mut self) {
        let broken = self
            .deliveries
            .producer_broken
            .swap(false, Ordering::Relaxed);
        let (code, reason) = match self.producer.client().fatal_error() {
            Some((code, reason)) => (format!("{code:?}"), reason),
            None if broken => (
                "refused".to_string(),
                self.deliveries
                    .last_error
                    .lock()
                    .expect("not poisoned")
                    .clone()
                    .unwrap_or_default(),
            ),
            None => return,
        };
        match ThreadedProducer::from_config_and_context(
            &self.client,
            SharedDeliveries(self.deliveries.clone()),
        ) {
            Ok(fresh) => {
                self.component.error(
                    "producer_fatal",
                    &format!("{code}: {reason}; a new producer takes over"),
                );
                drop(std::mem::replace(&mut self.producer, fresh));
            }
            Err(e) => self.component.error(
                "producer_fatal",
                &format!("{code}: {reason}; no new producer: {e}"),
            ),
        }
    }

    fn delivered_since_last(&mut self) -> u64 {
        let delivered = self.deliveries.delivered.load(Ordering::Relaxed);
        let new = delivered - self.reported;
        self.reported = delivered;
        if new > 0 {
            self.component.sent(new);
        }
        new
    }

    fn commit_error(&self, e: SpoolError) -> SinkError {
        SinkError::Commit {
            sink: "kafka".into(),
            source: Box::new(e),
        }
    }
}

/// The context the producer owns, sharing the sink's view of deliveries.
struct SharedDeliveries(Arc<Deliveries>);

impl ClientContext for SharedDeliveries {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::log_librdkafka(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason)
    }
}

impl ProducerContext for SharedDeliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: usize) {
        self.0.delivery(result, origin)
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    fn write(&mut self, table: Table, rows: RecordBatch) -> Result<(), SinkError> {
        if table != Table::Flows || rows.num_rows() == 0 {
            return Ok(());
        }
        let mut encoded = std::mem::take(&mut self.encoded);
        let result = (|| {
            encoded
                .encode(&rows, self.config.key, self.config.format)
                .map_err(|e| SinkError::Rejected {
                    sink: "kafka".into(),
                    table,
                    source: Box::new(e),
                })?;
            self.component.received(encoded.len() as u64, 0);
            self.pending += encoded.len() as u64;
            let wait = self.queue_wait();
            let mut scratch = String::new();
            let mut refused = Vec::new();
            for i in 0..encoded.len() {
                let key = encoded.key(i, &mut scratch);
                self.offer(key, encoded.payload(i), wait, &mut refused);
            }
            self.spool_refused(&refused);
            Ok(())
        })();
        self.encoded = encoded;
        result
    }

    fn commit_due(&self, now: Instant) -> bool {
        // Delivery runs on its own; a commit settles failures and sends the spool, which
        // is worth doing about every second, or sooner when there is much to account for.
        now.duration_since(self.last_commit) >= Duration::from_secs(1) || self.pending >= 1 << 20
    }

    fn commit(&mut self) -> Result<Committed, SinkError> {
        self.last_commit = Instant::now();
        self.pending = 0;
        self.replace_if_fatal();
        self.settle().map_err(|e| self.commit_error(e))?;
        self.send_spool().map_err(|e| self.commit_error(e))?;
        self.publish_gauges();
        let flows = self.delivered_since_last();
        if flows > 0
            && self
                .deliveries
                .failed
                .lock()
                .expect("not poisoned")
                .is_empty()
        {
            // Deliveries go through again.
            if self.failing_since.take().is_some() {
                tracing::info!(target: "kafka", "the broker takes flows again");
            }
        }
        Ok(Committed {
            flows,
            rows: flows,
            units: flows,
        })
    }

    fn shutdown(&mut self) -> Result<Committed, SinkError> {
        let mut committed = self.commit()?;
        // Give the producer a while to deliver what it holds (the spool segment being sent
        // included), then take back whatever it still has: it is spooled for the next run.
        let _ = self.producer.flush(SHUTDOWN_FLUSH);
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let _ = self.producer.flush(Duration::from_secs(1));
        self.settle().map_err(|e| self.commit_error(e))?;
        self.publish_gauges();
        let flows = self.delivered_since_last();
        committed.flows += flows;
        committed.rows += flows;
        committed.units += flows;
        if self.spool.messages() > 0 {
            tracing::warn!(
                target: "kafka",
                messages = self.spool.messages(),
                "flows not delivered to Kafka stay in the spool for the next start"
            );
        }
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::FlowBatch;
    use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
    use hawking_schemas::ip::v4_to_u128;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;

    const TOPIC: &str = "hawking.flows";

    /// `n` flows from exporter 192.0.2.1, flow `i` of `first + i` bytes.
    fn flows(first: u64, n: u64) -> RecordBatch {
        let mut b = FlowBatch::default();
        let origin = FlowOrigin {
            received_at: 1_796_083_200_000_000,
            exporter: v4_to_u128(0xc000_0201),
            observation_domain: 7,
            source_kind: SourceKind::Ipfix,
        };
        for i in 0..n {
            let record = FlowRecord {
                flow_start: 1_796_083_200_000_000 + i as i64,
                flow_end: 1_796_083_201_000_000 + i as i64,
                src_ip: v4_to_u128(0x0a00_0001),
                dst_ip: v4_to_u128(0x0a00_0002),
                src_port: 40000,
                dst_port: 443,
                protocol: 6,
                bytes: first + i,
                packets: 1,
                ..Default::default()
            };
            b.push(&origin, &record);
        }
        b.to_record_batch_unattributed().unwrap()
    }

    /// A one-broker mock cluster with the flows topic (its broker down when `down`), a
    /// spool directory and a registry for the sink's metrics.
    fn mock_cluster(
        partitions: i32,
        down: bool,
    ) -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        tempfile::TempDir,
        Telemetry,
    ) {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, partitions, 1).unwrap();
        if down {
            mock.broker_down(1).unwrap();
        }
        (mock, tempfile::tempdir().unwrap(), Telemetry::detached())
    }

    fn config(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        spool: &Path,
    ) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: Some(mock.bootstrap_servers()),
            spool_dir: Some(spool.to_path_buf()),
            delivery_timeout_secs: 1.0,
            retry_interval_secs: 0.2,
            ..Default::default()
        }
    }

    /// Commits until `done` says so (or 20 s pass), returning the flows delivered.
    fn commit_until(sink: &mut KafkaSink, done: impl Fn(&KafkaSink, u64) -> bool) -> u64 {
        let mut delivered = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            delivered += sink.commit().unwrap().flows;
            if done(sink, delivered) {
                return delivered;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "not done in 20 s: {delivered} delivered, {} spooled, {} in flight",
            sink.spool.messages(),
            sink.producer.in_flight_count()
        );
    }

    /// Every message on the topic: (key, payload as JSON).
    fn consume(bootstrap: &str, expected: usize) -> Vec<(Option<String>, serde_json::Value)> {
        consume_as(bootstrap, expected, "hawking.flows.v1+json")
            .into_iter()
            .map(|(key, payload)| (key, serde_json::from_slice(&payload).unwrap()))
            .collect()
    }

    /// Every message on the topic, each with the schema header `schema`: (key, payload).
    fn consume_as(
        bootstrap: &str,
        expected: usize,
        schema: &str,
    ) -> Vec<(Option<String>, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[TOPIC]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < expected && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let headers = m.headers().expect("headers");
                let said = headers
                    .iter()
                    .find(|h| h.key == SCHEMA_HEADER)
                    .and_then(|h| h.value)
                    .expect("the schema header");
                assert_eq!(said, schema.as_bytes());
                out.push((
                    m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    m.payload().unwrap().to_vec(),
                ));
            }
        }
        // Anything beyond what was expected would be a duplicate: look a little longer.
        let settle = Instant::now() + Duration::from_millis(500);
        while Instant::now() < settle {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                out.push((None, serde_json::from_slice(m.payload().unwrap()).unwrap()));
            }
        }
        out
    }

    fn bytes_of(messages: &[(Option<String>, serde_json::Value)]) -> Vec<u64> {
        let mut b: Vec<u64> = messages
            .iter()
            .map(|(_, v)| v["bytes"].as_u64().unwrap())
            .collect();
        b.sort();
        b
    }

    #[test]
    fn every_flow_becomes_one_message_keyed_by_its_exporter() {
        let (mock, spool, telemetry) = mock_cluster(3, false);
        let mut sink =
            KafkaSink::open(&config(&mock, spool.path()), spool.path(), &telemetry).unwrap();
        sink.write(Table::Flows, flows(1000, 500)).unwrap();
        sink.write(Table::Flows, flows(2000, 500)).unwrap();
        // Other tables are not the sink's.
        sink.write(
            Table::IpHistoryLog,
            RecordBatch::new_empty(Table::IpHistoryLog.schema()),
        )
        .unwrap();
        let delivered = commit_until(&mut sink, |_, d| d >= 1000);
        assert_eq!(delivered, 1000);
        let messages = consume(&mock.bootstrap_servers(), 1000);
        assert_eq!(messages.len(), 1000);
        let expected: Vec<u64> = (1000..1500).chain(2000..2500).collect();
        assert_eq!(bytes_of(&messages), expected);
        let (key, first) = &messages[0];
        assert_eq!(key.as_deref(), Some("192.0.2.1"));
        assert_eq!(first["exporter"], "192.0.2.1");
        assert_eq!(first["src_ip"], "10.0.0.1");
        assert_eq!(first["dst_port"], 443);
        assert_eq!(first["observation_domain"], 7);
        assert!(
            first["flow_start"]
                .as_str()
                .unwrap()
                .starts_with("2026-12-01T00:00:00"),
            "{first}"
        );
        // An absent value is left out, never written as a made-up one.
        assert!(first.get("src_pod").is_none(), "{first}");
        sink.shutdown().unwrap();
    }

    #[test]
    fn flows_wait_in_the_spool_while_the_broker_is_down_and_arrive_once_it_is_back() {
        let (mock, spool, telemetry) = mock_cluster(1, false);
        let mut sink =
            KafkaSink::open(&config(&mock, spool.path()), spool.path(), &telemetry).unwrap();
        sink.write(Table::Flows, flows(0, 100)).unwrap();
        commit_until(&mut sink, |_, d| d >= 100);
        mock.broker_down(1).unwrap();
        sink.write(Table::Flows, flows(100, 300)).unwrap();
        // The delivery timeout (1 s) gives up on them: they are spooled, and the metrics say so.
        commit_until(&mut sink, |s, _| s.spool.messages() == 300);
        let gauge = |name: &str| {
            telemetry
                .registry()
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap()
        };
        assert_eq!(gauge("hawking_kafka_spool_messages"), 300.0);
        assert!(gauge("hawking_kafka_spool_bytes") > 300.0 * 100.0);
        // More flows while it is down go to the spool at once.
        sink.write(Table::Flows, flows(400, 100)).unwrap();
        commit_until(&mut sink, |s, _| s.spool.messages() == 400);
        mock.broker_up(1).unwrap();
        let delivered = commit_until(&mut sink, |s, _| s.spool.messages() == 0);
        assert!(delivered >= 400, "{delivered}");
        assert_eq!(gauge("hawking_kafka_spool_messages"), 0.0);
        let messages = consume(&mock.bootstrap_servers(), 500);
        assert_eq!(
            bytes_of(&messages),
            (0..500).collect::<Vec<_>>(),
            "each flow once"
        );
        sink.shutdown().unwrap();
    }

    #[test]
    fn a_shutdown_with_the_broker_away_keeps_the_flows_for_the_next_start() {
        let (mock, spool, telemetry) = mock_cluster(1, true);
        let mut config = config(&mock, spool.path());
        config.delivery_timeout_secs = 60.0;
        let mut sink = KafkaSink::open(&config, spool.path(), &telemetry).unwrap();
        sink.write(Table::Flows, flows(0, 200)).unwrap();
        sink.shutdown().unwrap();
        drop(sink);
        let reopened = Spool::open(spool.path(), 1 << 30).unwrap();
        assert_eq!(reopened.messages(), 200);
        mock.broker_up(1).unwrap();
        let mut sink = KafkaSink::open(&config, spool.path(), &telemetry).unwrap();
        commit_until(&mut sink, |s, _| s.spool.messages() == 0);
        let messages = consume(&mock.bootstrap_servers(), 200);
        assert_eq!(bytes_of(&messages), (0..200).collect::<Vec<_>>());
        sink.shutdown().unwrap();
    }

    #[test]
    fn a_full_spool_counts_what_it_drops() {
        let (mock, spool, telemetry) = mock_cluster(1, true);
        let mut config = config(&mock, spool.path());
        config.spool_max_bytes = 20_000;
        config.retry_interval_secs = 600.0;
        let mut sink = KafkaSink::open(&config, spool.path(), &telemetry).unwrap();
        sink.write(Table::Flows, flows(0, 300)).unwrap();
        let dropped = || -> u64 {
            telemetry
                .registry()
                .gather()
                .iter()
                .filter(|f| f.name() == "hawking_component_dropped_events_total")
                .flat_map(|f| f.get_metric().to_vec())
                .filter(|m| m.get_label().iter().any(|l| l.value() == "spool_full"))
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        };
        commit_until(&mut sink, |s, _| s.spool.messages() + dropped() == 300);
        let stored = sink.spool.messages();
        assert!(stored > 0 && stored < 300, "{stored}");
        assert!(sink.spool.bytes() <= 20_000);
        sink.shutdown().unwrap();
    }

    #[test]
    fn raw_flows_go_out_one_message_per_exporter_under_the_size_limit() {
        use hawking_schemas::nat::NatEvent;
        use hawking_schemas::raw;
        let (mock, spool, telemetry) = mock_cluster(3, false);
        let mut config = config(&mock, spool.path());
        config.topic = TOPIC.into();
        let mut sink = KafkaSink::open_raw(&config, spool.path(), &telemetry).unwrap();
        // 6,000 flows of 192.0.2.1 interleaved with 4,000 of 192.0.2.2, and a NAT event of
        // 192.0.2.9, which exported no flow.
        let mut batch = SourceBatch::default();
        for i in 0..10_000u64 {
            let exporter = if i % 5 < 3 { 0xc000_0201 } else { 0xc000_0202 };
            let origin = FlowOrigin {
                received_at: 1_796_083_200_000_000,
                exporter: v4_to_u128(exporter),
                observation_domain: 0,
                source_kind: SourceKind::NetflowV9,
            };
            let record = FlowRecord {
                flow_start: 1_796_083_200_000_000,
                flow_end: 1_796_083_200_000_000,
                sampling_rate: 1,
                bytes: i,
                ..Default::default()
            };
            batch.flows.push(&origin, &record);
        }
        batch.nat_events.push(NatEvent {
            exporter: v4_to_u128(0xc000_0209),
            ..Default::default()
        });
        sink.publish_raw(&batch);
        commit_until(&mut sink, |_, delivered| delivered >= 4);
        let messages = consume_as(&mock.bootstrap_servers(), 4, raw::RAW_SCHEMA);
        let mut by_key: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        let mut events = 0;
        for (key, payload) in &messages {
            assert!(payload.len() <= RAW_MESSAGE_BYTES);
            let (mut scratch, mut out) = (FlowBatch::default(), SourceBatch::default());
            raw::decode(payload, &mut scratch, &mut out).unwrap();
            events += out.nat_events.len();
            let key = key.clone().unwrap();
            assert!(
                out.flows
                    .exporter
                    .iter()
                    .all(|e| hawking_schemas::ip::ip_text(*e) == key)
            );
            by_key.entry(key).or_default().extend(out.flows.bytes);
        }
        assert_eq!(
            messages.len(),
            4,
            "6,000 flows in two messages, 4,000 in one, the NAT event in one"
        );
        assert_eq!(events, 1);
        let ordered = |k: &str| by_key[k].windows(2).all(|w| w[0] < w[1]);
        assert_eq!(by_key["192.0.2.1"].len(), 6000);
        assert_eq!(by_key["192.0.2.2"].len(), 4000);
        assert!(by_key["192.0.2.9"].is_empty());
        assert!(
            ordered("192.0.2.1") && ordered("192.0.2.2"),
            "each exporter's flows in order"
        );
        sink.shutdown().unwrap();
    }

    #[test]
    fn raw_messages_fit_a_lower_size_limit_and_one_that_cannot_is_dropped_and_counted() {
        let (mock, spool, telemetry) = mock_cluster(1, false);
        let mut config = config(&mock, spool.path());
        config
            .properties
            .insert("message.max.bytes".into(), "100000".into());
        let mut sink = KafkaSink::open_raw(&config, spool.path(), &telemetry).unwrap();
        let origin = FlowOrigin {
            received_at: 1_796_083_200_000_000,
            exporter: v4_to_u128(0xc000_0201),
            observation_domain: 0,
            source_kind: SourceKind::NetflowV9,
        };
        // 4,096 flows of one exporter (some 450 KB) go in messages under the 100 KB limit.
        let mut batch = SourceBatch::default();
        for i in 0..4096u64 {
            let record = FlowRecord {
                flow_start: 1_796_083_200_000_000,
                flow_end: 1_796_083_200_000_000,
                sampling_rate: 1,
                bytes: i,
                ..Default::default()
            };
            batch.flows.push(&origin, &record);
        }
        sink.publish_raw(&batch);
        let delivered = commit_until(&mut sink, |_, delivered| delivered >= 8);
        assert_eq!(delivered, 8, "halved three times: 8 messages of 512 flows");
        let mut flows = 0;
        for (_, payload) in consume_as(
            &mock.bootstrap_servers(),
            8,
            hawking_schemas::raw::RAW_SCHEMA,
        ) {
            assert!(payload.len() < 100_000);
            let (mut scratch, mut out) = (FlowBatch::default(), SourceBatch::default());
            hawking_schemas::raw::decode(&payload, &mut scratch, &mut out).unwrap();
            flows += out.flows.len();
        }
        assert_eq!(flows, 4096);
        // A flow whose details alone are over the limit cannot be cut: dropped, counted,
        // not spooled for ever.
        let mut huge = SourceBatch::default();
        let text = "x".repeat(200_000);
        let mut row = hawking_schemas::flow_details::DetailRow::default();
        row.set(hawking_schemas::flow_details::Text::Verdict, Some(&text));
        huge.flows.details_mut().push(&row);
        huge.flows.push(&origin, &FlowRecord::default());
        sink.publish_raw(&huge);
        assert_eq!(sink.spool.messages(), 0, "nothing spooled");
        sink.shutdown().unwrap();
        let metrics = telemetry.exposition();
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("reason=\"message_too_large\"") && l.ends_with(" 1")),
            "{metrics}"
        );
    }
}
