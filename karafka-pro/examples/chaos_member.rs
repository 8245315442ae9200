//! A member of the chaos suite (`karafka-pro/tests/chaos.rs`): consumes a topic and records
//! every processed message durably before `consume` returns, with core or Pro features
//! switched on by the environment, until it is killed (or stopped by SIGTERM).
//!
//! ```sh
//! KARAFKA_BROKERS=127.0.0.1:19092 TOPIC=events GROUP=chaos OUTPUT=/tmp/chaos MEMBER=a \
//!   cargo run -p karafka-pro --example chaos_member
//! ```
//!
//! Each processed message is a line `<run> <partition> <offset> <unix ms>` in
//! `OUTPUT/<MEMBER>-<RUN>.log`,
//! written with one `write` per batch before `consume` returns (a killed process cannot lose
//! it, and the framework marks only what was recorded). Settings:
//!
//! - `RUN` (default 0): names the run in the lines and the file;
//! - `DELAY_MS` (default 0): sleep per batch;
//! - `ASSIGNMENT`: `cooperative-sticky` (default), `range` (eager), or `consumer` (KIP-848,
//!   `group.protocol=consumer`);
//! - `STATIC=1`: a `group.instance.id` per member (static membership);
//! - `PREFETCH_MB`: the prefetch budget per subscription group, in MiB (default 64);
//! - `COMMIT_INTERVAL_MS` (default 1000): librdkafka's `auto.commit.interval.ms`, how often
//!   marked offsets are committed (fewer duplicates after a crash against more commits);
//! - `DLQ`: a dead-letter topic for messages that fail twice (payloads are decimal numbers;
//!   any other payload does not decode and fails its batch), with a 200 ms retry back-off;
//!   its producer never creates topics (`allow.auto.create.topics=false`);
//! - `FEATURES`: a comma list of `vp` (virtual partitions by key), `multiplexing` (2
//!   connections), `multiplexing-dynamic` (1 to 3, starting with 1), `lrj` (long-running job),
//!   `swarm` (a supervisor with 2 nodes, each restarted 1 s after it dies; a node
//!   records to `OUTPUT/<MEMBER>-<RUN>-node<N>.log`).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::routing::{DeadLetterQueue, TopicBuilder};
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_pro::{
    LongRunningJobTopic, Multiplexing, MultiplexingSubscriptionGroup, Swarm, SwarmApp,
    VirtualPartitions, VirtualPartitionsTopic,
};

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
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut lines = String::with_capacity(ctx.messages().len() * 32);
        // Payloads are decimal numbers; anything else does not decode (poison): the messages
        // before it are recorded and marked, and the batch fails at it (retried, then
        // dead-lettered when a DLQ is routed).
        let mut poison = None;
        let mut last_good = None;
        for m in ctx.messages() {
            let decodes = m
                .raw_payload()
                .ok()
                .flatten()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok())
                .is_some();
            if !decodes {
                poison = Some(m.offset());
                break;
            }
            lines.push_str(&format!(
                "{} {} {} {at}\n",
                self.run,
                m.partition(),
                m.offset()
            ));
            last_good = Some(m);
        }
        // One append: when `consume` returns (or marks), the lines are in the kernel.
        (&*self.file).write_all(lines.as_bytes())?;
        match poison {
            None => Ok(()),
            Some(offset) => {
                if let Some(m) = last_good {
                    ctx.mark_as_consumed(m);
                }
                Err(format!("payload at offset {offset} does not decode").into())
            }
        }
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
    let output = std::path::PathBuf::from(env("OUTPUT")?);
    let member = std::env::var("MEMBER").unwrap_or_else(|_| "member".into());
    let run = std::env::var("RUN").unwrap_or_else(|_| "0".into());
    let delay = Duration::from_millis(number("DELAY_MS", 0));
    let features = std::env::var("FEATURES").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x.trim() == f);
    for f in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if !["vp", "multiplexing", "multiplexing-dynamic", "lrj", "swarm"].contains(&f) {
            return Err(format!(
                "FEATURES: unknown feature `{f}` (known: vp, multiplexing, multiplexing-dynamic, \
                 lrj, swarm)"
            )
            .into());
        }
    }
    let assignment = std::env::var("ASSIGNMENT").unwrap_or_else(|_| "cooperative-sticky".into());

    std::fs::create_dir_all(&output)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(
            output.join(match std::env::var(karafka_pro::swarm::NODE_ENV) {
                // A swarm node: a file of its own.
                Ok(node) => format!("{member}-{run}-node{node}.log"),
                Err(_) => format!("{member}-{run}.log"),
            }),
        )?;
    // A newline first: a line an earlier, killed run of this node left unfinished ends here
    // (and, cut short, is not a record: see `karafka_testing::chaos::parse_record`).
    file.write_all(b"\n")?;
    let file = Arc::new(file);

    let mut app = App::builder()
        .name(group.as_str())
        .concurrency(8)
        .kafka("bootstrap.servers", brokers.as_str())
        .kafka(
            "auto.commit.interval.ms",
            number("COMMIT_INTERVAL_MS", 1000).to_string(),
        );
    app = match assignment.as_str() {
        "consumer" => app.kafka("group.protocol", "consumer"),
        "range" | "roundrobin" | "cooperative-sticky" => app
            .kafka("session.timeout.ms", "6000")
            .kafka("partition.assignment.strategy", assignment.as_str()),
        other => {
            return Err(format!(
                "ASSIGNMENT: unknown `{other}` (known: cooperative-sticky, range, roundrobin, consumer)"
            )
            .into());
        }
    };
    if let Ok(mb) = std::env::var("PREFETCH_MB") {
        let mb: u64 = mb.parse().map_err(|_| "PREFETCH_MB: a number of MiB")?;
        app = app.prefetch_budget(mb * 1024 * 1024);
    }
    if std::env::var("STATIC").is_ok_and(|v| v == "1") {
        app = app.kafka("group.instance.id", format!("{group}-{member}"));
    }

    let dlq = std::env::var("DLQ").ok().filter(|d| !d.is_empty());
    if dlq.is_some() {
        // Topics are never created by a produce (as on many managed clusters): the dispatch
        // to a dead-letter topic that does not exist yet waits for it (librdkafka holds the
        // message up to `topic.metadata.propagation.max.ms`, then fails it: retried).
        let producer = karafka_producer::Producer::builder()
            .kafka("bootstrap.servers", brokers.as_str())
            .kafka("allow.auto.create.topics", "false")
            .build()?;
        app = app
            .producer(producer)
            .pause_timeout(Duration::from_millis(200))
            .pause_max_timeout(Duration::from_secs(2));
    }
    let swarm = has("swarm");
    if swarm {
        app = app.swarm(
            Swarm::new()
                .nodes(2)
                .node_restart_timeout(Duration::from_secs(1)),
        );
    }
    let (vp, lrj) = (has("vp"), has("lrj"));
    let route = move |t: TopicBuilder| {
        let t = t.consumer(move || Recorder {
            file: file.clone(),
            run: run.clone(),
            delay,
        });
        let t = match &dlq {
            Some(topic) => t.dead_letter_queue(DeadLetterQueue::new(topic.as_str()).max_retries(1)),
            None => t,
        };
        let t = if vp {
            t.virtual_partitions(
                VirtualPartitions::new(|m| m.key().map(<[u8]>::to_vec)).max_partitions(4),
            )
        } else {
            t
        };
        if lrj { t.long_running_job(true) } else { t }
    };
    let multiplexing = if has("multiplexing") {
        Some(Multiplexing::new(2))
    } else if has("multiplexing-dynamic") {
        Some(
            Multiplexing::new(3)
                .min(1)
                .boot(1)
                .scale_delay(Duration::from_secs(1)),
        )
    } else {
        None
    };
    let app = match multiplexing {
        Some(config) => app
            // Dynamic multiplexing decides from librdkafka's statistics.
            .kafka("statistics.interval.ms", "500")
            .consumer_group(&group, |cg| {
                cg.subscription_group("chaos", |sg| sg.multiplexing(config).topic(&topic, route))
            }),
        None => app.topic(&topic, route),
    }
    .build()?;
    if swarm {
        // The supervisor (and, re-executed with the node variable set, each node).
        let args = ["chaos_member", "swarm"];
        let code = karafka_consumer::cli::run_from(&app, args);
        return if code == std::process::ExitCode::SUCCESS {
            Ok(())
        } else {
            Err(format!("swarm ended with {code:?}").into())
        };
    }
    let running = app.start()?;
    // Until killed; SIGTERM (or Ctrl-C) stops gracefully.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, std::io::Error>(())
    })?;
    running.stop_blocking()?;
    Ok(())
}
