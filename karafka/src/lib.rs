//! # karafka
//!
//! Karafka, the Kafka processing framework, in Rust. Declare routes (topic → consumer) and
//! the framework runs connections, batch polling, a worker pool, offsets that never commit
//! unprocessed work, retries with back-off, dead-letter queues, rebalances and graceful
//! shutdown, with instrumentation throughout; plus a WaterDrop-style producer.
//!
//! This is the crate applications depend on. It re-exports the workspace's crates:
//!
//! | need | crate | here as |
//! |---|---|---|
//! | settings, contracts, instrumentation, message types | `karafka-core` | the root, [`instrumentation`], [`contract`] |
//! | producing only | `karafka-producer` | [`producer`] |
//! | consuming (routes, workers, offsets) | `karafka-consumer` | [`consumer`] |
//! | Pro features | `karafka-pro` | `pro` (feature `pro`) |
//! | tests: embedded cluster, fixtures | `karafka-testing` | `testing` (feature `testing`) |
//!
//! **Status:** the shared core (settings, contracts, instrumentation, message types), the
//! producer and the test fixtures are ready; the consumer is under construction.
//!
//! ```
//! use karafka::KafkaSettings;
//! use karafka::instrumentation::{Monitor, TracingListener};
//!
//! let monitor = Monitor::new();
//! monitor.subscribe(TracingListener::new());
//! let kafka = KafkaSettings::new().with("bootstrap.servers", "127.0.0.1:9092");
//! assert!(kafka.validate("kafka").is_empty());
//! ```

pub use karafka_core::{
    ConfigError, Error, Header, Headers, KafkaError, KafkaSettings, Offset, Partition, Result,
    Timestamp, TimestampKind, TopicPartition, Violation, librdkafka_version,
};
pub use karafka_core::{contract, instrumentation, message, settings};

pub use karafka_consumer as consumer;
pub use karafka_producer as producer;

#[cfg(feature = "pro")]
pub use karafka_pro as pro;

#[cfg(feature = "testing")]
pub use karafka_testing as testing;
