//! Variants apply their topic settings on the wire while sharing the producer's client:
//! `acks=0` makes librdkafka skip the broker's answer, so its delivery reports carry no offset,
//! while the producer's own `acks=all` reports real offsets. Because librdkafka fixes a topic's
//! settings on first use, sending one topic with two different settings is refused with the
//! message returned; equal settings share topics; a variant's own wait limit applies.

mod common;

use std::time::Duration;

use common::{builder, read_back};
use karafka_producer::{Error, Message, VariantConfig};
use karafka_testing::{Capability, TestBroker, unique_topic};

#[test]
fn acks_zero_takes_effect_on_the_wire() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (fast, safe) = (unique_topic("acks0"), unique_topic("acksall"));
    broker.create_topic(&fast, 1).unwrap();
    broker.create_topic(&safe, 1).unwrap();
    let producer = builder(&broker).kafka("acks", "all").build().unwrap();
    let fire_and_forget = producer
        .variant(VariantConfig::new().set("acks", "0"))
        .unwrap();

    for i in 0..3 {
        let report = fire_and_forget
            .produce_sync(Message::new(fast.as_str(), format!("f{i}")))
            .unwrap();
        assert_eq!(
            report.offset, -1,
            "acks=0 sends without waiting for the broker, so no offset comes back"
        );
        let report = producer
            .produce_sync(Message::new(safe.as_str(), format!("s{i}")))
            .unwrap();
        assert_eq!(report.offset, i, "acks=all reports the broker's offset");
    }
    // The acks=0 messages did arrive.
    assert_eq!(read_back(&broker, &fast, 3).len(), 3);
}

#[test]
fn one_topic_cannot_take_two_settings_in_one_producer() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (first_variant, first_default) = (unique_topic("claim-v"), unique_topic("claim-d"));
    broker.create_topic(&first_variant, 1).unwrap();
    broker.create_topic(&first_default, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let acks1 = producer
        .variant(VariantConfig::new().set("acks", "1"))
        .unwrap();
    let acks1_alias = producer
        .variant(VariantConfig::new().set("request.required.acks", "1"))
        .unwrap();
    let lz4 = producer
        .variant(VariantConfig::new().set("compression.codec", "lz4"))
        .unwrap();

    acks1
        .produce_sync(Message::new(first_variant.as_str(), "v"))
        .unwrap();
    acks1_alias
        .produce_sync(Message::new(first_variant.as_str(), "same settings share"))
        .unwrap();
    let refused = producer
        .produce_sync(Message::new(first_variant.as_str(), "default").label("d"))
        .unwrap_err();
    assert!(
        matches!(refused, Error::VariantConflict { .. }),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("request.required.acks=1"),
        "{refused}"
    );
    let back = refused.into_message().unwrap();
    assert_eq!(back.payload.unwrap(), "default");
    assert_eq!(back.label.unwrap().as_str(), Some("d"));
    let refused = lz4
        .produce_sync(Message::new(first_variant.as_str(), "lz4"))
        .unwrap_err();
    assert!(
        matches!(refused, Error::VariantConflict { .. }),
        "{refused:?}"
    );

    producer
        .produce_sync(Message::new(first_default.as_str(), "default first"))
        .unwrap();
    let refused = acks1
        .produce_sync(Message::new(first_default.as_str(), "v"))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the producer's default topic settings"),
        "{refused}"
    );
    assert_eq!(read_back(&broker, &first_variant, 2).len(), 2);
}

#[test]
fn a_variant_waits_with_its_own_limit() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("variant-wait");
    cluster.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let impatient = producer
        .variant(VariantConfig::new().max_wait_timeout(Duration::from_millis(100)))
        .unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "warm"))
        .unwrap();
    cluster
        .set_round_trip_time(1, Duration::from_millis(600))
        .unwrap();
    let error = impatient
        .produce_sync(Message::new(topic.as_str(), "slow"))
        .unwrap_err();
    assert!(
        matches!(error, Error::WaitTimeout { timeout } if timeout == Duration::from_millis(100)),
        "{error:?}"
    );
    assert!(error.to_string().contains("may still be delivered"));
    // The producer's own limit (60 s) outlasts the delay.
    producer
        .produce_sync(Message::new(topic.as_str(), "patient"))
        .unwrap();
}

#[test]
fn variants_share_the_producers_client() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("variant-shared");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker).build().unwrap();
    let events = common::Recorder::attach(producer.monitor());
    let v = producer
        .variant(VariantConfig::new().set("compression.codec", "gzip"))
        .unwrap();
    v.produce_sync(Message::new(topic.as_str(), "compressed"))
        .unwrap();
    assert_eq!(
        events.count("producer.connected"),
        1,
        "a variant opens no client of its own"
    );
    assert_eq!(read_back(&broker, &topic, 1).len(), 1);
}
