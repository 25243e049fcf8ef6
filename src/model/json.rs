//! JSON documents kept exactly: a parser that validates a document and keeps every number as
//! the text it was written with (`12345678901234567890123`, `1e400`, `19.990`), a small tree
//! for the few places that must edit a document (MySQL partial JSON updates), and a compact
//! renderer. `serde_json::Value` would round such numbers through `f64`.
//!
//! Grammar: RFC 8259 (<https://www.rfc-editor.org/rfc/rfc8259>); MariaDB's JSON columns hold
//! what its `json_valid` accepts, a little more (see [`JsonNode::parse_mariadb`]).

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
        Self::parse_as(text, false)
    }

    /// As [`JsonNode::parse`], accepting what MariaDB's `json_valid` accepts beyond RFC 8259
    /// (its `strings/json_lib.c`), read as MariaDB reads it: a number without the digits after
    /// its `-`, `.` or exponent (`10.`, `1.e5`, `-0.`) gets them as `0` (`10.0`, `1.0e5`,
    /// `-0.0`: the same value, valid JSON); an unknown escape in a string is the escaped
    /// character (`"\x41"` is `x41`, `"\'"` is `'`, as `JSON_VALUE` gives them).
    pub fn parse_mariadb(text: &str) -> Result<JsonNode, String> {
        Self::parse_as(text, true)
    }

    fn parse_as(text: &str, mariadb: bool) -> Result<JsonNode, String> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
            mariadb,
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

/// As [`compact`], for a MariaDB JSON column's text ([`JsonNode::parse_mariadb`]).
pub fn compact_mariadb(text: &str) -> Result<String, String> {
    Ok(JsonNode::parse_mariadb(text)?.render())
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// MariaDB's grammar (see [`JsonNode::parse_mariadb`]).
    mariadb: bool,
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
            Some(b'"') => Ok(JsonNode::String(self.string(false)?)),
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
            let k = self.string(true)?;
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
        // Where MariaDB's grammar left out digits: a `0` is written there.
        let mut zeros: Vec<usize> = Vec::new();
        self.eat(b'-');
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ if self.mariadb && self.i > start => zeros.push(self.i),
            _ => return Err(self.err("a number needs digits")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            self.missing_digits(&mut zeros, "a fraction needs digits")?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                self.missing_digits(&mut zeros, "an exponent needs digits")?;
            }
        }
        // Only ASCII was consumed: the slices are valid UTF-8.
        let mut text = String::with_capacity(self.i - start + zeros.len());
        let mut from = start;
        for at in zeros {
            text.push_str(std::str::from_utf8(&self.b[from..at]).unwrap_or_default());
            text.push('0');
            from = at;
        }
        text.push_str(std::str::from_utf8(&self.b[from..self.i]).unwrap_or_default());
        Ok(JsonNode::Number(text))
    }

    /// No digits where RFC 8259 needs some: an error, or (MariaDB) a `0` noted for here.
    fn missing_digits(&self, zeros: &mut Vec<usize>, what: &str) -> Result<(), String> {
        match self.mariadb {
            true => {
                zeros.push(self.i);
                Ok(())
            }
            false => Err(self.err(what)),
        }
    }

    /// MariaDB: an unknown escape is the character escaped (a whole UTF-8 sequence), whose
    /// first byte `self.i` has just passed.
    fn escaped_itself(&mut self, first: u8) -> Result<&str, String> {
        let from = self.i - 1;
        let len = match first {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        self.i = from + len;
        self.b
            .get(from..from + len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or_else(|| format!("invalid JSON at byte {from}: bad escape"))
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

    /// A string (`member_name`: an object's member name, whose unknown escapes MariaDB keeps
    /// as written: `JSON_KEYS('{"\\q":1}')` is `["\\q"]`, and `$.q` does not find it).
    fn string(&mut self, member_name: bool) -> Result<String, String> {
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
                        c if self.mariadb && c >= 0x20 => {
                            if member_name {
                                out.push('\\');
                            }
                            out.push_str(self.escaped_itself(c)?);
                        }
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
    fn mariadb_documents_read_as_mariadb_reads_them() {
        // Each accepted by MariaDB 10.11's JSON_VALID (checked on the server).
        for (src, want) in [
            (r#"{"price": 10.}"#, r#"{"price":10.0}"#),
            (
                "[1., -0., 1.e5, 1.E+5, 2.5e-3]",
                "[1.0,-0.0,1.0e5,1.0E+5,2.5e-3]",
            ),
            ("[-]", "[-0]"),
            ("[1.e]", "[1.0e0]"),
            (
                r#"["\x41", "\q", "\'", "\a", "\U00e9", "\é!", "\u00e9"]"#,
                r#"["x41","q","'","a","U00e9","é!","é"]"#,
            ),
            // Member names keep an unknown escape as written (MariaDB's keys are their text).
            (
                r#"{"\q": 1, "q": 2, "\u0071": 3}"#,
                r#"{"\\q":1,"q":2,"q":3}"#,
            ),
        ] {
            assert_eq!(compact_mariadb(src).unwrap(), want, "{src}");
            assert!(compact(src).is_err(), "strict: {src}");
            // What comes out is RFC 8259 JSON, numbers as written.
            assert_eq!(compact(want).unwrap(), want);
        }
        for bad in ["01", ".5", "+1", "1.5.", r#""\u12""#, "[1,]", "0x10"] {
            assert!(compact_mariadb(bad).is_err(), "{bad}");
        }
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
