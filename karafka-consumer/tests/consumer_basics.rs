//! The basic path against a broker: every produced message reaches `consume` once, in offset
//! order per partition, with decoded payloads and batch metadata; batches are marked
//! automatically and committed, so the group's committed offsets reach the end; stopping runs
//! `shutdown` hooks; and events describe all of it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Recorder, app, committed, produce};
use karafka_consumer::payload::Text;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

type Seen = Arc<Mutex<BTreeMap<i32, Vec<(i64, String)>>>>;

struct Collect {
    seen: Seen,
    shutdowns: Arc<Mutex<u32>>,
}

impl Consumer for Collect {
    type Payload = Text;

    async fn consume(&mut self, ctx: &Context<Text>) -> ConsumeResult {
        let meta = ctx.messages().metadata();
        assert_eq!(meta.size, ctx.messages().len());
        assert_eq!(meta.first_offset, ctx.messages().first().unwrap().offset());
        assert!(meta.consumption_lag_ms >= 0);
        let mut seen = self.seen.lock().unwrap();
        for message in ctx.messages() {
            let text = message.payload()?;
            seen.entry(message.partition())
                .or_default()
                .push((message.offset(), text.to_string()));
        }
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &Context<Text>) -> ConsumeResult {
        *self.shutdowns.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn every_message_is_consumed_in_order_and_committed() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("basics");
    let group = unique_group("basics");
    broker.create_topic(&topic, 3).unwrap();
    produce(&broker, &topic, 300, "m");

    let seen: Seen = Arc::default();
    let shutdowns = Arc::new(Mutex::new(0));
    let (s, d) = (seen.clone(), shutdowns.clone());
    let app = app(&broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || Collect {
                seen: s.clone(),
                shutdowns: d.clone(),
            })
            .max_messages(50)
        })
        .build()
        .unwrap();
    let events = Recorder::attach(app.monitor());
    let running = app.start().unwrap();
    wait_until(broker.join_deadline(), || {
        seen.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 300
    })
    .expect("all 300 messages consumed");
    running.stop_blocking().unwrap();

    let seen = seen.lock().unwrap();
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, 300, "each message exactly once");
    for (partition, messages) in seen.iter() {
        let offsets: Vec<i64> = messages.iter().map(|(o, _)| *o).collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {partition} in order, no gaps");
    }
    let commits = committed(&broker, &group, &topic, 3);
    let committed_total: i64 = commits.values().sum();
    assert_eq!(
        committed_total, 300,
        "committed offsets reach the end: {commits:?}"
    );
    for (partition, messages) in seen.iter() {
        assert_eq!(commits.get(partition), Some(&(messages.len() as i64)));
    }
    assert!(*shutdowns.lock().unwrap() >= 1, "shutdown hooks ran");
    for name in [
        "rebalance.partitions_assigned",
        "connection.listener.fetch_loop.received",
        "consumer.consume",
        "consumer.consumed",
        "worker.process",
        "worker.processed",
        "consumer.shutdown",
    ] {
        assert!(
            events.count(name) > 0,
            "no {name} event: {:?}",
            events.names()
        );
    }
    let _ = Duration::ZERO;
}
