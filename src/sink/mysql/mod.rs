//! The enrichment written back into the database: `update` sets output columns on the source
//! row, `upsert` writes a side table keyed by the source key.
//!
//! Exactly once: a writer task gathers records into one transaction holding the conditional
//! writes, the dead letters and this pipeline's applied position (a row of the progress
//! table). Records are acknowledged — and so checkpointed — only after the commit; after a
//! crash, records at or before the applied position are acknowledged without writing.
//!
//! No stale overwrites: each write is conditional on the source row still holding the input
//! the result was computed from (`… AND input <=> ?`); 0 matched rows means the row moved on,
//! and its newer change brings its own result.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts, Value as SqlValue};
use serde_json::Value;

use crate::model::{BinlogPosition, ColumnValue};
use crate::source::mysql::sql::quote_ident as q;
pub use crate::source::mysql::sql::{column_sql_value, qualified, Bind};
use tokio::sync::mpsc;

use super::{Sink, SinkError};
use crate::checkpoint::AckTracker;
use crate::config::pipeline::{MysqlSinkConfig, OnTooLong, PipelineConfig, WriteMode};
use crate::config::SourceConfig;
use crate::metrics::Metrics;
use crate::model::record::{AppliedPoint, ChangeRecord, Enrichment, FilterChange, Skip};
use crate::model::Op;

/// The writer's connection options: the source's host, port and TLS, its own account;
/// found rows (not changed rows) are counted, so a guard that matched is told from one that
/// did not even when the values were already there.
pub fn writer_opts(source: &SourceConfig, m: &MysqlSinkConfig) -> Opts {
    let base = crate::source::mysql::stream::opts(source);
    OptsBuilder::from_opts(base)
        .user(Some(m.user.clone()))
        .pass(m.password.clone())
        .client_found_rows(true)
        .into()
}

/// An output column: where its value is in the enrichment, and the most characters it holds.
#[derive(Debug, Clone)]
pub struct Output {
    pub column: String,
    pub pointer: String,
    pub max_chars: Option<usize>,
    /// A vector bound as little-endian float32 bytes (`vector_format: float32` or `vector`);
    /// otherwise as JSON.
    pub float32: bool,
}

/// A JSON array of numbers as little-endian IEEE 754 float32, 4 bytes a number: the binary
/// form of MariaDB's and MySQL's `VECTOR(n)` (MariaDB: "Vector Overview"; MySQL 9: "The VECTOR
/// Type"), and what a BLOB of floats holds. `None` when `v` is not an array of numbers.
pub fn float32_le(v: &Value) -> Option<Vec<u8>> {
    let a = v.as_array()?;
    let mut out = Vec::with_capacity(a.len() * 4);
    for n in a {
        out.extend_from_slice(&(n.as_f64()? as f32).to_le_bytes());
    }
    Some(out)
}

/// Everything the writer needs, resolved at start-up against the live schema.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline: String,
    pub mode: WriteMode,
    pub statement: String,
    pub outputs: Vec<Output>,
    /// Source key columns, in order, with how to bind them.
    pub key: Vec<(String, Bind)>,
    /// Input columns in the guard, with how to bind them.
    pub guard: Vec<(String, Bind)>,
    pub on_too_long: OnTooLong,
    pub dead_letter_table: String,
    pub progress_table: String,
    /// What removes derived results when their source is gone.
    pub removals: Removals,
    /// Clears the results of a row whose input now in the row went to the dead letters (they
    /// were an older input's); parameters: the key (side table), the key and the guard (source)
    /// — upsert; the key and the guard — update. `None` for windows.
    pub clear_failed: Option<String>,
    /// The applied position is kept per change-topic partition a record came from (its
    /// [`SourceInfo::origin`](crate::model::record::SourceInfo::origin)) and read under a
    /// lock in each transaction: set by the worker role (`run --role worker`), where the
    /// group's workers share the progress table and a partition moves between them.
    pub by_partition: bool,
}

/// The statements that make derived results follow their source: the side row of a deleted
/// source row (upsert), the results of a row whose input became NULL or empty, everything a
/// `TRUNCATE` left without a source row (upsert), the side row of a row that left the
/// pipeline's `filter` and every side row of a dropped source table (upsert). The first three
/// are guarded like the writes: they never remove the result of a source row that holds an
/// input again. The last two are not (the database cannot say whether the row passes the
/// filter now; a dropped table has no rows to ask): records are written in stream order, so a
/// row that comes back brings its own result after the removal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removals {
    /// Parameters: the key (side table), the key (source).
    pub deleted: Option<String>,
    /// Parameters: the key (side table), the key (source) — upsert; the key — update.
    pub input_gone: Option<String>,
    /// No parameters.
    pub truncated: Option<String>,
    /// Parameters: the key (side table).
    pub left_filter: Option<String>,
    /// No parameters: every side row (the source table was dropped; there is nothing to
    /// guard on, and a table created again under its name brings its rows' results after).
    pub dropped: Option<String>,
}

/// Which removal a record asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Removal {
    Deleted,
    InputGone,
    Truncated,
    LeftFilter,
    Dropped,
}

/// `a <=> ? AND b <=> ?` over `cols` (NULL-safe equality, one parameter each).
fn eq_all<'a>(cols: impl Iterator<Item = &'a String>) -> String {
    cols.map(|c| format!("{} <=> ?", q(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `o1 = NULL, o2 = NULL` over the outputs.
fn set_null(outputs: &[Output]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} = NULL", q(&o.column)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `o1 IS NOT NULL OR o2 IS NOT NULL`: the row holds a result (only such rows are touched: no
/// write, no binlog event, for the others).
fn any_filled(outputs: &[Output]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} IS NOT NULL", q(&o.column)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Builds the [`Removals`] of a plan (`inputs`: the columns whose emptiness means "no text").
pub fn removals(
    mode: WriteMode,
    source_table: &str,
    side: Option<(&str, &[String])>,
    outputs: &[Output],
    key: &[(String, Bind)],
    inputs: &[String],
    on_input_gone: crate::config::pipeline::OnInputGone,
) -> Removals {
    let src_key = eq_all(key.iter().map(|(c, _)| c));
    let gone = if inputs.is_empty() {
        None
    } else {
        Some(
            inputs
                .iter()
                .map(|c| format!("({0} IS NULL OR TRIM({0}) = '')", q(c)))
                .collect::<Vec<_>>()
                .join(" AND "),
        )
    };
    let (nulls, filled) = (set_null(outputs), any_filled(outputs));
    let src = qualified(source_table);
    match (mode, side) {
        (WriteMode::Upsert, Some((table, side_key))) => {
            let side_q = qualified(table);
            let side_eq = eq_all(side_key.iter());
            let correlated = key
                .iter()
                .zip(side_key)
                .map(|((k, _), sk)| format!("t.{} <=> {side_q}.{}", q(k), q(sk)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let gone_stmt = gone.map(|g| {
                let cond = format!(
                    "{side_eq} AND NOT EXISTS (SELECT 1 FROM {src} WHERE {src_key} AND NOT ({g}))"
                );
                match on_input_gone {
                    crate::config::pipeline::OnInputGone::Delete => {
                        format!("DELETE FROM {side_q} WHERE {cond}")
                    }
                    crate::config::pipeline::OnInputGone::Null => {
                        format!("UPDATE {side_q} SET {nulls} WHERE {cond} AND ({filled})")
                    }
                }
            });
            Removals {
                left_filter: Some(format!("DELETE FROM {side_q} WHERE {side_eq}")),
                dropped: Some(format!("DELETE FROM {side_q}")),
                deleted: Some(format!(
                    "DELETE FROM {side_q} WHERE {side_eq} AND NOT EXISTS (SELECT 1 FROM {src} WHERE {src_key})"
                )),
                input_gone: gone_stmt,
                truncated: Some(format!(
                    "DELETE FROM {side_q} WHERE NOT EXISTS (SELECT 1 FROM {src} AS t WHERE {correlated})"
                )),
            }
        }
        _ => Removals {
            deleted: None,
            input_gone: gone.map(|g| {
                format!("UPDATE {src} SET {nulls} WHERE {src_key} AND {g} AND ({filled})")
            }),
            truncated: None,
            left_filter: None,
            dropped: None,
        },
    }
}

/// The position a record came from, comparable in stream order.
type Pos = BinlogPosition;

fn pos_of(rec: &ChangeRecord) -> Pos {
    rec.position()
}

struct Item {
    rec: ChangeRecord,
    seq: u64,
    dead: bool,
}

pub struct MysqlSink {
    pipeline: String,
    tx: mpsc::UnboundedSender<Item>,
    /// Records handed over and not yet committed.
    pending: Arc<AtomicUsize>,
    /// Set when the writer stopped for good.
    failed: Arc<Mutex<Option<String>>>,
    cap: usize,
    /// The applied point read at start.
    applied: Option<AppliedPoint>,
}

impl MysqlSink {
    /// Connects, creates the dead-letter and progress tables where missing, reads the applied
    /// position, and starts the writer task.
    pub async fn start(
        source: &SourceConfig,
        p: &PipelineConfig,
        m: &MysqlSinkConfig,
        plan: Plan,
        tracker: AckTracker,
        metrics: Arc<Metrics>,
        index: usize,
    ) -> Result<MysqlSink, SinkError> {
        let opts = writer_opts(source, m);
        let err = |e: mysql_async::Error| SinkError::Mysql {
            pipeline: p.name.clone(),
            message: e.to_string(),
        };
        let mut conn = Conn::new(opts.clone()).await.map_err(err)?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (id BIGINT AUTO_INCREMENT PRIMARY KEY, pipeline VARCHAR(191) NOT NULL, \
             record_key TEXT NOT NULL, position VARCHAR(300) NOT NULL, error TEXT NOT NULL, record LONGTEXT NOT NULL, \
             created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
            qualified(&plan.dead_letter_table)
        ))
        .await
        .map_err(err)?;
        let applied = applied_position(&mut conn, &plan).await.map_err(err)?;
        // A worker reads each partition's applied position in its transactions: the
        // binlog's (left by a `--role all` process) is not where these records stand.
        let applied = applied.filter(|_| !plan.by_partition);
        let resumed = applied.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(None));
        let w = Writer {
            plan,
            opts,
            conn: Some(conn),
            applied,
            known: HashSet::new(),
            batch_size: m.batch_size,
            max_wait: Duration::from_millis(m.max_wait_ms),
            tracker,
            index: Some(index),
            metrics,
            pending: pending.clone(),
        };
        let f = failed.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            if let Err(e) = w.run(&mut rx).await {
                tracing::error!(error = %e, "write-back stopped");
                *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            // Closed only now: a sender that finds it closed finds the reason set too.
            drop(rx);
        });
        Ok(MysqlSink {
            pipeline: p.name.clone(),
            tx,
            pending,
            failed,
            cap: (m.batch_size * 20).max(1000),
            applied: resumed,
        })
    }

    /// The position this pipeline's write-back had applied when it started: records at or
    /// before it were written before a restart, and need no enrichment call again.
    pub fn applied(&self) -> Option<AppliedPoint> {
        self.applied.clone()
    }

    fn hand_over(&mut self, rec: &ChangeRecord, seq: u64, dead: bool) -> Result<(), SinkError> {
        self.poll()?;
        // Back-pressure: the writer holds at most `cap` records (callers are on blocking
        // threads, so waiting here holds the enrichment stage, not the runtime).
        while self.pending.load(Ordering::Relaxed) >= self.cap {
            self.poll()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Item {
                rec: rec.clone(),
                seq,
                dead,
            })
            .map_err(|_| SinkError::Mysql {
                pipeline: rec.source.pipeline.to_string(),
                message: "the writer task ended".into(),
            })
    }
}

impl Sink for MysqlSink {
    fn send(&mut self, rec: &ChangeRecord, seq: u64) -> Result<u32, SinkError> {
        self.hand_over(rec, seq, false)?;
        Ok(1)
    }

    fn send_dead_letter(&mut self, rec: &ChangeRecord, seq: u64) -> Result<bool, SinkError> {
        self.hand_over(rec, seq, true)?;
        Ok(true)
    }

    fn acks_for(&self, _rec: &ChangeRecord) -> u32 {
        1
    }

    fn poll(&mut self) -> Result<(), SinkError> {
        match self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(e) => Err(SinkError::Mysql {
                pipeline: self.pipeline.clone(),
                message: e.clone(),
            }),
            None => Ok(()),
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        let start = std::time::Instant::now();
        while self.pending.load(Ordering::Relaxed) > 0 {
            self.poll()?;
            if start.elapsed() > timeout {
                return Err(SinkError::FlushTimeout {
                    pending: self.pending.load(Ordering::Relaxed),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// MySQL / MariaDB errors that say the value itself is refused (too long, out of range, a
/// CHECK or foreign key, NULL, a bad value): that row is a dead letter, the batch goes on.
fn value_refused(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(s.code,
        1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1406 | 1451 | 1452 | 1690 | 3140 | 3819 | 4025))
}

/// Creates the progress table where missing (adding the `event_index` column to one made by a
/// version before positions counted rows events) and reads the pipeline's applied position.
async fn applied_position(
    conn: &mut Conn,
    plan: &Plan,
) -> Result<Option<AppliedPoint>, mysql_async::Error> {
    let table = qualified(&plan.progress_table);
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {table} (pipeline VARCHAR(191) NOT NULL PRIMARY KEY, \
         file VARCHAR(255) NOT NULL, pos BIGINT UNSIGNED NOT NULL, event_index BIGINT UNSIGNED NULL, \
         row_index BIGINT UNSIGNED NOT NULL, part TINYINT UNSIGNED NOT NULL DEFAULT 2, \
         updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))"
    ))
    .await?;
    let (db, name) = crate::config::pipeline::split_table(&plan.progress_table).unwrap_or_default();
    for (column, definition) in [
        // A table made by a version before positions counted rows events.
        ("event_index", "BIGINT UNSIGNED NULL AFTER pos"),
        // A table made by a version before parts were kept: its position counts as whole.
        (
            "part",
            "TINYINT UNSIGNED NOT NULL DEFAULT 2 AFTER row_index",
        ),
    ] {
        let has: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 AND COLUMN_NAME = ?",
                (&db, &name, column),
            )
            .await?;
        if has.is_none() {
            conn.query_drop(format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))
            .await?;
        }
    }
    let applied = read_point(conn, &table, &plan.pipeline, false).await?;
    if let Some(applied) = &applied {
        tracing::info!(pipeline = %plan.pipeline, position = %applied,
            "write-back resumes after its applied position");
    }
    Ok(applied)
}

/// The progress row `key` of `table` (already quoted) as an applied point: `None` for no
/// row, or for a partition's row that nothing was applied under yet (an empty `file`).
/// `lock`: read under a row lock (`FOR UPDATE`, in a transaction).
async fn read_point(
    q: &mut impl Queryable,
    table: &str,
    key: &str,
    lock: bool,
) -> Result<Option<AppliedPoint>, mysql_async::Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row: Option<(String, u64, Option<u64>, u64, u8)> = q
        .exec_first(
            format!(
                "SELECT file, pos, event_index, row_index, part FROM {table} WHERE pipeline = ?{lock}"
            ),
            (key,),
        )
        .await?;
    let Some((file, pos, event, row, part)) = row.filter(|r| !r.0.is_empty()) else {
        return Ok(None);
    };
    let position = match event {
        Some(event) => BinlogPosition {
            event,
            row,
            ..BinlogPosition::new(file, pos)
        },
        None => {
            // Written by a version whose row index counted every table's rows: the safe
            // conversion is the transaction's start (its writes are replayed, guarded).
            tracing::warn!(progress = %key, file = %file, pos, row,
                "the applied position was written by an older version (rows counted across \
                 tables); the write-back replays from the start of that transaction");
            BinlogPosition::new(file, pos)
        }
    };
    Ok(Some(AppliedPoint { position, part }))
}

/// The progress table's key for a pipeline's records from `origin` (a change-topic
/// partition, `topic[partition]`): `pipeline@origin`, or `@` and the short hash of both where
/// that passes the key column's 191 characters. `None`: the pipeline's own row (the binlog).
pub fn progress_key(pipeline: &str, origin: Option<&str>) -> String {
    let Some(o) = origin else {
        return pipeline.to_string();
    };
    let key = format!("{pipeline}@{o}");
    match key.chars().count() <= 191 {
        true => key,
        false => format!("@{}", crate::model::hash::short_hash(&[pipeline, o])),
    }
}

/// A value of the enrichment (JSON) as a statement parameter.
pub fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::NULL,
        Value::Bool(b) => SqlValue::Int(*b as i64),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                SqlValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                SqlValue::UInt(u)
            } else {
                SqlValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => SqlValue::Bytes(s.clone().into_bytes()),
        other => SqlValue::Bytes(other.to_string().into_bytes()),
    }
}

/// What becomes of one record in the transaction.
enum Action {
    /// Nothing to write (a skip: input unchanged, or nothing derived to remove).
    Nothing,
    /// Written with these parameters.
    Write(Vec<SqlValue>),
    /// A derived result removed (or cleared), with these parameters.
    Remove(Removal, Vec<SqlValue>),
    /// Recorded in the dead-letter table with this reason.
    Dead(String),
    /// As `Dead`, the row's results cleared first (they were an older input's), with these
    /// parameters.
    DeadClearing(String, Vec<SqlValue>),
}

struct Writer {
    plan: Plan,
    opts: Opts,
    conn: Option<Conn>,
    /// What the write-back had applied of the binlog (records with no origin).
    applied: Option<AppliedPoint>,
    /// Change-topic partitions whose progress row this writer knows exists.
    known: HashSet<Arc<str>>,
    batch_size: usize,
    max_wait: Duration,
    tracker: AckTracker,
    metrics: Arc<Metrics>,
    index: Option<usize>,
    pending: Arc<AtomicUsize>,
}

/// The fix for a server error that no retry cures (a grant revoked, the side table or a
/// column dropped, the account gone); `None` for what a retry may cure (a lost connection, a
/// deadlock, a lock wait, a server restarting). Codes: <https://mariadb.com/kb/en/mariadb-error-code-reference/>.
fn no_retry_cures(e: &mysql_async::Error) -> Option<&'static str> {
    let mysql_async::Error::Server(se) = e else {
        return None;
    };
    Some(match se.code {
        // ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR,
        // ER_SPECIFIC_ACCESS_DENIED_ERROR
        1044 | 1142 | 1143 | 1227 => {
            "grant the write-back account what `cdc-enricher check` lists (SELECT, INSERT, UPDATE, \
             DELETE on the side table; INSERT, UPDATE on the dead-letter and progress tables)"
        }
        // ER_ACCESS_DENIED_ERROR: the account or its password
        1045 => "check the sink's user and password (the account may have been dropped or its password changed)",
        // ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE
        1049 | 1146 => "create the table again (or point the pipeline's sink at the right one)",
        // ER_BAD_FIELD_ERROR
        1054 => "add the column back (or remove it from the pipeline's sink columns)",
        _ => return None,
    })
}

impl Writer {
    async fn run(mut self, rx: &mut mpsc::UnboundedReceiver<Item>) -> Result<(), String> {
        let mut batch: Vec<Item> = Vec::new();
        loop {
            match rx.recv().await {
                Some(i) => batch.push(i),
                None => return Ok(()),
            }
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(i)) => batch.push(i),
                    _ => break,
                }
            }
            let mut round = 0u32;
            loop {
                round += 1;
                match self.write(&batch).await {
                    Ok(()) => break,
                    Err(e) if no_retry_cures(&e).is_some() => {
                        let fix = no_retry_cures(&e).unwrap_or_default();
                        tracing::error!(pipeline = %self.plan.pipeline, error = %e, fix,
                            "the write-back cannot go on: no retry cures this; the checkpoint stays before \
                             the rows not written");
                        return Err(format!(
                            "the database refused the write-back: {e}; {fix}, then restart (the rows not \
                             written are read again from the checkpoint)"
                        ));
                    }
                    Err(e) => {
                        self.conn = None;
                        if let Some(pm) = self.index.and_then(|i| self.metrics.pipelines.get(i)) {
                            pm.writeback_retries.fetch_add(1, Ordering::Relaxed);
                        }
                        let d = crate::ratelimit::backoff(round.min(8));
                        tracing::warn!(pipeline = %self.plan.pipeline, error = %e, round,
                            backoff_ms = d.as_millis() as u64,
                            "write-back transaction failed; rolled back, retrying the batch");
                        tokio::time::sleep(d).await;
                    }
                }
            }
            for i in batch.drain(..) {
                self.tracker.ack(i.seq);
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The source row is gone (a delete, a truncate) or its input is: the derived result goes
    /// too. `None`: the record is a result to write.
    fn removal(&self, rec: &ChangeRecord) -> Option<Action> {
        let key: Vec<SqlValue> = self
            .plan
            .key
            .iter()
            .map(|(c, b)| column_sql_value(rec.key.get(c).unwrap_or(&ColumnValue::Null), *b))
            .collect();
        let twice = || key.iter().chain(&key).cloned().collect::<Vec<_>>();
        let r = &self.plan.removals;
        let left = rec.filter_change == Some(FilterChange::Left);
        let skipped = match &rec.enrichment {
            Enrichment::Skipped { reason, .. } => Some(*reason),
            _ => None,
        };
        Some(match rec.op {
            // A window is written, never removed.
            Op::Window => return None,
            Op::Truncate if rec.truncate.as_ref().is_some_and(|t| t.dropped) => match r.dropped {
                Some(_) => Action::Remove(Removal::Dropped, Vec::new()),
                None => Action::Nothing,
            },
            Op::Truncate if r.truncated.is_some() => Action::Remove(Removal::Truncated, Vec::new()),
            Op::Truncate => Action::Nothing,
            Op::Delete if left && r.left_filter.is_some() => {
                Action::Remove(Removal::LeftFilter, key.clone())
            }
            Op::Delete if left => Action::Nothing,
            Op::Delete if r.deleted.is_some() => Action::Remove(Removal::Deleted, twice()),
            Op::Delete => Action::Nothing,
            _ => match skipped {
                Some(Skip::NoText) if r.input_gone.is_some() => {
                    let params = match self.plan.mode {
                        WriteMode::Upsert => twice(),
                        WriteMode::Update => key,
                    };
                    Action::Remove(Removal::InputGone, params)
                }
                Some(_) => Action::Nothing,
                None if rec.after.is_none() => Action::Nothing,
                None => return None,
            },
        })
    }

    /// What one record asks for.
    fn action(&self, it: &Item) -> Action {
        let rec = &it.rec;
        if it.dead {
            let why = match &rec.enrichment {
                Enrichment::Failed { error, .. } => {
                    format!(
                        "{}: {} (attempts: {})",
                        error.kind, error.message, error.attempts
                    )
                }
                _ => ": (attempts: )".to_string(),
            };
            return self.dead(rec, why);
        }
        if let Some(a) = self.removal(rec) {
            return a;
        }
        let enrichment = Value::Object(rec.enrichment.to_fields());
        // A window's own fields, for pointers under `/window/`.
        let window = rec
            .window
            .as_ref()
            .and_then(|w| serde_json::to_value(w).ok())
            .map(|w| serde_json::json!({ "window": w }));
        let mut outs = Vec::with_capacity(self.plan.outputs.len());
        for o in &self.plan.outputs {
            let found = match &window {
                Some(w) if o.pointer.starts_with("/window/") => w.pointer(&o.pointer),
                _ => enrichment.pointer(&o.pointer),
            };
            let Some(v) = found else {
                return Action::Dead(format!(
                    "the enrichment has no value at {} for column `{}`",
                    o.pointer, o.column
                ));
            };
            if o.float32 {
                let Some(bytes) = float32_le(v) else {
                    return Action::Dead(format!(
                        "the enrichment at {} is not an array of numbers for the float32 column `{}`",
                        o.pointer, o.column
                    ));
                };
                outs.push(SqlValue::Bytes(bytes));
                continue;
            }
            let v = match (v, o.max_chars) {
                (Value::String(s), Some(max)) if s.chars().count() > max => {
                    if self.plan.on_too_long == OnTooLong::DeadLetter {
                        return self.dead(rec, format!(
                            "{} characters do not fit `{}` ({max} at most; on_too_long: dead_letter)",
                            s.chars().count(),
                            o.column
                        ));
                    }
                    Value::String(s.chars().take(max).collect())
                }
                (v, _) => v.clone(),
            };
            outs.push(sql_value(&v));
        }
        if let Some(w) = &rec.window {
            // INSERT INTO side (id, outputs…) VALUES (?, ?…)
            let id = SqlValue::Bytes(w.id.clone().into_bytes());
            return Action::Write(std::iter::once(id).chain(outs).collect());
        }
        let (key, guard) = self.key_and_guard(rec);
        let params = match self.plan.mode {
            // UPDATE t SET outputs… WHERE key… AND guard…
            WriteMode::Update => outs.into_iter().chain(key).chain(guard).collect(),
            // INSERT INTO side (key…, outputs…) SELECT ?… FROM t WHERE key… AND guard…
            WriteMode::Upsert => key
                .clone()
                .into_iter()
                .chain(outs)
                .chain(key)
                .chain(guard)
                .collect(),
        };
        Action::Write(params)
    }

    /// The record's key values (the plan's key columns) and its input values after the change
    /// (the guard's columns), bound as the statements take them.
    fn key_and_guard(&self, rec: &ChangeRecord) -> (Vec<SqlValue>, Vec<SqlValue>) {
        let after = rec.after.as_ref();
        let get = |c: &str| after.and_then(|a| a.get(c)).unwrap_or(&ColumnValue::Null);
        let key = self
            .plan
            .key
            .iter()
            .map(|(c, b)| column_sql_value(rec.key.get(c).unwrap_or(&ColumnValue::Null), *b));
        let guard = self
            .plan
            .guard
            .iter()
            .map(|(c, b)| column_sql_value(get(c), *b));
        (key.collect(), guard.collect())
    }

    /// A dead letter; a row's results computed from an older input are cleared with it.
    fn dead(&self, rec: &ChangeRecord, why: String) -> Action {
        if rec.window.is_some() || rec.after.is_none() || self.plan.clear_failed.is_none() {
            return Action::Dead(why);
        }
        let (key, guard) = self.key_and_guard(rec);
        let params = match self.plan.mode {
            WriteMode::Update => key.into_iter().chain(guard).collect(),
            WriteMode::Upsert => key.clone().into_iter().chain(key).chain(guard).collect(),
        };
        Action::DeadClearing(why, params)
    }

    async fn write(&mut self, batch: &[Item]) -> Result<(), mysql_async::Error> {
        let actions: Vec<Action> = batch.iter().map(|it| self.action(it)).collect();
        // A batch with nothing to write (skips: deletes, no text, the daemon's own updates
        // echoed back by the binlog) needs no transaction: replaying it after a crash writes
        // nothing either. Not recording its position keeps the database quiet. (A record from
        // a change topic is taken for fresh: its partition's point is read in the transaction.)
        let fresh = |it: &Item| {
            it.rec.source.origin.is_some()
                || self
                    .applied
                    .as_ref()
                    .is_none_or(|a| it.rec.after_applied(a))
        };
        if !batch
            .iter()
            .zip(&actions)
            .any(|(it, a)| fresh(it) && !matches!(a, Action::Nothing))
        {
            let replayed = batch.iter().filter(|it| !fresh(it)).count() as u64;
            if let Some(pm) = self.index.and_then(|i| self.metrics.pipelines.get(i)) {
                pm.writeback_replayed.fetch_add(replayed, Ordering::Relaxed);
            }
            return Ok(());
        }
        // Taken for the transaction; put back only once it committed (a failed one reconnects).
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => Conn::new(self.opts.clone()).await?,
        };
        self.create_progress_rows(&mut conn, batch).await?;
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let mut points = self.locked_points(&mut tx, batch).await?;
        let mut tally = Tally::default();
        let mut last: BTreeMap<Option<Arc<str>>, AppliedPoint> = BTreeMap::new();
        for (it, action) in batch.iter().zip(actions) {
            let origin = &it.rec.source.origin;
            let applied = points.get(origin).and_then(Option::as_ref);
            if applied.is_some_and(|a| !it.rec.after_applied(a)) {
                tally.replayed += 1;
                continue;
            }
            if let Some(why) = self.apply(&mut tx, it, action, &mut tally).await? {
                tally.dead += 1;
                self.dead_letter(&mut tx, it, &pos_of(&it.rec), why).await?;
            }
            // A partition may repeat records (a source that took over re-sends what its
            // predecessor had sent): the point moves with each record.
            points.insert(origin.clone(), Some(it.rec.applied_point()));
            last.insert(origin.clone(), it.rec.applied_point());
        }
        for (origin, point) in &last {
            self.save_point(&mut tx, origin.as_deref(), point).await?;
        }
        tx.commit().await?;
        self.conn = Some(conn);
        if let Some(p) = last.remove(&None) {
            self.applied = Some(p);
        }
        self.count(&tally);
        Ok(())
    }

    /// Adds the progress row of each change-topic partition of `batch` this writer has not
    /// seen before (empty: nothing applied under it yet), outside any transaction: the
    /// transaction then locks an existing row, so two workers that both hold a partition for
    /// a moment during a rebalance take turns instead of both writing.
    async fn create_progress_rows(
        &mut self,
        conn: &mut Conn,
        batch: &[Item],
    ) -> Result<(), mysql_async::Error> {
        let new: BTreeSet<Arc<str>> = batch
            .iter()
            .filter_map(|it| it.rec.source.origin.clone())
            .filter(|o| !self.known.contains(o))
            .collect();
        for origin in new {
            conn.exec_drop(
                format!(
                    "INSERT IGNORE INTO {} (pipeline, file, pos, event_index, row_index, part) \
                     VALUES (?, '', 0, 0, 0, 0)",
                    qualified(&self.plan.progress_table)
                ),
                (progress_key(&self.plan.pipeline, Some(&origin)),),
            )
            .await?;
            self.known.insert(origin);
        }
        Ok(())
    }

    /// The applied point of each origin of `batch`: the binlog's as this writer last
    /// committed it, each change-topic partition's read from its progress row under a lock
    /// (in key order: two writers never wait for each other in a circle).
    async fn locked_points(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        batch: &[Item],
    ) -> Result<BTreeMap<Option<Arc<str>>, Option<AppliedPoint>>, mysql_async::Error> {
        let mut points = BTreeMap::new();
        points.insert(None, self.applied.clone());
        let origins: BTreeSet<&Arc<str>> = batch
            .iter()
            .filter_map(|it| it.rec.source.origin.as_ref())
            .collect();
        let table = qualified(&self.plan.progress_table);
        for origin in origins {
            let key = progress_key(&self.plan.pipeline, Some(origin));
            let point = read_point(&mut *tx, &table, &key, true).await?;
            points.insert(Some(origin.clone()), point);
        }
        Ok(points)
    }

    /// Records in `tx` that the write-back applied everything of `origin` up to `point`.
    async fn save_point(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        origin: Option<&str>,
        point: &AppliedPoint,
    ) -> Result<(), mysql_async::Error> {
        let p = &point.position;
        tx.exec_drop(
            format!(
                "INSERT INTO {} (pipeline, file, pos, event_index, row_index, part) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE file = VALUES(file), pos = VALUES(pos), \
                 event_index = VALUES(event_index), row_index = VALUES(row_index), \
                 part = VALUES(part)",
                qualified(&self.plan.progress_table)
            ),
            (
                progress_key(&self.plan.pipeline, origin),
                &*p.file,
                p.pos,
                p.event,
                p.row,
                point.part,
            ),
        )
        .await
    }

    /// Adds a committed transaction's tally to the pipeline's metrics.
    fn count(&self, tally: &Tally) {
        if let Some(pm) = self.index.and_then(|i| self.metrics.pipelines.get(i)) {
            pm.writeback_written
                .fetch_add(tally.written, Ordering::Relaxed);
            pm.writeback_stale.fetch_add(tally.stale, Ordering::Relaxed);
            pm.writeback_dead_letters
                .fetch_add(tally.dead, Ordering::Relaxed);
            pm.writeback_replayed
                .fetch_add(tally.replayed, Ordering::Relaxed);
            pm.writeback_removed
                .fetch_add(tally.removed, Ordering::Relaxed);
        }
    }

    /// Runs one record's action in `tx`; `Some(why)`: it is a dead letter.
    async fn apply(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        it: &Item,
        action: Action,
        tally: &mut Tally,
    ) -> Result<Option<String>, mysql_async::Error> {
        Ok(match action {
            Action::Nothing => None,
            Action::Dead(why) => Some(why),
            Action::DeadClearing(why, params) => {
                if let Some(sql) = &self.plan.clear_failed {
                    let r = tx.exec_iter(sql.as_str(), params).await?;
                    tally.removed += r.affected_rows();
                    r.drop_result().await?;
                }
                Some(why)
            }
            Action::Remove(kind, params) => {
                let sql = match kind {
                    Removal::Deleted => &self.plan.removals.deleted,
                    Removal::InputGone => &self.plan.removals.input_gone,
                    Removal::Truncated => &self.plan.removals.truncated,
                    Removal::LeftFilter => &self.plan.removals.left_filter,
                    Removal::Dropped => &self.plan.removals.dropped,
                };
                if let Some(sql) = sql {
                    let r = tx.exec_iter(sql.as_str(), params).await?;
                    tally.removed += r.affected_rows();
                    r.drop_result().await?;
                }
                None
            }
            Action::Write(params) => match tx.exec_iter(self.plan.statement.as_str(), params).await
            {
                Ok(r) => {
                    let n = r.affected_rows();
                    r.drop_result().await?;
                    if n == 0 {
                        tally.stale += 1;
                        tracing::debug!(pipeline = %self.plan.pipeline,
                            key = %serde_json::to_string(&it.rec.key).unwrap_or_default(),
                            "stale result: the row's input changed since; not written");
                    } else {
                        tally.written += 1;
                    }
                    None
                }
                Err(e) if value_refused(&e) => Some(format!("the database refused the value: {e}")),
                Err(e) => return Err(e),
            },
        })
    }

    /// A row of the dead-letter table, in the same transaction.
    async fn dead_letter(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        it: &Item,
        pos: &Pos,
        why: String,
    ) -> Result<(), mysql_async::Error> {
        tracing::warn!(pipeline = %self.plan.pipeline, error = %why,
            key = %serde_json::to_string(&it.rec.key).unwrap_or_default(),
            "write-back dead letter");
        tx.exec_drop(
            format!(
                "INSERT INTO {} (pipeline, record_key, position, error, record) VALUES (?, ?, ?, ?, ?)",
                qualified(&self.plan.dead_letter_table)
            ),
            (
                self.plan.pipeline.as_str(),
                serde_json::to_string(&it.rec.key).unwrap_or_default(),
                pos.to_string(),
                why,
                serde_json::to_string(&it.rec).unwrap_or_default(),
            ),
        )
        .await
    }
}

/// What one write-back transaction did, for the metrics.
#[derive(Default)]
struct Tally {
    written: u64,
    stale: u64,
    dead: u64,
    replayed: u64,
    removed: u64,
}

/// A windowed pipeline's statement: `INSERT INTO side (id, outputs…) VALUES (?, ?…) ON
/// DUPLICATE KEY UPDATE outputs…` — parameters the window's id, then the outputs.
pub fn window_statement(side: &str, id_column: &str, outputs: &[Output]) -> String {
    let cols: Vec<String> = std::iter::once(q(id_column))
        .chain(outputs.iter().map(|o| q(&o.column)))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON DUPLICATE KEY UPDATE {}",
        qualified(side),
        cols.join(", "),
        vec!["?"; cols.len()].join(", "),
        update_outputs(outputs)
    )
}

/// `ON DUPLICATE KEY UPDATE`'s list: every output column from the row that was not inserted.
fn update_outputs(outputs: &[Output]) -> String {
    outputs
        .iter()
        .map(|o| format!("{0} = VALUES({0})", q(&o.column)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement clearing the results of a row whose current input failed for good (see
/// [`Plan::clear_failed`]): only where the row still holds that input and a result (no write,
/// no binlog event, for the others).
pub fn clear_failed(
    mode: WriteMode,
    source_table: &str,
    side: Option<(&str, &[String])>,
    outputs: &[Output],
    key: &[(String, Bind)],
    guard: &[(String, Bind)],
) -> String {
    let cond = eq_all(key.iter().chain(guard).map(|(c, _)| c));
    let (nulls, filled) = (set_null(outputs), any_filled(outputs));
    match (mode, side) {
        (WriteMode::Upsert, Some((table, side_key))) => format!(
            "UPDATE {} SET {nulls} WHERE {} AND ({filled}) AND EXISTS (SELECT 1 FROM {} WHERE {cond})",
            qualified(table),
            eq_all(side_key.iter()),
            qualified(source_table),
        ),
        _ => format!(
            "UPDATE {} SET {nulls} WHERE {cond} AND ({filled})",
            qualified(source_table),
        ),
    }
}

/// The statement for a plan: parameters are outputs, key, guard (update) or key, outputs,
/// key, guard (upsert).
pub fn statement(
    mode: WriteMode,
    source_table: &str,
    side: Option<(&str, &[String])>,
    outputs: &[Output],
    key: &[(String, Bind)],
    guard: &[(String, Bind)],
) -> String {
    let cond = eq_all(key.iter().chain(guard).map(|(c, _)| c));
    match (mode, side) {
        (WriteMode::Upsert, Some((table, side_key))) => {
            let cols: Vec<String> = side_key
                .iter()
                .map(|c| q(c))
                .chain(outputs.iter().map(|o| q(&o.column)))
                .collect();
            let marks = vec!["?"; cols.len()].join(", ");
            format!(
                "INSERT INTO {} ({}) SELECT {marks} FROM {} WHERE {} LIMIT 1 ON DUPLICATE KEY UPDATE {}",
                qualified(table),
                cols.join(", "),
                qualified(source_table),
                cond,
                update_outputs(outputs)
            )
        }
        _ => {
            let set: Vec<String> = outputs
                .iter()
                .map(|o| format!("{} = ?", q(&o.column)))
                .collect();
            format!(
                "UPDATE {} SET {} WHERE {}",
                qualified(source_table),
                set.join(", "),
                cond
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_key_fits_the_key_column_and_keeps_partitions_apart() {
        assert_eq!(progress_key("p", None), "p");
        assert_eq!(
            progress_key("p", Some("cdc-changes.s.t[2]")),
            "p@cdc-changes.s.t[2]"
        );
        let long = "x".repeat(200);
        let (a, b) = (
            progress_key(&long, Some("t[0]")),
            progress_key(&long, Some("t[1]")),
        );
        assert!(a.chars().count() <= 191 && b.chars().count() <= 191, "{a}");
        assert_ne!(a, b);
        assert_ne!(
            progress_key(&long, Some("t[0]")),
            progress_key("y", Some(&long))
        );
    }

    #[test]
    fn statements_quote_identifiers_and_guard_on_the_input() {
        let outs = vec![
            Output {
                column: "sentiment".into(),
                pointer: "/sentiment".into(),
                max_chars: Some(20),
                float32: false,
            },
            Output {
                column: "conf`idence".into(),
                pointer: "/confidence".into(),
                max_chars: None,
                float32: false,
            },
        ];
        let key = vec![("id".to_string(), Bind::Plain)];
        let guard = vec![("message".to_string(), Bind::Plain)];
        assert_eq!(
            statement(WriteMode::Update, "shop.support", None, &outs, &key, &guard),
            "UPDATE `shop`.`support` SET `sentiment` = ?, `conf``idence` = ? WHERE `id` <=> ? AND `message` <=> ?"
        );
        let side_key = vec!["article_id".to_string()];
        assert_eq!(
            statement(
                WriteMode::Upsert,
                "shop.articles",
                Some(("shop.summaries", &side_key)),
                &outs[..1],
                &key,
                &guard
            ),
            "INSERT INTO `shop`.`summaries` (`article_id`, `sentiment`) SELECT ?, ? FROM `shop`.`articles` \
             WHERE `id` <=> ? AND `message` <=> ? LIMIT 1 ON DUPLICATE KEY UPDATE `sentiment` = VALUES(`sentiment`)"
        );
    }

    /// A `VECTOR(n)` column (MariaDB 11.7+, MySQL 9) takes the same statement as any output,
    /// with the vector bound as little-endian float32 bytes (the servers' binary form).
    #[test]
    fn vectors_bind_as_little_endian_float32() {
        let outs = vec![Output {
            column: "embedding".into(),
            pointer: "/embedding".into(),
            max_chars: None,
            float32: true,
        }];
        let key = vec![("id".to_string(), Bind::Plain)];
        assert_eq!(
            statement(WriteMode::Update, "shop.products", None, &outs, &key, &[]),
            "UPDATE `shop`.`products` SET `embedding` = ? WHERE `id` <=> ?"
        );
        let v = serde_json::json!([1.0, -0.5, 0.1]);
        let mut want = Vec::new();
        for f in [1.0f32, -0.5, 0.1] {
            want.extend_from_slice(&f.to_le_bytes());
        }
        assert_eq!(float32_le(&v), Some(want));
        assert_eq!(
            float32_le(&v).map(|b| b[..4].to_vec()),
            Some(vec![0x00, 0x00, 0x80, 0x3f])
        );
        assert_eq!(float32_le(&serde_json::json!([1, "x"])), None);
        assert_eq!(float32_le(&serde_json::json!("[1]")), None);
    }

    #[test]
    fn values_bind_by_type() {
        assert_eq!(sql_value(&Value::Null), SqlValue::NULL);
        assert_eq!(sql_value(&serde_json::json!(3)), SqlValue::Int(3));
        assert_eq!(sql_value(&serde_json::json!(0.5)), SqlValue::Double(0.5));
        assert_eq!(
            sql_value(&serde_json::json!({"a": 1})),
            SqlValue::Bytes(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            column_sql_value(&ColumnValue::Text("AAE=".into()), Bind::Base64),
            SqlValue::Bytes(vec![0, 1])
        );
        assert_eq!(
            column_sql_value(&ColumnValue::UInt(u64::MAX), Bind::Plain),
            SqlValue::UInt(u64::MAX)
        );
    }
}
