//! Running one job on a worker: the consumer's code under `catch_unwind`, instrumented, its
//! instance handed back whatever happens.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use karafka_core::TopicPartition;
use karafka_core::instrumentation::{ErrorKind, ErrorOccurred, Event, JobKind, Monitor};

use crate::consumer::ErasedConsumer;
use crate::context::JobInput;
use crate::message::BatchView;
use crate::payload::BoxError;
use crate::processing::coordinator::Coordinator;
use crate::routing::TopicRoute;
use crate::split::Group;
use crate::status::{Control, InFlight};

/// A topic's consume jobs' recent duration (an exponential moving average over about the
/// last 16 jobs). Jobs of topics known to be cheap run on the listener's thread, one after
/// the other, without waking a worker: handing a job to a worker and back costs tens of
/// microseconds here, more than such a job.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JobCost {
    average_us: f64,
    samples: u32,
}

impl JobCost {
    /// Below this average, a job is cheaper than a hand-off to a worker.
    const CHEAP_US: f64 = 50.0;
    /// Jobs seen before the average is trusted.
    const WARM_UP: u32 = 8;

    pub(crate) fn add(&mut self, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        self.samples = self.samples.saturating_add(1);
        self.average_us = if self.samples == 1 {
            us
        } else {
            self.average_us + (us - self.average_us) / 16.0
        };
    }

    pub(crate) fn cheap(&self) -> bool {
        self.samples >= Self::WARM_UP && self.average_us < Self::CHEAP_US
    }
}

pub(crate) struct Job {
    pub(crate) kind: JobKind,
    pub(crate) topic: Arc<TopicRoute>,
    pub(crate) consumer: Box<dyn ErasedConsumer>,
    pub(crate) input: JobInput,
}

/// How a job failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Error(BoxError),
    Panic(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "{e}"),
            Failure::Panic(p) => write!(f, "panicked: {p}"),
        }
    }
}

impl std::error::Error for Failure {}

pub(crate) struct Done {
    pub(crate) kind: JobKind,
    pub(crate) tp: TopicPartition,
    pub(crate) topic: Arc<TopicRoute>,
    pub(crate) consumer: Box<dyn ErasedConsumer>,
    pub(crate) batch: BatchView,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) outcome: Result<(), Failure>,
    /// The stored offset before the job ran (to tell whether it made progress).
    pub(crate) stored_before: Option<i64>,
    /// How long the consumer's code ran.
    pub(crate) took: std::time::Duration,
    /// The job's group of a split batch (virtual partitions).
    pub(crate) group: Option<Group>,
    /// Which of the partition's instances it ran on ([`JobInput::instance`](crate::context::JobInput::instance)).
    pub(crate) instance: usize,
}

fn error_kind(job: JobKind) -> ErrorKind {
    match job {
        JobKind::Revoked => ErrorKind::ConsumerRevoked,
        JobKind::Shutdown => ErrorKind::ConsumerShutdown,
        JobKind::Eofed => ErrorKind::ConsumerEofed,
        JobKind::Initialized => ErrorKind::ConsumerInitialized,
        JobKind::Tick => ErrorKind::ConsumerTick,
        _ => ErrorKind::ConsumerConsume,
    }
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A job that never ran (its partition was revoked while it waited for a worker): its
/// instance and batch come back as from a job that did nothing.
pub(crate) fn not_run(job: Job) -> Done {
    let Job {
        kind,
        topic,
        consumer,
        input,
    } = job;
    Done {
        kind,
        stored_before: input.coordinator.stored(),
        tp: input.tp,
        topic,
        consumer,
        batch: input.batch,
        coordinator: input.coordinator,
        outcome: Ok(()),
        took: Duration::ZERO,
        group: input.group,
        instance: input.instance,
    }
}

/// Runs `job` on the current task. Never panics: user panics become [`Failure::Panic`].
pub(crate) async fn run(
    job: Job,
    monitor: Monitor,
    control: Arc<Control>,
    listener: Arc<str>,
) -> Done {
    let Job {
        kind,
        topic,
        mut consumer,
        input,
    } = job;
    let tp = input.tp.clone();
    let batch = input.batch.clone();
    let coordinator = input.coordinator.clone();
    let group = input.group.clone();
    let instance = input.instance;
    let stored_before = coordinator.stored();
    let consumer_group = input.consumer_group.clone();
    let (first, last) = batch.offsets();
    monitor.emit_with(|| Event::WorkerProcess {
        consumer_group: consumer_group.clone(),
        topic: tp.topic.clone(),
        partition: tp.partition,
        job: kind,
    });
    if kind == JobKind::Consume {
        monitor.emit_with(|| Event::Consume {
            consumer_group: consumer_group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
            messages: batch.len(),
            first_offset: first,
            last_offset: last,
        });
    }
    let started = Instant::now();
    control
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(InFlight {
            listener: listener.clone(),
            job: kind,
            tp: tp.clone(),
            offsets: (first, last),
            started,
            long_running: topic.long_running,
        });

    let outcome = match (CatchUnwind(consumer.run(kind, input))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Error(e)),
        Err(panic) => Err(Failure::Panic(panic_message(panic))),
    };
    let took = started.elapsed();
    if let (Err(_), Some(group)) = (&outcome, &group) {
        group.tracker.fail();
    }
    control
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|j| {
            !(j.started == started
                && j.tp == tp
                && j.job == kind
                && Arc::ptr_eq(&j.listener, &listener))
        });

    match &outcome {
        Ok(()) if kind == JobKind::Consume => {
            monitor.emit_with(|| {
                let metadata =
                    crate::message::BatchMetadata::new(&batch, std::time::SystemTime::now() - took);
                Event::Consumed {
                    consumer_group: consumer_group.clone(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    messages: batch.len(),
                    first_offset: first,
                    last_offset: last,
                    duration: took,
                    consumption_lag_ms: metadata.as_ref().map_or(-1, |m| m.consumption_lag_ms),
                    processing_lag_ms: metadata.as_ref().map_or(0, |m| m.processing_lag_ms),
                }
            });
        }
        Ok(()) => monitor.emit_with(|| Event::ConsumerHook {
            consumer_group: consumer_group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
            job: kind,
            duration: took,
        }),
        Err(failure) => monitor.emit_with(|| {
            Event::ErrorOccurred(
                ErrorOccurred::new(error_kind(kind), std::io::Error::other(failure.to_string()))
                    .source_id(consumer_group.clone())
                    .at(
                        tp.topic.clone(),
                        Some(tp.partition),
                        (first >= 0).then_some(first),
                    ),
            )
        }),
    }
    monitor.emit_with(|| Event::WorkerProcessed {
        consumer_group: consumer_group.clone(),
        topic: tp.topic.clone(),
        partition: tp.partition,
        job: kind,
        duration: took,
    });
    Done {
        kind,
        tp,
        topic,
        consumer,
        batch,
        coordinator,
        outcome,
        stored_before,
        took,
        group,
        instance,
    }
}

/// Polls the wrapped future, turning a panic into an `Err`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.0);
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
