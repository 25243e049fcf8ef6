//! The per-table decode plan: built once per TABLE_MAP, it turns the raw bytes of a rows
//! event into JSON values without rebuilding column metadata for every row.

use std::sync::Arc;

use base64::Engine as _;
use mysql_common::binlog::decimal::Decimal;
use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::binlog::jsonb;
use mysql_common::binlog::misc::{
    my_datetime_packed_from_binary, my_time_packed_from_binary, my_timestamp_from_binary,
};
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use serde_json::{Number, Value};

use super::charset::Charset;
use super::schema::TableSchema;
use super::temporal;
use crate::source::DecodeError;

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
    Time,
    Time2 {
        fsp: u8,
    },
    DateTime,
    DateTime2 {
        fsp: u8,
    },
    Timestamp,
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
    Geometry {
        len_bytes: u8,
    },
    Vector {
        len_bytes: u8,
    },
    Null,
}

#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub name: String,
    pub kind: Kind,
}

/// Everything needed to decode the rows of one table, resolved once per TABLE_MAP.
#[derive(Debug)]
pub struct TablePlan {
    pub table_id: u64,
    pub db: String,
    pub table: String,
    pub columns: Vec<ColumnPlan>,
    /// Indexes of the primary-key columns (from the binlog, else from `information_schema`).
    pub primary_key: Vec<usize>,
}

impl TablePlan {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Builds the plan. `schema` (from `information_schema`) fills what the binlog does not
    /// carry: names when `binlog_row_metadata=MINIMAL`, MariaDB's JSON flag, and labels.
    pub fn build(
        tme: &TableMapEvent<'_>,
        schema: Option<&TableSchema>,
    ) -> Result<TablePlan, DecodeError> {
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let n = tme.columns_count() as usize;
        let bad = |reason: String| DecodeError::TableMap {
            db: db.clone(),
            table: table.clone(),
            reason,
        };

        // Optional metadata (binlog_row_metadata=FULL, or the MINIMAL subset).
        let mut unsigned_flags: Option<Vec<bool>> = None;
        let mut names: Option<Vec<String>> = None;
        let mut default_cs: Option<(u16, Vec<(usize, u16)>)> = None;
        let mut column_cs: Option<Vec<u16>> = None;
        let mut enum_labels: Vec<Arc<[String]>> = Vec::new();
        let mut set_labels: Vec<Arc<[String]>> = Vec::new();
        let mut primary_key: Vec<usize> = Vec::new();
        for field in tme.iter_optional_meta() {
            let field = field.map_err(|e| bad(format!("optional metadata: {e}")))?;
            match field {
                OptionalMetadataField::Signedness(bits) => {
                    unsigned_flags = Some(bits.iter().map(|b| *b).collect());
                }
                OptionalMetadataField::ColumnName(cn) => {
                    let mut v = Vec::with_capacity(n);
                    for name in cn.iter_names() {
                        let name = name.map_err(|e| bad(format!("column names: {e}")))?;
                        v.push(name.name().into_owned());
                    }
                    names = Some(v);
                }
                OptionalMetadataField::DefaultCharset(dc) => {
                    let mut non_default = Vec::new();
                    for x in dc.iter_non_default() {
                        let x = x.map_err(|e| bad(format!("charsets: {e}")))?;
                        non_default.push((x.column_index() as usize, x.charset()));
                    }
                    default_cs = Some((dc.default_charset(), non_default));
                }
                OptionalMetadataField::ColumnCharset(cc) => {
                    let mut v = Vec::new();
                    for x in cc.iter_charsets() {
                        v.push(x.map_err(|e| bad(format!("charsets: {e}")))?);
                    }
                    column_cs = Some(v);
                }
                OptionalMetadataField::EnumStrValue(ev) => {
                    for vals in ev.iter_values() {
                        let vals = vals.map_err(|e| bad(format!("enum labels: {e}")))?;
                        enum_labels.push(
                            vals.values()
                                .iter()
                                .map(|v| v.value().into_owned())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SetStrValue(sv) => {
                    for vals in sv.iter_values() {
                        let vals = vals.map_err(|e| bad(format!("set labels: {e}")))?;
                        set_labels.push(
                            vals.values()
                                .iter()
                                .map(|v| v.value().into_owned())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(pk) => {
                    for i in pk.iter_indexes() {
                        primary_key.push(i.map_err(|e| bad(format!("primary key: {e}")))? as usize);
                    }
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(pk) => {
                    for k in pk.iter_keys() {
                        let k = k.map_err(|e| bad(format!("primary key: {e}")))?;
                        primary_key.push(k.column_index() as usize);
                    }
                }
                _ => {}
            }
        }

        if let (None, Some(s)) = (&names, schema) {
            if s.columns.len() != n {
                return Err(bad(format!(
                    "the binlog carries no column names (binlog_row_metadata=MINIMAL) and information_schema \
                     now describes {} columns where this event has {n}: the table changed after the event \
                     was written. Set binlog_row_metadata=FULL so that every event names its columns",
                    s.columns.len()
                )));
            }
        }
        let schema = schema.filter(|s| s.columns.len() == n);
        let names: Vec<String> = match names {
            Some(v) if v.len() == n => v,
            Some(v) => {
                return Err(bad(format!(
                    "the table map has {n} columns but {} column names",
                    v.len()
                )))
            }
            None => match schema {
                Some(s) => s.columns.iter().map(|c| c.name.clone()).collect(),
                // Like mysqlbinlog: positional names when nothing better is known.
                None => (1..=n).map(|i| format!("@{i}")).collect(),
            },
        };
        if primary_key.is_empty() {
            if let Some(s) = schema {
                primary_key = s
                    .primary_key
                    .iter()
                    .filter_map(|k| names.iter().position(|n| n == k))
                    .collect();
            }
        }

        let mut columns = Vec::with_capacity(n);
        let (mut numeric_i, mut char_i, mut enum_i, mut set_i) = (0usize, 0usize, 0usize, 0usize);
        for (i, name) in names.into_iter().enumerate() {
            let raw = tme
                .get_raw_column_type(i)
                .map_err(|e| bad(format!("column {name}: {e}")))?
                .ok_or_else(|| bad(format!("column {name}: no type")))?;
            let ty = tme
                .get_column_type(i)
                .map_err(|e| bad(format!("column {name}: {e}")))?
                .ok_or_else(|| bad(format!("column {name}: no type")))?;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]);
            let scol = schema.map(|s| &s.columns[i]);
            let m = |k: usize| meta.get(k).copied().unwrap_or(0);

            let mut unsigned = || {
                let u = unsigned_flags
                    .as_ref()
                    .and_then(|f| f.get(numeric_i).copied())
                    .or_else(|| scol.map(|c| c.unsigned))
                    .unwrap_or(false);
                numeric_i += 1;
                u
            };
            // Charset of the i-th character column, in TABLE_MAP order.
            let charset = |char_i: &mut usize| -> Result<Charset, DecodeError> {
                let idx = *char_i;
                *char_i += 1;
                let id = if let Some(cs) = &column_cs {
                    cs.get(idx).copied()
                } else if let Some((def, non_default)) = &default_cs {
                    Some(
                        non_default
                            .iter()
                            .find(|(c, _)| *c == idx)
                            .map(|(_, cs)| *cs)
                            .unwrap_or(*def),
                    )
                } else {
                    None
                };
                if let Some(cs) = id.and_then(Charset::from_collation_id) {
                    return Ok(cs);
                }
                if let Some(cs) = scol.and_then(|c| c.charset.as_deref()) {
                    return Charset::from_name(cs).ok_or_else(|| {
                        bad(format!(
                            "column {}: character set {cs} is not supported",
                            scol.map(|c| c.name.as_str()).unwrap_or("?")
                        ))
                    });
                }
                match id {
                    Some(id) => Err(bad(format!("column #{}: unknown collation id {id}", i + 1))),
                    // No charset information at all (MINIMAL metadata, no schema): UTF-8.
                    None => Ok(Charset::Utf8),
                }
            };

            let kind = match ty {
                ColumnType::MYSQL_TYPE_TINY => Kind::Int {
                    bytes: 1,
                    unsigned: unsigned(),
                },
                ColumnType::MYSQL_TYPE_SHORT => Kind::Int {
                    bytes: 2,
                    unsigned: unsigned(),
                },
                ColumnType::MYSQL_TYPE_INT24 => Kind::Int {
                    bytes: 3,
                    unsigned: unsigned(),
                },
                ColumnType::MYSQL_TYPE_LONG => Kind::Int {
                    bytes: 4,
                    unsigned: unsigned(),
                },
                ColumnType::MYSQL_TYPE_LONGLONG => Kind::Int {
                    bytes: 8,
                    unsigned: unsigned(),
                },
                ColumnType::MYSQL_TYPE_FLOAT => {
                    unsigned();
                    Kind::Float
                }
                ColumnType::MYSQL_TYPE_DOUBLE => {
                    unsigned();
                    Kind::Double
                }
                ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                    unsigned();
                    Kind::Decimal {
                        precision: m(0),
                        scale: m(1),
                    }
                }
                ColumnType::MYSQL_TYPE_YEAR => {
                    unsigned();
                    Kind::Year
                }
                ColumnType::MYSQL_TYPE_NEWDATE | ColumnType::MYSQL_TYPE_DATE => Kind::Date,
                ColumnType::MYSQL_TYPE_TIME => Kind::Time,
                ColumnType::MYSQL_TYPE_TIME2 => Kind::Time2 { fsp: m(0) },
                ColumnType::MYSQL_TYPE_DATETIME => Kind::DateTime,
                ColumnType::MYSQL_TYPE_DATETIME2 => Kind::DateTime2 { fsp: m(0) },
                ColumnType::MYSQL_TYPE_TIMESTAMP => Kind::Timestamp,
                ColumnType::MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp2 { fsp: m(0) },
                ColumnType::MYSQL_TYPE_VARCHAR | ColumnType::MYSQL_TYPE_VAR_STRING => {
                    let max = u16::from_le_bytes([m(0), m(1)]);
                    Kind::String {
                        len_bytes: if max > 255 { 2 } else { 1 },
                        charset: charset(&mut char_i)?,
                        pad_to: 0,
                    }
                }
                ColumnType::MYSQL_TYPE_STRING => {
                    // Real type and max length share the two metadata bytes.
                    let (b0, b1) = (m(0) as u16, m(1) as u16);
                    let max = if (b0 & 0x30) != 0x30 {
                        b1 | (((b0 & 0x30) ^ 0x30) << 4)
                    } else {
                        b1
                    };
                    let charset = charset(&mut char_i)?;
                    Kind::String {
                        len_bytes: if max > 255 { 2 } else { 1 },
                        charset,
                        pad_to: if charset == Charset::Binary { max } else { 0 },
                    }
                }
                ColumnType::MYSQL_TYPE_ENUM => {
                    let labels = enum_labels
                        .get(enum_i)
                        .cloned()
                        .or_else(|| scol.map(|c| c.labels.clone()))
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    enum_i += 1;
                    Kind::Enum {
                        bytes: m(1),
                        labels,
                    }
                }
                ColumnType::MYSQL_TYPE_SET => {
                    let labels = set_labels
                        .get(set_i)
                        .cloned()
                        .or_else(|| scol.map(|c| c.labels.clone()))
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    set_i += 1;
                    Kind::Set {
                        bytes: m(1),
                        labels,
                    }
                }
                ColumnType::MYSQL_TYPE_BLOB
                | ColumnType::MYSQL_TYPE_TINY_BLOB
                | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
                | ColumnType::MYSQL_TYPE_LONG_BLOB => Kind::Blob {
                    len_bytes: m(0),
                    charset: charset(&mut char_i)?,
                    json: scol.is_some_and(|c| c.is_json),
                },
                ColumnType::MYSQL_TYPE_JSON => Kind::Json { len_bytes: m(0) },
                ColumnType::MYSQL_TYPE_BIT => Kind::Bit {
                    bytes: ((m(1) as u16 * 8 + m(0) as u16).div_ceil(8)) as u8,
                },
                ColumnType::MYSQL_TYPE_GEOMETRY => Kind::Geometry { len_bytes: m(0) },
                ColumnType::MYSQL_TYPE_VECTOR => Kind::Vector { len_bytes: m(0) },
                ColumnType::MYSQL_TYPE_NULL => Kind::Null,
                other => {
                    return Err(bad(format!(
                        "column {name}: type {other:?} (raw {raw:?}) cannot be decoded"
                    )))
                }
            };
            if let Kind::Blob { len_bytes, .. }
            | Kind::Json { len_bytes }
            | Kind::Geometry { len_bytes }
            | Kind::Vector { len_bytes } = kind
            {
                if !(1..=4).contains(&len_bytes) {
                    return Err(bad(format!(
                        "column {name}: length prefix of {len_bytes} bytes"
                    )));
                }
            }
            columns.push(ColumnPlan { name, kind });
        }

        Ok(TablePlan {
            table_id: tme.table_id(),
            db,
            table,
            columns,
            primary_key,
        })
    }
}

/// The parts of a rows event (write, update, delete; v1, v2, MariaDB compressed).
#[derive(Debug)]
pub struct RowsEvent<'a> {
    pub kind: RowsKind,
    pub table_id: u64,
    pub column_count: usize,
    pub present_before: &'a [u8],
    pub present_after: Option<&'a [u8]>,
    pub partial: bool,
    pub rows: std::borrow::Cow<'a, [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// Classifies an event type code as a rows event: (kind, v2 header, MariaDB-compressed, partial JSON).
pub fn rows_event_kind(code: u8) -> Option<(RowsKind, bool, bool, bool)> {
    use RowsKind::*;
    Some(match code {
        23 => (Write, false, false, false),
        24 => (Update, false, false, false),
        25 => (Delete, false, false, false),
        30 => (Write, true, false, false),
        31 => (Update, true, false, false),
        32 => (Delete, true, false, false),
        39 => (Update, true, false, true),
        166 => (Write, false, true, false),
        167 => (Update, false, true, false),
        168 => (Delete, false, true, false),
        169 => (Write, true, true, false),
        170 => (Update, true, true, false),
        171 => (Delete, true, true, false),
        _ => return None,
    })
}

struct Cur<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64))
    }
    fn lenenc(&mut self) -> Result<u64, String> {
        match self.u8()? {
            x @ 0..=250 => Ok(x as u64),
            252 => self.le(2),
            253 => self.le(3),
            254 => self.le(8),
            x => Err(format!("bad length-encoded integer prefix {x}")),
        }
    }
    fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }
}

/// Parses the header of a rows event. `table_id_len` is 4 for servers whose format
/// description says a 6-byte post-header, else 6.
pub fn parse_rows_event(
    code: u8,
    data: &[u8],
    table_id_len: usize,
) -> Result<RowsEvent<'_>, String> {
    let (kind, v2, compressed, partial) =
        rows_event_kind(code).ok_or_else(|| format!("event type {code} is not a rows event"))?;
    let mut c = Cur { data, pos: 0 };
    let table_id = c.le(table_id_len)?;
    let _flags = c.le(2)?;
    if v2 {
        let extra = c.le(2)? as usize;
        c.take(extra.saturating_sub(2))?;
    }
    let column_count = c.lenenc()? as usize;
    let bitmap_len = column_count.div_ceil(8);
    let present_before = c.take(bitmap_len)?;
    let present_after = if kind == RowsKind::Update {
        Some(c.take(bitmap_len)?)
    } else {
        None
    };
    let rows = if compressed {
        std::borrow::Cow::Owned(mariadb_uncompress(c.rest())?)
    } else {
        std::borrow::Cow::Borrowed(c.rest())
    };
    Ok(RowsEvent {
        kind,
        table_id,
        column_count,
        present_before,
        present_after,
        partial,
        rows,
    })
}

/// MariaDB's compressed block: one header byte (0x80 | algorithm << 4 | length-bytes),
/// the uncompressed length big-endian, then a zlib stream.
pub fn mariadb_uncompress(src: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let head = *src.first().ok_or("empty compressed block")?;
    if head & 0x80 == 0 {
        return Err(format!(
            "compressed block header 0x{head:02x} lacks the 0x80 flag"
        ));
    }
    let alg = (head & 0x70) >> 4;
    if alg != 0 {
        return Err(format!("compression algorithm {alg} is not zlib"));
    }
    let lenlen = (head & 0x07) as usize;
    if !(1..=4).contains(&lenlen) || src.len() < 1 + lenlen {
        return Err(format!("compressed block length field of {lenlen} bytes"));
    }
    let len = src[1..1 + lenlen]
        .iter()
        .fold(0usize, |a, b| (a << 8) | *b as usize);
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(&src[1 + lenlen..])
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zlib: {e}"))?;
    if out.len() != len {
        return Err(format!(
            "compressed block gave {} bytes, header says {len}",
            out.len()
        ));
    }
    Ok(out)
}

/// One decoded row image: a value per column of the table (absent columns are `Null`).
pub type Image = Vec<Value>;

/// Decodes every row of `ev` and hands (before, after) to `f`.
pub fn decode_rows(
    plan: &TablePlan,
    ev: &RowsEvent<'_>,
    mut f: impl FnMut(Option<Image>, Option<Image>),
) -> Result<(), DecodeError> {
    if ev.column_count != plan.columns.len() {
        return Err(DecodeError::Row {
            db: plan.db.clone(),
            table: plan.table.clone(),
            column: String::new(),
            reason: format!(
                "rows event has {} columns, table map has {}",
                ev.column_count,
                plan.columns.len()
            ),
        });
    }
    let mut c = Cur {
        data: &ev.rows,
        pos: 0,
    };
    let mut bad_text = 0usize;
    let n = plan.columns.len();
    let before_count = (0..n).filter(|i| bit(ev.present_before, *i)).count();
    let after_bitmap = ev.present_after.unwrap_or(ev.present_before);
    let after_count = (0..n).filter(|i| bit(after_bitmap, *i)).count();
    while c.pos < c.data.len() {
        let first = decode_image(plan, &mut c, ev.present_before, before_count, &mut bad_text)?;
        match ev.kind {
            RowsKind::Write => f(None, Some(first)),
            RowsKind::Delete => f(Some(first), None),
            RowsKind::Update => {
                let second = if ev.partial {
                    decode_partial_after(plan, &mut c, after_bitmap, &first, &mut bad_text)?
                } else {
                    decode_image(plan, &mut c, after_bitmap, after_count, &mut bad_text)?
                };
                f(Some(first), Some(second))
            }
        }
    }
    if bad_text > 0 {
        tracing::warn!(db = %plan.db, table = %plan.table, values = bad_text,
            "text values with bytes invalid in their column charset; replaced by U+FFFD");
    }
    Ok(())
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn decode_image(
    plan: &TablePlan,
    c: &mut Cur<'_>,
    present: &[u8],
    present_count: usize,
    bad_text: &mut usize,
) -> Result<Image, DecodeError> {
    let n = plan.columns.len();
    let all_present = present_count == n;
    let nulls = c
        .take(present_count.div_ceil(8))
        .map_err(|r| row_err(plan, "", r))?;
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for (i, col) in plan.columns.iter().enumerate() {
        if !all_present && !bit(present, i) {
            out.push(Value::Null);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            out.push(Value::Null);
            continue;
        }
        let v = decode_value(&col.kind, c, bad_text).map_err(|r| row_err(plan, &col.name, r))?;
        out.push(v);
    }
    Ok(out)
}

/// PARTIAL_UPDATE_ROWS after image: value options, then for JSON columns sent as diffs,
/// the diffs are applied to the before image's value.
fn decode_partial_after(
    plan: &TablePlan,
    c: &mut Cur<'_>,
    present: &[u8],
    before: &Image,
    bad_text: &mut usize,
) -> Result<Image, DecodeError> {
    let opts = c.lenenc().map_err(|r| row_err(plan, "", r))?;
    let json_cols: Vec<usize> = plan
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.kind, Kind::Json { .. }))
        .map(|(i, _)| i)
        .collect();
    let partial_bits = if opts & 1 != 0 {
        c.take(json_cols.len().div_ceil(8))
            .map_err(|r| row_err(plan, "", r))?
            .to_vec()
    } else {
        Vec::new()
    };
    let n = plan.columns.len();
    let present_count = (0..n).filter(|i| bit(present, *i)).count();
    let nulls = c
        .take(present_count.div_ceil(8))
        .map_err(|r| row_err(plan, "", r))?;
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for (i, col) in plan.columns.iter().enumerate() {
        if !bit(present, i) {
            out.push(Value::Null);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            out.push(Value::Null);
            continue;
        }
        let json_pos = json_cols.iter().position(|j| *j == i);
        let is_partial = json_pos.is_some_and(|p| {
            partial_bits
                .get(p / 8)
                .is_some_and(|b| b & (1 << (p % 8)) != 0)
        });
        let v = if is_partial {
            let Kind::Json { len_bytes } = col.kind else {
                unreachable!()
            };
            let len = c
                .le(len_bytes as usize)
                .map_err(|r| row_err(plan, &col.name, r))?;
            let bytes = c
                .take(len as usize)
                .map_err(|r| row_err(plan, &col.name, r))?;
            let mut base = before.get(i).cloned().unwrap_or(Value::Null);
            if base.is_null() {
                return Err(row_err(
                    plan,
                    &col.name,
                    "a partial JSON update whose before image lacks the \
                    document (binlog_row_image is not FULL); set binlog_row_image=FULL or \
                    binlog_row_value_options=''"
                        .into(),
                ));
            }
            super::jsonpatch::apply_diffs(&mut base, bytes)
                .map_err(|r| row_err(plan, &col.name, r))?;
            base
        } else {
            decode_value(&col.kind, c, bad_text).map_err(|r| row_err(plan, &col.name, r))?
        };
        out.push(v);
    }
    Ok(out)
}

fn row_err(plan: &TablePlan, column: &str, reason: String) -> DecodeError {
    DecodeError::Row {
        db: plan.db.clone(),
        table: plan.table.clone(),
        column: column.to_string(),
        reason,
    }
}

fn text(charset: Charset, bytes: &[u8], bad_text: &mut usize) -> Value {
    if charset == Charset::Binary {
        return Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    let (s, bad) = charset.decode(bytes);
    if bad {
        *bad_text += 1;
    }
    Value::String(s)
}

pub(crate) fn float_value(f: f64) -> Value {
    // NaN and infinities cannot be stored by MySQL; should one appear, say so as a string.
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
}

/// The shortest decimal form of an f32 (0.1f32 is 0.1, not 0.10000000149011612).
pub(crate) fn f32_value(f: f32) -> Value {
    match f.to_string().parse::<f64>() {
        Ok(d) => float_value(d),
        Err(_) => float_value(f as f64),
    }
}

fn decode_value(kind: &Kind, c: &mut Cur<'_>, bad_text: &mut usize) -> Result<Value, String> {
    Ok(match kind {
        Kind::Int { bytes, unsigned } => {
            let n = *bytes as usize;
            let raw = c.le(n)?;
            if *unsigned {
                Value::from(raw)
            } else {
                let shift = 64 - 8 * n as u32;
                Value::from(((raw << shift) as i64) >> shift)
            }
        }
        Kind::Float => f32_value(f32::from_bits(c.le(4)? as u32)),
        Kind::Double => float_value(f64::from_bits(c.le(8)?)),
        Kind::Decimal { precision, scale } => {
            let size = mysql_common::binlog::decimal::decimal_bin_size(
                *precision as usize,
                *scale as usize,
            );
            let b = c.take(size)?;
            let d = Decimal::read_bin(b, *precision as usize, *scale as usize, true)
                .map_err(|e| format!("decimal: {e}"))?;
            let mut s = d.to_string();
            trim_integer_zeros(&mut s);
            Value::String(s)
        }
        Kind::Year => {
            let y = c.u8()?;
            Value::String(if y == 0 {
                "0000".into()
            } else {
                format!("{}", 1900 + y as u32)
            })
        }
        Kind::Date => Value::String(temporal::date_from_packed(c.le(3)? as u32)),
        Kind::Time => {
            let raw = c.le(3)? as u32;
            let v = ((raw << 8) as i32) >> 8;
            Value::String(temporal::time_from_decimal(v))
        }
        Kind::Time2 { fsp } => {
            let len = 3 + (*fsp as usize).div_ceil(2);
            let b = c.take(len)?;
            let packed =
                my_time_packed_from_binary(b, *fsp as u32).map_err(|e| format!("time: {e}"))?;
            Value::String(temporal::time_from_packed(packed, *fsp))
        }
        Kind::DateTime => Value::String(temporal::datetime_from_decimal(c.le(8)?)),
        Kind::DateTime2 { fsp } => {
            let len = 5 + (*fsp as usize).div_ceil(2);
            let b = c.take(len)?;
            let packed = my_datetime_packed_from_binary(b, *fsp as u32)
                .map_err(|e| format!("datetime: {e}"))?;
            Value::String(temporal::datetime_from_packed(packed, *fsp))
        }
        Kind::Timestamp => Value::String(temporal::timestamp(c.le(4)? as i64, 0, 0)),
        Kind::Timestamp2 { fsp } => {
            let len = 4 + (*fsp as usize).div_ceil(2);
            let b = c.take(len)?;
            let (secs, us) =
                my_timestamp_from_binary(b, *fsp).map_err(|e| format!("timestamp: {e}"))?;
            Value::String(temporal::timestamp(secs as u32 as i64, us as u32, *fsp))
        }
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
            let b = c.take(len)?;
            if *json && *charset != Charset::Binary {
                match serde_json::from_slice::<Value>(b) {
                    Ok(v) => v,
                    Err(_) => text(*charset, b, bad_text),
                }
            } else {
                text(*charset, b, bad_text)
            }
        }
        Kind::Json { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = c.take(len)?;
            jsonb_to_json(b)?
        }
        Kind::Enum { bytes, labels } => {
            let idx = c.le(*bytes as usize)? as usize;
            match idx {
                0 => Value::String(String::new()),
                i => labels
                    .get(i - 1)
                    .map(|l| Value::String(l.clone()))
                    .unwrap_or_else(|| Value::from(i as u64)),
            }
        }
        Kind::Set { bytes, labels } => {
            let mask = c.le(*bytes as usize)?;
            if labels.is_empty() {
                Value::from(mask)
            } else {
                let mut s = String::new();
                for (i, l) in labels.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        if !s.is_empty() {
                            s.push(',');
                        }
                        s.push_str(l);
                    }
                }
                Value::String(s)
            }
        }
        Kind::Bit { bytes } => {
            let b = c.take(*bytes as usize)?;
            Value::from(b.iter().fold(0u64, |a, x| (a << 8) | *x as u64))
        }
        Kind::Geometry { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = c.take(len)?;
            // MySQL stores a 4-byte SRID before the WKB.
            let wkb = if b.len() >= 4 { &b[4..] } else { b };
            Value::String(base64::engine::general_purpose::STANDARD.encode(wkb))
        }
        Kind::Vector { len_bytes } => {
            let len = c.le(*len_bytes as usize)? as usize;
            let b = c.take(len)?;
            Value::Array(
                b.chunks_exact(4)
                    .map(|x| f32_value(f32::from_le_bytes([x[0], x[1], x[2], x[3]])))
                    .collect(),
            )
        }
        Kind::Null => Value::Null,
    })
}

/// `0000000000000000000.5000000000` → `0.5000000000`: a DECIMAL as the server prints it
/// (`mysql_common` pads the integer part to the column's precision).
fn trim_integer_zeros(s: &mut String) {
    let start = usize::from(s.starts_with('-'));
    let b = s.as_bytes();
    let mut end = start;
    while end + 1 < b.len() && b[end] == b'0' && b[end + 1].is_ascii_digit() {
        end += 1;
    }
    if end > start {
        s.replace_range(start..end, "");
    }
}

/// MySQL binary JSON → `serde_json::Value`.
pub fn jsonb_to_json(b: &[u8]) -> Result<Value, String> {
    if b.is_empty() {
        return Ok(Value::Null);
    }
    let v: jsonb::Value<'_> = ParseBuf(b)
        .parse(())
        .map_err(|e| format!("binary JSON: {e}"))?;
    let dom = v.parse().map_err(|e| format!("binary JSON: {e}"))?;
    Ok(dom.into())
}

/// Whether an event type code is one whose events carry rows.
pub fn is_rows_event(code: u8) -> bool {
    rows_event_kind(code).is_some()
}

/// Post-header length of `code` as the format description gives it, for the table-id width.
pub fn table_id_len(post_header_len: u8) -> usize {
    if post_header_len == 6 {
        4
    } else {
        6
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_print_as_the_server_prints_them() {
        for (raw, want) in [
            ("0000000000000000000.5000000000", "0.5000000000"),
            ("0000000000000000000.0000000000", "0.0000000000"),
            ("-00012.50", "-12.50"),
            ("000", "0"),
            ("100", "100"),
            ("-99999", "-99999"),
        ] {
            let mut s = raw.to_string();
            super::trim_integer_zeros(&mut s);
            assert_eq!(s, want);
        }
    }

    use super::*;

    #[test]
    fn ints_sign_extend() {
        let mut bad = 0;
        let k = Kind::Int {
            bytes: 3,
            unsigned: false,
        };
        let data = [0xff, 0xff, 0xff];
        let mut c = Cur {
            data: &data,
            pos: 0,
        };
        assert_eq!(decode_value(&k, &mut c, &mut bad).unwrap(), Value::from(-1));
        let k = Kind::Int {
            bytes: 3,
            unsigned: true,
        };
        let mut c = Cur {
            data: &data,
            pos: 0,
        };
        assert_eq!(
            decode_value(&k, &mut c, &mut bad).unwrap(),
            Value::from(16_777_215u64)
        );
        let k = Kind::Int {
            bytes: 8,
            unsigned: true,
        };
        let data = [0xff; 8];
        let mut c = Cur {
            data: &data,
            pos: 0,
        };
        assert_eq!(
            decode_value(&k, &mut c, &mut bad).unwrap(),
            Value::from(u64::MAX)
        );
    }

    #[test]
    fn short_input_is_an_error() {
        let mut bad = 0;
        let k = Kind::String {
            len_bytes: 1,
            charset: Charset::Utf8,
            pad_to: 0,
        };
        let data = [5, b'a'];
        let mut c = Cur {
            data: &data,
            pos: 0,
        };
        let e = decode_value(&k, &mut c, &mut bad).unwrap_err();
        assert!(e.contains("needs 5 bytes"), "{e}");
    }
}
