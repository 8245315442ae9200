//! What happens after a consume job: the decision is pure logic (tested here); the listener
//! carries it out.

use std::time::Duration;

use crate::processing::backoff::backoff;
use crate::routing::DeadLetterQueue;

/// The facts a decision is made from.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    /// Whether the job succeeded.
    pub(crate) succeeded: bool,
    /// The attempt that just ran (1 = first try).
    pub(crate) attempt: u32,
    /// First and last offset of the batch.
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    /// Next-offset stored before and after the job.
    pub(crate) stored_before: Option<i64>,
    pub(crate) stored_after: Option<i64>,
    /// The consumer marks offsets itself.
    pub(crate) manual: bool,
    /// The consumer seeked or paused during the job.
    pub(crate) took_control: bool,
    pub(crate) dlq: Option<&'a DeadLetterQueue>,
    /// The batch ran split into virtual partitions (not collapsed): a failure is always
    /// retried (collapsed), never dead-lettered from there.
    pub(crate) split: bool,
    pub(crate) pause_timeout: Duration,
    pub(crate) pause_max_timeout: Duration,
    pub(crate) exponential: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Store `next` (the batch is processed).
    Mark { next: i64 },
    /// Leave offsets alone (manual offsets, the consumer took control, or all marked already).
    Keep,
    /// Pause, then retry from `resume_from` as attempt `attempt` after `backoff`.
    Retry {
        attempt: u32,
        resume_from: i64,
        backoff: Duration,
    },
    /// Send the message at `offset` to the dead-letter queue and skip it.
    DeadLetter { offset: i64, attempts: u32 },
}

pub(crate) fn decide(f: &Facts<'_>) -> Decision {
    if f.succeeded {
        if f.manual || f.took_control {
            return Decision::Keep;
        }
        return Decision::Mark {
            next: f.last_offset + 1,
        };
    }
    // The first message not marked yet is where processing stopped.
    let resume_from = f
        .stored_after
        .map_or(f.first_offset, |s| s.max(f.first_offset));
    if resume_from > f.last_offset {
        // Everything was marked before the failure: nothing to retry.
        return Decision::Keep;
    }
    let progressed = f.stored_after > f.stored_before;
    // Failed tries of the message at `resume_from`.
    let failures = match f.dlq {
        Some(dlq) if dlq.is_independent() && progressed => 1,
        _ => f.attempt,
    };
    if let Some(dlq) = f.dlq.filter(|_| !f.split) {
        if failures > dlq.retries() {
            return Decision::DeadLetter {
                offset: resume_from,
                attempts: failures,
            };
        }
    }
    Decision::Retry {
        attempt: failures + 1,
        resume_from,
        backoff: backoff(
            failures,
            f.pause_timeout,
            f.pause_max_timeout,
            f.exponential,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(succeeded: bool, attempt: u32) -> Facts<'static> {
        Facts {
            succeeded,
            attempt,
            first_offset: 10,
            last_offset: 19,
            stored_before: Some(10),
            stored_after: Some(10),
            manual: false,
            took_control: false,
            dlq: None,
            split: false,
            pause_timeout: Duration::from_millis(100),
            pause_max_timeout: Duration::from_millis(1000),
            exponential: true,
        }
    }

    #[test]
    fn success_marks_the_batch_unless_the_consumer_owns_offsets() {
        assert_eq!(decide(&facts(true, 1)), Decision::Mark { next: 20 });
        assert_eq!(
            decide(&Facts {
                manual: true,
                ..facts(true, 1)
            }),
            Decision::Keep
        );
        assert_eq!(
            decide(&Facts {
                took_control: true,
                ..facts(true, 1)
            }),
            Decision::Keep
        );
    }

    #[test]
    fn failure_retries_from_the_first_unmarked_message_with_growing_backoff() {
        let d = decide(&Facts {
            stored_after: Some(14),
            ..facts(false, 1)
        });
        assert_eq!(
            d,
            Decision::Retry {
                attempt: 2,
                resume_from: 14,
                backoff: Duration::from_millis(100)
            }
        );
        let backoffs: Vec<_> = (1..=6)
            .map(|a| match decide(&facts(false, a)) {
                Decision::Retry { backoff, .. } => backoff.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(backoffs, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn dead_letter_after_max_retries() {
        let dlq = DeadLetterQueue::new("dlq").max_retries(2);
        let with = |attempt| Facts {
            dlq: Some(&dlq),
            ..facts(false, attempt)
        };
        assert!(matches!(
            decide(&with(1)),
            Decision::Retry { attempt: 2, .. }
        ));
        assert!(matches!(
            decide(&with(2)),
            Decision::Retry { attempt: 3, .. }
        ));
        assert_eq!(
            decide(&with(3)),
            Decision::DeadLetter {
                offset: 10,
                attempts: 3
            }
        );
        let zero = DeadLetterQueue::new("dlq").max_retries(0);
        assert_eq!(
            decide(&Facts {
                dlq: Some(&zero),
                ..facts(false, 1)
            }),
            Decision::DeadLetter {
                offset: 10,
                attempts: 1
            }
        );
    }

    #[test]
    fn a_split_batch_is_retried_collapsed_never_dead_lettered() {
        let dlq = DeadLetterQueue::new("dlq").max_retries(1);
        let split = |attempt| Facts {
            dlq: Some(&dlq),
            split: true,
            ..facts(false, attempt)
        };
        assert!(matches!(
            decide(&split(1)),
            Decision::Retry { attempt: 2, .. }
        ));
        // Even past the budget: the dead letter goes out from the collapsed retry.
        assert!(matches!(
            decide(&split(5)),
            Decision::Retry { attempt: 6, .. }
        ));
        assert!(matches!(
            decide(&Facts {
                split: false,
                ..split(2)
            }),
            Decision::DeadLetter { offset: 10, .. }
        ));
    }

    #[test]
    fn independent_budgets_start_over_after_progress() {
        let dlq = DeadLetterQueue::new("dlq").max_retries(1).independent(true);
        let progressed = Facts {
            dlq: Some(&dlq),
            stored_after: Some(15),
            ..facts(false, 2)
        };
        assert!(matches!(
            decide(&progressed),
            Decision::Retry {
                attempt: 2,
                resume_from: 15,
                ..
            }
        ));
        let shared = DeadLetterQueue::new("dlq").max_retries(1);
        let counted = Facts {
            dlq: Some(&shared),
            stored_after: Some(15),
            ..facts(false, 2)
        };
        assert_eq!(
            decide(&counted),
            Decision::DeadLetter {
                offset: 15,
                attempts: 2
            }
        );
    }

    #[test]
    fn failure_after_marking_everything_retries_nothing() {
        assert_eq!(
            decide(&Facts {
                stored_after: Some(20),
                ..facts(false, 1)
            }),
            Decision::Keep
        );
    }
}
