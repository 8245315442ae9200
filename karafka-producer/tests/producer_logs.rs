//! librdkafka's own log lines reach `tracing` (target `librdkafka`) at their level, with the
//! producer's id as `client`: a producer pointed at a port that refuses connections logs
//! librdkafka's reason. No broker is needed: the refusing address is on loopback.

use std::time::Duration;

use karafka_producer::{Message, Producer};
use karafka_testing::LogCapture;

#[test]
fn a_refused_connection_is_logged_with_librdkafkas_reason() {
    let logs = LogCapture::install().unwrap();
    let producer = Producer::builder()
        .id("logs-producer")
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        .kafka("bootstrap.servers", "127.0.0.1:1")
        .kafka("message.timeout.ms", "2000")
        .build()
        .unwrap();
    // The client is created lazily: the first dispatch creates it and it starts connecting.
    let handle = producer.produce_async(Message::new("logs", "x")).unwrap();
    let line = logs
        .wait_for(Duration::from_secs(15), |e| {
            e.target == "librdkafka" && e.message.contains("Connection refused")
        })
        .unwrap_or_else(|_| {
            let seen: Vec<String> = logs.events().iter().map(|e| e.to_string()).collect();
            panic!("no librdkafka line about the refused connection; captured:\n{seen:#?}")
        });
    assert_eq!(line.field("client"), Some("logs-producer"), "{line}");
    assert!(line.field("facility").is_some(), "{line}");
    // librdkafka logs a refused connection as an error (FAIL, level 3).
    assert!(line.level <= tracing::Level::WARN, "{line}");
    // The message is not lost: it comes back as undelivered.
    let error = handle.wait(Duration::from_secs(10)).unwrap_err();
    assert!(error.into_message().is_some());
    let _ = producer.close();
}
