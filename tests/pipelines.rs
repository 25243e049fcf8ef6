//! Inserts, updates and deletes across pipelines: exact envelopes, topics and keys.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ORDERS_ALL: &str = "name: orders_all\ntable: shop.orders\nsink:\n  kafka:\n    topic: \"cdc.{db}.{table}\"\n    tombstones: true\n";
const ORDERS_PAID: &str = "name: orders_paid\ntable: shop.orders\ncolumns: [id, amount, status]\noperations: [insert, update]\nfilter: \"status = 'paid' AND amount > 5\"\nsink:\n  kafka:\n    topic: \"t.{pipeline}\"\n";
const CUSTOMERS: &str = "name: customers\ntable: shop.customers\ncolumns: [name, email]\nkey: [email]\nsink:\n  kafka:\n    topic: cdc.customers\n";

/// The envelope the daemon must produce, with `source` position fields taken from `actual`
/// (they depend on the server), serialized the same way, so the comparison is byte for byte.
/// `envelope` (JSON text) with one more member at its end.
fn with_member(envelope: String, name: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    v.as_object_mut().unwrap().insert(name.into(), value);
    serde_json::to_string(&v).unwrap()
}

fn expect(
    actual: &Record,
    pipeline: &str,
    table: &str,
    op: &str,
    before: serde_json::Value,
    after: serde_json::Value,
    row: u64,
) -> String {
    let a = actual.json();
    let s = &a["source"];
    serde_json::to_string(&json!({
        "op": op,
        "before": before,
        "after": after,
        "source": {
            "pipeline": pipeline,
            "server_id": 1,
            "db": "shop",
            "table": table,
            "gtid": s["gtid"],
            "file": s["file"],
            "pos": s["pos"],
            "event": 0,
            "row": row,
            "ts_ms": s["ts_ms"],
        },
        "enrichment": {},
    }))
    .unwrap()
}

#[test]
fn insert_update_delete_across_pipelines() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id INT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(10,2), status ENUM('new','paid','void'));
         CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100));
         CREATE TABLE shop.ignored (id INT PRIMARY KEY, x INT);",
    ));
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[
            ("orders_all", ORDERS_ALL),
            ("orders_paid", ORDERS_PAID),
            ("customers", CUSTOMERS),
        ],
    );
    let (code, out, err) = d.check();
    assert_eq!(code, 0, "check failed: {out}{err}");
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.orders VALUES (1, 'ann', 10.00, 'new'), (2, 'bob', 20.50, 'paid');
         INSERT INTO shop.ignored VALUES (1, 1);
         UPDATE shop.orders SET status = 'paid' WHERE id = 1;
         DELETE FROM shop.orders WHERE id = 2;
         INSERT INTO shop.customers VALUES (7, 'Zoë', 'zoe@example.com');
         UPDATE shop.customers SET name = 'Zoe' WHERE id = 7;",
    ));

    let all = kafka.read("cdc.shop.orders", 5, Duration::from_secs(30));
    d.assert_running();
    assert_eq!(all.len(), 5, "{all:?}\n{}", d.log());
    let o1 = json!({"id": 1, "customer": "ann", "amount": "10.00", "status": "new"});
    let o1p = json!({"id": 1, "customer": "ann", "amount": "10.00", "status": "paid"});
    let o2 = json!({"id": 2, "customer": "bob", "amount": "20.50", "status": "paid"});
    let n = serde_json::Value::Null;
    assert_eq!(all[0].key.as_deref(), Some(r#"{"id":1}"#));
    assert_eq!(
        all[0].value.as_deref().unwrap(),
        expect(
            &all[0],
            "orders_all",
            "orders",
            "c",
            n.clone(),
            o1.clone(),
            0
        )
    );
    assert_eq!(all[1].key.as_deref(), Some(r#"{"id":2}"#));
    assert_eq!(
        all[1].value.as_deref().unwrap(),
        expect(
            &all[1],
            "orders_all",
            "orders",
            "c",
            n.clone(),
            o2.clone(),
            1
        )
    );
    assert_eq!(
        all[2].value.as_deref().unwrap(),
        expect(
            &all[2],
            "orders_all",
            "orders",
            "u",
            o1.clone(),
            o1p.clone(),
            0
        )
    );
    assert_eq!(all[3].key.as_deref(), Some(r#"{"id":2}"#));
    assert_eq!(
        all[3].value.as_deref().unwrap(),
        expect(
            &all[3],
            "orders_all",
            "orders",
            "d",
            o2.clone(),
            n.clone(),
            0
        )
    );
    // The tombstone after the delete: same key, no value.
    assert_eq!(
        all[4],
        Record {
            key: Some(r#"{"id":2}"#.into()),
            value: None,
            offset: 4
        }
    );

    // Both rows of the first INSERT share one transaction: same position and GTID, rows 0 and 1.
    let (s0, s1, s2) = (
        &all[0].json()["source"],
        &all[1].json()["source"],
        &all[2].json()["source"],
    );
    assert_eq!(
        (s0["pos"].clone(), s0["gtid"].clone()),
        (s1["pos"].clone(), s1["gtid"].clone())
    );
    assert!(s2["pos"].as_u64() > s0["pos"].as_u64());
    let g = |s: &serde_json::Value| {
        s["gtid"]
            .as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(s0["gtid"].as_str().unwrap().starts_with("0-1-"));
    assert!(g(s2) > g(s0));

    // Picked columns, filter and operations.
    let paid = kafka.read("t.orders_paid", 3, Duration::from_secs(5));
    assert_eq!(paid.len(), 2, "{paid:?}");
    assert_eq!(paid[0].key.as_deref(), Some(r#"{"id":2}"#));
    assert_eq!(
        paid[0].value.as_deref().unwrap(),
        expect(
            &paid[0],
            "orders_paid",
            "orders",
            "c",
            n.clone(),
            json!({"id": 2, "amount": "20.50", "status": "paid"}),
            1
        )
    );
    // Order 1 came into the filter with this update: marked so.
    assert_eq!(
        paid[1].value.as_deref().unwrap(),
        with_member(
            expect(
                &paid[1],
                "orders_paid",
                "orders",
                "u",
                json!({"id": 1, "amount": "10.00", "status": "new"}),
                json!({"id": 1, "amount": "10.00", "status": "paid"}),
                0
            ),
            "filter_change",
            json!("entered")
        )
    );

    // A configured key that is not the primary key.
    let cust = kafka.read("cdc.customers", 2, Duration::from_secs(10));
    assert_eq!(cust.len(), 2);
    assert_eq!(
        cust[0].key.as_deref(),
        Some(r#"{"email":"zoe@example.com"}"#)
    );
    assert_eq!(
        cust[0].value.as_deref().unwrap(),
        expect(
            &cust[0],
            "customers",
            "customers",
            "c",
            n.clone(),
            json!({"name": "Zoë", "email": "zoe@example.com"}),
            0
        )
    );
    assert_eq!(
        cust[1].value.as_deref().unwrap(),
        expect(
            &cust[1],
            "customers",
            "customers",
            "u",
            json!({"name": "Zoë", "email": "zoe@example.com"}),
            json!({"name": "Zoe", "email": "zoe@example.com"}),
            0
        )
    );

    // SIGTERM: exit 0 with a checkpoint past the last transaction.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.terminate(), 0, "{}", d.log());
    let cp = d.checkpoint().expect("a checkpoint");
    assert_eq!(cp["position"]["row"], 0);
    assert!(
        cp["position"]["pos"].as_u64().unwrap() > cust[1].json()["source"]["pos"].as_u64().unwrap()
    );
}
