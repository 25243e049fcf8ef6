//! QUERY events in MariaDB's compressed form (QUERY_COMPRESSED_EVENT, type 165:
//! <https://mariadb.com/kb/en/query_event/> with the text compressed as in
//! <https://mariadb.com/kb/en/compressed-binary-log/>).

use super::rows;

/// Whether a query event's status variables (`Q_SQL_MODE_CODE`) say the statement ran with
/// `ANSI_QUOTES` in its `sql_mode` (`MODE_ANSI_QUOTES`, bit 2; set by `ANSI` and `ORACLE` too):
/// then its `"…"` are identifiers (<https://mariadb.com/kb/en/query_event/>).
pub fn ansi_quotes(status_vars: &[u8]) -> bool {
    use mysql_common::binlog::events::{StatusVarVal, StatusVarsIterator};
    StatusVarsIterator::new(status_vars).any(
        |v| matches!(v.get_value(), Ok(StatusVarVal::SqlMode(m)) if m.0 & MODE_ANSI_QUOTES != 0),
    )
}

/// `sql_mode`'s `ANSI_QUOTES` bit.
const MODE_ANSI_QUOTES: u64 = 0x4;

/// A MariaDB QUERY_COMPRESSED event's default database, statement and [`ansi_quotes`]: the
/// QUERY post-header and status vars as usual, the query text compressed.
pub fn maria_compressed_query(data: &[u8]) -> Result<(String, String, bool), String> {
    // post-header: thread_id 4, exec_time 4, db_len 1, error_code 2, status_vars_len 2
    if data.len() < 13 {
        return Err("short QUERY_COMPRESSED event".into());
    }
    let db_len = data[8] as usize;
    let sv_len = u16::from_le_bytes([data[11], data[12]]) as usize;
    let db_start = 13 + sv_len;
    let q_start = db_start + db_len + 1;
    if data.len() < q_start {
        return Err("short QUERY_COMPRESSED event".into());
    }
    let db = String::from_utf8_lossy(&data[db_start..db_start + db_len]).into_owned();
    let q = rows::mariadb_uncompress(&data[q_start..])?;
    let ansi = ansi_quotes(&data[13..db_start]);
    Ok((db, String::from_utf8_lossy(&q).into_owned(), ansi))
}
