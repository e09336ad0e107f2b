//! Replacing an hour partition's files as one step: what re-attribution (`replay --rewrite`)
//! and compaction both need. A query sees the hour's old files or its new ones, never both
//! and never neither; a crash at any step leaves one of the two complete sets visible.
//!
//! How: the replacement is written into a directory outside the table's tree
//! (`ROOT/.replaced/<table>/date=…/hour=HH.new-…`, so that neither Hawking nor DuckDB, Spark or
//! Trino globbing `ROOT/<table>/**/*.parquet` ever lists it), then — under the hour's lock, which writers also take to add a file —
//! files that arrived meanwhile are moved into it and the two directories are exchanged in
//! one `renameat2(RENAME_EXCHANGE)`. The old set stays there (`hour=HH.retired-…`) for
//! [`RETIRED_KEEP_SECS`] so that queries already reading it finish; later replacements of
//! the table delete retired sets older than that.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::layout::{IN_PROGRESS_SUFFIX, partition_dir};

/// How long a replaced set of files stays on disk (hidden) for queries still reading it.
pub const RETIRED_KEEP_SECS: u64 = 600;

/// An exclusive lock on one hour partition of one table, across processes (`flock` on a
/// hidden lock file beside the partition). Released when dropped.
pub struct HourLock {
    _file: File,
}

/// Where replacements of the table at `table_dir` keep their new and retired sets: beside
/// the table's tree, not in it.
pub fn replaced_dir(table_dir: &Path) -> PathBuf {
    let name = table_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    table_dir
        .parent()
        .unwrap_or(table_dir)
        .join(".replaced")
        .join(name)
}

/// `hour_dir`'s set named `what` (`new-…`, `retired-…`) in [`replaced_dir`].
fn replaced_set(table_dir: &Path, hour_dir: &Path, what: &str) -> PathBuf {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let day = hour_dir.parent().map(name).unwrap_or_default();
    replaced_dir(table_dir)
        .join(day)
        .join(format!("{}.{what}", name(hour_dir)))
}

fn hidden_sibling(hour_dir: &Path, what: &str) -> PathBuf {
    let name = hour_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    hour_dir.with_file_name(format!(".{name}.{what}"))
}

/// Takes the lock of the hour partition starting at `hour_us` of the table at `table_dir`.
pub fn lock_hour(table_dir: &Path, hour_us: i64) -> Result<HourLock, StoreError> {
    let dir = partition_dir(table_dir, hour_us);
    let day = dir.parent().unwrap_or(table_dir);
    std::fs::create_dir_all(day).map_err(|e| StoreError::io(day, e))?;
    let path = hidden_sibling(&dir, "lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    loop {
        // SAFETY: flock on a file descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(HourLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(StoreError::io(&path, e));
        }
    }
}

/// The complete data files in `dir` (none when it does not exist), sorted by name.
pub fn visible_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".parquet")
                && !name.starts_with('.')
                && !name.ends_with(IN_PROGRESS_SUFFIX)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// A replacement of one hour partition being prepared.
pub struct HourReplacement {
    table_dir: PathBuf,
    hour_us: i64,
    hour_dir: PathBuf,
    /// The hidden directory the new files are written into.
    staging: PathBuf,
    /// The files the replacement was built from (they leave with the old set).
    replaces: Vec<PathBuf>,
    done: bool,
}

/// What a replacement did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Files that arrived while the replacement was built, kept beside the new files.
    pub kept_arrivals: usize,
    /// Where the old set now lies hidden.
    pub retired: Option<PathBuf>,
}

impl HourReplacement {
    /// Starts replacing `replaces`, files of the hour partition at `hour_us`: new files go
    /// into [`HourReplacement::dir`].
    pub fn begin(
        table_dir: &Path,
        hour_us: i64,
        replaces: Vec<PathBuf>,
    ) -> Result<Self, StoreError> {
        let hour_dir = partition_dir(table_dir, hour_us);
        let staging = replaced_set(
            table_dir,
            &hour_dir,
            &format!(
                "new-{}-{}",
                std::process::id(),
                hawking_schemas::time::now_micros()
            ),
        );
        std::fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
        Ok(HourReplacement {
            table_dir: table_dir.to_path_buf(),
            hour_us,
            hour_dir,
            staging,
            replaces,
            done: false,
        })
    }

    /// Where the new files are written (complete files only, named `*.parquet`).
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    /// Makes the new files the hour's visible set in one step. Fails, leaving the old set
    /// visible, when a file the replacement was built from is gone (another replacement got
    /// there first).
    pub fn commit(mut self) -> Result<Replaced, StoreError> {
        let _lock = lock_hour(&self.table_dir, self.hour_us)?;
        std::fs::create_dir_all(&self.hour_dir).map_err(|e| StoreError::io(&self.hour_dir, e))?;
        let now = visible_files(&self.hour_dir)?;
        if let Some(gone) = self.replaces.iter().find(|f| !now.contains(f)) {
            return Err(StoreError::ConcurrentReplace {
                path: gone.display().to_string(),
            });
        }
        let mut replaced = Replaced::default();
        for arrived in now.iter().filter(|f| !self.replaces.contains(f)) {
            let to = self
                .staging
                .join(arrived.file_name().expect("files have names"));
            std::fs::rename(arrived, &to).map_err(|e| StoreError::io(arrived, e))?;
            replaced.kept_arrivals += 1;
        }
        sync_dir(&self.staging);
        exchange(&self.staging, &self.hour_dir)?;
        if let Some(day) = self.hour_dir.parent() {
            sync_dir(day);
        }
        // The staging path now holds the old set: give it a name that says so.
        let retired = replaced_set(
            &self.table_dir,
            &self.hour_dir,
            &format!("retired-{}", hawking_schemas::time::now_micros()),
        );
        match std::fs::rename(&self.staging, &retired) {
            Ok(()) => replaced.retired = Some(retired),
            Err(e) => {
                tracing::warn!(path = %self.staging.display(), error = %e, "could not rename a retired hour")
            }
        }
        self.done = true;
        Ok(replaced)
    }
}

impl Drop for HourReplacement {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned (an error or a cancelled run): the old set never stopped being visible.
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Exchanges two directories atomically (both must exist).
fn exchange(a: &Path, b: &Path) -> Result<(), StoreError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|_| StoreError::BadPath {
        path: a.display().to_string(),
    })?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(|_| StoreError::BadPath {
        path: b.display().to_string(),
    })?;
    // SAFETY: both arguments are valid NUL-terminated paths owned for the call's duration.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(StoreError::io(b, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Deletes the leftovers of replacements of the table at `table_dir`: retired sets older
/// than [`RETIRED_KEEP_SECS`], and new sets of replacements that crashed (older than a day).
/// Returns how many directories it removed.
pub fn remove_retired(table_dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    let Ok(days) = std::fs::read_dir(replaced_dir(table_dir)) else {
        return Ok(0);
    };
    for day in days.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
        let Ok(entries) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep_secs = if name.contains(".retired-") {
                RETIRED_KEEP_SECS
            } else if name.contains(".new-") {
                86_400
            } else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() >= keep_secs);
            if old && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 1_795_165_200_000_000;

    fn touch(dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        p
    }

    #[test]
    fn the_new_set_replaces_the_old_and_arrivals_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let table = tmp.path().join("flows");
        let hour_dir = partition_dir(&table, HOUR);
        let old = vec![touch(&hour_dir, "a.parquet"), touch(&hour_dir, "b.parquet")];
        let r = HourReplacement::begin(&table, HOUR, old.clone()).unwrap();
        touch(r.dir(), "merged.parquet");
        // A late file arrives while the replacement is being built.
        touch(&hour_dir, "late.parquet");
        let done = r.commit().unwrap();
        assert_eq!(done.kept_arrivals, 1);
        let names: Vec<String> = visible_files(&hour_dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["late.parquet", "merged.parquet"]);
        let retired = done.retired.unwrap();
        assert_eq!(
            visible_files(&retired).unwrap().len(),
            2,
            "the old set is kept, hidden"
        );
        // Readers list only `hour=HH` directories: the retired set is invisible to them.
        let listed =
            crate::store::list_files(&table, crate::store::layout::TimeRange::ALL).unwrap();
        assert_eq!(listed.len(), 2);
        // So is it to other engines globbing the table's tree (`flows/**/*.parquet`).
        fn parquet_in(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        parquet_in(&p)
                    } else {
                        p.extension().is_some_and(|x| x == "parquet") as usize
                    }
                })
                .sum()
        }
        assert_eq!(parquet_in(&table), 2, "only the visible set is in the tree");
    }

    #[test]
    fn a_replacement_that_lost_a_race_leaves_the_old_set() {
        let tmp = tempfile::tempdir().unwrap();
        let table = tmp.path().join("flows");
        let hour_dir = partition_dir(&table, HOUR);
        let a = touch(&hour_dir, "a.parquet");
        let first = HourReplacement::begin(&table, HOUR, vec![a.clone()]).unwrap();
        let second = HourReplacement::begin(&table, HOUR, vec![a.clone()]).unwrap();
        touch(first.dir(), "one.parquet");
        touch(second.dir(), "two.parquet");
        first.commit().unwrap();
        let staging = second.dir().to_path_buf();
        assert!(matches!(
            second.commit(),
            Err(StoreError::ConcurrentReplace { .. })
        ));
        assert!(!staging.exists(), "the loser's files are removed");
        let names: Vec<_> = visible_files(&hour_dir).unwrap();
        assert_eq!(names, [hour_dir.join("one.parquet")]);
    }

    #[test]
    fn an_abandoned_replacement_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let table = tmp.path().join("flows");
        let hour_dir = partition_dir(&table, HOUR);
        let a = touch(&hour_dir, "a.parquet");
        let r = HourReplacement::begin(&table, HOUR, vec![a.clone()]).unwrap();
        touch(r.dir(), "new.parquet");
        drop(r);
        assert_eq!(visible_files(&hour_dir).unwrap(), [a]);
        assert_eq!(
            std::fs::read_dir(hour_dir.parent().unwrap())
                .unwrap()
                .count(),
            1
        );
    }
}
