//! Periodic jobs: a consumer's [`tick`](karafka_consumer::Consumer::tick) runs on each
//! assigned partition of the topic that has had no job for a while, so the consumer can
//! act without new messages (flush what it buffered, close a time window, report).
//!
//! Set with [`PeriodicJobTopic::periodic_job`](crate::PeriodicJobTopic::periodic_job) on a
//! topic (the engine's side is `karafka_consumer::jobs`):
//!
//! - A partition ticks once it has had no job (no batch, no hook) for `interval`: first
//!   `interval` after its assignment (before any message came), then every `interval` while
//!   it stays idle. A partition that keeps getting batches does not tick.
//! - A tick is a job like the others: it takes a worker permit, runs on the partition's
//!   instance (a new one, after `initialized`, before the first batch), never at the same
//!   time as another job of the partition, and never after the partition was revoked (a
//!   tick still waiting then does not run). Its batch is empty.
//! - A paused partition ticks only with `during_pause` (default: yes, but no for a
//!   long-running topic, whose partition is paused while its job runs), and one paused for a
//!   retry's back-off only with `during_retry` (default no).
//! - Events: `consumer.ticked` after a tick, `consumer.tick.error` in `error.occurred` when
//!   it fails (a failed tick is reported, not retried: the next one comes `interval` later).
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::{PeriodicJob, PeriodicJobTopic};
//!
//! #[derive(Default)]
//! struct Aggregates {
//!     buffered: Vec<Vec<u8>>,
//! }
//!
//! impl Consumer for Aggregates {
//!     type Payload = Raw;
//!     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
//!         for message in ctx.messages() {
//!             self.buffered.push(message.key().unwrap_or_default().to_vec());
//!         }
//!         Ok(())
//!     }
//!
//!     async fn tick(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
//!         // The partition has been quiet for 10 s: flush what is buffered.
//!         self.buffered.clear();
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "localhost:9092")
//!     .topic("clicks", |t| {
//!         t.consumer(Aggregates::default)
//!             .periodic_job(PeriodicJob::new().interval(Duration::from_secs(10)))
//!     })
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use karafka_consumer::jobs::{JobPolicy, Periodic, TopicFacts};
use karafka_core::Violations;

/// How often an idle partition ticks by default (Karafka's default too).
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest `interval` the contract accepts.
pub const MIN_TICK_INTERVAL: Duration = Duration::from_millis(100);

/// The periodic-jobs setting of a topic.
///
/// Defaults: `interval` [`DEFAULT_TICK_INTERVAL`] (5 s), `during_pause` yes for regular
/// topics and no for long-running ones, `during_retry` no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodicJob {
    interval: Duration,
    during_pause: Option<bool>,
    during_retry: bool,
}

impl Default for PeriodicJob {
    fn default() -> Self {
        PeriodicJob::new()
    }
}

impl PeriodicJob {
    /// Ticks every 5 s on idle partitions.
    pub fn new() -> Self {
        PeriodicJob {
            interval: DEFAULT_TICK_INTERVAL,
            during_pause: None,
            during_retry: false,
        }
    }

    /// How long a partition stays without a job before it ticks, and between its ticks
    /// (default 5 s; at least 100 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Whether a partition paused by its consumer (or by a long-running job) ticks (default:
    /// yes, no for a long-running topic).
    pub fn during_pause(mut self, tick: bool) -> Self {
        self.during_pause = Some(tick);
        self
    }

    /// Whether a partition paused for a retry's back-off ticks (default no).
    pub fn during_retry(mut self, tick: bool) -> Self {
        self.during_retry = tick;
        self
    }

    /// The interval.
    pub fn interval_value(&self) -> Duration {
        self.interval
    }
}

impl JobPolicy for PeriodicJob {
    fn name(&self) -> &'static str {
        "periodic_job"
    }

    fn periodic(&self) -> Option<Periodic> {
        Some(Periodic::new(
            self.interval,
            self.during_pause,
            self.during_retry,
        ))
    }

    fn check(&self, _topic: &TopicFacts<'_>, path: &str, v: &mut Violations) {
        v.check(
            self.interval >= MIN_TICK_INTERVAL,
            format!("{path}.periodic_job.interval"),
            || {
                format!(
                    "is {:?}; it must be at least 100 ms (each tick is a job with a worker permit)",
                    self.interval
                )
            },
        );
    }

    fn describe(&self) -> String {
        let pause = match self.during_pause {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unless long-running",
        };
        format!(
            "periodic jobs every {:?} (during pause: {pause}, during retry: {})",
            self.interval,
            if self.during_retry { "yes" } else { "no" }
        )
    }
}
