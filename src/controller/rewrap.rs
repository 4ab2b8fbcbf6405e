//! Key rotation in the cluster: moving stale values to their current key and key material with
//! KMS `ReEncrypt`, off the reconcile path.
//!
//! A reconcile that finds an object's values stale (see [`crate::rotation`]) and its policy
//! `Rewrap` only queues it here. A single worker takes turns per data key between namespaces
//! (one `ReEncrypt` for one namespace's object, then one for the next namespace's), at its own
//! rate ([`Pacer`]), so a rotation of 10,000 objects never holds a reconcile slot and an object
//! of many data keys never holds up another namespace's. For each object it reads the object
//! whole, plans with [`rotation::plan_rewrap`] (one `ReEncrypt` per data key), keeps the moved
//! values until all are moved, patches only those under its own field manager, and writes a
//! status that says the Secret is still right for the new spec, so no `Decrypt` and no Secret
//! write follow. Nothing is kept but in memory: after a restart, the resync finds what is still
//! stale.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::sync::lock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::time::Instant;

use super::{ApiError, ClusterApi, Reconciler, WaitingRoom, WriteError};
use crate::api::{EncryptedSecret, RewrapRecord, RotationPolicy};
use crate::envelope::Envelope;
use crate::kms::Kms;
use crate::metrics::ResultLabels;
use crate::open::{self, Decoded};
use crate::reconcile::{self, EventSpec};
use crate::rotation::{self, RewrapPlan};
use crate::time::{now_rfc3339, unix_now};
use crate::wrapping::ItemKeys;

/// How long an object whose re-wrap failed waits before it is tried again.
pub const REWRAP_RETRY: Duration = Duration::from_secs(900);

pub use crate::rotation::{REWRAP_FAILED, REWRAP_REVERTED};

type Key = (String, String);

/// What the rotation worker shares with the reconciles of one scope.
pub struct Rotation {
    /// The policy for objects that name none and no GitOps tool applies.
    pub default_policy: RotationPolicy,
    /// Objects waiting to be re-wrapped, round-robin between namespaces.
    pub queue: WaitingRoom,
    /// The object being re-wrapped: its reconciles stand aside until it is done.
    in_progress: Mutex<HashSet<Key>>,
    /// Objects whose last re-wrap failed, and when.
    failed: Mutex<HashMap<Key, Instant>>,
    /// Re-wraps under way, at most one per namespace, in the order of their next turn.
    jobs: Mutex<VecDeque<Job>>,
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

impl Rotation {
    pub fn new(default_policy: RotationPolicy) -> Self {
        Rotation {
            default_policy,
            queue: WaitingRoom::new(),
            in_progress: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            jobs: Mutex::new(VecDeque::new()),
        }
    }

    /// The object's policy: its own, else `Report` for what a GitOps tool applies, else the
    /// default.
    pub fn policy(&self, es: &EncryptedSecret) -> (RotationPolicy, rotation::PolicySource) {
        let labels = es.metadata.labels.iter().flat_map(|l| l.keys());
        let annotations = es.metadata.annotations.iter().flat_map(|a| a.keys());
        rotation::rotation_policy(
            es.spec.rotation.as_ref().and_then(|r| r.policy),
            labels.chain(annotations).map(String::as_str),
            self.default_policy,
        )
    }

    /// Queues an object for a re-wrap, unless its last one failed less than [`REWRAP_RETRY`]
    /// ago.
    pub fn want(&self, namespace: &str, name: &str) {
        let mut failed = lock(&self.failed);
        if let Some(at) = failed.get(&key(namespace, name)) {
            if at.elapsed() < REWRAP_RETRY {
                return;
            }
            failed.remove(&key(namespace, name));
        }
        self.queue.defer(namespace, name);
    }

    pub fn in_progress(&self, namespace: &str, name: &str) -> bool {
        lock(&self.in_progress).contains(&key(namespace, name))
    }

    /// Forgets objects for which `exists(namespace, name)` is false.
    pub fn retain(&self, exists: impl Fn(&str, &str) -> bool) {
        self.queue.retain(&exists);
        lock(&self.failed).retain(|(ns, name), _| exists(ns, name));
    }
}

/// Spaces the worker's `ReEncrypt` requests: at most `per_second` on average.
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        let interval = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            next: None,
        }
    }

    /// Waits for the next request's turn.
    pub async fn turn(&mut self) {
        let now = Instant::now();
        let at = self.next.filter(|&next| next > now).unwrap_or(now);
        tokio::time::sleep_until(at).await;
        self.next = Some(at + self.interval);
    }
}

/// One envelope v1 value to seal again as v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Upgrade {
    pub item: String,
    pub scope: crate::binding::Scope,
    /// The key id to seal it under.
    pub target: String,
}

/// What one re-wrap attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrapped {
    /// Values moved (how many).
    Moved(usize),
    /// Nothing to do, or not now (changed, not settled, facts unknown).
    Skipped,
    /// Stale again after a move to the same target: reported, not moved.
    Reverted,
    /// KMS or the API refused: reported, tried again after [`REWRAP_RETRY`].
    Failed,
}

/// One object's re-wrap in progress: what was read and planned when it started, and the values
/// moved so far (one `ReEncrypt` per turn; patched into the object once all are moved).
pub(super) struct Job {
    key: Key,
    es: EncryptedSecret,
    envelopes: BTreeMap<String, Box<Envelope>>,
    groups: Vec<rotation::RewrapGroup>,
    target: String,
    /// Groups moved so far.
    moved: usize,
    values: BTreeMap<String, String>,
    now: u64,
}

/// What one turn of the re-wrap worker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Nothing is queued or under way.
    Idle,
    /// One data key moved; its object has more to move.
    Moved,
    /// An object is done (or left): its reconciles stood aside meanwhile.
    Done(Key, Rewrapped),
}

/// How a job's step ended.
enum Step {
    More(Box<Job>),
    Done(Rewrapped),
}

impl<K: Kms, A: ClusterApi> Reconciler<K, A> {
    /// One turn of the re-wrap worker for this scope. Objects of namespaces with nothing under
    /// way start first (reading the object and planning costs no KMS request); then the job
    /// whose turn it is moves one data key. Jobs take turns per data key, one per namespace at
    /// a time, so another namespace's re-wrap waits for at most one request of each namespace
    /// ahead of it, however many data keys their objects have.
    pub async fn rewrap_turn(&self, pacer: &mut Pacer) -> Turn {
        loop {
            let next = {
                let jobs = lock(&self.rotation.jobs);
                self.rotation
                    .queue
                    .next_where(|ns| !jobs.iter().any(|j| j.key.0 == ns))
            };
            let Some((namespace, name)) = next else {
                break;
            };
            lock(&self.rotation.in_progress).insert(key(&namespace, &name));
            match self.start(&namespace, &name).await {
                Ok(Step::More(job)) => lock(&self.rotation.jobs).push_back(*job),
                Ok(Step::Done(done)) => return self.finish(key(&namespace, &name), Ok(done)),
                Err(e) => return self.finish(key(&namespace, &name), Err(e)),
            }
        }
        let Some(job) = lock(&self.rotation.jobs).pop_front() else {
            return Turn::Idle;
        };
        let job_key = job.key.clone();
        match self.step(job, pacer).await {
            Ok(Step::More(job)) => {
                lock(&self.rotation.jobs).push_back(*job);
                Turn::Moved
            }
            Ok(Step::Done(done)) => self.finish(job_key, Ok(done)),
            Err(e) => self.finish(job_key, Err(e)),
        }
    }

    /// An object's re-wrap is over: its reconciles may run again.
    fn finish(&self, job_key: Key, result: Result<Rewrapped, ApiError>) -> Turn {
        lock(&self.rotation.in_progress).remove(&job_key);
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                let (namespace, name) = &job_key;
                tracing::warn!(namespace, name, error = %e.summary(), "re-wrap stopped: the Kubernetes API failed");
                lock(&self.rotation.failed).insert(job_key.clone(), Instant::now());
                Rewrapped::Failed
            }
        };
        Turn::Done(job_key, done)
    }

    /// Reads the object whole and plans its re-wrap: a job, or what happened instead.
    async fn start(&self, namespace: &str, name: &str) -> Result<Step, ApiError> {
        let Some(es) = self.api.encrypted_secret(namespace, name).await? else {
            return Ok(Step::Done(Rewrapped::Skipped));
        };
        // Only an object whose Secret is right for its spec: the status then stays true for
        // the re-wrapped spec, which opens to the same values.
        let fingerprint = reconcile::fingerprint(&es);
        let settled = es.status.as_ref().is_some_and(|s| {
            s.applied_fingerprint.as_deref() == Some(fingerprint.as_str())
                && s.observed_generation == es.metadata.generation
        }) && reconcile::ready_condition(es.status.as_ref())
            .is_some_and(|c| c.status == "True");
        if !settled || self.rotation.policy(&es).0 != RotationPolicy::Rewrap {
            return Ok(Step::Done(Rewrapped::Skipped));
        }
        let keys = open::item_keys(&es);
        if self
            .admission
            .check_keys(&es, keys.as_ref(), super::admission::Items::InObject)
            .is_err()
        {
            return Ok(Step::Done(Rewrapped::Skipped));
        }
        let mut envelopes = BTreeMap::new();
        for (item, value) in &es.spec.encrypted_data {
            if let Ok(Decoded::Envelope(envelope)) = open::decode_item(value) {
                envelopes.insert(item.clone(), envelope);
            }
        }
        let headers: Vec<(&str, &crate::envelope::Header)> = envelopes
            .iter()
            .map(|(i, e)| (i.as_str(), &e.header))
            .collect();
        let desired = self.desired_key(&es).ok().flatten();
        let facts = self.known_facts(&es);
        let last = es
            .status
            .as_ref()
            .and_then(|s| s.rewrapped.as_ref())
            .map(|r| r.target.as_str());
        let now = unix_now();
        let plan = rotation::plan_rewrap(&headers, desired.as_deref(), &facts, last, now);
        drop(headers);
        drop(facts);
        match plan {
            None => Ok(Step::Done(Rewrapped::Skipped)),
            Some(RewrapPlan::Nothing) => {
                // Stale values it cannot move (v1, RSA): reported as they are.
                let verdict = self.key_current_with(&es, keys.as_ref().ok(), false);
                self.write_key_current(&es, verdict).await?;
                Ok(Step::Done(Rewrapped::Skipped))
            }
            Some(RewrapPlan::Reverted { values, target }) => {
                let message = format!(
                    "{values} value(s) are stale again after kmseal re-wrapped them to {target}: something set them back (a GitOps tool re-applying them from Git?). kmseal does not re-wrap them again; run kmseal rewrap where they come from, or set spec.rotation.policy: Report"
                );
                self.report_rewrap(&es, REWRAP_REVERTED, message, "reverted", values)
                    .await?;
                Ok(Step::Done(Rewrapped::Reverted))
            }
            Some(RewrapPlan::Move { groups, target }) => Ok(Step::More(Box::new(Job {
                key: key(namespace, name),
                es,
                envelopes,
                groups,
                target,
                moved: 0,
                values: BTreeMap::new(),
                now,
            }))),
        }
    }

    /// Moves the job's next data key (one paced `ReEncrypt`); after its last one, patches the
    /// moved values into the object and reports the move.
    async fn step(&self, mut job: Job, pacer: &mut Pacer) -> Result<Step, ApiError> {
        let (namespace, name) = job.key.clone();
        pacer.turn().await;
        if !self.api.is_current(&job.es) {
            return Ok(Step::Done(Rewrapped::Skipped));
        }
        let group = &job.groups[job.moved];
        // The object's own identity moves its values, as it opens them.
        let moved = match self.principal_for(&job.es).await {
            Ok(principal) => crate::rotation::move_data_key(
                &self.kms,
                &group.header,
                &namespace,
                &name,
                &group.target.key_arn,
                job.now,
                &principal,
            )
            .await
            .map_err(|e| {
                tracing::warn!(namespace, name, error = %e, "re-wrap failed");
                e.tenant_message()
            }),
            Err(e) => {
                tracing::warn!(namespace, name, error = %e, "re-wrap failed: no identity");
                Err(e.to_string())
            }
        };
        let header = match moved {
            Ok(header) => header,
            Err(tenant_message) => {
                let message = format!(
                    "moving {} value(s) to key {} with kms:ReEncrypt failed: {}; they still open and the Secret is unchanged; kmseal tries again in {} min",
                    group.items.len(),
                    group.target.key_arn,
                    tenant_message,
                    REWRAP_RETRY.as_secs() / 60
                );
                let count = job.groups.iter().map(|g| g.items.len()).sum();
                self.report_rewrap(&job.es, REWRAP_FAILED, message, "failed", count)
                    .await?;
                lock(&self.rotation.failed).insert(job.key.clone(), Instant::now());
                return Ok(Step::Done(Rewrapped::Failed));
            }
        };
        for item in &group.items {
            let Some(envelope) = job.envelopes.get(item) else {
                continue;
            };
            // Only the wrapping changes: the nonce and ciphertext stay byte for byte.
            match envelope.rewrapped(&header) {
                Ok(bytes) => {
                    job.values.insert(item.clone(), BASE64.encode(bytes));
                }
                Err(_) => return Ok(Step::Done(Rewrapped::Skipped)),
            }
        }
        job.moved += 1;
        if job.moved < job.groups.len() {
            return Ok(Step::More(Box::new(job)));
        }
        self.complete(job).await.map(Step::Done)
    }

    /// Patches a job's moved values into its object, writes the status that says the Secret
    /// is right for the new spec, and tells the tenant.
    async fn complete(&self, job: Job) -> Result<Rewrapped, ApiError> {
        let Job {
            es,
            groups,
            target,
            values,
            key: (namespace, name),
            ..
        } = job;
        // The new values must pass what every reconcile checks: the key policy above all.
        let mut moved = es.clone();
        moved.spec.encrypted_data.extend(values.clone());
        let moved_keys = open::item_keys(&moved);
        if self
            .admission
            .check_keys(
                &moved,
                moved_keys.as_ref(),
                super::admission::Items::InObject,
            )
            .is_err()
        {
            return Ok(Rewrapped::Skipped);
        }
        let patched = match self.api.patch_values(&es, &values).await {
            Ok(patched) => patched,
            // Changed or deleted meanwhile: its watch event brings a reconcile, which judges
            // it again.
            Err(WriteError::Conflict | WriteError::Gone) => return Ok(Rewrapped::Skipped),
            Err(WriteError::Api(e)) => return Err(e),
        };
        let count = values.len();
        let record = RewrapRecord {
            target: target.clone(),
            time: now_rfc3339(),
            values: i64::try_from(count).unwrap_or(i64::MAX),
        };
        let patched_keys = open::item_keys(&patched).ok();
        let mut from: Vec<&str> = groups.iter().map(|g| g.header.key_arn.as_str()).collect();
        from.sort_unstable();
        from.dedup();
        let status = reconcile::rewrapped_status(
            es.status.clone().unwrap_or_default(),
            &patched,
            &patched_keys
                .as_ref()
                .map(|k| k.envelope_keys())
                .unwrap_or_default(),
            &from,
            record,
        );
        let status = reconcile::with_key_current(
            status,
            self.key_current(&patched, patched_keys.as_ref().into()),
        );
        self.api.apply_status(&patched, &status).await?;
        self.recent.wrote_status(&patched, &status);
        let event = EventSpec {
            warning: false,
            reason: "Rewrapped",
            note: format!(
                "moved {count} value(s) from {} to {target} ({}) with kms:ReEncrypt; the Secret is unchanged",
                from.join(", "),
                groups[0].reason
            ),
        };
        self.publish(&patched, &event).await;
        tracing::info!(namespace, name, values = count, target = %target, "values re-wrapped");
        self.metrics
            .rewrapped_values
            .get_or_create(&ResultLabels {
                result: "rewrapped",
            })
            .inc_by(count as u64);
        Ok(Rewrapped::Moved(count))
    }

    /// The envelope v1 values of an object whose policy is `Rewrap`, to seal again as v2 while
    /// a reconcile holds their plaintext (v1 authenticates its wrapping, so `ReEncrypt` cannot
    /// move it): each under the key the object names, else its own key. `None`: nothing to
    /// do, or the object was re-wrapped before and has v1 values again (they were set back:
    /// at most one upgrade per object, no loop).
    /// `keys`: the items' keys as the reconcile read them; an object they show no v1 value in
    /// is not decoded again.
    pub(super) fn v1_upgrade_plan(
        &self,
        es: &EncryptedSecret,
        keys: Option<&ItemKeys>,
    ) -> Option<Vec<V1Upgrade>> {
        let has_v1 = keys.is_none_or(|k| {
            k.wrappings
                .iter()
                .any(|w| w.version == crate::envelope::Version::V1)
        });
        // A v1 upgrade generates data keys with the controller's role: not for an object whose
        // values go out under a ServiceAccount's.
        let own_identity = !matches!(
            self.admission.identity_of(es),
            Ok(crate::identity::Choice::Controller)
        );
        if !has_v1
            || own_identity
            || self.rotation.policy(es).0 != RotationPolicy::Rewrap
            || es.status.as_ref().is_some_and(|s| s.rewrapped.is_some())
        {
            return None;
        }
        let desired = self.desired_key(es).ok().flatten();
        let plan: Vec<V1Upgrade> = es
            .spec
            .encrypted_data
            .iter()
            .filter_map(|(item, value)| match open::decode_item(value) {
                Ok(Decoded::Envelope(e))
                    if e.header.version == crate::envelope::Version::V1
                        && e.header.algorithm == crate::envelope::WrapAlgorithm::KmsSymmetric =>
                {
                    Some(V1Upgrade {
                        item: item.clone(),
                        scope: e.header.scope,
                        target: desired.clone().unwrap_or_else(|| e.header.key_arn.clone()),
                    })
                }
                _ => None,
            })
            .collect();
        (!plan.is_empty()).then_some(plan)
    }

    /// Seals the planned v1 values again as v2 (one `GenerateDataKey` per target key) and
    /// patches them into the object; returns the patched object with the upgrade recorded in
    /// its status, or `None` when anything failed (logged; the object stays as it was, and
    /// its Secret is right either way).
    pub(super) async fn upgrade_v1(
        &self,
        es: &EncryptedSecret,
        plan: &[V1Upgrade],
        mut plaintexts: BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>,
    ) -> Option<EncryptedSecret> {
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let name = es.metadata.name.as_deref().unwrap_or_default();
        let now = unix_now();
        let mut groups: BTreeMap<(crate::binding::Scope, &str), BTreeMap<String, _>> =
            BTreeMap::new();
        for u in plan {
            if let Some(plaintext) = plaintexts.remove(&u.item) {
                groups
                    .entry((u.scope, u.target.as_str()))
                    .or_default()
                    .insert(u.item.clone(), plaintext);
            }
        }
        let mut values = BTreeMap::new();
        let mut targets = Vec::new();
        for ((scope, target), items) in &groups {
            let wrapper = crate::seal::Wrapper::Kms {
                kms: &self.kms,
                key_id: target,
            };
            let ns = (!namespace.is_empty()).then_some(namespace);
            let sealed = crate::seal::seal_items(
                &wrapper,
                *scope,
                ns,
                name,
                items,
                &mut crate::random::OsRandom,
                now,
            )
            .await;
            match sealed {
                Ok((key_arn, sealed)) => {
                    targets.push(key_arn);
                    values.extend(sealed);
                }
                Err(e) => {
                    tracing::warn!(namespace, name, error = %e, "could not seal envelope v1 values again as v2; they stay as they are");
                    self.metrics
                        .rewrapped_values
                        .get_or_create(&ResultLabels { result: "failed" })
                        .inc_by(plan.len() as u64);
                    return None;
                }
            }
        }
        drop(groups);
        let mut patched = match self.api.patch_values(es, &values).await {
            Ok(patched) => patched,
            Err(e) => {
                tracing::warn!(namespace, name, error = %e, "could not write the upgraded values; they stay envelope v1");
                return None;
            }
        };
        targets.sort();
        targets.dedup();
        let count = values.len();
        let status = patched.status.get_or_insert_with(Default::default);
        status.rewrapped = Some(RewrapRecord {
            target: targets.join(" "),
            time: now_rfc3339(),
            values: i64::try_from(count).unwrap_or(i64::MAX),
        });
        let event = EventSpec {
            warning: false,
            reason: "Rewrapped",
            note: format!(
                "sealed {count} envelope v1 value(s) again as v2 under {} while writing the Secret (no extra kms:Decrypt)",
                targets.join(", ")
            ),
        };
        self.publish(&patched, &event).await;
        tracing::info!(
            namespace,
            name,
            values = count,
            "envelope v1 values upgraded to v2"
        );
        self.metrics
            .rewrapped_values
            .get_or_create(&ResultLabels {
                result: "rewrapped",
            })
            .inc_by(count as u64);
        Some(patched)
    }

    /// Sets the `KeyCurrent` condition for a re-wrap that did not happen, with an event when it
    /// changes.
    async fn report_rewrap(
        &self,
        es: &EncryptedSecret,
        reason: &'static str,
        message: String,
        result: &'static str,
        values: usize,
    ) -> Result<(), ApiError> {
        self.metrics
            .rewrapped_values
            .get_or_create(&ResultLabels { result })
            .inc_by(values as u64);
        let condition = crate::api::Condition {
            type_: reconcile::KEY_CURRENT.to_owned(),
            status: "False".to_owned(),
            reason: reason.to_owned(),
            message: message.clone(),
            last_transition_time: Some(now_rfc3339()),
            observed_generation: es.metadata.generation,
        };
        if self.write_key_current(es, Some(Some(condition))).await? {
            let event = EventSpec {
                warning: true,
                reason,
                note: message,
            };
            self.publish(es, &event).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_requests_by_the_rate() {
        let mut pacer = Pacer::new(2.0);
        let start = Instant::now();
        for _ in 0..5 {
            pacer.turn().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Idle time is not saved up for a burst.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        pacer.turn().await;
        pacer.turn().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn a_failed_object_waits_before_it_is_queued_again() {
        let rotation = Rotation::new(RotationPolicy::Rewrap);
        rotation.want("a", "x");
        rotation.want("a", "x");
        assert_eq!(rotation.queue.len(), 1);
        assert_eq!(rotation.queue.next(), Some(key("a", "x")));
        lock(&rotation.failed).insert(key("a", "x"), Instant::now());
        rotation.want("a", "x");
        assert!(rotation.queue.is_empty());
    }
}
