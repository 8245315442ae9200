//! At-least-once with virtual partitions, surviving `kill -9`: each partition's batches are
//! split by key into virtual partitions processed in parallel, and every processed message
//! is written to a file before its job returns, so a message the framework marks was
//! durably recorded; one recorded but not committed when the process dies comes again.
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=events GROUP=recorder OUTPUT=/tmp/processed.log \
//!   cargo run -p karafka-pro --example virtual_partitions_at_least_once
//! ```
//!
//! Each line of `OUTPUT` is `<run> <partition> <offset> <key>`; `RUN` names the run
//! (default 0); `DELAY_MS` slows each job down (default 0); `MAX_PARTITIONS` is the virtual
//! partitions per partition (default 5). The process runs until killed. The kill -9 test of
//! karafka-pro drives it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_pro::{VirtualPartitions, VirtualPartitionsTopic};

struct Recorder {
    file: Arc<std::fs::File>,
    run: String,
    delay: Duration,
}

impl Consumer for Recorder {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut lines = String::with_capacity(ctx.messages().len() * 24);
        for m in ctx.messages() {
            lines.push_str(&format!(
                "{} {} {} {}\n",
                self.run,
                m.partition(),
                m.offset(),
                m.key_str().unwrap_or("-")
            ));
        }
        // One write to a file opened for appending: when `consume` returns, the lines are in
        // the kernel, and a killed process cannot lose them.
        (&*self.file).write_all(lines.as_bytes())?;
        Ok(()) // the framework marks this virtual partition's messages
    }
}

fn env(key: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(key).map_err(|_| format!("set {key}").into())
}

fn number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = env("KARAFKA_BROKERS")?;
    let topic = env("TOPIC")?;
    let group = env("GROUP")?;
    let output = env("OUTPUT")?;
    let run = std::env::var("RUN").unwrap_or_else(|_| "0".into());
    let delay = Duration::from_millis(number("DELAY_MS", 0));
    let max_partitions = number("MAX_PARTITIONS", 5) as usize;
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)?,
    );
    let app = App::builder()
        .name(group.as_str())
        .concurrency(max_partitions.max(1) * 2)
        .kafka("bootstrap.servers", brokers)
        .kafka("session.timeout.ms", "6000")
        .kafka("group.instance.id", format!("{group}-member"))
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .kafka("auto.commit.interval.ms", "1000")
        .topic(&topic, move |t| {
            t.consumer(move || Recorder {
                file: file.clone(),
                run: run.clone(),
                delay,
            })
            .virtual_partitions(
                VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec))
                    .max_partitions(max_partitions),
            )
        })
        .build()?;
    let _running = app.start()?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
