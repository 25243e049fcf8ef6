//! The checkpoint document both stores keep: `{"version": 2, "position": {...}}`.
//!
//! Format 2 (this version): `position` is a [`BinlogPosition`] — the transaction's first event
//! (`file`, `pos`, `gtid`), the rows events of it already done (`event`), and the rows done in
//! the next one (`row`). Format 1 (versions before it) counted `row` across the rows of every
//! table of the transaction; it is read and converted: at a transaction boundary exactly, inside
//! a transaction by counting that transaction's rows once more (see [`Checkpoint::legacy_rows`]).
//! The MySQL store of format 1 kept the bare position; that is read as format 1 too.
//!
//! Beside the position, format 2 keeps `open_xa` (prepared XA transactions whose outcome the
//! position has not passed), `schema_history` (table definitions by position) and `windows`
//! (per windowed pipeline and group, the last row of the last window delivered).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::BinlogPosition;
use crate::source::mysql::schema_history::SchemaHistory;
use crate::source::mysql::xa::OpenXa;

/// What a store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub position: BinlogPosition,
    /// A format-1 checkpoint inside a transaction: the rows (of every table) of the
    /// transaction at `position` that were done. 0 for format 2.
    pub legacy_rows: u64,
    /// The definitions of the read tables by position (see [`SchemaHistory`]).
    pub schema_history: SchemaHistory,
    /// XA transactions prepared before `position` whose outcome comes after it: their prepare
    /// groups are read again after a restart.
    pub open_xa: Vec<OpenXa>,
    /// Windowed pipelines: per group, the last row of the last window delivered (rows read
    /// again up to it join no window).
    pub windows: super::DeliveredWindows,
}

impl Checkpoint {
    pub fn new(position: BinlogPosition) -> Self {
        Checkpoint {
            position,
            legacy_rows: 0,
            schema_history: SchemaHistory::default(),
            open_xa: Vec::new(),
            windows: Default::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V2 {
    version: u32,
    position: BinlogPosition,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    open_xa: Vec<OpenXa>,
    #[serde(default, skip_serializing_if = "SchemaHistory::is_empty")]
    schema_history: SchemaHistory,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    windows: super::DeliveredWindows,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Position {
    file: Arc<str>,
    pos: u64,
    #[serde(default)]
    row: u64,
    #[serde(default)]
    gtid: Option<Arc<str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    #[allow(dead_code)]
    version: u32,
    position: V1Position,
}

/// The document's text (format 2).
pub fn to_text(c: &Checkpoint) -> String {
    serde_json::to_string_pretty(&V2 {
        version: 2,
        position: c.position.clone(),
        open_xa: c.open_xa.clone(),
        schema_history: c.schema_history.clone(),
        windows: c.windows.clone(),
    })
    .unwrap_or_default()
}

/// Reads a document of format 2 or 1 (or a bare format-1 position). The error says what is
/// wrong and what to do.
pub fn parse(text: &str) -> Result<Checkpoint, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let version = v.get("version").and_then(|x| x.as_u64());
    match version {
        Some(2) => {
            let d: V2 = serde_json::from_value(v).map_err(|e| e.to_string())?;
            Ok(Checkpoint {
                schema_history: d.schema_history,
                open_xa: d.open_xa,
                windows: d.windows,
                ..Checkpoint::new(d.position)
            })
        }
        Some(1) => {
            let d: V1 = serde_json::from_value(v).map_err(|e| e.to_string())?;
            Ok(from_v1(d.position))
        }
        None => {
            let p: V1Position = serde_json::from_value(v).map_err(|e| e.to_string())?;
            Ok(from_v1(p))
        }
        Some(n) => Err(format!(
            "format {n} is newer than this version reads (2); run the version that wrote it"
        )),
    }
}

fn from_v1(p: V1Position) -> Checkpoint {
    Checkpoint {
        legacy_rows: p.row,
        ..Checkpoint::new(BinlogPosition {
            gtid: p.gtid,
            ..BinlogPosition::new(p.file, p.pos)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_2_round_trips() {
        let p = BinlogPosition {
            event: 3,
            row: 7,
            gtid: Some("0-1-9".into()),
            ..BinlogPosition::new("b.000001", 42)
        };
        let back = parse(&to_text(&Checkpoint::new(p.clone()))).unwrap();
        assert_eq!(back, Checkpoint::new(p.clone()));
        assert_eq!(back.position.gtid, p.gtid);
    }

    #[test]
    fn format_1_is_converted() {
        let c = parse(r#"{"version":1,"position":{"file":"b.000002","pos":4,"row":0}}"#).unwrap();
        assert_eq!(c, Checkpoint::new(BinlogPosition::new("b.000002", 4)));
        let c = parse(r#"{"file":"b.000002","pos":400,"row":17,"gtid":"0-1-3"}"#).unwrap();
        assert_eq!(c.position, BinlogPosition::new("b.000002", 400));
        assert_eq!(c.legacy_rows, 17);
        let e = parse(r#"{"version":3,"position":{}}"#).unwrap_err();
        assert!(e.contains("newer than this version"), "{e}");
        assert!(parse("{").is_err());
    }
}
