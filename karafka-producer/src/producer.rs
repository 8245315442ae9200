//! The producer handle, dispatch, the buffer and the lifecycle.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use karafka_core::instrumentation::{
    Dispatch, ErrorKind, ErrorOccurred, Event, Monitor, ProducerStage,
};
use karafka_core::{ConfigError, Violations};

use crate::client::{Client, ClientFactory, ClientSetup, Rejected, Rejection};
use crate::config::{ProducerBuilder, ProducerConfig};
use crate::delivery::{
    BatchDelivery, BatchState, Delivery, DeliveryHandle, DeliveryReport, QueueRoom, ReportMemory,
    Shared, Slot, lock,
};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::middleware::Chain;
use crate::transaction::TxGate;
use crate::variant::{TopicConfig, Variant, VariantConfig};

/// Where a producer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Built; no client yet (it is created on first use).
    Configured,
    /// The librdkafka client exists.
    Connected,
    /// `close()` is running.
    Closing,
    /// Closed: every dispatch fails with [`Error::Closed`].
    Closed,
}

const CONFIGURED: u8 = 0;
const CONNECTED: u8 = 1;
const CLOSING: u8 = 2;
const CLOSED: u8 = 3;

/// The client, boxed so it can sit in an `ArcSwapOption`.
pub(crate) struct ClientBox(pub(crate) Box<dyn Client>);

pub(crate) struct Inner {
    pub(crate) config: ProducerConfig,
    pub(crate) shared: Arc<Shared>,
    middleware: Chain,
    factory: Arc<dyn ClientFactory>,
    client: ArcSwapOption<ClientBox>,
    connect: Mutex<()>,
    status: AtomicU8,
    buffer: Mutex<Vec<Message>>,
    pub(crate) tx: TxGate,
}

/// The producer: a cheap `Clone + Send + Sync` handle over **one** librdkafka client, shared by
/// every topic and thread that uses it.
///
/// One client opens one TCP connection per broker; a producer per topic would multiply them
/// (10 topics × 5 brokers = 50 connections per process). Share one producer, and use
/// [`variant`](Producer::variant)s where topics need different settings.
///
/// Delivery reports are served by one named thread per client (`karafka.producer#<id>`),
/// blocked in librdkafka until a report arrives; callers never poll.
///
/// Dispatch:
/// - [`produce_sync`](Self::produce_sync): waits for the delivery report (blocks the thread;
///   in async code `.await` [`produce_async`](Self::produce_async) instead);
/// - [`produce_async`](Self::produce_async): returns a [`DeliveryHandle`] to `.await` or
///   [`wait`](DeliveryHandle::wait) on;
/// - [`produce_many_sync`](Self::produce_many_sync) /
///   [`produce_many_async`](Self::produce_many_async): every message is validated before any
///   is sent;
/// - [`buffer`](Self::buffer) / [`buffer_many`](Self::buffer_many) then
///   [`flush_sync`](Self::flush_sync) / [`flush_async`](Self::flush_async).
///
/// Every error that leaves a message unsent owns it: [`Error::into_message`].
///
/// When librdkafka's queue is full, dispatch waits for room (up to `wait_timeout_on_queue_full`,
/// 10 s by default) on the calling thread, then fails with [`Error::QueueFull`].
///
/// On a transactional producer (`transactional.id` set) each dispatch outside
/// [`transaction`](Self::transaction) runs in its own transaction.
///
/// ```no_run
/// use karafka_producer::{Message, Producer};
///
/// let producer = Producer::builder()
///     .kafka("bootstrap.servers", "127.0.0.1:9092")
///     .build()?;
/// let report = producer.produce_sync(Message::new("events", "hello").key("user-1"))?;
/// println!("stored at {}/{}@{}", report.topic, report.partition, report.offset);
/// producer.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Producer {
    pub(crate) inner: Arc<Inner>,
}

impl Producer {
    /// A builder with every default.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    pub(crate) fn from_parts(
        config: ProducerConfig,
        monitor: Monitor,
        middleware: Chain,
        factory: Arc<dyn ClientFactory>,
    ) -> Self {
        let shared = Arc::new(Shared {
            producer_id: config.id.clone(),
            monitor,
            room: QueueRoom::default(),
            undelivered: Mutex::new(None),
        });
        Producer {
            inner: Arc::new(Inner {
                config,
                shared,
                middleware,
                factory,
                client: ArcSwapOption::empty(),
                connect: Mutex::new(()),
                status: AtomicU8::new(CONFIGURED),
                buffer: Mutex::new(Vec::new()),
                tx: TxGate::default(),
            }),
        }
    }

    /// The producer's id.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// The validated settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// The monitor this producer reports to (subscribe listeners here).
    pub fn monitor(&self) -> &Monitor {
        &self.inner.shared.monitor
    }

    /// Where the producer is in its life.
    pub fn status(&self) -> Status {
        match self.inner.status.load(Ordering::Acquire) {
            CONFIGURED => Status::Configured,
            CONNECTED => Status::Connected,
            CLOSING => Status::Closing,
            _ => Status::Closed,
        }
    }

    /// Messages handed to librdkafka whose delivery is not reported yet (0 before the first
    /// dispatch).
    pub fn in_flight(&self) -> usize {
        self.inner
            .client
            .load()
            .as_ref()
            .map_or(0, |c| c.0.in_flight())
    }

    /// Creates the client now instead of on the first dispatch (and, for transactional
    /// producers, registers the transactional id), so configuration problems surface early.
    pub fn connect(&self) -> Result<()> {
        self.inner.client().map(|_| ())
    }

    /// A variant: this producer's client with other topic settings and wait limit (see
    /// [`crate::variant`]).
    pub fn variant(&self, config: VariantConfig) -> std::result::Result<Variant, ConfigError> {
        let (topic_config, max_wait) = config.validate(
            self.inner.config.idempotent,
            self.inner.config.max_wait_timeout,
        )?;
        Ok(Variant::new(self.clone(), topic_config, max_wait))
    }

    pub(crate) fn dispatcher(&self) -> Dispatcher<'_> {
        Dispatcher {
            producer: self,
            topic_config: None,
            max_wait_timeout: self.inner.config.max_wait_timeout,
        }
    }

    /// Sends `message` and waits (up to `max_wait_timeout`) for its delivery report.
    pub fn produce_sync(&self, message: Message) -> Result<DeliveryReport> {
        self.dispatcher().produce_sync(message)
    }

    /// Sends `message`; the returned handle resolves to its delivery report.
    pub fn produce_async(&self, message: Message) -> Result<DeliveryHandle> {
        self.dispatcher().produce_async(message)
    }

    /// Validates every message, then sends them all and waits for every report (up to
    /// `max_wait_timeout`). Delivery failures come back as [`Error::DeliveriesFailed`], each
    /// failed message owned by its error.
    pub fn produce_many_sync(&self, messages: Vec<Message>) -> Result<Vec<DeliveryReport>> {
        self.dispatcher().produce_many_sync(messages)
    }

    /// Validates every message, then sends them all; the returned [`BatchDelivery`] resolves to
    /// their reports. When one cannot be handed over, the error
    /// ([`Error::PartiallyDispatched`]) says how many were, and owns the rest.
    pub fn produce_many_async(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        self.dispatcher().produce_many_async(messages)
    }

    /// Adds a message to the producer's buffer (middleware and validation run now; nothing is
    /// sent until a flush).
    pub fn buffer(&self, message: Message) -> Result<()> {
        self.buffer_many(vec![message]).map_err(|e| match e {
            Error::PartiallyDispatched { failure, .. } => *failure,
            other => other,
        })
    }

    /// Adds messages to the buffer; all are validated first, and none is added when one is
    /// invalid (the error owns them all).
    pub fn buffer_many(&self, messages: Vec<Message>) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_open(None)?;
        let count = messages.len();
        let prepared = inner.prepare_all(messages)?;
        let buffered = {
            let mut buffer = lock(&inner.buffer);
            if buffer.is_empty() {
                // Taken as is: no copy of a large batch into the buffer.
                *buffer = prepared;
            } else {
                buffer.extend(prepared);
            }
            buffer.len()
        };
        inner.shared.monitor.emit_with(|| Event::MessagesBuffered {
            producer_id: inner.shared.producer_id.clone(),
            messages: count,
            buffered,
        });
        Ok(())
    }

    /// Messages waiting in the buffer.
    pub fn buffered(&self) -> usize {
        lock(&self.inner.buffer).len()
    }

    /// Sends the buffer and waits for every report. Messages that fail (not taken, or not
    /// delivered) stay in the buffer, and the error says why.
    pub fn flush_sync(&self) -> Result<Vec<DeliveryReport>> {
        let started = Instant::now();
        let messages = std::mem::take(&mut *lock(&self.inner.buffer));
        let count = messages.len();
        let result = self
            .dispatcher()
            .send_prepared_many(messages)
            .and_then(|delivery| delivery.wait_all(self.inner.config.max_wait_timeout));
        let result = match result {
            Ok(results) => {
                let mut failed = Vec::new();
                let mut reports = Vec::with_capacity(results.len());
                let mut errors = 0;
                let mut all = Vec::with_capacity(results.len());
                for r in results {
                    match r {
                        Ok(report) => {
                            reports.push(report.clone());
                            all.push(Ok(report));
                        }
                        Err(e) => {
                            errors += 1;
                            if let Some(m) = e.message() {
                                failed.push(m.clone());
                            }
                            all.push(Err(e));
                        }
                    }
                }
                self.inner.requeue(failed);
                if errors == 0 {
                    Ok(reports)
                } else {
                    Err(Error::DeliveriesFailed {
                        failed: errors,
                        results: all,
                    })
                }
            }
            Err(e) => Err(self.inner.keep_unsent(e)),
        };
        self.inner.emit_flushed(true, count, started, &result);
        result
    }

    /// Sends the buffer without waiting. Messages librdkafka does not take stay in the buffer;
    /// delivery failures come back through the returned [`BatchDelivery`] (with the messages).
    pub fn flush_async(&self) -> Result<BatchDelivery> {
        let started = Instant::now();
        let messages = std::mem::take(&mut *lock(&self.inner.buffer));
        let count = messages.len();
        let result = self
            .dispatcher()
            .send_prepared_many(messages)
            .map_err(|e| self.inner.keep_unsent(e));
        self.inner.emit_flushed(false, count, started, &result);
        result
    }

    /// Closes: flushes the buffer, waits up to `max_wait_timeout` for every delivery, purges
    /// what is left and stops the client. Returns [`Error::Undelivered`] with every message that
    /// could not be delivered. Idempotent; later dispatch fails with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.close_with_timeout(self.inner.config.max_wait_timeout)
    }

    /// [`close`](Self::close) with its own wait limit.
    pub fn close_with_timeout(&self, timeout: Duration) -> Result<()> {
        self.inner.close(timeout)
    }

    /// A start time for a dispatch event, taken only when someone listens.
    fn clock(&self) -> Option<Instant> {
        self.inner.shared.monitor.has_listeners().then(Instant::now)
    }

    fn emit_single(&self, dispatch: Dispatch, topic: &Arc<str>, started: Option<Instant>) {
        let shared = &self.inner.shared;
        shared.monitor.emit_with(|| Event::MessagesProduced {
            producer_id: shared.producer_id.clone(),
            dispatch,
            topic: Some(topic.clone()),
            messages: 1,
            duration: started.map_or(Duration::ZERO, |s| s.elapsed()),
        });
    }

    fn emit_many(&self, dispatch: Dispatch, messages: usize, started: Option<Instant>) {
        let shared = &self.inner.shared;
        shared.monitor.emit_with(|| Event::MessagesProduced {
            producer_id: shared.producer_id.clone(),
            dispatch,
            topic: None,
            messages,
            duration: started.map_or(Duration::ZERO, |s| s.elapsed()),
        });
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("id", &self.id())
            .field("status", &self.status())
            .field("kafka", &self.inner.config.kafka)
            .finish()
    }
}

/// How one dispatch call sends: with whose topic settings, waiting how long, and whether it
/// runs inside the caller's transaction.
pub(crate) struct Dispatcher<'a> {
    pub(crate) producer: &'a Producer,
    pub(crate) topic_config: Option<&'a Arc<TopicConfig>>,
    pub(crate) max_wait_timeout: Duration,
}

impl Dispatcher<'_> {
    fn inner(&self) -> &Inner {
        &self.producer.inner
    }

    /// On a transactional producer outside a transaction of this producer, runs `send` in a
    /// transaction of its own (keeping a copy of the messages to give back if the commit
    /// fails); otherwise runs it as is.
    fn maybe_wrapped<I, T>(
        &self,
        input: I,
        keep: impl FnOnce(&I) -> Vec<Message>,
        send: impl FnOnce(I) -> Result<T>,
    ) -> Result<T> {
        let inner = self.inner();
        if !inner.config.transactional || inner.tx.is_current(inner) {
            return send(input);
        }
        let copies = keep(&input);
        self.producer
            .transaction(|_tx| send(input))
            .map_err(|e| e.into_error_with(copies))
    }

    pub(crate) fn produce_sync(&self, message: Message) -> Result<DeliveryReport> {
        let started = self.producer.clock();
        let topic = message.topic.clone();
        let wait = self.max_wait_timeout;
        let report = self.maybe_wrapped(
            message,
            |m| vec![m.clone()],
            |m| self.send_one(m)?.wait(wait),
        )?;
        self.producer
            .emit_single(Dispatch::SingleSync, &topic, started);
        Ok(report)
    }

    pub(crate) fn produce_async(&self, message: Message) -> Result<DeliveryHandle> {
        let started = self.producer.clock();
        let topic = message.topic.clone();
        let handle = self.maybe_wrapped(message, |m| vec![m.clone()], |m| self.send_one(m))?;
        self.producer
            .emit_single(Dispatch::SingleAsync, &topic, started);
        Ok(handle)
    }

    pub(crate) fn produce_many_sync(&self, messages: Vec<Message>) -> Result<Vec<DeliveryReport>> {
        let started = self.producer.clock();
        let count = messages.len();
        let wait = self.max_wait_timeout;
        let reports =
            self.maybe_wrapped(messages, |m| m.clone(), |m| self.send_many(m)?.wait(wait))?;
        self.producer.emit_many(Dispatch::ManySync, count, started);
        Ok(reports)
    }

    pub(crate) fn produce_many_async(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        let started = self.producer.clock();
        let count = messages.len();
        let delivery = self.maybe_wrapped(messages, |m| m.clone(), |m| self.send_many(m))?;
        self.producer.emit_many(Dispatch::ManyAsync, count, started);
        Ok(delivery)
    }

    fn send_one(&self, message: Message) -> Result<DeliveryHandle> {
        let inner = self.inner();
        inner.ensure_open(Some(&message))?;
        let message = inner.prepare(message)?;
        let client = inner.client_for(message)?;
        let (client, message) = client;
        self.enqueue_single(&client, message)
    }

    fn send_many(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        let inner = self.inner();
        if let Err(closed) = inner.ensure_open(None) {
            let mut rest = messages.into_iter();
            let first = rest.next();
            return Err(inner.batch_failure(with_message(closed, first), 0, rest.collect()));
        }
        let prepared = inner.prepare_all(messages)?;
        self.send_prepared_many(prepared)
    }

    /// Sends messages that already went through middleware and validation (the buffer's).
    pub(crate) fn send_prepared_many(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        let inner = self.inner();
        let count = messages.len();
        if count == 0 {
            let state = BatchState::new(inner.shared.clone(), 0);
            state.settle(0);
            return Ok(BatchDelivery::new(state, 0));
        }
        let client = match inner.client() {
            Ok(client) => client,
            Err(e) => {
                let state = BatchState::new(inner.shared.clone(), 0);
                state.settle(0);
                let mut rest = messages.into_iter();
                let first = rest.next();
                return Err(Error::PartiallyDispatched {
                    dispatched: 0,
                    delivery: Box::new(BatchDelivery::new(state, 0)),
                    failure: Box::new(with_message(e, first)),
                    not_sent: rest.collect(),
                });
            }
        };
        // The batch's reports go over its messages' allocation (no fresh pages for them), and
        // each message is moved out just before it is handed over and dropped right after,
        // while it is in cache (no second walk over the batch at the end).
        let (memory, reader) = ReportMemory::of(messages);
        let state = BatchState::over_messages(inner.shared.clone(), count, memory);
        // If a client panics, what was not handed over is dropped and settled on the way out.
        let mut unwinding = Unwinding {
            state: &state,
            reader,
            next: 0,
            count,
            current_unsent: false,
            armed: true,
        };
        let mut last_topic: Option<(Arc<str>, u32)> = None;
        for index in 0..count {
            // SAFETY: the allocation lives until every entry settled, which cannot happen
            // before the messages not taken yet are taken (below, or by `unwinding`); each
            // index is taken once, in order, before its entry is handed to the client.
            #[allow(unsafe_code)]
            let mut message = unsafe { reader.take(index) };
            unwinding.next = index + 1;
            unwinding.current_unsent = true;
            let topic_index = match &last_topic {
                Some((t, i)) if Arc::ptr_eq(t, &message.topic) || *t == message.topic => *i,
                _ => {
                    let i = state.topic_index(&message.topic);
                    last_topic = Some((message.topic.clone(), i));
                    i
                }
            };
            if let Err(refused) = self.resolve_partition(&client, &mut message) {
                unwinding.armed = false;
                return Err(self.give_up(&state, reader, index, refused, message, false));
            }
            let label = message.label.take();
            let partition = message.partition;
            // The entry's report slot takes the message's topic reference; the message keeps
            // a bitwise copy for the client to read, which is never dropped.
            // SAFETY: the copy is never dropped (`LentTopic`), so the reference is owned once.
            #[allow(unsafe_code)]
            let topic = unsafe { std::ptr::read(&message.topic) };
            let message = LentTopic(std::mem::ManuallyDrop::new(message));
            // SAFETY: once for this entry, after its message was taken, before its delivery.
            #[allow(unsafe_code)]
            unsafe {
                state.prepare_entry(index, topic_index, topic, partition, label)
            };
            // From here the entry's delivery settles it, even on a panic.
            unwinding.current_unsent = false;
            if let Err(refused) = self.enqueue(&client, &message, Delivery::entry(&state, index)) {
                // SAFETY: prepared above; refused once, here, before the handle exists.
                #[allow(unsafe_code)]
                let topic = unsafe { state.refused(index) };
                let message = message.give_back(topic);
                unwinding.armed = false;
                return Err(self.give_up(&state, reader, index, refused, message, true));
            }
        }
        unwinding.armed = false;
        drop(unwinding);
        Ok(BatchDelivery::new(state, count))
    }

    /// Ends a batch's dispatch at entry `index`, which was refused: the messages after it go
    /// back to the caller with it, their entries are marked never sent (entry `index` too
    /// unless `settled`: the caller took it back already).
    fn give_up(
        &self,
        state: &Arc<BatchState>,
        reader: crate::delivery::MessageReader,
        index: usize,
        refused: Refused,
        mut message: Message,
        settled: bool,
    ) -> Error {
        let count = state.len();
        // The rest go back to the caller, moved out before the batch may settle.
        // SAFETY: the indexes after `index` were never taken, nor sent (the dispatch loop
        // takes them in order and stops here).
        #[allow(unsafe_code)]
        let not_sent = (index + 1..count)
            .map(|i| unsafe { reader.take(i) })
            .collect();
        if message.label.is_none() {
            message.label = state.take_label(index);
        }
        state.not_sent(if settled { index + 1 } else { index }, count);
        Error::PartiallyDispatched {
            dispatched: index,
            delivery: Box::new(BatchDelivery::new(state.clone(), index)),
            failure: Box::new(refused.into_error(self.inner(), message)),
            not_sent,
        }
    }

    fn enqueue_single(
        &self,
        client: &Arc<ClientBox>,
        mut message: Message,
    ) -> Result<DeliveryHandle> {
        let slot = Slot::new(self.inner().shared.clone());
        let topic = message.topic.clone();
        let sent = self.resolve_partition(client, &mut message).and_then(|()| {
            let delivery = Delivery::single(
                topic.clone(),
                message.partition,
                message.label.take(),
                slot.clone(),
            );
            self.enqueue(client, &message, delivery)
        });
        match sent {
            Ok(()) => Ok(DeliveryHandle::new(slot, topic)),
            Err(refused) => Err(refused.into_error(self.inner(), message)),
        }
    }

    /// Turns a partition key into a partition (an explicit partition wins).
    #[inline]
    fn resolve_partition(
        &self,
        client: &Arc<ClientBox>,
        message: &mut Message,
    ) -> std::result::Result<(), Refused> {
        if message.partition.is_some() {
            return Ok(());
        }
        let Some(key) = &message.partition_key else {
            return Ok(());
        };
        let partition = client
            .0
            .partition_for_key(&message.topic, self.topic_config.map(|c| &**c), key)
            .map_err(|source| Refused {
                reason: Rejection::Kafka(source),
                label: None,
                waited: Duration::ZERO,
            })?;
        message.partition = Some(partition);
        Ok(())
    }

    /// Hands one message to the client, waiting for room while the queue is full. The caller
    /// keeps the message; on failure, [`Refused::into_error`] gives it to the error.
    #[inline]
    fn enqueue(
        &self,
        client: &Arc<ClientBox>,
        message: &Message,
        delivery: Delivery,
    ) -> std::result::Result<(), Refused> {
        let config = &self.inner().config;
        let topic_config = self.topic_config.map(|c| &**c);
        let token = delivery.token();
        let mut delivery = delivery;
        let mut started: Option<Instant> = None;
        loop {
            let Rejected {
                reason,
                delivery: back,
            } = match client.0.produce(message, topic_config, delivery) {
                Ok(()) => return Ok(()),
                Err(rejected) => rejected,
            };
            let waited = started.map_or(Duration::ZERO, |s| s.elapsed());
            let Some(back) = back.reclaim(token) else {
                return Err(Refused {
                    reason: Rejection::Kafka(karafka_core::KafkaError::other(
                        "produce",
                        "the client refused the message but handed back another message's \
                         delivery (a Client must give back the Delivery it was given)",
                    )),
                    label: None,
                    waited,
                });
            };
            if let Rejection::QueueFull = reason {
                let since = *started.get_or_insert_with(Instant::now);
                let waited = since.elapsed();
                if config.wait_on_queue_full && waited < config.wait_timeout_on_queue_full {
                    let step = config
                        .wait_backoff_on_queue_full
                        .min(config.wait_timeout_on_queue_full - waited);
                    self.inner().shared.room.wait(step);
                    delivery = back;
                    continue;
                }
            }
            return Err(Refused {
                reason,
                label: back.cancel(),
                waited,
            });
        }
    }
}

/// Settles what a batch's dispatch loop did not hand over when it unwinds (a client that
/// panicked): the messages not taken yet are dropped, and their entries, with the current one
/// when its delivery was not made yet, are marked never sent. (A delivery already made
/// settles its entry itself, when completed or dropped.)
struct Unwinding<'a> {
    state: &'a Arc<BatchState>,
    reader: crate::delivery::MessageReader,
    /// The next message to take.
    next: usize,
    count: usize,
    /// Message `next - 1` was taken but its delivery not made.
    current_unsent: bool,
    armed: bool,
}

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for i in self.next..self.count {
            // SAFETY: these indexes were never taken (`next` follows the loop), in order,
            // and the allocation lives: their entries are not settled yet.
            #[allow(unsafe_code)]
            drop(unsafe { self.reader.take(i) });
        }
        let from = if self.current_unsent {
            self.next.saturating_sub(1)
        } else {
            self.next
        };
        self.state.not_sent(from, self.count);
        // No handle will take the results: they are dropped once every entry settled.
        self.state.abandon();
    }
}

/// A batch message whose topic reference its entry's report slot owns: the message holds a
/// bitwise copy (for the client to read), and dropping it drops everything but that copy.
struct LentTopic(std::mem::ManuallyDrop<Message>);

impl LentTopic {
    /// The message again, owning `topic` (the reference its slot gave back) in place of the
    /// copy, which is not dropped.
    fn give_back(self, topic: Arc<str>) -> Message {
        let mut this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the message is taken once.
        #[allow(unsafe_code)]
        let mut message = unsafe { std::mem::ManuallyDrop::take(&mut this.0) };
        std::mem::forget(std::mem::replace(&mut message.topic, topic));
        message
    }
}

impl std::ops::Deref for LentTopic {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.0
    }
}

impl Drop for LentTopic {
    fn drop(&mut self) {
        // SAFETY: dropped once; the message is not used after this.
        #[allow(unsafe_code)]
        let Message {
            topic,
            payload,
            key,
            partition: _,
            partition_key,
            timestamp: _,
            headers,
            label,
        } = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        std::mem::forget(topic);
        drop((payload, key, partition_key, headers, label));
    }
}

/// Why a message was not handed over; becomes an [`Error`] owning the message.
struct Refused {
    reason: Rejection,
    label: Option<karafka_core::Label>,
    waited: Duration,
}

impl Refused {
    fn into_error(self, inner: &Inner, mut message: Message) -> Error {
        if self.label.is_some() {
            message.label = self.label;
        }
        let (kind, error) = match self.reason {
            Rejection::QueueFull => (
                ErrorKind::ProducerQueueFull,
                Error::QueueFull {
                    waited: self.waited,
                    message: Box::new(message),
                },
            ),
            Rejection::TopicConflict {
                claimed_by,
                requested,
            } => (
                ErrorKind::ProducerProduce,
                Error::VariantConflict {
                    topic: message.topic.clone(),
                    claimed_by,
                    requested,
                    message: Box::new(message),
                },
            ),
            Rejection::Kafka(source) => (
                ErrorKind::ProducerProduce,
                Error::Produce {
                    source,
                    message: Box::new(message),
                },
            ),
        };
        inner.report_error(kind, &error);
        error
    }
}

fn with_message(error: Error, message: Option<Message>) -> Error {
    match (error, message) {
        (Error::Closed { producer_id, .. }, Some(m)) => Error::Closed {
            producer_id,
            message: Some(Box::new(m)),
        },
        (Error::Core(core), Some(m)) => Error::Produce {
            source: match core {
                karafka_core::Error::Kafka(k) => k,
                other => karafka_core::KafkaError::other("connect", other.to_string()),
            },
            message: Box::new(m),
        },
        (other, _) => other,
    }
}

impl Inner {
    /// Fails with [`Error::Closed`] (owning `message`) once closing started.
    fn ensure_open(&self, message: Option<&Message>) -> Result<()> {
        if self.status.load(Ordering::Acquire) >= CLOSING {
            return Err(Error::Closed {
                producer_id: self.config.id.clone(),
                message: message.map(|m| Box::new(m.clone())),
            });
        }
        Ok(())
    }

    /// Runs middleware, then validates.
    fn prepare(&self, mut message: Message) -> Result<Message> {
        self.middleware.run(&mut message);
        match self.check(&message) {
            Ok(()) => Ok(message),
            Err(reason) => {
                let error = Error::InvalidMessage {
                    topic: message.topic.clone(),
                    reason,
                    message: Box::new(message),
                };
                self.report_error(ErrorKind::ProducerProduce, &error);
                Err(error)
            }
        }
    }

    /// Prepares every message in place; on the first invalid one, sends nothing and gives all
    /// back.
    fn prepare_all(&self, mut messages: Vec<Message>) -> Result<Vec<Message>> {
        // Batches usually share one topic `Arc`: its name is checked once.
        let mut checked_topic: Option<Arc<str>> = None;
        for index in 0..messages.len() {
            self.middleware.run(&mut messages[index]);
            let message = &messages[index];
            let known = checked_topic
                .as_ref()
                .is_some_and(|t| Arc::ptr_eq(t, &message.topic));
            if known && self.plainly_valid(message) {
                continue;
            }
            let verdict = self.check_message(message, !known);
            if verdict.is_ok() && !known {
                checked_topic = Some(message.topic.clone());
            }
            if let Err(reason) = verdict {
                let message = messages.remove(index);
                let failure = Error::InvalidMessage {
                    topic: message.topic.clone(),
                    reason,
                    message: Box::new(message),
                };
                self.report_error(ErrorKind::ProducerProduce, &failure);
                return Err(self.batch_failure(failure, 0, messages));
            }
        }
        Ok(messages)
    }

    fn batch_failure(&self, failure: Error, dispatched: usize, not_sent: Vec<Message>) -> Error {
        let state = BatchState::new(self.shared.clone(), 0);
        state.settle(0);
        Error::PartiallyDispatched {
            dispatched,
            delivery: Box::new(BatchDelivery::new(state, 0)),
            failure: Box::new(failure),
            not_sent,
        }
    }

    /// The checks of [`check_message`](Self::check_message) but the topic's, as one boolean
    /// (the batch path; a `false` runs the full check for its error).
    fn plainly_valid(&self, message: &Message) -> bool {
        message.payload_len() <= self.config.max_payload_size
            && (message.payload.is_some() || message.key.as_ref().is_some_and(|k| !k.is_empty()))
            && message.partition.is_none_or(|p| p >= 0)
            && message.partition_key.as_ref().is_none_or(|k| !k.is_empty())
    }

    fn check(&self, message: &Message) -> std::result::Result<(), ConfigError> {
        self.check_message(message, true)
    }

    fn check_message(
        &self,
        message: &Message,
        check_topic: bool,
    ) -> std::result::Result<(), ConfigError> {
        let mut v = Violations::new();
        if check_topic {
            v.check_name("message.topic", &message.topic);
        }
        let size = message.payload_len();
        v.check(
            size <= self.config.max_payload_size,
            "message.payload",
            || {
                format!(
                    "is {size} bytes, over max_payload_size ({} bytes); split it, compress it, or \
                 raise max_payload_size (and the broker's message.max.bytes)",
                    self.config.max_payload_size
                )
            },
        );
        v.check(
            message.payload.is_some() || message.key.as_ref().is_some_and(|k| !k.is_empty()),
            "message.key",
            || "a tombstone (payload None) needs a key: compaction deletes by key".into(),
        );
        if let Some(p) = message.partition {
            v.check(p >= 0, "message.partition", || {
                format!("is {p}; partitions are 0 or more")
            });
        }
        if let Some(k) = &message.partition_key {
            v.check(!k.is_empty(), "message.partition_key", || {
                "must not be empty (leave it unset to use the key)".into()
            });
        }
        v.into_result()
    }

    /// The client, created on first use.
    pub(crate) fn client(&self) -> Result<Arc<ClientBox>> {
        if let Some(client) = self.client.load_full() {
            return Ok(client);
        }
        self.ensure_open(None)?;
        let _connecting = lock(&self.connect);
        if let Some(client) = self.client.load_full() {
            return Ok(client);
        }
        self.ensure_open(None)?;
        let setup = ClientSetup {
            producer_id: &self.config.id,
            kafka: &self.config.kafka,
            monitor: &self.shared.monitor,
        };
        let client = self.factory.create(&setup).map_err(|e| {
            self.report(ErrorKind::ProducerProduce, e.clone(), None);
            Error::Core(e.into())
        })?;
        if self.config.transactional {
            if let Err(e) = client.init_transactions(self.config.max_wait_timeout) {
                self.report(ErrorKind::ProducerTransaction, e.clone(), None);
                client.close(Duration::ZERO);
                return Err(Error::Transaction {
                    operation: "init",
                    source: e,
                    aborted: false,
                    message: None,
                });
            }
        }
        let client = Arc::new(ClientBox(client));
        self.client.store(Some(client.clone()));
        let _ = self.status.compare_exchange(
            CONFIGURED,
            CONNECTED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.shared.monitor.emit_with(|| Event::ProducerLifecycle {
            producer_id: self.shared.producer_id.clone(),
            stage: ProducerStage::Connected,
        });
        Ok(client)
    }

    /// The client for a dispatch; a failure owns `message`.
    fn client_for(&self, message: Message) -> Result<(Arc<ClientBox>, Message)> {
        match self.client() {
            Ok(client) => Ok((client, message)),
            Err(e) => Err(with_message(e, Some(message))),
        }
    }

    /// Drops the current client (after fatal errors): in-flight messages fail back to their
    /// handles; the next dispatch creates a new client.
    pub(crate) fn reload_client(&self) {
        let _connecting = lock(&self.connect);
        if let Some(old) = self.client.swap(None) {
            tracing::warn!(
                target: "karafka",
                producer = %self.config.id,
                "rebuilding the librdkafka client after a fatal error"
            );
            Self::retire(old, Duration::ZERO);
        }
    }

    /// Closes a client taken out of service. A dispatch still holding it gets its message
    /// back (a closed client refuses new messages); what is in flight is flushed for up to
    /// `timeout`, then purged and reported failed.
    fn retire(client: Arc<ClientBox>, timeout: Duration) {
        client.0.close(timeout);
    }

    fn close(&self, timeout: Duration) -> Result<()> {
        let previous = self.status.swap(CLOSING, Ordering::AcqRel);
        if previous >= CLOSING {
            self.status.store(previous, Ordering::Release);
            return Ok(());
        }
        self.shared.monitor.emit_with(|| Event::ProducerLifecycle {
            producer_id: self.shared.producer_id.clone(),
            stage: ProducerStage::Closing,
        });
        *lock(&self.shared.undelivered) = Some(Vec::new());
        let mut undelivered = Vec::new();

        // The buffer goes out first (closing refuses new dispatch, not this flush).
        let buffered = std::mem::take(&mut *lock(&self.buffer));
        let client = if buffered.is_empty() {
            self.client.load_full()
        } else {
            match self.connect_for_close() {
                Ok(client) => Some(client),
                Err(_) => {
                    undelivered.extend(buffered.iter().cloned());
                    None
                }
            }
        };
        if let Some(client) = &client {
            for mut message in buffered {
                let state = BatchState::new(self.shared.clone(), 1);
                let topic_index = state.topic_index(&message.topic);
                // SAFETY: the only entry, prepared once, before its delivery is made.
                #[allow(unsafe_code)]
                unsafe {
                    state.prepare_entry(
                        0,
                        topic_index,
                        message.topic.clone(),
                        message.partition,
                        message.label.take(),
                    )
                };
                let delivery = Delivery::entry(&state, 0);
                let token = delivery.token();
                if let Err(rejected) = client.0.produce(&message, None, delivery) {
                    message.label = match rejected.delivery.reclaim(token) {
                        Some(own) => own.cancel(),
                        // Another message's delivery (see `reclaim`): this one's label is
                        // still with the batch.
                        None => state.take_label(0),
                    };
                    // SAFETY: prepared above, refused once, here; no handle exists.
                    #[allow(unsafe_code)]
                    drop(unsafe { state.refused(0) });
                    undelivered.push(message);
                }
            }
        }
        drop(client);

        let client = {
            let _connecting = lock(&self.connect);
            self.client.swap(None)
        };
        if let Some(client) = client {
            let _ = client.0.flush(timeout);
            Self::retire(client, timeout);
        }
        undelivered.extend(lock(&self.shared.undelivered).take().unwrap_or_default());
        self.status.store(CLOSED, Ordering::Release);
        self.shared.monitor.emit_with(|| Event::ProducerLifecycle {
            producer_id: self.shared.producer_id.clone(),
            stage: ProducerStage::Closed,
        });
        if undelivered.is_empty() {
            Ok(())
        } else {
            let error = Error::Undelivered { undelivered };
            self.report_error(ErrorKind::ProducerClose, &error);
            Err(error)
        }
    }

    /// The client for flushing the buffer while closing (created if needed).
    fn connect_for_close(&self) -> Result<Arc<ClientBox>> {
        if let Some(client) = self.client.load_full() {
            return Ok(client);
        }
        // `client()` refuses while closing; reopen the gate briefly for the final flush.
        self.status.store(CONNECTED, Ordering::Release);
        let client = self.client();
        self.status.store(CLOSING, Ordering::Release);
        client
    }

    /// Puts messages back at the front of the buffer, keeping their order.
    fn requeue(&self, mut messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut buffer = lock(&self.buffer);
        messages.append(&mut buffer);
        *buffer = messages;
    }

    /// After a failed flush: keeps every message the error owns in the buffer, and returns the
    /// error without them.
    fn keep_unsent(&self, error: Error) -> Error {
        match error {
            Error::PartiallyDispatched {
                dispatched,
                delivery,
                failure,
                not_sent,
            } => {
                let mut keep = Vec::new();
                if let Some(m) = failure.message() {
                    keep.push(m.clone());
                }
                keep.extend(not_sent);
                self.requeue(keep);
                Error::PartiallyDispatched {
                    dispatched,
                    delivery,
                    failure,
                    not_sent: Vec::new(),
                }
            }
            other => {
                if let Some(m) = other.message() {
                    self.requeue(vec![m.clone()]);
                }
                other
            }
        }
    }

    fn emit_flushed<T>(&self, sync: bool, messages: usize, started: Instant, result: &Result<T>) {
        let failed = match result {
            Ok(_) => 0,
            Err(_) => lock(&self.buffer).len(),
        };
        self.shared.monitor.emit_with(|| Event::BufferFlushed {
            producer_id: self.shared.producer_id.clone(),
            sync,
            messages: messages - failed.min(messages),
            failed,
            duration: started.elapsed(),
        });
    }

    pub(crate) fn report(
        &self,
        kind: ErrorKind,
        error: karafka_core::KafkaError,
        message: Option<&Message>,
    ) {
        self.shared.monitor.emit_with(|| {
            let mut event =
                ErrorOccurred::new(kind, error).source_id(self.shared.producer_id.clone());
            if let Some(m) = message {
                event = event.at(m.topic.clone(), m.partition, None);
            }
            Event::ErrorOccurred(event)
        });
    }

    pub(crate) fn report_error(&self, kind: ErrorKind, error: &Error) {
        self.shared.monitor.emit_with(|| {
            let mut event = ErrorOccurred::new(kind, ErrorView(error.to_string()))
                .source_id(self.shared.producer_id.clone());
            if let Some(m) = error.message() {
                event = event.at(m.topic.clone(), m.partition, None);
            }
            Event::ErrorOccurred(event)
        });
    }
}

/// An error as reported on `error.occurred` when the original stays with the caller.
#[derive(Debug)]
struct ErrorView(String);

impl fmt::Display for ErrorView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErrorView {}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: close, so buffered and in-flight messages get their chance
        // (or are reported through `error.occurred` when they cannot be delivered).
        let _ = self.close(self.config.max_wait_timeout);
    }
}
