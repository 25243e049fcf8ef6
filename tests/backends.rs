//! SageMaker and Bedrock end to end: rows into MariaDB → the real AWS SDK → the local stand-in
//! → the exact enrichment in the Kafka record; plus the limits every backend shares (a token
//! bucket at the service, an assumed role, a profile, a budget).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn enrichments(tail: &Tail) -> Vec<Value> {
    tail.records
        .iter()
        .map(|r| sans_lineage(r.json()["enrichment"].clone()))
        .collect()
}

fn setup(sql: &str) -> (MariaDb, Kafka, AwsStandin) {
    let db = MariaDb::start();
    block_on(db.exec(&format!("CREATE DATABASE shop; {sql}")));
    (db, Kafka::start(), AwsStandin::start())
}

const ORDERS: &str =
    "CREATE TABLE shop.orders (id INT PRIMARY KEY, amount DECIMAL(10,2), items INT, note VARCHAR(50));";

fn sagemaker(aws: &AwsStandin, extra: &str) -> String {
    format!(
        "name: scores\ntable: shop.orders\n\
         enrichment:\n  sagemaker:\n    endpoint: anomaly\n    input: [amount, items, note]\n    returns: double\n{extra}\
         \x20 endpoint_url: {}\n  max_wait_ms: 300\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: scores\n    dead_letter_topic: scores.dead\n",
        aws.url()
    )
}

#[test]
fn sagemaker_csv_batches_typed_results() {
    let (db, kafka, aws) = setup(ORDERS);
    let p = sagemaker(&aws, "").replace(
        "  max_wait_ms: 300\n",
        "  max_wait_ms: 300\n  max_batch_size: 3\n",
    );
    let mut d = Daemon::new(&db, Some(&kafka), &[("scores", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("scores");
    // Row 4's note holds a comma: quoted, it is one field the endpoint cannot add up; sent
    // unquoted it would add 10 to the score.
    block_on(db.exec(
        "INSERT INTO shop.orders VALUES (1, 12.50, 3, 'ok'), (2, 100.00, 1, NULL), (3, 0.25, 0, 'say \"hi\"'), (4, 1.00, 2, '5,5');",
    ));
    wait_records(&mut d, &mut tail, 4, 60);
    let results: Vec<Value> = enrichments(&tail);
    assert_eq!(
        results,
        vec![
            json!({"backend": "sagemaker", "endpoint": "anomaly", "result": 0.155}),
            json!({"backend": "sagemaker", "endpoint": "anomaly", "result": 1.01}),
            json!({"backend": "sagemaker", "endpoint": "anomaly", "result": 0.0025}),
            json!({"backend": "sagemaker", "endpoint": "anomaly", "result": 0.03}),
        ]
    );
    let log = aws.log();
    let calls: Vec<_> = log
        .iter()
        .map(|e| {
            (
                e["endpoint"].clone(),
                e["documents"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            (json!("anomaly"), json!(3), json!(200)),
            (json!("anomaly"), json!(1), json!(200))
        ],
        "max_batch_size 3: a call of 3 rows, then 1"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn sagemaker_json_lines_and_a_line_count_mismatch_is_dead_lettered() {
    let (db, kafka, aws) = setup(ORDERS);
    let p = sagemaker(&aws, "    accept: jsonlines\n    result_pointer: /label\n")
        .replace("returns: double", "returns: varchar(8)");
    let mut d = Daemon::new(&db, Some(&kafka), &[("scores", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("scores");
    block_on(db.exec("INSERT INTO shop.orders VALUES (1, 150.00, 1, 'ok'), (2, 1.00, 1, 'ok')"));
    wait_records(&mut d, &mut tail, 2, 60);
    let labels: Vec<Value> = enrichments(&tail)
        .iter()
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(labels, vec![json!("high"), json!("low")]);

    // The endpoint leaves a line out: the batch is never aligned by guess. The call is split
    // to find the row at fault: row 4 alone is answered, row 3 alone still gets no line and
    // goes to the dead letters after the parse attempts; the next row is fine.
    aws.reset();
    block_on(
        db.exec("INSERT INTO shop.orders VALUES (3, 1.00, 1, '[[drop]]'), (4, 2.00, 1, 'ok')"),
    );
    let dead = kafka.read("scores.dead", 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "{}", d.log());
    let v = dead[0].json();
    assert_eq!(v["after"]["id"], 3);
    assert_eq!(
        sans_lineage(v["enrichment"].clone()),
        json!({"backend": "sagemaker", "endpoint": "anomaly", "error": {"kind": "bad_output",
            "message": "sent 1 rows, the endpoint answered 0 lines; a batch is never aligned by guess",
            "attempts": 4}})
    );
    wait_records(&mut d, &mut tail, 3, 60);
    assert_eq!(tail.records[2].json()["after"]["id"], 4);
    assert_eq!(tail.records[2].json()["enrichment"]["result"], "low");
    let sizes: Vec<Value> = aws.log().iter().map(|e| e["documents"].clone()).collect();
    assert_eq!(
        sizes,
        vec![json!(2), json!(1), json!(1), json!(1), json!(1)],
        "the pair, then each row alone: row 3 three times (parse_attempts), row 4 once"
    );
    block_on(db.exec("INSERT INTO shop.orders VALUES (5, 300.00, 1, 'ok')"));
    wait_records(&mut d, &mut tail, 4, 60);
    assert_eq!(tail.records[3].json()["after"]["id"], 5);
    assert_eq!(tail.records[3].json()["enrichment"]["result"], "high");
    assert_eq!(d.terminate(), 0);
}

const ARTICLES: &str =
    "CREATE TABLE shop.articles (id INT PRIMARY KEY, title VARCHAR(100), body TEXT);";

fn bedrock(aws: &AwsStandin, model: &str, extra: &str) -> String {
    format!(
        "name: summaries\ntable: shop.articles\n\
         enrichment:\n  bedrock:\n    model: \"{model}\"\n    prompt: \"Summarize {{title}}:\\n{{body}}\"\n    system: Be brief.\n    max_tokens: 50\n{extra}\
         \x20 endpoint_url: {}\n  max_wait_ms: 50\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: summaries\n    dead_letter_topic: summaries.dead\n",
        aws.url()
    )
}

/// [`bedrock`] as pipeline `name`, to topic `name` and dead letters to `name.dead`.
fn named_bedrock(aws: &AwsStandin, name: &str, model: &str) -> String {
    bedrock(aws, model, "")
        .replace("name: summaries", &format!("name: {name}"))
        .replace("topic: summaries\n", &format!("topic: {name}\n"))
        .replace("summaries.dead", &format!("{name}.dead"))
}

#[test]
fn bedrock_claude_titan_and_converse_answers_with_token_usage() {
    let (db, kafka, aws) = setup(ARTICLES);
    let port = free_port();
    let models = [
        (
            "claude",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "bedrock:InvokeModel",
        ),
        (
            "titan",
            "amazon.titan-text-express-v1",
            "bedrock:InvokeModel",
        ),
        ("llama", "meta.llama3-8b-instruct-v1:0", "bedrock:Converse"),
    ];
    let files: Vec<(String, String)> = models
        .iter()
        .map(|(name, model, _)| (name.to_string(), named_bedrock(&aws, name, model)))
        .collect();
    let refs = pipeline_refs(&files);
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &refs,
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'T1', 'the quick brown fox jumps over the lazy dog')",
    ));
    for (name, model, target) in models {
        let recs = kafka.read(name, 1, Duration::from_secs(60));
        assert_eq!(recs.len(), 1, "{name}: {}", d.log());
        // Prompt and system: 11 + 2 words in; the answer: 6 words out, finished, in the
        // family's own words.
        let stop = if name == "titan" {
            "FINISHED"
        } else {
            "end_turn"
        };
        assert_eq!(
            sans_lineage(recs[0].json()["enrichment"].clone()),
            json!({"backend": "bedrock", "model": model, "result": "summary: the quick brown fox jumps",
                   "usage": {"input_tokens": 13, "output_tokens": 6, "stop_reason": stop}}),
            "{name}"
        );
        let log = aws.log();
        let call = log
            .iter()
            .find(|e| e["model"] == model)
            .unwrap_or_else(|| panic!("no call for {model}: {log:?}"));
        assert_eq!(call["target"], target);
        assert_eq!(call["status"], 200);
        let req = &call["request"];
        match name {
            "claude" => assert_eq!(
                *req,
                json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                   "messages": [{"role": "user", "content": [{"type": "text",
                       "text": "Summarize T1:\nthe quick brown fox jumps over the lazy dog"}]}],
                   "system": "Be brief."})
            ),
            "titan" => assert_eq!(
                *req,
                json!({"inputText": "Be brief.\n\nSummarize T1:\nthe quick brown fox jumps over the lazy dog",
                       "textGenerationConfig": {"maxTokenCount": 50}})
            ),
            _ => {
                assert_eq!(req["inferenceConfig"]["maxTokens"], 50);
                assert_eq!(req["system"], json!([{"text": "Be brief."}]));
            }
        }
    }
    // Tokens per pipeline on /metrics.
    let (_, body) = http_get(port, "/metrics");
    for (name, _, _) in models {
        assert_eq!(
            sample(
                &body,
                &format!("cdc_enricher_ml_input_tokens_total{{pipeline=\"{name}\"}}")
            ),
            Some("13"),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                &format!("cdc_enricher_ml_output_tokens_total{{pipeline=\"{name}\"}}")
            ),
            Some("6")
        );
        assert_eq!(
            sample(
                &body,
                &format!(
                    "cdc_enricher_ml_stop_reasons_total{{pipeline=\"{name}\",reason=\"finished\"}}"
                )
            ),
            Some("1")
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn an_answer_in_several_text_blocks_beside_a_reasoning_block_is_whole() {
    // Claude (InvokeModel) and Converse may answer with a reasoning block and several text
    // blocks: the result is all of the text, in order, never its first block alone.
    let (db, kafka, aws) = setup(ARTICLES);
    let files: Vec<(String, String)> = [
        ("claude", "anthropic.claude-3-haiku-20240307-v1:0"),
        ("llama", "meta.llama3-8b-instruct-v1:0"),
    ]
    .iter()
    .map(|(name, model)| (name.to_string(), named_bedrock(&aws, name, model)))
    .collect();
    let refs = pipeline_refs(&files);
    let mut d = Daemon::new(&db, Some(&kafka), &refs);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'T1', '[[blocks]] the quick brown fox jumps over')",
    ));
    for name in ["claude", "llama"] {
        let recs = kafka.read(name, 1, Duration::from_secs(60));
        assert_eq!(recs.len(), 1, "{name}: {}", d.log());
        let e = &recs[0].json()["enrichment"];
        assert_eq!(
            e["result"], "summary: [[blocks]] the quick brown fox",
            "{name}: {e}"
        );
        assert_eq!(e["usage"]["stop_reason"], "end_turn", "{name}: {e}");
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn bedrock_json_output_is_checked_and_an_unparseable_answer_is_dead_lettered() {
    let (db, kafka, aws) = setup(ARTICLES);
    let p = bedrock(
        &aws,
        "anthropic.claude-3-haiku-20240307-v1:0",
        "    output: json\n    fields: [summary, words]\n",
    )
    .replace("Summarize {title}", "Answer in JSON about {title}");
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("summaries", &p)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("summaries");
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'T1', 'one two three four five six seven');
         INSERT INTO shop.articles VALUES (2, 'T2', 'please [[garbage-json]] now');
         INSERT INTO shop.articles VALUES (3, 'T3', 'alpha beta');",
    ));
    wait_records(&mut d, &mut tail, 2, 60);
    let e = enrichments(&tail);
    assert_eq!(
        e[0]["result"],
        json!({"summary": "one two three four five", "words": 7})
    );
    assert_eq!(e[1]["result"], json!({"summary": "alpha beta", "words": 2}));
    let dead = kafka.read("summaries.dead", 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1);
    let v = dead[0].json();
    assert_eq!(v["after"]["id"], 2);
    assert_eq!(v["enrichment"]["error"]["kind"], "bad_output");
    assert_eq!(v["enrichment"]["error"]["attempts"], 3);
    assert!(
        v["enrichment"]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the model's answer is not JSON"),
        "{v}"
    );
    // Exactly three calls for the poison row (parse_attempts), one for each other row.
    let log = aws.log();
    assert_eq!(log.len(), 5);
    // The unusable answers' tokens were spent too: /metrics counts every call's.
    let tokens = |kind: &str, garbage: bool| -> u64 {
        log.iter()
            .filter(|e| e["request"].to_string().contains("garbage-json") == garbage)
            .map(|e| e["usage"][kind].as_u64().unwrap())
            .sum()
    };
    assert!(tokens("input_tokens", true) > 0 && tokens("output_tokens", true) > 0);
    let (_, body) = http_get(port, "/metrics");
    for (kind, metric) in [("input_tokens", "input"), ("output_tokens", "output")] {
        let all = tokens(kind, true) + tokens(kind, false);
        assert_eq!(
            sample(
                &body,
                &format!("cdc_enricher_ml_{metric}_tokens_total{{pipeline=\"summaries\"}}")
            ),
            Some(all.to_string().as_str()),
            "{kind}: {body}"
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn bedrock_reset_connections_and_garbage_bodies_are_retried_not_lost() {
    let (db, kafka, aws) = setup(ARTICLES);
    let p = bedrock(&aws, "anthropic.claude-3-haiku-20240307-v1:0", "");
    let mut d = Daemon::new(&db, Some(&kafka), &[("summaries", &p)]);
    d.env = AwsStandin::env();
    aws.control(r#"{"reset": 2, "garbage": 1}"#);
    d.spawn();
    let mut tail = kafka.tail("summaries");
    block_on(db.exec("INSERT INTO shop.articles VALUES (1, 'T', 'a b c'), (2, 'U', 'd e f')"));
    wait_records(&mut d, &mut tail, 2, 90);
    let e = enrichments(&tail);
    assert_eq!(e[0]["result"], "summary: a b c");
    assert_eq!(e[1]["result"], "summary: d e f");
    let statuses: Vec<Value> = aws.log().iter().map(|e| e["status"].clone()).collect();
    assert_eq!(
        statuses,
        vec![
            json!("reset"),
            json!("reset"),
            json!(200),
            json!(200),
            json!(200)
        ],
        "two resets and a garbage 200 retried, then both rows"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_service_token_bucket_with_concurrency_loses_nothing_and_keeps_order() {
    let (db, kafka, aws) = setup(ARTICLES);
    let p = bedrock(&aws, "anthropic.claude-3-haiku-20240307-v1:0", "").replace(
        "  max_wait_ms: 50\n",
        "  max_wait_ms: 50\n  concurrency: 4\n  requests_per_second: 20\n",
    );
    let mut d = Daemon::new(&db, Some(&kafka), &[("summaries", &p)]);
    d.env = AwsStandin::env();
    aws.control(r#"{"bucket": {"rate": 5, "burst": 2}}"#);
    d.spawn();
    let mut tail = kafka.tail("summaries");
    block_on(db.exec(
        "INSERT INTO shop.articles SELECT seq, CONCAT('T', seq), CONCAT('body ', seq) FROM shop.seq_1_to_40",
    ));
    wait_records(&mut d, &mut tail, 40, 120);
    tail.drain(Duration::from_millis(500));
    let ids: Vec<i64> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "each row once, in order");
    for r in &tail.records {
        let v = r.json();
        assert_eq!(
            v["enrichment"]["result"],
            format!("summary: body {}", v["after"]["id"])
        );
    }
    let log = aws.log();
    assert!(
        log.iter().any(|e| e["status"] == 429),
        "the bucket throttled"
    );
    assert_eq!(log.iter().filter(|e| e["status"] == 200).count(), 40);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn an_assumed_role_signs_every_call_and_a_profile_picks_its_keys() {
    let (db, kafka, aws) = setup(ARTICLES);
    let p = bedrock(&aws, "meta.llama3-8b-instruct-v1:0", "").replace(
        "  max_wait_ms: 50\n",
        "  max_wait_ms: 50\n  role_arn: arn:aws:iam::123456789012:role/enricher\n",
    );
    let mut d = Daemon::new(&db, Some(&kafka), &[("summaries", &p)]);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec("INSERT INTO shop.articles VALUES (1, 'T', 'a'), (2, 'U', 'b')"));
    assert_eq!(kafka.read("summaries", 2, Duration::from_secs(60)).len(), 2);
    let log = aws.log();
    let sts: Vec<_> = log
        .iter()
        .filter(|e| e["target"] == "sts:AssumeRole")
        .collect();
    assert_eq!(sts.len(), 1, "the role assumed once: {log:?}");
    assert_eq!(sts[0]["access_key"], "AKIDSTANDIN");
    let calls: Vec<_> = log
        .iter()
        .filter(|e| e["target"] == "bedrock:Converse")
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(calls
        .iter()
        .all(|e| e["access_key"] == "ASIASTANDIN" && e["status"] == 200));
    assert_eq!(d.terminate(), 0);

    // A profile: its keys from the shared credentials file, the default profile's are wrong.
    aws.reset();
    let creds = d.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n\
         [enrich]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let p = bedrock(&aws, "meta.llama3-8b-instruct-v1:0", "")
        .replace(
            "  max_wait_ms: 50\n",
            "  max_wait_ms: 50\n  profile: enrich\n  region: us-west-2\n",
        )
        .replace("name: summaries", "name: profiled")
        .replace("topic: summaries\n", "topic: profiled\n");
    let mut d2 = Daemon::new(&db, Some(&kafka), &[("profiled", &p)]);
    d2.env = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            creds.display().to_string(),
        ),
        ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    d2.spawn();
    assert_eq!(
        kafka.read("profiled", 2, Duration::from_secs(60)).len(),
        2,
        "{}",
        d2.log()
    );
    let log = aws.log();
    assert!(!log.is_empty());
    assert!(
        log.iter()
            .all(|e| e["access_key"] == "AKIDPROFILE" && e["status"] == 200),
        "{log:?}"
    );
    assert_eq!(d2.terminate(), 0);
}

#[test]
fn a_spent_budget_pauses_the_pipeline_and_it_resumes_in_the_next_window() {
    let (db, kafka, aws) = setup(ARTICLES);
    let port = free_port();
    let p = bedrock(&aws, "anthropic.claude-3-haiku-20240307-v1:0", "").replace(
        "  max_wait_ms: 50\n",
        "  max_wait_ms: 50\n  budget:\n    requests: 2\n    window_seconds: 3\n",
    );
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("summaries", &p)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    let mut tail = kafka.tail("summaries");
    block_on(db.exec(
        "INSERT INTO shop.articles SELECT seq, 'T', CONCAT('body ', seq) FROM shop.seq_1_to_6",
    ));
    // While the first window's budget is spent, the pause shows on /metrics.
    let start = Instant::now();
    let mut saw_pause = false;
    while tail.poll(Duration::from_millis(100)) < 6 {
        let (_, body) = http_get(port, "/metrics");
        saw_pause |=
            sample(&body, "cdc_enricher_budget_paused{pipeline=\"summaries\"}") == Some("1");
        assert!(start.elapsed() < Duration::from_secs(60), "{}", d.log());
    }
    assert!(saw_pause);
    assert!(d
        .log()
        .contains("enrichment budget spent; the pipeline pauses until the next window"));
    // Never more than 2 calls in one 3-second window (windows aligned to the epoch). The
    // stand-in sees a call when it arrives: one the daemon sent in a window's last moment
    // may arrive just after the boundary, so a call arriving within 150 ms of a boundary may
    // count for the window before it — but no window takes more than two.
    let log = aws.log();
    assert_eq!(log.len(), 6);
    let mut wall: Vec<f64> = log.iter().map(|e| e["wall"].as_f64().unwrap()).collect();
    wall.sort_by(f64::total_cmp);
    let mut per_window = std::collections::BTreeMap::new();
    for w in &wall {
        let k = (w / 3.0).floor() as i64;
        let near_boundary = w - 3.0 * (k as f64) < 0.15;
        let window = if near_boundary && per_window.get(&(k - 1)).copied().unwrap_or(0) < 2 {
            k - 1
        } else {
            k
        };
        *per_window.entry(window).or_insert(0) += 1;
    }
    assert!(
        per_window.values().all(|n| *n <= 2),
        "{wall:?} {per_window:?}"
    );
    let ids: Vec<i64> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    // Six calls at two per window span at least two window boundaries.
    let t: Vec<f64> = log.iter().map(|e| e["t"].as_f64().unwrap()).collect();
    assert!(t[5] - t[0] >= 3.0, "{t:?}");
    assert_eq!(d.terminate(), 0);
}
