//! Backfills interleaved with the stream by watermarks (Netflix's DBLog, Debezium's incremental
//! snapshots). For each chunk the coordinator writes a low watermark to the signal table,
//! SELECTs the next rows in key order, hands them over, and writes a high watermark. The
//! pipeline stage, reading the binlog, notes the keys of the table changed between the two
//! watermarks; at the high watermark it drops those rows from the chunk (their newer values are
//! already in the stream) and emits the rest as `op: r` records. So no row is ever emitted with
//! stale values after its newer change.
//!
//! These are the plain records the two sides exchange; the coordinator (the MySQL side) is
//! in the `snapshot` folder.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::mysql::plan::TablePlan;
use super::{BinlogPosition, Op, RowChange};
use crate::model::ColumnValue;
use crate::model::ColumnValue as Value;

/// One chunk of a backfill, read between a low and a high watermark.
pub struct Chunk {
    /// The watermarks' nonce: only watermarks of this run match it.
    pub nonce: u64,
    /// The pipeline backfilled (an index in the router's list).
    pub pipeline: usize,
    /// The table's layout (from `information_schema`), for routing.
    pub plan: Arc<TablePlan>,
    /// Full rows, in table order, as the binlog decoder would give them.
    pub rows: Vec<Vec<Value>>,
    /// Told the high watermark's resume position once the chunk's records are handed on.
    pub done: tokio::sync::oneshot::Sender<BinlogPosition>,
}

/// A backfill asked for through the signal table (`cdc-enricher backfill`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: String,
    pub pipeline: String,
    pub filter: Option<String>,
}

/// One backfill to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub pipeline: usize,
    /// The request that asked for it (none for `snapshot: initial` and re-snapshots).
    pub request: Option<String>,
    pub filter: Option<String>,
    /// Resume after this key, from a saved progress row.
    pub after: Option<Vec<ColumnValue>>,
    /// The columns of `after`, as saved (`None`: a progress row written before they were).
    pub after_key: Option<Vec<String>>,
    pub rows_done: u64,
}

/// What the coordinator is asked: a backfill request read from the binlog, or a job (a
/// pipeline with `snapshot: initial` added by a reload).
pub enum Ask {
    Request(Request),
    Job(Job),
}

/// What a signal-table row says.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A low watermark of a pipeline's chunk.
    Low(u64, String),
    High(u64),
    Backfill(Request),
    /// Progress rows and anything else: nothing to do.
    Other,
}

impl Signal {
    /// Reads a signal row (`id`, `kind`, `pipeline`, `payload`) from its after image.
    pub fn parse(plan: &TablePlan, after: &[Value]) -> Signal {
        let get = |c: &str| {
            plan.column_index(c)
                .and_then(|i| after.get(i))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let nonce = || get("payload").and_then(|p| p.parse::<u64>().ok());
        match get("kind").as_deref() {
            Some("low") => nonce()
                .map(|n| Signal::Low(n, get("pipeline").unwrap_or_default()))
                .unwrap_or(Signal::Other),
            Some("high") => nonce().map(Signal::High).unwrap_or(Signal::Other),
            Some("backfill") => Signal::Backfill(Request {
                id: get("id").unwrap_or_default(),
                pipeline: get("pipeline").unwrap_or_default(),
                filter: get("payload").filter(|f| !f.trim().is_empty()),
            }),
            _ => Signal::Other,
        }
    }
}

/// The pipeline stage's side: open windows and the chunks handed over.
#[derive(Default)]
pub struct Windows {
    /// Keys changed since the low watermark, by nonce, with the window's table and key.
    open: HashMap<u64, (Watched, HashSet<String>)>,
    /// Chunks received and not yet emitted, by nonce.
    chunks: HashMap<u64, Chunk>,
}

/// What a window watches: its table, and the pipeline's `key:` — what the backfill pages by
/// in a table without a primary key (with one, it pages by that).
struct Watched {
    table: (String, String),
    key: Option<Vec<String>>,
}

/// A row's key as a string (the values of the columns at `key`).
fn key_at(key: &[usize], img: &[Value]) -> String {
    let k: Vec<&Value> = key
        .iter()
        .map(|i| img.get(*i).unwrap_or(&Value::Null))
        .collect();
    serde_json::to_string(&k).unwrap_or_default()
}

/// A chunk row's key: its plan's primary key is what the backfill paged by.
fn key_of(plan: &TablePlan, img: &[Value]) -> String {
    key_at(&plan.primary_key, img)
}

impl Windows {
    /// A window opens on `table` of a pipeline whose `key:` is `key`.
    pub fn low(&mut self, nonce: u64, table: (String, String), key: Option<Vec<String>>) {
        self.open
            .insert(nonce, (Watched { table, key }, HashSet::new()));
    }

    /// Notes the keys a streamed row changed, for every window open on its table.
    pub fn observe(&mut self, row: &RowChange) {
        if self.open.is_empty() {
            return;
        }
        for (w, keys) in self.open.values_mut() {
            if w.table.0 != row.table.db || w.table.1 != row.table.table {
                continue;
            }
            // The key the backfill pages by: the primary key, else the pipeline's.
            let by_name: Vec<usize>;
            let key: &[usize] = match (&row.table.primary_key[..], &w.key) {
                ([], Some(names)) => {
                    by_name = names
                        .iter()
                        .filter_map(|n| row.table.column_index(n))
                        .collect();
                    &by_name
                }
                (pk, _) => pk,
            };
            for img in [&row.before, &row.after].into_iter().flatten() {
                keys.insert(key_at(key, img));
            }
        }
    }

    pub fn offer(&mut self, chunk: Chunk) {
        self.chunks.insert(chunk.nonce, chunk);
    }

    /// At the high watermark: the chunk's rows not changed inside the window, as `op: r` rows
    /// at `at` (the watermark's place), with the chunk to report back on. `None`: a watermark
    /// of another run.
    pub fn high(&mut self, nonce: u64, at: &RowChange) -> Option<(Chunk, Vec<RowChange>)> {
        let window = self.open.remove(&nonce);
        let mut chunk = self.chunks.remove(&nonce)?;
        // A chunk whose low watermark was not seen cannot be cleaned of newer changes: it is
        // dropped (its coordinator reads it again).
        let (_, changed) = window?;
        let rows = std::mem::take(&mut chunk.rows)
            .into_iter()
            .filter(|r| !changed.contains(&key_of(&chunk.plan, r)))
            .map(|r| RowChange {
                table: chunk.plan.clone(),
                op: Op::Read,
                before: None,
                after: Some(r),
                position: at.position.clone(),
                server_id: at.server_id,
                ts_ms: at.ts_ms,
                left_out: None,
                key_side: None,
                origin: None,
            })
            .collect();
        Some((chunk, rows))
    }
}

/// True when `a` is at or after `b` in stream order.
pub fn at_or_after(a: &BinlogPosition, b: &BinlogPosition) -> bool {
    a >= b
}
