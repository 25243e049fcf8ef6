//! Rate limits for backend calls. `governor` enforces the configured quota (requests per
//! second); under it, [`pacing`] learns the rate the service really allows from its throttling
//! answers — a token bucket's throttling slows the calls to the spacing the service accepts,
//! random throttling does not slow them — and every caller of the quota takes its slot from
//! one schedule at that spacing. Limiters are shared by key (backend, operation, region,
//! endpoint): pipelines that draw on one quota share one limiter.

pub mod pacing;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use rand::Rng;

use pacing::{Pacing, Verdict};

/// The calls to one quota.
pub struct Limiter {
    pub key: String,
    pub requests_per_second: f64,
    quota: governor::DefaultDirectRateLimiter,
    /// The configured interval between calls.
    base: Duration,
    pacing: Mutex<Pacing>,
    /// The next free slot (time after `created`) when calls are paced slower than the quota.
    next_slot: Mutex<Duration>,
    created: Instant,
    /// Milliseconds after `created` before which no call may be made (a Retry-After).
    paused_until_ms: AtomicU64,
    /// The least spacing of this process's calls when it has a share of the quota only (a
    /// worker of a consumer group, see [`Registry::set_share`]); zero: the whole quota.
    share_interval: Mutex<Duration>,
}

/// When a call was sent (time after its limiter was made): reported back with its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Sent(Duration);

impl Limiter {
    pub fn new(key: String, requests_per_second: f64) -> Limiter {
        let base = Duration::from_secs_f64(1.0 / requests_per_second.max(0.001));
        let quota = Quota::with_period(base)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Limiter {
            key,
            requests_per_second,
            quota: RateLimiter::direct(quota),
            base,
            pacing: Mutex::new(Pacing::new(base)),
            next_slot: Mutex::new(Duration::ZERO),
            created: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            share_interval: Mutex::new(Duration::ZERO),
        }
    }

    /// This process may make `share` (0–1) of the quota's calls: its calls are spaced so that
    /// no second holds more than its whole part of them, `floor(rate × share)` calls, so that
    /// the processes' shares together never pass the quota in any second. Below one call a
    /// second (`rate × share` < 1) it makes one call every `1 / (rate × share)` seconds: the
    /// quota then holds on average, and two processes' calls may fall in one second.
    /// `share` ≥ 1: the whole quota. While a group rebalances, the old and new shares overlap
    /// a moment; a slot reserved under an old, slower share is kept.
    pub fn set_share(&self, share: f64) {
        let per_second = self.requests_per_second * share;
        let interval = match per_second {
            _ if share >= 1.0 => Duration::ZERO,
            // 5% apart more: calls reach the service with some jitter (a few ms on a loaded
            // machine), which must not put one more of them in a second.
            p if p >= 1.0 => Duration::from_secs_f64(1.05 / p.floor()),
            p if p > 0.0 => Duration::from_secs_f64(1.0 / p),
            // No partition: no calls to make; the slowest spacing all the same.
            _ => Duration::from_secs(60),
        };
        *self
            .share_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = interval;
    }

    fn pacing(&self) -> std::sync::MutexGuard<'_, Pacing> {
        // Plain arithmetic under the lock: a panic cannot leave it half-updated.
        self.pacing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No call to this quota for `d` from now, by any pipeline drawing on it (a service's
    /// Retry-After). A later, longer pause extends it; a shorter one changes nothing.
    pub fn pause_for(&self, d: Duration) {
        let until = self
            .created
            .elapsed()
            .saturating_add(d)
            .as_micros()
            .div_ceil(1000);
        let until = u64::try_from(until).unwrap_or(u64::MAX);
        self.paused_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// How long the quota stays paused from now.
    pub fn paused_for(&self) -> Duration {
        let until = self.paused_until_ms.load(Ordering::Relaxed);
        let now = self.created.elapsed().as_millis() as u64;
        Duration::from_millis(until.saturating_sub(now))
    }

    async fn wait_pause(&self) {
        loop {
            let d = self.paused_for();
            if d.is_zero() {
                return;
            }
            tokio::time::sleep(d).await;
        }
    }

    /// Waits until a call may be made — after any pause, within the quota, at the learned
    /// pacing — and returns when it is sent, to report with its outcome.
    pub async fn acquire(&self) -> Sent {
        self.wait_pause().await;
        self.quota.until_ready().await;
        let share = *self
            .share_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let interval = self.pacing().interval().max(share);
        if interval > self.base {
            let slot = {
                let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
                let slot = (*next).max(self.created.elapsed());
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until((self.created + slot).into()).await;
        }
        // A pause set while this call waited holds it too.
        self.wait_pause().await;
        let sent = self.created.elapsed();
        self.pacing().sending(sent);
        Sent(sent)
    }

    /// The call sent at `sent` failed for another reason than throttling (it says nothing of
    /// the spacing the service accepts).
    pub fn answered_otherwise(&self, sent: Sent) {
        self.pacing().answered_otherwise(sent.0);
    }

    /// The call sent at `sent` was answered (not throttled).
    pub fn answered(&self, sent: Sent) {
        self.pacing().accepted(sent.0, self.created.elapsed());
    }

    /// The call sent at `sent` was throttled: a token bucket's throttling slows the pacing,
    /// random throttling does not (see [`pacing`]).
    pub fn throttled(&self, sent: Sent) {
        let (verdict, interval, before, resume) = {
            let mut p = self.pacing();
            let before = p.interval();
            let v = p.throttled(sent.0, self.created.elapsed());
            (v, p.interval(), before, p.resume_at(sent.0))
        };
        {
            // The throttled call used nothing of the service's bucket: the next slot is one
            // interval after the last call that was not throttled — unless a call already
            // waits for a later slot (moving the slots then would crowd the waiting calls).
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            if *next <= sent.0 + before {
                *next = resume;
            }
        }
        let rate = 1.0 / interval.as_secs_f64();
        match verdict {
            Verdict::Spacing => tracing::debug!(quota = %self.key, calls_per_second = rate,
                "throttled closer to the previous accepted call than accepted calls were: a token bucket; pacing the calls"),
            Verdict::Random => tracing::debug!(quota = %self.key, calls_per_second = rate,
                "throttled though spaced as accepted calls were (or too few accepted yet to tell): not taken for the rate's doing; the pacing stays"),
            Verdict::Blind => tracing::debug!(quota = %self.key, calls_per_second = rate,
                "throttled with no recent accepted gap to compare with"),
        }
    }

    /// The rate calls are paced at now, in requests per second.
    pub fn current_rate(&self) -> f64 {
        1.0 / self.pacing().interval().as_secs_f64()
    }
}

/// Limiters by key, created on first use.
#[derive(Default)]
pub struct Registry {
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
    buckets: Mutex<HashMap<String, Arc<TokenBucket>>>,
    /// This process's share of every quota (`None`: all of it).
    share: Mutex<Option<f64>>,
}

impl Registry {
    /// This process makes `share` (0–1) of each quota's calls from now on (a worker's share
    /// of the consumer group's partitions): every limiter, and those made later.
    pub fn set_share(&self, share: f64) {
        *self.share.lock().unwrap_or_else(|p| p.into_inner()) = Some(share);
        for l in self
            .limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            l.set_share(share);
        }
    }

    /// The limiter for `key`; the first pipeline to name a key sets its rate, and a different
    /// rate named later for the same quota is reported (the first one stays).
    pub fn get(&self, key: &str, requests_per_second: f64) -> Arc<Limiter> {
        let mut m = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let share = *self.share.lock().unwrap_or_else(|p| p.into_inner());
        let l = m.entry(key.to_string()).or_insert_with(|| {
            let l = Limiter::new(key.to_string(), requests_per_second);
            if let Some(s) = share {
                l.set_share(s);
            }
            Arc::new(l)
        });
        if (l.requests_per_second - requests_per_second).abs() > f64::EPSILON {
            tracing::warn!(
                quota = key,
                kept = l.requests_per_second,
                ignored = requests_per_second,
                "pipelines sharing one quota name different requests_per_second; the first is kept"
            );
        }
        l.clone()
    }

    /// The tokens-per-minute bucket for `key`, shared like the request quota.
    pub fn bucket(&self, key: &str, per_minute: u64) -> Arc<TokenBucket> {
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string())
            .or_insert_with(|| Arc::new(TokenBucket::new(per_minute)))
            .clone()
    }
}

/// Tokens per minute (Bedrock). Each call reserves its estimate (input bytes / 4 plus
/// `max_tokens`) before it is made and settles on the tokens the answer reports, giving back
/// what it did not use. `governor` is not used here: its cells cannot be given back, which a
/// reservation settled after the call needs.
pub struct TokenBucket {
    per_minute: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A bucket of `per_minute` tokens, full.
    pub fn new(per_minute: u64) -> TokenBucket {
        TokenBucket {
            per_minute: per_minute as f64,
            state: Mutex::new((per_minute as f64, Instant::now())),
        }
    }

    fn refill(&self, s: &mut (f64, Instant)) {
        let now = Instant::now();
        let add = now.duration_since(s.1).as_secs_f64() * self.per_minute / 60.0;
        s.0 = (s.0 + add).min(self.per_minute);
        s.1 = now;
    }

    /// Waits until `n` tokens are there and takes them (a call larger than a whole minute's
    /// tokens waits for a full bucket, then goes).
    pub async fn reserve(&self, n: u64) {
        let n = (n as f64).min(self.per_minute);
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                self.refill(&mut s);
                if s.0 >= n {
                    s.0 -= n;
                    return;
                }
                (n - s.0) * 60.0 / self.per_minute
            };
            tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001))).await;
        }
    }

    /// The call used `used` of the `reserved` tokens: give back the rest, or take the excess.
    pub fn settle(&self, reserved: u64, used: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s);
        s.0 = (s.0 + reserved as f64 - used as f64).min(self.per_minute);
    }

    /// Tokens there now.
    #[cfg(test)]
    pub fn available(&self) -> f64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s);
        s.0
    }
}

/// A pipeline's spending ceiling per window (windows aligned to the Unix epoch, so a
/// 86,400-second window is a UTC day). When spent, calls wait for the next window: nothing
/// is lost, the lag grows and the pause shows in the log and the metrics.
pub struct Budget {
    pub pipeline: String,
    requests: Option<u64>,
    tokens: Option<u64>,
    window: u64,
    /// What a token read from and written to the prompt cache counts for, against `tokens`.
    cache_weights: (f64, f64),
    /// (window number, requests used, tokens used, pause logged in this window)
    state: Mutex<(u64, u64, u64, bool)>,
}

impl Budget {
    pub fn new(
        pipeline: String,
        requests: Option<u64>,
        tokens: Option<u64>,
        window_seconds: u64,
    ) -> Budget {
        Budget {
            pipeline,
            requests,
            tokens,
            window: window_seconds.max(1),
            cache_weights: (1.0, 1.0),
            state: Mutex::new((0, 0, 0, false)),
        }
    }

    /// Prompt-cache tokens count at these weights (read, write) against the token budget.
    pub fn with_cache_weights(mut self, read: f64, write: f64) -> Budget {
        self.cache_weights = (read, write);
        self
    }

    /// The tokens a call spends against the budget: `plain` (uncached input and output) at
    /// their count, cache reads and writes at their weights, rounded up.
    pub fn weigh(&self, plain: u64, cache_read: u64, cache_write: u64) -> u64 {
        let (r, w) = self.cache_weights;
        plain + (cache_read as f64 * r + cache_write as f64 * w).ceil() as u64
    }

    fn now() -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }

    /// The number of the window `now` falls in (windows of `window_seconds`, aligned to the
    /// Unix epoch).
    pub fn window_now(&self) -> u64 {
        Self::now().as_secs() / self.window
    }

    /// Waits until the window has room for one more call, counts it and returns the window's
    /// number (see [`Budget::window_now`]). `paused` is set while it waits.
    pub async fn admit(&self, paused: &std::sync::atomic::AtomicU64) -> u64 {
        loop {
            match self.take(paused) {
                Ok(window) => return window,
                Err(wait) => tokio::time::sleep(wait + Duration::from_millis(5)).await,
            }
        }
    }

    /// Counts one more call in the window now if it has room (`Some`: the window's number),
    /// without waiting.
    pub fn try_admit(&self, paused: &std::sync::atomic::AtomicU64) -> Option<u64> {
        self.take(paused).ok()
    }

    /// One call counted in the window now, or how long until the next window (the window's
    /// budget is spent: logged once per window, `paused` set).
    fn take(&self, paused: &std::sync::atomic::AtomicU64) -> Result<u64, Duration> {
        let now = Self::now();
        let window = now.as_secs() / self.window;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 != window {
            *s = (window, 0, 0, false);
        }
        let spent =
            self.requests.is_some_and(|r| s.1 >= r) || self.tokens.is_some_and(|t| s.2 >= t);
        if !spent {
            s.1 += 1;
            paused.store(0, Ordering::Relaxed);
            return Ok(window);
        }
        let next = Duration::from_secs((window + 1) * self.window);
        if !s.3 {
            s.3 = true;
            tracing::warn!(pipeline = %self.pipeline, requests_used = s.1, tokens_used = s.2,
                requests_budget = ?self.requests, tokens_budget = ?self.tokens,
                resumes_in_s = (next - now).as_secs_f64().ceil() as u64,
                "enrichment budget spent; the pipeline pauses until the next window (no row is lost)");
        }
        paused.store(1, Ordering::Relaxed);
        Err(next.saturating_sub(now))
    }

    /// Counts the tokens a call used.
    pub fn spent_tokens(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.2 += n;
    }
}

/// Backoff for attempt `n` (1-based): "full jitter" over an exponential ceiling (50 ms · 2^n,
/// at most 20 s), as in <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>.
/// (Kept here rather than taken from `backon`, whose jitter is added to the delay, not drawn
/// under it.) A service's Retry-After is not added here: it pauses the whole quota
/// (`Limiter::pause_for`).
pub fn backoff(n: u32) -> Duration {
    let ceiling =
        Duration::from_millis(50u64.saturating_mul(1 << n.min(10))).min(Duration::from_secs(20));
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for n in 1..20 {
            assert!(backoff(n) <= Duration::from_secs(20));
        }
    }

    #[tokio::test]
    async fn a_buckets_throttling_paces_the_calls_and_randoms_does_not() {
        let l = Limiter::new("k".into(), 100.0);
        let ms = |n: u64| Sent(Duration::from_millis(n));
        // Accepted 20 ms apart (four gaps: enough to compare with); one throttled 20 ms after
        // the last: spaced as accepted calls were, so not the rate's doing.
        for t in [0, 20, 40, 60, 80] {
            l.answered(ms(t));
        }
        l.throttled(ms(100));
        assert_eq!(l.current_rate(), 100.0);
        // One throttled 5 ms after an accepted call: paced halfway between its gap and the
        // accepted spacing (12.5 ms: 80 calls/s).
        l.throttled(ms(85));
        let rate = l.current_rate();
        assert!((79.0..81.0).contains(&rate), "{rate}");
        // Every call takes its slot in one schedule at that pacing.
        let start = Instant::now();
        for _ in 0..6 {
            l.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_micros(5 * 12_500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_pause_holds_every_call_until_it_ends() {
        let l = Limiter::new("k".into(), 1000.0);
        l.pause_for(Duration::from_millis(300));
        // A shorter pause asked later does not shorten it.
        l.pause_for(Duration::from_millis(10));
        assert!(l.paused_for() > Duration::from_millis(250));
        let t = Instant::now();
        l.acquire().await;
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(l.paused_for(), Duration::ZERO);
    }

    #[tokio::test]
    async fn token_bucket_reserves_and_settles() {
        let b = TokenBucket::new(600); // 10 a second
        b.reserve(500).await;
        assert!(b.available() < 101.0);
        // The call used 100 of 500: 400 come back.
        b.settle(500, 100);
        assert!(b.available() >= 500.0);
        // More than was reserved: the excess is taken.
        b.settle(0, 450);
        assert!(b.available() < 101.0);
        let t = Instant::now();
        b.reserve(100).await; // ~ empty: waits for about (100 - ~50) / 10 s
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn budget_counts_requests_per_window() {
        let b = Budget::new("p".into(), Some(2), None, 3600);
        let paused = AtomicU64::new(0);
        b.admit(&paused).await;
        b.admit(&paused).await;
        // The third waits for the next window (up to an hour): it must not return now.
        let third = tokio::time::timeout(Duration::from_millis(200), b.admit(&paused)).await;
        assert!(third.is_err());
        assert_eq!(paused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn cache_tokens_weigh_in_budgets_at_their_weights() {
        let b = Budget::new("p".into(), None, Some(1000), 60).with_cache_weights(0.1, 1.25);
        assert_eq!(b.weigh(10, 100, 0), 20);
        assert_eq!(b.weigh(10, 0, 100), 135);
        assert_eq!(b.weigh(0, 3, 0), 1, "rounded up");
        assert_eq!(
            Budget::new("p".into(), None, Some(1), 60).weigh(5, 7, 11),
            23
        );
    }

    #[test]
    fn registry_shares_by_key() {
        let r = Registry::default();
        let a = r.get("comprehend/sentiment", 5.0);
        let b = r.get("comprehend/sentiment", 5.0);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &r.get("other", 5.0)));
    }
}
