//! Failure handling: a failed batch is never marked; it is retried from its first unmarked
//! message after a back-off that doubles per retry and is capped by `pause_max_timeout`;
//! panics are caught and retried like errors; `ctx.attempt()` counts the tries; every failure
//! is instrumented.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Recorder, app, committed, produce};
use karafka_consumer::payload::Text;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_core::instrumentation::Event;
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

type Log = Arc<Mutex<Vec<(u32, Instant, i64)>>>;

/// Fails the first `failures` tries of every batch; marks `mark_first` messages before failing.
struct Flaky {
    log: Log,
    failures: u32,
    mark_first: usize,
    panic: bool,
}

impl Consumer for Flaky {
    type Payload = Text;
    async fn consume(&mut self, ctx: &Context<Text>) -> ConsumeResult {
        let first = ctx.messages().first().map_or(-1, |m| m.offset());
        self.log
            .lock()
            .unwrap()
            .push((ctx.attempt(), Instant::now(), first));
        if ctx.attempt() <= self.failures {
            for m in ctx.messages().iter().take(self.mark_first) {
                assert!(ctx.mark_as_consumed(m));
            }
            if self.panic {
                panic!("consumer bug on attempt {}", ctx.attempt());
            }
            return Err(format!("failure on attempt {}", ctx.attempt()).into());
        }
        Ok(())
    }
}

fn run(
    broker: &TestBroker,
    failures: u32,
    mark_first: usize,
    panic: bool,
) -> (Log, Recorder, String, String) {
    let topic = unique_topic("retry");
    let group = unique_group("retry");
    broker.create_topic(&topic, 1).unwrap();
    produce(broker, &topic, 5, "m");
    let log: Log = Arc::default();
    let l = log.clone();
    let app = app(broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || Flaky {
                log: l.clone(),
                failures,
                mark_first,
                panic,
            })
        })
        .build()
        .unwrap();
    let events = Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    wait_until(broker.join_deadline() + Duration::from_secs(10), || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(attempt, _, _)| *attempt == failures + 1)
    })
    .expect("the batch eventually succeeds");
    // Let the successful batch's mark be stored before stopping (stop commits it).
    running.stop_blocking().unwrap();
    (log, events, topic, group)
}

#[test]
fn retries_back_off_exponentially_up_to_the_cap() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (log, events, topic, group) = run(&broker, 4, 0, false);
    let log = log.lock().unwrap().clone();
    let attempts: Vec<u32> = log.iter().map(|(a, _, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    assert!(
        log.iter().all(|(_, _, first)| *first == 0),
        "every retry starts at offset 0: {log:?}"
    );
    // pause_timeout 100 ms doubling, capped at 400 ms.
    let expected = [100, 200, 400, 400];
    for (i, window) in log.windows(2).enumerate() {
        let gap = window[1].1 - window[0].1;
        let want = Duration::from_millis(expected[i]);
        assert!(
            gap >= want,
            "retry {} came after {gap:?}, before its {want:?} back-off",
            i + 1
        );
        assert!(
            gap < want + Duration::from_millis(1500),
            "retry {} came late: {gap:?}",
            i + 1
        );
    }
    assert_eq!(events.count("consumer.consuming.retry"), 4);
    assert_eq!(events.count("client.pause"), 4);
    assert_eq!(events.count("client.resume"), 4);
    let failures = events
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::ErrorOccurred(err) if err.kind.as_str() == "consumer.consume.error"))
        .count();
    assert_eq!(failures, 4);
    assert_eq!(
        committed(&broker, &group, &topic, 1).get(&0),
        Some(&5),
        "marked once it succeeded"
    );
}

#[test]
fn a_retry_starts_from_the_first_unmarked_message() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (log, _, _, _) = run(&broker, 1, 2, false);
    let firsts: Vec<i64> = log.lock().unwrap().iter().map(|(_, _, f)| *f).collect();
    assert_eq!(
        firsts,
        [0, 2],
        "offsets 0 and 1 were marked before the failure"
    );
}

#[test]
fn panics_are_caught_and_retried() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (log, events, topic, group) = run(&broker, 2, 0, true);
    assert_eq!(log.lock().unwrap().len(), 3);
    let panicked = events.events.lock().unwrap().iter().any(|e| {
        matches!(e, Event::ErrorOccurred(err) if err.error.to_string().contains("panicked: consumer bug on attempt 1"))
    });
    assert!(panicked, "the panic is reported on error.occurred");
    assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&5));
}

/// A partition paused for a retry back-off, revoked and assigned back to the same member, is
/// fetched again (it starts unpaused from the committed offset): librdkafka keeps an
/// application pause through a revocation, while the pause's state here goes with the
/// partition. A second member of the group subscribed to another topic forces the eager
/// rebalance and gives the partition back.
#[test]
fn a_partition_paused_for_a_retry_is_fetched_again_when_assigned_back() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("retry-rebalance");
    let other = unique_topic("retry-rebalance-other");
    let group = unique_group("retry-rebalance");
    broker.create_topic(&topic, 1).unwrap();
    broker.create_topic(&other, 1).unwrap();
    produce(&broker, &topic, 3, "m");
    let log: Log = Arc::default();
    let l = log.clone();
    // The back-off outlasts the test: only the re-assignment can bring the batch back.
    let first = app(&broker, &group)
        .pause_timeout(Duration::from_secs(60))
        .pause_max_timeout(Duration::from_secs(60))
        .kafka("partition.assignment.strategy", "range,roundrobin")
        .topic(&topic, move |t| {
            t.consumer(move || Flaky {
                log: l.clone(),
                failures: 1,
                mark_first: 0,
                panic: false,
            })
        })
        .build()
        .unwrap();
    let events = Recorder::attach(first.monitor());
    let first = first.start().unwrap();
    wait_until(Duration::from_secs(30), || !log.lock().unwrap().is_empty())
        .expect("the first try did not run");
    let second = app(&broker, &group)
        .kafka("partition.assignment.strategy", "range,roundrobin")
        .topic(&other, |t| {
            t.consumer(|| Flaky {
                log: Arc::default(),
                failures: 0,
                mark_first: 0,
                panic: false,
            })
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    wait_until(Duration::from_secs(60), || {
        events.count("rebalance.partitions_assigned") >= 2
    })
    .expect("the partition was not assigned back");
    // Given back, the batch runs again (a new instance: attempt 1) long before the 60 s
    // back-off would have ended.
    let retried = wait_until(Duration::from_secs(20), || log.lock().unwrap().len() >= 2);
    drop(second);
    drop(first);
    retried.unwrap_or_else(|_| {
        panic!(
            "the partition stayed paused after it was assigned back: {:?}",
            log.lock().unwrap()
        )
    });
}
