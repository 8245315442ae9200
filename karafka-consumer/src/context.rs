//! What a consumer's job sees: the batch and what it can do about it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use karafka_core::instrumentation::Monitor;
use karafka_core::{Partition, TopicPartition};
use karafka_producer::{ConsumerGroupMetadata, Producer};

use crate::message::{BatchMetadata, BatchView, Decoder, Message, Messages};
use crate::processing::coordinator::Coordinator;

/// What the engine does for a context, behind a seam: librdkafka in production, an in-memory
/// recorder in the consumer harness (`harness`, feature `testing`).
pub trait ClientOps: Send + Sync + 'static {
    /// Stores `next_offset` (the offset after the last processed message) for commit; false when
    /// the partition is not assigned any more.
    fn store_offset(&self, tp: &TopicPartition, next_offset: i64) -> bool;
    /// Commits `next_offset` for `tp` now, waiting for the broker; false on failure.
    fn commit_sync(&self, tp: &TopicPartition, next_offset: i64) -> bool;
    /// The group's metadata, for transactional offset commits.
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
}

/// Everything a job runs with.
pub(crate) struct JobInput {
    pub(crate) tp: TopicPartition,
    pub(crate) batch: BatchView,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) ops: Arc<dyn ClientOps>,
    pub(crate) producer: Producer,
    pub(crate) monitor: Monitor,
    pub(crate) consumer_group: Arc<str>,
}

/// The context of a job: the batch, and what the consumer can do about its partition.
///
/// Every method takes `&self`, so marking while iterating the messages reads naturally:
///
/// ```no_run
/// # use karafka_consumer::{Context, payload::Raw};
/// # async fn example(ctx: &Context<Raw>) {
/// for message in ctx.messages() {
///     // ... process ...
///     if !ctx.mark_as_consumed(message) {
///         return; // the partition was taken away: stop early
///     }
/// }
/// # }
/// ```
pub struct Context<P> {
    input: JobInput,
    messages: Messages<P>,
}

impl<P> Context<P> {
    pub(crate) fn new(input: JobInput, decoder: Decoder<P>) -> Self {
        let processed_at = SystemTime::now();
        let batch = &input.batch;
        let metadata = BatchMetadata::new(batch, processed_at).unwrap_or_else(|| BatchMetadata {
            topic: input.tp.topic.clone(),
            partition: input.tp.partition,
            first_offset: -1,
            last_offset: -1,
            size: 0,
            created_at: karafka_core::Timestamp::NotAvailable,
            polled_at: batch.polled_at(),
            processed_at,
            consumption_lag_ms: -1,
            processing_lag_ms: 0,
        });
        Context {
            messages: Messages::new(input.batch.clone(), decoder, metadata),
            input,
        }
    }

    /// The batch (empty for lifecycle hooks).
    pub fn messages(&self) -> &Messages<P> {
        &self.messages
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.input.tp.topic
    }

    /// The partition.
    pub fn partition(&self) -> Partition {
        self.input.tp.partition
    }

    /// The consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.input.consumer_group
    }

    /// Marks `message` (and everything before it in the partition) as consumed: its offset + 1
    /// is stored and librdkafka commits it asynchronously. Returns false once the partition
    /// was revoked (the mark is then not stored: another member owns the partition).
    pub fn mark_as_consumed(&self, message: &Message<P>) -> bool {
        self.mark_offset(message.offset())
    }

    /// [`mark_as_consumed`](Self::mark_as_consumed), then commits now and waits for the broker
    /// (Karafka's `mark_as_consumed!`). Returns false if revoked or the commit failed.
    pub fn mark_as_consumed_sync(&self, message: &Message<P>) -> bool {
        self.mark_offset(message.offset())
            && self
                .input
                .ops
                .commit_sync(&self.input.tp, message.offset() + 1)
    }

    fn mark_offset(&self, offset: i64) -> bool {
        let coordinator = &self.input.coordinator;
        if coordinator.is_revoked() {
            return false;
        }
        if !coordinator.mark(offset + 1) {
            return true; // an equal or later offset is already stored
        }
        self.input.ops.store_offset(&self.input.tp, offset + 1)
    }

    /// Moves the partition's position: after this job, consumption continues from `offset`
    /// (the batch is not marked automatically).
    pub fn seek(&self, offset: i64) {
        self.input.coordinator.request_seek(offset);
    }

    /// Pauses the partition for `timeout`; it then resumes from `offset` (the batch is not
    /// marked automatically).
    pub fn pause(&self, offset: i64, timeout: Duration) {
        self.input.coordinator.request_pause(offset, timeout);
    }

    /// Resumes a paused partition after this job.
    pub fn resume(&self) {
        self.input.coordinator.request_resume();
    }

    /// Whether the partition was taken away by a rebalance.
    pub fn is_revoked(&self) -> bool {
        self.input.coordinator.is_revoked()
    }

    /// Which attempt at this batch this is (1 the first time, 2 the first retry, ...).
    pub fn attempt(&self) -> u32 {
        self.input.coordinator.attempt()
    }

    /// Whether this batch failed before and is being retried.
    pub fn is_retrying(&self) -> bool {
        self.attempt() > 1
    }

    /// The app's producer (for results, fan-out, transactions).
    pub fn producer(&self) -> &Producer {
        &self.input.producer
    }

    /// The group's metadata, for `Transaction::mark_as_consumed` (exactly-once processing).
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.input.ops.group_metadata()
    }

    /// The monitor, to emit custom events.
    pub fn monitor(&self) -> &Monitor {
        &self.input.monitor
    }
}

impl<P> fmt::Debug for Context<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("topic_partition", &self.input.tp.to_string())
            .field("messages", &self.messages.len())
            .field("attempt", &self.attempt())
            .finish()
    }
}
