//! The state of one subscription group that its listener, its rebalance callbacks, its jobs'
//! outcomes, the app's health and `/metrics` share; and the health check over it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karafka_core::TopicPartition;
use karafka_core::instrumentation::{ErrorKind, ErrorOccurred, Event, Monitor};
use karafka_producer::Producer;

use crate::processing::coordinator::Coordinator;
use crate::routing::SubscriptionGroupRoute;
use crate::settings::ProcessingSettings;
use crate::status::{Control, Health, JobLiveness, ListenerLiveness, Liveness};

/// The shared state of the app's active connections (retired ones leave it).
pub(crate) type ActiveGroups = Arc<Mutex<Vec<Arc<GroupShared>>>>;

/// State of one connection of a subscription group shared by its listener, the rebalance
/// callbacks (which run on the listener thread, inside `poll`) and its jobs.
pub(crate) struct GroupShared {
    pub(crate) route: Arc<SubscriptionGroupRoute>,
    pub(crate) monitor: Monitor,
    pub(crate) producer: Producer,
    pub(crate) settings: ProcessingSettings,
    pub(crate) control: Arc<Control>,
    /// Every assigned partition that has had a batch. Evicted on revocation.
    pub(crate) coordinators: Mutex<HashMap<TopicPartition, Arc<Coordinator>>>,
    /// Partitions revoked (true: lost) during the last poll, for the listener to act on.
    pub(crate) revocations: Mutex<Vec<(TopicPartition, bool)>>,
    /// Set once the listener shuts down: the final revocation runs no hooks.
    pub(crate) closing: AtomicBool,
    /// How many consumer instances the listener holds (published after every cycle).
    pub(crate) instances: std::sync::atomic::AtomicUsize,
    /// When the listener last polled (ms since the app started).
    pub(crate) last_poll_ms: std::sync::atomic::AtomicU64,
    /// While the listener runs a poll's jobs (poll scheduling): it does not loop meanwhile,
    /// and may first wait for worker permits other listeners' jobs hold.
    pub(crate) executing: AtomicBool,
    /// Set when the connection is stopped on its own (its family scaled down).
    pub(crate) retired: AtomicBool,
    /// What its latest statistics said of its group membership.
    pub(crate) observed: Mutex<Option<crate::connections::Observed>>,
}

impl GroupShared {
    /// Whether its listener should stop: the app stops, or this connection was retired.
    pub(crate) fn should_stop(&self) -> bool {
        self.control.stopping() || self.retired.load(Ordering::Acquire)
    }

    /// Forgets the state of `revoked` partitions (their coordinators are marked revoked, so
    /// a job still holding one cannot mark) and queues them for their `revoked` hooks
    /// ([`Pipeline::revocation_jobs`](crate::processing::pipeline::Pipeline::revocation_jobs)).
    pub(crate) fn revoke(&self, revoked: &[TopicPartition], lost: bool) {
        let mut coordinators = self.coordinators.lock().unwrap_or_else(|p| p.into_inner());
        let mut revocations = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        for tp in revoked {
            if let Some(c) = coordinators.remove(tp) {
                c.revoke();
            }
            revocations.push((tp.clone(), lost));
        }
    }

    pub(crate) fn error(
        &self,
        kind: ErrorKind,
        error: impl std::error::Error + Send + Sync + 'static,
        tp: Option<&TopicPartition>,
    ) {
        self.monitor.emit_with(|| {
            let mut e =
                ErrorOccurred::new(kind, error).source_id(self.route.consumer_group.clone());
            if let Some(tp) = tp {
                e = e.at(tp.topic.clone(), Some(tp.partition), None);
            }
            Event::ErrorOccurred(e)
        });
    }

    pub(crate) fn coordinator(&self, tp: &TopicPartition) -> Arc<Coordinator> {
        self.coordinators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tp.clone())
            .or_insert_with(|| Arc::new(Coordinator::new(tp.clone())))
            .clone()
    }
}

/// What [`Running::liveness`](crate::Running::liveness) reports.
pub(crate) fn liveness(control: &Control, groups: &[Arc<GroupShared>]) -> Liveness {
    let now = control.now_ms();
    let jobs: Vec<JobLiveness> = control
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|job| JobLiveness {
            listener: job.listener.clone(),
            kind: job.job,
            topic_partition: job.tp.clone(),
            running_for: job.started.elapsed(),
            long_running: job.long_running,
        })
        .collect();
    let listeners = groups
        .iter()
        .map(|group| {
            let name: Arc<str> =
                format!("{}.{}", group.route.consumer_group, group.route.name).into();
            let last = group.last_poll_ms.load(Ordering::Acquire);
            let in_flight = jobs.iter().filter(|j| j.listener == name).count();
            ListenerLiveness {
                busy: in_flight > 0 || group.executing.load(Ordering::Acquire),
                jobs: in_flight,
                name,
                since_poll: Duration::from_millis(now.saturating_sub(last)),
            }
        })
        .collect();
    Liveness {
        status: control.status(),
        listeners,
        jobs,
    }
}

pub(crate) fn health(
    control: &Control,
    groups: &[Arc<GroupShared>],
    job_timeout: Duration,
) -> Health {
    let mut reasons = Vec::new();
    let now = control.now_ms();
    for group in groups {
        let limit_ms: u64 = group
            .route
            .kafka
            .get("max.poll.interval.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000);
        let last = group.last_poll_ms.load(Ordering::Acquire);
        let silent = now.saturating_sub(last);
        if silent > limit_ms {
            reasons.push(format!(
                "listener {}.{} has not polled for {silent} ms (max.poll.interval.ms is {limit_ms})",
                group.route.consumer_group, group.route.name
            ));
        }
    }
    for job in control
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let running = job.started.elapsed();
        // A long-running job may run for as long as it needs (the listener keeps polling).
        if running > job_timeout && !job.long_running {
            reasons.push(format!(
                "job {} {} offsets {}..={} has run for {running:?} (limit {job_timeout:?})",
                job.job.as_str(),
                job.tp,
                job.offsets.0,
                job.offsets.1
            ));
        }
    }
    Health {
        healthy: reasons.is_empty(),
        status: control.status(),
        reasons,
    }
}
