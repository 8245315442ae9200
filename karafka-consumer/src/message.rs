//! Consumed messages and their batch.
//!
//! A poll's messages live once, in a [`PollBuffer`]: one record per message. On a broker
//! connection the record holds librdkafka's message itself (keys, payloads, headers and
//! timestamps are read in place, on first use: nothing is copied at poll time, and the
//! buffer keeps the client alive while it holds messages; an owned `Bytes` of a key or
//! payload is a copy, so nothing a user keeps holds librdkafka's memory); in the test
//! harness it holds offsets, headers and timestamps, with keys and payloads in one byte
//! arena. A job's batch is a
//! [`BatchView`], a range of that buffer's records (one partition's, in offset order), so one
//! poll can feed several jobs without copying a message. The consumer's [`Messages`] wraps
//! the view with per-message decode caches; building it clones no `Arc` per message.

use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use karafka_core::{Headers, Partition, Timestamp, native};
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;

use crate::payload::BoxError;

/// Decodes a raw payload for one topic (its deserializer, wrapped to report failures).
pub(crate) type Decoder<P> = Arc<dyn Fn(&RecordRef<'_>) -> Result<P, BoxError> + Send + Sync>;

/// Where a key or payload lies in its buffer's arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: usize,
    end: usize,
}

/// One polled message: its topic (an index into its buffer's topics), partition, offset, and
/// the rest where it lies.
#[derive(Debug)]
pub(crate) struct RawMessage {
    topic: u32,
    pub(crate) partition: Partition,
    pub(crate) offset: i64,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// Copied in (the harness): key and payload in the buffer's arena.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Copied {
        key: Option<Span>,
        payload: Option<Span>,
        headers: Headers,
        timestamp: Timestamp,
    },
    /// librdkafka's message, read in place; its headers converted on first use.
    Native {
        message: NativeMessage,
        headers: OnceLock<Headers>,
    },
}

/// A message still owned by librdkafka, freed when dropped.
///
/// Its headers are read only through the record's `OnceLock` (`RecordRef::headers`), never by
/// calling `self.0.headers()` elsewhere: librdkafka parses a message's headers lazily on the
/// first `rd_kafka_message_headers` and stores them in the message without a lock, so two
/// threads reading them the first time at once would race (rdkafka's `Sync` for
/// `BorrowedMessage` does not cover that).
struct NativeMessage(BorrowedMessage<'static>);

impl fmt::Debug for NativeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeMessage")
            .field("partition", &self.0.partition())
            .field("offset", &self.0.offset())
            .finish()
    }
}

/// Keeps a client alive (type-erased), for as long as messages polled from it exist.
type ClientGuard = Arc<dyn Send + Sync>;

/// The messages of one poll (or one harness delivery), stored once.
pub(crate) struct PollBuffer {
    topics: Vec<Arc<str>>,
    // Declared before `_client`: native messages are freed before the client they came from
    // can be destroyed.
    records: Vec<RawMessage>,
    arena: Bytes,
    polled_at: SystemTime,
    /// The client the native records were polled from (`None`: all records are copied).
    _client: Option<ClientGuard>,
}

impl Drop for PollBuffer {
    fn drop(&mut self) {
        // Native messages go before the client, whatever the fields' order.
        self.records.clear();
    }
}

impl fmt::Debug for PollBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollBuffer")
            .field("topics", &self.topics)
            .field("records", &self.records.len())
            .field("arena_bytes", &self.arena.len())
            .field("polled_at", &self.polled_at)
            .finish()
    }
}

/// Fills a [`PollBuffer`]: records pre-sized to the poll's `max_messages`; for copied
/// records, the arena pre-sized to what the caller expects.
pub(crate) struct PollBufferBuilder {
    topics: Vec<Arc<str>>,
    records: Vec<RawMessage>,
    arena: Vec<u8>,
    client: Option<ClientGuard>,
}

impl Drop for PollBufferBuilder {
    fn drop(&mut self) {
        // As for `PollBuffer`: messages before the client (a builder dropped unfinished,
        // e.g. while unwinding).
        self.records.clear();
    }
}

impl PollBufferBuilder {
    /// A buffer of copied records (the harness).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn new(messages: usize, arena_bytes: usize) -> Self {
        PollBufferBuilder {
            topics: Vec::new(),
            records: Vec::with_capacity(messages),
            arena: Vec::with_capacity(arena_bytes),
            client: None,
        }
    }

    /// A buffer of librdkafka's messages polled from `client` (see
    /// [`push_native`](Self::push_native)); the buffer holds `client` until it is dropped.
    pub(crate) fn native(messages: usize, client: ClientGuard) -> Self {
        PollBufferBuilder {
            topics: Vec::new(),
            records: Vec::with_capacity(messages),
            arena: Vec::new(),
            client: Some(client),
        }
    }

    /// Adds librdkafka's message `m` of the topic at `topic`, as is: no field but partition
    /// and offset is read now.
    ///
    /// # Safety
    ///
    /// `m` must have been polled from the client given to [`native`](Self::native): the
    /// buffer extends `m`'s lifetime to its own, which is sound only because it keeps that
    /// client alive (in rdkafka 0.39, a `BorrowedMessage` holds the message pointer and a
    /// reference-counted handle to its event, and its lifetime only marks the `&self` borrow
    /// of `BaseConsumer::poll`; librdkafka requires messages to be destroyed before
    /// `rd_kafka_consumer_close`/`rd_kafka_destroy`, which the client's drop calls, and frees
    /// them by atomic reference counting, from any thread). Check that again when rdkafka
    /// is upgraded.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn push_native(&mut self, topic: u32, m: BorrowedMessage<'_>) {
        debug_assert!(self.client.is_some(), "push_native on a copied buffer");
        let (partition, offset) = (m.partition(), m.offset());
        // SAFETY: only the lifetime changes (a marker: `BorrowedMessage` holds a pointer to
        // the message and a reference-counted handle to its event, nothing of the consumer).
        // The caller guarantees `m` came from `self.client`, which the finished buffer holds
        // in a field declared after its records, so the client outlives the message.
        let message =
            unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(m) };
        self.records.push(RawMessage {
            topic,
            partition,
            offset,
            body: Body::Native {
                message: NativeMessage(message),
                headers: OnceLock::new(),
            },
        });
    }

    /// The index of `topic` in this buffer (a linear search: a poll holds a few topics;
    /// callers cache it while messages of one topic follow each other).
    pub(crate) fn topic(&mut self, topic: &Arc<str>) -> u32 {
        let found = self
            .topics
            .iter()
            .position(|t| Arc::ptr_eq(t, topic) || t == topic);
        let index = found.unwrap_or_else(|| {
            self.topics.push(topic.clone());
            self.topics.len() - 1
        });
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// Adds a message of the topic at `topic` (from [`topic`](Self::topic)).
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn push(
        &mut self,
        topic: u32,
        partition: Partition,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Headers,
        timestamp: Timestamp,
    ) {
        let key = key.map(|k| self.put(k));
        let payload = payload.map(|p| self.put(p));
        self.records.push(RawMessage {
            topic,
            partition,
            offset,
            body: Body::Copied {
                key,
                payload,
                headers,
                timestamp,
            },
        });
    }

    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn put(&mut self, bytes: &[u8]) -> Span {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        Span {
            start,
            end: self.arena.len(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The buffer, and one range of records per partition in the order partitions first
    /// appear, each in offset order. A poll usually holds runs of one partition each; when a
    /// partition's messages come in several runs, the records are stably sorted by partition
    /// first (offset order within a partition is kept).
    pub(crate) fn finish(mut self, polled_at: SystemTime) -> (Arc<PollBuffer>, Vec<Range<usize>>) {
        let key = |r: &RawMessage| (r.topic, r.partition);
        let mut runs = runs_of(&self.records, key);
        let mut seen: Vec<(u32, Partition)> = Vec::with_capacity(runs.len());
        let mut split = false;
        for run in &runs {
            let k = key(&self.records[run.start]);
            if seen.contains(&k) {
                split = true;
                break;
            }
            seen.push(k);
        }
        if split {
            // Partitions in the order of their first message, then offsets as polled.
            let mut first_seen: Vec<(u32, Partition)> = Vec::new();
            for r in &self.records {
                if !first_seen.contains(&key(r)) {
                    first_seen.push(key(r));
                }
            }
            self.records.sort_by_cached_key(|r| {
                first_seen
                    .iter()
                    .position(|k| *k == key(r))
                    .unwrap_or(usize::MAX)
            });
            runs = runs_of(&self.records, key);
        }
        let buffer = PollBuffer {
            topics: std::mem::take(&mut self.topics),
            records: std::mem::take(&mut self.records),
            arena: Bytes::from(std::mem::take(&mut self.arena)),
            polled_at,
            _client: self.client.take(),
        };
        (Arc::new(buffer), runs)
    }
}

/// Ranges of consecutive records with the same key.
fn runs_of<K: PartialEq>(
    records: &[RawMessage],
    key: impl Fn(&RawMessage) -> K,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=records.len() {
        if i == records.len() || key(&records[i]) != key(&records[start]) {
            if i > start {
                out.push(start..i);
            }
            start = i;
        }
    }
    out
}

impl PollBuffer {
    fn record(&self, index: usize) -> RecordRef<'_> {
        RecordRef {
            buffer: self,
            raw: &self.records[index],
        }
    }
}

/// A batch: a range of one buffer's records (one partition's, in offset order), or a subset
/// of such a range (a virtual partition's group). Cloning it clones one or two `Arc`s.
#[derive(Debug, Clone)]
pub(crate) struct BatchView {
    buffer: Arc<PollBuffer>,
    range: Range<usize>,
    /// When set, only these records of `range` (buffer indices, ascending).
    subset: Option<Arc<[u32]>>,
}

impl BatchView {
    /// The records `range` of `buffer`.
    pub(crate) fn new(buffer: Arc<PollBuffer>, range: Range<usize>) -> Self {
        debug_assert!(range.end <= buffer.records.len());
        BatchView {
            buffer,
            range,
            subset: None,
        }
    }

    /// The records at `positions` of this batch (positions in `0..len()`, ascending; out of
    /// range ones are left out).
    pub(crate) fn subset(&self, positions: &[u32]) -> Self {
        let indices: Vec<u32> = positions
            .iter()
            .filter_map(|&p| self.index_at(p as usize))
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        BatchView {
            buffer: self.buffer.clone(),
            range: self.range.clone(),
            subset: Some(indices.into()),
        }
    }

    /// The buffer index of the record at `position`.
    fn index_at(&self, position: usize) -> Option<usize> {
        match &self.subset {
            Some(indices) => indices.get(position).map(|&i| i as usize),
            None => (position < self.range.len()).then(|| self.range.start + position),
        }
    }

    /// The buffer indices of the records, in order.
    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        let (range, subset) = match &self.subset {
            Some(indices) => (0..0, Some(indices.iter().map(|&i| i as usize))),
            None => (self.range.clone(), None),
        };
        range.chain(subset.into_iter().flatten())
    }

    /// No messages (for lifecycle hooks).
    pub(crate) fn empty() -> Self {
        let buffer = PollBuffer {
            topics: Vec::new(),
            records: Vec::new(),
            arena: Bytes::new(),
            polled_at: SystemTime::now(),
            _client: None,
        };
        BatchView {
            buffer: Arc::new(buffer),
            range: 0..0,
            subset: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.subset {
            Some(indices) => indices.len(),
            None => self.range.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn polled_at(&self) -> SystemTime {
        self.buffer.polled_at
    }

    /// The records, in offset order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.indices().map(|i| self.buffer.record(i))
    }

    pub(crate) fn first(&self) -> Option<RecordRef<'_>> {
        self.index_at(0).map(|i| self.buffer.record(i))
    }

    pub(crate) fn last(&self) -> Option<RecordRef<'_>> {
        let len = self.len();
        len.checked_sub(1)
            .and_then(|p| self.index_at(p))
            .map(|i| self.buffer.record(i))
    }

    /// The partition's record at `offset`.
    pub(crate) fn find(&self, offset: i64) -> Option<RecordRef<'_>> {
        self.iter().find(|r| r.offset() == offset)
    }

    /// The offsets of the first and the last message (-1, -1 when empty).
    pub(crate) fn offsets(&self) -> (i64, i64) {
        (
            self.first().map_or(-1, |r| r.offset()),
            self.last().map_or(-1, |r| r.offset()),
        )
    }
}

/// A record with its buffer: what decoders, dead-letter dispatch and instrumentation read.
#[derive(Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    buffer: &'a PollBuffer,
    raw: &'a RawMessage,
}

impl<'a> RecordRef<'a> {
    pub(crate) fn topic(&self) -> &'a Arc<str> {
        &self.buffer.topics[self.raw.topic as usize]
    }

    pub(crate) fn partition(&self) -> Partition {
        self.raw.partition
    }

    pub(crate) fn offset(&self) -> i64 {
        self.raw.offset
    }

    pub(crate) fn headers(&self) -> &'a Headers {
        match &self.raw.body {
            Body::Copied { headers, .. } => headers,
            Body::Native { message, headers } => headers.get_or_init(|| {
                message
                    .0
                    .headers()
                    .map(native::from_borrowed_headers)
                    .unwrap_or_default()
            }),
        }
    }

    pub(crate) fn timestamp(&self) -> Timestamp {
        match &self.raw.body {
            Body::Copied { timestamp, .. } => *timestamp,
            Body::Native { message, .. } => native::from_rdkafka_timestamp(message.0.timestamp()),
        }
    }

    pub(crate) fn key(&self) -> Option<&'a [u8]> {
        self.bytes(Part::Key)
    }

    pub(crate) fn payload(&self) -> Option<&'a [u8]> {
        self.bytes(Part::Payload)
    }

    fn bytes(&self, part: Part) -> Option<&'a [u8]> {
        part_of(self.buffer, self.raw, part)
    }

    /// The key as `Bytes`: shares the arena of a copied record; a copy of a native one.
    pub(crate) fn key_bytes(&self) -> Option<Bytes> {
        self.owned(Part::Key)
    }

    /// The payload as `Bytes`: shares the arena of a copied record; a copy of a native one.
    pub(crate) fn payload_bytes(&self) -> Option<Bytes> {
        self.owned(Part::Payload)
    }

    /// An owned `Bytes` of one part. A native record's part is copied: a `Bytes` can be kept
    /// anywhere (a decoded payload, a spawned task, a DLQ message waiting in the producer),
    /// and one that pointed into librdkafka's memory would keep the poll's fetch buffers
    /// and the client alive with it, so the consumer could not close at shutdown. The copy
    /// is made only when asked for (decoding, `raw_payload`, dead-lettering), never per
    /// polled message.
    fn owned(&self, part: Part) -> Option<Bytes> {
        match &self.raw.body {
            Body::Copied { key, payload, .. } => {
                let span = match part {
                    Part::Key => key,
                    Part::Payload => payload,
                };
                span.map(|s| self.buffer.arena.slice(s.start..s.end))
            }
            Body::Native { .. } => self.bytes(part).map(Bytes::copy_from_slice),
        }
    }
}

#[derive(Clone, Copy)]
enum Part {
    Key,
    Payload,
}

fn part_of<'a>(buffer: &'a PollBuffer, raw: &'a RawMessage, part: Part) -> Option<&'a [u8]> {
    match (&raw.body, part) {
        (Body::Copied { key: span, .. }, Part::Key)
        | (Body::Copied { payload: span, .. }, Part::Payload) => {
            span.map(|s| &buffer.arena[s.start..s.end])
        }
        (Body::Native { message, .. }, Part::Key) => message.0.key(),
        (Body::Native { message, .. }, Part::Payload) => message.0.payload(),
    }
}

/// What every message of a batch shares: the view and the topic's decoder.
struct Shared<P> {
    batch: BatchView,
    decoder: Decoder<P>,
}

/// A consumed message: its Kafka fields, and its payload decoded on first use.
///
/// Only ever seen by reference, inside its batch ([`Messages`]).
pub struct Message<P> {
    /// The batch's shared part, owned by the [`Messages`] this message lives in.
    shared: NonNull<Shared<P>>,
    /// The record's index in the buffer.
    index: usize,
    decoded: OnceLock<Result<P, DeserializationError>>,
    raw_payload: OnceLock<Option<Bytes>>,
}

// SAFETY: a `Message` only reads through `shared`, which points into the `Arc<Shared<P>>` of
// the `Messages` that holds it. `Shared<P>` is `Send + Sync` for every `P` (an `Arc` of an
// immutable buffer and a `Send + Sync` decoder), so sharing or sending that read access is
// sound; the decode caches are `OnceLock`s, `Send` when `P: Send` and `Sync` when `P: Send +
// Sync`, which are the bounds here.
#[allow(unsafe_code)]
unsafe impl<P: Send> Send for Message<P> {}
// SAFETY: see the `Send` impl above.
#[allow(unsafe_code)]
unsafe impl<P: Send + Sync> Sync for Message<P> {}

impl<P> Message<P> {
    fn shared(&self) -> &Shared<P> {
        // SAFETY: `Message`s are made only by `Messages::new`, pointing at the `Arc<Shared<P>>`
        // that the same `Messages` owns (its heap allocation never moves). They are stored in
        // that `Messages` and handed out only by shared reference borrowed from it: no
        // `Message` is public to construct, clone or move out, so the `Arc` is alive for as
        // long as any `&Message` exists. The pointee is never mutated.
        #[allow(unsafe_code)]
        unsafe {
            self.shared.as_ref()
        }
    }

    fn raw(&self) -> RecordRef<'_> {
        self.shared().batch.buffer.record(self.index)
    }

    /// The record's index in its poll buffer.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Topic.
    pub fn topic(&self) -> &str {
        self.raw().topic()
    }

    /// Partition.
    pub fn partition(&self) -> Partition {
        self.raw().partition()
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.raw().offset()
    }

    /// The key, raw.
    pub fn key(&self) -> Option<&[u8]> {
        self.raw().key()
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The headers, raw (several values per key possible).
    pub fn headers(&self) -> &Headers {
        self.raw().headers()
    }

    /// The timestamp and its kind.
    pub fn timestamp(&self) -> Timestamp {
        self.raw().timestamp()
    }

    /// The payload bytes as they came (`None` for a tombstone), made on the first call (from
    /// a broker, a copy of librdkafka's message: the `Bytes` owns its memory and can be kept
    /// after the batch, moved to another task or produced elsewhere without holding the
    /// poll's fetch buffers or the connection). Decoding with [`payload`](Self::payload)
    /// copies too (its own copy: using both copies twice); [`key`](Self::key),
    /// [`headers`](Self::headers) and [`is_tombstone`](Self::is_tombstone) read in place.
    pub fn raw_payload(&self) -> Option<&Bytes> {
        self.raw_payload
            .get_or_init(|| self.raw().payload_bytes())
            .as_ref()
    }

    /// Whether the payload is null (a tombstone).
    pub fn is_tombstone(&self) -> bool {
        self.raw().payload().is_none()
    }

    /// The decoded payload, decoded on the first call. A failure (it is reported on
    /// `error.occurred` as `consumer.deserialization.error`) is an error like any other:
    /// return it from `consume` with `?` and the batch is retried, then dead-lettered.
    pub fn payload(&self) -> Result<&P, DeserializationError> {
        let decoded = self.decoded.get_or_init(|| {
            let raw = self.raw();
            (self.shared().decoder)(&raw).map_err(|source| DeserializationError {
                topic: raw.topic().clone(),
                partition: raw.partition(),
                offset: raw.offset(),
                source: Arc::from(source),
            })
        });
        decoded.as_ref().map_err(Clone::clone)
    }
}

impl<P> fmt::Debug for Message<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.raw();
        f.debug_struct("Message")
            .field("topic", raw.topic())
            .field("partition", &raw.partition())
            .field("offset", &raw.offset())
            .field(
                "key",
                &self
                    .key_str()
                    .map_or_else(|| format!("{:?}", self.key()), str::to_owned),
            )
            .field("payload_bytes", &raw.payload().map(<[u8]>::len))
            .field("headers", raw.headers())
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
    pub(crate) fn new(batch: &BatchView, processed_at: SystemTime) -> Option<Self> {
        let first = batch.first()?;
        let last = batch.last()?;
        let polled_at = batch.polled_at();
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        let processed_ms = millis(processed_at);
        Some(BatchMetadata {
            topic: first.topic().clone(),
            partition: first.partition(),
            first_offset: first.offset(),
            last_offset: last.offset(),
            size: batch.len(),
            created_at: last.timestamp(),
            polled_at,
            processed_at,
            consumption_lag_ms: last
                .timestamp()
                .millis()
                .map_or(-1, |created| (processed_ms - created).max(0)),
            processing_lag_ms: (processed_ms - millis(polled_at)).max(0),
        })
    }
}

/// The batch a consumer gets: messages of one partition, in offset order.
pub struct Messages<P> {
    // Declared first, so dropped before what they point into.
    messages: Vec<Message<P>>,
    /// What `messages` point into; held, never read here.
    _shared: Arc<Shared<P>>,
    metadata: BatchMetadata,
}

impl<P> Messages<P> {
    pub(crate) fn new(batch: BatchView, decoder: Decoder<P>, metadata: BatchMetadata) -> Self {
        let indices: Vec<usize> = batch.indices().collect();
        let shared = Arc::new(Shared { batch, decoder });
        let pointer = NonNull::from(&*shared);
        let messages = indices
            .into_iter()
            .map(|index| Message {
                shared: pointer,
                index,
                decoded: OnceLock::new(),
                raw_payload: OnceLock::new(),
            })
            .collect();
        Messages {
            messages,
            _shared: shared,
            metadata,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(records: &[(&str, i32, i64)]) -> (Arc<PollBuffer>, Vec<Range<usize>>) {
        let mut b = PollBufferBuilder::new(records.len(), 0);
        for (topic, partition, offset) in records {
            let t = b.topic(&Arc::from(*topic));
            let payload = format!("{topic}/{partition}@{offset}");
            b.push(
                t,
                *partition,
                *offset,
                Some(b"k"),
                Some(payload.as_bytes()),
                Headers::new(),
                Timestamp::NotAvailable,
            );
        }
        b.finish(SystemTime::now())
    }

    fn batches(records: &[(&str, i32, i64)]) -> Vec<Vec<(String, i32, i64, String)>> {
        let (buffer, ranges) = buffer(records);
        ranges
            .into_iter()
            .map(|r| {
                BatchView::new(buffer.clone(), r)
                    .iter()
                    .map(|m| {
                        (
                            m.topic().to_string(),
                            m.partition(),
                            m.offset(),
                            String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn runs_of_one_partition_each_become_one_batch_each() {
        let got = batches(&[("a", 0, 5), ("a", 0, 6), ("a", 1, 0), ("b", 0, 9)]);
        let keys: Vec<Vec<(String, i32, i64)>> = got
            .iter()
            .map(|b| b.iter().map(|(t, p, o, _)| (t.clone(), *p, *o)).collect())
            .collect();
        assert_eq!(
            keys,
            vec![
                vec![("a".into(), 0, 5), ("a".into(), 0, 6)],
                vec![("a".into(), 1, 0)],
                vec![("b".into(), 0, 9)],
            ]
        );
        // Every payload is the record's own.
        for (t, p, o, payload) in got.iter().flatten() {
            assert_eq!(payload, &format!("{t}/{p}@{o}"));
        }
    }

    #[test]
    fn a_partition_in_several_runs_is_gathered_in_offset_order() {
        let got = batches(&[
            ("a", 1, 10),
            ("a", 0, 3),
            ("a", 1, 11),
            ("a", 0, 4),
            ("a", 1, 12),
        ]);
        let offsets: Vec<(i32, Vec<i64>)> = got
            .iter()
            .map(|b| (b[0].1, b.iter().map(|m| m.2).collect()))
            .collect();
        assert_eq!(offsets, vec![(1, vec![10, 11, 12]), (0, vec![3, 4])]);
        for (t, p, o, payload) in got.iter().flatten() {
            assert_eq!(payload, &format!("{t}/{p}@{o}"));
        }
    }

    #[test]
    fn messages_read_their_record_and_decode_once() {
        let (buffer, ranges) = buffer(&[("a", 2, 7), ("a", 2, 8)]);
        let view = BatchView::new(buffer, ranges[0].clone());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let decoder: Decoder<String> = Arc::new(move |r: &RecordRef<'_>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(String::from_utf8(r.payload().unwrap_or_default().to_vec())?)
        });
        let metadata = BatchMetadata::new(&view, SystemTime::now()).unwrap();
        assert_eq!(
            (metadata.first_offset, metadata.last_offset, metadata.size),
            (7, 8, 2)
        );
        let messages = Messages::new(view, decoder, metadata);
        let second = messages.last().unwrap();
        assert_eq!(
            (second.topic(), second.partition(), second.offset()),
            ("a", 2, 8)
        );
        assert_eq!(second.key(), Some(&b"k"[..]));
        assert_eq!(second.payload().unwrap(), "a/2@8");
        assert_eq!(second.payload().unwrap(), "a/2@8");
        assert_eq!(&second.raw_payload().unwrap()[..], b"a/2@8");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Messages outlive nothing they point into: moved, the batch still reads.
        let moved = messages;
        let payloads: Vec<&String> = moved.payloads().unwrap();
        assert_eq!(payloads, ["a/2@7", "a/2@8"]);
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&moved);
    }
}
