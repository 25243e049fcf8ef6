//! Column character sets: collation id → a decoder to UTF-8.

use encoding_rs::Encoding;
use mysql_common::collations::{Collation, CollationId};

/// How the bytes of a text column become a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3, ascii: already UTF-8 (validated).
    Utf8,
    /// `binary`: not text at all; emitted as base64.
    Binary,
    /// Any other charset that `encoding_rs` knows (latin1 = windows-1252, as in MySQL).
    Other(&'static Encoding),
    /// UTF-16 big endian (ucs2, utf16).
    Utf16Be,
    /// UTF-16 little endian (utf16le).
    Utf16Le,
    /// UTF-32 big endian (utf32).
    Utf32,
}

impl Charset {
    /// Resolves a MySQL/MariaDB collation id. `None` for an id this build does not know.
    pub fn from_collation_id(id: u16) -> Option<Charset> {
        if id == 63 {
            return Some(Charset::Binary);
        }
        let cid = CollationId::from(id);
        if cid == CollationId::UNKNOWN_COLLATION_ID {
            return None;
        }
        Self::from_name(Collation::resolve(cid).charset())
    }

    /// Resolves a charset name as `information_schema` spells it.
    pub fn from_name(name: &str) -> Option<Charset> {
        let enc = |label: &str| Encoding::for_label(label.as_bytes()).map(Charset::Other);
        match name.to_ascii_lowercase().as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Some(Charset::Utf8),
            "binary" => Some(Charset::Binary),
            "latin1" => enc("windows-1252"),
            "latin2" => enc("iso-8859-2"),
            "latin5" => enc("iso-8859-9"),
            "latin7" => enc("iso-8859-13"),
            "greek" => enc("iso-8859-7"),
            "hebrew" => enc("iso-8859-8"),
            "cp1250" => enc("windows-1250"),
            "cp1251" => enc("windows-1251"),
            "cp1256" => enc("windows-1256"),
            "cp1257" => enc("windows-1257"),
            "cp866" => enc("ibm866"),
            "koi8r" => enc("koi8-r"),
            "koi8u" => enc("koi8-u"),
            "tis620" => enc("windows-874"),
            "sjis" | "cp932" => enc("shift_jis"),
            "ujis" | "eucjpms" => enc("euc-jp"),
            "euckr" => enc("euc-kr"),
            "gbk" | "gb2312" => enc("gbk"),
            "gb18030" => enc("gb18030"),
            "big5" => enc("big5"),
            "ucs2" | "utf16" => Some(Charset::Utf16Be),
            "utf16le" => Some(Charset::Utf16Le),
            "utf32" => Some(Charset::Utf32),
            _ => None,
        }
    }

    /// Decodes `bytes` to a `String`. Bytes that are not valid in the charset become U+FFFD
    /// and the second value is `true`, so the caller can count them; nothing is dropped.
    pub fn decode(self, bytes: &[u8]) -> (String, bool) {
        match self {
            Charset::Utf8 | Charset::Binary => match std::str::from_utf8(bytes) {
                Ok(s) => (s.to_owned(), false),
                Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
            },
            Charset::Other(enc) => {
                let (s, _, bad) = enc.decode(bytes);
                (s.into_owned(), bad)
            }
            Charset::Utf16Be | Charset::Utf16Le => {
                let le = self == Charset::Utf16Le;
                let units = bytes.chunks_exact(2).map(|c| {
                    if le {
                        u16::from_le_bytes([c[0], c[1]])
                    } else {
                        u16::from_be_bytes([c[0], c[1]])
                    }
                });
                let mut bad = !bytes.len().is_multiple_of(2);
                let s: String = char::decode_utf16(units)
                    .map(|r| {
                        r.unwrap_or_else(|_| {
                            bad = true;
                            char::REPLACEMENT_CHARACTER
                        })
                    })
                    .collect();
                (s, bad)
            }
            Charset::Utf32 => {
                let mut bad = !bytes.len().is_multiple_of(4);
                let s: String = bytes
                    .chunks_exact(4)
                    .map(|c| {
                        char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or_else(
                            || {
                                bad = true;
                                char::REPLACEMENT_CHARACTER
                            },
                        )
                    })
                    .collect();
                (s, bad)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_cp1252() {
        let cs = Charset::from_collation_id(8).unwrap(); // latin1_swedish_ci
        assert_eq!(cs.decode(b"caf\xe9 \x80"), ("café €".to_string(), false));
        assert_eq!(Charset::from_collation_id(45), Some(Charset::Utf8));
        assert_eq!(Charset::from_collation_id(63), Some(Charset::Binary));
    }

    #[test]
    fn utf16_and_invalid_utf8() {
        assert_eq!(
            Charset::Utf16Be.decode(&[0, b'h', 0, b'i']),
            ("hi".into(), false)
        );
        assert_eq!(Charset::Utf8.decode(b"a\xffb"), ("a\u{fffd}b".into(), true));
    }
}
