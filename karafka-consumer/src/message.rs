//! Consumed messages and their batch.
//!
//! A poll's messages live once, in a [`PollBuffer`]: one record per message. On a broker
//! connection the record holds librdkafka's message itself (payloads, headers and
//! timestamps are read in place, on first use, and a key is copied on its first use:
//! nothing is copied at poll time, and the buffer keeps the client alive while it holds
//! messages; an owned `Bytes` of a key or payload is a copy, so nothing a user keeps holds
//! librdkafka's memory, which cleaning can then free, see [`RecordState`]); in the test
//! harness it holds offsets, headers and timestamps, with keys and payloads in one byte
//! arena. A job's batch is a
//! [`BatchView`], a range of that buffer's records (one partition's, in offset order), so one
//! poll can feed several jobs without copying a message. The consumer's [`Messages`] wraps
//! the view with per-message decode caches; building it clones no `Arc` per message.

use std::cell::{OnceCell, UnsafeCell};
use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
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
    /// Cleaning (the cleaner API): see [`RecordState`].
    state: RecordState,
    body: Body,
}

/// Where a record is in its cleaning, and who may read librdkafka's message meanwhile.
///
/// A record is cleaned at most once (`CLEANED`): its payload can no longer be read. A native
/// record's librdkafka message (payload, key and headers, and with them its share of the
/// fetch buffer) is then freed (`FREED`) by whoever makes the last of these false: `PINNED`
/// (a reference into it was handed out for as long as the buffer lives: only
/// `MessageView::payload`, for splitters), `CLAIMED` (a cleaning iteration's message holds
/// it: its references live as long as that message), and readers (a call reading it right
/// now, counted in the bits from `READER` up). Each step is one compare-and-swap on the
/// state, so exactly one thread frees it, and nobody reads it after: every read first
/// becomes a reader, or pins, or claims, which fails once `FREED` is set. The key, timestamp,
/// headers and whether the payload is null are copied out ([`Kept`]) before `CLEANED` is
/// set, so they stay readable. Copied (harness) records only record `CLEANED`: their bytes
/// are one arena, freed with the buffer.
#[derive(Debug, Default)]
struct RecordState(AtomicU32);

const PINNED: u32 = 1;
const CLAIMED: u32 = 1 << 1;
const CLEANED: u32 = 1 << 2;
const FREED: u32 = 1 << 3;
const READER: u32 = 1 << 4;

impl RecordState {
    fn load(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Sets `add` unless one of `unless` is set; true if this call set it.
    fn set_unless(&self, add: u32, unless: u32) -> bool {
        let mut s = self.load();
        loop {
            if s & unless != 0 || s & add == add {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(s, s | add, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }

    /// Pins the message (true), unless it was freed.
    fn pin(&self) -> bool {
        let mut s = self.load();
        loop {
            if s & FREED != 0 {
                return false;
            }
            if s & PINNED != 0 {
                return true;
            }
            match self
                .0
                .compare_exchange_weak(s, s | PINNED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }

    /// Becomes a reader, unless the message was freed.
    fn enter(&self) -> bool {
        let mut s = self.load();
        loop {
            if s & FREED != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(s, s + READER, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }

    /// `FREED` is set by this call: the caller must free the message now.
    fn take_free(&self) -> bool {
        let mut s = self.load();
        loop {
            let free = s & CLEANED != 0 && s & (PINNED | CLAIMED | FREED) == 0 && s < READER;
            if !free {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(s, s | FREED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }
}

/// What a cleaned native record keeps of librdkafka's message (copied before it is freed;
/// the key is also copied on first use, so no reference to a key points into the message).
#[derive(Debug)]
struct Kept {
    key: Option<Box<[u8]>>,
    timestamp: Timestamp,
    tombstone: bool,
    payload_len: Option<usize>,
}

impl Kept {
    fn of(m: &NativeMessage) -> Self {
        let payload = m.0.payload();
        Kept {
            key: m.0.key().map(Box::from),
            timestamp: native::from_rdkafka_timestamp(m.0.timestamp()),
            tombstone: payload.is_none(),
            payload_len: payload.map(<[u8]>::len),
        }
    }
}

/// librdkafka's message of a native record, until it is freed (see [`RecordState`]).
struct NativeSlot(UnsafeCell<Option<NativeMessage>>);

// SAFETY: the message inside is only read by readers, pinners and the claimer, and taken
// out only by the one thread whose compare-and-swap set `FREED` while none of them existed
// (`RecordState`); after that nobody reads it. `NativeMessage` itself is `Send + Sync`
// (rdkafka's `BorrowedMessage` is; its lazily parsed headers are read once, through the
// record's `OnceLock`).
#[allow(unsafe_code)]
unsafe impl Sync for NativeSlot {}

impl fmt::Debug for NativeSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NativeSlot")
    }
}

impl NativeSlot {
    /// The message.
    ///
    /// # Safety
    ///
    /// The caller is a reader, a pinner or the claimer of the record (`RecordState`), for
    /// as long as the returned reference is used.
    #[allow(unsafe_code)]
    unsafe fn get(&self) -> Option<&NativeMessage> {
        // SAFETY: no thread takes the message while the caller holds its right to read.
        unsafe { (*self.0.get()).as_ref() }
    }

    /// Frees the message.
    ///
    /// # Safety
    ///
    /// The caller's `take_free` returned true.
    #[allow(unsafe_code)]
    unsafe fn free(&self) {
        // SAFETY: this thread set `FREED` while no reader, pinner or claimer existed, and
        // none can appear after it: it is the only access.
        drop(unsafe { (*self.0.get()).take() });
    }
}

/// A payload the consumer already cleaned (the cleaner API): it can no longer be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the payload of {topic}/{partition}@{offset} was cleaned (the cleaner API freed it after \
     processing) and can no longer be read; read what you need before cleaning it"
)]
pub struct PayloadCleaned {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: Partition,
    /// Offset.
    pub offset: i64,
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
    /// librdkafka's message, read in place (until it is cleaned, see [`RecordState`]); its
    /// headers converted on first use, its key copied on first use.
    Native {
        message: NativeSlot,
        headers: OnceLock<Headers>,
        kept: OnceLock<Kept>,
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
            state: RecordState::default(),
            body: Body::Native {
                message: NativeSlot(UnsafeCell::new(Some(NativeMessage(message)))),
                headers: OnceLock::new(),
                kept: OnceLock::new(),
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
            state: RecordState::default(),
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

    /// Runs `f` on librdkafka's message as a reader (see [`RecordState`]); None for a copied
    /// record, or once the message was freed.
    fn read<R>(&self, f: impl FnOnce(&NativeMessage) -> R) -> Option<R> {
        let Body::Native { message, .. } = &self.raw.body else {
            return None;
        };
        let state = &self.raw.state;
        if !state.enter() {
            return None;
        }
        // Stops being a reader when dropped, also if `f` panics (or the message would
        // never be freed).
        struct Reading<'r, 'a>(&'r RecordRef<'a>);
        impl Drop for Reading<'_, '_> {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        let _reading = Reading(self);
        // SAFETY: this thread is a reader until `_reading` is dropped, after the last use.
        #[allow(unsafe_code)]
        unsafe { message.get() }.map(f)
    }

    /// Stops being a reader; frees the message if it was cleaned meanwhile and this was the
    /// last one holding it.
    fn leave(&self) {
        self.raw.state.0.fetch_sub(READER, Ordering::AcqRel);
        self.free_if_due();
    }

    fn free_if_due(&self) {
        if let Body::Native { message, .. } = &self.raw.body {
            if self.raw.state.take_free() {
                // SAFETY: `take_free` returned true.
                #[allow(unsafe_code)]
                unsafe {
                    message.free()
                };
            }
        }
    }

    /// What a native record keeps of its message (made on first use, and always before the
    /// message is freed).
    fn kept(&self) -> Option<&'a Kept> {
        let Body::Native { kept, .. } = &self.raw.body else {
            return None;
        };
        if let Some(k) = kept.get() {
            return Some(k);
        }
        self.read(|m| {
            kept.get_or_init(|| Kept::of(m));
        });
        // Set by the read above, or (when the message was already freed) before it was.
        kept.get()
    }

    pub(crate) fn headers(&self) -> &'a Headers {
        match &self.raw.body {
            Body::Copied { headers, .. } => headers,
            Body::Native { headers, .. } => {
                if let Some(h) = headers.get() {
                    return h;
                }
                self.read(|m| {
                    headers.get_or_init(|| {
                        // rdkafka panics on a header name that is not UTF-8: such headers
                        // read as none rather than failing every later use of the message.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            m.0.headers()
                                .map(native::from_borrowed_headers)
                                .unwrap_or_default()
                        }))
                        .unwrap_or_default()
                    });
                });
                // Converted above, or before the message was freed.
                static EMPTY: OnceLock<Headers> = OnceLock::new();
                headers
                    .get()
                    .unwrap_or_else(|| EMPTY.get_or_init(Headers::new))
            }
        }
    }

    pub(crate) fn timestamp(&self) -> Timestamp {
        match &self.raw.body {
            Body::Copied { timestamp, .. } => *timestamp,
            Body::Native { kept, .. } => kept
                .get()
                .map(|k| k.timestamp)
                .or_else(|| self.read(|m| native::from_rdkafka_timestamp(m.0.timestamp())))
                .or_else(|| kept.get().map(|k| k.timestamp))
                .unwrap_or(Timestamp::NotAvailable),
        }
    }

    /// The key. A native record's is copied on first use (so no reference to it points
    /// into librdkafka's message, which cleaning frees).
    pub(crate) fn key(&self) -> Option<&'a [u8]> {
        match &self.raw.body {
            Body::Copied { key, .. } => key.map(|s| &self.buffer.arena[s.start..s.end]),
            Body::Native { .. } => self.kept().and_then(|k| k.key.as_deref()),
        }
    }

    /// Whether the payload is null (a tombstone); known after cleaning too.
    pub(crate) fn is_tombstone(&self) -> bool {
        match &self.raw.body {
            Body::Copied { payload, .. } => payload.is_none(),
            Body::Native { kept, .. } => kept
                .get()
                .map(|k| k.tombstone)
                .or_else(|| self.read(|m| m.0.payload().is_none()))
                .or_else(|| kept.get().map(|k| k.tombstone))
                .unwrap_or(false),
        }
    }

    /// The payload's length (None for a tombstone); known after cleaning too.
    pub(crate) fn payload_len(&self) -> Option<usize> {
        match &self.raw.body {
            Body::Copied { payload, .. } => payload.map(|s| s.end - s.start),
            Body::Native { kept, .. } => self
                .read(|m| m.0.payload().map(<[u8]>::len))
                .or_else(|| kept.get().map(|k| k.payload_len))
                .flatten(),
        }
    }

    /// The payload in place, for as long as the buffer lives: pins a native record (its
    /// message is then never freed by cleaning). For splitters, which run before any job of
    /// the batch. None once cleaned.
    pub(crate) fn payload_pinned(&self) -> Option<&'a [u8]> {
        if self.is_cleaned() {
            return None;
        }
        match &self.raw.body {
            Body::Copied { payload, .. } => payload.map(|s| &self.buffer.arena[s.start..s.end]),
            Body::Native { message, .. } => {
                if !self.raw.state.pin() {
                    return None;
                }
                // SAFETY: pinned: the message is never freed while the buffer lives, and
                // the reference lives no longer than the buffer (`'a`).
                #[allow(unsafe_code)]
                unsafe { message.get() }.and_then(|m| m.0.payload())
            }
        }
    }

    /// Whether the record was cleaned.
    pub(crate) fn is_cleaned(&self) -> bool {
        self.raw.state.load() & CLEANED != 0
    }

    pub(crate) fn cleaned(&self) -> PayloadCleaned {
        PayloadCleaned {
            topic: self.topic().clone(),
            partition: self.partition(),
            offset: self.offset(),
        }
    }

    /// Cleans the record (once): its payload can no longer be read, and a native record's
    /// librdkafka message is freed as soon as nothing reads it (`claimed`: the caller's claim
    /// ends with it).
    pub(crate) fn clean(&self, claimed: bool) {
        // What stays readable, copied first.
        let _ = self.kept();
        let _ = self.headers();
        let state = &self.raw.state.0;
        if claimed {
            let mut s = state.load(Ordering::Acquire);
            loop {
                let new = (s | CLEANED) & !CLAIMED;
                match state.compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(actual) => s = actual,
                }
            }
        } else {
            state.fetch_or(CLEANED, Ordering::AcqRel);
        }
        self.free_if_due();
    }

    /// Claims the record for a cleaning iteration: false when another holds it.
    pub(crate) fn claim(&self) -> bool {
        self.raw.state.set_unless(CLAIMED, 0)
    }

    /// Ends a claim without cleaning.
    pub(crate) fn unclaim(&self) {
        self.raw.state.0.fetch_and(!CLAIMED, Ordering::AcqRel);
        self.free_if_due();
    }

    /// The payload in place, for the holder of the record's claim.
    ///
    /// # Safety
    ///
    /// The caller holds the claim (`claim` returned true, no `clean`/`unclaim` since) for as
    /// long as the returned reference is used.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn payload_claimed(&self) -> Result<Option<&'a [u8]>, PayloadCleaned> {
        if self.is_cleaned() {
            return Err(self.cleaned());
        }
        match &self.raw.body {
            Body::Copied { payload, .. } => Ok(payload.map(|s| &self.buffer.arena[s.start..s.end])),
            // SAFETY: the claim keeps the message from being freed (see the contract).
            Body::Native { message, .. } => match unsafe { message.get() } {
                Some(m) => Ok(m.0.payload()),
                None => Err(self.cleaned()),
            },
        }
    }

    /// The key as `Bytes`: shares the arena of a copied record; a copy of a native one.
    pub(crate) fn key_bytes(&self) -> Option<Bytes> {
        match &self.raw.body {
            Body::Copied { key, .. } => key.map(|s| self.buffer.arena.slice(s.start..s.end)),
            Body::Native { .. } => self.key().map(Bytes::copy_from_slice),
        }
    }

    /// The payload as `Bytes`: shares the arena of a copied record; a copy of a native one
    /// (so nothing a user keeps holds librdkafka's memory: a kept `Bytes` would pin the
    /// poll's fetch buffers and the client, and the consumer could not close at shutdown;
    /// the copy is made only when asked for: decoding, `raw_payload`, dead-lettering). An
    /// error once the record was cleaned.
    pub(crate) fn payload_bytes(&self) -> Result<Option<Bytes>, PayloadCleaned> {
        if self.is_cleaned() {
            return Err(self.cleaned());
        }
        match &self.raw.body {
            Body::Copied { payload, .. } => {
                Ok(payload.map(|s| self.buffer.arena.slice(s.start..s.end)))
            }
            Body::Native { .. } => self
                .read(|m| m.0.payload().map(Bytes::copy_from_slice))
                .ok_or_else(|| self.cleaned()),
        }
    }
}

/// What every message of a batch shares: the view and the topic's decoder.
struct Shared<P> {
    batch: BatchView,
    decoder: Decoder<P>,
    /// The offset whose payload is kept whatever the consumer cleans: a dead letter waiting
    /// for it (see `Coordinator::keep_payload`).
    keep: Option<i64>,
}

impl<P> Shared<P> {
    /// Cleans `raw` unless its payload is kept for a dead letter (`claimed`: the caller's
    /// claim ends either way).
    fn clean(&self, raw: &RecordRef<'_>, claimed: bool) {
        if self.keep == Some(raw.offset()) {
            if claimed {
                raw.unclaim();
            }
            return;
        }
        raw.clean(claimed);
    }
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
    raw_payload: OnceLock<Result<Option<Bytes>, PayloadCleaned>>,
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

    /// The key, raw. Read after cleaning too.
    pub fn key(&self) -> Option<&[u8]> {
        self.raw().key()
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The headers, raw (several values per key possible). Read after cleaning too.
    pub fn headers(&self) -> &Headers {
        self.raw().headers()
    }

    /// The timestamp and its kind.
    pub fn timestamp(&self) -> Timestamp {
        self.raw().timestamp()
    }

    /// The payload bytes as they came (`Ok(None)` for a tombstone), made on the first call
    /// (from a broker, a copy of librdkafka's message: the `Bytes` owns its memory and can
    /// be kept after the batch, moved to another task or produced elsewhere without holding
    /// the poll's fetch buffers or the connection). Decoding with [`payload`](Self::payload)
    /// copies too (its own copy: using both copies twice); [`key`](Self::key),
    /// [`headers`](Self::headers) and [`is_tombstone`](Self::is_tombstone) read in place.
    ///
    /// An error once the message was cleaned (`karafka-pro`'s cleaner API) before the first
    /// call: its payload is gone.
    pub fn raw_payload(&self) -> Result<Option<&Bytes>, PayloadCleaned> {
        let raw = self.raw();
        if raw.is_cleaned() {
            return Err(raw.cleaned());
        }
        match self.raw_payload.get_or_init(|| raw.payload_bytes()) {
            Ok(bytes) => Ok(bytes.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether the payload is null (a tombstone); known after cleaning too.
    pub fn is_tombstone(&self) -> bool {
        self.raw().is_tombstone()
    }

    /// The decoded payload, decoded on the first call. A failure (it is reported on
    /// `error.occurred` as `consumer.deserialization.error`) is an error like any other:
    /// return it from `consume` with `?` and the batch is retried, then dead-lettered.
    ///
    /// An error ([`DeserializationError::is_cleaned`]) once the message was cleaned.
    pub fn payload(&self) -> Result<&P, DeserializationError> {
        let raw = self.raw();
        if raw.is_cleaned() {
            return Err(DeserializationError::cleaned(raw.cleaned()));
        }
        let decoded = self
            .decoded
            .get_or_init(|| decode(&self.shared().decoder, &raw));
        decoded.as_ref().map_err(Clone::clone)
    }

    /// Whether the message was cleaned (`karafka-pro`'s cleaner API): its payload can no
    /// longer be read; its key, headers, timestamp and offset can.
    pub fn is_cleaned(&self) -> bool {
        self.raw().is_cleaned()
    }

    /// Cleans the message: see `karafka-pro`'s `CleanerMessage::clean`, which applications
    /// call.
    #[doc(hidden)]
    pub fn clean_payload(&self) {
        self.shared().clean(&self.raw(), false);
    }
}

impl<P> AsRef<Message<P>> for Message<P> {
    fn as_ref(&self) -> &Message<P> {
        self
    }
}

fn decode<P>(decoder: &Decoder<P>, raw: &RecordRef<'_>) -> Result<P, DeserializationError> {
    decoder(raw).map_err(|source| DeserializationError {
        topic: raw.topic().clone(),
        partition: raw.partition(),
        offset: raw.offset(),
        source: Arc::from(source),
    })
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
            .field("payload_bytes", &raw.payload_len())
            .field("headers", raw.headers())
            .field("cleaned", &raw.is_cleaned())
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

impl DeserializationError {
    fn cleaned(cleaned: PayloadCleaned) -> Self {
        DeserializationError {
            topic: cleaned.topic.clone(),
            partition: cleaned.partition,
            offset: cleaned.offset,
            source: Arc::new(cleaned),
        }
    }

    /// Whether the payload could not be read because the message was cleaned (the cleaner
    /// API), rather than because it does not decode.
    pub fn is_cleaned(&self) -> bool {
        (&*self.source as &(dyn std::error::Error + 'static))
            .downcast_ref::<PayloadCleaned>()
            .is_some()
    }
}

impl fmt::Display for DeserializationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_cleaned() {
            return write!(f, "{}", self.source);
        }
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
    /// The batch's messages; `keep`: the offset whose payload cleaning leaves alone (a dead
    /// letter waits for it).
    pub(crate) fn new(
        batch: BatchView,
        decoder: Decoder<P>,
        metadata: BatchMetadata,
        keep: Option<i64>,
    ) -> Self {
        let indices: Vec<usize> = batch.indices().collect();
        let shared = Arc::new(Shared {
            batch,
            decoder,
            keep,
        });
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

    /// Cleans every message: see `karafka-pro`'s `CleanerMessages::clean`, which
    /// applications call.
    #[doc(hidden)]
    pub fn clean_payloads(&self) {
        for message in &self.messages {
            message.shared().clean(&message.raw(), false);
        }
    }

    /// A cleaning iteration: see `karafka-pro`'s `CleanerMessages::each_clean`, which
    /// applications call.
    #[doc(hidden)]
    pub fn cleaning(&self) -> Cleaning<'_, P> {
        Cleaning {
            messages: self,
            next: 0,
            current: None,
        }
    }
}

/// An iteration over a batch that cleans each message once the loop body that got it is
/// done (Karafka's `each(clean: true)`): `while let Some(message) = batch.next() { ... }`.
/// Made by `karafka-pro`'s `CleanerMessages::each_clean`.
///
/// A message is cleaned when the next one is asked for (or when `next` returns `None`), so
/// a body that leaves the loop early (`?`, `return`, `break`) leaves its message uncleaned:
/// it can still be retried or dead-lettered. Each message's references (payload, key)
/// live only as long as its [`CleaningMessage`], which borrows the iteration: the borrow
/// checker ends them before the message is cleaned. A message another iteration still
/// holds is skipped.
pub struct Cleaning<'a, P> {
    messages: &'a Messages<P>,
    next: usize,
    /// The message handed out last (claimed), cleaned at the next step.
    current: Option<usize>,
}

impl<P> Cleaning<'_, P> {
    /// Cleans the message handed out before, and hands out the next one.
    #[allow(clippy::should_implement_trait)] // a lending iteration: it cannot be an Iterator
    pub fn next(&mut self) -> Option<CleaningMessage<'_, P>> {
        if let Some(i) = self.current {
            let message = &self.messages.messages[i];
            message.shared().clean(&message.raw(), true);
            self.current = None;
        }
        while self.next < self.messages.messages.len() {
            let i = self.next;
            self.next += 1;
            let message = &self.messages.messages[i];
            if message.raw().claim() {
                self.current = Some(i);
                return Some(CleaningMessage {
                    message,
                    raw: OnceCell::new(),
                    decoded: OnceCell::new(),
                });
            }
        }
        None
    }
}

impl<P> Drop for Cleaning<'_, P> {
    fn drop(&mut self) {
        // Left early: the last message handed out is not cleaned.
        if let Some(i) = self.current.take() {
            self.messages.messages[i].raw().unclaim();
        }
    }
}

impl<P> fmt::Debug for Cleaning<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cleaning")
            .field("messages", &self.messages.len())
            .field("next", &self.next)
            .finish()
    }
}

/// A message of a [`Cleaning`] iteration: the same fields as [`Message`], with its payload
/// readable in place ([`payload_bytes`](Self::payload_bytes), no copy) and its caches
/// (decoded payload, owned bytes) its own, so everything it made is freed with it; the
/// message itself is cleaned once the iteration moves on. Pass it to
/// `ctx.mark_as_consumed(&message)` as any message.
pub struct CleaningMessage<'it, P> {
    message: &'it Message<P>,
    raw: OnceCell<Result<Option<Bytes>, PayloadCleaned>>,
    decoded: OnceCell<Result<P, DeserializationError>>,
}

impl<P> CleaningMessage<'_, P> {
    /// Topic.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// Partition.
    pub fn partition(&self) -> Partition {
        self.message.partition()
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.message.offset()
    }

    /// The key, raw.
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.message.key_str()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        self.message.headers()
    }

    /// The timestamp and its kind.
    pub fn timestamp(&self) -> Timestamp {
        self.message.timestamp()
    }

    /// Whether the payload is null (a tombstone).
    pub fn is_tombstone(&self) -> bool {
        self.message.is_tombstone()
    }

    /// The payload in place (`Ok(None)` for a tombstone): librdkafka's bytes, not copied,
    /// for as long as this message lives. An error if it was cleaned already.
    pub fn payload_bytes(&self) -> Result<Option<&[u8]>, PayloadCleaned> {
        // SAFETY: the iteration claimed the record when it made this message and keeps the
        // claim until its next step or its drop, which both need the iteration back: this
        // message (which borrows it) and every reference from it are gone by then.
        #[allow(unsafe_code)]
        unsafe {
            self.message.raw().payload_claimed()
        }
    }

    /// The payload as owned `Bytes` (a copy, made once; freed with this message).
    pub fn raw_payload(&self) -> Result<Option<&Bytes>, PayloadCleaned> {
        match self.raw.get_or_init(|| self.message.raw().payload_bytes()) {
            Ok(bytes) => Ok(bytes.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The decoded payload (decoded once; freed with this message).
    pub fn payload(&self) -> Result<&P, DeserializationError> {
        let raw = self.message.raw();
        if raw.is_cleaned() {
            return Err(DeserializationError::cleaned(raw.cleaned()));
        }
        self.decoded
            .get_or_init(|| decode(&self.message.shared().decoder, &raw))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl<P> AsRef<Message<P>> for CleaningMessage<'_, P> {
    fn as_ref(&self) -> &Message<P> {
        self.message
    }
}

impl<P> fmt::Debug for CleaningMessage<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.message, f)
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
                            String::from_utf8(m.payload_bytes().unwrap().unwrap().to_vec())
                                .unwrap(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_record_is_freed_once_by_whoever_lets_it_go_last() {
        let state = RecordState::default();
        assert!(state.enter()); // a reader
        state.0.fetch_or(CLEANED, Ordering::AcqRel);
        assert!(!state.take_free(), "freed under a reader");
        state.0.fetch_sub(READER, Ordering::AcqRel);
        assert!(state.take_free());
        assert!(!state.take_free(), "freed twice");
        assert!(!state.enter(), "read after it was freed");
        assert!(!state.set_unless(PINNED, FREED));

        let claimed = RecordState::default();
        assert!(claimed.set_unless(CLAIMED, 0));
        assert!(!claimed.set_unless(CLAIMED, 0), "claimed twice");
        claimed.0.fetch_or(CLEANED, Ordering::AcqRel);
        assert!(!claimed.take_free(), "freed under a claim");
        claimed.0.fetch_and(!CLAIMED, Ordering::AcqRel);
        assert!(claimed.take_free());

        let pinned = RecordState::default();
        assert!(pinned.set_unless(PINNED, FREED));
        pinned.0.fetch_or(CLEANED, Ordering::AcqRel);
        assert!(!pinned.take_free(), "a pinned record is never freed");
    }

    #[test]
    fn cleaning_keeps_the_key_and_refuses_the_payload() {
        let (buffer, ranges) = buffer(&[("a", 0, 1), ("a", 0, 2), ("a", 0, 3)]);
        let view = BatchView::new(buffer, ranges[0].clone());
        let decoder: Decoder<String> = Arc::new(|r: &RecordRef<'_>| {
            Ok(String::from_utf8(
                r.payload_bytes()?.unwrap_or_default().to_vec(),
            )?)
        });
        let metadata = BatchMetadata::new(&view, SystemTime::now()).unwrap();
        let messages = Messages::new(view, decoder, metadata, None);
        let mut seen = Vec::new();
        {
            let mut batch = messages.cleaning();
            while let Some(m) = batch.next() {
                seen.push(m.payload().unwrap().clone());
                if m.offset() == 2 {
                    break; // left early: offset 2 stays uncleaned
                }
            }
        }
        assert_eq!(seen, ["a/0@1", "a/0@2"]);
        let cleaned: Vec<bool> = messages.iter().map(Message::is_cleaned).collect();
        assert_eq!(cleaned, [true, false, false]);
        // A second iteration picks up where processing stopped.
        let mut batch = messages.cleaning();
        let mut rest = Vec::new();
        while let Some(m) = batch.next() {
            rest.push((m.offset(), m.payload().cloned().ok()));
        }
        drop(batch);
        assert_eq!(
            rest,
            [
                (1, None),
                (2, Some("a/0@2".to_owned())),
                (3, Some("a/0@3".to_owned()))
            ]
        );
        for m in &messages {
            assert!(m.is_cleaned());
            assert_eq!(m.key(), Some(&b"k"[..]));
            let error = m.payload().unwrap_err();
            assert!(error.is_cleaned());
            assert!(m.raw_payload().is_err());
        }
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
            Ok(String::from_utf8(
                r.payload_bytes()?.unwrap_or_default().to_vec(),
            )?)
        });
        let metadata = BatchMetadata::new(&view, SystemTime::now()).unwrap();
        assert_eq!(
            (metadata.first_offset, metadata.last_offset, metadata.size),
            (7, 8, 2)
        );
        let messages = Messages::new(view, decoder, metadata, None);
        let second = messages.last().unwrap();
        assert_eq!(
            (second.topic(), second.partition(), second.offset()),
            ("a", 2, 8)
        );
        assert_eq!(second.key(), Some(&b"k"[..]));
        assert_eq!(second.payload().unwrap(), "a/2@8");
        assert_eq!(second.payload().unwrap(), "a/2@8");
        assert_eq!(&second.raw_payload().unwrap().unwrap()[..], b"a/2@8");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Messages outlive nothing they point into: moved, the batch still reads.
        let moved = messages;
        let payloads: Vec<&String> = moved.payloads().unwrap();
        assert_eq!(payloads, ["a/2@7", "a/2@8"]);
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&moved);
    }
}
