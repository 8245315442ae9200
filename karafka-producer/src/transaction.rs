//! Transactions: a closure API that commits on `Ok` and aborts on `Err` or panic.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Instant;

use karafka_core::instrumentation::{ErrorKind, Event, TransactionStage};
use karafka_core::{KafkaError, TopicPartition};

use crate::client::ConsumerGroupMetadata;
use crate::delivery::{BatchDelivery, DeliveryHandle, DeliveryReport, lock};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{ClientBox, Inner, Producer};

tokio::task_local! {
    /// The producer (by address) whose async transaction the current task runs inside.
    static ASYNC_TRANSACTION: usize;
}

fn producer_key(inner: &Inner) -> usize {
    inner as *const Inner as usize
}

/// One transaction at a time per producer: librdkafka has one transaction per client, and a
/// message sent by another thread during it would silently join it. Other dispatchers wait.
#[derive(Default)]
pub(crate) struct TxGate {
    state: Mutex<GateState>,
    released: Condvar,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct GateState {
    held: bool,
    owner: Option<ThreadId>,
}

pub(crate) struct GateGuard<'a> {
    gate: &'a TxGate,
}

impl TxGate {
    fn acquire_blocking(&self) -> GateGuard<'_> {
        let mut state = lock(&self.state);
        while state.held {
            state = self.released.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.held = true;
        state.owner = Some(std::thread::current().id());
        GateGuard { gate: self }
    }

    async fn acquire_async(&self) -> GateGuard<'_> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = lock(&self.state);
                if !state.held {
                    state.held = true;
                    state.owner = None;
                    return GateGuard { gate: self };
                }
            }
            notified.await;
        }
    }

    /// Whether the caller runs inside a transaction of `inner` (same thread for the closure
    /// API, same task for the async one).
    pub(crate) fn is_current(&self, inner: &Inner) -> bool {
        let state = lock(&self.state);
        if state.held && state.owner == Some(std::thread::current().id()) {
            return true;
        }
        drop(state);
        ASYNC_TRANSACTION
            .try_with(|key| *key == producer_key(inner))
            .unwrap_or(false)
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.gate.state);
            state.held = false;
            state.owner = None;
        }
        self.gate.released.notify_all();
        self.gate.notify.notify_waiters();
    }
}

impl fmt::Debug for TxGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxGate")
            .field("held", &lock(&self.state).held)
            .finish()
    }
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum TransactionError<E> {
    /// Your closure returned `Err`; the transaction was aborted (or, for a nested block, the
    /// outer transaction will abort when the error reaches it).
    Aborted(E),
    /// A producer or transaction step failed (the transaction was aborted where possible).
    Failed(Error),
}

impl<E> TransactionError<E> {
    /// The producer error, if that is what failed.
    pub fn as_failed(&self) -> Option<&Error> {
        match self {
            TransactionError::Failed(e) => Some(e),
            TransactionError::Aborted(_) => None,
        }
    }
}

impl TransactionError<Error> {
    /// Flattens to a producer error; a commit failure gets `messages` (the ones this transaction
    /// carried) back, so they are not lost.
    pub(crate) fn into_error_with(self, messages: Vec<Message>) -> Error {
        match self {
            TransactionError::Aborted(e) => e,
            TransactionError::Failed(Error::Transaction {
                operation,
                source,
                aborted,
                message: None,
            }) if messages.len() == 1 => Error::Transaction {
                operation,
                source,
                aborted,
                message: messages.into_iter().next().map(Box::new),
            },
            TransactionError::Failed(Error::Transaction {
                source, aborted: _, ..
            }) if messages.len() > 1 => Error::DeliveriesFailed {
                failed: messages.len(),
                results: messages
                    .into_iter()
                    .map(|m| {
                        Err(Error::Transaction {
                            operation: "commit",
                            source: source.clone(),
                            aborted: true,
                            message: Some(Box::new(m)),
                        })
                    })
                    .collect(),
            },
            TransactionError::Failed(e) => e,
        }
    }
}

impl<E: fmt::Display> fmt::Display for TransactionError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionError::Aborted(e) => write!(f, "transaction aborted: {e}"),
            TransactionError::Failed(e) => write!(f, "transaction failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TransactionError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransactionError::Aborted(e) => Some(e),
            TransactionError::Failed(e) => Some(e),
        }
    }
}

/// The open transaction, handed to the closure of [`Producer::transaction`]. Messages sent
/// through it (or through the producer, from the same thread) belong to the transaction.
#[derive(Clone)]
pub struct Transaction {
    producer: Producer,
}

impl Transaction {
    /// The producer running the transaction.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Sends inside the transaction and waits for the delivery report (delivered is not yet
    /// committed: readers with `read_committed` see it after the commit).
    pub fn produce_sync(&self, message: Message) -> Result<DeliveryReport> {
        self.producer.dispatcher().produce_sync(message)
    }

    /// Sends inside the transaction.
    pub fn produce_async(&self, message: Message) -> Result<DeliveryHandle> {
        self.producer.dispatcher().produce_async(message)
    }

    /// Sends many inside the transaction and waits for their reports.
    pub fn produce_many_sync(&self, messages: Vec<Message>) -> Result<Vec<DeliveryReport>> {
        self.producer.dispatcher().produce_many_sync(messages)
    }

    /// Sends many inside the transaction.
    pub fn produce_many_async(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        self.producer.dispatcher().produce_many_async(messages)
    }

    /// Marks `offset` of `topic_partition` as consumed by `group`, inside the transaction: the
    /// group's committed offset becomes `offset + 1` when the transaction commits, and not at
    /// all if it aborts (exactly-once consume-transform-produce).
    pub fn mark_as_consumed(
        &self,
        group: &ConsumerGroupMetadata,
        topic_partition: &TopicPartition,
        offset: i64,
    ) -> Result<()> {
        self.mark_many_as_consumed(group, &[(topic_partition.clone(), offset)])
    }

    /// [`mark_as_consumed`](Self::mark_as_consumed) for several partitions at once (each
    /// entry is the last consumed offset).
    pub fn mark_many_as_consumed(
        &self,
        group: &ConsumerGroupMetadata,
        consumed: &[(TopicPartition, i64)],
    ) -> Result<()> {
        let inner = &self.producer.inner;
        let client = inner.client()?;
        let next: Vec<(TopicPartition, i64)> =
            consumed.iter().map(|(tp, o)| (tp.clone(), o + 1)).collect();
        let timeout = inner.config.max_wait_timeout;
        let started = Instant::now();
        run_step(inner, &client, "send offsets", || {
            client.0.send_offsets_to_transaction(&next, group, timeout)
        })?;
        emit(inner, TransactionStage::MarkedAsConsumed, started);
        Ok(())
    }
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("producer", &self.producer.id())
            .finish()
    }
}

fn emit(inner: &Inner, stage: TransactionStage, started: Instant) {
    inner.shared.monitor.emit_with(|| Event::Transaction {
        producer_id: inner.shared.producer_id.clone(),
        stage,
        duration: started.elapsed(),
    });
}

/// Runs one transaction step: retriable errors are retried (`max_attempts_on_transaction_command`,
/// back-off growing by `wait_backoff_on_transaction_command` per attempt); errors that require
/// an abort abort; fatal errors rebuild the client when configured to.
fn run_step(
    inner: &Inner,
    client: &Arc<ClientBox>,
    operation: &'static str,
    mut step: impl FnMut() -> std::result::Result<(), KafkaError>,
) -> Result<()> {
    let config = &inner.config;
    let mut attempt = 1;
    loop {
        let error = match step() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if error.retriable && attempt < config.max_attempts_on_transaction_command {
            std::thread::sleep(config.wait_backoff_on_transaction_command * attempt);
            attempt += 1;
            continue;
        }
        inner.report(ErrorKind::ProducerTransaction, error.clone(), None);
        let mut aborted = false;
        if error.fatal {
            if config.reload_on_transaction_fatal_error {
                inner.reload_client();
            }
        } else if error.txn_requires_abort && operation != "abort" {
            let started = Instant::now();
            aborted = client.0.abort_transaction(config.max_wait_timeout).is_ok();
            if aborted {
                emit(inner, TransactionStage::Aborted, started);
            }
        }
        return Err(Error::Transaction {
            operation,
            source: error,
            aborted,
            message: None,
        });
    }
}

impl Producer {
    fn begin(&self) -> Result<Arc<ClientBox>> {
        let inner = &self.inner;
        let client = inner.client()?;
        let started = Instant::now();
        run_step(inner, &client, "begin", || client.0.begin_transaction())?;
        emit(inner, TransactionStage::Started, started);
        Ok(client)
    }

    fn commit(&self, client: &Arc<ClientBox>) -> Result<()> {
        let inner = &self.inner;
        let started = Instant::now();
        let timeout = inner.config.max_wait_timeout;
        run_step(inner, client, "commit", || {
            client.0.commit_transaction(timeout)
        })?;
        emit(inner, TransactionStage::Committed, started);
        Ok(())
    }

    fn abort(&self, client: &Arc<ClientBox>) -> Result<()> {
        let inner = &self.inner;
        let started = Instant::now();
        let timeout = inner.config.max_wait_timeout;
        run_step(inner, client, "abort", || {
            client.0.abort_transaction(timeout)
        })?;
        emit(inner, TransactionStage::Aborted, started);
        Ok(())
    }

    fn ensure_transactional(&self, operation: &'static str) -> Result<()> {
        if self.inner.config.transactional {
            Ok(())
        } else {
            Err(Error::NotTransactional { operation })
        }
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, aborts when it returns `Err`
    /// or panics (the panic then continues). Needs `transactional.id`.
    ///
    /// Other threads' dispatch on this producer waits until the transaction ends (librdkafka
    /// would otherwise add their messages to it). Inside `f`, send through the
    /// [`Transaction`] (or the producer, on the same thread); a nested `transaction` call
    /// joins the open one.
    ///
    /// ```no_run
    /// use karafka_producer::{Message, Producer, TransactionError};
    ///
    /// let producer = Producer::builder()
    ///     .kafka("bootstrap.servers", "127.0.0.1:9092")
    ///     .kafka("transactional.id", "billing-1")
    ///     .build()?;
    /// let outcome = producer.transaction(|tx| {
    ///     tx.produce_async(Message::new("invoices", "invoice-1"))?;
    ///     tx.produce_async(Message::new("ledger", "entry-1"))?;
    ///     Ok::<_, karafka_producer::Error>(2)
    /// });
    /// assert!(matches!(outcome, Ok(2) | Err(TransactionError::Failed(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction<T, E>(
        &self,
        f: impl FnOnce(&Transaction) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, TransactionError<E>> {
        self.ensure_transactional("transaction")
            .map_err(TransactionError::Failed)?;
        let tx = Transaction {
            producer: self.clone(),
        };
        if self.inner.tx.is_current(&self.inner) {
            return f(&tx).map_err(TransactionError::Aborted);
        }
        let _gate = self.inner.tx.acquire_blocking();
        let client = self.begin().map_err(TransactionError::Failed)?;
        match catch_unwind(AssertUnwindSafe(|| f(&tx))) {
            Ok(Ok(value)) => {
                self.commit(&client).map_err(TransactionError::Failed)?;
                Ok(value)
            }
            Ok(Err(e)) => {
                self.abort(&client).map_err(TransactionError::Failed)?;
                Err(TransactionError::Aborted(e))
            }
            Err(panic) => {
                let _ = self.abort(&client);
                resume_unwind(panic)
            }
        }
    }

    /// The async form of [`transaction`](Self::transaction): `f` gets an owned
    /// [`Transaction`] and returns a future. Begin, commit and abort run on tokio's blocking
    /// pool (they wait for librdkafka). Needs a tokio runtime.
    pub async fn transaction_async<T, E, F, Fut>(
        &self,
        f: F,
    ) -> std::result::Result<T, TransactionError<E>>
    where
        F: FnOnce(Transaction) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.ensure_transactional("transaction_async")
            .map_err(TransactionError::Failed)?;
        let tx = Transaction {
            producer: self.clone(),
        };
        if self.inner.tx.is_current(&self.inner) {
            return f(tx).await.map_err(TransactionError::Aborted);
        }
        let _gate = self.inner.tx.acquire_async().await;
        let producer = self.clone();
        let client = blocking(move || producer.begin())
            .await
            .map_err(TransactionError::Failed)?;
        let key = producer_key(&self.inner);
        let outcome = CatchUnwind(Box::pin(ASYNC_TRANSACTION.scope(key, f(tx)))).await;
        let producer = self.clone();
        match outcome {
            Ok(Ok(value)) => {
                blocking(move || producer.commit(&client))
                    .await
                    .map_err(TransactionError::Failed)?;
                Ok(value)
            }
            Ok(Err(e)) => {
                blocking(move || producer.abort(&client))
                    .await
                    .map_err(TransactionError::Failed)?;
                Err(TransactionError::Aborted(e))
            }
            Err(panic) => {
                let _ = blocking(move || producer.abort(&client)).await;
                resume_unwind(panic)
            }
        }
    }
}

/// Runs a blocking transaction step on tokio's blocking pool when a runtime is around.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(step).await {
            Ok(result) => result,
            Err(join) => Err(Error::Core(karafka_core::Error::Io {
                operation: "run a transaction step".into(),
                source: std::io::Error::other(join.to_string()),
            })),
        },
        Err(_) => step(),
    }
}

/// Catches a panic while polling the wrapped future.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
