//! One module per feature: its builder method (an extension trait) and contract.

pub mod virtual_partitions;
