//! The producer API in one run: sync and async dispatch, batches, the buffer, a variant, a
//! transaction, labels and instrumentation.
//!
//! `cargo run -p karafka-producer --example producer` uses an embedded Kafka cluster (no
//! install); `KARAFKA_BROKERS=host:port` points it at a real broker (the topics `example-*`
//! must exist there or be auto-created).

use std::error::Error as StdError;
use std::time::Duration;

use karafka_core::instrumentation::{Event, TracingListener};
use karafka_producer::{Error, Message, Producer, VariantConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    // A real broker from the environment, or an embedded one.
    let (brokers, _embedded) = match std::env::var("KARAFKA_BROKERS") {
        Ok(brokers) => (brokers, None),
        Err(_) => {
            let cluster = karafka_testing::EmbeddedCluster::start(1)?;
            for topic in ["example-orders", "example-metrics", "example-ledger"] {
                cluster.create_topic(topic, 3)?;
            }
            (cluster.bootstrap_servers().to_owned(), Some(cluster))
        }
    };

    // One producer per process: a cheap Clone handle over one librdkafka client.
    let producer = Producer::builder()
        .id("example")
        .kafka("bootstrap.servers", &brokers)
        .kafka("linger.ms", "5")
        .middleware(|m: &mut Message| {
            m.headers.append("produced-by", "karafka-rs example");
        })
        .build()?;
    producer.monitor().subscribe(TracingListener::new());
    producer.monitor().subscribe_fn(|event| {
        if let Event::MessageAcknowledged {
            topic,
            partition,
            offset,
            label,
            ..
        } = event
        {
            println!("acknowledged {topic}/{partition}@{offset} label={label:?}");
        }
    });

    // Sync: waits for the delivery report.
    let report = producer.produce_sync(
        Message::new("example-orders", r#"{"id":1,"total":10}"#)
            .key("customer-7")
            .header("schema", "order.v1")
            .label("order-1"),
    )?;
    println!(
        "order-1 stored at {}/{}@{}",
        report.topic, report.partition, report.offset
    );

    // Async: a handle to await.
    let handle =
        producer.produce_async(Message::new("example-orders", r#"{"id":2}"#).key("customer-8"))?;
    let report = handle.await?;
    println!("order-2 stored at offset {}", report.offset);

    // Many at once: all validated first, then sent.
    let batch = (3..=10)
        .map(|i| Message::new("example-orders", format!(r#"{{"id":{i}}}"#)))
        .collect();
    let reports = producer.produce_many_sync(batch)?;
    println!("batch of {} delivered", reports.len());

    // Buffer now, flush later.
    producer.buffer(Message::new("example-orders", r#"{"id":11}"#))?;
    producer.buffer(Message::tombstone("example-orders", "customer-7"))?;
    println!("flushed {} buffered messages", producer.flush_sync()?.len());

    // A variant: acks=0 for metrics, on the same client and connections.
    let metrics = producer.variant(VariantConfig::new().set("acks", "0"))?;
    let report = metrics.produce_sync(Message::new("example-metrics", "cpu=0.42"))?;
    println!(
        "metric sent without waiting for the broker (offset {})",
        report.offset
    );

    // Bad input comes back with the message.
    match producer.produce_sync(Message::new("not a topic!", "lost?")) {
        Err(e @ Error::InvalidMessage { .. }) => {
            println!("refused: {e}");
            let message = e.into_message().expect("the message comes back");
            println!("... and the payload is still ours: {:?}", message.payload);
        }
        other => println!("unexpected: {other:?}"),
    }
    producer.close()?;

    // Transactions: commit on Ok, abort on Err or panic.
    let transactional = Producer::builder()
        .id("example-tx")
        .kafka("bootstrap.servers", &brokers)
        .kafka("transactional.id", "example-ledger-writer")
        .max_wait_timeout(Duration::from_secs(60))
        .build()?;
    let entries = transactional.transaction(|tx| {
        tx.produce_sync(Message::new("example-ledger", "debit:10"))?;
        tx.produce_sync(Message::new("example-ledger", "credit:10"))?;
        Ok::<_, Error>(2)
    })?;
    println!("committed {entries} ledger entries atomically");
    transactional.close()?;
    Ok(())
}
