//! The trait applications implement, and its type erasure for the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use karafka_core::instrumentation::JobKind;

use crate::context::{Context, JobInput};
use crate::message::Decoder;
use crate::payload::{BoxError, Payload, Raw};

/// What `consume` and the hooks return: `Ok` to let the framework mark the batch (unless
/// offsets are managed manually), any error (`?` works on every error type) to retry it.
pub type ConsumeResult = Result<(), BoxError>;

/// A consumer of one partition's batches.
///
/// The framework makes one instance per assigned partition (a fresh one after the partition
/// is assigned again) with the topic's factory, and runs its jobs one at a time, in order.
/// Only [`consume`](Consumer::consume) is required; the hooks default to doing nothing.
///
/// Returning an error (or panicking) from `consume` pauses the partition and retries the
/// batch from its first unmarked message after a back-off; with a dead-letter queue the
/// message that keeps failing is dispatched there and skipped after `max_retries`.
///
/// ```
/// use karafka_consumer::{Consumer, ConsumeResult, Context};
/// use karafka_consumer::payload::Json;
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64, total_cents: u64 }
///
/// #[derive(Default)]
/// struct OrdersConsumer { revenue: u64 }
///
/// impl Consumer for OrdersConsumer {
///     type Payload = Json<Order>;
///
///     async fn consume(&mut self, ctx: &Context<Json<Order>>) -> ConsumeResult {
///         for message in ctx.messages() {
///             let order = message.payload()?; // a bad payload is an error: retry, then DLQ
///             self.revenue += order.total_cents;
///             let _ = order.id;
///         }
///         Ok(()) // the framework marks the last message as consumed
///     }
/// }
/// ```
pub trait Consumer: Send + 'static {
    /// What payloads decode into (see [`crate::payload`]).
    type Payload: Payload;

    /// Processes a batch of one partition (`ctx.messages()`).
    fn consume(
        &mut self,
        ctx: &Context<Self::Payload>,
    ) -> impl Future<Output = ConsumeResult> + Send;

    /// Runs after the partition was taken away (by a rebalance), with the last batch it got;
    /// marking no longer works (`mark_as_consumed` returns false).
    fn revoked(
        &mut self,
        ctx: &Context<Self::Payload>,
    ) -> impl Future<Output = ConsumeResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs when the app stops, for every partition this instance still holds.
    fn shutdown(
        &mut self,
        ctx: &Context<Self::Payload>,
    ) -> impl Future<Output = ConsumeResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs when the end of the partition is reached (needs `enable.partition.eof=true`).
    fn eofed(
        &mut self,
        ctx: &Context<Self::Payload>,
    ) -> impl Future<Output = ConsumeResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs when the partition has had no job for a while: periodic jobs, set per topic
    /// with `karafka-pro`'s `.periodic_job(...)` (see [`crate::jobs::Periodic`]); never
    /// called otherwise. It never runs at the same time as another job of the partition,
    /// and not once the partition was revoked. The batch is empty (no message is marked
    /// from a tick). The use: flushing work a consumer buffered, on a partition gone quiet.
    fn tick(&mut self, ctx: &Context<Self::Payload>) -> impl Future<Output = ConsumeResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs once, before the instance's first batch.
    fn initialized(
        &mut self,
        ctx: &Context<Self::Payload>,
    ) -> impl Future<Output = ConsumeResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

/// The consumer type of a topic declared without one (for declarative topic settings, or a
/// topic that is not active). It has no values, so it never runs.
#[derive(Debug)]
pub enum NoConsumer {}

impl Consumer for NoConsumer {
    type Payload = Raw;

    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        match *self {}
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A consumer instance with its payload type erased, as the engine holds it.
pub(crate) trait ErasedConsumer: Send {
    /// Runs one job. `initialized` runs first on the instance's first job.
    fn run<'a>(&'a mut self, job: JobKind, input: JobInput) -> BoxFuture<'a, ConsumeResult>;
}

pub(crate) struct Erased<C: Consumer> {
    consumer: C,
    decoder: Decoder<C::Payload>,
    initialized: bool,
}

impl<C: Consumer> Erased<C> {
    pub(crate) fn new(consumer: C, decoder: Decoder<C::Payload>) -> Self {
        Erased {
            consumer,
            decoder,
            initialized: false,
        }
    }
}

impl<C: Consumer> ErasedConsumer for Erased<C> {
    fn run<'a>(&'a mut self, job: JobKind, input: JobInput) -> BoxFuture<'a, ConsumeResult> {
        Box::pin(async move {
            let ctx = Context::new(input, self.decoder.clone());
            if !self.initialized {
                self.initialized = true;
                self.consumer.initialized(&ctx).await?;
            }
            match job {
                JobKind::Consume => self.consumer.consume(&ctx).await,
                JobKind::Revoked => self.consumer.revoked(&ctx).await,
                JobKind::Shutdown => self.consumer.shutdown(&ctx).await,
                JobKind::Eofed => self.consumer.eofed(&ctx).await,
                JobKind::Tick => self.consumer.tick(&ctx).await,
                JobKind::Initialized => Ok(()),
                _ => Ok(()),
            }
        })
    }
}

/// Makes a topic's consumer instances (one per assigned partition).
pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn ErasedConsumer> + Send + Sync>;
