//! librdkafka's own log lines of a subscription group's client reach `tracing` (target
//! `librdkafka`) at their level, with the subscription group's name as `client`: an app
//! pointed at a port that refuses connections logs librdkafka's reason. No broker is
//! needed: the refusing address is on loopback.

use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_testing::LogCapture;

struct Noop;

impl Consumer for Noop {
    type Payload = Raw;
    async fn consume(&mut self, _: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

#[test]
fn a_refused_connection_is_logged_with_librdkafkas_reason() {
    let logs = LogCapture::install().unwrap();
    let app = App::builder()
        .name("logs-app")
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        .kafka("bootstrap.servers", "127.0.0.1:1")
        .shutdown_timeout(Duration::from_secs(10))
        .topic("logs", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
    let client = app
        .routes()
        .consumer_groups()
        .flat_map(|g| g.subscription_groups())
        .map(|sg| sg.name().to_owned())
        .next()
        .unwrap();
    let running = app.start().unwrap();
    let line = logs.wait_for(Duration::from_secs(15), |e| {
        e.target == "librdkafka" && e.message.contains("Connection refused")
    });
    running.stop_blocking().unwrap();
    let line = line.unwrap_or_else(|_| {
        let seen: Vec<String> = logs.events().iter().map(|e| e.to_string()).collect();
        panic!("no librdkafka line about the refused connection; captured:\n{seen:#?}")
    });
    assert_eq!(line.field("client"), Some(client.as_str()), "{line}");
    assert!(line.field("facility").is_some(), "{line}");
    assert!(line.level <= tracing::Level::WARN, "{line}");
}
