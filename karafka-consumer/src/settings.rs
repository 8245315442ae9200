//! Processing settings shared by every listener of an app.

use std::time::Duration;

/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 5;
/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `pause_timeout` (first retry back-off).
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `pause_max_timeout` (back-off cap).
pub const DEFAULT_PAUSE_MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `revocation_timeout`: how long a revocation waits for a running job of a revoked
/// partition (partition scheduling).
pub const DEFAULT_REVOCATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `prefetch_budget`: 64 MiB per partition-scheduled subscription group (what one
/// consumer queue holds at most with librdkafka's defaults).
pub const DEFAULT_PREFETCH_BUDGET: u64 = 64 * 1024 * 1024;

/// How a subscription group hands its partitions' messages to jobs.
///
/// Set it for the whole app with [`AppBuilder::scheduling`](crate::AppBuilder::scheduling)
/// or for one named subscription group with
/// [`SubscriptionGroupBuilder::scheduling`](crate::routing::SubscriptionGroupBuilder::scheduling).
/// In both modes a partition runs one job at a time, in offset order, and at most
/// `concurrency` jobs run at once across the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Scheduling {
    /// Each assigned partition flows on its own (the default): its messages are taken from
    /// its own librdkafka queue, a job per partition as soon as the partition is idle and a
    /// worker is free. A backlog on one partition never sits in front of another's, and a
    /// slow partition holds up nobody else. The listener keeps serving the client while
    /// jobs run; a revocation waits up to
    /// [`revocation_timeout`](crate::AppBuilder::revocation_timeout) for the revoked
    /// partitions' running jobs before it commits.
    #[default]
    Partition,
    /// Karafka's rule: the subscription group polls a batch (several partitions), runs its
    /// jobs, and polls again only once every one of them finished. A rebalance never
    /// happens while a job of the group runs; a lag on one partition or one slow partition
    /// holds up the group's others.
    Poll,
}

impl Scheduling {
    /// Its name, as `info` prints it: `partition` or `poll`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheduling::Partition => "partition",
            Scheduling::Poll => "poll",
        }
    }
}

impl std::str::FromStr for Scheduling {
    type Err = String;

    /// `partition` or `poll` (as [`as_str`](Scheduling::as_str) prints them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "partition" => Ok(Scheduling::Partition),
            "poll" => Ok(Scheduling::Poll),
            other => Err(format!(
                "unknown scheduling `{other}`: use `partition` or `poll`"
            )),
        }
    }
}

impl std::fmt::Display for Scheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ProcessingSettings {
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) pause_timeout: Duration,
    pub(crate) pause_max_timeout: Duration,
    pub(crate) pause_exponential: bool,
    /// Partition scheduling: how long a revocation waits for the revoked partitions' jobs.
    pub(crate) revocation_timeout: Duration,
    /// Partition scheduling: the bytes a subscription group may prefetch, over all its
    /// partitions.
    pub(crate) prefetch_budget: u64,
}
