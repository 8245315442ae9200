//! The broker a test runs against: the embedded cluster, or an external one from the
//! environment, with the capabilities each kind has.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use karafka_core::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::{EmbeddedCluster, FixtureError, wait_for};

/// Environment variable naming an external broker (`host:port[,host:port]`).
pub const BROKERS_ENV: &str = "KARAFKA_TEST_BROKERS";
/// Environment variable naming the external broker's kind: `mock`, `tansu` or `kafka`.
pub const KIND_ENV: &str = "KARAFKA_TEST_BROKER_KIND";
/// Environment variable naming a file to which every broker test appends whether it ran or
/// was skipped (one tab-separated line each); `.ci/run` counts them.
pub const REPORT_ENV: &str = "KARAFKA_TEST_REPORT";

/// Environment variable with the external test broker's process id (`scripts/broker env`
/// prints it), for tests that stop and resume the broker ([`Capability::BrokerProcess`]).
pub const PROCESS_ENV: &str = "KARAFKA_TEST_BROKER_PID";

/// Environment variable naming a listener of the test broker that requires TLS
/// (`scripts/broker start` runs one; see [`SecureListeners`]).
pub const TLS_BROKERS_ENV: &str = "KARAFKA_TEST_TLS_BROKERS";
/// Environment variable naming a listener that requires SASL over TLS.
pub const SASL_SSL_BROKERS_ENV: &str = "KARAFKA_TEST_SASL_SSL_BROKERS";
/// Environment variable naming the CA (PEM) that signed the secured listeners' certificate.
pub const TLS_CA_ENV: &str = "KARAFKA_TEST_TLS_CA";
/// Environment variable naming a CA (PEM) that did not sign it (a client trusting only it
/// must be refused).
pub const TLS_OTHER_CA_ENV: &str = "KARAFKA_TEST_TLS_OTHER_CA";
/// Environment variable naming the SASL user of the SASL listener.
pub const SASL_USER_ENV: &str = "KARAFKA_TEST_SASL_USER";
/// Environment variable holding that user's password.
pub const SASL_PASSWORD_ENV: &str = "KARAFKA_TEST_SASL_PASSWORD";
/// Environment variable holding the OAUTHBEARER token the SASL listener accepts.
pub const OAUTH_TOKEN_ENV: &str = "KARAFKA_TEST_OAUTH_TOKEN";

/// The session timeout test consumers use on every broker. Tansu holds a new group's first
/// join for half the session timeout, so a short one keeps joins quick there.
pub const TEST_SESSION_TIMEOUT_MS: &str = "6000";

/// Which broker implementation a test talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// librdkafka's mock cluster (embedded in-process, or another process's).
    Mock,
    /// Tansu, the Kafka-compatible broker `scripts/broker` installs.
    Tansu,
    /// Apache Kafka (or a fully compatible broker).
    Kafka,
}

impl BrokerKind {
    /// Parses `mock`, `tansu` or `kafka` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, FixtureError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mock" => Ok(BrokerKind::Mock),
            "tansu" => Ok(BrokerKind::Tansu),
            "kafka" => Ok(BrokerKind::Kafka),
            other => Err(FixtureError::Env(format!(
                "{KIND_ENV}=`{other}` is not a broker kind; use `mock`, `tansu` or `kafka`"
            ))),
        }
    }

    /// `mock`, `tansu` or `kafka`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BrokerKind::Mock => "mock",
            BrokerKind::Tansu => "tansu",
            BrokerKind::Kafka => "kafka",
        }
    }

    /// Whether a broker of this kind has `capability` (fault injection aside, which needs
    /// the embedded cluster's handle).
    pub fn supports(&self, capability: Capability) -> bool {
        use Capability::*;
        match (self, capability) {
            // Not a property of the kind: the embedded cluster's handle, the environment.
            (_, FaultInjection | SecureListeners | BrokerProcess) => false,
            (BrokerKind::Kafka, RetentionBySize) => false,
            (BrokerKind::Kafka, _) => true,
            (
                BrokerKind::Mock,
                ConsumerProtocol
                | ExactHighWatermarks
                | Transactions
                | CooperativeRebalances
                | RetentionBySize,
            ) => true,
            (
                BrokerKind::Mock,
                ReadCommittedFiltersAborted
                | CommitsDuringEagerRebalance
                | AdminCreateTopics
                | TransactionalOffsetCommit
                | ProducerFencing
                | OffsetsForTimes
                | ListGroups,
            ) => false,
            (
                BrokerKind::Tansu,
                AdminCreateTopics
                | Transactions
                | TransactionalOffsetCommit
                | ProducerFencing
                | ListGroups
                | CommitsDuringEagerRebalance,
            ) => true,
            (
                BrokerKind::Tansu,
                ConsumerProtocol
                | ReadCommittedFiltersAborted
                | ExactHighWatermarks
                | OffsetsForTimes
                | CooperativeRebalances
                | RetentionBySize,
            ) => false,
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a test needs from its broker. A test declares what it needs with
/// [`TestBroker::require`]; on a broker without it, the test says so and does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// KIP-848 consumer groups (`group.protocol=consumer`). Mock and Kafka; not Tansu.
    ConsumerProtocol,
    /// `read_committed` consumers skip aborted transactional records. Only Kafka.
    ReadCommittedFiltersAborted,
    /// Topics can be created with the Admin API. Tansu and Kafka; the mock times out.
    AdminCreateTopics,
    /// High watermarks are exact after multi-record batches. Mock and Kafka; not Tansu.
    ExactHighWatermarks,
    /// Transactional producers (begin, commit, abort).
    Transactions,
    /// Consumer offsets sent in a transaction become the group's committed offsets on
    /// commit. Tansu and Kafka; the mock accepts them without storing them.
    TransactionalOffsetCommit,
    /// A second producer with the same `transactional.id` fences the first. Tansu and
    /// Kafka; the mock gives every producer a new id instead of bumping the epoch.
    ProducerFencing,
    /// Faults can be injected (broker down, request errors, latency): the embedded cluster.
    FaultInjection,
    /// Offsets can be looked up by timestamp (ListOffsets with a time). Only Kafka: the mock
    /// answers the end of the partition, Tansu offset 0, whatever the time.
    OffsetsForTimes,
    /// The cluster lists its consumer groups (ListGroups). Tansu and Kafka; not the mock.
    ListGroups,
    /// A listener that requires TLS and one that requires SASL (SCRAM-SHA-256/512, PLAIN)
    /// over TLS, named by the environment ([`SecureListeners`]); `scripts/broker start` runs
    /// them beside Tansu. Not the embedded cluster (the mock speaks plaintext only).
    SecureListeners,
    /// A member joining a running cooperative-sticky group gets partitions (incremental
    /// rebalances). Mock and Kafka; not Tansu 0.6, whose coordinator leaves such a join
    /// unanswered: measured, 4 of 4 runs where the second member joined after the first one's
    /// assignment stalled with no further assignment for 120 s while every member kept polling
    /// (a thread dump shows the listeners in `poll`); joins inside the initial rebalance delay
    /// stalled 3 of 15 runs.
    CooperativeRebalances,
    /// A member can commit offsets while an eager rebalance it must join is pending, as its
    /// revocation callback does (Kafka accepts the current generation's commits while the
    /// group prepares the rebalance). Tansu and Kafka; the mock refuses them with
    /// REBALANCE_IN_PROGRESS (its group is already joining), so an eager revocation there
    /// commits nothing and the next owner starts from the last background commit.
    CommitsDuringEagerRebalance,
    /// The broker's process id is known ([`PROCESS_ENV`], which `scripts/broker env`
    /// prints for the Tansu it started), so a test can stop the broker (SIGSTOP) and resume
    /// it (SIGCONT). Not the embedded cluster (it lives in the test's own process; its fault
    /// injection takes brokers down instead).
    BrokerProcess,
    /// A partition drops its oldest records once it holds more than a fixed size, so a
    /// committed offset can fall out of range: the embedded cluster (librdkafka's mock keeps
    /// 5 MiB per partition). Not Tansu (keeps everything); Kafka only with a topic's
    /// `retention.bytes`, which the harness does not set, so not there either.
    RetentionBySize,
}

impl Capability {
    /// What the capability is, for the line a skipped test prints.
    pub fn describe(&self) -> &'static str {
        match self {
            Capability::ConsumerProtocol => "KIP-848 consumer groups (group.protocol=consumer)",
            Capability::ReadCommittedFiltersAborted => {
                "read_committed filtering of aborted transactional records"
            }
            Capability::AdminCreateTopics => "topic creation through the Admin API",
            Capability::ExactHighWatermarks => "exact high watermarks after multi-record batches",
            Capability::Transactions => "transactional producers",
            Capability::TransactionalOffsetCommit => {
                "storing consumer offsets committed inside transactions"
            }
            Capability::ProducerFencing => "fencing of producers that share a transactional.id",
            Capability::FaultInjection => "fault injection (only the embedded cluster)",
            Capability::OffsetsForTimes => "offset lookups by timestamp (ListOffsets with a time)",
            Capability::ListGroups => "listing consumer groups (ListGroups)",
            Capability::CooperativeRebalances => {
                "cooperative-sticky rebalances when a member joins a running group"
            }
            Capability::CommitsDuringEagerRebalance => {
                "offset commits while an eager rebalance is pending (from the revocation callback)"
            }
            Capability::BrokerProcess => {
                "the broker's process id (KARAFKA_TEST_BROKER_PID: `scripts/broker env` prints it), \
                 to stop and resume the broker"
            }
            Capability::RetentionBySize => {
                "deleting a partition's oldest records beyond a size (the embedded cluster's 5 MiB)"
            }
            Capability::SecureListeners => {
                "TLS and SASL_SSL listeners (KARAFKA_TEST_TLS_BROKERS, KARAFKA_TEST_SASL_SSL_BROKERS: \
                 `scripts/broker start` runs them)"
            }
        }
    }
}

/// The broker a test runs against. See the [crate docs](crate) for the environment.
#[derive(Debug, Clone)]
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    embedded: Option<EmbeddedCluster>,
    secure: Option<SecureListeners>,
}

/// The secured listeners of the test broker, from the environment (`scripts/broker env`
/// prints it): one requires TLS, one SASL over TLS; both present a certificate for
/// `127.0.0.1` signed by a throw-away CA. The password is redacted from `Debug`.
#[derive(Clone)]
pub struct SecureListeners {
    /// `bootstrap.servers` of the listener that requires TLS.
    pub tls: String,
    /// `bootstrap.servers` of the listener that requires SASL over TLS.
    pub sasl_ssl: String,
    /// The CA that signed the listeners' certificate (PEM file).
    pub ca: PathBuf,
    /// A CA that did not sign it: a client trusting only this one must be refused.
    pub other_ca: PathBuf,
    /// The SASL user.
    pub user: String,
    password: String,
    oauth_token: String,
}

impl fmt::Debug for SecureListeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureListeners")
            .field("tls", &self.tls)
            .field("sasl_ssl", &self.sasl_ssl)
            .field("ca", &self.ca)
            .field("other_ca", &self.other_ca)
            .field("user", &self.user)
            .field("password", &karafka_core::settings::REDACTED)
            .field("oauth_token", &karafka_core::settings::REDACTED)
            .finish()
    }
}

impl SecureListeners {
    /// From the environment: `None` when [`TLS_BROKERS_ENV`] is not set; an error when it is
    /// but another of the variables is missing.
    pub fn from_env() -> Result<Option<Self>, FixtureError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(tls) = var(TLS_BROKERS_ENV) else {
            return Ok(None);
        };
        let need = |name: &str| {
            var(name).ok_or_else(|| {
                FixtureError::Env(format!(
                    "{TLS_BROKERS_ENV} is set but {name} is not: set them all with \
                     `eval \"$(scripts/broker env)\"`"
                ))
            })
        };
        Ok(Some(SecureListeners {
            tls,
            sasl_ssl: need(SASL_SSL_BROKERS_ENV)?,
            ca: PathBuf::from(need(TLS_CA_ENV)?),
            other_ca: PathBuf::from(need(TLS_OTHER_CA_ENV)?),
            user: need(SASL_USER_ENV)?,
            password: need(SASL_PASSWORD_ENV)?,
            oauth_token: need(OAUTH_TOKEN_ENV)?,
        }))
    }

    /// The SASL user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The OAUTHBEARER token the SASL listener accepts (it checks the value only).
    pub fn oauth_token(&self) -> &str {
        &self.oauth_token
    }

    /// Client settings for the TLS listener: `security.protocol=SSL`, the CA, and (as
    /// librdkafka does by default) the broker's name verified against its certificate.
    pub fn tls_settings(&self) -> KafkaSettings {
        KafkaSettings::new()
            .with("bootstrap.servers", &self.tls)
            .with("security.protocol", "SSL")
            .with("ssl.ca.location", self.ca.display().to_string())
            .with("ssl.endpoint.identification.algorithm", "https")
            .with("log_level", "4")
    }

    /// Client settings for the SASL listener with `mechanism` (`SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`, `PLAIN`) and `password`.
    pub fn sasl_ssl_settings_with(&self, mechanism: &str, password: &str) -> KafkaSettings {
        self.tls_settings()
            .with("bootstrap.servers", &self.sasl_ssl)
            .with("security.protocol", "SASL_SSL")
            .with("sasl.mechanisms", mechanism)
            .with("sasl.username", &self.user)
            .with("sasl.password", password)
    }

    /// [`sasl_ssl_settings_with`](Self::sasl_ssl_settings_with) the right password.
    pub fn sasl_ssl_settings(&self, mechanism: &str) -> KafkaSettings {
        self.sasl_ssl_settings_with(mechanism, &self.password)
    }
}

/// How long the embedded cluster the fixtures start waits for more members of a new group.
/// Shorter than Kafka's 3 s default, to keep single-member group tests fast; tests of
/// several members joining use their own deadlines (see [`TestBroker::join_deadline`]).
pub const TEST_INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(500);

impl TestBroker {
    /// The broker the environment names: [`BROKERS_ENV`] (with [`KIND_ENV`], default
    /// `kafka`), or else a new embedded cluster of one broker.
    pub fn from_env() -> Result<Self, FixtureError> {
        let brokers = std::env::var(BROKERS_ENV).ok();
        let kind = std::env::var(KIND_ENV).ok();
        let mut broker = Self::from_vars(brokers.as_deref(), kind.as_deref())?;
        if broker.embedded.is_none() {
            broker.secure = SecureListeners::from_env()?;
        }
        Ok(broker)
    }

    /// [`from_env`](Self::from_env) with explicit values (no environment read).
    pub fn from_vars(brokers: Option<&str>, kind: Option<&str>) -> Result<Self, FixtureError> {
        match brokers.map(str::trim).filter(|b| !b.is_empty()) {
            Some(bootstrap) => {
                let kind = kind
                    .map(BrokerKind::parse)
                    .transpose()?
                    .unwrap_or(BrokerKind::Kafka);
                Ok(TestBroker {
                    kind,
                    bootstrap: bootstrap.to_owned(),
                    embedded: None,
                    secure: None,
                })
            }
            None => {
                if let Some(kind) = kind {
                    if BrokerKind::parse(kind)? != BrokerKind::Mock {
                        return Err(FixtureError::Env(format!(
                            "{KIND_ENV}={kind} but {BROKERS_ENV} is not set: say where the broker is \
                             (e.g. {BROKERS_ENV}=127.0.0.1:19092 after `scripts/broker start`)"
                        )));
                    }
                }
                Self::embedded()
            }
        }
    }

    /// A new embedded cluster of one broker (initial rebalance delay
    /// [`TEST_INITIAL_REBALANCE_DELAY`]).
    pub fn embedded() -> Result<Self, FixtureError> {
        let cluster = EmbeddedCluster::builder()
            .initial_rebalance_delay(TEST_INITIAL_REBALANCE_DELAY)
            .start()?;
        Ok(Self::with_cluster(cluster))
    }

    /// A test broker over an embedded cluster you configured.
    pub fn with_cluster(cluster: EmbeddedCluster) -> Self {
        TestBroker {
            kind: BrokerKind::Mock,
            bootstrap: cluster.bootstrap_servers().to_owned(),
            embedded: Some(cluster),
            secure: None,
        }
    }

    /// For a test: the broker from the environment if it has every capability in `needs`.
    ///
    /// When it lacks one, prints one line saying which and why the test did not run, and
    /// returns `None` (the test returns early). Every call is also recorded in the
    /// [`REPORT_ENV`] file when that is set, so a CI run can count what ran where.
    ///
    /// # Panics
    ///
    /// When the environment is invalid or the external broker does not answer: a test must
    /// fail, not pass, when its broker is missing.
    ///
    /// ```no_run
    /// use karafka_testing::{Capability, TestBroker};
    ///
    /// let Some(broker) = TestBroker::require(&[Capability::ConsumerProtocol]) else { return };
    /// broker.create_topic("events", 4).unwrap();
    /// ```
    pub fn require(needs: &[Capability]) -> Option<Self> {
        let broker = match Self::from_env() {
            Ok(broker) => broker,
            Err(e) => panic!("test broker unavailable: {e}"),
        };
        if let Err(e) = broker.ensure_reachable() {
            panic!("test broker unavailable: {e}");
        }
        broker.check_needs(needs).then_some(broker)
    }

    /// Whether this broker has everything in `needs`; if not, prints and records why the
    /// current test does not run. Records a run otherwise.
    pub fn check_needs(&self, needs: &[Capability]) -> bool {
        let test = current_test_name();
        let missing = self.missing(needs);
        if missing.is_empty() {
            record(&format!("ran\t{}\t{test}", self.kind));
            return true;
        }
        let why = missing
            .iter()
            .map(|c| c.describe())
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!("SKIPPED {test}: the {} broker lacks {why}", self.kind);
        // Written straight to the process's stderr, past the test harness's capture, so the
        // line shows in every run.
        let _ = writeln!(std::io::stderr(), "{line}");
        record(&format!("skipped\t{}\t{test}\t{why}", self.kind));
        false
    }

    /// The capabilities of `needs` this broker lacks.
    pub fn missing(&self, needs: &[Capability]) -> Vec<Capability> {
        needs.iter().copied().filter(|c| !self.has(*c)).collect()
    }

    /// Whether this broker has `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::FaultInjection => self.embedded.is_some(),
            Capability::SecureListeners => self.secure.is_some(),
            Capability::BrokerProcess => self.embedded.is_none() && self.process_id().is_some(),
            other => self.kind.supports(other),
        }
    }

    /// The broker's kind.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The secured listeners (TLS, SASL over TLS) beside this broker, when the environment
    /// names them ([`Capability::SecureListeners`]).
    pub fn secure(&self) -> Option<&SecureListeners> {
        self.secure.as_ref()
    }

    /// The external broker's process id, from [`PROCESS_ENV`] ([`Capability::BrokerProcess`]),
    /// when that process runs and is not this one (on Tansu: when its command line says
    /// `tansu`, so that a stale variable does not stop an unrelated process).
    pub fn process_id(&self) -> Option<u32> {
        if self.embedded.is_some() {
            return None;
        }
        let pid: u32 = std::env::var(PROCESS_ENV).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let tansu = String::from_utf8_lossy(&cmdline).contains("tansu");
        (pid != std::process::id() && (tansu || self.kind != BrokerKind::Tansu)).then_some(pid)
    }

    /// The embedded cluster, for fault injection (`None` on an external broker).
    pub fn embedded_cluster(&self) -> Option<&EmbeddedCluster> {
        self.embedded.as_ref()
    }

    /// A deadline for a consumer group to form and get its assignment on this broker:
    /// generous enough for Kafka's and the mock's 3 s initial rebalance delay and for Tansu,
    /// which holds a new group's first join for half the session timeout.
    pub fn join_deadline(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Fails with a clear message when an external broker does not answer a metadata
    /// request within 10 s (checked once per process).
    pub fn ensure_reachable(&self) -> Result<(), FixtureError> {
        if self.embedded.is_some() {
            return Ok(());
        }
        static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
        CHECKED
            .get_or_init(|| {
                let consumer: BaseConsumer = client_config(&self.producer_settings())
                    .create()
                    .map_err(|e| e.to_string())?;
                consumer
                    .fetch_metadata(None, Duration::from_secs(10))
                    .map(|_| ())
                    .map_err(|e| {
                        format!(
                            "{BROKERS_ENV}={} ({}) did not answer a metadata request within 10 s: {e}; \
                             start it (`scripts/broker start`) or unset {BROKERS_ENV} to use the embedded cluster",
                            self.bootstrap, self.kind
                        )
                    })
            })
            .clone()
            .map_err(FixtureError::Unreachable)
    }

    /// Settings for a producer on this broker.
    pub fn producer_settings(&self) -> KafkaSettings {
        KafkaSettings::new()
            .with("bootstrap.servers", &self.bootstrap)
            .with("log_level", "4")
    }

    /// A client that reads `group`'s committed offsets (it never joins the group): keep it
    /// to ask often ([`CommittedOffsets::of`]).
    pub fn committed_offsets(&self, group: &str) -> Result<CommittedOffsets, FixtureError> {
        let consumer: BaseConsumer = crate::client_config(&self.consumer_settings(group))
            .create()
            .map_err(|e| FixtureError::Env(format!("cannot create an offsets client: {e}")))?;
        Ok(CommittedOffsets { consumer })
    }

    /// Settings for a consumer in `group` on this broker: earliest offsets, the test session
    /// timeout ([`TEST_SESSION_TIMEOUT_MS`]) and fetch settings that do not stall
    /// (`fetch.wait.max.ms=10`, `fetch.queue.backoff.ms=10`).
    pub fn consumer_settings(&self, group: &str) -> KafkaSettings {
        KafkaSettings::new()
            .with("bootstrap.servers", &self.bootstrap)
            .with("group.id", group)
            .with("auto.offset.reset", "earliest")
            .with("session.timeout.ms", TEST_SESSION_TIMEOUT_MS)
            .with("heartbeat.interval.ms", "1000")
            .with("fetch.wait.max.ms", "10")
            .with("fetch.queue.backoff.ms", "10")
            .with("log_level", "4")
    }

    /// Creates `topic` with `partitions` partitions: through the mock's own API on the
    /// embedded cluster, through the Admin API elsewhere, then waits until metadata shows
    /// every partition with a leader.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), FixtureError> {
        match &self.embedded {
            Some(cluster) => cluster.create_topic(topic, partitions)?,
            None if self.kind == BrokerKind::Mock => {
                return Err(FixtureError::Admin(format!(
                    "cannot create `{topic}` on an external mock cluster: its Admin CreateTopics \
                     request times out; use the embedded cluster or let auto-creation make it"
                )));
            }
            None => self.admin_create_topic(topic, partitions)?,
        }
        self.wait_for_topic(topic, partitions)
    }

    fn admin_create_topic(&self, topic: &str, partitions: i32) -> Result<(), FixtureError> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.producer_settings())
            .create()
            .map_err(|e| FixtureError::Admin(format!("creating the admin client: {e}")))?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        let results = karafka_core::native::block_on(admin.create_topics([&new_topic], &options))
            .map_err(|e| FixtureError::Admin(format!("creating topic `{topic}`: {e}")))?;
        for result in results {
            if let Err((name, code)) = result {
                return Err(FixtureError::Admin(format!(
                    "creating topic `{name}`: {code}"
                )));
            }
        }
        Ok(())
    }

    fn wait_for_topic(&self, topic: &str, partitions: i32) -> Result<(), FixtureError> {
        let consumer: BaseConsumer = client_config(&self.producer_settings())
            .create()
            .map_err(|e| FixtureError::Admin(format!("creating a metadata client: {e}")))?;
        wait_for(Duration::from_secs(30), || {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()?;
            let t = metadata.topics().iter().find(|t| t.name() == topic)?;
            let ready = t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions().iter().all(|p| p.leader() >= 0);
            ready.then_some(())
        })
        .map_err(|_| {
            FixtureError::Admin(format!(
                "topic `{topic}` did not show {partitions} partitions with leaders within 30 s"
            ))
        })
    }
}

/// An rdkafka `ClientConfig` from settings, for tests that drive raw rdkafka clients (the
/// baselines of benchmarks, the round-trip checks of the fixtures).
pub fn client_config(settings: &KafkaSettings) -> rdkafka::ClientConfig {
    karafka_core::native::client_config(settings)
}

fn current_test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("(unnamed test)")
        .to_owned()
}

fn record(line: &str) {
    let Some(path) = std::env::var_os(REPORT_ENV) else {
        return;
    };
    // One write of one short line to a file opened for appending: lines from parallel tests
    // and processes do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(
            std::io::stderr(),
            "could not append to {REPORT_ENV} file {path:?}: {e}"
        );
    }
}

/// Reads a group's committed offsets ([`TestBroker::committed_offsets`]).
pub struct CommittedOffsets {
    consumer: BaseConsumer,
}

impl CommittedOffsets {
    /// The committed offset (the next to read) of each partition of `topic` in
    /// `0..partitions` that has one; empty when the broker does not answer in 10 s.
    pub fn of(&self, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        self.try_of(topic, partitions).unwrap_or_default()
    }

    /// The committed offset of each partition of `topic` in `0..partitions` that has one, or
    /// why the broker did not say within 10 s (an empty map: nothing committed yet).
    pub fn try_of(&self, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>, String> {
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(list, Duration::from_secs(10))
            .map_err(|e| format!("cannot read the committed offsets of {topic}: {e}"))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }
}

impl std::fmt::Debug for CommittedOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedOffsets").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_reject_unknown() {
        assert_eq!(BrokerKind::parse("Tansu").unwrap(), BrokerKind::Tansu);
        let err = BrokerKind::parse("redpanda").unwrap_err().to_string();
        assert!(err.contains("redpanda") && err.contains("mock"), "{err}");
    }

    #[test]
    fn capabilities_by_kind() {
        use Capability::*;
        assert!(BrokerKind::Mock.supports(ConsumerProtocol));
        assert!(!BrokerKind::Tansu.supports(ConsumerProtocol));
        assert!(!BrokerKind::Tansu.supports(ReadCommittedFiltersAborted));
        assert!(!BrokerKind::Mock.supports(ReadCommittedFiltersAborted));
        assert!(!BrokerKind::Tansu.supports(ExactHighWatermarks));
        assert!(!BrokerKind::Mock.supports(AdminCreateTopics));
        assert!(BrokerKind::Kafka.supports(ReadCommittedFiltersAborted));
        assert!(!BrokerKind::Kafka.supports(FaultInjection));
        assert!(!BrokerKind::Mock.supports(TransactionalOffsetCommit));
        assert!(!BrokerKind::Mock.supports(ProducerFencing));
        assert!(BrokerKind::Tansu.supports(TransactionalOffsetCommit));
        assert!(BrokerKind::Tansu.supports(ProducerFencing));
    }

    #[test]
    fn external_broker_from_vars() {
        let b = TestBroker::from_vars(Some("127.0.0.1:19092"), Some("tansu")).unwrap();
        assert_eq!(b.kind(), BrokerKind::Tansu);
        assert_eq!(b.bootstrap_servers(), "127.0.0.1:19092");
        assert!(!b.has(Capability::FaultInjection));
        assert_eq!(
            TestBroker::from_vars(Some("h:1"), None).unwrap().kind(),
            BrokerKind::Kafka
        );
    }

    #[test]
    fn kind_without_address_is_an_error_that_says_what_to_set() {
        let err = TestBroker::from_vars(None, Some("tansu"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(BROKERS_ENV), "{err}");
    }

    #[test]
    fn no_address_means_embedded_with_fault_injection() {
        let b = TestBroker::from_vars(None, None).unwrap();
        assert_eq!(b.kind(), BrokerKind::Mock);
        assert!(b.has(Capability::FaultInjection));
        assert!(b.embedded_cluster().is_some());
    }

    #[test]
    fn missing_capabilities_are_listed() {
        let tansu = TestBroker::from_vars(Some("127.0.0.1:1"), Some("tansu")).unwrap();
        assert_eq!(
            tansu.missing(&[Capability::ConsumerProtocol, Capability::AdminCreateTopics]),
            [Capability::ConsumerProtocol]
        );
        assert!(tansu.missing(&[Capability::AdminCreateTopics]).is_empty());
    }
}
