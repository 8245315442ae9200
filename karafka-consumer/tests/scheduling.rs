//! Partition scheduling (the default) against a broker: a slow partition does not hold up the
//! others (and with poll scheduling it does, in the same scenario), a job longer than
//! `max.poll.interval.ms` keeps its member in the group, and a revocation waits for the
//! revoked partitions' running jobs (or, past `revocation_timeout`, stops their marks and
//! runs their `revoked` hooks after them).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use karafka_consumer::payload::Raw;
use karafka_consumer::{ConsumeResult, Consumer, Context, Scheduling};
use karafka_producer::{Message, Producer};
use karafka_testing::{Capability, TestBroker, unique_group, unique_topic, wait_until};

// ---- uneven work ----------------------------------------------------------------------------

/// Partition 0 costs 200 ms a message; the others nothing. Records how long after its
/// creation each message of the others was consumed.
struct Uneven {
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Consumer for Uneven {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if ctx.partition() == 0 {
            for _ in ctx.messages() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return Ok(());
        }
        let now = SystemTime::now();
        let mut latencies = self.latencies.lock().unwrap();
        for m in ctx.messages() {
            let created = m.timestamp().to_system_time().unwrap();
            latencies.push(now.duration_since(created).unwrap_or_default());
        }
        Ok(())
    }
}

/// p99 of the fast partitions' consumption latency, with `scheduling`, while partition 0
/// gets twice the messages it can process (its backlog grows) for 6 s.
fn uneven_p99(broker: &TestBroker, scheduling: Scheduling) -> (Duration, usize) {
    let topic = unique_topic("uneven");
    let group = unique_group("uneven");
    broker.create_topic(&topic, 10).unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let l = latencies.clone();
    let app = common::app(broker, &group)
        .scheduling(scheduling)
        .concurrency(10)
        .topic(&topic, move |t| {
            t.consumer(move || Uneven {
                latencies: l.clone(),
            })
            .max_wait_time(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let assigned = common::Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    wait_until(Duration::from_secs(30), || {
        assigned.count("rebalance.partitions_assigned") > 0
    })
    .expect("no assignment within 30 s");
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "1")
        .build()
        .unwrap();
    // Every 100 ms: one message to each fast partition, one to the slow one (which can
    // process 5 a second).
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let batch = (0..10)
            .map(|p| Message::new(topic.as_str(), format!("m{sent}-{p}")).partition(p))
            .collect();
        producer.produce_many_sync(batch).unwrap();
        sent += 9;
        std::thread::sleep(Duration::from_millis(100));
    }
    producer.close().unwrap();
    // Wait for the fast partitions' messages (not for the slow backlog).
    let waited = wait_until(Duration::from_secs(60), || {
        latencies.lock().unwrap().len() >= sent
    });
    drop(running);
    waited.unwrap_or_else(|_| {
        panic!(
            "{scheduling}: {} of {sent} fast messages consumed",
            latencies.lock().unwrap().len()
        )
    });
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    (p99, all.len())
}

#[test]
fn partition_scheduling_a_slow_partition_does_not_hold_up_the_others() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (partition, n) = uneven_p99(&broker, Scheduling::Partition);
    let (poll, _) = uneven_p99(&broker, Scheduling::Poll);
    eprintln!(
        "uneven work, consumption latency p99 of the 9 fast partitions ({n} messages): \
         partition scheduling {partition:?}, poll scheduling {poll:?}"
    );
    assert!(
        partition <= Duration::from_secs(2),
        "with partition scheduling the fast partitions' p99 should stay within 2 x max_wait_time: {partition:?}"
    );
    // The scenario does what it says: with Karafka's rule the fast partitions wait for the
    // slow one's batches.
    assert!(
        poll > Duration::from_secs(2),
        "with poll scheduling the fast partitions should follow the slow one: {poll:?}"
    );
}

// ---- a job longer than max.poll.interval.ms -------------------------------------------------

#[derive(Default)]
struct Seen {
    /// (partition, offset) -> how many times processed, by which members.
    processed: Mutex<BTreeMap<(i32, i64), Vec<usize>>>,
    long_jobs_done: Mutex<usize>,
}

struct Slow {
    member: usize,
    seen: Arc<Seen>,
    job: Duration,
}

impl Consumer for Slow {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for m in ctx.messages() {
            self.seen
                .processed
                .lock()
                .unwrap()
                .entry((m.partition(), m.offset()))
                .or_default()
                .push(self.member);
        }
        tokio::time::sleep(self.job).await;
        *self.seen.long_jobs_done.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn partition_scheduling_keeps_a_member_whose_job_runs_twice_max_poll_interval() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("long-job");
    let group = unique_group("long-job");
    broker.create_topic(&topic, 2).unwrap();
    let seen = Arc::new(Seen::default());
    // librdkafka's lowest max.poll.interval.ms is the session timeout (6 s in tests).
    let interval = Duration::from_secs(6);
    let member = |id: usize| {
        let s = seen.clone();
        let app = common::app(&broker, &group)
            .scheduling(Scheduling::Partition)
            .kafka("max.poll.interval.ms", interval.as_millis().to_string())
            .revocation_timeout(Duration::from_secs(1))
            .topic(&topic, move |t| {
                t.consumer(move || Slow {
                    member: id,
                    seen: s.clone(),
                    job: interval * 2 + Duration::from_millis(500),
                })
            })
            .build()
            .unwrap();
        let events = common::Recorder::attach(app.monitor());
        (app.start().unwrap(), events)
    };
    let (a, a_events) = member(1);
    wait_until(Duration::from_secs(30), || {
        a_events.count("rebalance.partitions_assigned") > 0
    })
    .expect("the first member got no partitions");
    let (b, b_events) = member(2);
    // Both members hold a partition before the long jobs start.
    wait_until(Duration::from_secs(60), || {
        b_events.count("rebalance.partitions_assigned") > 0
            && a_events.count("rebalance.partitions_revoked") > 0
            && a_events.count("rebalance.partitions_assigned") >= 2
    })
    .expect("the second member did not get a partition");
    let before = (
        a_events.count("rebalance.partitions_revoked"),
        b_events.count("rebalance.partitions_revoked"),
    );
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    producer
        .produce_many_sync(vec![
            Message::new(topic.as_str(), "slow-0").partition(0),
            Message::new(topic.as_str(), "slow-1").partition(1),
        ])
        .unwrap();
    producer.close().unwrap();
    wait_until(Duration::from_secs(60), || {
        *seen.long_jobs_done.lock().unwrap() >= 2
    })
    .expect("the long jobs did not end");
    // Their offsets are committed (the background commit runs every 5 s).
    wait_until(Duration::from_secs(20), || {
        common::committed(&broker, &group, &topic, 2) == BTreeMap::from([(0, 1), (1, 1)])
    })
    .unwrap_or_else(|_| {
        panic!(
            "committed: {:?}",
            common::committed(&broker, &group, &topic, 2)
        )
    });
    let after = (
        a_events.count("rebalance.partitions_revoked")
            + a_events.count("rebalance.partitions_lost"),
        b_events.count("rebalance.partitions_revoked")
            + b_events.count("rebalance.partitions_lost"),
    );
    drop(a);
    drop(b);
    assert_eq!(
        after, before,
        "no member may lose its partitions while its job runs past max.poll.interval.ms"
    );
    let processed = seen.processed.lock().unwrap();
    for (at, by) in processed.iter() {
        assert_eq!(by.len(), 1, "message {at:?} processed by {by:?}");
    }
    assert_eq!(processed.len(), 2, "{processed:?}");
}

// ---- revocation while jobs of the revoked partitions run -----------------------------------

#[derive(Default)]
struct Timeline {
    /// Per (member, partition): the consume jobs' start and end, and the revoked hooks' start.
    jobs: Mutex<Vec<(usize, i32, Instant, Instant)>>,
    revoked_hooks: Mutex<Vec<(usize, i32, Instant)>>,
    /// When each member's revocations were announced (after their commit).
    revocations: Mutex<Vec<(usize, Instant)>>,
    /// Commits the broker refused, per member.
    commit_errors: Mutex<Vec<(usize, String)>>,
    /// Those refused before every message was processed (not at the final shutdown).
    refused_while_processing: Mutex<Vec<(usize, String)>>,
    processed: Mutex<HashMap<(i32, i64), usize>>,
    /// Marks a job made after its partition was revoked that were refused.
    refused_marks: Mutex<usize>,
    busy: Mutex<HashMap<i32, usize>>,
    overlaps: Mutex<Vec<(i32, usize, usize)>>,
}

struct Worker {
    member: usize,
    timeline: Arc<Timeline>,
    per_batch: Duration,
}

impl Consumer for Worker {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let partition = ctx.partition();
        let t = &self.timeline;
        if let Some(other) = t.busy.lock().unwrap().insert(partition, self.member) {
            t.overlaps
                .lock()
                .unwrap()
                .push((partition, other, self.member));
        }
        let start = Instant::now();
        tokio::time::sleep(self.per_batch).await;
        {
            let mut processed = t.processed.lock().unwrap();
            for m in ctx.messages() {
                *processed.entry((m.partition(), m.offset())).or_default() += 1;
            }
        }
        if let Some(last) = ctx.messages().last() {
            if !ctx.mark_as_consumed(last) {
                *t.refused_marks.lock().unwrap() += 1;
            }
        }
        {
            let mut busy = t.busy.lock().unwrap();
            if busy.get(&partition) == Some(&self.member) {
                busy.remove(&partition);
            }
        }
        t.jobs
            .lock()
            .unwrap()
            .push((self.member, partition, start, Instant::now()));
        Ok(())
    }

    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.timeline.revoked_hooks.lock().unwrap().push((
            self.member,
            ctx.partition(),
            Instant::now(),
        ));
        Ok(())
    }
}

/// A member works on 4 partitions (each batch takes `per_batch`); a second member joins,
/// so partitions of the first are revoked while their jobs run. Returns the timeline.
fn revoke_while_running(
    broker: &TestBroker,
    protocol: &[(&str, &str)],
    messages: usize,
    per_batch: Duration,
    revocation_timeout: Duration,
) -> Arc<Timeline> {
    let topic = unique_topic("revoke-running");
    let group = unique_group("revoke-running");
    broker.create_topic(&topic, 4).unwrap();
    common::produce(broker, &topic, messages, "r");
    let timeline = Arc::new(Timeline::default());
    let member = |id: usize| {
        let t = timeline.clone();
        let kip848 = protocol.contains(&("group.protocol", "consumer"));
        let skip: &[&str] = if kip848 {
            &["session.timeout.ms", "heartbeat.interval.ms"]
        } else {
            &[]
        };
        let mut builder = common::app_except(broker, &group, skip)
            .scheduling(Scheduling::Partition)
            .concurrency(4)
            .revocation_timeout(revocation_timeout);
        for (k, v) in protocol {
            builder = builder.kafka(*k, *v);
        }
        let app = builder
            .topic(&topic, move |topic| {
                topic
                    .consumer(move || Worker {
                        member: id,
                        timeline: t.clone(),
                        per_batch,
                    })
                    .max_messages(10)
            })
            .build()
            .unwrap();
        let events = common::Recorder::attach(app.monitor());
        let t = timeline.clone();
        app.monitor().subscribe_fn(move |e| {
            if e.name() == "rebalance.partitions_revoked" {
                t.revocations.lock().unwrap().push((id, Instant::now()));
            }
            if e.to_string().contains("connection.client.commit.error") {
                t.commit_errors.lock().unwrap().push((id, e.to_string()));
            }
            if std::env::var("SCHED_DEBUG").is_ok()
                && (e.name().starts_with("rebalance") || e.name() == "error.occurred")
            {
                eprintln!("{:?} member {id}: {e}", Instant::now());
            }
        });
        (app.start().unwrap(), events)
    };
    let (a, _) = member(1);
    // The first member is busy with jobs before the second joins.
    wait_until(Duration::from_secs(30), || {
        timeline.jobs.lock().unwrap().len() >= 4
    })
    .expect("the first member did not work");
    let (b, b_events) = member(2);
    wait_until(Duration::from_secs(60), || {
        b_events.count("rebalance.partitions_assigned") > 0
            && !timeline.jobs.lock().unwrap().iter().all(|j| j.0 == 1)
    })
    .expect("the second member did not get to work");
    wait_until(Duration::from_secs(120), || {
        timeline.processed.lock().unwrap().len() >= messages
    })
    .unwrap_or_else(|_| {
        panic!(
            "{} of {messages} processed",
            timeline.processed.lock().unwrap().len()
        )
    });
    *timeline.refused_while_processing.lock().unwrap() =
        timeline.commit_errors.lock().unwrap().clone();
    drop(b);
    drop(a);
    timeline
}

/// Every revoked partition of member 1 whose job ran when the revocation began: that job
/// ended before the revocation was announced (it waited), and its `revoked` hook ran after.
fn assert_waited(timeline: &Timeline) -> usize {
    let revoked_at = timeline
        .revocations
        .lock()
        .unwrap()
        .iter()
        .find(|(m, _)| *m == 1)
        .map(|(_, at)| *at)
        .expect("member 1 had partitions revoked");
    let jobs = timeline.jobs.lock().unwrap();
    let hooks = timeline.revoked_hooks.lock().unwrap();
    let mut waited_for = 0;
    for (_, partition, at) in hooks.iter().filter(|(m, _, _)| *m == 1) {
        // The job of this partition that ran last before its hook.
        let Some(last) = jobs
            .iter()
            .filter(|(m, p, _, end)| *m == 1 && p == partition && end <= at)
            .max_by_key(|(_, _, _, end)| *end)
        else {
            continue;
        };
        assert!(
            last.3 <= *at,
            "revoked hook of {partition} ran before its job ended"
        );
        if last.3 > revoked_at - Duration::from_millis(1500) {
            waited_for += 1;
            assert!(
                last.3 <= revoked_at,
                "the job of revoked partition {partition} ended after the revocation was announced"
            );
        }
    }
    waited_for
}

fn check_revocation_waits(protocol: &[(&str, &str)], needs: &[Capability]) {
    let Some(broker) = TestBroker::require(needs) else {
        return;
    };
    let timeline = revoke_while_running(
        &broker,
        protocol,
        800,
        Duration::from_millis(600),
        Duration::from_secs(30),
    );
    let overlaps = timeline.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.is_empty(),
        "processed by two members at once: {overlaps:?}"
    );
    let processed = timeline.processed.lock().unwrap();
    let duplicates: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    let refused = timeline.refused_while_processing.lock().unwrap().clone();
    if refused.is_empty() {
        // The revocation committed the finished batches, so the new owner starts after them.
        assert!(
            duplicates.is_empty(),
            "messages processed twice although the revocation waited for their jobs: {duplicates:?}"
        );
    } else {
        // The broker refused a commit (the mock does while its group is joining): the next
        // owner starts from the last accepted commit, so redeliveries are the broker's.
        eprintln!(
            "duplicates not checked: the broker refused commits {refused:?}; {} redelivered",
            duplicates.len()
        );
    }
    assert_eq!(*timeline.refused_marks.lock().unwrap(), 0);
    let waited = assert_waited(&timeline);
    eprintln!("revocation waited for {waited} running job(s)");
    // Member 1 had work on every partition all along, so some job was running.
    assert!(
        waited >= 1,
        "no job of a revoked partition ran at the revocation"
    );
}

#[test]
fn partition_scheduling_revocation_waits_for_running_jobs_eager() {
    check_revocation_waits(
        &[("partition.assignment.strategy", "range,roundrobin")],
        &[Capability::CommitsDuringEagerRebalance],
    );
}

#[test]
fn partition_scheduling_revocation_waits_for_running_jobs_cooperative() {
    check_revocation_waits(
        &[("partition.assignment.strategy", "cooperative-sticky")],
        &[Capability::CooperativeRebalances],
    );
}

#[test]
fn partition_scheduling_revocation_waits_for_running_jobs_kip848() {
    let Some(broker) = TestBroker::require(&[Capability::ConsumerProtocol]) else {
        return;
    };
    if let Some(cluster) = broker.embedded_cluster() {
        cluster.set_consumer_group_session_timeout(Duration::from_secs(6));
        cluster.set_consumer_group_heartbeat_interval(Duration::from_millis(500));
    }
    check_revocation_waits(&[("group.protocol", "consumer")], &[]);
}

#[test]
fn partition_scheduling_job_past_revocation_timeout_cannot_mark_and_is_revoked_after() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    // Each batch takes 3 s; the revocation waits only 0.5 s.
    let timeline = revoke_while_running(
        &broker,
        &[("partition.assignment.strategy", "range,roundrobin")],
        100,
        Duration::from_secs(3),
        Duration::from_millis(500),
    );
    let overlaps = timeline.overlaps.lock().unwrap().clone();
    assert!(
        *timeline.refused_marks.lock().unwrap() > 0,
        "a job that outlived revocation_timeout should have had its mark refused"
    );
    let jobs = timeline.jobs.lock().unwrap();
    let hooks = timeline.revoked_hooks.lock().unwrap();
    assert!(
        hooks.iter().any(|(m, _, _)| *m == 1),
        "the first member's revoked hooks did not run"
    );
    for (member, partition, at) in hooks.iter() {
        // Its `revoked` hook ran after its job ended, never beside one of its jobs.
        let after_a_job = jobs
            .iter()
            .any(|(m, p, _, end)| m == member && p == partition && end <= at);
        assert!(
            after_a_job,
            "revoked hook of {member}/{partition} without a job before it"
        );
        let beside: Vec<_> = jobs
            .iter()
            .filter(|(m, p, start, end)| m == member && p == partition && start < at && at < end)
            .collect();
        assert!(
            beside.is_empty(),
            "revoked hook of {member}/{partition} ran while a job of it ran: {beside:?}"
        );
    }
    // Within a member a partition given back starts only after its old job: its jobs never
    // overlap.
    for member in [1, 2] {
        for partition in 0..4 {
            let mut spans: Vec<_> = jobs
                .iter()
                .filter(|(m, p, _, _)| *m == member && *p == partition)
                .map(|(_, _, start, end)| (*start, *end))
                .collect();
            spans.sort();
            for pair in spans.windows(2) {
                assert!(
                    pair[1].0 >= pair[0].1,
                    "member {member} ran two jobs of partition {partition} at once"
                );
            }
        }
    }
    // Nothing lost (checked by the wait). A message may be processed twice (its mark was
    // refused), and by two members at once: the job past the timeout still ran when its
    // partition moved to the other member.
    eprintln!("overlaps past the timeout (expected possible: the old job still ran): {overlaps:?}");
}
