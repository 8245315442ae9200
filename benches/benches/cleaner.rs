//! The cleaner API's memory: peak RSS while one partition's backlog of large payloads
//! (default 1,000 × 1 MiB) is consumed with `max_messages` 100 by a consumer that touches
//! every page of every payload, without the cleaner and with it, each in a child process
//! (this binary again), all in the same run on the same topic:
//!
//! - `plain`: `for m in ctx.messages()`, `m.raw_payload()` (a copy, cached by the message
//!   until the batch is dropped);
//! - `each_clean + raw_payload`: the cleaning iteration, the same copy (freed with each
//!   message's handle), each message cleaned as the loop moves on;
//! - `each_clean + payload_bytes`: the cleaning iteration, the payload read in place.
//!
//! Each child prints its RSS before the app starts (idle) and its peak (VmHWM) once every
//! message was processed. The prefetch is fixed (`queued.max.messages.kbytes`, default
//! 131072 = 128 MiB, enough for a full batch of 100) so the bound is known:
//! growth ≤ prefetch + the fetch in flight + a few payloads.
//!
//! Each message also takes 5 ms of (sleeping) work, so the broker fetches ahead of the
//! consumer and batches are full.
//!
//! `cargo bench -p karafka-benches --bench cleaner`; `KARAFKA_BROKERS=127.0.0.1:19092` for a
//! real broker (else the embedded mock); `BENCH_CLEANER_MESSAGES`, `BENCH_CLEANER_PAYLOAD`
//! (bytes), `BENCH_CLEANER_PREFETCH_KB`, `BENCH_CLEANER_WORK_MS`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use karafka_benches::{child_result, env_usize, rss_bytes};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_pro::CleanerMessages;
use karafka_producer::{Message, Producer};
use karafka_testing::{EmbeddedCluster, TestBroker};

const MODES: [&str; 3] = [
    "plain",
    "each_clean + raw_payload",
    "each_clean + payload_bytes",
];

fn suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Reads one byte of every page of `bytes`.
fn touch(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum()
}

/// This process's peak resident set size so far (VmHWM), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Touching {
    mode: usize,
    count: Arc<AtomicUsize>,
    /// Work per message (so the backlog is prefetched and batches are full).
    work: Duration,
}

impl Consumer for Touching {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let mut sum = 0;
        match self.mode {
            0 => {
                for m in ctx.messages() {
                    sum += touch(m.raw_payload()?.map_or(&[][..], |b| &b[..]));
                    tokio::time::sleep(self.work).await;
                }
            }
            1 => {
                let mut batch = ctx.messages().each_clean();
                while let Some(m) = batch.next() {
                    sum += touch(m.raw_payload()?.map_or(&[][..], |b| &b[..]));
                    tokio::time::sleep(self.work).await;
                }
            }
            _ => {
                let mut batch = ctx.messages().each_clean();
                while let Some(m) = batch.next() {
                    sum += touch(m.payload_bytes()?.unwrap_or_default());
                    tokio::time::sleep(self.work).await;
                }
            }
        }
        black_box(sum);
        self.count.fetch_add(ctx.messages().len(), Ordering::AcqRel);
        Ok(())
    }
}

fn child(mode: usize) {
    let brokers = std::env::var("BENCH_CLEANER_BROKERS").unwrap();
    let topic = std::env::var("BENCH_CLEANER_TOPIC").unwrap();
    let messages = env_usize("BENCH_CLEANER_MESSAGES", 1_000);
    let prefetch_kb = env_usize("BENCH_CLEANER_PREFETCH_KB", 131_072);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let mut builder = App::builder()
        .name("bench-cleaner")
        .kafka("bootstrap.servers", &brokers);
    if prefetch_kb > 0 {
        builder = builder.kafka("queued.max.messages.kbytes", prefetch_kb.to_string());
    }
    let app = builder
        .kafka("session.timeout.ms", "6000")
        .kafka("fetch.max.bytes", "8388608")
        .kafka("message.max.bytes", "4194304")
        .consumer_group(&format!("bench-cleaner-{mode}-{}", suffix()), |cg| {
            cg.topic(&topic, move |t| {
                let c = c.clone();
                t.consumer(move || Touching {
                    mode,
                    count: c.clone(),
                    work: Duration::from_millis(env_usize("BENCH_CLEANER_WORK_MS", 5) as u64),
                })
                .max_messages(100)
            })
        })
        .build()
        .unwrap();
    let idle = rss_bytes().unwrap_or_default();
    let started = Instant::now();
    let running = app.start().unwrap();
    let deadline = started + Duration::from_secs(env_usize("BENCH_CLEANER_DEADLINE_S", 600) as u64);
    while count.load(Ordering::Acquire) < messages {
        assert!(Instant::now() < deadline, "the backlog was not consumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let peak = peak_rss_bytes().unwrap_or_default();
    let end = rss_bytes().unwrap_or_default();
    running.stop_blocking().unwrap();
    println!("result {idle} {peak} {end} {:.3}", took.as_secs_f64());
}

fn main() {
    if let Ok(mode) = std::env::var("BENCH_CLEANER_CHILD") {
        child(mode.parse().unwrap_or(0));
        return;
    }
    let messages = env_usize("BENCH_CLEANER_MESSAGES", 1_000);
    let size = env_usize("BENCH_CLEANER_PAYLOAD", 1 << 20);
    let prefetch_kb = env_usize("BENCH_CLEANER_PREFETCH_KB", 131_072);
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
    let topic = format!("bench-cleaner-{}", suffix());
    broker.create_topic(&topic, 1).unwrap();
    let producer = Producer::builder()
        .kafka("bootstrap.servers", &brokers)
        .kafka("message.max.bytes", "4194304")
        .max_payload_size(4 << 20)
        .build()
        .unwrap();
    let name: Arc<str> = topic.as_str().into();
    let mut payload = vec![0u8; size];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let payload = Bytes::from(payload);
    let produced = Instant::now();
    let batch: Vec<Message> = (0..messages)
        .map(|_| Message::new(name.clone(), payload.clone()))
        .collect();
    // Errors carry the messages: report only what failed, not a gigabyte of payloads.
    let delivered = producer
        .produce_many_async(batch)
        .map_err(|e| e.to_string())
        .and_then(|d| d.wait(Duration::from_secs(600)).map_err(|e| e.to_string()));
    if let Err(e) = delivered {
        panic!("producing the backlog failed: {}", &e[..e.len().min(400)]);
    }
    producer.close().unwrap();
    let mib = |b: f64| b / f64::from(1 << 20);
    // 0: the engine's prefetch budget sets the queue (a third of it per partition; its other
    // thirds are for the fetch in flight and the batch the app holds).
    let prefetch = if prefetch_kb == 0 {
        karafka_consumer::DEFAULT_PREFETCH_BUDGET as f64
    } else {
        prefetch_kb as f64 * 1024.0
    };
    let prefetch_label = if prefetch_kb == 0 {
        format!(
            "the default prefetch_budget ({:.0} MiB: queue, fetch in flight and the batch held)",
            mib(prefetch)
        )
    } else {
        format!(
            "queued.max.messages.kbytes {prefetch_kb} ({:.0} MiB)",
            mib(prefetch)
        )
    };
    println!(
        "cleaner memory: {messages} × {:.2} MiB in 1 partition, max_messages 100, \
         {prefetch_label}, produced in {:.1} s, on {}",
        mib(size as f64),
        produced.elapsed().as_secs_f64(),
        if mock {
            "the embedded mock"
        } else {
            brokers.as_str()
        }
    );
    println!();
    println!(
        "| consumer | idle RSS MiB | peak RSS MiB | growth MiB | growth − prefetch, in payloads | end RSS MiB | s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, label) in MODES.iter().enumerate() {
        let line = child_result(
            &[
                ("BENCH_CLEANER_CHILD", &mode.to_string()),
                ("BENCH_CLEANER_BROKERS", &brokers),
                ("BENCH_CLEANER_TOPIC", &topic),
                ("BENCH_CLEANER_MESSAGES", &messages.to_string()),
                ("BENCH_CLEANER_PREFETCH_KB", &prefetch_kb.to_string()),
            ],
            "result",
            "the cleaner child",
        );
        let v: Vec<f64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let (idle, peak, end, took) = (v[0], v[1], v[2], v[3]);
        let growth = peak - idle;
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {took:.1} |",
            mib(idle),
            mib(peak),
            mib(growth),
            (growth - prefetch) / size as f64,
            mib(end),
        );
    }
    println!(
        "\nbound with the cleaner: growth ≤ {prefetch_label} + a few payloads ({:.2} MiB each){}",
        mib(size as f64),
        if prefetch_kb == 0 {
            ""
        } else {
            " + the batch's payloads not processed yet (taken out of librdkafka's queue, they no \
             longer count in it)"
        }
    );
}
