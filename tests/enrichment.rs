//! Enrichment end to end: rows into MariaDB → the real AWS SDK → the local stand-in → the
//! exact enrichment in the Kafka record.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn pipeline(aws: &AwsStandin, max_wait_ms: u64) -> String {
    format!(
        "name: feedback\ntable: shop.support\ncolumns: [id, message]\n\
         enrichment:\n  comprehend:\n    operation: sentiment\n    text: message\n  endpoint_url: {}\n  max_wait_ms: {max_wait_ms}\n\
         sink:\n  kafka:\n    topic: feedback\n",
        aws.url()
    )
}

fn setup() -> (MariaDb, Kafka, AwsStandin) {
    let db = MariaDb::start();
    block_on(db.exec("CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, flag INT DEFAULT 0);"));
    (db, Kafka::start(), AwsStandin::start())
}

#[test]
fn sentiment_lands_in_the_record_and_batches_are_full() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &pipeline(&aws, 300))]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (1, 'The delivery was fast and the product is great'),
           (2, 'Terrible support, I waited two weeks'), (3, 'It arrived on Tuesday'), (4, NULL);
         UPDATE shop.support SET flag = 1 WHERE id = 1;",
    ));
    wait_records(&mut d, &mut tail, 5, 60);
    let enr: Vec<_> = tail
        .records
        .iter()
        .map(|r| sans_lineage(r.json()["enrichment"].clone()))
        .collect();
    let scores = |p: f64, n: f64, u: f64, m: f64| json!({"positive": p, "negative": n, "neutral": u, "mixed": m});
    assert_eq!(
        enr,
        vec![
            json!({"backend": "comprehend", "operation": "sentiment", "sentiment": "POSITIVE", "confidence": 0.9, "scores": scores(0.9, 0.03, 0.05, 0.02)}),
            json!({"backend": "comprehend", "operation": "sentiment", "sentiment": "NEGATIVE", "confidence": 0.92, "scores": scores(0.02, 0.92, 0.04, 0.02)}),
            json!({"backend": "comprehend", "operation": "sentiment", "sentiment": "NEUTRAL", "confidence": 0.88, "scores": scores(0.05, 0.05, 0.88, 0.02)}),
            json!({"backend": "comprehend", "operation": "sentiment", "skipped": "no text"}),
            json!({"backend": "comprehend", "operation": "sentiment", "skipped": "input unchanged"}),
        ]
    );
    // Three documents, one call; the NULL and the unchanged update made none.
    let log = aws.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["target"], "Comprehend_20171127.BatchDetectSentiment");
    assert_eq!(log[0]["documents"], 3);
    assert_eq!(log[0]["status"], 200);

    // 1,000 rows make exactly 40 calls of 25 documents.
    aws.reset();
    block_on(db.exec("INSERT INTO shop.support (id, message) SELECT 100 + seq, CONCAT('good thing number ', seq) FROM shop.seq_1_to_1000"));
    wait_records(&mut d, &mut tail, 1005, 120);
    let log = aws.log();
    assert_eq!(log.len(), 40, "{log:?}");
    assert!(log
        .iter()
        .all(|e| e["documents"] == 25 && e["status"] == 200));
    assert!(tail.records[5..]
        .iter()
        .all(|r| r.json()["enrichment"]["sentiment"] == "POSITIVE"));
    assert_eq!(d.terminate(), 0);
}

#[test]
fn throttling_is_retried_and_every_row_arrives_once() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &pipeline(&aws, 300))]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    aws.control(r#"{"throttle_rate": 0.3, "seed": 7}"#);
    block_on(db.exec("INSERT INTO shop.support (id, message) SELECT seq, CONCAT('bad thing ', seq) FROM shop.seq_1_to_500"));
    wait_records(&mut d, &mut tail, 500, 120);
    tail.drain(Duration::from_secs(1));
    assert_eq!(tail.records.len(), 500);
    let ids: std::collections::BTreeSet<i64> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 500);
    assert!(
        tail.records
            .iter()
            .all(|r| r.json()["enrichment"]["sentiment"] == "NEGATIVE"),
        "none dead-lettered, none failed"
    );
    let log = aws.log();
    let throttled = log.iter().filter(|e| e["status"] == 400).count();
    let ok = log.iter().filter(|e| e["status"] == 200).count();
    assert!(throttled > 0, "{log:?}");
    assert_eq!(ok, 20, "every successful call carried a full batch");
    // The SDK's own retries are off: each attempt is one logged request (attempt=1; max=1).
    assert!(
        log.iter()
            .all(|e| e["attempt"].as_str().unwrap().starts_with("attempt=1")),
        "{log:?}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_partial_batch_failure_retries_only_the_failed_items_and_long_text_is_cut() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &pipeline(&aws, 300))]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    aws.control(r#"{"item_errors": 3}"#);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('happy ', seq) FROM shop.seq_1_to_24;
         INSERT INTO shop.support (id, message) VALUES (25, CONCAT('great ', REPEAT('é', 3000)));",
    ));
    wait_records(&mut d, &mut tail, 25, 60);
    let log = aws.log();
    let docs: Vec<_> = log
        .iter()
        .map(|e| e["documents"].as_u64().unwrap())
        .collect();
    // One call of 25 (24 rows + the long one after the 24 in the same batch window), then the 3
    // failed documents alone.
    assert_eq!(docs, vec![25, 3], "{log:?}");
    assert!(tail
        .records
        .iter()
        .all(|r| r.json()["enrichment"]["sentiment"] == "POSITIVE"));
    // The 6,006-byte text was cut at a character boundary to 5,000 bytes, and says so.
    assert_eq!(tail.records[24].json()["enrichment"]["truncated"], true);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_poison_row_goes_to_the_dead_letters_and_the_pipeline_moves_on() {
    let (db, kafka, aws) = setup();
    let p = pipeline(&aws, 300).replace(
        "    topic: feedback\n",
        "    topic: feedback\n    dead_letter_topic: \"{pipeline}.dead-letters\"\n",
    );
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (1, 'good'), (2, 'please [[reject]] me'), (3, 'bad');",
    ));
    wait_records(&mut d, &mut tail, 2, 60);
    let dead = kafka.read("feedback.dead-letters", 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some(r#"{"id":2}"#));
    let v = dead[0].json();
    assert_eq!(
        v["after"],
        json!({"id": 2, "message": "please [[reject]] me"})
    );
    assert_eq!(
        sans_lineage(v["enrichment"].clone()),
        json!({"backend": "comprehend", "operation": "sentiment",
               "error": {"kind": "bad_input", "message": "INVALID_REQUEST: the document was rejected", "attempts": 1}})
    );
    // The good rows went on to the main topic, in order; the poison row is not there.
    tail.drain(Duration::from_millis(500));
    let ids: Vec<_> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(1), json!(3)]);
    assert_eq!(
        tail.records[1].json()["enrichment"]["sentiment"],
        "NEGATIVE"
    );
    // One call: the rejection is final, not retried.
    assert_eq!(aws.log().len(), 1);
    // The checkpoint moves past the dead-lettered row.
    assert_eq!(d.terminate(), 0);
    assert_eq!(d.checkpoint().unwrap()["position"]["row"], 0);
}

#[test]
fn pipelines_on_one_quota_share_its_rate_limit() {
    let (db, kafka, aws) = setup();
    block_on(db.exec("CREATE TABLE shop.reviews LIKE shop.support"));
    let limited = |name: &str, table: &str| {
        pipeline(&aws, 50)
            .replace("name: feedback", &format!("name: {name}"))
            .replace("table: shop.support", &format!("table: shop.{table}"))
            .replace("topic: feedback", &format!("topic: {name}"))
            .replace(
                "  max_wait_ms: 50\n",
                "  max_wait_ms: 50\n  max_batch_size: 5\n  requests_per_second: 4\n",
            )
    };
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[
            ("a", &limited("a", "support")),
            ("b", &limited("b", "reviews")),
        ],
    );
    d.env = AwsStandin::env();
    d.spawn();
    let mut ta = kafka.tail("a");
    let mut tb = kafka.tail("b");
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('good ', seq) FROM shop.seq_1_to_15;
         INSERT INTO shop.reviews (id, message) SELECT seq, CONCAT('bad ', seq) FROM shop.seq_1_to_15;",
    ));
    wait_records(&mut d, &mut ta, 15, 60);
    wait_records(&mut d, &mut tb, 15, 60);
    let mut t: Vec<f64> = aws.log().iter().map(|e| e["t"].as_f64().unwrap()).collect();
    assert_eq!(t.len(), 6, "3 calls of 5 documents per pipeline");
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // 4 calls per second across both pipelines: starts at least ~250 ms apart (a lower bound:
    // a slower machine only spaces them more).
    for w in t.windows(2) {
        assert!(
            w[1] - w[0] >= 0.2,
            "calls {:.3} s apart: {t:?}",
            w[1] - w[0]
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_cache_hit_makes_no_call() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &pipeline(&aws, 50))]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'a good day')"));
    wait_records(&mut d, &mut tail, 1, 60);
    // The same text again, in another row and transaction, and in an update of a third row.
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (2, 'a good day'), (3, 'other');
         UPDATE shop.support SET message = 'a good day' WHERE id = 3;",
    ));
    wait_records(&mut d, &mut tail, 4, 60);
    let log = aws.log();
    let docs: Vec<_> = log
        .iter()
        .map(|e| e["documents"].as_u64().unwrap())
        .collect();
    assert_eq!(
        docs,
        vec![1, 1],
        "one call for the first 'a good day', one for 'other': {log:?}"
    );
    let e: Vec<_> = tail
        .records
        .iter()
        .map(|r| sans_lineage(r.json()["enrichment"].clone()))
        .collect();
    assert_eq!(e[1], e[0]);
    assert_eq!(e[3], e[0]);
    assert_eq!(e[0]["sentiment"], "POSITIVE");
    assert_eq!(e[2]["sentiment"], "NEUTRAL");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn entities_key_phrases_and_dominant_language() {
    let (db, kafka, aws) = setup();
    let op = |name: &str, operation: &str| {
        pipeline(&aws, 100)
            .replace("name: feedback", &format!("name: {name}"))
            .replace("operation: sentiment", &format!("operation: {operation}"))
            .replace("topic: feedback", &format!("topic: {name}"))
    };
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[
            ("ents", &op("ents", "entities")),
            ("phrases", &op("phrases", "key_phrases")),
            ("lang", &op("lang", "dominant_language")),
        ],
    );
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'Alice wrote to ACME about shipping'), (2, 'Très bien, merci')"));
    let get = |topic: &str| {
        let r = kafka.read(topic, 2, Duration::from_secs(60));
        assert_eq!(r.len(), 2, "{topic}: {}", d.log());
        r.iter()
            .map(|r| sans_lineage(r.json()["enrichment"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("ents")[0],
        json!({"backend": "comprehend", "operation": "entities", "entities": [
            {"text": "Alice", "type": "PERSON", "score": 0.99, "begin": 0, "end": 5},
            {"text": "ACME", "type": "ORGANIZATION", "score": 0.99, "begin": 15, "end": 19}]})
    );
    assert_eq!(
        get("phrases")[0],
        json!({"backend": "comprehend", "operation": "key_phrases", "key_phrases": [
            {"text": "shipping", "score": 0.95, "begin": 26, "end": 34}]})
    );
    let lang = get("lang");
    assert_eq!(
        lang[0],
        json!({"backend": "comprehend", "operation": "dominant_language", "language": "en", "confidence": 0.99,
        "languages": [{"code": "en", "score": 0.99}]})
    );
    assert_eq!(lang[1]["language"], "fr");
    assert_eq!(lang[1]["confidence"], 0.9);
    // One call per operation, each of the batch operation the pipeline names.
    let mut targets: Vec<String> = aws
        .log()
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "Comprehend_20171127.BatchDetectDominantLanguage",
            "Comprehend_20171127.BatchDetectEntities",
            "Comprehend_20171127.BatchDetectKeyPhrases",
        ]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn language_from_a_column_makes_one_call_per_language() {
    let (db, kafka, aws) = setup();
    block_on(db.exec("ALTER TABLE shop.support ADD COLUMN lang VARCHAR(5)"));
    let p = pipeline(&aws, 300)
        .replace("columns: [id, message]", "columns: [id, message, lang]")
        .replace(
            "    text: message\n",
            "    text: message\n    language_column: lang\n",
        );
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("feedback");
    block_on(db.exec(
        "INSERT INTO shop.support (id, message, lang) VALUES (1, 'good', 'en'), (2, 'bon', 'fr'), (3, 'great', 'en'), (4, 'fine', NULL)",
    ));
    wait_records(&mut d, &mut tail, 4, 60);
    let mut calls: Vec<(String, u64)> = aws
        .log()
        .iter()
        .map(|e| {
            (
                e["language"].as_str().unwrap().to_string(),
                e["documents"].as_u64().unwrap(),
            )
        })
        .collect();
    calls.sort();
    // Rows 1, 3 and 4 (NULL: the default `en`) in one call, row 2 in another.
    assert_eq!(calls, vec![("en".to_string(), 3), ("fr".to_string(), 1)]);
    let ids: Vec<_> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 4],
        "order kept across the per-language calls"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_stop_while_the_backend_throttles_exits_at_the_timeout_and_loses_nothing() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("feedback", &pipeline(&aws, 50))],
        "shutdown_timeout_ms: 1500\n",
    );
    d.env = AwsStandin::env();
    aws.control(r#"{"throttle": 1000000}"#);
    d.spawn();
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'good')"));
    let start = Instant::now();
    while aws.log().is_empty() {
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(60), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The row is being retried against a throttling backend: stop.
    assert_eq!(d.terminate(), 1);
    assert!(
        d.log().contains("error: stopped after the shutdown timeout (1500 ms) with 1 rows not delivered; the checkpoint stays before them"),
        "{}",
        d.log()
    );
    let cp = d.checkpoint().expect("a checkpoint");
    // Back up: the row is delivered, once, after the restart.
    aws.reset();
    d.spawn();
    let recs = kafka.read("feedback", 1, Duration::from_secs(60));
    assert_eq!(recs.len(), 1, "{}", d.log());
    assert_eq!(recs[0].json()["enrichment"]["sentiment"], "POSITIVE");
    assert!(
        recs[0].json()["source"]["pos"].as_u64() >= cp["position"]["pos"].as_u64(),
        "{cp}"
    );
    assert_eq!(d.terminate(), 0);
}

/// A stop while a large transaction is being released (a slice at a time) to a backend that
/// throttles: the binlog reader stops between slices instead of pushing the rest of the group
/// through, so the stop is bounded by the shutdown timeout, and the checkpoint stays before the
/// transaction.
#[test]
fn a_stop_during_a_large_transaction_to_a_throttling_backend_is_bounded() {
    let (db, kafka, aws) = setup();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("feedback", &pipeline(&aws, 50))],
        "shutdown_timeout_ms: 1500\n",
    );
    d.env = AwsStandin::env();
    aws.control(r#"{"throttle": 1000000}"#);
    d.spawn();
    let before: Vec<(String, u64, String, String)> = block_on(db.query("SHOW MASTER STATUS"));
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('good ', seq) FROM shop.seq_1_to_50000",
    ));
    let start = Instant::now();
    while aws.log().is_empty() {
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(60), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the release fill every channel up to the throttled stage.
    std::thread::sleep(Duration::from_secs(2));
    let stop = Instant::now();
    assert_eq!(d.terminate(), 1);
    assert!(
        stop.elapsed() < Duration::from_secs(20),
        "took {:?}",
        stop.elapsed()
    );
    assert!(
        d.log()
            .contains("error: stopped after the shutdown timeout (1500 ms)"),
        "{}",
        d.log()
    );
    // Nothing of the transaction was delivered: the checkpoint is at or before its start.
    let cp = d.checkpoint().expect("a checkpoint");
    assert_eq!(cp["position"]["file"], before[0].0.as_str());
    assert!(
        cp["position"]["pos"].as_u64().unwrap() <= before[0].1,
        "{cp}"
    );
}

#[test]
fn pii_entities_one_document_per_call() {
    let (db, kafka, aws) = setup();
    let p = pipeline(&aws, 100).replace("operation: sentiment", "operation: pii_entities");
    let mut d = Daemon::new(&db, Some(&kafka), &[("feedback", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'mail ann@example.com or call 5551234567'), (2, 'nothing here')"));
    let recs = kafka.read("feedback", 2, Duration::from_secs(60));
    assert_eq!(recs.len(), 2, "{}", d.log());
    assert_eq!(
        sans_lineage(recs[0].json()["enrichment"].clone()),
        json!({"backend": "comprehend", "operation": "pii_entities", "pii_entities": [
            {"type": "EMAIL", "score": 0.99, "begin": 5, "end": 20},
            {"type": "PHONE", "score": 0.98, "begin": 29, "end": 39}]})
    );
    assert_eq!(recs[1].json()["enrichment"]["pii_entities"], json!([]));
    let log = aws.log();
    assert_eq!(log.len(), 2, "one call per document: {log:?}");
    assert!(log
        .iter()
        .all(|e| e["target"] == "Comprehend_20171127.DetectPiiEntities"));
    assert_eq!(d.terminate(), 0);
}
