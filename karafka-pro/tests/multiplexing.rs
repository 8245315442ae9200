//! Multiplexing against a broker (the embedded mock, or `KARAFKA_TEST_BROKERS`): static
//! connections that split the partitions and isolate a slow batch, `boot` connections at
//! start, and dynamic scaling up and down (one change at a time per consumer group, each
//! family at its own pace) with nothing lost or processed twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, Scheduling};
use karafka_core::instrumentation::{AssignmentChange, Event, Monitor, ScaleDirection};
use karafka_pro::{Multiplexing, MultiplexingSubscriptionGroup};
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

fn app(broker: &TestBroker, group: &str) -> AppBuilder {
    let mut builder = App::builder()
        .name(group)
        .shutdown_timeout(Duration::from_secs(20));
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    builder
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Each connection's assignment, from the rebalance events of `monitor`.
#[derive(Clone, Default)]
struct Assignments(Arc<Mutex<BTreeMap<String, BTreeSet<i32>>>>);

impl Assignments {
    fn watch(monitor: &Monitor) -> Self {
        let me = Assignments::default();
        let map = me.0.clone();
        monitor.subscribe_fn(move |e| {
            if let Event::Rebalance {
                subscription_group,
                change,
                partitions,
                ..
            } = e
            {
                let mut map = map.lock().unwrap();
                let set = map.entry(subscription_group.to_string()).or_default();
                for tp in partitions {
                    match change {
                        AssignmentChange::Assigned => {
                            set.insert(tp.partition);
                        }
                        _ => {
                            set.remove(&tp.partition);
                        }
                    }
                }
            }
        });
        me
    }

    fn get(&self) -> BTreeMap<String, BTreeSet<i32>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

// ---- static: two connections, a slow batch on one does not delay the other ----------------

#[derive(Default)]
struct Latencies {
    /// Per partition, produce-to-consume latency of each message.
    seen: Mutex<HashMap<i32, Vec<Duration>>>,
    blocking: AtomicBool,
}

struct Timed {
    log: Arc<Latencies>,
}

impl Consumer for Timed {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for m in ctx.messages() {
            let text =
                String::from_utf8_lossy(m.raw_payload().ok().flatten().map_or(&[][..], |b| &b[..]))
                    .into_owned();
            if text == "block" {
                self.log.blocking.store(true, Ordering::Release);
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            let sent: u128 = text.parse().unwrap_or(0);
            let latency = Duration::from_micros((now_micros().saturating_sub(sent)) as u64);
            self.log
                .seen
                .lock()
                .unwrap()
                .entry(ctx.partition())
                .or_default()
                .push(latency);
        }
        Ok(())
    }
}

/// `max: 2` on one app (poll scheduling, where one connection waits for its slowest job
/// before polling again): the two connections split the 4 partitions; while a batch blocks
/// for 5 s on one connection, messages of the other connection's partitions are processed at
/// once, and those of the blocked connection's other partition wait (the same run's control).
#[test]
fn static_connections_split_partitions_and_isolate_a_slow_batch() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("mux-static");
    let group = unique_group("mux-static");
    broker.create_topic(&topic, 4).unwrap();
    let log = Arc::new(Latencies::default());
    let l = log.clone();
    let app = app(&broker, &group)
        .scheduling(Scheduling::Poll)
        .consumer_group(&group, |cg| {
            cg.subscription_group("events", |sg| {
                sg.multiplexing(Multiplexing::new(2))
                    .topic(&topic, move |t| {
                        let l = l.clone();
                        t.consumer(move || Timed { log: l.clone() })
                            .max_wait_time(Duration::from_millis(100))
                    })
            })
        })
        .build()
        .unwrap();
    let assignments = Assignments::watch(app.monitor());
    let running = app.start().unwrap();
    let split = wait_until(Duration::from_secs(60), || {
        let a = assignments.get();
        a.len() == 2 && a.values().map(BTreeSet::len).sum::<usize>() == 4
    });
    let a = assignments.get();
    assert!(
        split.is_ok(),
        "the 2 connections did not split 4 partitions: {a:?}"
    );
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        vec!["events#0".to_owned(), "events#1".to_owned()]
    );
    let slow_conn: Vec<i32> = a["events#0"].iter().copied().collect();
    let other_conn: Vec<i32> = a["events#1"].iter().copied().collect();

    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    producer
        .produce_sync(Message::new(topic.as_str(), "block").partition(slow_conn[0]))
        .unwrap();
    wait_until(Duration::from_secs(30), || {
        log.blocking.load(Ordering::Acquire)
    })
    .expect("the blocking batch started");
    let started = Instant::now();
    // Messages to the other connection's partitions, and to the blocked connection's other
    // partition, while the batch blocks.
    let mut targets: Vec<i32> = other_conn.clone();
    if slow_conn.len() > 1 {
        targets.push(slow_conn[1]);
    }
    for i in 0..20 {
        for &p in &targets {
            producer
                .produce_sync(Message::new(topic.as_str(), now_micros().to_string()).partition(p))
                .unwrap();
        }
        if i % 5 == 4 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let all = wait_until(Duration::from_secs(30), || {
        let seen = log.seen.lock().unwrap();
        targets
            .iter()
            .all(|p| seen.get(p).is_some_and(|v| v.len() == 20))
    });
    assert!(all.is_ok(), "not every message was processed");
    let seen = log.seen.lock().unwrap();
    let worst = |ps: &[i32]| {
        ps.iter()
            .flat_map(|p| seen.get(p).into_iter().flatten())
            .max()
            .copied()
            .unwrap_or_default()
    };
    let other = worst(&other_conn);
    println!(
        "static multiplexing, poll scheduling, a 5 s batch on events#0: worst latency on \
         events#1's partitions {other:?}; produced within {:?} of the block",
        started.elapsed()
    );
    assert!(
        other < Duration::from_millis(2_000),
        "messages of the other connection waited {other:?} for the blocked batch"
    );
    if slow_conn.len() > 1 {
        let blocked = worst(&slow_conn[1..]);
        println!("  control: worst latency on events#0's other partition {blocked:?}");
        assert!(
            blocked > Duration::from_millis(2_500),
            "the blocked connection's other partition was not delayed ({blocked:?}): the \
             control shows nothing"
        );
    }
    drop(seen);
    running.stop_blocking().unwrap();
}

// ---- boot -------------------------------------------------------------------------------------

struct Nothing;

impl Consumer for Nothing {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

/// Dynamic `max: 4, min: 1, boot: 2`: two connections start, not four, and none is added or
/// stopped within a scale_delay that has not passed.
#[test]
fn boot_starts_boot_connections() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("mux-boot");
    let group = unique_group("mux-boot");
    broker.create_topic(&topic, 8).unwrap();
    let app = app(&broker, &group)
        .kafka("statistics.interval.ms", "200")
        .consumer_group(&group, |cg| {
            cg.subscription_group("events", |sg| {
                sg.multiplexing(
                    Multiplexing::new(4)
                        .min(1)
                        .boot(2)
                        .scale_delay(Duration::from_secs(600)),
                )
                .topic(&topic, |t| t.consumer(|| Nothing))
            })
        })
        .build()
        .unwrap();
    let assignments = Assignments::watch(app.monitor());
    let scaled = Arc::new(Mutex::new(Vec::new()));
    let s = scaled.clone();
    app.monitor().subscribe_fn(move |e| {
        if let Event::ConnectionScaled { connection, .. } = e {
            s.lock().unwrap().push(connection.to_string());
        }
    });
    let clients = Arc::new(Mutex::new(BTreeMap::new()));
    let c = clients.clone();
    app.monitor().subscribe_fn(move |e| {
        if let Event::StatisticsEmitted {
            source_id,
            statistics,
            ..
        } = e
        {
            c.lock()
                .unwrap()
                .insert(source_id.to_string(), statistics.client_id.clone());
        }
    });
    let running = app.start().unwrap();
    let split = wait_until(Duration::from_secs(60), || {
        assignments.get().values().map(BTreeSet::len).sum::<usize>() == 8
    });
    assert!(
        split.is_ok(),
        "8 partitions not assigned: {:?}",
        assignments.get()
    );
    // Let statistics come: nothing changes before scale_delay.
    std::thread::sleep(Duration::from_secs(1));
    let a = assignments.get();
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        vec!["events#0".to_owned(), "events#1".to_owned()],
        "boot 2 should start events#0 and events#1 only"
    );
    assert!(
        scaled.lock().unwrap().is_empty(),
        "{:?}",
        scaled.lock().unwrap()
    );
    let names: Vec<String> = format!("{running:?}")
        .split("karafka.listener#")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "listeners: {names:?}");
    running.stop_blocking().unwrap();
}

// ---- dynamic ------------------------------------------------------------------------------------

/// Every (topic, partition, offset) processed, with how many times.
#[derive(Default)]
struct Processed(Mutex<HashMap<(String, i32, i64), usize>>);

struct Recording {
    log: Arc<Processed>,
}

impl Consumer for Recording {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let mut log = self.log.0.lock().unwrap();
        for m in ctx.messages() {
            *log.entry((ctx.topic().to_string(), ctx.partition(), m.offset()))
                .or_default() += 1;
        }
        Ok(())
    }
}

/// A scale event, as a test sees it.
#[derive(Debug, Clone)]
struct Change {
    app: &'static str,
    family: String,
    connection: String,
    up: bool,
    active: usize,
    at: Instant,
}

/// Scale events, warnings, and commits refused during a rebalance.
#[derive(Clone, Default)]
struct Changes(
    Arc<Mutex<Vec<Change>>>,
    Arc<Mutex<Vec<String>>>,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl Changes {
    fn watch(&self, app: &'static str, monitor: &Monitor) {
        let (changes, warnings, refused) = (self.0.clone(), self.1.clone(), self.2.clone());
        monitor.subscribe_fn(move |e| match e {
            Event::ConnectionScaled {
                subscription_group,
                connection,
                direction,
                active,
                ..
            } => changes.lock().unwrap().push(Change {
                app,
                family: subscription_group.to_string(),
                connection: connection.to_string(),
                up: *direction == ScaleDirection::Up,
                active: *active,
                at: Instant::now(),
            }),
            Event::ConnectionWarning { warning, .. } => {
                warnings.lock().unwrap().push(format!("{app}: {warning}"))
            }
            Event::ErrorOccurred(e) if e.to_string().contains("RebalanceInProgress") => {
                refused.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        });
    }

    fn all(&self) -> Vec<Change> {
        self.0.lock().unwrap().clone()
    }

    /// Active connections of a family: `boot`, then ±1 a change.
    fn active(&self, app: &str, family: &str, boot: usize) -> usize {
        self.all()
            .iter()
            .filter(|c| c.app == app && c.family == family)
            .fold(boot, |n, c| if c.up { n + 1 } else { n - 1 })
    }
}

/// Connections holding partitions, per family (`app/family` → connection → partitions).
fn holding(watched: &[(&str, &Assignments)]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (app, a) in watched {
        for (conn, set) in a.get() {
            let family = conn.split('#').next().unwrap_or_default().to_owned();
            out.entry(format!("{app}/{family}"))
                .or_default()
                .insert(conn, set.len());
        }
    }
    out
}

fn produce(broker: &TestBroker, topic: &str, count: usize, partitions: i32) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .build()
        .unwrap();
    let messages = (0..count)
        .map(|i| Message::new(topic, format!("m{i}")).partition(i as i32 % partitions))
        .collect();
    producer.produce_many_sync(messages).unwrap();
    producer.close().unwrap();
}

/// The seed's example: 20 partitions and 2 apps with dynamic multiplexing up to 2 → 4
/// connections of 5 partitions; a third app joins with 20 connections (24 members for 20
/// partitions) → idle connections are stopped, one change at a time per app, never below
/// `min`; the third app leaves → the first two scale up again. Each of the first two apps
/// has a second family in the same consumer group (another topic, another scale_delay):
/// every family keeps its own pace and an app's changes never overlap. Nothing is lost or
/// processed twice.
#[test]
fn dynamic_multiplexing_scales_up_and_down_one_change_at_a_time() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let events = unique_topic("mux-dyn-events");
    let audit = unique_topic("mux-dyn-audit");
    let group = unique_group("mux-dyn");
    broker.create_topic(&events, 20).unwrap();
    broker.create_topic(&audit, 4).unwrap();
    // Tansu leaves a cooperative join to a running group unanswered: eager there (and the
    // apps must warn about it).
    let cooperative = broker.has(karafka_testing::Capability::CooperativeRebalances);
    let strategy = if cooperative {
        "cooperative-sticky"
    } else {
        "range"
    };
    let log = Arc::new(Processed::default());
    let changes = Changes::default();
    let delays = [("events", 2u64), ("audit", 3u64)];
    let build = |app_name: &'static str, families: &[(&str, &str, Multiplexing)]| {
        let l = log.clone();
        let mut builder = app(&broker, &group)
            .kafka("statistics.interval.ms", "250")
            .kafka("partition.assignment.strategy", strategy);
        let families: Vec<(String, String, Multiplexing)> = families
            .iter()
            .map(|(f, t, m)| (f.to_string(), t.to_string(), *m))
            .collect();
        builder = builder.consumer_group(&group, move |mut cg| {
            for (family, topic, m) in families {
                let l = l.clone();
                cg = cg.subscription_group(&family, move |sg| {
                    sg.multiplexing(m).topic(&topic, move |t| {
                        let l = l.clone();
                        t.consumer(move || Recording { log: l.clone() })
                    })
                });
            }
            cg
        });
        let app = builder.build().unwrap();
        changes.watch(app_name, app.monitor());
        let assignments = Assignments::watch(app.monitor());
        (app, assignments)
    };
    let scaled = |delay: u64| {
        Multiplexing::new(2)
            .min(1)
            .boot(1)
            .scale_delay(Duration::from_secs(delay))
    };
    let families = [
        ("events", events.as_str(), scaled(delays[0].1)),
        ("audit", audit.as_str(), scaled(delays[1].1)),
    ];
    produce(&broker, &events, 2_000, 20);
    produce(&broker, &audit, 400, 4);
    let (a, a_assigned) = build("a", &families);
    let (b, b_assigned) = build("b", &families);
    let a_run = a.start().unwrap();
    let b_run = b.start().unwrap();
    let watched = [("a", &a_assigned), ("b", &b_assigned)];

    // Phase 1: each family scales up to 2 connections.
    let four = wait_until(Duration::from_secs(90), || {
        let h = holding(&watched);
        let events: Vec<usize> = ["a/events", "b/events"]
            .iter()
            .flat_map(|f| h.get(*f).into_iter().flat_map(|c| c.values().copied()))
            .collect();
        // `audit` (4 partitions): each family at max, or none of its connections holding
        // more than one partition (which one scales first decides).
        let audit_done = ["a", "b"].iter().all(|app| {
            let held = h.get(&format!("{app}/audit"));
            changes.active(app, "audit", 1) == 2
                || held.is_some_and(|c| c.values().all(|n| *n <= 1))
        });
        let audit_held: usize = ["a/audit", "b/audit"]
            .iter()
            .flat_map(|f| h.get(*f).into_iter().flat_map(|c| c.values().copied()))
            .sum();
        events == [5, 5, 5, 5] && audit_done && audit_held == 4
    });
    assert!(
        four.is_ok(),
        "phase 1: not 4 connections of 5 partitions: {:?}; changes {:?}",
        holding(&watched),
        changes.all()
    );
    let phase1 = changes.all();
    println!(
        "phase 1 (scale up): {} changes, {:?}",
        phase1.len(),
        holding(&watched)
    );

    // Phase 2: a third app joins with 20 connections on `events`.
    produce(&broker, &events, 2_000, 20);
    let (c, c_assigned) = build(
        "c",
        &[(
            "events",
            events.as_str(),
            Multiplexing::new(20)
                .min(1)
                .boot(20)
                .scale_delay(Duration::from_secs(2)),
        )],
    );
    let c_run = c.start().unwrap();
    let all = [("a", &a_assigned), ("b", &b_assigned), ("c", &c_assigned)];
    // Settled: a connection was stopped, and no family above min holds an idle connection
    // (active connections: boot, then ±1 a change; a stopped connection's close may take
    // seconds on the mock, holding back the next change meanwhile).
    let families = [
        ("a", "events", 1usize),
        ("a", "audit", 1),
        ("b", "events", 1),
        ("b", "audit", 1),
        ("c", "events", 20),
    ];
    let settled = wait_until(Duration::from_secs(180), || {
        let all = changes.all();
        let h = holding(&[("a", &a_assigned), ("b", &b_assigned), ("c", &c_assigned)]);
        all[phase1.len()..].iter().any(|c| !c.up)
            && all
                .last()
                .is_some_and(|c| c.at.elapsed() > Duration::from_secs(3))
            && families.iter().all(|(app, family, boot)| {
                let active = changes.active(app, family, *boot);
                let holding = h.get(&format!("{app}/{family}")).map_or(0, BTreeMap::len);
                active == 1 || holding == active
            })
    });
    let phase2: Vec<Change> = changes.all()[phase1.len()..].to_vec();
    assert!(
        settled.is_ok(),
        "phase 2: no connection stopped, or a family above min kept an idle connection: \
         {:?}; changes {phase2:?}",
        holding(&all)
    );
    // Each family: active connections (boot, then ±1 a change) never below min, and an idle
    // one only where the family is at min.
    let h = holding(&all);
    for (app_name, family, boot) in families {
        let mut active = boot;
        for c in changes
            .all()
            .iter()
            .filter(|c| c.app == app_name && c.family == family)
        {
            active = if c.up { active + 1 } else { active - 1 };
            assert_eq!(active, c.active, "{c:?}");
            assert!(active >= 1, "{app_name}/{family} went below min: {c:?}");
        }
        let holding_now = h
            .get(&format!("{app_name}/{family}"))
            .map_or(0, BTreeMap::len);
        assert!(
            holding_now == active || active == 1,
            "{app_name}/{family}: {active} active, {holding_now} holding partitions, above min"
        );
    }
    println!(
        "phase 2 (a third app joins with 20 connections): {} changes: {:?}",
        phase2.len(),
        phase2
            .iter()
            .map(|c| format!("{}:{}{}", c.app, c.connection, if c.up { "+" } else { "-" }))
            .collect::<Vec<_>>()
    );

    // Stopped connections are neither failures of health nor ended listeners.
    assert!(
        c_run.is_running(),
        "app c reports a stopped connection as an ended listener"
    );
    let health = c_run.health(Duration::from_secs(60));
    assert!(
        health.healthy,
        "app c unhealthy after scaling down: {:?}",
        health.reasons
    );

    // Phase 3: the third app leaves; the others scale up again.
    c_run.stop_blocking().unwrap();
    produce(&broker, &events, 2_000, 20);
    let back = wait_until(Duration::from_secs(90), || {
        let h = holding(&watched);
        let events: Vec<usize> = ["a/events", "b/events"]
            .iter()
            .flat_map(|f| h.get(*f).into_iter().flat_map(|c| c.values().copied()))
            .collect();
        events == [5, 5, 5, 5]
    });
    assert!(
        back.is_ok(),
        "phase 3: not back to 4 connections of 5 partitions: {:?}; changes {:?}",
        holding(&watched),
        &changes.all()[phase1.len() + phase2.len()..]
    );

    // Nothing lost or processed twice.
    let expected = 6_000 + 400;
    let done = wait_until(Duration::from_secs(60), || {
        log.0.lock().unwrap().len() == expected
    });
    let processed = log.0.lock().unwrap().clone();
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        done.is_ok(),
        "{} of {expected} messages processed",
        processed.len()
    );
    let refused = changes.2.load(Ordering::Acquire);
    println!(
        "{} messages processed, {} more than once; {refused} commit(s) refused during a \
         rebalance",
        processed.len(),
        twice.len()
    );
    // A revocation commits what was processed; a broker that refuses commits while the
    // group rebalances (the mock, cooperative or eager) makes the next owner start from the
    // last commit it accepted: at-least-once, the only case where a message may come twice.
    if broker.has(karafka_testing::Capability::CommitsDuringEagerRebalance) || refused == 0 {
        assert!(
            twice.is_empty(),
            "{} processed more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
    }
    a_run.stop_blocking().unwrap();
    b_run.stop_blocking().unwrap();

    // The rules, from the events' timestamps.
    let all_changes = changes.all();
    println!("{} changes in all", all_changes.len());
    let delay_of = |family: &str| {
        Duration::from_secs(
            delays
                .iter()
                .find(|(f, _)| *f == family)
                .map_or(2, |(_, d)| *d),
        )
    };
    for app_name in ["a", "b", "c"] {
        let mine: Vec<&Change> = all_changes.iter().filter(|c| c.app == app_name).collect();
        for pair in mine.windows(2) {
            let gap = pair[1].at - pair[0].at;
            // One change at a time per consumer group: the next waits the group's stability
            // (at least the deciding family's scale_delay since the last change).
            assert!(
                gap >= delay_of(&pair[1].family),
                "app {app_name}: {:?} then {:?} only {gap:?} apart",
                pair[0],
                pair[1]
            );
        }
        for family in ["events", "audit"] {
            let times: Vec<&&Change> = mine.iter().filter(|c| c.family == family).collect();
            for pair in times.windows(2) {
                let gap = pair[1].at - pair[0].at;
                assert!(
                    gap >= delay_of(family),
                    "app {app_name} family {family}: changes {gap:?} apart, below its scale_delay"
                );
            }
            for c in &times {
                assert!(c.active >= 1 && c.active <= if app_name == "c" { 20 } else { 2 });
            }
        }
    }
    let warnings = changes.1.lock().unwrap().clone();
    if cooperative {
        assert!(warnings.is_empty(), "{warnings:?}");
    } else {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("without incremental rebalancing")),
            "an eager dynamic family must warn: {warnings:?}"
        );
    }
}

// ---- with virtual partitions ----------------------------------------------------------------

#[derive(Default)]
struct KeyLog {
    /// Per partition and key, offsets in processing order.
    keys: Mutex<HashMap<String, Vec<i64>>>,
    /// Per partition: jobs running now, and the most at once.
    running: Mutex<HashMap<i32, (usize, usize)>>,
    /// Partitions that had messages processed.
    partitions: Mutex<BTreeSet<i32>>,
}

struct Keyed {
    log: Arc<KeyLog>,
}

impl Consumer for Keyed {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let partition = ctx.partition();
        {
            let mut running = self.log.running.lock().unwrap();
            let (now, most) = running.entry(partition).or_default();
            *now += 1;
            *most = (*most).max(*now);
        }
        // A little IO, so the virtual partitions of a batch overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
        {
            let mut keys = self.log.keys.lock().unwrap();
            for m in ctx.messages() {
                // A key's order is kept within a partition.
                let key = format!("{partition}/{}", m.key_str().unwrap_or_default());
                keys.entry(key).or_default().push(m.offset());
            }
        }
        self.log.partitions.lock().unwrap().insert(partition);
        if let Some((now, _)) = self.log.running.lock().unwrap().get_mut(&partition) {
            *now -= 1;
        }
        Ok(())
    }
}

/// The seed's example: 2 connections × 5 virtual partitions. Both connections process their
/// partitions, each partition's batches run as several virtual partitions at once, every
/// key's messages come in offset order, and every message is processed.
#[test]
fn multiplexing_with_virtual_partitions_inside_each_connection() {
    use karafka_pro::{VirtualPartitions, VirtualPartitionsTopic};

    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("mux-vp");
    let group = unique_group("mux-vp");
    broker.create_topic(&topic, 4).unwrap();
    let log = Arc::new(KeyLog::default());
    let l = log.clone();
    let app = app(&broker, &group)
        .concurrency(10)
        .consumer_group(&group, |cg| {
            cg.subscription_group("events", |sg| {
                sg.multiplexing(Multiplexing::new(2))
                    .topic(&topic, move |t| {
                        let l = l.clone();
                        t.consumer(move || Keyed { log: l.clone() })
                            .max_messages(200)
                            .virtual_partitions(
                                VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec))
                                    .max_partitions(5),
                            )
                    })
            })
        })
        .build()
        .unwrap();
    let assignments = Assignments::watch(app.monitor());
    let running = app.start().unwrap();
    // Produced once both connections hold their partitions: no rebalance while it runs.
    let split = wait_until(Duration::from_secs(60), || {
        let a = assignments.get();
        a.len() == 2 && a.values().map(BTreeSet::len).sum::<usize>() == 4
    });
    assert!(
        split.is_ok(),
        "not split over 2 connections: {:?}",
        assignments.get()
    );
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .build()
        .unwrap();
    let messages = (0..2_000)
        .map(|i| {
            Message::new(topic.as_str(), format!("m{i}"))
                .key(format!("k{}", i % 50))
                .partition(i % 4)
        })
        .collect();
    producer.produce_many_sync(messages).unwrap();
    producer.close().unwrap();
    let all = wait_until(Duration::from_secs(90), || {
        log.keys
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 2_000
    });
    let processed: usize = log.keys.lock().unwrap().values().map(Vec::len).sum();
    assert!(all.is_ok(), "{processed} of 2000 processed");
    running.stop_blocking().unwrap();
    let keys = log.keys.lock().unwrap();
    assert_eq!(processed, 2_000, "processed more than once");
    for (key, offsets) in keys.iter() {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        assert_eq!(*offsets, sorted, "key {key} out of order");
    }
    let most = log.running.lock().unwrap().clone();
    println!("multiplexing 2 × virtual partitions 5: most jobs at once per partition {most:?}");
    assert!(
        most.values().any(|(_, m)| *m > 1),
        "no partition ran virtual partitions in parallel: {most:?}"
    );
    assert_eq!(log.partitions.lock().unwrap().len(), 4);
    // Each connection held partitions (their assignment when the app stopped is gone: the
    // events recorded both).
    let seen: BTreeSet<String> = assignments.0.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        seen,
        ["events#0".to_owned(), "events#1".to_owned()]
            .into_iter()
            .collect(),
        "assignments seen: {seen:?}"
    );
}
