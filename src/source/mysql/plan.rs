//! The per-table decode plan: built once per TABLE_MAP from the event's column types and
//! metadata and, where the binlog does not carry it, the table's schema at that position (from
//! the schema history). Rows are then decoded straight from the event bytes.

use std::sync::Arc;

use super::charset::Charset;
use super::schema::{SchemaColumn, TableSchema};
use super::schema_history::SchemaAt;
use super::table_map::{types, Flavor, MapColumn, TableMap};
use super::values::Kind;
use crate::source::error::DecodeError;

/// How one column is read, and whether records show it.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub name: String,
    pub kind: Kind,
    /// The SQL type as an error message names it (`TIME(3)`, `VARCHAR COMPRESSED`).
    pub type_name: String,
    /// A column the server made for itself (MariaDB's `DB_ROW_HASH_n`, a system-versioned
    /// table's implicit `row_start`/`row_end`): decoded, never in a record.
    pub hidden: bool,
}

/// Everything needed to decode the rows of one table, resolved once per TABLE_MAP.
#[derive(Debug)]
pub struct TablePlan {
    pub table_id: u64,
    pub db: String,
    pub table: String,
    pub columns: Vec<ColumnPlan>,
    /// Indexes of the user's primary-key columns (from the binlog, else `information_schema`).
    pub primary_key: Vec<usize>,
    /// A system-versioned table's row-end column: the binlog's rows are the storage engine's
    /// (history rows inserted, deletes as updates of it), to be read as the user's changes.
    pub row_end: Option<usize>,
    /// A FULL row image holds every column (MariaDB). MySQL never logs the hidden column of a
    /// functional index, whatever `binlog_row_image` says, and without names (its default
    /// MINIMAL metadata) that column cannot be told from a session's MINIMAL image.
    pub every_column_logged: bool,
}

impl TablePlan {
    /// The index of a column records show, by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| !c.hidden && c.name == name)
    }

    /// The user's change a row of the binlog stands for, on a system-versioned table: a row
    /// whose row end is the maximum is current; one with an earlier row end is history. An
    /// insert of a current row is an insert; of a history row (the old version an UPDATE
    /// keeps), nothing. An update of a current row to a current row is an update; to a history
    /// row (a DELETE closing it), a delete. A delete removes history: nothing.
    pub fn versioned_op(
        &self,
        op: crate::model::Op,
        before: Option<&[crate::model::ColumnValue]>,
        after: Option<&[crate::model::ColumnValue]>,
    ) -> Option<crate::model::Op> {
        use crate::model::Op;
        let Some(i) = self.row_end else {
            return Some(op);
        };
        let current = |img: Option<&[crate::model::ColumnValue]>| {
            img.and_then(|v| v.get(i)).is_some_and(is_max_row_end)
        };
        match op {
            Op::Insert if current(after) => Some(Op::Insert),
            Op::Update if current(before) && current(after) => Some(Op::Update),
            Op::Update if current(before) => Some(Op::Delete),
            Op::Delete if current(before) => Some(Op::Delete),
            Op::Read => Some(Op::Read),
            _ => None,
        }
    }

    /// Indexes of the columns records show, in table order.
    pub fn visible(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.hidden)
            .map(|(i, _)| i)
    }

    /// Builds the plan. `schema` is the table's definition at the event's position where the
    /// schema history knows it: it fills what the binlog does not carry (names under
    /// `binlog_row_metadata=MINIMAL`, MariaDB's JSON flag, 5.3-format temporal precision,
    /// which columns are the server's own).
    pub fn build(
        tm: &TableMap,
        at: SchemaAt<'_>,
        flavor: Flavor,
    ) -> Result<TablePlan, DecodeError> {
        let schema = at.schema();
        let names = column_names(tm, at, flavor)?;
        // Schema columns by name where the binlog names its columns (one extra column of the
        // server's must not shift the others), else by position.
        let positional = tm.meta.names.is_none();
        let scols: Vec<Option<&SchemaColumn>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let s = schema?;
                if positional {
                    s.columns.get(i)
                } else {
                    s.column(name)
                }
            })
            .collect();
        let mut counters = Counters::default();
        let mut columns = Vec::with_capacity(tm.columns.len());
        for ((col, name), sc) in tm.columns.iter().zip(names).zip(scols) {
            // A column the binlog names but the schema does not know is the server's own only
            // where it has the server's names: the schema read for this position may be newer
            // than the event (a column dropped since), and that column is the user's.
            let hidden = match (schema, sc) {
                (Some(_), Some(_)) => false,
                (Some(_), None) => is_row_hash(&name, col) || is_implicit_period(&name),
                (None, _) => is_row_hash(&name, col),
            };
            let ctx = ColumnCtx {
                tm,
                col,
                name: &name,
                schema: sc,
                flavor,
            };
            let (kind, type_name) = ctx.kind(&mut counters)?;
            columns.push(ColumnPlan {
                name,
                kind,
                type_name,
                hidden,
            });
        }
        let row_end = schema
            .and_then(|s| s.row_end.as_deref())
            .and_then(|n| columns.iter().position(|c| c.name == n));
        let mut primary_key = primary_key(tm, schema, &columns);
        // The row end is in a versioned table's key for the engine; the user's key is without.
        primary_key.retain(|i| Some(*i) != row_end);
        Ok(TablePlan {
            table_id: tm.table_id,
            db: tm.db.clone(),
            table: tm.table.clone(),
            columns,
            primary_key,
            row_end,
            every_column_logged: flavor == Flavor::MariaDb,
        })
    }
}

/// MariaDB's hash column of a long UNIQUE key (`DB_ROW_HASH_1` …, a BIGINT): recognised by
/// name only when no schema can say which columns are the user's.
fn is_row_hash(name: &str, col: &MapColumn) -> bool {
    col.type_code == types::LONGLONG
        && name
            .strip_prefix("DB_ROW_HASH_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The invisible columns MariaDB adds to a table made `WITH SYSTEM VERSIONING` without
/// declaring its period (mariadb.com: System-Versioned Tables, "row_start", "row_end").
fn is_implicit_period(name: &str) -> bool {
    name == "row_start" || name == "row_end"
}

fn column_names(
    tm: &TableMap,
    at: SchemaAt<'_>,
    flavor: Flavor,
) -> Result<Vec<String>, DecodeError> {
    let n = tm.columns.len();
    if let (None, SchemaAt::Unknown { since }) = (&tm.meta.names, at) {
        return Err(table_err(
            tm,
            format!(
                "the binlog carries no column names (binlog_row_metadata is MINIMAL or NO_LOG) and the schema \
                 history cannot tell the table's definition here (a DDL at {since} changed it); \
                 set binlog_row_metadata=FULL so that every event names its columns"
            ),
        ));
    }
    match (&tm.meta.names, at.schema()) {
        (Some(v), _) if v.len() == n => Ok(v.clone()),
        (Some(v), _) => Err(table_err(
            tm,
            format!("the table map has {n} columns but {} column names", v.len()),
        )),
        (None, Some(s)) if s.columns.len() == n => {
            Ok(s.columns.iter().map(|c| c.name.clone()).collect())
        }
        // The server's own columns are MariaDB's (MySQL's hidden ones are not of these kinds).
        (None, Some(s)) => (flavor == Flavor::MariaDb)
            .then(|| with_hidden_tail(tm, s))
            .flatten()
            .ok_or_else(|| table_err(
            tm,
            format!(
                "the binlog carries no column names (binlog_row_metadata is MINIMAL or NO_LOG) and the table's \
                 definition at this position has {} columns where this event has {n}. Set \
                 binlog_row_metadata=FULL so that every event names its columns",
                s.columns.len()
            ),
        )),
        // Like mysqlbinlog: positional names when nothing better is known.
        (None, None) => Ok((1..=n).map(|i| format!("@{i}")).collect()),
    }
}

/// The column names of a table map without names whose event has more columns than the
/// table's definition: the columns MariaDB adds for itself, which `information_schema` does not
/// list, come after the user's — a system-versioned table's implicit `row_start` and `row_end`
/// (TIMESTAMP(6)) and a long UNIQUE key's `DB_ROW_HASH_n` (BIGINT) — named so by their types
/// (mariadb.com: System-Versioned Tables; CREATE TABLE, "UNIQUE … long"). `None` when the extra
/// columns are not of those kinds.
fn with_hidden_tail(tm: &TableMap, s: &TableSchema) -> Option<Vec<String>> {
    let tail = tm.columns.get(s.columns.len()..)?;
    let implicit_period = s.row_end.as_deref() == Some("row_end") && s.column("row_end").is_none();
    let mut names: Vec<String> = s.columns.iter().map(|c| c.name.clone()).collect();
    let (mut period, mut hashes) = (0, 0);
    for c in tail {
        let name = match c.type_code {
            types::TIMESTAMP2 if implicit_period && period < 2 => {
                period += 1;
                ["row_start", "row_end"][period - 1].to_string()
            }
            types::LONGLONG => {
                hashes += 1;
                format!("DB_ROW_HASH_{hashes}")
            }
            _ => return None,
        };
        names.push(name);
    }
    (period == if implicit_period { 2 } else { 0 }).then_some(names)
}

/// The user's key: the binlog's primary key without the server's own columns (a
/// system-versioned table's key includes `row_end`), else the schema's.
fn primary_key(tm: &TableMap, schema: Option<&TableSchema>, columns: &[ColumnPlan]) -> Vec<usize> {
    let from_binlog: Vec<usize> = tm
        .meta
        .primary_key
        .iter()
        .copied()
        .filter(|i| columns.get(*i).is_some_and(|c| !c.hidden))
        .collect();
    if !from_binlog.is_empty() {
        return from_binlog;
    }
    schema
        .map(|s| {
            s.primary_key
                .iter()
                .filter_map(|k| columns.iter().position(|c| !c.hidden && c.name == *k))
                .collect()
        })
        .unwrap_or_default()
}

fn table_err(tm: &TableMap, reason: String) -> DecodeError {
    DecodeError::TableMap {
        db: tm.db.clone(),
        table: tm.table.clone(),
        reason,
    }
}

/// Positions in the TABLE_MAP's per-kind metadata lists.
#[derive(Default)]
struct Counters {
    numeric: usize,
    character: usize,
    enum_set: usize,
    enums: usize,
    sets: usize,
}

struct ColumnCtx<'a> {
    tm: &'a TableMap,
    col: &'a MapColumn,
    name: &'a str,
    schema: Option<&'a SchemaColumn>,
    flavor: Flavor,
}

impl ColumnCtx<'_> {
    fn err(&self, type_name: &str, reason: String) -> DecodeError {
        DecodeError::Column {
            db: self.tm.db.clone(),
            table: self.tm.table.clone(),
            column: self.name.to_string(),
            type_name: type_name.to_string(),
            reason,
        }
    }

    fn unsigned(&self, k: &mut Counters) -> bool {
        let i = k.numeric;
        k.numeric += 1;
        self.tm
            .meta
            .unsigned
            .as_ref()
            .and_then(|f| f.get(i).copied())
            .or_else(|| self.schema.map(|c| c.unsigned))
            .unwrap_or(false)
    }

    /// The charset of a character column: the TABLE_MAP's collation id, else the schema's.
    fn charset(&self, k: &mut Counters, type_name: &str) -> Result<Charset, DecodeError> {
        let i = k.character;
        k.character += 1;
        let id = self
            .tm
            .meta
            .charsets
            .as_ref()
            .and_then(|v| v.get(i).copied());
        self.resolve_charset(id, type_name)
    }

    fn resolve_charset(&self, id: Option<u16>, type_name: &str) -> Result<Charset, DecodeError> {
        if let Some(cs) = id.and_then(Charset::from_collation_id) {
            return Ok(cs);
        }
        if let Some(name) = self.schema.and_then(|c| c.charset.as_deref()) {
            return Charset::from_name(name).ok_or_else(|| {
                self.err(type_name, format!("character set {name} is not supported"))
            });
        }
        match id {
            Some(id) => Err(self.err(type_name, format!("unknown collation id {id}"))),
            // The schema knows the column and gives it no character set: a binary column
            // (BINARY, VARBINARY, BLOB; INET4/INET6/UUID), as the binlog would have said with
            // FULL metadata (`binlog_row_metadata=NO_LOG` logs no charset at all).
            None if self.schema.is_some() => Ok(Charset::Binary),
            // No charset information at all (no metadata, no schema): UTF-8.
            None => Ok(Charset::Utf8),
        }
    }

    fn json(&self) -> bool {
        self.schema.is_some_and(|c| c.is_json)
    }

    fn kind(&self, k: &mut Counters) -> Result<(Kind, String), DecodeError> {
        use types::*;
        let c = self.col;
        let m0 = (c.meta & 0xff) as u8;
        let m1 = (c.meta >> 8) as u8;
        let int = |bytes: u8, name: &str, k: &mut Counters| {
            let unsigned = self.unsigned(k);
            (Kind::Int { bytes, unsigned }, name.to_string())
        };
        Ok(match c.type_code {
            TINY => int(1, "TINYINT", k),
            SHORT => int(2, "SMALLINT", k),
            INT24 => int(3, "MEDIUMINT", k),
            LONG => int(4, "INT", k),
            LONGLONG => int(8, "BIGINT", k),
            FLOAT => {
                self.unsigned(k);
                (Kind::Float, "FLOAT".into())
            }
            DOUBLE => {
                self.unsigned(k);
                (Kind::Double, "DOUBLE".into())
            }
            NEWDECIMAL => {
                self.unsigned(k);
                let (precision, scale) = (m0, m1);
                (
                    Kind::Decimal { precision, scale },
                    format!("DECIMAL({precision},{scale})"),
                )
            }
            YEAR => {
                self.unsigned(k);
                (Kind::Year, "YEAR".into())
            }
            DATE | NEWDATE => (Kind::Date, "DATE".into()),
            TIME2 => (Kind::Time2 { fsp: m0 }, format!("TIME({m0})")),
            DATETIME2 => (Kind::DateTime2 { fsp: m0 }, format!("DATETIME({m0})")),
            TIMESTAMP2 => (Kind::Timestamp2 { fsp: m0 }, format!("TIMESTAMP({m0})")),
            TIME | DATETIME | TIMESTAMP => self.old_temporal()?,
            VARCHAR | VAR_STRING => {
                let cs = self.charset(k, "VARCHAR")?;
                let len_bytes = if c.meta > 255 { 2 } else { 1 };
                (string(len_bytes, cs, 0), "VARCHAR".into())
            }
            STRING => self.string_like(k)?,
            BLOB | TINY_BLOB | MEDIUM_BLOB | LONG_BLOB => {
                let charset = self.charset(k, "BLOB")?;
                let name = if self.json() { "JSON" } else { "TEXT/BLOB" };
                (self.blob(m0, charset, false, name)?, name.into())
            }
            VARCHAR_COMPRESSED | BLOB_COMPRESSED => self.compressed(k)?,
            JSON => (
                self.checked_len(m0, Kind::Json { len_bytes: m0 }, "JSON")?,
                "JSON".into(),
            ),
            BIT => {
                let bits = m1 as u16 * 8 + m0 as u16;
                (
                    Kind::Bit {
                        bytes: bits.div_ceil(8) as u8,
                    },
                    format!("BIT({bits})"),
                )
            }
            GEOMETRY => {
                if self.flavor == Flavor::MariaDb {
                    // MariaDB gives GEOMETRY a slot in the charset list (binary).
                    k.character += 1;
                }
                let kind = Kind::Geometry { len_bytes: m0 };
                (self.checked_len(m0, kind, "GEOMETRY")?, "GEOMETRY".into())
            }
            VECTOR => {
                // VECTOR has a slot in the charset list (binary).
                k.character += 1;
                let kind = Kind::Vector { len_bytes: m0 };
                (self.checked_len(m0, kind, "VECTOR")?, "VECTOR".into())
            }
            NULL => (Kind::Null, "NULL".into()),
            other => {
                return Err(self.err(
                    &format!("type {other}"),
                    "a column type this decoder does not read".into(),
                ))
            }
        })
    }

    /// CHAR, BINARY, ENUM and SET share the STRING code; the metadata says which.
    fn string_like(&self, k: &mut Counters) -> Result<(Kind, String), DecodeError> {
        let c = self.col;
        let (b0, b1) = (c.meta & 0xff, c.meta >> 8);
        match c.real_type {
            types::ENUM => {
                let labels = self.labels(k, true)?;
                Ok((
                    Kind::Enum {
                        bytes: b1 as u8,
                        labels,
                    },
                    "ENUM".into(),
                ))
            }
            types::SET => {
                let labels = self.labels(k, false)?;
                Ok((
                    Kind::Set {
                        bytes: b1 as u8,
                        labels,
                    },
                    "SET".into(),
                ))
            }
            _ => {
                // Real type and max length share the two metadata bytes.
                let max = if (b0 & 0x30) != 0x30 {
                    b1 | (((b0 & 0x30) ^ 0x30) << 4)
                } else {
                    b1
                };
                let charset = self.charset(k, "CHAR")?;
                let special = match self.schema.map(|c| c.data_type.as_str()) {
                    Some("inet4") => Some((Kind::Inet4, "INET4")),
                    Some("inet6") => Some((Kind::Inet6, "INET6")),
                    Some("uuid") => Some((Kind::Uuid, "UUID")),
                    _ => None,
                };
                if let (Some((kind, name)), Charset::Binary, true) = (special, charset, max <= 255)
                {
                    return Ok((kind, name.into()));
                }
                let pad_to = if charset == Charset::Binary { max } else { 0 };
                let len_bytes = if max > 255 { 2 } else { 1 };
                Ok((string(len_bytes, charset, pad_to), "CHAR".into()))
            }
        }
    }

    /// ENUM/SET labels: the TABLE_MAP's, in the column's charset, else the schema's.
    fn labels(&self, k: &mut Counters, is_enum: bool) -> Result<Arc<[String]>, DecodeError> {
        let es = k.enum_set;
        k.enum_set += 1;
        let i = if is_enum { &mut k.enums } else { &mut k.sets };
        let idx = *i;
        *i += 1;
        let type_name = if is_enum { "ENUM" } else { "SET" };
        let lists = if is_enum {
            &self.tm.meta.enum_labels
        } else {
            &self.tm.meta.set_labels
        };
        if let Some(raw) = lists.get(idx) {
            let id = self
                .tm
                .meta
                .enum_set_charsets
                .as_ref()
                .and_then(|v| v.get(es).copied());
            let cs = self.resolve_charset(id, type_name)?;
            return Ok(raw.iter().map(|l| cs.decode(l).0).collect());
        }
        Ok(self
            .schema
            .map(|c| c.labels.clone())
            .unwrap_or_else(|| Arc::from(Vec::new())))
    }

    fn blob(
        &self,
        len_bytes: u8,
        charset: Charset,
        compressed: bool,
        name: &str,
    ) -> Result<Kind, DecodeError> {
        let json = self.json();
        let kind = if compressed {
            Kind::Compressed {
                len_bytes,
                charset,
                json,
            }
        } else {
            Kind::Blob {
                len_bytes,
                charset,
                json,
            }
        };
        self.checked_len(len_bytes, kind, name)
    }

    fn checked_len(&self, len_bytes: u8, kind: Kind, type_name: &str) -> Result<Kind, DecodeError> {
        if (1..=4).contains(&len_bytes) {
            Ok(kind)
        } else {
            Err(self.err(type_name, format!("length prefix of {len_bytes} bytes")))
        }
    }

    /// MariaDB's VARCHAR/TEXT/BLOB … COMPRESSED (types 141 and 140).
    fn compressed(&self, k: &mut Counters) -> Result<(Kind, String), DecodeError> {
        let c = self.col;
        if c.type_code == types::VARCHAR_COMPRESSED {
            let charset = self.charset(k, "VARCHAR COMPRESSED")?;
            // The maximum counts the header byte; the prefix is sized by it like a VARCHAR's.
            let len_bytes = if c.meta > 255 { 2 } else { 1 };
            let kind = self.blob(len_bytes, charset, true, "VARCHAR COMPRESSED")?;
            Ok((kind, "VARCHAR COMPRESSED".into()))
        } else {
            let charset = self.charset(k, "BLOB COMPRESSED")?;
            let kind = self.blob((c.meta & 0xff) as u8, charset, true, "BLOB COMPRESSED")?;
            Ok((kind, "TEXT/BLOB COMPRESSED".into()))
        }
    }

    /// TIME, DATETIME and TIMESTAMP logged with the old type codes: MySQL < 5.6 (always
    /// whole seconds) or MariaDB's 5.3 format (`mysql56_temporal_format=OFF`), whose fractional
    /// digits the binlog does not carry: they come from the table's definition at the event.
    fn old_temporal(&self) -> Result<(Kind, String), DecodeError> {
        let base = match self.col.type_code {
            types::TIME => "TIME",
            types::DATETIME => "DATETIME",
            _ => "TIMESTAMP",
        };
        let fsp =
            match (self.schema, self.flavor) {
                (Some(s), _) => s.precision.unwrap_or(0),
                (None, Flavor::MySql) => 0,
                (None, Flavor::MariaDb) => return Err(self.err(
                    &format!("{base} (MariaDB 5.3 format)"),
                    "the binlog does not say how many fractional digits this column has, and the \
                     schema history cannot tell its definition at this position; convert the \
                     column to the current format (ALTER TABLE … FORCE with \
                     mysql56_temporal_format=ON), then backfill the pipeline"
                        .into(),
                )),
            };
        if fsp > 6 {
            return Err(self.err(base, format!("{fsp} fractional digits")));
        }
        let kind = match (base, fsp) {
            ("TIME", 0) => Kind::TimeOld,
            ("TIME", f) => Kind::TimeHires { fsp: f },
            ("DATETIME", 0) => Kind::DateTimeOld,
            ("DATETIME", f) => Kind::DateTimeHires { fsp: f },
            (_, 0) => Kind::TimestampOld,
            (_, f) => Kind::TimestampHires { fsp: f },
        };
        Ok((kind, format!("{base}({fsp}) /* mariadb-5.3 */")))
    }
}

fn string(len_bytes: u8, charset: Charset, pad_to: u16) -> Kind {
    Kind::String {
        len_bytes,
        charset,
        pad_to,
    }
}

/// The row end of a current row: TIMESTAMP(6)'s maximum (2038 before MariaDB 11.5, 2106 after)
/// or, with transaction-precise versioning, the largest BIGINT UNSIGNED.
fn is_max_row_end(v: &crate::model::ColumnValue) -> bool {
    use crate::model::ColumnValue;
    match v {
        ColumnValue::Text(t) => {
            t == "2038-01-19T03:14:07.999999Z" || t == "2106-02-07T06:28:15.999999Z"
        }
        ColumnValue::UInt(u) => *u == u64::MAX,
        _ => false,
    }
}
