//! Answers that match a JSON Schema (`enrichment.bedrock.schema`): the model is made to answer
//! through a tool whose input schema is the pipeline's (Converse `toolConfig` with a
//! `toolChoice` naming it, for any model; Anthropic's `tools` and `tool_choice` on
//! InvokeModel), and every answer — through a tool or parsed from text, for models without
//! tool use — is validated on receipt with the `jsonschema` crate.

use std::collections::HashMap;

use aws_smithy_types::{Document, Number};
use serde_json::{Map, Value};

/// The tool the model answers through.
pub const ANSWER_TOOL: &str = "answer";
/// Its description, as the model reads it.
pub const ANSWER_TOOL_DESCRIPTION: &str =
    "Give your answer as this tool's input, matching its schema exactly.";

/// A compiled schema, with the schema itself (sent to the model).
pub struct AnswerSchema {
    pub schema: Value,
    validator: jsonschema::Validator,
}

impl AnswerSchema {
    /// Compiles `schema` (JSON Schema, draft from its `$schema`, else 2020-12). It must
    /// describe an object: a tool's input is one.
    pub fn compile(schema: &Value) -> Result<AnswerSchema, String> {
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(
                "enrichment.bedrock.schema must describe an object (`type: object`): the \
                 model answers through a tool, whose input is an object"
                    .into(),
            );
        }
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| format!("enrichment.bedrock.schema is not a valid JSON Schema: {e}"))?;
        Ok(AnswerSchema {
            schema: schema.clone(),
            validator,
        })
    }

    /// `Err`: why `answer` does not match, naming where (a JSON pointer into the answer).
    pub fn check(&self, answer: &Value) -> Result<(), String> {
        self.validator.validate(answer).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("the answer does not match enrichment.bedrock.schema at {at}: {e}")
        })
    }
}

/// A JSON value as the SDK's `Document` (the Converse tool schema).
pub fn to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (None, Some(i)) => Number::NegInt(i),
            _ => Number::Float(n.as_f64().unwrap_or(0.0)),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(to_document).collect()),
        Value::Object(m) => Document::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// A `Document` (a Converse tool's input) as JSON, object keys sorted (the SDK's map has no
/// order; sorted, the same answer is always written the same way).
pub fn from_document(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(a) => Value::Array(a.iter().map(from_document).collect()),
        Document::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let out: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), from_document(&m[k])))
                .collect();
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> AnswerSchema {
        AnswerSchema::compile(&json!({"type": "object", "required": ["tone", "words"],
            "properties": {"tone": {"enum": ["calm", "angry"]}, "words": {"type": "integer"}}}))
        .unwrap()
    }

    #[test]
    fn answers_are_checked_and_the_error_says_where() {
        let s = schema();
        assert_eq!(s.check(&json!({"tone": "calm", "words": 3})), Ok(()));
        let e = s
            .check(&json!({"tone": "calm", "words": "many"}))
            .unwrap_err();
        assert!(
            e.starts_with("the answer does not match enrichment.bedrock.schema at /words: "),
            "{e}"
        );
        let e = s.check(&json!({"tone": "calm"})).unwrap_err();
        assert!(
            e.contains("at /: ") && e.contains("\"words\" is a required property"),
            "{e}"
        );
    }

    #[test]
    fn only_valid_object_schemas_compile() {
        assert!(AnswerSchema::compile(&json!({"type": "string"}))
            .err()
            .unwrap()
            .contains("must describe an object"));
        assert!(AnswerSchema::compile(
            &json!({"type": "object", "properties": {"a": {"type": 12}}})
        )
        .err()
        .unwrap()
        .starts_with("enrichment.bedrock.schema is not a valid JSON Schema"));
    }

    #[test]
    fn documents_round_trip_with_sorted_keys() {
        let v = json!({"b": [1, -2, 0.5, "x", null, true], "a": {"z": 1, "y": {}}});
        let back = from_document(&to_document(&v));
        assert_eq!(back, v);
        assert_eq!(
            back.to_string(),
            r#"{"a":{"y":{},"z":1},"b":[1,-2,0.5,"x",null,true]}"#
        );
    }
}
