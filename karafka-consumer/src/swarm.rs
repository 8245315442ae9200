//! The seam of swarm mode: `my-app swarm` runs a supervisor process and several node
//! processes, each running the app (karafka-pro's `Swarm` implements [`Supervision`]; see
//! its docs for the behaviour).
//!
//! This crate owns what swarm mode needs of an app: the [`Supervision`] an app is built with
//! ([`AppBuilder::supervision`](crate::AppBuilder::supervision)), the [`Nodes`] a topic is
//! limited to ([`TopicRoute::swarm_nodes`](crate::routing::TopicRoute::swarm_nodes)), the
//! app as one node runs it ([`App::for_node`](crate::App::for_node)) and the facts a node
//! reports from ([`Running::liveness`](crate::Running::liveness)). Without a supervision,
//! `my-app swarm` says how to get one.

pub use crate::app::Supervision;
pub use crate::routing::Nodes;
