//! Processing features (mirrors `karafka-consumer`'s `processing`).

pub mod cleaner;
pub mod long_running_jobs;
pub mod periodic_jobs;
pub mod virtual_partitions;
