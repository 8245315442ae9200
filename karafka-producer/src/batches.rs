//! Batches in flight, by id, so a batch entry's delivery sink is a plain `(batch, index)` pair:
//! no allocation and no shared reference count per message, which on a million-message batch is
//! the difference between keeping up with librdkafka and not.
//!
//! Completions look their batch up here; each thread caches the batch it completed last, so a
//! thread serving a batch's delivery reports takes the registry lock once per batch, not once
//! per message.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::delivery::{BatchState, lock};

const SHARDS: usize = 16;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);
type Shard = Mutex<Vec<(u32, Arc<BatchState>)>>;

static REGISTRY: [Shard; SHARDS] = [const { Mutex::new(Vec::new()) }; SHARDS];

thread_local! {
    static LAST: RefCell<Option<(u32, Arc<BatchState>)>> = const { RefCell::new(None) };
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

/// Forgets a finished batch (and this thread's cached reference to it).
pub(crate) fn unregister(id: u32) {
    lock(shard(id)).retain(|(i, _)| *i != id);
    LAST.with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            if last.as_ref().is_some_and(|(i, _)| *i == id) {
                *last = None;
            }
        }
    });
    // A batch lent out by `with` is not cached back once `is_open` turns false.
}

/// Runs `f` with the batch `id`, if it is still in flight. The thread's cached batch is lent
/// out while `f` runs (no reference count touched); a nested call from inside `f` (a listener
/// producing) finds the cache empty and looks the registry up instead.
pub(crate) fn with<R>(id: u32, f: impl FnOnce(&Arc<BatchState>) -> R) -> Option<R> {
    let cached = LAST.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        match last.take() {
            Some((i, state)) if i == id => Some(state),
            other => {
                *last = other;
                None
            }
        }
    });
    let state = match cached {
        Some(state) => state,
        None => lock(shard(id))
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.clone())?,
    };
    let out = f(&state);
    LAST.with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            // Keep it cached unless it finished meanwhile (it then left the registry).
            if state.is_open() {
                *last = Some((id, state));
            }
        }
    });
    Some(out)
}

/// The batch with `id`, if it is still in flight.
pub(crate) fn get(id: u32) -> Option<Arc<BatchState>> {
    with(id, Arc::clone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Delivery, QueueRoom, Shared};
    use karafka_core::instrumentation::Monitor;
    use std::sync::Mutex;

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
