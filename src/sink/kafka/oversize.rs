//! Records larger than the producer accepts (`message.max.bytes`): the sink's `on_oversize`
//! policy. librdkafka refuses a message whose key and value exceed the limit
//! (`MSG_SIZE_TOO_LARGE`); left to it, such a record would end the daemon at every restart.

use std::sync::atomic::Ordering;

use super::{KafkaSink, Route};
use crate::config::pipeline::OnOversize;
use crate::model::record::{ChangeRecord, Oversize};
use crate::model::ColumnValue;
use crate::sink::{Sink, SinkError};

impl KafkaSink {
    /// Acknowledges the messages of `seq` this record will not send (`sent` were sent).
    pub(super) fn ack_unsent(&self, rec: &ChangeRecord, seq: u64, sent: u32) {
        for _ in sent..self.acks_for(rec) {
            self.tracker.ack(seq);
        }
    }

    /// The notice that stands for a record too large to send: its key, position and size.
    pub(super) fn notice(&self, rec: &ChangeRecord, bytes: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "op": rec.op,
            "before": null,
            "after": null,
            "source": rec.source,
            "error": {
                "kind": "oversize",
                "message": format!(
                    "the record is {bytes} bytes; the producer accepts {} (message.max.bytes); \
                     raise it and the topic's max.message.bytes, or set on_oversize: truncate",
                    self.max_bytes + super::FRAMING_BYTES
                ),
                "bytes": bytes,
                "limit": self.max_bytes,
            },
        }))
        .unwrap_or_default()
    }

    pub(super) fn oversize(
        &mut self,
        route: &Route,
        rec: &ChangeRecord,
        seq: u64,
        bytes: usize,
    ) -> Result<u32, SinkError> {
        let pm = self.metrics.pipelines.get(rec.pipeline);
        if let Some(pm) = pm {
            pm.oversize_records.fetch_add(1, Ordering::Relaxed);
        }
        let key = super::message_key(rec);
        let key_text = key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let key_len = key.as_ref().map_or(0, Vec::len);
        match route.on_oversize {
            OnOversize::Truncate => {
                if let Some(cut) = truncate(rec, bytes, self.max_bytes, key_len) {
                    tracing::warn!(pipeline = %rec.source.pipeline, key = %key_text, bytes,
                        limit = self.max_bytes, truncated = ?cut.oversize.as_ref().map(|o| &o.truncated),
                        "record larger than the producer accepts: its largest values were cut (on_oversize: truncate)");
                    let mut value = Vec::with_capacity(self.max_bytes);
                    crate::sink::envelope::write_record(&cut, &mut value)?;
                    self.produce(&route.topic, key.as_deref(), None, Some(&value), seq)?;
                    if super::tombstone_after(route, rec) {
                        self.produce(&route.topic, key.as_deref(), None, None, seq)?;
                        return Ok(2);
                    }
                    return Ok(1);
                }
                self.dead_letter_notice(route, rec, seq, key.as_deref(), bytes)
            }
            OnOversize::DeadLetter => {
                self.dead_letter_notice(route, rec, seq, key.as_deref(), bytes)
            }
            OnOversize::Fail => {
                tracing::error!(pipeline = %rec.source.pipeline, key = %key_text,
                    position = %format!("{}:{} (rows event {}, row {})", rec.source.file, rec.source.pos, rec.source.event, rec.source.row),
                    bytes, limit = self.max_bytes,
                    "pipeline stopped: a record is larger than the Kafka producer accepts (on_oversize: fail); \
                     raise the producer's message.max.bytes (kafka.properties) and the topic's max.message.bytes, \
                     restart, and backfill the pipeline");
                self.stopped.insert(rec.pipeline);
                if let Some(pm) = pm {
                    pm.stopped.store(1, Ordering::Relaxed);
                }
                self.ack_unsent(rec, seq, 0);
                Ok(0)
            }
        }
    }

    fn dead_letter_notice(
        &mut self,
        route: &Route,
        rec: &ChangeRecord,
        seq: u64,
        key: Option<&[u8]>,
        bytes: usize,
    ) -> Result<u32, SinkError> {
        let topic = route.dead_letter.clone().unwrap_or(route.topic.clone());
        tracing::warn!(pipeline = %rec.source.pipeline, key = %String::from_utf8_lossy(key.unwrap_or_default()), bytes,
            limit = self.max_bytes, topic = %topic,
            "record larger than the producer accepts: a notice goes to the dead letters instead (on_oversize: dead_letter)");
        let notice = self.notice(rec, bytes);
        self.produce(&topic, key, None, Some(&notice), seq)?;
        self.ack_unsent(rec, seq, 1);
        Ok(1)
    }
}

/// The record with its largest values cut until key and value fit in `limit` bytes: texts
/// shortened (at a character boundary), documents and other values set to null. `None` when
/// even that does not make it fit.
fn truncate(
    rec: &ChangeRecord,
    bytes: usize,
    limit: usize,
    key_len: usize,
) -> Option<ChangeRecord> {
    let room = limit.saturating_sub(key_len);
    let mut cut = rec.clone();
    let mut names = Vec::new();
    let mut size = bytes;
    for _ in 0..64 {
        if size <= room {
            cut.oversize = Some(Oversize {
                bytes,
                limit,
                truncated: names,
            });
            // The marker itself takes room: measure once more.
            let n = serde_json::to_vec(&cut).ok()?.len();
            if n <= room {
                return Some(cut);
            }
            size = n;
            names = cut.oversize.take()?.truncated;
        }
        let excess = size - room;
        let (side, i) = largest(&cut)?;
        let img = if side == "after" {
            cut.after.as_mut()?
        } else {
            cut.before.as_mut()?
        };
        let name = format!("{side}.{}", img.names[i]);
        let v = &mut img.values[i];
        match v {
            ColumnValue::Text(s) if s.len() > excess + 64 => {
                let mut keep = s.len() - excess - 64;
                while !s.is_char_boundary(keep) {
                    keep -= 1;
                }
                s.truncate(keep);
            }
            _ => *v = ColumnValue::Null,
        }
        if !names.contains(&name) {
            names.push(name);
        }
        size = serde_json::to_vec(&cut).ok()?.len();
    }
    None
}

/// The image side and column of the largest value (by its JSON size).
fn largest(rec: &ChangeRecord) -> Option<(&'static str, usize)> {
    let mut best: Option<(&'static str, usize, usize)> = None;
    for (side, img) in [("after", &rec.after), ("before", &rec.before)] {
        let Some(img) = img else { continue };
        for (i, v) in img.values.iter().enumerate() {
            let n = match v {
                ColumnValue::Null => 0,
                ColumnValue::Text(s) => s.len(),
                ColumnValue::Json(j) => j.get().len(),
                _ => 8,
            };
            if n > 0 && best.is_none_or(|b| n > b.2) {
                best = Some((side, i, n));
            }
        }
    }
    best.map(|(s, i, _)| (s, i))
}
