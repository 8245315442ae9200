//! A node: runs the app for its node id, reporting its liveness to the supervisor through
//! its pipe from a reporter thread.

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use karafka_consumer::{App, AppStatus, Error, Liveness, LivenessProbe, Result, RunOptions};
use karafka_core::instrumentation::{
    ErrorKind, ErrorOccurred, Event, Monitor, NodeStatus, SwarmEvent,
};

use super::supervisor::{REPORT_FD_ENV, SUPERVISOR_ENV, io_error};
use super::{EXIT_ORPHANED, Swarm, sys};

/// The most the reporter sleeps: how soon it sees its supervisor gone.
pub(crate) const WAKE: Duration = Duration::from_secs(1);
/// How long an orphaned node waits for the kernel's SIGTERM before sending it itself.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn setup_error(message: String) -> Error {
    io_error(
        "start a swarm node",
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    )
}

fn env(key: &str) -> Result<String> {
    std::env::var(key).map_err(|_| {
        setup_error(format!(
            "{key} is not set: a swarm node is started by its supervisor (`my-app swarm`), \
             not by hand"
        ))
    })
}

pub(crate) fn run(swarm: &Swarm, app: &App, node: usize) -> Result<u8> {
    let supervisor: u32 = env(SUPERVISOR_ENV)?
        .parse()
        .map_err(|_| setup_error(format!("{SUPERVISOR_ENV} is not a pid")))?;
    if std::os::unix::process::parent_id() != supervisor {
        // The supervisor died before this node set itself up: nothing was processed.
        return Ok(EXIT_ORPHANED);
    }
    let fd: RawFd = env(REPORT_FD_ENV)?
        .parse()
        .map_err(|_| setup_error(format!("{REPORT_FD_ENV} is not a descriptor")))?;
    if fd != sys::REPORT_FD {
        return Err(setup_error(format!(
            "{REPORT_FD_ENV} is {fd}; this build's supervisor puts the pipe at {}: the node and \
             its supervisor are different builds",
            sys::REPORT_FD
        )));
    }
    let pipe = sys::report_pipe().map_err(|e| io_error("open the swarm report pipe", e))?;
    let monitor = app.monitor().clone();
    let reporter = Arc::new(Reporter {
        node,
        supervisor,
        pipe: Mutex::new(pipe),
        monitor: monitor.clone(),
        interval: swarm.report_interval,
        memory_limit: swarm.memory_limit,
        polling_ttl: swarm.polling_ttl,
        consuming_ttl: swarm.consuming_ttl,
        probe: OnceLock::new(),
        last_sent: Mutex::new(Instant::now()),
        orphaned: AtomicBool::new(false),
        done: (Mutex::new(false), Condvar::new()),
    });
    // The first report, before anything can take long.
    reporter.send(NodeStatus::Healthy);
    monitor.emit(Event::Swarm(SwarmEvent::NodeStarted { node }));
    let app = app.for_node(node)?;
    let thread = {
        let reporter = reporter.clone();
        std::thread::Builder::new()
            .name(format!("karafka.swarm.reporter#{node}"))
            .spawn(move || reporter.run())
            .map_err(|e| io_error("start the swarm reporter thread", e))?
    };
    // A second SIGTERM (the supervisor's and a service manager's, say) does not force: the
    // supervisor's SIGKILL is this node's deadline.
    let options = RunOptions::default().second_signal_forces(false);
    let outcome = app.run_with(options, |running| {
        let _ = reporter.probe.set(running.probe());
    });
    reporter.finish();
    let _ = thread.join();
    let orphaned = reporter.orphaned.load(Ordering::Acquire)
        || std::os::unix::process::parent_id() != supervisor;
    match outcome {
        Ok(_) if orphaned => Ok(EXIT_ORPHANED),
        Ok(_) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Judges the node's liveness and writes its status to the pipe.
struct Reporter {
    node: usize,
    supervisor: u32,
    pipe: Mutex<File>,
    monitor: Monitor,
    interval: Duration,
    memory_limit: Option<u64>,
    polling_ttl: Duration,
    consuming_ttl: Option<Duration>,
    /// Set once the app started.
    probe: OnceLock<LivenessProbe>,
    last_sent: Mutex<Instant>,
    orphaned: AtomicBool,
    done: (Mutex<bool>, Condvar),
}

impl Reporter {
    fn run(&self) {
        let wake = self.interval.min(WAKE);
        let mut orphaned_at: Option<Instant> = None;
        let mut raised = false;
        loop {
            {
                let (lock, cvar) = &self.done;
                let done = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (done, _) = cvar
                    .wait_timeout_while(done, wake, |d| !*d)
                    .unwrap_or_else(|p| p.into_inner());
                if *done {
                    return;
                }
            }
            if std::os::unix::process::parent_id() != self.supervisor {
                self.orphaned.store(true, Ordering::Release);
                let since = *orphaned_at.get_or_insert_with(Instant::now);
                // The kernel sends SIGTERM when the supervisor dies (PR_SET_PDEATHSIG); if
                // the app is not stopping soon after, send it here.
                let stopping = self.probe.get().is_some_and(|p| {
                    matches!(
                        p.liveness().status,
                        AppStatus::Stopping | AppStatus::Stopped
                    )
                });
                if !stopping && !raised && since.elapsed() >= ORPHAN_GRACE {
                    raised = true;
                    let _ = sys::kill(std::process::id(), libc::SIGTERM);
                }
                continue;
            }
            let since = self
                .last_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if since < self.interval {
                continue;
            }
            if let Some(status) = self.judge(since) {
                self.send(status);
            }
        }
    }

    /// The status to report, or `None` to hold the report back: a listener with no job in
    /// flight did not go round its loop since the last report.
    fn judge(&self, since_last: Duration) -> Option<NodeStatus> {
        let Some(probe) = self.probe.get() else {
            return Some(NodeStatus::Healthy); // starting
        };
        let liveness: Liveness = probe.liveness();
        if matches!(liveness.status, AppStatus::Stopping | AppStatus::Stopped) {
            // Stopping is bounded by the app's own shutdown_timeout (and the supervisor's).
            return Some(NodeStatus::Healthy);
        }
        if let Some(limit) = self.memory_limit {
            if sys::resident_bytes().is_some_and(|rss| rss > limit) {
                return Some(NodeStatus::OverMemory);
            }
        }
        if let Some(ttl) = self.consuming_ttl {
            if liveness.jobs.iter().any(|j| j.running_for > ttl) {
                return Some(NodeStatus::ConsumingStuck);
            }
        }
        // A listener running jobs itself (poll scheduling) does not loop: it is judged by
        // polling_ttl only (librdkafka expels it past max.poll.interval.ms anyway). One with
        // nothing to run that has not looped since the last report holds the report back.
        if liveness
            .listeners
            .iter()
            .any(|l| l.since_poll > self.polling_ttl)
        {
            return Some(NodeStatus::PollingStuck);
        }
        if liveness
            .listeners
            .iter()
            .any(|l| !l.busy && l.since_poll >= since_last)
        {
            return None;
        }
        Some(NodeStatus::Healthy)
    }

    fn send(&self, status: NodeStatus) {
        let line = format!("{}\n", status.code());
        let written = self
            .pipe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(line.as_bytes());
        *self.last_sent.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        match written {
            Ok(()) => self.monitor.emit(Event::Swarm(SwarmEvent::NodeReported {
                node: self.node,
                status,
            })),
            // The supervisor is gone (the orphan check acts on it) or not reading.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => self.monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
                ErrorKind::SwarmNode,
                std::io::Error::other(format!(
                    "swarm node {} could not report to its supervisor: {e}",
                    self.node
                )),
            ))),
        }
    }

    fn finish(&self) {
        let (lock, cvar) = &self.done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
    }
}
