//! The schema history: the definition of each table a pipeline reads, by binlog position, so
//! that rows written before an `ALTER TABLE` are typed with the definition they were written
//! under (Debezium keeps one for the same reason).
//!
//! Versions come from `information_schema`, read at two moments when it is known to describe
//! the table at a position: when the stream starts (it describes the table after the last DDL
//! on it before the server's current end), and when a DDL on the table passes while the
//! stream is at the server's end. Every DDL on a read table between the stream's start and
//! that end is found first (a scan of the statements in that range), so the history knows
//! where each definition stops. Between two DDLs whose definitions were not recorded the
//! history cannot tell, and says so: the rows are then typed from the binlog alone.
//!
//! The history is kept with the checkpoint (the versions at or before the checkpoint that a
//! later one replaces are dropped).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::schema::TableSchema;
use crate::model::BinlogPosition;

/// A table's definition from a position on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// The position after the DDL that made this definition (or the stream's start).
    pub from: BinlogPosition,
    /// The definition; `None`: unknown (a DDL passed whose result was not recorded).
    pub schema: Option<TableSchema>,
}

/// What the history says of a table at a position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SchemaAt<'a> {
    Known(&'a TableSchema),
    /// A DDL on the table lies between the last recorded definition and the position.
    Unknown {
        since: &'a BinlogPosition,
    },
    /// No history is kept (binlog files decoded offline): the binlog alone types the rows.
    NotTracked,
}

impl<'a> SchemaAt<'a> {
    pub fn schema(self) -> Option<&'a TableSchema> {
        match self {
            SchemaAt::Known(s) => Some(s),
            _ => None,
        }
    }
}

/// Definitions by table (`db.table`), each list ordered by position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaHistory {
    tables: BTreeMap<String, Vec<Version>>,
}

fn key(db: &str, table: &str) -> String {
    format!("{db}.{table}")
}

impl SchemaHistory {
    /// Records `schema` as the definition of `db`.`table` from `from` on (replacing a version
    /// at the same position; `None` marks a DDL whose result is unknown, unless one is known).
    pub fn record(
        &mut self,
        db: &str,
        table: &str,
        from: BinlogPosition,
        schema: Option<TableSchema>,
    ) {
        let list = self.tables.entry(key(db, table)).or_default();
        match list.binary_search_by(|v| v.from.cmp(&from)) {
            // Keep a definition recorded at this DDL when it is found again.
            Ok(_) if schema.is_none() => {}
            Ok(i) => list[i].schema = schema,
            Err(i) => list.insert(i, Version { from, schema }),
        }
    }

    /// The definition of `db`.`table` at `at`: the last version from at or before it.
    pub fn at(&self, db: &str, table: &str, at: &BinlogPosition) -> SchemaAt<'_> {
        let Some(list) = self.tables.get(&key(db, table)) else {
            return SchemaAt::NotTracked;
        };
        match list.iter().rev().find(|v| v.from <= *at) {
            Some(Version {
                schema: Some(s), ..
            }) => SchemaAt::Known(s),
            Some(Version { from, .. }) => SchemaAt::Unknown { since: from },
            // Before the first version: the definition the table had then is not recorded.
            None => match list.first() {
                Some(v) => SchemaAt::Unknown { since: &v.from },
                None => SchemaAt::NotTracked,
            },
        }
    }

    /// The tables of `db` the history keeps versions of (by their `db.` prefix: a database
    /// whose name has a dot may also list another's tables as its own, which a caller asking
    /// only of the tables it reads tells apart).
    pub fn tables_in(&self, db: &str) -> Vec<String> {
        let prefix = format!("{db}.");
        self.tables
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// Whether the history keeps versions of this table (tables it was never told of are
    /// typed from the binlog alone, as binlog files read offline are).
    pub fn tracks(&self, db: &str, table: &str) -> bool {
        self.tables.contains_key(&key(db, table))
    }

    /// The last version of a table (its current definition as far as the history knows).
    pub fn latest(&self, db: &str, table: &str) -> Option<&Version> {
        self.tables.get(&key(db, table)).and_then(|l| l.last())
    }

    /// Drops what no position at or after `checkpoint` can need: for each table, the versions
    /// before the last one that starts at or before it.
    pub fn prune(&mut self, checkpoint: &BinlogPosition) {
        for list in self.tables.values_mut() {
            if let Some(keep) = list.iter().rposition(|v| v.from <= *checkpoint) {
                list.drain(..keep);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::mysql::schema::SchemaColumn;

    fn schema(json: bool) -> TableSchema {
        TableSchema {
            columns: vec![SchemaColumn {
                name: "doc".into(),
                data_type: "longtext".into(),
                column_type: "longtext".into(),
                charset: Some("utf8mb4".into()),
                unsigned: false,
                is_json: json,
                precision: None,
                labels: std::sync::Arc::from(Vec::new()),
            }],
            primary_key: vec![],
            row_end: None,
            current_partition: None,
        }
    }

    fn p(pos: u64) -> BinlogPosition {
        BinlogPosition::new("b.000001", pos)
    }

    #[test]
    fn definitions_by_position() {
        let mut h = SchemaHistory::default();
        assert_eq!(h.at("d", "t", &p(10)), SchemaAt::NotTracked);
        h.record("d", "t", p(100), Some(schema(false)));
        h.record("d", "t", p(300), None); // an ALTER whose result was not recorded
        h.record("d", "t", p(500), Some(schema(true)));
        assert_eq!(h.at("d", "t", &p(50)), SchemaAt::Unknown { since: &p(100) });
        assert_eq!(h.at("d", "t", &p(100)), SchemaAt::Known(&schema(false)));
        assert_eq!(h.at("d", "t", &p(299)), SchemaAt::Known(&schema(false)));
        assert_eq!(
            h.at("d", "t", &p(400)),
            SchemaAt::Unknown { since: &p(300) }
        );
        assert_eq!(h.at("d", "t", &p(900)), SchemaAt::Known(&schema(true)));
        // A DDL found again later does not forget what was recorded at it.
        h.record("d", "t", p(500), None);
        assert_eq!(h.at("d", "t", &p(900)), SchemaAt::Known(&schema(true)));
        h.prune(&p(400));
        assert_eq!(
            h.at("d", "t", &p(400)),
            SchemaAt::Unknown { since: &p(300) }
        );
        assert_eq!(h.at("d", "t", &p(900)), SchemaAt::Known(&schema(true)));
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<SchemaHistory>(&text).unwrap(), h);
    }
}
