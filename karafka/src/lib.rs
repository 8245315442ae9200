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
//! | tests: consumer harness (no broker), embedded cluster, fixtures | `karafka-testing`, `karafka-consumer` (`testing`) | `testing` (feature `testing`) |
//!
//! Features: `ssl-vendored` (default) — TLS and SASL (PLAIN, SCRAM, OAUTHBEARER) with OpenSSL
//! built from source; `ssl` — the same with the system's OpenSSL (use with
//! `default-features = false`); `zstd` (default) — zstd compression; `cli` (default) —
//! [`cli`]: `server`, `info`, `topics` inside your binary; `web` — `web`: `/healthz` and
//! Prometheus `/metrics`; `pro`; `testing` — `testing`: the consumer harness (test consumers
//! without a broker) and the broker fixtures. [`librdkafka`] says what the linked librdkafka
//! has; a setting that needs what it lacks is refused at `build()`, naming the feature.
//!
//! Connecting to a managed cluster (TLS with SASL SCRAM):
//!
//! ```no_run
//! # use karafka::{App, Consumer, ConsumeResult, Context};
//! # struct Orders;
//! # impl Consumer for Orders {
//! #     type Payload = karafka::payload::Raw;
//! #     async fn consume(&mut self, _: &Context<karafka::payload::Raw>) -> ConsumeResult { Ok(()) }
//! # }
//! let app = App::builder()
//!     .name("orders-service") // the consumer group
//!     .kafka("bootstrap.servers", "b-1.example.com:9096")
//!     .kafka("security.protocol", "SASL_SSL")
//!     .kafka("sasl.mechanisms", "SCRAM-SHA-512")
//!     .kafka("sasl.username", "orders")
//!     .kafka("sasl.password", std::env::var("KAFKA_PASSWORD")?) // printed as [REDACTED]
//!     .topic("orders", |t| t.consumer(|| Orders))
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The quick start, on an embedded cluster: `cargo run --example quickstart`.
//!
//! **Status:** the shared core, the producer, the consumer framework, running it (server,
//! signals, CLI, admin, health and metrics) and the test fixtures are ready; of the Pro
//! features (`pro`), all are ready: virtual partitions, multiplexing, long-running and
//! periodic jobs, the cleaner API and swarm mode (Linux).
//!
//! ```no_run
//! use karafka::{App, Consumer, ConsumeResult, Context};
//! use karafka::payload::Json;
//! use karafka::routing::DeadLetterQueue;
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! struct Orders;
//!
//! impl Consumer for Orders {
//!     type Payload = Json<Order>;
//!     async fn consume(&mut self, ctx: &Context<Json<Order>>) -> ConsumeResult {
//!         for message in ctx.messages() {
//!             println!("order {}", message.payload()?.id);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "127.0.0.1:9092")
//!     .topic("orders", |t| t.consumer(|| Orders).dead_letter_queue(DeadLetterQueue::new("orders-dlq")))
//!     .build()?;
//! let running = app.start()?;
//! running.stop_blocking()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use karafka_core::{
    ConfigError, Error, Header, Headers, KafkaError, KafkaSettings, Offset, Partition, Result,
    Timestamp, TimestampKind, TopicPartition, Violation, librdkafka_features, librdkafka_version,
};
pub use karafka_core::{contract, instrumentation, librdkafka, message, oauth, settings};

pub use karafka_consumer as consumer;
#[cfg(feature = "cli")]
pub use karafka_consumer::cli;
#[cfg(feature = "web")]
pub use karafka_consumer::web;
pub use karafka_consumer::{
    App, AppBuilder, BatchMetadata, ConsumeResult, Consumer, Context, DeserializationError,
    Message, Messages, Running, payload, routing,
};
pub use karafka_producer as producer;
pub use karafka_producer::{Producer, VariantConfig};

#[cfg(feature = "pro")]
pub use karafka_pro as pro;

/// Testing (feature `testing`): the consumer [`Harness`](testing::Harness) (no broker), and
/// `karafka-testing`'s fixtures (embedded cluster, external brokers, in-memory producer
/// client, helpers).
#[cfg(feature = "testing")]
pub mod testing {
    pub use karafka_consumer::harness::{
        BatchOutcome, Harness, HarnessError, PauseState, TestConsumer,
    };
    pub use karafka_testing::*;
}
