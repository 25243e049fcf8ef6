//! MariaDB specifics on a real server: compressed binlog events (log_bin_compress), the
//! checkpoint kept in a MySQL table, and the JSONL sink.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::json;

#[test]
fn compressed_events_mysql_checkpoint_and_jsonl_sink() {
    let db = MariaDb::start_with(&["--log-bin-compress=ON", "--log-bin-compress-min-len=10"]);
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE DATABASE cdc_state;
         CREATE TABLE shop.notes (id INT PRIMARY KEY, body TEXT, n INT);
         GRANT CREATE, INSERT, UPDATE, SELECT ON cdc_state.* TO 'cdc'@'127.0.0.1';",
    ));
    let mut d = Daemon::with_config(
        &db,
        None,
        &[(
            "notes",
            "name: notes\ntable: shop.notes\nsink:\n  jsonl:\n    path: notes.jsonl\n",
        )],
        "",
    );
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
    let out = d.dir.path().join("notes.jsonl");
    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 5 {
            break lines;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
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
