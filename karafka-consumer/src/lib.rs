//! # karafka-consumer
//!
//! The consumer framework of karafka-rs: routing (consumer groups, subscription groups,
//! topics), one listener per librdkafka client, a worker pool, offsets that are stored only
//! for processed work, retries with back-off, dead-letter queues and rebalance handling.
//!
//! **Status:** under construction. This crate exports nothing usable yet.
