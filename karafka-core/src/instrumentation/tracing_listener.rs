//! A listener that logs events through `tracing`.

use tracing::Level;

use super::event::{Event, SwarmEvent};
use super::monitor::Listener;

/// Logs every event through `tracing` under the target `karafka`, at a level that fits it:
/// errors at `ERROR`; lifecycle changes at `INFO`; per-batch and per-message events at
/// `DEBUG`; statistics and custom events at `TRACE`. Each log line carries the event's name
/// as the `event` field and its one-line summary as the message.
///
/// ```
/// use karafka_core::instrumentation::{Monitor, TracingListener};
/// let monitor = Monitor::new();
/// monitor.subscribe(TracingListener::new());
/// ```
#[derive(Debug, Clone, Default)]
pub struct TracingListener {
    _private: (),
}

impl TracingListener {
    /// A tracing listener.
    pub fn new() -> Self {
        Self::default()
    }

    /// The level `event` is logged at.
    pub fn level(event: &Event) -> Level {
        match event {
            Event::ErrorOccurred(_) => Level::ERROR,
            Event::ProducerLifecycle { .. }
            | Event::Rebalance { .. }
            | Event::AppStatus { .. }
            | Event::ConnectionScaled { .. } => Level::INFO,
            Event::Swarm(SwarmEvent::NodeReported { .. } | SwarmEvent::Control { .. }) => {
                Level::DEBUG
            }
            Event::Swarm(SwarmEvent::Stopping { .. } | SwarmEvent::Terminating { .. }) => {
                Level::WARN
            }
            Event::Swarm(_) => Level::INFO,
            Event::Retry { .. } | Event::DlqDispatched { .. } | Event::ConnectionWarning { .. } => {
                Level::WARN
            }
            Event::Paused { .. } | Event::Resumed { .. } | Event::ConsumerHook { .. } => {
                Level::DEBUG
            }
            Event::Consumed { .. } | Event::BatchReceived { .. } => Level::DEBUG,
            Event::Consume { .. } | Event::WorkerProcess { .. } | Event::WorkerProcessed { .. } => {
                Level::TRACE
            }
            Event::MessagesProduced { .. }
            | Event::MessagesBuffered { .. }
            | Event::BufferFlushed { .. }
            | Event::Transaction { .. } => Level::DEBUG,
            Event::MessageAcknowledged { .. } | Event::StatisticsEmitted { .. } => Level::TRACE,
            _ => Level::TRACE,
        }
    }
}

impl Listener for TracingListener {
    fn on_event(&self, event: &Event) {
        let name = event.name();
        match Self::level(event) {
            Level::ERROR => tracing::error!(target: "karafka", event = name, "{event}"),
            Level::WARN => tracing::warn!(target: "karafka", event = name, "{event}"),
            Level::INFO => tracing::info!(target: "karafka", event = name, "{event}"),
            Level::DEBUG => tracing::debug!(target: "karafka", event = name, "{event}"),
            _ => tracing::trace!(target: "karafka", event = name, "{event}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::instrumentation::{ErrorKind, ErrorOccurred, Monitor};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logs_errors_at_error_level_with_event_name() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let monitor = Monitor::new();
            monitor.subscribe(TracingListener::new());
            monitor.emit(Event::ErrorOccurred(ErrorOccurred::new(
                ErrorKind::DlqDispatch,
                io::Error::other("dlq topic missing"),
            )));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("event=\"error.occurred\""), "{text}");
        assert!(
            text.contains("[consumer.dlq.dispatch.error]: dlq topic missing"),
            "{text}"
        );
    }
}
