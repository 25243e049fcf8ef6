//! The binlog position: where a change sits and where to resume after it, compared and
//! persisted in one place.
//!
//! The form is the field's standard one (Debezium keeps the same offsets): the transaction's
//! first event (binlog file, byte offset, GTID), the index of the rows event inside the
//! transaction, and the row inside that event. Counting rows events rather than rows lets the
//! source skip the rows events of tables no pipeline reads without decoding a byte of them.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// "Stream from `file`:`pos` (the first event of a transaction), skip the first `event` rows
/// events of that transaction entirely and the first `row` rows of the next one."
///
/// A position at a transaction boundary has `event == 0 && row == 0`. Positions order by the
/// binlog file's numeric suffix (`binlog.999999` < `binlog.1000000`), then offset, rows event
/// and row; the GTID is informational and takes no part in comparisons.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogPosition {
    /// Binlog file name, as the server names it (`binlog.000042`).
    pub file: Arc<str>,
    /// Byte offset of the transaction's first event in `file`.
    pub pos: u64,
    /// Rows events of the transaction already done (all tables counted, read or not).
    #[serde(default)]
    pub event: u64,
    /// Rows already done in the rows event at index `event`.
    #[serde(default)]
    pub row: u64,
    /// The GTID of the transaction at `pos`, where known (`0-1-42` on MariaDB, `uuid:n` on MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<Arc<str>>,
}

impl BinlogPosition {
    /// The transaction boundary at `file`:`pos`.
    pub fn new(file: impl Into<Arc<str>>, pos: u64) -> Self {
        BinlogPosition {
            file: file.into(),
            pos,
            event: 0,
            row: 0,
            gtid: None,
        }
    }

    /// Whether this position points inside a transaction (some of its rows are done).
    pub fn is_inside_transaction(&self) -> bool {
        self.event > 0 || self.row > 0
    }

    /// The numeric suffix of a binlog file name (`binlog.000042` → 42), if it has one.
    pub fn file_sequence(file: &str) -> Option<u64> {
        file.rsplit_once('.').and_then(|(_, s)| s.parse().ok())
    }

    fn key(&self) -> (Option<u64>, &str, u64, u64, u64) {
        (
            Self::file_sequence(&self.file),
            &self.file,
            self.pos,
            self.event,
            self.row,
        )
    }
}

impl PartialEq for BinlogPosition {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for BinlogPosition {}

impl std::hash::Hash for BinlogPosition {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl PartialOrd for BinlogPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BinlogPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if self.is_inside_transaction() {
            write!(f, " (rows event {}, row {})", self.event, self.row)?;
        }
        if let Some(g) = &self.gtid {
            write!(f, " (GTID {g})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(file: &str, pos: u64, event: u64, row: u64) -> BinlogPosition {
        BinlogPosition {
            event,
            row,
            ..BinlogPosition::new(file, pos)
        }
    }

    #[test]
    fn files_order_by_their_numeric_suffix() {
        assert!(p("binlog.999999", 9_000, 0, 0) < p("binlog.1000000", 4, 0, 0));
        assert!(p("binlog.000009", 4, 0, 0) < p("binlog.000010", 4, 0, 0));
        assert!(p("b.000001", 100, 2, 7) < p("b.000001", 100, 3, 0));
        assert!(p("b.000001", 100, 3, 0) < p("b.000001", 100, 3, 1));
        assert!(p("b.000001", 100, 9, 9) < p("b.000001", 101, 0, 0));
        let mut with_gtid = p("b.000001", 100, 0, 0);
        with_gtid.gtid = Some("0-1-5".into());
        assert_eq!(with_gtid, p("b.000001", 100, 0, 0));
    }

    #[test]
    fn display_names_the_rows_event_and_row() {
        assert_eq!(p("b.000002", 4, 0, 0).to_string(), "b.000002:4");
        assert_eq!(
            p("b.000002", 4, 3, 17).to_string(),
            "b.000002:4 (rows event 3, row 17)"
        );
    }
}
