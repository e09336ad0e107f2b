//! An object store's hour partitions: which of an hour's objects a query reads, and how
//! compaction and retention replace an hour's files in one step on a store that has no
//! rename.
//!
//! How: the replacement's new files are uploaded beside the old ones under names that count
//! only once a marker names them (`compacted-upload-…`); then one small object, the marker
//! (`hour=HH/.replace-<µs>-<token>.json`), lists the files it adds and those it removes. Its
//! PUT is the step: before it a query sees the old files, after it the new ones, never both
//! and never neither. Markers are in force in name order, and one that removes a file an
//! earlier marker in force already removed is void (its files never count): of two
//! replacements of the same files that both got their marker in, one counts. A crash before
//! the marker leaves uploads nothing names, after it hidden old files; [`clean_up`] deletes
//! both once no query can still be reading them, and a marker once none of the objects it
//! names is left.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use super::compact::COMPACTED_PREFIX;
use super::hour::{RETIRED_KEEP_SECS, Replaced};
use super::layout::{HOUR_US, IN_PROGRESS_SUFFIX, TimeRange, parse_date_dir, parse_hour_dir};
use super::root::ObjectRoot;
use super::{DataFile, StoreError};

/// Name prefix of replacement markers (hidden from other engines' `*.parquet` globs).
const MARKER_PREFIX: &str = ".replace-";

/// Name prefix of a replacement's uploads: they count only when a marker in force adds
/// them. (A compacted file copied in from a local store, `compacted-<digits>…`, is a plain
/// file.)
const UPLOAD_PREFIX: &str = "compacted-upload-";

/// How long an upload no marker names is kept: a replacement still uploading its files.
const UNCLAIMED_KEEP_SECS: i64 = 86_400;

/// One replacement of an hour's files: names within the hour's prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    adds: Vec<String>,
    removes: Vec<String>,
}

/// An hour's objects as one listing gave them.
#[derive(Default)]
struct HourObjects {
    files: Vec<ObjectMeta>,
    markers: Vec<ObjectMeta>,
}

/// The object's name within its hour.
fn name_of(meta: &ObjectMeta) -> &str {
    meta.location.filename().unwrap_or_default()
}

/// Of `markers` (with their object names), those in force: in name order, each that removes
/// nothing an earlier one in force removed.
fn in_force<'a>(markers: &[(&ObjectMeta, &'a Marker)]) -> Vec<&'a Marker> {
    let mut ordered: Vec<&(&ObjectMeta, &Marker)> = markers.iter().collect();
    ordered.sort_by_key(|(meta, _)| name_of(meta).to_string());
    let mut removed: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (_, marker) in ordered {
        if marker.removes.iter().any(|r| removed.contains(r.as_str())) {
            continue;
        }
        removed.extend(marker.removes.iter().map(String::as_str));
        out.push(*marker);
    }
    out
}

impl HourObjects {
    /// The files a query reads, given the markers in force: every data file none of them
    /// removes, an upload only when one of them adds it.
    fn visible(&self, markers: &[&Marker]) -> Vec<&ObjectMeta> {
        let removed: HashSet<&str> = markers
            .iter()
            .flat_map(|m| m.removes.iter().map(String::as_str))
            .collect();
        let added: HashSet<&str> = markers
            .iter()
            .flat_map(|m| m.adds.iter().map(String::as_str))
            .collect();
        self.files
            .iter()
            .filter(|f| {
                let name = name_of(f);
                !removed.contains(name)
                    && (!name.starts_with(UPLOAD_PREFIX) || added.contains(name))
            })
            .collect()
    }
}

/// The objects of the table at `dir` whose hour overlaps `range`, grouped by hour. One
/// listing per day the range touches (a day's keys come in pages of a thousand), not one
/// per hour.
async fn hours_in(
    root: &ObjectRoot,
    dir: &ObjectPath,
    range: TimeRange,
) -> Result<BTreeMap<i64, (ObjectPath, HourObjects)>, StoreError> {
    let store = root.store();
    let days = store
        .list_with_delimiter(Some(dir))
        .await
        .map_err(|e| root.error(e))?;
    let mut hours: BTreeMap<i64, (ObjectPath, HourObjects)> = BTreeMap::new();
    for prefix in days.common_prefixes {
        let Some(day) = prefix.filename().and_then(parse_date_dir) else {
            continue;
        };
        if !range.overlaps(day, day + 24 * HOUR_US) {
            continue;
        }
        let objects: Vec<ObjectMeta> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| root.error(e))?;
        for meta in objects {
            // `<hour=HH>/<name>` below the day, nothing deeper.
            let Some((hour_part, name)) = meta.location.prefix_match(&prefix).and_then(|mut p| {
                let hour = p.next()?.as_ref().to_string();
                let name = p.next()?.as_ref().to_string();
                p.next().is_none().then_some((hour, name))
            }) else {
                continue;
            };
            let Some(offset) = parse_hour_dir(&hour_part) else {
                continue;
            };
            let hour = day + offset;
            if !range.overlaps(hour, hour + HOUR_US) {
                continue;
            }
            let (_, objects) = hours.entry(hour).or_insert_with(|| {
                (
                    prefix.clone().join(hour_part.as_str()),
                    HourObjects::default(),
                )
            });
            if name.starts_with(MARKER_PREFIX) && name.ends_with(".json") {
                objects.markers.push(meta);
            } else if name.ends_with(".parquet")
                && !name.starts_with('.')
                && !name.ends_with(IN_PROGRESS_SUFFIX)
            {
                objects.files.push(meta);
            }
        }
    }
    Ok(hours)
}

/// Reads an hour's markers, in the order listed. A marker gone meanwhile (its objects
/// cleaned up) is `None`: it names nothing that is left.
async fn read_markers(
    root: &ObjectRoot,
    objects: &HourObjects,
) -> Result<Vec<Option<Marker>>, StoreError> {
    let store = root.store();
    let reads = objects.markers.iter().map(|meta| {
        let store = store.clone();
        async move {
            match store.get(&meta.location).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(|e| root.error(e))?;
                    serde_json::from_slice::<Marker>(&bytes)
                        .map(Some)
                        .map_err(|e| StoreError::BadMarker {
                            location: meta.location.to_string(),
                            why: e.to_string(),
                        })
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(root.error(e)),
            }
        }
    });
    futures::future::try_join_all(reads).await
}

/// The files of the table at `dir` a query over `range` reads, in partition then name order.
pub(crate) async fn list_visible(
    root: &ObjectRoot,
    dir: &ObjectPath,
    range: TimeRange,
) -> Result<Vec<DataFile>, StoreError> {
    // A marker listed but gone when read was cleaned up meanwhile, with files it named:
    // the listing is out of date, so it is taken again.
    let mut attempts = 0;
    'listing: loop {
        attempts += 1;
        let mut files = Vec::new();
        for (hour, (_, objects)) in hours_in(root, dir, range).await? {
            let read = read_markers(root, &objects).await?;
            if read.iter().any(Option::is_none) && attempts < 5 {
                continue 'listing;
            }
            let pairs: Vec<(&ObjectMeta, &Marker)> = objects
                .markers
                .iter()
                .zip(&read)
                .filter_map(|(meta, m)| Some((meta, m.as_ref()?)))
                .collect();
            let mut in_hour: Vec<DataFile> = objects
                .visible(&in_force(&pairs))
                .into_iter()
                .map(|meta| DataFile {
                    path: PathBuf::from(meta.location.as_ref()),
                    size: meta.size,
                    partition_start_us: hour,
                })
                .collect();
            in_hour.sort_by(|a, b| a.path.cmp(&b.path));
            files.extend(in_hour);
        }
        return Ok(files);
    }
}

/// The hour prefix of the table at `dir` holding the partition that starts at `hour_us`.
fn hour_prefix(dir: &ObjectPath, hour_us: i64) -> ObjectPath {
    dir.clone()
        .join(super::layout::date_dir(hour_us).as_str())
        .join(super::layout::hour_dir(hour_us).as_str())
}

/// A replacement of one hour's files in progress: its new files are written into a local
/// staging directory ([`ObjectReplacement::dir`]) and uploaded by the commit. Dropped
/// uncommitted, the staging directory is removed and the hour is as it was.
pub struct ObjectReplacement {
    root: Arc<ObjectRoot>,
    table_dir: ObjectPath,
    hour_us: i64,
    replaces: Vec<PathBuf>,
    staging: tempfile::TempDir,
}

impl ObjectReplacement {
    /// Begins replacing `replaces` (keys of the hour's visible files, as listed).
    pub fn begin(
        root: Arc<ObjectRoot>,
        table_dir: ObjectPath,
        hour_us: i64,
        replaces: Vec<PathBuf>,
    ) -> Result<Self, StoreError> {
        let staging = tempfile::Builder::new()
            .prefix("hawking-replacement-")
            .tempdir()
            .map_err(|e| StoreError::io(&std::env::temp_dir(), e))?;
        Ok(ObjectReplacement {
            root,
            table_dir,
            hour_us,
            replaces,
            staging,
        })
    }

    /// Where the new files are written before the commit uploads them.
    pub fn dir(&self) -> &Path {
        self.staging.path()
    }

    /// Uploads the new files, then makes them replace the old ones in one PUT (the marker).
    /// Files that arrived meanwhile stay. If one of the replaced files is no longer visible
    /// just before the marker would go in (another replacement got there first), nothing is
    /// made visible.
    pub async fn commit(self) -> Result<Replaced, StoreError> {
        let root = &self.root;
        let prefix = hour_prefix(&self.table_dir, self.hour_us);
        let mut adds: Vec<String> = Vec::new();
        let entries = std::fs::read_dir(self.staging.path())
            .map_err(|e| StoreError::io(self.staging.path(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(self.staging.path(), e))?;
            let staged = entry.file_name().to_string_lossy().into_owned();
            let name = format!(
                "{UPLOAD_PREFIX}{}",
                staged.strip_prefix(COMPACTED_PREFIX).unwrap_or(&staged)
            );
            upload(root, &entry.path(), &prefix.clone().join(name.as_str())).await?;
            adds.push(name);
        }
        adds.sort();
        let range = TimeRange {
            start_us: Some(self.hour_us),
            end_us: Some(self.hour_us + HOUR_US - 1),
        };
        let now: Vec<PathBuf> = list_visible(root, &self.table_dir, range)
            .await?
            .into_iter()
            .map(|f| f.path)
            .collect();
        if let Some(gone) = self.replaces.iter().find(|f| !now.contains(f)) {
            // The uploads are named by no marker: clean_up deletes them.
            return Err(StoreError::ConcurrentReplace {
                path: gone.display().to_string(),
            });
        }
        let marker = Marker {
            adds,
            removes: self
                .replaces
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        };
        let name = format!(
            "{MARKER_PREFIX}{}-{:08x}.json",
            hawking_schemas::time::now_micros(),
            super::writer::writer_token()
        );
        let body = serde_json::to_vec(&marker).expect("a marker serializes");
        root.store()
            .put(&prefix.join(name.as_str()), PutPayload::from(body))
            .await
            .map_err(|e| root.error(e))?;
        Ok(Replaced {
            kept_arrivals: now.len().saturating_sub(self.replaces.len()),
            retired: None,
        })
    }
}

/// Uploads the local file at `from` to `to`, in parts (a compacted hour may be gigabytes).
/// A failed upload is aborted, so that no parts are left behind.
async fn upload(root: &ObjectRoot, from: &Path, to: &ObjectPath) -> Result<(), StoreError> {
    use tokio::io::AsyncReadExt;
    const PART: usize = 16 << 20;
    let mut file = tokio::fs::File::open(from)
        .await
        .map_err(|e| StoreError::io(from, e))?;
    let upload = root
        .store()
        .put_multipart(to)
        .await
        .map_err(|e| root.error(e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(StoreError::io(from, e));
            }
        };
        if n == 0 {
            break;
        }
        writer.write(&buf[..n]);
        if let Err(e) = writer.wait_for_capacity(4).await {
            let _ = writer.abort().await;
            return Err(root.error(e));
        }
    }
    writer.finish().await.map_err(|e| root.error(e))?;
    Ok(())
}

/// Deletes what replacements of the table at `dir` left, as of `now_us`: files a marker in
/// force removed, once [`RETIRED_KEEP_SECS`] have passed since the marker (queries that
/// listed them before have finished); uploads no marker in force adds, after a day (a
/// replacement that crashed or lost a race); and markers none of whose objects is left.
/// Returns how many objects were deleted.
pub(crate) async fn clean_up(
    root: &ObjectRoot,
    dir: &ObjectPath,
    now_us: i64,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for (_, (prefix, objects)) in hours_in(root, dir, TimeRange::ALL).await? {
        if objects.markers.is_empty()
            && !objects
                .files
                .iter()
                .any(|f| name_of(f).starts_with(UPLOAD_PREFIX))
        {
            continue;
        }
        let read = read_markers(root, &objects).await?;
        let pairs: Vec<(&ObjectMeta, &Marker)> = objects
            .markers
            .iter()
            .zip(&read)
            .filter_map(|(meta, m)| Some((meta, m.as_ref()?)))
            .collect();
        let valid = in_force(&pairs);
        let existing: HashSet<&str> = objects.files.iter().map(name_of).collect();
        let mut doomed: Vec<ObjectPath> = Vec::new();
        let mut claimed: HashSet<&str> = HashSet::new();
        for (meta, marker) in &pairs {
            if !valid.iter().any(|v| std::ptr::eq(*v, *marker)) {
                continue;
            }
            let settled = age_secs(meta, now_us) >= RETIRED_KEEP_SECS as i64;
            for removed in marker
                .removes
                .iter()
                .filter(|r| existing.contains(r.as_str()))
            {
                if settled {
                    doomed.push(prefix.clone().join(removed.as_str()));
                }
            }
            claimed.extend(marker.adds.iter().map(String::as_str));
        }
        for file in &objects.files {
            let name = name_of(file);
            if name.starts_with(UPLOAD_PREFIX)
                && !claimed.contains(name)
                && age_secs(file, now_us) >= UNCLAIMED_KEEP_SECS
            {
                doomed.push(file.location.clone());
            }
        }
        // A marker is needed while an object it names is left (after this round's deletes).
        let doomed_names: HashSet<String> = doomed
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        for (meta, marker) in &pairs {
            let left = marker
                .adds
                .iter()
                .chain(&marker.removes)
                .any(|n| existing.contains(n.as_str()) && !doomed_names.contains(n));
            if !left {
                doomed.push(meta.location.clone());
            }
        }
        for location in doomed {
            root.store()
                .delete(&location)
                .await
                .map_err(|e| root.error(e))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn age_secs(meta: &ObjectMeta, now_us: i64) -> i64 {
    (now_us - meta.last_modified.timestamp_micros()) / 1_000_000
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::compact::{CompactionConfig, compact_hour};
    use crate::store::retention::{RetentionConfig, prune};
    use crate::store::root::{StoreRoot, TableLocation};
    use crate::store::test_rows::{H, commit, flows};
    use hawking_schemas::pipeline::Table;
    use hawking_schemas::time::now_micros;

    const KEEP_US: i64 = RETIRED_KEEP_SECS as i64 * 1_000_000;

    fn bucket() -> (StoreRoot, Arc<ObjectRoot>, ObjectPath) {
        let root = Arc::new(ObjectRoot::in_memory());
        let store = StoreRoot::Object(root.clone());
        let TableLocation::Object { dir, .. } = store.table(Table::Flows) else {
            unreachable!("a bucket's table is in the bucket")
        };
        (store, root, dir)
    }

    /// `n` flushes of 100 flows each into the 10:00 hour.
    fn flushes(root: &StoreRoot, n: i64) {
        for f in 0..n {
            let starts: Vec<i64> = (0..100i64)
                .map(|i| H + ((i * 37 + f * 11) % 3600) * 1_000_000 + f)
                .collect();
            commit(root, Table::Flows, flows(&starts));
        }
    }

    async fn visible(root: &StoreRoot) -> Vec<String> {
        root.table(Table::Flows)
            .list(TimeRange::ALL)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// The object at `key`, whole.
    async fn read(root: &ObjectRoot, key: &Path) -> bytes::Bytes {
        let location = ObjectPath::from(key.to_string_lossy().as_ref());
        root.store()
            .get(&location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    async fn count(root: &StoreRoot) -> i64 {
        let ctx = crate::open_session(root, &Default::default())
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) FROM flows")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    }

    async fn objects(root: &ObjectRoot) -> Vec<String> {
        let mut names: Vec<String> = root
            .store()
            .list(None)
            .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_compacted_hour_in_a_bucket_reads_as_its_merge_alone_and_its_old_files_go_later() {
        let (store, root, dir) = bucket();
        flushes(&store, 5);
        assert_eq!(visible(&store).await.len(), 5);
        let stop = AtomicBool::new(false);
        let done = compact_hour(&store, Table::Flows, H, &CompactionConfig::default(), &stop)
            .await
            .unwrap()
            .expect("five flushes are compacted");
        assert_eq!((done.files_in, done.files_out, done.rows_out), (5, 1, 500));
        let after = visible(&store).await;
        assert_eq!(after.len(), 1);
        assert!(after[0].starts_with(COMPACTED_PREFIX), "{after:?}");
        assert_eq!(count(&store).await, 500);
        // The old files stay (hidden) for queries that listed them before.
        let all = objects(&root).await;
        assert_eq!(all.iter().filter(|n| n.starts_with("part-")).count(), 5);
        assert_eq!(
            all.iter().filter(|n| n.starts_with(MARKER_PREFIX)).count(),
            1
        );
        let now = now_micros();
        assert_eq!(clean_up(&root, &dir, now).await.unwrap(), 0);
        assert_eq!(
            clean_up(&root, &dir, now + KEEP_US + 1_000_000)
                .await
                .unwrap(),
            5
        );
        assert_eq!(
            visible(&store).await,
            after,
            "the marker stays while its merge does"
        );
        assert_eq!(count(&store).await, 500);

        // A late flush, then the hour compacted again: the first merge and its marker go too.
        flushes(&store, 1);
        assert_eq!(count(&store).await, 600);
        let again = compact_hour(&store, Table::Flows, H, &CompactionConfig::default(), &stop)
            .await
            .unwrap()
            .expect("a merge and a late flush are compacted");
        assert_eq!((again.files_in, again.rows_out), (2, 600));
        assert_eq!(count(&store).await, 600);
        let later = now + 3 * KEEP_US;
        assert_eq!(
            clean_up(&root, &dir, later).await.unwrap(),
            3,
            "the first merge, the late flush, and the first marker that named them"
        );
        assert_eq!(clean_up(&root, &dir, later).await.unwrap(), 0);
        let left = objects(&root).await;
        assert_eq!(left.len(), 2, "the second merge and its marker: {left:?}");
        assert_eq!(count(&store).await, 600);
    }

    #[tokio::test]
    async fn an_upload_no_marker_names_is_never_read_and_goes_after_a_day() {
        let (store, root, dir) = bucket();
        flushes(&store, 2);
        let files = store.table(Table::Flows).hour_files(H).await.unwrap();
        // What a compaction that crashed before its marker leaves: its upload.
        let bytes = read(&root, &files[0]).await;
        let hour = hour_prefix(&dir, H);
        let orphan = hour
            .clone()
            .join(format!("{UPLOAD_PREFIX}crashed.parquet").as_str());
        root.store()
            .put(&orphan, PutPayload::from(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(visible(&store).await.len(), 2);
        assert_eq!(count(&store).await, 200);
        // A compacted file copied in from a local store is a plain file.
        let copied =
            hour.join(format!("{COMPACTED_PREFIX}1796000000000000-1-0000.parquet").as_str());
        root.store()
            .put(&copied, PutPayload::from(bytes))
            .await
            .unwrap();
        assert_eq!(visible(&store).await.len(), 3);
        assert_eq!(count(&store).await, 300);
        root.store().delete(&copied).await.unwrap();
        let now = now_micros();
        assert_eq!(clean_up(&root, &dir, now + KEEP_US * 2).await.unwrap(), 0);
        let day = UNCLAIMED_KEEP_SECS * 1_000_000;
        assert_eq!(
            clean_up(&root, &dir, now + day + 1_000_000).await.unwrap(),
            1
        );
        assert_eq!(objects(&root).await.len(), 2);
    }

    #[tokio::test]
    async fn of_two_replacements_of_the_same_files_the_second_changes_nothing() {
        let (store, _, _) = bucket();
        flushes(&store, 2);
        let table = store.table(Table::Flows);
        let files = table.hour_files(H).await.unwrap();
        let first = table.begin_replacement(H, files.clone()).unwrap();
        let second = table.begin_replacement(H, files).unwrap();
        first.commit().await.unwrap();
        assert!(matches!(
            second.commit().await,
            Err(StoreError::ConcurrentReplace { .. })
        ));
        // The first removed both files and added nothing (a retention's replacement).
        assert!(visible(&store).await.is_empty());
        assert_eq!(count(&store).await, 0);
    }

    #[tokio::test]
    async fn of_two_markers_that_remove_the_same_file_only_the_first_counts() {
        let (store, root, dir) = bucket();
        flushes(&store, 2);
        let files = store.table(Table::Flows).hour_files(H).await.unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let first = read(&root, &files[0]).await;
        let hour = hour_prefix(&dir, H);
        // Two merges of the same two files (each holding the first file's rows, to tell
        // them apart from the originals), both of whose markers got in: "b" is named later.
        for which in ["a", "b"] {
            let upload = format!("{UPLOAD_PREFIX}{which}.parquet");
            let marker = Marker {
                adds: vec![upload.clone()],
                removes: names.clone(),
            };
            for (name, body) in [
                (upload, first.to_vec()),
                (
                    format!("{MARKER_PREFIX}100-{which}.json"),
                    serde_json::to_vec(&marker).unwrap(),
                ),
            ] {
                let location = hour.clone().join(name.as_str());
                root.store()
                    .put(&location, PutPayload::from(body))
                    .await
                    .unwrap();
            }
        }
        assert_eq!(
            visible(&store).await,
            vec![format!("{UPLOAD_PREFIX}a.parquet")]
        );
        assert_eq!(count(&store).await, 100);
        // The void marker's upload is unclaimed: deleted after a day, with the two files
        // the first marker removed and the void marker itself.
        let later = now_micros() + UNCLAIMED_KEEP_SECS * 1_000_000 + KEEP_US;
        assert_eq!(clean_up(&root, &dir, later).await.unwrap(), 4);
        assert_eq!(
            visible(&store).await,
            vec![format!("{UPLOAD_PREFIX}a.parquet")]
        );
        assert_eq!(objects(&root).await.len(), 2);
    }

    #[tokio::test]
    async fn retention_in_a_bucket_drops_exactly_the_expired_hours() {
        let (store, _, _) = bucket();
        flushes(&store, 1);
        let later = H + 48 * HOUR_US;
        commit(&store, Table::Flows, flows(&[later, later + 1]));
        let config = RetentionConfig {
            flows_days: Some(1),
            ..Default::default()
        };
        let pass = prune(&store, &config, later + HOUR_US, &AtomicBool::new(false))
            .await
            .unwrap();
        assert_eq!(pass.hours.len(), 1);
        assert_eq!((pass.hours[0].hour_us, pass.hours[0].rows_before), (H, 100));
        assert_eq!(pass.hours[0].rows_kept, 0);
        assert_eq!(count(&store).await, 2);
    }
}
