//! Typed configuration: the daemon file (`cdc-enricher.yaml`) and one pipeline per file in
//! `pipelines/`. Unknown keys are rejected; every error names the file, line and column.

mod env;
pub mod pipeline;
pub mod window;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use pipeline::{PipelineConfig, SinkConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("pipeline `{pipeline}` ({file}): {message}")]
    Pipeline {
        pipeline: String,
        file: String,
        message: String,
    },
}

/// The daemon config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The MySQL / MariaDB server to replicate from.
    pub source: SourceConfig,
    /// Kafka producer settings (required when a pipeline has a Kafka sink).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Where acknowledged positions are stored.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Prometheus `/metrics` and `/health/live`, `/health/ready` (off when absent).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// How long a stop may wait for records in flight (enrichment retries included) before the
    /// daemon exits anyway, leaving them to be sent again after a restart. Default: 30,000 ms.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_ms: u64,
    /// The folder of pipeline files, relative to this file. Default: `pipelines`.
    #[serde(default = "default_pipelines_dir")]
    pub pipelines_dir: PathBuf,
    /// Backfills (snapshots of existing rows), interleaved with the stream by watermarks.
    #[serde(default)]
    pub snapshot: Option<SnapshotConfig>,
    /// The change topics and the workers' consumer group of `run --role source|worker`.
    #[serde(default)]
    pub scale_out: ScaleOutConfig,
    /// Set by the loader: the file this config came from.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `scale_out:` — how the source role (`run --role source`) and the workers (`run --role
/// worker`) meet: a change topic per table, consumed by one Kafka consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutConfig {
    /// The change topic of each table the pipelines read; `{db}` and `{table}` are replaced.
    /// Default: `cdc-changes.{db}.{table}`.
    #[serde(default = "default_change_topic")]
    pub change_topic: String,
    /// The workers' Kafka consumer group (`group.id`). Default: `cdc-enricher-workers`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
}

impl Default for ScaleOutConfig {
    fn default() -> Self {
        ScaleOutConfig {
            change_topic: default_change_topic(),
            group_id: default_group_id(),
        }
    }
}

impl ScaleOutConfig {
    /// The change topic of `db`.`table`.
    pub fn topic(&self, db: &str, table: &str) -> String {
        self.change_topic
            .replace("{db}", db)
            .replace("{table}", table)
    }
}

fn default_change_topic() -> String {
    "cdc-changes.{db}.{table}".into()
}

fn default_group_id() -> String {
    "cdc-enricher-workers".into()
}

fn default_shutdown_timeout() -> u64 {
    30_000
}

fn default_pipelines_dir() -> PathBuf {
    PathBuf::from("pipelines")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// A table on the source server (`database.table`, created if missing) holding the
    /// watermarks, the backfill requests and each backfill's progress. The source account
    /// needs CREATE, SELECT, INSERT, UPDATE on it.
    pub signal_table: String,
    /// Rows per chunk (one SELECT in key order between two watermarks). Default 1,000.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
}

fn default_chunk_size() -> usize {
    1000
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnPurged {
    /// Stop with an error naming the missing binlog file and the ways out.
    #[default]
    Fail,
    /// Start at the current end of the binlog and backfill every pipeline.
    Resnapshot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on, e.g. `0.0.0.0:9108`.
    pub address: String,
    /// `/health/ready` fails while a pipeline lags more than this many seconds (and while the
    /// binlog stream is disconnected). Default: no lag threshold.
    #[serde(default)]
    pub ready_max_lag_seconds: Option<f64>,
}

/// `source:` — the MySQL or MariaDB server whose binlog is read, as a replica would read it
/// (the account needs REPLICATION SLAVE, REPLICATION CLIENT or BINLOG MONITOR, and SELECT on
/// the pipelines' tables; `cdc-enricher check` says which grant is missing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Host name or IP address of the server.
    pub host: String,
    /// TCP port. Default: 3306.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The replication account.
    pub user: String,
    /// The password, usually as `${ENV_VAR}`. Mutually exclusive with `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The replica server id this daemon registers with; unique among the server's replicas.
    pub server_id: u32,
    /// Heartbeat period asked of the server; a read waits at most twice this long.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Where to start when there is no checkpoint: `latest` (the current end) or `earliest`.
    #[serde(default)]
    pub start: StartFrom,
    /// When the checkpoint's binlog file is no longer on the server: `fail` (default) or
    /// `resnapshot` (start at the current end and backfill every pipeline).
    #[serde(default)]
    pub on_purged: OnPurged,
    /// TLS to the server (default: none).
    #[serde(default)]
    pub tls: TlsConfig,
    /// A transaction's events are held until its end is read (a group may end in ROLLBACK):
    /// up to this many MiB in memory, the rest in a spill file.
    #[serde(default = "default_transaction_buffer_mb")]
    pub transaction_buffer_mb: u64,
    /// Where spill files go (default: the system's temporary directory).
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
}

fn default_transaction_buffer_mb() -> u64 {
    32
}

fn default_port() -> u16 {
    3306
}
fn default_heartbeat_ms() -> u64 {
    5000
}

/// `source.start`: where the binlog is read from when there is no checkpoint.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The server's current end (`SHOW MASTER STATUS`): only changes made from now on.
    #[default]
    Latest,
    /// The oldest binlog file the server still has (`SHOW BINARY LOGS`).
    Earliest,
}

/// `source.tls`: TLS to the source server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `disabled` (default), `required`, `verify_ca` or `verify_identity`.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How TLS to the source server is used and checked.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disabled,
    /// Encrypt, accept any certificate.
    Required,
    /// Encrypt and check the certificate chain, not the host name.
    VerifyCa,
    /// Encrypt and check chain and host name.
    VerifyIdentity,
}

/// `kafka:` — the brokers the Kafka sinks produce to (one idempotent producer for all
/// pipelines).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`
    pub brokers: String,
    /// Any librdkafka producer property (`linger.ms`, `compression.type`, `security.protocol`…).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// Create missing topics at start-up. Default: true.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics it creates. Default: 1.
    #[serde(default = "default_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of topics it creates. Default: 1.
    #[serde(default = "default_partitions")]
    pub topic_replication: i32,
}

fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The store: a local file (default `./cdc-enricher.checkpoint.json`) or a MySQL table.
    #[serde(default, with = "serde_yaml_ng::with::singleton_map")]
    pub store: CheckpointStoreConfig,
    /// How often the acknowledged position is written. Default: 1000 ms.
    #[serde(default = "default_checkpoint_interval")]
    pub interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: CheckpointStoreConfig::default(),
            interval_ms: default_checkpoint_interval(),
        }
    }
}

fn default_checkpoint_interval() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointStoreConfig {
    /// `file: {path: …}`: JSON written with fsync and an atomic rename.
    File { path: PathBuf },
    /// `mysql: {table: db.table, name: …}`: a row in a table of the source server.
    Mysql {
        table: String,
        #[serde(default = "default_checkpoint_name")]
        name: String,
    },
}

fn default_checkpoint_name() -> String {
    "default".into()
}

impl Default for CheckpointStoreConfig {
    fn default() -> Self {
        CheckpointStoreConfig::File {
            path: PathBuf::from("cdc-enricher.checkpoint.json"),
        }
    }
}

/// Reads a YAML file, interpolates `${ENV}` and deserializes it, with errors that name the
/// file, line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse_yaml_str(&file, &text)
}

pub fn parse_yaml_str<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    let text = env::interpolate(text, |k| std::env::var(k).ok()).map_err(|e| ConfigError::At {
        file: file.to_string(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
        Some(loc) => ConfigError::At {
            file: file.to_string(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(&e.to_string()),
        },
        None => ConfigError::File {
            file: file.to_string(),
            message: e.to_string(),
        },
    })
}

/// serde_yaml_ng appends " at line L column C"; the location is already in front.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl Config {
    /// Reads the daemon's config file (YAML) and the pipeline files it names, with `${ENV}`
    /// and `${ENV:-default}` substituted, and validates them.
    ///
    /// Errors: a `ConfigError` naming the file, line and column (or the pipeline and key) and
    /// what to change; nothing is started on an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = parse_yaml(path)?;
        cfg.path = path.to_path_buf();
        let file = path.display().to_string();
        let bad = |message: String| ConfigError::File {
            file: file.clone(),
            message,
        };
        if cfg.source.password.is_some() && cfg.source.password_file.is_some() {
            return Err(bad(
                "source: set `password` or `password_file`, not both".into()
            ));
        }
        if let Some(pf) = cfg.source.password_file.take() {
            let pf = cfg.resolve(&pf);
            let p = std::fs::read_to_string(&pf)
                .map_err(|e| bad(format!("source.password_file {}: {e}", pf.display())))?;
            cfg.source.password = Some(p.trim_end_matches(['\n', '\r']).to_string());
        }
        if cfg.source.server_id == 0 {
            return Err(bad(
                "source.server_id must not be 0: pick a number no other replica of the server uses"
                    .into(),
            ));
        }
        if cfg.source.heartbeat_ms < 100 {
            return Err(bad("source.heartbeat_ms must be at least 100".into()));
        }
        if let Some(k) = &cfg.kafka {
            if k.brokers.trim().is_empty() {
                return Err(bad("kafka.brokers is empty".into()));
            }
            if k.topic_partitions < 1 || k.topic_replication < 1 {
                return Err(bad(
                    "kafka.topic_partitions and kafka.topic_replication must be at least 1".into(),
                ));
            }
        }
        if let Some(sn) = &cfg.snapshot {
            pipeline::split_table(&sn.signal_table).ok_or_else(|| {
                bad(format!(
                    "snapshot.signal_table `{}` must be `database.table`",
                    sn.signal_table
                ))
            })?;
            if !(1..=1_000_000).contains(&sn.chunk_size) {
                return Err(bad(
                    "snapshot.chunk_size must be between 1 and 1000000".into()
                ));
            }
        }
        if cfg.source.on_purged == OnPurged::Resnapshot && cfg.snapshot.is_none() {
            return Err(bad(
                "source.on_purged: resnapshot needs a `snapshot:` section (its signal_table)"
                    .into(),
            ));
        }
        if let CheckpointStoreConfig::Mysql { table, .. } = &cfg.checkpoint.store {
            pipeline::split_table(table).ok_or_else(|| {
                bad(format!(
                    "checkpoint.store.mysql.table `{table}` must be `database.table`"
                ))
            })?;
        }
        Ok(cfg)
    }

    /// A path from the config, relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// Loads and checks every `*.yaml` / `*.yml` of the pipelines folder.
    pub fn load_pipelines(&self) -> Result<Vec<PipelineConfig>, ConfigError> {
        let dir = self.resolve(&self.pipelines_dir);
        let pipelines = pipeline::load_dir(&dir, self.kafka.is_some())?;
        if self.snapshot.is_none() {
            if let Some(p) = pipelines
                .iter()
                .find(|p| p.snapshot == pipeline::SnapshotMode::Initial)
            {
                return Err(ConfigError::Pipeline {
                    pipeline: p.name.clone(),
                    file: p.file.clone(),
                    message: "`snapshot: initial` needs the daemon config's `snapshot:` section (its signal_table)".into(),
                });
            }
        }
        Ok(pipelines)
    }
}
