//! The server's settings (a row binlog with full images) and the source account's grants.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{fail, Failure};
use crate::source::mysql::stream::SourceError;

/// What the settings check learnt of the server.
pub struct Server {
    pub version: String,
    pub is_maria: bool,
    /// `log_bin` is on.
    pub binlog_on: bool,
}

/// What the grants check learnt of the source account.
pub struct Access {
    /// `'user'@'host'`, for the fixes' GRANT statements.
    pub grantee: String,
    /// The account may list the binary logs (REPLICATION CLIENT / BINLOG MONITOR).
    pub can_list_logs: bool,
}

fn query_err(what: &'static str) -> impl Fn(mysql_async::Error) -> SourceError {
    move |source| SourceError::Query { what, source }
}

/// `log_bin` on, `binlog_format = ROW`, `binlog_row_image = FULL` (each a failure with the
/// statement and the config line that fix it); `binlog_row_metadata` other than FULL a warning.
pub async fn settings(conn: &mut Conn, f: &mut Vec<Failure>) -> Result<Server, SourceError> {
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(query_err("SELECT VERSION()"))?
        .unwrap_or_default();
    let is_maria = version.to_ascii_lowercase().contains("mariadb");
    let row: Option<(String, String, String)> = conn
        .query_first(
            "SELECT CAST(@@GLOBAL.log_bin AS CHAR), CAST(@@GLOBAL.binlog_format AS CHAR), \
             CAST(@@GLOBAL.binlog_row_image AS CHAR)",
        )
        .await
        .map_err(query_err("@@GLOBAL.log_bin"))?;
    let (log_bin, format, image) = row
        .map(|(a, b, c)| {
            (
                a.to_ascii_uppercase(),
                b.to_ascii_uppercase(),
                c.to_ascii_uppercase(),
            )
        })
        .unwrap_or_default();
    let cnf = if is_maria { "[mariadbd]" } else { "[mysqld]" };
    let binlog_on = matches!(log_bin.as_str(), "ON" | "1");
    if !binlog_on {
        fail(
            f,
            "binary logging is off (log_bin = OFF)",
            format!(
                "start the server with --log-bin (in {cnf}: log_bin = mysql-bin) and restart it"
            ),
        );
    }
    if format != "ROW" {
        fail(
            f,
            format!("binlog_format is {format}, not ROW"),
            format!("SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in {cnf}"),
        );
    }
    if image != "FULL" {
        fail(
            f,
            format!("binlog_row_image is {image}, not FULL: before images would lack columns"),
            format!("SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in {cnf}"),
        );
    }
    // binlog_row_metadata exists from MySQL 8.0.1 and MariaDB 10.5.
    if let Ok(Some(meta)) = conn
        .query_first::<String, _>("SELECT CAST(@@GLOBAL.binlog_row_metadata AS CHAR)")
        .await
    {
        let meta = meta.to_ascii_uppercase();
        if meta != "FULL" {
            tracing::warn!(binlog_row_metadata = %meta, "column names will come from information_schema; \
                SET GLOBAL binlog_row_metadata = 'FULL' makes every event describe its own columns");
        }
    }
    Ok(Server {
        version,
        is_maria,
        binlog_on,
    })
}

/// REPLICATION SLAVE (to stream) and REPLICATION CLIENT or BINLOG MONITOR (to list the logs).
pub async fn grants(
    conn: &mut Conn,
    is_maria: bool,
    f: &mut Vec<Failure>,
) -> Result<Access, SourceError> {
    let privs: Vec<String> = conn
        .query(
            "SELECT UPPER(PRIVILEGE_TYPE) FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = \
             CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(query_err("information_schema.USER_PRIVILEGES"))?;
    let user: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(query_err("CURRENT_USER()"))?
        .unwrap_or_default();
    let grantee = match user.split_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => user.clone(),
    };
    let has = |p: &str| privs.iter().any(|x| x == p || x == "SUPER");
    if !has("REPLICATION SLAVE") {
        fail(
            f,
            format!(
                "{grantee} lacks the REPLICATION SLAVE privilege (needed to stream the binlog)"
            ),
            format!("GRANT REPLICATION SLAVE ON *.* TO {grantee};"),
        );
    }
    let can_list_logs = has("REPLICATION CLIENT") || has("BINLOG MONITOR");
    if !can_list_logs {
        let p = if is_maria {
            "BINLOG MONITOR"
        } else {
            "REPLICATION CLIENT"
        };
        fail(
            f,
            format!("{grantee} lacks {p} (needed for SHOW BINARY LOGS / SHOW MASTER STATUS)"),
            format!("GRANT {p} ON *.* TO {grantee};"),
        );
    }
    Ok(Access {
        grantee,
        can_list_logs,
    })
}
