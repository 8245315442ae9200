//! Batches (`produce_many_*`, `flush_*`) keep every message's fate straight whatever the
//! client does with each: delivered ones give reports in order (topic, partition, offset,
//! label), failed ones give their message back, one refused mid-batch gives back itself and
//! every message after it, untouched, and a batch handle dropped untaken frees what its
//! reports hold. A scripted client decides each message's fate; deliveries complete on the
//! dispatching thread (the client completes them inside `produce`), later on another thread,
//! and on a worker thread while the batch is still being dispatched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karafka_core::{KafkaError, Label, Partition, TopicPartition};
use karafka_producer::client::{
    Client, ClientFactory, ClientSetup, ConsumerGroupMetadata, Rejected, Rejection,
};
use karafka_producer::variant::TopicConfig;
use karafka_producer::{BatchDelivery, Delivery, Error, Message, Outcome, Producer};

/// What the scripted client does with the `n`-th message it is given (from 0).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    Deliver,
    FailDelivery,
    Refuse,
    /// Drops the delivery without completing it (a buggy client).
    DropDelivery,
    /// Keeps this delivery and refuses with the one it kept before (a buggy client).
    Swap,
    /// Panics inside `produce`.
    Panic,
    /// Reports this message delivered at once, then refuses it, handing back the delivery a
    /// `Swap` kept (a buggy client).
    DeliverAndSwap,
}

#[derive(Debug)]
struct Scripted {
    script: fn(usize) -> Fate,
    calls: AtomicUsize,
    /// Deliveries completed later, on another thread (every other delivered message).
    deferred: Mutex<Vec<(Delivery, Partition, i64)>>,
    /// Deliveries a `Swap` keeps.
    kept: Mutex<Vec<Delivery>>,
    /// When set, every delivered message goes to a worker thread that completes it at once.
    worker: Mutex<Option<std::sync::mpsc::Sender<(Delivery, Partition, i64)>>>,
}

#[derive(Clone, Debug)]
struct Factory(Arc<Scripted>);

impl ClientFactory for Factory {
    fn create(&self, _setup: &ClientSetup<'_>) -> Result<Box<dyn Client>, KafkaError> {
        Ok(Box::new(self.clone()))
    }
}

impl Factory {
    fn new(script: fn(usize) -> Fate) -> Self {
        Factory(Arc::new(Scripted {
            script,
            calls: AtomicUsize::new(0),
            deferred: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
            worker: Mutex::new(None),
        }))
    }

    /// Delivers every message on a worker thread, at once and in pairs swapped (out of
    /// order), while the dispatcher goes on reading the batch. The worker ends once
    /// [`stop_worker`](Self::stop_worker) is called.
    fn with_worker() -> (Self, std::thread::JoinHandle<()>) {
        let factory = Self::new(|_| Fate::Deliver);
        let (sender, receiver) = std::sync::mpsc::channel::<(Delivery, Partition, i64)>();
        *factory.0.worker.lock().unwrap() = Some(sender);
        let worker = std::thread::spawn(move || {
            let mut held = None;
            for (delivery, partition, offset) in receiver {
                match held.take() {
                    None => held = Some((delivery, partition, offset)),
                    Some((first, p, o)) => {
                        delivery.complete(Outcome::Delivered { partition, offset });
                        first.complete(Outcome::Delivered {
                            partition: p,
                            offset: o,
                        });
                    }
                }
            }
            if let Some((delivery, partition, offset)) = held {
                delivery.complete(Outcome::Delivered { partition, offset });
            }
        });
        (factory, worker)
    }

    fn stop_worker(&self) {
        self.0.worker.lock().unwrap().take();
    }

    /// Completes the deferred deliveries on another thread.
    fn complete_deferred(&self) {
        let deferred = std::mem::take(&mut *self.0.deferred.lock().unwrap());
        std::thread::spawn(move || {
            for (delivery, partition, offset) in deferred {
                delivery.complete(Outcome::Delivered { partition, offset });
            }
        })
        .join()
        .unwrap();
    }
}

fn payload_number(message: &Message) -> i64 {
    std::str::from_utf8(message.payload.as_deref().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

impl Client for Factory {
    fn produce(
        &self,
        message: &Message,
        _topic_config: Option<&TopicConfig>,
        delivery: Delivery,
    ) -> Result<(), Rejected> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let n_payload = payload_number(message);
        // The partition the message asked for, or its payload modulo 3.
        let partition = message.partition.unwrap_or((n_payload % 3) as Partition);
        match (self.0.script)(n) {
            Fate::Refuse => Err(Rejected {
                reason: Rejection::Kafka(KafkaError::other("produce", "scripted refusal")),
                delivery,
            }),
            Fate::DropDelivery => {
                drop(delivery);
                Ok(())
            }
            Fate::Swap => {
                let mut kept = self.0.kept.lock().unwrap();
                let previous = kept.pop();
                kept.push(delivery);
                match previous {
                    Some(other) => Err(Rejected {
                        reason: Rejection::Kafka(KafkaError::other("produce", "swapped")),
                        delivery: other,
                    }),
                    None => Ok(()),
                }
            }
            Fate::Panic => panic!("scripted panic in produce"),
            Fate::DeliverAndSwap => {
                delivery.complete(Outcome::Delivered {
                    partition,
                    offset: n_payload,
                });
                match self.0.kept.lock().unwrap().pop() {
                    Some(other) => Err(Rejected {
                        reason: Rejection::Kafka(KafkaError::other("produce", "swapped")),
                        delivery: other,
                    }),
                    None => Ok(()),
                }
            }
            Fate::FailDelivery => {
                delivery.complete(Outcome::Failed {
                    error: KafkaError::other("deliver message", "scripted failure"),
                    message: Box::new(message.clone()),
                });
                Ok(())
            }
            // The offset is the payload's number: reports are checked against it.
            Fate::Deliver if self.0.worker.lock().unwrap().is_some() => {
                let worker = self.0.worker.lock().unwrap();
                if let Some(worker) = worker.as_ref() {
                    worker.send((delivery, partition, n_payload)).unwrap();
                }
                Ok(())
            }
            Fate::Deliver if n % 2 == 0 => {
                delivery.complete(Outcome::Delivered {
                    partition,
                    offset: n_payload,
                });
                Ok(())
            }
            Fate::Deliver => {
                self.0
                    .deferred
                    .lock()
                    .unwrap()
                    .push((delivery, partition, n_payload));
                Ok(())
            }
        }
    }

    fn partition_for_key(
        &self,
        _topic: &str,
        _topic_config: Option<&TopicConfig>,
        _partition_key: &[u8],
    ) -> Result<Partition, KafkaError> {
        Ok(0)
    }

    fn flush(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.0.deferred.lock().unwrap().len()
    }

    fn close(&self, _timeout: Duration) {
        self.complete_deferred();
    }

    fn init_transactions(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }

    fn begin_transaction(&self) -> Result<(), KafkaError> {
        Ok(())
    }

    fn send_offsets_to_transaction(
        &self,
        _offsets: &[(TopicPartition, i64)],
        _group: &ConsumerGroupMetadata,
        _timeout: Duration,
    ) -> Result<(), KafkaError> {
        Ok(())
    }

    fn commit_transaction(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }

    fn abort_transaction(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
}

/// The three topics of [`messages`], as one test's own references.
fn topics() -> [Arc<str>; 3] {
    ["batch-a".into(), "batch-b".into(), "batch-c".into()]
}

/// Checks that nothing kept a reference to a test's topics (batch messages move theirs into
/// their reports: a lost or doubled reference shows here).
fn assert_released(topics: &[Arc<str>; 3]) {
    for topic in topics {
        assert_eq!(Arc::strong_count(topic), 1, "references to {topic} left");
    }
}

/// Message `i`: payload `i`, one of three topics in runs of ten, an explicit partition on
/// every fifth, a label on every fourth.
fn messages(count: usize) -> Vec<Message> {
    messages_on(&topics(), count)
}

/// [`messages`] on the given topic references.
fn messages_on(topics: &[Arc<str>; 3], count: usize) -> Vec<Message> {
    (0..count)
        .map(|i| {
            let mut message = Message::new(topics[(i / 10) % 3].clone(), i.to_string());
            if i % 5 == 0 {
                message = message.partition(7);
            }
            if i % 4 == 0 {
                message = message.label(format!("label-{i}"));
            }
            message
        })
        .collect()
}

fn check_report(i: usize, report: &karafka_producer::DeliveryReport) {
    let topic = ["batch-a", "batch-b", "batch-c"][(i / 10) % 3];
    assert_eq!(&*report.topic, topic, "entry {i}");
    let partition = if i % 5 == 0 { 7 } else { (i % 3) as i32 };
    assert_eq!(report.partition, partition, "entry {i}");
    assert_eq!(report.offset, i as i64, "entry {i}");
    let label = report.label.as_ref().and_then(Label::as_str);
    let expected = (i % 4 == 0).then(|| format!("label-{i}"));
    assert_eq!(label, expected.as_deref(), "entry {i}");
}

/// The parts of the `PartiallyDispatched` error a batch call is expected to fail with.
fn partially_dispatched(
    result: Result<BatchDelivery, Error>,
) -> (usize, BatchDelivery, Box<Error>, Vec<Message>) {
    match result {
        Err(Error::PartiallyDispatched {
            dispatched,
            delivery,
            failure,
            not_sent,
        }) => (dispatched, *delivery, failure, not_sent),
        other => panic!("expected PartiallyDispatched, got {other:?}"),
    }
}

fn producer_on(factory: &Factory) -> Producer {
    Producer::builder().client(factory.clone()).build().unwrap()
}

#[test]
fn every_delivered_batch_entry_reports_in_order() {
    for count in [1, 2, 3, 10, 1000] {
        let factory = Factory::new(|_| Fate::Deliver);
        let producer = producer_on(&factory);
        let batch = producer.produce_many_async(messages(count)).unwrap();
        factory.complete_deferred();
        let reports = batch.wait(Duration::from_secs(5)).unwrap();
        assert_eq!(reports.len(), count);
        for (i, report) in reports.iter().enumerate() {
            check_report(i, report);
        }
        // Reports outlive the producer and can grow like any Vec.
        producer.close().unwrap();
        let mut reports = reports;
        reports.push(reports[0].clone());
        check_report(0, &reports[count]);
    }
}

#[test]
fn failed_entries_give_their_messages_back_in_place() {
    let factory = Factory::new(|n| {
        if n % 7 == 3 {
            Fate::FailDelivery
        } else {
            Fate::Deliver
        }
    });
    let producer = producer_on(&factory);
    let batch = producer.produce_many_async(messages(500)).unwrap();
    factory.complete_deferred();
    let Err(Error::DeliveriesFailed { failed, results }) = batch.wait(Duration::from_secs(5))
    else {
        panic!("some deliveries failed");
    };
    assert_eq!(failed, (0..500).filter(|n| n % 7 == 3).count());
    assert_eq!(results.len(), 500);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(report) => {
                assert_ne!(i % 7, 3, "entry {i} should have failed");
                check_report(i, &report);
            }
            Err(error) => {
                assert_eq!(i % 7, 3, "entry {i} should have been delivered");
                let message = error.into_message().expect("the failed message comes back");
                assert_eq!(payload_number(&message), i as i64);
                let label = message.label.as_ref().and_then(Label::as_str);
                assert_eq!(label, (i % 4 == 0).then(|| format!("label-{i}")).as_deref());
            }
        }
    }
}

#[test]
fn a_refusal_mid_batch_gives_back_that_message_and_every_later_one() {
    let factory = Factory::new(|n| {
        if n == 137 {
            Fate::Refuse
        } else if n == 40 {
            Fate::FailDelivery
        } else {
            Fate::Deliver
        }
    });
    let producer = producer_on(&factory);
    let topics = topics();
    let (dispatched, delivery, failure, not_sent) =
        partially_dispatched(producer.produce_many_async(messages_on(&topics, 300)));
    assert_eq!(dispatched, 137);
    let refused = failure
        .into_message()
        .expect("the refused message comes back");
    assert_eq!(payload_number(&refused), 137);
    assert_eq!(
        not_sent.iter().map(payload_number).collect::<Vec<_>>(),
        (138..300).collect::<Vec<i64>>(),
        "every later message comes back, in order"
    );
    assert_eq!(
        not_sent[2].label.as_ref().and_then(Label::as_str),
        Some("label-140")
    );
    factory.complete_deferred();
    let Err(Error::DeliveriesFailed { failed, results }) = delivery.wait(Duration::from_secs(5))
    else {
        panic!("entry 40 failed");
    };
    assert_eq!((failed, results.len()), (1, 137));
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(report) => check_report(i, report),
            Err(_) => assert_eq!(i, 40),
        }
    }
    drop((refused, not_sent, results));
    assert_released(&topics);

    // All delivered before the refusal: the reports of the dispatched part.
    let factory = Factory::new(|n| if n == 5 { Fate::Refuse } else { Fate::Deliver });
    let producer = producer_on(&factory);
    let (_, delivery, _, _) = partially_dispatched(producer.produce_many_async(messages(9)));
    factory.complete_deferred();
    let reports = delivery.wait(Duration::from_secs(5)).unwrap();
    assert_eq!(reports.len(), 5);
    for (i, report) in reports.iter().enumerate() {
        check_report(i, report);
    }
}

#[test]
fn a_batch_handle_dropped_untaken_frees_its_reports() {
    let drops = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let factory = Factory::new(|_| Fate::Deliver);
    let producer = producer_on(&factory);
    let topic: Arc<str> = "t".into();
    let batch: Vec<Message> = (0..100)
        .map(|i| {
            Message::new(topic.clone(), i.to_string()).label(Label::new(Counted(drops.clone())))
        })
        .collect();
    let delivery = producer.produce_many_async(batch).unwrap();
    drop(delivery);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "half the deliveries are still in flight"
    );
    factory.complete_deferred();
    assert_eq!(drops.load(Ordering::SeqCst), 100);
    assert_eq!(
        Arc::strong_count(&topic),
        1,
        "the reports' topics are dropped too"
    );

    // The same through the buffer.
    producer
        .buffer_many(
            (0..10)
                .map(|i| Message::new("t", i.to_string()).label(Label::new(Counted(drops.clone()))))
                .collect(),
        )
        .unwrap();
    let flushed = producer.flush_async().unwrap();
    factory.complete_deferred();
    drop(flushed);
    assert_eq!(drops.load(Ordering::SeqCst), 110);
}

#[test]
fn reports_written_by_another_thread_while_the_batch_is_dispatched() {
    let (factory, worker) = Factory::with_worker();
    let producer = producer_on(&factory);
    for round in 0..3 {
        // Spare capacity: the batch's allocation is larger than its messages.
        let mut batch = Vec::with_capacity(40_000);
        batch.extend(messages(20_000));
        let reports = producer
            .produce_many_async(batch)
            .unwrap()
            .wait(Duration::from_secs(30))
            .unwrap();
        assert_eq!(reports.len(), 20_000, "round {round}");
        for (i, report) in reports.iter().enumerate() {
            check_report(i, report);
        }
    }
    // Through the buffer, filled twice (the second call extends it).
    producer.buffer_many(messages(5_000)).unwrap();
    producer
        .buffer_many(messages(10_000).split_off(5_000))
        .unwrap();
    let reports = producer
        .flush_async()
        .unwrap()
        .wait(Duration::from_secs(30))
        .unwrap();
    assert_eq!(reports.len(), 10_000);
    for (i, report) in reports.iter().enumerate() {
        check_report(i, report);
    }
    factory.stop_worker();
    worker.join().unwrap();
}

#[test]
fn a_refusal_of_the_first_message_sends_nothing() {
    let factory = Factory::new(|n| if n == 0 { Fate::Refuse } else { Fate::Deliver });
    let producer = producer_on(&factory);
    let (dispatched, delivery, failure, not_sent) =
        partially_dispatched(producer.produce_many_async(messages(50)));
    assert_eq!(dispatched, 0);
    let refused = failure.into_message().unwrap();
    assert_eq!(payload_number(&refused), 0);
    assert_eq!(
        refused.label.as_ref().and_then(Label::as_str),
        Some("label-0")
    );
    assert_eq!(not_sent.len(), 49);
    assert!(delivery.wait(Duration::from_secs(1)).unwrap().is_empty());
}

#[test]
fn a_client_that_drops_a_delivery_reports_that_message_failed() {
    let factory = Factory::new(|n| {
        if n == 4 {
            Fate::DropDelivery
        } else {
            Fate::Deliver
        }
    });
    let producer = producer_on(&factory);
    let batch = producer.produce_many_async(messages(10)).unwrap();
    factory.complete_deferred();
    let Err(Error::DeliveriesFailed { failed, results }) = batch.wait(Duration::from_secs(5))
    else {
        panic!("entry 4 failed");
    };
    assert_eq!(failed, 1);
    assert!(results[4].is_err());
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| (i == 4) == r.is_err())
    );
}

#[test]
fn a_client_that_hands_back_another_delivery_cannot_corrupt_either_batch() {
    // Message 2 of the first batch is kept (and taken as sent); message 3 is refused with
    // message 2's delivery handed back in its place.
    let factory = Factory::new(|n| {
        if n == 2 || n == 3 {
            Fate::Swap
        } else {
            Fate::Deliver
        }
    });
    let producer = producer_on(&factory);
    let topics = topics();
    let (dispatched, delivery, failure, not_sent) =
        partially_dispatched(producer.produce_many_async(messages_on(&topics, 6)));
    assert_eq!(dispatched, 3);
    assert!(
        failure.to_string().contains("another message's delivery"),
        "{failure}"
    );
    assert_eq!(payload_number(&failure.into_message().unwrap()), 3);
    assert_eq!(not_sent.len(), 2);
    factory.complete_deferred();
    // Entry 2's delivery, handed back and dropped, reported it failed; message 3's delivery
    // is still kept by the client: completing it late changes nothing.
    let Err(Error::DeliveriesFailed { failed, results }) = delivery.wait(Duration::from_secs(5))
    else {
        panic!("entry 2 failed");
    };
    assert_eq!((failed, results.len()), (1, 3));
    assert!(results[2].is_err());
    let kept = factory.0.kept.lock().unwrap().pop().unwrap();
    kept.complete(Outcome::Delivered {
        partition: 0,
        offset: 99,
    });
    drop((not_sent, results));
    assert_released(&topics);
}

#[test]
fn a_message_reported_delivered_and_refused_comes_back_and_its_report_is_dropped() {
    // Message 1 is kept; message 2 is reported delivered at once, then refused with message
    // 1's delivery handed back: message 2 goes back to the caller (with its topic), its late
    // report is dropped, message 1's dropped delivery reports it failed.
    let factory = Factory::new(|n| match n {
        1 => Fate::Swap,
        2 => Fate::DeliverAndSwap,
        _ => Fate::Deliver,
    });
    let producer = producer_on(&factory);
    let topics = topics();
    let (dispatched, delivery, failure, not_sent) =
        partially_dispatched(producer.produce_many_async(messages_on(&topics, 5)));
    assert_eq!((dispatched, not_sent.len()), (2, 2));
    let refused = failure.into_message().unwrap();
    assert_eq!(payload_number(&refused), 2);
    assert_eq!(&*refused.topic, "batch-a");
    factory.complete_deferred();
    let Err(Error::DeliveriesFailed { failed, results }) = delivery.wait(Duration::from_secs(5))
    else {
        panic!("entry 1 failed");
    };
    assert_eq!((failed, results.len()), (1, 2));
    check_report(0, results[0].as_ref().unwrap());
    drop((refused, not_sent, results));
    assert_released(&topics);
}

#[test]
fn an_empty_batch_reports_nothing() {
    let factory = Factory::new(|_| Fate::Deliver);
    let producer = producer_on(&factory);
    let delivery = producer.produce_many_async(Vec::new()).unwrap();
    assert!(delivery.is_empty() && delivery.is_done());
    assert!(delivery.wait(Duration::from_secs(1)).unwrap().is_empty());
    producer.buffer_many(Vec::new()).unwrap();
    assert!(producer.flush_sync().unwrap().is_empty());
}

#[test]
fn messages_refused_while_closing_come_back_whole() {
    let factory = Factory::new(|n| {
        if n % 2 == 0 {
            Fate::Refuse
        } else {
            Fate::Deliver
        }
    });
    let producer = producer_on(&factory);
    let topics = topics();
    producer.buffer_many(messages_on(&topics, 6)).unwrap();
    let Err(Error::Undelivered { undelivered }) = producer.close() else {
        panic!("the refused messages come back");
    };
    let mut back: Vec<_> = undelivered
        .iter()
        .map(|m| {
            let label = m.label.as_ref().and_then(Label::as_str).map(str::to_owned);
            (payload_number(m), label, m.topic.to_string())
        })
        .collect();
    back.sort();
    let label = |i: i64| Some(format!("label-{i}"));
    let a = || "batch-a".to_owned();
    assert_eq!(
        back,
        [(0, label(0), a()), (2, None, a()), (4, label(4), a())]
    );
    drop(undelivered);
    drop(producer);
    assert_released(&topics);
}

#[test]
fn a_client_that_panics_mid_batch_leaves_nothing_behind() {
    let drops = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let factory = Factory::new(|n| if n == 30 { Fate::Panic } else { Fate::Deliver });
    let producer = producer_on(&factory);
    let topic: Arc<str> = "t".into();
    let batch: Vec<Message> = (0..100)
        .map(|i| {
            Message::new(topic.clone(), i.to_string()).label(Label::new(Counted(drops.clone())))
        })
        .collect();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        producer.produce_many_async(batch)
    }));
    assert!(outcome.is_err(), "the client's panic comes through");
    factory.complete_deferred();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        100,
        "every message (and label) is dropped: sent ones with their reports, the rest unsent"
    );
    assert_eq!(Arc::strong_count(&topic), 1, "and every topic reference");
    // The producer still works.
    let reports = producer.produce_many_async(messages(10)).unwrap();
    factory.complete_deferred();
    assert_eq!(reports.wait(Duration::from_secs(5)).unwrap().len(), 10);
}
