//! Swarm mode: `swarm` runs a supervisor and node processes, each consuming `TOPIC` and
//! recording every processed message to a file before its job returns.
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:9092 TOPIC=events GROUP=recorder OUTPUT=/tmp/processed.log \
//!   cargo run -p karafka-pro --example swarm -- swarm
//! ```
//!
//! Each line of `OUTPUT` is `<node> <pid> <partition> <offset> <unix ms>`. With `EVENTS`
//! set, every swarm event (supervisor's and nodes') is appended there as
//! `<unix ms> <name> <summary>`. Settings from the environment (all optional): `NODES`
//! (default 3), `REPORT_TIMEOUT_MS`, `REPORT_INTERVAL_MS`, `RESTART_TIMEOUT_MS`,
//! `SHUTDOWN_TIMEOUT_MS`, `MEMORY_LIMIT_MB`, `CONSUMING_TTL_MS`, `MAX_WAIT_MS`,
//! `MAX_MESSAGES`, `CONCURRENCY`, `DELAY_MS` (per batch), `WORK` (`sleep`, the default, or
//! `cpu`: `DELAY_MS` of computing per batch), `STATIC=1` (static membership), and, for
//! the tests of karafka-pro that drive it, `CRASH_NODE` (that node exits with code 1 as it
//! starts) and `LEAK_NODE` + `LEAK_MB` (that node holds `LEAK_MB` MiB from its start).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_core::instrumentation::{Event, Monitor, SwarmEvent, TracingListener};
use karafka_pro::{Swarm, SwarmApp};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

struct Recorder {
    file: Arc<std::fs::File>,
    node: String,
    delay: Duration,
    cpu: bool,
}

impl Consumer for Recorder {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if !self.delay.is_zero() {
            if self.cpu {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < self.delay {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(31).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
            } else {
                tokio::time::sleep(self.delay).await;
            }
        }
        let pid = std::process::id();
        let ms = now_ms();
        let mut lines = String::with_capacity(ctx.messages().len() * 32);
        for m in ctx.messages() {
            lines.push_str(&format!(
                "{} {pid} {} {} {ms}\n",
                self.node,
                m.partition(),
                m.offset()
            ));
        }
        // One write to a file opened for appending: when `consume` returns, the lines are in
        // the kernel, and a killed process cannot lose them.
        (&*self.file).write_all(lines.as_bytes())?;
        Ok(())
    }
}

fn env(key: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(key).map_err(|_| format!("set {key}").into())
}

fn number(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let brokers = env("KARAFKA_BROKERS")?;
    let topic = env("TOPIC")?;
    let group = env("GROUP")?;
    let output = env("OUTPUT")?;
    // Set in nodes only.
    let node = std::env::var(karafka_pro::swarm::NODE_ENV).unwrap_or_else(|_| "-".into());
    let delay = Duration::from_millis(number("DELAY_MS").unwrap_or(0));
    let cpu = std::env::var("WORK").is_ok_and(|w| w == "cpu");
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)?,
    );
    let mut swarm = Swarm::new().nodes(number("NODES").unwrap_or(3) as usize);
    if let Some(ms) = number("REPORT_TIMEOUT_MS") {
        swarm = swarm.node_report_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = number("REPORT_INTERVAL_MS") {
        swarm = swarm.report_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = number("RESTART_TIMEOUT_MS") {
        swarm = swarm.node_restart_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = number("SHUTDOWN_TIMEOUT_MS") {
        swarm = swarm.shutdown_timeout(Duration::from_millis(ms));
    }
    if let Some(mb) = number("MEMORY_LIMIT_MB") {
        swarm = swarm.memory_limit(mb * 1024 * 1024);
    }
    if let Some(ms) = number("CONSUMING_TTL_MS") {
        swarm = swarm.consuming_ttl(Duration::from_millis(ms));
    }
    let crash = number("CRASH_NODE").map(|n| n as usize);
    let leak = number("LEAK_NODE").map(|n| (n as usize, number("LEAK_MB").unwrap_or(256)));
    let events = match std::env::var("EVENTS") {
        Ok(path) => Some(Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        Err(_) => None,
    };
    let monitor = Monitor::new();
    monitor.subscribe(TracingListener::new());
    monitor.subscribe_fn(move |event: &Event| {
        let Event::Swarm(e) = event else {
            return;
        };
        if let Some(file) = &events {
            let line = format!("{} {} {event}\n", now_ms(), event.name());
            let _ = (&**file).write_all(line.as_bytes());
        }
        if let SwarmEvent::NodeStarted { node } = e {
            if crash == Some(*node) {
                std::process::exit(1);
            }
            if let Some((leaky, mb)) = leak {
                if leaky == *node {
                    // Touched, so it is resident.
                    let held = vec![1u8; (mb as usize) * 1024 * 1024];
                    std::mem::forget(held);
                }
            }
        }
    });
    let mut builder = App::builder()
        .name(group.as_str())
        .kafka("bootstrap.servers", brokers)
        .kafka("session.timeout.ms", "6000")
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .kafka("auto.commit.interval.ms", "1000")
        .monitor(monitor)
        .swarm(swarm);
    if let Some(n) = number("CONCURRENCY") {
        builder = builder.concurrency(n as usize);
    }
    if std::env::var("STATIC").is_ok_and(|s| s == "1") {
        builder = builder.kafka("group.instance.id", format!("{group}-member"));
    }
    let max_wait = number("MAX_WAIT_MS").map(Duration::from_millis);
    let max_messages = number("MAX_MESSAGES").map(|n| n as usize);
    let app = builder
        .topic(&topic, move |t| {
            let mut t = t.consumer(move || Recorder {
                file: file.clone(),
                node: node.clone(),
                delay,
                cpu,
            });
            if let Some(wait) = max_wait {
                t = t.max_wait_time(wait);
            }
            if let Some(n) = max_messages {
                t = t.max_messages(n);
            }
            t
        })
        .build()?;
    Ok(karafka_consumer::cli::run(&app))
}
