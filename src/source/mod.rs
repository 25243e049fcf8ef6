//! The binlog source: reads row events and turns them into typed change records.
//!
//! The source is connected to the rest of the daemon only by [`SourceEvent`]s on a channel,
//! so it can later run in another process (publishing to Kafka) without a rewrite.

pub mod mysql;
pub mod position;
pub mod snapshot;

use std::sync::Arc;

pub use position::Position;
use serde_json::Value;

use crate::source::mysql::decode::TablePlan;

/// The operation of a change record, as the envelope spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: a row was inserted.
    Insert,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// One changed row, with every column of the table (in table order).
#[derive(Debug, Clone)]
pub struct RowChange {
    pub table: Arc<TablePlan>,
    pub op: Op,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
    /// Where this row sits: the transaction's first event and the row's index in it.
    pub txn_file: Arc<str>,
    pub txn_pos: u64,
    pub row: u64,
    pub gtid: Option<Arc<str>>,
    pub server_id: u32,
    pub ts_ms: u64,
}

impl RowChange {
    /// The position to resume from once this row is done.
    pub fn resume_after(&self) -> Position {
        Position {
            file: self.txn_file.clone(),
            pos: self.txn_pos,
            row: self.row + 1,
            gtid: self.gtid.clone(),
        }
    }
}

/// What the source hands downstream.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Row(RowChange),
    /// A transaction or statement ended: everything before `0` is done.
    Progress(Position),
    /// A DDL statement ran; cached schemas of `db` may be stale.
    Ddl {
        db: String,
        query: String,
        resume: Position,
    },
}

/// A binlog that cannot be decoded. Never skipped: the stream stops with this error.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("table map of `{db}`.`{table}` cannot be decoded: {reason}")]
    TableMap {
        db: String,
        table: String,
        reason: String,
    },
    #[error("row of `{db}`.`{table}`{} cannot be decoded: {reason}", if column.is_empty() { String::new() } else { format!(", column `{column}`") })]
    Row {
        db: String,
        table: String,
        column: String,
        reason: String,
    },
    #[error("event at {file}:{pos} (type {event_type}) cannot be decoded: {reason}")]
    Event {
        file: String,
        pos: u64,
        event_type: u8,
        reason: String,
    },
    #[error(
        "rows event at {file}:{pos} refers to table id {table_id}, for which no TABLE_MAP was seen"
    )]
    NoTableMap {
        file: String,
        pos: u64,
        table_id: u64,
    },
}
