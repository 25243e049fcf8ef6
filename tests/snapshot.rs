//! Backfills (snapshots) interleaved with the stream by watermarks: existing rows as `op: r`
//! records, never stale after a newer change; resumable after a crash; asked for on the command
//! line; and the purged-binlog policies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SIGNAL_GRANT: &str =
    "GRANT CREATE, SELECT, INSERT, UPDATE ON shop.cdc_signal TO 'cdc'@'127.0.0.1';";

fn items_pipeline(snapshot: &str) -> String {
    format!(
        "name: items\ntable: shop.items\nsnapshot: {snapshot}\nsink:\n  kafka:\n    topic: items\n"
    )
}

/// A daemon that starts at the current end of the binlog (existing rows come only from the
/// backfill), with a signal table and chunks of `chunk`.
fn daemon(db: &MariaDb, kafka: &Kafka, pipelines: &[(&str, &str)], chunk: usize) -> Daemon {
    let d = Daemon::with_config(
        db,
        Some(kafka),
        pipelines,
        &format!("snapshot:\n  signal_table: shop.cdc_signal\n  chunk_size: {chunk}\n"),
    );
    let cfg = std::fs::read_to_string(d.config())
        .unwrap()
        .replace("start: earliest", "start: latest");
    std::fs::write(d.config(), cfg).unwrap();
    d
}

/// `(op, id)` of each record.
fn ops_and_ids(recs: &[Record]) -> Vec<(String, i64)> {
    recs.iter()
        .map(|r| {
            let v = r.json();
            (
                v["op"].as_str().unwrap().to_string(),
                v["after"]["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_backfill_under_concurrent_writes_ends_with_every_rows_final_value() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v INT, note VARCHAR(20));
         INSERT INTO shop.items SELECT seq, seq, 'orig' FROM shop.seq_1_to_100000; {SIGNAL_GRANT}"
    )));
    let kafka = Kafka::start();
    let mut d = daemon(&db, &kafka, &[("items", &items_pipeline("initial"))], 2000);
    d.spawn();
    let mut tail = kafka.tail("items");
    // Writes while the backfill runs: updates, deletes and inserts all over the key range.
    let writer = BackgroundWriter::start(&db, Duration::ZERO, |n| {
        let id = (n * 7919) % 100_000 + 1;
        match n % 10 {
            0 => format!("DELETE FROM shop.items WHERE id = {id}"),
            1 => format!("INSERT INTO shop.items VALUES ({}, 1, 'new')", 100_000 + n),
            _ => format!("UPDATE shop.items SET v = v + 1000000, note = 'upd{n}' WHERE id = {id}"),
        }
    });
    wait_log(&mut d, "backfill done", 1, 300);
    let writes = writer.stop();
    assert!(
        writes > 100,
        "the writer ran during the backfill: {writes} statements"
    );
    // Everything written reaches the topic: wait until it goes quiet.
    tail.poll(Duration::from_secs(2));
    tail.drain(Duration::from_secs(3));
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    let mut reads = 0;
    for r in &tail.records {
        let v = r.json();
        let id = v["after"]["id"]
            .as_i64()
            .or(v["before"]["id"].as_i64())
            .unwrap();
        if v["op"] == "r" {
            reads += 1;
        }
        last.insert(id, v);
    }
    let rows: Vec<(i64, i64, String)> = block_on(db.query("SELECT id, v, note FROM shop.items"));
    let present: BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
    for (id, v, note) in &rows {
        let rec = last
            .get(id)
            .unwrap_or_else(|| panic!("row {id} never emitted"));
        assert_eq!(
            rec["after"],
            json!({"id": id, "v": v, "note": note}),
            "row {id}: its last record is its final value"
        );
    }
    for (id, rec) in &last {
        if !present.contains(id) {
            assert_eq!(
                rec["op"], "d",
                "row {id} was deleted: its last record says so"
            );
        }
    }
    // Most rows came from the backfill; those changed inside a chunk's window came from the stream.
    assert!(
        (90_000..=110_000).contains(&reads),
        "{reads} backfill reads"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_backfill_resumes_after_a_crash() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v INT, note VARCHAR(20));
         INSERT INTO shop.items SELECT seq, seq * 3, CONCAT('n', seq) FROM shop.seq_1_to_5000; {SIGNAL_GRANT}"
    )));
    let kafka = Kafka::start();
    let mut d = daemon(&db, &kafka, &[("items", &items_pipeline("initial"))], 50);
    d.spawn();
    // Wait for some chunks to be acknowledged, then kill -9.
    let progress = || -> Option<Value> {
        let rows: Vec<String> = block_on(
            db.query_or_empty("SELECT payload FROM shop.cdc_signal WHERE kind = 'progress'"),
        );
        rows.first().map(|p| serde_json::from_str(p).unwrap())
    };
    let start = Instant::now();
    loop {
        if progress().is_some_and(|p| p["rows"].as_u64() >= Some(1000)) {
            break;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(120), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let saved = progress().unwrap();
    let after = saved["after"][0].as_i64().unwrap();
    assert!(after < 5000 && saved["done"] == false, "{saved}");
    let before_restart = kafka
        .read("items", usize::MAX, Duration::from_secs(3))
        .len();
    d.spawn();
    wait_log(&mut d, "backfill done", 1, 120);
    std::thread::sleep(Duration::from_millis(500));
    let all = kafka.read("items", usize::MAX, Duration::from_secs(3));
    let after_restart: Vec<Value> = all[before_restart..].iter().map(|r| r.json()).collect();
    // The restart resumed after the saved key: no row at or before it was read again.
    let ids: BTreeSet<i64> = after_restart
        .iter()
        .map(|v| v["after"]["id"].as_i64().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id > after), "resumed after {after}");
    // Every row was read, with its exact values.
    let every: BTreeMap<i64, Value> = all
        .iter()
        .map(|r| r.json())
        .map(|v| (v["after"]["id"].as_i64().unwrap(), v["after"].clone()))
        .collect();
    assert_eq!(every.len(), 5000);
    assert!(every
        .iter()
        .all(|(id, a)| *a == json!({"id": id, "v": id * 3, "note": format!("n{id}")})));
    assert!(all.iter().all(|r| r.json()["op"] == "r"));
    let done = progress().unwrap();
    assert_eq!(
        (done["done"].clone(), done["rows"].as_u64()),
        (json!(true), Some(5000)),
        "{done}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn backfill_on_request_with_a_filter_and_clear_errors() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v INT, note VARCHAR(20));
         INSERT INTO shop.items SELECT seq, seq, 'x' FROM shop.seq_1_to_20;
         CREATE TABLE shop.nokey (a INT); {SIGNAL_GRANT}"
    )));
    let kafka = Kafka::start();
    let mut d = daemon(&db, &kafka, &[("items", &items_pipeline("never"))], 7);
    d.spawn();
    wait_log(&mut d, "starting", 1, 30);
    let out = d
        .command(&[
            "backfill",
            "-c",
            "cdc-enricher.yaml",
            "items",
            "--where",
            "id > 15",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("backfill of `items` requested (backfill:items:"));
    let recs = kafka.read("items", 5, Duration::from_secs(60));
    let got = ops_and_ids(&recs);
    assert_eq!(
        got,
        (16..=20).map(|i| ("r".to_string(), i)).collect::<Vec<_>>()
    );
    wait_log(&mut d, "backfill done", 1, 30);
    assert_eq!(
        kafka
            .read("items", usize::MAX, Duration::from_secs(2))
            .len(),
        5
    );

    // An unknown pipeline, and a filter that does not parse: exit 2, nothing requested.
    let out = d
        .command(&["backfill", "-c", "cdc-enricher.yaml", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cdc-enricher.yaml: no pipeline `nope`; the pipelines are: items\n"
    );
    let out = d
        .command(&[
            "backfill",
            "-c",
            "cdc-enricher.yaml",
            "items",
            "--where",
            "id >",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: pipeline `items` (pipelines/items.yaml): --where `id >`: expected a value at the end\n"
    );
    assert_eq!(d.terminate(), 0);

    // A table with no primary key and no `key:` cannot be backfilled: the preflight says so.
    let mut d2 = daemon(
        &db,
        &kafka,
        &[("nokey", "name: nokey\ntable: shop.nokey\nsnapshot: initial\nsink:\n  kafka:\n    topic: nokey\n")],
        7,
    );
    let (code, _, err) = d2.check();
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: pipeline `nokey` (pipelines/nokey.yaml): `shop`.`nokey` has no primary key, and the pipeline sets no `key:`"),
        "{err}"
    );
    d2.kill9();
}

#[test]
fn backfilled_values_are_byte_identical_to_streamed_ones() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; {SIGNAL_GRANT}
         CREATE TABLE shop.items (id INT PRIMARY KEY, ti TINYINT, biu BIGINT UNSIGNED, de DECIMAL(30,10), fl FLOAT, db DOUBLE,
           d DATE, dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm3 TIME(3), y YEAR,
           vc VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1, tx TEXT, bn BINARY(4), vb VARBINARY(10), bl BLOB,
           js JSON, e ENUM('x','y','z'), s SET('a','b','c'), b64 BIT(64), g GEOMETRY);"
    )));
    let kafka = Kafka::start();
    // Streamed from the earliest position: each row arrives as `c`; then a backfill reads the
    // same rows as `r`.
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("items", &items_pipeline("never"))],
        "snapshot:\n  signal_table: shop.cdc_signal\n",
    );
    d.spawn();
    block_on(db.exec(
        "SET time_zone = '+00:00';
         INSERT INTO shop.items VALUES (1, -128, 18446744073709551615, -12345678901234567890.0123456789, -0.1, -1.7976931348623157e308,
           '1000-01-01', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000001', '-00:00:00.5', 1901,
           CONCAT(REPEAT('é', 299), '😀'), 'café', 'héllo 😀 世界', X'01020304', X'FF00', X'00FF',
           '{\"k\": [1, \"x\", null, true], \"n\": 1.5}', 'z', 'a,c', b'1111111111111111111111111111111111111111111111111111111111111111',
           ST_GeomFromText('POINT(1 2)'));
         INSERT INTO shop.items VALUES (2, 0, 0, 0, 1.5, 2.5e-300, '9999-12-31', '9999-12-31 23:59:59', '2024-02-29 12:00:00.000001',
           '2038-01-19 03:14:07.999999', '838:59:59', 2155, '', '', '', X'00000000', X'', X'', '[]', 'x', '', b'0',
           ST_GeomFromText('LINESTRING(0 0, 1 1)'));
         INSERT INTO shop.items (id) VALUES (3);",
    ));
    assert_eq!(
        kafka.read("items", 3, Duration::from_secs(30)).len(),
        3,
        "{}",
        d.log()
    );
    let out = d
        .command(&["backfill", "-c", "cdc-enricher.yaml", "items"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let recs = kafka.read("items", 6, Duration::from_secs(60));
    assert_eq!(recs.len(), 6, "{}", d.log());
    // The raw bytes of `after`, as the daemon wrote them.
    let raw = |r: &Record| {
        let v = r.value.as_deref().unwrap();
        let start = v.find(r#","after":"#).unwrap() + r#","after":"#.len();
        let end = v.find(r#","source":"#).unwrap();
        v[start..end].to_string()
    };
    for i in 0..3 {
        assert_eq!(recs[i].json()["op"], "c");
        assert_eq!(recs[i + 3].json()["op"], "r");
        assert_eq!(raw(&recs[i + 3]), raw(&recs[i]), "row {}", i + 1);
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_purged_checkpoint_fails_or_resnapshots() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v INT, note VARCHAR(20));
         INSERT INTO shop.items VALUES (1, 1, 'a'), (2, 2, 'b'); {SIGNAL_GRANT}"
    )));
    let kafka = Kafka::start();
    let mut d = daemon(&db, &kafka, &[("items", &items_pipeline("never"))], 100);
    d.spawn();
    wait_log(&mut d, "starting", 1, 30);
    block_on(db.exec("INSERT INTO shop.items VALUES (3, 3, 'c')"));
    assert_eq!(kafka.read("items", 1, Duration::from_secs(30)).len(), 1);
    assert_eq!(d.terminate(), 0);
    let cp = d.checkpoint().unwrap();
    let file = cp["position"]["file"].as_str().unwrap().to_string();
    // The checkpoint's binlog file is purged while the daemon is down.
    block_on(
        db.exec("INSERT INTO shop.items VALUES (4, 4, 'd'); FLUSH BINARY LOGS; FLUSH BINARY LOGS;"),
    );
    let logs: Vec<(String, u64)> = block_on(db.query("SHOW BINARY LOGS"));
    let newest = logs.last().unwrap().0.clone();
    // MariaDB keeps a log until its binlog checkpoint is written (in the background): retry.
    let start = Instant::now();
    loop {
        block_on(db.exec(&format!("PURGE BINARY LOGS TO '{newest}'")));
        let left: Vec<(String, u64)> = block_on(db.query("SHOW BINARY LOGS"));
        if !left.iter().any(|l| l.0 == file) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{file} not purged: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, _, err) = d.check();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: the saved checkpoint cannot be resumed: the binlog position {file}:"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "({file} is not among the server's binary logs (oldest: "
        )),
        "{err}"
    );
    assert!(err.contains("`source.on_purged: resnapshot`"), "{err}");

    // resnapshot: start at the current end and read every row again.
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        "  start: latest\n",
        "  start: latest\n  on_purged: resnapshot\n",
    );
    std::fs::write(d.config(), cfg).unwrap();
    let seen = kafka
        .read("items", usize::MAX, Duration::from_secs(2))
        .len();
    d.spawn();
    wait_log(&mut d, "backfill done", 1, 60);
    assert!(d
        .log()
        .contains("the saved checkpoint is no longer on the server; on_purged: resnapshot"));
    std::thread::sleep(Duration::from_millis(500));
    let all = kafka.read("items", usize::MAX, Duration::from_secs(2));
    let again = ops_and_ids(&all[seen..]);
    assert_eq!(
        again,
        (1..=4).map(|i| ("r".to_string(), i)).collect::<Vec<_>>()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_backfill_pages_by_the_primary_key_or_a_unique_not_null_key_and_refuses_others() {
    // `key:` may name columns that are not unique (records keyed by a group) or may be NULL:
    // paging by them with `(key) > (last)` would skip rows. The backfill pages by the primary
    // key; in a table without one, by `key:` only when it is a unique index of NOT NULL columns.
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop;
         CREATE TABLE shop.nu (id INT PRIMARY KEY, grp VARCHAR(10));
         INSERT INTO shop.nu SELECT seq, IF(seq <= 80, 'a', 'b') FROM shop.seq_1_to_100;
         CREATE TABLE shop.uk (u INT NOT NULL, v INT, UNIQUE KEY (u));
         INSERT INTO shop.uk SELECT seq, seq FROM shop.seq_1_to_30;
         CREATE TABLE shop.nk (u INT NULL, v INT, UNIQUE KEY (u));
         INSERT INTO shop.nk SELECT NULL, seq FROM shop.seq_1_to_10;
         CREATE TABLE shop.nx (u INT NOT NULL, v INT);
         {SIGNAL_GRANT}"
    )));
    let kafka = Kafka::start();
    let pipeline = |name: &str, key: &str| {
        format!("name: {name}\ntable: shop.{name}\nkey: [{key}]\nsnapshot: initial\nsink:\n  kafka:\n    topic: {name}\n")
    };
    let (nk, nx) = (pipeline("nk", "u"), pipeline("nx", "u"));
    let refused = daemon(&db, &kafka, &[("nk", &nk), ("nx", &nx)], 7);
    let (code, _, err) = refused.check();
    assert_eq!(code, 2);
    for (name, why) in [
        ("nk", "snapshot: key column `u` may be NULL: a backfill paging by `key:` would skip the rows after a NULL"),
        ("nx", "snapshot: `key:` (u) holds no unique index of `shop`.`nx`: a backfill paging by it would skip the rows that share a value across a chunk's end"),
    ] {
        assert!(
            err.contains(&format!("error: pipeline `{name}` (pipelines/{name}.yaml): {why}\n")),
            "{err}"
        );
    }
    let (nu, uk) = (pipeline("nu", "grp"), pipeline("uk", "u"));
    let mut d = daemon(&db, &kafka, &[("nu", &nu), ("uk", &uk)], 7);
    d.spawn();
    wait_log(&mut d, "backfill done", 2, 60);
    let ids = |topic: &str, column: &str, n: usize| -> Vec<i64> {
        let mut v: Vec<i64> = kafka
            .read(topic, n, Duration::from_secs(20))
            .iter()
            .map(|r| {
                let j = r.json();
                assert_eq!(j["op"], "r", "{j}");
                j["after"][column].as_i64().unwrap()
            })
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ids("nu", "id", 100), (1..=100).collect::<Vec<_>>());
    assert_eq!(ids("uk", "u", 30), (1..=30).collect::<Vec<_>>());
    assert_eq!(d.terminate(), 0);
}
