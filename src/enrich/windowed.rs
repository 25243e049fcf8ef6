//! The enrichment stage of a windowed pipeline (`enrichment.window`): rows are gathered into
//! windows; each closed window makes one call (under the pipeline's limits, budget and
//! retries, like any call) and one record, `op: "w"`, delivered like any record (a window
//! that fails for good is a dead letter).
//!
//! Acknowledgements: a window's record is sent with its first row's sequence number, so the
//! checkpoint stays before that row until the record is acknowledged; its other rows are
//! acknowledged once it is handed on (the checkpoint cannot pass them before the first), and a
//! row that joins no window at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError};

use super::calls::call_with_retries;
use super::input::Prepared;
use super::window::{Closed, Gatherer, WindowSpec};
use super::{
    finish, hand_on, labels, Cache, Delivered, Job, Pending, Settings, StageEnd, WindowLink,
};
use crate::backend::Backend;
use crate::checkpoint::WindowMark;
use crate::metrics::{Metrics, PipelineMetrics};
use crate::sink::SinkError;

/// How often open windows are checked against the stream clock when no row comes.
const TICK: Duration = Duration::from_millis(200);
/// Rows taken at most between two checks of the clock.
const DRAIN_MAX: usize = 10_000;

/// Runs until `rx` closes: when the daemon stops, open windows are left unacknowledged (the
/// same rows are read again after the restart and make the same windows); when a reload
/// retires the stage, they are closed and sent as they are.
pub(super) async fn stage(
    s: Settings,
    (spec, link): (Arc<WindowSpec>, WindowLink),
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Pending>,
    tx: &mpsc::Sender<Vec<Delivered>>,
    error: &std::sync::Mutex<Option<SinkError>>,
    metrics: Arc<Metrics>,
) -> Result<(), StageEnd> {
    let pm = &metrics.pipelines[s.pipeline];
    let mut cache = Cache::new(s.cache_entries, backend.as_ref());
    let labels = labels(backend.as_ref(), &s.input);
    let mut windows = Gatherer::new(spec, link.delivered.clone());
    loop {
        let mut closed = Vec::new();
        let mut ended = false;
        match tokio::time::timeout(TICK, rx.recv()).await {
            Ok(Some(p)) => closed.extend(take(&s, &link, pm, &mut windows, p)),
            Ok(None) => ended = true,
            Err(_) => {}
        }
        if !ended {
            // The clock first: every row handed on before the events it has seen is then in
            // the channel, and taken before windows are closed by it.
            let clock = link.clock.read();
            let mut drained = false;
            for _ in 0..DRAIN_MAX {
                match rx.try_recv() {
                    Ok(p) => closed.extend(take(&s, &link, pm, &mut windows, p)),
                    Err(TryRecvError::Empty) => {
                        drained = true;
                        break;
                    }
                    Err(TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                }
            }
            if drained {
                closed.extend(windows.due(clock));
            }
        }
        if ended {
            if *link.stopping.borrow() {
                if windows.open_rows() > 0 {
                    tracing::info!(pipeline = %s.name, rows = windows.open_rows(),
                        "stopping with open windows: their rows are read again after the restart");
                }
            } else {
                closed.extend(windows.close_all());
            }
        }
        pm.window_open_rows
            .store(windows.open_rows() as u64, Ordering::Relaxed);
        if !closed.is_empty() {
            let (out, rest, marks) =
                enrich(&s, backend.as_ref(), closed, &mut cache, &labels, pm).await;
            // Before the records can be acknowledged: each window is marked delivered with it.
            for (seq, mark) in marks {
                link.acks.mark_window(seq, mark);
            }
            hand_on(tx, out, error).await?;
            pm.rows_settled(rest.len() as u64);
            for seq in rest {
                link.acks.ack(seq);
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// Takes one row: into its window (returning the windows that closed), or — a row that
/// joins no window (a delete, a truncate, no text, its columns unchanged) — acknowledged at
/// once.
fn take(
    s: &Settings,
    link: &WindowLink,
    pm: &PipelineMetrics,
    windows: &mut Gatherer,
    (rec, seq): Pending,
) -> Vec<Closed> {
    if windows.was_delivered(&rec) {
        pm.window_rows_replayed.fetch_add(1, Ordering::Relaxed);
        pm.rows_settled(1);
        link.acks.ack(seq);
        return Vec::new();
    }
    match s.input.prepare(&rec) {
        Prepared::Call { input, .. } => windows.push(&rec, seq, input.text),
        Prepared::Skip(_) | Prepared::Reject(_) => {
            pm.window_rows_skipped.fetch_add(1, Ordering::Relaxed);
            pm.rows_settled(1);
            link.acks.ack(seq);
            Vec::new()
        }
    }
}

/// One call per closed window (batched where the backend takes several inputs a call);
/// returns the window records to deliver, the sequence numbers to acknowledge once they are
/// handed on (every window's rows after its first), and each window's delivery mark with the
/// sequence number its record acknowledges.
async fn enrich(
    s: &Settings,
    backend: &dyn Backend,
    closed: Vec<Closed>,
    cache: &mut Cache,
    labels: &serde_json::Map<String, serde_json::Value>,
    pm: &PipelineMetrics,
) -> (Vec<Delivered>, Vec<u64>, Vec<(u64, WindowMark)>) {
    pm.batch_sizes.observe(closed.len() as f64);
    let mut jobs = Vec::with_capacity(closed.len());
    let mut inputs = Vec::new();
    for c in &closed {
        pm.logical_requests.fetch_add(1, Ordering::Relaxed);
        pm.windows.fetch_add(1, Ordering::Relaxed);
        pm.window_rows
            .fetch_add(c.seqs.len() as u64, Ordering::Relaxed);
        let key = cache.key(&c.input);
        jobs.push(match cache.get(key) {
            Some(fields) => {
                pm.cache_hits.fetch_add(1, Ordering::Relaxed);
                Job::Cached {
                    fields,
                    truncated: c.truncated,
                }
            }
            None => {
                inputs.push(c.input.clone());
                Job::Call {
                    truncated: c.truncated,
                    key,
                }
            }
        });
    }
    let mut results = call_with_retries(backend, &inputs, pm, s).await.into_iter();
    let mut rest = Vec::new();
    let mut marks = Vec::new();
    let mut out = Vec::with_capacity(closed.len());
    for (c, job) in closed.into_iter().zip(jobs) {
        let result = match &job {
            Job::Call { .. } => results.next(),
            _ => None,
        };
        let Some((&first, others)) = c.seqs.split_first() else {
            continue;
        };
        rest.extend_from_slice(others);
        if let Some(w) = &c.rec.window {
            marks.push((
                first,
                WindowMark {
                    pipeline: s.name.clone(),
                    group: c.group.clone(),
                    last: w.last.clone(),
                },
            ));
        }
        out.push(finish(c.rec, first, job, result, cache, labels, pm));
    }
    (out, rest, marks)
}
