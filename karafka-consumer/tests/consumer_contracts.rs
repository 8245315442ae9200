//! Bad configuration is refused at `build()` with every problem listed, each at its path with
//! a message that says what is wrong and how to fix it.

use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, Scheduling};

struct Noop;
impl Consumer for Noop {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

fn base() -> AppBuilder {
    App::builder().kafka("bootstrap.servers", "127.0.0.1:9092")
}

fn says(builder: AppBuilder, path: &str, fragment: &str) {
    let error = builder
        .build()
        .expect_err("the configuration must be refused");
    let v = error
        .at(path)
        .unwrap_or_else(|| panic!("no violation at {path}; got:\n{error}"));
    assert!(
        v.message.contains(fragment),
        "{path}: `{}` should say `{fragment}`",
        v.message
    );
}

#[test]
fn a_valid_app_builds() {
    let app = base()
        .topic("orders", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
    assert_eq!(app.routes().consumer_groups().count(), 1);
}

#[test]
fn invalid_topic_and_group_names() {
    says(
        base().topic("bad topic", |t| t.consumer(|| Noop)),
        "consumer_groups.karafka.topics.bad topic.name",
        "[A-Za-z0-9._-]",
    );
    says(
        base().consumer_group("bad/group", |g| g.topic("t", |t| t.consumer(|| Noop))),
        "consumer_groups.bad/group.name",
        "use only letters",
    );
}

#[test]
fn a_topic_once_per_consumer_group() {
    says(
        base()
            .topic("t", |t| t.consumer(|| Noop))
            .topic("t", |t| t.consumer(|| Noop)),
        "consumer_groups.karafka.topics.t",
        "routed twice",
    );
    // The same topic in two consumer groups is fine.
    base()
        .consumer_group("a", |g| g.topic("t", |t| t.consumer(|| Noop)))
        .consumer_group("b", |g| g.topic("t", |t| t.consumer(|| Noop)))
        .build()
        .unwrap();
}

#[test]
fn shutdown_timeout_must_exceed_max_wait_time() {
    says(
        base()
            .shutdown_timeout(Duration::from_secs(2))
            .topic("slow", |t| {
                t.consumer(|| Noop).max_wait_time(Duration::from_secs(5))
            }),
        "app.shutdown_timeout",
        "not longer than the max_wait_time of `slow`",
    );
}

#[test]
fn scheduling_is_the_apps_unless_a_named_group_chooses() {
    let app = base()
        .topic("a", |t| t.consumer(|| Noop))
        .consumer_group("cg", |g| {
            g.subscription_group("karafkas-rule", |sg| {
                sg.scheduling(Scheduling::Poll)
                    .topic("b", |t| t.consumer(|| Noop))
            })
        })
        .build()
        .unwrap();
    let modes: Vec<(String, Scheduling)> = app
        .routes()
        .consumer_groups()
        .flat_map(|g| g.subscription_groups())
        .map(|sg| (sg.name().to_owned(), sg.scheduling()))
        .collect();
    assert_eq!(
        modes,
        [
            ("sg-0".to_owned(), Scheduling::Partition),
            ("karafkas-rule".to_owned(), Scheduling::Poll)
        ]
    );
    let app = base()
        .scheduling(Scheduling::Poll)
        .topic("a", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
    let sg = app.routes().consumer_groups().next().unwrap();
    assert_eq!(
        sg.subscription_groups().next().unwrap().scheduling(),
        Scheduling::Poll
    );
}

#[test]
fn revocation_timeout_must_be_shorter_than_max_poll_interval() {
    says(
        base()
            .revocation_timeout(Duration::from_secs(20))
            .kafka("max.poll.interval.ms", "10000")
            .topic("t", |t| t.consumer(|| Noop)),
        "app.revocation_timeout",
        "not shorter than max.poll.interval.ms of subscription group `karafka.sg-0`",
    );
    // The revocation's commit (2 s) and max_wait_time (1 s) count too.
    says(
        base()
            .revocation_timeout(Duration::from_millis(7500))
            .kafka("max.poll.interval.ms", "10000")
            .topic("t", |t| t.consumer(|| Noop)),
        "app.revocation_timeout",
        "max_wait_time (1s)",
    );
    base()
        .revocation_timeout(Duration::from_millis(6500))
        .kafka("max.poll.interval.ms", "10000")
        .topic("t", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
    // Poll scheduling does not wait in revocations.
    base()
        .scheduling(Scheduling::Poll)
        .revocation_timeout(Duration::from_secs(20))
        .kafka("max.poll.interval.ms", "10000")
        .topic("t", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
}

#[test]
fn the_prefetch_budget_is_at_least_one_mib() {
    says(
        base()
            .prefetch_budget(1000)
            .topic("t", |t| t.consumer(|| Noop)),
        "app.prefetch_budget",
        "at least 1 MiB",
    );
}

#[test]
fn pause_timeout_at_most_its_max() {
    says(
        base()
            .pause_timeout(Duration::from_secs(10))
            .pause_max_timeout(Duration::from_secs(5))
            .topic("t", |t| t.consumer(|| Noop)),
        "app.pause_timeout",
        "longer than pause_max_timeout",
    );
}

#[test]
fn a_missing_consumer() {
    says(
        base().topic("t", |t| t.max_messages(5)),
        "consumer_groups.karafka.topics.t.consumer",
        "is missing",
    );
    // An inactive topic needs none.
    base()
        .topic("t", |t| t.consumer(|| Noop))
        .topic("declared-only", |t| t.active(false))
        .build()
        .unwrap();
}

#[test]
fn missing_bootstrap_servers() {
    says(
        App::builder().topic("t", |t| t.consumer(|| Noop)),
        "app.kafka.bootstrap.servers",
        "is required",
    );
}

#[test]
fn invalid_librdkafka_keys_and_values() {
    says(
        base()
            .kafka("no.such.key", "1")
            .topic("t", |t| t.consumer(|| Noop)),
        "app.kafka.no.such.key",
        "no.such.key",
    );
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop).kafka("fetch.wait.max.ms", "soon")
        }),
        "consumer_groups.karafka.topics.t.kafka.fetch.wait.max.ms",
        "librdkafka rejects",
    );
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop)
                .kafka("enable.auto.offset.store", "true")
        }),
        "consumer_groups.karafka.topics.t.kafka.enable.auto.offset.store",
        "must stay false",
    );
}

#[test]
fn dead_letter_queue_rules() {
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop)
                .dead_letter_queue(DeadLetterQueue::new("t"))
        }),
        "consumer_groups.karafka.topics.t.dead_letter_queue.topic",
        "is the topic itself",
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let error = App::builder()
        .concurrency(0)
        .pause_timeout(Duration::from_secs(10))
        .pause_max_timeout(Duration::from_secs(1))
        .topic("bad name", |t| t.max_messages(0))
        .build()
        .unwrap_err();
    let paths: Vec<&str> = error.violations().iter().map(|v| v.path.as_str()).collect();
    for expected in [
        "app.kafka.bootstrap.servers",
        "app.concurrency",
        "app.pause_timeout",
        "consumer_groups.karafka.topics.bad name.name",
        "consumer_groups.karafka.topics.bad name.consumer",
        "consumer_groups.karafka.topics.bad name.max_messages",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(
        error.to_string().starts_with("invalid configuration ("),
        "{error}"
    );
}

#[test]
fn subscription_groups_form_by_connection_settings() {
    let app = base()
        .topic("a", |t| t.consumer(|| Noop))
        .topic("b", |t| t.consumer(|| Noop))
        .topic("c", |t| t.consumer(|| Noop).max_messages(500))
        .topic("d", |t| {
            t.consumer(|| Noop).kafka("fetch.min.bytes", "1000")
        })
        .consumer_group("other", |g| {
            g.subscription_group("named", |sg| {
                sg.topic("x", |t| t.consumer(|| Noop))
                    .topic("y", |t| t.consumer(|| Noop))
                    .kafka("client.id", "named-client")
            })
        })
        .build()
        .unwrap();
    let groups: Vec<_> = app.routes().consumer_groups().collect();
    let sgs: Vec<Vec<String>> = groups[0]
        .subscription_groups()
        .map(|sg| sg.topics().map(|t| t.name().to_owned()).collect())
        .collect();
    assert_eq!(sgs, [vec!["a", "b"], vec!["c"], vec!["d"]]);
    let named: Vec<_> = groups[1].subscription_groups().collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].name(), "named");
    assert_eq!(named[0].kafka().get("client.id"), Some("named-client"));
    assert_eq!(named[0].kafka().get("group.id"), Some("other"));
    assert_eq!(
        named[0].kafka().get("enable.auto.offset.store"),
        Some("false")
    );
}

#[test]
fn group_id_is_refused_at_every_level_with_the_builder_call_to_use() {
    // A user who sets `group.id` expects that group and its committed offsets; silently
    // joining the app's group instead would reprocess the topic from auto.offset.reset.
    let app_level = base()
        .kafka("group.id", "orders-service")
        .topic("t", |t| t.consumer(|| Noop));
    says(app_level, "app.kafka.group.id", ".name(\"orders-service\")");
    says(
        base().topic("t", |t| t.consumer(|| Noop).kafka("group.id", "g2")),
        "consumer_groups.karafka.topics.t.kafka.group.id",
        ".consumer_group(\"g2\", ...)",
    );
    says(
        base().consumer_group("g", |g| {
            g.subscription_group("sg", |sg| {
                sg.topic("x", |t| t.consumer(|| Noop))
                    .kafka("group.id", "g3")
            })
        }),
        "consumer_groups.g.subscription_groups.sg.kafka.group.id",
        "is set by the consumer group's name",
    );
    says(
        base()
            .kafka("enable.auto.offset.store", "true")
            .topic("t", |t| t.consumer(|| Noop)),
        "app.kafka.enable.auto.offset.store",
        "must stay false",
    );
    // Named instead, the app consumes as that group.
    let app = base()
        .name("orders-service")
        .topic("t", |t| t.consumer(|| Noop))
        .build()
        .unwrap();
    let group = app.routes().consumer_groups().next().unwrap();
    let sg = group.subscription_groups().next().unwrap();
    assert_eq!(sg.kafka().get("group.id"), Some("orders-service"));
}

#[test]
fn sasl_needs_a_mechanism_somewhere_in_the_merged_connection() {
    // Without one librdkafka would use GSSAPI (Kerberos), which this build lacks.
    says(
        base()
            .kafka("security.protocol", "SASL_SSL")
            .topic("t", |t| t.consumer(|| Noop)),
        "consumer_groups.karafka.subscription_groups.sg-0.kafka.sasl.mechanisms",
        "GSSAPI",
    );
    // The protocol for the app, the mechanism for one subscription group: its connection is
    // fine, but the app's producer connects with the app-level settings alone.
    says(
        base()
            .kafka("security.protocol", "SASL_SSL")
            .consumer_group("g", |g| {
                g.subscription_group("sg", |sg| {
                    sg.topic("x", |t| t.consumer(|| Noop))
                        .kafka("sasl.mechanisms", "SCRAM-SHA-512")
                })
            }),
        "app.kafka.sasl.mechanisms",
        "for the app's producer",
    );
    // The mechanism for the app, the protocol for one subscription group: fine everywhere.
    base()
        .kafka("sasl.mechanisms", "SCRAM-SHA-512")
        .consumer_group("g", |g| {
            g.subscription_group("sg", |sg| {
                sg.topic("x", |t| t.consumer(|| Noop))
                    .kafka("security.protocol", "SASL_SSL")
            })
        })
        .build()
        .unwrap();
}

#[test]
fn named_subscription_groups_must_share_connection_settings() {
    says(
        base().consumer_group("g", |g| {
            g.subscription_group("sg", |sg| {
                sg.topic("x", |t| t.consumer(|| Noop))
                    .topic("y", |t| t.consumer(|| Noop).max_messages(7))
            })
        }),
        "consumer_groups.g.subscription_groups.sg",
        "differ in kafka overrides, max_messages",
    );
}

#[test]
fn defaults_apply_and_topics_override_them() {
    let app = base()
        .defaults(|d| {
            d.max_messages(250)
                .max_wait_time(Duration::from_millis(300))
        })
        .topic("a", |t| t.consumer(|| Noop))
        .topic("b", |t| t.consumer(|| Noop).max_messages(10))
        .build()
        .unwrap();
    let topics: Vec<_> = app
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .topics()
        .map(|t| (t.name().to_owned(), t.max_messages(), t.max_wait_time()))
        .collect();
    assert_eq!(topics[0], ("a".to_owned(), 250, Duration::from_millis(300)));
    assert_eq!(topics[1], ("b".to_owned(), 10, Duration::from_millis(300)));
}

#[test]
fn declared_topics_routes_dead_letter_topics_and_opt_outs() {
    use karafka_consumer::routing::Declaratives;
    let app = base()
        .defaults(|t| t.declaratives(Declaratives::new().replication_factor(3)))
        .topic("orders", |t| {
            t.consumer(|| Noop)
                .declaratives(
                    Declaratives::new()
                        .partitions(6)
                        .config("retention.ms", "1000"),
                )
                .dead_letter_queue(DeadLetterQueue::new("orders-dlq"))
        })
        .topic("audit", |t| t.consumer(|| Noop))
        .topic("legacy", |t| {
            t.consumer(|| Noop).declaratives(Declaratives::unmanaged())
        })
        .consumer_group("billing", |g| g.topic("orders", |t| t.consumer(|| Noop)))
        .build()
        .unwrap();
    let declared: Vec<(&str, i32, i32)> = app
        .routes()
        .declared_topics()
        .map(|(name, d)| (name, d.partition_count(), d.replication()))
        .collect();
    assert_eq!(
        declared,
        vec![("audit", 1, 3), ("orders", 6, 1), ("orders-dlq", 1, 3)],
        "explicit declaratives win over a group's defaults; DLQ topics get the defaults; \
         unmanaged topics are left out"
    );
}

#[test]
fn bad_and_conflicting_declaratives() {
    use karafka_consumer::routing::Declaratives;
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop)
                .declaratives(Declaratives::new().partitions(0))
        }),
        "consumer_groups.karafka.topics.t.declaratives.partitions",
        "at least 1 partition",
    );
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop)
                .declaratives(Declaratives::new().replication_factor(0))
        }),
        "consumer_groups.karafka.topics.t.declaratives.replication_factor",
        "at least 1",
    );
    says(
        base().topic("t", |t| {
            t.consumer(|| Noop)
                .declaratives(Declaratives::new().config("retention.ms", ""))
        }),
        "consumer_groups.karafka.topics.t.declaratives.configs.retention.ms",
        "is empty",
    );
    says(
        base()
            .topic("t", |t| {
                t.consumer(|| Noop)
                    .declaratives(Declaratives::new().partitions(2))
            })
            .consumer_group("other", |g| {
                g.topic("t", |t| {
                    t.consumer(|| Noop)
                        .declaratives(Declaratives::new().partitions(3))
                })
            }),
        "consumer_groups.other.topics.t.declaratives",
        "declared at consumer_groups.karafka.topics.t",
    );
}
