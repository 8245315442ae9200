//! Multiplexing under lag: a backlog of 50,000 messages (`BENCH_MUX_MESSAGES`) in 5
//! partitions, written in record batches of 10,000 (as a topic that fell behind looks to its
//! consumer: each fetch returns long runs of one partition), 1 ms of IO a message
//! (`tokio::time::sleep`), concurrency 5. Four setups drain it, each with a new group, in
//! the same run: one connection or `multiplexing(max: 5)`, each with poll scheduling
//! (Karafka's rule) and per-partition scheduling (the default). For each: the time from the
//! first message to the last, msg/s, and efficiency against the measured ceiling
//! (concurrency ÷ the IO's measured cost per message: 1.0 when every worker always waits on
//! IO). The first round is drawn as `docs/multiplexing-drain.svg` (messages still to process
//! over time, a line per setup; `BENCH_MUX_CHART` sets another path).
//!
//! Then RSS per extra connection: child processes (this binary again) start an app with 1
//! and with 5 connections on an idle 5-partition topic, wait until every partition is
//! assigned and 3 s more, and print their RSS; (RSS₅ − RSS₁) ÷ 4 is the cost of a connection
//! with nothing prefetched (prefetch buffers come on top: each connection has its own).
//!
//! Broker: `KARAFKA_BROKERS` (Tansu from `scripts/broker start`), else the embedded mock,
//! which answers each fetch with one small message set per partition and so hides the lag
//! this measures (it says so). `BENCH_ROUNDS` (default 1) repeats the drains.
//!
//! `KARAFKA_BROKERS=127.0.0.1:19092 cargo bench -p karafka-benches --bench multiplexing`

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use karafka_benches::{Summary, child_result, env_usize, rate, rss_bytes};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, Scheduling};
use karafka_pro::{Multiplexing, MultiplexingSubscriptionGroup};
use karafka_producer::{Message, Producer};
use karafka_testing::{EmbeddedCluster, TestBroker};
use plotters::prelude::*;

const PARTITIONS: i32 = 5;
const CONCURRENCY: usize = 5;
const PAYLOAD: [u8; 100] = [b'x'; 100];

fn suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

struct Progress {
    target: usize,
    count: AtomicUsize,
    io_nanos: AtomicU64,
    first: Mutex<Option<Instant>>,
}

struct Slow {
    progress: Arc<Progress>,
}

impl Consumer for Slow {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.progress
            .first
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        for _ in ctx.messages() {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.progress.io_nanos.fetch_add(took, Ordering::Relaxed);
            self.progress.count.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}

fn base(brokers: &str, group: &str, scheduling: Scheduling) -> AppBuilder {
    App::builder()
        .name(group)
        .scheduling(scheduling)
        .concurrency(CONCURRENCY)
        .kafka("bootstrap.servers", brokers)
        .kafka("auto.offset.reset", "earliest")
        .kafka("session.timeout.ms", "6000")
        .kafka("fetch.wait.max.ms", "10")
        .kafka("fetch.queue.backoff.ms", "10")
}

/// The app of a setup: one connection, or a named subscription group multiplexed `max`.
fn app(
    brokers: &str,
    topic: &str,
    connections: usize,
    scheduling: Scheduling,
    progress: &Arc<Progress>,
) -> App {
    let group = format!("bench-mux-{}", suffix());
    let p = progress.clone();
    let topic = topic.to_owned();
    base(brokers, &group, scheduling)
        .consumer_group(&group.clone(), move |cg| {
            cg.subscription_group("lag", move |sg| {
                let sg = if connections > 1 {
                    sg.multiplexing(Multiplexing::new(connections))
                } else {
                    sg
                };
                sg.topic(&topic, move |t| {
                    t.consumer(move || Slow {
                        progress: p.clone(),
                    })
                })
            })
        })
        .build()
        .unwrap()
}

/// One drain: (seconds since the first message, messages still to process) every 100 ms,
/// the drain time, and the IO's measured cost per message.
struct Drain {
    series: Vec<(f64, f64)>,
    took: Duration,
    io_cost: Duration,
}

fn drain(
    brokers: &str,
    topic: &str,
    n: usize,
    connections: usize,
    scheduling: Scheduling,
) -> Drain {
    let progress = Arc::new(Progress {
        target: n,
        count: AtomicUsize::new(0),
        io_nanos: AtomicU64::new(0),
        first: Mutex::new(None),
    });
    let app = app(brokers, topic, connections, scheduling, &progress);
    let running = app.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut series = Vec::new();
    let took = loop {
        assert!(Instant::now() < deadline, "the drain did not end in 900 s");
        std::thread::sleep(Duration::from_millis(100));
        let Some(first) = *progress.first.lock().unwrap() else {
            continue;
        };
        let done = progress.count.load(Ordering::Acquire);
        let at = first.elapsed();
        series.push((
            at.as_secs_f64(),
            progress.target.saturating_sub(done) as f64,
        ));
        if done >= progress.target {
            break at;
        }
    };
    running.stop_blocking().unwrap();
    let counted = progress.count.load(Ordering::Acquire).max(1) as u64;
    Drain {
        series,
        took,
        io_cost: Duration::from_nanos(progress.io_nanos.load(Ordering::Relaxed) / counted),
    }
}

fn backlog(brokers: &str, topic: &str, n: usize) {
    let producer = Producer::builder()
        .kafka("bootstrap.servers", brokers)
        .kafka("linger.ms", "5")
        .kafka("batch.num.messages", "10000")
        .kafka("queue.buffering.max.messages", "2000000")
        .build()
        .unwrap();
    let name: Arc<str> = topic.into();
    let payload = Bytes::from_static(&PAYLOAD);
    // Partition by partition, so each is written in large record batches.
    let messages = (0..n)
        .map(|i| {
            Message::new(name.clone(), payload.clone())
                .partition((i * PARTITIONS as usize / n) as i32)
        })
        .collect();
    producer
        .produce_many_async(messages)
        .unwrap()
        .wait(Duration::from_secs(300))
        .unwrap();
    producer.close().unwrap();
}

const SETUPS: [(&str, usize, Scheduling); 4] = [
    ("one connection, poll scheduling", 1, Scheduling::Poll),
    (
        "one connection, partition scheduling",
        1,
        Scheduling::Partition,
    ),
    ("multiplexing(max: 5), poll scheduling", 5, Scheduling::Poll),
    (
        "multiplexing(max: 5), partition scheduling",
        5,
        Scheduling::Partition,
    ),
];

fn main() {
    if let Ok(connections) = std::env::var("BENCH_MUX_RSS_CHILD") {
        rss_child(connections.parse().unwrap_or(1));
        return;
    }
    let messages = env_usize("BENCH_MUX_MESSAGES", 50_000);
    let rounds = env_usize("BENCH_ROUNDS", 1).max(1);
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
    println!(
        "multiplexing drain: {messages} messages in {PARTITIONS} partitions (record batches of \
         10,000), 1 ms IO a message, concurrency {CONCURRENCY}, {rounds} round(s), on {}",
        if mock {
            "the embedded mock (it hides a real broker's lag: use KARAFKA_BROKERS)"
        } else {
            brokers.as_str()
        }
    );
    let topic = format!("bench-mux-lag-{}", suffix());
    broker.create_topic(&topic, PARTITIONS).unwrap();
    backlog(&brokers, &topic, messages);

    let mut results: Vec<Vec<Drain>> = (0..SETUPS.len()).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (label, connections, scheduling)) in SETUPS.iter().enumerate() {
            let d = drain(&brokers, &topic, messages, *connections, *scheduling);
            println!(
                "  round {round}: {label}: drained in {:.2} s ({}), efficiency {:.3}",
                d.took.as_secs_f64(),
                rate(messages as f64 / d.took.as_secs_f64()),
                efficiency(messages, &d)
            );
            results[i].push(d);
        }
    }
    println!();
    println!(
        "| {messages} messages, {PARTITIONS} partitions, 1 ms IO/message, concurrency {CONCURRENCY} ({}) | drain s min / median / max | msg/s (median) | efficiency (median) |",
        if mock {
            "embedded mock"
        } else {
            "external broker"
        }
    );
    println!("|---|---|---|---|");
    for ((label, _, _), drains) in SETUPS.iter().zip(&results) {
        let secs: Vec<f64> = drains.iter().map(|d| d.took.as_secs_f64()).collect();
        let eff: Vec<f64> = drains.iter().map(|d| efficiency(messages, d)).collect();
        let s = Summary::of(&secs);
        println!(
            "| {label} | {:.2} / {:.2} / {:.2} | {} | {:.3} |",
            s.min,
            s.median,
            s.max,
            rate(messages as f64 / s.median),
            Summary::of(&eff).median
        );
    }
    let costs: Vec<f64> = results
        .iter()
        .flatten()
        .map(|d| d.io_cost.as_secs_f64() * 1e3)
        .collect();
    println!(
        "\nceiling: concurrency ÷ the measured IO cost per message (median {:.3} ms) = {} msg/s",
        Summary::of(&costs).median,
        rate(CONCURRENCY as f64 / (Summary::of(&costs).median / 1e3))
    );

    let chart = std::env::var("BENCH_MUX_CHART").unwrap_or_else(|_| {
        format!(
            "{}/../docs/multiplexing-drain.svg",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let first: Vec<(&str, &Drain)> = SETUPS
        .iter()
        .zip(&results)
        .map(|((label, _, _), d)| (*label, &d[0]))
        .collect();
    draw(&chart, messages, mock, &first);
    println!("chart: {chart}");

    rss_per_connection(&broker, &brokers);
}

/// msg/s ÷ (concurrency ÷ c).
fn efficiency(messages: usize, d: &Drain) -> f64 {
    messages as f64 / d.took.as_secs_f64() * d.io_cost.as_secs_f64() / CONCURRENCY as f64
}

fn draw(path: &str, messages: usize, mock: bool, drains: &[(&str, &Drain)]) {
    let longest = drains
        .iter()
        .map(|(_, d)| d.took.as_secs_f64())
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let caption = format!(
        "Draining {messages} messages in {PARTITIONS} partitions, 1 ms IO each, concurrency {CONCURRENCY}{}",
        if mock { " (mock)" } else { " (Tansu)" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..messages as f64 * 1.05)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("seconds since the first message")
        .y_desc("messages still to process")
        .draw()
        .unwrap();
    let colors = [RED, BLUE, GREEN, BLACK];
    for (i, (label, d)) in drains.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut points = vec![(0.0, messages as f64)];
        points.extend(d.series.iter().copied());
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .unwrap()
            .label(format!("{label}: {:.1} s", d.took.as_secs_f64()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .unwrap();
    root.present().unwrap();
}

/// RSS of an idle app with 1 and with 5 connections, in child processes.
fn rss_per_connection(broker: &TestBroker, brokers: &str) {
    let topic = format!("bench-mux-idle-{}", suffix());
    broker.create_topic(&topic, PARTITIONS).unwrap();
    let mut rss = Vec::new();
    for connections in [1usize, 5] {
        let mut samples = Vec::new();
        for _ in 0..3 {
            let line = child_result(
                &[
                    ("BENCH_MUX_RSS_CHILD", &connections.to_string()),
                    ("BENCH_MUX_RSS_BROKERS", brokers),
                    ("BENCH_MUX_RSS_TOPIC", &topic),
                ],
                "rss",
                "the rss child",
            );
            samples.push(line.trim().parse::<f64>().unwrap() / 1048576.0);
        }
        println!(
            "  RSS with {connections} connection(s), idle, every partition assigned: {samples:.1?} MiB"
        );
        rss.push(Summary::of(&samples).median);
    }
    println!(
        "RSS per extra connection (idle, nothing prefetched): {:.2} MiB (median of 3 runs: {:.1} MiB with 1, {:.1} MiB with 5)",
        (rss[1] - rss[0]) / 4.0,
        rss[0],
        rss[1]
    );
}

/// The child of [`rss_per_connection`]: an app of `connections` connections, idle.
fn rss_child(connections: usize) {
    let brokers = std::env::var("BENCH_MUX_RSS_BROKERS").unwrap();
    let topic = std::env::var("BENCH_MUX_RSS_TOPIC").unwrap();
    let progress = Arc::new(Progress {
        target: usize::MAX,
        count: AtomicUsize::new(0),
        io_nanos: AtomicU64::new(0),
        first: Mutex::new(None),
    });
    let assigned = Arc::new(AtomicUsize::new(0));
    let app = app(
        &brokers,
        &topic,
        connections,
        Scheduling::Partition,
        &progress,
    );
    let a = assigned.clone();
    app.monitor().subscribe_fn(move |e| {
        if let karafka_core::instrumentation::Event::Rebalance {
            change, partitions, ..
        } = e
        {
            match change {
                karafka_core::instrumentation::AssignmentChange::Assigned => {
                    a.fetch_add(partitions.len(), Ordering::AcqRel);
                }
                _ => {
                    a.fetch_sub(partitions.len(), Ordering::AcqRel);
                }
            }
        }
    });
    let running = app.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned.load(Ordering::Acquire) < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "not every partition was assigned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_bytes().unwrap_or_default();
    println!("rss {rss}");
    running.stop_blocking().unwrap();
}
