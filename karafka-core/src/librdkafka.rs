//! What the linked librdkafka can do, and which settings need which of its features.
//!
//! librdkafka is compiled into every karafka-rs build from the sources bundled in
//! `rdkafka-sys`; which optional parts it has is decided by cargo features:
//!
//! | cargo feature (karafka, karafka-producer, karafka-consumer, karafka-core) | librdkafka features | default |
//! |---|---|---|
//! | `ssl-vendored`: OpenSSL compiled from source (needs `perl`, `make`) | `ssl`, `sasl_scram`, `sasl_oauthbearer` | on |
//! | `ssl`: the system's OpenSSL (`libssl-dev`, `pkg-config`) | `ssl`, `sasl_scram`, `sasl_oauthbearer` | off |
//! | `zstd`: libzstd compiled from source | `zstd` | on |
//! | always | `gzip`, `snappy`, `lz4`, `sasl_plain`, `regex`, `plugins` | |
//!
//! GSSAPI (Kerberos, `sasl_gssapi`) and OIDC token retrieval (`oidc`) need system libraries
//! (Cyrus SASL with Kerberos, libcurl) and have no karafka-rs feature: enable rdkafka's
//! (`gssapi`, `curl-static`) by adding `rdkafka` as a direct dependency of your crate (cargo
//! unifies the features of the one librdkafka in the build).
//!
//! A setting that needs a feature the build lacks is a [`Violation`] at `build()`, naming
//! the cargo feature to enable:
//!
//! ```
//! use karafka_core::librdkafka;
//!
//! let features = librdkafka::features();
//! assert!(features.iter().any(|f| f == "gzip"));
//! # #[cfg(feature = "ssl")]
//! assert!(librdkafka::has_feature("ssl") && librdkafka::has_feature("sasl_scram"));
//! ```

use crate::contract::Violation;
use crate::settings::{KafkaSettings, REDACTED, is_secret};

/// The librdkafka version linked into this build, e.g. `2.12.1`.
pub fn version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// The features of the linked librdkafka (its `builtin.features`), e.g. `gzip`, `snappy`,
/// `ssl`, `sasl`, `regex`, `lz4`, `sasl_plain`, `sasl_scram`, `plugins`, `zstd`,
/// `sasl_oauthbearer`.
pub fn features() -> &'static [String] {
    crate::native::builtin_features()
}

/// Whether the linked librdkafka has `feature` (a name of [`features`]).
pub fn has_feature(feature: &str) -> bool {
    features().iter().any(|f| f == feature)
}

/// Validation lives here, beside the feature checks it uses, so `settings` (the map) depends
/// on nothing above it.
impl KafkaSettings {
    /// Checks every key and value with librdkafka's own configuration parser and returns
    /// one [`Violation`] per rejected key, each at `path.<key>` and naming the key.
    ///
    /// This catches unknown keys and malformed values (`"acks": "most"`) before a client
    /// is created, and settings that need a feature this build of librdkafka lacks (TLS,
    /// SCRAM, OAUTHBEARER, zstd, GSSAPI: see [`librdkafka`](crate::librdkafka)), naming the
    /// cargo feature that brings it. Combinations that librdkafka only checks when a client is created (for
    /// example `enable.idempotence` with `acks=1`) are reported by the client's creation.
    ///
    /// ```
    /// use karafka_core::KafkaSettings;
    ///
    /// let settings = KafkaSettings::new()
    ///     .with("bootstrap.servers", "127.0.0.1:9092")
    ///     .with("linger.mss", "5");
    /// let violations = settings.validate("kafka");
    /// assert_eq!(violations.len(), 1);
    /// assert_eq!(violations[0].path, "kafka.linger.mss");
    /// assert!(violations[0].message.contains("linger.mss"));
    /// ```
    pub fn validate(&self, path: &str) -> Vec<Violation> {
        let mut violations = missing_features(self, path, features());
        let prefix = format!("{path}.");
        let reported: Vec<String> = violations
            .iter()
            .filter_map(|v| v.path.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        violations.extend(
            self.iter()
                .filter(|(key, _)| !reported.iter().any(|r| r == key))
                .filter_map(|(key, value)| {
                    crate::native::check_librdkafka_setting(key, value)
                        .err()
                        .map(|reason| {
                            let shown = if is_secret(key) { REDACTED } else { value };
                            let reason = self.redact_in(&reason);
                            let message = match fix_for_build_reason(&reason) {
                                Some(fix) => format!(
                                    "librdkafka rejects `{key}` = `{shown}`: {reason}; {fix}"
                                ),
                                None => format!("librdkafka rejects `{key}` = `{shown}`: {reason}"),
                            };
                            Violation::new(format!("{path}.{key}"), message)
                        })
                }),
        );
        violations.sort_by(|a, b| a.path.cmp(&b.path));
        violations
    }
}

/// What a setting needs that librdkafka only has when built with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    /// The librdkafka feature (`builtin.features` name).
    feature: &'static str,
    /// What it is, for the message.
    what: &'static str,
    /// How to get it.
    fix: &'static str,
}

const TLS: Need = Need {
    feature: "ssl",
    what: "TLS (OpenSSL)",
    fix: "enable the cargo feature `ssl-vendored` (OpenSSL built from source) or `ssl` (the \
          system's OpenSSL) of karafka / karafka-consumer / karafka-producer; `ssl-vendored` \
          is a default feature, so check for `default-features = false`",
};
const SCRAM: Need = Need {
    feature: "sasl_scram",
    what: "SASL SCRAM (it needs OpenSSL)",
    ..TLS
};
const OAUTHBEARER: Need = Need {
    feature: "sasl_oauthbearer",
    what: "SASL OAUTHBEARER (it needs OpenSSL)",
    ..TLS
};
const ZSTD: Need = Need {
    feature: "zstd",
    what: "zstd compression",
    fix: "enable the cargo feature `zstd` of karafka / karafka-consumer / karafka-producer; \
          it is a default feature, so check for `default-features = false`",
};
const GSSAPI: Need = Need {
    feature: "sasl_gssapi",
    what: "SASL GSSAPI (Kerberos, through Cyrus SASL)",
    fix: "karafka-rs has no feature for it: add `rdkafka = { version = \"0.39\", features = \
          [\"gssapi\"] }` to your Cargo.toml (it needs the system's libsasl2 with Kerberos), \
          or use another mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)",
};
const OIDC: Need = Need {
    feature: "oidc",
    what: "OAUTHBEARER OIDC token retrieval (through libcurl)",
    fix: "karafka-rs has no feature for it: add `rdkafka = { version = \"0.39\", features = \
          [\"curl-static\"] }` to your Cargo.toml",
};

/// How to get what librdkafka's `reason` for refusing a setting says the build lacks
/// ("... not available at build time", "not supported in this build: ... depends on
/// libcurl"), if it says so.
pub(crate) fn fix_for_build_reason(reason: &str) -> Option<&'static str> {
    let lower = reason.to_ascii_lowercase();
    if !(lower.contains("build time") || lower.contains("in this build")) {
        return None;
    }
    if lower.contains("libcurl") {
        Some(OIDC.fix)
    } else if lower.contains("openssl") {
        Some(TLS.fix)
    } else if lower.contains("zstd") {
        Some(ZSTD.fix)
    } else if lower.contains("sasl") || lower.contains("kerberos") {
        Some(GSSAPI.fix)
    } else {
        None
    }
}

/// The feature `key` = `value` needs, if any.
fn need(key: &str, value: &str) -> Option<Need> {
    let value = value.trim().to_ascii_lowercase();
    match key {
        "security.protocol" if matches!(value.as_str(), "ssl" | "sasl_ssl") => Some(TLS),
        "sasl.mechanisms" | "sasl.mechanism" => match value.as_str() {
            "scram-sha-256" | "scram-sha-512" => Some(SCRAM),
            "oauthbearer" => Some(OAUTHBEARER),
            "gssapi" => Some(GSSAPI),
            _ => None,
        },
        "sasl.oauthbearer.method" if value == "oidc" => Some(OIDC),
        "compression.codec" | "compression.type" if value == "zstd" => Some(ZSTD),
        _ if key.starts_with("ssl.") || key.starts_with("ssl_") => Some(TLS),
        // Kerberos-only keys (`sasl.kerberos.keytab`, ...) are left to librdkafka's own
        // check, whose reason gets the fix (`fix_for_build_reason`): some of them
        // (`sasl.kerberos.service.name`) are accepted by every build.
        _ => None,
    }
}

/// One [`Violation`] per setting of `settings` that needs a feature missing from
/// `available`, at `path.<key>`.
pub(crate) fn missing_features(
    settings: &KafkaSettings,
    path: &str,
    available: &[String],
) -> Vec<Violation> {
    let has = |feature: &str| available.iter().any(|f| f == feature);
    let mut violations = Vec::new();
    for (key, value) in settings.iter() {
        let Some(need) = need(key, value) else {
            continue;
        };
        if has(need.feature) {
            continue;
        }
        let shown = if is_secret(key) { REDACTED } else { value };
        violations.push(Violation::new(
            format!("{path}.{key}"),
            format!(
                "`{key}` = `{shown}` needs {}, which this build of librdkafka lacks (its \
                 features: {}): {}",
                need.what,
                available.join(", "),
                need.fix
            ),
        ));
    }
    violations
}

/// The checks that need a client's whole settings (after the app's, the group's and the
/// topic's are merged), at `path`: a SASL `security.protocol` without `sasl.mechanisms`
/// means librdkafka's default, GSSAPI (Kerberos), which is refused when the build lacks it.
///
/// ```
/// use karafka_core::{KafkaSettings, librdkafka};
///
/// let settings = KafkaSettings::new()
///     .with("security.protocol", "SASL_SSL")
///     .with("sasl.mechanisms", "SCRAM-SHA-512");
/// assert!(librdkafka::check_connection(&settings, "app.kafka").is_empty());
/// ```
pub fn check_connection(settings: &KafkaSettings, path: &str) -> Vec<Violation> {
    sasl_without_mechanism(settings, path, features())
        .into_iter()
        .collect()
}

fn sasl_without_mechanism(
    settings: &KafkaSettings,
    path: &str,
    available: &[String],
) -> Option<Violation> {
    let protocol = settings
        .get("security.protocol")
        .map(|p| p.trim().to_ascii_lowercase());
    let sasl = matches!(protocol.as_deref(), Some("sasl_ssl" | "sasl_plaintext"));
    let mechanism = settings
        .get("sasl.mechanisms")
        .or_else(|| settings.get("sasl.mechanism"));
    let kerberos = available.iter().any(|f| f == GSSAPI.feature);
    (sasl && mechanism.is_none() && !kerberos).then(|| {
        Violation::new(
            format!("{path}.sasl.mechanisms"),
            "is not set, so librdkafka would use its default, GSSAPI (Kerberos), which this \
             build lacks: set `sasl.mechanisms` to `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` \
             or `OAUTHBEARER` (what your cluster expects)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(features: &[&str]) -> Vec<String> {
        features.iter().map(|f| (*f).to_owned()).collect()
    }

    /// What librdkafka has when built without OpenSSL and zstd.
    fn plain_build() -> Vec<String> {
        list(&[
            "gzip",
            "snappy",
            "sasl",
            "regex",
            "lz4",
            "sasl_plain",
            "plugins",
        ])
    }

    #[test]
    fn tls_sasl_and_zstd_settings_name_the_cargo_feature_when_missing() {
        let settings = KafkaSettings::new()
            .with("bootstrap.servers", "b:9093")
            .with("security.protocol", "SASL_SSL")
            .with("sasl.mechanisms", "SCRAM-SHA-512")
            .with("ssl.ca.location", "/etc/ca.pem")
            .with("compression.codec", "zstd");
        let violations = missing_features(&settings, "app.kafka", &plain_build());
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "app.kafka.compression.codec",
                "app.kafka.sasl.mechanisms",
                "app.kafka.security.protocol",
                "app.kafka.ssl.ca.location",
            ]
        );
        assert!(violations[0].message.contains("cargo feature `zstd`"));
        for v in &violations[1..] {
            assert!(v.message.contains("`ssl-vendored`"), "{v}");
            assert!(v.message.contains("sasl_plain"), "lists the features: {v}");
        }
    }

    #[test]
    fn nothing_is_reported_when_the_build_has_the_features() {
        let settings = KafkaSettings::new()
            .with("security.protocol", "ssl")
            .with("sasl.mechanism", "OAUTHBEARER")
            .with("compression.type", "zstd");
        let mut full = plain_build();
        full.extend(list(&["ssl", "sasl_scram", "sasl_oauthbearer", "zstd"]));
        assert!(missing_features(&settings, "p", &full).is_empty());
        // Plain settings need nothing optional.
        let plain = KafkaSettings::new()
            .with("security.protocol", "SASL_PLAINTEXT")
            .with("sasl.mechanisms", "PLAIN")
            .with("compression.codec", "lz4");
        assert!(missing_features(&plain, "p", &plain_build()).is_empty());
    }

    #[test]
    fn sasl_without_a_mechanism_is_gssapi_and_is_reported_without_kerberos() {
        let settings = KafkaSettings::new().with("security.protocol", "SASL_PLAINTEXT");
        let violation =
            sasl_without_mechanism(&settings, "producer.kafka", &plain_build()).expect("refused");
        assert_eq!(violation.path, "producer.kafka.sasl.mechanisms");
        assert!(violation.message.contains("GSSAPI"));
        let mut kerberos = plain_build();
        kerberos.push("sasl_gssapi".into());
        assert!(sasl_without_mechanism(&settings, "p", &kerberos).is_none());
        // A per-key check does not see it: the mechanism may come from another level.
        assert!(missing_features(&settings, "p", &plain_build()).is_empty());
        let with = settings.with("sasl.mechanism", "PLAIN");
        assert!(sasl_without_mechanism(&with, "p", &plain_build()).is_none());
    }

    #[test]
    fn kerberos_keys_are_left_to_librdkafka() {
        let settings = KafkaSettings::new().with("sasl.kerberos.service.name", "kafka");
        assert!(missing_features(&settings, "p", &plain_build()).is_empty());
        let reason = "Configuration property \"sasl.kerberos.keytab\" not supported in this \
                      build: libsasl2 not available at build time";
        assert!(fix_for_build_reason(reason).unwrap().contains("gssapi"));
    }

    #[test]
    fn gssapi_and_oidc_say_how_to_get_them() {
        let settings = KafkaSettings::new()
            .with("sasl.mechanisms", "GSSAPI")
            .with("sasl.oauthbearer.method", "oidc");
        let violations = missing_features(&settings, "k", &plain_build());
        assert_eq!(violations.len(), 2);
        assert_eq!(violations[0].path, "k.sasl.mechanisms");
        assert!(violations[0].message.contains("features = [\"gssapi\"]"));
        assert!(
            violations[1]
                .message
                .contains("features = [\"curl-static\"]")
        );
    }

    #[test]
    fn librdkafkas_build_reasons_get_the_fix() {
        let curl = "Configuration property \"sasl.oauthbearer.client.secret\" not supported in \
                    this build: OAuth/OIDC depends on libcurl and OpenSSL which were not \
                    available at build time";
        assert!(fix_for_build_reason(curl).unwrap().contains("curl-static"));
        let ssl = "Unsupported value \"SASL_SSL\" for configuration property \
                   \"security.protocol\": OpenSSL not available at build time";
        assert!(fix_for_build_reason(ssl).unwrap().contains("ssl-vendored"));
        let zstd = "Unsupported value \"zstd\" for configuration property \
                    \"compression.codec\": libzstd not available at build time";
        assert!(fix_for_build_reason(zstd).unwrap().contains("`zstd`"));
        assert_eq!(fix_for_build_reason("Invalid value for acks"), None);
    }

    #[test]
    fn secret_values_are_not_shown() {
        let settings = KafkaSettings::new().with("ssl.key.password", "hunter2");
        let violations = missing_features(&settings, "k", &plain_build());
        assert_eq!(violations.len(), 1);
        assert!(!violations[0].message.contains("hunter2"));
        assert!(violations[0].message.contains(REDACTED));
    }

    /// The build-time check, in every build: librdkafka has TLS/SASL and zstd exactly when
    /// the cargo features say so. CI runs it with the default features (OpenSSL and zstd
    /// must be linked) and with `--no-default-features` (they must not be, and the settings
    /// that need them must be refused naming the cargo feature).
    #[test]
    fn librdkafka_has_tls_sasl_and_zstd_exactly_when_the_features_say() {
        let tls = cfg!(feature = "ssl");
        for feature in ["ssl", "sasl_scram", "sasl_oauthbearer"] {
            assert_eq!(has_feature(feature), tls, "`{feature}` in {:?}", features());
        }
        assert_eq!(
            has_feature("zstd"),
            cfg!(feature = "zstd"),
            "{:?}",
            features()
        );
        assert!(
            has_feature("sasl_plain") && has_feature("gzip"),
            "{:?}",
            features()
        );
        let settings = KafkaSettings::new()
            .with("security.protocol", "SASL_SSL")
            .with("sasl.mechanisms", "SCRAM-SHA-256")
            .with("compression.codec", "zstd");
        let violations: Vec<String> = settings
            .validate("app.kafka")
            .iter()
            .map(|v| v.to_string())
            .collect();
        let named = |path: &str, fix: &str| {
            violations
                .iter()
                .any(|v| v.starts_with(path) && v.contains(fix))
        };
        assert_eq!(
            named("app.kafka.security.protocol", "`ssl-vendored`"),
            !tls,
            "{violations:#?}"
        );
        assert_eq!(
            named("app.kafka.sasl.mechanisms", "`ssl-vendored`"),
            !tls,
            "{violations:#?}"
        );
        assert_eq!(
            named("app.kafka.compression.codec", "cargo feature `zstd`"),
            !cfg!(feature = "zstd"),
            "{violations:#?}"
        );
        if tls && cfg!(feature = "zstd") {
            assert!(violations.is_empty(), "{violations:#?}");
        }
    }
}
