//! Prompt caching through the real SDK and the stand-in: the system prompt and the static
//! prefix marked cacheable (Anthropic `cache_control` on InvokeModel, Converse `cachePoint`);
//! the cache-write tokens of the first call and the cache-read tokens of the next in each
//! record's usage and on `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn pipeline(aws: &AwsStandin, name: &str, model: &str) -> String {
    format!(
        "name: {name}\ntable: shop.articles\n\
         enrichment:\n  bedrock:\n    model: \"{model}\"\n    system: You are terse.\n\
         \x20   prefix: \"Examples: good -> positive.\"\n    cache_prompt: true\n\
         \x20   prompt: \"Summarize:\\n{{body}}\"\n    max_tokens: 50\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 20\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: {name}\n",
        aws.url()
    )
}

#[test]
fn cached_prompt_prefixes_are_marked_and_their_tokens_counted() {
    let db = MariaDb::start();
    block_on(
        db.exec(
            "CREATE DATABASE shop; CREATE TABLE shop.articles (id INT PRIMARY KEY, body TEXT);",
        ),
    );
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let models = [
        ("claude", "anthropic.claude-3-haiku-20240307-v1:0"),
        ("llama", "meta.llama3-8b-instruct-v1:0"),
    ];
    let files: Vec<(String, String)> = models
        .iter()
        .map(|(n, m)| (n.to_string(), pipeline(&aws, n, m)))
        .collect();
    let refs = pipeline_refs(&files);
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &refs,
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'one two three four five six');
         INSERT INTO shop.articles VALUES (2, 'six five four three two one');",
    ));
    // The cached prefix is the system prompt and the prefix: "You are terse." and "Examples:
    // good -> positive.", 6 words as the stand-in counts them (it joins the blocks).
    for (name, model) in models {
        let recs = kafka.read(name, 2, Duration::from_secs(60));
        assert_eq!(recs.len(), 2, "{name}: {}", d.log());
        let usage: Vec<Value> = recs
            .iter()
            .map(|r| r.json()["enrichment"]["usage"].clone())
            .collect();
        assert_eq!(
            (
                &usage[0]["cache_write_input_tokens"],
                &usage[0]["cache_read_input_tokens"]
            ),
            (&json!(6), &json!(0)),
            "{name}: the first call writes the cache: {usage:?}"
        );
        assert_eq!(
            (
                &usage[1]["cache_write_input_tokens"],
                &usage[1]["cache_read_input_tokens"]
            ),
            (&json!(0), &json!(6)),
            "{name}: the second reads it: {usage:?}"
        );
        assert_eq!(usage[0]["input_tokens"], usage[1]["input_tokens"], "{name}");
        assert_eq!(
            recs[1].json()["enrichment"]["result"],
            "summary: six five four three two",
            "{name}"
        );
        let req = aws
            .log()
            .into_iter()
            .find(|e| e["model"] == model)
            .map(|e| e["request"].clone())
            .unwrap();
        if name == "claude" {
            assert_eq!(
                req["system"],
                json!([{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}])
            );
            assert_eq!(
                req["messages"][0]["content"][0],
                json!({"type": "text", "text": "Examples: good -> positive.", "cache_control": {"type": "ephemeral"}})
            );
            assert_eq!(
                req["messages"][0]["content"][1]["text"],
                "Summarize:\none two three four five six"
            );
        } else {
            assert_eq!(
                req["system"],
                json!([{"text": "You are terse."}, {"cachePoint": {"type": "default"}}])
            );
            let content = &req["messages"][0]["content"];
            assert_eq!(content[0], json!({"text": "Examples: good -> positive."}));
            assert_eq!(content[1], json!({"cachePoint": {"type": "default"}}));
        }
    }
    let (_, body) = http_get(port, "/metrics");
    for name in ["claude", "llama"] {
        for (metric, want) in [
            ("cdc_enricher_ml_cache_read_tokens_total", 6.0),
            ("cdc_enricher_ml_cache_write_tokens_total", 6.0),
        ] {
            let series = format!("{metric}{{pipeline=\"{name}\"}}");
            assert_eq!(value(&body, &series), Some(want), "{series}\n{body}");
        }
    }
    d.terminate();
}
