//! Write-back: the enrichment lands in the database (the source row or a side table), exactly
//! once, with no loops and no stale overwrites — against the spawned MariaDB, the AWS stand-in
//! and the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn setup(tables: &str) -> (MariaDb, AwsStandin) {
    let db = MariaDb::start();
    block_on(db.exec(&format!("CREATE DATABASE shop; {WRITER} {tables}")));
    (db, AwsStandin::start())
}

fn sentiment_pipeline(aws: &AwsStandin, extra_sink: &str) -> String {
    format!(
        "name: support_sentiment\ntable: shop.support\ncolumns: [id, message]\n\
         enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 100\n\
         sink:\n  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{sentiment: /sentiment, confidence: /confidence}}\n{extra_sink}",
        aws.url()
    )
}

fn start(db: &MariaDb, pipelines: &[(&str, &str)]) -> Daemon {
    let mut d = Daemon::new(db, None, pipelines);
    d.env = AwsStandin::env();
    d.spawn();
    d
}

/// Waits until `sql` (a single number) reaches `n`.
fn wait_count(d: &mut Daemon, db: &MariaDb, sql: &str, n: i64, secs: u64) {
    let start = Instant::now();
    loop {
        // The daemon creates its tables as it starts: until then the query may fail.
        let v: Vec<i64> = block_on(db.query_or_empty(sql));
        if v.first() == Some(&n) {
            return;
        }
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{sql}: {v:?}, waiting for {n}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn master_pos(db: &MariaDb) -> (String, u64) {
    let rows: Vec<(String, u64, String, String)> = block_on(db.query("SHOW MASTER STATUS"));
    (rows[0].0.clone(), rows[0].1)
}

#[test]
fn sentiment_fills_the_row_once_and_the_binlog_goes_quiet() {
    let (db, aws) = setup(SUPPORT);
    let mut d = start(&db, &[("s", &sentiment_pipeline(&aws, ""))]);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT(IF(seq % 2, 'good ', 'terrible '), seq) FROM shop.seq_1_to_29;
         INSERT INTO shop.support (id, message) VALUES (30, NULL);",
    ));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment IS NOT NULL",
        29,
        60,
    );
    let rows: Vec<(i64, Option<String>, Option<f64>, i64)> = block_on(
        db.query("SELECT id, sentiment, confidence, writes FROM shop.support ORDER BY id"),
    );
    for (id, sentiment, confidence, writes) in &rows {
        if *id == 30 {
            assert_eq!(
                (sentiment.as_deref(), *confidence, *writes),
                (None, None, 0)
            );
        } else if id % 2 == 1 {
            assert_eq!(
                (sentiment.as_deref(), *confidence, *writes),
                (Some("POSITIVE"), Some(0.9), 1),
                "row {id}"
            );
        } else {
            assert_eq!(
                (sentiment.as_deref(), *confidence, *writes),
                (Some("NEGATIVE"), Some(0.92), 1),
                "row {id}"
            );
        }
    }
    // 29 documents, in full batches: N inserts, N documents — the daemon's own updates made none.
    let docs: u64 = aws
        .log()
        .iter()
        .map(|e| e["documents"].as_u64().unwrap())
        .sum();
    assert_eq!(docs, 29);
    // And then nothing moves: no call, no write, no binlog event.
    let (pos, calls) = (master_pos(&db), aws.log().len());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(master_pos(&db), pos, "the binlog went quiet");
    assert_eq!(aws.log().len(), calls);
    let dead: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM shop.cdc_enricher_dead_letters"));
    assert_eq!(dead, vec![0]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn an_older_result_never_lands_over_a_newer_input() {
    let (db, aws) = setup(SUPPORT);
    let mut d = start(&db, &[("s", &sentiment_pipeline(&aws, ""))]);
    // Input A's call takes 1.5 s; meanwhile the row gets input B.
    aws.control(r#"{"delay_ms": 1500}"#);
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'good A')"));
    let start = Instant::now();
    while aws.log().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    block_on(db.exec("UPDATE shop.support SET message = 'terrible B' WHERE id = 1"));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment = 'NEGATIVE'",
        1,
        60,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rows: Vec<(String, String, i64)> =
        block_on(db.query("SELECT message, sentiment, writes FROM shop.support"));
    assert_eq!(
        rows,
        vec![("terrible B".to_string(), "NEGATIVE".to_string(), 1)]
    );
    assert_eq!(aws.log().len(), 2, "A and B were both called");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn kill_9_mid_batch_then_restart_writes_every_result_exactly_once() {
    let (db, aws) = setup(SUPPORT);
    let p = sentiment_pipeline(&aws, "    batch_size: 50\n");
    let mut d = start(&db, &[("s", &p)]);
    aws.control(r#"{"delay_ms": 20}"#);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('good ', seq) FROM shop.seq_1_to_3000",
    ));
    let start = Instant::now();
    loop {
        let n: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM shop.support WHERE writes > 0"));
        if n[0] >= 600 {
            break;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(120), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let at_kill: Vec<i64> =
        block_on(db.query("SELECT COUNT(*) FROM shop.support WHERE writes > 0"));
    assert!(at_kill[0] < 3000, "killed mid-way: {at_kill:?}");
    d.spawn();
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE writes > 0",
        3000,
        180,
    );
    std::thread::sleep(Duration::from_millis(500));
    let w: Vec<(i64, i64, i64)> =
        block_on(db.query("SELECT MIN(writes), MAX(writes), COUNT(*) FROM shop.support"));
    assert_eq!(
        w,
        vec![(1, 1, 3000)],
        "every row's result written exactly once"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_key_change_writes_the_new_key_once_even_when_its_delete_committed_alone() {
    // A key-changing update is a `d` of the old key then a `c` of the new one, at one binlog
    // position. With one record per write-back transaction the `d` commits alone first: the
    // `c` must still be written (it was taken for a replay of what the `d` applied).
    let (db, aws) = setup(&format!(
        "{SUPPORT} CREATE TABLE shop.sent (id INT PRIMARY KEY, sentiment VARCHAR(20));"
    ));
    let side = format!(
        "name: side\ntable: shop.support\ncolumns: [id, message]\n\
         enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 50\n\
         sink:\n  mysql:\n    mode: upsert\n    table: shop.sent\n    user: writer\n    password: writer-secret\n\
         \x20   batch_size: 1\n    columns: {{sentiment: /sentiment}}\n",
        aws.url()
    );
    let in_place = sentiment_pipeline(&aws, "    batch_size: 1\n");
    let mut d = start(&db, &[("s", &in_place), ("side", &side)]);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (1, 'good 1'), (2, 'good 2'), (3, 'good 3')",
    ));
    wait_count(&mut d, &db, "SELECT COUNT(*) FROM shop.sent", 3, 60);
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE writes > 0",
        3,
        60,
    );
    block_on(db.exec(
        "UPDATE shop.support SET id = id + 10, message = CONCAT('terrible ', id) ORDER BY id DESC",
    ));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.sent WHERE id > 10 AND sentiment = 'NEGATIVE'",
        3,
        60,
    );
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment = 'NEGATIVE'",
        3,
        60,
    );
    std::thread::sleep(Duration::from_millis(500));
    let side_rows: Vec<(i64, String)> =
        block_on(db.query("SELECT id, sentiment FROM shop.sent ORDER BY id"));
    let n = |id: i64| (id, "NEGATIVE".to_string());
    assert_eq!(side_rows, vec![n(11), n(12), n(13)]);
    let rows: Vec<(i64, String, String, i64)> =
        block_on(db.query("SELECT id, message, sentiment, writes FROM shop.support ORDER BY id"));
    // MariaDB's SET reads columns left to right: the message has the new id.
    let r = |id: i64| (id, format!("terrible {id}"), "NEGATIVE".to_string(), 2);
    assert_eq!(rows, vec![r(11), r(12), r(13)], "{}", d.log());
    assert_eq!(d.terminate(), 0);
}

#[test]
fn bedrock_summaries_upsert_a_side_table_and_sagemaker_scores_fill_a_column() {
    let (db, aws) = setup(
        "CREATE TABLE shop.articles (id INT PRIMARY KEY, title VARCHAR(100), body TEXT);
         CREATE TABLE shop.summaries (article_id INT PRIMARY KEY, summary TEXT, words INT, model VARCHAR(100));
         CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2), items INT, score DOUBLE);",
    );
    let summaries = format!(
        "name: summaries\ntable: shop.articles\n\
         enrichment:\n  bedrock:\n    model: anthropic.claude-3-haiku-20240307-v1:0\n    prompt: \"Answer in JSON about {{title}}:\\n{{body}}\"\n\
         \x20   max_tokens: 100\n    output: json\n    fields: [summary, words]\n  endpoint_url: {}\n  max_wait_ms: 50\n\
         sink:\n  mysql:\n    mode: upsert\n    table: shop.summaries\n    key: [article_id]\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{summary: /result/summary, words: /result/words, model: /model}}\n",
        aws.url()
    );
    let scores = format!(
        "name: scores\ntable: shop.orders\n\
         enrichment:\n  sagemaker: {{endpoint: anomaly, input: [total, items], returns: double}}\n  endpoint_url: {}\n  max_wait_ms: 100\n\
         sink:\n  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n    columns: {{score: /result}}\n",
        aws.url()
    );
    let mut d = start(&db, &[("summaries", &summaries), ("scores", &scores)]);
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'Binlogs', 'rows carry their before and after image'), (2, 'Quotas', 'keep them busy');
         INSERT INTO shop.orders VALUES (1, 12.50, 3, NULL), (2, 980.00, 40, NULL);",
    ));
    wait_count(&mut d, &db, "SELECT COUNT(*) FROM shop.summaries", 2, 60);
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.orders WHERE score IS NOT NULL",
        2,
        60,
    );
    let s: Vec<(i64, String, i64, String)> =
        block_on(db.query(
            "SELECT article_id, summary, words, model FROM shop.summaries ORDER BY article_id",
        ));
    let model = "anthropic.claude-3-haiku-20240307-v1:0".to_string();
    assert_eq!(
        s,
        vec![
            (
                1,
                "rows carry their before and".to_string(),
                7,
                model.clone()
            ),
            (2, "keep them busy".to_string(), 3, model.clone()),
        ]
    );
    let o: Vec<(i64, f64)> = block_on(db.query("SELECT id, score FROM shop.orders ORDER BY id"));
    assert_eq!(o, vec![(1, 0.155), (2, 10.2)]);
    // A new body replaces the summary in place.
    block_on(db.exec("UPDATE shop.articles SET body = 'short now' WHERE id = 1"));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.summaries WHERE summary = 'short now'",
        1,
        60,
    );
    let n: Vec<i64> = block_on(db.query("SELECT COUNT(*) FROM shop.summaries"));
    assert_eq!(n, vec![2]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn refused_values_and_poison_rows_become_dead_letter_rows_and_lost_connections_are_retried() {
    let (db, aws) = setup(&format!(
        "{SUPPORT} ALTER TABLE shop.support ADD CONSTRAINT no_negative CHECK (sentiment <> 'NEGATIVE');"
    ));
    let mut d = start(&db, &[("s", &sentiment_pipeline(&aws, ""))]);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (1, 'good'), (2, 'terrible'), (3, 'please [[reject]] me'), (4, 'great')",
    ));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.cdc_enricher_dead_letters",
        2,
        60,
    );
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment = 'POSITIVE'",
        2,
        60,
    );
    let dead: Vec<(String, String, String)> = block_on(db.query(
        "SELECT pipeline, record_key, error FROM shop.cdc_enricher_dead_letters ORDER BY id",
    ));
    assert_eq!(dead[0].0, "support_sentiment");
    assert_eq!(dead[0].1, r#"{"id":2}"#);
    assert!(
        dead[0].2.starts_with("the database refused the value:")
            && dead[0].2.contains("no_negative"),
        "{dead:?}"
    );
    assert_eq!(dead[1].1, r#"{"id":3}"#);
    assert_eq!(
        dead[1].2,
        "bad_input: INVALID_REQUEST: the document was rejected (attempts: 1)"
    );
    // The writer's connection killed: the next batch is retried on a new one and written once.
    let ids: Vec<i64> =
        block_on(db.query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'writer'"));
    assert!(!ids.is_empty());
    for id in ids {
        block_on(db.exec(&format!("KILL CONNECTION {id}")));
    }
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (5, 'happy')"));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment = 'POSITIVE'",
        3,
        60,
    );
    let w: Vec<(i64, i64)> = block_on(db.query("SELECT id, writes FROM shop.support ORDER BY id"));
    assert_eq!(w, vec![(1, 1), (2, 0), (3, 0), (4, 1), (5, 1)]);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn an_output_column_of_the_wrong_type_is_a_startup_error() {
    let (db, aws) = setup(
        "CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, sentiment VARCHAR(20) CHARACTER SET latin1, confidence INT);",
    );
    let d = Daemon::new(&db, None, &[("s", &sentiment_pipeline(&aws, ""))]);
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipeline `support_sentiment` (pipelines/s.yaml): sink.mysql.columns.confidence: `shop`.`support`.`confidence` is INT(11), which cannot hold a number at /confidence\n    \
         fix: make `confidence` a DOUBLE or DECIMAL column\n\
         error: pipeline `support_sentiment` (pipelines/s.yaml): sink.mysql.columns.sentiment: `shop`.`support`.`sentiment` is VARCHAR(20) CHARACTER SET latin1, which cannot hold text at /sentiment\n    \
         fix: make `sentiment` a utf8mb4 VARCHAR, TEXT or JSON column\n\
         error: preflight check failed (2 problems, listed above)\n"
    );
    // `run` refuses to start the same way.
    let out = d
        .command(&["run", "-c", "cdc-enricher.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// What no retry cures — a grant revoked, a column of the side table dropped — stops the
/// write-back with the server's message and the fix (instead of retrying forever); the rows
/// not written are read again after the fix and a restart.
#[test]
fn a_revoked_grant_or_a_dropped_column_stops_the_write_back_with_the_fix_and_loses_no_row() {
    let (db, aws) = setup(SUPPORT);
    let p = sentiment_pipeline(&aws, "");
    let mut d = start(&db, &[("s", &p)]);
    let written = "SELECT COUNT(*) FROM shop.support WHERE sentiment IS NOT NULL";
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (1, 'good one')"));
    wait_count(&mut d, &db, written, 1, 60);

    block_on(db.exec("REVOKE UPDATE ON shop.* FROM 'writer'@'127.0.0.1'"));
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (2, 'terrible two')"));
    assert_eq!(d.wait_exit(60), 1);
    let log = d.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: write-back of pipeline `support_sentiment`: the database refused the write-back:")
            && last.contains("UPDATE command denied to user 'writer'")
            && last.contains("grant the write-back account"),
        "{log}"
    );
    block_on(db.exec("GRANT UPDATE ON shop.* TO 'writer'@'127.0.0.1'"));
    d.spawn();
    wait_count(&mut d, &db, written, 2, 60);

    block_on(db.exec(
        "ALTER TABLE shop.support DROP COLUMN confidence;
         INSERT INTO shop.support (id, message) VALUES (3, 'good three');",
    ));
    assert_eq!(d.wait_exit(60), 1);
    let log = d.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("Unknown column 'confidence'") && last.contains("add the column back"),
        "{log}"
    );
    block_on(db.exec("ALTER TABLE shop.support ADD COLUMN confidence DOUBLE AFTER sentiment"));
    d.spawn();
    wait_count(&mut d, &db, written, 3, 60);
    let rows: Vec<(i64, Option<String>, Option<f64>)> =
        block_on(db.query("SELECT id, sentiment, confidence FROM shop.support ORDER BY id"));
    // (The column dropped and added again lost the confidences written before.)
    assert_eq!(
        rows,
        vec![
            (1, Some("POSITIVE".to_string()), None),
            (2, Some("NEGATIVE".to_string()), None),
            (3, Some("POSITIVE".to_string()), Some(0.9)),
        ]
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_row_whose_new_input_fails_for_good_loses_the_older_inputs_result() {
    // The result in the row was its older message's; the new message goes to the dead
    // letters: the row keeps no result that does not match it (cleared in the same
    // transaction as the dead-letter row; a row that never had one is not touched).
    let (db, aws) = setup(SUPPORT);
    let mut d = start(&db, &[("s", &sentiment_pipeline(&aws, ""))]);
    block_on(db.exec(
        "INSERT INTO shop.support (id, message) VALUES (1, 'love it'), (2, 'so [[reject]] it')",
    ));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.support WHERE sentiment = 'POSITIVE'",
        1,
        60,
    );
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.cdc_enricher_dead_letters",
        1,
        60,
    );
    block_on(db.exec("UPDATE shop.support SET message = 'this [[reject]] now' WHERE id = 1"));
    wait_count(
        &mut d,
        &db,
        "SELECT COUNT(*) FROM shop.cdc_enricher_dead_letters",
        2,
        60,
    );
    type Row = (i64, String, Option<String>, Option<f64>, i64);
    let rows: Vec<Row> = block_on(
        db.query("SELECT id, message, sentiment, confidence, writes FROM shop.support ORDER BY id"),
    );
    assert_eq!(
        rows,
        vec![
            (1, "this [[reject]] now".to_string(), None, None, 2),
            (2, "so [[reject]] it".to_string(), None, None, 0),
        ]
    );
    let dead: Vec<String> =
        block_on(db.query("SELECT record_key FROM shop.cdc_enricher_dead_letters ORDER BY id"));
    assert_eq!(
        dead,
        vec![r#"{"id":2}"#.to_string(), r#"{"id":1}"#.to_string()]
    );
    assert_eq!(d.terminate(), 0);
}
