//! The consumer framework's error type.

use std::time::Duration;

use karafka_core::{ConfigError, KafkaError};

/// Result with the consumer framework's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong running an app.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The app's configuration or routing broke its contract; every violation is listed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused something (creating a client, subscribing).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Stopping took longer than `shutdown_timeout`; the report names what was still running.
    #[error("shutdown did not finish within {timeout:?}:\n{report}")]
    ShutdownTimeout {
        /// The limit.
        timeout: Duration,
        /// What was still running (listeners, jobs and for how long).
        report: String,
    },
    /// The app was already started.
    #[error("the app is already running; stop it before starting it again")]
    AlreadyRunning,
    /// Anything else from the shared core (threads, runtimes).
    #[error(transparent)]
    Core(#[from] karafka_core::Error),
}
