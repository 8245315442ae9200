//! Processing settings shared by every listener of an app.

use std::time::Duration;

/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 5;
/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `pause_timeout` (first retry back-off).
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `pause_max_timeout` (back-off cap).
pub const DEFAULT_PAUSE_MAX_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct ProcessingSettings {
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) pause_timeout: Duration,
    pub(crate) pause_max_timeout: Duration,
    pub(crate) pause_exponential: bool,
}
