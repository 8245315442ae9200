//! The message a producer sends.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use karafka_core::{Headers, Label, Partition};

/// A message to produce.
///
/// Fields are public; the builder methods read better in most code. Only `topic` is required;
/// a `payload` of `None` is a tombstone (it then needs a `key`).
///
/// ```
/// use karafka_producer::Message;
///
/// let message = Message::new("orders", r#"{"id":1}"#)
///     .key("customer-7")
///     .header("trace-id", "abc")
///     .label("order-1");
/// assert_eq!(&*message.topic, "orders");
///
/// let tombstone = Message::tombstone("orders", "customer-7");
/// assert!(tombstone.payload.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    /// Destination topic. An `Arc<str>`: reuse one for many messages to avoid allocations.
    pub topic: Arc<str>,
    /// The payload; `None` is a tombstone.
    pub payload: Option<Bytes>,
    /// The key (also what librdkafka's partitioner hashes when no partition is given).
    pub key: Option<Bytes>,
    /// An explicit partition (wins over `partition_key` and `key`).
    pub partition: Option<Partition>,
    /// Bytes hashed to choose the partition instead of the key, with the topic's partitioner
    /// (librdkafka's own hash functions, over the topic's current partition count).
    pub partition_key: Option<Bytes>,
    /// Create time in ms since the epoch; `None`: now.
    pub timestamp: Option<i64>,
    /// Headers (several values per key allowed).
    pub headers: Headers,
    /// Returned on the delivery report and on events; never sent.
    pub label: Option<Label>,
}

impl Message {
    /// A message with a payload.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            payload: Some(payload.into()),
            key: None,
            partition: None,
            partition_key: None,
            timestamp: None,
            headers: Headers::new(),
            label: None,
        }
    }

    /// A tombstone: a key without a payload, which compaction reads as "delete this key".
    pub fn tombstone(topic: impl Into<Arc<str>>, key: impl Into<Bytes>) -> Self {
        Message {
            payload: None,
            key: Some(key.into()),
            ..Message::new(topic, Bytes::new())
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the partition key.
    pub fn partition_key(mut self, partition_key: impl Into<Bytes>) -> Self {
        self.partition_key = Some(partition_key.into());
        self
    }

    /// Sets the create time, ms since the epoch.
    pub fn timestamp_millis(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Sets the create time.
    pub fn timestamp(mut self, time: SystemTime) -> Self {
        let millis = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        };
        self.timestamp = Some(millis);
        self
    }

    /// Appends a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.append(key, value);
        self
    }

    /// Replaces the headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<Label>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Size counted against `max_payload_size`: the payload's length.
    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, Bytes::len)
    }
}
