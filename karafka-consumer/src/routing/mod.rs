//! Routing: consumer groups, subscription groups and topics.
//!
//! - A **consumer group** is a Kafka group (`group.id`): its members share its topics'
//!   partitions.
//! - A **subscription group** is one librdkafka connection (and one listener thread) of a
//!   consumer group. Topics whose connection settings differ (kafka overrides,
//!   `max_messages`, `max_wait_time`, `initial_offset`) get separate subscription groups
//!   automatically; [`ConsumerGroupBuilder::subscription_group`] names one explicitly. A
//!   named one can run several connections
//!   ([`SubscriptionGroupBuilder::connections`], `karafka-pro`'s multiplexing; see
//!   [`crate::connections`]).
//! - A **topic** routes to a [consumer](crate::Consumer) type.
//!
//! Routes are declared on the [`AppBuilder`](crate::AppBuilder) and validated by its
//! `build()`, which lists every problem at once.

mod nodes;
mod topic;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use karafka_core::instrumentation::{ErrorKind, ErrorOccurred, Event, Monitor};
use karafka_core::{KafkaSettings, Violations};

use crate::connections::{ConnectionPlan, FamilyFacts, SingleConnection};
use crate::jobs::{JobPolicy, Periodic};
use crate::split::{BatchSplitter, TopicFacts};

pub use nodes::Nodes;
pub use topic::{DeadLetterQueue, Declaratives, InitialOffset, TopicBuilder};
pub(crate) use topic::{TopicDraft, TopicSettings};

use crate::consumer::{Consumer, Factory};
use crate::message::RecordRef;
use crate::payload::BoxError;
use crate::settings::Scheduling;

/// Built-in `max_messages`.
pub const DEFAULT_MAX_MESSAGES: usize = 100;
/// Built-in `max_wait_time`.
pub const DEFAULT_MAX_WAIT_TIME: Duration = Duration::from_secs(1);

/// Declares a consumer group's topics (and, optionally, named subscription groups).
pub struct ConsumerGroupBuilder {
    pub(crate) name: String,
    pub(crate) drafts: Vec<(Option<String>, TopicDraft)>,
    pub(crate) subscription_kafka: BTreeMap<String, KafkaSettings>,
    pub(crate) subscription_scheduling: BTreeMap<String, Scheduling>,
    pub(crate) subscription_plans: BTreeMap<String, Arc<dyn ConnectionPlan>>,
}

impl ConsumerGroupBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        ConsumerGroupBuilder {
            name: name.into(),
            drafts: Vec::new(),
            subscription_kafka: BTreeMap::new(),
            subscription_scheduling: BTreeMap::new(),
            subscription_plans: BTreeMap::new(),
        }
    }

    /// Routes `name` to the consumer `f` sets: `.topic("orders", |t| t.consumer(Orders::default))`.
    pub fn topic<C: Consumer>(
        mut self,
        name: &str,
        f: impl FnOnce(TopicBuilder) -> TopicBuilder<C>,
    ) -> Self {
        self.drafts
            .push((None, f(TopicBuilder::new(name)).into_draft()));
        self
    }

    /// A named subscription group: its topics share one connection.
    pub fn subscription_group(
        mut self,
        name: &str,
        f: impl FnOnce(SubscriptionGroupBuilder) -> SubscriptionGroupBuilder,
    ) -> Self {
        let group = f(SubscriptionGroupBuilder {
            drafts: Vec::new(),
            kafka: KafkaSettings::new(),
            scheduling: None,
            plan: None,
        });
        if let Some(scheduling) = group.scheduling {
            self.subscription_scheduling
                .insert(name.to_owned(), scheduling);
        }
        if let Some(plan) = group.plan {
            self.subscription_plans.insert(name.to_owned(), plan);
        }
        for draft in group.drafts {
            self.drafts.push((Some(name.to_owned()), draft));
        }
        self.subscription_kafka
            .entry(name.to_owned())
            .or_default()
            .extend(
                group
                    .kafka
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
        self
    }
}

impl fmt::Debug for ConsumerGroupBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerGroupBuilder")
            .field("name", &self.name)
            .field("topics", &self.drafts.len())
            .finish()
    }
}

/// Declares the topics of a named subscription group.
pub struct SubscriptionGroupBuilder {
    drafts: Vec<TopicDraft>,
    kafka: KafkaSettings,
    scheduling: Option<Scheduling>,
    plan: Option<Arc<dyn ConnectionPlan>>,
}

impl SubscriptionGroupBuilder {
    /// Routes a topic (see [`ConsumerGroupBuilder::topic`]).
    pub fn topic<C: Consumer>(
        mut self,
        name: &str,
        f: impl FnOnce(TopicBuilder) -> TopicBuilder<C>,
    ) -> Self {
        self.drafts.push(f(TopicBuilder::new(name)).into_draft());
        self
    }

    /// A librdkafka setting for this subscription group's connection.
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka.set(key, value);
        self
    }

    /// How this subscription group hands messages to jobs, instead of the app's
    /// [`scheduling`](crate::AppBuilder::scheduling).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = Some(scheduling);
        self
    }

    /// How many connections run this subscription group, and when that changes: the
    /// extension point of multiplexing (see [`crate::connections`]). Applications set it
    /// through `karafka-pro`'s `.multiplexing(...)`. Default: one connection.
    pub fn connections(mut self, plan: Arc<dyn ConnectionPlan>) -> Self {
        self.plan = Some(plan);
        self
    }
}

impl fmt::Debug for SubscriptionGroupBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionGroupBuilder")
            .field("topics", &self.drafts.len())
            .field("kafka", &self.kafka)
            .field("scheduling", &self.scheduling)
            .field("connections", &self.plan)
            .finish()
    }
}

/// Reports payloads that fail to decode (`consumer.deserialization.error`).
#[derive(Clone)]
pub(crate) struct DecodeReporter {
    pub(crate) monitor: Monitor,
    pub(crate) consumer_group: Arc<str>,
}

impl DecodeReporter {
    pub(crate) fn report(&self, raw: &RecordRef<'_>, error: &BoxError) {
        self.monitor.emit_with(|| {
            Event::ErrorOccurred(
                ErrorOccurred::new(
                    ErrorKind::Deserialization,
                    std::io::Error::other(error.to_string()),
                )
                .source_id(self.consumer_group.clone())
                .at(
                    raw.topic().clone(),
                    Some(raw.partition()),
                    Some(raw.offset()),
                ),
            )
        });
    }
}

/// A validated topic route.
pub struct TopicRoute {
    pub(crate) name: Arc<str>,
    pub(crate) consumer_group: Arc<str>,
    pub(crate) max_messages: usize,
    pub(crate) max_wait_time: Duration,
    pub(crate) initial_offset: InitialOffset,
    pub(crate) manual_offset_management: bool,
    pub(crate) dead_letter_queue: Option<DeadLetterQueue>,
    pub(crate) kafka: KafkaSettings,
    pub(crate) active: bool,
    pub(crate) declaratives: Declaratives,
    pub(crate) factory: Option<Factory>,
    pub(crate) consumer_type: Option<&'static str>,
    /// Splits batches into virtual partitions (`karafka-pro`).
    pub(crate) splitter: Option<Arc<dyn BatchSplitter>>,
    /// How its jobs are scheduled (`karafka-pro`'s long-running jobs).
    pub(crate) job_policies: Vec<Arc<dyn JobPolicy>>,
    /// Some policy makes its jobs long-running.
    pub(crate) long_running: bool,
    /// Ticks on idle partitions (periodic jobs), `during_pause` resolved.
    pub(crate) periodic: Option<Periodic>,
    /// The swarm nodes that consume it (`karafka-pro`'s swarm mode).
    pub(crate) swarm_nodes: crate::routing::Nodes,
}

impl TopicRoute {
    /// Topic name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.consumer_group
    }
    /// Most messages per batch.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }
    /// Longest wait for a batch's first message.
    pub fn max_wait_time(&self) -> Duration {
        self.max_wait_time
    }
    /// Where to start without a committed offset.
    pub fn initial_offset(&self) -> InitialOffset {
        self.initial_offset
    }
    /// Whether the consumer marks offsets itself.
    pub fn manual_offset_management(&self) -> bool {
        self.manual_offset_management
    }
    /// The batch splitter (virtual partitions), if any.
    pub fn splitter(&self) -> Option<&Arc<dyn BatchSplitter>> {
        self.splitter.as_ref()
    }
    /// The job policies (long-running jobs), in the order they were set.
    pub fn job_policies(&self) -> &[Arc<dyn JobPolicy>] {
        &self.job_policies
    }
    /// The swarm nodes that consume it (see [`crate::swarm`]).
    pub fn swarm_nodes(&self) -> &crate::routing::Nodes {
        &self.swarm_nodes
    }
    /// Whether its jobs are long-running (see [`crate::jobs`]).
    pub fn is_long_running(&self) -> bool {
        self.long_running
    }
    /// When its consumers tick (periodic jobs), `during_pause` resolved (see
    /// [`crate::jobs`]).
    pub fn periodic(&self) -> Option<Periodic> {
        self.periodic
    }
    /// The dead-letter queue, if any.
    pub fn dead_letter_queue(&self) -> Option<&DeadLetterQueue> {
        self.dead_letter_queue.as_ref()
    }
    /// The topic's librdkafka overrides.
    pub fn kafka(&self) -> &KafkaSettings {
        &self.kafka
    }
    /// Whether it is consumed.
    pub fn is_active(&self) -> bool {
        self.active
    }
    /// The consumer's Rust type name (`None` for a topic routed without a consumer).
    pub fn consumer_type(&self) -> Option<&'static str> {
        self.consumer_type
    }
    /// How it should exist in the cluster.
    pub fn declaratives(&self) -> &Declaratives {
        &self.declaratives
    }
}

impl fmt::Debug for TopicRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicRoute")
            .field("name", &self.name)
            .field("consumer_group", &self.consumer_group)
            .field("max_messages", &self.max_messages)
            .field("max_wait_time", &self.max_wait_time)
            .field("initial_offset", &self.initial_offset)
            .field("manual_offset_management", &self.manual_offset_management)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("kafka", &self.kafka)
            .field("active", &self.active)
            .field("declaratives", &self.declaratives)
            .field("splitter", &self.splitter.as_ref().map(|s| s.name()))
            .field("job_policies", &self.job_policies)
            .finish()
    }
}

/// One connection of a consumer group and the topics it subscribes to.
#[derive(Debug)]
pub struct SubscriptionGroupRoute {
    pub(crate) name: Arc<str>,
    pub(crate) consumer_group: Arc<str>,
    pub(crate) topics: Vec<Arc<TopicRoute>>,
    pub(crate) kafka: KafkaSettings,
    pub(crate) max_messages: usize,
    pub(crate) max_wait_time: Duration,
    pub(crate) scheduling: Scheduling,
    /// How many connections run it.
    pub(crate) plan: Arc<dyn ConnectionPlan>,
}

impl SubscriptionGroupRoute {
    /// Its name (unique in its consumer group).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.consumer_group
    }
    /// Its topics.
    pub fn topics(&self) -> impl Iterator<Item = &TopicRoute> {
        self.topics.iter().map(|t| &**t)
    }
    /// The effective librdkafka settings of its connection (print with `{}`: secrets are
    /// redacted).
    pub fn kafka(&self) -> &KafkaSettings {
        &self.kafka
    }
    /// Most messages per batch.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }
    /// Longest wait for a batch's first message.
    pub fn max_wait_time(&self) -> Duration {
        self.max_wait_time
    }
    /// How it hands messages to jobs.
    pub fn scheduling(&self) -> Scheduling {
        self.scheduling
    }
    /// How many connections run it ([`SingleConnection`] unless set).
    pub fn connection_plan(&self) -> &Arc<dyn ConnectionPlan> {
        &self.plan
    }

    /// The route of connection `index` of a family of several: named `{name}#{index}`,
    /// with `-{name}-{index}` appended to a configured `client.id` and `group.instance.id`
    /// (an unset `client.id` is made unique for the whole group when the client is
    /// created, see [`crate::connections`]). A single connection keeps the route as it is.
    pub(crate) fn connection(self: &Arc<Self>, index: usize) -> Arc<SubscriptionGroupRoute> {
        if self.plan.max() <= 1 {
            return self.clone();
        }
        let mut kafka = self.kafka.clone();
        let suffix = format!("-{}-{index}", self.name);
        for key in ["client.id", "group.instance.id"] {
            if let Some(value) = kafka.get(key).map(str::to_owned) {
                kafka.set(key, format!("{value}{suffix}"));
            }
        }
        Arc::new(SubscriptionGroupRoute {
            name: format!("{}#{index}", self.name).into(),
            consumer_group: self.consumer_group.clone(),
            topics: self.topics.clone(),
            kafka,
            max_messages: self.max_messages,
            max_wait_time: self.max_wait_time,
            scheduling: self.scheduling,
            plan: self.plan.clone(),
        })
    }

    /// The facts its plan is checked and described with.
    pub fn family_facts(&self) -> FamilyFacts<'_> {
        FamilyFacts {
            consumer_group: &self.consumer_group,
            subscription_group: &self.name,
            kafka: &self.kafka,
        }
    }

    /// Warnings about how its connections will run: its plan's, and long-running topics
    /// under a dynamic plan (emitted as `connection.multiplexing.warning` at start and
    /// printed by `info`).
    pub fn connection_warnings(&self) -> Vec<String> {
        let mut warnings = self.plan.warnings(&self.family_facts());
        let long_running: Vec<&str> = self
            .topics
            .iter()
            .filter(|t| t.long_running)
            .map(|t| &*t.name)
            .collect();
        if self.plan.dynamic() && !long_running.is_empty() {
            warnings.push(format!(
                "long-running jobs (topics {long_running:?}) with dynamic multiplexing: every \
                 scale up or down rebalances the consumer group, and a partition moved away \
                 from a running long-running job is processed again by its new owner from the \
                 committed offset (the job can no longer mark). Make the multiplexing static \
                 (min = max) or put the long-running topics in a subscription group of their own"
            ));
        }
        warnings
    }
}

/// A consumer group's routes.
#[derive(Debug)]
pub struct ConsumerGroupRoute {
    pub(crate) name: Arc<str>,
    pub(crate) topics: Vec<Arc<TopicRoute>>,
    pub(crate) subscription_groups: Vec<Arc<SubscriptionGroupRoute>>,
}

impl ConsumerGroupRoute {
    /// The group's id.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Every topic, active or not.
    pub fn topics(&self) -> impl Iterator<Item = &TopicRoute> {
        self.topics.iter().map(|t| &**t)
    }
    /// Its subscription groups (active topics only).
    pub fn subscription_groups(&self) -> impl Iterator<Item = &SubscriptionGroupRoute> {
        self.subscription_groups.iter().map(|s| &**s)
    }
}

/// The validated routing of an app.
#[derive(Debug, Default)]
pub struct Routes {
    pub(crate) consumer_groups: Vec<ConsumerGroupRoute>,
    /// Managed topics and how they should exist, by name (routed topics and the dead-letter
    /// topics they send to).
    pub(crate) declared: BTreeMap<String, Declaratives>,
}

impl Routes {
    /// Every consumer group.
    pub fn consumer_groups(&self) -> impl Iterator<Item = &ConsumerGroupRoute> {
        self.consumer_groups.iter()
    }

    /// The topics `topics` commands manage, by name, with how each should exist: every routed
    /// topic whose declaratives are not [`Declaratives::unmanaged`], and every dead-letter
    /// topic that is not routed itself (with the `defaults` block's declaratives).
    pub fn declared_topics(&self) -> impl Iterator<Item = (&str, &Declaratives)> {
        self.declared.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// What a subscription group's topics must share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnectionKey {
    kafka: String,
    max_messages: usize,
    max_wait_ms: u128,
    initial_offset: &'static str,
}

impl ConnectionKey {
    fn of(topic: &TopicRoute) -> Self {
        ConnectionKey {
            kafka: topic
                .kafka
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
            max_messages: topic.max_messages,
            max_wait_ms: topic.max_wait_time.as_millis(),
            initial_offset: topic.initial_offset.as_reset(),
        }
    }
}

/// Validates and resolves the declared routes.
pub(crate) fn resolve(
    app_kafka: &KafkaSettings,
    defaults: &TopicSettings,
    scheduling: Scheduling,
    groups: Vec<ConsumerGroupBuilder>,
    monitor: &Monitor,
    v: &mut Violations,
) -> Routes {
    let mut routes = Routes::default();
    let mut group_names = HashSet::new();
    // Topic name → (declaratives, set explicitly on a route, where).
    let mut declared: BTreeMap<String, (Declaratives, bool, String)> = BTreeMap::new();
    let mut dead_letter_topics = Vec::new();
    if groups.iter().all(|g| g.drafts.is_empty()) {
        v.push(
            "routes",
            "no topic is routed: declare at least one with `.topic(name, |t| t.consumer(...))`",
        );
    }
    for group in groups {
        let cg_path = format!("consumer_groups.{}", group.name);
        v.check_name(format!("{cg_path}.name"), &group.name);
        if !group_names.insert(group.name.clone()) {
            v.push(
                &cg_path,
                "is declared twice; merge its topics into one consumer group",
            );
        }
        let cg: Arc<str> = group.name.as_str().into();
        let reporter = DecodeReporter {
            monitor: monitor.clone(),
            consumer_group: cg.clone(),
        };
        let mut seen = HashSet::new();
        let mut topics: Vec<(Option<String>, Arc<TopicRoute>)> = Vec::new();
        for (explicit, draft) in group.drafts {
            let path = format!("{cg_path}.topics.{}", draft.name);
            v.check_name(format!("{path}.name"), &draft.name);
            if !seen.insert(draft.name.clone()) {
                v.push(&path, "is routed twice in this consumer group; a topic can be routed once per consumer group");
            }
            let settings = draft.settings.over(defaults);
            let active = settings.active.unwrap_or(true);
            if active && draft.spec.is_none() {
                v.push(
                    format!("{path}.consumer"),
                    "is missing: set one with `.consumer(...)`, or declare the topic with `.active(false)`",
                );
            }
            let max_messages = settings.max_messages.unwrap_or(DEFAULT_MAX_MESSAGES);
            v.check(max_messages >= 1, format!("{path}.max_messages"), || {
                "must be at least 1".into()
            });
            let max_wait_time = settings.max_wait_time.unwrap_or(DEFAULT_MAX_WAIT_TIME);
            v.check(
                !max_wait_time.is_zero(),
                format!("{path}.max_wait_time"),
                || "must be greater than 0".into(),
            );
            if let Some(dlq) = &settings.dead_letter_queue {
                v.check_name(format!("{path}.dead_letter_queue.topic"), dlq.topic());
                v.check(dlq.topic() != draft.name, format!("{path}.dead_letter_queue.topic"), || {
                    "is the topic itself: failed messages would come back forever; use another topic".into()
                });
            }
            let declaratives = settings.declaratives.clone().unwrap_or_default();
            check_declaratives(&declaratives, &format!("{path}.declaratives"), v);
            let explicit_declaratives = draft.settings.declaratives.is_some();
            match declared.get(&draft.name) {
                Some((existing, existing_explicit, where_)) => {
                    if explicit_declaratives && *existing_explicit && *existing != declaratives {
                        v.push(
                            format!("{path}.declaratives"),
                            format!(
                                "differ from those declared at {where_}; a topic exists once in the \
                                 cluster: declare it the same way (or only once)"
                            ),
                        );
                    } else if explicit_declaratives && !existing_explicit {
                        declared.insert(
                            draft.name.clone(),
                            (declaratives.clone(), true, path.clone()),
                        );
                    }
                }
                None => {
                    declared.insert(
                        draft.name.clone(),
                        (declaratives.clone(), explicit_declaratives, path.clone()),
                    );
                }
            }
            if let Some(dlq) = &settings.dead_letter_queue {
                dead_letter_topics.push(dlq.topic().to_owned());
            }
            v.extend(settings.kafka.validate(&format!("{path}.kafka")));
            check_owned_settings(&settings.kafka, &format!("{path}.kafka"), v);
            let route = TopicRoute {
                name: draft.name.as_str().into(),
                consumer_group: cg.clone(),
                max_messages,
                max_wait_time,
                initial_offset: settings.initial_offset.unwrap_or(InitialOffset::Earliest),
                manual_offset_management: settings.manual_offset_management.unwrap_or(false),
                dead_letter_queue: settings.dead_letter_queue.clone(),
                kafka: settings.kafka.clone(),
                active,
                declaratives,
                factory: draft.spec.as_ref().map(|s| s.factory(reporter.clone())),
                consumer_type: draft.spec.as_ref().map(|s| s.consumer_type()),
                splitter: draft.splitter.clone(),
                long_running: draft.job_policies.iter().any(|p| p.long_running()),
                periodic: draft.job_policies.iter().find_map(|p| p.periodic()),
                job_policies: draft.job_policies.clone(),
                swarm_nodes: draft.swarm_nodes.clone(),
            };
            let facts = TopicFacts {
                name: &route.name,
                dead_letter_retries: route.dead_letter_queue.as_ref().map(|d| d.retries()),
                manual_offset_management: route.manual_offset_management,
            };
            if let Some(splitter) = &route.splitter {
                splitter.check(&facts, &path, v);
            }
            for policy in &route.job_policies {
                policy.check(&facts, &path, v);
            }
            // A pause ticks for regular topics, not for long-running ones, unless said.
            let mut route = route;
            if let Some(periodic) = &mut route.periodic {
                periodic.during_pause = Some(periodic.during_pause.unwrap_or(!route.long_running));
            }
            for (setting, message) in &draft.misplaced {
                v.push(format!("{path}.{setting}"), message.clone());
            }
            topics.push((explicit, Arc::new(route)));
        }

        // Subscription groups: named ones first, then one per distinct connection key.
        let mut subscription_groups = Vec::new();
        let mut named: BTreeMap<String, Vec<Arc<TopicRoute>>> = BTreeMap::new();
        let mut implicit: BTreeMap<ConnectionKey, Vec<Arc<TopicRoute>>> = BTreeMap::new();
        let mut implicit_order = Vec::new();
        for (explicit, topic) in &topics {
            if !topic.active {
                continue;
            }
            match explicit {
                Some(name) => named.entry(name.clone()).or_default().push(topic.clone()),
                None => {
                    let key = ConnectionKey::of(topic);
                    if !implicit.contains_key(&key) {
                        implicit_order.push(key.clone());
                    }
                    implicit.entry(key).or_default().push(topic.clone());
                }
            }
        }
        for (name, members) in named {
            let path = format!("{cg_path}.subscription_groups.{name}");
            v.check_name(format!("{path}.name"), &name);
            if let Some(first) = members.first() {
                let key = ConnectionKey::of(first);
                for other in &members[1..] {
                    if ConnectionKey::of(other) != key {
                        v.push(
                            &path,
                            format!(
                                "topics `{}` and `{}` differ in kafka overrides, max_messages, max_wait_time \
                                 or initial_offset, but share one connection; align them or put them in \
                                 different subscription groups",
                                first.name, other.name
                            ),
                        );
                    }
                }
            }
            let extra = group
                .subscription_kafka
                .get(&name)
                .cloned()
                .unwrap_or_default();
            v.extend(extra.validate(&format!("{path}.kafka")));
            check_owned_settings(&extra, &format!("{path}.kafka"), v);
            let own = group
                .subscription_scheduling
                .get(&name)
                .copied()
                .unwrap_or(scheduling);
            let plan = group
                .subscription_plans
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Arc::new(SingleConnection));
            let sg = connection(&cg, name.as_str(), members, app_kafka, &extra, own, plan);
            sg.plan.check(&sg.family_facts(), &path, v);
            subscription_groups.push(sg);
        }

        for (i, key) in implicit_order.into_iter().enumerate() {
            if let Some(members) = implicit.remove(&key) {
                let name = format!("sg-{i}");
                subscription_groups.push(connection(
                    &cg,
                    &name,
                    members,
                    app_kafka,
                    &KafkaSettings::new(),
                    scheduling,
                    Arc::new(SingleConnection),
                ));
            }
        }
        // What only the merged settings show (the mechanism may be set at another level).
        // Reported once per consumer group: its connections share the app's settings.
        let first_problem = subscription_groups
            .iter()
            .map(|sg| {
                let path = format!("{cg_path}.subscription_groups.{}.kafka", sg.name);
                karafka_core::librdkafka::check_connection(&sg.kafka, &path)
            })
            .find(|found| !found.is_empty());
        v.extend(first_problem.unwrap_or_default());
        routes.consumer_groups.push(ConsumerGroupRoute {
            name: cg,
            topics: topics.into_iter().map(|(_, t)| t).collect(),
            subscription_groups,
        });
    }
    let dlq_declaratives = defaults.declaratives.clone().unwrap_or_default();
    for topic in dead_letter_topics {
        declared
            .entry(topic)
            .or_insert_with(|| (dlq_declaratives.clone(), false, String::new()));
    }
    routes.declared = declared
        .into_iter()
        .filter(|(_, (d, _, _))| d.is_managed())
        .map(|(name, (d, _, _))| (name, d))
        .collect();
    routes
}

fn check_declaratives(d: &Declaratives, path: &str, v: &mut Violations) {
    if !d.is_managed() {
        return;
    }
    v.check(
        d.partition_count() >= 1,
        format!("{path}.partitions"),
        || {
            format!(
                "is {}; a topic needs at least 1 partition",
                d.partition_count()
            )
        },
    );
    v.check(
        d.replication() >= 1,
        format!("{path}.replication_factor"),
        || format!("is {}; it must be at least 1", d.replication()),
    );
    for (key, value) in d.configs() {
        v.check(
            !key.trim().is_empty() && !key.contains(char::is_whitespace),
            format!("{path}.configs"),
            || format!("has an invalid key `{key}`: topic config names look like `retention.ms`"),
        );
        v.check(!value.is_empty(), format!("{path}.configs.{key}"), || {
            "is empty; remove it to keep the broker's default".into()
        });
    }
}

/// Reports every librdkafka setting of `kafka` (at `path`) that the framework owns: at the
/// app, subscription-group and topic levels alike.
pub(crate) fn check_owned_settings(kafka: &KafkaSettings, path: &str, v: &mut Violations) {
    if let Some(group) = kafka.get("group.id") {
        v.push(
            format!("{path}.group.id"),
            format!(
                "is set by the consumer group's name, not by a librdkafka setting: to consume \
                 as group `{group}` (and keep its committed offsets) name the app \
                 `.name(\"{group}\")`, or route the topics in `.consumer_group(\"{group}\", ...)`; \
                 then remove this setting"
            ),
        );
    }
    if kafka.contains_key("enable.auto.offset.store") {
        v.push(
            format!("{path}.enable.auto.offset.store"),
            "must stay false: karafka-rs stores offsets only for processed messages",
        );
    }
}

/// The connection of a subscription group: the app's settings, then the group's, then the
/// topics' shared overrides, then what the framework owns.
fn connection(
    consumer_group: &Arc<str>,
    name: &str,
    topics: Vec<Arc<TopicRoute>>,
    app_kafka: &KafkaSettings,
    extra: &KafkaSettings,
    scheduling: Scheduling,
    plan: Arc<dyn ConnectionPlan>,
) -> Arc<SubscriptionGroupRoute> {
    let first = topics.first().cloned();
    let mut kafka = app_kafka.merged(extra);
    if let Some(t) = &first {
        kafka = kafka.merged(&t.kafka);
        kafka.set("auto.offset.reset", t.initial_offset.as_reset());
    }
    kafka.set("group.id", &**consumer_group);
    kafka.set("enable.auto.offset.store", "false");
    // librdkafka's default (1 s) stalls a consumer whose local queue filled up.
    kafka.set_default("fetch.queue.backoff.ms", "10");
    Arc::new(SubscriptionGroupRoute {
        name: name.into(),
        consumer_group: consumer_group.clone(),
        max_messages: first
            .as_ref()
            .map_or(DEFAULT_MAX_MESSAGES, |t| t.max_messages),
        max_wait_time: first
            .as_ref()
            .map_or(DEFAULT_MAX_WAIT_TIME, |t| t.max_wait_time),
        topics,
        kafka,
        scheduling,
        plan,
    })
}
