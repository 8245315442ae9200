//! Unit-style consumer tests on the harness (feature `testing`): no broker, each well under a
//! second. The processing path is the production one: these also pin its decisions (retry,
//! DLQ after retries, deserialization failures, manual offsets, seeks and pauses, hooks).
#![cfg(feature = "testing")]

use std::sync::{Arc, Mutex};

use karafka_consumer::harness::{Harness, HarnessError, PauseState};
use karafka_consumer::payload::{Json, Raw};
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context};
use karafka_core::KafkaError;
use karafka_producer::Message;
use karafka_testing::Fault;

fn app() -> AppBuilder {
    // Never contacted: the harness builds no client.
    App::builder().kafka("bootstrap.servers", "unused:9092")
}

/// Fails on a payload `bad`; records what it saw; marks each message it processed when
/// `marks` (so a failure names the failing message as the first unmarked one).
#[derive(Clone, Default)]
struct Picky {
    marks: bool,
    seen: Arc<Mutex<Vec<(i32, i64, u32)>>>,
}

impl Consumer for Picky {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for message in ctx.messages() {
            if message.raw_payload()?.is_some_and(|p| &p[..] == b"bad") {
                return Err(format!("bad message at {}", message.offset()).into());
            }
            self.seen
                .lock()
                .unwrap()
                .push((message.partition(), message.offset(), ctx.attempt()));
            if self.marks {
                ctx.mark_as_consumed(message);
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_message_is_retried_then_dead_lettered_with_its_origin() {
    let picky = Picky {
        marks: true,
        ..Picky::default()
    };
    let consumer = picky.clone();
    let app = app()
        .name("shop")
        .topic("orders", move |t| {
            t.consumer(move || consumer.clone())
                .dead_letter_queue(DeadLetterQueue::new("orders-dlq").max_retries(2))
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    orders.produce("good 0");
    orders.produce_message(
        Message::new("ignored", "bad")
            .key("k-1")
            .header("trace", "t-1"),
    );
    orders.produce("good 2");

    let first = orders.consume().await;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].first_offset, first[0].last_offset), (0, 2));
    assert_eq!(first[0].error.as_deref(), Some("bad message at 1"));
    // Offset 0 was processed and marked; the retry starts at the failing message.
    assert_eq!(orders.marked(0), Some(1));
    assert_eq!(orders.attempt(0), 2);
    assert_eq!(
        orders.paused(0),
        Some(PauseState {
            resume_from: 1,
            retry: true
        })
    );

    let second = orders.consume().await;
    assert_eq!((second[0].attempt, second[0].first_offset), (2, 1));
    assert!(second[0].error.is_some());
    assert!(harness.produced("orders-dlq").is_empty(), "still retrying");

    // The third failure exhausts max_retries=2: offset 1 goes to the DLQ and is skipped.
    let third = orders.consume().await;
    assert_eq!(third[0].attempt, 3);
    let dlq = harness.produced("orders-dlq");
    assert_eq!(dlq.len(), 1);
    let dead = &dlq[0].message;
    assert_eq!(dead.payload.as_deref(), Some(&b"bad"[..]));
    assert_eq!(dead.key.as_deref(), Some(&b"k-1"[..]));
    assert_eq!(dead.headers.get_str("trace"), Some("t-1"));
    assert_eq!(dead.headers.get_str("source_topic"), Some("orders"));
    assert_eq!(dead.headers.get_str("source_partition"), Some("0"));
    assert_eq!(dead.headers.get_str("source_offset"), Some("1"));
    assert_eq!(dead.headers.get_str("source_consumer_group"), Some("shop"));
    assert_eq!(orders.marked(0), Some(2));

    // Processing resumes after the dead letter.
    let fourth = orders.consume().await;
    assert_eq!((fourth[0].first_offset, fourth[0].attempt), (2, 1));
    assert!(fourth[0].error.is_none());
    assert_eq!(orders.marked(0), Some(3));
    assert!(orders.consume().await.is_empty(), "nothing left");
    let seen = picky.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|(_, offset, _)| *offset == 2).count(),
        1,
        "offset 2 processed once: {seen:?}"
    );
}

#[tokio::test]
async fn without_marking_the_first_message_of_the_failing_batch_is_dead_lettered() {
    // As in Karafka: the framework cannot know which message failed unless the consumer marks
    // its progress, so after the retries it dispatches the first unmarked one and goes on
    // from there (the failing message then fails again, and follows).
    let app = app()
        .topic("orders", |t| {
            t.consumer(Picky::default)
                .dead_letter_queue(DeadLetterQueue::new("orders-dlq").max_retries(0))
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    orders.produce("good 0");
    orders.produce("bad");
    orders.consume().await;
    orders.consume().await;
    let dlq: Vec<_> = harness
        .produced("orders-dlq")
        .into_iter()
        .map(|p| p.message.payload.unwrap())
        .collect();
    assert_eq!(dlq, ["good 0", "bad"]);
    assert_eq!(orders.marked(0), Some(2));
}

#[tokio::test]
async fn a_failed_dead_letter_dispatch_is_retried_and_nothing_is_lost() {
    let app = app()
        .topic("orders", |t| {
            t.consumer(|| Picky {
                marks: true,
                ..Picky::default()
            })
            .dead_letter_queue(DeadLetterQueue::new("orders-dlq").max_retries(0))
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    orders.produce("bad");
    orders.produce("good");
    harness.client().inject(Fault::Refuse(KafkaError::other(
        "produce",
        "the DLQ is down",
    )));
    orders.consume().await;
    // The dispatch failed: the message is neither skipped nor marked; a retry is scheduled.
    assert!(harness.produced("orders-dlq").is_empty());
    assert_eq!(orders.marked(0), None);
    assert_eq!(
        orders.paused(0),
        Some(PauseState {
            resume_from: 0,
            retry: true
        })
    );
    orders.consume().await; // fails again, and this time the dispatch goes through
    assert_eq!(harness.produced("orders-dlq").len(), 1);
    orders.consume().await;
    assert_eq!(orders.marked(0), Some(2));
}

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(Clone, Default)]
struct Orders {
    ids: Arc<Mutex<Vec<u64>>>,
}

impl Consumer for Orders {
    type Payload = Json<Order>;
    async fn consume(&mut self, ctx: &Context<Json<Order>>) -> ConsumeResult {
        for message in ctx.messages() {
            self.ids.lock().unwrap().push(message.payload()?.id);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_payload_that_does_not_deserialize_is_retried_never_skipped() {
    let orders = Orders::default();
    let consumer = orders.clone();
    let app = app()
        .topic("orders", move |t| t.consumer(move || consumer.clone()))
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut test = harness.consumer_for("orders").unwrap();
    test.produce(r#"{"id":1}"#);
    test.produce("not json");
    for attempt in 1..=3 {
        let outcome = test.consume().await;
        assert_eq!(outcome[0].attempt, attempt);
        let error = outcome[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("orders/0@1"), "{error}");
    }
    // Without a dead-letter queue the bad message blocks the partition: nothing is marked
    // past it, ever.
    assert_eq!(test.marked(0), None);
    assert_eq!(test.attempt(0), 4);
}

/// Marks only even offsets itself.
struct EvenMarker;

impl Consumer for EvenMarker {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for message in ctx.messages() {
            if message.offset() % 2 == 0 {
                ctx.mark_as_consumed(message);
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn with_manual_offset_management_only_what_the_consumer_marks_is_stored() {
    let app = app()
        .topic("events", |t| {
            t.consumer(|| EvenMarker).manual_offset_management(true)
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut events = harness.consumer_for("events").unwrap();
    for i in 0..4 {
        events.produce(format!("e{i}"));
    }
    assert!(events.consume().await[0].error.is_none());
    // The last even offset is 2: stored next offset 3, not 4.
    assert_eq!(events.marked(0), Some(3));
}

/// On `rewind`, seeks back to 0 once; pauses on `hold`.
#[derive(Default)]
struct Controls {
    rewound: bool,
    batches: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl Consumer for Controls {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let (first, last) = (
            ctx.messages().first().unwrap().offset(),
            ctx.messages().last().unwrap().offset(),
        );
        self.batches.lock().unwrap().push((first, last));
        for message in ctx.messages() {
            match message.raw_payload()?.map(|p| &p[..]) {
                Some(b"rewind") if !self.rewound => {
                    self.rewound = true;
                    ctx.seek(0);
                    return Ok(());
                }
                Some(b"hold") => {
                    ctx.pause(message.offset(), std::time::Duration::from_secs(3600));
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn seeks_pauses_and_max_messages_shape_the_next_batches() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let app = app()
        .topic("jobs", move |t| {
            t.consumer(move || Controls {
                rewound: false,
                batches: seen.clone(),
            })
            .manual_offset_management(true)
            .max_messages(2)
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut jobs = harness.consumer_for("jobs").unwrap();
    for payload in ["a", "rewind", "b", "hold", "c"] {
        jobs.produce(payload);
    }
    jobs.consume().await; // 0..=1, seeks to 0
    jobs.consume().await; // 0..=1 again
    jobs.consume().await; // 2..=3, pauses at 3
    assert_eq!(
        jobs.paused(0),
        Some(PauseState {
            resume_from: 3,
            retry: false
        })
    );
    assert!(jobs.consume().await.is_empty(), "paused by the consumer");
    jobs.resume(0);
    jobs.consume().await; // 3..=4 (pauses at 3 again)
    assert_eq!(*batches.lock().unwrap(), [(0, 1), (0, 1), (2, 3), (3, 4)]);
}

/// Produces a copy of each message to `audit`; records its hooks.
struct Auditor {
    hooks: Arc<Mutex<Vec<String>>>,
}

impl Consumer for Auditor {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for message in ctx.messages() {
            let payload = message.raw_payload()?.cloned().unwrap_or_default();
            ctx.producer()
                .produce_sync(Message::new("audit", payload).key(ctx.partition().to_string()))?;
        }
        Ok(())
    }

    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.hooks.lock().unwrap().push(format!(
            "revoked {} after {:?}",
            ctx.partition(),
            ctx.messages().last().map(|m| m.offset())
        ));
        Ok(())
    }

    async fn shutdown(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.hooks
            .lock()
            .unwrap()
            .push(format!("shutdown {}", ctx.partition()));
        Ok(())
    }
}

#[tokio::test]
async fn produced_messages_partitions_and_hooks() {
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let recorded = hooks.clone();
    let app = app()
        .topic("visits", move |t| {
            t.consumer(move || Auditor {
                hooks: recorded.clone(),
            })
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut visits = harness.consumer_for("visits").unwrap();
    assert_eq!(
        visits.produce_message(Message::new("visits", "p0-a").partition(0)),
        0
    );
    assert_eq!(
        visits.produce_message(Message::new("visits", "p1-a").partition(1)),
        0
    );
    assert_eq!(
        visits.produce_message(Message::new("visits", "p1-b").partition(1)),
        1
    );
    let outcomes = visits.consume().await;
    assert_eq!(
        outcomes
            .iter()
            .map(|o| (o.partition, o.first_offset, o.last_offset))
            .collect::<Vec<_>>(),
        [(0, 0, 0), (1, 0, 1)]
    );
    let audit: Vec<_> = harness
        .produced("audit")
        .into_iter()
        .map(|p| {
            (
                String::from_utf8(p.message.key.unwrap().to_vec()).unwrap(),
                String::from_utf8(p.message.payload.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("0".into(), "p0-a".into()),
            ("1".into(), "p1-a".into()),
            ("1".into(), "p1-b".into())
        ]
    );
    assert_eq!(visits.revoke(1).await, None);
    assert!(visits.shutdown().await.is_empty());
    assert_eq!(
        *hooks.lock().unwrap(),
        ["revoked 1 after Some(1)", "shutdown 0"]
    );
    // After the revocation, partition 1 starts again from what was marked.
    visits.produce_message(Message::new("visits", "p1-c").partition(1));
    let again = visits.consume().await;
    assert_eq!(
        again
            .iter()
            .map(|o| (o.partition, o.first_offset))
            .collect::<Vec<_>>(),
        [(1, 2)]
    );
}

#[test]
fn unrouted_topics_are_named_clearly() {
    let app = app()
        .topic("orders", |t| t.consumer(|| EvenMarker))
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let error = harness.consumer_for("payments").unwrap_err();
    assert!(matches!(error, HarnessError::NotRouted { .. }));
    assert_eq!(
        error.to_string(),
        "topic `payments` is not routed to a consumer in this app; routed: [\"orders\"]"
    );
}

/// The harness runs a batch per partition, one job each, from that partition's own messages:
/// what partition scheduling (the default) does with a partition's queue; an app with poll
/// scheduling is tested the same way (the pipeline, decisions and hooks are shared).
#[tokio::test]
async fn each_partition_gets_its_own_batch_whatever_the_scheduling() {
    for scheduling in [
        karafka_consumer::Scheduling::Partition,
        karafka_consumer::Scheduling::Poll,
    ] {
        let picky = Picky::default();
        let consumer = picky.clone();
        let app = app()
            .scheduling(scheduling)
            .topic("orders", move |t| {
                t.consumer(move || consumer.clone()).max_messages(3)
            })
            .build()
            .unwrap();
        let harness = Harness::new(&app);
        let mut orders = harness.consumer_for("orders").unwrap();
        for i in 0..5 {
            orders.produce_message(Message::new("orders", format!("a{i}")).partition(0));
        }
        orders.produce_message(Message::new("orders", "b0").partition(1));
        let batches = orders.consume().await;
        let shape: Vec<(i32, i64, i64)> = batches
            .iter()
            .map(|b| (b.partition, b.first_offset, b.last_offset))
            .collect();
        assert_eq!(shape, [(0, 0, 2), (1, 0, 0)], "{scheduling}");
        let batches = orders.consume().await;
        assert_eq!(batches.len(), 1, "{scheduling}");
        assert_eq!((batches[0].first_offset, batches[0].last_offset), (3, 4));
        assert_eq!(picky.seen.lock().unwrap().len(), 6, "{scheduling}");
    }
}
