//! Waiting on conditions with a deadline, instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// A condition was not met before its deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("condition not met within {deadline:?}")]
pub struct WaitTimeout {
    /// The deadline that passed.
    pub deadline: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Checks `condition` until it holds or `deadline` passes, pausing 1 ms, then longer (up to
/// 50 ms) between checks. Returns as soon as the condition holds.
///
/// ```
/// use std::time::{Duration, Instant};
/// use karafka_testing::wait_until;
///
/// let started = Instant::now();
/// wait_until(Duration::from_secs(5), || started.elapsed() > Duration::from_millis(20)).unwrap();
/// assert!(wait_until(Duration::from_millis(30), || false).is_err());
/// ```
pub fn wait_until(
    deadline: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), WaitTimeout> {
    wait_for(deadline, || condition().then_some(()))
}

/// Calls `probe` until it returns `Some`, or `deadline` passes; returns the value.
pub fn wait_for<T>(
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, WaitTimeout> {
    let end = Instant::now() + deadline;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= end {
            return Err(WaitTimeout { deadline });
        }
        std::thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// The async form of [`wait_until`]: awaits `condition()` until it yields `true`, pausing
/// with `tokio::time::sleep` between checks (needs a tokio runtime with time enabled).
pub async fn wait_until_async<F, Fut>(
    deadline: Duration,
    mut condition: F,
) -> Result<(), WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    let mut pause = FIRST_PAUSE;
    loop {
        if condition().await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= end {
            return Err(WaitTimeout { deadline });
        }
        tokio::time::sleep(pause.min(end - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_condition_holds() {
        let started = Instant::now();
        let mut calls = 0;
        wait_until(Duration::from_secs(10), || {
            calls += 1;
            calls == 3
        })
        .unwrap();
        assert_eq!(calls, 3);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn times_out_near_the_deadline() {
        let started = Instant::now();
        let err = wait_until(Duration::from_millis(100), || false).unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.deadline, Duration::from_millis(100));
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn wait_for_returns_the_value() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(1), || {
            n += 1;
            (n > 2).then_some(n * 10)
        })
        .unwrap();
        assert_eq!(got, 30);
    }

    #[tokio::test]
    async fn async_form_waits_and_times_out() {
        let started = Instant::now();
        wait_until_async(Duration::from_secs(5), || async {
            started.elapsed() > Duration::from_millis(10)
        })
        .await
        .unwrap();
        assert!(
            wait_until_async(Duration::from_millis(20), || async { false })
                .await
                .is_err()
        );
    }
}
