//! The `/metrics` exposition: every metric's name, type and help, encoded by the
//! `prometheus-client` crate in the Prometheus text format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>). Values are read from the
//! stages' atomics at each scrape; a pipeline's series appear while it runs (a spare slot or a
//! pipeline a reload removed has none), so no series is ever written twice.
//!
//! Counter names are given here without `_total`: the encoder appends it (the samples read
//! `cdc_enricher_rows_read_total`).

use std::fmt::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{now_ms, Metrics, PipelineMetrics};
use crate::backend::{ErrorKind, StopClass};

/// The exposition of `metrics` as text (Content-Type
/// [`CONTENT_TYPE`](prometheus_client::encoding::prometheus_text::CONTENT_TYPE)).
pub fn render(metrics: &Arc<Metrics>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(metrics.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be ours, and shows as a cut body.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

/// The metrics as one collector, read at each scrape.
#[derive(Debug)]
struct Scrape(Arc<Metrics>);

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        let m = &*self.0;
        let live: Vec<&PipelineMetrics> = m.live().collect();
        histograms(&live, &mut enc)?;
        pipeline_families(m, &live, &mut enc)?;
        source_families(m, &mut enc)?;
        worker_families(m, &mut enc)?;
        tracker_families(m, &mut enc)
    }
}

type Get = fn(&PipelineMetrics) -> &AtomicU64;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One family without labels.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), Error> {
    let m = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

/// One family with a `pipeline` label per running pipeline (and `extra` labels per value).
fn per_pipeline<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    live: &[&PipelineMetrics],
    values: impl Fn(&PipelineMetrics) -> Vec<(Option<(&'static str, &'static str)>, M)>,
) -> Result<(), Error> {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for p in live {
        for (extra, v) in values(p) {
            let pipeline = ("pipeline", p.name());
            match extra {
                None => v.encode(family.encode_family(&[pipeline])?)?,
                Some(e) => v.encode(family.encode_family(&[pipeline, e])?)?,
            }
        }
    }
    Ok(())
}

fn histograms(live: &[&PipelineMetrics], enc: &mut DescriptorEncoder) -> Result<(), Error> {
    for (name, help, get) in [
        (
            "cdc_enricher_enrichment_batch_size",
            "Records per enrichment batch.",
            (|p| &p.batch_sizes.0) as fn(&PipelineMetrics) -> &_,
        ),
        (
            "cdc_enricher_ml_call_seconds",
            "Backend call latency.",
            |p| &p.call_latency.0,
        ),
    ] {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for p in live {
            get(p).encode(family.encode_family(&[("pipeline", p.name())])?)?;
        }
    }
    Ok(())
}

/// Per-pipeline counters: (name without `_total`, help, field).
const PIPELINE_COUNTERS: &[(&str, &str, Get)] = &[
    ("cdc_enricher_records", "Records handed to the sink, by pipeline.", |p| &p.records),
    ("cdc_enricher_writeback_removed", "Derived results deleted or cleared because their source row (or its input) is gone.", |p| &p.writeback_removed),
    ("cdc_enricher_truncates", "Truncate records (op t) emitted for statements that remove rows with no rows event (TRUNCATE, CREATE OR REPLACE TABLE, partitions truncated, dropped, converted or exchanged).", |p| &p.truncates),
    ("cdc_enricher_oversize_records", "Records larger than the Kafka producer accepts (message.max.bytes), handled by the sink's on_oversize.", |p| &p.oversize_records),
    ("cdc_enricher_pipeline_rows_in", "Records routed into the pipeline (before enrichment).", |p| &p.rows_in),
    ("cdc_enricher_snapshot_rows", "Rows read by backfills (snapshots).", |p| &p.snapshot_rows),
    ("cdc_enricher_writeback_rows", "Rows whose enrichment was written back into the database.", |p| &p.writeback_written),
    ("cdc_enricher_writeback_stale", "Results not written because the row's input changed since (a newer result follows).", |p| &p.writeback_stale),
    ("cdc_enricher_writeback_dead_letters", "Rows written to the dead-letter table (refused by the database or not enriched).", |p| &p.writeback_dead_letters),
    ("cdc_enricher_writeback_replayed", "Records at or before the applied position (after a restart; in workers also a partition's records read again after a rebalance or sent again by a source that took over), acknowledged without writing.", |p| &p.writeback_replayed),
    ("cdc_enricher_writeback_retries", "Write-back transactions rolled back and retried (lost connections, deadlocks).", |p| &p.writeback_retries),
    ("cdc_enricher_ml_input_tokens", "Input tokens the model reported (Bedrock).", |p| &p.input_tokens),
    ("cdc_enricher_ml_output_tokens", "Output tokens the model reported (Bedrock).", |p| &p.output_tokens),
    ("cdc_enricher_ml_cache_read_tokens", "Input tokens the model read from its prompt cache (cache_prompt).", |p| &p.cache_read_tokens),
    ("cdc_enricher_ml_cache_write_tokens", "Input tokens the model wrote to its prompt cache (cache_prompt).", |p| &p.cache_write_tokens),
    ("cdc_enricher_ml_logical_requests", "Rows that asked for enrichment (Aurora_ml_logical_request_cnt).", |p| &p.logical_requests),
    ("cdc_enricher_ml_actual_requests", "Backend calls, retries included (Aurora_ml_actual_request_cnt).", |p| &p.actual_requests),
    ("cdc_enricher_ml_responses", "Backend calls answered (Aurora_ml_actual_response_cnt).", |p| &p.responses),
    ("cdc_enricher_ml_retries", "Backend calls that were retries (Aurora_ml_retry_request_cnt).", |p| &p.retries),
    ("cdc_enricher_ml_throttles", "Backend calls answered with throttling.", |p| &p.throttles),
    ("cdc_enricher_ml_errors", "Rows whose enrichment failed for good.", |p| &p.enrichment_errors),
    ("cdc_enricher_ml_cache_hits", "Rows answered from the cache, with no call (Aurora_ml_cache_hit_cnt).", |p| &p.cache_hits),
    ("cdc_enricher_ml_single_requests", "Calls that carried a single document (Aurora_ml_single_request_cnt).", |p| &p.single_requests),
    ("cdc_enricher_windows", "Windows closed and sent as one call each (enrichment.window).", |p| &p.windows),
    ("cdc_enricher_window_rows", "Rows gathered into windows.", |p| &p.window_rows),
    ("cdc_enricher_window_rows_skipped", "Rows of a windowed pipeline that joined no window (deletes, truncates, rows without text, updates that left the row's columns as they were).", |p| &p.window_rows_skipped),
    ("cdc_enricher_window_rows_replayed", "Rows read again after a restart that were in a window delivered before (they join no window again).", |p| &p.window_rows_replayed),
    ("cdc_enricher_ml_batch_splits", "Whole calls that failed for what may be one row's fault (bad input, an unusable answer) and were split in halves to find it.", |p| &p.batch_splits),
];

/// Per-pipeline gauges kept as atomics: (name, help, field).
const PIPELINE_GAUGES: &[(&str, &str, Get)] = &[
    ("cdc_enricher_snapshot_rows_estimate", "The backfilled table's row estimate (information_schema.TABLES).", |p| &p.snapshot_estimate),
    ("cdc_enricher_snapshot_running", "1 while a backfill of the pipeline runs.", |p| &p.snapshot_running),
    ("cdc_enricher_pipeline_stopped", "1 once the pipeline stopped (a picked, key or filter column gone, a value of its table that cannot be decoded, an oversize record under on_oversize: fail).", |p| &p.stopped),
    ("cdc_enricher_window_open_rows", "Rows waiting in open windows (the checkpoint stays before the first of them).", |p| &p.window_open_rows),
    ("cdc_enricher_budget_paused", "1 while the pipeline waits for the next window of its enrichment budget.", |p| &p.budget_paused),
];

fn pipeline_families(
    m: &Metrics,
    live: &[&PipelineMetrics],
    enc: &mut DescriptorEncoder,
) -> Result<(), Error> {
    for (name, help, get) in PIPELINE_COUNTERS {
        per_pipeline(enc, (name, help, MetricType::Counter), live, |p| {
            vec![(None, ConstCounter::new(load(get(p))))]
        })?;
    }
    for (name, help, get) in PIPELINE_GAUGES {
        per_pipeline(enc, (name, help, MetricType::Gauge), live, |p| {
            vec![(None, ConstGauge::new(load(get(p)) as i64))]
        })?;
    }
    per_pipeline(
        enc,
        ("cdc_enricher_ml_paced_requests_per_second", "The rate the pipeline's calls are paced at now: its quota's requests_per_second, or lower where the service's throttling showed a token bucket allowing less (0 before the first call).", MetricType::Gauge),
        live,
        |p| vec![(None, ConstGauge::new(f64::from_bits(load(&p.paced_rate_bits))))],
    )?;
    let source_lag = m.lag_seconds();
    per_pipeline(
        enc,
        ("cdc_enricher_pipeline_lag_seconds", "How far the pipeline is behind: now against the commit time of its oldest record in flight (the source's lag when none is).", MetricType::Gauge),
        live,
        |p| vec![(None, ConstGauge::new(p.lag_seconds(source_lag)))],
    )?;
    per_pipeline(
        enc,
        (
            "cdc_enricher_ml_call_errors",
            "Failed backend calls or items, by pipeline and error kind.",
            MetricType::Counter,
        ),
        live,
        |p| {
            ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        Some(("kind", k.as_str())),
                        ConstCounter::new(load(&p.errors_by_kind[k.index()])),
                    )
                })
                .collect()
        },
    )?;
    per_pipeline(
        enc,
        ("cdc_enricher_ml_stop_reasons", "Model answers by why the model stopped: finished, stop_sequence, max_tokens (cut at the output limit), filtered, other.", MetricType::Counter),
        live,
        |p| {
            StopClass::ALL
                .iter()
                .map(|c| (Some(("reason", c.as_str())), ConstCounter::new(load(&p.stop_reasons[c.index()]))))
                .collect()
        },
    )
}

/// The process's role, and a worker's partitions (lag and committed offset per partition).
fn worker_families(m: &Metrics, enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let role = m.role.get().copied().unwrap_or("all");
    let mut family = enc.encode_descriptor(
        "cdc_enricher_role",
        "1 for what this process runs: all, source or worker (run --role).",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(1i64).encode(family.encode_family(&[("role", role)])?)?;
    if role != "worker" {
        return Ok(());
    }
    let parts = m
        .partitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, help, get) in [
        (
            "cdc_enricher_worker_partition_lag",
            "Change-topic records between this worker's position and the partition's end, by partition it owns.",
            (|p: &super::PartitionLag| p.lag) as fn(&super::PartitionLag) -> i64,
        ),
        (
            "cdc_enricher_worker_committed_offset",
            "The offset this worker last committed, by partition it owns (every record before it delivered; -1 before one).",
            |p| p.committed,
        ),
    ] {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for p in &parts {
            let partition = p.partition.to_string();
            let labels = [("topic", p.topic.as_str()), ("partition", partition.as_str())];
            ConstGauge::new(get(p)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn source_families(m: &Metrics, enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let counter = |a: &AtomicU64| ConstCounter::new(load(a));
    single(
        enc,
        "cdc_enricher_rows_read",
        "Changed rows decoded from the binlog.",
        counter(&m.rows),
    )?;
    single(
        enc,
        "cdc_enricher_transactions",
        "Transactions and DDL statements read to their end.",
        counter(&m.transactions),
    )?;
    single(
        enc,
        "cdc_enricher_reconnects",
        "Reconnections of the binlog stream.",
        counter(&m.reconnects),
    )?;
    single(
        enc,
        "cdc_enricher_rolled_back_groups",
        "Binlog groups that ended in ROLLBACK: their rows were held and dropped, never emitted.",
        counter(&m.rolled_back_groups),
    )?;
    single(
        enc,
        "cdc_enricher_spilled_groups",
        "Groups larger than source.transaction_buffer_mb, held in a spill file until their end.",
        counter(&m.spilled_groups),
    )?;
    let connected = m.connected.load(Ordering::Relaxed) as i64;
    single(
        enc,
        "cdc_enricher_source_connected",
        "1 while the binlog stream is connected.",
        ConstGauge::new(connected),
    )?;
    single(
        enc,
        "cdc_enricher_lag_seconds",
        "Commit time of the last event read against now; 0 when caught up.",
        ConstGauge::new(m.lag_seconds()),
    )?;
    single(
        enc,
        "cdc_enricher_xa_prepared",
        "Prepared XA transactions whose XA COMMIT / XA ROLLBACK the checkpoint has not passed.",
        ConstGauge::new(load(&m.xa_open) as i64),
    )?;
    let oldest = load(&m.xa_oldest_prepared_ms);
    let age = match oldest {
        0 => 0.0,
        t => now_ms().saturating_sub(t) as f64 / 1000.0,
    };
    single(
        enc,
        "cdc_enricher_xa_oldest_prepared_age_seconds",
        "Seconds since the oldest of them was prepared (0: none).",
        ConstGauge::new(age),
    )?;
    let saved = load(&m.checkpoint_saved_ms);
    if saved > 0 {
        let age = now_ms().saturating_sub(saved) as f64 / 1000.0;
        single(
            enc,
            "cdc_enricher_checkpoint_age_seconds",
            "Seconds since the checkpoint was last written.",
            ConstGauge::new(age),
        )?;
    }
    Ok(())
}

fn tracker_families(m: &Metrics, enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let Some(t) = &m.tracker else {
        return Ok(());
    };
    single(
        enc,
        "cdc_enricher_in_flight",
        "Source rows whose records are not all acknowledged.",
        ConstGauge::new(t.in_flight() as i64),
    )?;
    if let Some(p) = t.committed() {
        let g = ConstGauge::new(p.pos as i64);
        let mut family = enc.encode_descriptor(
            "cdc_enricher_checkpoint_position",
            "The acknowledged position (file, position, row inside the transaction).",
            None,
            g.metric_type(),
        )?;
        g.encode(family.encode_family(&[("file", &*p.file)])?)?;
        single(
            enc,
            "cdc_enricher_checkpoint_row",
            "Row index inside the transaction at the checkpoint.",
            ConstGauge::new(p.row as i64),
        )?;
    }
    Ok(())
}
