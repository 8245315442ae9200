//! The prefetch budget of a partition-scheduled subscription group.
//!
//! With one queue per partition, librdkafka applies its prefetch limits to each partition's
//! queue instead of the consumer's one queue (`queued.max.messages.kbytes`: 64 MiB and
//! `queued.min.messages`: 100,000 by default, each), and a fetch may overshoot them by up to
//! `fetch.message.max.bytes` (1 MiB) per partition: 100 partitions could buffer 6.5 GiB.
//! So the subscription group gets one budget (`prefetch_budget`, 64 MiB by default: what
//! one consumer queue holds at most with librdkafka's defaults), shared by the partitions of
//! its topics as the cluster reports them when the listener starts: each partition's share
//! is split in three, its queue (`queued.max.messages.kbytes`), one fetch's overshoot of it
//! and the fetch response its last batch keeps alive (both `fetch.message.max.bytes`), and
//! `queued.min.messages` keeps tiny messages (whose bookkeeping librdkafka does not count in
//! bytes) within it too. A limit the user set is kept as set.

use std::time::Duration;

use karafka_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};

/// The partitions assumed when the cluster cannot be asked at start.
pub(crate) const FALLBACK_PARTITIONS: usize = 64;

/// librdkafka's own `fetch.message.max.bytes`: never raised above it.
const FETCH_MESSAGE_MAX_BYTES: u64 = 1024 * 1024;

/// Bookkeeping librdkafka keeps per queued message besides its key and payload, as
/// `queued.min.messages` is derived: librdkafka 2.12's fetch op is 304 bytes (its header,
/// 112, and fetch part, 192: `sizeof` compiled against its headers), rounded up for the
/// allocator and parsed headers.
const PER_MESSAGE_OVERHEAD: u64 = 512;

/// The per-partition settings for `budget` bytes over `partitions` partitions; those the
/// user set in `kafka` are left out (kept as set).
pub(crate) fn limits(
    budget: u64,
    partitions: usize,
    kafka: &KafkaSettings,
) -> Vec<(&'static str, String)> {
    let share = budget / partitions.max(1) as u64;
    // A third for the queue, a third for one fetch's overshoot of it, a third for the fetch
    // response the partition's last batch keeps alive (its instance holds it for `revoked`).
    let third = (share / 3).max(16 * 1024);
    let derived = [
        ("queued.max.messages.kbytes", (third / 1024).max(1)),
        (
            "fetch.message.max.bytes",
            third.min(FETCH_MESSAGE_MAX_BYTES),
        ),
        (
            "queued.min.messages",
            (share / PER_MESSAGE_OVERHEAD).clamp(100, 100_000),
        ),
    ];
    derived
        .into_iter()
        .filter(|(key, _)| !kafka.contains_key(key))
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

/// How many partitions `topics` have, asked through `client` (not subscribed); a topic the
/// cluster does not know yet counts as one. None when the cluster does not answer in
/// `timeout`.
pub(crate) fn partition_count<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topics: &[&str],
    timeout: Duration,
) -> Option<usize> {
    let mut total = 0;
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), timeout).ok()?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .map_or(0, |t| t.partitions().len());
        total += partitions.max(1);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DEFAULT_PREFETCH_BUDGET;

    fn value(limits: &[(&str, String)], key: &str) -> Option<u64> {
        limits
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.parse().unwrap())
    }

    #[test]
    fn the_budget_is_shared_by_the_partitions() {
        let none = KafkaSettings::new();
        // 64 MiB over 100 partitions: 655 KiB each, a third for the queue, a third for a
        // fetch, a third for the fetch response a last batch keeps.
        let l = limits(DEFAULT_PREFETCH_BUDGET, 100, &none);
        assert_eq!(value(&l, "queued.max.messages.kbytes"), Some(218));
        assert_eq!(value(&l, "fetch.message.max.bytes"), Some(223_696));
        assert_eq!(value(&l, "queued.min.messages"), Some(1310));
        let per_partition = 218 * 1024 + 2 * 223_696;
        assert!(per_partition * 100 <= DEFAULT_PREFETCH_BUDGET);
        // Few partitions: the fetch size stays librdkafka's own at most.
        let l = limits(DEFAULT_PREFETCH_BUDGET, 4, &none);
        assert_eq!(value(&l, "fetch.message.max.bytes"), Some(1024 * 1024));
        assert_eq!(value(&l, "queued.max.messages.kbytes"), Some(5461));
        assert_eq!(value(&l, "queued.min.messages"), Some(32_768));
        // Many partitions: floors keep every partition fetching.
        let l = limits(DEFAULT_PREFETCH_BUDGET, 100_000, &none);
        assert_eq!(value(&l, "queued.max.messages.kbytes"), Some(16));
        assert_eq!(value(&l, "queued.min.messages"), Some(100));
    }

    #[test]
    fn what_the_user_set_is_kept() {
        let set = KafkaSettings::new().with("fetch.message.max.bytes", "4096");
        let l = limits(DEFAULT_PREFETCH_BUDGET, 10, &set);
        assert_eq!(value(&l, "fetch.message.max.bytes"), None);
        assert!(value(&l, "queued.max.messages.kbytes").is_some());
    }
}
