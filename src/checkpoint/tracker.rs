//! Tracks records in flight so that only positions whose records were all acknowledged are
//! checkpointed, whatever order the acknowledgements arrive in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::BinlogPosition;

#[derive(Debug)]
struct Entry {
    /// The position to resume from once this entry and all before it are done.
    resume: BinlogPosition,
    remaining: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    committed: Option<BinlogPosition>,
    failure: Option<String>,
}

/// Shared between the stage that sends records and the sinks' delivery callbacks.
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    inner: Arc<Mutex<Inner>>,
    failed: Arc<AtomicBool>,
}

impl AckTracker {
    pub fn new(start: Option<BinlogPosition>) -> Self {
        let t = AckTracker::default();
        t.lock().committed = start;
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the queue inconsistent (each method
        // finishes its mutation before anything can panic), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a source event that produced `pending` records; returns the sequence number
    /// their acknowledgements must name.
    pub fn push(&self, resume: BinlogPosition, pending: u32) -> u64 {
        let mut g = self.lock();
        if pending == 0 {
            if g.entries.is_empty() {
                g.committed = Some(resume);
                return g.base;
            }
            if let Some(back) = g.entries.back_mut() {
                if back.remaining == 0 {
                    // Nothing waits on the last entry: a later position subsumes it.
                    back.resume = resume;
                    return g.base + g.entries.len() as u64 - 1;
                }
            }
        }
        g.entries.push_back(Entry {
            resume,
            remaining: pending,
        });
        g.base + g.entries.len() as u64 - 1
    }

    /// One record of `seq` was acknowledged.
    pub fn ack(&self, seq: u64) {
        let mut g = self.lock();
        let Some(i) = seq.checked_sub(g.base) else {
            return;
        };
        if let Some(e) = g.entries.get_mut(i as usize) {
            e.remaining = e.remaining.saturating_sub(1);
        }
        while g.entries.front().is_some_and(|e| e.remaining == 0) {
            let Some(e) = g.entries.pop_front() else {
                break;
            };
            g.base += 1;
            g.committed = Some(e.resume);
        }
    }

    /// A record could not be delivered: the daemon must stop, and the checkpoint stays before it.
    pub fn fail(&self, reason: String) {
        let mut g = self.lock();
        if g.failure.is_none() {
            g.failure = Some(reason);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.lock().failure.clone()
    }

    /// The position after every acknowledged record.
    pub fn committed(&self) -> Option<BinlogPosition> {
        self.lock().committed.clone()
    }

    /// Source events whose records are not all acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.remaining > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pos: u64, row: u64) -> BinlogPosition {
        BinlogPosition {
            row,
            ..BinlogPosition::new("f", pos)
        }
    }

    #[test]
    fn commits_only_contiguous_acks() {
        let t = AckTracker::new(None);
        let a = t.push(p(4, 1), 1);
        let b = t.push(p(4, 2), 2);
        t.push(p(100, 0), 0);
        let c = t.push(p(100, 1), 1);
        t.ack(b);
        t.ack(c);
        assert_eq!(t.committed(), None);
        t.ack(a);
        assert_eq!(t.committed(), Some(p(4, 1)));
        t.ack(b);
        assert_eq!(t.committed(), Some(p(100, 1)));
        assert_eq!(t.in_flight(), 0);
        t.push(p(200, 0), 0);
        assert_eq!(t.committed(), Some(p(200, 0)));
    }
}
