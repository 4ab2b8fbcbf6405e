//! The periodic resync, spread evenly: every object is looked at again once per resync
//! interval, a slice of them each second, instead of a timer per object (kube-runtime's
//! scheduler kept about 7 MB for 10,000 of them in a heap profile) that would also fire in
//! one burst for all the objects a cold start reconciled together.

use std::hash::{Hash, Hasher};
use std::time::Duration;

/// How often the sweep runs: each run resyncs the objects whose turn it is.
pub const TICK: Duration = Duration::from_secs(1);

/// A catch-up round (every object judged again when what KMS says about keys changed) spreads
/// over this many ticks, so the controller's queue never holds more than a slice of them.
pub const CATCH_UP_TICKS: u64 = 10;

/// The number of ticks in one resync interval (at least 1).
pub fn ticks_per_round(interval: Duration) -> u64 {
    (interval.as_millis() / TICK.as_millis()).max(1) as u64
}

/// Whether the object with this uid is due at `tick`: each uid falls on one tick of every
/// round of `round` ticks, so each object is resynced once per round, and the objects spread
/// evenly over the round.
pub fn due(uid: &str, tick: u64, round: u64) -> bool {
    let round = round.max(1);
    // SipHash with fixed keys: the same slot for a uid across ticks (and restarts).
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut hasher);
    hasher.finish() % round == tick % round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_is_due_once_per_round_and_the_load_is_spread() {
        let round = ticks_per_round(Duration::from_secs(600));
        assert_eq!(round, 600);
        let uids: Vec<String> = (0..6000).map(|i| format!("uid-{i}")).collect();
        let mut per_tick = vec![0usize; round as usize];
        for uid in &uids {
            let ticks: Vec<u64> = (0..round).filter(|&t| due(uid, t, round)).collect();
            assert_eq!(ticks.len(), 1, "{uid}");
            // The same slot in the next round.
            assert!(due(uid, ticks[0] + round, round));
            per_tick[ticks[0] as usize] += 1;
        }
        // 10 per tick on average; no tick gets a burst.
        assert!(per_tick.iter().all(|&n| n <= 30), "{per_tick:?}");
    }

    #[test]
    fn a_short_interval_still_resyncs() {
        assert_eq!(ticks_per_round(Duration::from_millis(10)), 1);
        assert!(due("any", 7, 1));
        assert!(due("any", 7, 0));
    }
}
