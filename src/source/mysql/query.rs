//! QUERY events in MariaDB's compressed form (QUERY_COMPRESSED_EVENT, type 165:
//! <https://mariadb.com/kb/en/query_event/> with the text compressed as in
//! <https://mariadb.com/kb/en/compressed-binary-log/>).

use super::rows;

/// MariaDB QUERY_COMPRESSED: the QUERY post-header and status vars as usual, the query text compressed.
pub fn maria_compressed_query(data: &[u8]) -> Result<(String, String), String> {
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
    Ok((db, String::from_utf8_lossy(&q).into_owned()))
}
