//! Producer scenarios, karafka-rs against raw rdkafka in the same run, on the same embedded
//! cluster (or `KARAFKA_BROKERS`), alternating runs:
//!
//! - throughput: 1M × 100-byte messages (`BENCH_MESSAGES`), `produce_many_async` then waiting
//!   for the batch, against a raw `BaseProducer` send loop whose delivery callback counts;
//!   both timed from the first send to the last delivery report (karafka-rs: when its batch
//!   handle wakes); the time karafka-rs then takes to hand back the `Vec` of reports is
//!   reported on its own line;
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
use karafka_benches::{Summary, env_usize, process_cpu, quantile, rate};
use karafka_core::KafkaSettings;
use karafka_producer::{Message, Producer};
use karafka_testing::{EmbeddedCluster, client_config};
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

const PAYLOAD: [u8; 100] = [b'x'; 100];

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
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::Acquire) {
            producer.poll(Duration::from_millis(100));
        }
    });
    (stop, handle)
}

fn raw_throughput(brokers: &str, topic: &str, n: usize) -> (f64, Duration) {
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
    let cpu = process_cpu();
    let started = Instant::now();
    for _ in 0..n {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&PAYLOAD[..]);
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
    let ctx = producer.context();
    let mut done = ctx.done.lock().unwrap();
    while done.is_none() {
        done = ctx.cv.wait(done).unwrap();
    }
    let took = done.unwrap() - started;
    drop(done);
    let cpu = process_cpu()
        .zip(cpu)
        .map(|(b, a)| b - a)
        .unwrap_or_default();
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
            .send(BaseRecord::<[u8], [u8]>::to(topic).payload(&PAYLOAD[..]))
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

/// Returns (msg/s to the last delivery report, CPU, time to materialize the reports after it).
fn framework_throughput(brokers: &str, topic: &str, n: usize) -> (f64, Duration, Duration) {
    let producer = Producer::builder()
        .kafka_settings(&throughput_settings(brokers))
        .build()
        .unwrap();
    producer.connect().unwrap();
    let topic: Arc<str> = topic.into();
    let payload = Bytes::from_static(&PAYLOAD);
    let messages: Vec<Message> = (0..n)
        .map(|_| Message {
            topic: topic.clone(),
            payload: Some(payload.clone()),
            ..Message::new(topic.clone(), Bytes::new())
        })
        .collect();
    let cpu = process_cpu();
    let started = Instant::now();
    let mut delivery = producer.produce_many_async(messages).unwrap();
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
    let cpu = process_cpu()
        .zip(cpu)
        .map(|(b, a)| b - a)
        .unwrap_or_default();
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
    let payload = Bytes::from_static(&PAYLOAD);
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

fn main() {
    let n = env_usize("BENCH_MESSAGES", 1_000_000);
    let rounds = env_usize("BENCH_ROUNDS", 3);
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
    let topic = |name: &str, round: usize| -> String {
        let t = format!("bench-{name}-{}-{round}", std::process::id());
        if let Some(c) = &cluster {
            c.create_topic(&t, 1).unwrap();
        }
        t
    };
    println!(
        "producer benchmarks on {broker_name}: {n} x 100 B, {rounds} rounds, alternating raw / karafka-rs"
    );

    // BENCH_ONLY=karafka runs only karafka-rs' throughput rounds (for profiling).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("karafka") {
        for round in 0..rounds {
            let (r, c, m) = framework_throughput(&brokers, &topic("fw", round), n);
            println!(
                "  round {round}: karafka-rs {:>12} msg/s  cpu {:.2} s  reports materialized in {:.1} ms",
                rate(r),
                c.as_secs_f64(),
                m.as_secs_f64() * 1e3
            );
        }
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("raw") {
        for round in 0..rounds {
            let (r, c) = raw_throughput(&brokers, &topic("raw", round), n);
            println!(
                "  round {round}: raw        {:>12} msg/s  cpu {:.2} s",
                rate(r),
                c.as_secs_f64()
            );
        }
        return;
    }
    let (mut raw_rates, mut fw_rates, mut raw_cpu, mut fw_cpu) = (vec![], vec![], vec![], vec![]);
    let mut materialize = vec![];
    for round in 0..rounds {
        let (r, c) = raw_throughput(&brokers, &topic("raw", round), n);
        println!(
            "  round {round}: raw        {:>12} msg/s  cpu {:.2} s",
            rate(r),
            c.as_secs_f64()
        );
        raw_rates.push(r);
        raw_cpu.push(c.as_secs_f64());
        let (r, c, m) = framework_throughput(&brokers, &topic("fw", round), n);
        println!(
            "  round {round}: karafka-rs {:>12} msg/s  cpu {:.2} s  reports materialized in {:.1} ms",
            rate(r),
            c.as_secs_f64(),
            m.as_secs_f64() * 1e3
        );
        materialize.push(m.as_secs_f64() * 1e3);
        fw_rates.push(r);
        fw_cpu.push(c.as_secs_f64());
    }

    let (mut raw_p50, mut raw_p99, mut fw_p50, mut fw_p99) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let s = raw_latency(&brokers, &topic("raw-lat", round), sends);
        raw_p50.push(quantile(&s, 0.50).as_secs_f64() * 1e6);
        raw_p99.push(quantile(&s, 0.99).as_secs_f64() * 1e6);
        let s = framework_latency(&brokers, &topic("fw-lat", round), sends);
        fw_p50.push(quantile(&s, 0.50).as_secs_f64() * 1e6);
        fw_p99.push(quantile(&s, 0.99).as_secs_f64() * 1e6);
    }

    let row = |name: &str, raw: &[f64], fw: &[f64], fmt: &dyn Fn(f64) -> String| {
        let (r, f) = (Summary::of(raw), Summary::of(fw));
        println!(
            "| {name} | {} / {} / {} | {} / {} / {} | {:.3} |",
            fmt(r.min),
            fmt(r.median),
            fmt(r.max),
            fmt(f.min),
            fmt(f.median),
            fmt(f.max),
            f.median / r.median
        );
    };
    println!();
    println!(
        "| metric | raw rdkafka min / median / max | karafka-rs min / median / max | ratio (median, karafka-rs / raw) |"
    );
    println!("|---|---|---|---|");
    row(
        "produce_many_async 1M x 100 B, msg/s",
        &raw_rates,
        &fw_rates,
        &|v| rate(v),
    );
    row("process CPU for the run, s", &raw_cpu, &fw_cpu, &|v| {
        format!("{v:.2}")
    });
    let m = Summary::of(&materialize);
    println!(
        "| then: karafka-rs builds the Vec of {n} DeliveryReports, ms | - | {:.1} / {:.1} / {:.1} | - |",
        m.min, m.median, m.max
    );
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
