//! # karafka-testing
//!
//! Test support for [karafka-rs](https://github.com/karafka-rs/karafka-rs) applications and
//! for karafka-rs itself.
//!
//! ## Brokers for tests
//!
//! - [`EmbeddedCluster`]: librdkafka's mock cluster inside the test process. No install,
//!   starts in milliseconds, supports consumer groups (eager, cooperative-sticky, KIP-848),
//!   idempotent and transactional producers, and fault injection (brokers down and up,
//!   request errors, latency). Its limits are listed on the type.
//! - [`TestBroker`]: what a test runs against. [`TestBroker::from_env`] reads:
//!   - `KARAFKA_TEST_BROKERS=host:port`: use that broker; otherwise start an embedded cluster;
//!   - `KARAFKA_TEST_BROKER_KIND=mock|tansu|kafka` (default `kafka` when an address is
//!     given): which [`Capability`]s the broker has;
//!   - `KARAFKA_TEST_REPORT=path`: append a line per broker test saying whether it ran;
//!   - `KARAFKA_TEST_BROKER_PID`: the external broker's process id, for tests that stop and
//!     resume it ([`Capability::BrokerProcess`]);
//!   - `KARAFKA_TEST_TLS_BROKERS`, `KARAFKA_TEST_SASL_SSL_BROKERS`, `KARAFKA_TEST_TLS_CA`,
//!     `KARAFKA_TEST_TLS_OTHER_CA`, `KARAFKA_TEST_SASL_USER`, `KARAFKA_TEST_SASL_PASSWORD`,
//!     `KARAFKA_TEST_OAUTH_TOKEN`:
//!     listeners that require TLS
//!     and SASL over TLS ([`SecureListeners`], capability
//!     [`Capability::SecureListeners`]).
//!
//!   A test declares what it needs with [`TestBroker::require`]; on a broker without it,
//!   the test prints one line saying why it did not run. A broker that is configured but
//!   does not answer fails the test: a test never passes because its broker was missing.
//!
//! The repository's `scripts/broker start` installs and starts Tansu (a real
//! Kafka-compatible broker) on `127.0.0.1:19092`; `eval "$(scripts/broker env)"` points the
//! tests at it.
//!
//! Measured facts the fixtures respect: test consumers use `session.timeout.ms=6000` on
//! every broker (Tansu holds a new group's first join for half the session timeout); a new
//! group's first join waits the initial rebalance delay (3 s on Kafka and by default on the
//! mock; [`TestBroker::embedded`] lowers it to 500 ms).
//!
//! ## Producing without a broker
//!
//! [`BufferedClient`]: an in-memory client for `karafka-producer` that records messages per
//! topic, honours transactions (commit keeps, abort drops) and injects faults.
//!
//! ## Helpers
//!
//! [`unique_topic`] / [`unique_group`] (no two tests share names), [`wait_until`] /
//! [`wait_for`] / [`wait_until_async`] (conditions with deadlines instead of sleeps),
//! [`TestBroker::create_topic`] (on either broker), [`LogCapture`] (what was logged through
//! `tracing`, librdkafka's own lines included).
//!
//! ## Counting under faults
//!
//! [`chaos`]: the ledger of what member processes recorded as processed, checked against
//! what was produced and what the group committed, and the table of a fault scenario's
//! figures (lost, duplicates, commits ahead of processing, longest stall, drain).
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_testing::{TestBroker, unique_topic, wait_until};
//!
//! let Some(broker) = TestBroker::require(&[]) else { return };
//! let topic = unique_topic("orders");
//! broker.create_topic(&topic, 4).unwrap();
//! // ... produce and consume against broker.bootstrap_servers() ...
//! wait_until(Duration::from_secs(10), || true).unwrap();
//! ```

mod broker;
mod buffered;
pub mod chaos;
mod embedded;
mod logs;
mod names;
mod process;
mod wait;

pub use broker::{
    BROKERS_ENV, BrokerKind, Capability, CommittedOffsets, KIND_ENV, OAUTH_TOKEN_ENV, PROCESS_ENV,
    REPORT_ENV, SASL_PASSWORD_ENV, SASL_SSL_BROKERS_ENV, SASL_USER_ENV, SecureListeners,
    TEST_INITIAL_REBALANCE_DELAY, TEST_SESSION_TIMEOUT_MS, TLS_BROKERS_ENV, TLS_CA_ENV,
    TLS_OTHER_CA_ENV, TestBroker, client_config,
};
pub use buffered::{BufferedClient, Fault, Produced};
pub use embedded::{
    ApiKey, DEFAULT_INITIAL_REBALANCE_DELAY, EmbeddedCluster, EmbeddedClusterBuilder, ErrorCode,
};
pub use logs::{CapturedEvent, LogCapture};
pub use names::{unique_group, unique_name, unique_topic};
pub use process::{Xorshift, example_binary, kill_at_random_moments};
pub use wait::{WaitTimeout, wait_for, wait_until, wait_until_async};

/// A test fixture could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// The test environment variables are invalid.
    #[error("invalid test environment: {0}")]
    Env(String),
    /// The configured external broker does not answer.
    #[error("{0}")]
    Unreachable(String),
    /// The embedded cluster refused an operation.
    #[error("embedded cluster: {0}")]
    Embedded(String),
    /// Topic administration failed.
    #[error("topic administration: {0}")]
    Admin(String),
}
