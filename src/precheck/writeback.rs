//! Start-up checks of a write-back sink, with the writer's own account: the table, each output
//! column and whether its type can hold what the enrichment puts at its pointer, the side
//! table's unique key. The result is the [`Plan`] the writer runs.

use mysql_async::prelude::Queryable;

use super::Failure;
use crate::config::pipeline::{
    BackendConfig, BedrockOutput, EnrichmentConfig, MysqlSinkConfig, PipelineConfig, VectorFormat,
    WriteMode,
};
use crate::config::SourceConfig;
use crate::sink::mysql::{
    qualified, removals, statement, writer_opts, Bind, Output, Plan, Removals,
};
use crate::source::mysql::schema::{self, SchemaColumn, TableSchema};

/// What the enrichment holds at a pointer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Number,
    Integer,
    Json,
    /// An embedding: an array of numbers, stored as the sink's `vector_format` says.
    Vector,
    /// A field of a model's JSON answer: any column; the database refuses what it cannot hold
    /// (and the row goes to the dead letters).
    Any,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Json => "JSON",
            Kind::Vector => "a vector",
            Kind::Any => "a field of the model's JSON",
        }
    }

    fn fix(self) -> &'static str {
        match self {
            Kind::Text | Kind::Json | Kind::Vector => "a utf8mb4 VARCHAR, TEXT or JSON column",
            Kind::Number => "a DOUBLE or DECIMAL column",
            Kind::Integer => "an integer, DECIMAL or DOUBLE column",
            Kind::Any => "any column",
        }
    }
}

/// What the enrichment of `e` puts at `pointer`.
fn kind_at(e: &EnrichmentConfig, pointer: &str) -> Kind {
    let first = pointer.split('/').nth(1).unwrap_or("");
    if e.window.is_some() && first == "window" {
        return match pointer {
            "/window/id" => Kind::Text,
            "/window/rows" | "/window/first_ts_ms" | "/window/last_ts_ms" => Kind::Integer,
            _ => Kind::Json,
        };
    }
    match (e.backend(), first) {
        (_, "backend" | "operation" | "endpoint" | "model" | "lineage") => Kind::Text,
        (Some(BackendConfig::Comprehend(_)), "sentiment" | "language") => Kind::Text,
        (Some(BackendConfig::Comprehend(_)), "confidence" | "scores") => Kind::Number,
        (Some(BackendConfig::SageMaker(s)), "result") => {
            match crate::backend::sagemaker::Returns::parse(&s.returns) {
                Ok(crate::backend::sagemaker::Returns::Double) => Kind::Number,
                Ok(crate::backend::sagemaker::Returns::Bigint) => Kind::Integer,
                Ok(crate::backend::sagemaker::Returns::Varchar(_)) => Kind::Text,
                _ => Kind::Json,
            }
        }
        (Some(BackendConfig::Bedrock(b)), "result")
            if pointer == "/result" && b.output == BedrockOutput::Text && b.schema.is_none() =>
        {
            Kind::Text
        }
        (Some(BackendConfig::Bedrock(_)), "usage") => Kind::Integer,
        (Some(BackendConfig::Bedrock(_)), "result") => Kind::Any,
        (Some(BackendConfig::Embedding(_)), "embedding") if pointer == "/embedding" => Kind::Vector,
        (Some(BackendConfig::Embedding(_)), "embedding") => Kind::Number,
        (Some(BackendConfig::Embedding(_)), "dimensions" | "usage") => Kind::Integer,
        _ => Kind::Json,
    }
}

const TEXT: [&str; 6] = [
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
];
const INTEGER: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];
const REAL: [&str; 3] = ["float", "double", "decimal"];

fn holds(c: &SchemaColumn, kind: Kind) -> Result<(), String> {
    let t = c.data_type.as_str();
    let text = TEXT.contains(&t) || t == "json" || c.is_json;
    if text && !c.is_json && t != "json" {
        let cs = c.charset.as_deref().unwrap_or("");
        if !cs.starts_with("utf8mb4") && matches!(kind, Kind::Text | Kind::Json) {
            return Err(format!(
                "{} CHARACTER SET {cs}",
                c.column_type.to_uppercase()
            ));
        }
    }
    let ok = match kind {
        Kind::Text | Kind::Json | Kind::Vector => text,
        Kind::Number => REAL.contains(&t) || text,
        Kind::Integer => INTEGER.contains(&t) || REAL.contains(&t) || text,
        Kind::Any => true,
    };
    if ok {
        Ok(())
    } else {
        Err(c.column_type.to_uppercase())
    }
}

/// Whether `c` can hold a vector of `dims` numbers stored as `format` says: `json` as JSON or
/// text; `float32` in a BLOB, or a (VAR)BINARY of at least 4 × `dims` bytes; `vector` in a
/// `VECTOR(dims)`. `Err`: the problem and its fix.
fn holds_vector(
    c: &SchemaColumn,
    format: VectorFormat,
    dims: u32,
) -> Result<bool, (String, String)> {
    let t = c.data_type.as_str();
    let ty = c.column_type.to_uppercase();
    let size = || -> Option<u64> {
        let (open, close) = (c.column_type.find('(')?, c.column_type.find(')')?);
        c.column_type.get(open + 1..close)?.parse().ok()
    };
    let bytes = u64::from(dims) * 4;
    match format {
        VectorFormat::Json => holds(c, Kind::Vector)
            .map(|()| false)
            .map_err(|ty| (format!("{ty}, which cannot hold a vector as JSON"),
                "a JSON or utf8mb4 TEXT column, or set sink.mysql.vector_format".into())),
        VectorFormat::Float32 => match t {
            "blob" | "mediumblob" | "longblob" => Ok(true),
            "tinyblob" if bytes <= 255 => Ok(true),
            // BINARY(n) pads to n bytes: only the exact size reads back as the vector.
            "binary" if size() == Some(bytes) => Ok(true),
            "varbinary" if size().is_some_and(|n| n >= bytes) => Ok(true),
            _ => Err((
                format!("{ty}, which cannot hold {dims} float32 numbers ({bytes} bytes)"),
                format!("a BLOB or VARBINARY({bytes}) column"),
            )),
        },
        VectorFormat::Vector if t == "vector" && size() == Some(u64::from(dims)) => Ok(true),
        VectorFormat::Vector => Err((
            format!("{ty}, not VECTOR({dims})"),
            format!("a VECTOR({dims}) column (MariaDB 11.7+ or MySQL 9), or set sink.mysql.vector_format to float32 or json"),
        )),
    }
}

/// The most characters a CHAR / VARCHAR column holds.
fn max_chars(c: &SchemaColumn) -> Option<usize> {
    if !matches!(c.data_type.as_str(), "char" | "varchar") {
        return None;
    }
    let open = c.column_type.find('(')?;
    let close = c.column_type.find(')')?;
    c.column_type.get(open + 1..close)?.parse().ok()
}

fn bind_for(c: Option<&SchemaColumn>) -> Bind {
    if c.is_some_and(SchemaColumn::is_binary) {
        Bind::Base64
    } else {
        Bind::Plain
    }
}

/// Types whose values as the record carries them do not compare exactly with the stored ones
/// (floating point, JSON, temporal with time zones and fractions, spatial): left out of the
/// stale-write guard.
fn guardable(c: &SchemaColumn) -> bool {
    !(c.is_json
        || c.is_spatial()
        || matches!(
            c.data_type.as_str(),
            "float" | "double" | "json" | "timestamp" | "datetime" | "time" | "bit"
        ))
}

/// The failures found for one pipeline's sink, each prefixed with the pipeline.
struct Findings {
    head: String,
    list: Vec<Failure>,
}

impl Findings {
    fn fail(&mut self, problem: String, fix: String) {
        self.list.push(Failure {
            problem: format!("{}: {problem}", self.head),
            fix,
        });
    }
}

/// The side or source table the sink writes, as `db.table` and its two parts.
struct Target {
    name: String,
    db: String,
    table: String,
}

/// Checks the sink of `p` and builds its plan. `source` is the source table's schema (loaded
/// by the main preflight).
pub async fn plan(
    src: &SourceConfig,
    p: &PipelineConfig,
    m: &MysqlSinkConfig,
    source: &TableSchema,
) -> Result<Plan, Vec<Failure>> {
    let mut f = Findings {
        head: format!("pipeline `{}` ({})", p.name, p.file),
        list: Vec::new(),
    };
    let Some(e) = &p.enrichment else {
        return Err(f.list);
    };
    let (sdb, stable) = p.db_table();
    let source_table = format!("{sdb}.{stable}");
    let name = match m.mode {
        WriteMode::Update => source_table.clone(),
        WriteMode::Upsert => m.table.clone().unwrap_or_default(),
    };
    let (db, table) = crate::config::pipeline::split_table(&name).unwrap_or_default();
    let target = Target { name, db, table };
    let writer = format!("'{}'", m.user);
    let Some((mut conn, t)) = connect_and_load(src, m, &target, &writer, &mut f).await else {
        return Err(f.list);
    };
    let outputs = outputs(e, m, &t, &target, &mut f);
    if e.window.is_some() {
        let side_key = vec![m.window_key()];
        window_columns(&t, &target, &side_key[0], &outputs, &mut f);
        upsert_checks(
            &mut conn, &t, &target, &side_key, &side_key, &writer, &mut f,
        )
        .await;
        let _ = conn.disconnect().await;
        if !f.list.is_empty() {
            return Err(f.list);
        }
        return Ok(window_plan(p, m, &target, outputs, &side_key[0]));
    }
    // The source key: the pipeline's, else the table's primary key.
    let key_names = p.key.clone().unwrap_or_else(|| source.primary_key.clone());
    let key: Vec<(String, Bind)> = key_names
        .iter()
        .map(|k| (k.clone(), bind_for(source.column(k))))
        .collect();
    let guard = guard(p, e, source);
    let side_key: Vec<String> = m.key.clone().unwrap_or_else(|| key_names.clone());
    if m.mode == WriteMode::Upsert {
        upsert_checks(
            &mut conn, &t, &target, &side_key, &key_names, &writer, &mut f,
        )
        .await;
    }
    let _ = conn.disconnect().await;
    if !f.list.is_empty() {
        return Err(f.list);
    }
    let side = Some((target.name.as_str(), side_key.as_slice()));
    let statement = statement(m.mode, &source_table, side, &outputs, &key, &guard);
    let clear_failed = Some(crate::sink::mysql::clear_failed(
        m.mode,
        &source_table,
        side,
        &outputs,
        &key,
        &guard,
    ));
    let removals = removals(
        m.mode,
        &source_table,
        side,
        &outputs,
        &key,
        &e.text_columns(),
        m.on_input_gone,
    );
    Ok(Plan {
        pipeline: p.name.clone(),
        mode: m.mode,
        statement,
        outputs,
        key,
        guard,
        on_too_long: m.on_too_long,
        dead_letter_table: dead_letter_table(m, &target),
        progress_table: progress_table(m, &target),
        removals,
        clear_failed,
        by_partition: false,
    })
}

fn dead_letter_table(m: &MysqlSinkConfig, target: &Target) -> String {
    m.dead_letter_table
        .clone()
        .unwrap_or_else(|| format!("{}.cdc_enricher_dead_letters", target.db))
}

fn progress_table(m: &MysqlSinkConfig, target: &Target) -> String {
    m.progress_table
        .clone()
        .unwrap_or_else(|| format!("{}.cdc_enricher_writeback", target.db))
}

/// A windowed pipeline's side table: the id column holds 16 characters, and the commit times
/// (ms since the epoch) a BIGINT.
fn window_columns(
    t: &TableSchema,
    target: &Target,
    id_column: &str,
    outputs: &[Output],
    f: &mut Findings,
) {
    let (tdb, ttable) = (&target.db, &target.table);
    if let Some(c) = t.column(id_column) {
        let text = TEXT.contains(&c.data_type.as_str()) && max_chars(c).is_none_or(|n| n >= 16);
        if !text {
            f.fail(
                format!(
                    "sink.mysql.key: `{tdb}`.`{ttable}`.`{id_column}` is {}, which cannot hold a window's id (16 hex digits)",
                    c.column_type.to_uppercase()
                ),
                format!("make `{id_column}` CHAR(16)"),
            );
        }
    }
    for o in outputs {
        let ts = o.pointer == "/window/first_ts_ms" || o.pointer == "/window/last_ts_ms";
        let wide = t
            .column(&o.column)
            .is_some_and(|c| matches!(c.data_type.as_str(), "bigint" | "decimal"));
        if ts && !wide {
            f.fail(
                format!(
                    "sink.mysql.columns.{}: {} is milliseconds since the epoch, too large for `{tdb}`.`{ttable}`.`{}`",
                    o.column, o.pointer, o.column
                ),
                format!("make `{}` BIGINT", o.column),
            );
        }
    }
}

/// A windowed pipeline's plan: each window upserted into the side table by its id, with no
/// guard (a window has no source row) and no removals (rows that join no window never reach
/// the sink).
fn window_plan(
    p: &PipelineConfig,
    m: &MysqlSinkConfig,
    target: &Target,
    outputs: Vec<Output>,
    id_column: &str,
) -> Plan {
    Plan {
        pipeline: p.name.clone(),
        mode: m.mode,
        statement: crate::sink::mysql::window_statement(&target.name, id_column, &outputs),
        outputs,
        key: vec![(id_column.to_string(), Bind::Plain)],
        guard: Vec::new(),
        on_too_long: m.on_too_long,
        dead_letter_table: dead_letter_table(m, target),
        progress_table: progress_table(m, target),
        removals: Removals::default(),
        clear_failed: None,
        by_partition: false,
    }
}

/// Connects with the writer's account and loads the written table's schema.
async fn connect_and_load(
    src: &SourceConfig,
    m: &MysqlSinkConfig,
    target: &Target,
    writer: &str,
    f: &mut Findings,
) -> Option<(mysql_async::Conn, TableSchema)> {
    let (tdb, ttable) = (&target.db, &target.table);
    let mut conn = match mysql_async::Conn::new(writer_opts(src, m)).await {
        Ok(c) => c,
        Err(err) => {
            f.fail(format!("sink.mysql cannot connect as {writer}: {err}"),
                "check sink.mysql.user and password, and that the account may connect from this host".into());
            return None;
        }
    };
    let mut schemas = match schema::load(&mut conn, &[(tdb.clone(), ttable.clone())]).await {
        Ok(s) => s,
        Err(err) => {
            f.fail(
                format!("sink.mysql cannot read information_schema as {writer}: {err}"),
                "GRANT SELECT on the written table to the writer".into(),
            );
            return None;
        }
    };
    let Some(t) = schemas.remove(&(tdb.clone(), ttable.clone())) else {
        f.fail(
            format!(
                "sink.mysql: table `{tdb}`.`{ttable}` does not exist (or {writer} cannot see it)"
            ),
            format!(
                "create it, or GRANT SELECT, INSERT, UPDATE ON `{tdb}`.`{ttable}` TO {writer};"
            ),
        );
        return None;
    };
    Some((conn, t))
}

/// The output columns: each exists and can hold what its pointer names.
fn outputs(
    e: &EnrichmentConfig,
    m: &MysqlSinkConfig,
    t: &TableSchema,
    target: &Target,
    f: &mut Findings,
) -> Vec<Output> {
    let (tdb, ttable) = (&target.db, &target.table);
    let mut outputs = Vec::new();
    for (col, ptr) in &m.columns {
        let Some(c) = t.column(col) else {
            let have: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
            f.fail(
                format!("sink.mysql.columns.{col}: `{tdb}`.`{ttable}` has no column `{col}`"),
                format!(
                    "add it (ALTER TABLE `{tdb}`.`{ttable}` ADD COLUMN `{col}` …) or use one of: {}",
                    have.join(", ")
                ),
            );
            continue;
        };
        let kind = kind_at(e, ptr);
        let mut float32 = false;
        if let (Kind::Vector, Some(BackendConfig::Embedding(emb))) = (kind, e.backend()) {
            let dims = crate::backend::embedding::dimensions(emb).unwrap_or(0);
            match holds_vector(c, m.vector_format, dims) {
                Ok(f) => float32 = f,
                Err((problem, fix)) => {
                    f.fail(
                        format!(
                            "sink.mysql.columns.{col}: `{tdb}`.`{ttable}`.`{col}` is {problem}"
                        ),
                        format!("make `{col}` {fix}"),
                    );
                    continue;
                }
            }
        } else if let Err(ty) = holds(c, kind) {
            f.fail(
                format!(
                    "sink.mysql.columns.{col}: `{tdb}`.`{ttable}`.`{col}` is {ty}, which cannot hold {} at {ptr}",
                    kind.describe()
                ),
                format!("make `{col}` {}", kind.fix()),
            );
            continue;
        }
        if ptr == "/lineage" && max_chars(c).is_some_and(|n| n < 16) {
            f.fail(
                format!(
                    "sink.mysql.columns.{col}: `{tdb}`.`{ttable}`.`{col}` is {}, shorter than a lineage (16 characters): a cut lineage never matches, and reenrich would redo every row",
                    c.column_type.to_uppercase()
                ),
                format!("make `{col}` CHAR(16)"),
            );
            continue;
        }
        outputs.push(Output {
            column: col.clone(),
            pointer: ptr.clone(),
            max_chars: if float32 { None } else { max_chars(c) },
            float32,
        });
    }
    outputs
}

/// The input columns that compare exactly, for the stale-write guard (the others are left
/// out, with a warning).
fn guard(p: &PipelineConfig, e: &EnrichmentConfig, source: &TableSchema) -> Vec<(String, Bind)> {
    let mut guard = Vec::new();
    let mut unguarded = Vec::new();
    for (_, c) in e.input_columns() {
        match source.column(&c) {
            Some(sc) if guardable(sc) => guard.push((c.clone(), bind_for(Some(sc)))),
            _ => unguarded.push(c),
        }
    }
    if !unguarded.is_empty() {
        tracing::warn!(pipeline = %p.name, columns = ?unguarded,
            "these input columns do not compare exactly (floating point, JSON, temporal, spatial) and are left out of the stale-write guard");
    }
    guard
}

/// An upsert's side table: one key column per source key column, DELETE granted (side rows
/// follow their source), and a PRIMARY or UNIQUE key on the side key.
async fn upsert_checks(
    conn: &mut mysql_async::Conn,
    t: &TableSchema,
    target: &Target,
    side_key: &[String],
    key_names: &[String],
    writer: &str,
    f: &mut Findings,
) {
    let (tdb, ttable) = (&target.db, &target.table);
    if side_key.len() != key_names.len() {
        f.fail(
            format!(
                "sink.mysql.key names {} columns, the source key ({}) {}",
                side_key.len(),
                key_names.join(", "),
                key_names.len()
            ),
            "name one side-table column per source key column, in the same order".into(),
        );
    }
    for k in side_key {
        if t.column(k).is_none() {
            f.fail(
                format!("sink.mysql.key: `{tdb}`.`{ttable}` has no column `{k}`"),
                format!(
                    "add it, or set sink.mysql.key to the side table's columns holding {}",
                    key_names.join(", ")
                ),
            );
        }
    }
    let probe = format!("DELETE FROM {} WHERE FALSE", qualified(&target.name));
    if let Err(err) = conn.query_drop(probe).await {
        f.fail(
            format!("sink.mysql: {writer} cannot DELETE from `{tdb}`.`{ttable}` ({err}); side rows follow their source row"),
            format!("GRANT DELETE ON `{tdb}`.`{ttable}` TO {writer};"),
        );
    }
    let uniques: Vec<(String, String)> = conn
        .exec(
            "SELECT INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY COLUMN_NAME SEPARATOR ',') \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             GROUP BY INDEX_NAME",
            (tdb.as_str(), ttable.as_str()),
        )
        .await
        .unwrap_or_default();
    let mut want = side_key.to_vec();
    want.sort();
    let want = want.join(",");
    if !uniques.iter().any(|(_, cols)| *cols == want) {
        f.fail(
            format!(
                "sink.mysql: `{tdb}`.`{ttable}` has no PRIMARY or UNIQUE key on ({}), so an upsert would insert duplicates",
                side_key.join(", ")
            ),
            format!(
                "ALTER TABLE `{tdb}`.`{ttable}` ADD UNIQUE KEY ({});",
                side_key.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
}
