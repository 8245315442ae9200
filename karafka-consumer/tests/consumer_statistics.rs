//! With `statistics.interval.ms` > 0, each subscription group's librdkafka statistics arrive as
//! `statistics.emitted` events, decoded, with the consumer group state and per-partition lag.

mod common;

use std::sync::{Arc, Mutex};

use common::{app, produce};
use karafka_consumer::payload::Raw;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_core::instrumentation::{Event, Statistics};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_for};

struct Slow;

impl Consumer for Slow {
    type Payload = Raw;
    async fn consume(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok(())
    }
}

#[test]
fn consumer_statistics_carry_lag() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let (topic, group) = (unique_topic("stats"), unique_group("stats"));
    broker.create_topic(&topic, 2).unwrap();
    produce(&broker, &topic, 2000, "m");
    type Latest = Arc<Mutex<Option<(String, Arc<Statistics>)>>>;
    let latest: Latest = Arc::default();
    let sink = latest.clone();
    let app = app(&broker, &group)
        .kafka("statistics.interval.ms", "100")
        .topic(&topic, |t| t.consumer(|| Slow).max_messages(10))
        .build()
        .unwrap();
    app.monitor().subscribe_fn(move |e| {
        if let Event::StatisticsEmitted {
            source_id,
            statistics,
            ..
        } = e
        {
            *sink.lock().unwrap() = Some((source_id.to_string(), statistics.clone()));
        }
    });
    let running = app.start().unwrap();
    let (source, stats) = wait_for(broker.join_deadline(), || {
        latest.lock().unwrap().clone().filter(|(_, s)| {
            s.cgrp.as_ref().is_some_and(|g| g.assignment_size == 2) && !s.consumer_lags().is_empty()
        })
    })
    .expect("statistics with an assignment and lag");
    running.stop_blocking().unwrap();
    assert_eq!(source, "sg-0", "statistics name their subscription group");
    assert_eq!(stats.client_type, "consumer");
    let lags = stats.consumer_lags();
    assert!(lags.iter().all(|(t, _, _)| *t == topic), "{lags:?}");
    assert!(
        lags.iter().any(|(_, _, lag)| *lag > 0),
        "a slow consumer lags: {lags:?}"
    );
}
