//! A change-topic record (the source role's format: the envelope with the table's `schema`,
//! see the README's "Change topics") read back into the typed events the pipeline stage
//! takes: the same [`RowChange`] the binlog reader would have made, typed by the schema.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::record::{ChangeSchema, ValueEncoding};
use crate::model::{BinlogPosition, ColumnValue, JsonText, Op};
use crate::source::mysql::plan::{ColumnPlan, TablePlan};
use crate::source::mysql::values::Kind;
use crate::source::{KeySide, RowChange, SourceEvent, TableTruncated};

/// What a change-topic record cannot be read as: its topic, partition and offset, and why.
#[derive(Debug, thiserror::Error)]
#[error("change topic `{topic}` partition {partition} offset {offset}: {reason}; the record is not one the source role writes (check `scale_out.change_topic` and the source's version)")]
pub struct BadChange {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// The members of a change-topic record a worker reads.
#[derive(Deserialize)]
struct Message {
    op: String,
    before: Option<HashMap<String, Box<RawValue>>>,
    after: Option<HashMap<String, Box<RawValue>>>,
    source: Source,
    #[serde(default)]
    truncate: Option<TruncateMember>,
    /// On the two copies of an update that changed the key.
    #[serde(default)]
    key_change: Option<KeyChangeMember>,
    #[serde(default)]
    schema: Option<ChangeSchema>,
}

#[derive(Deserialize)]
struct Source {
    server_id: u32,
    db: String,
    table: String,
    #[serde(default)]
    gtid: Option<String>,
    file: String,
    pos: u64,
    event: u64,
    row: u64,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct KeyChangeMember {
    old: Box<RawValue>,
}

#[derive(Deserialize)]
struct TruncateMember {
    partitions: Option<Vec<String>>,
    #[serde(default)]
    dropped: bool,
}

/// Table layouts met so far, by database, table and schema version: rows of one layout share
/// one [`TablePlan`] (the router binds pipelines once per plan).
#[derive(Default)]
pub struct Plans {
    by_version: HashMap<(String, String, String), Arc<TablePlan>>,
}

impl Plans {
    fn plan(&mut self, db: &str, table: &str, schema: &ChangeSchema) -> Arc<TablePlan> {
        let key = (db.to_string(), table.to_string(), schema.version.clone());
        self.by_version
            .entry(key)
            .or_insert_with(|| Arc::new(table_plan(db, table, schema)))
            .clone()
    }
}

/// The plan of a table as a change topic describes it. Its columns are never decoded from
/// binlog bytes (rows come as values): `kind` only says how values were encoded.
fn table_plan(db: &str, table: &str, schema: &ChangeSchema) -> TablePlan {
    let columns = schema
        .columns
        .iter()
        .map(|c| ColumnPlan {
            name: c.name.clone(),
            kind: match c.encoding {
                ValueEncoding::Json => Kind::Json { len_bytes: 4 },
                ValueEncoding::Float => Kind::Double,
                ValueEncoding::Plain => Kind::Null,
            },
            type_name: c.type_name.clone(),
            hidden: false,
        })
        .collect::<Vec<_>>();
    let primary_key = schema
        .primary_key
        .iter()
        .filter_map(|k| columns.iter().position(|c| c.name == *k))
        .collect();
    TablePlan {
        table_id: 0,
        db: db.to_string(),
        table: table.to_string(),
        columns,
        primary_key,
        row_end: None,
        every_column_logged: true,
    }
}

/// Where a change-topic record sits, for errors.
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl At<'_> {
    /// The partition as a record's origin: `topic[partition]`.
    pub fn origin(&self) -> Arc<str> {
        Arc::from(format!("{}[{}]", self.topic, self.partition))
    }

    fn bad(&self, reason: impl Into<String>) -> BadChange {
        BadChange {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            reason: reason.into(),
        }
    }
}

/// The event a change-topic record (its Kafka key and value) stands for: a row, or a
/// truncate (`None` for a truncate the caller does not take: see [`super::Worker`]).
pub fn event(
    key: Option<&[u8]>,
    payload: &[u8],
    at: &At<'_>,
    plans: &mut Plans,
    take_truncate: bool,
) -> Result<Option<SourceEvent>, BadChange> {
    let m: Message = serde_json::from_slice(payload).map_err(|e| at.bad(e.to_string()))?;
    let s = &m.source;
    let position = BinlogPosition {
        file: Arc::from(s.file.as_str()),
        pos: s.pos,
        event: s.event,
        row: s.row,
        gtid: s.gtid.as_deref().map(Arc::from),
    };
    let op = match m.op.as_str() {
        "c" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => return Ok(take_truncate.then(|| truncated(m, position, at.origin()))),
        other => return Err(at.bad(format!("op `{other}`"))),
    };
    let schema = m.schema.as_ref().ok_or_else(|| at.bad("no `schema`"))?;
    let plan = plans.plan(&s.db, &s.table, schema);
    let image = |img: Option<&HashMap<String, Box<RawValue>>>| {
        img.map(|v| values(v, schema, at)).transpose()
    };
    Ok(Some(SourceEvent::Row(RowChange {
        table: plan,
        op,
        before: image(m.before.as_ref())?,
        after: image(m.after.as_ref())?,
        position,
        server_id: s.server_id,
        ts_ms: s.ts_ms,
        left_out: None,
        // The copy in the old key's partition is the one keyed by the old key.
        key_side: m.key_change.as_ref().map(|k| match key {
            Some(key) if key == k.old.get().as_bytes() => KeySide::Old,
            _ => KeySide::New,
        }),
        origin: Some(at.origin()),
    })))
}

fn truncated(m: Message, position: BinlogPosition, origin: Arc<str>) -> SourceEvent {
    let t = m.truncate.unwrap_or(TruncateMember {
        partitions: None,
        dropped: false,
    });
    SourceEvent::Truncated(TableTruncated {
        db: m.source.db,
        table: m.source.table,
        partitions: t.partitions,
        dropped: t.dropped,
        resume: position.clone(),
        position,
        server_id: m.source.server_id,
        ts_ms: m.source.ts_ms,
        origin: Some(origin),
    })
}

/// An image's values in the schema's column order.
fn values(
    img: &HashMap<String, Box<RawValue>>,
    schema: &ChangeSchema,
    at: &At<'_>,
) -> Result<Vec<ColumnValue>, BadChange> {
    schema
        .columns
        .iter()
        .map(|c| {
            let raw = img
                .get(&c.name)
                .ok_or_else(|| at.bad(format!("column `{}` missing from an image", c.name)))?;
            value(raw.get(), c.encoding).map_err(|e| at.bad(format!("column `{}`: {e}", c.name)))
        })
        .collect()
}

/// One value as the source role wrote it ([`ValueEncoding`]).
fn value(raw: &str, encoding: ValueEncoding) -> Result<ColumnValue, String> {
    if raw == "null" {
        return Ok(ColumnValue::Null);
    }
    if encoding == ValueEncoding::Json {
        return JsonText::parse(raw).map(ColumnValue::Json);
    }
    if raw.starts_with('"') {
        return serde_json::from_str::<String>(raw)
            .map(ColumnValue::Text)
            .map_err(|e| e.to_string());
    }
    if encoding == ValueEncoding::Plain {
        if let Ok(i) = raw.parse::<i64>() {
            return Ok(ColumnValue::Int(i));
        }
        if let Ok(u) = raw.parse::<u64>() {
            return Ok(ColumnValue::UInt(u));
        }
    }
    raw.parse::<f64>()
        .map(ColumnValue::Float)
        .map_err(|_| format!("`{raw}` is not a value of this column"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_the_source_typed_them() {
        let j = |s: &str| value(s, ValueEncoding::Json).map(|v| v.to_json_text());
        assert_eq!(j("{\"a\":1.50}").as_deref(), Ok("{\"a\":1.50}"));
        assert_eq!(
            j("\"text in a JSON column\"").as_deref(),
            Ok("\"text in a JSON column\"")
        );
        assert!(matches!(
            value("null", ValueEncoding::Json),
            Ok(ColumnValue::Null)
        ));
        let p = |s: &str| value(s, ValueEncoding::Plain);
        assert!(matches!(
            p("-9223372036854775808"),
            Ok(ColumnValue::Int(i64::MIN))
        ));
        assert!(matches!(
            p("18446744073709551615"),
            Ok(ColumnValue::UInt(u64::MAX))
        ));
        assert!(matches!(p("\"0012.50\""), Ok(ColumnValue::Text(t)) if t == "0012.50"));
        assert!(matches!(p("\"a\\u00e9\\n\""), Ok(ColumnValue::Text(t)) if t == "a\u{e9}\n"));
        let f = |s: &str| value(s, ValueEncoding::Float);
        assert!(matches!(f("1.0"), Ok(ColumnValue::Float(x)) if x == 1.0));
        assert!(matches!(f("1e300"), Ok(ColumnValue::Float(x)) if x == 1e300));
        assert!(matches!(f("\"inf\""), Ok(ColumnValue::Text(t)) if t == "inf"));
        assert!(p("{}").is_err());
    }
}
