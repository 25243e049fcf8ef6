//! Binlog event types by name: MySQL's `Log_event_type` and MariaDB's own (160+).
//!
//! Sources: MySQL `libbinlogevents/include/binlog_event.h`, MariaDB `sql/log_event.h` and
//! <https://mariadb.com/kb/en/2-binlog-event-header/>.

use super::rows::{RowsKind, RowsType};

/// What the decoder does with an event, by the event's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Rotate,
    FormatDescription,
    /// START_EVENT_V3, STOP_EVENT: file bookkeeping.
    FileMarker,
    Heartbeat,
    Query,
    /// MariaDB QUERY_COMPRESSED_EVENT.
    QueryCompressed,
    Xid,
    /// MySQL/MariaDB XA_PREPARE_LOG_EVENT: ends the prepare group of an XA transaction.
    XaPrepare,
    /// MySQL GTID, GTID_TAGGED; ANONYMOUS_GTID (`anonymous`).
    MysqlGtid {
        anonymous: bool,
        tagged: bool,
    },
    MariaGtid,
    TableMap,
    Rows(RowsType),
    /// MySQL 8 TRANSACTION_PAYLOAD (compressed transaction).
    TransactionPayload,
    /// Events that carry no row data and need no action: INTVAR, RAND, USER_VAR (statement
    /// context), ROWS_QUERY and MariaDB ANNOTATE_ROWS (SQL text), PREVIOUS_GTIDS and MariaDB
    /// GTID_LIST and BINLOG_CHECKPOINT (file headers), IGNORABLE, TRANSACTION_CONTEXT and
    /// VIEW_CHANGE (group replication bookkeeping).
    NoData,
    /// LOAD DATA of statement-based logging (old LOAD, CREATE_FILE, APPEND_BLOCK, EXEC_LOAD,
    /// DELETE_FILE, NEW_LOAD, BEGIN_LOAD_QUERY, EXECUTE_LOAD_QUERY): no rows to emit.
    StatementLoad,
    Incident,
    MariaStartEncryption,
    /// The rows events of MySQL 5.1.0–5.1.15.
    PreGaRows,
    Unknown(u8),
}

impl EventType {
    pub fn from_code(code: u8) -> EventType {
        use EventType::*;
        let rows = |kind, v2, compressed, partial| {
            Rows(RowsType {
                kind,
                v2,
                compressed,
                partial,
            })
        };
        match code {
            1 | 3 => FileMarker,
            2 => Query,
            4 => Rotate,
            5 | 13 | 14 | 29 | 35 | 28 | 36 | 37 | 160 | 161 | 163 => NoData,
            6 | 8..=12 | 17 | 18 => StatementLoad,
            15 => FormatDescription,
            16 => Xid,
            19 => TableMap,
            20..=22 => PreGaRows,
            23 => rows(RowsKind::Write, false, false, false),
            24 => rows(RowsKind::Update, false, false, false),
            25 => rows(RowsKind::Delete, false, false, false),
            26 => Incident,
            27 | 41 => Heartbeat,
            30 => rows(RowsKind::Write, true, false, false),
            31 => rows(RowsKind::Update, true, false, false),
            32 => rows(RowsKind::Delete, true, false, false),
            33 => MysqlGtid {
                anonymous: false,
                tagged: false,
            },
            34 => MysqlGtid {
                anonymous: true,
                tagged: false,
            },
            38 => XaPrepare,
            39 => rows(RowsKind::Update, true, false, true),
            40 => TransactionPayload,
            42 => MysqlGtid {
                anonymous: false,
                tagged: true,
            },
            162 => MariaGtid,
            164 => MariaStartEncryption,
            165 => QueryCompressed,
            166 => rows(RowsKind::Write, false, true, false),
            167 => rows(RowsKind::Update, false, true, false),
            168 => rows(RowsKind::Delete, false, true, false),
            169 => rows(RowsKind::Write, true, true, false),
            170 => rows(RowsKind::Update, true, true, false),
            171 => rows(RowsKind::Delete, true, true, false),
            other => Unknown(other),
        }
    }
}

/// A query event's header flag: the statement used the session's temporary tables (a session
/// with `binlog_format` STATEMENT or MIXED logs statements on them); MariaDB and MySQL, see
/// <https://mariadb.com/kb/en/event-flags/>.
pub const LOG_EVENT_THREAD_SPECIFIC_F: u16 = 0x4;
