//! Without column names in the binlog (binlog_row_metadata=MINIMAL) they come from
//! information_schema, read again after DDL; with FULL metadata each TABLE_MAP names its own.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const P: &str = "name: items\ntable: shop.items\nsink:\n  kafka:\n    topic: items\n";

fn run(metadata: &str) {
    let db = MariaDb::start_with(&[metadata]);
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, title VARCHAR(20));",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("items", P)]);
    d.spawn();
    let mut tail = kafka.tail("items");
    block_on(db.exec("INSERT INTO shop.items VALUES (1, 'one')"));
    // Wait for the first record, so the ALTER happens while the daemon is streaming.
    let start = std::time::Instant::now();
    while tail.poll(Duration::from_millis(200)) < 1 {
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
    }
    // With MINIMAL metadata, information_schema must still describe the table as each event
    // saw it: the statements wait for the daemon. With FULL metadata they need not.
    let paced = metadata.ends_with("MINIMAL");
    let mut wait = |n: usize| {
        while tail.poll(Duration::from_millis(200)) < n {
            d.assert_running();
            assert!(start.elapsed() < Duration::from_secs(60), "{}", d.log());
        }
    };
    for (i, sql) in [
        "ALTER TABLE shop.items ADD COLUMN price DECIMAL(6,2) AFTER id; INSERT INTO shop.items VALUES (2, 9.99, 'two')",
        "ALTER TABLE shop.items DROP COLUMN title; INSERT INTO shop.items VALUES (3, 1.00)",
    ]
    .iter()
    .enumerate()
    {
        block_on(db.exec(sql));
        if paced {
            wait(2 + i);
        }
    }
    wait(3);
    let after: Vec<_> = tail
        .records
        .iter()
        .map(|r| r.json()["after"].clone())
        .collect();
    assert_eq!(
        after,
        vec![
            json!({"id": 1, "title": "one"}),
            json!({"id": 2, "price": "9.99", "title": "two"}),
            json!({"id": 3, "price": "1.00"}),
        ],
        "{metadata}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn alter_table_mid_stream_with_full_metadata() {
    run("--binlog-row-metadata=FULL");
}

#[test]
fn alter_table_mid_stream_with_minimal_metadata() {
    run("--binlog-row-metadata=MINIMAL");
}

#[test]
fn a_pipeline_whose_column_is_dropped_stops_alone() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, title VARCHAR(20), n INT);",
    ));
    let port = free_port();
    let titles = "name: titles\ntable: shop.items\ncolumns: [id, title]\nsink:\n  kafka:\n    topic: titles\n";
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("items", P), ("titles", titles)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.spawn();
    block_on(db.exec("INSERT INTO shop.items VALUES (1, 'one', 1)"));
    // The daemon is streaming before the column goes.
    assert_eq!(
        kafka.read("titles", 1, Duration::from_secs(60)).len(),
        1,
        "{}",
        d.log()
    );
    block_on(db.exec(
        "ALTER TABLE shop.items DROP COLUMN title; INSERT INTO shop.items VALUES (2, 2), (3, 3);",
    ));
    let items = kafka.read("items", 3, Duration::from_secs(60));
    let after: Vec<_> = items.iter().map(|r| r.json()["after"].clone()).collect();
    assert_eq!(
        after,
        vec![
            json!({"id": 1, "title": "one", "n": 1}),
            json!({"id": 2, "n": 2}),
            json!({"id": 3, "n": 3})
        ],
        "the other pipeline goes on: {}",
        d.log()
    );
    let t = kafka.read("titles", 2, Duration::from_secs(3));
    assert_eq!(t.len(), 1, "titles stopped after its first row");
    d.assert_running();
    let log = d.log();
    assert!(
        log.contains("pipeline stopped; the other pipelines go on")
            && log.contains("pipeline `titles`: column `title` is not in table `shop.items`"),
        "{log}"
    );
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"titles\"}"),
        Some("1")
    );
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"items\"}"),
        Some("0")
    );
    assert_eq!(d.terminate(), 0);
}

/// Sends `signal` (`STOP`, `CONT`) to the daemon's process.
fn signal(d: &Daemon, signal: &str) {
    let pid = d.child.as_ref().map(|c| c.id()).expect("a running daemon");
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

#[test]
fn a_ddl_read_while_behind_a_later_one_is_not_given_its_definition() {
    // The daemon streams, then stalls (SIGSTOP) while a column turns from LONGTEXT to JSON
    // two DDLs later: when it reads the first DDL, information_schema already shows the
    // second's result. A row written between them held text, not JSON: it must come as the
    // text it was (typed from the binlog, said once), not stop the pipeline as invalid JSON.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec("CREATE DATABASE s; CREATE TABLE s.r (id INT PRIMARY KEY, a LONGTEXT);"));
    let p = "name: r\ntable: s.r\nsink:\n  kafka:\n    topic: r\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("r", p)]);
    d.spawn();
    let mut tail = kafka.tail("r");
    block_on(db.exec("INSERT INTO s.r VALUES (1, '[1]')"));
    wait_records(&mut d, &mut tail, 1, 30);
    signal(&d, "STOP");
    block_on(db.exec(
        "ALTER TABLE s.r ADD COLUMN z INT;
         INSERT INTO s.r VALUES (2, 'plain text', 2);
         UPDATE s.r SET a = '{\"n\": 2}' WHERE id = 2;
         ALTER TABLE s.r MODIFY a JSON;
         INSERT INTO s.r VALUES (3, '{\"n\": 3}', 3);",
    ));
    signal(&d, "CONT");
    wait_records(&mut d, &mut tail, 4, 60);
    let after: Vec<_> = tail
        .records
        .iter()
        .map(|r| r.json()["after"].clone())
        .collect();
    assert_eq!(
        after,
        vec![
            json!({"id": 1, "a": "[1]"}),
            json!({"id": 2, "a": "plain text", "z": 2}),
            json!({"id": 2, "a": "{\"n\": 2}", "z": 2}),
            json!({"id": 3, "a": {"n": 3}, "z": 3}),
        ]
    );
    let log = d.log();
    assert!(
        log.contains("the schema history cannot tell this table's definition here")
            && !log.contains("pipeline stopped"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_ddl_racing_a_restart_never_types_a_row_by_a_definition_it_was_not_written_under() {
    // ALTERs that turn a column into JSON and back run without pause while the daemon is
    // stopped and started: at each start the definitions it reads may be newer than the
    // binlog end it read. A row written while the column was LONGTEXT is text, always (a row
    // between two DDLs of the backlog may come as text too: documented, warned); never a
    // JSON object.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.tg (id INT AUTO_INCREMENT PRIMARY KEY, j LONGTEXT, kind VARCHAR(8));",
    ));
    let p = "name: tg\ntable: shop.tg\nsink:\n  kafka:\n    topic: tg\n";
    let mut d = Daemon::new(&db, Some(&kafka), &[("tg", p)]);
    d.spawn();
    wait_log(&mut d, "reading the binlog", 1, 60);
    let writer = BackgroundWriter::start(&db, Duration::ZERO, |n| {
        let (ty, kind) = if n % 2 == 1 {
            ("JSON", "json")
        } else {
            ("LONGTEXT", "text")
        };
        format!(
            "ALTER TABLE shop.tg MODIFY j {ty}; INSERT INTO shop.tg (j, kind) VALUES ('{{\"x\": 1}}', '{kind}')"
        )
    });
    for start in 2..=10 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(d.terminate(), 0);
        std::thread::sleep(Duration::from_millis(300));
        d.spawn();
        wait_log(&mut d, "reading the binlog", start, 60);
    }
    let writes = writer.stop();
    assert!(writes > 20, "{writes} statements");
    let rows: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM shop.tg"));
    let recs = kafka.read("tg", rows[0] as usize, Duration::from_secs(60));
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        let after = &r.json()["after"];
        seen.insert(after["id"].as_i64().unwrap());
        match after["kind"].as_str() {
            Some("text") => assert_eq!(after["j"], json!("{\"x\": 1}"), "{after}\n{}", d.log()),
            _ => assert!(
                after["j"] == json!({"x": 1}) || after["j"] == json!("{\"x\": 1}"),
                "{after}"
            ),
        }
    }
    assert_eq!(seen.len() as i64, rows[0], "every row");
    assert_eq!(d.terminate(), 0);
}

/// Without column metadata in the binlog (MariaDB's default `NO_LOG`, and `MINIMAL`), rows
/// read as with FULL: the columns the server adds for itself (a long UNIQUE key's hash, a
/// system-versioned table's implicit period), which information_schema does not list, are
/// told by their place and type; binary, INET and UUID columns by the schema's lack of a
/// character set; ENUM and SET labels keep their case.
#[test]
fn without_column_metadata_hidden_columns_binary_values_and_labels_read_as_with_full() {
    for metadata in [
        "--binlog-row-metadata=NO_LOG",
        "--binlog-row-metadata=MINIMAL",
    ] {
        let db = MariaDb::start_with(&[metadata]);
        let kafka = Kafka::start();
        block_on(db.exec(
            "CREATE DATABASE r;
             CREATE TABLE r.lu (id INT PRIMARY KEY, t TEXT, UNIQUE(t));
             CREATE TABLE r.sv (id INT PRIMARY KEY, v VARCHAR(10)) WITH SYSTEM VERSIONING;
             CREATE TABLE r.both (id INT PRIMARY KEY, t TEXT, inv INT INVISIBLE, UNIQUE(t)) WITH SYSTEM VERSIONING;
             CREATE TABLE r.bin (id INT PRIMARY KEY, bn BINARY(4), vb VARBINARY(10), bl BLOB,
               cb VARBINARY(300) COMPRESSED, i4 INET4, i6 INET6, u UUID);
             CREATE TABLE r.lab (id INT PRIMARY KEY, e ENUM('Yes','No'), s SET('Red','GREEN'));",
        ));
        let tables = ["lu", "sv", "both", "bin", "lab"];
        let files: Vec<(String, String)> = tables
            .iter()
            .map(|t| {
                let yaml = format!("name: {t}\ntable: r.{t}\nsink:\n  kafka:\n    topic: {t}\n");
                (t.to_string(), yaml)
            })
            .collect();
        let mut d = Daemon::new(&db, Some(&kafka), &pipeline_refs(&files));
        d.spawn();
        wait_log(&mut d, "reading the binlog", 1, 60);
        block_on(db.exec(
            "INSERT INTO r.lu VALUES (1, 'x'); UPDATE r.lu SET t = 'y';
             INSERT INTO r.sv VALUES (1, 'a'); UPDATE r.sv SET v = 'b'; DELETE FROM r.sv;
             INSERT INTO r.both (id, t, inv) VALUES (1, 'z', 5);
             INSERT INTO r.bin VALUES (1, 'ab', X'00FF', X'DEADBEEF', X'0102', '10.0.0.1',
               '::ffff:1.2.3.1', '123e4567-e89b-12d3-a456-426655440001');
             INSERT INTO r.lab VALUES (2, 'Yes', 'Red,GREEN');",
        ));
        let read = |t: &str, n: usize| -> Vec<(serde_json::Value, serde_json::Value)> {
            kafka
                .read(t, n, Duration::from_secs(30))
                .iter()
                .map(|r| {
                    let v = r.json();
                    let img = if v["op"] == "d" {
                        v["before"].clone()
                    } else {
                        v["after"].clone()
                    };
                    (v["op"].clone(), img)
                })
                .collect()
        };
        let why = || format!("{metadata}:\n{}", d.log());
        assert_eq!(
            read("lu", 2),
            [
                (json!("c"), json!({"id": 1, "t": "x"})),
                (json!("u"), json!({"id": 1, "t": "y"}))
            ],
            "{}",
            why()
        );
        assert_eq!(
            read("sv", 3),
            [
                (json!("c"), json!({"id": 1, "v": "a"})),
                (json!("u"), json!({"id": 1, "v": "b"})),
                (json!("d"), json!({"id": 1, "v": "b"})),
            ],
            "{}",
            why()
        );
        assert_eq!(
            read("both", 1),
            [(json!("c"), json!({"id": 1, "t": "z", "inv": 5}))],
            "{}",
            why()
        );
        assert_eq!(
            read("bin", 1),
            [(
                json!("c"),
                json!({"id": 1, "bn": "YWIAAA==", "vb": "AP8=", "bl": "3q2+7w==", "cb": "AQI=",
                    "i4": "10.0.0.1", "i6": "::ffff:1.2.3.1", "u": "123e4567-e89b-12d3-a456-426655440001"})
            )],
            "{}",
            why()
        );
        assert_eq!(
            read("lab", 1),
            [(json!("c"), json!({"id": 2, "e": "Yes", "s": "Red,GREEN"}))],
            "{}",
            why()
        );
        assert!(!d.log().contains("replaced by U+FFFD"), "{}", why());
        assert_eq!(d.terminate(), 0);
    }
}
