//! # karafka-producer
//!
//! The WaterDrop-style Kafka producer of karafka-rs, for services that only produce and for
//! the consumer framework (dead-letter queues, the producer a consumer reaches from its
//! context).
//!
//! ## A short tour
//!
//! - [`Producer`]: a cheap `Clone + Send + Sync` handle over **one** librdkafka client shared
//!   by every topic and thread. Built with [`Producer::builder`], which validates everything
//!   (librdkafka keys included) and reports every problem at once. The client is created on
//!   first use.
//! - Dispatch: `produce_sync` / `produce_async` (a [`DeliveryHandle`] to `.await` or wait on),
//!   `produce_many_sync` / `produce_many_async` (a [`BatchDelivery`]), and a buffer
//!   (`buffer`, `buffer_many`, `flush_sync`, `flush_async`).
//! - [`Message`]: topic, payload ([`bytes::Bytes`]; `None` is a tombstone), key, partition,
//!   partition key, timestamp, headers (several values per key) and a [`Label`] returned on
//!   the [`DeliveryReport`].
//! - Errors own the message that was not sent ([`Error::into_message`]): invalid messages,
//!   a closed producer, a queue that stayed full, delivery failures.
//! - [`Variant`]s: other topic settings (`acks`, compression, timeouts, partitioner) on the
//!   same client and TCP connections; see [`variant`] for what librdkafka allows.
//! - Transactions: [`Producer::transaction`] / [`Producer::transaction_async`] commit on
//!   `Ok` and abort on `Err` or panic; [`Transaction::mark_as_consumed`] commits consumer
//!   offsets inside the transaction.
//! - Instrumentation through the [`Monitor`](karafka_core::instrumentation::Monitor):
//!   `producer.connected/closing/closed`, `message(s).produced_sync/async`,
//!   `message.acknowledged`, `message(s).buffered`, `buffer.flushed_sync/async`,
//!   `transaction.*`, `statistics.emitted` (with `statistics.interval.ms`), and
//!   `error.occurred` with a typed kind on every failure path.
//! - [`client`]: the seam to the Kafka client; `karafka-testing` provides an in-memory one.
//!
//! ```no_run
//! use karafka_producer::{Message, Producer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::builder()
//!     .kafka("bootstrap.servers", "127.0.0.1:9092")
//!     .build()?;
//! let report = producer
//!     .produce_async(Message::new("orders", r#"{"id":1}"#).key("customer-7"))?
//!     .await?;
//! println!("{}/{}@{}", report.topic, report.partition, report.offset);
//! producer.close()?;
//! # Ok(()) }
//! ```

mod batches;
pub mod client;
mod config;
mod delivery;
mod error;
mod message;
mod middleware;
mod producer;
mod transaction;
pub mod variant;

pub use client::ConsumerGroupMetadata;
pub use config::{
    DEFAULT_MAX_PAYLOAD_SIZE, DEFAULT_MAX_WAIT_TIMEOUT, DEFAULT_MESSAGE_TIMEOUT_MS,
    DEFAULT_TRANSACTION_TIMEOUT_MS, ProducerBuilder, ProducerConfig,
};
pub use delivery::{BatchDelivery, Delivery, DeliveryHandle, DeliveryReport, Outcome};
pub use error::{Error, Result};
pub use karafka_core::{Headers, Label};
pub use message::Message;
pub use middleware::Middleware;
pub use producer::{Producer, Status};
pub use transaction::{Transaction, TransactionError};
pub use variant::{Variant, VariantConfig};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn handles_are_send_sync_clone() {
        assert_send_sync::<crate::Producer>();
        assert_send_sync::<crate::Variant>();
        assert_send_sync::<crate::Transaction>();
    }
}
