//! Delivery reports, the handles that wait for them, and the completion sink clients call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// Its offset; `-1` when the broker does not return one (`acks=0`).
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
    fn released(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            let mut generation = lock(&self.lock);
            *generation += 1;
            self.freed.notify_all();
        }
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
    pending: Option<Box<Pending>>,
}

pub(crate) struct Pending {
    topic: Arc<str>,
    partition: Option<Partition>,
    label: Option<Label>,
    target: Target,
}

enum Target {
    Single(Arc<Slot>),
    Batch {
        state: Arc<BatchState>,
        index: usize,
    },
}

impl Delivery {
    pub(crate) fn single(
        topic: Arc<str>,
        partition: Option<Partition>,
        label: Option<Label>,
        slot: Arc<Slot>,
    ) -> Self {
        Delivery {
            pending: Some(Box::new(Pending {
                topic,
                partition,
                label,
                target: Target::Single(slot),
            })),
        }
    }

    pub(crate) fn batch(
        topic: Arc<str>,
        partition: Option<Partition>,
        label: Option<Label>,
        state: Arc<BatchState>,
        index: usize,
    ) -> Self {
        Delivery {
            pending: Some(Box::new(Pending {
                topic,
                partition,
                label,
                target: Target::Batch { state, index },
            })),
        }
    }

    /// The topic of the message this delivery belongs to.
    pub fn topic(&self) -> &str {
        self.pending.as_ref().map_or("", |p| &p.topic)
    }

    /// Reports the message's fate. Emits `message.acknowledged` or `error.occurred`
    /// (`producer.delivery.error`) and wakes whoever waits for it.
    pub fn complete(mut self, outcome: Outcome) {
        if let Some(pending) = self.pending.take() {
            (*pending).complete(outcome);
        }
    }

    /// Disarms a delivery whose message was not taken, giving its label back (nothing is
    /// reported: the caller reports the failure itself).
    pub(crate) fn cancel(mut self) -> Option<Label> {
        self.pending.take().and_then(|p| p.label)
    }

    pub(crate) fn into_box(mut self) -> Box<Pending> {
        self.pending
            .take()
            .expect("a delivery is completed or converted once")
    }

    pub(crate) fn from_box(pending: Box<Pending>) -> Self {
        Delivery {
            pending: Some(pending),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            let topic = pending.topic.clone();
            let message = Box::new(Message::new(topic, bytes::Bytes::new()));
            pending.complete(Outcome::Failed {
                error: KafkaError::other(
                    "deliver message",
                    "the client dropped the message without reporting its delivery; its payload is unknown",
                ),
                message,
            });
        }
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
    pub(crate) fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub(crate) fn partition(&self) -> Option<Partition> {
        self.partition
    }

    pub(crate) fn complete(self, outcome: Outcome) {
        let Pending {
            topic,
            label,
            target,
            ..
        } = self;
        let shared = match &target {
            Target::Single(slot) => &slot.shared,
            Target::Batch { state, .. } => &state.shared,
        };
        shared.room.released();
        let result = match outcome {
            Outcome::Delivered { partition, offset } => {
                shared.monitor.emit_with(|| Event::MessageAcknowledged {
                    producer_id: shared.producer_id.clone(),
                    topic: topic.clone(),
                    partition,
                    offset,
                    label: label.clone(),
                });
                Ok(DeliveryReport {
                    topic,
                    partition,
                    offset,
                    label,
                })
            }
            Outcome::Failed { error, mut message } => {
                message.label = label;
                if let Some(collected) = lock(&shared.undelivered).as_mut() {
                    collected.push((*message).clone());
                }
                let partition = message.partition;
                shared.monitor.emit_with(|| {
                    Event::ErrorOccurred(
                        ErrorOccurred::new(ErrorKind::ProducerDelivery, error.clone())
                            .source_id(shared.producer_id.clone())
                            .at(topic.clone(), partition, None),
                    )
                });
                Err(Error::Delivery {
                    source: error,
                    message,
                })
            }
        };
        match target {
            Target::Single(slot) => slot.fill(result),
            Target::Batch { state, index } => state.fill(index, result),
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

type ResultSlot = Mutex<Option<Result<DeliveryReport, Error>>>;

pub(crate) struct BatchState {
    shared: Arc<Shared>,
    results: Box<[ResultSlot]>,
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
    pub(crate) fn new(shared: Arc<Shared>, len: usize) -> Arc<Self> {
        Arc::new(BatchState {
            shared,
            results: (0..len).map(|_| Mutex::new(None)).collect(),
            remaining: AtomicUsize::new(len),
            wait: Mutex::new(BatchWait::default()),
            ready: Condvar::new(),
        })
    }

    fn fill(&self, index: usize, result: Result<DeliveryReport, Error>) {
        if let Some(slot) = self.results.get(index) {
            let mut slot = lock(slot);
            if slot.is_none() {
                *slot = Some(result);
            } else {
                return;
            }
        }
        self.settle(1);
    }

    /// Counts `n` entries as settled (filled, or never dispatched); wakes waiters at zero.
    pub(crate) fn settle(&self, n: usize) {
        if n == 0 {
            if self.remaining.load(Ordering::Acquire) == 0 {
                self.finish();
            }
            return;
        }
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.finish();
        }
    }

    fn finish(&self) {
        let waker = {
            let mut wait = lock(&self.wait);
            wait.done = true;
            wait.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn take_results(&self, len: usize) -> Vec<Result<DeliveryReport, Error>> {
        self.results[..len]
            .iter()
            .map(|slot| {
                lock(slot).take().unwrap_or_else(|| {
                    Err(Error::Core(karafka_core::Error::Closed {
                        what: "batch delivery (its results were already taken)".into(),
                    }))
                })
            })
            .collect()
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
        let wait = lock(&self.state.wait);
        let (wait, timed_out) = self
            .state
            .ready
            .wait_timeout_while(wait, timeout, |w| !w.done)
            .unwrap_or_else(|p| p.into_inner());
        if timed_out.timed_out() && !wait.done {
            return Err(Error::WaitTimeout { timeout });
        }
        drop(wait);
        Ok(self.state.take_results(self.len))
    }

    /// Blocks until every report is in; `Ok` with every report when all were delivered,
    /// otherwise [`Error::DeliveriesFailed`](crate::Error::DeliveriesFailed) listing each
    /// result (failed ones own their message).
    pub fn wait(self, timeout: Duration) -> Result<Vec<DeliveryReport>, Error> {
        collect_reports(self.wait_all(timeout)?)
    }
}

pub(crate) fn collect_reports(
    results: Vec<Result<DeliveryReport, Error>>,
) -> Result<Vec<DeliveryReport>, Error> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed == 0 {
        Ok(results.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(Error::DeliveriesFailed { failed, results })
    }
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
        Poll::Ready(collect_reports(self.state.take_results(self.len)))
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
