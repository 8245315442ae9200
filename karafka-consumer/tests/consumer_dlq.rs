//! Dead-letter queues: after `max_retries` failed retries the failing message is dispatched
//! to the DLQ topic with its key, payload and headers plus `source_*` headers, and skipped;
//! the partition keeps flowing and everything after it is processed; a payload that fails to
//! decode goes the same way; a DLQ dispatch that fails is retried, never dropped.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Recorder, app, committed};
use karafka_consumer::payload::{Json, Text};
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, client_config, unique_group, unique_topic, wait_until};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;

fn producer(broker: &TestBroker) -> Producer {
    Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap()
}

fn read(broker: &TestBroker, topic: &str, want: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer =
        client_config(&broker.consumer_settings(&unique_group("dlq-reader")))
            .create()
            .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + broker.join_deadline();
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.unwrap().detach());
        }
    }
    out
}

fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .filter(|e| e.key == key)
            .last()
            .and_then(|e| e.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    })
}

struct PoisonAware {
    processed: Arc<Mutex<BTreeSet<i64>>>,
    poison_tries: Arc<Mutex<u32>>,
}

impl Consumer for PoisonAware {
    type Payload = Text;
    async fn consume(&mut self, ctx: &Context<Text>) -> ConsumeResult {
        for message in ctx.messages() {
            if &**message.payload()? == "poison" {
                *self.poison_tries.lock().unwrap() += 1;
                return Err("cannot process poison".into());
            }
            self.processed.lock().unwrap().insert(message.offset());
            ctx.mark_as_consumed(message);
        }
        Ok(())
    }
}

#[test]
fn a_message_that_keeps_failing_is_dead_lettered_and_skipped() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (topic, dlq_topic, group) = (
        unique_topic("dlq-src"),
        unique_topic("dlq"),
        unique_group("dlq"),
    );
    broker.create_topic(&topic, 1).unwrap();
    broker.create_topic(&dlq_topic, 1).unwrap();
    let p = producer(&broker);
    for i in 0..10 {
        let payload = if i == 3 {
            "poison".to_owned()
        } else {
            format!("ok-{i}")
        };
        p.produce_sync(
            Message::new(topic.as_str(), payload)
                .key(format!("key-{i}"))
                .header("trace", format!("t{i}")),
        )
        .unwrap();
    }
    let processed: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let tries = Arc::new(Mutex::new(0));
    let (pr, tr) = (processed.clone(), tries.clone());
    let dlq = dlq_topic.clone();
    let app = app(&broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || PoisonAware {
                processed: pr.clone(),
                poison_tries: tr.clone(),
            })
            .dead_letter_queue(DeadLetterQueue::new(dlq.as_str()).max_retries(2))
        })
        .build()
        .unwrap();
    let events = Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    wait_until(broker.join_deadline() + Duration::from_secs(10), || {
        processed.lock().unwrap().len() == 9
    })
    .expect("every other message is processed");
    running.stop_blocking().unwrap();

    let expected: BTreeSet<i64> = (0..10).filter(|i| *i != 3).collect();
    assert_eq!(*processed.lock().unwrap(), expected);
    assert_eq!(
        *tries.lock().unwrap(),
        3,
        "1 try + max_retries (2) retries, then the DLQ"
    );
    assert_eq!(events.count("dead_letter_queue.dispatched"), 1);
    assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&10));

    let dead = read(&broker, &dlq_topic, 1);
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.payload(), Some(b"poison".as_slice()));
    assert_eq!(m.key(), Some(b"key-3".as_slice()));
    assert_eq!(
        header(m, "trace").as_deref(),
        Some("t3"),
        "original headers are kept"
    );
    assert_eq!(header(m, "source_topic").as_deref(), Some(topic.as_str()));
    assert_eq!(header(m, "source_partition").as_deref(), Some("0"));
    assert_eq!(header(m, "source_offset").as_deref(), Some("3"));
    assert_eq!(
        header(m, "source_consumer_group").as_deref(),
        Some(group.as_str())
    );
}

#[derive(serde::Deserialize)]
struct Reading {
    value: i64,
}

struct Sum {
    sum: Arc<Mutex<i64>>,
}

impl Consumer for Sum {
    type Payload = Json<Reading>;
    async fn consume(&mut self, ctx: &Context<Json<Reading>>) -> ConsumeResult {
        for message in ctx.messages() {
            let reading = message.payload()?;
            *self.sum.lock().unwrap() += reading.value;
            ctx.mark_as_consumed(message);
        }
        Ok(())
    }
}

#[test]
fn a_payload_that_does_not_decode_goes_to_the_dlq() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (topic, dlq_topic, group) = (
        unique_topic("json"),
        unique_topic("json-dlq"),
        unique_group("json"),
    );
    broker.create_topic(&topic, 1).unwrap();
    broker.create_topic(&dlq_topic, 1).unwrap();
    let p = producer(&broker);
    for payload in [
        r#"{"value":1}"#,
        r#"{"value":2}"#,
        "{{not json",
        r#"{"value":4}"#,
    ] {
        p.produce_sync(Message::new(topic.as_str(), payload))
            .unwrap();
    }
    let sum = Arc::new(Mutex::new(0));
    let s = sum.clone();
    let dlq = dlq_topic.clone();
    let app = app(&broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || Sum { sum: s.clone() })
                .dead_letter_queue(DeadLetterQueue::new(dlq.as_str()).max_retries(0))
        })
        .build()
        .unwrap();
    let events = Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    wait_until(broker.join_deadline() + Duration::from_secs(10), || {
        *sum.lock().unwrap() == 7
    })
    .expect("the valid payloads are summed");
    running.stop_blocking().unwrap();
    let dead = read(&broker, &dlq_topic, 1);
    assert_eq!(dead[0].payload(), Some(b"{{not json".as_slice()));
    assert!(events.count("error.occurred") >= 2, "{:?}", events.names());
    let kinds: Vec<String> = events
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            karafka_core::instrumentation::Event::ErrorOccurred(err) => {
                Some(err.kind.as_str().to_owned())
            }
            _ => None,
        })
        .collect();
    assert!(
        kinds.contains(&"consumer.deserialization.error".to_owned()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"consumer.consume.error".to_owned()),
        "{kinds:?}"
    );
}

#[test]
fn a_failed_dlq_dispatch_is_retried_never_skipped() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (topic, group) = (unique_topic("dlq-fail"), unique_group("dlq-fail"));
    broker.create_topic(&topic, 1).unwrap();
    let p = producer(&broker);
    for payload in ["ok-0", "poison", "ok-2"] {
        p.produce_sync(Message::new(topic.as_str(), payload))
            .unwrap();
    }
    // A producer that refuses every message: each DLQ dispatch fails.
    let refusing = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .max_payload_size(1)
        .build()
        .unwrap();
    let processed: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let tries = Arc::new(Mutex::new(0));
    let (pr, tr) = (processed.clone(), tries.clone());
    let app = app(&broker, &group)
        .producer(refusing)
        .topic(&topic, move |t| {
            t.consumer(move || PoisonAware {
                processed: pr.clone(),
                poison_tries: tr.clone(),
            })
            .dead_letter_queue(DeadLetterQueue::new("never-written").max_retries(0))
        })
        .build()
        .unwrap();
    let events = Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    let dispatch_errors = || {
        events
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, karafka_core::instrumentation::Event::ErrorOccurred(err) if err.kind.as_str() == "consumer.dlq.dispatch.error"))
            .count()
    };
    wait_until(broker.join_deadline() + Duration::from_secs(10), || {
        dispatch_errors() >= 3
    })
    .expect("the dispatch is tried again and again");
    running.stop_blocking().unwrap();
    assert_eq!(
        *processed.lock().unwrap(),
        BTreeSet::from([0]),
        "nothing after the poison was processed"
    );
    assert!(*tries.lock().unwrap() >= 3);
    assert_eq!(events.count("dead_letter_queue.dispatched"), 0);
    assert_eq!(
        committed(&broker, &group, &topic, 1).get(&0),
        Some(&1),
        "the poison is not skipped"
    );
}
