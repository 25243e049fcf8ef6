//! A record larger than the Kafka producer accepts (`message.max.bytes`, 1,000,000 bytes by
//! default): each `on_oversize` policy, with the daemon going on.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn a_3_mb_row_under_default_settings_by_each_policy() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t; CREATE TABLE t.big (id INT PRIMARY KEY, title VARCHAR(20), body LONGTEXT);",
    ));
    let pipe = |name: &str, extra: &str| {
        format!("name: {name}\ntable: t.big\nsink:\n  kafka:\n    topic: {name}\n{extra}")
    };
    let default = pipe("dl", "    dead_letter_topic: dl.dead\n");
    let fail = pipe("fail", "    on_oversize: fail\n");
    let cut = pipe("cut", "    on_oversize: truncate\n");
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("dl", &default), ("fail", &fail), ("cut", &cut)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.big VALUES (1, 'small', 'x');
         INSERT INTO t.big VALUES (2, 'big', REPEAT('0123456789', 300000));
         INSERT INTO t.big VALUES (3, 'small again', 'y');",
    ));
    // dead_letter (the default): a notice in the dead letters, the pipeline goes on.
    let dl = kafka.read("dl", 2, Duration::from_secs(30));
    let ids: Vec<_> = dl.iter().map(|r| r.json()["after"]["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(3)], "{}", d.log());
    let dead = kafka.read("dl.dead", 1, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some(r#"{"id":2}"#));
    let notice = dead[0].json();
    assert_eq!(notice["op"], "c");
    assert_eq!(notice["after"], json!(null));
    assert_eq!(notice["error"]["kind"], "oversize");
    // The limit: message.max.bytes less a margin for the record's framing.
    assert_eq!(notice["error"]["limit"], 1_000_000 - 512);
    assert!(notice["error"]["bytes"].as_u64().unwrap() > 3_000_000);
    assert!(notice["source"]["pos"].as_u64().is_some());

    // truncate: the record arrives with its largest value cut, and says so.
    let cut = kafka.read("cut", 3, Duration::from_secs(30));
    assert_eq!(cut.len(), 3);
    let big = cut[1].json();
    assert_eq!(big["after"]["id"], 2);
    assert_eq!(big["after"]["title"], "big");
    let body = big["after"]["body"].as_str().unwrap();
    assert!(
        body.len() > 900_000 && body.len() < 999_488,
        "{}",
        body.len()
    );
    assert!("0123456789".repeat(300_000).starts_with(body));
    assert_eq!(big["oversize"]["truncated"], json!(["after.body"]));
    assert_eq!(big["oversize"]["limit"], 1_000_000 - 512);
    assert!(cut[1].value.as_ref().unwrap().len() + cut[1].key.as_ref().unwrap().len() <= 999_488);
    assert_eq!(cut[2].json()["after"]["id"], 3);

    // fail: that pipeline stops at the record, naming both settings; the others went on.
    let failed = kafka.read("fail", 1, Duration::from_secs(10));
    assert_eq!(failed.len(), 1);
    wait_log(
        &mut d,
        "pipeline stopped: a record is larger than the Kafka producer accepts",
        1,
        10,
    );
    assert!(d.log().contains("raise the producer's message.max.bytes (kafka.properties) and the topic's max.message.bytes"));
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"fail\"}"),
        Some("1")
    );
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_oversize_records_total{pipeline=\"dl\"}"
        ),
        Some("1")
    );
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"dl\"}"),
        Some("0")
    );
    d.assert_running();
    assert_eq!(d.terminate(), 0);
    assert_eq!(kafka.read("fail", 3, Duration::from_secs(2)).len(), 1);
}
