//! One pipeline per YAML file: which rows of which table go where.

use std::path::Path;

use serde::Deserialize;

use super::{parse_yaml, ConfigError};
use crate::pipeline::filter::Expr;

#[derive(Debug, Clone, Deserialize)]
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
    /// Enrichment: `none` (default) or `comprehend: {operation: sentiment, text: column, …}`.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub enrichment: Enrichment,
    /// Where records go: `kafka: {topic: …}` or `jsonl: {path: …}`.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub sink: SinkConfig,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub filter_expr: Option<Expr>,
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

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Enrichment {
    /// Records go to the sink as they are, with an empty `enrichment` object.
    #[default]
    None,
    /// Amazon Comprehend.
    Comprehend(ComprehendConfig),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComprehendConfig {
    /// `sentiment`, `entities`, `key_phrases`, `dominant_language` or `pii_entities`.
    pub operation: ComprehendOperation,
    /// The column holding the text (it must be among the picked `columns`).
    pub text: String,
    /// The language code of every row (default `en`).
    #[serde(default = "default_language")]
    pub language: String,
    /// A column holding each row's language code (it must be among the picked `columns`);
    /// rows where it is NULL or empty use `language`.
    #[serde(default)]
    pub language_column: Option<String>,
    /// AWS region; default from the environment / profile chain.
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (a VPC endpoint, or a local stand-in).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Documents per call, at most 25 (the service's limit). Default 25.
    #[serde(default = "default_comprehend_batch")]
    pub max_batch_size: usize,
    /// How long a batch waits to fill. Default 100 ms.
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
    /// Per-call timeout (as Aurora's `aurora_ml_inference_timeout`). Default 30,000 ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Calls per second allowed (the account's quota for the operation); shared by every
    /// pipeline calling the same operation in the same region and endpoint. Default 10.
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// Answers kept for identical inputs (a hit makes no call); 0 turns the cache off.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ComprehendOperation {
    /// BatchDetectSentiment: the label, its confidence and the four scores.
    Sentiment,
    /// BatchDetectEntities: text, type, score and offsets of each entity.
    Entities,
    /// BatchDetectKeyPhrases: text, score and offsets of each phrase.
    KeyPhrases,
    /// BatchDetectDominantLanguage: the most likely language, its confidence, all candidates.
    DominantLanguage,
    /// DetectPiiEntities (no batch form: one document per call): type, score and offsets.
    PiiEntities,
}

fn default_language() -> String {
    "en".into()
}
fn default_comprehend_batch() -> usize {
    25
}
fn default_max_wait() -> u64 {
    100
}
fn default_timeout() -> u64 {
    30_000
}
fn default_rps() -> f64 {
    10.0
}
fn default_cache() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Kafka(KafkaSinkConfig),
    /// JSON lines, for debugging: `path: "-"` is standard output.
    Jsonl(JsonlSinkConfig),
}

#[derive(Debug, Clone, Deserialize)]
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    pub path: String,
}

impl PipelineConfig {
    pub fn db_table(&self) -> (String, String) {
        split_table(&self.table).unwrap_or_default()
    }

    pub fn wants(&self, op: crate::source::Op) -> bool {
        use crate::source::Op;
        let o = match op {
            Op::Insert | Op::Read => Operation::Insert,
            Op::Update => Operation::Update,
            Op::Delete => Operation::Delete,
        };
        self.operations.contains(&o)
    }

    /// The topic for this pipeline, with its variables replaced.
    pub fn topic(&self) -> Option<String> {
        match &self.sink {
            SinkConfig::Kafka(k) => Some(self.expand(&k.topic)),
            SinkConfig::Jsonl(_) => None,
        }
    }

    /// The dead-letter topic, with its variables replaced.
    pub fn dead_letter_topic(&self) -> Option<String> {
        match &self.sink {
            SinkConfig::Kafka(k) => k.dead_letter_topic.as_deref().map(|t| self.expand(t)),
            SinkConfig::Jsonl(_) => None,
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
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "name must be non-empty and use only letters, digits, `-`, `_` and `.`".into(),
            ));
        }
        if let Some(other) = out.iter().find(|o| o.name == p.name) {
            return Err(bad(format!("the name is also used by {}", other.file)));
        }
        if split_table(&p.table).is_none() {
            return Err(bad(format!(
                "table `{}` must be written `database.table`",
                p.table
            )));
        }
        for (what, list) in [("columns", &p.columns), ("key", &p.key)] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(bad(format!(
                        "`{what}` is empty; leave it out for the default"
                    )));
                }
                let mut seen = std::collections::HashSet::new();
                for c in list {
                    if !seen.insert(c) {
                        return Err(bad(format!("column `{c}` appears twice in `{what}`")));
                    }
                }
            }
        }
        if p.operations.is_empty() {
            return Err(bad(
                "`operations` is empty: the pipeline would emit nothing".into(),
            ));
        }
        if let Some(f) = &p.filter {
            let e = Expr::parse(f).map_err(|e| bad(format!("filter `{f}`: {e}")))?;
            p.filter_expr = Some(e);
        }
        if let Enrichment::Comprehend(c) = &mut p.enrichment {
            // `endpoint_url: ${AWS_ENDPOINT_URL:-}` left empty means AWS's own endpoint.
            if c.endpoint_url
                .as_deref()
                .is_some_and(|u| u.trim().is_empty())
            {
                c.endpoint_url = None;
            }
        }
        if let Enrichment::Comprehend(c) = &p.enrichment {
            if let (Some(cols), Some(lc)) = (&p.columns, &c.language_column) {
                if !cols.contains(lc) {
                    return Err(bad(format!(
                        "enrichment.comprehend.language_column `{lc}` must be one of the picked columns ({})",
                        cols.join(", ")
                    )));
                }
            }
            if let Some(cols) = &p.columns {
                if !cols.contains(&c.text) {
                    return Err(bad(format!(
                        "enrichment.comprehend.text `{}` must be one of the picked columns ({})",
                        c.text,
                        cols.join(", ")
                    )));
                }
            }
            if !(1..=crate::backend::comprehend::MAX_BATCH).contains(&c.max_batch_size) {
                return Err(bad(format!(
                    "enrichment.comprehend.max_batch_size {} must be between 1 and 25 (the service's limit)",
                    c.max_batch_size
                )));
            }
            if !(c.requests_per_second > 0.0 && c.requests_per_second.is_finite()) {
                return Err(bad(
                    "enrichment.comprehend.requests_per_second must be above 0".into(),
                ));
            }
            if c.timeout_ms == 0 {
                return Err(bad(
                    "enrichment.comprehend.timeout_ms must be above 0".into()
                ));
            }
        }
        if let SinkConfig::Kafka(k) = &p.sink {
            if !have_kafka {
                return Err(bad(
                    "the sink is Kafka but the daemon config has no `kafka` section".into(),
                ));
            }
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
                    return Err(bad(format!(
                        "topic `{template}`: only {{pipeline}}, {{db}} and {{table}} can be replaced"
                    )));
                }
                if t.len() > 249
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    return Err(bad(format!("topic `{t}` is not a valid Kafka topic name")));
                }
            }
        }
        out.push(p);
    }
    Ok(out)
}
