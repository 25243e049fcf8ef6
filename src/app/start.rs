//! Where the stream starts: after the saved checkpoint, or — with none, or after a purge
//! (`on_purged: resnapshot`) — at the binlog's current end or its earliest file, as
//! `source.start` says. The checkpoint also carries the schema history and the prepared XA
//! transactions still open at its position.

use std::sync::{Arc, Mutex};

use super::AppError;
use crate::checkpoint::Checkpoint;
use crate::config::{Config, StartFrom};
use crate::model::BinlogPosition;
use crate::source::mysql::schema_history::SchemaHistory;
use crate::source::mysql::stream::{self, Start};

/// What the daemon resumes from.
pub struct Resume {
    /// The stream's start (and what the source must know of it).
    pub start: Start,
    /// The checkpoint's position (`None`: nothing saved, or it was purged).
    pub checkpoint: Option<BinlogPosition>,
    /// The schema history at the checkpoint, shared by the decoder and the checkpoint writer.
    pub history: Arc<Mutex<SchemaHistory>>,
}

/// Resolves the start from `saved` (ignored when `purged` says why it is gone).
pub async fn resolve(
    cfg: &Config,
    saved: Option<&Checkpoint>,
    purged: Option<&str>,
) -> Result<Resume, AppError> {
    if let Some(why) = purged {
        tracing::warn!(reason = %why, "the saved checkpoint is no longer on the server; on_purged: resnapshot — \
            starting at the current end and backfilling every pipeline");
    }
    let resume = saved.filter(|_| purged.is_none());
    let history = Arc::new(Mutex::new(
        resume.map(|c| c.schema_history.clone()).unwrap_or_default(),
    ));
    let position = match resume {
        Some(c) => c.position.clone(),
        None => first_position(cfg, purged.map_or(cfg.source.start, |_| StartFrom::Latest)).await?,
    };
    let legacy_rows = resume.map_or(0, |c| c.legacy_rows);
    if legacy_rows > 0 {
        tracing::info!(position = %position, rows = legacy_rows,
            "the checkpoint is of format 1 and points inside a transaction: its rows are counted \
             across every table once to convert it");
    }
    Ok(Resume {
        start: Start {
            position,
            legacy_rows,
            open_xa: resume.map(|c| c.open_xa.clone()).unwrap_or_default(),
        },
        checkpoint: resume.map(|c| c.position.clone()),
        history,
    })
}

/// The server's current end of the binlog, or the start of its earliest file.
async fn first_position(cfg: &Config, from: StartFrom) -> Result<BinlogPosition, AppError> {
    let mut conn = stream::connect(&cfg.source).await?;
    let p = match from {
        StartFrom::Latest => stream::current_position(&mut conn).await?,
        StartFrom::Earliest => {
            let logs = stream::binary_logs(&mut conn).await?;
            BinlogPosition::new(logs.first().map(|l| l.0.clone()).unwrap_or_default(), 4)
        }
    };
    let _ = conn.disconnect().await;
    Ok(p)
}
