//! The listener of one subscription group, on its own named thread.
//!
//! Each turn of its loop: resume partitions whose pause ended; poll a batch (up to
//! `max_messages`, waiting at most `max_wait_time` for the first message); turn revocations
//! (recorded by the rebalance callbacks during the poll) and the batch (split by partition)
//! into jobs; run them on the workers and **wait for all of them** before polling again (the
//! blocking-poll rule: librdkafka keeps prefetching underneath); then act on each job's
//! outcome (mark, retry after a back-off, dead-letter).
//!
//! Rebalance callbacks run inside `poll`, on this thread, so a partition is never revoked
//! while one of its jobs runs — except a long-running one (`karafka_consumer::jobs`): its
//! partition is paused, the job runs detached ([`Detached`]) and the loop goes on polling;
//! its end is settled at the top of a later turn.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use karafka_core::instrumentation::Monitor;
use karafka_core::instrumentation::{ErrorKind, Event, JobKind};
use karafka_core::oauth::OAuthTokenProvider;
use karafka_core::{KafkaSettings, TopicPartition, native};
use karafka_producer::Producer;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaTopic;
use std::ops::Range;
use std::time::SystemTime;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::connection::client::RebalanceHooks;
use crate::connection::client::{self, ClientPartitions, GroupContext, KafkaOps};
use crate::connection::partitioned::{self, FlowCell, Report, Wake};
use crate::connection::prefetch;
use crate::context::ClientOps;
use crate::error::Result;
use crate::message::{PollBuffer, PollBufferBuilder};
use crate::processing::executor::{self, Done, Job, JobCost};
use crate::processing::group::GroupShared;
use crate::processing::outcome::{PartitionControl as _, Settled};
use crate::processing::pipeline::Pipeline;
use crate::routing::SubscriptionGroupRoute;
use crate::settings::{ProcessingSettings, Scheduling};
use crate::status::Control;

/// How long a partition-scheduled listener asks the cluster for its topics' partitions at
/// start (past it, the prefetch budget assumes [`prefetch::FALLBACK_PARTITIONS`]).
const PARTITION_COUNT_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Listener {
    name: Arc<str>,
    shared: Arc<GroupShared>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    /// Pause, resume and seek on the client, for the pipeline's outcomes.
    partitions: ClientPartitions,
    /// Jobs from polls, outcomes from jobs: the code the harness runs too.
    pipeline: Pipeline,
    runtime: Handle,
    semaphore: Arc<Semaphore>,
    eof_enabled: bool,
    /// How long each topic's consume jobs take, on average (see [`JobCost`]).
    costs: HashMap<Arc<str>, JobCost>,
    /// With partition scheduling: the state the rebalance callbacks share, and the channel
    /// that wakes the listener.
    partitioned: Option<(Arc<FlowCell>, Sender<Wake>, Receiver<Wake>)>,
    /// With poll scheduling: the long-running jobs running without the loop waiting.
    detached: Detached,
    /// With poll scheduling: assigned partitions of topics with periodic jobs, and when their
    /// last job started or ended (or they were first seen assigned).
    idle_since: HashMap<TopicPartition, Instant>,
    periodic: bool,
}

/// Long-running jobs under poll scheduling: each runs on a worker (its permit taken there)
/// while the loop goes on polling; its partition is paused in librdkafka meanwhile.
struct Detached {
    /// Jobs running per partition (several for the groups of a split batch).
    running: HashMap<TopicPartition, usize>,
    tx: Sender<Wake>,
    rx: Receiver<Wake>,
    /// Partitions whose messages arrived while a job of theirs ran (assigned back after a
    /// revocation): dropped, paused, and fetched again from this offset once idle.
    held: HashMap<TopicPartition, i64>,
    /// Partitions whose end was reached while a job of theirs ran: `eofed` follows it.
    eof_after: HashSet<TopicPartition>,
}

impl Detached {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Detached {
            running: HashMap::new(),
            tx,
            rx,
            held: HashMap::new(),
            eof_after: HashSet::new(),
        }
    }

    fn busy(&self, tp: &TopicPartition) -> bool {
        self.running.contains_key(tp)
    }

    /// One job of `tp` ended; true when none of it runs any more.
    fn ended(&mut self, tp: &TopicPartition) -> bool {
        match self.running.get_mut(tp) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.running.remove(tp);
                true
            }
        }
    }
}

/// What every listener of an app shares: the app's monitor, producer, processing settings
/// and OAuth token provider, the lifecycle state, the runtime jobs run on and the bound on
/// jobs at once.
#[derive(Clone)]
pub(crate) struct ListenerSetup {
    pub(crate) monitor: Monitor,
    pub(crate) producer: Producer,
    pub(crate) settings: ProcessingSettings,
    pub(crate) oauth: Option<Arc<dyn OAuthTokenProvider>>,
    pub(crate) control: Arc<Control>,
    pub(crate) runtime: Handle,
    pub(crate) semaphore: Arc<Semaphore>,
    /// What default `client.id`s end with: unique to this start of the app.
    pub(crate) client_token: Arc<str>,
}

impl Listener {
    pub(crate) fn new(route: Arc<SubscriptionGroupRoute>, setup: &ListenerSetup) -> Result<Self> {
        let control = setup.control.clone();
        let runtime = setup.runtime.clone();
        let semaphore = setup.semaphore.clone();
        let shared = Arc::new(GroupShared {
            route: route.clone(),
            monitor: setup.monitor.clone(),
            producer: setup.producer.clone(),
            settings: setup.settings.clone(),
            control,
            coordinators: Mutex::new(HashMap::new()),
            revocations: Mutex::new(Vec::new()),
            closing: Default::default(),
            instances: Default::default(),
            // A new connection counts as just polled (health checks the time since).
            last_poll_ms: setup.control.now_ms().into(),
            retired: Default::default(),
            observed: Default::default(),
            executing: Default::default(),
        });
        let create = |kafka: &KafkaSettings| -> Result<BaseConsumer<GroupContext>> {
            native::client_config(kafka)
                .create_with_context(GroupContext {
                    shared: shared.clone(),
                    oauth: setup.oauth.clone(),
                    hooks: OnceLock::new(),
                })
                .map_err(|e| {
                    native::client_creation_error(
                        format!("create the client of {}", route.name),
                        &e,
                        kafka,
                    )
                    .into()
                })
        };
        let names: Vec<&str> = route.topics.iter().map(|t| &*t.name).collect();
        let mut kafka = route.kafka.clone();
        if !kafka.contains_key("client.id") {
            // Unique in the group, across processes too: members with identical ids can make
            // librdkafka's cooperative-sticky assignor loop at 100% CPU (librdkafka #4783).
            kafka.set(
                "client.id",
                format!(
                    "karafka-{}-{}",
                    route.name.replace('#', "-"),
                    setup.client_token
                ),
            );
        }
        if route.scheduling == Scheduling::Partition {
            // The prefetch budget over the partitions of the group's topics: asked through
            // a client of the same settings that never joins the group.
            let found = prefetch::partition_count(&create(&kafka)?, &names, PARTITION_COUNT_WAIT);
            let partitions = found.unwrap_or(prefetch::FALLBACK_PARTITIONS);
            let limits = prefetch::limits(setup.settings.prefetch_budget, partitions, &kafka);
            tracing::info!(
                target: "karafka",
                subscription_group = %route.name,
                partitions,
                counted = found.is_some(),
                budget = setup.settings.prefetch_budget,
                ?limits,
                "prefetch budget shared by the subscription group's partitions"
            );
            for (key, value) in limits {
                kafka.set(key, value);
            }
        }
        let mut consumer = create(&kafka)?;
        let partitioned = (route.scheduling == Scheduling::Partition).then(|| {
            let (tx, rx) = mpsc::channel();
            consumer.set_nonempty_callback(partitioned::main_waker(tx.clone()));
            let cell = Arc::new(FlowCell::default());
            let hooks: Arc<dyn RebalanceHooks> = cell.clone();
            let _ = consumer.context().hooks.set(hooks);
            (cell, tx, rx)
        });
        consumer.subscribe(&names).map_err(|e| {
            native::kafka_error(format!("subscribe {} to {names:?}", route.name), &e)
        })?;
        let consumer = Arc::new(consumer);
        let ops: Arc<dyn ClientOps> = Arc::new(KafkaOps {
            consumer: consumer.clone(),
            group_id: route.consumer_group.clone(),
        });
        Ok(Listener {
            name: format!("{}.{}", route.consumer_group, route.name).into(),
            eof_enabled: route.kafka.get("enable.partition.eof") == Some("true"),
            costs: HashMap::new(),
            partitioned,
            detached: Detached::new(),
            idle_since: HashMap::new(),
            periodic: route.topics.iter().any(|t| t.periodic.is_some()),
            pipeline: Pipeline::new(shared.clone(), ops),
            partitions: ClientPartitions(consumer.clone()),
            shared,
            consumer,
            runtime,
            semaphore,
        })
    }

    pub(crate) fn shared(&self) -> Arc<GroupShared> {
        self.shared.clone()
    }

    pub(crate) fn run(mut self) {
        if let Some((cell, tx, rx)) = self.partitioned.take() {
            let Listener {
                name,
                shared,
                consumer,
                partitions,
                pipeline,
                runtime,
                semaphore,
                eof_enabled,
                ..
            } = self;
            let self_shared = shared.clone();
            drop(partitions);
            let setup = partitioned::Setup {
                name,
                shared,
                consumer: consumer.clone(),
                pipeline,
                runtime,
                semaphore,
                eof_enabled,
                tx,
                rx,
            };
            partitioned::run(cell, setup);
            // The last reference: closing the client leaves the group.
            client::close(consumer, &self_shared);
            return;
        }
        let mut quiet = false;
        while !self.shared.should_stop() {
            self.heartbeat();
            if self.shared.control.quieting() {
                self.settle_detached();
                // Quiet once no job of this listener runs any more.
                if !quiet && self.detached.running.is_empty() {
                    quiet = true;
                    self.shared.control.listener_quiet();
                }
                self.stay_quiet();
                continue;
            }
            self.settle_detached();
            self.resume_due();
            let (polled, eofs, polled_for) = self.poll_batch();
            let revocations = self.pipeline.revocation_jobs();
            let mut jobs = self.regular(revocations);
            if let Some((buffer, partitions, messages)) = polled {
                let partitions = self.hold_busy(&buffer, partitions);
                let consume = self.pipeline.consume_jobs(&buffer, partitions);
                let made = consume.len();
                jobs.extend(self.regular(consume));
                let shared = &self.shared;
                shared.monitor.emit_with(|| Event::BatchReceived {
                    consumer_group: shared.route.consumer_group.clone(),
                    subscription_group: shared.route.name.clone(),
                    messages,
                    partitions: made,
                    duration: polled_for,
                });
            }
            // A partition whose last messages and end came in the same poll gets its
            // `eofed` after its consume job, on the same instance: the job is made once the
            // consume job has handed the instance back (a long-running one: when it ends).
            let mut ends = self.eof_partitions(&eofs);
            ends.retain(|tp| {
                if self.detached.busy(tp) {
                    self.detached.eof_after.insert(tp.clone());
                    false
                } else {
                    true
                }
            });
            let (ends_later, ends_now): (Vec<TopicPartition>, Vec<TopicPartition>) = ends
                .into_iter()
                .partition(|tp| jobs.iter().any(|j| &j.input.tp == tp));
            let eof_now = self.pipeline.eof_jobs(ends_now);
            jobs.extend(self.regular(eof_now));
            let ticks = self.due_ticks(&jobs, &ends_later);
            jobs.extend(self.regular(ticks));
            let active: Vec<TopicPartition> = jobs.iter().map(|j| j.input.tp.clone()).collect();
            if jobs.is_empty() && ends_later.is_empty() {
                continue;
            }
            for wave in waves(jobs) {
                self.run_jobs(wave);
            }
            if !ends_later.is_empty() {
                let jobs = self.pipeline.eof_jobs(ends_later);
                let jobs = self.regular(jobs);
                self.run_jobs(jobs);
            }
            for tp in &active {
                self.touch(tp);
            }
            self.pipeline.publish_instances();
        }
        self.shutdown();
    }

    /// Runs `jobs` (no two of one partition) and settles what they did.
    fn run_jobs(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        for done in self.execute(jobs) {
            if done.kind == JobKind::Consume {
                self.costs
                    .entry(done.topic.name.clone())
                    .or_default()
                    .add(done.took);
            }
            self.pipeline.after(done, &self.partitions);
        }
    }

    // -- long-running jobs ------------------------------------------------------------------

    /// Starts the long-running jobs among `jobs` detached (see [`Detached`]) and returns the
    /// others.
    fn regular(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        let mut regular = Vec::with_capacity(jobs.len());
        for job in jobs {
            self.touch(&job.input.tp);
            if job.topic.long_running && job.kind != JobKind::Shutdown {
                self.detach(job);
            } else {
                regular.push(job);
            }
        }
        regular
    }

    /// Runs a long-running job on a worker without waiting for it. A consume job's
    /// partition is paused first, so the loop polls on while it runs (and while it waits
    /// for a permit).
    fn detach(&mut self, job: Job) {
        let tp = job.input.tp.clone();
        if job.kind == JobKind::Consume {
            if let Err(e) = self.partitions.pause(&tp) {
                self.shared
                    .error(ErrorKind::ConnectionClientPoll, e, Some(&tp));
            }
        }
        *self.detached.running.entry(tp.clone()).or_default() += 1;
        let report = Report::new(self.detached.tx.clone(), tp);
        let semaphore = self.semaphore.clone();
        let monitor = self.shared.monitor.clone();
        let control = self.shared.control.clone();
        let name = self.name.clone();
        self.runtime.spawn(async move {
            let permit = semaphore.acquire_owned().await.ok();
            // Revoked while it waited for a worker: it never runs (its `revoked` hook does,
            // when its end is settled).
            let done = if matches!(job.kind, JobKind::Consume | JobKind::Eofed | JobKind::Tick)
                && job.input.coordinator.is_revoked()
            {
                executor::not_run(job)
            } else {
                executor::run(job, monitor, control, name).await
            };
            drop(permit);
            report.done(done);
        });
    }

    /// Messages of partitions a long-running job of which still runs (assigned back after
    /// a revocation while it ran) are dropped: the partition is paused and fetched again
    /// from its first dropped offset once idle, so two instances never process it at once.
    fn hold_busy(
        &mut self,
        buffer: &Arc<PollBuffer>,
        ranges: Vec<Range<usize>>,
    ) -> Vec<Range<usize>> {
        if self.detached.running.is_empty() {
            return ranges;
        }
        let mut kept = Vec::with_capacity(ranges.len());
        for range in ranges {
            let view = crate::message::BatchView::new(buffer.clone(), range.clone());
            let held = view.first().and_then(|first| {
                let tp = TopicPartition::new(first.topic().clone(), first.partition());
                self.detached.busy(&tp).then_some((tp, first.offset()))
            });
            match held {
                Some((tp, offset)) => {
                    if let Err(e) = self.partitions.pause(&tp) {
                        self.shared
                            .error(ErrorKind::ConnectionClientPoll, e, Some(&tp));
                    }
                    let at = self.detached.held.entry(tp).or_insert(offset);
                    *at = (*at).min(offset);
                }
                None => kept.push(range),
            }
        }
        kept
    }

    /// Settles the long-running jobs that ended.
    fn settle_detached(&mut self) {
        while let Ok(wake) = self.detached.rx.try_recv() {
            match wake {
                Wake::Done(done) => self.detached_ended(*done),
                Wake::Lost(tp) => {
                    // The runtime shut down under the job (the app is stopping): the batch
                    // is not settled and the partition stays paused; it is fetched again
                    // from the committed offset by its next owner.
                    self.detached.ended(&tp);
                    self.shared.error(
                        ErrorKind::WorkerProcess,
                        std::io::Error::other(
                            "a long-running job's task was dropped before it ended (the worker \
                             runtime shut down): its batch was not settled",
                        ),
                        Some(&tp),
                    );
                }
                _ => {}
            }
        }
    }

    /// A long-running job ended: settled as any other; once its partition has no job
    /// running, it goes on where it should.
    fn detached_ended(&mut self, done: Done) {
        let tp = done.tp.clone();
        let kind = done.kind;
        self.detached.ended(&tp);
        self.touch(&tp);
        // Where the partition goes on: after a settled consume job, where its outcome says
        // (a pause's own resume seeks); after a hook, from the messages held meanwhile.
        let mut resume = None;
        let mut settled_paused = false;
        if done.coordinator.is_revoked() {
            // Revoked while it ran: no `eofed` follows; its `revoked` hook now, on its
            // instance (detached too).
            self.detached.eof_after.remove(&tp);
            if let Some(hook) = self.pipeline.revoked_after(done) {
                self.detach(hook);
            }
        } else {
            match self.pipeline.after(done, &self.partitions) {
                _ if kind != JobKind::Consume => {}
                Some(Settled::Paused) => settled_paused = true,
                Some(Settled::At(offset) | Settled::After(offset)) => resume = Some(offset),
                // A group of a split batch whose other groups still run.
                Some(Settled::Unchanged) | None => {}
            }
        }
        self.pipeline.publish_instances();
        if self.detached.busy(&tp) {
            return;
        }
        let held = self.detached.held.remove(&tp);
        if !settled_paused {
            if let Some(at) = [resume, held].into_iter().flatten().min() {
                self.resume_at(&tp, at);
            }
        }
        if self.detached.eof_after.remove(&tp) {
            for job in self.pipeline.eof_jobs(vec![tp]) {
                self.detach(job);
            }
        }
    }

    /// Seeks `tp` to `offset` and resumes it, if it is still assigned.
    fn resume_at(&self, tp: &TopicPartition, offset: i64) {
        // An unreadable assignment counts as assigned: a partition left paused would never
        // be fetched again.
        let assigned = self.consumer.assignment().map_or(true, |list| {
            list.elements()
                .iter()
                .any(|e| e.partition() == tp.partition && e.topic() == &*tp.topic)
        });
        if !assigned {
            return;
        }
        for result in [self.partitions.seek(tp, offset), self.partitions.resume(tp)] {
            if let Err(e) = result {
                self.shared
                    .error(ErrorKind::ConnectionClientPoll, e, Some(tp));
            }
        }
    }

    /// Waits for the long-running jobs still running (shutdown), settling them; meanwhile
    /// the assignment stays paused and the client is polled, to stay in the group (what
    /// is polled is dropped: it is fetched again from the committed offsets).
    fn drain_detached(&mut self) {
        loop {
            self.settle_detached();
            let hooks = self.pipeline.revocation_jobs();
            let hooks = self.regular(hooks);
            if !hooks.is_empty() {
                drop(self.execute(hooks));
            }
            if self.detached.running.is_empty() {
                return;
            }
            self.heartbeat();
            if let Ok(assignment) = self.consumer.assignment() {
                if assignment.count() > 0 {
                    let _ = self.consumer.pause(&assignment);
                }
            }
            if let Some(polled) = self.consumer.poll(Duration::from_millis(100)) {
                drop(polled);
            }
        }
    }

    // -- periodic jobs ------------------------------------------------------------------------

    /// Records a job of `tp` starting or ending (periodic topics only).
    fn touch(&mut self, tp: &TopicPartition) {
        if let Some(since) = self.idle_since.get_mut(tp) {
            *since = Instant::now();
        }
    }

    /// The `tick` jobs of the assigned partitions of periodic topics that have had no job
    /// for their interval (none of `jobs` or `ends` is theirs, no long-running job of theirs
    /// runs; paused ones only as `during_pause`/`during_retry` say). Partitions assigned
    /// since the last turn start counting now.
    fn due_ticks(&mut self, jobs: &[Job], ends: &[TopicPartition]) -> Vec<Job> {
        if !self.periodic {
            return Vec::new();
        }
        let now = Instant::now();
        let assigned: Vec<TopicPartition> = self
            .consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition()))
                    .filter(|tp| self.topic_periodic(tp).is_some())
                    .collect()
            })
            .unwrap_or_default();
        self.idle_since.retain(|tp, _| assigned.contains(tp));
        let mut ticks = Vec::new();
        for tp in assigned {
            let since = *self.idle_since.entry(tp.clone()).or_insert(now);
            let Some(periodic) = self.topic_periodic(&tp) else {
                continue;
            };
            let busy = self.detached.busy(&tp)
                || ends.contains(&tp)
                || jobs.iter().any(|j| j.input.tp == tp);
            if busy || now < since + periodic.interval || !self.may_tick(&tp, &periodic) {
                continue;
            }
            self.idle_since.insert(tp.clone(), now);
            ticks.extend(self.pipeline.tick_job(tp));
        }
        ticks
    }

    fn topic_periodic(&self, tp: &TopicPartition) -> Option<crate::jobs::Periodic> {
        self.pipeline.topic(&tp.topic).and_then(|t| t.periodic)
    }

    /// Whether a paused `tp` ticks (by its kind of pause).
    fn may_tick(&self, tp: &TopicPartition, periodic: &crate::jobs::Periodic) -> bool {
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

    /// When the next `tick` is due, if any partition is waiting for one.
    fn next_tick(&self) -> Option<Instant> {
        self.idle_since
            .iter()
            .filter(|(tp, _)| !self.detached.busy(tp))
            .filter_map(|(tp, since)| {
                let periodic = self.topic_periodic(tp)?;
                // Paused without ticking: the pause's end wakes the loop.
                self.may_tick(tp, &periodic)
                    .then_some(*since + periodic.interval)
            })
            .min()
    }

    fn heartbeat(&self) {
        self.shared
            .last_poll_ms
            .store(self.shared.control.now_ms(), Ordering::Release);
    }

    /// Quiet: every assigned partition paused, polling only to keep the membership (and to
    /// serve rebalances; revoked partitions still get their `revoked` hooks).
    fn stay_quiet(&mut self) {
        if let Ok(assignment) = self.consumer.assignment() {
            if assignment.count() > 0 {
                let _ = self.consumer.pause(&assignment);
            }
        }
        // Whatever was fetched before the pause is dropped: it is fetched again later from
        // the committed offsets.
        while let Some(polled) = self.consumer.poll(Duration::from_millis(100)) {
            drop(polled);
            if self.shared.should_stop() {
                break;
            }
        }
        let jobs = self.pipeline.revocation_jobs();
        let jobs = self.regular(jobs);
        if !jobs.is_empty() {
            drop(self.execute(jobs));
        }
    }

    // -- polling ----------------------------------------------------------------------------

    /// Polls up to `max_messages`, waiting at most `max_wait_time` (or until the next pause
    /// ends) for the first message; after it, takes only what is already fetched.
    ///
    /// The messages go, as librdkafka's own (nothing copied), into one [`PollBuffer`],
    /// returned with one range per partition and the count.
    #[allow(clippy::type_complexity)]
    fn poll_batch(
        &mut self,
    ) -> (
        Option<(Arc<PollBuffer>, Vec<Range<usize>>, usize)>,
        Vec<i32>,
        Duration,
    ) {
        let route = &self.shared.route;
        let max_messages = route.max_messages;
        let started = Instant::now();
        let mut wake_at = started + route.max_wait_time;
        for at in [self.next_resume(), self.next_tick()].into_iter().flatten() {
            wake_at = wake_at.min(at);
        }
        let client: Arc<dyn Send + Sync> = self.consumer.clone();
        let mut buffer = PollBufferBuilder::native(max_messages.min(8192), client);
        let mut eofs = Vec::new();
        // The topic handle of the previous message (batches usually hold one topic) and the
        // buffer's index for its name.
        let mut last_topic: Option<(*mut RDKafkaTopic, u32)> = None;
        while buffer.len() < max_messages {
            // Wait only for the first message or end of partition: after either, take what
            // is already fetched and hand it out (reaching the end bypasses max_wait_time).
            let timeout = if buffer.is_empty() && eofs.is_empty() {
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    self.take(message, &mut last_topic, &mut buffer);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                    eofs.push(partition)
                }
                Some(Err(e)) => {
                    self.shared.error(
                        ErrorKind::ConnectionClientPoll,
                        native::kafka_error("poll", &e),
                        None,
                    );
                    if Instant::now() >= wake_at {
                        break;
                    }
                }
                None => {
                    // Nothing more fetched, the wait is over, or a rebalance was served (its
                    // revocations must be acted on before more messages).
                    if !buffer.is_empty() || !eofs.is_empty() {
                        break;
                    }
                    let rebalanced = !self
                        .shared
                        .revocations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty();
                    if rebalanced || Instant::now() >= wake_at || self.shared.should_stop() {
                        break;
                    }
                }
            }
        }
        let polled = (!buffer.is_empty()).then(|| {
            let messages = buffer.len();
            let (buffer, partitions) = buffer.finish(SystemTime::now());
            (buffer, partitions, messages)
        });
        (polled, eofs, started.elapsed())
    }

    /// Moves a polled message into `buffer`, as librdkafka's message (nothing is copied or
    /// parsed now). `last_topic` caches the previous message's topic handle, so a run of one
    /// topic costs no name lookup: the handle is only compared, never dereferenced here.
    /// `last_topic` lives for one poll, and every message of the poll is still alive in
    /// `buffer`, each holding a reference on its topic handle (librdkafka keeps the handle
    /// for each message it hands out), so no handle seen in this poll can be freed and its
    /// address reused by another topic: equal handles are equal topics. A changed handle just
    /// looks the name up again.
    fn take(
        &self,
        m: BorrowedMessage<'_>,
        last_topic: &mut Option<(*mut RDKafkaTopic, u32)>,
        buffer: &mut PollBufferBuilder,
    ) {
        let handle = m.topic_ptr();
        let topic = match *last_topic {
            Some((last, index)) if std::ptr::eq(last, handle) => index,
            _ => {
                let name = m.topic();
                let topic = self
                    .pipeline
                    .topic(name)
                    .map_or_else(|| Arc::from(name), |known| known.name.clone());
                let index = buffer.topic(&topic);
                *last_topic = Some((handle, index));
                index
            }
        };
        // SAFETY: `m` was polled from `self.consumer`, the client `buffer` was made with.
        #[allow(unsafe_code)]
        unsafe {
            buffer.push_native(topic, m);
        }
    }

    // -- jobs -------------------------------------------------------------------------------

    /// The partitions whose end was reached (with `enable.partition.eof=true`). librdkafka
    /// names only the partition number, so the topic is the assigned one with that
    /// partition; when several topics of the subscription group have it, the event is
    /// skipped.
    fn eof_partitions(&self, eofs: &[i32]) -> Vec<TopicPartition> {
        if !self.eof_enabled || eofs.is_empty() {
            return Vec::new();
        }
        let assignment = self.consumer.assignment().ok();
        let mut ends = Vec::new();
        for partition in eofs {
            let candidates: Vec<TopicPartition> = assignment
                .iter()
                .flat_map(|list| list.elements())
                .filter(|e| e.partition() == *partition)
                .map(|e| TopicPartition::new(e.topic(), e.partition()))
                .collect();
            match <[TopicPartition; 1]>::try_from(candidates) {
                Ok([tp]) => ends.push(tp),
                Err(_) => {
                    tracing::debug!(target: "karafka", partition, "end of partition reached on several topics; eofed skipped");
                }
            }
        }
        ends
    }

    /// Runs the jobs (at most `concurrency` at once across the app) and waits for every one
    /// of them. Every job but the first is offered to the worker pool; this thread does not
    /// just wait meanwhile: it runs the first job, then every job no worker has picked up
    /// yet, and waits only for those a worker is running, so slow jobs run in parallel on
    /// the workers and a quick one costs no hand-off. When every job is a consume job of a
    /// topic whose jobs are known to be cheap ([`JobCost`]), none is offered: they run here,
    /// one after the other, and no worker is woken for nothing.
    fn execute(&self, jobs: Vec<Job>) -> Vec<Done> {
        if jobs.is_empty() {
            return Vec::new();
        }
        // Liveness: the listener does not loop while it runs (or waits to run) these.
        struct Executing<'a>(&'a AtomicBool);
        impl Drop for Executing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.shared.executing.store(true, Ordering::Release);
        let _executing = Executing(&self.shared.executing);
        let count = jobs.len();
        let all_cheap = count > 1
            && jobs.iter().all(|j| {
                j.kind == JobKind::Consume
                    && self.costs.get(&j.topic.name).is_some_and(JobCost::cheap)
            });
        let slots: Arc<Vec<Mutex<Option<Job>>>> =
            Arc::new(jobs.into_iter().map(|j| Mutex::new(Some(j))).collect());
        let take = |slots: &[Mutex<Option<Job>>], i: usize| {
            slots[i].lock().unwrap_or_else(|p| p.into_inner()).take()
        };
        let run = {
            let semaphore = self.semaphore.clone();
            let monitor = self.shared.monitor.clone();
            let control = self.shared.control.clone();
            let name = self.name.clone();
            move |job: Job| {
                let semaphore = semaphore.clone();
                let monitor = monitor.clone();
                let control = control.clone();
                let name = name.clone();
                async move {
                    let _permit = semaphore.acquire_owned().await.ok();
                    executor::run(job, monitor, control, name).await
                }
            }
        };
        // Known-cheap jobs are offered to no worker: this thread runs them all below.
        let handles: Vec<_> = if all_cheap { 0..0 } else { 1..count }
            .map(|i| {
                let slots = slots.clone();
                let run = run.clone();
                self.runtime.spawn(async move {
                    let job = take(&slots, i)?;
                    Some(run(job).await)
                })
            })
            .collect();
        let shared = self.shared.clone();
        self.runtime.block_on(async move {
            let mut done = Vec::with_capacity(count);
            // Jobs this thread ran; the workers' tasks for them find their slot empty.
            let mut mine = vec![false; count];
            for (i, ran_here) in mine.iter_mut().enumerate() {
                if let Some(job) = take(&slots, i) {
                    *ran_here = true;
                    done.push(run(job).await);
                }
            }
            for (handle, ran_here) in handles.into_iter().zip(&mine[1..]) {
                if *ran_here {
                    continue; // the task finds nothing to do
                }
                match handle.await {
                    Ok(Some(d)) => done.push(d),
                    Ok(None) => {}
                    // The runtime went away under the job: its instance is lost and is
                    // created again for the next batch.
                    Err(e) => shared.error(ErrorKind::WorkerProcess, e, None),
                }
            }
            done
        })
    }

    fn resume_due(&self) {
        self.pipeline.resume_due(Instant::now(), &self.partitions);
    }

    fn next_resume(&self) -> Option<Instant> {
        self.pipeline.next_resume()
    }

    // -- shutdown -----------------------------------------------------------------------------

    /// Runs `shutdown` hooks, commits what was processed and leaves the group.
    fn shutdown(mut self) {
        self.drain_detached();
        let jobs = self.pipeline.shutdown_jobs();
        if !jobs.is_empty() {
            drop(self.execute(jobs));
        }
        self.shared.closing.store(true, Ordering::Release);
        client::commit_at_shutdown(&self.consumer, &self.shared);
        // Dropping the last reference closes the client: it leaves the group (the final
        // revocation commits again and runs no hooks).
        let Listener {
            consumer,
            pipeline,
            partitions,
            shared,
            ..
        } = self;
        drop(pipeline);
        drop(partitions);
        client::close(consumer, &shared);
    }
}

/// Splits a poll's jobs into waves with at most one job per consumer instance each (a
/// partition's, or each of its virtual partitions'), keeping each partition's jobs in order
/// (a `revoked` hook before the consume job of a partition assigned again in the same poll):
/// an instance never runs two jobs at once, and the groups of a split batch run together.
fn waves(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut waves: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        let after = waves
            .iter()
            .rposition(|wave| {
                wave.iter().any(|j| {
                    j.input.tp == job.input.tp
                        && (j.input.instance() == job.input.instance()
                            || j.input.group.is_none()
                            || job.input.group.is_none())
                })
            })
            .map_or(0, |i| i + 1);
        if after == waves.len() {
            waves.push(Vec::new());
        }
        waves[after].push(job);
    }
    waves
}
