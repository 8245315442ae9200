//! An in-memory producer client: records what a producer sends, per topic, with transactions
//! honoured. No broker, no librdkafka threads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use karafka_core::{KafkaError, Partition, TopicPartition};
use karafka_producer::client::{
    Client, ClientFactory, ClientSetup, ConsumerGroupMetadata, Rejected, Rejection,
};
use karafka_producer::variant::TopicConfig;
use karafka_producer::{Delivery, Message, Outcome};

/// A message the buffered client took, where it landed, and with which variant settings.
#[derive(Debug, Clone)]
pub struct Produced {
    /// The message as sent (its label stays with the delivery report, so it is `None` here).
    pub message: Message,
    /// The partition it was assigned.
    pub partition: Partition,
    /// Its offset in that partition.
    pub offset: i64,
    /// The variant's topic settings it was sent with (`None`: the producer's own).
    pub topic_config: Option<TopicConfig>,
}

/// A failure to inject into the buffered client.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The next `produce` call finds the queue full.
    QueueFull,
    /// The next `produce` call is refused with this error.
    Refuse(KafkaError),
    /// The next message taken is reported as not delivered, with this error.
    FailDelivery(KafkaError),
    /// The next `commit_transaction` fails with this error.
    FailCommit(KafkaError),
    /// The next `begin_transaction` fails with this error.
    FailBegin(KafkaError),
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Produced>>,
    next_offsets: HashMap<(String, Partition), i64>,
    partition_counts: HashMap<String, i32>,
    transaction: Option<Staged>,
    committed_offsets: BTreeMap<(String, TopicPartition), i64>,
    aborted: Vec<Produced>,
    commits: usize,
    aborts: usize,
    faults: VecDeque<Fault>,
    closed: bool,
    clients_created: usize,
}

#[derive(Debug, Default)]
struct Staged {
    messages: Vec<Produced>,
    offsets: Vec<(String, TopicPartition, i64)>,
}

/// An in-memory [`Client`] for producers in tests: plug it in with
/// [`ProducerBuilder::client`](karafka_producer::ProducerBuilder::client), produce, then read
/// what was sent with [`messages`](Self::messages) / [`produced`](Self::produced).
///
/// - Every message is delivered at once, to the partition given, or chosen by the partition
///   key or key (FNV-1a over the topic's partition count, 1 unless
///   [`set_partitions`](Self::set_partitions)), or 0; offsets grow per partition.
/// - Transactions are honoured: messages sent inside one become visible on commit and are
///   dropped on abort ([`aborted`](Self::aborted) keeps them for assertions); offsets sent to a
///   transaction become the group's committed offsets on commit.
/// - [`inject`](Self::inject) makes the next calls fail (queue full, refusal, failed delivery,
///   failed commit) to test error paths deterministically.
///
/// Clones share state. It does not simulate librdkafka's timing, batching or broker errors
/// beyond the injected ones.
///
/// ```
/// use karafka_producer::{Message, Producer};
/// use karafka_testing::BufferedClient;
///
/// let client = BufferedClient::new();
/// let producer = Producer::builder().client(client.clone()).build().unwrap();
/// producer.produce_sync(Message::new("events", "hello")).unwrap();
/// assert_eq!(client.payloads("events"), ["hello"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct BufferedClient {
    state: Arc<Mutex<State>>,
}

impl BufferedClient {
    /// An empty client.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `topic` `partitions` partitions (for key hashing; default 1).
    pub fn set_partitions(&self, topic: &str, partitions: i32) {
        self.state()
            .partition_counts
            .insert(topic.to_owned(), partitions.max(1));
    }

    /// Queues a fault for the next matching call.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Everything visible (committed) in `topic`, in the order it was sent.
    pub fn produced(&self, topic: &str) -> Vec<Produced> {
        self.state().topics.get(topic).cloned().unwrap_or_default()
    }

    /// The messages visible in `topic`.
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        self.produced(topic)
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    /// The payloads visible in `topic`, as UTF-8 (lossy); tombstones as `""`.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        self.produced(topic)
            .iter()
            .map(|p| {
                p.message
                    .payload
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every topic that has visible messages.
    pub fn topics(&self) -> Vec<String> {
        self.state().topics.keys().cloned().collect()
    }

    /// Messages dropped by aborted transactions.
    pub fn aborted(&self) -> Vec<Produced> {
        self.state().aborted.clone()
    }

    /// How many transactions committed and aborted.
    pub fn transaction_counts(&self) -> (usize, usize) {
        let s = self.state();
        (s.commits, s.aborts)
    }

    /// Offsets committed for `group` through transactions (the next offset to read).
    pub fn committed_offsets(&self, group: &str) -> BTreeMap<TopicPartition, i64> {
        self.state()
            .committed_offsets
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, tp), o)| (tp.clone(), *o))
            .collect()
    }

    /// How many times a producer created this client (1 normally; more after rebuilds).
    pub fn clients_created(&self) -> usize {
        self.state().clients_created
    }

    /// Forgets everything recorded (not the injected faults).
    pub fn clear(&self) {
        let mut s = self.state();
        s.topics.clear();
        s.next_offsets.clear();
        s.aborted.clear();
        s.committed_offsets.clear();
        s.commits = 0;
        s.aborts = 0;
    }

    fn take_fault(state: &mut State, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let index = state.faults.iter().position(matches)?;
        state.faults.remove(index)
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn choose_partition(count: i32, key: Option<&[u8]>) -> Partition {
    match key {
        Some(k) if !k.is_empty() && count > 1 => (fnv1a(k) % count as u32) as Partition,
        _ => 0,
    }
}

impl ClientFactory for BufferedClient {
    fn create(&self, _setup: &ClientSetup<'_>) -> Result<Box<dyn Client>, KafkaError> {
        let mut state = self.state();
        state.closed = false;
        state.clients_created += 1;
        // A new client starts without a transaction; one left open by the previous client is
        // abandoned, as a broker aborts it.
        if let Some(abandoned) = state.transaction.take() {
            state.aborted.extend(abandoned.messages);
            state.aborts += 1;
        }
        drop(state);
        Ok(Box::new(self.clone()))
    }
}

impl Client for BufferedClient {
    fn produce(
        &self,
        message: &Message,
        topic_config: Option<&TopicConfig>,
        delivery: Delivery,
    ) -> Result<(), Rejected> {
        let mut state = self.state();
        if state.closed {
            return Err(Rejected {
                reason: Rejection::Kafka(KafkaError::other(
                    "produce",
                    "the buffered client is closed",
                )),
                delivery,
            });
        }
        match Self::take_fault(&mut state, |f| {
            matches!(f, Fault::QueueFull | Fault::Refuse(_))
        }) {
            Some(Fault::QueueFull) => {
                return Err(Rejected {
                    reason: Rejection::QueueFull,
                    delivery,
                });
            }
            Some(Fault::Refuse(e)) => {
                return Err(Rejected {
                    reason: Rejection::Kafka(e),
                    delivery,
                });
            }
            _ => {}
        }
        let mut message = message.clone();
        if let Some(Fault::FailDelivery(error)) =
            Self::take_fault(&mut state, |f| matches!(f, Fault::FailDelivery(_)))
        {
            drop(state);
            delivery.complete(Outcome::Failed {
                error,
                message: Box::new(message),
            });
            return Ok(());
        }
        let count = state
            .partition_counts
            .get(&*message.topic)
            .copied()
            .unwrap_or(1);
        let partition = message.partition.unwrap_or_else(|| {
            choose_partition(
                count,
                message.partition_key.as_deref().or(message.key.as_deref()),
            )
        });
        let next = state
            .next_offsets
            .entry((message.topic.to_string(), partition))
            .or_insert(0);
        let offset = *next;
        *next += 1;
        message.label = None;
        let produced = Produced {
            message,
            partition,
            offset,
            topic_config: topic_config.cloned(),
        };
        match state.transaction.as_mut() {
            Some(tx) => tx.messages.push(produced),
            None => state
                .topics
                .entry(produced.message.topic.to_string())
                .or_default()
                .push(produced),
        }
        drop(state);
        delivery.complete(Outcome::Delivered { partition, offset });
        Ok(())
    }

    fn partition_for_key(
        &self,
        topic: &str,
        _topic_config: Option<&TopicConfig>,
        partition_key: &[u8],
    ) -> Result<Partition, KafkaError> {
        let count = self
            .state()
            .partition_counts
            .get(topic)
            .copied()
            .unwrap_or(1);
        Ok(choose_partition(count, Some(partition_key)))
    }

    fn flush(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }

    fn in_flight(&self) -> usize {
        0
    }

    fn close(&self, _timeout: Duration) {
        self.state().closed = true;
    }

    fn init_transactions(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }

    fn begin_transaction(&self) -> Result<(), KafkaError> {
        let mut state = self.state();
        if let Some(Fault::FailBegin(e)) =
            Self::take_fault(&mut state, |f| matches!(f, Fault::FailBegin(_)))
        {
            return Err(e);
        }
        if state.transaction.is_some() {
            return Err(KafkaError::other(
                "begin transaction",
                "a transaction is already open",
            ));
        }
        state.transaction = Some(Staged::default());
        Ok(())
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
        group: &ConsumerGroupMetadata,
        _timeout: Duration,
    ) -> Result<(), KafkaError> {
        let mut state = self.state();
        let Some(tx) = state.transaction.as_mut() else {
            return Err(KafkaError::other(
                "send offsets to transaction",
                "no transaction is open",
            ));
        };
        for (tp, offset) in offsets {
            tx.offsets
                .push((group.group_id().to_owned(), tp.clone(), *offset));
        }
        Ok(())
    }

    fn commit_transaction(&self, _timeout: Duration) -> Result<(), KafkaError> {
        let mut state = self.state();
        if let Some(Fault::FailCommit(e)) =
            Self::take_fault(&mut state, |f| matches!(f, Fault::FailCommit(_)))
        {
            return Err(e);
        }
        let Some(tx) = state.transaction.take() else {
            return Err(KafkaError::other(
                "commit transaction",
                "no transaction is open",
            ));
        };
        for produced in tx.messages {
            state
                .topics
                .entry(produced.message.topic.to_string())
                .or_default()
                .push(produced);
        }
        for (group, tp, offset) in tx.offsets {
            state.committed_offsets.insert((group, tp), offset);
        }
        state.commits += 1;
        Ok(())
    }

    fn abort_transaction(&self, _timeout: Duration) -> Result<(), KafkaError> {
        let mut state = self.state();
        let Some(tx) = state.transaction.take() else {
            return Err(KafkaError::other(
                "abort transaction",
                "no transaction is open",
            ));
        };
        state.aborted.extend(tx.messages);
        state.aborts += 1;
        Ok(())
    }
}
