//! Reaching the end of a partition ends the wait for a batch: with `enable.partition.eof`,
//! the `eofed` hook runs as soon as librdkafka reports the end, not after `max_wait_time`
//! (here 5 s): on a partition that starts empty, and again after the messages that follow.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{app, produce};
use karafka_consumer::payload::Raw;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

#[derive(Default)]
struct Seen {
    eofs: Vec<Instant>,
    consumed: usize,
}

struct Eofs(Arc<Mutex<Seen>>);

impl Consumer for Eofs {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.0.lock().unwrap().consumed += ctx.messages().len();
        Ok(())
    }

    async fn eofed(&mut self, _: &Context<Raw>) -> ConsumeResult {
        self.0.lock().unwrap().eofs.push(Instant::now());
        Ok(())
    }
}

const MAX_WAIT: Duration = Duration::from_secs(5);

#[test]
fn the_end_of_a_partition_hands_out_at_once() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("eof");
    broker.create_topic(&topic, 1).unwrap();
    let group = unique_group("eof");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let assigned = Arc::new(Mutex::new(None::<Instant>));
    let sink = seen.clone();
    let app = app(&broker, &group)
        .kafka("enable.partition.eof", "true")
        .topic(&topic, move |t| {
            t.consumer(move || Eofs(sink.clone()))
                .max_wait_time(MAX_WAIT)
        })
        .build()
        .unwrap();
    let mark = assigned.clone();
    app.monitor().subscribe_fn(move |event| {
        if event.name() == "rebalance.partitions_assigned" {
            mark.lock().unwrap().get_or_insert_with(Instant::now);
        }
    });
    let running = app.start().unwrap();
    let deadline = broker.join_deadline() + MAX_WAIT;
    let first = wait_until(deadline, || !seen.lock().unwrap().eofs.is_empty());
    // Then one message: consumed, and the end reached again.
    let produced_at = Instant::now();
    if first.is_ok() {
        produce(&broker, &topic, 1, "after");
    }
    let second = wait_until(deadline, || seen.lock().unwrap().eofs.len() >= 2);
    running.stop_blocking().unwrap();
    first.expect("eofed ran on the empty partition");
    second.expect("eofed ran again after the new message");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.consumed, 1);
    let assigned = assigned.lock().unwrap().expect("assignment event");
    let to_first = seen.eofs[0].duration_since(assigned);
    let to_second = seen.eofs[1].duration_since(produced_at);
    eprintln!(
        "end of partition handed out {to_first:?} after assignment, {to_second:?} after a produce"
    );
    // Waiting out max_wait_time would take about 5 s each.
    assert!(to_first < MAX_WAIT / 2, "{to_first:?} after the assignment");
    assert!(to_second < MAX_WAIT / 2, "{to_second:?} after the produce");
}
