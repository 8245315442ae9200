//! Multiplexing without a broker: its contract at `build()`, what `info` says, and the
//! decisions of dynamic mode from given observations.

use std::time::{Duration, Instant};

use karafka_consumer::connections::{ConnectionPlan, ConnectionView, FamilyView, Observed, Scale};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, cli};
use karafka_pro::{Multiplexing, MultiplexingSubscriptionGroup};

struct Nothing;

impl Consumer for Nothing {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        Ok(())
    }
}

fn base() -> AppBuilder {
    App::builder()
        .name("shop")
        .kafka("bootstrap.servers", "127.0.0.1:9092")
}

fn violations(builder: AppBuilder) -> Vec<(String, String)> {
    match builder.build() {
        Ok(_) => Vec::new(),
        Err(e) => e
            .violations()
            .iter()
            .map(|v| (v.path.clone(), v.message.clone()))
            .collect(),
    }
}

fn with(m: Multiplexing) -> AppBuilder {
    base().consumer_group("shop", |cg| {
        cg.subscription_group("events", |sg| {
            sg.multiplexing(m)
                .topic("orders", |t| t.consumer(|| Nothing))
        })
    })
}

const PATH: &str = "consumer_groups.shop.subscription_groups.events.multiplexing";

#[test]
fn a_valid_static_and_dynamic_config_builds() {
    assert!(violations(with(Multiplexing::new(3))).is_empty());
    let dynamic = with(Multiplexing::new(4).min(1)).kafka("statistics.interval.ms", "1000");
    let app = dynamic.build().unwrap();
    let sg = app
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .subscription_groups()
        .next()
        .unwrap();
    assert_eq!(sg.connection_plan().max(), 4);
    assert_eq!(sg.connection_plan().boot(), 2);
    assert!(sg.connection_plan().dynamic());
}

#[test]
fn max_below_two_is_refused() {
    let v = violations(with(Multiplexing::new(1)));
    assert!(
        v.iter()
            .any(|(p, m)| *p == format!("{PATH}.max") && m.contains("at least 2")),
        "{v:?}"
    );
}

#[test]
fn min_boot_and_max_must_be_ordered() {
    let v = violations(with(Multiplexing::new(2).min(3)).kafka("statistics.interval.ms", "1000"));
    assert!(v.iter().any(|(p, _)| *p == format!("{PATH}.min")), "{v:?}");
    // The default boot follows min and max: not reported when they are the problem.
    assert!(
        !v.iter().any(|(p, _)| *p == format!("{PATH}.boot")),
        "{v:?}"
    );
    let v = violations(
        with(Multiplexing::new(4).min(2).boot(1)).kafka("statistics.interval.ms", "1000"),
    );
    assert!(
        v.iter()
            .any(|(p, m)| *p == format!("{PATH}.boot") && m.contains("between min (2) and max (4)")),
        "{v:?}"
    );
    let v = violations(
        with(Multiplexing::new(4).min(1).boot(5)).kafka("statistics.interval.ms", "1000"),
    );
    assert!(v.iter().any(|(p, _)| *p == format!("{PATH}.boot")), "{v:?}");
}

#[test]
fn scale_delay_below_a_second_is_refused() {
    let v = violations(
        with(
            Multiplexing::new(4)
                .min(1)
                .scale_delay(Duration::from_millis(500)),
        )
        .kafka("statistics.interval.ms", "1000"),
    );
    assert!(
        v.iter()
            .any(|(p, m)| *p == format!("{PATH}.scale_delay") && m.contains("at least 1 s")),
        "{v:?}"
    );
}

#[test]
fn dynamic_mode_needs_statistics() {
    let v = violations(with(Multiplexing::new(4).min(1)));
    assert!(
        v.iter()
            .any(|(p, m)| *p == format!("{PATH}.statistics.interval.ms")
                && m.contains("statistics.interval.ms")),
        "{v:?}"
    );
    // Static mode does not.
    assert!(violations(with(Multiplexing::new(4))).is_empty());
}

#[test]
fn multiplexing_on_a_topic_says_where_it_belongs() {
    let v = violations(base().topic("orders", |t| {
        t.consumer(|| Nothing).multiplexing(Multiplexing::new(2))
    }));
    assert!(
        v.iter().any(
            |(p, m)| p == "consumer_groups.shop.topics.orders.multiplexing"
                && m.contains(".subscription_group(\"name\", |sg| sg.multiplexing(")
        ),
        "{v:?}"
    );
}

#[test]
fn info_shows_the_plan_the_warning_and_the_total_prefetch() {
    let app = with(Multiplexing::new(4).min(1))
        .kafka("statistics.interval.ms", "1000")
        .build()
        .unwrap();
    let info = cli::info(&app);
    assert!(
        info.contains("multiplexing: dynamic, 1..=4 connections (boot 2), scale_delay 60s"),
        "{info}"
    );
    assert!(info.contains("without incremental rebalancing"), "{info}");
    // 4 connections × the 64 MiB prefetch budget (per-partition scheduling).
    assert!(
        info.contains(&format!(
            "at most {} bytes over 4 connection(s)",
            4u64 << 26
        )),
        "{info}"
    );
    let cooperative = with(Multiplexing::new(4).min(1))
        .kafka("statistics.interval.ms", "1000")
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .build()
        .unwrap();
    assert!(!cli::info(&cooperative).contains("warning:"));
}

#[test]
fn dynamic_multiplexing_with_static_membership_warns() {
    let app = with(Multiplexing::new(4).min(1))
        .kafka("statistics.interval.ms", "1000")
        .kafka("partition.assignment.strategy", "cooperative-sticky")
        .kafka("group.instance.id", "shop-1")
        .build()
        .unwrap();
    let info = cli::info(&app);
    assert!(
        info.contains("warning: dynamic multiplexing with static membership"),
        "{info}"
    );
    // Each connection gets its own member id.
    let sg = app
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .subscription_groups()
        .next()
        .unwrap();
    assert_eq!(sg.kafka().get("group.instance.id"), Some("shop-1"));
}

// ---- decisions ----------------------------------------------------------------------------

const DELAY: Duration = Duration::from_secs(2);

fn plan() -> Multiplexing {
    Multiplexing::new(3).min(1).scale_delay(DELAY)
}

/// A connection that reported `ago` before `now`, steady, last rebalanced `age` before that.
fn conn(
    index: usize,
    assigned: usize,
    now: Instant,
    ago: Duration,
    age: Duration,
) -> ConnectionView {
    ConnectionView::new(
        index,
        format!("events#{index}"),
        Some(Observed::new(now - ago, "up", "steady", age, assigned)),
    )
}

fn decide(
    connections: &[ConnectionView],
    now: Instant,
    changed: Duration,
    group_changed: Duration,
) -> Option<Scale> {
    plan().decide(&FamilyView::new(
        now,
        connections,
        now - changed,
        connections,
        now - group_changed,
    ))
}

#[test]
fn a_stable_family_stops_its_highest_idle_connection() {
    let now = Instant::now() + Duration::from_secs(60);
    let ms = Duration::from_millis;
    let c = [
        conn(0, 3, now, ms(100), ms(5_000)),
        conn(1, 0, now, ms(100), ms(5_000)),
        conn(2, 0, now, ms(100), ms(5_000)),
    ];
    match decide(&c, now, ms(10_000), ms(10_000)) {
        Some(Scale::Down { connection, reason }) => {
            assert_eq!(connection, 2);
            assert!(reason.contains("events#2 holds no partition"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stable_family_with_a_busy_connection_starts_one_more() {
    let now = Instant::now() + Duration::from_secs(60);
    let ms = Duration::from_millis;
    let c = [
        conn(0, 5, now, ms(100), ms(5_000)),
        conn(1, 1, now, ms(100), ms(5_000)),
    ];
    assert!(matches!(
        decide(&c, now, ms(10_000), ms(10_000)),
        Some(Scale::Up { .. })
    ));
    // At max: nothing.
    let c = [
        conn(0, 5, now, ms(100), ms(5_000)),
        conn(1, 2, now, ms(100), ms(5_000)),
        conn(2, 2, now, ms(100), ms(5_000)),
    ];
    assert_eq!(decide(&c, now, ms(10_000), ms(10_000)), None);
    // At min with an idle connection: nothing either.
    let c = [conn(0, 0, now, ms(100), ms(5_000))];
    assert_eq!(decide(&c, now, ms(10_000), ms(10_000)), None);
}

#[test]
fn nothing_changes_until_the_family_and_its_group_are_stable() {
    let now = Instant::now() + Duration::from_secs(60);
    let ms = Duration::from_millis;
    let busy = |ago, age| [conn(0, 5, now, ago, age), conn(1, 1, now, ago, age)];
    // The family changed 1 s ago.
    assert_eq!(
        decide(&busy(ms(100), ms(5_000)), now, ms(1_000), ms(10_000)),
        None
    );
    // The group changed 1 s ago.
    assert_eq!(
        decide(&busy(ms(100), ms(5_000)), now, ms(10_000), ms(1_000)),
        None
    );
    // A rebalance 1 s ago.
    assert_eq!(
        decide(&busy(ms(100), ms(900)), now, ms(10_000), ms(10_000)),
        None
    );
    // Statistics from before the last change.
    assert_eq!(
        decide(&busy(ms(11_000), ms(5_000)), now, ms(10_000), ms(10_000)),
        None
    );
    // A connection rebalancing.
    let mut c = busy(ms(100), ms(5_000));
    c[1] = ConnectionView::new(
        1,
        "events#1",
        Some(Observed::new(
            now - ms(100),
            "up",
            "wait-join",
            ms(5_000),
            1,
        )),
    );
    assert_eq!(decide(&c, now, ms(10_000), ms(10_000)), None);
    // No statistics yet.
    let c = [
        conn(0, 5, now, ms(100), ms(5_000)),
        ConnectionView::new(1, "events#1", None),
    ];
    assert_eq!(decide(&c, now, ms(10_000), ms(10_000)), None);
    // Another family of the group not steady.
    let family = busy(ms(100), ms(5_000));
    let mut group = family.to_vec();
    group.push(ConnectionView::new(
        0,
        "audit#0",
        Some(Observed::new(
            now - ms(100),
            "up",
            "wait-sync",
            ms(5_000),
            1,
        )),
    ));
    assert_eq!(
        plan().decide(&FamilyView::new(
            now,
            &family,
            now - ms(10_000),
            &group,
            now - ms(10_000)
        )),
        None
    );
    // And once everything is stable, it does.
    assert!(decide(&busy(ms(100), ms(5_000)), now, ms(10_000), ms(10_000)).is_some());
}
