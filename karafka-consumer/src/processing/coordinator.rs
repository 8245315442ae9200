//! The state of one assigned partition, shared by the listener, its jobs and the rebalance
//! callbacks. Created on the partition's first batch, dropped when it is revoked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use karafka_core::TopicPartition;

/// A pause in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    pub(crate) until: Instant,
    pub(crate) resume_from: i64,
    /// A retry back-off (not a pause the consumer asked for); the harness ends these at the
    /// next `consume`.
    pub(crate) retry: bool,
}

/// What a consumer asked for during its job; applied by the listener after the job.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Intents {
    pub(crate) seek: Option<i64>,
    pub(crate) pause: Option<(i64, Duration)>,
    pub(crate) resume: bool,
}

impl Intents {
    /// Whether the consumer moved or held the partition itself (then the batch is not marked
    /// automatically).
    pub(crate) fn took_control(&self) -> bool {
        self.seek.is_some() || self.pause.is_some()
    }
}

/// A collapse in force (virtual partitions): batches that start below `until` run as one
/// group, in order, skipping the messages at `skip` (already processed in a split batch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Collapse {
    pub(crate) until: i64,
    /// Ascending.
    pub(crate) skip: Vec<i64>,
}

#[derive(Debug)]
struct State {
    /// The attempt the current batch is on (1 = first try).
    attempt: u32,
    /// The highest next-offset stored for commit, -1 when none.
    stored: i64,
    pause: Option<Pause>,
    intents: Intents,
    collapse: Option<Collapse>,
    /// A dead letter refused because its payload was cleaned waits for this offset: its
    /// payload is not cleaned when fetched again.
    keep_payload: Option<i64>,
}

#[derive(Debug)]
pub(crate) struct Coordinator {
    pub(crate) tp: TopicPartition,
    revoked: AtomicBool,
    state: Mutex<State>,
}

impl Coordinator {
    pub(crate) fn new(tp: TopicPartition) -> Self {
        Coordinator {
            tp,
            revoked: AtomicBool::new(false),
            state: Mutex::new(State {
                attempt: 1,
                stored: -1,
                pause: None,
                intents: Intents::default(),
                collapse: None,
                keep_payload: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub(crate) fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Records `next_offset` as stored; false when an equal or later one already is.
    pub(crate) fn mark(&self, next_offset: i64) -> bool {
        let mut state = self.state();
        if next_offset <= state.stored {
            return false;
        }
        state.stored = next_offset;
        true
    }

    /// Records `next_offset` as stored and runs `store` with it, under the lock (so
    /// concurrent callers store in increasing order); None when an equal or later one
    /// already is (nothing runs).
    pub(crate) fn mark_and_store(
        &self,
        next_offset: i64,
        store: impl FnOnce(i64) -> bool,
    ) -> Option<bool> {
        let mut state = self.state();
        if next_offset <= state.stored {
            return None;
        }
        state.stored = next_offset;
        Some(store(next_offset))
    }

    /// The highest next-offset stored, if any.
    pub(crate) fn stored(&self) -> Option<i64> {
        let stored = self.state().stored;
        (stored >= 0).then_some(stored)
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.state().attempt
    }

    pub(crate) fn set_attempt(&self, attempt: u32) {
        self.state().attempt = attempt;
    }

    pub(crate) fn request_seek(&self, offset: i64) {
        self.state().intents.seek = Some(offset);
    }

    pub(crate) fn request_pause(&self, offset: i64, timeout: Duration) {
        self.state().intents.pause = Some((offset, timeout));
    }

    pub(crate) fn request_resume(&self) {
        self.state().intents.resume = true;
    }

    /// The consumer's requests so far (kept).
    pub(crate) fn peek_intents(&self) -> Intents {
        self.state().intents
    }

    /// The consumer's requests from the job that just ended (cleared).
    pub(crate) fn take_intents(&self) -> Intents {
        std::mem::take(&mut self.state().intents)
    }

    pub(crate) fn pause(&self) -> Option<Pause> {
        self.state().pause
    }

    pub(crate) fn set_pause(&self, pause: Option<Pause>) {
        self.state().pause = pause;
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.state().pause.is_some()
    }

    /// Keeps the payload at `offset` from being cleaned (`None`: no longer).
    pub(crate) fn keep_payload(&self, offset: Option<i64>) {
        self.state().keep_payload = offset;
    }

    /// The offset whose payload is kept, if any.
    pub(crate) fn kept_payload(&self) -> Option<i64> {
        self.state().keep_payload
    }

    /// The collapse in force, if any.
    pub(crate) fn collapse(&self) -> Option<Collapse> {
        self.state().collapse.clone()
    }

    /// Collapses batches until `until` (merged with a collapse in force: the later end
    /// wins), skipping `skip` (already processed). Skips below the stored offset are
    /// dropped: nothing before it is fetched again.
    pub(crate) fn collapse_until(&self, until: i64, skip: &[i64]) {
        let mut state = self.state();
        let stored = state.stored;
        let collapse = state.collapse.get_or_insert_with(Collapse::default);
        collapse.until = collapse.until.max(until);
        collapse.skip.extend_from_slice(skip);
        collapse.skip.retain(|&o| o >= stored);
        collapse.skip.sort_unstable();
        collapse.skip.dedup();
    }

    /// Ends the collapse once processing reached `next_offset` at or past its end.
    pub(crate) fn uncollapse_at(&self, next_offset: i64) {
        let mut state = self.state();
        if state
            .collapse
            .as_ref()
            .is_some_and(|c| next_offset >= c.until)
        {
            state.collapse = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_move_forward() {
        let c = Coordinator::new(TopicPartition::new("t", 0));
        assert_eq!(c.stored(), None);
        assert!(c.mark(5));
        assert!(!c.mark(5));
        assert!(!c.mark(3));
        assert!(c.mark(9));
        assert_eq!(c.stored(), Some(9));
    }

    #[test]
    fn collapses_merge_and_end_past_their_end() {
        let c = Coordinator::new(TopicPartition::new("t", 0));
        assert!(c.mark(10));
        c.collapse_until(20, &[15, 12, 8]);
        c.collapse_until(18, &[13, 12]);
        assert_eq!(
            c.collapse(),
            Some(Collapse {
                until: 20,
                skip: vec![12, 13, 15]
            })
        );
        c.uncollapse_at(19);
        assert!(c.collapse().is_some());
        c.uncollapse_at(20);
        assert_eq!(c.collapse(), None);
    }

    #[test]
    fn intents_are_taken_once() {
        let c = Coordinator::new(TopicPartition::new("t", 0));
        c.request_seek(7);
        c.request_pause(8, Duration::from_secs(1));
        let intents = c.take_intents();
        assert_eq!(intents.seek, Some(7));
        assert!(intents.took_control());
        assert!(!c.take_intents().took_control());
    }
}
