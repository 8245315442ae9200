//! Offsets and position: with manual offset management only what the consumer marks is
//! committed; `seek` moves the position (and suppresses the automatic mark); `pause` holds a
//! partition for its timeout, `resume` lifts it; `mark_as_consumed_sync` commits at once; in
//! the `revoked` hook marking returns false; a committed offset deleted by retention resets
//! to where `initial_offset` says.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{app, committed, produce};
use karafka_consumer::payload::Raw;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

type Offsets = Arc<Mutex<Vec<(i64, Instant)>>>;

#[derive(Clone, Copy)]
enum Mode {
    MarkOnlyFour,
    SeekBackOnce,
    PauseAtOne,
    PauseThenResume,
    MarkSync,
}

struct Scripted {
    mode: Mode,
    seen: Offsets,
    done_once: bool,
}

impl Consumer for Scripted {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let batch_at = Instant::now();
        let mut seen = Vec::new();
        for m in ctx.messages() {
            seen.push((m.offset(), batch_at));
        }
        self.seen.lock().unwrap().extend(seen);
        match self.mode {
            Mode::MarkOnlyFour => {
                if let Some(m) = ctx.messages().iter().find(|m| m.offset() == 4) {
                    assert!(ctx.mark_as_consumed(m));
                }
            }
            Mode::SeekBackOnce => {
                if !self.done_once {
                    self.done_once = true;
                    ctx.seek(0);
                }
            }
            Mode::PauseAtOne => {
                if !self.done_once {
                    self.done_once = true;
                    let first = ctx.messages().first().unwrap();
                    assert!(ctx.mark_as_consumed(first));
                    ctx.pause(first.offset() + 1, Duration::from_millis(800));
                }
            }
            Mode::PauseThenResume => {
                if !self.done_once {
                    self.done_once = true;
                    let first = ctx.messages().first().unwrap();
                    ctx.mark_as_consumed(first);
                    ctx.pause(first.offset() + 1, Duration::from_secs(60));
                    ctx.resume();
                }
            }
            Mode::MarkSync => {
                if let Some(last) = ctx.messages().last() {
                    assert!(ctx.mark_as_consumed_sync(last));
                }
            }
        }
        Ok(())
    }
}

fn start(
    broker: &TestBroker,
    mode: Mode,
    count: usize,
    extra: &[(&str, &str)],
) -> (karafka_consumer::Running, Offsets, String, String) {
    let (topic, group) = (unique_topic("offsets"), unique_group("offsets"));
    broker.create_topic(&topic, 1).unwrap();
    produce(broker, &topic, count, "m");
    let seen: Offsets = Arc::default();
    let s = seen.clone();
    let mut builder = app(broker, &group);
    for (k, v) in extra {
        builder = builder.kafka(*k, *v);
    }
    let manual = matches!(mode, Mode::MarkOnlyFour);
    let app = builder
        .topic(&topic, move |t| {
            t.consumer(move || Scripted {
                mode,
                seen: s.clone(),
                done_once: false,
            })
            .manual_offset_management(manual)
        })
        .build()
        .unwrap();
    (app.start().unwrap(), seen, topic, group)
}

fn offsets(seen: &Offsets) -> Vec<i64> {
    seen.lock().unwrap().iter().map(|(o, _)| *o).collect()
}

#[test]
fn manual_offset_management_commits_only_what_is_marked() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (running, seen, topic, group) = start(&broker, Mode::MarkOnlyFour, 10, &[]);
    wait_until(broker.join_deadline(), || seen.lock().unwrap().len() >= 10).unwrap();
    running.stop_blocking().unwrap();
    assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&5));
}

#[test]
fn seek_moves_the_position_and_skips_the_automatic_mark() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (running, seen, topic, group) = start(&broker, Mode::SeekBackOnce, 6, &[]);
    wait_until(broker.join_deadline(), || seen.lock().unwrap().len() >= 12).unwrap();
    running.stop_blocking().unwrap();
    let all = offsets(&seen);
    assert_eq!(
        all.iter().filter(|o| **o == 0).count(),
        2,
        "offset 0 consumed again after the seek: {all:?}"
    );
    assert_eq!(all.len(), 12, "the whole topic came twice: {all:?}");
    assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&6));
}

#[test]
fn pause_holds_the_partition_for_its_timeout() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (running, seen, _, _) = start(&broker, Mode::PauseAtOne, 5, &[]);
    wait_until(broker.join_deadline(), || {
        offsets(&seen).iter().filter(|o| **o == 1).count() >= 2
    })
    .unwrap();
    running.stop_blocking().unwrap();
    let seen = seen.lock().unwrap().clone();
    let first_batch_at = seen[0].1;
    let (_, resumed_at) = seen
        .iter()
        .find(|(o, t)| *o == 1 && *t != first_batch_at)
        .expect("offset 1 is consumed again after the pause");
    let paused_for = *resumed_at - first_batch_at;
    assert!(
        paused_for >= Duration::from_millis(800),
        "resumed after only {paused_for:?}"
    );
}

#[test]
fn resume_lifts_a_pause() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (running, seen, _, _) = start(&broker, Mode::PauseThenResume, 5, &[]);
    let started = Instant::now();
    wait_until(broker.join_deadline(), || {
        offsets(&seen).iter().filter(|o| **o == 4).count() >= 2
    })
    .unwrap();
    running.stop_blocking().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 60 s pause was not lifted"
    );
}

#[test]
fn mark_as_consumed_sync_commits_at_once() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    // Automatic commits every 60 s: only the synchronous commit can make it visible quickly.
    let (running, seen, topic, group) = start(
        &broker,
        Mode::MarkSync,
        5,
        &[("auto.commit.interval.ms", "60000")],
    );
    wait_until(broker.join_deadline(), || seen.lock().unwrap().len() >= 5).unwrap();
    wait_until(Duration::from_secs(5), || {
        committed(&broker, &group, &topic, 1).get(&0) == Some(&5)
    })
    .expect("committed while the app still runs");
    running.stop_blocking().unwrap();
}

struct RevokeProbe {
    log: Arc<Mutex<Vec<(bool, bool)>>>,
}

impl Consumer for RevokeProbe {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let marked = ctx
            .messages()
            .last()
            .is_some_and(|m| ctx.mark_as_consumed(m));
        self.log.lock().unwrap().push((ctx.is_revoked(), marked));
        Ok(())
    }
}

#[test]
fn marking_after_revocation_returns_false() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (topic, group) = (unique_topic("revoke"), unique_group("revoke"));
    broker.create_topic(&topic, 4).unwrap();
    produce(&broker, &topic, 40, "m");
    let log: Arc<Mutex<Vec<(bool, bool)>>> = Arc::default();
    let member = |log: Arc<Mutex<Vec<(bool, bool)>>>| {
        app(&broker, &group)
            .topic(&topic, move |t| {
                t.consumer(move || RevokeProbe { log: log.clone() })
            })
            .build()
            .unwrap()
    };
    let first = member(log.clone()).start().unwrap();
    // Let the first member take all partitions and consume, then a second joins.
    wait_until(broker.join_deadline(), || {
        committed(&broker, &group, &topic, 4).values().sum::<i64>() > 0
    })
    .expect("the first member consumes");
    let second = member(Arc::default()).start().unwrap();
    wait_until(broker.join_deadline(), || !log.lock().unwrap().is_empty())
        .expect("the first member lost partitions");
    second.stop_blocking().unwrap();
    first.stop_blocking().unwrap();
    for (revoked, marked) in log.lock().unwrap().iter() {
        assert!(*revoked, "is_revoked() is true in the revoked hook");
        assert!(!*marked, "mark_as_consumed returned true after revocation");
    }
}

/// A committed offset the broker no longer holds (its retention deleted the records) is out
/// of range: the consumer resets where `initial_offset` says (the oldest record kept by
/// default, or the end) and goes on, instead of standing still. The embedded cluster keeps
/// 5 MiB per partition (librdkafka's mock, fixed), so 12 MiB behind the committed offset
/// deletes it.
fn out_of_range(initial: Option<karafka_consumer::routing::InitialOffset>) {
    let Some(broker) = TestBroker::require(&[karafka_testing::Capability::RetentionBySize]) else {
        return;
    };
    // Commit offset 10.
    let (running, seen, topic, group) = start(&broker, Mode::MarkSync, 10, &[]);
    wait_until(broker.join_deadline(), || seen.lock().unwrap().len() >= 10).unwrap();
    running.stop_blocking().unwrap();
    assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&10));
    // 12 MiB more: the mock deletes the oldest message sets, offset 10 among them.
    let producer = karafka_producer::Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    let big = "x".repeat(8 * 1024);
    let more = |count: usize| {
        producer
            .produce_many_sync(
                (0..count)
                    .map(|_| karafka_producer::Message::new(topic.as_str(), big.clone()))
                    .collect(),
            )
            .unwrap();
    };
    more(1500);
    let admin = karafka_consumer::admin::Admin::new(&broker.producer_settings()).unwrap();
    let (low, high) = admin.watermarks(&topic, 0).unwrap();
    assert!(
        low > 10,
        "retention did not delete offset 10: watermarks {low}..{high}"
    );
    assert_eq!(high, 1510);
    // The group starts again from offset 10, which is gone.
    let seen: Offsets = Arc::default();
    let s = seen.clone();
    let running = app(&broker, &group)
        .topic(&topic, move |t| {
            let t = t.consumer(move || Scripted {
                mode: Mode::MarkSync,
                seen: s.clone(),
                done_once: false,
            });
            match initial {
                Some(offset) => t.initial_offset(offset),
                None => t,
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let latest = initial == Some(karafka_consumer::routing::InitialOffset::Latest);
    if latest {
        // At the end: only what comes from now on. Produce until some came (the reset may
        // land after the first of these).
        let deadline = Instant::now() + broker.join_deadline();
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            more(1);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let reached = wait_until(broker.join_deadline() + Duration::from_secs(20), || {
        let all = offsets(&seen);
        if latest {
            !all.is_empty()
        } else {
            all.contains(&(high - 1))
        }
    });
    running.stop_blocking().unwrap();
    let all = offsets(&seen);
    reached.unwrap_or_else(|_| {
        panic!(
            "stood still after an out-of-range committed offset: consumed {} ({:?}..{:?})",
            all.len(),
            all.first(),
            all.last()
        )
    });
    if latest {
        assert!(
            all.iter().all(|&o| o >= high),
            "reset to the end ({high}): consumed {:?}..{:?}",
            all.first(),
            all.last()
        );
    } else {
        assert_eq!(all.first(), Some(&low), "resumed at the oldest record kept");
        assert_eq!(committed(&broker, &group, &topic, 1).get(&0), Some(&high));
    }
    producer.close().unwrap();
}

#[test]
fn a_committed_offset_deleted_by_retention_resets_to_the_oldest_kept() {
    out_of_range(None);
}

#[test]
fn a_committed_offset_deleted_by_retention_resets_to_the_end_with_initial_offset_latest() {
    out_of_range(Some(karafka_consumer::routing::InitialOffset::Latest));
}
