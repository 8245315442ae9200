//! Swarm mode's routing and contract, without a broker: the violations `build()` lists, the
//! app as each node runs it, what `info` and the CLI say.

use std::time::Duration;

use karafka_consumer::payload::Raw;
use karafka_consumer::swarm::Nodes;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context};
use karafka_pro::{Swarm, SwarmApp, SwarmTopic};

#[derive(Default)]
struct Noop;

impl Consumer for Noop {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

fn builder() -> AppBuilder {
    App::builder().kafka("bootstrap.servers", "127.0.0.1:9092")
}

fn violations(builder: AppBuilder) -> Vec<(String, String)> {
    let e = builder.build().expect_err("the contract refuses it");
    e.violations()
        .iter()
        .map(|v| (v.path.clone(), v.message.clone()))
        .collect()
}

#[test]
fn a_max_wait_time_near_the_report_timeout_is_refused() {
    let v = violations(
        builder()
            .swarm(Swarm::new().node_report_timeout(Duration::from_secs(10)))
            .topic("events", |t| {
                t.consumer(Noop::default)
                    .max_wait_time(Duration::from_secs(8))
            }),
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        v[0].0,
        "consumer_groups.karafka.topics.events.max_wait_time"
    );
    assert!(
        v[0].1
            .contains("not below 80% of the swarm's node_report_timeout (10s)"),
        "{}",
        v[0].1
    );
    // Just under 80% is fine.
    builder()
        .swarm(Swarm::new().node_report_timeout(Duration::from_secs(10)))
        .topic("events", |t| {
            t.consumer(Noop::default)
                .max_wait_time(Duration::from_millis(7900))
        })
        .build()
        .unwrap();
}

#[test]
fn a_max_wait_time_that_would_delay_reports_past_the_timeout_is_refused() {
    // 80% of 3 s is 2.4 s, but a report waits for the listener's 2.3 s wait and the
    // reporter's next wake (1 s): 3.3 s apart.
    let v = violations(
        builder()
            .swarm(
                Swarm::new()
                    .node_report_timeout(Duration::from_secs(3))
                    .report_interval(Duration::from_millis(1500)),
            )
            .topic("events", |t| {
                t.consumer(Noop::default)
                    .max_wait_time(Duration::from_millis(2300))
            }),
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].1.contains("reports could come 3.3s apart"),
        "{}",
        v[0].1
    );
}

#[test]
fn every_bad_setting_is_listed_at_once() {
    let v = violations(
        builder()
            .swarm(
                Swarm::new()
                    .nodes(0)
                    .node_report_timeout(Duration::from_millis(500))
                    .node_restart_timeout(Duration::ZERO)
                    .report_interval(Duration::from_secs(20))
                    .memory_limit(10)
                    .polling_ttl(Duration::ZERO)
                    .consuming_ttl(Duration::ZERO)
                    .shutdown_timeout(Duration::ZERO),
            )
            .topic("events", |t| {
                t.consumer(Noop::default)
                    .max_wait_time(Duration::from_millis(100))
            }),
    );
    let paths: Vec<&str> = v.iter().map(|(p, _)| p.as_str()).collect();
    for path in [
        "swarm.nodes",
        "swarm.node_report_timeout",
        "swarm.node_restart_timeout",
        "swarm.report_interval",
        "swarm.shutdown_timeout",
        "swarm.memory_limit",
        "swarm.polling_ttl",
        "swarm.consuming_ttl",
    ] {
        assert!(paths.contains(&path), "no violation at {path}: {v:?}");
    }
}

#[test]
fn node_ids_the_swarm_lacks_and_nodes_without_topics_are_refused() {
    let v = violations(
        builder()
            .swarm(Swarm::new().nodes(3))
            .topic("a", |t| t.consumer(Noop::default).swarm([0, 5]))
            .topic("b", |t| t.consumer(Noop::default).swarm(7..))
            .topic("c", |t| t.consumer(Noop::default).swarm(Vec::new())),
    );
    let text = format!("{v:?}");
    assert!(
        v.iter()
            .any(|(p, m)| p == "consumer_groups.karafka.topics.a.swarm"
                && m.contains("node id(s) [5]")
                && !m.contains("no node would consume it")),
        "{text}"
    );
    assert!(
        v.iter()
            .any(|(p, m)| p == "consumer_groups.karafka.topics.b.swarm"
                && m.contains("no node would consume it")),
        "{text}"
    );
    assert!(
        v.iter()
            .any(|(p, m)| p == "consumer_groups.karafka.topics.c.swarm"
                && m.starts_with("names no node")),
        "{text}"
    );
    assert!(
        v.iter()
            .any(|(p, m)| p == "swarm.nodes" && m.starts_with("node 1 has no topic")),
        "{text}"
    );
    assert!(
        v.iter()
            .any(|(p, m)| p == "swarm.nodes" && m.starts_with("node 2 has no topic")),
        "{text}"
    );
}

#[test]
fn each_node_runs_its_topics_with_its_own_static_membership() {
    let app = builder()
        .kafka("group.instance.id", "billing")
        .swarm(Swarm::new().nodes(3))
        .topic("everywhere", |t| t.consumer(Noop::default))
        .topic("first", |t| t.consumer(Noop::default).swarm([0]))
        .topic("later", |t| t.consumer(Noop::default).swarm(1..))
        .build()
        .unwrap();
    let topics = |node: usize| {
        let app = app.for_node(node).unwrap();
        let mut names: Vec<String> = app
            .routes()
            .consumer_groups()
            .flat_map(|g| g.subscription_groups())
            .flat_map(|sg| sg.topics().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            .collect();
        names.sort();
        let ids: Vec<String> = app
            .routes()
            .consumer_groups()
            .flat_map(|g| g.subscription_groups())
            .map(|sg| sg.kafka().get("group.instance.id").unwrap_or("").to_owned())
            .collect();
        (names, ids)
    };
    let (names, ids) = topics(0);
    assert_eq!(names, ["everywhere", "first"]);
    assert!(ids.iter().all(|id| id == "billing-0"), "{ids:?}");
    let (names, ids) = topics(2);
    assert_eq!(names, ["everywhere", "later"]);
    assert!(ids.iter().all(|id| id == "billing-2"), "{ids:?}");
    // The routes keep what each topic was limited to.
    let limited = app
        .routes()
        .consumer_groups()
        .flat_map(|g| g.subscription_groups())
        .flat_map(|sg| {
            sg.topics()
                .map(|t| t.name() == "first" && t.swarm_nodes() == &Nodes::from([0]))
                .collect::<Vec<_>>()
        })
        .any(|b| b);
    assert!(limited);
}

#[test]
fn a_node_left_with_nothing_is_an_error() {
    // Without swarm mode nothing checks node ids; `for_node` still refuses a node with no
    // topic, naming the cause.
    let app = builder()
        .topic("first", |t| t.consumer(Noop::default).swarm([0]))
        .build()
        .unwrap();
    let e = app.for_node(1).unwrap_err().to_string();
    assert!(e.contains("node 1 has no topic to consume"), "{e}");
}

#[test]
fn info_shows_the_swarm_settings_and_each_topics_nodes() {
    let app = builder()
        .swarm(Swarm::new().nodes(2).memory_limit(256 * 1024 * 1024))
        .topic("first", |t| t.consumer(Noop::default).swarm([0]))
        .topic("all", |t| t.consumer(Noop::default))
        .build()
        .unwrap();
    let info = karafka_consumer::cli::info(&app);
    assert!(info.contains("swarm: 2 node(s); report every 5s, replaced after 60s without one; restarted 5s after death; SIGKILL shutdown_timeout after SIGTERM"), "{info}");
    assert!(
        info.contains(
            "swarm liveness: polling_ttl 300s, consuming_ttl none, memory_limit 268435456 bytes"
        ),
        "{info}"
    );
    assert!(
        info.contains("topic first → ") && info.contains(", swarm nodes [0]"),
        "{info}"
    );
    assert!(info.contains(", swarm all nodes"), "{info}");
}

#[test]
fn swarm_without_a_supervision_says_how_to_get_one() {
    let app = builder()
        .topic("events", |t| t.consumer(Noop::default))
        .build()
        .unwrap();
    let mut out = Vec::new();
    let code = karafka_consumer::cli::execute(
        &app,
        &karafka_consumer::cli::Command::Swarm(Default::default()),
        &mut out,
    );
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::from(64))
    );
}
