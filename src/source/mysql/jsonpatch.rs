//! Applies MySQL partial JSON updates (PARTIAL_UPDATE_ROWS_EVENT diffs) to the before value,
//! so that the after image of a record is always the whole document.

use mysql_common::binlog::jsondiff::{JsonDiff, JsonDiffOperation};
use mysql_common::io::ParseBuf;
use serde_json::Value;

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

fn parent_mut<'v>(doc: &'v mut Value, legs: &[Leg]) -> Option<&'v mut Value> {
    let mut cur = doc;
    for leg in legs {
        cur = match (leg, cur) {
            (Leg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Leg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Applies the serialized list of diffs in `bytes` to `doc`.
pub fn apply_diffs(doc: &mut Value, bytes: &[u8]) -> Result<(), String> {
    let mut buf = ParseBuf(bytes);
    while !buf.is_empty() {
        let diff: JsonDiff<'_> = buf.parse(()).map_err(|e| format!("JSON diff: {e}"))?;
        let legs = parse_path(&diff.path_str())?;
        let value = match diff.value() {
            Some(v) => {
                let dom = v
                    .clone()
                    .parse()
                    .map_err(|e| format!("JSON diff value: {e}"))?;
                Some(Value::from(dom))
            }
            None => None,
        };
        let (last, parents) = match legs.split_last() {
            Some(x) => x,
            None => {
                // The whole document.
                match (diff.operation(), value) {
                    (JsonDiffOperation::REMOVE, _) => *doc = Value::Null,
                    (_, Some(v)) => *doc = v,
                    (_, None) => return Err("JSON diff without a value".into()),
                }
                continue;
            }
        };
        let missing = || {
            format!(
                "JSON diff path `{}` does not exist in the before image",
                diff.path_str()
            )
        };
        let parent = parent_mut(doc, parents).ok_or_else(missing)?;
        match (diff.operation(), last, parent) {
            (JsonDiffOperation::REMOVE, Leg::Key(k), Value::Object(m)) => {
                m.shift_remove(k);
            }
            (JsonDiffOperation::REMOVE, Leg::Index(i), Value::Array(a)) if *i < a.len() => {
                a.remove(*i);
            }
            (
                JsonDiffOperation::REPLACE | JsonDiffOperation::INSERT,
                Leg::Key(k),
                Value::Object(m),
            ) => {
                m.insert(k.clone(), value.ok_or_else(missing)?);
            }
            (JsonDiffOperation::REPLACE, Leg::Index(i), Value::Array(a)) if *i < a.len() => {
                a[*i] = value.ok_or_else(missing)?;
            }
            (JsonDiffOperation::INSERT, Leg::Index(i), Value::Array(a)) => {
                let i = (*i).min(a.len());
                a.insert(i, value.ok_or_else(missing)?);
            }
            _ => return Err(missing()),
        }
    }
    Ok(())
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
}
