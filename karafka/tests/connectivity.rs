//! Connecting as production clusters require: the producer, the admin client and a consumer
//! app round-trip messages over TLS with CA and host-name verification on, and over SASL
//! (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN, OAUTHBEARER from a token provider) over TLS; a wrong password, a plaintext client and
//! a client that trusts another CA fail with clear errors, in bounded time, the message
//! coming back to the caller; zstd-compressed messages round-trip on every broker.
//!
//! The TLS and SASL listeners are `scripts/broker start`'s (Tansu behind
//! `scripts/secure-gateway.py`); the tests need [`Capability::SecureListeners`] and say so
//! where they do not run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karafka::consumer::admin::Admin;
use karafka::instrumentation::Event;
use karafka::oauth::OAuthToken;
use karafka::payload::Text;
use karafka::producer::{Message, ProducerBuilder};
use karafka::{App, AppBuilder, ConsumeResult, Consumer, Context, KafkaSettings, Producer};
use karafka_testing::{
    Capability, LogCapture, TEST_SESSION_TIMEOUT_MS, TestBroker, unique_group, unique_topic,
    wait_until,
};

type Seen = Arc<Mutex<BTreeSet<String>>>;

struct Collect(Seen);

impl Consumer for Collect {
    type Payload = Text;
    async fn consume(&mut self, ctx: &Context<Text>) -> ConsumeResult {
        let mut seen = self.0.lock().unwrap();
        for message in ctx.messages() {
            seen.insert(message.payload()?.to_string());
        }
        Ok(())
    }
}

/// Every error event's text, as a monitor saw them.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    fn attach(monitor: &karafka::instrumentation::Monitor) -> Self {
        let errors = Errors::default();
        let sink = errors.0.clone();
        monitor.subscribe_fn(move |event| {
            if let Event::ErrorOccurred(e) = event {
                sink.lock().unwrap().push(e.error.to_string());
            }
        });
        errors
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, fragment: &str, deadline: Duration) -> Result<String, String> {
        wait_until(deadline, || self.all().iter().any(|e| e.contains(fragment)))
            .map(|()| {
                self.all()
                    .into_iter()
                    .find(|e| e.contains(fragment))
                    .unwrap_or_default()
            })
            .map_err(|_| format!("no error saying `{fragment}`; errors: {:#?}", self.all()))
    }
}

fn create_topic(settings: &KafkaSettings, topic: &str) {
    Admin::new(settings)
        .unwrap()
        .create_topic(topic, 2, 1, &BTreeMap::new())
        .unwrap();
}

fn produce(settings: &KafkaSettings, topic: &str, count: usize, extra: &[(&str, &str)]) {
    produce_with(settings, topic, count, |mut builder| {
        for (k, v) in extra {
            builder = builder.kafka(*k, *v);
        }
        builder
    });
}

/// [`produce`] with more set on the producer's builder.
fn produce_with(
    settings: &KafkaSettings,
    topic: &str,
    count: usize,
    configure: impl FnOnce(ProducerBuilder) -> ProducerBuilder,
) {
    let builder = configure(Producer::builder().kafka_settings(settings));
    let producer = builder.kafka("linger.ms", "5").build().unwrap();
    let messages: Vec<Message> = (0..count)
        .map(|i| Message::new(topic, format!("message-{i}")).key(format!("k{i}")))
        .collect();
    let reports = producer.produce_many_sync(messages).unwrap();
    assert_eq!(reports.len(), count);
    producer.close().unwrap();
}

/// Consumes `topic` with an app on `settings` until `count` distinct messages came.
fn consume(settings: &KafkaSettings, topic: &str, count: usize) {
    consume_with(settings, topic, count, |b| b);
}

/// [`consume`] with more set on the app's builder.
fn consume_with(
    settings: &KafkaSettings,
    topic: &str,
    count: usize,
    configure: impl FnOnce(AppBuilder) -> AppBuilder,
) {
    let seen = Seen::default();
    let sink = seen.clone();
    let mut builder = configure(App::builder())
        .name(unique_group("connectivity"))
        .kafka("auto.offset.reset", "earliest")
        .kafka("session.timeout.ms", TEST_SESSION_TIMEOUT_MS)
        .kafka("heartbeat.interval.ms", "1000")
        .kafka("fetch.wait.max.ms", "10")
        .shutdown_timeout(Duration::from_secs(20));
    for (k, v) in settings.iter() {
        builder = builder.kafka(k, v);
    }
    let app = builder
        .topic(topic, move |t| t.consumer(move || Collect(sink.clone())))
        .build()
        .unwrap();
    let errors = Errors::attach(app.monitor());
    let running = app.start().unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= count
    });
    running.stop_blocking().unwrap();
    assert!(
        done.is_ok(),
        "consumed {} of {count}; errors: {:#?}",
        seen.lock().unwrap().len(),
        errors.all()
    );
    let seen = seen.lock().unwrap();
    assert!((0..count).all(|i| seen.contains(&format!("message-{i}"))));
}

fn secure_broker() -> Option<TestBroker> {
    TestBroker::require(&[Capability::SecureListeners])
}

#[test]
fn tls_with_ca_verification_round_trips_through_producer_admin_and_app() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let settings = broker.secure().unwrap().tls_settings();
    let topic = unique_topic("tls");
    create_topic(&settings, &topic);
    produce(&settings, &topic, 200, &[]);
    consume(&settings, &topic, 200);
}

#[test]
fn sasl_ssl_with_scram_and_plain_round_trips() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let secure = broker.secure().unwrap();
    let topic = unique_topic("sasl");
    create_topic(&secure.sasl_ssl_settings("SCRAM-SHA-512"), &topic);
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        produce(&secure.sasl_ssl_settings(mechanism), &topic, 50, &[]);
    }
    // Three rounds of the same 50 payloads: 50 distinct messages.
    consume(&secure.sasl_ssl_settings("SCRAM-SHA-512"), &topic, 50);
}

fn token_provider(
    token: String,
) -> impl Fn(Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error + Send + Sync>> {
    move |_config| {
        let expires = std::time::SystemTime::now() + Duration::from_secs(600);
        Ok(OAuthToken {
            token: token.clone(),
            principal: "karafka".into(),
            lifetime_ms: expires.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64,
        })
    }
}

#[test]
fn sasl_ssl_oauthbearer_with_a_token_provider_round_trips() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let secure = broker.secure().unwrap();
    // The password settings minus user and password: the token is the credential.
    let mut settings = secure.sasl_ssl_settings("OAUTHBEARER");
    settings.remove("sasl.username");
    settings.remove("sasl.password");
    let topic = unique_topic("oauth");
    create_topic(&secure.sasl_ssl_settings("SCRAM-SHA-512"), &topic);
    let token = secure.oauth_token().to_owned();
    produce_with(&settings, &topic, 40, |b| {
        b.oauth_token_provider(token_provider(token))
    });
    let token = secure.oauth_token().to_owned();
    consume_with(&settings, &topic, 40, |b| {
        b.oauth_token_provider(token_provider(token))
    });
}

#[test]
fn oauthbearer_without_a_good_token_fails_clearly() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let secure = broker.secure().unwrap();
    let oauth = secure
        .tls_settings()
        .with("bootstrap.servers", &secure.sasl_ssl)
        .with("security.protocol", "SASL_SSL")
        .with("sasl.mechanisms", "OAUTHBEARER");
    // No provider and no librdkafka handler: the error says what to set.
    refused(&oauth, "oauth_token_provider");
    // A provider whose token the broker refuses.
    let wrong = Producer::builder()
        .kafka_settings(&oauth)
        .kafka("message.timeout.ms", "4000")
        .oauth_token_provider(token_provider("not-the-token".into()))
        .build()
        .unwrap();
    let errors = Errors::attach(wrong.monitor());
    let error = wrong
        .produce_sync(Message::new("refused", "x"))
        .expect_err("refused");
    assert!(
        error.to_string().contains("Authentication failed"),
        "{error}"
    );
    assert!(errors.all().iter().all(|e| !e.contains("not-the-token")));
    let _ = wrong.close();
    // librdkafka's own unsecured-JWT handler still applies without a provider: a token is
    // sent (and refused here, as it is not the listener's).
    let unsecured = oauth
        .with("enable.sasl.oauthbearer.unsecure.jwt", "true")
        .with("sasl.oauthbearer.config", "principal=karafka");
    refused(&unsecured, "Authentication failed");
}

/// A client that cannot connect: its dispatch fails within `message.timeout.ms` (no hang,
/// no panic), the message comes back, and the error events or librdkafka's log lines (in
/// `tracing`, target `librdkafka`) say why. Returns the error events and the log lines.
fn refused(settings: &KafkaSettings, says: &str) -> Vec<String> {
    let logs = LogCapture::install().unwrap();
    let producer = Producer::builder()
        .kafka_settings(settings)
        .kafka("message.timeout.ms", "4000")
        .build()
        .unwrap();
    let errors = Errors::attach(producer.monitor());
    let started = Instant::now();
    let error = producer
        .produce_sync(Message::new("refused", "payload"))
        .expect_err("the broker must refuse this client");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // The returned error says why, not only that the message timed out.
    let text = error.to_string();
    assert!(
        text.contains(says),
        "the error does not say `{says}`: {text}"
    );
    let message = error.into_message().expect("the message comes back");
    assert_eq!(message.payload.as_deref(), Some(&b"payload"[..]));
    let client = producer.id().to_owned();
    let librdkafka_lines = || -> Vec<String> {
        logs.events()
            .into_iter()
            .filter(|e| e.target == "librdkafka" && e.field("client") == Some(client.as_str()))
            .map(|e| e.message)
            .collect()
    };
    let said = wait_until(Duration::from_secs(10), || {
        errors
            .all()
            .into_iter()
            .chain(librdkafka_lines())
            .any(|line| line.contains(says))
    });
    let _ = producer.close();
    let mut seen = errors.all();
    seen.extend(librdkafka_lines());
    assert!(said.is_ok(), "nothing says `{says}`: {seen:#?}");
    seen
}

#[test]
fn a_wrong_password_fails_clearly_and_is_not_shown() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let secure = broker.secure().unwrap();
    let wrong = "not-the-password-7f3a";
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let settings = secure.sasl_ssl_settings_with(mechanism, wrong);
        let errors = refused(&settings, "Authentication failed");
        assert!(
            errors.iter().all(|e| !e.contains(wrong)),
            "the password leaked: {errors:#?}"
        );
    }
    // The consumer side: the app reports the failure as an error event and stops cleanly.
    let settings = secure.sasl_ssl_settings_with("SCRAM-SHA-512", wrong);
    let mut builder = App::builder()
        .name(unique_group("wrong-password"))
        .shutdown_timeout(Duration::from_secs(10));
    for (k, v) in settings.iter() {
        builder = builder.kafka(k, v);
    }
    let app = builder
        .topic("wrong-password", |t| {
            t.consumer(|| Collect(Seen::default()))
        })
        .build()
        .unwrap();
    let errors = Errors::attach(app.monitor());
    let running = app.start().unwrap();
    let said = errors.wait_for("Authentication failed", Duration::from_secs(15));
    let started = Instant::now();
    running.stop_blocking().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    said.unwrap();
}

#[test]
fn a_plaintext_client_and_an_untrusted_ca_are_refused() {
    let Some(broker) = secure_broker() else {
        return;
    };
    let secure = broker.secure().unwrap();
    // The listener is up and speaks TLS: a TLS client gets its answer.
    create_topic(&secure.tls_settings(), &unique_topic("tls-up"));
    let plaintext = KafkaSettings::new()
        .with("bootstrap.servers", &secure.tls)
        .with("log_level", "4");
    // librdkafka reports only "1/1 brokers are down" (the disconnect itself it logs at debug
    // level): the framework's error event adds what to check.
    refused(&plaintext, "`security.protocol` is PLAINTEXT");
    let untrusted = secure
        .tls_settings()
        .with("ssl.ca.location", secure.other_ca.display().to_string());
    refused(&untrusted, "certificate verify failed");
}

#[test]
fn zstd_compressed_messages_round_trip() {
    let Some(broker) = TestBroker::require(&[]) else {
        return;
    };
    let topic = unique_topic("zstd");
    broker.create_topic(&topic, 2).unwrap();
    let mut settings = broker.producer_settings();
    settings.set("compression.codec", "zstd");
    produce(&settings, &topic, 300, &[("compression.level", "3")]);
    consume(&broker.producer_settings(), &topic, 300);
}
