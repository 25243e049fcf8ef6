//! The envelope's JSON bytes, written straight into a buffer: the same bytes as
//! `serde_json::to_vec` of the [`ChangeRecord`] (its `Serialize` stays the definition; a test
//! holds the two equal), without serde's per-token dispatch. Every record a sink sends is
//! encoded here, so this is the hot path of the pipeline stage (see BENCHMARKS.md).

use serde_json::ser::{CompactFormatter, Formatter};

use crate::model::record::{ChangeRecord, Enrichment, Image, SourceInfo};
use crate::model::ColumnValue;

/// Appends the record's JSON envelope to `out` (`{"op":…,"before":…,"after":…,"source":…,
/// "enrichment":…}` and the optional members, in the order of [`ChangeRecord`]'s fields).
///
/// Errors: only those of `serde_json` on the rarer members (enrichment outcomes, windows),
/// which cannot fail into a `Vec`.
pub fn write_record(rec: &ChangeRecord, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    // Every field named: a field added to the record fails to compile here until it is written.
    let ChangeRecord {
        op,
        before,
        after,
        source,
        enrichment,
        oversize,
        key_change,
        filter_change,
        truncate,
        window,
        schema,
        key: _,
        pipeline: _,
    } = rec;
    out.extend_from_slice(b"{\"op\":");
    write_str(out, op.code());
    out.extend_from_slice(b",\"before\":");
    write_image_or_null(out, before.as_ref());
    out.extend_from_slice(b",\"after\":");
    write_image_or_null(out, after.as_ref());
    out.extend_from_slice(b",\"source\":");
    write_source(out, source);
    out.extend_from_slice(b",\"enrichment\":");
    match enrichment {
        Enrichment::None => out.extend_from_slice(b"{}"),
        e => serde_json::to_writer(&mut *out, e)?,
    }
    if let Some(o) = oversize {
        out.extend_from_slice(b",\"oversize\":");
        serde_json::to_writer(&mut *out, o)?;
    }
    if let Some(k) = key_change {
        out.extend_from_slice(b",\"key_change\":{\"old\":");
        write_image(out, &k.old);
        out.extend_from_slice(b",\"new\":");
        write_image(out, &k.new);
        out.push(b'}');
    }
    if let Some(f) = filter_change {
        out.extend_from_slice(b",\"filter_change\":");
        write_str(out, f.name());
    }
    if let Some(t) = truncate {
        out.extend_from_slice(b",\"truncate\":");
        serde_json::to_writer(&mut *out, t)?;
    }
    if let Some(w) = window {
        out.extend_from_slice(b",\"window\":");
        serde_json::to_writer(&mut *out, w)?;
    }
    if let Some(s) = schema {
        out.extend_from_slice(b",\"schema\":");
        serde_json::to_writer(&mut *out, &**s)?;
    }
    out.push(b'}');
    Ok(())
}

/// Appends an image as a JSON object (column names in order), as [`Image`]'s `Serialize`.
pub fn write_image(out: &mut Vec<u8>, img: &Image) {
    out.push(b'{');
    for (i, (n, v)) in img.names.iter().zip(&img.values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, n);
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

fn write_image_or_null(out: &mut Vec<u8>, img: Option<&Image>) {
    match img {
        Some(i) => write_image(out, i),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_source(out: &mut Vec<u8>, s: &SourceInfo) {
    let SourceInfo {
        pipeline,
        server_id,
        db,
        table,
        gtid,
        file,
        pos,
        event,
        row,
        ts_ms,
        origin: _, // not in the envelope
    } = s;
    out.extend_from_slice(b"{\"pipeline\":");
    write_str(out, pipeline);
    out.extend_from_slice(b",\"server_id\":");
    write_u64(out, u64::from(*server_id));
    out.extend_from_slice(b",\"db\":");
    write_str(out, db);
    out.extend_from_slice(b",\"table\":");
    write_str(out, table);
    if let Some(g) = gtid {
        out.extend_from_slice(b",\"gtid\":");
        write_str(out, g);
    }
    out.extend_from_slice(b",\"file\":");
    write_str(out, file);
    out.extend_from_slice(b",\"pos\":");
    write_u64(out, *pos);
    out.extend_from_slice(b",\"event\":");
    write_u64(out, *event);
    out.extend_from_slice(b",\"row\":");
    write_u64(out, *row);
    out.extend_from_slice(b",\"ts_ms\":");
    write_u64(out, *ts_ms);
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, v: &ColumnValue) {
    // Writes into a `Vec` cannot fail; the formatter is serde_json's own, so numbers come out
    // as `serde_json::to_vec` writes them.
    let f = &mut CompactFormatter;
    let _ = match v {
        ColumnValue::Null => f.write_null(out),
        ColumnValue::Int(i) => f.write_i64(out, *i),
        ColumnValue::UInt(u) => f.write_u64(out, *u),
        // serde_json writes a NaN or an infinity as `null`.
        ColumnValue::Float(x) if !x.is_finite() => f.write_null(out),
        ColumnValue::Float(x) => f.write_f64(out, *x),
        ColumnValue::Text(t) => {
            write_str(out, t);
            Ok(())
        }
        ColumnValue::Json(j) => {
            out.extend_from_slice(j.get().as_bytes());
            Ok(())
        }
    };
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    let _ = CompactFormatter.write_u64(out, n);
}

/// A JSON string: quoted, with serde_json's escapes (`"`, `\` and the control characters
/// below U+0020; everything else as it is).
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::record::{Failure, Fields, KeyChange, Oversize, Skip, Truncate, Window};
    use crate::model::value::JsonText;
    use crate::model::{BinlogPosition, Op};

    fn image(pairs: &[(&str, ColumnValue)]) -> Image {
        Image {
            names: Arc::from(pairs.iter().map(|p| p.0.to_string()).collect::<Vec<_>>()),
            values: pairs.iter().map(|p| p.1.clone()).collect(),
        }
    }

    fn record(op: Op, gtid: Option<&str>) -> ChangeRecord {
        let values = [
            ("id", ColumnValue::Int(-7)),
            ("u", ColumnValue::UInt(u64::MAX)),
            ("f", ColumnValue::Float(0.1)),
            ("big", ColumnValue::Float(1e300)),
            ("tiny", ColumnValue::Float(-5e-324)),
            ("whole", ColumnValue::Float(3.0)),
            ("nan", ColumnValue::Float(f64::NAN)),
            (
                "t",
                ColumnValue::Text("a\"b\\c\n\u{1}\u{1f}\u{7f}é😀</".into()),
            ),
            ("plain", ColumnValue::Text("row-1".into())),
            ("empty", ColumnValue::Text(String::new())),
            ("nul", ColumnValue::Null),
            (
                "j",
                ColumnValue::Json(
                    JsonText::parse(r#"{"n": 1.000000000000000000001, "s": "x\u0001"}"#).unwrap(),
                ),
            ),
            ("name \"quoted\"\t", ColumnValue::Int(1)),
        ];
        ChangeRecord {
            op,
            before: (op != Op::Insert).then(|| image(&values)),
            after: (op != Op::Delete).then(|| image(&values[..3])),
            source: SourceInfo {
                pipeline: Arc::from("p\"1"),
                server_id: u32::MAX,
                db: Arc::from("db"),
                table: Arc::from("t\u{0}"),
                gtid: gtid.map(Arc::from),
                file: Arc::from("mariadb-bin.000042"),
                pos: 1 << 40,
                event: 3,
                row: 0,
                ts_ms: 1_700_000_000_123,
                origin: Some(Arc::from("cdc-changes.db.t[2]")),
            },
            enrichment: Enrichment::None,
            oversize: None,
            key_change: None,
            filter_change: None,
            truncate: None,
            window: None,
            // A change-topic record's layout (on updates here, so both forms are compared).
            schema: (op == Op::Update).then(|| {
                Arc::new(crate::model::record::ChangeSchema::new(
                    vec![crate::model::record::ChangeColumn {
                        name: "n\"".into(),
                        type_name: "DECIMAL(65,30)".into(),
                        encoding: crate::model::record::ValueEncoding::Float,
                    }],
                    vec!["n\"".into()],
                ))
            }),
            key: image(&values[..1]),
            pipeline: 0,
        }
    }

    fn assert_same(rec: &ChangeRecord) {
        let mut fast = Vec::new();
        write_record(rec, &mut fast).unwrap();
        let serde = serde_json::to_vec(rec).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&serde)
        );
        let mut key = Vec::new();
        write_image(&mut key, &rec.key);
        assert_eq!(key, serde_json::to_vec(&rec.key).unwrap());
    }

    #[test]
    fn writes_the_bytes_serde_json_writes() {
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Read] {
            assert_same(&record(op, None));
            assert_same(&record(op, Some("0-1-42")));
        }
        let mut labels = Fields::new();
        labels.insert("backend".into(), "comprehend".into());
        let mut fields = Fields::new();
        fields.insert("sentiment".into(), "POSITIVE".into());
        for e in [
            Enrichment::Answered {
                labels: labels.clone(),
                fields,
                truncated: true,
            },
            Enrichment::Skipped {
                labels: labels.clone(),
                reason: Skip::NoText,
            },
            Enrichment::Failed {
                labels,
                usage: Some(serde_json::json!({"input_tokens": 3})),
                error: Failure {
                    kind: "bad_output",
                    message: "not \"JSON\"".into(),
                    attempts: 3,
                },
            },
        ] {
            let mut r = record(Op::Update, None);
            r.enrichment = e;
            assert_same(&r);
        }
        let mut r = record(Op::Delete, Some("3E11FA47-71CA-11E1-9E33-C80AA9429562:23"));
        r.oversize = Some(Oversize {
            bytes: 2_000_000,
            limit: 1_000_000,
            truncated: vec!["after.body".into()],
        });
        r.key_change = Some(KeyChange {
            old: image(&[("id", ColumnValue::Int(1))]),
            new: image(&[("id", ColumnValue::Int(2))]),
        });
        r.filter_change = Some(crate::model::record::FilterChange::Left);
        r.truncate = Some(Truncate {
            dropped: true,
            partitions: Some(vec!["p0".into()]),
        });
        r.window = Some(Box::new(Window {
            id: "0123456789abcdef".into(),
            group: Some(image(&[("channel", ColumnValue::Text("mail".into()))])),
            rows: 2,
            first: BinlogPosition::new("f", 4),
            last: BinlogPosition::new("f", 900),
            first_ts_ms: 1,
            last_ts_ms: 2,
            keys: vec![image(&[("id", ColumnValue::Int(1))])],
        }));
        assert_same(&r);
        let mut t = record(Op::Truncate, None);
        t.before = None;
        t.after = None;
        t.key = image(&[]);
        assert_same(&t);
    }
}
