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
