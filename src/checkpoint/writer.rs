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
    /// A writer to `store` of what `tracker` acknowledges, with `history`; `last`: what the
    /// store holds now.
    pub fn new(
        store: Store,
        tracker: AckTracker,
        history: Arc<Mutex<SchemaHistory>>,
        last: Option<Checkpoint>,
    ) -> Writer {
        Writer {
            store,
            tracker,
            history,
            last,
        }
    }

    /// The checkpoint to save now: the acknowledged position and the history (versions no
    /// position after it can need dropped). `None`: nothing was acknowledged yet.
    fn current(&self) -> Option<Checkpoint> {
        let position = self.tracker.committed()?;
        let mut schema_history = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        schema_history.prune(&position);
        Some(Checkpoint {
            schema_history,
            open_xa: self.tracker.open_xa(),
            windows: self.tracker.delivered_windows(),
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
                && l.open_xa == now.open_xa
                && l.windows == now.windows
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
        let mut warned_ms = 0u64;
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
            self.watch_xa(&metrics, &mut warned_ms);
        }
        self
    }
}

/// An XA transaction prepared longer than this is warned about (every 10 minutes).
const XA_WARN_AFTER_MS: u64 = 3_600_000;

impl Writer {
    /// Publishes the prepared XA transactions on `/metrics` and warns of an old one: its
    /// prepare group is read again at every restart, so its binlog file must stay.
    fn watch_xa(&self, metrics: &Metrics, warned_ms: &mut u64) {
        let open = self.tracker.open_xa();
        let now = now_ms();
        let oldest = open.iter().min_by_key(|o| o.ts_ms);
        metrics.xa_open.store(open.len() as u64, Ordering::Relaxed);
        metrics
            .xa_oldest_prepared_ms
            .store(oldest.map_or(0, |o| o.ts_ms), Ordering::Relaxed);
        if let Some(o) = oldest {
            let age = now.saturating_sub(o.ts_ms);
            if age > XA_WARN_AFTER_MS && now.saturating_sub(*warned_ms) > 600_000 {
                *warned_ms = now;
                tracing::warn!(xid = %o.xid.describe(), position = %o.position, age_seconds = age / 1000,
                    "an XA transaction has been prepared for over an hour; until its XA COMMIT or XA ROLLBACK \
                     its prepare group is read again at every restart, so the binlog file holding it must not \
                     be purged (XA RECOVER lists it)");
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
