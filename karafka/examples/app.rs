//! A small deployable app: routes, the CLI (`server`, `info`, `topics ...`), and a record of
//! what it did. The server tests drive it as a real process (signals, exit codes).
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=visits cargo run --example app -- server
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=visits cargo run --example app -- info
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=visits cargo run --example app -- topics plan
//! ```
//!
//! Environment: `KARAFKA_BROKERS` (required), `TOPIC` (default `visits`), `GROUP` (default
//! `example-app`), `OUTPUT` (a file that gets `start <partition> <first> <last>` and `end ...`
//! per batch and `status <status>` per status change), `BATCH_MS` (time each batch takes,
//! default 0), `STUCK` (set: every batch hangs for an hour), `SHUTDOWN_TIMEOUT_MS` (default
//! 60000), `SASL_PASSWORD` (passed as `sasl.password`, to show `info` redacts it).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use karafka::instrumentation::Event;
use karafka::payload::Raw;
use karafka::routing::Declaratives;
use karafka::{App, ConsumeResult, Consumer, Context};

/// Appends lines to `OUTPUT` (when set).
#[derive(Clone)]
struct Record(Option<Arc<PathBuf>>);

impl Record {
    fn line(&self, line: String) {
        if let Some(path) = &self.0 {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.as_path())
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = appended {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
    }
}

struct Visits {
    record: Record,
    batch_time: Duration,
    stuck: bool,
}

impl Consumer for Visits {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let (Some(first), Some(last)) = (ctx.messages().first(), ctx.messages().last()) else {
            return Ok(());
        };
        let span = format!("{} {} {}", ctx.partition(), first.offset(), last.offset());
        self.record.line(format!("start {span}"));
        if self.stuck {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(self.batch_time).await;
        self.record.line(format!("end {span}"));
        Ok(())
    }
}

fn env_ms(name: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name} must be milliseconds, got `{v}`")),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

fn build() -> Result<App, Box<dyn std::error::Error>> {
    let brokers = std::env::var("KARAFKA_BROKERS")
        .map_err(|_| "set KARAFKA_BROKERS to the broker list, e.g. 127.0.0.1:9092")?;
    let topic = std::env::var("TOPIC").unwrap_or_else(|_| "visits".into());
    let group = std::env::var("GROUP").unwrap_or_else(|_| "example-app".into());
    let record = Record(std::env::var_os("OUTPUT").map(|p| Arc::new(PathBuf::from(p))));
    let batch_time = env_ms("BATCH_MS", 0)?;
    let stuck = std::env::var_os("STUCK").is_some();

    let mut builder = App::builder()
        .name(group)
        .kafka("bootstrap.servers", brokers)
        .kafka("session.timeout.ms", "6000")
        .shutdown_timeout(env_ms("SHUTDOWN_TIMEOUT_MS", 60_000)?);
    // Secrets come from the environment (never from the code); `info` prints them redacted.
    for (var, key) in [
        ("SASL_PASSWORD", "sasl.password"),
        ("SSL_KEY_PASSWORD", "ssl.key.password"),
        ("SSL_KEY_PEM", "ssl.key.pem"),
        ("SSL_KEYSTORE_PASSWORD", "ssl.keystore.password"),
    ] {
        if let Ok(value) = std::env::var(var) {
            builder = builder.kafka(key, value);
        }
    }
    let consumer_record = record.clone();
    let app = builder
        .topic(&topic, move |t| {
            t.consumer(move || Visits {
                record: consumer_record.clone(),
                batch_time,
                stuck,
            })
            .declaratives(Declaratives::new().partitions(3))
        })
        .build()?;
    app.monitor().subscribe_fn(move |event| {
        if let Event::AppStatus { status, .. } = event {
            record.line(format!("status {status}"));
        }
    });
    Ok(app)
}

fn main() -> ExitCode {
    match build() {
        Ok(app) => karafka::cli::run(&app),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
