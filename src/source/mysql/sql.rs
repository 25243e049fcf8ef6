//! SQL text and parameters for MySQL / MariaDB: identifiers quoted as the server reads them
//! (<https://mariadb.com/kb/en/identifier-names/>: backticks, a backtick doubled) and column
//! values bound as statement parameters. Used by the write-back sink, the backfill and the
//! checkpoint store alike.

use base64::Engine as _;
use mysql_async::Value as SqlValue;

use crate::model::ColumnValue;

/// `name` → `` `name` `` (a backtick inside doubled).
pub fn quote_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// `db.table` → `` `db`.`table` ``.
pub fn qualified(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// How a value from the record is bound: as it is, or base64-decoded (binary columns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bind {
    Plain,
    Base64,
}

/// A column value of a record as a statement parameter (binary columns base64-decoded).
pub fn column_sql_value(v: &ColumnValue, bind: Bind) -> SqlValue {
    match v {
        ColumnValue::Null => SqlValue::NULL,
        ColumnValue::Int(i) => SqlValue::Int(*i),
        ColumnValue::UInt(u) => SqlValue::UInt(*u),
        ColumnValue::Float(f) => SqlValue::Double(*f),
        ColumnValue::Text(s) if bind == Bind::Base64 => {
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(b) => SqlValue::Bytes(b),
                Err(_) => SqlValue::Bytes(s.clone().into_bytes()),
            }
        }
        ColumnValue::Text(s) => SqlValue::Bytes(s.clone().into_bytes()),
        ColumnValue::Json(j) => SqlValue::Bytes(j.get().as_bytes().to_vec()),
    }
}
