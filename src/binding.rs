//! Where a sealed value may be used.
//!
//! This module is the single place that turns (scope, namespace, name, item) into both the KMS
//! encryption context and the AES-GCM additional authenticated data, so the two can never
//! disagree about what a value is bound to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Encryption-context key that binds a data key (or a plain item) to a namespace.
pub const CONTEXT_NAMESPACE: &str = "kmseal.dev/namespace";
/// Encryption-context key that binds a data key (or a plain item) to an object name.
pub const CONTEXT_NAME: &str = "kmseal.dev/name";
/// Encryption-context key that every v2 data key carries, in every scope: it marks the
/// context as an envelope data key's, which no other path ever sends.
pub const CONTEXT_VERSION: &str = "kmseal.dev/v";
/// Encryption-context key that every plain KMS ciphertext item carries, and no envelope data
/// key ever does: it keeps the plain path (whose plaintext goes into a Secret) apart from
/// every data key.
pub const CONTEXT_ITEM: &str = "kmseal.dev/item";
/// The namespace value of a cluster-scope context. Not a valid namespace name, so it can never
/// be mistaken for one; a key policy grants cluster scope by naming it.
pub const ANY_NAMESPACE: &str = "*";

/// The longest namespace, name or item name that can be bound (the Kubernetes limits are 63
/// and 253). Longer fields are refused, never truncated.
pub const MAX_BOUND_FIELD_LEN: usize = 253;

/// Domain separators that start the binding part of the AAD, so AAD bytes of this format can
/// never be confused with AAD of anything else that shares the data key.
const AAD_LABEL_V1: &[u8] = b"kmseal.dev/v1";
const AAD_LABEL_V2: &[u8] = b"kmseal.dev/v2";

/// How tightly a value is bound, as in sealed-secrets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only the Secret with this namespace and name may use the value.
    Strict,
    /// Any Secret in this namespace may use the value; it may be renamed.
    Namespace,
    /// Any Secret in any namespace may use the value.
    Cluster,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Strict, Scope::Namespace, Scope::Cluster];

    /// Wire code in the envelope header.
    pub fn code(self) -> u8 {
        match self {
            Scope::Strict => 0,
            Scope::Namespace => 1,
            Scope::Cluster => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Strict => "strict",
            Scope::Namespace => "namespace",
            Scope::Cluster => "cluster",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Scope::Strict),
            "namespace" | "namespace-wide" => Ok(Scope::Namespace),
            "cluster" | "cluster-wide" => Ok(Scope::Cluster),
            other => Err(format!(
                "unknown scope {other:?}: use strict, namespace or cluster"
            )),
        }
    }
}

/// The KMS encryption context: sorted, as KMS treats it as an unordered map.
pub type EncryptionContext = BTreeMap<String, String>;

/// A scope applied to one object: what the value is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub scope: Scope,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> Binding<'a> {
    pub fn new(scope: Scope, namespace: &'a str, name: &'a str) -> Self {
        Binding {
            scope,
            namespace,
            name,
        }
    }

    /// The namespace this binding pins, if any.
    pub fn bound_namespace(&self) -> Option<&'a str> {
        match self.scope {
            Scope::Strict | Scope::Namespace => Some(self.namespace),
            Scope::Cluster => None,
        }
    }

    /// The object name this binding pins, if any.
    pub fn bound_name(&self) -> Option<&'a str> {
        match self.scope {
            Scope::Strict => Some(self.name),
            Scope::Namespace | Scope::Cluster => None,
        }
    }

    /// The KMS encryption context of a v1 data key: the bound namespace and name, nothing
    /// else (so none at all for cluster scope).
    pub fn context_v1(&self) -> EncryptionContext {
        let mut context = EncryptionContext::new();
        if let Some(namespace) = self.bound_namespace() {
            context.insert(CONTEXT_NAMESPACE.to_owned(), namespace.to_owned());
        }
        if let Some(name) = self.bound_name() {
            context.insert(CONTEXT_NAME.to_owned(), name.to_owned());
        }
        context
    }

    /// The KMS encryption context of a v2 data key: always `kmseal.dev/v=2` and a namespace
    /// (`*` for cluster scope), plus the name for strict scope.
    ///
    /// The item name is deliberately absent: one data key serves every item of a Secret, and
    /// the AAD binds each value to its item.
    pub fn context_v2(&self) -> EncryptionContext {
        let mut context = EncryptionContext::new();
        context.insert(CONTEXT_VERSION.to_owned(), "2".to_owned());
        context.insert(
            CONTEXT_NAMESPACE.to_owned(),
            self.bound_namespace().unwrap_or(ANY_NAMESPACE).to_owned(),
        );
        if let Some(name) = self.bound_name() {
            context.insert(CONTEXT_NAME.to_owned(), name.to_owned());
        }
        context
    }

    /// The KMS encryption context of a plain KMS ciphertext item (`aws kms encrypt` output):
    /// a namespace (`*` for cluster scope), the name for strict scope, and always the item.
    /// It never equals a data key's context of any version: v1 contexts have no item, v2
    /// contexts have `kmseal.dev/v`.
    pub fn plain_context(&self, item: &str) -> EncryptionContext {
        let mut context = EncryptionContext::new();
        context.insert(
            CONTEXT_NAMESPACE.to_owned(),
            self.bound_namespace().unwrap_or(ANY_NAMESPACE).to_owned(),
        );
        if let Some(name) = self.bound_name() {
            context.insert(CONTEXT_NAME.to_owned(), name.to_owned());
        }
        context.insert(CONTEXT_ITEM.to_owned(), item.to_owned());
        context
    }

    fn bound_fields<'i>(&self, item: &'i str) -> Result<[&'i str; 3], BindingError>
    where
        'a: 'i,
    {
        let fields = [
            self.bound_namespace().unwrap_or(""),
            self.bound_name().unwrap_or(""),
            item,
        ];
        for (what, field) in ["namespace", "name", "item name"].into_iter().zip(fields) {
            if field.len() > MAX_BOUND_FIELD_LEN {
                return Err(BindingError::FieldTooLong {
                    what,
                    len: field.len(),
                });
            }
        }
        Ok(fields)
    }

    /// The v1 AES-GCM AAD for one item: the whole header, then a u16-length-prefixed encoding
    /// of the bound namespace, bound name and item name (empty where the scope does not bind
    /// it). Length prefixes make the encoding injective; the scope itself is in the header.
    pub fn aad_v1(&self, header: &[u8], item: &str) -> Result<Vec<u8>, BindingError> {
        let fields = self.bound_fields(item)?;
        let mut aad = Vec::with_capacity(
            header.len() + AAD_LABEL_V1.len() + 6 + fields.iter().map(|f| f.len()).sum::<usize>(),
        );
        aad.extend_from_slice(header);
        aad.extend_from_slice(AAD_LABEL_V1);
        for field in fields {
            // Bounded to 253 bytes above, so the u16 prefix is exact.
            aad.extend_from_slice(&(field.len() as u16).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        Ok(aad)
    }

    /// The v2 AES-GCM AAD for one item: the envelope's fixed prefix (magic, version, scope,
    /// algorithm), then a u32-length-prefixed encoding of the bound namespace, bound name and
    /// item name. The wrapping (key ARN, wrap time, wrapped data key) is deliberately not in
    /// it, so that a data key can be re-wrapped without touching the value.
    pub fn aad_v2(&self, prefix: &[u8], item: &str) -> Result<Vec<u8>, BindingError> {
        let fields = self.bound_fields(item)?;
        let mut aad = Vec::with_capacity(
            prefix.len() + AAD_LABEL_V2.len() + 12 + fields.iter().map(|f| f.len()).sum::<usize>(),
        );
        aad.extend_from_slice(prefix);
        aad.extend_from_slice(AAD_LABEL_V2);
        for field in fields {
            aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        Ok(aad)
    }
}

/// A field that cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the {what} is {len} bytes long; at most 253 can be bound (Kubernetes allows no more)")]
    FieldTooLong { what: &'static str, len: usize },
}

/// Why a namespace, name or item key is not acceptable to Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{what} {value:?} is not a valid Kubernetes name: use at most {max} lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
    )]
    InvalidName {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "item key {value:?} is not a valid Secret key: use at most 253 letters, digits, '-', '_' or '.'"
    )]
    InvalidItemKey { value: String },
}

/// A namespace must be an RFC 1123 label.
pub fn validate_namespace(namespace: &str) -> Result<(), NameError> {
    if is_dns_label(namespace) {
        Ok(())
    } else {
        Err(NameError::InvalidName {
            what: "namespace",
            value: crate::text::bounded(namespace, 80),
            max: 63,
        })
    }
}

/// A Secret name must be an RFC 1123 subdomain.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label);
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidName {
            what: "name",
            value: crate::text::bounded(name, 80),
            max: 253,
        })
    }
}

/// A Secret data key: `[-._a-zA-Z0-9]+`, at most 253 bytes, not `.` or `..`.
pub fn validate_item_key(key: &str) -> Result<(), NameError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidItemKey {
            value: crate::text::bounded(key, 80),
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn v1_context_depends_on_scope() {
        let ns = CONTEXT_NAMESPACE;
        assert_eq!(
            Binding::new(Scope::Strict, "prod", "db").context_v1(),
            ctx(&[(ns, "prod"), (CONTEXT_NAME, "db")])
        );
        assert_eq!(
            Binding::new(Scope::Namespace, "prod", "db").context_v1(),
            ctx(&[(ns, "prod")])
        );
        assert!(
            Binding::new(Scope::Cluster, "prod", "db")
                .context_v1()
                .is_empty()
        );
    }

    #[test]
    fn v2_context_always_names_the_version_and_a_namespace() {
        let (v, ns) = (CONTEXT_VERSION, CONTEXT_NAMESPACE);
        assert_eq!(
            Binding::new(Scope::Strict, "prod", "db").context_v2(),
            ctx(&[(v, "2"), (ns, "prod"), (CONTEXT_NAME, "db")])
        );
        assert_eq!(
            Binding::new(Scope::Namespace, "prod", "db").context_v2(),
            ctx(&[(v, "2"), (ns, "prod")])
        );
        assert_eq!(
            Binding::new(Scope::Cluster, "prod", "db").context_v2(),
            ctx(&[(v, "2"), (ns, "*")])
        );
    }

    /// The property the plain path's safety rests on: no plain-item context, for any scope,
    /// namespace, name or item, equals any data key's context of any version.
    #[test]
    fn plain_contexts_never_equal_a_data_key_context() {
        let names = ["prod", "db", "password", "2", "*", ""];
        for scope in Scope::ALL {
            for a in names {
                for b in names {
                    for item in names {
                        let plain = Binding::new(scope, a, b).plain_context(item);
                        assert!(plain.contains_key(CONTEXT_ITEM));
                        assert!(!plain.contains_key(CONTEXT_VERSION));
                        for other in Scope::ALL {
                            for x in names {
                                for y in names {
                                    let binding = Binding::new(other, x, y);
                                    assert_ne!(plain, binding.context_v1());
                                    assert_ne!(plain, binding.context_v2());
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            Binding::new(Scope::Cluster, "prod", "db").plain_context("k"),
            ctx(&[(CONTEXT_NAMESPACE, "*"), (CONTEXT_ITEM, "k")])
        );
    }

    #[test]
    fn aad_binds_each_field_unambiguously() {
        for aad in [Binding::aad_v1, Binding::aad_v2] {
            let header = b"hdr";
            let base = aad(&Binding::new(Scope::Strict, "ab", "c"), header, "x").unwrap();
            // Moving bytes between fields must change the AAD.
            for (ns, name, item, prefix) in [
                ("a", "bc", "x", &b"hdr"[..]),
                ("ab", "c", "y", b"hdr"),
                ("ab", "c", "x", b"hdR"),
                ("ab", "", "cx", b"hdr"),
            ] {
                let other = aad(&Binding::new(Scope::Strict, ns, name), prefix, item).unwrap();
                assert_ne!(base, other);
            }
            // Unbound fields do not influence the AAD.
            let a = aad(&Binding::new(Scope::Namespace, "prod", "one"), header, "x");
            let b = aad(&Binding::new(Scope::Namespace, "prod", "two"), header, "x");
            assert_eq!(a, b);
            let c = aad(&Binding::new(Scope::Cluster, "prod", "one"), header, "x");
            let d = aad(&Binding::new(Scope::Cluster, "dev", "two"), header, "x");
            assert_eq!(c, d);
        }
    }

    #[test]
    fn overlong_fields_are_refused_not_truncated() {
        let long = "x".repeat(MAX_BOUND_FIELD_LEN + 1);
        let exact = "x".repeat(MAX_BOUND_FIELD_LEN);
        for aad in [Binding::aad_v1, Binding::aad_v2] {
            assert!(aad(&Binding::new(Scope::Strict, "p", &exact), b"h", &exact).is_ok());
            for (ns, name, item) in [
                (&long[..], "n", "i"),
                ("p", &long[..], "i"),
                ("p", "n", &long[..]),
            ] {
                assert!(matches!(
                    aad(&Binding::new(Scope::Strict, ns, name), b"h", item),
                    Err(BindingError::FieldTooLong { .. })
                ));
            }
            // A 65,536-byte item would have wrapped to a zero-length u16 prefix in kmseal 0.1.
            let wrap = "y".repeat(65_536);
            assert!(aad(&Binding::new(Scope::Cluster, "p", "n"), b"h", &wrap).is_err());
        }
    }

    #[test]
    fn scope_codes_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(Scope::from_code(scope.code()), Some(scope));
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!(Scope::from_code(3), None);
        assert!("wide".parse::<Scope>().is_err());
    }

    #[test]
    fn kubernetes_names() {
        assert!(validate_namespace("kube-system").is_ok());
        assert!(validate_namespace("Kube").is_err());
        assert!(validate_namespace("-a").is_err());
        assert!(validate_namespace(&"a".repeat(64)).is_err());
        assert!(validate_name("db.credentials").is_ok());
        assert!(validate_name("db..x").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_item_key("tls.crt").is_ok());
        assert!(validate_item_key("A_b-9").is_ok());
        assert!(validate_item_key("..").is_err());
        assert!(validate_item_key("a/b").is_err());
        assert!(validate_item_key(&"k".repeat(254)).is_err());
        let long = validate_name(&"x".repeat(1000)).unwrap_err().to_string();
        assert!(long.len() < 300, "error text stays bounded: {long}");
    }
}
