//! Contracts: validation that reports **all** problems at once.
//!
//! Every `build()` in karafka-rs collects [`Violation`]s into a [`Violations`] list and turns
//! them into one [`ConfigError`], so a user fixes their configuration in one pass instead of
//! one error per run.
//!
//! ```
//! use karafka_core::contract::Violations;
//!
//! let mut violations = Violations::new();
//! violations.check(false, "producer.max_payload_size", || "must be greater than 0".into());
//! violations.check_name("routes.topics[0].name", "orders events");
//! let error = violations.into_result().unwrap_err();
//! assert_eq!(error.violations().len(), 2);
//! assert!(error.to_string().contains("producer.max_payload_size: must be greater than 0"));
//! ```

use std::fmt;

/// One broken rule: where (`path`, dotted like `consumer_groups.orders.topics.events.name`)
/// and what is wrong, with how to fix it when that is not obvious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted location of the offending setting.
    pub path: String,
    /// What is wrong (lowercase, no trailing period).
    pub message: String,
}

impl Violation {
    /// A violation at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration that failed its contract, with every violation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    violations: Vec<Violation>,
}

impl ConfigError {
    /// An error holding `violations` (callers pass at least one).
    pub fn new(violations: Vec<Violation>) -> Self {
        Self { violations }
    }

    /// A single-violation error.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(vec![Violation::new(path, message)])
    }

    /// All violations, in the order they were found.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The violation at `path`, if any.
    pub fn at(&self, path: &str) -> Option<&Violation> {
        self.violations.iter().find(|v| v.path == path)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.violations.as_slice() {
            [] => f.write_str("invalid configuration"),
            [only] => write!(f, "invalid configuration: {only}"),
            all => {
                write!(f, "invalid configuration ({} problems):", all.len())?;
                for v in all {
                    write!(f, "\n  - {v}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Collects violations while a contract is checked.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    found: Vec<Violation>,
}

impl Violations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.found.push(Violation::new(path, message));
    }

    /// Records a violation at `path` unless `ok`; the message is built only when needed.
    pub fn check(&mut self, ok: bool, path: impl Into<String>, message: impl FnOnce() -> String) {
        if !ok {
            self.found.push(Violation::new(path, message()));
        }
    }

    /// Checks a Kafka topic or group name: 1 to 249 characters of `[A-Za-z0-9._-]`, and
    /// neither `.` nor `..` (the broker's rules).
    pub fn check_name(&mut self, path: impl Into<String>, name: &str) {
        if let Err(message) = check_name(name) {
            self.push(path, message);
        }
    }

    /// Adds violations found elsewhere (for example by
    /// [`KafkaSettings::validate`](crate::KafkaSettings::validate)).
    pub fn extend(&mut self, violations: impl IntoIterator<Item = Violation>) {
        self.found.extend(violations);
    }

    /// Adds every violation of a nested contract's error.
    pub fn absorb(&mut self, error: ConfigError) {
        self.found.extend(error.violations);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Number of violations found so far.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// `Ok(())` when nothing was found, otherwise all violations as one error.
    pub fn into_result(self) -> Result<(), ConfigError> {
        self.finish(())
    }

    /// `Ok(value)` when nothing was found, otherwise all violations as one error.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::new(self.found))
        }
    }
}

/// Checks a Kafka topic or consumer group name against the broker's rules; the error says
/// what is wrong and what is allowed.
///
/// ```
/// use karafka_core::contract::check_name;
/// assert!(check_name("orders.v2_events-1").is_ok());
/// assert!(check_name("orders events").unwrap_err().contains("[A-Za-z0-9._-]"));
/// ```
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "is {} characters long; Kafka allows at most 249",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is reserved by Kafka"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{name}` contains {bad:?}; use only letters, digits, `.`, `_` and `-` (^[A-Za-z0-9._-]+$)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_all_violations_in_order() {
        let mut v = Violations::new();
        v.check(true, "a", || {
            unreachable!("message built for a passing check")
        });
        v.check(false, "b", || "is wrong".into());
        v.push("c", "is missing");
        v.check_name("d", "bad name!");
        v.check_name("e", "good-name_1.x");
        let err = v.into_result().unwrap_err();
        let paths: Vec<_> = err.violations().iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["b", "c", "d"]);
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration (3 problems):"),
            "{text}"
        );
        assert!(text.contains("\n  - b: is wrong"), "{text}");
        assert!(text.contains("\n  - c: is missing"), "{text}");
        assert!(text.contains("d: `bad name!` contains ' '"), "{text}");
        assert_eq!(err.at("c").unwrap().message, "is missing");
    }

    #[test]
    fn single_violation_reads_in_one_line() {
        let err = ConfigError::single("producer.id", "must not be empty");
        assert_eq!(
            err.to_string(),
            "invalid configuration: producer.id: must not be empty"
        );
    }

    #[test]
    fn empty_list_is_ok_and_finish_returns_value() {
        assert_eq!(Violations::new().finish(7).unwrap(), 7);
    }

    #[test]
    fn absorbs_nested_errors() {
        let mut outer = Violations::new();
        outer.absorb(ConfigError::new(vec![
            Violation::new("x", "1"),
            Violation::new("y", "2"),
        ]));
        assert_eq!(outer.len(), 2);
    }

    #[test]
    fn name_rules() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"a".repeat(249)).is_ok());
        assert!(check_name(&"a".repeat(250)).unwrap_err().contains("249"));
        assert!(check_name("").is_err());
        assert!(check_name(".").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("topic/1").is_err());
        assert!(check_name("tópico").is_err());
    }
}
