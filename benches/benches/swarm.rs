//! Swarm mode against one process with the same total concurrency: 3 nodes with
//! `concurrency` c each vs one `server` with 3c, for an IO-bound consumer (each batch sleeps)
//! and a CPU-bound one (each batch computes), on one backlog; the throughput of each side by
//! side, with raw rdkafka consuming the same backlog (no work) as the reference, and the
//! resident memory of the supervisor and of each process that consumed.
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:19092 cargo bench -p karafka-benches --bench swarm
//! ```
//!
//! Without `KARAFKA_BROKERS` it runs on the embedded mock (which hides a real broker's
//! batching). Settings: `BENCH_SWARM_MESSAGES` (60000), `BENCH_SWARM_PARTITIONS` (12),
//! `BENCH_SWARM_MAX_MESSAGES` (50), `BENCH_SWARM_CONCURRENCY` (c, 2), `BENCH_SWARM_IO_MS` (a
//! batch's sleep, 100), `BENCH_SWARM_CPU_MS` (a batch's computing, 10). Each app runs as a
//! child process: this bench binary again, as `my-app server` or `my-app swarm`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use karafka_benches::{env_usize, rate};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_pro::{Swarm, SwarmApp};
use karafka_producer::{Message, Producer};
use karafka_testing::{EmbeddedCluster, TestBroker};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

struct Work {
    file: Arc<std::fs::File>,
    /// Rounds of computing a batch (CPU-bound), or `None` (IO-bound: sleep `per_batch`).
    rounds: Option<u64>,
    per_batch: Duration,
}

/// A fixed amount of computing: the same CPU work whatever the machine's load (a loop
/// bounded by wall time would do less work per batch when processes share the cores).
fn compute(rounds: u64) -> u64 {
    let mut x = 0u64;
    for r in 0..rounds {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i ^ r);
        }
    }
    std::hint::black_box(x)
}

/// How many rounds of [`compute`] take `target` on an idle core.
fn calibrate(target: Duration) -> u64 {
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        compute(10);
        rounds += 10;
    }
    let per_round = start.elapsed().as_secs_f64() / rounds as f64;
    ((target.as_secs_f64() / per_round).round() as u64).max(1)
}

impl Consumer for Work {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        match self.rounds {
            Some(rounds) => {
                compute(rounds);
            }
            None => tokio::time::sleep(self.per_batch).await,
        }
        let line = format!("{} {}\n", ctx.messages().len(), now_ms());
        (&*self.file).write_all(line.as_bytes())?;
        Ok(())
    }
}

/// The child: the app, run by the CLI as `server` or `swarm`.
fn child() -> std::process::ExitCode {
    let var = |k: &str| std::env::var(k).unwrap();
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(var("BENCH_SWARM_OUTPUT"))
            .unwrap(),
    );
    let rounds = (var("BENCH_SWARM_WORK") == "cpu")
        .then(|| var("BENCH_SWARM_ROUNDS").parse::<u64>().unwrap());
    let per_batch = Duration::from_millis(var("BENCH_SWARM_BATCH_MS").parse().unwrap());
    let max_messages: usize = var("BENCH_SWARM_MAX_MESSAGES").parse().unwrap();
    let app = App::builder()
        .name(var("BENCH_SWARM_GROUP"))
        .kafka("bootstrap.servers", var("BENCH_SWARM_BROKERS"))
        .kafka("session.timeout.ms", "6000")
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .concurrency(var("BENCH_SWARM_CHILD_CONCURRENCY").parse().unwrap())
        .swarm(Swarm::new().nodes(3))
        .topic(&var("BENCH_SWARM_TOPIC"), move |t| {
            t.consumer(move || Work {
                file: file.clone(),
                rounds,
                per_batch,
            })
            .max_messages(max_messages)
        })
        .build()
        .unwrap();
    karafka_consumer::cli::run_from(&app, ["bench", var("BENCH_SWARM_COMMAND").as_str()])
}

/// `(VmRSS, VmHWM)` of `pid` in bytes.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat[stat.rfind(')')? + 2..].to_owned();
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A child process waited for when dropped (killed first if it still runs after its SIGTERM
/// had 60 s).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Outcome {
    seconds: f64,
    /// From the first batch's end to the last's.
    steady: f64,
    /// (label, VmRSS, VmHWM) of each process.
    memory: Vec<(String, u64, u64)>,
}

fn suffix() -> String {
    format!("{}-{}", std::process::id(), now_ms())
}

#[allow(clippy::too_many_arguments)]
fn run(
    brokers: &str,
    topic: &str,
    messages: usize,
    command: &str,
    concurrency: usize,
    work: &str,
    batch_ms: usize,
    max_messages: usize,
    rounds: u64,
) -> Outcome {
    let dir = std::env::temp_dir().join(format!("bench-swarm-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("batches.log");
    let started = Instant::now();
    let child = Reaped(
        Command::new(std::env::current_exe().unwrap())
            .env("BENCH_SWARM_CHILD", "1")
            .env("BENCH_SWARM_OUTPUT", &output)
            .env("BENCH_SWARM_WORK", work)
            .env("BENCH_SWARM_BATCH_MS", batch_ms.to_string())
            .env("BENCH_SWARM_ROUNDS", rounds.to_string())
            .env("BENCH_SWARM_MAX_MESSAGES", max_messages.to_string())
            .env("BENCH_SWARM_GROUP", format!("bench-swarm-{}", suffix()))
            .env("BENCH_SWARM_BROKERS", brokers)
            .env("BENCH_SWARM_TOPIC", topic)
            .env("BENCH_SWARM_CHILD_CONCURRENCY", concurrency.to_string())
            .env("BENCH_SWARM_COMMAND", command)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let read = || -> Vec<(usize, u128)> {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut p = l.split(' ');
                Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut sampled: Vec<(String, u64, u64)> = Vec::new();
    loop {
        let batches = read();
        let done: usize = batches.iter().map(|b| b.0).sum();
        // Sampled while consuming (the peak is kept by the kernel: VmHWM).
        let mut now = vec![];
        if let Some((rss, hwm)) = memory(pid) {
            now.push((
                if command == "swarm" {
                    "supervisor"
                } else {
                    "process"
                }
                .to_owned(),
                rss,
                hwm,
            ));
        }
        if command == "swarm" {
            let mut nodes = children_of(pid);
            nodes.sort_unstable();
            for (i, node) in nodes.iter().enumerate() {
                if let Some((rss, hwm)) = memory(*node) {
                    now.push((format!("node {i}"), rss, hwm));
                }
            }
        }
        if !now.is_empty() {
            sampled = now;
        }
        if done >= messages {
            let seconds = started.elapsed().as_secs_f64();
            let first = batches.iter().map(|b| b.1).min().unwrap_or(0);
            let last = batches.iter().map(|b| b.1).max().unwrap_or(0);
            let _ = Command::new("kill").arg(pid.to_string()).status();
            drop(child);
            let _ = std::fs::remove_dir_all(&dir);
            return Outcome {
                seconds,
                steady: (last - first) as f64 / 1000.0,
                memory: sampled,
            };
        }
        if Instant::now() >= deadline {
            panic!("{command} {work}: {done} of {messages} consumed in 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn raw(brokers: &str, topic: &str, messages: usize) -> f64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-swarm-raw-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = 0usize;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < messages && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    assert_eq!(seen, messages, "raw rdkafka consumed {seen} of {messages}");
    messages as f64 / first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64())
}

fn main() -> std::process::ExitCode {
    if std::env::var("BENCH_SWARM_CHILD").is_ok() {
        return child();
    }
    let messages = env_usize("BENCH_SWARM_MESSAGES", 60_000);
    let partitions = env_usize("BENCH_SWARM_PARTITIONS", 12) as i32;
    let max_messages = env_usize("BENCH_SWARM_MAX_MESSAGES", 50);
    let c = env_usize("BENCH_SWARM_CONCURRENCY", 2);
    let io_ms = env_usize("BENCH_SWARM_IO_MS", 100);
    let cpu_ms = env_usize("BENCH_SWARM_CPU_MS", 10);
    let (broker, brokers, mock) = match std::env::var("KARAFKA_BROKERS") {
        Ok(b) => (
            TestBroker::from_vars(Some(&b), Some("tansu")).unwrap(),
            b,
            false,
        ),
        Err(_) => {
            let broker = TestBroker::with_cluster(EmbeddedCluster::start(1).unwrap());
            let b = broker.bootstrap_servers().to_owned();
            (broker, b, true)
        }
    };
    let topic = format!("bench-swarm-{}", suffix());
    broker.create_topic(&topic, partitions).unwrap();
    let producer = Producer::builder()
        .kafka("bootstrap.servers", &brokers)
        .kafka("linger.ms", "5")
        .build()
        .unwrap();
    let payload = vec![7u8; 100];
    let batch: Vec<Message> = (0..messages)
        .map(|i| Message::new(topic.as_str(), payload.clone()).partition(i as i32 % partitions))
        .collect();
    let delivered = producer
        .produce_many_async(batch)
        .map_err(|e| e.to_string())
        .and_then(|d| d.wait(Duration::from_secs(300)).map_err(|e| e.to_string()));
    if let Err(e) = delivered {
        panic!("producing the backlog failed: {}", &e[..e.len().min(300)]);
    }
    producer.close().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds = calibrate(Duration::from_millis(cpu_ms as u64));
    println!(
        "swarm: {messages} messages × 100 B in {partitions} partitions, max_messages {max_messages}, \
         {cores} cores, on {}",
        if mock {
            "the embedded mock"
        } else {
            brokers.as_str()
        }
    );
    let raw_rate = raw(&brokers, &topic, messages);
    println!(
        "raw rdkafka, one consumer, no work: {} msg/s\n",
        rate(raw_rate)
    );
    println!(
        "| consumer | process model | concurrency | s to consume all | msg/s (all) | msg/s (first batch to last) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut memory_rows = Vec::new();
    for (work, batch_ms, label) in [
        ("io", io_ms, format!("IO-bound ({io_ms} ms sleep a batch)")),
        (
            "cpu",
            cpu_ms,
            format!("CPU-bound ({cpu_ms} ms of computing a batch on an idle core)"),
        ),
    ] {
        for (command, concurrency, model) in [
            ("server", 3 * c, "one process".to_owned()),
            ("swarm", c, "3 swarm nodes".to_owned()),
        ] {
            let o = run(
                &brokers,
                &topic,
                messages,
                command,
                concurrency,
                work,
                batch_ms,
                max_messages,
                rounds,
            );
            let shown = if command == "swarm" {
                format!("{c} per node")
            } else {
                concurrency.to_string()
            };
            println!(
                "| {label} | {model} | {shown} | {:.1} | {} | {} |",
                o.seconds,
                rate(messages as f64 / o.seconds),
                rate(messages as f64 / o.steady.max(0.001)),
            );
            for (who, rss, hwm) in o.memory {
                memory_rows.push(format!(
                    "| {label} | {model} | {who} | {:.1} | {:.1} |",
                    rss as f64 / 1048576.0,
                    hwm as f64 / 1048576.0
                ));
            }
        }
    }
    println!(
        "\n| consumer | process model | process | RSS MiB (last sample while consuming) | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|");
    for row in memory_rows {
        println!("{row}");
    }
    std::process::ExitCode::SUCCESS
}
