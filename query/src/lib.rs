//! Hawking's store and query layer: the Parquet store layout (writer and reader), the
//! DataFusion session with its tables, and result output. Knows nothing of decoding or
//! Kubernetes.

pub mod functions;
pub mod output;
pub mod pg;
pub mod session;
pub mod store;
pub mod table;

pub use output::{OutputFormat, write_batches};
pub use session::{QueryError, QueryOptions, open_session};
pub use store::writer::{Codec, ColumnTuning, CommittedFile, PartitionedWriter, WriterOptions};
pub use store::{
    DataFile, FLOWS_TABLE, FLOWS_TUNING, HISTORY_GAPS_LOG_TABLE, IP_HISTORY_LOG_TABLE,
    NAT_HISTORY_LOG_TABLE, StoreError, list_files,
};
