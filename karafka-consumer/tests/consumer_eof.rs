//! Reaching the end of a partition ends the wait for a batch: with `enable.partition.eof`,
//! the `eofed` hook runs as soon as librdkafka reports the end, not after `max_wait_time`
//! (here 5 s): on a partition that starts empty, and again after the messages that follow,
//! on the instance that consumed them and after its consume job.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{app, produce};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

#[derive(Default)]
struct Seen {
    eofs: Vec<Instant>,
    consumed: usize,
    /// What the instance that ran each `eofed` had consumed itself.
    consumed_by_eofed_instance: Vec<usize>,
    /// Jobs of the partition running now, and the most at once.
    running: usize,
    most_at_once: usize,
}

struct Eofs {
    seen: Arc<Mutex<Seen>>,
    consumed_here: usize,
}

impl Eofs {
    async fn job(&self, record: impl FnOnce(&mut Seen)) {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.running += 1;
            seen.most_at_once = seen.most_at_once.max(seen.running);
        }
        // Widen the window in which two jobs of the partition would overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut seen = self.seen.lock().unwrap();
        record(&mut seen);
        seen.running -= 1;
    }
}

impl Consumer for Eofs {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let n = ctx.messages().len();
        self.consumed_here += n;
        self.job(|seen| seen.consumed += n).await;
        Ok(())
    }

    async fn eofed(&mut self, _: &Context<Raw>) -> ConsumeResult {
        let mine = self.consumed_here;
        self.job(|seen| {
            seen.eofs.push(Instant::now());
            seen.consumed_by_eofed_instance.push(mine);
        })
        .await;
        Ok(())
    }
}

const MAX_WAIT: Duration = Duration::from_secs(5);

/// An app with `enable.partition.eof` whose `topic` consumer records into `seen`.
fn eof_app(broker: &TestBroker, group: &str, topic: &str, seen: Arc<Mutex<Seen>>) -> App {
    app(broker, group)
        .kafka("enable.partition.eof", "true")
        .topic(topic, move |t| {
            t.consumer(move || Eofs {
                seen: seen.clone(),
                consumed_here: 0,
            })
            .max_wait_time(MAX_WAIT)
        })
        .build()
        .unwrap()
}

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
    let app = eof_app(&broker, &group, &topic, seen.clone());
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
    // The end that follows the message is the consuming instance's, after its job.
    assert_eq!(
        seen.consumed_by_eofed_instance.last(),
        Some(&1),
        "eofed ran on another instance than the one that consumed: {:?}",
        seen.consumed_by_eofed_instance
    );
    assert_eq!(
        seen.most_at_once, 1,
        "two jobs of the partition ran at once"
    );
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

/// A backlog and its end come in one poll: `eofed` runs after the consume job, on the
/// instance that consumed the backlog, never beside it.
#[test]
fn the_end_after_a_backlog_runs_on_the_consuming_instance_after_its_job() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("eof-backlog");
    broker.create_topic(&topic, 1).unwrap();
    produce(&broker, &topic, 3, "backlog");
    let group = unique_group("eof-backlog");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = eof_app(&broker, &group, &topic, seen.clone());
    let running = app.start().unwrap();
    let done = wait_until(broker.join_deadline() + MAX_WAIT, || {
        let seen = seen.lock().unwrap();
        seen.consumed == 3 && !seen.eofs.is_empty()
    });
    running.stop_blocking().unwrap();
    done.expect("the backlog was consumed and its end reached");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.consumed_by_eofed_instance.last(),
        Some(&3),
        "eofed ran on another instance than the one that consumed: {:?}",
        seen.consumed_by_eofed_instance
    );
    assert_eq!(
        seen.most_at_once, 1,
        "two jobs of the partition ran at once"
    );
}
