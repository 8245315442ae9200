//! Long-running jobs against a broker (the embedded mock, or `KARAFKA_TEST_BROKERS`), with
//! both schedulings:
//! - a job of 3 × `max.poll.interval.ms` completes and commits, no rebalance happens, and
//!   meanwhile another topic of the same connection keeps flowing (the job produces to it
//!   and waits until its consumer got the message);
//! - a member joining while every partition runs a long job rebalances in seconds, not
//!   after the jobs (eager and cooperative-sticky); the job of a partition that moved can
//!   no longer mark, its `revoked` hook runs, and its message is processed by the new owner
//!   from the committed offset: nothing is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, Scheduling};
use karafka_core::instrumentation::{AssignmentChange, Event};
use karafka_pro::LongRunningJobTopic;
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

/// librdkafka requires `max.poll.interval.ms` ≥ `session.timeout.ms` (6 s in tests).
const MAX_POLL_MS: u64 = 6_000;

fn app(broker: &TestBroker, group: &str, scheduling: Scheduling, strategy: &str) -> AppBuilder {
    let mut builder = App::builder()
        .name(group)
        .shutdown_timeout(Duration::from_secs(40))
        .scheduling(scheduling)
        // Below max.poll.interval.ms with the revocation's commit and max_wait_time
        // (`build()` checks it for partition scheduling).
        .revocation_timeout(Duration::from_secs(2))
        .concurrency(4);
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    builder
        .kafka("max.poll.interval.ms", MAX_POLL_MS.to_string())
        .kafka("partition.assignment.strategy", strategy)
}

fn text(ctx_message: &karafka_consumer::Message<Raw>) -> String {
    String::from_utf8_lossy(ctx_message.raw_payload().map_or(&[][..], |b| &b[..])).into_owned()
}

// ---- a job of 3 × max.poll.interval.ms -------------------------------------------------------

#[derive(Default)]
struct Long {
    other_seen: AtomicBool,
    /// The job saw its ping consumed on the other topic before it finished.
    flowed: AtomicBool,
    finished: Mutex<Option<Instant>>,
}

struct LongJob {
    log: Arc<Long>,
    other: String,
}

impl Consumer for LongJob {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let started = Instant::now();
        ctx.producer()
            .produce_async(Message::new(self.other.as_str(), "ping"))?
            .await?;
        while started.elapsed() < Duration::from_secs(20) {
            if self.log.other_seen.load(Ordering::Acquire) {
                self.log.flowed.store(true, Ordering::Release);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rest = Duration::from_millis(3 * MAX_POLL_MS).saturating_sub(started.elapsed());
        tokio::time::sleep(rest).await;
        *self.log.finished.lock().unwrap() = Some(Instant::now());
        Ok(())
    }
}

struct Other {
    log: Arc<Long>,
}

impl Consumer for Other {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if ctx.messages().iter().any(|m| text(m) == "ping") {
            self.log.other_seen.store(true, Ordering::Release);
        }
        Ok(())
    }
}

fn a_job_of_three_max_poll_intervals(scheduling: Scheduling) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-long");
    let other = unique_topic("lrj-other");
    let group = unique_group("lrj-long");
    broker.create_topic(&topic, 1).unwrap();
    broker.create_topic(&other, 1).unwrap();
    let log = Arc::new(Long::default());
    let (l1, l2, o) = (log.clone(), log.clone(), other.clone());
    let app = app(&broker, &group, scheduling, "range")
        .consumer_group(&group, |cg| {
            cg.topic(&topic, move |t| {
                let (l, o) = (l1.clone(), o.clone());
                t.consumer(move || LongJob {
                    log: l.clone(),
                    other: o.clone(),
                })
                .max_wait_time(Duration::from_millis(500))
                .long_running_job(true)
            })
            .topic(&other, move |t| {
                let l = l2.clone();
                t.consumer(move || Other { log: l.clone() })
                    .max_wait_time(Duration::from_millis(500))
            })
        })
        .build()
        .unwrap();
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let r = revoked.clone();
    app.monitor().subscribe_fn(move |e| {
        if let Event::Rebalance {
            change: change @ (AssignmentChange::Revoked | AssignmentChange::Lost),
            partitions,
            ..
        } = e
        {
            r.lock().unwrap().push(format!("{change:?} {partitions:?}"));
        }
    });
    let running = app.start().unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "long"))
        .unwrap();
    let started = Instant::now();
    let finished = wait_until(Duration::from_secs(60), || {
        log.finished.lock().unwrap().is_some()
    });
    assert!(finished.is_ok(), "the long job did not finish");
    let took = started.elapsed();
    let committed = broker.committed_offsets(&group).unwrap();
    let commit = wait_until(Duration::from_secs(20), || {
        committed.of(&topic, 1).get(&0) == Some(&1)
    });
    let offsets = committed.of(&topic, 1);
    // Before stopping: leaving the group at stop revokes too.
    let revocations = revoked.lock().unwrap().clone();
    running.stop_blocking().unwrap();
    println!(
        "long-running job, {scheduling:?} scheduling: a {:?} job (3 × max.poll.interval.ms {MAX_POLL_MS} ms) \
         ended after {took:?}; committed {offsets:?}; other topic consumed during the job: {}; \
         revocations: {:?}",
        Duration::from_millis(3 * MAX_POLL_MS),
        log.flowed.load(Ordering::Acquire),
        revocations
    );
    assert!(
        commit.is_ok(),
        "the long job's offset was not committed: {offsets:?}"
    );
    assert!(
        log.flowed.load(Ordering::Acquire),
        "the other topic was not consumed while the long job ran"
    );
    assert!(
        revocations.is_empty(),
        "a rebalance took partitions away during the long job: {revocations:?}"
    );
}

#[test]
fn a_job_of_three_max_poll_intervals_completes_without_a_rebalance_partition_scheduling() {
    a_job_of_three_max_poll_intervals(Scheduling::Partition);
}

#[test]
fn a_job_of_three_max_poll_intervals_completes_without_a_rebalance_poll_scheduling() {
    a_job_of_three_max_poll_intervals(Scheduling::Poll);
}

// ---- a member joins during long jobs -------------------------------------------------------

/// How long the first job of each partition runs in the first member.
const JOB: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Joined {
    started: Mutex<BTreeSet<i32>>,
    /// Per partition of the first member, each long job's end: whether its mark was
    /// stored, and whether it saw itself revoked.
    ended: Mutex<BTreeMap<i32, Vec<(bool, bool)>>>,
    /// Jobs of the first member running per partition; set if ever two at once.
    active: Mutex<BTreeMap<i32, usize>>,
    overlap: AtomicBool,
    revoked_hooks: Mutex<Vec<i32>>,
    /// Every (member, partition, offset) processed.
    processed: Mutex<Vec<(&'static str, i32, i64)>>,
}

struct Member {
    log: Arc<Joined>,
    name: &'static str,
    slow: bool,
}

impl Consumer for Member {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let partition = ctx.partition();
        if self.slow {
            self.log.started.lock().unwrap().insert(partition);
            {
                let mut active = self.log.active.lock().unwrap();
                let n = active.entry(partition).or_default();
                *n += 1;
                if *n > 1 {
                    self.log.overlap.store(true, Ordering::Release);
                }
            }
            // Does not stop early: the rebalance must not wait for it either way.
            tokio::time::sleep(JOB).await;
            *self
                .log
                .active
                .lock()
                .unwrap()
                .entry(partition)
                .or_default() -= 1;
            let last = ctx.messages().last().expect("a batch");
            let marked = ctx.mark_as_consumed(last);
            self.log
                .ended
                .lock()
                .unwrap()
                .entry(partition)
                .or_default()
                .push((marked, ctx.is_revoked()));
            if !marked {
                return Ok(());
            }
        }
        for m in ctx.messages() {
            self.log
                .processed
                .lock()
                .unwrap()
                .push((self.name, partition, m.offset()));
        }
        Ok(())
    }

    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if self.slow {
            self.log.revoked_hooks.lock().unwrap().push(ctx.partition());
        }
        Ok(())
    }
}

fn member(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    (scheduling, strategy): (Scheduling, &str),
    log: &Arc<Joined>,
    name: &'static str,
    slow: bool,
) -> App {
    let log = log.clone();
    app(broker, group, scheduling, strategy)
        .consumer_group(group, |cg| {
            cg.topic(topic, move |t| {
                let log = log.clone();
                t.consumer(move || Member {
                    log: log.clone(),
                    name,
                    slow,
                })
                .max_wait_time(Duration::from_millis(500))
                .long_running_job(true)
            })
        })
        .build()
        .unwrap()
}

fn a_member_joins_during_long_jobs(scheduling: Scheduling, strategy: &str) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-join");
    let group = unique_group("lrj-join");
    broker.create_topic(&topic, 2).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    for p in 0..2 {
        producer
            .produce_sync(Message::new(topic.as_str(), "long").partition(p))
            .unwrap();
    }
    let log = Arc::new(Joined::default());
    let first = member(
        &broker,
        &group,
        &topic,
        (scheduling, strategy),
        &log,
        "first",
        true,
    );
    let first = first.start().unwrap();
    wait_until(Duration::from_secs(60), || {
        log.started.lock().unwrap().len() == 2
    })
    .expect("both partitions' long jobs started in the first member");
    let jobs_started = Instant::now();

    let second = member(
        &broker,
        &group,
        &topic,
        (scheduling, strategy),
        &log,
        "second",
        false,
    );
    let assigned_at = Arc::new(Mutex::new(None));
    let a = assigned_at.clone();
    second.monitor().subscribe_fn(move |e| {
        if let Event::Rebalance {
            change: AssignmentChange::Assigned,
            partitions,
            ..
        } = e
        {
            if !partitions.is_empty() {
                a.lock().unwrap().get_or_insert(Instant::now());
            }
        }
    });
    let joined = Instant::now();
    let second = second.start().unwrap();
    let assigned = wait_until(Duration::from_secs(60), || {
        assigned_at.lock().unwrap().is_some()
    });
    let join_took = assigned_at.lock().unwrap().map(|at| at - joined);
    let before_jobs_ended = assigned_at
        .lock()
        .unwrap()
        .is_some_and(|at| at < jobs_started + JOB);

    // Every message processed (the moved partition's again, by the second member, from the
    // committed offset), and both partitions committed.
    let committed = broker.committed_offsets(&group).unwrap();
    let done = wait_until(Duration::from_secs(90), || {
        let processed = log.processed.lock().unwrap();
        let partitions: BTreeSet<i32> = processed.iter().map(|(_, p, _)| *p).collect();
        partitions.len() == 2
            && log.ended.lock().unwrap().len() == 2
            && committed.of(&topic, 2) == BTreeMap::from([(0, 1), (1, 1)])
    });
    let offsets = committed.of(&topic, 2);
    second.stop_blocking().unwrap();
    first.stop_blocking().unwrap();
    let ended = log.ended.lock().unwrap().clone();
    let hooks = log.revoked_hooks.lock().unwrap().clone();
    let processed = log.processed.lock().unwrap().clone();
    println!(
        "long-running jobs, {scheduling:?} scheduling, {strategy}: a member joining during two \
         {JOB:?} jobs was assigned after {join_took:?} (before the jobs ended: {before_jobs_ended}); \
         the first member's jobs (partition → (marked, revoked)): {ended:?}; its revoked hooks: \
         {hooks:?}; processed: {processed:?}; committed {offsets:?}"
    );
    assert!(assigned.is_ok(), "the joining member got no partition");
    assert!(
        join_took.is_some_and(|t| t < Duration::from_secs(15)) && before_jobs_ended,
        "the rebalance waited for the long jobs: assigned after {join_took:?}"
    );
    assert!(
        done.is_ok(),
        "not every message was processed and committed: {processed:?}, {offsets:?}"
    );
    let moved: Vec<i32> = processed
        .iter()
        .filter(|(member, _, _)| *member == "second")
        .map(|(_, p, _)| *p)
        .collect();
    assert!(!moved.is_empty(), "no partition moved to the second member");
    for p in &moved {
        assert_eq!(
            ended.get(p).and_then(|jobs| jobs.first()),
            Some(&(false, true)),
            "the first member's job of moved partition {p} could still mark"
        );
        assert!(
            hooks.contains(p),
            "revoked did not run for moved partition {p}"
        );
    }
    if strategy == "cooperative-sticky" {
        // Only the moved partition was revoked: the other job marked its batch.
        for (p, jobs) in &ended {
            if !moved.contains(p) {
                assert_eq!(
                    jobs.first(),
                    Some(&(true, false)),
                    "partition {p} stayed with the first member, yet its job could not mark"
                );
            }
        }
    }
    assert!(
        !log.overlap.load(Ordering::Acquire),
        "two instances of the first member processed one partition at the same time"
    );
}

#[test]
fn a_member_joining_during_long_jobs_rebalances_in_seconds_eager_partition_scheduling() {
    a_member_joins_during_long_jobs(Scheduling::Partition, "range");
}

#[test]
fn a_member_joining_during_long_jobs_rebalances_in_seconds_eager_poll_scheduling() {
    a_member_joins_during_long_jobs(Scheduling::Poll, "range");
}

#[test]
fn a_member_joining_during_long_jobs_rebalances_in_seconds_cooperative_partition_scheduling() {
    a_member_joins_during_long_jobs(Scheduling::Partition, "cooperative-sticky");
}

#[test]
fn a_member_joining_during_long_jobs_rebalances_in_seconds_cooperative_poll_scheduling() {
    a_member_joins_during_long_jobs(Scheduling::Poll, "cooperative-sticky");
}

// ---- shutdown and health ----------------------------------------------------------------------

struct Endless {
    started: Arc<AtomicBool>,
}

impl Consumer for Endless {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        self.started.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

/// While a long-running job runs, health does not hold it to `job_timeout`; at stop the
/// app waits for it up to `shutdown_timeout`, and the report past it names it.
fn shutdown_waits_and_names_a_running_long_job(scheduling: Scheduling) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-stop");
    let group = unique_group("lrj-stop");
    broker.create_topic(&topic, 1).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let app = app(&broker, &group, scheduling, "range")
        .shutdown_timeout(Duration::from_secs(3))
        .consumer_group(&group, |cg| {
            cg.topic(&topic, move |t| {
                let s = s.clone();
                t.consumer(move || Endless { started: s.clone() })
                    .max_wait_time(Duration::from_millis(500))
                    .long_running_job(true)
            })
        })
        .build()
        .unwrap();
    let running = app.start().unwrap();
    Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap()
        .produce_sync(Message::new(topic.as_str(), "x"))
        .unwrap();
    wait_until(Duration::from_secs(60), || started.load(Ordering::Acquire))
        .expect("the long job started");
    std::thread::sleep(Duration::from_millis(1_200));
    let health = running.health(Duration::from_secs(1));
    assert!(health.healthy, "{:?}", health.reasons);
    let stopping = Instant::now();
    let stopped = running.stop_blocking();
    let waited = stopping.elapsed();
    println!("long-running jobs, {scheduling:?} scheduling: stop after {waited:?}: {stopped:?}");
    match stopped {
        Err(karafka_consumer::Error::ShutdownTimeout { report, .. }) => {
            assert!(report.contains("long-running job consume"), "{report}");
            assert!(report.contains(&topic), "{report}");
        }
        other => panic!("expected a shutdown timeout naming the job, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(3), "did not wait: {waited:?}");
}

#[test]
fn shutdown_waits_for_a_long_job_and_names_it_partition_scheduling() {
    shutdown_waits_and_names_a_running_long_job(Scheduling::Partition);
}

#[test]
fn shutdown_waits_for_a_long_job_and_names_it_poll_scheduling() {
    shutdown_waits_and_names_a_running_long_job(Scheduling::Poll);
}
