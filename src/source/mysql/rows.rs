//! Rows events (WRITE/UPDATE/DELETE, v1 and v2, MySQL's PARTIAL_UPDATE and MariaDB's
//! compressed forms): the header, and the row images decoded with a [`TablePlan`].
//!
//! Format: <https://mariadb.com/kb/en/rows_event_v1v2-rows_compressed_event_v1/>, MySQL's
//! `libbinlogevents/include/rows_event.h`.

use std::borrow::Cow;

use super::cursor::Cursor;
use super::plan::TablePlan;
use super::values::{decode_value, Kind};
use crate::model::json::JsonNode;
use crate::model::{ColumnValue, JsonText};
use crate::source::{DecodeError, LeftOut};

/// One decoded row image: a value per column of the table map (absent columns are `Null`).
pub type Image = Vec<ColumnValue>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// A rows event type: what it does and how its header and body are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsType {
    pub kind: RowsKind,
    /// v2: an extra-data block after the flags.
    pub v2: bool,
    /// MariaDB: the rows are a compressed block.
    pub compressed: bool,
    /// MySQL PARTIAL_UPDATE_ROWS: JSON columns of the after image may be diffs.
    pub partial: bool,
}

/// The parts of a rows event.
#[derive(Debug)]
pub struct RowsEvent<'a> {
    pub kind: RowsKind,
    pub column_count: usize,
    pub present_before: &'a [u8],
    pub present_after: Option<&'a [u8]>,
    pub partial: bool,
    pub rows: Cow<'a, [u8]>,
}

/// The table id of a rows event, read without parsing the rest (the rows of tables no
/// pipeline reads are never looked at).
pub fn table_id(data: &[u8], table_id_len: usize) -> Result<u64, String> {
    Cursor::new(data).le(table_id_len)
}

/// Parses the header of a rows event. `table_id_len` is 4 for servers whose format
/// description says a 6-byte post-header, else 6.
pub fn parse_rows_event(
    t: RowsType,
    data: &[u8],
    table_id_len: usize,
) -> Result<RowsEvent<'_>, String> {
    let mut c = Cursor::new(data);
    c.le(table_id_len)?; // the table id: the caller read it first (`table_id`)
    let _flags = c.le(2)?;
    if t.v2 {
        let extra = c.le(2)? as usize;
        c.take(extra.saturating_sub(2))?;
    }
    let column_count = c.lenenc()? as usize;
    let bitmap_len = column_count.div_ceil(8);
    let present_before = c.take(bitmap_len)?;
    let present_after = if t.kind == RowsKind::Update {
        Some(c.take(bitmap_len)?)
    } else {
        None
    };
    let rows = if t.compressed {
        Cow::Owned(mariadb_uncompress(c.rest())?)
    } else {
        Cow::Borrowed(c.rest())
    };
    Ok(RowsEvent {
        kind: t.kind,
        column_count,
        present_before,
        present_after,
        partial: t.partial,
        rows,
    })
}

/// MariaDB's compressed event block: one header byte (0x80 | algorithm << 4 | length-bytes),
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
    let mut out = Vec::with_capacity(len.min(256 << 20));
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

/// The columns `ev` leaves out of its images (`None`: it logs whole rows). MariaDB's images are
/// whole under `binlog_row_image=FULL`; a session with `MINIMAL` or `NOBLOB` leaves columns
/// out of the before image (updates, deletes) or the after image (inserts), and their values
/// are unknown: see [`LeftOut`]. An update's after image leaving out only columns it did not
/// change (a session's `FULL_NODUP`, MariaDB 11.4) is whole once they are taken from the before
/// image, as [`decode_rows`] does. MySQL's images are taken as logged (see
/// [`TablePlan::every_column_logged`]): `None`.
pub fn left_out(plan: &TablePlan, ev: &RowsEvent<'_>) -> Option<LeftOut> {
    if !plan.every_column_logged {
        return None;
    }
    let columns: Vec<usize> = (0..plan.columns.len())
        .filter(|i| !bit(ev.present_before, *i))
        .collect();
    let image = match ev.kind {
        RowsKind::Write => "after image",
        _ => "before image",
    };
    (!columns.is_empty()).then_some(LeftOut { image, columns })
}

/// The error for rows whose images leave out columns that must be read (`lo`).
pub fn left_out_error(plan: &TablePlan, lo: &LeftOut) -> DecodeError {
    row_err(
        plan,
        None,
        left_out_reason(lo, &plan_names(plan, &lo.columns)),
    )
}

/// Why a record cannot be complete when `lo` leaves out `names`, and what to do.
pub fn left_out_reason(lo: &LeftOut, names: &[&str]) -> String {
    format!(
        "the rows event's {} leaves out column(s) {}: the writing session ran with \
         binlog_row_image=MINIMAL or NOBLOB, and the record cannot be complete. Set \
         binlog_row_image=FULL for every session (the server's default), then backfill the table",
        lo.image,
        names.join(", ")
    )
}

fn plan_names<'a>(plan: &'a TablePlan, ix: &[usize]) -> Vec<&'a str> {
    ix.iter()
        .filter_map(|i| plan.columns.get(*i).map(|c| c.name.as_str()))
        .collect()
}

/// Decodes every row of `ev` and hands (row index in the event, before, after) to `f`.
///
/// An update's after image that leaves out columns (a session's `FULL_NODUP`, or `NOBLOB`)
/// takes them from its before image, on MariaDB; columns left out of the first image are
/// `Null` (see [`left_out`]). MySQL's images are taken as logged.
pub fn decode_rows(
    plan: &TablePlan,
    ev: &RowsEvent<'_>,
    mut f: impl FnMut(u64, Option<Image>, Option<Image>),
) -> Result<(), DecodeError> {
    let n = plan.columns.len();
    if !plan.every_column_logged {
        return decode_rows_as_logged(plan, ev, f);
    }
    let unchanged: Vec<usize> = match (ev.kind, ev.present_after) {
        (RowsKind::Update, Some(after)) => (0..n)
            .filter(|i| !bit(after, *i) && bit(ev.present_before, *i))
            .collect(),
        _ => Vec::new(),
    };
    decode_rows_as_logged(plan, ev, |row, before, after| {
        let after = match (after, &before) {
            (Some(mut a), Some(b)) if !unchanged.is_empty() => {
                for &i in &unchanged {
                    if let (Some(slot), Some(v)) = (a.get_mut(i), b.get(i)) {
                        *slot = v.clone();
                    }
                }
                Some(a)
            }
            (a, _) => a,
        };
        f(row, before, after)
    })
}

/// As [`decode_rows`], with the images as logged (a column left out is `Null`).
fn decode_rows_as_logged(
    plan: &TablePlan,
    ev: &RowsEvent<'_>,
    mut f: impl FnMut(u64, Option<Image>, Option<Image>),
) -> Result<(), DecodeError> {
    if ev.column_count != plan.columns.len() {
        return Err(row_err(
            plan,
            None,
            format!(
                "rows event has {} columns, table map has {}",
                ev.column_count,
                plan.columns.len()
            ),
        ));
    }
    let mut c = Cursor::new(&ev.rows);
    let mut bad_text = 0usize;
    let n = plan.columns.len();
    let before_count = (0..n).filter(|i| bit(ev.present_before, *i)).count();
    let after_bitmap = ev.present_after.unwrap_or(ev.present_before);
    let after_count = (0..n).filter(|i| bit(after_bitmap, *i)).count();
    let mut row = 0u64;
    while !c.is_empty() {
        let first = decode_image(plan, &mut c, ev.present_before, before_count, &mut bad_text)?;
        match ev.kind {
            RowsKind::Write => f(row, None, Some(first)),
            RowsKind::Delete => f(row, Some(first), None),
            RowsKind::Update => {
                let second = if ev.partial {
                    decode_partial_after(plan, &mut c, after_bitmap, &first, &mut bad_text)?
                } else {
                    decode_image(plan, &mut c, after_bitmap, after_count, &mut bad_text)?
                };
                f(row, Some(first), Some(second))
            }
        }
        row += 1;
    }
    if bad_text > 0 {
        tracing::warn!(db = %plan.db, table = %plan.table, values = bad_text,
            "text values with bytes invalid in their column charset; replaced by U+FFFD");
    }
    Ok(())
}

/// Counts the rows of an event without keeping them (whole images or not).
pub fn count_rows(plan: &TablePlan, ev: &RowsEvent<'_>) -> Result<u64, DecodeError> {
    let mut n = 0;
    decode_rows_as_logged(plan, ev, |_, _, _| n += 1)?;
    Ok(n)
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn decode_image(
    plan: &TablePlan,
    c: &mut Cursor<'_>,
    present: &[u8],
    present_count: usize,
    bad_text: &mut usize,
) -> Result<Image, DecodeError> {
    let n = plan.columns.len();
    let all_present = present_count == n;
    let nulls = c
        .take(present_count.div_ceil(8))
        .map_err(|r| row_err(plan, None, r))?;
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for (i, col) in plan.columns.iter().enumerate() {
        if !all_present && !bit(present, i) {
            out.push(ColumnValue::Null);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            out.push(ColumnValue::Null);
            continue;
        }
        let v = decode_value(&col.kind, c, bad_text).map_err(|r| row_err(plan, Some(i), r))?;
        out.push(v);
    }
    Ok(out)
}

/// PARTIAL_UPDATE_ROWS after image: value options, then for JSON columns sent as diffs,
/// the diffs are applied to the before image's document.
fn decode_partial_after(
    plan: &TablePlan,
    c: &mut Cursor<'_>,
    present: &[u8],
    before: &Image,
    bad_text: &mut usize,
) -> Result<Image, DecodeError> {
    let opts = c.lenenc().map_err(|r| row_err(plan, None, r))?;
    let json_cols: Vec<usize> = plan
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.kind, Kind::Json { .. }))
        .map(|(i, _)| i)
        .collect();
    let partial_bits = if opts & 1 != 0 {
        c.take(json_cols.len().div_ceil(8))
            .map_err(|r| row_err(plan, None, r))?
            .to_vec()
    } else {
        Vec::new()
    };
    let n = plan.columns.len();
    let present_count = (0..n).filter(|i| bit(present, *i)).count();
    let nulls = c
        .take(present_count.div_ceil(8))
        .map_err(|r| row_err(plan, None, r))?;
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for (i, col) in plan.columns.iter().enumerate() {
        if !bit(present, i) {
            out.push(ColumnValue::Null);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            out.push(ColumnValue::Null);
            continue;
        }
        let is_partial = json_cols
            .iter()
            .position(|j| *j == i)
            .is_some_and(|p| bit(&partial_bits, p));
        let v = if is_partial {
            apply_partial(plan, i, c, before)?
        } else {
            decode_value(&col.kind, c, bad_text).map_err(|r| row_err(plan, Some(i), r))?
        };
        out.push(v);
    }
    Ok(out)
}

fn apply_partial(
    plan: &TablePlan,
    i: usize,
    c: &mut Cursor<'_>,
    before: &Image,
) -> Result<ColumnValue, DecodeError> {
    let err = |r: String| row_err(plan, Some(i), r);
    let Kind::Json { len_bytes } = plan.columns[i].kind else {
        return Err(err("a partial update of a column that is not JSON".into()));
    };
    let len = c.le(len_bytes as usize).map_err(err)?;
    let bytes = c.take(len as usize).map_err(err)?;
    let mut doc = match before.get(i) {
        Some(ColumnValue::Json(j)) => JsonNode::parse(j.get()).map_err(err)?,
        _ => {
            return Err(err(
                "a partial JSON update whose before image lacks the document \
                 (binlog_row_image is not FULL); set binlog_row_image=FULL or \
                 binlog_row_value_options=''"
                    .into(),
            ))
        }
    };
    super::mysql_json::apply_diffs(&mut doc, bytes).map_err(err)?;
    Ok(ColumnValue::Json(JsonText::from_node(&doc).map_err(err)?))
}

fn row_err(plan: &TablePlan, column: Option<usize>, reason: String) -> DecodeError {
    let col = column.and_then(|i| plan.columns.get(i));
    DecodeError::Value {
        db: plan.db.clone(),
        table: plan.table.clone(),
        column: col.map(|c| c.name.clone()).unwrap_or_default(),
        type_name: col.map(|c| c.type_name.clone()).unwrap_or_default(),
        reason,
    }
}
