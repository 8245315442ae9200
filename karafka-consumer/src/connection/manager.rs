//! The app's connections: a family per subscription group (one connection, or several with
//! a [`ConnectionPlan`] of more), their listener threads, and the decisions of dynamic
//! plans carried out (see [`crate::connections`]).
//!
//! [`Connections::start`] starts each family's `boot` connections. When a plan is dynamic,
//! the manager thread ([`run`]) asks it every [`TICK`] whether to change, with every active
//! connection's latest statistics, and carries out one change at a time: a started
//! connection is a new listener (created outside the lock: creating a client may wait for
//! metadata); a stopped one is *retired* (its listener finishes its jobs, commits and leaves
//! the group) and leaves the health check and the listener count at once. A change counts
//! as in progress until a retired listener has ended: its index is not reused and no family
//! of its consumer group changes meanwhile.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{ErrorKind, Event, ScaleDirection};

use crate::connection::listener::{Listener, ListenerSetup};
use crate::connections::{ConnectionView, FamilyView, Scale};
use crate::error::Result;
use crate::processing::group::{ActiveGroups, GroupShared};
use crate::routing::{Routes, SubscriptionGroupRoute};
use crate::status::Control;

/// How often dynamic plans are asked.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// A listener thread, until it is joined.
pub(crate) struct ListenerThread {
    /// Unique for the app's run (a name comes back when an index is reused).
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) handle: JoinHandle<()>,
    shared: Arc<GroupShared>,
    /// Its family and index.
    of: (usize, usize),
    retired: bool,
}

/// The connections of one subscription group.
struct Family {
    route: Arc<SubscriptionGroupRoute>,
    /// Active connections by index.
    active: Vec<(usize, Arc<GroupShared>)>,
    changed_at: Instant,
}

/// A connection to start, decided under the lock and created outside it.
pub(crate) struct Start {
    family: usize,
    index: usize,
    route: Arc<SubscriptionGroupRoute>,
    setup: ListenerSetup,
    reason: String,
}

/// Every connection of a running app.
pub(crate) struct Connections {
    setup: ListenerSetup,
    done: mpsc::Sender<u64>,
    next_id: u64,
    pub(crate) threads: Vec<ListenerThread>,
    /// The active connections' shared state: what health and `Running::partition_state`
    /// look at.
    pub(crate) active: ActiveGroups,
    families: Vec<Family>,
    /// When a family of each consumer group last changed (or a retired connection of it
    /// ended).
    group_changed_at: HashMap<Arc<str>, Instant>,
}

impl Connections {
    /// Starts every family's `boot` connections. On failure, the caller stops the app and
    /// joins the listeners started so far (they see the stop flag).
    pub(crate) fn start(
        routes: &Routes,
        setup: ListenerSetup,
        done: mpsc::Sender<u64>,
    ) -> (Self, Result<()>) {
        let now = Instant::now();
        let mut connections = Connections {
            setup,
            done,
            next_id: 0,
            threads: Vec::new(),
            active: Arc::new(Mutex::new(Vec::new())),
            families: Vec::new(),
            group_changed_at: HashMap::new(),
        };
        for group in &routes.consumer_groups {
            connections.group_changed_at.insert(group.name.clone(), now);
            for sg in &group.subscription_groups {
                let plan = sg.plan.clone();
                for warning in sg.connection_warnings() {
                    connections.setup.monitor.emit(Event::ConnectionWarning {
                        consumer_group: sg.consumer_group.clone(),
                        subscription_group: sg.name.clone(),
                        warning: warning.into(),
                    });
                }
                connections.families.push(Family {
                    route: sg.clone(),
                    active: Vec::new(),
                    changed_at: now,
                });
                let family = connections.families.len() - 1;
                let boot = plan.boot().clamp(1, plan.max().max(1));
                for index in 0..boot {
                    let route = sg.connection(index);
                    connections
                        .setup
                        .control
                        .listeners
                        .fetch_add(1, Ordering::AcqRel);
                    let listener = Listener::new(route, &connections.setup);
                    if let Err(e) = connections.install(family, index, listener) {
                        return (connections, Err(e));
                    }
                }
            }
        }
        (connections, Ok(()))
    }

    /// Whether any family changes while the app runs.
    pub(crate) fn dynamic(&self) -> bool {
        self.families.iter().any(|f| f.route.plan.dynamic())
    }

    /// Runs a created listener on its own thread as connection `index` of `family`. The
    /// caller counted it in `Control::listeners` already; a failure uncounts it.
    fn install(&mut self, family: usize, index: usize, listener: Result<Listener>) -> Result<()> {
        let control = self.setup.control.clone();
        let uncount = || control.listeners.fetch_sub(1, Ordering::AcqRel);
        let listener = listener.inspect_err(|_| {
            uncount();
        })?;
        let shared = listener.shared();
        let name = format!(
            "karafka.listener#{}.{}",
            shared.route.consumer_group, shared.route.name
        );
        let id = self.next_id;
        self.next_id += 1;
        let done = self.done.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                listener.run();
                let _ = done.send(id);
            })
            .map_err(|e| {
                uncount();
                karafka_core::Error::Io {
                    operation: "start a listener thread".into(),
                    source: e,
                }
            })?;
        self.threads.push(ListenerThread {
            id,
            name,
            handle,
            shared: shared.clone(),
            of: (family, index),
            retired: false,
        });
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shared.clone());
        let active = &mut self.families[family].active;
        active.push((index, shared));
        active.sort_by_key(|(i, _)| *i);
        Ok(())
    }

    fn retire(&mut self, family: usize, index: usize) -> bool {
        let active = &mut self.families[family].active;
        let Some(at) = active.iter().position(|(i, _)| *i == index) else {
            return false;
        };
        let (_, shared) = active.remove(at);
        shared.retired.store(true, Ordering::Release);
        self.setup.control.listeners.fetch_sub(1, Ordering::AcqRel);
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|g| !Arc::ptr_eq(g, &shared));
        for thread in &mut self.threads {
            if Arc::ptr_eq(&thread.shared, &shared) {
                thread.retired = true;
            }
        }
        true
    }

    /// Joins retired listeners that ended; the end of one is when its change is over (for
    /// its family and consumer group).
    fn reap(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].retired && self.threads[i].handle.is_finished() {
                let thread = self.threads.swap_remove(i);
                let (family, _) = thread.of;
                let group = self.families[family].route.consumer_group.clone();
                self.families[family].changed_at = now;
                self.group_changed_at.insert(group, now);
                let _ = thread.handle.join();
            } else {
                i += 1;
            }
        }
    }

    /// Retired listeners of `family` still running, by index.
    fn leaving(&self, family: usize) -> impl Iterator<Item = usize> + '_ {
        self.threads
            .iter()
            .filter(move |t| t.retired && t.of.0 == family)
            .map(|t| t.of.1)
    }

    /// Whether a listener that should be running has ended.
    pub(crate) fn any_ended(&self) -> bool {
        self.threads
            .iter()
            .any(|t| !t.retired && t.handle.is_finished())
    }

    /// The names of the listener threads not ended yet.
    pub(crate) fn running_names(&self) -> Vec<String> {
        self.threads
            .iter()
            .filter(|t| !t.handle.is_finished())
            .map(|t| t.name.clone())
            .collect()
    }

    /// Asks each dynamic family's plan once. Carries out the first change asked for: a
    /// retirement at once; a start is returned, to be created outside the lock
    /// ([`Connections::finish_start`]).
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Start> {
        self.reap(now);
        let control = &self.setup.control;
        if control.stopping() || control.quieting() {
            return None;
        }
        // Every observed connection of each consumer group (static families' too, when
        // their statistics are on).
        let views: Vec<(Arc<str>, ConnectionView)> = self
            .families
            .iter()
            .flat_map(|f| {
                let dynamic = f.route.plan.dynamic();
                f.active.iter().filter_map(move |(index, shared)| {
                    let view = view(*index, shared);
                    (dynamic || view.observed.is_some())
                        .then(|| (f.route.consumer_group.clone(), view))
                })
            })
            .collect();
        for family in 0..self.families.len() {
            let f = &self.families[family];
            if !f.route.plan.dynamic() {
                continue;
            }
            let group = f.route.consumer_group.clone();
            // A retired connection of the consumer group still leaving: that change is
            // not over.
            let leaving = self
                .threads
                .iter()
                .any(|t| t.retired && self.families[t.of.0].route.consumer_group == group);
            if leaving {
                continue;
            }
            let connections: Vec<ConnectionView> =
                f.active.iter().map(|(i, s)| view(*i, s)).collect();
            let group_views: Vec<ConnectionView> = views
                .iter()
                .filter(|(g, _)| *g == group)
                .map(|(_, v)| v.clone())
                .collect();
            let group_changed_at = self.group_changed_at.get(&group).copied().unwrap_or(now);
            let decision = f.route.plan.decide(&FamilyView {
                now,
                connections: &connections,
                changed_at: f.changed_at,
                group: &group_views,
                group_changed_at,
            });
            match decision {
                Some(Scale::Up { reason }) => {
                    let max = f.route.plan.max();
                    if f.active.len() >= max {
                        continue;
                    }
                    let taken: Vec<usize> = f
                        .active
                        .iter()
                        .map(|(i, _)| *i)
                        .chain(self.leaving(family))
                        .collect();
                    let Some(index) = (0..max).find(|i| !taken.contains(i)) else {
                        continue;
                    };
                    // Counted before it exists, so quiet cannot be declared without it.
                    self.setup.control.listeners.fetch_add(1, Ordering::AcqRel);
                    return Some(Start {
                        family,
                        index,
                        route: f.route.connection(index),
                        setup: self.setup.clone(),
                        reason,
                    });
                }
                Some(Scale::Down { connection, reason }) => {
                    // Never the last connection.
                    if f.active.len() <= 1 || !self.retire(family, connection) {
                        continue;
                    }
                    self.changed(family, connection, ScaleDirection::Down, reason, now);
                    return None;
                }
                _ => {}
            }
        }
        None
    }

    /// Installs a connection started by [`Connections::tick`] (created outside the lock).
    /// Dropped unstarted if the app began stopping meanwhile; a failure is reported and
    /// counts as the family's change (no new attempt before its next stable period).
    pub(crate) fn finish_start(&mut self, start: Start, listener: Result<Listener>) {
        let now = Instant::now();
        let Start {
            family,
            index,
            route,
            reason,
            ..
        } = start;
        if self.setup.control.stopping() {
            self.setup.control.listeners.fetch_sub(1, Ordering::AcqRel);
            // Never run: dropping it closes the client.
            drop(listener);
            return;
        }
        match self.install(family, index, listener) {
            Ok(()) => self.changed(family, index, ScaleDirection::Up, reason, now),
            Err(e) => {
                self.families[family].changed_at = now;
                self.group_changed_at
                    .insert(route.consumer_group.clone(), now);
                self.setup.monitor.emit_with(|| {
                    Event::ErrorOccurred(
                        karafka_core::instrumentation::ErrorOccurred::new(
                            ErrorKind::ConnectionListener,
                            std::io::Error::other(format!(
                                "connection {} of subscription group {} could not be started \
                                 (the family stays as it is until it is stable again): {e}",
                                route.name, self.families[family].route.name
                            )),
                        )
                        .source_id(route.consumer_group.clone()),
                    )
                });
            }
        }
    }

    fn changed(
        &mut self,
        family: usize,
        index: usize,
        direction: ScaleDirection,
        reason: String,
        now: Instant,
    ) {
        let route = self.families[family].route.clone();
        self.families[family].changed_at = now;
        self.group_changed_at
            .insert(route.consumer_group.clone(), now);
        let active = self.families[family].active.len();
        self.setup.monitor.emit(Event::ConnectionScaled {
            consumer_group: route.consumer_group.clone(),
            subscription_group: route.name.clone(),
            connection: format!("{}#{index}", route.name).into(),
            direction,
            active,
            reason: reason.into(),
        });
    }
}

fn view(index: usize, shared: &GroupShared) -> ConnectionView {
    ConnectionView {
        index,
        name: shared.route.name.clone(),
        observed: shared
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }
}

/// The manager thread: asks dynamic plans every [`TICK`] until the app stops or `wake`'s
/// sender is dropped.
pub(crate) fn run(
    connections: Arc<Mutex<Connections>>,
    control: Arc<Control>,
    wake: mpsc::Receiver<()>,
) {
    while !control.stopping() {
        match wake.recv_timeout(TICK) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let start = connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(Instant::now());
        if let Some(start) = start {
            let listener = Listener::new(start.route.clone(), &start.setup);
            connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finish_start(start, listener);
        }
    }
}
