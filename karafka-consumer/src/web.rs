//! Health and Prometheus metrics over HTTP (feature `web`): axum serves, prometheus-client
//! encodes.
//!
//! ```no_run
//! use std::time::Duration;
//! use karafka_consumer::App;
//! use karafka_consumer::web::Web;
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "127.0.0.1:9092")
//!     .web(Web::new("0.0.0.0:9394".parse()?).job_timeout(Duration::from_secs(300)))
//!     // .topic(...)
//!     .build()?;
//! let running = app.start()?; // binds the address; fails clearly when it is taken
//! println!("metrics on http://{}/metrics", running.web_addr().unwrap());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - `GET /healthz`: `200 ok` while healthy; `503` with one line per reason when a listener
//!   has not polled within `max.poll.interval.ms` or a job has run longer than
//!   [`Web::job_timeout`] (for a liveness probe).
//! - `GET /metrics`: the Prometheus text format:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `karafka_messages_consumed_total` | counter | `consumer_group`, `topic` |
//! | `karafka_batches_consumed_total` | counter | `consumer_group`, `topic` |
//! | `karafka_errors_total` | counter | `kind` (the error's event name) |
//! | `karafka_retries_total` | counter | `consumer_group`, `topic` |
//! | `karafka_dlq_dispatched_total` | counter | `consumer_group`, `topic` |
//! | `karafka_consumer_lag` | gauge | `consumer_group`, `subscription_group`, `topic`, `partition` |
//! | `karafka_consumption_lag_seconds` | histogram | `consumer_group`, `topic` |
//! | `karafka_processing_seconds` | histogram | `consumer_group`, `topic` |
//! | `karafka_produced_messages_total` | counter | `topic` |
//! | `karafka_delivery_errors_total` | counter | `topic` |
//! | `karafka_swarm_node_status` | gauge | `node`: in a swarm node, its last report to the supervisor (-1..3, see `NodeStatus`) |
//!
//! In swarm mode each node serves its own `/metrics` (node `i` on the configured port + `i`);
//! the supervisor serves none: it stays a single thread that starts no client and no server,
//! so little in it can fail. Its decisions are events (`swarm.manager.*`).
//!
//! The lag gauge comes from librdkafka's statistics: with `web` configured the app sets
//! `statistics.interval.ms=5000` unless you set it; a partition leaves the gauge when its
//! client stops reporting it (revoked, or its lag unknown). Consumption lag is the time from a batch's
//! last message's create time to the start of its processing; processing is the time in
//! `consume`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use karafka_core::instrumentation::{ErrorKind, Event, Listener};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};
use crate::processing::group::{self, ActiveGroups};
use crate::status::Control;

/// Where and how to serve `/healthz` and `/metrics` (see [`AppBuilder::web`](crate::AppBuilder::web)).
#[derive(Debug, Clone)]
pub struct Web {
    pub(crate) addr: SocketAddr,
    pub(crate) job_timeout: Duration,
}

impl Web {
    /// Serves on `addr` (port 0: any free port; see
    /// [`Running::web_addr`](crate::Running::web_addr)).
    pub fn new(addr: SocketAddr) -> Self {
        Web {
            addr,
            job_timeout: Duration::from_secs(300),
        }
    }

    /// A job running longer than this makes `/healthz` fail (default 5 minutes).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    consumer_group: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    consumer_group: String,
    subscription_group: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducedLabels {
    topic: String,
}

type Histograms = Family<TopicLabels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics, fed by the app's monitor.
pub(crate) struct Metrics {
    registry: Registry,
    consumed: Family<TopicLabels, Counter>,
    batches: Family<TopicLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    retries: Family<TopicLabels, Counter>,
    dlq: Family<TopicLabels, Counter>,
    lag: Family<PartitionLabels, Gauge>,
    /// The lag series each client reported last, to drop the ones it no longer reports
    /// (partitions revoked, or whose lag became unknown).
    lag_series: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<PartitionLabels>>>,
    consumption_lag: Histograms,
    processing: Histograms,
    produced: Family<ProducedLabels, Counter>,
    delivery_errors: Family<ProducedLabels, Counter>,
    swarm_node_status: Family<NodeLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let consumed = Family::default();
        let batches = Family::default();
        let errors = Family::default();
        let retries = Family::default();
        let dlq = Family::default();
        let lag = Family::default();
        let consumption_lag: Histograms = Family::new_with_constructor(seconds_histogram);
        let processing: Histograms = Family::new_with_constructor(seconds_histogram);
        let produced = Family::default();
        let delivery_errors = Family::default();
        registry.register(
            "karafka_messages_consumed",
            "Messages consumed successfully",
            consumed.clone(),
        );
        registry.register(
            "karafka_batches_consumed",
            "Batches consumed successfully",
            batches.clone(),
        );
        registry.register("karafka_errors", "Errors by kind", errors.clone());
        registry.register(
            "karafka_retries",
            "Failed batches scheduled for a retry",
            retries.clone(),
        );
        registry.register(
            "karafka_dlq_dispatched",
            "Messages sent to a dead-letter queue",
            dlq.clone(),
        );
        registry.register(
            "karafka_consumer_lag",
            "Messages behind the high watermark per assigned partition (librdkafka statistics)",
            lag.clone(),
        );
        registry.register(
            "karafka_consumption_lag_seconds",
            "From a batch's last message's create time to the start of its processing",
            consumption_lag.clone(),
        );
        registry.register(
            "karafka_processing_seconds",
            "Time in consume per batch",
            processing.clone(),
        );
        registry.register(
            "karafka_produced_messages",
            "Messages the broker acknowledged",
            produced.clone(),
        );
        registry.register(
            "karafka_delivery_errors",
            "Messages the broker did not acknowledge",
            delivery_errors.clone(),
        );
        let swarm_node_status = Family::default();
        registry.register(
            "karafka_swarm_node_status",
            "In a swarm node: its last report to the supervisor (0 healthy, 1 polling stuck, \
             2 consuming stuck, 3 over the memory limit)",
            swarm_node_status.clone(),
        );
        Metrics {
            swarm_node_status,
            registry,
            consumed,
            batches,
            errors,
            retries,
            dlq,
            lag,
            lag_series: Default::default(),
            consumption_lag,
            processing,
            produced,
            delivery_errors,
        }
    }

    fn encode(&self) -> std::result::Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn labels(consumer_group: &str, topic: &str) -> TopicLabels {
    TopicLabels {
        consumer_group: consumer_group.to_owned(),
        topic: topic.to_owned(),
    }
}

impl Listener for Metrics {
    fn on_event(&self, event: &Event) {
        match event {
            Event::Consumed {
                consumer_group,
                topic,
                messages,
                duration,
                consumption_lag_ms,
                ..
            } => {
                let l = labels(consumer_group, topic);
                self.consumed.get_or_create(&l).inc_by(*messages as u64);
                self.batches.get_or_create(&l).inc();
                self.consumption_lag
                    .get_or_create(&l)
                    .observe((*consumption_lag_ms).max(0) as f64 / 1000.0);
                self.processing
                    .get_or_create(&l)
                    .observe(duration.as_secs_f64());
            }
            Event::Retry {
                consumer_group,
                topic,
                ..
            } => {
                self.retries
                    .get_or_create(&labels(consumer_group, topic))
                    .inc();
            }
            Event::DlqDispatched {
                consumer_group,
                topic,
                ..
            } => {
                self.dlq.get_or_create(&labels(consumer_group, topic)).inc();
            }
            Event::StatisticsEmitted {
                source_id,
                consumer_group: Some(consumer_group),
                statistics,
                ..
            } => {
                let mut current = Vec::new();
                for (topic, partition, lag) in statistics.consumer_lags() {
                    let labels = PartitionLabels {
                        consumer_group: consumer_group.to_string(),
                        subscription_group: source_id.to_string(),
                        topic,
                        partition: partition.to_string(),
                    };
                    self.lag.get_or_create(&labels).set(lag);
                    current.push(labels);
                }
                let mut series = self.lag_series.lock().unwrap_or_else(|p| p.into_inner());
                let key = (consumer_group.to_string(), source_id.to_string());
                let previous = series.insert(key, current.clone()).unwrap_or_default();
                for gone in previous.iter().filter(|l| !current.contains(l)) {
                    self.lag.remove(gone);
                }
            }
            Event::Swarm(karafka_core::instrumentation::SwarmEvent::NodeReported {
                node,
                status,
            }) => {
                self.swarm_node_status
                    .get_or_create(&NodeLabels {
                        node: node.to_string(),
                    })
                    .set(i64::from(status.code()));
            }
            Event::MessageAcknowledged { topic, .. } => {
                self.produced
                    .get_or_create(&ProducedLabels {
                        topic: topic.to_string(),
                    })
                    .inc();
            }
            Event::ErrorOccurred(error) => {
                self.errors
                    .get_or_create(&KindLabels {
                        kind: error.kind.as_str().to_owned(),
                    })
                    .inc();
                if error.kind == ErrorKind::ProducerDelivery {
                    self.delivery_errors
                        .get_or_create(&ProducedLabels {
                            topic: error.topic.as_deref().unwrap_or("").to_owned(),
                        })
                        .inc();
                }
            }
            _ => {}
        }
    }
}

struct WebState {
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    groups: ActiveGroups,
    job_timeout: Duration,
}

/// The running HTTP server; stopped with the app.
pub(crate) struct WebServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the server thread ends.
    finished: std::sync::mpsc::Receiver<()>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer")
            .field("addr", &self.addr)
            .finish()
    }
}

fn io(operation: String, e: std::io::Error) -> Error {
    Error::Core(karafka_core::Error::Io {
        operation: operation.into(),
        source: e,
    })
}

/// The web address, bound before the app's listeners start (a taken address fails the start
/// before anything joins a group).
pub(crate) struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    job_timeout: Duration,
}

impl Bound {
    /// Binds `web.addr`, failing clearly when it cannot.
    pub(crate) fn bind(web: &Web) -> Result<Bound> {
        let listener = std::net::TcpListener::bind(web.addr).map_err(|e| {
            io(
                format!(
                    "listen on {} for /healthz and /metrics (choose a free address in `Web::new`)",
                    web.addr
                ),
                e,
            )
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("configure the web listener".into(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| io("read the web listener's address".into(), e))?;
        Ok(Bound {
            listener,
            addr,
            job_timeout: web.job_timeout,
        })
    }

    /// Serves `/healthz` and `/metrics` on a thread of its own.
    pub(crate) fn serve(
        self,
        metrics: Arc<Metrics>,
        control: Arc<Control>,
        groups: ActiveGroups,
    ) -> Result<WebServer> {
        let Bound {
            listener,
            addr,
            job_timeout,
        } = self;
        let state = Arc::new(WebState {
            metrics,
            control,
            groups,
            job_timeout,
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| io("start the web runtime".into(), e))?;
        let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("karafka.web".into())
            .spawn(move || {
                let _finished = finished_tx;
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(target: "karafka", "web: cannot serve on {addr}: {e}");
                            return;
                        }
                    };
                    let router = Router::new()
                        .route("/healthz", get(serve_healthz))
                        .route("/metrics", get(serve_metrics))
                        .with_state(state);
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(target: "karafka", "web: serving on {addr} failed: {e}");
                    }
                });
            })
            .map_err(|e| io("start the web thread".into(), e))?;
        Ok(WebServer {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
            finished,
        })
    }
}

impl WebServer {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: waits up to 2 s for requests in progress, then leaves the thread to
    /// finish on its own (a slow or stalled client cannot hold the app's stop).
    pub(crate) fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let ended = matches!(
                self.finished.recv_timeout(Duration::from_secs(2)),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
            );
            if ended {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_healthz(State(state): State<Arc<WebState>>) -> impl IntoResponse {
    let health = {
        let groups = state.groups.lock().unwrap_or_else(|p| p.into_inner());
        group::health(&state.control, &groups, state.job_timeout)
    };
    let mut body = String::new();
    if health.healthy {
        let _ = writeln!(body, "ok\nstatus {}", health.status);
        (StatusCode::OK, body)
    } else {
        let _ = writeln!(body, "unhealthy\nstatus {}", health.status);
        for reason in &health.reasons {
            let _ = writeln!(body, "{reason}");
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn serve_metrics(State(state): State<Arc<WebState>>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics could not be encoded\n".to_owned(),
        ),
    }
}
