//! Table schemas from `information_schema`: the fallback for what the binlog does not carry
//! (column names under `binlog_row_metadata=MINIMAL`, MariaDB's JSON columns, unsignedness).

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;

/// One column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaColumn {
    pub name: String,
    /// `information_schema.COLUMNS.DATA_TYPE`, lower case (`int`, `varchar`, `longtext`…).
    pub data_type: String,
    /// `COLUMN_TYPE`, e.g. `int(10) unsigned`, `enum('a','b')`.
    pub column_type: String,
    pub charset: Option<String>,
    pub unsigned: bool,
    /// MariaDB's JSON (a LONGTEXT with a `json_valid` check) or MySQL's JSON.
    pub is_json: bool,
    /// Fractional digits of a temporal column (`DATETIME_PRECISION`).
    #[serde(default)]
    pub precision: Option<u8>,
    pub labels: Arc<[String]>,
}

/// A table's definition: its columns in order and its primary key.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub columns: Vec<SchemaColumn>,
    pub primary_key: Vec<String>,
    /// `WITH SYSTEM VERSIONING` (MariaDB): the name of its row-end column (`row_end` when
    /// implicit, hidden from `SELECT *`).
    #[serde(default)]
    pub row_end: Option<String>,
    /// Partitioned `BY SYSTEM_TIME` (MariaDB): the `CURRENT` partition's name. Every other
    /// partition holds history rows only, which no record shows, so dropping or truncating one
    /// removes no row of the stream. `None`: not partitioned so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_partition: Option<String>,
}

impl SchemaColumn {
    /// BINARY, VARBINARY and the BLOBs: values travel base64-encoded in records.
    pub fn is_binary(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
        )
    }

    /// GEOMETRY and its subtypes.
    pub fn is_spatial(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "geometry"
                | "point"
                | "linestring"
                | "polygon"
                | "multipoint"
                | "multilinestring"
                | "multipolygon"
                | "geometrycollection"
        )
    }
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&SchemaColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Schemas by (db, table).
pub type Schemas = HashMap<(String, String), TableSchema>;

/// Parses `enum('a','b''c')` / `set(...)` labels.
pub fn parse_labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[open + 1..column_type.rfind(')').unwrap_or(column_type.len())];
    let mut labels = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_quote) {
            ('\'', false) => in_quote = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            ('\'', true) => {
                in_quote = false;
                labels.push(std::mem::take(&mut cur));
            }
            ('\\', true) => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (c, true) => cur.push(c),
            _ => {}
        }
    }
    labels
}

/// COLUMN_NAME, DATA_TYPE, COLUMN_TYPE (lower case), CHARACTER_SET_NAME, DATETIME_PRECISION,
/// COLUMN_TYPE as the server prints it (ENUM and SET labels keep their case).
type ColumnRow = (String, String, String, Option<String>, Option<u8>, String);

/// Loads the schema of each of `tables` (that exists) in one round of queries.
pub async fn load(
    conn: &mut mysql_async::Conn,
    tables: &[(String, String)],
) -> Result<Schemas, mysql_async::Error> {
    let mut out = Schemas::new();
    for (db, table) in tables {
        let rows: Vec<ColumnRow> = conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), CHARACTER_SET_NAME, \
                 DATETIME_PRECISION, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .await?;
        if rows.is_empty() {
            continue;
        }
        let pk: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .await?;
        // MariaDB's JSON is LONGTEXT with CHECK (json_valid(`col`)). CHECK_CONSTRAINTS may not
        // exist on old servers: then no column is taken for JSON.
        let checks: Vec<String> = conn
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (db, table),
            )
            .await
            .unwrap_or_default();
        let columns = rows
            .into_iter()
            .map(
                |(name, data_type, column_type, charset, precision, as_printed)| {
                    // The server prints the clause with the name quoted, backticks doubled.
                    let json_check = format!("json_valid(`{}`)", name.replace('`', "``"));
                    let is_json = data_type == "json"
                        || checks.iter().any(|c| c.eq_ignore_ascii_case(&json_check));
                    let labels: Arc<[String]> = if data_type == "enum" || data_type == "set" {
                        parse_labels(&as_printed).into()
                    } else {
                        Arc::from(Vec::new())
                    };
                    SchemaColumn {
                        unsigned: column_type.contains("unsigned"),
                        name,
                        data_type,
                        column_type,
                        charset,
                        is_json,
                        precision,
                        labels,
                    }
                },
            )
            .collect();
        let row_end = system_versioning(conn, db, table).await?;
        let current_partition = match row_end {
            Some(_) => current_partition(conn, db, table).await?,
            None => None,
        };
        out.insert(
            (db.clone(), table.clone()),
            TableSchema {
                columns,
                primary_key: pk,
                row_end,
                current_partition,
            },
        );
    }
    Ok(out)
}

/// The row-end column of a system-versioned table (MariaDB): named in `SHOW CREATE TABLE`'s
/// `PERIOD FOR SYSTEM_TIME (start, end)`, else the implicit `row_end`. `None`: not versioned.
async fn system_versioning(
    conn: &mut mysql_async::Conn,
    db: &str,
    table: &str,
) -> Result<Option<String>, mysql_async::Error> {
    let kind: Option<String> = conn
        .exec_first(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await?;
    if kind.as_deref() != Some("SYSTEM VERSIONED") {
        return Ok(None);
    }
    let q = super::sql::quote_ident;
    let create: Option<(String, String)> = conn
        .query_first(format!("SHOW CREATE TABLE {}.{}", q(db), q(table)))
        .await?;
    let explicit = create.and_then(|(_, sql)| {
        let at = sql.find("PERIOD FOR SYSTEM_TIME (")?;
        let inner = &sql[at + 24..];
        let inner = &inner[..inner.find(')')?];
        let end = inner.split(',').nth(1)?.trim().trim_matches('`');
        Some(end.replace("``", "`"))
    });
    Ok(Some(explicit.unwrap_or_else(|| "row_end".to_string())))
}

/// A table partitioned `BY SYSTEM_TIME`: its `CURRENT` partition, from
/// `information_schema.PARTITIONS` (one row per subpartition, if any;
/// <https://mariadb.com/kb/en/system-versioned-tables/#storing-the-history-separately>).
async fn current_partition(
    conn: &mut mysql_async::Conn,
    db: &str,
    table: &str,
) -> Result<Option<String>, mysql_async::Error> {
    conn.exec_first(
        "SELECT PARTITION_NAME FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND PARTITION_METHOD = 'SYSTEM_TIME' \
         AND PARTITION_DESCRIPTION = 'CURRENT'",
        (db, table),
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels() {
        assert_eq!(
            super::parse_labels("enum('a','b''c','d,e')"),
            vec!["a", "b'c", "d,e"]
        );
    }
}
