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
    let sel = format!(
        "SELECT 1 FROM {}.{} LIMIT 0",
        quote_ident(&db),
        quote_ident(&t)
    );
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
        if s.column(&c).is_none() {
            let have: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
            fail(f, format!("pipeline `{}` ({}): {what} names column `{c}`, which `{db}`.`{t}` does not have", p.name, p.file),
                format!("use one of: {}", have.join(", ")));
        }
    }
}

/// Whether the pipeline may be backfilled (`snapshot: initial`, or every pipeline after a
/// purge under `on_purged: resnapshot`).
fn backfills(cfg: &Config, p: &PipelineConfig) -> bool {
    p.snapshot == SnapshotMode::Initial || cfg.source.on_purged == OnPurged::Resnapshot
}

/// Backfills page through a table in key order: the key must be orderable.
pub fn backfill_key(cfg: &Config, p: &PipelineConfig, schemas: &Schemas, f: &mut Vec<Failure>) {
    let Some(s) = schemas.get(&p.db_table()) else {
        return;
    };
    if !backfills(cfg, p) {
        return;
    }
    let key = p.key.clone().unwrap_or_else(|| s.primary_key.clone());
    for k in &key {
        if let Some(c) = s.column(k) {
            if !crate::snapshot::orderable_key(c) {
                fail(f, format!("pipeline `{}` ({}): snapshot: key column `{k}` is {}, which a backfill cannot page through", p.name, p.file, c.column_type),
                    "use integer, decimal, string, binary or date key columns (`key:` in the pipeline), or `snapshot: never`");
            }
        }
    }
}
