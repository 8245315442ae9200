//! The routing of virtual partitions: `.virtual_partitions(...)` on a topic, and its
//! contract.

use std::hash::Hash;
use std::sync::Arc;

use karafka_consumer::Consumer;
use karafka_consumer::routing::TopicBuilder;
use karafka_consumer::split::TopicFacts;
use karafka_core::Violations;

use crate::processing::virtual_partitions::VirtualPartitions;

/// Adds `.virtual_partitions(...)` to the topic builder.
pub trait VirtualPartitionsTopic: Sized {
    /// Processes each batch of a partition in parallel, split by `config`'s partitioner
    /// (see [`VirtualPartitions`]).
    fn virtual_partitions<K: Hash + Eq + Send + 'static>(
        self,
        config: VirtualPartitions<K>,
    ) -> Self;
}

impl<C: Consumer> VirtualPartitionsTopic for TopicBuilder<C> {
    fn virtual_partitions<K: Hash + Eq + Send + 'static>(
        self,
        config: VirtualPartitions<K>,
    ) -> Self {
        self.splitter(Arc::new(config))
    }
}

/// The contract of virtual partitions on `topic` (at `build()`).
pub(crate) fn check<K: Hash + Eq + Send + 'static>(
    config: &VirtualPartitions<K>,
    topic: &TopicFacts<'_>,
    path: &str,
    v: &mut Violations,
) {
    if let Some(max) = config.configured_max_partitions() {
        v.check(
            max >= 1,
            format!("{path}.virtual_partitions.max_partitions"),
            || format!("is {max}: it must be at least 1 (or unset, for the app's concurrency)"),
        );
    }
    if let Some(retries) = topic.dead_letter_retries {
        v.check(
            retries >= 1,
            format!("{path}.dead_letter_queue.max_retries"),
            || {
                "is 0 with virtual partitions: a dead letter is dispatched only from the \
                 collapsed retry of a failed batch (never from one virtual partition alone), so \
                 at least one retry is needed; set max_retries to 1 or more"
                    .into()
            },
        );
    }
}
