//! The command line inside your binary (feature `cli`, on by default in `karafka`).
//!
//! ```no_run
//! # use karafka_consumer::App;
//! fn main() -> std::process::ExitCode {
//!     let app = App::builder()
//!         .kafka("bootstrap.servers", "127.0.0.1:9092")
//!         // .topic(...)
//!         .build()
//!         .expect("valid routes");
//!     karafka_consumer::cli::run(&app)
//! }
//! ```
//!
//! ```text
//! my-app server [--consumer-groups a,b] [--subscription-groups s] [--topics t1,t2]
//! my-app swarm [--consumer-groups a,b] [--subscription-groups s] [--topics t1,t2]
//! my-app info
//! my-app topics plan|migrate|create
//! my-app topics delete --yes
//! my-app topics reset --yes
//! ```
//!
//! `swarm` runs a supervisor and node processes (karafka-pro's swarm mode: the app needs
//! `.swarm(...)`, see [`crate::swarm`]).
//!
//! Exit codes: 0 done; 1 an error (printed to stderr); 2 the shutdown did not finish in
//! `shutdown_timeout` or was forced by a second signal (the report of what blocked is printed;
//! for `swarm`: some node was killed or exited with another code than 0); 3 a swarm node whose
//! supervisor died (it stopped gracefully first); 64 bad arguments (unknown options, a selection that matches no route, a destructive
//! `topics` action without `--yes`). To put these commands under your own clap CLI, embed [`Command`] as a
//! subcommand and call [`execute`].

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::Admin;
use crate::app::App;
use crate::error::Error;
use crate::server::Selection;
use crate::settings::Scheduling;

/// The command line: one of the [`Command`]s.
#[derive(Debug, Parser)]
#[command(about = "A karafka-rs application", long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What the command line can do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Runs the consumers until SIGINT/SIGTERM/SIGQUIT (SIGTSTP quiets them first).
    Server(ServerArgs),
    /// Runs the consumers in several node processes under a supervisor that restarts a node
    /// that dies, hangs or grows past its memory limit (karafka-pro's swarm mode). Takes the
    /// same route selection as `server`.
    Swarm(ServerArgs),
    /// Prints versions, settings, consumer groups, subscription groups (with their effective
    /// librdkafka settings, secrets redacted) and routed topics.
    Info,
    /// Brings the cluster's topics in line with the routing's declarative topic settings.
    Topics {
        /// The topics action.
        #[command(subcommand)]
        action: TopicsAction,
    },
}

/// Which routes `server` runs (all when none is given). Names are comma-separated.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerArgs {
    /// Run only these consumer groups.
    #[arg(long, value_delimiter = ',')]
    pub consumer_groups: Vec<String>,
    /// Run only these subscription groups.
    #[arg(long, value_delimiter = ',')]
    pub subscription_groups: Vec<String>,
    /// Run only these topics.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
}

/// `topics` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum TopicsAction {
    /// Prints what `migrate` would change, changing nothing.
    Plan,
    /// Creates missing topics, adds partitions, aligns configs (running it twice changes
    /// nothing the second time).
    Migrate,
    /// Creates the declared topics that do not exist.
    Create,
    /// Deletes the declared topics (with their data).
    Delete {
        /// Confirms deleting the data.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes and re-creates the declared topics (their data is lost).
    Reset {
        /// Confirms deleting the data.
        #[arg(long)]
        yes: bool,
    },
}

/// The exit code for bad arguments (sysexits' `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// The exit code when the shutdown did not finish (timed out or forced).
pub const EXIT_SHUTDOWN_TIMEOUT: u8 = 2;

/// Parses the process's arguments and runs the command against `app`.
///
/// When the program has not installed a `tracing` subscriber, this installs one that writes
/// to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]): so a server pointed at
/// a wrong address or a refusing broker shows librdkafka's reasons (target `librdkafka`).
/// Install your own subscriber before calling `run` to choose otherwise.
pub fn run(app: &App) -> ExitCode {
    install_default_logging();
    run_from(app, std::env::args_os())
}

/// The log filter [`run`] uses when `RUST_LOG` is not set: the framework's and librdkafka's
/// warnings and errors, and the framework's own `info` lines.
pub const DEFAULT_LOG_FILTER: &str = "warn,karafka=info";

fn install_default_logging() {
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Fails only when another thread installed a subscriber meanwhile: that one stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses `args` (the first one is the program name) and runs the command against `app`;
/// output goes to stdout, errors to stderr.
pub fn run_from<I, T>(app: &App, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(app, &cli.command, &mut std::io::stdout().lock()),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            }
        }
    }
}

/// Runs `command` against `app`, writing its output to `out` and errors to stderr.
pub fn execute(app: &App, command: &Command, out: &mut dyn Write) -> ExitCode {
    let outcome = match command {
        Command::Server(args) => server(app, args),
        Command::Swarm(args) => match swarm(app, args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Info => out
            .write_all(info(app).as_bytes())
            .map_err(|e| Failure::App(io_error("write `info`", e))),
        Command::Topics { action } => topics(app, action, out),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::App(Error::ShutdownTimeout { timeout, report })) => {
            eprintln!("the shutdown did not finish (limit {timeout:?}); still running:\n{report}");
            ExitCode::from(EXIT_SHUTDOWN_TIMEOUT)
        }
        Err(Failure::App(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command failed: the command line was wrong, or the app failed.
enum Failure {
    Usage(String),
    App(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::App(e)
    }
}

fn io_error(operation: &'static str, e: std::io::Error) -> Error {
    Error::Core(karafka_core::Error::Io {
        operation: operation.into(),
        source: e,
    })
}

fn server(app: &App, args: &ServerArgs) -> Result<(), Failure> {
    let selection = Selection {
        consumer_groups: args.consumer_groups.clone(),
        subscription_groups: args.subscription_groups.clone(),
        topics: args.topics.clone(),
    };
    let app = app
        .select(&selection)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(app.run().map(|_| ())?)
}

fn swarm(app: &App, args: &ServerArgs) -> Result<u8, Failure> {
    let Some(supervision) = app.supervision().cloned() else {
        return Err(Failure::Usage(
            "swarm mode needs a supervision: build the app with karafka-pro's \
             `.swarm(Swarm::new())` (`use karafka::pro::{Swarm, SwarmApp}`, feature `pro`), or \
             run `server`"
                .into(),
        ));
    };
    let selection = Selection {
        consumer_groups: args.consumer_groups.clone(),
        subscription_groups: args.subscription_groups.clone(),
        topics: args.topics.clone(),
    };
    let app = app
        .select(&selection)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // The selection may leave a node nothing to consume: refuse it before starting any.
    let violations = supervision.check(&app);
    if !violations.is_empty() {
        let error = karafka_core::ConfigError::new(violations);
        return Err(Failure::Usage(format!(
            "this selection does not fit the swarm: {error}"
        )));
    }
    Ok(supervision.run(&app)?)
}

/// What `info` prints: versions, the app's settings, every consumer group with its
/// subscription groups (effective librdkafka settings, secrets redacted) and topics.
pub fn info(app: &App) -> String {
    let inner = &app.inner;
    let settings = &inner.settings;
    let mut s = String::new();
    let _ = writeln!(s, "karafka-rs {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        s,
        "librdkafka {} (features: {})",
        karafka_core::librdkafka_version(),
        karafka_core::librdkafka_features().join(", ")
    );
    let _ = writeln!(s, "app {}", inner.name);
    if let Some(supervision) = app.supervision() {
        for line in supervision.describe() {
            let _ = writeln!(s, "  {line}");
        }
    }
    let _ = writeln!(
        s,
        "  concurrency {}, shutdown_timeout {:?}, pause_timeout {:?} (max {:?}, exponential {})",
        settings.concurrency,
        settings.shutdown_timeout,
        settings.pause_timeout,
        settings.pause_max_timeout,
        settings.pause_exponential
    );
    // The most each connection may prefetch: the budget with per-partition scheduling,
    // librdkafka's queue limit (default 64 MiB) with poll scheduling.
    let prefetch = |sg: &crate::routing::SubscriptionGroupRoute| -> u64 {
        match sg.scheduling() {
            Scheduling::Partition => settings.prefetch_budget,
            _ => sg
                .kafka()
                .get("queued.max.messages.kbytes")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(65_536)
                .saturating_mul(1024),
        }
    };
    let (connections, total): (usize, u64) = inner
        .routes
        .consumer_groups()
        .flat_map(|g| g.subscription_groups())
        .fold((0, 0), |(c, t), sg| {
            let n = sg.connection_plan().max();
            (
                c + n,
                t.saturating_add(prefetch(sg).saturating_mul(n as u64)),
            )
        });
    let _ = writeln!(
        s,
        "  prefetch: at most {total} bytes over {connections} connection(s) (each connection's \
         budget or queued.max.messages.kbytes × connections)"
    );
    for group in inner.routes.consumer_groups() {
        let _ = writeln!(s, "consumer group {}", group.name());
        for sg in group.subscription_groups() {
            let _ = writeln!(
                s,
                "  subscription group {} (max_messages {}, max_wait_time {:?})",
                sg.name(),
                sg.max_messages(),
                sg.max_wait_time()
            );
            match sg.scheduling() {
                Scheduling::Partition => {
                    let _ = writeln!(
                        s,
                        "    scheduling partition: each partition flows on its own; revocation_timeout \
                         {:?}; prefetch budget {} bytes, divided by its topics' partitions at start \
                         (queued.max.messages.kbytes and fetch.message.max.bytes per partition, \
                         unless set below)",
                        settings.revocation_timeout, settings.prefetch_budget
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "    scheduling poll: the next poll after every job of the last one ended"
                    );
                }
            }
            let facts = sg.family_facts();
            for line in sg.connection_plan().describe(&facts) {
                let _ = writeln!(s, "    {line}");
            }
            for warning in sg.connection_warnings() {
                let _ = writeln!(s, "    warning: {warning}");
            }
            let _ = writeln!(s, "    kafka:");
            for (k, v) in sg.kafka().iter_redacted() {
                let _ = writeln!(s, "      {k}={v}");
            }
            for topic in sg.topics() {
                let _ = write!(
                    s,
                    "    topic {} → {}",
                    topic.name(),
                    topic.consumer_type().unwrap_or("(no consumer)")
                );
                if let Some(dlq) = topic.dead_letter_queue() {
                    let _ = write!(
                        s,
                        ", dead letters → {} after {} retries",
                        dlq.topic(),
                        dlq.retries()
                    );
                }
                if topic.manual_offset_management() {
                    let _ = write!(s, ", manual offsets");
                }
                for policy in topic.job_policies() {
                    let _ = write!(s, ", {}", policy.describe());
                }
                if app.supervision().is_some() {
                    let _ = write!(s, ", swarm {}", topic.swarm_nodes());
                }
                s.push('\n');
            }
        }
        for topic in group.topics().filter(|t| !t.is_active()) {
            let _ = writeln!(s, "  topic {} (inactive)", topic.name());
        }
    }
    s
}

fn topics(app: &App, action: &TopicsAction, out: &mut dyn Write) -> Result<(), Failure> {
    match action {
        TopicsAction::Delete { yes } => confirm(*yes, "delete")?,
        TopicsAction::Reset { yes } => confirm(*yes, "reset")?,
        _ => {}
    }
    let admin = Admin::for_app(app)?;
    let routes = app.routes();
    let mut say = |text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| Failure::App(io_error("write the topics output", e)))
    };
    match action {
        TopicsAction::Plan => say(format!("{}\n", admin.plan(routes)?)),
        TopicsAction::Migrate => {
            let plan = admin.migrate(routes)?;
            if plan.is_empty() {
                say(format!("{plan}\n"))
            } else {
                say(format!("{plan}\napplied.\n"))
            }
        }
        TopicsAction::Create => {
            let created = admin.create_declared(routes)?;
            say(listing("created", &created))
        }
        TopicsAction::Delete { .. } => {
            let deleted = admin.delete_declared(routes)?;
            say(listing("deleted", &deleted))
        }
        TopicsAction::Reset { .. } => {
            let reset = admin.reset_declared(routes)?;
            say(listing("reset", &reset))
        }
    }
}

fn listing(what: &str, topics: &[String]) -> String {
    if topics.is_empty() {
        format!("nothing {what}\n")
    } else {
        topics.iter().map(|t| format!("{what} {t}\n")).collect()
    }
}

fn confirm(yes: bool, action: &str) -> Result<(), Failure> {
    if yes {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "`topics {action}` deletes the declared topics' data; add --yes to confirm"
        )))
    }
}
