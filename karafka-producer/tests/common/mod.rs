//! Helpers shared by the producer's broker tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{Event, Monitor};
use karafka_producer::{Producer, ProducerBuilder};
use karafka_testing::{TestBroker, client_config, unique_group};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, OwnedMessage};

/// A producer builder pointed at `broker`, with a short linger so tests are quick.
pub fn builder(broker: &TestBroker) -> ProducerBuilder {
    Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "1")
}

/// Reads `topic` from the beginning with a raw rdkafka consumer until `want` messages came
/// (or the deadline passed); returns them in arrival order.
pub fn read_back(broker: &TestBroker, topic: &str, want: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer =
        client_config(&broker.consumer_settings(&unique_group("read-back")))
            .create()
            .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let deadline = Instant::now() + broker.join_deadline();
    while messages.len() < want && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result.expect("consume").detach());
        }
    }
    messages
}

/// The payload of a read-back message as a string.
pub fn payload(m: &OwnedMessage) -> String {
    m.payload()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

/// All header values of `key` in a read-back message.
pub fn header_values(m: &OwnedMessage, key: &str) -> Vec<String> {
    m.headers()
        .map(|h| {
            h.iter()
                .filter(|e| e.key == key)
                .map(|e| String::from_utf8_lossy(e.value.unwrap_or_default()).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Records every event's name (and keeps the events).
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn attach(monitor: &Monitor) -> Self {
        let recorder = Recorder::default();
        let sink = recorder.events.clone();
        monitor.subscribe_fn(move |e| sink.lock().unwrap().push(e.clone()));
        recorder
    }

    pub fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.name().to_owned())
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.names().iter().filter(|n| *n == name).count()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The `error.occurred` kinds, in order.
    pub fn error_kinds(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::ErrorOccurred(err) => Some(err.kind.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }
}
