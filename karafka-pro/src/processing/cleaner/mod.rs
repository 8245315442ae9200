//! The cleaner API: free a message's payload as soon as it is processed, so a batch of large
//! messages does not keep all of them in memory until the batch ends (nor the partition's
//! last batch, which the engine keeps for the `revoked` hook).
//!
//! Two extension traits, in scope with `use karafka_pro::{CleanerMessage, CleanerMessages}`:
//!
//! - [`CleanerMessages::each_clean`] on `ctx.messages()`: an iteration that cleans each
//!   message once the loop body that got it is done (Karafka's `each(clean: true)`). A body
//!   that leaves early (`?`, `return`, `break`) leaves its message uncleaned, so it can be
//!   retried or dead-lettered. Each [`CleaningMessage`] reads its payload in place
//!   (`payload_bytes`, no copy) or decodes it into a cache of its own, freed with it.
//! - [`CleanerMessage::clean`] on one message and [`CleanerMessages::clean`] on the whole
//!   batch, when processing is done with them.
//!
//! What is freed: librdkafka's message (its payload, key and headers, and with it its share
//! of the fetch response it came in: the response's memory goes once every message of it
//! was cleaned or released; a large message usually has a response of its own). The key,
//! headers, timestamp and offset stay readable (they are copied out first); reading the
//! payload after cleaning is an error ([`PayloadCleaned`]; `Message::payload` returns a
//! `DeserializationError` whose `is_cleaned()` is true) — never a panic, never a `None` that
//! reads like a tombstone. `Message::is_cleaned` tells.
//!
//! What stays: the caches of a `Message` reached through `ctx.messages()` (its decoded
//! payload, its `raw_payload` copy) live as long as the batch, since references to them may
//! still exist; use `each_clean` to have those freed per message too. A payload read by a
//! virtual partitions partitioner (`MessageView::payload`) keeps its message's memory for the
//! batch's life. In the test harness payloads are copies in one buffer: cleaning there
//! behaves the same (errors after it) but frees nothing.
//!
//! Dead letters: a cleaned message is never dead-lettered from memory. If the message to
//! dispatch was cleaned, the dispatch fails with `consumer.dlq.dispatch.error` saying so and
//! the partition is fetched again from that message after a back-off, with that message's
//! payload kept (cleaning leaves it alone) until it was dead-lettered, so the next failure
//! sends its real bytes. With the cleaner, mark each message as it is processed, so the
//! message dispatched is the one that failed.
//!
//! ```no_run
//! use karafka_consumer::{App, ConsumeResult, Consumer, Context, payload::Raw};
//! use karafka_pro::CleanerMessages;
//!
//! struct Images;
//!
//! impl Consumer for Images {
//!     type Payload = Raw;
//!     async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
//!         let mut batch = ctx.messages().each_clean();
//!         while let Some(message) = batch.next() {
//!             let bytes = message.payload_bytes()?.unwrap_or_default();
//!             let _thumbnail_size = bytes.len() / 16; // ... process ...
//!             ctx.mark_as_consumed(&message);
//!         } // each message's payload is freed as the loop moves on
//!         Ok(())
//!     }
//! }
//!
//! let app = App::builder()
//!     .kafka("bootstrap.servers", "localhost:9092")
//!     .topic("images", |t| t.consumer(|| Images))
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use karafka_consumer::{Cleaning, CleaningMessage, PayloadCleaned};
use karafka_consumer::{Message, Messages};

/// Cleaning one message (`message.clean()`).
pub trait CleanerMessage {
    /// Frees the message's payload: librdkafka's message goes as soon as nothing reads it;
    /// the key, headers, timestamp and offset stay readable, the payload is an error from
    /// now on. Cleaning twice does nothing more.
    fn clean(&self);
}

impl<P> CleanerMessage for Message<P> {
    fn clean(&self) {
        self.clean_payload();
    }
}

/// Cleaning a batch (`ctx.messages().each_clean()`, `ctx.messages().clean()`).
pub trait CleanerMessages<P> {
    /// An iteration that cleans each message once the loop body that got it is done:
    /// `while let Some(message) = batch.next() { ... }` (see [`Cleaning`]).
    fn each_clean(&self) -> Cleaning<'_, P>;

    /// Cleans every message of the batch (as [`CleanerMessage::clean`] each).
    fn clean(&self);
}

impl<P> CleanerMessages<P> for Messages<P> {
    fn each_clean(&self) -> Cleaning<'_, P> {
        self.cleaning()
    }

    fn clean(&self) {
        self.clean_payloads();
    }
}
