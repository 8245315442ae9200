//! The librdkafka pass-through settings map.
//!
//! Every client karafka-rs creates takes a [`KafkaSettings`]: plain string keys and values,
//! exactly as librdkafka documents them (`bootstrap.servers`, `queue.buffering.max.ms`,
//! `session.timeout.ms`, ...). The framework's own settings are typed builder methods on the
//! producer and the app; this map is for everything librdkafka itself understands.
//!
//! `Debug` and `Display` redact secrets, so the map can be logged and printed by `info`
//! commands safely. See [`is_secret`] for the rule.

use std::collections::BTreeMap;
use std::fmt;

/// What a redacted value prints as.
pub const REDACTED: &str = "[REDACTED]";

/// Keys that are secret by name (matched case-insensitively), besides the patterns that
/// [`is_secret`] applies to every key.
const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Substrings that make any key secret.
const SECRET_PATTERNS: &[&str] = &["password", "secret", "passphrase", "private.key"];

/// Returns whether the value of `key` must never be printed.
///
/// Secret are: `sasl.password`, `ssl.key.password`, `ssl.keystore.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config` (it commonly embeds
/// credentials), and any key containing `password`, `secret`, `passphrase` or `private.key`.
///
/// ```
/// use karafka_core::settings::is_secret;
/// assert!(is_secret("sasl.password"));
/// assert!(is_secret("my.custom.SECRET.token"));
/// assert!(!is_secret("bootstrap.servers"));
/// ```
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str()) || SECRET_PATTERNS.iter().any(|p| key.contains(p))
}

/// librdkafka settings: string keys and values, passed to the native client as they are.
///
/// Keys are kept sorted, so printing is stable. Setting a key twice keeps the last value.
///
/// ```
/// use karafka_core::KafkaSettings;
///
/// let mut settings = KafkaSettings::new();
/// settings
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .set("sasl.password", "hunter2");
///
/// assert_eq!(settings.get("bootstrap.servers"), Some("127.0.0.1:9092"));
/// let shown = format!("{settings:?} {settings}");
/// assert!(!shown.contains("hunter2"));
/// assert!(shown.contains("[REDACTED]"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct KafkaSettings {
    entries: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// Builder form of [`set`](Self::set).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    /// Sets `key` only when it is not set yet (how the framework applies its own defaults
    /// without overriding the user's choice).
    pub fn set_default(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries
            .entry(key.into())
            .or_insert_with(|| value.into());
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates over `(key, value)` in key order. Values are **not** redacted: this is what
    /// the native client receives. Use [`iter_redacted`](Self::iter_redacted) for display.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Iterates over `(key, value)` with secret values replaced by [`REDACTED`].
    pub fn iter_redacted(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| {
            let shown = if is_secret(k) { REDACTED } else { v.as_str() };
            (k.as_str(), shown)
        })
    }

    /// Returns a copy of `self` with every key of `overrides` set to its value there
    /// (`overrides` wins).
    pub fn merged(&self, overrides: &KafkaSettings) -> KafkaSettings {
        let mut merged = self.clone();
        merged.extend(overrides.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        merged
    }

    /// Only the settings that say how to reach and authenticate to the cluster
    /// (`bootstrap.servers`, `client.id`, `security.protocol`, `socket.*`, `ssl.*`, `sasl.*`,
    /// `enable.ssl.*`, `enable.sasl.*`, `broker.address.family`, `log_level`): what a producer or admin client derived from a
    /// consumer's settings keeps, without consumer-only keys that would only produce warnings.
    ///
    /// ```
    /// use karafka_core::KafkaSettings;
    /// let consumer = KafkaSettings::new()
    ///     .with("bootstrap.servers", "b:9092")
    ///     .with("sasl.password", "s3cret")
    ///     .with("enable.ssl.certificate.verification", "false")
    ///     .with("fetch.min.bytes", "1");
    /// let connection = consumer.connection_only();
    /// assert_eq!(connection.len(), 3);
    /// assert!(!connection.contains_key("fetch.min.bytes"));
    /// ```
    pub fn connection_only(&self) -> KafkaSettings {
        const KEYS: &[&str] = &[
            "bootstrap.servers",
            "client.id",
            "security.protocol",
            "broker.address.family",
            "log_level",
        ];
        const PREFIXES: &[&str] = &["socket.", "ssl.", "sasl.", "enable.ssl.", "enable.sasl."];
        self.iter()
            .filter(|(k, _)| KEYS.contains(k) || PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect()
    }

    /// `text` with every secret value of this map (see [`is_secret`]) replaced by
    /// [`REDACTED`]: for messages that librdkafka or a broker wrote about these settings.
    ///
    /// ```
    /// use karafka_core::KafkaSettings;
    /// let settings = KafkaSettings::new().with("sasl.password", "hunter2");
    /// assert_eq!(
    ///     settings.redact_in("bad value \"hunter2\" for sasl.password"),
    ///     "bad value \"[REDACTED]\" for sasl.password"
    /// );
    /// ```
    pub fn redact_in(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (key, value) in &self.entries {
            // A one-character secret would redact unrelated characters: never seen in
            // practice, and a message is better readable than blanked for it.
            if is_secret(key) && value.len() > 1 && text.contains(value.as_str()) {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        text
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter_redacted()).finish()
    }
}

/// `key=value` pairs separated by `, `, secrets redacted.
impl fmt::Display for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.iter_redacted().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KafkaSettings {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut settings = KafkaSettings::new();
        settings.extend(iter);
        settings
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for KafkaSettings {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.set(k, v);
        }
    }
}

impl<'a> IntoIterator for &'a KafkaSettings {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_listed_secret_and_pattern() {
        let settings = KafkaSettings::new()
            .with("bootstrap.servers", "b1:9092")
            .with("sasl.password", "pw-1")
            .with("ssl.key.password", "pw-2")
            .with("ssl.keystore.password", "pw-3")
            .with("ssl.key.pem", "-----BEGIN PRIVATE KEY-----")
            .with("sasl.oauthbearer.client.secret", "pw-5")
            .with("my.app.Password.field", "pw-6")
            .with("vendor.secret_token", "pw-7");
        let debug = format!("{settings:?}");
        let display = settings.to_string();
        for shown in [&debug, &display] {
            for secret in [
                "pw-1",
                "pw-2",
                "pw-3",
                "BEGIN PRIVATE KEY",
                "pw-5",
                "pw-6",
                "pw-7",
            ] {
                assert!(!shown.contains(secret), "{secret} leaked in {shown}");
            }
            assert!(
                shown.contains("b1:9092"),
                "non-secret value hidden: {shown}"
            );
            assert_eq!(shown.matches(REDACTED).count(), 7, "{shown}");
        }
        // The unredacted view is what the client gets.
        assert_eq!(settings.get("sasl.password"), Some("pw-1"));
    }

    #[test]
    fn display_is_sorted_key_value_pairs() {
        let settings: KafkaSettings = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(settings.to_string(), "a=1, b=2");
    }

    #[test]
    fn merge_lets_overrides_win() {
        let base = KafkaSettings::new().with("a", "1").with("b", "2");
        let merged = base.merged(&KafkaSettings::new().with("b", "3").with("c", "4"));
        assert_eq!(merged.to_string(), "a=1, b=3, c=4");
    }

    #[test]
    fn set_default_keeps_user_value() {
        let mut settings = KafkaSettings::new().with("fetch.wait.max.ms", "100");
        settings
            .set_default("fetch.wait.max.ms", "10")
            .set_default("fetch.queue.backoff.ms", "10");
        assert_eq!(settings.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(settings.get("fetch.queue.backoff.ms"), Some("10"));
    }

    #[test]
    fn validate_reports_every_bad_key_by_name() {
        let settings = KafkaSettings::new()
            .with("bootstrap.servers", "127.0.0.1:9092")
            .with("no.such.key", "1")
            .with("acks", "most")
            .with("sasl.password", "hunter2")
            .with("queue.buffering.max.ms", "-5");
        let violations = settings.validate("producer.kafka");
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "producer.kafka.acks",
                "producer.kafka.no.such.key",
                "producer.kafka.queue.buffering.max.ms"
            ]
        );
        assert!(violations[1].message.contains("no.such.key"));
        assert!(violations.iter().all(|v| !v.message.contains("hunter2")));
    }
}
