//! Why the daemon stopped, and its exit code.

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::pipeline::RouteError;
use crate::sink::SinkError;
use crate::source::mysql::stream::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("preflight check failed ({0} problems, listed above)")]
    Preflight(usize),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "stopped after the shutdown timeout ({ms} ms) with {in_flight} rows not delivered; \
             the checkpoint stays before them and they are sent again after a restart"
    )]
    ShutdownTimeout { ms: u64, in_flight: usize },
    #[error("enrichment stage of pipeline `{pipeline}` stopped: {reason}")]
    Enrichment { pipeline: String, reason: String },
    #[error(transparent)]
    Snapshot(#[from] crate::source::mysql::snapshot::SnapshotError),
    #[error("reload: {0}")]
    Reload(String),
    #[error("cannot serve metrics on {address}: {source}; change `metrics.address`")]
    Metrics {
        address: String,
        source: std::io::Error,
    },
}

impl AppError {
    /// 2 for problems found before anything ran (config, preflight), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Preflight(_) | AppError::Metrics { .. } => 2,
            _ => 1,
        }
    }
}
