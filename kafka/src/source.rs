//! A Kafka source (`[[kafka_sources]]`): flows consumed from topics as a member of a
//! consumer group, decoded as the producer wrote them (goflow2's protobuf or JSON), with each
//! partition's offset committed only once the flows read up to it are in the store.
//!
//! The offsets travel with the flows: when the source hands a batch over, the transport
//! seals a [`Receipt`] holding the next offset of every partition it has read; the pipeline
//! completes the receipt after the store commit that included the batch's rows, and only then
//! are those offsets stored in the consumer (librdkafka commits stored offsets every
//! `auto.commit.interval.ms`, and on close). So a crash loses nothing: a restarted enricher
//! (or another of its group) reads again from the last committed offsets, and what was stored
//! after that commit is stored a second time: at most what the store committed in the last
//! `auto.commit.interval.ms` (5 s by default) before the crash. Those duplicates are not
//! removed.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hawking_collector::decode::Decoder;
use hawking_collector::decode::goflow2::{Goflow2Decoder, Goflow2Format};
use hawking_collector::decode::hawking_raw::RawFlowDecoder;
use hawking_collector::source::{Batching, Source};
use hawking_collector::transport::{Received, Transport, TransportError, Wait};
use hawking_schemas::pipeline::{Receipt, ReceiptLedger};
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// How long one receive waits for the first message.
const POLL: Duration = Duration::from_millis(100);

/// Messages taken in one receive at most (the source seals batches in between).
const MESSAGES_PER_RECEIVE: usize = 4096;

/// Payload bytes taken in one receive at most: a raw message carries thousands of flows,
/// and the pipeline bounds what waits between the stages in batches, so a batch's size must
/// be bounded too. With 4096 raw messages a batch, an enricher read 0.7M flows/s at 0.4–1.8
/// GB; with 4 MiB, 1.3M flows/s at 330 MiB (tests/bench/kafka_enricher.py).
const BYTES_PER_RECEIVE: usize = 4 << 20;

/// What the messages on the topics are.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaInputFormat {
    /// goflow2 `-format=bin`: `flowpb.FlowMessage`s, each prefixed with its length as a
    /// varint (goflow2 v2's Kafka output).
    Goflow2Protobuf,
    /// goflow2 `-format=json` (or `-format=text`): one line per message.
    Goflow2Json,
    /// Hawking's raw flows (`hawking.raw.v1`), as `hawking serve --role collector`
    /// publishes them.
    HawkingRaw,
}

/// Where a group that has committed nothing yet starts reading.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message the topic keeps (the default: nothing already published is missed).
    #[default]
    Earliest,
    /// Only messages published from now on.
    Latest,
}

/// One `[[kafka_sources]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// The consumer group: enrichers in one group share the topics' partitions. Default
    /// `hawking-enrichers`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// What the messages are: `goflow2_protobuf`, `goflow2_json` or `hawking_raw`.
    pub format: KafkaInputFormat,
    /// The address that stands for the exporter of flows whose message names none (goflow2's
    /// `sampler_address` unset). Unset (the default): such flows are dropped and counted
    /// (reason `no_sampler_address`) rather than stored under an address no one reported.
    #[serde(default)]
    pub exporter: Option<IpAddr>,
    /// Where a group with no committed offsets starts: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Further librdkafka consumer properties, passed as given (`security.protocol`,
    /// `sasl.*`, `auto.commit.interval.ms`, ...). Offsets are always committed by Hawking
    /// after the store commit (`enable.auto.offset.store=false`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group() -> String {
    "hawking-enrichers".into()
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("[[kafka_sources]] {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("[[kafka_sources]] {brokers}: no topics to consume")]
    NoTopics { brokers: String },
}

impl KafkaSourceConfig {
    /// Joins the group and subscribes (the brokers are reached in the background: a broker
    /// down at start is retried, not fatal). The source is named `kafka_<index>`.
    pub fn build(&self, index: usize, telemetry: &Telemetry) -> Result<Source, KafkaSourceError> {
        let client_error = |source| KafkaSourceError::Client {
            brokers: self.brokers.clone(),
            source,
        };
        if self.topics.is_empty() {
            return Err(KafkaSourceError::NoTopics {
                brokers: self.brokers.clone(),
            });
        }
        let name = format!("kafka_{index}");
        let component = telemetry.component(ComponentKind::Source, &name);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set(
                "auto.offset.reset",
                match self.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            // A broker may hold a fetch for the whole wait even while partitions have data
            // (tansu does): librdkafka's 500 ms then caps a backlog at one fetch per half
            // second (435k flows/s against 675k at 100 ms, BENCHMARKS.md). Kafka answers as
            // soon as there is data, so a shorter wait only polls an idle topic more often.
            .set("fetch.wait.max.ms", "100");
        for (k, v) in &self.properties {
            client.set(k, v);
        }
        // librdkafka commits what Hawking stores, and only that.
        client
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        let consumer = BaseConsumer::from_config_and_context(
            &client,
            GroupContext {
                component: component.clone(),
            },
        )
        .map_err(client_error)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(client_error)?;
        let consumer = Arc::new(consumer);
        let decoder: Box<dyn Decoder> = match self.format {
            KafkaInputFormat::Goflow2Protobuf => {
                Box::new(self.goflow2(Goflow2Format::Protobuf, &component))
            }
            KafkaInputFormat::Goflow2Json => {
                Box::new(self.goflow2(Goflow2Format::Lines, &component))
            }
            KafkaInputFormat::HawkingRaw => Box::new(RawFlowDecoder::new(component.clone())),
        };
        tracing::info!(
            source = %name,
            brokers = %self.brokers,
            topics = ?self.topics,
            group = %self.group_id,
            "consuming from Kafka"
        );
        let transport = KafkaInput {
            ledger: Arc::new(OffsetLedger {
                consumer: consumer.clone(),
                sealed: Mutex::new(VecDeque::new()),
                component: component.clone(),
            }),
            consumer,
            read: Vec::new(),
            from: SocketAddr::new(
                self.exporter.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                0,
            ),
            sealed_seq: 0,
            component: component.clone(),
        };
        Ok(Source::new(
            Box::new(transport),
            decoder,
            Batching::FEW_FLOWS_PER_MESSAGE,
            component,
        ))
    }

    fn goflow2(&self, format: Goflow2Format, component: &Component) -> Goflow2Decoder {
        let decoder = Goflow2Decoder::new(format, component.clone());
        match self.exporter {
            Some(_) => decoder,
            None => decoder.requiring_sampler_address(),
        }
    }
}

/// Logs librdkafka and counts what the group reports.
struct GroupContext {
    component: Component,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::log_librdkafka(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A broker down is reported every few seconds while it lasts: counted, logged at most
        // every 10 s.
        self.component
            .error("broker", &format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(source = %self.component.name(), partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(source = %self.component.name(), partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => self.component.error("rebalance", e),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            // Nothing stored since the last commit.
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => self.component.error("offset_commit", &e),
        }
    }
}

/// The next offset to read in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    topic: Arc<str>,
    partition: i32,
    next: i64,
}

/// The offsets each sealed receipt stands for, until the pipeline says they are stored.
struct OffsetLedger {
    consumer: Arc<BaseConsumer<GroupContext>>,
    sealed: Mutex<VecDeque<(u64, Vec<Position>)>>,
    component: Component,
}

impl ReceiptLedger for OffsetLedger {
    fn stored(&self, seq: u64) {
        let latest = {
            let mut sealed = self.sealed.lock().expect("not poisoned");
            let mut latest = None;
            while sealed.front().is_some_and(|(s, _)| *s <= seq) {
                latest = sealed.pop_front().map(|(_, positions)| positions);
            }
            latest
        };
        let Some(positions) = latest else {
            return;
        };
        // A partition given to another member since is no longer ours to commit: its new
        // owner starts from the last commit, so what we stored after it is stored twice,
        // never skipped.
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut offsets = TopicPartitionList::new();
        for p in &positions {
            if assigned.find_partition(&p.topic, p.partition).is_some() {
                let _ = offsets.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.store_offsets(&offsets) {
            self.component.error("offset_store", &e);
        }
    }
}

/// The consumer as a transport: each message's payload is one message for the decoder.
struct KafkaInput {
    consumer: Arc<BaseConsumer<GroupContext>>,
    ledger: Arc<OffsetLedger>,
    /// The next offset of every partition read from (a handful: a linear search is cheap).
    read: Vec<Position>,
    /// Stands for the exporter when a message names none (see `exporter`).
    from: SocketAddr,
    sealed_seq: u64,
    component: Component,
}

impl KafkaInput {
    fn note_read(&mut self, topic: &str, partition: i32, offset: i64) {
        let next = offset + 1;
        match self
            .read
            .iter_mut()
            .find(|p| p.partition == partition && &*p.topic == topic)
        {
            // In order within a partition; after a rebalance it may start again lower.
            Some(p) => p.next = next,
            None => self.read.push(Position {
                topic: topic.into(),
                partition,
                next,
            }),
        }
    }
}

impl Transport for KafkaInput {
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError> {
        let consumer = self.consumer.clone();
        let (mut count, mut bytes) = (0, 0);
        let mut timeout = match wait {
            Wait::Briefly => POLL,
            Wait::Never => Duration::ZERO,
        };
        while count < MESSAGES_PER_RECEIVE && bytes < BYTES_PER_RECEIVE {
            let Some(polled) = consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            match polled {
                Ok(message) => {
                    if let Some(payload) = message.payload() {
                        on_message(self.from, payload);
                        bytes += payload.len();
                    }
                    count += 1;
                    self.note_read(message.topic(), message.partition(), message.offset());
                }
                // Broker and partition errors: librdkafka retries on its own.
                Err(e) => self.component.error("consume", &e),
            }
        }
        Ok(if count == 0 {
            Received::Idle
        } else {
            Received::Messages { count, bytes }
        })
    }

    fn seal(&mut self) -> Option<Receipt> {
        if self.read.is_empty() {
            return None;
        }
        self.sealed_seq += 1;
        self.ledger
            .sealed
            .lock()
            .expect("not poisoned")
            .push_back((self.sealed_seq, self.read.clone()));
        Some(Receipt::new(self.ledger.clone(), self.sealed_seq))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    use hawking_schemas::ip::parse_ip;
    use hawking_schemas::pipeline::SourceBatch;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};

    use super::*;

    const TOPIC: &str = "goflow2";

    /// One goflow2 `FlowMessage` as goflow2 writes it to Kafka (varint length first):
    /// `sampler` exported a TCP flow of `bytes` from 10.4.1.10 to 93.184.216.34.
    fn goflow2_message(sampler: [u8; 4], bytes: u64) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut m = Vec::new();
        let number = |m: &mut Vec<u8>, field: u64, v: u64| {
            varint(m, field << 3);
            varint(m, v);
        };
        number(&mut m, 1, 3); // type NETFLOW_V9
        number(&mut m, 9, bytes);
        number(&mut m, 10, 2); // packets
        number(&mut m, 20, 6); // proto
        number(&mut m, 111, 1_796_083_200_000_000_000); // time_flow_start_ns
        for (field, addr) in [(11, sampler), (6, [10, 4, 1, 10]), (7, [93, 184, 216, 34])] {
            varint(&mut m, (field << 3) | 2);
            varint(&mut m, 4);
            m.extend_from_slice(&addr);
        }
        let mut framed = Vec::new();
        varint(&mut framed, m.len() as u64);
        framed.extend(m);
        framed
    }

    fn produce(mock: &MockCluster<'_, DefaultProducerContext>, messages: &[Vec<u8>]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .unwrap();
        for (i, m) in messages.iter().enumerate() {
            let key = (i % 4).to_string();
            producer
                .send(BaseRecord::to(TOPIC).key(&key).payload(m))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    fn config(mock: &MockCluster<'_, DefaultProducerContext>) -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: mock.bootstrap_servers(),
            topics: vec![TOPIC.into()],
            group_id: "enrichers".into(),
            format: KafkaInputFormat::Goflow2Protobuf,
            exporter: None,
            start_from: StartFrom::Earliest,
            // The mock cluster lets a member join a group someone left only after the leaver's
            // poll interval: short ones keep the test short.
            properties: BTreeMap::from([
                ("auto.commit.interval.ms".into(), "100".into()),
                ("session.timeout.ms".into(), "6000".into()),
                ("max.poll.interval.ms".into(), "7000".into()),
            ]),
        }
    }

    /// Runs the source until `flows` flows came, then stops it; returns its batches.
    fn consume(
        config: &KafkaSourceConfig,
        flows: usize,
        telemetry: &Telemetry,
    ) -> Vec<SourceBatch> {
        let source = config.build(0, telemetry).unwrap();
        let (tx, rx) = mpsc::channel();
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let runner = std::thread::spawn(move || {
            source.run(&mut |b| tx.send(b).is_ok(), &stop).unwrap();
        });
        let mut batches: Vec<SourceBatch> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while batches.iter().map(|b| b.flows.len()).sum::<usize>() < flows {
            assert!(
                std::time::Instant::now() < deadline,
                "flows did not come: {} of {flows}",
                batches.iter().map(|b| b.flows.len()).sum::<usize>()
            );
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
                batches.push(b);
            }
        }
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        runner.join().unwrap();
        batches.extend(rx.try_iter());
        batches
    }

    /// What the group has committed, summed over the partitions (each partition's next offset).
    fn committed(mock: &MockCluster<'_, DefaultProducerContext>) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "enrichers")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition(TOPIC, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            })
            .sum()
    }

    #[test]
    fn offsets_are_committed_only_for_batches_the_store_has_taken() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, 3, 1).unwrap();
        let messages: Vec<Vec<u8>> = (0..300)
            .map(|i| goflow2_message([192, 0, 2, 1], 1000 + i))
            .collect();
        produce(&mock, &messages);
        let telemetry = Telemetry::detached();

        // A run whose flows never reach the store (a crash): nothing committed, and the next
        // member of the group reads every message again.
        let lost = consume(&config(&mock), 300, &telemetry);
        drop(lost);
        assert_eq!(committed(&mock), 0);

        let batches = consume(&config(&mock), 300, &telemetry);
        let flows: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.flows.bytes.iter().copied())
            .collect();
        assert_eq!(flows.len(), 300, "every message read again, once");
        let exporters: Vec<u128> = batches
            .iter()
            .flat_map(|b| b.flows.exporter.iter().copied())
            .collect();
        assert!(
            exporters
                .iter()
                .all(|e| *e == parse_ip("192.0.2.1").unwrap())
        );
        // Stored: the receipts complete, the offsets are committed (on close at the latest).
        batches
            .into_iter()
            .flat_map(|b| b.receipts)
            .for_each(Receipt::stored);
        assert_eq!(
            committed(&mock),
            300,
            "every partition's offset past its last message"
        );
    }

    #[test]
    fn a_message_naming_no_device_is_dropped_unless_an_exporter_stands_for_it() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, 3, 1).unwrap();
        // A FlowMessage with no sampler_address (field 11 zero-length is absent in proto3).
        let mut anonymous = goflow2_message([192, 0, 2, 1], 5);
        let at = anonymous
            .windows(3)
            .position(|w| w == [0x5a, 4, 192])
            .unwrap();
        anonymous.drain(at..at + 6);
        anonymous[0] -= 6;
        produce(
            &mock,
            &[
                anonymous.clone(),
                // An all-zero address is what an unset field reads as: no device either.
                goflow2_message([0, 0, 0, 0], 6),
                goflow2_message([192, 0, 2, 1], 7),
            ],
        );
        let telemetry = Telemetry::detached();
        let batches = consume(&config(&mock), 1, &telemetry);
        let bytes: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.flows.bytes.iter().copied())
            .collect();
        assert_eq!(bytes, [7]);
        let text = telemetry.exposition();
        assert!(
            text.lines()
                .any(|l| l.contains("reason=\"no_sampler_address\"") && l.ends_with(" 2")),
            "{text}"
        );

        let mut standing = config(&mock);
        standing.group_id = "others".into();
        standing.exporter = Some("198.51.100.7".parse().unwrap());
        let batches = consume(&standing, 2, &telemetry);
        let exporters: Vec<u128> = batches
            .iter()
            .flat_map(|b| b.flows.exporter.iter().copied())
            .collect();
        assert!(exporters.contains(&parse_ip("198.51.100.7").unwrap()));
        assert!(exporters.contains(&parse_ip("192.0.2.1").unwrap()));
    }
}
