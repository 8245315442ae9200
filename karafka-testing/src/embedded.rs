//! The embedded cluster: librdkafka's mock cluster, in process.

use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka_sys as sys;

pub use rdkafka_sys::types::{RDKafkaApiKey as ApiKey, RDKafkaRespErr as ErrorCode};

use crate::FixtureError;

/// librdkafka's own default for the mock cluster, and Kafka's broker default: a new group's
/// first join waits this long for more members.
pub const DEFAULT_INITIAL_REBALANCE_DELAY: Duration = Duration::from_secs(3);

/// A Kafka cluster inside this process: librdkafka's mock cluster, with brokers listening on
/// loopback ports that any client (ours or raw rdkafka) can bootstrap from.
///
/// Zero install, starts in milliseconds, and supports producing (plain, idempotent and
/// transactional), consuming with consumer groups (classic eager, cooperative-sticky, and
/// KIP-848 `group.protocol=consumer`) and offset commits. Known limits, measured:
///
/// - Admin `CreateTopics` times out: create topics with [`create_topic`](Self::create_topic)
///   (the mock's own API), or let auto-creation make them with the default partition count.
/// - Aborted transactional records stay visible to `read_committed` consumers.
/// - It keeps at most about 5 MiB per partition (~47k messages of 100 bytes); older
///   messages are dropped as on a broker with tight retention.
/// - While a classic (eager) group rebalances, it refuses offset commits
///   (`REBALANCE_IN_PROGRESS`), which Kafka accepts from the current generation: after an eager
///   rebalance on the mock, work processed since the last automatic commit is delivered again.
///   Cooperative-sticky and KIP-848 groups commit normally.
/// - A new consumer group's first join waits the initial rebalance delay
///   ([`DEFAULT_INITIAL_REBALANCE_DELAY`], settable with
///   [`EmbeddedClusterBuilder::initial_rebalance_delay`]).
///
/// Fault injection: [`broker_down`](Self::broker_down)/[`broker_up`](Self::broker_up),
/// [`push_request_errors`](Self::push_request_errors), [`set_round_trip_time`](Self::set_round_trip_time),
/// [`set_topic_error`](Self::set_topic_error), [`set_partition_leader`](Self::set_partition_leader).
///
/// Cheap to clone; the cluster stops when the last clone is dropped.
///
/// ```
/// use karafka_testing::EmbeddedCluster;
///
/// let cluster = EmbeddedCluster::start(3).unwrap();
/// cluster.create_topic("orders", 8).unwrap();
/// assert!(cluster.bootstrap_servers().contains("127.0.0.1"));
/// ```
#[derive(Clone)]
pub struct EmbeddedCluster {
    inner: Arc<Inner>,
}

struct Inner {
    mock: NonNull<sys::RDKafkaMockCluster>,
    bootstrap: String,
    brokers: i32,
    // The librdkafka client the mock cluster lives in. Dropped after `mock` is destroyed
    // (Drop for Inner runs before the fields are dropped).
    host: BaseProducer,
}

// SAFETY: every librdkafka mock-cluster entry point used here is thread-safe: the commands
// (topic create, broker up/down, RTT, leaders, topic errors) are posted as ops to the mock
// cluster's own queue and served by its thread (`rd_kafka_op_req`), and the settings
// (request errors, group delays and timeouts) take `mcluster->lock`. The bootstrap string is
// read once at creation. The pointer is destroyed only in `Drop`, when no clone is left.
#[allow(unsafe_code)]
unsafe impl Send for Inner {}
// SAFETY: see `Send` above; `&Inner` only reaches the thread-safe entry points.
#[allow(unsafe_code)]
unsafe impl Sync for Inner {}

/// Configures an [`EmbeddedCluster`] before it starts.
#[derive(Debug, Clone)]
pub struct EmbeddedClusterBuilder {
    brokers: i32,
    initial_rebalance_delay: Duration,
}

impl Default for EmbeddedClusterBuilder {
    fn default() -> Self {
        Self {
            brokers: 1,
            initial_rebalance_delay: DEFAULT_INITIAL_REBALANCE_DELAY,
        }
    }
}

impl EmbeddedClusterBuilder {
    /// Number of brokers, ids `1..=n` (default 1).
    pub fn brokers(mut self, brokers: i32) -> Self {
        self.brokers = brokers;
        self
    }

    /// How long a new consumer group's first join waits for more members (default 3 s, as
    /// on Kafka). Lower it to make single-member group tests join faster.
    pub fn initial_rebalance_delay(mut self, delay: Duration) -> Self {
        self.initial_rebalance_delay = delay;
        self
    }

    /// Starts the cluster.
    pub fn start(self) -> Result<EmbeddedCluster, FixtureError> {
        if !(1..=64).contains(&self.brokers) {
            return Err(FixtureError::Embedded(format!(
                "broker count must be 1 to 64, got {}",
                self.brokers
            )));
        }
        let host: BaseProducer = ClientConfig::new()
            .set("client.id", "karafka-embedded-cluster")
            .set("log_level", "3")
            .create()
            .map_err(|e| FixtureError::Embedded(format!("creating the host client: {e}")))?;
        // SAFETY: `host.client().native_ptr()` is a live rd_kafka_t owned by `host`, which is
        // stored next to the cluster and outlives it (see `Inner`).
        #[allow(unsafe_code)]
        let raw =
            unsafe { sys::rd_kafka_mock_cluster_new(host.client().native_ptr(), self.brokers) };
        let mock = NonNull::new(raw).ok_or_else(|| {
            FixtureError::Embedded("librdkafka could not create the mock cluster".into())
        })?;
        // SAFETY: `mock` is valid; the returned string is owned by the cluster and lives as
        // long as it; we copy it at once.
        #[allow(unsafe_code)]
        let bootstrap = unsafe {
            CStr::from_ptr(sys::rd_kafka_mock_cluster_bootstraps(mock.as_ptr()))
                .to_string_lossy()
                .into_owned()
        };
        let cluster = EmbeddedCluster {
            inner: Arc::new(Inner {
                mock,
                bootstrap,
                brokers: self.brokers,
                host,
            }),
        };
        cluster.set_initial_rebalance_delay(self.initial_rebalance_delay);
        Ok(cluster)
    }
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers with default settings.
    pub fn start(brokers: i32) -> Result<Self, FixtureError> {
        Self::builder().brokers(brokers).start()
    }

    /// A builder for non-default settings.
    pub fn builder() -> EmbeddedClusterBuilder {
        EmbeddedClusterBuilder::default()
    }

    /// `bootstrap.servers` for clients, e.g. `127.0.0.1:40123,127.0.0.1:40125`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.inner.bootstrap
    }

    /// Number of brokers; their ids are `1..=broker_count()`.
    pub fn broker_count(&self) -> i32 {
        self.inner.brokers
    }

    fn ptr(&self) -> *mut sys::RDKafkaMockCluster {
        self.inner.mock.as_ptr()
    }

    fn check(&self, what: &str, err: sys::RDKafkaRespErr) -> Result<(), FixtureError> {
        if err == sys::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(FixtureError::Embedded(format!(
                "{what}: {}",
                rdkafka::error::RDKafkaErrorCode::from(err)
            )))
        }
    }

    /// Creates `topic` with `partitions` partitions, replicated once.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), FixtureError> {
        self.create_topic_replicated(topic, partitions, 1)
    }

    /// Creates `topic` with `partitions` partitions and `replication_factor` replicas
    /// (at most the broker count).
    pub fn create_topic_replicated(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<(), FixtureError> {
        let name = c_string(topic)?;
        // SAFETY: valid cluster pointer and NUL-terminated name; librdkafka copies the name.
        #[allow(unsafe_code)]
        let err = unsafe {
            sys::rd_kafka_mock_topic_create(
                self.ptr(),
                name.as_ptr(),
                partitions,
                replication_factor,
            )
        };
        self.check(
            &format!("creating topic `{topic}` with {partitions} partitions"),
            err,
        )
    }

    /// Takes broker `broker_id` down: its connections close and it refuses new ones.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), FixtureError> {
        // SAFETY: valid cluster pointer; an unknown id is reported as an error code.
        #[allow(unsafe_code)]
        let err = unsafe { sys::rd_kafka_mock_broker_set_down(self.ptr(), broker_id) };
        self.check(&format!("taking broker {broker_id} down"), err)
    }

    /// Brings broker `broker_id` back up.
    pub fn broker_up(&self, broker_id: i32) -> Result<(), FixtureError> {
        // SAFETY: valid cluster pointer; an unknown id is reported as an error code.
        #[allow(unsafe_code)]
        let err = unsafe { sys::rd_kafka_mock_broker_set_up(self.ptr(), broker_id) };
        self.check(&format!("bringing broker {broker_id} up"), err)
    }

    /// Delays every response of broker `broker_id` by `rtt` (zero removes the delay).
    pub fn set_round_trip_time(&self, broker_id: i32, rtt: Duration) -> Result<(), FixtureError> {
        let ms = i32::try_from(rtt.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid cluster pointer; an unknown id is reported as an error code.
        #[allow(unsafe_code)]
        let err = unsafe { sys::rd_kafka_mock_broker_set_rtt(self.ptr(), broker_id, ms) };
        self.check(&format!("setting broker {broker_id} round-trip time"), err)
    }

    /// Makes the next `errors.len()` requests of type `api` (on any broker) fail with these
    /// errors, in order.
    pub fn push_request_errors(&self, api: ApiKey, errors: &[ErrorCode]) {
        // SAFETY: valid cluster pointer; `errors` is a live slice of `errors.len()` codes,
        // copied by librdkafka under the cluster lock.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_push_request_errors_array(
                self.ptr(),
                api as i16,
                errors.len(),
                errors.as_ptr(),
            )
        }
    }

    /// Drops the errors still queued for `api`.
    pub fn clear_request_errors(&self, api: ApiKey) {
        // SAFETY: valid cluster pointer.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_clear_request_errors(self.ptr(), api as i16)
        }
    }

    /// Makes metadata for `topic` report `error` (`RD_KAFKA_RESP_ERR_NO_ERROR` clears it).
    pub fn set_topic_error(&self, topic: &str, error: ErrorCode) -> Result<(), FixtureError> {
        let name = c_string(topic)?;
        // SAFETY: valid cluster pointer and NUL-terminated name; librdkafka copies it.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_topic_set_error(self.ptr(), name.as_ptr(), error)
        };
        Ok(())
    }

    /// Moves the leadership of `topic`/`partition` to `broker_id` (`-1`: no leader; but a
    /// produce request to a partition without a leader crashes the mock in librdkafka
    /// 2.12.1, a null leader written in its reply, `rdkafka_mock_handlers.c:53`).
    pub fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker_id: i32,
    ) -> Result<(), FixtureError> {
        let name = c_string(topic)?;
        // SAFETY: valid cluster pointer and NUL-terminated name; librdkafka copies it.
        #[allow(unsafe_code)]
        let err = unsafe {
            sys::rd_kafka_mock_partition_set_leader(self.ptr(), name.as_ptr(), partition, broker_id)
        };
        self.check(
            &format!("moving leader of {topic}/{partition} to broker {broker_id}"),
            err,
        )
    }

    /// Sets the initial rebalance delay for groups created from now on.
    pub fn set_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid cluster pointer; the setting is written under the cluster lock.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_group_initial_rebalance_delay_ms(self.ptr(), ms)
        }
    }

    /// Sets the session timeout of KIP-848 (`group.protocol=consumer`) groups; in that
    /// protocol the broker, not the client, owns it.
    pub fn set_consumer_group_session_timeout(&self, timeout: Duration) {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid cluster pointer; the setting is written under the cluster lock.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_set_group_consumer_session_timeout_ms(self.ptr(), ms)
        }
    }

    /// Sets the heartbeat interval of KIP-848 groups.
    pub fn set_consumer_group_heartbeat_interval(&self, interval: Duration) {
        let ms = i32::try_from(interval.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid cluster pointer; the setting is written under the cluster lock.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(self.ptr(), ms)
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the last handle is going away, so no other thread uses the pointer; it was
        // created by rd_kafka_mock_cluster_new and is destroyed exactly once, before `host`.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_mock_cluster_destroy(self.mock.as_ptr())
        };
        let _ = self.host.flush(Duration::from_millis(0));
    }
}

impl fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap_servers", &self.inner.bootstrap)
            .field("brokers", &self.inner.brokers)
            .finish()
    }
}

fn c_string(s: &str) -> Result<CString, FixtureError> {
    CString::new(s).map_err(|_| FixtureError::Embedded(format!("`{s}` contains a NUL byte")))
}
