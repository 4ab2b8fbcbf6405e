//! The `EncryptedSecret` custom resource (`kmseal.dev/v1alpha1`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "kmseal.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "EncryptedSecret";
pub const API_VERSION: &str = "kmseal.dev/v1alpha1";

/// The most items one EncryptedSecret may hold (also in the CRD schema). Each may need a KMS
/// call of its own, so this bounds the KMS work one object can cause.
pub const MAX_ITEMS: usize = 256;
/// The longest base64 text any valid item can have (also in the CRD schema).
pub const MAX_ITEM_BASE64_LEN: usize = crate::envelope::MAX_SEALED_LEN.div_ceil(3) * 4;

/// Annotation on an EncryptedSecret: the scope for items that are plain KMS ciphertext
/// (`aws kms encrypt` output), which carry no header of their own. `strict` when absent; an
/// invalid value makes the whole object invalid.
pub const PLAIN_SCOPE_ANNOTATION: &str = "kmseal.dev/scope";

/// The sealed items and the shape of the Secret to produce.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kmseal.dev",
    version = "v1alpha1",
    kind = "EncryptedSecret",
    plural = "encryptedsecrets",
    singular = "encryptedsecret",
    shortname = "esec",
    doc = "A Kubernetes Secret whose values are sealed with AWS KMS; the kmseal controller turns it into the Secret.",
    namespaced,
    status = "EncryptedSecretStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretSpec {
    /// Item name to sealed value (base64 of a kmseal envelope, or of plain KMS ciphertext).
    /// At most 256 items.
    #[serde(default)]
    #[schemars(schema_with = "encrypted_data_schema")]
    pub encrypted_data: BTreeMap<String, String>,
    /// What the produced Secret looks like besides its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
    /// The KMS key (id, ARN, alias or alias ARN) that items should be sealed under; key
    /// rotation re-seals items under it. Plain KMS ciphertext items are decrypted with this key,
    /// which must be one the namespace may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub key_id: Option<String>,
    /// A ServiceAccount of this namespace whose AWS role (its eks.amazonaws.com/role-arn
    /// annotation) the controller decrypts this object's values with, instead of its own. Needs
    /// per-tenant identity turned on in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// What the controller does when values are not under the key and key material they
    /// should be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,
}

/// Key rotation for this object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// `Rewrap`: the controller moves stale values to the current key and key material with
    /// KMS ReEncrypt, writing only those values of spec.encryptedData. `Report`: it only sets
    /// the KeyCurrent condition. When empty: the controller's default, except `Report` for
    /// objects that Argo CD or Flux apply (they would re-apply the old values from Git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RotationPolicy>,
}

/// See [`RotationSpec::policy`].
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, clap::ValueEnum,
)]
pub enum RotationPolicy {
    Rewrap,
    Report,
}

/// The limits the controller enforces, stated in the schema too, so the API server refuses an
/// oversized object before the controller ever sees it.
fn encrypted_data_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_ITEMS,
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_ITEM_BASE64_LEN,
        },
        "default": {},
    })
}

/// The Secret to produce.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// The Secret type, e.g. `Opaque` or `kubernetes.io/tls`. `Opaque` when empty.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Make the Secret immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// Labels and annotations for the produced Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the controller last did with this EncryptedSecret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret this EncryptedSecret produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The KMS keys the items are sealed under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_arns: Vec<String>,
    /// Digest of the spec the Secret was last produced from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_fingerprint: Option<String>,
    /// The Secret's resourceVersion right after kmseal last wrote it; a different one means
    /// someone else changed the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The controller's last re-wrap of this object's values (key rotation in the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped: Option<RewrapRecord>,
}

/// What an in-cluster re-wrap did. The controller re-wraps an object at most once for each
/// target: values found stale again for the same target were set back (a GitOps tool
/// re-applying them from Git, say), and are then only reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewrapRecord {
    /// Where the values were moved: the key's ARN, then `#` and the key material id, or `@`
    /// and the time of the key's last rotation (Unix seconds), where KMS says.
    pub target: String,
    /// When (RFC 3339).
    pub time: String,
    /// How many values were moved.
    pub values: i64,
}

/// A status condition, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason from a small fixed set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What happened and what to do; never a secret value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl EncryptedSecret {
    /// A new EncryptedSecret with the given namespace (optional) and name.
    pub fn with_name(namespace: Option<&str>, name: &str, spec: EncryptedSecretSpec) -> Self {
        let mut es = EncryptedSecret::new(name, spec);
        es.metadata.namespace = namespace.map(str::to_owned);
        es
    }
}
