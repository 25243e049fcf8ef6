//! Wires the stages: binlog source → pipeline router → sinks, with the checkpoint writer
//! beside them. Stages talk only through typed records on channels.

mod error;
pub mod outputs;
pub mod reload;

pub use error::AppError;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::checkpoint::{AckTracker, Store};
use crate::config::{Config, ConfigError, StartFrom};
use crate::enrich;
use crate::metrics::Metrics;
use crate::pipeline::Router;
use crate::precheck;
use crate::sink::SinkError;
use crate::source::mysql::stream::{self, MysqlSource};
use crate::source::{BinlogPosition, SourceEvent};

/// Loads config and pipelines, then runs the preflight checks and prints the report.
pub async fn check(config: &Path) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let pipelines = cfg.load_pipelines()?;
    let mut store = Store::from_config(&cfg);
    let cp = store.load().await?;
    let report = precheck::run(&cfg, &pipelines, cp.as_ref().map(|c| &c.position)).await?;
    report_failures(&report.failures)?;
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
pub async fn backfill(config: &Path, pipeline: &str, filter: Option<&str>) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let file = config.display().to_string();
    let Some(sn) = &cfg.snapshot else {
        return Err(ConfigError::File {
            file,
            message: "backfills need a `snapshot:` section (its signal_table)".into(),
        }
        .into());
    };
    let pipelines = cfg.load_pipelines()?;
    let Some(p) = pipelines.iter().find(|p| p.name == pipeline) else {
        let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        return Err(ConfigError::File {
            file,
            message: format!(
                "no pipeline `{pipeline}`; the pipelines are: {}",
                names.join(", ")
            ),
        }
        .into());
    };
    if let Some(f) = filter {
        crate::pipeline::filter::Expr::parse(f).map_err(|m| ConfigError::Pipeline {
            pipeline: p.name.clone(),
            file: p.file.clone(),
            message: format!("--where `{f}`: {m}"),
        })?;
    }
    let mut conn = stream::connect(&cfg.source).await?;
    let id = crate::source::mysql::snapshot::request(&mut conn, &sn.signal_table, pipeline, filter)
        .await?;
    let _ = conn.disconnect().await;
    println!(
        "backfill of `{pipeline}` requested ({id}); the running daemon reads it from the binlog"
    );
    Ok(())
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
pub async fn run(config: &Path) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let pipelines = cfg.load_pipelines()?;
    let mut store = Store::from_config(&cfg);
    let saved = store.load().await?;
    let report = precheck::run(&cfg, &pipelines, saved.as_ref().map(|c| &c.position)).await?;
    report_failures(&report.failures)?;

    if let Some(why) = &report.purged {
        tracing::warn!(reason = %why, "the saved checkpoint is no longer on the server; on_purged: resnapshot — \
            starting at the current end and backfilling every pipeline");
    }
    let resume = if report.purged.is_some() {
        None
    } else {
        saved.clone()
    };
    // After a purge (`on_purged: resnapshot`) the stream starts at the current end.
    let from = match report.purged {
        Some(_) => StartFrom::Latest,
        None => cfg.source.start,
    };
    let legacy_rows = resume.as_ref().map_or(0, |c| c.legacy_rows);
    let open_xa = resume
        .as_ref()
        .map(|c| c.open_xa.clone())
        .unwrap_or_default();
    let history = Arc::new(std::sync::Mutex::new(
        resume
            .as_ref()
            .map(|c| c.schema_history.clone())
            .unwrap_or_default(),
    ));
    let resume = resume.map(|c| c.position);
    let start = match &resume {
        Some(p) => p.clone(),
        None => {
            let mut conn = stream::connect(&cfg.source).await?;
            let p = match from {
                StartFrom::Latest => stream::current_position(&mut conn).await?,
                StartFrom::Earliest => {
                    let logs = stream::binary_logs(&mut conn).await?;
                    BinlogPosition::new(logs.first().map(|l| l.0.clone()).unwrap_or_default(), 4)
                }
            };
            let _ = conn.disconnect().await;
            p
        }
    };
    tracing::info!(position = %start, from_checkpoint = saved.is_some(), store = %store.describe(),
        pipelines = pipelines.len(), "starting");
    if legacy_rows > 0 {
        tracing::info!(position = %start, rows = legacy_rows,
            "the checkpoint is of format 1 and points inside a transaction: its rows are counted \
             across every table once to convert it");
    }

    let tracker = AckTracker::with_open_xa(resume.clone(), open_xa.clone());
    let names: Vec<String> = pipelines.iter().map(|p| p.name.clone()).collect();
    let metrics = Metrics::new(&names, Some(Arc::new(tracker.clone())));
    let _metrics_server = match &cfg.metrics {
        Some(m) => Some(
            crate::metrics::serve(&m.address, metrics.clone(), m.ready_max_lag_seconds)
                .await
                .map_err(|source| AppError::Metrics {
                    address: m.address.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let stages = outputs::Stages {
        cfg: cfg.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        sinks: Arc::new(std::sync::Mutex::new(Vec::new())),
        limiters: Arc::new(crate::ratelimit::Registry::default()),
    };
    let indexed: Vec<(usize, &crate::config::PipelineConfig)> =
        pipelines.iter().enumerate().collect();
    let built = stages.build(&indexed, &report.writeback).await?;
    let sinks = stages.sinks.clone();
    let mut route_to = vec![usize::MAX; pipelines.len()];
    let mut enrich_tx: Vec<Option<mpsc::Sender<enrich::Pending>>> = vec![None; pipelines.len()];
    for (i, r) in built.route_to {
        route_to[i] = r;
    }
    for (i, tx) in built.enrich_tx {
        enrich_tx[i] = Some(tx);
    }
    let enrich_tasks = Arc::new(std::sync::Mutex::new(built.tasks));
    let slots: crate::source::mysql::snapshot::PipelineSlots = Arc::new(std::sync::RwLock::new(
        pipelines.iter().cloned().map(Some).collect(),
    ));

    // Backfills: the coordinator reads chunks between watermarks; the pipeline stage sees the
    // watermarks in the binlog and emits the chunks.
    let mut snapshot_link = None;
    let mut coordinator_task = None;
    let mut asks = None;
    let mut tables_read = Router::new(pipelines.clone()).tables();
    if let Some(sn) = &cfg.snapshot {
        use crate::source::mysql::snapshot::{ensure_signal_table, Coordinator};
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
        let (jobs, seen) = coordinator
            .initial_jobs(&mut conn, saved.is_none(), report.purged.is_some())
            .await?;
        let _ = conn.disconnect().await;
        coordinator_task = Some(tokio::spawn(coordinator.run(jobs.into(), seen, req_rx)));
        tables_read.push(signal.clone());
        asks = Some(req_tx.clone());
        snapshot_link = Some(SnapshotLink {
            signal,
            chunks: chunk_rx,
            requests: req_tx,
            windows: Default::default(),
        });
    }
    let router = Router::new(pipelines.clone());
    // The tables decoded: shared with the reloader, which adds those of new pipelines.
    let wanted: reload::Tables = Arc::new(std::sync::RwLock::new(
        tables_read.iter().cloned().collect(),
    ));
    let filter_tables = wanted.clone();
    let source = MysqlSource {
        cfg: cfg.source.clone(),
        metrics: Some(metrics.clone()),
        tables: wanted.clone(),
        filter: Some(Arc::new(move |db: &str, t: &str| {
            filter_tables
                .read()
                .map(|w| w.contains(&(db.to_string(), t.to_string())))
                .unwrap_or(true)
        })),
        history: history.clone(),
    };
    let (tx, rx) = mpsc::channel::<Vec<SourceEvent>>(16);
    let wake_tx = tx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut source_task = tokio::spawn(source.run(
        crate::source::mysql::stream::Start {
            position: start,
            legacy_rows,
            open_xa,
        },
        tx,
        stop_rx.clone(),
    ));
    let proc_tracker = tracker.clone();
    let proc_metrics = metrics.clone();
    let proc_sinks = sinks.clone();
    let (swap_tx, swap_rx) = std::sync::mpsc::channel();
    let mut reloader = reload::Reloader {
        cfg: cfg.clone(),
        stages,
        all: pipelines.clone(),
        active: vec![true; pipelines.len()],
        route_to: route_to.clone(),
        enrich_tx: enrich_tx.clone(),
        tasks: enrich_tasks.clone(),
        tables: wanted,
        signal: cfg
            .snapshot
            .as_ref()
            .and_then(|sn| crate::config::pipeline::split_table(&sn.signal_table)),
        slots,
        asks,
        swaps: swap_tx,
        wake: wake_tx,
    };
    let outputs = Outputs {
        sinks: proc_sinks,
        route_to,
        enrich_tx,
        tracker: proc_tracker,
        metrics: proc_metrics,
    };
    let mut process_task =
        tokio::task::spawn_blocking(move || process(rx, router, outputs, snapshot_link, swap_rx));

    // Checkpoint writer.
    let writer = crate::checkpoint::Writer {
        store,
        tracker: tracker.clone(),
        history: history.clone(),
        last: saved,
    };
    let interval = Duration::from_millis(cfg.checkpoint.interval_ms.max(10));
    let cp_task = tokio::spawn(writer.run(interval, stop_rx.clone(), metrics.clone()));

    let mut source_done = None;
    let mut process_done = None;
    let mut hangup = reload_signal();
    loop {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutdown requested; stopping the binlog reader and flushing");
                break;
            }
            r = &mut source_task => {
                source_done = Some(r);
                break;
            }
            r = &mut process_task => {
                process_done = Some(r);
                break;
            }
            Some(()) = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the pipelines");
                if let Err(e) = reloader.reload().await {
                    tracing::error!(error = %e, "reload refused; the pipelines run as they were");
                }
            }
        }
    }
    // The reloader holds senders of the source channel and of the enrichment stages: without
    // it they close when their producers end, so the stages drain and stop.
    drop(reloader);
    let _ = stop_tx.send(true);
    // A backfill in progress resumes after its last acknowledged chunk at the next start.
    if let Some(t) = &coordinator_task {
        t.abort();
    }
    let source_result = match source_done {
        Some(r) => r,
        None => source_task.await,
    };
    // The router finishes, then the enrichment stages drain what they hold — within the
    // shutdown timeout: a backend that stays unreachable is retried forever by design, and
    // must not hold the daemon. Rows abandoned then are not acknowledged, so the checkpoint
    // stays before them and they are sent again after a restart.
    let aborts: Vec<_> = enrich_tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, t)| t.abort_handle())
        .collect();
    let shutdown_timeout = Duration::from_millis(cfg.shutdown_timeout_ms);
    let drained = tokio::time::timeout(shutdown_timeout, async move {
        let mut process_result = match process_done {
            Some(r) => r,
            None => process_task.await,
        };
        let tasks: Vec<_> =
            std::mem::take(&mut *enrich_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for (name, t) in tasks {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(format!("task panicked: {e}")),
            };
            if let (Err(reason), Ok(Ok(()))) = (r, &process_result) {
                process_result = Ok(Err(AppError::Enrichment {
                    pipeline: name,
                    reason,
                }));
            }
        }
        process_result
    })
    .await;
    let mut process_result = match drained {
        Ok(r) => r,
        Err(_) => {
            for a in &aborts {
                a.abort();
            }
            tracing::error!(timeout_ms = cfg.shutdown_timeout_ms, in_flight = tracker.in_flight(),
                "enrichment did not drain before the shutdown timeout; the checkpoint stays before the rows still in flight");
            Ok(Err(AppError::ShutdownTimeout {
                ms: cfg.shutdown_timeout_ms,
                in_flight: tracker.in_flight(),
            }))
        }
    };
    let flush_sinks = sinks.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        // Deliver what was sent, whatever stopped the stages, so the checkpoint gets as far as it can.
        let mut first_err = None;
        for s in lock(&flush_sinks).iter_mut() {
            if let Err(e) = s.flush(Duration::from_secs(30)) {
                tracing::error!(error = %e, "flush at shutdown");
                first_err.get_or_insert(e);
            }
        }
        first_err
    })
    .await
    .unwrap_or(None);
    if let (Some(e), Ok(Ok(()))) = (flushed, &process_result) {
        process_result = Ok(Err(e.into()));
    }
    let mut writer = cp_task
        .await
        .map_err(|e| SinkError::Kafka(format!("checkpoint task: {e}")))?;
    writer.save_if_changed().await?;
    let final_pos = tracker.committed();
    tracing::info!(position = %final_pos.as_ref().map(|p| p.to_string()).unwrap_or_default(), "checkpoint saved; stopped");
    match source_result {
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(SinkError::Kafka(format!("source task panicked: {e}")).into()),
        Ok(Ok(())) => {}
    }
    match process_result {
        Ok(r) => r,
        Err(e) => Err(SinkError::Kafka(format!("pipeline task panicked: {e}")).into()),
    }
}

use outputs::{lock, Sinks};

/// The pipeline stage's link to the backfill coordinator.
pub struct SnapshotLink {
    /// The signal table, `(db, table)`.
    pub signal: (String, String),
    pub chunks: std::sync::mpsc::Receiver<crate::source::snapshot::Chunk>,
    pub requests: mpsc::UnboundedSender<crate::source::mysql::snapshot::Ask>,
    pub windows: crate::source::snapshot::Windows,
}

/// What the pipeline stage hands records to.
pub(crate) struct Outputs {
    sinks: Sinks,
    route_to: Vec<usize>,
    enrich_tx: Vec<Option<mpsc::Sender<enrich::Pending>>>,
    tracker: AckTracker,
    metrics: Arc<Metrics>,
}

impl Outputs {
    /// Routes one row (to `only` when set) and hands its records to their enrichment stage or
    /// straight to their sink, registering them with the ack tracker.
    fn row(
        &self,
        router: &mut Router,
        row: &crate::source::RowChange,
        only: Option<usize>,
        recs: &mut Vec<crate::pipeline::ChangeRecord>,
    ) -> Result<(), AppError> {
        recs.clear();
        router.route_to(row, only, recs)?;
        self.dispatch(recs, row.resume_after())
    }

    /// Registers `recs` with the ack tracker (done at `resume`) and hands each to its
    /// enrichment stage or straight to its sink.
    fn dispatch(
        &self,
        recs: &mut Vec<crate::pipeline::ChangeRecord>,
        resume: BinlogPosition,
    ) -> Result<(), AppError> {
        let pending: u32 = {
            let g = lock(&self.sinks);
            recs.iter()
                .map(|r| g[self.route_to[r.pipeline]].acks_for(r))
                .sum()
        };
        let seq = self.tracker.push(resume, pending);
        for r in recs.drain(..) {
            let pm = &self.metrics.pipelines[r.pipeline];
            pm.record_in(r.source.ts_ms);
            if r.op == crate::source::Op::Truncate {
                pm.truncates.fetch_add(1, Ordering::Relaxed);
            }
            match &self.enrich_tx[r.pipeline] {
                Some(tx) => {
                    let pipeline = r.source.pipeline.to_string();
                    tx.blocking_send((r, seq))
                        .map_err(|_| AppError::Enrichment {
                            pipeline,
                            reason: "its task ended".into(),
                        })?;
                }
                None => {
                    lock(&self.sinks)[self.route_to[r.pipeline]].send(&r, seq)?;
                    self.metrics.pipelines[r.pipeline].record_out(r.source.ts_ms);
                }
            }
        }
        Ok(())
    }
}

/// The pipeline stage: drains the source channel, routes rows, and hands records to their
/// enrichment stage or straight to their sink. Rows of the signal table drive backfills.
fn process(
    mut rx: mpsc::Receiver<Vec<SourceEvent>>,
    mut router: Router,
    mut out: Outputs,
    mut snap: Option<SnapshotLink>,
    swaps: std::sync::mpsc::Receiver<reload::Swap>,
) -> Result<(), AppError> {
    use crate::source::snapshot::Signal;
    let mut recs = Vec::new();
    while let Some(batch) = rx.blocking_recv() {
        // A reload takes effect here, between two batches: every row before is routed by the
        // old pipelines, every row after by the new ones.
        while let Ok(sw) = swaps.try_recv() {
            router = sw.router;
            out.route_to = sw.route_to;
            out.enrich_tx = sw.enrich_tx;
            let _ = sw.done.send(());
        }
        for ev in batch {
            match ev {
                SourceEvent::Row(row) => {
                    if let Some(l) = snap.as_mut() {
                        if row.table.db == l.signal.0 && row.table.table == l.signal.1 {
                            while let Ok(c) = l.chunks.try_recv() {
                                l.windows.offer(c);
                            }
                            let signal = row
                                .after
                                .as_deref()
                                .map(|a| Signal::parse(&row.table, a))
                                .unwrap_or(Signal::Other);
                            match signal {
                                Signal::Low(nonce, pipeline) => {
                                    if let Some(p) =
                                        router.pipelines.iter().find(|p| p.name == pipeline)
                                    {
                                        l.windows.low(nonce, p.db_table());
                                    }
                                }
                                Signal::High(nonce) => {
                                    if let Some((chunk, rows)) = l.windows.high(nonce, &row) {
                                        for r in &rows {
                                            out.row(
                                                &mut router,
                                                r,
                                                Some(chunk.pipeline),
                                                &mut recs,
                                            )?;
                                        }
                                        let _ = chunk.done.send(row.resume_after());
                                    }
                                }
                                Signal::Backfill(req) => {
                                    let _ = l
                                        .requests
                                        .send(crate::source::mysql::snapshot::Ask::Request(req));
                                }
                                Signal::Other => {}
                            }
                            out.tracker.push(row.resume_after(), 0);
                            continue;
                        }
                        l.windows.observe(&row);
                    }
                    out.row(&mut router, &row, None, &mut recs)?;
                    for i in router.newly_stopped.drain(..) {
                        out.metrics.pipelines[i].stopped.store(1, Ordering::Relaxed);
                    }
                }
                SourceEvent::Progress(p) => {
                    out.tracker.push(p, 0);
                }
                SourceEvent::Ddl {
                    db,
                    query,
                    resume,
                    parsed,
                } => {
                    log_statement(&router, &db, &query, parsed.as_ref());
                    out.tracker.push(resume, 0);
                }
                SourceEvent::Truncated(t) => {
                    recs.clear();
                    router.truncate(&t, &mut recs);
                    out.dispatch(&mut recs, t.resume.clone())?;
                }
                SourceEvent::XaPrepared(open) => {
                    out.tracker
                        .push_xa(crate::checkpoint::XaChange::Prepared(open));
                }
                SourceEvent::XaEnded(xid) => {
                    out.tracker.push_xa(crate::checkpoint::XaChange::Ended(xid));
                }
                SourceEvent::TableFailed {
                    db,
                    table,
                    error,
                    position,
                } => {
                    router.table_failed(&db, &table, &error, &position);
                    for i in router.newly_stopped.drain(..) {
                        out.metrics.pipelines[i].stopped.store(1, Ordering::Relaxed);
                    }
                }
            }
        }
        for s in lock(&out.sinks).iter_mut() {
            s.poll()?;
        }
    }
    Ok(())
}

/// A statement logged as text: at INFO the read tables it changes (or the statement, when
/// its tables are not known), at DEBUG the statement; tables no pipeline reads are not named
/// above DEBUG.
fn log_statement(
    router: &Router,
    db: &str,
    query: &str,
    parsed: Option<&crate::source::mysql::ddl::Ddl>,
) {
    match parsed {
        None => tracing::info!(%db, query = %redact_statement(query), "DDL"),
        Some(d) => {
            let read: Vec<String> = d
                .tables
                .iter()
                .filter(|(db, t)| router.reads(db, t))
                .map(|(db, t)| format!("{db}.{t}"))
                .collect();
            if !read.is_empty() {
                tracing::info!(tables = %read.join(", "), kind = ?d.kind, "DDL on a table a pipeline reads");
            }
            tracing::debug!(%db, query = %redact_statement(query), "DDL");
        }
    }
}

/// A statement for the log: at most 200 characters, and nothing from the first `IDENTIFIED`
/// or `PASSWORD` on (`CREATE USER … IDENTIFIED BY '…'` reaches the binlog in clear).
pub fn redact_statement(query: &str) -> String {
    let upper = query.to_ascii_uppercase();
    let cut = ["IDENTIFIED", "PASSWORD"]
        .iter()
        .filter_map(|w| upper.find(w))
        .min();
    let (head, redacted) = match cut {
        Some(i) => (&query[..i], true),
        None => (query, false),
    };
    let mut out: String = head.chars().take(200).collect();
    if redacted {
        out.push_str("… (rest not logged: it may hold a secret)");
    }
    out
}

/// SIGHUP, as a stream (never fires where there are no Unix signals).
fn reload_signal() -> mpsc::UnboundedReceiver<()> {
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_are_logged_without_secrets() {
        assert_eq!(
            super::redact_statement("CREATE USER 'w'@'%' identified by 'hunter2'"),
            "CREATE USER 'w'@'%' … (rest not logged: it may hold a secret)"
        );
        assert_eq!(
            super::redact_statement("SET PASSWORD FOR x = PASSWORD('p')"),
            "SET … (rest not logged: it may hold a secret)"
        );
        assert_eq!(
            super::redact_statement("ALTER TABLE t ADD c INT"),
            "ALTER TABLE t ADD c INT"
        );
    }
}
