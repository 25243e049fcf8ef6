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
use crate::pipeline::stage::Route;
use crate::sink::jsonl::JsonlSink;
use crate::sink::kafka::{self, KafkaSink};
use crate::sink::{lock, Sink, SinkError, Sinks};

/// Shared by every build: the daemon's config, the ack tracker, the metrics, the sinks and the
/// rate limiters (so a pipeline added by a reload draws on the same quotas).
pub struct Stages {
    pub cfg: Config,
    pub tracker: AckTracker,
    pub metrics: Arc<Metrics>,
    pub sinks: Sinks,
    pub limiters: Arc<crate::ratelimit::Registry>,
    /// The stream's commit time (windowed pipelines close windows by it).
    pub clock: Arc<crate::model::clock::StreamClock>,
    /// True once the daemon is stopping.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// An enrichment stage's task, with its pipeline's name.
pub type StageTask = (
    String,
    tokio::task::JoinHandle<Result<(), enrich::StageEnd>>,
);

/// What a build made, by pipeline index.
#[derive(Default)]
pub struct Built {
    /// Pipeline index → where its records go.
    pub routes: Vec<(usize, Route)>,
    pub tasks: Vec<StageTask>,
}

impl Built {
    fn route(&mut self, i: usize) -> &mut Route {
        let k = match self.routes.iter().position(|r| r.0 == i) {
            Some(k) => k,
            None => {
                self.routes.push((i, Route::default()));
                self.routes.len() - 1
            }
        };
        &mut self.routes[k].1
    }

    /// The routes as a list by pipeline index, `n` long (no route where none was built), and
    /// the stages' tasks. Consumes the build: an enrichment stage ends once every holder of its
    /// input (its route) is gone.
    pub fn into_routes(self, n: usize) -> (Vec<Route>, Vec<StageTask>) {
        let mut v = vec![Route::default(); n];
        for (i, r) in self.routes {
            if let Some(slot) = v.get_mut(i) {
                *slot = r;
            }
        }
        (v, self.tasks)
    }
}

impl Stages {
    /// Stages with no sinks yet: the config, the tracker the sinks acknowledge to, the
    /// metrics, the stream's clock and the stop flag they share.
    pub fn new(
        cfg: &Config,
        tracker: &AckTracker,
        metrics: &Arc<Metrics>,
        clock: &Arc<crate::model::clock::StreamClock>,
        stopping: &tokio::sync::watch::Receiver<bool>,
    ) -> Stages {
        Stages {
            cfg: cfg.clone(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            sinks: Arc::new(std::sync::Mutex::new(Vec::new())),
            limiters: Arc::new(crate::ratelimit::Registry::default()),
            clock: clock.clone(),
            stopping: stopping.clone(),
        }
    }

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
                            *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
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
        let base = lock(&self.sinks).len();
        if let Some(k) = self.kafka_sink(items).await? {
            for i in k.1 {
                built.route(i).sink = Some(base);
            }
            new_sinks.push(k.0);
        }
        // Pipeline → the position its write-back had applied (no calls again up to it).
        let mut applied = HashMap::new();
        for (i, p) in items {
            let sink: Box<dyn Sink> = match &p.sink {
                SinkConfig::Kafka(_) => continue,
                SinkConfig::Mysql(m) => {
                    let plan = plans
                        .get(&p.name)
                        .cloned()
                        .ok_or_else(|| SinkError::Mysql {
                            pipeline: p.name.clone(),
                            message: "no write-back plan (the preflight did not check it)".into(),
                        })?;
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
                    Box::new(sink)
                }
                SinkConfig::Jsonl(j) => {
                    let path = match j.path.as_str() {
                        "-" => j.path.clone(),
                        _ => self.cfg.resolve(Path::new(&j.path)).display().to_string(),
                    };
                    Box::new(JsonlSink::open(&path, self.tracker.clone())?)
                }
            };
            built.route(*i).sink = Some(base + new_sinks.len());
            new_sinks.push(sink);
        }
        lock(&self.sinks).extend(new_sinks);
        // Enrichment stages: one task per enriched pipeline, between the router and the sink.
        for (i, p) in items {
            let (Some(e), Some(sink)) = (&p.enrichment, built.route(*i).sink) else {
                continue;
            };
            let (tx, task) = self
                .enrichment_stage(*i, p, e, sink, applied.remove(i))
                .await?;
            built.route(*i).enrich = Some(tx);
            built.route(*i).windowed = e.window.is_some();
            built.tasks.push((p.name.clone(), task));
        }
        Ok(built)
    }

    /// The one Kafka sink of this build (shared by its Kafka pipelines, whose topics it creates
    /// where the config says so), and the pipelines it serves.
    async fn kafka_sink(
        &self,
        items: &[(usize, &PipelineConfig)],
    ) -> Result<Option<(Box<dyn Sink>, Vec<usize>)>, AppError> {
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
        let served: Vec<usize> = (0..max).filter(|i| routes[*i].is_some()).collect();
        let Some(kcfg) = self.cfg.kafka.as_ref().filter(|_| !served.is_empty()) else {
            return Ok(None);
        };
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
        let sink = KafkaSink::new(kcfg, routes, self.tracker.clone(), self.metrics.clone())?;
        Ok(Some((Box::new(sink), served)))
    }

    /// Starts pipeline `i`'s enrichment stage, delivering to sink `route`; returns its input.
    async fn enrichment_stage(
        &self,
        i: usize,
        p: &PipelineConfig,
        e: &crate::config::pipeline::EnrichmentConfig,
        route: usize,
        applied: Option<crate::model::record::AppliedPoint>,
    ) -> Result<
        (
            mpsc::Sender<enrich::Pending>,
            tokio::task::JoinHandle<Result<(), enrich::StageEnd>>,
        ),
        AppError,
    > {
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
                .with_cache_weights(b.cache_read_weight, b.cache_write_weight)
            }),
            cache_entries: e.cache_entries,
            applied,
            window: e.window.as_ref().map(|_| enrich::WindowLink {
                clock: self.clock.clone(),
                acks: self.tracker.clone(),
                stopping: self.stopping.clone(),
                delivered: self
                    .tracker
                    .delivered_windows()
                    .remove(&p.name)
                    .unwrap_or_default(),
            }),
        };
        let task = tokio::spawn(enrich::run(
            settings,
            backend,
            erx,
            deliver,
            self.metrics.clone(),
        ));
        Ok((etx, task))
    }
}
