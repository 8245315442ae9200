//! # karafka-consumer
//!
//! The consumer framework of karafka-rs: declare routes (topic → consumer type) and it runs
//! the connections, batch polling, a worker pool, offsets that are stored only for processed
//! work, retries with back-off, dead-letter queues and rebalance handling.
//!
//! ## A short tour
//!
//! - [`App`] / [`AppBuilder`]: librdkafka settings, processing settings (`concurrency`,
//!   `shutdown_timeout`, retry back-off) and [`routing`] (consumer groups, subscription
//!   groups, topics), all validated at `build()` with every problem listed.
//! - [`Consumer`]: one `async fn consume(&mut self, ctx)`, plus optional hooks (`revoked`,
//!   `shutdown`, `eofed`, `initialized`). One instance per assigned partition.
//! - [`Context`]: the batch ([`Messages`], with [`BatchMetadata`] and its two lags), marking
//!   (`mark_as_consumed`, `mark_as_consumed_sync`), `seek`, `pause`/`resume`, `is_revoked`,
//!   the attempt number, the producer.
//! - [`payload`]: what payloads decode into ([`payload::Json`] by default choice,
//!   [`payload::Raw`], [`payload::Text`]); decoding is lazy and failures are retried, then
//!   dead-lettered.
//! - Running it: [`App::run`] (signals: SIGINT/SIGTERM/SIGQUIT stop, SIGTSTP quiets, a second
//!   signal forces; statuses instrumented; a shutdown report when `shutdown_timeout` passes),
//!   [`App::select`] (run only some routes), [`Running::health`]; [`admin`] (topics,
//!   watermarks, group offsets and lag, moving a group, declarative topics: plan/migrate);
//!   `cli` (feature `cli`: `server`, `info`, `topics` inside your binary); `web` (feature
//!   `web`: `/healthz` and Prometheus `/metrics`).
//!
//! ## How it runs
//!
//! One librdkafka client per subscription group, polled by a listener on a named thread
//! (`karafka.listener#<group>.<subscription group>`); jobs (consume, revoked, shutdown,
//! eofed) run on a tokio runtime, at most `concurrency` at once, one at a time per partition.
//! A listener hands out its next batch only when the jobs of its previous one finished.
//!
//! Offsets: `enable.auto.offset.store=false`; after a successful batch the framework stores
//! its last offset + 1 (unless offsets are managed manually, or the consumer seeked or paused)
//! and librdkafka commits stored offsets in the background; revocation and shutdown commit
//! synchronously. A failed batch is never marked: it is retried from its first unmarked
//! message after a back-off (`pause_timeout`, doubling, capped at `pause_max_timeout`), and
//! with a dead-letter queue the message that keeps failing is dispatched and skipped.
//!
//! ```no_run
//! use karafka_consumer::{App, Consumer, ConsumeResult, Context};
//! use karafka_consumer::payload::Json;
//! use karafka_consumer::routing::DeadLetterQueue;
//!
//! #[derive(serde::Deserialize)]
//! struct Visit { page: String }
//!
//! #[derive(Default)]
//! struct Visits { count: u64 }
//!
//! impl Consumer for Visits {
//!     type Payload = Json<Visit>;
//!     async fn consume(&mut self, ctx: &Context<Json<Visit>>) -> ConsumeResult {
//!         for message in ctx.messages() {
//!             let visit = message.payload()?;
//!             self.count += 1;
//!             println!("{} visited", visit.page);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "127.0.0.1:9092")
//!     .topic("visits", |t| {
//!         t.consumer(Visits::default)
//!             .dead_letter_queue(DeadLetterQueue::new("visits-dlq").max_retries(3))
//!     })
//!     .build()?;
//! let running = app.start()?;
//! // ... until it is time to stop:
//! running.stop_blocking()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod admin;
mod app;
#[cfg(feature = "cli")]
pub mod cli;
pub(crate) mod connection;
pub mod connections;
mod consumer;
mod context;
mod error;
#[cfg(feature = "testing")]
pub mod harness;
pub mod jobs;
mod message;
pub mod payload;
pub(crate) mod processing;
pub mod routing;
mod server;
mod settings;
pub mod split;
mod status;
pub mod swarm;
#[cfg(feature = "web")]
pub mod web;

pub use app::{App, AppBuilder, LivenessProbe, Running};
pub use consumer::{ConsumeResult, Consumer, NoConsumer};
pub use context::{ClientOps, Context};
pub use error::{Error, Result};
pub use karafka_core::instrumentation::AppStatus;
pub use message::{
    BatchMetadata, Cleaning, CleaningMessage, DeserializationError, Message, Messages,
    PayloadCleaned,
};

pub use server::{Exit, RunOptions, Selection};
pub use settings::{
    DEFAULT_CONCURRENCY, DEFAULT_PAUSE_MAX_TIMEOUT, DEFAULT_PAUSE_TIMEOUT, DEFAULT_PREFETCH_BUDGET,
    DEFAULT_REVOCATION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, Scheduling,
};
pub use status::{Health, JobLiveness, ListenerLiveness, Liveness};
