//! Testing consumers without a broker (feature `testing`; in `karafka` as
//! `karafka::testing`).
//!
//! A [`Harness`] takes your real [`App`] (its routing: deserializers, manual offset
//! management, dead-letter queues, retry back-off settings), gives you a [`TestConsumer`] for a
//! routed topic, lets you [`produce`](TestConsumer::produce) messages into it and
//! [`consume`](TestConsumer::consume) them through the same processing path as production:
//! the consumer's code runs as a job (panics caught, events emitted), then the same decision
//! code marks the batch, schedules a retry (with the attempt count and a pause) or dispatches
//! to the dead-letter queue. What the app produces (DLQ dispatches included) lands in an
//! in-memory [`BufferedClient`]: read it with [`Harness::produced`]. No broker, no network,
//! no librdkafka client is created.
//!
//! ```
//! use karafka_consumer::harness::Harness;
//! use karafka_consumer::payload::Raw;
//! use karafka_consumer::routing::DeadLetterQueue;
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context};
//!
//! struct Orders;
//!
//! impl Consumer for Orders {
//!     type Payload = Raw;
//!     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
//!         for message in ctx.messages() {
//!             if message.raw_payload()?.is_some_and(|p| p.is_empty()) {
//!                 return Err("an empty order".into());
//!             }
//!             // Marking each message makes a failure point at the failing one: after the
//!             // retries it is what goes to the dead-letter queue.
//!             ctx.mark_as_consumed(message);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "unused:9092") // never contacted
//!     .topic("orders", |t| {
//!         t.consumer(|| Orders)
//!             .dead_letter_queue(DeadLetterQueue::new("orders-dlq").max_retries(1))
//!     })
//!     .build()
//!     .unwrap();
//! let harness = Harness::new(&app);
//! let mut orders = harness.consumer_for("orders").unwrap();
//! orders.produce("order 1");
//! orders.produce("");
//! orders.produce("order 3");
//!
//! let first = orders.consume().await; // offset 0 done, fails at offset 1: retried later
//! assert!(first[0].error.is_some());
//! assert_eq!((orders.marked(0), orders.attempt(0)), (Some(1), 2));
//! orders.consume().await; // the retry fails too: offset 1 goes to the DLQ
//! orders.consume().await; // offset 2
//! assert_eq!(orders.marked(0), Some(3));
//! let dead = harness.produced("orders-dlq");
//! assert_eq!(dead.len(), 1);
//! assert_eq!(dead[0].message.headers.get_str("source_offset"), Some("1"));
//! # }
//! ```
//!
//! ## Scheduling
//!
//! Each [`consume`](TestConsumer::consume) runs one job per partition that has messages,
//! each with up to the topic's `max_messages` of that partition's own messages, one after the
//! other: how [`Scheduling::Partition`](crate::Scheduling::Partition) (the default) takes a
//! partition's batch from its own queue. An app with
//! [`Scheduling::Poll`](crate::Scheduling::Poll) runs the same way here (the pipeline, the
//! decisions and the hooks are the same in both modes; only how batches are cut from polls
//! and when jobs start differ, which needs a broker to matter).
//!
//! ## What it does not simulate
//!
//! Rebalances (partitions are "assigned" when you produce to them; [`TestConsumer::revoke`]
//! runs the `revoked` hook on request), librdkafka's timing (batches hold what you produced, up
//! to the topic's `max_messages`; retry back-offs do not wait: the next `consume` is the
//! retry), broker errors and commits (offsets are recorded, not committed), fetch sizes,
//! `max_wait_time`, and transactions of consumer offsets. For those use the broker fixtures
//! (`karafka_testing::TestBroker`, the embedded cluster with fault injection).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use karafka_core::{KafkaError, Timestamp, TopicPartition};
use karafka_producer::{ConsumerGroupMetadata, Message, Producer};
use karafka_testing::{BufferedClient, Produced};

use crate::app::App;
use crate::context::ClientOps;
use crate::message::PollBufferBuilder;
use crate::processing::executor::{self, Job};
use crate::processing::group::GroupShared;
use crate::processing::outcome::{Outcomes, PartitionControl};
use crate::processing::pipeline::Pipeline;
use crate::routing::{SubscriptionGroupRoute, TopicRoute};
use crate::split::VirtualPartition;
use crate::status::Control;

/// Why the harness cannot do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The topic is not routed (or routed without a consumer).
    #[error("topic `{topic}` is not routed to a consumer in this app; routed: {routed:?}")]
    NotRouted {
        /// The topic asked for.
        topic: String,
        /// The topics that are routed to a consumer.
        routed: Vec<String>,
    },
    /// The topic is routed in several consumer groups.
    #[error(
        "topic `{topic}` is routed in several consumer groups ({groups:?}); use `consumer_for_group`"
    )]
    Ambiguous {
        /// The topic asked for.
        topic: String,
        /// The groups routing it.
        groups: Vec<String>,
    },
    /// `tick` was asked of a topic without periodic jobs.
    #[error(
        "topic `{topic}` has no periodic jobs, so its consumer never ticks; set \
         `.periodic_job(PeriodicJob::new())` (karafka-pro) on its route"
    )]
    NotPeriodic {
        /// The topic.
        topic: String,
    },
}

/// Test consumers for an app's routes, and what the app produced. See the [module](self).
#[derive(Debug)]
pub struct Harness {
    app: App,
    client: BufferedClient,
    producer: Producer,
}

impl Harness {
    /// A harness for `app`: its routing and settings; a producer on an in-memory client
    /// (reporting to the app's monitor) instead of the app's own.
    pub fn new(app: &App) -> Harness {
        let client = BufferedClient::new();
        let producer = Producer::builder()
            .id("karafka-harness")
            .monitor(app.monitor().clone())
            .client(client.clone())
            .build()
            // Only librdkafka settings can fail a producer's build, and this one has none.
            .expect("a producer on the in-memory client always builds");
        Harness {
            app: app.clone(),
            client,
            producer,
        }
    }

    /// A test consumer for `topic`, with the topic's real settings.
    pub fn consumer_for(&self, topic: &str) -> Result<TestConsumer, HarnessError> {
        let found: Vec<_> = self.routes_of(topic, None);
        match found.as_slice() {
            [] => Err(self.not_routed(topic)),
            [(sg, route)] => Ok(self.test_consumer(sg.clone(), route.clone())),
            many => Err(HarnessError::Ambiguous {
                topic: topic.to_owned(),
                groups: many
                    .iter()
                    .map(|(sg, _)| sg.consumer_group.to_string())
                    .collect(),
            }),
        }
    }

    /// A test consumer for `topic` in consumer group `group`.
    pub fn consumer_for_group(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<TestConsumer, HarnessError> {
        match self.routes_of(topic, Some(group)).into_iter().next() {
            Some((sg, route)) => Ok(self.test_consumer(sg, route)),
            None => Err(self.not_routed(topic)),
        }
    }

    /// What the app produced to `topic` (consumers through `ctx.producer()`, DLQ dispatches),
    /// in order, with the partition and offset the in-memory client gave each.
    pub fn produced(&self, topic: &str) -> Vec<Produced> {
        self.client.produced(topic)
    }

    /// The in-memory client behind the producer (faults to inject, transactions, offsets
    /// committed in transactions).
    pub fn client(&self) -> &BufferedClient {
        &self.client
    }

    /// The producer consumers get through their context.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    fn routes_of(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Vec<(Arc<SubscriptionGroupRoute>, Arc<TopicRoute>)> {
        let mut found = Vec::new();
        for cg in &self.app.inner.routes.consumer_groups {
            if group.is_some_and(|g| g != &*cg.name) {
                continue;
            }
            for sg in &cg.subscription_groups {
                for route in &sg.topics {
                    if &*route.name == topic && route.factory.is_some() {
                        found.push((sg.clone(), route.clone()));
                    }
                }
            }
        }
        found
    }

    fn not_routed(&self, topic: &str) -> HarnessError {
        HarnessError::NotRouted {
            topic: topic.to_owned(),
            routed: self
                .app
                .inner
                .routes
                .consumer_groups
                .iter()
                .flat_map(|g| g.topics.iter())
                .filter(|t| t.factory.is_some())
                .map(|t| t.name.to_string())
                .collect(),
        }
    }

    fn test_consumer(
        &self,
        sg: Arc<SubscriptionGroupRoute>,
        route: Arc<TopicRoute>,
    ) -> TestConsumer {
        let inner = &self.app.inner;
        let control = Arc::new(Control::new(
            inner.name.as_str().into(),
            inner.monitor.clone(),
        ));
        let shared = Arc::new(GroupShared {
            route: sg,
            monitor: inner.monitor.clone(),
            producer: self.producer.clone(),
            settings: inner.settings.clone(),
            control: control.clone(),
            coordinators: Mutex::new(HashMap::new()),
            revocations: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            instances: AtomicUsize::new(0),
            last_poll_ms: AtomicU64::new(0),
            retired: Default::default(),
            executing: Default::default(),
            observed: Default::default(),
        });
        let offsets = Arc::new(Recorder::default());
        TestConsumer {
            route,
            pipeline: Pipeline::new(shared.clone(), offsets.clone()),
            shared,
            control,
            offsets,
            fetch: Fetch::default(),
            log: BTreeMap::new(),
        }
    }
}

/// Offsets stored and committed, as recorded.
#[derive(Debug, Default)]
struct Recorder {
    stored: Mutex<HashMap<i32, i64>>,
    committed: Mutex<HashMap<i32, i64>>,
}

impl ClientOps for Recorder {
    fn store_offset(&self, tp: &TopicPartition, next_offset: i64) -> bool {
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.partition, next_offset);
        true
    }

    fn commit_sync(&self, tp: &TopicPartition, next_offset: i64) -> bool {
        self.store_offset(tp, next_offset);
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.partition, next_offset);
        true
    }

    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        None
    }
}

/// Fetch positions per partition, moved by seeks as librdkafka's would be.
#[derive(Debug, Default)]
struct Fetch {
    position: Mutex<HashMap<i32, i64>>,
}

impl PartitionControl for Fetch {
    fn pause(&self, _tp: &TopicPartition) -> Result<(), KafkaError> {
        Ok(())
    }

    fn resume(&self, _tp: &TopicPartition) -> Result<(), KafkaError> {
        Ok(())
    }

    fn seek(&self, tp: &TopicPartition, offset: i64) -> Result<(), KafkaError> {
        self.position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.partition, offset);
        Ok(())
    }
}

/// What one batch's job did (see [`TestConsumer::consume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The partition.
    pub partition: i32,
    /// The batch's first offset.
    pub first_offset: i64,
    /// The batch's last offset.
    pub last_offset: i64,
    /// The attempt it ran as (1: first).
    pub attempt: u32,
    /// The error `consume` returned (or its panic), if it failed.
    pub error: Option<String>,
    /// The virtual partition the job processed (topics with virtual partitions: one outcome
    /// per group of the batch, each with the batch's offsets), None otherwise.
    pub virtual_partition: Option<VirtualPartition>,
}

/// A pause of a partition, as the consumer or a retry set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseState {
    /// Where fetching resumes.
    pub resume_from: i64,
    /// Whether it is a retry back-off (the next [`TestConsumer::consume`] ends it); otherwise
    /// the consumer paused, and it lasts until `ctx.resume()` or [`TestConsumer::resume`].
    pub retry: bool,
}

/// A message of the in-memory log (its offset is its index in the partition's log).
struct Logged {
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: karafka_core::Headers,
    timestamp: Timestamp,
}

/// One routed topic's consumer under test. See the [module](self).
pub struct TestConsumer {
    route: Arc<TopicRoute>,
    shared: Arc<GroupShared>,
    control: Arc<Control>,
    offsets: Arc<Recorder>,
    fetch: Fetch,
    /// Every message produced, per partition, in offset order (offset = index).
    log: BTreeMap<i32, Vec<Logged>>,
    /// The production pipeline: jobs from batches, outcomes from jobs, consumer instances.
    pipeline: Pipeline,
}

impl std::fmt::Debug for TestConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestConsumer")
            .field("topic", &self.route.name)
            .field(
                "messages",
                &self
                    .log
                    .iter()
                    .map(|(p, l)| (*p, l.len()))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl TestConsumer {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.route.name
    }

    /// Appends a message with `payload` to partition 0; returns its offset.
    pub fn produce(&mut self, payload: impl Into<Bytes>) -> i64 {
        self.produce_message(Message::new(self.route.name.clone(), payload))
    }

    /// Appends `message` (key, headers, partition — 0 when unset —, timestamp — now when
    /// unset; its topic is ignored: it goes to this consumer's topic); returns its offset.
    /// Offsets increase per partition from 0.
    pub fn produce_message(&mut self, message: Message) -> i64 {
        let partition = message.partition.unwrap_or(0);
        let log = self.log.entry(partition).or_default();
        let offset = log.len() as i64;
        let timestamp = message.timestamp.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
        log.push(Logged {
            key: message.key,
            payload: message.payload,
            headers: message.headers,
            timestamp: Timestamp::CreateTime(timestamp),
        });
        offset
    }

    /// Runs one batch per partition that has messages to fetch and is not paused by the
    /// consumer, like one poll: up to `max_messages` each, from the fetch position. Each runs
    /// through the production path (consumer job, then mark / retry / dead-letter). A retry
    /// back-off from an earlier call ends first: this call is the retry.
    pub async fn consume(&mut self) -> Vec<BatchOutcome> {
        let partitions: Vec<i32> = self.log.keys().copied().collect();
        let mut results = Vec::new();
        for partition in partitions {
            let tp = self.tp(partition);
            let coordinator = self.shared.coordinator(&tp);
            if let Some(pause) = coordinator.pause() {
                if pause.retry {
                    self.outcomes().resume(&tp, &coordinator);
                } else {
                    continue;
                }
            }
            let position = self.position(partition);
            // Delivered like a poll: copied into one buffer, the job gets a view of it.
            let skip = usize::try_from(position).unwrap_or(0);
            let mut buffer = PollBufferBuilder::new(self.route.max_messages.min(8192), 0);
            let topic = buffer.topic(&self.route.name);
            for (offset, m) in self.log[&partition]
                .iter()
                .enumerate()
                .skip(skip)
                .take(self.route.max_messages)
            {
                buffer.push(
                    topic,
                    partition,
                    offset as i64,
                    m.key.as_deref(),
                    m.payload.as_deref(),
                    m.headers.clone(),
                    m.timestamp,
                );
            }
            if buffer.is_empty() {
                continue;
            }
            let (first, last) = (skip as i64, (skip + buffer.len() - 1) as i64);
            self.fetch.seek(&tp, last + 1).ok();
            let (buffer, ranges) = buffer.finish(SystemTime::now());
            let attempt = coordinator.attempt();
            // One partition's messages: at most one job (none when the topic has no
            // consumer, or the partition is paused or revoked), or one per virtual partition,
            // run one after the other.
            for job in self.pipeline.consume_jobs(&buffer, ranges) {
                let virtual_partition = job.input.group.as_ref().map(|g| VirtualPartition {
                    id: g.id,
                    groups: g.groups,
                    collapsed: g.collapsed,
                });
                let done = self.run(job).await;
                let error = done.outcome.as_ref().err().map(|e| e.to_string());
                self.pipeline.after(done, &self.fetch);
                results.push(BatchOutcome {
                    partition,
                    first_offset: first,
                    last_offset: last,
                    attempt,
                    error,
                    virtual_partition,
                });
            }
        }
        results
    }

    /// The next offset stored for commit on `partition` (last processed + 1), if any.
    pub fn marked(&self, partition: i32) -> Option<i64> {
        self.offsets
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
    }

    /// The offset committed synchronously (`mark_as_consumed_sync`) on `partition`, if any.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.offsets
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
    }

    /// The pause of `partition`, if it is paused.
    pub fn paused(&self, partition: i32) -> Option<PauseState> {
        let coordinator = self.shared.coordinator(&self.tp(partition));
        coordinator.pause().map(|p| PauseState {
            resume_from: p.resume_from,
            retry: p.retry,
        })
    }

    /// The attempt the next batch of `partition` runs as (1 unless a retry is due).
    pub fn attempt(&self, partition: i32) -> u32 {
        self.shared.coordinator(&self.tp(partition)).attempt()
    }

    /// Ends a pause of `partition` now (as if its timeout passed).
    pub fn resume(&mut self, partition: i32) {
        let tp = self.tp(partition);
        let coordinator = self.shared.coordinator(&tp);
        if coordinator.is_paused() {
            self.outcomes().resume(&tp, &coordinator);
        }
    }

    /// Revokes `partition`: runs the `revoked` hook of its consumer instance (if it has one)
    /// and forgets the instance and the partition's state; fetching starts again from the
    /// marked offset. Returns the hook's error, if any.
    pub async fn revoke(&mut self, partition: i32) -> Option<String> {
        let tp = self.tp(partition);
        // As a rebalance does: the partition's state goes, its `revoked` hook is queued.
        self.shared.revoke(std::slice::from_ref(&tp), false);
        let mut error = None;
        for job in self.pipeline.revocation_jobs() {
            let done = self.run(job).await;
            error = error.or(done.outcome.as_ref().err().map(|e| e.to_string()));
            self.pipeline.after(done, &self.fetch);
        }
        let restart = self.marked(partition).unwrap_or(0);
        self.fetch.seek(&tp, restart).ok();
        error
    }

    /// Runs the consumer's `tick` on `partition` now, as a periodic job does on an idle
    /// partition (on its instance, a new one if it had no batch yet; the interval is the
    /// test's to simulate). Returns the tick's error, if any; an error when the topic has no
    /// periodic job (`karafka-pro`'s `.periodic_job(...)`).
    pub async fn tick(&mut self, partition: i32) -> Result<Option<String>, HarnessError> {
        if self.route.periodic.is_none() {
            return Err(HarnessError::NotPeriodic {
                topic: self.route.name.to_string(),
            });
        }
        let Some(job) = self.pipeline.tick_job(self.tp(partition)) else {
            return Ok(None);
        };
        let done = self.run(job).await;
        let error = done.outcome.as_ref().err().map(|e| e.to_string());
        self.pipeline.after(done, &self.fetch);
        Ok(error)
    }

    /// Runs the `shutdown` hook of every consumer instance; returns the errors by partition.
    pub async fn shutdown(&mut self) -> Vec<(i32, String)> {
        let mut errors = Vec::new();
        for job in self.pipeline.shutdown_jobs() {
            let partition = job.input.tp.partition;
            let done = self.run(job).await;
            if let Err(e) = &done.outcome {
                errors.push((partition, e.to_string()));
            }
        }
        errors
    }

    fn outcomes(&self) -> Outcomes<'_> {
        self.pipeline.outcomes(&self.fetch)
    }

    fn tp(&self, partition: i32) -> TopicPartition {
        TopicPartition::new(self.route.name.clone(), partition)
    }

    fn position(&self, partition: i32) -> i64 {
        self.fetch
            .position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// Runs one job on the caller's task (the listener runs them on the worker runtime).
    async fn run(&self, job: Job) -> executor::Done {
        executor::run(
            job,
            self.shared.monitor.clone(),
            self.control.clone(),
            "karafka.harness".into(),
        )
        .await
    }
}
