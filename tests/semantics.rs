//! Changes as consumers expect them: TRUNCATE as `t` records in binlog order (fidelity case
//! 10), key changes as a delete of the old key and an insert of the new one, tables without a
//! key, system-versioned tables as the user's changes, and derived rows written back following
//! their source (fidelity case 14) across `kill -9`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

fn key(id: i64) -> Option<String> {
    Some(format!("{{\"id\":{id}}}"))
}

#[test]
fn case_10_truncate_records_in_binlog_order() {
    let port = free_port();
    let (_db, kafka, mut d) = start_fidelity_case(
        "10-truncate-without-row-events",
        &[],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    let mut tail = kafka.tail("bug.10");
    wait_records(&mut d, &mut tail, 9, 30);
    tail.drain(Duration::from_secs(1));
    let n = Value::Null;
    let s = |id: i64, who: &str| json!({"id": id, "who": who});
    assert_eq!(
        changes(&tail.records),
        vec![
            ("c".into(), key(1), n.clone(), s(1, "ann")),
            ("c".into(), key(2), n.clone(), s(2, "bob")),
            ("c".into(), key(150), n.clone(), s(150, "cy")),
            ("t".into(), None, n.clone(), n.clone()),
            ("c".into(), key(1), n.clone(), s(1, "dee")),
            ("c".into(), key(200), n.clone(), s(200, "eve")),
            ("t".into(), None, n.clone(), n.clone()),
            ("c".into(), key(201), n.clone(), s(201, "fay")),
            ("u".into(), key(1), s(1, "dee"), s(1, "dee2")),
        ]
    );
    let t1 = tail.records[3].json();
    assert_eq!(t1["truncate"], json!({"partitions": null}));
    assert_eq!(t1["source"]["table"], "sessions");
    assert_eq!(
        tail.records[6].json()["truncate"],
        json!({"partitions": ["p_high"]})
    );
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_truncates_total{pipeline=\"bug-10-truncate\"}"
        ),
        Some("2")
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn rows_removed_by_partition_ddl_or_a_replaced_table_are_truncate_records() {
    // The kind of case 10, wider: statements that remove rows with no rows event.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE s;
         CREATE TABLE s.t (id INT PRIMARY KEY, who VARCHAR(20))
           PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (10),
             PARTITION p1 VALUES LESS THAN (20), PARTITION p2 VALUES LESS THAN (30),
             PARTITION p3 VALUES LESS THAN MAXVALUE);
         CREATE TABLE s.stage (id INT PRIMARY KEY, who VARCHAR(20));",
    ));
    let p = "name: p\ntable: s.t\nsink:\n  kafka:\n    topic: st\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("p", p)]);
    d.spawn();
    // Its start-up checks read the table, which the statements below drop.
    wait_log(&mut d, "starting", 1, 60);
    let mut tail = kafka.tail("st");
    block_on(db.exec(
        "INSERT INTO s.t VALUES (1, 'a'), (11, 'b'), (21, 'c'), (31, 'd');
         ALTER TABLE s.t DROP PARTITION p2;
         INSERT INTO s.t VALUES (22, 'e');
         ALTER TABLE s.t TRUNCATE PARTITION ALL;
         INSERT INTO s.t VALUES (2, 'f'), (12, 'g');
         INSERT INTO s.stage VALUES (5, 'in');
         ALTER TABLE s.t EXCHANGE PARTITION p0 WITH TABLE s.stage;
         ALTER TABLE s.t CONVERT PARTITION p1 TO TABLE s.out1;
         CREATE OR REPLACE TABLE s.t (id INT PRIMARY KEY, who VARCHAR(20));
         INSERT INTO s.t VALUES (3, 'h');
         DROP TABLE IF EXISTS s.stage, s.t;
         CREATE TABLE s.t (id INT PRIMARY KEY, who VARCHAR(20));
         INSERT INTO s.t VALUES (4, 'i');
         DROP DATABASE s; DROP DATABASE IF EXISTS s;
         CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, who VARCHAR(20));
         INSERT INTO s.t VALUES (5, 'j');",
    ));
    wait_records(&mut d, &mut tail, 17, 60);
    tail.drain(Duration::from_secs(1));
    let summary: Vec<(String, Value)> = tail
        .records
        .iter()
        .map(|r| {
            let v = r.json();
            let what = match v["op"].as_str() {
                Some("t") => v["truncate"]["partitions"].clone(),
                _ => v["after"]["id"].clone(),
            };
            (v["op"].as_str().unwrap_or_default().to_string(), what)
        })
        .collect();
    let c = |id: i64| ("c".to_string(), json!(id));
    let t = |parts: Value| ("t".to_string(), parts);
    assert_eq!(
        summary,
        vec![
            c(1),
            c(11),
            c(21),
            c(31),
            t(json!(["p2"])),
            c(22),
            t(Value::Null),
            c(2),
            c(12),
            t(json!(["p0"])),
            t(json!(["p1"])),
            t(Value::Null),
            c(3),
            t(Value::Null),
            c(4),
            t(Value::Null),
            c(5),
        ]
    );
    // Only the DROP TABLE's truncate says the table went with its rows.
    let dropped: Vec<Value> = tail
        .records
        .iter()
        .filter(|r| r.json()["op"] == "t")
        .map(|r| r.json()["truncate"]["dropped"].clone())
        .collect();
    let no = Value::Null;
    assert_eq!(
        dropped,
        [
            no.clone(),
            no.clone(),
            no.clone(),
            no.clone(),
            no,
            json!(true),
            json!(true)
        ]
    );
    // The row the exchange brought in (5) is in the table but not in the binlog: said.
    assert!(
        d.log()
            .contains("EXCHANGE PARTITION brought rows into a read table"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}

/// Each record's `op` (`tombstone` for a record without a value) and its key.
fn ops_and_keys(recs: &[Record]) -> Vec<(String, Option<String>)> {
    recs.iter()
        .map(|r| {
            let op = r.value.as_ref().map_or("tombstone".to_string(), |_| {
                r.json()["op"].as_str().unwrap().to_string()
            });
            (op, r.key.clone())
        })
        .collect()
}

/// The first `n` messages of `topic` (tombstones counted, not listed): each record's op with
/// the part of it at JSON pointer `truncate` (a truncate) or `other` (any other op).
fn ops_with(
    kafka: &Kafka,
    topic: &str,
    n: usize,
    truncate: &str,
    other: &str,
) -> Vec<(Value, Value)> {
    kafka
        .read(topic, n, Duration::from_secs(20))
        .iter()
        .filter_map(|r| r.value.as_ref().map(|_| r.json()))
        .map(|v| {
            let at = if v["op"] == "t" { truncate } else { other };
            (
                v["op"].clone(),
                v.pointer(at).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// A pipeline per `(name, table)` of database `s`, each to the Kafka topic of its name.
fn kafka_pipelines(names: &[(&str, &str)]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|(n, t)| {
            let yaml = format!("name: {n}\ntable: s.{t}\nsink:\n  kafka:\n    topic: {n}\n");
            (n.to_string(), yaml)
        })
        .collect()
}

/// A compacted topic's view: the last value of each key, tombstones removing it.
fn compacted(recs: &[Record]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for r in recs {
        let k = r.key.clone().expect("a key");
        match &r.value {
            None => {
                m.remove(&k);
            }
            Some(_) => {
                m.insert(k, r.json()["after"].clone());
            }
        }
    }
    m
}

#[test]
fn a_key_change_is_a_delete_of_the_old_key_then_an_insert_of_the_new_one() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE t; CREATE TABLE t.k (id INT PRIMARY KEY, v VARCHAR(10));"));
    let split =
        "name: split\ntable: t.k\nsink:\n  kafka:\n    topic: split\n    tombstones: true\n";
    let single =
        "name: single\ntable: t.k\nkey_changes: update\nsink:\n  kafka:\n    topic: single\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("split", split), ("single", single)]);
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.k VALUES (1, 'a'), (2, 'b');
         UPDATE t.k SET id = 10 WHERE id = 1;
         UPDATE t.k SET v = 'bb' WHERE id = 2;
         UPDATE t.k SET id = id + 100;",
    ));
    let mut tail = kafka.tail("split");
    // 2 inserts, a key change (d, tombstone, c), an update, two key changes (3 each).
    wait_records(&mut d, &mut tail, 12, 30);
    tail.drain(Duration::from_secs(1));
    let ops = ops_and_keys(&tail.records);
    let o = |op: &str, k: i64| (op.to_string(), key(k));
    assert_eq!(
        ops,
        [
            o("c", 1),
            o("c", 2),
            o("d", 1),
            o("tombstone", 1),
            o("c", 10),
            o("u", 2),
            // `id = id + 100` updates the rows in key order: 2, then 10.
            o("d", 2),
            o("tombstone", 2),
            o("c", 102),
            o("d", 10),
            o("tombstone", 10),
            o("c", 110)
        ]
    );
    let change = tail.records[2].json()["key_change"].clone();
    assert_eq!(change, json!({"old": {"id": 1}, "new": {"id": 10}}));
    assert_eq!(tail.records[4].json()["key_change"], change);
    assert_eq!(tail.records[4].json()["before"], Value::Null);
    // The compacted topic ends up holding exactly the table.
    let table: Vec<(i64, String)> = block_on(db.query("SELECT id, v FROM t.k ORDER BY id"));
    let want: BTreeMap<String, Value> = table
        .into_iter()
        .map(|(id, v)| (key(id).unwrap(), json!({"id": id, "v": v})))
        .collect();
    assert_eq!(compacted(&tail.records), want);
    // `key_changes: update`: one `u`, keyed by the new key.
    let single = kafka.read("single", 6, Duration::from_secs(10));
    let ops = ops_and_keys(&single);
    assert_eq!(
        ops,
        [
            o("c", 1),
            o("c", 2),
            o("u", 10),
            o("u", 2),
            o("u", 102),
            o("u", 110)
        ]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn tables_without_a_key_stream_with_a_null_key() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE t; CREATE TABLE t.log (a INT, b VARCHAR(5));"));
    let p = "name: log\ntable: t.log\nsink:\n  kafka:\n    topic: log\n    tombstones: true\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("log", p)]);
    assert_eq!(d.check().0, 0, "{}", d.check().2);
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.log VALUES (1, 'x'), (1, 'x'), (2, 'y');
         UPDATE t.log SET b = 'z' WHERE a = 1;
         DELETE FROM t.log WHERE a = 2;",
    ));
    let mut tail = kafka.tail("log");
    wait_records(&mut d, &mut tail, 6, 30);
    tail.drain(Duration::from_secs(1));
    let n = Value::Null;
    let r = |a: i64, b: &str| json!({"a": a, "b": b});
    assert_eq!(
        changes(&tail.records),
        vec![
            ("c".into(), None, n.clone(), r(1, "x")),
            ("c".into(), None, n.clone(), r(1, "x")),
            ("c".into(), None, n.clone(), r(2, "y")),
            ("u".into(), None, r(1, "x"), r(1, "z")),
            ("u".into(), None, r(1, "x"), r(1, "z")),
            ("d".into(), None, r(2, "y"), n),
        ]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_system_versioned_table_emits_the_users_changes_not_its_history_rows() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.implicit (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;
         CREATE TABLE t.explicit (id INT PRIMARY KEY, v INT,
           s TIMESTAMP(6) GENERATED ALWAYS AS ROW START INVISIBLE,
           e TIMESTAMP(6) GENERATED ALWAYS AS ROW END INVISIBLE,
           PERIOD FOR SYSTEM_TIME (s, e)) WITH SYSTEM VERSIONING;",
    ));
    let p = |t: &str| {
        format!("name: {t}\ntable: t.{t}\ncolumns: [id, v]\nsink:\n  kafka:\n    topic: {t}\n")
    };
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[("implicit", &p("implicit")), ("explicit", &p("explicit"))],
    );
    d.spawn();
    for t in ["implicit", "explicit"] {
        block_on(db.exec(&format!(
            "INSERT INTO t.{t} (id, v) VALUES (1, 1), (2, 2);
             UPDATE t.{t} SET v = 10 WHERE id = 1;
             UPDATE t.{t} SET v = 11 WHERE id = 1;
             DELETE FROM t.{t} WHERE id = 2;
             DELETE HISTORY FROM t.{t};"
        )));
    }
    let n = Value::Null;
    let r = |id: i64, v: i64| json!({"id": id, "v": v});
    for t in ["implicit", "explicit"] {
        let mut tail = kafka.tail(t);
        wait_records(&mut d, &mut tail, 5, 30);
        tail.drain(Duration::from_secs(1));
        assert_eq!(
            changes(&tail.records),
            vec![
                ("c".into(), key(1), n.clone(), r(1, 1)),
                ("c".into(), key(2), n.clone(), r(2, 2)),
                ("u".into(), key(1), r(1, 1), r(1, 10)),
                ("u".into(), key(1), r(1, 10), r(1, 11)),
                ("d".into(), key(2), r(2, 2), n.clone()),
            ],
            "{t}"
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_table_with_transaction_precise_history_is_refused_at_start() {
    // MariaDB logs every change of a table versioned by transaction ids as a statement, even
    // under binlog_format=ROW: a pipeline on it would never see a row. `check` (and `run`)
    // say so; a table versioned by time is fine.
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE s;
         CREATE TABLE s.tp (id INT PRIMARY KEY, v INT,
           s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE,
           e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE,
           PERIOD FOR SYSTEM_TIME (s, e)) WITH SYSTEM VERSIONING;
         CREATE TABLE s.ts (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;",
    ));
    let tp = "name: tp\ntable: s.tp\nsink:\n  jsonl:\n    path: tp.jsonl\n";
    let ts = "name: ts\ntable: s.ts\nsink:\n  jsonl:\n    path: ts.jsonl\n";
    let d = Daemon::new(&db, None, &[("tp", tp), ("ts", ts)]);
    let (code, _, err) = d.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "error: pipeline `tp` (pipelines/tp.yaml): `s`.`tp` is system-versioned with transaction-precise history (its row end `e` is a transaction id): MariaDB logs its changes as statements, never as rows, so none would reach the stream\n    \
         fix: version `s`.`tp` by time (TIMESTAMP(6) … AS ROW START / ROW END columns), or read another table\n\
         error: preflight check failed (1 problem, listed above)\n"
    );
}

#[test]
fn dropping_or_truncating_history_partitions_removes_no_row_of_the_stream() {
    // A table partitioned BY SYSTEM_TIME keeps its current rows in the CURRENT partition:
    // dropping or truncating a HISTORY partition removes history only, which no record showed
    // — no truncate record. Truncating the CURRENT partition (its name in any case; with
    // subpartitions too) removes current rows: a truncate record. A versioned table
    // partitioned BY RANGE keeps current rows in every partition: dropping one is a truncate.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.sv (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING
           PARTITION BY SYSTEM_TIME LIMIT 100 (PARTITION p0 HISTORY, PARTITION p1 HISTORY, PARTITION pn CURRENT);
         CREATE TABLE t.sub (id INT, v INT) WITH SYSTEM VERSIONING
           PARTITION BY SYSTEM_TIME SUBPARTITION BY HASH (id) SUBPARTITIONS 2
           (PARTITION h HISTORY, PARTITION cur CURRENT);
         CREATE TABLE t.svr (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING
           PARTITION BY RANGE (id) (PARTITION a VALUES LESS THAN (10), PARTITION b VALUES LESS THAN MAXVALUE);",
    ));
    let p = |t: &str| format!("name: {t}\ntable: t.{t}\nsink:\n  kafka:\n    topic: {t}\n");
    let (sv, sub, svr) = (p("sv"), p("sub"), p("svr"));
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[("sv", &sv), ("sub", &sub), ("svr", &svr)],
    );
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    block_on(db.exec(
        "INSERT INTO t.sv VALUES (1, 1), (2, 2); UPDATE t.sv SET v = 10 WHERE id = 1;
         DELETE FROM t.sv WHERE id = 2;
         ALTER TABLE t.sv DROP PARTITION p0;
         ALTER TABLE t.sv TRUNCATE PARTITION p1;
         ALTER TABLE t.sv TRUNCATE PARTITION PN;
         INSERT INTO t.sv VALUES (3, 3);
         INSERT INTO t.sub VALUES (1, 1), (2, 2); UPDATE t.sub SET v = 10 ORDER BY id;
         ALTER TABLE t.sub TRUNCATE PARTITION h;
         ALTER TABLE t.sub TRUNCATE PARTITION Cur;
         INSERT INTO t.sub VALUES (3, 3);
         INSERT INTO t.svr VALUES (1, 1), (20, 2); UPDATE t.svr SET v = 5 WHERE id = 1;
         ALTER TABLE t.svr DROP PARTITION a;
         INSERT INTO t.svr VALUES (21, 3);",
    ));
    // `n` messages, tombstones included: a record that should not be there comes before the
    // last insert and shifts the list.
    let seen =
        |topic: &str, n: usize| ops_with(&kafka, topic, n, "/truncate/partitions", "/after/id");
    let r = |op: &str, v: Value| (json!(op), v);
    assert_eq!(
        seen("sv", 7),
        [
            r("c", json!(1)),
            r("c", json!(2)),
            r("u", json!(1)),
            r("d", Value::Null),
            r("t", json!(["PN"])),
            r("c", json!(3)),
        ]
    );
    assert_eq!(
        seen("sub", 6),
        [
            r("c", json!(1)),
            r("c", json!(2)),
            r("u", json!(1)),
            r("u", json!(2)),
            r("t", json!(["Cur"])),
            r("c", json!(3)),
        ]
    );
    assert_eq!(
        seen("svr", 5),
        [
            r("c", json!(1)),
            r("c", json!(20)),
            r("u", json!(1)),
            r("t", json!(["a"])),
            r("c", json!(21)),
        ]
    );
    assert_eq!(d.terminate(), 0);
}

/// The side table's rows, `(review_id, sentiment, confidence)`.
fn side(db: &MariaDb) -> Vec<(i64, Option<String>, Option<f64>)> {
    block_on(db.query_or_empty(
        "SELECT review_id, sentiment, confidence FROM bug.review_sentiment ORDER BY review_id",
    ))
}

fn wait_side(d: &mut Daemon, db: &MariaDb, want: &[(i64, &str, f64)]) {
    let want: Vec<(i64, Option<String>, Option<f64>)> = want
        .iter()
        .map(|(i, s, c)| (*i, Some(s.to_string()), Some(*c)))
        .collect();
    let start = Instant::now();
    while side(db) != want {
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}\n{}",
            side(db),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn case_14_derived_rows_follow_their_source_across_kill_9() {
    let db = MariaDb::start();
    let aws = AwsStandin::start();
    block_on(db.exec(
        "CREATE DATABASE bug;
         CREATE TABLE bug.reviews (id INT PRIMARY KEY, body TEXT CHARACTER SET utf8mb4);
         CREATE TABLE bug.review_sentiment (review_id INT PRIMARY KEY, sentiment VARCHAR(10), confidence DOUBLE);
         CREATE USER 'cdc_writer'@'127.0.0.1' IDENTIFIED BY 'writer-pw';
         GRANT SELECT ON bug.reviews TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, DELETE ON bug.review_sentiment TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, CREATE ON bug.cdc_enricher_writeback TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, CREATE ON bug.cdc_enricher_dead_letters TO 'cdc_writer'@'127.0.0.1';",
    ));
    let pipeline = std::fs::read_to_string(
        fidelity_case("14-writeback-orphans-after-delete").join("pipeline.yaml"),
    )
    .unwrap();
    let mut d = Daemon::new(&db, None, &[("case", &pipeline)]);
    d.env = AwsStandin::env();
    d.env.push(("AWS_ENDPOINT_URL".into(), aws.url()));
    d.env
        .push(("CDC_WRITER_PASSWORD".into(), "writer-pw".into()));
    d.spawn();
    // Step 1: three reviews, enriched and written to the side table.
    block_on(db.exec(
        "INSERT INTO bug.reviews VALUES
           (1, 'Great product, excellent support, I love it.'),
           (2, 'Terrible quality, awful service, I hate it.'),
           (3, 'Great value and excellent packaging.');",
    ));
    wait_side(
        &mut d,
        &db,
        &[
            (1, "POSITIVE", 0.9),
            (2, "NEGATIVE", 0.92),
            (3, "POSITIVE", 0.9),
        ],
    );
    d.kill9();
    // Step 2, while the daemon is down: review 2 deleted, review 3's text withdrawn.
    block_on(db.exec(
        "DELETE FROM bug.reviews WHERE id = 2; UPDATE bug.reviews SET body = NULL WHERE id = 3;",
    ));
    d.spawn();
    wait_side(&mut d, &db, &[(1, "POSITIVE", 0.9)]);
    d.kill9();
    // Step 3: review 2's id reused for a new, positive review.
    block_on(
        db.exec("INSERT INTO bug.reviews VALUES (2, 'Excellent, great, love the new version.');"),
    );
    d.spawn();
    wait_side(&mut d, &db, &[(1, "POSITIVE", 0.9), (2, "POSITIVE", 0.9)]);
    // Exactly 4 documents reached the backend: none for the delete or the NULL body, none again
    // after the restarts.
    let docs: u64 = aws
        .log()
        .iter()
        .map(|e| e["documents"].as_u64().unwrap())
        .sum();
    assert_eq!(docs, 4);
    // Removed exactly once: the replays after kill -9 found nothing left to remove.
    let dead: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM bug.cdc_enricher_dead_letters"));
    assert_eq!(dead, [0]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn in_update_mode_a_withdrawn_input_clears_its_results() {
    let db = MariaDb::start();
    let aws = AwsStandin::start();
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, sentiment VARCHAR(20), confidence DOUBLE);
         CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
         GRANT SELECT, INSERT, UPDATE, CREATE ON shop.* TO 'writer'@'127.0.0.1';",
    ));
    let p = format!(
        "name: s\ntable: shop.support\ncolumns: [id, message]\n\
         enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 100\n\
         sink:\n  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{sentiment: /sentiment, confidence: /confidence}}\n",
        aws.url()
    );
    let mut d = Daemon::new(&db, None, &[("s", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(
        db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'great'), (2, 'terrible');"),
    );
    let rows = |db: &MariaDb| -> Vec<(i64, Option<String>)> {
        block_on(db.query("SELECT id, sentiment FROM shop.support ORDER BY id"))
    };
    let wait = |d: &mut Daemon, want: Vec<(i64, Option<String>)>| {
        let start = Instant::now();
        while rows(&db) != want {
            d.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?}\n{}",
                rows(&db),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(
        &mut d,
        vec![(1, Some("POSITIVE".into())), (2, Some("NEGATIVE".into()))],
    );
    block_on(db.exec("UPDATE shop.support SET message = '  ' WHERE id = 2;"));
    wait(&mut d, vec![(1, Some("POSITIVE".into())), (2, None)]);
    let conf: Vec<Option<f64>> =
        block_on(db.query("SELECT confidence FROM shop.support WHERE id = 2"));
    assert_eq!(conf, [None]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_filter_is_a_view_rows_leave_it_as_deletes_and_the_topic_holds_exactly_its_rows() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t; CREATE TABLE t.tickets (id INT PRIMARY KEY, status VARCHAR(10), title VARCHAR(20));",
    ));
    let open = "name: open\ntable: t.tickets\nfilter: \"status = 'open'\"\n\
                sink:\n  kafka:\n    topic: open\n    tombstones: true\n";
    // Without deletes in its operations, a pipeline is not told of rows leaving its filter.
    let no_deletes = "name: nd\ntable: t.tickets\noperations: [insert, update]\n\
                      filter: \"status = 'open'\"\nsink:\n  kafka:\n    topic: nd\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("open", open), ("nd", no_deletes)]);
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.tickets VALUES (1, 'open', 'a'), (2, 'closed', 'b'), (3, 'open', 'c'), (4, 'open', 'd');
         UPDATE t.tickets SET status = 'closed' WHERE id = 1;
         UPDATE t.tickets SET status = 'open' WHERE id = 2;
         UPDATE t.tickets SET title = 'cc' WHERE id = 3;
         UPDATE t.tickets SET title = 'bb' WHERE id = 1;
         UPDATE t.tickets SET id = 30, status = 'closed' WHERE id = 3;
         UPDATE t.tickets SET id = 10, status = 'open' WHERE id = 1;
         UPDATE t.tickets SET status = NULL WHERE id = 4;
         DELETE FROM t.tickets WHERE id = 30;",
    ));
    let mut tail = kafka.tail("open");
    // c 1, c 3, c 4; 1 left (d, tombstone); 2 entered (u); 3 updated (u); 1's update while
    // out: nothing; 3 left with a key change (d of 3, tombstone); 1 entered with a key change
    // (c of 10 only); 4 left for NULL (d, tombstone); the delete of 30, out: nothing.
    wait_records(&mut d, &mut tail, 12, 30);
    tail.drain(Duration::from_secs(1));
    let ops = ops_and_keys(&tail.records);
    let o = |op: &str, k: i64| (op.to_string(), key(k));
    assert_eq!(
        ops,
        [
            o("c", 1),
            o("c", 3),
            o("c", 4),
            o("d", 1),
            o("tombstone", 1),
            o("u", 2),
            o("u", 3),
            o("d", 3),
            o("tombstone", 3),
            o("c", 10),
            o("d", 4),
            o("tombstone", 4)
        ]
    );
    let left = tail.records[3].json();
    assert_eq!(
        left["before"],
        json!({"id": 1, "status": "open", "title": "a"})
    );
    assert_eq!(left["after"], Value::Null);
    assert_eq!(left["filter_change"], json!("left"));
    assert_eq!(left["key_change"], Value::Null);
    // A row coming in is marked; an ordinary update is not.
    let came = tail.records[5].json();
    assert_eq!(
        came["before"],
        json!({"id": 2, "status": "closed", "title": "b"})
    );
    assert_eq!(came["filter_change"], json!("entered"));
    assert_eq!(tail.records[6].json().get("filter_change"), None);
    let moved = tail.records[7].json();
    assert_eq!(
        moved["before"],
        json!({"id": 3, "status": "open", "title": "cc"})
    );
    assert_eq!(moved["filter_change"], json!("left"));
    let entered = tail.records[9].json();
    assert_eq!(
        entered["key_change"],
        json!({"old": {"id": 1}, "new": {"id": 10}})
    );
    assert_eq!(
        entered["after"],
        json!({"id": 10, "status": "open", "title": "bb"})
    );
    assert_eq!(entered["filter_change"], json!("entered"));
    // The compacted topic holds exactly the rows the filter selects now.
    let rows: Vec<(i64, String, String)> = block_on(
        db.query("SELECT id, status, title FROM t.tickets WHERE status = 'open' ORDER BY id"),
    );
    let want: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|(id, s, t)| (key(id).unwrap(), json!({"id": id, "status": s, "title": t})))
        .collect();
    assert_eq!(compacted(&tail.records), want);
    // `operations: [insert, update]`: no `d` for leaving; the rest as above.
    let nd = kafka.read("nd", 7, Duration::from_secs(10));
    let ops = ops_and_keys(&nd);
    assert_eq!(
        ops,
        [
            o("c", 1),
            o("c", 3),
            o("c", 4),
            o("u", 2),
            o("u", 3),
            o("c", 10)
        ]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_row_leaving_a_filter_loses_its_side_row_and_gets_it_back_when_it_returns() {
    let db = MariaDb::start();
    let aws = AwsStandin::start();
    block_on(db.exec(
        "CREATE DATABASE bug;
         CREATE TABLE bug.reviews (id INT PRIMARY KEY, body TEXT, state VARCHAR(10));
         CREATE TABLE bug.review_sentiment (review_id INT PRIMARY KEY, sentiment VARCHAR(10), confidence DOUBLE);
         CREATE USER 'cdc_writer'@'127.0.0.1' IDENTIFIED BY 'writer-pw';
         GRANT SELECT ON bug.reviews TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, DELETE ON bug.review_sentiment TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, CREATE ON bug.cdc_enricher_writeback TO 'cdc_writer'@'127.0.0.1';
         GRANT SELECT, INSERT, UPDATE, CREATE ON bug.cdc_enricher_dead_letters TO 'cdc_writer'@'127.0.0.1';",
    ));
    let pipeline = std::fs::read_to_string(
        fidelity_case("14-writeback-orphans-after-delete").join("pipeline.yaml"),
    )
    .unwrap()
    .replace(
        "operations: [insert, update, delete]\n",
        "operations: [insert, update, delete]\nfilter: \"state = 'published'\"\n",
    );
    assert!(pipeline.contains("filter:"));
    let mut d = Daemon::new(&db, None, &[("case", &pipeline)]);
    d.env = AwsStandin::env();
    d.env.push(("AWS_ENDPOINT_URL".into(), aws.url()));
    d.env
        .push(("CDC_WRITER_PASSWORD".into(), "writer-pw".into()));
    d.spawn();
    block_on(db.exec(
        "INSERT INTO bug.reviews VALUES
           (1, 'Great product, excellent support, I love it.', 'published'),
           (2, 'Terrible quality, awful service, I hate it.', 'published'),
           (3, 'Great value and excellent packaging.', 'draft');",
    ));
    wait_side(&mut d, &db, &[(1, "POSITIVE", 0.9), (2, "NEGATIVE", 0.92)]);
    // Review 2 unpublished: its side row goes, though the review stays.
    block_on(db.exec("UPDATE bug.reviews SET state = 'hidden' WHERE id = 2;"));
    wait_side(&mut d, &db, &[(1, "POSITIVE", 0.9)]);
    d.kill9();
    // While the daemon is down: 2 published again with new text, 3 published, 1 hidden.
    block_on(db.exec(
        "UPDATE bug.reviews SET state = 'published', body = 'Excellent, great, love it now.' WHERE id = 2;
         UPDATE bug.reviews SET state = 'published' WHERE id = 3;
         UPDATE bug.reviews SET state = 'hidden' WHERE id = 1;",
    ));
    d.spawn();
    wait_side(&mut d, &db, &[(2, "POSITIVE", 0.9), (3, "POSITIVE", 0.9)]);
    // The source table dropped: its derived rows go with it.
    block_on(db.exec("DROP TABLE bug.reviews;"));
    wait_side(&mut d, &db, &[]);
    let dead: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM bug.cdc_enricher_dead_letters"));
    assert_eq!(dead, [0]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn statements_on_a_temporary_table_that_shadows_a_read_table_leave_it_alone() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v INT); CREATE TABLE s.u (id INT PRIMARY KEY);",
    ));
    let p = "name: p\ntable: s.t\nsink:\n  kafka:\n    topic: st\n";
    let q = "name: q\ntable: s.u\nsink:\n  kafka:\n    topic: su\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("p", p), ("q", q)]);
    d.spawn();
    // One session (statements logged as such on its temporary tables): a temporary `t`
    // truncated and altered, then the real `u` truncated while the temporary table exists; a
    // transaction making a temporary table then rolled back (its rows, logged as rows for the
    // UUID(), never happened); a procedure truncating `u` after making a temporary table.
    block_on(db.exec(
        "INSERT INTO s.t VALUES (1, 1), (2, 2); INSERT INTO s.u VALUES (7);
         SET SESSION binlog_format = MIXED; USE s;
         CREATE TEMPORARY TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (9, 9);
         TRUNCATE TABLE t; ALTER TABLE t ADD COLUMN w INT; TRUNCATE TABLE u;
         BEGIN; INSERT INTO s.u SELECT 3 + LENGTH(UUID()) - 36; CREATE TEMPORARY TABLE tmp3 (k INT);
           INSERT INTO s.u SELECT 4 + LENGTH(UUID()) - 36; ROLLBACK;
         CREATE PROCEDURE etl() BEGIN CREATE TEMPORARY TABLE tmp9 (k INT); INSERT INTO tmp9 VALUES (1);
           TRUNCATE TABLE u; DROP TEMPORARY TABLE tmp9; END;
         CALL etl();
         DROP TEMPORARY TABLE t; SET SESSION binlog_format = ROW;
         UPDATE s.t SET v = 20 WHERE id = 2; TRUNCATE TABLE s.t;",
    ));
    let t = kafka.read("st", 5, Duration::from_secs(30));
    let ops: Vec<(Value, Value)> = t
        .iter()
        .map(|r| (r.json()["op"].clone(), r.json()["after"].clone()))
        .collect();
    // The real `t`: its two rows, the update (with the real columns), its own truncate.
    assert_eq!(
        ops,
        [
            (json!("c"), json!({"id": 1, "v": 1})),
            (json!("c"), json!({"id": 2, "v": 2})),
            (json!("u"), json!({"id": 2, "v": 20})),
            (json!("t"), Value::Null),
        ]
    );
    let u: Vec<Value> = kafka
        .read("su", 5, Duration::from_secs(10))
        .iter()
        .map(|r| r.json()["op"].clone())
        .collect();
    assert_eq!(u, [json!("c"), json!("t"), json!("t")]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_temporary_table_altered_while_the_daemon_was_down_leaves_the_real_tables_definition_known() {
    // The backlog read at start for DDL knows a session's temporary tables as the stream does:
    // an ALTER of a temporary table shadowing the read table, logged while the daemon was
    // down, is not taken for a change of the real table (whose rows before it would then be
    // typed from the binlog alone: MariaDB JSON as text, with a warning).
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE s; CREATE TABLE s.docs (id INT PRIMARY KEY, doc JSON);"));
    let p = "name: p\ntable: s.docs\nsink:\n  kafka:\n    topic: docs\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("p", p)]);
    d.spawn();
    block_on(db.exec("INSERT INTO s.docs VALUES (1, '{\"a\": 1}');"));
    let mut tail = kafka.tail("docs");
    wait_records(&mut d, &mut tail, 1, 60);
    assert_eq!(d.terminate(), 0);
    block_on(db.exec(
        "INSERT INTO s.docs VALUES (2, '{\"b\": [2, 3]}');
         SET SESSION binlog_format = MIXED; USE s;
         CREATE TEMPORARY TABLE docs (id INT PRIMARY KEY, doc TEXT);
         ALTER TABLE docs ADD COLUMN w INT; TRUNCATE TABLE docs;
         DROP TEMPORARY TABLE docs; SET SESSION binlog_format = ROW;
         INSERT INTO s.docs VALUES (3, '{\"c\": null}');",
    ));
    d.spawn();
    wait_records(&mut d, &mut tail, 3, 60);
    let docs: Vec<(Value, Value)> = tail
        .records
        .iter()
        .map(|r| (r.json()["op"].clone(), r.json()["after"]["doc"].clone()))
        .collect();
    assert_eq!(
        docs,
        [
            (json!("c"), json!({"a": 1})),
            (json!("c"), json!({"b": [2, 3]})),
            (json!("c"), json!({"c": null})),
        ]
    );
    let log = d.log();
    assert!(
        !log.contains("cannot tell this table's definition"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn statements_as_sessions_write_them_ansi_quotes_set_statement_comments_and_lenient_json() {
    // What the binlog holds as sessions wrote it: names in double quotes under ANSI_QUOTES (and
    // the server's own `DROP TABLE "t"` in an ANSI session), `SET STATEMENT … FOR` prefixes, a
    // change logged as a statement behind a comment inside a rolled-back transaction, JSON
    // documents MariaDB's json_valid accepts beyond RFC 8259, a JSON column named with a
    // backtick. Each is read as the server ran it.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE s;
         CREATE TABLE s.t5 (id INT PRIMARY KEY); CREATE TABLE s.d1 (id INT PRIMARY KEY);
         CREATE TABLE s.d5 (id INT PRIMARY KEY); CREATE TABLE s.t6 (id INT PRIMARY KEY);
         CREATE TABLE s.t19 (id INT PRIMARY KEY, doc LONGTEXT);
         CREATE TABLE s.t21 (id INT PRIMARY KEY, doc JSON);
         CREATE TABLE s.jx (id INT PRIMARY KEY, doc JSON);
         CREATE TABLE s.bq (id INT PRIMARY KEY, `j``k` JSON);
         CREATE TABLE s.r (id INT PRIMARY KEY, v VARCHAR(40));
         CREATE TABLE s.un (id INT PRIMARY KEY, v VARCHAR(40));",
    ));
    let names = ["t5", "d1", "d5", "t6", "t19", "t21", "jx", "bq", "r"];
    let files = kafka_pipelines(&names.map(|t| (t, t)));
    let mut d = Daemon::new(&db, Some(&kafka), &pipeline_refs(&files));
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    block_on(db.exec(
        r#"INSERT INTO s.t5 VALUES (1); INSERT INTO s.d1 VALUES (1); INSERT INTO s.d5 VALUES (1);
         INSERT INTO s.t6 VALUES (1); INSERT INTO s.t19 VALUES (1, '{"x": 0}');
         INSERT INTO s.t21 VALUES (1, '{"b": 1}');"#,
    ));
    // The stream is live (the definitions it read are those before the DDL below).
    let mut t21 = kafka.tail("t21");
    wait_records(&mut d, &mut t21, 1, 60);
    block_on(db.exec(
        r#"USE s; SET sql_mode = 'ANSI_QUOTES';
         TRUNCATE TABLE "t5"; DROP TABLE "s"."d1"; ALTER TABLE "s"."t19" MODIFY doc JSON;
         SET sql_mode = 'ANSI'; DROP TABLE d5; SET sql_mode = DEFAULT;
         INSERT INTO s.t19 VALUES (2, '{"a": 1}');
         SET STATEMENT max_statement_time = 100 FOR TRUNCATE TABLE s.t6;
         SET STATEMENT lock_wait_timeout = 100 FOR ALTER TABLE s.t21 MODIFY doc LONGTEXT;
         INSERT INTO s.t21 VALUES (2, 'not json');
         INSERT INTO s.jx VALUES (1, '{"k": "\\x41", "p": 10., "e": 1.e5, "q": "\\\'"}');
         INSERT INTO s.bq VALUES (1, '[1]');
         SET SESSION binlog_format = MIXED;
         BEGIN; /* app */ INSERT INTO s.un VALUES (1, 'stmt'); INSERT INTO s.r VALUES (1, UUID());
           CREATE TEMPORARY TABLE tt (k INT); ROLLBACK;
         SET SESSION binlog_format = STATEMENT;
         SET STATEMENT sql_mode = '' FOR INSERT INTO s.r VALUES (3, 'as a statement');
         SET SESSION binlog_format = ROW;
         INSERT INTO s.r VALUES (2, 'real');"#,
    ));
    let seen = |topic: &str, n: usize| ops_with(&kafka, topic, n, "/truncate", "/after");
    let c = |after: Value| (json!("c"), after);
    let t = |dropped: bool| match dropped {
        true => (json!("t"), json!({"partitions": null, "dropped": true})),
        false => (json!("t"), json!({"partitions": null})),
    };
    assert_eq!(seen("t5", 2), [c(json!({"id": 1})), t(false)]);
    assert_eq!(seen("d1", 2), [c(json!({"id": 1})), t(true)]);
    assert_eq!(seen("d5", 2), [c(json!({"id": 1})), t(true)]);
    assert_eq!(seen("t6", 2), [c(json!({"id": 1})), t(false)]);
    assert_eq!(
        seen("t19", 2),
        [
            c(json!({"id": 1, "doc": "{\"x\": 0}"})),
            c(json!({"id": 2, "doc": {"a": 1}}))
        ]
    );
    assert_eq!(
        seen("t21", 2),
        [
            c(json!({"id": 1, "doc": {"b": 1}})),
            c(json!({"id": 2, "doc": "not json"}))
        ]
    );
    let raw = |topic: &str| -> String {
        let recs = kafka.read(topic, 1, Duration::from_secs(20));
        recs.first()
            .and_then(|r| r.value.clone())
            .unwrap_or_default()
    };
    let jx = raw("jx");
    assert!(
        jx.contains(r#""after":{"id":1,"doc":{"k":"x41","p":10.0,"e":1.0e5,"q":"'"}}"#),
        "{jx}"
    );
    let bq = raw("bq");
    assert!(bq.contains(r#""after":{"id":1,"j`k":[1]}"#), "{bq}");
    // The rolled-back transaction left nothing; the change logged as a statement is said.
    let r = seen("r", 1);
    assert_eq!(r, [c(json!({"id": 2, "v": "real"}))]);
    let log = d.log();
    assert!(
        log.contains("a change was logged as a statement")
            && log.contains("FOR INSERT INTO s.r VALUES (3, 'as a statement')"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn create_or_replace_select_is_one_transaction_a_truncate_then_its_rows() {
    // MariaDB logs `CREATE OR REPLACE TABLE … SELECT` as one group: a GTID without
    // FL_STANDALONE, the statement, then its rows, then XID. The rows belong to that
    // transaction (its GTID and position, after the truncate) and are typed by the new
    // definition (a JSON column as JSON).
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        r#"CREATE DATABASE s;
         CREATE TABLE s.src (id INT PRIMARY KEY, doc JSON);
         INSERT INTO s.src VALUES (1, '{"a": 1}'), (2, '[2]');
         CREATE TABLE s.c (id INT PRIMARY KEY, doc LONGTEXT);"#,
    ));
    let p = "name: c\ntable: s.c\nsink:\n  kafka:\n    topic: c\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("c", p)]);
    d.spawn();
    block_on(db.exec(r#"INSERT INTO s.c VALUES (9, '{"old": true}');"#));
    let mut tail = kafka.tail("c");
    wait_records(&mut d, &mut tail, 1, 60);
    block_on(db.exec(
        r#"CREATE OR REPLACE TABLE s.c (id INT PRIMARY KEY, doc JSON) SELECT id, doc FROM s.src;
         INSERT INTO s.c VALUES (3, '{"after": 1}');"#,
    ));
    wait_records(&mut d, &mut tail, 5, 60);
    let recs: Vec<Value> = tail.records.iter().map(|r| r.json()).collect();
    let ops: Vec<(Value, Value)> = recs
        .iter()
        .map(|v| (v["op"].clone(), v["after"]["doc"].clone()))
        .collect();
    assert_eq!(
        ops,
        [
            (json!("c"), json!("{\"old\": true}")),
            (json!("t"), Value::Null),
            (json!("c"), json!({"a": 1})),
            (json!("c"), json!([2])),
            (json!("c"), json!({"after": 1})),
        ]
    );
    let (gtid, pos) = (&recs[1]["source"]["gtid"], &recs[1]["source"]["pos"]);
    assert!(gtid.is_string(), "{}", recs[1]);
    for r in &recs[2..4] {
        assert_eq!(
            (&r["source"]["gtid"], &r["source"]["pos"]),
            (gtid, pos),
            "{r}"
        );
    }
    assert_ne!(&recs[4]["source"]["gtid"], gtid);
    // A restart reads nothing again.
    d.kill9();
    d.spawn();
    block_on(db.exec("INSERT INTO s.c VALUES (4, NULL);"));
    wait_records(&mut d, &mut tail, 6, 60);
    tail.drain(Duration::from_secs(1));
    assert_eq!(tail.records.len(), 6, "{}", d.log());
    assert_eq!(tail.records[5].json()["after"]["id"], 4);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_read_table_changed_by_foreign_key_actions_is_warned_of_at_start() {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE s; CREATE TABLE s.parent (id INT PRIMARY KEY);
         CREATE TABLE s.child (id INT PRIMARY KEY, parent INT,
           CONSTRAINT child_parent FOREIGN KEY (parent) REFERENCES s.parent (id) ON DELETE CASCADE);
         CREATE TABLE s.plain (id INT PRIMARY KEY, parent INT,
           CONSTRAINT plain_parent FOREIGN KEY (parent) REFERENCES s.parent (id));",
    ));
    let child = "name: child\ntable: s.child\nsink:\n  jsonl:\n    path: child.jsonl\n";
    let plain = "name: plain\ntable: s.plain\nsink:\n  jsonl:\n    path: plain.jsonl\n";
    let mut d = Daemon::new(&db, None, &[("child", child), ("plain", plain)]);
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    let warned: Vec<String> = d
        .log()
        .lines()
        .filter(|l| l.contains("a foreign key changes this table's rows"))
        .map(str::to_string)
        .collect();
    assert_eq!(warned.len(), 1, "{}", d.log());
    assert!(
        warned[0].contains("child_parent") && warned[0].contains("CASCADE"),
        "{}",
        warned[0]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_table_converted_into_a_partition_leaves_with_its_rows_and_the_rows_brought_are_said() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE s;
         CREATE TABLE s.t (id INT PRIMARY KEY, who VARCHAR(20))
           PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (10));
         CREATE TABLE s.x (id INT PRIMARY KEY, who VARCHAR(20));",
    ));
    let p = "name: p\ntable: s.t\nsink:\n  kafka:\n    topic: st\n";
    let q = "name: q\ntable: s.x\nsink:\n  kafka:\n    topic: sx\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("p", p), ("q", q)]);
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    block_on(db.exec(
        "INSERT INTO s.t VALUES (1, 'a'); INSERT INTO s.x VALUES (15, 'b');
         ALTER TABLE s.t CONVERT TABLE s.x TO PARTITION p1 VALUES LESS THAN (20);
         INSERT INTO s.t VALUES (16, 'c');",
    ));
    let x: Vec<(Value, Value)> = kafka
        .read("sx", 3, Duration::from_secs(20))
        .iter()
        .map(|r| (r.json()["op"].clone(), r.json()["truncate"].clone()))
        .collect();
    assert_eq!(
        x,
        [
            (json!("c"), Value::Null),
            (json!("t"), json!({"partitions": null, "dropped": true}))
        ]
    );
    let t: Vec<Value> = kafka
        .read("st", 3, Duration::from_secs(10))
        .iter()
        .map(|r| r.json()["after"]["id"].clone())
        .collect();
    assert_eq!(t, [json!(1), json!(16)]);
    assert!(
        d.log()
            .contains("CONVERT TABLE … TO PARTITION brought rows"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn ddl_as_mariadb_writes_it_rename_if_exists_and_lock_waits_client_charsets_and_sequences() {
    // MariaDB's `RENAME TABLE IF EXISTS` and lock waits (`NOWAIT`, `WAIT n`) after a name, a
    // statement logged in its session's client charset (latin1 here: the bytes of `é` in
    // UTF-8 name the table `cafÃ©`), a table replaced by a sequence. Each is read as the
    // server ran it: the table that takes a read name is typed by its own definition, the
    // truncate and the replace are records.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let swap = "(id INT PRIMARY KEY, x UUID, j JSON)";
    let other = "(id INT PRIMARY KEY, x BINARY(16), j LONGTEXT)";
    block_on(db.exec(&format!(
        "CREATE DATABASE s;
         CREATE TABLE s.ctl {swap}; CREATE TABLE s.ctl_new {other};
         CREATE TABLE s.u {swap}; CREATE TABLE s.u_new {other};
         CREATE TABLE s.w {swap}; CREATE TABLE s.w_new {other};
         CREATE TABLE s.`cafÃ©` (id INT PRIMARY KEY); CREATE TABLE s.sq (id INT PRIMARY KEY);"
    )));
    let names = [
        ("ctl", "ctl"),
        ("u", "u"),
        ("w", "w"),
        ("cafe", "cafÃ©"),
        ("sq", "sq"),
    ];
    let files = kafka_pipelines(&names);
    let mut d = Daemon::new(&db, Some(&kafka), &pipeline_refs(&files));
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    let uuid = "'00010203-0405-0607-0809-0a0b0c0d0e0f', '{\"a\": 1}'";
    block_on(db.exec(&format!(
        "INSERT INTO s.ctl VALUES (1, {uuid}); INSERT INTO s.u VALUES (1, {uuid});
         INSERT INTO s.w VALUES (1, {uuid}); INSERT INTO s.`cafÃ©` VALUES (1);
         INSERT INTO s.sq VALUES (1);"
    )));
    let mut sq = kafka.tail("sq");
    wait_records(&mut d, &mut sq, 1, 60);
    let row2 = "(2, X'000102030405060708090A0B0C0D0E0F', 'not json {')";
    block_on(db.exec(&format!(
        "RENAME TABLE s.ctl TO s.ctl_old, s.ctl_new TO s.ctl; INSERT INTO s.ctl VALUES {row2};
         RENAME TABLE IF EXISTS s.u TO s.u_old, s.u_new TO s.u; INSERT INTO s.u VALUES {row2};
         RENAME TABLE s.w NOWAIT TO s.w_old, s.w_new WAIT 5 TO s.w; INSERT INTO s.w VALUES {row2};
         SET NAMES latin1; TRUNCATE TABLE s.`café`; SET NAMES utf8mb4;
         INSERT INTO s.`cafÃ©` VALUES (3);
         CREATE OR REPLACE SEQUENCE s.sq;"
    )));
    let seen = |topic: &str, n: usize| ops_with(&kafka, topic, n, "/truncate", "/after");
    let c = |after: Value| (json!("c"), after);
    let truncate = (json!("t"), json!({"partitions": null}));
    // The table that took the name is typed by its own definition: BINARY(16) as base64,
    // LONGTEXT as text (as UUID and JSON it was rendered as a UUID, or stopped the pipeline).
    let swapped = [
        c(json!({"id": 1, "x": "00010203-0405-0607-0809-0a0b0c0d0e0f", "j": {"a": 1}})),
        c(json!({"id": 2, "x": "AAECAwQFBgcICQoLDA0ODw==", "j": "not json {"})),
    ];
    for topic in ["ctl", "u", "w"] {
        assert_eq!(seen(topic, 2), swapped, "{topic}: {}", d.log());
    }
    assert_eq!(
        seen("cafe", 3),
        [c(json!({"id": 1})), truncate.clone(), c(json!({"id": 3}))]
    );
    assert_eq!(seen("sq", 2), [c(json!({"id": 1})), truncate]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn renamed_temporary_tables_failed_replaces_and_routine_bodies_do_what_the_server_did() {
    // A temporary table renamed onto a read table's name shadows it (its TRUNCATE is not the
    // real table's); a failed `CREATE OR REPLACE TABLE … SELECT` is logged as a generated
    // `DROP TABLE` in a group that ends in ROLLBACK, and the old table is gone all the same
    // (InnoDB and MyISAM); a procedure whose body reads `… INDEX … ON t` is no index DDL on
    // `t` (read from the backlog, it made the rows before the next real DDL untyped).
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO s.t VALUES (1, 'stays'), (2, 'stays');
         CREATE TABLE s.cs (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO s.cs VALUES (1, 'orig');
         CREATE TABLE s.cm (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=MyISAM; INSERT INTO s.cm VALUES (1, 'orig');
         CREATE TABLE s.jt (id INT PRIMARY KEY, doc JSON); CREATE TABLE s.other (id INT PRIMARY KEY);",
    ));
    let files = kafka_pipelines(&[("t", "t"), ("cs", "cs"), ("cm", "cm"), ("jt", "jt")]);
    let mut d = Daemon::new(&db, Some(&kafka), &pipeline_refs(&files));
    d.spawn();
    wait_log(&mut d, "reading the binlog", 1, 60);
    block_on(db.exec(
        "SET SESSION binlog_format = MIXED; USE s;
         CREATE TEMPORARY TABLE scratch (id INT); ALTER TABLE scratch RENAME TO t;
         TRUNCATE TABLE t; DROP TEMPORARY TABLE t;
         CREATE TEMPORARY TABLE scratch2 (id INT); RENAME TABLE scratch2 TO t;
         TRUNCATE TABLE t; DROP TEMPORARY TABLE t; SET SESSION binlog_format = ROW;
         UPDATE s.t SET v = 'still here' WHERE id = 1;",
    ));
    block_on(async {
        let mut c = db.conn().await;
        for t in ["cs", "cm"] {
            let engine = if t == "cm" { "ENGINE=MyISAM" } else { "" };
            let sql = format!("CREATE OR REPLACE TABLE s.{t} (id INT PRIMARY KEY, v VARCHAR(20)) {engine} SELECT 5 AS id, 'a' AS v UNION ALL SELECT 5, 'dup'");
            let failed = c.query_drop(&sql).await;
            assert!(failed.is_err(), "{sql} must fail on the duplicate key");
        }
        c.disconnect().await.unwrap();
    });
    block_on(db.exec("INSERT INTO s.jt VALUES (1, '{\"a\": 1}');"));
    assert_eq!(
        ops_with(&kafka, "t", 4, "/after", "/after"),
        [
            (json!("c"), json!({"id": 1, "v": "stays"})),
            (json!("c"), json!({"id": 2, "v": "stays"})),
            (json!("u"), json!({"id": 1, "v": "still here"})),
        ],
        "{}",
        d.log()
    );
    for topic in ["cs", "cm"] {
        assert_eq!(
            ops_with(&kafka, topic, 3, "/truncate", "/truncate"),
            [
                (json!("c"), Value::Null),
                (json!("t"), json!({"partitions": null, "dropped": true})),
            ],
            "{topic}"
        );
    }
    let mut jt = kafka.tail("jt");
    wait_records(&mut d, &mut jt, 1, 30);
    assert_eq!(d.terminate(), 0);
    // The tables of `cs` and `cm` are gone: their pipelines go (`check` would refuse them).
    for p in ["cs", "cm"] {
        std::fs::remove_file(d.dir.path().join(format!("pipelines/{p}.yaml"))).unwrap();
    }
    block_on(db.exec(
        "CREATE PROCEDURE s.py() SELECT o.id FROM s.other o FORCE INDEX (PRIMARY) JOIN s.jt ON s.jt.id = o.id;
         INSERT INTO s.jt VALUES (4, '{\"a\": 4}'); ALTER TABLE s.jt ADD COLUMN z INT;
         INSERT INTO s.jt VALUES (5, '{\"a\": 5}', 5);",
    ));
    d.spawn();
    wait_records(&mut d, &mut jt, 3, 60);
    let docs: Vec<Value> = jt
        .records
        .iter()
        .map(|r| r.json()["after"]["doc"].clone())
        .collect();
    assert_eq!(docs, [json!({"a": 1}), json!({"a": 4}), json!({"a": 5})]);
    assert!(
        !d.log().contains("cannot tell this table's definition"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}
