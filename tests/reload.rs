//! SIGHUP reloads the pipelines while rows keep coming: added, removed and changed pipelines
//! take effect without restarting the binlog stream and without losing or repeating rows.

mod common;

use std::time::Duration;

use common::*;

const A: &str = "name: a\ntable: shop.t1\nsink:\n  kafka:\n    topic: a\n";
const B1: &str = "name: b\ntable: shop.t1\ncolumns: [id]\nsink:\n  kafka:\n    topic: b\n";
const B2: &str = "name: b\ntable: shop.t1\ncolumns: [id, v]\nsink:\n  kafka:\n    topic: b\n";
const C: &str = "name: c\ntable: shop.t2\nsink:\n  kafka:\n    topic: c\n";

fn hup(d: &Daemon) {
    let pid = d.child.as_ref().unwrap().id();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn a_reload_adds_removes_and_changes_pipelines_without_losing_or_repeating_rows() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.t1 (id INT PRIMARY KEY, v INT);
         CREATE TABLE shop.t2 (id INT PRIMARY KEY, w INT);",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("a", A), ("b", B1)]);
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    // A writer inserting into t1 the whole time, one row per statement.
    let writer = BackgroundWriter::start(&db, Duration::from_millis(2), |n| {
        format!("INSERT INTO shop.t1 VALUES ({n}, {n})")
    });
    assert!(!kafka.read("b", 50, Duration::from_secs(30)).is_empty());
    // Change b, remove a, add c.
    let dir = d.dir.path().join("pipelines");
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    std::fs::write(dir.join("b.yaml"), B2).unwrap();
    std::fs::write(dir.join("c.yaml"), C).unwrap();
    hup(&d);
    wait_log(&mut d, "pipelines reloaded", 1, 60);
    block_on(db.exec("INSERT INTO shop.t2 VALUES (1, 10), (2, 20)"));
    std::thread::sleep(Duration::from_millis(500));
    let last = writer.stop() as i64;

    // A broken file: the reload is refused, nothing changes.
    std::fs::write(
        dir.join("c.yaml"),
        "name: c\ntable: shop.t2\nsink: {kafka: {topic: c}}\nbogus: 1\n",
    )
    .unwrap();
    hup(&d);
    wait_log(&mut d, "reload refused", 1, 60);
    block_on(
        db.exec("INSERT INTO shop.t1 VALUES (1000000, 7); INSERT INTO shop.t2 VALUES (3, 30)"),
    );

    let b = kafka.read("b", last as usize + 1, Duration::from_secs(60));
    let ids: Vec<i64> = b
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    let mut want: Vec<i64> = (1..=last).collect();
    want.push(1_000_000);
    assert_eq!(ids, want, "b: every row once, in order, across the swap");
    // One switch point: before it b carries `id` only, after it `id` and `v`.
    let has_v: Vec<bool> = b
        .iter()
        .map(|r| r.json()["after"].get("v").is_some())
        .collect();
    let switch = has_v
        .iter()
        .position(|x| *x)
        .expect("the new definition took effect");
    assert!(switch > 0, "the old definition ran first");
    assert!(
        has_v[switch..].iter().all(|x| *x),
        "and never again after the swap"
    );
    // a ends at the swap: a gapless prefix of the rows.
    let a: Vec<i64> = kafka
        .read("a", usize::MAX, Duration::from_secs(2))
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(a, (1..=a.len() as i64).collect::<Vec<_>>());
    assert!(
        a.len() >= switch && a.len() < last as usize,
        "a stopped at the swap ({} of {last})",
        a.len()
    );
    // c was added: its table's rows arrive (and the refused reload left it running).
    let c: Vec<i64> = kafka
        .read("c", 3, Duration::from_secs(30))
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(c, vec![1, 2, 3]);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("pipelines reloaded"))
        .unwrap();
    assert!(line.contains("a, b") && line.ends_with("b, c"), "{line}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_table_a_reload_adds_is_read_with_its_definition_though_its_rows_passed_before() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.t1 (id INT PRIMARY KEY, v INT);
         CREATE TABLE shop.t3 (id INT PRIMARY KEY, u UUID, a INET6, j JSON, n INT);",
    ));
    let mut d = Daemon::new(&db, Some(&kafka), &[("a", A)]);
    d.spawn();
    // Rows of t3 while no pipeline reads it: its table id is mapped, and left unread.
    block_on(db.exec(
        "INSERT INTO shop.t3 VALUES (1, '123e4567-e89b-12d3-a456-426655440000', '2001:db8::1', '{\"k\": [1, 2.50]}', 1);
         INSERT INTO shop.t1 VALUES (1, 1);",
    ));
    assert_eq!(kafka.read("a", 1, Duration::from_secs(30)).len(), 1);
    let t3 = "name: t3\ntable: shop.t3\nsink:\n  kafka:\n    topic: t3\n";
    std::fs::write(d.dir.path().join("pipelines").join("t3.yaml"), t3).unwrap();
    hup(&d);
    wait_log(&mut d, "pipelines reloaded", 1, 60);
    // The same table id, its definition from the schema history (not the binlog's bytes).
    block_on(db.exec(
        "INSERT INTO shop.t3 VALUES (2, '00000000-0000-0000-0000-00000000000a', '::ffff:10.0.0.1', '{\"x\": null}', 2);
         UPDATE shop.t3 SET n = 10 WHERE id = 1;
         INSERT INTO shop.t1 VALUES (2, 2);",
    ));
    let got: Vec<serde_json::Value> = kafka
        .read("t3", 2, Duration::from_secs(30))
        .iter()
        .map(|r| {
            let v = r.json();
            serde_json::json!([v["op"], v["after"]])
        })
        .collect();
    assert_eq!(
        got,
        [
            serde_json::json!(["c", {"id": 2, "u": "00000000-0000-0000-0000-00000000000a", "a": "::ffff:10.0.0.1", "j": {"x": null}, "n": 2}]),
            serde_json::json!(["u", {"id": 1, "u": "123e4567-e89b-12d3-a456-426655440000", "a": "2001:db8::1", "j": {"k": [1, 2.50]}, "n": 10}]),
        ]
    );
    // The stream opened again where it was: the other pipeline's rows once each.
    let a: Vec<i64> = kafka
        .read("a", 3, Duration::from_secs(5))
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(a, [1, 2]);
    assert_eq!(d.terminate(), 0);
}
