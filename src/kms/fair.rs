//! A fair share of KMS for every tenant: a client-side rate limit and a cap on requests in
//! flight, handed out round-robin between the tenants (namespaces) that are waiting.
//!
//! The rate limit keeps a cold start of thousands of objects under the account's KMS request
//! quota instead of spending its retries on throttling. Round-robin keeps one noisy namespace
//! from delaying another: with `A` tenants waiting, a request waits for at most `A - 1` requests
//! of other tenants before its own turn (plus the requests already in flight), however many
//! requests the others have queued. Within a tenant, requests are served in order.
//!
//! A tenant may also have only so many requests waiting at once, and all tenants together only
//! so many waiting or in flight: beyond that, a request is turned away at once
//! ([`KmsErrorKind::Deferred`]) instead of waiting, so reconciles that wait for KMS (a slow or
//! unreachable KMS, or one namespace's backlog) never occupy the reconcile slots that work
//! needing no KMS call (drift repair with a cached key, refusals) needs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, KmsErrorKind, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use crate::binding::EncryptionContext;

/// The tenant of the controller's own calls (alias resolution, the `--check-kms-key` probe).
pub const OPERATOR: &str = "";

#[derive(Default)]
struct State {
    /// Waiting requests per tenant, oldest first.
    queues: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
    /// Tenants with waiting requests, in the order of their next turn.
    turns: VecDeque<String>,
    in_flight: usize,
    /// When the next request may start (rate limit).
    next_slot: Option<Instant>,
    /// A task is asleep until `next_slot` to hand it out.
    wakeup_pending: bool,
    granted: u64,
}

/// Waiters that have not given up.
fn live(queue: &VecDeque<oneshot::Sender<Permit>>) -> usize {
    queue.iter().filter(|w| !w.is_closed()).count()
}

impl State {
    /// Requests in flight or waiting.
    fn held(&self) -> usize {
        self.in_flight + self.queues.values().map(live).sum::<usize>()
    }
}

/// The scheduler itself; shared by the requests it admits.
pub struct Gate {
    interval: Duration,
    max_in_flight: usize,
    max_waiting_per_tenant: usize,
    max_holders: usize,
    state: Mutex<State>,
    /// Signalled whenever a request leaves the gate, so that turned-away work can come back.
    room: tokio::sync::Notify,
}

/// The tenant already has its share of requests waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The right to make one request; the slot frees when it drops.
pub struct Permit {
    gate: Arc<Gate>,
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.gate.lock().in_flight -= 1;
            Gate::dispatch(&self.gate);
            self.gate.room.notify_one();
        }
    }
}

impl Gate {
    /// At most `per_second` requests per second, evenly spaced (0 or less: no rate limit), at
    /// most `max_in_flight` at once, at most `max_waiting_per_tenant` of one tenant waiting,
    /// and at most `max_holders` waiting or in flight in all (each 0: no limit). The operator's
    /// own requests are never turned away.
    pub fn new(
        per_second: f64,
        max_in_flight: usize,
        max_waiting_per_tenant: usize,
        max_holders: usize,
    ) -> Arc<Self> {
        let interval = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        Arc::new(Gate {
            interval,
            max_in_flight,
            max_waiting_per_tenant,
            max_holders,
            state: Mutex::new(State::default()),
            room: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Requests admitted so far.
    pub fn granted(&self) -> u64 {
        self.lock().granted
    }

    /// Requests waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.lock().queues.values().map(live).sum()
    }

    fn has_capacity(&self, state: &State) -> bool {
        self.max_in_flight == 0 || state.in_flight < self.max_in_flight
    }

    /// When the next rate slot comes, if it has not come yet.
    fn slot_pending(&self, state: &State) -> Option<Instant> {
        state
            .next_slot
            .filter(|slot| !self.interval.is_zero() && *slot > Instant::now())
    }

    /// Takes the next rate slot (the caller checked that it has come).
    fn take_slot(&self, state: &mut State) {
        if !self.interval.is_zero() {
            let now = Instant::now();
            let start = state.next_slot.map_or(now, |slot| slot.max(now));
            state.next_slot = Some(start + self.interval);
        }
    }

    /// Why `tenant` would be turned away now, if it would.
    fn busy(&self, state: &State, tenant: &str) -> Option<Busy> {
        if tenant == OPERATOR {
            return None;
        }
        let waiting = state.queues.get(tenant).map_or(0, live);
        if self.max_waiting_per_tenant > 0 && waiting >= self.max_waiting_per_tenant {
            return Some(Busy);
        }
        if self.max_holders > 0 && state.held() >= self.max_holders {
            return Some(Busy);
        }
        None
    }

    /// How many more requests the gate would let in now (`usize::MAX` without a limit).
    pub fn room(&self) -> usize {
        if self.max_holders == 0 {
            return usize::MAX;
        }
        self.max_holders.saturating_sub(self.lock().held())
    }

    /// Resolves when a request has left the gate since the last call (there may be room).
    pub async fn room_freed(&self) {
        self.room.notified().await;
    }

    /// Waits for `tenant`'s turn, or says at once that the tenant has its share waiting, or
    /// that the gate holds as many requests as it may.
    pub async fn try_acquire(self: &Arc<Self>, tenant: &str) -> Result<Permit, Busy> {
        let busy = self.busy(&self.lock(), tenant);
        match busy {
            Some(busy) => Err(busy),
            None => Ok(self.acquire(tenant).await),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Waits for `tenant`'s turn. Dropping the future gives the turn up.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Permit {
        let waiter = {
            let mut state = self.lock();
            if state.turns.is_empty()
                && self.has_capacity(&state)
                && self.slot_pending(&state).is_none()
            {
                self.take_slot(&mut state);
                state.in_flight += 1;
                state.granted += 1;
                return Permit {
                    gate: Arc::clone(self),
                    armed: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.queues.entry(tenant.to_owned()).or_default();
            let first = queue.is_empty();
            queue.push_back(tx);
            if first {
                state.turns.push_back(tenant.to_owned());
            }
            rx
        };
        Gate::dispatch(self);
        match waiter.await {
            Ok(permit) => permit,
            // The gate never drops a live waiter's sender; if it somehow did, go again.
            Err(_) => Box::pin(self.acquire(tenant)).await,
        }
    }

    /// Hands out every turn that has capacity and a rate slot now.
    fn dispatch(gate: &Arc<Gate>) {
        loop {
            let mut state = gate.lock();
            if state.turns.is_empty() || !gate.has_capacity(&state) {
                return;
            }
            if let Some(slot) = gate.slot_pending(&state) {
                if !state.wakeup_pending {
                    state.wakeup_pending = true;
                    let gate = Arc::clone(gate);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(slot).await;
                        gate.lock().wakeup_pending = false;
                        Gate::dispatch(&gate);
                    });
                }
                return;
            }
            let Some(waiter) = next_waiter(&mut state) else {
                return;
            };
            gate.take_slot(&mut state);
            state.in_flight += 1;
            state.granted += 1;
            drop(state);
            let permit = Permit {
                gate: Arc::clone(gate),
                armed: true,
            };
            if let Err(mut permit) = waiter.send(permit) {
                // It gave up in the instant between the check and now: free the slot here, so
                // the loop hands it to the next waiter.
                permit.armed = false;
                gate.lock().in_flight -= 1;
            }
        }
    }
}

/// The oldest live waiter of the tenant whose turn it is; its tenant goes to the back of the
/// line if it has more. Waiters that gave up are dropped on the way.
fn next_waiter(state: &mut State) -> Option<oneshot::Sender<Permit>> {
    while let Some(tenant) = state.turns.pop_front() {
        let Some(queue) = state.queues.get_mut(&tenant) else {
            continue;
        };
        while queue.front().is_some_and(oneshot::Sender::is_closed) {
            queue.pop_front();
        }
        let waiter = queue.pop_front();
        if queue.is_empty() {
            state.queues.remove(&tenant);
        } else {
            state.turns.push_back(tenant);
        }
        if waiter.is_some() {
            return waiter;
        }
    }
    None
}

/// A [`Kms`] behind a [`Gate`].
pub struct FairKms<K> {
    inner: K,
    gate: Arc<Gate>,
}

impl<K> FairKms<K> {
    pub fn new(inner: K, gate: Arc<Gate>) -> Self {
        FairKms { inner, gate }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl<K: Kms> Kms for FairKms<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.generate_data_key(key_id, context).await
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        let Ok(_permit) = self.gate.try_acquire(request.tenant).await else {
            return Err(KmsError::new(
                KmsErrorKind::Deferred,
                "kms:Decrypt",
                request.key_id,
                "",
            ));
        };
        if !request.should_proceed() {
            return Err(KmsError::new(
                KmsErrorKind::Cancelled,
                "kms:Decrypt",
                request.key_id,
                "",
            ));
        }
        self.inner.decrypt(request).await
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.public_key(key_id).await
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.describe_key(key_id).await
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.re_encrypt(request).await
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.last_rotation(key_id).await
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<KeyFacts, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.describe_key_as(key_id, principal).await
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<Option<u64>, KmsError> {
        let _permit = self.gate.acquire(OPERATOR).await;
        self.inner.last_rotation_as(key_id, principal).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_rate() {
        let gate = Gate::new(10.0, 0, 0, 0);
        let start = Instant::now();
        for _ in 0..11 {
            drop(gate.acquire("a").await);
        }
        // 11 requests at 10/s: the last one starts 1 s after the first (virtual time).
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let gate = Gate::new(0.0, 0, 0, 0);
        let start = Instant::now();
        let permits: Vec<Permit> =
            futures::future::join_all((0..5).map(|_| gate.acquire("a"))).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(permits.len(), 5);
    }

    /// Grants in order, as (tenant, index within the tenant).
    async fn grant_order(gate: Arc<Gate>, waiting: &[(&'static str, usize)]) -> Vec<&'static str> {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(tenant, count) in waiting {
            for _ in 0..count {
                let (gate, order) = (gate.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire(tenant).await;
                    order.lock().unwrap().push(tenant);
                }));
                // Queue in a known order.
                tokio::task::yield_now().await;
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        order.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tenant_waits_one_turn_however_long_the_noisy_queue() {
        let gate = Gate::new(10.0, 0, 0, 0);
        let order = grant_order(gate, &[("noisy", 500), ("quiet", 1)]).await;
        let quiet = order.iter().position(|t| *t == "quiet").unwrap();
        // The noisy tenant's first request went straight through; then turns alternate.
        assert!(quiet <= 2, "quiet was served after {quiet} noisy requests");
        assert_eq!(order.len(), 501);
    }

    #[tokio::test(start_paused = true)]
    async fn turns_alternate_between_waiting_tenants() {
        let gate = Gate::new(100.0, 0, 0, 0);
        let order = grant_order(gate, &[("a", 4), ("b", 4), ("c", 4)]).await;
        // After a's first (immediate) grant, every window of three holds each tenant once.
        for window in order[1..10].chunks(3) {
            let mut w = window.to_vec();
            w.sort_unstable();
            assert_eq!(w, ["a", "b", "c"], "{order:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_in_flight_at_once() {
        let gate = Gate::new(0.0, 3, 0, 0);
        let current = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (gate, current, peak) = (gate.clone(), current.clone(), peak.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire(if i % 2 == 0 { "a" } else { "b" }).await;
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    current.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(gate.granted(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_has_only_its_share_waiting() {
        let gate = Gate::new(1.0, 0, 2, 0);
        let first = gate.try_acquire("a").await.unwrap();
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.try_acquire("a").await.is_ok() })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 2);
        assert_eq!(
            gate.try_acquire("a").await.err(),
            Some(Busy),
            "a third waits no more"
        );
        // Another tenant, and the operator, still queue.
        let other = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.try_acquire("b").await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 3);
        drop(first);
        for task in waiting {
            assert!(task.await.unwrap());
        }
        assert!(other.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_only_so_many_requests() {
        let gate = Gate::new(0.0, 1, 0, 3);
        let first = gate.try_acquire("a").await.unwrap();
        let waiting: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|t| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.try_acquire(t).await.is_ok() })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!((gate.in_flight(), gate.waiting()), (1, 2));
        assert_eq!(
            gate.try_acquire("d").await.err(),
            Some(Busy),
            "one in flight, two waiting"
        );
        // The controller's own requests still queue.
        let operator = {
            let gate = gate.clone();
            tokio::spawn(async move { drop(gate.acquire(OPERATOR).await) })
        };
        drop(first);
        for task in waiting {
            assert!(task.await.unwrap());
        }
        operator.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_costs_no_slot() {
        let gate = Gate::new(1.0, 0, 0, 0);
        let first = gate.acquire("a").await;
        // Ten waiters give up before their turn.
        for _ in 0..10 {
            let _ = tokio::time::timeout(Duration::from_millis(1), gate.acquire("a")).await;
        }
        let start = Instant::now();
        drop(first);
        drop(gate.acquire("b").await);
        // The next slot was 1 s after the first grant; the ten abandoned waiters took none.
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1) - Duration::from_millis(10)
        );
        assert_eq!(gate.waiting(), 0);
        assert_eq!(gate.granted(), 2);
    }
}
