//! Tracks records in flight so that only positions whose records were all acknowledged are
//! checkpointed, whatever order the acknowledgements arrive in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use crate::model::BinlogPosition;
use crate::source::mysql::xa::{OpenXa, Xid};

/// A change to the set of prepared XA transactions, applied when the checkpoint passes it.
#[derive(Debug, Clone, PartialEq)]
pub enum XaChange {
    Prepared(OpenXa),
    Ended(Xid),
}

#[derive(Debug)]
struct Entry {
    /// The position to resume from once this entry and all before it are done.
    resume: BinlogPosition,
    remaining: u32,
    /// XA changes that hold once this entry is done.
    xa: Vec<XaChange>,
    /// Windows whose record acknowledges this entry: done with it (by itself, whatever the
    /// entries before).
    windows: Vec<(String, String)>,
}

/// A window of a windowed pipeline: its group (the group's values as JSON, empty without a
/// group) and its last row's position. Within a group, windows follow one another in stream
/// order; a mark counts as delivered only once its window and every earlier window of its group
/// were acknowledged (acknowledgements may come out of order), so every row of the group up to
/// `last` was delivered: after a restart, rows of the group read again up to it join no window
/// (else they would make windows with other edges than those already delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowMark {
    pub pipeline: String,
    pub group: String,
    pub last: BinlogPosition,
}

/// A window handed on and not yet counted as delivered: the sequence number its record
/// acknowledges, its last row, and whether that sequence number is done.
type PendingWindow = (u64, BinlogPosition, bool);

/// Per windowed pipeline, per group: the last row's position of the last window delivered.
pub type DeliveredWindows =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, BinlogPosition>>;

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    committed: Option<BinlogPosition>,
    /// The prepared XA transactions as of `committed`.
    open_xa: BTreeMap<Xid, OpenXa>,
    /// XA changes waiting for the next entry (the end of their group).
    next_xa: Vec<XaChange>,
    failure: Option<String>,
    /// The windows delivered (kept in the checkpoint).
    windows: DeliveredWindows,
    /// Per (pipeline, group), windows handed on and not yet counted as delivered, in stream
    /// order: (sequence number, last row, acknowledged).
    pending_windows: std::collections::HashMap<(String, String), VecDeque<PendingWindow>>,
}

impl Inner {
    /// The window of `group` acknowledging `seq` is acknowledged: every leading acknowledged
    /// window of its group counts as delivered.
    fn window_done(&mut self, group: (String, String), seq: u64) {
        let Some(q) = self.pending_windows.get_mut(&group) else {
            return;
        };
        if let Some(w) = q.iter_mut().find(|w| w.0 == seq) {
            w.2 = true;
        }
        let mut last = None;
        while q.front().is_some_and(|w| w.2) {
            last = q.pop_front().map(|w| w.1);
        }
        if q.is_empty() {
            self.pending_windows.remove(&group);
        }
        if let Some(last) = last {
            let (pipeline, g) = group;
            self.windows.entry(pipeline).or_default().insert(g, last);
        }
    }

    fn apply(&mut self, changes: Vec<XaChange>) {
        for c in changes {
            match c {
                XaChange::Prepared(o) => {
                    self.open_xa.insert(o.xid.clone(), o);
                }
                XaChange::Ended(x) => {
                    self.open_xa.remove(&x);
                }
            }
        }
    }
}

/// Shared between the stage that sends records and the sinks' delivery callbacks.
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    inner: Arc<Mutex<Inner>>,
    failed: Arc<AtomicBool>,
}

impl AckTracker {
    #[cfg(test)]
    pub fn new(start: Option<BinlogPosition>) -> Self {
        Self::with_open_xa(start, Vec::new())
    }

    /// Starts at `start` with the prepared XA transactions a checkpoint kept.
    pub fn with_open_xa(start: Option<BinlogPosition>, open: Vec<OpenXa>) -> Self {
        let t = AckTracker::default();
        {
            let mut g = t.lock();
            g.committed = start;
            g.open_xa = open.into_iter().map(|o| (o.xid.clone(), o)).collect();
        }
        t
    }

    /// An XA change that holds once the next registered source event is done (the end of its
    /// group).
    pub fn push_xa(&self, change: XaChange) {
        self.lock().next_xa.push(change);
    }

    /// The prepared XA transactions whose outcome the committed position has not passed.
    pub fn open_xa(&self) -> Vec<OpenXa> {
        let mut v: Vec<OpenXa> = self.lock().open_xa.values().cloned().collect();
        v.sort_by(|a, b| a.position.cmp(&b.position));
        v
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
        let xa = std::mem::take(&mut g.next_xa);
        if pending == 0 {
            if g.entries.is_empty() {
                g.committed = Some(resume);
                g.apply(xa);
                return g.base;
            }
            if let Some(back) = g.entries.back_mut() {
                if back.remaining == 0 {
                    // Nothing waits on the last entry: a later position subsumes it.
                    back.resume = resume;
                    back.xa.extend(xa);
                    return g.base + g.entries.len() as u64 - 1;
                }
            }
        }
        g.entries.push_back(Entry {
            resume,
            remaining: pending,
            xa,
            windows: Vec::new(),
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
            if e.remaining == 0 && !e.windows.is_empty() {
                let groups = std::mem::take(&mut e.windows);
                for group in groups {
                    g.window_done(group, seq);
                }
            }
        }
        while g.entries.front().is_some_and(|e| e.remaining == 0) {
            let Some(e) = g.entries.pop_front() else {
                break;
            };
            g.base += 1;
            g.committed = Some(e.resume);
            g.apply(e.xa);
        }
    }

    /// A window is handed on, its record acknowledging `seq`: it counts as delivered once
    /// `seq` is done and every window of its group marked before it is. Called in stream
    /// order for a group, before the record can be acknowledged.
    pub fn mark_window(&self, seq: u64, mark: WindowMark) {
        let mut g = self.lock();
        let group = (mark.pipeline, mark.group);
        g.pending_windows
            .entry(group.clone())
            .or_default()
            .push_back((seq, mark.last, false));
        let i = seq.checked_sub(g.base).map(|i| i as usize);
        match i.and_then(|i| g.entries.get_mut(i)) {
            Some(e) if e.remaining > 0 => e.windows.push(group),
            _ => g.window_done(group, seq),
        }
    }

    /// The windows delivered, for the checkpoint: those whose last row is past the committed
    /// position (rows at or before it are never read again, so their marks are not needed).
    pub fn delivered_windows(&self) -> DeliveredWindows {
        let g = self.lock();
        let mut out = DeliveredWindows::new();
        for (pipeline, groups) in &g.windows {
            let live: std::collections::BTreeMap<String, BinlogPosition> = groups
                .iter()
                .filter(|(_, last)| g.committed.as_ref().is_none_or(|c| **last >= *c))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !live.is_empty() {
                out.insert(pipeline.clone(), live);
            }
        }
        out
    }

    /// Starts from the windows a checkpoint kept.
    pub fn restore_windows(&self, windows: DeliveredWindows) {
        self.lock().windows = windows;
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

impl crate::metrics::AckView for AckTracker {
    fn in_flight(&self) -> usize {
        AckTracker::in_flight(self)
    }

    fn committed(&self) -> Option<BinlogPosition> {
        AckTracker::committed(self)
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

    #[test]
    fn a_window_counts_as_delivered_only_after_the_earlier_windows_of_its_group() {
        let t = AckTracker::new(None);
        let mark = |group: &str, pos: u64| WindowMark {
            pipeline: "w".into(),
            group: group.into(),
            last: p(pos, 0),
        };
        let first = t.push(p(1, 0), 1);
        let second = t.push(p(2, 0), 1);
        let other = t.push(p(3, 0), 1);
        t.mark_window(first, mark("a", 10));
        t.mark_window(second, mark("a", 20));
        t.mark_window(other, mark("b", 30));
        // The second window of `a` and the one of `b` acknowledged first: `b` is delivered,
        // `a` is not (its first window may never be).
        t.ack(second);
        t.ack(other);
        let got = t.delivered_windows();
        assert_eq!(got["w"].get("a"), None);
        assert_eq!(got["w"]["b"], p(30, 0));
        t.ack(first);
        assert_eq!(t.delivered_windows()["w"]["a"], p(20, 0));
        // Marks at or before the committed position are no longer kept.
        let late = t.push(p(40, 0), 0);
        t.mark_window(late, mark("c", 35));
        assert_eq!(t.committed(), Some(p(40, 0)));
        assert!(
            t.delivered_windows().is_empty(),
            "{:?}",
            t.delivered_windows()
        );
    }

    #[test]
    fn prepared_xa_transactions_follow_the_committed_position() {
        let xid = Xid {
            format_id: 1,
            gtrid: "61".into(),
            bqual: String::new(),
        };
        let open = OpenXa {
            xid: xid.clone(),
            position: p(10, 0),
            ts_ms: 5,
        };
        let t = AckTracker::new(None);
        let a = t.push(p(5, 1), 1);
        t.push_xa(XaChange::Prepared(open.clone()));
        t.push(p(20, 0), 0); // the prepare group's end
        assert!(
            t.open_xa().is_empty(),
            "not before the row before it is acknowledged"
        );
        t.ack(a);
        assert_eq!(t.open_xa(), vec![open]);
        let b = t.push(p(30, 1), 1); // a row of the XA COMMIT group
        t.push_xa(XaChange::Ended(xid));
        t.push(p(40, 0), 0);
        assert_eq!(t.open_xa().len(), 1);
        t.ack(b);
        assert!(t.open_xa().is_empty());
        assert_eq!(t.committed(), Some(p(40, 0)));
    }
}
