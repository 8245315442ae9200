//! Multiplexing: several connections for one subscription group, static or scaled while
//! the app runs.
//!
//! A subscription group is one librdkafka consumer: one poll loop, one prefetch, one flow.
//! A slow batch delays every partition of that connection (with poll scheduling), and under
//! lag librdkafka tends to prefetch long runs of one partition. With [`Multiplexing`] the
//! subscription group runs up to `max` connections, each its own member of the consumer
//! group with its own listener and prefetch; the group's partitions spread over them; the
//! app's workers (`concurrency`) are shared. The engine side (starting, naming and stopping
//! connections) is `karafka_consumer::connections`; this module decides how many.

use std::time::Duration;

use karafka_consumer::connections::{ConnectionPlan, FamilyFacts, FamilyView, Scale};
use karafka_core::Violations;

/// Multiplexing of a named subscription group: its config, set with
/// [`MultiplexingSubscriptionGroup::multiplexing`](crate::MultiplexingSubscriptionGroup::multiplexing).
///
/// | setting | default |
/// |---|---|
/// | `max` (required, ≥ 2) | — |
/// | `min` | `max` (static: every connection always runs) |
/// | `boot` | half of `max` (rounded down), at least `min` |
/// | `scale_delay` | 60 s ([`Multiplexing::DEFAULT_SCALE_DELAY`]) |
///
/// **Static** (`min == max`): all `max` connections start with the app and run until it
/// stops.
///
/// **Dynamic** (`min < max`): `boot` connections start; then, from librdkafka statistics
/// (so `statistics.interval.ms` must be above 0), the family is *stable* when every active
/// connection's group state is `up`, its join state `steady`, its last rebalance at least
/// `scale_delay` ago, the family's last change too, and every dynamic connection of the
/// same consumer group in the app has reported `up`/`steady` since the group's last change,
/// which was at least `scale_delay` ago. When stable: if more than `min` run and one holds
/// no partition, it is stopped (it commits and leaves the group; its partitions, if any
/// came meanwhile, move without loss); otherwise, if fewer than `max` run and one holds more
/// than one partition, one more is started. So a family changes at most once per its own
/// `scale_delay`, one change at a time per consumer group, never below `min`, never above
/// `max`. Each change is an event, `connection.multiplexing.scaled_up` or
/// `connection.multiplexing.scaled_down`, with its reason.
///
/// Dynamic multiplexing wants incremental rebalancing (`partition.assignment.strategy` =
/// `cooperative-sticky`, or `group.protocol=consumer`): otherwise each change revokes and
/// reassigns every partition of the group; the app emits `connection.multiplexing.warning`
/// and `info` says so.
///
/// Names: connection `i` is `{subscription group}#{i}` in events, statistics and thread
/// names; its `client.id` gets `-{subscription group}-{i}` appended (unique ids: identical
/// ones can make librdkafka's cooperative-sticky assignor spin, librdkafka #4783), and so
/// does a configured `group.instance.id` (static membership). A connection started again
/// takes the lowest free index, so names stay stable. With static membership, librdkafka
/// sends no LeaveGroup when a member closes (KIP-345): a stopped connection (which held no
/// partition) stays a member until `session.timeout.ms` passes.
///
/// Each connection prefetches on its own: with per-partition scheduling each has the app's
/// `prefetch_budget`, with poll scheduling librdkafka's `queued.max.messages.kbytes`; `info`
/// prints the total. Virtual partitions work inside each connection.
///
/// ```
/// use std::time::Duration;
/// use karafka_pro::Multiplexing;
///
/// // Static: 3 connections, always.
/// let fixed = Multiplexing::new(3);
/// assert!(!fixed.is_dynamic());
/// assert_eq!(fixed.boot_connections(), 3);
///
/// // Dynamic: between 1 and 4, starting with 2, changing at most every 30 s.
/// let scaled = Multiplexing::new(4).min(1).scale_delay(Duration::from_secs(30));
/// assert!(scaled.is_dynamic());
/// assert_eq!(scaled.boot_connections(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multiplexing {
    max: usize,
    min: Option<usize>,
    boot: Option<usize>,
    scale_delay: Duration,
}

impl Multiplexing {
    /// The default `scale_delay`: 60 s.
    pub const DEFAULT_SCALE_DELAY: Duration = Duration::from_secs(60);

    /// Up to `max` connections (at least 2); static unless [`min`](Self::min) is lower.
    pub fn new(max: usize) -> Self {
        Multiplexing {
            max,
            min: None,
            boot: None,
            scale_delay: Self::DEFAULT_SCALE_DELAY,
        }
    }

    /// Fewest connections (default `max`: static). Below `max`, the family scales.
    pub fn min(mut self, min: usize) -> Self {
        self.min = Some(min);
        self
    }

    /// Connections started with the app (default half of `max`, at least `min`).
    pub fn boot(mut self, boot: usize) -> Self {
        self.boot = Some(boot);
        self
    }

    /// How long the family (and its consumer group) must be stable before a change, and the
    /// least time between two of its changes (default 60 s, at least 1 s).
    pub fn scale_delay(mut self, delay: Duration) -> Self {
        self.scale_delay = delay;
        self
    }

    /// Most connections.
    pub fn max_connections(&self) -> usize {
        self.max
    }

    /// Fewest connections.
    pub fn min_connections(&self) -> usize {
        self.min.unwrap_or(self.max)
    }

    /// Connections started with the app.
    pub fn boot_connections(&self) -> usize {
        self.boot
            .unwrap_or_else(|| (self.max / 2).max(self.min_connections()))
    }

    /// Whether `boot` was set (else it follows `min` and `max`).
    pub fn boot_is_set(&self) -> bool {
        self.boot.is_some()
    }

    /// The delay between changes.
    pub fn scale_delay_value(&self) -> Duration {
        self.scale_delay
    }

    /// Whether the family scales while the app runs (`min < max`).
    pub fn is_dynamic(&self) -> bool {
        self.min_connections() < self.max
    }

    /// Why the family may not change now, or `None` when it is stable.
    fn unstable(&self, view: &FamilyView<'_>) -> Option<String> {
        let delay = self.scale_delay;
        let now = view.now;
        if now.saturating_duration_since(view.changed_at) < delay {
            return Some("the family changed less than scale_delay ago".into());
        }
        if now.saturating_duration_since(view.group_changed_at) < delay {
            return Some("the consumer group changed less than scale_delay ago".into());
        }
        let since = view.changed_at.max(view.group_changed_at);
        for c in view.connections {
            let Some(o) = &c.observed else {
                return Some(format!("{} has not reported statistics", c.name));
            };
            if o.at <= since || !o.is_steady() || o.rebalanced_ago(now) < delay {
                return Some(format!("{} is not steady for scale_delay", c.name));
            }
        }
        for c in view.group {
            match &c.observed {
                Some(o) if o.at > view.group_changed_at && o.is_steady() => {}
                _ => return Some(format!("{} of the consumer group is not steady", c.name)),
            }
        }
        None
    }
}

impl ConnectionPlan for Multiplexing {
    fn name(&self) -> &'static str {
        "multiplexing"
    }

    fn max(&self) -> usize {
        self.max
    }

    fn boot(&self) -> usize {
        self.boot_connections()
    }

    fn dynamic(&self) -> bool {
        self.is_dynamic()
    }

    fn check(&self, facts: &FamilyFacts<'_>, path: &str, v: &mut Violations) {
        crate::routing::features::multiplexing::check(self, facts, path, v);
    }

    fn describe(&self, facts: &FamilyFacts<'_>) -> Vec<String> {
        let _ = facts;
        if self.is_dynamic() {
            vec![format!(
                "multiplexing: dynamic, {}..={} connections (boot {}), scale_delay {:?}",
                self.min_connections(),
                self.max,
                self.boot_connections(),
                self.scale_delay
            )]
        } else {
            vec![format!("multiplexing: static, {} connections", self.max)]
        }
    }

    fn warnings(&self, facts: &FamilyFacts<'_>) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.is_dynamic() && !facts.incremental_rebalancing() {
            warnings.push(
                "dynamic multiplexing without incremental rebalancing: every connection \
                 started or stopped revokes and reassigns all partitions of the consumer group; \
                 set partition.assignment.strategy=cooperative-sticky (or \
                 group.protocol=consumer where the cluster supports KIP-848)"
                    .to_owned(),
            );
        }
        if self.is_dynamic() && facts.kafka.contains_key("group.instance.id") {
            warnings.push(
                "dynamic multiplexing with static membership (group.instance.id): librdkafka \
                 sends no LeaveGroup when a static member closes (KIP-345), so a stopped \
                 connection stays a member, and can be given partitions by a later rebalance, \
                 until session.timeout.ms passes; use static multiplexing (min = max) or no \
                 group.instance.id"
                    .to_owned(),
            );
        }
        warnings
    }

    fn decide(&self, view: &FamilyView<'_>) -> Option<Scale> {
        if self.unstable(view).is_some() {
            return None;
        }
        let active = view.connections.len();
        let assigned = |c: &karafka_consumer::connections::ConnectionView| {
            c.observed.as_ref().map_or(0, |o| o.assigned)
        };
        if active > self.min_connections() {
            if let Some(idle) = view.connections.iter().rev().find(|c| assigned(c) == 0) {
                return Some(Scale::Down {
                    connection: idle.index,
                    reason: format!(
                        "{} holds no partition; {active} running, min {}; stable for {:?}",
                        idle.name,
                        self.min_connections(),
                        self.scale_delay
                    ),
                });
            }
        }
        if active < self.max {
            if let Some(busy) = view.connections.iter().find(|c| assigned(c) > 1) {
                return Some(Scale::Up {
                    reason: format!(
                        "{} holds {} partitions; {active} running, max {}; stable for {:?}",
                        busy.name,
                        assigned(busy),
                        self.max,
                        self.scale_delay
                    ),
                });
            }
        }
        None
    }
}
