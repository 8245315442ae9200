//! The admin API against a broker: watermarks, a group's committed offsets and lag, moving a
//! group's offsets (to offsets and to a time), listing groups; declarative topics (`plan`,
//! `migrate` twice, `delete`); and the clear error where a broker cannot do something.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use karafka_consumer::admin::{Admin, TopicChange};
use karafka_consumer::payload::Raw;
use karafka_consumer::routing::{DeadLetterQueue, Declaratives};
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_producer::{Message, Producer};
use karafka_testing::{BrokerKind, Capability, TestBroker, unique_group, unique_topic};

fn admin(broker: &TestBroker) -> Admin {
    Admin::new(&broker.producer_settings())
        .unwrap()
        .timeout(Duration::from_secs(10))
}

/// One message per request, so even Tansu's high watermarks are exact.
fn produce_to(broker: &TestBroker, topic: &str, partition: i32, count: usize) {
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    for i in 0..count {
        producer
            .produce_sync(Message::new(topic, format!("m{i}")).partition(partition))
            .unwrap();
    }
    producer.close().unwrap();
}

struct Noop;
impl Consumer for Noop {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

fn map(entries: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    entries.iter().copied().collect()
}

#[test]
fn offsets_lag_and_moving_a_group() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("admin-lag");
    let group = unique_group("admin-lag");
    broker.create_topic(&topic, 2).unwrap();
    produce_to(&broker, &topic, 0, 10);
    produce_to(&broker, &topic, 1, 5);
    let admin = admin(&broker);

    assert_eq!(admin.partition_count(&topic).unwrap(), 2);
    assert_eq!(admin.watermarks(&topic, 0).unwrap(), (0, 10));
    assert_eq!(admin.watermarks(&topic, 1).unwrap(), (0, 5));
    assert_eq!(admin.committed_offsets(&group, &topic).unwrap(), map(&[]));
    assert_eq!(admin.lag(&group, &topic).unwrap(), map(&[(0, 10), (1, 5)]));

    admin
        .seek_group(&group, &topic, &map(&[(0, 4), (1, 5)]))
        .unwrap();
    assert_eq!(
        admin.committed_offsets(&group, &topic).unwrap(),
        map(&[(0, 4), (1, 5)])
    );
    assert_eq!(admin.lag(&group, &topic).unwrap(), map(&[(0, 6), (1, 0)]));
    let missing = unique_topic("admin-missing");
    let error = admin.partition_count(&missing).unwrap_err().to_string();
    assert!(
        error.contains(&missing) && error.contains("does not exist"),
        "{error}"
    );
}

#[test]
fn listing_groups() {
    let Some(broker) = TestBroker::require(&[Capability::ListGroups]) else {
        return;
    };
    let topic = unique_topic("admin-groups");
    let group = unique_group("admin-groups");
    broker.create_topic(&topic, 1).unwrap();
    let admin = admin(&broker);
    admin.seek_group(&group, &topic, &map(&[(0, 0)])).unwrap();
    assert!(
        admin.list_groups().unwrap().contains(&group),
        "a group with committed offsets is listed"
    );
}

#[test]
fn the_mock_cannot_list_groups_and_says_so() {
    let broker = TestBroker::embedded().unwrap();
    let error = admin(&broker).list_groups().unwrap_err().to_string();
    assert!(
        error.contains("list consumer groups") && error.contains("does not support"),
        "{error}"
    );
}

#[test]
fn moving_a_group_to_a_time() {
    let Some(broker) = TestBroker::require(&[Capability::OffsetsForTimes]) else {
        return;
    };
    let topic = unique_topic("admin-time");
    let group = unique_group("admin-time");
    broker.create_topic(&topic, 1).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    let base = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..5u64 {
        let at = base + Duration::from_secs(i * 60);
        producer
            .produce_sync(Message::new(topic.as_str(), "m").partition(0).timestamp(at))
            .unwrap();
    }
    producer.close().unwrap();
    let admin = admin(&broker);
    let at = |s: u64| base + Duration::from_secs(s);
    assert_eq!(
        admin.seek_group_to_time(&group, &topic, at(90)).unwrap(),
        map(&[(0, 2)])
    );
    assert_eq!(
        admin.committed_offsets(&group, &topic).unwrap(),
        map(&[(0, 2)])
    );
    assert_eq!(
        admin.seek_group_to_time(&group, &topic, at(0)).unwrap(),
        map(&[(0, 0)])
    );
    assert_eq!(
        admin.seek_group_to_time(&group, &topic, at(7200)).unwrap(),
        map(&[(0, 5)]),
        "past every message: the end"
    );
}

fn declared_app(
    broker: &TestBroker,
    orders: &str,
    archive: &str,
    dlq: &str,
    external: &str,
    partitions: i32,
) -> App {
    common::app(broker, &unique_group("admin-declared"))
        .topic(orders, |t| {
            t.consumer(|| Noop)
                .declaratives(
                    Declaratives::new()
                        .partitions(partitions)
                        .config("retention.ms", "86400000"),
                )
                .dead_letter_queue(DeadLetterQueue::new(dlq))
        })
        .topic(archive, |t| t.active(false))
        .topic(external, |t| {
            t.consumer(|| Noop).declaratives(Declaratives::unmanaged())
        })
        .build()
        .unwrap()
}

#[test]
fn migrate_twice_changes_nothing_the_second_time() {
    let Some(broker) = TestBroker::require(&[Capability::AdminCreateTopics]) else {
        return;
    };
    let (orders, archive, dlq, external) = (
        unique_topic("decl-orders"),
        unique_topic("decl-archive"),
        unique_topic("decl-dlq"),
        unique_topic("decl-external"),
    );
    let app = declared_app(&broker, &orders, &archive, &dlq, &external, 3);
    let admin = admin(&broker);

    let plan = admin.plan(app.routes()).unwrap();
    let mut created: Vec<&str> = plan
        .changes
        .iter()
        .map(|c| match c {
            TopicChange::Create { topic, .. } => topic.as_str(),
            other => panic!("only creations are planned on an empty cluster, got {other}"),
        })
        .collect();
    created.sort();
    let mut expected = vec![orders.as_str(), archive.as_str(), dlq.as_str()];
    expected.sort();
    assert_eq!(created, expected, "the unmanaged topic is left alone");
    assert!(
        plan.to_string()
            .contains(&format!("+ create `{orders}`: 3 partitions")),
        "{plan}"
    );

    let applied = admin.migrate(app.routes()).unwrap();
    assert_eq!(applied, plan);
    assert_eq!(admin.partition_count(&orders).unwrap(), 3);
    assert_eq!(admin.partition_count(&archive).unwrap(), 1);
    assert_eq!(admin.partition_count(&dlq).unwrap(), 1);
    assert_eq!(
        admin
            .topic_configs(&orders)
            .unwrap()
            .get("retention.ms")
            .map(String::as_str),
        Some("86400000")
    );
    assert!(admin.topic(&external).unwrap().is_none());

    let second = admin.migrate(app.routes()).unwrap();
    assert!(
        second.is_empty(),
        "the second migrate changed something:\n{second}"
    );
    assert!(second.to_string().starts_with("No changes"), "{second}");

    // More partitions declared: planned as a raise (Tansu cannot do it; it says so).
    let grown = declared_app(&broker, &orders, &archive, &dlq, &external, 5);
    let plan = admin.plan(grown.routes()).unwrap();
    assert_eq!(
        plan.changes,
        vec![TopicChange::AddPartitions {
            topic: orders.clone(),
            from: 3,
            to: 5
        }]
    );
    match admin.apply(&plan) {
        Ok(()) => assert_eq!(admin.partition_count(&orders).unwrap(), 5),
        Err(e) => {
            assert_eq!(broker.kind(), BrokerKind::Tansu, "only Tansu refuses: {e}");
            assert!(e.to_string().contains("does not support"), "{e}");
        }
    }

    let mut deleted = admin.delete_declared(app.routes()).unwrap();
    deleted.sort();
    assert_eq!(deleted, expected);
    for topic in &expected {
        assert!(admin.topic(topic).unwrap().is_none(), "{topic} was deleted");
    }
}

#[test]
fn the_embedded_cluster_cannot_create_topics_and_the_error_says_what_to_do() {
    // Always the embedded cluster, whatever broker the other tests use: this is its gap.
    let broker = TestBroker::embedded().unwrap();
    let admin = Admin::new(&broker.producer_settings())
        .unwrap()
        .timeout(Duration::from_millis(1500));
    let topic = unique_topic("admin-mock");
    let error = admin
        .create_topic(&topic, 1, 1, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("create topic `{topic}`")),
        "{error}"
    );
    assert!(error.contains("EmbeddedCluster::create_topic"), "{error}");
}
