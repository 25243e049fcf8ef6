//! The worker role (`run --role worker`): the pipelines, their enrichment and sinks, fed by
//! the change topics of the source role in the workers' consumer group instead of by the
//! binlog. Offsets are committed as the sinks acknowledge (see [`crate::source::kafka`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{outputs, serve_metrics, shutdown, spawn_stage, AppError};
use crate::checkpoint::AckTracker;
use crate::config::pipeline::{SnapshotMode, WriteMode};
use crate::config::{Config, ConfigError, PipelineConfig, SinkConfig};
use crate::metrics::Metrics;
use crate::pipeline::{stage, Router};
use crate::source::kafka::{ChangeTopicError, Worker};
use crate::source::SourceEvent;

/// Runs a worker until SIGTERM / SIGINT (exit 0 once what it took is delivered and its
/// offsets committed) or an error.
pub async fn run(config: &Path) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let pipelines = cfg.load_pipelines()?;
    let kafka = scale_out_checks(config, &cfg, &pipelines, "worker")?;
    // The tables, columns and inputs the pipelines name, as in one process.
    let mut report = crate::precheck::run(&cfg, &pipelines, None).await?;
    super::report_failures(&report.failures)?;
    // Write-backs keep their applied position per change-topic partition (shared by the
    // group's workers, read under a lock in each transaction).
    for plan in report.writeback.values_mut() {
        plan.by_partition = true;
    }
    let signals = shutdown::listen_for_shutdown();
    let tracker = AckTracker::with_open_xa(None, Vec::new());
    let names: Vec<String> = pipelines.iter().map(|p| p.name.clone()).collect();
    let metrics = Metrics::new(&names, Some(Arc::new(tracker.clone())));
    let _ = metrics.role.set("worker");
    let _metrics_server = serve_metrics(&cfg, &metrics).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock = Arc::new(crate::model::clock::StreamClock::default());
    let stages = outputs::Stages::new(&cfg, &tracker, &metrics, &clock, &stop_rx);
    let indexed: Vec<(usize, &PipelineConfig)> = pipelines.iter().enumerate().collect();
    let (routes, tasks) = stages
        .build(&indexed, &report.writeback)
        .await?
        .into_routes(pipelines.len());
    let enrich_tasks = Arc::new(Mutex::new(tasks));
    let topics: BTreeSet<String> = pipelines
        .iter()
        .map(|p| {
            let (db, table) = p.db_table();
            cfg.scale_out.topic(&db, &table)
        })
        .collect();
    let worker = Worker {
        kafka,
        group_id: cfg.scale_out.group_id.clone(),
        topics: topics.into_iter().collect(),
        tracker: Arc::new(tracker.clone()),
        commit_interval: Duration::from_millis(cfg.checkpoint.interval_ms.max(10)),
        on_share: {
            let limiters = stages.limiters.clone();
            Arc::new(move |share| limiters.set_share(share))
        },
        metrics: metrics.clone(),
    };
    let (tx, rx) = mpsc::channel::<Vec<SourceEvent>>(64);
    let (finish_tx, finish_rx) = watch::channel(false);
    let source_stop = stop_rx.clone();
    let mut source = tokio::task::spawn_blocking(move || worker.run(tx, source_stop, finish_rx));
    let outputs = stage::Outputs {
        sinks: stages.sinks.clone(),
        routes,
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        clock,
    };
    // No reload yet in a worker: the swap channel stays empty.
    let (_swaps, swap_rx) = std::sync::mpsc::channel();
    let mut stage = spawn_stage(rx, Router::new(pipelines), outputs, None, swap_rx);
    tracing::info!(group = %cfg.scale_out.group_id, pipelines = names.len(), "worker started");
    let mut signal = signals;
    let mut hangup = shutdown::reload_signal();
    let (mut source_done, mut stage_done) = (None, None);
    loop {
        tokio::select! {
            _ = signal.wait_for(|s| *s) => {
                tracing::info!("shutdown requested; stopping the consumer and flushing");
                break;
            }
            r = &mut source => { source_done = Some(r); break; }
            r = &mut stage => { stage_done = Some(r); break; }
            Some(()) = hangup.recv() => tracing::warn!(
                "SIGHUP ignored: a worker does not reload its pipelines; restart it (its partitions move to the others meanwhile)"),
        }
    }
    let _ = stop_tx.send(true);
    let timeout = Duration::from_millis(cfg.shutdown_timeout_ms);
    let mut result = shutdown::drain(stage, stage_done, &enrich_tasks, timeout, &tracker).await;
    if let (Some(e), Ok(())) = (shutdown::flush(&stages.sinks).await, &result) {
        result = Err(e.into());
    }
    let _ = finish_tx.send(true);
    let source_result = match source_done {
        Some(r) => r,
        None => source.await,
    };
    tracing::info!("offsets committed; stopped");
    match source_result {
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(AppError::task("change topic consumer", e)),
        Ok(Ok(())) => result,
    }
}

/// What the two roles of a scale-out (`role`: `source` or `worker`) cannot run yet, refused
/// before anything is read: the Kafka section they publish to and consume from.
pub(super) fn scale_out_checks(
    config: &Path,
    cfg: &Config,
    pipelines: &[PipelineConfig],
    role: &str,
) -> Result<crate::config::KafkaConfig, AppError> {
    let Some(kafka) = cfg.kafka.clone() else {
        return Err(ConfigError::File {
            file: config.display().to_string(),
            message: format!(
                "`run --role {role}` works through Kafka's change topics: add a `kafka:` section"
            ),
        }
        .into());
    };
    for p in pipelines {
        let not_yet = match () {
            // A side table's unguarded removals (every side row of a dropped table, the side
            // row of a row that left the filter) would run out of order with other partitions'
            // writes, removing newer results.
            _ if matches!(&p.sink, SinkConfig::Mysql(m) if m.mode == WriteMode::Upsert) => {
                Some("a write-back into a side table (`sink.mysql.mode: upsert`)")
            }
            _ if p.enrichment.as_ref().is_some_and(|e| e.window.is_some()) => {
                Some("a window (`enrichment.window`)")
            }
            _ if p.snapshot == SnapshotMode::Initial => Some("`snapshot: initial`"),
            _ => None,
        };
        if let Some(what) = not_yet {
            return Err(ConfigError::Pipeline {
                pipeline: p.name.clone(),
                file: p.file.clone(),
                message: format!(
                    "{what} does not run in a scale-out (`--role {role}`) yet; run this pipeline in a `--role all` process"
                ),
            }
            .into());
        }
    }
    Ok(kafka)
}

impl From<ChangeTopicError> for AppError {
    fn from(e: ChangeTopicError) -> AppError {
        AppError::ChangeTopic(Box::new(e))
    }
}
