//! The value of one column in a change record, typed as the README's type mapping says.

use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// One column's value, as the source decoded it and the sinks write it.
///
/// Serialized (by the sinks) as: `Null` → `null`, `Int`/`UInt` → an exact integer, `Float` →
/// the shortest decimal form, `Text` → a string, `Json` → the document itself.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// TINYINT … BIGINT, YEAR-less integers, BIT.
    Int(i64),
    /// Unsigned integers above `i64::MAX` and BIT values, SETs without labels.
    UInt(u64),
    /// FLOAT and DOUBLE (FLOAT already in its shortest `f32` form).
    Float(f64),
    /// Strings, DECIMAL, dates and times, ENUM/SET labels, base64 of binary values.
    Text(String),
    /// A JSON document (MySQL JSON, MariaDB JSON, VECTOR as an array), exact.
    Json(JsonText),
}

impl ColumnValue {
    /// Whether the value is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    /// The text of a `Text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// NULL, or text that is empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        match self {
            ColumnValue::Null => true,
            ColumnValue::Text(s) => s.trim().is_empty(),
            _ => false,
        }
    }

    /// The value as a number where it is one (texts that parse as numbers included, so a
    /// DECIMAL compares as a number).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ColumnValue::Int(i) => Some(*i as f64),
            ColumnValue::UInt(u) => Some(*u as f64),
            ColumnValue::Float(f) => Some(*f),
            ColumnValue::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as text for a prompt, a document or a CSV field: strings as they are,
    /// numbers in their JSON form, JSON documents as their text, NULL as nothing.
    pub fn push_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            ColumnValue::Null => {}
            ColumnValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            ColumnValue::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            ColumnValue::Float(_) => out.push_str(&self.to_json_text()),
            ColumnValue::Text(s) => out.push_str(s),
            ColumnValue::Json(j) => out.push_str(j.get()),
        }
    }

    /// The value's JSON text, as a record carries it.
    pub fn to_json_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// As a `serde_json::Value` (numbers in JSON documents above `f64` become `null`: use only
    /// where a JSON tree is needed, such as an enrichment request body).
    pub fn to_json_value(&self) -> serde_json::Value {
        match self {
            ColumnValue::Null => serde_json::Value::Null,
            ColumnValue::Int(i) => (*i).into(),
            ColumnValue::UInt(u) => (*u).into(),
            ColumnValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            ColumnValue::Text(s) => serde_json::Value::String(s.clone()),
            ColumnValue::Json(j) => {
                serde_json::from_str(j.get()).unwrap_or(serde_json::Value::Null)
            }
        }
    }

    /// A value read back from JSON (a saved backfill key): numbers exact where they are
    /// integers, strings as text, anything else as a document.
    pub fn from_json_value(v: &serde_json::Value) -> ColumnValue {
        use serde_json::Value as J;
        match v {
            J::Null => ColumnValue::Null,
            J::Bool(b) => ColumnValue::Int(*b as i64),
            J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ColumnValue::Int(i),
                (_, Some(u), _) => ColumnValue::UInt(u),
                (_, _, f) => ColumnValue::float(f.unwrap_or(f64::NAN)),
            },
            J::String(s) => ColumnValue::Text(s.clone()),
            other => {
                JsonText::parse(&other.to_string()).map_or(ColumnValue::Null, ColumnValue::Json)
            }
        }
    }

    /// A float as a record shows it: NaN and infinities (which MySQL cannot store) as text.
    pub fn float(f: f64) -> ColumnValue {
        if f.is_finite() {
            ColumnValue::Float(f)
        } else {
            ColumnValue::Text(f.to_string())
        }
    }

    /// The shortest decimal form of an `f32` (0.1f32 is 0.1, not 0.10000000149011612).
    pub fn float32(f: f32) -> ColumnValue {
        match f.to_string().parse::<f64>() {
            Ok(d) => ColumnValue::float(d),
            Err(_) => ColumnValue::float(f as f64),
        }
    }
}

impl Serialize for ColumnValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ColumnValue::Null => s.serialize_unit(),
            ColumnValue::Int(i) => s.serialize_i64(*i),
            ColumnValue::UInt(u) => s.serialize_u64(*u),
            ColumnValue::Float(f) => s.serialize_f64(*f),
            ColumnValue::Text(t) => s.serialize_str(t),
            ColumnValue::Json(j) => j.0.serialize(s),
        }
    }
}

/// A validated JSON document in compact form, every number exactly as written.
#[derive(Debug, Clone)]
pub struct JsonText(Arc<RawValue>);

impl JsonText {
    /// Validates `text` (RFC 8259) and keeps its compact form.
    pub fn parse(text: &str) -> Result<JsonText, String> {
        Self::from_compact(super::json::compact(text)?)
    }

    /// As [`JsonText::parse`], for a MariaDB JSON column's text: what its `json_valid` accepts
    /// beyond RFC 8259, read as MariaDB reads it ([`super::json::JsonNode::parse_mariadb`]).
    pub fn parse_mariadb(text: &str) -> Result<JsonText, String> {
        Self::from_compact(super::json::compact_mariadb(text)?)
    }

    /// The compact text of a tree.
    pub fn from_node(node: &super::json::JsonNode) -> Result<JsonText, String> {
        Self::from_compact(node.render())
    }

    fn from_compact(text: String) -> Result<JsonText, String> {
        RawValue::from_string(text)
            .map(|r| JsonText(Arc::from(r)))
            .map_err(|e| format!("invalid JSON: {e}"))
    }

    /// The document's text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_type_mapping_says() {
        let row = vec![
            ColumnValue::Null,
            ColumnValue::Int(-5),
            ColumnValue::UInt(u64::MAX),
            ColumnValue::float32(0.1),
            ColumnValue::Text("é".into()),
            ColumnValue::Json(JsonText::parse(r#"{ "n": 12345678901234567890123 }"#).unwrap()),
        ];
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"[null,-5,18446744073709551615,0.1,"é",{"n":12345678901234567890123}]"#
        );
    }

    #[test]
    fn huge_exponents_are_valid_documents() {
        let j = JsonText::parse("[1e400, -1e-400]").unwrap();
        assert_eq!(j.get(), "[1e400,-1e-400]");
    }
}
