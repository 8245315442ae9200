//! How many connections a subscription group runs, and when that number changes: the seam
//! that `karafka-pro`'s multiplexing implements.
//!
//! A subscription group is normally one librdkafka consumer (one connection, one listener
//! thread). With a [`ConnectionPlan`] set on a named subscription group
//! ([`SubscriptionGroupBuilder::connections`](crate::routing::SubscriptionGroupBuilder::connections)),
//! it is a *family* of up to [`max`](ConnectionPlan::max) connections: each its own client in
//! the same consumer group (same `group.id`), with its own listener, prefetch and flow, all
//! sharing the app's workers. Connection `i` is named `{subscription group}#{i}` in events,
//! statistics (`source_id`) and thread names. A configured `client.id` and
//! `group.instance.id` get the suffix `-{subscription group}-{i}` (static membership needs
//! the latter unique in the group). Every connection whose settings set no `client.id`
//! (multiplexed or not) gets `karafka-{subscription group}-{i}-{token}` (`{token}`: process
//! id, time and a count of app starts, unique to one start of the app), unique in the group
//! across processes: members with identical ids can make librdkafka's
//! cooperative-sticky assignor loop at 100% CPU (librdkafka #4783). Names are stable across
//! restarts: a connection started again takes the lowest free index.
//!
//! [`boot`](ConnectionPlan::boot) connections start with the app. A plan that is
//! [`dynamic`](ConnectionPlan::dynamic) is asked every quarter of a second, with what each
//! active connection's latest librdkafka statistics say of its group membership
//! ([`Observed`]), whether to start or stop one ([`ConnectionPlan::decide`]). The app carries
//! out at most one change per decision: a started connection joins the group; a stopped one
//! finishes its jobs, commits and leaves it (its partitions move to other members without
//! loss), and is neither a failure of `/healthz` nor counted as a listener any more. The app
//! never stops the last connection of a family nor starts more than `max`, whatever a plan
//! says.
//!
//! [`SingleConnection`] is the default: one connection, never changed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use karafka_core::{KafkaSettings, Violations};

/// How many connections a subscription group runs (see the [module docs](self)).
pub trait ConnectionPlan: Send + Sync + 'static {
    /// A short name for `info` and `Debug` (`single`, `multiplexing`).
    fn name(&self) -> &'static str;

    /// Most connections at once (indexes `0..max` name them).
    fn max(&self) -> usize;

    /// Connections started with the app (between 1 and [`max`](Self::max)).
    fn boot(&self) -> usize;

    /// Whether [`decide`](Self::decide) is asked (the family changes while it runs). The app
    /// then needs librdkafka statistics (`statistics.interval.ms` above 0): check it in
    /// [`check`](Self::check).
    fn dynamic(&self) -> bool {
        false
    }

    /// Checks the plan against its subscription group at `build()`, pushing violations at
    /// `path` (the subscription group's path in the routes).
    fn check(&self, facts: &FamilyFacts<'_>, path: &str, v: &mut Violations) {
        let _ = (facts, path, v);
    }

    /// What `info` prints about the family, a line each.
    fn describe(&self, facts: &FamilyFacts<'_>) -> Vec<String> {
        let _ = facts;
        vec![format!("{} connection(s)", self.max())]
    }

    /// Warnings about how the family will run (emitted as `connection.multiplexing.warning`
    /// when the app starts, and printed by `info`).
    fn warnings(&self, facts: &FamilyFacts<'_>) -> Vec<String> {
        let _ = facts;
        Vec::new()
    }

    /// Whether to change the family now (dynamic plans only; the default never changes).
    fn decide(&self, view: &FamilyView<'_>) -> Option<Scale> {
        let _ = view;
        None
    }
}

/// The default plan: one connection, never changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleConnection;

impl ConnectionPlan for SingleConnection {
    fn name(&self) -> &'static str {
        "single"
    }
    fn max(&self) -> usize {
        1
    }
    fn boot(&self) -> usize {
        1
    }
    fn describe(&self, _facts: &FamilyFacts<'_>) -> Vec<String> {
        Vec::new()
    }
}

impl fmt::Debug for dyn ConnectionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPlan")
            .field("name", &self.name())
            .field("max", &self.max())
            .field("boot", &self.boot())
            .field("dynamic", &self.dynamic())
            .finish()
    }
}

/// What a plan's [`check`](ConnectionPlan::check), [`describe`](ConnectionPlan::describe) and
/// [`warnings`](ConnectionPlan::warnings) know of the subscription group.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FamilyFacts<'a> {
    /// The consumer group.
    pub consumer_group: &'a str,
    /// The subscription group.
    pub subscription_group: &'a str,
    /// Its effective librdkafka settings (app, subscription group and topics merged).
    pub kafka: &'a KafkaSettings,
}

impl FamilyFacts<'_> {
    /// Whether its rebalances are incremental: `partition.assignment.strategy` is
    /// `cooperative-sticky`, or `group.protocol` is `consumer` (KIP-848). Otherwise every
    /// member's assignment is revoked and given again on each membership change.
    pub fn incremental_rebalancing(&self) -> bool {
        self.kafka.get("group.protocol") == Some("consumer")
            || self
                .kafka
                .get("partition.assignment.strategy")
                .is_some_and(|s| s.trim() == "cooperative-sticky")
    }

    /// librdkafka's `statistics.interval.ms` (0, the default, when statistics are off).
    pub fn statistics_interval(&self) -> Duration {
        Duration::from_millis(
            self.kafka
                .get("statistics.interval.ms")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        )
    }
}

/// What a dynamic plan decides from.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FamilyView<'a> {
    /// When the view was taken.
    pub now: Instant,
    /// The family's active connections (those asked to stop are gone).
    pub connections: &'a [ConnectionView],
    /// When the family last changed (its boot counts as a change).
    pub changed_at: Instant,
    /// Every active connection of the consumer group's dynamic families in this app,
    /// this family's included.
    pub group: &'a [ConnectionView],
    /// When a family of the consumer group in this app last changed (boot included).
    pub group_changed_at: Instant,
}

impl<'a> FamilyView<'a> {
    /// A view (for plans' tests; the app builds its own).
    pub fn new(
        now: Instant,
        connections: &'a [ConnectionView],
        changed_at: Instant,
        group: &'a [ConnectionView],
        group_changed_at: Instant,
    ) -> Self {
        FamilyView {
            now,
            connections,
            changed_at,
            group,
            group_changed_at,
        }
    }
}

/// One active connection, as its statistics last showed it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionView {
    /// Its index in the family.
    pub index: usize,
    /// Its name (`events#1`).
    pub name: Arc<str>,
    /// Its latest statistics' view of its group membership (`None` before the first).
    pub observed: Option<Observed>,
}

impl ConnectionView {
    /// A view of connection `index` (for plans' tests; the app builds its own).
    pub fn new(index: usize, name: impl Into<Arc<str>>, observed: Option<Observed>) -> Self {
        ConnectionView {
            index,
            name: name.into(),
            observed,
        }
    }
}

/// A connection's group membership in one librdkafka statistics report (`cgrp`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observed {
    /// When the report came.
    pub at: Instant,
    /// librdkafka's group state (`up` once the coordinator is known and joined).
    pub state: String,
    /// librdkafka's join state (`steady` between rebalances).
    pub join_state: String,
    /// Time since the connection's last rebalance, at `at`.
    pub rebalance_age: Duration,
    /// Partitions assigned to the connection.
    pub assigned: usize,
}

impl Observed {
    /// A report's membership view, received at `at`.
    pub fn new(
        at: Instant,
        state: impl Into<String>,
        join_state: impl Into<String>,
        rebalance_age: Duration,
        assigned: usize,
    ) -> Self {
        Observed {
            at,
            state: state.into(),
            join_state: join_state.into(),
            rebalance_age,
            assigned,
        }
    }

    /// Joined and between rebalances: group state `up` and join state `steady`.
    pub fn is_steady(&self) -> bool {
        self.state == "up" && self.join_state == "steady"
    }

    /// How long ago its last rebalance was, at `now`.
    pub fn rebalanced_ago(&self, now: Instant) -> Duration {
        self.rebalance_age + now.saturating_duration_since(self.at)
    }
}

/// A dynamic plan's decision. The app carries out one at a time: an `Up` starts the lowest
/// index neither active nor still leaving, never beyond `max`; a `Down` never stops the last
/// connection. Until a stopped connection has left the group, no family of its consumer
/// group is asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scale {
    /// Start one more connection (the lowest free index).
    Up {
        /// Why, for the event.
        reason: String,
    },
    /// Stop the connection of this index.
    Down {
        /// The connection's index.
        connection: usize,
        /// Why, for the event.
        reason: String,
    },
}
