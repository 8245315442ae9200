//! The broker fixtures carry real traffic: 10k messages produced with the raw rdkafka client
//! to a 4-partition topic created through the fixtures all come back to a group consumer, on
//! the embedded cluster and on any external broker (`KARAFKA_TEST_BROKERS`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use karafka_testing::{TestBroker, client_config, unique_group, unique_topic};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

const MESSAGES: usize = 10_000;
const PARTITIONS: i32 = 4;

#[test]
fn ten_thousand_messages_make_the_round_trip() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("round-trip");
    broker
        .create_topic(&topic, PARTITIONS)
        .expect("create topic");

    let producer: ThreadedProducer<DefaultProducerContext> = client_config(
        &broker
            .producer_settings()
            .with("linger.ms", "5")
            .with("batch.num.messages", "10000"),
    )
    .create()
    .expect("producer");
    for i in 0..MESSAGES {
        let key = format!("k{}", i % 64);
        let payload = format!("message-{i}");
        let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert_eq!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "send failed: {e}"
                    );
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(
        producer.in_flight_count(),
        0,
        "undelivered messages after flush"
    );

    let consumer: BaseConsumer =
        client_config(&broker.consumer_settings(&unique_group("round-trip")))
            .create()
            .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");

    let mut payloads = HashSet::new();
    let mut per_partition: HashMap<i32, usize> = HashMap::new();
    let deadline = Instant::now() + broker.join_deadline() + Duration::from_secs(30);
    while payloads.len() < MESSAGES && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            let message = result.expect("consume error");
            let payload = std::str::from_utf8(message.payload().expect("payload"))
                .expect("utf8")
                .to_owned();
            assert!(payloads.insert(payload), "a message came back twice");
            *per_partition.entry(message.partition()).or_default() += 1;
        }
    }
    assert_eq!(
        payloads.len(),
        MESSAGES,
        "not every message came back before the deadline"
    );
    for i in 0..MESSAGES {
        assert!(
            payloads.contains(&format!("message-{i}")),
            "message-{i} is missing"
        );
    }
    assert_eq!(
        per_partition.len(),
        PARTITIONS as usize,
        "keys should spread over every partition: {per_partition:?}"
    );
}
