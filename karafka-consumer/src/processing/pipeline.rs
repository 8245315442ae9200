//! The processing pipeline of one subscription group: what a poll result becomes (jobs)
//! and what a finished job becomes (marks, retries, dead letters, seeks, pauses).
//!
//! It is the one copy of that path: the listener feeds it librdkafka's polls and runs its
//! jobs on the worker runtime; the test harness feeds it an in-memory log and runs the jobs
//! on the caller's task. Where messages come from ([`ClientOps`] for offsets,
//! [`PartitionControl`] for pause/resume/seek) and how jobs run are the callers'; which jobs
//! a batch makes and how their outcomes settle are here.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use karafka_core::TopicPartition;
use karafka_core::instrumentation::JobKind;

use crate::consumer::ErasedConsumer;
use crate::context::{ClientOps, JobInput};
use crate::message::{BatchView, PollBuffer};
use crate::processing::coordinator::Coordinator;
use crate::processing::executor::{Done, Job};
use crate::processing::group::GroupShared;
use crate::processing::outcome::{Outcomes, PartitionControl};
use crate::routing::TopicRoute;

/// A partition's consumer instance with the last batch it got (the `revoked` hook gets it,
/// as in Karafka).
type Instance = (Box<dyn ErasedConsumer>, BatchView);

/// One subscription group's jobs and outcomes. Lives on the thread that drives it (the
/// listener's, or the test's task).
pub(crate) struct Pipeline {
    shared: Arc<GroupShared>,
    ops: Arc<dyn ClientOps>,
    topics: HashMap<Arc<str>, Arc<TopicRoute>>,
    /// Consumer instances, one per partition that has had a job.
    instances: HashMap<TopicPartition, Instance>,
}

impl Pipeline {
    /// A pipeline for `shared`'s subscription group, storing offsets through `ops`.
    pub(crate) fn new(shared: Arc<GroupShared>, ops: Arc<dyn ClientOps>) -> Self {
        let topics = shared
            .route
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        Pipeline {
            shared,
            ops,
            topics,
            instances: HashMap::new(),
        }
    }

    /// Publishes how many instances are held (for tests of state eviction).
    pub(crate) fn publish_instances(&self) {
        self.shared
            .instances
            .store(self.instances.len(), Ordering::Release);
    }

    /// The routed topic `name`, if it is one of the group's.
    pub(crate) fn topic(&self, name: &str) -> Option<&Arc<TopicRoute>> {
        self.topics.get(name)
    }

    fn input(
        &self,
        tp: TopicPartition,
        batch: BatchView,
        coordinator: Arc<Coordinator>,
    ) -> JobInput {
        JobInput {
            tp,
            batch,
            coordinator,
            ops: self.ops.clone(),
            producer: self.shared.producer.clone(),
            monitor: self.shared.monitor.clone(),
            consumer_group: self.shared.route.consumer_group.clone(),
        }
    }

    /// The partition's instance: the held one, else a new one from the topic's factory.
    fn instance(
        &mut self,
        tp: &TopicPartition,
        topic: &TopicRoute,
    ) -> Option<Box<dyn ErasedConsumer>> {
        self.instances
            .remove(tp)
            .map(|(consumer, _)| consumer)
            .or_else(|| topic.factory.as_ref().map(|make| make()))
    }

    /// `revoked` jobs for the partitions taken away since the last call
    /// ([`GroupShared::revoke`]); their state is gone.
    pub(crate) fn revocation_jobs(&mut self) -> Vec<Job> {
        let revoked: Vec<(TopicPartition, bool)> = std::mem::take(
            &mut *self
                .shared
                .revocations
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut jobs = Vec::new();
        for (tp, _lost) in revoked {
            let Some((consumer, last_batch)) = self.instances.remove(&tp) else {
                continue;
            };
            if self.shared.closing.load(Ordering::Acquire) {
                continue;
            }
            let Some(topic) = self.topics.get(&tp.topic).cloned() else {
                continue;
            };
            let coordinator = Arc::new(Coordinator::new(tp.clone()));
            coordinator.revoke();
            jobs.push(Job {
                kind: JobKind::Revoked,
                topic,
                consumer,
                input: self.input(tp, last_batch, coordinator),
            });
        }
        jobs
    }

    /// One job per partition of a poll: `partitions` are `buffer`'s ranges of one partition
    /// each ([`PollBufferBuilder::finish`](crate::message::PollBufferBuilder::finish)); every
    /// job's batch is a view of the buffer. Messages of paused or revoked partitions are
    /// dropped: they are fetched again when the partition resumes (from its resume offset) or
    /// by its next owner.
    pub(crate) fn consume_jobs(
        &mut self,
        buffer: &Arc<PollBuffer>,
        partitions: Vec<Range<usize>>,
    ) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(partitions.len());
        for range in partitions {
            let batch = BatchView::new(buffer.clone(), range);
            let Some(first) = batch.first() else {
                continue;
            };
            let Some(topic) = self.topics.get(&**first.topic()).cloned() else {
                continue;
            };
            let tp = TopicPartition::new(topic.name.clone(), first.partition());
            let coordinator = self.shared.coordinator(&tp);
            if coordinator.is_paused() || coordinator.is_revoked() {
                continue;
            }
            let Some(consumer) = self.instance(&tp, &topic) else {
                continue;
            };
            jobs.push(Job {
                kind: JobKind::Consume,
                topic,
                consumer,
                input: self.input(tp, batch, coordinator),
            });
        }
        jobs
    }

    /// `eofed` jobs for partitions whose end was reached.
    pub(crate) fn eof_jobs(&mut self, ends: Vec<TopicPartition>) -> Vec<Job> {
        let mut jobs = Vec::new();
        for tp in ends {
            let Some(topic) = self.topics.get(&tp.topic).cloned() else {
                continue;
            };
            let coordinator = self.shared.coordinator(&tp);
            let Some(consumer) = self.instance(&tp, &topic) else {
                continue;
            };
            jobs.push(Job {
                kind: JobKind::Eofed,
                topic,
                consumer,
                input: self.input(tp, BatchView::empty(), coordinator),
            });
        }
        jobs
    }

    /// `shutdown` jobs, one per held instance (the instances go with them).
    pub(crate) fn shutdown_jobs(&mut self) -> Vec<Job> {
        let instances: Vec<(TopicPartition, Instance)> = self.instances.drain().collect();
        let mut jobs = Vec::new();
        for (tp, (consumer, _)) in instances {
            let Some(topic) = self.topics.get(&tp.topic).cloned() else {
                continue;
            };
            let coordinator = self.shared.coordinator(&tp);
            jobs.push(Job {
                kind: JobKind::Shutdown,
                topic,
                consumer,
                input: self.input(tp, BatchView::empty(), coordinator),
            });
        }
        jobs
    }

    /// The `revoked` hook of a partition revoked while its consume or `eofed` job ran
    /// (partition scheduling): it runs on that job's instance, with that job's batch. None
    /// for other jobs, or once the group is closing.
    pub(crate) fn revoked_after(&mut self, done: Done) -> Option<Job> {
        if !matches!(done.kind, JobKind::Consume | JobKind::Eofed)
            || self.shared.closing.load(Ordering::Acquire)
        {
            return None;
        }
        let coordinator = Arc::new(Coordinator::new(done.tp.clone()));
        coordinator.revoke();
        Some(Job {
            kind: JobKind::Revoked,
            topic: done.topic,
            consumer: done.consumer,
            input: self.input(done.tp, done.batch, coordinator),
        })
    }

    /// After a job: its instance is kept for the partition's next job (unless the partition
    /// was revoked meanwhile, or the job was its `revoked` or `shutdown` hook), and a consume
    /// job's outcome is settled (mark / retry / dead letter, then the consumer's seek or
    /// pause).
    pub(crate) fn after(&mut self, done: Done, partitions: &dyn PartitionControl) {
        let Done {
            kind,
            tp,
            topic,
            consumer,
            batch,
            coordinator,
            outcome,
            stored_before,
            took: _,
        } = done;
        match kind {
            JobKind::Consume if !coordinator.is_revoked() => {
                self.instances.insert(tp.clone(), (consumer, batch.clone()));
                self.outcomes(partitions).settle(
                    &tp,
                    &topic,
                    &batch,
                    &coordinator,
                    &outcome,
                    stored_before,
                );
            }
            JobKind::Eofed if !coordinator.is_revoked() => {
                self.instances.insert(tp, (consumer, batch));
            }
            _ => {}
        }
    }

    /// What settles outcomes, with `partitions` for pauses and seeks.
    pub(crate) fn outcomes<'a>(&'a self, partitions: &'a dyn PartitionControl) -> Outcomes<'a> {
        Outcomes {
            shared: &self.shared,
            ops: self.ops.as_ref(),
            partitions,
        }
    }

    /// Resumes every partition whose pause ended by `now`; returns them.
    pub(crate) fn resume_due(
        &self,
        now: Instant,
        partitions: &dyn PartitionControl,
    ) -> Vec<TopicPartition> {
        let due: Vec<Arc<Coordinator>> = self
            .shared
            .coordinators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.pause().is_some_and(|p| p.until <= now))
            .cloned()
            .collect();
        let outcomes = self.outcomes(partitions);
        for coordinator in &due {
            outcomes.resume(&coordinator.tp.clone(), coordinator);
        }
        due.into_iter().map(|c| c.tp.clone()).collect()
    }

    /// When the earliest pause ends.
    pub(crate) fn next_resume(&self) -> Option<Instant> {
        self.shared
            .coordinators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|c| c.pause().map(|p| p.until))
            .min()
    }
}
