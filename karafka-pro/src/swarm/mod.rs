//! Swarm mode: `my-app swarm` runs a supervisor process and `nodes` node processes, each
//! running the app, and replaces a node that dies, hangs or grows past its memory limit
//! while the others keep consuming.
//!
//! One Rust process already uses every core, so swarm mode is about **isolation and
//! recovery**: a native library's segfault, an abort, an out-of-memory kill, a deadlock or a
//! leak takes down one node, which is replaced, not the app.
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::{Swarm, SwarmApp, SwarmTopic};
//!
//! #[derive(Default)]
//! struct Events;
//!
//! impl Consumer for Events {
//!     type Payload = Raw;
//!     async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let app = App::builder()
//!         .kafka("bootstrap.servers", "127.0.0.1:9092")
//!         .swarm(
//!             Swarm::new()
//!                 .nodes(3)
//!                 .memory_limit(512 * 1024 * 1024)
//!                 .consuming_ttl(Duration::from_secs(600)),
//!         )
//!         .topic("events", |t| t.consumer(Events::default))
//!         // Only nodes 0 and 1 consume `audit`.
//!         .topic("audit", |t| t.consumer(Events::default).swarm(0..2))
//!         .build()
//!         .expect("valid routes");
//!     karafka_consumer::cli::run(&app) // `my-app swarm`
//! }
//! ```
//!
//! ## The supervisor
//!
//! `my-app swarm` (with the same route selection as `server`) is the supervisor. It stays
//! one thread and starts no Kafka client: it emits `process.before_warmup`, then starts each
//! node by executing the same binary again (`/proc/self/exe`, so a binary replaced on disk
//! meanwhile does not mix versions) with the same arguments, the node's id in
//! `KARAFKA_SWARM_NODE`, in a process group of its own (a terminal's Ctrl-C reaches the
//! supervisor alone, which stops the nodes). Forking a process that has threads is unsound,
//! so nodes are new processes, not forks. It waits in `poll(2)` on its signals (a signalfd), each node's
//! report pipe and each node's pidfd (Linux 5.3 and later; SIGCHLD and `waitpid` otherwise),
//! waking at the next deadline and at least every second. On each wake
//! (`swarm.manager.control`, at most once a second):
//!
//! - a node with no report for `node_report_timeout`, or an unhealthy report, gets SIGTERM
//!   (`swarm.manager.stopping`, with the status);
//! - a node still alive `shutdown_timeout` after its SIGTERM gets SIGKILL
//!   (`swarm.manager.terminating`);
//! - a dead node is reaped at once (`swarm.manager.exited`, so no zombie stays) and started
//!   again `node_restart_timeout` after its death (`swarm.manager.before_fork`,
//!   `swarm.manager.after_fork`), so a node that dies at once does not spin.
//!
//! Signals: SIGTERM, SIGINT, SIGQUIT send SIGTERM to every node and wait up to
//! `shutdown_timeout` + 5 s; the nodes still alive then get SIGKILL (a second stop signal
//! does it at once). SIGTSTP is sent on to every node (they go quiet); from then on the
//! supervisor neither restarts nodes nor holds them to `node_report_timeout` (a node sent
//! SIGTERM before, or for an unhealthy report, is still killed past its deadline).
//!
//! Exit codes: the supervisor exits 0 when every node it stopped exited with code 0, 2
//! otherwise (one was killed, or exited with another code). A node exits 0 when stopped, 2
//! when its shutdown did not finish, 3 when its supervisor died (it stopped gracefully
//! first). A second SIGTERM does not force a node's stop (a service manager may signal every
//! process of the service as the supervisor does): the supervisor's SIGKILL is its deadline.
//!
//! ## The nodes
//!
//! A node emits `swarm.node.after_fork` (Karafka's name) at start, reports to the supervisor
//! at once (before its first poll, so a slow first batch does not get a new node killed),
//! then runs the app as [`App::for_node`](karafka_consumer::App::for_node) shapes it: the
//! topics limited to other nodes left out, `-{node}` appended to a `group.instance.id`, a
//! `/metrics` port moved up by the node's id. A reporter thread wakes every second and,
//! every `report_interval`, writes a status code (`swarm.node.reported`) to the pipe:
//!
//! | code | status | when |
//! |---|---|---|
//! | 0 | healthy | |
//! | 1 | polling stuck | a listener has not polled for `polling_ttl` (with poll scheduling, one running a long job itself: librdkafka expels it past `max.poll.interval.ms` anyway) |
//! | 2 | consuming stuck | a job has run longer than `consuming_ttl` (when set) |
//! | 3 | over memory | the node's resident memory is over `memory_limit` (when set) |
//!
//! A healthy report is only sent when every listener that is not running jobs went round
//! its loop since the last report, so a node whose polling is stuck stops reporting and is
//! replaced after `node_report_timeout`, while a node whose consume runs long keeps
//! reporting (with partition scheduling its listener keeps looping; with poll scheduling a
//! listener running, or waiting for a worker to run, a poll's jobs is not waited for). The
//! contract keeps `max_wait_time` below 80% of `node_report_timeout`, and the longest gap
//! between two reports (the longer of `report_interval` and `max_wait_time`, plus the
//! reporter's wake) below `node_report_timeout`, so a listener waiting for a batch still
//! reports in time.
//!
//! A transactional producer needs a `transactional.id` of its own per node: build it in the
//! node (from `KARAFKA_SWARM_NODE`), as the app's producer is shared by every node's
//! routes.
//!
//! A node whose supervisor dies gets SIGTERM from the kernel (`PR_SET_PDEATHSIG`), stops
//! gracefully (committing what it processed) and exits 3. SIGTSTP from the supervisor makes
//! it quiet.
//!
//! Metrics: each node serves its own `/metrics` (feature `web`, node `i` on the port + `i`,
//! with `karafka_swarm_node_status`); the supervisor serves none, as it runs no threads.
//!
//! Not done: Karafka's `stability_ttl` (status 4, a consumer group stuck joining), and
//! partition-level allocation (`swarm(nodes: {0 => [0], ...})`).
//!
//! Linux only (pidfd, `PR_SET_PDEATHSIG`, signalfd, `/proc`).

mod node;
mod supervisor;
mod sys;

use std::time::Duration;

use karafka_consumer::swarm::Supervision;
use karafka_consumer::{App, Result};
use karafka_core::Violation;

/// The environment variable that makes a process a swarm node, holding its id.
pub const NODE_ENV: &str = "KARAFKA_SWARM_NODE";
/// The exit code of a node whose supervisor died.
pub const EXIT_ORPHANED: u8 = 3;
/// The supervisor's exit code when some node did not stop cleanly.
pub const EXIT_UNCLEAN: u8 = 2;

/// Swarm mode's settings (see [the module](self)). Set with
/// [`SwarmApp::swarm`](crate::SwarmApp::swarm).
#[derive(Debug, Clone)]
pub struct Swarm {
    nodes: usize,
    node_report_timeout: Duration,
    node_restart_timeout: Duration,
    report_interval: Duration,
    shutdown_timeout: Option<Duration>,
    memory_limit: Option<u64>,
    polling_ttl: Duration,
    consuming_ttl: Option<Duration>,
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm {
            nodes: 3,
            node_report_timeout: Duration::from_secs(60),
            node_restart_timeout: Duration::from_secs(5),
            report_interval: Duration::from_secs(5),
            shutdown_timeout: None,
            memory_limit: None,
            polling_ttl: Duration::from_secs(300),
            consuming_ttl: None,
        }
    }
}

impl Swarm {
    /// Every default: 3 nodes, reports every 5 s, a node silent for 60 s replaced, a dead
    /// node restarted 5 s after its death, the app's `shutdown_timeout` between SIGTERM and
    /// SIGKILL, `polling_ttl` 5 min, no memory limit, no consuming TTL.
    pub fn new() -> Self {
        Swarm::default()
    }

    /// How many node processes (default 3, at least 1).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// A node with no report for this long gets SIGTERM (default 60 s, at least 1 s).
    pub fn node_report_timeout(mut self, timeout: Duration) -> Self {
        self.node_report_timeout = timeout;
        self
    }

    /// A dead node is started again no sooner than this after its death (default 5 s, at
    /// least 1 s).
    pub fn node_restart_timeout(mut self, timeout: Duration) -> Self {
        self.node_restart_timeout = timeout;
        self
    }

    /// How often a node reports (default 5 s; at most 10 s and below half of
    /// `node_report_timeout`).
    pub fn report_interval(mut self, interval: Duration) -> Self {
        self.report_interval = interval;
        self
    }

    /// From a node's SIGTERM to its SIGKILL (default: the app's `shutdown_timeout`).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// A node whose resident memory is over `bytes` reports itself (status 3) and is
    /// recycled gracefully (default: no limit).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// A listener with no job in flight that has not polled for this long makes its node
    /// report itself (status 1; default 5 min).
    pub fn polling_ttl(mut self, ttl: Duration) -> Self {
        self.polling_ttl = ttl;
        self
    }

    /// A job running longer than this (long-running ones included) makes its node report
    /// itself (status 2; default: none, a job may run as long as it needs).
    pub fn consuming_ttl(mut self, ttl: Duration) -> Self {
        self.consuming_ttl = Some(ttl);
        self
    }

    pub(crate) fn shutdown_timeout_for(&self, app: &App) -> Duration {
        self.shutdown_timeout
            .unwrap_or_else(|| app.shutdown_timeout())
    }
}

impl Supervision for Swarm {
    fn nodes(&self) -> usize {
        self.nodes
    }

    fn check(&self, app: &App) -> Vec<Violation> {
        let mut v = Vec::new();
        let mut say = |ok: bool, path: &str, message: String| {
            if !ok {
                v.push(Violation::new(path, message));
            }
        };
        say(self.nodes >= 1, "swarm.nodes", "must be at least 1".into());
        say(
            self.node_report_timeout >= Duration::from_secs(1),
            "swarm.node_report_timeout",
            format!("is {:?}; it must be at least 1s", self.node_report_timeout),
        );
        say(
            self.node_restart_timeout >= Duration::from_secs(1),
            "swarm.node_restart_timeout",
            format!(
                "is {:?}; it must be at least 1s, so a node that dies at once does not spin",
                self.node_restart_timeout
            ),
        );
        say(
            self.report_interval >= Duration::from_millis(100)
                && self.report_interval <= Duration::from_secs(10)
                && self.report_interval * 2 <= self.node_report_timeout,
            "swarm.report_interval",
            format!(
                "is {:?}; it must be between 100ms and 10s and at most half of \
                 node_report_timeout ({:?}), so a healthy node never misses its deadline",
                self.report_interval, self.node_report_timeout
            ),
        );
        if let Some(timeout) = self.shutdown_timeout {
            say(
                !timeout.is_zero(),
                "swarm.shutdown_timeout",
                "must be greater than 0".into(),
            );
        }
        if let Some(limit) = self.memory_limit {
            say(
                limit >= 1024 * 1024,
                "swarm.memory_limit",
                format!("is {limit} bytes; give a node at least 1 MiB (1048576)"),
            );
        }
        say(
            self.polling_ttl >= Duration::from_secs(1),
            "swarm.polling_ttl",
            format!("is {:?}; it must be at least 1s", self.polling_ttl),
        );
        if let Some(ttl) = self.consuming_ttl {
            say(
                ttl >= Duration::from_secs(1),
                "swarm.consuming_ttl",
                format!("is {ttl:?}; it must be at least 1s"),
            );
        }
        let limit = self.node_report_timeout.mul_f64(0.8);
        let mut consumed = vec![false; self.nodes];
        for group in app.routes().consumer_groups() {
            for sg in group.subscription_groups() {
                for topic in sg.topics() {
                    let path = format!("consumer_groups.{}.topics.{}", group.name(), topic.name());
                    say(
                        topic.max_wait_time() < limit,
                        &format!("{path}.max_wait_time"),
                        format!(
                            "is {:?}, not below 80% of the swarm's node_report_timeout ({:?}): \
                             a node waiting that long for a batch could miss its report; lower \
                             max_wait_time or raise node_report_timeout",
                            topic.max_wait_time(),
                            self.node_report_timeout
                        ),
                    );
                    // A report waits for every idle listener to go round its loop (at most
                    // max_wait_time) and for the reporter's next wake.
                    let gap = self.report_interval.max(topic.max_wait_time())
                        + self.report_interval.min(node::WAKE);
                    say(
                        topic.max_wait_time() >= limit || gap < self.node_report_timeout,
                        &format!("{path}.max_wait_time"),
                        format!(
                            "is {:?}: with report_interval {:?}, reports could come {gap:?} \
                             apart, not less than node_report_timeout ({:?}); lower \
                             max_wait_time or report_interval, or raise node_report_timeout",
                            topic.max_wait_time(),
                            self.report_interval,
                            self.node_report_timeout
                        ),
                    );
                    let nodes = topic.swarm_nodes();
                    let (unreachable, none) = nodes.unreachable(self.nodes);
                    if !unreachable.is_empty() {
                        say(
                            false,
                            &format!("{path}.swarm"),
                            format!(
                                "names node id(s) {unreachable:?}, which a swarm of {} node(s) \
                                 does not have (ids 0..{}){}",
                                self.nodes,
                                self.nodes,
                                if none {
                                    ": no node would consume it"
                                } else {
                                    ""
                                }
                            ),
                        );
                    } else if none {
                        say(
                            false,
                            &format!("{path}.swarm"),
                            "names no node: no node would consume it; name at least one, or \
                             leave `.swarm(...)` out for every node"
                                .into(),
                        );
                    }
                    for (node, seen) in consumed.iter_mut().enumerate() {
                        *seen |= nodes.includes(node);
                    }
                }
            }
        }
        for (node, seen) in consumed.iter().enumerate() {
            say(
                *seen,
                "swarm.nodes",
                format!(
                    "node {node} has no topic to consume: every topic is limited to other \
                     nodes with `.swarm(...)`; lower `nodes` or include node {node}"
                ),
            );
        }
        v
    }

    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "swarm: {} node(s); report every {:?}, replaced after {:?} without one; restarted \
             {:?} after death; SIGKILL {} after SIGTERM",
            self.nodes,
            self.report_interval,
            self.node_report_timeout,
            self.node_restart_timeout,
            match self.shutdown_timeout {
                Some(t) => format!("{t:?}"),
                None => "shutdown_timeout".into(),
            }
        )];
        lines.push(format!(
            "swarm liveness: polling_ttl {:?}, consuming_ttl {}, memory_limit {}",
            self.polling_ttl,
            self.consuming_ttl
                .map_or_else(|| "none".into(), |t| format!("{t:?}")),
            self.memory_limit
                .map_or_else(|| "none".into(), |b| format!("{b} bytes"))
        ));
        lines
    }

    fn run(&self, app: &App) -> Result<u8> {
        match std::env::var(NODE_ENV) {
            Ok(id) => {
                let node = id.trim().parse::<usize>().map_err(|_| {
                    node::setup_error(format!("{NODE_ENV}={id:?} is not a node id"))
                })?;
                node::run(self, app, node)
            }
            Err(_) => supervisor::run(self, app),
        }
    }
}
