//! Unique topic and group names, so tests never share state on a broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `prefix` followed by the process id, a time stamp and a per-process counter: unique across
/// tests, test binaries and runs against the same long-lived broker. Characters Kafka does not
/// allow in names are replaced by `-`.
///
/// ```
/// let a = karafka_testing::unique_name("orders");
/// let b = karafka_testing::unique_name("orders");
/// assert_ne!(a, b);
/// assert!(a.starts_with("orders-"));
/// assert!(karafka_core::contract::check_name(&a).is_ok());
/// ```
pub fn unique_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(150)
        .collect();
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{clean}-{:x}-{micros:x}-{n}", std::process::id())
}

/// A unique topic name (see [`unique_name`]).
pub fn unique_topic(prefix: &str) -> String {
    unique_name(&format!("t-{prefix}"))
}

/// A unique consumer group name (see [`unique_name`]).
pub fn unique_group(prefix: &str) -> String {
    unique_name(&format!("g-{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let names: std::collections::HashSet<_> =
            (0..1000).map(|_| unique_topic("a b/c")).collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            karafka_core::contract::check_name(n).unwrap();
            assert!(n.starts_with("t-a-b-c-"), "{n}");
        }
    }
}
