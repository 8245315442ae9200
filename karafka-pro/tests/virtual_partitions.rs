//! Virtual partitions against a broker (the embedded mock, or `KARAFKA_TEST_BROKERS`):
//! per-key order with parallel work, failures that never commit past unprocessed work, the
//! dead-letter queue from the collapsed retry, and a revocation while virtual partitions
//! run.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use karafka_consumer::payload::Raw;
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, Scheduling};
use karafka_pro::{VirtualPartitions, VirtualPartitionsTopic};
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

fn app(broker: &TestBroker, group: &str) -> AppBuilder {
    let mut builder = App::builder()
        .name(group)
        .pause_timeout(Duration::from_millis(100))
        .pause_max_timeout(Duration::from_millis(400))
        .shutdown_timeout(Duration::from_secs(20));
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    builder
}

/// Produces `count` messages, key `k<i % keys>`, to partition `i % partitions`.
fn produce(broker: &TestBroker, topic: &str, count: usize, keys: usize, partitions: i32) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .build()
        .unwrap();
    for chunk in (0..count).collect::<Vec<_>>().chunks(10_000) {
        let messages = chunk
            .iter()
            .map(|&i| {
                Message::new(topic, format!("m{i}"))
                    .key(format!("k{}", i % keys))
                    .partition(i as i32 % partitions)
            })
            .collect();
        producer.produce_many_sync(messages).unwrap();
    }
    producer.close().unwrap();
}

fn key_of(m: &karafka_consumer::Message<Raw>) -> String {
    m.key_str().unwrap_or_default().to_owned()
}

// ---- per-key order, parallel work ------------------------------------------------------------

#[derive(Default)]
struct OrderLog {
    /// Per key, offsets in processing order.
    keys: Mutex<HashMap<String, Vec<i64>>>,
    /// Per partition: the batches (polled_at) with running jobs, and how many.
    active: Mutex<HashMap<i32, HashMap<SystemTime, usize>>>,
    /// Per partition, the most jobs seen running at once.
    most: Mutex<HashMap<i32, usize>>,
    /// Jobs of two batches of one partition running at once.
    interleaved: Mutex<Vec<String>>,
    /// Jobs that ended on the listener thread.
    inline: std::sync::atomic::AtomicUsize,
}

struct Ordered {
    log: Arc<OrderLog>,
    /// 2 ms of IO per job; else cheap jobs, group 0's yielding until its siblings ended (so
    /// they end on the listener thread while it waits on a worker).
    io: bool,
}

impl Consumer for Ordered {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let partition = ctx.partition();
        let batch = ctx.messages().metadata().polled_at;
        {
            let mut active = self.log.active.lock().unwrap();
            let running = active.entry(partition).or_default();
            if running.keys().any(|b| *b != batch) {
                self.log
                    .interleaved
                    .lock()
                    .unwrap()
                    .push(format!("partition {partition}: two batches at once"));
            }
            *running.entry(batch).or_default() += 1;
            let now: usize = running.values().sum();
            let mut most = self.log.most.lock().unwrap();
            let m = most.entry(partition).or_default();
            *m = (*m).max(now);
        }
        if self.io {
            // A little IO, so the virtual partitions of a batch overlap.
            tokio::time::sleep(Duration::from_millis(2)).await;
        } else if ctx.virtual_partition().is_some_and(|vp| vp.id == 0) {
            // Waits (yielding, so it moves to a worker) until its siblings ended: the batch
            // is not over before this group is.
            let started = Instant::now();
            loop {
                let others = self
                    .log
                    .active
                    .lock()
                    .unwrap()
                    .get(&partition)
                    .and_then(|r| r.get(&batch).copied())
                    .unwrap_or(0);
                if others <= 1 || started.elapsed() > Duration::from_millis(20) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        {
            let mut keys = self.log.keys.lock().unwrap();
            for m in ctx.messages() {
                keys.entry(key_of(m)).or_default().push(m.offset());
            }
        }
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("karafka.listener"))
        {
            self.log.inline.fetch_add(1, Ordering::Relaxed);
        }
        let mut active = self.log.active.lock().unwrap();
        let running = active.entry(partition).or_default();
        if let Some(n) = running.get_mut(&batch) {
            *n -= 1;
            if *n == 0 {
                running.remove(&batch);
            }
        }
        Ok(())
    }
}

fn per_key_order(scheduling: Scheduling, io: bool) {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (count, keys, partitions) = (100_000, 1000, 2);
    let topic = unique_topic("vp-order");
    let group = unique_group("vp-order");
    broker.create_topic(&topic, partitions).unwrap();
    produce(&broker, &topic, count, keys, partitions);
    let log = Arc::new(OrderLog::default());
    let l = log.clone();
    let app = app(&broker, &group)
        .scheduling(scheduling)
        .concurrency(8)
        .topic(&topic, move |t| {
            t.consumer(move || Ordered { log: l.clone(), io })
                .max_messages(500)
                .virtual_partitions(
                    VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec)).max_partitions(8),
                )
        })
        .build()
        .unwrap();
    let running = app.start().unwrap();
    let done = wait_until(Duration::from_secs(120), || {
        log.keys
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= count
    });
    running.stop_blocking().unwrap();
    done.unwrap_or_else(|_| panic!("not every message was processed in 120 s"));
    let per_key = log.keys.lock().unwrap();
    assert_eq!(per_key.len(), keys);
    for (key, offsets) in per_key.iter() {
        assert_eq!(offsets.len(), count / keys, "{key}");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {offsets:?}"
        );
    }
    let interleaved = log.interleaved.lock().unwrap();
    assert!(
        interleaved.is_empty(),
        "{:?}",
        &interleaved[..interleaved.len().min(5)]
    );
    let most = log.most.lock().unwrap().clone();
    eprintln!(
        "{scheduling}: most jobs at once per partition {most:?}, {} job(s) ended on the listener thread",
        log.inline.load(Ordering::Relaxed)
    );
    if io {
        assert!(
            most.values().any(|&m| m > 1),
            "the virtual partitions of a partition never ran at once: {most:?}"
        );
    }
    assert!(most.values().all(|&m| m <= 8), "{most:?}");
}

#[test]
fn virtual_partitions_keep_each_keys_order_and_run_at_once_partition_scheduling() {
    per_key_order(Scheduling::Partition, true);
}

#[test]
fn virtual_partitions_keep_each_keys_order_and_run_at_once_poll_scheduling() {
    per_key_order(Scheduling::Poll, true);
}

/// Cheap groups partly end on the listener thread (a job known to be cheap runs there
/// first) while group 0 waits on a worker: the batch still ends only after all of them (the
/// next one never overlaps it).
#[test]
fn cheap_virtual_partitions_ending_inline_keep_batches_sequential() {
    per_key_order(Scheduling::Partition, false);
}

// ---- failures ----------------------------------------------------------------------------------

#[derive(Default)]
struct FailLog {
    processed: Mutex<HashMap<i64, usize>>,
    /// (collapsed, first offset, last offset) of each job.
    jobs: Mutex<Vec<(bool, i64, i64)>>,
}

struct Failing {
    log: Arc<FailLog>,
    /// Fails once at this offset.
    once: Arc<AtomicBool>,
    fail_at: i64,
    /// Always fails at this offset.
    poison: Option<i64>,
}

impl Consumer for Failing {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let vp = ctx.virtual_partition().expect("virtual partitions");
        let (first, last) = (
            ctx.messages().first().map_or(-1, |m| m.offset()),
            ctx.messages().last().map_or(-1, |m| m.offset()),
        );
        self.log
            .jobs
            .lock()
            .unwrap()
            .push((vp.collapsed, first, last));
        for m in ctx.messages() {
            if Some(m.offset()) == self.poison {
                return Err(format!("poison {}", m.offset()).into());
            }
            if m.offset() == self.fail_at && !self.once.swap(true, Ordering::AcqRel) {
                return Err(format!("failing once at {}", m.offset()).into());
            }
            *self
                .log
                .processed
                .lock()
                .unwrap()
                .entry(m.offset())
                .or_default() += 1;
            ctx.mark_as_consumed(m);
        }
        Ok(())
    }
}

struct FailRun {
    log: Arc<FailLog>,
    violations: Vec<String>,
    checks: usize,
    final_committed: Option<i64>,
    dispatched: Vec<String>,
}

fn failing_run(poison: Option<i64>) -> Option<FailRun> {
    let broker = TestBroker::require(&[])?;
    let count = 2000;
    let topic = unique_topic("vp-fail");
    let group = unique_group("vp-fail");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, count, 10, 1);
    let log = Arc::new(FailLog::default());
    let (l, once) = (log.clone(), Arc::new(AtomicBool::new(false)));
    let dlq_topic = format!("{topic}-dlq");
    if poison.is_some() {
        broker.create_topic(&dlq_topic, 1).unwrap();
    }
    let dlq = poison.map(|_| DeadLetterQueue::new(dlq_topic.clone()).max_retries(1));
    let app = app(&broker, &group)
        .concurrency(5)
        .kafka("auto.commit.interval.ms", "50")
        .topic(&topic, move |t| {
            let t = t
                .consumer(move || Failing {
                    log: l.clone(),
                    once: once.clone(),
                    fail_at: 777,
                    poison,
                })
                .max_messages(100)
                .virtual_partitions(
                    VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec)).max_partitions(5),
                );
            match dlq {
                Some(dlq) => t.dead_letter_queue(dlq),
                None => t,
            }
        })
        .build()
        .unwrap();
    let dispatched = Arc::new(Mutex::new(Vec::new()));
    let d = dispatched.clone();
    app.monitor().subscribe_fn(move |e| {
        if e.name() == "dead_letter_queue.dispatched" {
            d.lock().unwrap().push(e.to_string());
        }
    });
    let running = app.start().unwrap();
    // Every commit seen: nothing below it may be unprocessed.
    let watcher = broker.committed_offsets(&group).unwrap();
    let mut violations = Vec::new();
    let mut checks = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut final_committed = None;
    while Instant::now() < deadline {
        let at = watcher.of(&topic, 1).get(&0).copied();
        let processed: HashSet<i64> = log.processed.lock().unwrap().keys().copied().collect();
        checks += 1;
        if let Some(next) = at {
            if let Some(hole) = (0..next).find(|o| !processed.contains(o) && Some(*o) != poison) {
                violations.push(format!("committed {next} while {hole} was not processed"));
            }
            if next >= count as i64 {
                final_committed = Some(next);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    running.stop_blocking().unwrap();
    let dispatched = dispatched.lock().unwrap().clone();
    Some(FailRun {
        log,
        violations,
        checks,
        final_committed,
        dispatched,
    })
}

fn assert_collapsed_then_split(log: &FailLog, failing: i64) {
    let jobs = log.jobs.lock().unwrap();
    let collapsed: Vec<_> = jobs.iter().filter(|j| j.0).collect();
    assert!(
        collapsed.iter().any(|j| j.1 <= failing && failing <= j.2),
        "no collapsed job held offset {failing}: {collapsed:?}"
    );
    let collapsed_end = collapsed.iter().map(|j| j.2).max().unwrap();
    assert!(
        jobs.iter().any(|j| !j.0 && j.1 > collapsed_end),
        "splitting did not resume after the collapse (ended at {collapsed_end})"
    );
}

#[test]
fn a_failing_virtual_partition_never_commits_past_unprocessed_work() {
    let Some(run) = failing_run(None) else {
        return;
    };
    assert!(run.violations.is_empty(), "{:?}", run.violations);
    assert_eq!(
        run.final_committed,
        Some(2000),
        "after {} checks",
        run.checks
    );
    let processed = run.log.processed.lock().unwrap();
    assert_eq!(processed.len(), 2000);
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "the collapsed retry processed marked messages again: {twice:?}"
    );
    drop(processed);
    assert_collapsed_then_split(&run.log, 777);
    eprintln!("{} commit checks, none past unprocessed work", run.checks);
}

#[test]
fn a_poison_message_is_dead_lettered_from_the_collapsed_retry_and_the_rest_flows() {
    let Some(run) = failing_run(Some(1500)) else {
        return;
    };
    assert!(run.violations.is_empty(), "{:?}", run.violations);
    assert_eq!(
        run.final_committed,
        Some(2000),
        "after {} checks",
        run.checks
    );
    assert_eq!(run.dispatched.len(), 1, "{:?}", run.dispatched);
    assert!(run.dispatched[0].contains("1500"), "{:?}", run.dispatched);
    let processed = run.log.processed.lock().unwrap();
    assert_eq!(processed.len(), 1999, "all but the poison message");
    assert!(!processed.contains_key(&1500));
    assert!(processed.values().all(|n| *n == 1));
    drop(processed);
    assert_collapsed_then_split(&run.log, 1500);
}

// ---- revocation while virtual partitions run ------------------------------------------------

#[derive(Default)]
struct Members {
    /// (partition, offset) → the member processing it now.
    in_progress: Mutex<HashMap<(i32, i64), usize>>,
    overlaps: Mutex<Vec<String>>,
    processed: Mutex<HashMap<(i32, i64), usize>>,
    revoked_hooks: Mutex<Vec<(usize, i32)>>,
    marks_after_revocation: Mutex<usize>,
    commit_errors: Mutex<Vec<String>>,
}

struct Slow {
    member: usize,
    members: Arc<Members>,
}

impl Consumer for Slow {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for m in ctx.messages() {
            let at = (ctx.partition(), m.offset());
            if let Some(other) = self
                .members
                .in_progress
                .lock()
                .unwrap()
                .insert(at, self.member)
            {
                self.members
                    .overlaps
                    .lock()
                    .unwrap()
                    .push(format!("{at:?} by members {other} and {}", self.member));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.members.in_progress.lock().unwrap().remove(&at);
            *self
                .members
                .processed
                .lock()
                .unwrap()
                .entry(at)
                .or_default() += 1;
            if ctx.mark_as_consumed(m) && ctx.is_revoked() {
                *self.members.marks_after_revocation.lock().unwrap() += 1;
            }
        }
        Ok(())
    }

    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.members
            .revoked_hooks
            .lock()
            .unwrap()
            .push((self.member, ctx.partition()));
        Ok(())
    }
}

#[test]
fn a_revocation_while_virtual_partitions_run_waits_for_them() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    // About 2 s of work for one member (20 ms a message, 16 at once): the second joins while
    // the first member's virtual partitions run.
    let (count, partitions) = (1600, 4);
    let topic = unique_topic("vp-revoke");
    let group = unique_group("vp-revoke");
    broker.create_topic(&topic, partitions).unwrap();
    produce(&broker, &topic, count, 16, partitions);
    let members = Arc::new(Members::default());
    let member = |id: usize| {
        let m = members.clone();
        let app = app(&broker, &group)
            .concurrency(8)
            .kafka("partition.assignment.strategy", "range,roundrobin")
            .topic(&topic, move |t| {
                t.consumer(move || Slow {
                    member: id,
                    members: m.clone(),
                })
                .max_messages(20)
                .virtual_partitions(
                    VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec)).max_partitions(4),
                )
            })
            .build()
            .unwrap();
        let m = members.clone();
        app.monitor().subscribe_fn(move |e| {
            if e.to_string().contains("connection.client.commit.error") {
                m.commit_errors.lock().unwrap().push(e.to_string());
            }
        });
        app.start().unwrap()
    };
    let a = member(1);
    wait_until(Duration::from_secs(30), || {
        members.processed.lock().unwrap().len() >= 40
    })
    .expect("the first member did not work");
    let b = member(2);
    wait_until(Duration::from_secs(120), || {
        members.processed.lock().unwrap().len() >= count
    })
    .unwrap_or_else(|_| {
        panic!(
            "{} of {count} processed",
            members.processed.lock().unwrap().len()
        )
    });
    drop(b);
    drop(a);
    let overlaps = members.overlaps.lock().unwrap();
    assert!(
        overlaps.is_empty(),
        "processed by two members at once: {overlaps:?}"
    );
    assert_eq!(*members.marks_after_revocation.lock().unwrap(), 0);
    let hooks = members.revoked_hooks.lock().unwrap();
    assert!(
        hooks.iter().any(|(m, _)| *m == 1),
        "member 1 lost partitions but no revoked hook ran: {hooks:?}"
    );
    let twice = members
        .processed
        .lock()
        .unwrap()
        .values()
        .filter(|n| **n > 1)
        .count();
    let refused = members.commit_errors.lock().unwrap().clone();
    if refused.is_empty() {
        // The revocation waited for the running virtual partitions and committed their
        // work: the next owner starts after it.
        assert_eq!(
            twice, 0,
            "processed twice although every commit was accepted"
        );
    } else {
        // The mock refuses commits while its group is joining: the next owner starts from
        // the last accepted commit, so these redeliveries are the broker's.
        eprintln!(
            "{twice} message(s) redelivered after {} refused commit(s)",
            refused.len()
        );
    }
}
