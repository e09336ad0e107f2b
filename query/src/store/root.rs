//! Where a store lives: a local directory, or a prefix of an S3 bucket (`s3://bucket/prefix`),
//! and the operations whose way differs between the two. The layout below the root is the
//! same (`<table>/date=…/hour=HH/<file>.parquet`), so DuckDB, Spark or Trino read either.
//!
//! On an object store a file is written with one PUT, which S3 makes visible whole or not at
//! all: a reader never sees a half-written object, so no staging name or rename is needed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use hawking_schemas::pipeline::Table;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::layout::TimeRange;
use super::{DataFile, StoreError};

/// The `[store.s3]` section: how to reach the S3-compatible service of an `s3://` store.
/// Every field left unset is read from the usual environment variables (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_ALLOW_HTTP`), and then from the instance's or container's role on AWS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// The service's URL, for S3-compatible servers (Garage, MinIO, Ceph): e.g.
    /// `http://127.0.0.1:3900`. Default: AWS S3 of the region.
    pub endpoint: Option<String>,
    /// The bucket's region. Default `us-east-1` (what most S3-compatible servers accept).
    pub region: Option<String>,
    /// Access key ID. Default: from the environment.
    pub access_key_id: Option<String>,
    /// Secret access key. Default: from the environment.
    pub secret_access_key: Option<String>,
    /// Whether plain HTTP may be used (a server on loopback or a private network).
    /// Default false: HTTPS only.
    pub allow_http: bool,
}

/// Where a store lives. Cheap to clone.
#[derive(Clone, Debug)]
pub enum StoreRoot {
    /// A directory of the local file system.
    Local(PathBuf),
    /// A prefix of an object store bucket.
    Object(Arc<ObjectRoot>),
}

/// A store's root in an object store bucket.
#[derive(Debug)]
pub struct ObjectRoot {
    /// `s3://bucket/prefix`, as the user gave it.
    url: String,
    /// `s3://bucket`: the object store as queries' files name it.
    store_url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

/// A table of a store: its directory, or its prefix in a bucket.
#[derive(Clone, Debug)]
pub enum TableLocation {
    Local(PathBuf),
    Object {
        root: Arc<ObjectRoot>,
        dir: ObjectPath,
    },
}

const S3_SCHEME: &str = "s3://";

/// Whether `location` (a `--data` or `data_dir`) names a bucket rather than a directory.
pub fn names_a_bucket(location: &str) -> bool {
    location.starts_with(S3_SCHEME)
}

impl StoreRoot {
    /// The store at `location`: `s3://bucket[/prefix]` for an S3 bucket (reached as
    /// `options` and the environment say), anything else a local directory.
    pub fn open(location: &str, options: &S3Options) -> Result<StoreRoot, StoreError> {
        let Some(rest) = location.strip_prefix(S3_SCHEME) else {
            return Ok(StoreRoot::Local(PathBuf::from(location)));
        };
        let bad = |why: &str| StoreError::BadLocation {
            location: location.to_string(),
            why: why.to_string(),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named"));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        } else if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if options.allow_http {
            builder = builder.with_allow_http(true);
        }
        // A request the service does not answer fails within seconds, not object_store's
        // default three minutes: ingest's commit then fails, its rows stay buffered (up to
        // [store] max_buffered_rows) and the next commit retries, instead of the store's
        // thread waiting while the sockets overflow.
        builder = builder.with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(10),
            ..Default::default()
        });
        // Every request runs on the store's own I/O runtime, whichever runtime (a query's,
        // the upkeep's, none) asks: pooled connections then never belong to a runtime that
        // has stopped or is not being driven.
        builder = builder.with_http_connector(object_store::client::SpawnedReqwestConnector::new(
            io_runtime().handle().clone(),
        ));
        let store = builder.build().map_err(|source| StoreError::ObjectStore {
            location: location.to_string(),
            source,
        })?;
        let store_url = ObjectStoreUrl::parse(format!("s3://{bucket}"))
            .map_err(|_| bad("not a valid bucket name"))?;
        Ok(StoreRoot::Object(Arc::new(ObjectRoot {
            url: location.trim_end_matches('/').to_string(),
            store_url,
            store: Arc::new(store),
            prefix: ObjectPath::from(prefix),
        })))
    }

    /// `table`'s files.
    pub fn table(&self, table: Table) -> TableLocation {
        match self {
            StoreRoot::Local(dir) => TableLocation::Local(super::layout::table_dir(dir, table)),
            StoreRoot::Object(root) => TableLocation::Object {
                root: root.clone(),
                dir: root.prefix.clone().join(table.name()),
            },
        }
    }

    /// Whether a store is there: a table or the state `hawking serve` keeps (locally), any
    /// table object (in a bucket).
    pub fn is_store(&self) -> Result<bool, StoreError> {
        match self {
            StoreRoot::Local(dir) => Ok(super::is_store(dir)),
            StoreRoot::Object(root) => {
                let root = root.clone();
                run_io(async move {
                    for table in Table::ALL {
                        let dir = root.prefix.clone().join(table.name());
                        let first = root.store.list(Some(&dir)).try_next().await;
                        if first.map_err(|e| root.error(e))?.is_some() {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
            }
        }
    }

    /// `Ok` when a store is there, else the error that says so (see [`super::require_store`]).
    pub fn require_store(&self) -> Result<(), StoreError> {
        match self.is_store()? {
            true => Ok(()),
            false => Err(StoreError::NotAStore {
                path: self.to_string(),
            }),
        }
    }

    /// Makes `ctx` able to read the store's files.
    pub fn register(&self, ctx: &datafusion::prelude::SessionContext) {
        match self {
            // Compaction and rewrites may swap an hour between a query's planning and its
            // reads.
            StoreRoot::Local(_) => super::retired_reads::register(ctx),
            StoreRoot::Object(root) => {
                ctx.register_object_store(root.store_url.as_ref(), root.store.clone());
            }
        }
    }
}

impl std::fmt::Display for StoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreRoot::Local(dir) => write!(f, "{}", dir.display()),
            StoreRoot::Object(root) => f.write_str(&root.url),
        }
    }
}

impl From<&Path> for StoreRoot {
    fn from(dir: &Path) -> Self {
        StoreRoot::Local(dir.to_path_buf())
    }
}

impl From<&PathBuf> for StoreRoot {
    fn from(dir: &PathBuf) -> Self {
        StoreRoot::Local(dir.clone())
    }
}

impl From<&Path> for TableLocation {
    fn from(dir: &Path) -> Self {
        TableLocation::Local(dir.to_path_buf())
    }
}

impl From<&PathBuf> for TableLocation {
    fn from(dir: &PathBuf) -> Self {
        TableLocation::Local(dir.clone())
    }
}

impl From<&StoreRoot> for StoreRoot {
    fn from(root: &StoreRoot) -> Self {
        root.clone()
    }
}

impl TableLocation {
    /// The object store that queries name this table's files in.
    pub fn store_url(&self) -> ObjectStoreUrl {
        match self {
            TableLocation::Local(_) => ObjectStoreUrl::local_filesystem(),
            TableLocation::Object { root, .. } => root.store_url.clone(),
        }
    }

    /// The complete files of the table whose hour partition overlaps `range`, in partition
    /// then name order (as [`super::list_files`] gives a local table's).
    pub async fn list(&self, range: TimeRange) -> Result<Vec<DataFile>, StoreError> {
        match self {
            TableLocation::Local(dir) => super::list_files(dir, range),
            TableLocation::Object { root, dir } => {
                super::object_hours::list_visible(root, dir, range).await
            }
        }
    }
}

impl ObjectRoot {
    /// A store in memory, for tests of what differs on an object store.
    #[cfg(test)]
    pub(crate) fn in_memory() -> ObjectRoot {
        ObjectRoot {
            url: "memory://test".into(),
            store_url: ObjectStoreUrl::parse("memory://test").expect("a valid URL"),
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjectPath::from("store"),
        }
    }

    /// Rows (from the footer: two ranged reads) and size of the object at `key`.
    async fn file_rows_and_bytes(&self, key: &Path) -> Result<(u64, u64), StoreError> {
        use object_store::{GetOptions, GetRange};
        let location = ObjectPath::from(key.to_string_lossy().as_ref());
        let suffix = |n: u64| GetOptions {
            range: Some(GetRange::Suffix(n)),
            ..Default::default()
        };
        let bad = |why: String| StoreError::BadLocation {
            location: format!("{}/{}", self.store_url.as_str(), location),
            why,
        };
        let tail = self
            .store
            .get_opts(&location, suffix(8))
            .await
            .map_err(|e| self.error(e))?;
        let size = tail.meta.size;
        let tail = tail.bytes().await.map_err(|e| self.error(e))?;
        let footer = parquet::file::metadata::FooterTail::try_from(tail.as_ref())?;
        let length = footer.metadata_length() as u64 + 8;
        if length > size {
            return Err(bad(format!("a footer of {length} bytes in {size}")));
        }
        let meta = self
            .store
            .get_opts(&location, suffix(length))
            .await
            .map_err(|e| self.error(e))?
            .bytes()
            .await
            .map_err(|e| self.error(e))?;
        let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(
            &meta[..meta.len().saturating_sub(8)],
        )?;
        Ok((meta.file_metadata().num_rows().max(0) as u64, size))
    }

    /// The small object `name` at the store's root and when it was last written (µs), or
    /// `None` when there is none.
    pub(crate) async fn read_small(
        &self,
        name: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let location = self.prefix.clone().join(name);
        match self.store.get(&location).await {
            Ok(got) => {
                let modified = got.meta.last_modified.timestamp_micros();
                let bytes = got.bytes().await.map_err(|e| self.error(e))?;
                Ok(Some((bytes.to_vec(), modified)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Writes the small object `name` at the store's root, whole.
    pub(crate) async fn write_small(&self, name: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let location = self.prefix.clone().join(name);
        self.store
            .put(&location, PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// Deletes the small object `name` at the store's root.
    pub(crate) async fn delete_small(&self, name: &str) -> Result<(), StoreError> {
        let location = self.prefix.clone().join(name);
        self.store
            .delete(&location)
            .await
            .map_err(|e| self.error(e))
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn error(&self, source: object_store::Error) -> StoreError {
        StoreError::ObjectStore {
            location: self.url.clone(),
            source,
        }
    }

    /// Stores `bytes` as the file `name` of the partition starting at `hour_us` of the table
    /// at `dir`, made visible whole; returns its key. Blocks: for the store's own thread.
    pub fn put_file(
        self: &Arc<Self>,
        dir: &ObjectPath,
        hour_us: i64,
        name: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let partition = super::layout::partition_dir(Path::new(""), hour_us);
        let mut key = dir.clone();
        for part in partition.iter().filter_map(|p| p.to_str()) {
            key = key.join(part);
        }
        let key = key.join(name);
        let root = self.clone();
        let payload = PutPayload::from(bytes.to_vec());
        let at = key.clone();
        run_io(async move {
            root.store
                .put(&at, payload)
                .await
                .map(|_| ())
                .map_err(|e| root.error(e))
        })?;
        Ok(PathBuf::from(key.as_ref()))
    }
}

impl TableLocation {
    /// The visible files of the hour partition starting at `hour_us`, in name order.
    pub async fn hour_files(&self, hour_us: i64) -> Result<Vec<PathBuf>, StoreError> {
        match self {
            TableLocation::Local(dir) => {
                super::hour::visible_files(&super::layout::partition_dir(dir, hour_us))
            }
            TableLocation::Object { .. } => {
                let range = TimeRange {
                    start_us: Some(hour_us),
                    end_us: Some(hour_us + super::layout::HOUR_US - 1),
                };
                Ok(self
                    .list(range)
                    .await?
                    .into_iter()
                    .map(|f| f.path)
                    .collect())
            }
        }
    }

    /// Rows (from the footers, no data read) and bytes of `files`.
    pub async fn footprint(&self, files: &[PathBuf]) -> Result<(u64, u64), StoreError> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for f in files {
            let (r, b) = match self {
                TableLocation::Local(_) => super::stats::file_rows_and_bytes(f)?,
                TableLocation::Object { root, .. } => root.file_rows_and_bytes(f).await?,
            };
            rows += r;
            bytes += b;
        }
        Ok((rows, bytes))
    }

    /// `file` as a DataFusion session names it: a local path, or `s3://bucket/key`.
    pub fn file_url(&self, file: &Path) -> String {
        match self {
            TableLocation::Local(_) => file.display().to_string(),
            TableLocation::Object { root, .. } => {
                format!("{}{}", root.store_url.as_str(), file.display())
            }
        }
    }

    /// Makes `ctx` able to read this table's files.
    pub fn register(&self, ctx: &datafusion::prelude::SessionContext) {
        match self {
            TableLocation::Local(dir) => StoreRoot::Local(dir.clone()).register(ctx),
            TableLocation::Object { root, .. } => StoreRoot::Object(root.clone()).register(ctx),
        }
    }

    /// Begins replacing `replaces` (visible files of the hour starting at `hour_us`).
    pub fn begin_replacement(
        &self,
        hour_us: i64,
        replaces: Vec<PathBuf>,
    ) -> Result<Replacement, StoreError> {
        Ok(match self {
            TableLocation::Local(dir) => {
                Replacement::Local(super::hour::HourReplacement::begin(dir, hour_us, replaces)?)
            }
            TableLocation::Object { root, dir } => {
                Replacement::Object(super::object_hours::ObjectReplacement::begin(
                    root.clone(),
                    dir.clone(),
                    hour_us,
                    replaces,
                )?)
            }
        })
    }

    /// Deletes what earlier replacements left once no query can be reading it; returns how
    /// many sets (locally) or objects were removed.
    pub async fn clean_up(&self) -> Result<usize, StoreError> {
        match self {
            TableLocation::Local(dir) => super::hour::remove_retired(dir),
            TableLocation::Object { root, dir } => {
                super::object_hours::clean_up(root, dir, hawking_schemas::time::now_micros()).await
            }
        }
    }
}

/// A replacement of one hour's files in progress, in a directory or an object store: new
/// files go into [`Replacement::dir`], and [`Replacement::commit`] makes them replace the
/// old ones in one step.
pub enum Replacement {
    Local(super::hour::HourReplacement),
    Object(super::object_hours::ObjectReplacement),
}

impl Replacement {
    /// Where the new files are written.
    pub fn dir(&self) -> &Path {
        match self {
            Replacement::Local(r) => r.dir(),
            Replacement::Object(r) => r.dir(),
        }
    }

    /// Makes the new files replace the old ones; see [`super::hour::HourReplacement::commit`].
    pub async fn commit(self) -> Result<super::hour::Replaced, StoreError> {
        match self {
            Replacement::Local(r) => r.commit(),
            Replacement::Object(r) => r.commit().await,
        }
    }
}

impl std::fmt::Display for TableLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableLocation::Local(dir) => write!(f, "{}", dir.display()),
            TableLocation::Object { root, dir } => {
                let table = dir.filename().unwrap_or_default();
                write!(f, "{}/{table}", root.url)
            }
        }
    }
}

/// Runs `work` on the store's I/O runtime and waits for it: object store calls from the
/// store's thread and from commands outside any runtime. One runtime for the process, so
/// the connections it pools outlive every caller.
fn run_io<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    io_runtime().spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv()
        .expect("the store's I/O runtime runs every task it is given")
}

/// The process's runtime for object store I/O, started on first use.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hawking-store-io")
            .enable_all()
            .build()
            .expect("the store's I/O runtime starts")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_url_names_a_bucket_and_prefix_and_anything_else_a_directory() {
        let options = S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            allow_http: true,
            ..Default::default()
        };
        let StoreRoot::Object(root) = StoreRoot::open("s3://flows/site-a/", &options).unwrap()
        else {
            panic!("an s3:// location is an object store");
        };
        assert_eq!(root.store_url.as_str(), "s3://flows/");
        assert_eq!(root.prefix.as_ref(), "site-a");
        let StoreRoot::Object(root) = StoreRoot::open("s3://flows/site-a/", &options).unwrap()
        else {
            unreachable!()
        };
        let table = StoreRoot::Object(root).table(Table::Flows);
        assert_eq!(table.to_string(), "s3://flows/site-a/flows");

        let StoreRoot::Local(dir) = StoreRoot::open("./data", &options).unwrap() else {
            panic!("a path is a local directory");
        };
        assert_eq!(dir, PathBuf::from("./data"));
        assert!(matches!(
            StoreRoot::open("s3:///prefix", &options),
            Err(StoreError::BadLocation { .. })
        ));
    }

    #[test]
    fn a_command_for_local_stores_refuses_a_bucket_clearly() {
        let err = super::super::require_store(Path::new("s3://flows")).unwrap_err();
        assert!(matches!(err, StoreError::NeedsLocalStore { .. }), "{err}");
        assert!(err.to_string().contains("s3://flows"), "{err}");
    }
}
