//! Partition scheduling ([`Scheduling::Partition`](crate::Scheduling::Partition)): each
//! assigned partition of a subscription group flows on its own.
//!
//! Each assigned partition's messages go to its own librdkafka queue, split from the
//! consumer queue in the rebalance callback before the partition's fetching starts. The
//! listener thread takes a batch (up to `max_messages`, what is already fetched: it never
//! waits for more) from a partition's queue when the partition is idle (no job of it runs or
//! waits, it is not paused) and a worker permit is free, and hands the job to the worker
//! runtime without waiting for it. Meanwhile it serves the consumer queue (rebalances,
//! errors, statistics; polling it also keeps the member within `max.poll.interval.ms`) and
//! settles jobs as they end. It sleeps until something happens: a partition queue that was
//! empty got messages (librdkafka's non-empty callback), the consumer queue got an event, a
//! job ended, a permit was freed, a pause ends, or `max_wait_time` passed (then it also
//! looks at every idle partition: the timed re-check that covers a wake-up that never came).
//!
//! A revocation (inside `poll`, see [`RebalanceHooks`]) waits up to `revocation_timeout` for
//! the running jobs of the revoked partitions and settles them, so their batches are marked
//! before the revocation commits. A job still running past it keeps running; its
//! coordinator is revoked with the others (its marks return false), and its `revoked` hook
//! runs on its instance once it ends. A partition assigned again meanwhile starts only after
//! that hook.
//!
//! Split queues, as librdkafka 2.12 and rdkafka 0.39 behave (read in their sources):
//! - a split sets the queue's app-forward flag, which survives revocation and assignment
//!   (fetching again never forwards it back to the consumer queue), so each partition is
//!   split once and its queue kept for the client's whole life: dropping it while the
//!   partition is assigned would leave the partition unread (rust-rdkafka #535), and
//!   dropping a second handle of a queue split again switches off the first one's wake-up
//!   (both set the one librdkafka queue's callback);
//! - the non-empty callback fires only when a queue goes from empty to non-empty (unreleased
//!   rust-rdkafka #840 is about a lost wake-up there), so a queue left non-empty (a batch
//!   took `max_messages` of more, or a poll stopped early) is taken from again when its job
//!   ends, and every idle partition is looked at every `max_wait_time`;
//! - the callback runs on a librdkafka thread holding the queue's lock: it only sends on a
//!   channel.

use std::collections::{HashMap, VecDeque};
use std::future::Future as _;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use karafka_core::instrumentation::{ErrorKind, Event, JobKind};
use karafka_core::{TopicPartition, native};
use rdkafka::Message as _;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError as RdKafkaError;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::client::{self, ClientPartitions, GroupContext, RebalanceHooks};
use crate::message::PollBufferBuilder;
use crate::processing::executor::{self, Done, Job, JobCost};
use crate::processing::group::GroupShared;
use crate::processing::pipeline::Pipeline;

/// What wakes a partition-scheduling listener.
pub(crate) enum Wake {
    /// The consumer queue got an event (rebalance, error, statistics, commit result).
    Main,
    /// A partition's queue got messages.
    Partition(TopicPartition),
    /// A job ended.
    Done(Box<Done>),
    /// A job's task was dropped before it ended (its runtime shut down): its instance is lost.
    Lost(TopicPartition),
    /// A worker permit was freed while the listener waited for one.
    Permit(OwnedSemaphorePermit),
}

/// The callback of the consumer queue: wakes the listener.
pub(crate) fn main_waker(tx: Sender<Wake>) -> impl Fn() + Send + Sync + 'static {
    move || {
        let _ = tx.send(Wake::Main);
    }
}

/// One partition's split queue, kept for the client's life (see the module doc).
struct Slot {
    queue: PartitionQueue<GroupContext>,
    assigned: bool,
    /// Waiting in `Flow::ready`.
    queued: bool,
    /// The end of the partition was reached right after its running job's messages: an
    /// `eofed` job follows that job, on its instance.
    eof_after: bool,
}

/// What a partition-scheduling listener needs from its [`Listener`](super::listener).
pub(crate) struct Setup {
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<GroupShared>,
    pub(crate) consumer: Arc<BaseConsumer<GroupContext>>,
    pub(crate) pipeline: Pipeline,
    pub(crate) runtime: Handle,
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) eof_enabled: bool,
    pub(crate) tx: Sender<Wake>,
    pub(crate) rx: Receiver<Wake>,
}

/// The state of a partition-scheduling listener, shared by its thread and the rebalance
/// callbacks (which run on that thread, inside `poll`: the thread never holds the lock
/// while it polls the consumer queue). Empty before the listener runs and after it shut
/// down, so the client's context no longer reaches the client (the queues and the pipeline
/// hold it).
#[derive(Default)]
pub(crate) struct FlowCell(Mutex<Option<Flow>>);

impl FlowCell {
    fn lock(&self) -> MutexGuard<'_, Option<Flow>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RebalanceHooks for FlowCell {
    fn assigning(&self, partitions: &[TopicPartition]) {
        if let Some(flow) = self.lock().as_mut() {
            flow.assigning(partitions);
        }
    }

    fn revoking(&self, partitions: &[TopicPartition], lost: bool) {
        if let Some(flow) = self.lock().as_mut() {
            flow.revoking(partitions, lost);
        }
    }
}

struct Flow {
    name: Arc<str>,
    shared: Arc<GroupShared>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    partitions: ClientPartitions,
    pipeline: Pipeline,
    runtime: Handle,
    semaphore: Arc<Semaphore>,
    eof_enabled: bool,
    tx: Sender<Wake>,
    rx: Receiver<Wake>,
    slots: HashMap<TopicPartition, Slot>,
    /// Partitions that may have messages, in the order they became so.
    ready: VecDeque<TopicPartition>,
    /// Jobs running per partition (several for the groups of a split batch).
    running: HashMap<TopicPartition, usize>,
    /// Groups of split batches (virtual partitions) waiting for a permit; their partitions
    /// take no new batch meanwhile.
    groups: VecDeque<Job>,
    /// Hooks (`revoked`, `eofed`, `shutdown`) waiting for a permit or for their partition's
    /// running job; their partitions take no consume job meanwhile.
    hooks: VecDeque<Job>,
    /// What came while a revocation waited for its jobs, handled after the poll.
    deferred: Vec<Wake>,
    spare: Option<OwnedSemaphorePermit>,
    waiting_for_permit: bool,
    quiet: bool,
    /// How long each partition's consume jobs take, on average: those of a partition known
    /// to be cheap start on the listener thread (a hand-off to a worker and back costs more
    /// than they do).
    costs: HashMap<TopicPartition, JobCost>,
    /// Assigned partitions of topics with periodic jobs: when their last job started or
    /// ended (or they were assigned).
    idle_since: HashMap<TopicPartition, Instant>,
}

/// Runs a partition-scheduling listener until the app stops, then shuts it down: its
/// running jobs end, `shutdown` hooks run, the processed offsets are committed and the
/// client leaves the group.
pub(crate) fn run(cell: Arc<FlowCell>, setup: Setup) {
    let consumer = setup.consumer.clone();
    let shared = setup.shared.clone();
    let max_wait = shared.route.max_wait_time;
    *cell.lock() = Some(Flow {
        partitions: ClientPartitions(setup.consumer.clone()),
        name: setup.name,
        shared: setup.shared,
        consumer: setup.consumer,
        pipeline: setup.pipeline,
        runtime: setup.runtime,
        semaphore: setup.semaphore,
        eof_enabled: setup.eof_enabled,
        tx: setup.tx,
        rx: setup.rx,
        slots: HashMap::new(),
        ready: VecDeque::new(),
        running: HashMap::new(),
        groups: VecDeque::new(),
        hooks: VecDeque::new(),
        deferred: Vec::new(),
        spare: None,
        waiting_for_permit: false,
        quiet: false,
        costs: HashMap::new(),
        idle_since: HashMap::new(),
    });
    let queue = QueueLength::consumer(&consumer);
    let mut next_sweep = Instant::now() + max_wait;
    let mut announced_quiet = false;
    while !shared.should_stop() {
        shared
            .last_poll_ms
            .store(shared.control.now_ms(), Ordering::Release);
        // Rebalance callbacks run in here and lock the cell themselves.
        serve(&consumer, queue.as_ref(), &cell, &shared);
        let mut guard = cell.lock();
        let Some(flow) = guard.as_mut() else { break };
        let now = Instant::now();
        let sweep = now >= next_sweep;
        if sweep {
            next_sweep = now + max_wait;
        }
        if shared.control.quieting() && !flow.quiet {
            flow.quiet = true;
            flow.pause_assignment();
        }
        flow.step(sweep);
        if flow.quiet
            && !announced_quiet
            && flow.running.is_empty()
            && flow.hooks.is_empty()
            && flow.groups.is_empty()
        {
            // Quiet once nothing of this listener runs any more.
            announced_quiet = true;
            shared.control.listener_quiet();
        }
        let mut wait = next_sweep.saturating_duration_since(Instant::now());
        if !flow.quiet {
            for at in [flow.pipeline.next_resume(), flow.next_tick()]
                .into_iter()
                .flatten()
            {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
        }
        flow.wait(wait);
    }
    drop(queue);
    shutdown(&cell, &consumer, &shared);
}

/// A handle of a client's consumer queue, only to read its length.
struct QueueLength(*mut rdkafka_sys::rd_kafka_queue_t);

// SAFETY: a librdkafka queue handle may be used from any thread (every queue operation takes
// the queue's lock); this one is only read and destroyed.
#[allow(unsafe_code)]
unsafe impl Send for QueueLength {}

impl QueueLength {
    fn consumer(consumer: &BaseConsumer<GroupContext>) -> Option<Self> {
        // SAFETY: the client handle is live (borrowed from `consumer`); the returned queue
        // handle holds its own reference and is destroyed once, in `drop`, before the
        // caller drops the client.
        #[allow(unsafe_code)]
        let queue =
            unsafe { rdkafka_sys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        (!queue.is_null()).then_some(QueueLength(queue))
    }

    fn len(&self) -> usize {
        // SAFETY: `self.0` is a live queue handle until `drop`.
        #[allow(unsafe_code)]
        unsafe {
            rdkafka_sys::rd_kafka_queue_length(self.0)
        }
    }
}

impl Drop for QueueLength {
    fn drop(&mut self) {
        // SAFETY: destroyed once; the client is still alive (see `consumer`).
        #[allow(unsafe_code)]
        unsafe {
            rdkafka_sys::rd_kafka_queue_destroy(self.0)
        }
    }
}

/// Polls the consumer queue until it is empty: rebalance callbacks, errors, statistics. A
/// message here belongs to a partition not split yet (it should not happen: partitions are
/// split before their assignment); it is fetched again through its own queue.
fn serve(
    consumer: &BaseConsumer<GroupContext>,
    queue: Option<&QueueLength>,
    cell: &FlowCell,
    shared: &GroupShared,
) {
    // A consumed rebalance or commit event also ends a poll with nothing: poll again while
    // the queue holds more (bounded, in case events keep coming).
    for _ in 0..64 {
        match consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                let tp = TopicPartition::new(m.topic(), m.partition());
                let offset = m.offset();
                drop(m);
                if let Some(flow) = cell.lock().as_mut() {
                    flow.stray(tp, offset);
                }
            }
            Some(Err(e)) => shared.error(
                ErrorKind::ConnectionClientPoll,
                native::kafka_error("poll", &e),
                None,
            ),
            None => {
                if queue.is_none_or(|q| q.len() == 0) {
                    break;
                }
            }
        }
    }
}

fn shutdown(cell: &FlowCell, consumer: &Arc<BaseConsumer<GroupContext>>, shared: &GroupShared) {
    let mut guard = cell.lock();
    if let Some(flow) = guard.as_mut() {
        flow.drain();
        let jobs = flow.pipeline.shutdown_jobs();
        flow.hooks.extend(jobs);
        flow.drain();
    }
    shared.closing.store(true, Ordering::Release);
    // The queues and the pipeline hold the client: drop them first (the rebalance callbacks
    // of the commit's rejoin, if any, and the final revocation find the cell empty). The
    // caller's client reference goes last, which closes the client: it leaves the group
    // (that final revocation commits again).
    let flow = guard.take();
    drop(guard);
    drop(flow);
    client::commit_at_shutdown(consumer, shared);
}

impl Flow {
    /// Acts on what woke the listener, runs due hooks and resumes, and starts jobs.
    fn step(&mut self, sweep: bool) {
        for wake in std::mem::take(&mut self.deferred) {
            self.on(wake);
        }
        while let Ok(wake) = self.rx.try_recv() {
            self.on(wake);
        }
        for job in self.pipeline.revocation_jobs() {
            self.hooks.push_back(job);
        }
        if self.quiet {
            // Quiet: the assignment stays paused (partitions assigned since included, at
            // each re-check); running jobs end and are settled, hooks run, no new batch is
            // taken.
            if sweep {
                self.pause_assignment();
            }
        } else {
            for tp in self.pipeline.resume_due(Instant::now(), &self.partitions) {
                self.mark_ready(tp);
            }
            if sweep {
                let idle: Vec<TopicPartition> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.assigned && !s.queued)
                    .map(|(tp, _)| tp.clone())
                    .collect();
                for tp in idle {
                    self.mark_ready(tp);
                }
            }
            self.due_ticks(Instant::now());
        }
        self.dispatch();
        // A permit kept for nothing would starve the app's other listeners.
        self.spare = None;
        self.pipeline.publish_instances();
    }

    /// Pauses the whole assignment in librdkafka (quiet).
    fn pause_assignment(&self) {
        if let Ok(assignment) = self.consumer.assignment() {
            if assignment.count() > 0 {
                let _ = self.consumer.pause(&assignment);
            }
        }
    }

    /// Sleeps until something wakes the listener, at most `timeout`.
    fn wait(&mut self, timeout: Duration) {
        // More to do at once: wakes already here, or partitions made ready by jobs that ran
        // on this thread (unless they wait for a permit, which wakes this thread; and not
        // while quiet, when no batch is taken).
        let ready = !self.ready.is_empty() && !self.waiting_for_permit && !self.quiet;
        if !self.deferred.is_empty() || ready {
            return;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(wake) => self.deferred.push(wake),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }

    fn on(&mut self, wake: Wake) {
        match wake {
            // Served at the top of the loop.
            Wake::Main => {}
            Wake::Partition(tp) => self.mark_ready(tp),
            Wake::Done(done) => self.finished(*done),
            Wake::Lost(tp) => {
                self.ended(&tp);
                self.pipeline.forget_parked(&tp);
                self.shared.error(
                    ErrorKind::WorkerProcess,
                    std::io::Error::other(
                        "a job's task was dropped before it ended (the worker runtime shut \
                         down): its consumer instance is lost and made again for the next batch",
                    ),
                    Some(&tp),
                );
                self.mark_ready(tp);
            }
            Wake::Permit(permit) => {
                self.waiting_for_permit = false;
                if self.spare.is_none() {
                    self.spare = Some(permit);
                }
            }
        }
    }

    fn mark_ready(&mut self, tp: TopicPartition) {
        if let Some(slot) = self.slots.get_mut(&tp) {
            if slot.assigned && !slot.queued {
                slot.queued = true;
                self.ready.push_back(tp);
            }
        }
    }

    fn busy(&self, tp: &TopicPartition) -> bool {
        self.running.contains_key(tp)
            || self.hooks.iter().any(|j| &j.input.tp == tp)
            || self.groups.iter().any(|j| &j.input.tp == tp)
    }

    fn paused(&self, tp: &TopicPartition) -> bool {
        self.shared
            .coordinators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tp)
            .is_some_and(|c| c.is_paused())
    }

    /// A worker permit: the one kept, a free one, or none (then a task waits for one and
    /// wakes the listener).
    fn permit(&mut self) -> Option<OwnedSemaphorePermit> {
        if let Some(permit) = self.spare.take() {
            return Some(permit);
        }
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        if !self.waiting_for_permit {
            self.waiting_for_permit = true;
            let semaphore = self.semaphore.clone();
            let tx = self.tx.clone();
            self.runtime.spawn(async move {
                if let Ok(permit) = semaphore.acquire_owned().await {
                    let _ = tx.send(Wake::Permit(permit));
                }
            });
        }
        None
    }

    /// Starts hooks whose partitions are idle, then a consume job for each ready partition,
    /// while permits last.
    fn dispatch(&mut self) {
        while let Some(i) = self
            .hooks
            .iter()
            .position(|j| !self.running.contains_key(&j.input.tp))
        {
            if matches!(self.hooks[i].kind, JobKind::Tick | JobKind::Eofed)
                && self.hooks[i].input.coordinator.is_revoked()
            {
                // Revoked before it ran: no tick or eofed; its instance gets its `revoked`
                // hook.
                if let Some(job) = self.hooks.remove(i) {
                    if let Some(hook) = self.pipeline.revoked_unstarted(job) {
                        self.hooks.push_back(hook);
                    }
                }
                continue;
            }
            let Some(permit) = self.permit() else { return };
            if let Some(job) = self.hooks.remove(i) {
                self.spawn(job, permit);
            }
        }
        while let Some(job) = self.groups.pop_front() {
            if job.input.coordinator.is_revoked() {
                // Revoked before it started: it never runs (another member owns the
                // partition); its instance gets its `revoked` hook.
                if let Some(hook) = self.pipeline.revoked_unstarted(job) {
                    self.hooks.push_back(hook);
                }
                continue;
            }
            let Some(permit) = self.permit() else {
                self.groups.push_front(job);
                return;
            };
            self.spawn(job, permit);
        }
        if self.quiet {
            return;
        }
        for _ in 0..self.ready.len() {
            let Some(tp) = self.ready.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&tp) else {
                continue;
            };
            slot.queued = false;
            if !slot.assigned || self.busy(&tp) || self.paused(&tp) {
                // Marked ready again when its job ends or its pause does.
                continue;
            }
            let Some(permit) = self.permit() else {
                self.mark_ready_front(tp);
                return;
            };
            let mut jobs = self.take(&tp).into_iter();
            match jobs.next() {
                Some(job) => {
                    // The other groups of a split batch wait for permits of their own.
                    self.groups.extend(jobs);
                    self.spawn(job, permit);
                    while let Some(job) = self.groups.pop_front() {
                        let Some(permit) = self.permit() else {
                            self.groups.push_front(job);
                            return;
                        };
                        self.spawn(job, permit);
                    }
                }
                None => self.spare = Some(permit),
            }
        }
    }

    /// Queues the `tick` of every assigned partition of a periodic topic that has had no
    /// job for its interval (paused ones only as its `during_pause`/`during_retry` say).
    fn due_ticks(&mut self, now: Instant) {
        if self.idle_since.is_empty() {
            return;
        }
        let due: Vec<TopicPartition> = self
            .idle_since
            .iter()
            .filter(|(tp, since)| {
                self.periodic(tp)
                    .is_some_and(|p| now >= **since + p.interval && self.may_tick(tp, &p))
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            self.idle_since.insert(tp.clone(), now);
            if let Some(job) = self.pipeline.tick_job(tp) {
                self.hooks.push_back(job);
            }
        }
    }

    /// When the next `tick` is due, if any partition is waiting for one.
    fn next_tick(&self) -> Option<Instant> {
        self.idle_since
            .iter()
            .filter_map(|(tp, since)| {
                let periodic = self.periodic(tp)?;
                // Busy or paused without ticking: its job's end or its pause's end wakes
                // the loop.
                self.may_tick(tp, &periodic)
                    .then_some(*since + periodic.interval)
            })
            .min()
    }

    fn periodic(&self, tp: &TopicPartition) -> Option<crate::jobs::Periodic> {
        self.pipeline.topic(&tp.topic).and_then(|t| t.periodic)
    }

    /// Whether `tp` may tick now: assigned, no job of it running or waiting, and not paused
    /// unless the topic ticks during that kind of pause.
    fn may_tick(&self, tp: &TopicPartition, periodic: &crate::jobs::Periodic) -> bool {
        if !self.slots.get(tp).is_some_and(|s| s.assigned) || self.busy(tp) {
            return false;
        }
        let pause = self
            .shared
            .coordinators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tp)
            .and_then(|c| c.pause());
        match pause {
            None => true,
            Some(pause) if pause.retry => periodic.during_retry,
            Some(_) => periodic.during_pause.unwrap_or(true),
        }
    }

    fn mark_ready_front(&mut self, tp: TopicPartition) {
        if let Some(slot) = self.slots.get_mut(&tp) {
            slot.queued = true;
            self.ready.push_front(tp);
        }
    }

    /// The next batch of `tp` from its queue, as its consume job (one per group of a split
    /// batch), or an `eofed` job when the partition's end came with no message; none when
    /// the queue had nothing.
    fn take(&mut self, tp: &TopicPartition) -> Vec<Job> {
        let max_messages = self.shared.route.max_messages;
        let started = Instant::now();
        let Some(slot) = self.slots.get(tp) else {
            return Vec::new();
        };
        // Nothing is allocated for an empty queue (the re-check looks at idle ones).
        let Some(first) = slot.queue.poll(Duration::ZERO) else {
            return Vec::new();
        };
        let client: Arc<dyn Send + Sync> = self.consumer.clone();
        let mut buffer = PollBufferBuilder::native(max_messages.min(8192), client);
        let name = self
            .pipeline
            .topic(&tp.topic)
            .map_or_else(|| tp.topic.clone(), |t| t.name.clone());
        let topic = buffer.topic(&name);
        let mut eof = false;
        let mut next = Some(first);
        while buffer.len() < max_messages {
            let polled = match next.take() {
                Some(polled) => Some(polled),
                None => slot.queue.poll(Duration::ZERO),
            };
            match polled {
                Some(Ok(m)) => {
                    // SAFETY: `m` was polled from a queue of `self.consumer`, the client
                    // `buffer` was made with.
                    #[allow(unsafe_code)]
                    unsafe {
                        buffer.push_native(topic, m);
                    }
                }
                Some(Err(RdKafkaError::PartitionEOF(_))) => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => self.shared.error(
                    ErrorKind::ConnectionClientPoll,
                    native::kafka_error(format!("poll {tp}"), &e),
                    Some(tp),
                ),
                None => break,
            }
        }
        let eofed = eof && self.eof_enabled;
        if buffer.is_empty() {
            return if eofed {
                self.pipeline.eof_jobs(vec![tp.clone()])
            } else {
                Vec::new()
            };
        }
        let messages = buffer.len();
        let (buffer, ranges) = buffer.finish(SystemTime::now());
        let jobs = self.pipeline.consume_jobs(&buffer, ranges);
        if jobs.is_empty() {
            // Nothing to run (a collapsed batch whose messages were all processed before):
            // the partition takes its next batch at once, and its end is still announced.
            self.mark_ready(tp.clone());
            if eofed {
                return self.pipeline.eof_jobs(vec![tp.clone()]);
            }
        }
        let shared = &self.shared;
        shared.monitor.emit_with(|| Event::BatchReceived {
            consumer_group: shared.route.consumer_group.clone(),
            subscription_group: shared.route.name.clone(),
            messages,
            partitions: 1,
            duration: started.elapsed(),
        });
        if !jobs.is_empty() && eofed {
            if let Some(slot) = self.slots.get_mut(tp) {
                slot.eof_after = true;
            }
        }
        jobs
    }

    /// Runs `job` on the worker runtime; its end comes back as [`Wake::Done`].
    ///
    /// A consume job of a partition whose jobs are known to be cheap ([`JobCost`]) is first
    /// polled once here: a job that completes without waiting is settled at once, with no
    /// hand-off; one that waits on anything (IO, a timer, a yield) moves to a worker at that
    /// point, so it never holds this thread while it waits. Only a job of a cheap partition
    /// that turns out slow without ever awaiting holds this thread for its duration.
    fn spawn(&mut self, job: Job, permit: OwnedSemaphorePermit) {
        let tp = job.input.tp.clone();
        let kind = job.kind;
        if let Some(since) = self.idle_since.get_mut(&tp) {
            *since = Instant::now();
        }
        let cheap = kind == JobKind::Consume && self.costs.get(&tp).is_some_and(JobCost::cheap);
        let mut run = Box::pin(executor::run(
            job,
            self.shared.monitor.clone(),
            self.shared.control.clone(),
            self.name.clone(),
        ));
        // Counted before it runs: a job that ends inline is uncounted by `finished`, like
        // any other (the groups of a split batch count together).
        *self.running.entry(tp.clone()).or_default() += 1;
        if cheap {
            // Inside the runtime's context, so timers and IO register with its drivers; the
            // no-op waker is never needed: a job that returns Pending is spawned, and a new
            // task is polled at once, registering its own waker.
            let _runtime = self.runtime.enter();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(done) = run.as_mut().poll(&mut cx) {
                drop(permit);
                self.finished(done);
                return;
            }
        }
        let report = Report {
            tx: self.tx.clone(),
            tp: Some(tp),
        };
        self.runtime.spawn(async move {
            let done = run.await;
            drop(permit);
            report.done(done);
        });
    }

    /// One job of `tp` is no longer running.
    fn ended(&mut self, tp: &TopicPartition) {
        if let Some(count) = self.running.get_mut(tp) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.running.remove(tp);
            }
        }
    }

    /// Settles an ended job and makes its partition ready again.
    fn finished(&mut self, done: Done) {
        let tp = done.tp.clone();
        let kind = done.kind;
        self.ended(&tp);
        if let Some(since) = self.idle_since.get_mut(&tp) {
            *since = Instant::now();
        }
        if kind == JobKind::Consume {
            self.costs.entry(tp.clone()).or_default().add(done.took);
        }
        if done.coordinator.is_revoked() {
            // Revoked while it ran: its `revoked` hook now, on its instance. (A partition
            // assigned again takes its next batch after the hook.)
            if let Some(job) = self.pipeline.revoked_after(done) {
                self.hooks.push_back(job);
            }
            self.mark_ready(tp);
            return;
        }
        self.pipeline.after(done, &self.partitions);
        // After the last group of a split batch: `eofed` runs on the partition's instance.
        let batch_done =
            !self.running.contains_key(&tp) && !self.groups.iter().any(|j| j.input.tp == tp);
        let eof_after = batch_done
            && self
                .slots
                .get_mut(&tp)
                .is_some_and(|s| std::mem::take(&mut s.eof_after));
        if kind == JobKind::Consume && eof_after {
            for job in self.pipeline.eof_jobs(vec![tp.clone()]) {
                self.hooks.push_back(job);
            }
        }
        self.mark_ready(tp);
    }

    /// Splits the queues of partitions about to be assigned (once per partition in the
    /// client's life) and makes them ready.
    fn assigning(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(slot) = self.slots.get_mut(tp) {
                slot.assigned = true;
            } else {
                match self.consumer.split_partition_queue(&tp.topic, tp.partition) {
                    Some(mut queue) => {
                        let tx = self.tx.clone();
                        let woken = tp.clone();
                        queue.set_nonempty_callback(move || {
                            let _ = tx.send(Wake::Partition(woken.clone()));
                        });
                        self.slots.insert(
                            tp.clone(),
                            Slot {
                                queue,
                                assigned: true,
                                queued: false,
                                eof_after: false,
                            },
                        );
                    }
                    None => {
                        // Only a topic name with a NUL byte fails, which routing refuses.
                        self.shared.error(
                            ErrorKind::ConnectionClientRebalance,
                            std::io::Error::other(format!(
                                "could not split the queue of {tp}: its messages come through \
                                 the consumer queue and are fetched again"
                            )),
                            Some(tp),
                        );
                    }
                }
            }
            if self
                .pipeline
                .topic(&tp.topic)
                .is_some_and(|t| t.periodic.is_some())
            {
                self.idle_since.insert(tp.clone(), Instant::now());
            }
            self.mark_ready(tp.clone());
        }
    }

    /// Waits up to `revocation_timeout` for the running jobs of `partitions` and settles
    /// them (their batches are marked before the revocation commits). Not when the
    /// assignment was lost: nothing of theirs could be committed any more.
    fn revoking(&mut self, partitions: &[TopicPartition], lost: bool) {
        for tp in partitions {
            if let Some(slot) = self.slots.get_mut(tp) {
                slot.assigned = false;
                slot.eof_after = false;
            }
            self.idle_since.remove(tp);
        }
        if lost {
            return;
        }
        // Jobs that ended before the poll that brought this revocation, and a permit freed
        // meanwhile (the waiting groups below need it).
        let (ended, others): (Vec<Wake>, Vec<Wake>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|w| {
                matches!(w, Wake::Done(d) if partitions.contains(&d.tp))
                    || matches!(w, Wake::Permit(_))
            });
        self.deferred = others;
        for wake in ended {
            self.on(wake);
        }
        // A long-running job is not waited for (a rebalance must not stall for as long as it
        // runs): it ends with a revoked coordinator, and its `revoked` hook runs then.
        let waited: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| {
                !self
                    .pipeline
                    .topic(&tp.topic)
                    .is_some_and(|t| t.long_running)
            })
            .cloned()
            .collect();
        let partitions = &waited[..];
        if partitions.is_empty() {
            return;
        }
        let timeout = self.shared.settings.revocation_timeout;
        let deadline = Instant::now() + timeout;
        let unfinished = |flow: &Flow, tp: &TopicPartition| {
            flow.running.contains_key(tp) || flow.groups.iter().any(|j| &j.input.tp == tp)
        };
        loop {
            // The groups of a split batch not started yet start now, so the whole batch
            // ends (and is committed) before the partition goes.
            self.start_groups_of(partitions);
            if !partitions.iter().any(|tp| unfinished(self, tp)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left) {
                Ok(Wake::Done(done)) if partitions.contains(&done.tp) => self.finished(*done),
                Ok(Wake::Permit(permit)) => self.on(Wake::Permit(permit)),
                Ok(other) => self.deferred.push(other),
                Err(_) => {}
            }
        }
        let still: Vec<String> = partitions
            .iter()
            .filter(|tp| unfinished(self, tp))
            .map(ToString::to_string)
            .collect();
        tracing::warn!(
            target: "karafka",
            consumer_group = %self.shared.route.consumer_group,
            partitions = ?still,
            "revoked partitions' jobs still run after revocation_timeout ({timeout:?}): they can no \
             longer mark; their revoked hooks run when they end"
        );
    }

    /// Starts the waiting groups of `partitions`' split batches while permits last.
    fn start_groups_of(&mut self, partitions: &[TopicPartition]) {
        while let Some(i) = self
            .groups
            .iter()
            .position(|j| partitions.contains(&j.input.tp))
        {
            let Some(permit) = self.permit() else { return };
            if let Some(job) = self.groups.remove(i) {
                self.spawn(job, permit);
            }
        }
    }

    /// A message that came through the consumer queue: its partition was not split when it
    /// was fetched. It is fetched again from its offset, through its own queue.
    fn stray(&mut self, tp: TopicPartition, offset: i64) {
        tracing::debug!(target: "karafka", %tp, offset, "message on the consumer queue; fetched again through the partition's queue");
        if !self.slots.contains_key(&tp) {
            self.assigning(std::slice::from_ref(&tp));
        }
        if let Err(e) = client::seek(&self.consumer, &tp, offset) {
            self.shared
                .error(ErrorKind::ConnectionClientPoll, e, Some(&tp));
        }
    }

    /// Waits for every running job and runs every queued hook (shutdown).
    fn drain(&mut self) {
        loop {
            for wake in std::mem::take(&mut self.deferred) {
                self.on(wake);
            }
            self.dispatch_hooks_only();
            if self.running.is_empty() && self.hooks.is_empty() && self.groups.is_empty() {
                return;
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(wake) => self.on(wake),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
    }

    fn dispatch_hooks_only(&mut self) {
        let quiet = std::mem::replace(&mut self.quiet, true);
        self.dispatch();
        self.quiet = quiet;
        self.spare = None;
    }
}

/// Sends a job's end to its listener; if the job's task is dropped before (its runtime shut
/// down), says so instead.
pub(crate) struct Report {
    tx: Sender<Wake>,
    tp: Option<TopicPartition>,
}

impl Report {
    pub(crate) fn new(tx: Sender<Wake>, tp: TopicPartition) -> Self {
        Report { tx, tp: Some(tp) }
    }

    pub(crate) fn done(mut self, done: Done) {
        self.tp = None;
        let _ = self.tx.send(Wake::Done(Box::new(done)));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(tp) = self.tp.take() {
            let _ = self.tx.send(Wake::Lost(tp));
        }
    }
}
