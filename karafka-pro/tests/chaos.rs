//! The chaos suite: real member processes (the `chaos_member` example) consume a topic while
//! messages flow and faults are injected; every processed message is recorded durably before
//! `consume` returns, and [`karafka_testing::chaos`] counts: nothing produced may be lost, no
//! committed offset may run ahead of durable processing. Each scenario prints its row of the
//! table (and `KARAFKA_CHAOS_REPORT=FILE` appends it there).
//!
//! Short by default (seconds to a minute each, in CI); `KARAFKA_CHAOS=long` runs the long
//! form (1M messages, more faults).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use karafka_producer::{Message, Producer};
use karafka_testing::chaos::{ChaosReport, ChaosRun};
use karafka_testing::{Capability, TestBroker, Xorshift, unique_group, unique_topic};

const PARTITIONS: i32 = 8;
const KEYS: usize = 97;

fn long() -> bool {
    std::env::var("KARAFKA_CHAOS").is_ok_and(|v| v == "long")
}

/// Prints the row (with the header) and appends it to `KARAFKA_CHAOS_REPORT` when set.
fn publish(report: &ChaosReport, notes: &str) {
    eprintln!("{}\n{report}\n{notes}", ChaosReport::header());
    if let Ok(path) = std::env::var("KARAFKA_CHAOS_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{report}");
            if !notes.is_empty() {
                let _ = writeln!(f, "<!-- {notes} -->");
            }
        }
    }
}

/// A scenario's setup: a topic, a group, a directory for the records, the member binary.
struct Scene {
    broker: TestBroker,
    topic: String,
    group: String,
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<(String, u32, Child)>,
    env: Vec<(String, String)>,
}

impl Scene {
    fn new(broker: TestBroker, name: &str) -> Scene {
        let binary = karafka_testing::example_binary("karafka-pro", "chaos_member").unwrap();
        let (topic, group) = (unique_topic(name), unique_group(name));
        broker.create_topic(&topic, PARTITIONS).unwrap();
        let dir = std::env::temp_dir().join(karafka_testing::unique_name(name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = Vec::new();
        if !broker.has(Capability::CooperativeRebalances) {
            // Tansu leaves a member joining a running cooperative group unanswered.
            env.push(("ASSIGNMENT".into(), "range".into()));
        }
        Scene {
            broker,
            topic,
            group,
            dir,
            binary,
            members: Vec::new(),
            env,
        }
    }

    fn run(&self) -> ChaosRun {
        ChaosRun::new(
            &self.dir,
            self.broker.committed_offsets(&self.group).unwrap(),
            &self.topic,
            PARTITIONS,
        )
    }

    /// The broker's kind, and the assignment when it is not the default.
    fn broker_name(&self) -> String {
        match self.env.iter().find(|(k, _)| k == "ASSIGNMENT") {
            Some((_, a)) => format!("{} ({a})", self.broker.kind().as_str()),
            None => self.broker.kind().as_str().into(),
        }
    }

    /// Starts member `name` (run `run`).
    fn spawn(&mut self, name: &str, run: u32) {
        let child = Command::new(&self.binary)
            .env("KARAFKA_BROKERS", self.broker.bootstrap_servers())
            .env("TOPIC", &self.topic)
            .env("GROUP", &self.group)
            .env("OUTPUT", &self.dir)
            .env("MEMBER", name)
            .env("RUN", run.to_string())
            .env("RUST_LOG", "off")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .expect("start the chaos member");
        self.members.push((name.into(), run, child));
    }

    /// Kills member `index` with SIGKILL and starts it again as the next run; returns what
    /// the killed run had processed but not committed (see [`ChaosRun::uncommitted_in`]).
    fn kill_and_restart(&mut self, index: usize, watch: &ChaosRun) -> usize {
        let (name, run, mut child) = self.members.remove(index);
        let _ = child.kill();
        let _ = child.wait();
        let uncommitted = watch
            .uncommitted_in(&self.dir.join(format!("{name}-{run}.log")))
            .unwrap();
        self.spawn(&name, run + 1);
        uncommitted
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("KARAFKA_CHAOS_KEEP").is_some() {
            eprintln!("records kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Produces `total` messages (keyed, round-robin over the partitions) at about `rate` a
/// second in a thread, sending each delivered batch's (partition, offset) pairs to the test.
/// Panics (failing the test) when a message is neither delivered nor given back.
struct Feed {
    reports: mpsc::Receiver<Vec<(i32, i64)>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    fn start(broker: &TestBroker, topic: &str, total: usize, rate: usize) -> Feed {
        let producer = Producer::builder()
            .kafka_settings(&broker.producer_settings())
            .kafka("linger.ms", "5")
            .build()
            .unwrap();
        let (tx, reports) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let topic: Arc<str> = topic.into();
        let thread = std::thread::spawn(move || {
            let chunk = (rate / 20).max(1);
            let started = Instant::now();
            let mut sent = 0;
            while sent < total {
                let n = chunk.min(total - sent);
                let batch: Vec<Message> = (sent..sent + n)
                    .map(|i| {
                        Message::new(topic.clone(), i.to_string())
                            .key(format!("k{}", i % KEYS))
                            .partition(i as i32 % PARTITIONS)
                    })
                    .collect();
                let delivered = producer.produce_many_sync(batch).unwrap();
                assert_eq!(delivered.len(), n, "a message of the feed vanished");
                let _ = tx.send(delivered.iter().map(|r| (r.partition, r.offset)).collect());
                sent += n;
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            producer.close().unwrap();
            finished.store(true, Ordering::Release);
        });
        Feed {
            reports,
            done,
            thread: Some(thread),
        }
    }

    /// Hands what was delivered so far to `run`; true once everything was.
    fn drain_into(&mut self, run: &mut ChaosRun) -> bool {
        for batch in self.reports.try_iter() {
            for (p, o) in batch {
                run.produced(p, o);
            }
        }
        let done = self.done.load(Ordering::Acquire);
        if done && let Some(thread) = self.thread.take() {
            thread.join().expect("the feed failed");
            for batch in self.reports.try_iter() {
                for (p, o) in batch {
                    run.produced(p, o);
                }
            }
        }
        done && self.thread.is_none()
    }

    fn finished(&self) -> bool {
        self.thread.is_none()
    }
}

/// Ticks `run` (taking in the feed) until `done` or `timeout`; panics with the state on the
/// timeout, and when the feed thread failed.
fn drive(
    run: &mut ChaosRun,
    feed: &mut Feed,
    timeout: Duration,
    mut done: impl FnMut(&ChaosRun, bool) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let fed = feed.drain_into(run);
        run.tick().unwrap();
        if done(run, fed) {
            return;
        }
        if let Some(thread) = &feed.thread
            && thread.is_finished()
            && !feed.done.load(Ordering::Acquire)
        {
            feed.thread.take().unwrap().join().expect("the feed failed");
        }
        assert!(
            Instant::now() < deadline,
            "not done within {timeout:?}: {} of {} delivered messages processed (feed finished: {})",
            run.ledger().unique(),
            run.produced_total(),
            feed.finished()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Scenario 1: two members consume while messages flow; one of them, picked at random, is
/// killed with SIGKILL at random moments and restarted, five times (ten in the long form).
#[test]
fn kill_9_of_members_while_messages_flow_loses_nothing() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (total, rate, kills) = if long() {
        (1_000_000, 30_000, 10)
    } else {
        (40_000, 2_500, 5)
    };
    let commit_interval_ms = 1000;
    let mut scene = Scene::new(broker, "chaos-kill9");
    scene.env.push(("DELAY_MS".into(), "2".into()));
    scene
        .env
        .push(("COMMIT_INTERVAL_MS".into(), commit_interval_ms.to_string()));
    let mut run = scene.run();
    let mut feed = Feed::start(&scene.broker, &scene.topic, total, rate);
    scene.spawn("a", 0);
    scene.spawn("b", 0);
    let mut random = Xorshift::from_clock();
    eprintln!("chaos kill -9: seed {}", random.seed());
    let started = Instant::now();
    let mut uncommitted = 0;
    // At random moments while the messages flow: every 1.5 to 4.5 s (the feed lasts about
    // 3 s per kill).
    for _ in 0..kills {
        let wait = Duration::from_millis(1500 + random.below(3000));
        let until = Instant::now() + wait;
        drive(
            &mut run,
            &mut feed,
            wait + Duration::from_secs(5),
            |_, _| Instant::now() >= until,
        );
        let victim = random.below(scene.members.len() as u64) as usize;
        uncommitted += scene.kill_and_restart(victim, &run);
    }
    run.fault_ended();
    drive(&mut run, &mut feed, Duration::from_secs(240), |r, fed| {
        fed && r.all_processed()
    });
    let elapsed = started.elapsed();
    let report = run.report(
        &format!("kill -9 x{kills}, 2 members, {total} messages"),
        &scene.broker_name(),
    );
    let throughput = report.processed as f64 / elapsed.as_secs_f64();
    let per_commit_interval = throughput * commit_interval_ms as f64 / 1000.0;
    let per_kill = report.duplicates as f64 / kills as f64;
    publish(
        &report,
        &format!(
            "processed but not committed at the kills {uncommitted}; \
             duplicates per kill {per_kill:.0} = {:.2} of a commit interval's throughput \
             ({per_commit_interval:.0} messages in {commit_interval_ms} ms at {throughput:.0} msg/s \
             processed on average; fed at {rate} msg/s: {:.2} of {} messages)",
            per_kill / per_commit_interval.max(1.0),
            per_kill / (rate as f64 * commit_interval_ms as f64 / 1000.0),
            rate * commit_interval_ms / 1000
        ),
    );
    report.sound().unwrap();
    assert_eq!(report.produced, total, "the feed delivered every message");
    // Duplicates come only from work a killed member processed but had not committed.
    assert!(
        report.duplicates <= uncommitted,
        "{} duplicates, but the killed runs had only {uncommitted} uncommitted messages",
        report.duplicates
    );
}
