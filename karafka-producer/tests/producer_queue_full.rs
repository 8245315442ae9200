//! When librdkafka's queue is full, dispatch waits for room in back-off steps and succeeds
//! once a delivery frees room; past `wait_timeout_on_queue_full` it fails with `QueueFull`,
//! owning the message. Proven with real librdkafka (a one-message queue and a broker taken
//! down) and deterministically with the buffered client.

mod common;

use std::time::{Duration, Instant};

use common::{Recorder, builder};
use karafka_producer::{Error, Message, Producer};
use karafka_testing::{BufferedClient, Capability, Fault, TestBroker, unique_topic};

#[test]
fn a_full_queue_waits_then_fails_with_the_message() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("queue-full");
    cluster.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker)
        .kafka("queue.buffering.max.messages", "1")
        .wait_backoff_on_queue_full(Duration::from_millis(50))
        .wait_timeout_on_queue_full(Duration::from_millis(400))
        .build()
        .unwrap();
    let events = Recorder::attach(producer.monitor());
    producer
        .produce_sync(Message::new(topic.as_str(), "warm-up"))
        .unwrap();

    cluster.broker_down(1).unwrap();
    let stuck = producer
        .produce_async(Message::new(topic.as_str(), "stuck"))
        .unwrap();
    let started = Instant::now();
    let error = producer
        .produce_async(Message::new(topic.as_str(), "refused").label("mine"))
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "gave up after only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    let Error::QueueFull {
        waited: reported, ..
    } = &error
    else {
        panic!("expected QueueFull, got {error:?}");
    };
    assert!(*reported >= Duration::from_millis(400));
    let message = error.into_message().unwrap();
    assert_eq!(message.payload.unwrap(), "refused");
    assert_eq!(
        message.label.unwrap().as_str(),
        Some("mine"),
        "the label comes back too"
    );
    assert!(
        events
            .error_kinds()
            .contains(&"producer.queue_full.error".to_owned())
    );

    // Room frees up once the broker is back and the stuck message is delivered; dispatch then
    // goes through. (How long librdkafka takes to reconnect varies with load, so this does not
    // race a 400 ms wait against it; waiting through a full queue and then succeeding is
    // proven deterministically below.)
    cluster.broker_up(1).unwrap();
    stuck.wait(Duration::from_secs(20)).unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "after-room"))
        .unwrap();
}

#[test]
fn waits_through_a_full_queue_and_succeeds() {
    let client = BufferedClient::new();
    let producer = Producer::builder()
        .client(client.clone())
        .wait_backoff_on_queue_full(Duration::from_millis(20))
        .build()
        .unwrap();
    client.inject(Fault::QueueFull);
    client.inject(Fault::QueueFull);
    let started = Instant::now();
    producer
        .produce_sync(Message::new("t", "eventually"))
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "two back-off steps expected"
    );
    assert_eq!(client.payloads("t"), ["eventually"]);
}

#[test]
fn without_waiting_a_full_queue_fails_at_once() {
    let client = BufferedClient::new();
    let producer = Producer::builder()
        .client(client.clone())
        .wait_on_queue_full(false)
        .build()
        .unwrap();
    client.inject(Fault::QueueFull);
    let error = producer.produce_sync(Message::new("t", "x")).unwrap_err();
    // Less than one back-off step (100 ms by default): it did not wait.
    assert!(
        matches!(error, Error::QueueFull { waited, .. } if waited < Duration::from_millis(100)),
        "{error:?}"
    );
}
