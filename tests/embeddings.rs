//! Embeddings end to end: rows into MariaDB → the real AWS SDK (Bedrock InvokeModel) → the
//! local stand-in's Titan Text Embeddings v2 and Cohere Embed → the exact vector in the Kafka
//! record, and written back as JSON and as a BLOB of little-endian float32; `check` refusing
//! columns that cannot hold the vector.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PRODUCTS: &str = "CREATE DATABASE shop;
    CREATE TABLE shop.products (id INT PRIMARY KEY, name VARCHAR(50), description TEXT,
      emb_json JSON, emb_blob BLOB, emb_small VARBINARY(100));";

/// The stand-in's vector of `text`, computed here independently from its documented formula
/// (`embed()` in tests/aws_standin/standin.py).
fn embed(text: &str, dims: u64, normalize: bool) -> Vec<f64> {
    let b = text.as_bytes();
    let s: u64 = b.iter().map(|&x| u64::from(x)).sum::<u64>() + 131 * b.len() as u64;
    let mut v: Vec<f64> = (0..dims)
        .map(|i| (((s * (i + 1) * 7919 + i * 104_729) % 2001) as f64 - 1000.0) / 1000.0)
        .collect();
    if normalize {
        let mut norm = 0.0;
        for x in &v {
            norm += x * x;
        }
        let norm = f64::sqrt(norm);
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|n| n.as_f64().expect("a number"))
        .collect()
}

fn text_of(id: i64) -> String {
    format!("item {id}: a sturdy oak chair, number {}", id * 37)
}

fn pipeline(aws: &AwsStandin, name: &str, embedding: &str, sink: &str) -> String {
    format!(
        "name: {name}\ntable: shop.products\ncolumns: [id, name, description]\n\
         enrichment:\n  embedding:\n{embedding}\
         \x20 endpoint_url: {}\n  max_wait_ms: 300\n  timeout_ms: 5000\n\
         sink:\n{sink}",
        aws.url()
    )
}

const TITAN: &str =
    "    model: amazon.titan-embed-text-v2:0\n    text: \"{name}: {description}\"\n    dimensions: 256\n";
const COHERE: &str =
    "    model: cohere.embed-english-v3\n    text: \"{name}: {description}\"\n    input_type: search_document\n";

/// Titan (one text a call, 256 numbers, unit length) and Cohere (96 texts a call, 1,024
/// numbers) into Kafka: every vector exact; one text over Cohere's 2,048 characters is refused
/// by the service and only its row is a dead letter.
#[test]
fn titan_and_cohere_vectors_land_in_kafka_exactly_and_cohere_batches_96() {
    let db = MariaDb::start();
    block_on(db.exec(PRODUCTS));
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let kafka_sink =
        |t: &str| format!("  kafka:\n    topic: {t}\n    dead_letter_topic: {t}.dead\n");
    let titan = pipeline(&aws, "titan", TITAN, &kafka_sink("titan"));
    let cohere = pipeline(&aws, "cohere", COHERE, &kafka_sink("cohere"));
    let mut d = Daemon::new(&db, Some(&kafka), &[("titan", &titan), ("cohere", &cohere)]);
    d.env = AwsStandin::env();
    d.spawn();
    // 150 rows in one transaction; row 77's description is 3,000 characters.
    block_on(db.exec(
        "INSERT INTO shop.products (id, name, description)
           SELECT seq, CONCAT('chair ', seq), IF(seq = 77, REPEAT('x', 3000),
                  CONCAT('item ', seq, ': a sturdy oak chair, number ', seq * 37))
           FROM shop.seq_1_to_150;",
    ));
    let cohere_recs = kafka.read("cohere", 149, Duration::from_secs(90));
    assert_eq!(cohere_recs.len(), 149, "{}", d.log());
    let titan_recs = kafka.read("titan", 150, Duration::from_secs(90));
    assert_eq!(titan_recs.len(), 150, "{}", d.log());
    let text = |id: i64| {
        let desc = if id == 77 {
            "x".repeat(3000)
        } else {
            text_of(id)
        };
        format!("chair {id}: {desc}")
    };
    for r in &titan_recs {
        let v = r.json();
        let id = v["after"]["id"].as_i64().expect("id");
        let e = &v["enrichment"];
        assert_eq!(e["backend"], "bedrock");
        assert_eq!(e["model"], "amazon.titan-embed-text-v2:0");
        assert_eq!(e["dimensions"], 256);
        assert_eq!(
            numbers(&e["embedding"]),
            embed(&text(id), 256, true),
            "titan {id}"
        );
        let words = text(id).split_whitespace().count();
        assert_eq!(e["usage"]["input_tokens"], words, "titan {id}");
    }
    let ids: Vec<i64> = cohere_recs
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (1..=150).filter(|&i| i != 77).collect();
    assert_eq!(ids, want, "in order, without the refused row");
    for r in &cohere_recs {
        let v = r.json();
        let id = v["after"]["id"].as_i64().unwrap();
        assert_eq!(v["enrichment"]["dimensions"], 1024);
        assert_eq!(
            numbers(&v["enrichment"]["embedding"]),
            embed(&text(id), 1024, false),
            "cohere {id}"
        );
    }
    let dead = kafka.read("cohere.dead", 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1);
    let dv = dead[0].json();
    assert_eq!(dv["after"]["id"], 77);
    assert_eq!(dv["enrichment"]["error"]["kind"], "bad_input");
    assert!(
        dv["enrichment"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxLength: 2048"),
        "{dv}"
    );
    // Every Cohere call carried at most 96 texts, and the first full one exactly 96.
    let sizes: Vec<usize> = aws
        .log()
        .iter()
        .filter(|e| e["model"] == "cohere.embed-english-v3")
        .map(|e| e["request"]["texts"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(sizes.iter().all(|&n| (1..=96).contains(&n)), "{sizes:?}");
    assert_eq!(sizes.first(), Some(&96), "{sizes:?}");
    // Titan: one text a call, with the dimensions and normalize asked for.
    let titan_calls: Vec<Value> = aws
        .log()
        .into_iter()
        .filter(|e| e["model"] == "amazon.titan-embed-text-v2:0")
        .collect();
    assert_eq!(titan_calls.len(), 150);
    assert_eq!(titan_calls[0]["request"]["dimensions"], 256);
    assert_eq!(titan_calls[0]["request"]["normalize"], true);
    d.terminate();
}

const WRITER: &str = "CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
    GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON shop.* TO 'writer'@'127.0.0.1';";

fn writeback(columns: &str, format: &str) -> String {
    format!(
        "  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{{columns}}}\n    vector_format: {format}\n"
    )
}

/// Two pipelines write the same rows back: Titan's vector as a JSON array, Cohere's as a BLOB
/// of little-endian float32 — byte for byte.
#[test]
fn vectors_are_written_back_as_json_and_as_float32_blobs() {
    let db = MariaDb::start();
    block_on(db.exec(&format!("{PRODUCTS} {WRITER}")));
    let aws = AwsStandin::start();
    let json_p = pipeline(
        &aws,
        "to_json",
        TITAN,
        &writeback("emb_json: /embedding", "json"),
    );
    let blob_p = pipeline(
        &aws,
        "to_blob",
        COHERE,
        &writeback("emb_blob: /embedding", "float32"),
    );
    let mut d = Daemon::new(&db, None, &[("to_json", &json_p), ("to_blob", &blob_p)]);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.products (id, name, description)
           SELECT seq, CONCAT('chair ', seq), CONCAT('item ', seq, ': a sturdy oak chair, number ', seq * 37)
           FROM shop.seq_1_to_20;",
    ));
    let start = Instant::now();
    let rows = loop {
        let rows: Vec<(i64, Option<String>, Option<String>)> = block_on(db.query(
            "SELECT id, emb_json, HEX(emb_blob) FROM shop.products \
             WHERE emb_json IS NOT NULL AND emb_blob IS NOT NULL ORDER BY id",
        ));
        if rows.len() == 20 {
            break rows;
        }
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{rows:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (id, json, hex) in rows {
        let text = format!("chair {id}: {}", text_of(id));
        let stored: Value = serde_json::from_str(json.as_deref().unwrap()).unwrap();
        assert_eq!(numbers(&stored), embed(&text, 256, true), "json {id}");
        let want: String = embed(&text, 1024, false)
            .iter()
            .flat_map(|x| (*x as f32).to_le_bytes())
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(hex.as_deref(), Some(want.as_str()), "blob {id}");
    }
    d.terminate();
}

/// `check` refuses a column that cannot hold the vector, naming the column, its type and the
/// fix: a VARBINARY(100) for 256 float32 numbers, a BLOB for `vector_format: vector`, an INT
/// for JSON.
#[test]
fn check_refuses_columns_that_cannot_hold_the_vector() {
    let db = MariaDb::start();
    block_on(db.exec(&format!(
        "{PRODUCTS} {WRITER} ALTER TABLE shop.products ADD COLUMN emb_int INT, ADD COLUMN lin8 VARCHAR(8);"
    )));
    let aws = AwsStandin::start();
    for (columns, format, problem, fix) in [
        (
            "emb_small: /embedding",
            "float32",
            "`shop`.`products`.`emb_small` is VARBINARY(100), which cannot hold 256 float32 numbers (1024 bytes)",
            "make `emb_small` a BLOB or VARBINARY(1024) column",
        ),
        (
            "emb_blob: /embedding",
            "vector",
            "`shop`.`products`.`emb_blob` is BLOB, not VECTOR(256)",
            "make `emb_blob` a VECTOR(256) column",
        ),
        (
            "emb_int: /embedding",
            "json",
            "`shop`.`products`.`emb_int` is INT(11), which cannot hold a vector as JSON",
            "make `emb_int` a JSON or utf8mb4 TEXT column",
        ),
        (
            "emb_json: /embedding, lin8: /lineage",
            "json",
            "`shop`.`products`.`lin8` is VARCHAR(8), shorter than a lineage (16 characters)",
            "make `lin8` CHAR(16)",
        ),
    ] {
        let p = pipeline(&aws, "vec", TITAN, &writeback(columns, format));
        let mut d = Daemon::new(&db, None, &[("vec", &p)]);
        d.env = AwsStandin::env();
        let (code, _out, err) = d.check();
        assert_eq!(code, 2, "{format}: {err}");
        assert!(err.contains(problem), "{format}: {err}");
        assert!(err.contains(fix), "{format}: {err}");
    }
}
