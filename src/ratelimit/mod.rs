//! Rate limits for backend calls. `governor` enforces the configured quota (requests per
//! second); on top of it an AIMD factor cuts the rate in half on each throttling answer and
//! recovers it step by step on successes (a burst of throttling answers cuts it once per
//! second, as a congestion window is cut once per round trip). Limiters are shared by key (backend, operation,
//! region, endpoint): pipelines that draw on one quota share one limiter.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};

/// The factor is kept in thousandths: 1000 is the full configured rate.
const FULL: u32 = 1000;
/// The rate never drops below 1/16 of the quota.
const FLOOR: u32 = FULL / 16;
/// Each success gives back 5% of the quota.
const STEP: u32 = 50;
/// Throttling answers within this long of a cut do not cut again.
const CUT_WINDOW: Duration = Duration::from_secs(1);

pub struct Limiter {
    pub key: String,
    pub requests_per_second: f64,
    quota: governor::DefaultDirectRateLimiter,
    factor: AtomicU32,
    created: Instant,
    /// Milliseconds after `created` of the last cut, plus one (0: never).
    last_cut_ms: AtomicU64,
}

impl Limiter {
    pub fn new(key: String, requests_per_second: f64) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(0.001));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Limiter {
            key,
            requests_per_second,
            quota: RateLimiter::direct(quota),
            factor: AtomicU32::new(FULL),
            created: Instant::now(),
            last_cut_ms: AtomicU64::new(0),
        }
    }

    /// Waits until a call may be made.
    pub async fn acquire(&self) {
        self.quota.until_ready().await;
        let f = self.factor.load(Ordering::Relaxed).clamp(FLOOR, FULL);
        if f < FULL {
            // Cut rate: stretch the interval the quota enforces by FULL / f.
            let base = 1.0 / self.requests_per_second.max(0.001);
            let extra = base * (FULL as f64 / f as f64 - 1.0);
            tokio::time::sleep(Duration::from_secs_f64(extra)).await;
        }
    }

    /// The service throttled a call: halve the rate (down to 1/16 of the quota), at most once
    /// per second.
    pub fn throttled(&self) {
        self.throttled_at(self.created.elapsed());
    }

    fn throttled_at(&self, now: Duration) {
        let now_ms = now.as_millis() as u64 + 1;
        let last = self.last_cut_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < CUT_WINDOW.as_millis() as u64 {
            return;
        }
        if self
            .last_cut_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self
                .factor
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                    Some((f / 2).max(FLOOR))
                });
        }
    }

    /// A call succeeded: give back a step of the rate.
    pub fn succeeded(&self) {
        let _ = self
            .factor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f + STEP).min(FULL))
            });
    }

    /// The rate now, in requests per second.
    pub fn current_rate(&self) -> f64 {
        self.requests_per_second * self.factor.load(Ordering::Relaxed) as f64 / FULL as f64
    }
}

/// Limiters by key, created on first use.
#[derive(Default)]
pub struct Registry {
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
}

impl Registry {
    /// The limiter for `key`; the first pipeline to name a key sets its rate, and a different
    /// rate named later for the same quota is reported (the first one stays).
    pub fn get(&self, key: &str, requests_per_second: f64) -> Arc<Limiter> {
        let mut m = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let l = m
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Limiter::new(key.to_string(), requests_per_second)));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aimd_halves_and_recovers() {
        let l = Limiter::new("k".into(), 10.0);
        assert_eq!(l.current_rate(), 10.0);
        l.throttled_at(Duration::from_millis(10));
        assert_eq!(l.current_rate(), 5.0);
        // A burst within the window cuts once.
        l.throttled_at(Duration::from_millis(500));
        assert_eq!(l.current_rate(), 5.0);
        for s in 2..20 {
            l.throttled_at(Duration::from_secs(s));
        }
        assert_eq!(l.current_rate(), 10.0 * FLOOR as f64 / FULL as f64);
        for _ in 0..100 {
            l.succeeded();
        }
        assert_eq!(l.current_rate(), 10.0);
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
