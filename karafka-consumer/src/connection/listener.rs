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
//! while one of its jobs runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
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
use crate::connection::partitioned::{self, FlowCell, Wake};
use crate::connection::prefetch;
use crate::context::ClientOps;
use crate::error::Result;
use crate::message::{PollBuffer, PollBufferBuilder};
use crate::processing::executor::{self, Done, Job, JobCost};
use crate::processing::group::GroupShared;
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
                if !quiet {
                    quiet = true;
                    self.shared.control.listener_quiet();
                }
                self.stay_quiet();
                continue;
            }
            self.resume_due();
            let (polled, eofs, polled_for) = self.poll_batch();
            let mut jobs = self.pipeline.revocation_jobs();
            if let Some((buffer, partitions, messages)) = polled {
                let before = jobs.len();
                jobs.extend(self.pipeline.consume_jobs(&buffer, partitions));
                let shared = &self.shared;
                shared.monitor.emit_with(|| Event::BatchReceived {
                    consumer_group: shared.route.consumer_group.clone(),
                    subscription_group: shared.route.name.clone(),
                    messages,
                    partitions: jobs.len() - before,
                    duration: polled_for,
                });
            }
            // A partition whose last messages and end came in the same poll gets its
            // `eofed` after its consume job, on the same instance: the job is made once the
            // consume job has handed the instance back.
            let (ends_later, ends_now): (Vec<TopicPartition>, Vec<TopicPartition>) = self
                .eof_partitions(&eofs)
                .into_iter()
                .partition(|tp| jobs.iter().any(|j| &j.input.tp == tp));
            jobs.extend(self.pipeline.eof_jobs(ends_now));
            if jobs.is_empty() && ends_later.is_empty() {
                continue;
            }
            for wave in waves(jobs) {
                self.run_jobs(wave);
            }
            if !ends_later.is_empty() {
                let jobs = self.pipeline.eof_jobs(ends_later);
                self.run_jobs(jobs);
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
        if let Some(next_resume) = self.next_resume() {
            wake_at = wake_at.min(next_resume);
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
        let jobs = self.pipeline.shutdown_jobs();
        if !jobs.is_empty() {
            drop(self.execute(jobs));
        }
        self.shared.closing.store(true, Ordering::Release);
        if let Err(e) = client::commit_stored(&self.consumer, Duration::from_secs(10)) {
            self.shared
                .error(ErrorKind::ConnectionClientCommit, e, None);
        }
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
