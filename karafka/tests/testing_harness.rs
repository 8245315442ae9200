//! What a user's test file looks like: an app's consumer tested end to end with
//! `karafka::testing::Harness`, through the `karafka` crate alone (feature `testing`), without
//! a broker.
#![cfg(feature = "testing")]

use std::sync::{Arc, Mutex};

use karafka::payload::Json;
use karafka::producer::Message;
use karafka::routing::DeadLetterQueue;
use karafka::testing::Harness;
use karafka::{App, ConsumeResult, Consumer, Context};

// --- the application's code -------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Payment {
    order: u64,
    cents: i64,
}

/// Sums payments per order; refunds (negative amounts) go to the `refunds` topic.
struct Payments {
    totals: Arc<Mutex<Vec<(u64, i64)>>>,
}

impl Consumer for Payments {
    type Payload = Json<Payment>;

    async fn consume(&mut self, ctx: &Context<Json<Payment>>) -> ConsumeResult {
        for message in ctx.messages() {
            let payment = message.payload()?;
            if payment.cents < 0 {
                ctx.producer().produce_sync(
                    Message::new(
                        "refunds",
                        message.raw_payload()?.cloned().unwrap_or_default(),
                    )
                    .key(payment.order.to_string()),
                )?;
            } else {
                self.totals
                    .lock()
                    .unwrap()
                    .push((payment.order, payment.cents));
            }
            ctx.mark_as_consumed(message);
        }
        Ok(())
    }
}

fn app(totals: Arc<Mutex<Vec<(u64, i64)>>>) -> App {
    App::builder()
        .kafka("bootstrap.servers", "kafka:9092")
        .topic("payments", move |t| {
            t.consumer(move || Payments {
                totals: totals.clone(),
            })
            .dead_letter_queue(DeadLetterQueue::new("payments-dlq").max_retries(1))
        })
        .build()
        .expect("valid routes")
}

// --- the test ---------------------------------------------------------------------------

#[tokio::test]
async fn payments_are_summed_refunds_forwarded_and_garbage_dead_lettered() {
    let totals = Arc::new(Mutex::new(Vec::new()));
    let harness = Harness::new(&app(totals.clone()));
    let mut payments = harness.consumer_for("payments").unwrap();

    payments.produce(r#"{"order":1,"cents":500}"#);
    payments.produce(r#"{"order":2,"cents":-200}"#);
    payments.produce("garbage");
    payments.produce(r#"{"order":1,"cents":250}"#);

    // The garbage fails the batch (after marking 0 and 1), is retried once, then dead-lettered.
    while payments.marked(0) != Some(4) {
        assert!(payments.attempt(0) <= 2, "stuck on a retry");
        payments.consume().await;
    }
    assert_eq!(*totals.lock().unwrap(), [(1, 500), (1, 250)]);
    let refunds = harness.produced("refunds");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].message.key.as_deref(), Some(&b"2"[..]));
    let dead = harness.produced("payments-dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.payload.as_deref(), Some(&b"garbage"[..]));
    assert_eq!(dead[0].message.headers.get_str("source_offset"), Some("2"));
}
