//! The local file system as queries read the store. A query lists an hour's files when it
//! is planned and reads them later; if a replacement (compaction, `replay --rewrite`,
//! retention) swaps the hour in between, the listed files are no longer under `hour=HH` but
//! in the retired set the replacement left outside the table's tree for
//! [`super::hour::RETIRED_KEEP_SECS`]. File names are unique and files never change, so a
//! file not found where it was listed is read, unchanged, from where it was retired: the
//! query answers from the set it listed, whole.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RetiredReads {
    local: LocalFileSystem,
}

impl RetiredReads {
    pub fn new() -> Self {
        RetiredReads {
            local: LocalFileSystem::new(),
        }
    }

    /// Where `location` (a file of an `hour=HH` directory) lies if a replacement retired it:
    /// the newest set of that hour in [`super::hour::replaced_dir`] (`hour=HH.retired-…`, or
    /// `hour=HH.new-…` in the instant before the set is renamed) holding a file of that name.
    fn retired_location(&self, location: &Path) -> Option<Path> {
        let file = self.local.path_to_filesystem(location).ok()?;
        let name = file.file_name()?;
        let hour_dir = file.parent()?;
        let hour = hour_dir.file_name()?.to_str()?;
        if !hour.starts_with("hour=") {
            return None;
        }
        let day = hour_dir.parent()?;
        let table_dir = day.parent()?;
        let replaced = super::hour::replaced_dir(table_dir).join(day.file_name()?);
        let retired = format!("{hour}.retired-");
        let staged = format!("{hour}.new-");
        let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(replaced)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(&retired) || n.starts_with(&staged)
            })
            .filter_map(|e| {
                let candidate = e.path().join(name);
                let modified = std::fs::metadata(&candidate).ok()?.modified().ok()?;
                Some((modified, candidate))
            })
            .collect();
        candidates.sort();
        let (_, found) = candidates.pop()?;
        Path::from_filesystem_path(found).ok()
    }
}

/// Makes `ctx` read local files through [`RetiredReads`].
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_object_store(
        datafusion::execution::object_store::ObjectStoreUrl::local_filesystem().as_ref(),
        std::sync::Arc::new(RetiredReads::new()),
    );
}

impl fmt::Display for RetiredReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetiredReads({})", self.local)
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl ObjectStore for RetiredReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.local.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.local.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.local.get_opts(location, options.clone()).await {
            Err(e) if not_found(&e) => match self.retired_location(location) {
                Some(retired) => self.local.get_opts(&retired, options).await,
                None => Err(e),
            },
            other => other,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.local.get_ranges(location, ranges).await {
            Err(e) if not_found(&e) => match self.retired_location(location) {
                Some(retired) => self.local.get_ranges(&retired, ranges).await,
                None => Err(e),
            },
            other => other,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.local.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.local.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_file_retired_after_listing_is_read_from_its_retired_set() {
        let tmp = tempfile::tempdir().unwrap();
        let day = tmp.path().join("flows/date=2026-11-20");
        let hour = day.join("hour=10");
        let replaced = tmp.path().join(".replaced/flows/date=2026-11-20");
        std::fs::create_dir_all(&replaced).unwrap();
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join("part-1.parquet"), b"old set").unwrap();
        let listed = Path::from_filesystem_path(hour.join("part-1.parquet")).unwrap();
        let store = RetiredReads::new();
        assert_eq!(
            store.get(&listed).await.unwrap().bytes().await.unwrap(),
            "old set"
        );
        // A replacement swaps the hour: the listed file now lies in the retired set.
        let retired = replaced.join("hour=10.retired-5");
        std::fs::rename(&hour, &retired).unwrap();
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join("compacted-1.parquet"), b"new set").unwrap();
        assert_eq!(
            store.get(&listed).await.unwrap().bytes().await.unwrap(),
            "old set"
        );
        assert_eq!(
            store.get_range(&listed, 0..3).await.unwrap(),
            Bytes::from_static(b"old")
        );
        // Once the retired set is deleted, the file is gone for real.
        std::fs::remove_dir_all(&retired).unwrap();
        let err = store.get(&listed).await.unwrap_err();
        assert!(not_found(&err), "{err}");
    }
}
