//! The app's connections: a family per subscription group (one connection, or several with
//! a [`ConnectionPlan`] of more), their listener threads, and the decisions of dynamic
//! plans carried out (see [`crate::connections`]).
//!
//! [`Connections`] starts each family's `boot` connections. When a plan is dynamic, the
//! manager thread ([`run`]) asks it every [`TICK`] whether to change, with every active
//! connection's latest statistics, and carries out one change at a time: a started
//! connection is a new listener; a stopped one is *retired* (its listener finishes its jobs,
//! commits and leaves the group) and leaves the health check and the listener count at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{Event, ScaleDirection};

use crate::connection::listener::{Listener, ListenerSetup};
use crate::connections::{ConnectionPlan, ConnectionView, FamilyView, Scale};
use crate::error::Result;
use crate::processing::group::{ActiveGroups, GroupShared};
use crate::routing::{Routes, SubscriptionGroupRoute};

/// How often dynamic plans are asked.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// A listener thread, until it is joined.
pub(crate) struct ListenerThread {
    /// Unique for the app's run (a name can come back when an index is reused).
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) handle: JoinHandle<()>,
    shared: Arc<GroupShared>,
    retired: bool,
}

/// The connections of one subscription group.
struct Family {
    route: Arc<SubscriptionGroupRoute>,
    /// Active connections by index.
    active: Vec<(usize, Arc<GroupShared>)>,
    changed_at: Instant,
}

/// Every connection of a running app.
pub(crate) struct Connections {
    setup: ListenerSetup,
    done: mpsc::Sender<u64>,
    next_id: u64,
    pub(crate) threads: Vec<ListenerThread>,
    /// The active connections' shared state: what health and `/metrics` look at.
    pub(crate) active: ActiveGroups,
    families: Vec<Family>,
    /// When a family of each consumer group last changed.
    group_changed_at: HashMap<Arc<str>, Instant>,
}

impl Connections {
    /// Starts every family's `boot` connections. On failure, the caller stops the app (the
    /// listeners started so far see the stop flag).
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
                for warning in plan.warnings(&sg.family_facts()) {
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
                    if let Err(e) = connections.spawn(family, index) {
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

    fn spawn(&mut self, family: usize, index: usize) -> Result<()> {
        let route = self.families[family].route.connection(index);
        let listener = Listener::new(route.clone(), &self.setup)?;
        let shared = listener.shared();
        let name = format!("karafka.listener#{}.{}", route.consumer_group, route.name);
        let id = self.next_id;
        self.next_id += 1;
        let done = self.done.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                listener.run();
                let _ = done.send(id);
            })
            .map_err(|e| karafka_core::Error::Io {
                operation: "start a listener thread".into(),
                source: e,
            })?;
        self.threads.push(ListenerThread {
            id,
            name,
            handle,
            shared: shared.clone(),
            retired: false,
        });
        self.setup.control.listeners.fetch_add(1, Ordering::AcqRel);
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

    /// Joins retired listeners that ended.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].retired && self.threads[i].handle.is_finished() {
                let thread = self.threads.swap_remove(i);
                let _ = thread.handle.join();
            } else {
                i += 1;
            }
        }
    }

    /// Whether a listener that should be running has ended.
    pub(crate) fn any_ended(&self) -> bool {
        self.threads
            .iter()
            .any(|t| !t.retired && t.handle.is_finished())
    }

    /// Asks each dynamic family's plan once and carries out the first change asked for.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.reap();
        let control = &self.setup.control;
        if control.stopping() || control.quieting() {
            return;
        }
        let views: Vec<(Arc<str>, ConnectionView)> = self
            .families
            .iter()
            .filter(|f| f.route.plan.dynamic())
            .flat_map(|f| {
                f.active
                    .iter()
                    .map(|(index, shared)| (f.route.consumer_group.clone(), view(*index, shared)))
            })
            .collect();
        for family in 0..self.families.len() {
            let f = &self.families[family];
            let plan: &Arc<dyn ConnectionPlan> = &f.route.plan;
            if !plan.dynamic() {
                continue;
            }
            let group = &f.route.consumer_group;
            let connections: Vec<ConnectionView> =
                f.active.iter().map(|(i, s)| view(*i, s)).collect();
            let group_views: Vec<ConnectionView> = views
                .iter()
                .filter(|(g, _)| g == group)
                .map(|(_, v)| v.clone())
                .collect();
            let group_changed_at = self.group_changed_at.get(group).copied().unwrap_or(now);
            let decision = plan.decide(&FamilyView {
                now,
                connections: &connections,
                changed_at: f.changed_at,
                group: &group_views,
                group_changed_at,
            });
            let Some(decision) = decision else { continue };
            if self.carry_out(family, decision, now) {
                // One change at a time: the next waits for the next tick and the group's
                // stability the plans check.
                return;
            }
        }
    }

    fn carry_out(&mut self, family: usize, decision: Scale, now: Instant) -> bool {
        let route = self.families[family].route.clone();
        let max = route.plan.max();
        let (direction, index, reason) = match decision {
            Scale::Up { reason } => {
                let active = &self.families[family].active;
                if active.len() >= max {
                    return false;
                }
                let Some(free) = (0..max).find(|i| active.iter().all(|(a, _)| a != i)) else {
                    return false;
                };
                if let Err(e) = self.spawn(family, free) {
                    tracing::warn!(
                        target: "karafka",
                        subscription_group = %route.name,
                        error = %e,
                        "a connection could not be started; the family stays as it is"
                    );
                    return false;
                }
                (ScaleDirection::Up, free, reason)
            }
            Scale::Down { connection, reason } => {
                // Never the last connection.
                if self.families[family].active.len() <= 1 || !self.retire(family, connection) {
                    return false;
                }
                (ScaleDirection::Down, connection, reason)
            }
            #[allow(unreachable_patterns)]
            _ => return false,
        };
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
        true
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
    control: Arc<crate::status::Control>,
    wake: mpsc::Receiver<()>,
) {
    while !control.stopping() {
        match wake.recv_timeout(TICK) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let mut guard = connections.lock().unwrap_or_else(|p| p.into_inner());
        guard.tick(Instant::now());
    }
}
