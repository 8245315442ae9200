//! Polled records from a broker (librdkafka's own messages, read in place): key, payload,
//! headers and timestamp reach `consume` as produced, headers read from two threads at once
//! agree, and what a consumer keeps after its batch (`raw_payload`, a `Raw` payload, the
//! key) stays valid after the app stops and does not keep the consumer alive: its client
//! closes at stop (the final revocation), and a new member of the same group is assigned
//! every partition and reads what follows.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Recorder, app, produce};
use karafka_consumer::payload::Raw;
use karafka_consumer::{ConsumeResult, Consumer, Context};
use karafka_producer::{Message, Producer};
use karafka_testing::{TestBroker, unique_group, unique_topic, wait_until};

/// What a consumer kept: (offset, raw_payload, Raw payload, key, header `n`).
type Kept = Arc<Mutex<Vec<(i64, Bytes, Bytes, Vec<u8>, String)>>>;

struct Keep {
    kept: Kept,
}

impl Consumer for Keep {
    type Payload = Raw;

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        for message in ctx.messages() {
            // The first reads of a message's headers, from two threads at once.
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| message.headers().get_str("n").map(str::to_owned));
                let b = s.spawn(|| message.headers().get_str("n").map(str::to_owned));
                (a.join().unwrap(), b.join().unwrap())
            });
            assert_eq!(a, b, "headers read from two threads agree");
            assert!(message.timestamp().millis().is_some(), "a create time");
            let raw = message.raw_payload()?.cloned().expect("not a tombstone");
            let decoded = message.payload()?.0.clone();
            self.kept.lock().unwrap().push((
                message.offset(),
                raw,
                decoded,
                message.key().unwrap_or_default().to_vec(),
                a.unwrap_or_default(),
            ));
        }
        Ok(())
    }
}

#[test]
fn records_read_in_place_and_kept_values_outlive_the_consumer() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("records");
    let group = unique_group("records");
    broker.create_topic(&topic, 3).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .build()
        .unwrap();
    let messages = (0..60)
        .map(|i| {
            Message::new(topic.as_str(), format!("payload-{i}"))
                .key(format!("key-{i}"))
                .header("n", format!("{i}"))
        })
        .collect();
    producer.produce_many_sync(messages).unwrap();
    producer.close().unwrap();

    let kept: Kept = Arc::default();
    let k = kept.clone();
    let first = app(&broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || Keep { kept: k.clone() })
                .max_messages(20)
        })
        .build()
        .unwrap();
    let events = Recorder::attach(first.monitor());
    let running = first.start().unwrap();
    wait_until(broker.join_deadline(), || kept.lock().unwrap().len() >= 60)
        .expect("all 60 messages consumed");
    let revoked_before = events.count("rebalance.partitions_revoked");
    running.stop_blocking().unwrap();
    drop(first);
    // Closing the client revokes its partitions (the final rebalance): it happened at stop,
    // not when the values kept from its messages are dropped.
    assert!(
        events.count("rebalance.partitions_revoked") > revoked_before,
        "the consumer closed at stop while its kept values are alive: {:?}",
        events.names()
    );

    // Read after the app (and its clients) stopped: the kept values own their memory.
    let kept = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(kept.len(), 60, "each message once");
    for (offset, raw, decoded, key, n) in &kept {
        let i: usize = n.parse().expect("header n is the message's number");
        assert_eq!(
            raw,
            &Bytes::from(format!("payload-{i}")),
            "raw payload at {offset}"
        );
        assert_eq!(decoded, raw, "Raw payload at {offset}");
        assert_eq!(key, format!("key-{i}").as_bytes(), "key at {offset}");
    }

    // The first member left the group although its values are still alive (`kept`): a new
    // member is assigned all partitions and reads the messages produced now.
    produce(&broker, &topic, 30, "after");
    let later: Kept = Arc::default();
    let l = later.clone();
    let second = app(&broker, &group)
        .topic(&topic, move |t| {
            t.consumer(move || Keep { kept: l.clone() })
        })
        .build()
        .unwrap();
    let running = second.start().unwrap();
    let read_all = wait_until(broker.join_deadline(), || later.lock().unwrap().len() >= 30);
    running.stop_blocking().unwrap();
    read_all.expect(
        "a new member of the group read the 30 new messages: the stopped member left the group",
    );
    let later = later.lock().unwrap();
    assert_eq!(
        later.len(),
        30,
        "only the new messages (the first member committed)"
    );
    assert!(later.iter().all(|(_, raw, ..)| raw.starts_with(b"after-")));
    drop(kept);
}
