//! Counting under faults: what app processes recorded as processed, checked against what was
//! produced and what the group committed, while a test injects faults.
//!
//! Member processes append one line per processed message, `<run> <partition> <offset> <unix
//! ms>` ([`parse_record`]), to
//! their own file in a directory, with one write before `consume` returns (so a recorded
//! message survives `kill -9`, and a message the framework marked was recorded first). The
//! test drives a [`ChaosRun`] over that directory: [`tick`](ChaosRun::tick) reads the new
//! lines, tracks the longest time without progress, and compares the group's committed offsets
//! with the records — an offset committed past a message nobody recorded is a commit ahead of
//! durable processing. [`ChaosRun::report`] sums it up as a [`ChaosReport`], one row of the
//! table [`ChaosReport::table`] prints.
//!
//! ```
//! use std::collections::BTreeMap;
//! use karafka_testing::chaos::Ledger;
//!
//! let dir = std::env::temp_dir().join(karafka_testing::unique_name("ledger-doc"));
//! std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("a-0.log"), "0 0 0 1\n0 0 1 1\n0 1 0 1\n").unwrap();
//! // A torn line (its offset cut) and a line glued to one are not records.
//! std::fs::write(dir.join("b-0.log"), "0 0 1 2\n0 0 2 2\n0 0 3\n0 0 40 0 5 3\n").unwrap();
//! let mut ledger = Ledger::new(&dir);
//! ledger.refresh().unwrap();
//! assert_eq!((ledger.records(), ledger.unique()), (5, 4));
//! // Partition 0 is processed up to offset 3 (exclusive), partition 1 up to 1.
//! assert_eq!(ledger.processed_prefix(0), 3);
//! assert_eq!(ledger.processed_prefix(1), 1);
//! let produced = BTreeMap::from([(0, 4), (1, 1)]);
//! assert_eq!(ledger.missing(&produced), 1); // 0@3
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::CommittedOffsets;

/// The partition and offset of a record line, `<run> <partition> <offset> <unix ms>`:
/// exactly four numbers, so that a line a killed process left unfinished (the next run's
/// first line glued to it, or alone after the newline a member writes when it opens its
/// file) is not read as a record: cut inside its offset, it has three fields or, glued, seven.
pub fn parse_record(line: &str) -> Option<(i32, i64)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [run, partition, offset, at] = fields.as_slice() else {
        return None;
    };
    run.parse::<u64>().ok()?;
    at.parse::<u64>().ok()?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// What member processes recorded, read incrementally from the files in a directory.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    /// Per file: bytes read so far, and an unfinished last line.
    files: HashMap<PathBuf, (u64, String)>,
    records: usize,
    /// Per partition: which offsets were recorded, and the first offset not recorded.
    partitions: BTreeMap<i32, Processed>,
    unique: usize,
    exempt: usize,
}

#[derive(Debug, Default)]
struct Processed {
    seen: Vec<bool>,
    prefix: i64,
}

impl Ledger {
    /// Reads the `*.log` files of `dir` (created by the members; missing is empty).
    pub fn new(dir: &Path) -> Self {
        Ledger {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            records: 0,
            partitions: BTreeMap::new(),
            unique: 0,
            exempt: 0,
        }
    }

    /// Reads what was appended since the last call; returns how many records it read.
    pub fn refresh(&mut self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        let mut read = 0;
        for path in paths {
            let (offset, partial) = self.files.entry(path.clone()).or_default();
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(*offset))?;
            let mut fresh = String::new();
            let n = file.read_to_string(&mut fresh)?;
            *offset += n as u64;
            partial.push_str(&fresh);
            let Some(end) = partial.rfind('\n') else {
                continue;
            };
            let complete: String = partial.drain(..=end).collect();
            for (p, o) in complete.lines().filter_map(parse_record) {
                read += 1;
                self.record(p, o);
            }
        }
        Ok(read)
    }

    fn record(&mut self, partition: i32, offset: i64) {
        self.records += 1;
        let Ok(index) = usize::try_from(offset) else {
            return;
        };
        let processed = self.partitions.entry(partition).or_default();
        if processed.seen.len() <= index {
            processed.seen.resize(index + 1, false);
        }
        if !processed.seen[index] {
            processed.seen[index] = true;
            self.unique += 1;
            while processed
                .seen
                .get(processed.prefix as usize)
                .copied()
                .unwrap_or(false)
            {
                processed.prefix += 1;
            }
        }
    }

    /// Counts `partition`'s `offset` as handled without a record: a message that is meant
    /// to be dead-lettered (the test checks the dead-letter topic for it instead). It moves
    /// the processed prefix like a record, but is neither processed nor missing.
    pub fn exempt(&mut self, partition: i32, offset: i64) {
        let records = self.records;
        let unique = self.unique;
        self.record(partition, offset);
        self.records = records;
        self.unique = unique;
        self.exempt += 1;
    }

    /// How many messages were [`exempt`](Self::exempt)ed.
    pub fn exempted(&self) -> usize {
        self.exempt
    }

    /// Records read, duplicates included.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Distinct messages (partition, offset) recorded.
    pub fn unique(&self) -> usize {
        self.unique
    }

    /// Records beyond the first of each message.
    pub fn duplicates(&self) -> usize {
        self.records - self.unique
    }

    /// The first offset of `partition` not recorded (every offset below it was).
    pub fn processed_prefix(&self, partition: i32) -> i64 {
        self.partitions.get(&partition).map_or(0, |p| p.prefix)
    }

    /// Whether `partition`'s `offset` was recorded.
    pub fn contains(&self, partition: i32, offset: i64) -> bool {
        usize::try_from(offset).is_ok_and(|i| {
            self.partitions
                .get(&partition)
                .is_some_and(|p| p.seen.get(i).copied().unwrap_or(false))
        })
    }

    /// Of the messages `produced` says exist (per partition, offsets `0..end`), how many
    /// were not recorded.
    pub fn missing(&self, produced: &BTreeMap<i32, i64>) -> usize {
        produced
            .iter()
            .map(|(&p, &end)| (0..end).filter(|&o| !self.contains(p, o)).count())
            .sum()
    }
}

/// One scenario's figures: a row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosReport {
    /// What was done (e.g. `kill -9 x5, 2 members`).
    pub scenario: String,
    /// `mock` or `tansu` (or another broker kind).
    pub broker: String,
    /// Messages the producer had delivered.
    pub produced: usize,
    /// Distinct messages recorded as processed.
    pub processed: usize,
    /// Produced but never processed (must be 0).
    pub lost: usize,
    /// Records beyond the first of each message.
    pub duplicates: usize,
    /// The most messages a committed offset was ever ahead of durable processing, summed
    /// over partitions at one check (must be 0).
    pub committed_ahead: u64,
    /// How many times the committed offsets were compared with the records.
    pub commit_checks: usize,
    /// The longest time without a new message processed, from the first to the last.
    pub longest_stall: Duration,
    /// From the end of the last fault to the last message processed.
    pub drain: Duration,
}

impl ChaosReport {
    /// The table's header (Markdown).
    pub fn header() -> String {
        "| scenario | broker | produced | processed | lost | duplicates | committed ahead (checks) | longest stall | drain |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
            .into()
    }

    /// The reports as a Markdown table.
    pub fn table(reports: &[ChaosReport]) -> String {
        let mut out = Self::header();
        for r in reports {
            out.push('\n');
            out.push_str(&r.to_string());
        }
        out
    }

    /// Nothing lost and nothing committed ahead of processing; the problems otherwise.
    pub fn sound(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!("{} messages lost", self.lost));
        }
        if self.committed_ahead > 0 {
            problems.push(format!(
                "a committed offset ran {} messages ahead of durable processing",
                self.committed_ahead
            ));
        }
        if self.commit_checks == 0 {
            problems.push("the committed offsets were never checked".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", self.scenario, problems.join("; ")))
        }
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {:.1} s | {:.1} s |",
            self.scenario,
            self.broker,
            self.produced,
            self.processed,
            self.lost,
            self.duplicates,
            self.committed_ahead,
            self.commit_checks,
            self.longest_stall.as_secs_f64(),
            self.drain.as_secs_f64()
        )
    }
}

/// A scenario in progress: the records, the committed offsets, progress over time.
pub struct ChaosRun {
    ledger: Ledger,
    offsets: CommittedOffsets,
    topic: String,
    partitions: i32,
    /// Per partition, how many messages were produced (offsets `0..end`).
    produced: BTreeMap<i32, i64>,
    /// How many messages the scenario will produce in all.
    expected: usize,
    /// Messages meant to be dead-lettered.
    dead_letters: std::collections::BTreeSet<(i32, i64)>,
    last_progress: Option<Instant>,
    last_unique: usize,
    longest_stall: Duration,
    committed_ahead: u64,
    commit_checks: usize,
    last_check: Option<Instant>,
    check_every: Duration,
    fault_ended: Option<Instant>,
    drained_at: Option<Instant>,
}

impl fmt::Debug for ChaosRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosRun")
            .field("topic", &self.topic)
            .field("unique", &self.ledger.unique())
            .field("produced", &self.produced_total())
            .finish_non_exhaustive()
    }
}

impl ChaosRun {
    /// Watches the records in `dir` for `topic`'s `partitions`, comparing them with what
    /// `offsets` (the group's) says was committed at most every 500 ms.
    pub fn new(dir: &Path, offsets: CommittedOffsets, topic: &str, partitions: i32) -> Self {
        ChaosRun {
            ledger: Ledger::new(dir),
            offsets,
            topic: topic.into(),
            partitions,
            produced: BTreeMap::new(),
            expected: 0,
            dead_letters: std::collections::BTreeSet::new(),
            last_progress: None,
            last_unique: 0,
            longest_stall: Duration::ZERO,
            committed_ahead: 0,
            commit_checks: 0,
            last_check: None,
            check_every: Duration::from_millis(500),
            fault_ended: None,
            drained_at: None,
        }
    }

    /// Counts a delivered message (its partition and offset, from the delivery report).
    pub fn produced(&mut self, partition: i32, offset: i64) {
        let end = self.produced.entry(partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }

    /// Says how many messages the scenario produces in all: [`all_processed`](Self::all_processed)
    /// (and the drain time) waits for that many.
    pub fn expect(&mut self, total: usize) {
        self.expected = total;
    }

    /// A delivered message meant to be dead-lettered, not processed (see
    /// [`Ledger::exempt`]).
    pub fn dead_letter_expected(&mut self, partition: i32, offset: i64) {
        self.produced(partition, offset);
        self.ledger.exempt(partition, offset);
        self.dead_letters.insert((partition, offset));
    }

    /// The messages meant to be dead-lettered: (partition, offset).
    pub fn expected_dead_letters(&self) -> &std::collections::BTreeSet<(i32, i64)> {
        &self.dead_letters
    }

    /// The end (last offset + 1) of what was delivered to `partition` so far.
    pub fn produced_end(&self, partition: i32) -> i64 {
        self.produced.get(&partition).copied().unwrap_or(0)
    }

    /// Messages delivered so far.
    pub fn produced_total(&self) -> usize {
        self.produced.values().map(|&e| e as usize).sum()
    }

    /// The records read so far.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Marks the end of a fault: the drain time counts from the last such mark.
    pub fn fault_ended(&mut self) {
        self.fault_ended = Some(Instant::now());
        self.drained_at = None;
    }

    /// Reads new records, tracks progress and, when due, checks the committed offsets.
    pub fn tick(&mut self) -> std::io::Result<()> {
        let due = self
            .last_check
            .is_none_or(|at| at.elapsed() >= self.check_every);
        // The commits are read before the records: a message whose offset was committed
        // was recorded before the commit, so the records read after include it.
        let committed = due.then(|| self.offsets.try_of(&self.topic, self.partitions));
        self.ledger.refresh()?;
        let now = Instant::now();
        let unique = self.ledger.unique();
        if unique > self.last_unique {
            if let Some(last) = self.last_progress {
                self.longest_stall = self.longest_stall.max(now - last);
            }
            self.last_progress = Some(now);
            self.last_unique = unique;
        }
        if self.drained_at.is_none() && self.all_processed() {
            self.drained_at = Some(now);
        }
        if let Some(committed) = committed {
            self.last_check = Some(now);
            // A broker that does not answer (a fault) skips the check.
            if let Ok(committed) = committed {
                self.commit_checks += 1;
                let ahead: u64 = committed
                    .iter()
                    .map(|(&p, &c)| (c - self.ledger.processed_prefix(p)).max(0) as u64)
                    .sum();
                self.committed_ahead = self.committed_ahead.max(ahead);
            }
        }
        Ok(())
    }

    /// Whether every produced message was recorded, something was produced, and at least
    /// as many as [`expect`](Self::expect)ed.
    pub fn all_processed(&self) -> bool {
        !self.produced.is_empty()
            && self.produced_total() >= self.expected
            && self
                .produced
                .iter()
                .all(|(&p, &end)| self.ledger.processed_prefix(p) >= end)
    }

    /// Ticks every 50 ms until `done(self)` or `timeout`; `Err` on the timeout.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&ChaosRun) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.tick()
                .map_err(|e| format!("cannot read the records: {e}"))?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not done within {timeout:?}: {} of {} messages processed",
                    self.ledger.unique(),
                    self.produced_total()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many messages `file` (one member run's records) holds at or above the group's
    /// committed offset of their partition, now: what that member processed but had not
    /// committed (a partition without a commit counts from 0), which the group will deliver
    /// again once the member is gone. `Err` when the committed offsets cannot be read.
    pub fn uncommitted_in(&self, file: &Path) -> Result<usize, String> {
        let committed = self.offsets.try_of(&self.topic, self.partitions)?;
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // Complete lines only (a killed process may leave its last one unfinished).
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut seen = std::collections::HashSet::new();
        Ok(complete
            .lines()
            .filter_map(parse_record)
            .filter(|(p, o)| *o >= committed.get(p).copied().unwrap_or(0))
            .filter(|m| seen.insert(*m))
            .count())
    }

    /// The figures so far; a last commit check is made first.
    pub fn report(&mut self, scenario: &str, broker: &str) -> ChaosReport {
        self.last_check = None;
        let _ = self.tick();
        let drain = match (self.fault_ended, self.drained_at) {
            (Some(from), Some(to)) => to.saturating_duration_since(from),
            _ => Duration::ZERO,
        };
        ChaosReport {
            scenario: scenario.into(),
            broker: broker.into(),
            produced: self.produced_total(),
            processed: self.ledger.unique(),
            lost: self.ledger.missing(&self.produced),
            duplicates: self.ledger.duplicates(),
            committed_ahead: self.committed_ahead,
            commit_checks: self.commit_checks,
            longest_stall: self.longest_stall,
            drain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_reads_appended_lines_once_and_keeps_unfinished_ones() {
        let dir = std::env::temp_dir().join(crate::unique_name("ledger"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m-0.log");
        std::fs::write(&file, "0 0 0 9\n0 0 1 9\n0 0 ").unwrap();
        let mut ledger = Ledger::new(&dir);
        assert_eq!(ledger.refresh().unwrap(), 2);
        assert_eq!(ledger.refresh().unwrap(), 0);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"2 9\n0 0 1 9\n0 3 1\n0 3 4 5 0 3 9 9\n")
            .unwrap();
        assert_eq!(ledger.refresh().unwrap(), 2);
        assert_eq!(ledger.records(), 4);
        assert_eq!(ledger.unique(), 3);
        assert_eq!(ledger.duplicates(), 1);
        assert_eq!(ledger.processed_prefix(0), 3);
        assert!(ledger.contains(0, 2) && !ledger.contains(0, 3) && !ledger.contains(1, 0));
        assert_eq!(ledger.missing(&BTreeMap::from([(0, 5), (1, 2)])), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_exempt_offset_moves_the_prefix_but_is_neither_processed_nor_missing() {
        let mut ledger = Ledger::new(Path::new("/nonexistent"));
        ledger.record(0, 0);
        ledger.exempt(0, 1);
        ledger.record(0, 2);
        assert_eq!(ledger.processed_prefix(0), 3);
        assert_eq!(
            (ledger.records(), ledger.unique(), ledger.exempted()),
            (2, 2, 1)
        );
        assert_eq!(ledger.missing(&BTreeMap::from([(0, 3)])), 0);
    }

    #[test]
    fn a_gap_holds_the_prefix_until_it_is_filled() {
        let mut ledger = Ledger::new(Path::new("/nonexistent"));
        assert_eq!(ledger.refresh().unwrap(), 0);
        ledger.record(3, 0);
        ledger.record(3, 2);
        assert_eq!(ledger.processed_prefix(3), 1);
        ledger.record(3, 1);
        assert_eq!(ledger.processed_prefix(3), 3);
    }

    #[test]
    fn a_report_is_sound_only_without_loss_or_commits_ahead_and_with_checks() {
        let good = ChaosReport {
            scenario: "s".into(),
            broker: "mock".into(),
            produced: 10,
            processed: 10,
            lost: 0,
            duplicates: 2,
            committed_ahead: 0,
            commit_checks: 3,
            longest_stall: Duration::from_millis(1500),
            drain: Duration::from_secs(2),
        };
        assert!(good.sound().is_ok());
        assert_eq!(
            good.to_string(),
            "| s | mock | 10 | 10 | 0 | 2 | 0 (3) | 1.5 s | 2.0 s |"
        );
        let lost = ChaosReport {
            lost: 1,
            ..good.clone()
        };
        assert!(lost.sound().unwrap_err().contains("1 messages lost"));
        let ahead = ChaosReport {
            committed_ahead: 7,
            ..good.clone()
        };
        assert!(ahead.sound().unwrap_err().contains("7 messages ahead"));
        let unchecked = ChaosReport {
            commit_checks: 0,
            ..good
        };
        assert!(unchecked.sound().unwrap_err().contains("never checked"));
        assert!(ChaosReport::table(&[]).starts_with("| scenario |"));
    }
}
