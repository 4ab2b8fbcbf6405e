//! When an object that failed may make KMS requests again.
//!
//! Two bounds, both kept across spec updates, since a tenant can update a bad object as often
//! as it likes and each update would otherwise be a new attempt:
//!
//! - **Per object** (by uid): after its `n`th failure in a row an object waits
//!   [`crate::reconcile::backoff_delay`] (5 s doubling to 5 min). A new spec (perhaps a fix) is
//!   tried before that, but never sooner than [`SPEC_CHANGE_GAP`] after the last failure. An
//!   object that failed because KMS was down or throttling is not held back otherwise: it is
//!   retried as soon as KMS answers again, and its drift repaired from a cached data key.
//! - **Per namespace**: a failure budget. Each failed attempt the tenant's objects cause (not
//!   one KMS being down or throttling causes) takes a token; a failed object's next attempt
//!   needs one to be there (a success takes none). Tokens come back at one per
//!   [`BUDGET_REFILL`], up to [`BUDGET_BURST`]: a namespace whose objects keep failing retries
//!   one every 5 s at most, however many objects it has or how often it changes them, and only
//!   its own objects wait for it. A new object is tried at once.
//!
//! Pure: time is passed in.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The least time between a failure and the attempt of a changed spec.
pub const SPEC_CHANGE_GAP: Duration = Duration::from_secs(5);
/// A namespace's failure budget: failed attempts in a burst...
pub const BUDGET_BURST: f64 = 10.0;
/// ... and then one per this long.
pub const BUDGET_REFILL: Duration = Duration::from_secs(5);

type Key = (String, String);

#[derive(Debug, Clone)]
struct Failing {
    uid: String,
    /// Failures in a row.
    failures: u32,
    /// The spec (generation) that failed last.
    generation: Option<i64>,
    failed_at: Instant,
    retry_at: Instant,
    /// The object caused the failure (not KMS being down or throttling).
    charged: bool,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn now(self, now: Instant) -> f64 {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / BUDGET_REFILL.as_secs_f64();
        (self.tokens + refilled).min(BUDGET_BURST)
    }

    /// When the budget holds a whole token.
    fn token_at(self, now: Instant) -> Instant {
        let tokens = self.now(now);
        if tokens >= 1.0 {
            now
        } else {
            now + BUDGET_REFILL.mul_f64(1.0 - tokens)
        }
    }
}

/// The object an attempt is for.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
}

impl Attempt<'_> {
    fn key(&self) -> Key {
        (self.namespace.to_owned(), self.name.to_owned())
    }
}

#[derive(Debug, Default)]
pub struct Retries {
    failing: HashMap<Key, Failing>,
    budgets: HashMap<String, Budget>,
}

impl Retries {
    pub fn new() -> Self {
        Retries::default()
    }

    /// Whether `attempt` may make KMS requests at `now`; else when it may. An object that has
    /// not failed (or a new object of the same name) may.
    pub fn may_attempt(&self, attempt: &Attempt<'_>, now: Instant) -> Result<(), Instant> {
        let Some(f) = self
            .failing
            .get(&attempt.key())
            .filter(|f| f.uid == attempt.uid)
        else {
            return Ok(());
        };
        if !f.charged {
            // KMS was down or throttling: whatever brings it back (KMS answering again, drift
            // repair from a cached data key) may try at once; a new spec after the gap.
            let at = if f.generation != attempt.generation {
                f.failed_at + SPEC_CHANGE_GAP
            } else {
                now
            };
            return if at <= now { Ok(()) } else { Err(at) };
        }
        let own = if now >= f.retry_at {
            now
        } else if f.generation != attempt.generation {
            (f.failed_at + SPEC_CHANGE_GAP).min(f.retry_at)
        } else {
            f.retry_at
        };
        let budget = self
            .budgets
            .get(attempt.namespace)
            .map_or(now, |b| b.token_at(now));
        let at = own.max(budget);
        if at <= now { Ok(()) } else { Err(at) }
    }

    /// Records a failure of `attempt` at `now`; `charged`: the tenant's object caused it (it
    /// takes a token of the namespace's budget). Returns how long the object waits: its
    /// backoff, with `jitter` (0..1).
    pub fn failed(
        &mut self,
        attempt: &Attempt<'_>,
        charged: bool,
        jitter: f64,
        now: Instant,
    ) -> Duration {
        let failures = match self.failing.get(&attempt.key()) {
            Some(f) if f.uid == attempt.uid => f.failures.saturating_add(1),
            _ => 1,
        };
        let delay = crate::reconcile::backoff_delay(failures, jitter);
        self.failing.insert(
            attempt.key(),
            Failing {
                uid: attempt.uid.to_owned(),
                failures,
                generation: attempt.generation,
                failed_at: now,
                retry_at: now + delay,
                charged,
            },
        );
        if charged {
            let budget = self
                .budgets
                .entry(attempt.namespace.to_owned())
                .or_insert(Budget {
                    tokens: BUDGET_BURST,
                    at: now,
                });
            // A debt of at most one burst: attempts that were under way together.
            budget.tokens = (budget.now(now) - 1.0).max(-BUDGET_BURST);
            budget.at = now;
        }
        delay
    }

    /// The object succeeded: its backoff is over (the namespace's budget refills by itself).
    pub fn succeeded(&mut self, namespace: &str, name: &str) {
        self.failing
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Whether the object is waiting out a backoff after a failure.
    pub fn backing_off(&self, namespace: &str, name: &str) -> bool {
        self.failing
            .contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// Objects in backoff.
    pub fn failing(&self) -> usize {
        self.failing.len()
    }

    /// Forgets objects for which `exists(namespace, name)` is false, and budgets that are full
    /// again.
    pub fn retain(&mut self, exists: impl Fn(&str, &str) -> bool, now: Instant) {
        self.failing.retain(|(ns, name), _| exists(ns, name));
        self.budgets.retain(|_, b| b.now(now) < BUDGET_BURST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt<'a>(name: &'a str, generation: i64) -> Attempt<'a> {
        Attempt {
            namespace: "ns",
            name,
            uid: "u",
            generation: Some(generation),
        }
    }

    #[test]
    fn a_failed_object_waits_its_backoff_and_a_new_spec_waits_the_gap() {
        let t0 = Instant::now();
        let mut retries = Retries::new();
        assert_eq!(retries.may_attempt(&attempt("a", 1), t0), Ok(()));
        let delay = retries.failed(&attempt("a", 1), true, 0.0, t0);
        assert_eq!(delay, Duration::from_secs(5));
        for _ in 0..4 {
            retries.failed(&attempt("a", 1), true, 0.0, t0);
        }
        // Fifth failure: 80 s; the same spec waits for it.
        assert_eq!(
            retries.may_attempt(&attempt("a", 1), t0 + Duration::from_secs(10)),
            Err(t0 + Duration::from_secs(80))
        );
        // A new spec is tried 5 s after the failure, not at once and not after 80 s.
        assert_eq!(
            retries.may_attempt(&attempt("a", 2), t0 + Duration::from_secs(1)),
            Err(t0 + SPEC_CHANGE_GAP)
        );
        assert_eq!(
            retries.may_attempt(&attempt("a", 2), t0 + Duration::from_secs(5)),
            Ok(())
        );
        // A new object of the same name (another uid) starts afresh.
        let recreated = Attempt {
            uid: "u2",
            ..attempt("a", 1)
        };
        assert_eq!(retries.may_attempt(&recreated, t0), Ok(()));
        retries.succeeded("ns", "a");
        assert!(!retries.backing_off("ns", "a"));
    }

    #[test]
    fn a_namespace_that_keeps_failing_retries_one_object_per_refill() {
        let t0 = Instant::now();
        let mut retries = Retries::new();
        // 20 objects, each tried once and updated every 100 ms for two minutes.
        let mut attempts_at = Vec::new();
        for step in 0..1200 {
            let now = t0 + Duration::from_millis(100 * step);
            for i in 0..20 {
                let name = format!("bad-{i}");
                let a = attempt(&name, step as i64);
                if retries.may_attempt(&a, now).is_ok() {
                    attempts_at.push(now - t0);
                    retries.failed(&a, true, 0.0, now);
                }
            }
        }
        let first = attempts_at.iter().filter(|t| t.is_zero()).count();
        assert_eq!(first, 20, "new objects are tried at once");
        // Then the debt of those 20 failures is paid, and one retry comes every 5 s.
        let late = attempts_at
            .iter()
            .filter(|t| **t >= Duration::from_secs(60))
            .count();
        assert!((11..=13).contains(&late), "{attempts_at:?}");
        // Another namespace is not affected.
        let other = Attempt {
            namespace: "other",
            ..attempt("x", 1)
        };
        retries.failed(&other, true, 0.0, t0);
        assert_eq!(
            retries.may_attempt(&other, t0 + Duration::from_secs(5)),
            Ok(())
        );
        // Failures the tenant did not cause (KMS down) cost the budget nothing, and hold the
        // object back only from trying a new spec at once.
        let mut retries = Retries::new();
        for i in 0..100 {
            let name = format!("o{i}");
            retries.failed(&attempt(&name, 1), false, 0.0, t0);
        }
        retries.failed(&attempt("p", 1), true, 0.0, t0);
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(retries.may_attempt(&attempt("p", 2), soon), Ok(()));
        assert_eq!(retries.may_attempt(&attempt("o1", 1), t0), Ok(()));
        assert_eq!(
            retries.may_attempt(&attempt("o1", 2), t0),
            Err(t0 + SPEC_CHANGE_GAP)
        );
    }

    #[test]
    fn full_budgets_and_deleted_objects_are_forgotten() {
        let t0 = Instant::now();
        let mut retries = Retries::new();
        retries.failed(&attempt("a", 1), true, 0.0, t0);
        retries.retain(|_, _| false, t0);
        assert_eq!(retries.failing(), 0);
        assert_eq!(retries.budgets.len(), 1, "not refilled yet");
        retries.retain(|_, _| false, t0 + BUDGET_REFILL);
        assert!(retries.budgets.is_empty());
    }
}
