//! One pipeline per YAML file: which rows of which table go where.

use std::path::Path;

use serde::Deserialize;

pub use super::window::WindowConfig;
use super::{parse_yaml, ConfigError};
pub use crate::backend::aws::AwsSettings;
pub use crate::backend::bedrock::config::{BedrockConfig, BedrockOutput};
pub use crate::backend::comprehend::config::{ComprehendConfig, OnTooLong};
pub use crate::backend::embedding::config::EmbeddingConfig;
pub use crate::backend::sagemaker::config::SageMakerConfig;
pub use crate::backend::BackendConfig;
use crate::model::filter::Expr;

/// One pipeline, one YAML file in `pipelines/`: which rows of which table, enriched how,
/// go to which sink. See the README's configuration reference for every key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; used in metrics, logs and the `{pipeline}` topic variable.
    pub name: String,
    /// The source table, `database.table`.
    pub table: String,
    /// Columns to pick (default: all, in table order).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Key columns: the Kafka message key (default: the primary key).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Operations to emit (default: insert, update, delete).
    #[serde(default = "all_operations")]
    pub operations: Vec<Operation>,
    /// A row filter over column values, e.g. `stars >= 4 AND lang = 'en'`. Inserts and updates
    /// are tested on the row after the change, deletes on the row before it.
    #[serde(default)]
    pub filter: Option<String>,
    /// An update after which a row no longer passes `filter`: `delete` (the default) emits a
    /// `d` of it marked `filter_change: left` (the pipeline streams a view of the table);
    /// `ignore` emits nothing, as an event filter (Debezium's Filter SMT) does.
    #[serde(default)]
    pub on_filter_exit: Option<OnFilterExit>,
    /// Enrichment by one backend: `comprehend: {…}`, `sagemaker: {…}` or `bedrock: {…}`,
    /// with the shared settings beside it. Without it records go out with an empty
    /// `enrichment` object.
    #[serde(default)]
    pub enrichment: Option<EnrichmentConfig>,
    /// An update that changes the row's key: `split` (default) emits a `d` of the old key then
    /// a `c` of the new one, both marked with `key_change`; `update` emits one `u` keyed by the
    /// new key.
    #[serde(default)]
    pub key_changes: KeyChanges,
    /// `initial`: when the daemon starts without a checkpoint, backfill the table's existing
    /// rows (as `op: r` records, interleaved with the stream). `never` (default).
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Where records go: `kafka: {topic: …}` or `jsonl: {path: …}`.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub sink: SinkConfig,
    /// The file the pipeline was read from (for error messages; not a YAML key).
    #[serde(skip)]
    pub file: String,
    /// `filter` parsed when the file is loaded (not a YAML key).
    #[serde(skip)]
    pub filter_expr: Option<Expr>,
    /// A change stream of the source role (`run --role source`), made by the daemon, not read
    /// from a file: its records carry the table's `schema` (not a YAML key).
    #[serde(skip)]
    pub change_stream: bool,
}

/// What an update that takes a row out of the pipeline's `filter` emits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFilterExit {
    /// A `d` of the row as it passed, marked `filter_change: left`.
    #[default]
    Delete,
    /// Nothing.
    Ignore,
}

/// How an update that changes the row's key is emitted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyChanges {
    #[default]
    Split,
    Update,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    Initial,
    #[default]
    Never,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

fn all_operations() -> Vec<Operation> {
    vec![Operation::Insert, Operation::Update, Operation::Delete]
}

/// `enrichment:` — one backend (`comprehend`, `sagemaker` or `bedrock`) and the settings
/// every backend shares: where to call, batching, limits, the cache and a budget.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// Amazon Comprehend: sentiment, entities, key phrases, dominant language, PII entities.
    #[serde(default)]
    pub comprehend: Option<ComprehendConfig>,
    /// A SageMaker endpoint: the picked columns as CSV lines in, one line per row out.
    #[serde(default)]
    pub sagemaker: Option<SageMakerConfig>,
    /// A Bedrock foundation model: a prompt template over the row's columns.
    #[serde(default)]
    pub bedrock: Option<BedrockConfig>,
    /// A Bedrock embedding model (Titan Text Embeddings v2, Cohere Embed): a text template over
    /// the row's columns in, a vector out.
    #[serde(default)]
    pub embedding: Option<EmbeddingConfig>,
    /// AWS region; default from the environment / profile chain.
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (a VPC endpoint, or a local stand-in); empty means AWS's own.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// A profile of the shared config and credentials files.
    #[serde(default)]
    pub profile: Option<String>,
    /// A role to assume (STS AssumeRole) with the pipeline's credentials.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Rows per call. Default: Comprehend 25 (its limit), SageMaker 10,000 (Aurora's
    /// `MAX_BATCH_SIZE`), Bedrock 1 (a call takes one prompt).
    #[serde(default)]
    pub max_batch_size: Option<usize>,
    /// Input bytes per call. Default and ceiling for SageMaker: 6,000,000 (the body limit).
    #[serde(default)]
    pub max_batch_bytes: Option<usize>,
    /// How long a batch waits to fill. Default 100 ms.
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
    /// Per-call timeout (as Aurora's `aurora_ml_inference_timeout`). Default 30,000 ms;
    /// SageMaker 70,000 ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Calls per second allowed (the account's quota); shared by every pipeline that calls
    /// the same backend, operation or model, region and endpoint. Default 10.
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// Bedrock: tokens per minute allowed (each call reserves its input estimate plus
    /// `max_tokens`, and settles on what the answer reports). Shared like the request quota.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Calls in flight at once for this pipeline (records still leave in order). Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Answers kept for identical inputs (a hit makes no call); 0 turns the cache off.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
    /// Calls whose answer cannot be used (unparseable, the wrong number of lines) before the
    /// rows go to the dead letters. Default 3.
    #[serde(default = "default_parse_attempts")]
    pub parse_attempts: u32,
    /// The longest wait a service's `Retry-After` (seconds or an HTTP-date) is honoured for,
    /// in seconds; a longer one is waited this long, with a warning. Default 300.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after_s: u64,
    /// A spending ceiling per window: when spent the pipeline pauses until the next window.
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// When a hot reload changes the pipeline's lineage (model, prompt, parameters), start its
    /// re-enrichment by itself, as `cdc-enricher reenrich` would. Needs a `snapshot:` section.
    /// Default false.
    #[serde(default)]
    pub reenrich_on_change: bool,
    /// What calls cost, for the estimates of `backfill --dry-run` and `reenrich --dry-run`
    /// (nothing is charged or limited by it).
    #[serde(default)]
    pub prices: Option<PricesConfig>,
    /// A prompt over a window of rows (Bedrock and embedding): one call and one record per
    /// window instead of per row.
    #[serde(default)]
    pub window: Option<WindowConfig>,
}

/// `enrichment.prices`: what the provider charges, in any one currency (the estimate prints
/// the same unit). Every price defaults to 0.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    /// Per call (a request).
    #[serde(default)]
    pub per_call: f64,
    /// Per input enriched (a document, a CSV line, a text; a window's prompt for a windowed
    /// pipeline).
    #[serde(default)]
    pub per_row: f64,
    /// Per 1,000 input tokens (models).
    #[serde(default)]
    pub per_1k_input_tokens: f64,
    /// Per 1,000 output tokens (models; estimated at the `max_tokens` ceiling).
    #[serde(default)]
    pub per_1k_output_tokens: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Calls allowed per window.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Tokens (input + output, as the model reports them) allowed per window.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// The window, aligned to the Unix epoch (86,400: UTC days). Default 86,400.
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// What a token read from the prompt cache counts for against `tokens` (Anthropic prices
    /// a cache read at a tenth of an input token). Default 0.1.
    #[serde(default = "default_cache_read_weight")]
    pub cache_read_weight: f64,
    /// What a token written to the prompt cache counts for (Anthropic: 1.25 input tokens).
    /// Default 1.25.
    #[serde(default = "default_cache_write_weight")]
    pub cache_write_weight: f64,
}

fn default_cache_read_weight() -> f64 {
    0.1
}
fn default_cache_write_weight() -> f64 {
    1.25
}

impl EnrichmentConfig {
    /// The one backend named (checked when the pipeline is loaded).
    pub fn backend(&self) -> Option<BackendConfig<'_>> {
        let named = [
            self.comprehend.as_ref().map(BackendConfig::Comprehend),
            self.sagemaker.as_ref().map(BackendConfig::SageMaker),
            self.bedrock.as_ref().map(BackendConfig::Bedrock),
            self.embedding.as_ref().map(BackendConfig::Embedding),
        ];
        let mut named = named.into_iter().flatten();
        match (named.next(), named.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    pub fn aws(&self) -> AwsSettings {
        AwsSettings {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            role_arn: self.role_arn.clone(),
        }
    }

    /// What every backend's calls need: where to call, the timeout and the batch limits.
    pub fn call_settings(&self) -> crate::backend::CallSettings {
        crate::backend::CallSettings {
            aws: self.aws(),
            timeout: self.timeout(),
            max_batch: self.max_batch_size(),
            max_batch_bytes: self.max_batch_bytes,
        }
    }

    /// Rows per call: the pipeline's `max_batch_size`, else the backend's most.
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
            .unwrap_or_else(|| self.backend().map_or(1, |b| b.max_batch()))
    }

    /// Per call: the pipeline's `timeout_ms`, else the backend's default.
    pub fn timeout(&self) -> std::time::Duration {
        match (self.timeout_ms, self.backend()) {
            (Some(ms), _) => std::time::Duration::from_millis(ms),
            (None, Some(b)) => b.default_timeout(),
            (None, None) => std::time::Duration::from_millis(30_000),
        }
    }

    /// The columns the enrichment reads, each with the setting that names it: a change to
    /// none of them makes no call.
    /// The input columns whose emptiness means "no text" (the row asks for no call): a
    /// document's text, a prompt's columns; none for SageMaker rows (always sent).
    pub fn text_columns(&self) -> Vec<String> {
        self.input_columns()
            .into_iter()
            .filter(|(what, _)| {
                what.ends_with(".text") || what.ends_with(".prompt") || what.ends_with(".row")
            })
            .map(|(_, c)| c)
            .collect()
    }

    pub fn input_columns(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(w) = &self.window {
            // The prompt names the window's placeholders; the rows' columns are the row's.
            if let Ok(t) = w.row_template() {
                for c in t.columns() {
                    out.push(("enrichment.window.row".into(), c.to_string()));
                }
            }
            if let Some(g) = &w.group {
                out.push(("enrichment.window.group".into(), g.clone()));
            }
            return out;
        }
        match self.backend() {
            Some(BackendConfig::Comprehend(c)) => {
                out.push(("enrichment.comprehend.text".into(), c.text.clone()));
                if let Some(l) = &c.language_column {
                    out.push(("enrichment.comprehend.language_column".into(), l.clone()));
                }
            }
            Some(BackendConfig::SageMaker(s)) => {
                for c in &s.input {
                    out.push(("enrichment.sagemaker.input".into(), c.clone()));
                }
            }
            Some(BackendConfig::Bedrock(b)) => {
                if let Ok(t) = crate::backend::template::Template::parse(&b.prompt) {
                    for c in t.columns() {
                        out.push(("enrichment.bedrock.prompt".into(), c.to_string()));
                    }
                }
            }
            Some(BackendConfig::Embedding(e)) => {
                if let Ok(t) = crate::backend::template::Template::parse(&e.text) {
                    for c in t.columns() {
                        out.push(("enrichment.embedding.text".into(), c.to_string()));
                    }
                }
            }
            None => {}
        }
        out
    }
}

fn default_max_wait() -> u64 {
    100
}
fn default_rps() -> f64 {
    10.0
}
fn default_cache() -> usize {
    10_000
}
fn default_concurrency() -> usize {
    1
}
fn default_parse_attempts() -> u32 {
    3
}
fn default_max_retry_after() -> u64 {
    300
}
fn default_window() -> u64 {
    86_400
}

/// A pipeline's `sink:` — exactly one of `kafka`, `jsonl` or `mysql`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A Kafka topic (templated), with tombstones, a dead-letter topic and what to do with
    /// records over the producer's `message.max.bytes`.
    Kafka(KafkaSinkConfig),
    /// JSON lines, for debugging: `path: "-"` is standard output.
    Jsonl(JsonlSinkConfig),
    /// The enrichment written back into the database: the source row, or a side table.
    Mysql(MysqlSinkConfig),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// `update`: set the output columns on the source row, found by the pipeline's key;
    /// `upsert`: `INSERT … ON DUPLICATE KEY UPDATE` into `table`, keyed by the source key.
    pub mode: WriteMode,
    /// With `upsert`: the side table, `database.table`.
    #[serde(default)]
    pub table: Option<String>,
    /// With `upsert`: the side table's columns holding the source key, in the order of the
    /// pipeline's key (default: the same names).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Output column → a JSON pointer into the record's `enrichment` (`/sentiment`, `/result`).
    pub columns: std::collections::BTreeMap<String, String>,
    /// The writer's own account (host, port and TLS are the source's).
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Rows per transaction. Default 100.
    #[serde(default = "default_write_batch")]
    pub batch_size: usize,
    /// How long a transaction waits to fill. Default 50 ms.
    #[serde(default = "default_write_wait")]
    pub max_wait_ms: u64,
    /// Text longer than a character column: `truncate` (default) or `dead_letter`.
    #[serde(default)]
    pub on_too_long: OnTooLong,
    /// Rows the database rejects, and rows whose enrichment failed, with the reason.
    /// Default `<database>.cdc_enricher_dead_letters` (of the written table).
    #[serde(default)]
    pub dead_letter_table: Option<String>,
    /// The position each write-back pipeline has applied, written in the same transaction as
    /// the results. Default `<database>.cdc_enricher_writeback`.
    #[serde(default)]
    pub progress_table: Option<String>,
    /// With `upsert`: when a row's input becomes NULL or empty, `delete` (default) its side
    /// row, or set its output columns to `null`.
    #[serde(default)]
    pub on_input_gone: OnInputGone,
    /// How a vector (an embedding) is stored: `json` (default: a JSON array, into a JSON or
    /// utf8mb4 text column), `float32` (little-endian IEEE 754 single floats, 4 bytes a number,
    /// into a BLOB or VARBINARY column) or `vector` (the server's binary form of `VECTOR(n)`,
    /// MariaDB 11.7+ / MySQL 9: the same 4-byte little-endian floats). `check` verifies the
    /// column's type, and its size against the vector's dimension.
    #[serde(default)]
    pub vector_format: VectorFormat,
}

/// How the write-back stores a vector; see [`MysqlSinkConfig::vector_format`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VectorFormat {
    /// A JSON array of numbers.
    #[default]
    Json,
    /// Little-endian float32, 4 bytes a number (BLOB, VARBINARY, BINARY).
    Float32,
    /// `VECTOR(n)`, bound in the server's binary form (little-endian float32).
    Vector,
}

/// What the side row of a row whose input is gone becomes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnInputGone {
    #[default]
    Delete,
    Null,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    Update,
    Upsert,
}

fn default_write_batch() -> usize {
    100
}
fn default_write_wait() -> u64 {
    50
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Topic name; `{pipeline}`, `{db}` and `{table}` are replaced.
    pub topic: String,
    /// After a delete, also send a record with the same key and a null value (for compaction).
    #[serde(default)]
    pub tombstones: bool,
    /// Where rows whose enrichment failed for good go (with the error and the attempts),
    /// instead of `topic`; same variables. Without it they go to `topic` with the error.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// A record larger than the producer accepts (`message.max.bytes`, 1,000,000 bytes by
    /// default): `dead_letter` (a notice with its key, position, size and why), `fail` (the
    /// pipeline stops) or `truncate` (the largest values cut, the record says which).
    #[serde(default)]
    pub on_oversize: OnOversize,
}

/// What the Kafka sink does with a record larger than the producer accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// A notice (key, position, size, limits) to the dead-letter topic, or to the pipeline's
    /// topic without one; a warning and a counter; the pipeline goes on.
    #[default]
    DeadLetter,
    /// The pipeline stops, naming the record and the two settings to raise.
    Fail,
    /// The largest values are cut (texts shortened, documents emptied) until the record fits;
    /// `oversize` in the record names them.
    Truncate,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    pub path: String,
}

impl PipelineConfig {
    /// `table` as `(database, table)` (two empty strings if it is not `db.table`, which
    /// loading refuses).
    pub fn db_table(&self) -> (String, String) {
        split_table(&self.table).unwrap_or_default()
    }

    /// Whether `operations` lets records of `op` through (a backfill's `r` counts as an
    /// insert, a truncate as a delete).
    pub fn wants(&self, op: crate::model::Op) -> bool {
        use crate::model::Op;
        let o = match op {
            Op::Insert | Op::Read => Operation::Insert,
            Op::Update => Operation::Update,
            Op::Delete => Operation::Delete,
            // A truncate deletes every row: it goes where deletes go.
            Op::Truncate => Operation::Delete,
            // Made by the enrichment stage, never routed.
            Op::Window => return true,
        };
        self.operations.contains(&o)
    }

    /// The topic for this pipeline, with its variables replaced.
    pub fn topic(&self) -> Option<String> {
        match &self.sink {
            SinkConfig::Kafka(k) => Some(self.expand(&k.topic)),
            SinkConfig::Jsonl(_) | SinkConfig::Mysql(_) => None,
        }
    }

    /// The dead-letter topic, with its variables replaced.
    pub fn dead_letter_topic(&self) -> Option<String> {
        match &self.sink {
            SinkConfig::Kafka(k) => k.dead_letter_topic.as_deref().map(|t| self.expand(t)),
            SinkConfig::Jsonl(_) | SinkConfig::Mysql(_) => None,
        }
    }

    fn expand(&self, template: &str) -> String {
        let (db, table) = self.db_table();
        template
            .replace("{pipeline}", &self.name)
            .replace("{db}", &db)
            .replace("{table}", &table)
    }
}

pub fn split_table(s: &str) -> Option<(String, String)> {
    let (db, t) = s.split_once('.')?;
    if db.is_empty() || t.is_empty() || t.contains('.') {
        return None;
    }
    Some((db.to_string(), t.to_string()))
}

/// Loads every pipeline file of `dir`, sorted by file name, and checks what can be checked
/// without a server.
pub fn load_dir(dir: &Path, have_kafka: bool) -> Result<Vec<PipelineConfig>, ConfigError> {
    let dir_s = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        file: dir_s.clone(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::File {
            file: dir_s,
            message: "no pipeline files (*.yaml) in this folder".into(),
        });
    }
    let mut out: Vec<PipelineConfig> = Vec::new();
    for f in files {
        let mut p: PipelineConfig = parse_yaml(&f)?;
        p.file = f.display().to_string();
        let bad = |message: String| ConfigError::Pipeline {
            pipeline: p.name.clone(),
            file: p.file.clone(),
            message,
        };
        if let Some(other) = out.iter().find(|o| o.name == p.name) {
            return Err(bad(format!("the name is also used by {}", other.file)));
        }
        if let Err(message) = validate(&mut p, have_kafka) {
            return Err(ConfigError::Pipeline {
                pipeline: p.name.clone(),
                file: p.file.clone(),
                message,
            });
        }
        // A side row follows its pipeline's source row (deleted when it is, or leaves the
        // filter): a side table shared by two pipelines would lose the other's results.
        if let Some(side) = side_table(&p) {
            if let Some(other) = out.iter().find(|o| side_table(o) == Some(side)) {
                return Err(ConfigError::Pipeline {
                    pipeline: p.name.clone(),
                    file: p.file.clone(),
                    message: format!(
                        "sink.mysql: the side table `{side}` is also written by pipeline `{}` ({}); \
                         each upsert pipeline needs a side table of its own",
                        other.name, other.file
                    ),
                });
            }
        }
        out.push(p);
    }
    refuse_write_back_loops(&out)?;
    Ok(out)
}

/// The columns a write-back pipeline writes, as `db.table.column` (column lower-cased: the
/// server compares column names without case).
fn written_columns(p: &PipelineConfig) -> Vec<String> {
    let SinkConfig::Mysql(m) = &p.sink else {
        return Vec::new();
    };
    let table = m.table.as_deref().unwrap_or(&p.table);
    m.columns
        .keys()
        .map(|c| format!("{table}.{}", c.to_lowercase()))
        .collect()
}

/// The columns a pipeline's enrichment reads, as [`written_columns`] names them.
fn input_columns(p: &PipelineConfig) -> Vec<String> {
    p.enrichment.as_ref().map_or_else(Vec::new, |e| {
        e.input_columns()
            .into_iter()
            .map(|(_, c)| format!("{}.{}", p.table, c.to_lowercase()))
            .collect()
    })
}

/// Write-backs that feed each other: a column one pipeline writes is an input of another's
/// enrichment, and so on back to the first — each answer would call the models again for
/// ever (and a write that clears its output when its input is gone would erase the other's
/// input). Refused, naming the loop. (One pipeline writing its own input is refused by its
/// own checks.)
fn refuse_write_back_loops(ps: &[PipelineConfig]) -> Result<(), ConfigError> {
    // feeds[i]: (j, column) where pipeline i writes a column pipeline j reads.
    let feeds: Vec<Vec<(usize, String)>> = ps
        .iter()
        .map(|a| {
            let written = written_columns(a);
            ps.iter()
                .enumerate()
                .filter(|(_, b)| b.name != a.name)
                .flat_map(|(j, b)| {
                    let read = input_columns(b);
                    written
                        .iter()
                        .filter(move |c| read.contains(c))
                        .map(move |c| (j, c.clone()))
                })
                .collect()
        })
        .collect();
    for start in 0..ps.len() {
        if let Some(path) = loop_from(start, &feeds) {
            let steps: Vec<String> = path
                .iter()
                .map(|(i, j, c)| {
                    format!(
                        "`{}` writes {c}, an input of `{}`",
                        ps[*i].name, ps[*j].name
                    )
                })
                .collect();
            return Err(ConfigError::Pipeline {
                pipeline: ps[start].name.clone(),
                file: ps[start].file.clone(),
                message: format!(
                    "sink.mysql: the write-backs form a loop ({}): each answer would call the \
                     models again for ever. Write to columns no pipeline in the loop reads",
                    steps.join("; ")
                ),
            });
        }
    }
    Ok(())
}

/// A path of `feeds` edges `(from, to, column)` from `start` back to it, if there is one.
fn loop_from(start: usize, feeds: &[Vec<(usize, String)>]) -> Option<Vec<(usize, usize, String)>> {
    let mut seen = vec![false; feeds.len()];
    // Depth-first, each stack entry the path taken to reach its pipeline.
    let mut stack = vec![(start, Vec::new())];
    while let Some((at, path)) = stack.pop() {
        for (next, column) in &feeds[at] {
            let mut p: Vec<(usize, usize, String)> = path.clone();
            p.push((at, *next, column.clone()));
            if *next == start {
                return Some(p);
            }
            if !seen[*next] {
                seen[*next] = true;
                stack.push((*next, p));
            }
        }
    }
    None
}

/// The side table an upsert write-back writes, as configured.
fn side_table(p: &PipelineConfig) -> Option<&str> {
    match &p.sink {
        SinkConfig::Mysql(m) if m.mode == WriteMode::Upsert => m.table.as_deref(),
        _ => None,
    }
}

/// What can be checked of one pipeline without a server (its filter is parsed here).
fn validate(p: &mut PipelineConfig, have_kafka: bool) -> Result<(), String> {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if p.name.is_empty() || !p.name.chars().all(name_ok) {
        return Err("name must be non-empty and use only letters, digits, `-`, `_` and `.`".into());
    }
    if split_table(&p.table).is_none() {
        return Err(format!(
            "table `{}` must be written `database.table`",
            p.table
        ));
    }
    for (what, list) in [("columns", &p.columns), ("key", &p.key)] {
        let Some(list) = list else {
            continue;
        };
        if list.is_empty() {
            return Err(format!("`{what}` is empty; leave it out for the default"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = list.iter().find(|c| !seen.insert(*c)) {
            return Err(format!("column `{c}` appears twice in `{what}`"));
        }
    }
    if p.operations.is_empty() {
        return Err("`operations` is empty: the pipeline would emit nothing".into());
    }
    if let Some(f) = &p.filter {
        p.filter_expr = Some(Expr::parse(f).map_err(|e| format!("filter `{f}`: {e}"))?);
    }
    if p.on_filter_exit.is_some() && p.filter.is_none() {
        return Err("`on_filter_exit` says what a row leaving the `filter` emits: give a `filter`, or leave it out".into());
    }
    if let Some(e) = &mut p.enrichment {
        // `endpoint_url: ${AWS_ENDPOINT_URL:-}` left empty means AWS's own endpoint.
        for v in [
            &mut e.endpoint_url,
            &mut e.region,
            &mut e.profile,
            &mut e.role_arn,
        ] {
            if v.as_deref().is_some_and(|u| u.trim().is_empty()) {
                *v = None;
            }
        }
    }
    if let Some(e) = &p.enrichment {
        validate_enrichment(e, p.columns.as_deref())?;
    }
    let windowed = p.enrichment.as_ref().is_some_and(|e| e.window.is_some());
    match &p.sink {
        SinkConfig::Mysql(m) if windowed => validate_window_sink(m),
        SinkConfig::Mysql(m) => validate_mysql_sink(m, p),
        SinkConfig::Kafka(_) if !have_kafka => {
            Err("the sink is Kafka but the daemon config has no `kafka` section".into())
        }
        SinkConfig::Kafka(k) => validate_topics(p, k),
        SinkConfig::Jsonl(_) => Ok(()),
    }
}

/// The topics (and dead-letter topic) a pipeline's templates give are valid Kafka names.
fn validate_topics(p: &PipelineConfig, k: &KafkaSinkConfig) -> Result<(), String> {
    let topics = [
        (&k.topic, p.topic()),
        (
            k.dead_letter_topic.as_ref().unwrap_or(&k.topic),
            p.dead_letter_topic(),
        ),
    ];
    for (template, t) in topics {
        let t = t.unwrap_or_default();
        if template.is_empty() || t.contains('{') || t.contains('}') {
            return Err(format!(
                "topic `{template}`: only {{pipeline}}, {{db}} and {{table}} can be replaced"
            ));
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if t.len() > 249 || !t.chars().all(valid) {
            return Err(format!("topic `{t}` is not a valid Kafka topic name"));
        }
    }
    Ok(())
}

/// What can be checked of an enrichment without a server.
fn validate_enrichment(e: &EnrichmentConfig, picked: Option<&[String]>) -> Result<(), String> {
    let Some(backend) = e.backend() else {
        return Err(
            "enrichment needs exactly one backend: `comprehend`, `sagemaker`, `bedrock` or \
             `embedding`"
                .into(),
        );
    };
    let (name, limit) = (backend.name(), backend.max_batch());
    let batch = e.max_batch_size();
    if !(1..=limit).contains(&batch) {
        return Err(format!(
            "enrichment.max_batch_size {batch} must be between 1 and {limit} for {name}"
        ));
    }
    if e.tokens_per_minute.is_some()
        && !matches!(
            backend,
            BackendConfig::Bedrock(_) | BackendConfig::Embedding(_)
        )
    {
        return Err(
            "enrichment.tokens_per_minute is for bedrock and embedding (only models count tokens)"
                .into(),
        );
    }
    validate_limits(e)?;
    backend.validate()?;
    if let Some(w) = &e.window {
        let (prompt, what) = match backend {
            BackendConfig::Bedrock(b) => (&b.prompt, "enrichment.bedrock.prompt"),
            BackendConfig::Embedding(m) => (&m.text, "enrichment.embedding.text"),
            _ => {
                return Err(format!(
                "enrichment.window is for bedrock and embedding (a prompt over rows), not {name}"
            ))
            }
        };
        let t = crate::backend::template::Template::parse(prompt)
            .map_err(|m| format!("{what}: {m}"))?;
        w.validate(&t, what)?;
    }
    if let Some(cols) = picked {
        for (what, c) in e.input_columns() {
            if !cols.contains(&c) {
                return Err(format!(
                    "{what} `{c}` must be one of the picked columns ({})",
                    cols.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The enrichment's rates, sizes, timeouts and budget are in range.
fn validate_limits(e: &EnrichmentConfig) -> Result<(), String> {
    if let Some(b) = e.max_batch_bytes {
        let max = crate::backend::sagemaker::MAX_BODY_BYTES;
        if b == 0 || b > max {
            return Err(format!(
                "enrichment.max_batch_bytes {b} must be between 1 and {max} (SageMaker's body limit)"
            ));
        }
    }
    if !(e.requests_per_second > 0.0 && e.requests_per_second.is_finite()) {
        return Err("enrichment.requests_per_second must be above 0".into());
    }
    if e.timeout_ms == Some(0) {
        return Err("enrichment.timeout_ms must be above 0".into());
    }
    if e.concurrency == 0 || e.concurrency > 256 {
        return Err("enrichment.concurrency must be between 1 and 256".into());
    }
    if !(1..=86_400).contains(&e.max_retry_after_s) {
        return Err("enrichment.max_retry_after_s must be 1 to 86400 (seconds)".into());
    }
    if e.parse_attempts == 0 {
        return Err("enrichment.parse_attempts must be at least 1".into());
    }
    if e.tokens_per_minute == Some(0) {
        return Err("enrichment.tokens_per_minute must be above 0".into());
    }
    if let Some(b) = &e.budget {
        if b.requests.is_none() && b.tokens.is_none() {
            return Err(
                "enrichment.budget names neither `requests` nor `tokens`; leave it out for no budget"
                    .into(),
            );
        }
        if b.window_seconds == 0 {
            return Err("enrichment.budget.window_seconds must be above 0".into());
        }
        for (name, w) in [
            ("cache_read_weight", b.cache_read_weight),
            ("cache_write_weight", b.cache_write_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "enrichment.budget.{name} {w} must be a number of 0 or more"
                ));
            }
        }
    }
    if let Some(p) = &e.prices {
        let all = [
            ("per_call", p.per_call),
            ("per_row", p.per_row),
            ("per_1k_input_tokens", p.per_1k_input_tokens),
            ("per_1k_output_tokens", p.per_1k_output_tokens),
        ];
        if let Some((name, v)) = all.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!(
                "enrichment.prices.{name} {v} must be a number of 0 or more"
            ));
        }
    }
    Ok(())
}

/// A windowed pipeline's write-back: upserted into a side table keyed by the window's id.
fn validate_window_sink(m: &MysqlSinkConfig) -> Result<(), String> {
    if m.mode != WriteMode::Upsert || m.table.is_none() {
        return Err(
            "sink.mysql of a windowed pipeline: `mode: upsert` with `table: database.table` \
             (a side table keyed by the window's id; there is no source row to update)"
                .into(),
        );
    }
    if m.key.as_ref().is_some_and(|k| k.len() != 1) {
        return Err(
            "sink.mysql.key of a windowed pipeline: one column, for the window's id".into(),
        );
    }
    if m.columns.is_empty() {
        return Err("sink.mysql.columns names no output column".into());
    }
    let id = m.window_key();
    for (col, ptr) in &m.columns {
        crate::backend::check_pointer(&format!("sink.mysql.columns.{col}"), ptr)?;
        if ptr.is_empty() || ptr == "/window" {
            return Err(format!(
                "sink.mysql.columns.{col}: name a field (`/result`, `/window/rows`), not a whole object"
            ));
        }
        if *col == id {
            return Err(format!(
                "sink.mysql.columns.{col}: `{col}` is the side table's key, which holds the window's id already"
            ));
        }
        let field = ptr
            .strip_prefix("/window/")
            .map(|f| f.split('/').next().unwrap_or(""));
        const FIELDS: [&str; 8] = [
            "id",
            "group",
            "rows",
            "first",
            "last",
            "first_ts_ms",
            "last_ts_ms",
            "keys",
        ];
        if let Some(f) = field.filter(|f| !FIELDS.contains(f)) {
            return Err(format!(
                "sink.mysql.columns.{col}: a window has no `{f}`; use one of /window/{}",
                FIELDS.join(", /window/")
            ));
        }
    }
    Ok(())
}

impl MysqlSinkConfig {
    /// The side table's column for the window's id (`key`, default `window_id`).
    pub fn window_key(&self) -> String {
        self.key
            .as_ref()
            .and_then(|k| k.first().cloned())
            .unwrap_or_else(|| "window_id".into())
    }
}

fn validate_mysql_sink(m: &MysqlSinkConfig, p: &PipelineConfig) -> Result<(), String> {
    let Some(e) = &p.enrichment else {
        return Err("sink.mysql writes an enrichment back: the pipeline needs `enrichment`".into());
    };
    if m.columns.is_empty() {
        return Err("sink.mysql.columns names no output column".into());
    }
    let inputs = e.input_columns();
    for (col, ptr) in &m.columns {
        crate::backend::check_pointer(&format!("sink.mysql.columns.{col}"), ptr)?;
        if ptr.is_empty() {
            return Err(format!(
                "sink.mysql.columns.{col}: name a field of the enrichment (`/result`, `/sentiment`), not all of it"
            ));
        }
        if m.mode == WriteMode::Update {
            if let Some((what, _)) = inputs.iter().find(|(_, c)| c == col) {
                return Err(format!(
                    "sink.mysql.columns.{col}: `{col}` is an input of the enrichment ({what}); writing it would trigger the enrichment again"
                ));
            }
        }
    }
    match (m.mode, &m.table) {
        (WriteMode::Upsert, None) => {
            return Err(
                "sink.mysql: `mode: upsert` needs `table: database.table` (the side table)".into(),
            )
        }
        (WriteMode::Update, Some(_)) => {
            return Err(
                "sink.mysql: `table` is for `mode: upsert`; `update` writes the source row".into(),
            )
        }
        _ => {}
    }
    if m.mode == WriteMode::Upsert && p.key_changes == KeyChanges::Update {
        return Err(
            "sink.mysql: `mode: upsert` with `key_changes: update` would keep the old key's side \
             row (one `u` carries only the new key): use `key_changes: split` (the default), \
             whose delete of the old key removes it"
                .into(),
        );
    }
    if m.mode == WriteMode::Update && m.key.is_some() {
        return Err(
            "sink.mysql: `key` is for `mode: upsert`; `update` finds the row by the pipeline's key"
                .into(),
        );
    }
    for (what, t) in [
        ("table", &m.table),
        ("dead_letter_table", &m.dead_letter_table),
        ("progress_table", &m.progress_table),
    ] {
        if let Some(t) = t {
            if split_table(t).is_none() {
                return Err(format!(
                    "sink.mysql.{what} `{t}` must be written `database.table`"
                ));
            }
        }
    }
    if let (Some(k), Some(pk)) = (&m.key, &p.key) {
        if k.len() != pk.len() {
            return Err(format!(
                "sink.mysql.key names {} columns, the pipeline's key {}",
                k.len(),
                pk.len()
            ));
        }
    }
    if !(1..=10_000).contains(&m.batch_size) {
        return Err("sink.mysql.batch_size must be between 1 and 10000".into());
    }
    Ok(())
}
