//! Preflight: everything verified before the first event is read. Each failure says what is
//! wrong and the statement or setting that fixes it.

mod failure;
pub mod writeback;

pub use failure::Failure;

use mysql_async::prelude::Queryable;

use crate::config::{Config, PipelineConfig};
use crate::model::BinlogPosition;
use crate::source::mysql::schema::{self, Schemas};
use crate::source::mysql::sql::quote_ident;
use crate::source::mysql::stream::{self, SourceError};

pub struct Report {
    pub failures: Vec<Failure>,
    pub schemas: Schemas,
    pub server_version: String,
    /// The write-back plans of pipelines with a MySQL sink, by pipeline name.
    pub writeback: std::collections::HashMap<String, crate::sink::mysql::Plan>,
    /// Why the saved checkpoint cannot be resumed, when `on_purged: resnapshot` lets the daemon
    /// start over instead of failing.
    pub purged: Option<String>,
}

fn fail(out: &mut Vec<Failure>, problem: impl Into<String>, fix: impl Into<String>) {
    out.push(Failure {
        problem: problem.into(),
        fix: fix.into(),
    });
}

/// Why the decoder cannot read a column of this type and charset (every column of a read
/// table must be readable: the binlog's rows are decoded whole).
fn undecodable(c: &crate::source::mysql::schema::SchemaColumn) -> Option<String> {
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

/// Runs every check. `Err` only when the server cannot be reached at all.
pub async fn run(
    cfg: &Config,
    pipelines: &[PipelineConfig],
    checkpoint: Option<&BinlogPosition>,
) -> Result<Report, SourceError> {
    let mut conn = stream::connect(&cfg.source).await?;
    let mut f = Vec::new();
    let q = |what: &'static str| move |source| SourceError::Query { what, source };

    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(q("SELECT VERSION()"))?
        .unwrap_or_default();
    let is_maria = version.to_ascii_lowercase().contains("mariadb");

    // Server settings.
    let mut settings = std::collections::HashMap::new();
    let row: Option<(String, String, String)> = conn
        .query_first(
            "SELECT CAST(@@GLOBAL.log_bin AS CHAR), CAST(@@GLOBAL.binlog_format AS CHAR), \
             CAST(@@GLOBAL.binlog_row_image AS CHAR)",
        )
        .await
        .map_err(q("@@GLOBAL.log_bin"))?;
    if let Some((a, b, c)) = row {
        settings.insert("LOG_BIN", a.to_ascii_uppercase());
        settings.insert("BINLOG_FORMAT", b.to_ascii_uppercase());
        settings.insert("BINLOG_ROW_IMAGE", c.to_ascii_uppercase());
    }
    // binlog_row_metadata exists from MySQL 8.0.1 and MariaDB 10.5.
    if let Ok(Some(m)) = conn
        .query_first::<String, _>("SELECT CAST(@@GLOBAL.binlog_row_metadata AS CHAR)")
        .await
    {
        settings.insert("BINLOG_ROW_METADATA", m.to_ascii_uppercase());
    }
    let cnf = if is_maria { "[mariadbd]" } else { "[mysqld]" };
    let get = |k: &str| settings.get(k).cloned().unwrap_or_default();
    if !matches!(get("LOG_BIN").as_str(), "ON" | "1") {
        fail(
            &mut f,
            "binary logging is off (log_bin = OFF)",
            format!(
                "start the server with --log-bin (in {cnf}: log_bin = mysql-bin) and restart it"
            ),
        );
    }
    if get("BINLOG_FORMAT") != "ROW" {
        fail(
            &mut f,
            format!("binlog_format is {}, not ROW", get("BINLOG_FORMAT")),
            format!("SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in {cnf}"),
        );
    }
    if get("BINLOG_ROW_IMAGE") != "FULL" {
        fail(
            &mut f,
            format!(
                "binlog_row_image is {}, not FULL: before images would lack columns",
                get("BINLOG_ROW_IMAGE")
            ),
            format!("SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in {cnf}"),
        );
    }
    let meta = get("BINLOG_ROW_METADATA");
    if !meta.is_empty() && meta != "FULL" {
        tracing::warn!(binlog_row_metadata = %meta, "column names will come from information_schema; \
            SET GLOBAL binlog_row_metadata = 'FULL' makes every event describe its own columns");
    }

    // Grants.
    let privs: Vec<String> = conn
        .query(
            "SELECT UPPER(PRIVILEGE_TYPE) FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = \
             CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(q("information_schema.USER_PRIVILEGES"))?;
    let user: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(q("CURRENT_USER()"))?
        .unwrap_or_default();
    let grantee = match user.split_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => user.clone(),
    };
    let has = |p: &str| privs.iter().any(|x| x == p || x == "SUPER");
    if !has("REPLICATION SLAVE") {
        fail(
            &mut f,
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
            &mut f,
            format!("{grantee} lacks {p} (needed for SHOW BINARY LOGS / SHOW MASTER STATUS)"),
            format!("GRANT {p} ON *.* TO {grantee};"),
        );
    }

    // Tables and columns.
    let mut tables: Vec<(String, String)> = pipelines.iter().map(|p| p.db_table()).collect();
    tables.sort();
    tables.dedup();
    let schemas = schema::load(&mut conn, &tables)
        .await
        .map_err(q("information_schema.COLUMNS"))?;
    for p in pipelines {
        let (db, t) = p.db_table();
        let Some(s) = schemas.get(&(db.clone(), t.clone())) else {
            fail(&mut f, format!("pipeline `{}` ({}): table `{db}`.`{t}` does not exist (or {grantee} cannot see it)", p.name, p.file),
                format!("create the table, fix `table:` in {}, or GRANT SELECT ON `{db}`.`{t}` TO {grantee};", p.file));
            continue;
        };
        let mut named: Vec<(&str, String)> = Vec::new();
        for c in p.columns.iter().flatten() {
            named.push(("columns", c.clone()));
        }
        for c in p.key.iter().flatten() {
            named.push(("key", c.clone()));
        }
        let enrichment_columns = p
            .enrichment
            .as_ref()
            .map(|e| e.input_columns())
            .unwrap_or_default();
        for (what, c) in &enrichment_columns {
            named.push((what.as_str(), c.clone()));
        }
        if let Some(e) = &p.filter_expr {
            for c in e.columns() {
                named.push(("filter", c));
            }
        }
        for (what, c) in named {
            if s.column(&c).is_none() {
                let have: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
                fail(&mut f, format!("pipeline `{}` ({}): {what} names column `{c}`, which `{db}`.`{t}` does not have", p.name, p.file),
                    format!("use one of: {}", have.join(", ")));
            }
        }
        for c in &s.columns {
            if let Some(why) = undecodable(c) {
                fail(&mut f, format!("pipeline `{}` ({}): column `{}` of `{db}`.`{t}` ({}) {why}", p.name, p.file, c.name, c.column_type),
                    format!("change the column's type (ALTER TABLE `{db}`.`{t}` MODIFY `{}` …), or read another table", c.name));
            }
        }
        // Records of a table without a key have none (a null Kafka key); a write-back and a
        // backfill need one.
        let needs_key = if matches!(p.sink, crate::config::SinkConfig::Mysql(_)) {
            Some("a write-back needs a key to find the row its result belongs to")
        } else if p.snapshot == crate::config::pipeline::SnapshotMode::Initial
            || cfg.source.on_purged == crate::config::OnPurged::Resnapshot
        {
            Some("a backfill pages through the table in key order")
        } else {
            None
        };
        if let (Some(why), None, true) = (needs_key, &p.key, s.primary_key.is_empty()) {
            fail(&mut f, format!("pipeline `{}` ({}): `{db}`.`{t}` has no primary key, and the pipeline sets no `key:`; {why}", p.name, p.file),
                format!("add `key: [column, …]` (columns that identify a row) to {} or ALTER TABLE `{db}`.`{t}` ADD PRIMARY KEY (…);", p.file));
        }
        let sel = format!(
            "SELECT 1 FROM {}.{} LIMIT 0",
            quote_ident(&db),
            quote_ident(&t)
        );
        if let Err(e) = conn.query_drop(sel).await {
            fail(
                &mut f,
                format!(
                    "pipeline `{}`: cannot SELECT from `{db}`.`{t}`: {e}",
                    p.name
                ),
                format!("GRANT SELECT ON `{db}`.`{t}` TO {grantee};"),
            );
        }
    }

    // The checkpoint is still on the server (listing the logs needs the grant checked above).
    let mut purged = None;
    if let (Some(cp), true) = (checkpoint, can_list_logs) {
        if let Err(e) = stream::check_position(&mut conn, cp).await {
            if cfg.source.on_purged == crate::config::OnPurged::Resnapshot {
                purged = Some(e.to_string());
            } else {
                fail(&mut f, format!("the saved checkpoint cannot be resumed: {e}"),
                    "restore the purged binlog files; or set `source.on_purged: resnapshot` to start at the current end \
                     and backfill every pipeline; or move the checkpoint away to start at the current end \
                     (rows changed in between are then not emitted)");
            }
        }
    }

    // Backfills page through a table in key order: the key must be orderable.
    for p in pipelines {
        let Some(s) = schemas.get(&p.db_table()) else {
            continue;
        };
        if p.snapshot != crate::config::pipeline::SnapshotMode::Initial
            && cfg.source.on_purged != crate::config::OnPurged::Resnapshot
        {
            continue;
        }
        let key = p.key.clone().unwrap_or_else(|| s.primary_key.clone());
        for k in &key {
            if let Some(c) = s.column(k) {
                if !crate::snapshot::orderable_key(c) {
                    fail(&mut f, format!("pipeline `{}` ({}): snapshot: key column `{k}` is {}, which a backfill cannot page through", p.name, p.file, c.column_type),
                        "use integer, decimal, string, binary or date key columns (`key:` in the pipeline), or `snapshot: never`");
                }
            }
        }
    }
    let _ = conn.disconnect().await;
    // Write-back sinks, checked with the writer's own account.
    let mut writeback = std::collections::HashMap::new();
    for p in pipelines {
        let crate::config::SinkConfig::Mysql(m) = &p.sink else {
            continue;
        };
        let Some(s) = schemas.get(&p.db_table()) else {
            continue;
        };
        match writeback::plan(&cfg.source, p, m, s).await {
            Ok(plan) => {
                writeback.insert(p.name.clone(), plan);
            }
            Err(mut failures) => f.append(&mut failures),
        }
    }
    Ok(Report {
        failures: f,
        schemas,
        server_version: version,
        writeback,
        purged,
    })
}
