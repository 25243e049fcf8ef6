//! MySQL's binary JSON (the JSON column type of MySQL 5.7+) rendered exactly, and its partial
//! updates (PARTIAL_UPDATE_ROWS_EVENT diffs) applied to the before document, so that the after
//! image of a record is always the whole document.
//!
//! Format: MySQL's `sql-common/json_binary.h` and `json_diff.h`; read with `mysql_common`.
//! Numbers keep their exact value: integers as integers, doubles in their shortest form,
//! DECIMALs with every digit (as numbers, which is what MySQL's own `JSON` printing does).

use mysql_common::binlog::jsonb::{self, JsonContainer, JsonDom, JsonNumber, JsonScalar};
use mysql_common::binlog::jsondiff::{JsonDiff, JsonDiffOperation};
use mysql_common::io::ParseBuf;

use crate::model::json::JsonNode;

/// MySQL binary JSON → a document. An empty value is JSON `null` (as the server reads it).
pub fn binary_to_node(b: &[u8]) -> Result<JsonNode, String> {
    if b.is_empty() {
        return Ok(JsonNode::Null);
    }
    let v: jsonb::Value<'_> = ParseBuf(b)
        .parse(())
        .map_err(|e| format!("binary JSON: {e}"))?;
    let dom = v.parse().map_err(|e| format!("binary JSON: {e}"))?;
    Ok(dom_to_node(dom))
}

fn dom_to_node(dom: JsonDom) -> JsonNode {
    match dom {
        JsonDom::Container(JsonContainer::Array(a)) => {
            JsonNode::Array(a.into_iter().map(dom_to_node).collect())
        }
        JsonDom::Container(JsonContainer::Object(m)) => {
            JsonNode::Object(m.into_iter().map(|(k, v)| (k, dom_to_node(v))).collect())
        }
        JsonDom::Scalar(s) => match s {
            JsonScalar::Null => JsonNode::Null,
            JsonScalar::Boolean(b) => JsonNode::Bool(b),
            JsonScalar::String(s) => JsonNode::String(s),
            JsonScalar::Number(n) => number(n),
            // Dates, times and other opaque values: the strings `mysql_common` renders
            // (`2015-01-15 23:24:25.000000`, `base64:type<id>:<data>`).
            other => match serde_json::Value::from(other) {
                serde_json::Value::String(s) => JsonNode::String(s),
                v => JsonNode::String(v.to_string()),
            },
        },
    }
}

fn number(n: JsonNumber) -> JsonNode {
    match n {
        JsonNumber::Int(i) => JsonNode::Number(i.to_string()),
        JsonNumber::Uint(u) => JsonNode::Number(u.to_string()),
        // MySQL cannot store NaN or infinities in JSON; should one appear, it is said as text.
        JsonNumber::Double(f) if !f.is_finite() => JsonNode::String(f.to_string()),
        JsonNumber::Double(f) => JsonNode::Number(serde_json::to_string(&f).unwrap_or_default()),
        JsonNumber::Decimal(d) => {
            let mut s = d.to_string();
            super::decimal::trim_integer_zeros(&mut s);
            JsonNode::Number(s)
        }
    }
}

#[derive(Debug, PartialEq)]
enum Leg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Result<Vec<Leg>, String> {
    let bad = || format!("JSON path `{path}` is not supported");
    let mut rest = path.strip_prefix('$').ok_or_else(bad)?;
    let mut legs = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            if let Some(r) = r.strip_prefix('"') {
                let mut key = String::new();
                let mut chars = r.char_indices();
                let mut end = None;
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => key.push(chars.next().ok_or_else(bad)?.1),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => key.push(c),
                    }
                }
                rest = &r[end.ok_or_else(bad)?..];
                legs.push(Leg::Key(key));
            } else {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                legs.push(Leg::Key(r[..end].to_string()));
                rest = &r[end..];
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let idx = r[..end].trim().parse::<usize>().map_err(|_| bad())?;
            legs.push(Leg::Index(idx));
            rest = &r[end + 1..];
        } else {
            return Err(bad());
        }
    }
    Ok(legs)
}

fn parent_mut<'v>(doc: &'v mut JsonNode, legs: &[Leg]) -> Option<&'v mut JsonNode> {
    let mut cur = doc;
    for leg in legs {
        cur = match (leg, cur) {
            (Leg::Key(k), JsonNode::Object(m)) => {
                m.iter_mut().find(|(n, _)| n == k).map(|x| &mut x.1)?
            }
            (Leg::Index(i), JsonNode::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Applies the serialized list of diffs in `bytes` to `doc`.
pub fn apply_diffs(doc: &mut JsonNode, bytes: &[u8]) -> Result<(), String> {
    let mut buf = ParseBuf(bytes);
    while !buf.is_empty() {
        let diff: JsonDiff<'_> = buf.parse(()).map_err(|e| format!("JSON diff: {e}"))?;
        let path = diff.path_str();
        let legs = parse_path(&path)?;
        let value = match diff.value() {
            Some(v) => Some(dom_to_node(
                v.clone()
                    .parse()
                    .map_err(|e| format!("JSON diff value: {e}"))?,
            )),
            None => None,
        };
        let missing = || format!("JSON diff path `{path}` does not exist in the before image");
        let Some((last, parents)) = legs.split_last() else {
            // The whole document.
            match (diff.operation(), value) {
                (JsonDiffOperation::REMOVE, _) => *doc = JsonNode::Null,
                (_, Some(v)) => *doc = v,
                (_, None) => return Err("JSON diff without a value".into()),
            }
            continue;
        };
        let parent = parent_mut(doc, parents).ok_or_else(missing)?;
        apply_one(diff.operation(), last, parent, value).ok_or_else(missing)?;
    }
    Ok(())
}

fn apply_one(
    op: JsonDiffOperation,
    last: &Leg,
    parent: &mut JsonNode,
    value: Option<JsonNode>,
) -> Option<()> {
    use JsonDiffOperation::{INSERT, REMOVE, REPLACE};
    match (op, last, parent) {
        (REMOVE, Leg::Key(k), JsonNode::Object(m)) => {
            if let Some(i) = m.iter().position(|(n, _)| n == k) {
                m.remove(i);
            }
        }
        (REMOVE, Leg::Index(i), JsonNode::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        (REPLACE | INSERT, Leg::Key(k), JsonNode::Object(m)) => {
            let v = value?;
            match m.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v,
                None => m.push((k.clone(), v)),
            }
        }
        (REPLACE, Leg::Index(i), JsonNode::Array(a)) if *i < a.len() => a[*i] = value?,
        (INSERT, Leg::Index(i), JsonNode::Array(a)) => {
            let i = (*i).min(a.len());
            a.insert(i, value?);
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("$.a[2].\"b c\"").unwrap(),
            vec![Leg::Key("a".into()), Leg::Index(2), Leg::Key("b c".into())]
        );
        assert!(parse_path("a.b").is_err());
    }

    #[test]
    fn decimals_stay_exact() {
        assert_eq!(
            number(JsonNumber::Double(0.1)),
            JsonNode::Number("0.1".into())
        );
        assert_eq!(
            number(JsonNumber::Uint(u64::MAX)),
            JsonNode::Number("18446744073709551615".into())
        );
    }
}
