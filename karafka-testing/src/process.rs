//! Examples as child processes, for tests of signals, exit codes and crashes.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{FixtureError, wait_until};

/// Builds `example` of workspace package `package` (debug profile, the crate's default
/// features) and returns the binary's path. For tests that run an app as a real process.
///
/// Uses the `cargo` that runs the tests (`CARGO`), and finds the binary next to the test's
/// own executable (`<target>/debug/deps/..` → `<target>/debug/examples/<example>`).
pub fn example_binary(package: &str, example: &str) -> Result<PathBuf, FixtureError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", package, "--example", example])
        .status()
        .map_err(|e| {
            FixtureError::Env(format!(
                "cannot run cargo to build example `{example}`: {e}"
            ))
        })?;
    if !status.success() {
        return Err(FixtureError::Env(format!(
            "building example `{example}` of `{package}` failed ({status})"
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| FixtureError::Env(format!("cannot find the test executable: {e}")))?;
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(example))
        .ok_or_else(|| {
            FixtureError::Env(format!("no profile directory above {}", exe.display()))
        })?;
    if binary.exists() {
        Ok(binary)
    } else {
        Err(FixtureError::Env(format!(
            "example `{example}` was built but {} is missing",
            binary.display()
        )))
    }
}

/// A small pseudo-random sequence (xorshift64*) for tests that pick random moments; print
/// its [`seed`](Self::seed) so a failing run can be repeated with [`Xorshift::new`].
#[derive(Debug, Clone)]
pub struct Xorshift {
    seed: u64,
    state: u64,
}

impl Xorshift {
    /// From `seed` (0 becomes 1: the sequence needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        let seed = seed.max(1);
        Xorshift { seed, state: seed }
    }

    /// Seeded from the clock.
    pub fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Xorshift::new(nanos | 1)
    }

    /// The seed it started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Runs `runs` processes one after the other, killing each with SIGKILL at a random moment:
/// run `r` is started with `spawn(r)` and killed once `progress()` (the work recorded so
/// far, by every run) grew by `min_new` plus a random amount below `spread`. Panics when a
/// run makes no such progress within `deadline`. Returns the new work each run recorded.
pub fn kill_at_random_moments(
    runs: u32,
    mut spawn: impl FnMut(u32) -> Child,
    progress: impl Fn() -> usize,
    min_new: usize,
    spread: usize,
    deadline: Duration,
    random: &mut Xorshift,
) -> Vec<usize> {
    let mut recorded = Vec::new();
    for run in 0..runs {
        let before = progress();
        let mut child = spawn(run);
        let target = before + min_new + random.below(spread as u64) as usize;
        let reached = wait_until(deadline, || progress() >= target);
        let _ = child.kill();
        let _ = child.wait();
        if reached.is_err() {
            panic!("run {run} made no progress in {deadline:?}");
        }
        let new = progress() - before;
        eprintln!("run {run}: killed after {new} new records");
        recorded.push(new);
    }
    recorded
}
