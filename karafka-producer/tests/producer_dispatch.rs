//! Every dispatch API delivers to a real broker (embedded or `KARAFKA_TEST_BROKERS`):
//! `produce_sync` and `produce_async` return reports with partition, offset and label;
//! `produce_many_*` deliver every message; keys, headers with repeated keys, timestamps and
//! tombstones arrive as sent; a partition key pins a partition; one client serves many
//! topics and threads.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Recorder, builder, header_values, payload, read_back};
use karafka_core::instrumentation::Event;
use karafka_producer::{Label, Message};
use karafka_testing::{TestBroker, unique_topic};
use rdkafka::Message as _;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn produce_sync_reports_partition_offset_and_label() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("sync");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = Recorder::attach(producer.monitor());

    let first = producer
        .produce_sync(Message::new(topic.as_str(), "one").label("first"))
        .unwrap();
    let second = producer
        .produce_sync(Message::new(topic.as_str(), "two").label(Label::new(2_u32)))
        .unwrap();
    assert_eq!(&*first.topic, topic);
    assert_eq!((first.partition, first.offset), (0, 0));
    assert_eq!((second.partition, second.offset), (0, 1));
    assert_eq!(first.label.unwrap().as_str(), Some("first"));
    assert_eq!(second.label.unwrap().get::<u32>(), Some(&2));

    let names = events.names();
    assert_eq!(
        names.first().map(String::as_str),
        Some("producer.connected")
    );
    assert_eq!(events.count("message.produced_sync"), 2);
    assert_eq!(events.count("message.acknowledged"), 2);
    producer.close().unwrap();
    assert_eq!(
        events.names().last().map(String::as_str),
        Some("producer.closed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_async_handles_can_be_awaited_or_waited_on() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("async");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = Recorder::attach(producer.monitor());

    let awaited = producer
        .produce_async(Message::new(topic.as_str(), "awaited"))
        .unwrap()
        .await
        .unwrap();
    let handle = producer
        .produce_async(Message::new(topic.as_str(), "waited"))
        .unwrap();
    let waited = tokio::task::spawn_blocking(move || handle.wait(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(awaited.offset + 1, waited.offset);
    assert_eq!(events.count("message.produced_async"), 2);

    let seen: Vec<String> = read_back(&broker, &topic, 2).iter().map(payload).collect();
    assert_eq!(seen, ["awaited", "waited"]);
}

#[test]
fn produce_many_delivers_every_message_in_order_per_partition() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("many");
    broker.create_topic(&topic, 3).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = Recorder::attach(producer.monitor());

    let batch: Vec<Message> = (0..300)
        .map(|i| {
            Message::new(topic.as_str(), format!("m{i}"))
                .partition(i % 3)
                .label(format!("l{i}"))
        })
        .collect();
    let reports = producer.produce_many_sync(batch).unwrap();
    assert_eq!(reports.len(), 300);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.partition, (i % 3) as i32);
        assert_eq!(
            r.offset,
            (i / 3) as i64,
            "offsets grow per partition in send order"
        );
        assert_eq!(
            r.label.as_ref().unwrap().as_str(),
            Some(format!("l{i}").as_str())
        );
    }

    let more: Vec<Message> = (300..600)
        .map(|i| Message::new(topic.as_str(), format!("m{i}")))
        .collect();
    let delivery = producer.produce_many_async(more).unwrap();
    assert_eq!(delivery.len(), 300);
    let reports = delivery.wait(WAIT).unwrap();
    assert_eq!(reports.len(), 300);
    assert_eq!(events.count("messages.produced_sync"), 1);
    assert_eq!(events.count("messages.produced_async"), 1);
    assert_eq!(events.count("message.acknowledged"), 600);

    let seen = read_back(&broker, &topic, 600);
    assert_eq!(seen.len(), 600);
}

#[test]
fn keys_headers_timestamps_and_tombstones_arrive_as_sent() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("fields");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();

    producer
        .produce_sync(
            Message::new(topic.as_str(), "payload")
                .key("k1")
                .header("tag", "red")
                .header("tag", "blue")
                .header("trace", "t-1")
                .timestamp_millis(1_700_000_000_123),
        )
        .unwrap();
    producer
        .produce_sync(Message::tombstone(topic.as_str(), "k1"))
        .unwrap();

    let seen = read_back(&broker, &topic, 2);
    assert_eq!(seen.len(), 2);
    let m = &seen[0];
    assert_eq!(m.key(), Some(b"k1".as_slice()));
    assert_eq!(payload(m), "payload");
    assert_eq!(header_values(m, "tag"), ["red", "blue"]);
    assert_eq!(header_values(m, "trace"), ["t-1"]);
    assert_eq!(m.timestamp().to_millis(), Some(1_700_000_000_123));
    let tombstone = &seen[1];
    assert_eq!(tombstone.key(), Some(b"k1".as_slice()));
    assert!(
        tombstone.payload().is_none(),
        "a tombstone has a null payload"
    );
}

#[test]
fn a_partition_key_always_picks_the_same_partition() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("pkey");
    broker.create_topic(&topic, 8).unwrap();
    let producer = builder(&broker).build().unwrap();

    let mut by_key = std::collections::HashMap::new();
    for round in 0..3 {
        for key in ["alpha", "beta", "gamma", "delta", "epsilon"] {
            let report = producer
                .produce_sync(
                    Message::new(topic.as_str(), format!("{key}-{round}")).partition_key(key),
                )
                .unwrap();
            let first = *by_key.entry(key).or_insert(report.partition);
            assert_eq!(report.partition, first, "key {key} moved partitions");
        }
    }
    let distinct: std::collections::HashSet<_> = by_key.values().collect();
    assert!(
        distinct.len() > 1,
        "five keys all hashed to one of 8 partitions: {by_key:?}"
    );

    // librdkafka's own partitioner places the same key (as a message key) on the same partition.
    for (key, partition) in &by_key {
        let report = producer
            .produce_sync(Message::new(topic.as_str(), "by-key").key(*key))
            .unwrap();
        assert_eq!(
            report.partition, *partition,
            "partition key and key disagree for {key}"
        );
    }
}

#[test]
fn one_client_serves_many_topics_and_threads() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topics: Vec<String> = (0..10)
        .map(|i| unique_topic(&format!("shared-{i}")))
        .collect();
    for t in &topics {
        broker.create_topic(t, 1).unwrap();
    }
    let producer = builder(&broker)
        .kafka("statistics.interval.ms", "100")
        .build()
        .unwrap();
    let stats_names = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let sink = stats_names.clone();
    let seen_topics = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let topics_sink = seen_topics.clone();
    producer.monitor().subscribe_fn(move |e| {
        if let Event::StatisticsEmitted { statistics, .. } = e {
            sink.lock().unwrap().insert(statistics.name.clone());
            topics_sink
                .lock()
                .unwrap()
                .extend(statistics.topics.keys().cloned());
        }
    });

    std::thread::scope(|s| {
        for thread in 0..4 {
            let producer = producer.clone();
            let topics = &topics;
            s.spawn(move || {
                for (i, t) in topics.iter().enumerate() {
                    producer
                        .produce_sync(Message::new(t.as_str(), format!("{thread}-{i}")))
                        .unwrap();
                }
            });
        }
    });
    karafka_testing::wait_until(Duration::from_secs(10), || {
        let seen = seen_topics.lock().unwrap();
        topics.iter().all(|t| seen.contains(t))
    })
    .expect("statistics should list every topic");
    let names = stats_names.lock().unwrap().clone();
    assert_eq!(names.len(), 1, "more than one librdkafka client: {names:?}");
    for t in &topics {
        assert_eq!(read_back(&broker, t, 4).len(), 4);
    }
}
