//! What happens after a consume job: mark, retry after a back-off, dead-letter, and the seeks,
//! pauses and resumes the consumer asked for. One implementation for the listener (on
//! librdkafka) and the test harness (on a recorder), behind [`PartitionControl`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use karafka_core::instrumentation::{ErrorKind, Event, PauseReason};
use karafka_core::{Headers, KafkaError, TopicPartition};
use karafka_producer::Message as Outgoing;

use crate::context::ClientOps;
use crate::message::{BatchView, RecordRef};
use crate::processing::backoff::backoff;
use crate::processing::coordinator::{Coordinator, Intents, Pause};
use crate::processing::executor::Failure;
use crate::processing::group::GroupShared;
use crate::processing::strategy::{Decision, Facts, decide};
use crate::routing::{DeadLetterQueue, TopicRoute};

/// Fetch-position operations on a partition: librdkafka's in production.
pub(crate) trait PartitionControl {
    /// Stops fetching `tp`.
    fn pause(&self, tp: &TopicPartition) -> Result<(), KafkaError>;
    /// Fetches `tp` again.
    fn resume(&self, tp: &TopicPartition) -> Result<(), KafkaError>;
    /// Fetches `tp` from `offset` next.
    fn seek(&self, tp: &TopicPartition, offset: i64) -> Result<(), KafkaError>;
}

/// Where a settled partition goes on (what a long-running job's partition, paused while the
/// job ran, is resumed at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// An empty batch: nothing moves.
    Unchanged,
    /// From the message after the batch, this offset (it was marked or kept).
    After(i64),
    /// From `offset`: a dead letter was skipped, or the consumer sought.
    At(i64),
    /// Paused, by a retry's back-off or by the consumer: its resume seeks.
    Paused,
}

/// Settles jobs' outcomes for one subscription group.
pub(crate) struct Outcomes<'a> {
    pub(crate) shared: &'a GroupShared,
    pub(crate) ops: &'a dyn ClientOps,
    pub(crate) partitions: &'a dyn PartitionControl,
}

impl Outcomes<'_> {
    /// Acts on a finished consume job of `tp` (not revoked meanwhile), or on a split batch
    /// once all its groups ended (`split`: it ran split, not collapsed).
    #[allow(clippy::too_many_arguments)] // the batch, its partition state and its outcome
    pub(crate) fn settle(
        &self,
        tp: &TopicPartition,
        topic: &TopicRoute,
        batch: &BatchView,
        coordinator: &Arc<Coordinator>,
        outcome: &Result<(), Failure>,
        stored_before: Option<i64>,
        split: bool,
    ) -> Settled {
        let intents = coordinator.take_intents();
        if batch.is_empty() {
            return Settled::Unchanged;
        }
        let (first_offset, last_offset) = batch.offsets();
        let settings = &self.shared.settings;
        let facts = Facts {
            succeeded: outcome.is_ok(),
            attempt: coordinator.attempt(),
            first_offset,
            last_offset,
            stored_before,
            stored_after: coordinator.stored(),
            manual: topic.manual_offset_management,
            took_control: intents.took_control(),
            dlq: topic.dead_letter_queue.as_ref(),
            split,
            pause_timeout: settings.pause_timeout,
            pause_max_timeout: settings.pause_max_timeout,
            exponential: settings.pause_exponential,
        };
        match decide(&facts) {
            Decision::Mark { next } => {
                coordinator.set_attempt(1);
                if coordinator.mark(next) {
                    self.ops.store_offset(tp, next);
                }
                self.apply(tp, coordinator, intents, last_offset + 1)
            }
            Decision::Keep => {
                coordinator.set_attempt(1);
                if outcome.is_ok() {
                    self.apply(tp, coordinator, intents, last_offset + 1)
                } else {
                    Settled::After(last_offset + 1)
                }
            }
            Decision::Retry {
                attempt,
                resume_from,
                backoff,
            } => {
                coordinator.set_attempt(attempt);
                let shared = self.shared;
                shared.monitor.emit_with(|| Event::Retry {
                    consumer_group: shared.route.consumer_group.clone(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    attempt,
                    offset: resume_from,
                    backoff,
                });
                self.pause(tp, coordinator, resume_from, backoff, PauseReason::Retry);
                Settled::Paused
            }
            Decision::DeadLetter { offset, attempts } => {
                match (topic.dead_letter_queue.as_ref(), batch.find(offset)) {
                    (Some(dlq), Some(raw)) => self.dead_letter(tp, coordinator, dlq, raw, attempts),
                    _ => {
                        // Cannot happen (the offset comes from this batch); retry rather than skip.
                        let wait = backoff(
                            attempts,
                            settings.pause_timeout,
                            settings.pause_max_timeout,
                            settings.pause_exponential,
                        );
                        self.pause(tp, coordinator, offset, wait, PauseReason::Retry);
                        Settled::Paused
                    }
                }
            }
        }
    }

    /// Carries out what a hook (`eofed`, `tick`) asked for.
    pub(crate) fn apply_hook_intents(
        &self,
        tp: &TopicPartition,
        coordinator: &Arc<Coordinator>,
        intents: Intents,
    ) {
        self.apply(tp, coordinator, intents, -1);
    }

    /// Carries out what the consumer asked for during a successful job.
    fn apply(
        &self,
        tp: &TopicPartition,
        coordinator: &Arc<Coordinator>,
        intents: Intents,
        after: i64,
    ) -> Settled {
        if let Some(offset) = intents.seek {
            if let Err(e) = self.partitions.seek(tp, offset) {
                self.shared
                    .error(ErrorKind::ConnectionClientPoll, e, Some(tp));
            }
        }
        if let Some((offset, timeout)) = intents.pause {
            self.pause(tp, coordinator, offset, timeout, PauseReason::User);
        }
        if intents.resume && coordinator.is_paused() {
            self.resume(tp, coordinator);
        }
        match intents.seek {
            _ if coordinator.is_paused() => Settled::Paused,
            Some(offset) => Settled::At(offset),
            None => Settled::After(after),
        }
    }

    /// Sends the message at `raw` to the dead-letter queue and skips it; if the dispatch fails,
    /// the batch is retried later (the message is never dropped).
    fn dead_letter(
        &self,
        tp: &TopicPartition,
        coordinator: &Arc<Coordinator>,
        dlq: &DeadLetterQueue,
        raw: RecordRef<'_>,
        attempts: u32,
    ) -> Settled {
        let shared = self.shared;
        let payload = match raw.payload_bytes() {
            Ok(payload) => payload,
            Err(cleaned) => {
                // Its payload is gone: never send an empty or stale one. The batch is
                // fetched again from the broker after a back-off; the next failure sends the
                // message fetched anew (unless it is cleaned again before).
                shared.error(
                    ErrorKind::DlqDispatch,
                    std::io::Error::other(format!(
                        "cannot dead-letter it to {}: {cleaned}. The partition is fetched again \
                         from this offset after a back-off, with this message's payload kept \
                         (cleaning leaves it alone), and the next failure sends it; with the \
                         cleaner, mark each message as it is processed (ctx.mark_as_consumed), \
                         so the message dead-lettered is the one that failed",
                        dlq.topic()
                    )),
                    Some(tp),
                );
                // Fetched again, this message's payload is not cleaned, so the next failure
                // can send it.
                coordinator.keep_payload(Some(raw.offset()));
                coordinator.set_attempt(attempts);
                let settings = &shared.settings;
                let wait = backoff(
                    attempts,
                    settings.pause_timeout,
                    settings.pause_max_timeout,
                    settings.pause_exponential,
                );
                self.pause(tp, coordinator, raw.offset(), wait, PauseReason::Retry);
                return Settled::Paused;
            }
        };
        let mut headers: Headers = raw.headers().clone();
        headers
            .append("source_topic", raw.topic().to_string())
            .append("source_partition", raw.partition().to_string())
            .append("source_offset", raw.offset().to_string())
            .append(
                "source_consumer_group",
                shared.route.consumer_group.to_string(),
            );
        let mut message = Outgoing {
            payload,
            key: raw.key_bytes(),
            headers,
            ..Outgoing::new(dlq.topic(), Bytes::new())
        };
        if raw.is_tombstone() && raw.key().is_none() {
            // A null key and payload cannot be a tombstone; keep it as an empty payload.
            message.payload = Some(Bytes::new());
        }
        match shared.producer.produce_sync(message) {
            Ok(_) => {
                let next = raw.offset() + 1;
                coordinator.keep_payload(None);
                coordinator.set_attempt(1);
                if coordinator.mark(next) {
                    self.ops.store_offset(tp, next);
                }
                if let Err(e) = self.partitions.seek(tp, next) {
                    shared.error(ErrorKind::ConnectionClientPoll, e, Some(tp));
                }
                shared.monitor.emit_with(|| Event::DlqDispatched {
                    consumer_group: shared.route.consumer_group.clone(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: raw.offset(),
                    dlq_topic: dlq.topic().into(),
                    attempts,
                });
                Settled::At(next)
            }
            Err(e) => {
                shared.error(ErrorKind::DlqDispatch, e, Some(tp));
                // Try again after a back-off: the next failure dispatches again.
                coordinator.set_attempt(attempts);
                let settings = &shared.settings;
                let wait = backoff(
                    attempts,
                    settings.pause_timeout,
                    settings.pause_max_timeout,
                    settings.pause_exponential,
                );
                self.pause(tp, coordinator, raw.offset(), wait, PauseReason::Retry);
                Settled::Paused
            }
        }
    }

    /// Pauses `tp` for `timeout`; it resumes from `resume_from`.
    pub(crate) fn pause(
        &self,
        tp: &TopicPartition,
        coordinator: &Arc<Coordinator>,
        resume_from: i64,
        timeout: Duration,
        reason: PauseReason,
    ) {
        let shared = self.shared;
        if let Err(e) = self.partitions.pause(tp) {
            shared.error(ErrorKind::ConnectionClientPoll, e, Some(tp));
        }
        coordinator.set_pause(Some(Pause {
            until: Instant::now() + timeout,
            resume_from,
            retry: reason == PauseReason::Retry,
        }));
        shared.monitor.emit_with(|| Event::Paused {
            consumer_group: shared.route.consumer_group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: resume_from,
            timeout,
            reason,
        });
    }

    /// Seeks to the resume offset and resumes.
    pub(crate) fn resume(&self, tp: &TopicPartition, coordinator: &Arc<Coordinator>) {
        let shared = self.shared;
        if let Some(pause) = coordinator.pause() {
            if let Err(e) = self.partitions.seek(tp, pause.resume_from) {
                shared.error(ErrorKind::ConnectionClientPoll, e, Some(tp));
            }
        }
        if let Err(e) = self.partitions.resume(tp) {
            shared.error(ErrorKind::ConnectionClientPoll, e, Some(tp));
        }
        coordinator.set_pause(None);
        shared.monitor.emit_with(|| Event::Resumed {
            consumer_group: shared.route.consumer_group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        });
    }
}
