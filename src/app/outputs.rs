//! What pipelines deliver to: their sinks and enrichment stages, built for a set of pipelines
//! at start-up and again for the pipelines a reload adds. Pipelines keep the index they were
//! given for the life of the process (metrics slots, routes and stages are keyed by it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::AppError;
use crate::checkpoint::AckTracker;
use crate::config::{Config, PipelineConfig, SinkConfig};
use crate::enrich;
use crate::metrics::Metrics;
use crate::sink::jsonl::JsonlSink;
use crate::sink::kafka::{self, KafkaSink};
use crate::sink::{Sink, SinkError};

pub type Sinks = Arc<std::sync::Mutex<Vec<Box<dyn Sink>>>>;

pub fn lock(s: &Sinks) -> std::sync::MutexGuard<'_, Vec<Box<dyn Sink>>> {
    // A sink that panicked mid-send stops the daemon anyway; its state is not read again.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared by every build: the daemon's config, the ack tracker, the metrics, the sinks and the
/// rate limiters (so a pipeline added by a reload draws on the same quotas).
pub struct Stages {
    pub cfg: Config,
    pub tracker: AckTracker,
    pub metrics: Arc<Metrics>,
    pub sinks: Sinks,
    pub limiters: Arc<crate::ratelimit::Registry>,
}

/// An enrichment stage's task, with its pipeline's name.
pub type StageTask = (String, tokio::task::JoinHandle<Result<(), String>>);

/// What a build made, by pipeline index.
#[derive(Default)]
pub struct Built {
    /// Pipeline → its sink's index in `sinks`.
    pub route_to: Vec<(usize, usize)>,
    /// Pipeline → its enrichment stage's input.
    pub enrich_tx: Vec<(usize, mpsc::Sender<enrich::Pending>)>,
    pub tasks: Vec<StageTask>,
}

impl Stages {
    /// A thread that hands an enrichment stage's batches to its sink (sinks may block: the
    /// stage stays async, and no runtime worker is taken per record).
    fn delivery_thread(&self, pipeline: &str, route: usize) -> Result<enrich::Deliver, AppError> {
        let (tx, mut rx) = mpsc::channel::<Vec<enrich::Delivered>>(2);
        let error = Arc::new(std::sync::Mutex::new(None));
        let (sinks, m, err) = (self.sinks.clone(), self.metrics.clone(), error.clone());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("deliver-{pipeline}"))
            .spawn(move || {
                // Dropped on every way out: the stage then knows the thread is done.
                let _done = done_tx;
                while let Some(batch) = rx.blocking_recv() {
                    let mut g = lock(&sinks);
                    for d in batch {
                        let sent = match d.dead {
                            true => g[route].send_dead_letter(&d.rec, d.seq).and_then(|dl| {
                                if dl {
                                    Ok(1)
                                } else {
                                    g[route].send(&d.rec, d.seq)
                                }
                            }),
                            false => g[route].send(&d.rec, d.seq),
                        };
                        if let Err(e) = sent {
                            *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                            return;
                        }
                        m.pipelines[d.rec.pipeline].record_out(d.rec.source.ts_ms);
                    }
                }
            })
            .map_err(|e| AppError::Enrichment {
                pipeline: pipeline.to_string(),
                reason: format!("cannot start its delivery thread: {e}"),
            })?;
        Ok(enrich::Deliver { tx, error, done })
    }

    /// Builds the sinks and enrichment stages of `items` (index, pipeline). `plans` holds the
    /// write-back plans the preflight made.
    pub async fn build(
        &self,
        items: &[(usize, &PipelineConfig)],
        plans: &HashMap<String, crate::sink::mysql::Plan>,
    ) -> Result<Built, AppError> {
        let mut built = Built::default();
        let mut new_sinks: Vec<Box<dyn Sink>> = Vec::new();
        // Pipeline → the position its write-back had applied (no calls again up to it).
        let mut applied: HashMap<usize, crate::model::BinlogPosition> = HashMap::new();
        let base = lock(&self.sinks).len();
        let max = items.iter().map(|(i, _)| *i + 1).max().unwrap_or(0);
        let mut routes: Vec<Option<kafka::Route>> = vec![None; max];
        for (i, p) in items {
            if let SinkConfig::Kafka(k) = &p.sink {
                routes[*i] = p.topic().map(|t| kafka::Route {
                    topic: Arc::from(t.as_str()),
                    tombstones: k.tombstones,
                    dead_letter: p.dead_letter_topic().map(|d| Arc::from(d.as_str())),
                    on_oversize: k.on_oversize,
                });
            }
        }
        if let (Some(kcfg), true) = (&self.cfg.kafka, routes.iter().any(Option::is_some)) {
            if kcfg.create_topics {
                let names: Vec<String> = routes
                    .iter()
                    .flatten()
                    .flat_map(|r| {
                        std::iter::once(r.topic.to_string())
                            .chain(r.dead_letter.as_deref().map(str::to_string))
                    })
                    .collect();
                kafka::create_topics(kcfg, &names).await?;
            }
            for (i, r) in routes.iter().enumerate() {
                if r.is_some() {
                    built.route_to.push((i, base + new_sinks.len()));
                }
            }
            new_sinks.push(Box::new(KafkaSink::new(
                kcfg,
                routes,
                self.tracker.clone(),
                self.metrics.clone(),
            )?));
        }
        for (i, p) in items {
            match &p.sink {
                SinkConfig::Mysql(m) => {
                    let plan = plans
                        .get(&p.name)
                        .cloned()
                        .ok_or_else(|| SinkError::Mysql {
                            pipeline: p.name.clone(),
                            message: "no write-back plan (the preflight did not check it)".into(),
                        })?;
                    built.route_to.push((*i, base + new_sinks.len()));
                    let sink = crate::sink::mysql::MysqlSink::start(
                        &self.cfg.source,
                        p,
                        m,
                        plan,
                        self.tracker.clone(),
                        self.metrics.clone(),
                        *i,
                    )
                    .await?;
                    if let Some(a) = sink.applied() {
                        applied.insert(*i, a);
                    }
                    new_sinks.push(Box::new(sink));
                }
                SinkConfig::Jsonl(j) => {
                    let path = if j.path == "-" {
                        j.path.clone()
                    } else {
                        self.cfg.resolve(Path::new(&j.path)).display().to_string()
                    };
                    built.route_to.push((*i, base + new_sinks.len()));
                    new_sinks.push(Box::new(JsonlSink::open(&path, self.tracker.clone())?));
                }
                SinkConfig::Kafka(_) => {}
            }
        }
        lock(&self.sinks).extend(new_sinks);

        // Enrichment stages: one task per enriched pipeline, between the router and the sink.
        for (i, p) in items {
            let Some(e) = &p.enrichment else {
                continue;
            };
            let i = *i;
            let Some(route) = built.route_to.iter().find(|r| r.0 == i).map(|r| r.1) else {
                continue;
            };
            let enrich_err = |reason: String| AppError::Enrichment {
                pipeline: p.name.clone(),
                reason,
            };
            let kind = e
                .backend()
                .ok_or_else(|| enrich_err("enrichment names no backend".into()))?;
            let backend = crate::backend::build(kind, &e.call_settings())
                .await
                .map_err(enrich_err)?;
            let gather = backend.max_batch() * e.concurrency;
            let (etx, erx) = mpsc::channel(4 * gather.clamp(256, 40_000));
            let deliver = self.delivery_thread(&p.name, route)?;
            let quota = crate::backend::quota_key(backend.as_ref(), &e.aws());
            let settings = enrich::Settings {
                pipeline: i,
                name: p.name.clone(),
                input: enrich::input::InputSpec::from_config(e).map_err(enrich_err)?,
                max_batch: gather,
                max_wait: Duration::from_millis(e.max_wait_ms),
                concurrency: e.concurrency,
                parse_attempts: e.parse_attempts,
                max_retry_after: Duration::from_secs(e.max_retry_after_s),
                limiter: self.limiters.get(&quota, e.requests_per_second),
                tokens: e.tokens_per_minute.map(|t| self.limiters.bucket(&quota, t)),
                budget: e.budget.as_ref().map(|b| {
                    crate::ratelimit::Budget::new(
                        p.name.clone(),
                        b.requests,
                        b.tokens,
                        b.window_seconds,
                    )
                }),
                cache_entries: e.cache_entries,
                applied: applied.remove(&i),
            };
            let task = tokio::spawn(enrich::run(
                settings,
                backend,
                erx,
                deliver,
                self.metrics.clone(),
            ));
            built.tasks.push((p.name.clone(), task));
            built.enrich_tx.push((i, etx));
        }
        Ok(built)
    }
}
