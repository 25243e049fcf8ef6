//! The binlog event state machine: tracks files, positions and transactions, keeps a decode
//! plan per table id, and turns events into [`SourceEvent`]s. Shared by the live stream and
//! the file reader. Every event type is handled or refused by name: nothing is skipped
//! without a reason written here.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_common::binlog::events::{Event, GtidEvent, QueryEvent, RotateEvent, TableMapEvent};

use super::decode::{self, TablePlan};
use super::schema::Schemas;
use crate::source::{DecodeError, Op, Position, RowChange, SourceEvent};

// MariaDB's event types, which `mysql_common` does not decode.
const MARIA_ANNOTATE_ROWS: u8 = 160;
const MARIA_BINLOG_CHECKPOINT: u8 = 161;
const MARIA_GTID: u8 = 162;
const MARIA_GTID_LIST: u8 = 163;
const MARIA_START_ENCRYPTION: u8 = 164;
const MARIA_QUERY_COMPRESSED: u8 = 165;

#[derive(Debug)]
struct Txn {
    file: Arc<str>,
    pos: u64,
    gtid: Option<Arc<str>>,
    rows: u64,
    ts_ms: u64,
    /// MariaDB GTID with FL_STANDALONE: a single statement, no BEGIN / COMMIT.
    standalone: bool,
}

/// Which tables to decode; the rows of the others are only counted.
pub type TableFilter = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

pub struct Decoder {
    file: Arc<str>,
    /// Where the next event starts (the end of the last one).
    next_pos: u64,
    txn: Option<Txn>,
    plans: HashMap<u64, (Vec<u8>, Arc<TablePlan>)>,
    schemas: Arc<Schemas>,
    /// Rows of the first transaction at this position to skip (they were delivered).
    skip: Option<Position>,
    /// The end of the TRANSACTION_PAYLOAD whose inner events are being read.
    payload_end: Option<u64>,
    /// Only decode rows of these tables (None: all). Other tables' rows still count for positions.
    pub filter: Option<TableFilter>,
}

impl Decoder {
    pub fn new(start: &Position, schemas: Arc<Schemas>) -> Self {
        Decoder {
            file: start.file.clone(),
            next_pos: start.pos,
            txn: None,
            plans: HashMap::new(),
            schemas,
            skip: (start.row > 0).then(|| start.clone()),
            payload_end: None,
            filter: None,
        }
    }

    pub fn set_schemas(&mut self, schemas: Arc<Schemas>) {
        self.schemas = schemas;
        self.plans.clear();
    }

    /// Where to resume to continue exactly after what was emitted so far.
    pub fn resume_position(&self) -> Position {
        match &self.txn {
            Some(t) => Position {
                file: t.file.clone(),
                pos: t.pos,
                row: t.rows.max(
                    self.skip
                        .as_ref()
                        .filter(|s| s.pos == t.pos && *s.file == *t.file)
                        .map_or(0, |s| s.row),
                ),
                gtid: t.gtid.clone(),
            },
            None => Position {
                file: self.file.clone(),
                pos: self.next_pos,
                row: self.skip.as_ref().map_or(0, |s| s.row),
                gtid: None,
            },
        }
    }

    /// Forget the open transaction (after a disconnect): the stream restarts at `resume_position`.
    pub fn reset_to(&mut self, p: &Position) {
        self.file = p.file.clone();
        self.next_pos = p.pos;
        self.txn = None;
        self.payload_end = None;
        self.skip = (p.row > 0).then(|| p.clone());
    }

    fn err(&self, ev_type: u8, pos: u64, reason: impl Into<String>) -> DecodeError {
        DecodeError::Event {
            file: self.file.to_string(),
            pos,
            event_type: ev_type,
            reason: reason.into(),
        }
    }

    fn begin(&mut self, gtid: Option<Arc<str>>, ts_ms: u64, standalone: bool, start: u64) {
        self.txn = Some(Txn {
            file: self.file.clone(),
            pos: start,
            gtid,
            rows: 0,
            ts_ms,
            standalone,
        });
    }

    fn end_txn(&mut self, out: &mut Vec<SourceEvent>, end: u64) {
        self.txn = None;
        if let Some(s) = &self.skip {
            if s.pos < end || *s.file != *self.file {
                self.skip = None;
            }
        }
        out.push(SourceEvent::Progress(Position::new(
            self.file.to_string(),
            end,
        )));
    }

    /// Handles one event; appends what it produced to `out`.
    pub fn handle(&mut self, ev: &Event, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
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
        let ts_ms = h.timestamp() as u64 * 1000;
        let data = ev.data();
        let io = |e: std::io::Error| self.err(code, start, e.to_string());

        match code {
            // ROTATE
            4 => {
                let r: RotateEvent<'_> = ev.read_event().map_err(io)?;
                let mut name = r.name_raw().to_vec();
                // A fake rotate that arrives before the format description carries the
                // 4-byte CRC32 in its name (the reader does not yet know checksums are on).
                if name.len() > 4 {
                    let mut whole = Vec::with_capacity(19 + data.len());
                    let mut hdr = Vec::new();
                    mysql_common::proto::MySerialize::serialize(&h, &mut hdr);
                    whole.extend_from_slice(&hdr);
                    whole.extend_from_slice(&data[..data.len() - 4]);
                    let tail = &name[name.len() - 4..];
                    if crc32fast::hash(&whole).to_le_bytes() == tail {
                        name.truncate(name.len() - 4);
                    }
                }
                let name = String::from_utf8_lossy(&name).into_owned();
                if log_pos != 0 {
                    // A real rotate ends the file; table ids may be reused in the next.
                    self.plans.clear();
                }
                self.file = Arc::from(name.as_str());
                self.next_pos = r.position();
                return Ok(());
            }
            // FORMAT_DESCRIPTION: the stream reader keeps it; START_V3, STOP, HEARTBEAT
            15 | 1 | 3 => {}
            27 | 41 => {
                if self.txn.is_none() && log_pos != 0 {
                    out.push(SourceEvent::Progress(Position::new(
                        self.file.to_string(),
                        log_pos,
                    )));
                }
                return Ok(());
            }
            // QUERY
            2 | MARIA_QUERY_COMPRESSED => {
                let query = if code == 2 {
                    let q: QueryEvent<'_> = ev.read_event().map_err(io)?;
                    (q.schema().into_owned(), q.query().into_owned())
                } else {
                    maria_compressed_query(data).map_err(|r| self.err(code, start, r))?
                };
                let (schema, q) = query;
                let trimmed = q.trim();
                let upper: String = trimmed
                    .chars()
                    .take(16)
                    .collect::<String>()
                    .to_ascii_uppercase();
                if upper.starts_with("BEGIN") || upper.starts_with("XA START") {
                    if self.txn.is_none() {
                        self.begin(None, ts_ms, false, start);
                    }
                } else if upper.starts_with("COMMIT")
                    || upper.starts_with("ROLLBACK")
                    || upper.starts_with("XA END")
                {
                    self.end_txn(out, end);
                } else if is_statement_dml(trimmed) {
                    // A change logged as a statement (a session with binlog_format=STATEMENT):
                    // its rows are not in the binlog. Said loudly; the position moves on.
                    tracing::warn!(db = %schema, position = %format!("{}:{start}", self.file),
                        statement = %trimmed.chars().take(200).collect::<String>(),
                        "a change was logged as a statement, not as rows; its rows cannot be emitted \
                         (set binlog_format=ROW for every session)");
                    if self.txn.is_none() {
                        out.push(SourceEvent::Progress(Position::new(self.file.clone(), end)));
                    }
                } else {
                    // DDL or another statement logged as text: its own transaction.
                    let resume = Position::new(self.file.clone(), end);
                    self.txn = None;
                    self.skip = None;
                    out.push(SourceEvent::Ddl {
                        db: schema,
                        query: q.to_string(),
                        resume,
                    });
                }
            }
            // XID
            16 => {
                // The xid value itself is not needed (and 5.1 betas wrote it differently).
                if in_payload {
                    self.payload_end = None;
                }
                self.end_txn(out, end);
            }
            // XA_PREPARE
            38 => self.end_txn(out, end),
            // GTID, ANONYMOUS_GTID, GTID_TAGGED
            33 | 34 | 42 => {
                let gtid = if code == 34 {
                    None
                } else {
                    let g: GtidEvent = ev.read_event().map_err(io)?;
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
                self.begin(gtid.map(Arc::from), ts_ms, false, start);
            }
            MARIA_GTID => {
                // seq_no u64, domain_id u32, flags u8
                if data.len() < 13 {
                    return Err(self.err(
                        code,
                        start,
                        format!("MariaDB GTID event of {} bytes", data.len()),
                    ));
                }
                let seq = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
                let domain = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
                let flags = data[12];
                let gtid = format!("{domain}-{}-{seq}", h.server_id());
                self.begin(Some(Arc::from(gtid)), ts_ms, flags & 1 != 0, start);
            }
            // TABLE_MAP
            19 => {
                let tme: TableMapEvent<'_> = ev.read_event().map_err(io)?;
                let id = tme.table_id();
                if let Some((raw, _)) = self.plans.get(&id) {
                    if raw.as_slice() == data {
                        self.advance(end, in_payload);
                        return Ok(());
                    }
                }
                let key = (
                    tme.database_name().into_owned(),
                    tme.table_name().into_owned(),
                );
                let wanted = self.filter.as_ref().is_none_or(|f| f(&key.0, &key.1));
                if wanted {
                    let plan = TablePlan::build(&tme, self.schemas.get(&key))?;
                    self.plans.insert(id, (data.to_vec(), Arc::new(plan)));
                } else {
                    self.plans.remove(&id);
                    self.plans
                        .insert(id, (data.to_vec(), Arc::new(skip_plan(&tme))));
                }
            }
            // Rows events: v1, v2, partial JSON, MariaDB compressed
            c if decode::is_rows_event(c) => {
                let post_header = ev.fde().get_event_type_header_length(
                    mysql_common::binlog::consts::EventType::try_from(c)
                        .unwrap_or(mysql_common::binlog::consts::EventType::WRITE_ROWS_EVENT),
                );
                let tid_len = decode::table_id_len(if c >= 160 { 8 } else { post_header });
                let rows = decode::parse_rows_event(c, data, tid_len)
                    .map_err(|r| self.err(c, start, r))?;
                let Some((_, plan)) = self.plans.get(&rows.table_id) else {
                    return Err(DecodeError::NoTableMap {
                        file: self.file.to_string(),
                        pos: start,
                        table_id: rows.table_id,
                    });
                };
                let plan = plan.clone();
                if self.txn.is_none() {
                    // Rows outside BEGIN/COMMIT (non-transactional engines on old servers).
                    self.begin(None, ts_ms, true, start);
                }
                let Some(txn) = self.txn.as_mut() else {
                    unreachable!()
                };
                let skip_below = match &self.skip {
                    Some(s) if s.pos == txn.pos && *s.file == *txn.file => s.row,
                    _ => 0,
                };
                let server_id = h.server_id();
                let skip_table = plan.table_id == SKIP_TABLE_ID;
                if skip_table {
                    // No pipeline reads this table: its rows are parsed only to be counted, so
                    // row indexes (and positions) stay exact.
                    match count_rows(&plan, &rows) {
                        Ok(k) => txn.rows += k,
                        Err(r) => return Err(self.err(c, start, r)),
                    }
                } else {
                    let base = txn.rows;
                    let mut n = 0u64;
                    let op = match rows.kind {
                        decode::RowsKind::Write => Op::Insert,
                        decode::RowsKind::Update => Op::Update,
                        decode::RowsKind::Delete => Op::Delete,
                    };
                    let file = txn.file.clone();
                    let (tpos, gtid, tts) = (txn.pos, txn.gtid.clone(), txn.ts_ms);
                    decode::decode_rows(&plan, &rows, |before, after| {
                        let row = base + n;
                        n += 1;
                        if row < skip_below {
                            return;
                        }
                        out.push(SourceEvent::Row(RowChange {
                            table: plan.clone(),
                            op,
                            before,
                            after,
                            txn_file: file.clone(),
                            txn_pos: tpos,
                            row,
                            gtid: gtid.clone(),
                            server_id,
                            ts_ms: tts,
                        }));
                    })?;
                    if let Some(t) = self.txn.as_mut() {
                        t.rows += n;
                    }
                }
                // STMT_END_F on a standalone transaction (no XID follows)
                let standalone = self.txn.as_ref().is_some_and(|t| t.standalone);
                let stmt_end = data
                    .get(tid_len..tid_len + 2)
                    .is_some_and(|f| f[0] & 1 != 0);
                if standalone && stmt_end && self.txn.as_ref().is_some_and(|t| t.gtid.is_none()) {
                    self.end_txn(out, end);
                }
            }
            // TRANSACTION_PAYLOAD (MySQL 8 compression): inner events follow, without positions.
            40 => {
                self.payload_end = Some(log_pos);
                return Ok(());
            }
            // Events that carry no row data and need no action, each for its reason:
            // INTVAR, RAND, USER_VAR: statement-based context; ROWS_QUERY and MariaDB ANNOTATE_ROWS:
            // the SQL text of the rows that follow; PREVIOUS_GTIDS, MariaDB GTID_LIST and
            // BINLOG_CHECKPOINT: file headers; IGNORABLE, TRANSACTION_CONTEXT, VIEW_CHANGE:
            // group replication bookkeeping.
            5
            | 13
            | 14
            | 29
            | MARIA_ANNOTATE_ROWS
            | 35
            | MARIA_GTID_LIST
            | MARIA_BINLOG_CHECKPOINT
            | 28
            | 36
            | 37 => {}
            // LOAD DATA of statement-based logging (old LOAD, CREATE_FILE, APPEND_BLOCK, EXEC_LOAD,
            // DELETE_FILE, NEW_LOAD, BEGIN_LOAD_QUERY, EXECUTE_LOAD_QUERY): no rows to emit.
            6 | 8..=12 | 17 | 18 => {
                tracing::warn!(position = %format!("{}:{start}", self.file), event_type = code,
                    "a LOAD DATA logged as a statement; its rows are not in the binlog and cannot be emitted");
            }
            26 => {
                return Err(self.err(
                    code,
                    start,
                    "INCIDENT event: the server reports lost changes; \
                    re-snapshot the tables, then restart from a position after this event",
                ));
            }
            MARIA_START_ENCRYPTION => {
                return Err(self.err(
                    code,
                    start,
                    "the binlog is encrypted; a replica connection \
                    receives it decrypted, so read it over the network rather than from a file",
                ));
            }
            20..=22 => {
                return Err(self.err(
                    code,
                    start,
                    "pre-GA rows events of MySQL 5.1.0–5.1.15 are not supported",
                ));
            }
            other => {
                return Err(self.err(other, start, "unknown event type; refusing to skip it"));
            }
        }
        self.advance(end, in_payload);
        Ok(())
    }

    fn advance(&mut self, end: u64, in_payload: bool) {
        if !in_payload && end != 0 {
            self.next_pos = end;
        }
    }
}

const SKIP_TABLE_ID: u64 = u64::MAX;

/// A plan for a table no pipeline reads: only enough to count its rows.
fn skip_plan(tme: &TableMapEvent<'_>) -> TablePlan {
    match TablePlan::build(tme, None) {
        Ok(mut p) => {
            p.table_id = SKIP_TABLE_ID;
            p
        }
        Err(_) => TablePlan {
            table_id: SKIP_TABLE_ID,
            db: tme.database_name().into_owned(),
            table: tme.table_name().into_owned(),
            columns: Vec::new(),
            primary_key: Vec::new(),
        },
    }
}

/// Counts the rows of an event of a table no pipeline reads (they still take row indexes).
fn count_rows(plan: &TablePlan, rows: &decode::RowsEvent<'_>) -> Result<u64, String> {
    let mut n = 0u64;
    decode::decode_rows(plan, rows, |_, _| n += 1).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Whether a statement logged as text changes rows (statement-based logging).
fn is_statement_dml(q: &str) -> bool {
    let w: String = q
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        w.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD"
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// MariaDB QUERY_COMPRESSED: the QUERY post-header and status vars as usual, the query text compressed.
fn maria_compressed_query(data: &[u8]) -> Result<(String, String), String> {
    // post-header: thread_id 4, exec_time 4, db_len 1, error_code 2, status_vars_len 2
    if data.len() < 13 {
        return Err("short QUERY_COMPRESSED event".into());
    }
    let db_len = data[8] as usize;
    let sv_len = u16::from_le_bytes([data[11], data[12]]) as usize;
    let db_start = 13 + sv_len;
    let q_start = db_start + db_len + 1;
    if data.len() < q_start {
        return Err("short QUERY_COMPRESSED event".into());
    }
    let db = String::from_utf8_lossy(&data[db_start..db_start + db_len]).into_owned();
    let q = decode::mariadb_uncompress(&data[q_start..])?;
    Ok((db, String::from_utf8_lossy(&q).into_owned()))
}
