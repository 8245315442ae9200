//! # karafka-pro
//!
//! The Pro features of karafka-rs, built on the extension points of `karafka-consumer`:
//! multiplexing (several connections per subscription group, scaled dynamically), virtual
//! partitions (parallel processing of one partition by key with safe offsets), the cleaner
//! (payload memory freed as soon as a message is processed), long-running jobs and swarm
//! mode (a supervisor with worker processes).
//!
//! **Status:** under construction. None of these features is implemented yet; enabling the
//! `pro` feature of `karafka` adds nothing today.
