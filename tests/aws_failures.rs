//! Enrichment that fails the way AWS documents its failures, end to end: MariaDB → the real
//! SDKs → the stand-in answering with AWS's wire shapes (status, `x-amzn-ErrorType`, body) →
//! Kafka. A missing endpoint or model waits; one poison row in a batch is found by splitting
//! the batch and goes alone to the dead letters; a failing container's 503 is transient; an
//! answer cut at `max_tokens` is never passed as finished; `Retry-After` dates hold the quota.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn setup() -> (MariaDb, Kafka, AwsStandin) {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id INT PRIMARY KEY, amount DECIMAL(10,2), items INT, note VARCHAR(50));
         CREATE TABLE shop.articles (id INT PRIMARY KEY, title VARCHAR(100), body TEXT);
         CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT);
         CREATE TABLE shop.reviews (id INT PRIMARY KEY, message TEXT);",
    ));
    (db, Kafka::start(), AwsStandin::start())
}

/// A pipeline named `name` on `table` with `enrichment` (its backend block and extra keys),
/// to topic `name` with dead letters in `name.dead`.
fn pipeline(aws: &AwsStandin, name: &str, table: &str, enrichment: &str) -> String {
    format!(
        "name: {name}\ntable: shop.{table}\n\
         enrichment:\n{enrichment}  endpoint_url: {}\n  max_wait_ms: 300\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: {name}\n    dead_letter_topic: {name}.dead\n",
        aws.url()
    )
}

const SAGEMAKER: &str =
    "  sagemaker:\n    endpoint: anomaly\n    input: [amount, items, note]\n    returns: double\n";
const COMPREHEND: &str = "  comprehend:\n    operation: sentiment\n    text: message\n";

fn bedrock(model: &str, max_tokens: u32, extra: &str) -> String {
    format!(
        "  bedrock:\n    model: \"{model}\"\n    prompt: \"Summarize {{title}}:\\n{{body}}\"\n    max_tokens: {max_tokens}\n{extra}"
    )
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").1
}

fn counter(body: &str, name: &str, labels: &str) -> u64 {
    sample(body, &format!("{name}{{{labels}}}"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
}

/// Spawns the daemon on `pipelines` with /metrics on a free port.
fn daemon(db: &MariaDb, kafka: &Kafka, pipelines: &[(&str, &str)]) -> (Daemon, u16) {
    let port = free_port();
    let mut d = Daemon::with_config(
        db,
        Some(kafka),
        pipelines,
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    (d, port)
}

#[test]
fn a_missing_endpoint_or_model_waits_for_the_operator_and_loses_no_row() {
    let (db, kafka, aws) = setup();
    let (sm, br, co) = (
        pipeline(&aws, "scores", "orders", SAGEMAKER),
        pipeline(
            &aws,
            "summaries",
            "articles",
            &bedrock("meta.llama3-8b-instruct-v1:0", 50, ""),
        ),
        pipeline(&aws, "feedback", "support", COMPREHEND),
    );
    let (mut d, port) = daemon(
        &db,
        &kafka,
        &[("scores", &sm), ("summaries", &br), ("feedback", &co)],
    );
    // For 20 s the endpoint, the model and the Comprehend resource are not there, each said
    // as its service says it (400 ValidationError / ValidationException /
    // ResourceUnavailableException).
    aws.control(r#"{"missing_s": 20}"#);
    block_on(db.exec(
        "INSERT INTO shop.orders VALUES (1, 12.50, 3, 'ok'), (2, 100.00, 1, 'ok');
         INSERT INTO shop.articles VALUES (1, 'T1', 'one two three');
         INSERT INTO shop.support VALUES (1, 'great service');",
    ));
    let scores = kafka.read("scores", 2, Duration::from_secs(90));
    let summaries = kafka.read("summaries", 1, Duration::from_secs(30));
    let feedback = kafka.read("feedback", 1, Duration::from_secs(30));
    assert_eq!(
        scores
            .iter()
            .map(|r| r.json()["enrichment"]["result"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0.155), json!(1.01)],
        "{}",
        d.log()
    );
    assert_eq!(
        summaries[0].json()["enrichment"]["result"],
        "summary: one two three"
    );
    assert_eq!(feedback[0].json()["enrichment"]["sentiment"], "POSITIVE");
    let log = aws.log();
    for service in ["sagemaker:InvokeEndpoint", "bedrock:Converse", "Comprehend"] {
        let statuses: Vec<&Value> = log
            .iter()
            .filter(|e| e["target"].as_str().unwrap_or("").starts_with(service))
            .map(|e| &e["status"])
            .collect();
        assert!(
            statuses.len() >= 2 && statuses[0] == 400 && **statuses.last().unwrap() == 200,
            "{service}: refused while missing, then answered: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| ***s == 200).count(),
            1,
            "{service}: {statuses:?}"
        );
    }
    let body = metrics(port);
    for p in ["scores", "summaries", "feedback"] {
        assert_eq!(
            counter(
                &body,
                "cdc_enricher_ml_errors_total",
                &format!("pipeline=\"{p}\"")
            ),
            0,
            "{p}: no row dead-lettered"
        );
        assert!(
            counter(
                &body,
                "cdc_enricher_ml_call_errors_total",
                &format!("pipeline=\"{p}\",kind=\"denied\"")
            ) >= 1
        );
    }
    assert!(d
        .log()
        .contains("lacks the model or endpoint; fix it — the rows wait and are retried"));
    assert!(kafka
        .read("scores.dead", 1, Duration::from_secs(2))
        .is_empty());
    assert_eq!(d.terminate(), 0);
}

#[test]
fn poison_rows_in_a_sagemaker_batch_are_found_by_splitting_and_go_alone_to_the_dead_letters() {
    let (db, kafka, aws) = setup();
    let p = pipeline(&aws, "scores", "orders", SAGEMAKER);
    let (mut d, port) = daemon(&db, &kafka, &[("scores", &p)]);
    let poison = [17, 100, 181];
    let values: Vec<String> = (1..=200)
        .map(|i| {
            let note = if poison.contains(&i) {
                "[[poison]]"
            } else {
                "ok"
            };
            format!("({i}, {i}.00, {}, '{note}')", i % 7)
        })
        .collect();
    let mut tail = kafka.tail("scores");
    block_on(db.exec(&format!(
        "INSERT INTO shop.orders VALUES {}",
        values.join(",")
    )));
    wait_records(&mut d, &mut tail, 197, 120);
    let dead = kafka.read("scores.dead", 3, Duration::from_secs(30));
    // The 197 good rows, enriched, in order.
    let got: Vec<(Value, Value)> = tail
        .records
        .iter()
        .map(|r| {
            let v = r.json();
            (v["after"]["id"].clone(), v["enrichment"]["result"].clone())
        })
        .collect();
    let want: Vec<(Value, Value)> = (1..=200)
        .filter(|i| !poison.contains(i))
        .map(|i: i64| {
            let score = ((i + i % 7) as f64 / 100.0 * 1e6).round() / 1e6;
            (json!(i), json!(score))
        })
        .collect();
    assert_eq!(got, want);
    // Exactly the three poison rows, each with the container's message.
    assert_eq!(
        dead.iter()
            .map(|r| r.json()["after"]["id"].clone())
            .collect::<Vec<_>>(),
        poison.iter().map(|i| json!(i)).collect::<Vec<_>>()
    );
    for r in &dead {
        let e = &r.json()["enrichment"]["error"];
        assert_eq!(e["kind"], "bad_input", "{e}");
        let line = 1; // alone in its call, the row is the call's first line
        assert_eq!(
            e["message"],
            format!("ModelError: the model container answered 400: could not convert string to float: '[[poison]]' (line {line})")
        );
    }
    // Bisection: the batch of 200, then halves down to each poison row alone — at most
    // 1 + 2·3·⌈log2 200⌉ calls, never a call per row.
    let log = aws.log();
    let calls = log.len();
    assert!((3 * 8..=1 + 2 * 3 * 8).contains(&calls), "{calls} calls");
    assert_eq!(log[0]["documents"], 200);
    assert_eq!(log[0]["status"], 424);
    assert_eq!(
        log.iter()
            .filter(|e| e["status"] == 424 && e["documents"] == 1)
            .count(),
        3,
        "each poison row failed alone exactly once"
    );
    let body = metrics(port);
    let splits = counter(
        &body,
        "cdc_enricher_ml_batch_splits_total",
        "pipeline=\"scores\"",
    );
    assert_eq!(
        splits as usize,
        log.iter()
            .filter(|e| e["status"] == 424 && e["documents"] != 1)
            .count(),
        "every failed call of several rows was split once"
    );
    assert_eq!(
        counter(
            &body,
            "cdc_enricher_ml_actual_requests_total",
            "pipeline=\"scores\""
        ) as usize,
        calls
    );
    assert_eq!(
        counter(&body, "cdc_enricher_ml_errors_total", "pipeline=\"scores\""),
        3
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_comprehend_batch_refused_whole_is_split_to_the_one_document_at_fault() {
    let (db, kafka, aws) = setup();
    let p = pipeline(&aws, "feedback", "support", COMPREHEND);
    let (mut d, _) = daemon(&db, &kafka, &[("feedback", &p)]);
    let mut tail = kafka.tail("feedback");
    let values: Vec<String> = (1..=25)
        .map(|i| {
            let text = if i == 9 {
                "great [[refuse-batch]]"
            } else if i % 2 == 0 {
                "bad"
            } else {
                "good"
            };
            format!("({i}, '{text}')")
        })
        .collect();
    block_on(db.exec(&format!(
        "INSERT INTO shop.support VALUES {}",
        values.join(",")
    )));
    wait_records(&mut d, &mut tail, 24, 60);
    let dead = kafka.read("feedback.dead", 1, Duration::from_secs(30));
    let ids: Vec<i64> = tail
        .records
        .iter()
        .map(|r| r.json()["after"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, (1..=25).filter(|i| *i != 9).collect::<Vec<_>>());
    for r in &tail.records {
        let v = r.json();
        let want = if v["after"]["id"].as_i64().unwrap_or(0) % 2 == 0 {
            "NEGATIVE"
        } else {
            "POSITIVE"
        };
        assert_eq!(v["enrichment"]["sentiment"], want);
    }
    assert_eq!(dead[0].json()["after"]["id"], 9);
    assert_eq!(
        dead[0].json()["enrichment"]["error"],
        json!({"kind": "bad_input", "message": "InvalidRequestException: Invalid document at index 0",
               "attempts": 6})
    );
    // 25 → 13 → 7 → 4 → 2 → 1: five splits on the way to document 9, one call for each
    // half without it.
    let sizes: Vec<u64> = aws
        .log()
        .iter()
        .map(|e| e["documents"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(sizes.len(), 11, "{sizes:?}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_model_container_that_is_overloaded_or_restarting_is_retried_not_dead_lettered() {
    let (db, kafka, aws) = setup();
    let sm = pipeline(&aws, "scores", "orders", SAGEMAKER);
    let br = pipeline(
        &aws,
        "summaries",
        "articles",
        &bedrock("anthropic.claude-3-haiku-20240307-v1:0", 50, ""),
    );
    let (mut d, port) = daemon(&db, &kafka, &[("scores", &sm), ("summaries", &br)]);
    // 424 ModelError with the container's 503, 502, 504, and 0 (it did not answer in time).
    aws.control(r#"{"model_error": [503, 502, 504, 0]}"#);
    block_on(db.exec("INSERT INTO shop.orders VALUES (1, 12.50, 3, 'ok'), (2, 1.00, 1, 'ok')"));
    let scores = kafka.read("scores", 2, Duration::from_secs(90));
    assert_eq!(scores.len(), 2, "{}", d.log());
    assert_eq!(scores[1].json()["enrichment"]["result"], 0.02);
    let statuses: Vec<(Value, Value, Value)> = aws
        .log()
        .iter()
        .map(|e| {
            (
                e["status"].clone(),
                e["original_status"].clone(),
                e["documents"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (json!(424), json!(503), json!(2)),
            (json!(424), json!(502), json!(2)),
            (json!(424), json!(504), json!(2)),
            (json!(424), json!(0), json!(2)),
            (json!(200), Value::Null, json!(2)),
        ],
        "retried whole, never split, never dead-lettered"
    );
    // Bedrock's ModelErrorException with the model's 503: the same.
    aws.reset();
    aws.control(r#"{"model_error": [503]}"#);
    block_on(db.exec("INSERT INTO shop.articles VALUES (1, 'T', 'a b c')"));
    let summaries = kafka.read("summaries", 1, Duration::from_secs(60));
    assert_eq!(
        summaries[0].json()["enrichment"]["result"],
        "summary: a b c"
    );
    assert_eq!(aws.log().len(), 2);
    let body = metrics(port);
    for p in ["scores", "summaries"] {
        assert_eq!(
            counter(
                &body,
                "cdc_enricher_ml_errors_total",
                &format!("pipeline=\"{p}\"")
            ),
            0
        );
    }
    assert_eq!(
        counter(
            &body,
            "cdc_enricher_ml_call_errors_total",
            "pipeline=\"scores\",kind=\"transient\""
        ),
        2 * 3
    );
    assert_eq!(
        counter(
            &body,
            "cdc_enricher_ml_call_errors_total",
            "pipeline=\"scores\",kind=\"timeout\""
        ),
        2
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn answers_cut_at_max_tokens_are_never_passed_as_finished() {
    let (db, kafka, aws) = setup();
    let (claude, titan, llama, sonnet) = (
        "anthropic.claude-3-haiku-20240307-v1:0",
        "amazon.titan-text-express-v1",
        "meta.llama3-8b-instruct-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
    );
    let files = [
        ("claude", bedrock(claude, 3, "")),
        ("titan", bedrock(titan, 3, "")),
        ("llama", bedrock(llama, 3, "")),
        (
            "json",
            bedrock(
                sonnet,
                3,
                "    output: json\n    fields: [summary, words]\n",
            )
            .replace("Summarize", "In JSON, summarize"),
        ),
        ("accepted", bedrock(titan, 3, "    on_max_tokens: accept\n")),
    ]
    .map(|(n, e)| (n, pipeline(&aws, n, "articles", &e)));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, b)| (*n, b.as_str())).collect();
    let (mut d, port) = daemon(&db, &kafka, &refs);
    // Two rows with the same text, the second after the first was answered: a cut answer is
    // never cached, so the second row is a call too.
    block_on(db.exec("INSERT INTO shop.articles VALUES (1, 'T', 'the quick brown fox jumps')"));
    for name in ["claude", "titan", "llama", "json"] {
        let dead = kafka.read(&format!("{name}.dead"), 1, Duration::from_secs(60));
        assert_eq!(dead.len(), 1, "{name}: {}", d.log());
    }
    assert_eq!(kafka.read("accepted", 1, Duration::from_secs(60)).len(), 1);
    block_on(db.exec("INSERT INTO shop.articles VALUES (2, 'T', 'the quick brown fox jumps')"));
    for (name, model, stop) in [
        ("claude", claude, "max_tokens"),
        ("titan", titan, "LENGTH"),
        ("llama", llama, "max_tokens"),
        ("json", sonnet, "max_tokens"),
    ] {
        let dead = kafka.read(&format!("{name}.dead"), 2, Duration::from_secs(60));
        assert_eq!(dead.len(), 2, "{name}: {}", d.log());
        for r in &dead {
            let e = &r.json()["enrichment"];
            assert_eq!(e["error"]["kind"], "incomplete", "{name}: {e}");
            assert_eq!(
                e["error"]["message"],
                format!("the model stopped at max_tokens (3 tokens; stop reason `{stop}`): the answer is cut — raise enrichment.bedrock.max_tokens or ask for less"),
            );
            // One call, not parse_attempts calls, even with output: json.
            assert_eq!(e["error"]["attempts"], 1, "{name}");
            assert_eq!(e["usage"]["stop_reason"], stop);
            if name != "json" {
                assert_eq!(e["usage"]["output_tokens"], 3, "{name}");
            }
        }
        let calls = aws.log().iter().filter(|e| e["model"] == model).count();
        let expected = if model == titan { 4 } else { 2 };
        assert_eq!(calls, expected, "{name}: one call per row, none cached");
        assert!(kafka.read(name, 1, Duration::from_millis(500)).is_empty());
    }
    // A pipeline that accepts cut answers gets them marked, with the stop reason.
    let accepted = kafka.read("accepted", 2, Duration::from_secs(30));
    assert_eq!(accepted.len(), 2);
    for r in &accepted {
        assert_eq!(
            sans_lineage(r.json()["enrichment"].clone()),
            json!({"backend": "bedrock", "model": titan, "result": "summary: the quick",
                   "usage": {"input_tokens": 7, "output_tokens": 3, "stop_reason": "LENGTH"},
                   "truncated": true})
        );
    }
    let body = metrics(port);
    for name in ["claude", "titan", "llama", "json", "accepted"] {
        assert_eq!(
            counter(
                &body,
                "cdc_enricher_ml_stop_reasons_total",
                &format!("pipeline=\"{name}\",reason=\"max_tokens\"")
            ),
            2,
            "{name}"
        );
        assert_eq!(
            counter(
                &body,
                "cdc_enricher_ml_cache_hits_total",
                &format!("pipeline=\"{name}\"")
            ),
            0
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn retry_after_as_an_http_date_holds_every_call_to_the_quota_until_then() {
    let (db, kafka, aws) = setup();
    // Two pipelines on one quota (Comprehend sentiment at one endpoint).
    let a = pipeline(&aws, "feedback", "support", COMPREHEND);
    let b = pipeline(&aws, "reviews", "reviews", COMPREHEND);
    let (mut d, _) = daemon(&db, &kafka, &[("feedback", &a), ("reviews", &b)]);
    aws.control(r#"{"throttle": 1, "retry_after": "date+10"}"#);
    block_on(db.exec("INSERT INTO shop.support VALUES (1, 'good')"));
    let retry_at = wait_for(|| aws.log().iter().find_map(|e| e["retry_at"].as_f64()));
    // The other pipeline's row arrives while the quota waits.
    block_on(db.exec("INSERT INTO shop.reviews VALUES (1, 'bad')"));
    let feedback = kafka.read("feedback", 1, Duration::from_secs(60));
    let reviews = kafka.read("reviews", 1, Duration::from_secs(60));
    assert_eq!(feedback[0].json()["enrichment"]["sentiment"], "POSITIVE");
    assert_eq!(reviews[0].json()["enrichment"]["sentiment"], "NEGATIVE");
    let log = aws.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0]["retry_after"]
        .as_str()
        .unwrap_or("")
        .ends_with(" GMT"));
    for e in &log[1..] {
        assert!(
            e["wall"].as_f64().unwrap_or(0.0) >= retry_at,
            "a call at {} before the Retry-After date {retry_at}",
            e["wall"]
        );
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_bedrock_429_with_a_date_holds_the_other_calls_of_its_own_batch_too() {
    let (db, kafka, aws) = setup();
    let p = pipeline(
        &aws,
        "summaries",
        "articles",
        &bedrock("anthropic.claude-3-haiku-20240307-v1:0", 50, ""),
    );
    let (_d, _) = daemon(&db, &kafka, &[("summaries", &p)]);
    // One prompt a call: three rows are three calls of one round; the first is answered 429
    // with a date 5 s ahead, and the other two must wait for it.
    aws.control(r#"{"throttle": 1, "retry_after": "date+5"}"#);
    block_on(
        db.exec("INSERT INTO shop.articles VALUES (1, 'A', 'a'), (2, 'B', 'b'), (3, 'C', 'c')"),
    );
    let got = kafka.read("summaries", 3, Duration::from_secs(60));
    assert_eq!(got.len(), 3);
    let log = aws.log();
    assert_eq!(log[0]["status"], 429);
    let retry_at = log[0]["retry_at"].as_f64().unwrap_or(f64::MAX);
    assert_eq!(log.len(), 4, "{log:?}");
    for e in &log[1..] {
        assert!(
            e["wall"].as_f64().unwrap_or(0.0) >= retry_at,
            "a call at {} before the Retry-After date {retry_at}",
            e["wall"]
        );
    }
}

#[test]
fn a_long_retry_after_is_capped_with_a_warning() {
    let (db, kafka, aws) = setup();
    let p = pipeline(&aws, "feedback", "support", COMPREHEND).replace(
        "  max_wait_ms: 300\n",
        "  max_wait_ms: 300\n  max_retry_after_s: 2\n",
    );
    let (mut d, _) = daemon(&db, &kafka, &[("feedback", &p)]);
    aws.control(r#"{"throttle": 1, "retry_after": "3600"}"#);
    block_on(db.exec("INSERT INTO shop.support VALUES (1, 'good')"));
    let feedback = kafka.read("feedback", 1, Duration::from_secs(60));
    assert_eq!(feedback[0].json()["enrichment"]["sentiment"], "POSITIVE");
    let log = aws.log();
    assert_eq!(log.len(), 2);
    let waited = log[1]["t"].as_f64().unwrap_or(0.0) - log[0]["t"].as_f64().unwrap_or(0.0);
    assert!((2.0..30.0).contains(&waited), "waited {waited} s");
    wait_log(
        &mut d,
        "the service asks for a long wait before the next call",
        1,
        10,
    );
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("asks for a long wait"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("asked_s") && line.contains("3600") && line.contains("honoured_s"),
        "{line}"
    );
    assert_eq!(d.terminate(), 0);
}

/// Polls `f` every 100 ms for up to 60 s.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}
