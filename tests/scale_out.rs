//! Scale-out on Kafka: `run --role source` publishes every read table's rows to its change
//! topic; `run --role worker` processes, in one consumer group, run the pipelines on them.
//! Against a spawned MariaDB, two tansu brokers, the AWS stand-in and the real binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const PARTITIONS: i32 = 3;

/// The two tables the pipelines read.
const SHOP: &str = "CREATE DATABASE shop;
     CREATE TABLE shop.customers (id INT PRIMARY KEY, email VARCHAR(60) NOT NULL UNIQUE, name VARCHAR(40));
     CREATE TABLE shop.reviews (id INT PRIMARY KEY, stars TINYINT, body TEXT, doc JSON,
       price DECIMAL(10,2), score DOUBLE, tag ENUM('a','b'), seen DATETIME(3), raw VARBINARY(8))";

fn pipelines(standin: &AwsStandin) -> Vec<(String, String)> {
    vec![
        ("reviews_all".into(), "name: reviews_all\ntable: shop.reviews\nsink:\n  kafka:\n    topic: \"{pipeline}\"\n    tombstones: true\n".into()),
        ("reviews_good".into(), "name: reviews_good\ntable: shop.reviews\ncolumns: [id, body, price]\nfilter: \"stars >= 4\"\nsink:\n  kafka:\n    topic: \"{pipeline}\"\n".into()),
        ("customers".into(), "name: customers\ntable: shop.customers\nkey: [email]\nsink:\n  kafka:\n    topic: \"{pipeline}\"\n".into()),
        ("reviews_mood".into(), format!("name: reviews_mood\ntable: shop.reviews\ncolumns: [id, body]\nenrichment:\n  comprehend:\n    operation: sentiment\n    text: body\n  endpoint_url: {}\n  max_wait_ms: 20\nsink:\n  kafka:\n    topic: \"{{pipeline}}\"\n", standin.url())),
    ]
}

const OUTPUTS: [&str; 4] = ["reviews_all", "reviews_good", "customers", "reviews_mood"];

/// A daemon of `role` on `kafka`, topics of [`PARTITIONS`] partitions. The producers send one
/// record a batch: tansu 0.6 answers a fetch from inside a record batch with the batches
/// after it (`offsets.split_off(&offset)` in its storage's `fetch`; Kafka returns the batch
/// holding the offset), so a worker resuming from a committed offset inside a batch would
/// skip the rest of it — the test broker's fault, not the worker's.
fn daemon(db: &MariaDb, kafka: &Kafka, files: &[(String, String)], role: &str) -> Daemon {
    daemon_with(db, kafka, files, role, "")
}

/// As [`daemon`], with more of the daemon file (`metrics:`).
fn daemon_with(
    db: &MariaDb,
    kafka: &Kafka,
    files: &[(String, String)],
    role: &str,
    extra: &str,
) -> Daemon {
    let cfg = format!(
        "kafka:\n  brokers: {}\n  topic_partitions: {PARTITIONS}\n  properties:\n    linger.ms: \"2\"\n    batch.num.messages: \"1\"\nscale_out:\n  group_id: shop-workers\n{extra}",
        kafka.brokers()
    );
    let mut d = Daemon::with_config(db, None, &pipeline_refs(files), &cfg);
    if role == "source" {
        // The source role keeps its checkpoint in the database (a standby finds it there).
        let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
            "  store:\n    file:\n      path: state/checkpoint.json\n",
            "  store:\n    mysql:\n      table: cdc_state.checkpoints\n      name: shop\n",
        );
        std::fs::write(d.config(), cfg).unwrap();
    }
    d.env = AwsStandin::env();
    d.spawn_with(&["--role", role]);
    d
}

/// A server with the database the source role's checkpoint table goes in.
fn server() -> MariaDb {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE cdc_state;
         GRANT CREATE, INSERT, UPDATE, SELECT ON cdc_state.* TO 'cdc'@'127.0.0.1';",
    ));
    db
}

/// Every record of `topic` (all partitions) once `n` are there and nothing more comes for 2 s.
fn read_all(kafka: &Kafka, topic: &str, n: usize, secs: u64) -> Vec<Record> {
    let mut t = kafka.tail_all(topic, PARTITIONS);
    let start = Instant::now();
    while t.records.len() < n && start.elapsed() < Duration::from_secs(secs) {
        t.poll(Duration::from_millis(200));
    }
    t.drain(Duration::from_secs(2));
    t.records
}

/// Per Kafka key, the values in the order they came (a key's records share a partition).
fn by_key(records: &[Record]) -> BTreeMap<String, Vec<Option<String>>> {
    let mut m: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for r in records {
        m.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.value.clone());
    }
    m
}

/// Each key's records without the repeats of a record seen before (a record carries its binlog
/// position: two equal values are one record sent twice), in their first order.
fn first_of_each(
    m: BTreeMap<String, Vec<Option<String>>>,
) -> BTreeMap<String, Vec<Option<String>>> {
    m.into_iter()
        .map(|(k, v)| {
            let mut seen = std::collections::HashSet::new();
            let firsts = v.into_iter().filter(|r| seen.insert(r.clone())).collect();
            (k, firsts)
        })
        .collect()
}

/// Inserts, updates (into and out of a filter), key changes of the primary key and of a
/// pipeline's own key, deletes: every kind of row change a worker must reproduce.
async fn workload(db: &MariaDb) {
    db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.reviews (id INT PRIMARY KEY, stars TINYINT, body TEXT, doc JSON,
           price DECIMAL(10,2), score DOUBLE, tag ENUM('a','b'), seen DATETIME(3), raw VARBINARY(8));
         CREATE TABLE shop.customers (id INT PRIMARY KEY, email VARCHAR(60) NOT NULL UNIQUE, name VARCHAR(40))",
    )
    .await;
    db.exec(
        "INSERT INTO shop.reviews SELECT seq, seq % 6, CONCAT(IF(seq % 3 = 0, 'bad ', 'good '), 'review ', seq),
           CONCAT('{\"n\": ', seq, ', \"p\": 1.50, \"big\": 12345678901234567890, \"s\": \"\\\\u00e9\"}'),
           seq * 1.25, seq / 7, IF(seq % 2, 'a', 'b'), '2026-12-02 10:00:00.125', UNHEX('00FF10')
         FROM shop.seq_1_to_240;
         INSERT INTO shop.customers SELECT seq, CONCAT('c', seq, '@example.com'), CONCAT('Name ', seq) FROM shop.seq_1_to_60;
         UPDATE shop.reviews SET stars = (stars + 3) % 6, score = -score WHERE id % 3 = 1;
         UPDATE shop.reviews SET id = id + 1000 WHERE id % 40 = 0;
         UPDATE shop.customers SET email = CONCAT('new.', email) WHERE id % 7 = 0;
         UPDATE shop.customers SET name = NULL WHERE id % 5 = 0;
         DELETE FROM shop.reviews WHERE id % 11 = 0;
         DELETE FROM shop.customers WHERE id % 13 = 0",
    )
    .await;
}

#[test]
fn one_source_and_three_workers_give_each_key_the_records_of_one_process() {
    let db = server();
    let (k_all, k_out) = (Kafka::start(), Kafka::start());
    let standin = AwsStandin::start();
    block_on(workload(&db));
    let files = pipelines(&standin);

    let mut all = daemon(&db, &k_all, &files, "all");
    let expected: Vec<Vec<Record>> = OUTPUTS.iter().map(|t| read_all(&k_all, t, 1, 60)).collect();
    all.assert_running();

    let mut source = daemon(&db, &k_out, &files, "source");
    let mut workers: Vec<Daemon> = (0..3)
        .map(|_| daemon(&db, &k_out, &files, "worker"))
        .collect();
    for (topic, want) in OUTPUTS.iter().zip(&expected) {
        assert!(want.len() > 50, "{topic}: {} records", want.len());
        let got = read_all(&k_out, topic, want.len(), 90);
        // At least once: a record a worker sent again after its partition moved (the first
        // worker owns every partition until the others join) is the same record, again.
        assert!(
            got.len() >= want.len() && got.len() <= 2 * want.len(),
            "{topic}: {} records of {}",
            got.len(),
            want.len()
        );
        assert_eq!(
            first_of_each(by_key(&got)),
            by_key(want),
            "{topic}: records per key"
        );
    }
    source.assert_running();
    for (i, w) in workers.iter_mut().enumerate() {
        w.assert_running();
        assert!(
            w.log().contains("partitions assigned"),
            "worker {i}:\n{}",
            w.log()
        );
    }
    // The three workers shared the six partitions of the two change topics: each owned some
    // at the end, every partition once.
    let mut all: Vec<String> = workers.iter().flat_map(owned).collect();
    assert!(workers.iter().all(|w| !owned(w).is_empty()), "{all:?}");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 2 * PARTITIONS as usize, "{all:?}");
    for w in &mut workers {
        assert_eq!(w.terminate(), 0, "{}", w.log());
    }
    assert_eq!(source.terminate(), 0, "{}", source.log());
}

#[test]
fn a_change_topic_record_carries_full_images_its_position_and_the_tables_schema() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(SHOP));
    let mut source = daemon(&db, &kafka, &pipelines(&standin), "source");
    block_on(db.exec(
        "INSERT INTO shop.reviews VALUES (7, 5, 'fine', '{\"p\": 1.50}', 8.75, 0.5, 'b', '2026-12-02 10:00:00.125', UNHEX('00FF'));
         UPDATE shop.reviews SET id = 8, stars = 1 WHERE id = 7;
         TRUNCATE shop.reviews",
    ));
    let recs = read_all(
        &kafka,
        "cdc-changes.shop.reviews",
        3 + PARTITIONS as usize,
        60,
    );
    let rows: Vec<&Record> = recs.iter().filter(|r| r.key.is_some()).collect();
    assert_eq!(rows.len(), 3, "{recs:#?}");
    let schema = json!({
        "columns": [
            {"name": "id", "type": "INT", "encoding": "plain"},
            {"name": "stars", "type": "TINYINT", "encoding": "plain"},
            {"name": "body", "type": "TEXT/BLOB", "encoding": "plain"},
            {"name": "doc", "type": "JSON", "encoding": "json"},
            {"name": "price", "type": "DECIMAL(10,2)", "encoding": "plain"},
            {"name": "score", "type": "DOUBLE", "encoding": "float"},
            {"name": "tag", "type": "ENUM", "encoding": "plain"},
            {"name": "seen", "type": "DATETIME(3)", "encoding": "plain"},
            {"name": "raw", "type": "VARCHAR", "encoding": "plain"}
        ],
        "primary_key": ["id"]
    });
    let row7 = json!({"id": 7, "stars": 5, "body": "fine", "doc": {"p": 1.50}, "price": "8.75",
        "score": 0.5, "tag": "b", "seen": "2026-12-02T10:00:00.125", "raw": "AP8="});
    let row8 = json!({"id": 8, "stars": 1, "body": "fine", "doc": {"p": 1.50}, "price": "8.75",
        "score": 0.5, "tag": "b", "seen": "2026-12-02T10:00:00.125", "raw": "AP8="});
    let keyed = |k: &str, op: &str| {
        let r: Vec<serde_json::Value> = rows
            .iter()
            .filter(|r| r.key.as_deref() == Some(k))
            .map(|r| r.json())
            .filter(|v| v["op"] == op)
            .collect();
        assert_eq!(r.len(), 1, "{k} {op}: {recs:#?}");
        r[0].clone()
    };
    let c = keyed("{\"id\":7}", "c");
    assert_eq!((&c["before"], &c["after"]), (&json!(null), &row7));
    // The key change goes to both keys' partitions, as one `u` each (a worker takes from
    // each copy the records of its key).
    let change = json!({"old": {"id": 7}, "new": {"id": 8}});
    let (u7, u8) = (keyed("{\"id\":7}", "u"), keyed("{\"id\":8}", "u"));
    for u in [&u7, &u8] {
        assert_eq!(
            (&u["before"], &u["after"], &u["key_change"]),
            (&row7, &row8, &change)
        );
    }
    assert_eq!(u7["source"], u8["source"]);
    assert_ne!(u7["source"]["pos"], c["source"]["pos"]);
    let u = u8;
    // The JSON column's number as written (1.50), not as a double.
    assert!(rows
        .iter()
        .all(|r| r.value.as_deref().unwrap().contains("\"doc\":{\"p\":1.50}")));
    for r in [&c, &u] {
        let mut s = r["schema"].clone();
        let version = s.as_object_mut().unwrap().remove("version").unwrap();
        assert_eq!(s, schema);
        assert_eq!(version.as_str().map(str::len), Some(16));
        assert_eq!(r["source"]["pipeline"], "changes.shop.reviews");
        assert_eq!(r["source"]["db"], "shop");
        assert!(r["source"]["file"].as_str().unwrap().starts_with("binlog."));
        assert!(r["source"]["gtid"].as_str().unwrap().starts_with("0-1-"));
    }
    assert_eq!(c["schema"]["version"], u["schema"]["version"]);
    // The truncate reaches every partition, in order with that partition's rows.
    let truncates: Vec<serde_json::Value> = recs
        .iter()
        .filter(|r| r.key.is_none())
        .map(|r| r.json())
        .collect();
    assert_eq!(truncates.len(), PARTITIONS as usize, "{recs:#?}");
    assert!(truncates
        .iter()
        .all(|t| t["op"] == "t" && t["schema"].is_null()));
    assert_eq!(source.terminate(), 0, "{}", source.log());
}

/// The ids of the `c` records of `shop.customers` in its change topic.
fn inserted_ids(kafka: &Kafka, n: usize, secs: u64) -> (Vec<i64>, usize) {
    let recs = read_all(kafka, "cdc-changes.shop.customers", n, secs);
    let mut ids: Vec<i64> = recs
        .iter()
        .map(|r| r.json())
        .filter(|v| v["op"] == "c")
        .map(|v| v["after"]["id"].as_i64().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    (ids, all)
}

#[test]
fn a_standby_source_reads_on_when_the_reader_dies_or_loses_its_lock_connection() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(SHOP));
    let files = pipelines(&standin);
    let mut a = daemon(&db, &kafka, &files, "source");
    wait_log(&mut a, "reading the binlog", 1, 60);
    let mut b = daemon(&db, &kafka, &files, "source");
    wait_log(&mut b, "standing by", 1, 60);
    let writer = BackgroundWriter::start(&db, Duration::from_millis(20), |i| {
        format!("INSERT INTO shop.customers VALUES ({i}, 'c{i}@example.com', 'n{i}')")
    });
    std::thread::sleep(Duration::from_secs(2));
    // The reader dies: the standby reads within 10 s.
    a.kill9();
    let died = Instant::now();
    wait_log(&mut b, "reading the binlog", 1, 30);
    let took = died.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    // The reader's lock connection is killed: it stops producing at once (exit 1), and the
    // first process, started again, takes over.
    let mut a = daemon(&db, &kafka, &files, "source");
    wait_log(&mut a, "standing by", 1, 60);
    let holder: Vec<i64> =
        block_on(db.query("SELECT IS_USED_LOCK('cdc-enricher.source.cdc_state.checkpoints.shop')"));
    block_on(db.exec(&format!("KILL {}", holder[0])));
    assert_eq!(b.wait_exit(10), 1, "{}", b.log());
    assert!(b.log().contains("stopping at once"), "{}", b.log());
    wait_log(&mut a, "reading the binlog", 1, 30);
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.stop();
    assert!(written > 20, "{written} rows written");
    // Every row written is in the change topic (duplicates only from the unacknowledged window).
    let (ids, all) = inserted_ids(&kafka, written as usize, 60);
    assert_eq!(ids, (1..=written as i64).collect::<Vec<_>>(), "{}", a.log());
    assert!(all - ids.len() < 200, "{} duplicates", all - ids.len());
    assert_eq!(a.terminate(), 0, "{}", a.log());
}

/// The partitions a worker owns, from its log's last assignment.
fn owned(w: &Daemon) -> Vec<String> {
    let log = w.log();
    let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
    else {
        return Vec::new();
    };
    line.split('"')
        .filter(|p| p.starts_with("cdc-changes."))
        .map(str::to_string)
        .collect()
}

/// Waits until `workers` own every partition of the `topics` change topics between them, once.
fn settled_on(workers: &mut [Daemon], topics: usize, secs: u64) {
    let start = Instant::now();
    loop {
        let mut all: Vec<String> = workers.iter().flat_map(owned).collect();
        all.sort();
        let n = topics * PARTITIONS as usize;
        if all.len() == n && {
            all.dedup();
            all.len() == n
        } {
            return;
        }
        for w in workers.iter_mut() {
            w.assert_running();
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| {
                    w.log()
                        .lines()
                        .filter(|l| {
                            l.contains("partitions") || l.contains("WARN") || l.contains("ERROR")
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "the group did not settle: {all:?}\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_worker_leaving_under_a_writer_loses_nothing_and_a_worker_that_joins_takes_partitions() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(SHOP));
    let files = pipelines(&standin);
    let mut source = daemon(&db, &kafka, &files, "source");
    let mut workers: Vec<Daemon> = (0..3)
        .map(|_| daemon(&db, &kafka, &files, "worker"))
        .collect();
    for w in &mut workers {
        wait_log(w, "partitions assigned", 1, 60);
    }
    let writer = BackgroundWriter::start(&db, Duration::from_millis(10), |i| {
        format!("INSERT INTO shop.customers VALUES ({i}, 'c{i}@example.com', 'n{i}')")
    });
    std::thread::sleep(Duration::from_secs(3));
    // A worker stops (SIGTERM): it delivers what it took, commits, and leaves the group; the
    // others take its partitions. (A worker `kill -9`'d is noticed by the session timeout;
    // tansu 0.6's coordinator then leaves its partitions unassigned — see the README.)
    assert_eq!(workers[0].terminate(), 0, "{}", workers[0].log());
    settled_on(&mut workers[1..], 2, 60);
    std::thread::sleep(Duration::from_secs(2));
    let mut fourth = daemon(&db, &kafka, &files, "worker");
    wait_log(&mut fourth, "partitions assigned", 1, 60);
    workers.push(fourth);
    settled_on(&mut workers[1..], 2, 60);
    let mut fourth = workers.pop().unwrap();
    assert!(
        !owned(&fourth).is_empty(),
        "the fourth worker took partitions"
    );
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.stop() as i64;
    // Every row's record in the output topic, once or more (duplicates only from what a
    // worker had taken and not committed when its partitions moved).
    let recs = read_all(&kafka, "customers", written as usize, 120);
    let mut ids: Vec<i64> = recs
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let missing: Vec<i64> = (1..=written)
        .filter(|i| ids.binary_search(i).is_err())
        .collect();
    let moves: Vec<String> = workers
        .iter()
        .chain(std::iter::once(&fourth))
        .map(|w| {
            w.log()
                .lines()
                .filter(|l| l.contains("partitions "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {written} missing: {missing:?}\n{}",
        missing.len(),
        moves.join("\n---\n")
    );
    // No duplicates: at each move the worker losing partitions delivers what it took from
    // them and commits before handing them over (0 in runs; a few only if its 10 s wait ran
    // out on a loaded machine). Before it did, up to a commit interval's worth and what was in
    // flight came twice at each move.
    let duplicates = all - ids.len();
    assert!(duplicates < 20, "{duplicates} duplicates of {written} rows");
    for w in workers
        .iter_mut()
        .skip(1)
        .chain(std::iter::once(&mut fourth))
    {
        assert_eq!(w.terminate(), 0, "{}", w.log());
    }
    assert_eq!(source.terminate(), 0, "{}", source.log());
    eprintln!("{written} rows, {duplicates} duplicates");
}

#[test]
fn a_request_quota_shared_by_three_workers_is_never_passed_in_any_second() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.reviews (id INT PRIMARY KEY, stars TINYINT, body TEXT, doc JSON,
           price DECIMAL(10,2), score DOUBLE, tag ENUM('a','b'), seen DATETIME(3), raw VARBINARY(8));
",
    ));
    // One document a call, 10 calls a second for the whole group.
    let files = vec![(
        "mood".to_string(),
        format!("name: mood\ntable: shop.reviews\ncolumns: [id, body]\nenrichment:\n  comprehend:\n    operation: sentiment\n    text: body\n  endpoint_url: {}\n  max_batch_size: 1\n  max_wait_ms: 1\n  requests_per_second: 10\nsink:\n  kafka:\n    topic: mood\n", standin.url()),
    )];
    let mut source = daemon(&db, &kafka, &files, "source");
    let port = free_port();
    let mut workers: Vec<Daemon> = (0..3)
        .map(|i| match i {
            0 => daemon_with(
                &db,
                &kafka,
                &files,
                "worker",
                &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
            ),
            _ => daemon(&db, &kafka, &files, "worker"),
        })
        .collect();
    // Once the group has settled (while it rebalances, old and new shares overlap a moment).
    wait_log(&mut source, "reading the binlog", 1, 60);
    let start = Instant::now();
    let settled = |w: &Daemon| {
        let log = w.log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("share of each quota"));
        last.is_some_and(|l| l.contains("0.3333"))
    };
    while workers.iter().filter(|w| settled(w)).count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the group did not settle"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    block_on(db.exec(
        "INSERT INTO shop.reviews (id, body) SELECT seq, CONCAT('a good review ', seq) FROM shop.seq_1_to_150",
    ));
    let recs = read_all(&kafka, "mood", 150, 120);
    assert_eq!(recs.len(), 150);
    let calls: Vec<f64> = standin
        .log()
        .iter()
        .filter(|e| {
            e["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("BatchDetectSentiment"))
        })
        .map(|e| e["t"].as_f64().unwrap())
        .collect();
    assert_eq!(calls.len(), 150, "one call a row");
    // In any second (a window starting at any call), at most 10 calls.
    let most = calls
        .iter()
        .map(|t| calls.iter().filter(|u| **u >= *t && **u < *t + 1.0).count())
        .max()
        .unwrap();
    assert!(most <= 10, "{most} calls in one second");
    let span = calls.iter().cloned().fold(f64::MIN, f64::max)
        - calls.iter().cloned().fold(f64::MAX, f64::min);
    eprintln!("150 calls over {span:.1} s, at most {most} in a second");
    // The first worker's `/metrics`: its role, and each partition it owns with its lag (none
    // left once every record is out) and its committed offset, within LAG_EVERY (5 s).
    let start = Instant::now();
    let (role, lags) = loop {
        let (_, body) = http_get(port, "/metrics");
        let lags: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with("cdc_enricher_worker_partition_lag{"))
            .map(str::to_string)
            .collect();
        let caught_up = !lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0"));
        if caught_up || start.elapsed() > Duration::from_secs(20) {
            break (body.contains("cdc_enricher_role{role=\"worker\"} 1"), lags);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(role, "the role on /metrics");
    assert_eq!(
        lags.len(),
        1,
        "its partition (one of the topic's three): {lags:?}"
    );
    assert!(
        lags.iter()
            .all(|l| l.contains("topic=\"cdc-changes.shop.reviews\"") && l.ends_with(" 0")),
        "{lags:?}"
    );
    for w in &mut workers {
        assert!(w.log().contains("share of each quota"), "{}", w.log());
        assert_eq!(w.terminate(), 0, "{}", w.log());
    }
    assert_eq!(source.terminate(), 0, "{}", source.log());
}

/// Waits until `sql` (one number) is `n`, the processes running.
fn wait_for(db: &MariaDb, daemons: &mut [&mut Daemon], sql: &str, n: i64, secs: u64) {
    let start = Instant::now();
    loop {
        let v: Vec<i64> = block_on(db.query_or_empty(sql));
        if v.first() == Some(&n) {
            return;
        }
        for d in daemons.iter_mut() {
            d.assert_running();
        }
        let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{sql}: {v:?}, waiting for {n}\n{}",
            logs.join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_write_back_through_workers_writes_each_row_once_through_rebalances_and_kill_9() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(&format!("CREATE DATABASE shop; {WRITER} {SUPPORT}")));
    let files = vec![(
        "support_sentiment".to_string(),
        format!(
            "name: support_sentiment\ntable: shop.support\ncolumns: [id, message]\n\
             enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 50\n\
             sink:\n  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n    batch_size: 20\n\
             \x20   columns: {{sentiment: /sentiment, confidence: /confidence}}\n",
            standin.url()
        ),
    )];
    let mut source = daemon(&db, &kafka, &files, "source");
    let mut workers = vec![daemon(&db, &kafka, &files, "worker")];
    wait_log(&mut workers[0], "partitions assigned", 1, 60);
    standin.control(r#"{"delay_ms": 20}"#);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('good ', seq) FROM shop.seq_1_to_3000",
    ));
    let written = "SELECT COUNT(*) FROM shop.support WHERE writes > 0";
    let count = || block_on(db.query::<i64>(written))[0];
    let until = |n: i64, workers: &mut Vec<Daemon>| {
        let start = Instant::now();
        while count() < n {
            workers.iter_mut().for_each(Daemon::assert_running);
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{}",
                workers[0].log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Two more workers join mid-stream: partitions move with records in flight, and for a
    // moment two workers may hold one partition (its progress row makes them take turns).
    until(300, &mut workers);
    workers.extend((0..2).map(|_| daemon(&db, &kafka, &files, "worker")));
    settled_on(&mut workers, 1, 60);
    // Every worker killed mid-batch; a new group starts once their sessions expired (10 s;
    // the tansu of the tests leaves a lone dead member's partitions unassigned, see README).
    until(1200, &mut workers);
    workers.iter_mut().for_each(Daemon::kill9);
    let at_kill = count();
    assert!(at_kill < 3000, "killed mid-way: {at_kill}");
    std::thread::sleep(Duration::from_secs(11));
    let mut workers: Vec<Daemon> = (0..3)
        .map(|_| daemon(&db, &kafka, &files, "worker"))
        .collect();
    {
        let mut all: Vec<&mut Daemon> = workers.iter_mut().collect();
        all.push(&mut source);
        wait_for(&db, &mut all, written, 3000, 180);
    }
    std::thread::sleep(Duration::from_secs(1));
    let w: Vec<(i64, i64, i64)> =
        block_on(db.query("SELECT MIN(writes), MAX(writes), COUNT(*) FROM shop.support"));
    assert_eq!(
        w,
        vec![(1, 1, 3000)],
        "every row's result written exactly once"
    );
    // The applied position is kept per change-topic partition.
    let keys: Vec<String> =
        block_on(db.query("SELECT pipeline FROM shop.cdc_enricher_writeback ORDER BY pipeline"));
    let wanted: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("support_sentiment@cdc-changes.shop.support[{p}]"))
        .collect();
    assert_eq!(keys, wanted);
    for w in &mut workers {
        assert_eq!(w.terminate(), 0, "{}", w.log());
    }
    assert_eq!(source.terminate(), 0, "{}", source.log());
    eprintln!("{at_kill} of 3000 rows written when the workers were killed");
}

#[test]
fn every_worker_killed_under_a_writer_loses_no_row_and_a_new_group_reads_on() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(SHOP));
    let files = pipelines(&standin);
    let mut source = daemon(&db, &kafka, &files, "source");
    let mut workers: Vec<Daemon> = (0..3)
        .map(|_| daemon(&db, &kafka, &files, "worker"))
        .collect();
    settled_on(&mut workers, 2, 60);
    let writer = BackgroundWriter::start(&db, Duration::from_millis(10), |i| {
        format!("INSERT INTO shop.customers VALUES ({i}, 'c{i}@example.com', 'n{i}')")
    });
    std::thread::sleep(Duration::from_secs(3));
    // Every worker killed mid-stream (the writer goes on); a new group starts once their
    // sessions expired (10 s: the tansu of the tests leaves a lone dead member's partitions
    // unassigned, see the README) and reads on from the committed offsets.
    workers.iter_mut().for_each(Daemon::kill9);
    std::thread::sleep(Duration::from_secs(11));
    let mut workers: Vec<Daemon> = (0..3)
        .map(|_| daemon(&db, &kafka, &files, "worker"))
        .collect();
    // Settled: each of the three owns partitions, every partition owned once.
    let start = Instant::now();
    while workers.iter().any(|w| owned(w).is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a worker got no partition"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    settled_on(&mut workers, 2, 60);
    // Rows written so far may come twice (consumed by the killed workers and not committed);
    // the later ones once.
    let at_settle: Vec<Option<i64>> = block_on(db.query("SELECT MAX(id) FROM shop.customers"));
    let at_settle = at_settle[0].unwrap_or(0);
    std::thread::sleep(Duration::from_secs(3));
    let written = writer.stop() as i64;
    let recs = read_all(&kafka, "customers", written as usize, 120);
    let mut ids: Vec<i64> = recs
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let missing: Vec<i64> = (1..=written)
        .filter(|i| ids.binary_search(i).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {written} missing: {missing:?}",
        missing.len()
    );
    let duplicates = all - ids.len();
    let mut late: Vec<i64> = recs
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .filter(|i| *i > at_settle)
        .collect();
    let late_all = late.len();
    late.sort_unstable();
    late.dedup();
    assert_eq!(
        late_all,
        late.len(),
        "rows written after the group settled (ids over {at_settle}) came more than once"
    );
    // Duplicates only from what the killed workers had taken and not committed (a commit
    // interval of a 100 rows/s writer, and what was in flight): the new group's first member
    // delivers what it read of the backlog before its partitions move (before it did, 593 to
    // 1,131 of ~1,700 rows came twice).
    assert!(
        duplicates < 200,
        "{duplicates} duplicates of {written} rows, {at_settle} before the group settled"
    );
    for w in &mut workers {
        assert_eq!(w.terminate(), 0, "{}", w.log());
    }
    assert_eq!(source.terminate(), 0, "{}", source.log());
    eprintln!(
        "{written} rows, {duplicates} duplicates, {at_settle} written before the new group settled"
    );
}

#[test]
fn a_write_back_into_a_side_table_is_refused_by_the_scale_out_roles() {
    let db = server();
    let kafka = Kafka::start();
    let standin = AwsStandin::start();
    block_on(db.exec(&format!("CREATE DATABASE shop; {WRITER} {SUPPORT}")));
    let files = vec![(
        "support_side".to_string(),
        format!(
            "name: support_side\ntable: shop.support\ncolumns: [id, message]\n\
             enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n\
             sink:\n  mysql:\n    mode: upsert\n    table: shop.support_mood\n    user: writer\n    password: writer-secret\n\
             \x20   columns: {{sentiment: /sentiment}}\n",
            standin.url()
        ),
    )];
    block_on(db.exec("CREATE TABLE shop.support_mood (id INT PRIMARY KEY, sentiment VARCHAR(20))"));
    for role in ["worker", "source"] {
        let mut d = daemon(&db, &kafka, &files, role);
        assert_eq!(d.wait_exit(60), 2, "{}", d.log());
        assert!(
            d.log().contains(&format!(
                "a write-back into a side table (`sink.mysql.mode: upsert`) does not run in a scale-out (`--role {role}`) yet"
            )),
            "{}",
            d.log()
        );
    }
}
