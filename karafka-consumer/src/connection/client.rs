//! The librdkafka side of a subscription group: its context (rebalances, commits, statistics,
//! errors) and the offset operations jobs use.

use std::sync::Arc;
use std::time::Duration;

use karafka_core::instrumentation::{AssignmentChange, ErrorKind, Event, Statistics};
use karafka_core::{KafkaError, TopicPartition, native};
use karafka_producer::ConsumerGroupMetadata;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::context::ClientOps;
use crate::processing::group::GroupShared;
use crate::processing::outcome::PartitionControl;

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// What a scheduler does inside the rebalance callbacks, which run on the listener thread
/// inside `poll`.
pub(crate) trait RebalanceHooks: Send + Sync {
    /// Before `partitions` are assigned (their fetching has not started yet).
    fn assigning(&self, partitions: &[TopicPartition]);
    /// Before the stored offsets of `partitions` are committed and they are revoked: returns
    /// once their running jobs ended and were settled, or the wait timed out. `lost`: the
    /// assignment was lost (another member may own them already).
    fn revoking(&self, partitions: &[TopicPartition], lost: bool);
}

/// The rdkafka context of a subscription group's client.
pub(crate) struct GroupContext {
    pub(crate) shared: Arc<GroupShared>,
    /// Where OAUTHBEARER tokens come from, when the app was given a provider.
    pub(crate) oauth: Option<Arc<dyn karafka_core::oauth::OAuthTokenProvider>>,
    /// The scheduler's part in rebalances (partition scheduling; set once the client
    /// exists, before it is subscribed).
    pub(crate) hooks: std::sync::OnceLock<Arc<dyn RebalanceHooks>>,
}

impl ClientContext for GroupContext {
    // librdkafka asks through this only when it has no handler of its own (unsecured JWT,
    // OIDC): the provider answers, or the error says to set one.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        native::generate_oauth_token(self.oauth.as_deref(), config)
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        native::log_to_tracing(level, &self.shared.route.name, fac, log_message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let shared = &self.shared;
        match Statistics::from_json(statistics) {
            Ok(stats) => {
                if let Some(cgrp) = &stats.cgrp {
                    let observed = crate::connections::Observed::new(
                        std::time::Instant::now(),
                        cgrp.state.as_str(),
                        cgrp.join_state.as_str(),
                        std::time::Duration::from_millis(
                            u64::try_from(cgrp.rebalance_age).unwrap_or(0),
                        ),
                        usize::try_from(cgrp.assignment_size).unwrap_or(0),
                    );
                    *shared.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(observed);
                }
                shared.monitor.emit(Event::StatisticsEmitted {
                    source_id: shared.route.name.clone(),
                    consumer_group: Some(shared.route.consumer_group.clone()),
                    statistics: Arc::new(stats),
                })
            }
            Err(e) => shared.error(ErrorKind::StatisticsDecode, e, None),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let mut translated = native::kafka_error("librdkafka", &error);
        translated.message = native::explain_client_error(&error, reason, &self.shared.route.kafka);
        self.shared.error(ErrorKind::Librdkafka, translated, None);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                if revoked.is_empty() {
                    return;
                }
                let lost = consumer.assignment_lost();
                if let Some(hooks) = self.hooks.get() {
                    // Partition scheduling: jobs run during polls; wait for (and settle)
                    // those of the revoked partitions first.
                    hooks.revoking(&revoked, lost);
                }
                if !lost {
                    // Commit what was processed while the partitions are still ours. With
                    // poll scheduling no job runs during a poll, and with partition
                    // scheduling the revoked partitions' jobs ended (or can no longer mark).
                    if let Err(e) = commit_stored(consumer, REVOKE_COMMIT_TIMEOUT) {
                        shared.error(ErrorKind::ConnectionClientCommit, e, None);
                    }
                }
                shared.revoke(&revoked, lost);
                shared.monitor.emit_with(|| Event::Rebalance {
                    consumer_group: shared.route.consumer_group.clone(),
                    subscription_group: shared.route.name.clone(),
                    change: if lost {
                        AssignmentChange::Lost
                    } else {
                        AssignmentChange::Revoked
                    },
                    partitions: revoked.clone(),
                });
            }
            Rebalance::Assign(list) => {
                // A partition paused by this member (a retry back-off, the consumer's own
                // pause) and revoked keeps librdkafka's pause through the revocation, but
                // its pause state here went with its coordinator: nothing would resume it if
                // it came back. Assigned partitions start unpaused (a no-op for the others).
                if list.count() > 0 {
                    let _ = consumer.resume(list);
                }
                if let Some(hooks) = self.hooks.get() {
                    hooks.assigning(&partitions(list));
                }
            }
            Rebalance::Error(e) => {
                shared.error(
                    ErrorKind::ConnectionClientRebalance,
                    native::kafka_error("rebalance", e),
                    None,
                );
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = partitions(list);
            if assigned.is_empty() {
                return;
            }
            let shared = &self.shared;
            shared.monitor.emit_with(|| Event::Rebalance {
                consumer_group: shared.route.consumer_group.clone(),
                subscription_group: shared.route.name.clone(),
                change: AssignmentChange::Assigned,
                partitions: assigned,
            });
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                self.shared.error(
                    ErrorKind::ConnectionClientCommit,
                    native::kafka_error("commit offsets", &e),
                    None,
                );
            }
        }
    }
}

/// How long a revocation waits for its commit. librdkafka rejoins the group only after the
/// revocation callback returns, and some brokers (Tansu, measured) hold a commit's answer
/// until the rebalance is over: an unbounded wait there would stall the group until the
/// rebalance timeout. Kafka answers within a round trip.
pub(crate) const REVOKE_COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a listener waits for its client to close (leave the group) before it goes on
/// without it.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the client (dropping the last reference: librdkafka's close revokes, commits in
/// the revocation callback and leaves the group) on a thread of its own, waiting at most
/// [`CLOSE_TIMEOUT`]. librdkafka's close has no deadline, and was seen to wait forever (2 of
/// ~170 runs of a test closing two members of one group at once on the mock cluster: the
/// revocation's `assign(NULL)` never answered); the caller committed before, so past the
/// deadline the listener reports it and ends, leaving the close to finish in the
/// background (the member otherwise leaves the group when its session times out).
pub(crate) fn close(consumer: Arc<BaseConsumer<GroupContext>>, shared: &GroupShared) {
    let (tx, rx) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name(format!("karafka.close#{}", shared.route.name))
        .spawn(move || {
            drop(consumer);
            let _ = tx.send(());
        });
    if let Err(e) = closing {
        // No thread: the client was dropped with the closure, here.
        shared.error(
            ErrorKind::ConnectionListener,
            std::io::Error::other(format!("closing the client on a thread of its own: {e}")),
            None,
        );
        return;
    }
    if rx.recv_timeout(CLOSE_TIMEOUT).is_err() {
        shared.error(
            ErrorKind::ConnectionListener,
            std::io::Error::other(format!(
                "the client of {} did not close within {CLOSE_TIMEOUT:?} (librdkafka's close \
                 has no deadline); offsets were committed before; it goes on closing in the \
                 background, and its group membership ends at the latest when its session \
                 times out",
                shared.route.name
            )),
            None,
        );
    }
}

/// Commits the stored offsets of the current assignment and waits up to `timeout` for the
/// broker's answer (librdkafka's own synchronous commit cannot be bounded). Past the timeout
/// the commit goes on in the background and this returns an error saying so. No stored offset
/// is not an error.
pub(crate) fn commit_stored(
    consumer: &BaseConsumer<GroupContext>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let (answered, code) = commit_stored_code(consumer, timeout);
    match code {
        RDKafkaErrorCode::NoError | RDKafkaErrorCode::NoOffset => Ok(()),
        _ if !answered => Err(KafkaError::other(
            "commit offsets of revoked partitions",
            format!(
                "no answer from the broker within {timeout:?}; the commit continues in the background"
            ),
        )),
        other => Err(native::kafka_code_error("commit offsets", other)),
    }
}

/// How long a stopping listener keeps trying its final commit while its group rebalances.
pub(crate) const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The final commit of a stopping listener (`closing` set, so the rebalance callbacks run
/// no hooks). When the broker refuses it because the group is rebalancing — another member
/// left at the same moment, as when every node of a swarm or every replica of a deployment
/// stops together — a cooperative member (which keeps its partitions and their stored
/// offsets through the rejoin) polls for [`REJOIN_POLL`] to rejoin and commits again, for
/// at most [`SHUTDOWN_COMMIT_TIMEOUT`]; otherwise what it processed last would be
/// processed again by the next owner. It pauses its assignment on each round; a partition
/// newly assigned in the rejoin may be fetched until the next round, and what is polled is
/// dropped (its offsets are never stored). An eager member's partitions are revoked first
/// (committed by the revocation, which may be refused the same way): nothing is retried.
pub(crate) fn commit_at_shutdown(consumer: &BaseConsumer<GroupContext>, shared: &GroupShared) {
    let deadline = std::time::Instant::now() + SHUTDOWN_COMMIT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (answered, code) = commit_stored_code(consumer, left.max(Duration::from_millis(1)));
        let rebalancing = matches!(
            code,
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
        );
        // Only a cooperative member keeps its partitions (and their stored offsets) through
        // the rejoin; an eager one gives them all up first.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        if rebalancing && cooperative && std::time::Instant::now() + REJOIN_POLL < deadline {
            let until = std::time::Instant::now() + REJOIN_POLL;
            while std::time::Instant::now() < until {
                if let Ok(assignment) = consumer.assignment() {
                    if assignment.count() > 0 {
                        let _ = consumer.pause(&assignment);
                    }
                }
                drop(consumer.poll(Duration::from_millis(50)));
            }
            continue;
        }
        let result = match code {
            RDKafkaErrorCode::NoError | RDKafkaErrorCode::NoOffset => return,
            _ if !answered => KafkaError::other(
                "commit offsets at shutdown",
                format!(
                    "no answer from the broker within {left:?}; the commit continues in the \
                     background"
                ),
            ),
            other => native::kafka_code_error("commit offsets at shutdown", other),
        };
        shared.error(ErrorKind::ConnectionClientCommit, result, None);
        return;
    }
}

/// How long a stopping member polls to rejoin its group before committing again.
const REJOIN_POLL: Duration = Duration::from_millis(500);

/// Commits the stored offsets of the current assignment: whether the broker answered within
/// `timeout`, and its error code.
fn commit_stored_code(
    consumer: &BaseConsumer<GroupContext>,
    timeout: Duration,
) -> (bool, RDKafkaErrorCode) {
    use rdkafka_sys as sys;
    let rk = consumer.client().native_ptr();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the live client handle of `consumer`, borrowed for this call. The queue
    // is created here and destroyed once on every path; librdkafka keeps its own reference to
    // it for the commit it posts there, so destroying ours early (on a timeout) is allowed. The
    // event, when one is returned, is destroyed once after reading its error.
    #[allow(unsafe_code)]
    let (answered, code) = unsafe {
        let queue = sys::rd_kafka_queue_new(rk);
        let started =
            sys::rd_kafka_commit_queue(rk, std::ptr::null(), queue, None, std::ptr::null_mut());
        if started != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            sys::rd_kafka_queue_destroy(queue);
            (true, started)
        } else {
            let event = sys::rd_kafka_queue_poll(queue, ms);
            let outcome = if event.is_null() {
                (
                    false,
                    sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__TIMED_OUT,
                )
            } else {
                let code = sys::rd_kafka_event_error(event);
                sys::rd_kafka_event_destroy(event);
                (true, code)
            };
            sys::rd_kafka_queue_destroy(queue);
            outcome
        }
    };
    (answered, RDKafkaErrorCode::from(code))
}

/// Offset operations of jobs, on the subscription group's client.
pub(crate) struct KafkaOps {
    pub(crate) consumer: Arc<BaseConsumer<GroupContext>>,
    pub(crate) group_id: Arc<str>,
}

fn single(tp: &TopicPartition, next_offset: i64) -> Option<TopicPartitionList> {
    let mut list = TopicPartitionList::with_capacity(1);
    list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next_offset))
        .ok()?;
    Some(list)
}

impl ClientOps for KafkaOps {
    fn store_offset(&self, tp: &TopicPartition, next_offset: i64) -> bool {
        single(tp, next_offset).is_some_and(|list| self.consumer.store_offsets(&list).is_ok())
    }

    fn commit_sync(&self, tp: &TopicPartition, next_offset: i64) -> bool {
        single(tp, next_offset)
            .is_some_and(|list| self.consumer.commit(&list, CommitMode::Sync).is_ok())
    }

    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer
            .group_metadata()
            .map(|m| ConsumerGroupMetadata::from_native(self.group_id.clone(), m))
    }
}

/// Partition operations the listener performs on its client.
pub(crate) fn seek(
    consumer: &BaseConsumer<GroupContext>,
    tp: &TopicPartition,
    offset: i64,
) -> Result<(), KafkaError> {
    consumer
        .seek(
            &tp.topic,
            tp.partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        )
        .map_err(|e| native::kafka_error(format!("seek {tp} to {offset}"), &e))
}

pub(crate) fn pause(
    consumer: &BaseConsumer<GroupContext>,
    tp: &TopicPartition,
    resume: bool,
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::with_capacity(1);
    list.add_partition(&tp.topic, tp.partition);
    let result = if resume {
        consumer.resume(&list)
    } else {
        consumer.pause(&list)
    };
    result.map_err(|e| {
        native::kafka_error(
            format!("{} {tp}", if resume { "resume" } else { "pause" }),
            &e,
        )
    })
}

/// Pause, resume and seek on a subscription group's librdkafka client.
pub(crate) struct ClientPartitions(pub(crate) Arc<BaseConsumer<GroupContext>>);

impl PartitionControl for ClientPartitions {
    fn pause(&self, tp: &TopicPartition) -> Result<(), KafkaError> {
        pause(&self.0, tp, false)
    }

    fn resume(&self, tp: &TopicPartition) -> Result<(), KafkaError> {
        pause(&self.0, tp, true)
    }

    fn seek(&self, tp: &TopicPartition, offset: i64) -> Result<(), KafkaError> {
        seek(&self.0, tp, offset)
    }
}
