//! Statements logged as text, read one way for the decoder, its held groups and the DDL scan:
//! QUERY events and MariaDB's compressed form (QUERY_COMPRESSED_EVENT, type 165:
//! <https://mariadb.com/kb/en/query_event/> with the text compressed as in
//! <https://mariadb.com/kb/en/compressed-binary-log/>), with their session's `sql_mode`.

use mysql_common::binlog::events::{Event, QueryEvent};

use super::charset::Charset;
use super::event_type::EventType;
use super::rows;

/// How a session's `sql_mode` changes the reading of its statements: from the query event's
/// `Q_SQL_MODE_CODE` (<https://mariadb.com/kb/en/sql-mode/>); the default is the server's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialect {
    /// `ANSI_QUOTES` (set by `ANSI` and `ORACLE` too): `"…"` quotes a name, as a backtick does.
    pub ansi_quotes: bool,
    /// `NO_BACKSLASH_ESCAPES`: a backslash in a string is a character, not an escape.
    pub no_backslash_escapes: bool,
}

/// A statement logged as text: a QUERY event (type 2) or MariaDB's QUERY_COMPRESSED (165).
pub struct Statement {
    /// The session's default database (`USE db`), empty if none.
    pub db: String,
    /// The statement, as logged.
    pub sql: String,
    /// How its session's `sql_mode` reads it.
    pub dialect: Dialect,
}

/// The statement of a query event; `None` for any other event, `Err` for a corrupt one.
pub fn statement(ev: &Event) -> Option<Result<Statement, String>> {
    let s = match EventType::from_code(ev.header().event_type_raw()) {
        EventType::Query => ev
            .read_event::<QueryEvent<'_>>()
            .map(|q| {
                let (dialect, client) = session(q.status_vars_raw());
                Statement {
                    db: q.schema().into_owned(),
                    sql: text(client, q.query_raw()),
                    dialect,
                }
            })
            .map_err(|e| e.to_string()),
        EventType::QueryCompressed => maria_compressed_query(ev.data())
            .map(|(db, sql, dialect)| Statement { db, sql, dialect }),
        _ => return None,
    };
    Some(s)
}

/// The session (thread id) of a query event: its post-header's first 4 bytes (0 for a
/// truncated one; the caller asks only of query events).
pub fn thread_id(ev: &Event) -> u32 {
    ev.data()
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A MariaDB GTID event's FL_STANDALONE flag: a statement of its own (DDL), no COMMIT follows
/// (<https://mariadb.com/kb/en/gtid_event/>).
pub fn maria_gtid_standalone(ev: &Event) -> bool {
    ev.data().get(12).is_some_and(|f| f & FL_STANDALONE != 0)
}

/// MariaDB GTID flags (`flags2` of GTID_EVENT): a standalone event group.
pub const FL_STANDALONE: u8 = 1;

/// How the statement of a query event is read, from the event's status variables
/// (<https://mariadb.com/kb/en/query_event/>): its `sql_mode` (`Q_SQL_MODE_CODE`: `ANSI_QUOTES`,
/// bit 2, set by `ANSI` and `ORACLE` too; `NO_BACKSLASH_ESCAPES`, bit 20) and the collation id
/// of its `character_set_client` (`Q_CHARSET_CODE`), the charset its text is logged in.
fn session(status_vars: &[u8]) -> (Dialect, Option<u16>) {
    use mysql_common::binlog::events::{StatusVarVal, StatusVarsIterator};
    let (mut mode, mut client) = (0, None);
    for v in StatusVarsIterator::new(status_vars) {
        match v.get_value() {
            Ok(StatusVarVal::SqlMode(m)) => mode = m.0,
            Ok(StatusVarVal::Charset { charset_client, .. }) => client = Some(charset_client),
            _ => {}
        }
    }
    let dialect = Dialect {
        ansi_quotes: mode & MODE_ANSI_QUOTES != 0,
        no_backslash_escapes: mode & MODE_NO_BACKSLASH_ESCAPES != 0,
    };
    (dialect, client)
}

/// A statement's text from its bytes, read in its session's `character_set_client` (a
/// `SET NAMES latin1` session logs `caf\xE9`, which is `café`); as UTF-8 when the event does
/// not say or the charset is one of the Unicode ones or `binary` (bytes that are not UTF-8
/// become U+FFFD: a string literal's bytes, never a name the parser reads).
fn text(client: Option<u16>, bytes: &[u8]) -> String {
    match client.and_then(Charset::from_collation_id) {
        Some(cs @ (Charset::SingleByte(_) | Charset::MultiByte(_))) => cs.decode(bytes).0,
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// `sql_mode`'s `ANSI_QUOTES` bit.
const MODE_ANSI_QUOTES: u64 = 0x4;
/// `sql_mode`'s `NO_BACKSLASH_ESCAPES` bit.
const MODE_NO_BACKSLASH_ESCAPES: u64 = 0x10_0000;

/// A MariaDB QUERY_COMPRESSED event's default database, statement and [`session`]: the
/// QUERY post-header and status vars as usual, the query text compressed.
fn maria_compressed_query(data: &[u8]) -> Result<(String, String, Dialect), String> {
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
    let (dialect, client) = session(&data[13..db_start]);
    Ok((db, text(client, &q), dialect))
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn statements_are_read_in_their_sessions_client_charset() {
        // latin1_swedish_ci (8): `SET NAMES latin1` logs é as one byte.
        assert_eq!(
            text(Some(8), b"TRUNCATE TABLE t.caf\xE9"),
            "TRUNCATE TABLE t.café"
        );
        // sjis_japanese_ci (13): ソ is 0x83 0x5C, its second byte a backslash in ASCII.
        assert_eq!(text(Some(13), b"DROP TABLE `\x83\x5C`"), "DROP TABLE `ソ`");
        // gbk_chinese_ci (28): 表 is 0xB1 0xED.
        assert_eq!(text(Some(28), b"TRUNCATE \xB1\xED"), "TRUNCATE 表");
        // utf8mb4 (45, 224), binary (63), or not said: UTF-8.
        for id in [Some(45), Some(224), Some(63), None] {
            assert_eq!(text(id, "TRUNCATE café".as_bytes()), "TRUNCATE café");
        }
    }
}
