//! Message parts the producer and the consumer share: headers, timestamps, offsets and
//! topic-partitions.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A partition number within a topic.
pub type Partition = i32;

/// One Kafka header: a key and an optional value (Kafka allows null header values).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The header key.
    pub key: String,
    /// The value; `None` is a null value, not an empty one.
    pub value: Option<Bytes>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{:?}: {:?}", self.key, String::from_utf8_lossy(v)),
            None => write!(f, "{:?}: null", self.key),
        }
    }
}

/// Message headers: an ordered list in which a key may appear several times, as on the wire.
///
/// ```
/// use karafka_core::Headers;
///
/// let headers = Headers::new()
///     .with("trace-id", "abc")
///     .with("tag", "red")
///     .with("tag", "blue");
/// assert_eq!(headers.get_str("trace-id"), Some("abc"));
/// assert_eq!(headers.get_str("tag"), Some("blue")); // the last value wins for `get`
/// let tags: Vec<_> = headers.get_all("tag").flatten().collect();
/// assert_eq!(tags, [b"red".as_slice(), b"blue".as_slice()]);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `capacity` headers.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Appends `key: value` (an existing value for `key` is kept; both are sent).
    pub fn append(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Appends `key` with a null value.
    pub fn append_null(&mut self, key: impl Into<String>) -> &mut Self {
        self.entries.push(Header {
            key: key.into(),
            value: None,
        });
        self
    }

    /// Builder form of [`append`](Self::append).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.append(key, value);
        self
    }

    /// Removes every value of `key`; returns how many were removed.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|h| h.key != key);
        before - self.entries.len()
    }

    /// Replaces every value of `key` with `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        let key = key.into();
        self.remove(&key);
        self.append(key, value)
    }

    /// The last non-null value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|h| h.key == key && h.value.is_some())
            .and_then(|h| h.value.as_deref())
    }

    /// The last non-null value of `key`, if it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `key` in order (`None` for null values).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        self.entries
            .iter()
            .filter(move |h| h.key == key)
            .map(|h| h.value.as_deref())
    }

    /// Whether `key` appears at least once.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|h| h.key == key)
    }

    /// All headers in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.entries.iter()
    }

    /// Number of headers (counting repeated keys).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl IntoIterator for Headers {
    type Item = Header;
    type IntoIter = std::vec::IntoIter<Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.append(k, v);
        }
        headers
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<I: IntoIterator<Item = Header>>(iter: I) -> Self {
        Headers {
            entries: iter.into_iter().collect(),
        }
    }
}

/// What a message timestamp means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampKind {
    /// The message has no timestamp.
    NotAvailable,
    /// Set by the producer when the message was created.
    CreateTime,
    /// Set by the broker when it appended the message to the log.
    LogAppendTime,
}

/// A message timestamp in milliseconds since the Unix epoch, with its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timestamp {
    /// No timestamp.
    NotAvailable,
    /// Producer create time, ms since the epoch.
    CreateTime(i64),
    /// Broker append time, ms since the epoch.
    LogAppendTime(i64),
}

impl Timestamp {
    /// A create-time timestamp for now.
    pub fn now() -> Self {
        Timestamp::CreateTime(now_millis())
    }

    /// The kind of this timestamp.
    pub fn kind(&self) -> TimestampKind {
        match self {
            Timestamp::NotAvailable => TimestampKind::NotAvailable,
            Timestamp::CreateTime(_) => TimestampKind::CreateTime,
            Timestamp::LogAppendTime(_) => TimestampKind::LogAppendTime,
        }
    }

    /// Milliseconds since the epoch, when available.
    pub fn millis(&self) -> Option<i64> {
        match *self {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
        }
    }

    /// The timestamp as a `SystemTime`, when available and not before the epoch.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let ms = u64::try_from(self.millis()?).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before the epoch).
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A position in a partition: a concrete offset, or one of Kafka's logical offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offset {
    /// The earliest offset still in the log.
    Beginning,
    /// The offset after the last message (only new messages).
    End,
    /// The group's committed offset.
    Stored,
    /// No offset.
    Invalid,
    /// A concrete offset.
    At(i64),
    /// `n` messages before the end.
    Tail(i64),
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offset::Beginning => f.write_str("beginning"),
            Offset::End => f.write_str("end"),
            Offset::Stored => f.write_str("stored"),
            Offset::Invalid => f.write_str("invalid"),
            Offset::At(o) => write!(f, "{o}"),
            Offset::Tail(n) => write!(f, "end-{n}"),
        }
    }
}

/// A value the application attaches to a produced message and gets back on its delivery
/// report (and on events about it), to tell which message a report is about. Cheap to clone.
///
/// ```
/// use karafka_core::Label;
///
/// let label = Label::new(42_u64);
/// assert_eq!(label.get::<u64>(), Some(&42));
/// assert_eq!(Label::from("order-17").as_str(), Some("order-17"));
/// ```
#[derive(Clone)]
pub struct Label(Arc<dyn Any + Send + Sync>);

impl Label {
    /// A label holding `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Label(Arc::new(value))
    }

    /// The value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    /// The value, if it is a `String` or a `&'static str`.
    pub fn as_str(&self) -> Option<&str> {
        self.get::<String>()
            .map(String::as_str)
            .or_else(|| self.get::<&'static str>().copied())
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Self {
        Label::new(s)
    }
}

impl From<String> for Label {
    fn from(s: String) -> Self {
        Label::new(s)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.as_str() {
            write!(f, "Label({s:?})")
        } else if let Some(n) = self.get::<u64>() {
            write!(f, "Label({n})")
        } else if let Some(n) = self.get::<i64>() {
            write!(f, "Label({n})")
        } else {
            f.write_str("Label(..)")
        }
    }
}

/// A topic and one of its partitions: the key of every per-partition map in the framework.
///
/// The topic is an `Arc<str>`, so cloning is cheap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: Partition,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: Partition) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_repeated_keys() {
        let mut h = Headers::new();
        h.append("a", "1")
            .append("b", "2")
            .append_null("a")
            .append("a", "3");
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("a"), Some(b"3".as_slice()));
        let all: Vec<_> = h.get_all("a").collect();
        assert_eq!(all, [Some(b"1".as_slice()), None, Some(b"3".as_slice())]);
        h.insert("a", "9");
        assert_eq!(h.get_all("a").count(), 1);
        assert_eq!(
            h.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(h.remove("b"), 1);
        assert!(!h.contains_key("b"));
    }

    #[test]
    fn null_only_header_has_no_value() {
        let mut h = Headers::new();
        h.append_null("k");
        assert!(h.contains_key("k"));
        assert_eq!(h.get("k"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp::CreateTime(5).millis(), Some(5));
        assert_eq!(Timestamp::NotAvailable.millis(), None);
        assert_eq!(
            Timestamp::LogAppendTime(1000).to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(Timestamp::CreateTime(-1).to_system_time(), None);
        assert_eq!(Timestamp::now().kind(), TimestampKind::CreateTime);
    }

    #[test]
    fn topic_partition_display() {
        assert_eq!(TopicPartition::new("orders", 3).to_string(), "orders/3");
        assert_eq!(Offset::Tail(10).to_string(), "end-10");
    }
}
