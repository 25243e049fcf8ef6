//! The worker role's source (`run --role worker`): the change topics the source role writes,
//! consumed as a member of the workers' Kafka consumer group. Each record becomes the
//! [`SourceEvent`] the binlog reader would have made, so the pipeline stage, the enrichment
//! and the sinks run unchanged.
//!
//! A partition's offset is committed only once every output of every record up to it was
//! acknowledged (the tracker's rule for the binlog checkpoint): after each record the worker
//! registers a mark with the tracker, and a mark the tracker's committed position reaches
//! stands for its record and every record handed on before it. On a rebalance the worker
//! commits what is done of the partitions it loses; records of theirs still in flight are
//! delivered all the same, and the new owner reads again from the commit (duplicates bounded
//! by the uncommitted records, nothing lost).

pub mod decode;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::config::KafkaConfig;
use crate::metrics::AckView;
use crate::model::BinlogPosition;
use crate::source::SourceEvent;

/// Why the worker's source stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChangeTopicError {
    #[error("cannot join the consumer group `{group}` on {brokers}: {source}; check `kafka.brokers` and `scale_out.group_id`")]
    Consumer {
        group: String,
        brokers: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error(transparent)]
    Bad(Box<decode::BadChange>),
}

impl From<decode::BadChange> for ChangeTopicError {
    fn from(e: decode::BadChange) -> Self {
        ChangeTopicError::Bad(Box::new(e))
    }
}

/// The `file` of the tracker positions that stand for consumed records (no binlog file is
/// named so): their `pos` is the mark's sequence number.
const MARK: &str = "(change topics)";

/// A topic and partition.
type Tp = (Arc<str>, i32);

/// What was consumed and what of it is done, shared with the rebalance callbacks.
#[derive(Default)]
struct Offsets {
    /// Records handed to the stage, in order: (mark, topic and partition, offset).
    consumed: VecDeque<(u64, Tp, i64)>,
    /// Per partition, the offset to commit: every record before it delivered.
    done: HashMap<Tp, i64>,
    /// Per partition, the offset last committed.
    committed: HashMap<Tp, i64>,
    /// The partitions this worker owns now.
    assigned: HashSet<Tp>,
}

impl Offsets {
    /// Takes in what the tracker says is delivered.
    fn advance(&mut self, committed: Option<BinlogPosition>) {
        let Some(mark) = committed.filter(|p| &*p.file == MARK).map(|p| p.pos) else {
            return;
        };
        while self.consumed.front().is_some_and(|c| c.0 <= mark) {
            if let Some((_, tp, offset)) = self.consumed.pop_front() {
                self.done.insert(tp, offset + 1);
            }
        }
    }

    /// The offsets to commit now: partitions owned whose done offset moved (`only`: of those).
    fn to_commit(&self, only: Option<&HashSet<Tp>>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, off) in &self.done {
            let owned = self.assigned.contains(tp) && only.is_none_or(|o| o.contains(tp));
            if owned && self.committed.get(tp) != Some(off) {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*off));
            }
        }
        tpl
    }

    fn committed_now(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.committed
                    .insert((Arc::from(e.topic()), e.partition()), o);
            }
        }
    }
}

/// Told this worker's share (0–1) of the group's partitions after each rebalance.
pub type OnShare = Arc<dyn Fn(f64) + Send + Sync>;

/// The consumer's context: commits what is done of the partitions a rebalance takes away,
/// and tells the worker's share of the partitions after one.
struct Ctx {
    offsets: Arc<Mutex<Offsets>>,
    tracker: Arc<dyn AckView>,
    topics: Vec<String>,
    on_share: OnShare,
}

impl Ctx {
    /// The partitions of the subscribed topics, from the broker's metadata.
    fn partitions(&self, consumer: &BaseConsumer<Self>) -> Option<usize> {
        let mut n = 0;
        for t in &self.topics {
            let md = consumer
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .ok()?;
            n += md
                .topics()
                .iter()
                .map(|t| t.partitions().len())
                .sum::<usize>();
        }
        Some(n)
    }
}

impl Ctx {
    /// Waits (up to [`FINISH_WAIT`]) until every record taken from the partitions `lost` was
    /// delivered, so that their offsets are committed past them and the new owner starts
    /// after them instead of reading them again. The stage keeps delivering meanwhile (only
    /// this consumer's thread waits); a stage that cannot (a backend down) runs out the wait,
    /// and what was delivered by then is committed.
    fn finish(&self, lost: &HashSet<Tp>) {
        let last = lock(&self.offsets)
            .consumed
            .iter()
            .filter(|c| lost.contains(&c.1))
            .map(|c| c.0)
            .max();
        let Some(last) = last else {
            return;
        };
        let delivered = || {
            self.tracker
                .committed()
                .is_some_and(|p| &*p.file == MARK && p.pos >= last)
        };
        let start = Instant::now();
        while !delivered() && start.elapsed() < FINISH_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let waited_ms = start.elapsed().as_millis() as u64;
        match delivered() {
            true => tracing::info!(waited_ms, "delivered what was taken from the revoked partitions"),
            false => tracing::warn!(waited_ms,
                "records taken from the revoked partitions are still in flight; their new owner reads them again"),
        }
    }
}

/// The longest a rebalance waits for the records a worker took from the partitions it loses
/// (the group waits for this worker meanwhile; under `max.poll.interval.ms`).
const FINISH_WAIT: Duration = Duration::from_secs(10);

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let lost: HashSet<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        self.finish(&lost);
        let mut o = lock(&self.offsets);
        o.advance(self.tracker.committed());
        let commit = o.to_commit(Some(&lost));
        if commit.count() > 0 {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => o.committed_now(&commit),
                Err(e) => {
                    tracing::warn!(error = %e, "committing the offsets of revoked partitions; their new owner reads again from the last commit")
                }
            }
        }
        tracing::info!(partitions = ?lost.iter().map(|t| format!("{}/{}", t.0, t.1)).collect::<Vec<_>>(), "partitions revoked");
        o.assigned.retain(|tp| !lost.contains(tp));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let owned = {
            let mut o = lock(&self.offsets);
            for e in tpl.elements() {
                let tp: Tp = (Arc::from(e.topic()), e.partition());
                // Another worker may have owned it since: what this one knew of it is stale.
                o.done.remove(&tp);
                o.committed.remove(&tp);
                o.assigned.insert(tp);
            }
            o.assigned.len()
        };
        tracing::info!(partitions = ?tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>(), "partitions assigned");
        // The quotas are shared by the group in proportion to the partitions each owns.
        if let Some(total) = self.partitions(consumer).filter(|n| *n > 0) {
            let share = owned as f64 / total as f64;
            tracing::info!(share, owned, total, "this worker's share of each quota");
            (self.on_share)(share);
        }
    }
}

fn lock(o: &Mutex<Offsets>) -> std::sync::MutexGuard<'_, Offsets> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member of the workers' consumer group, reading the change topics of its pipelines'
/// tables.
pub struct Worker {
    pub kafka: KafkaConfig,
    pub group_id: String,
    pub topics: Vec<String>,
    /// The acknowledgements (the checkpoint's tracker): where delivery stands.
    pub tracker: Arc<dyn AckView>,
    /// How often done offsets are committed, ms.
    pub commit_interval: Duration,
    /// Told the worker's share of the partitions after each rebalance (the quotas' share).
    pub on_share: OnShare,
    /// Where the partitions' lag and committed offsets are shown (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How often a worker measures its partitions' lag (a metadata request per partition).
const LAG_EVERY: Duration = Duration::from_secs(5);

impl Worker {
    /// Consumes until `stop`, handing each record's event to the stage on `tx`; then drops
    /// `tx` (the stage drains) and keeps committing what gets delivered until `finish`, when
    /// it commits a last time and returns. Runs on a blocking thread (the consumer polls).
    pub fn run(
        self,
        tx: mpsc::Sender<Vec<SourceEvent>>,
        stop: watch::Receiver<bool>,
        finish: watch::Receiver<bool>,
    ) -> Result<(), ChangeTopicError> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let consumer = self.consumer(&offsets)?;
        let result = self.consume(&consumer, &offsets, &tx, &stop);
        drop(tx);
        while !*finish.borrow() {
            // Rebalances and commits go on while the stage drains.
            let _ = consumer.poll(Duration::from_millis(100));
            self.commit(&consumer, &offsets, CommitMode::Async);
        }
        self.commit(&consumer, &offsets, CommitMode::Sync);
        result
    }

    fn consumer(
        &self,
        offsets: &Arc<Mutex<Offsets>>,
    ) -> Result<BaseConsumer<Ctx>, ChangeTopicError> {
        let failed = |source| ChangeTopicError::Consumer {
            group: self.group_id.clone(),
            brokers: self.kafka.brokers.clone(),
            source: Box::new(source),
        };
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A worker that dies is noticed in 10 s (librdkafka's default: 45 s), and its
            // partitions move to the others.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        for (k, v) in &self.kafka.properties {
            // The producer's own properties are not the consumer's.
            if !matches!(k.as_str(), "linger.ms" | "enable.idempotence" | "acks")
                && !k.starts_with("queue.buffering")
                && !k.starts_with("message.timeout")
                && !k.starts_with("compression")
                && !k.starts_with("batch.")
            {
                c.set(k, v);
            }
        }
        let ctx = Ctx {
            offsets: offsets.clone(),
            tracker: self.tracker.clone(),
            topics: self.topics.clone(),
            on_share: self.on_share.clone(),
        };
        let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx).map_err(failed)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(failed)?;
        tracing::info!(group = %self.group_id, topics = ?self.topics, "worker joining its consumer group");
        Ok(consumer)
    }

    /// Reads records until `stop` (or the stage is gone), committing on the way.
    fn consume(
        &self,
        consumer: &BaseConsumer<Ctx>,
        offsets: &Arc<Mutex<Offsets>>,
        tx: &mpsc::Sender<Vec<SourceEvent>>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), ChangeTopicError> {
        let mut plans = decode::Plans::default();
        let mut mark = 0u64;
        let mut last_commit = Instant::now();
        let mut last_lag = Instant::now();
        while !*stop.borrow() {
            if last_commit.elapsed() >= self.commit_interval {
                self.commit(consumer, offsets, CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_lag.elapsed() >= LAG_EVERY {
                self.measure_lag(consumer, offsets);
                last_lag = Instant::now();
            }
            let m = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "change topic consumer");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let tp: Tp = (Arc::from(m.topic()), m.partition());
            let at = decode::At {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
            };
            // A truncate reaches every partition of its change topic; it is taken once, from
            // partition 0 (see the README's "Scale-out": its order against other keys' rows).
            let ev = match m.payload() {
                Some(p) => decode::event(m.key(), p, &at, &mut plans, m.partition() == 0)?,
                None => None,
            };
            mark += 1;
            let ts_ms = match &ev {
                Some(SourceEvent::Row(r)) => Some(r.ts_ms),
                Some(SourceEvent::Truncated(t)) => Some(t.ts_ms),
                _ => m.timestamp().to_millis().map(|t| t.max(0) as u64),
            };
            let mut batch: Vec<SourceEvent> = ev.into_iter().collect();
            batch.push(SourceEvent::Progress {
                position: BinlogPosition::new(MARK, mark),
                ts_ms,
            });
            lock(offsets).consumed.push_back((mark, tp, m.offset()));
            if tx.blocking_send(batch).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Each owned partition's lag (its end less this consumer's position) and committed offset,
    /// for `/metrics`. A partition whose end cannot be read now keeps out of this measure.
    fn measure_lag(&self, consumer: &BaseConsumer<Ctx>, offsets: &Mutex<Offsets>) {
        let (owned, committed): (Vec<Tp>, HashMap<Tp, i64>) = {
            let o = lock(offsets);
            (o.assigned.iter().cloned().collect(), o.committed.clone())
        };
        let positions = consumer.position().ok();
        let mut parts = Vec::with_capacity(owned.len());
        for tp in owned {
            let Ok((_, high)) = consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(1))
            else {
                continue;
            };
            let committed = committed.get(&tp).copied().unwrap_or(-1);
            let position = positions
                .as_ref()
                .and_then(|p| p.find_partition(&tp.0, tp.1))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(committed.max(0));
            parts.push(crate::metrics::PartitionLag {
                topic: tp.0.to_string(),
                partition: tp.1,
                lag: (high - position).max(0),
                committed,
            });
        }
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        *self
            .metrics
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = parts;
    }

    fn commit(&self, consumer: &BaseConsumer<Ctx>, offsets: &Mutex<Offsets>, mode: CommitMode) {
        let mut o = lock(offsets);
        o.advance(self.tracker.committed());
        let tpl = o.to_commit(None);
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => o.committed_now(&tpl),
            Err(e) => {
                tracing::warn!(error = %e, "committing offsets; retried at the next interval")
            }
        }
    }
}
