//! The binlog source: reads row events and turns them into typed change records.
//!
//! The source is connected to the rest of the daemon only by [`SourceEvent`]s on a channel,
//! so it can later run in another process (publishing to Kafka) without a rewrite.

pub mod error;
pub mod kafka;
pub mod mysql;
pub mod snapshot;

use std::sync::Arc;

use crate::model::ColumnValue;
pub use crate::model::{BinlogPosition, Op};
use crate::source::mysql::plan::TablePlan;
pub use error::DecodeError;

/// One changed row, with every column of the table map (in table order; the server's own
/// hidden columns included, which records leave out).
#[derive(Debug, Clone)]
pub struct RowChange {
    pub table: Arc<TablePlan>,
    pub op: Op,
    pub before: Option<Vec<ColumnValue>>,
    pub after: Option<Vec<ColumnValue>>,
    /// Where this row sits: its transaction, rows event and row.
    pub position: BinlogPosition,
    pub server_id: u32,
    pub ts_ms: u64,
    /// Columns the rows event left out of the row's images (`None`: none).
    pub left_out: Option<Arc<LeftOut>>,
    /// An update that changed the key, read from a change topic: which of its two copies this
    /// is (`None` for every row read from the binlog).
    pub key_side: Option<KeySide>,
    /// The change-topic partition a worker read the row from (`topic[partition]`, see
    /// [`crate::model::record::SourceInfo::origin`]); `None` for a row read from the binlog.
    pub origin: Option<Arc<str>>,
}

/// A change topic carries an update that changes the row's key twice, once in each key's
/// partition, so that each key's changes stay in order: a worker takes from each copy only
/// the records of that copy's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySide {
    /// The copy in the old key's partition: its records keyed by the old key.
    Old,
    /// The copy in the new key's partition: every other record of the update.
    New,
}

/// Columns a rows event left out of its images: the writing session ran with
/// `binlog_row_image=MINIMAL` or `NOBLOB` (MariaDB logs a FULL image otherwise). Their values are
/// unknown, so the images hold `Null` there; a pipeline that reads one of them stops (the
/// record could not be complete), the others take the row
/// (<https://mariadb.com/kb/en/replication-and-binary-log-system-variables/#binlog_row_image>).
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    /// The image that leaves them out: `"before image"` (updates, deletes) or `"after image"`
    /// (inserts).
    pub image: &'static str,
    /// The columns, as indexes into the table map, ascending.
    pub columns: Vec<usize>,
}

impl RowChange {
    /// The position to resume from once this row is done.
    pub fn resume_after(&self) -> BinlogPosition {
        BinlogPosition {
            row: self.position.row + 1,
            ..self.position.clone()
        }
    }
}

/// A statement that removed rows with no rows event (`TRUNCATE TABLE`, `CREATE OR REPLACE
/// TABLE`, `ALTER TABLE`'s partitions truncated, dropped, converted or exchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct TableTruncated {
    pub db: String,
    pub table: String,
    /// The partitions (`None`: the whole table).
    pub partitions: Option<Vec<String>>,
    /// The table went too (`DROP TABLE`).
    pub dropped: bool,
    /// The statement's group (its first event).
    pub position: BinlogPosition,
    /// Where to resume once it is done (after the statement).
    pub resume: BinlogPosition,
    pub server_id: u32,
    pub ts_ms: u64,
    /// As [`RowChange::origin`].
    pub origin: Option<Arc<str>>,
}

/// What the source hands downstream.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// One changed row of a table some pipeline reads: its before and after images, its
    /// table and its position (a rows event yields one per row, in order).
    Row(RowChange),
    /// A transaction or statement ended: everything before `position` is done. `ts_ms`: its
    /// event's timestamp (ms since the Unix epoch); `None` for a heartbeat — the reader is at
    /// the end of the binlog with nothing new.
    Progress {
        /// Where to resume once everything before is done.
        position: BinlogPosition,
        /// The event's timestamp, ms since the Unix epoch; `None` for a heartbeat.
        ts_ms: Option<u64>,
    },
    /// A statement logged as text ran (DDL and the like): `parsed` says which tables it
    /// changes, where the statement is one [`mysql::ddl`] knows.
    Ddl {
        /// The statement's default database (`USE db`), empty if none.
        db: String,
        /// The statement's text (as logged: may hold secrets, see the DDL log filter).
        query: String,
        /// Where to resume once the statement is done (after it).
        resume: BinlogPosition,
        /// The tables it changes, if the statement is one the parser knows.
        parsed: Option<mysql::ddl::Ddl>,
    },
    /// Rows of a table went without rows events; a `Ddl` with the statement follows.
    Truncated(TableTruncated),
    /// An XA transaction was prepared: its rows come at its `XA COMMIT` (never after an
    /// `XA ROLLBACK`); until then a checkpoint keeps it, to read its group again after a restart.
    XaPrepared(mysql::xa::OpenXa),
    /// An XA transaction's outcome was read (its committed rows, if any, came just before).
    XaEnded(mysql::xa::Xid),
    /// Tables a reload added are read from here on: the stream was opened again at this point
    /// with their definitions (a reload that adds tables takes effect here).
    TablesAdded,
    /// Values of a table some pipeline reads cannot be decoded from `position` on: the
    /// pipelines of that table stop; the stream goes on without it.
    TableFailed {
        /// The table's database.
        db: String,
        /// The table.
        table: String,
        /// What could not be decoded (column, type, reason).
        error: Arc<DecodeError>,
        /// The rows event where decoding failed.
        position: BinlogPosition,
    },
}
