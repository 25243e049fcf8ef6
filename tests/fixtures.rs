//! Binlogs written by MySQL 5.1–9 and MariaDB servers (../shared/fixtures/mysql-binlogs):
//! MySQL-only events decode to exact values; truncated and corrupt files give clear errors.

use std::path::PathBuf;

use cdc_enricher::decode_file;
use cdc_enricher::ColumnValue;
use cdc_enricher::SourceEvent;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/mysql-binlogs")
}

/// (rows as JSON, the error if decoding stopped or a table failed)
fn decode(name: &str) -> (Vec<Value>, Option<String>) {
    let path = dir().join(name);
    let mut rows = Vec::new();
    let mut failed = None;
    let r = decode_file(path.to_str().unwrap(), |ev| {
        if let SourceEvent::TableFailed {
            error, position, ..
        } = &ev
        {
            failed.get_or_insert(format!("{error} (at {position})"));
        }
        if let SourceEvent::Row(r) = ev {
            let shown: Vec<usize> = r.table.visible().collect();
            let img = |v: &Option<Vec<ColumnValue>>| match v {
                None => Value::Null,
                Some(v) => Value::Object(
                    shown
                        .iter()
                        .map(|i| (r.table.columns[*i].name.clone(), v[*i].to_json_value()))
                        .collect(),
                ),
            };
            rows.push(json!({
                "op": r.op.code(), "table": format!("{}.{}", r.table.db, r.table.table),
                "gtid": r.position.gtid.as_deref(), "row": r.position.row, "before": img(&r.before), "after": img(&r.after),
            }));
        }
    });
    (rows, r.err().map(|e| e.to_string()).or(failed))
}

#[test]
fn every_fixture_decodes_or_fails_cleanly() {
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_none_or(|e| e != "md"));
    files.sort();
    assert!(files.len() > 30);
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let res = std::panic::catch_unwind(|| decode(&name));
        assert!(res.is_ok(), "{name} panicked");
    }
}

#[test]
fn enum_set_and_strings() {
    let (rows, err) = decode("mysql-enum-string-set.000001");
    assert_eq!(err, None);
    assert_eq!(rows.len(), 3);
    let d = &rows[2];
    assert_eq!(d["op"], "d");
    assert_eq!(d["gtid"], "93e95066-a2f4-11ec-9b69-9657f0ae95e2:5");
    assert_eq!(d["before"]["f1"], "field1");
    assert_eq!(d["before"]["f2"], "field_2");
    assert_eq!(d["before"]["f3"], "variant2");
    assert_eq!(d["before"]["f4"], "two,four");
}

#[test]
fn bit_time_vector_and_tagged_gtid() {
    let (rows, err) = decode("mysql_type_bit.000001");
    assert_eq!(err, None);
    assert_eq!(rows[0]["after"], json!({"a": 4, "b": "foo", "c": 32}));

    // A negative TIME of 21 days, 3:48:27.
    let (rows, err) = decode("time_issue.000001");
    assert_eq!(err, None);
    assert_eq!(rows[0]["after"], json!({"@1": "-507:48:27"}));

    let (rows, err) = decode("vector.binlog");
    assert_eq!(err, None);
    assert_eq!(
        rows[0]["after"],
        json!({"id": 1, "vector_column": [1.1, 2.2, 3.3]})
    );
    assert_eq!(
        rows[1]["after"],
        json!({"id": 2, "vector_column": [1.0, -1.0, 0.0]})
    );

    let (rows, err) = decode("binlog_transaction_with_GTID_TAG.000001");
    assert_eq!(err, None);
    assert_eq!(
        rows[0]["gtid"],
        "55778904-0299-11f1-b1b8-4ef0c4956feb:mytag:3"
    );
    assert_eq!(
        rows[0]["after"],
        json!({"@1": 3, "@2": 100, "@3": "250.00"})
    );
}

#[test]
fn zstd_transaction_payload() {
    let (rows, err) = decode("transaction_compression.000001");
    assert_eq!(err, None);
    assert_eq!(
        rows,
        vec![
            json!({"op": "c", "table": "test.tb1", "gtid": null, "row": 0, "before": null, "after": {"@1": 1}})
        ]
    );
}

#[test]
fn invisible_columns_and_signed_values() {
    let (rows, err) = decode("binlog-invisible-columns.000001");
    assert_eq!(err, None);
    assert_eq!(
        rows[0]["after"],
        json!({"f1": 1, "f2": 2, "f3": -3, "f4": "4", "f5": "BQ==", "f6": 6_000_000_000u64})
    );
    assert_eq!(rows[2]["op"], "u");
    assert_eq!(
        rows[2]["after"],
        json!({"f1": 111, "f2": 222, "f3": -333, "f4": "444", "f5": "VQ==", "f6": null})
    );
}

#[test]
fn binary_json_and_partial_json_updates() {
    let (rows, err) = decode("json.binlog.000001");
    // Partial JSON updates are applied to the before image: the after image is whole.
    let u = rows
        .iter()
        .find(|r| r["op"] == "u" && r["after"]["@1"] == 3)
        .unwrap();
    assert_eq!(
        u["before"]["@2"],
        json!({"age": 40, "data": "zzzzzzzzzz", "name": "Pete"})
    );
    assert_eq!(
        u["after"]["@2"],
        json!({"age": 41, "data": "zzzzzzzzzz", "name": "Pete"})
    );
    // The file ends with a partial update logged without the before document: that table
    // fails with a clear error naming the column, its type and the position.
    assert_eq!(
        err.as_deref(),
        Some("a row of `mysql`.`t`, column `@2` (JSON) cannot be decoded: a partial JSON update whose before image lacks the document \
              (binlog_row_image is not FULL); set binlog_row_image=FULL or binlog_row_value_options='' \
              (at json.binlog.000001:3527)")
    );

    let (rows, err) = decode("json-opaque.binlog");
    assert_eq!(err, None);
    assert_eq!(rows[1]["after"], json!({"a": {"b": "2012-03-18"}}));
}

#[test]
fn mariadb_gtids() {
    let (rows, err) = decode("mariadb-bin.000001");
    assert_eq!(err, None);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["gtid"], "0-1-1");
    assert_eq!(rows[1]["gtid"], "0-1-2");
    assert_eq!(rows[0]["after"]["id"], 62);
    assert_eq!(rows[0]["after"]["created"], "2022-04-20T22:18:04Z");
}

#[test]
fn truncated_and_corrupt_files_give_clear_errors() {
    let p = |n: &str| dir().join(n).display().to_string();
    let (_, err) = decode("binlog_truncated_event.000001");
    assert_eq!(
        err.unwrap(),
        format!(
            "{}: truncated event at offset 4: 10 bytes remain, an event header needs 19",
            p("binlog_truncated_event.000001")
        )
    );
    let (_, err) = decode("binlog_truncated_prev_gtid_event.000001");
    assert_eq!(
        err.unwrap(),
        format!(
            "{}: truncated event at offset 120: 9 bytes remain, an event header needs 19",
            p("binlog_truncated_prev_gtid_event.000001")
        )
    );
    let (_, err) = decode("corrupt-relay-bin.000624");
    assert_eq!(
        err.unwrap(),
        format!(
            "{}: event at mysql-bin.010260:28 (type 2) cannot be decoded: can't parse: buf doesn't have enough data",
            p("corrupt-relay-bin.000624")
        )
    );
    let (_, err) = decode("bug40482-bin.000001");
    assert!(err
        .unwrap()
        .contains("INCIDENT event: the server reports lost changes"));
    let (_, err) = decode("README.md");
    assert_eq!(
        err.unwrap(),
        format!(
            "{} is not a binlog file: it does not start with the magic bytes FE 62 69 6E",
            p("README.md")
        )
    );
}
