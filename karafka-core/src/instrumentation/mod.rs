//! Instrumentation: a [`Monitor`] that delivers typed [`Event`]s to [`Listener`]s.
//!
//! Every part of karafka-rs reports what it does through the monitor it was built with:
//! the producer (`producer.*`, `message.*`), the consumer engine (`consumer.*`,
//! `connection.*`, `worker.*`), errors (`error.occurred`, with a typed [`ErrorKind`]) and
//! librdkafka statistics. Events are delivered synchronously on the thread that emits them,
//! in subscription order; a slow listener should hand work off itself (to a channel).
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use karafka_core::instrumentation::{Event, ErrorKind, ErrorOccurred, Monitor};
//!
//! let monitor = Monitor::new();
//! let errors = Arc::new(AtomicUsize::new(0));
//! let seen = errors.clone();
//! let id = monitor.subscribe_fn(move |event| {
//!     if event.name() == "error.occurred" {
//!         seen.fetch_add(1, Ordering::Relaxed);
//!     }
//! });
//!
//! monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
//!     ErrorKind::Librdkafka,
//!     std::io::Error::other("broker down"),
//! )));
//! assert_eq!(errors.load(Ordering::Relaxed), 1);
//! assert!(monitor.unsubscribe(id));
//! ```

mod event;
mod monitor;
pub mod statistics;
mod tracing_listener;

pub use event::{
    AppStatus, AssignmentChange, CustomEvent, Dispatch, ErrorKind, ErrorOccurred, Event, JobKind,
    NodeState, NodeStatus, PauseReason, ProducerStage, ScaleDirection, SwarmEvent,
    TransactionStage,
};
pub use monitor::{FnListener, Listener, Monitor, SubscriptionId};
pub use statistics::Statistics;
pub use tracing_listener::TracingListener;
