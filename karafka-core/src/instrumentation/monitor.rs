//! The monitor: subscription and synchronous delivery.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::event::{ErrorOccurred, Event};

/// Receives events. Every method has a default no-op body: implement what you need.
///
/// [`on_event`](Listener::on_event) sees every event; by default it routes
/// `error.occurred` to [`on_error`](Listener::on_error). Override `on_event` and `match`
/// on [`Event`] for anything else.
///
/// Listeners run synchronously on the emitting thread (a listener thread of the consumer,
/// a worker, the producer's delivery thread); keep them fast. A panicking listener is
/// caught and logged; it does not take the engine down.
pub trait Listener: Send + Sync + 'static {
    /// Called for every event.
    fn on_event(&self, event: &Event) {
        if let Event::ErrorOccurred(error) = event {
            self.on_error(error);
        }
    }

    /// Called for `error.occurred` (by the default `on_event`).
    fn on_error(&self, error: &ErrorOccurred) {
        let _ = error;
    }
}

/// A listener made of a closure (see [`Monitor::subscribe_fn`]).
pub struct FnListener<F>(pub F);

impl<F: Fn(&Event) + Send + Sync + 'static> Listener for FnListener<F> {
    fn on_event(&self, event: &Event) {
        (self.0)(event)
    }
}

impl<F> fmt::Debug for FnListener<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnListener")
    }
}

/// Identifies a subscription, for [`Monitor::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

#[derive(Clone)]
struct Entry {
    id: SubscriptionId,
    listener: Arc<dyn Listener>,
}

#[derive(Default)]
struct Shared {
    // Emitting takes the read lock only long enough to clone the Arc, so listeners may
    // subscribe or unsubscribe from inside a callback without deadlocking.
    listeners: RwLock<Arc<[Entry]>>,
    count: AtomicUsize,
    next_id: AtomicU64,
}

/// Delivers events to listeners. A cheap `Clone` handle: clones share listeners.
///
/// Each producer and app takes a monitor (its own by default); pass one monitor to several
/// components to observe them together.
#[derive(Clone, Default)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl Monitor {
    /// A monitor without listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listener; it sees every event emitted from now on.
    pub fn subscribe(&self, listener: impl Listener) -> SubscriptionId {
        self.subscribe_arc(Arc::new(listener))
    }

    /// Adds a shared listener (keep a clone to read its state).
    pub fn subscribe_arc(&self, listener: Arc<dyn Listener>) -> SubscriptionId {
        let id = SubscriptionId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let mut guard = self
            .shared
            .listeners
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut entries: Vec<Entry> = guard.iter().cloned().collect();
        entries.push(Entry { id, listener });
        self.shared.count.store(entries.len(), Ordering::Release);
        *guard = entries.into();
        id
    }

    /// Adds a closure listener.
    ///
    /// ```
    /// # use karafka_core::instrumentation::{Event, Monitor};
    /// let monitor = Monitor::new();
    /// monitor.subscribe_fn(|event| println!("{event}"));
    /// ```
    pub fn subscribe_fn(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> SubscriptionId {
        self.subscribe(FnListener(f))
    }

    /// Removes a listener; returns whether it was subscribed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut guard = self
            .shared
            .listeners
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = guard.len();
        let entries: Vec<Entry> = guard.iter().filter(|e| e.id != id).cloned().collect();
        let removed = entries.len() != before;
        self.shared.count.store(entries.len(), Ordering::Release);
        *guard = entries.into();
        removed
    }

    /// Number of listeners.
    #[inline]
    pub fn listener_count(&self) -> usize {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Whether anyone listens (lets hot paths skip building events nobody reads).
    #[inline]
    pub fn has_listeners(&self) -> bool {
        self.listener_count() > 0
    }

    /// Delivers `event` to every listener, in subscription order, on this thread.
    pub fn emit(&self, event: Event) {
        if !self.has_listeners() {
            return;
        }
        let entries = Arc::clone(
            &self
                .shared
                .listeners
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for entry in entries.iter() {
            let delivered = catch_unwind(AssertUnwindSafe(|| entry.listener.on_event(&event)));
            if delivered.is_err() {
                tracing::error!(
                    target: "karafka",
                    event = event.name(),
                    "an instrumentation listener panicked; the event was skipped for it"
                );
            }
        }
    }

    /// Builds the event only when someone listens, then emits it.
    pub fn emit_with(&self, event: impl FnOnce() -> Event) {
        if self.has_listeners() {
            self.emit(event());
        }
    }

    /// Runs `block`, then emits the event `event` builds from the block's result and how long
    /// the block took. Returns the block's result.
    ///
    /// ```
    /// # use karafka_core::instrumentation::{Event, Monitor, CustomEvent};
    /// # use std::time::Duration;
    /// let monitor = Monitor::new();
    /// monitor.subscribe_fn(|e| assert!(e.duration().is_some()));
    /// let sum = monitor.instrument(
    ///     || (1..=10).sum::<u32>(),
    ///     |_sum, duration| {
    ///         let Event::Custom(mut e) = Event::custom("app.sum") else { unreachable!() };
    ///         e.duration = Some(duration);
    ///         Event::Custom(e)
    ///     },
    /// );
    /// assert_eq!(sum, 55);
    /// ```
    pub fn instrument<T>(
        &self,
        block: impl FnOnce() -> T,
        event: impl FnOnce(&T, Duration) -> Event,
    ) -> T {
        let started = Instant::now();
        let out = block();
        let took = started.elapsed();
        self.emit_with(|| event(&out, took));
        out
    }

    /// The async form of [`instrument`](Self::instrument): awaits `future`, timing it.
    pub async fn instrument_async<F: Future>(
        &self,
        future: F,
        event: impl FnOnce(&F::Output, Duration) -> Event,
    ) -> F::Output {
        let started = Instant::now();
        let out = future.await;
        let took = started.elapsed();
        self.emit_with(|| event(&out, took));
        out
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("listeners", &self.listener_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::instrumentation::{CustomEvent, ErrorKind};

    fn custom(name: &'static str, duration: Option<Duration>) -> Event {
        Event::Custom(CustomEvent {
            name: name.into(),
            duration,
            payload: None,
        })
    }

    #[derive(Default)]
    struct Recorder {
        names: Mutex<Vec<String>>,
        errors: AtomicUsize,
    }

    impl Listener for Arc<Recorder> {
        fn on_event(&self, event: &Event) {
            self.names.lock().unwrap().push(event.name().to_owned());
            if let Event::ErrorOccurred(e) = event {
                self.on_error(e);
            }
        }
        fn on_error(&self, _: &ErrorOccurred) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn subscribe_and_unsubscribe() {
        let monitor = Monitor::new();
        let first = Arc::new(Recorder::default());
        let second = Arc::new(Recorder::default());
        let id1 = monitor.subscribe(first.clone());
        let id2 = monitor.subscribe(second.clone());
        assert_eq!(monitor.listener_count(), 2);

        monitor.emit(custom("a.one", None));
        assert!(monitor.unsubscribe(id1));
        assert!(
            !monitor.unsubscribe(id1),
            "second unsubscribe must report false"
        );
        monitor.emit(custom("a.two", None));

        assert_eq!(*first.names.lock().unwrap(), ["a.one"]);
        assert_eq!(*second.names.lock().unwrap(), ["a.one", "a.two"]);
        assert!(monitor.unsubscribe(id2));
        assert!(!monitor.has_listeners());
        monitor.emit(custom("a.three", None));
        assert_eq!(second.names.lock().unwrap().len(), 2);
    }

    #[test]
    fn default_on_event_routes_errors_to_on_error() {
        #[derive(Default)]
        struct OnlyErrors(AtomicUsize);
        impl Listener for Arc<OnlyErrors> {
            fn on_error(&self, error: &ErrorOccurred) {
                assert_eq!(error.kind, ErrorKind::ProducerDelivery);
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let monitor = Monitor::new();
        let listener = Arc::new(OnlyErrors::default());
        monitor.subscribe(listener.clone());
        monitor.emit(custom("x.y", None));
        monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
            ErrorKind::ProducerDelivery,
            std::io::Error::other("nope"),
        )));
        assert_eq!(listener.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn instrument_times_the_block() {
        let monitor = Monitor::new();
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        monitor.subscribe_fn(move |e| *sink.lock().unwrap() = e.duration());
        let out = monitor.instrument(
            || {
                std::thread::sleep(Duration::from_millis(20));
                42
            },
            |out, d| {
                assert_eq!(*out, 42);
                custom("t.block", Some(d))
            },
        );
        assert_eq!(out, 42);
        let took = seen.lock().unwrap().expect("event with duration");
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn instrument_async_times_the_future() {
        let monitor = Monitor::new();
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        monitor.subscribe_fn(move |e| *sink.lock().unwrap() = e.duration());
        let rt = tokio_free_block_on(monitor.instrument_async(
            async {
                std::thread::sleep(Duration::from_millis(15));
                "done"
            },
            |_, d| custom("t.async", Some(d)),
        ));
        assert_eq!(rt, "done");
        assert!(seen.lock().unwrap().unwrap() >= Duration::from_millis(15));
    }

    #[test]
    fn no_listener_means_no_event_built() {
        let monitor = Monitor::new();
        monitor.emit_with(|| panic!("built an event nobody listens to"));
        let _ = monitor.instrument(|| 1, |_, _| panic!("built an event nobody listens to"));
    }

    #[test]
    fn a_panicking_listener_does_not_stop_delivery() {
        let monitor = Monitor::new();
        monitor.subscribe_fn(|_| panic!("listener bug"));
        let after = Arc::new(Recorder::default());
        monitor.subscribe(after.clone());
        monitor.emit(custom("p.q", None));
        assert_eq!(after.names.lock().unwrap().len(), 1);
    }

    #[test]
    fn listener_may_unsubscribe_itself_while_handling() {
        let monitor = Monitor::new();
        let id_slot = Arc::new(Mutex::new(None::<SubscriptionId>));
        let (m, slot) = (monitor.clone(), id_slot.clone());
        let id = monitor.subscribe_fn(move |_| {
            if let Some(id) = *slot.lock().unwrap() {
                m.unsubscribe(id);
            }
        });
        *id_slot.lock().unwrap() = Some(id);
        monitor.emit(custom("s.t", None));
        assert_eq!(monitor.listener_count(), 0);
    }

    /// Polls a future that never waits (the test futures are ready at once).
    fn tokio_free_block_on<F: Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }
}
