//! Producer settings, their defaults and their contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use karafka_core::instrumentation::Monitor;
use karafka_core::oauth::OAuthTokenProvider;
use karafka_core::{ConfigError, KafkaSettings, Violations};

use crate::client::ClientFactory;
use crate::middleware::{Chain, Middleware};

/// Default `max_payload_size`: Kafka's default `message.max.bytes` (1,000,012 bytes).
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 1_000_012;
/// Default `max_wait_timeout`.
pub const DEFAULT_MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// `message.timeout.ms` the producer sets unless you do: shorter than `max_wait_timeout`, so
/// a synchronous wait ends with librdkafka's verdict rather than a wait timeout.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "50000";
/// `transaction.timeout.ms` the producer sets on transactional producers unless you do.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: &str = "55000";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The validated settings of a producer (read them with [`Producer::config`](crate::Producer::config)).
#[derive(Debug)]
pub struct ProducerConfig {
    pub(crate) id: Arc<str>,
    pub(crate) kafka: KafkaSettings,
    pub(crate) max_payload_size: usize,
    pub(crate) max_wait_timeout: Duration,
    pub(crate) wait_on_queue_full: bool,
    pub(crate) wait_backoff_on_queue_full: Duration,
    pub(crate) wait_timeout_on_queue_full: Duration,
    pub(crate) max_attempts_on_transaction_command: u32,
    pub(crate) wait_backoff_on_transaction_command: Duration,
    pub(crate) reload_on_transaction_fatal_error: bool,
    pub(crate) transactional: bool,
    pub(crate) idempotent: bool,
}

impl ProducerConfig {
    /// The producer's id (in events and logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The librdkafka settings the client is created with (defaults applied).
    pub fn kafka(&self) -> &KafkaSettings {
        &self.kafka
    }

    /// Largest payload accepted, bytes.
    pub fn max_payload_size(&self) -> usize {
        self.max_payload_size
    }

    /// How long synchronous dispatch waits for delivery reports.
    pub fn max_wait_timeout(&self) -> Duration {
        self.max_wait_timeout
    }

    /// Whether `transactional.id` is set.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Whether the producer is idempotent (`enable.idempotence`, or transactional).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// Builds a [`Producer`](crate::Producer). Every setter documents its default; `build()`
/// checks everything and reports all problems at once.
///
/// ```
/// use std::time::Duration;
/// use karafka_producer::Producer;
///
/// let producer = Producer::builder()
///     .id("billing")
///     .kafka("bootstrap.servers", "127.0.0.1:9092")
///     .kafka("linger.ms", "5")
///     .max_wait_timeout(Duration::from_secs(30))
///     .kafka("message.timeout.ms", "20000")
///     .build()
///     .unwrap();
/// assert_eq!(producer.id(), "billing");
/// ```
pub struct ProducerBuilder {
    id: Option<String>,
    kafka: KafkaSettings,
    max_payload_size: usize,
    max_wait_timeout: Duration,
    wait_on_queue_full: bool,
    wait_backoff_on_queue_full: Duration,
    wait_timeout_on_queue_full: Duration,
    max_attempts_on_transaction_command: u32,
    wait_backoff_on_transaction_command: Duration,
    reload_on_transaction_fatal_error: bool,
    monitor: Option<Monitor>,
    middleware: Vec<Box<dyn Middleware>>,
    client: Option<Arc<dyn ClientFactory>>,
    oauth: Option<Arc<dyn OAuthTokenProvider>>,
}

impl Default for ProducerBuilder {
    fn default() -> Self {
        Self {
            id: None,
            kafka: KafkaSettings::new(),
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            max_wait_timeout: DEFAULT_MAX_WAIT_TIMEOUT,
            wait_on_queue_full: true,
            wait_backoff_on_queue_full: Duration::from_millis(100),
            wait_timeout_on_queue_full: Duration::from_secs(10),
            max_attempts_on_transaction_command: 5,
            wait_backoff_on_transaction_command: Duration::from_millis(500),
            reload_on_transaction_fatal_error: true,
            monitor: None,
            middleware: Vec::new(),
            client: None,
            oauth: None,
        }
    }
}

impl std::fmt::Debug for ProducerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerBuilder")
            .field("id", &self.id)
            .field("kafka", &self.kafka)
            .field("max_payload_size", &self.max_payload_size)
            .field("max_wait_timeout", &self.max_wait_timeout)
            .field("middleware", &self.middleware.len())
            .field("custom_client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl ProducerBuilder {
    /// The producer's id, in events and logs. Default: `producer-<n>`, unique per process.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets one librdkafka setting (`bootstrap.servers`, `linger.ms`, `acks`, ...).
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka.set(key, value);
        self
    }

    /// Sets every librdkafka setting of `settings` (later calls override earlier ones).
    pub fn kafka_settings(mut self, settings: &KafkaSettings) -> Self {
        self.kafka = self.kafka.merged(settings);
        self
    }

    /// Largest payload accepted; larger messages are rejected before librdkafka sees them,
    /// with the message returned. Default 1,000,012 bytes (Kafka's `message.max.bytes`).
    pub fn max_payload_size(mut self, bytes: usize) -> Self {
        self.max_payload_size = bytes;
        self
    }

    /// How long synchronous dispatch (`produce_sync`, `produce_many_sync`, `flush_sync`)
    /// waits for delivery reports. Default 60 s; must exceed `message.timeout.ms` (set to
    /// 50 s unless you set it) so a wait ends with librdkafka's verdict.
    pub fn max_wait_timeout(mut self, timeout: Duration) -> Self {
        self.max_wait_timeout = timeout;
        self
    }

    /// Whether to wait and retry when librdkafka's queue is full. Default `true`.
    pub fn wait_on_queue_full(mut self, wait: bool) -> Self {
        self.wait_on_queue_full = wait;
        self
    }

    /// Longest single wait before retrying a full queue (the retry comes sooner when delivery
    /// reports free room). Default 100 ms.
    pub fn wait_backoff_on_queue_full(mut self, backoff: Duration) -> Self {
        self.wait_backoff_on_queue_full = backoff;
        self
    }

    /// How long in total to wait for room in a full queue before failing with
    /// [`Error::QueueFull`](crate::Error::QueueFull). Default 10 s.
    pub fn wait_timeout_on_queue_full(mut self, timeout: Duration) -> Self {
        self.wait_timeout_on_queue_full = timeout;
        self
    }

    /// Attempts for a transaction step that librdkafka says is retriable. Default 5.
    pub fn max_attempts_on_transaction_command(mut self, attempts: u32) -> Self {
        self.max_attempts_on_transaction_command = attempts;
        self
    }

    /// Back-off before the first retry of a transaction step; it grows by this much with
    /// every attempt (500 ms, 1 s, 1.5 s, ...). Default 500 ms.
    pub fn wait_backoff_on_transaction_command(mut self, backoff: Duration) -> Self {
        self.wait_backoff_on_transaction_command = backoff;
        self
    }

    /// Whether a fatal transactional error (such as being fenced) rebuilds the librdkafka
    /// client, so the producer keeps working. Default `true`.
    pub fn reload_on_transaction_fatal_error(mut self, reload: bool) -> Self {
        self.reload_on_transaction_fatal_error = reload;
        self
    }

    /// The monitor events go to. Default: a new one (subscribe through
    /// [`Producer::monitor`](crate::Producer::monitor)).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Adds a middleware (runs after those added before).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Box::new(middleware));
        self
    }

    /// Where SASL OAUTHBEARER tokens come from (`sasl.mechanisms=OAUTHBEARER`): your code,
    /// called on the client's polling thread when librdkafka needs a token. See
    /// [`karafka_core::oauth`].
    ///
    /// ```no_run
    /// use karafka_core::oauth::OAuthToken;
    /// use karafka_producer::Producer;
    ///
    /// let producer = Producer::builder()
    ///     .kafka("bootstrap.servers", "b-1.example.com:9098")
    ///     .kafka("security.protocol", "SASL_SSL")
    ///     .kafka("sasl.mechanisms", "OAUTHBEARER")
    ///     .oauth_token_provider(|_config: Option<&str>| {
    ///         Ok(OAuthToken { token: "...".into(), principal: "me".into(), lifetime_ms: 0 })
    ///     })
    ///     .build()?;
    /// # Ok::<(), karafka_core::ConfigError>(())
    /// ```
    pub fn oauth_token_provider(mut self, provider: impl OAuthTokenProvider) -> Self {
        self.oauth = Some(Arc::new(provider));
        self
    }

    /// [`oauth_token_provider`](Self::oauth_token_provider) with a shared provider (one for
    /// several clients).
    pub fn oauth_token_provider_arc(mut self, provider: Arc<dyn OAuthTokenProvider>) -> Self {
        self.oauth = Some(provider);
        self
    }

    /// Uses another client than librdkafka (`karafka-testing`'s in-memory buffered client,
    /// for example). `bootstrap.servers` is then not required.
    pub fn client(mut self, factory: impl ClientFactory) -> Self {
        self.client = Some(Arc::new(factory));
        self
    }

    /// Validates and builds. No connection is made until the first message.
    pub fn build(self) -> Result<crate::Producer, ConfigError> {
        let (config, monitor, middleware, factory) = self.validate()?;
        Ok(crate::Producer::from_parts(
            config, monitor, middleware, factory,
        ))
    }

    #[allow(clippy::type_complexity)]
    fn validate(
        self,
    ) -> Result<(ProducerConfig, Monitor, Chain, Arc<dyn ClientFactory>), ConfigError> {
        let mut v = Violations::new();
        let id = self
            .id
            .unwrap_or_else(|| format!("producer-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        v.check(!id.trim().is_empty(), "producer.id", || {
            "must not be empty".into()
        });

        let mut kafka = self.kafka;
        v.extend(kafka.validate("producer.kafka"));
        v.extend(karafka_core::librdkafka::check_connection(
            &kafka,
            "producer.kafka",
        ));
        let custom_client = self.client.is_some();
        v.check(
            custom_client
                || kafka
                    .get("bootstrap.servers")
                    .is_some_and(|s| !s.trim().is_empty()),
            "producer.kafka.bootstrap.servers",
            || "is required: the brokers to connect to, e.g. `127.0.0.1:9092`".into(),
        );

        let transactional = kafka.contains_key("transactional.id");
        let idempotent = transactional || kafka.get("enable.idempotence") == Some("true");
        if idempotent {
            for key in ["acks", "request.required.acks"] {
                if let Some(acks) = kafka.get(key) {
                    v.check(
                        matches!(acks, "all" | "-1"),
                        format!("producer.kafka.{key}"),
                        || {
                            format!(
                                "is `{acks}`, but an idempotent or transactional producer needs \
                                 `all` (-1): remove it or set it to `all`"
                            )
                        },
                    );
                }
            }
        }

        let message_timeout_key = ["message.timeout.ms", "delivery.timeout.ms"]
            .into_iter()
            .find(|k| kafka.contains_key(k));
        if message_timeout_key.is_none() {
            kafka.set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS);
        }
        if transactional {
            kafka.set_default("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS);
        }
        let timeout_key = message_timeout_key.unwrap_or("message.timeout.ms");
        if let Some(ms) = kafka.get(timeout_key).and_then(|s| s.parse::<u64>().ok()) {
            let delivery = Duration::from_millis(ms);
            v.check(
                ms == 0 || self.max_wait_timeout > delivery,
                "producer.max_wait_timeout",
                || {
                    format!(
                        "is {:?} but `{timeout_key}` is {delivery:?}: a sync wait would end before \
                         librdkafka's verdict; make max_wait_timeout longer or `{timeout_key}` shorter",
                        self.max_wait_timeout
                    )
                },
            );
        }

        v.check(
            self.max_payload_size > 0,
            "producer.max_payload_size",
            || "must be greater than 0".into(),
        );
        v.check(
            !self.max_wait_timeout.is_zero(),
            "producer.max_wait_timeout",
            || "must be greater than 0".into(),
        );
        v.check(
            !self.wait_backoff_on_queue_full.is_zero(),
            "producer.wait_backoff_on_queue_full",
            || "must be greater than 0".into(),
        );
        v.check(
            self.wait_backoff_on_queue_full <= self.wait_timeout_on_queue_full,
            "producer.wait_backoff_on_queue_full",
            || {
                format!(
                    "is {:?}, longer than wait_timeout_on_queue_full ({:?})",
                    self.wait_backoff_on_queue_full, self.wait_timeout_on_queue_full
                )
            },
        );
        v.check(
            self.max_attempts_on_transaction_command >= 1,
            "producer.max_attempts_on_transaction_command",
            || "must be at least 1".into(),
        );

        let config = ProducerConfig {
            id: id.into(),
            kafka,
            max_payload_size: self.max_payload_size,
            max_wait_timeout: self.max_wait_timeout,
            wait_on_queue_full: self.wait_on_queue_full,
            wait_backoff_on_queue_full: self.wait_backoff_on_queue_full,
            wait_timeout_on_queue_full: self.wait_timeout_on_queue_full,
            max_attempts_on_transaction_command: self.max_attempts_on_transaction_command,
            wait_backoff_on_transaction_command: self.wait_backoff_on_transaction_command,
            reload_on_transaction_fatal_error: self.reload_on_transaction_fatal_error,
            transactional,
            idempotent,
        };
        let oauth = self.oauth;
        let factory = self
            .client
            .unwrap_or_else(|| Arc::new(crate::client::RdKafkaClientFactory { oauth }));
        v.finish((
            config,
            self.monitor.unwrap_or_default(),
            Chain(self.middleware),
            factory,
        ))
    }
}
