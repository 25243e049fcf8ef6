//! The enrichment stage: per pipeline, records are batched (by count, bytes and linger), sent
//! to the backend under the pipeline's limits (requests per second, tokens per minute, a
//! concurrency cap, a budget), retried by error kind with exponential backoff and full jitter,
//! and handed on to the sink in their original order (so the order per key is kept).
//!
//! Like the other stages it is joined by channels of typed records: it can later run as a
//! Kafka consumer-group worker without a rewrite.

pub mod input;
pub mod template;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError, ErrorKind, Input, ItemResult};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::pipeline::ChangeRecord;
use crate::ratelimit::{Budget, Limiter, TokenBucket};
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
    pub error: Arc<std::sync::Mutex<Option<String>>>,
    /// Fires when the thread has handed over everything it was sent.
    pub done: tokio::sync::oneshot::Receiver<()>,
}

pub struct Settings {
    pub pipeline: usize,
    pub input: InputSpec,
    /// Records gathered before calls are made (the calls' sizes times the concurrency).
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Calls with an unusable answer before the rows are dead letters.
    pub parse_attempts: u32,
    /// The quota this pipeline's calls draw on (shared with other pipelines on the same one).
    pub limiter: Arc<Limiter>,
    /// Tokens per minute (Bedrock), shared like the quota.
    pub tokens: Option<Arc<TokenBucket>>,
    pub budget: Option<Budget>,
    /// Answers kept for identical inputs; 0 turns the cache off.
    pub cache_entries: usize,
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

/// Backoff for attempt `n` (1-based): full jitter over an exponential ceiling, at least any
/// Retry-After the service gave.
pub fn backoff(n: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling =
        Duration::from_millis(50u64.saturating_mul(1 << n.min(10))).min(Duration::from_secs(20));
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64));
    jittered.max(retry_after.unwrap_or_default())
}

/// Cuts `s` to at most `max` UTF-8 bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

enum Job {
    /// Sent to the backend (its input is the next of the batch); `key` is its cache key.
    Call { truncated: bool, key: u128 },
    /// No call: the enrichment is already known.
    Done(Map<String, Value>),
    /// No call: the row can never be sent, it is a dead letter.
    Reject(String),
}

/// Runs until `rx` closes; returns when every record taken was delivered.
pub async fn run(
    s: Settings,
    backend: Arc<dyn Backend>,
    rx: mpsc::Receiver<Pending>,
    deliver: Deliver,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let Deliver { tx, error, done } = deliver;
    let r = stage(s, backend, rx, &tx, &error, metrics).await;
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
    error: &std::sync::Mutex<Option<String>>,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let pm = &metrics.pipelines[s.pipeline];
    let mut batch: Vec<Pending> = Vec::new();
    let mut cache = Cache::new(s.cache_entries, backend.as_ref());
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
            pm.logical_requests.fetch_add(1, Ordering::Relaxed);
            let job = match s.input.prepare(rec) {
                Prepared::Skip(why) => {
                    let mut m = Map::new();
                    m.insert("skipped".into(), Value::String(why.into()));
                    Job::Done(m)
                }
                Prepared::Reject(why) => Job::Reject(why),
                Prepared::Call { input, truncated } => {
                    let key = cache.key(&input);
                    match cache.get(key) {
                        Some(mut hit) => {
                            pm.cache_hits.fetch_add(1, Ordering::Relaxed);
                            if truncated {
                                hit.insert("truncated".into(), Value::Bool(true));
                            }
                            Job::Done(hit)
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
        let results = call_with_retries(backend.as_ref(), &inputs, pm, &s).await;
        let mut results = results.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for ((mut rec, seq), job) in batch.drain(..).zip(jobs) {
            let mut m = backend.labels();
            let mut failed = None;
            match job {
                Job::Done(extra) => m.extend(extra),
                Job::Reject(why) => failed = Some((ErrorKind::BadInput, why, 0)),
                Job::Call { truncated, key } => match results.next() {
                    Some((Ok(r), _)) => {
                        cache.put(key, &r);
                        m.extend(r);
                        if truncated {
                            m.insert("truncated".into(), Value::Bool(true));
                        }
                    }
                    Some((Err(e), attempts)) => failed = Some((e.kind, e.message, attempts)),
                    None => failed = Some((ErrorKind::Transient, "no result (internal)".into(), 0)),
                },
            }
            let dead = failed.is_some();
            if let Some((kind, message, attempts)) = failed {
                pm.enrichment_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pipeline = %rec.source.pipeline, kind = kind.as_str(), error = %message, attempts,
                    key = %serde_json::to_string(&rec.key).unwrap_or_default(),
                    "this row cannot be enriched; it goes to the dead letters");
                m.insert(
                    "error".into(),
                    serde_json::json!({"kind": kind.as_str(), "message": message, "attempts": attempts}),
                );
            }
            rec.enrichment = m;
            out.push(Delivered { rec, seq, dead });
        }
        if tx.send(out).await.is_err() {
            let why = error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(why.unwrap_or_else(|| "the delivery thread ended".into()));
        }
        if closed {
            return Ok(());
        }
    }
}

/// Splits the inputs still unanswered into calls: one language per call (Comprehend takes
/// one language code a call), at most `max_batch` inputs and `max_bytes` bytes each.
fn plan_calls(backend: &dyn Backend, inputs: &[Input], todo: &[usize]) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for &i in todo {
        groups
            .entry(inputs[i].language.as_str())
            .or_default()
            .push(i);
    }
    let (max_n, max_bytes) = (backend.max_batch().max(1), backend.max_batch_bytes());
    let mut calls = Vec::new();
    for group in groups.into_values() {
        let mut call: Vec<usize> = Vec::new();
        let mut bytes = 0usize;
        for i in group {
            let b = inputs[i].text.len() + 1;
            if !call.is_empty() && (call.len() >= max_n || bytes + b > max_bytes) {
                calls.push(std::mem::take(&mut call));
                bytes = 0;
            }
            call.push(i);
            bytes += b;
        }
        if !call.is_empty() {
            calls.push(call);
        }
    }
    calls
}

type CallResult = Result<Vec<ItemResult>, BackendError>;

/// One call under the pipeline's limits: budget, request quota, tokens per minute.
async fn limited_call(
    backend: &dyn Backend,
    batch: Vec<Input>,
    pm: &PipelineMetrics,
    s: &Settings,
) -> Result<Vec<ItemResult>, BackendError> {
    if let Some(b) = &s.budget {
        b.admit(&pm.budget_paused).await;
    }
    s.limiter.acquire().await;
    let reserved: u64 = match &s.tokens {
        Some(t) => {
            let n = batch.iter().filter_map(|i| backend.token_estimate(i)).sum();
            t.reserve(n).await;
            n
        }
        None => 0,
    };
    pm.actual_requests.fetch_add(1, Ordering::Relaxed);
    if batch.len() == 1 {
        pm.single_requests.fetch_add(1, Ordering::Relaxed);
    }
    let started = std::time::Instant::now();
    let r = backend.call(&batch).await;
    pm.call_latency.observe(started.elapsed().as_secs_f64());
    let used: u64 = match &r {
        Ok(items) => items
            .iter()
            .flatten()
            .map(|m| {
                let n = |k: &str| {
                    m.get("usage")
                        .and_then(|u| u.get(k))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                let (i, o) = (n("input_tokens"), n("output_tokens"));
                pm.input_tokens.fetch_add(i, Ordering::Relaxed);
                pm.output_tokens.fetch_add(o, Ordering::Relaxed);
                i + o
            })
            .sum(),
        Err(_) => 0,
    };
    if let Some(t) = &s.tokens {
        // A failed call used nothing the service counts; give the reservation back.
        t.settle(reserved, used);
    }
    if let Some(b) = &s.budget {
        b.spent_tokens(used);
    }
    r
}

/// Calls until every input has a final answer: transient failures (throttling, timeouts, 5xx,
/// dropped connections, refused credentials) are retried for as long as it takes, whole calls
/// and failed items alike; an unusable answer is retried up to `parse_attempts`; bad input is
/// final. Each answer comes with the number of calls its input was part of.
async fn call_with_retries(
    backend: &dyn Backend,
    inputs: &[Input],
    pm: &PipelineMetrics,
    s: &Settings,
) -> Vec<(ItemResult, u32)> {
    let mut results: Vec<Option<ItemResult>> = vec![None; inputs.len()];
    // How many calls each input was part of.
    let mut attempts = vec![0u32; inputs.len()];
    // How many unusable answers each input got (only these count against `parse_attempts`).
    let mut bad_outputs = vec![0u32; inputs.len()];
    let mut round = 0u32;
    loop {
        let todo: Vec<usize> = (0..inputs.len())
            .filter(|i| results[*i].is_none())
            .collect();
        if todo.is_empty() {
            return results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(internal())))
                .zip(attempts)
                .collect();
        }
        round += 1;
        let calls = plan_calls(backend, inputs, &todo);
        for call in &calls {
            if call.iter().any(|i| attempts[*i] > 0) {
                pm.retries.fetch_add(1, Ordering::Relaxed);
            }
            for &i in call {
                attempts[i] += 1;
            }
        }
        let outcomes: Vec<(Vec<usize>, CallResult)> = futures_util::stream::iter(calls)
            .map(|call| async move {
                let batch: Vec<Input> = call.iter().map(|i| inputs[*i].clone()).collect();
                let r = limited_call(backend, batch, pm, s).await;
                (call, r)
            })
            .buffer_unordered(s.concurrency.max(1))
            .collect()
            .await;
        let mut wait: Option<BackendError> = None;
        let mut throttled = false;
        let mut answered = false;
        // Decides one input's fate from one failure.
        let mut settle = |i: usize, e: BackendError, results: &mut Vec<Option<ItemResult>>| {
            pm.errors_by_kind[e.kind.index()].fetch_add(1, Ordering::Relaxed);
            if e.kind == ErrorKind::BadOutput {
                bad_outputs[i] += 1;
            }
            let again = e.kind.transient()
                || (e.kind == ErrorKind::BadOutput && bad_outputs[i] < s.parse_attempts);
            if e.kind == ErrorKind::Throttled {
                throttled = true;
            }
            if again {
                wait = Some(e);
            } else {
                results[i] = Some(Err(e));
            }
        };
        for (call, r) in outcomes {
            match r {
                Ok(items) => {
                    answered = true;
                    pm.responses.fetch_add(1, Ordering::Relaxed);
                    let mut items = items.into_iter();
                    for &i in &call {
                        match items.next() {
                            Some(Ok(m)) => results[i] = Some(Ok(m)),
                            Some(Err(e)) => settle(i, e, &mut results),
                            None => settle(i, missing(backend), &mut results),
                        }
                    }
                }
                Err(e) => {
                    if e.kind == ErrorKind::Throttled {
                        pm.throttles.fetch_add(1, Ordering::Relaxed);
                    }
                    for &i in &call {
                        settle(i, e.clone(), &mut results);
                    }
                }
            }
        }
        if throttled {
            s.limiter.throttled();
        } else if answered {
            s.limiter.succeeded();
        }
        if let Some(e) = wait {
            // Throttling: the limiter, cut by AIMD, already spaces the next calls; waiting a
            // backoff on top would leave the quota idle. Only a Retry-After is honoured.
            let d = match e.kind {
                ErrorKind::Throttled => e.retry_after.unwrap_or_default(),
                _ => backoff(round, e.retry_after),
            };
            if e.kind == ErrorKind::Denied && round % 10 == 1 {
                tracing::warn!(error = %e, round, "the backend refuses the pipeline's calls; fix the credentials, model or endpoint — the rows wait and are retried");
            } else {
                tracing::debug!(error = %e, round, backoff_ms = d.as_millis() as u64, "retrying");
            }
            tokio::time::sleep(d).await;
        }
    }
}

/// An answer that named fewer items than were sent: the rest is retried.
fn missing(backend: &dyn Backend) -> BackendError {
    BackendError {
        backend: backend.name(),
        operation: String::new(),
        kind: ErrorKind::Transient,
        message: "no result for this input in the answer".into(),
        retry_after: None,
    }
}

/// Only for an input that somehow left the retry loop without an answer.
fn internal() -> BackendError {
    BackendError {
        backend: "internal",
        operation: String::new(),
        kind: ErrorKind::Transient,
        message: "no result".into(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_a_character_boundary() {
        let s = "é".repeat(3000); // 6000 bytes
        let (t, cut) = truncate(&s, 5000);
        assert!(cut);
        assert_eq!(t.len(), 5000);
        let s = format!("a{}", "é".repeat(2500)); // 5001 bytes
        let (t, cut) = truncate(&s, 5000);
        assert_eq!((t.len(), cut), (4999, true));
        assert_eq!(truncate("abc", 5000), ("abc", false));
    }

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        for n in 1..20 {
            assert!(backoff(n, None) <= Duration::from_secs(20));
        }
        assert!(backoff(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
