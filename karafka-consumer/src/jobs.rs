//! How a topic's jobs are scheduled beyond the defaults: the extension point of long-running
//! jobs and periodic jobs (`karafka-pro`).
//!
//! A topic gets a [`JobPolicy`] through
//! [`TopicBuilder::job_policy`](crate::routing::TopicBuilder::job_policy), which
//! `karafka-pro`'s `.long_running_job(true)` and `.periodic_job(...)` call. Without one, every
//! method keeps its default: the engine's regular scheduling.
//!
//! **Long-running jobs.** A topic whose policy says [`JobPolicy::long_running`] has jobs that
//! may run far longer than `max.poll.interval.ms`:
//! - with partition scheduling (the default) the listener never waits for a job anyway; the
//!   difference is at a revocation, which does not wait for the partition's running job (it
//!   waits up to `revocation_timeout` for a regular one): `revoked` runs once the job ended,
//!   on its instance, and meanwhile the job's marks return false and `Context::is_revoked`
//!   turns true, so it can stop early;
//! - with poll scheduling (Karafka's rule) the partition is paused in librdkafka before its
//!   job is handed to the workers (the job waits for a permit on its worker, never on the
//!   listener), and the listener goes on polling the other partitions instead of waiting for
//!   it. Its `revoked` and `eofed` hooks run the same way. After the job the batch is settled
//!   as any other (marked, or retried: the back-off's pause replaces this one); then, unless
//!   the consumer paused the partition or a retry did, it is sought to where it goes on (the
//!   consumer's own seek wins, else the offset after the batch) and resumed. Messages of the
//!   partition that still arrive while a job of it runs (a partition revoked and assigned
//!   back) are dropped and fetched again once it is idle, so the old and the new instance
//!   never process it at the same time.
//!
//! In both modes shutdown waits for long-running jobs up to `shutdown_timeout` (the report
//! past it names them), and the app's health (`Running::health`, `/healthz`) does not count
//! a long-running job against `job_timeout`.
//!
//! **Periodic jobs.** A topic whose policy gives a [`Periodic`] has its consumers'
//! [`tick`](crate::Consumer::tick) hook run on each assigned partition that has had no job
//! (no batch, no hook) for `interval`: first `interval` after the assignment (before any
//! message came), then every `interval` while the partition stays idle. A tick is a job like
//! the others: it takes a worker permit, runs on the partition's instance (a new one
//! before the first batch), never at the same time as another job of the partition, and
//! not after the partition was revoked. A paused partition ticks only with
//! `during_pause` (a retry's back-off only with `during_retry`). With partition scheduling
//! the listener wakes for the next tick; with poll scheduling a poll waits at most until
//! the next one is due.

use std::fmt;
use std::time::Duration;

use karafka_core::Violations;

pub use crate::split::TopicFacts;

/// How a topic's jobs are scheduled. Every method has the regular engine's answer as its
/// default.
pub trait JobPolicy: Send + Sync + fmt::Debug + 'static {
    /// The feature's name (`long_running_job`): one policy per name is kept on a topic (a
    /// later one replaces it), and `info` and errors use it.
    fn name(&self) -> &'static str;

    /// Whether the topic's jobs may run longer than `max.poll.interval.ms` (see the module
    /// doc). Default false.
    fn long_running(&self) -> bool {
        false
    }

    /// When the topic's consumers tick on idle partitions (periodic jobs). Default none.
    fn periodic(&self) -> Option<Periodic> {
        None
    }

    /// Adds the policy's contract violations at `build()` (paths under `path`, the topic's
    /// path). Default: none.
    fn check(&self, topic: &TopicFacts<'_>, path: &str, violations: &mut Violations) {
        let _ = (topic, path, violations);
    }

    /// One line for `info`.
    fn describe(&self) -> String {
        self.name().to_owned()
    }
}

/// When a topic's consumers [`tick`](crate::Consumer::tick) (periodic jobs; see the module
/// doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Periodic {
    /// How long a partition stays without a job before it ticks (and between ticks).
    pub interval: Duration,
    /// Whether a partition paused by its consumer (or by a long-running job's pause) ticks;
    /// `None`: yes for regular topics, no for long-running ones.
    pub during_pause: Option<bool>,
    /// Whether a partition paused for a retry's back-off ticks.
    pub during_retry: bool,
}

impl Periodic {
    /// Ticks every `interval` on idle partitions, `during_pause` and `during_retry` as given.
    pub fn new(interval: Duration, during_pause: Option<bool>, during_retry: bool) -> Self {
        Periodic {
            interval,
            during_pause,
            during_retry,
        }
    }
}
