//! The routing of periodic jobs: `.periodic_job(...)` on a topic; the contract is
//! [`PeriodicJob`]'s `check` (an interval of at least 100 ms).

use std::sync::Arc;

use karafka_consumer::Consumer;
use karafka_consumer::routing::TopicBuilder;

use crate::processing::periodic_jobs::PeriodicJob;

/// Adds `.periodic_job(...)` to the topic builder.
pub trait PeriodicJobTopic: Sized {
    /// Runs the consumer's `tick` on idle partitions (see
    /// [`crate::processing::periodic_jobs`]).
    fn periodic_job(self, config: PeriodicJob) -> Self;
}

impl<C: Consumer> PeriodicJobTopic for TopicBuilder<C> {
    fn periodic_job(self, config: PeriodicJob) -> Self {
        self.job_policy(Arc::new(config))
    }
}
