//! Answers that match a JSON Schema, end to end through the real SDK and the stand-in: Claude
//! on InvokeModel and a Converse model answer through the schema's tool, Titan (no tool use)
//! by parsed text; every answer is validated, and one that does not match is asked again
//! `parse_attempts` times, then dead-lettered with the validation error.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SCHEMA: &str = "{type: object, required: [summary, words], properties: {summary: {type: string}, words: {type: integer}}}";

fn pipeline(aws: &AwsStandin, name: &str, model: &str) -> String {
    format!(
        "name: {name}\ntable: shop.articles\n\
         enrichment:\n  bedrock:\n    model: \"{model}\"\n    prompt: \"Answer in JSON about {{title}}:\\n{{body}}\"\n    max_tokens: 50\n\
         \x20   schema: {SCHEMA}\n\
         \x20 endpoint_url: {}\n  max_wait_ms: 50\n  timeout_ms: 5000\n\
         sink:\n  kafka:\n    topic: {name}\n    dead_letter_topic: {name}.dead\n",
        aws.url()
    )
}

#[test]
fn answers_are_held_to_the_schema_through_tools_or_validation() {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.articles (id INT PRIMARY KEY, title VARCHAR(50), body TEXT);",
    ));
    let (kafka, aws) = (Kafka::start(), AwsStandin::start());
    let models = [
        ("claude", "anthropic.claude-3-haiku-20240307-v1:0"),
        ("llama", "meta.llama3-8b-instruct-v1:0"),
        ("titan", "amazon.titan-text-express-v1"),
    ];
    let files: Vec<(String, String)> = models
        .iter()
        .map(|(n, m)| (n.to_string(), pipeline(&aws, n, m)))
        .collect();
    let refs = pipeline_refs(&files);
    let mut d = Daemon::new(&db, Some(&kafka), &refs);
    d.env = AwsStandin::env();
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.articles VALUES (1, 'T1', 'the quick brown fox jumps over the lazy dog');
         INSERT INTO shop.articles VALUES (2, 'T2', 'please [[schema-violation]] here');",
    ));
    for (name, model) in models {
        let ok = kafka.read(name, 1, Duration::from_secs(60));
        assert_eq!(ok.len(), 1, "{name}: {}", d.log());
        let v = ok[0].json();
        assert_eq!(v["after"]["id"], 1, "{name}");
        assert_eq!(
            v["enrichment"]["result"],
            json!({"summary": "the quick brown fox jumps", "words": 9}),
            "{name}"
        );
        let dead = kafka.read(&format!("{name}.dead"), 1, Duration::from_secs(60));
        assert_eq!(dead.len(), 1, "{name}: {}", d.log());
        let e = &dead[0].json()["enrichment"]["error"];
        let want = if name == "titan" {
            "the answer does not match enrichment.bedrock.schema at /words: \"many\" is not of type \"integer\""
        } else {
            "the answer does not match enrichment.bedrock.schema at /: \"summary\" is a required property"
        };
        assert_eq!(
            (
                e["kind"].as_str(),
                e["message"].as_str(),
                e["attempts"].as_u64()
            ),
            (Some("bad_output"), Some(want), Some(3)),
            "{name}"
        );
        // What was asked of the model: the schema as the answer tool's input, chosen by name —
        // or, for Titan (no tool use), nothing but the prompt.
        let log: Vec<Value> = aws
            .log()
            .into_iter()
            .filter(|e| e["model"] == model)
            .collect();
        assert_eq!(log.len(), 4, "{name}: one call for row 1, three for row 2");
        let req = &log[0]["request"];
        let schema = json!({"type": "object", "required": ["summary", "words"],
            "properties": {"summary": {"type": "string"}, "words": {"type": "integer"}}});
        match name {
            "claude" => {
                assert_eq!(req["tools"][0]["name"], "answer");
                assert_eq!(req["tools"][0]["input_schema"], schema);
                assert_eq!(
                    req["tool_choice"],
                    json!({"type": "tool", "name": "answer"})
                );
            }
            "llama" => {
                let tc = &req["toolConfig"];
                assert_eq!(tc["tools"][0]["toolSpec"]["name"], "answer");
                assert_eq!(tc["tools"][0]["toolSpec"]["inputSchema"]["json"], schema);
                // Llama takes no toolChoice naming a tool: it is offered the tool (`auto`).
                assert!(tc.get("toolChoice").is_none(), "{tc}");
            }
            _ => assert!(
                req.get("tools").is_none() && req.get("toolConfig").is_none(),
                "{req}"
            ),
        }
    }
    d.terminate();
}

/// A schema that is not an object schema, or not a JSON Schema at all, stops the start with
/// the setting named.
#[test]
fn a_bad_schema_is_a_configuration_error() {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.articles (id INT PRIMARY KEY, title VARCHAR(50), body TEXT);",
    ));
    let aws = AwsStandin::start();
    for (schema, want) in [
        (
            "{type: string}",
            "enrichment.bedrock.schema must describe an object (`type: object`)",
        ),
        (
            "{type: object, properties: {a: {type: 12}}}",
            "enrichment.bedrock.schema is not a valid JSON Schema: ",
        ),
    ] {
        let p = pipeline(&aws, "p", "anthropic.claude-3-haiku-20240307-v1:0")
            .replace(SCHEMA, schema)
            .replace(
                "sink:\n  kafka:\n    topic: p\n    dead_letter_topic: p.dead\n",
                "sink:\n  jsonl:\n    path: out.jsonl\n",
            );
        let mut d = Daemon::new(&db, None, &[("p", &p)]);
        d.env = AwsStandin::env();
        let (code, _, err) = d.check();
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "{err}");
    }
}
