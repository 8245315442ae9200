//! # karafka-benches
//!
//! Benchmarks of karafka-rs, always side by side with the raw rdkafka baseline measured in
//! the same run, on the same broker, over the same data (see `BENCHMARKING.md` of the
//! project's shared notes). Not published.
//!
//! - `cargo bench -p karafka-benches --bench core_overhead`: criterion micro-benchmarks of
//!   per-message work done before librdkafka (header conversion, event emission).
