//! `cdc-enricher reenrich`: after a change of model, prompt or parameters, a backfill of the
//! rows whose stored answer came from another lineage (a write-back that stores the lineage
//! in the source row), or of every row (Kafka, JSON lines, a side table).

use std::path::Path;

use super::{find_pipeline, request_backfill, AppError};
use crate::config::pipeline::{SinkConfig, WriteMode};
use crate::config::{Config, ConfigError, PipelineConfig};
use crate::enrich::input::InputSpec;

/// Requests the re-enrichment of `pipeline` (only rows matching `filter`, where given) from the
/// running daemon, through the signal table, and prints what it asked for. With `dry_run`,
/// reads those rows instead and prints what they would take.
pub async fn reenrich(
    config: &Path,
    pipeline: &str,
    filter: Option<&str>,
    dry_run: bool,
) -> Result<(), AppError> {
    let cfg = Config::load(config)?;
    let pipelines = cfg.load_pipelines()?;
    let p = find_pipeline(config, &pipelines, pipeline)?;
    let current = current_lineage(p).await?;
    let (filter, rows) = stale_rows(p, &current, filter);
    if dry_run {
        let e = super::dryrun::estimate(&cfg, p, filter.as_deref()).await?;
        let what = format!("re-enrichment of `{pipeline}` ({rows}, lineage {current})");
        println!("{}", super::dryrun::report(&what, &e, true));
        return Ok(());
    }
    let id = request_backfill(config, &cfg, p, filter.as_deref()).await?;
    println!(
        "re-enrichment of `{pipeline}` requested ({id}): {rows}, lineage {current}; the running \
         daemon reads it from the binlog"
    );
    Ok(())
}

/// The backfill filter that picks the rows to enrich again for lineage `current` (with the
/// user's `filter`), and how to say which rows those are.
pub fn stale_rows(
    p: &PipelineConfig,
    current: &str,
    filter: Option<&str>,
) -> (Option<String>, String) {
    match lineage_column(p) {
        Some(col) => {
            // Quoted as the filter language quotes identifiers (a column named like a keyword).
            let stale = format!("(`{col}` IS NULL OR `{col}` != '{current}')");
            let f = match filter {
                Some(f) => format!("{stale} AND ({f})"),
                None => stale,
            };
            (Some(f), format!("the rows whose `{col}` is not {current}"))
        }
        None => (
            filter.map(str::to_string),
            format!(
                "every row{} (the sink stores no lineage in the source row to compare)",
                filter
                    .map(|f| format!(" matching `{f}`"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// The lineage the pipeline's enrichment has now (the backend is built, not called).
pub async fn current_lineage(p: &PipelineConfig) -> Result<String, AppError> {
    let err = |message: String| ConfigError::Pipeline {
        pipeline: p.name.clone(),
        file: p.file.clone(),
        message,
    };
    let Some(e) = &p.enrichment else {
        return Err(err("it has no enrichment: there is nothing to re-enrich".into()).into());
    };
    let Some(b) = e.backend() else {
        return Err(err("enrichment names no backend".into()).into());
    };
    let backend = crate::backend::build(b, &e.call_settings())
        .await
        .map_err(err)?;
    let input = InputSpec::from_config(e).map_err(err)?;
    Ok(crate::enrich::lineage::of(backend.as_ref(), &input))
}

/// The source-row column where a write-back (`mode: update`) stores `/lineage`.
fn lineage_column(p: &PipelineConfig) -> Option<&str> {
    match &p.sink {
        SinkConfig::Mysql(m) if m.mode == WriteMode::Update => m
            .columns
            .iter()
            .find(|(_, ptr)| ptr.as_str() == "/lineage")
            .map(|(col, _)| col.as_str()),
        _ => None,
    }
}
