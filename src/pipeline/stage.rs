//! The pipeline stage's loop: drains the source channel a batch at a time, routes each row
//! through the [`Router`], registers its records with the ack tracker and hands each to its
//! pipeline's enrichment stage or straight to its sink. Rows of the backfill signal table
//! drive the watermark windows; a reload's new routes are swapped in between two batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{ChangeRecord, RouteError, Router};
use crate::checkpoint::{AckTracker, XaChange};
use crate::enrich;
use crate::metrics::Metrics;
use crate::model::clock::StreamClock;
use crate::model::{BinlogPosition, Op};
use crate::sink::{lock, SinkError, Sinks};
use crate::source::snapshot::{Ask, Chunk, Signal, Windows};
use crate::source::{RowChange, SourceEvent};

/// Where a pipeline's records go (by pipeline index; the default is no route: a pipeline a
/// reload removed).
#[derive(Clone, Default)]
pub struct Route {
    /// The pipeline's sink: its index in the shared [`Sinks`].
    pub sink: Option<usize>,
    /// The pipeline's enrichment stage, which hands records on to `sink`.
    pub enrich: Option<mpsc::Sender<enrich::Pending>>,
    /// The enrichment gathers rows into windows: each record is acknowledged once (by its
    /// window's output, or at once when it joins none), whatever its sink would send for it.
    pub windowed: bool,
}

/// What a reload hands the stage, taken between two batches.
pub struct Swap {
    pub router: Router,
    pub routes: Vec<Route>,
    /// Answered once the stage routes by the new pipelines.
    pub done: oneshot::Sender<()>,
    /// The reload added tables: it takes effect at the source's [`SourceEvent::TablesAdded`]
    /// (where those tables' rows start), not at the next batch.
    pub at_tables_added: bool,
}

/// Why the stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("enrichment stage of pipeline `{pipeline}` stopped: {reason}")]
    Enrichment { pipeline: String, reason: String },
    /// The pipeline's enrichment stage ended (its own result says why).
    #[error("enrichment stage of pipeline `{pipeline}` stopped: its task ended")]
    EnrichmentEnded { pipeline: String },
}

/// The stage's link to the backfill coordinator.
pub struct SnapshotLink {
    /// The signal table, `(db, table)`.
    pub signal: (String, String),
    pub chunks: std::sync::mpsc::Receiver<Chunk>,
    pub requests: mpsc::UnboundedSender<Ask>,
    pub windows: Windows,
}

/// What the stage hands records to.
pub struct Outputs {
    pub sinks: Sinks,
    pub routes: Vec<Route>,
    pub tracker: AckTracker,
    pub metrics: Arc<Metrics>,
    /// Moved after each event's records are handed on (windowed enrichment reads it).
    pub clock: Arc<StreamClock>,
}

impl Outputs {
    /// Routes one row (to `only` when set) and hands its records on (the row's values move
    /// into them).
    fn row(
        &self,
        router: &mut Router,
        row: &mut RowChange,
        only: Option<usize>,
        recs: &mut Vec<ChangeRecord>,
    ) -> Result<(), StageError> {
        recs.clear();
        let resume = row.resume_after();
        router.route_to(row, only, recs)?;
        self.dispatch(recs, resume)?;
        self.mark_stopped(router);
        Ok(())
    }

    fn mark_stopped(&self, router: &mut Router) {
        for i in router.newly_stopped.drain(..) {
            self.metrics.pipelines[i]
                .stopped
                .store(1, Ordering::Relaxed);
        }
    }

    fn route(&self, r: &ChangeRecord) -> Result<usize, StageError> {
        self.routes
            .get(r.pipeline)
            .and_then(|x| x.sink)
            .ok_or_else(|| StageError::Enrichment {
                pipeline: r.source.pipeline.to_string(),
                reason: "no route (internal: a record of a removed pipeline)".into(),
            })
    }

    /// Registers `recs` with the ack tracker (done at `resume`) and hands each to its
    /// enrichment stage or straight to its sink.
    fn dispatch(
        &self,
        recs: &mut Vec<ChangeRecord>,
        resume: BinlogPosition,
    ) -> Result<(), StageError> {
        let mut pending = 0u32;
        // One lock of the sinks for the row (not one per record), let go before waiting on an
        // enrichment stage: its delivery thread takes the same lock.
        let g = lock(&self.sinks);
        for r in recs.iter() {
            pending += match self.routes.get(r.pipeline).is_some_and(|x| x.windowed) {
                true => 1,
                false => g[self.route(r)?].acks_for(r),
            };
        }
        let seq = self.tracker.push(resume, pending);
        let mut sinks = Some(g);
        for r in recs.drain(..) {
            let pm = &self.metrics.pipelines[r.pipeline];
            pm.record_in(r.source.ts_ms);
            if r.op == Op::Truncate {
                pm.truncates.fetch_add(1, Ordering::Relaxed);
            }
            match &self.routes[r.pipeline].enrich {
                Some(tx) => {
                    sinks = None;
                    let pipeline = r.source.pipeline.to_string();
                    tx.blocking_send((r, seq))
                        .map_err(|_| StageError::EnrichmentEnded { pipeline })?;
                }
                None => {
                    let sink = self.route(&r)?;
                    sinks.get_or_insert_with(|| lock(&self.sinks))[sink].send(&r, seq)?;
                    pm.record_out(r.source.ts_ms);
                }
            }
        }
        Ok(())
    }
}

/// Runs the stage until the source channel closes (on a blocking thread: sinks may block).
pub fn run(
    mut rx: mpsc::Receiver<Vec<SourceEvent>>,
    mut router: Router,
    mut out: Outputs,
    mut snap: Option<SnapshotLink>,
    swaps: std::sync::mpsc::Receiver<Swap>,
) -> Result<(), StageError> {
    let mut recs = Vec::new();
    let mut waiting: Option<Swap> = None;
    while let Some(batch) = rx.blocking_recv() {
        // A reload takes effect here, between two batches (every row before is routed by the
        // old pipelines, every row after by the new ones) — or, when it adds tables, where the
        // source starts reading them.
        while let Ok(sw) = swaps.try_recv() {
            match sw.at_tables_added {
                true => waiting = Some(sw),
                false => swap(sw, &mut router, &mut out),
            }
        }
        for ev in batch {
            if let SourceEvent::TablesAdded = ev {
                if let Some(sw) = waiting.take().or_else(|| swaps.try_recv().ok()) {
                    swap(sw, &mut router, &mut out);
                }
                continue;
            }
            event(ev, &mut router, &out, snap.as_mut(), &mut recs)?;
        }
        for s in lock(&out.sinks).iter_mut() {
            s.poll()?;
        }
    }
    Ok(())
}

fn swap(sw: Swap, router: &mut Router, out: &mut Outputs) {
    *router = sw.router;
    out.routes = sw.routes;
    let _ = sw.done.send(());
}

fn event(
    ev: SourceEvent,
    router: &mut Router,
    out: &Outputs,
    snap: Option<&mut SnapshotLink>,
    recs: &mut Vec<ChangeRecord>,
) -> Result<(), StageError> {
    match ev {
        SourceEvent::Row(mut row) => {
            if let Some(l) = snap {
                if row.table.db == l.signal.0 && row.table.table == l.signal.1 {
                    return signal_row(&row, router, out, l, recs);
                }
                l.windows.observe(&row);
            }
            let ts = row.ts_ms;
            out.row(router, &mut row, None, recs)?;
            out.clock.advance(ts);
        }
        SourceEvent::Progress { position, ts_ms } => {
            out.tracker.push(position, 0);
            match ts_ms {
                Some(ts) => out.clock.advance(ts),
                None => out.clock.caught_up(crate::model::clock::wall_ms()),
            }
        }
        SourceEvent::Ddl {
            db,
            query,
            resume,
            parsed,
        } => {
            log_statement(router, &db, &query, parsed.as_ref());
            out.tracker.push(resume, 0);
        }
        SourceEvent::Truncated(t) => {
            recs.clear();
            router.truncate(&t, recs);
            out.dispatch(recs, t.resume.clone())?;
        }
        SourceEvent::XaPrepared(open) => out.tracker.push_xa(XaChange::Prepared(open)),
        SourceEvent::XaEnded(xid) => out.tracker.push_xa(XaChange::Ended(xid)),
        // Taken by the stage's loop (a reload's swap point).
        SourceEvent::TablesAdded => {}
        SourceEvent::TableFailed {
            db,
            table,
            error,
            position,
        } => {
            router.table_failed(&db, &table, &error, &position);
            out.mark_stopped(router);
        }
    }
    Ok(())
}

/// A row of the signal table: a low or high watermark of a backfill chunk (at the high one
/// the chunk's rows are emitted, less those the binlog changed inside the window), or a
/// backfill request.
fn signal_row(
    row: &RowChange,
    router: &mut Router,
    out: &Outputs,
    l: &mut SnapshotLink,
    recs: &mut Vec<ChangeRecord>,
) -> Result<(), StageError> {
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
            if let Some(p) = router.pipelines.iter().find(|p| p.name == pipeline) {
                l.windows.low(nonce, p.db_table(), p.key.clone());
            }
        }
        Signal::High(nonce) => {
            if let Some((chunk, rows)) = l.windows.high(nonce, row) {
                for mut r in rows {
                    out.row(router, &mut r, Some(chunk.pipeline), recs)?;
                }
                let _ = chunk.done.send(row.resume_after());
            }
        }
        Signal::Backfill(req) => {
            let _ = l.requests.send(Ask::Request(req));
        }
        Signal::Other => {}
    }
    out.tracker.push(row.resume_after(), 0);
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
