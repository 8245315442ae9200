//! # karafka-benches
//!
//! Benchmarks of karafka-rs, always side by side with the raw rdkafka baseline measured in
//! the same run, on the same broker, over the same data (see the project's
//! `BENCHMARKING.md`). Not published.
//!
//! - `cargo bench -p karafka-benches --bench producer`: producer throughput
//!   (`produce_many_async`, 1M × 100 B) and `produce_sync` latency against raw
//!   `BaseProducer`, alternating runs, printed as a table with ratios.
//! - `cargo bench -p karafka-benches --bench producer_overhead`: criterion micro-benchmarks of
//!   the producer's per-message work before librdkafka.
//! - `cargo bench -p karafka-benches --bench core_overhead`: criterion micro-benchmarks of
//!   header conversion and event emission.
//!
//! This library holds what the scenario benchmarks share: summaries and CPU time.

use std::time::Duration;

/// min / median / max of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Smallest sample.
    pub min: f64,
    /// Median sample.
    pub median: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples` (at least one).
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Summary {
            min: sorted.first().copied().unwrap_or(f64::NAN),
            median,
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// CPU time (user + system) this process used so far, from `/proc/self/stat`.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Clock ticks: 100 per second on Linux (sysconf(_SC_CLK_TCK) on every mainstream kernel).
    Some(Duration::from_millis((utime + stime) * 10))
}

/// One markdown row comparing raw and karafka-rs samples: min / median / max of each, then
/// the ratio of the medians (karafka-rs / raw), each value written with `fmt`.
pub fn ratio_row(name: &str, raw: &[f64], fw: &[f64], fmt: &dyn Fn(f64) -> String) -> String {
    let (r, f) = (Summary::of(raw), Summary::of(fw));
    format!(
        "| {name} | {} / {} / {} | {} / {} / {} | {:.3} |",
        fmt(r.min),
        fmt(r.median),
        fmt(r.max),
        fmt(f.min),
        fmt(f.median),
        fmt(f.max),
        f.median / r.median
    )
}

/// CPU time of every live thread of this process, by thread id, with the thread's name, from
/// `/proc/self/task/*/schedstat` (nanosecond precision, unlike the 10 ms ticks of
/// [`process_cpu`]). Sum the differences of two readings over the ids in both for the CPU of
/// threads that lived through a run.
pub fn threads_cpu() -> std::collections::HashMap<u64, (String, Duration)> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(ns) = ns {
            out.insert(tid, (name.trim().to_owned(), Duration::from_nanos(ns)));
        }
    }
    out
}

/// The CPU each thread spent between two [`threads_cpu`] readings, summed by thread name with
/// digits and `#…` suffixes dropped (`rdk:broker1` → `rdk:broker`), largest first; threads that
/// started after `before` count from zero.
pub fn threads_cpu_delta(
    before: &std::collections::HashMap<u64, (String, Duration)>,
    after: &std::collections::HashMap<u64, (String, Duration)>,
) -> Vec<(String, Duration)> {
    let mut by_name: std::collections::BTreeMap<String, Duration> = Default::default();
    for (tid, (name, t)) in after {
        let start = before.get(tid).map_or(Duration::ZERO, |(_, b)| *b);
        let name: String = name
            .split('#')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        *by_name.entry(name).or_default() += t.saturating_sub(start);
    }
    let mut out: Vec<_> = by_name.into_iter().collect();
    out.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    out
}

/// This process's resident set size now, from `/proc/self/status` (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `key` from the environment as a number, or `default`.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs this bench binary again as a child process with `envs`, and returns what follows
/// `"{tag} "` on the line of its output that starts so (panics, naming `what`, if it fails or
/// prints none). Measurements of a process's own memory run in children, so nothing of the
/// parent's producer or earlier runs counts.
pub fn child_result(envs: &[(&str, &str)], tag: &str, what: &str) -> String {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{what}: {output:?}");
    let prefix = format!("{tag} ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{what} printed no `{tag}` line: {stdout}"))
        .to_owned()
}

/// Formats a rate in msg/s with thousands separators.
pub fn rate(per_second: f64) -> String {
    let n = per_second.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_quantiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
        let d: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&d, 0.99), Duration::from_micros(99));
        assert_eq!(rate(1234567.4), "1,234,567");
        assert!(process_cpu().is_some());
    }
}
