//! The server as a process: signals, exit codes, the shutdown report, `info`; embedding two
//! apps in one process, twice; `topics migrate` through the CLI.
//!
//! The process tests run `examples/app.rs` (a real binary) against the test broker: the
//! embedded cluster listens on loopback, so a child process can use it too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use karafka::cli::{self, TopicsAction};
use karafka::consumer::admin::Admin;
use karafka::payload::Raw;
use karafka::producer::Message;
use karafka::routing::Declaratives;
use karafka::{App, ConsumeResult, Consumer, Context, KafkaSettings, Producer};
use karafka_testing::{Capability, TestBroker, unique_group, unique_topic, wait_until};

fn app_binary() -> PathBuf {
    karafka_testing::example_binary("karafka", "app").unwrap()
}

/// A started `app server` with its record file.
struct Server {
    child: Child,
    output: PathBuf,
}

impl Server {
    fn start(broker: &TestBroker, topic: &str, group: &str, env: &[(&str, &str)]) -> Server {
        let output = std::env::temp_dir().join(format!("{}.out", unique_topic("server")));
        let mut command = Command::new(app_binary());
        command
            .arg("server")
            .env("KARAFKA_BROKERS", broker.bootstrap_servers())
            .env("TOPIC", topic)
            .env("GROUP", group)
            .env("OUTPUT", &output)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        Server {
            child: command.spawn().expect("start the app example"),
            output,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait_for_line(&self, what: &str, line: impl Fn(&str) -> bool) {
        wait_until(Duration::from_secs(60), || {
            self.lines().iter().any(|l| line(l))
        })
        .unwrap_or_else(|_| panic!("the app never wrote {what}; it wrote {:?}", self.lines()));
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own live child; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits (at most `within`) for the process to exit; kills it past that.
    fn exit(mut self, within: Duration) -> (ExitStatus, String, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let lines = self.lines();
                let Output { stderr, .. } = self.child.wait_with_output().unwrap();
                let _ = std::fs::remove_file(&self.output);
                return (status, String::from_utf8_lossy(&stderr).into_owned(), lines);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let out = self.child.wait_with_output().unwrap();
                panic!(
                    "the app did not exit within {within:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn produce(broker: &TestBroker, topic: &str, count: usize) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    let batch = (0..count)
        .map(|i| Message::new(topic, format!("visit {i}")).partition(0))
        .collect();
    producer.produce_many_sync(batch).unwrap();
    producer.close().unwrap();
}

/// `(kind, partition, first, last)` of the `start`/`end` lines.
/// CPU time (user + system) process `pid` used so far, from `/proc/<pid>/stat`.
fn child_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // 100 clock ticks a second on Linux.
    Duration::from_millis(ticks * 10)
}

fn batches(lines: &[String], kind: &str) -> Vec<(i32, i64, i64)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            if parts.next()? != kind {
                return None;
            }
            Some((
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn admin(broker: &TestBroker) -> Admin {
    Admin::new(&KafkaSettings::new().with("bootstrap.servers", broker.bootstrap_servers())).unwrap()
}

#[test]
fn sigterm_mid_batch_finishes_the_batch_commits_and_a_restart_does_not_reprocess_it() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("sigterm");
    let group = unique_group("sigterm");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, 20);

    let server = Server::start(&broker, &topic, &group, &[("BATCH_MS", "1500")]);
    server.wait_for_line("a batch start", |l| l.starts_with("start "));
    server.signal(libc::SIGTERM);
    let (status, stderr, lines) = server.exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{stderr}"
    );
    let started = batches(&lines, "start");
    let ended = batches(&lines, "end");
    assert_eq!(started, ended, "every started batch finished: {lines:?}");
    let last = ended.iter().map(|b| b.2).max().expect("a batch ended");
    assert!(lines.iter().any(|l| l == "status stopped"), "{lines:?}");
    let committed = admin(&broker).committed_offsets(&group, &topic).unwrap();
    assert_eq!(
        committed.get(&0),
        Some(&(last + 1)),
        "the batch's offsets were committed"
    );

    // A restart picks up after the committed batch.
    produce(&broker, &topic, 1);
    let server = Server::start(&broker, &topic, &group, &[]);
    server.wait_for_line("the new message", |l| {
        l.starts_with("end ") && l.ends_with(&format!(" {}", last + 1))
    });
    server.signal(libc::SIGTERM);
    let (status, stderr, lines) = server.exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let again: Vec<_> = batches(&lines, "start")
        .into_iter()
        .filter(|b| b.1 <= last)
        .collect();
    assert!(again.is_empty(), "reprocessed after the restart: {again:?}");
}

#[test]
fn sigtstp_quiets_then_sigterm_stops() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("sigtstp");
    let group = unique_group("sigtstp");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, 5);

    // Each batch takes 1.5 s: the quiet signal comes while one runs.
    let server = Server::start(&broker, &topic, &group, &[("BATCH_MS", "1500")]);
    server.wait_for_line("a batch start", |l| l.starts_with("start "));
    server.signal(libc::SIGTSTP);
    server.wait_for_line("status quiet", |l| l == "status quiet");
    // `quiet` is announced once the running batch ended, not before.
    let lines = server.lines();
    let quiet_at = lines.iter().position(|l| l == "status quiet").unwrap();
    assert_eq!(
        batches(&lines[..quiet_at], "start"),
        batches(&lines[..quiet_at], "end"),
        "quiet announced while a batch ran: {lines:?}"
    );
    let before = batches(&server.lines(), "start").len();
    produce(&broker, &topic, 5);
    // Quiet: nothing new is handed out, yet the process lives on, idle.
    let cpu_before = child_cpu(server.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let quiet_cpu = child_cpu(server.child.id()).saturating_sub(cpu_before);
    assert!(
        quiet_cpu < Duration::from_millis(400),
        "the quiet process used {quiet_cpu:?} of CPU in 2 s"
    );
    let quiet_lines = server.lines();
    assert_eq!(
        batches(&quiet_lines, "start").len(),
        before,
        "a batch started while quiet: {quiet_lines:?}"
    );
    server.signal(libc::SIGTERM);
    let (status, stderr, lines) = server.exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let statuses: Vec<_> = lines.iter().filter(|l| l.starts_with("status ")).collect();
    assert_eq!(
        statuses,
        [
            "status running",
            "status quieting",
            "status quiet",
            "status stopping",
            "status stopped"
        ],
        "{lines:?}"
    );
}

#[test]
fn a_stuck_job_past_the_shutdown_timeout_exits_2_and_is_named() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("stuck");
    let group = unique_group("stuck");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, 3);

    let server = Server::start(
        &broker,
        &topic,
        &group,
        &[("STUCK", "1"), ("SHUTDOWN_TIMEOUT_MS", "3000")],
    );
    server.wait_for_line("a batch start", |l| l.starts_with("start "));
    let began = Instant::now();
    server.signal(libc::SIGTERM);
    let (status, stderr, _) = server.exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    // Past the 3 s limit once, not twice.
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(5500),
        "{took:?}"
    );
    assert!(
        stderr.contains(&format!("job consume {topic}/0 offsets 0..=2"))
            && stderr.contains("has been running for"),
        "the report names the stuck job:\n{stderr}"
    );
}

#[test]
fn info_shows_routes_and_versions_but_no_secret() {
    // No broker is contacted: `info` only reads the routing.
    let output = Command::new(app_binary())
        .arg("info")
        .env("KARAFKA_BROKERS", "127.0.0.1:1")
        .env("TOPIC", "visits")
        .env("SASL_PASSWORD", "hunter2-very-secret")
        .env("SSL_KEY_PASSWORD", "hunter3-key-password")
        .env("SSL_KEY_PEM", "-----BEGIN PRIVATE KEY-----hunter4")
        .env("SSL_KEYSTORE_PASSWORD", "hunter5-keystore-password")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for secret in [
        "hunter2",
        "hunter3",
        "hunter4",
        "BEGIN PRIVATE KEY",
        "hunter5",
    ] {
        assert!(!stdout.contains(secret), "a secret leaked:\n{stdout}");
    }
    for key in [
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
    ] {
        assert!(stdout.contains(&format!("{key}=[REDACTED]")), "{stdout}");
    }
    assert!(
        stdout.contains(&format!("librdkafka {}", karafka::librdkafka_version())),
        "{stdout}"
    );
    // The linked librdkafka's features, so a user sees at once what the build supports.
    let features = stdout
        .lines()
        .find_map(|l| {
            l.split_once("(features: ")
                .map(|(_, f)| f.trim_end_matches(')'))
        })
        .unwrap_or_else(|| panic!("no features line:\n{stdout}"));
    for feature in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "zstd",
    ] {
        assert!(
            features.split(", ").any(|f| f == feature),
            "{feature} missing from {features}"
        );
    }
    assert!(stdout.contains("topic visits → app::Visits"), "{stdout}");
    assert!(stdout.contains("bootstrap.servers=127.0.0.1:1"), "{stdout}");
    // The scheduling and, for partition scheduling, the prefetch budget.
    assert!(
        stdout.contains("scheduling partition: each partition flows on its own")
            && stdout.contains("prefetch budget 67108864 bytes"),
        "{stdout}"
    );
}

#[test]
fn a_server_without_a_subscriber_logs_librdkafkas_reasons_to_stderr() {
    // No broker: port 1 on loopback refuses connections. The example installs no tracing
    // subscriber, so `cli::run`'s default one must show librdkafka's words.
    let log = std::env::temp_dir().join(format!("{}.stderr", unique_topic("server-logs")));
    let mut child = Command::new(app_binary())
        .arg("server")
        .env("KARAFKA_BROKERS", "127.0.0.1:1")
        .env("TOPIC", "logs")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let seen = wait_until(Duration::from_secs(20), || {
        read()
            .lines()
            .any(|l| l.contains("librdkafka") && l.contains("Connection refused"))
    });
    // SAFETY: kill(2) with the pid of our own live child; no memory is involved.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let stderr = read();
    let _ = std::fs::remove_file(&log);
    assert!(
        seen.is_ok(),
        "no librdkafka line about the refused connection:\n{stderr}"
    );
    assert!(status.success(), "{status:?}\n{stderr}");
}

#[test]
fn bad_arguments_exit_64_with_usage() {
    for (args, says) in [
        (&["server", "--no-such-flag"][..], "--no-such-flag"),
        (&["server", "--topics", "nope"][..], "matches no route"),
        (&["topics", "delete"][..], "add --yes to confirm"),
    ] {
        let output = Command::new(app_binary())
            .args(args)
            .env("KARAFKA_BROKERS", "127.0.0.1:1")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

struct Count(Arc<AtomicUsize>);

impl Consumer for Count {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.0.fetch_add(ctx.messages().len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_embedded_apps_start_and_stop_twice_in_one_process() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let mut apps = Vec::new();
    for name in ["first", "second"] {
        let topic = unique_topic(name);
        broker.create_topic(&topic, 2).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let mut builder = App::builder().name(unique_group(name));
        for (k, v) in broker.consumer_settings("unused").iter() {
            if k != "group.id" {
                builder = builder.kafka(k, v);
            }
        }
        let app = builder
            .topic(&topic, move |t| t.consumer(move || Count(counter.clone())))
            .build()
            .unwrap();
        apps.push((app, topic, seen));
    }
    for round in 1..=2 {
        let running: Vec<_> = apps.iter().map(|(app, ..)| app.start().unwrap()).collect();
        for (_, topic, _) in &apps {
            produce(&broker, topic, 10);
        }
        for (_, topic, seen) in &apps {
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.load(Ordering::SeqCst) < 10 * round {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {topic} consumed {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for running in running {
            running.stop().await.unwrap();
        }
        for (_, _, seen) in &apps {
            assert_eq!(seen.load(Ordering::SeqCst), 10 * round, "round {round}");
        }
    }
}

#[test]
fn topics_migrate_through_the_cli_is_idempotent() {
    let Some(broker) = TestBroker::require(&[Capability::AdminCreateTopics]) else {
        return;
    };
    let topic = unique_topic("cli-migrate");
    let mut builder = App::builder();
    for (k, v) in broker.consumer_settings("cli-migrate").iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    let app = builder
        .topic(&topic, |t| {
            t.consumer(|| Count(Arc::default()))
                .declaratives(Declaratives::new().partitions(2))
        })
        .build()
        .unwrap();
    let run = |action: TopicsAction| {
        let mut out = Vec::new();
        let code = cli::execute(&app, &cli::Command::Topics { action }, &mut out);
        assert_eq!(code, std::process::ExitCode::SUCCESS);
        String::from_utf8(out).unwrap()
    };
    let plan = run(TopicsAction::Plan);
    assert!(
        plan.contains(&format!("+ create `{topic}`: 2 partitions")),
        "{plan}"
    );
    let first = run(TopicsAction::Migrate);
    assert!(first.contains("applied"), "{first}");
    let second = run(TopicsAction::Migrate);
    assert!(second.starts_with("No changes"), "{second}");
    assert_eq!(admin(&broker).partition_count(&topic).unwrap(), 2);
    let names: BTreeSet<String> = app
        .routes()
        .declared_topics()
        .map(|(t, _)| t.to_owned())
        .collect();
    assert!(names.contains(&topic));
}

#[test]
fn a_second_stop_signal_forces_exit_2_and_names_the_job() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("forced");
    let group = unique_group("forced");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, 2);

    let server = Server::start(
        &broker,
        &topic,
        &group,
        &[("STUCK", "1"), ("SHUTDOWN_TIMEOUT_MS", "60000")],
    );
    server.wait_for_line("a batch start", |l| l.starts_with("start "));
    server.signal(libc::SIGTERM);
    server.wait_for_line("status stopping", |l| l == "status stopping");
    let began = Instant::now();
    server.signal(libc::SIGTERM);
    let (status, stderr, _) = server.exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert!(
        stderr.contains("forced by a second stop signal")
            && stderr.contains(&format!("job consume {topic}/0"))
            && stderr.contains("listener karafka.listener#"),
        "the report names the job and the listener still running:\n{stderr}"
    );
}

#[test]
fn server_options_select_consumer_groups_subscription_groups_and_topics() {
    use clap::Parser;
    use karafka::consumer::Selection;

    let cli = cli::Cli::try_parse_from([
        "app",
        "server",
        "--consumer-groups",
        "billing,audit",
        "--topics",
        "invoices",
    ])
    .unwrap();
    let cli::Command::Server(args) = cli.command else {
        panic!("parsed {cli:?}");
    };
    assert_eq!(args.consumer_groups, ["billing", "audit"]);
    assert_eq!(args.topics, ["invoices"]);
    assert!(args.subscription_groups.is_empty());

    // Building connects to nothing.
    let app = App::builder()
        .kafka("bootstrap.servers", "127.0.0.1:1")
        .consumer_group("billing", |g| {
            g.topic("invoices", |t| t.consumer(|| Count(Arc::default())))
                .topic("payments", |t| t.consumer(|| Count(Arc::default())))
        })
        .consumer_group("audit", |g| {
            g.subscription_group("slow", |s| {
                s.topic("trail", |t| t.consumer(|| Count(Arc::default())))
            })
        })
        .build()
        .unwrap();
    let routed = |app: &App| -> Vec<(String, String, String)> {
        app.routes()
            .consumer_groups()
            .flat_map(|g| {
                g.subscription_groups().flat_map(move |s| {
                    s.topics().map(move |t| {
                        (
                            g.name().to_owned(),
                            s.name().to_owned(),
                            t.name().to_owned(),
                        )
                    })
                })
            })
            .collect()
    };
    let select = |cgs: &[&str], sgs: &[&str], topics: &[&str]| {
        app.select(&Selection {
            consumer_groups: cgs.iter().map(|s| s.to_string()).collect(),
            subscription_groups: sgs.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
        })
    };
    assert_eq!(routed(&select(&[], &[], &[]).unwrap()).len(), 3);
    let billing = routed(&select(&["billing"], &[], &[]).unwrap());
    assert!(
        billing.iter().all(|(g, ..)| g == "billing") && billing.len() == 2,
        "{billing:?}"
    );
    assert_eq!(
        routed(&select(&[], &["slow"], &[]).unwrap()),
        [("audit".into(), "slow".into(), "trail".into())]
    );
    let invoices = routed(&select(&[], &[], &["invoices"]).unwrap());
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].2, "invoices");
    let error = select(&["nope"], &[], &[]).unwrap_err().to_string();
    assert!(error.contains("matches no route"), "{error}");
}

#[tokio::test]
async fn run_inside_a_runtime_fails_clearly_instead_of_panicking() {
    let app = App::builder()
        .kafka("bootstrap.servers", "127.0.0.1:1")
        .topic("t", |t| t.consumer(|| Count(Arc::default())))
        .build()
        .unwrap();
    let error = app.run().unwrap_err().to_string();
    assert!(
        error.contains("inside a tokio runtime") && error.contains("app.start()"),
        "{error}"
    );
}
