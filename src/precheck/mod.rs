//! Preflight: everything verified before the first event is read. Each failure says what is
//! wrong and the statement or setting that fixes it.

mod failure;
mod server;
mod tables;
pub mod writeback;

pub use failure::Failure;

use crate::config::{Config, PipelineConfig};
use crate::model::BinlogPosition;
use crate::source::mysql::schema;
use crate::source::mysql::stream::{self, SourceError};

pub struct Report {
    pub failures: Vec<Failure>,
    pub server_version: String,
    /// The write-back plans of pipelines with a MySQL sink, by pipeline name.
    pub writeback: std::collections::HashMap<String, crate::sink::mysql::Plan>,
    /// Why the saved checkpoint cannot be resumed, when `on_purged: resnapshot` lets the daemon
    /// start over instead of failing.
    pub purged: Option<String>,
}

fn fail(out: &mut Vec<Failure>, problem: impl Into<String>, fix: impl Into<String>) {
    out.push(Failure {
        problem: problem.into(),
        fix: fix.into(),
    });
}

/// Runs every check. `Err` only when the server cannot be reached at all.
pub async fn run(
    cfg: &Config,
    pipelines: &[PipelineConfig],
    checkpoint: Option<&BinlogPosition>,
) -> Result<Report, SourceError> {
    let mut conn = stream::connect(&cfg.source).await?;
    let mut f = Vec::new();
    let server = server::settings(&mut conn, &mut f).await?;
    let access = server::grants(&mut conn, server.is_maria, &mut f).await?;
    let mut tables: Vec<(String, String)> = pipelines.iter().map(|p| p.db_table()).collect();
    tables.sort();
    tables.dedup();
    let schemas = schema::load(&mut conn, &tables)
        .await
        .map_err(|source| SourceError::Query {
            what: "information_schema.COLUMNS",
            source,
        })?;
    for p in pipelines {
        tables::pipeline(&mut conn, cfg, p, &schemas, &access.grantee, &mut f).await;
    }
    // The checkpoint is still on the server (listing the logs needs the grant checked above;
    // with binary logging off the failure above says all).
    let mut purged = None;
    if let (Some(cp), true, true) = (checkpoint, access.can_list_logs, server.binlog_on) {
        match stream::check_position(&mut conn, cp).await {
            Ok(()) => {}
            Err(e @ SourceError::Purged { .. })
                if cfg.source.on_purged == crate::config::OnPurged::Resnapshot =>
            {
                purged = Some(e.to_string());
            }
            Err(e) => fail(&mut f, format!("the saved checkpoint cannot be resumed: {e}"),
                "restore the purged binlog files; or set `source.on_purged: resnapshot` to start at the current end \
                 and backfill every pipeline; or move the checkpoint away to start at the current end \
                 (rows changed in between are then not emitted)"),
        }
    }
    for p in pipelines {
        tables::backfill_key(cfg, p, &schemas, &mut f);
    }
    let _ = conn.disconnect().await;
    // Write-back sinks, checked with the writer's own account.
    let mut writeback = std::collections::HashMap::new();
    for p in pipelines {
        let (crate::config::SinkConfig::Mysql(m), Some(s)) = (&p.sink, schemas.get(&p.db_table()))
        else {
            continue;
        };
        match writeback::plan(&cfg.source, p, m, s).await {
            Ok(plan) => {
                writeback.insert(p.name.clone(), plan);
            }
            Err(mut failures) => f.append(&mut failures),
        }
    }
    Ok(Report {
        failures: f,
        server_version: server.version,
        writeback,
        purged,
    })
}
