//! Glue between karafka-rs' public types and rdkafka's.
//!
//! The karafka-rs crates use these to keep rdkafka out of their public signatures. Not part
//! of the public API: it may change in any release.

use std::borrow::Cow;

use bytes::Bytes;
use rdkafka::message::{BorrowedHeaders, Header as RdHeader, Headers as _, OwnedHeaders};

use crate::error::KafkaError;
use crate::message::{Header, Headers, Offset, Timestamp};
use crate::settings::KafkaSettings;

/// Checks one key and value with librdkafka's configuration parser.
pub fn check_librdkafka_setting(key: &str, value: &str) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    config.set(key, value);
    match config.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, _, _)) => Err(description),
        Err(other) => Err(other.to_string()),
    }
}

/// The features of the linked librdkafka (its `builtin.features` property), read once.
pub fn builtin_features() -> &'static [String] {
    static FEATURES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FEATURES.get_or_init(|| {
        rdkafka::ClientConfig::new()
            .create_native_config()
            .and_then(|config| config.get("builtin.features"))
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            // An empty configuration always parses and the property always exists; an empty
            // list would only make every feature check report the feature as missing.
            .unwrap_or_default()
    })
}

/// [`kafka_error`] for the creation of a client from `settings`: any secret value of
/// `settings` that librdkafka's words repeat is redacted.
pub fn client_creation_error(
    operation: impl Into<Cow<'static, str>>,
    error: &rdkafka::error::KafkaError,
    settings: &KafkaSettings,
) -> KafkaError {
    let mut translated = kafka_error(operation, error);
    translated.message = settings.redact_in(&translated.message);
    translated
}

/// librdkafka's `reason` for an error event of a client with `settings`, with what to check
/// where librdkafka's words alone leave a new user guessing: all brokers down while
/// `security.protocol` is plaintext (a TLS listener closes such connections at once, and
/// librdkafka logs that only at debug level).
pub fn explain_client_error(
    error: &rdkafka::error::KafkaError,
    reason: &str,
    settings: &KafkaSettings,
) -> String {
    use rdkafka::types::RDKafkaErrorCode as C;
    let reason = settings.redact_in(reason);
    let protocol = settings
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    match error.rdkafka_error_code() {
        Some(C::AllBrokersDown) if protocol == "plaintext" => format!(
            "{reason}: check `bootstrap.servers`; `security.protocol` is PLAINTEXT (the \
             default), so a listener that requires TLS closes the connection at once: set \
             it to `SSL` or `SASL_SSL` for such a cluster"
        ),
        _ => reason,
    }
}

/// Whether `error` (from a client's error callback) says the client cannot reach or log in
/// to the cluster: authentication, TLS, transport, all brokers down, name resolution.
pub fn is_connection_error(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::Authentication
                | C::SaslAuthenticationFailed
                | C::SSL
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
        )
    )
}

/// The OAUTHBEARER token for rdkafka's `generate_oauth_token`, from `provider`. Called only
/// when librdkafka has no handler of its own (unsecured JWT, OIDC) for the client.
pub fn generate_oauth_token(
    provider: Option<&dyn crate::oauth::OAuthTokenProvider>,
    config: Option<&str>,
) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
    let Some(provider) = provider else {
        return Err(
            "sasl.mechanisms=OAUTHBEARER needs a token: give the producer or app an \
                    OAuth token provider (`.oauth_token_provider(...)`), or set \
                    `enable.sasl.oauthbearer.unsecure.jwt=true` (development only)"
                .into(),
        );
    };
    let token = provider
        .token(config)
        .map_err(|e| -> Box<dyn std::error::Error> {
            format!("the OAuth token provider failed: {e}").into()
        })?;
    Ok(rdkafka::client::OAuthToken {
        token: token.token,
        principal_name: token.principal,
        lifetime_ms: token.lifetime_ms,
    })
}

/// An rdkafka `ClientConfig` holding exactly `settings`.
///
/// librdkafka's log level: the `log_level` setting (syslog 0-7) when given, `debug` level
/// when `debug` is set, else what `tracing` has enabled for the `librdkafka` target (rdkafka
/// would otherwise take it from the `log` crate, which tracing users do not configure).
pub fn client_config(settings: &KafkaSettings) -> rdkafka::ClientConfig {
    use rdkafka::config::RDKafkaLogLevel as L;
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in settings.iter() {
        config.set(k, v);
    }
    let level = match settings.get("log_level").and_then(|l| l.parse::<u8>().ok()) {
        Some(0) => L::Emerg,
        Some(1) => L::Alert,
        Some(2) => L::Critical,
        Some(3) => L::Error,
        Some(4) => L::Warning,
        Some(5) => L::Notice,
        Some(6) => L::Info,
        Some(_) => L::Debug,
        None if settings.contains_key("debug") => L::Debug,
        None if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) => L::Debug,
        None if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) => L::Info,
        None if tracing::enabled!(target: "librdkafka", tracing::Level::WARN) => L::Warning,
        None => L::Error,
    };
    config.set_log_level(level);
    config
}

/// Forwards a librdkafka log line to `tracing` (target `librdkafka`), at the matching level.
pub fn log_to_tracing(
    level: rdkafka::config::RDKafkaLogLevel,
    client: &str,
    facility: &str,
    line: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", client, facility, "{line}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", client, facility, "{line}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", client, facility, "{line}"),
        L::Debug => tracing::debug!(target: "librdkafka", client, facility, "{line}"),
    }
}

/// Translates an rdkafka error, naming what karafka-rs was doing.
pub fn kafka_error(
    operation: impl Into<Cow<'static, str>>,
    error: &rdkafka::error::KafkaError,
) -> KafkaError {
    use rdkafka::error::KafkaError as E;
    let (message, retriable, fatal, txn_requires_abort) = match error {
        E::Transaction(inner) => (
            inner.string(),
            inner.is_retriable(),
            inner.is_fatal(),
            inner.txn_requires_abort(),
        ),
        E::ClientConfig(_, description, key, _) => {
            (format!("{description} (key `{key}`)"), false, false, false)
        }
        E::MessageConsumptionFatal(_) => (error.to_string(), false, true, false),
        other => (other.to_string(), false, false, false),
    };
    let code = error.rdkafka_error_code();
    KafkaError {
        operation: operation.into(),
        code: code.map(|c| format!("{c:?}")),
        code_number: code.map(|c| c as i32),
        message,
        retriable,
        fatal,
        txn_requires_abort,
    }
}

/// Translates an rdkafka error code (as found in delivery reports and partition lists).
pub fn kafka_code_error(
    operation: impl Into<Cow<'static, str>>,
    code: rdkafka::types::RDKafkaErrorCode,
) -> KafkaError {
    KafkaError {
        operation: operation.into(),
        code: Some(format!("{code:?}")),
        code_number: Some(code as i32),
        message: code.to_string(),
        retriable: false,
        fatal: false,
        txn_requires_abort: false,
    }
}

/// Our offset as rdkafka's.
pub fn to_rdkafka_offset(offset: Offset) -> rdkafka::Offset {
    match offset {
        Offset::Beginning => rdkafka::Offset::Beginning,
        Offset::End => rdkafka::Offset::End,
        Offset::Stored => rdkafka::Offset::Stored,
        Offset::Invalid => rdkafka::Offset::Invalid,
        Offset::At(o) => rdkafka::Offset::Offset(o),
        Offset::Tail(n) => rdkafka::Offset::OffsetTail(n),
    }
}

/// rdkafka's offset as ours.
pub fn from_rdkafka_offset(offset: rdkafka::Offset) -> Offset {
    match offset {
        rdkafka::Offset::Beginning => Offset::Beginning,
        rdkafka::Offset::End => Offset::End,
        rdkafka::Offset::Stored => Offset::Stored,
        rdkafka::Offset::Invalid => Offset::Invalid,
        rdkafka::Offset::Offset(o) => Offset::At(o),
        rdkafka::Offset::OffsetTail(n) => Offset::Tail(n),
    }
}

/// rdkafka's timestamp as ours.
pub fn from_rdkafka_timestamp(ts: rdkafka::Timestamp) -> Timestamp {
    match ts {
        rdkafka::Timestamp::NotAvailable => Timestamp::NotAvailable,
        rdkafka::Timestamp::CreateTime(ms) => Timestamp::CreateTime(ms),
        rdkafka::Timestamp::LogAppendTime(ms) => Timestamp::LogAppendTime(ms),
    }
}

/// Our headers as rdkafka's owned headers (copied into librdkafka's header list).
pub fn to_owned_headers(headers: &Headers) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for h in headers.iter() {
        owned = owned.insert(RdHeader {
            key: &h.key,
            value: h.value.as_deref(),
        });
    }
    owned
}

/// rdkafka's headers (borrowed from a consumed message) as ours.
pub fn from_borrowed_headers(headers: &BorrowedHeaders) -> Headers {
    headers
        .iter()
        .map(|h| Header {
            key: h.key.to_owned(),
            value: h.value.map(Bytes::copy_from_slice),
        })
        .collect()
}

/// Runs `future` to completion on this thread, parking between polls. For the few futures
/// karafka-rs waits on synchronously (rdkafka admin requests, completed by librdkafka's
/// threads). Safe inside an async context: it blocks only the calling thread.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
