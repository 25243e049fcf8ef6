//! A checkpoint kept as a row of a table on the source server.
//!
//! Needs CREATE (once, for the table) and INSERT, UPDATE, SELECT on it.

use crate::source::mysql::sql::quote_ident as quote;
use mysql_async::prelude::Queryable;

use super::CheckpointError;
use crate::config::SourceConfig;

pub struct MysqlStore {
    cfg: SourceConfig,
    table: String,
    name: String,
    conn: Option<mysql_async::Conn>,
}

impl MysqlStore {
    pub fn new(cfg: &SourceConfig, table: String, name: String) -> Self {
        MysqlStore {
            cfg: cfg.clone(),
            table,
            name,
            conn: None,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn qualified(&self) -> String {
        match self.table.split_once('.') {
            Some((d, t)) => format!("{}.{}", quote(d), quote(t)),
            None => quote(&self.table),
        }
    }

    fn err(&self, source: mysql_async::Error) -> CheckpointError {
        CheckpointError::Mysql {
            table: self.table.clone(),
            source,
        }
    }

    async fn conn(&mut self) -> Result<&mut mysql_async::Conn, CheckpointError> {
        if self.conn.is_none() {
            let c = mysql_async::Conn::new(crate::source::mysql::stream::opts(&self.cfg))
                .await
                .map_err(|e| self.err(e))?;
            self.conn = Some(c);
            let q = format!(
                "CREATE TABLE IF NOT EXISTS {} (name VARCHAR(191) NOT NULL PRIMARY KEY, \
                 position TEXT NOT NULL, updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) \
                 ON UPDATE CURRENT_TIMESTAMP(6))",
                self.qualified()
            );
            let r = match self.conn.as_mut() {
                Some(c) => c.query_drop(q).await,
                None => Ok(()),
            };
            if let Err(e) = r {
                self.conn = None;
                return Err(self.err(e));
            }
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => unreachable!("connection set above"),
        }
    }

    pub async fn load(&mut self) -> Result<Option<super::Checkpoint>, CheckpointError> {
        let q = format!("SELECT position FROM {} WHERE name = ?", self.qualified());
        let name = self.name.clone();
        let r: Result<Option<String>, _> = self.conn().await?.exec_first(q, (name,)).await;
        let r = r.map_err(|e| {
            self.conn = None;
            self.err(e)
        })?;
        match r {
            None => Ok(None),
            Some(text) => {
                super::document::parse(&text)
                    .map(Some)
                    .map_err(|reason| CheckpointError::Corrupt {
                        path: self.table.clone(),
                        reason,
                    })
            }
        }
    }

    pub async fn save(&mut self, c: &super::Checkpoint) -> Result<(), CheckpointError> {
        let q = format!(
            "INSERT INTO {} (name, position) VALUES (?, ?) ON DUPLICATE KEY UPDATE position = VALUES(position)",
            self.qualified()
        );
        let body = super::document::to_text(c);
        let name = self.name.clone();
        let r = self.conn().await?.exec_drop(q, (name, body)).await;
        r.map_err(|e| {
            self.conn = None;
            self.err(e)
        })
    }
}
