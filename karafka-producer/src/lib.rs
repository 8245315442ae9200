//! # karafka-producer
//!
//! The WaterDrop-style Kafka producer of karafka-rs: one shared librdkafka client per
//! `Producer` handle, synchronous and asynchronous dispatch, batches, a buffer, per-topic
//! variants and transactions.
//!
//! **Status:** under construction. This crate exports nothing usable yet; the producer API
//! lands in the next release of the workspace. Until then use rdkafka directly.
