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

/// Encryption-context key that binds a data key to a namespace.
pub const CONTEXT_NAMESPACE: &str = "kmseal.dev/namespace";
/// Encryption-context key that binds a data key to an object name.
pub const CONTEXT_NAME: &str = "kmseal.dev/name";

/// Domain separator that starts the binding part of the AAD, so AAD bytes of this format can
/// never be confused with AAD of anything else that shares the data key.
const AAD_LABEL: &[u8] = b"kmseal.dev/v1";

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

    /// The KMS encryption context for the data key of this binding.
    ///
    /// The item name is deliberately absent: one data key serves every item of a Secret, and
    /// the AAD binds each value to its item.
    pub fn encryption_context(&self) -> EncryptionContext {
        let mut context = EncryptionContext::new();
        if let Some(namespace) = self.bound_namespace() {
            context.insert(CONTEXT_NAMESPACE.to_owned(), namespace.to_owned());
        }
        if let Some(name) = self.bound_name() {
            context.insert(CONTEXT_NAME.to_owned(), name.to_owned());
        }
        context
    }

    /// The AES-GCM AAD for one item: the header bytes, then a length-prefixed encoding of the
    /// bound namespace, bound name and item name (empty where the scope does not bind it).
    /// Length prefixes make the encoding injective; the scope itself is in the header.
    pub fn aad(&self, header: &[u8], item: &str) -> Vec<u8> {
        let namespace = self.bound_namespace().unwrap_or("");
        let name = self.bound_name().unwrap_or("");
        let mut aad = Vec::with_capacity(
            header.len() + AAD_LABEL.len() + 6 + namespace.len() + name.len() + item.len(),
        );
        aad.extend_from_slice(header);
        aad.extend_from_slice(AAD_LABEL);
        for field in [namespace, name, item] {
            push_length_prefixed(&mut aad, field.as_bytes());
        }
        aad
    }
}

fn push_length_prefixed(out: &mut Vec<u8>, field: &[u8]) {
    // Kubernetes names and Secret keys are at most 253 bytes, so u16 always fits; validation
    // rejects anything longer before we get here.
    let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&field[..usize::from(len)]);
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
            value: printable(namespace),
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
            value: printable(name),
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
            value: printable(key),
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

/// Names go into error messages; keep them short so hostile input cannot flood the terminal.
fn printable(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_depends_on_scope() {
        let strict = Binding::new(Scope::Strict, "prod", "db").encryption_context();
        assert_eq!(
            strict.get(CONTEXT_NAMESPACE).map(String::as_str),
            Some("prod")
        );
        assert_eq!(strict.get(CONTEXT_NAME).map(String::as_str), Some("db"));
        let ns = Binding::new(Scope::Namespace, "prod", "db").encryption_context();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns.get(CONTEXT_NAMESPACE).map(String::as_str), Some("prod"));
        assert!(
            Binding::new(Scope::Cluster, "prod", "db")
                .encryption_context()
                .is_empty()
        );
    }

    #[test]
    fn aad_binds_each_field_unambiguously() {
        let header = b"hdr";
        let base = Binding::new(Scope::Strict, "ab", "c").aad(header, "x");
        // Moving bytes between fields must change the AAD.
        assert_ne!(
            base,
            Binding::new(Scope::Strict, "a", "bc").aad(header, "x")
        );
        assert_ne!(
            base,
            Binding::new(Scope::Strict, "ab", "c").aad(header, "y")
        );
        assert_ne!(
            base,
            Binding::new(Scope::Strict, "ab", "c").aad(b"hdR", "x")
        );
        // Unbound fields do not influence the AAD.
        let a = Binding::new(Scope::Namespace, "prod", "one").aad(header, "x");
        let b = Binding::new(Scope::Namespace, "prod", "two").aad(header, "x");
        assert_eq!(a, b);
        let c = Binding::new(Scope::Cluster, "prod", "one").aad(header, "x");
        let d = Binding::new(Scope::Cluster, "dev", "two").aad(header, "x");
        assert_eq!(c, d);
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
