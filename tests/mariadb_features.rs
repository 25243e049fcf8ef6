//! MariaDB specifics on a real server: compressed binlog events (log_bin_compress), the
//! checkpoint kept in a MySQL table, and the JSONL sink.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::json;

/// A pipeline of `shop.notes` into `notes.jsonl`.
const NOTES: &str = "name: notes\ntable: shop.notes\nsink:\n  jsonl:\n    path: notes.jsonl\n";

/// The records of the daemon's JSON-lines sink `file` once there are `n` (within `secs`).
fn jsonl_lines(d: &mut Daemon, file: &str, n: usize, secs: u64) -> Vec<serde_json::Value> {
    let out = d.dir.path().join(file);
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(secs), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn compressed_events_mysql_checkpoint_and_jsonl_sink() {
    let db = MariaDb::start_with(&["--log-bin-compress=ON", "--log-bin-compress-min-len=10"]);
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE DATABASE cdc_state;
         CREATE TABLE shop.notes (id INT PRIMARY KEY, body TEXT, n INT);
         GRANT CREATE, INSERT, UPDATE, SELECT ON cdc_state.* TO 'cdc'@'127.0.0.1';",
    ));
    let mut d = Daemon::with_config(&db, None, &[("notes", NOTES)], "");
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        "  store:\n    file:\n      path: state/checkpoint.json\n",
        "  store:\n    mysql:\n      table: cdc_state.checkpoints\n      name: notes-daemon\n",
    );
    std::fs::write(d.config(), cfg).unwrap();
    d.spawn();
    let long = "compress me ".repeat(50);
    block_on(db.exec(&format!(
        "INSERT INTO shop.notes VALUES (1, '{long}', 1), (2, 'short but over ten bytes', 2);
         UPDATE shop.notes SET n = n + 10;
         DELETE FROM shop.notes WHERE id = 2;"
    )));
    let lines = jsonl_lines(&mut d, "notes.jsonl", 5, 30);
    let proj: Vec<_> = lines
        .iter()
        .map(|l| json!([l["op"], l["before"], l["after"]]))
        .collect();
    assert_eq!(
        proj,
        vec![
            json!(["c", null, {"id": 1, "body": long, "n": 1}]),
            json!(["c", null, {"id": 2, "body": "short but over ten bytes", "n": 2}]),
            json!(["u", {"id": 1, "body": long, "n": 1}, {"id": 1, "body": long, "n": 11}]),
            json!(["u", {"id": 2, "body": "short but over ten bytes", "n": 2}, {"id": 2, "body": "short but over ten bytes", "n": 12}]),
            json!(["d", {"id": 2, "body": "short but over ten bytes", "n": 12}, null]),
        ]
    );
    // The events really were compressed: the server's own decoder names them.
    let events: Vec<String> = block_on(async {
        let mut c = db.conn().await;
        let rows: Vec<mysql_async::Row> = c
            .query("SHOW BINLOG EVENTS IN 'binlog.000001'")
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| r.get::<String, _>(2).unwrap())
            .collect()
    });
    assert!(
        events.iter().any(|e| e.contains("Write_rows_compressed")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("Update_rows_compressed")),
        "{events:?}"
    );

    assert_eq!(d.terminate(), 0, "{}", d.log());
    let (name, pos): (String, String) = block_on(async {
        let mut c = db.conn().await;
        c.query_first("SELECT name, position FROM cdc_state.checkpoints")
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(name, "notes-daemon");
    let doc: serde_json::Value = serde_json::from_str(&pos).unwrap();
    assert_eq!(doc["version"], 2);
    let p = &doc["position"];
    assert_eq!(p["file"], "binlog.000001");
    assert_eq!(p["event"], 0);
    assert_eq!(p["row"], 0);
    assert!(p["pos"].as_u64().unwrap() > lines[4]["source"]["pos"].as_u64().unwrap());
}

#[test]
fn an_encrypted_binlog_and_an_event_over_the_servers_max_allowed_packet_stream_on() {
    // `encrypt_binlog=ON`: a replica connection receives a START_ENCRYPTION event, then the
    // events decrypted. A row of an unread table logged as an ~18 MB event, over the server's
    // `max_allowed_packet` (16 MiB): the stream reads it as a replica does (up to 1 GiB) and
    // the read table's rows after it come out.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("keys.txt");
    std::fs::write(
        &key_file,
        "1;b0fa7d318539e337e6689652ba760baf5dc17e4dbc1733ffdd4cd122e0e2df90\n",
    )
    .unwrap();
    let key_arg = format!("--file-key-management-filename={}", key_file.display());
    let db = MariaDb::start_with(&[
        "--plugin-load-add=file_key_management",
        &key_arg,
        "--encrypt-binlog=ON",
        "--max-allowed-packet=16M",
    ]);
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.notes (id INT PRIMARY KEY, body TEXT);
         CREATE TABLE shop.blobs (id INT PRIMARY KEY, a LONGBLOB, b LONGBLOB);",
    ));
    let mut d = Daemon::with_config(&db, None, &[("notes", NOTES)], "");
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.notes VALUES (1, 'before');
         INSERT INTO shop.blobs VALUES (1, REPEAT('a', 9000000), REPEAT('b', 9000000));
         INSERT INTO shop.notes VALUES (2, 'after');",
    ));
    let lines = jsonl_lines(&mut d, "notes.jsonl", 2, 60);
    let proj: Vec<_> = lines.iter().map(|l| json!([l["op"], l["after"]])).collect();
    assert_eq!(
        proj,
        [
            json!(["c", {"id": 1, "body": "before"}]),
            json!(["c", {"id": 2, "body": "after"}]),
        ]
    );
    let log = d.log();
    assert!(!log.contains("reconnecting"), "{log}");
    assert_eq!(d.terminate(), 0);
}
