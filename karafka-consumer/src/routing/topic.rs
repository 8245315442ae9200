//! Declaring a topic: its consumer, deserializer and settings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use karafka_core::KafkaSettings;

use crate::consumer::{Consumer, Erased, ErasedConsumer, Factory, NoConsumer};
use crate::jobs::JobPolicy;
use crate::message::{Decoder, RecordRef};
use crate::payload::{BoxError, Payload};
use crate::routing::DecodeReporter;
use crate::split::BatchSplitter;

/// Where a consumer group starts in a partition it has no committed offset for, or whose
/// committed offset the broker no longer holds (deleted by retention: out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitialOffset {
    /// From the oldest message kept (librdkafka `auto.offset.reset=earliest`). The default.
    Earliest,
    /// Only messages produced from now on (`auto.offset.reset=latest`).
    Latest,
}

impl InitialOffset {
    pub(crate) fn as_reset(&self) -> &'static str {
        match self {
            InitialOffset::Earliest => "earliest",
            InitialOffset::Latest => "latest",
        }
    }
}

/// A dead-letter queue: where a message goes after `max_retries` failed retries, so its
/// partition keeps flowing.
///
/// The message is sent with its key, payload and headers, plus `source_topic`,
/// `source_partition`, `source_offset` and `source_consumer_group` headers, then skipped.
///
/// ```
/// use karafka_consumer::routing::DeadLetterQueue;
/// let dlq = DeadLetterQueue::new("orders-dlq").max_retries(5).independent(true);
/// assert_eq!(dlq.topic(), "orders-dlq");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterQueue {
    topic: String,
    max_retries: u32,
    independent: bool,
}

impl DeadLetterQueue {
    /// Dispatches to `topic` after 3 failed retries.
    pub fn new(topic: impl Into<String>) -> Self {
        DeadLetterQueue {
            topic: topic.into(),
            max_retries: 3,
            independent: false,
        }
    }

    /// Retries before dispatching (default 3; 0 dispatches on the first failure).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Whether each message gets its own retry budget: when a retried batch made progress
    /// (marked messages) before failing again, the count starts over for the message that now
    /// fails. Default `false`: the partition's failures count until the skip.
    pub fn independent(mut self, independent: bool) -> Self {
        self.independent = independent;
        self
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Retries before dispatch.
    pub fn retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether retry budgets are per message.
    pub fn is_independent(&self) -> bool {
        self.independent
    }
}

/// How a topic should exist in the cluster: what `topics plan` compares with the cluster and
/// `topics migrate` applies (see [`crate::admin`]).
///
/// Every routed topic is declared (1 partition, replication factor 1, no configs) unless its
/// declaratives say otherwise or it opts out with [`Declaratives::unmanaged`]. Dead-letter
/// topics that are not routed themselves are declared with the `defaults` block's
/// declaratives; route one with `.active(false)` to declare it differently.
///
/// ```
/// use karafka_consumer::routing::Declaratives;
/// let orders = Declaratives::new()
///     .partitions(6)
///     .replication_factor(3)
///     .config("retention.ms", "604800000")
///     .config("cleanup.policy", "delete");
/// assert_eq!(orders.partition_count(), 6);
/// assert_eq!(orders.configs().get("cleanup.policy").map(String::as_str), Some("delete"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaratives {
    managed: bool,
    partitions: i32,
    replication_factor: i32,
    configs: BTreeMap<String, String>,
}

impl Default for Declaratives {
    fn default() -> Self {
        Declaratives::new()
    }
}

impl Declaratives {
    /// 1 partition, replication factor 1, the broker's default configs.
    pub fn new() -> Self {
        Declaratives {
            managed: true,
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }
    }

    /// Leaves the topic alone: `topics` commands neither create, change nor delete it.
    pub fn unmanaged() -> Self {
        Declaratives {
            managed: false,
            ..Declaratives::new()
        }
    }

    /// Partition count (at least 1). Migrations raise it; Kafka cannot lower it.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Replication factor (at least 1; only used when the topic is created).
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = factor;
        self
    }

    /// A topic config (`retention.ms`, `cleanup.policy`, ...).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }

    /// Whether `topics` commands manage the topic.
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    /// The partition count.
    pub fn partition_count(&self) -> i32 {
        self.partitions
    }

    /// The replication factor.
    pub fn replication(&self) -> i32 {
        self.replication_factor
    }

    /// The topic configs.
    pub fn configs(&self) -> &BTreeMap<String, String> {
        &self.configs
    }
}

/// A topic's settings; unset ones come from the `defaults` block, then the built-in defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicSettings {
    pub(crate) max_messages: Option<usize>,
    pub(crate) max_wait_time: Option<Duration>,
    pub(crate) initial_offset: Option<InitialOffset>,
    pub(crate) manual_offset_management: Option<bool>,
    pub(crate) dead_letter_queue: Option<DeadLetterQueue>,
    pub(crate) kafka: KafkaSettings,
    pub(crate) active: Option<bool>,
    pub(crate) declaratives: Option<Declaratives>,
}

impl TopicSettings {
    /// `self` where set, else `defaults`.
    pub(crate) fn over(&self, defaults: &TopicSettings) -> TopicSettings {
        TopicSettings {
            max_messages: self.max_messages.or(defaults.max_messages),
            max_wait_time: self.max_wait_time.or(defaults.max_wait_time),
            initial_offset: self.initial_offset.or(defaults.initial_offset),
            manual_offset_management: self
                .manual_offset_management
                .or(defaults.manual_offset_management),
            dead_letter_queue: self
                .dead_letter_queue
                .clone()
                .or_else(|| defaults.dead_letter_queue.clone()),
            kafka: defaults.kafka.merged(&self.kafka),
            active: self.active.or(defaults.active),
            declaratives: self
                .declaratives
                .clone()
                .or_else(|| defaults.declaratives.clone()),
        }
    }
}

/// Builds a consumer [`Factory`] once the app's monitor is known.
pub(crate) trait ConsumerSpec: Send + Sync {
    fn factory(&self, reporter: DecodeReporter) -> Factory;
    /// The consumer's Rust type, for `info`.
    fn consumer_type(&self) -> &'static str;
}

type Make<C> = Arc<dyn Fn() -> C + Send + Sync>;
type Deserializer<P> = Arc<dyn Fn(Option<&Bytes>) -> Result<P, BoxError> + Send + Sync>;

struct Typed<C: Consumer> {
    make: Make<C>,
    deserializer: Option<Deserializer<C::Payload>>,
}

impl<C: Consumer> ConsumerSpec for Typed<C> {
    fn factory(&self, reporter: DecodeReporter) -> Factory {
        let make = self.make.clone();
        let deserializer = self.deserializer.clone();
        let decoder: Decoder<C::Payload> = Arc::new(move |raw: &RecordRef<'_>| {
            let payload = raw.payload_bytes()?;
            let decoded = match &deserializer {
                Some(d) => d(payload.as_ref()),
                None => C::Payload::deserialize(payload.as_ref()),
            };
            if let Err(e) = &decoded {
                reporter.report(raw, e);
            }
            decoded
        });
        Arc::new(move || Box::new(Erased::new(make(), decoder.clone())) as Box<dyn ErasedConsumer>)
    }

    fn consumer_type(&self) -> &'static str {
        std::any::type_name::<C>()
    }
}

/// Declares one topic: `topic("orders", |t| t.consumer(OrdersConsumer::default).max_messages(500))`.
///
/// Every setting left unset takes the app's `defaults` block value, then the built-in default
/// (documented on each setter).
pub struct TopicBuilder<C: Consumer = NoConsumer> {
    pub(crate) name: String,
    pub(crate) settings: TopicSettings,
    make: Option<Make<C>>,
    deserializer: Option<Deserializer<C::Payload>>,
    splitter: Option<Arc<dyn BatchSplitter>>,
    job_policies: Vec<Arc<dyn JobPolicy>>,
    swarm_nodes: crate::routing::Nodes,
    misplaced: Vec<(String, String)>,
}

impl TopicBuilder<NoConsumer> {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        TopicBuilder {
            name: name.into(),
            settings: TopicSettings::default(),
            make: None,
            deserializer: None,
            splitter: None,
            job_policies: Vec::new(),
            swarm_nodes: Default::default(),
            misplaced: Vec::new(),
        }
    }
}

impl<C: Consumer> TopicBuilder<C> {
    /// The consumer: `make` creates one instance per assigned partition (again after the
    /// partition is re-assigned).
    pub fn consumer<D: Consumer>(
        self,
        make: impl Fn() -> D + Send + Sync + 'static,
    ) -> TopicBuilder<D> {
        TopicBuilder {
            name: self.name,
            settings: self.settings,
            make: Some(Arc::new(make)),
            deserializer: None,
            splitter: self.splitter,
            job_policies: self.job_policies,
            swarm_nodes: self.swarm_nodes,
            misplaced: self.misplaced,
        }
    }

    /// Records a setting made at the wrong level, reported by `build()` at
    /// `{topic's path}.{setting}` with `message` (say where it belongs). For extension traits
    /// (`karafka-pro`) whose setting is not a topic's.
    #[doc(hidden)]
    pub fn misplaced(mut self, setting: &str, message: impl Into<String>) -> Self {
        self.misplaced.push((setting.to_owned(), message.into()));
        self
    }

    /// Splits each batch of a partition into groups processed in parallel, each by its own
    /// consumer instance: the extension point of virtual partitions (see
    /// [`crate::split`]). Applications set it through `karafka-pro`'s
    /// `.virtual_partitions(...)`.
    pub fn splitter(mut self, splitter: Arc<dyn BatchSplitter>) -> Self {
        self.splitter = Some(splitter);
        self
    }

    /// Schedules the topic's jobs by `policy`: the extension point of long-running jobs (see
    /// [`crate::jobs`]). A policy of the same [`name`](JobPolicy::name) set before is
    /// replaced. Applications set it through `karafka-pro`'s `.long_running_job(true)`.
    pub fn job_policy(mut self, policy: Arc<dyn JobPolicy>) -> Self {
        self.job_policies.retain(|p| p.name() != policy.name());
        self.job_policies.push(policy);
        self
    }

    /// Consumes the topic only on these swarm nodes (default: all): the extension point of
    /// karafka-pro's `.swarm(...)` (see [`crate::swarm`]). Without swarm mode it changes
    /// nothing.
    pub fn swarm_nodes(mut self, nodes: impl Into<crate::routing::Nodes>) -> Self {
        self.swarm_nodes = nodes.into();
        self
    }

    /// Decodes payloads with `deserializer` instead of the consumer's
    /// [`Payload`](crate::payload::Payload) implementation (`None` is a tombstone).
    pub fn deserializer(
        mut self,
        deserializer: impl Fn(Option<&Bytes>) -> Result<C::Payload, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.deserializer = Some(Arc::new(deserializer));
        self
    }

    /// Most messages per batch (default 100).
    pub fn max_messages(mut self, max: usize) -> Self {
        self.settings.max_messages = Some(max);
        self
    }

    /// Longest wait for the first message of a batch (default 1 s). A batch is then what is
    /// already fetched, up to `max_messages`.
    pub fn max_wait_time(mut self, wait: Duration) -> Self {
        self.settings.max_wait_time = Some(wait);
        self
    }

    /// Where to start without a committed offset, or when the committed one is out of range
    /// (default [`InitialOffset::Earliest`]: the oldest record kept).
    pub fn initial_offset(mut self, offset: InitialOffset) -> Self {
        self.settings.initial_offset = Some(offset);
        self
    }

    /// When true, the framework never marks batches itself: the consumer marks what it
    /// processed (default false).
    pub fn manual_offset_management(mut self, manual: bool) -> Self {
        self.settings.manual_offset_management = Some(manual);
        self
    }

    /// A dead-letter queue for messages that keep failing (default none: retry forever).
    pub fn dead_letter_queue(mut self, dlq: DeadLetterQueue) -> Self {
        self.settings.dead_letter_queue = Some(dlq);
        self
    }

    /// A librdkafka setting for this topic's connection (topics whose settings differ get
    /// separate connections).
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.kafka.set(key, value);
        self
    }

    /// Whether the topic is consumed (default true). Inactive topics stay in the routing, for
    /// declarative topic management, without a consumer.
    pub fn active(mut self, active: bool) -> Self {
        self.settings.active = Some(active);
        self
    }

    /// How the topic should exist in the cluster, for `topics plan`/`migrate` (default
    /// [`Declaratives::new`]: 1 partition, replication factor 1).
    pub fn declaratives(mut self, declaratives: Declaratives) -> Self {
        self.settings.declaratives = Some(declaratives);
        self
    }

    pub(crate) fn into_draft(self) -> TopicDraft {
        let spec = self.make.map(|make| {
            Arc::new(Typed::<C> {
                make,
                deserializer: self.deserializer,
            }) as Arc<dyn ConsumerSpec>
        });
        TopicDraft {
            name: self.name,
            settings: self.settings,
            spec,
            splitter: self.splitter,
            job_policies: self.job_policies,
            swarm_nodes: self.swarm_nodes,
            misplaced: self.misplaced,
        }
    }
}

impl<C: Consumer> fmt::Debug for TopicBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicBuilder")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("consumer", &self.make.is_some())
            .field("splitter", &self.splitter.as_ref().map(|s| s.name()))
            .field("job_policies", &self.job_policies)
            .finish()
    }
}

/// A declared topic, its consumer type erased.
pub(crate) struct TopicDraft {
    pub(crate) name: String,
    pub(crate) settings: TopicSettings,
    pub(crate) spec: Option<Arc<dyn ConsumerSpec>>,
    pub(crate) splitter: Option<Arc<dyn BatchSplitter>>,
    pub(crate) job_policies: Vec<Arc<dyn JobPolicy>>,
    pub(crate) swarm_nodes: crate::routing::Nodes,
    pub(crate) misplaced: Vec<(String, String)>,
}
