//! Each pipeline's table: it exists and the source account can read it, every column a
//! pipeline names is there, every column is one the decoder reads, a key where one is needed,
//! and a key a backfill can page through.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{fail, Failure};
use crate::config::pipeline::SnapshotMode;
use crate::config::{Config, OnPurged, PipelineConfig, SinkConfig};
use crate::source::mysql::schema::{SchemaColumn, Schemas, TableSchema};
use crate::source::mysql::sql::quote_ident;

/// Why the decoder cannot read a column of this type and charset (every column of a read
/// table must be readable: the binlog's rows are decoded whole).
fn undecodable(c: &SchemaColumn) -> Option<String> {
    const TYPES: &[&str] = &[
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "bigint",
        "decimal",
        "float",
        "double",
        "bit",
        "date",
        "time",
        "datetime",
        "timestamp",
        "year",
        "char",
        "varchar",
        "binary",
        "varbinary",
        "tinyblob",
        "blob",
        "mediumblob",
        "longblob",
        "tinytext",
        "text",
        "mediumtext",
        "longtext",
        "enum",
        "set",
        "json",
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
        "vector",
        "inet4",
        "inet6",
        "uuid",
    ];
    if !TYPES.contains(&c.data_type.as_str()) {
        return Some(format!(
            "is of type `{}`, which the binlog decoder does not read",
            c.data_type
        ));
    }
    match c.charset.as_deref() {
        Some(cs) if crate::source::mysql::charset::Charset::from_name(cs).is_none() => Some(
            format!("is in character set `{cs}`, which the binlog decoder does not convert"),
        ),
        _ => None,
    }
}

/// The checks of one pipeline's table.
pub async fn pipeline(
    conn: &mut Conn,
    cfg: &Config,
    p: &PipelineConfig,
    schemas: &Schemas,
    grantee: &str,
    f: &mut Vec<Failure>,
) {
    let (db, t) = p.db_table();
    let Some(s) = schemas.get(&(db.clone(), t.clone())) else {
        fail(f, format!("pipeline `{}` ({}): table `{db}`.`{t}` does not exist (or {grantee} cannot see it)", p.name, p.file),
            format!("create the table, fix `table:` in {}, or GRANT SELECT ON `{db}`.`{t}` TO {grantee};", p.file));
        return;
    };
    named_columns(p, s, f);
    transaction_precise(p, s, &db, &t, f);
    for c in &s.columns {
        if let Some(why) = undecodable(c) {
            fail(f, format!("pipeline `{}` ({}): column `{}` of `{db}`.`{t}` ({}) {why}", p.name, p.file, c.name, c.column_type),
                format!("change the column's type (ALTER TABLE `{db}`.`{t}` MODIFY `{}` …), or read another table", c.name));
        }
    }
    // Records of a table without a key have none (a null Kafka key); a write-back and a
    // backfill need one.
    let needs_key = if matches!(p.sink, SinkConfig::Mysql(_)) {
        Some("a write-back needs a key to find the row its result belongs to")
    } else if backfills(cfg, p) {
        Some("a backfill pages through the table in key order")
    } else {
        None
    };
    if let (Some(why), None, true) = (needs_key, &p.key, s.primary_key.is_empty()) {
        fail(f, format!("pipeline `{}` ({}): `{db}`.`{t}` has no primary key, and the pipeline sets no `key:`; {why}", p.name, p.file),
            format!("add `key: [column, …]` (columns that identify a row) to {} or ALTER TABLE `{db}`.`{t}` ADD PRIMARY KEY (…);", p.file));
    }
    if let (true, Some(k), true) = (backfills(cfg, p), &p.key, s.primary_key.is_empty()) {
        if let Ok(Some(why)) = crate::snapshot::unusable_paging_key(conn, &db, &t, k).await {
            fail(f, format!("pipeline `{}` ({}): snapshot: {why}", p.name, p.file),
                format!("set `key:` in {} to the columns of a unique index whose columns are NOT NULL, or ALTER TABLE `{db}`.`{t}` ADD PRIMARY KEY (…);", p.file));
        }
    }
    let sel = format!(
        "SELECT 1 FROM {}.{} LIMIT 0",
        quote_ident(&db),
        quote_ident(&t)
    );
    cascades(conn, p, &db, &t).await;
    if let Err(e) = conn.query_drop(sel).await {
        fail(
            f,
            format!(
                "pipeline `{}`: cannot SELECT from `{db}`.`{t}`: {e}",
                p.name
            ),
            format!("GRANT SELECT ON `{db}`.`{t}` TO {grantee};"),
        );
    }
}

/// A system-versioned table with transaction-precise history (its row start and end are
/// `BIGINT UNSIGNED` transaction ids): MariaDB logs every change of it as a statement, whatever
/// `binlog_format` says, so no rows event would ever carry them
/// (<https://mariadb.com/kb/en/system-versioned-tables/#transaction-precise-history-in-innodb>;
/// checked on 10.11).
fn transaction_precise(
    p: &PipelineConfig,
    s: &TableSchema,
    db: &str,
    t: &str,
    f: &mut Vec<Failure>,
) {
    let Some(end) = s.row_end.as_deref() else {
        return;
    };
    if s.columns
        .iter()
        .any(|c| c.name == end && c.data_type == "bigint")
    {
        fail(f, format!("pipeline `{}` ({}): `{db}`.`{t}` is system-versioned with transaction-precise history (its row end `{end}` is a transaction id): MariaDB logs its changes as statements, never as rows, so none would reach the stream", p.name, p.file),
            format!("version `{db}`.`{t}` by time (TIMESTAMP(6) … AS ROW START / ROW END columns), or read another table"));
    }
}

/// Warns of the foreign keys whose referential actions change this table's rows: InnoDB applies
/// `ON DELETE`/`ON UPDATE` `CASCADE`, `SET NULL` and `SET DEFAULT` below the server's binary
/// log, so those changes are in no rows event (MariaDB, and MySQL before 9.x; see
/// <https://mariadb.com/kb/en/foreign-keys/>). Not a failure: the rows the table's own
/// statements change stream as ever. A table the source account cannot read the constraints
/// of is not warned about.
async fn cascades(conn: &mut Conn, p: &PipelineConfig, db: &str, t: &str) {
    // SHOW CREATE TABLE needs only SELECT (information_schema's constraint tables show nothing
    // to an account with no other privilege on the table).
    let sql = format!("SHOW CREATE TABLE {}.{}", quote_ident(db), quote_ident(t));
    let Ok(Some((_, create))) = conn.query_first::<(String, String), _>(sql).await else {
        return;
    };
    for fk in foreign_key_actions(&create) {
        tracing::warn!(pipeline = %p.name, table = %format!("{db}.{t}"), constraint = %fk.name,
            parent = %fk.parent, on_delete = %fk.on_delete, on_update = %fk.on_update,
            "a foreign key changes this table's rows when its parent rows change: the server applies \
             those changes below the binary log, so they reach no record (a parent's delete \
             leaves its children's last records). Delete or update the children with statements \
             of their own (or a trigger) to stream them");
    }
}

/// A foreign key with a referential action that changes the child's rows.
#[derive(Debug, PartialEq)]
struct ForeignKeyAction {
    name: String,
    /// The parent table as `SHOW CREATE TABLE` names it.
    parent: String,
    /// `CASCADE`, `SET NULL`, `SET DEFAULT`, or `RESTRICT` when the clause is absent.
    on_delete: String,
    on_update: String,
}

/// The foreign keys of a `SHOW CREATE TABLE` text whose `ON DELETE` or `ON UPDATE` changes rows
/// (one `CONSTRAINT … FOREIGN KEY … REFERENCES …` line each, as the server prints them).
fn foreign_key_actions(create: &str) -> Vec<ForeignKeyAction> {
    let action = |line: &str, on: &str| -> String {
        let Some(rest) = line.split(on).nth(1) else {
            return "RESTRICT".into();
        };
        [
            "CASCADE",
            "SET NULL",
            "SET DEFAULT",
            "NO ACTION",
            "RESTRICT",
        ]
        .into_iter()
        .find(|a| rest.trim_start().starts_with(a))
        .unwrap_or("RESTRICT")
        .to_string()
    };
    let changes = |a: &str| matches!(a, "CASCADE" | "SET NULL" | "SET DEFAULT");
    create
        .lines()
        .filter(|l| l.contains(" FOREIGN KEY ") && l.contains(" REFERENCES "))
        .filter_map(|l| {
            let name = l
                .split("CONSTRAINT `")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .unwrap_or("")
                .to_string();
            let parent = l
                .split(" REFERENCES ")
                .nth(1)
                .and_then(|r| r.split(" (").next())
                .unwrap_or("")
                .replace('`', "");
            let fk = ForeignKeyAction {
                name,
                parent,
                on_delete: action(l, " ON DELETE "),
                on_update: action(l, " ON UPDATE "),
            };
            (changes(&fk.on_delete) || changes(&fk.on_update)).then_some(fk)
        })
        .collect()
}

/// Every column the pipeline names (`columns`, `key`, the enrichment's inputs, the filter)
/// is in the table.
fn named_columns(p: &PipelineConfig, s: &TableSchema, f: &mut Vec<Failure>) {
    let (db, t) = p.db_table();
    let mut named: Vec<(String, String)> = Vec::new();
    named.extend(
        p.columns
            .iter()
            .flatten()
            .map(|c| ("columns".to_string(), c.clone())),
    );
    named.extend(
        p.key
            .iter()
            .flatten()
            .map(|c| ("key".to_string(), c.clone())),
    );
    if let Some(e) = &p.enrichment {
        named.extend(e.input_columns());
    }
    if let Some(e) = &p.filter_expr {
        named.extend(e.columns().into_iter().map(|c| ("filter".to_string(), c)));
    }
    for (what, c) in named {
        match s.column(&c) {
            None => {
                let have: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
                fail(f, format!("pipeline `{}` ({}): {what} names column `{c}`, which `{db}`.`{t}` does not have", p.name, p.file),
                    format!("use one of: {}", have.join(", ")));
            }
            Some(col)
                if what.starts_with("enrichment.")
                    && !what.ends_with(".group")
                    && bytes_only(col) =>
            {
                fail(f, format!("pipeline `{}` ({}): {what} names column `{c}` of `{db}`.`{t}`, a {} column: its values are bytes, which records carry as base64, and the service would read the base64 text",
                    p.name, p.file, col.data_type.to_ascii_uppercase()),
                    format!("give the enrichment a text column (a generated column `CONVERT({c} USING utf8mb4)` will do)"));
            }
            Some(_) => {}
        }
    }
}

/// A column whose values are bytes, not text (records show them as base64).
fn bytes_only(c: &SchemaColumn) -> bool {
    c.is_binary() || c.is_spatial()
}

/// Whether the pipeline may be backfilled (`snapshot: initial`, or every pipeline after a
/// purge under `on_purged: resnapshot`).
fn backfills(cfg: &Config, p: &PipelineConfig) -> bool {
    p.snapshot == SnapshotMode::Initial || cfg.source.on_purged == OnPurged::Resnapshot
}

/// Backfills page through a table in key order (its primary key, else the pipeline's `key:`):
/// the key must be orderable.
pub fn backfill_key(cfg: &Config, p: &PipelineConfig, schemas: &Schemas, f: &mut Vec<Failure>) {
    let Some(s) = schemas.get(&p.db_table()) else {
        return;
    };
    if !backfills(cfg, p) {
        return;
    }
    for k in &crate::snapshot::paging_columns(s, p.key.as_deref()) {
        if let Some(c) = s.column(k) {
            if !crate::snapshot::orderable_key(c) {
                fail(f, format!("pipeline `{}` ({}): snapshot: key column `{k}` is {}, which a backfill cannot page through", p.name, p.file, c.column_type),
                    "use integer, decimal, string, binary or date key columns (the primary key, else `key:` in the pipeline), or `snapshot: never`");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_keys_whose_actions_change_rows_are_found() {
        let create = "CREATE TABLE `child` (\n  `id` int(11) NOT NULL,\n  `p` int(11) DEFAULT NULL,\n  \
            `q` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  \
            CONSTRAINT `c_p` FOREIGN KEY (`p`) REFERENCES `parent` (`id`) ON DELETE CASCADE,\n  \
            CONSTRAINT `c q` FOREIGN KEY (`q`) REFERENCES `other`.`t` (`id`) ON DELETE NO ACTION ON UPDATE SET NULL,\n  \
            CONSTRAINT `plain` FOREIGN KEY (`q`) REFERENCES `parent` (`id`),\n  \
            CONSTRAINT `r` FOREIGN KEY (`q`) REFERENCES `parent` (`id`) ON DELETE RESTRICT ON UPDATE NO ACTION\n) ENGINE=InnoDB";
        let fk = |name: &str, parent: &str, d: &str, u: &str| ForeignKeyAction {
            name: name.into(),
            parent: parent.into(),
            on_delete: d.into(),
            on_update: u.into(),
        };
        assert_eq!(
            foreign_key_actions(create),
            [
                fk("c_p", "parent", "CASCADE", "RESTRICT"),
                fk("c q", "other.t", "NO ACTION", "SET NULL"),
            ]
        );
    }
}
