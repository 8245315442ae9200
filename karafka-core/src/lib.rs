//! # karafka-core
//!
//! The shared core of [karafka-rs](https://github.com/karafka-rs/karafka-rs), the Karafka
//! Kafka processing framework in Rust. Applications rarely depend on this crate directly:
//! `karafka` (the facade) and `karafka-producer` re-export what users need.
//!
//! ## A short tour
//!
//! - [`settings`]: [`KafkaSettings`], the librdkafka pass-through map every client takes.
//!   `Debug`/`Display` redact secrets; [`KafkaSettings::validate`] asks librdkafka itself
//!   which keys and values it rejects.
//! - [`contract`]: [`Violation`] (a path and a message) and [`ConfigError`], which lists
//!   **every** violation at once; [`Violations`] collects them while a `build()` checks.
//! - [`instrumentation`]: the [`Monitor`](instrumentation::Monitor), typed
//!   [`Event`](instrumentation::Event)s with stable dotted names, the
//!   [`Listener`](instrumentation::Listener) trait, timing helpers and a ready
//!   [`TracingListener`](instrumentation::TracingListener).
//! - [`librdkafka`]: the linked librdkafka's version and features (TLS, SASL, zstd) and the
//!   cargo features that bring them.
//! - [`oauth`]: [`OAuthTokenProvider`](oauth::OAuthTokenProvider), OAUTHBEARER tokens from
//!   your code.
//! - [`message`]: what producer and consumer share: [`Headers`] (several values per key),
//!   [`Timestamp`], [`Offset`], [`TopicPartition`].
//! - [`Error`] / [`Result`]: the shared error type; [`KafkaError`] carries librdkafka's
//!   errors in our own terms.
//!
//! ```
//! use karafka_core::{KafkaSettings, contract::Violations};
//!
//! let kafka = KafkaSettings::new()
//!     .with("bootstrap.servers", "127.0.0.1:9092")
//!     .with("sasl.password", "s3cr3t");
//! let mut violations = Violations::new();
//! violations.extend(kafka.validate("kafka"));
//! assert!(violations.is_empty());
//! assert!(!format!("{kafka:?}").contains("s3cr3t"));
//! ```

pub mod contract;
mod error;
pub mod instrumentation;
pub mod librdkafka;
pub mod message;
#[doc(hidden)]
pub mod native;
pub mod oauth;
pub mod settings;

pub use contract::{ConfigError, Violation, Violations};
pub use error::{Error, KafkaError, Result};
pub use message::{
    Header, Headers, Label, Offset, Partition, Timestamp, TimestampKind, TopicPartition,
};
pub use settings::KafkaSettings;

/// The librdkafka version linked into this build, e.g. `2.12.1`.
pub fn librdkafka_version() -> String {
    librdkafka::version()
}

/// The features of the linked librdkafka (`builtin.features`: `ssl`, `sasl_scram`, `zstd`,
/// ...): see [`librdkafka`] for which cargo feature brings which.
pub fn librdkafka_features() -> &'static [String] {
    librdkafka::features()
}
