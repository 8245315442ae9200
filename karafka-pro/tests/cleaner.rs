//! The cleaner API against a broker (the embedded mock, or `KARAFKA_TEST_BROKERS`): on
//! librdkafka's own messages, a cleaning iteration reads each payload in place, then frees
//! it; key, headers and timestamp stay readable, the payload is an error; and a message
//! cleaned before its batch failed is dead-lettered only once fetched again (its payload
//! then kept from cleaning), with its real bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context};
use karafka_core::Headers;
use karafka_core::instrumentation::{ErrorKind, Event};
use karafka_pro::CleanerMessages;
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, client_config, unique_group, unique_topic, wait_until};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

fn app(broker: &TestBroker, group: &str) -> AppBuilder {
    let mut builder = App::builder().name(group);
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    builder
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("payload-{i}-").into_bytes();
    p.resize(10_000, b'x' + (i % 3) as u8);
    p
}

#[derive(Default)]
struct Checked {
    read: Mutex<Vec<i64>>,
    problems: Mutex<Vec<String>>,
}

struct Reader {
    checked: Arc<Checked>,
}

impl Consumer for Reader {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let problem = |p: String| self.checked.problems.lock().unwrap().push(p);
        let mut batch = ctx.messages().each_clean();
        while let Some(message) = batch.next() {
            let i = message.offset() as usize;
            if message.payload_bytes()? != Some(&payload(i)[..]) {
                problem(format!("payload of {i} differs"));
            }
            ctx.mark_as_consumed(&message);
            self.checked.read.lock().unwrap().push(message.offset());
        }
        drop(batch);
        for m in ctx.messages() {
            let i = m.offset() as usize;
            let key = format!("key-{i}");
            let fine = m.is_cleaned()
                && m.key_str() == Some(key.as_str())
                && m.headers().get_str("n") == Some(i.to_string().as_str())
                && m.timestamp().millis().is_some()
                && !m.is_tombstone()
                && m.payload().is_err_and(|e| e.is_cleaned())
                && m.raw_payload().is_err();
            if !fine {
                problem(format!("message {i} after cleaning: {m:?}"));
            }
        }
        Ok(())
    }
}

#[test]
fn a_cleaning_iteration_reads_in_place_then_cleans_librdkafkas_messages() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("cleaner");
    let group = unique_group("cleaner");
    broker.create_topic(&topic, 1).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    const N: usize = 300;
    for i in 0..N {
        let mut headers = Headers::new();
        headers.append("n", i.to_string());
        producer
            .produce_sync(
                Message::new(topic.as_str(), payload(i))
                    .key(format!("key-{i}"))
                    .headers(headers),
            )
            .unwrap();
    }
    let checked = Arc::new(Checked::default());
    let c = checked.clone();
    let app = app(&broker, &group)
        .topic(&topic, move |t| {
            let c = c.clone();
            t.consumer(move || Reader { checked: c.clone() })
                .max_wait_time(Duration::from_millis(200))
        })
        .build()
        .unwrap();
    let running = app.start().unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        checked.read.lock().unwrap().len() >= N
    });
    running.stop_blocking().unwrap();
    assert!(done.is_ok(), "not every message was read");
    let read = checked.read.lock().unwrap().clone();
    assert_eq!(read, (0..N as i64).collect::<Vec<_>>());
    let problems = checked.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
}

/// Cleans its batch, then fails: every time.
struct CleanThenFail {
    runs: Arc<AtomicUsize>,
}

impl Consumer for CleanThenFail {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.runs.fetch_add(1, Ordering::AcqRel);
        ctx.messages().clean();
        Err("broken".into())
    }
}

#[test]
fn a_message_cleaned_before_its_failure_is_dead_lettered_with_its_real_bytes_once_fetched_again() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("cleaner-dlq");
    let dlq = unique_topic("cleaner-dlq-out");
    let group = unique_group("cleaner-dlq");
    broker.create_topic(&topic, 1).unwrap();
    broker.create_topic(&dlq, 1).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), payload(7)).key("seven"))
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let c = runs.clone();
    let d = dlq.clone();
    let app = app(&broker, &group)
        .pause_timeout(Duration::from_millis(100))
        .topic(&topic, move |t| {
            let c = c.clone();
            t.consumer(move || CleanThenFail { runs: c.clone() })
                .max_wait_time(Duration::from_millis(200))
                .dead_letter_queue(DeadLetterQueue::new(d.as_str()).max_retries(0))
        })
        .build()
        .unwrap();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let dispatched = Arc::new(Mutex::new(Vec::new()));
    let (r, s) = (refused.clone(), dispatched.clone());
    app.monitor().subscribe_fn(move |e| match e {
        Event::ErrorOccurred(err) if err.kind == ErrorKind::DlqDispatch => {
            r.lock().unwrap().push(err.error.to_string())
        }
        Event::DlqDispatched { offset, .. } => s.lock().unwrap().push(*offset),
        _ => {}
    });
    let running = app.start().unwrap();
    let sent = wait_until(Duration::from_secs(60), || {
        !dispatched.lock().unwrap().is_empty()
    });
    running.stop_blocking().unwrap();
    let refused = refused.lock().unwrap().clone();
    println!(
        "cleaner + DLQ: refused {refused:?}; dispatched {:?}",
        dispatched.lock().unwrap()
    );
    assert!(sent.is_ok(), "never dead-lettered");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("was cleaned"), "{refused:?}");
    // What reached the dead-letter topic is the original payload.
    let reader: BaseConsumer = client_config(&broker.consumer_settings(&unique_group("reader")))
        .create()
        .unwrap();
    reader.subscribe(&[dlq.as_str()]).unwrap();
    let deadline = std::time::Instant::now() + broker.join_deadline();
    let mut out = Vec::new();
    while out.is_empty() && std::time::Instant::now() < deadline {
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            out.push(m.unwrap().detach());
        }
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload(), Some(&payload(7)[..]));
}
