//! Wires the stages: binlog source → pipeline router → sinks, with the checkpoint writer
//! beside them. Stages talk only through typed records on channels.

mod backfills;
mod dryrun;
mod error;
mod leader;
pub mod outputs;
pub mod reenrich;
pub mod reload;
mod shutdown;
mod start;
mod worker;

pub use error::AppError;
pub use reenrich::reenrich;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::checkpoint::{AckTracker, Store};
use crate::config::{Config, ConfigError, PipelineConfig};
use crate::metrics::Metrics;
use crate::pipeline::{stage, Router};
use crate::precheck;
use crate::snapshot::PipelineSlots;
use crate::source::mysql::stream::{self, MysqlSource};
use crate::source::SourceEvent;

/// What the preflight read and found: the config, the pipelines, the checkpoint store and what
/// it holds, and the report (its failures already printed and refused).
struct Checked {
    cfg: Config,
    pipelines: Vec<PipelineConfig>,
    store: Store,
    saved: Option<crate::checkpoint::Checkpoint>,
    report: precheck::Report,
}

/// What `run` runs: everything in one process, or one of the two roles of a scale-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Binlog, pipelines, enrichment and sinks in this process.
    All,
    /// Reads the binlog and publishes every read table's rows to its change topic.
    Source,
    /// Consumes the change topics in the workers' consumer group and runs the pipelines.
    Worker,
}

/// Loads the config, the pipelines (for the source role, its change streams) and the
/// checkpoint, then runs every preflight check.
async fn preflight(config: &Path, role: Role) -> Result<Checked, AppError> {
    let cfg = Config::load(config)?;
    let mut pipelines = cfg.load_pipelines()?;
    if role == Role::Source {
        worker::scale_out_checks(config, &cfg, &pipelines, "source")?;
    }
    let mut store = Store::from_config(&cfg);
    let saved = store.load().await?;
    // The user's pipelines are checked (tables, columns, inputs) in every role: in a scale-out
    // the workers run them on what the source role publishes.
    let report = precheck::run(&cfg, &pipelines, saved.as_ref().map(|c| &c.position)).await?;
    report_failures(&report.failures)?;
    if role == Role::Source {
        pipelines = crate::pipeline::change_stream::source_pipelines(&cfg.scale_out, &pipelines);
    }
    Ok(Checked {
        cfg,
        pipelines,
        store,
        saved,
        report,
    })
}

/// Loads config and pipelines, then runs the preflight checks and prints the report.
pub async fn check(config: &Path) -> Result<(), AppError> {
    let Checked {
        cfg,
        pipelines,
        saved: cp,
        report,
        ..
    } = preflight(config, Role::All).await?;
    println!(
        "ok: {} ({}), {} pipelines, checkpoint {}",
        stream::addr(&cfg.source),
        report.server_version,
        pipelines.len(),
        cp.map(|c| c.position.to_string())
            .unwrap_or_else(|| "none yet".into())
    );
    Ok(())
}

/// `cdc-enricher backfill`: checks the request, then writes it into the signal table, where
/// the running daemon reads it from the binlog.
/// With `dry_run`, reads the rows instead and prints what they would take.
pub async fn backfill(
    config: &Path,
    pipeline: &str,
    filter: Option<&str>,
    dry_run: bool,
) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let pipelines = cfg.load_pipelines()?;
    let p = find_pipeline(config, &pipelines, pipeline)?;
    if dry_run {
        let e = dryrun::estimate(&cfg, p, filter).await?;
        let what = format!("backfill of `{pipeline}`");
        println!("{}", dryrun::report(&what, &e, p.enrichment.is_some()));
        return Ok(());
    }
    let id = request_backfill(config, &cfg, p, filter).await?;
    println!(
        "backfill of `{pipeline}` requested ({id}); the running daemon reads it from the binlog"
    );
    Ok(())
}

/// The pipeline named `name`; the error lists the names there are.
fn find_pipeline<'a>(
    config: &Path,
    pipelines: &'a [PipelineConfig],
    name: &str,
) -> Result<&'a PipelineConfig, AppError> {
    pipelines.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        ConfigError::File {
            file: config.display().to_string(),
            message: format!(
                "no pipeline `{name}`; the pipelines are: {}",
                names.join(", ")
            ),
        }
        .into()
    })
}

/// Checks `filter` and writes a backfill request for `p` into the signal table: its id.
async fn request_backfill(
    config: &Path,
    cfg: &Config,
    p: &PipelineConfig,
    filter: Option<&str>,
) -> Result<String, AppError> {
    let Some(sn) = &cfg.snapshot else {
        return Err(ConfigError::File {
            file: config.display().to_string(),
            message: "backfills need a `snapshot:` section (its signal_table)".into(),
        }
        .into());
    };
    if let Some(f) = filter {
        crate::model::filter::Expr::parse(f).map_err(|m| ConfigError::Pipeline {
            pipeline: p.name.clone(),
            file: p.file.clone(),
            message: format!("--where `{f}`: {m}"),
        })?;
    }
    let mut conn = stream::connect(&cfg.source).await?;
    let id = crate::snapshot::request(&mut conn, &sn.signal_table, &p.name, filter).await?;
    let _ = conn.disconnect().await;
    Ok(id)
}

fn report_failures(f: &[precheck::Failure]) -> Result<(), AppError> {
    if f.is_empty() {
        return Ok(());
    }
    for x in f {
        eprintln!("error: {x}");
    }
    Err(AppError::Preflight(f.len()))
}

/// Runs the daemon until SIGTERM / SIGINT (exit 0 after a flush and a checkpoint) or an error.
/// The order: config and preflight, start position, metrics, sinks and enrichment stages,
/// backfills, the binlog source, the pipeline stage, the checkpoint writer; then the main loop
/// ([`shutdown::Running::wait`]) and the orderly stop. The source role runs the same with its
/// change streams for pipelines; the worker role is [`worker::run`].
pub async fn run(config: &Path, role: Role) -> Result<(), AppError> {
    match role {
        Role::Worker => worker::run(config).await,
        Role::All => run_binlog(config, role).await,
        // One source process of a server reads; the others wait for its lock.
        Role::Source => {
            let _leading = leader::acquire(config).await?.watch();
            run_binlog(config, role).await
        }
    }
}

/// `run` of the roles that read the binlog (`all`, `source`).
async fn run_binlog(config: &Path, role: Role) -> Result<(), AppError> {
    let Checked {
        cfg,
        pipelines,
        store,
        saved,
        report,
    } = preflight(config, role).await?;
    let resume = start::resolve(&cfg, saved.as_ref(), report.purged.as_deref()).await?;
    // From here a SIGTERM stops the daemon by its main loop (nothing was read before).
    let signals = shutdown::listen_for_shutdown();
    tracing::info!(position = %resume.start.position, from_checkpoint = saved.is_some(), store = %store.describe(),
        pipelines = pipelines.len(), "starting");
    let tracker = AckTracker::with_open_xa(resume.checkpoint.clone(), resume.start.open_xa.clone());
    // Only with the checkpoint the stream resumes from (not one set aside as purged).
    if let (Some(c), Some(_)) = (&saved, &resume.checkpoint) {
        tracker.restore_windows(c.windows.clone());
    }
    let names: Vec<String> = pipelines.iter().map(|p| p.name.clone()).collect();
    let metrics = Metrics::new(&names, Some(Arc::new(tracker.clone())));
    let _ = metrics.role.set(if role == Role::Source {
        "source"
    } else {
        "all"
    });
    let _metrics_server = serve_metrics(&cfg, &metrics).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock = Arc::new(crate::model::clock::StreamClock::default());
    let stages = outputs::Stages::new(&cfg, &tracker, &metrics, &clock, &stop_rx);
    let indexed: Vec<(usize, &PipelineConfig)> = pipelines.iter().enumerate().collect();
    let built = stages.build(&indexed, &report.writeback).await?;
    let (routes, tasks) = built.into_routes(pipelines.len());
    let enrich_tasks = Arc::new(Mutex::new(tasks));
    let slots: PipelineSlots = Arc::new(RwLock::new(pipelines.iter().cloned().map(Some).collect()));
    let (fresh, purged) = (saved.is_none(), report.purged.is_some());
    let backfills = backfills::start(&cfg, &slots, &tracker, &metrics, fresh, purged).await?;
    let signal = backfills.as_ref().map(|b| b.link.signal.clone());

    // The tables decoded: shared with the reloader, which adds those of new pipelines.
    let mut read = Router::new(pipelines.clone()).tables();
    read.extend(signal.clone());
    let tables: reload::Tables = Arc::new(RwLock::new(read.into_iter().collect()));
    let (tx, rx) = mpsc::channel::<Vec<SourceEvent>>(16);
    let tables_added = Arc::new(crate::source::mysql::stream::TablesToAdd::default());
    let source = binlog_source(&cfg, &metrics, &tables, &resume.history, &tables_added);
    let source_task = tokio::spawn(source.run(resume.start, tx.clone(), stop_rx.clone()));

    let (swap_tx, swap_rx) = std::sync::mpsc::channel();
    let interval = Duration::from_millis(cfg.checkpoint.interval_ms.max(10));
    let (backfill, asks, link) = match backfills {
        Some(b) => (Some(b.task), Some(b.asks), Some(b.link)),
        None => (None, None, None),
    };
    let outputs = stage::Outputs {
        sinks: stages.sinks.clone(),
        routes: routes.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        clock,
    };
    let mut running = shutdown::Running {
        source: source_task,
        stage: spawn_stage(rx, Router::new(pipelines.clone()), outputs, link, swap_rx),
        checkpoint: tokio::spawn(
            crate::checkpoint::Writer::new(store, tracker.clone(), resume.history.clone(), saved)
                .run(interval, stop_rx, metrics.clone()),
        ),
        backfill,
        stop: stop_tx,
        enrich_tasks: enrich_tasks.clone(),
        sinks: stages.sinks.clone(),
        tracker,
        signal: signals,
        reloads: role == Role::All,
    };
    let mut reloader = reload::Reloader {
        cfg: cfg.clone(),
        stages,
        all: pipelines.clone(),
        active: vec![true; pipelines.len()],
        routes,
        tasks: enrich_tasks,
        tables,
        tables_added,
        signal,
        slots,
        asks,
        swaps: swap_tx,
        wake: tx,
    };
    let ended = running.wait(&mut reloader).await;
    // Stopping from here on (windowed stages then leave open windows to the restart), before
    // anything closes.
    let _ = running.stop.send(true);
    // The reloader holds senders of the source channel and of the enrichment stages: without
    // it they close when their producers end, so the stages drain and stop.
    drop(reloader);
    running.stop(ended, cfg.shutdown_timeout_ms).await
}

/// Serves `/metrics` and `/health/*` where the config has a `metrics:` section.
async fn serve_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, AppError> {
    let Some(m) = &cfg.metrics else {
        return Ok(None);
    };
    crate::metrics::serve(&m.address, metrics.clone(), m.ready_max_lag_seconds)
        .await
        .map(Some)
        .map_err(|source| AppError::Metrics {
            address: m.address.clone(),
            source,
        })
}

/// The binlog source, decoding the rows of `tables` only.
fn binlog_source(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    tables: &reload::Tables,
    history: &Arc<Mutex<crate::source::mysql::schema_history::SchemaHistory>>,
    tables_added: &Arc<crate::source::mysql::stream::TablesToAdd>,
) -> MysqlSource {
    let filter_tables = tables.clone();
    MysqlSource {
        cfg: cfg.source.clone(),
        metrics: Some(metrics.clone()),
        tables: tables.clone(),
        filter: Some(Arc::new(move |db: &str, t: &str| {
            filter_tables
                .read()
                .map(|w| w.contains(&(db.to_string(), t.to_string())))
                .unwrap_or(true)
        })),
        history: history.clone(),
        tables_added: tables_added.clone(),
    }
}

/// The pipeline stage, on a blocking thread (sinks may block).
fn spawn_stage(
    rx: mpsc::Receiver<Vec<SourceEvent>>,
    router: Router,
    outputs: stage::Outputs,
    link: Option<stage::SnapshotLink>,
    swaps: std::sync::mpsc::Receiver<stage::Swap>,
) -> tokio::task::JoinHandle<Result<(), stage::StageError>> {
    tokio::task::spawn_blocking(move || stage::run(rx, router, outputs, link, swaps))
}
