//! Consumed messages and their batch.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use karafka_core::{Headers, Partition, Timestamp};

use crate::payload::BoxError;

/// Decodes a raw payload for one topic (its deserializer, wrapped to report failures).
pub(crate) type Decoder<P> = Arc<dyn Fn(&RawMessage) -> Result<P, BoxError> + Send + Sync>;

/// A message as it came from Kafka, before decoding.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: Partition,
    pub(crate) offset: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) payload: Option<Bytes>,
    pub(crate) headers: Headers,
    pub(crate) timestamp: Timestamp,
}

/// A batch as polled, shared by its messages, its job and the listener (which needs it back for
/// retries and dead-letter dispatch).
#[derive(Debug)]
pub(crate) struct RawBatch {
    pub(crate) messages: Vec<RawMessage>,
    pub(crate) polled_at: SystemTime,
}

/// A consumed message: its Kafka fields, and its payload decoded on first use.
pub struct Message<P> {
    batch: Arc<RawBatch>,
    index: usize,
    decoded: OnceLock<Result<P, DeserializationError>>,
    decoder: Decoder<P>,
}

impl<P> Message<P> {
    pub(crate) fn new(batch: Arc<RawBatch>, index: usize, decoder: Decoder<P>) -> Self {
        Message {
            batch,
            index,
            decoded: OnceLock::new(),
            decoder,
        }
    }

    fn raw(&self) -> &RawMessage {
        &self.batch.messages[self.index]
    }

    /// Topic.
    pub fn topic(&self) -> &str {
        &self.raw().topic
    }

    /// Partition.
    pub fn partition(&self) -> Partition {
        self.raw().partition
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.raw().offset
    }

    /// The key, raw.
    pub fn key(&self) -> Option<&[u8]> {
        self.raw().key.as_deref()
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The headers, raw (several values per key possible).
    pub fn headers(&self) -> &Headers {
        &self.raw().headers
    }

    /// The timestamp and its kind.
    pub fn timestamp(&self) -> Timestamp {
        self.raw().timestamp
    }

    /// The payload bytes as they came (`None` for a tombstone).
    pub fn raw_payload(&self) -> Option<&Bytes> {
        self.raw().payload.as_ref()
    }

    /// Whether the payload is null (a tombstone).
    pub fn is_tombstone(&self) -> bool {
        self.raw().payload.is_none()
    }

    /// The decoded payload, decoded on the first call. A failure (it is reported on
    /// `error.occurred` as `consumer.deserialization.error`) is an error like any other:
    /// return it from `consume` with `?` and the batch is retried, then dead-lettered.
    pub fn payload(&self) -> Result<&P, DeserializationError> {
        let decoded = self.decoded.get_or_init(|| {
            let raw = self.raw();
            (self.decoder)(raw).map_err(|source| DeserializationError {
                topic: raw.topic.clone(),
                partition: raw.partition,
                offset: raw.offset,
                source: Arc::from(source),
            })
        });
        decoded.as_ref().map_err(Clone::clone)
    }
}

impl<P> fmt::Debug for Message<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.raw().topic)
            .field("partition", &self.raw().partition)
            .field("offset", &self.raw().offset)
            .field(
                "key",
                &self
                    .key_str()
                    .map_or_else(|| format!("{:?}", self.key()), str::to_owned),
            )
            .field(
                "payload_bytes",
                &self.raw().payload.as_ref().map(Bytes::len),
            )
            .field("headers", &self.raw().headers)
            .finish()
    }
}

/// A payload that could not be decoded, and where it is.
#[derive(Debug, Clone)]
pub struct DeserializationError {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: Partition,
    /// Offset.
    pub offset: i64,
    /// What the deserializer said.
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for DeserializationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode the payload of {}/{}@{}: {}",
            self.topic, self.partition, self.offset, self.source
        )
    }
}

impl std::error::Error for DeserializationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Facts about a batch.
#[derive(Debug, Clone)]
pub struct BatchMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: Partition,
    /// Offset of the first message.
    pub first_offset: i64,
    /// Offset of the last message.
    pub last_offset: i64,
    /// Number of messages.
    pub size: usize,
    /// Create time of the last message.
    pub created_at: Timestamp,
    /// When the listener polled the batch.
    pub polled_at: SystemTime,
    /// When the consumer started processing it.
    pub processed_at: SystemTime,
    /// Consumption lag: milliseconds from the last message's create time to the start of
    /// processing (how far behind the producer the consumer is).
    pub consumption_lag_ms: i64,
    /// Processing lag: milliseconds the batch waited between being polled and being processed
    /// (how long it queued for a worker).
    pub processing_lag_ms: i64,
}

impl BatchMetadata {
    pub(crate) fn new(
        raw: &[RawMessage],
        polled_at: SystemTime,
        processed_at: SystemTime,
    ) -> Option<Self> {
        let first = raw.first()?;
        let last = raw.last()?;
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        let processed_ms = millis(processed_at);
        Some(BatchMetadata {
            topic: first.topic.clone(),
            partition: first.partition,
            first_offset: first.offset,
            last_offset: last.offset,
            size: raw.len(),
            created_at: last.timestamp,
            polled_at,
            processed_at,
            consumption_lag_ms: last
                .timestamp
                .millis()
                .map_or(-1, |created| (processed_ms - created).max(0)),
            processing_lag_ms: (processed_ms - millis(polled_at)).max(0),
        })
    }
}

/// The batch a consumer gets: messages of one partition, in offset order.
pub struct Messages<P> {
    messages: Vec<Message<P>>,
    metadata: BatchMetadata,
}

impl<P> Messages<P> {
    pub(crate) fn new(messages: Vec<Message<P>>, metadata: BatchMetadata) -> Self {
        Messages { messages, metadata }
    }

    /// Facts about the batch.
    pub fn metadata(&self) -> &BatchMetadata {
        &self.metadata
    }

    /// The messages in offset order.
    pub fn iter(&self) -> std::slice::Iter<'_, Message<P>> {
        self.messages.iter()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty (lifecycle hooks get empty batches).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// First message.
    pub fn first(&self) -> Option<&Message<P>> {
        self.messages.first()
    }

    /// Last message.
    pub fn last(&self) -> Option<&Message<P>> {
        self.messages.last()
    }

    /// Every payload decoded, in order; the first failure stops it.
    pub fn payloads(&self) -> Result<Vec<&P>, DeserializationError> {
        self.messages.iter().map(Message::payload).collect()
    }
}

impl<'a, P> IntoIterator for &'a Messages<P> {
    type Item = &'a Message<P>;
    type IntoIter = std::slice::Iter<'a, Message<P>>;
    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}

impl<P> fmt::Debug for Messages<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}
