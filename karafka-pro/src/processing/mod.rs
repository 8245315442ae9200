//! Processing features (mirrors `karafka-consumer`'s `processing`).

pub mod virtual_partitions;
