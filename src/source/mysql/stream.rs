//! The live replication stream: `mysql_async`'s binlog stream with reconnects, heartbeats
//! and read timeouts, feeding the shared [`Decoder`].

use super::event_type::EventType;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder, SslOpts};
use tokio::sync::{mpsc, watch};

use super::ddl::TableName;
use super::decoder::Decoder;
use super::schema;
use super::schema_history::SchemaHistory;
use crate::config::{SourceConfig, TlsMode};
use crate::source::{BinlogPosition, SourceEvent};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to MySQL at {addr}: {source}")]
    Connect {
        addr: String,
        source: mysql_async::Error,
    },
    #[error("MySQL query failed ({what}): {source}")]
    Query {
        what: &'static str,
        source: mysql_async::Error,
    },
    #[error(transparent)]
    Decode(Box<crate::source::DecodeError>),
    #[error(
        "the binlog position {position} is no longer on the server ({reason}); \
             restart from a newer position (delete the checkpoint to start at the current end) \
             or re-snapshot the tables"
    )]
    Purged {
        position: BinlogPosition,
        reason: String,
    },
    /// The server writes no binlog: nothing can be streamed (this is not a purge: no
    /// re-snapshot helps).
    #[error(
        "the server at {addr} has binary logging off; start it with log_bin (and binlog_format = ROW, \
         binlog_row_image = FULL), then restart cdc-enricher"
    )]
    BinlogOff { addr: String },
}

/// ER_NO_BINARY_LOGGING (<https://mariadb.com/kb/en/mariadb-error-code-reference/>).
const ER_NO_BINARY_LOGGING: u16 = 1381;

/// Reads of the read tables' definitions at a (re)start before a DDL logged during each of
/// them is left unknown (see `seed_history`).
const SEED_TRIES: u32 = 3;

/// What [`MysqlSource::definitions`] read.
struct Definitions {
    /// The tables' definitions, read after `before` and before `end`.
    now: schema::Schemas,
    before: BinlogPosition,
    end: BinlogPosition,
    /// The DDLs on read tables from the scan's start to `end`, with their end positions.
    ddls: Vec<(TableName, BinlogPosition)>,
}

/// Whether the server writes a binlog (`@@GLOBAL.log_bin`).
pub async fn binlog_on(conn: &mut Conn) -> Result<bool, SourceError> {
    let v: Option<String> = conn
        .query_first("SELECT CAST(@@GLOBAL.log_bin AS CHAR)")
        .await
        .map_err(|source| SourceError::Query {
            what: "@@GLOBAL.log_bin",
            source,
        })?;
    Ok(matches!(
        v.as_deref().map(str::to_ascii_uppercase).as_deref(),
        Some("ON" | "1")
    ))
}

impl From<crate::source::DecodeError> for SourceError {
    fn from(e: crate::source::DecodeError) -> Self {
        SourceError::Decode(Box::new(e))
    }
}

/// The largest binlog event read, bytes: 1 GiB, the protocol's largest packet and MariaDB's
/// `slave_max_allowed_packet` maximum
/// (<https://mariadb.com/kb/en/replication-and-binary-log-system-variables/#slave_max_allowed_packet>).
pub const MAX_EVENT_BYTES: usize = 1 << 30;

/// Builds connection options from the source config.
pub fn opts(cfg: &SourceConfig) -> Opts {
    let mut b = OptsBuilder::default()
        .ip_or_hostname(cfg.host.clone())
        .tcp_port(cfg.port)
        .user(Some(cfg.user.clone()))
        .pass(cfg.password.clone())
        .prefer_socket(false)
        .stmt_cache_size(0)
        // A binlog event is one packet, as large as the statement that made it (MariaDB's
        // replicas read up to 1 GiB, `slave_max_allowed_packet`'s maximum): the client's limit
        // must not be the server's `max_allowed_packet` (16 MiB by default), or one large row
        // in any table, read or not, stops the stream for good.
        .max_allowed_packet(Some(MAX_EVENT_BYTES));
    match cfg.tls.mode {
        TlsMode::Disabled => {}
        TlsMode::Required | TlsMode::VerifyCa | TlsMode::VerifyIdentity => {
            let mut ssl = SslOpts::default();
            if let Some(ca) = &cfg.tls.ca_file {
                ssl = ssl.with_root_certs(vec![ca.clone().into()]);
            }
            if cfg.tls.mode == TlsMode::Required {
                ssl = ssl
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true);
            } else if cfg.tls.mode == TlsMode::VerifyCa {
                ssl = ssl.with_danger_skip_domain_validation(true);
            }
            b = b.ssl_opts(Some(ssl));
        }
    }
    b.into()
}

pub fn addr(cfg: &SourceConfig) -> String {
    format!("{}:{}", cfg.host, cfg.port)
}

pub async fn connect(cfg: &SourceConfig) -> Result<Conn, SourceError> {
    Conn::new(opts(cfg))
        .await
        .map_err(|source| SourceError::Connect {
            addr: addr(cfg),
            source,
        })
}

/// The server's current end of binlog (SHOW MASTER STATUS / SHOW BINARY LOG STATUS).
pub async fn current_position(conn: &mut Conn) -> Result<BinlogPosition, SourceError> {
    let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(r) => r,
        Err(_) => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(|source| SourceError::Query {
                what: "SHOW BINARY LOG STATUS",
                source,
            })?,
    };
    let Some(row) = row else {
        return Err(SourceError::BinlogOff {
            addr: format!(
                "{}:{}",
                conn.opts().ip_or_hostname(),
                conn.opts().tcp_port()
            ),
        });
    };
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(4);
    Ok(BinlogPosition::new(file, pos))
}

/// The oldest binlog the server still has.
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>, SourceError> {
    let rows: Vec<mysql_async::Row> = match conn.query("SHOW BINARY LOGS").await {
        Ok(rows) => rows,
        Err(mysql_async::Error::Server(se)) if se.code == ER_NO_BINARY_LOGGING => {
            return Err(SourceError::BinlogOff {
                addr: format!(
                    "{}:{}",
                    conn.opts().ip_or_hostname(),
                    conn.opts().tcp_port()
                ),
            })
        }
        Err(source) => {
            return Err(SourceError::Query {
                what: "SHOW BINARY LOGS",
                source,
            })
        }
    };
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<String, _>(0).unwrap_or_default(),
                r.get::<u64, _>(1).unwrap_or(0),
            )
        })
        .collect())
}

/// Checks that `p` can still be streamed: its file is on the server and long enough.
pub async fn check_position(conn: &mut Conn, p: &BinlogPosition) -> Result<(), SourceError> {
    let logs = binary_logs(conn).await?;
    match logs.iter().find(|(f, _)| **f == *p.file) {
        Some((_, size)) if *size >= p.pos => Ok(()),
        Some((_, size)) => Err(SourceError::Purged {
            position: p.clone(),
            reason: format!("{} is only {size} bytes long", p.file),
        }),
        None => Err(SourceError::Purged {
            position: p.clone(),
            reason: format!(
                "{} is not among the server's binary logs (oldest: {})",
                p.file,
                logs.first().map(|l| l.0.as_str()).unwrap_or("none")
            ),
        }),
    }
}

/// Where the stream starts: a checkpoint's position (inside a transaction if it was), its
/// format-1 row count to convert, and the prepared XA transactions it kept.
pub struct Start {
    /// Where to resume: the transaction's start, and the rows event and row inside it.
    pub position: BinlogPosition,
    /// A format-1 checkpoint's rows (of every table) inside the transaction at `position`.
    pub legacy_rows: u64,
    /// The XA transactions prepared before `position` whose outcome was not read yet: their
    /// prepare groups are read again first.
    pub open_xa: Vec<super::xa::OpenXa>,
}

/// Tables waiting to be read, handed over by a reload (see [`MysqlSource::tables_added`]).
#[derive(Default)]
pub struct TablesToAdd {
    pending: std::sync::Mutex<Vec<TableName>>,
    notify: tokio::sync::Notify,
}

impl TablesToAdd {
    /// Asks the stream to read `tables` too, from the next event on.
    pub fn add(&self, tables: Vec<TableName>) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tables);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<TableName> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The binlog source: connects as a replica (`COM_BINLOG_DUMP` at a file and position), decodes
/// the rows of the tables some pipeline reads and hands [`SourceEvent`]s downstream in binlog
/// order, reconnecting with backoff. Positions: the README's "Delivery guarantees".
pub struct MysqlSource {
    /// The server and how to read it.
    pub cfg: SourceConfig,
    /// Where the stream's counters go (none in the benchmarks).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The tables some pipeline reads (a reload may add to them).
    pub tables: Arc<std::sync::RwLock<std::collections::HashSet<TableName>>>,
    /// Which tables' rows are decoded (`None`: every table's).
    pub filter: Option<super::decoder::TableFilter>,
    /// Where the schema history is published for the checkpoint writer after it changes.
    pub history: Arc<std::sync::Mutex<SchemaHistory>>,
    /// Tables a reload adds: taken into `tables` between two events, where the stream is opened
    /// again (so their definitions are read into the schema history, as at any connect, before
    /// any of their rows is decoded), marked by [`SourceEvent::TablesAdded`].
    pub tables_added: Arc<TablesToAdd>,
}

impl MysqlSource {
    /// Streams from `start` until `shutdown` turns true, sending batches of events to `tx`.
    /// Disconnects, server restarts and read timeouts reconnect with backoff and resume
    /// exactly after the last event sent. Decode errors stop the stream.
    pub async fn run(
        self,
        start: Start,
        tx: mpsc::Sender<Vec<SourceEvent>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        let saved = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        let dir = self
            .cfg
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let mut decoder = Decoder::new(&start.position, saved)
            .with_legacy_rows(start.legacy_rows)
            .with_hold((self.cfg.transaction_buffer_mb as usize) << 20, dir);
        decoder.filter = self.filter.clone();
        for open in start.open_xa {
            let events = self.read_prepared(&open).await?;
            tracing::info!(xid = %open.xid.describe(), position = %open.position, events = events.len(),
                "a prepared XA transaction of the checkpoint read again; its rows wait for its XA COMMIT");
            decoder.restore_xa(open, events)?;
        }
        let heartbeat = Duration::from_millis(self.cfg.heartbeat_ms.max(100));
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        let mut read_timeout = ReadTimeout::new(heartbeat);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let resume = decoder.resume_position();
            let (timeout, to_pass) = read_timeout.at(&resume);
            let link = Link {
                heartbeat,
                read_timeout: timeout,
                base_timeout: read_timeout.base,
                to_pass,
                first,
            };
            let end = self
                .stream_once(&mut decoder, &resume, link, &tx, &mut shutdown)
                .await;
            read_timeout.after(&resume, &end);
            match end {
                Ok(StreamEnd::Shutdown) => return Ok(()),
                Ok(StreamEnd::TablesAdded) => {
                    let resume = decoder.resume_position();
                    tracing::info!(position = %resume, tables = ?self.read_tables(),
                        "tables added by a reload: the binlog is opened again here, with their definitions");
                    decoder.reset_to(&resume);
                    first = false;
                    continue;
                }
                Ok(StreamEnd::Disconnected(reason)) => {
                    tracing::warn!(position = %decoder.resume_position(), %reason, backoff_ms = backoff.as_millis() as u64,
                        "binlog stream lost; reconnecting");
                }
                Ok(StreamEnd::Silent { ms, .. }) => {
                    tracing::warn!(position = %decoder.resume_position(), reason = %format!("no event nor heartbeat for {ms} ms"),
                        next_read_timeout_ms = read_timeout.now().as_millis() as u64, backoff_ms = backoff.as_millis() as u64,
                        "binlog stream lost; reconnecting (a large event on a slow link: the next wait is longer)");
                }
                Err(SourceError::Connect { addr, source }) if !first => {
                    tracing::warn!(%addr, error = %source, backoff_ms = backoff.as_millis() as u64, "reconnect failed; retrying");
                }
                Err(e) => return Err(e),
            }
            first = false;
            let resume = decoder.resume_position();
            decoder.reset_to(&resume);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn stream_once(
        &self,
        decoder: &mut Decoder,
        resume: &BinlogPosition,
        link: Link,
        tx: &mpsc::Sender<Vec<SourceEvent>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<StreamEnd, SourceError> {
        let (mut stream, live_from) = self
            .open(decoder, resume, link.heartbeat, link.first)
            .await?;
        let mut out: Vec<SourceEvent> = Vec::with_capacity(512);
        let mut read_timeout = link.read_timeout;
        let mut received = 0u64;
        let _connected = Connected::new(self.metrics.clone());
        loop {
            let next = tokio::select! {
                r = tokio::time::timeout(read_timeout, stream.next()) => r,
                _ = shutdown.changed() => return Ok(StreamEnd::Shutdown),
                _ = self.tables_added.notify.notified() => {
                    let added = self.tables_added.take();
                    if added.is_empty() {
                        continue;
                    }
                    self.tables
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(added);
                    // Everything decoded so far without them, then the point they start at.
                    out.push(SourceEvent::TablesAdded);
                    if tx.send(out).await.is_err() {
                        return Ok(StreamEnd::Shutdown);
                    }
                    return Ok(StreamEnd::TablesAdded);
                }
            };
            let reason = match next {
                Ok(Some(Ok(ev))) => {
                    received += 1;
                    // Past where the last silent connection from here got, or a heartbeat (the
                    // server is idle, the link sound): the usual timeout again.
                    if received > link.to_pass
                        || EventType::from_code(ev.header().event_type_raw())
                            == EventType::Heartbeat
                    {
                        read_timeout = link.base_timeout;
                    }
                    if !self
                        .decode(ev, decoder, &live_from, &mut out, tx, shutdown)
                        .await?
                    {
                        return Ok(StreamEnd::Shutdown);
                    }
                    continue;
                }
                Err(_) => StreamEnd::Silent {
                    ms: read_timeout.as_millis() as u64,
                    received,
                },
                Ok(None) => StreamEnd::Disconnected("the server closed the stream".to_string()),
                Ok(Some(Err(e))) => {
                    StreamEnd::Disconnected(self.read_error(e, decoder.resume_position()).await?)
                }
            };
            // What was decoded is sent before reconnecting: the decoder resumes after it.
            if !out.is_empty() && tx.send(out).await.is_err() {
                return Ok(StreamEnd::Shutdown);
            }
            return Ok(reason);
        }
    }

    /// Connects, checks that `resume` is still on the server, loads the schema history and
    /// asks for the binlog from `resume` (with heartbeats, and MariaDB's GTID events).
    async fn open(
        &self,
        decoder: &mut Decoder,
        resume: &BinlogPosition,
        heartbeat: Duration,
        first: bool,
    ) -> Result<(mysql_async::BinlogStream, BinlogPosition), SourceError> {
        let mut conn = connect(&self.cfg).await?;
        if !first {
            tracing::info!(position = %resume, "reconnected to MySQL");
            if let Some(m) = &self.metrics {
                m.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        check_position(&mut conn, resume).await?;
        let live_from = self.seed_history(&mut conn, decoder, resume).await?;
        let q = |what: &'static str| move |source| SourceError::Query { what, source };
        conn.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            heartbeat.as_nanos()
        ))
        .await
        .map_err(q("SET @master_heartbeat_period"))?;
        // MariaDB: send GTID events (capability 4). MySQL ignores the variable.
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(q("SET @mariadb_slave_capability"))?;
        let req = BinlogStreamRequest::new(self.cfg.server_id)
            .with_filename(resume.file.as_bytes())
            .with_pos(resume.pos);
        let stream = conn
            .get_binlog_stream(req)
            .await
            .map_err(q("COM_BINLOG_DUMP"))?;
        if first {
            tracing::info!(position = %resume, "reading the binlog");
        }
        Ok((stream, live_from))
    }

    /// An error reading the stream: the reason to reconnect, or an error no reconnect cures
    /// (1236, ER_MASTER_FATAL_ERROR_READING_BINLOG: the position is purged or unknown — or the
    /// server has binary logging off, asked on a connection of its own).
    async fn read_error(
        &self,
        e: mysql_async::Error,
        position: BinlogPosition,
    ) -> Result<String, SourceError> {
        let mysql_async::Error::Server(se) = &e else {
            return Ok(e.to_string());
        };
        if se.code != 1236 {
            return Ok(e.to_string());
        }
        if let Ok(mut c) = connect(&self.cfg).await {
            let on = binlog_on(&mut c).await;
            let _ = c.disconnect().await;
            if let Ok(false) = on {
                return Err(SourceError::BinlogOff {
                    addr: addr(&self.cfg),
                });
            }
        }
        Err(SourceError::Purged {
            position,
            reason: se.message.clone(),
        })
    }

    /// Decodes one event (and the slices of a committed group it releases), counts it, and
    /// sends full batches and every transaction's end. `false`: the pipeline stage is gone.
    async fn decode(
        &self,
        ev: mysql_common::binlog::events::Event,
        decoder: &mut Decoder,
        live_from: &BinlogPosition,
        out: &mut Vec<SourceEvent>,
        tx: &mpsc::Sender<Vec<SourceEvent>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, SourceError> {
        let timestamp = ev.header().timestamp();
        let heartbeat = EventType::from_code(ev.header().event_type_raw()) == EventType::Heartbeat;
        let mut next = Some(ev);
        while next.is_some() || decoder.releasing() {
            // A shutdown stops a release between slices (what was not sent is not acknowledged:
            // the group is read again from its start after a restart).
            if next.is_none() && *shutdown.borrow() {
                return Ok(false);
            }
            let before = out.len();
            match next.take() {
                Some(ev) => decoder.handle(ev, out)?,
                None => decoder.release_more(out)?,
            }
            if let Some(m) = &self.metrics {
                m.event_read(timestamp, heartbeat);
                m.rolled_back_groups
                    .store(decoder.stats.rolled_back, Ordering::Relaxed);
                m.spilled_groups
                    .store(decoder.stats.spilled, Ordering::Relaxed);
                if !heartbeat {
                    let ends = out[before..]
                        .iter()
                        .filter(|e| !matches!(e, SourceEvent::Row(_)))
                        .count();
                    m.transactions.fetch_add(ends as u64, Ordering::Relaxed);
                }
            }
            if matches!(out.last(), Some(SourceEvent::Ddl { .. })) {
                self.record_ddl(decoder, live_from).await?;
            }
            // Send rows in batches, and at every transaction end so latency stays low.
            if out.len() >= 256
                || (!out.is_empty() && !matches!(out.last(), Some(SourceEvent::Row(_))))
                || (heartbeat && !out.is_empty())
            {
                let batch = std::mem::replace(out, Vec::with_capacity(512));
                if let Some(m) = &self.metrics {
                    let rows = batch
                        .iter()
                        .filter(|e| matches!(e, SourceEvent::Row(_)))
                        .count();
                    m.rows.fetch_add(rows as u64, Ordering::Relaxed);
                }
                tokio::select! {
                    r = tx.send(batch) => if r.is_err() {
                        return Ok(false);
                    },
                    _ = shutdown.changed() => return Ok(false),
                }
            }
        }
        Ok(true)
    }
}

impl MysqlSource {
    fn read_tables(&self) -> Vec<TableName> {
        let mut v: Vec<TableName> = self
            .tables
            .read()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn publish(&self, decoder: &Decoder) {
        if let Ok(mut h) = self.history.lock() {
            *h = decoder.history().clone();
        }
    }

    /// Seeds the schema history when the stream (re)starts at `resume`: `information_schema`
    /// now describes each read table after the last DDL on it before the server's current end;
    /// the DDLs between `resume` and that end are found by a scan of the statements, so that
    /// rows before them are not typed with today's definition. Returns the end: DDLs from there
    /// on are read live, and their results recorded as they pass.
    async fn seed_history(
        &self,
        conn: &mut Conn,
        decoder: &mut Decoder,
        resume: &BinlogPosition,
    ) -> Result<BinlogPosition, SourceError> {
        let tables = self.read_tables();
        let start = BinlogPosition::new(resume.file.clone(), resume.pos);
        let Definitions {
            now,
            before,
            end,
            ddls,
        } = self.definitions(conn, &tables, &start, decoder).await?;
        for t in &tables {
            let mut last = None;
            for (_, at) in ddls.iter().filter(|(d, _)| d == t) {
                decoder.record_schema(t, at.clone(), None);
                last = Some(at.clone());
            }
            // A DDL that raced every read leaves its definition unknown (its rows typed from
            // the binlog alone, with the usual warning), never one it may not be.
            if last.as_ref().is_none_or(|at| *at <= before) {
                decoder.record_schema(t, last.unwrap_or(start.clone()), now.get(t).cloned());
            }
        }
        self.publish(decoder);
        Ok(end)
    }

    /// The definitions of `tables` now, and the DDLs on read tables from `from` to the
    /// server's end. The definitions are read between two reads of the end (`before`, `end`):
    /// a DDL is logged before its table's definition can be read again (it holds the table's
    /// metadata lock until then), so one logged by `before` is in them, one logged after `end`
    /// is not, and one logged between may be either — then they are read again, up to
    /// [`SEED_TRIES`] times.
    async fn definitions(
        &self,
        conn: &mut Conn,
        tables: &[TableName],
        from: &BinlogPosition,
        decoder: &Decoder,
    ) -> Result<Definitions, SourceError> {
        let (mut ddls, mut scanned) = (Vec::new(), from.clone());
        let mut tries = 0;
        loop {
            let before = current_position(conn).await?;
            let now = schema::load(conn, tables)
                .await
                .map_err(|source| SourceError::Query {
                    what: "information_schema",
                    source,
                })?;
            let end = current_position(conn).await?;
            if scanned < end {
                ddls.extend(self.scan_ddl(&scanned, &end, decoder).await?);
                scanned = end.clone();
            }
            let raced = ddls
                .iter()
                .any(|(t, at)| tables.contains(t) && *at > before);
            tries += 1;
            if !raced || tries == SEED_TRIES {
                return Ok(Definitions {
                    now,
                    before,
                    end,
                    ddls,
                });
            }
        }
    }

    /// The DDLs on read tables between `from` and `to`, with their end positions: a pass over
    /// the binlog that reads only statements (rows events are not parsed).
    async fn scan_ddl(
        &self,
        from: &BinlogPosition,
        to: &BinlogPosition,
        decoder: &Decoder,
    ) -> Result<Vec<(TableName, BinlogPosition)>, SourceError> {
        tracing::info!(from = %from, to = %to,
            "reading the statements of the binlog backlog for DDL (schema history)");
        let started = std::time::Instant::now();
        let q = |what: &'static str| move |source| SourceError::Query { what, source };
        let mut conn = connect(&self.cfg).await?;
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(q("SET @mariadb_slave_capability"))?;
        let req = BinlogStreamRequest::new(helper_server_id(self.cfg.server_id))
            .with_filename(from.file.as_bytes())
            .with_pos(from.pos)
            .with_non_blocking();
        let mut stream = conn
            .get_binlog_stream(req)
            .await
            .map_err(q("COM_BINLOG_DUMP"))?;
        let mut found = Vec::new();
        let mut scan = super::ddl::Scan::new(from.file.clone(), decoder.temporaries().clone());
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await
        {
            let ev = ev.map_err(q("reading the binlog backlog"))?;
            for (t, at) in scan.event(&ev) {
                if decoder.reads(&t) {
                    found.push((t, at));
                }
            }
            if scan.position() >= *to {
                break;
            }
        }
        tracing::info!(
            ddls = found.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "binlog backlog read for DDL"
        );
        Ok(found)
    }

    /// The events of a prepared XA transaction's group, read again from the binlog (from its
    /// first event to its XA_PREPARE event).
    async fn read_prepared(
        &self,
        open: &super::xa::OpenXa,
    ) -> Result<Vec<mysql_common::binlog::events::Event>, SourceError> {
        let q = |what: &'static str| move |source| SourceError::Query { what, source };
        let mut conn = connect(&self.cfg).await?;
        check_position(&mut conn, &open.position).await?;
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(q("SET @mariadb_slave_capability"))?;
        let req = BinlogStreamRequest::new(helper_server_id(self.cfg.server_id))
            .with_filename(open.position.file.as_bytes())
            .with_pos(open.position.pos)
            .with_non_blocking();
        let mut stream = conn
            .get_binlog_stream(req)
            .await
            .map_err(q("COM_BINLOG_DUMP"))?;
        let mut events = Vec::new();
        let mut started = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await
        {
            let ev = ev.map_err(q("reading a prepared XA transaction's group"))?;
            let code = EventType::from_code(ev.header().event_type_raw());
            // The stream opens with a fake rotate and the format description.
            if !started && matches!(code, EventType::Rotate | EventType::FormatDescription) {
                continue;
            }
            started = true;
            if code == EventType::XaPrepare {
                return Ok(events);
            }
            events.push(ev);
        }
        Err(SourceError::Purged {
            position: open.position.clone(),
            reason: format!(
                "the XA PREPARE group of {} is not whole there",
                open.xid.describe()
            ),
        })
    }

    /// After a DDL: the definitions of the read tables it changed, read now if the stream is
    /// at the server's end (`live_from` or later), else left unknown (found by the scan). The
    /// stream may have fallen behind since it connected: the statements between the DDL and
    /// the server's end (read after the definitions) are scanned, and a table changed again
    /// there has its definition unknown from this DDL to the last of those (rows typed from
    /// the binlog alone, said once), the one read from there on.
    async fn record_ddl(
        &self,
        decoder: &mut Decoder,
        live_from: &BinlogPosition,
    ) -> Result<(), SourceError> {
        let changed: Vec<(TableName, BinlogPosition)> = decoder
            .take_ddl_changed()
            .into_iter()
            .filter(|(_, at)| at >= live_from)
            .collect();
        let Some(from) = changed.iter().map(|(_, at)| at.clone()).min() else {
            return Ok(());
        };
        let tables: Vec<TableName> = changed.iter().map(|(t, _)| t.clone()).collect();
        let mut conn = connect(&self.cfg).await?;
        let read = self.definitions(&mut conn, &tables, &from, decoder).await;
        let _ = conn.disconnect().await;
        let Definitions {
            now,
            before,
            ddls: later,
            ..
        } = read?;
        for (t, at) in changed {
            let again: Vec<BinlogPosition> = later
                .iter()
                .filter(|(d, p)| *d == t && *p > at)
                .map(|(_, p)| p.clone())
                .collect();
            let read_at = again.last().cloned().unwrap_or_else(|| at.clone());
            for p in std::iter::once(at).chain(again) {
                if p != read_at {
                    decoder.record_schema(&t, p, None);
                }
            }
            // A DDL that raced every read leaves its definition unknown, never a wrong one.
            let known = match read_at <= before {
                true => now.get(&t).cloned(),
                false => None,
            };
            decoder.record_schema(&t, read_at, known);
        }
        self.publish(decoder);
        Ok(())
    }
}

/// The server id of the short binlog reads beside the stream (the DDL scan, a prepared XA
/// group read again): the stream's own with the top bit flipped. A server ends a dump
/// connection when another opens with the same id (MariaDB's `kill_zombie_dump_threads`), so
/// these must not use the stream's.
fn helper_server_id(server_id: u32) -> u32 {
    server_id ^ 0x8000_0000
}

/// Sets the `connected` gauge while alive.
struct Connected(Option<Arc<crate::metrics::Metrics>>);

impl Connected {
    fn new(m: Option<Arc<crate::metrics::Metrics>>) -> Self {
        if let Some(m) = &m {
            m.connected.store(true, Ordering::Relaxed);
        }
        Connected(m)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.connected.store(false, Ordering::Relaxed);
        }
    }
}

/// How one connection of the stream is made and watched.
#[derive(Clone, Copy)]
struct Link {
    /// The server's heartbeat period, asked for when idle.
    heartbeat: Duration,
    /// How long without any event before the link is taken for lost.
    read_timeout: Duration,
    /// Twice the heartbeat: the read timeout once the connection is past `to_pass` events.
    base_timeout: Duration,
    /// Events the last silent connection from the same position received (0: none was).
    to_pass: u64,
    /// The stream's first connection (not a reconnect).
    first: bool,
}

/// The read timeout: twice the heartbeat; doubled (up to [`ReadTimeout::MAX`]) each time a
/// connection from the same resume position went silent no further than the one before — a
/// server sends no heartbeat while it sends one event, and an event of hundreds of MB on a slow
/// link takes longer than any heartbeat. A connection is back at twice the heartbeat as soon
/// as it gets past that point or a heartbeat comes (so a raised timeout never outlives the
/// large event: a link dying later is found as quickly as ever).
struct ReadTimeout {
    base: Duration,
    now: Duration,
    /// The last silent connection: its resume position and the events it received.
    last_silent: Option<(BinlogPosition, u64)>,
}

impl ReadTimeout {
    const MAX: Duration = Duration::from_secs(600);

    fn new(heartbeat: Duration) -> Self {
        ReadTimeout {
            base: heartbeat * 2,
            now: heartbeat * 2,
            last_silent: None,
        }
    }

    /// The timeout for a connection from `resume`, and the events it must get past before
    /// the usual timeout applies again.
    fn at(&self, resume: &BinlogPosition) -> (Duration, u64) {
        match &self.last_silent {
            Some((r, n)) if r == resume => (self.now, *n),
            _ => (self.base, 0),
        }
    }

    /// After a connection from `resume` ended with `end`.
    fn after(&mut self, resume: &BinlogPosition, end: &Result<StreamEnd, SourceError>) {
        let Ok(StreamEnd::Silent { received, .. }) = end else {
            self.now = self.base;
            self.last_silent = None;
            return;
        };
        let stuck = matches!(&self.last_silent, Some((r, n)) if r == resume && received <= n);
        self.now = match stuck {
            true => (self.now * 2).min(Self::MAX.max(self.base)),
            false => self.base,
        };
        if !stuck {
            self.last_silent = Some((resume.clone(), *received));
        }
    }

    /// What the next connection from the same position waits.
    fn now(&self) -> Duration {
        self.now
    }
}

enum StreamEnd {
    Shutdown,
    Disconnected(String),
    /// No event nor heartbeat came for the read timeout (`ms`), after `received` events.
    Silent {
        ms: u64,
        received: u64,
    },
    /// A reload added tables: open the stream again at the resume position.
    TablesAdded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_timeout_grows_only_while_stuck_at_one_place() {
        let s = Duration::from_secs;
        let mut t = ReadTimeout::new(s(1));
        let p = BinlogPosition::new(Arc::from("b.000001"), 100);
        let q = BinlogPosition::new(Arc::from("b.000001"), 900);
        let silent = |received| Ok(StreamEnd::Silent { ms: 0, received });
        // A first silence anywhere may be a dead link: the usual wait again.
        t.after(&p, &silent(3));
        assert_eq!(t.at(&p), (s(2), 3));
        // No further from the same place: twice as long, then twice again.
        t.after(&p, &silent(3));
        assert_eq!(t.at(&p), (s(4), 3));
        t.after(&p, &silent(2));
        assert_eq!(t.at(&p), (s(8), 3));
        // Another place: the usual wait, whatever was learnt.
        assert_eq!(t.at(&q), (s(2), 0));
        // Further than before: the usual wait.
        t.after(&p, &silent(4));
        assert_eq!(t.at(&p), (s(2), 4));
        // Anything but a silence forgets it.
        t.after(&p, &silent(4));
        t.after(&p, &Ok(StreamEnd::Disconnected("closed".into())));
        assert_eq!(t.at(&p), (s(2), 0));
        // The cap is never below the usual wait.
        let mut slow = ReadTimeout::new(s(400));
        for _ in 0..4 {
            slow.after(&p, &silent(1));
        }
        assert_eq!(slow.at(&p).0, s(800));
    }
}
