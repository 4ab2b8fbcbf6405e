//! What the controller will do for a tenant, as it stands: the live key policy (with the keys
//! its aliases point to, resolved through KMS and refreshed) and the allowed Secret types.
//!
//! The decisions are `crate::policy`'s and `crate::open`'s; this module holds their inputs and
//! checks an object against them before any KMS call.

use std::sync::{Arc, RwLock};

use crate::api::EncryptedSecret;
use crate::category::Category;
use crate::kms::Kms;
use crate::open::{self, Rules};
use crate::policy::{self, KeyPolicy, PolicyError, ResolvedAliases, SecretTypes};
use crate::reconcile::{self, Rejection};
use crate::wrapping::ItemKeys;

/// The key policy and what its aliases resolve to, swapped as a whole.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub policy: KeyPolicy,
    pub aliases: ResolvedAliases,
}

impl Snapshot {
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            policy: &self.policy,
            aliases: &self.aliases,
        }
    }
}

/// Whether the object checked still holds its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Items {
    /// `spec.encryptedData` is the object's.
    InObject,
    /// A settled object, kept without its items: what needs their names (the Secret type's
    /// required items) was checked when it was settled ([`super::watched::Watched::settle`]).
    CheckedWhenSettled,
}

pub struct Admission {
    current: RwLock<Arc<Snapshot>>,
    types: SecretTypes,
}

impl Admission {
    pub fn new(policy: KeyPolicy, types: SecretTypes) -> Self {
        Admission {
            current: RwLock::new(Arc::new(Snapshot {
                policy,
                aliases: ResolvedAliases::new(),
            })),
            types,
        }
    }

    /// Any key for any namespace (a single-tenant cluster's `--allow-any-key`), plain items
    /// still bound to their namespace and named key, the default Secret types.
    pub fn any_key() -> Self {
        Admission::new(KeyPolicy::any_key(), SecretTypes::default())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        crate::sync::read(&self.current).clone()
    }

    /// Replaces the policy (a reloaded file); aliases it shares with the old one stay resolved.
    pub fn set_policy(&self, policy: KeyPolicy) {
        let mut current = crate::sync::write(&self.current);
        let mut aliases = current.aliases.clone();
        let wanted = policy.aliases();
        aliases.retain(|alias, _| wanted.contains(&alias.as_str()));
        *current = Arc::new(Snapshot { policy, aliases });
    }

    /// Asks KMS (`DescribeKey`) where each of the policy's aliases points now. An alias that
    /// cannot be resolved keeps its last known key; returns how many could not be resolved.
    pub async fn resolve_aliases<K: Kms>(&self, kms: &K) -> usize {
        let snapshot = self.snapshot();
        let mut resolved = snapshot.aliases.clone();
        let mut failed = 0;
        for alias in snapshot.policy.aliases() {
            match kms.describe_key(alias).await {
                Ok(description) => {
                    if resolved.get(alias) != Some(&description.key_arn) {
                        tracing::info!(alias, key = %description.key_arn, "key policy alias resolved");
                    }
                    resolved.insert(alias.to_owned(), description.key_arn);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(alias, error = %e, "cannot resolve a key policy alias; values under its key are refused until it resolves");
                }
            }
        }
        let mut current = crate::sync::write(&self.current);
        // Only if the policy did not change meanwhile.
        if current.policy == snapshot.policy {
            *current = Arc::new(Snapshot {
                policy: snapshot.policy.clone(),
                aliases: resolved,
            });
        }
        failed
    }

    /// Everything that can be refused without KMS: the Secret type, the item count and scope
    /// annotation, and the keys the items name (envelope headers, `spec.keyId` of plain
    /// items). Checked on every reconcile, so a key the policy stops allowing is noticed even
    /// when nothing else changed.
    pub fn check(&self, es: &EncryptedSecret) -> Result<(), Rejection> {
        self.check_keys(es, open::item_keys(es).as_ref(), Items::InObject)
    }

    /// [`Admission::check`] with the items' keys read already (`open::item_keys(es)`).
    /// `items` says whether `es` still has its items (a settled object is kept without them).
    pub fn check_keys(
        &self,
        es: &EncryptedSecret,
        keys: Result<&ItemKeys, &open::Failure>,
        items: Items,
    ) -> Result<(), Rejection> {
        let reject = |category: Category, message: String| Rejection {
            reason: category.reason(),
            message,
        };
        let type_ = reconcile::secret_type(es);
        self.types
            .check(type_)
            .and_then(|()| match items {
                Items::InObject => {
                    policy::check_required_items(type_, |i| es.spec.encrypted_data.contains_key(i))
                }
                // Checked when it was settled: its items cannot change without the object.
                Items::CheckedWhenSettled => Ok(()),
            })
            .map_err(|e| reject(e.category(), e.to_string()))?;
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let snapshot = self.snapshot();
        let keys = keys.map_err(|f| {
            let item = f
                .item
                .as_ref()
                .map(|i| format!("item {i}: "))
                .unwrap_or_default();
            reject(f.error.category(), format!("{item}{}", f.error))
        })?;
        let policy_error = |e: PolicyError| reject(e.category(), e.to_string());
        for key in keys.envelope_keys() {
            snapshot
                .policy
                .check_key(namespace, key, &snapshot.aliases)
                .map_err(policy_error)?;
        }
        if let Some(scope) = keys.plain_scope {
            snapshot
                .policy
                .check_plain_scope(scope)
                .map_err(policy_error)?;
            snapshot
                .policy
                .plain_key_id(namespace, es.spec.key_id.as_deref(), &snapshot.aliases)
                .map_err(policy_error)?;
        }
        snapshot
            .policy
            .identity
            .choose(namespace, es.spec.service_account_name.as_deref())
            .map_err(|e| reject(e.category(), e.to_string()))?;
        Ok(())
    }

    /// Whose credentials the object's KMS calls use, as the policy and the object say.
    pub fn identity_of(
        &self,
        es: &EncryptedSecret,
    ) -> Result<crate::identity::Choice, crate::identity::IdentityError> {
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        self.snapshot()
            .policy
            .identity
            .choose(namespace, es.spec.service_account_name.as_deref())
    }
}
