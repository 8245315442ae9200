//! One module per feature: its builder method (an extension trait) and contract.

pub mod multiplexing;
pub mod virtual_partitions;
