//! Hawking's store and query layer: the Parquet store (layout, writer, reader, and the
//! store as a pipeline sink), the history read back from it, the DataFusion session with its
//! tables, functions and `whois(...)`, the PostgreSQL-wire server, and result output. Knows
//! nothing of decoding or Kubernetes; attribution decisions (whois) are the enricher's.

pub mod functions;
pub mod history;
pub mod output;
pub mod pg;
pub mod session;
pub mod store;
pub mod table;
pub mod whois;

pub use output::{OutputFormat, write_batches};
pub use session::{QueryError, QueryOptions, open_session};
pub use store::root::{S3Options, StoreRoot};
pub use store::sink::{StoreConfig, StoreSink};
pub use store::writer::{Codec, ColumnTuning, CommittedFile, PartitionedWriter, WriterOptions};
pub use store::{DataFile, FLOWS_INGEST_TUNING, FLOWS_TUNING, StoreError, list_files};
