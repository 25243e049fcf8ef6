//! Checkpoints: which positions are safe to resume from (all records before them were
//! acknowledged by their sinks), and the stores that keep that position across restarts.

mod document;
mod file;
mod mysql;
mod tracker;
mod writer;

pub use document::Checkpoint;

pub use file::FileStore;
pub use mysql::MysqlStore;
pub use tracker::{AckTracker, DeliveredWindows, WindowMark, XaChange};
pub use writer::Writer;

use crate::config::{CheckpointStoreConfig, Config};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "checkpoint file {path} is not a valid checkpoint ({reason}); move it away to start afresh"
    )]
    Corrupt { path: String, reason: String },
    #[error("checkpoint table {table}: {source}")]
    Mysql {
        table: String,
        source: mysql_async::Error,
    },
}

/// The configured store.
pub enum Store {
    File(FileStore),
    Mysql(Box<MysqlStore>),
}

impl Store {
    pub fn from_config(cfg: &Config) -> Store {
        match &cfg.checkpoint.store {
            CheckpointStoreConfig::File { path } => Store::File(FileStore::new(cfg.resolve(path))),
            CheckpointStoreConfig::Mysql { table, name } => Store::Mysql(Box::new(
                MysqlStore::new(&cfg.source, table.clone(), name.clone()),
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::File(f) => format!("file {}", f.path().display()),
            Store::Mysql(m) => format!("table {}", m.table()),
        }
    }

    pub async fn load(&mut self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self {
            Store::File(f) => f.load(),
            Store::Mysql(m) => m.load().await,
        }
    }

    pub async fn save(&mut self, c: &Checkpoint) -> Result<(), CheckpointError> {
        match self {
            Store::File(f) => {
                let f2 = f.clone();
                let c = c.clone();
                tokio::task::spawn_blocking(move || f2.save(&c))
                    .await
                    .unwrap_or_else(|e| {
                        Err(CheckpointError::Io {
                            path: f.path().display().to_string(),
                            source: std::io::Error::other(e),
                        })
                    })
            }
            Store::Mysql(m) => m.save(c).await,
        }
    }
}
