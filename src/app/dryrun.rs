//! `--dry-run` of `backfill` and `reenrich`: reads the rows the backfill would emit and says
//! what enriching them would take — rows, calls, tokens, and the cost where the pipeline gives
//! `enrichment.prices` — without calling any backend or writing the signal table.

use std::collections::HashSet;
use std::sync::Arc;

use mysql_async::prelude::Queryable;

use super::AppError;
use crate::backend::{Backend, Input};
use crate::config::pipeline::EnrichmentConfig;
use crate::config::{Config, ConfigError, PipelineConfig};
use crate::enrich::input::{InputSpec, Prepared};
use crate::enrich::window::Gatherer;
use crate::model::filter::Expr;
use crate::model::record::{ChangeRecord, Enrichment, Image, SourceInfo};
use crate::model::Op;
use crate::source::mysql::schema::{self, TableSchema};
use crate::source::mysql::sql::quote_ident as q;
use crate::source::mysql::stream::{self, SourceError};

/// What a backfill would read, emit and spend.
#[derive(Debug, Default, PartialEq)]
pub struct Estimate {
    /// Rows of the table read.
    pub read: u64,
    /// Rows the backfill emits (those matching `--where` and the pipeline's `filter`).
    pub emitted: u64,
    /// Emitted rows that need a call (a windowed pipeline: rows that join a window).
    pub to_call: u64,
    /// Inputs needing a call: the distinct ones where the cache is on (it answers repeats,
    /// within `cache_entries`), else every one (a windowed pipeline: its windows).
    pub distinct: u64,
    /// The pipeline gathers rows into windows (`enrichment.window`): how many close (each
    /// one input; `distinct` counts them once each where the cache is on).
    pub windowed: bool,
    pub windows: u64,
    /// The windows also close by time (`every`): a backfill that outlasts it closes more, so
    /// the windows, calls, tokens and cost are a floor.
    pub windows_floor: bool,
    /// Emitted rows with nothing to send (no text): no call.
    pub no_input: u64,
    /// Emitted rows that can never be sent (too long under `on_too_long: dead_letter`).
    pub rejected: u64,
    /// Calls for the distinct inputs, `max_batch_size` to a call.
    pub calls: u64,
    /// Tokens (input estimated at 4 bytes a token; output at the `max_tokens` ceiling), where
    /// the backend counts tokens.
    pub tokens: Option<(u64, u64)>,
    /// The cost at `enrichment.prices`, where the pipeline gives them.
    pub cost: Option<f64>,
}

/// Reads `p`'s table (rows matching `filter`) and estimates its enrichment.
pub async fn estimate(
    cfg: &Config,
    p: &PipelineConfig,
    filter: Option<&str>,
) -> Result<Estimate, AppError> {
    let perr = |message: String| -> AppError {
        ConfigError::Pipeline {
            pipeline: p.name.clone(),
            file: p.file.clone(),
            message,
        }
        .into()
    };
    let query = |source| SourceError::Query {
        what: "the dry run's SELECT of the table",
        source,
    };
    let mut conn = stream::connect(&cfg.source).await?;
    let (db, table) = p.db_table();
    let s = schema::load(&mut conn, &[(db.clone(), table.clone())])
        .await
        .map_err(query)?
        .remove(&(db.clone(), table.clone()))
        .ok_or_else(|| perr(format!("table `{db}`.`{table}` does not exist")))?;
    let names: Arc<[String]> = s.columns.iter().map(|c| c.name.clone()).collect();
    let bind = |what: &str, f: &str| {
        Expr::parse(f)
            .and_then(|e| {
                e.bind(&|c| names.iter().position(|n| n == c))
                    .map_err(|c| format!("column `{c}` is not in the table"))
            })
            .map_err(|m| perr(format!("{what} `{f}`: {m}")))
    };
    let filters: Vec<Expr> = [("--where", filter), ("filter", p.filter.as_deref())]
        .into_iter()
        .filter_map(|(what, f)| f.map(|f| bind(what, f)))
        .collect::<Result<_, _>>()?;
    let enrich = match &p.enrichment {
        Some(e) => {
            let b = e
                .backend()
                .ok_or_else(|| perr("enrichment names no backend".into()))?;
            let backend = crate::backend::build(b, &e.call_settings())
                .await
                .map_err(perr)?;
            let input = InputSpec::from_config(e).map_err(perr)?;
            Some((backend, input, e))
        }
        None => None,
    };
    // With the cache on, a repeated input is answered by it: calls for distinct inputs only.
    let mut tally = Tally {
        dedupe: enrich.as_ref().is_some_and(|(.., e)| e.cache_entries > 0),
        ..Tally::default()
    };
    if let Some((_, InputSpec::Window(spec), e)) = &enrich {
        tally.est.windowed = true;
        tally.est.windows_floor = e.window.as_ref().is_some_and(|w| w.every.is_some());
        let source = SourceInfo {
            pipeline: Arc::from(p.name.as_str()),
            server_id: 0,
            db: Arc::from(db.as_str()),
            table: Arc::from(table.as_str()),
            gtid: None,
            file: Arc::from(""),
            pos: 0,
            event: 0,
            row: 0,
            ts_ms: 0,
            origin: None,
        };
        tally.windows = Some((Gatherer::new(spec.clone(), Default::default()), source));
    }
    let cols: Vec<String> = s.columns.iter().map(|c| q(&c.name)).collect();
    let sql = format!("SELECT {} FROM {}.{}", cols.join(", "), q(&db), q(&table));
    // The binary protocol, as the backfill reads: values typed as the backfill types them.
    let mut result = conn.exec_iter(sql, ()).await.map_err(query)?;
    while let Some(row) = result.next().await.map_err(query)? {
        tally.est.read += 1;
        let values = decode(&s, row).map_err(perr)?;
        if !filters.iter().all(|f| f.eval(&values)) {
            continue;
        }
        tally.est.emitted += 1;
        if let Some((backend, input, _)) = &enrich {
            let image = Image {
                names: names.clone(),
                values,
            };
            tally.row(backend.as_ref(), input, image);
        }
    }
    drop(result);
    let _ = conn.disconnect().await;
    Ok(match enrich {
        Some((backend, _, e)) => tally.finish(backend.as_ref(), e),
        None => tally.est,
    })
}

/// The running counts, and the distinct inputs seen.
#[derive(Default)]
struct Tally {
    est: Estimate,
    seen: HashSet<u128>,
    /// Count a repeated input once (the cache is on).
    dedupe: bool,
    tokens: (u64, u64),
    counts_tokens: bool,
    /// A windowed pipeline's open windows, and the source its rows are given.
    windows: Option<(Gatherer, SourceInfo)>,
}

impl Tally {
    /// One emitted row of an enriching pipeline: its input, or its part of a window.
    fn row(&mut self, backend: &dyn Backend, spec: &InputSpec, image: Image) {
        let prepared = spec.prepare_row(&image);
        let Some((windows, source)) = &mut self.windows else {
            return self.add(backend, prepared);
        };
        let Prepared::Call { input, .. } = prepared else {
            return self.add(backend, prepared);
        };
        self.est.to_call += 1;
        let rec = backfilled(source, image);
        for closed in windows.push(&rec, self.est.to_call, input.text) {
            self.est.windows += 1;
            self.add_input(backend, &closed.input);
        }
    }

    /// The estimate, once every row was counted: the windows still open close (as at the
    /// end of a backfill whose windows the stream closes), then calls, tokens and the cost.
    fn finish(mut self, backend: &dyn Backend, e: &EnrichmentConfig) -> Estimate {
        if let Some((mut windows, _)) = self.windows.take() {
            for closed in windows.close_all() {
                self.est.windows += 1;
                self.add_input(backend, &closed.input);
            }
        }
        let mut est = self.est;
        est.calls = est.distinct.div_ceil(e.max_batch_size().max(1) as u64);
        est.tokens = self.counts_tokens.then_some(self.tokens);
        est.cost = e.prices.as_ref().map(|pr| {
            let (i, o) = est.tokens.unwrap_or((0, 0));
            est.calls as f64 * pr.per_call
                + est.distinct as f64 * pr.per_row
                + i as f64 / 1000.0 * pr.per_1k_input_tokens
                + o as f64 / 1000.0 * pr.per_1k_output_tokens
        });
        est
    }

    /// One emitted row, prepared as the stage prepares it.
    fn add(&mut self, backend: &dyn Backend, prepared: Prepared) {
        match prepared {
            Prepared::Skip(_) => self.est.no_input += 1,
            Prepared::Reject(_) => self.est.rejected += 1,
            Prepared::Call { input, .. } => {
                self.est.to_call += 1;
                self.add_input(backend, &input);
            }
        }
    }

    /// One input for the backend: a row's, or a closed window's.
    fn add_input(&mut self, backend: &dyn Backend, input: &Input) {
        if !self.seen.insert(fingerprint(input)) && self.dedupe {
            return;
        }
        self.est.distinct += 1;
        if let Some((i, o)) = backend.tokens(input) {
            self.counts_tokens = true;
            self.tokens.0 += i;
            self.tokens.1 += o;
        }
    }
}

/// A backfilled row as the windowed stage takes it. Every row gets the same commit time (a
/// backfill's rows carry their chunk's watermark's): `every` closes no window here, so a
/// backfill that runs longer than `every` makes more, smaller windows than estimated.
fn backfilled(source: &SourceInfo, after: Image) -> ChangeRecord {
    ChangeRecord {
        op: Op::Read,
        before: None,
        after: Some(after),
        source: source.clone(),
        enrichment: Enrichment::None,
        oversize: None,
        key_change: None,
        filter_change: None,
        truncate: None,
        window: None,
        schema: None,
        key: Image {
            names: Arc::from(Vec::new()),
            values: Vec::new(),
        },
        pipeline: 0,
    }
}

/// 128 bits of an input, so that a large table's distinct inputs are counted in little memory.
fn fingerprint(input: &Input) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, &input.language, &input.text).hash(&mut h);
        h.finish() as u128
    };
    (half(1) << 64) | half(2)
}

/// A row as the backfill types it.
fn decode(
    s: &TableSchema,
    row: mysql_async::Row,
) -> Result<Vec<crate::model::ColumnValue>, String> {
    row.unwrap_raw()
        .into_iter()
        .zip(&s.columns)
        .map(|(v, c)| {
            crate::snapshot::column_value(c, v.unwrap_or(mysql_async::Value::NULL))
                .map_err(|e| format!("column `{}`: {e}", c.name))
        })
        .collect()
}

/// The estimate as `--dry-run` prints it (`what`: "backfill of `p`").
pub fn report(what: &str, e: &Estimate, enriched: bool) -> String {
    let mut out = format!(
        "dry run of the {what} (nothing was sent): {} rows read, {} would be emitted",
        e.read, e.emitted
    );
    if !enriched {
        out.push_str("; the pipeline enriches nothing: no calls");
        return out;
    }
    if e.windowed {
        out.push_str(&format!(
            "; {} would join {} windows ({} distinct; by group, closed at `rows` or \
             `max_bytes`), {} have no input; {} calls",
            e.to_call, e.windows, e.distinct, e.no_input, e.calls
        ));
    } else {
        out.push_str(&format!(
            "; {} need a call ({} distinct inputs), {} have no input, {} would be dead \
             letters; {} calls",
            e.to_call, e.distinct, e.no_input, e.rejected, e.calls
        ));
    }
    if let Some((i, o)) = e.tokens {
        out.push_str(&format!(
            "; tokens at most {} ({i} input, estimated at 4 bytes a token; {o} output, at the \
             max_tokens ceiling)",
            i + o
        ));
    }
    match e.cost {
        Some(c) => out.push_str(&format!("; cost at most {c:.4} (enrichment.prices)")),
        None => out.push_str("; no cost: the pipeline gives no enrichment.prices"),
    }
    if e.windows_floor {
        out.push_str(
            " — for these windows: a backfill that outlasts `every` closes more, each with its \
             call, prompt and answer",
        );
    }
    out
}
