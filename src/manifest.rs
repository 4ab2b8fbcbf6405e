//! Reading and writing Kubernetes manifests (YAML or JSON, one or several documents).
//!
//! Input is hostile until proven otherwise: its size is capped, the YAML parser runs with its
//! resource budget, and parse errors are reported by position only, because a parser's
//! message may quote the text around the error, and that text may be a secret.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::api::{self, EncryptedSecret};
use crate::seal::PlainSecret;

/// The largest manifest file kmseal reads.
pub const MAX_INPUT_LEN: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the input is {}, over the limit of {MAX_INPUT_LEN} bytes; split it into several files",
        size_text(*.0)
    )]
    TooLarge(Option<u64>),
    #[error("the input is not valid UTF-8 text; save the manifest as UTF-8 YAML or JSON")]
    NotUtf8,
    /// What is wrong and where, in [`crate::yaml`]'s words (never the input's text).
    #[error("the input is not valid YAML or JSON{0}")]
    Syntax(String),
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
    #[error("the input holds no {0}; pass a manifest on stdin or with -f")]
    Empty(&'static str),
}

/// Where a parse error is and what it is, e.g. " at line 3, column 7: unterminated quoted
/// string", never quoting the input.
fn position(err: &serde_saphyr::Error) -> String {
    crate::yaml::problem(err).to_string()
}

fn check_size(input: &str) -> Result<(), ManifestError> {
    if input.len() > MAX_INPUT_LEN {
        return Err(ManifestError::TooLarge(Some(input.len() as u64)));
    }
    Ok(())
}

/// "N bytes" for a known size; "larger" when only a capped read saw it (stdin).
pub fn size_text(size: Option<u64>) -> String {
    size.map_or_else(|| "larger".to_owned(), |n| format!("{n} bytes"))
}

/// Decodes raw bytes (a file or stdin) as text, enforcing the size limit first. `bytes` may be
/// a read capped just over the limit, so its length is not reported as the input's size.
pub fn text(bytes: Vec<u8>) -> Result<Zeroizing<String>, ManifestError> {
    if bytes.len() > MAX_INPUT_LEN {
        let _ = Zeroizing::new(bytes);
        return Err(ManifestError::TooLarge(None));
    }
    String::from_utf8(bytes).map(Zeroizing::new).map_err(|e| {
        // The rejected bytes may be a secret: wipe them too.
        let _ = Zeroizing::new(e.into_bytes());
        ManifestError::NotUtf8
    })
}

/// The fields of a Secret (or of a List of them) that kmseal reads. Values are zeroized.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSecret {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    immutable: Option<bool>,
    #[serde(default)]
    data: Option<BTreeMap<String, Zeroizing<String>>>,
    #[serde(default)]
    string_data: Option<BTreeMap<String, Zeroizing<String>>>,
    #[serde(default)]
    items: Option<Vec<RawSecret>>,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Annotations that describe the source object rather than the secret, and must not be copied.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Reads Secrets from YAML or JSON: one or several documents, or a `List`.
/// `default_namespace` fills in a missing `metadata.namespace`.
pub fn read_secrets(
    input: &str,
    default_namespace: Option<&str>,
) -> Result<Vec<PlainSecret>, ManifestError> {
    check_size(input)?;
    let docs: Vec<RawSecret> =
        serde_saphyr::from_multiple(input).map_err(|e| ManifestError::Syntax(position(&e)))?;
    let mut secrets = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let index = index + 1;
        if doc.kind.as_deref() == Some("List") {
            for item in doc.items.unwrap_or_default() {
                secrets.push(secret_from_raw(index, item, default_namespace)?);
            }
        } else {
            secrets.push(secret_from_raw(index, doc, default_namespace)?);
        }
    }
    if secrets.is_empty() {
        return Err(ManifestError::Empty("Secret"));
    }
    Ok(secrets)
}

fn secret_from_raw(
    index: usize,
    raw: RawSecret,
    default_namespace: Option<&str>,
) -> Result<PlainSecret, ManifestError> {
    let fail = |message: String| ManifestError::Document { index, message };
    match (raw.api_version.as_deref(), raw.kind.as_deref()) {
        (Some("v1"), Some("Secret")) => {}
        (Some(api::API_VERSION), Some(api::KIND)) => {
            return Err(fail(
                "this is already an EncryptedSecret; to add items use `kmseal seal --merge-into FILE`"
                    .into(),
            ));
        }
        (api_version, kind) => {
            return Err(fail(format!(
                "expected a Secret (apiVersion: v1, kind: Secret), found apiVersion {:?}, kind {:?}",
                api_version.unwrap_or(""),
                kind.unwrap_or("")
            )));
        }
    }
    let meta = raw.metadata.unwrap_or_default();
    let name = meta
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail("the Secret has no metadata.name".into()))?;
    let mut data = BTreeMap::new();
    for (key, value) in raw.data.unwrap_or_default() {
        let decoded = BASE64.decode(value.trim()).map_err(|_| {
            fail(format!(
                "data item {key:?} is not valid base64 (use stringData for plain text)"
            ))
        })?;
        data.insert(key, Zeroizing::new(decoded));
    }
    // As in Kubernetes, stringData wins over data for the same key.
    for (key, value) in raw.string_data.unwrap_or_default() {
        data.insert(key, Zeroizing::new(value.as_bytes().to_vec()));
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    for dropped in DROPPED_ANNOTATIONS {
        annotations.remove(*dropped);
    }
    Ok(PlainSecret {
        namespace: meta
            .namespace
            .filter(|n| !n.is_empty())
            .or_else(|| default_namespace.map(str::to_owned)),
        name,
        type_: raw.type_.filter(|t| !t.is_empty()),
        labels: meta.labels.unwrap_or_default(),
        annotations,
        immutable: raw.immutable,
        data,
    })
}

/// Reads EncryptedSecrets from YAML or JSON: one or several documents, or a `List`.
pub fn read_encrypted_secrets(input: &str) -> Result<Vec<EncryptedSecret>, ManifestError> {
    check_size(input)?;
    // Ciphertext is not secret, so generic values are fine here.
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(input).map_err(|e| ManifestError::Syntax(position(&e)))?;
    let mut out = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let index = index + 1;
        if doc.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = doc
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                out.push(encrypted_from_value(index, item)?);
            }
        } else {
            out.push(encrypted_from_value(index, doc)?);
        }
    }
    if out.is_empty() {
        return Err(ManifestError::Empty("EncryptedSecret"));
    }
    Ok(out)
}

fn encrypted_from_value(
    index: usize,
    value: serde_json::Value,
) -> Result<EncryptedSecret, ManifestError> {
    let fail = |message: String| ManifestError::Document { index, message };
    let api_version = value.get("apiVersion").and_then(|v| v.as_str());
    let kind = value.get("kind").and_then(|v| v.as_str());
    if api_version != Some(api::API_VERSION) || kind != Some(api::KIND) {
        return Err(fail(format!(
            "expected an EncryptedSecret (apiVersion: {}, kind: {}), found apiVersion {:?}, kind {:?}",
            api::API_VERSION,
            api::KIND,
            api_version.unwrap_or(""),
            kind.unwrap_or("")
        )));
    }
    let es: EncryptedSecret = serde_json::from_value(value)
        .map_err(|e| fail(format!("not a valid EncryptedSecret: {e}")))?;
    if es.metadata.name.as_deref().unwrap_or("").is_empty() {
        return Err(fail("the EncryptedSecret has no metadata.name".into()));
    }
    Ok(es)
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Writes objects as YAML documents or as JSON (a `List` when there are several).
pub fn write<T: serde::Serialize>(objects: &[T], format: Format) -> Result<String, String> {
    match format {
        Format::Yaml => {
            let mut out = String::new();
            for (i, object) in objects.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                // Plain one-line scalars, as kubectl and kubeseal write them: ciphertext
                // stays on one line, so a changed item is a one-line Git diff.
                let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
                let doc = serde_saphyr::to_string_with_options(object, options)
                    .map_err(|e| e.to_string())?;
                out.push_str(&doc);
                if !doc.ends_with('\n') {
                    out.push('\n');
                }
            }
            Ok(out)
        }
        Format::Json => {
            let value = if let [single] = objects {
                serde_json::to_value(single)
            } else {
                serde_json::to_value(objects).map(
                    |items| serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
                )
            }
            .map_err(|e| e.to_string())?;
            let mut out = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
            out.push('\n');
            Ok(out)
        }
    }
}

/// A file's text with one of its EncryptedSecrets changed, as edited in place.
#[derive(Debug)]
pub struct Edited {
    pub text: String,
    /// Set when the document could not be edited line by line and was written anew (its
    /// comments and layout lost; the other documents are untouched): why.
    pub rewritten: Option<String>,
}

/// `text` (a YAML or JSON manifest file holding `objects`, as [`read_encrypted_secrets`] read
/// it) with `objects[index]` replaced by `after`: in YAML, its changed values replaced and its
/// new items added line by line (see [`crate::edit`]), so comments, order, quoting, blank
/// lines, line ends and every other document stay as they were. What cannot be done that way
/// (a changed template, flow style, a `List`) rewrites that document alone, and says so. The
/// result is checked to read back as the objects meant.
pub fn edit_encrypted_secret(
    text: &str,
    objects: &[EncryptedSecret],
    index: usize,
    after: &EncryptedSecret,
) -> Result<Edited, String> {
    use crate::edit;
    let mut meant = objects.to_vec();
    meant[index] = after.clone();
    let reads_as = |text: &str, objects: &[EncryptedSecret]| {
        read_encrypted_secrets(text).is_ok_and(|read| {
            serde_json::to_value(&read).ok() == serde_json::to_value(objects).ok()
        })
    };
    let whole = |why: &str| -> Result<Edited, String> {
        let format = if text.trim_start().starts_with(['{', '[']) {
            Format::Json
        } else {
            Format::Yaml
        };
        Ok(Edited {
            text: with_line_ending(&write(&meant, format)?, edit::line_ending(text)),
            rewritten: Some(why.to_owned()),
        })
    };
    if text.trim_start().starts_with(['{', '[']) {
        // JSON has no comments to keep.
        let mut edited = whole("")?;
        edited.rewritten = None;
        return Ok(edited);
    }
    let ranges = edit::documents(text);
    let one_each = ranges.len() == objects.len()
        && ranges
            .iter()
            .zip(objects)
            .all(|(r, o)| reads_as(&text[r.clone()], std::slice::from_ref(o)));
    if !one_each {
        return whole(
            "its documents could not be told apart (a List?), so the file was written anew",
        );
    }
    let range = ranges[index].clone();
    let before = &objects[index];
    let in_place = (|| -> Result<String, String> {
        if before.spec.template != after.spec.template
            || before.spec.rotation != after.spec.rotation
            || before.metadata != after.metadata
        {
            return Err("its template changed".into());
        }
        let mut doc = text[range.clone()].to_owned();
        let mut added = Vec::new();
        for (item, value) in &after.spec.encrypted_data {
            match before.spec.encrypted_data.get(item) {
                Some(old) if old == value => {}
                Some(old) => {
                    doc = edit::replace_value(&doc, 0..doc.len(), old, value)
                        .map_err(|e| e.to_string())?;
                }
                None => added.push((item.as_str(), value.as_str())),
            }
        }
        if before
            .spec
            .encrypted_data
            .keys()
            .any(|k| !after.spec.encrypted_data.contains_key(k))
        {
            return Err("an item was removed".into());
        }
        doc = edit::add_entries(&doc, 0..doc.len(), &["spec", "encryptedData"], &added)
            .map_err(|e| e.to_string())?;
        match (&before.spec.key_id, &after.spec.key_id) {
            (a, b) if a == b => {}
            (None, Some(key)) => {
                doc = edit::add_entries(&doc, 0..doc.len(), &["spec"], &[("keyId", key)])
                    .map_err(|e| e.to_string())?;
            }
            _ => return Err("its spec.keyId changed".into()),
        }
        let text = edit::replace_document(text, range.clone(), &doc);
        if reads_as(&text, &meant) {
            Ok(text)
        } else {
            Err("the edit did not read back as meant".into())
        }
    })();
    match in_place {
        Ok(text) => Ok(Edited {
            text,
            rewritten: None,
        }),
        Err(why) => {
            let doc = with_line_ending(
                &write(std::slice::from_ref(after), Format::Yaml)?,
                edit::line_ending(text),
            );
            let text = edit::replace_document(text, range, &doc);
            if !reads_as(&text, &meant) {
                return whole(&format!(
                    "{why}, and its document could not be replaced alone"
                ));
            }
            Ok(Edited {
                text,
                rewritten: Some(format!(
                    "{why}, so this EncryptedSecret's document was written anew (its comments and layout are lost; other documents are untouched)"
                )),
            })
        }
    }
}

fn with_line_ending(text: &str, eol: &str) -> String {
    if eol == "\n" {
        text.to_owned()
    } else {
        text.replace('\n', eol)
    }
}

/// The Secret a set of decrypted items makes, for `unseal`.
pub fn secret_manifest(es: &EncryptedSecret, data: BTreeMap<String, Zeroizing<Vec<u8>>>) -> Secret {
    let template = es.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: es.metadata.name.clone(),
            namespace: es.metadata.namespace.clone(),
            labels: (!meta.labels.is_empty()).then_some(meta.labels),
            annotations: (!meta.annotations.is_empty()).then_some(meta.annotations),
            ..ObjectMeta::default()
        },
        type_: Some(template.type_.unwrap_or_else(|| "Opaque".to_owned())),
        immutable: template.immutable,
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_json_and_lists() {
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n  namespace: ns\ndata:\n  k: aGk=\nstringData:\n  s: plain\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: b}\n";
        let secrets = read_secrets(yaml, Some("dflt")).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(&**secrets[0].data.get("k").unwrap(), b"hi");
        assert_eq!(&**secrets[0].data.get("s").unwrap(), b"plain");
        assert_eq!(secrets[1].namespace.as_deref(), Some("dflt"));
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Secret","metadata":{"name":"c","namespace":"x"},"data":{"k":"aGk="}}]}"#;
        let secrets = read_secrets(json, None).unwrap();
        assert_eq!(secrets[0].name, "c");
    }

    #[test]
    fn syntax_errors_do_not_quote_the_input() {
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\nstringData:\n  password: \"hunter2-very-secret\n  other: [unclosed\n";
        let err = read_secrets(yaml, None).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let typed = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\nstringData:\n  password: [hunter2-very-secret]\n";
        let err = read_secrets(typed, None).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn rejects_other_kinds() {
        let err = read_secrets(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected a Secret"), "{err}");
        assert!(matches!(
            read_secrets("", None),
            Err(ManifestError::Empty(_))
        ));
    }
}
