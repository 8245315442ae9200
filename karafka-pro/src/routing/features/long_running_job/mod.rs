//! The routing of long-running jobs: `.long_running_job(true)` on a topic.

use std::sync::Arc;

use karafka_consumer::Consumer;
use karafka_consumer::routing::TopicBuilder;

use crate::processing::long_running_jobs::LongRunningJob;

/// Adds `.long_running_job(...)` to the topic builder.
pub trait LongRunningJobTopic: Sized {
    /// Lets the topic's jobs run far longer than `max.poll.interval.ms` (see
    /// [`crate::processing::long_running_jobs`]). Default off.
    fn long_running_job(self, active: bool) -> Self;
}

impl<C: Consumer> LongRunningJobTopic for TopicBuilder<C> {
    fn long_running_job(self, active: bool) -> Self {
        // No contract of its own: any topic may run long jobs; combined with dynamic
        // multiplexing the app warns at start (`connection.multiplexing.warning`).
        self.job_policy(Arc::new(LongRunningJob::new(active)))
    }
}
