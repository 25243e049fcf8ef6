//! One column value of a row image: how its bytes are read ([`Kind`], resolved once per
//! TABLE_MAP) and rendered as a [`ColumnValue`] (the README's type mapping).
//!
//! Row formats: MySQL's `Field::pack`/`unpack` per type, MariaDB's `field.cc` for its own
//! (5.3 temporal formats, compressed columns); <https://mariadb.com/kb/en/rows_event_v1v2-rows_compressed_event_v1/>.

use std::sync::Arc;

use base64::Engine as _;
use mysql_common::binlog::decimal::Decimal;

use super::charset::Charset;
use super::cursor::Cursor;
use super::decimal::trim_integer_zeros;
use super::temporal;
use crate::model::{ColumnValue, JsonText};

/// How one column's bytes are read and rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    /// TIME of MySQL < 5.6 and MariaDB's TIME(0) in the 5.3 format: `[-]HHMMSS` in 3 bytes.
    TimeOld,
    /// MariaDB 5.3 TIME(n), n > 0: big-endian, offset by the zero point.
    TimeHires {
        fsp: u8,
    },
    Time2 {
        fsp: u8,
    },
    /// DATETIME of MySQL < 5.6 / MariaDB 5.3 DATETIME(0): `YYYYMMDDhhmmss` in 8 bytes.
    DateTimeOld,
    /// MariaDB 5.3 DATETIME(n), n > 0.
    DateTimeHires {
        fsp: u8,
    },
    DateTime2 {
        fsp: u8,
    },
    /// TIMESTAMP of MySQL < 5.6 / MariaDB 5.3 TIMESTAMP(0): seconds, 4 bytes little-endian.
    TimestampOld,
    /// MariaDB 5.3 TIMESTAMP(n), n > 0: seconds big-endian, then the fraction.
    TimestampHires {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    /// CHAR, VARCHAR, BINARY, VARBINARY. `pad_to`: BINARY(n), whose trailing zero bytes
    /// the binlog strips and the stored value has.
    String {
        len_bytes: u8,
        charset: Charset,
        pad_to: u16,
    },
    /// TEXT / BLOB (and MariaDB's JSON, which is a LONGTEXT with `json: true`).
    Blob {
        len_bytes: u8,
        charset: Charset,
        json: bool,
    },
    /// MariaDB `… COMPRESSED` columns: a header byte, then the bytes or a zlib stream.
    Compressed {
        len_bytes: u8,
        charset: Charset,
        json: bool,
    },
    /// MySQL's binary JSON.
    Json {
        len_bytes: u8,
    },
    Enum {
        bytes: u8,
        labels: Arc<[String]>,
    },
    Set {
        bytes: u8,
        labels: Arc<[String]>,
    },
    Bit {
        bytes: u8,
    },
    /// MariaDB INET4, INET6 and UUID: fixed binary in the binlog, their text form in records.
    Inet4,
    Inet6,
    Uuid,
    Geometry {
        len_bytes: u8,
    },
    Vector {
        len_bytes: u8,
    },
    Null,
}

impl Kind {
    /// How records write this kind's values (a change topic's `schema` says it per column).
    pub fn encoding(&self) -> crate::model::record::ValueEncoding {
        use crate::model::record::ValueEncoding;
        match self {
            Kind::Json { .. }
            | Kind::Vector { .. }
            | Kind::Blob { json: true, .. }
            | Kind::Compressed { json: true, .. } => ValueEncoding::Json,
            Kind::Float | Kind::Double => ValueEncoding::Float,
            _ => ValueEncoding::Plain,
        }
    }
}

/// A value that could not be decoded: why, and whether the rest of the row can still be read
/// (its width was known).
pub type ValueError = String;

/// Reads one value of `kind`. `bad_text` counts strings with bytes invalid in their charset.
pub fn decode_value(
    kind: &Kind,
    c: &mut Cursor<'_>,
    bad_text: &mut usize,
) -> Result<ColumnValue, ValueError> {
    Ok(match kind {
        Kind::Int { bytes, unsigned } => {
            let n = *bytes as usize;
            let raw = c.le(n)?;
            if *unsigned {
                match i64::try_from(raw) {
                    Ok(i) => ColumnValue::Int(i),
                    Err(_) => ColumnValue::UInt(raw),
                }
            } else {
                let shift = 64 - 8 * n as u32;
                ColumnValue::Int(((raw << shift) as i64) >> shift)
            }
        }
        Kind::Float => ColumnValue::float32(f32::from_bits(c.le(4)? as u32)),
        Kind::Double => ColumnValue::float(f64::from_bits(c.le(8)?)),
        Kind::Decimal { precision, scale } => decimal(c, *precision, *scale)?,
        Kind::String { .. }
        | Kind::Blob { .. }
        | Kind::Compressed { .. }
        | Kind::Json { .. }
        | Kind::Geometry { .. }
        | Kind::Vector { .. } => sized(kind, c, bad_text)?,
        Kind::Enum { bytes, labels } => {
            let idx = c.le(*bytes as usize)? as usize;
            match idx {
                // The invalid value a non-strict sql_mode stores: the empty string.
                0 => ColumnValue::Text(String::new()),
                i => labels
                    .get(i - 1)
                    .map(|l| ColumnValue::Text(l.clone()))
                    .unwrap_or(ColumnValue::UInt(i as u64)),
            }
        }
        Kind::Set { bytes, labels } => set(c.le(*bytes as usize)?, labels),
        Kind::Bit { bytes } => ColumnValue::UInt(c.be(*bytes as usize)?),
        Kind::Inet4 | Kind::Inet6 | Kind::Uuid => ColumnValue::Text(address(kind, c)?),
        Kind::Null => ColumnValue::Null,
        _ => ColumnValue::Text(temporal_text(kind, c)?),
    })
}

/// A YEAR, DATE, TIME, DATETIME or TIMESTAMP value, as the server prints it.
#[inline]
fn temporal_text(kind: &Kind, c: &mut Cursor<'_>) -> Result<String, ValueError> {
    Ok(match kind {
        Kind::Year => match c.u8()? {
            0 => "0000".into(),
            y => format!("{}", 1900 + y as u32),
        },
        Kind::Date => temporal::date_from_packed(c.le(3)? as u32),
        Kind::TimeOld => {
            let raw = c.le(3)? as u32;
            temporal::time_from_decimal(((raw << 8) as i32) >> 8)
        }
        Kind::Time2 { fsp } => temporal::time_from_packed(temporal::time2_packed(c, *fsp)?, *fsp),
        Kind::TimeHires { fsp } => temporal::time_hires(c, *fsp)?,
        Kind::DateTimeOld => temporal::datetime_from_decimal(c.le(8)?),
        Kind::DateTime2 { fsp } => {
            temporal::datetime_from_packed(temporal::datetime2_packed(c, *fsp)?, *fsp)
        }
        Kind::DateTimeHires { fsp } => temporal::datetime_hires(c, *fsp)?,
        Kind::TimestampOld => temporal::timestamp(c.le(4)? as i64, 0, 0),
        Kind::Timestamp2 { fsp } => {
            let secs = c.be(4)? as i64;
            let micros = temporal::fraction56(c, *fsp)?;
            temporal::timestamp(secs, micros, *fsp)
        }
        Kind::TimestampHires { fsp } => temporal::timestamp_hires(c, *fsp)?,
        other => return Err(format!("internal: {other:?} is not a temporal type")),
    })
}

/// A length-prefixed value: a string, a blob (text or JSON), a compressed column, MySQL's
/// binary JSON, a geometry (base64 WKB) or a vector.
#[inline]
fn sized(kind: &Kind, c: &mut Cursor<'_>, bad_text: &mut usize) -> Result<ColumnValue, ValueError> {
    Ok(match kind {
        Kind::String {
            len_bytes,
            charset,
            pad_to,
        } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = c.take(len)?;
            if (*pad_to as usize) > b.len() {
                let mut padded = b.to_vec();
                padded.resize(*pad_to as usize, 0);
                text(*charset, &padded, bad_text)
            } else {
                text(*charset, b, bad_text)
            }
        }
        Kind::Blob {
            len_bytes,
            charset,
            json,
        } => {
            let len = c.le(*len_bytes as usize)? as usize;
            text_or_json(*charset, *json, c.take(len)?, bad_text)?
        }
        Kind::Compressed {
            len_bytes,
            charset,
            json,
        } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = uncompress_column(c.take(len)?)?;
            text_or_json(*charset, *json, &b, bad_text)?
        }
        Kind::Json { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let node = super::mysql_json::binary_to_node(c.take(len)?)?;
            ColumnValue::Json(JsonText::from_node(&node)?)
        }
        Kind::Geometry { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = c.take(len)?;
            // MySQL stores a 4-byte SRID before the WKB.
            let wkb = if b.len() >= 4 { &b[4..] } else { b };
            ColumnValue::Text(base64::engine::general_purpose::STANDARD.encode(wkb))
        }
        Kind::Vector { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            vector(c.take(len)?)?
        }
        other => return Err(format!("internal: {other:?} is not a length-prefixed type")),
    })
}

/// INET4 `10.0.0.1`, INET6 `2001:db8::ff00:42:8329` (as MariaDB prints it: [`inet6_text`]),
/// UUID `123e4567-e89b-12d3-a456-426655440000`, from their length-prefixed binary form.
fn address(kind: &Kind, c: &mut Cursor<'_>) -> Result<String, ValueError> {
    let len = c.u8()? as usize;
    let b = c.take(len)?;
    let mut raw = [0u8; 16];
    let want = if matches!(kind, Kind::Inet4) { 4 } else { 16 };
    if len > want {
        return Err(format!("{len} bytes where {want} are expected"));
    }
    // The binlog strips trailing zero bytes of fixed binary values.
    raw[..len].copy_from_slice(b);
    Ok(match kind {
        Kind::Inet4 => std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).to_string(),
        Kind::Inet6 => inet6_text(&raw),
        _ => {
            let h: String = raw.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
    })
}

/// An INET6 value as MariaDB prints it (`Inet6::to_string`, the algorithm of MySQL's
/// `INET6_NTOA`), which is not RFC 5952's: the longest run of zero words is shortened to `::`
/// even when it is one word long (the first of equal runs), and an address whose longest zero
/// run is exactly its first six words (IPv4-compatible) or its first five followed by `ffff`
/// (IPv4-mapped) ends in dotted IPv4: `::0.1.0.2`, `::ffff:10.0.0.1`; `::1` stays `::1` (its
/// zero run is seven words long).
fn inet6_text(raw: &[u8; 16]) -> String {
    let words: Vec<u16> = raw
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    // The longest run of zero words: (start, length); a later run must be longer to win.
    let (mut gap, mut run) = ((usize::MAX, 0usize), (usize::MAX, 0usize));
    for (i, w) in words.iter().enumerate() {
        if *w == 0 {
            run = if run.1 == 0 {
                (i, 1)
            } else {
                (run.0, run.1 + 1)
            };
            if run.1 > gap.1 {
                gap = run;
            }
        } else {
            run = (usize::MAX, 0);
        }
    }
    let mut out = String::with_capacity(39);
    let mut i = 0;
    while i < 8 {
        if i == gap.0 {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += gap.1;
            continue;
        }
        if i == 6 && gap.0 == 0 && (gap.1 == 6 || (gap.1 == 5 && words[5] == 0xffff)) {
            let v4 = std::net::Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]);
            out.push_str(&v4.to_string());
            return out;
        }
        out.push_str(&format!("{:x}", words[i]));
        if i != 7 {
            out.push(':');
        }
        i += 1;
    }
    out
}

fn decimal(c: &mut Cursor<'_>, precision: u8, scale: u8) -> Result<ColumnValue, ValueError> {
    let size = mysql_common::binlog::decimal::decimal_bin_size(precision as usize, scale as usize);
    let b = c.take(size)?;
    let d = Decimal::read_bin(b, precision as usize, scale as usize, true)
        .map_err(|e| format!("decimal: {e}"))?;
    let mut s = d.to_string();
    trim_integer_zeros(&mut s);
    Ok(ColumnValue::Text(s))
}

fn set(mask: u64, labels: &[String]) -> ColumnValue {
    if labels.is_empty() {
        return ColumnValue::UInt(mask);
    }
    let mut s = String::new();
    for (i, l) in labels.iter().enumerate().take(64) {
        if mask & (1u64 << i) != 0 {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(l);
        }
    }
    ColumnValue::Text(s)
}

fn vector(b: &[u8]) -> Result<ColumnValue, ValueError> {
    let mut node = Vec::with_capacity(b.len() / 4);
    for x in b.chunks_exact(4) {
        let f = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        node.push(match ColumnValue::float32(f) {
            ColumnValue::Float(d) => serde_json::to_string(&d).unwrap_or_default(),
            other => other.to_json_text(),
        });
    }
    let text = format!("[{}]", node.join(","));
    Ok(ColumnValue::Json(JsonText::parse(&text)?))
}

fn text(charset: Charset, bytes: &[u8], bad_text: &mut usize) -> ColumnValue {
    if charset == Charset::Binary {
        return ColumnValue::Text(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    let (s, bad) = charset.decode(bytes);
    if bad {
        *bad_text += 1;
    }
    ColumnValue::Text(s)
}

/// A TEXT/BLOB value, or MariaDB's JSON (a LONGTEXT that `json_valid` guards): the document
/// itself, exact, or an error naming what is wrong with it — never silently a string.
fn text_or_json(
    charset: Charset,
    json: bool,
    b: &[u8],
    bad_text: &mut usize,
) -> Result<ColumnValue, ValueError> {
    if !json || charset == Charset::Binary {
        return Ok(text(charset, b, bad_text));
    }
    let (s, bad) = charset.decode(b);
    if bad {
        return Err("a JSON document with bytes invalid in its charset".into());
    }
    Ok(ColumnValue::Json(JsonText::parse_mariadb(&s).map_err(
        |e| format!("the column is JSON but its value is not a JSON document ({e})"),
    )?))
}

/// A MariaDB compressed column value: header 0 then the bytes as they are, or header
/// `0x80 | raw-deflate 0x08 | length bytes (1–4)`, the original length big-endian, then the
/// zlib (or raw deflate) stream. MariaDB `field.cc`, `compress_zlib` / `uncompress_zlib`.
pub fn uncompress_column(src: &[u8]) -> Result<Vec<u8>, ValueError> {
    use std::io::Read;
    let Some((&head, rest)) = src.split_first() else {
        return Ok(Vec::new());
    };
    if head == 0 {
        return Ok(rest.to_vec());
    }
    if head & 0x80 == 0 || head & 0x70 != 0 {
        return Err(format!(
            "compressed column header 0x{head:02x} names no compression method this decoder knows (zlib is 0x80)"
        ));
    }
    let lenlen = (head & 0x07) as usize;
    if !(1..=4).contains(&lenlen) || rest.len() < lenlen {
        return Err(format!(
            "compressed column header 0x{head:02x}: a {lenlen}-byte length"
        ));
    }
    let len = rest[..lenlen]
        .iter()
        .fold(0usize, |a, b| (a << 8) | *b as usize);
    let stream = &rest[lenlen..];
    let mut out = Vec::with_capacity(len.min(64 << 20));
    let limit = len as u64 + 1;
    let read = if head & 0x08 != 0 {
        flate2::read::DeflateDecoder::new(stream)
            .take(limit)
            .read_to_end(&mut out)
    } else {
        flate2::read::ZlibDecoder::new(stream)
            .take(limit)
            .read_to_end(&mut out)
    };
    read.map_err(|e| format!("compressed column: zlib: {e}"))?;
    if out.len() != len {
        return Err(format!(
            "compressed column gave {} bytes, its header says {len}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet6_is_printed_as_mariadb_prints_it() {
        // (the value's 16 bytes, `SELECT CAST(… AS INET6)` on MariaDB 10.11)
        for (hex, text) in [
            ("00000000000000000000000000010002", "::0.1.0.2"),
            ("00000000000000000000000000010000", "::0.1.0.0"),
            ("0000000000000000000000000A000001", "::10.0.0.1"),
            ("00000000000000000000000001000000", "::1.0.0.0"),
            ("00000000000000000000000000000001", "::1"),
            ("00000000000000000000000000000000", "::"),
            ("0000000000000000000000000000FFFF", "::ffff"),
            ("000000000000000000000000FFFF0000", "::255.255.0.0"),
            ("00000000000000000000FFFF0A000001", "::ffff:10.0.0.1"),
            ("00000000000000000000FFFF00010002", "::ffff:0.1.0.2"),
            ("00010000000200030004000500060007", "1::2:3:4:5:6:7"),
            ("00010000000000020000000000030004", "1::2:0:0:3:4"),
            ("00010000000000020003000000000000", "1:0:0:2:3::"),
            ("00000000000100000000000000000001", "0:0:1::1"),
            ("20010DB8000000000000FF0000428329", "2001:db8::ff00:42:8329"),
            ("FE800000000000000000000000000001", "fe80::1"),
            ("00000000000000000000000100000000", "::1:0:0"),
            ("00000000000000000000FFFF00000000", "::ffff:0.0.0.0"),
            ("00010000000000000000000000000000", "1::"),
            ("00000001000000000000000000000000", "0:1::"),
            ("0000000000000000000000000A000000", "::10.0.0.0"),
            (
                "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            ("00000000000000000001FFFF000A000B", "::1:ffff:a:b"),
        ] {
            let mut raw = [0u8; 16];
            for (i, b) in raw.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            assert_eq!(inet6_text(&raw), text, "{hex}");
        }
    }

    fn one(kind: &Kind, data: &[u8]) -> Result<ColumnValue, String> {
        decode_value(kind, &mut Cursor::new(data), &mut 0)
    }

    #[test]
    fn ints_sign_extend() {
        let i24 = |unsigned| Kind::Int { bytes: 3, unsigned };
        assert_eq!(one(&i24(false), &[0xff; 3]).unwrap(), ColumnValue::Int(-1));
        assert_eq!(
            one(&i24(true), &[0xff; 3]).unwrap(),
            ColumnValue::Int(16_777_215)
        );
        let u64k = Kind::Int {
            bytes: 8,
            unsigned: true,
        };
        assert_eq!(one(&u64k, &[0xff; 8]).unwrap(), ColumnValue::UInt(u64::MAX));
    }

    #[test]
    fn short_input_is_an_error() {
        let k = Kind::String {
            len_bytes: 1,
            charset: Charset::Utf8,
            pad_to: 0,
        };
        let e = one(&k, &[5, b'a']).unwrap_err();
        assert!(e.contains("needs 5 bytes"), "{e}");
    }

    #[test]
    fn compressed_columns() {
        assert_eq!(uncompress_column(b"\x00short").unwrap(), b"short");
        assert_eq!(uncompress_column(b"").unwrap(), b"");
        let e = uncompress_column(&[0x91, 0]).unwrap_err();
        assert!(e.contains("no compression method"), "{e}");
        // "abc " × 100 as MariaDB 10.11 wrote it (raw deflate, 2 length bytes).
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, "abc ".repeat(100).as_bytes()).unwrap();
        let mut v = vec![0x8a, 0x01, 0x90];
        v.extend(z.finish().unwrap());
        assert_eq!(
            uncompress_column(&v).unwrap(),
            "abc ".repeat(100).as_bytes()
        );
        v[2] = 0x91;
        assert!(uncompress_column(&v)
            .unwrap_err()
            .contains("header says 401"));
    }

    #[test]
    fn mariadb_json_is_exact_or_an_error() {
        let k = Kind::Blob {
            len_bytes: 1,
            charset: Charset::Utf8,
            json: true,
        };
        let doc = br#"{"big": 12345678901234567890123}"#;
        let mut data = vec![doc.len() as u8];
        data.extend_from_slice(doc);
        assert_eq!(
            one(&k, &data).unwrap().to_json_text(),
            r#"{"big":12345678901234567890123}"#
        );
        let e = one(&k, b"\x03{a}").unwrap_err();
        assert!(e.contains("not a JSON document"), "{e}");
    }
}
