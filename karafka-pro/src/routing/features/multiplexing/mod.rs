//! The routing of multiplexing: `.multiplexing(...)` on a named subscription group, and its
//! contract.

use std::sync::Arc;
use std::time::Duration;

use karafka_consumer::Consumer;
use karafka_consumer::connections::FamilyFacts;
use karafka_consumer::routing::{SubscriptionGroupBuilder, TopicBuilder};
use karafka_core::Violations;

use crate::connection::multiplexing::Multiplexing;

/// Adds `.multiplexing(...)` to the subscription group builder.
///
/// Multiplexing is set per named subscription group. The method exists on the topic builder
/// too, only so that `build()` says where it belongs instead of a compile error about a
/// missing method.
pub trait MultiplexingSubscriptionGroup: Sized {
    /// Runs the subscription group with up to `config`'s `max` connections (see
    /// [`Multiplexing`]).
    fn multiplexing(self, config: Multiplexing) -> Self;
}

impl MultiplexingSubscriptionGroup for SubscriptionGroupBuilder {
    fn multiplexing(self, config: Multiplexing) -> Self {
        self.connections(Arc::new(config))
    }
}

impl<C: Consumer> MultiplexingSubscriptionGroup for TopicBuilder<C> {
    fn multiplexing(self, config: Multiplexing) -> Self {
        self.misplaced(
            "multiplexing",
            format!(
                "is set on a topic; multiplexing belongs to a named subscription group: \
                 `.subscription_group(\"name\", |sg| sg.multiplexing(Multiplexing::new({})).topic(...))`",
                config.max_connections()
            ),
        )
    }
}

/// The contract of multiplexing on a subscription group (at `build()`).
pub(crate) fn check(
    config: &Multiplexing,
    facts: &FamilyFacts<'_>,
    path: &str,
    v: &mut Violations,
) {
    let path = format!("{path}.multiplexing");
    let (min, max, boot) = (
        config.min_connections(),
        config.max_connections(),
        config.boot_connections(),
    );
    v.check(max >= 2, format!("{path}.max"), || {
        format!(
            "is {max}: multiplexing needs at least 2 connections (1 is a plain subscription \
             group: remove `.multiplexing(...)`)"
        )
    });
    v.check(min >= 1, format!("{path}.min"), || {
        "is 0: a subscription group keeps at least one connection".into()
    });
    v.check(min <= max, format!("{path}.min"), || {
        format!("is {min}, above max ({max}); min ≤ boot ≤ max")
    });
    // A boot left to its default follows min and max: only checked when they are valid.
    if config.boot_is_set() || (min <= max && min >= 1) {
        v.check(min <= boot && boot <= max, format!("{path}.boot"), || {
            format!("is {boot}; it must be between min ({min}) and max ({max})")
        });
    }
    v.check(
        config.scale_delay_value() >= Duration::from_secs(1),
        format!("{path}.scale_delay"),
        || {
            format!(
                "is {:?}; it must be at least 1 s (changes are judged from librdkafka statistics \
                 and each one rebalances the consumer group)",
                config.scale_delay_value()
            )
        },
    );
    if config.is_dynamic() {
        v.check(
            !facts.statistics_interval().is_zero(),
            format!("{path}.statistics.interval.ms"),
            || {
                format!(
                    "is 0 (off), but dynamic multiplexing (min {min} < max {max}) decides from \
                     librdkafka statistics: set `.kafka(\"statistics.interval.ms\", \"5000\")` \
                     (well below scale_delay) on the app or the subscription group, or make it \
                     static with min = max"
                )
            },
        );
    }
}
