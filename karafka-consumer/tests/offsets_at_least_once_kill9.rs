//! At-least-once survives `kill -9`: a child process (the `at_least_once` example) consumes
//! 200k messages from 8 partitions, recording each processed message durably before
//! `consume` returns; it is killed with SIGKILL three times at random moments and restarted.
//! In the end every message was processed at least once, and duplicates come only from work
//! that was not committed at a kill: in every run and partition, the messages seen before form
//! a contiguous prefix of what the run processed (it restarted from a committed offset and
//! never rewound past new work), and no run processed a message twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use karafka_producer::{Message, Producer};
use karafka_testing::{
    TestBroker, Xorshift, kill_at_random_moments, unique_group, unique_topic, wait_until,
};

const MESSAGES: usize = 200_000;
const PARTITIONS: i32 = 8;

/// Builds the example with the same cargo and returns its path.
fn lines(path: &std::path::Path) -> Vec<(u32, i32, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some((
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn every_message_survives_three_kills() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let binary = karafka_testing::example_binary("karafka-consumer", "at_least_once").unwrap();
    let (topic, group) = (unique_topic("kill9"), unique_group("kill9"));
    broker.create_topic(&topic, PARTITIONS).unwrap();
    let producer = Producer::builder()
        .kafka_settings(&broker.producer_settings())
        .kafka("linger.ms", "5")
        .kafka("batch.num.messages", "10000")
        .build()
        .unwrap();
    let batch: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::new(topic.as_str(), i.to_string()).key(format!("{}", i % 97)))
        .collect();
    producer.produce_many_sync(batch).unwrap();
    producer.close().unwrap();

    let dir = std::env::temp_dir().join(format!("karafka-kill9-{}", std::process::id()));
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
            .env("DELAY_MS", "5")
            .env(
                "SCHEDULING",
                std::env::var("KARAFKA_TEST_SCHEDULING").unwrap_or_else(|_| "partition".into()),
            )
            .env("RUST_LOG", "off")
            .spawn()
            .expect("start the example")
    };
    let mut random = Xorshift::from_clock();
    eprintln!("kill -9 test: seed {}", random.seed());
    kill_at_random_moments(
        3,
        spawn,
        || lines(&output).len(),
        10_000,
        30_000,
        broker.join_deadline() + Duration::from_secs(60),
        &mut random,
    );
    let mut last = spawn(3);
    let started = Instant::now();
    wait_until(Duration::from_secs(180), || {
        lines(&output)
            .iter()
            .map(|(_, p, o)| (*p, *o))
            .collect::<HashSet<_>>()
            .len()
            >= MESSAGES
    })
    .expect("the last run processes everything");
    last.kill().unwrap();
    last.wait().unwrap();
    eprintln!("final run finished in {:?}", started.elapsed());

    // Every message at least once.
    let records = lines(&output);
    let unique: HashSet<(i32, i64)> = records.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(unique.len(), MESSAGES, "messages were lost");

    // Nothing is skipped: per partition, in the order they were recorded, no offset is
    // processed before the one before it was processed at least once.
    let mut progress: HashMap<i32, i64> = HashMap::new();
    for (run, p, o) in &records {
        let next = progress.entry(*p).or_insert(0);
        assert!(
            *o <= *next,
            "run {run} processed {p}@{o} before {p}@{}: a message was skipped",
            *next
        );
        if *o == *next {
            *next += 1;
        }
    }

    // Per run and partition: offsets strictly increase, and repeats form a prefix.
    let mut seen_before: HashSet<(i32, i64)> = HashSet::new();
    let mut duplicates: BTreeMap<u32, usize> = BTreeMap::new();
    for run in 0..=3u32 {
        let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
        for (r, p, o) in &records {
            if *r == run {
                per_partition.entry(*p).or_default().push(*o);
            }
        }
        for (partition, offsets) in &per_partition {
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "run {run} processed partition {partition} out of order or twice"
            );
            let repeated = offsets
                .iter()
                .take_while(|o| seen_before.contains(&(*partition, **o)))
                .count();
            let later_repeats = offsets[repeated..]
                .iter()
                .filter(|o| seen_before.contains(&(*partition, **o)))
                .count();
            assert_eq!(
                later_repeats, 0,
                "run {run} went back to already processed messages of partition {partition} after new ones"
            );
            *duplicates.entry(run).or_default() += repeated;
        }
        for (partition, offsets) in per_partition {
            seen_before.extend(offsets.into_iter().map(|o| (partition, o)));
        }
    }
    eprintln!(
        "records {}, duplicates by run (replayed after the previous kill): {duplicates:?}",
        records.len()
    );
    assert_eq!(
        duplicates.get(&0),
        Some(&0),
        "the first run cannot repeat anything"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
