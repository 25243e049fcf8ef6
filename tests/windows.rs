//! Prompts over windows of rows (`enrichment.window`) through the real binary, MariaDB, tansu
//! and the AWS stand-in: one call and one record (`op: "w"`) per window, the exact prompt the
//! model got, windows rebuilt from the same rows (same id, same rows) across a graceful
//! restart and a `kill -9`, time windows per group closed by the stream, and rows that join no
//! window (deletes) acknowledged without holding the checkpoint.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn digest_pipeline(aws: &AwsStandin) -> String {
    format!(
        "name: digest\ntable: support.messages\n\
         enrichment:\n  bedrock:\n    model: \"{MODEL}\"\n\
         \x20   prompt: \"Summarize these {{count}} support messages:\\n{{rows}}\"\n    max_tokens: 50\n\
         \x20 window:\n    rows: 20\n    row: \"- {{subject}}: {{body}}\"\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 20\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: digest\n",
        aws.url()
    )
}

/// A server with `support.messages (id, channel, subject, body)`.
fn messages_db() -> MariaDb {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE support; CREATE TABLE support.messages \
         (id INT PRIMARY KEY, channel VARCHAR(10), subject VARCHAR(100), body TEXT);",
    ));
    db
}

/// The stand-in's answer to a window whose last row is `i`: the first five words of the
/// prompt's last line, row `i`'s section.
fn summary_of(i: i64) -> String {
    let section = section(i);
    let words: Vec<&str> = section.split(' ').take(5).collect();
    format!("summary: {}", words.join(" "))
}

fn insert(db: &MariaDb, ids: std::ops::RangeInclusive<i64>) {
    let sql: String = ids
        .map(|i| {
            format!("INSERT INTO support.messages VALUES ({i}, 'mail', 's{i}', 'b{i} x y z');\n")
        })
        .collect();
    block_on(db.exec(&sql));
}

/// The section of row `i` as the window's `row` template renders it.
fn section(i: i64) -> String {
    format!("- s{i}: b{i} x y z")
}

fn ids(w: &Value) -> Vec<i64> {
    w["window"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_twenty_row_window_is_one_call_and_one_record_through_restart_and_kill_9() {
    let db = messages_db();
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let body = digest_pipeline(&aws);
    let mut d = Daemon::new(&db, Some(&kafka), &[("digest", &body)]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("digest");

    // 30 rows: one window of 20, 10 left open.
    insert(&db, 1..=30);
    wait_records(&mut d, &mut tail, 1, 60);
    let w = tail.records[0].json();
    assert_eq!(w["op"], "w");
    assert_eq!(ids(&w), (1..=20).collect::<Vec<_>>());
    assert_eq!(w["window"]["rows"], 20);
    assert_eq!(w["before"], Value::Null);
    assert_eq!(w["source"]["table"], "messages");
    assert_eq!(w["enrichment"]["result"], summary_of(20));
    assert_eq!(w["enrichment"]["model"], MODEL);
    let prompt = format!(
        "Summarize these 20 support messages:\n{}",
        (1..=20).map(section).collect::<Vec<_>>().join("\n")
    );
    let calls: Vec<Value> = aws
        .log()
        .into_iter()
        .filter(|e| e["model"] == MODEL)
        .collect();
    assert_eq!(calls.len(), 1, "one call for 20 rows: {calls:?}");
    assert_eq!(
        calls[0]["request"]["messages"][0]["content"][0]["text"],
        json!(prompt),
        "{:?}",
        calls[0]["request"]
    );

    // A graceful restart with 10 rows in the open window: they are not sent, and come again.
    assert_eq!(d.terminate(), 0, "{}", d.log());
    assert!(
        d.log()
            .contains("stopping with open windows: their rows are read again after the restart"),
        "{}",
        d.log()
    );
    d.spawn();
    insert(&db, 31..=40);
    wait_records(&mut d, &mut tail, 2, 60);
    assert_eq!(ids(&tail.records[1].json()), (21..=40).collect::<Vec<_>>());

    // A kill -9 with 15 rows in the open window (read, and the checkpoint written since).
    insert(&db, 41..=55);
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    d.spawn();
    insert(&db, 56..=60);
    wait_records(&mut d, &mut tail, 3, 60);
    tail.drain(Duration::from_secs(2));

    // Every window once per id; a repeat (none expected here) would be the same record.
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &tail.records {
        let v = r.json();
        by_id
            .entry(v["window"]["id"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    let mut windows: Vec<Vec<i64>> = by_id.values().map(|v| ids(&v[0])).collect();
    windows.sort();
    assert_eq!(
        windows,
        vec![
            (1..=20).collect::<Vec<_>>(),
            (21..=40).collect(),
            (41..=60).collect()
        ]
    );
    assert_eq!(
        tail.records.len(),
        3,
        "one record per window: {:?}",
        tail.records
    );
    // Three calls in all: the open windows' rows were never sent alone.
    let n = aws.log().iter().filter(|e| e["model"] == MODEL).count();
    assert_eq!(n, 3);
    d.terminate();
}

#[test]
fn time_windows_per_group_close_by_the_stream_and_deletes_join_none() {
    let db = messages_db();
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let body = format!(
        "name: by_channel\ntable: support.messages\n\
         enrichment:\n  bedrock:\n    model: \"{MODEL}\"\n\
         \x20   prompt: \"[{{channel}}] {{count}} messages:\\n{{rows}}\"\n    max_tokens: 50\n\
         \x20 window:\n    every: 2s\n    group: channel\n    row: \"{{body}}\"\n    separator: \" | \"\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 20\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: by_channel\n",
        aws.url()
    );
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("by_channel", &body)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("by_channel");
    // One transaction (one commit time): both groups' windows hold all their rows.
    block_on(db.exec(
        "BEGIN;
         INSERT INTO support.messages VALUES (1, 'mail', 's', 'refund please');
         INSERT INTO support.messages VALUES (2, 'chat', 's', 'login broken');
         INSERT INTO support.messages VALUES (3, 'mail', 's', 'invoice wrong');
         DELETE FROM support.messages WHERE id = 2;
         COMMIT;",
    ));
    // Nothing else is written: the windows close once the reader, at the end of the binlog,
    // is a second past their end (heartbeats every 500 ms).
    wait_records(&mut d, &mut tail, 2, 30);
    tail.drain(Duration::from_secs(1));
    assert_eq!(tail.records.len(), 2, "{:?}", tail.records);
    let mut got: Vec<(Option<String>, Vec<i64>, Value)> = tail
        .records
        .iter()
        .map(|r| {
            let v = r.json();
            (r.key.clone(), ids(&v), v["window"]["group"].clone())
        })
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (
                Some(r#"{"channel":"mail"}"#.to_string()),
                vec![1, 3],
                json!({"channel": "mail"})
            ),
            (
                Some(r#"{"channel":"chat"}"#.to_string()),
                vec![2],
                json!({"channel": "chat"})
            ),
        ]
    );
    let prompts: Vec<Value> = aws
        .log()
        .into_iter()
        .filter(|e| e["model"] == MODEL)
        .map(|e| e["request"]["messages"][0]["content"][0]["text"].clone())
        .collect();
    let mut prompts: Vec<&str> = prompts.iter().map(|p| p.as_str().unwrap()).collect();
    prompts.sort();
    assert_eq!(
        prompts,
        vec![
            "[chat] 1 messages:\nlogin broken",
            "[mail] 2 messages:\nrefund please | invoice wrong"
        ]
    );
    let (_, metrics) = http_get(port, "/metrics");
    for (name, want) in [
        ("cdc_enricher_windows_total", 2.0),
        ("cdc_enricher_window_rows_total", 3.0),
        ("cdc_enricher_window_rows_skipped_total", 1.0),
        ("cdc_enricher_window_open_rows", 0.0),
    ] {
        let series = format!("{name}{{pipeline=\"by_channel\"}}");
        assert_eq!(value(&metrics, &series), Some(want), "{series}\n{metrics}");
    }
    // Nothing holds the checkpoint: it reaches the end of the binlog.
    let rows: Vec<(String, u64, String, String)> = block_on(db.query("SHOW MASTER STATUS"));
    let end = (rows[0].0.clone(), rows[0].1);
    let start = std::time::Instant::now();
    loop {
        let cp = d.checkpoint().unwrap_or_default();
        let at = (
            cp["position"]["file"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            cp["position"]["pos"].as_u64().unwrap_or_default(),
        );
        if at == end {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "checkpoint {cp} short of the end {end:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.terminate();
}

#[test]
fn windows_are_upserted_into_a_side_table_by_their_id_once_each_across_kill_9() {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE support; CREATE TABLE support.messages \
         (id INT PRIMARY KEY, channel VARCHAR(10), subject VARCHAR(100), body TEXT);
         CREATE TABLE support.digests (window_id CHAR(16) PRIMARY KEY, summary TEXT,
           row_count INT, first_ts BIGINT, message_keys JSON, model VARCHAR(100));
         CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON support.* TO 'writer'@'127.0.0.1';",
    ));
    let aws = AwsStandin::start();
    let body = format!(
        "name: digest\ntable: support.messages\n\
         enrichment:\n  bedrock:\n    model: \"{MODEL}\"\n\
         \x20   prompt: \"Summarize these {{count}} support messages:\\n{{rows}}\"\n    max_tokens: 50\n\
         \x20 window:\n    rows: 5\n    row: \"- {{subject}}: {{body}}\"\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 20\n  timeout_ms: 5000\n\
         sink:\n  mysql:\n    mode: upsert\n    table: support.digests\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{summary: /result, row_count: /window/rows, first_ts: /window/first_ts_ms, \
         message_keys: /window/keys, model: /model}}\n",
        aws.url()
    );
    let mut d = Daemon::new(&db, None, &[("digest", &body)]);
    d.env = AwsStandin::env();
    let (code, out, err) = d.check();
    assert_eq!(code, 0, "{out}{err}");
    d.spawn();
    let digests = |db: &MariaDb| -> Vec<(String, String, i64, String)> {
        block_on(db.query_or_empty(
            "SELECT window_id, summary, row_count, message_keys FROM support.digests ORDER BY first_ts, message_keys",
        ))
    };
    let wait_rows = |d: &mut Daemon, n: usize| {
        let start = std::time::Instant::now();
        while digests(&db).len() < n {
            d.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{:?}\n{}",
                digests(&db),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    insert(&db, 1..=7);
    wait_rows(&mut d, 1);
    // Killed with two rows in the open window and, perhaps, the first window's checkpoint
    // not yet written: the first window may be written again — onto its own row.
    d.kill9();
    d.spawn();
    insert(&db, 8..=10);
    wait_rows(&mut d, 2);
    std::thread::sleep(Duration::from_secs(1));
    let got = digests(&db);
    assert_eq!(got.len(), 2, "{got:?}");
    let dead: Vec<i64> =
        block_on(db.query("SELECT COUNT(*) FROM support.cdc_enricher_dead_letters"));
    assert_eq!(dead, vec![0], "no window refused by the side table");
    let keys = |ids: std::ops::RangeInclusive<i64>| {
        serde_json::to_string(&ids.map(|i| json!({ "id": i })).collect::<Vec<_>>()).unwrap()
    };
    for (row, ids) in got.iter().zip([1..=5, 6..=10]) {
        assert_eq!(row.0.len(), 16, "{row:?}");
        assert_eq!(row.2, 5);
        let stored: Value = serde_json::from_str(&row.3).unwrap();
        assert_eq!(stored.to_string(), keys(ids.clone()), "{row:?}");
        assert_eq!(row.1, summary_of(*ids.end()));
    }
    d.terminate();
}

#[test]
fn windows_of_other_groups_delivered_before_a_kill_9_are_not_rebuilt_with_other_edges() {
    let db = messages_db();
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let body = format!(
        "name: grouped\ntable: support.messages\n\
         enrichment:\n  bedrock:\n    model: \"{MODEL}\"\n\
         \x20   prompt: \"{{channel}}: {{rows}}\"\n    max_tokens: 50\n\
         \x20 window:\n    rows: 3\n    group: channel\n    row: \"{{body}}\"\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 20\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: grouped\n",
        aws.url()
    );
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("grouped", &body)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("grouped");
    let put = |rows: &[(i64, &str)]| {
        let sql: String = rows
            .iter()
            .map(|(i, c)| {
                format!("INSERT INTO support.messages VALUES ({i}, '{c}', 's', 'b{i}');\n")
            })
            .collect();
        block_on(db.exec(&sql));
    };
    // `mail` opens a window with row 2 and waits; `chat` delivers two windows meanwhile. The
    // checkpoint stays before row 2, so a restart reads chat's rows 3 to 11 again.
    put(&[(1, "chat"), (2, "mail"), (3, "chat"), (5, "chat")]);
    put(&[(7, "chat"), (9, "chat"), (11, "chat")]);
    wait_records(&mut d, &mut tail, 2, 60);
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    d.spawn();
    put(&[(12, "mail"), (13, "mail")]);
    put(&[(14, "chat"), (15, "chat"), (16, "chat")]);
    wait_records(&mut d, &mut tail, 4, 60);
    tail.drain(Duration::from_secs(2));
    let windows: Vec<(String, Vec<i64>)> = tail
        .records
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["window"]["group"]["channel"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                ids(&v),
            )
        })
        .collect();
    assert_eq!(
        windows,
        vec![
            ("chat".to_string(), vec![1, 3, 5]),
            ("chat".to_string(), vec![7, 9, 11]),
            ("mail".to_string(), vec![2, 12, 13]),
            ("chat".to_string(), vec![14, 15, 16]),
        ]
    );
    let (_, metrics) = http_get(port, "/metrics");
    let replayed = value(
        &metrics,
        "cdc_enricher_window_rows_replayed_total{pipeline=\"grouped\"}",
    );
    assert_eq!(replayed, Some(5.0), "chat's 3 to 11, read again\n{metrics}");
    d.terminate();
}

/// `cdc-enricher COMMAND -c cdc-enricher.yaml ARGS…` in the daemon's folder, which must
/// succeed: its stdout.
fn cli_ok(d: &Daemon, command: &str, args: &[&str]) -> String {
    let mut all = vec![command, "-c", "cdc-enricher.yaml"];
    all.extend_from_slice(args);
    let out = d.command(&all).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{all:?}: {stdout}{stderr}");
    stdout.into_owned()
}

#[test]
fn a_dry_run_gathers_the_rows_into_windows_by_group_and_sends_nothing() {
    let db = messages_db();
    let aws = AwsStandin::start();
    let p = format!(
        "name: digest\ntable: support.messages\n\
         enrichment:\n  bedrock:\n    model: \"{MODEL}\"\n\
         \x20   prompt: \"Summarize these {{count}} support messages:\\n{{rows}}\"\n    max_tokens: 50\n\
         \x20 window:\n    rows: 3\n    group: channel\n    row: \"- {{subject}}: {{body}}\"\n\
         \x20 endpoint_url: {}\n  prices:\n    per_call: 0.01\n\
         sink:\n  jsonl:\n    path: out.jsonl\n",
        aws.url()
    );
    let mut d = Daemon::with_config(&db, None, &[("digest", &p)], "");
    d.env = AwsStandin::env();
    insert(&db, 1..=7);
    block_on(db.exec(
        "INSERT INTO support.messages VALUES (8, 'chat', 's8', 'b8 x y z'), \
         (9, 'chat', 's9', 'b9 x y z'), (10, 'chat', NULL, NULL)",
    ));
    // Windows of three rows per channel: mail [1 2 3] [4 5 6] [7], chat [8 9]; row 10 has
    // no text and joins none. One call each (Bedrock takes one prompt a call).
    let prompt = |ids: &[i64]| {
        let rows: Vec<String> = ids.iter().map(|i| section(*i)).collect();
        format!(
            "Summarize these {} support messages:\n{}",
            ids.len(),
            rows.join("\n")
        )
    };
    let input: usize = [&[1, 2, 3][..], &[4, 5, 6], &[7], &[8, 9]]
        .iter()
        .map(|w| prompt(w).len().div_ceil(4))
        .sum();
    assert_eq!(
        cli_ok(&d, "backfill", &["digest", "--dry-run"]).trim(),
        format!(
            "dry run of the backfill of `digest` (nothing was sent): 10 rows read, 10 would be \
             emitted; 9 would join 4 windows (4 distinct; by group, closed at `rows` or \
             `max_bytes`), 1 have no input; 4 calls; \
             tokens at most {} ({input} input, estimated at 4 bytes a token; 200 output, at the \
             max_tokens ceiling); cost at most 0.0400 (enrichment.prices)",
            input + 200
        )
    );
    // With `every` too, the same windows — said to be a floor.
    let timed = p.replace("    rows: 3\n", "    rows: 3\n    every: 1h\n");
    let mut d2 = Daemon::with_config(&db, None, &[("digest", &timed)], "");
    d2.env = AwsStandin::env();
    let out = cli_ok(&d2, "backfill", &["digest", "--dry-run"]);
    assert!(
        out.contains("; 9 would join 4 windows (4 distinct;")
            && out.trim_end().ends_with(
                "— for these windows: a backfill that outlasts `every` closes more, each with \
                 its call, prompt and answer"
            ),
        "{out}"
    );
    assert!(aws.log().is_empty(), "a dry run calls nothing");
}
