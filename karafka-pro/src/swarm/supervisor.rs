//! The supervisor: one thread, no Kafka client; starts the nodes, reads their reports,
//! replaces the dead, the silent and the unhealthy, and stops them all on a signal.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use karafka_consumer::{App, Error, Result};
use karafka_core::instrumentation::{
    ErrorKind, ErrorOccurred, Event, Monitor, NodeState, NodeStatus, SwarmEvent,
};

use super::sys::{self, SignalFd};
use super::{EXIT_UNCLEAN, NODE_ENV, Swarm};

/// The longest the supervisor sleeps between two control passes.
const TICK: Duration = Duration::from_secs(1);
/// After `shutdown_timeout`, how much longer the supervisor's own stop waits for its nodes
/// before killing them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The supervisor's pid, for a node to tell when it is orphaned.
pub(crate) const SUPERVISOR_ENV: &str = "KARAFKA_SWARM_SUPERVISOR";
/// Where the node finds its report pipe.
pub(crate) const REPORT_FD_ENV: &str = "KARAFKA_SWARM_REPORT_FD";

pub(crate) fn io_error(operation: &str, source: std::io::Error) -> Error {
    Error::Core(karafka_core::Error::Io {
        operation: operation.to_owned().into(),
        source,
    })
}

/// A running node process.
struct Process {
    child: Child,
    pid: u32,
    /// The read end of its report pipe (`None` once it reached its end).
    reports: Option<File>,
    /// Readable once it ends (`None` on kernels without pidfd).
    pidfd: Option<OwnedFd>,
    last_report: Instant,
    terminated_at: Option<Instant>,
    killed: bool,
}

/// One node id and what runs for it.
struct Slot {
    id: usize,
    process: Option<Process>,
    dead_since: Option<Instant>,
    starts: u64,
    status: NodeStatus,
    /// Whether its last process exited with code 0.
    clean: bool,
}

struct Supervisor {
    monitor: Monitor,
    report_timeout: Duration,
    restart_timeout: Duration,
    shutdown_timeout: Duration,
    program: PathBuf,
    args: Vec<OsString>,
    slots: Vec<Slot>,
}

/// What one wait woke up for.
enum Woken {
    Stop,
    Quiet,
    Nothing,
}

pub(crate) fn run(swarm: &Swarm, app: &App) -> Result<u8> {
    let monitor = app.monitor().clone();
    if let Some(threads) = sys::threads().filter(|t| *t > 1) {
        monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
            ErrorKind::SwarmSupervisor,
            std::io::Error::other(format!(
                "the swarm supervisor has {threads} threads before it starts (it should have \
                 one): a signal may reach another thread and end the process without stopping \
                 the nodes; start nothing that spawns threads before `cli::run`"
            )),
        )));
    }
    let signals = SignalFd::new(&[
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTSTP,
        libc::SIGCHLD,
    ])
    .map_err(|e| io_error("block the supervisor's signals", e))?;
    // This very binary, even if its file was replaced or deleted since (a deployment):
    // every node runs the supervisor's code.
    let program = PathBuf::from("/proc/self/exe");
    let mut supervisor = Supervisor {
        monitor: monitor.clone(),
        report_timeout: swarm.node_report_timeout,
        restart_timeout: swarm.node_restart_timeout,
        shutdown_timeout: swarm.shutdown_timeout_for(app),
        program,
        args: std::env::args_os().skip(1).collect(),
        slots: (0..swarm.nodes)
            .map(|id| Slot {
                id,
                process: None,
                dead_since: None,
                starts: 0,
                status: NodeStatus::Unresponsive,
                clean: true,
            })
            .collect(),
    };
    monitor.emit(Event::Swarm(SwarmEvent::BeforeWarmup {
        nodes: swarm.nodes,
    }));
    for i in 0..supervisor.slots.len() {
        supervisor.start(i);
    }
    let mut quiet = false;
    let mut last_control: Option<Instant> = None;
    loop {
        match supervisor.wait(&signals, quiet)? {
            Woken::Stop => return Ok(supervisor.stop(&signals)),
            Woken::Quiet => {
                quiet = true;
                supervisor.signal_all(libc::SIGTSTP);
            }
            Woken::Nothing => {}
        }
        supervisor.reap();
        supervisor.control(Instant::now(), quiet);
        if last_control.is_none_or(|t| t.elapsed() >= TICK) {
            last_control = Some(Instant::now());
            supervisor.emit_control();
        }
    }
}

impl Supervisor {
    fn error(&self, error: std::io::Error) {
        self.monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
            ErrorKind::SwarmSupervisor,
            error,
        )));
    }

    fn swarm(&self, event: SwarmEvent) {
        self.monitor.emit(Event::Swarm(event));
    }

    /// Starts node `i`; a node that cannot be started counts as dead now (retried after
    /// `node_restart_timeout`).
    fn start(&mut self, i: usize) {
        let id = self.slots[i].id;
        self.swarm(SwarmEvent::BeforeFork { node: id });
        self.slots[i].starts += 1;
        self.slots[i].status = NodeStatus::Unresponsive;
        match self.spawn(id) {
            Ok(process) => {
                let pid = process.pid;
                let slot = &mut self.slots[i];
                slot.process = Some(process);
                slot.dead_since = None;
                self.swarm(SwarmEvent::AfterFork { node: id, pid });
            }
            Err(e) => {
                self.slots[i].dead_since = Some(Instant::now());
                self.error(std::io::Error::other(format!(
                    "could not start swarm node {id} ({}): {e}; trying again in {:?}",
                    self.program.display(),
                    self.restart_timeout
                )));
            }
        }
    }

    fn spawn(&self, id: usize) -> std::io::Result<Process> {
        // Close-on-exec: only this node gets the write end, at REPORT_FD.
        let (reader, writer) = sys::pipe()?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env(NODE_ENV, id.to_string())
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .env(REPORT_FD_ENV, sys::REPORT_FD.to_string());
        // Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
        // stops the nodes.
        command.process_group(0);
        sys::prepare_node(&mut command, writer.as_raw_fd());
        let child = command.spawn()?;
        // The node has its copy; the supervisor's would keep the pipe open after the node ends.
        drop(writer);
        let pid = child.id();
        Ok(Process {
            child,
            pid,
            reports: Some(reader),
            pidfd: sys::pidfd_open(pid).ok(),
            last_report: Instant::now(),
            terminated_at: None,
            killed: false,
        })
    }

    /// Waits for a signal, a report, a node's end, or the next deadline (at most [`TICK`]);
    /// reads what came.
    fn wait(&mut self, signals: &SignalFd, quiet: bool) -> Result<Woken> {
        let now = Instant::now();
        let timeout = self
            .next_deadline(now, quiet)
            .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
        let mut fds = vec![sys::readable(signals.raw())];
        // (index into fds, slot) for each report pipe.
        let mut pipes: Vec<(usize, usize)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(process) = &slot.process {
                if let Some(reports) = &process.reports {
                    pipes.push((fds.len(), i));
                    fds.push(sys::readable(reports.as_raw_fd()));
                }
                if let Some(pidfd) = &process.pidfd {
                    fds.push(sys::readable(pidfd.as_raw_fd()));
                }
            }
        }
        sys::poll(&mut fds, timeout).map_err(|e| io_error("wait for the swarm's nodes", e))?;
        let mut woken = Woken::Nothing;
        if fds[0].revents != 0 {
            for signal in signals.read() {
                match signal {
                    libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => woken = Woken::Stop,
                    libc::SIGTSTP if !matches!(woken, Woken::Stop) => woken = Woken::Quiet,
                    _ => {} // SIGCHLD: reaped below
                }
            }
        }
        for (fd, i) in pipes {
            if fds[fd].revents != 0 {
                self.read_reports(i);
            }
        }
        Ok(woken)
    }

    /// The soonest moment something is due: a silent node's timeout, a SIGKILL, a restart
    /// (while quiet, only SIGKILLs).
    fn next_deadline(&self, now: Instant, quiet: bool) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| match &slot.process {
                Some(p) if p.killed => None,
                Some(p) => match p.terminated_at {
                    Some(t) => Some(t + self.shutdown_timeout),
                    None if quiet => None,
                    None => Some(p.last_report + self.report_timeout),
                },
                None if quiet => None,
                None => slot.dead_since.map(|d| d + self.restart_timeout),
            })
            .min()
            .map(|d| d.max(now))
    }

    /// Reads node `i`'s reports: the worst status among them counts (Karafka's rule).
    fn read_reports(&mut self, i: usize) {
        let id = self.slots[i].id;
        let Some(process) = self.slots[i].process.as_mut() else {
            return;
        };
        let Some(reports) = process.reports.as_mut() else {
            return;
        };
        let mut buf = [0u8; 1024];
        let worst = match reports.read(&mut buf) {
            Ok(0) | Err(_) => {
                // The node closed its end (it is ending): no more reports.
                process.reports = None;
                return;
            }
            Ok(n) => String::from_utf8_lossy(&buf[..n])
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .max(),
        };
        let Some(code) = worst else {
            return;
        };
        match NodeStatus::from_code(code) {
            Some(NodeStatus::Healthy) => {
                process.last_report = Instant::now();
                self.slots[i].status = NodeStatus::Healthy;
            }
            Some(status) if code > 0 => {
                process.last_report = Instant::now();
                let stopping = process.terminated_at.is_some();
                self.slots[i].status = status;
                if !stopping {
                    self.terminate(i, status);
                }
            }
            _ => self.error(std::io::Error::other(format!(
                "swarm node {id} reported an unknown status {code}"
            ))),
        }
    }

    /// SIGTERM to node `i`, for `status`.
    fn terminate(&mut self, i: usize, status: NodeStatus) {
        let id = self.slots[i].id;
        let Some(process) = self.slots[i].process.as_mut() else {
            return;
        };
        process.terminated_at = Some(Instant::now());
        let pid = process.pid;
        let sent = sys::kill(pid, libc::SIGTERM);
        self.swarm(SwarmEvent::Stopping {
            node: id,
            pid,
            status,
        });
        if let Err(e) = sent {
            self.error(std::io::Error::other(format!(
                "could not send SIGTERM to swarm node {id} (pid {pid}): {e}"
            )));
        }
    }

    /// SIGKILL to node `i`.
    fn kill(&mut self, i: usize) {
        let id = self.slots[i].id;
        let Some(process) = self.slots[i].process.as_mut() else {
            return;
        };
        if process.killed {
            return;
        }
        process.killed = true;
        let pid = process.pid;
        let sent = process.child.kill();
        self.swarm(SwarmEvent::Terminating { node: id, pid });
        if let Err(e) = sent {
            self.error(std::io::Error::other(format!(
                "could not send SIGKILL to swarm node {id} (pid {pid}): {e}"
            )));
        }
    }

    fn signal_all(&self, signal: i32) {
        for slot in &self.slots {
            if let Some(process) = &slot.process {
                if let Err(e) = sys::kill(process.pid, signal) {
                    self.error(std::io::Error::other(format!(
                        "could not send signal {signal} to swarm node {} (pid {}): {e}",
                        slot.id, process.pid
                    )));
                }
            }
        }
    }

    /// Reaps every node that ended (no zombie stays), closing its pipe and pidfd.
    fn reap(&mut self) {
        for i in 0..self.slots.len() {
            let Some(process) = self.slots[i].process.as_mut() else {
                continue;
            };
            match process.child.try_wait() {
                Ok(Some(status)) => {
                    let pid = process.pid;
                    let slot = &mut self.slots[i];
                    slot.process = None;
                    slot.dead_since = Some(Instant::now());
                    slot.clean = status.code() == Some(0);
                    slot.status = NodeStatus::Unresponsive;
                    let id = slot.id;
                    self.swarm(SwarmEvent::Exited {
                        node: id,
                        pid,
                        code: status.code(),
                        signal: status.signal(),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    // Not a child any more (ECHILD): nothing to wait for or signal.
                    let pid = process.pid;
                    let slot = &mut self.slots[i];
                    slot.process = None;
                    slot.dead_since = Some(Instant::now());
                    slot.clean = false;
                    slot.status = NodeStatus::Unresponsive;
                    let id = slot.id;
                    self.error(std::io::Error::other(format!(
                        "could not reap swarm node {id} (pid {pid}): {e}; it counts as dead"
                    )))
                }
            }
        }
    }

    /// The supervision decisions due at `now`. While quiet, only a node that was sent
    /// SIGTERM is still killed past its deadline: no report timeout, no restart.
    fn control(&mut self, now: Instant, quiet: bool) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            match &slot.process {
                Some(p) if p.killed => {}
                Some(p) => match p.terminated_at {
                    Some(t) => {
                        if now.saturating_duration_since(t) >= self.shutdown_timeout {
                            self.kill(i);
                        }
                    }
                    None => {
                        if !quiet
                            && now.saturating_duration_since(p.last_report) >= self.report_timeout
                        {
                            self.slots[i].status = NodeStatus::Unresponsive;
                            self.terminate(i, NodeStatus::Unresponsive);
                        }
                    }
                },
                None => {
                    if !quiet
                        && slot.dead_since.is_some_and(|d| {
                            now.saturating_duration_since(d) >= self.restart_timeout
                        })
                    {
                        self.start(i);
                    }
                }
            }
        }
    }

    fn emit_control(&self) {
        let now = Instant::now();
        let nodes: Arc<[NodeState]> = self
            .slots
            .iter()
            .map(|slot| {
                NodeState::new(
                    slot.id,
                    slot.process.as_ref().map(|p| p.pid),
                    slot.status,
                    slot.process.as_ref().map_or(Duration::ZERO, |p| {
                        now.saturating_duration_since(p.last_report)
                    }),
                    slot.starts,
                )
            })
            .collect();
        self.swarm(SwarmEvent::Control { nodes });
    }

    fn running(&self) -> bool {
        self.slots.iter().any(|s| s.process.is_some())
    }

    /// Stops every node: SIGTERM, then up to `shutdown_timeout` + [`STOP_GRACE`] (a second
    /// stop signal cuts it short), then SIGKILL. The exit code: 0 if every node stopped
    /// cleanly, 2 otherwise.
    fn stop(&mut self, signals: &SignalFd) -> u8 {
        // Only how the nodes end now counts (one that died earlier was handled then).
        self.reap();
        for slot in &mut self.slots {
            slot.clean = true;
        }
        for i in 0..self.slots.len() {
            let due = self.slots[i]
                .process
                .as_ref()
                .is_some_and(|p| p.terminated_at.is_none() && !p.killed);
            if due {
                let id = self.slots[i].id;
                if let Some(p) = self.slots[i].process.as_mut() {
                    p.terminated_at = Some(Instant::now());
                    if let Err(e) = sys::kill(p.pid, libc::SIGTERM) {
                        let pid = p.pid;
                        self.error(std::io::Error::other(format!(
                            "could not send SIGTERM to swarm node {id} (pid {pid}): {e}"
                        )));
                    }
                }
            }
        }
        let deadline = Instant::now() + self.shutdown_timeout + STOP_GRACE;
        let mut forced = false;
        loop {
            self.reap();
            if !self.running() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                forced = true;
                break;
            }
            let mut fds = vec![sys::readable(signals.raw())];
            for slot in &self.slots {
                if let Some(pidfd) = slot.process.as_ref().and_then(|p| p.pidfd.as_ref()) {
                    fds.push(sys::readable(pidfd.as_raw_fd()));
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            if let Err(e) = sys::poll(&mut fds, wait) {
                self.error(e);
            }
            if fds[0].revents != 0
                && signals
                    .read()
                    .iter()
                    .any(|s| matches!(*s, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT))
            {
                forced = true; // a second stop signal
                break;
            }
            // Report pipes are not read any more: drain them so no node blocks (they write
            // non-blocking anyway).
            self.drain_reports();
        }
        if forced {
            for i in 0..self.slots.len() {
                self.kill(i);
            }
            for i in 0..self.slots.len() {
                if let Some(mut process) = self.slots[i].process.take() {
                    let status = process.child.wait();
                    self.slots[i].clean = false;
                    let id = self.slots[i].id;
                    match status {
                        Ok(status) => self.swarm(SwarmEvent::Exited {
                            node: id,
                            pid: process.pid,
                            code: status.code(),
                            signal: status.signal(),
                        }),
                        Err(e) => self.error(e),
                    }
                }
            }
        }
        if forced || self.slots.iter().any(|s| !s.clean) {
            EXIT_UNCLEAN
        } else {
            0
        }
    }

    fn drain_reports(&mut self) {
        for slot in &mut self.slots {
            if let Some(reports) = slot.process.as_mut().and_then(|p| p.reports.as_mut()) {
                let mut fds = [sys::readable(reports.as_raw_fd())];
                if sys::poll(&mut fds, Duration::ZERO).unwrap_or(0) > 0 {
                    let mut buf = [0u8; 1024];
                    if matches!(reports.read(&mut buf), Ok(0) | Err(_)) {
                        if let Some(p) = slot.process.as_mut() {
                            p.reports = None;
                        }
                    }
                }
            }
        }
    }
}
