//! Examples as child processes, for tests of signals, exit codes and crashes.

use std::path::PathBuf;
use std::process::Command;

use crate::FixtureError;

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
