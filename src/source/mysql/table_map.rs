//! TABLE_MAP events, parsed by our own code: every length is checked before it is read, the
//! MariaDB-only column types (BLOB_COMPRESSED 140, VARCHAR_COMPRESSED 141) are known, and the
//! optional metadata (`binlog_row_metadata`) is read in one pass.
//!
//! Formats: <https://mariadb.com/kb/en/table_map_event/>, MySQL's
//! `libbinlogevents/include/rows_event.h` (`Table_map_event`, optional metadata fields 1–13).

use super::cursor::Cursor;

/// Column type codes of the binlog (`enum_field_types`, plus MariaDB's compressed types).
pub mod types {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    /// MariaDB `BLOB … COMPRESSED` / `TEXT … COMPRESSED`.
    pub const BLOB_COMPRESSED: u8 = 140;
    /// MariaDB `VARCHAR … COMPRESSED`.
    pub const VARCHAR_COMPRESSED: u8 = 141;
    /// MySQL 9 `VECTOR`.
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// One column as the TABLE_MAP describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapColumn {
    /// The type code as logged (`STRING` for CHAR, BINARY, ENUM and SET).
    pub type_code: u8,
    /// For `STRING`: the real type (`STRING`, `ENUM` or `SET`), from the metadata.
    pub real_type: u8,
    /// The type's metadata, 0–2 bytes, as a little-endian number except where noted by the
    /// type (`STRING`/`ENUM`/`SET`/`NEWDECIMAL`/`BIT` keep their two bytes in logged order:
    /// first byte in the low half).
    pub meta: u16,
    pub nullable: bool,
}

/// What `binlog_row_metadata` added (all empty under MINIMAL on old servers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptionalMeta {
    /// One per numeric column (TINY … DOUBLE, DECIMAL, YEAR): whether it is unsigned.
    pub unsigned: Option<Vec<bool>>,
    /// One collation id per character column.
    pub charsets: Option<Vec<u16>>,
    /// One collation id per ENUM or SET column.
    pub enum_set_charsets: Option<Vec<u16>>,
    pub names: Option<Vec<String>>,
    /// Labels per ENUM column, raw bytes in the column's charset.
    pub enum_labels: Vec<Vec<Vec<u8>>>,
    /// Labels per SET column, raw bytes in the column's charset.
    pub set_labels: Vec<Vec<Vec<u8>>>,
    /// Column indexes of the primary key, as the server sees it.
    pub primary_key: Vec<usize>,
    /// MySQL 8.0.23+: one per column, whether it is visible.
    pub visible: Option<Vec<bool>>,
}

/// A parsed TABLE_MAP event.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMap {
    pub table_id: u64,
    pub db: String,
    pub table: String,
    pub columns: Vec<MapColumn>,
    pub meta: OptionalMeta,
}

/// Which server wrote the binlog: the two count "character columns" differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    MySql,
    MariaDb,
}

impl MapColumn {
    /// Whether the column takes a slot in the charset lists (MariaDB counts GEOMETRY and the
    /// compressed types, MySQL 9 counts VECTOR: `is_character_type` in each server's
    /// log_event code, checked against binlogs of MariaDB 10.11 and MySQL 9.0).
    pub fn is_character(&self, flavor: Flavor) -> bool {
        use types::*;
        match self.type_code {
            STRING => self.real_type == STRING,
            VAR_STRING | VARCHAR | BLOB | VECTOR => true,
            GEOMETRY | BLOB_COMPRESSED | VARCHAR_COMPRESSED => flavor == Flavor::MariaDb,
            _ => false,
        }
    }

    fn is_enum_or_set(&self) -> bool {
        self.type_code == types::STRING && matches!(self.real_type, types::ENUM | types::SET)
    }

    /// Whether the column takes a bit of the signedness field.
    pub fn is_numeric(&self) -> bool {
        use types::*;
        matches!(
            self.type_code,
            TINY | SHORT | INT24 | LONG | LONGLONG | DECIMAL | NEWDECIMAL | FLOAT | DOUBLE | YEAR
        )
    }
}

/// Bytes of metadata each type carries in the TABLE_MAP.
fn meta_len(type_code: u8) -> Result<usize, String> {
    use types::*;
    Ok(match type_code {
        FLOAT | DOUBLE | BLOB | GEOMETRY | JSON | VECTOR | BLOB_COMPRESSED | TIMESTAMP2
        | DATETIME2 | TIME2 | TINY_BLOB | MEDIUM_BLOB | LONG_BLOB => 1,
        VARCHAR | VAR_STRING | BIT | NEWDECIMAL | STRING | ENUM | SET | VARCHAR_COMPRESSED => 2,
        DECIMAL | TINY | SHORT | LONG | NULL | TIMESTAMP | LONGLONG | INT24 | DATE | TIME
        | DATETIME | YEAR | NEWDATE => 0,
        other => return Err(format!("unknown column type {other}")),
    })
}

impl TableMap {
    /// Only the table id and the names: enough to know whether any pipeline reads the table,
    /// whatever its columns are.
    pub fn names(data: &[u8], table_id_len: usize) -> Result<(u64, String, String), String> {
        let mut c = Cursor::new(data);
        let table_id = c.le(table_id_len)?;
        c.take(2)?;
        let db = c.len8_str()?;
        c.take(1)?;
        let table = c.len8_str()?;
        Ok((table_id, db, table))
    }

    /// Parses the body of a TABLE_MAP event (after the common header, without the checksum).
    /// `table_id_len` is 6, or 4 for servers whose format description says so.
    pub fn parse(data: &[u8], table_id_len: usize, flavor: Flavor) -> Result<TableMap, String> {
        let mut c = Cursor::new(data);
        let table_id = c.le(table_id_len)?;
        c.take(2)?; // flags
        let db = c.len8_str()?;
        c.take(1)?;
        let table = c.len8_str()?;
        c.take(1)?;
        let n = c.lenenc()? as usize;
        let codes = c.take(n)?;
        let meta_block_len = c.lenenc()? as usize;
        let mut meta = Cursor::new(c.take(meta_block_len)?);
        let nulls = c.take(n.div_ceil(8))?;
        let mut columns = Vec::with_capacity(n);
        for (i, &code) in codes.iter().enumerate() {
            // Columns of an unknown type have unknown metadata: nothing after them can be read.
            let len = meta_len(code).map_err(|e| format!("column {}: {e}", i + 1))?;
            let m = meta.take(len)?;
            let (meta, real_type) = match len {
                0 => (0, code),
                1 => (m[0] as u16, code),
                _ => {
                    let v = u16::from_le_bytes([m[0], m[1]]);
                    let real = if code == types::STRING && m[0] != 0 {
                        m[0] | 0x30
                    } else {
                        code
                    };
                    (v, real)
                }
            };
            columns.push(MapColumn {
                type_code: code,
                real_type,
                meta,
                nullable: nulls[i / 8] & (1 << (i % 8)) != 0,
            });
        }
        let meta = OptionalMeta::parse(c.rest(), &columns, flavor)?;
        Ok(TableMap {
            table_id,
            db,
            table,
            columns,
            meta,
        })
    }
}

impl OptionalMeta {
    fn parse(mut data: &[u8], columns: &[MapColumn], flavor: Flavor) -> Result<Self, String> {
        let mut m = OptionalMeta::default();
        let count = |f: &dyn Fn(&MapColumn) -> bool| columns.iter().filter(|c| f(c)).count();
        let n_char = count(&|c| c.is_character(flavor));
        let n_enum_set = count(&|c| c.is_enum_or_set());
        let n_numeric = count(&|c| c.is_numeric());
        while !data.is_empty() {
            let mut c = Cursor::new(data);
            let field = c.u8()?;
            let len = c.lenenc()? as usize;
            let mut v = Cursor::new(c.take(len)?);
            data = c.rest();
            match field {
                1 => m.unsigned = Some(bits_msb_first(v.rest(), n_numeric)),
                2 => m.charsets = Some(default_charsets(&mut v, n_char)?),
                3 => m.charsets = Some(column_charsets(&mut v)?),
                4 => m.names = Some(names(&mut v)?),
                5 => m.set_labels = labels(&mut v)?,
                6 => m.enum_labels = labels(&mut v)?,
                8 => {
                    while !v.is_empty() {
                        m.primary_key.push(v.lenenc()? as usize);
                    }
                }
                9 => {
                    while !v.is_empty() {
                        m.primary_key.push(v.lenenc()? as usize);
                        v.lenenc()?; // prefix length
                    }
                }
                10 => m.enum_set_charsets = Some(default_charsets(&mut v, n_enum_set)?),
                11 => m.enum_set_charsets = Some(column_charsets(&mut v)?),
                12 => m.visible = Some(bits_msb_first(v.rest(), columns.len())),
                // 7 GEOMETRY_TYPE, 13 VECTOR_DIMENSIONALITY, and fields of later servers:
                // nothing the decoder needs.
                _ => {}
            }
        }
        Ok(m)
    }
}

fn bits_msb_first(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| bytes.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0))
        .collect()
}

/// DEFAULT_CHARSET: the default collation, then (index, collation) pairs for the others.
fn default_charsets(v: &mut Cursor<'_>, n: usize) -> Result<Vec<u16>, String> {
    let default = v.lenenc()? as u16;
    let mut out = vec![default; n];
    while !v.is_empty() {
        let idx = v.lenenc()? as usize;
        let cs = v.lenenc()? as u16;
        *out.get_mut(idx)
            .ok_or_else(|| format!("charset for character column {idx} of {n}"))? = cs;
    }
    Ok(out)
}

fn column_charsets(v: &mut Cursor<'_>) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    while !v.is_empty() {
        out.push(v.lenenc()? as u16);
    }
    Ok(out)
}

fn names(v: &mut Cursor<'_>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let len = v.lenenc()? as usize;
        out.push(String::from_utf8_lossy(v.take(len)?).into_owned());
    }
    Ok(out)
}

fn labels(v: &mut Cursor<'_>) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let k = v.lenenc()? as usize;
        let mut one = Vec::with_capacity(k.min(4096));
        for _ in 0..k {
            let len = v.lenenc()? as usize;
            one.push(v.take(len)?.to_vec());
        }
        out.push(one);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TABLE_MAP of case 05 (`bug.packed_notes`) as MariaDB 10.11.19 wrote it.
    const PACKED_NOTES: &str = "FQAAAAAAAQADYnVnAAxwYWNrZWRfbm90ZXMABgONjIyNDwjRBwICZQBQAD4BAQACBS0CPwMIBB0CaWQEbm90ZQRib2R5A3JhdwVzbWFsbAVwbGFpbggBAA==";

    #[test]
    fn mariadb_compressed_columns_and_their_charsets() {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(PACKED_NOTES)
            .unwrap();
        let tm = TableMap::parse(&raw, 6, Flavor::MariaDb).unwrap();
        assert_eq!((tm.db.as_str(), tm.table.as_str()), ("bug", "packed_notes"));
        let codes: Vec<u8> = tm.columns.iter().map(|c| c.type_code).collect();
        assert_eq!(codes, [3, 141, 140, 140, 141, 15]);
        let metas: Vec<u16> = tm.columns.iter().map(|c| c.meta).collect();
        assert_eq!(metas, [0, 2001, 2, 2, 101, 80]);
        // note, body, raw (binary), small (latin1), plain: the compressed columns count.
        assert_eq!(tm.meta.charsets, Some(vec![45, 45, 63, 8, 45]));
        assert_eq!(
            tm.meta.names.as_deref(),
            Some(&["id", "note", "body", "raw", "small", "plain"].map(String::from)[..])
        );
        assert_eq!(tm.meta.primary_key, [0]);
        assert_eq!(tm.meta.unsigned, Some(vec![false]));
    }

    #[test]
    fn truncated_and_unknown_types_are_errors() {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(PACKED_NOTES)
            .unwrap();
        for cut in [3, 12, 25, 30] {
            assert!(TableMap::parse(&raw[..cut], 6, Flavor::MariaDb).is_err());
        }
        let mut bad = raw.clone();
        bad[29] = 200; // the second column's type
        let e = TableMap::parse(&bad, 6, Flavor::MariaDb).unwrap_err();
        assert_eq!(e, "column 2: unknown column type 200");
    }
}
