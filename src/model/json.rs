//! JSON documents kept exactly: a parser that validates a document and keeps every number as
//! the text it was written with (`12345678901234567890123`, `1e400`, `19.990`), a small tree
//! for the few places that must edit a document (MySQL partial JSON updates), and a compact
//! renderer. `serde_json::Value` would round such numbers through `f64`.
//!
//! Grammar: RFC 8259 (<https://www.rfc-editor.org/rfc/rfc8259>).

use std::fmt::Write as _;

/// Documents nested deeper than this are refused (MySQL allows 100 levels, MariaDB 32).
pub const MAX_DEPTH: usize = 1000;

/// A JSON value whose numbers are kept as their literal text.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonNode {
    Null,
    Bool(bool),
    /// The number's literal text, as written (valid per RFC 8259).
    Number(String),
    String(String),
    Array(Vec<JsonNode>),
    /// Members in document order (duplicate keys are kept, as the servers keep them).
    Object(Vec<(String, JsonNode)>),
}

impl JsonNode {
    /// Parses a whole document (surrounding whitespace allowed). Errors give the byte offset.
    pub fn parse(text: &str) -> Result<JsonNode, String> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
        };
        p.ws();
        let v = p.value(0)?;
        p.ws();
        if p.i != p.b.len() {
            return Err(p.err("text after the document"));
        }
        Ok(v)
    }

    /// The compact text of the value (no insignificant whitespace; numbers as written).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    pub fn write(&self, out: &mut String) {
        match self {
            JsonNode::Null => out.push_str("null"),
            JsonNode::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonNode::Number(n) => out.push_str(n),
            JsonNode::String(s) => write_string(out, s),
            JsonNode::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            JsonNode::Object(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// `s` as a JSON string literal (quotes, and the escapes RFC 8259 requires).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Validates `text` as one JSON document and returns its compact form, numbers as written.
pub fn compact(text: &str) -> Result<String, String> {
    Ok(JsonNode::parse(text)?.render())
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.i)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &str, v: JsonNode) -> Result<JsonNode, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<JsonNode, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested deeper than 1000 levels"));
        }
        match self.b.get(self.i) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(JsonNode::String(self.string()?)),
            Some(b't') => self.literal("true", JsonNode::Bool(true)),
            Some(b'f') => self.literal("false", JsonNode::Bool(false)),
            Some(b'n') => self.literal("null", JsonNode::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<JsonNode, String> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Ok(JsonNode::Object(members));
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a member name"));
            }
            let k = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return Err(self.err("expected `:`"));
            }
            self.ws();
            let v = self.value(depth + 1)?;
            members.push((k, v));
            self.ws();
            if self.eat(b'}') {
                return Ok(JsonNode::Object(members));
            }
            if !self.eat(b',') {
                return Err(self.err("expected `,` or `}`"));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<JsonNode, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Ok(JsonNode::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(b']') {
                return Ok(JsonNode::Array(items));
            }
            if !self.eat(b',') {
                return Err(self.err("expected `,` or `]`"));
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<JsonNode, String> {
        let start = self.i;
        self.eat(b'-');
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("a number needs digits")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err("a fraction needs digits"));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err("an exponent needs digits"));
            }
        }
        // Only ASCII was consumed: the slice is valid UTF-8.
        let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default();
        Ok(JsonNode::Number(text.to_string()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&c) = self.b.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // The input is a &str and the run stops at ASCII bytes: a char boundary.
            out.push_str(std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default());
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let e = *self.b.get(self.i).ok_or_else(|| self.err("bad escape"))?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// `\uXXXX`, with a surrogate pair where there is one. A lone surrogate cannot be held by a
    /// Rust string: it becomes U+FFFD (the servers accept such documents; nothing else differs).
    fn unicode_escape(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.b[self.i..].starts_with(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            self.i = save;
        }
        Ok(char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_as_written() {
        let src = r#"{"big": 12345678901234567890123, "u64max": 18446744073709551615,
            "dec": 0.1000000000000000055511151231257827, "tiny": 1e-400, "huge": 1e400,
            "a": [-0, 1.0, 1E2, 1.5e+3, 100], "amount": 19.990}"#;
        assert_eq!(
            compact(src).unwrap(),
            r#"{"big":12345678901234567890123,"u64max":18446744073709551615,"dec":0.1000000000000000055511151231257827,"tiny":1e-400,"huge":1e400,"a":[-0,1.0,1E2,1.5e+3,100],"amount":19.990}"#
        );
    }

    #[test]
    fn strings_are_unescaped_and_escaped_again() {
        assert_eq!(
            compact(r#" "a \u00e9 \ud83d\ude00 \"q\" \n\/" "#).unwrap(),
            "\"a é 😀 \\\"q\\\" \\n/\""
        );
    }

    #[test]
    fn invalid_documents_say_where() {
        for (bad, want) in [
            ("", "unexpected end"),
            ("{\"a\":1,}", "expected a member name"),
            ("[1 2]", "expected `,` or `]`"),
            ("01", "text after the document"),
            ("1.", "a fraction needs digits"),
            ("1e", "an exponent needs digits"),
            ("\"a\u{1}\"", "control character"),
            ("tru", "unknown literal"),
            ("'x'", "unexpected character"),
        ] {
            let e = compact(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(compact(&deep).unwrap_err().contains("deeper"));
    }
}
