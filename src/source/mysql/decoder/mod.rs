//! The binlog event state machine, shared by the live stream and the file reader: tracks files,
//! positions and transactions, keeps a decode plan per table id, and turns events into
//! [`SourceEvent`]s. Events are dispatched by their type's name, one function each; every type
//! is handled or refused with its reason: nothing is skipped silently.
//!
//! Isolation: a rows event of a table no pipeline reads is counted (its index in the
//! transaction is part of every later position) and never decoded. A table a pipeline reads
//! whose values cannot be decoded is reported once as [`SourceEvent::TableFailed`]; the stream
//! goes on without it.

mod groups;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mysql_common::binlog::events::{Event, GtidEvent, RotateEvent};

pub use groups::GroupStats;

use super::ddl::{self, TableName};
use super::event_type::EventType;
use super::plan::TablePlan;
use super::rows::{self, RowsKind, RowsType};
use super::schema::TableSchema;
use super::schema_history::{SchemaAt, SchemaHistory};
use super::table_map::{Flavor, TableMap};
use crate::model::BinlogPosition;
use crate::source::{DecodeError, Op, RowChange, SourceEvent};

#[derive(Debug)]
struct Txn {
    file: Arc<str>,
    pos: u64,
    gtid: Option<Arc<str>>,
    /// Rows events seen so far in this transaction (all tables).
    rows_events: u64,
    ts_ms: u64,
    /// MariaDB GTID with FL_STANDALONE, or rows outside BEGIN: no COMMIT follows.
    standalone: bool,
}

/// Which tables to decode; the rows events of the others are only counted.
pub type TableFilter = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What the decoder knows of a table id.
enum TableEntry {
    /// No pipeline reads it: its rows events are counted, never parsed.
    Unread,
    Read(Arc<TablePlan>),
    /// Its values could not be decoded; reported, then treated as unread.
    Failed,
}

/// A checkpoint of format 1 counted rows across every table of the transaction: until that
/// count is reached in the first transaction, rows of all tables are counted to convert it.
struct LegacySkip {
    file: Arc<str>,
    pos: u64,
    rows_left: u64,
}

pub struct Decoder {
    file: Arc<str>,
    /// Where the next event starts (the end of the last one).
    next_pos: u64,
    flavor: Flavor,
    txn: Option<Txn>,
    tables: HashMap<u64, (Vec<u8>, TableEntry)>,
    history: SchemaHistory,
    /// (table, DDL position) already warned about: the history cannot tell the definition.
    warned: HashSet<(TableName, BinlogPosition)>,
    /// Read tables a DDL changed since the caller last asked, with the DDL's end.
    ddl_changed: Vec<(TableName, BinlogPosition)>,
    /// Rows of the first transaction at this position to skip (they were delivered).
    skip: Option<BinlogPosition>,
    legacy: Option<LegacySkip>,
    /// The end of the TRANSACTION_PAYLOAD whose inner events are being read.
    payload_end: Option<u64>,
    /// Only decode rows of these tables (None: all).
    pub filter: Option<TableFilter>,
    /// Tables whose values failed to decode (reported once; not decoded again this run).
    failed: HashSet<(String, String)>,
    /// Read tables a TABLE_MAP named since the stream started (or since their last drop): they
    /// exist, whatever the schema history could tell.
    mapped: HashSet<TableName>,
    /// Temporary tables sessions made (by the query events' thread id), from their logged
    /// `CREATE TEMPORARY TABLE` to their `DROP TEMPORARY TABLE`.
    temporaries: ddl::Temporaries,
    /// The group whose events are held until its end is read.
    held: Option<groups::HeldGroup>,
    /// A committed group being decoded a slice at a time.
    release: Option<groups::Release>,
    /// A committed XA transaction's prepared rows being decoded a slice at a time.
    xa_release: Option<groups::XaRelease>,
    /// Prepared XA transactions whose outcome has not been read, with their events.
    prepared: HashMap<super::xa::Xid, groups::PreparedXa>,
    /// Replaying a prepared XA transaction's events at its commit: positions do not move.
    replaying: bool,
    /// Bytes of a group held in memory before it is spilled, and where spill files go.
    hold_limit: usize,
    spill_dir: std::path::PathBuf,
    pub stats: GroupStats,
}

impl Decoder {
    pub fn new(start: &BinlogPosition, history: SchemaHistory) -> Self {
        Decoder {
            file: start.file.clone(),
            next_pos: start.pos,
            flavor: Flavor::default(),
            txn: None,
            tables: HashMap::new(),
            history,
            warned: HashSet::new(),
            ddl_changed: Vec::new(),
            skip: start.is_inside_transaction().then(|| start.clone()),
            legacy: None,
            payload_end: None,
            filter: None,
            failed: HashSet::new(),
            mapped: HashSet::new(),
            temporaries: ddl::Temporaries::default(),
            held: None,
            release: None,
            xa_release: None,
            prepared: HashMap::new(),
            replaying: false,
            hold_limit: 32 << 20,
            spill_dir: std::env::temp_dir(),
            stats: GroupStats::default(),
        }
    }

    /// Groups are held up to `limit` bytes in memory, beyond in a spill file in `dir`.
    pub fn with_hold(mut self, limit: usize, dir: std::path::PathBuf) -> Self {
        self.hold_limit = limit;
        self.spill_dir = dir;
        self
    }

    /// Resume a checkpoint of format 1 (`row` counted rows of every table of the transaction).
    pub fn with_legacy_rows(mut self, rows: u64) -> Self {
        if rows > 0 {
            self.legacy = Some(LegacySkip {
                file: self.file.clone(),
                pos: self.next_pos,
                rows_left: rows,
            });
        }
        self
    }

    /// The schema history as the decoder knows it now.
    pub fn history(&self) -> &SchemaHistory {
        &self.history
    }

    /// Records a table's definition from `from` on; decode plans are rebuilt.
    pub fn record_schema(
        &mut self,
        t: &TableName,
        from: BinlogPosition,
        schema: Option<TableSchema>,
    ) {
        self.history.record(&t.0, &t.1, from, schema);
        self.tables.clear();
    }

    /// Read tables whose columns a DDL changed since the last call, with the DDL's end.
    pub fn take_ddl_changed(&mut self) -> Vec<(TableName, BinlogPosition)> {
        std::mem::take(&mut self.ddl_changed)
    }

    /// The sessions' temporary tables as the stream has read them so far.
    pub fn temporaries(&self) -> &ddl::Temporaries {
        &self.temporaries
    }

    /// Whether a pipeline reads `t` (and it has not failed).
    pub fn reads(&self, t: &TableName) -> bool {
        !self.failed.contains(t) && self.filter.as_ref().is_none_or(|f| f(&t.0, &t.1))
    }

    /// Where to resume to continue exactly after what was emitted so far.
    pub fn resume_position(&self) -> BinlogPosition {
        let skip = self.skip.clone();
        match &self.txn {
            Some(t) => {
                let mut p = BinlogPosition {
                    event: t.rows_events,
                    gtid: t.gtid.clone(),
                    ..BinlogPosition::new(t.file.clone(), t.pos)
                };
                if let Some(s) = skip.filter(|s| s.pos == t.pos && *s.file == *t.file) {
                    if (s.event, s.row) > (p.event, p.row) {
                        (p.event, p.row) = (s.event, s.row);
                    }
                }
                p
            }
            None => match skip {
                Some(s) if s.pos == self.next_pos && *s.file == *self.file => s,
                _ => BinlogPosition::new(self.file.clone(), self.next_pos),
            },
        }
    }

    /// Forget the open transaction (after a disconnect): the stream restarts at `p`.
    pub fn reset_to(&mut self, p: &BinlogPosition) {
        // A group being held (or released in part) is read again from its start.
        self.held = None;
        self.release = None;
        self.xa_release = None;
        self.replaying = false;
        self.file = p.file.clone();
        self.next_pos = p.pos;
        self.txn = None;
        self.payload_end = None;
        self.skip = p.is_inside_transaction().then(|| p.clone());
    }

    fn err(&self, code: u8, pos: u64, reason: impl Into<String>) -> DecodeError {
        DecodeError::Event {
            file: self.file.to_string(),
            pos,
            event_type: code,
            reason: reason.into(),
        }
    }

    fn begin(&mut self, gtid: Option<Arc<str>>, ts_ms: u64, standalone: bool, start: u64) {
        self.txn = Some(Txn {
            file: self.file.clone(),
            pos: start,
            gtid,
            rows_events: 0,
            ts_ms,
            standalone,
        });
    }

    fn end_txn(&mut self, out: &mut Vec<SourceEvent>, at: &At) {
        let end = at.end;
        self.txn = None;
        self.legacy = None;
        if let Some(s) = &self.skip {
            if s.pos < end || *s.file != *self.file {
                self.skip = None;
            }
        }
        out.push(SourceEvent::Progress {
            position: BinlogPosition::new(self.file.clone(), end),
            ts_ms: Some(at.ts_ms),
        });
    }

    /// Handles one event of a group already known to have committed (or of none).
    fn process(&mut self, ev: &Event, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        let h = ev.header();
        let code = h.event_type_raw();
        let log_pos = h.log_pos() as u64;
        let start = self.next_pos;
        let in_payload = self.payload_end.is_some() && log_pos == 0;
        // Events inside a TRANSACTION_PAYLOAD carry no position of their own.
        let end = if in_payload {
            self.payload_end.unwrap_or(start)
        } else {
            log_pos
        };
        let at = At {
            code,
            start,
            end,
            ts_ms: h.timestamp() as u64 * 1000,
            server_id: h.server_id(),
            thread_specific: h.flags_raw() & super::event_type::LOG_EVENT_THREAD_SPECIFIC_F != 0,
            thread_id: match EventType::from_code(code) {
                EventType::Query | EventType::QueryCompressed => super::query::thread_id(ev),
                _ => 0,
            },
        };
        match EventType::from_code(code) {
            EventType::Rotate => return self.on_rotate(ev, &at),
            EventType::FormatDescription => self.on_format_description(ev),
            EventType::FileMarker | EventType::NoData => {}
            // `encrypt_binlog=ON`: a replica connection receives the events after it decrypted
            // (a file read offline is refused before it gets here, see `file::decode`).
            EventType::MariaStartEncryption => {}
            EventType::Heartbeat => {
                if self.txn.is_none() && log_pos != 0 {
                    // The reader is at the end of the binlog with nothing new.
                    out.push(SourceEvent::Progress {
                        position: BinlogPosition::new(self.file.clone(), log_pos),
                        ts_ms: None,
                    });
                }
                return Ok(());
            }
            EventType::Query | EventType::QueryCompressed => {
                if let Some(s) = super::query::statement(ev) {
                    let s = s.map_err(|r| self.err(code, start, r))?;
                    self.on_query(&s.db, &s.sql, s.dialect, &at, out)?;
                }
            }
            EventType::Xid => {
                // The xid value itself is not needed (and 5.1 betas wrote it differently).
                if in_payload {
                    self.payload_end = None;
                }
                self.end_txn(out, &at);
            }
            EventType::XaPrepare => self.end_txn(out, &at),
            EventType::MysqlGtid { anonymous, .. } => self.on_mysql_gtid(ev, anonymous, &at)?,
            EventType::MariaGtid => self.on_maria_gtid(ev.data(), &at)?,
            EventType::TableMap => {
                let tid_len = table_id_len(ev, code);
                self.on_table_map(ev.data(), tid_len, &at, out)?;
            }
            EventType::Rows(t) => {
                let tid_len = if code >= 160 {
                    6
                } else {
                    table_id_len(ev, code)
                };
                self.on_rows(t, ev.data(), tid_len, &at, out)?;
            }
            EventType::TransactionPayload => {
                self.payload_end = Some(log_pos);
                return Ok(());
            }
            EventType::StatementLoad => {
                tracing::warn!(position = %format!("{}:{start}", self.file), event_type = code,
                    "a LOAD DATA logged as a statement; its rows are not in the binlog and cannot be emitted");
            }
            refused @ (EventType::Incident | EventType::PreGaRows | EventType::Unknown(_)) => {
                return Err(self.err(code, start, refusal(refused)))
            }
        }
        self.advance(end, in_payload);
        Ok(())
    }

    fn advance(&mut self, end: u64, in_payload: bool) {
        if !in_payload && end != 0 && !self.replaying {
            self.next_pos = end;
        }
    }

    fn on_rotate(&mut self, ev: &Event, at: &At) -> Result<(), DecodeError> {
        let r: RotateEvent<'_> = ev
            .read_event()
            .map_err(|e| self.err(at.code, at.start, e.to_string()))?;
        let name = rotate_name(ev, r.name_raw());
        if at.end != 0 {
            // A real rotate ends the file; table ids may be reused in the next.
            self.tables.clear();
        }
        self.file = Arc::from(name.as_str());
        self.next_pos = r.position();
        Ok(())
    }

    fn on_format_description(&mut self, ev: &Event) {
        // The server version sits after the 2-byte binlog version, in 50 bytes.
        let version = ev.data().get(2..52).unwrap_or_default();
        if version.windows(7).any(|w| w == b"MariaDB") {
            self.flavor = Flavor::MariaDb;
        }
    }

    /// A statement logged as text, read in its session's `dialect`.
    fn on_query(
        &mut self,
        schema: &str,
        q: &str,
        dialect: super::query::Dialect,
        at: &At,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        let trimmed = q.trim();
        let head = ddl::head(trimmed, dialect);
        if head.starts_with("BEGIN") || head.starts_with("XA START") {
            if self.txn.is_none() {
                self.begin(None, at.ts_ms, false, at.start);
            }
        } else if head.starts_with("XA END") {
            // Inside an XA group: its XA_PREPARE event (or XA COMMIT … ONE PHASE) ends it.
        } else if head.starts_with("SAVEPOINT")
            || head.starts_with("ROLLBACK TO")
            || head.starts_with("RELEASE SAVEPOINT")
        {
            // Inside the transaction: applied to its rows while the group was held (a rollback
            // to a savepoint dropped the rows after it); the transaction goes on.
        } else if let Some(o) = super::xa::outcome(trimmed) {
            self.on_xa_outcome(o, at, out)?;
        } else if head.starts_with("COMMIT") || head.starts_with("ROLLBACK") {
            self.end_txn(out, at);
        } else if is_statement_dml(&head) {
            // A change logged as a statement (a session with binlog_format=STATEMENT): its rows
            // are not in the binlog. Said loudly; the position moves on.
            // `temporary_tables`: the server flagged it as using temporary tables; if it
            // changed only those, nothing is missing.
            tracing::warn!(db = %schema, position = %format!("{}:{}", self.file, at.start),
                statement = %trimmed.chars().take(200).collect::<String>(),
                temporary_tables = at.thread_specific,
                "a change was logged as a statement, not as rows; its rows cannot be emitted \
                 (set binlog_format=ROW for every session)");
            if self.txn.is_none() {
                out.push(SourceEvent::Progress {
                    position: BinlogPosition::new(self.file.clone(), at.end),
                    ts_ms: Some(at.ts_ms),
                });
            }
        } else {
            // DDL or another statement logged as text: its own transaction.
            let temporary = self
                .temporaries
                .track(trimmed, schema, dialect, at.thread_id);
            if temporary && self.txn.is_some() {
                // Inside the session's transaction, which goes on.
                return Ok(());
            }
            // `CREATE … SELECT`: its rows follow in the same transaction, which goes on; the
            // statement's point is inside it (where a restart resumes, where the table's new
            // definition starts: before the rows that follow).
            let inside = self.txn.as_ref().is_some_and(|t| {
                let maria = self.flavor == Flavor::MariaDb && !t.standalone && t.gtid.is_some();
                ddl::ddl_inside_group(maria, trimmed)
            });
            let resume = match inside {
                true => self.resume_position(),
                false => BinlogPosition::new(self.file.clone(), at.end),
            };
            // Resumed after it (a checkpoint inside that transaction): it was emitted.
            let replayed = inside
                && self.txn.as_ref().is_some_and(|t| {
                    self.skip.as_ref().is_some_and(|s| {
                        s.pos == t.pos && *s.file == *t.file && s.event >= t.rows_events
                    })
                });
            // A statement about the session's temporary tables only is no DDL of a table.
            let parsed = (!temporary).then(|| ddl::parse(trimmed, schema, dialect));
            let parsed = parsed.flatten().filter(|d| {
                !self
                    .temporaries
                    .shadows(d, at.thread_specific, at.thread_id)
            });
            if let Some(d) = &parsed {
                let gone = match replayed {
                    true => Vec::new(),
                    false => self.truncated(d, at, &resume, out),
                };
                let named = match d.kind {
                    // The database's tables went with it.
                    ddl::DdlKind::DropDatabase(_) => gone,
                    _ => d.tables.clone(),
                };
                let changed: Vec<TableName> = named
                    .into_iter()
                    .filter(|t| {
                        d.changes_columns_of(t) && self.reads(t) && self.history.tracks(&t.0, &t.1)
                    })
                    .collect();
                for t in changed {
                    // A boundary: the definition from here on is recorded by the caller if
                    // it can read it now (at the server's end), else found unknown.
                    self.history.record(&t.0, &t.1, resume.clone(), None);
                    self.ddl_changed.push((t, resume.clone()));
                }
                self.tables.clear();
            }
            if !inside {
                self.txn = None;
                self.skip = None;
                self.legacy = None;
            }
            out.push(SourceEvent::Ddl {
                db: schema.to_string(),
                query: q.to_string(),
                resume,
                parsed,
            });
        }
        Ok(())
    }

    fn on_mysql_gtid(&mut self, ev: &Event, anonymous: bool, at: &At) -> Result<(), DecodeError> {
        let gtid = if anonymous {
            None
        } else {
            let g: GtidEvent = ev
                .read_event()
                .map_err(|e| self.err(at.code, at.start, e.to_string()))?;
            let sid = g.sid();
            let uuid = format!(
                "{}-{}-{}-{}-{}",
                hex(&sid[0..4]),
                hex(&sid[4..6]),
                hex(&sid[6..8]),
                hex(&sid[8..10]),
                hex(&sid[10..16])
            );
            Some(match g.tag() {
                Some(tag) => format!("{uuid}:{}:{}", tag.as_str(), g.gno()),
                None => format!("{uuid}:{}", g.gno()),
            })
        };
        self.begin(gtid.map(Arc::from), at.ts_ms, false, at.start);
        Ok(())
    }

    /// MariaDB GTID: seq_no u64, domain_id u32, flags u8 (<https://mariadb.com/kb/en/gtid_event/>).
    fn on_maria_gtid(&mut self, data: &[u8], at: &At) -> Result<(), DecodeError> {
        self.flavor = Flavor::MariaDb;
        let (Some(seq), Some(domain), Some(&flags)) = (
            data.get(0..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            data.get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes),
            data.get(12),
        ) else {
            return Err(self.err(
                at.code,
                at.start,
                format!("MariaDB GTID event of {} bytes", data.len()),
            ));
        };
        let gtid = format!("{domain}-{}-{seq}", at.server_id);
        let standalone = flags & super::query::FL_STANDALONE != 0;
        self.begin(Some(Arc::from(gtid)), at.ts_ms, standalone, at.start);
        Ok(())
    }

    fn on_table_map(
        &mut self,
        data: &[u8],
        tid_len: usize,
        at: &At,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        let (id, db, table) =
            TableMap::names(data, tid_len).map_err(|r| self.err(at.code, at.start, r))?;
        let key = (db, table);
        if let Some((raw, entry)) = self.tables.get(&id) {
            // A table unread when it was mapped may be read now (a reload added it).
            let newly_read = matches!(entry, TableEntry::Unread) && self.reads(&key);
            if raw.as_slice() == data && !newly_read {
                return Ok(());
            }
        }
        let entry = if !self.reads(&key) {
            TableEntry::Unread
        } else {
            self.mapped.insert(key.clone());
            let here = self.position_at(at.start, 0, 0);
            if let SchemaAt::Unknown { since } = self.history.at(&key.0, &key.1, &here) {
                let since = since.clone();
                self.warn_unknown(&key, since, &here);
            }
            let schema_at = self.history.at(&key.0, &key.1, &here);
            let plan = TableMap::parse(data, tid_len, self.flavor)
                .map_err(|reason| DecodeError::TableMap {
                    db: key.0.clone(),
                    table: key.1.clone(),
                    reason,
                })
                .and_then(|tm| TablePlan::build(&tm, schema_at, self.flavor));
            match plan {
                Ok(p) => TableEntry::Read(Arc::new(p)),
                Err(e) => {
                    let event = self.txn.as_ref().map_or(0, |t| t.rows_events);
                    let position = self.position_at(at.start, event, 0);
                    self.fail_table(key, e, position, out)
                }
            }
        };
        self.tables.insert(id, (data.to_vec(), entry));
        Ok(())
    }

    /// A statement that removed rows of read tables with no rows event (`TRUNCATE`, `CREATE
    /// OR REPLACE TABLE`, `DROP TABLE`, `DROP DATABASE`, partitions truncated, dropped, converted
    /// or exchanged):
    /// a truncate of each, whole or of its partitions. Rows an exchange brought in are not in the binlog
    /// at all: said loudly (a backfill streams them).
    ///
    /// Returns the read tables whose rows went.
    fn truncated(
        &mut self,
        d: &ddl::Ddl,
        at: &At,
        resume: &BinlogPosition,
        out: &mut Vec<SourceEvent>,
    ) -> Vec<TableName> {
        let in_db: Vec<TableName>;
        let gone: Vec<(&TableName, Option<Vec<String>>)> = match &d.kind {
            ddl::DdlKind::Truncate => d.tables.iter().map(|t| (t, None)).collect(),
            // Every table of the database: those the history keeps or a TABLE_MAP named.
            ddl::DdlKind::DropDatabase(db) => {
                let mut names: std::collections::BTreeSet<TableName> = self
                    .history
                    .tables_in(db)
                    .into_iter()
                    .map(|t| (db.clone(), t))
                    .collect();
                names.extend(self.mapped.iter().filter(|t| t.0 == *db).cloned());
                in_db = names.into_iter().filter(|t| self.existed(t, at)).collect();
                in_db.iter().map(|t| (t, None)).collect()
            }
            // A plain DROP succeeded: every table it names was there.
            ddl::DdlKind::DropTable { if_exists: false } => {
                d.tables.iter().map(|t| (t, None)).collect()
            }
            // `IF EXISTS` / `OR REPLACE` are logged whether or not the table was there: only
            // a table that existed lost rows.
            ddl::DdlKind::ReplaceTable | ddl::DdlKind::DropTable { if_exists: true } => d
                .tables
                .iter()
                .filter(|t| self.existed(t, at))
                .map(|t| (t, None))
                .collect(),
            ddl::DdlKind::TruncatePartitions(p) => d
                .tables
                .iter()
                .filter_map(|t| Some((t, Some(self.partitions_with_rows(t, p, at)?))))
                .collect(),
            // The converted table's rows left it (and it is gone); those it brought into the
            // partitioned table are in no rows event.
            ddl::DdlKind::TableToPartition => {
                let (Some(t), Some(x)) = (d.tables.first(), d.tables.get(1)) else {
                    return Vec::new();
                };
                self.rows_brought_in(t, x, "CONVERT TABLE … TO PARTITION", None, at);
                vec![(x, None)]
            }
            ddl::DdlKind::ExchangePartition(p) => {
                let (Some(t), Some(other)) = (d.tables.first(), d.tables.get(1)) else {
                    return Vec::new();
                };
                for (into, from) in [(t, other), (other, t)] {
                    self.rows_brought_in(into, from, "EXCHANGE PARTITION", Some(p), at);
                }
                vec![(t, Some(vec![p.clone()])), (other, None)]
            }
            _ => return Vec::new(),
        };
        let position = self.position_at(at.start, 0, 0);
        let gone: Vec<(TableName, Option<Vec<String>>)> = gone
            .into_iter()
            .filter(|(t, _)| self.reads(t))
            .map(|(t, p)| (t.clone(), p))
            .collect();
        let dropped = matches!(
            d.kind,
            ddl::DdlKind::DropTable { .. }
                | ddl::DdlKind::DropDatabase(_)
                | ddl::DdlKind::TableToPartition
        );
        if dropped {
            for (t, _) in &gone {
                self.mapped.remove(t);
            }
        }
        let mut tables = Vec::with_capacity(gone.len());
        for (t, partitions) in gone {
            out.push(SourceEvent::Truncated(crate::source::TableTruncated {
                db: t.0.clone(),
                table: t.1.clone(),
                partitions,
                dropped,
                position: position.clone(),
                resume: resume.clone(),
                server_id: at.server_id,
                ts_ms: at.ts_ms,
                origin: None,
            }));
            tables.push(t);
        }
        tables
    }

    /// Says loudly that `statement` (on `partition`, where it names one) moved rows of `from`
    /// into the read table `into` with no rows event (the rows it took away are truncate
    /// records; these are not in the stream).
    fn rows_brought_in(
        &self,
        into: &TableName,
        from: &TableName,
        statement: &str,
        partition: Option<&str>,
        at: &At,
    ) {
        if self.reads(into) {
            tracing::warn!(table = %format!("{}.{}", into.0, into.1),
                from = %format!("{}.{}", from.0, from.1), partition = partition.unwrap_or(""),
                position = %format!("{}:{}", self.file, at.start),
                "{statement} brought rows into a read table with no rows event: the rows it took \
                 away are truncate records, the rows it brought are not in the stream (backfill \
                 the table to stream them)");
        }
    }

    /// Of `partitions` of `t`, those that may hold rows the stream showed (`None`: none). A
    /// table partitioned `BY SYSTEM_TIME` keeps its current rows in its `CURRENT` partition;
    /// the others hold history only (partition names are case-insensitive). Where the history
    /// cannot tell, every partition named may.
    fn partitions_with_rows(
        &self,
        t: &TableName,
        partitions: &[String],
        at: &At,
    ) -> Option<Vec<String>> {
        let here = self.position_at(at.start, 0, 0);
        let SchemaAt::Known(TableSchema {
            current_partition: Some(current),
            ..
        }) = self.history.at(&t.0, &t.1, &here)
        else {
            return Some(partitions.to_vec());
        };
        let kept: Vec<String> = partitions
            .iter()
            .filter(|p| p.to_lowercase() == current.to_lowercase())
            .cloned()
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    /// Whether `t` existed when the statement at `at` ran: the schema history knows its
    /// definition there, or (where the history cannot tell) a TABLE_MAP named it since the
    /// stream started. Without a history (binlog files read offline) it is taken as existing.
    fn existed(&self, t: &TableName, at: &At) -> bool {
        let here = self.position_at(at.start, 0, 0);
        match self.history.at(&t.0, &t.1, &here) {
            SchemaAt::Known(_) | SchemaAt::NotTracked => true,
            SchemaAt::Unknown { .. } => self.mapped.contains(t),
        }
    }

    /// Says once per DDL that the history cannot tell a table's definition.
    fn warn_unknown(&mut self, key: &TableName, since: BinlogPosition, here: &BinlogPosition) {
        if self.warned.len() < 10_000 && self.warned.insert((key.clone(), since.clone())) {
            tracing::warn!(table = %format!("{}.{}", key.0, key.1), position = %here, ddl = %since,
                "the schema history cannot tell this table's definition here (a DDL changed it \
                 and its result was not recorded): rows are typed from the binlog alone \
                 (MariaDB JSON columns as text, no hidden-column names)");
        }
    }

    /// Reports a table whose values cannot be decoded; its pipelines stop, the stream goes on.
    fn fail_table(
        &mut self,
        key: (String, String),
        error: DecodeError,
        position: BinlogPosition,
        out: &mut Vec<SourceEvent>,
    ) -> TableEntry {
        self.failed.insert(key.clone());
        out.push(SourceEvent::TableFailed {
            db: key.0,
            table: key.1,
            error: Arc::new(error),
            position,
        });
        TableEntry::Failed
    }

    /// The position of the transaction in progress (or of the event at `start`), at rows
    /// event `event`, row `row`.
    fn position_at(&self, start: u64, event: u64, row: u64) -> BinlogPosition {
        match &self.txn {
            Some(t) => BinlogPosition {
                event,
                row,
                gtid: t.gtid.clone(),
                ..BinlogPosition::new(t.file.clone(), t.pos)
            },
            None => BinlogPosition::new(self.file.clone(), start),
        }
    }

    fn on_rows(
        &mut self,
        t: RowsType,
        data: &[u8],
        tid_len: usize,
        at: &At,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        let table_id = rows::table_id(data, tid_len).map_err(|r| self.err(at.code, at.start, r))?;
        let Some((map_raw, entry)) = self.tables.get(&table_id) else {
            return Err(DecodeError::NoTableMap {
                file: self.file.to_string(),
                pos: at.start,
                table_id,
            });
        };
        let plan = match entry {
            TableEntry::Read(p) => Some(p.clone()),
            TableEntry::Unread | TableEntry::Failed => None,
        };
        let map_raw = (self.legacy.is_some() && plan.is_none()).then(|| map_raw.clone());
        if self.txn.is_none() {
            // Rows outside BEGIN/COMMIT (non-transactional engines on old servers).
            self.begin(None, at.ts_ms, true, at.start);
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        let index = txn.rows_events;
        txn.rows_events += 1;
        let mut skip_rows = match &self.skip {
            Some(s) if s.pos == txn.pos && *s.file == *txn.file => {
                if index < s.event {
                    u64::MAX
                } else if index == s.event {
                    s.row
                } else {
                    0
                }
            }
            _ => 0,
        };
        if self.legacy.is_some() {
            skip_rows =
                skip_rows.max(self.legacy_skip(t, data, tid_len, plan.as_deref(), map_raw, at)?);
        }
        if let (Some(plan), true) = (plan, skip_rows != u64::MAX) {
            let rows = RowsAt {
                t,
                tid_len,
                index,
                skip_rows,
            };
            if let Some((e, bad_row)) = self.decode_rows(&rows, data, &plan, at, out)? {
                // The rows before the bad one stay; the table's pipelines stop at it.
                let position = self.position_at(at.start, index, bad_row);
                let key = (plan.db.clone(), plan.table.clone());
                let entry = self.fail_table(key, e, position, out);
                if let Some(slot) = self.tables.get_mut(&table_id) {
                    slot.1 = entry;
                }
            }
        }
        // STMT_END_F on a standalone transaction without GTID (no XID follows).
        let standalone = self
            .txn
            .as_ref()
            .is_some_and(|t| t.standalone && t.gtid.is_none());
        let stmt_end = data
            .get(tid_len..tid_len + 2)
            .is_some_and(|f| f[0] & 1 != 0);
        if standalone && stmt_end {
            self.end_txn(out, at);
        }
        Ok(())
    }

    /// Decodes the rows of one event into `out`. `Ok(Some((error, row)))`: a value of the
    /// table could not be decoded at `row` (the table fails, the stream goes on); `Err`: the
    /// event itself is corrupt.
    fn decode_rows(
        &self,
        r: &RowsAt,
        data: &[u8],
        plan: &Arc<TablePlan>,
        at: &At,
        out: &mut Vec<SourceEvent>,
    ) -> Result<Option<(DecodeError, u64)>, DecodeError> {
        let Some(txn) = self.txn.as_ref() else {
            return Ok(None);
        };
        let base = BinlogPosition {
            event: r.index,
            gtid: txn.gtid.clone(),
            ..BinlogPosition::new(txn.file.clone(), txn.pos)
        };
        let op = match r.t.kind {
            RowsKind::Write => Op::Insert,
            RowsKind::Update => Op::Update,
            RowsKind::Delete => Op::Delete,
        };
        let ev = rows::parse_rows_event(r.t, data, r.tid_len)
            .map_err(|reason| self.err(at.code, at.start, reason))?;
        let left_out = rows::left_out(plan, &ev);
        if let Some(lo) = left_out.as_ref().filter(|lo| {
            plan.row_end
                .is_some_and(|e| lo.columns.binary_search(&e).is_ok())
        }) {
            // Without the row end, a system-versioned table's rows cannot be told apart.
            return Ok(Some((rows::left_out_error(plan, lo), 0)));
        }
        let left_out = left_out.map(Arc::new);
        let mut next_row = 0;
        let decoded = rows::decode_rows(plan, &ev, |row, before, after| {
            next_row = row + 1;
            if row < r.skip_rows {
                return;
            }
            let Some(op) = plan.versioned_op(op, before.as_deref(), after.as_deref()) else {
                return;
            };
            // A versioned table's delete is an update of the row end: the record has no after.
            let after = if op == Op::Delete { None } else { after };
            out.push(SourceEvent::Row(RowChange {
                table: plan.clone(),
                op,
                before,
                after,
                position: BinlogPosition {
                    row,
                    ..base.clone()
                },
                server_id: at.server_id,
                ts_ms: txn.ts_ms,
                left_out: left_out.clone(),
                key_side: None,
                origin: None,
            }));
        });
        Ok(decoded.err().map(|e| (e, next_row)))
    }

    /// Converts a format-1 checkpoint: rows of every table count until `rows_left` is spent.
    /// Returns how many rows of this event to skip.
    fn legacy_skip(
        &mut self,
        t: RowsType,
        data: &[u8],
        tid_len: usize,
        plan: Option<&TablePlan>,
        map_raw: Option<Vec<u8>>,
        at: &At,
    ) -> Result<u64, DecodeError> {
        let (Some(l), Some(txn)) = (&self.legacy, &self.txn) else {
            return Ok(0);
        };
        if l.pos != txn.pos || *l.file != *txn.file {
            return Ok(0);
        }
        let rows_left = l.rows_left;
        let owned;
        let plan = match (plan, map_raw) {
            (Some(p), _) => p,
            (None, Some(raw)) => {
                let tm = TableMap::parse(&raw, tid_len, self.flavor)
                    .map_err(|r| self.err(at.code, at.start, r))?;
                owned = TablePlan::build(&tm, SchemaAt::NotTracked, self.flavor)?;
                &owned
            }
            (None, None) => return Ok(0),
        };
        let ev =
            rows::parse_rows_event(t, data, tid_len).map_err(|r| self.err(at.code, at.start, r))?;
        let n = rows::count_rows(plan, &ev).map_err(|e| {
            self.err(
                at.code,
                at.start,
                format!(
                    "converting a checkpoint of format 1 needs the rows of every table of this \
                     transaction counted, and {e}; delete the checkpoint and backfill the pipelines"
                ),
            )
        })?;
        let skip = rows_left.min(n);
        if let Some(l) = self.legacy.as_mut() {
            l.rows_left -= skip;
            if l.rows_left == 0 {
                self.legacy = None;
            }
        }
        Ok(if skip == n { u64::MAX } else { skip })
    }
}

/// A rows event's place: its type, table-id width, index in the transaction, rows to skip.
struct RowsAt {
    t: RowsType,
    tid_len: usize,
    index: u64,
    skip_rows: u64,
}

/// Where an event sits, and what its header says.
#[derive(Clone, Copy)]
struct At {
    code: u8,
    start: u64,
    end: u64,
    ts_ms: u64,
    server_id: u32,
    /// The statement used temporary tables (`LOG_EVENT_THREAD_SPECIFIC_F`).
    thread_specific: bool,
    /// The session of a query event (0 for other events).
    thread_id: u32,
}

/// The table-id width of this server's TABLE_MAP and rows events (4 on very old servers).
fn table_id_len(ev: &Event, code: u8) -> usize {
    use mysql_common::binlog::consts::EventType as T;
    let post_header = T::try_from(code)
        .map(|t| ev.fde().get_event_type_header_length(t))
        .unwrap_or(8);
    if post_header == 6 {
        4
    } else {
        6
    }
}

/// A rotate's file name. A fake rotate that arrives before the format description carries the
/// 4-byte CRC32 in its name (the reader does not yet know checksums are on).
fn rotate_name(ev: &Event, raw: &[u8]) -> String {
    let mut name = raw.to_vec();
    let data = ev.data();
    if name.len() > 4 && data.len() >= 4 {
        let mut whole = Vec::with_capacity(19 + data.len());
        mysql_common::proto::MySerialize::serialize(&ev.header(), &mut whole);
        whole.extend_from_slice(&data[..data.len() - 4]);
        let tail = &name[name.len() - 4..];
        if crc32fast::hash(&whole).to_le_bytes() == tail {
            name.truncate(name.len() - 4);
        }
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// Whether a statement logged as text changes rows (statement-based logging).
/// Whether a statement whose first words are `head` (see [`ddl::head`]) changes rows: a change
/// logged as a statement, not as rows.
fn is_statement_dml(head: &str) -> bool {
    matches!(
        head.split(' ').next(),
        Some("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD")
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why an event stops the stream (it is never skipped).
fn refusal(t: EventType) -> &'static str {
    match t {
        EventType::Incident => {
            "INCIDENT event: the server reports lost changes; \
             re-snapshot the tables, then restart from a position after this event"
        }
        EventType::PreGaRows => "pre-GA rows events of MySQL 5.1.0–5.1.15 are not supported",
        _ => "unknown event type; refusing to skip it",
    }
}
