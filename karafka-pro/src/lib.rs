//! # karafka-pro
//!
//! The Pro features of karafka-rs, built on the extension points of `karafka-consumer` (it
//! never depends on this crate). Applications use them through `karafka::pro` (feature
//! `pro`), or this crate directly.
//!
//! | feature | status | routing |
//! |---|---|---|
//! | virtual partitions: one partition processed in parallel by key, with offsets that never skip unprocessed work | available | [`VirtualPartitionsTopic::virtual_partitions`] |
//! | multiplexing: several connections for one subscription group, static or scaled from librdkafka statistics | available | [`MultiplexingSubscriptionGroup::multiplexing`] |
//! | long-running jobs: jobs far longer than `max.poll.interval.ms`, without leaving the group or stalling rebalances | available | [`LongRunningJobTopic::long_running_job`] |
//! | periodic jobs: a consumer's `tick` on partitions that have been idle for an interval | available | [`PeriodicJobTopic::periodic_job`] |
//! | the cleaner API: free each message's payload as soon as it is processed | available | [`CleanerMessages::each_clean`], [`CleanerMessage::clean`] (no routing) |
//! | swarm mode: a supervisor and node processes, each node replaced when it dies, hangs or outgrows its memory limit (Linux) | available | [`SwarmApp::swarm`], [`SwarmTopic::swarm`] |
//!
//! Each feature has the same anatomy: a config with documented defaults, a contract
//! (violations listed at `build()`), a routing method from an extension trait on the topic
//! or subscription-group builder, its behaviour, and events with stable dotted names. The
//! modules mirror `karafka-consumer`'s: `processing/virtual_partitions/`,
//! `connection/multiplexing/`, `routing/features/<feature>/`.
//!
//! ## Virtual partitions
//!
//! ```no_run
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::{Distribution, VirtualPartitions, VirtualPartitionsTopic};
//!
//! #[derive(Default)]
//! struct Orders;
//!
//! impl Consumer for Orders {
//!     type Payload = Raw;
//!     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
//!         // Only this virtual partition's messages (each key's in offset order).
//!         for message in ctx.messages() {
//!             let _ = message.key();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "localhost:9092")
//!     .concurrency(10)
//!     .topic("orders", |t| {
//!         t.consumer(Orders::default).virtual_partitions(
//!             // Messages of one key stay in order; different keys run in parallel.
//!             VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec))
//!                 .max_partitions(10)
//!                 .distribution(Distribution::Consistent),
//!         )
//!     })
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See [`VirtualPartitions`] for the semantics (virtual offsets, collapse on errors, DLQ).
//!
//! ## Multiplexing
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::{Multiplexing, MultiplexingSubscriptionGroup};
//!
//! struct Events;
//!
//! impl Consumer for Events {
//!     type Payload = Raw;
//!     async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "localhost:9092")
//!     // Dynamic multiplexing decides from librdkafka statistics, and wants incremental
//!     // rebalancing (each change then moves only the partitions concerned).
//!     .kafka("statistics.interval.ms", "5000")
//!     .kafka("partition.assignment.strategy", "cooperative-sticky")
//!     .consumer_group("shop", |cg| {
//!         cg.subscription_group("events", |sg| {
//!             // Between 1 and 4 connections, 2 at start, at most one change a minute.
//!             sg.multiplexing(Multiplexing::new(4).min(1).scale_delay(Duration::from_secs(60)))
//!                 .topic("events", |t| t.consumer(|| Events))
//!         })
//!     })
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See [`Multiplexing`] for the semantics (static and dynamic modes, names, events).
//!
//! ## Long-running jobs
//!
//! `.long_running_job(true)` on a topic; see [`processing::long_running_jobs`] for the
//! semantics (pauses, revocations that do not wait, shutdown) and an example.
//!
//! ## Periodic jobs
//!
//! `.periodic_job(PeriodicJob::new().interval(...))` on a topic, and a `tick` in its
//! consumer; see [`processing::periodic_jobs`] for the semantics and an example.
//!
//! ## The cleaner
//!
//! `ctx.messages().each_clean()` (or `message.clean()`, `ctx.messages().clean()`); see
//! [`processing::cleaner`] for what is freed, what stays, and dead letters.
//!
//! ## Swarm mode
//!
//! `.swarm(Swarm::new())` on the app builder (and `.swarm(0..2)` on a topic to limit it to
//! some nodes), then `my-app swarm`: a supervisor process and node processes, each node
//! replaced when it dies, hangs or outgrows its memory limit (Linux); see [`swarm`] for the
//! supervision, the reports, the signals and the exit codes.

pub mod connection;
pub mod processing;
pub mod routing;
#[cfg(target_os = "linux")]
pub mod swarm;

pub use connection::multiplexing::Multiplexing;
pub use processing::cleaner::{CleanerMessage, CleanerMessages};
pub use processing::long_running_jobs::LongRunningJob;
pub use processing::periodic_jobs::PeriodicJob;
pub use processing::virtual_partitions::{Distribution, VirtualPartitions};
pub use routing::features::long_running_job::LongRunningJobTopic;
pub use routing::features::multiplexing::MultiplexingSubscriptionGroup;
pub use routing::features::periodic_job::PeriodicJobTopic;
#[cfg(target_os = "linux")]
pub use routing::features::swarm::{SwarmApp, SwarmTopic};
pub use routing::features::virtual_partitions::VirtualPartitionsTopic;
#[cfg(target_os = "linux")]
pub use swarm::Swarm;
