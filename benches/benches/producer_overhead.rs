//! Per-message work the producer does before librdkafka: middleware, validation, partition
//! choice, the delivery sink and its completion, measured through a client that completes
//! every delivery at once (so librdkafka's own cost is excluded), with and without headers.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use karafka_core::{KafkaError, Partition};
use karafka_producer::client::{
    Client, ClientFactory, ClientSetup, ConsumerGroupMetadata, Rejected,
};
use karafka_producer::variant::TopicConfig;
use karafka_producer::{Delivery, Message, Outcome, Producer};

/// Completes every delivery immediately, doing nothing else.
#[derive(Debug, Clone, Copy)]
struct Instant;

impl ClientFactory for Instant {
    fn create(&self, _: &ClientSetup<'_>) -> Result<Box<dyn Client>, KafkaError> {
        Ok(Box::new(Instant))
    }
}

impl Client for Instant {
    fn produce(
        &self,
        message: &Message,
        _: Option<&TopicConfig>,
        delivery: Delivery,
    ) -> Result<(), Rejected> {
        black_box(message);
        delivery.complete(Outcome::Delivered {
            partition: 0,
            offset: 0,
        });
        Ok(())
    }
    fn partition_for_key(
        &self,
        _: &str,
        _: Option<&TopicConfig>,
        _: &[u8],
    ) -> Result<Partition, KafkaError> {
        Ok(0)
    }
    fn flush(&self, _: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
    fn in_flight(&self) -> usize {
        0
    }
    fn close(&self, _: Duration) {}
    fn init_transactions(&self, _: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
    fn begin_transaction(&self) -> Result<(), KafkaError> {
        Ok(())
    }
    fn send_offsets_to_transaction(
        &self,
        _: &[(karafka_core::TopicPartition, i64)],
        _: &ConsumerGroupMetadata,
        _: Duration,
    ) -> Result<(), KafkaError> {
        Ok(())
    }
    fn commit_transaction(&self, _: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
    fn abort_transaction(&self, _: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
}

fn overhead(c: &mut Criterion) {
    let producer = Producer::builder().client(Instant).build().unwrap();
    let with_middleware = Producer::builder()
        .client(Instant)
        .middleware(|m: &mut Message| {
            m.headers.append("app", "bench");
        })
        .build()
        .unwrap();
    let topic: Arc<str> = "bench-topic".into();
    let payload = Bytes::from_static(&[b'x'; 100]);
    let mut group = c.benchmark_group("producer_per_message");
    group.throughput(Throughput::Elements(1));
    group.bench_function("produce_async_plain", |b| {
        b.iter(|| {
            let handle = producer
                .produce_async(Message::new(topic.clone(), payload.clone()))
                .unwrap();
            drop(black_box(handle));
        })
    });
    group.bench_function("produce_async_4_headers_key", |b| {
        b.iter(|| {
            let m = Message::new(topic.clone(), payload.clone())
                .key("customer-7")
                .header("a", "1")
                .header("b", "2")
                .header("c", "3")
                .header("c", "4");
            drop(black_box(producer.produce_async(m).unwrap()));
        })
    });
    group.bench_function("produce_async_with_middleware", |b| {
        b.iter(|| {
            drop(black_box(
                with_middleware
                    .produce_async(Message::new(topic.clone(), payload.clone()))
                    .unwrap(),
            ));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("producer_batch_of_1000");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("produce_many_async", |b| {
        b.iter_batched(
            || {
                (0..1000)
                    .map(|_| Message::new(topic.clone(), payload.clone()))
                    .collect::<Vec<_>>()
            },
            |batch| black_box(producer.produce_many_async(batch).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
