//! Bad input gets a clear error that owns the message, so nothing is lost: an invalid topic
//! name, a payload over `max_payload_size`, a tombstone without a key, an empty partition key,
//! a negative partition, producing after `close()`, and a batch with one bad message (nothing
//! sent, every message returned). Bad producer settings are all reported at once, by name.

mod common;

use common::Recorder;
use karafka_producer::{Error, Message, Producer, VariantConfig};
use karafka_testing::BufferedClient;

fn producer(client: &BufferedClient) -> Producer {
    Producer::builder()
        .client(client.clone())
        .max_payload_size(10)
        .build()
        .unwrap()
}

fn assert_invalid(error: Error, path: &str, says: &str, payload: Option<&str>) {
    let text = error.to_string();
    assert!(text.contains(says), "`{text}` should say `{says}`");
    let Error::InvalidMessage { ref reason, .. } = error else {
        panic!("expected InvalidMessage, got {error:?}");
    };
    assert!(
        reason.at(path).is_some(),
        "no violation at {path}: {reason}"
    );
    let message = error.into_message().expect("the message comes back");
    assert_eq!(message.payload.as_deref(), payload.map(str::as_bytes));
}

#[test]
fn each_bad_message_is_refused_with_the_message_returned() {
    let client = BufferedClient::new();
    let producer = producer(&client);
    let events = Recorder::attach(producer.monitor());

    let e = producer
        .produce_sync(Message::new("bad topic!", "x"))
        .unwrap_err();
    assert_invalid(e, "message.topic", "`bad topic!` contains ' '", Some("x"));

    let e = producer
        .produce_async(Message::new("t", "12345678901"))
        .unwrap_err();
    assert_invalid(
        e,
        "message.payload",
        "11 bytes, over max_payload_size (10 bytes)",
        Some("12345678901"),
    );

    let mut tombstone = Message::tombstone("t", "k");
    tombstone.key = None;
    let e = producer.produce_sync(tombstone).unwrap_err();
    assert_invalid(
        e,
        "message.key",
        "a tombstone (payload None) needs a key",
        None,
    );

    let e = producer
        .produce_sync(Message::new("t", "x").partition_key(""))
        .unwrap_err();
    assert_invalid(e, "message.partition_key", "must not be empty", Some("x"));

    let e = producer
        .produce_sync(Message::new("t", "x").partition(-3))
        .unwrap_err();
    assert_invalid(e, "message.partition", "is -3", Some("x"));

    assert!(client.topics().is_empty(), "nothing may be sent");
    assert_eq!(
        events.error_kinds(),
        vec!["producer.produce.error"; 5],
        "each refusal is instrumented"
    );
}

#[test]
fn a_bad_message_in_a_batch_stops_the_whole_batch_and_returns_every_message() {
    let client = BufferedClient::new();
    let producer = producer(&client);
    let batch = vec![
        Message::new("t", "a"),
        Message::new("t", "b"),
        Message::new("t", "way too large payload"),
        Message::new("t", "d"),
    ];
    let error = producer.produce_many_sync(batch).unwrap_err();
    let Error::PartiallyDispatched { dispatched, .. } = &error else {
        panic!("expected PartiallyDispatched, got {error:?}");
    };
    assert_eq!(*dispatched, 0);
    assert!(error.to_string().contains("max_payload_size"), "{error}");
    let back: Vec<_> = error
        .into_messages()
        .into_iter()
        .map(|m| String::from_utf8(m.payload.unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(back, ["way too large payload", "a", "b", "d"]);
    assert!(
        client.topics().is_empty(),
        "validation happens before anything is sent"
    );
}

#[test]
fn producing_after_close_returns_the_message() {
    let client = BufferedClient::new();
    let producer = producer(&client);
    producer.produce_sync(Message::new("t", "before")).unwrap();
    producer.close().unwrap();
    let error = producer
        .produce_sync(Message::new("t", "after"))
        .unwrap_err();
    assert!(matches!(error, Error::Closed { .. }), "{error:?}");
    assert!(error.to_string().contains("is closed"));
    assert_eq!(error.into_message().unwrap().payload.unwrap(), "after");

    let error = producer
        .produce_many_async(vec![Message::new("t", "x"), Message::new("t", "y")])
        .unwrap_err();
    assert_eq!(error.into_messages().len(), 2);
    assert_eq!(client.payloads("t"), ["before"]);
}

#[test]
fn bad_producer_settings_are_all_reported_by_name() {
    let error = Producer::builder()
        .id(" ")
        .kafka("no.such.setting", "1")
        .kafka("acks", "1")
        .kafka("enable.idempotence", "true")
        .kafka("message.timeout.ms", "90000")
        .max_payload_size(0)
        .build()
        .unwrap_err();
    let paths: Vec<&str> = error.violations().iter().map(|v| v.path.as_str()).collect();
    for expected in [
        "producer.id",
        "producer.kafka.no.such.setting",
        "producer.kafka.bootstrap.servers",
        "producer.kafka.acks",
        "producer.max_wait_timeout",
        "producer.max_payload_size",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    let text = error.to_string();
    assert!(text.contains("no.such.setting"), "{text}");
    assert!(
        text.contains("idempotent or transactional producer needs `all`"),
        "{text}"
    );
}

#[test]
fn bad_variant_settings_are_refused_with_the_reason() {
    let client = BufferedClient::new();
    let idempotent = Producer::builder()
        .client(client)
        .kafka("enable.idempotence", "true")
        .build()
        .unwrap();
    let error = idempotent
        .variant(VariantConfig::new().set("acks", "0").set("linger.ms", "5"))
        .unwrap_err();
    assert_eq!(error.violations().len(), 2);
    assert!(error.to_string().contains("idempotent"));
    assert!(
        error
            .to_string()
            .contains("`linger.ms` cannot differ per variant")
    );
}
