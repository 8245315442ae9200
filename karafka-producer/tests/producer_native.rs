//! The librdkafka client's own send path (topic handles, native headers): a message
//! librdkafka refuses at once comes back whole (headers included) and the next one goes
//! through; producers built one after another on one thread each send through their own
//! client's topic handle; headers arrive as sent, null values included.

mod common;

use common::{builder, read_back};
use karafka_producer::{Error, Message};
use karafka_testing::{TestBroker, unique_topic};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;

#[test]
fn a_message_librdkafka_refuses_comes_back_with_its_headers() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("native-refused");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker)
        .kafka("message.max.bytes", "1000")
        .max_payload_size(1_000_000)
        .build()
        .unwrap();
    let big = Message::new(topic.as_str(), vec![b'x'; 5_000])
        .header("trace", "t-1")
        .header("trace", "t-2")
        .label("big");
    let error = producer.produce_sync(big).unwrap_err();
    assert!(matches!(error, Error::Produce { .. }), "{error:?}");
    assert!(error.to_string().contains("too large"), "{error}");
    let back = error.into_message().unwrap();
    assert_eq!(back.payload.as_ref().map(|p| p.len()), Some(5_000));
    let traces: Vec<_> = back
        .headers
        .iter()
        .map(|h| h.value.clone().unwrap())
        .collect();
    assert_eq!(traces, ["t-1", "t-2"]);
    assert_eq!(back.label.unwrap().as_str(), Some("big"));

    // The same message, small enough now, with a null header value, goes through.
    let mut small = Message::new(topic.as_str(), "small").header("trace", "t-1");
    small.headers.append_null("empty");
    producer.produce_sync(small).unwrap();
    let read = read_back(&broker, &topic, 1);
    assert_eq!(read.len(), 1);
    let headers = read[0].headers().unwrap();
    let got: Vec<_> = headers
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        got,
        [
            ("trace".to_owned(), Some(b"t-1".to_vec())),
            ("empty".to_owned(), None)
        ]
    );
    producer.close().unwrap();
}

#[test]
fn producers_built_one_after_another_on_one_thread_use_their_own_handles() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("native-handles");
    broker.create_topic(&topic, 1).unwrap();
    for round in 0..3 {
        let producer = builder(&broker).build().unwrap();
        let reports = producer
            .produce_many_sync(
                (0..5)
                    .map(|i| Message::new(topic.as_str(), format!("{round}-{i}")))
                    .collect(),
            )
            .unwrap();
        assert_eq!(reports.len(), 5);
        producer.close().unwrap();
    }
    let read = read_back(&broker, &topic, 15);
    assert_eq!(read.len(), 15);
    assert!(read.iter().all(|m| m.payload().is_some()));
}
