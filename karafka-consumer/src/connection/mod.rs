//! Connections: one librdkafka client per subscription group, its rebalance callbacks, and
//! the listener thread that polls it.

pub(crate) mod client;
pub(crate) mod listener;
pub(crate) mod manager;
pub(crate) mod partitioned;
pub(crate) mod prefetch;
