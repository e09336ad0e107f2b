//! The bounded on-disk spool: messages the broker could not take wait here, oldest first,
//! in segment files that appear only when whole (written aside, synced, renamed), so a
//! crash leaves every segment either complete or absent.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a segment file starts with.
const MAGIC: &[u8; 8] = b"HKSPOOL1";
/// A key length that means "no key".
const NO_KEY: u32 = u32::MAX;
/// Messages per segment at most: a segment is sent (and removed) as one unit.
pub const SEGMENT_MESSAGES: usize = 50_000;

/// One message as it waits: its key and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Spooled {
    /// Bytes it takes in a segment.
    fn size(&self) -> u64 {
        8 + self.key.as_ref().map_or(0, |k| k.len() as u64) + self.payload.len() as u64
    }
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool segment {path} is damaged at byte {at}: {why}")]
    Damaged {
        path: PathBuf,
        at: u64,
        why: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A segment on disk.
#[derive(Clone, Debug)]
pub struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub messages: u64,
    pub bytes: u64,
    pub written: SystemTime,
}

/// What [`Spool::append`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub stored: u64,
    /// Messages that did not fit under the bound.
    pub dropped: u64,
}

/// Segments oldest first, within a bound of bytes.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    next_id: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`: complete segments left by an earlier run are
    /// kept for sending, half-written ones (a crash while writing) removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") {
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let Some(id) = name
                .strip_suffix(".spool")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let meta = entry.metadata().map_err(io(&path))?;
            let messages = count_messages(&path)?;
            segments.push(Segment {
                id,
                path,
                messages,
                bytes: meta.len(),
                written: meta.modified().unwrap_or(SystemTime::now()),
            });
        }
        segments.sort_by_key(|s| s.id);
        let next_id = segments.last().map_or(1, |s| s.id + 1);
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segments: segments.into(),
            next_id,
        })
    }

    /// Writes `messages` as new segments, as many as fit under the bound; the rest are
    /// reported dropped. `replacing` names a segment about to be removed whose messages
    /// are among these (what failed again of it): its bytes do not count against them.
    pub fn append(
        &mut self,
        messages: &[Spooled],
        replacing: Option<u64>,
    ) -> Result<Appended, SpoolError> {
        let mut done = Appended::default();
        // Each segment starts with its header (one per SEGMENT_MESSAGES messages).
        let headers = messages.len().div_ceil(SEGMENT_MESSAGES) as u64 * MAGIC.len() as u64;
        let replaced = self.segments.iter().find(|s| Some(s.id) == replacing);
        // What failed again of a segment has waited since that segment's messages did.
        let waiting_since = replaced.map_or_else(SystemTime::now, |s| s.written);
        let replaced = replaced.map_or(0, |s| s.bytes);
        let mut room = self
            .max_bytes
            .saturating_sub(self.bytes() - replaced)
            .saturating_sub(headers);
        let fits = messages
            .iter()
            .take_while(|m| {
                let size = m.size();
                let fits = size <= room;
                room = room.saturating_sub(size);
                fits
            })
            .count();
        done.dropped = (messages.len() - fits) as u64;
        for chunk in messages[..fits].chunks(SEGMENT_MESSAGES) {
            self.write_segment(chunk, waiting_since)?;
            done.stored += chunk.len() as u64;
        }
        Ok(done)
    }

    /// Writes one segment; `waiting_since` is when its oldest message first waited (kept as
    /// the file's modification time, so the age survives a restart and a re-spooling).
    fn write_segment(
        &mut self,
        messages: &[Spooled],
        waiting_since: SystemTime,
    ) -> Result<(), SpoolError> {
        let id = self.next_id;
        let path = self.dir.join(format!("{id:020}.spool"));
        let partial = self.dir.join(format!("{id:020}.spool.partial"));
        let file = File::create(&partial).map_err(io(&partial))?;
        let mut w = BufWriter::new(file);
        let mut bytes = MAGIC.len() as u64;
        w.write_all(MAGIC).map_err(io(&partial))?;
        for m in messages {
            let key_len = m.key.as_ref().map_or(NO_KEY, |k| k.len() as u32);
            w.write_all(&key_len.to_le_bytes()).map_err(io(&partial))?;
            if let Some(k) = &m.key {
                w.write_all(k).map_err(io(&partial))?;
            }
            w.write_all(&(m.payload.len() as u32).to_le_bytes())
                .map_err(io(&partial))?;
            w.write_all(&m.payload).map_err(io(&partial))?;
            bytes += m.size();
        }
        let file = w.into_inner().map_err(|e| io(&partial)(e.into_error()))?;
        file.set_modified(waiting_since).map_err(io(&partial))?;
        file.sync_all().map_err(io(&partial))?;
        drop(file);
        fs::rename(&partial, &path).map_err(io(&path))?;
        // The rename itself survives a crash once the directory is synced.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.next_id += 1;
        self.segments.push_back(Segment {
            id,
            path,
            messages: messages.len() as u64,
            bytes,
            written: waiting_since,
        });
        Ok(())
    }

    /// The oldest segment, if any.
    pub fn oldest(&self) -> Option<&Segment> {
        self.segments.front()
    }

    /// The messages of `segment`. A damaged segment (a disk error) yields what precedes the
    /// damage, and the error.
    pub fn read(&self, segment: &Segment) -> (Vec<Spooled>, Option<SpoolError>) {
        let mut out = Vec::with_capacity(segment.messages as usize);
        let error = read_segment(&segment.path, &mut |m| out.push(m)).err();
        (out, error)
    }

    /// Removes segment `id` (its messages were delivered or spooled again).
    pub fn remove(&mut self, id: u64) -> Result<(), SpoolError> {
        if let Some(i) = self.segments.iter().position(|s| s.id == id) {
            let segment = self.segments.remove(i).expect("a position in the queue");
            match fs::remove_file(&segment.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&segment.path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Messages waiting.
    pub fn messages(&self) -> u64 {
        self.segments.iter().map(|s| s.messages).sum()
    }

    /// Bytes the segments take.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// How long the oldest message has waited.
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        self.oldest()
            .and_then(|s| now.duration_since(s.written).ok())
            .unwrap_or_default()
    }
}

fn count_messages(path: &Path) -> Result<u64, SpoolError> {
    let mut n = 0;
    match read_segment(path, &mut |_| n += 1) {
        // A damaged segment still holds what precedes the damage.
        Ok(()) | Err(SpoolError::Damaged { .. }) => Ok(n),
        Err(e) => Err(e),
    }
}

fn read_segment(path: &Path, each: &mut dyn FnMut(Spooled)) -> Result<(), SpoolError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let damaged = |at: usize, why| SpoolError::Damaged {
        path: path.to_path_buf(),
        at: at as u64,
        why,
    };
    if bytes.get(..MAGIC.len()) != Some(MAGIC) {
        return Err(damaged(0, "not a spool segment"));
    }
    let mut at = MAGIC.len();
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let len = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("four bytes"));
    while at < bytes.len() {
        let start = at;
        let key_len = take(&mut at, 4)
            .map(len)
            .ok_or_else(|| damaged(start, "cut in a key length"))?;
        let key = match key_len {
            NO_KEY => None,
            n => Some(
                take(&mut at, n as usize)
                    .ok_or_else(|| damaged(start, "cut in a key"))?
                    .to_vec(),
            ),
        };
        let payload_len = take(&mut at, 4)
            .map(len)
            .ok_or_else(|| damaged(start, "cut in a payload length"))?;
        let payload = take(&mut at, payload_len as usize)
            .ok_or_else(|| damaged(start, "cut in a payload"))?
            .to_vec();
        each(Spooled { key, payload });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize) -> Spooled {
        Spooled {
            key: i.is_multiple_of(2).then(|| format!("k{i}").into_bytes()),
            payload: format!("{{\"flow\":{i}}}").into_bytes(),
        }
    }

    #[test]
    fn messages_come_back_oldest_first_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let first: Vec<_> = (0..3).map(message).collect();
        let second: Vec<_> = (3..5).map(message).collect();
        spool.append(&first, None).unwrap();
        spool.append(&second, None).unwrap();
        assert_eq!(spool.messages(), 5);
        // A crash while a third segment was being written leaves its partial file.
        std::fs::write(dir.path().join("00000000000000000099.spool.partial"), b"HK").unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.messages(), 5);
        let oldest = spool.oldest().unwrap().clone();
        assert_eq!(spool.read(&oldest).0, first);
        spool.remove(oldest.id).unwrap();
        let next = spool.oldest().unwrap().clone();
        assert_eq!(spool.read(&next).0, second);
        assert!(
            !dir.path()
                .join("00000000000000000099.spool.partial")
                .exists()
        );
        // New segments follow the old ones.
        spool.append(&[message(9)], None).unwrap();
        assert!(spool.segments.back().unwrap().id > next.id);
    }

    #[test]
    fn the_bound_drops_what_does_not_fit_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let one = message(1).size();
        let bound = MAGIC.len() as u64 + 3 * one;
        let mut spool = Spool::open(dir.path(), bound).unwrap();
        let five: Vec<_> = (0..5).map(|_| message(1)).collect();
        let done = spool.append(&five, None).unwrap();
        assert_eq!(
            done,
            Appended {
                stored: 3,
                dropped: 2
            }
        );
        assert_eq!(spool.bytes(), bound);
        // Full: everything more is dropped, and counted.
        let done = spool.append(&five[..1], None).unwrap();
        assert_eq!(
            done,
            Appended {
                stored: 0,
                dropped: 1
            }
        );
    }

    #[test]
    fn messages_spooled_again_keep_the_age_of_their_first_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&[message(1), message(2)], None).unwrap();
        let first = spool.oldest().unwrap().clone();
        let an_hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&first.path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        // As after a restart: the age comes from the file.
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.age(SystemTime::now()).as_secs() >= 3599);
        // Sent, failed again, spooled again in place of that segment: still an hour old.
        spool.append(&[message(2)], Some(first.id)).unwrap();
        spool.remove(first.id).unwrap();
        assert_eq!(spool.messages(), 1);
        assert!(spool.age(SystemTime::now()).as_secs() >= 3599);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(
            spool.age(SystemTime::now()).as_secs() >= 3599,
            "and across a restart"
        );
    }

    #[test]
    fn a_damaged_segment_gives_what_precedes_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool
            .append(&(0..4).map(message).collect::<Vec<_>>(), None)
            .unwrap();
        let segment = spool.oldest().unwrap().clone();
        let bytes = std::fs::read(&segment.path).unwrap();
        std::fs::write(&segment.path, &bytes[..bytes.len() - 3]).unwrap();
        let (read, error) = spool.read(&segment);
        assert_eq!(read, (0..3).map(message).collect::<Vec<_>>());
        assert!(
            matches!(error, Some(SpoolError::Damaged { .. })),
            "{error:?}"
        );
    }
}
