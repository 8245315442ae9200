//! Administration: topics, partitions, configs, watermarks, groups' offsets and lag.
//!
//! Every call blocks the calling thread (up to the admin timeout, 30 s by default) and fails
//! with a clear [`Error`] naming the operation and what the broker said.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use karafka_core::{KafkaError, KafkaSettings, native};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::app::App;
use crate::error::{Error, Result};
use crate::routing::{Declaratives, Routes};

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas of the first partition.
    pub replication_factor: i32,
}

/// Administration of a cluster, with the app's connection settings (or any others).
///
/// ```no_run
/// use karafka_consumer::admin::Admin;
/// use karafka_core::KafkaSettings;
///
/// let admin = Admin::new(&KafkaSettings::new().with("bootstrap.servers", "127.0.0.1:9092"))?;
/// admin.create_topic("orders", 6, 1, &Default::default())?;
/// let lag = admin.lag("billing", "orders")?;
/// println!("{lag:?}");
/// # Ok::<(), karafka_consumer::Error>(())
/// ```
pub struct Admin {
    settings: KafkaSettings,
    admin: AdminClient<DefaultClientContext>,
    metadata: BaseConsumer,
    timeout: Duration,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("settings", &self.settings)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Admin {
    /// An admin client with `settings` (only connection settings are used: bootstrap,
    /// security, client id).
    pub fn new(settings: &KafkaSettings) -> Result<Self> {
        let settings = settings.connection_only();
        if !settings.contains_key("bootstrap.servers") {
            return Err(Error::Config(karafka_core::ConfigError::single(
                "admin.kafka.bootstrap.servers",
                "is required: the brokers to administer",
            )));
        }
        let mut violations = karafka_core::Violations::new();
        violations.extend(settings.validate("admin.kafka"));
        violations.extend(karafka_core::librdkafka::check_connection(
            &settings,
            "admin.kafka",
        ));
        violations.into_result().map_err(Error::Config)?;
        let config = native::client_config(&settings);
        let admin = config
            .create()
            .map_err(|e| native::client_creation_error("create the admin client", &e, &settings))?;
        let metadata = config.create().map_err(|e| {
            native::client_creation_error("create the metadata client", &e, &settings)
        })?;
        Ok(Admin {
            settings,
            admin,
            metadata,
            timeout: Duration::from_secs(30),
        })
    }

    /// An admin client with the app's connection settings.
    pub fn for_app(app: &App) -> Result<Self> {
        Self::new(&app.inner.kafka)
    }

    /// How long each operation may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn failed(&self, operation: String, code: RDKafkaErrorCode) -> Error {
        let mut error = native::kafka_code_error(operation, code);
        if code == RDKafkaErrorCode::UnsupportedFeature {
            error.message = format!(
                "{} — the broker does not support this request (Tansu, for one, can neither add \
                 partitions nor alter topic configs); do it with the broker's own tools",
                error.message
            );
        }
        if code == RDKafkaErrorCode::OperationTimedOut || code == RDKafkaErrorCode::RequestTimedOut
        {
            error.message = format!(
                "{} — no answer within {:?}. librdkafka's mock cluster (the embedded test broker) \
                 never answers topic administration requests; create its topics with \
                 `EmbeddedCluster::create_topic`",
                error.message, self.timeout
            );
        }
        Error::Kafka(error)
    }

    /// A request that failed as a whole (the per-resource results never came).
    fn request_failed(&self, operation: String, e: &rdkafka::error::KafkaError) -> Error {
        let code = match e {
            rdkafka::error::KafkaError::AdminOp(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(code) => self.failed(operation, code),
            None => Error::Kafka(native::kafka_error(operation, e)),
        }
    }

    /// Creates `topic` with `partitions`, `replication_factor` and topic `configs`; returns
    /// once the cluster's metadata shows it (consumers subscribing by name find it).
    pub fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor),
        );
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let operation = format!("create topic `{topic}`");
        let results = native::block_on(self.admin.create_topics([&new], &self.options()))
            .map_err(|e| self.request_failed(operation.clone(), &e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(self.failed(operation, code));
            }
        }
        self.await_topic(topic, true)
    }

    /// Deletes `topic`; returns once the cluster's metadata no longer shows it.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let operation = format!("delete topic `{topic}`");
        let results = native::block_on(self.admin.delete_topics(&[topic], &self.options()))
            .map_err(|e| self.request_failed(operation.clone(), &e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(self.failed(operation, code));
            }
        }
        self.await_topic(topic, false)
    }

    /// Raises `topic`'s partition count to `total` (Kafka cannot lower it).
    pub fn create_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let operation = format!("raise `{topic}` to {total} partitions");
        let new = NewPartitions::new(topic, usize::try_from(total).unwrap_or(0));
        let results = native::block_on(self.admin.create_partitions([&new], &self.options()))
            .map_err(|e| self.request_failed(operation.clone(), &e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(self.failed(operation, code));
            }
        }
        Ok(())
    }

    /// The topic as the cluster has it, or `None` when it does not exist.
    pub fn topic(&self, topic: &str) -> Result<Option<TopicInfo>> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| native::kafka_error(format!("fetch metadata of `{topic}`"), &e))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| TopicInfo {
                name: t.name().to_owned(),
                partitions: t.partitions().len() as i32,
                replication_factor: t
                    .partitions()
                    .first()
                    .map_or(0, |p| p.replicas().len() as i32),
            }))
    }

    /// `topic`'s partition count.
    pub fn partition_count(&self, topic: &str) -> Result<i32> {
        self.topic(topic)?.map(|t| t.partitions).ok_or_else(|| {
            Error::Kafka(KafkaError::other(
                format!("count the partitions of `{topic}`"),
                "the topic does not exist",
            ))
        })
    }

    /// The low and high watermarks of `topic`/`partition`.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.metadata
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|e| {
                Error::Kafka(native::kafka_error(
                    format!("fetch watermarks of {topic}/{partition}"),
                    &e,
                ))
            })
    }

    /// The topic's configuration (every entry, defaults included).
    pub fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .describe(topic)?
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect())
    }

    /// Entries and whether each was set on the topic (not a default).
    fn describe(&self, topic: &str) -> Result<BTreeMap<String, (String, bool)>> {
        let operation = format!("describe the configs of `{topic}`");
        let results = native::block_on(
            self.admin
                .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options()),
        )
        .map_err(|e| self.request_failed(operation.clone(), &e))?;
        let mut out = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| self.failed(operation.clone(), code))?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    let set_on_topic = entry.source == ConfigSource::DynamicTopic;
                    out.insert(entry.name, (value, set_on_topic));
                }
            }
        }
        Ok(out)
    }

    /// Sets topic configs. Kafka's AlterConfigs replaces the whole set of a topic's own
    /// settings, so the topic's current ones are sent along and only `changes` differ.
    pub fn alter_topic_configs(
        &self,
        topic: &str,
        changes: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut full: BTreeMap<String, String> = self
            .describe(topic)?
            .into_iter()
            .filter(|(_, (_, own))| *own)
            .map(|(k, (v, _))| (k, v))
            .collect();
        full.extend(changes.clone());
        let specifier = ResourceSpecifier::Topic(topic);
        let mut alter = AlterConfig::new(specifier);
        for (k, v) in &full {
            alter = alter.set(k, v);
        }
        let operation = format!("alter the configs of `{topic}`");
        let results = native::block_on(self.admin.alter_configs([&alter], &self.options()))
            .map_err(|e| self.request_failed(operation.clone(), &e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(self.failed(operation, code));
            }
        }
        Ok(())
    }

    fn group_consumer(&self, group: &str) -> Result<BaseConsumer> {
        native::client_config(
            &self
                .settings
                .clone()
                .with("group.id", group)
                .with("enable.auto.commit", "false"),
        )
        .create()
        .map_err(|e| {
            Error::Kafka(native::kafka_error(
                format!("create a client for group `{group}`"),
                &e,
            ))
        })
    }

    /// The next offset `group` will read in each partition of `topic` (partitions without a
    /// committed offset are left out).
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let consumer = self.group_consumer(group)?;
        let mut list = TopicPartitionList::new();
        for p in 0..self.partition_count(topic)? {
            list.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(list, self.timeout)
            .map_err(|e| {
                native::kafka_error(format!("fetch the offsets of `{group}` on `{topic}`"), &e)
            })?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// How many messages `group` has not consumed yet, per partition of `topic` (from the
    /// low watermark when it has committed nothing).
    pub fn lag(&self, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let committed = self.committed_offsets(group, topic)?;
        let mut lag = BTreeMap::new();
        for p in 0..self.partition_count(topic)? {
            let (low, high) = self.watermarks(topic, p)?;
            let from = committed.get(&p).copied().unwrap_or(low).max(low);
            lag.insert(p, (high - from).max(0));
        }
        Ok(lag)
    }

    /// Moves `group`'s committed offsets on `topic` to `offsets` (partition → next offset to
    /// read). The group must have no active members (stop its consumers first), as in Kafka.
    pub fn seek_group(&self, group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let consumer = self.group_consumer(group)?;
        let mut list = TopicPartitionList::new();
        for (p, o) in offsets {
            list.add_partition_offset(topic, *p, Offset::Offset(*o))
                .map_err(|e| native::kafka_error("build the offsets", &e))?;
        }
        consumer.commit(&list, CommitMode::Sync).map_err(|e| {
            let mut error =
                native::kafka_error(format!("move the offsets of `{group}` on `{topic}`"), &e);
            if matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::RebalanceInProgress
                        | RDKafkaErrorCode::IllegalGeneration
                )
            ) {
                error.message = format!(
                    "{} — the group has active members: stop them first",
                    error.message
                );
            }
            Error::Kafka(error)
        })
    }

    /// Moves `group`'s offsets on `topic` to the first message at or after `time` in each
    /// partition (the end where nothing is that recent). Returns the offsets set.
    pub fn seek_group_to_time(
        &self,
        group: &str,
        topic: &str,
        time: SystemTime,
    ) -> Result<BTreeMap<i32, i64>> {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut query = TopicPartitionList::new();
        for p in 0..self.partition_count(topic)? {
            query
                .add_partition_offset(topic, p, Offset::Offset(millis))
                .map_err(|e| native::kafka_error("build the times", &e))?;
        }
        let found = self
            .metadata
            .offsets_for_times(query, self.timeout)
            .map_err(|e| {
                native::kafka_error(format!("look up offsets of `{topic}` for a time"), &e)
            })?;
        let mut offsets = BTreeMap::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => self.watermarks(topic, e.partition())?.1,
            };
            offsets.insert(e.partition(), offset);
        }
        self.seek_group(group, topic, &offsets)?;
        Ok(offsets)
    }

    /// The consumer groups the cluster knows.
    pub fn list_groups(&self) -> Result<Vec<String>> {
        let list = self
            .metadata
            .fetch_group_list(None, self.timeout)
            .map_err(|e| self.request_failed("list consumer groups".into(), &e))?;
        Ok(list.groups().iter().map(|g| g.name().to_owned()).collect())
    }
}

/// One change `topics migrate` makes to bring the cluster to the declared topics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicChange {
    /// Create a missing topic.
    Create {
        /// Topic name.
        topic: String,
        /// How it is declared.
        declaratives: Declaratives,
    },
    /// Raise the partition count.
    AddPartitions {
        /// Topic name.
        topic: String,
        /// Current count.
        from: i32,
        /// Declared count.
        to: i32,
    },
    /// Set topic configs that differ from the declared ones.
    AlterConfigs {
        /// Topic name.
        topic: String,
        /// Config → (current value, declared value).
        changes: BTreeMap<String, (Option<String>, String)>,
    },
}

impl fmt::Display for TopicChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicChange::Create {
                topic,
                declaratives,
            } => {
                write!(
                    f,
                    "+ create `{topic}`: {} partitions, replication factor {}",
                    declaratives.partition_count(),
                    declaratives.replication()
                )?;
                for (k, v) in declaratives.configs() {
                    write!(f, "\n    {k}: {v}")?;
                }
                Ok(())
            }
            TopicChange::AddPartitions { topic, from, to } => {
                write!(f, "~ `{topic}`: partitions {from} -> {to}")
            }
            TopicChange::AlterConfigs { topic, changes } => {
                write!(f, "~ `{topic}`: configs")?;
                for (k, (current, wanted)) in changes {
                    let current = current.as_deref().unwrap_or("(unset)");
                    write!(f, "\n    {k}: {current} -> {wanted}")?;
                }
                Ok(())
            }
        }
    }
}

/// What `topics plan` found: the changes `migrate` would make, and differences it cannot fix
/// (Kafka cannot lower a partition count; the replication factor is only set on creation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicsPlan {
    /// The changes, in order.
    pub changes: Vec<TopicChange>,
    /// Differences left as they are, one line each.
    pub notes: Vec<String>,
}

impl TopicsPlan {
    /// Whether the cluster already matches the declarations.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for TopicsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            writeln!(f, "No changes: the cluster matches the declared topics.")?;
        }
        for change in &self.changes {
            writeln!(f, "{change}")?;
        }
        for note in &self.notes {
            writeln!(f, "! {note}")?;
        }
        Ok(())
    }
}

/// How long a created or deleted topic may take to show in (or leave) the metadata.
const PROPAGATION: Duration = Duration::from_secs(10);

impl Admin {
    /// Compares the declared topics of `routes` with the cluster: what
    /// [`migrate`](Self::migrate) would change.
    pub fn plan(&self, routes: &Routes) -> Result<TopicsPlan> {
        let mut plan = TopicsPlan::default();
        for (name, declared) in routes.declared_topics() {
            let Some(current) = self.topic(name)? else {
                plan.changes.push(TopicChange::Create {
                    topic: name.to_owned(),
                    declaratives: declared.clone(),
                });
                continue;
            };
            if current.partitions < declared.partition_count() {
                plan.changes.push(TopicChange::AddPartitions {
                    topic: name.to_owned(),
                    from: current.partitions,
                    to: declared.partition_count(),
                });
            } else if current.partitions > declared.partition_count() {
                plan.notes.push(format!(
                    "`{name}` has {} partitions, more than the {} declared; Kafka cannot remove \
                     partitions (declare {0}, or recreate it with `topics reset`)",
                    current.partitions,
                    declared.partition_count()
                ));
            }
            if current.replication_factor != declared.replication() {
                plan.notes.push(format!(
                    "`{name}` has replication factor {}, {} declared; migrations do not reassign \
                     replicas (use the cluster's reassignment tools)",
                    current.replication_factor,
                    declared.replication()
                ));
            }
            if !declared.configs().is_empty() {
                let configs = self.topic_configs(name)?;
                let changes: BTreeMap<String, (Option<String>, String)> = declared
                    .configs()
                    .iter()
                    .filter(|(k, v)| configs.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), (configs.get(k).cloned(), v.clone())))
                    .collect();
                if !changes.is_empty() {
                    plan.changes.push(TopicChange::AlterConfigs {
                        topic: name.to_owned(),
                        changes,
                    });
                }
            }
        }
        Ok(plan)
    }

    /// Applies `plan`'s changes in order; stops at the first the broker refuses.
    pub fn apply(&self, plan: &TopicsPlan) -> Result<()> {
        for change in &plan.changes {
            match change {
                TopicChange::Create {
                    topic,
                    declaratives,
                } => {
                    self.create_topic(
                        topic,
                        declaratives.partition_count(),
                        declaratives.replication(),
                        declaratives.configs(),
                    )?;
                }
                TopicChange::AddPartitions { topic, to, .. } => {
                    self.create_partitions(topic, *to)?
                }
                TopicChange::AlterConfigs { topic, changes } => {
                    let wanted = changes
                        .iter()
                        .map(|(k, (_, v))| (k.clone(), v.clone()))
                        .collect();
                    self.alter_topic_configs(topic, &wanted)?;
                }
            }
        }
        Ok(())
    }

    /// Brings the cluster to the declared topics of `routes`: creates missing ones, raises
    /// partition counts, sets differing configs. Idempotent: a second run changes nothing.
    /// Returns the plan it applied.
    pub fn migrate(&self, routes: &Routes) -> Result<TopicsPlan> {
        let plan = self.plan(routes)?;
        self.apply(&plan)?;
        Ok(plan)
    }

    /// Creates the declared topics that do not exist; returns their names.
    pub fn create_declared(&self, routes: &Routes) -> Result<Vec<String>> {
        let mut created = Vec::new();
        for (name, declared) in routes.declared_topics() {
            if self.topic(name)?.is_none() {
                self.create_topic(
                    name,
                    declared.partition_count(),
                    declared.replication(),
                    declared.configs(),
                )?;
                created.push(name.to_owned());
            }
        }
        Ok(created)
    }

    /// Deletes the declared topics that exist (with their messages); returns their names.
    pub fn delete_declared(&self, routes: &Routes) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for (name, _) in routes.declared_topics() {
            if self.topic(name)?.is_some() {
                self.delete_topic(name)?;
                deleted.push(name.to_owned());
            }
        }
        Ok(deleted)
    }

    /// Deletes the declared topics, then creates them again as declared (empty).
    pub fn reset_declared(&self, routes: &Routes) -> Result<Vec<String>> {
        self.delete_declared(routes)?;
        self.create_declared(routes)
    }

    /// Waits until `topic` shows in the metadata (`present`) or has left it.
    fn await_topic(&self, topic: &str, present: bool) -> Result<()> {
        let deadline = std::time::Instant::now() + PROPAGATION;
        loop {
            if self.topic(topic)?.is_some() == present {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let what = if present { "appear in" } else { "leave" };
                return Err(Error::Kafka(KafkaError::other(
                    format!("wait for `{topic}` to {what} the cluster metadata"),
                    format!("it did not within {PROPAGATION:?}"),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
