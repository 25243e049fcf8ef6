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
use crate::pipeline::ChangeRecord;

mod oversize;

struct AckContext {
    tracker: AckTracker,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.tracker.ack(seq as u64),
            Err((e, msg)) => {
                use rdkafka::Message;
                self.tracker.fail(format!(
                    "delivery to topic {} failed: {e}; the checkpoint stays before this record",
                    msg.topic()
                ));
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
}

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
        let producer: ThreadedProducer<AckContext> = client_config(cfg)
            .create_with_context(AckContext {
                tracker: tracker.clone(),
            })
            .map_err(|e| SinkError::Kafka(format!("cannot create the producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            routes,
            tracker,
            max_bytes: max_message_bytes(cfg).saturating_sub(FRAMING_BYTES),
            metrics,
            stopped: Default::default(),
        })
    }

    fn produce(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        seq: u64,
    ) -> Result<(), SinkError> {
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, seq as usize).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: the producer's queue is full; wait for deliveries.
                    if let Some(f) = self.tracker.failure() {
                        return Err(SinkError::Kafka(f));
                    }
                    std::thread::sleep(Duration::from_millis(1));
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
}

impl Sink for KafkaSink {
    fn acks_for(&self, rec: &ChangeRecord) -> u32 {
        match self.routes.get(rec.pipeline) {
            Some(Some(r)) if r.tombstones && rec.op == "d" => 2,
            _ => 1,
        }
    }

    fn send(&mut self, rec: &ChangeRecord, seq: u64) -> Result<u32, SinkError> {
        let Some(Some(route)) = self.routes.get(rec.pipeline).cloned() else {
            return Ok(0);
        };
        if self.stopped.contains(&rec.pipeline) {
            self.ack_unsent(rec, seq, 0);
            return Ok(0);
        }
        let key = key_bytes(rec)?;
        let value = serde_json::to_vec(rec)?;
        if key.len() + value.len() > self.max_bytes {
            return self.oversize(&route, rec, seq, key.len() + value.len());
        }
        self.produce(&route.topic, &key, Some(&value), seq)?;
        if route.tombstones && rec.op == "d" {
            self.produce(&route.topic, &key, None, seq)?;
            return Ok(2);
        }
        Ok(1)
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
        let key = key_bytes(rec)?;
        let value = serde_json::to_vec(rec)?;
        if key.len() + value.len() > self.max_bytes {
            let notice = self.notice(rec, key.len() + value.len());
            self.produce(&topic, &key, Some(&notice), seq)?;
            return Ok(true);
        }
        self.produce(&topic, &key, Some(&value), seq)?;
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
