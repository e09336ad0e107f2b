//! Line-delimited input: a file followed as it grows and across rotation (as `tail -F`
//! does, the way Hubble's exporter and flowlogs-pipeline rotate their files), or standard
//! input until it ends. Each complete line is one message; a file's position is kept in a
//! checkpoint so that a restart goes on where the last run stopped instead of reading the
//! file again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Received, Transport, TransportError, Wait};

/// How long a followed file is left before it is looked at again when nothing was new.
const POLL: Duration = Duration::from_millis(100);
/// Bytes read per call: a few thousand lines.
const CHUNK: usize = 1 << 20;
/// Longest line kept; a longer one is cut off and dropped whole (counted by the decoder as
/// malformed when what is left is not JSON).
const MAX_LINE: usize = 16 << 20;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Where the first run starts reading a file that has no checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// The whole file (default): what was written before Hawking started is ingested too.
    #[default]
    Beginning,
    /// Only what is written from now on.
    End,
}

/// A file's identity and how far it was read, persisted between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    dev: u64,
    ino: u64,
    offset: u64,
}

enum Input {
    File {
        path: PathBuf,
        file: Option<File>,
        dev: u64,
        ino: u64,
        /// Bytes of the open file consumed into `partial` or delivered.
        offset: u64,
        checkpoint: Option<PathBuf>,
        saved: Option<Checkpoint>,
        saved_at: Instant,
    },
    Stdin {
        chunks: Receiver<std::io::Result<Vec<u8>>>,
        ended: bool,
    },
}

/// See the module documentation.
pub struct LineInput {
    input: Input,
    /// The address that stands for the lines' sender (the source's configured exporter).
    sender: SocketAddr,
    partial: Vec<u8>,
    buf: Vec<u8>,
    label: String,
}

impl LineInput {
    /// Follows `path` (`-` reads standard input until it ends). `checkpoint` is where the
    /// file's position persists (none: start as `read_from` says every time).
    pub fn open(
        path: &Path,
        sender: SocketAddr,
        read_from: ReadFrom,
        checkpoint: Option<PathBuf>,
    ) -> Result<Self, TransportError> {
        let label = path.display().to_string();
        let input = if path == Path::new("-") {
            let (tx, rx) = sync_channel(16);
            std::thread::Builder::new()
                .name("hawking-stdin".into())
                .spawn(move || {
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        let mut chunk = vec![0u8; CHUNK];
                        match stdin.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => {
                                chunk.truncate(n);
                                if tx.send(Ok(chunk)).is_err() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                break;
                            }
                        }
                    }
                })
                .map_err(|e| TransportError::Open {
                    path: label.clone(),
                    source: e,
                })?;
            Input::Stdin {
                chunks: rx,
                ended: false,
            }
        } else {
            let saved = checkpoint
                .as_deref()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok());
            let mut input = Input::File {
                path: path.to_path_buf(),
                file: None,
                dev: 0,
                ino: 0,
                offset: 0,
                checkpoint,
                saved,
                saved_at: Instant::now(),
            };
            // A file that is not there yet is waited for; one that cannot be read is an error.
            match File::open(path) {
                Ok(f) => {
                    let meta = f.metadata().map_err(|e| TransportError::Open {
                        path: label.clone(),
                        source: e,
                    })?;
                    let start = match saved {
                        Some(c)
                            if c.dev == meta.dev()
                                && c.ino == meta.ino()
                                && c.offset <= meta.len() =>
                        {
                            c.offset
                        }
                        _ if read_from == ReadFrom::End => meta.len(),
                        _ => 0,
                    };
                    input.adopt(f, meta.dev(), meta.ino(), start, &label)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(TransportError::Open {
                        path: label,
                        source: e,
                    });
                }
            }
            input
        };
        Ok(LineInput {
            input,
            sender,
            partial: Vec::new(),
            buf: vec![0u8; CHUNK],
            label,
        })
    }

    /// Delivers every complete line in `bytes` (after what is left of the previous read).
    fn deliver(
        &mut self,
        bytes_read: usize,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> usize {
        let mut count = 0;
        let data = &self.buf[..bytes_read];
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.partial.is_empty() {
                on_message(self.sender, line);
            } else {
                self.partial.extend_from_slice(line);
                on_message(self.sender, &self.partial);
                self.partial.clear();
            }
            count += 1;
        }
        if self.partial.len() + rest.len() <= MAX_LINE {
            self.partial.extend_from_slice(rest);
        }
        count
    }

    /// The unterminated last line, once the input will not add to it.
    fn deliver_partial(&mut self, on_message: &mut dyn FnMut(SocketAddr, &[u8])) -> usize {
        if self.partial.is_empty() {
            return 0;
        }
        on_message(self.sender, &self.partial);
        self.partial.clear();
        1
    }

    fn io_error(&self, source: std::io::Error) -> TransportError {
        TransportError::Open {
            path: self.label.clone(),
            source,
        }
    }
}

impl Input {
    fn adopt(
        &mut self,
        mut f: File,
        d: u64,
        i: u64,
        start: u64,
        label: &str,
    ) -> Result<(), TransportError> {
        let Input::File {
            file,
            dev,
            ino,
            offset,
            ..
        } = self
        else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(start))
            .map_err(|e| TransportError::Open {
                path: label.to_string(),
                source: e,
            })?;
        *file = Some(f);
        *dev = d;
        *ino = i;
        *offset = start;
        Ok(())
    }
}

/// What looking at a followed file's path found.
enum PathState {
    /// Still the file we have open.
    Same,
    /// Another file is there now (rotation), or ours was truncated.
    Replaced,
    /// Nothing is there (between a rotation's rename and the new file).
    Missing,
}

impl Transport for LineInput {
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError> {
        match &mut self.input {
            Input::Stdin { chunks, ended } => {
                if *ended {
                    return Ok(Received::Ended);
                }
                let next = match wait {
                    Wait::Briefly => chunks.recv_timeout(POLL).map_err(|e| match e {
                        RecvTimeoutError::Timeout => None,
                        RecvTimeoutError::Disconnected => Some(()),
                    }),
                    Wait::Never => chunks.try_recv().map_err(|e| match e {
                        TryRecvError::Empty => None,
                        TryRecvError::Disconnected => Some(()),
                    }),
                };
                match next {
                    Ok(Ok(chunk)) => {
                        let n = chunk.len();
                        self.buf[..n].copy_from_slice(&chunk);
                        let count = self.deliver(n, on_message);
                        Ok(Received::Messages { count, bytes: n })
                    }
                    Ok(Err(e)) => Err(self.io_error(e)),
                    Err(None) => Ok(Received::Idle),
                    Err(Some(())) => {
                        if let Input::Stdin { ended, .. } = &mut self.input {
                            *ended = true;
                        }
                        let count = self.deliver_partial(on_message);
                        Ok(if count > 0 {
                            Received::Messages { count, bytes: 0 }
                        } else {
                            Received::Ended
                        })
                    }
                }
            }
            Input::File { file, offset, .. } => {
                if let Some(f) = file {
                    let n = match f.read(&mut self.buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                        Err(e) => return Err(self.io_error(e)),
                    };
                    if n > 0 {
                        *offset += n as u64;
                        let count = self.deliver(n, on_message);
                        self.save_checkpoint(false);
                        return Ok(Received::Messages { count, bytes: n });
                    }
                }
                // Nothing new: has the file been rotated or truncated?
                match self.path_state() {
                    PathState::Same | PathState::Missing => {}
                    PathState::Replaced => {
                        // What the old file held is read; an unterminated last line is whole
                        // now that the writer has moved on.
                        let count = self.deliver_partial(on_message);
                        self.reopen()?;
                        if count > 0 {
                            return Ok(Received::Messages { count, bytes: 0 });
                        }
                        return Ok(Received::Idle);
                    }
                }
                self.save_checkpoint(false);
                if wait == Wait::Briefly {
                    std::thread::sleep(POLL);
                }
                Ok(Received::Idle)
            }
        }
    }
}

impl LineInput {
    fn path_state(&self) -> PathState {
        let Input::File {
            path,
            file,
            dev,
            ino,
            offset,
            ..
        } = &self.input
        else {
            return PathState::Missing;
        };
        match std::fs::metadata(path) {
            Ok(_) if file.is_none() => PathState::Replaced,
            Ok(m) if m.dev() != *dev || m.ino() != *ino => PathState::Replaced,
            Ok(m) if m.len() < *offset => PathState::Replaced,
            Ok(_) => PathState::Same,
            Err(_) => PathState::Missing,
        }
    }

    /// Opens what is at the path now, from its start.
    fn reopen(&mut self) -> Result<(), TransportError> {
        let label = self.label.clone();
        let Input::File { path, .. } = &self.input else {
            return Ok(());
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(e)),
        };
        let meta = f.metadata().map_err(|e| self.io_error(e))?;
        self.partial.clear();
        self.input.adopt(f, meta.dev(), meta.ino(), 0, &label)?;
        self.save_checkpoint(true);
        Ok(())
    }

    /// Persists how far the file was read (of whole lines), at most once a second unless
    /// `now`.
    fn save_checkpoint(&mut self, now: bool) {
        let partial = self.partial.len() as u64;
        let Input::File {
            dev,
            ino,
            offset,
            checkpoint: Some(at),
            saved,
            saved_at,
            file: Some(_),
            ..
        } = &mut self.input
        else {
            return;
        };
        let current = Checkpoint {
            dev: *dev,
            ino: *ino,
            offset: *offset - partial,
        };
        if *saved == Some(current) || (!now && saved_at.elapsed() < CHECKPOINT_INTERVAL) {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(&current)
            && hawking_schemas::state_file::write_atomically(at, &bytes).is_ok()
        {
            *saved = Some(current);
            *saved_at = Instant::now();
        }
    }
}

impl Drop for LineInput {
    fn drop(&mut self) {
        self.save_checkpoint(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(input: &mut LineInput, wait: Wait) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..5 {
            input
                .receive(wait, &mut |_, l| {
                    out.push(String::from_utf8(l.to_vec()).unwrap())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn a_followed_file_is_read_across_rotation_and_resumed_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let checkpoint = dir.path().join("checkpoint.json");
        let sender: SocketAddr = "127.0.0.1:0".parse().unwrap();
        std::fs::write(&path, "a\nb\npart").unwrap();
        let mut input =
            LineInput::open(&path, sender, ReadFrom::Beginning, Some(checkpoint.clone())).unwrap();
        assert_eq!(lines(&mut input, Wait::Never), ["a", "b"]);
        // The writer finishes the line, then rotates: rename away, a new file in its place.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"ial\nlast").unwrap();
        drop(f);
        std::fs::rename(&path, dir.path().join("events-1.log")).unwrap();
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(lines(&mut input, Wait::Never), ["partial", "last", "new"]);
        drop(input);
        // A restart goes on after what was read.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"after restart\n").unwrap();
        drop(f);
        let mut input =
            LineInput::open(&path, sender, ReadFrom::Beginning, Some(checkpoint)).unwrap();
        assert_eq!(lines(&mut input, Wait::Never), ["after restart"]);
        // Truncated in place (copytruncate): read again from the start.
        std::fs::write(&path, "x\n").unwrap();
        assert_eq!(lines(&mut input, Wait::Never), ["x"]);
    }

    #[test]
    fn reading_from_the_end_skips_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.json");
        std::fs::write(&path, "old\n").unwrap();
        let sender: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut input = LineInput::open(&path, sender, ReadFrom::End, None).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"new\n").unwrap();
        assert_eq!(lines(&mut input, Wait::Never), ["new"]);
    }
}
