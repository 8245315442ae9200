//! Producer scenarios, karafka-rs against raw rdkafka in the same run, on the same embedded
//! cluster (or `KARAFKA_BROKERS`), alternating runs (their order rotates each round, after a
//! half-second pause for the broker to settle):
//!
//! - throughput: 1M × 100-byte messages (`BENCH_MESSAGES`) and 100k × 10 KB
//!   (`BENCH_LARGE_MESSAGES`), each through one `produce_many_async`, through the buffer
//!   (`buffer_many` then `flush_async`) and through `produce_many_async` calls of 10,000,
//!   against a raw `BaseProducer` send loop whose delivery callback counts; timed from the
//!   first call to the last delivery report (karafka-rs: when its batch handle wakes; for the
//!   calls of 10,000, when the last handle has returned its reports); the time karafka-rs then
//!   takes to hand back the `Vec` of reports is reported on its own line (and is in its CPU
//!   figure); CPU is every thread's (`/proc/self/task/*/schedstat`), and `BENCH_THREADS=1`
//!   prints it by thread with when the last message was handed over;
//! - latency: 1,000 sequential `produce_sync` with `queue.buffering.max.ms=0`, against a raw
//!   send-then-block-until-the-delivery-report loop (delivery reports served by a polling
//!   thread in both).
//!
//! Both sides use the same librdkafka settings: `linger.ms=5`, `batch.num.messages=10000` and a
//! queue large enough never to fill (so neither side waits on a full queue).
//!
//! `cargo bench -p karafka-benches --bench producer`

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use karafka_benches::{
    Summary, env_usize, quantile, rate, ratio_row, threads_cpu, threads_cpu_delta,
};
use karafka_core::KafkaSettings;
use karafka_producer::{Message, Producer};
use karafka_testing::{EmbeddedCluster, TestBroker, client_config};
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

static SMALL: [u8; 100] = [b'x'; 100];
/// Messages per `produce_many_async` call on the chunked path.
const CHUNK: usize = 10_000;
/// Pause before each timed run, for the broker to finish with the previous one.
const SETTLE_MS: u64 = 500;
static LARGE: [u8; 10_240] = [b'x'; 10_240];

fn throughput_settings(brokers: &str) -> KafkaSettings {
    KafkaSettings::new()
        .with("bootstrap.servers", brokers)
        .with("linger.ms", "5")
        .with("batch.num.messages", "10000")
        .with("queue.buffering.max.messages", "2000000")
        .with("queue.buffering.max.kbytes", "2097151")
        .with("message.timeout.ms", "50000")
}

fn latency_settings(brokers: &str) -> KafkaSettings {
    KafkaSettings::new()
        .with("bootstrap.servers", brokers)
        .with("queue.buffering.max.ms", "0")
        .with("message.timeout.ms", "50000")
}

/// The process's CPU since `before` (every thread); with `BENCH_THREADS=1`, printed by thread.
fn cpu_since(
    who: &str,
    before: &std::collections::HashMap<u64, (String, Duration)>,
    handed_over: Duration,
) -> Duration {
    let by_thread = threads_cpu_delta(before, &threads_cpu());
    if std::env::var("BENCH_THREADS").is_ok_and(|v| v == "1") {
        let parts: Vec<String> = by_thread
            .iter()
            .map(|(name, t)| format!("{name} {:.0} ms", t.as_secs_f64() * 1e3))
            .collect();
        println!(
            "    {who}: every message handed over after {:.0} ms; CPU by thread: {}",
            handed_over.as_secs_f64() * 1e3,
            parts.join(", ")
        );
    }
    by_thread.iter().map(|(_, t)| *t).sum()
}

// ---- raw baseline -----------------------------------------------------------------------

struct Counting {
    target: usize,
    delivered: AtomicUsize,
    failed: AtomicUsize,
    done: Mutex<Option<Instant>>,
    cv: Condvar,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if self.delivered.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.done.lock().unwrap() = Some(Instant::now());
            self.cv.notify_all();
        }
    }
}

/// A polling thread like rdkafka's ThreadedProducer: blocks in poll(100 ms).
fn poll_thread<C: ProducerContext + 'static>(
    producer: Arc<BaseProducer<C>>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("raw.poll".into())
        .spawn(move || {
            while !flag.load(Ordering::Acquire) {
                producer.poll(Duration::from_millis(100));
            }
        })
        .unwrap();
    (stop, handle)
}

fn raw_throughput(brokers: &str, topic: &str, n: usize, payload: &[u8]) -> (f64, Duration) {
    let context = Counting {
        target: n,
        delivered: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        done: Mutex::new(None),
        cv: Condvar::new(),
    };
    let producer: Arc<BaseProducer<Counting>> = Arc::new(
        client_config(&throughput_settings(brokers))
            .create_with_context(context)
            .unwrap(),
    );
    let (stop, poller) = poll_thread(producer.clone());
    let cpu = threads_cpu();
    let started = Instant::now();
    for _ in 0..n {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let handed_over = started.elapsed();
    let ctx = producer.context();
    let mut done = ctx.done.lock().unwrap();
    while done.is_none() {
        done = ctx.cv.wait(done).unwrap();
    }
    let took = done.unwrap() - started;
    drop(done);
    let cpu = cpu_since("raw", &cpu, handed_over);
    assert_eq!(
        ctx.failed.load(Ordering::Relaxed),
        0,
        "raw deliveries failed"
    );
    stop.store(true, Ordering::Release);
    poller.join().unwrap();
    (n as f64 / took.as_secs_f64(), cpu)
}

struct Notify(mpsc::Sender<bool>);
impl ClientContext for Notify {}
impl ProducerContext for Notify {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let _ = self.0.send(result.is_ok());
    }
}

fn raw_latency(brokers: &str, topic: &str, sends: usize) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel();
    let producer: Arc<BaseProducer<Notify>> = Arc::new(
        client_config(&latency_settings(brokers))
            .create_with_context(Notify(tx))
            .unwrap(),
    );
    let (stop, poller) = poll_thread(producer.clone());
    let mut samples = Vec::with_capacity(sends);
    for i in 0..sends + 50 {
        let started = Instant::now();
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).payload(&SMALL[..]))
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(rx.recv().unwrap(), "raw delivery failed");
        if i >= 50 {
            samples.push(started.elapsed());
        }
    }
    stop.store(true, Ordering::Release);
    poller.join().unwrap();
    samples
}

// ---- karafka-rs ---------------------------------------------------------------------------

/// Records when a batch's last delivery report came in (its waker fires then).
struct WakeTime(Mutex<Option<Instant>>, Condvar);

impl std::task::Wake for WakeTime {
    fn wake(self: Arc<Self>) {
        *self.0.lock().unwrap() = Some(Instant::now());
        self.1.notify_all();
    }
}

/// How karafka-rs is handed the messages.
#[derive(Clone, Copy)]
enum Path {
    /// `produce_many_async(messages)`.
    Many,
    /// `produce_many_async` for every `CHUNK` messages, then every handle awaited.
    Chunks,
    /// `buffer_many(messages)` then `flush_async()`.
    Buffered,
}

/// Returns (msg/s to the last delivery report, CPU, time to materialize the reports after it).
fn framework_throughput(
    brokers: &str,
    topic: &str,
    n: usize,
    payload: &'static [u8],
    path: Path,
) -> (f64, Duration, Duration) {
    let producer = Producer::builder()
        .kafka_settings(&throughput_settings(brokers))
        .build()
        .unwrap();
    producer.connect().unwrap();
    let topic: Arc<str> = topic.into();
    let payload = Bytes::from_static(payload);
    if let Path::Chunks = path {
        let chunks: Vec<Vec<Message>> = (0..n.div_ceil(CHUNK))
            .map(|c| {
                (c * CHUNK..n.min((c + 1) * CHUNK))
                    .map(|_| Message::new(topic.clone(), payload.clone()))
                    .collect()
            })
            .collect();
        let cpu = threads_cpu();
        let started = Instant::now();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| producer.produce_many_async(chunk).unwrap())
            .collect();
        let handed_over = started.elapsed();
        let mut delivered = 0;
        for handle in handles {
            delivered += handle.wait(Duration::from_secs(120)).unwrap().len();
        }
        let took = started.elapsed();
        let cpu = cpu_since("karafka-rs", &cpu, handed_over);
        assert_eq!(delivered, n);
        producer.close().unwrap();
        return (n as f64 / took.as_secs_f64(), cpu, Duration::ZERO);
    }
    let messages: Vec<Message> = (0..n)
        .map(|_| Message::new(topic.clone(), payload.clone()))
        .collect();
    let cpu = threads_cpu();
    let started = Instant::now();
    let mut delivery = match path {
        Path::Chunks => unreachable!("returned above"),
        Path::Many => producer.produce_many_async(messages).unwrap(),
        Path::Buffered => {
            producer.buffer_many(messages).unwrap();
            producer.flush_async().unwrap()
        }
    };
    let handed_over = started.elapsed();
    let wake = Arc::new(WakeTime(Mutex::new(None), Condvar::new()));
    let waker = std::task::Waker::from(wake.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    use std::future::Future;
    let first_poll = Instant::now();
    let (last_report, reports) = match std::pin::Pin::new(&mut delivery).poll(&mut cx) {
        // Every report was in before the first poll: the batch ended no later than the poll
        // started (counted as the end: conservative), and the poll built the reports.
        std::task::Poll::Ready(reports) => (first_poll, reports),
        std::task::Poll::Pending => {
            let mut at = wake.0.lock().unwrap();
            while at.is_none() {
                at = wake.1.wait(at).unwrap();
            }
            let at = at.unwrap();
            match std::pin::Pin::new(&mut delivery).poll(&mut cx) {
                std::task::Poll::Ready(reports) => (at, reports),
                std::task::Poll::Pending => panic!("woken but not done"),
            }
        }
    };
    let materialized = last_report.elapsed();
    let cpu = cpu_since("karafka-rs", &cpu, handed_over);
    let reports = reports.unwrap();
    assert_eq!(reports.len(), n);
    drop(reports);
    producer.close().unwrap();
    (
        n as f64 / (last_report - started).as_secs_f64(),
        cpu,
        materialized,
    )
}

fn framework_latency(brokers: &str, topic: &str, sends: usize) -> Vec<Duration> {
    let producer = Producer::builder()
        .kafka_settings(&latency_settings(brokers))
        .build()
        .unwrap();
    let topic: Arc<str> = topic.into();
    let payload = Bytes::from_static(&SMALL);
    let mut samples = Vec::with_capacity(sends);
    for i in 0..sends + 50 {
        let message = Message::new(topic.clone(), payload.clone());
        let started = Instant::now();
        producer.produce_sync(message).unwrap();
        if i >= 50 {
            samples.push(started.elapsed());
        }
    }
    producer.close().unwrap();
    samples
}

/// One throughput comparison: raw, then karafka-rs through each path, alternating by round.
struct Scenario {
    label: String,
    messages: usize,
    payload: &'static [u8],
    raw: Vec<f64>,
    raw_cpu: Vec<f64>,
    many: Vec<f64>,
    many_cpu: Vec<f64>,
    buffered: Vec<f64>,
    buffered_cpu: Vec<f64>,
    chunks: Vec<f64>,
    chunks_cpu: Vec<f64>,
    materialize: Vec<f64>,
}

impl Scenario {
    fn new(label: String, messages: usize, payload: &'static [u8]) -> Self {
        Scenario {
            label,
            messages,
            payload,
            raw: vec![],
            raw_cpu: vec![],
            many: vec![],
            many_cpu: vec![],
            buffered: vec![],
            buffered_cpu: vec![],
            chunks: vec![],
            chunks_cpu: vec![],
            materialize: vec![],
        }
    }

    /// One run of each side, in an order that rotates with `round` (each side runs first,
    /// second, ... in turn: no side always follows another's load on the broker), with a pause
    /// before each run for the broker to settle.
    fn round(&mut self, brokers: &str, topic: &dyn Fn(&str) -> String, round: usize) {
        let n = self.messages;
        let paths = [
            None,
            Some(Path::Many),
            Some(Path::Buffered),
            Some(Path::Chunks),
        ];
        for step in 0..paths.len() {
            std::thread::sleep(Duration::from_millis(SETTLE_MS));
            let Some(path) = paths[(round + step) % paths.len()] else {
                let (r, c) = raw_throughput(brokers, &topic("raw"), n, self.payload);
                println!(
                    "  {} round {round}: raw                     {:>12} msg/s  cpu {:.2} s",
                    self.label,
                    rate(r),
                    c.as_secs_f64()
                );
                self.raw.push(r);
                self.raw_cpu.push(c.as_secs_f64());
                continue;
            };
            let (r, c, m) = framework_throughput(brokers, &topic("fw"), n, self.payload, path);
            let name = match path {
                Path::Many => "produce_many_async",
                Path::Buffered => "buffer_many+flush_async",
                Path::Chunks => "produce_many_async/10k",
            };
            println!(
                "  {} round {round}: {name:<23} {:>12} msg/s  cpu {:.2} s  reports materialized in {:.1} ms",
                self.label,
                rate(r),
                c.as_secs_f64(),
                m.as_secs_f64() * 1e3
            );
            let (rates, cpus) = match path {
                Path::Many => (&mut self.many, &mut self.many_cpu),
                Path::Buffered => (&mut self.buffered, &mut self.buffered_cpu),
                Path::Chunks => (&mut self.chunks, &mut self.chunks_cpu),
            };
            rates.push(r);
            cpus.push(c.as_secs_f64());
            if !matches!(path, Path::Chunks) {
                self.materialize.push(m.as_secs_f64() * 1e3);
            }
        }
    }
}

fn row(name: &str, raw: &[f64], fw: &[f64], fmt: &dyn Fn(f64) -> String) {
    println!("{}", ratio_row(name, raw, fw, fmt));
}

fn main() {
    let n = env_usize("BENCH_MESSAGES", 1_000_000);
    let large = env_usize("BENCH_LARGE_MESSAGES", 100_000);
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let sends = env_usize("BENCH_LATENCY_SENDS", 1_000);
    let (brokers, cluster) = match std::env::var("KARAFKA_BROKERS") {
        Ok(b) => (b, None),
        Err(_) => {
            let cluster = EmbeddedCluster::start(1).unwrap();
            (cluster.bootstrap_servers().to_owned(), Some(cluster))
        }
    };
    let broker_name = if cluster.is_some() {
        "embedded mock cluster"
    } else {
        brokers.as_str()
    };
    let broker = match &cluster {
        Some(c) => TestBroker::with_cluster(c.clone()),
        None => TestBroker::from_vars(Some(&brokers), Some("kafka")).unwrap(),
    };
    let counter = AtomicUsize::new(0);
    let topic = |name: &str| -> String {
        let t = format!(
            "bench-{name}-{}-{}",
            std::process::id(),
            counter.fetch_add(1, Ordering::Relaxed)
        );
        // Created before the run on both brokers, so no run times a topic's creation.
        broker.create_topic(&t, 1).unwrap();
        t
    };
    println!(
        "producer benchmarks on {broker_name}: {n} x 100 B and {large} x 10 KB, {rounds} rounds, \
         alternating raw / karafka-rs"
    );

    let mut scenarios = Vec::new();
    if n > 0 {
        scenarios.push(Scenario::new(format!("{n} x 100 B"), n, &SMALL));
    }
    if large > 0 {
        scenarios.push(Scenario::new(format!("{large} x 10 KB"), large, &LARGE));
    }
    // BENCH_ONLY=karafka / raw runs only that side's rounds (for profiling, and for
    // `benches/producer-ab`, which runs each side in its own process against a fresh broker);
    // karafka-rs's path is BENCH_PATH: many (default), buffered or chunks.
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("karafka") => {
            let path = match std::env::var("BENCH_PATH").as_deref() {
                Ok("buffered") => Path::Buffered,
                Ok("chunks") => Path::Chunks,
                _ => Path::Many,
            };
            for s in &scenarios {
                for round in 0..rounds {
                    let (r, c, m) =
                        framework_throughput(&brokers, &topic("fw"), s.messages, s.payload, path);
                    println!(
                        "  {} round {round}: karafka-rs {:>12} msg/s  cpu {:.2} s  reports materialized in {:.1} ms",
                        s.label,
                        rate(r),
                        c.as_secs_f64(),
                        m.as_secs_f64() * 1e3
                    );
                }
            }
            return;
        }
        Ok("raw") => {
            for s in &scenarios {
                for round in 0..rounds {
                    let (r, c) = raw_throughput(&brokers, &topic("raw"), s.messages, s.payload);
                    println!(
                        "  {} round {round}: raw        {:>12} msg/s  cpu {:.2} s",
                        s.label,
                        rate(r),
                        c.as_secs_f64()
                    );
                }
            }
            return;
        }
        _ => {}
    }
    for s in &mut scenarios {
        for round in 0..rounds {
            s.round(&brokers, &topic, round);
        }
    }

    let (mut raw_p50, mut raw_p99, mut fw_p50, mut fw_p99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let s = raw_latency(&brokers, &topic("raw-lat"), sends);
        raw_p50.push(quantile(&s, 0.50).as_secs_f64() * 1e6);
        raw_p99.push(quantile(&s, 0.99).as_secs_f64() * 1e6);
        let s = framework_latency(&brokers, &topic("fw-lat"), sends);
        fw_p50.push(quantile(&s, 0.50).as_secs_f64() * 1e6);
        fw_p99.push(quantile(&s, 0.99).as_secs_f64() * 1e6);
    }

    println!();
    println!(
        "| metric ({broker_name}) | raw rdkafka min / median / max | karafka-rs min / median / max | ratio (median, karafka-rs / raw) |"
    );
    println!("|---|---|---|---|");
    let msgs = |v: f64| rate(v);
    let secs = |v: f64| format!("{v:.2}");
    for s in &scenarios {
        let l = &s.label;
        row(
            &format!("produce_many_async {l}, msg/s"),
            &s.raw,
            &s.many,
            &msgs,
        );
        row("  process CPU, s", &s.raw_cpu, &s.many_cpu, &secs);
        row(
            &format!("buffer_many + flush_async {l}, msg/s"),
            &s.raw,
            &s.buffered,
            &msgs,
        );
        row("  process CPU, s", &s.raw_cpu, &s.buffered_cpu, &secs);
        row(
            &format!("produce_many_async {l} in calls of {CHUNK}, msg/s (to every report in hand)"),
            &s.raw,
            &s.chunks,
            &msgs,
        );
        row("  process CPU, s", &s.raw_cpu, &s.chunks_cpu, &secs);
        let m = Summary::of(&s.materialize);
        println!(
            "| then: karafka-rs builds the Vec of {} DeliveryReports, ms | - | {:.1} / {:.1} / {:.1} | - |",
            s.messages, m.min, m.median, m.max
        );
    }
    row(
        &format!("produce_sync p50, µs ({sends} sends)"),
        &raw_p50,
        &fw_p50,
        &|v| format!("{v:.0}"),
    );
    row(
        &format!("produce_sync p99, µs ({sends} sends)"),
        &raw_p99,
        &fw_p99,
        &|v| format!("{v:.0}"),
    );
}
