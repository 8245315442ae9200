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
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
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

#[derive(Debug)]
struct State {
    /// The attempt the current batch is on (1 = first try).
    attempt: u32,
    /// The highest next-offset stored for commit, -1 when none.
    stored: i64,
    pause: Option<Pause>,
    intents: Intents,
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
