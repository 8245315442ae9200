//! The capability flags are true to the broker: a broker said to support transactions commits
//! a transaction that a read_committed consumer then sees, and a broker said to filter aborted
//! records hides an aborted one (brokers without it are skipped with the reason printed).

use std::time::{Duration, Instant};

use karafka_testing::{Capability, TestBroker, client_config, unique_group, unique_topic};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

fn transactional_producer(broker: &TestBroker) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(
        &broker
            .producer_settings()
            .with("transactional.id", unique_group("txn"))
            .with("transaction.timeout.ms", "10000"),
    )
    .create()
    .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    producer
}

fn read_committed(broker: &TestBroker, topic: &str, want: usize) -> Vec<String> {
    let consumer: BaseConsumer = client_config(
        &broker
            .consumer_settings(&unique_group("txn-reader"))
            .with("isolation.level", "read_committed"),
    )
    .create()
    .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = Vec::new();
    let deadline = Instant::now() + broker.join_deadline();
    // Reads until `want` messages arrived, then a little longer to catch any extra.
    let mut quiet_until = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            if let Some(p) = message.payload() {
                seen.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        if seen.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(1500));
        }
    }
    seen
}

#[test]
fn committed_transactions_are_visible() {
    let Some(broker) = TestBroker::require(&[Capability::Transactions]) else {
        return;
    };
    let topic = unique_topic("txn-commit");
    broker.create_topic(&topic, 1).unwrap();
    let producer = transactional_producer(&broker);
    producer.begin_transaction().expect("begin");
    for i in 0..3 {
        producer
            .send(BaseRecord::<str, str>::to(&topic).payload(&format!("committed-{i}")))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    let seen = read_committed(&broker, &topic, 3);
    assert_eq!(seen, ["committed-0", "committed-1", "committed-2"]);
}

#[test]
fn aborted_transactions_are_filtered() {
    let Some(broker) = TestBroker::require(&[
        Capability::Transactions,
        Capability::ReadCommittedFiltersAborted,
    ]) else {
        return;
    };
    let topic = unique_topic("txn-abort");
    broker.create_topic(&topic, 1).unwrap();
    let producer = transactional_producer(&broker);
    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::<str, str>::to(&topic).payload("aborted"))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::<str, str>::to(&topic).payload("kept"))
        .map_err(|(e, _)| e)
        .expect("send");
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    assert_eq!(read_committed(&broker, &topic, 1), ["kept"]);
}
