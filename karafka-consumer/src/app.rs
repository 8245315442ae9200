//! The app: settings, routes, and starting and stopping its listeners.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{AppStatus, Monitor};
use karafka_core::oauth::OAuthTokenProvider;
use karafka_core::{ConfigError, KafkaSettings, Violation, Violations};
use karafka_producer::Producer;

use crate::connection::client::REVOKE_COMMIT_TIMEOUT;
use crate::connection::listener::ListenerSetup;
use crate::connection::manager::{self, Connections, ListenerThread};
use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::processing::group::{self, ActiveGroups};
use crate::routing::{self, ConsumerGroupBuilder, Routes, TopicBuilder, TopicSettings};
use crate::settings::{
    DEFAULT_CONCURRENCY, DEFAULT_PAUSE_MAX_TIMEOUT, DEFAULT_PAUSE_TIMEOUT, DEFAULT_PREFETCH_BUDGET,
    DEFAULT_REVOCATION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, ProcessingSettings, Scheduling,
};
use crate::status::{Control, Health, Liveness};

/// Configures an [`App`]: librdkafka settings, processing settings and routes.
///
/// ```
/// use karafka_consumer::{App, Consumer, ConsumeResult, Context, payload::Raw};
///
/// struct Printer;
/// impl Consumer for Printer {
///     type Payload = Raw;
///     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
///         println!("{} messages", ctx.messages().len());
///         Ok(())
///     }
/// }
///
/// let app = App::builder()
///     .kafka("bootstrap.servers", "127.0.0.1:9092")
///     .concurrency(10)
///     .topic("events", |t| t.consumer(|| Printer).max_messages(500))
///     .build()
///     .unwrap();
/// assert_eq!(app.routes().consumer_groups().count(), 1);
/// ```
pub struct AppBuilder {
    name: String,
    kafka: KafkaSettings,
    concurrency: usize,
    shutdown_timeout: Duration,
    pause_timeout: Duration,
    pause_max_timeout: Duration,
    pause_exponential: bool,
    scheduling: Scheduling,
    revocation_timeout: Duration,
    prefetch_budget: u64,
    defaults: TopicSettings,
    groups: Vec<ConsumerGroupBuilder>,
    monitor: Option<Monitor>,
    producer: Option<Producer>,
    oauth: Option<Arc<dyn OAuthTokenProvider>>,
    supervision: Option<Arc<dyn Supervision>>,
    #[cfg(feature = "web")]
    web: Option<crate::web::Web>,
}

impl Default for AppBuilder {
    fn default() -> Self {
        AppBuilder {
            name: "karafka".to_owned(),
            kafka: KafkaSettings::new(),
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            pause_timeout: DEFAULT_PAUSE_TIMEOUT,
            pause_max_timeout: DEFAULT_PAUSE_MAX_TIMEOUT,
            pause_exponential: true,
            scheduling: Scheduling::default(),
            revocation_timeout: DEFAULT_REVOCATION_TIMEOUT,
            prefetch_budget: DEFAULT_PREFETCH_BUDGET,
            defaults: TopicSettings::default(),
            groups: Vec::new(),
            monitor: None,
            producer: None,
            oauth: None,
            supervision: None,
            #[cfg(feature = "web")]
            web: None,
        }
    }
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("name", &self.name)
            .field("kafka", &self.kafka)
            .field("concurrency", &self.concurrency)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("scheduling", &self.scheduling)
            .field("consumer_groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// The app's name: the default consumer group's id (default `karafka`). This, or
    /// [`consumer_group`](Self::consumer_group), is how the group is chosen: a `group.id`
    /// librdkafka setting is refused at `build()`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A librdkafka setting for every connection (`bootstrap.servers` is required).
    ///
    /// Settings the framework owns are refused at `build()`: `group.id` (use
    /// [`name`](Self::name) or [`consumer_group`](Self::consumer_group)) and
    /// `enable.auto.offset.store`. Settings that need a librdkafka feature the build lacks
    /// (TLS, SCRAM, zstd, ...) are refused naming the cargo feature to enable.
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka.set(key, value);
        self
    }

    /// Every librdkafka setting of `settings`.
    pub fn kafka_settings(mut self, settings: &KafkaSettings) -> Self {
        self.kafka = self.kafka.merged(settings);
        self
    }

    /// How many jobs run at once, across the app (default 5).
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs;
        self
    }

    /// How long stopping may take before it gives up and reports what blocked (default 60 s;
    /// must exceed every topic's `max_wait_time`).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// First retry back-off after a failed batch (default 1 s).
    pub fn pause_timeout(mut self, timeout: Duration) -> Self {
        self.pause_timeout = timeout;
        self
    }

    /// Cap of the retry back-off (default 30 s).
    pub fn pause_max_timeout(mut self, timeout: Duration) -> Self {
        self.pause_max_timeout = timeout;
        self
    }

    /// Whether the back-off doubles with each retry (default true).
    pub fn pause_with_exponential_backoff(mut self, exponential: bool) -> Self {
        self.pause_exponential = exponential;
        self
    }

    /// How subscription groups hand messages to jobs (default [`Scheduling::Partition`]:
    /// each partition flows on its own; [`Scheduling::Poll`] is Karafka's rule). A named
    /// subscription group can choose for itself
    /// ([`SubscriptionGroupBuilder::scheduling`](crate::routing::SubscriptionGroupBuilder::scheduling)).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }

    /// With [`Scheduling::Partition`], how long a revocation waits for the running jobs of
    /// the revoked partitions before it commits and lets the rebalance go on (default
    /// [`DEFAULT_REVOCATION_TIMEOUT`], 30 s). A job that ends in time has its batch marked
    /// and committed; one still running past it keeps running, but its marks return false
    /// (another member may own the partition by then), and its `revoked` hook runs once it
    /// ends. The member does not poll meanwhile, so `build()` requires it, plus the
    /// revocation's commit (2 s) and `max_wait_time`, below `max.poll.interval.ms`; the
    /// group's rebalance waits for it too.
    pub fn revocation_timeout(mut self, timeout: Duration) -> Self {
        self.revocation_timeout = timeout;
        self
    }

    /// With [`Scheduling::Partition`], how many bytes of messages each subscription group
    /// may prefetch, over all its partitions (default [`DEFAULT_PREFETCH_BUDGET`], 64 MiB).
    ///
    /// Each partition has its own librdkafka queue, and librdkafka's prefetch limits apply
    /// to each of them: left alone, 100 partitions could buffer 100 × 65 MiB. When the
    /// listener starts, the budget is divided by the partitions of its topics (as the
    /// cluster reports them then; 64 if it does not answer within 5 s), and each
    /// partition's share sets `queued.max.messages.kbytes` and `fetch.message.max.bytes` (a
    /// third each: a fetch may overshoot the queue's limit by one fetch, and the last batch
    /// a partition keeps for its `revoked` hook keeps one fetch response alive) and
    /// `queued.min.messages` (share ÷ 512 B, between 100 and 100,000). A limit set with
    /// `.kafka(...)` is kept as set. librdkafka's bookkeeping per queued message and the
    /// batches of running jobs (at most `concurrency`) come on top.
    pub fn prefetch_budget(mut self, bytes: u64) -> Self {
        self.prefetch_budget = bytes;
        self
    }

    /// Settings every topic starts from (its own settings override them).
    pub fn defaults(mut self, f: impl FnOnce(TopicBuilder) -> TopicBuilder) -> Self {
        self.defaults = f(TopicBuilder::new("defaults")).settings;
        self
    }

    /// Routes a topic in the default consumer group (named after the app).
    pub fn topic<C: Consumer>(
        mut self,
        name: &str,
        f: impl FnOnce(TopicBuilder) -> TopicBuilder<C>,
    ) -> Self {
        let group = self.name.clone();
        let index = match self.groups.iter().position(|g| g.name == group) {
            Some(i) => i,
            None => {
                self.groups.push(ConsumerGroupBuilder::new(group));
                self.groups.len() - 1
            }
        };
        let builder = std::mem::replace(&mut self.groups[index], ConsumerGroupBuilder::new(""));
        self.groups[index] = builder.topic(name, f);
        self
    }

    /// Routes topics in the consumer group `name`.
    pub fn consumer_group(
        mut self,
        name: &str,
        f: impl FnOnce(ConsumerGroupBuilder) -> ConsumerGroupBuilder,
    ) -> Self {
        self.groups.push(f(ConsumerGroupBuilder::new(name)));
        self
    }

    /// Where events go (default: a new monitor, see [`App::monitor`]).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// The producer consumers reach through their context and dead-letter queues use
    /// (default: one built from this app's connection settings, connected on first use).
    pub fn producer(mut self, producer: Producer) -> Self {
        self.producer = Some(producer);
        self
    }

    /// Where SASL OAUTHBEARER tokens come from (`sasl.mechanisms=OAUTHBEARER`), for every
    /// connection of the app and its default producer: your code, called on the client's
    /// thread when librdkafka needs a token (see [`karafka_core::oauth`]).
    pub fn oauth_token_provider(mut self, provider: impl OAuthTokenProvider) -> Self {
        self.oauth = Some(Arc::new(provider));
        self
    }

    /// How `my-app swarm` runs the app: the extension point of karafka-pro's swarm mode
    /// (`.swarm(Swarm::new())`; see [`crate::swarm`]). Its [`check`](Supervision::check)
    /// runs at `build()`.
    pub fn supervision(mut self, supervision: Arc<dyn Supervision>) -> Self {
        self.supervision = Some(supervision);
        self
    }

    /// Serves `/healthz` and `/metrics` while the app runs (feature `web`; see
    /// [`web`](crate::web)). Also turns librdkafka statistics on
    /// (`statistics.interval.ms=5000`) unless set, for the lag gauge.
    #[cfg(feature = "web")]
    pub fn web(mut self, web: crate::web::Web) -> Self {
        self.web = Some(web);
        self
    }

    /// Validates everything and builds the app (nothing connects yet).
    pub fn build(mut self) -> Result<App, ConfigError> {
        let mut v = Violations::new();
        let monitor = self.monitor.take().unwrap_or_default();
        #[cfg(feature = "web")]
        let web = match self.web.take() {
            Some(web) => {
                if !self.kafka.contains_key("statistics.interval.ms") {
                    self.kafka.set("statistics.interval.ms", "5000");
                }
                let metrics = Arc::new(crate::web::Metrics::new());
                monitor.subscribe_arc(metrics.clone());
                Some((web, metrics))
            }
            None => None,
        };
        v.check(
            self.kafka
                .get("bootstrap.servers")
                .is_some_and(|s| !s.trim().is_empty()),
            "app.kafka.bootstrap.servers",
            || "is required: the brokers to connect to, e.g. `127.0.0.1:9092`".into(),
        );
        v.extend(self.kafka.validate("app.kafka"));
        routing::check_owned_settings(&self.kafka, "app.kafka", &mut v);
        v.check(self.concurrency >= 1, "app.concurrency", || {
            "must be at least 1".into()
        });
        v.check(
            self.prefetch_budget >= 1024 * 1024,
            "app.prefetch_budget",
            || {
                format!(
                    "is {} bytes; give each subscription group at least 1 MiB (1048576) to \
                     prefetch",
                    self.prefetch_budget
                )
            },
        );
        v.check(!self.pause_timeout.is_zero(), "app.pause_timeout", || {
            "must be greater than 0".into()
        });
        v.check(self.pause_timeout <= self.pause_max_timeout, "app.pause_timeout", || {
            format!(
                "is {:?}, longer than pause_max_timeout ({:?}); the back-off can never reach it",
                self.pause_timeout, self.pause_max_timeout
            )
        });
        let routes = routing::resolve(
            &self.kafka,
            &self.defaults,
            self.scheduling,
            self.groups,
            &monitor,
            &mut v,
        );
        for group in &routes.consumer_groups {
            for topic in &group.topics {
                v.check(
                    self.shutdown_timeout > topic.max_wait_time,
                    "app.shutdown_timeout",
                    || {
                        format!(
                            "is {:?}, not longer than the max_wait_time of `{}` ({:?}): a listener could \
                             still be waiting for a batch when the shutdown gives up",
                            self.shutdown_timeout, topic.name, topic.max_wait_time
                        )
                    },
                );
            }
            for sg in &group.subscription_groups {
                if sg.scheduling != Scheduling::Partition {
                    continue;
                }
                // The revocation waits inside the rebalance callback, where the member does
                // not poll: past max.poll.interval.ms it would be expelled from the group.
                let interval_ms: u64 = sg
                    .kafka
                    .get("max.poll.interval.ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300_000);
                // Between two polls: up to max_wait_time of waiting, then a revocation's
                // wait and its commit.
                let longest = self.revocation_timeout + REVOKE_COMMIT_TIMEOUT + sg.max_wait_time;
                v.check(
                    longest < Duration::from_millis(interval_ms),
                    "app.revocation_timeout",
                    || {
                        format!(
                            "is {:?}; with the revocation's commit ({REVOKE_COMMIT_TIMEOUT:?}) and \
                             max_wait_time ({:?}) that is not shorter than max.poll.interval.ms of \
                             subscription group `{}.{}` ({interval_ms} ms): a revocation waiting \
                             that long for running jobs would get the member expelled; lower it \
                             or raise max.poll.interval.ms",
                            self.revocation_timeout, sg.max_wait_time, group.name, sg.name
                        )
                    },
                );
            }
        }
        let producer = match self.producer {
            Some(p) => Some(p),
            None if v.is_empty() => match default_producer(&self.kafka, &monitor, &self.oauth) {
                Ok(p) => Some(p),
                Err(e) => {
                    v.absorb(e);
                    None
                }
            },
            None => None,
        };
        v.into_result()?;
        let Some(producer) = producer else {
            return Err(ConfigError::single("app.producer", "could not be built"));
        };
        let app = App {
            inner: Arc::new(AppInner {
                name: self.name,
                kafka: self.kafka,
                oauth: self.oauth,
                routes,
                monitor,
                producer,
                settings: ProcessingSettings {
                    concurrency: self.concurrency,
                    shutdown_timeout: self.shutdown_timeout,
                    pause_timeout: self.pause_timeout,
                    pause_max_timeout: self.pause_max_timeout,
                    pause_exponential: self.pause_exponential,
                    revocation_timeout: self.revocation_timeout,
                    prefetch_budget: self.prefetch_budget,
                },
                running: AtomicBool::new(false),
                supervision: self.supervision,
                #[cfg(feature = "web")]
                web,
            }),
        };
        if let Some(supervision) = &app.inner.supervision {
            let mut v = Violations::new();
            v.extend(supervision.check(&app));
            v.into_result()?;
        }
        Ok(app)
    }
}

fn default_producer(
    kafka: &KafkaSettings,
    monitor: &Monitor,
    oauth: &Option<Arc<dyn OAuthTokenProvider>>,
) -> std::result::Result<Producer, ConfigError> {
    let mut builder = Producer::builder()
        .id("karafka-app")
        .kafka_settings(&kafka.connection_only())
        .monitor(monitor.clone());
    if let Some(provider) = oauth {
        builder = builder.oauth_token_provider_arc(provider.clone());
    }
    builder.build().map_err(|e| {
        // The app's producer is built from the app-level settings: say so, at their path.
        let violations = e
            .violations()
            .iter()
            .map(|v| match v.path.strip_prefix("producer.kafka") {
                Some(rest) => Violation::new(
                    format!("app.kafka{rest}"),
                    format!(
                        "{} (for the app's producer, which connects with the app-level \
                             settings: set it with `.kafka(...)` on the app, or give the app a \
                             producer with `.producer(...)`)",
                        v.message
                    ),
                ),
                None => v.clone(),
            })
            .collect();
        ConfigError::new(violations)
    })
}

pub(crate) struct AppInner {
    pub(crate) name: String,
    /// The app-level librdkafka settings (before per-group/topic overrides).
    pub(crate) kafka: KafkaSettings,
    /// Where OAUTHBEARER tokens come from, when given.
    pub(crate) oauth: Option<Arc<dyn OAuthTokenProvider>>,
    pub(crate) routes: Routes,
    pub(crate) monitor: Monitor,
    pub(crate) producer: Producer,
    pub(crate) settings: ProcessingSettings,
    running: AtomicBool,
    pub(crate) supervision: Option<Arc<dyn Supervision>>,
    #[cfg(feature = "web")]
    pub(crate) web: Option<(crate::web::Web, Arc<crate::web::Metrics>)>,
}

/// A built app: routes and settings, ready to [`start`](App::start). Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<AppInner>,
}

impl App {
    pub(crate) fn with_routes(&self, routes: Routes) -> App {
        let inner = &self.inner;
        App {
            inner: Arc::new(AppInner {
                name: inner.name.clone(),
                kafka: inner.kafka.clone(),
                oauth: inner.oauth.clone(),
                routes,
                monitor: inner.monitor.clone(),
                producer: inner.producer.clone(),
                settings: inner.settings.clone(),
                running: AtomicBool::new(false),
                supervision: inner.supervision.clone(),
                #[cfg(feature = "web")]
                web: inner.web.clone(),
            }),
        }
    }

    /// How `my-app swarm` runs the app, when it was built with one
    /// ([`AppBuilder::supervision`]).
    pub fn supervision(&self) -> Option<&Arc<dyn Supervision>> {
        self.inner.supervision.as_ref()
    }

    /// The app as swarm node `node` runs it (see [`crate::swarm`]): only the topics whose
    /// [`swarm_nodes`](crate::routing::TopicRoute::swarm_nodes) include the node; `-{node}`
    /// appended to a configured `group.instance.id`, so the nodes' static memberships are
    /// distinct; with `web`, the port (unless 0) moved up by `node`, so each node serves its
    /// own `/metrics`. Fails when no topic is left for the node.
    pub fn for_node(&self, node: usize) -> Result<App> {
        let mut groups = Vec::new();
        for group in &self.inner.routes.consumer_groups {
            let mut subscription_groups = Vec::new();
            for sg in &group.subscription_groups {
                let topics: Vec<_> = sg
                    .topics
                    .iter()
                    .filter(|t| t.swarm_nodes.includes(node))
                    .cloned()
                    .collect();
                if topics.is_empty() {
                    continue;
                }
                let mut kafka = sg.kafka.clone();
                if let Some(id) = kafka.get("group.instance.id").map(str::to_owned) {
                    kafka.set("group.instance.id", format!("{id}-{node}"));
                }
                subscription_groups.push(Arc::new(routing::SubscriptionGroupRoute {
                    name: sg.name.clone(),
                    consumer_group: sg.consumer_group.clone(),
                    topics,
                    kafka,
                    max_messages: sg.max_messages,
                    max_wait_time: sg.max_wait_time,
                    scheduling: sg.scheduling,
                    plan: sg.plan.clone(),
                }));
            }
            if !subscription_groups.is_empty() {
                groups.push(routing::ConsumerGroupRoute {
                    name: group.name.clone(),
                    topics: group.topics.clone(),
                    subscription_groups,
                });
            }
        }
        if groups.is_empty() {
            return Err(Error::Config(ConfigError::single(
                "swarm.nodes",
                format!(
                    "node {node} has no topic to consume: every topic is limited to other nodes \
                     (`.swarm(...)` on the topics)"
                ),
            )));
        }
        let app = self.with_routes(routing::Routes {
            consumer_groups: groups,
            declared: self.inner.routes.declared.clone(),
        });
        #[cfg(feature = "web")]
        let app = {
            let mut app = app;
            if let Some(inner) = Arc::get_mut(&mut app.inner) {
                if let Some((web, _)) = inner.web.as_mut() {
                    let port = web.addr.port();
                    if port != 0 {
                        let shifted = u16::try_from(usize::from(port) + node).map_err(|_| {
                            Error::Config(ConfigError::single(
                                "app.web",
                                format!("port {port} + node {node} is past 65535"),
                            ))
                        })?;
                        web.addr.set_port(shifted);
                    }
                }
            }
            app
        };
        Ok(app)
    }

    /// A builder with every default.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How long stopping may take before it gives up (`AppBuilder::shutdown_timeout`).
    pub fn shutdown_timeout(&self) -> Duration {
        self.inner.settings.shutdown_timeout
    }

    /// The validated routes.
    pub fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    /// The monitor (subscribe listeners here).
    pub fn monitor(&self) -> &Monitor {
        &self.inner.monitor
    }

    /// The app's producer.
    pub fn producer(&self) -> &Producer {
        &self.inner.producer
    }

    /// Starts a listener thread per subscription group; jobs run on the current tokio runtime
    /// if called inside one, otherwise on a runtime the returned handle owns.
    pub fn start(&self) -> Result<Running> {
        if self.inner.running.swap(true, Ordering::AcqRel) {
            return Err(Error::AlreadyRunning);
        }
        let started = self.start_listeners();
        if started.is_err() {
            self.inner.running.store(false, Ordering::Release);
        }
        started
    }

    fn start_listeners(&self) -> Result<Running> {
        let inner = &self.inner;
        #[cfg(feature = "web")]
        let bound = match &inner.web {
            Some((web, _)) => Some(crate::web::Bound::bind(web)?),
            None => None,
        };
        let (runtime, handle) = match tokio::runtime::Handle::try_current() {
            Ok(handle) => (None, handle),
            Err(_) => {
                let runtime = worker_runtime()?;
                let handle = runtime.handle().clone();
                (Some(runtime), handle)
            }
        };
        let control = Arc::new(Control::new(
            inner.name.as_str().into(),
            inner.monitor.clone(),
        ));
        control.set_status(AppStatus::Initializing);
        let setup = ListenerSetup {
            monitor: inner.monitor.clone(),
            producer: inner.producer.clone(),
            settings: inner.settings.clone(),
            oauth: inner.oauth.clone(),
            control: control.clone(),
            runtime: handle.clone(),
            semaphore: Arc::new(tokio::sync::Semaphore::new(inner.settings.concurrency)),
            client_token: client_token().into(),
        };
        let (done_tx, done_rx) = mpsc::channel();
        let (connections, started) = Connections::start(&inner.routes, setup, done_tx);
        if let Err(e) = started {
            control.stop.store(true, Ordering::Release);
            for thread in connections.threads {
                let _ = thread.handle.join();
            }
            return Err(e);
        }
        let groups = connections.active.clone();
        let dynamic = connections.dynamic();
        let connections = Arc::new(Mutex::new(connections));
        let manager = if dynamic {
            let (wake_tx, wake_rx) = mpsc::channel();
            let (c, ctl) = (connections.clone(), control.clone());
            let thread = std::thread::Builder::new()
                .name("karafka.connections".into())
                .spawn(move || manager::run(c, ctl, wake_rx));
            match thread {
                Ok(thread) => Some((wake_tx, thread)),
                Err(e) => {
                    control.stop.store(true, Ordering::Release);
                    let threads = std::mem::take(
                        &mut connections
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .threads,
                    );
                    for thread in threads {
                        let _ = thread.handle.join();
                    }
                    return Err(Error::Core(karafka_core::Error::Io {
                        operation: "start the connection manager thread".into(),
                        source: e,
                    }));
                }
            }
        } else {
            None
        };
        #[allow(unused_mut)]
        let mut running = Running {
            app: self.clone(),
            control: control.clone(),
            connections,
            manager,
            groups,
            done: done_rx,
            stopped: false,
            stopping: Arc::new(Mutex::new(Vec::new())),
            runtime,
            #[cfg(feature = "web")]
            web: None,
        };
        #[cfg(feature = "web")]
        if let (Some(bound), Some((_, metrics))) = (bound, &inner.web) {
            // On failure (no thread or runtime for the server) `running` is dropped, which
            // stops the listeners again.
            running.web =
                Some(bound.serve(metrics.clone(), control.clone(), running.groups.clone())?);
        }
        control.set_status(AppStatus::Running);
        Ok(running)
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("name", &self.inner.name)
            .field("routes", &self.inner.routes)
            .finish_non_exhaustive()
    }
}

/// How `my-app swarm` runs: as a supervisor of node processes, or, in a process started as
/// one of them, as that node. Implemented by karafka-pro's `Swarm`.
pub trait Supervision: fmt::Debug + Send + Sync + 'static {
    /// How many nodes the supervisor keeps running.
    fn nodes(&self) -> usize;

    /// The app's settings this supervision cannot work with, checked at `build()` with the
    /// app's own violations (e.g. a `max_wait_time` too long for the nodes' reports).
    fn check(&self, app: &App) -> Vec<Violation>;

    /// Lines `info` prints about it.
    fn describe(&self) -> Vec<String>;

    /// Runs `app` (already restricted to the routes `swarm` selected) until it is stopped,
    /// as the supervisor or, when this process was started as a node, as that node; returns
    /// the process's exit code.
    fn run(&self, app: &App) -> Result<u8>;
}

/// Reads a running app's [`Liveness`] from any thread ([`Running::probe`]).
#[derive(Clone)]
pub struct LivenessProbe {
    control: Arc<Control>,
    groups: ActiveGroups,
}

impl LivenessProbe {
    /// As [`Running::liveness`].
    pub fn liveness(&self) -> Liveness {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        group::liveness(&self.control, &groups)
    }
}

impl fmt::Debug for LivenessProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivenessProbe").finish_non_exhaustive()
    }
}

/// A started app. [`stop`](Running::stop) it to finish in-flight jobs, commit and leave the
/// groups; dropping it stops it too.
pub struct Running {
    app: App,
    control: Arc<Control>,
    /// Every listener thread and family of connections.
    connections: Arc<Mutex<Connections>>,
    /// The thread carrying out dynamic plans (dropping the sender stops it).
    manager: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    groups: ActiveGroups,
    done: mpsc::Receiver<u64>,
    /// Whether stopping ran (dropping the handle stops otherwise).
    stopped: bool,
    /// While stopping: the listeners not ended yet (id, name), for the report.
    stopping: Arc<Mutex<Vec<(u64, String)>>>,
    runtime: Option<tokio::runtime::Runtime>,
    #[cfg(feature = "web")]
    web: Option<crate::web::WebServer>,
}

impl Running {
    /// Per-partition state held across the app's listeners: (coordinators, consumer
    /// instances). Revoked partitions leave both. For tests of that.
    #[doc(hidden)]
    pub fn partition_state(&self) -> (usize, usize) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.iter().fold((0, 0), |(c, i), g| {
            (
                c + g
                    .coordinators
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len(),
                i + g.instances.load(Ordering::Acquire),
            )
        })
    }

    /// Whether every listener is still running.
    pub fn is_running(&self) -> bool {
        !self.control.stopping()
            && !self
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .any_ended()
    }

    /// Where the app is.
    pub fn status(&self) -> AppStatus {
        self.control.status()
    }

    /// Quiets the app: no new batches are handed out; jobs in flight finish; connections and
    /// assignments are kept (every partition is paused), so a deployment can drain before it
    /// stops. The status goes `quieting`, then `quiet` once every listener is idle.
    pub fn quiet(&self) {
        if !self.control.quiet.swap(true, Ordering::AcqRel) {
            self.control.set_status(AppStatus::Quieting);
        }
    }

    /// Stops (see [`stop_blocking`](Self::stop_blocking)) without blocking the async caller:
    /// the wait runs on tokio's blocking pool.
    pub async fn stop(self) -> Result<()> {
        match tokio::task::spawn_blocking(move || self.stop_blocking()).await {
            Ok(result) => result,
            Err(e) => Err(Error::Core(karafka_core::Error::Io {
                operation: "stop the app".into(),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }

    /// Stops: no new batches; in-flight jobs finish; `shutdown` hooks run; offsets are
    /// committed; groups are left. Waits up to `shutdown_timeout`, then fails with
    /// [`Error::ShutdownTimeout`] and a report of what was still running (listeners, and jobs
    /// with their partitions and how long they have run).
    pub fn stop_blocking(mut self) -> Result<()> {
        self.stop_inner()
    }

    /// Health: a listener that has not polled within `max.poll.interval.ms` (librdkafka would
    /// drop it from its group) or a job running longer than `job_timeout` makes the app
    /// unhealthy; the reasons say which.
    pub fn health(&self, job_timeout: Duration) -> Health {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        group::health(&self.control, &groups, job_timeout)
    }

    /// Whether each listener loops, and how long each job in flight has run: the facts
    /// [`health`](Self::health) judges, for a supervisor or probe that judges them its own
    /// way (karafka-pro's swarm nodes report from them).
    pub fn liveness(&self) -> Liveness {
        self.probe().liveness()
    }

    /// A handle that reads [`liveness`](Self::liveness) from any thread, for as long as it
    /// is kept (after the app stopped it reports no listener).
    pub fn probe(&self) -> LivenessProbe {
        LivenessProbe {
            control: self.control.clone(),
            groups: self.groups.clone(),
        }
    }

    /// The address the health and metrics server listens on (feature `web`, when configured
    /// with [`AppBuilder::web`]).
    #[cfg(feature = "web")]
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().map(|w| w.addr())
    }

    /// The listener threads not joined yet (taken: this handle waits for them once).
    fn take_threads(&mut self) -> Vec<ListenerThread> {
        if let Some((wake, thread)) = self.manager.take() {
            // No change is started once the manager has ended.
            drop(wake);
            let _ = thread.join();
        }
        std::mem::take(
            &mut self
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .threads,
        )
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.stopped = true;
        self.control.set_status(AppStatus::Stopping);
        self.control.stop.store(true, Ordering::Release);
        let timeout = self.app.inner.settings.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let mut threads = self.take_threads();
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) =
            threads.iter().map(|t| (t.id, t.name.clone())).collect();
        let mut remaining: Vec<u64> = threads.iter().map(|t| t.id).collect();
        while !remaining.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                let names: Vec<String> = threads
                    .iter()
                    .filter(|t| remaining.contains(&t.id))
                    .map(|t| t.name.clone())
                    .collect();
                let report = self.report(&names);
                // Give up on the stuck listeners (their threads are left to the process's
                // exit): dropping this handle must not wait for them a second time.
                return Err(Error::ShutdownTimeout { timeout, report });
            }
            match self.done.recv_timeout(deadline - now) {
                Ok(id) => {
                    remaining.retain(|n| *n != id);
                    self.stopping
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|(n, _)| *n != id);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for thread in threads.drain(..) {
            let _ = thread.handle.join();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        self.app.inner.running.store(false, Ordering::Release);
        self.control.set_status(AppStatus::Stopped);
        #[cfg(feature = "web")]
        if let Some(mut web) = self.web.take() {
            web.stop();
        }
        Ok(())
    }

    /// What would be reported if stopping timed out now (for the forced stop of `run`).
    pub(crate) fn reporter(&self) -> impl Fn() -> String + Send + 'static {
        let control = self.control.clone();
        let connections = self.connections.clone();
        let stopping = self.stopping.clone();
        move || report(&control, &listener_names(&connections, &stopping))
    }

    pub(crate) fn report(&self, listeners: &[String]) -> String {
        report(&self.control, listeners)
    }
}

/// A token unique to this start of an app (process id, time, and a counter of starts in the
/// process) that default `client.id`s end with.
fn client_token() -> String {
    static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}{:05x}{:x}",
        std::process::id(),
        nanos & 0xfffff,
        STARTS.fetch_add(1, Ordering::Relaxed)
    )
}

/// The listeners not ended: those the connections hold, and those a stop took from them.
fn listener_names(
    connections: &Mutex<Connections>,
    stopping: &Mutex<Vec<(u64, String)>>,
) -> Vec<String> {
    let mut names = connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .running_names();
    names.extend(
        stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, n)| n.clone()),
    );
    names
}

/// The runtime jobs run on when the app is not started inside one: a worker per core.
pub(crate) fn worker_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("karafka.worker")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Core(karafka_core::Error::Io {
                operation: "start the worker runtime".into(),
                source: e,
            })
        })
}

fn report(control: &Control, listeners: &[String]) -> String {
    let mut report = String::new();
    for name in listeners {
        report.push_str(&format!("  listener {name} is still running\n"));
    }
    for job in control
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        report.push_str(&format!(
            "  {}job {} {} offsets {}..={} of listener {} has been running for {:?}\n",
            if job.long_running {
                "long-running "
            } else {
                ""
            },
            job.job.as_str(),
            job.tp,
            job.offsets.0,
            job.offsets.1,
            job.listener,
            job.started.elapsed()
        ));
    }
    report
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop_inner();
        }
        // A runtime must not be dropped inside another one's context: shut it down in the
        // background when stopping timed out.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("app", &self.app.inner.name)
            .field(
                "listeners",
                &listener_names(&self.connections, &self.stopping),
            )
            .finish()
    }
}
