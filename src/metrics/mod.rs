//! Prometheus metrics and health endpoints. Counters are plain atomics updated by the stages;
//! `/metrics` renders them in the Prometheus text format. Every metric is declared here, once.

mod exposition;
mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use http::serve;

use crate::model::BinlogPosition;

/// What `/metrics` shows of the acknowledgements (implemented by the checkpoint's tracker, read
/// at each scrape).
pub trait AckView: std::fmt::Debug + Send + Sync {
    /// Source rows whose records are not all acknowledged.
    fn in_flight(&self) -> usize;
    /// The position after every acknowledged record; `None` before the first.
    fn committed(&self) -> Option<BinlogPosition>;
}

#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Set when a pipeline takes this slot (at start or by a reload); unset slots are spare.
    pub name: std::sync::OnceLock<String>,
    /// A reload removed (or replaced) the pipeline: its series are no longer served.
    pub retired: AtomicBool,
    /// Records handed to the sink.
    pub records: AtomicU64,
    /// Rows that asked for enrichment (Aurora_ml_logical_request_cnt).
    pub logical_requests: AtomicU64,
    /// Calls made to the backend, retries included (Aurora_ml_actual_request_cnt).
    pub actual_requests: AtomicU64,
    /// Calls the backend answered (Aurora_ml_actual_response_cnt).
    pub responses: AtomicU64,
    /// Calls that were retries (Aurora_ml_retry_request_cnt).
    pub retries: AtomicU64,
    /// Calls answered with throttling.
    pub throttles: AtomicU64,
    /// Rows whose enrichment failed for good (bad input).
    pub enrichment_errors: AtomicU64,
    /// Rows answered from the cache, with no call (Aurora_ml_cache_hit_cnt).
    pub cache_hits: AtomicU64,
    /// Calls that carried a single document (Aurora_ml_single_request_cnt).
    pub single_requests: AtomicU64,
    /// Tokens the model reported (Bedrock).
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Input tokens read from and written to the model's prompt cache.
    pub cache_read_tokens: AtomicU64,
    pub cache_write_tokens: AtomicU64,
    /// 1 while the pipeline waits for its budget's next window.
    pub budget_paused: AtomicU64,
    /// Failed calls or items by [`ErrorKind`](crate::backend::ErrorKind) (by its index).
    pub errors_by_kind: [AtomicU64; crate::backend::ErrorKind::ALL.len()],
    /// Whole calls that failed for what may be one input's fault and were split in halves.
    pub batch_splits: AtomicU64,
    /// Model answers by [`StopClass`](crate::backend::StopClass) (by its index).
    pub stop_reasons: [AtomicU64; crate::backend::StopClass::ALL.len()],
    /// Seconds per backend call.
    pub call_latency: Histogram,
    /// Write-back (MySQL sink): rows written, results found stale (the input moved on), rows
    /// sent to the dead-letter table, records skipped as already applied after a restart, and
    /// transactions retried.
    pub writeback_written: AtomicU64,
    pub writeback_stale: AtomicU64,
    pub writeback_dead_letters: AtomicU64,
    pub writeback_replayed: AtomicU64,
    pub writeback_retries: AtomicU64,
    /// Derived results removed or cleared because their source row or input is gone.
    pub writeback_removed: AtomicU64,
    /// Backfill: rows read, the table's row estimate, 1 while one runs.
    pub snapshot_rows: AtomicU64,
    pub snapshot_estimate: AtomicU64,
    pub snapshot_running: AtomicU64,
    /// 1 once the pipeline stopped: a schema change it cannot follow, a value of its table
    /// that cannot be decoded, or an oversize record under `on_oversize: fail`.
    pub stopped: AtomicU64,
    /// Records larger than the Kafka producer accepts (`message.max.bytes`).
    pub oversize_records: AtomicU64,
    /// Truncate records emitted (statements that remove rows with no rows event).
    pub truncates: AtomicU64,
    /// Records routed into the pipeline (before enrichment).
    pub rows_in: AtomicU64,
    /// Commit time of the last record handed to the sink, and of the first record of the
    /// current burst (for the lag).
    pub last_out_ts_ms: AtomicU64,
    pub burst_start_ts_ms: AtomicU64,
    /// Records per enrichment batch.
    pub batch_sizes: Histogram,
    /// Windowed pipelines: windows closed, rows gathered into them, rows that joined none
    /// (deletes, rows without text), and rows waiting in open windows.
    pub windows: AtomicU64,
    pub window_rows: AtomicU64,
    pub window_rows_skipped: AtomicU64,
    pub window_open_rows: AtomicU64,
    /// Rows read again after a restart that were in a window delivered before.
    pub window_rows_replayed: AtomicU64,
    /// Rows of a windowed pipeline settled without a record of their own (for the lag).
    pub rows_settled: AtomicU64,
    /// The rate the pipeline's calls are paced at (an `f64`'s bits), requests per second.
    pub paced_rate_bits: AtomicU64,
}

/// A Prometheus histogram with fixed buckets (the `prometheus-client` crate's; observed once
/// per call or batch, never per row).
#[derive(Debug)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

/// Seconds, for latencies.
pub const SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];
/// Counts, for batch sizes.
pub const COUNTS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0, 1000.0, 10000.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_buckets(SECONDS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds (`+Inf` is added).
    pub fn with_buckets(buckets: &[f64]) -> Histogram {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            buckets.iter().copied(),
        ))
    }

    /// Counts one observation of `v` (seconds or rows, as the histogram's name says).
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Metric slots for pipelines: those at start, and spares that reloads take (indexes stay
/// stable for the life of the process).
pub const PIPELINE_SLOTS: usize = 256;

impl PipelineMetrics {
    pub fn name(&self) -> &str {
        self.name.get().map(String::as_str).unwrap_or("")
    }

    /// A record of this pipeline entered (routed), committed at `ts_ms`.
    pub fn record_in(&self, ts_ms: u64) {
        if self.rows_in.load(Ordering::Relaxed) == self.rows_out() {
            // Nothing pending: a new burst starts with this record.
            self.burst_start_ts_ms.store(ts_ms, Ordering::Relaxed);
        }
        self.rows_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A record of this pipeline was handed to its sink.
    pub fn record_out(&self, ts_ms: u64) {
        self.last_out_ts_ms.store(ts_ms, Ordering::Relaxed);
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    /// Seconds the pipeline is behind: with records pending, now against the commit time of the
    /// oldest of them (bounded below by the last record out and the start of the current
    /// burst); with none pending, the source's own lag.
    /// Rows that left the pipeline: records handed to the sink, and rows settled without a
    /// record of their own (a window's rows after its first, rows that joined no window).
    fn rows_out(&self) -> u64 {
        self.records.load(Ordering::Relaxed) + self.rows_settled.load(Ordering::Relaxed)
    }

    /// `n` rows left a windowed pipeline without a record of their own.
    pub fn rows_settled(&self, n: u64) {
        self.rows_settled.fetch_add(n, Ordering::Relaxed);
    }

    pub fn lag_seconds(&self, source_lag: f64) -> f64 {
        if self.rows_in.load(Ordering::Relaxed) <= self.rows_out() {
            return source_lag;
        }
        let since = self
            .last_out_ts_ms
            .load(Ordering::Relaxed)
            .max(self.burst_start_ts_ms.load(Ordering::Relaxed));
        (now_ms().saturating_sub(since) as f64 / 1000.0).max(source_lag)
    }
}

/// What the daemon counts. Shared by the stages (`Arc<Metrics>`).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Changed rows decoded from the binlog (of the tables some pipeline reads).
    pub rows: AtomicU64,
    /// Transactions (and DDL statements) seen to their end.
    pub transactions: AtomicU64,
    pub reconnects: AtomicU64,
    /// Timestamp (s) of the last event read; 0 before the first.
    pub last_event_ts: AtomicU64,
    /// True after a heartbeat: the reader is at the server's end of the binlog.
    pub caught_up: AtomicBool,
    pub connected: AtomicBool,
    pub pipelines: Vec<PipelineMetrics>,
    pub tracker: Option<Arc<dyn AckView>>,
    /// Unix time (ms) of the last checkpoint written; 0 before the first.
    pub checkpoint_saved_ms: AtomicU64,
    /// Prepared XA transactions whose outcome the checkpoint has not passed, and when the
    /// oldest was prepared (ms since the epoch; 0: none).
    pub xa_open: AtomicU64,
    pub xa_oldest_prepared_ms: AtomicU64,
    /// Groups that ended in ROLLBACK (their rows dropped), and groups held in a spill file.
    pub rolled_back_groups: AtomicU64,
    pub spilled_groups: AtomicU64,
    /// What this process runs: `all`, `source` or `worker` (`run --role`); unset: `all`.
    pub role: std::sync::OnceLock<&'static str>,
    /// A worker's partitions of the change topics, as last measured.
    pub partitions: std::sync::Mutex<Vec<PartitionLag>>,
}

/// One change-topic partition a worker owns: where its consumer stands and how far behind the
/// partition's end it is.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Records between the worker's position and the partition's end (its high watermark).
    pub lag: i64,
    /// The offset last committed for it (every record before it delivered); -1 before one.
    pub committed: i64,
}

impl Metrics {
    pub fn new(pipelines: &[String], tracker: Option<Arc<dyn AckView>>) -> Arc<Metrics> {
        Arc::new(Metrics {
            pipelines: (0..PIPELINE_SLOTS.max(pipelines.len()))
                .map(|i| PipelineMetrics {
                    name: match pipelines.get(i) {
                        Some(n) => std::sync::OnceLock::from(n.clone()),
                        None => std::sync::OnceLock::new(),
                    },
                    batch_sizes: Histogram::with_buckets(COUNTS),
                    ..Default::default()
                })
                .collect(),
            tracker,
            ..Default::default()
        })
    }

    pub fn event_read(&self, ts: u32, heartbeat: bool) {
        if heartbeat {
            self.caught_up.store(true, Ordering::Relaxed);
        } else if ts != 0 {
            self.caught_up.store(false, Ordering::Relaxed);
            self.last_event_ts.store(ts as u64, Ordering::Relaxed);
        }
    }

    /// The slots of pipelines running now.
    pub fn live(&self) -> impl Iterator<Item = &PipelineMetrics> {
        self.pipelines
            .iter()
            .filter(|p| p.name.get().is_some() && !p.retired.load(Ordering::Relaxed))
    }

    /// Why the daemon is not ready: not connected, or a pipeline lagging past `max_lag`.
    pub fn not_ready(&self, max_lag: Option<f64>) -> Option<String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Some("not connected to the binlog".into());
        }
        let max = max_lag?;
        let source_lag = self.lag_seconds();
        self.live().find_map(|p| {
            let lag = p.lag_seconds(source_lag);
            (lag > max).then(|| {
                format!(
                    "pipeline `{}` lags {lag:.1} s (more than {max} s)",
                    p.name()
                )
            })
        })
    }

    /// Seconds between the last event's commit time and now; 0 when caught up.
    pub fn lag_seconds(&self) -> f64 {
        let ts = self.last_event_ts.load(Ordering::Relaxed);
        if self.caught_up.load(Ordering::Relaxed) || ts == 0 {
            return 0.0;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        now.saturating_sub(ts) as f64
    }
}
