//! Running an app as a process: signals, statuses, the shutdown report, and choosing which
//! routes a process runs.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;
use crate::error::{Error, Result};
use crate::routing::{ConsumerGroupRoute, Routes, SubscriptionGroupRoute};

/// How a process ended its `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// Stopped gracefully.
    Stopped,
}

impl App {
    /// Runs the app until a signal stops it. Blocks; for `main` (inside an async program use
    /// [`start`](App::start)).
    ///
    /// - SIGINT, SIGTERM, SIGQUIT: stop gracefully — no new batches, in-flight jobs finish,
    ///   `shutdown` hooks run, offsets are committed, the groups are left.
    /// - SIGTSTP: go quiet — no new batches, connections and assignments kept — so a
    ///   deployment can drain before it stops.
    /// - A second stop signal while stopping: give up at once with
    ///   [`Error::ShutdownTimeout`] (what was still running is reported).
    ///
    /// Past `shutdown_timeout` it returns [`Error::ShutdownTimeout`] with a report naming what
    /// blocked; the report is also logged. Processes exit with code 2 in both cases (the CLI
    /// does that for you).
    ///
    /// Called inside a tokio runtime it fails at once (blocking there would stall the
    /// runtime): use [`start`](App::start) and [`Running::stop`](crate::Running::stop) there.
    pub fn run(&self) -> Result<Exit> {
        self.run_with(RunOptions::default(), |_| {})
    }

    /// As [`run`](Self::run), with `options`, calling `started` with the running app once it
    /// started (to take a [`probe`](crate::Running::probe), say): how karafka-pro's swarm
    /// nodes run.
    pub fn run_with(
        &self,
        options: RunOptions,
        started: impl FnOnce(&crate::Running) + Send,
    ) -> Result<Exit> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Core(karafka_core::Error::Io {
                operation: "run the app".into(),
                source: std::io::Error::other(
                    "`App::run` blocks and was called inside a tokio runtime; there, use \
                     `app.start()` and `running.stop().await` instead",
                ),
            }));
        }
        let runtime = crate::app::worker_runtime()?;
        let app = self.clone();
        let outcome = runtime.block_on(async move {
            let io = |e: std::io::Error| {
                Error::Core(karafka_core::Error::Io {
                    operation: "listen for signals".into(),
                    source: e,
                })
            };
            let mut term = signal(SignalKind::terminate()).map_err(io)?;
            let mut int = signal(SignalKind::interrupt()).map_err(io)?;
            let mut quit = signal(SignalKind::quit()).map_err(io)?;
            let mut tstp = signal(SignalKind::from_raw(libc::SIGTSTP)).map_err(io)?;
            let running = app.start()?;
            started(&running);
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = quit.recv() => break,
                    _ = tstp.recv() => {
                        tracing::info!(target: "karafka", "SIGTSTP: going quiet");
                        running.quiet();
                    }
                }
            }
            if !options.second_signal_forces {
                tracing::info!(target: "karafka", "stopping");
                return running.stop().await;
            }
            tracing::info!(target: "karafka", "stopping (a second stop signal forces)");
            let report = running.reporter();
            let stopping = running.stop();
            tokio::pin!(stopping);
            tokio::select! {
                result = &mut stopping => result,
                _ = async {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                        _ = quit.recv() => {}
                    }
                } => Err(Error::ShutdownTimeout {
                    timeout: std::time::Duration::ZERO,
                    report: format!("forced by a second stop signal\n{}", report()),
                }),
            }
        });
        // Jobs may still run (that is why stopping did not finish): do not wait for them.
        runtime.shutdown_background();
        match outcome {
            Ok(()) => Ok(Exit::Stopped),
            Err(e) => {
                if let Error::ShutdownTimeout { report, .. } = &e {
                    tracing::error!(target: "karafka", "shutdown did not finish:\n{report}");
                }
                Err(e)
            }
        }
    }

    /// The app restricted to some routes, as `server --consumer-groups/--subscription-groups/
    /// --topics` chooses (empty selections keep everything). Fails when nothing is left.
    pub fn select(&self, selection: &Selection) -> Result<App> {
        let keep = |list: &[String], name: &str| list.is_empty() || list.iter().any(|n| n == name);
        let mut groups = Vec::new();
        for group in &self.inner.routes.consumer_groups {
            if !keep(&selection.consumer_groups, &group.name) {
                continue;
            }
            let mut subscription_groups = Vec::new();
            for sg in &group.subscription_groups {
                if !keep(&selection.subscription_groups, &sg.name) {
                    continue;
                }
                let topics: Vec<_> = sg
                    .topics
                    .iter()
                    .filter(|t| keep(&selection.topics, &t.name))
                    .cloned()
                    .collect();
                if topics.is_empty() {
                    continue;
                }
                subscription_groups.push(Arc::new(SubscriptionGroupRoute {
                    name: sg.name.clone(),
                    consumer_group: sg.consumer_group.clone(),
                    topics,
                    kafka: sg.kafka.clone(),
                    max_messages: sg.max_messages,
                    max_wait_time: sg.max_wait_time,
                    scheduling: sg.scheduling,
                    plan: sg.plan.clone(),
                }));
            }
            if !subscription_groups.is_empty() {
                groups.push(ConsumerGroupRoute {
                    name: group.name.clone(),
                    topics: group.topics.clone(),
                    subscription_groups,
                });
            }
        }
        if groups.is_empty() {
            return Err(Error::Config(karafka_core::ConfigError::single(
                "server.selection",
                format!("{selection:?} matches no route; see `info` for the names"),
            )));
        }
        Ok(self.with_routes(Routes {
            consumer_groups: groups,
            declared: self.inner.routes.declared.clone(),
        }))
    }
}

/// How [`App::run_with`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOptions {
    /// Whether a second stop signal while stopping gives up at once (default `true`). A
    /// process whose stop has a deadline of its own — a swarm node, which its supervisor
    /// kills past `shutdown_timeout`, and which can get SIGTERM twice (from the supervisor
    /// and from a terminal or service manager signalling the whole group) — sets it `false`.
    pub second_signal_forces: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            second_signal_forces: true,
        }
    }
}

impl RunOptions {
    /// Sets [`second_signal_forces`](Self::second_signal_forces).
    pub fn second_signal_forces(mut self, forces: bool) -> Self {
        self.second_signal_forces = forces;
        self
    }
}

/// Which routes a process runs (see [`App::select`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Consumer group names (empty: all).
    pub consumer_groups: Vec<String>,
    /// Subscription group names (empty: all).
    pub subscription_groups: Vec<String>,
    /// Topic names (empty: all).
    pub topics: Vec<String>,
}
