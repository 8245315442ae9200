//! The typed events and error kinds.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::statistics::Statistics;
use crate::message::{Label, Partition, TopicPartition};

/// Everything karafka-rs reports. Each variant has a stable dotted [`name`](Event::name)
/// (`error.occurred`, `message.acknowledged`, ...) for logs and metrics.
///
/// The enum is `#[non_exhaustive]`: match with a `_` arm. New events are added as the
/// framework grows; a name, once published, does not change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// `error.occurred`: something failed; see [`ErrorOccurred::kind`].
    ErrorOccurred(ErrorOccurred),
    /// `statistics.emitted`: librdkafka statistics of a producer or consumer client.
    StatisticsEmitted {
        /// The producer's id or the subscription group's name.
        source_id: Arc<str>,
        /// The consumer group of a consumer's subscription group (`None` for producers).
        consumer_group: Option<Arc<str>>,
        /// The decoded report.
        statistics: Arc<Statistics>,
    },
    /// `producer.connected`, `producer.closing`, `producer.closed`.
    ProducerLifecycle {
        /// The producer's id.
        producer_id: Arc<str>,
        /// Which step.
        stage: ProducerStage,
    },
    /// `message.produced_sync`, `message.produced_async`, `messages.produced_sync`,
    /// `messages.produced_async`: messages were handed to librdkafka.
    MessagesProduced {
        /// The producer's id.
        producer_id: Arc<str>,
        /// Which dispatch API.
        dispatch: Dispatch,
        /// The topic, for a single message.
        topic: Option<Arc<str>>,
        /// How many messages.
        messages: usize,
        /// For sync dispatch: until the last delivery report; for async: the hand-off.
        duration: Duration,
    },
    /// `message.acknowledged`: the broker acknowledged a message (its delivery report).
    MessageAcknowledged {
        /// The producer's id.
        producer_id: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Offset (-1 when the broker sends no offset, as with `acks=0`).
        offset: i64,
        /// The message's label.
        label: Option<Label>,
    },
    /// `message.buffered`, `messages.buffered`: messages were added to the producer's buffer.
    MessagesBuffered {
        /// The producer's id.
        producer_id: Arc<str>,
        /// How many were added.
        messages: usize,
        /// Buffer size after adding.
        buffered: usize,
    },
    /// `buffer.flushed_sync`, `buffer.flushed_async`: the buffer was dispatched.
    BufferFlushed {
        /// The producer's id.
        producer_id: Arc<str>,
        /// Whether the flush waited for delivery reports.
        sync: bool,
        /// Messages dispatched.
        messages: usize,
        /// Messages that failed and stayed in the buffer.
        failed: usize,
        /// How long the flush took.
        duration: Duration,
    },
    /// `transaction.started`, `transaction.committed`, `transaction.aborted`,
    /// `transaction.marked_as_consumed`.
    Transaction {
        /// The producer's id.
        producer_id: Arc<str>,
        /// Which step.
        stage: TransactionStage,
        /// How long the step took (commit and abort include librdkafka's flush).
        duration: Duration,
    },
    /// `connection.listener.fetch_loop.received`: a listener polled a batch.
    BatchReceived {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Subscription group (one client, one listener).
        subscription_group: Arc<str>,
        /// Messages in the batch.
        messages: usize,
        /// Distinct partitions in the batch.
        partitions: usize,
        /// How long the poll took.
        duration: Duration,
    },
    /// `consumer.consume`: a batch is handed to a consumer.
    Consume {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Messages in the batch.
        messages: usize,
        /// First offset of the batch.
        first_offset: i64,
        /// Last offset of the batch.
        last_offset: i64,
    },
    /// `consumer.consumed`: a consumer processed a batch successfully.
    Consumed {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Messages in the batch.
        messages: usize,
        /// First offset of the batch.
        first_offset: i64,
        /// Last offset of the batch.
        last_offset: i64,
        /// Time in `consume`.
        duration: Duration,
        /// Milliseconds from the last message's create time to the start of processing.
        consumption_lag_ms: i64,
        /// Milliseconds the batch waited between being polled and being processed.
        processing_lag_ms: i64,
    },
    /// `consumer.revoked`, `consumer.shutdown`, `consumer.eofed`, `consumer.initialized`,
    /// `consumer.ticked`: a lifecycle hook of a consumer ran.
    ConsumerHook {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Which hook.
        job: JobKind,
        /// Time in the hook.
        duration: Duration,
    },
    /// `worker.process`: a worker picked up a job.
    WorkerProcess {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Which job.
        job: JobKind,
    },
    /// `worker.processed`: a worker finished a job (successfully or not).
    WorkerProcessed {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Which job.
        job: JobKind,
        /// Time from pickup to finish.
        duration: Duration,
    },
    /// `rebalance.partitions_assigned`, `rebalance.partitions_revoked`,
    /// `rebalance.partitions_lost`: a rebalance changed a client's assignment.
    Rebalance {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Subscription group.
        subscription_group: Arc<str>,
        /// What happened.
        change: AssignmentChange,
        /// The partitions concerned.
        partitions: Vec<TopicPartition>,
    },
    /// `client.pause`: a partition was paused.
    Paused {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Offset to resume from.
        offset: i64,
        /// How long.
        timeout: Duration,
        /// Why.
        reason: PauseReason,
    },
    /// `client.resume`: a paused partition was resumed.
    Resumed {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
    },
    /// `consumer.consuming.retry`: a failed batch will be retried after a back-off.
    Retry {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: Partition,
        /// Attempt about to start (2 = first retry).
        attempt: u32,
        /// Offset processing resumes from.
        offset: i64,
        /// Back-off before the retry.
        backoff: Duration,
    },
    /// `dead_letter_queue.dispatched`: a message that kept failing was sent to the DLQ topic and
    /// skipped.
    DlqDispatched {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// Source topic.
        topic: Arc<str>,
        /// Source partition.
        partition: Partition,
        /// Source offset.
        offset: i64,
        /// Dead-letter topic.
        dlq_topic: Arc<str>,
        /// Attempts made before giving up on the message.
        attempts: u32,
    },
    /// `app.initializing`, `app.running`, `app.quieting`, `app.quiet`, `app.stopping`,
    /// `app.stopped`: the app's status changed.
    AppStatus {
        /// The app's name.
        app: Arc<str>,
        /// The new status.
        status: AppStatus,
    },
    /// `connection.multiplexing.scaled_up`, `connection.multiplexing.scaled_down`: a
    /// subscription group with several connections (multiplexing) started or stopped one.
    ConnectionScaled {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// The subscription group (the family of connections).
        subscription_group: Arc<str>,
        /// The connection started or stopped (`events#1`: the subscription group and the
        /// connection's index).
        connection: Arc<str>,
        /// Up (started) or down (stopped).
        direction: ScaleDirection,
        /// Connections of the subscription group running after the change.
        active: usize,
        /// Why, in words (the observations that led to it).
        reason: Arc<str>,
    },
    /// `connection.multiplexing.warning`: a subscription group's connections run in a way
    /// that works but costs (e.g. dynamic multiplexing without incremental rebalancing).
    ConnectionWarning {
        /// Consumer group.
        consumer_group: Arc<str>,
        /// The subscription group.
        subscription_group: Arc<str>,
        /// What, why it matters and how to change it.
        warning: Arc<str>,
    },
    /// Swarm mode (karafka-pro): `process.before_warmup`, `swarm.node.after_fork`,
    /// `swarm.node.reported` and `swarm.manager.*`; see [`SwarmEvent`].
    Swarm(SwarmEvent),
    /// An application-defined event (name chosen by the application).
    Custom(CustomEvent),
}

/// What happened in a swarm (karafka-pro's swarm mode: a supervisor process and its node
/// processes). The supervisor emits `process.before_warmup` and the `swarm.manager.*` events;
/// each node emits `swarm.node.after_fork` and `swarm.node.reported`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SwarmEvent {
    /// `process.before_warmup`: in the supervisor, once, before any node starts.
    BeforeWarmup {
        /// How many nodes it is about to start.
        nodes: usize,
    },
    /// `swarm.node.after_fork`: in a node, once, as it starts (before its app connects).
    /// Karafka's name is kept, though a node is a new process running the same binary, not a
    /// fork.
    NodeStarted {
        /// The node's id (`0..nodes`).
        node: usize,
    },
    /// `swarm.node.reported`: in a node, each report it sends to its supervisor.
    NodeReported {
        /// The node's id.
        node: usize,
        /// What it reported.
        status: NodeStatus,
    },
    /// `swarm.manager.before_fork`: the supervisor is about to start node `node`.
    BeforeFork {
        /// The node's id.
        node: usize,
    },
    /// `swarm.manager.after_fork`: the supervisor started node `node` as process `pid`.
    AfterFork {
        /// The node's id.
        node: usize,
        /// Its process id.
        pid: u32,
    },
    /// `swarm.manager.control`: one supervision pass, with every node's state.
    Control {
        /// Each node's state.
        nodes: Arc<[NodeState]>,
    },
    /// `swarm.manager.stopping`: the supervisor sent SIGTERM to one node, for `status` (its
    /// unhealthy report, or [`NodeStatus::Unresponsive`] when it stopped reporting).
    Stopping {
        /// The node's id.
        node: usize,
        /// Its process id.
        pid: u32,
        /// Why.
        status: NodeStatus,
    },
    /// `swarm.manager.terminating`: a node was still alive `shutdown_timeout` after its
    /// SIGTERM; the supervisor sent SIGKILL.
    Terminating {
        /// The node's id.
        node: usize,
        /// Its process id.
        pid: u32,
    },
    /// `swarm.manager.exited`: a node process ended and was reaped.
    Exited {
        /// The node's id.
        node: usize,
        /// Its process id.
        pid: u32,
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that ended it, when one did.
        signal: Option<i32>,
    },
}

/// What a swarm node reports about itself (Karafka's status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeStatus {
    /// `-1`: no report within `node_report_timeout` (hanging, or not started yet).
    Unresponsive,
    /// `0`: healthy.
    Healthy,
    /// `1`: a listener has not polled for longer than `polling_ttl`.
    PollingStuck,
    /// `2`: a job has run longer than `consuming_ttl`.
    ConsumingStuck,
    /// `3`: the node's resident memory is over `memory_limit`.
    OverMemory,
}

impl NodeStatus {
    /// The code on the wire and in reports: -1, 0, 1, 2, 3.
    pub fn code(self) -> i32 {
        match self {
            NodeStatus::Unresponsive => -1,
            NodeStatus::Healthy => 0,
            NodeStatus::PollingStuck => 1,
            NodeStatus::ConsumingStuck => 2,
            NodeStatus::OverMemory => 3,
        }
    }

    /// The status of a code (`None` for an unknown one).
    pub fn from_code(code: i32) -> Option<NodeStatus> {
        Some(match code {
            -1 => NodeStatus::Unresponsive,
            0 => NodeStatus::Healthy,
            1 => NodeStatus::PollingStuck,
            2 => NodeStatus::ConsumingStuck,
            3 => NodeStatus::OverMemory,
            _ => return None,
        })
    }

    /// `unresponsive`, `healthy`, `polling_stuck`, `consuming_stuck`, `over_memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unresponsive => "unresponsive",
            NodeStatus::Healthy => "healthy",
            NodeStatus::PollingStuck => "polling_stuck",
            NodeStatus::ConsumingStuck => "consuming_stuck",
            NodeStatus::OverMemory => "over_memory",
        }
    }
}

/// One node as the supervisor sees it (in [`SwarmEvent::Control`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeState {
    /// The node's id.
    pub node: usize,
    /// Its process id while it runs (`None` while dead, waiting to be restarted).
    pub pid: Option<u32>,
    /// Its last report (or `Unresponsive`).
    pub status: NodeStatus,
    /// Since its last report (or since it started, before its first one).
    pub since_report: Duration,
    /// How many times it was started.
    pub starts: u64,
}

impl NodeState {
    /// A node's state.
    pub fn new(
        node: usize,
        pid: Option<u32>,
        status: NodeStatus,
        since_report: Duration,
        starts: u64,
    ) -> Self {
        NodeState {
            node,
            pid,
            status,
            since_report,
            starts,
        }
    }
}

/// Which way a subscription group's connections changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScaleDirection {
    /// A connection was started.
    Up,
    /// A connection was stopped (it committed and left the group).
    Down,
}

/// Where a running app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AppStatus {
    /// Connecting and subscribing.
    Initializing,
    /// Consuming.
    Running,
    /// Asked to go quiet: finishing in-flight jobs, handing out no new batches.
    Quieting,
    /// Quiet: no jobs, no new batches; connections and assignments kept.
    Quiet,
    /// Stopping: finishing jobs, running shutdown hooks, committing, leaving the groups.
    Stopping,
    /// Stopped.
    Stopped,
}

impl AppStatus {
    /// `initializing`, `running`, `quieting`, `quiet`, `stopping`, `stopped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AppStatus::Initializing => "initializing",
            AppStatus::Running => "running",
            AppStatus::Quieting => "quieting",
            AppStatus::Quiet => "quiet",
            AppStatus::Stopping => "stopping",
            AppStatus::Stopped => "stopped",
        }
    }
}

impl fmt::Display for AppStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Consumer jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobKind {
    /// `consume` with a batch.
    Consume,
    /// `revoked`: the partition was taken away.
    Revoked,
    /// `shutdown`: the app stops.
    Shutdown,
    /// `eofed`: the end of the partition was reached.
    Eofed,
    /// `initialized`: the consumer instance was created.
    Initialized,
    /// `tick`: a periodic job on an idle partition (`karafka-pro`'s periodic jobs).
    Tick,
}

impl JobKind {
    /// `consume`, `revoked`, `shutdown`, `eofed`, `initialized`, `tick`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Consume => "consume",
            JobKind::Revoked => "revoked",
            JobKind::Shutdown => "shutdown",
            JobKind::Eofed => "eofed",
            JobKind::Initialized => "initialized",
            JobKind::Tick => "tick",
        }
    }
}

/// How a rebalance changed an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AssignmentChange {
    /// Partitions were assigned.
    Assigned,
    /// Partitions were revoked (offsets were committed first).
    Revoked,
    /// Partitions were lost (the member was considered dead; no commit was possible).
    Lost,
}

/// Why a partition was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PauseReason {
    /// Processing failed; it resumes after the back-off.
    Retry,
    /// The consumer asked for it (`Context::pause`).
    User,
}

impl Event {
    /// Every built-in event name (custom events excluded).
    pub const NAMES: &'static [&'static str] = &[
        "error.occurred",
        "statistics.emitted",
        "producer.connected",
        "producer.closing",
        "producer.closed",
        "message.produced_sync",
        "message.produced_async",
        "messages.produced_sync",
        "messages.produced_async",
        "message.acknowledged",
        "message.buffered",
        "messages.buffered",
        "buffer.flushed_sync",
        "buffer.flushed_async",
        "transaction.started",
        "transaction.committed",
        "transaction.aborted",
        "transaction.marked_as_consumed",
        "connection.listener.fetch_loop.received",
        "consumer.consume",
        "consumer.consumed",
        "consumer.revoked",
        "consumer.shutdown",
        "consumer.eofed",
        "consumer.initialized",
        "worker.process",
        "worker.processed",
        "rebalance.partitions_assigned",
        "rebalance.partitions_revoked",
        "rebalance.partitions_lost",
        "client.pause",
        "client.resume",
        "consumer.consuming.retry",
        "dead_letter_queue.dispatched",
        "app.initializing",
        "app.running",
        "app.quieting",
        "app.quiet",
        "app.stopping",
        "app.stopped",
        "connection.multiplexing.scaled_up",
        "connection.multiplexing.scaled_down",
        "connection.multiplexing.warning",
        "process.before_warmup",
        "swarm.node.after_fork",
        "swarm.node.reported",
        "swarm.manager.before_fork",
        "swarm.manager.after_fork",
        "swarm.manager.control",
        "swarm.manager.stopping",
        "swarm.manager.terminating",
        "swarm.manager.exited",
    ];

    /// The event's stable dotted name.
    pub fn name(&self) -> &str {
        match self {
            Event::ErrorOccurred(_) => "error.occurred",
            Event::StatisticsEmitted { .. } => "statistics.emitted",
            Event::ProducerLifecycle { stage, .. } => match stage {
                ProducerStage::Connected => "producer.connected",
                ProducerStage::Closing => "producer.closing",
                ProducerStage::Closed => "producer.closed",
            },
            Event::MessagesProduced { dispatch, .. } => match dispatch {
                Dispatch::SingleSync => "message.produced_sync",
                Dispatch::SingleAsync => "message.produced_async",
                Dispatch::ManySync => "messages.produced_sync",
                Dispatch::ManyAsync => "messages.produced_async",
            },
            Event::MessageAcknowledged { .. } => "message.acknowledged",
            Event::MessagesBuffered { messages, .. } => {
                if *messages == 1 {
                    "message.buffered"
                } else {
                    "messages.buffered"
                }
            }
            Event::BufferFlushed { sync, .. } => {
                if *sync {
                    "buffer.flushed_sync"
                } else {
                    "buffer.flushed_async"
                }
            }
            Event::Transaction { stage, .. } => match stage {
                TransactionStage::Started => "transaction.started",
                TransactionStage::Committed => "transaction.committed",
                TransactionStage::Aborted => "transaction.aborted",
                TransactionStage::MarkedAsConsumed => "transaction.marked_as_consumed",
            },
            Event::BatchReceived { .. } => "connection.listener.fetch_loop.received",
            Event::Consume { .. } => "consumer.consume",
            Event::Consumed { .. } => "consumer.consumed",
            Event::ConsumerHook { job, .. } => match job {
                JobKind::Revoked => "consumer.revoked",
                JobKind::Shutdown => "consumer.shutdown",
                JobKind::Eofed => "consumer.eofed",
                JobKind::Initialized => "consumer.initialized",
                JobKind::Tick => "consumer.ticked",
                JobKind::Consume => "consumer.consumed",
            },
            Event::WorkerProcess { .. } => "worker.process",
            Event::WorkerProcessed { .. } => "worker.processed",
            Event::Rebalance { change, .. } => match change {
                AssignmentChange::Assigned => "rebalance.partitions_assigned",
                AssignmentChange::Revoked => "rebalance.partitions_revoked",
                AssignmentChange::Lost => "rebalance.partitions_lost",
            },
            Event::Paused { .. } => "client.pause",
            Event::Resumed { .. } => "client.resume",
            Event::Retry { .. } => "consumer.consuming.retry",
            Event::DlqDispatched { .. } => "dead_letter_queue.dispatched",
            Event::AppStatus { status, .. } => match status {
                AppStatus::Initializing => "app.initializing",
                AppStatus::Running => "app.running",
                AppStatus::Quieting => "app.quieting",
                AppStatus::Quiet => "app.quiet",
                AppStatus::Stopping => "app.stopping",
                AppStatus::Stopped => "app.stopped",
            },
            Event::ConnectionScaled { direction, .. } => match direction {
                ScaleDirection::Up => "connection.multiplexing.scaled_up",
                ScaleDirection::Down => "connection.multiplexing.scaled_down",
            },
            Event::ConnectionWarning { .. } => "connection.multiplexing.warning",
            Event::Swarm(e) => match e {
                SwarmEvent::BeforeWarmup { .. } => "process.before_warmup",
                SwarmEvent::NodeStarted { .. } => "swarm.node.after_fork",
                SwarmEvent::NodeReported { .. } => "swarm.node.reported",
                SwarmEvent::BeforeFork { .. } => "swarm.manager.before_fork",
                SwarmEvent::AfterFork { .. } => "swarm.manager.after_fork",
                SwarmEvent::Control { .. } => "swarm.manager.control",
                SwarmEvent::Stopping { .. } => "swarm.manager.stopping",
                SwarmEvent::Terminating { .. } => "swarm.manager.terminating",
                SwarmEvent::Exited { .. } => "swarm.manager.exited",
            },
            Event::Custom(e) => &e.name,
        }
    }

    /// How long the instrumented operation took, for events that time something.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Event::MessagesProduced { duration, .. }
            | Event::BufferFlushed { duration, .. }
            | Event::Transaction { duration, .. }
            | Event::BatchReceived { duration, .. }
            | Event::Consumed { duration, .. }
            | Event::ConsumerHook { duration, .. }
            | Event::WorkerProcessed { duration, .. } => Some(*duration),
            Event::Custom(e) => e.duration,
            _ => None,
        }
    }

    /// A custom event named `name`. Pick names outside karafka-rs' namespaces (not
    /// starting with `producer.`, `message.`, `messages.`, `buffer.`, `transaction.`,
    /// `consumer.`, `connection.`, `worker.`, `error.`, `statistics.`, `app.`, `swarm.`),
    /// e.g. `billing.invoice.sent`.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        Event::Custom(CustomEvent {
            name: name.into(),
            duration: None,
            payload: None,
        })
    }
}

/// A one-line human summary (what the tracing listener logs).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Event::ErrorOccurred(e) => write!(f, "{name}: {e}"),
            Event::StatisticsEmitted {
                source_id,
                statistics,
                ..
            } => write!(
                f,
                "{name} {source_id}: {} messages queued, {} produced, {} consumed",
                statistics.msg_cnt, statistics.txmsgs, statistics.rxmsgs
            ),
            Event::ProducerLifecycle { producer_id, .. } => write!(f, "{name} {producer_id}"),
            Event::MessagesProduced {
                producer_id,
                topic,
                messages,
                duration,
                ..
            } => {
                write!(f, "{name} {producer_id}: {messages} message(s)")?;
                if let Some(topic) = topic {
                    write!(f, " to {topic}")?;
                }
                write!(f, " in {duration:?}")
            }
            Event::MessageAcknowledged {
                producer_id,
                topic,
                partition,
                offset,
                ..
            } => write!(f, "{name} {producer_id}: {topic}/{partition}@{offset}"),
            Event::MessagesBuffered {
                producer_id,
                messages,
                buffered,
            } => write!(f, "{name} {producer_id}: +{messages}, {buffered} buffered"),
            Event::BufferFlushed {
                producer_id,
                messages,
                failed,
                duration,
                ..
            } => write!(
                f,
                "{name} {producer_id}: {messages} dispatched, {failed} kept after failing, in {duration:?}"
            ),
            Event::Transaction {
                producer_id,
                duration,
                ..
            } => write!(f, "{name} {producer_id} in {duration:?}"),
            Event::BatchReceived {
                subscription_group,
                messages,
                partitions,
                duration,
                ..
            } => write!(
                f,
                "{name} {subscription_group}: {messages} message(s) from {partitions} partition(s) in {duration:?}"
            ),
            Event::Consume {
                topic,
                partition,
                messages,
                first_offset,
                last_offset,
                ..
            } => write!(
                f,
                "{name} {topic}/{partition}: {messages} message(s) {first_offset}..={last_offset}"
            ),
            Event::Consumed {
                topic,
                partition,
                messages,
                duration,
                consumption_lag_ms,
                ..
            } => write!(
                f,
                "{name} {topic}/{partition}: {messages} message(s) in {duration:?} (lag {consumption_lag_ms} ms)"
            ),
            Event::ConsumerHook {
                topic,
                partition,
                duration,
                ..
            } => write!(f, "{name} {topic}/{partition} in {duration:?}"),
            Event::WorkerProcess {
                topic,
                partition,
                job,
                ..
            } => write!(f, "{name} {} {topic}/{partition}", job.as_str()),
            Event::WorkerProcessed {
                topic,
                partition,
                job,
                duration,
                ..
            } => write!(
                f,
                "{name} {} {topic}/{partition} in {duration:?}",
                job.as_str()
            ),
            Event::Rebalance {
                subscription_group,
                partitions,
                ..
            } => {
                write!(f, "{name} {subscription_group}:")?;
                for tp in partitions {
                    write!(f, " {tp}")?;
                }
                Ok(())
            }
            Event::ConnectionScaled {
                consumer_group,
                connection,
                active,
                reason,
                ..
            } => write!(
                f,
                "{name} {consumer_group}.{connection}: {active} connection(s) now ({reason})"
            ),
            Event::ConnectionWarning {
                consumer_group,
                subscription_group,
                warning,
            } => write!(f, "{name} {consumer_group}.{subscription_group}: {warning}"),
            Event::Swarm(e) => match e {
                SwarmEvent::BeforeWarmup { nodes } => write!(f, "{name}: {nodes} node(s)"),
                SwarmEvent::NodeStarted { node } | SwarmEvent::BeforeFork { node } => {
                    write!(f, "{name} node {node}")
                }
                SwarmEvent::NodeReported { node, status } => {
                    write!(f, "{name} node {node}: {}", status.as_str())
                }
                SwarmEvent::AfterFork { node, pid } | SwarmEvent::Terminating { node, pid } => {
                    write!(f, "{name} node {node} (pid {pid})")
                }
                SwarmEvent::Control { nodes } => {
                    write!(f, "{name}:")?;
                    for n in nodes.iter() {
                        match n.pid {
                            Some(pid) => write!(
                                f,
                                " node {} pid {pid} {} ({:?} since its report);",
                                n.node,
                                n.status.as_str(),
                                n.since_report
                            )?,
                            None => write!(f, " node {} down;", n.node)?,
                        }
                    }
                    Ok(())
                }
                SwarmEvent::Stopping { node, pid, status } => write!(
                    f,
                    "{name} node {node} (pid {pid}): {} (status {})",
                    status.as_str(),
                    status.code()
                ),
                SwarmEvent::Exited {
                    node,
                    pid,
                    code,
                    signal,
                } => match (code, signal) {
                    (Some(code), _) => write!(f, "{name} node {node} (pid {pid}) with code {code}"),
                    (None, Some(signal)) => {
                        write!(f, "{name} node {node} (pid {pid}) by signal {signal}")
                    }
                    (None, None) => write!(f, "{name} node {node} (pid {pid})"),
                },
            },
            Event::Paused {
                topic,
                partition,
                offset,
                timeout,
                reason,
                ..
            } => write!(
                f,
                "{name} {topic}/{partition} until offset {offset} resumes in {timeout:?} ({reason:?})"
            ),
            Event::Resumed {
                topic, partition, ..
            } => write!(f, "{name} {topic}/{partition}"),
            Event::Retry {
                topic,
                partition,
                attempt,
                offset,
                backoff,
                ..
            } => write!(
                f,
                "{name} {topic}/{partition}: attempt {attempt} from offset {offset} after {backoff:?}"
            ),
            Event::DlqDispatched {
                topic,
                partition,
                offset,
                dlq_topic,
                attempts,
                ..
            } => write!(
                f,
                "{name} {topic}/{partition}@{offset} -> {dlq_topic} after {attempts} attempt(s)"
            ),
            Event::AppStatus { app, .. } => write!(f, "{name} {app}"),
            Event::Custom(e) => {
                f.write_str(&e.name)?;
                if let Some(d) = e.duration {
                    write!(f, " in {d:?}")?;
                }
                Ok(())
            }
        }
    }
}

/// Producer lifecycle steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProducerStage {
    /// The librdkafka client was created (on first use).
    Connected,
    /// `close()` started.
    Closing,
    /// The client is gone.
    Closed,
}

/// Which dispatch API produced messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// `produce_sync`.
    SingleSync,
    /// `produce_async`.
    SingleAsync,
    /// `produce_many_sync`.
    ManySync,
    /// `produce_many_async`.
    ManyAsync,
}

/// Transaction steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransactionStage {
    /// A transaction began.
    Started,
    /// A transaction committed.
    Committed,
    /// A transaction aborted.
    Aborted,
    /// Consumer offsets were sent within the transaction.
    MarkedAsConsumed,
}

/// An application-defined event.
#[derive(Clone)]
pub struct CustomEvent {
    /// The event name, dotted.
    pub name: Cow<'static, str>,
    /// Duration, when the event times something.
    pub duration: Option<Duration>,
    /// Anything the application wants listeners to see (downcast with `payload.downcast_ref`).
    pub payload: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for CustomEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomEvent")
            .field("name", &self.name)
            .field("duration", &self.duration)
            .field("payload", &self.payload.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Which failure path an `error.occurred` event comes from. The dotted string
/// ([`as_str`](ErrorKind::as_str)) is stable, for metrics labels and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `librdkafka.error`: an error librdkafka reported through its error callback.
    Librdkafka,
    /// `callbacks.statistics.error`: librdkafka statistics could not be decoded.
    StatisticsDecode,
    /// `producer.produce.error`: a message could not be handed to librdkafka.
    ProducerProduce,
    /// `producer.delivery.error`: the broker did not acknowledge a message.
    ProducerDelivery,
    /// `producer.flush.error`: flushing the buffer failed for some messages.
    ProducerFlush,
    /// `producer.queue_full.error`: librdkafka's queue stayed full past the wait limit.
    ProducerQueueFull,
    /// `producer.transaction.error`: a transaction failed to begin, commit or abort.
    ProducerTransaction,
    /// `producer.close.error`: messages were still undelivered when the producer closed.
    ProducerClose,
    /// `consumer.consume.error`: `consume` returned an error or panicked.
    ConsumerConsume,
    /// `consumer.revoked.error`: the `revoked` hook failed.
    ConsumerRevoked,
    /// `consumer.shutdown.error`: the `shutdown` hook failed.
    ConsumerShutdown,
    /// `consumer.eofed.error`: the `eofed` hook failed.
    ConsumerEofed,
    /// `consumer.initialized.error`: the `initialized` hook failed.
    ConsumerInitialized,
    /// `consumer.tick.error`: the `tick` hook (periodic jobs) failed.
    ConsumerTick,
    /// `consumer.deserialization.error`: a payload, key or headers failed to deserialize.
    Deserialization,
    /// `consumer.dlq.dispatch.error`: a message could not be sent to its dead-letter queue.
    DlqDispatch,
    /// `connection.client.poll.error`: polling the consumer client failed.
    ConnectionClientPoll,
    /// `connection.client.commit.error`: committing offsets failed.
    ConnectionClientCommit,
    /// `connection.client.rebalance.error`: a rebalance callback failed.
    ConnectionClientRebalance,
    /// `connection.listener.error`: the listener loop of a subscription group failed.
    ConnectionListener,
    /// `worker.process.error`: a job failed outside user code.
    WorkerProcess,
    /// `app.error`: the app's lifecycle (start, stop) failed.
    App,
    /// `virtual_partitions.partitioner.error`: a batch could not be split into virtual
    /// partitions (the partitioner panicked, or its groups did not cover the batch); it was
    /// processed as one group.
    VirtualPartitionsPartitioner,
    /// `swarm.supervisor.error`: the swarm supervisor could not start, signal or reap a node.
    SwarmSupervisor,
    /// `swarm.node.error`: a swarm node could not report to its supervisor.
    SwarmNode,
}

impl ErrorKind {
    /// The stable dotted name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Librdkafka => "librdkafka.error",
            ErrorKind::StatisticsDecode => "callbacks.statistics.error",
            ErrorKind::ProducerProduce => "producer.produce.error",
            ErrorKind::ProducerDelivery => "producer.delivery.error",
            ErrorKind::ProducerFlush => "producer.flush.error",
            ErrorKind::ProducerQueueFull => "producer.queue_full.error",
            ErrorKind::ProducerTransaction => "producer.transaction.error",
            ErrorKind::ProducerClose => "producer.close.error",
            ErrorKind::ConsumerConsume => "consumer.consume.error",
            ErrorKind::ConsumerRevoked => "consumer.revoked.error",
            ErrorKind::ConsumerShutdown => "consumer.shutdown.error",
            ErrorKind::ConsumerEofed => "consumer.eofed.error",
            ErrorKind::ConsumerInitialized => "consumer.initialized.error",
            ErrorKind::ConsumerTick => "consumer.tick.error",
            ErrorKind::Deserialization => "consumer.deserialization.error",
            ErrorKind::DlqDispatch => "consumer.dlq.dispatch.error",
            ErrorKind::ConnectionClientPoll => "connection.client.poll.error",
            ErrorKind::ConnectionClientCommit => "connection.client.commit.error",
            ErrorKind::ConnectionClientRebalance => "connection.client.rebalance.error",
            ErrorKind::ConnectionListener => "connection.listener.error",
            ErrorKind::WorkerProcess => "worker.process.error",
            ErrorKind::App => "app.error",
            ErrorKind::VirtualPartitionsPartitioner => "virtual_partitions.partitioner.error",
            ErrorKind::SwarmSupervisor => "swarm.supervisor.error",
            ErrorKind::SwarmNode => "swarm.node.error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of `error.occurred`: what failed, where, and the error itself.
#[derive(Debug, Clone)]
pub struct ErrorOccurred {
    /// Which failure path.
    pub kind: ErrorKind,
    /// The error (downcast with `error.downcast_ref::<T>()`).
    pub error: Arc<dyn std::error::Error + Send + Sync + 'static>,
    /// The producer's or consumer group's id, when known.
    pub source_id: Option<Arc<str>>,
    /// The topic involved, when known.
    pub topic: Option<Arc<str>>,
    /// The partition involved, when known.
    pub partition: Option<Partition>,
    /// The offset involved, when known.
    pub offset: Option<i64>,
}

impl ErrorOccurred {
    /// An error of `kind` without location details.
    pub fn new(kind: ErrorKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::from_arc(kind, Arc::new(error))
    }

    /// An error of `kind` from an already shared error.
    pub fn from_arc(kind: ErrorKind, error: Arc<dyn std::error::Error + Send + Sync>) -> Self {
        Self {
            kind,
            error,
            source_id: None,
            topic: None,
            partition: None,
            offset: None,
        }
    }

    /// Names the producer or consumer group the error belongs to.
    pub fn source_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.source_id = Some(id.into());
        self
    }

    /// Names the topic, partition and offset involved.
    pub fn at(
        mut self,
        topic: impl Into<Arc<str>>,
        partition: Option<Partition>,
        offset: Option<i64>,
    ) -> Self {
        self.topic = Some(topic.into());
        self.partition = partition;
        self.offset = offset;
        self
    }
}

impl fmt::Display for ErrorOccurred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.kind)?;
        if let Some(id) = &self.source_id {
            write!(f, " {id}")?;
        }
        if let Some(topic) = &self.topic {
            write!(f, " {topic}")?;
            if let Some(p) = self.partition {
                write!(f, "/{p}")?;
            }
            if let Some(o) = self.offset {
                write!(f, "@{o}")?;
            }
        }
        write!(f, ": {}", self.error)?;
        let mut source = self.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_kind_location_and_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = ErrorOccurred::new(
            ErrorKind::ConsumerConsume,
            Outer(std::io::Error::other("inner")),
        )
        .source_id("orders-group")
        .at("orders", Some(2), Some(41));
        assert_eq!(
            e.to_string(),
            "[consumer.consume.error] orders-group orders/2@41: outer: inner"
        );
        let event = Event::ErrorOccurred(e);
        assert_eq!(event.name(), "error.occurred");
        assert!(
            event
                .to_string()
                .starts_with("error.occurred: [consumer.consume.error]")
        );
    }

    #[test]
    fn error_kind_names_are_dotted_and_unique() {
        use std::collections::HashSet;
        let kinds = [
            ErrorKind::Librdkafka,
            ErrorKind::StatisticsDecode,
            ErrorKind::ProducerProduce,
            ErrorKind::ProducerDelivery,
            ErrorKind::ProducerFlush,
            ErrorKind::ProducerQueueFull,
            ErrorKind::ProducerTransaction,
            ErrorKind::ProducerClose,
            ErrorKind::ConsumerConsume,
            ErrorKind::ConsumerRevoked,
            ErrorKind::ConsumerShutdown,
            ErrorKind::ConsumerEofed,
            ErrorKind::ConsumerInitialized,
            ErrorKind::ConsumerTick,
            ErrorKind::Deserialization,
            ErrorKind::DlqDispatch,
            ErrorKind::ConnectionClientPoll,
            ErrorKind::ConnectionClientCommit,
            ErrorKind::ConnectionClientRebalance,
            ErrorKind::ConnectionListener,
            ErrorKind::WorkerProcess,
            ErrorKind::App,
            ErrorKind::VirtualPartitionsPartitioner,
            ErrorKind::SwarmSupervisor,
            ErrorKind::SwarmNode,
        ];
        let names: HashSet<_> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), kinds.len());
        assert!(names.iter().all(|n| n.contains('.') && !n.contains(' ')));
    }
}
