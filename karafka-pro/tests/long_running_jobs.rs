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
    String::from_utf8_lossy(
        ctx_message
            .raw_payload()
            .ok()
            .flatten()
            .map_or(&[][..], |b| &b[..]),
    )
    .into_owned()
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

/// How long the first job of each partition runs in the first member: well above the
/// join's time (cooperative-sticky takes two rounds, 10-11 s measured; one CI run on 2 busy
/// cores took 15.06 s), so that "assigned before the jobs ended" cannot be a near miss.
const JOB: Duration = Duration::from_secs(30);

/// The longest a join may take: a third less than the jobs.
const JOIN_BOUND: Duration = Duration::from_secs(20);

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
        join_took.is_some_and(|t| t < JOIN_BOUND) && before_jobs_ended,
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

// ---- concurrency 1, queued jobs, the consumer's own seek and pause ------------------------

/// A job: (partition, started, ended, revoked at start).
type SerialJob = (i32, Instant, Option<Instant>, bool);

#[derive(Default)]
struct Serial {
    jobs: Mutex<Vec<SerialJob>>,
}

struct Sleeper {
    log: Arc<Serial>,
    job: Duration,
}

impl Consumer for Sleeper {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let started = Instant::now();
        let index = {
            let mut jobs = self.log.jobs.lock().unwrap();
            jobs.push((ctx.partition(), started, None, ctx.is_revoked()));
            jobs.len() - 1
        };
        tokio::time::sleep(self.job).await;
        self.log.jobs.lock().unwrap()[index].2 = Some(Instant::now());
        Ok(())
    }
}

fn sleeper_app(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    scheduling: Scheduling,
    log: &Arc<Serial>,
    job: Duration,
) -> App {
    let log = log.clone();
    app(broker, group, scheduling, "range")
        .concurrency(1)
        .consumer_group(group, |cg| {
            cg.topic(topic, move |t| {
                let log = log.clone();
                t.consumer(move || Sleeper {
                    log: log.clone(),
                    job,
                })
                .max_wait_time(Duration::from_millis(500))
                .long_running_job(true)
            })
        })
        .build()
        .unwrap()
}

/// Two long-running partitions and one worker: each job 1.5 × `max.poll.interval.ms`, run
/// one after the other (3 × in all), and nobody is kicked out.
fn concurrency_one(scheduling: Scheduling) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-serial");
    let group = unique_group("lrj-serial");
    broker.create_topic(&topic, 2).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    for p in 0..2 {
        producer
            .produce_sync(Message::new(topic.as_str(), "x").partition(p))
            .unwrap();
    }
    let log = Arc::new(Serial::default());
    let job = Duration::from_millis(MAX_POLL_MS * 3 / 2);
    let app = sleeper_app(&broker, &group, &topic, scheduling, &log, job);
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let r = revoked.clone();
    app.monitor().subscribe_fn(move |e| {
        if let Event::Rebalance {
            change: change @ (AssignmentChange::Revoked | AssignmentChange::Lost),
            ..
        } = e
        {
            r.lock().unwrap().push(*change);
        }
    });
    let running = app.start().unwrap();
    let committed = broker.committed_offsets(&group).unwrap();
    let done = wait_until(Duration::from_secs(90), || {
        committed.of(&topic, 2) == BTreeMap::from([(0, 1), (1, 1)])
    });
    let revocations = revoked.lock().unwrap().clone();
    running.stop_blocking().unwrap();
    let jobs = log.jobs.lock().unwrap().clone();
    let overlapped = jobs.len() == 2
        && match (jobs[0].2, jobs[1].2) {
            (Some(end0), Some(_)) => jobs[1].1 < end0,
            _ => true,
        };
    println!(
        "long-running jobs, {scheduling:?} scheduling, concurrency 1: two {job:?} jobs \
         (max.poll.interval.ms {MAX_POLL_MS}) ran one after the other: {}; revocations: \
         {revocations:?}",
        !overlapped
    );
    assert!(
        done.is_ok(),
        "not both partitions committed: {:?}",
        committed.of(&topic, 2)
    );
    assert!(revocations.is_empty(), "kicked out: {revocations:?}");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(!overlapped, "two jobs ran at once with concurrency 1");
}

#[test]
fn concurrency_one_runs_long_jobs_in_turn_without_leaving_the_group_poll_scheduling() {
    concurrency_one(Scheduling::Poll);
}

#[test]
fn concurrency_one_runs_long_jobs_in_turn_without_leaving_the_group_partition_scheduling() {
    concurrency_one(Scheduling::Partition);
}

/// Poll scheduling, one worker: the second partition's job waits for the worker; a member
/// joins (eager: every partition is revoked) before it got one: it never runs on the
/// revoked partition.
#[test]
fn a_long_job_still_waiting_for_a_worker_when_revoked_never_runs() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-queued");
    let group = unique_group("lrj-queued");
    broker.create_topic(&topic, 2).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    for p in 0..2 {
        producer
            .produce_sync(Message::new(topic.as_str(), "x").partition(p))
            .unwrap();
    }
    let log = Arc::new(Serial::default());
    let first = sleeper_app(
        &broker,
        &group,
        &topic,
        Scheduling::Poll,
        &log,
        Duration::from_secs(15),
    )
    .start()
    .unwrap();
    wait_until(Duration::from_secs(60), || {
        !log.jobs.lock().unwrap().is_empty()
    })
    .expect("a first job started");
    // Let the second partition's batch be polled and its job queued for the worker.
    std::thread::sleep(Duration::from_secs(2));
    let other = Arc::new(Serial::default());
    let second = sleeper_app(
        &broker,
        &group,
        &topic,
        Scheduling::Poll,
        &other,
        Duration::from_millis(10),
    )
    .start()
    .unwrap();
    let moved = wait_until(Duration::from_secs(60), || {
        !other.jobs.lock().unwrap().is_empty()
    });
    // Past the first job's end, so a queued job would have had its worker.
    std::thread::sleep(Duration::from_secs(16));
    second.stop_blocking().unwrap();
    first.stop_blocking().unwrap();
    let jobs = log.jobs.lock().unwrap().clone();
    let summary: Vec<(i32, bool)> = jobs.iter().map(|j| (j.0, j.3)).collect();
    println!(
        "long-running jobs, concurrency 1: first member's jobs (partition, revoked at start) \
         {summary:?}; the second member processed {:?}",
        other
            .jobs
            .lock()
            .unwrap()
            .iter()
            .map(|j| j.0)
            .collect::<Vec<_>>()
    );
    assert!(moved.is_ok(), "the second member processed nothing");
    assert!(
        jobs.iter().all(|j| !j.3),
        "a job started on a revoked partition: {summary:?}"
    );
}

#[derive(Default)]
struct Steering {
    seen: Mutex<Vec<(i64, Instant)>>,
    sought: AtomicBool,
    paused: AtomicBool,
    pause_ended_job: Mutex<Option<Instant>>,
}

struct Steer {
    log: Arc<Steering>,
}

impl Consumer for Steer {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for m in ctx.messages() {
            self.log
                .seen
                .lock()
                .unwrap()
                .push((m.offset(), Instant::now()));
        }
        let last = ctx.messages().last().map_or(0, |m| m.offset());
        if !self.log.sought.swap(true, Ordering::AcqRel) {
            // Processed again from the start: the consumer's seek beats the resume after
            // the batch.
            ctx.seek(0);
        } else if last >= 2 && !self.log.paused.swap(true, Ordering::AcqRel) {
            // Held for 2 s: the consumer's pause beats the resume.
            ctx.pause(last + 1, Duration::from_secs(2));
            *self.log.pause_ended_job.lock().unwrap() = Some(Instant::now());
        }
        Ok(())
    }
}

/// Inside a long-running job the consumer's own seek and pause win over the automatic
/// resume after the batch.
fn the_consumers_seek_and_pause_win(scheduling: Scheduling) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("lrj-steer");
    let group = unique_group("lrj-steer");
    broker.create_topic(&topic, 1).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    for _ in 0..3 {
        producer
            .produce_sync(Message::new(topic.as_str(), "x"))
            .unwrap();
    }
    let log = Arc::new(Steering::default());
    let l = log.clone();
    let app = app(&broker, &group, scheduling, "range")
        .consumer_group(&group, |cg| {
            cg.topic(&topic, move |t| {
                let l = l.clone();
                t.consumer(move || Steer { log: l.clone() })
                    .max_wait_time(Duration::from_millis(200))
                    .long_running_job(true)
            })
        })
        .build()
        .unwrap();
    let running = app.start().unwrap();
    wait_until(Duration::from_secs(60), || {
        log.pause_ended_job.lock().unwrap().is_some()
    })
    .expect("the replayed batch paused the partition");
    producer
        .produce_sync(Message::new(topic.as_str(), "after the pause"))
        .unwrap();
    let resumed = wait_until(Duration::from_secs(30), || {
        log.seen.lock().unwrap().iter().any(|(o, _)| *o == 3)
    });
    running.stop_blocking().unwrap();
    let seen = log.seen.lock().unwrap().clone();
    let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
    let paused_at = log.pause_ended_job.lock().unwrap().unwrap();
    let waited = seen
        .iter()
        .find(|(o, _)| *o == 3)
        .map(|(_, at)| at.saturating_duration_since(paused_at));
    println!(
        "long-running jobs, {scheduling:?} scheduling: offsets processed {offsets:?}; the \
         message after the consumer's 2 s pause came {waited:?} after it"
    );
    assert!(
        resumed.is_ok(),
        "never resumed after the pause: {offsets:?}"
    );
    // 0..=2, then 0..=2 again (the seek), then 3.
    assert_eq!(
        offsets.iter().filter(|o| **o == 0).count(),
        2,
        "{offsets:?}"
    );
    assert_eq!(offsets.last(), Some(&3));
    assert!(
        waited.is_some_and(|w| w >= Duration::from_millis(1_900)),
        "resumed before the consumer's pause ended: {waited:?}"
    );
}

#[test]
fn the_consumers_seek_and_pause_win_poll_scheduling() {
    the_consumers_seek_and_pause_win(Scheduling::Poll);
}

#[test]
fn the_consumers_seek_and_pause_win_partition_scheduling() {
    the_consumers_seek_and_pause_win(Scheduling::Partition);
}
