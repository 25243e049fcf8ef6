//! How far the stream has come in commit time: moved by the pipeline stage as it takes source
//! events, read by windowed enrichment stages to close windows whose time is up.

use std::sync::atomic::{AtomicU64, Ordering};

/// A window whose end the reader passed while at the end of the binlog is closed only this
/// long after its end (commit timestamps have whole seconds).
pub const CAUGHT_UP_SLACK_MS: u64 = 1000;

/// The stream's commit time, shared by the pipeline stage (which moves it after handing on
/// each event's records) and windowed enrichment stages. All times in ms since the Unix epoch.
#[derive(Debug, Default)]
pub struct StreamClock {
    /// The latest event timestamp taken.
    ts_ms: AtomicU64,
    /// Wall time of the latest heartbeat taken: the reader was then at the end of the binlog.
    caught_up_ms: AtomicU64,
}

/// A reading of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockReading {
    pub ts_ms: u64,
    pub caught_up_ms: u64,
}

impl StreamClock {
    /// An event with this timestamp was taken (its records already handed on).
    pub fn advance(&self, ts_ms: u64) {
        self.ts_ms.fetch_max(ts_ms, Ordering::Release);
    }

    /// A heartbeat was taken at wall time `wall_ms`: every event before it was handed on.
    pub fn caught_up(&self, wall_ms: u64) {
        self.caught_up_ms.fetch_max(wall_ms, Ordering::Release);
    }

    /// The clock now. Read it before draining a channel: every record sent before the
    /// reading's events is then in the channel.
    pub fn read(&self) -> ClockReading {
        ClockReading {
            ts_ms: self.ts_ms.load(Ordering::Acquire),
            caught_up_ms: self.caught_up_ms.load(Ordering::Acquire),
        }
    }
}

impl ClockReading {
    /// Whether the stream is past `end_ms`: an event at or after it was taken, or the reader
    /// was at the end of the binlog [`CAUGHT_UP_SLACK_MS`] after it (nothing newer was there).
    pub fn passed(&self, end_ms: u64) -> bool {
        self.ts_ms >= end_ms || self.caught_up_ms >= end_ms.saturating_add(CAUGHT_UP_SLACK_MS)
    }
}

/// The wall clock, ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_an_end_by_event_time_or_by_a_late_heartbeat() {
        let c = StreamClock::default();
        c.advance(5_000);
        c.advance(4_000); // timestamps may step back; the clock does not
        assert_eq!(c.read().ts_ms, 5_000);
        assert!(c.read().passed(5_000));
        assert!(!c.read().passed(5_001));
        c.caught_up(5_001 + CAUGHT_UP_SLACK_MS);
        assert!(c.read().passed(5_001));
        assert!(!c.read().passed(5_002));
    }
}
