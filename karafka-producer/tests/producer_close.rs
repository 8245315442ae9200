//! Closing: `close()` flushes the buffer and waits for in-flight deliveries; messages that
//! cannot be delivered come back in `Error::Undelivered`; it is idempotent and instrumented
//! (closing, closed); dropping the last handle closes; the client is created lazily.

mod common;

use std::time::Duration;

use common::{Recorder, builder, read_back};
use karafka_producer::{Error, Message, Producer, Status};
use karafka_testing::{BufferedClient, Capability, TestBroker, unique_topic};

#[test]
fn close_delivers_the_buffer_and_in_flight_messages() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("close");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).kafka("linger.ms", "200").build().unwrap();
    assert_eq!(producer.status(), Status::Configured);
    let events = Recorder::attach(producer.monitor());

    let handle = producer
        .produce_async(Message::new(topic.as_str(), "in-flight"))
        .unwrap();
    assert_eq!(producer.status(), Status::Connected);
    producer
        .buffer(Message::new(topic.as_str(), "buffered"))
        .unwrap();
    producer.close().unwrap();
    assert_eq!(producer.status(), Status::Closed);
    handle.wait(Duration::from_secs(1)).unwrap();
    assert_eq!(read_back(&broker, &topic, 2).len(), 2);

    producer.close().unwrap();
    let names = events.names();
    assert_eq!(
        events.count("producer.closing"),
        1,
        "close is idempotent: {names:?}"
    );
    assert_eq!(events.count("producer.closed"), 1);
}

#[test]
fn close_returns_what_could_not_be_delivered() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("close-down");
    cluster.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "delivered"))
        .unwrap();
    cluster.broker_down(1).unwrap();
    let handle = producer
        .produce_async(Message::new(topic.as_str(), "stranded"))
        .unwrap();

    let error = producer
        .close_with_timeout(Duration::from_millis(500))
        .unwrap_err();
    let Error::Undelivered { undelivered } = &error else {
        panic!("expected Undelivered, got {error:?}");
    };
    assert_eq!(undelivered.len(), 1);
    assert_eq!(
        undelivered[0].payload.as_deref(),
        Some(b"stranded".as_slice())
    );
    let handle_error = handle.wait(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(handle_error, Error::Delivery { .. }),
        "{handle_error:?}"
    );
    assert_eq!(
        handle_error.into_message().unwrap().payload.unwrap(),
        "stranded"
    );
}

#[test]
fn dropping_the_last_handle_closes() {
    let client = BufferedClient::new();
    let producer = Producer::builder().client(client.clone()).build().unwrap();
    let events = Recorder::attach(producer.monitor());
    producer
        .buffer(Message::new("t", "flushed-on-drop"))
        .unwrap();
    let clone = producer.clone();
    drop(producer);
    assert_eq!(events.count("producer.closed"), 0, "a clone is still alive");
    drop(clone);
    assert_eq!(events.count("producer.closed"), 1);
    assert_eq!(client.payloads("t"), ["flushed-on-drop"]);
}

#[test]
fn the_client_is_created_on_first_use_only() {
    let client = BufferedClient::new();
    let producer = Producer::builder().client(client).build().unwrap();
    let events = Recorder::attach(producer.monitor());
    assert_eq!(producer.status(), Status::Configured);
    assert_eq!(events.count("producer.connected"), 0);
    producer.produce_sync(Message::new("t", "x")).unwrap();
    producer.produce_sync(Message::new("t", "y")).unwrap();
    assert_eq!(events.count("producer.connected"), 1);
    // Closing a producer that never connected needs no client.
    let idle = Producer::builder()
        .client(BufferedClient::new())
        .build()
        .unwrap();
    let idle_events = Recorder::attach(idle.monitor());
    idle.close().unwrap();
    assert_eq!(idle_events.count("producer.connected"), 0);
}
