//! Why the daemon stopped, and its exit code.

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::pipeline::stage::StageError;
use crate::pipeline::RouteError;
use crate::sink::SinkError;
use crate::source::mysql::stream::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("preflight check failed ({}, listed above)", problems(*.0))]
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
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The worker role's consumer of the change topics.
    #[error(transparent)]
    ChangeTopic(Box<crate::source::kafka::ChangeTopicError>),
    #[error("reload: {0}")]
    Reload(String),
    #[error("cannot serve metrics on {address}: {source}; change `metrics.address`")]
    Metrics {
        address: String,
        source: std::io::Error,
    },
    /// A task of the daemon panicked: a bug of ours, never the data's or the config's.
    #[error(
        "internal error: the {task} task failed ({message}); the checkpoint stays before \
             what was not delivered — please report this with the log"
    )]
    Internal { task: &'static str, message: String },
}

/// Where an error comes from, for the operator: what to look at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The config file or a pipeline file: fix it and start again.
    Configuration,
    /// The source server or its binlog.
    Source,
    /// A sink (Kafka, the write-back database, a file) or the checkpoint store.
    Sink,
    /// An enrichment backend.
    Backend,
    /// A bug of the daemon's.
    Internal,
}

impl From<StageError> for AppError {
    fn from(e: StageError) -> AppError {
        match e {
            StageError::Route(e) => AppError::Route(e),
            StageError::Sink(e) => AppError::Sink(e),
            StageError::Enrichment { pipeline, reason } => {
                AppError::Enrichment { pipeline, reason }
            }
            StageError::EnrichmentEnded { pipeline } => AppError::Enrichment {
                pipeline,
                reason: "its task ended".into(),
            },
        }
    }
}

impl AppError {
    /// What the error concerns.
    pub fn domain(&self) -> Domain {
        match self {
            AppError::Config(_) | AppError::Preflight(_) | AppError::Metrics { .. } => {
                Domain::Configuration
            }
            AppError::Source(_)
            | AppError::Route(_)
            | AppError::Snapshot(_)
            | AppError::ChangeTopic(_) => Domain::Source,
            AppError::Sink(_) | AppError::Checkpoint(_) | AppError::ShutdownTimeout { .. } => {
                Domain::Sink
            }
            AppError::Enrichment { .. } => Domain::Backend,
            // The pipeline stage ended under a reload: its own error says why.
            AppError::Internal { .. } | AppError::Reload(_) => Domain::Internal,
        }
    }

    /// A task that ended without a result (it panicked or was cancelled).
    pub fn task(task: &'static str, e: tokio::task::JoinError) -> AppError {
        AppError::Internal {
            task,
            message: e.to_string(),
        }
    }

    /// 2 for a configuration problem (found before anything ran: config, preflight, the
    /// metrics address), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self.domain() {
            Domain::Configuration => 2,
            _ => 1,
        }
    }
}

/// `n` problems, in words ("1 problem", "3 problems").
fn problems(n: usize) -> String {
    match n {
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    }
}
