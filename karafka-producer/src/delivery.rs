//! Delivery reports, the handles that wait for them, and the completion sink clients call.

use std::alloc::Layout;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{ErrorKind, ErrorOccurred, Event, Monitor};
use karafka_core::{KafkaError, Label, Partition};

use crate::error::Error;
use crate::message::Message;

/// A message the broker acknowledged.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition it was written to.
    pub partition: Partition,
    /// Its offset; `-1` when the broker does not return one (`acks=0`: librdkafka then
    /// reports its invalid offset, -1001, which karafka-rs reports as -1).
    pub offset: i64,
    /// The message's label.
    pub label: Option<Label>,
}

/// What a [`Client`](crate::client::Client) reports for one message.
#[derive(Debug)]
pub enum Outcome {
    /// The broker acknowledged it.
    Delivered {
        /// Partition.
        partition: Partition,
        /// Offset (-1 when unknown).
        offset: i64,
    },
    /// It was not delivered; the client gives the message back.
    Failed {
        /// Why.
        error: KafkaError,
        /// The message, as the client held it (its label is restored by the producer).
        message: Box<Message>,
    },
}

/// State shared by a producer's deliveries: where events go, and who waits for queue room.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) producer_id: Arc<str>,
    pub(crate) monitor: Monitor,
    pub(crate) room: QueueRoom,
    /// While the producer closes, failed deliveries are also collected here, so `close()`
    /// can return every message it could not deliver.
    pub(crate) undelivered: Mutex<Option<Vec<Message>>>,
}

/// Lets dispatchers that hit a full queue sleep until a delivery report frees room (or their
/// back-off step ends), instead of sleeping blindly.
#[derive(Debug, Default)]
pub(crate) struct QueueRoom {
    waiters: AtomicUsize,
    lock: Mutex<u64>,
    freed: Condvar,
}

impl QueueRoom {
    /// Called for every completed delivery: wakes waiters, if any (one atomic load otherwise).
    #[inline]
    fn released(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        let mut generation = lock(&self.lock);
        *generation += 1;
        self.freed.notify_all();
    }

    /// Waits until a delivery completes or `step` passes.
    pub(crate) fn wait(&self, step: Duration) {
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let generation = lock(&self.lock);
        let start = *generation;
        let _ = self
            .freed
            .wait_timeout_while(generation, step, |g| *g == start);
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The completion sink a client receives with each message it accepts.
///
/// The client must call [`complete`](Delivery::complete) exactly once, from any thread, when
/// the message's fate is known. Dropping it uncompleted completes it with a failure, so no
/// waiter hangs (and the message is reported lost).
pub struct Delivery {
    repr: Repr,
}

enum Repr {
    /// One message: its own slot.
    Single(Box<Pending>),
    /// Entry `index` of the registered batch `batch` (see [`crate::batches`]).
    Entry { batch: u32, index: u32 },
    /// Completed, cancelled or converted.
    Taken,
}

pub(crate) struct Pending {
    partition: Option<Partition>,
    label: Option<Label>,
    slot: Arc<Slot>,
    topic: Arc<str>,
}

/// Tags a batch entry in librdkafka's opaque pointer (user-space pointers never set it).
const ENTRY_TAG: usize = 1 << 63;

/// A batch entry's opaque value.
fn entry_token(batch: u32, index: u32) -> usize {
    ENTRY_TAG | (batch as usize) << 32 | index as usize
}

/// The batch entry an opaque value names, if it names one.
fn entry_of(opaque: usize) -> Option<(u32, u32)> {
    (opaque & ENTRY_TAG != 0).then_some((((opaque & !ENTRY_TAG) >> 32) as u32, opaque as u32))
}

const _: () = assert!(
    usize::BITS == 64,
    "karafka-producer needs a 64-bit target (delivery tokens pack a batch id and an index)"
);

impl Delivery {
    pub(crate) fn single(
        topic: Arc<str>,
        partition: Option<Partition>,
        label: Option<Label>,
        slot: Arc<Slot>,
    ) -> Self {
        Delivery {
            repr: Repr::Single(Box::new(Pending {
                partition,
                label,
                slot,
                topic,
            })),
        }
    }

    /// The delivery of entry `index` of `state` (whose topic, partition and label the
    /// dispatcher recorded in `state`).
    pub(crate) fn entry(state: &BatchState, index: usize) -> Self {
        Delivery {
            repr: Repr::Entry {
                batch: state.id(),
                index: index as u32,
            },
        }
    }

    /// What identifies this delivery (its opaque value), to recognise it when a client hands
    /// it back.
    pub(crate) fn token(&self) -> usize {
        match &self.repr {
            Repr::Single(pending) => &**pending as *const Pending as usize,
            Repr::Entry { batch, index } => entry_token(*batch, *index),
            Repr::Taken => 0,
        }
    }

    /// This delivery, handed back by a client that refused a message, if it is the one
    /// identified by `token` (the one the client was given). A client that hands back
    /// another message's delivery keeps the one it was given (a late report of it is then
    /// ignored); the one it handed back is dropped, which reports that message failed to
    /// its owner.
    pub(crate) fn reclaim(self, token: usize) -> Option<Delivery> {
        (self.token() == token).then_some(self)
    }

    /// The topic of the message this delivery belongs to.
    pub fn topic(&self) -> Arc<str> {
        match &self.repr {
            Repr::Single(p) => p.topic.clone(),
            Repr::Entry { batch, index } => crate::batches::get(*batch)
                .map_or_else(|| Arc::from(""), |s| s.topic_of(*index as usize)),
            Repr::Taken => Arc::from(""),
        }
    }

    /// The partition the message was sent to explicitly (or by partition key), if any.
    pub(crate) fn requested_partition(&self) -> Option<Partition> {
        match &self.repr {
            Repr::Single(p) => p.partition,
            Repr::Entry { batch, index } => {
                crate::batches::get(*batch).and_then(|s| s.requested_partition(*index as usize))
            }
            Repr::Taken => None,
        }
    }

    /// Reports the message's fate. Emits `message.acknowledged` or `error.occurred`
    /// (`producer.delivery.error`) and wakes whoever waits for it.
    pub fn complete(mut self, outcome: Outcome) {
        match std::mem::replace(&mut self.repr, Repr::Taken) {
            Repr::Single(pending) => (*pending).complete(outcome),
            Repr::Entry { batch, index } => {
                crate::batches::with(batch, |state| state.complete(index as usize, outcome));
            }
            Repr::Taken => {}
        }
    }

    /// Reports a delivery by the opaque librdkafka handed back, without rebuilding the
    /// [`Delivery`] for a batch entry (the delivery-report thread's hot path).
    ///
    /// # Safety
    ///
    /// As [`from_opaque`](Self::from_opaque): `opaque` comes from
    /// [`into_opaque`](Self::into_opaque) and is turned back exactly once.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn delivered_from_opaque(opaque: usize, partition: Partition, offset: i64) {
        if let Some((batch, index)) = entry_of(opaque) {
            // SAFETY: per this function's contract, librdkafka reports this entry once; it
            // accepted the entry, so the dispatcher did not mark it never sent.
            #[allow(unsafe_code)]
            unsafe {
                crate::batches::delivered_once(batch, index as usize, partition, offset)
            };
            return;
        }
        // SAFETY: per this function's contract.
        let delivery = unsafe { Self::from_opaque(opaque) };
        delivery.complete(Outcome::Delivered { partition, offset });
    }

    /// Disarms a delivery whose message was not taken, giving its label back (nothing is
    /// reported: the caller reports the failure itself; a batch entry is settled by the
    /// dispatcher).
    pub(crate) fn cancel(mut self) -> Option<Label> {
        match std::mem::replace(&mut self.repr, Repr::Taken) {
            Repr::Single(pending) => pending.label,
            Repr::Entry { batch, index } => {
                crate::batches::get(batch).and_then(|s| s.take_label(index as usize))
            }
            Repr::Taken => None,
        }
    }

    /// The delivery as librdkafka's per-message opaque pointer.
    pub(crate) fn into_opaque(mut self) -> usize {
        match std::mem::replace(&mut self.repr, Repr::Taken) {
            Repr::Single(pending) => Box::into_raw(pending) as usize,
            Repr::Entry { batch, index } => entry_token(batch, index),
            Repr::Taken => 0,
        }
    }

    /// The delivery back from librdkafka's opaque pointer.
    ///
    /// # Safety
    ///
    /// `opaque` must come from [`into_opaque`](Self::into_opaque), and be turned back exactly
    /// once (librdkafka hands each message's opaque back once: to its delivery report, or to
    /// the caller when it refuses the message).
    #[allow(unsafe_code)]
    pub(crate) unsafe fn from_opaque(opaque: usize) -> Self {
        let repr = if opaque == 0 {
            Repr::Taken
        } else if let Some((batch, index)) = entry_of(opaque) {
            Repr::Entry { batch, index }
        } else {
            // SAFETY: per this function's contract the value is a pointer from
            // `Box::into_raw` in `into_opaque` (user-space pointers never carry ENTRY_TAG),
            // reclaimed once.
            Repr::Single(unsafe { Box::from_raw(opaque as *mut Pending) })
        };
        Delivery { repr }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if matches!(self.repr, Repr::Taken) {
            return;
        }
        let message = Box::new(Message::new(self.topic(), bytes::Bytes::new()));
        let delivery = Delivery {
            repr: std::mem::replace(&mut self.repr, Repr::Taken),
        };
        delivery.complete(Outcome::Failed {
            error: KafkaError::other(
                "deliver message",
                "the client dropped the message without reporting its delivery; its payload is unknown",
            ),
            message,
        });
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic())
            .finish()
    }
}

impl Pending {
    fn complete(self, outcome: Outcome) {
        let Pending {
            label, slot, topic, ..
        } = self;
        let shared = &slot.shared;
        shared.room.released();
        let result = match outcome {
            Outcome::Delivered { partition, offset } => {
                shared.acknowledged(&topic, partition, offset, label.as_ref());
                Ok(DeliveryReport {
                    topic,
                    partition,
                    offset,
                    label,
                })
            }
            Outcome::Failed { error, mut message } => {
                message.label = label;
                Err(shared.failed(error, message))
            }
        };
        slot.fill(result);
    }
}

impl Shared {
    fn acknowledged(
        &self,
        topic: &Arc<str>,
        partition: Partition,
        offset: i64,
        label: Option<&Label>,
    ) {
        self.monitor.emit_with(|| Event::MessageAcknowledged {
            producer_id: self.producer_id.clone(),
            topic: topic.clone(),
            partition,
            offset,
            label: label.cloned(),
        });
    }

    /// Reports a failed delivery (event, close collector) and builds its error.
    fn failed(&self, error: KafkaError, message: Box<Message>) -> Error {
        if let Some(collected) = lock(&self.undelivered).as_mut() {
            collected.push((*message).clone());
        }
        self.monitor.emit_with(|| {
            Event::ErrorOccurred(
                ErrorOccurred::new(ErrorKind::ProducerDelivery, error.clone())
                    .source_id(self.producer_id.clone())
                    .at(message.topic.clone(), message.partition, None),
            )
        });
        Error::Delivery {
            source: error,
            message,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One message.

pub(crate) struct Slot {
    shared: Arc<Shared>,
    state: Mutex<SlotState>,
    ready: Condvar,
}

enum SlotState {
    Pending(Option<Waker>),
    Ready(Result<DeliveryReport, Error>),
    Taken,
}

impl Slot {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Slot {
            shared,
            state: Mutex::new(SlotState::Pending(None)),
            ready: Condvar::new(),
        })
    }

    fn fill(&self, result: Result<DeliveryReport, Error>) {
        let waker = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, SlotState::Ready(result)) {
                SlotState::Pending(waker) => waker,
                // Completed twice: keep the first result.
                earlier => {
                    *state = earlier;
                    None
                }
            }
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Waits for one message's delivery report: `.await` it, or block with
/// [`wait`](DeliveryHandle::wait).
#[must_use = "a delivery handle reports whether the message arrived; drop it only on purpose"]
pub struct DeliveryHandle {
    slot: Arc<Slot>,
    topic: Arc<str>,
}

impl DeliveryHandle {
    pub(crate) fn new(slot: Arc<Slot>, topic: Arc<str>) -> Self {
        DeliveryHandle { slot, topic }
    }

    /// The message's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the report is in.
    pub fn is_done(&self) -> bool {
        !matches!(*lock(&self.slot.state), SlotState::Pending(_))
    }

    /// Blocks until the report is in or `timeout` passes
    /// ([`Error::WaitTimeout`](crate::Error::WaitTimeout); the message may still arrive).
    pub fn wait(self, timeout: Duration) -> Result<DeliveryReport, Error> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.slot.state);
        loop {
            match std::mem::replace(&mut *state, SlotState::Taken) {
                SlotState::Ready(result) => return result,
                SlotState::Taken => {
                    return Err(Error::Core(karafka_core::Error::Closed {
                        what: "delivery handle (its result was already taken)".into(),
                    }));
                }
                pending @ SlotState::Pending(_) => {
                    *state = pending;
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::WaitTimeout { timeout });
                    }
                    state = self
                        .slot
                        .ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

impl Future for DeliveryHandle {
    type Output = Result<DeliveryReport, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot.state);
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Ready(result) => Poll::Ready(result),
            SlotState::Pending(_) => {
                *state = SlotState::Pending(Some(cx.waker().clone()));
                Poll::Pending
            }
            SlotState::Taken => Poll::Ready(Err(Error::Core(karafka_core::Error::Closed {
                what: "delivery handle (its result was already taken)".into(),
            }))),
        }
    }
}

impl fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryHandle")
            .field("topic", &self.topic)
            .field("done", &self.is_done())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Many messages.

/// A batch entry while no report is in (zero: the states start zeroed).
const PENDING: u8 = 0;
/// A batch entry delivered: its report is written in its slot.
const DELIVERED: u8 = 1;
/// A batch entry whose delivery failed (the error is in `failures`).
const FAILED: u8 = 2;
/// A batch entry that was never handed to the client (settled by the dispatcher).
const NOT_SENT: u8 = 3;

/// `len` zeroed values of an integer atomic type, from zeroed memory: fresh pages from the OS
/// are not written here (their first write is the one that needs them).
///
/// # Safety
///
/// All-zero bytes are a valid `T` (integer atomics).
#[allow(unsafe_code)]
unsafe fn zeroed<T: Default>(len: usize) -> Box<[T]> {
    let layout = match std::alloc::Layout::array::<T>(len) {
        Ok(layout) if layout.size() > 0 => layout,
        _ => return (0..len).map(|_| T::default()).collect(),
    };
    // SAFETY: `layout` has a non-zero size; all-zero bytes are a valid `T` (the caller's
    // contract), so the zeroed allocation holds `len` valid values; it was made with the layout
    // of a `[T]` of `len`, as `Box<[T]>` frees it.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len))
    }
}

/// The reports of a batch, written in place by the deliveries: once every entry is delivered,
/// they are handed to the caller as a `Vec` over the same memory (no pass over the batch, no
/// second allocation).
///
/// The memory is, when the dispatcher hands it over, the batch's own `Vec<Message>`
/// allocation ([`ReportMemory`]): report `i` (48 bytes) lies inside the bytes of messages
/// `0..=i` (176 bytes each), which the dispatcher moved out before entry `i` was sent, so the
/// reports need no fresh pages (a million of them are 48 MB: 12k page faults on the delivery
/// thread, measured as half its cost). At hand-over the allocation shrinks in place to a
/// `Vec<DeliveryReport>`'s layout.
///
/// Each message's topic reference moves into its report (no reference count touched for it
/// on either thread): the dispatcher writes slot `i`'s topic before it hands entry `i` out, the
/// entry's delivery writes the rest.
///
/// Invariants (upheld by [`BatchState`]): slot `i`'s topic is written once, by the dispatcher,
/// before entry `i` is handed to a client, and is owned by the slot from then on, unless the
/// dispatcher takes it back when the client refuses the entry (which then ends
/// [`NOT_SENT`]); once every entry settled, a slot holds a topic exactly when its entry is
/// [`DELIVERED`] or [`FAILED`]. The rest of slot `i` is written at most once, by the thread
/// that moved entry `i`'s state from [`PENDING`] to [`DELIVERED`]. Until every entry settled
/// (`remaining` reached zero with `AcqRel`, after the writes) a slot's topic is read only by
/// the thread that claimed its entry, or by the dispatcher taking back or cloning the topic
/// of a refused entry (reads of bytes nobody writes any more); after, slots are read (moved
/// out or dropped) once (`taken`).
struct ReportSlots {
    ptr: NonNull<DeliveryReport>,
    /// The allocation's layout (as the global allocator knows it); zero-sized: nothing
    /// allocated.
    layout: Layout,
}

/// A batch's `Vec<Message>` allocation, given to its [`BatchState`] to hold the reports.
pub(crate) struct ReportMemory {
    ptr: NonNull<Message>,
    capacity: usize,
}

impl ReportMemory {
    /// Takes over `messages`' allocation (the batch state it goes to frees it), and returns
    /// the reader the dispatcher moves each message out with.
    pub(crate) fn of(messages: Vec<Message>) -> (Self, MessageReader) {
        let mut messages = std::mem::ManuallyDrop::new(messages);
        // A Vec's pointer is never null (dangling when nothing is allocated).
        let ptr = NonNull::new(messages.as_mut_ptr()).unwrap_or(NonNull::dangling());
        let memory = ReportMemory {
            ptr,
            capacity: messages.capacity(),
        };
        (
            memory,
            MessageReader {
                ptr,
                len: messages.len(),
            },
        )
    }
}

/// Moves the messages out of a batch's allocation (see [`ReportMemory`]).
#[derive(Clone, Copy)]
pub(crate) struct MessageReader {
    ptr: NonNull<Message>,
    len: usize,
}

impl MessageReader {
    /// Moves message `index` out.
    ///
    /// # Safety
    ///
    /// The batch state holding the allocation is alive; `index` < the batch's length; each
    /// index is moved out at most once, in increasing order, and message `index` is moved out
    /// before entry `index` is handed to a client (reports of entries up to `index` may be
    /// written over the bytes of moved-out messages from then on).
    #[allow(unsafe_code)]
    pub(crate) unsafe fn take(&self, index: usize) -> Message {
        debug_assert!(index < self.len, "message {index} of {}", self.len);
        // SAFETY: in bounds, in a live allocation, and not moved out before, per the contract;
        // no report is written over it yet (reports of entries before `index` end before
        // message `index` starts: a report is smaller than a message).
        unsafe { self.ptr.as_ptr().add(index).read() }
    }
}

// A report must fit in the bytes of the message it replaces, with the same alignment.
const _: () = assert!(
    std::mem::size_of::<DeliveryReport>() <= std::mem::size_of::<Message>()
        && std::mem::align_of::<DeliveryReport>() == std::mem::align_of::<Message>()
);

// SAFETY: the slots are plain memory owned by the batch; per the invariants above each field
// of a slot is written by one thread (the topic by the dispatcher, the rest by the completing
// thread) and read after that write happened-before, so sharing the pointer between threads
// races on nothing. `DeliveryReport` is `Send + Sync`.
#[allow(unsafe_code)]
unsafe impl Send for ReportSlots {}
// SAFETY: see `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for ReportSlots {}
// SAFETY: `ReportMemory` is the raw allocation of a `Vec<Message>` (`Message: Send + Sync`);
// see `ReportSlots`.
#[allow(unsafe_code)]
unsafe impl Send for ReportMemory {}
// SAFETY: see `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for ReportMemory {}

impl ReportSlots {
    /// Fresh memory for `len` reports.
    fn new(len: usize) -> Self {
        let mut reports = std::mem::ManuallyDrop::new(Vec::<DeliveryReport>::with_capacity(len));
        let capacity = reports.capacity();
        ReportSlots {
            // A Vec's pointer is never null (dangling when nothing is allocated).
            ptr: NonNull::new(reports.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            layout: Layout::array::<DeliveryReport>(capacity).unwrap_or(Layout::new::<()>()),
        }
    }

    /// The reports over a batch's message allocation (see the type's docs).
    fn reusing(memory: ReportMemory) -> Self {
        ReportSlots {
            ptr: memory.ptr.cast(),
            layout: Layout::array::<Message>(memory.capacity).unwrap_or(Layout::new::<()>()),
        }
    }

    /// Gives slot `index` its topic (the dispatcher, before the entry is handed out; the rest
    /// of the report is written by its delivery, see [`complete`](Self::complete)).
    ///
    /// # Safety
    ///
    /// `index` is an entry of the batch whose message was moved out; its slot's topic is not
    /// initialized, and no other thread touches the slot until the entry is handed out.
    #[allow(unsafe_code)]
    unsafe fn write_topic(&self, index: usize, topic: Arc<str>) {
        // SAFETY: in bounds and exclusive, per the contract; a field of a place, written
        // through a raw pointer (no reference to the uninitialized report).
        unsafe { (&raw mut (*self.ptr.as_ptr().add(index)).topic).write(topic) }
    }

    /// Slot `index`'s topic.
    ///
    /// # Safety
    ///
    /// The topic was written ([`write_topic`](Self::write_topic)) and is not moved out or
    /// dropped while the reference lives (other fields may be written meanwhile: the
    /// reference covers the topic's bytes only).
    #[allow(unsafe_code)]
    unsafe fn topic(&self, index: usize) -> &Arc<str> {
        // SAFETY: initialized and alive, per the contract; the reference is to the field
        // (a place through the raw pointer), not to the whole report.
        unsafe { &(*self.ptr.as_ptr().add(index)).topic }
    }

    /// Moves slot `index`'s topic out (an entry that will have no report).
    ///
    /// # Safety
    ///
    /// The topic was written, and is not read, moved out or dropped after this.
    #[allow(unsafe_code)]
    unsafe fn take_topic(&self, index: usize) -> Arc<str> {
        // SAFETY: initialized, moved out once, per the contract.
        unsafe { (&raw const (*self.ptr.as_ptr().add(index)).topic).read() }
    }

    /// Writes the rest of slot `index`'s report, which is then whole.
    ///
    /// # Safety
    ///
    /// The topic was written; the caller holds the only right to complete slot `index`, once
    /// (it moved the entry from [`PENDING`] to [`DELIVERED`]), and nobody reads the report
    /// before the batch settled.
    #[allow(unsafe_code)]
    unsafe fn complete(
        &self,
        index: usize,
        partition: Partition,
        offset: i64,
        label: Option<Label>,
    ) {
        // SAFETY: in bounds and exclusive, per the contract; fields written through raw
        // pointers, beside the topic another thread may be reading.
        unsafe {
            let report = self.ptr.as_ptr().add(index);
            (&raw mut (*report).partition).write(partition);
            (&raw mut (*report).offset).write(offset);
            (&raw mut (*report).label).write(label);
        }
    }

    /// Moves slot `index` out.
    ///
    /// # Safety
    ///
    /// The slot was written and is not read again (nor dropped) after this.
    #[allow(unsafe_code)]
    unsafe fn read(&self, index: usize) -> DeliveryReport {
        // SAFETY: written, in bounds, read once, per the contract.
        unsafe { self.ptr.as_ptr().add(index).read() }
    }

    /// The first `len` slots as a `Vec` that owns the allocation, shrunk (in place where the
    /// allocator can) to the layout of `capacity` reports; `None` (nothing taken) when the
    /// allocator cannot.
    ///
    /// # Safety
    ///
    /// `len` ≤ `capacity` ≤ the batch's entries; the first `len` slots were written, and no
    /// other slot is read or dropped after this succeeds; `self` does not free the allocation
    /// after it succeeds (the `Vec` does).
    #[allow(unsafe_code)]
    unsafe fn to_vec(&self, len: usize, capacity: usize) -> Option<Vec<DeliveryReport>> {
        let wanted = Layout::array::<DeliveryReport>(capacity).ok()?;
        if wanted.size() == 0 || self.layout.size() == 0 {
            // Nothing to report (no entries, or none allocated): no slot was written.
            debug_assert_eq!(len, 0, "reports without memory");
            // SAFETY: no slot holds a report (`len` is 0); freed once, not handed to a `Vec`.
            unsafe { self.free() };
            return Some(Vec::new());
        }
        let ptr = if wanted == self.layout {
            self.ptr.as_ptr()
        } else {
            // SAFETY: the pointer was allocated by the global allocator with `self.layout`
            // (a `Vec`'s allocation); `wanted` has the same alignment and a non-zero size no
            // larger than the original (a report fits in a message's bytes, and there are no
            // more reports than messages). realloc keeps the first `wanted.size()` bytes,
            // which hold the written slots.
            unsafe {
                std::alloc::realloc(self.ptr.as_ptr().cast(), self.layout, wanted.size())
                    .cast::<DeliveryReport>()
            }
        };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` is a global-allocator allocation with the layout of `capacity`
        // reports, whose first `len` are initialized, per the contract.
        Some(unsafe { Vec::from_raw_parts(ptr, len, capacity) })
    }

    /// Frees the allocation without dropping any slot.
    ///
    /// # Safety
    ///
    /// Every written slot was moved out or dropped already, and the allocation was not handed
    /// to a `Vec` by [`to_vec`](Self::to_vec).
    #[allow(unsafe_code)]
    unsafe fn free(&self) {
        if self.layout.size() > 0 {
            // SAFETY: allocated by the global allocator with this layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
        }
    }
}

pub(crate) struct BatchState {
    /// The id it is registered under in [`crate::batches`] (0 for an empty batch); set once,
    /// before any entry is handed out.
    id: AtomicU32,
    shared: Arc<Shared>,
    /// Distinct topics of the batch; entries refer to them by index.
    topics: Mutex<Vec<Arc<str>>>,
    /// Topic 0, readable without the lock (most batches have one topic).
    first_topic: OnceLock<Arc<str>>,
    /// Each entry's topic index, allocated (zeroed) when a topic other than the first is used.
    entry_topics: OnceLock<Box<[AtomicU32]>>,
    /// Each entry's requested partition plus one (0: none), allocated (zeroed) when an entry
    /// asks for one.
    requested: OnceLock<Box<[AtomicI32]>>,
    /// [`PENDING`], [`DELIVERED`], [`FAILED`] or [`NOT_SENT`], per entry.
    states: Box<[AtomicU8]>,
    reports: ReportSlots,
    /// Set once the results are taken: slots are read once.
    taken: AtomicBool,
    /// Failed entries (rare), by index.
    failures: Mutex<Vec<(usize, Error)>>,
    /// Labels of entries that have one, by index (most batches have none).
    labels: Mutex<HashMap<usize, Label>>,
    has_labels: AtomicBool,
    /// Its `BatchDelivery` was dropped (see [`abandon`](Self::abandon)).
    abandoned: AtomicBool,
    remaining: AtomicUsize,
    wait: Mutex<BatchWait>,
    ready: Condvar,
}

#[derive(Default)]
struct BatchWait {
    done: bool,
    waker: Option<Waker>,
}

impl BatchState {
    /// A batch of `len` entries, registered (when not empty) until every entry is settled.
    pub(crate) fn new(shared: Arc<Shared>, len: usize) -> Arc<Self> {
        Self::with_slots(shared, len, ReportSlots::new(len))
    }

    /// A batch of `len` entries whose reports go over its messages' allocation, which the
    /// dispatcher moves every message out of, in order, each before handing it to a client
    /// (see [`ReportSlots`]); the batch frees the allocation.
    pub(crate) fn over_messages(
        shared: Arc<Shared>,
        len: usize,
        memory: ReportMemory,
    ) -> Arc<Self> {
        Self::with_slots(shared, len, ReportSlots::reusing(memory))
    }

    fn with_slots(shared: Arc<Shared>, len: usize, reports: ReportSlots) -> Arc<Self> {
        let state = Arc::new(BatchState {
            id: AtomicU32::new(0),
            shared,
            topics: Mutex::new(Vec::new()),
            first_topic: OnceLock::new(),
            entry_topics: OnceLock::new(),
            requested: OnceLock::new(),
            // Written here (1 byte an entry), so the delivery thread's first access to a page
            // is not a read of the zero page followed by a copy-on-write fault.
            states: (0..len).map(|_| AtomicU8::new(PENDING)).collect(),
            reports,
            taken: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            labels: Mutex::new(HashMap::new()),
            has_labels: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            remaining: AtomicUsize::new(len),
            wait: Mutex::new(BatchWait {
                done: len == 0,
                waker: None,
            }),
            ready: Condvar::new(),
        });
        if len > 0 {
            let id = crate::batches::register(&state);
            state.id.store(id, Ordering::Release);
        }
        state
    }

    fn id(&self) -> u32 {
        self.id.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn id_for_tests(&self) -> u32 {
        self.id()
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether some entry is not settled yet.
    pub(crate) fn is_open(&self) -> bool {
        self.unsettled() > 0
    }

    /// How many entries are not settled yet.
    pub(crate) fn unsettled(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    /// Registers `topic` and returns its index (dispatchers call this when the topic changes
    /// from one message to the next, not for every message).
    pub(crate) fn topic_index(&self, topic: &Arc<str>) -> u32 {
        let mut topics = lock(&self.topics);
        if let Some(i) = topics.iter().position(|t| t == topic) {
            return i as u32;
        }
        // For the rare paths that need an entry's topic without owning its slot (a client
        // asking its delivery, a failed delivery); reports take the messages' own references.
        // A copy of the name: a batch that stays in some thread's cache after it finished
        // (see `crate::batches`) pins none of the caller's references.
        let own: Arc<str> = Arc::from(&**topic);
        if topics.is_empty() {
            let _ = self.first_topic.set(own.clone());
        }
        topics.push(own);
        (topics.len() - 1) as u32
    }

    /// Records entry `index` before it is handed to the client: its topic (by index, and its
    /// reference, which moves into the entry's report slot), the partition it asks for, and
    /// its label.
    ///
    /// # Safety
    ///
    /// Called once per entry, before its delivery is made ([`Delivery::entry`]), after its
    /// message was moved out of the batch's allocation; `topic` is the name `topic_index`
    /// refers to.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn prepare_entry(
        &self,
        index: usize,
        topic_index: u32,
        topic: Arc<str>,
        partition: Option<Partition>,
        label: Option<Label>,
    ) {
        if index >= self.len() {
            debug_assert!(false, "entry {index} of {}", self.len());
            return;
        }
        // SAFETY: in bounds (above); written once, before the entry is handed out, per the
        // contract.
        unsafe { self.reports.write_topic(index, topic) };
        let len = self.len();
        // Zero is already there: most batches have one topic and no partitions.
        if topic_index != 0 {
            // SAFETY: all-zero bytes are a valid `AtomicU32`.
            #[allow(unsafe_code)]
            let topics = self.entry_topics.get_or_init(|| unsafe { zeroed(len) });
            if let Some(t) = topics.get(index) {
                t.store(topic_index, Ordering::Relaxed);
            }
        }
        if let Some(p) = partition {
            // SAFETY: all-zero bytes are a valid `AtomicI32`.
            #[allow(unsafe_code)]
            let requested = self.requested.get_or_init(|| unsafe { zeroed(len) });
            if let Some(r) = requested.get(index) {
                r.store(p.wrapping_add(1), Ordering::Relaxed);
            }
        }
        if let Some(label) = label {
            lock(&self.labels).insert(index, label);
            self.has_labels.store(true, Ordering::Release);
        }
    }

    fn topic_of(&self, index: usize) -> Arc<str> {
        let t = self
            .entry_topics
            .get()
            .and_then(|topics| topics.get(index))
            .map_or(0, |t| t.load(Ordering::Relaxed) as usize);
        if t == 0 {
            if let Some(first) = self.first_topic.get() {
                return first.clone();
            }
        }
        lock(&self.topics)
            .get(t)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    fn requested_partition(&self, index: usize) -> Option<Partition> {
        self.requested
            .get()
            .and_then(|r| r.get(index))
            .map(|r| r.load(Ordering::Relaxed))
            .filter(|p| *p != 0)
            .map(|p| p.wrapping_sub(1))
    }

    #[inline]
    pub(crate) fn take_label(&self, index: usize) -> Option<Label> {
        if !self.has_labels.load(Ordering::Acquire) {
            return None;
        }
        self.take_label_slow(index)
    }

    #[cold]
    fn take_label_slow(&self, index: usize) -> Option<Label> {
        lock(&self.labels).remove(&index)
    }

    fn complete(&self, index: usize, outcome: Outcome) {
        match outcome {
            Outcome::Delivered { partition, offset } => self.delivered(index, partition, offset),
            Outcome::Failed { error, message } => self.failed(index, error, message),
        }
    }

    /// Claims entry `index` for its first outcome, with a compare-and-swap: whatever a
    /// [`Client`](crate::client::Client) does with its deliveries, one thread alone writes an
    /// entry's slot, once, and an entry that was never sent (or already settled) is never
    /// claimed.
    fn claim(&self, index: usize, state: u8) -> bool {
        let Some(cell) = self.states.get(index) else {
            return false;
        };
        if cell
            .compare_exchange(PENDING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.shared.room.released();
        true
    }

    /// Marks entries `from..to` as never sent and settles them: a late completion of one (a
    /// client that kept its delivery) can no longer claim it. An entry a client completed
    /// meanwhile was settled by that completion and is not counted again.
    pub(crate) fn not_sent(&self, from: usize, to: usize) {
        let to = to.min(self.len());
        if from >= to {
            return;
        }
        let marked = self.states[from..to]
            .iter()
            .filter(|cell| {
                cell.compare_exchange(PENDING, NOT_SENT, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .count();
        self.settle(marked);
    }

    /// Records that entry `index` was delivered (its report goes in its slot), then settles it.
    fn delivered(&self, index: usize, partition: Partition, offset: i64) {
        if !self.claim(index, DELIVERED) {
            return;
        }
        // SAFETY: the claim above moved entry `index` (in bounds: `claim` checked it) from
        // PENDING to DELIVERED, which happens once; it is settled below, after the write.
        #[allow(unsafe_code)]
        unsafe {
            self.write_report(index, partition, offset)
        };
        self.settle(1);
    }

    /// Records librdkafka's delivery report of entry `index`, without claiming it by
    /// compare-and-swap and without settling it: the caller settles it (see
    /// [`crate::batches::delivered_once`]). Returns whether there is an entry to settle.
    ///
    /// # Safety
    ///
    /// Entry `index` was handed to the client and is reported once, here: librdkafka reports
    /// each message it accepted once, and an accepted entry is never marked never sent (only
    /// refused ones are), so nothing else claims it.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn delivered_once(
        &self,
        index: usize,
        partition: Partition,
        offset: i64,
    ) -> bool {
        let Some(cell) = self.states.get(index) else {
            return false;
        };
        debug_assert_eq!(
            cell.load(Ordering::Relaxed),
            PENDING,
            "entry {index} reported twice"
        );
        // Published by the settle's release, as the report is.
        cell.store(DELIVERED, Ordering::Relaxed);
        self.shared.room.released();
        // SAFETY: this thread alone completes entry `index` (the contract), which is in bounds.
        unsafe { self.write_report(index, partition, offset) };
        true
    }

    /// Completes entry `index`'s report: the topic the dispatcher put in its slot, and the
    /// rest; emits `message.acknowledged`.
    ///
    /// # Safety
    ///
    /// `index` is in bounds and this thread moved it to [`DELIVERED`] (or has the only right
    /// to), and has not settled it yet.
    #[allow(unsafe_code)]
    #[inline]
    unsafe fn write_report(&self, index: usize, partition: Partition, offset: i64) {
        let label = self.take_label(index);
        if self.shared.monitor.has_listeners() {
            // SAFETY: the entry was handed out, so its topic was written; the slot keeps it
            // until the results are taken, after the settle.
            let topic = unsafe { self.reports.topic(index) };
            self.shared
                .acknowledged(topic, partition, offset, label.as_ref());
        }
        // SAFETY: the only write of the rest of the slot (the contract); read after the settle.
        unsafe { self.reports.complete(index, partition, offset, label) };
    }

    /// Takes back entry `index`, which its client refused: marks it never sent, settles it and
    /// returns its topic (which [`prepare_entry`](Self::prepare_entry) gave its slot), for
    /// the message going back to the caller. If a completion claimed the entry meanwhile (a
    /// client that reported a message it refused), that completion settled it and its slot
    /// keeps the topic: a clone comes back.
    ///
    /// # Safety
    ///
    /// Entry `index` was prepared; this is called once for it, by the dispatcher, before the
    /// batch's handle exists (nothing takes or releases the results meanwhile).
    #[allow(unsafe_code)]
    pub(crate) unsafe fn refused(&self, index: usize) -> Arc<str> {
        let Some(cell) = self.states.get(index) else {
            return self.topic_of(index);
        };
        if cell
            .compare_exchange(PENDING, NOT_SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: prepared, so written; NOT_SENT now, so no completion claims the entry
            // and reads its slot, and nothing drops a NOT_SENT slot's topic: moved out once.
            let topic = unsafe { self.reports.take_topic(index) };
            self.settle(1);
            return topic;
        }
        // SAFETY: claimed by a completion, so the slot owns the topic until the results are
        // taken or released, which cannot happen before the batch's handle exists.
        unsafe { self.reports.topic(index).clone() }
    }

    /// Records that entry `index` failed (the error owns its message), then settles it.
    fn failed(&self, index: usize, error: KafkaError, mut message: Box<Message>) {
        if !self.claim(index, FAILED) {
            return;
        }
        message.label = self.take_label(index);
        let failure = self.shared.failed(error, message);
        lock(&self.failures).push((index, failure));
        self.settle(1);
    }

    /// Counts `n` entries as settled (reported, or never dispatched); at zero, wakes waiters
    /// and leaves the registry.
    pub(crate) fn settle(&self, n: usize) {
        if n == 0 {
            return;
        }
        if self.remaining.fetch_sub(n, Ordering::SeqCst) == n {
            let waker = {
                let mut wait = lock(&self.wait);
                wait.done = true;
                wait.waker.take()
            };
            self.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
            crate::batches::unregister(self.id());
            if self.abandoned.load(Ordering::SeqCst) {
                self.release();
            }
        }
    }

    /// Every entry's report when all of the first `len` were delivered (the slots themselves,
    /// as a `Vec`); otherwise every entry's result, in order. Call once every entry settled;
    /// a second call finds the results taken.
    fn take_reports(
        &self,
        len: usize,
    ) -> Result<Vec<DeliveryReport>, Vec<Result<DeliveryReport, Error>>> {
        let len = len.min(self.len());
        if self.is_open() || self.taken.swap(true, Ordering::AcqRel) {
            let why = if self.is_open() {
                "batch delivery (taken before every entry was reported)"
            } else {
                "batch delivery (its results were already taken)"
            };
            return Err((0..len)
                .map(|_| {
                    Err(Error::Core(karafka_core::Error::Closed {
                        what: why.into(),
                    }))
                })
                .collect());
        }
        // An entry past `len` was not sent, unless a client completed it before the
        // dispatcher gave up on it: such a report is dropped here, not handed over.
        for (i, state) in self.states.iter().enumerate().skip(len) {
            // SAFETY: `taken` was just set, so this is the slot's only read; every entry
            // settled, so nobody writes it.
            #[allow(unsafe_code)]
            unsafe {
                self.drop_slot(i, state.load(Ordering::Acquire))
            };
        }
        let states = &self.states[..len];
        if states
            .iter()
            .all(|s| s.load(Ordering::Acquire) == DELIVERED)
        {
            // Entries past `len` were never dispatched: their slots are empty.
            // SAFETY: every entry settled (`is_open` is false: `remaining` reached zero after
            // every write) and the first `len` ≤ entries were written; `taken` was just set, so
            // no slot is read again, and `Drop` frees nothing once the results are taken.
            #[allow(unsafe_code)]
            if let Some(reports) = unsafe { self.reports.to_vec(len, self.len()) } {
                return Ok(reports);
            }
            // The allocator could not shrink the memory: the reports move to a new `Vec`.
            // SAFETY: the first `len` slots were written (above) and are each read once here;
            // the allocation was not handed to a `Vec`, and every written slot is moved out
            // before it is freed.
            #[allow(unsafe_code)]
            unsafe {
                let reports = (0..len).map(|i| self.reports.read(i)).collect();
                self.reports.free();
                return Ok(reports);
            }
        }
        let mut failures: HashMap<usize, Error> = std::mem::take(&mut *lock(&self.failures))
            .into_iter()
            .collect();
        let results = states
            .iter()
            .enumerate()
            .map(|(i, s)| match s.load(Ordering::Acquire) {
                // SAFETY: entry `i` was delivered, so its slot was written; `taken` was just
                // set, so this is its only read (`Drop` then frees without dropping slots).
                #[allow(unsafe_code)]
                DELIVERED => Ok(unsafe { self.reports.read(i) }),
                FAILED => {
                    // SAFETY: as above; a failed entry's slot holds its topic only.
                    #[allow(unsafe_code)]
                    unsafe {
                        self.drop_slot(i, FAILED)
                    };
                    Err(failures.remove(&i).unwrap_or_else(|| {
                        Error::Core(karafka_core::Error::Closed {
                            what: "batch delivery (a failed entry lost its error)".into(),
                        })
                    }))
                }
                _ => Err(Error::Core(karafka_core::Error::Closed {
                    what: "batch delivery (an entry was never reported)".into(),
                })),
            })
            .collect();
        // Entries past `len` were never dispatched: nothing to drop there.
        // SAFETY: every written slot among the first `len` was just moved out; no slot past
        // `len` was written (never dispatched); the allocation was not handed to a `Vec`.
        #[allow(unsafe_code)]
        unsafe {
            self.reports.free()
        };
        Err(results)
    }

    /// Drops what slot `index` holds for an entry that ended in `state`: a whole report
    /// when delivered, its topic when failed, nothing when never sent.
    ///
    /// # Safety
    ///
    /// Every entry settled; the slot is not read or dropped again.
    #[allow(unsafe_code)]
    unsafe fn drop_slot(&self, index: usize, state: u8) {
        match state {
            // SAFETY: a delivered entry's report is whole; read once, per the contract.
            DELIVERED => drop(unsafe { self.reports.read(index) }),
            // SAFETY: a failed entry was handed out, so its slot holds its topic (the
            // module's invariants); moved out once, per the contract.
            FAILED => drop(unsafe { self.reports.take_topic(index) }),
            _ => {}
        }
    }

    fn take_results(&self, len: usize) -> Vec<Result<DeliveryReport, Error>> {
        match self.take_reports(len) {
            Ok(reports) => reports.into_iter().map(Ok).collect(),
            Err(results) => results,
        }
    }
}

impl BatchState {
    /// The batch's handle is gone: once every entry settled, nobody takes the results, so
    /// they are dropped then (not when the last thread that served the batch lets go of it:
    /// a thread keeps the batch it served last).
    pub(crate) fn abandon(&self) {
        // SeqCst with `settle`: one of the two sees the other's write and releases.
        self.abandoned.store(true, Ordering::SeqCst);
        if self.remaining.load(Ordering::SeqCst) == 0 {
            self.release();
        }
    }

    /// Drops the results nobody will take (reports of delivered entries, failures, labels)
    /// and frees the reports' memory; once, after every entry settled.
    fn release(&self) {
        if self.taken.swap(true, Ordering::AcqRel) {
            return;
        }
        for (i, state) in self.states.iter().enumerate() {
            // SAFETY: `taken` was just set by this call, so the slot was never read and is
            // dropped once, here. Every entry settled (callers), so no thread writes slots
            // any more.
            #[allow(unsafe_code)]
            unsafe {
                self.drop_slot(i, state.load(Ordering::Acquire))
            };
        }
        // SAFETY: every written slot was just moved out and dropped; not handed to a `Vec`.
        #[allow(unsafe_code)]
        unsafe {
            self.reports.free()
        };
        drop(std::mem::take(&mut *lock(&self.failures)));
        drop(std::mem::take(&mut *lock(&self.labels)));
    }
}

impl Drop for BatchState {
    fn drop(&mut self) {
        // Nothing else holds the batch: release what was not taken.
        self.release();
    }
}

/// Waits for the delivery reports of a batch (`produce_many_async`, `flush_async`): `.await`
/// it, or block with [`wait`](BatchDelivery::wait) / [`wait_all`](BatchDelivery::wait_all).
#[must_use = "a batch delivery reports whether the messages arrived; drop it only on purpose"]
pub struct BatchDelivery {
    state: Arc<BatchState>,
    len: usize,
}

impl BatchDelivery {
    pub(crate) fn new(state: Arc<BatchState>, len: usize) -> Self {
        BatchDelivery { state, len }
    }

    /// How many messages this covers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it covers no message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every report is in.
    pub fn is_done(&self) -> bool {
        lock(&self.state.wait).done
    }

    /// Blocks until every report is in, then returns each message's result in order; fails
    /// only with [`Error::WaitTimeout`](crate::Error::WaitTimeout).
    pub fn wait_all(self, timeout: Duration) -> Result<Vec<Result<DeliveryReport, Error>>, Error> {
        self.block(timeout)?;
        Ok(self.state.take_results(self.len))
    }

    /// Blocks until every report is in; `Ok` with every report when all were delivered,
    /// otherwise [`Error::DeliveriesFailed`](crate::Error::DeliveriesFailed) listing each
    /// result (failed ones own their message).
    pub fn wait(self, timeout: Duration) -> Result<Vec<DeliveryReport>, Error> {
        self.block(timeout)?;
        reports_or_error(self.state.take_reports(self.len))
    }

    fn block(&self, timeout: Duration) -> Result<(), Error> {
        let wait = lock(&self.state.wait);
        let (wait, _) = self
            .state
            .ready
            .wait_timeout_while(wait, timeout, |w| !w.done)
            .unwrap_or_else(|p| p.into_inner());
        if wait.done {
            Ok(())
        } else {
            Err(Error::WaitTimeout { timeout })
        }
    }
}

fn reports_or_error(
    outcome: Result<Vec<DeliveryReport>, Vec<Result<DeliveryReport, Error>>>,
) -> Result<Vec<DeliveryReport>, Error> {
    outcome.map_err(|results| Error::DeliveriesFailed {
        failed: results.iter().filter(|r| r.is_err()).count(),
        results,
    })
}

impl Future for BatchDelivery {
    type Output = Result<Vec<DeliveryReport>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut wait = lock(&self.state.wait);
            if !wait.done {
                wait.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Poll::Ready(reports_or_error(self.state.take_reports(self.len)))
    }
}

impl Drop for BatchDelivery {
    fn drop(&mut self) {
        self.state.abandon();
    }
}

impl fmt::Debug for BatchDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchDelivery")
            .field("messages", &self.len)
            .field("done", &self.is_done())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            producer_id: "p".into(),
            monitor: Monitor::new(),
            room: QueueRoom::default(),
            undelivered: Mutex::new(None),
        })
    }

    /// Prepares entry `index` as the dispatcher does (the topic named by `topic_index`).
    fn prepare(
        state: &BatchState,
        index: usize,
        topic: &Arc<str>,
        partition: Option<Partition>,
        label: Option<Label>,
    ) {
        let topic_index = state.topic_index(topic);
        // SAFETY: each test prepares an entry once, before its delivery.
        #[allow(unsafe_code)]
        unsafe {
            state.prepare_entry(index, topic_index, topic.clone(), partition, label)
        };
    }

    fn delivery_of(state: &Arc<BatchState>, index: usize, partition: Partition, offset: i64) {
        let opaque = Delivery::entry(state, index).into_opaque();
        // SAFETY: the opaque comes from `into_opaque` just above and is turned back once.
        #[allow(unsafe_code)]
        unsafe {
            Delivery::delivered_from_opaque(opaque, partition, offset)
        };
    }

    #[test]
    fn a_batch_keeps_topic_requested_partition_label_and_outcome_of_every_entry() {
        let state = BatchState::new(shared(), 4);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        prepare(&state, 0, &a, None, None);
        prepare(&state, 1, &b, Some(0), Some(Label::from("one")));
        prepare(&state, 2, &a, Some(i32::MAX), None);
        prepare(&state, 3, &b, Some(7), None);
        assert_eq!(state.requested_partition(1), Some(0));
        assert_eq!(state.requested_partition(2), Some(i32::MAX));
        assert_eq!(state.requested_partition(0), None);
        assert_eq!(&*state.topic_of(3), "b");

        delivery_of(&state, 0, 0, 41);
        delivery_of(&state, 1, 0, 42);
        delivery_of(&state, 2, i32::MAX, 43);
        assert!(state.is_open(), "one entry is still pending");
        Delivery::entry(&state, 3).complete(Outcome::Failed {
            error: KafkaError::other("deliver message", "refused"),
            message: Box::new(Message::new(state.topic_of(3), "x")),
        });
        assert!(!state.is_open());
        // A second report for a settled entry changes nothing.
        state.delivered(0, 5, 99);

        let results = state.take_reports(4).expect_err("entry 3 failed");
        let ok: Vec<_> = results[..3]
            .iter()
            .map(|r| {
                let r = r.as_ref().expect("delivered");
                (r.topic.to_string(), r.partition, r.offset, r.label.clone())
            })
            .collect();
        assert_eq!(
            ok.iter()
                .map(|(t, p, o, _)| (t.as_str(), *p, *o))
                .collect::<Vec<_>>(),
            [("a", 0, 41), ("b", 0, 42), ("a", i32::MAX, 43)]
        );
        assert_eq!(ok[1].3.as_ref().and_then(|l| l.as_str()), Some("one"));
        match &results[3] {
            Err(Error::Delivery { message, .. }) => assert_eq!(&*message.topic, "b"),
            other => panic!("entry 3: {other:?}"),
        }
    }

    #[test]
    fn an_all_delivered_batch_gives_every_report_in_order() {
        let state = BatchState::new(shared(), 3);
        let topic: Arc<str> = "t".into();
        for index in 0..3 {
            prepare(&state, index, &topic, None, None);
        }
        for index in (0..3).rev() {
            delivery_of(&state, index, index as i32, 10 + index as i64);
        }
        let reports = state.take_reports(3).expect("all delivered");
        let got: Vec<_> = reports.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, [(0, 10), (1, 11), (2, 12)]);
    }

    /// A label that counts its drops.
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn results_are_taken_once_and_reports_nobody_took_are_dropped() {
        let topic: Arc<str> = "t".into();
        let drops = Arc::new(AtomicUsize::new(0));
        let label = || Some(Label::new(Counted(drops.clone())));

        let state = BatchState::new(shared(), 2);
        for index in 0..2 {
            prepare(&state, index, &topic, None, label());
        }
        delivery_of(&state, 0, 0, 1);
        delivery_of(&state, 1, 0, 2);
        let reports = state.take_reports(2).expect("delivered");
        assert_eq!(reports.len(), 2);
        let again = state.take_reports(2).expect_err("already taken");
        assert!(again.iter().all(|r| r.is_err()));
        drop(state);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            0,
            "the caller owns the reports"
        );
        drop(reports);
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // Delivered but never taken: dropping the batch drops its reports.
        let untaken = BatchState::new(shared(), 3);
        for index in 0..3 {
            prepare(&untaken, index, &topic, None, label());
        }
        delivery_of(&untaken, 0, 0, 1);
        delivery_of(&untaken, 2, 0, 3);
        // Entry 1 was refused: its label and topic come back to the dispatcher.
        drop(untaken.take_label(1));
        // SAFETY: prepared, refused once, before any handle exists.
        #[allow(unsafe_code)]
        drop(unsafe { untaken.refused(1) });
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        drop(untaken);
        assert_eq!(drops.load(Ordering::SeqCst), 5);

        // A partly dispatched batch: the first entries' reports, from the same slots.
        let partial = BatchState::new(shared(), 3);
        prepare(&partial, 0, &topic, None, label());
        partial.settle(2);
        delivery_of(&partial, 0, 4, 7);
        let reports = partial
            .take_reports(1)
            .expect("the dispatched one was delivered");
        assert_eq!((reports[0].partition, reports[0].offset), (4, 7));
        drop(partial);
        drop(reports);
        assert_eq!(drops.load(Ordering::SeqCst), 6);
        assert_eq!(
            Arc::strong_count(&topic),
            1,
            "the batches keep no reference"
        );
    }

    #[test]
    fn an_entry_completed_before_the_dispatcher_gives_up_on_it_settles_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let state = BatchState::new(shared(), 3);
        let topic: Arc<str> = "t".into();
        prepare(
            &state,
            0,
            &topic,
            None,
            Some(Label::new(Counted(drops.clone()))),
        );
        prepare(
            &state,
            1,
            &topic,
            None,
            Some(Label::new(Counted(drops.clone()))),
        );
        delivery_of(&state, 0, 0, 1);
        // A client completed entry 1 although the dispatcher takes it as refused.
        Delivery::entry(&state, 1).complete(Outcome::Delivered {
            partition: 0,
            offset: 2,
        });
        // SAFETY: prepared, refused once, before any handle exists.
        #[allow(unsafe_code)]
        let back = unsafe { state.refused(1) };
        assert_eq!(&*back, "t", "the refused message gets its topic back");
        state.not_sent(2, 3);
        assert!(!state.is_open(), "every entry settled exactly once");
        let reports = state.take_reports(1).expect("entry 0 was delivered");
        assert_eq!(reports.len(), 1);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "entry 1's report was dropped"
        );
        drop(reports);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // A late completion of a never-sent entry changes nothing.
        state.delivered(2, 0, 3);
        assert!(!state.is_open());
    }
}
