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
use crate::config::KafkaConfig;
use crate::pipeline::ChangeRecord;

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
}

pub struct KafkaSink {
    producer: ThreadedProducer<AckContext>,
    /// Route per pipeline index; `None` for pipelines with another sink.
    routes: Vec<Option<Route>>,
    tracker: AckTracker,
}

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
        let Some(Some(route)) = self.routes.get(rec.pipeline) else {
            return Ok(0);
        };
        let key = key_bytes(rec)?;
        let value = serde_json::to_vec(rec)?;
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
        let key = key_bytes(rec)?;
        let value = serde_json::to_vec(rec)?;
        self.produce(topic, &key, Some(&value), seq)?;
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
