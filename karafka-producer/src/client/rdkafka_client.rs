//! The librdkafka client: one rdkafka `BaseProducer`, a named thread that serves its delivery
//! reports, and the topic handles of variants.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use karafka_core::instrumentation::{ErrorKind, ErrorOccurred, Event, Monitor, Statistics};
use karafka_core::oauth::OAuthTokenProvider;
use karafka_core::{KafkaError, KafkaSettings, Partition, TopicPartition, native};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as sys;

use super::{Client, ClientFactory, ClientSetup, ConsumerGroupMetadata, Rejected, Rejection};
use crate::delivery::{Delivery, Outcome, lock};
use crate::message::Message;
use crate::variant::TopicConfig;

/// How long a topic's partition count is trusted for partition keys.
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(30);

pub(crate) struct RdKafkaClientFactory {
    /// Where OAUTHBEARER tokens come from, when the producer was given a provider.
    pub(crate) oauth: Option<Arc<dyn OAuthTokenProvider>>,
}

impl ClientFactory for RdKafkaClientFactory {
    fn create(&self, setup: &ClientSetup<'_>) -> Result<Box<dyn Client>, KafkaError> {
        Ok(Box::new(RdKafkaClient::new(setup, self.oauth.clone())?))
    }
}

/// Events from librdkafka, on the poller thread.
struct Context {
    producer_id: Arc<str>,
    monitor: Monitor,
    /// The client's settings, to explain its errors (and redact secrets from them).
    kafka: KafkaSettings,
    // rdkafka 0.39 hands each error event to `error` twice when a BaseProducer polls
    // (`Client::poll_event`, then `BaseProducer::handle_error_event`); the second is dropped.
    last_error: Mutex<Option<(String, Instant)>>,
    /// The last connection-level failure librdkafka reported (authentication, TLS, brokers
    /// down), explained: a message that times out says why it could not be sent.
    /// Cleared by the next delivery (the connection works again); `connection_error_set`
    /// keeps the hot path to one atomic load.
    last_connection_error: Mutex<Option<String>>,
    connection_error_set: AtomicBool,
    oauth: Option<Arc<dyn OAuthTokenProvider>>,
}

impl ClientContext for Context {
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
        native::log_to_tracing(level, &self.producer_id, fac, log_message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        match Statistics::from_json(statistics) {
            Ok(stats) => self.monitor.emit(Event::StatisticsEmitted {
                source_id: self.producer_id.clone(),
                consumer_group: None,
                statistics: Arc::new(stats),
            }),
            Err(e) => self.monitor.emit(Event::ErrorOccurred(
                ErrorOccurred::new(ErrorKind::StatisticsDecode, e)
                    .source_id(self.producer_id.clone()),
            )),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        {
            let mut last = lock(&self.last_error);
            if let Some((previous, at)) = last.as_ref() {
                if *previous == text && at.elapsed() < Duration::from_millis(50) {
                    return;
                }
            }
            *last = Some((text, Instant::now()));
        }
        let mut translated = native::kafka_error("librdkafka", &error);
        translated.message = native::explain_client_error(&error, reason, &self.kafka);
        if native::is_connection_error(&error) {
            let mut last = lock(&self.last_connection_error);
            // "All brokers are down" follows the error that says why: keep that one.
            let generic = error.rdkafka_error_code()
                == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
            if !(generic && last.is_some()) {
                *last = Some(translated.message.clone());
            }
            self.connection_error_set.store(true, Ordering::Release);
        }
        self.monitor.emit(Event::ErrorOccurred(
            ErrorOccurred::new(ErrorKind::Librdkafka, translated)
                .source_id(self.producer_id.clone()),
        ));
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (error, m) = match result {
            // Without a broker answer (acks=0) librdkafka 2.x reports RD_KAFKA_OFFSET_INVALID
            // (-1001); reports use -1 for every unknown offset.
            Ok(m) => {
                if self.connection_error_set.load(Ordering::Acquire) {
                    self.connection_error_set.store(false, Ordering::Release);
                    *lock(&self.last_connection_error) = None;
                }
                // SAFETY: every message this client sends carries `Delivery::into_opaque`, and
                // librdkafka hands it back exactly once, here.
                #[allow(unsafe_code)]
                unsafe {
                    Delivery::delivered_from_opaque(opaque, m.partition(), m.offset().max(-1))
                };
                return;
            }
            Err((error, m)) => (error, m),
        };
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let delivery = unsafe { Delivery::from_opaque(opaque) };
        let mut message = Message {
            topic: delivery.topic(),
            payload: m.payload().map(bytes::Bytes::copy_from_slice),
            key: m.key().map(bytes::Bytes::copy_from_slice),
            partition: delivery.requested_partition(),
            partition_key: None,
            timestamp: m.timestamp().to_millis(),
            headers: Default::default(),
            label: None,
        };
        if let Some(h) = m.headers() {
            message.headers = native::from_borrowed_headers(h);
        }
        let mut error = native::kafka_error("deliver message", error);
        if error.code.as_deref() == Some("MessageTimedOut") {
            if let Some(cause) = lock(&self.last_connection_error).as_deref() {
                error.message = format!("{}; the last connection error: {cause}", error.message);
            }
        }
        let outcome = Outcome::Failed {
            error,
            message: Box::new(message),
        };
        delivery.complete(outcome);
    }
}

/// A topic's handle (with a variant's settings or the client's defaults) that messages are
/// sent through; holds librdkafka's app reference so the handle (and its settings) lives as
/// long as the client.
struct TopicHandle(NonNull<sys::RDKafkaTopic>);

// SAFETY: librdkafka topic handles are reference-counted, internally locked objects that may
// be used (`rd_kafka_producev` with RD_KAFKA_VTYPE_RKT, from any number of threads at once) and
// released from any thread; this wrapper only hands the pointer to librdkafka and releases its
// reference, once, in Drop.
#[allow(unsafe_code)]
unsafe impl Send for TopicHandle {}
// SAFETY: see Send: sharing the pointer only lets threads pass it to librdkafka calls that are
// thread-safe for topic handles.
#[allow(unsafe_code)]
unsafe impl Sync for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from rd_kafka_topic_new and this is its only release; the
        // client (rd_kafka_t) is still alive: handles are dropped before the producer.
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_topic_destroy(self.0.as_ptr())
        }
    }
}

/// How a topic is used in this client, and the handle messages to it are sent with (claims are
/// never replaced: a handle stays valid for the client's life).
enum Claim {
    /// With the producer's default topic settings.
    Default { handle: TopicHandle },
    /// Created with a variant's settings. `config` is boxed: its address marks the handle.
    Variant {
        config: Box<TopicConfig>,
        handle: TopicHandle,
    },
}

impl Claim {
    fn describe(&self) -> String {
        match self {
            Claim::Default { .. } => "the producer's default topic settings".to_owned(),
            Claim::Variant { config, .. } => format!("a variant's {config}"),
        }
    }

    /// The handle, when this claim serves a send with `wanted` settings.
    fn serve(&self, wanted: Option<&TopicConfig>) -> Result<NonNull<sys::RDKafkaTopic>, Rejection> {
        match (self, wanted) {
            (Claim::Default { handle }, None) => Ok(handle.0),
            (Claim::Variant { config, handle }, Some(wanted)) if **config == *wanted => {
                Ok(handle.0)
            }
            (other, wanted) => Err(Rejection::TopicConflict {
                claimed_by: other.describe(),
                requested: wanted.map_or_else(
                    || "the producer's default topic settings".to_owned(),
                    |w| format!("a variant's {w}"),
                ),
            }),
        }
    }
}

/// Client ids, never reused: a thread's cached topic handle is used only by the client that
/// owns it.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// The default-settings topic handle this thread sent with last (client id, topic, handle):
/// consecutive sends to one topic skip the claims lock and the hash.
struct LastHandle {
    client: u64,
    topic: Arc<str>,
    handle: NonNull<sys::RDKafkaTopic>,
}

/// The polling thread's poll deadline: the longest a batch waits for entries counted there
/// but not settled yet (see [`crate::batches::delivered_once`]).
const DEFERRED_SETTLE_BOUND: Duration = Duration::from_millis(100);

thread_local! {
    static LAST_HANDLE: RefCell<Option<LastHandle>> = const { RefCell::new(None) };
}

pub(crate) struct RdKafkaClient {
    id: u64,
    // Field order matters: claims (topic handles) drop before the producer.
    claims: RwLock<HashMap<Arc<str>, Claim>>,
    partition_counts: Mutex<HashMap<Arc<str>, (i32, Instant)>>,
    default_partitioner: String,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    producer: Arc<BaseProducer<Context>>,
}

impl std::fmt::Debug for RdKafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdKafkaClient")
            .field("in_flight", &self.in_flight())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RdKafkaClient {
    fn new(
        setup: &ClientSetup<'_>,
        oauth: Option<Arc<dyn OAuthTokenProvider>>,
    ) -> Result<Self, KafkaError> {
        let context = Context {
            producer_id: setup.producer_id.clone(),
            monitor: setup.monitor.clone(),
            kafka: setup.kafka.clone(),
            last_error: Mutex::new(None),
            last_connection_error: Mutex::new(None),
            connection_error_set: AtomicBool::new(false),
            oauth,
        };
        let producer: BaseProducer<Context> = native::client_config(setup.kafka)
            .create_with_context(context)
            .map_err(|e| {
                native::client_creation_error("create producer client", &e, setup.kafka)
            })?;
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let producer = producer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("karafka.producer#{}", setup.producer_id))
                .spawn(move || {
                    // Batch entries reported here settle once per batch, not per message;
                    // what a batch still waits for from here when its last entries settled
                    // elsewhere (refused ones, reports served by a `flush` on another thread)
                    // settles after each poll.
                    crate::batches::defer_settling();
                    // poll() serves events until its deadline, then returns: that deadline
                    // bounds how late such a batch finishes. (Not shorter: rdkafka's poll
                    // spins through its deadline's last millisecond, rounded down to a zero
                    // timeout, so an idle producer spends up to 1 ms of each deadline on it.)
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(DEFERRED_SETTLE_BOUND);
                        crate::batches::settle_deferred();
                    }
                    crate::batches::settle_deferred();
                })
                .map_err(|e| KafkaError::other("start the delivery report thread", e.to_string()))?
        };
        Ok(RdKafkaClient {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            claims: RwLock::new(HashMap::new()),
            partition_counts: Mutex::new(HashMap::new()),
            default_partitioner: setup
                .kafka
                .get("partitioner")
                .unwrap_or("consistent_random")
                .to_owned(),
            stop,
            poller: Mutex::new(Some(poller)),
            closed: AtomicBool::new(false),
            producer,
        })
    }

    /// The handle to send `topic` with under `topic_config` (see [`crate::variant`]): the
    /// first use creates it, with a variant's settings or the producer's defaults; a send
    /// that would silently use other settings than it asks for is refused.
    fn topic_handle(
        &self,
        topic: &Arc<str>,
        topic_config: Option<&TopicConfig>,
    ) -> Result<NonNull<sys::RDKafkaTopic>, Rejection> {
        if topic_config.is_none() {
            let cached = LAST_HANDLE.with(|last| {
                let last = last.try_borrow().ok()?;
                let last = last.as_ref()?;
                (last.client == self.id
                    && (Arc::ptr_eq(&last.topic, topic) || *last.topic == **topic))
                    .then_some(last.handle)
            });
            if let Some(handle) = cached {
                return Ok(handle);
            }
        }
        let served = self.claimed_handle(topic, topic_config)?;
        if topic_config.is_none() {
            LAST_HANDLE.with(|last| {
                if let Ok(mut last) = last.try_borrow_mut() {
                    *last = Some(LastHandle {
                        client: self.id,
                        topic: topic.clone(),
                        handle: served,
                    });
                }
            });
        }
        Ok(served)
    }

    fn claimed_handle(
        &self,
        topic: &Arc<str>,
        topic_config: Option<&TopicConfig>,
    ) -> Result<NonNull<sys::RDKafkaTopic>, Rejection> {
        if let Some(claim) = self
            .claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return claim.serve(topic_config);
        }
        let mut claims = self.claims.write().unwrap_or_else(|p| p.into_inner());
        if let Some(claim) = claims.get(topic) {
            return claim.serve(topic_config);
        }
        let claim = match topic_config {
            None => Claim::Default {
                handle: self.create_topic_handle(topic, None)?.0,
            },
            Some(wanted) => {
                let config = Box::new(wanted.clone());
                match self.create_topic_handle(topic, Some(&config))? {
                    (handle, true) => Claim::Variant { config, handle },
                    // librdkafka had the topic already, with other settings, which it keeps.
                    (handle, false) => Claim::Default { handle },
                }
            }
        };
        let served = claim.serve(topic_config);
        claims.insert(topic.clone(), claim);
        served
    }

    /// `topic`'s handle: created with `config` on top of the client's default topic settings
    /// (with the defaults alone when `None`), or librdkafka's existing one. `true` when it was
    /// created with `config` here; `false` when librdkafka already had a handle for the topic
    /// (created with other settings, which it keeps).
    fn create_topic_handle(
        &self,
        topic: &str,
        config: Option<&TopicConfig>,
    ) -> Result<(TopicHandle, bool), Rejection> {
        let operation = if config.is_some() {
            "apply variant topic settings"
        } else {
            "produce"
        };
        let fail = |message: String| Rejection::Kafka(KafkaError::other(operation, message));
        let name = CString::new(topic)
            .map_err(|_| fail(format!("topic `{topic}` contains a NUL byte")))?;
        let rk = self.producer.client().native_ptr();
        let Some(config) = config else {
            // SAFETY: `rk` is this client's live handle and `name` a NUL-terminated string
            // that outlives the call; a NULL conf means the client's default topic settings.
            #[allow(unsafe_code)]
            let rkt = unsafe { sys::rd_kafka_topic_new(rk, name.as_ptr(), std::ptr::null_mut()) };
            return match NonNull::new(rkt) {
                Some(rkt) => Ok((TopicHandle(rkt), false)),
                None => {
                    // SAFETY: reads librdkafka's thread-local last error; no pointers involved.
                    #[allow(unsafe_code)]
                    let code = RDKafkaErrorCode::from(unsafe { sys::rd_kafka_last_error() });
                    Err(Rejection::Kafka(KafkaError::other(
                        "produce",
                        format!(
                            "librdkafka could not create a handle for topic `{topic}` ({code})"
                        ),
                    )))
                }
            };
        };
        let marker = config as *const TopicConfig as *mut c_void;
        // SAFETY: `rk` is this client's live handle. The topic conf is created here and either
        // destroyed here on error or handed to rd_kafka_topic_new, which takes ownership. The
        // strings are NUL-terminated and outlive the calls; `errstr` is a writable buffer of the
        // length passed. The marker is only compared, never dereferenced by librdkafka (no custom
        // partitioner is installed).
        #[allow(unsafe_code)]
        unsafe {
            let conf = sys::rd_kafka_default_topic_conf_dup(rk);
            for (key, value) in config.iter() {
                let (k, v) = match (CString::new(key), CString::new(value)) {
                    (Ok(k), Ok(v)) => (k, v),
                    _ => {
                        sys::rd_kafka_topic_conf_destroy(conf);
                        return Err(fail(format!("`{key}` = `{value}` contains a NUL byte")));
                    }
                };
                let mut errstr = [0 as std::ffi::c_char; 512];
                let res = sys::rd_kafka_topic_conf_set(
                    conf,
                    k.as_ptr(),
                    v.as_ptr(),
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if res != sys::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
                    sys::rd_kafka_topic_conf_destroy(conf);
                    let why = CStr::from_ptr(errstr.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    return Err(fail(format!(
                        "librdkafka rejects `{key}` = `{value}`: {why}"
                    )));
                }
            }
            sys::rd_kafka_topic_conf_set_opaque(conf, marker);
            let rkt = sys::rd_kafka_topic_new(rk, name.as_ptr(), conf);
            let Some(rkt) = NonNull::new(rkt) else {
                let code = RDKafkaErrorCode::from(sys::rd_kafka_last_error());
                return Err(fail(format!(
                    "librdkafka could not create topic `{topic}` with {config} ({code}); \
                     its log names the incompatible setting"
                )));
            };
            // The marker differs when the handle existed before: librdkafka then discarded
            // our settings.
            let fresh = sys::rd_kafka_topic_opaque(rkt.as_ptr()) == marker;
            Ok((TopicHandle(rkt), fresh))
        }
    }

    fn partition_count(&self, topic: &Arc<str>) -> Result<i32, KafkaError> {
        if let Some((count, at)) = lock(&self.partition_counts).get(topic) {
            if at.elapsed() < PARTITION_COUNT_TTL {
                return Ok(*count);
            }
        }
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| native::kafka_error(format!("fetch metadata of `{topic}`"), &e))?;
        let found = metadata.topics().iter().find(|t| t.name() == &**topic);
        let count = match found {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                t.partitions().len() as i32
            }
            Some(t) => {
                return Err(KafkaError::other(
                    format!("fetch metadata of `{topic}`"),
                    format!(
                        "the topic has no partitions available ({:?})",
                        t.error().map(RDKafkaErrorCode::from)
                    ),
                ));
            }
            None => {
                return Err(KafkaError::other(
                    format!("fetch metadata of `{topic}`"),
                    "the broker does not know the topic",
                ));
            }
        };
        lock(&self.partition_counts).insert(topic.clone(), (count, Instant::now()));
        Ok(count)
    }
}

/// Hashes a non-empty `key` with librdkafka's own deterministic partitioner functions.
fn hash_partition(partitioner: &str, key: &[u8], count: i32) -> Partition {
    let function = match partitioner {
        "murmur2" | "murmur2_random" => sys::rd_kafka_msg_partitioner_murmur2,
        "fnv1a" | "fnv1a_random" => sys::rd_kafka_msg_partitioner_fnv1a,
        // consistent, consistent_random (librdkafka's default), and random (which a partition
        // key overrides): CRC32 of the key.
        _ => sys::rd_kafka_msg_partitioner_consistent,
    };
    // SAFETY: these three partitioners only hash `key` (valid for `key.len()` bytes) modulo
    // `count` and read neither the topic handle nor the opaques (librdkafka rdkafka_msg.c), so
    // null pointers are fine; `key` is non-empty and `count` positive (checked by callers).
    #[allow(unsafe_code)]
    unsafe {
        function(
            std::ptr::null(),
            key.as_ptr().cast(),
            key.len(),
            count,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// A byte slice as rd_kafka_producev's pointer and length (NULL, 0 for none).
fn bytes_arg(bytes: Option<&[u8]>) -> (*mut c_void, usize) {
    bytes.map_or((std::ptr::null_mut(), 0), |b| {
        (b.as_ptr() as *mut c_void, b.len())
    })
}

/// Headers built for librdkafka; destroyed on drop unless librdkafka took them.
struct NativeHeaders(NonNull<sys::rd_kafka_headers_t>);

impl NativeHeaders {
    fn of(headers: &karafka_core::Headers) -> Option<Self> {
        if headers.is_empty() {
            return None;
        }
        // SAFETY: rd_kafka_headers_new returns a new list (never NULL: it aborts on OOM);
        // rd_kafka_header_add copies `name_size` bytes of the name and `value_size` bytes of the
        // value (NULL, 0 for a null value), both valid for those lengths during the call.
        #[allow(unsafe_code)]
        unsafe {
            let list = NonNull::new(sys::rd_kafka_headers_new(headers.len()))?;
            for h in headers.iter() {
                let (value, value_len) = h.value.as_deref().map_or((std::ptr::null(), 0), |v| {
                    (v.as_ptr().cast(), v.len() as isize)
                });
                sys::rd_kafka_header_add(
                    list.as_ptr(),
                    h.key.as_ptr().cast(),
                    h.key.len() as isize,
                    value,
                    value_len,
                );
            }
            Some(NativeHeaders(list))
        }
    }
}

impl Drop for NativeHeaders {
    fn drop(&mut self) {
        // SAFETY: the list came from rd_kafka_headers_new and librdkafka did not take it (a
        // taken list is forgotten, not dropped).
        #[allow(unsafe_code)]
        unsafe {
            sys::rd_kafka_headers_destroy(self.0.as_ptr())
        }
    }
}

impl Client for RdKafkaClient {
    fn produce(
        &self,
        message: &Message,
        topic_config: Option<&TopicConfig>,
        delivery: Delivery,
    ) -> Result<(), Rejected> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Rejected {
                reason: Rejection::Kafka(KafkaError::other(
                    "produce",
                    "the client is closed (the producer closed or rebuilt it)",
                )),
                delivery,
            });
        }
        let rkt = match self.topic_handle(&message.topic, topic_config) {
            Ok(rkt) => rkt,
            Err(reason) => return Err(Rejected { reason, delivery }),
        };
        let headers = NativeHeaders::of(&message.headers);
        let (payload, payload_len) = bytes_arg(message.payload.as_deref());
        let (key, key_len) = bytes_arg(message.key.as_deref());
        let opaque = delivery.into_opaque();
        // Sent through the topic's handle, not its name: no name lookup under librdkafka's
        // client lock and no C string per message (what rdkafka's `BaseProducer::send` does).
        // SAFETY: `rk` is this client's live handle and `rkt` a handle this client holds an
        // application reference to (claims live as long as the client; a thread's cached
        // handle is used only by the client with the cached id). The argument list follows
        // rd_kafka_producev's vtype/value pairs with the C types it reads (int32 partition,
        // int flags, pointer + size_t for value and key, pointer opaque, int64 timestamp,
        // headers pointer), ends with VTYPE_END. With MSG_F_COPY librdkafka copies payload and
        // key before returning; it takes the headers only on success.
        #[allow(unsafe_code)]
        let err = unsafe {
            sys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                rkt.as_ptr(),
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                message.partition.unwrap_or(-1),
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                sys::RD_KAFKA_MSG_F_COPY,
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                payload,
                payload_len,
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key,
                key_len,
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque as *mut c_void,
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TIMESTAMP,
                message.timestamp.unwrap_or(0),
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                headers
                    .as_ref()
                    .map_or(std::ptr::null_mut(), |h| h.0.as_ptr()),
                sys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if err == sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            // librdkafka owns the headers now.
            std::mem::forget(headers);
            return Ok(());
        }
        // SAFETY: the opaque was made by `into_opaque` above, and a refused message's opaque
        // comes back here instead of to a delivery report.
        #[allow(unsafe_code)]
        let delivery = unsafe { Delivery::from_opaque(opaque) };
        let code = RDKafkaErrorCode::from(err);
        let reason = if code == RDKafkaErrorCode::QueueFull {
            Rejection::QueueFull
        } else {
            Rejection::Kafka(native::kafka_error(
                "produce",
                &rdkafka::error::KafkaError::MessageProduction(code),
            ))
        };
        Err(Rejected { reason, delivery })
    }

    fn partition_for_key(
        &self,
        topic: &str,
        topic_config: Option<&TopicConfig>,
        partition_key: &[u8],
    ) -> Result<Partition, KafkaError> {
        let topic: Arc<str> = topic.into();
        // The metadata request below creates the topic's handle when missing: claim first.
        match self.topic_handle(&topic, topic_config) {
            Ok(_) => {}
            Err(Rejection::TopicConflict {
                claimed_by,
                requested,
            }) => {
                return Err(KafkaError::other(
                    "choose a partition for a partition key",
                    format!("topic `{topic}` is used with {claimed_by}; {requested} cannot apply"),
                ));
            }
            Err(Rejection::Kafka(e)) => return Err(e),
            Err(other) => {
                return Err(KafkaError::other(
                    "choose a partition for a partition key",
                    format!("{other:?}"),
                ));
            }
        }
        let count = self.partition_count(&topic)?;
        let partitioner = topic_config
            .and_then(|c| c.get("partitioner"))
            .unwrap_or(&self.default_partitioner);
        Ok(hash_partition(partitioner, partition_key, count))
    }

    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(|e| native::kafka_error("flush", &e))
    }

    fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    fn close(&self, timeout: Duration) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Serve the remaining reports on this thread from here on.
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = lock(&self.poller).take() {
            let _ = poller.join();
        }
        if self.producer.flush(timeout).is_err() || self.in_flight() > 0 {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            // Purged messages come back as failed delivery reports, completing their handles.
            let _ = self.producer.flush(Duration::from_secs(5));
        }
    }

    fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .init_transactions(timeout)
            .map_err(|e| native::kafka_error("init transactions", &e))
    }

    fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.producer
            .begin_transaction()
            .map_err(|e| native::kafka_error("begin transaction", &e))
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let native_group = group.native().ok_or_else(|| {
            KafkaError::other(
                "send offsets to transaction",
                format!(
                    "the metadata of group `{}` was not taken from a live consumer; librdkafka \
                     needs the consumer's own group metadata",
                    group.group_id()
                ),
            )
        })?;
        let mut list = rdkafka::TopicPartitionList::with_capacity(offsets.len());
        for (tp, offset) in offsets {
            list.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(*offset))
                .map_err(|e| native::kafka_error("send offsets to transaction", &e))?;
        }
        self.producer
            .send_offsets_to_transaction(&list, native_group, timeout)
            .map_err(|e| native::kafka_error("send offsets to transaction", &e))
    }

    fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .commit_transaction(timeout)
            .map_err(|e| native::kafka_error("commit transaction", &e))
    }

    fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .abort_transaction(timeout)
            .map_err(|e| native::kafka_error("abort transaction", &e))
    }
}

impl Drop for RdKafkaClient {
    fn drop(&mut self) {
        // Normally closed by the producer already. A message handed over while the close ran
        // would otherwise stay in librdkafka with nobody serving its report: purge and serve
        // the reports here, so every delivery sink completes.
        self.close(Duration::ZERO);
        if self.in_flight() > 0 {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let _ = self.producer.flush(Duration::from_secs(5));
        }
    }
}
