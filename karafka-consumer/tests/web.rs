//! `/metrics` and `/healthz` (feature `web`).
#![cfg(feature = "web")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::web::Web;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context};
use karafka_producer::{Message, Producer};
use karafka_testing::{BrokerKind, TestBroker, unique_group, unique_topic, wait_until};

/// `GET path` → (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn app_builder(broker: &TestBroker, group: &str) -> AppBuilder {
    let mut builder = App::builder().name(group);
    for (k, v) in broker.consumer_settings(group).iter() {
        if k != "group.id" {
            builder = builder.kafka(k, v);
        }
    }
    builder
}

fn produce(broker: &TestBroker, topic: &str, payloads: &[&str]) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    let batch = payloads
        .iter()
        .map(|p| Message::new(topic, p.to_string()).partition(0))
        .collect();
    producer.produce_many_sync(batch).unwrap();
    producer.close().unwrap();
}

/// Counts messages; fails the first batch once.
struct FailsOnce {
    seen: Arc<AtomicUsize>,
    failed: bool,
}

impl Consumer for FailsOnce {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if !self.failed {
            self.failed = true;
            return Err("the first attempt fails".into());
        }
        self.seen.fetch_add(ctx.messages().len(), Ordering::SeqCst);
        Ok(())
    }
}

/// The value of the sample line starting with `prefix` (labels included).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_after_consuming_show_counters_histograms_and_lag() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("web-metrics");
    let group = unique_group("web-metrics");
    broker.create_topic(&topic, 1).unwrap();
    let payloads: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    produce(
        &broker,
        &topic,
        &payloads.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = app_builder(&broker, &group)
        .kafka("statistics.interval.ms", "200")
        .pause_timeout(Duration::from_millis(50))
        .web(Web::new("127.0.0.1:0".parse().unwrap()))
        .topic(&topic, move |t| {
            t.consumer(move || FailsOnce {
                seen: counter.clone(),
                failed: false,
            })
        })
        .build()
        .unwrap();
    let running = app.start().unwrap();
    let addr = running.web_addr().expect("the web server runs");
    wait_until(broker.join_deadline(), || seen.load(Ordering::SeqCst) >= 50).unwrap();

    let labels = format!("{{consumer_group=\"{group}\",topic=\"{topic}\"}}");
    let lag_prefix = format!(
        "karafka_consumer_lag{{consumer_group=\"{group}\",subscription_group=\"sg-0\",topic=\"{topic}\",partition=\"0\"}}"
    );
    let mut metrics = String::new();
    // The lag gauge appears with the next statistics report after the assignment; on the
    // embedded cluster it must reach 0 (Tansu's high watermark is unreliable).
    wait_until(Duration::from_secs(20), || {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        metrics = body;
        match sample(&metrics, &lag_prefix) {
            Some(lag) => broker.kind() != BrokerKind::Mock || lag == 0.0,
            None => false,
        }
    })
    .unwrap_or_else(|_| panic!("no settled lag for {topic}/0 in:\n{metrics}"));
    assert_eq!(
        sample(
            &metrics,
            &format!("karafka_messages_consumed_total{labels}")
        ),
        Some(50.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, &format!("karafka_batches_consumed_total{labels}")).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &format!("karafka_retries_total{labels}")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "karafka_errors_total{kind=\"consumer.consume.error\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let processed_batches = sample(
        &metrics,
        &format!("karafka_processing_seconds_count{labels}"),
    )
    .unwrap_or(0.0);
    assert!(processed_batches >= 1.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            &format!("karafka_consumption_lag_seconds_count{labels}")
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let (status, body) = get(addr, "/healthz");
    assert_eq!((status, body.lines().next()), (200, Some("ok")), "{body}");
    running.stop_blocking().unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the web server stops with the app"
    );
}

/// Hangs on a message whose payload is `stuck`.
struct Hangs;

impl Consumer for Hangs {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        if ctx.messages().iter().any(|m| {
            m.raw_payload()
                .ok()
                .flatten()
                .is_some_and(|p| &p[..] == b"stuck")
        }) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(())
    }
}

#[test]
fn healthz_turns_unhealthy_when_a_job_is_stuck() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("web-health");
    let group = unique_group("web-health");
    broker.create_topic(&topic, 1).unwrap();
    let app = app_builder(&broker, &group)
        .shutdown_timeout(Duration::from_secs(2))
        .web(Web::new("127.0.0.1:0".parse().unwrap()).job_timeout(Duration::from_millis(300)))
        .topic(&topic, |t| t.consumer(|| Hangs))
        .build()
        .unwrap();
    let running = app.start().unwrap();
    let addr = running.web_addr().unwrap();
    let (status, body) = get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    produce(&broker, &topic, &["fine", "stuck"]);
    let mut last = String::new();
    wait_until(Duration::from_secs(60), || {
        let (status, body) = get(addr, "/healthz");
        last = body;
        status == 503
    })
    .unwrap_or_else(|_| panic!("/healthz stayed healthy: {last}"));
    assert!(
        last.starts_with("unhealthy\n") && last.contains(&format!("job consume {topic}/0")),
        "{last}"
    );
    // The stuck job outlives the shutdown timeout: stopping says so.
    let stopped = running.stop_blocking();
    assert!(stopped.is_err(), "{stopped:?}");
}

#[test]
fn a_taken_address_fails_the_start_clearly() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let topic = unique_topic("web-taken");
    broker.create_topic(&topic, 1).unwrap();
    let app = app_builder(&broker, &unique_group("web-taken"))
        .web(Web::new(addr))
        .topic(&topic, |t| t.consumer(|| Hangs))
        .build()
        .unwrap();
    let error = app.start().unwrap_err().to_string();
    assert!(
        error.contains(&format!("listen on {addr}")) && error.contains("Web::new"),
        "{error}"
    );
    // Nothing was left running: the app starts once the address is free.
    drop(taken);
    let running = app.start().unwrap();
    running.stop_blocking().unwrap();
}

#[test]
fn a_swarm_node_serves_its_report_status_on_its_own_port() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("web-swarm");
    broker.create_topic(&topic, 1).unwrap();
    // A port that was free a moment ago; node 1 serves on the next one.
    let base = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = app_builder(&broker, &unique_group("web-swarm"))
        .web(Web::new(base))
        .topic(&topic, |t| t.consumer(|| Hangs))
        .build()
        .unwrap();
    let node = app.for_node(1).unwrap();
    let running = node.start().unwrap();
    let addr = running.web_addr().expect("the web server runs");
    assert_eq!(addr.port(), base.port() + 1);
    // What a swarm node's reporter emits with each report.
    node.monitor()
        .emit(karafka_core::instrumentation::Event::Swarm(
            karafka_core::instrumentation::SwarmEvent::NodeReported {
                node: 1,
                status: karafka_core::instrumentation::NodeStatus::OverMemory,
            },
        ));
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "karafka_swarm_node_status{node=\"1\"}"),
        Some(3.0),
        "{metrics}"
    );
    running.stop_blocking().unwrap();
}
