//! The buffer: `buffer` / `buffer_many` hold validated messages; `flush_sync` sends them and
//! waits; `flush_async` sends them and returns a batch handle; messages that fail to flush
//! stay in the buffer (in order) for the next flush; every step is instrumented.

mod common;

use std::time::Duration;

use common::{Recorder, builder, payload, read_back};
use karafka_core::KafkaError;
use karafka_producer::{Error, Message, Producer};
use karafka_testing::{BufferedClient, Fault, TestBroker, unique_topic};

#[test]
fn buffered_messages_reach_the_broker_on_flush() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("buffer");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = Recorder::attach(producer.monitor());

    producer.buffer(Message::new(topic.as_str(), "b0")).unwrap();
    producer
        .buffer_many(vec![
            Message::new(topic.as_str(), "b1"),
            Message::new(topic.as_str(), "b2"),
        ])
        .unwrap();
    assert_eq!(producer.buffered(), 3);
    let reports = producer.flush_sync().unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(producer.buffered(), 0);

    producer.buffer(Message::new(topic.as_str(), "b3")).unwrap();
    let delivery = producer.flush_async().unwrap();
    assert_eq!(delivery.wait(Duration::from_secs(30)).unwrap().len(), 1);

    let seen: Vec<String> = read_back(&broker, &topic, 4).iter().map(payload).collect();
    assert_eq!(seen, ["b0", "b1", "b2", "b3"]);
    assert_eq!(events.count("message.buffered"), 2);
    assert_eq!(events.count("messages.buffered"), 1);
    assert_eq!(events.count("buffer.flushed_sync"), 1);
    assert_eq!(events.count("buffer.flushed_async"), 1);
}

#[test]
fn undelivered_messages_stay_buffered_for_the_next_flush() {
    let client = BufferedClient::new();
    let producer = Producer::builder().client(client.clone()).build().unwrap();
    producer
        .buffer_many((0..4).map(|i| Message::new("t", format!("m{i}"))).collect())
        .unwrap();
    client.inject(Fault::FailDelivery(KafkaError::other(
        "deliver",
        "broker said no",
    )));

    let error = producer.flush_sync().unwrap_err();
    let Error::DeliveriesFailed { failed, results } = &error else {
        panic!("expected DeliveriesFailed, got {error:?}");
    };
    assert_eq!(*failed, 1);
    assert!(results[0].is_err() && results[1..].iter().all(Result::is_ok));
    assert_eq!(producer.buffered(), 1, "the failed message stays buffered");
    assert_eq!(client.payloads("t"), ["m1", "m2", "m3"]);

    producer.flush_sync().unwrap();
    assert_eq!(producer.buffered(), 0);
    assert_eq!(client.payloads("t"), ["m1", "m2", "m3", "m0"]);
}

#[test]
fn a_full_queue_during_a_flush_is_waited_out() {
    let client = BufferedClient::new();
    let producer = Producer::builder()
        .client(client.clone())
        .wait_backoff_on_queue_full(Duration::from_millis(10))
        .build()
        .unwrap();
    producer
        .buffer_many((0..4).map(|i| Message::new("t", format!("m{i}"))).collect())
        .unwrap();
    client.inject(Fault::QueueFull);
    producer.flush_sync().unwrap();
    assert_eq!(client.payloads("t"), ["m0", "m1", "m2", "m3"]);
}

#[test]
fn messages_librdkafka_refuses_stay_buffered_in_order() {
    let client = BufferedClient::new();
    let producer = Producer::builder().client(client.clone()).build().unwrap();
    producer
        .buffer_many((0..3).map(|i| Message::new("u", format!("n{i}"))).collect())
        .unwrap();
    client.inject(Fault::Refuse(KafkaError::other("produce", "refused")));
    let error = producer.flush_async().unwrap_err();
    assert!(
        matches!(error, Error::PartiallyDispatched { dispatched: 0, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("refused"), "{error}");
    assert_eq!(
        producer.buffered(),
        3,
        "refused and unsent messages stay, in order"
    );
    producer.flush_sync().unwrap();
    assert_eq!(client.payloads("u"), ["n0", "n1", "n2"]);
}

#[test]
fn invalid_messages_are_never_buffered() {
    let client = BufferedClient::new();
    let producer = Producer::builder().client(client).build().unwrap();
    let error = producer
        .buffer_many(vec![Message::new("ok", "x"), Message::new("not ok", "y")])
        .unwrap_err();
    assert_eq!(error.into_messages().len(), 2);
    assert_eq!(producer.buffered(), 0);
}
