//! Batches in flight, by id, so a batch entry's delivery sink is a plain `(batch, index)` pair:
//! no allocation and no shared reference count per message, which on a million-message batch is
//! the difference between keeping up with librdkafka and not.
//!
//! Completions look their batch up here; each thread caches the batch it completed last, so a
//! thread serving a batch's delivery reports takes the registry lock once per batch, not once
//! per message. The client's polling thread also defers settling the entries it reports
//! ([`delivered_once`]): one count per batch, not one locked instruction per message.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::delivery::{BatchState, lock};
use karafka_core::Partition;

const SHARDS: usize = 16;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);
type Shard = Mutex<Vec<(u32, Arc<BatchState>)>>;

static REGISTRY: [Shard; SHARDS] = [const { Mutex::new(Vec::new()) }; SHARDS];

/// A thread's last batch, with the entries it reported but did not settle yet.
struct Cached {
    id: u32,
    state: Arc<BatchState>,
    unsettled: usize,
}

impl Cached {
    fn settle(&mut self) {
        let n = std::mem::take(&mut self.unsettled);
        self.state.settle(n);
    }
}

impl Drop for Cached {
    /// A batch leaves the cache (another one replaces it, or the thread ends) with its
    /// deferred entries settled: none is ever lost.
    fn drop(&mut self) {
        self.settle();
    }
}

thread_local! {
    static LAST: RefCell<Option<Cached>> = const { RefCell::new(None) };
    /// This thread defers settling (see [`defer_settling`]).
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
}

fn shard(id: u32) -> &'static Shard {
    &REGISTRY[id as usize % SHARDS]
}

/// Ids are 31 bits: a delivery token packs the id above bit 32, under its tag bit (63).
const ID_MASK: u32 = 0x7FFF_FFFF;

/// Registers a batch until [`unregister`]; returns its id (never 0, below 2^31).
pub(crate) fn register(state: &Arc<BatchState>) -> u32 {
    loop {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) & ID_MASK;
        if id == 0 {
            continue;
        }
        let mut entries = lock(shard(id));
        // Ids wrap after 2 billion batches; skip one still in flight.
        if entries.iter().any(|(i, _)| *i == id) {
            continue;
        }
        entries.push((id, state.clone()));
        return id;
    }
}

/// Forgets a finished batch (and this thread's cached reference to it; other threads find
/// theirs finished, see [`matches`]).
pub(crate) fn unregister(id: u32) {
    lock(shard(id)).retain(|(i, _)| *i != id);
    // `try_with`: a cached batch settled while the thread's locals are destroyed lands here.
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            if last.as_ref().is_some_and(|c| c.id == id) {
                *last = None;
            }
        }
    });
    // A batch lent out by `with` is not cached back once `is_open` turns false.
}

/// Whether a cached batch is batch `id`: the same id, and still in flight (a batch that
/// finished on another thread may stay in this thread's cache, and its id be given to a new
/// batch after 2^31 others).
fn matches(cached: &Cached, id: u32) -> bool {
    cached.id == id && cached.state.is_open()
}

/// This thread's cached batch if it is `id`, taken out of the cache; another batch there
/// leaves it (settling what this thread deferred for it).
fn take_cached(id: u32) -> Option<Cached> {
    let cached = LAST
        .try_with(|last| last.try_borrow_mut().ok().and_then(|mut l| l.take()))
        .ok()
        .flatten()?;
    if matches(&cached, id) {
        return Some(cached);
    }
    // Dropped out of the borrow: settling may unregister, which looks at the cache.
    drop(cached);
    None
}

/// Caches `cached` as this thread's last batch while it is in flight; a batch it replaces
/// (or that cannot be cached) settles its deferred entries as it is dropped.
fn cache(cached: Cached) {
    if !cached.state.is_open() {
        return;
    }
    let mut cached = Some(cached);
    let replaced = LAST
        .try_with(|last| match last.try_borrow_mut() {
            Ok(mut last) => std::mem::replace(&mut *last, cached.take()),
            Err(_) => None,
        })
        .ok()
        .flatten();
    // Dropped out of the borrow: settling may unregister, which looks at the cache. (`cached`
    // is still here when the cache could not take it: it settles as it goes.)
    drop(replaced);
    drop(cached);
}

fn lookup(id: u32) -> Option<Cached> {
    let state = lock(shard(id))
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| s.clone())?;
    Some(Cached {
        id,
        state,
        unsettled: 0,
    })
}

/// Whether this thread defers settling.
fn deferring() -> bool {
    DEFERRING.get()
}

/// Runs `f` with the batch `id`, if it is still in flight. The thread's cached batch is lent
/// out while `f` runs (no reference count touched); a nested call from inside `f` (a listener
/// producing) finds the cache empty and looks the registry up instead.
pub(crate) fn with<R>(id: u32, f: impl FnOnce(&Arc<BatchState>) -> R) -> Option<R> {
    let mut cached = take_cached(id).or_else(|| lookup(id))?;
    let out = f(&cached.state);
    // `f` may have settled the batch's last entry not counted here (a failed report on the
    // polling thread): the count held here is then all it waits for.
    settle_if_last(&mut cached);
    cache(cached);
    Some(out)
}

/// Settles what this thread counted for the batch when that is every entry it still waits
/// for, or when this thread does not defer.
#[inline]
fn settle_if_last(cached: &mut Cached) {
    if cached.unsettled > 0 && (!deferring() || cached.unsettled >= cached.state.unsettled()) {
        cached.settle();
    }
}

/// Records librdkafka's delivery report of entry `index` of batch `id`
/// ([`BatchState::delivered_once`]). On a thread that defers settling (the client's polling
/// thread) the entry is counted here, and the count settled when every entry the batch still
/// waits for is counted here (so a batch whose reports all come here finishes with its last
/// one), when the thread moves on to another batch, or at [`settle_deferred`] (after each poll:
/// a batch whose other entries settled elsewhere, a refused entry or a report served by
/// another thread, waits for it); elsewhere it settles at once.
///
/// # Safety
///
/// As [`BatchState::delivered_once`]: the entry was handed to librdkafka, which reports it
/// once, here.
#[allow(unsafe_code)]
pub(crate) unsafe fn delivered_once(id: u32, index: usize, partition: Partition, offset: i64) {
    // The thread's cached batch, used in place (the common case: one batch's reports in a row).
    let served = LAST
        .try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return false;
            };
            let Some(cached) = last.as_mut().filter(|c| matches(c, id)) else {
                return false;
            };
            // SAFETY: per this function's contract.
            unsafe { record(cached, index, partition, offset) };
            if !cached.state.is_open() {
                // Finished (every deferred entry settled): nothing to settle on the way out.
                *last = None;
            }
            true
        })
        .unwrap_or(false);
    if served {
        return;
    }
    let Some(mut cached) = take_cached(id).or_else(|| lookup(id)) else {
        return;
    };
    // SAFETY: per this function's contract.
    unsafe { record(&mut cached, index, partition, offset) };
    cache(cached);
}

/// Records the report in `cached`'s batch, counting or settling the entry.
///
/// # Safety
///
/// As [`delivered_once`].
#[allow(unsafe_code)]
#[inline]
unsafe fn record(cached: &mut Cached, index: usize, partition: Partition, offset: i64) {
    // SAFETY: per this function's contract.
    if unsafe { cached.state.delivered_once(index, partition, offset) } {
        cached.unsettled += 1;
    }
    settle_if_last(cached);
}

/// Makes this thread defer settling the entries it reports through [`delivered_once`]; it
/// must then call [`settle_deferred`] regularly (a batch whose other entries settle elsewhere
/// waits for it) and when it stops.
pub(crate) fn defer_settling() {
    DEFERRING.set(true);
}

/// Settles the entries this thread reported and has not settled yet.
pub(crate) fn settle_deferred() {
    let cached = LAST
        .try_with(|last| last.try_borrow_mut().ok().and_then(|mut l| l.take()))
        .ok()
        .flatten();
    if let Some(mut cached) = cached {
        cached.settle();
        cache(cached);
    }
}

/// The batch with `id`, if it is still in flight.
pub(crate) fn get(id: u32) -> Option<Arc<BatchState>> {
    with(id, Arc::clone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Delivery, Outcome, QueueRoom, Shared};
    use karafka_core::instrumentation::Monitor;
    use std::sync::Mutex;

    fn prepared(shared: &Arc<Shared>, len: usize) -> Arc<BatchState> {
        let state = BatchState::new(shared.clone(), len);
        let topic: Arc<str> = "t".into();
        let topic_index = state.topic_index(&topic);
        for index in 0..len {
            // SAFETY: each entry prepared once, before its delivery.
            #[allow(unsafe_code)]
            unsafe {
                state.prepare_entry(index, topic_index, topic.clone(), None, None)
            };
        }
        state
    }

    fn report(state: &Arc<BatchState>, index: usize) {
        // Made (as the dispatcher does) and handed to "librdkafka", which reports it once.
        let _ = Delivery::entry(state, index).into_opaque();
        // SAFETY: entry `index` was handed out above and is reported once, here.
        #[allow(unsafe_code)]
        unsafe {
            delivered_once(state.id_for_tests(), index, 0, index as i64)
        };
    }

    #[test]
    fn a_deferring_thread_settles_every_entry_it_reports() {
        let shared = Arc::new(Shared {
            producer_id: "p".into(),
            monitor: Monitor::new(),
            room: QueueRoom::default(),
            undelivered: Mutex::new(None),
        });
        let (mixed, whole, switched, other, at_exit, failed_last, abandoned) = (
            prepared(&shared, 4),
            prepared(&shared, 2),
            prepared(&shared, 2),
            prepared(&shared, 1),
            prepared(&shared, 2),
            prepared(&shared, 2),
            prepared(&shared, 2),
        );
        // A handle dropped before its batch finished: the results go when it settles.
        drop(crate::delivery::BatchDelivery::new(abandoned.clone(), 2));
        let (to_poller, steps) = std::sync::mpsc::channel::<u8>();
        let (done, step_done) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                defer_settling();
                for step in steps {
                    match step {
                        0 => (0..3).for_each(|i| report(&mixed, i)),
                        1 => settle_deferred(),
                        2 => (0..2).for_each(|i| report(&whole, i)),
                        3 => {
                            report(&switched, 0);
                            report(&other, 0);
                        }
                        4 => {
                            // The last entry fails on this thread: settled with the count.
                            report(&failed_last, 0);
                            Delivery::entry(&failed_last, 1).complete(Outcome::Failed {
                                error: karafka_core::KafkaError::other("deliver", "failed"),
                                message: Box::new(crate::Message::new("t", "x")),
                            });
                        }
                        5 => report(&abandoned, 0),
                        6 => settle_deferred(),
                        _ => report(&at_exit, 0),
                    }
                    done.send(()).unwrap();
                }
            });
            let step = |n: u8| {
                to_poller.send(n).unwrap();
                step_done.recv().unwrap();
            };
            // Three reports deferred, the last entry completed on another thread: the batch
            // waits for the poller's next settle.
            step(0);
            assert_eq!(mixed.unsettled(), 4, "deferred, not settled");
            Delivery::entry(&mixed, 3).complete(Outcome::Delivered {
                partition: 0,
                offset: 3,
            });
            assert_eq!(mixed.unsettled(), 3);
            step(1);
            assert!(!mixed.is_open(), "settled after the poll");
            // Every entry reported by the poller: done with the last report.
            step(2);
            assert!(!whole.is_open(), "done with its last report");
            // Moving on to another batch settles the previous one's count.
            step(3);
            assert!(!other.is_open());
            assert_eq!(
                switched.unsettled(),
                1,
                "the first entry settled on the switch"
            );
            step(4);
            assert!(!failed_last.is_open(), "settled with the failure");
            // An abandoned batch whose last count is held here is released when it settles.
            step(5);
            Delivery::entry(&abandoned, 1).complete(Outcome::Delivered {
                partition: 0,
                offset: 1,
            });
            assert_eq!(abandoned.unsettled(), 1);
            step(6);
            assert!(!abandoned.is_open());
            // A count still held when the thread ends is settled as it ends.
            step(7);
            Delivery::entry(&at_exit, 1).complete(Outcome::Delivered {
                partition: 0,
                offset: 1,
            });
            assert_eq!(at_exit.unsettled(), 1);
            drop(to_poller);
            // (A join waits for the thread's locals to be destroyed; the scope's end may not.)
            poller.join().unwrap();
        });
        assert!(!at_exit.is_open(), "settled when the thread ended");
        report(&switched, 1);
        assert!(!switched.is_open());
    }

    #[test]
    fn ids_stay_below_the_token_tag_bit_and_round_trip() {
        let shared = Arc::new(Shared {
            producer_id: "p".into(),
            monitor: Monitor::new(),
            room: QueueRoom::default(),
            undelivered: Mutex::new(None),
        });
        NEXT_ID.store(ID_MASK - 1, Ordering::Relaxed);
        for _ in 0..4 {
            let state = BatchState::new(shared.clone(), 1);
            let delivery = Delivery::entry(&state, 0);
            let token = delivery.token();
            assert_eq!((token >> 32) as u32 & ID_MASK, state.id_for_tests());
            // Disarm it (nothing to report) and settle the entry.
            let _ = delivery.cancel();
            state.settle(1);
            assert!(state.id_for_tests() != 0 && state.id_for_tests() <= ID_MASK);
        }
    }
}
