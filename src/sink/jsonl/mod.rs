//! JSON lines to a file or standard output, for debugging pipelines.

use std::io::Write;
use std::time::Duration;

use super::{Sink, SinkError};
use crate::checkpoint::AckTracker;
use crate::model::record::ChangeRecord;

pub struct JsonlSink {
    path: String,
    out: Box<dyn Write + Send>,
    tracker: AckTracker,
    /// Sequence numbers written but not yet flushed.
    unflushed: Vec<u64>,
}

impl JsonlSink {
    pub fn open(path: &str, tracker: AckTracker) -> Result<Self, SinkError> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            match cut_torn_tail(path) {
                Ok(None) => {}
                Ok(Some(bytes)) => tracing::warn!(
                    path,
                    bytes,
                    "the file's last line was cut by a crash mid-write (never acknowledged: \
                     its record comes again); the cut line is removed"
                ),
                // A file the daemon may append to but not read: appended to as it is.
                Err(error) => tracing::warn!(path, %error,
                    "cannot read the file's last line; records are appended after it"),
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SinkError::Io {
                    path: path.into(),
                    source,
                })?;
            Box::new(std::io::BufWriter::new(f))
        };
        Ok(JsonlSink {
            path: path.into(),
            out,
            tracker,
            unflushed: Vec::new(),
        })
    }
}

/// A crash mid-write (`kill -9`) can leave the file's last line cut. That record was never
/// acknowledged, so it comes again after the restart: the cut line is removed rather than
/// have the next record appended to it. Returns the bytes removed, if any.
fn cut_torn_tail(path: &str) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    // Backwards, a block at a time, to the last newline (the start of the file if none).
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep == len {
        return Ok(None);
    }
    f.set_len(keep)?;
    Ok(Some(len - keep))
}

impl Sink for JsonlSink {
    fn acks_for(&self, _rec: &ChangeRecord) -> u32 {
        1
    }

    fn send(&mut self, rec: &ChangeRecord, seq: u64) -> Result<u32, SinkError> {
        let mut line = Vec::with_capacity(512);
        crate::sink::envelope::write_record(rec, &mut line)?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.unflushed.push(seq);
        Ok(1)
    }

    fn poll(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })?;
        for s in self.unflushed.drain(..) {
            self.tracker.ack(s);
        }
        Ok(())
    }

    fn flush(&mut self, _timeout: Duration) -> Result<(), SinkError> {
        self.poll()
    }
}

#[cfg(test)]
mod tests {
    use super::cut_torn_tail;

    #[test]
    fn a_line_cut_by_a_crash_is_removed_whole_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let p = path.to_str().unwrap();
        let long = "x".repeat(100_000);
        for (before, after, cut) in [
            (
                "{\"a\":1}\n{\"b\":2}\n{\"c\"".to_string(),
                "{\"a\":1}\n{\"b\":2}\n".to_string(),
                Some(4),
            ),
            ("{\"a\":1}\n".to_string(), "{\"a\":1}\n".to_string(), None),
            (
                format!("{{\"a\":1}}\n{long}"),
                "{\"a\":1}\n".to_string(),
                Some(100_000),
            ),
            (long.clone(), String::new(), Some(100_000)),
            (String::new(), String::new(), None),
        ] {
            std::fs::write(&path, &before).unwrap();
            assert_eq!(cut_torn_tail(p).unwrap(), cut);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
        }
        assert_eq!(
            cut_torn_tail(dir.path().join("none").to_str().unwrap()).unwrap(),
            None
        );
    }
}
