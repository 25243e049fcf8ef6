//! The enrichment stage: per pipeline, records are batched (by count, bytes and linger), sent
//! to the backend under the pipeline's limits (requests per second, tokens per minute, a
//! concurrency cap, a budget), retried by error kind with exponential backoff and full jitter,
//! and handed on to the sink in their original order (so the order per key is kept).
//!
//! Like the other stages it is joined by channels of typed records: it can later run as a
//! Kafka consumer-group worker without a rewrite.

mod calls;
pub mod input;
pub mod lineage;
pub mod window;
mod windowed;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::{Answer, Backend, ErrorKind, Input, ItemResult};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::model::record::{ChangeRecord, Enrichment, Failure, Skip};
use crate::ratelimit::{Budget, Limiter, TokenBucket};
use crate::sink::SinkError;
use input::{InputSpec, Prepared};

/// A record waiting for enrichment, with the sequence number its acknowledgement names.
pub type Pending = (ChangeRecord, u64);

/// An enriched record on its way to the sink; `dead`: it failed for good and belongs in the
/// dead letters.
pub struct Delivered {
    pub rec: ChangeRecord,
    pub seq: u64,
    pub dead: bool,
}

/// Where enriched records go: a batch at a time to the pipeline's delivery thread, which
/// hands them to the sink (sinks may block; the stage stays async). When the thread stopped,
/// `error` says why.
pub struct Deliver {
    pub tx: mpsc::Sender<Vec<Delivered>>,
    pub error: Arc<std::sync::Mutex<Option<SinkError>>>,
    /// Fires when the thread has handed over everything it was sent.
    pub done: tokio::sync::oneshot::Receiver<()>,
}

pub struct Settings {
    /// The pipeline's slot in the metrics.
    pub pipeline: usize,
    /// The pipeline's name, for the log.
    pub name: String,
    pub input: InputSpec,
    /// Records gathered before calls are made (the calls' sizes times the concurrency).
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Calls with an unusable answer before the rows are dead letters.
    pub parse_attempts: u32,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// The quota this pipeline's calls draw on (shared with other pipelines on the same one).
    pub limiter: Arc<Limiter>,
    /// Tokens per minute (Bedrock), shared like the quota.
    pub tokens: Option<Arc<TokenBucket>>,
    pub budget: Option<Budget>,
    /// Answers kept for identical inputs; 0 turns the cache off.
    pub cache_entries: usize,
    /// The position the pipeline's write-back had applied at start: records at or before it
    /// were written before a restart and are passed on without a call (the sink acknowledges
    /// them without writing).
    pub applied: Option<crate::model::record::AppliedPoint>,
    /// Set for a windowed pipeline (`enrichment.window`).
    pub window: Option<WindowLink>,
}

/// What a windowed pipeline's stage needs besides its settings: the stream clock its windows
/// close by, the ack tracker (a window's rows after its first, and rows that join no window,
/// are acknowledged by the stage; delivered windows are marked in it, for the checkpoint),
/// whether the daemon is stopping (open windows are then left to be read again after the
/// restart; when a reload retires the stage they are sent), and the windows delivered before.
pub struct WindowLink {
    pub clock: Arc<crate::model::clock::StreamClock>,
    pub acks: crate::checkpoint::AckTracker,
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Per group, the last row of the last window delivered before (from the checkpoint).
    pub delivered: std::collections::BTreeMap<String, crate::model::BinlogPosition>,
}

/// A bounded cache of answers, keyed by a 128-bit hash of the backend's scope (operation,
/// endpoint or model and its parameters), the language and the input (a hit makes no call).
struct Cache {
    lru: Option<lru::LruCache<u128, Map<String, Value>>>,
    scope: String,
}

impl Cache {
    fn new(entries: usize, backend: &dyn Backend) -> Cache {
        Cache {
            lru: std::num::NonZeroUsize::new(entries).map(lru::LruCache::new),
            scope: format!("{}|{}", backend.name(), backend.cache_scope()),
        }
    }

    fn key(&self, input: &Input) -> u128 {
        use std::hash::{Hash, Hasher};
        let half = |salt: u8| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, &self.scope, &input.language, &input.text).hash(&mut h);
            h.finish() as u128
        };
        (half(1) << 64) | half(2)
    }

    fn get(&mut self, key: u128) -> Option<Map<String, Value>> {
        self.lru.as_mut()?.get(&key).cloned()
    }

    fn put(&mut self, key: u128, answer: &Map<String, Value>) {
        if let Some(l) = self.lru.as_mut() {
            l.put(key, answer.clone());
        }
    }
}

enum Job {
    /// Sent to the backend (its input is the next of the batch); `key` is its cache key.
    Call { truncated: bool, key: u128 },
    /// No call: the cache had the answer (`truncated`: the input was cut to fit).
    Cached {
        fields: Map<String, Value>,
        truncated: bool,
    },
    /// No call: nothing to enrich.
    Skip(Skip),
    /// No call: the row can never be sent, it is a dead letter.
    Reject(String),
}

/// The enrichment as it goes into the record, after the backend's labels: the answer's
/// fields, then `usage` (tokens and the model's `stop_reason`) where the backend reports it.
fn rendered(answer: &Answer) -> Map<String, Value> {
    let mut m = answer.fields.clone();
    if let Some(u) = &answer.usage {
        let mut usage = Map::new();
        usage.insert("input_tokens".into(), u.input_tokens.into());
        usage.insert("output_tokens".into(), u.output_tokens.into());
        if u.cache_read_tokens + u.cache_write_tokens > 0 {
            usage.insert("cache_read_input_tokens".into(), u.cache_read_tokens.into());
            usage.insert(
                "cache_write_input_tokens".into(),
                u.cache_write_tokens.into(),
            );
        }
        if let Some(stop) = &u.stop {
            usage.insert("stop_reason".into(), stop.raw.clone().into());
        }
        m.insert("usage".into(), Value::Object(usage));
    }
    m
}

/// One record's enrichment from its job and, for a call, its answer and the number of calls
/// it took. A finished answer is cached; a cut one never is, and is delivered marked
/// `truncated: true` only where the pipeline accepts cut answers — else it is a dead letter
/// of kind `incomplete`, as is every final failure.
fn finish(
    mut rec: ChangeRecord,
    seq: u64,
    job: Job,
    result: Option<(ItemResult, u32)>,
    cache: &mut Cache,
    labels: &Map<String, Value>,
    pm: &PipelineMetrics,
) -> Delivered {
    let labels = labels.clone();
    let failed = |kind: ErrorKind, message: String, attempts: u32, usage: Option<Value>| {
        Enrichment::Failed {
            labels: labels.clone(),
            usage,
            error: Failure {
                kind: kind.as_str(),
                message,
                attempts,
            },
        }
    };
    rec.enrichment = match (job, result) {
        (Job::Cached { fields, truncated }, _) => Enrichment::Answered {
            labels,
            fields,
            truncated,
        },
        (Job::Skip(reason), _) => Enrichment::Skipped { labels, reason },
        (Job::Reject(why), _) => failed(ErrorKind::BadInput, why, 0, None),
        (Job::Call { truncated, key }, Some((Ok(answer), attempts))) => match &answer.cut {
            None => {
                let fields = rendered(&answer);
                cache.put(key, &fields);
                Enrichment::Answered {
                    labels,
                    fields,
                    truncated,
                }
            }
            Some(cut) if cut.deliver => Enrichment::Answered {
                labels,
                fields: rendered(&answer),
                truncated: true,
            },
            // The tokens the cut answer used stay on the record, beside the error.
            Some(cut) => failed(
                ErrorKind::Incomplete,
                cut.message.clone(),
                attempts,
                rendered(&answer).remove("usage"),
            ),
        },
        (Job::Call { .. }, Some((Err(e), attempts))) => failed(e.kind, e.message, attempts, None),
        (Job::Call { .. }, None) => {
            failed(ErrorKind::Transient, "no result (internal)".into(), 0, None)
        }
    };
    let dead = matches!(rec.enrichment, Enrichment::Failed { .. });
    if let Enrichment::Failed { error, .. } = &rec.enrichment {
        pm.enrichment_errors.fetch_add(1, Ordering::Relaxed);
        if error.kind == ErrorKind::Incomplete.as_str() {
            // The call itself answered; its answer is the failure.
            pm.errors_by_kind[ErrorKind::Incomplete.index()].fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(pipeline = %rec.source.pipeline, kind = error.kind, error = %error.message,
            attempts = error.attempts, key = %serde_json::to_string(&rec.key).unwrap_or_default(),
            "this row cannot be enriched; it goes to the dead letters");
    }
    Delivered { rec, seq, dead }
}

/// What produced the answers, first in every record's enrichment: the backend's labels, then
/// the lineage.
fn labels(backend: &dyn Backend, input: &InputSpec) -> Map<String, Value> {
    let mut labels = backend.labels();
    labels.insert("lineage".into(), lineage::of(backend, input).into());
    labels
}

/// Hands `out` to the delivery thread; when it stopped, why.
async fn hand_on(
    tx: &mpsc::Sender<Vec<Delivered>>,
    out: Vec<Delivered>,
    error: &std::sync::Mutex<Option<SinkError>>,
) -> Result<(), StageEnd> {
    if tx.send(out).await.is_err() {
        let why = error.lock().unwrap_or_else(|p| p.into_inner()).take();
        return Err(why.map_or(StageEnd::DeliveryEnded, StageEnd::Sink));
    }
    Ok(())
}

/// Why an enrichment stage ended before its input closed.
#[derive(Debug, thiserror::Error)]
pub enum StageEnd {
    /// Its sink failed (the delivery thread's error): the daemon stops with it.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The delivery thread ended without saying why (it panicked).
    #[error("the delivery thread ended")]
    DeliveryEnded,
}

/// Runs until `rx` closes; returns when every record taken was delivered.
pub async fn run(
    mut s: Settings,
    backend: Arc<dyn Backend>,
    rx: mpsc::Receiver<Pending>,
    deliver: Deliver,
    metrics: Arc<Metrics>,
) -> Result<(), StageEnd> {
    let Deliver { tx, error, done } = deliver;
    let windowed = match (&s.input, s.window.take()) {
        (InputSpec::Window(spec), Some(link)) => Some((spec.clone(), link)),
        _ => None,
    };
    let r = match windowed {
        Some(w) => windowed::stage(s, w, backend, rx, &tx, &error, metrics).await,
        None => stage(s, backend, rx, &tx, &error, metrics).await,
    };
    // Everything handed to the delivery thread reaches the sink before the stage counts as done.
    drop(tx);
    let _ = done.await;
    r
}

async fn stage(
    s: Settings,
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Pending>,
    tx: &mpsc::Sender<Vec<Delivered>>,
    error: &std::sync::Mutex<Option<SinkError>>,
    metrics: Arc<Metrics>,
) -> Result<(), StageEnd> {
    let pm = &metrics.pipelines[s.pipeline];
    let mut batch: Vec<Pending> = Vec::new();
    let mut cache = Cache::new(s.cache_entries, backend.as_ref());
    let labels = labels(backend.as_ref(), &s.input);
    loop {
        // Wait for the first record, then fill until full or the linger runs out.
        match rx.recv().await {
            Some(p) => batch.push(p),
            None => return Ok(()),
        }
        let deadline = tokio::time::Instant::now() + s.max_wait;
        let mut closed = false;
        while batch.len() < s.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }

        pm.batch_sizes.observe(batch.len() as f64);
        let mut jobs = Vec::with_capacity(batch.len());
        let mut inputs = Vec::new();
        for (rec, _) in &batch {
            if s.applied.as_ref().is_some_and(|a| !rec.after_applied(a)) {
                jobs.push(Job::Skip(Skip::AlreadyApplied));
                continue;
            }
            pm.logical_requests.fetch_add(1, Ordering::Relaxed);
            let job = match s.input.prepare(rec) {
                Prepared::Skip(reason) => Job::Skip(reason),
                Prepared::Reject(why) => Job::Reject(why),
                Prepared::Call { input, truncated } => {
                    let key = cache.key(&input);
                    match cache.get(key) {
                        Some(fields) => {
                            pm.cache_hits.fetch_add(1, Ordering::Relaxed);
                            Job::Cached { fields, truncated }
                        }
                        None => {
                            inputs.push(input);
                            Job::Call { truncated, key }
                        }
                    }
                }
            };
            jobs.push(job);
        }
        let results = calls::call_with_retries(backend.as_ref(), &inputs, pm, &s).await;
        let mut results = results.into_iter();
        let out: Vec<Delivered> = batch
            .drain(..)
            .zip(jobs)
            .map(|((rec, seq), job)| {
                let result = match &job {
                    Job::Call { .. } => results.next(),
                    _ => None,
                };
                finish(rec, seq, job, result, &mut cache, &labels, pm)
            })
            .collect();
        hand_on(tx, out, error).await?;
        if closed {
            return Ok(());
        }
    }
}
