//! Periodic jobs without a broker: ticking through the consumer harness, the contract, and
//! what `info` prints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use karafka_consumer::harness::{Harness, HarnessError};
use karafka_consumer::payload::Raw;
use karafka_consumer::{App, AppBuilder, ConsumeResult, Consumer, Context, cli};
use karafka_pro::{LongRunningJobTopic, PeriodicJob, PeriodicJobTopic};

/// Buffers keys; a tick flushes them into `flushed`.
struct Buffering {
    buffered: Vec<String>,
    flushed: Arc<Mutex<Vec<Vec<String>>>>,
    events: Arc<Mutex<Vec<&'static str>>>,
}

impl Consumer for Buffering {
    type Payload = Raw;
    async fn initialized(&mut self, _ctx: &Context<Raw>) -> ConsumeResult {
        self.events.lock().unwrap().push("initialized");
        Ok(())
    }

    async fn consume(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.events.lock().unwrap().push("consume");
        for m in ctx.messages() {
            self.buffered
                .push(m.key_str().unwrap_or_default().to_owned());
        }
        Ok(())
    }

    async fn tick(&mut self, ctx: &Context<Raw>) -> ConsumeResult {
        self.events.lock().unwrap().push("tick");
        if !ctx.messages().is_empty() {
            return Err("a tick's batch is empty".into());
        }
        self.flushed
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.buffered));
        Ok(())
    }
}

fn base() -> AppBuilder {
    App::builder()
        .name("shop")
        .kafka("bootstrap.servers", "127.0.0.1:9092")
}

#[tokio::test(flavor = "current_thread")]
async fn a_tick_runs_on_the_partitions_instance_and_sees_what_it_buffered() {
    let flushed = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (f, e) = (flushed.clone(), events.clone());
    let app = base()
        .topic("clicks", move |t| {
            let (f, e) = (f.clone(), e.clone());
            t.consumer(move || Buffering {
                buffered: Vec::new(),
                flushed: f.clone(),
                events: e.clone(),
            })
            .periodic_job(PeriodicJob::new().interval(Duration::from_secs(1)))
        })
        .topic("plain", |t| {
            t.consumer(|| Buffering {
                buffered: Vec::new(),
                flushed: Arc::default(),
                events: Arc::default(),
            })
        })
        .build()
        .unwrap();
    let harness = Harness::new(&app);
    let mut clicks = harness.consumer_for("clicks").unwrap();
    // Before any message: a new instance, initialized first.
    assert_eq!(clicks.tick(0).await.unwrap(), None);
    for key in ["a", "b"] {
        clicks.produce_message(karafka_producer::Message::new("clicks", "x").key(key));
    }
    clicks.consume().await;
    assert_eq!(clicks.tick(0).await.unwrap(), None);
    assert_eq!(
        *flushed.lock().unwrap(),
        vec![Vec::<String>::new(), vec!["a".to_owned(), "b".to_owned()]]
    );
    assert_eq!(
        *events.lock().unwrap(),
        ["initialized", "tick", "consume", "tick"]
    );
    // A tick marks nothing; the batch stays marked.
    assert_eq!(clicks.marked(0), Some(2));

    let mut plain = harness.consumer_for("plain").unwrap();
    match plain.tick(0).await {
        Err(e @ HarnessError::NotPeriodic { .. }) => {
            assert!(e.to_string().contains("has no periodic jobs"), "{e}")
        }
        other => panic!("expected NotPeriodic, got {other:?}"),
    }
}

#[test]
fn an_interval_below_100_ms_is_refused() {
    let err = base()
        .topic("clicks", |t| {
            t.consumer(|| Buffering {
                buffered: Vec::new(),
                flushed: Arc::default(),
                events: Arc::default(),
            })
            .periodic_job(PeriodicJob::new().interval(Duration::from_millis(50)))
        })
        .build()
        .unwrap_err();
    let found: Vec<(String, String)> = err
        .violations()
        .iter()
        .map(|v| (v.path.clone(), v.message.clone()))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].0.ends_with("topics.clicks.periodic_job.interval"),
        "{found:?}"
    );
    assert!(found[0].1.contains("at least 100 ms"), "{found:?}");
}

#[test]
fn defaults_and_info() {
    let app = base()
        .topic("clicks", |t| {
            t.consumer(|| Buffering {
                buffered: Vec::new(),
                flushed: Arc::default(),
                events: Arc::default(),
            })
            .periodic_job(PeriodicJob::new())
        })
        .topic("reports", |t| {
            t.consumer(|| Buffering {
                buffered: Vec::new(),
                flushed: Arc::default(),
                events: Arc::default(),
            })
            .long_running_job(true)
            .periodic_job(PeriodicJob::new().during_retry(true))
        })
        .build()
        .unwrap();
    let group = app.routes().consumer_groups().next().unwrap();
    let periodic: Vec<_> = group
        .topics()
        .map(|t| {
            t.periodic()
                .map(|p| (p.interval, p.during_pause, p.during_retry))
        })
        .collect();
    // 5 s; a pause ticks on a regular topic, not on a long-running one; retries don't.
    assert_eq!(
        periodic,
        [
            Some((Duration::from_secs(5), Some(true), false)),
            Some((Duration::from_secs(5), Some(false), true)),
        ]
    );
    let info = cli::info(&app);
    assert!(
        info.contains(
            "periodic jobs every 5s (during pause: unless long-running, during retry: no)"
        ),
        "{info}"
    );
    assert!(
        info.contains(", long-running jobs, periodic jobs every 5s (during pause: unless long-running, during retry: yes)"),
        "{info}"
    );
}
