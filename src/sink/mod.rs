//! Sinks: where change records go. A sink acknowledges each record to the [`AckTracker`]
//! once it is durably delivered; only then can its position be checkpointed.

pub mod envelope;
pub mod jsonl;
pub mod kafka;
pub mod mysql;

use std::sync::Arc;
use std::time::Duration;

use crate::model::record::ChangeRecord;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("JSONL sink {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{pending} records were still unacknowledged after {waited_ms} ms")]
    FlushTimeout { pending: usize, waited_ms: u64 },
    #[error("write-back of pipeline `{pipeline}`: {message}")]
    Mysql { pipeline: String, message: String },
    #[error("record could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The message key: the key columns as a JSON object.
pub fn key_bytes(rec: &ChangeRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    envelope::write_image(&mut out, &rec.key);
    out
}

pub trait Sink: Send {
    /// Queues `rec`; each message it sends later acknowledges `seq` once. Returns how many
    /// acknowledgements `seq` should wait for from this call.
    fn send(&mut self, rec: &ChangeRecord, seq: u64) -> Result<u32, SinkError>;
    /// Sends `rec` (whose enrichment failed for good) to the dead letters, acknowledging
    /// `seq` once. `Ok(false)`: this sink has no dead letters for the pipeline; send it as usual.
    fn send_dead_letter(&mut self, _rec: &ChangeRecord, _seq: u64) -> Result<bool, SinkError> {
        Ok(false)
    }
    /// How many acknowledgements one `send` of `rec` will make (known before sending).
    fn acks_for(&self, rec: &ChangeRecord) -> u32;
    /// Pushes out what is buffered (called after each batch of source events).
    fn poll(&mut self) -> Result<(), SinkError>;
    /// Waits until everything sent is acknowledged, or `timeout`.
    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError>;
}

/// Every sink of the process, shared by the pipeline stage and the delivery threads (indexes
/// are stable: a sink is never removed while the process runs).
pub type Sinks = Arc<std::sync::Mutex<Vec<Box<dyn Sink>>>>;

/// The sinks, locked (a poisoned lock is taken as it is).
pub fn lock(s: &Sinks) -> std::sync::MutexGuard<'_, Vec<Box<dyn Sink>>> {
    // A sink that panicked mid-send stops the daemon anyway; its state is not read again.
    s.lock().unwrap_or_else(|p| p.into_inner())
}
