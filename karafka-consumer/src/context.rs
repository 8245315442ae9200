//! What a consumer's job sees: the batch and what it can do about it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use karafka_core::instrumentation::Monitor;
use karafka_core::{Partition, TopicPartition};
use karafka_producer::{ConsumerGroupMetadata, Producer};

use crate::message::{BatchMetadata, BatchView, Decoder, Message, Messages};
use crate::processing::coordinator::Coordinator;
use crate::split::{Group, VirtualPartition};

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
    /// The job's group of a split batch (virtual partitions).
    pub(crate) group: Option<Group>,
    /// Which of the partition's consumer instances the job runs on: 0, or its virtual
    /// partition's.
    pub(crate) instance: usize,
}

impl JobInput {
    /// The consumer instance the job runs on: its partition's, or its virtual partition's.
    pub(crate) fn instance(&self) -> usize {
        self.instance
    }
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
            messages: Messages::new(
                input.batch.clone(),
                decoder,
                metadata,
                input.coordinator.kept_payload(),
            ),
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
    ///
    /// In a virtual partition it marks `message` and the earlier messages of this virtual
    /// partition; what is stored is the offset after the longest run of marked messages from
    /// the batch's start, so it may store nothing yet (and still return true).
    ///
    /// It takes a [`Message`], or a cleaning iteration's message (`karafka-pro`'s cleaner).
    pub fn mark_as_consumed<M: AsRef<Message<P>> + ?Sized>(&self, message: &M) -> bool {
        self.mark_message(message.as_ref())
    }

    /// [`mark_as_consumed`](Self::mark_as_consumed), then commits now and waits for the broker
    /// (Karafka's `mark_as_consumed!`). Returns false if revoked or the commit failed. In a
    /// virtual partition it commits what is stored (see `mark_as_consumed`).
    pub fn mark_as_consumed_sync<M: AsRef<Message<P>> + ?Sized>(&self, message: &M) -> bool {
        if !self.mark_message(message.as_ref()) {
            return false;
        }
        match self.input.coordinator.stored() {
            Some(next) => self.input.ops.commit_sync(&self.input.tp, next),
            None => true,
        }
    }

    fn mark_message(&self, message: &Message<P>) -> bool {
        let Some(group) = &self.input.group else {
            return self.mark_offset(message.offset());
        };
        let coordinator = &self.input.coordinator;
        if coordinator.is_revoked() {
            return false;
        }
        match group.mark_through(message.index()) {
            // Marked and stored under the coordinator's lock: groups racing cannot store a
            // lower offset after a higher one.
            Some(next) => coordinator
                .mark_and_store(next, |next| {
                    self.input.ops.store_offset(&self.input.tp, next)
                })
                .unwrap_or(true),
            None => true,
        }
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

    /// The virtual partition this job processes, when the topic has virtual partitions
    /// (`karafka-pro`); None otherwise.
    pub fn virtual_partition(&self) -> Option<VirtualPartition> {
        self.input.group.as_ref().map(|g| VirtualPartition {
            id: g.id,
            groups: g.groups,
            collapsed: g.collapsed,
        })
    }

    /// Whether another virtual partition of this batch already failed (the batch will be
    /// retried collapsed): a long job may stop early; then only the messages it marked count
    /// as processed (the collapsed retry processes the rest). Always false without virtual
    /// partitions.
    pub fn is_failing(&self) -> bool {
        self.input
            .group
            .as_ref()
            .is_some_and(|g| g.tracker.is_failing())
    }

    /// Processes this partition's batches collapsed (one group, in Kafka order) until
    /// `offset` (exclusive), starting with the next batch (Karafka's `collapse_until!`); jobs
    /// already running are left alone. Only topics with virtual partitions split batches.
    pub fn collapse_until(&self, offset: i64) {
        self.input.coordinator.collapse_until(offset, &[]);
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
