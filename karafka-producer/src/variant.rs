//! Variants: per-topic settings on the producer's shared client.
//!
//! ## How librdkafka applies topic settings, and what that means here
//!
//! Topic-level settings (`acks`, `compression.codec`, `message.timeout.ms`, `partitioner`,
//! `request.timeout.ms`) live on a librdkafka *topic handle*. A client holds **one** handle
//! per topic name, and its settings are fixed when it is created: `rd_kafka_topic_new` for
//! a name that already has a handle returns that handle and silently discards the new
//! settings (see `rd_kafka_topic_new0` in librdkafka's `rdkafka_topic.c`); sending by topic
//! name (what rdkafka's `send` does) creates the handle with the client's default topic
//! settings on first use.
//!
//! So, within one producer, a topic can be sent to with **one** set of topic settings. A
//! variant creates the topic handle with its own settings (through rdkafka-sys, marked so
//! karafka-rs can tell it is the one it created) the first time it sends to a topic. Sending
//! the same topic with different settings afterwards (the default producer, or a variant
//! with other settings) is refused with [`Error::VariantConflict`](crate::Error::VariantConflict),
//! the message returned, instead of silently using the first settings. Variants with equal
//! settings share topics freely. For two settings on one topic, use two producers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use karafka_core::{ConfigError, Violations};

use crate::delivery::{BatchDelivery, DeliveryHandle, DeliveryReport};
use crate::error::Result;
use crate::message::Message;
use crate::producer::{Dispatcher, Producer};

/// Topic settings a variant may change, and the alias each is stored under.
const ALLOWED: &[(&str, &str)] = &[
    ("acks", "request.required.acks"),
    ("request.required.acks", "request.required.acks"),
    ("compression.codec", "compression.codec"),
    ("compression.type", "compression.codec"),
    ("compression.level", "compression.level"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("message.timeout.ms", "message.timeout.ms"),
    ("partitioner", "partitioner"),
    ("request.timeout.ms", "request.timeout.ms"),
];

/// A variant's validated topic settings, normalized (aliases folded: `acks` is stored as
/// `request.required.acks`, `all` as `-1`), so equal settings compare equal.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TopicConfig {
    settings: BTreeMap<String, String>,
}

impl TopicConfig {
    /// The normalized settings, key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of a normalized key (`request.required.acks`, `compression.codec`,
    /// `message.timeout.ms`, `partitioner`, `request.timeout.ms`, `compression.level`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// Whether no setting differs from the producer's.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }
}

impl fmt::Debug for TopicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for TopicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.settings.is_empty() {
            return f.write_str("the producer's default topic settings");
        }
        f.write_str("topic settings {")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        f.write_str("}")
    }
}

/// Settings of a [`Variant`]: per-topic librdkafka settings and its own `max_wait_timeout`.
///
/// ```
/// use std::time::Duration;
/// use karafka_producer::VariantConfig;
///
/// let config = VariantConfig::new()
///     .set("acks", "1")
///     .set("compression.codec", "zstd")
///     .max_wait_timeout(Duration::from_secs(5));
/// # drop(config);
/// ```
#[derive(Debug, Clone, Default)]
pub struct VariantConfig {
    settings: Vec<(String, String)>,
    max_wait_timeout: Option<Duration>,
}

impl VariantConfig {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a topic setting. Allowed: `acks` / `request.required.acks`, `compression.codec` /
    /// `compression.type`, `compression.level`, `delivery.timeout.ms` / `message.timeout.ms`,
    /// `partitioner`, `request.timeout.ms`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// How long this variant's synchronous dispatch waits (default: the producer's).
    pub fn max_wait_timeout(mut self, timeout: Duration) -> Self {
        self.max_wait_timeout = Some(timeout);
        self
    }

    pub(crate) fn validate(
        &self,
        idempotent: bool,
        producer_max_wait: Duration,
    ) -> std::result::Result<(TopicConfig, Duration), ConfigError> {
        let mut v = Violations::new();
        let mut settings = BTreeMap::new();
        for (key, value) in &self.settings {
            let path = format!("variant.topic_config.{key}");
            let Some((_, canonical)) = ALLOWED.iter().find(|(k, _)| k == key) else {
                v.push(
                    path,
                    format!(
                        "`{key}` cannot differ per variant; allowed: acks, request.required.acks, \
                         compression.codec, compression.type, compression.level, \
                         delivery.timeout.ms, message.timeout.ms, partitioner, request.timeout.ms \
                         (set other settings on the producer)"
                    ),
                );
                continue;
            };
            if *canonical == "request.required.acks" && idempotent {
                v.push(
                    path,
                    "acks cannot be set per variant on an idempotent or transactional producer: \
                     idempotence needs acks=all on every topic",
                );
                continue;
            }
            if let Err(reason) = karafka_core::native::check_librdkafka_setting(key, value) {
                v.push(
                    path,
                    format!("librdkafka rejects `{key}` = `{value}`: {reason}"),
                );
                continue;
            }
            let value = match (*canonical, value.as_str()) {
                ("request.required.acks", "all") => "-1".to_owned(),
                _ => value.clone(),
            };
            settings.insert((*canonical).to_owned(), value);
        }
        let max_wait = self.max_wait_timeout.unwrap_or(producer_max_wait);
        v.check(!max_wait.is_zero(), "variant.max_wait_timeout", || {
            "must be greater than 0".into()
        });
        v.finish((TopicConfig { settings }, max_wait))
    }
}

/// A producer with different topic settings (and wait limit), sharing the producer's client
/// and TCP connections. Cheap to clone. See the [module docs](self) for how topic settings
/// apply in librdkafka and which combinations are refused.
///
/// ```no_run
/// use karafka_producer::{Message, Producer, VariantConfig};
///
/// let producer = Producer::builder().kafka("bootstrap.servers", "127.0.0.1:9092").build()?;
/// let fire_and_forget = producer.variant(VariantConfig::new().set("acks", "0"))?;
/// fire_and_forget.produce_async(Message::new("metrics", "cpu=0.5"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Variant {
    producer: Producer,
    topic_config: Arc<TopicConfig>,
    max_wait_timeout: Duration,
}

impl Variant {
    pub(crate) fn new(
        producer: Producer,
        topic_config: TopicConfig,
        max_wait_timeout: Duration,
    ) -> Self {
        Variant {
            producer,
            topic_config: Arc::new(topic_config),
            max_wait_timeout,
        }
    }

    fn dispatcher(&self) -> Dispatcher<'_> {
        Dispatcher {
            producer: &self.producer,
            topic_config: (!self.topic_config.is_empty()).then_some(&self.topic_config),
            max_wait_timeout: self.max_wait_timeout,
        }
    }

    /// The producer this variant belongs to.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// This variant's normalized topic settings.
    pub fn topic_config(&self) -> &TopicConfig {
        &self.topic_config
    }

    /// This variant's wait limit for synchronous dispatch.
    pub fn max_wait_timeout(&self) -> Duration {
        self.max_wait_timeout
    }

    /// [`Producer::produce_sync`] with this variant's settings.
    pub fn produce_sync(&self, message: Message) -> Result<DeliveryReport> {
        self.dispatcher().produce_sync(message)
    }

    /// [`Producer::produce_async`] with this variant's settings.
    pub fn produce_async(&self, message: Message) -> Result<DeliveryHandle> {
        self.dispatcher().produce_async(message)
    }

    /// [`Producer::produce_many_sync`] with this variant's settings.
    pub fn produce_many_sync(&self, messages: Vec<Message>) -> Result<Vec<DeliveryReport>> {
        self.dispatcher().produce_many_sync(messages)
    }

    /// [`Producer::produce_many_async`] with this variant's settings.
    pub fn produce_many_async(&self, messages: Vec<Message>) -> Result<BatchDelivery> {
        self.dispatcher().produce_many_async(messages)
    }
}

impl fmt::Debug for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Variant")
            .field("producer", &self.producer.id())
            .field("topic_config", &self.topic_config)
            .field("max_wait_timeout", &self.max_wait_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(60);

    #[test]
    fn normalizes_aliases_so_equal_settings_compare_equal() {
        let (a, _) = VariantConfig::new()
            .set("acks", "all")
            .set("compression.type", "lz4")
            .validate(false, WAIT)
            .unwrap();
        let (b, _) = VariantConfig::new()
            .set("request.required.acks", "-1")
            .set("compression.codec", "lz4")
            .validate(false, WAIT)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("request.required.acks"), Some("-1"));
    }

    #[test]
    fn rejects_disallowed_keys_bad_values_and_acks_on_idempotent() {
        let err = VariantConfig::new()
            .set("linger.ms", "5")
            .set("compression.codec", "brotli")
            .set("acks", "1")
            .validate(true, WAIT)
            .unwrap_err();
        let paths: Vec<_> = err.violations().iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "variant.topic_config.linger.ms",
                "variant.topic_config.compression.codec",
                "variant.topic_config.acks"
            ]
        );
        assert!(err.violations()[0].message.contains("allowed: acks"));
        assert!(err.violations()[2].message.contains("idempotent"));
    }

    #[test]
    fn own_wait_limit_or_the_producers() {
        let (_, wait) = VariantConfig::new().validate(false, WAIT).unwrap();
        assert_eq!(wait, WAIT);
        let (_, wait) = VariantConfig::new()
            .max_wait_timeout(Duration::from_secs(3))
            .validate(false, WAIT)
            .unwrap();
        assert_eq!(wait, Duration::from_secs(3));
    }
}
