//! Middleware: code that sees (and may change) every message before it is validated and
//! sent.

use std::fmt;

use crate::message::Message;

/// Changes a message before it is validated and dispatched: add headers, set keys, route.
/// Middleware run in the order they were added, on the calling thread, for every message
/// (buffered ones when they are buffered). Closures `Fn(&mut Message)` are middleware.
///
/// ```
/// use karafka_producer::{Message, Producer};
///
/// let producer = Producer::builder()
///     .kafka("bootstrap.servers", "127.0.0.1:9092")
///     .middleware(|m: &mut Message| {
///         m.headers.append("app", "billing");
///     })
///     .build()
///     .unwrap();
/// # drop(producer);
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Changes `message` in place.
    fn call(&self, message: &mut Message);
}

impl<F: Fn(&mut Message) + Send + Sync + 'static> Middleware for F {
    fn call(&self, message: &mut Message) {
        self(message)
    }
}

pub(crate) struct Chain(pub(crate) Vec<Box<dyn Middleware>>);

impl Chain {
    pub(crate) fn run(&self, message: &mut Message) {
        for m in &self.0 {
            m.call(message);
        }
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} middleware", self.0.len())
    }
}
