//! Swarm mode with real processes: the `swarm` example run as `my-app swarm` (a supervisor
//! and its nodes) against the test broker, with short timeouts. Each test reads the swarm's
//! events (every supervisor and node event, with its unix time) and the records of what each
//! node processed from files the example writes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// One swarm event: when, its name, and its summary (`swarm.manager.after_fork node 1 (pid
/// 123)`).
#[derive(Debug, Clone)]
struct Logged {
    at: u128,
    name: String,
    text: String,
}

impl Logged {
    /// The node id in the summary.
    fn node(&self) -> Option<usize> {
        let mut words = self.text.split_whitespace();
        words.find(|w| *w == "node")?;
        words.next()?.trim_end_matches(':').parse().ok()
    }

    /// The pid in the summary.
    fn pid(&self) -> Option<u32> {
        let mut words = self.text.split_whitespace();
        words.find(|w| *w == "(pid")?;
        words.next()?.trim_end_matches([')', ':']).parse().ok()
    }
}

/// At most this many swarms run at once (each is 2 to 4 processes; the tests check timings
/// on 2 cores).
const AT_ONCE: usize = 3;

static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// A place among the [`AT_ONCE`] swarms, given back when dropped.
struct Permit;

impl Permit {
    fn take() -> Permit {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= AT_ONCE {
            running = FREED.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// A running `swarm` and its files.
struct Swarm {
    _permit: Permit,
    child: Child,
    dir: tempdir::Dir,
    topic: String,
    group: String,
    partitions: i32,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed when dropped.
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "karafka-swarm-{name}-{}-{}",
                std::process::id(),
                super::now_ms()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("swarm files kept in {}", self.0.display());
            } else {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

impl Swarm {
    fn start(broker: &TestBroker, name: &str, partitions: i32, env: &[(&str, String)]) -> Swarm {
        let binary = karafka_testing::example_binary("karafka-pro", "swarm").unwrap();
        let permit = Permit::take();
        let (topic, group) = (unique_topic(name), unique_group(name));
        broker.create_topic(&topic, partitions).unwrap();
        let dir = tempdir::Dir::new(name);
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(binary);
        command
            .arg("swarm")
            .env("KARAFKA_BROKERS", broker.bootstrap_servers())
            .env("TOPIC", &topic)
            .env("GROUP", &group)
            .env("OUTPUT", dir.path().join("records.log"))
            .env("EVENTS", dir.path().join("events.log"))
            .env("RUST_LOG", "warn,karafka=info")
            .env_remove(karafka_pro::swarm::NODE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        // Its own process group, like a service's: a signal to the group reaches only the
        // supervisor (its nodes have groups of their own).
        command.process_group(0);
        let child = command.spawn().unwrap();
        Swarm {
            _permit: permit,
            child,
            dir,
            topic,
            group,
            partitions,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn events(&self) -> Vec<Logged> {
        std::fs::read_to_string(self.dir.path().join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                Some(Logged {
                    at: parts.next()?.parse().ok()?,
                    name: parts.next()?.to_owned(),
                    text: parts.next().unwrap_or("").to_owned(),
                })
            })
            .collect()
    }

    fn named(&self, name: &str) -> Vec<Logged> {
        self.events()
            .into_iter()
            .filter(|e| e.name == name)
            .collect()
    }

    /// `(node, pid, partition, offset, unix ms)` of every processed message.
    fn records(&self) -> Vec<(String, u32, i32, i64, u128)> {
        std::fs::read_to_string(self.dir.path().join("records.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split(' ');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// The pid of node `node`'s latest start.
    fn node_pid(&self, node: usize) -> Option<u32> {
        self.named("swarm.manager.after_fork")
            .iter()
            .rev()
            .find(|e| e.node() == Some(node))
            .and_then(Logged::pid)
    }

    fn wait_started(&self, nodes: usize) {
        let ok = wait_until(Duration::from_secs(30), || {
            (0..nodes).all(|n| self.node_pid(n).is_some())
        });
        assert!(ok.is_ok(), "nodes did not start:\n{}", self.log());
    }

    fn signal(&self, signal: i32) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the supervisor's exit code.
    fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let mut code = None;
        let _ = wait_until(deadline, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = Some(status.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        code
    }

    fn log(&self) -> String {
        let events =
            std::fs::read_to_string(self.dir.path().join("events.log")).unwrap_or_default();
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        format!(
            "events:\n{events}\nstderr (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn produce(&self, broker: &TestBroker, from: usize, count: usize) {
        // A linger long enough that one call's messages go out as one message set (the
        // embedded cluster answers a fetch with one set a partition: a set split in two makes
        // two batches).
        let producer = Producer::builder()
            .kafka_settings(&broker.producer_settings())
            .kafka("linger.ms", "100")
            .build()
            .unwrap();
        let batch: Vec<Message> = (from..from + count)
            .map(|i| {
                Message::new(self.topic.as_str(), i.to_string())
                    .partition(i as i32 % self.partitions)
            })
            .collect();
        let reports = producer.produce_many_sync(batch).unwrap();
        assert_eq!(reports.len(), count);
    }

    /// The `(partition, offset)`s processed.
    fn processed(&self) -> BTreeSet<(i32, i64)> {
        self.records().iter().map(|r| (r.2, r.3)).collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Nodes of a killed supervisor stop on their own (parent-death signal); make sure.
        for e in self.named("swarm.manager.after_fork") {
            if let Some(pid) = e.pid() {
                if process_alive(pid) && process_parent(pid) == Some(self.pid()) {
                    signal_pid(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn signal_pid(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn signal_pid_group(group: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} -- -{group} failed");
}

/// `/proc/<pid>/stat`'s state and parent, when the process exists.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command is in parentheses and may hold spaces: read after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

fn process_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn process_parent(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, parent)| parent)
}

/// The zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(state, p)| state == 'Z' && p == parent))
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn ms(v: u64) -> String {
    v.to_string()
}

#[test]
fn a_hung_node_is_terminated_then_killed_and_restarted() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let swarm = Swarm::start(
        &broker,
        "swarm-hang",
        2,
        &[
            ("NODES", "2".into()),
            ("REPORT_TIMEOUT_MS", ms(3000)),
            ("REPORT_INTERVAL_MS", ms(500)),
            ("SHUTDOWN_TIMEOUT_MS", ms(2000)),
            ("MAX_WAIT_MS", ms(500)),
        ],
    );
    swarm.wait_started(2);
    // Both nodes report before their first poll.
    wait_until(Duration::from_secs(20), || {
        let reported: BTreeSet<_> = swarm
            .named("swarm.node.reported")
            .iter()
            .filter_map(Logged::node)
            .collect();
        reported.len() == 2
    })
    .unwrap();
    let hung = swarm.node_pid(0).unwrap();
    let other = swarm.node_pid(1).unwrap();
    let stopped_at = now_ms();
    signal_pid(hung, libc::SIGSTOP);
    let restarted = wait_until(Duration::from_secs(25), || {
        swarm.node_pid(0).is_some_and(|pid| pid != hung)
    });
    assert!(
        restarted.is_ok(),
        "node 0 was not restarted:\n{}",
        swarm.log()
    );
    let events = swarm.events();
    let find = |name: &str, text: &str| {
        events
            .iter()
            .find(|e| {
                e.name == name && e.node() == Some(0) && e.at >= stopped_at && e.text.contains(text)
            })
            .unwrap_or_else(|| panic!("no {name} ({text}) for node 0:\n{}", swarm.log()))
            .at
    };
    let term = find("swarm.manager.stopping", "unresponsive");
    let kill = find("swarm.manager.terminating", "");
    let exited = find("swarm.manager.exited", "by signal 9");
    let again = find("swarm.manager.after_fork", "");
    // TERM after node_report_timeout (3 s) without a report (the last came up to 0.5 s
    // before the SIGSTOP), KILL shutdown_timeout (2 s) later, a new node 5 s after the death.
    let since = |a: u128, b: u128| b as i128 - a as i128;
    assert!(
        (1200..=4500).contains(&since(stopped_at, term)),
        "TERM {} ms after SIGSTOP",
        since(stopped_at, term)
    );
    assert!(
        (1900..=3200).contains(&since(term, kill)),
        "KILL {} ms after TERM",
        since(term, kill)
    );
    assert!(
        (4900..=6200).contains(&since(exited, again)),
        "restart {} ms after death",
        since(exited, again)
    );
    // The other node was never touched.
    println!(
        "hung node: SIGTERM {} ms after its SIGSTOP, SIGKILL {} ms after the SIGTERM, a new node \
         {} ms after its death",
        since(stopped_at, term),
        since(term, kill),
        since(exited, again)
    );
    assert_eq!(swarm.node_pid(1), Some(other));
    assert!(
        !events
            .iter()
            .any(|e| e.name == "swarm.manager.stopping" && e.node() == Some(1))
    );
}

#[test]
fn a_killed_node_is_replaced_within_six_seconds_and_nothing_is_lost() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let swarm = Swarm::start(
        &broker,
        "swarm-kill9",
        6,
        &[("NODES", "3".into()), ("MAX_WAIT_MS", ms(500))],
    );
    swarm.wait_started(3);
    // A steady stream to every partition for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streamer = {
        let (stop, produced) = (stop.clone(), produced.clone());
        let broker_settings = broker.producer_settings();
        let (topic, partitions) = (swarm.topic.clone(), swarm.partitions);
        std::thread::spawn(move || {
            let producer = Producer::builder()
                .kafka_settings(&broker_settings)
                .build()
                .unwrap();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let batch: Vec<Message> = (i..i + 12)
                    .map(|n| {
                        Message::new(topic.as_str(), n.to_string()).partition(n as i32 % partitions)
                    })
                    .collect();
                producer.produce_many_sync(batch).unwrap();
                i += 12;
                produced.store(i, std::sync::atomic::Ordering::Release);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Every node consumes before the kill.
    let all_consume = wait_until(Duration::from_secs(40), || {
        let nodes: BTreeSet<String> = swarm.records().into_iter().map(|r| r.0).collect();
        nodes.len() == 3
    });
    assert!(
        all_consume.is_ok(),
        "not every node consumed:\n{}",
        swarm.log()
    );
    let victim = swarm.node_pid(1).unwrap();
    let survivors = [swarm.node_pid(0).unwrap(), swarm.node_pid(2).unwrap()];
    let killed_at = now_ms();
    signal_pid(victim, libc::SIGKILL);
    let replaced = wait_until(Duration::from_secs(15), || {
        swarm.node_pid(1).is_some_and(|pid| pid != victim)
    });
    assert!(
        replaced.is_ok(),
        "node 1 was not replaced:\n{}",
        swarm.log()
    );
    let after_fork = swarm
        .named("swarm.manager.after_fork")
        .into_iter()
        .rfind(|e| e.node() == Some(1))
        .unwrap()
        .at;
    let took = after_fork - killed_at;
    assert!(
        (4900..=6000).contains(&took),
        "the new node 1 started {took} ms after the kill"
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Release);
    streamer.join().unwrap();
    let total = produced.load(std::sync::atomic::Ordering::Acquire);
    // Every produced message is processed (at least once), in the end.
    let expected: BTreeSet<(i32, i64)> = {
        // Partition i % partitions got messages in order: offsets 0.. per partition.
        let mut per: BTreeMap<i32, i64> = BTreeMap::new();
        for n in 0..total {
            *per.entry(n as i32 % swarm.partitions).or_default() += 1;
        }
        per.into_iter()
            .flat_map(|(p, count)| (0..count).map(move |o| (p, o)))
            .collect()
    };
    let all = wait_until(Duration::from_secs(60), || {
        swarm.processed().is_superset(&expected)
    });
    let missing: Vec<_> = expected
        .difference(&swarm.processed())
        .take(10)
        .cloned()
        .collect();
    assert!(
        all.is_ok(),
        "{} messages never processed, e.g. {missing:?}:\n{}",
        expected.len() - swarm.processed().len().min(expected.len()),
        swarm.log()
    );
    // The other nodes kept consuming while node 1 was down: each processed messages between
    // the kill and the replacement's start, and neither was restarted.
    let records = swarm.records();
    println!(
        "kill -9: a new node 1 {took} ms after the kill; {total} messages produced, all \
         processed ({} records: redelivered ones counted again)",
        records.len()
    );
    for pid in survivors {
        let during = records
            .iter()
            .filter(|r| r.1 == pid && r.4 > killed_at && r.4 < after_fork)
            .count();
        println!("kill -9: node pid {pid} processed {during} messages while node 1 was down");
        assert!(
            during > 0,
            "node pid {pid} processed nothing while node 1 was down:\n{}",
            swarm.log()
        );
    }
    assert_eq!(swarm.node_pid(0), Some(survivors[0]));
    assert_eq!(swarm.node_pid(2), Some(survivors[1]));
}

#[test]
fn a_node_over_its_memory_limit_is_recycled_gracefully() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let swarm = Swarm::start(
        &broker,
        "swarm-memory",
        2,
        &[
            ("NODES", "2".into()),
            ("REPORT_INTERVAL_MS", ms(500)),
            ("MEMORY_LIMIT_MB", "200".into()),
            ("LEAK_NODE", "1".into()),
            ("LEAK_MB", "300".into()),
            ("MAX_WAIT_MS", ms(500)),
        ],
    );
    swarm.wait_started(2);
    let first = swarm.node_pid(1).unwrap();
    let healthy = swarm.node_pid(0).unwrap();
    let recycled = wait_until(Duration::from_secs(30), || {
        swarm.node_pid(1).is_some_and(|pid| pid != first)
    });
    assert!(
        recycled.is_ok(),
        "node 1 was not recycled:\n{}",
        swarm.log()
    );
    let events = swarm.events();
    let of_first = |name: &str| {
        events
            .iter()
            .find(|e| e.name == name && e.pid() == Some(first))
            .unwrap_or_else(|| panic!("no {name} for pid {first}:\n{}", swarm.log()))
            .clone()
    };
    // It reported itself (status 3), got SIGTERM, stopped on its own (exit code 0: its work
    // committed, no SIGKILL), and was started again.
    assert!(
        of_first("swarm.manager.stopping")
            .text
            .contains("over_memory (status 3)")
    );
    assert!(
        of_first("swarm.manager.exited")
            .text
            .contains("with code 0"),
        "{}",
        swarm.log()
    );
    assert!(
        !events
            .iter()
            .any(|e| e.name == "swarm.manager.terminating" && e.pid() == Some(first))
    );
    // The node within its limit was never recycled.
    assert_eq!(swarm.node_pid(0), Some(healthy));
    let stopping = of_first("swarm.manager.stopping").at;
    println!(
        "memory: node 1 (300 MiB held, limit 200 MiB) reported over_memory {} ms after its \
         start, exited with code 0 {} ms after its SIGTERM",
        stopping - of_first("swarm.manager.after_fork").at,
        of_first("swarm.manager.exited").at - stopping
    );
}

fn long_consume(name: &str, consuming_ttl: Option<u64>) -> (Swarm, BTreeSet<u32>) {
    let broker = TestBroker::require(&[]).unwrap();
    let mut env = vec![
        ("NODES", "1".to_string()),
        ("REPORT_TIMEOUT_MS", ms(3000)),
        ("REPORT_INTERVAL_MS", ms(500)),
        ("SHUTDOWN_TIMEOUT_MS", ms(15000)),
        ("MAX_WAIT_MS", ms(500)),
        // The first batch takes 6 s: twice node_report_timeout.
        ("DELAY_MS", ms(6000)),
    ];
    if let Some(ttl) = consuming_ttl {
        env.push(("CONSUMING_TTL_MS", ms(ttl)));
    }
    let swarm = Swarm::start(&broker, name, 1, &env);
    swarm.produce(&broker, 0, 5);
    swarm.wait_started(1);
    let first = swarm.node_pid(0).unwrap();
    // A recycled node takes about 12 s (3 s to be stuck, the rest of its 6 s batch, the 5 s
    // restart delay): room for four of them.
    let done = wait_until(Duration::from_secs(60), || swarm.processed().len() == 5);
    assert!(
        done.is_ok(),
        "the slow batch was not processed (processed {:?}):\n{}",
        swarm.processed(),
        swarm.log()
    );
    let pids = swarm.records().iter().map(|r| r.1).collect();
    let _ = first;
    (swarm, pids)
}

#[test]
fn a_consume_longer_than_the_report_timeout_is_not_killed() {
    if TestBroker::require(&[]).is_none() {
        return;
    }
    let (swarm, pids) = long_consume("swarm-slow", None);
    // The node kept reporting while its 6 s batch ran (its listener loops): no TERM, and the
    // batch was processed by the first node.
    assert!(
        swarm.named("swarm.manager.stopping").is_empty(),
        "{}",
        swarm.log()
    );
    assert_eq!(pids.len(), 1);
    assert_eq!(pids.iter().next().copied(), swarm.node_pid(0));
    assert_eq!(swarm.named("swarm.manager.after_fork").len(), 1);
    // It reported all along, the slow first batch included: no gap near the report timeout.
    let started = swarm.named("swarm.manager.after_fork")[0].at;
    let ended = swarm.records().iter().map(|r| r.4).max().unwrap();
    let mut at: Vec<u128> = swarm
        .named("swarm.node.reported")
        .iter()
        .map(|e| e.at)
        .filter(|t| *t >= started && *t <= ended)
        .collect();
    at.insert(0, started);
    at.push(ended);
    let widest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    println!(
        "slow batch: {} ms from the node's start to its first batch's end, {} reports meanwhile, \
         at most {widest} ms apart (node_report_timeout 3000 ms)",
        ended - started,
        at.len() - 2
    );
    assert!(widest < 2000, "reports {widest} ms apart:\n{}", swarm.log());
}

#[test]
fn a_consume_longer_than_the_consuming_ttl_gets_its_node_recycled() {
    if TestBroker::require(&[]).is_none() {
        return;
    }
    let (swarm, _) = long_consume("swarm-ttl", Some(2000));
    let stopping = swarm.named("swarm.manager.stopping");
    assert!(
        stopping
            .iter()
            .any(|e| e.text.contains("consuming_stuck (status 2)")),
        "{}",
        swarm.log()
    );
}

#[test]
fn a_node_that_dies_at_once_restarts_every_five_seconds_and_leaks_nothing() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let mut swarm = Swarm::start(
        &broker,
        "swarm-crash",
        2,
        &[
            ("NODES", "2".into()),
            ("CRASH_NODE", "1".into()),
            ("MAX_WAIT_MS", ms(500)),
        ],
    );
    swarm.wait_started(2);
    let supervisor = swarm.pid();
    let starts = |s: &Swarm| {
        s.named("swarm.manager.after_fork")
            .into_iter()
            .filter(|e| e.node() == Some(1))
            .map(|e| e.at)
            .collect::<Vec<_>>()
    };
    let exits = |s: &Swarm| {
        s.named("swarm.manager.exited")
            .into_iter()
            .filter(|e| e.node() == Some(1))
            .count()
    };
    // Node 1 ended and was reaped as often as it started (between two starts).
    let settled = |s: &Swarm| {
        wait_until(Duration::from_secs(10), || exits(s) == starts(s).len())
            .expect("node 1 ends at once");
    };
    wait_until(Duration::from_secs(15), || starts(&swarm).len() >= 2).unwrap();
    settled(&swarm);
    // The descriptors the supervisor holds between two starts of node 1.
    let fds_early = open_fds(supervisor);
    let enough = wait_until(Duration::from_secs(40), || starts(&swarm).len() >= 7);
    assert!(
        enough.is_ok(),
        "node 1 was not restarted 6 times:\n{}",
        swarm.log()
    );
    let at = starts(&swarm);
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= 5000,
            "node 1 restarted {gap} ms after its previous start"
        );
    }
    settled(&swarm);
    let fds_late = open_fds(supervisor);
    // The supervisor stayed one thread (and so ran no Kafka client: librdkafka starts
    // threads).
    let threads = std::fs::read_dir(format!("/proc/{supervisor}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "the supervisor has {threads} threads");
    let gaps: Vec<u128> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "crashing node: {} starts, {gaps:?} ms apart; the supervisor's descriptors {fds_early} \
         after 2 starts, {fds_late} after {}; 1 thread",
        at.len(),
        at.len()
    );
    assert!(
        fds_late <= fds_early,
        "the supervisor held {fds_early} descriptors after 2 starts, {fds_late} after {}",
        at.len()
    );
    // Each dead node was reaped (a zombie lives only until the supervisor wakes).
    let reaped = wait_until(Duration::from_secs(2), || zombies_of(supervisor).is_empty());
    assert!(
        reaped.is_ok(),
        "zombies of the supervisor: {:?}",
        zombies_of(supervisor)
    );
    let exited = swarm.named("swarm.manager.exited");
    assert!(exited.len() >= 6 && exited.iter().all(|e| e.text.contains("with code 1")));
    // Node 0 ran throughout.
    assert_eq!(
        swarm
            .named("swarm.manager.after_fork")
            .iter()
            .filter(|e| e.node() == Some(0))
            .count(),
        1
    );
    settled(&swarm);
    swarm.signal(libc::SIGTERM);
    assert_eq!(
        swarm.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        swarm.log()
    );
}

#[test]
fn the_nodes_of_a_killed_supervisor_stop_gracefully_and_commit() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let mut swarm = Swarm::start(
        &broker,
        "swarm-orphans",
        4,
        &[("NODES", "2".into()), ("MAX_WAIT_MS", ms(500))],
    );
    swarm.produce(&broker, 0, 200);
    swarm.wait_started(2);
    let nodes = [swarm.node_pid(0).unwrap(), swarm.node_pid(1).unwrap()];
    let all = wait_until(Duration::from_secs(40), || swarm.processed().len() == 200);
    assert!(
        all.is_ok(),
        "not everything was processed:\n{}",
        swarm.log()
    );
    swarm.signal(libc::SIGKILL);
    let _ = swarm.child.wait();
    let killed = std::time::Instant::now();
    let gone = wait_until(Duration::from_secs(15), || {
        nodes.iter().all(|pid| !process_alive(*pid))
    });
    assert!(
        gone.is_ok(),
        "nodes still alive 15 s after their supervisor died:\n{}",
        swarm.log()
    );
    let gone_after = killed.elapsed();
    // What they processed was committed on the way out: each partition's committed offset is
    // one past the last processed.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in swarm.processed() {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    let offsets = broker.committed_offsets(&swarm.group).unwrap();
    let committed = offsets.of(&swarm.topic, swarm.partitions);
    let expected: BTreeMap<i32, i64> = last.into_iter().map(|(p, o)| (p, o + 1)).collect();
    assert_eq!(committed, expected, "{}", swarm.log());
    println!(
        "orphans: both nodes gone {gone_after:?} after their supervisor's SIGKILL; committed \
         {committed:?}"
    );
}

#[test]
fn term_stops_every_node_gracefully_and_tstp_quiets_them() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let mut swarm = Swarm::start(
        &broker,
        "swarm-signals",
        2,
        &[("NODES", "2".into()), ("MAX_WAIT_MS", ms(500))],
    );
    swarm.produce(&broker, 0, 20);
    swarm.wait_started(2);
    let first = wait_until(Duration::from_secs(40), || swarm.processed().len() == 20);
    assert!(
        first.is_ok(),
        "not everything was processed:\n{}",
        swarm.log()
    );
    swarm.signal(libc::SIGTSTP);
    // Quiet nodes take no new batches.
    std::thread::sleep(Duration::from_secs(2));
    swarm.produce(&broker, 20, 20);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        swarm.processed().len(),
        20,
        "quiet nodes processed new messages"
    );
    let nodes: Vec<u32> = (0..2).filter_map(|n| swarm.node_pid(n)).collect();
    swarm.signal(libc::SIGTERM);
    assert_eq!(
        swarm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        swarm.log()
    );
    let exited = swarm.named("swarm.manager.exited");
    for pid in nodes {
        assert!(
            exited
                .iter()
                .any(|e| e.pid() == Some(pid) && e.text.contains("with code 0")),
            "node pid {pid} did not exit with code 0:\n{}",
            swarm.log()
        );
    }
    assert!(swarm.named("swarm.manager.terminating").is_empty());
}

/// Neither the mock nor Tansu fences a second member with the same `group.instance.id`
/// (with the node suffix removed this test still passed on both): the distinct ids are
/// checked by `swarm_routing.rs`; this checks that static members consume on every node,
/// and that a Ctrl-C (SIGINT to the supervisor's process group) stops them cleanly.
#[test]
fn static_members_on_two_nodes_do_not_fence_each_other() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let mut swarm = Swarm::start(
        &broker,
        "swarm-static",
        4,
        &[
            ("NODES", "2".into()),
            ("STATIC", "1".into()),
            ("MAX_WAIT_MS", ms(500)),
        ],
    );
    swarm.produce(&broker, 0, 40);
    swarm.wait_started(2);
    let pids = [swarm.node_pid(0).unwrap(), swarm.node_pid(1).unwrap()];
    let all = wait_until(Duration::from_secs(40), || swarm.processed().len() == 40);
    assert!(
        all.is_ok(),
        "not everything was processed:\n{}",
        swarm.log()
    );
    swarm.produce(&broker, 40, 40);
    let all = wait_until(Duration::from_secs(40), || swarm.processed().len() == 80);
    assert!(
        all.is_ok(),
        "not everything was processed:\n{}",
        swarm.log()
    );
    // Both members consumed, neither was fenced (a fenced member's client fails fatally,
    // and its node would end and be restarted).
    let consumers: BTreeSet<u32> = swarm.records().iter().map(|r| r.1).collect();
    assert_eq!(consumers, pids.into_iter().collect(), "{}", swarm.log());
    let stderr = std::fs::read_to_string(swarm.dir.path().join("stderr.log")).unwrap();
    assert!(!stderr.to_lowercase().contains("fenced"), "{}", swarm.log());
    assert_eq!(swarm.named("swarm.manager.after_fork").len(), 2);
    // Ctrl-C in a terminal: SIGINT to the supervisor's process group.
    signal_pid_group(swarm.pid(), libc::SIGINT);
    assert_eq!(
        swarm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        swarm.log()
    );
}
