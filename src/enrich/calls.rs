//! The calls for one batch, until every input has its final answer: planned by language,
//! count and bytes, made under the pipeline's limits, retried by error kind, and split in
//! halves when a whole call fails for what may be one input's fault (a poison row in a
//! SageMaker batch answered `424 ModelError`, a Comprehend batch refused outside its
//! `ErrorList`), so that only the inputs that fail alone end as dead letters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;

use super::Settings;
use crate::backend::{Backend, BackendError, ErrorKind, Input, ItemResult};
use crate::metrics::PipelineMetrics;
use crate::ratelimit::Sent;

/// A `Retry-After` longer than this (or than the pipeline's `max_retry_after_s`) is logged as
/// a warning; shorter ones at debug level.
const LONG_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Splits inputs into calls: one language per call (Comprehend takes one language code a
/// call), at most `max_batch` inputs and `max_batch_bytes` bytes each, in input order.
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

/// Waits for the budget's admission, then for the tokens per minute, then for the request
/// quota and the pacing (last: the pacing learns from when the call really goes out); returns
/// when the call is sent and the tokens it reserved. A call admitted in one budget window that
/// the limits held into the next counts in the window it goes out in: at once where that one
/// has room, else its tokens are given back and it waits for the next (its quota slot is spent).
async fn admitted_and_paced(
    backend: &dyn Backend,
    batch: &[Input],
    s: &Settings,
    pm: &PipelineMetrics,
) -> (Sent, u64) {
    loop {
        let window = match &s.budget {
            Some(b) => Some(b.admit(&pm.budget_paused).await),
            None => None,
        };
        let reserved: u64 = match &s.tokens {
            Some(t) => {
                let n = batch.iter().filter_map(|i| backend.token_estimate(i)).sum();
                t.reserve(n).await;
                n
            }
            None => 0,
        };
        let sent = s.limiter.acquire().await;
        match (&s.budget, window) {
            (Some(b), Some(w))
                if b.window_now() != w && b.try_admit(&pm.budget_paused).is_none() =>
            {
                // Not sent: the pacing forgets it, the tokens were not used.
                s.limiter.answered_otherwise(sent);
                if let Some(t) = &s.tokens {
                    t.settle(reserved, 0);
                }
            }
            _ => return (sent, reserved),
        }
    }
}

/// One call under the pipeline's limits: budget, request quota, tokens per minute. Tokens and
/// stop reasons of the answers are counted here, where the reservation is settled.
async fn limited_call(
    backend: &dyn Backend,
    batch: Vec<Input>,
    pm: &PipelineMetrics,
    s: &Settings,
) -> CallResult {
    let (sent, reserved) = admitted_and_paced(backend, &batch, s, pm).await;
    pm.actual_requests.fetch_add(1, Ordering::Relaxed);
    if batch.len() == 1 {
        pm.single_requests.fetch_add(1, Ordering::Relaxed);
    }
    let started = std::time::Instant::now();
    let r = backend.call(&batch).await;
    pm.call_latency.observe(started.elapsed().as_secs_f64());
    match &r {
        Ok(_) => s.limiter.answered(sent),
        Err(e) => {
            if e.kind == ErrorKind::Throttled {
                s.limiter.throttled(sent);
            } else {
                s.limiter.answered_otherwise(sent);
            }
            // At once, not after the round: calls of this round not yet made wait too.
            honour_retry_after(e, s);
        }
    }
    pm.paced_rate_bits
        .store(s.limiter.current_rate().to_bits(), Ordering::Relaxed);
    let used = count_usage(&r, pm, s);
    if let Some(t) = &s.tokens {
        // A call that failed before the model answered used nothing the service counts;
        // give the reservation back.
        t.settle(reserved, used);
    }
    r
}

/// Counts the tokens of a call's answers — and of answers that came but could not be used —
/// in the metrics and the budget, and their stop reasons; returns the tokens the service's
/// quota counts (every token processed, cached or not).
fn count_usage(r: &CallResult, pm: &PipelineMetrics, s: &Settings) -> u64 {
    let usages: Vec<&crate::backend::Usage> = match r {
        Ok(items) => items
            .iter()
            .filter_map(|i| match i {
                Ok(a) => a.usage.as_ref(),
                Err(e) => e.usage.as_deref(),
            })
            .collect(),
        Err(e) => e.usage.as_deref().into_iter().collect(),
    };
    let mut used = 0u64;
    for usage in usages {
        pm.input_tokens
            .fetch_add(usage.input_tokens, Ordering::Relaxed);
        pm.output_tokens
            .fetch_add(usage.output_tokens, Ordering::Relaxed);
        pm.cache_read_tokens
            .fetch_add(usage.cache_read_tokens, Ordering::Relaxed);
        pm.cache_write_tokens
            .fetch_add(usage.cache_write_tokens, Ordering::Relaxed);
        if let Some(stop) = &usage.stop {
            pm.stop_reasons[stop.class.index()].fetch_add(1, Ordering::Relaxed);
        }
        used += usage.input_tokens
            + usage.output_tokens
            + usage.cache_read_tokens
            + usage.cache_write_tokens;
        if let Some(b) = &s.budget {
            b.spent_tokens(b.weigh(
                usage.input_tokens + usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
            ));
        }
    }
    used
}

/// Where each input of the batch stands.
struct Progress {
    /// The final answer or failure, once there is one.
    results: Vec<Option<ItemResult>>,
    /// How many calls each input was part of.
    attempts: Vec<u32>,
    /// How many unusable answers each input got alone (only these count against
    /// `parse_attempts`).
    bad_outputs: Vec<u32>,
}

/// What one round of calls left to do.
#[derive(Default)]
struct Round {
    /// The halves of calls that failed as a whole with a splittable kind: the next round
    /// calls them as they are.
    halves: Vec<Vec<usize>>,
    /// A failure that asks for another round after a wait.
    wait: Option<BackendError>,
}

impl Progress {
    fn new(n: usize) -> Progress {
        Progress {
            results: vec![None; n],
            attempts: vec![0; n],
            bad_outputs: vec![0; n],
        }
    }

    /// The next round's calls: the halves of split calls, then every other input still
    /// without an answer, planned afresh.
    fn next_calls(
        &self,
        backend: &dyn Backend,
        inputs: &[Input],
        halves: Vec<Vec<usize>>,
    ) -> Vec<Vec<usize>> {
        let mut in_half = vec![false; inputs.len()];
        for &i in halves.iter().flatten() {
            in_half[i] = true;
        }
        let todo: Vec<usize> = (0..inputs.len())
            .filter(|&i| self.results[i].is_none() && !in_half[i])
            .collect();
        let mut calls = halves;
        calls.extend(plan_calls(backend, inputs, &todo));
        calls
    }

    fn count_attempts(&mut self, calls: &[Vec<usize>], pm: &PipelineMetrics) {
        for call in calls {
            if call.iter().any(|&i| self.attempts[i] > 0) {
                pm.retries.fetch_add(1, Ordering::Relaxed);
            }
            for &i in call {
                self.attempts[i] += 1;
            }
        }
    }

    /// Decides each input's fate from the round's answers.
    fn settle(
        &mut self,
        outcomes: Vec<(Vec<usize>, CallResult)>,
        backend: &dyn Backend,
        pm: &PipelineMetrics,
        s: &Settings,
    ) -> Round {
        let mut r = Round::default();
        for (call, result) in outcomes {
            match result {
                Ok(items) => {
                    pm.responses.fetch_add(1, Ordering::Relaxed);
                    let mut items = items.into_iter();
                    for &i in &call {
                        match items.next().unwrap_or_else(|| Err(missing(backend))) {
                            Ok(answer) => self.results[i] = Some(Ok(answer)),
                            Err(e) => self.fail(i, e, &mut r, pm, s.parse_attempts),
                        }
                    }
                }
                Err(e) => {
                    if e.kind == ErrorKind::Throttled {
                        pm.throttles.fetch_add(1, Ordering::Relaxed);
                    }
                    if e.kind.splittable() && call.len() > 1 {
                        pm.errors_by_kind[e.kind.index()].fetch_add(1, Ordering::Relaxed);
                        pm.batch_splits.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(pipeline = %s.name, rows = call.len(), error = %e,
                            "the whole call failed for what may be one row's fault; splitting it in halves");
                        let (a, b) = call.split_at(call.len().div_ceil(2));
                        r.halves.push(a.to_vec());
                        r.halves.push(b.to_vec());
                        continue;
                    }
                    for &i in &call {
                        self.fail(i, e.clone(), &mut r, pm, s.parse_attempts);
                    }
                }
            }
        }
        r
    }

    /// One input's failure: retried (transient kinds, an unusable answer within
    /// `parse_attempts`) or final.
    fn fail(
        &mut self,
        i: usize,
        e: BackendError,
        r: &mut Round,
        pm: &PipelineMetrics,
        parse_attempts: u32,
    ) {
        pm.errors_by_kind[e.kind.index()].fetch_add(1, Ordering::Relaxed);
        if e.kind == ErrorKind::BadOutput {
            self.bad_outputs[i] += 1;
        }
        let again = e.kind.transient()
            || (e.kind == ErrorKind::BadOutput && self.bad_outputs[i] < parse_attempts);
        if again {
            r.wait = Some(e);
        } else {
            self.results[i] = Some(Err(e));
        }
    }

    fn finish(self) -> Vec<(ItemResult, u32)> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(internal())))
            .zip(self.attempts)
            .collect()
    }
}

/// A service's `Retry-After`: no call to its quota before then, from any pipeline on it
/// (capped at the pipeline's `max_retry_after_s`, with a warning past that or a minute).
fn honour_retry_after(e: &BackendError, s: &Settings) {
    let Some(asked) = e.retry_after else {
        return;
    };
    let honoured = asked.min(s.max_retry_after);
    if asked > LONG_RETRY_AFTER.min(s.max_retry_after) {
        tracing::warn!(pipeline = %s.name, quota = %s.limiter.key, asked_s = asked.as_secs(),
            honoured_s = honoured.as_secs(), error = %e,
            "the service asks for a long wait before the next call; no call to this quota until then");
    } else {
        tracing::debug!(pipeline = %s.name, quota = %s.limiter.key, wait_ms = honoured.as_millis() as u64,
            "Retry-After: no call to this quota until then");
    }
    s.limiter.pause_for(honoured);
}

/// Calls until every input has a final answer: transient failures (throttling, timeouts, 5xx,
/// dropped connections, refused credentials, a missing model or endpoint) are retried for as
/// long as it takes, whole calls and failed items alike; a whole call of several inputs that
/// fails with a [`splittable`](ErrorKind::splittable) kind is split in halves, then halves
/// again, so at most about 2·k·log2(n) extra calls find k poison inputs among n; an unusable
/// answer for an input alone is retried up to `parse_attempts`; bad input alone is final. Each
/// answer comes with the number of calls its input was part of.
pub(super) async fn call_with_retries(
    backend: &dyn Backend,
    inputs: &[Input],
    pm: &PipelineMetrics,
    s: &Settings,
) -> Vec<(ItemResult, u32)> {
    let mut progress = Progress::new(inputs.len());
    let mut halves = Vec::new();
    let mut round = 0u32;
    loop {
        let calls = progress.next_calls(backend, inputs, std::mem::take(&mut halves));
        if calls.is_empty() {
            return progress.finish();
        }
        round += 1;
        progress.count_attempts(&calls, pm);
        let outcomes: Vec<(Vec<usize>, CallResult)> = futures_util::stream::iter(calls)
            .map(|call| async move {
                let batch: Vec<Input> = call.iter().map(|i| inputs[*i].clone()).collect();
                let r = limited_call(backend, batch, pm, s).await;
                (call, r)
            })
            .buffer_unordered(s.concurrency.max(1))
            .collect()
            .await;
        let r = progress.settle(outcomes, backend, pm, s);
        halves = r.halves;
        if let Some(e) = r.wait {
            wait_before_retry(&e, round, s).await;
        }
    }
}

/// Throttling: the limiter (paced by what the throttling showed, and paused by any
/// Retry-After) already spaces the next calls; waiting a backoff on top would leave the quota
/// idle. Other failures wait a
/// backoff; a refusal is logged as a warning every 10 rounds.
async fn wait_before_retry(e: &BackendError, round: u32, s: &Settings) {
    let d = match e.kind {
        ErrorKind::Throttled => Duration::ZERO,
        _ => crate::ratelimit::backoff(round),
    };
    if e.kind == ErrorKind::Denied && round % 10 == 1 {
        tracing::warn!(pipeline = %s.name, error = %e, round,
            "the backend refuses the pipeline's calls or lacks the model or endpoint; fix it — the rows wait and are retried");
    } else {
        tracing::debug!(pipeline = %s.name, error = %e, round, backoff_ms = d.as_millis() as u64, "retrying");
    }
    tokio::time::sleep(d).await;
}

/// An answer that named fewer items than were sent: the rest is retried.
fn missing(backend: &dyn Backend) -> BackendError {
    BackendError {
        backend: backend.name(),
        operation: String::new(),
        kind: ErrorKind::Transient,
        message: "no result for this input in the answer".into(),
        retry_after: None,
        usage: None,
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
        usage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::input::InputSpec;
    use crate::ratelimit::{Budget, Limiter};
    use std::sync::Arc;

    /// A backend never called: only the limits are exercised.
    struct NoCalls;

    impl Backend for NoCalls {
        fn name(&self) -> &'static str {
            "none"
        }
        fn labels(&self) -> serde_json::Map<String, serde_json::Value> {
            serde_json::Map::new()
        }
        fn cache_scope(&self) -> String {
            String::new()
        }
        fn max_batch(&self) -> usize {
            1
        }
        fn call<'a>(&'a self, _inputs: &'a [Input]) -> crate::backend::BoxFuture<'a, CallResult> {
            Box::pin(async { Err(internal()) })
        }
    }

    fn settings(budget: Budget, requests_per_second: f64) -> Settings {
        Settings {
            pipeline: 0,
            name: "p".into(),
            input: InputSpec::Csv { columns: vec![] },
            max_batch: 1,
            max_wait: Duration::ZERO,
            concurrency: 1,
            parse_attempts: 1,
            max_retry_after: Duration::ZERO,
            limiter: Arc::new(Limiter::new("q".into(), requests_per_second)),
            tokens: None,
            budget: Some(budget),
            cache_entries: 0,
            applied: None,
            window: None,
        }
    }

    /// Two calls per 1-second window under a quota of 4 per second, started 0.8 s into a
    /// window: the second call is admitted in the first window but the quota holds it into
    /// the next, where it must count — else that window sends three.
    #[tokio::test]
    async fn a_call_the_quota_holds_into_the_next_window_counts_there() {
        let s = settings(Budget::new("p".into(), Some(2), None, 1), 4.0);
        let pm = PipelineMetrics::default();
        let into_second = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_millis()
        };
        let ms = into_second();
        tokio::time::sleep(Duration::from_millis(u64::from((1800 - ms) % 1000))).await;
        let mut sent_in = std::collections::BTreeMap::new();
        for _ in 0..6 {
            let (sent, _) = admitted_and_paced(&NoCalls, &[], &s, &pm).await;
            let w = s.budget.as_ref().map(|b| b.window_now());
            *sent_in.entry(w).or_insert(0) += 1;
            s.limiter.answered(sent);
        }
        assert!(sent_in.values().all(|n| *n <= 2), "{sent_in:?}");
    }
}
