//! The embedded cluster's fault injection takes effect on real clients: a broker taken down
//! stops deliveries until it is back, injected request errors reach the producer, and an
//! injected round-trip time delays deliveries.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use karafka_testing::{
    ApiKey, Capability, EmbeddedCluster, ErrorCode, TestBroker, client_config, unique_topic,
};
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};

struct Reports(mpsc::Sender<Result<i64, String>>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let report = match result {
            Ok(m) => Ok(rdkafka::Message::offset(m)),
            Err((e, _)) => Err(format!("{e:?}")),
        };
        let _ = self.0.send(report);
    }
}

fn producer(
    cluster: &EmbeddedCluster,
    extra: &[(&str, &str)],
) -> (
    ThreadedProducer<Reports>,
    mpsc::Receiver<Result<i64, String>>,
) {
    let broker = TestBroker::with_cluster(cluster.clone());
    let mut settings = broker.producer_settings().with("linger.ms", "0");
    for (k, v) in extra {
        settings.set(*k, *v);
    }
    let (tx, rx) = mpsc::channel();
    let producer = client_config(&settings)
        .create_with_context(Reports(tx))
        .expect("producer");
    (producer, rx)
}

fn send(producer: &ThreadedProducer<Reports>, topic: &str) {
    producer
        .send(BaseRecord::<str, str>::to(topic).payload("x"))
        .map_err(|(e, _)| e)
        .expect("enqueue");
}

#[test]
fn broker_down_stops_deliveries_until_it_is_back() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("faults-down");
    cluster.create_topic(&topic, 1).unwrap();
    let (producer, reports) = producer(cluster, &[]);

    send(&producer, &topic);
    assert_eq!(
        reports.recv_timeout(Duration::from_secs(10)).unwrap(),
        Ok(0)
    );

    cluster.broker_down(1).unwrap();
    send(&producer, &topic);
    assert!(
        reports.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a delivery succeeded while the only broker was down"
    );
    cluster.broker_up(1).unwrap();
    assert_eq!(
        reports.recv_timeout(Duration::from_secs(20)).unwrap(),
        Ok(1)
    );
}

#[test]
fn injected_request_errors_reach_the_producer() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("faults-errors");
    cluster.create_topic(&topic, 1).unwrap();
    // Without retries, the first Produce request's injected error is the delivery result.
    let (producer, reports) = producer(
        cluster,
        &[("retries", "0"), ("enable.idempotence", "false")],
    );
    send(&producer, &topic);
    assert_eq!(
        reports.recv_timeout(Duration::from_secs(10)).unwrap(),
        Ok(0)
    );

    cluster.push_request_errors(
        ApiKey::Produce,
        &[ErrorCode::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    send(&producer, &topic);
    let report = reports.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        matches!(&report, Err(e) if e.contains("MessageSizeTooLarge")),
        "expected the injected error, got {report:?}"
    );
}

#[test]
fn injected_round_trip_time_delays_deliveries() {
    let Some(broker) = TestBroker::require(&[Capability::FaultInjection]) else {
        return;
    };
    let cluster = broker.embedded_cluster().unwrap();
    let topic = unique_topic("faults-rtt");
    cluster.create_topic(&topic, 1).unwrap();
    let (producer, reports) = producer(cluster, &[]);
    send(&producer, &topic);
    reports
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();

    cluster
        .set_round_trip_time(1, Duration::from_millis(300))
        .unwrap();
    let started = Instant::now();
    send(&producer, &topic);
    reports
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "delivery took only {took:?} with a 300 ms RTT"
    );
}

#[test]
fn unknown_broker_ids_are_reported() {
    let cluster = EmbeddedCluster::start(2).unwrap();
    assert_eq!(cluster.broker_count(), 2);
    let err = cluster.broker_down(7).unwrap_err().to_string();
    assert!(err.contains("broker 7"), "{err}");
    assert!(EmbeddedCluster::start(0).is_err());
}
