//! The change record a pipeline emits: the envelope consumers read (Debezium's shape: `op`,
//! `before`, `after`, `source`), with the enrichment, and the key and pipeline it is routed by.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{BinlogPosition, ColumnValue, Op};

/// Column names and values, serialized as a JSON object in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub names: Arc<[String]>,
    pub values: Vec<ColumnValue>,
}

impl Serialize for Image {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.values.len()))?;
        for (n, v) in self.names.iter().zip(&self.values) {
            m.serialize_entry(n, v)?;
        }
        m.end()
    }
}

impl Image {
    pub fn get(&self, name: &str) -> Option<&ColumnValue> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
    }
}

/// Where a record came from: the `source` object of the envelope.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceInfo {
    pub pipeline: Arc<str>,
    pub server_id: u32,
    pub db: Arc<str>,
    pub table: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gtid: Option<Arc<str>>,
    pub file: Arc<str>,
    pub pos: u64,
    /// The rows event's index in its transaction.
    pub event: u64,
    /// The row's index in its rows event.
    pub row: u64,
    pub ts_ms: u64,
    /// The change-topic partition a worker read the change from (`topic[partition]`): a
    /// write-back keeps its applied position per such partition, since each partition holds
    /// its keys' changes in binlog order. `None` for changes read from the binlog. Not in
    /// the envelope.
    #[serde(skip)]
    pub origin: Option<Arc<str>>,
}

/// The change record a pipeline emits: the JSON envelope, plus its key and routing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChangeRecord {
    pub op: Op,
    pub before: Option<Image>,
    pub after: Option<Image>,
    pub source: SourceInfo,
    pub enrichment: Enrichment,
    /// Set by the Kafka sink on a record it cut to fit (`on_oversize: truncate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oversize: Option<Oversize>,
    /// On the `d` and `c` records of an update that changed the row's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_change: Option<KeyChange>,
    /// On the record of an update that took the row into or out of the pipeline's `filter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_change: Option<FilterChange>,
    /// On a `t` record: the partitions truncated (`None`: the whole table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<Truncate>,
    /// On a `w` record: the window's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Box<Window>>,
    /// On a change-topic record (`run --role source`): the table's layout, so that a worker
    /// can read the images back into typed values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Arc<ChangeSchema>>,
    #[serde(skip)]
    pub key: Image,
    /// Index of the pipeline in the router's list.
    #[serde(skip)]
    pub pipeline: usize,
}

impl ChangeRecord {
    /// The record's resume position: its transaction's start, rows event and row.
    pub fn position(&self) -> BinlogPosition {
        BinlogPosition {
            event: self.source.event,
            row: self.source.row,
            ..BinlogPosition::new(self.source.file.clone(), self.source.pos)
        }
    }

    /// The record's place among the records one row (or statement) makes for one pipeline at
    /// one position, in the order they are emitted: a truncate (0), the `d` of a split key
    /// change (1), any other record (2: the `c` of the split, a row). A write-back that
    /// committed the `d` of a key change has not written its `c`, though both share a position.
    pub fn part(&self) -> u8 {
        match self.op {
            Op::Truncate => 0,
            Op::Delete if self.key_change.is_some() => 1,
            _ => 2,
        }
    }

    /// Where a write-back stands once it has applied this record.
    pub fn applied_point(&self) -> AppliedPoint {
        AppliedPoint {
            position: self.position(),
            part: self.part(),
        }
    }

    /// Whether the record comes after `applied` (what a write-back had applied): a change
    /// after it in stream order (its position, then its [`ChangeRecord::part`]) — or a
    /// backfill row (`op: r`) at it, or any window (`op: w`). Every row of a backfill chunk
    /// carries its high watermark's position, so rows of one chunk written in separate
    /// transactions share `applied`; they are never replays, since a chunk is emitted once
    /// (after a restart its watermark in the binlog finds no open chunk, and the chunk is read
    /// again under a new watermark).
    pub fn after_applied(&self, applied: &AppliedPoint) -> bool {
        // A window is written by its id (an upsert: a repeat writes the same row), and
        // windows close out of position order: never taken for a replay by position.
        if self.op == Op::Window {
            return true;
        }
        let order = self
            .position()
            .cmp(&applied.position)
            .then(self.part().cmp(&applied.part));
        match order {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => self.op == Op::Read,
            std::cmp::Ordering::Less => false,
        }
    }
}

/// What a write-back has applied: the position of the last record it wrote and that record's
/// [`ChangeRecord::part`] (a progress row written before parts were kept reads as part 2:
/// everything at its position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPoint {
    pub position: BinlogPosition,
    pub part: u8,
}

impl std::fmt::Display for AppliedPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (part {})", self.position, self.part)
    }
}

/// The old and new key of an update that changed the row's key: it is emitted as a `d` of
/// the old key then a `c` of the new one, both carrying this.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyChange {
    pub old: Image,
    pub new: Image,
}

/// A window of rows enriched by one call (`op: "w"`): which rows, in stream order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Window {
    /// 16 hex digits of the SHA-256 of the pipeline and the first and last rows' positions and
    /// keys: the same rows give the same id (a window rebuilt after a crash has it again).
    pub id: String,
    /// The group column and its value (`enrichment.window.group`), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Image>,
    /// Rows in the window.
    pub rows: usize,
    /// The first row's position.
    pub first: BinlogPosition,
    /// The last row's position.
    pub last: BinlogPosition,
    /// The first and last rows' commit times, ms since the Unix epoch.
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
    /// Each row's key, in stream order.
    pub keys: Vec<Image>,
}

/// How an update moved a row across a pipeline's `filter` (a filtered pipeline streams a view
/// of its table: rows come into it and leave it).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FilterChange {
    /// The row did not pass before the update and does after: a `u` (or, with a key change,
    /// the new key's `c`) that is the row's first record in the view.
    Entered,
    /// The row passed before the update and does not after: a `d` of its image before it.
    Left,
}

impl FilterChange {
    /// The name in the envelope: `entered`, `left`.
    pub fn name(self) -> &'static str {
        match self {
            FilterChange::Entered => "entered",
            FilterChange::Left => "left",
        }
    }
}

/// The layout of a table as a change-topic record carries it (`schema`): every column the
/// records show, in table order, with how its values are written in `before` / `after`, and
/// the primary key. Workers (`run --role worker`) read the images back with it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeSchema {
    /// 16 hex digits of a hash of `columns` and `primary_key`: it changes when the table's
    /// layout does (an `ALTER TABLE`), and only then.
    pub version: String,
    pub columns: Vec<ChangeColumn>,
    /// The primary key's columns (empty: the table has none).
    pub primary_key: Vec<String>,
}

/// One column of a [`ChangeSchema`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeColumn {
    pub name: String,
    /// The SQL type as the binlog gives it (`INT`, `VARCHAR`, `TIME(3)`, `JSON`, `TEXT/BLOB`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// How the images write its values.
    pub encoding: ValueEncoding,
}

/// How a change-topic image writes a column's values (the README's type table gives each
/// SQL type's form; SQL NULL is always `null`).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueEncoding {
    /// The column's JSON document itself (JSON columns, VECTOR as an array).
    Json,
    /// A number that is a double (FLOAT, DOUBLE), in its shortest round-trip form.
    Float,
    /// A string or an integer, as the README's type table says.
    Plain,
}

impl ChangeSchema {
    /// The schema of `columns` (name, type, encoding) and `primary_key`, with its version.
    pub fn new(columns: Vec<ChangeColumn>, primary_key: Vec<String>) -> ChangeSchema {
        let mut parts: Vec<String> = Vec::with_capacity(3 * columns.len() + primary_key.len() + 1);
        for c in &columns {
            parts.push(c.name.clone());
            parts.push(c.type_name.clone());
            parts.push(format!("{:?}", c.encoding));
        }
        parts.push(String::new());
        parts.extend(primary_key.iter().cloned());
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        ChangeSchema {
            version: super::hash::short_hash(&refs),
            columns,
            primary_key,
        }
    }
}

/// What a `TRUNCATE` removed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Truncate {
    /// The partitions whose rows went (`ALTER TABLE … TRUNCATE`, `DROP`, `CONVERT` or
    /// `EXCHANGE PARTITION`); `None`: the whole table (`TRUNCATE TABLE`, `TRUNCATE PARTITION
    /// ALL`, `CREATE OR REPLACE TABLE`, `DROP TABLE`, the other table of an exchange).
    pub partitions: Option<Vec<String>>,
    /// The table itself went with its rows (`DROP TABLE`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
}

/// What the Kafka sink did to a record larger than the producer accepts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Oversize {
    /// The record's size as it was (key and value), bytes.
    pub bytes: usize,
    /// The producer's `message.max.bytes`.
    pub limit: usize,
    /// The values cut, as `after.column` / `before.column`.
    pub truncated: Vec<String>,
}

/// A JSON object, in insertion order.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// What the enrichment stage made of a record; sinks serialise it as the envelope's
/// `enrichment` object: the backend's labels (`backend`, `operation` or `model`…), then the
/// outcome's own keys — the answer's fields and `usage`, `truncated: true`, `skipped: why`, or
/// `error: {kind, message, attempts}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Enrichment {
    /// The pipeline enriches nothing (`{}`).
    #[default]
    None,
    /// The backend answered (or the cache did). `fields`: the answer's fields, then `usage`
    /// where the backend reports tokens; `truncated`: the input was cut to fit, or the answer
    /// was cut at the model's limit and the pipeline accepts cut answers.
    Answered {
        labels: Fields,
        fields: Fields,
        truncated: bool,
    },
    /// No call was made for the record.
    Skipped { labels: Fields, reason: Skip },
    /// The record cannot be enriched: it goes to the dead letters. `usage`: the tokens a cut
    /// answer used.
    Failed {
        labels: Fields,
        usage: Option<serde_json::Value>,
        error: Failure,
    },
}

/// Why no call was made (`skipped` in the envelope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A delete: there is no row left to enrich.
    Deleted,
    /// The input text is NULL or empty.
    NoText,
    /// The write-back had applied the record before a restart.
    AlreadyApplied,
    /// A `TRUNCATE` record.
    Truncated,
    /// An update that changed none of the enrichment's input columns.
    InputUnchanged,
}

impl Skip {
    /// As the envelope spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Deleted => "deleted",
            Skip::NoText => "no text",
            Skip::AlreadyApplied => "already applied",
            Skip::Truncated => "truncated",
            Skip::InputUnchanged => "input unchanged",
        }
    }
}

/// Why a record cannot be enriched (`error` in the envelope).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The error kind (`bad_input`, `bad_output`, `incomplete`, …: the backend's `ErrorKind`).
    pub kind: &'static str,
    pub message: String,
    /// Calls made for the record.
    pub attempts: u32,
}

impl Enrichment {
    /// The envelope's `enrichment` object.
    pub fn to_fields(&self) -> Fields {
        let mut m = Fields::new();
        match self {
            Enrichment::None => {}
            Enrichment::Answered {
                labels,
                fields,
                truncated,
            } => {
                m.extend(labels.clone());
                m.extend(fields.clone());
                if *truncated {
                    m.insert("truncated".into(), true.into());
                }
            }
            Enrichment::Skipped { labels, reason } => {
                m.extend(labels.clone());
                m.insert("skipped".into(), reason.as_str().into());
            }
            Enrichment::Failed {
                labels,
                usage,
                error,
            } => {
                m.extend(labels.clone());
                if let Some(u) = usage {
                    m.insert("usage".into(), u.clone());
                }
                m.insert(
                    "error".into(),
                    serde_json::json!({"kind": error.kind, "message": error.message, "attempts": error.attempts}),
                );
            }
        }
        m
    }
}

impl Serialize for Enrichment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Most records: `{}` without building the fields.
            Enrichment::None => s.serialize_map(Some(0))?.end(),
            _ => self.to_fields().serialize(s),
        }
    }
}
