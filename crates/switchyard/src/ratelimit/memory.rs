//! The embedded limiter store: counters in this process's memory, sharded so that requests
//! for different keys rarely meet on a lock. Each shard is a std mutex held for one
//! arithmetic step, never across an `.await`.

use std::collections::HashMap;
use std::hash::BuildHasher;

// Counters are keyed by client-chosen values (users, IPs): foldhash is seeded per process,
// so collisions cannot be precomputed, and it is several times faster than SipHash on short
// keys.
use foldhash::fast::RandomState;
use std::sync::{Mutex, MutexGuard};

use switchyard_core::clock::Nanos;
use switchyard_core::ratelimit::{Outcome, Policy, State};

/// Shards per limit: a power of two, a few times the cores of a large machine.
const SHARDS: usize = 64;

/// The counters of every limit.
pub struct MemoryStore {
    /// One set of shards per configured limit, in config order.
    limits: Vec<Shards>,
    hasher: RandomState,
}

struct Shards(Vec<Mutex<HashMap<Box<str>, State, RandomState>>>);

impl MemoryStore {
    /// A store for `limits` limits.
    pub fn new(limits: usize) -> Self {
        MemoryStore {
            limits: (0..limits)
                .map(|_| {
                    Shards(
                        (0..SHARDS)
                            .map(|_| Mutex::new(HashMap::with_hasher(RandomState::default())))
                            .collect(),
                    )
                })
                .collect(),
            hasher: RandomState::default(),
        }
    }

    fn shard(
        &self,
        limit: usize,
        counter: &str,
    ) -> Option<MutexGuard<'_, HashMap<Box<str>, State, RandomState>>> {
        let shards = self.limits.get(limit)?;
        let index = (self.hasher.hash_one(counter) as usize) & (SHARDS - 1);
        let shard = shards.0.get(index)?;
        Some(
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Tries to charge `units` to `counter` of limit `limit`.
    pub fn acquire(
        &self,
        limit: usize,
        policy: &Policy,
        counter: &str,
        now: Nanos,
        units: u64,
    ) -> Outcome {
        let Some(mut shard) = self.shard(limit, counter) else {
            return Outcome::Refused {
                retry_after: None,
                reset: 0,
            };
        };
        if let Some(state) = shard.get_mut(counter) {
            return policy.acquire(state, now, units);
        }
        let mut state = policy.new_state();
        let outcome = policy.acquire(&mut state, now, units);
        if matches!(outcome, Outcome::Admitted { .. }) {
            shard.insert(counter.into(), state);
        }
        outcome
    }

    /// Gives back `units` charged at `charged_at`.
    pub fn release(
        &self,
        limit: usize,
        policy: &Policy,
        counter: &str,
        now: Nanos,
        charged_at: Nanos,
        units: u64,
    ) {
        if let Some(mut shard) = self.shard(limit, counter)
            && let Some(state) = shard.get_mut(counter)
        {
            policy.release(state, now, charged_at, units);
        }
    }

    /// Charges `units` beyond the reservation.
    pub fn charge(&self, limit: usize, policy: &Policy, counter: &str, now: Nanos, units: u64) {
        if let Some(mut shard) = self.shard(limit, counter) {
            let state = shard
                .entry(counter.into())
                .or_insert_with(|| policy.new_state());
            policy.charge(state, now, units);
        }
    }

    /// Units left and time to full, for the admin view (`None`: never charged or forgotten).
    pub fn peek(
        &self,
        limit: usize,
        policy: &Policy,
        counter: &str,
        now: Nanos,
    ) -> Option<(u64, Nanos)> {
        let shard = self.shard(limit, counter)?;
        shard.get(counter).map(|state| policy.peek(state, now))
    }

    /// Forgets counters that are back to a fresh state, so that one-off users and IPs do not
    /// accumulate. Returns how many counters remain.
    pub fn sweep(&self, policies: &[Policy], now: Nanos) -> usize {
        let mut remaining = 0;
        for (shards, policy) in self.limits.iter().zip(policies) {
            for shard in &shards.0 {
                let mut shard = shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                shard.retain(|_, state| !policy.is_idle(state, now));
                remaining += shard.len();
            }
        }
        remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::ratelimit::Algorithm;

    #[test]
    fn counters_are_separate_and_swept_when_idle() {
        let policy = Policy::rate(Algorithm::TokenBucket, 2, 1_000_000_000, None).unwrap();
        let store = MemoryStore::new(1);
        assert!(matches!(
            store.acquire(0, &policy, "a", 10, 2),
            Outcome::Admitted { .. }
        ));
        assert!(matches!(
            store.acquire(0, &policy, "a", 10, 1),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            store.acquire(0, &policy, "b", 10, 1),
            Outcome::Admitted { .. }
        ));
        store.release(0, &policy, "a", 10, 10, 1);
        assert!(matches!(
            store.acquire(0, &policy, "a", 10, 1),
            Outcome::Admitted { .. }
        ));
        assert_eq!(store.sweep(&[policy], 10), 2);
        assert_eq!(store.sweep(&[policy], 10 + 2_000_000_000), 0);
        assert_eq!(store.peek(0, &policy, "a", 10), None);
        // A refused first request leaves nothing behind.
        assert!(matches!(
            store.acquire(0, &policy, "c", 10, 5),
            Outcome::Refused { .. }
        ));
        assert_eq!(store.sweep(&[policy], 10), 0);
    }
}
