//! The client seam: what the producer needs from a Kafka client.
//!
//! The producer talks to librdkafka through [`Client`], so another implementation can stand
//! in: `karafka-testing` ships an in-memory buffered client that records messages per topic
//! and honours transactions, for tests without a broker. Implement it for your own needs
//! (a dummy client that drops everything, a recorder); plug it in with
//! [`ProducerBuilder::client`](crate::ProducerBuilder::client).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use karafka_core::instrumentation::Monitor;
use karafka_core::{KafkaError, KafkaSettings, Partition, TopicPartition};

use crate::delivery::Delivery;
use crate::message::Message;
use crate::variant::TopicConfig;

mod rdkafka_client;

pub(crate) use rdkafka_client::RdKafkaClientFactory;

/// What a client is created with.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClientSetup<'a> {
    /// The producer's id.
    pub producer_id: &'a Arc<str>,
    /// The librdkafka settings, defaults applied.
    pub kafka: &'a KafkaSettings,
    /// Where the client reports events (statistics, client-level errors).
    pub monitor: &'a Monitor,
}

/// Creates clients: once on the producer's first use, and again when a fatal error makes the
/// producer rebuild its client.
pub trait ClientFactory: Send + Sync + 'static {
    /// A new client.
    fn create(&self, setup: &ClientSetup<'_>) -> Result<Box<dyn Client>, KafkaError>;
}

/// Why a client did not take a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// The local queue is full; the producer may wait and retry.
    QueueFull,
    /// The topic is already used with other topic settings (see [`crate::variant`]).
    TopicConflict {
        /// Who set the topic's settings first.
        claimed_by: String,
        /// What this send asked for.
        requested: String,
    },
    /// Anything else.
    Kafka(KafkaError),
}

/// A message the client did not take: why, and its delivery sink back, not completed.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub reason: Rejection,
    /// The message's delivery sink, not completed.
    pub delivery: Delivery,
}

/// A Kafka producer client. All methods may be called from several threads at once.
pub trait Client: Send + Sync + fmt::Debug + 'static {
    /// Takes `message` for delivery with `topic_config` (a variant's topic settings, `None`
    /// for the producer's own), copying what it needs (the producer keeps the message, to give
    /// it back if the client refuses it). On `Ok`, the client must later call
    /// [`Delivery::complete`] exactly once (dropping it reports the message failed); on `Err`,
    /// it gives the same delivery back uncompleted (handing back another one gets the message
    /// refused, and the other dropped: reported failed).
    fn produce(
        &self,
        message: &Message,
        topic_config: Option<&TopicConfig>,
        delivery: Delivery,
    ) -> Result<(), Rejected>;

    /// The partition `partition_key` maps to in `topic`, as the topic's partitioner would
    /// choose for that key.
    fn partition_for_key(
        &self,
        topic: &str,
        topic_config: Option<&TopicConfig>,
        partition_key: &[u8],
    ) -> Result<Partition, KafkaError>;

    /// Waits until every taken message has its delivery reported, or `timeout` passes.
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError>;

    /// Messages taken whose delivery is not reported yet.
    fn in_flight(&self) -> usize;

    /// Stops: reports every message still in flight as failed (purged) and releases the
    /// client's threads. Called once, before the client is dropped.
    fn close(&self, timeout: Duration);

    /// Registers the transactional id with the cluster (transactional producers, once).
    fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError>;
    /// Starts a transaction.
    fn begin_transaction(&self) -> Result<(), KafkaError>;
    /// Adds consumer offsets (the next offsets to read) to the current transaction.
    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError>;
    /// Commits the current transaction (flushing first).
    fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError>;
    /// Aborts the current transaction (its messages are purged or marked aborted).
    fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError>;
}

/// A consumer group's identity for transactional offset commits
/// ([`Transaction::mark_as_consumed`](crate::Transaction::mark_as_consumed)). The consumer
/// framework hands these out; tests with an in-memory client can make one with
/// [`ConsumerGroupMetadata::new`].
#[derive(Clone)]
pub struct ConsumerGroupMetadata {
    group_id: Arc<str>,
    native: Option<Arc<rdkafka::consumer::ConsumerGroupMetadata>>,
}

impl ConsumerGroupMetadata {
    /// Metadata naming only the group (enough for in-memory clients; librdkafka needs the
    /// full metadata of a live consumer).
    pub fn new(group_id: impl Into<Arc<str>>) -> Self {
        ConsumerGroupMetadata {
            group_id: group_id.into(),
            native: None,
        }
    }

    /// Wraps a live rdkafka consumer's group metadata (used by karafka-consumer).
    #[doc(hidden)]
    pub fn from_native(
        group_id: impl Into<Arc<str>>,
        native: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Self {
        ConsumerGroupMetadata {
            group_id: group_id.into(),
            native: Some(Arc::new(native)),
        }
    }

    /// The group's id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub(crate) fn native(&self) -> Option<&rdkafka::consumer::ConsumerGroupMetadata> {
        self.native.as_deref()
    }
}

impl fmt::Debug for ConsumerGroupMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerGroupMetadata")
            .field("group_id", &self.group_id)
            .field("native", &self.native.is_some())
            .finish()
    }
}
