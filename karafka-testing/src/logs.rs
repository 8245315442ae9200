//! Capturing `tracing` events in a test, to check what a client logged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use crate::{WaitTimeout, wait_for};

/// One captured `tracing` event.
#[derive(Debug, Clone)]
pub struct CapturedEvent {
    /// Its target (`librdkafka` for librdkafka's own log lines).
    pub target: String,
    /// Its level.
    pub level: tracing::Level,
    /// The formatted message.
    pub message: String,
    /// Every other field, formatted with `Debug` (strings without quotes).
    pub fields: BTreeMap<String, String>,
}

impl CapturedEvent {
    /// The field `name`, if the event has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl fmt::Display for CapturedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.level, self.target, self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Every `tracing` event of the process (all levels, all threads), kept in memory.
///
/// [`LogCapture::install`] sets it as the global subscriber once per process (a test binary
/// that installs another global subscriber cannot use it). librdkafka logs on its own
/// threads, so a thread-local subscriber would miss its lines.
///
/// ```no_run
/// use std::time::Duration;
/// use karafka_testing::LogCapture;
///
/// let logs = LogCapture::install().unwrap();
/// // ... create a client pointed at a broker that refuses connections ...
/// let line = logs
///     .wait_for(Duration::from_secs(10), |e| e.target == "librdkafka")
///     .unwrap();
/// println!("{line}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    events: Arc<Mutex<Vec<CapturedEvent>>>,
}

impl LogCapture {
    /// The process's capture: installs the global subscriber on the first call. Fails when
    /// another global subscriber was installed first.
    pub fn install() -> Result<&'static LogCapture, String> {
        static INSTALLED: OnceLock<Result<LogCapture, String>> = OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let capture = LogCapture::default();
                let subscriber = tracing_subscriber::registry().with(Layer(capture.clone()));
                tracing::subscriber::set_global_default(subscriber)
                    .map(|()| capture)
                    .map_err(|e| format!("another global tracing subscriber is installed: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// What was captured so far.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until an event matching `matches` was captured (also one captured before the
    /// call), and returns it.
    pub fn wait_for(
        &self,
        deadline: Duration,
        matches: impl Fn(&CapturedEvent) -> bool,
    ) -> Result<CapturedEvent, WaitTimeout> {
        wait_for(deadline, || {
            self.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|e| matches(e))
                .cloned()
        })
    }
}

struct Layer(LogCapture);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let captured = CapturedEvent {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            message: visitor.message,
            fields: visitor.fields,
        };
        self.0
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(captured);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
}
