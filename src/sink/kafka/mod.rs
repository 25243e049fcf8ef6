//! The Kafka sink: an idempotent `rdkafka` producer; delivery reports acknowledge records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{key_bytes, Sink, SinkError};
use crate::checkpoint::AckTracker;
use crate::config::pipeline::OnOversize;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::model::record::ChangeRecord;
use crate::model::Op;

mod oversize;

struct AckContext {
    tracker: AckTracker,
    room: Arc<QueueRoom>,
}

/// Wakes a thread waiting for room in the producer's queue as soon as a delivery report frees
/// some (a fixed sleep instead made the pipeline stage wait up to a whole tick per full queue).
#[derive(Default)]
struct QueueRoom {
    waiting: std::sync::atomic::AtomicBool,
    waiter: std::sync::Mutex<Option<std::thread::Thread>>,
    /// Delivery reports so far: a wait skips its park when one came since `seen`.
    deliveries: std::sync::atomic::AtomicU64,
}

impl QueueRoom {
    /// The delivery reports so far (read before a send, for [`QueueRoom::wait`]).
    fn seen(&self) -> u64 {
        self.deliveries.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Parks the calling thread until a delivery report or `at_most` — not at all when a
    /// report came since `seen` (read before the send that found the queue full). A report
    /// after `waiting` is set unparks it (an `unpark` before the park leaves a token).
    fn wait(&self, seen: u64, at_most: Duration) {
        use std::sync::atomic::Ordering;
        if let Ok(mut w) = self.waiter.lock() {
            *w = Some(std::thread::current());
        }
        self.waiting.store(true, Ordering::SeqCst);
        if self.deliveries.load(Ordering::SeqCst) == seen {
            std::thread::park_timeout(at_most);
        }
        self.waiting.store(false, Ordering::Release);
    }

    /// Called for every delivery report: costs one atomic load unless a thread waits.
    fn notify(&self) {
        use std::sync::atomic::Ordering;
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.waiter.lock().ok().and_then(|mut w| w.take()) {
                t.unpark();
            }
        }
    }
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                self.tracker.ack(seq as u64);
                self.room.notify();
            }
            Err((e, msg)) => {
                use rdkafka::Message;
                self.tracker.fail(format!(
                    "delivery to topic {} failed: {e}; the checkpoint stays before this record",
                    msg.topic()
                ));
                self.room.notify();
            }
        }
    }
}

/// Where one pipeline's records go.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic: Arc<str>,
    pub tombstones: bool,
    pub dead_letter: Option<Arc<str>>,
    pub on_oversize: OnOversize,
}

pub struct KafkaSink {
    producer: ThreadedProducer<AckContext>,
    room: Arc<QueueRoom>,
    /// Route per pipeline index; `None` for pipelines with another sink.
    routes: Vec<Option<Route>>,
    tracker: AckTracker,
    /// The largest key + value the producer accepts: its `message.max.bytes` less
    /// [`FRAMING_BYTES`].
    max_bytes: usize,
    metrics: Arc<Metrics>,
    /// Pipelines stopped by an oversize record (`on_oversize: fail`): their records are
    /// acknowledged and dropped.
    stopped: std::collections::HashSet<usize>,
    /// Partitions per topic, read when a truncate record first goes to it.
    partitions: std::sync::Mutex<HashMap<Arc<str>, i32>>,
    /// The last record's encoded value, its buffer kept for the next.
    value: Vec<u8>,
}

/// The most of its encoding buffer the sink keeps between records, bytes.
const KEPT_VALUE_BYTES: usize = 64 * 1024;

/// The producer's `message.max.bytes` (librdkafka's default: 1,000,000).
pub fn max_message_bytes(cfg: &KafkaConfig) -> usize {
    cfg.properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

/// What librdkafka counts beside key and value against `message.max.bytes` (a record's
/// framing is at most 36 bytes in message format v2): a margin that always covers it.
pub const FRAMING_BYTES: usize = 512;

pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("enable.idempotence", "true");
    c.set("linger.ms", "5");
    c.set("message.timeout.ms", "0");
    // Bounds memory while a large transaction flows (librdkafka defaults to 100,000).
    c.set("queue.buffering.max.messages", "20000");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

impl KafkaSink {
    /// `routes[i]` is pipeline i's route, if its sink is Kafka.
    pub fn new(
        cfg: &KafkaConfig,
        routes: Vec<Option<Route>>,
        tracker: AckTracker,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let room = Arc::new(QueueRoom::default());
        let producer: ThreadedProducer<AckContext> = client_config(cfg)
            .create_with_context(AckContext {
                tracker: tracker.clone(),
                room: room.clone(),
            })
            .map_err(|e| SinkError::Kafka(format!("cannot create the producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            room,
            routes,
            tracker,
            max_bytes: max_message_bytes(cfg).saturating_sub(FRAMING_BYTES),
            metrics,
            stopped: Default::default(),
            partitions: Default::default(),
            value: Vec::with_capacity(4096),
        })
    }

    /// Queues one message (`key` `None`: a null key; `partition` `None`: the partitioner's
    /// choice), waiting while the producer's queue is full.
    fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        partition: Option<i32>,
        value: Option<&[u8]>,
        seq: u64,
    ) -> Result<(), SinkError> {
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, seq as usize);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        loop {
            let seen = self.room.seen();
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: the producer's queue is full; wait for deliveries.
                    if let Some(f) = self.tracker.failure() {
                        return Err(SinkError::Kafka(f));
                    }
                    self.room.wait(seen, Duration::from_millis(10));
                    rec = r;
                }
                Err((e, _)) => {
                    return Err(SinkError::Kafka(format!(
                        "cannot queue a record for {topic}: {e}"
                    )))
                }
            }
        }
    }

    /// The partitions of `topic` (from the broker's metadata, once per topic; 1 if it cannot
    /// be read).
    fn partitions(&self, topic: &Arc<str>) -> i32 {
        let mut known = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = known.get(topic) {
            return *n;
        }
        let n = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                tracing::warn!(%topic, "cannot read the topic's partitions; truncate records go to partition 0 only");
                1
            });
        known.insert(topic.clone(), n);
        n
    }

    /// Sends `rec`, encoding its value into `value` (empty): `Ok(0)` when the pipeline has
    /// no route here, or was stopped (its record acknowledged unsent).
    fn send_encoded(
        &mut self,
        rec: &ChangeRecord,
        seq: u64,
        value: &mut Vec<u8>,
    ) -> Result<u32, SinkError> {
        let Some(Some(route)) = self.routes.get(rec.pipeline) else {
            return Ok(0);
        };
        if self.stopped.contains(&rec.pipeline) {
            self.ack_unsent(rec, seq, 0);
            return Ok(0);
        }
        let key = message_key(rec);
        super::envelope::write_record(rec, value)?;
        let size = key.as_ref().map_or(0, Vec::len) + value.len();
        if size > self.max_bytes {
            let route = route.clone();
            return self.oversize(&route, rec, seq, size);
        }
        if rec.op == Op::Truncate {
            let n = self.partitions(&route.topic);
            for p in 0..n {
                self.produce(&route.topic, None, Some(p), Some(value), seq)?;
            }
            return Ok(n as u32);
        }
        self.produce(&route.topic, key.as_deref(), None, Some(value), seq)?;
        if tombstone_after(route, rec) {
            self.produce(&route.topic, key.as_deref(), None, None, seq)?;
            return Ok(2);
        }
        Ok(1)
    }
}

/// Whether a record is followed by a tombstone: a delete of a keyed row, when asked.
fn tombstone_after(route: &Route, rec: &ChangeRecord) -> bool {
    route.tombstones && rec.op == Op::Delete && !rec.key.names.is_empty()
}

/// The message key: the key columns as a JSON object; none for a table without a key (and
/// for a truncate).
fn message_key(rec: &ChangeRecord) -> Option<Vec<u8>> {
    (!rec.key.names.is_empty()).then(|| key_bytes(rec))
}

impl Sink for KafkaSink {
    fn acks_for(&self, rec: &ChangeRecord) -> u32 {
        match self.routes.get(rec.pipeline) {
            // A truncate goes to every partition: each partition's consumers see it in order.
            Some(Some(r)) if rec.op == Op::Truncate => self.partitions(&r.topic) as u32,
            Some(Some(r)) if tombstone_after(r, rec) => 2,
            _ => 1,
        }
    }

    fn send(&mut self, rec: &ChangeRecord, seq: u64) -> Result<u32, SinkError> {
        // The value is encoded into a buffer kept between records (librdkafka copies it).
        let mut value = std::mem::take(&mut self.value);
        value.clear();
        let sent = self.send_encoded(rec, seq, &mut value);
        // An oversize record's buffer is not kept for the life of the process.
        value.shrink_to(KEPT_VALUE_BYTES);
        self.value = value;
        sent
    }

    fn send_dead_letter(&mut self, rec: &ChangeRecord, seq: u64) -> Result<bool, SinkError> {
        let Some(Some(Route {
            dead_letter: Some(topic),
            ..
        })) = self.routes.get(rec.pipeline)
        else {
            return Ok(false);
        };
        let topic = topic.clone();
        let key = message_key(rec);
        let mut value = Vec::with_capacity(512);
        super::envelope::write_record(rec, &mut value)?;
        let size = key.as_ref().map_or(0, Vec::len) + value.len();
        if size > self.max_bytes {
            let notice = self.notice(rec, size);
            self.produce(&topic, key.as_deref(), None, Some(&notice), seq)?;
            return Ok(true);
        }
        self.produce(&topic, key.as_deref(), None, Some(&value), seq)?;
        Ok(true)
    }

    fn poll(&mut self) -> Result<(), SinkError> {
        match self.tracker.failure() {
            Some(f) => Err(SinkError::Kafka(f)),
            None => Ok(()),
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        let start = Instant::now();
        self.producer
            .flush(timeout)
            .map_err(|e| SinkError::Kafka(format!("flush: {e}")))?;
        self.poll()?;
        let pending = self.producer.in_flight_count();
        if pending > 0 {
            return Err(SinkError::FlushTimeout {
                pending: pending as usize,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        Ok(())
    }
}

/// Creates the topics that do not exist yet.
pub async fn create_topics(cfg: &KafkaConfig, topics: &[String]) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .map_err(|e| SinkError::Kafka(format!("cannot create the admin client: {e}")))?;
    let mut uniq: Vec<&String> = topics.iter().collect();
    uniq.sort();
    uniq.dedup();
    let new: Vec<NewTopic<'_>> = uniq
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.topic_partitions,
                TopicReplication::Fixed(cfg.topic_replication),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| SinkError::Kafka(format!("cannot create topics at {}: {e}", cfg.brokers)))?;
    let mut errors: HashMap<String, String> = HashMap::new();
    for r in results {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                errors.insert(t, code.to_string());
            }
        }
    }
    if !errors.is_empty() {
        return Err(SinkError::Kafka(format!(
            "cannot create topics: {errors:?}"
        )));
    }
    Ok(())
}
