//! The fidelity cases of `../shared/fidelity-cases/` that are about reading values (04, 05,
//! 07, 08, 11, 13) and isolation (90): each case's `case.sql` runs on a spawned MariaDB with
//! the mariadb client, the daemon reads the binlog from its start with the case's
//! `pipeline.yaml`, and the records in Kafka must be exactly the ones `expected.md` lists.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs a case: its SQL, then the daemon (from the binlog's start) with its pipeline and
/// `extra` pipelines; returns the records of `topic` once `n` are there.
fn run_case(
    case: &str,
    topic: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> (MariaDb, Kafka, Daemon, Vec<Record>) {
    let (db, kafka, mut d) = start_fidelity_case(case, extra, "");
    let mut tail = kafka.tail(topic);
    wait_records(&mut d, &mut tail, n, 60);
    tail.drain(Duration::from_secs(1));
    assert_eq!(tail.records.len(), n, "{:#?}", changes(&tail.records));
    let recs = tail.records.clone();
    (db, kafka, d, recs)
}

fn key(id: i64) -> Option<String> {
    Some(format!("{{\"id\":{id}}}"))
}

#[test]
fn case_04_negative_time_fractions_of_every_precision() {
    let (_db, _k, _d, recs) = run_case("04-negative-time-fractions", "bug.04", 6, &[]);
    let row = |id: i64, t: [&str; 7]| json!({"id": id, "t0": t[0], "t1": t[1], "t2": t[2], "t3": t[3], "t4": t[4], "t5": t[5], "t6": t[6]});
    let r1 = row(
        1,
        [
            "-00:00:01",
            "-00:00:00.1",
            "-00:00:00.01",
            "-00:00:00.001",
            "-00:00:00.0001",
            "-00:00:00.00001",
            "-00:00:00.000001",
        ],
    );
    let r2 = row(
        2,
        [
            "-838:59:59",
            "-838:59:59.9",
            "-838:59:59.99",
            "-838:59:59.999",
            "-838:59:59.9999",
            "-838:59:59.99999",
            "-838:59:59.999999",
        ],
    );
    let r3 = row(
        3,
        [
            "-12:34:56",
            "-12:34:56.5",
            "-12:34:56.05",
            "-12:34:56.250",
            "-12:34:56.0001",
            "-12:34:56.12345",
            "-12:34:56.010123",
        ],
    );
    let r4 = row(
        4,
        [
            "838:59:59",
            "838:59:59.9",
            "00:00:00.99",
            "00:00:00.999",
            "-01:00:00.5000",
            "-01:00:00.00001",
            "-01:00:00.500000",
        ],
    );
    let r5 = row(
        5,
        [
            "00:00:00",
            "00:00:00.0",
            "00:00:00.00",
            "00:00:00.000",
            "-23:59:59.9999",
            "-00:00:01.99999",
            "-24:00:00.000001",
        ],
    );
    let mut r3u = r3.clone();
    r3u["t3"] = json!("-00:00:00.999");
    r3u["t6"] = json!("12:34:56.010123");
    let n = Value::Null;
    assert_eq!(
        changes(&recs),
        vec![
            ("c".into(), key(1), n.clone(), r1),
            ("c".into(), key(2), n.clone(), r2),
            ("c".into(), key(3), n.clone(), r3.clone()),
            ("c".into(), key(4), n.clone(), r4),
            ("c".into(), key(5), n, r5),
            ("u".into(), key(3), r3, r3u),
        ]
    );
    // Records 1–5 are one transaction, one rows event: rows 0–4.
    let rows: Vec<_> = recs[..5]
        .iter()
        .map(|r| r.json()["source"]["row"].clone())
        .collect();
    assert_eq!(rows, [0, 1, 2, 3, 4].map(|r| json!(r)));
}

#[test]
fn case_05_mariadb_compressed_columns() {
    let (_db, _k, _d, recs) = run_case("05-mariadb-compressed-columns", "bug.05", 5, &[]);
    let body1 = "abc ".repeat(100);
    let raw1 = "AP8A/wD/".repeat(100);
    let note2 = "é".repeat(200);
    let r1 = json!({"id": 1, "note": "short", "body": body1, "raw": raw1, "small": "café", "plain": "after-1"});
    let r2 = json!({"id": 2, "note": note2, "body": "ünïcödé 😀 short", "raw": "3q2+7w==", "small": null, "plain": "after-2"});
    let r3 = json!({"id": 3, "note": "", "body": "", "raw": "", "small": "", "plain": "after-3"});
    let mut r1u = r1.clone();
    r1u["note"] = json!("short!");
    let n = Value::Null;
    assert_eq!(
        changes(&recs),
        vec![
            ("c".into(), key(1), n.clone(), r1.clone()),
            ("c".into(), key(2), n.clone(), r2),
            ("c".into(), key(3), n.clone(), r3.clone()),
            ("u".into(), key(1), r1, r1u),
            ("d".into(), key(3), r3, n),
        ]
    );
}

#[test]
fn case_07_hidden_hash_columns_of_long_unique_keys() {
    let (_db, _k, _d, recs) = run_case("07-long-unique-hidden-hash-column", "bug.07", 5, &[]);
    let r1 = json!({"id": 1, "url": "https://example.test/a", "meta": {"stars": 5, "tags": ["x", "y"]}, "title": "yv4=", "tag": "first"});
    let r2 =
        json!({"id": 2, "url": "https://example.test/b", "meta": null, "title": null, "tag": null});
    let r1u = json!({"id": 1, "url": "https://example.test/a", "meta": {"stars": 4}, "title": "yv4=", "tag": "second"});
    let mut r2u = r2.clone();
    r2u["url"] = json!("https://example.test/b2");
    let n = Value::Null;
    assert_eq!(
        changes(&recs),
        vec![
            ("c".into(), key(1), n.clone(), r1.clone()),
            ("c".into(), key(2), n.clone(), r2.clone()),
            ("u".into(), key(1), r1, r1u.clone()),
            ("u".into(), key(2), r2, r2u),
            ("d".into(), key(1), r1u, n),
        ]
    );
    for r in &recs {
        assert!(
            !r.value.as_deref().unwrap().contains("DB_ROW_HASH"),
            "{r:?}"
        );
    }
}

#[test]
fn case_08_json_numbers_exactly_as_written() {
    let (_db, _k, _d, recs) = run_case("08-mariadb-json-exact-numbers", "bug.08", 6, &[]);
    let docs = [
        r#"{"big":12345678901234567890123,"u64max":18446744073709551615,"over":18446744073709551616,"i64min":-9223372036854775808}"#,
        r#"{"dec":0.1000000000000000055511151231257827,"money":1234567890123456.78,"tiny":1e-400,"huge":1e400}"#,
        r#"[-0,1.0,1E2,1.5e+3,100]"#,
        r#"{"order_id":9007199254740993,"amount":19.990}"#,
        r#""a JSON string with é and 😀""#,
    ];
    let after = |id: usize, doc: &str| format!(r#"{{"id":{id},"doc":{doc}}}"#);
    let got: Vec<(String, String, String)> = recs
        .iter()
        .map(|r| {
            let f = raw_fields(r);
            (f["op"].clone(), f["before"].clone(), f["after"].clone())
        })
        .collect();
    let mut want: Vec<(String, String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (r#""c""#.into(), "null".into(), after(i + 1, d)))
        .collect();
    want.push((
        r#""u""#.into(),
        after(4, docs[3]),
        after(4, r#"{"order_id":9007199254740993,"amount":20.005}"#),
    ));
    assert_eq!(got, want);
}

#[test]
fn case_11_rare_charsets_and_mariadb_collation_ids_even_after_the_table_is_gone() {
    let (db, kafka, mut d, recs) =
        run_case("11-rare-charsets-and-mariadb-collations", "bug.11", 3, &[]);
    let r1 = json!({"id": 1, "c850": "Ça été ½ ░", "c852": "Łódź ČŘ", "kam": "Čeština ůž", "mac": "café ‰ ƒ",
        "swe": "ÅÄÖ åäö", "arm": "Բարեւ", "geo": "გამარჯობა", "win_jp": "ｶﾀｶﾅ ～ ①", "u2": "Ω ẞ", "u32": "𝄞 x",
        "nopad": "café", "uca": "Ärger 😀"});
    let r2 = json!({"id": 2, "c850": "", "c852": null, "kam": "plain", "mac": "plain", "swe": "plain", "arm": "plain",
        "geo": "plain", "win_jp": "plain", "u2": "", "u32": "ab", "nopad": "plain", "uca": "plain"});
    let mut r2u = r2.clone();
    r2u["swe"] = json!("Åke");
    r2u["win_jp"] = json!("\u{ff5e}");
    let n = Value::Null;
    let want = vec![
        ("c".to_string(), key(1), n.clone(), r1),
        ("c".into(), key(2), n, r2.clone()),
        ("u".into(), key(2), r2, r2u),
    ];
    assert_eq!(changes(&recs), want);
    assert!(!d.log().contains('\u{fffd}'), "{}", d.log());
    assert_eq!(d.terminate(), 0);

    // The table is dropped: the binlog alone (the daemon's decoder reading the binlog file,
    // with no information_schema to fall back on) gives the same values — every collation id
    // it needs is in the binlog, MariaDB's 1032 and 2304 included.
    block_on(db.exec("DROP TABLE bug.charset_zoo"));
    let mut decoded = Vec::new();
    let file = db
        .dir
        .path()
        .join("data/binlog.000001")
        .display()
        .to_string();
    cdc_enricher::decode_file(&file, |ev| {
        if let cdc_enricher::SourceEvent::Row(r) = ev {
            if r.table.table == "charset_zoo" {
                let after = r.after.expect("an after image");
                let m: serde_json::Map<String, Value> = r
                    .table
                    .visible()
                    .map(|i| (r.table.columns[i].name.clone(), after[i].to_json_value()))
                    .collect();
                decoded.push(Value::Object(m));
            }
        }
    })
    .unwrap();
    let afters: Vec<Value> = want.iter().map(|w| w.3.clone()).collect();
    assert_eq!(decoded, afters);
    drop(kafka);
}

#[test]
fn case_13_enum_and_set_labels_in_their_charset_and_every_width() {
    let all =
        "name: bug-13-all\ntable: bug.orders_enum\nsink:\n  kafka:\n    topic: \"bug.13.all\"\n";
    // The case's own pipeline as an event filter: expected.md's records exactly.
    let events = std::fs::read_to_string(
        fidelity_case("13-enum-set-labels-and-widths").join("pipeline.yaml"),
    )
    .unwrap()
    .replace("name: bug-13-enum-set", "name: bug-13-events")
    .replace("topic: \"bug.13\"", "topic: \"bug.13.events\"")
    .replace("filter: ", "on_filter_exit: ignore\nfilter: ");
    assert!(events.contains("bug.13.events") && events.contains("on_filter_exit"));
    let (_db, kafka, _d, recs) = run_case(
        "13-enum-set-labels-and-widths",
        "bug.13",
        5,
        &[("all", all), ("events", &events)],
    );
    let all64 = (1..=64)
        .map(|i| format!("f{i:02}"))
        .collect::<Vec<_>>()
        .join(",");
    let r1 = json!({"id": 1, "status": "annulé", "cyr": "нет", "big": "v300", "tags": "t01,t09,t17,t20", "flags": "f01,f64"});
    let r2 = json!({"id": 2, "status": "geprüft", "cyr": "да", "big": "v001", "tags": "", "flags": all64});
    let r3 = json!({"id": 3, "status": "", "cyr": null, "big": "v256", "tags": "t08,t09", "flags": "f08,f09,f32,f33"});
    let r4 =
        json!({"id": 4, "status": null, "cyr": null, "big": null, "tags": null, "flags": null});
    let mut r1u = r1.clone();
    r1u["status"] = json!("bezahlt");
    let mut r2u = r2.clone();
    r2u["status"] = json!("annulé");
    let n = Value::Null;
    // The filter `status != 'annulé'` compares decoded labels. As a view (the default): id 1
    // comes in with its update to `bezahlt`, id 2 leaves with its update to `annulé` — a `d`
    // (expected.md, written for an event filter, drops that update: the `ignore` run below).
    assert_eq!(
        changes(&recs),
        vec![
            ("c".into(), key(2), n.clone(), r2.clone()),
            ("c".into(), key(3), n.clone(), r3.clone()),
            ("u".into(), key(1), r1.clone(), r1u.clone()),
            ("d".into(), key(2), r2.clone(), n.clone()),
            ("d".into(), key(3), r3.clone(), n.clone()),
        ]
    );
    let marks: Vec<Value> = recs
        .iter()
        .map(|r| {
            r.json()
                .get("filter_change")
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    assert_eq!(
        marks,
        [
            n.clone(),
            n.clone(),
            json!("entered"),
            json!("left"),
            n.clone()
        ]
    );
    let events = kafka.read("bug.13.events", 4, Duration::from_secs(30));
    assert_eq!(
        changes(&events),
        vec![
            ("c".into(), key(2), n.clone(), r2.clone()),
            ("c".into(), key(3), n.clone(), r3.clone()),
            ("u".into(), key(1), r1.clone(), r1u.clone()),
            ("d".into(), key(3), r3.clone(), n.clone()),
        ]
    );
    let every = kafka.read("bug.13.all", 7, Duration::from_secs(30));
    assert_eq!(
        changes(&every),
        vec![
            ("c".into(), key(1), n.clone(), r1.clone()),
            ("c".into(), key(2), n.clone(), r2.clone()),
            ("c".into(), key(3), n.clone(), r3.clone()),
            ("c".into(), key(4), n.clone(), r4),
            ("u".into(), key(1), r1, r1u),
            ("u".into(), key(2), r2, r2u),
            ("d".into(), key(3), r3, n),
        ]
    );
}

#[test]
fn case_90_a_table_no_pipeline_reads_is_never_decoded() {
    let (db, _k, mut d, recs) = run_case("90-unread-table", "bug.90", 3, &[]);
    let n = Value::Null;
    assert_eq!(
        changes(&recs),
        vec![
            ("c".into(), key(1), n.clone(), json!({"id": 1, "v": "a"})),
            ("c".into(), key(2), n.clone(), json!({"id": 2, "v": "b"})),
            (
                "u".into(),
                key(2),
                json!({"id": 2, "v": "b"}),
                json!({"id": 2, "v": "c"})
            ),
        ]
    );
    // The checkpoint moves past every event, and nothing is said of the unread table.
    let end: (String, u64) = block_on(async {
        use mysql_async::prelude::Queryable;
        let mut c = db.conn().await;
        let r: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        (r.get(0).unwrap(), r.get(1).unwrap())
    });
    let start = std::time::Instant::now();
    loop {
        let cp = d.checkpoint().unwrap_or_default();
        if cp["position"]["file"] == end.0 && cp["position"]["pos"].as_u64() == Some(end.1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "checkpoint {cp}, end {end:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.terminate(), 0);
    assert!(!d.log().contains("audit_blob"), "{}", d.log());
}
