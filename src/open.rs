//! Opening an EncryptedSecret: parse every item, check its key against the key policy, make the
//! KMS calls it needs (one per distinct data key, one per plain item) one after another, then
//! open the values locally.
//!
//! Everything that needs no KMS comes first: every item is decoded, parsed, size-checked and
//! its key checked against the policy before the first call, so an object with a malformed
//! item, an unknown version, too many items or a key its namespace may not use costs no KMS
//! call at all. The controller then stops at the first call that fails; the CLI's `verify`
//! makes them all to report on every item.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::api::{EncryptedSecret, PLAIN_SCOPE_ANNOTATION};
use crate::arn;
use crate::binding::{self, Binding, EncryptionContext, NameError, Scope};
use crate::category::Category;
use crate::envelope::{self, DataKey, Envelope, EnvelopeError, Version, WrapAlgorithm};
use crate::kms::{DecryptRequest, Kms, KmsError, KmsErrorKind, Principal, Proceed};
use crate::policy::{KeyPolicy, PolicyError, ResolvedAliases};
use crate::wrapping::{ItemKeys, Wrapping, intern};

/// KMS ciphertext blobs are at most 6144 bytes.
pub const MAX_PLAIN_KMS_CIPHERTEXT: usize = 6144;
use crate::api::{MAX_ITEM_BASE64_LEN, MAX_ITEMS};

/// How an item was sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemFormat {
    /// A kmseal envelope.
    Envelope {
        version: Version,
        scope: Scope,
        algorithm: WrapAlgorithm,
        wrapped_at: u64,
        key_material_id: Option<String>,
    },
    /// Plain KMS ciphertext (`aws kms encrypt`), bound by the encryption context only.
    PlainKms { scope: Scope },
}

impl ItemFormat {
    /// The format an envelope's header describes.
    fn of(header: envelope::Header) -> Self {
        ItemFormat::Envelope {
            version: header.version,
            scope: header.scope,
            algorithm: header.algorithm,
            wrapped_at: header.wrapped_at,
            key_material_id: header.key_material_id,
        }
    }
}

/// A decrypted item.
pub struct Opened {
    pub key_arn: String,
    pub format: ItemFormat,
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("key_arn", &self.key_arn)
            .field("format", &self.format)
            .field("plaintext", &"[redacted]")
            .finish()
    }
}

/// Why an item (or the whole object) could not be opened. Never holds plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value is not valid base64; it was damaged, copy it again from the sealed file")]
    Base64,
    #[error("the value is {len} bytes of base64, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(
        "the value is neither a kmseal envelope nor plain KMS ciphertext ({len} bytes; KMS ciphertext is at most {MAX_PLAIN_KMS_CIPHERTEXT})"
    )]
    NotCiphertext { len: usize },
    #[error(
        "the EncryptedSecret has no {0}, but the value is bound to one; set metadata.{0} (or pass --namespace)"
    )]
    MissingTarget(&'static str),
    #[error("the EncryptedSecret has {count} items; at most {MAX_ITEMS} are allowed, split it")]
    TooManyItems { count: usize },
    #[error(transparent)]
    ItemKey(#[from] NameError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(
        "the {PLAIN_SCOPE_ANNOTATION} annotation has an unknown value {0:?}: use strict, namespace or cluster"
    )]
    BadScopeAnnotation(String),
}

impl OpenError {
    pub fn category(&self) -> Category {
        match self {
            OpenError::Base64 | OpenError::NotCiphertext { .. } => Category::Malformed,
            OpenError::TooLarge { .. } | OpenError::TooManyItems { .. } => Category::TooLarge,
            OpenError::MissingTarget(_)
            | OpenError::BadScopeAnnotation(_)
            | OpenError::ItemKey(_) => Category::InvalidInput,
            OpenError::Envelope(e) => e.category(),
            OpenError::Kms(e) => e.category(),
            OpenError::Policy(e) => e.category(),
        }
    }

    /// What a tenant is told: KMS failures without the operator's detail (see
    /// [`KmsError::tenant_message`]); everything else as is.
    pub fn tenant_message(&self) -> String {
        match self {
            OpenError::Kms(e) => e.tenant_message(),
            other => other.to_string(),
        }
    }
}

/// An item's failure, or (`item: None`) the whole object's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub item: Option<String>,
    pub error: OpenError,
}

/// A decoded item.
pub enum Decoded {
    Envelope(Box<Envelope>),
    Plain(Vec<u8>),
}

/// Decodes one item's base64 and parses it (no KMS).
pub fn decode_item(value: &str) -> Result<Decoded, OpenError> {
    let trimmed = value.trim();
    if trimmed.len() > MAX_ITEM_BASE64_LEN {
        return Err(OpenError::TooLarge {
            len: trimmed.len(),
            max: MAX_ITEM_BASE64_LEN,
        });
    }
    let bytes = BASE64.decode(trimmed).map_err(|_| OpenError::Base64)?;
    if envelope::is_envelope(&bytes) {
        return Ok(Decoded::Envelope(Box::new(envelope::parse(&bytes)?)));
    }
    if bytes.is_empty() || bytes.len() > MAX_PLAIN_KMS_CIPHERTEXT {
        return Err(OpenError::NotCiphertext { len: bytes.len() });
    }
    Ok(Decoded::Plain(bytes))
}

/// The scope all envelope items of `es` share, if they share one.
pub fn common_scope(es: &EncryptedSecret) -> Option<Scope> {
    let mut scopes = es
        .spec
        .encrypted_data
        .values()
        .filter_map(|value| match decode_item(value) {
            Ok(Decoded::Envelope(env)) => Some(env.header.scope),
            _ => None,
        });
    let first = scopes.next()?;
    scopes.all(|s| s == first).then_some(first)
}

/// The scope for plain KMS ciphertext items of this EncryptedSecret.
pub fn plain_scope(es: &EncryptedSecret) -> Result<Scope, OpenError> {
    match es
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PLAIN_SCOPE_ANNOTATION))
    {
        None => Ok(Scope::Strict),
        Some(value) => value
            .parse()
            .map_err(|_| OpenError::BadScopeAnnotation(value.chars().take(40).collect())),
    }
}

fn require_target(binding: &Binding<'_>) -> Result<(), OpenError> {
    if binding.bound_namespace().is_some_and(str::is_empty) {
        return Err(OpenError::MissingTarget("namespace"));
    }
    if binding.bound_name().is_some_and(str::is_empty) {
        return Err(OpenError::MissingTarget("name"));
    }
    Ok(())
}

/// One KMS `Decrypt` the object needs.
struct Call {
    key_id: Option<String>,
    ciphertext: Vec<u8>,
    algorithm: WrapAlgorithm,
    context: EncryptionContext,
    /// For a data key: the header's key ARN, which must be the key that answers.
    header_key: Option<String>,
}

enum Planned {
    Envelope {
        envelope: Box<Envelope>,
        call: usize,
    },
    Plain {
        scope: Scope,
        call: usize,
    },
    Failed(OpenError),
}

/// What opening an object takes: every item parsed and checked, and the distinct KMS calls.
struct OpenPlan {
    items: Vec<(String, Planned)>,
    calls: Vec<Call>,
}

/// The key policy and what the controller knows of its aliases; the CLI uses
/// [`KeyPolicy::unrestricted`].
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a KeyPolicy,
    pub aliases: &'a ResolvedAliases,
}

/// Checks that apply to the whole object, before any item.
fn check_object(es: &EncryptedSecret) -> Result<(), OpenError> {
    let count = es.spec.encrypted_data.len();
    if count > MAX_ITEMS {
        return Err(OpenError::TooManyItems { count });
    }
    plain_scope(es)?;
    Ok(())
}

fn plan(es: &EncryptedSecret, namespace: &str, name: &str, rules: Rules<'_>) -> OpenPlan {
    type Group = (Version, WrapAlgorithm, String, Vec<u8>, Scope);
    let mut calls = Vec::new();
    let mut groups: HashMap<Group, usize> = HashMap::new();
    let mut items = Vec::with_capacity(es.spec.encrypted_data.len());
    for (item, value) in &es.spec.encrypted_data {
        let planned = (|| -> Result<Planned, OpenError> {
            binding::validate_item_key(item)?;
            match decode_item(value)? {
                Decoded::Envelope(envelope) => {
                    let header = &envelope.header;
                    let binding = envelope.binding_for(namespace, name);
                    require_target(&binding)?;
                    rules
                        .policy
                        .check_key(namespace, &header.key_arn, rules.aliases)?;
                    let group: Group = (
                        header.version,
                        header.algorithm,
                        header.key_arn.clone(),
                        header.wrapped_key.clone(),
                        header.scope,
                    );
                    let call = *groups.entry(group).or_insert_with(|| {
                        let context = match (header.algorithm, header.version) {
                            (WrapAlgorithm::RsaOaepSha256, _) => EncryptionContext::new(),
                            (WrapAlgorithm::KmsSymmetric, Version::V1) => binding.context_v1(),
                            (WrapAlgorithm::KmsSymmetric, Version::V2) => binding.context_v2(),
                        };
                        calls.push(Call {
                            key_id: Some(header.key_arn.clone()),
                            ciphertext: header.wrapped_key.clone(),
                            algorithm: header.algorithm,
                            context,
                            header_key: Some(header.key_arn.clone()),
                        });
                        calls.len() - 1
                    });
                    Ok(Planned::Envelope { envelope, call })
                }
                Decoded::Plain(blob) => {
                    let scope = plain_scope(es)?;
                    rules.policy.check_plain_scope(scope)?;
                    let binding = Binding::new(scope, namespace, name);
                    require_target(&binding)?;
                    let key_id = rules.policy.plain_key_id(
                        namespace,
                        es.spec.key_id.as_deref(),
                        rules.aliases,
                    )?;
                    calls.push(Call {
                        key_id,
                        ciphertext: blob,
                        algorithm: WrapAlgorithm::KmsSymmetric,
                        context: binding.plain_context(item),
                        header_key: None,
                    });
                    Ok(Planned::Plain {
                        scope,
                        call: calls.len() - 1,
                    })
                }
            }
        })()
        .unwrap_or_else(Planned::Failed);
        items.push((item.clone(), planned));
    }
    OpenPlan { items, calls }
}

/// What one call gave: the key that answered and the plaintext (a data key, or a value).
type Answer = Result<(String, Zeroizing<Vec<u8>>), OpenError>;

async fn call<K: Kms>(
    kms: &K,
    call: &Call,
    namespace: &str,
    rules: Rules<'_>,
    principal: &Principal,
    proceed: Option<Proceed<'_>>,
) -> Answer {
    if let Some(proceed) = proceed
        && !proceed()
    {
        return Err(OpenError::Kms(KmsError::new(
            KmsErrorKind::Cancelled,
            "kms:Decrypt",
            call.key_id.as_deref(),
            "",
        )));
    }
    let decrypted = kms
        .decrypt(DecryptRequest {
            key_id: call.key_id.as_deref(),
            ciphertext: &call.ciphertext,
            algorithm: call.algorithm,
            context: &call.context,
            tenant: namespace,
            principal,
            proceed,
        })
        .await?;
    let wrong_key = |expected: &str| {
        OpenError::Kms(KmsError::new(
            KmsErrorKind::WrongKey,
            "kms:Decrypt",
            Some(expected),
            decrypted.key_arn.clone(),
        ))
    };
    if let Some(expected) = &call.header_key
        && !arn::same_key(expected, &decrypted.key_arn)
    {
        return Err(wrong_key(expected));
    }
    // Whatever was asked, the key that answered must be one this namespace may use.
    rules
        .policy
        .check_key(namespace, &decrypted.key_arn, rules.aliases)?;
    if call.header_key.is_some() && decrypted.plaintext.len() != envelope::DATA_KEY_LEN {
        return Err(EnvelopeError::DataKeyLength(decrypted.plaintext.len()).into());
    }
    Ok((decrypted.key_arn, decrypted.plaintext))
}

fn finish(
    planned: Planned,
    item: &str,
    answers: &[Option<Answer>],
    namespace: &str,
    name: &str,
) -> Result<Opened, OpenError> {
    let answer = |call: usize| -> Result<&(String, Zeroizing<Vec<u8>>), OpenError> {
        match answers.get(call) {
            Some(Some(answer)) => answer.as_ref().map_err(Clone::clone),
            // Never happens: every call of an item is made before it is finished.
            _ => Err(OpenError::Kms(KmsError::new(
                KmsErrorKind::Cancelled,
                "kms:Decrypt",
                None,
                "",
            ))),
        }
    };
    match planned {
        Planned::Failed(e) => Err(e),
        Planned::Envelope { envelope, call } => {
            let (key_arn, plaintext) = answer(call)?;
            let data_key = DataKey::from_slice(plaintext)?;
            let binding = envelope.binding_for(namespace, name);
            let value = envelope.open(&data_key, &binding, item)?;
            Ok(Opened {
                key_arn: key_arn.clone(),
                format: ItemFormat::of(envelope.header),
                plaintext: value,
            })
        }
        Planned::Plain { scope, call } => {
            let (key_arn, plaintext) = answer(call)?;
            Ok(Opened {
                key_arn: key_arn.clone(),
                format: ItemFormat::PlainKms { scope },
                plaintext: plaintext.clone(),
            })
        }
    }
}

/// Opens every item of `es` as the Secret `namespace`/`name`, stopping at the first failure:
/// nothing that can fail without KMS costs a call, and after a failed call no further call is
/// made. `proceed` is checked before every call (and by a fair KMS budget right before the
/// call leaves), so an object that was deleted or changed meanwhile makes no further calls.
/// Every call goes out under `principal`'s credentials.
pub async fn open_all<K: Kms>(
    kms: &K,
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
    rules: Rules<'_>,
    principal: &Principal,
    proceed: Option<Proceed<'_>>,
) -> Result<BTreeMap<String, Opened>, Failure> {
    check_object(es).map_err(|error| Failure { item: None, error })?;
    let plan = plan(es, namespace, name, rules);
    if let Some((item, Planned::Failed(error))) = plan
        .items
        .iter()
        .find(|(_, p)| matches!(p, Planned::Failed(_)))
    {
        return Err(Failure {
            item: Some(item.clone()),
            error: error.clone(),
        });
    }
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(plan.calls.len());
    for (index, c) in plan.calls.iter().enumerate() {
        let answer = call(kms, c, namespace, rules, principal, proceed).await;
        if let Err(error) = &answer {
            let item = plan.items.iter().find_map(|(item, p)| match p {
                Planned::Envelope { call, .. } | Planned::Plain { call, .. } if *call == index => {
                    Some(item.clone())
                }
                _ => None,
            });
            return Err(Failure {
                item,
                error: error.clone(),
            });
        }
        answers.push(Some(answer));
    }
    let mut opened = BTreeMap::new();
    for (item, planned) in plan.items {
        match finish(planned, &item, &answers, namespace, name) {
            Ok(o) => {
                opened.insert(item, o);
            }
            Err(error) => {
                return Err(Failure {
                    item: Some(item),
                    error,
                });
            }
        }
    }
    Ok(opened)
}

/// What an item is, as far as can be told without KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub format: ItemFormat,
    /// The value's length once opened, for an envelope (plain KMS ciphertext does not say).
    pub plaintext_len: Option<usize>,
}

/// Every check of [`open_all`] that needs no KMS, item by item (`kmseal validate`): the whole
/// object's (`Err`), then each item's decoding, size, binding target and key policy. That a
/// value was sealed for this namespace and name, and is intact, only KMS and the data key can
/// tell.
pub fn check_offline(
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
    rules: Rules<'_>,
) -> Result<BTreeMap<String, Result<Checked, OpenError>>, OpenError> {
    check_object(es)?;
    Ok(plan(es, namespace, name, rules)
        .items
        .into_iter()
        .map(|(item, planned)| {
            let checked = match planned {
                Planned::Failed(e) => Err(e),
                Planned::Envelope { envelope, .. } => {
                    let plaintext_len = envelope.ciphertext.len().saturating_sub(envelope::TAG_LEN);
                    Ok(Checked {
                        format: ItemFormat::of(envelope.header),
                        plaintext_len: Some(plaintext_len),
                    })
                }
                Planned::Plain { scope, .. } => Ok(Checked {
                    format: ItemFormat::PlainKms { scope },
                    plaintext_len: None,
                }),
            };
            (item, checked)
        })
        .collect())
}

/// Opens every item of `es` independently and reports on each (the CLI's `verify` and
/// `unseal`). Every call is made, failed or not.
pub async fn open_each<K: Kms>(
    kms: &K,
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
    rules: Rules<'_>,
) -> BTreeMap<String, Result<Opened, OpenError>> {
    if let Err(error) = check_object(es) {
        return es
            .spec
            .encrypted_data
            .keys()
            .map(|item| (item.clone(), Err(error.clone())))
            .collect();
    }
    let plan = plan(es, namespace, name, rules);
    let mut answers = Vec::with_capacity(plan.calls.len());
    for c in &plan.calls {
        answers.push(Some(
            call(kms, c, namespace, rules, Principal::CONTROLLER, None).await,
        ));
    }
    plan.items
        .into_iter()
        .map(|(item, planned)| {
            let result = finish(planned, &item, &answers, namespace, name);
            (item, result)
        })
        .collect()
}

/// The keys of every item, from the first bytes of each value (no KMS): what the key policy is
/// checked against on every reconcile, even one that needs no KMS call. Also checks what
/// applies to the whole object (item count, scope annotation).
pub fn item_keys(es: &EncryptedSecret) -> Result<ItemKeys, Failure> {
    // Enough base64 for the longest header.
    const HEADER_BASE64: usize = (envelope::PREFIX_LEN
        + 8
        + 6
        + envelope::MAX_KEY_ARN_LEN
        + envelope::MAX_KEY_MATERIAL_ID_LEN
        + envelope::MAX_WRAPPED_KEY_LEN)
        .div_ceil(3)
        * 4;
    check_object(es).map_err(|error| Failure { item: None, error })?;
    let mut keys = ItemKeys::default();
    for (item, value) in &es.spec.encrypted_data {
        let text = value.trim();
        let cut = text.len().min(HEADER_BASE64);
        let prefix = text.get(..cut - cut % 4).unwrap_or("");
        let fail = |error: OpenError| Failure {
            item: Some(item.clone()),
            error,
        };
        let bytes = BASE64.decode(prefix).map_err(|_| fail(OpenError::Base64))?;
        if envelope::is_envelope(&bytes) {
            let (header, _) = envelope::parse_header(&bytes).map_err(|e| fail(e.into()))?;
            let same = |w: &&mut Wrapping| {
                *w.key_arn == *header.key_arn
                    && w.key_material_id.as_deref() == header.key_material_id.as_deref()
                    && w.version == header.version
                    && w.algorithm == header.algorithm
            };
            match keys.wrappings.iter_mut().find(same) {
                Some(w) => {
                    w.items += 1;
                    w.wrapped_at = w.wrapped_at.min(header.wrapped_at);
                }
                None => keys.wrappings.push(Wrapping {
                    key_arn: intern(&header.key_arn),
                    key_material_id: header.key_material_id.as_deref().map(intern),
                    wrapped_at: header.wrapped_at,
                    version: header.version,
                    algorithm: header.algorithm,
                    items: 1,
                }),
            }
        } else {
            keys.plain_scope = Some(plain_scope(es).map_err(fail)?);
        }
    }
    Ok(keys)
}
