//! One module per feature: its builder method (an extension trait) and contract.

pub mod long_running_job;
pub mod multiplexing;
pub mod periodic_job;
#[cfg(target_os = "linux")]
pub mod swarm;
pub mod virtual_partitions;
