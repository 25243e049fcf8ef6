//! The running daemon's tasks, the main loop (signals, reloads, a task that ends) and the
//! orderly stop: the binlog reader stops, the pipeline stage and the enrichment stages drain
//! within `shutdown_timeout_ms`, the sinks flush, and the checkpoint is saved once more.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};

use super::outputs::StageTask;
use super::reload::Reloader;
use super::AppError;
use crate::checkpoint::{AckTracker, Writer};
use crate::enrich;
use crate::pipeline::stage::StageError;
use crate::sink::{lock, SinkError, Sinks};
use crate::snapshot::SnapshotError;
use crate::source::mysql::stream::SourceError;

/// The daemon's tasks while it runs.
pub struct Running {
    pub source: JoinHandle<Result<(), SourceError>>,
    pub stage: JoinHandle<Result<(), StageError>>,
    pub checkpoint: JoinHandle<Writer>,
    pub backfill: Option<JoinHandle<Result<(), SnapshotError>>>,
    /// Tells the source and the checkpoint writer to stop.
    pub stop: watch::Sender<bool>,
    pub enrich_tasks: Arc<Mutex<Vec<StageTask>>>,
    pub sinks: Sinks,
    pub tracker: AckTracker,
    /// Turns true on SIGTERM / SIGINT, listened to from the daemon's start ([`listen_for_shutdown`]).
    pub signal: watch::Receiver<bool>,
    /// SIGHUP reloads the pipelines (`--role all`); the source role's change streams follow
    /// the pipelines' tables as they were at its start: it says so and goes on.
    pub reloads: bool,
}

/// Why the main loop ended: a signal, or a task that ended first (with its result).
pub enum Ended {
    Signal,
    Source(Result<Result<(), SourceError>, JoinError>),
    Stage(Result<Result<(), StageError>, JoinError>),
}

impl Running {
    /// Runs until SIGTERM / SIGINT or until the source or the pipeline stage ends; SIGHUP
    /// reloads the pipelines meanwhile.
    pub async fn wait(&mut self, reloader: &mut Reloader) -> Ended {
        let mut hangup = reload_signal();
        loop {
            tokio::select! {
                _ = self.signal.wait_for(|s| *s) => {
                    tracing::info!("shutdown requested; stopping the binlog reader and flushing");
                    return Ended::Signal;
                }
                r = &mut self.source => return Ended::Source(r),
                r = &mut self.stage => return Ended::Stage(r),
                Some(()) = hangup.recv() => {
                    if !self.reloads {
                        tracing::warn!("SIGHUP ignored: `--role source` does not reload its change streams; restart it to read other tables");
                        continue;
                    }
                    tracing::info!("SIGHUP: reloading the pipelines");
                    if let Err(e) = reloader.reload().await {
                        tracing::error!(error = %e, "reload refused; the pipelines run as they were");
                    }
                }
            }
        }
    }

    /// Stops everything in order and returns the first error (the source's before the others).
    /// The reloader must be dropped before: it holds senders of the channels that must close.
    pub async fn stop(self, ended: Ended, shutdown_timeout_ms: u64) -> Result<(), AppError> {
        let _ = self.stop.send(true);
        // A backfill in progress resumes after its last acknowledged chunk at the next start.
        if let Some(t) = &self.backfill {
            t.abort();
        }
        let (source_done, stage_done) = match ended {
            Ended::Signal => (None, None),
            Ended::Source(r) => (Some(r), None),
            Ended::Stage(r) => (None, Some(r)),
        };
        let timeout = Duration::from_millis(shutdown_timeout_ms);
        let mut source = self.source;
        let mut reader_late = false;
        let source_result = match source_done {
            Some(r) => r,
            // The reader stops at its next event or slice; bounded all the same.
            None => match tokio::time::timeout(timeout, &mut source).await {
                Ok(r) => r,
                Err(_) => {
                    source.abort();
                    tracing::error!(
                        timeout_ms = shutdown_timeout_ms,
                        "the binlog reader did not stop in time"
                    );
                    reader_late = true;
                    Ok(Ok(()))
                }
            },
        };
        let mut result = drain(
            self.stage,
            stage_done,
            &self.enrich_tasks,
            timeout,
            &self.tracker,
        )
        .await;
        if reader_late && result.is_ok() {
            result = Err(AppError::ShutdownTimeout {
                ms: shutdown_timeout_ms,
                in_flight: self.tracker.in_flight(),
            });
        }
        if let Err(AppError::ShutdownTimeout { .. }) = &result {
            tracing::error!(timeout_ms = shutdown_timeout_ms, in_flight = self.tracker.in_flight(),
                "enrichment did not drain before the shutdown timeout; the checkpoint stays before the rows still in flight");
        }
        if let (Some(e), Ok(())) = (flush(&self.sinks).await, &result) {
            result = Err(e.into());
        }
        let mut writer = self
            .checkpoint
            .await
            .map_err(|e| AppError::task("checkpoint writer", e))?;
        writer.save_if_changed().await?;
        let last = self.tracker.committed().map(|p| p.to_string());
        tracing::info!(position = %last.unwrap_or_default(), "checkpoint saved; stopped");
        match source_result {
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(AppError::task("binlog source", e)),
            Ok(Ok(())) => result,
        }
    }
}

/// The pipeline stage finishes, then the enrichment stages drain what they hold — within
/// `timeout`: a backend that stays unreachable is retried forever by design and must not hold
/// the daemon. Rows abandoned then are not acknowledged, so the checkpoint stays before them
/// and they are sent again after a restart.
pub(super) async fn drain(
    stage: JoinHandle<Result<(), StageError>>,
    stage_done: Option<Result<Result<(), StageError>, JoinError>>,
    enrich_tasks: &Mutex<Vec<StageTask>>,
    timeout: Duration,
    tracker: &AckTracker,
) -> Result<(), AppError> {
    let tasks: Vec<StageTask> =
        std::mem::take(&mut *enrich_tasks.lock().unwrap_or_else(|p| p.into_inner()));
    let aborts: Vec<_> = tasks.iter().map(|(_, t)| t.abort_handle()).collect();
    let drained = tokio::time::timeout(timeout, async move {
        let stage_result = match stage_done {
            Some(r) => r,
            None => stage.await,
        };
        let mut ended: Vec<(String, AppError)> = Vec::new();
        for (name, t) in tasks {
            let err = match t.await {
                Ok(Ok(())) => continue,
                Ok(Err(enrich::StageEnd::Sink(e))) => AppError::Sink(e),
                Ok(Err(e)) => AppError::Enrichment {
                    pipeline: name.clone(),
                    reason: e.to_string(),
                },
                Err(e) => AppError::task("enrichment stage", e),
            };
            ended.push((name, err));
        }
        // The stage's "its enrichment stage ended" is told by that stage's own reason.
        match stage_result {
            Ok(Err(StageError::EnrichmentEnded { pipeline })) => {
                match ended.iter().position(|(n, _)| *n == pipeline) {
                    Some(k) => Err(ended.swap_remove(k).1),
                    None => Err(StageError::EnrichmentEnded { pipeline }.into()),
                }
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(AppError::task("pipeline stage", e)),
            Ok(Ok(())) => ended.into_iter().next().map_or(Ok(()), |(_, e)| Err(e)),
        }
    })
    .await;
    drained.unwrap_or_else(|_| {
        for a in &aborts {
            a.abort();
        }
        Err(AppError::ShutdownTimeout {
            ms: timeout.as_millis() as u64,
            in_flight: tracker.in_flight(),
        })
    })
}

/// Delivers what was sent, whatever stopped the stages, so the checkpoint gets as far as it
/// can; returns the first sink's error.
pub(super) async fn flush(sinks: &Sinks) -> Option<SinkError> {
    let sinks = sinks.clone();
    tokio::task::spawn_blocking(move || {
        let mut first_err = None;
        for s in lock(&sinks).iter_mut() {
            if let Err(e) = s.flush(Duration::from_secs(30)) {
                tracing::error!(error = %e, "flush at shutdown");
                first_err.get_or_insert(e);
            }
        }
        first_err
    })
    .await
    .unwrap_or(None)
}

/// SIGHUP, as a stream (never fires where there are no Unix signals); from the call on, a
/// SIGHUP no longer ends the process (its default action).
pub(super) fn reload_signal() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// SIGTERM / SIGINT from now on: the handlers are installed before this returns, so a signal
/// while the tasks start is kept until the main loop looks (it then stops as on any signal)
/// rather than ending the process by the default action.
pub fn listen_for_shutdown() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = tx.send(true);
            });
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}
