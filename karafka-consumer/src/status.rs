//! The lifecycle state of a running app that every layer reads: the stop and quiet flags,
//! the app's status, the jobs in flight (for the shutdown report and health), and the
//! [`Health`] it reports. It depends on nothing else in the crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use karafka_core::instrumentation::{AppStatus, Event, Monitor};

/// A job in flight (formatted only when a report needs it).
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) listener: Arc<str>,
    pub(crate) job: karafka_core::instrumentation::JobKind,
    pub(crate) tp: karafka_core::TopicPartition,
    pub(crate) offsets: (i64, i64),
    pub(crate) started: Instant,
    /// A job of a long-running topic (health does not hold it to `job_timeout`).
    pub(crate) long_running: bool,
}

/// Flags every listener of a running app watches.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) stop: AtomicBool,
    /// No new batches; assignments kept.
    pub(crate) quiet: AtomicBool,
    /// Listeners that went quiet (paused everything, no job in flight).
    pub(crate) quiet_listeners: std::sync::atomic::AtomicUsize,
    pub(crate) listeners: std::sync::atomic::AtomicUsize,
    pub(crate) status: Mutex<AppStatus>,
    pub(crate) app: Arc<str>,
    pub(crate) monitor: Monitor,
    /// When the app started, for listener heartbeats (ms since then).
    pub(crate) epoch: Instant,
    /// Jobs in flight, for the shutdown report.
    pub(crate) in_flight: Mutex<Vec<InFlight>>,
}

impl Control {
    pub(crate) fn new(app: Arc<str>, monitor: Monitor) -> Self {
        Control {
            stop: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            quiet_listeners: Default::default(),
            listeners: Default::default(),
            status: Mutex::new(AppStatus::Initializing),
            app,
            monitor,
            epoch: Instant::now(),
            in_flight: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn quieting(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// Milliseconds since the app started (listener heartbeats).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Moves to `status` (once per status) and emits it.
    pub(crate) fn set_status(&self, status: AppStatus) {
        {
            let mut current = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if *current == status {
                return;
            }
            *current = status;
        }
        self.monitor.emit_with(|| Event::AppStatus {
            app: self.app.clone(),
            status,
        });
    }

    pub(crate) fn status(&self) -> AppStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listener finished going quiet; the last one makes the app quiet.
    pub(crate) fn listener_quiet(&self) {
        let quiet = self.quiet_listeners.fetch_add(1, Ordering::AcqRel) + 1;
        if quiet >= self.listeners.load(Ordering::Acquire) && !self.stopping() {
            self.set_status(AppStatus::Quiet);
        }
    }
}

/// The health of a running app (see [`Running::health`](crate::Running::health)).
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether nothing is wrong.
    pub healthy: bool,
    /// The app's status.
    pub status: AppStatus,
    /// What is wrong, one line each.
    pub reasons: Vec<String>,
}

/// Whether a running app's listeners loop and how long its jobs run, read without judging
/// (see [`Running::liveness`](crate::Running::liveness)): what a supervisor (karafka-pro's
/// swarm mode) or a probe of your own decides on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Liveness {
    /// The app's status.
    pub status: AppStatus,
    /// Every connection's listener.
    pub listeners: Vec<ListenerLiveness>,
    /// Every job in flight.
    pub jobs: Vec<JobLiveness>,
}

/// One listener in a [`Liveness`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerLiveness {
    /// `<consumer group>.<subscription group>` (`#<i>` appended for connection `i` of a
    /// multiplexed one): the name jobs carry.
    pub name: Arc<str>,
    /// Since its loop last went round (it polls each time; a new connection counts as just
    /// polled).
    pub since_poll: std::time::Duration,
    /// Jobs of this listener in flight.
    pub jobs: usize,
    /// Whether it is running jobs: some in flight, or (poll scheduling) handing out a
    /// poll's jobs, when it runs the last one itself and waits for worker permits, and does
    /// not loop meanwhile.
    pub busy: bool,
}

/// One job in flight in a [`Liveness`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobLiveness {
    /// The listener that made it.
    pub listener: Arc<str>,
    /// What it runs.
    pub kind: karafka_core::instrumentation::JobKind,
    /// Its partition.
    pub topic_partition: karafka_core::TopicPartition,
    /// How long it has run.
    pub running_for: std::time::Duration,
    /// A job of a long-running topic.
    pub long_running: bool,
}
