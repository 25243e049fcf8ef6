//! Exactly what committed: groups that end in ROLLBACK leave no record (fidelity case 02 and a
//! 200,000-row one held in a spill file), savepoints rolled back to, XA transactions emitted at
//! their XA COMMIT in commit order and never after XA ROLLBACK (case 01), also across a
//! `kill -9` while prepared.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn key(id: i64) -> Option<String> {
    Some(format!("{{\"id\":{id}}}"))
}

fn ids(recs: &[Record]) -> Vec<(String, i64)> {
    recs.iter()
        .map(|r| {
            let v = r.json();
            let img = if v["after"].is_null() {
                &v["before"]
            } else {
                &v["after"]
            };
            (
                v["op"].as_str().unwrap().to_string(),
                img["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn case_02_groups_ending_in_rollback_leave_no_record() {
    let port = free_port();
    let (_db, kafka, mut d) = start_fidelity_case(
        "02-rollback-logged-after-temp-table",
        &[],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    let mut tail = kafka.tail("bug.02");
    wait_records(&mut d, &mut tail, 3, 30);
    tail.drain(Duration::from_secs(1));
    let n = Value::Null;
    assert_eq!(
        changes(&tail.records),
        vec![
            (
                "c".into(),
                key(1),
                n.clone(),
                json!({"id": 1, "amount": 100, "memo": "opening"})
            ),
            (
                "c".into(),
                key(3),
                n,
                json!({"id": 3, "amount": 30, "memo": "real insert"})
            ),
            (
                "u".into(),
                key(1),
                json!({"id": 1, "amount": 100, "memo": "opening"}),
                json!({"id": 1, "amount": 150, "memo": "opening"})
            ),
        ]
    );
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(&body, "cdc_enricher_rolled_back_groups_total"),
        Some("2")
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn case_01_xa_rows_come_at_xa_commit_in_commit_order_and_never_after_xa_rollback() {
    let (_db, kafka, mut d) = start_fidelity_case("01-xa-prepared-then-rollback", &[], "");
    let mut tail = kafka.tail("bug.01");
    wait_records(&mut d, &mut tail, 5, 30);
    tail.drain(Duration::from_secs(1));
    let n = Value::Null;
    let acct = |id: i64, owner: &str, bal: &str| json!({"id": id, "owner": owner, "balance": bal});
    assert_eq!(
        changes(&tail.records),
        vec![
            ("c".into(), key(1), n.clone(), acct(1, "alpha", "100.00")),
            ("c".into(), key(2), n.clone(), acct(2, "bravo", "20.00")),
            ("c".into(), key(4), n.clone(), acct(4, "delta", "40.00")),
            (
                "u".into(),
                key(2),
                acct(2, "bravo", "20.00"),
                acct(2, "bravo", "25.00")
            ),
            ("c".into(), key(5), n, acct(5, "echo", "50.00")),
        ]
    );
    assert_eq!(d.terminate(), 0);
    assert_eq!(d.checkpoint().unwrap().get("open_xa"), None);
}

const ACCT: &str = "name: acct\ntable: t.acct\nsink:\n  kafka:\n    topic: acct\n";

/// Prepares an XA transaction on its own connection and leaves it detached.
fn prepare_xa(db: &MariaDb, xid: &str, sql: &str) {
    block_on(async {
        use mysql_async::prelude::Queryable;
        let mut c = db.conn().await;
        c.query_drop(format!(
            "XA START '{xid}'; {sql}; XA END '{xid}'; XA PREPARE '{xid}'"
        ))
        .await
        .unwrap();
        c.disconnect().await.unwrap();
    });
}

#[test]
fn a_prepared_xa_survives_kill_9_and_comes_once_at_its_commit_and_never_after_a_rollback() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE t; CREATE TABLE t.acct (id INT PRIMARY KEY, v INT);"));
    let mut d = Daemon::new(&db, Some(&kafka), &[("acct", ACCT)]);
    d.spawn();
    prepare_xa(&db, "x-commit", "INSERT INTO t.acct VALUES (1, 1)");
    prepare_xa(&db, "x-rollback", "INSERT INTO t.acct VALUES (9, 9)");
    block_on(db.exec("INSERT INTO t.acct VALUES (2, 2)"));
    let mut tail = kafka.tail("acct");
    wait_records(&mut d, &mut tail, 1, 30);
    // The checkpoint moves past the prepare groups and keeps them.
    let start = std::time::Instant::now();
    let cp = loop {
        let cp = d.checkpoint().unwrap_or_default();
        if cp["open_xa"].as_array().is_some_and(|a| a.len() == 2) {
            break cp;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{cp}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cp["open_xa"][0]["xid"]["gtrid"], "782d636f6d6d6974"); // "x-commit"
    d.kill9();
    // While the daemon is down: a new binlog file, a row, the outcomes from another
    // connection, another row.
    block_on(db.exec(
        "FLUSH BINARY LOGS; INSERT INTO t.acct VALUES (3, 3);
         XA COMMIT 'x-commit'; XA ROLLBACK 'x-rollback'; INSERT INTO t.acct VALUES (4, 4);",
    ));
    d.spawn();
    wait_records(&mut d, &mut tail, 4, 30);
    tail.drain(Duration::from_secs(1));
    assert_eq!(
        ids(&tail.records),
        [
            ("c".to_string(), 2),
            ("c".into(), 3),
            ("c".into(), 1),
            ("c".into(), 4)
        ],
        "{}",
        d.log()
    );
    assert!(d
        .log()
        .contains("a prepared XA transaction of the checkpoint read again"));
    assert_eq!(d.terminate(), 0);
    assert_eq!(d.checkpoint().unwrap().get("open_xa"), None);
}

#[test]
fn a_prepared_xa_read_again_after_kill_9_keeps_its_rollback_to_savepoint() {
    // A write to a MyISAM table makes the server log the XA's SAVEPOINT and ROLLBACK TO: the
    // rows after the savepoint never happened. Read live, they are dropped; read again from the
    // binlog after a restart (the XA committed while the daemon was down), the same.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t; CREATE TABLE t.acct (id INT PRIMARY KEY, v VARCHAR(20));
         CREATE TABLE t.audit (msg VARCHAR(20)) ENGINE=MyISAM;",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("acct", ACCT)]);
    d.spawn();
    let body = "INSERT INTO t.acct VALUES (1, 'keep-1'); SAVEPOINT s1;
                INSERT INTO t.acct VALUES (2, 'phantom'); UPDATE t.acct SET v = 'phantom-upd' WHERE id = 1;
                INSERT INTO t.audit VALUES ('attempt'); ROLLBACK TO SAVEPOINT s1;
                INSERT INTO t.acct VALUES (3, 'keep-3')";
    prepare_xa(&db, "x-sp", body);
    block_on(db.exec("INSERT INTO t.acct VALUES (10, 'plain')"));
    let mut tail = kafka.tail("acct");
    wait_records(&mut d, &mut tail, 1, 30);
    let start = std::time::Instant::now();
    while d.checkpoint().unwrap_or_default()["open_xa"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    block_on(db.exec("XA COMMIT 'x-sp'; INSERT INTO t.acct VALUES (11, 'after');"));
    d.spawn();
    wait_records(&mut d, &mut tail, 4, 30);
    tail.drain(Duration::from_secs(1));
    let got: Vec<Value> = tail
        .records
        .iter()
        .filter_map(|r| r.value.as_ref().map(|_| r.json()))
        .map(|v| json!([v["op"], v["after"]]))
        .collect();
    assert_eq!(
        got,
        [
            json!(["c", {"id": 10, "v": "plain"}]),
            json!(["c", {"id": 1, "v": "keep-1"}]),
            json!(["c", {"id": 3, "v": "keep-3"}]),
            json!(["c", {"id": 11, "v": "after"}]),
        ],
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_large_xa_comes_at_its_commit_a_slice_at_a_time_each_row_once_with_its_own_table_maps() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t; CREATE TABLE t.acct (id INT PRIMARY KEY, v INT);
         CREATE TABLE t.other (id INT PRIMARY KEY, w VARCHAR(8));",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("acct", ACCT)]);
    d.spawn();
    block_on(db.exec("INSERT INTO t.acct VALUES (1, 1)"));
    let mut tail = kafka.tail("acct");
    wait_records(&mut d, &mut tail, 1, 30);
    // Several slices of rows (1,024 records each), rows events of two tables interleaved,
    // and another transaction (with table maps of its own ids) between prepare and commit.
    prepare_xa(
        &db,
        "big",
        "INSERT INTO t.acct SELECT seq, 7 FROM t.seq_10_to_2509;
         INSERT INTO t.other SELECT seq, 'x' FROM t.seq_1_to_2000;
         INSERT INTO t.acct SELECT seq, 8 FROM t.seq_3000_to_4999;
         UPDATE t.acct SET v = 9 WHERE id BETWEEN 10 AND 19",
    );
    block_on(db.exec(
        "CREATE TABLE t.third (id INT PRIMARY KEY); INSERT INTO t.third VALUES (1);
         INSERT INTO t.acct VALUES (2, 2); XA COMMIT 'big'; INSERT INTO t.acct VALUES (6000, 3);",
    ));
    let expected = 2 + 2_500 + 2_000 + 10 + 1;
    wait_records(&mut d, &mut tail, expected, 60);
    tail.drain(Duration::from_secs(1));
    let got = ids(&tail.records);
    let mut want = vec![("c".to_string(), 1), ("c".into(), 2)];
    want.extend((10..=2509).map(|id| ("c".to_string(), id)));
    want.extend((3000..=4999).map(|id| ("c".to_string(), id)));
    want.extend((10..=19).map(|id| ("u".to_string(), id)));
    want.push(("c".into(), 6000));
    assert_eq!(got, want, "{}", d.log());
    // The XA's rows carry its commit's position, the values of their own rows events.
    let xa = tail.records[2].json();
    assert_eq!(xa["after"], json!({"id": 10, "v": 7}));
    let commit_pos = &xa["source"]["pos"];
    assert!(tail.records[2..expected - 1]
        .iter()
        .all(|r| &r.json()["source"]["pos"] == commit_pos));
    assert_eq!(
        tail.records[expected - 2].json()["after"],
        json!({"id": 19, "v": 9})
    );
    assert_eq!(d.terminate(), 0);
    assert_eq!(d.checkpoint().unwrap().get("open_xa"), None);
}

#[test]
fn large_groups_are_held_in_a_spill_file_and_a_rolled_back_one_leaves_nothing() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t; CREATE TABLE t.acct (id INT PRIMARY KEY, v INT);
         CREATE TABLE t.side (id INT PRIMARY KEY) ENGINE=MyISAM;",
    ));
    let port = free_port();
    let spill = tempfile::tempdir().unwrap();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("acct", ACCT)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        "  start: earliest\n",
        &format!(
            "  start: earliest\n  transaction_buffer_mb: 1\n  spill_dir: {}\n",
            spill.path().display()
        ),
    );
    std::fs::write(d.config(), cfg).unwrap();
    d.spawn();
    block_on(db.exec(
        // 200,000 rows that never happened (the temporary table makes MariaDB log them, then
        // ROLLBACK), then 200,000 that did, then a group mixing InnoDB and MyISAM (logged as
        // two groups, both committed), then savepoints.
        "BEGIN; CREATE TEMPORARY TABLE t.tmp (k INT);
         INSERT INTO t.acct SELECT seq, 0 FROM t.seq_1_to_200000; ROLLBACK;
         DROP TEMPORARY TABLE IF EXISTS t.tmp;
         INSERT INTO t.acct SELECT seq, 1 FROM t.seq_300001_to_500000;
         BEGIN; INSERT INTO t.acct VALUES (600001, 2); INSERT INTO t.side VALUES (1); COMMIT;
         BEGIN; INSERT INTO t.acct VALUES (600002, 3); SAVEPOINT a;
           INSERT INTO t.acct VALUES (600003, 3); CREATE TEMPORARY TABLE t.tmp2 (k INT);
           ROLLBACK TO SAVEPOINT a; INSERT INTO t.acct VALUES (600004, 3); COMMIT;",
    ));
    let mut tail = kafka.tail("acct");
    wait_records(&mut d, &mut tail, 200_003, 180);
    tail.drain(Duration::from_secs(1));
    let got = ids(&tail.records);
    assert_eq!(got.len(), 200_003);
    assert!(got[..200_000]
        .iter()
        .enumerate()
        .all(|(i, (op, id))| op == "c" && *id == 300_001 + i as i64));
    assert_eq!(
        got[200_000..],
        [
            ("c".to_string(), 600_001),
            ("c".into(), 600_002),
            ("c".into(), 600_004)
        ]
    );
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(&body, "cdc_enricher_rolled_back_groups_total"),
        Some("1")
    );
    assert!(sample(&body, "cdc_enricher_spilled_groups_total").unwrap() >= "2");
    // The spill files are gone once read.
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn rows_after_a_savepoint_stay_in_their_transaction_also_across_a_kill_9_inside_it() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE t; CREATE TABLE t.acct (id INT PRIMARY KEY, v INT);"));
    let mut d = Daemon::new(&db, Some(&kafka), &[("acct", ACCT)]);
    d.spawn();
    // The temporary tables make MariaDB log the savepoints and the rollbacks to them.
    block_on(db.exec(
        "BEGIN; INSERT INTO t.acct SELECT seq, 0 FROM t.seq_1_to_10; SAVEPOINT a;
           CREATE TEMPORARY TABLE t.tmp (k INT); INSERT INTO t.acct VALUES (11, 9), (12, 9);
           ROLLBACK TO SAVEPOINT a; RELEASE SAVEPOINT a;
           INSERT INTO t.acct SELECT seq, 1 FROM t.seq_100001_to_400000; COMMIT;
         BEGIN; INSERT INTO t.acct VALUES (500001, 2); SAVEPOINT `é`;
           CREATE TEMPORARY TABLE t.tmp2 (k INT); INSERT INTO t.acct VALUES (500002, 9);
           ROLLBACK TO SAVEPOINT `É`; INSERT INTO t.acct VALUES (500003, 2); SAVEPOINT `resume`;
           INSERT INTO t.acct VALUES (500004, 9); ROLLBACK TO `résumé`; COMMIT;",
    ));
    let mut tail = kafka.tail("acct");
    // Killed while the 300,010-row transaction is on its way.
    wait_records(&mut d, &mut tail, 20_000, 120);
    d.kill9();
    // Every record so far is of one transaction: its GTID, its first event's position.
    let first = tail.records[0].json()["source"].clone();
    assert!(first["gtid"].is_string(), "{first}");
    for r in &tail.records {
        let s = &r.json()["source"];
        assert_eq!(
            (&s["gtid"], &s["pos"]),
            (&first["gtid"], &first["pos"]),
            "{s}"
        );
    }
    // The checkpoint a kill can leave inside it resumes (no rows event without its TABLE_MAP).
    d.spawn();
    // At least every row once (the records of the kill's checkpoint window come twice).
    wait_records(&mut d, &mut tail, 10 + 300_000 + 2, 240);
    tail.drain(Duration::from_secs(3));
    let seen: std::collections::BTreeSet<i64> =
        ids(&tail.records).into_iter().map(|(_, id)| id).collect();
    let expected: std::collections::BTreeSet<i64> = (1..=10)
        .chain(100_001..=400_000)
        .chain([500_001, 500_003])
        .collect();
    assert_eq!(seen, expected);
    // Nothing rolled back to a savepoint was emitted, before or after the restart.
    assert!(ids(&tail.records).iter().all(|(op, _)| op == "c"));
    assert_eq!(d.terminate(), 0);
}
