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
use karafka_core::instrumentation::{ErrorKind, JobKind};

use crate::consumer::ErasedConsumer;
use crate::context::{ClientOps, JobInput};
use crate::message::{BatchView, PollBuffer};
use crate::processing::coordinator::Coordinator;
use crate::processing::executor::{Done, Failure, Job};
use crate::processing::group::GroupShared;
use crate::processing::outcome::{Outcomes, PartitionControl, Settled};
use crate::routing::TopicRoute;
use crate::split::{BatchSplitter, Group, SplitBatch, Tracker, valid_groups};

/// A partition's consumer instance with the last batch it got (the `revoked` hook gets it,
/// as in Karafka).
type Instance = (Box<dyn ErasedConsumer>, BatchView);

/// Which instance: its partition and virtual partition (0 without virtual partitions).
type InstanceKey = (TopicPartition, usize);

/// A split batch whose groups still run.
struct SplitRun {
    batch: BatchView,
    tracker: Arc<Tracker>,
    left: usize,
    collapsed: bool,
    failure: Option<Failure>,
    stored_before: Option<i64>,
}

/// One subscription group's jobs and outcomes. Lives on the thread that drives it (the
/// listener's, or the test's task).
pub(crate) struct Pipeline {
    shared: Arc<GroupShared>,
    ops: Arc<dyn ClientOps>,
    topics: HashMap<Arc<str>, Arc<TopicRoute>>,
    /// Consumer instances, one per partition (and virtual partition) that has had a job.
    instances: HashMap<InstanceKey, Instance>,
    /// Split batches (virtual partitions) whose groups still run, by partition.
    splits: HashMap<TopicPartition, SplitRun>,
    /// The last batches of instances running an `eofed` or `tick` hook (empty batches).
    parked: HashMap<InstanceKey, BatchView>,
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
            splits: HashMap::new(),
            parked: HashMap::new(),
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
        group: Option<Group>,
    ) -> JobInput {
        JobInput {
            tp,
            batch,
            coordinator,
            ops: self.ops.clone(),
            producer: self.shared.producer.clone(),
            monitor: self.shared.monitor.clone(),
            consumer_group: self.shared.route.consumer_group.clone(),
            instance: group.as_ref().map_or(0, |g| g.id),
            group,
        }
    }

    /// The instance of `tp` (virtual partition `id`): the held one, else a new one from the
    /// topic's factory.
    fn instance(
        &mut self,
        tp: &TopicPartition,
        id: usize,
        topic: &TopicRoute,
    ) -> Option<Box<dyn ErasedConsumer>> {
        self.instances
            .remove(&(tp.clone(), id))
            .map(|(consumer, _)| consumer)
            .or_else(|| topic.factory.as_ref().map(|make| make()))
    }

    /// The held instances of `tp`, taken out.
    fn take_instances(&mut self, tp: &TopicPartition) -> Vec<(usize, Instance)> {
        let keys: Vec<InstanceKey> = self
            .instances
            .keys()
            .filter(|(t, _)| t == tp)
            .cloned()
            .collect();
        let mut taken: Vec<(usize, Instance)> = keys
            .into_iter()
            .filter_map(|key| self.instances.remove(&key).map(|i| (key.1, i)))
            .collect();
        taken.sort_unstable_by_key(|(id, _)| *id);
        taken
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
            let instances = self.take_instances(&tp);
            if instances.is_empty() || self.shared.closing.load(Ordering::Acquire) {
                continue;
            }
            let Some(topic) = self.topics.get(&tp.topic).cloned() else {
                continue;
            };
            let coordinator = Arc::new(Coordinator::new(tp.clone()));
            coordinator.revoke();
            for (_, (consumer, last_batch)) in instances {
                jobs.push(Job {
                    kind: JobKind::Revoked,
                    topic: topic.clone(),
                    consumer,
                    input: self.input(tp.clone(), last_batch, coordinator.clone(), None),
                });
            }
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
            let base = range.start;
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
            if let Some(splitter) = topic.splitter.clone() {
                self.split_jobs(&mut jobs, tp, topic, batch, base, coordinator, &*splitter);
                continue;
            }
            let Some(consumer) = self.instance(&tp, 0, &topic) else {
                continue;
            };
            jobs.push(Job {
                kind: JobKind::Consume,
                topic,
                consumer,
                input: self.input(tp, batch, coordinator, None),
            });
        }
        jobs
    }

    /// The jobs of one partition's batch on a topic with a splitter (virtual partitions):
    /// one per group, or one collapsed job (in order, without what was already processed)
    /// while a collapse is in force.
    #[allow(clippy::too_many_arguments)] // one partition's batch and where it goes
    fn split_jobs(
        &mut self,
        jobs: &mut Vec<Job>,
        tp: TopicPartition,
        topic: Arc<TopicRoute>,
        batch: BatchView,
        base: usize,
        coordinator: Arc<Coordinator>,
        splitter: &dyn BatchSplitter,
    ) {
        let offsets: Vec<i64> = batch.iter().map(|r| r.offset()).collect();
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return;
        };
        let tracker = Arc::new(Tracker::new(offsets.clone(), base));
        let collapse = coordinator.collapse().filter(|c| first < c.until);
        let collapsed = collapse.is_some();
        let groups = match collapse {
            Some(collapse) => {
                // Already processed in a split batch: marked now, not processed again.
                let (skipped, rest): (Vec<usize>, Vec<usize>) = (0..offsets.len())
                    .partition(|&p| collapse.skip.binary_search(&offsets[p]).is_ok());
                if let Some(next) = tracker.mark(skipped) {
                    if coordinator.mark(next) {
                        self.ops.store_offset(&tp, next);
                    }
                }
                if rest.is_empty() {
                    coordinator.uncollapse_at(last + 1);
                    return;
                }
                vec![(
                    0,
                    rest.into_iter()
                        .filter_map(|p| u32::try_from(p).ok())
                        .collect(),
                )]
            }
            None => self.split(&tp, &batch, splitter),
        };
        let count = groups.len();
        self.splits.insert(
            tp.clone(),
            SplitRun {
                batch: batch.clone(),
                tracker: tracker.clone(),
                left: count,
                collapsed,
                failure: None,
                stored_before: coordinator.stored(),
            },
        );
        for (id, positions) in groups {
            let Some(consumer) = self.instance(&tp, id, &topic) else {
                self.splits.remove(&tp);
                return;
            };
            let view = batch.subset(&positions);
            let group = Group {
                id,
                groups: count,
                collapsed,
                positions: positions.into(),
                tracker: tracker.clone(),
            };
            jobs.push(Job {
                kind: JobKind::Consume,
                topic: topic.clone(),
                consumer,
                input: self.input(tp.clone(), view, coordinator.clone(), Some(group)),
            });
        }
    }

    /// The groups `splitter` makes of `batch`, or the whole batch as group 0 (and an error
    /// event) when it panics or its groups are not a partition of the batch.
    fn split(
        &self,
        tp: &TopicPartition,
        batch: &BatchView,
        splitter: &dyn BatchSplitter,
    ) -> Vec<(usize, Vec<u32>)> {
        let len = batch.len();
        let max_groups = splitter.max_groups(self.shared.settings.concurrency).max(1);
        let split = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            splitter.split(&SplitBatch::new(batch), max_groups)
        }));
        let problem = match split {
            Ok(Ok(groups)) => match valid_groups(groups, len, max_groups) {
                Ok(groups) => return groups,
                Err(problem) => problem,
            },
            Ok(Err(e)) => format!("it failed: {e}"),
            Err(panic) => format!(
                "it panicked: {}",
                crate::processing::executor::panic_message(panic)
            ),
        };
        self.shared.error(
            ErrorKind::VirtualPartitionsPartitioner,
            std::io::Error::other(format!(
                "{} could not split a batch of {tp} ({problem}); it is processed as one group",
                splitter.name()
            )),
            Some(tp),
        );
        let all: Vec<u32> = (0..len).filter_map(|p| u32::try_from(p).ok()).collect();
        vec![(0, all)]
    }

    /// `eofed` jobs for partitions whose end was reached.
    pub(crate) fn eof_jobs(&mut self, ends: Vec<TopicPartition>) -> Vec<Job> {
        ends.into_iter()
            .filter_map(|tp| self.idle_hook(JobKind::Eofed, tp))
            .collect()
    }

    /// The `tick` job of an idle partition (periodic jobs).
    pub(crate) fn tick_job(&mut self, tp: TopicPartition) -> Option<Job> {
        self.idle_hook(JobKind::Tick, tp)
    }

    /// A hook (`eofed`, `tick`) with an empty batch on a held instance of `tp` (with virtual
    /// partitions, the lowest id), else a new one. The instance's last batch waits in
    /// `parked` for its return (the `revoked` hook gets it).
    fn idle_hook(&mut self, kind: JobKind, tp: TopicPartition) -> Option<Job> {
        let topic = self.topics.get(&tp.topic).cloned()?;
        let coordinator = self.shared.coordinator(&tp);
        let id = self
            .instances
            .keys()
            .filter(|(t, _)| *t == tp)
            .map(|(_, id)| *id)
            .min()
            .unwrap_or(0);
        let consumer = match self.instances.remove(&(tp.clone(), id)) {
            Some((consumer, last)) => {
                self.parked.insert((tp.clone(), id), last);
                consumer
            }
            None => topic.factory.as_ref().map(|make| make())?,
        };
        let mut input = self.input(tp, BatchView::empty(), coordinator, None);
        input.instance = id;
        Some(Job {
            kind,
            topic,
            consumer,
            input,
        })
    }

    /// `shutdown` jobs, one per held instance (the instances go with them).
    pub(crate) fn shutdown_jobs(&mut self) -> Vec<Job> {
        let mut instances: Vec<(InstanceKey, Instance)> = self.instances.drain().collect();
        instances.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut jobs = Vec::new();
        for ((tp, _), (consumer, _)) in instances {
            let Some(topic) = self.topics.get(&tp.topic).cloned() else {
                continue;
            };
            let coordinator = self.shared.coordinator(&tp);
            jobs.push(Job {
                kind: JobKind::Shutdown,
                topic,
                consumer,
                input: self.input(tp, BatchView::empty(), coordinator, None),
            });
        }
        jobs
    }

    /// The `revoked` hook of a partition revoked while its consume or `eofed` job ran
    /// (partition scheduling): it runs on that job's instance, with that job's batch. None
    /// for other jobs, or once the group is closing.
    pub(crate) fn revoked_after(&mut self, done: Done) -> Option<Job> {
        let parked = self.parked.remove(&(done.tp.clone(), done.instance));
        if !matches!(done.kind, JobKind::Consume | JobKind::Eofed | JobKind::Tick)
            || self.shared.closing.load(Ordering::Acquire)
        {
            return None;
        }
        self.forget_split(&done);
        let coordinator = Arc::new(Coordinator::new(done.tp.clone()));
        coordinator.revoke();
        let batch = parked.unwrap_or(done.batch);
        Some(Job {
            kind: JobKind::Revoked,
            topic: done.topic,
            consumer: done.consumer,
            input: self.input(done.tp, batch, coordinator, None),
        })
    }

    /// The `revoked` hook of a group of a split batch that never started because its
    /// partition was revoked first (partition scheduling): it runs on that group's instance.
    pub(crate) fn revoked_unstarted(&mut self, job: Job) -> Option<Job> {
        let Job {
            kind,
            topic,
            consumer,
            input,
        } = job;
        if let Some(group) = &input.group {
            self.forget_group(&input.tp, group);
        }
        let parked = self.parked.remove(&(input.tp.clone(), input.instance));
        if !matches!(kind, JobKind::Consume | JobKind::Tick | JobKind::Eofed)
            || self.shared.closing.load(Ordering::Acquire)
        {
            return None;
        }
        let coordinator = Arc::new(Coordinator::new(input.tp.clone()));
        coordinator.revoke();
        let batch = parked.unwrap_or(input.batch);
        Some(Job {
            kind: JobKind::Revoked,
            topic,
            consumer,
            input: self.input(input.tp, batch, coordinator, None),
        })
    }

    /// Drops the last batches parked for `tp`'s hooks (a hook's end will not come back).
    pub(crate) fn forget_parked(&mut self, tp: &TopicPartition) {
        self.parked.retain(|(t, _), _| t != tp);
    }

    /// One group of a split batch of `tp` will not be settled (its partition was revoked):
    /// the batch's run goes once its last group ended.
    fn forget_group(&mut self, tp: &TopicPartition, group: &Group) {
        if let Some(run) = self.splits.get_mut(tp) {
            if Arc::ptr_eq(&run.tracker, &group.tracker) {
                run.left = run.left.saturating_sub(1);
                if run.left == 0 {
                    self.splits.remove(tp);
                }
            }
        }
    }

    /// Drops the split run of a revoked job's batch once its last group ended.
    fn forget_split(&mut self, done: &Done) {
        if let Some(group) = &done.group {
            self.forget_group(&done.tp, group);
        }
    }

    /// After a job: its instance is kept for the partition's next job (unless the partition
    /// was revoked meanwhile, or the job was its `revoked` or `shutdown` hook), and a consume
    /// job's outcome is settled (mark / retry / dead letter, then the consumer's seek or
    /// pause). Returns where the partition goes on once a consume job's batch was settled
    /// (after the last group of a split batch), None otherwise.
    pub(crate) fn after(
        &mut self,
        done: Done,
        partitions: &dyn PartitionControl,
    ) -> Option<Settled> {
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
            group,
            instance,
        } = done;
        match kind {
            JobKind::Consume if !coordinator.is_revoked() => {
                self.instances
                    .insert((tp.clone(), instance), (consumer, batch.clone()));
                match group {
                    Some(group) => self.group_ended(
                        &tp,
                        &topic,
                        &coordinator,
                        group,
                        outcome,
                        stored_before,
                        partitions,
                    ),
                    None => Some(self.outcomes(partitions).settle(
                        &tp,
                        &topic,
                        &batch,
                        &coordinator,
                        &outcome,
                        stored_before,
                        false,
                    )),
                }
            }
            JobKind::Eofed | JobKind::Tick => {
                let last = self.parked.remove(&(tp.clone(), instance)).unwrap_or(batch);
                // What the hook asked for (a seek, a pause) applies now, not to the next
                // batch.
                let intents = coordinator.take_intents();
                if !coordinator.is_revoked() {
                    self.outcomes(partitions)
                        .apply_hook_intents(&tp, &coordinator, intents);
                    self.instances.insert((tp, instance), (consumer, last));
                }
                None
            }
            JobKind::Consume => {
                if let Some(group) = &group {
                    self.forget_group(&tp, group);
                }
                None
            }
            _ => None,
        }
    }

    /// A group of a split batch ended: its messages are marked if it succeeded (with
    /// automatic offsets, unless the consumer seeked or paused); once every group ended, the
    /// batch is settled as one (retried collapsed if any group failed).
    #[allow(clippy::too_many_arguments)] // one group's end and where it goes
    fn group_ended(
        &mut self,
        tp: &TopicPartition,
        topic: &TopicRoute,
        coordinator: &Arc<Coordinator>,
        group: Group,
        outcome: Result<(), Failure>,
        stored_before: Option<i64>,
        partitions: &dyn PartitionControl,
    ) -> Option<Settled> {
        let run = self
            .splits
            .get_mut(tp)
            .filter(|run| Arc::ptr_eq(&run.tracker, &group.tracker))?;
        // A group that succeeded processed its messages, unless the batch was failing by
        // then: it may have stopped early (`Context::is_failing`), so only its own marks
        // count.
        if outcome.is_ok()
            && !group.tracker.is_failing()
            && !topic.manual_offset_management
            && !coordinator.peek_intents().took_control()
        {
            if let Some(next) = group.mark_all() {
                coordinator.mark_and_store(next, |next| self.ops.store_offset(tp, next));
            }
        }
        run.left = run.left.saturating_sub(1);
        run.stored_before = match (run.stored_before, stored_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Err(failure) = outcome {
            run.failure.get_or_insert(failure);
        }
        if run.left > 0 {
            return None;
        }
        let run = self.splits.remove(tp)?;
        let (_, last) = run.batch.offsets();
        let failed = run.failure.is_some();
        let outcome = run.failure.map_or(Ok(()), Err);
        let settled = self.outcomes(partitions).settle(
            tp,
            topic,
            &run.batch,
            coordinator,
            &outcome,
            run.stored_before,
            !run.collapsed,
        );
        if failed {
            // Retried collapsed from the first unmarked message, skipping what was marked.
            coordinator.collapse_until(last + 1, &run.tracker.marked_beyond());
        } else {
            coordinator.uncollapse_at(last + 1);
        }
        Some(settled)
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
