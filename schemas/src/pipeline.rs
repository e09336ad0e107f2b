//! The contracts between the pipeline's stages: what a source hands to the enrichment stage
//! ([`SourceBatch`]), the tables the stage's output is written to ([`Table`]), and the one
//! interface every sink implements ([`Sink`]).
//!
//! ```text
//! source (transport + decoder) ──SourceBatch──▶ enrichment stage ──(Table, RecordBatch)──▶ sinks
//! ```

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::flow::FlowBatch;
use crate::nat::{NatAlive, NatEvent};
use crate::observation::Observation;

/// Everything a source learned from one stretch of its input, in one message so that what
/// explains a flow (a NAT translation, an address observation) is applied before the flows
/// that arrived with or after it are attributed, whatever the source.
#[derive(Clone, Debug, Default)]
pub struct SourceBatch {
    /// Decoded flows.
    pub flows: FlowBatch,
    /// NAT session events (RFC 8158 records, a node agent's translations).
    pub nat_events: Vec<NatEvent>,
    /// NAT logging exporters that showed they are alive (announced their NAT templates).
    pub nat_alive: Vec<NatAlive>,
    /// What the source says about who held which address (cluster watches; eBPF exporters'
    /// endpoint identities).
    pub observations: Vec<Observation>,
    /// Whom to tell once everything in this batch (and before it, from the same source) is
    /// durably stored: a Kafka source commits its offsets then. Empty for sources that
    /// cannot replay their input.
    pub receipts: Vec<Receipt>,
}

/// Where a source learns that what it handed over is stored. Receipts of one source are
/// issued with increasing sequence numbers and complete in that order.
pub trait ReceiptLedger: Send + Sync {
    /// Everything the source handed over up to and including receipt `seq` is stored.
    fn stored(&self, seq: u64);
}

/// A source's claim on being told when a batch is stored ([`SourceBatch::receipts`]). The
/// stage passes it along with the batch's rows; the pipeline completes it after a store
/// commit that included them. A receipt dropped without completing (a crash, a failed store)
/// tells the source nothing, so it replays that input when it starts again.
#[derive(Clone)]
pub struct Receipt {
    ledger: Arc<dyn ReceiptLedger>,
    seq: u64,
}

impl Receipt {
    pub fn new(ledger: Arc<dyn ReceiptLedger>, seq: u64) -> Self {
        Receipt { ledger, seq }
    }

    /// The batch it came with is stored.
    pub fn stored(self) {
        self.ledger.stored(self.seq);
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Receipt({})", self.seq)
    }
}

impl SourceBatch {
    pub fn with_capacity(flows: usize) -> Self {
        SourceBatch {
            flows: FlowBatch::with_capacity(flows),
            ..Default::default()
        }
    }

    /// A batch carrying only observations (what a cluster watch sends).
    pub fn observations(observations: Vec<Observation>) -> Self {
        SourceBatch {
            observations,
            ..Default::default()
        }
    }

    /// Whether there is anything to hand downstream.
    pub fn has_content(&self) -> bool {
        !self.flows.is_empty()
            || !self.nat_events.is_empty()
            || !self.nat_alive.is_empty()
            || !self.observations.is_empty()
    }

    pub fn clear(&mut self) {
        self.flows.clear();
        self.nat_events.clear();
        self.nat_alive.clear();
        self.observations.clear();
        self.receipts.clear();
    }
}

/// The stored tables. The history tables are append-only logs, read through views that
/// fold an interval's open and closed rows (`ip_history`, `history_gaps`, `nat_history`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Attributed flows, partitioned by `flow_start`.
    Flows,
    /// Who held which address from when to when (behind the `ip_history` view).
    IpHistoryLog,
    /// When a cluster's history was not observed (behind `history_gaps`).
    HistoryGapsLog,
    /// Source-NAT translations (behind `nat_history`).
    NatHistoryLog,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Flows,
        Table::IpHistoryLog,
        Table::HistoryGapsLog,
        Table::NatHistoryLog,
    ];

    /// The table's name in SQL and its directory in the store.
    pub fn name(self) -> &'static str {
        match self {
            Table::Flows => "flows",
            Table::IpHistoryLog => "ip_history_log",
            Table::HistoryGapsLog => "history_gaps_log",
            Table::NatHistoryLog => "nat_history_log",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Flows => crate::flow::flow_schema(),
            Table::IpHistoryLog => crate::history::ip_history_schema(),
            Table::HistoryGapsLog => crate::history::history_gaps_schema(),
            Table::NatHistoryLog => crate::nat::nat_history_schema(),
        }
    }

    /// For a history log, its ID column and its end column: an interval (gap, translation) is
    /// written open, then again closed under the same ID, and readers keep per ID the closed
    /// row if there is one, else the latest. `None` for `flows`, whose rows stand alone.
    pub fn log_key(self) -> Option<(&'static str, &'static str)> {
        match self {
            Table::Flows => None,
            Table::IpHistoryLog => Some(("interval_id", "valid_to")),
            Table::HistoryGapsLog => Some(("gap_id", "gap_end")),
            Table::NatHistoryLog => Some(("translation_id", "valid_to")),
        }
    }

    /// The timestamp column whose hour partitions the table.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Flows => "flow_start",
            _ => "recorded_at",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a sink could not take or deliver rows.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The rows do not fit the table (a schema mismatch: a bug upstream, not bad input).
    #[error("sink {sink}: rows for {table} rejected: {source}")]
    Rejected {
        sink: String,
        table: Table,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Delivery failed; the rows stay buffered for the next commit (within the sink's bound).
    #[error("sink {sink}: commit failed: {source}")]
    Commit {
        sink: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// At shutdown, accepted rows could not be delivered.
    #[error("sink {sink}: {rows} accepted rows could not be delivered before shutdown")]
    Undelivered { sink: String, rows: u64 },
}

/// What one commit delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Flow rows delivered.
    pub flows: u64,
    /// Rows of every table delivered.
    pub rows: u64,
    /// Files or messages written.
    pub units: u64,
}

impl std::ops::AddAssign for Committed {
    fn add_assign(&mut self, other: Committed) {
        self.flows += other.flows;
        self.rows += other.rows;
        self.units += other.units;
    }
}

/// Where the enrichment stage's rows go: the Parquet store, Kafka, ...
///
/// Rows handed to [`Sink::write`] are the sink's from then on; it buffers them until a
/// commit delivers them, keeps them buffered when delivery fails (up to a bound of its own
/// configuration, beyond which it drops the oldest and counts them), and reports at
/// [`Sink::shutdown`] whatever it could not deliver. Counters of what was received, delivered
/// and dropped (and why) are the sink's to emit through [`crate::telemetry::Component`].
pub trait Sink: Send {
    /// The sink's name in logs and metrics (`store`, `kafka`).
    fn name(&self) -> &str;

    /// Takes rows of `table`. A sink that does not keep `table` ignores them.
    fn write(&mut self, table: Table, rows: RecordBatch) -> Result<(), SinkError>;

    /// Whether the sink's own policy wants a commit at `now` (age of its oldest buffered
    /// row, rows buffered).
    fn commit_due(&self, now: Instant) -> bool;

    /// Delivers what is buffered.
    fn commit(&mut self) -> Result<Committed, SinkError>;

    /// Delivers everything still buffered (retrying once) and reports what could not be.
    fn shutdown(&mut self) -> Result<Committed, SinkError>;

    /// Rows it accepted and then dropped (its buffer bound reached while commits failed),
    /// since it was opened.
    fn shed(&self) -> u64 {
        0
    }
}
