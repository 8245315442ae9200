//! Helpers shared by the consumer's broker tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karafka_consumer::{AppBuilder, Scheduling};
use karafka_core::instrumentation::{Event, Monitor};
use karafka_producer::{Message, Producer};
use karafka_testing::TestBroker;

/// An app builder on `broker`, with the test session timeout and quick retries.
pub fn app(broker: &TestBroker, group: &str) -> AppBuilder {
    app_except(broker, group, &[])
}

/// The scheduling the broker tests run with: `KARAFKA_TEST_SCHEDULING` (`partition`, the
/// default, or `poll`; CI runs them both ways).
pub fn scheduling() -> Scheduling {
    std::env::var("KARAFKA_TEST_SCHEDULING")
        .ok()
        .map(|s| s.parse().expect("KARAFKA_TEST_SCHEDULING"))
        .unwrap_or_default()
}

/// [`app`] without the test settings named in `skip` (`session.timeout.ms` and
/// `heartbeat.interval.ms` do not apply to `group.protocol=consumer`).
pub fn app_except(broker: &TestBroker, group: &str, skip: &[&str]) -> AppBuilder {
    let settings = broker.consumer_settings(group);
    let mut builder = karafka_consumer::App::builder()
        .name(group)
        .scheduling(scheduling())
        .pause_timeout(Duration::from_millis(100))
        .pause_max_timeout(Duration::from_millis(400))
        .shutdown_timeout(Duration::from_secs(20));
    for (k, v) in settings.iter() {
        if k != "group.id" && !skip.contains(&k) {
            builder = builder.kafka(k, v);
        }
    }
    builder
}

/// Produces `count` messages (`prefix-<i>`, key `k<i % keys>`) to `topic` and waits for them.
pub fn produce(broker: &TestBroker, topic: &str, count: usize, prefix: &str) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .build()
        .unwrap();
    let messages = (0..count)
        .map(|i| Message::new(topic, format!("{prefix}-{i}")).key(format!("k{}", i % 16)))
        .collect();
    producer.produce_many_sync(messages).unwrap();
    producer.close().unwrap();
}

/// The group's committed offsets (next offset to read) per partition of `topic`.
pub fn committed(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    broker
        .committed_offsets(group)
        .unwrap()
        .of(topic, partitions)
}

/// Records events by name.
#[derive(Clone, Default)]
pub struct Recorder {
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn attach(monitor: &Monitor) -> Self {
        let r = Recorder::default();
        let sink = r.events.clone();
        monitor.subscribe_fn(move |e| sink.lock().unwrap().push(e.clone()));
        r
    }
    pub fn count(&self, name: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.name() == name)
            .count()
    }
    pub fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.name().to_owned())
            .collect()
    }
}
