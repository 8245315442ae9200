//! Splitting one partition's batch into groups processed in parallel: the seam of virtual
//! partitions (`karafka-pro`), and the engine's side of it.
//!
//! A topic with a [`BatchSplitter`] ([`TopicBuilder::splitter`](crate::routing::TopicBuilder::splitter))
//! has each batch of a partition split into groups of its messages. Each group is a job
//! with its own consumer instance (instances are kept per partition and group id), run in
//! parallel with the others; nothing is copied (each job's messages are a view of the one
//! batch). The next batch of the partition starts only after every group of the previous
//! one ended.
//!
//! What the engine guarantees for a split batch:
//! - **Virtual offsets.** `mark_as_consumed(m)` in a group marks `m` and that group's
//!   earlier messages; what is stored for commit is the offset after the longest run of
//!   marked messages from the batch's start (in Kafka order), so a commit never passes a
//!   message not processed. A group that succeeds has all its messages marked, unless
//!   offsets are managed manually, a group of the batch seeked or paused (the partition's
//!   position is then the consumer's), or another group had already failed (the group may
//!   have stopped early, see [`Context::is_failing`](crate::Context::is_failing): only its
//!   own marks count); when every group succeeded, the whole batch is marked.
//! - **Collapse.** When any group fails, the batch is retried after the back-off from its
//!   first unmarked message, *collapsed*: as one group (id 0), in Kafka order, skipping the
//!   messages already marked, until past the failed batch; then splitting resumes. A dead
//!   letter is dispatched only from a collapsed batch, never from one group alone.
//!   [`Context::collapse_until`](crate::Context::collapse_until) collapses on purpose.
//! - **Bounded state.** The marks of a batch live as long as the batch: a flag and an offset
//!   per message; a collapse keeps at most the offsets of one batch to skip.
//! - **Pauses.** A pause asked for in a group pauses the whole partition; when several
//!   groups ask, the last request wins (it resumes from that offset).
//! - **Bad splits.** A splitter that panics, or returns groups that do not cover the batch
//!   exactly once, gets the whole batch processed as one group, and an
//!   `error.occurred` event (`virtual_partitions.partitioner.error`) says so.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use karafka_core::{Headers, Partition, Timestamp, Violations};

use crate::message::{BatchView, RecordRef};
use crate::payload::BoxError;

/// Splits a partition's batch into groups processed in parallel (the seam of virtual
/// partitions). Implemented by `karafka-pro`'s `VirtualPartitions`; set on a topic with
/// [`TopicBuilder::splitter`](crate::routing::TopicBuilder::splitter).
pub trait BatchSplitter: Send + Sync + 'static {
    /// Groups the messages of `batch`: each group is a group id (below
    /// [`max_groups`](Self::max_groups)) and the positions of its messages in the batch
    /// (`0..batch.len()`, ascending). Every position must be in exactly one group, and no
    /// two groups may share an id; otherwise, or on an error, the batch is processed as one
    /// group and an error event says why.
    fn split(
        &self,
        batch: &SplitBatch<'_>,
        max_groups: usize,
    ) -> Result<Vec<(usize, Vec<u32>)>, BoxError>;

    /// The most groups a batch splits into (and consumer instances a partition has), given
    /// the app's `concurrency`.
    fn max_groups(&self, concurrency: usize) -> usize;

    /// Violations of the topic's settings with this splitter, checked at `build()`; `path`
    /// is the topic's path in the violation list (`consumer_groups.<cg>.topics.<topic>`).
    fn check(&self, topic: &TopicFacts<'_>, path: &str, violations: &mut Violations) {
        let _ = (topic, path, violations);
    }

    /// The name the splitter's events and errors use (`virtual_partitions`).
    fn name(&self) -> &'static str {
        "virtual_partitions"
    }
}

/// What a [`BatchSplitter`]'s contract sees of its topic's resolved settings.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TopicFacts<'a> {
    /// The topic.
    pub name: &'a str,
    /// The dead-letter queue's `max_retries`, when the topic has one.
    pub dead_letter_retries: Option<u32>,
    /// Whether the consumer marks offsets itself.
    pub manual_offset_management: bool,
}

/// The batch a [`BatchSplitter`] groups: one partition's messages, in offset order.
pub struct SplitBatch<'a> {
    batch: &'a BatchView,
}

impl<'a> SplitBatch<'a> {
    pub(crate) fn new(batch: &'a BatchView) -> Self {
        SplitBatch { batch }
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The messages, in offset order (the position of each is its index in this order).
    pub fn iter(&self) -> impl Iterator<Item = MessageView<'a>> + 'a {
        self.batch.iter().map(|record| MessageView { record })
    }
}

impl fmt::Debug for SplitBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitBatch")
            .field("messages", &self.len())
            .finish()
    }
}

/// A message as a splitter sees it: its Kafka fields and raw bytes, read in place.
#[derive(Clone, Copy)]
pub struct MessageView<'a> {
    record: RecordRef<'a>,
}

impl<'a> MessageView<'a> {
    /// Topic.
    pub fn topic(&self) -> &'a str {
        self.record.topic()
    }

    /// Partition.
    pub fn partition(&self) -> Partition {
        self.record.partition()
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.record.offset()
    }

    /// The key's bytes, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.record.key()
    }

    /// The payload's bytes, if any (not decoded). Reading it keeps the message's memory
    /// for as long as its batch lives, even if the consumer cleans it (the cleaner API):
    /// partition by key when you can.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.record.payload_pinned()
    }

    /// Headers.
    pub fn headers(&self) -> &'a Headers {
        self.record.headers()
    }

    /// Timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.record.timestamp()
    }
}

impl fmt::Debug for MessageView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView")
            .field("topic", &self.topic())
            .field("partition", &self.partition())
            .field("offset", &self.offset())
            .finish()
    }
}

/// Checks a splitter's groups: every position in `0..len` exactly once, ids distinct and
/// below `max_groups`, no empty group. Returns them sorted by id, positions ascending.
pub(crate) fn valid_groups(
    mut groups: Vec<(usize, Vec<u32>)>,
    len: usize,
    max_groups: usize,
) -> Result<Vec<(usize, Vec<u32>)>, String> {
    let mut seen = vec![false; len];
    let mut ids = std::collections::HashSet::new();
    groups.retain(|(_, positions)| !positions.is_empty());
    for (id, positions) in &mut groups {
        if *id >= max_groups {
            return Err(format!(
                "group id {id} is not below max_partitions ({max_groups})"
            ));
        }
        if !ids.insert(*id) {
            return Err(format!("group id {id} was returned twice"));
        }
        positions.sort_unstable();
        for &p in positions.iter() {
            let Some(slot) = seen.get_mut(p as usize) else {
                return Err(format!("position {p} is past the batch's {len} messages"));
            };
            if std::mem::replace(slot, true) {
                return Err(format!("position {p} is in two groups"));
            }
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(format!("position {missing} is in no group"));
    }
    groups.sort_unstable_by_key(|(id, _)| *id);
    Ok(groups)
}

/// The marks of one split batch, shared by its groups' jobs: one flag per message, and how
/// many messages from the start are all marked.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The batch's offsets, in order (position → offset).
    offsets: Vec<i64>,
    /// The buffer index of position 0.
    base: usize,
    state: Mutex<Marks>,
    failing: AtomicBool,
}

#[derive(Debug)]
struct Marks {
    marked: Vec<bool>,
    /// Positions `0..prefix` are all marked.
    prefix: usize,
}

impl Tracker {
    /// The tracker of a batch with `offsets` (in order), whose first message is at buffer
    /// index `base`.
    pub(crate) fn new(offsets: Vec<i64>, base: usize) -> Self {
        let len = offsets.len();
        Tracker {
            offsets,
            base,
            state: Mutex::new(Marks {
                marked: vec![false; len],
                prefix: 0,
            }),
            failing: AtomicBool::new(false),
        }
    }

    /// The position of the message at buffer `index`.
    pub(crate) fn position(&self, index: usize) -> Option<usize> {
        index
            .checked_sub(self.base)
            .filter(|p| *p < self.offsets.len())
    }

    /// Marks `positions`; returns the offset to store (after the unbroken run of marked
    /// messages from the start) when that run grew.
    pub(crate) fn mark(&self, positions: impl IntoIterator<Item = usize>) -> Option<i64> {
        let mut marks = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for p in positions {
            if let Some(m) = marks.marked.get_mut(p) {
                *m = true;
            }
        }
        let before = marks.prefix;
        while marks.prefix < marks.marked.len() && marks.marked[marks.prefix] {
            marks.prefix += 1;
        }
        (marks.prefix > before).then(|| self.offsets[marks.prefix - 1] + 1)
    }

    /// The offsets marked past the unbroken run (what a collapsed retry skips).
    pub(crate) fn marked_beyond(&self) -> Vec<i64> {
        let marks = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (marks.prefix..marks.marked.len())
            .filter(|&p| marks.marked[p])
            .map(|p| self.offsets[p])
            .collect()
    }

    /// A group of the batch failed.
    pub(crate) fn fail(&self) {
        self.failing.store(true, Ordering::Release);
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// A group's part of a split batch, in its job's input.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The virtual partition (0 when collapsed).
    pub(crate) id: usize,
    /// How many groups the batch made.
    pub(crate) groups: usize,
    pub(crate) collapsed: bool,
    /// Positions of this group's messages in the batch.
    pub(crate) positions: Arc<[u32]>,
    pub(crate) tracker: Arc<Tracker>,
}

impl Group {
    /// Marks the group's messages up to the one at buffer `index`, and that one.
    pub(crate) fn mark_through(&self, index: usize) -> Option<i64> {
        let upto = self.tracker.position(index)?;
        let within = self.positions.partition_point(|&p| p as usize <= upto);
        self.tracker
            .mark(self.positions[..within].iter().map(|&p| p as usize))
    }

    /// Marks every message of the group.
    pub(crate) fn mark_all(&self) -> Option<i64> {
        self.tracker
            .mark(self.positions.iter().map(|&p| p as usize))
    }
}

/// What the consumer sees of its virtual partition ([`Context::virtual_partition`](crate::Context::virtual_partition)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualPartition {
    /// The group id (0 when collapsed).
    pub id: usize,
    /// How many groups the batch was split into (1 when collapsed).
    pub groups: usize,
    /// Whether the batch runs collapsed (one group, in order) after a failure or
    /// `collapse_until`.
    pub collapsed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: usize, positions: &[u32], tracker: &Arc<Tracker>) -> Group {
        Group {
            id,
            groups: 2,
            collapsed: false,
            positions: positions.into(),
            tracker: tracker.clone(),
        }
    }

    #[test]
    fn only_the_unbroken_run_from_the_start_is_stored() {
        // Offsets 10..16 (15 missing: compacted), base index 100.
        let tracker = Arc::new(Tracker::new(vec![10, 11, 12, 13, 14, 16], 100));
        let even = group(0, &[0, 2, 4], &tracker);
        let odd = group(1, &[1, 3, 5], &tracker);
        // The odd group marks through offset 13 (positions 1 and 3): 10 is not processed yet.
        assert_eq!(odd.mark_through(103), None);
        assert_eq!(tracker.marked_beyond(), vec![11, 13]);
        // The even group marks offset 10 only: the run is 10, 11.
        assert_eq!(even.mark_through(100), Some(12));
        // Then 12 (and 10 again): 10..=13.
        assert_eq!(even.mark_through(102), Some(14));
        assert_eq!(odd.mark_all(), None, "14 is not marked yet");
        assert_eq!(tracker.marked_beyond(), vec![16]);
        assert_eq!(even.mark_all(), Some(17), "the whole batch");
        assert!(tracker.marked_beyond().is_empty());
        assert_eq!(tracker.position(99), None);
        assert_eq!(tracker.position(106), None);
    }

    #[test]
    fn groups_must_cover_the_batch_exactly_once() {
        assert!(valid_groups(vec![(0, vec![0, 2]), (1, vec![1])], 3, 2).is_ok());
        let e = valid_groups(vec![(0, vec![0]), (1, vec![1])], 3, 2).unwrap_err();
        assert!(e.contains("position 2 is in no group"), "{e}");
        let e = valid_groups(vec![(0, vec![0, 1]), (1, vec![1, 2])], 3, 2).unwrap_err();
        assert!(e.contains("in two groups"), "{e}");
        let e = valid_groups(vec![(5, vec![0, 1, 2])], 3, 2).unwrap_err();
        assert!(e.contains("not below max_partitions"), "{e}");
        let e = valid_groups(vec![(0, vec![0]), (0, vec![1, 2])], 3, 2).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = valid_groups(vec![(0, vec![0, 1, 2, 3])], 3, 2).unwrap_err();
        assert!(e.contains("past the batch"), "{e}");
    }
}
