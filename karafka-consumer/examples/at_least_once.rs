//! At-least-once processing that survives `kill -9`: every processed message is written to a
//! file before `consume` returns, so a message the framework marks was durably recorded, and a
//! message recorded but not yet committed when the process dies is delivered again.
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=events GROUP=recorder OUTPUT=/tmp/processed.log \
//!   cargo run -p karafka-consumer --example at_least_once
//! ```
//!
//! Each line of `OUTPUT` is `<run> <partition> <offset>`; `RUN` names the run (default 0);
//! `DELAY_MS` slows each batch down (default 0); `SCHEDULING` is `partition` (default) or `poll`.
//! The process runs until killed (or `STOP_AFTER`
//! messages of this run are recorded). The kill -9 test of karafka-consumer drives it.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context, Scheduling};

struct Recorder {
    file: Arc<std::fs::File>,
    run: String,
    delay: Duration,
    recorded: Arc<AtomicUsize>,
}

impl Consumer for Recorder {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut lines = String::with_capacity(ctx.messages().len() * 16);
        for m in ctx.messages() {
            lines.push_str(&format!("{} {} {}\n", self.run, m.partition(), m.offset()));
        }
        // One write to a file opened for appending: when `consume` returns, the lines are in
        // the kernel, and a killed process cannot lose them.
        (&*self.file).write_all(lines.as_bytes())?;
        self.recorded
            .fetch_add(ctx.messages().len(), Ordering::Relaxed);
        Ok(()) // the framework marks the batch; librdkafka commits it in the background
    }
}

fn env(key: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(key).map_err(|_| format!("set {key}").into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = env("KARAFKA_BROKERS")?;
    let topic = env("TOPIC")?;
    let group = env("GROUP")?;
    let output = env("OUTPUT")?;
    let run = std::env::var("RUN").unwrap_or_else(|_| "0".into());
    let delay = Duration::from_millis(
        std::env::var("DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    // `partition` (the default) or `poll` (Karafka's rule).
    let scheduling: Scheduling = match std::env::var("SCHEDULING") {
        Ok(s) => s.parse()?,
        Err(_) => Scheduling::default(),
    };
    let stop_after: Option<usize> = std::env::var("STOP_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());

    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)?,
    );
    let recorded = Arc::new(AtomicUsize::new(0));
    let (f, r) = (file.clone(), recorded.clone());
    let app = App::builder()
        .name(group.as_str())
        .scheduling(scheduling)
        .kafka("bootstrap.servers", brokers)
        .kafka("session.timeout.ms", "6000")
        // The same member id on every run: a restarted process takes its partitions back at once
        // (on brokers that implement static membership).
        .kafka("group.instance.id", format!("{group}-member"))
        // Incremental rebalances: only moved partitions are revoked (and committed).
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .kafka("auto.commit.interval.ms", "1000")
        .topic(&topic, move |t| {
            t.consumer(move || Recorder {
                file: f.clone(),
                run: run.clone(),
                delay,
                recorded: r.clone(),
            })
        })
        .build()?;
    let running = app.start()?;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if stop_after.is_some_and(|n| recorded.load(Ordering::Relaxed) >= n) {
            break;
        }
    }
    running.stop_blocking()?;
    Ok(())
}
