//! Starts the backfill coordinator where the config has a `snapshot:` section: it reads
//! chunks between watermarks; the pipeline stage sees the watermarks in the binlog and emits
//! the chunks (the link between the two).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::AppError;
use crate::checkpoint::AckTracker;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::stage::SnapshotLink;
use crate::snapshot::{ensure_signal_table, Coordinator, PipelineSlots};
use crate::source::mysql::stream;
use crate::source::snapshot::Ask;

/// The running coordinator: its task, how to ask it for more, and the pipeline stage's link.
pub struct Backfills {
    pub task: tokio::task::JoinHandle<Result<(), crate::snapshot::SnapshotError>>,
    pub asks: mpsc::UnboundedSender<Ask>,
    pub link: SnapshotLink,
}

/// Starts the coordinator (`None` without a `snapshot:` section). `fresh`: no checkpoint was
/// saved (pipelines with `snapshot: initial` backfill); `purged`: every pipeline backfills.
pub async fn start(
    cfg: &Config,
    slots: &PipelineSlots,
    tracker: &AckTracker,
    metrics: &Arc<Metrics>,
    fresh: bool,
    purged: bool,
) -> Result<Option<Backfills>, AppError> {
    let Some(sn) = &cfg.snapshot else {
        return Ok(None);
    };
    let signal = crate::config::pipeline::split_table(&sn.signal_table).unwrap_or_default();
    let mut conn = stream::connect(&cfg.source).await?;
    ensure_signal_table(&mut conn, &sn.signal_table).await?;
    let (chunk_tx, chunk_rx) = std::sync::mpsc::channel();
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let coordinator = Coordinator {
        source: cfg.source.clone(),
        cfg: sn.clone(),
        pipelines: slots.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        chunks: chunk_tx,
    };
    let (jobs, seen) = coordinator.initial_jobs(&mut conn, fresh, purged).await?;
    let _ = conn.disconnect().await;
    Ok(Some(Backfills {
        task: tokio::spawn(coordinator.run(jobs.into(), seen, req_rx)),
        asks: req_tx.clone(),
        link: SnapshotLink {
            signal,
            chunks: chunk_rx,
            requests: req_tx,
            windows: Default::default(),
        },
    }))
}
