//! The framework's own per-message cost with no broker: a batch of `max_messages` goes
//! through the production pipeline (copied into a poll buffer, made into a job with a
//! view of it, a no-op `consume` that touches every message, then settled: the automatic
//! mark and its offset store). Driven by the consumer harness, which runs the same pipeline
//! as the listener on an in-memory log; librdkafka's own poll cost is not in it (the
//! `consumer` bench measures that side by side with raw rdkafka).
//!
//! `cargo bench -p karafka-benches --bench consumer_overhead`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use karafka_consumer::harness::Harness;
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, ConsumeResult, Consumer, Context};

struct Touch;

impl Consumer for Touch {
    type Payload = Raw;
    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        let mut sum = 0i64;
        for message in ctx.messages() {
            sum += message.offset();
        }
        black_box(sum);
        Ok(())
    }
}

/// Batches consumed per fresh consumer (its in-memory log is produced untimed).
const BATCHES_PER_LOG: u64 = 200;

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let payload = Bytes::from_static(&[b'x'; 100]);
    let mut group = c.benchmark_group("consumer_pipeline");
    for max_messages in [100usize, 1000] {
        let app = App::builder()
            .kafka("bootstrap.servers", "unused:9092")
            .topic("bench", move |t| {
                t.consumer(|| Touch).max_messages(max_messages)
            })
            .build()
            .unwrap();
        let harness = Harness::new(&app);
        group.throughput(Throughput::Elements(max_messages as u64));
        group.bench_function(format!("batch_of_{max_messages}_per_message"), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let batches = left.min(BATCHES_PER_LOG);
                    left -= batches;
                    let mut consumer = harness.consumer_for("bench").unwrap();
                    for _ in 0..batches as usize * max_messages {
                        consumer.produce(payload.clone());
                    }
                    let started = Instant::now();
                    for _ in 0..batches {
                        let outcomes = runtime.block_on(consumer.consume());
                        debug_assert_eq!(outcomes.len(), 1);
                        black_box(outcomes);
                    }
                    took += started.elapsed();
                    assert_eq!(
                        consumer.marked(0),
                        Some((batches as usize * max_messages) as i64),
                        "every message was consumed and marked"
                    );
                }
                took
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
