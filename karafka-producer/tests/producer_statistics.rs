//! With `statistics.interval.ms` > 0, librdkafka's statistics arrive as `statistics.emitted`
//! events, decoded into the typed `Statistics` (client type, produced messages, brokers,
//! topics); without it, none are emitted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::builder;
use karafka_core::instrumentation::{Event, Statistics};
use karafka_producer::Message;
use karafka_testing::{TestBroker, unique_topic, wait_for};

#[test]
fn statistics_are_decoded_and_emitted() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("stats");
    broker.create_topic(&topic, 2).unwrap();
    let producer = builder(&broker)
        .id("stats-producer")
        .kafka("statistics.interval.ms", "100")
        .build()
        .unwrap();
    type Latest = Arc<Mutex<Option<(String, Arc<Statistics>)>>>;
    let latest: Latest = Arc::default();
    let sink = latest.clone();
    producer.monitor().subscribe_fn(move |e| {
        if let Event::StatisticsEmitted {
            source_id,
            statistics,
            ..
        } = e
        {
            *sink.lock().unwrap() = Some((source_id.to_string(), statistics.clone()));
        }
    });
    for i in 0..20 {
        producer
            .produce_sync(Message::new(topic.as_str(), format!("m{i}")))
            .unwrap();
    }
    let (source, stats) = wait_for(Duration::from_secs(10), || {
        latest
            .lock()
            .unwrap()
            .clone()
            .filter(|(_, s)| s.txmsgs >= 20 && s.topics.contains_key(&topic))
    })
    .expect("a statistics event counting the 20 messages");
    assert_eq!(source, "stats-producer");
    assert_eq!(stats.client_type, "producer");
    assert!(!stats.brokers.is_empty());
    let partitions = &stats.topics[&topic].partitions;
    let sent: u64 = partitions.values().map(|p| p.txmsgs).sum();
    assert_eq!(sent, 20, "per-partition counts add up: {partitions:?}");
}

#[test]
fn no_interval_no_statistics() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("no-stats");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = common::Recorder::attach(producer.monitor());
    producer
        .produce_sync(Message::new(topic.as_str(), "x"))
        .unwrap();
    let any = karafka_testing::wait_until(Duration::from_millis(300), || {
        events.count("statistics.emitted") > 0
    });
    assert!(
        any.is_err(),
        "statistics arrived without statistics.interval.ms"
    );
}
