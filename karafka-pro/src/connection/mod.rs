//! Connection features (mirrors `karafka-consumer`'s `connection`).

pub mod multiplexing;
