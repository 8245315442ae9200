//! The error type shared by every karafka-rs crate.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::contract::ConfigError;

/// Result with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in karafka-rs' shared machinery.
///
/// Crates with errors callers must match on (the producer's, which return the message)
/// wrap this one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration broke its contract; every violation is listed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka reported an error.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// An operation did not finish in time.
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// What was being waited for.
        operation: Cow<'static, str>,
        /// How long it was waited for.
        timeout: Duration,
    },
    /// The component was closed before or during the call.
    #[error("{what} is closed")]
    Closed {
        /// What is closed (`producer`, `consumer`, ...).
        what: Cow<'static, str>,
    },
    /// An operating-system level failure (threads, files, sockets).
    #[error("{operation} failed: {source}")]
    Io {
        /// What was being done.
        operation: Cow<'static, str>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// An error reported by librdkafka, in karafka-rs' own terms.
///
/// Carries what the framework was doing, librdkafka's error code (name and number) and its
/// description, and the retriable / fatal / abort-transaction flags librdkafka gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    /// What karafka-rs was doing (`create producer`, `commit offsets`, ...).
    pub operation: Cow<'static, str>,
    /// librdkafka's error code name (`QueueFull`, `MessageSizeTooLarge`, ...), if any.
    pub code: Option<String>,
    /// librdkafka's numeric error code, if any.
    pub code_number: Option<i32>,
    /// librdkafka's description.
    pub message: String,
    /// librdkafka says retrying the same operation may succeed.
    pub retriable: bool,
    /// librdkafka says the client is unusable and must be recreated.
    pub fatal: bool,
    /// librdkafka says the current transaction must be aborted.
    pub txn_requires_abort: bool,
}

impl KafkaError {
    /// An error without a librdkafka code (for example a failed precondition detected by
    /// karafka-rs around a librdkafka call).
    pub fn other(operation: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            code: None,
            code_number: None,
            message: message.into(),
            retriable: false,
            fatal: false,
            txn_requires_abort: false,
        }
    }

    /// Whether the code name is `code` (for example `"QueueFull"`).
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.message)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        if self.fatal {
            f.write_str(" [fatal]")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaError {}
