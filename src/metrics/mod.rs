//! Prometheus metrics and health endpoints. Counters are plain atomics updated by the stages;
//! `/metrics` renders them in the Prometheus text format. Every metric is declared here, once.

mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use http::serve;

use crate::checkpoint::AckTracker;

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
    /// Truncate records emitted (`TRUNCATE TABLE`, `ALTER TABLE … TRUNCATE PARTITION`).
    pub truncates: AtomicU64,
    /// Records routed into the pipeline (before enrichment).
    pub rows_in: AtomicU64,
    /// Commit time of the last record handed to the sink, and of the first record of the
    /// current burst (for the lag).
    pub last_out_ts_ms: AtomicU64,
    pub burst_start_ts_ms: AtomicU64,
    /// Records per enrichment batch.
    pub batch_sizes: Histogram,
}

/// A Prometheus histogram with fixed buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    buckets: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum in millionths.
    sum_micro: AtomicU64,
}

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
    pub fn with_buckets(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: buckets.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        for (i, b) in self.buckets.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{b}\"}} {}\n",
                self.counts[i].load(Ordering::Relaxed)
            ));
        }
        let n = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{{labels},le=\"+Inf\"}} {n}\n"));
        out.push_str(&format!(
            "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {n}\n",
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        ));
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
        if self.rows_in.load(Ordering::Relaxed) == self.records.load(Ordering::Relaxed) {
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
    pub fn lag_seconds(&self, source_lag: f64) -> f64 {
        if self.rows_in.load(Ordering::Relaxed) <= self.records.load(Ordering::Relaxed) {
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
    pub tracker: Option<AckTracker>,
    /// Unix time (ms) of the last checkpoint written; 0 before the first.
    pub checkpoint_saved_ms: AtomicU64,
    /// Prepared XA transactions whose outcome the checkpoint has not passed, and when the
    /// oldest was prepared (ms since the epoch; 0: none).
    pub xa_open: AtomicU64,
    pub xa_oldest_prepared_ms: AtomicU64,
    /// Groups that ended in ROLLBACK (their rows dropped), and groups held in a spill file.
    pub rolled_back_groups: AtomicU64,
    pub spilled_groups: AtomicU64,
}

impl Metrics {
    pub fn new(pipelines: &[String], tracker: Option<AckTracker>) -> Arc<Metrics> {
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP cdc_enricher_enrichment_batch_size Records per enrichment batch.\n# TYPE cdc_enricher_enrichment_batch_size histogram\n");
        for p in &self.pipelines {
            p.batch_sizes.render(
                "cdc_enricher_enrichment_batch_size",
                &format!("pipeline=\"{}\"", p.name()),
                &mut out,
            );
        }
        out.push_str("# HELP cdc_enricher_ml_call_seconds Backend call latency.\n# TYPE cdc_enricher_ml_call_seconds histogram\n");
        for p in &self.pipelines {
            p.call_latency.render(
                "cdc_enricher_ml_call_seconds",
                &format!("pipeline=\"{}\"", p.name()),
                &mut out,
            );
        }
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "cdc_enricher_rows_read_total",
            "counter",
            "Changed rows decoded from the binlog.",
            one(load(&self.rows)),
        );
        metric(
            "cdc_enricher_transactions_total",
            "counter",
            "Transactions and DDL statements read to their end.",
            one(load(&self.transactions)),
        );
        metric(
            "cdc_enricher_records_total",
            "counter",
            "Records handed to the sink, by pipeline.",
            self.live()
                .map(|p| (format!("{{pipeline=\"{}\"}}", p.name()), load(&p.records)))
                .collect(),
        );
        type Get = fn(&PipelineMetrics) -> &AtomicU64;
        let per_pipeline: [(&str, &str, Get); 21] = [
            (
                "cdc_enricher_writeback_removed_total",
                "Derived results deleted or cleared because their source row (or its input) is gone.",
                |p| &p.writeback_removed,
            ),
            (
                "cdc_enricher_truncates_total",
                "Truncate records (op t) emitted for TRUNCATE TABLE and ALTER TABLE … TRUNCATE PARTITION.",
                |p| &p.truncates,
            ),
            (
                "cdc_enricher_oversize_records_total",
                "Records larger than the Kafka producer accepts (message.max.bytes), handled by the sink's on_oversize.",
                |p| &p.oversize_records,
            ),
            (
                "cdc_enricher_pipeline_rows_in_total",
                "Records routed into the pipeline (before enrichment).",
                |p| &p.rows_in,
            ),
            (
                "cdc_enricher_snapshot_rows_total",
                "Rows read by backfills (snapshots).",
                |p| &p.snapshot_rows,
            ),
            (
                "cdc_enricher_writeback_rows_total",
                "Rows whose enrichment was written back into the database.",
                |p| &p.writeback_written,
            ),
            (
                "cdc_enricher_writeback_stale_total",
                "Results not written because the row's input changed since (a newer result follows).",
                |p| &p.writeback_stale,
            ),
            (
                "cdc_enricher_writeback_dead_letters_total",
                "Rows written to the dead-letter table (refused by the database or not enriched).",
                |p| &p.writeback_dead_letters,
            ),
            (
                "cdc_enricher_writeback_replayed_total",
                "Records at or before the applied position after a restart, acknowledged without writing.",
                |p| &p.writeback_replayed,
            ),
            (
                "cdc_enricher_writeback_retries_total",
                "Write-back transactions rolled back and retried (lost connections, deadlocks).",
                |p| &p.writeback_retries,
            ),
            (
                "cdc_enricher_ml_input_tokens_total",
                "Input tokens the model reported (Bedrock).",
                |p| &p.input_tokens,
            ),
            (
                "cdc_enricher_ml_output_tokens_total",
                "Output tokens the model reported (Bedrock).",
                |p| &p.output_tokens,
            ),
            (
                "cdc_enricher_ml_logical_requests_total",
                "Rows that asked for enrichment (Aurora_ml_logical_request_cnt).",
                |p| &p.logical_requests,
            ),
            (
                "cdc_enricher_ml_actual_requests_total",
                "Backend calls, retries included (Aurora_ml_actual_request_cnt).",
                |p| &p.actual_requests,
            ),
            (
                "cdc_enricher_ml_responses_total",
                "Backend calls answered (Aurora_ml_actual_response_cnt).",
                |p| &p.responses,
            ),
            (
                "cdc_enricher_ml_retries_total",
                "Backend calls that were retries (Aurora_ml_retry_request_cnt).",
                |p| &p.retries,
            ),
            (
                "cdc_enricher_ml_throttles_total",
                "Backend calls answered with throttling.",
                |p| &p.throttles,
            ),
            (
                "cdc_enricher_ml_errors_total",
                "Rows whose enrichment failed for good.",
                |p| &p.enrichment_errors,
            ),
            (
                "cdc_enricher_ml_cache_hits_total",
                "Rows answered from the cache, with no call (Aurora_ml_cache_hit_cnt).",
                |p| &p.cache_hits,
            ),
            (
                "cdc_enricher_ml_single_requests_total",
                "Calls that carried a single document (Aurora_ml_single_request_cnt).",
                |p| &p.single_requests,
            ),
            (
                "cdc_enricher_ml_batch_splits_total",
                "Whole calls that failed for what may be one row's fault (bad input, an unusable answer) and were split in halves to find it.",
                |p| &p.batch_splits,
            ),
        ];
        for (name, help, get) in per_pipeline {
            metric(
                name,
                "counter",
                help,
                self.live()
                    .map(|p| (format!("{{pipeline=\"{}\"}}", p.name()), load(get(p))))
                    .collect(),
            );
        }
        for (name, help, get) in [
            (
                "cdc_enricher_snapshot_rows_estimate",
                "The backfilled table's row estimate (information_schema.TABLES).",
                (|p| &p.snapshot_estimate) as Get,
            ),
            (
                "cdc_enricher_snapshot_running",
                "1 while a backfill of the pipeline runs.",
                |p| &p.snapshot_running,
            ),
            (
                "cdc_enricher_pipeline_stopped",
                "1 once the pipeline stopped (a picked, key or filter column gone, a value of its table that cannot be decoded, an oversize record under on_oversize: fail).",
                |p| &p.stopped,
            ),
        ] {
            metric(
                name,
                "gauge",
                help,
                self.live()
                    .map(|p| (format!("{{pipeline=\"{}\"}}", p.name()), load(get(p))))
                    .collect(),
            );
        }
        let source_lag = self.lag_seconds();
        metric(
            "cdc_enricher_pipeline_lag_seconds",
            "gauge",
            "How far the pipeline is behind: now against the commit time of its oldest record in flight (the source's lag when none is).",
            self.live()
                .map(|p| (format!("{{pipeline=\"{}\"}}", p.name()), p.lag_seconds(source_lag).to_string()))
                .collect(),
        );
        metric(
            "cdc_enricher_xa_prepared",
            "gauge",
            "Prepared XA transactions whose XA COMMIT / XA ROLLBACK the checkpoint has not passed.",
            one(load(&self.xa_open)),
        );
        let oldest = self.xa_oldest_prepared_ms.load(Ordering::Relaxed);
        metric(
            "cdc_enricher_xa_oldest_prepared_age_seconds",
            "gauge",
            "Seconds since the oldest of them was prepared (0: none).",
            one(if oldest == 0 {
                "0".to_string()
            } else {
                (now_ms().saturating_sub(oldest) as f64 / 1000.0).to_string()
            }),
        );
        metric(
            "cdc_enricher_rolled_back_groups_total",
            "counter",
            "Binlog groups that ended in ROLLBACK: their rows were held and dropped, never emitted.",
            one(load(&self.rolled_back_groups)),
        );
        metric(
            "cdc_enricher_spilled_groups_total",
            "counter",
            "Groups larger than source.transaction_buffer_mb, held in a spill file until their end.",
            one(load(&self.spilled_groups)),
        );
        let saved = self.checkpoint_saved_ms.load(Ordering::Relaxed);
        if saved > 0 {
            metric(
                "cdc_enricher_checkpoint_age_seconds",
                "gauge",
                "Seconds since the checkpoint was last written.",
                one((now_ms().saturating_sub(saved) as f64 / 1000.0).to_string()),
            );
        }
        metric(
            "cdc_enricher_budget_paused",
            "gauge",
            "1 while the pipeline waits for the next window of its enrichment budget.",
            self.live()
                .map(|p| {
                    (
                        format!("{{pipeline=\"{}\"}}", p.name()),
                        load(&p.budget_paused),
                    )
                })
                .collect(),
        );
        metric(
            "cdc_enricher_ml_call_errors_total",
            "counter",
            "Failed backend calls or items, by pipeline and error kind.",
            self.live()
                .flat_map(|p| {
                    crate::backend::ErrorKind::ALL.iter().map(move |k| {
                        (
                            format!("{{pipeline=\"{}\",kind=\"{}\"}}", p.name(), k.as_str()),
                            load(&p.errors_by_kind[k.index()]),
                        )
                    })
                })
                .collect(),
        );
        metric(
            "cdc_enricher_ml_stop_reasons_total",
            "counter",
            "Model answers by why the model stopped: finished, stop_sequence, max_tokens (cut at the output limit), filtered, other.",
            self.live()
                .flat_map(|p| {
                    crate::backend::StopClass::ALL.iter().map(move |c| {
                        (
                            format!("{{pipeline=\"{}\",reason=\"{}\"}}", p.name(), c.as_str()),
                            load(&p.stop_reasons[c.index()]),
                        )
                    })
                })
                .collect(),
        );
        metric(
            "cdc_enricher_reconnects_total",
            "counter",
            "Reconnections of the binlog stream.",
            one(load(&self.reconnects)),
        );
        metric(
            "cdc_enricher_source_connected",
            "gauge",
            "1 while the binlog stream is connected.",
            one((self.connected.load(Ordering::Relaxed) as u8).to_string()),
        );
        metric(
            "cdc_enricher_lag_seconds",
            "gauge",
            "Commit time of the last event read against now; 0 when caught up.",
            one(self.lag_seconds().to_string()),
        );
        if let Some(t) = &self.tracker {
            metric(
                "cdc_enricher_in_flight",
                "gauge",
                "Source rows whose records are not all acknowledged.",
                one(t.in_flight().to_string()),
            );
            if let Some(p) = t.committed() {
                metric(
                    "cdc_enricher_checkpoint_position",
                    "gauge",
                    "The acknowledged position (file, position, row inside the transaction).",
                    vec![(format!("{{file=\"{}\"}}", p.file), p.pos.to_string())],
                );
                metric(
                    "cdc_enricher_checkpoint_row",
                    "gauge",
                    "Row index inside the transaction at the checkpoint.",
                    one(p.row.to_string()),
                );
            }
        }
        out
    }
}
