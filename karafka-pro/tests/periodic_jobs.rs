//! Periodic jobs against a broker (the embedded mock, or `KARAFKA_TEST_BROKERS`), with both
//! schedulings: an idle partition ticks at the interval (± 20%), also before its first
//! message; a partition that keeps getting batches does not; a tick never runs at the same
//! time as another job of its partition; ticks stop once the partition is revoked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context, Scheduling};
use karafka_core::instrumentation::{AssignmentChange, Event};
use karafka_pro::{PeriodicJob, PeriodicJobTopic};
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

const INTERVAL: Duration = Duration::from_millis(1_000);

#[derive(Default)]
struct Log {
    /// (member, partition, what, started)
    jobs: Mutex<Vec<(&'static str, i32, &'static str, Instant)>>,
    active: Mutex<BTreeMap<(&'static str, i32), usize>>,
    overlap: AtomicBool,
}

struct Ticking {
    log: Arc<Log>,
    member: &'static str,
}

impl Ticking {
    async fn job(&self, partition: i32, what: &'static str, hold: Duration) {
        {
            let mut active = self.log.active.lock().unwrap();
            let n = active.entry((self.member, partition)).or_default();
            *n += 1;
            if *n > 1 {
                self.log.overlap.store(true, Ordering::Release);
            }
        }
        self.log
            .jobs
            .lock()
            .unwrap()
            .push((self.member, partition, what, Instant::now()));
        tokio::time::sleep(hold).await;
        *self
            .log
            .active
            .lock()
            .unwrap()
            .entry((self.member, partition))
            .or_default() -= 1;
    }
}

impl Consumer for Ticking {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        // Long enough that a tick racing it would overlap.
        self.job(ctx.partition(), "consume", Duration::from_millis(30))
            .await;
        Ok(())
    }

    async fn tick(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        assert!(ctx.messages().is_empty());
        self.job(ctx.partition(), "tick", Duration::from_millis(30))
            .await;
        Ok(())
    }
}

fn member(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    scheduling: Scheduling,
    log: &Arc<Log>,
    name: &'static str,
) -> App {
    let mut builder = App::builder().name(group).scheduling(scheduling);
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    let log = log.clone();
    builder
        .kafka("partition.assignment.strategy", "range")
        .consumer_group(group, |cg| {
            cg.topic(topic, move |t| {
                let log = log.clone();
                t.consumer(move || Ticking {
                    log: log.clone(),
                    member: name,
                })
                .max_wait_time(Duration::from_millis(500))
                .periodic_job(PeriodicJob::new().interval(INTERVAL))
            })
        })
        .build()
        .unwrap()
}

fn ticks_on_idle_partitions(scheduling: Scheduling) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("periodic");
    let group = unique_group("periodic");
    broker.create_topic(&topic, 2).unwrap();
    let log = Arc::new(Log::default());
    let first = member(&broker, &group, &topic, scheduling, &log, "first");
    let revoked_at = Arc::new(Mutex::new(BTreeMap::new()));
    let r = revoked_at.clone();
    first.monitor().subscribe_fn(move |e| {
        if let Event::Rebalance {
            change: AssignmentChange::Revoked | AssignmentChange::Lost,
            partitions,
            ..
        } = e
        {
            for tp in partitions {
                r.lock().unwrap().insert(tp.partition, Instant::now());
            }
        }
    });
    let first = first.start().unwrap();

    // Partition 0 gets a message every 250 ms for 6 s (never idle for a whole interval);
    // partition 1 gets nothing.
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    wait_until(Duration::from_secs(60), || {
        log.jobs.lock().unwrap().iter().any(|j| j.2 == "tick")
    })
    .expect("a first tick, before any message");
    let busy_from = Instant::now();
    while busy_from.elapsed() < Duration::from_secs(6) {
        producer
            .produce_sync(Message::new(topic.as_str(), "x").partition(0))
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    let busy_until = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    // A second member takes one partition away: the first member's ticks of it stop.
    let second = member(&broker, &group, &topic, scheduling, &log, "second")
        .start()
        .unwrap();
    let moved = wait_until(Duration::from_secs(60), || {
        log.jobs
            .lock()
            .unwrap()
            .iter()
            .any(|j| j.0 == "second" && j.2 == "tick")
    });
    std::thread::sleep(Duration::from_secs(3));
    second.stop_blocking().unwrap();
    first.stop_blocking().unwrap();

    let jobs = log.jobs.lock().unwrap().clone();
    let revoked_at = revoked_at.lock().unwrap().clone();
    let ticks = |member: &str, p: i32, until: Instant| -> Vec<Instant> {
        jobs.iter()
            .filter(|j| j.0 == member && j.1 == p && j.2 == "tick" && j.3 < until)
            .map(|j| j.3)
            .collect()
    };
    let gaps = |times: &[Instant]| -> Vec<u128> {
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect()
    };
    let end = revoked_at
        .values()
        .min()
        .copied()
        .unwrap_or_else(Instant::now);
    let idle = ticks("first", 1, end);
    let idle_gaps = gaps(&idle);
    let during_traffic: Vec<Instant> = ticks("first", 0, busy_until)
        .into_iter()
        .filter(|t| *t > busy_from + INTERVAL)
        .collect();
    let moved_partitions: Vec<i32> = jobs
        .iter()
        .filter(|j| j.0 == "second")
        .map(|j| j.1)
        .collect();
    let after_revocation: Vec<(i32, u128)> = jobs
        .iter()
        .filter(|j| j.0 == "first" && j.2 == "tick" && moved_partitions.contains(&j.1))
        .filter_map(|j| {
            let at = revoked_at.get(&j.1)?;
            (j.3 > *at).then(|| (j.1, (j.3 - *at).as_millis()))
        })
        .collect();
    println!(
        "periodic jobs, {scheduling:?} scheduling, interval {INTERVAL:?}: idle partition's ticks \
         {} apart (ms) {idle_gaps:?}; ticks on the busy partition while it got a message every \
         250 ms: {}; the second member ticked {:?}; first member's ticks of moved partitions \
         after their revocation: {after_revocation:?}",
        idle.len(),
        during_traffic.len(),
        moved_partitions
    );
    assert!(
        idle_gaps.len() >= 5,
        "too few ticks on the idle partition: {idle_gaps:?}"
    );
    for gap in &idle_gaps {
        assert!(
            (800..=1_200).contains(gap),
            "a tick gap of {gap} ms is outside the interval ± 20%: {idle_gaps:?}"
        );
    }
    assert!(
        during_traffic.is_empty(),
        "the busy partition ticked while it got batches"
    );
    assert!(
        !log.overlap.load(Ordering::Acquire),
        "a tick ran at the same time as another job of its partition"
    );
    assert!(moved.is_ok(), "the second member never ticked");
    assert!(
        after_revocation.is_empty(),
        "ticks ran after their partition was revoked: {after_revocation:?}"
    );
}

#[test]
fn idle_partitions_tick_at_the_interval_partition_scheduling() {
    ticks_on_idle_partitions(Scheduling::Partition);
}

#[test]
fn idle_partitions_tick_at_the_interval_poll_scheduling() {
    ticks_on_idle_partitions(Scheduling::Poll);
}
