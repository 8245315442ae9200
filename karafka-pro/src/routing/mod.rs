//! Routing features: the builder methods of the Pro features.

pub mod features;
