//! Long-running jobs without a broker: the routing flag, what `info` prints, and the warning
//! when a subscription group combines them with dynamic multiplexing.

use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, cli};
use karafka_pro::{LongRunningJobTopic, Multiplexing, MultiplexingSubscriptionGroup};

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
        .kafka("statistics.interval.ms", "1000")
        .kafka("partition.assignment.strategy", "cooperative-sticky")
}

fn with(m: Multiplexing, long_running: bool) -> App {
    base()
        .consumer_group("shop", |cg| {
            cg.subscription_group("events", |sg| {
                sg.multiplexing(m)
                    .topic("reports", |t| {
                        t.consumer(|| Nothing).long_running_job(long_running)
                    })
                    .topic("orders", |t| t.consumer(|| Nothing))
            })
        })
        .build()
        .unwrap()
}

#[test]
fn the_route_says_which_topics_are_long_running_and_info_prints_it() {
    let app = with(Multiplexing::new(2), true);
    let group = app.routes().consumer_groups().next().unwrap();
    let flags: Vec<(String, bool)> = group
        .topics()
        .map(|t| (t.name().to_owned(), t.is_long_running()))
        .collect();
    assert_eq!(
        flags,
        [("reports".to_owned(), true), ("orders".to_owned(), false)]
    );
    let info = cli::info(&app);
    assert!(info.contains("topic reports → "), "{info}");
    assert!(info.contains(", long-running jobs\n"), "{info}");
    // Static multiplexing: no warning.
    assert!(!info.contains("warning:"), "{info}");
}

#[test]
fn a_later_setting_replaces_an_earlier_one() {
    let app = base()
        .topic("reports", |t| {
            t.consumer(|| Nothing)
                .long_running_job(true)
                .long_running_job(false)
        })
        .build()
        .unwrap();
    let topic = app
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .topics()
        .next()
        .unwrap();
    assert!(!topic.is_long_running());
    assert_eq!(topic.job_policies().len(), 1);
}

#[test]
fn dynamic_multiplexing_with_long_running_jobs_warns() {
    let app = with(Multiplexing::new(4).min(1), true);
    let sg = app
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .subscription_groups()
        .next()
        .unwrap();
    let warnings = sg.connection_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("long-running jobs (topics [\"reports\"]) with dynamic multiplexing"),
        "{warnings:?}"
    );
    assert!(cli::info(&app).contains("warning: long-running jobs"));
    // The same group without long-running topics has nothing to say.
    let plain = with(Multiplexing::new(4).min(1), false);
    let sg = plain
        .routes()
        .consumer_groups()
        .next()
        .unwrap()
        .subscription_groups()
        .next()
        .unwrap();
    assert!(sg.connection_warnings().is_empty());
}
