//! Per-message overhead of the shared core: converting headers for librdkafka and emitting
//! an event to a monitor with and without listeners.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use karafka_core::Headers;
use karafka_core::instrumentation::{Event, Monitor};
use std::hint::black_box;

fn headers(c: &mut Criterion) {
    let headers = Headers::new()
        .with("trace-id", "0af7651916cd43dd8448eb211c80319c")
        .with("content-type", "application/json")
        .with("tag", "a")
        .with("tag", "b");
    let mut group = c.benchmark_group("headers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("to_librdkafka_4_headers", |b| {
        b.iter(|| karafka_core::native::to_owned_headers(black_box(&headers)))
    });
    group.finish();
}

fn monitor(c: &mut Criterion) {
    let mut group = c.benchmark_group("monitor");
    group.throughput(Throughput::Elements(1));
    let idle = Monitor::new();
    group.bench_function("emit_with_no_listener", |b| {
        b.iter(|| idle.emit_with(|| Event::custom(black_box("bench.event"))))
    });
    let busy = Monitor::new();
    busy.subscribe_fn(|e| {
        black_box(e.name());
    });
    group.bench_function("emit_with_one_listener", |b| {
        b.iter(|| busy.emit(Event::custom(black_box("bench.event"))))
    });
    group.finish();
}

criterion_group!(benches, headers, monitor);
criterion_main!(benches);
