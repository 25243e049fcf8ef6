//! The enrichment stage: per pipeline, records are batched (by count and linger), sent to the
//! backend, retried by error kind with exponential backoff and full jitter, and handed on to
//! the sink in their original order (so the order per key is kept).
//!
//! Like the other stages it is joined by channels of typed records: it can later run as a
//! Kafka consumer-group worker without a rewrite.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::comprehend::MAX_DOCUMENT_BYTES;
use crate::backend::{Backend, BackendError, Input, ItemResult};
use crate::metrics::Metrics;
use crate::pipeline::ChangeRecord;

/// A record waiting for enrichment, with the sequence number its acknowledgement names.
pub type Pending = (ChangeRecord, u64);

/// Where enriched records go (the sink stage).
/// The flag says the row failed for good and belongs in the dead letters.
pub type Deliver = Arc<dyn Fn(&ChangeRecord, u64, bool) -> Result<(), String> + Send + Sync>;

pub struct Settings {
    pub pipeline: usize,
    pub text_column: String,
    pub language: String,
    /// A column holding each row's language code (rows where it is NULL or empty use `language`).
    pub language_column: Option<String>,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// The quota this pipeline's calls draw on (shared with other pipelines on the same one).
    pub limiter: Arc<crate::ratelimit::Limiter>,
    /// Answers kept for identical inputs; 0 turns the cache off.
    pub cache_entries: usize,
}

/// A bounded cache of answers, keyed by a 128-bit hash of backend, operation, language and
/// input (a hit makes no call).
struct Cache {
    lru: Option<lru::LruCache<u128, Map<String, Value>>>,
}

impl Cache {
    fn new(entries: usize) -> Cache {
        Cache {
            lru: std::num::NonZeroUsize::new(entries).map(lru::LruCache::new),
        }
    }

    fn key(backend: &dyn Backend, input: &Input) -> u128 {
        use std::hash::{Hash, Hasher};
        let half = |salt: u8| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                salt,
                backend.name(),
                backend.operation(),
                &input.language,
                &input.text,
            )
                .hash(&mut h);
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
    Call { text_truncated: bool, key: u128 },
    /// No call: the enrichment is already known.
    Done(Map<String, Value>),
}

/// Runs until `rx` closes; returns when every record taken was delivered.
pub async fn run(
    s: Settings,
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Pending>,
    deliver: Deliver,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let pm = &metrics.pipelines[s.pipeline];
    let mut batch: Vec<Pending> = Vec::new();
    let mut cache = Cache::new(s.cache_entries);
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

        let mut jobs = Vec::with_capacity(batch.len());
        let mut inputs = Vec::new();
        for (rec, _) in &batch {
            pm.logical_requests.fetch_add(1, Ordering::Relaxed);
            let mut job = job_for(&s, rec, &mut inputs);
            if let Job::Call {
                text_truncated,
                ref mut key,
            } = job
            {
                if let Some(input) = inputs.last() {
                    *key = Cache::key(backend.as_ref(), input);
                    if let Some(mut hit) = cache.get(*key) {
                        inputs.pop();
                        pm.cache_hits.fetch_add(1, Ordering::Relaxed);
                        if text_truncated {
                            hit.insert("truncated".into(), Value::Bool(true));
                        }
                        job = Job::Done(hit);
                    }
                }
            }
            jobs.push(job);
        }
        let results = call_with_retries(backend.as_ref(), &inputs, &metrics, &s).await;
        let mut results = results.into_iter();
        for ((mut rec, seq), job) in batch.drain(..).zip(jobs) {
            let mut m = Map::new();
            m.insert("backend".into(), Value::String(backend.name().into()));
            m.insert(
                "operation".into(),
                Value::String(backend.operation().into()),
            );
            let mut dead = false;
            match job {
                Job::Done(extra) => m.extend(extra),
                Job::Call {
                    text_truncated,
                    key,
                } => match results.next() {
                    Some((Ok(r), _)) => {
                        cache.put(key, &r);
                        m.extend(r);
                        if text_truncated {
                            m.insert("truncated".into(), Value::Bool(true));
                        }
                    }
                    Some((Err(e), attempts)) => {
                        dead = true;
                        pm.enrichment_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(pipeline = %rec.source.pipeline, error = %e, attempts,
                            key = %serde_json::to_string(&rec.key).unwrap_or_default(),
                            "the backend rejected this row for good; it goes to the dead letters");
                        m.insert(
                            "error".into(),
                            serde_json::json!({"kind": e.kind.as_str(), "message": e.message, "attempts": attempts}),
                        );
                    }
                    None => {
                        let e = missing_result()
                            .err()
                            .map(|e| e.message)
                            .unwrap_or_default();
                        m.insert(
                            "error".into(),
                            serde_json::json!({"kind": "internal", "message": e}),
                        );
                    }
                },
            }
            rec.enrichment = m;
            deliver(&rec, seq, dead)?;
        }
        if closed {
            return Ok(());
        }
    }
}

/// What a record needs: a call (its input appended to `inputs`) or nothing.
fn job_for(s: &Settings, rec: &ChangeRecord, inputs: &mut Vec<Input>) -> Job {
    let skip = |why: &str| {
        let mut m = Map::new();
        m.insert("skipped".into(), Value::String(why.into()));
        Job::Done(m)
    };
    let Some(after) = &rec.after else {
        return skip("deleted");
    };
    let text = match after.get(&s.text_column) {
        Some(Value::String(t)) if !t.trim().is_empty() => t,
        _ => return skip("no text"),
    };
    // An update that did not change the input makes no call (and cannot loop on write-back).
    if let Some(before) = &rec.before {
        let same = |c: &String| before.get(c) == after.get(c);
        if same(&s.text_column) && s.language_column.as_ref().is_none_or(same) {
            return skip("input unchanged");
        }
    }
    let (t, cut) = truncate(text, MAX_DOCUMENT_BYTES);
    inputs.push(Input {
        text: t.to_string(),
        language: s
            .language_column
            .as_ref()
            .and_then(|c| after.get(c))
            .and_then(Value::as_str)
            .filter(|l| !l.trim().is_empty())
            .unwrap_or(&s.language)
            .to_string(),
    });
    Job::Call {
        key: 0,
        text_truncated: cut,
    }
}

/// Calls until every input has a final answer: transient failures (throttling, timeouts, 5xx,
/// dropped connections) are retried for as long as it takes, whole calls and failed items alike;
/// bad input is final. Each answer comes with the number of calls its input was part of.
async fn call_with_retries(
    backend: &dyn Backend,
    inputs: &[Input],
    metrics: &Metrics,
    s: &Settings,
) -> Vec<(ItemResult, u32)> {
    let pm = &metrics.pipelines[s.pipeline];
    let mut results: Vec<Option<ItemResult>> = vec![None; inputs.len()];
    // How many calls each input was part of.
    let mut attempts = vec![0u32; inputs.len()];
    let mut round = 0u32;
    loop {
        // What is still unanswered, one call per language (a call takes one language code).
        let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for i in (0..inputs.len()).filter(|i| results[*i].is_none()) {
            groups
                .entry(inputs[i].language.as_str())
                .or_default()
                .push(i);
        }
        if groups.is_empty() {
            return results
                .into_iter()
                .map(|r| r.unwrap_or_else(missing_result))
                .zip(attempts)
                .collect();
        }
        round += 1;
        let mut wait: Option<BackendError> = None;
        for todo in groups.into_values() {
            let batch: Vec<Input> = todo.iter().map(|i| inputs[*i].clone()).collect();
            if todo.iter().any(|i| attempts[*i] > 0) {
                pm.retries.fetch_add(1, Ordering::Relaxed);
            }
            for &i in &todo {
                attempts[i] += 1;
            }
            s.limiter.acquire().await;
            pm.actual_requests.fetch_add(1, Ordering::Relaxed);
            if batch.len() == 1 {
                pm.single_requests.fetch_add(1, Ordering::Relaxed);
            }
            match backend.call(&batch).await {
                Ok(items) => {
                    pm.responses.fetch_add(1, Ordering::Relaxed);
                    s.limiter.succeeded();
                    for (k, r) in items.into_iter().enumerate() {
                        let Some(&i) = todo.get(k) else { break };
                        match r {
                            Err(e) if e.kind.retryable() => wait = Some(e),
                            r => results[i] = Some(r),
                        }
                    }
                }
                Err(e) if e.kind.retryable() => {
                    if e.kind == crate::backend::ErrorKind::Throttled {
                        pm.throttles.fetch_add(1, Ordering::Relaxed);
                        s.limiter.throttled();
                    }
                    wait = Some(e);
                }
                Err(e) => {
                    for i in todo {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        if let Some(e) = wait {
            let d = backoff(round, e.retry_after);
            tracing::debug!(error = %e, round, backoff_ms = d.as_millis() as u64, "retrying");
            tokio::time::sleep(d).await;
        }
    }
}

/// Only for an input that somehow left the retry loop without an answer.
fn missing_result() -> ItemResult {
    Err(BackendError {
        backend: "internal",
        operation: "",
        kind: crate::backend::ErrorKind::Transient,
        message: "no result".into(),
        retry_after: None,
    })
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
