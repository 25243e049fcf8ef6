//! Crashes, restarts and reconnects: nothing is lost, and duplicates come only from the
//! window that was not yet acknowledged.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const ROWS: &str = "name: rows\ntable: t.rows\nsink:\n  kafka:\n    topic: rows\n";

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts each id seen in the topic.
fn ids(recs: &[Record]) -> HashMap<i64, usize> {
    let mut m = HashMap::new();
    for r in recs {
        *m.entry(r.json()["after"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    m
}

/// One transaction of 100 rows per batch number, ids `b*100+1 ..= b*100+100`.
fn insert_batches(db: &MariaDb, batches: std::ops::Range<u32>, v: &str) {
    for b in batches {
        block_on(db.exec(&format!(
            "INSERT INTO t.rows SELECT seq, '{v}' FROM t.seq_{}_to_{}",
            b * 100 + 1,
            b * 100 + 100
        )));
    }
}

fn setup() -> (MariaDb, Kafka) {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(
        db.exec("CREATE DATABASE t; CREATE TABLE t.rows (id INT PRIMARY KEY, v VARCHAR(20));"),
    );
    (db, kafka)
}

#[test]
fn kill_9_inside_a_100k_row_transaction_resumes_inside_it() {
    let (db, kafka) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    d.spawn();
    // One transaction of 100,000 rows.
    block_on(db.exec("INSERT INTO t.rows SELECT seq, CONCAT('v', seq) FROM t.seq_1_to_100000"));
    // Crash once a checkpoint inside the transaction is on disk.
    let inside = |c: &serde_json::Value| {
        let p = &c["position"];
        p["event"].as_u64().unwrap_or(0) > 0 || p["row"].as_u64().unwrap_or(0) > 0
    };
    wait_for(
        "a checkpoint inside the transaction",
        Duration::from_secs(120),
        || {
            d.assert_running();
            d.checkpoint().is_some_and(|c| inside(&c))
        },
    );
    d.kill9();
    let mut tail = kafka.tail("rows");
    let delivered_before = tail.drain(Duration::from_secs(2));
    let cp = d
        .checkpoint()
        .expect("a checkpoint was written before the crash");
    assert!(
        inside(&cp),
        "the checkpoint sits inside the transaction: {cp}"
    );
    assert_eq!(cp["version"], 2, "{cp}");
    let at = |r: &Record| {
        let s = &r.json()["source"];
        (s["event"].as_u64().unwrap(), s["row"].as_u64().unwrap())
    };
    let cp_at = (
        cp["position"]["event"].as_u64().unwrap(),
        cp["position"]["row"].as_u64().unwrap(),
    );
    // The records delivered before the crash at or after the checkpoint are the ones that
    // come again: the rows the checkpoint had not yet counted as acknowledged.
    let unacked = tail.records[..delivered_before]
        .iter()
        .filter(|r| at(r) >= cp_at)
        .count();
    assert!(delivered_before > unacked, "some rows were acknowledged");

    d.spawn();
    // Every row once, plus the unacknowledged window again.
    let want = 100_000 + unacked;
    wait_for("all records", Duration::from_secs(180), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= want
    });
    tail.drain(Duration::from_secs(1));
    let recs = tail.records.clone();
    let seen = ids(&recs);
    assert_eq!(seen.len(), 100_000, "every row is in the topic");
    assert!((1..=100_000).all(|i| seen.contains_key(&i)));
    // The restarted daemon began exactly at the checkpoint's rows event and row.
    let first_after = &recs[delivered_before];
    assert_eq!(at(first_after), cp_at, "{cp}");
    assert_eq!(first_after.json()["source"]["pos"], cp["position"]["pos"]);
    let dups = recs.len() - 100_000;
    assert_eq!(
        dups, unacked,
        "duplicates only from the unacknowledged window"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn mariadb_restart_under_the_daemon_loses_nothing() {
    let (mut db, kafka) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    d.spawn();
    let mut tail = kafka.tail("rows");
    insert_batches(&db, 0..10, "a");
    wait_for("1,000 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 1000
    });
    db.restart();
    insert_batches(&db, 10..20, "b");
    wait_for("2,000 records", Duration::from_secs(90), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 2000
    });
    tail.drain(Duration::from_secs(1));
    d.assert_running();
    let recs = tail.records.clone();
    let seen = ids(&recs);
    assert_eq!(recs.len(), 2000, "exactly once across the reconnect");
    assert!((1..=2000).all(|i| seen.get(&i) == Some(&1)));
    assert!(
        d.log().contains("binlog stream lost; reconnecting"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn sigterm_then_restart_delivers_the_rest_exactly_once() {
    let (db, kafka) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    d.spawn();
    block_on(db.exec("INSERT INTO t.rows SELECT seq, 'a' FROM t.seq_1_to_500"));
    let mut tail = kafka.tail("rows");
    wait_for("500 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 500
    });
    assert_eq!(d.terminate(), 0, "{}", d.log());
    // Changes while the daemon is down.
    block_on(db.exec("INSERT INTO t.rows SELECT seq, 'b' FROM t.seq_501_to_800; DELETE FROM t.rows WHERE id <= 10"));
    d.spawn();
    wait_for("810 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 810
    });
    tail.drain(Duration::from_secs(1));
    let recs = tail.records.clone();
    assert_eq!(recs.len(), 810, "no duplicates after a clean stop");
    let deletes = recs.iter().filter(|r| r.json()["op"] == "d").count();
    assert_eq!(deletes, 10);
    assert_eq!(d.terminate(), 0);
}

/// The daemon connects to the server through `proxy`.
fn through(d: &Daemon, db: &MariaDb, proxy: &StallingProxy) {
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        &format!("port: {}", db.port),
        &format!("port: {}", proxy.port),
    );
    std::fs::write(d.config(), cfg).unwrap();
}

#[test]
fn a_stalled_connection_times_out_and_reconnects() {
    let (db, kafka) = setup();
    let proxy = StallingProxy::start(db.port);
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    // Connect through the proxy (heartbeat 500 ms: a read waits at most 1 s).
    through(&d, &db, &proxy);
    d.spawn();
    let mut tail = kafka.tail("rows");
    insert_batches(&db, 0..2, "a");
    wait_for("200 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 200
    });
    // The network path dies silently: no error, no close, no bytes.
    proxy.stall_open_connections();
    insert_batches(&db, 2..4, "b");
    wait_for("400 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 400
    });
    tail.drain(Duration::from_secs(1));
    assert_eq!(tail.records.len(), 400, "exactly once across the timeout");
    let seen = ids(&tail.records);
    assert!((1..=400).all(|i| seen.get(&i) == Some(&1)));
    assert!(
        d.log().contains("no event nor heartbeat for 1000 ms"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn an_event_longer_to_read_than_the_read_timeout_on_a_slow_link_gets_through() {
    // The server sends no heartbeat while it sends an event: a 24 MB row of an unread table
    // through a 6 MB/s link takes ~4 s, four times the read timeout (heartbeat 500 ms). Each
    // silent reconnect at the same position waits twice as long; the event gets through and
    // the read table's next row comes out.
    let (db, kafka) = setup();
    block_on(db.exec("CREATE TABLE t.blobs (id INT PRIMARY KEY, b LONGBLOB);"));
    let proxy = StallingProxy::throttled(db.port, 6_000_000);
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    through(&d, &db, &proxy);
    d.spawn();
    let mut tail = kafka.tail("rows");
    insert_batches(&db, 0..1, "a");
    wait_for("100 records", Duration::from_secs(60), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 100
    });
    block_on(db.exec("INSERT INTO t.blobs VALUES (1, REPEAT('x', 24000000));"));
    insert_batches(&db, 1..2, "b");
    wait_for("200 records", Duration::from_secs(120), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 200
    });
    tail.drain(Duration::from_secs(1));
    let seen = ids(&tail.records);
    assert!((1..=200).all(|i| seen.get(&i) == Some(&1)), "{seen:?}");
    assert_eq!(tail.records.len(), 200);
    let log = d.log();
    assert!(log.contains("the next wait is longer"), "{log}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn kill_9_inside_a_transaction_mixing_read_and_unread_tables() {
    let (db, kafka) = setup();
    // `t.unread` has columns the decoder never needs to read (no pipeline reads it).
    block_on(db.exec(
        "CREATE TABLE t.unread (id INT PRIMARY KEY, dos VARCHAR(20) CHARACTER SET cp850, note TEXT COMPRESSED);",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    d.spawn();
    // One transaction: 100 × (1,000 rows of t.rows, 500 of t.unread), rows events interleaved.
    let mut sql = String::from("BEGIN;");
    for b in 0..100u32 {
        sql.push_str(&format!(
            "INSERT INTO t.rows SELECT seq, 'v' FROM t.seq_{}_to_{};
             INSERT INTO t.unread SELECT seq, 'Zürich', REPEAT('compressed ', 40) FROM t.seq_{}_to_{};",
            b * 1000 + 1,
            b * 1000 + 1000,
            b * 500 + 1,
            b * 500 + 500
        ));
    }
    sql.push_str("COMMIT;");
    block_on(db.exec(&sql));
    let inside = |c: &serde_json::Value| c["position"]["event"].as_u64().unwrap_or(0) > 2;
    wait_for(
        "a checkpoint inside the transaction",
        Duration::from_secs(120),
        || {
            d.assert_running();
            d.checkpoint().is_some_and(|c| inside(&c))
        },
    );
    d.kill9();
    let cp = d.checkpoint().unwrap();
    let mut tail = kafka.tail("rows");
    let before = tail.drain(Duration::from_secs(2));
    let at = |r: &Record| {
        let s = &r.json()["source"];
        (s["event"].as_u64().unwrap(), s["row"].as_u64().unwrap())
    };
    let cp_at = (
        cp["position"]["event"].as_u64().unwrap(),
        cp["position"]["row"].as_u64().unwrap(),
    );
    let unacked = tail.records.iter().filter(|r| at(r) >= cp_at).count();
    d.spawn();
    wait_for("all records", Duration::from_secs(180), || {
        d.assert_running();
        tail.poll(Duration::from_millis(200)) >= 100_000 + unacked
    });
    tail.drain(Duration::from_secs(1));
    let seen = ids(&tail.records);
    assert_eq!(seen.len(), 100_000);
    assert_eq!(tail.records.len(), 100_000 + unacked);
    // The restart began at the checkpoint's rows event and row (rows events of the unread
    // table counted, never decoded).
    assert_eq!(at(&tail.records[before]), cp_at, "{cp}");
    assert!(!d.log().contains("unread"), "{}", d.log());
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_checkpoint_of_format_1_inside_a_transaction_is_converted() {
    let (db, kafka) = setup();
    block_on(db.exec(
        "CREATE TABLE t.other (id INT PRIMARY KEY, x INT);
         BEGIN;
         INSERT INTO t.rows VALUES (1, 'a'), (2, 'b'), (3, 'c');
         INSERT INTO t.other VALUES (1, 1), (2, 2);
         INSERT INTO t.rows VALUES (4, 'd'), (5, 'e'), (6, 'f');
         COMMIT;
         INSERT INTO t.rows VALUES (7, 'g');",
    ));
    // Format 1 counted the rows of every table: 6 rows done = t.rows 1–3, t.other 1–2, and
    // t.rows 4. The transaction starts at its GTID event.
    let events: Vec<mysql_async::Row> = block_on(db.query("SHOW BINLOG EVENTS IN 'binlog.000001'"));
    let gtid_positions: Vec<u64> = events
        .iter()
        .filter(|r| r.get::<String, _>(2).unwrap() == "Gtid")
        .map(|r| r.get::<u64, _>(1).unwrap())
        .collect();
    let txn = gtid_positions[gtid_positions.len() - 2];
    let d_rows = Daemon::new(&db, Some(&kafka), &[("rows", ROWS)]);
    std::fs::create_dir_all(d_rows.dir.path().join("state")).unwrap();
    std::fs::write(
        d_rows.dir.path().join("state/checkpoint.json"),
        format!(
            r#"{{"version": 1, "position": {{"file": "binlog.000001", "pos": {txn}, "row": 6}}}}"#
        ),
    )
    .unwrap();
    let mut d = d_rows;
    d.spawn();
    let mut tail = kafka.tail("rows");
    wait_records(&mut d, &mut tail, 3, 30);
    tail.drain(Duration::from_secs(1));
    let got: Vec<i64> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [5, 6, 7], "{}", d.log());
    assert!(
        d.log().contains("the checkpoint is of format 1"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);
    // Saved again in format 2.
    let cp = d.checkpoint().unwrap();
    assert_eq!(cp["version"], 2);
}
