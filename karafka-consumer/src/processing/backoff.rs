//! Retry back-off: `pause_timeout`, doubling per attempt when exponential, capped at
//! `pause_max_timeout`.

use std::time::Duration;

/// How long to pause before retry number `retry` (1 = the first retry).
pub(crate) fn backoff(retry: u32, base: Duration, max: Duration, exponential: bool) -> Duration {
    if !exponential {
        return base.min(max);
    }
    let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(31));
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_then_caps() {
        let got: Vec<u64> = (1..=7)
            .map(|r| backoff(r, S, Duration::from_secs(30), true).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn constant_when_not_exponential_and_never_over_the_cap() {
        assert_eq!(backoff(5, S, Duration::from_secs(30), false), S);
        assert_eq!(
            backoff(1, Duration::from_secs(40), Duration::from_secs(30), false),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(u32::MAX, S, Duration::from_secs(30), true),
            Duration::from_secs(30)
        );
    }
}
