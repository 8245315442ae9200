//! Virtual partitions through the consumer harness (no broker): splitting, virtual offsets,
//! collapse, dead letters, contracts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use karafka_consumer::harness::{Harness, TestConsumer};
use karafka_consumer::payload::Raw;
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_core::instrumentation::{Event, Monitor};
use karafka_pro::{Distribution, VirtualPartitions, VirtualPartitionsTopic};
use karafka_producer::Message;

/// What a consumer saw: (virtual partition id, collapsed, key, offset), in processing order.
type Seen = Arc<Mutex<Vec<(usize, bool, String, i64)>>>;

/// Records every message, marks each; fails on offsets in `fail_once` the first time they
/// are seen, and always on `poison`.
struct Recorder {
    seen: Seen,
    fail_once: Arc<Mutex<Vec<i64>>>,
    poison: Option<i64>,
    marks: Arc<Mutex<Vec<(i64, bool)>>>,
    instance: usize,
    instances: Arc<Mutex<HashMap<usize, Vec<usize>>>>,
}

impl Consumer for Recorder {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let vp = ctx.virtual_partition().expect("a virtual partition");
        self.instances
            .lock()
            .unwrap()
            .entry(vp.id)
            .or_default()
            .push(self.instance);
        for m in ctx.messages() {
            let key = m.key_str().unwrap_or_default().to_owned();
            if self.poison == Some(m.offset()) {
                return Err(format!("poison at {}", m.offset()).into());
            }
            {
                let mut fail = self.fail_once.lock().unwrap();
                if let Some(i) = fail.iter().position(|&o| o == m.offset()) {
                    fail.remove(i);
                    return Err(format!("failing once at {}", m.offset()).into());
                }
            }
            self.seen
                .lock()
                .unwrap()
                .push((vp.id, vp.collapsed, key, m.offset()));
            let marked = ctx.mark_as_consumed(m);
            self.marks.lock().unwrap().push((m.offset(), marked));
        }
        Ok(())
    }
}

struct Setup {
    seen: Seen,
    fail_once: Arc<Mutex<Vec<i64>>>,
    marks: Arc<Mutex<Vec<(i64, bool)>>>,
    instances: Arc<Mutex<HashMap<usize, Vec<usize>>>>,
}

fn app(
    vp: VirtualPartitions<String>,
    poison: Option<i64>,
    dlq: Option<DeadLetterQueue>,
    monitor: Monitor,
) -> (App, Setup) {
    let setup = Setup {
        seen: Arc::default(),
        fail_once: Arc::default(),
        marks: Arc::default(),
        instances: Arc::default(),
    };
    let (seen, fail_once, marks, instances) = (
        setup.seen.clone(),
        setup.fail_once.clone(),
        setup.marks.clone(),
        setup.instances.clone(),
    );
    let made = Arc::new(AtomicUsize::new(0));
    let app = App::builder()
        .kafka("bootstrap.servers", "unused:9092")
        .concurrency(4)
        .pause_timeout(std::time::Duration::from_millis(1))
        .monitor(monitor)
        .topic("orders", move |t| {
            let t = t
                .consumer(move || Recorder {
                    seen: seen.clone(),
                    fail_once: fail_once.clone(),
                    poison,
                    marks: marks.clone(),
                    instance: made.fetch_add(1, Ordering::Relaxed),
                    instances: instances.clone(),
                })
                .max_messages(1000)
                .virtual_partitions(vp);
            match dlq {
                Some(dlq) => t.dead_letter_queue(dlq),
                None => t,
            }
        })
        .build()
        .unwrap();
    (app, setup)
}

fn by_key() -> VirtualPartitions<String> {
    VirtualPartitions::new(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
}

/// Keys by a fixed table (`k<n>` → n): the test knows which virtual partition each key
/// lands in.
fn by_key_number(max: usize) -> VirtualPartitions<String> {
    by_key()
        .max_partitions(max)
        .reducer(|key: &String, _| key.trim_start_matches('k').parse::<usize>().unwrap_or(0))
}

fn produce(orders: &mut TestConsumer, keys: &[&str]) {
    for key in keys {
        orders.produce_message(Message::new("orders", "x").key(key.to_string()));
    }
}

#[tokio::test]
async fn a_batch_splits_by_key_keeping_each_keys_order_and_instances_persist() {
    let (app, setup) = app(by_key().max_partitions(4), None, None, Monitor::new());
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("key-{}", i % 10)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    produce(&mut orders, &keys);
    let outcomes = orders.consume().await;
    assert!(outcomes.len() > 1 && outcomes.len() <= 4, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.error.is_none()));
    assert_eq!(orders.marked(0), Some(100));
    let seen = setup.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 100);
    let mut per_key: HashMap<String, (usize, Vec<i64>)> = HashMap::new();
    for (vp, collapsed, key, offset) in &seen {
        assert!(!collapsed);
        let entry = per_key.entry(key.clone()).or_insert((*vp, Vec::new()));
        assert_eq!(entry.0, *vp, "key {key} in two virtual partitions");
        entry.1.push(*offset);
    }
    for (key, (_, offsets)) in &per_key {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{key}: {offsets:?}"
        );
    }
    // A second batch: the same keys land in the same virtual partitions, on the same
    // instances (Consistent, the default).
    produce(&mut orders, &keys);
    orders.consume().await;
    assert_eq!(orders.marked(0), Some(200));
    let instances = setup.instances.lock().unwrap().clone();
    for (vp, made) in &instances {
        assert_eq!(made.len(), 2, "virtual partition {vp} ran twice");
        assert_eq!(made[0], made[1], "virtual partition {vp} kept its instance");
    }
}

#[tokio::test]
async fn a_failure_collapses_the_retry_which_skips_what_was_marked_then_splitting_resumes() {
    let (app, setup) = app(by_key_number(2), None, None, Monitor::new());
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    // k0 at even offsets, k1 at odd ones; k1 fails once at offset 5.
    let keys: Vec<&str> = (0..10)
        .map(|i| if i % 2 == 0 { "k0" } else { "k1" })
        .collect();
    produce(&mut orders, &keys);
    setup.fail_once.lock().unwrap().push(5);
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes.iter().filter(|o| o.error.is_some()).count(), 1);
    // Marked: all of k0 (0..=8 even), k1's 1 and 3: the unbroken run is 0..=4.
    assert_eq!(orders.marked(0), Some(5), "nothing stored past offset 5");
    assert!(
        orders
            .paused(0)
            .is_some_and(|p| p.retry && p.resume_from == 5)
    );
    setup.seen.lock().unwrap().clear();
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let vp = outcomes[0].virtual_partition.unwrap();
    assert!(vp.collapsed && vp.id == 0 && vp.groups == 1, "{vp:?}");
    assert_eq!(outcomes[0].attempt, 2);
    let seen: Vec<i64> = setup.seen.lock().unwrap().iter().map(|s| s.3).collect();
    assert_eq!(seen, vec![5, 7, 9], "only k1's unmarked messages, in order");
    assert_eq!(orders.marked(0), Some(10));
    // Past the failed batch: split again.
    produce(&mut orders, &keys);
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes
            .iter()
            .all(|o| !o.virtual_partition.unwrap().collapsed)
    );
    assert_eq!(orders.marked(0), Some(20));
}

#[tokio::test]
async fn ten_virtual_partitions_failing_once_report_ten_errors_and_retry_once_collapsed() {
    let errors = Arc::new(AtomicUsize::new(0));
    let monitor = Monitor::new();
    let counted = errors.clone();
    monitor.subscribe_fn(move |e| {
        if let Event::ErrorOccurred(e) = e {
            if e.kind.as_str() == "consumer.consume.error" {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (app, setup) = app(by_key_number(10), None, None, monitor);
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("k{}", i % 10)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    produce(&mut orders, &keys);
    // Each key fails once, at its last message.
    setup.fail_once.lock().unwrap().extend(40..50);
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 10);
    assert_eq!(outcomes.iter().filter(|o| o.error.is_some()).count(), 10);
    assert_eq!(errors.load(Ordering::Relaxed), 10);
    assert_eq!(orders.marked(0), Some(40));
    setup.seen.lock().unwrap().clear();
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].virtual_partition.unwrap().collapsed);
    let seen: Vec<i64> = setup.seen.lock().unwrap().iter().map(|s| s.3).collect();
    assert_eq!(seen, (40..50).collect::<Vec<_>>(), "no offset skipped");
    assert_eq!(orders.marked(0), Some(50));
    assert_eq!(errors.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn marking_past_an_unprocessed_message_returns_true_and_stores_nothing() {
    let (app, setup) = app(by_key_number(2), None, None, Monitor::new());
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    // k1 holds the lowest offset and fails; k0 marks everything of its own.
    produce(&mut orders, &["k1", "k0", "k0", "k0"]);
    setup.fail_once.lock().unwrap().push(0);
    orders.consume().await;
    let marks = setup.marks.lock().unwrap().clone();
    assert_eq!(marks, vec![(1, true), (2, true), (3, true)]);
    assert_eq!(orders.marked(0), None, "offset 0 was never processed");
    // The collapsed retry processes only offset 0.
    setup.seen.lock().unwrap().clear();
    orders.consume().await;
    let seen: Vec<i64> = setup.seen.lock().unwrap().iter().map(|s| s.3).collect();
    assert_eq!(seen, vec![0]);
    assert_eq!(orders.marked(0), Some(4));
}

#[tokio::test]
async fn a_dead_letter_goes_out_only_from_the_collapsed_retry() {
    let dlq = DeadLetterQueue::new("orders-dlq").max_retries(1);
    let (app, setup) = app(by_key_number(2), Some(3), Some(dlq), Monitor::new());
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    let keys: Vec<&str> = (0..8)
        .map(|i| if i % 2 == 0 { "k0" } else { "k1" })
        .collect();
    produce(&mut orders, &keys);
    orders.consume().await;
    assert!(
        harness.produced("orders-dlq").is_empty(),
        "not from a virtual partition"
    );
    assert_eq!(orders.marked(0), Some(3));
    // The collapsed retry fails on 3 again: past max_retries, 3 goes to the DLQ.
    let outcomes = orders.consume().await;
    assert!(outcomes[0].virtual_partition.unwrap().collapsed);
    let dead = harness.produced("orders-dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(orders.marked(0), Some(4));
    // The rest flows (still collapsed until past offset 7), nothing processed twice.
    setup.seen.lock().unwrap().clear();
    orders.consume().await;
    let seen: Vec<i64> = setup.seen.lock().unwrap().iter().map(|s| s.3).collect();
    assert_eq!(seen, vec![5, 7], "4 and 6 were marked in the split batch");
    assert_eq!(orders.marked(0), Some(8));
}

#[tokio::test]
async fn a_failing_partitioner_processes_the_batch_as_one_group_and_says_so() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let monitor = Monitor::new();
    let seen_events = events.clone();
    monitor.subscribe_fn(move |e| {
        if let Event::ErrorOccurred(e) = e {
            seen_events.lock().unwrap().push(e.kind.as_str());
        }
    });
    let vp = VirtualPartitions::try_new(|m| {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        if key == "bad" {
            Err("no tenant")
        } else {
            Ok(key)
        }
    })
    .max_partitions(4);
    let (app, setup) = app(vp, None, None, monitor);
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    produce(&mut orders, &["a", "b", "bad", "c"]);
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 1);
    let vp = outcomes[0].virtual_partition.unwrap();
    assert_eq!((vp.id, vp.groups, vp.collapsed), (0, 1, false));
    assert_eq!(setup.seen.lock().unwrap().len(), 4);
    assert_eq!(orders.marked(0), Some(4));
    assert_eq!(
        *events.lock().unwrap(),
        vec!["virtual_partitions.partitioner.error"]
    );
}

#[tokio::test]
async fn balanced_distribution_packs_key_groups_evenly() {
    let (app, setup) = app(
        by_key()
            .max_partitions(3)
            .distribution(Distribution::Balanced),
        None,
        None,
        Monitor::new(),
    );
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    // a: 6, b: 3, c: 3, d: 2, e: 1 → loads 6 / 5 (b, d) / 4 (c, e).
    let keys = [
        "a", "a", "b", "a", "c", "a", "b", "a", "c", "d", "a", "b", "c", "d", "e",
    ];
    produce(&mut orders, &keys);
    let outcomes = orders.consume().await;
    assert_eq!(outcomes.len(), 3);
    let seen = setup.seen.lock().unwrap().clone();
    let mut load = [0usize; 3];
    for (vp, _, _, _) in &seen {
        load[*vp] += 1;
    }
    assert_eq!(load, [6, 5, 4]);
    assert_eq!(orders.marked(0), Some(15));
}

struct Collapser;

impl Consumer for Collapser {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if ctx.messages().first().is_some_and(|m| m.offset() == 0) {
            ctx.collapse_until(6);
        }
        Ok(())
    }
}

#[tokio::test]
async fn collapse_until_runs_later_batches_collapsed_until_the_offset() {
    let app = App::builder()
        .kafka("bootstrap.servers", "unused:9092")
        .topic("orders", |t| {
            t.consumer(|| Collapser)
                .max_messages(2)
                .virtual_partitions(by_key_number(2))
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    for i in 0..10 {
        orders.produce_message(Message::new("orders", "x").key(format!("k{}", i % 2)));
    }
    let mut shapes = Vec::new();
    for _ in 0..5 {
        let outcomes = orders.consume().await;
        shapes.push((
            outcomes.len(),
            outcomes
                .iter()
                .all(|o| o.virtual_partition.unwrap().collapsed),
        ));
    }
    assert_eq!(
        shapes,
        vec![
            (2, false), // 0, 1: split; asks to collapse until 6
            (1, true),  // 2, 3
            (1, true),  // 4, 5
            (2, false), // 6, 7: past it
            (2, false),
        ]
    );
    assert_eq!(orders.marked(0), Some(10));
}

#[test]
fn contracts_refuse_zero_max_partitions_and_a_dlq_without_a_collapsed_retry() {
    let err = App::builder()
        .kafka("bootstrap.servers", "unused:9092")
        .topic("orders", |t| {
            t.consumer(|| Collapser)
                .virtual_partitions(by_key().max_partitions(0))
                .dead_letter_queue(DeadLetterQueue::new("dlq").max_retries(0))
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("consumer_groups.karafka.topics.orders.virtual_partitions.max_partitions")
            && err.contains("must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("consumer_groups.karafka.topics.orders.dead_letter_queue.max_retries")
            && err.contains("set max_retries to 1 or more"),
        "{err}"
    );
}

/// Each virtual partition pauses at its first offset; records what it processed and whether
/// a sibling had failed.
struct Pauser {
    seen: Arc<Mutex<Vec<i64>>>,
    shutdowns: Arc<Mutex<Vec<usize>>>,
    failing_seen: Arc<Mutex<Vec<(usize, bool)>>>,
    fail: bool,
    id: Option<usize>,
}

impl Consumer for Pauser {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let vp = ctx.virtual_partition().unwrap();
        self.id = Some(vp.id);
        self.failing_seen
            .lock()
            .unwrap()
            .push((vp.id, ctx.is_failing()));
        if self.fail && !vp.collapsed && vp.id == 0 {
            return Err("group 0 fails".into());
        }
        for m in ctx.messages() {
            self.seen.lock().unwrap().push(m.offset());
        }
        if !self.fail && !vp.collapsed {
            let first = ctx.messages().first().unwrap().offset();
            ctx.pause(first, std::time::Duration::from_secs(60));
        }
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        self.shutdowns
            .lock()
            .unwrap()
            .push(self.id.unwrap_or(usize::MAX));
        Ok(())
    }
}

type PauserLogs = (
    Arc<Mutex<Vec<i64>>>,
    Arc<Mutex<Vec<usize>>>,
    Arc<Mutex<Vec<(usize, bool)>>>,
);

fn pauser_app(fail: bool) -> (App, PauserLogs) {
    let logs: PauserLogs = (Arc::default(), Arc::default(), Arc::default());
    let (seen, shutdowns, failing) = logs.clone();
    let app = App::builder()
        .kafka("bootstrap.servers", "unused:9092")
        .topic("orders", move |t| {
            t.consumer(move || Pauser {
                seen: seen.clone(),
                shutdowns: shutdowns.clone(),
                failing_seen: failing.clone(),
                fail,
                id: None,
            })
            .max_messages(100)
            .virtual_partitions(by_key_number(3))
        })
        .build()
        .unwrap();
    (app, logs)
}

#[tokio::test]
async fn several_virtual_partitions_pausing_at_once_the_last_pause_wins() {
    let (app, (seen, _, _)) = pauser_app(false);
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    // k0: 0, 3, 6; k1: 1, 4, 7; k2: 2, 5, 8. The groups run 0, 1, 2 (in the harness, one
    // after the other): they pause at 0, then 1, then 2.
    let keys: Vec<&str> = (0..9).map(|i| ["k0", "k1", "k2"][i % 3]).collect();
    produce(&mut orders, &keys);
    orders.consume().await;
    let pause = orders.paused(0).expect("paused");
    assert_eq!(pause.resume_from, 2, "the last pause wins");
    assert!(!pause.retry);
    assert_eq!(
        orders.marked(0),
        None,
        "a consumer that pauses marks itself"
    );
    // Nothing below the pause's offset is processed again after it.
    seen.lock().unwrap().clear();
    orders.resume(0);
    orders.consume().await;
    let again = seen.lock().unwrap().clone();
    assert!(again.iter().all(|&o| o >= 2), "{again:?}");
}

#[tokio::test]
async fn siblings_see_the_batch_failing_and_shutdown_during_a_collapse_runs_once_per_instance() {
    let (app, (_, shutdowns, failing)) = pauser_app(true);
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    let keys: Vec<&str> = (0..9).map(|i| ["k0", "k1", "k2"][i % 3]).collect();
    produce(&mut orders, &keys);
    orders.consume().await;
    // Group 0 failed first (the harness runs groups in id order): its siblings saw it.
    assert_eq!(
        *failing.lock().unwrap(),
        vec![(0, false), (1, true), (2, true)]
    );
    assert!(orders.paused(0).is_some_and(|p| p.retry));
    // Shut down while the batch waits for its collapsed retry.
    let errors = orders.shutdown().await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut ran = shutdowns.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(
        ran,
        vec![0, 1, 2],
        "shutdown once on each instance that consumed"
    );
}

/// Group 0 fails; group 1 sees the batch failing and stops at once, returning `Ok`.
struct Quitter {
    seen: Arc<Mutex<Vec<i64>>>,
}

impl Consumer for Quitter {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let vp = ctx.virtual_partition().unwrap();
        if !vp.collapsed && vp.id == 0 {
            return Err("group 0 fails".into());
        }
        if ctx.is_failing() {
            return Ok(()); // stops early: nothing processed, nothing marked
        }
        for m in ctx.messages() {
            self.seen.lock().unwrap().push(m.offset());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_group_stopping_early_on_a_failing_batch_leaves_its_messages_to_the_retry() {
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let s = seen.clone();
    let app = App::builder()
        .kafka("bootstrap.servers", "unused:9092")
        .topic("orders", move |t| {
            t.consumer(move || Quitter { seen: s.clone() })
                .virtual_partitions(by_key_number(2))
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut orders = harness.consumer_for("orders").unwrap();
    let keys: Vec<&str> = (0..6)
        .map(|i| if i % 2 == 0 { "k0" } else { "k1" })
        .collect();
    produce(&mut orders, &keys);
    orders.consume().await;
    assert_eq!(
        orders.marked(0),
        None,
        "group 1 stopped early: nothing is processed"
    );
    orders.consume().await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 1, 2, 3, 4, 5],
        "all of it, collapsed"
    );
    assert_eq!(orders.marked(0), Some(6));
}
