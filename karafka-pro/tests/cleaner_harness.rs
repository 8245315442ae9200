//! The cleaner API through the consumer harness (no broker): what a cleaned message still
//! tells and what it refuses, the cleaning iteration's early exit, the `revoked` hook's last
//! batch, and dead letters that never send a cleaned payload.

use std::sync::{Arc, Mutex};

use karafka_consumer::harness::Harness;
use karafka_consumer::payload::Raw;
use karafka_consumer::routing::DeadLetterQueue;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};
use karafka_core::instrumentation::{ErrorKind, Event};
use karafka_pro::{CleanerMessage, CleanerMessages};
use karafka_producer::Message;

#[derive(Default)]
struct Seen {
    /// Payloads read through the cleaning iteration.
    payloads: Vec<String>,
    /// After the loop: per message, (cleaned, key, tombstone, payload() error text).
    after: Vec<(bool, Option<String>, bool, Option<String>)>,
    /// In `revoked`: per message, (cleaned, key, raw_payload is an error).
    revoked: Vec<(bool, Option<String>, bool)>,
}

struct EachClean {
    seen: Arc<Mutex<Seen>>,
    /// Fail (with `?`) at this offset inside the loop.
    fail_at: Option<i64>,
}

impl EachClean {
    async fn process(&self, ctx: &Context<Raw>) -> ConsumeResult {
        let mut batch = ctx.messages().each_clean();
        while let Some(message) = batch.next() {
            if Some(message.offset()) == self.fail_at {
                return Err(format!("failing at {}", message.offset()).into());
            }
            let text = message
                .payload_bytes()?
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "<tombstone>".into());
            // The handle's own copy agrees with the in-place bytes.
            let copy = message.raw_payload()?.cloned();
            assert_eq!(copy.is_none(), text == "<tombstone>");
            self.seen.lock().unwrap().payloads.push(text);
            assert!(ctx.mark_as_consumed(&message));
        }
        Ok(())
    }
}

impl Consumer for EachClean {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let result = self.process(ctx).await;
        let after = ctx
            .messages()
            .iter()
            .map(|m| {
                (
                    m.is_cleaned(),
                    m.key_str().map(str::to_owned),
                    m.is_tombstone(),
                    m.payload().err().map(|e| {
                        assert!(e.is_cleaned(), "{e}");
                        assert!(m.raw_payload().is_err());
                        e.to_string()
                    }),
                )
            })
            .collect();
        self.seen.lock().unwrap().after = after;
        result
    }

    async fn revoked(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.seen.lock().unwrap().revoked = ctx
            .messages()
            .iter()
            .map(|m| {
                (
                    m.is_cleaned(),
                    m.key_str().map(str::to_owned),
                    m.raw_payload().is_err(),
                )
            })
            .collect();
        Ok(())
    }
}

fn app(seen: &Arc<Mutex<Seen>>, fail_at: Option<i64>) -> App {
    let seen = seen.clone();
    App::builder()
        .kafka("bootstrap.servers", "127.0.0.1:9092")
        .topic("images", move |t| {
            let seen = seen.clone();
            t.consumer(move || EachClean {
                seen: seen.clone(),
                fail_at,
            })
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn each_clean_cleans_every_processed_message_and_keeps_what_is_not_the_payload() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = app(&seen, None);
    let harness = Harness::new(&app);
    let mut images = harness.consumer_for("images").unwrap();
    images.produce_message(Message::new("images", "a").key("k0"));
    images.produce_message(Message::tombstone("images", "k1"));
    images.produce_message(Message::new("images", "c").key("k2"));
    let outcomes = images.consume().await;
    assert_eq!(outcomes[0].error, None);
    assert_eq!(images.marked(0), Some(3));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.payloads, ["a", "<tombstone>", "c"]);
        let after: Vec<(bool, Option<&str>, bool)> = seen
            .after
            .iter()
            .map(|(c, k, t, _)| (*c, k.as_deref(), *t))
            .collect();
        assert_eq!(
            after,
            [
                (true, Some("k0"), false),
                (true, Some("k1"), true),
                (true, Some("k2"), false)
            ]
        );
        let error = seen.after[0].3.as_deref().unwrap();
        assert!(
            error.contains("images/0@0 was cleaned") && error.contains("can no longer be read"),
            "{error}"
        );
    }
    // The partition's last batch, kept for `revoked`, holds the cleaned messages.
    images.revoke(0).await;
    assert_eq!(
        seen.lock().unwrap().revoked,
        [
            (true, Some("k0".to_owned()), true),
            (true, Some("k1".to_owned()), true),
            (true, Some("k2".to_owned()), true)
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_loop_body_that_fails_leaves_its_message_and_the_rest_uncleaned() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = app(&seen, Some(2));
    let harness = Harness::new(&app);
    let mut images = harness.consumer_for("images").unwrap();
    for payload in ["a", "b", "c", "d"] {
        images.produce(payload);
    }
    let outcomes = images.consume().await;
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap()
            .contains("failing at 2")
    );
    let cleaned: Vec<bool> = seen.lock().unwrap().after.iter().map(|a| a.0).collect();
    assert_eq!(cleaned, [true, true, false, false]);
    // Marked up to the failure; the retry starts at the failed message, fetched again.
    assert_eq!(images.marked(0), Some(2));
}

/// Cleans the whole batch, then fails: every time.
struct CleanThenFail;

impl Consumer for CleanThenFail {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        ctx.messages().clean();
        // Cleaning twice, or one message again, changes nothing.
        if let Some(first) = ctx.messages().first() {
            first.clean();
        }
        Err("broken".into())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_cleaned_message_is_never_dead_lettered_from_memory() {
    let app = App::builder()
        .kafka("bootstrap.servers", "127.0.0.1:9092")
        .topic("images", move |t| {
            t.consumer(|| CleanThenFail)
                .dead_letter_queue(DeadLetterQueue::new("images-dlq").max_retries(0))
        })
        .build()
        .unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = errors.clone();
    app.monitor().subscribe_fn(move |event| {
        if let Event::ErrorOccurred(err) = event {
            if err.kind == ErrorKind::DlqDispatch {
                e.lock().unwrap().push(err.error.to_string());
            }
        }
    });
    let harness = Harness::new(&app);
    let mut images = harness.consumer_for("images").unwrap();
    images.produce("original bytes");
    images.consume().await;
    // Refused: nothing sent, the reason given, the partition waits to fetch it again.
    assert!(harness.produced("images-dlq").is_empty());
    let refused = errors.lock().unwrap().clone();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("cannot dead-letter it to images-dlq")
            && refused[0].contains("was cleaned"),
        "{refused:?}"
    );
    assert!(
        images
            .paused(0)
            .is_some_and(|p| p.retry && p.resume_from == 0)
    );
    // Fetched again: the consumer cleans again, but the payload waiting for its dead letter
    // is kept, and the real bytes go out.
    images.consume().await;
    let sent = harness.produced("images-dlq");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].message.payload.as_deref(),
        Some(&b"original bytes"[..])
    );
    assert_eq!(images.marked(0), Some(1));
}
