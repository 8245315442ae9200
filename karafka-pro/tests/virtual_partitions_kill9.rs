//! At-least-once with virtual partitions survives `kill -9`: a child process (the
//! `virtual_partitions_at_least_once` example) consumes 100k messages from 4 partitions,
//! split by key over 5 virtual partitions each, recording each processed message durably
//! before its job returns; it is killed with SIGKILL three times at random moments and
//! restarted. In the end every message was processed at least once; each run started every
//! partition at a committed offset below which everything had been recorded (the committed
//! offset was never ahead of durable processing); and within a run each key's messages were
//! processed in offset order, once.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use karafka_producer::{Message, Producer};
use karafka_testing::{
    TestBroker, Xorshift, kill_at_random_moments, unique_group, unique_topic, wait_until,
};

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 4;
const KEYS: usize = 97;

/// `(run, partition, offset, key)` lines.
fn lines(path: &std::path::Path) -> Vec<(u32, i32, i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some((
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn virtual_partitions_lose_nothing_across_three_kills() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let binary =
        karafka_testing::example_binary("karafka-pro", "virtual_partitions_at_least_once").unwrap();
    let (topic, group) = (unique_topic("vp-kill9"), unique_group("vp-kill9"));
    broker.create_topic(&topic, PARTITIONS).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .kafka("batch.num.messages", "10000")
        .build()
        .unwrap();
    let batch: Vec<Message> = (0..MESSAGES)
        .map(|i| {
            Message::new(topic.as_str(), i.to_string())
                .key(format!("k{}", i % KEYS))
                .partition(i as i32 % PARTITIONS)
        })
        .collect();
    producer.produce_many_sync(batch).unwrap();
    producer.close().unwrap();

    let dir = std::env::temp_dir().join(format!("karafka-vp-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("processed.log");
    let _ = std::fs::remove_file(&output);
    let spawn = |run: u32| -> Child {
        Command::new(&binary)
            .env("KARAFKA_BROKERS", broker.bootstrap_servers())
            .env("TOPIC", &topic)
            .env("GROUP", &group)
            .env("OUTPUT", &output)
            .env("RUN", run.to_string())
            // 40 ms a job: runs last seconds, so commits happen between the kills.
            .env("DELAY_MS", "40")
            .env("MAX_PARTITIONS", "5")
            .env("RUST_LOG", "off")
            .spawn()
            .expect("start the example")
    };
    let mut random = Xorshift::from_clock();
    eprintln!("virtual partitions kill -9 test: seed {}", random.seed());
    kill_at_random_moments(
        3,
        spawn,
        || lines(&output).len(),
        5_000,
        20_000,
        broker.join_deadline() + Duration::from_secs(60),
        &mut random,
    );
    let mut last = spawn(3);
    let started = Instant::now();
    wait_until(Duration::from_secs(180), || {
        lines(&output)
            .iter()
            .map(|(_, p, o, _)| (*p, *o))
            .collect::<HashSet<_>>()
            .len()
            >= MESSAGES
    })
    .expect("the last run processes everything");
    last.kill().unwrap();
    last.wait().unwrap();
    eprintln!("final run finished in {:?}", started.elapsed());

    let records = lines(&output);
    let unique: HashSet<(i32, i64)> = records.iter().map(|(_, p, o, _)| (*p, *o)).collect();
    assert_eq!(unique.len(), MESSAGES, "messages were lost");

    let mut seen_before: HashSet<(i32, i64)> = HashSet::new();
    let mut replayed = Vec::new();
    for run in 0..=3u32 {
        let mine: Vec<&(u32, i32, i64, String)> = records.iter().filter(|r| r.0 == run).collect();
        // Each run starts each partition at a committed offset: everything below it was
        // recorded by earlier runs.
        let mut starts: HashMap<i32, i64> = HashMap::new();
        for (_, p, o, _) in &mine {
            let s = starts.entry(*p).or_insert(*o);
            *s = (*s).min(*o);
        }
        for (partition, start) in &starts {
            let hole = (0..*start).find(|o| !seen_before.contains(&(*partition, *o)));
            assert_eq!(
                hole, None,
                "run {run} started partition {partition} at {start}, past unrecorded work"
            );
        }
        // Within the run, each key in offset order, once.
        let mut per_key: HashMap<(i32, &str), i64> = HashMap::new();
        for (_, p, o, k) in &mine {
            if let Some(previous) = per_key.insert((*p, k.as_str()), *o) {
                assert!(
                    previous < *o,
                    "run {run}: key {k} of partition {p} went from {previous} to {o}"
                );
            }
        }
        let again = mine
            .iter()
            .filter(|(_, p, o, _)| seen_before.contains(&(*p, *o)))
            .count();
        replayed.push(again);
        seen_before.extend(mine.iter().map(|(_, p, o, _)| (*p, *o)));
    }
    eprintln!("records {}, replayed by run: {replayed:?}", records.len());
    assert_eq!(replayed[0], 0, "the first run cannot repeat anything");
    let _ = std::fs::remove_dir_all(&dir);
}
