//! The quick start: the whole framework on one machine, with one command.
//!
//! ```sh
//! cargo run --example quickstart                               # an embedded cluster
//! KARAFKA_BROKERS=127.0.0.1:9092 cargo run --example quickstart  # a broker of yours
//! ```
//!
//! With no `KARAFKA_BROKERS` it starts an embedded cluster (librdkafka's mock cluster, in this
//! process). It creates a topic with several partitions, produces 100k events with the
//! producer, consumes them with a small routed app (a few first attempts fail on purpose, to
//! show retries), shows a progress bar, then prints a summary: messages, msg/s, p50/p99
//! consumption latency (producer send → consumer start), retries. It exits 0 when every event
//! was consumed exactly once into the result set, 1 otherwise.
//!
//! `QUICKSTART_MESSAGES` changes the number of events (default 100000).

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use karafka::consumer::admin::Admin;
use karafka::instrumentation::Event;
use karafka::payload::Json;
use karafka::producer::Message;
use karafka::{App, ConsumeResult, Consumer, Context, KafkaSettings, Producer};
use karafka_testing::EmbeddedCluster;

const PARTITIONS: i32 = 6;
/// A batch holding an event whose id is a multiple of this fails on its first attempt.
const FAIL_EVERY: u64 = 20_000;

/// The event the quick start produces and consumes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Visit {
    id: u64,
    page: String,
    /// When the producer sent it, in microseconds since the Unix epoch.
    sent_at_us: u64,
}

/// What the consumers saw.
#[derive(Default)]
struct Tally {
    seen: Mutex<HashSet<u64>>,
    /// Microseconds from send to the start of the successful processing.
    latencies_us: Mutex<Vec<u64>>,
    deliveries: AtomicU64,
}

struct Visits {
    tally: Arc<Tally>,
    fail_every: u64,
    progress: ProgressBar,
}

impl Consumer for Visits {
    type Payload = Json<Visit>;

    async fn consume(&mut self, ctx: &Context<Json<Visit>>) -> ConsumeResult {
        let started = now_us();
        let visits = ctx.messages().payloads()?;
        self.tally
            .deliveries
            .fetch_add(visits.len() as u64, Ordering::Relaxed);
        // A failure on the first attempt: the framework pauses the partition, backs off and
        // hands the batch again from its first unmarked message.
        if ctx.attempt() == 1
            && self.fail_every > 0
            && visits.iter().any(|v| v.id % self.fail_every == 0)
        {
            return Err("simulated failure (the quick start fails a few first attempts)".into());
        }
        let mut seen = self.tally.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies = self
            .tally
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut new = 0;
        for visit in &visits {
            if seen.insert(visit.id) {
                latencies.push(started.saturating_sub(visit.sent_at_us));
                new += 1;
            }
        }
        self.progress.inc(new);
        Ok(())
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let messages: u64 = match std::env::var("QUICKSTART_MESSAGES") {
        Ok(n) => n
            .parse()
            .map_err(|_| format!("QUICKSTART_MESSAGES must be a number, got `{n}`"))?,
        Err(_) => 100_000,
    };
    let fail_every: u64 = match std::env::var("QUICKSTART_FAIL_EVERY") {
        Ok(n) => n
            .parse()
            .map_err(|_| format!("QUICKSTART_FAIL_EVERY must be a number, got `{n}`"))?,
        Err(_) => FAIL_EVERY,
    };
    let topic = format!("quickstart-visits-{}", std::process::id());

    // 1. A broker: yours, or one embedded in this process.
    let mut _embedded = None;
    let bootstrap = match std::env::var("KARAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            println!("broker: {brokers} (KARAFKA_BROKERS)");
            let admin = Admin::new(&KafkaSettings::new().with("bootstrap.servers", &brokers))?;
            // Returns once the metadata shows the topic.
            admin.create_topic(&topic, PARTITIONS, 1, &Default::default())?;
            brokers
        }
        _ => {
            let cluster = EmbeddedCluster::builder()
                .initial_rebalance_delay(Duration::from_millis(100))
                .start()?;
            cluster.create_topic(&topic, PARTITIONS)?;
            let brokers = cluster.bootstrap_servers().to_string();
            println!("broker: embedded cluster on {brokers} (set KARAFKA_BROKERS to use yours)");
            _embedded = Some(cluster);
            brokers
        }
    };
    println!("topic: {topic} ({PARTITIONS} partitions), {messages} events");

    // 2. The app: one route, the consumer above, quick retries.
    let tally = Arc::new(Tally::default());
    let progress = ProgressBar::new(messages);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} consumed, {rate} {msg}")?
            // Whole messages per second (indicatif's `{per_sec}` prints four decimals).
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} msg/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    let app = {
        let tally = tally.clone();
        let progress = progress.clone();
        App::builder()
            .name(format!("quickstart-{}", std::process::id()))
            .kafka("bootstrap.servers", bootstrap.as_str())
            .kafka("auto.offset.reset", "earliest")
            // A new group's first join waits for more members: 3 s on Kafka
            // (group.initial.rebalance.delay.ms), half the session timeout on Tansu.
            .kafka("session.timeout.ms", "6000")
            .pause_timeout(Duration::from_millis(100))
            .topic(&topic, move |t| {
                t.consumer(move || Visits {
                    tally: tally.clone(),
                    fail_every,
                    progress: progress.clone(),
                })
            })
            .build()?
    };
    let retries = Arc::new(AtomicU64::new(0));
    {
        let retries = retries.clone();
        app.monitor().subscribe_fn(move |event| {
            if let Event::Retry { .. } = event {
                retries.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let assigned = Arc::new(AtomicU64::new(0));
    {
        let assigned = assigned.clone();
        app.monitor().subscribe_fn(move |event| {
            if event.name() == "rebalance.partitions_assigned" {
                assigned.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let running = app.start()?;
    // Produce once the group has its partitions, so the latency is the pipeline's, not the
    // group join's.
    progress.set_message("(joining the consumer group)");
    let joining = Instant::now();
    while assigned.load(Ordering::Relaxed) == 0 {
        if joining.elapsed() > Duration::from_secs(60) {
            let _ = running.stop_blocking();
            return Err("the app was not assigned partitions within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let joined_in = joining.elapsed();
    let started = Instant::now();

    // 3. Produce while the app consumes.
    let producer = Producer::builder()
        .kafka("bootstrap.servers", bootstrap.as_str())
        .kafka("linger.ms", "5")
        .build()?;
    const CHUNK: u64 = 10_000;
    let pages = ["/", "/pricing", "/docs", "/blog", "/signup"];
    for chunk in (0..messages).step_by(CHUNK as usize) {
        let batch = (chunk..(chunk + CHUNK).min(messages))
            .map(|id| {
                let visit = Visit {
                    id,
                    page: pages[(id % pages.len() as u64) as usize].to_string(),
                    sent_at_us: now_us(),
                };
                let payload = serde_json::to_vec(&visit).expect("a Visit always serializes");
                Message::new(topic.as_str(), payload).key(format!("visitor-{}", id % 997))
            })
            .collect();
        producer.produce_many_sync(batch)?;
    }
    let produced_in = started.elapsed();
    producer.close()?;
    progress.set_message(format!("(all {messages} produced in {produced_in:.1?})"));
    progress.tick();

    // 4. Wait until every event was consumed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (tally.seen.lock().unwrap_or_else(|p| p.into_inner()).len() as u64) < messages {
        if Instant::now() >= deadline {
            progress.abandon();
            let _ = running.stop_blocking();
            return Err(format!(
                "only {} of {messages} events were consumed within 120 s",
                tally.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    progress.finish();
    running.stop_blocking()?;

    // 5. The summary.
    let mut latencies =
        std::mem::take(&mut *tally.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_unstable();
    let deliveries = tally.deliveries.load(Ordering::Relaxed);
    println!();
    println!("summary");
    println!("  group joined in:     {joined_in:.1?}");
    println!("  messages consumed:   {messages} (each exactly once in the result set)");
    println!("  produced in:         {produced_in:.1?}");
    println!(
        "  deliveries:          {deliveries} ({} handed again by retries)",
        deliveries.saturating_sub(messages)
    );
    println!(
        "  throughput:          {:.0} msg/s (produce + consume, {:.2} s)",
        messages as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  consumption latency: p50 {:.1} ms, p99 {:.1} ms (producer send → consumer start)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    println!(
        "  retries:             {} (a batch holding an id divisible by {fail_every} fails its first attempt)",
        retries.load(Ordering::Relaxed)
    );
    Ok(())
}
