//! The backfill coordinator on MySQL / MariaDB: the signal table, chunked SELECTs in key order
//! framed by watermarks, values typed exactly as the binlog decoder types them, and progress
//! kept in the signal table so that a restart resumes after the last acknowledged chunk.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as SqlValue};
use serde_json::{json, Value};

use crate::model::{ColumnValue, JsonText};
use tokio::sync::mpsc;

use crate::checkpoint::AckTracker;
use crate::config::{PipelineConfig, SnapshotConfig, SourceConfig};
use crate::metrics::Metrics;
use crate::model::filter::Expr;
use crate::source::mysql::plan::{ColumnPlan, TablePlan};
use crate::source::mysql::schema::{self, SchemaColumn, TableSchema};
use crate::source::mysql::sql::{column_sql_value, qualified, quote_ident as q, Bind};
use crate::source::mysql::temporal;
use crate::source::mysql::values::Kind;
use crate::source::snapshot::{at_or_after, Ask, Chunk, Job};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("backfill of pipeline `{pipeline}`: {message}")]
    Pipeline { pipeline: String, message: String },
    #[error("signal table `{table}`: {source}; the source account needs CREATE, SELECT, INSERT, UPDATE on it")]
    Signal {
        table: String,
        source: mysql_async::Error,
    },
}

/// Creates the signal table where missing.
pub async fn ensure_signal_table(conn: &mut Conn, table: &str) -> Result<(), SnapshotError> {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(191) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL, \
         pipeline VARCHAR(191) NOT NULL, payload TEXT, \
         updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))",
        qualified(table)
    ))
    .await
    .map_err(|source| SnapshotError::Signal {
        table: table.into(),
        source,
    })
}

/// Asks the running daemon for a backfill: a request row in the signal table, which the
/// daemon reads from the binlog.
pub async fn request(
    conn: &mut Conn,
    table: &str,
    pipeline: &str,
    filter: Option<&str>,
) -> Result<String, SnapshotError> {
    ensure_signal_table(conn, table).await?;
    let id = format!("backfill:{pipeline}:{:016x}", rand::random::<u64>());
    conn.exec_drop(
        format!(
            "INSERT INTO {} (id, kind, pipeline, payload) VALUES (?, 'backfill', ?, ?)",
            qualified(table)
        ),
        (id.as_str(), pipeline, filter),
    )
    .await
    .map_err(|source| SnapshotError::Signal {
        table: table.into(),
        source,
    })?;
    Ok(id)
}

/// Column types a backfill can page through in key order with `(k…) > (?…)`.
pub fn orderable_key(c: &SchemaColumn) -> bool {
    matches!(
        c.data_type.as_str(),
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "bigint"
            | "decimal"
            | "char"
            | "varchar"
            | "binary"
            | "varbinary"
            | "date"
            | "year"
    ) && !c.is_json
}

/// The columns a backfill pages by (and tells a chunk's rows from the stream's changes by):
/// the table's primary key, else the pipeline's `key:` (empty: neither). `key:` may group rows
/// of a table with a primary key; paging by a value many rows share would skip some.
pub fn paging_columns(s: &TableSchema, key: Option<&[String]>) -> Vec<String> {
    match (s.primary_key.is_empty(), key) {
        (false, _) => s.primary_key.clone(),
        (true, k) => k.map(<[String]>::to_vec).unwrap_or_default(),
    }
}

/// Why the pipeline's `key` cannot page a backfill through `db`.`table` (a table without a
/// primary key); `None` when it can: every column of it NOT NULL, and it holds every column
/// of a unique index. A backfill pages with `(key) > (last)`: a NULL in the key is never
/// passed (the rows after it are skipped), nor is a value shared across a chunk's end.
pub async fn unusable_paging_key(
    conn: &mut Conn,
    db: &str,
    table: &str,
    key: &[String],
) -> Result<Option<String>, mysql_async::Error> {
    let has = |c: &String| key.iter().any(|k| k.eq_ignore_ascii_case(c));
    let nullable: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND IS_NULLABLE = 'YES'",
            (db, table),
        )
        .await?;
    if let Some(c) = nullable.iter().find(|c| has(c)) {
        return Ok(Some(format!(
            "key column `{c}` may be NULL: a backfill paging by `key:` would skip the rows after a NULL"
        )));
    }
    let unique: Vec<(String, String)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0",
            (db, table),
        )
        .await?;
    let covers = |index: &str| {
        unique
            .iter()
            .filter(|(i, _)| i == index)
            .all(|(_, c)| has(c))
    };
    if unique.iter().any(|(i, _)| covers(i)) {
        return Ok(None);
    }
    Ok(Some(format!(
        "`key:` ({}) holds no unique index of `{db}`.`{table}`: a backfill paging by it would skip \
         the rows that share a value across a chunk's end",
        key.join(", ")
    )))
}

/// Fractional digits of a temporal column type (`datetime(6)` → 6).
fn fsp(c: &SchemaColumn) -> u8 {
    c.column_type
        .split_once('(')
        .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        .unwrap_or(0)
}

/// A value read over the binary protocol, typed as the binlog decoder types the same column
/// (so a backfilled row and a streamed row of the same data are byte-identical). Errors name
/// what is wrong with the value (a JSON column holding something that is not JSON).
pub fn column_value(c: &SchemaColumn, v: SqlValue) -> Result<ColumnValue, String> {
    let t = c.data_type.as_str();
    Ok(match v {
        SqlValue::NULL => ColumnValue::Null,
        SqlValue::Int(i) if t == "year" => ColumnValue::Text(format!("{i:04}")),
        SqlValue::UInt(u) if t == "year" => ColumnValue::Text(format!("{u:04}")),
        SqlValue::Int(i) => ColumnValue::Int(i),
        SqlValue::UInt(u) => match i64::try_from(u) {
            Ok(i) => ColumnValue::Int(i),
            Err(_) => ColumnValue::UInt(u),
        },
        SqlValue::Float(f) => ColumnValue::float32(f),
        SqlValue::Double(d) if t == "float" => ColumnValue::float32(d as f32),
        SqlValue::Double(d) => ColumnValue::float(d),
        SqlValue::Date(y, mo, d, h, mi, s, us) => ColumnValue::Text(temporal::from_parts(
            t == "date",
            y,
            mo,
            d,
            h,
            mi,
            s,
            us,
            fsp(c),
            t == "timestamp",
        )),
        SqlValue::Time(neg, days, h, mi, s, us) => {
            ColumnValue::Text(temporal::time_from_parts(neg, days, h, mi, s, us, fsp(c)))
        }
        SqlValue::Bytes(b) => bytes_value(c, &b)?,
    })
}

fn bytes_value(c: &SchemaColumn, b: &[u8]) -> Result<ColumnValue, String> {
    let t = c.data_type.as_str();
    let b64 = |b: &[u8]| ColumnValue::Text(base64::engine::general_purpose::STANDARD.encode(b));
    Ok(if c.is_json || t == "json" {
        let text = std::str::from_utf8(b).map_err(|e| format!("JSON that is not UTF-8: {e}"))?;
        // MariaDB returns the column's text as stored (MySQL a valid document either way).
        ColumnValue::Json(JsonText::parse_mariadb(text)?)
    } else if t == "bit" {
        ColumnValue::UInt(b.iter().fold(0u64, |a, x| (a << 8) | *x as u64))
    } else if c.is_spatial() {
        b64(if b.len() >= 4 { &b[4..] } else { b })
    } else if c.is_binary() {
        b64(b)
    } else {
        ColumnValue::Text(String::from_utf8_lossy(b).into_owned())
    })
}

/// A layout for routing backfilled rows: names and key from `information_schema` (the values
/// are already decoded, so no column kind is needed).
pub fn plan_from_schema(db: &str, table: &str, s: &TableSchema) -> TablePlan {
    TablePlan {
        table_id: 0,
        db: db.into(),
        table: table.into(),
        columns: s
            .columns
            .iter()
            .map(|c| ColumnPlan {
                name: c.name.clone(),
                kind: Kind::Null,
                type_name: c.column_type.clone(),
                hidden: false,
            })
            .collect(),
        primary_key: s
            .primary_key
            .iter()
            .filter(|k| Some(k.as_str()) != s.row_end.as_deref())
            .filter_map(|k| s.columns.iter().position(|c| &c.name == k))
            .collect(),
        row_end: None,
        every_column_logged: true,
    }
}

/// Every pipeline the process has known, by its stable index (`None`: removed by a reload).
pub type PipelineSlots = Arc<std::sync::RwLock<Vec<Option<PipelineConfig>>>>;

pub struct Coordinator {
    pub source: SourceConfig,
    pub cfg: SnapshotConfig,
    pub pipelines: PipelineSlots,
    pub tracker: AckTracker,
    pub metrics: Arc<Metrics>,
    /// Chunks to the pipeline stage.
    pub chunks: std::sync::mpsc::Sender<Chunk>,
}

/// Saved progress rows: (pipeline, payload).
async fn progress_rows(
    conn: &mut Conn,
    table: &str,
) -> Result<Vec<(String, String)>, SnapshotError> {
    conn.query(format!(
        "SELECT pipeline, payload FROM {} WHERE kind = 'progress'",
        qualified(table)
    ))
    .await
    .map_err(|source| SnapshotError::Signal {
        table: table.into(),
        source,
    })
}

impl Coordinator {
    fn pipeline_index(&self, name: &str) -> Option<usize> {
        self.slots()
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.name == name))
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<PipelineConfig>>> {
        self.pipelines.read().unwrap_or_else(|p| p.into_inner())
    }

    fn pipeline(&self, i: usize) -> Option<PipelineConfig> {
        self.slots().get(i).cloned().flatten()
    }

    /// The jobs to run at start-up: unfinished backfills resume; `initial` ones start when the
    /// daemon has no checkpoint (or `all` when the binlog was purged and everything is read
    /// again).
    pub async fn initial_jobs(
        &self,
        conn: &mut Conn,
        fresh_start: bool,
        all: bool,
    ) -> Result<(Vec<Job>, HashSet<String>), SnapshotError> {
        let mut jobs = Vec::new();
        let mut seen_requests = HashSet::new();
        let mut has_progress = HashSet::new();
        for (pipeline, payload) in progress_rows(conn, &self.cfg.signal_table).await? {
            // A pipeline with a progress row, even one that cannot be read, is not backfilled
            // again from scratch on its own (`snapshot: initial`).
            has_progress.insert(pipeline.clone());
            let saved: SavedProgress = match serde_json::from_str(&payload) {
                Ok(s) => s,
                Err(e) => {
                    let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                    if let Some(r) = v["request"].as_str() {
                        seen_requests.insert(r.to_string());
                    }
                    tracing::warn!(pipeline = %pipeline, table = %self.cfg.signal_table, error = %e,
                        "a backfill progress row cannot be read; that backfill does not resume \
                         (request it again with `cdc-enricher backfill`)");
                    continue;
                }
            };
            if let Some(r) = &saved.request {
                seen_requests.insert(r.clone());
            }
            let Some(i) = self.pipeline_index(&pipeline) else {
                continue;
            };
            if !saved.done && !all {
                jobs.push(Job {
                    pipeline: i,
                    request: saved.request,
                    filter: saved.filter,
                    after: saved
                        .after
                        .map(|a| a.iter().map(ColumnValue::from_json_value).collect()),
                    after_key: saved.key,
                    rows_done: saved.rows,
                });
            }
        }
        let slots: Vec<Option<PipelineConfig>> = self.slots().clone();
        for (i, p) in slots.iter().enumerate() {
            let Some(p) = p else { continue };
            let initial = p.snapshot == crate::config::pipeline::SnapshotMode::Initial
                && fresh_start
                && !has_progress.contains(&p.name);
            if all || initial {
                jobs.push(Job {
                    pipeline: i,
                    request: None,
                    filter: None,
                    after: None,
                    after_key: None,
                    rows_done: 0,
                });
            }
        }
        Ok((jobs, seen_requests))
    }

    /// Runs jobs one after another, taking requests as they come, until `requests` closes.
    pub async fn run(
        self,
        mut queue: VecDeque<Job>,
        mut seen: HashSet<String>,
        mut requests: mpsc::UnboundedReceiver<Ask>,
    ) -> Result<(), SnapshotError> {
        loop {
            while let Ok(a) = requests.try_recv() {
                self.take(a, &mut queue, &mut seen);
            }
            let Some(job) = queue.pop_front() else {
                match requests.recv().await {
                    Some(a) => {
                        self.take(a, &mut queue, &mut seen);
                        continue;
                    }
                    None => return Ok(()),
                }
            };
            let Some(name) = self.pipeline(job.pipeline).map(|p| p.name) else {
                continue; // removed by a reload before its backfill started
            };
            let mut round = 0u32;
            let mut job = job;
            loop {
                match self.backfill(&mut job).await {
                    Ok(()) => break,
                    Err(e @ SnapshotError::Pipeline { .. }) => {
                        tracing::error!(pipeline = %name, error = %e, "backfill stopped");
                        break;
                    }
                    Err(e) => {
                        round += 1;
                        let d = crate::ratelimit::backoff(round.min(8));
                        tracing::warn!(pipeline = %name, error = %e, backoff_ms = d.as_millis() as u64,
                            "backfill interrupted; it resumes after its last chunk");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        }
    }

    fn take(&self, a: Ask, queue: &mut VecDeque<Job>, seen: &mut HashSet<String>) {
        let r = match a {
            Ask::Job(j) => return queue.push_back(j),
            Ask::Request(r) => r,
        };
        if !seen.insert(r.id.clone()) {
            return; // read again after a restart: already taken
        }
        let Some(i) = self.pipeline_index(&r.pipeline) else {
            tracing::error!(pipeline = %r.pipeline, request = %r.id, "backfill requested for a pipeline this daemon does not run; ignored");
            return;
        };
        tracing::info!(pipeline = %r.pipeline, request = %r.id, filter = ?r.filter, "backfill requested");
        queue.push_back(Job {
            pipeline: i,
            request: Some(r.id),
            filter: r.filter,
            after: None,
            after_key: None,
            rows_done: 0,
        });
    }

    async fn save_progress(
        &self,
        conn: &mut Conn,
        p: &PipelineConfig,
        job: &Job,
        done: bool,
    ) -> Result<(), mysql_async::Error> {
        let payload = json!(SavedProgress {
            request: job.request.clone(),
            filter: job.filter.clone(),
            after: job
                .after
                .as_ref()
                .map(|a| a.iter().map(|v| json!(v)).collect()),
            key: job.after_key.clone(),
            rows: job.rows_done,
            done,
        });
        conn.exec_drop(
            format!(
                "INSERT INTO {} (id, kind, pipeline, payload) VALUES (?, 'progress', ?, ?) \
                 ON DUPLICATE KEY UPDATE payload = VALUES(payload)",
                qualified(&self.cfg.signal_table)
            ),
            (
                format!("progress:{}", p.name),
                p.name.as_str(),
                payload.to_string(),
            ),
        )
        .await
    }

    async fn watermark(
        &self,
        conn: &mut Conn,
        kind: &str,
        pipeline: &str,
        nonce: u64,
    ) -> Result<(), mysql_async::Error> {
        conn.exec_drop(
            format!(
                "INSERT INTO {} (id, kind, pipeline, payload) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE kind = VALUES(kind), payload = VALUES(payload)",
                qualified(&self.cfg.signal_table)
            ),
            (
                format!("watermark:{pipeline}"),
                kind,
                pipeline,
                nonce.to_string(),
            ),
        )
        .await
    }

    fn signal_err(&self, source: mysql_async::Error) -> SnapshotError {
        SnapshotError::Signal {
            table: self.cfg.signal_table.clone(),
            source,
        }
    }

    /// Reads the job's table chunk by chunk until the end.
    async fn backfill(&self, job: &mut Job) -> Result<(), SnapshotError> {
        let Some(p) = self.pipeline(job.pipeline) else {
            return Ok(());
        };
        let serr = |source| self.signal_err(source);
        let mut conn = Conn::new(crate::source::mysql::stream::opts(&self.source))
            .await
            .map_err(serr)?;
        // TIMESTAMP values in UTC, as the binlog carries them.
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(serr)?;
        let paging = self.paging(&mut conn, &p, job).await?;
        let key: Vec<String> = paging.key_cols.iter().map(|c| c.name.clone()).collect();
        // A saved key of other columns (saved before backfills paged by the primary key, or
        // the table's key changed since) cannot resume: the backfill starts over (rows come
        // twice, none is skipped).
        let same = match &job.after_key {
            Some(k) => *k == key,
            None => p.key.as_ref().is_none_or(|k| *k == key),
        };
        if job.after.is_some() && !same {
            tracing::warn!(pipeline = %p.name, key = ?key, saved = ?job.after_key,
                "the saved backfill progress is by other key columns; the backfill starts over");
            job.after = None;
            job.rows_done = 0;
        }
        job.after_key = Some(key);
        let pm = self.metrics.pipelines.get(job.pipeline);
        if let Some(pm) = pm {
            pm.snapshot_estimate
                .store(paging.estimate.unwrap_or(0), Ordering::Relaxed);
            pm.snapshot_running.store(1, Ordering::Relaxed);
        }
        self.save_progress(&mut conn, &p, job, false)
            .await
            .map_err(serr)?;
        tracing::info!(pipeline = %p.name, table = %format!("{}.{}", paging.plan.db, paging.plan.table),
            estimate = ?paging.estimate, resume_after = ?job.after, "backfill starts");
        let progress = Progress::new(job.rows_done);
        loop {
            let n = self.chunk(&mut conn, &p, &paging, job).await?;
            job.rows_done += n as u64;
            let finished = n < self.cfg.chunk_size;
            self.save_progress(&mut conn, &p, job, finished)
                .await
                .map_err(serr)?;
            if let Some(pm) = pm {
                pm.snapshot_rows.fetch_add(n as u64, Ordering::Relaxed);
                if finished {
                    pm.snapshot_running.store(0, Ordering::Relaxed);
                }
            }
            if finished {
                tracing::info!(pipeline = %p.name, rows = job.rows_done,
                    seconds = progress.started.elapsed().as_secs_f64(), "backfill done");
                let _ = conn.disconnect().await;
                return Ok(());
            }
            progress.log(&p.name, job.rows_done, paging.estimate);
        }
    }

    /// The table's layout, key, filter and paging statements for a job.
    async fn paging(
        &self,
        conn: &mut Conn,
        p: &PipelineConfig,
        job: &Job,
    ) -> Result<Paging, SnapshotError> {
        let perr = |message: String| pipeline_err(p, message);
        let serr = |source| self.signal_err(source);
        let (db, table) = p.db_table();
        let mut schemas = schema::load(conn, &[(db.clone(), table.clone())])
            .await
            .map_err(serr)?;
        let Some(s) = schemas.remove(&(db.clone(), table.clone())) else {
            return Err(perr(format!("table `{db}`.`{table}` does not exist")));
        };
        // The rows are paged, and told from the stream's changes in the chunk's window, by the
        // primary key; by `key:` only in a table without one, and only when it is unique and
        // NOT NULL.
        let key = paging_columns(&s, p.key.as_deref());
        if key.is_empty() {
            return Err(perr(format!(
                "`{db}`.`{table}` has no primary key and the pipeline sets no `key:`; a backfill pages through the table in key order"
            )));
        }
        if s.primary_key.is_empty() {
            if let Some(why) = unusable_paging_key(conn, &db, &table, &key)
                .await
                .map_err(serr)?
            {
                return Err(perr(why));
            }
        }
        let mut key_cols = Vec::new();
        for k in &key {
            match s.column(k) {
                Some(c) if orderable_key(c) => key_cols.push(c.clone()),
                Some(c) => {
                    return Err(perr(format!(
                        "key column `{k}` is {}; a backfill needs integer, decimal, string, binary or date key columns",
                        c.column_type
                    )))
                }
                None => return Err(perr(format!("key column `{k}` is not in `{db}`.`{table}`"))),
            }
        }
        let key_idx: Vec<usize> = key
            .iter()
            .filter_map(|k| s.columns.iter().position(|c| &c.name == k))
            .collect();
        let mut plan_schema = s.clone();
        plan_schema.primary_key = key.clone();
        let plan = Arc::new(plan_from_schema(&db, &table, &plan_schema));
        let filter = match &job.filter {
            Some(f) => Some(
                Expr::parse(f)
                    .and_then(|e| {
                        e.bind(&|c| plan.column_index(c))
                            .map_err(|c| format!("column `{c}` is not in the table"))
                    })
                    .map_err(|m| perr(format!("--where `{f}`: {m}")))?,
            ),
            None => None,
        };
        let estimate: Option<u64> = conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db.as_str(), table.as_str()),
            )
            .await
            .map_err(serr)?;
        let cols: Vec<String> = s.columns.iter().map(|c| q(&c.name)).collect();
        let klist = key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
        let marks = vec!["?"; key.len()].join(", ");
        let base = format!("SELECT {} FROM {}.{}", cols.join(", "), q(&db), q(&table));
        Ok(Paging {
            first: format!("{base} ORDER BY {klist} LIMIT {}", self.cfg.chunk_size),
            next: format!(
                "{base} WHERE ({klist}) > ({marks}) ORDER BY {klist} LIMIT {}",
                self.cfg.chunk_size
            ),
            schema: s,
            key_cols,
            key_idx,
            plan,
            filter,
            estimate,
        })
    }

    /// One chunk: a low watermark, the next rows in key order, the chunk handed to the
    /// pipeline stage, a high watermark; returns once the chunk's records are acknowledged
    /// (and `job.after` is the chunk's last key), with the number of rows read.
    async fn chunk(
        &self,
        conn: &mut Conn,
        p: &PipelineConfig,
        paging: &Paging,
        job: &mut Job,
    ) -> Result<usize, SnapshotError> {
        let perr = |message: String| pipeline_err(p, message);
        let serr = |source| self.signal_err(source);
        let nonce = rand::random::<u64>();
        self.watermark(conn, "low", &p.name, nonce)
            .await
            .map_err(serr)?;
        let rows: Vec<mysql_async::Row> = match &job.after {
            None => conn.exec(paging.first.as_str(), ()).await,
            Some(after) => {
                let params: Vec<SqlValue> = after
                    .iter()
                    .zip(&paging.key_cols)
                    .map(|(v, c)| {
                        let bind = if c.is_binary() {
                            Bind::Base64
                        } else {
                            Bind::Plain
                        };
                        column_sql_value(v, bind)
                    })
                    .collect();
                conn.exec(paging.next.as_str(), params).await
            }
        }
        .map_err(serr)?;
        let n = rows.len();
        let decoded: Vec<Vec<ColumnValue>> = rows
            .into_iter()
            .map(|r| {
                r.unwrap_raw()
                    .into_iter()
                    .zip(&paging.schema.columns)
                    .map(|(v, c)| {
                        column_value(c, v.unwrap_or(SqlValue::NULL))
                            .map_err(|e| perr(format!("column `{}`: {e}", c.name)))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let last_key: Option<Vec<ColumnValue>> = decoded
            .last()
            .map(|r| paging.key_idx.iter().map(|i| r[*i].clone()).collect());
        let emitted: Vec<Vec<ColumnValue>> = match &paging.filter {
            Some(f) => decoded.into_iter().filter(|r| f.eval(r)).collect(),
            None => decoded,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.chunks
            .send(Chunk {
                nonce,
                pipeline: job.pipeline,
                plan: paging.plan.clone(),
                rows: emitted,
                done: done_tx,
            })
            .map_err(|_| perr("the pipeline stage ended".into()))?;
        self.watermark(conn, "high", &p.name, nonce)
            .await
            .map_err(serr)?;
        let at = done_rx
            .await
            .map_err(|_| perr("the pipeline stage ended before the high watermark".into()))?;
        // The chunk counts as done once its records (and all before them) are acknowledged.
        while !self
            .tracker
            .committed()
            .is_some_and(|c| at_or_after(&c, &at))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(k) = last_key {
            job.after = Some(k);
        }
        Ok(n)
    }
}

/// What a backfill pages with: the table, its key (columns and their places in a row), the
/// decode plan, the `--where` filter and the two SELECTs (the first chunk, and the chunk after
/// a key).
struct Paging {
    schema: TableSchema,
    key_cols: Vec<SchemaColumn>,
    key_idx: Vec<usize>,
    plan: Arc<TablePlan>,
    filter: Option<Expr>,
    first: String,
    next: String,
    estimate: Option<u64>,
}

/// A backfill's progress log (every 5 s: rows, rate, time left).
struct Progress {
    started: Instant,
    start_rows: u64,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(rows_done: u64) -> Progress {
        Progress {
            started: Instant::now(),
            start_rows: rows_done,
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    fn log(&self, pipeline: &str, rows_done: u64, estimate: Option<u64>) {
        if self.last_log.get().elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_log.set(Instant::now());
        let rate =
            (rows_done - self.start_rows) as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let eta = estimate
            .map(|e| e.saturating_sub(rows_done) as f64 / rate.max(0.001))
            .map(|s| s.round() as u64);
        tracing::info!(pipeline = %pipeline, rows = rows_done, estimate = ?estimate,
            rows_per_s = rate.round() as u64, eta_s = ?eta, "backfill progress");
    }
}

/// A backfill's progress row in the signal table (`kind = 'progress'`, JSON in `payload`): the
/// request that asked for it, its `--where` filter, the last key done (its values as JSON), the
/// rows read, and whether it finished.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedProgress {
    request: Option<String>,
    filter: Option<String>,
    after: Option<Vec<Value>>,
    /// The columns of `after` (absent in rows written before they were saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Vec<String>>,
    #[serde(default)]
    rows: u64,
    done: bool,
}

fn pipeline_err(p: &PipelineConfig, message: String) -> SnapshotError {
    SnapshotError::Pipeline {
        pipeline: p.name.clone(),
        message,
    }
}
