//! One reader among several `run --role source` processes of one server: the one holding a
//! named lock (`GET_LOCK`) on a dedicated connection to the source server reads; the others
//! wait for it. A reader that dies, or whose connection is cut, loses the lock with its
//! connection (the server frees a connection's locks when it ends), and a standby takes it
//! and reads on from the shared checkpoint (the MySQL checkpoint store).
//! (<https://mariadb.com/kb/en/get_lock/>, <https://dev.mysql.com/doc/refman/8.0/en/locking-functions.html>)

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::AppError;
use crate::config::{CheckpointStoreConfig, Config, ConfigError};
use crate::source::mysql::stream::{self, SourceError};

/// How long one `GET_LOCK` waits, seconds: a standby asks again after it.
const WAIT_S: u64 = 2;

/// How often the reader checks that it still holds the lock.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The lock held, on its own connection.
pub(super) struct Leadership {
    conn: mysql_async::Conn,
    name: String,
}

/// The lock's name: one per shared checkpoint (table and name), at most 64 characters (the
/// servers' limit).
fn lock_name(table: &str, name: &str) -> String {
    let full = format!("cdc-enricher.source.{table}.{name}");
    match full.len() > 64 {
        true => format!(
            "cdc-enricher.source.{}",
            crate::model::hash::short_hash(&[table, name])
        ),
        false => full,
    }
}

/// Waits until this process holds the source lock (logging that it waits, once). The source
/// role keeps its checkpoint in the database, where a standby that takes over finds it.
pub(super) async fn acquire(config: &Path) -> Result<Leadership, AppError> {
    let cfg = Config::load(config)?;
    let CheckpointStoreConfig::Mysql { table, name } = &cfg.checkpoint.store else {
        return Err(ConfigError::File {
            file: config.display().to_string(),
            message: "`run --role source` keeps its checkpoint in the database, where a standby \
                      that takes over finds it: set `checkpoint.store: {mysql: {table: db.table}}`"
                .into(),
        }
        .into());
    };
    let name = lock_name(table, name);
    // A standby lives through SIGHUP (the default action would end it).
    let mut hangups = super::shutdown::reload_signal();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP ignored: a source process does not reload");
        }
    });
    let mut conn = stream::connect(&cfg.source).await?;
    let mut said = false;
    loop {
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, ?)", (&name, WAIT_S))
            .await
            .map_err(|source| SourceError::Query {
                what: "GET_LOCK (the source role's lock)",
                source,
            })?;
        if got.flatten() == Some(1) {
            tracing::info!(lock = %name, "holding the source lock: this process reads the binlog");
            return Ok(Leadership { conn, name });
        }
        if !said {
            let holder: Option<Option<i64>> = conn
                .exec_first("SELECT IS_USED_LOCK(?)", (&name,))
                .await
                .unwrap_or(None);
            tracing::info!(lock = %name, holder_connection = ?holder.flatten(),
                "another source process reads the binlog; standing by until its lock is free");
            said = true;
        }
    }
}

impl Leadership {
    /// Checks every half second that the lock is still this connection's; when it is not
    /// (the connection was cut or killed), the process stops producing at once: it exits with
    /// code 1, what it sent unacknowledged is sent again by the next reader (its checkpoint
    /// stays before it).
    pub(super) fn watch(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let mine: Result<Option<Option<i64>>, _> = self
                    .conn
                    .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&self.name,))
                    .await;
                match mine {
                    Ok(Some(Some(1))) => continue,
                    Ok(_) => tracing::error!(lock = %self.name,
                        "the source lock is no longer this process's: stopping at once (another source process may read now)"),
                    Err(e) => tracing::error!(lock = %self.name, error = %e,
                        "the source lock's connection is gone, and the lock with it: stopping at once (another source process may read now)"),
                }
                std::process::exit(1);
            }
        })
    }
}
