//! Transactions: the closure API commits on `Ok` and aborts on `Err` or panic (abort verified
//! with the buffered client, since neither test broker filters aborted records); single sends
//! of a transactional producer get their own transaction; other threads wait for an open
//! transaction; retriable step errors are retried with growing back-off, abortable ones
//! abort, fatal ones rebuild the client; consumer offsets commit inside a transaction; a
//! fenced producer rebuilds and recovers on a real broker.

// Transaction results carry the producer's `Error`, which owns a full `KafkaError`.
#![allow(clippy::result_large_err)]

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Recorder, builder, payload};
use karafka_core::{KafkaError, TopicPartition};
use karafka_producer::{ConsumerGroupMetadata, Error, Message, Producer, TransactionError};
use karafka_testing::{
    BufferedClient, Capability, Fault, TestBroker, client_config, unique_group, unique_topic,
};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

fn transactional(client: &BufferedClient) -> Producer {
    Producer::builder()
        .client(client.clone())
        .kafka("transactional.id", "tx-test")
        .wait_backoff_on_transaction_command(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn failure(message: &str, retriable: bool, abort: bool, fatal: bool) -> KafkaError {
    KafkaError {
        retriable,
        txn_requires_abort: abort,
        fatal,
        ..KafkaError::other("commit transaction", message)
    }
}

#[test]
fn commit_keeps_and_abort_drops() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let events = Recorder::attach(producer.monitor());

    let kept = producer.transaction(|tx| {
        let _handle = tx.produce_async(Message::new("t", "a"))?;
        tx.produce_sync(Message::new("t", "b"))?;
        Ok::<_, Error>("done")
    });
    assert_eq!(kept.unwrap(), "done");

    let dropped = producer.transaction(|tx| {
        tx.produce_sync(Message::new("t", "c"))
            .map_err(std::io::Error::other)?;
        Err::<(), _>(std::io::Error::other("business rule failed"))
    });
    let Err(TransactionError::Aborted(e)) = dropped else {
        panic!("expected Aborted, got {dropped:?}");
    };
    assert_eq!(e.to_string(), "business rule failed");

    assert_eq!(client.payloads("t"), ["a", "b"]);
    assert_eq!(client.aborted().len(), 1);
    assert_eq!(client.transaction_counts(), (1, 1));
    let names = events.names();
    let steps: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("transaction."))
        .collect();
    assert_eq!(
        steps,
        [
            "transaction.started",
            "transaction.committed",
            "transaction.started",
            "transaction.aborted"
        ]
    );
}

#[test]
fn a_panic_aborts_and_the_panic_continues() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = producer.transaction(|tx| {
            tx.produce_sync(Message::new("t", "doomed")).unwrap();
            panic!("bug in the handler");
            #[allow(unreachable_code)]
            Ok::<(), Error>(())
        });
    }));
    assert!(outcome.is_err(), "the panic must reach the caller");
    assert!(client.payloads("t").is_empty());
    assert_eq!(client.transaction_counts(), (0, 1));
    // The producer still works.
    producer.produce_sync(Message::new("t", "after")).unwrap();
    assert_eq!(client.payloads("t"), ["after"]);
}

#[test]
fn single_sends_get_their_own_transaction_and_nesting_joins() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    producer.produce_sync(Message::new("t", "one")).unwrap();
    let _handle = producer.produce_async(Message::new("t", "two")).unwrap();
    producer
        .produce_many_sync(vec![Message::new("t", "three"), Message::new("t", "four")])
        .unwrap();
    assert_eq!(client.transaction_counts(), (3, 0));

    producer
        .transaction(|_tx| {
            // Through the producer on the same thread, and a nested transaction: both join.
            producer.produce_sync(Message::new("t", "five"))?;
            producer
                .transaction(|inner| inner.produce_sync(Message::new("t", "six")))
                .map_err(|e| match e {
                    TransactionError::Aborted(e) | TransactionError::Failed(e) => e,
                })?;
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(client.transaction_counts(), (4, 0));
    assert_eq!(
        client.payloads("t"),
        ["one", "two", "three", "four", "five", "six"]
    );
}

#[test]
fn other_threads_wait_for_the_open_transaction() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let (opened_tx, opened_rx) = mpsc::channel();
    let (finish_tx, finish_rx) = mpsc::channel::<()>();
    let owner = {
        let producer = producer.clone();
        std::thread::spawn(move || {
            producer.transaction(|tx| {
                tx.produce_sync(Message::new("t", "inside"))?;
                opened_tx.send(()).unwrap();
                finish_rx.recv().unwrap();
                Err::<(), Error>(Error::NotTransactional {
                    operation: "test abort",
                })
            })
        })
    };
    opened_rx.recv().unwrap();
    let outsider = {
        let producer = producer.clone();
        std::thread::spawn(move || producer.produce_sync(Message::new("t", "outside")))
    };
    let waited = karafka_testing::wait_until(Duration::from_millis(300), || outsider.is_finished());
    assert!(
        waited.is_err(),
        "a send from another thread must wait for the open transaction"
    );
    finish_tx.send(()).unwrap();
    assert!(matches!(
        owner.join().unwrap(),
        Err(TransactionError::Aborted(_))
    ));
    outsider.join().unwrap().unwrap();
    assert_eq!(
        client.payloads("t"),
        ["outside"],
        "the outsider did not join the aborted transaction"
    );
    assert_eq!(
        client.aborted()[0].message.payload.as_deref(),
        Some(b"inside".as_slice())
    );
}

#[test]
fn retriable_errors_are_retried_with_growing_back_off() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    client.inject(Fault::FailCommit(failure(
        "coordinator busy",
        true,
        false,
        false,
    )));
    client.inject(Fault::FailCommit(failure(
        "coordinator busy",
        true,
        false,
        false,
    )));
    let started = Instant::now();
    producer
        .produce_sync(Message::new("t", "eventually"))
        .unwrap();
    // Back-off 20 ms, then 40 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.transaction_counts(), (1, 0));
    assert_eq!(client.payloads("t"), ["eventually"]);

    // Past max_attempts (5) the error surfaces.
    for _ in 0..5 {
        client.inject(Fault::FailCommit(failure(
            "coordinator busy",
            true,
            false,
            false,
        )));
    }
    let error = producer
        .produce_sync(Message::new("t", "gives up"))
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Transaction {
                operation: "commit",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.into_message().unwrap().payload.unwrap(), "gives up");
}

#[test]
fn abortable_errors_abort_and_return_the_message() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let events = Recorder::attach(producer.monitor());
    client.inject(Fault::FailCommit(failure(
        "invalid txn state",
        false,
        true,
        false,
    )));
    let error = producer
        .produce_sync(Message::new("t", "aborted"))
        .unwrap_err();
    let Error::Transaction { aborted, .. } = &error else {
        panic!("expected Transaction, got {error:?}");
    };
    assert!(*aborted);
    assert_eq!(error.into_message().unwrap().payload.unwrap(), "aborted");
    assert!(client.payloads("t").is_empty());
    assert_eq!(client.transaction_counts(), (0, 1));
    assert!(
        events
            .error_kinds()
            .contains(&"producer.transaction.error".to_owned())
    );
}

#[test]
fn fatal_errors_rebuild_the_client() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    producer.produce_sync(Message::new("t", "before")).unwrap();
    assert_eq!(client.clients_created(), 1);
    client.inject(Fault::FailCommit(failure("fenced", false, false, true)));
    let error = producer
        .produce_sync(Message::new("t", "lost-commit"))
        .unwrap_err();
    assert!(error.kafka_error().unwrap().fatal);
    assert_eq!(
        error.into_message().unwrap().payload.unwrap(),
        "lost-commit"
    );
    producer.produce_sync(Message::new("t", "after")).unwrap();
    assert_eq!(
        client.clients_created(),
        2,
        "a fatal error rebuilds the client"
    );
}

#[test]
fn offsets_commit_with_the_transaction() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let group = ConsumerGroupMetadata::new("billing");
    let tp = TopicPartition::new("orders", 3);
    producer
        .transaction(|tx| {
            tx.produce_sync(Message::new("invoices", "i-1"))?;
            tx.mark_as_consumed(&group, &tp, 41)
        })
        .unwrap();
    let _ = producer.transaction(|tx| {
        tx.mark_as_consumed(&group, &tp, 99)?;
        Err::<(), Error>(Error::NotTransactional {
            operation: "test abort",
        })
    });
    let committed = client.committed_offsets("billing");
    assert_eq!(
        committed.get(&tp),
        Some(&42),
        "next offset to read; the aborted 100 is not kept"
    );
}

#[test]
fn transactions_need_a_transactional_producer() {
    let producer = Producer::builder()
        .client(BufferedClient::new())
        .build()
        .unwrap();
    let outcome = producer.transaction(|_| Ok::<(), Error>(()));
    let Err(TransactionError::Failed(Error::NotTransactional { .. })) = outcome else {
        panic!("expected NotTransactional, got {outcome:?}");
    };
}

#[tokio::test]
async fn the_async_form_commits_and_aborts() {
    let client = BufferedClient::new();
    let producer = transactional(&client);
    let value = producer
        .transaction_async(|tx| async move {
            tx.produce_async(Message::new("t", "async-1"))?.await?;
            Ok::<_, Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(value, 7);
    let aborted = producer
        .transaction_async(|tx| async move {
            tx.produce_async(Message::new("t", "async-2"))
                .unwrap()
                .await
                .unwrap();
            Err::<(), _>("no")
        })
        .await;
    assert!(matches!(aborted, Err(TransactionError::Aborted("no"))));
    assert_eq!(client.payloads("t"), ["async-1"]);
    assert_eq!(client.transaction_counts(), (1, 1));
}

#[test]
fn committed_transactions_reach_read_committed_consumers() {
    let Some(broker) = TestBroker::require(&[Capability::Transactions]) else {
        return;
    };
    let topic = unique_topic("txn-visible");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker)
        .kafka("transactional.id", unique_group("txn"))
        .build()
        .unwrap();
    producer
        .transaction(|tx| {
            tx.produce_many_sync(vec![
                Message::new(topic.as_str(), "x"),
                Message::new(topic.as_str(), "y"),
            ])
        })
        .unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "z"))
        .unwrap();
    let consumer: BaseConsumer = client_config(
        &broker
            .consumer_settings(&unique_group("reader"))
            .with("isolation.level", "read_committed"),
    )
    .create()
    .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + broker.join_deadline();
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            seen.push(payload(&m.unwrap().detach()));
        }
    }
    assert_eq!(seen, ["x", "y", "z"]);
}

#[test]
fn aborted_transactions_are_invisible_to_read_committed_consumers() {
    let Some(broker) = TestBroker::require(&[
        Capability::Transactions,
        Capability::ReadCommittedFiltersAborted,
    ]) else {
        return;
    };
    let topic = unique_topic("txn-abort");
    broker.create_topic(&topic, 1).unwrap();
    let producer = builder(&broker)
        .kafka("transactional.id", unique_group("txn"))
        .build()
        .unwrap();
    let _ = producer.transaction(|tx| {
        tx.produce_sync(Message::new(topic.as_str(), "aborted"))?;
        Err::<(), Error>(Error::NotTransactional { operation: "abort" })
    });
    producer
        .produce_sync(Message::new(topic.as_str(), "kept"))
        .unwrap();
    let seen: Vec<String> = common::read_back(&broker, &topic, 1)
        .iter()
        .map(payload)
        .collect();
    assert_eq!(seen, ["kept"]);
}

fn group_member(broker: &TestBroker, topic: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client_config(&broker.consumer_settings(group))
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + broker.join_deadline();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100));
    }
    assert!(
        consumer.assignment().unwrap().count() > 0,
        "the consumer never got an assignment"
    );
    consumer
}

#[test]
fn consumer_offsets_commit_inside_a_broker_transaction() {
    let Some(broker) = TestBroker::require(&[
        Capability::Transactions,
        Capability::TransactionalOffsetCommit,
    ]) else {
        return;
    };
    let (input, output) = (unique_topic("eos-in"), unique_topic("eos-out"));
    broker.create_topic(&input, 1).unwrap();
    broker.create_topic(&output, 1).unwrap();
    let group = unique_group("eos");
    let consumer = group_member(&broker, &input, &group);
    let metadata =
        ConsumerGroupMetadata::from_native(group.as_str(), consumer.group_metadata().unwrap());
    let producer = builder(&broker)
        .kafka("transactional.id", unique_group("eos-tx"))
        .build()
        .unwrap();
    producer
        .transaction(|tx| {
            tx.produce_sync(Message::new(output.as_str(), "transformed"))?;
            tx.mark_as_consumed(&metadata, &TopicPartition::new(input.as_str(), 0), 9)
        })
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(&input, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    let offset = committed.find_partition(&input, 0).unwrap().offset();
    assert_eq!(offset, rdkafka::Offset::Offset(10));
    let out = common::read_back(&broker, &output, 1);
    assert_eq!(out.first().map(|m| m.offset()), Some(0));
}

#[test]
fn a_fenced_producer_rebuilds_and_recovers() {
    let Some(broker) =
        TestBroker::require(&[Capability::Transactions, Capability::ProducerFencing])
    else {
        return;
    };
    let topic = unique_topic("fenced");
    broker.create_topic(&topic, 1).unwrap();
    let id = unique_group("fenced-id");
    let first = builder(&broker)
        .kafka("transactional.id", id.as_str())
        .build()
        .unwrap();
    let second = builder(&broker)
        .kafka("transactional.id", id.as_str())
        .build()
        .unwrap();
    first
        .produce_sync(Message::new(topic.as_str(), "first-1"))
        .unwrap();
    second.connect().unwrap(); // bumps the epoch: `first` is fenced
    let error = first
        .produce_sync(Message::new(topic.as_str(), "fenced"))
        .unwrap_err();
    assert!(
        error.kafka_error().is_some_and(|e| e.fatal),
        "a fenced producer fails fatally: {error:?}"
    );
    assert_eq!(error.into_message().unwrap().payload.unwrap(), "fenced");
    // Rebuilt, `first` works again (fencing `second` in turn).
    first
        .produce_sync(Message::new(topic.as_str(), "first-2"))
        .unwrap();
}
