//! The routing of swarm mode: `.swarm(Swarm)` on the app builder, `.swarm(nodes)` on a
//! topic; the contract is [`Swarm`]'s `check` (run at `build()`).

use std::sync::Arc;

use karafka_consumer::routing::TopicBuilder;
use karafka_consumer::swarm::Nodes;
use karafka_consumer::{AppBuilder, Consumer};

use crate::swarm::Swarm;

/// Adds `.swarm(...)` to the app builder.
pub trait SwarmApp: Sized {
    /// Lets `my-app swarm` run the app in supervised node processes (see
    /// [`crate::swarm`]).
    fn swarm(self, swarm: Swarm) -> Self;
}

impl SwarmApp for AppBuilder {
    fn swarm(self, swarm: Swarm) -> Self {
        self.supervision(Arc::new(swarm))
    }
}

/// Adds `.swarm(nodes)` to the topic builder.
pub trait SwarmTopic: Sized {
    /// Consumes the topic only on these swarm nodes (default: all): `[0, 2]`, `0..2`,
    /// `0..=1`, `1..` (node 1 and after). `build()` refuses ids the swarm does not have, and
    /// a node left with no topic.
    fn swarm(self, nodes: impl Into<Nodes>) -> Self;
}

impl<C: Consumer> SwarmTopic for TopicBuilder<C> {
    fn swarm(self, nodes: impl Into<Nodes>) -> Self {
        self.swarm_nodes(nodes)
    }
}
