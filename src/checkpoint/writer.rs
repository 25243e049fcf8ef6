//! The checkpoint writer: every `interval` it saves the position after every acknowledged
//! record, with the schema history as it stands, when either changed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{AckTracker, Checkpoint, CheckpointError, Store};
use crate::metrics::Metrics;
use crate::source::mysql::schema_history::SchemaHistory;

/// Saves checkpoints to a store.
pub struct Writer {
    pub store: Store,
    pub tracker: AckTracker,
    /// Published by the source when a DDL changes it.
    pub history: Arc<Mutex<SchemaHistory>>,
    /// What the store holds now.
    pub last: Option<Checkpoint>,
}

impl Writer {
    /// The checkpoint to save now: the acknowledged position and the history (versions no
    /// position after it can need dropped). `None`: nothing was acknowledged yet.
    fn current(&self) -> Option<Checkpoint> {
        let position = self.tracker.committed()?;
        let mut schema_history = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        schema_history.prune(&position);
        Some(Checkpoint {
            schema_history,
            ..Checkpoint::new(position)
        })
    }

    /// Saves the checkpoint if it changed since the last save; returns whether it saved.
    pub async fn save_if_changed(&mut self) -> Result<bool, CheckpointError> {
        let Some(now) = self.current() else {
            return Ok(false);
        };
        let unchanged = self.last.as_ref().is_some_and(|l| {
            l.position == now.position
                && l.legacy_rows == 0
                && l.schema_history == now.schema_history
        });
        if unchanged {
            return Ok(false);
        }
        self.store.save(&now).await?;
        tracing::debug!(position = %now.position, "checkpoint");
        self.last = Some(now);
        Ok(true)
    }

    /// Saves every `interval` until `stop` turns; returns the writer for the final save.
    pub async fn run(
        mut self,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => break,
            }
            match self.save_if_changed().await {
                Ok(true) => metrics
                    .checkpoint_saved_ms
                    .store(now_ms(), Ordering::Relaxed),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot write the checkpoint; will retry"),
            }
        }
        self
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
