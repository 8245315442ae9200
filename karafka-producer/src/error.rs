//! The producer's error type. Every variant that concerns a message that was not sent owns
//! it: [`Error::into_message`] gives it back.

use std::sync::Arc;
use std::time::Duration;

use karafka_core::{ConfigError, KafkaError};

use crate::delivery::{BatchDelivery, DeliveryReport};
use crate::message::Message;

/// Result with the producer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when producing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message broke a rule and was not sent (topic name, payload size, tombstone
    /// without key, ...). Every broken rule is listed.
    #[error("message to `{topic}` was not sent: {}", rules(reason))]
    InvalidMessage {
        /// The destination topic.
        topic: Arc<str>,
        /// What is wrong.
        reason: ConfigError,
        /// The message, unsent.
        message: Box<Message>,
    },
    /// The producer is closing or closed.
    #[error("producer `{producer_id}` is closed; the message was not sent")]
    Closed {
        /// The producer's id.
        producer_id: Arc<str>,
        /// The message, unsent (`None` for operations without one).
        message: Option<Box<Message>>,
    },
    /// librdkafka's local queue stayed full longer than `wait_timeout_on_queue_full` (or
    /// waiting is off). Raise `queue.buffering.max.messages` / `queue.buffering.max.kbytes`,
    /// or produce more slowly.
    #[error(
        "librdkafka's queue stayed full for {waited:?} (see queue.buffering.max.messages and \
         queue.buffering.max.kbytes); the message was not sent"
    )]
    QueueFull {
        /// How long the producer waited for room.
        waited: Duration,
        /// The message, unsent.
        message: Box<Message>,
    },
    /// librdkafka refused to take the message.
    #[error("the message was not sent: {source}")]
    Produce {
        /// librdkafka's error.
        #[source]
        source: KafkaError,
        /// The message, unsent.
        message: Box<Message>,
    },
    /// The message was taken but not delivered (the broker refused it, or it timed out after
    /// `message.timeout.ms`, or it was purged on close).
    #[error("delivery to `{}` failed: {source}", message.topic)]
    Delivery {
        /// librdkafka's error.
        #[source]
        source: KafkaError,
        /// The message, undelivered (rebuilt from what librdkafka held).
        message: Box<Message>,
    },
    /// A variant's topic settings cannot apply: librdkafka fixes a topic's settings in a
    /// client the first time the topic is used, and this topic is already in use with other
    /// settings. Use a separate producer for the other settings.
    #[error(
        "topic `{topic}` is already used by this producer with {claimed_by}; librdkafka fixes a \
         topic's settings when a client first uses it, so {requested} cannot apply to it in \
         this producer: send this topic through one variant only, or use a second producer"
    )]
    VariantConflict {
        /// The topic.
        topic: Arc<str>,
        /// Who set the topic's settings first.
        claimed_by: String,
        /// What this send asked for.
        requested: String,
        /// The message, unsent.
        message: Box<Message>,
    },
    /// No delivery report within the wait limit. The message may still be delivered;
    /// `message.acknowledged` or `error.occurred` will say.
    #[error("no delivery report within {timeout:?}; the message may still be delivered")]
    WaitTimeout {
        /// How long the caller waited.
        timeout: Duration,
    },
    /// Some messages of a batch were dispatched before one failed; the rest were not sent.
    #[error("{dispatched} message(s) dispatched, then one failed: {failure}")]
    PartiallyDispatched {
        /// How many were dispatched (the first ones).
        dispatched: usize,
        /// Delivery of the dispatched ones.
        delivery: Box<BatchDelivery>,
        /// Why the next one failed (it owns that message).
        failure: Box<Error>,
        /// The messages after it, not sent.
        not_sent: Vec<Message>,
    },
    /// Some messages of a batch were not delivered; every result is listed, in order.
    #[error("{failed} of {} message(s) were not delivered", results.len())]
    DeliveriesFailed {
        /// How many failed.
        failed: usize,
        /// The result of each message.
        results: Vec<Result<DeliveryReport, Error>>,
    },
    /// A transaction step (begin, commit, abort, sending offsets) failed.
    #[error("transaction {operation} failed: {source}")]
    Transaction {
        /// The step.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
        /// Whether the transaction was aborted as a result.
        aborted: bool,
        /// For a message wrapped in its own transaction: the message, not committed.
        message: Option<Box<Message>>,
    },
    /// `close()` could not deliver every message.
    #[error("producer closed with {} undelivered message(s)", undelivered.len())]
    Undelivered {
        /// The messages that were not delivered.
        undelivered: Vec<Message>,
    },
    /// An operation that needs a transactional producer (`transactional.id`).
    #[error("{operation} needs a transactional producer: set `transactional.id`")]
    NotTransactional {
        /// The operation.
        operation: &'static str,
    },
    /// Anything else from the shared core (client creation, flush, ...).
    #[error(transparent)]
    Core(#[from] karafka_core::Error),
}

fn rules(reason: &ConfigError) -> String {
    reason
        .violations()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The unsent or undelivered message this error owns, if any.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Error::InvalidMessage { message, .. }
            | Error::QueueFull { message, .. }
            | Error::Produce { message, .. }
            | Error::Delivery { message, .. }
            | Error::VariantConflict { message, .. } => Some(message),
            Error::Closed { message, .. } | Error::Transaction { message, .. } => {
                message.as_deref()
            }
            Error::PartiallyDispatched { failure, .. } => failure.message(),
            _ => None,
        }
    }

    /// Gives back the message this error owns, to retry or store it.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Error::InvalidMessage { message, .. }
            | Error::QueueFull { message, .. }
            | Error::Produce { message, .. }
            | Error::Delivery { message, .. }
            | Error::VariantConflict { message, .. } => Some(*message),
            Error::Closed { message, .. } | Error::Transaction { message, .. } => {
                message.map(|m| *m)
            }
            Error::PartiallyDispatched { failure, .. } => failure.into_message(),
            _ => None,
        }
    }

    /// Every message this error owns: one for single-message errors; for batch errors the
    /// failed one and those not sent, or those not delivered.
    pub fn into_messages(self) -> Vec<Message> {
        match self {
            Error::PartiallyDispatched {
                failure, not_sent, ..
            } => failure.into_message().into_iter().chain(not_sent).collect(),
            Error::DeliveriesFailed { results, .. } => results
                .into_iter()
                .filter_map(|r| r.err().and_then(Error::into_message))
                .collect(),
            Error::Undelivered { undelivered } => undelivered,
            other => other.into_message().into_iter().collect(),
        }
    }

    /// The librdkafka error behind this one, if any.
    pub fn kafka_error(&self) -> Option<&KafkaError> {
        match self {
            Error::Produce { source, .. }
            | Error::Delivery { source, .. }
            | Error::Transaction { source, .. } => Some(source),
            Error::Core(karafka_core::Error::Kafka(e)) => Some(e),
            _ => None,
        }
    }
}
