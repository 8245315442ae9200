//! Processing: per-partition coordination, back-off, running jobs, and what happens after a
//! job (marking, retrying, dead-letter dispatch).

pub(crate) mod backoff;
pub(crate) mod coordinator;
pub(crate) mod executor;
pub(crate) mod group;
pub(crate) mod outcome;
pub(crate) mod pipeline;
pub(crate) mod strategy;
