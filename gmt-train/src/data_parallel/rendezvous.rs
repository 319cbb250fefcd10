//! A meeting point of the replica threads: each brings a value, each leaves with all of them.
//!
//! Hand-written rather than taken from a crate: it is a barrier that also gathers (std's
//! `Barrier` does not), and it must be breakable, so that a replica that panics or is dropped
//! releases the others with an error instead of leaving them waiting for good.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// W threads exchanging one value each per round.
pub(crate) struct Rendezvous<T> {
    state: Mutex<State<T>>,
    turned: Condvar,
}

struct State<T> {
    /// This round's values, by replica.
    slots: Vec<Option<T>>,
    arrived: usize,
    /// Rounds completed.
    round: u64,
    /// The last completed round's values: what the waiters of that round take.
    last: Option<Arc<Vec<T>>>,
    /// Why the group can no longer meet.
    broken: Option<String>,
}

impl<T> Rendezvous<T> {
    /// A meeting point for `replicas` threads.
    pub(crate) fn new(replicas: usize) -> Self {
        Self {
            state: Mutex::new(State {
                slots: (0..replicas).map(|_| None).collect(),
                arrived: 0,
                round: 0,
                last: None,
                broken: None,
            }),
            turned: Condvar::new(),
        }
    }

    /// Brings `value` as replica `rank` and waits for every other replica's; returns them all,
    /// by replica. Errs with the reason once the group is broken.
    pub(crate) fn exchange(&self, rank: usize, value: T) -> Result<Arc<Vec<T>>, String> {
        let mut state = self.lock();
        if let Some(reason) = &state.broken {
            return Err(reason.clone());
        }
        state.slots[rank] = Some(value);
        state.arrived += 1;
        if state.arrived == state.slots.len() {
            let values: Option<Vec<T>> = state.slots.iter_mut().map(Option::take).collect();
            let values = Arc::new(values.expect("every slot filled"));
            state.last = Some(values.clone());
            state.arrived = 0;
            state.round += 1;
            self.turned.notify_all();
            return Ok(values);
        }
        // The round cannot complete again before this thread arrives once more, so `last` is
        // still this round's when it wakes.
        let round = state.round;
        let state = self
            .turned
            .wait_while(state, |s| s.round == round && s.broken.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &state.broken {
            Some(reason) if state.round == round => Err(reason.clone()),
            _ => Ok(state.last.clone().expect("a completed round")),
        }
    }

    /// Releases every waiting and future [`exchange`](Self::exchange) with `reason` (the first
    /// reason given stays).
    pub(crate) fn break_with(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        state.broken.get_or_insert_with(|| reason.into());
        self.turned.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing in `State` is left half-updated across a panic point.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_gets_every_value_in_replica_order_round_after_round() {
        let meet = Arc::new(Rendezvous::new(3));
        let threads: Vec<_> = (0..3)
            .map(|rank| {
                let meet = meet.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|round| meet.exchange(rank, rank * 100 + round).unwrap().to_vec())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for thread in threads {
            let rounds = thread.join().unwrap();
            for (round, values) in rounds.iter().enumerate() {
                assert_eq!(values, &[round, 100 + round, 200 + round]);
            }
        }
    }

    #[test]
    fn a_broken_group_releases_its_waiters_with_the_reason() {
        let meet = Arc::new(Rendezvous::new(2));
        let waiter = {
            let meet = meet.clone();
            std::thread::spawn(move || meet.exchange(0, ()))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        meet.break_with("replica 1 panicked");
        assert_eq!(waiter.join().unwrap().unwrap_err(), "replica 1 panicked");
        assert_eq!(meet.exchange(1, ()).unwrap_err(), "replica 1 panicked");
    }
}
