//! Long-running jobs: a topic whose jobs may run far longer than `max.poll.interval.ms`,
//! without the member being kicked out of its group and without stalling rebalances.
//!
//! Set with [`LongRunningJobTopic::long_running_job`](crate::LongRunningJobTopic::long_running_job)
//! on a topic. What changes (the engine's side is `karafka_consumer::jobs`):
//!
//! - **The member stays in its group.** The listener keeps polling while the job runs. With
//!   partition scheduling (the default) it always does; with poll scheduling (Karafka's
//!   rule) the partition is paused in librdkafka before its job is handed to the workers
//!   (so it is paused even while the job waits for a free worker), and the listener polls
//!   the other partitions instead of waiting for the job.
//! - **After the job.** The batch is settled as any other: marked on success (unless offsets
//!   are managed manually or the consumer sought or paused); on an error the retry's
//!   back-off replaces the pause. Then the partition goes on from the offset after the
//!   batch, or from where the consumer sought to: the consumer's own seek or pause wins.
//! - **Revocations do not wait.** A rebalance must not stall for as long as a job runs: the
//!   revocation goes ahead (regular jobs are waited for up to `revocation_timeout` with
//!   partition scheduling), the running job's `mark_as_consumed` returns false and
//!   `ctx.is_revoked()` turns true, so it can stop early; `revoked` runs on its instance
//!   once it ended. The partition's new owner processes it from the committed offset. A
//!   job still waiting for a worker when its partition is revoked never runs.
//! - **One instance at a time.** If the partition comes back to the same process while the
//!   old job still runs, it stays paused (its messages are fetched again later) until that
//!   job and its `revoked` hook ended.
//! - **Shutdown** waits for running long-running jobs up to `shutdown_timeout`; past it the
//!   error's report names them (`long-running job consume ...`). Health
//!   (`Running::health`, `/healthz`) does not hold them to `job_timeout`.
//! - **Dynamic multiplexing** rebalances the group at every change, which moves partitions
//!   away from running jobs: the app emits `connection.multiplexing.warning` at start for a
//!   subscription group combining them, and `info` prints it.
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::LongRunningJobTopic;
//!
//! struct Reports;
//!
//! impl Consumer for Reports {
//!     type Payload = Raw;
//!     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
//!         for message in ctx.messages() {
//!             // Minutes of work per message: the member stays in its group meanwhile.
//!             tokio::time::sleep(Duration::from_secs(120)).await;
//!             if !ctx.mark_as_consumed(message) {
//!                 // Revoked: another member owns the partition now; stop early.
//!                 return Ok(());
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "localhost:9092")
//!     .topic("reports", |t| t.consumer(|| Reports).long_running_job(true))
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use karafka_consumer::jobs::JobPolicy;

/// The long-running-jobs setting of a topic: on or off (default off: a topic without
/// `.long_running_job(true)` has regular jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongRunningJob {
    active: bool,
}

impl LongRunningJob {
    /// Long-running jobs on (`true`) or off.
    pub fn new(active: bool) -> Self {
        LongRunningJob { active }
    }

    /// Whether the topic's jobs are long-running.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl JobPolicy for LongRunningJob {
    fn name(&self) -> &'static str {
        "long_running_job"
    }

    fn long_running(&self) -> bool {
        self.active
    }

    fn describe(&self) -> String {
        if self.active {
            "long-running jobs".into()
        } else {
            "long-running jobs off".into()
        }
    }
}
