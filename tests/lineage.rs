//! Lineage and re-enrichment: every enrichment names what produced it (a hash of the backend,
//! model, prompt and parameters); after a prompt change `reenrich` calls the model again for
//! exactly the rows whose stored lineage is the old one — against the spawned MariaDB, the AWS
//! stand-in and the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SETUP: &str = "CREATE DATABASE shop;
    CREATE TABLE shop.articles (id INT PRIMARY KEY, body TEXT, summary VARCHAR(200),
      summary_lineage CHAR(16));
    CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
    GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON shop.* TO 'writer'@'127.0.0.1';
    GRANT CREATE, SELECT, INSERT, UPDATE ON shop.cdc_signal TO 'cdc'@'127.0.0.1';";

fn pipeline(aws: &AwsStandin, prompt: &str) -> String {
    format!(
        "name: summaries\ntable: shop.articles\ncolumns: [id, body]\n\
         enrichment:\n  bedrock:\n    model: anthropic.claude-3-haiku-20240307-v1:0\n    prompt: \"{prompt}\"\n    max_tokens: 50\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 50\n  timeout_ms: 5000\n\
         \x20 prices: {{per_call: 0.01, per_1k_output_tokens: 2}}\n\
         sink:\n  mysql:\n    mode: update\n    user: writer\n    password: writer-secret\n\
         \x20   columns: {{summary: /result, summary_lineage: /lineage}}\n",
        aws.url()
    )
}

fn daemon(db: &MariaDb, aws: &AwsStandin, prompt: &str) -> Daemon {
    let mut d = Daemon::with_config(
        db,
        None,
        &[("summaries", &pipeline(aws, prompt))],
        "snapshot:\n  signal_table: shop.cdc_signal\n",
    );
    d.env = AwsStandin::env();
    d
}

/// Waits until every row of `ids` has a summary of lineage `lineage` (any lineage: `None`);
/// returns (id, summary, lineage) of every row.
fn wait_rows(
    d: &mut Daemon,
    db: &MariaDb,
    n: usize,
    lineage: Option<&str>,
) -> Vec<(i64, String, String)> {
    let start = Instant::now();
    loop {
        let rows: Vec<(i64, Option<String>, Option<String>)> = block_on(
            db.query("SELECT id, summary, summary_lineage FROM shop.articles ORDER BY id"),
        );
        let done: Vec<(i64, String, String)> = rows
            .iter()
            .filter_map(|(id, s, l)| Some((*id, s.clone()?, l.clone()?)))
            .filter(|(_, _, l)| lineage.is_none_or(|want| l == want))
            .collect();
        if done.len() == n {
            return done;
        }
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{rows:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cdc-enricher COMMAND -c cdc-enricher.yaml ARGS…` in the daemon's folder: (exit code,
/// stdout, stderr).
fn cli(d: &Daemon, command: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![command, "-c", "cdc-enricher.yaml"];
    all.extend_from_slice(args);
    let out = d.command(&all).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same, which must succeed: its stdout.
fn cli_ok(d: &Daemon, command: &str, args: &[&str]) -> String {
    let (code, out, err) = cli(d, command, args);
    assert_eq!(code, 0, "{command} {args:?}: {out}{err}");
    out
}

/// The prompts of the Bedrock calls in `log`.
fn prompts(log: &[Value]) -> Vec<String> {
    log.iter()
        .filter(|e| e["target"] == "bedrock:InvokeModel")
        .map(|e| {
            e["request"]["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn reenrich_after_a_prompt_change_calls_again_exactly_the_rows_of_the_old_lineage() {
    let db = MariaDb::start();
    block_on(db.exec(SETUP));
    let aws = AwsStandin::start();
    // Rows 1–5 under prompt A.
    let mut d = daemon(&db, &aws, "Summarize {body}");
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles (id, body) SELECT seq, CONCAT('alpha beta gamma delta epsilon ', seq) FROM shop.seq_1_to_5",
    ));
    let old = wait_rows(&mut d, &db, 5, None);
    let la = old[0].2.clone();
    assert!(old.iter().all(|r| r.2 == la), "{old:?}");
    assert_eq!(old[0].1, "summary: Summarize alpha beta gamma delta");
    d.terminate();

    // Prompt B: a new lineage; rows 6–7 are enriched under it.
    std::fs::write(
        d.dir.path().join("pipelines/summaries.yaml"),
        pipeline(&aws, "Summarize briefly:\\n{body}"),
    )
    .unwrap();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles (id, body) VALUES (6, 'one two three four five six'), (7, 'seven eight nine')",
    ));
    let rows = wait_rows(&mut d, &db, 7, None);
    let lb = rows[5].2.clone();
    assert_ne!(lb, la, "a new prompt is a new lineage");
    assert_eq!(rows[6].2, lb);
    assert_eq!(rows[5].1, "summary: one two three four five");

    // The dry run reads the rows, counts, and sends nothing: 5 prompts of 51 bytes (13 tokens
    // each at 4 bytes a token), 50 output tokens each at most; 5 calls at 0.01 and 250 output
    // tokens at 2 per 1,000: 0.55.
    let before = aws.log().len();
    let stdout = cli_ok(&d, "reenrich", &["summaries", "--dry-run"]);
    assert_eq!(
        stdout.trim(),
        format!(
            "dry run of the re-enrichment of `summaries` (the rows whose `summary_lineage` is not \
             {lb}, lineage {lb}) (nothing was sent): 7 rows read, 5 would be emitted; 5 need a call \
             (5 distinct inputs), 0 have no input, 0 would be dead letters; 5 calls; tokens at most \
             315 (65 input, estimated at 4 bytes a token; 250 output, at the max_tokens ceiling); \
             cost at most 0.5500 (enrichment.prices)"
        )
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(aws.log().len(), before, "a dry run calls nothing");
    let requests: Vec<i64> =
        block_on(db.query("SELECT COUNT(*) FROM shop.cdc_signal WHERE kind = 'backfill'"));
    assert_eq!(requests, vec![0], "a dry run requests nothing");

    let stdout = cli_ok(&d, "reenrich", &["summaries"]);
    assert!(
        stdout.contains(&format!("the rows whose `summary_lineage` is not {lb}")),
        "{stdout}"
    );
    let rows = wait_rows(&mut d, &db, 7, Some(&lb));
    for (id, summary, _) in &rows[..5] {
        assert_eq!(
            summary, "summary: alpha beta gamma delta epsilon",
            "row {id}"
        );
    }
    // Give a stray call time to show, then: exactly rows 1–5 were asked again, once each.
    std::thread::sleep(Duration::from_millis(500));
    let mut again = prompts(&aws.log()[before..]);
    again.sort();
    let want: Vec<String> = (1..=5)
        .map(|i| format!("Summarize briefly:\nalpha beta gamma delta epsilon {i}"))
        .collect();
    assert_eq!(again, want);
    d.terminate();
}

/// A pipeline whose sink stores no lineage in the source row is re-enriched whole; one
/// without an enrichment is refused with the reason.
#[test]
fn reenrich_says_what_it_asks_for() {
    let db = MariaDb::start();
    block_on(db.exec(SETUP));
    let aws = AwsStandin::start();
    let kafka_p = pipeline(&aws, "Summarize {body}")
        .split("sink:")
        .next()
        .unwrap()
        .to_string()
        + "sink:\n  jsonl:\n    path: out.jsonl\n";
    let plain = "name: plain\ntable: shop.articles\nsink:\n  jsonl:\n    path: plain.jsonl\n";
    let mut d = Daemon::with_config(
        &db,
        None,
        &[("summaries", &kafka_p), ("plain", plain)],
        "snapshot:\n  signal_table: shop.cdc_signal\n",
    );
    d.env = AwsStandin::env();
    // backfill --dry-run: of rows 2–5 (--where), row 3 has no text and rows 4 and 5 the same
    // text (one call for both).
    block_on(db.exec(
        "INSERT INTO shop.articles (id, body) VALUES (1, 'a b'), (2, 'c d'), (3, NULL), (4, 'e f'), (5, 'e f')",
    ));
    assert_eq!(
        cli_ok(
            &d,
            "backfill",
            &["summaries", "--where", "id > 1", "--dry-run"]
        )
        .trim(),
        "dry run of the backfill of `summaries` (nothing was sent): 5 rows read, 4 would be \
         emitted; 3 need a call (2 distinct inputs), 1 have no input, 0 would be dead letters; 2 \
         calls; tokens at most 108 (8 input, estimated at 4 bytes a token; 100 output, at the \
         max_tokens ceiling); cost at most 0.2200 (enrichment.prices)"
    );
    assert_eq!(
        cli_ok(&d, "backfill", &["plain", "--dry-run"]).trim(),
        "dry run of the backfill of `plain` (nothing was sent): 5 rows read, 5 would be emitted; \
         the pipeline enriches nothing: no calls"
    );
    let stdout = cli_ok(&d, "reenrich", &["summaries", "--where", "id > 3"]);
    assert!(
        stdout.contains(
            "every row matching `id > 3` (the sink stores no lineage in the source row to compare)"
        ),
        "{stdout}"
    );
    let (code, _, err) = cli(&d, "reenrich", &["plain"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "pipeline `plain` (pipelines/plain.yaml): it has no enrichment: there is nothing to re-enrich"
        ),
        "{err}"
    );
}

fn hup(d: &Daemon) {
    let pid = d.child.as_ref().expect("running").id();
    let s = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

/// With `reenrich_on_change`, a hot reload that changes the prompt starts the re-enrichment
/// by itself: every row gets the new prompt's answer and lineage, with no command run.
#[test]
fn a_reload_that_changes_the_lineage_enriches_the_rows_again_by_itself() {
    let db = MariaDb::start();
    block_on(db.exec(SETUP));
    let aws = AwsStandin::start();
    let with = |prompt: &str| {
        pipeline(&aws, prompt).replace("  prices:", "  reenrich_on_change: true\n  prices:")
    };
    let mut d = Daemon::with_config(
        &db,
        None,
        &[("summaries", &with("Summarize {body}"))],
        "snapshot:\n  signal_table: shop.cdc_signal\n",
    );
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles (id, body) SELECT seq, CONCAT('alpha beta gamma delta epsilon ', seq) FROM shop.seq_1_to_3",
    ));
    let old = wait_rows(&mut d, &db, 3, None);
    let la = old[0].2.clone();
    std::fs::write(
        d.dir.path().join("pipelines/summaries.yaml"),
        with("Summarize briefly:\\n{body}"),
    )
    .unwrap();
    hup(&d);
    let start = Instant::now();
    loop {
        let rows: Vec<(i64, Option<String>, Option<String>)> = block_on(
            db.query("SELECT id, summary, summary_lineage FROM shop.articles ORDER BY id"),
        );
        let done = rows.iter().all(|(_, s, l)| {
            s.as_deref() == Some("summary: alpha beta gamma delta epsilon")
                && l.as_deref().is_some_and(|l| l != la)
        });
        if done {
            break;
        }
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{rows:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        d.log()
            .contains("the reload changed the pipeline's lineage"),
        "{}",
        d.log()
    );
    d.terminate();
}
