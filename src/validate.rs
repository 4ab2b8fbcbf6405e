//! `kmseal validate`: everything that can be known about manifests without KMS or
//! credentials, for CI and pre-commit hooks.
//!
//! Pure: the caller reads the files; this module parses each one and reports findings. For an
//! EncryptedSecret it checks the structure against the CRD's own schema (unknown fields too,
//! which the API server would drop silently or `kubectl apply` refuse), the name and
//! namespace, then every check the controller makes before its first KMS call
//! ([`crate::open::check_offline`]: each value's encoding, envelope, size, scope and key against
//! a key policy), the Secret type, and the 1 MiB total. It also refuses plain `Secret`s that
//! carry data, which should not be committed at all.
//!
//! What it cannot know: whether a value was sealed for this namespace and name and is intact
//! (that takes the data key: `kmseal verify`), and where a policy alias points now.
//!
//! Plain Secrets are read without their values: `data` and `stringData` are counted and
//! skipped by the parser, never kept. No finding ever quotes a value.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::{self, EncryptedSecret};
use crate::binding::{self, Scope};
use crate::envelope::Version;
use crate::manifest::{self, ManifestError};
use crate::open::{self, ItemFormat, OpenError, Rules};
use crate::policy::{KeyPolicy, POLICY_API_VERSION, POLICY_KIND, PolicyError, SecretTypes};
use crate::reconcile;
use crate::repo_config::{self, RepoConfig};
use crate::seal::MAX_SECRET_DATA_LEN;

/// How bad a finding is: errors fail the check, warnings are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One thing found, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    /// 1-based; absent for what concerns the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    pub severity: Severity,
    /// A fixed category, e.g. `schema`, `malformed`, `key_not_allowed`, `plain_secret`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(kind) = self.kind {
            write!(f, ": {kind} ")?;
            match (&self.namespace, &self.name) {
                (Some(ns), Some(name)) => write!(f, "{ns}/{name}")?,
                (None, Some(name)) => write!(f, "{name}")?,
                _ => write!(f, "(unnamed)")?,
            }
        }
        if let Some(item) = &self.item {
            write!(f, ": item {item}")?;
        }
        write!(f, ": {} [{}]: {}", self.severity, self.code, self.message)
    }
}

/// What the checks hold an object against.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The key policy (its aliases cannot be resolved offline).
    pub rules: Rules<'a>,
    pub types: &'a SecretTypes,
    /// The namespace of objects that name none (`kubectl apply -n`).
    pub namespace: Option<&'a str>,
    /// Plain Secrets with data are reported as warnings rather than errors.
    pub allow_plain_secrets: bool,
    /// The repository config's rules for the file being checked, if it has a config.
    pub repo: Option<RepoRules<'a>>,
}

/// A file's place under a repository config (`.kmseal.yaml`): its rules say which key its
/// values must be under.
#[derive(Clone, Copy)]
pub struct RepoRules<'a> {
    pub config: &'a RepoConfig,
    /// The file's path relative to the config's directory.
    pub path: &'a str,
    /// The config file, as shown in messages.
    pub shown: &'a str,
}

/// Where an object was found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    file: String,
    document: usize,
}

/// The findings of a run over one or more files.
#[derive(Debug, Default)]
pub struct Validator {
    findings: Vec<Finding>,
    files: usize,
    encrypted_secrets: usize,
    /// (namespace, name) → where it was first defined, to find duplicates.
    seen: BTreeMap<(String, String), Place>,
}

/// The outcome, in the shape `-o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub files: usize,
    pub encrypted_secrets: usize,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{} EncryptedSecret(s) in {} file(s): {} error(s), {} warning(s)",
            self.encrypted_secrets, self.files, self.errors, self.warnings
        )
    }
}

impl Validator {
    pub fn new() -> Self {
        Validator::default()
    }

    /// A file that could not be checked: `unreadable` (I/O), `too_large` or `not_text`.
    pub fn file_error(&mut self, file: &str, code: &'static str, message: String) {
        self.files += 1;
        self.findings.push(file_finding(file, code, message));
    }

    /// A path named on the command line that could not be checked as a whole (`no_manifests`:
    /// nothing in it to check).
    pub fn path_error(&mut self, path: &str, code: &'static str, message: String) {
        self.findings.push(file_finding(path, code, message));
    }

    /// Checks every document of one file's text.
    pub fn check_text(&mut self, file: &str, text: &str, options: &Options<'_>) {
        let docs = match documents(text) {
            Ok(docs) => docs,
            Err((code, e)) => return self.file_error(file, code, e.to_string()),
        };
        self.files += 1;
        for (index, doc) in docs.into_iter().enumerate() {
            self.check_doc(file, index + 1, doc, options);
        }
    }

    fn check_doc(&mut self, file: &str, document: usize, doc: Doc, options: &Options<'_>) {
        let Doc::Object(object) = doc else {
            return;
        };
        let api_version = object.fields.get("apiVersion").and_then(Value::as_str);
        let kind = object.fields.get("kind").and_then(Value::as_str);
        let group = api_version.and_then(|v| v.split_once('/')).map(|(g, _)| g);
        match (kind, api_version) {
            (Some(k), _) if k.ends_with("List") => {
                for item in object.items.into_iter().flatten() {
                    self.check_doc(file, document, item, options);
                }
            }
            (Some("Secret"), Some("v1")) => {
                self.check_plain_secret(file, document, &object, options)
            }
            (Some(api::KIND), Some(api::API_VERSION)) => {
                self.encrypted_secrets += 1;
                let (findings, identity) = check_encrypted(file, document, object, options);
                self.findings.extend(findings);
                if let Some(identity) = identity {
                    self.note_identity(file, document, identity);
                }
            }
            (Some(POLICY_KIND), Some(POLICY_API_VERSION)) => {
                // A key policy kept beside the manifests: check it as the controller reads it.
                let text = Value::Object(object.fields).to_string();
                if let Err(e) = KeyPolicy::parse_rules(&text) {
                    self.findings.push(Finding {
                        file: file.to_owned(),
                        document: Some(document),
                        kind: Some(POLICY_KIND),
                        namespace: None,
                        name: None,
                        item: None,
                        severity: Severity::Error,
                        code: e.category().as_str(),
                        message: e.to_string(),
                    });
                }
            }
            _ if kind == Some(api::KIND) || group == Some(api::GROUP) => {
                self.encrypted_secrets += 1;
                self.findings.push(Finding {
                    file: file.to_owned(),
                    document: Some(document),
                    kind: Some(api::KIND),
                    namespace: None,
                    name: None,
                    item: None,
                    severity: Severity::Error,
                    code: "schema",
                    message: format!(
                        "apiVersion {:?}, kind {:?} is not served by kmseal; use apiVersion: {}, kind: {}",
                        crate::text::bounded(api_version.unwrap_or(""), 80),
                        crate::text::bounded(kind.unwrap_or(""), 80),
                        api::API_VERSION,
                        api::KIND
                    ),
                });
            }
            _ => {}
        }
    }

    /// Remembers where each object is defined: a second definition of the same namespace and
    /// name would silently replace the first when applied.
    fn note_identity(&mut self, file: &str, document: usize, (namespace, name): (String, String)) {
        let here = Place {
            file: file.to_owned(),
            document,
        };
        match self.seen.get(&(namespace.clone(), name.clone())) {
            Some(first) => self.findings.push(Finding {
                file: file.to_owned(),
                document: Some(document),
                kind: Some(api::KIND),
                namespace: (!namespace.is_empty()).then(|| namespace.clone()),
                name: Some(name),
                item: None,
                severity: Severity::Error,
                code: "duplicate",
                message: format!(
                    "also defined in {}, document {}; applying both keeps only the last: remove one",
                    first.file, first.document
                ),
            }),
            None => {
                self.seen.insert((namespace, name), here);
            }
        }
    }

    fn check_plain_secret(
        &mut self,
        file: &str,
        document: usize,
        object: &Object,
        options: &Options<'_>,
    ) {
        let entries: usize = object.secret_data.values().sum();
        if entries == 0 {
            return;
        }
        let (namespace, name) = identity(&object.fields);
        self.findings.push(Finding {
            file: file.to_owned(),
            document: Some(document),
            kind: Some("Secret"),
            namespace,
            name,
            item: None,
            severity: if options.allow_plain_secrets {
                Severity::Warning
            } else {
                Severity::Error
            },
            code: "plain_secret",
            message: format!(
                "a plain Secret with {entries} value(s) in data/stringData: anyone who can read this file can read them. Seal it (kmseal seal -f FILE --key KEY > sealed.yaml), then delete the plain file and purge it from history"
            ),
        });
    }

    pub fn finish(self) -> Report {
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        Report {
            files: self.files,
            encrypted_secrets: self.encrypted_secrets,
            errors,
            warnings: self.findings.len() - errors,
            findings: self.findings,
        }
    }
}

/// `metadata.namespace` and `metadata.name` as text, if they are text.
fn identity(fields: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let meta = fields.get("metadata");
    let text = |key| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| crate::text::bounded(s, 80))
    };
    (text("namespace"), text("name"))
}

/// Checks one EncryptedSecret document. Returns the findings and, for a well-formed object,
/// its namespace (empty when unknown) and name.
fn check_encrypted(
    file: &str,
    document: usize,
    object: Object,
    options: &Options<'_>,
) -> (Vec<Finding>, Option<(String, String)>) {
    let (file_namespace, name) = identity(&object.fields);
    let mut findings = Vec::new();
    let mut push = |item: Option<&str>, severity, code, message: String| {
        findings.push(Finding {
            file: file.to_owned(),
            document: Some(document),
            kind: Some(api::KIND),
            namespace: file_namespace
                .clone()
                .or(options.namespace.map(str::to_owned)),
            name: name.clone(),
            item: item.map(|s| crate::text::bounded(s, 80)),
            severity,
            code,
            message,
        })
    };

    // Structure first: the typed checks below assume it.
    let mut problems = Vec::new();
    for field in object.secret_data.keys() {
        problems.push(format!(
            "{field}: unknown field (an EncryptedSecret's values go under spec.encryptedData)"
        ));
    }
    if object.items.is_some() {
        problems.push("items: unknown field".to_owned());
    }
    let value = Value::Object(object.fields);
    check_metadata(value.get("metadata"), &mut problems);
    check_schema(&value, crd_schema(), "", true, &mut problems);
    if !problems.is_empty() {
        for problem in problems {
            push(None, Severity::Error, "schema", problem);
        }
        return (findings, None);
    }
    let es: EncryptedSecret = match serde_json::from_value(value) {
        Ok(es) => es,
        // The schema check accepts only what deserializes; serde's message may quote a value.
        Err(_) => {
            push(
                None,
                Severity::Error,
                "schema",
                "not a valid EncryptedSecret".to_owned(),
            );
            return (findings, None);
        }
    };
    let name = es.metadata.name.clone().unwrap_or_default();
    let namespace = match (es.metadata.namespace.as_deref(), options.namespace) {
        (Some(file_ns), Some(flag)) if file_ns != flag => {
            push(
                None,
                Severity::Error,
                "namespace_mismatch",
                format!(
                    "the manifest says namespace {file_ns}, --namespace says {flag}; drop one (kubectl apply -n refuses the same conflict)"
                ),
            );
            return (findings, None);
        }
        (Some(ns), _) | (None, Some(ns)) => Some(ns),
        (None, None) => None,
    };

    let type_ = reconcile::secret_type(&es);
    if let Err(e) = options.types.check(type_).and_then(|()| {
        crate::policy::check_required_items(type_, |i| es.spec.encrypted_data.contains_key(i))
    }) {
        push(None, Severity::Error, e.category().as_str(), e.to_string());
    }
    if let Some(ns) = namespace
        && let Err(e) = options
            .rules
            .policy
            .identity
            .choose(ns, es.spec.service_account_name.as_deref())
    {
        push(None, Severity::Error, e.category().as_str(), e.to_string());
    }
    if es.spec.encrypted_data.is_empty() {
        push(
            None,
            Severity::Warning,
            "empty",
            "no items: the Secret will have no data".to_owned(),
        );
    }

    // Without a namespace the policy cannot be applied, nor a namespace binding checked.
    let unrestricted = (
        crate::policy::KeyPolicy::unrestricted(),
        crate::policy::ResolvedAliases::new(),
    );
    let rules = match namespace {
        Some(_) => options.rules,
        None => Rules {
            policy: &unrestricted.0,
            aliases: &unrestricted.1,
        },
    };
    let checked = match open::check_offline(&es, namespace.unwrap_or(""), &name, rules) {
        Ok(checked) => checked,
        Err(e) => {
            push(None, Severity::Error, e.category().as_str(), e.to_string());
            return (findings, None);
        }
    };
    let mut needs_namespace = false;
    let mut total = 0usize;
    let mut old_format = 0usize;
    for (item, result) in &checked {
        match result {
            Ok(checked) => {
                total = total.saturating_add(checked.plaintext_len.unwrap_or(0));
                match &checked.format {
                    ItemFormat::Envelope { version, scope, .. } => {
                        needs_namespace |= *scope != Scope::Cluster;
                        if *version == Version::V1 {
                            old_format += 1;
                        }
                    }
                    ItemFormat::PlainKms { scope } => needs_namespace |= *scope != Scope::Cluster,
                }
            }
            Err(OpenError::MissingTarget("namespace")) if namespace.is_none() => {
                needs_namespace = true;
            }
            Err(OpenError::Policy(
                PolicyError::KeyNotAllowed { key, pending, .. }
                | PolicyError::PlainKeyNotAllowed { key, pending, .. },
            )) if pending.0 > 0 => push(
                Some(item),
                Severity::Warning,
                "alias_unresolved",
                format!(
                    "key {key} is allowed only if one of the key policy's aliases points to it, which cannot be told offline; run kmseal verify, or name the key by its ARN in the policy"
                ),
            ),
            Err(e) => push(
                Some(item),
                Severity::Error,
                e.category().as_str(),
                e.to_string(),
            ),
        }
    }
    if namespace.is_none() && (needs_namespace || options.rules.policy.rules().is_some()) {
        push(
            None,
            Severity::Warning,
            "namespace_unknown",
            "no metadata.namespace: values sealed for one namespace open only there, and the key policy depends on it; pass -n/--namespace to check for the namespace you apply it to".to_owned(),
        );
    }
    if total > MAX_SECRET_DATA_LEN {
        push(
            None,
            Severity::Error,
            "too_large",
            format!(
                "the values add up to {total} bytes; Kubernetes refuses a Secret whose data is over {MAX_SECRET_DATA_LEN} bytes (1 MiB) in total: split it into several EncryptedSecrets"
            ),
        );
    }
    // A spec.keyId the policy does not name: plain items are refused for it above; for
    // sealed values it means that where it points is not followed when keys rotate.
    if let (Some(ns), Some(_)) = (namespace, options.rules.policy.rules()) {
        // Only for objects otherwise fine: a refused value says enough.
        let sealed_and_fine = checked
            .values()
            .all(|r| matches!(r, Ok(c) if matches!(c.format, ItemFormat::Envelope { .. })));
        if sealed_and_fine
            && let Err(e @ PolicyError::PlainKeyNotAllowed { pending, .. }) = options
                .rules
                .policy
                .plain_key_id(ns, es.spec.key_id.as_deref(), options.rules.aliases)
            && pending.0 == 0
        {
            push(
                None,
                Severity::Warning,
                "key_id_not_allowed",
                format!(
                    "{e}; the controller does not follow where spec.keyId points, so a key rotation would not re-wrap these values (its KeyCurrent condition says KeyIdNotAllowed)"
                ),
            );
        }
    }
    if old_format > 0 {
        push(
            None,
            Severity::Warning,
            "old_format",
            format!(
                "{old_format} item(s) use envelope v1; they still open, but re-seal them with kmseal seal to get v2 (needed for key rotation in place)"
            ),
        );
    }
    if let Some(repo) = options.repo {
        check_repo_rule(&es, namespace, repo, &mut push);
    }
    let identity = (namespace.unwrap_or("").to_owned(), name);
    (findings, Some(identity))
}

/// A value under another key than the repository config's rule for its file says is an error,
/// as is a `spec.keyId` that names another: as far as can be told offline (an alias on either
/// side cannot be followed; `kmseal keys` and `verify` can).
fn check_repo_rule(
    es: &EncryptedSecret,
    namespace: Option<&str>,
    repo: RepoRules<'_>,
    push: &mut impl FnMut(Option<&str>, Severity, &'static str, String),
) {
    let Some(rule) = repo.config.rule_for(repo.path, namespace) else {
        return;
    };
    let Some(want) = rule.key.as_deref() else {
        return;
    };
    let fix = "seal them again under it (or run kmseal rewrap once spec.keyId names it), or change the rule";
    let key_id = es
        .spec
        .key_id
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(key_id) = key_id
        && repo_config::same_key(want, key_id) == Some(false)
    {
        push(
            None,
            Severity::Error,
            "key_not_the_rules",
            format!(
                "spec.keyId is {}, but {} of {} says key {want} for this file; {fix}",
                crate::text::bounded(key_id, 200),
                rule.shown(),
                repo.shown
            ),
        );
        return;
    }
    for (item, value) in &es.spec.encrypted_data {
        let Ok(open::Decoded::Envelope(envelope)) = open::decode_item(value) else {
            continue;
        };
        let have = &envelope.header.key_arn;
        if repo_config::same_key(want, have) == Some(false) {
            push(
                Some(item),
                Severity::Error,
                "key_not_the_rules",
                format!(
                    "sealed under key {}, but {} of {} says key {want} for this file; {fix}",
                    crate::text::bounded(have, 200),
                    rule.shown(),
                    repo.shown
                ),
            );
        }
    }
}

/// Checks one EncryptedSecret given as JSON, e.g. the object of an admission request: exactly
/// the checks `kmseal validate` makes of one document of a file (the same code), without the
/// checks across documents (duplicates). Findings name the file `file`.
pub fn check_encrypted_secret(file: &str, value: Value, options: &Options<'_>) -> Vec<Finding> {
    let Value::Object(mut fields) = value else {
        return vec![Finding {
            kind: Some(api::KIND),
            ..file_finding(file, "schema", "not an object".to_owned())
        }];
    };
    let mut secret_data = BTreeMap::new();
    for field in ["data", "stringData"] {
        if let Some(value) = fields.remove(field) {
            secret_data.insert(field.to_owned(), value.as_object().map_or(1, Map::len));
        }
    }
    let items = fields.remove("items").map(|_| Vec::new());
    let object = Object {
        fields,
        secret_data,
        items,
    };
    check_encrypted(file, 1, object, options).0
}

/// A finding about a whole file.
fn file_finding(file: &str, code: &'static str, message: String) -> Finding {
    Finding {
        file: file.to_owned(),
        document: None,
        kind: None,
        namespace: None,
        name: None,
        item: None,
        severity: Severity::Error,
        code,
        message,
    }
}

/// A file's documents, or why there are none to check (`too_large`, `syntax`). The parser's
/// message is not used: it may quote the text, which may be a secret ([`crate::yaml`]).
fn documents(text: &str) -> Result<Vec<Doc>, (&'static str, ManifestError)> {
    if text.len() > manifest::MAX_INPUT_LEN {
        return Err((
            "too_large",
            ManifestError::TooLarge(Some(text.len() as u64)),
        ));
    }
    serde_saphyr::from_multiple(text).map_err(|e| {
        (
            "syntax",
            ManifestError::Syntax(crate::yaml::problem(&e).to_string()),
        )
    })
}

/// The EncryptedSecret documents of a file's text (also those inside Lists), as generic values,
/// in order; other documents are skipped, plain Secrets without keeping their values.
pub fn encrypted_secret_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    fn collect(doc: Doc, out: &mut Vec<Value>) {
        let Doc::Object(object) = doc else {
            return;
        };
        let kind = object.fields.get("kind").and_then(Value::as_str);
        let api_version = object.fields.get("apiVersion").and_then(Value::as_str);
        if kind.is_some_and(|k| k.ends_with("List")) {
            for item in object.items.into_iter().flatten() {
                collect(item, out);
            }
        } else if kind == Some(api::KIND) && api_version == Some(api::API_VERSION) {
            out.push(Value::Object(object.fields));
        }
    }
    let docs = documents(text).map_err(|(_, e)| e)?;
    let mut out = Vec::new();
    for doc in docs {
        collect(doc, &mut out);
    }
    Ok(out)
}

/// The CRD's schema, which the API server checks objects against.
fn crd_schema() -> &'static JSONSchemaProps {
    static SCHEMA: std::sync::LazyLock<JSONSchemaProps> = std::sync::LazyLock::new(|| {
        EncryptedSecret::crd()
            .spec
            .versions
            .into_iter()
            .find(|v| v.name == api::VERSION)
            .and_then(|v| v.schema)
            .and_then(|s| s.open_api_v3_schema)
            .unwrap_or_default()
    });
    &SCHEMA
}

/// The fields of `ObjectMeta` a manifest may set (the others are the API server's).
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn check_metadata(meta: Option<&Value>, problems: &mut Vec<String>) {
    let Some(meta) = meta.and_then(Value::as_object) else {
        problems.push("metadata: missing; an EncryptedSecret needs metadata.name".to_owned());
        return;
    };
    for key in meta.keys() {
        if !METADATA_FIELDS.contains(&key.as_str()) {
            problems.push(format!(
                "metadata.{}: unknown field",
                crate::text::bounded(key, 80)
            ));
        }
    }
    match meta.get("name") {
        Some(Value::String(name)) => {
            if let Err(e) = binding::validate_name(name) {
                problems.push(format!("metadata.name: {e}"));
            }
        }
        Some(_) => problems.push("metadata.name: must be a string".to_owned()),
        None => problems.push(
            "metadata.name: missing; it names the EncryptedSecret and the Secret it makes"
                .to_owned(),
        ),
    }
    match meta.get("namespace") {
        None | Some(Value::Null) => {}
        Some(Value::String(ns)) if ns.is_empty() => {}
        Some(Value::String(ns)) => {
            if let Err(e) = binding::validate_namespace(ns) {
                problems.push(format!("metadata.namespace: {e}"));
            }
        }
        Some(_) => problems.push("metadata.namespace: must be a string".to_owned()),
    }
    for map in ["labels", "annotations"] {
        match meta.get(map) {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                if entries.values().any(|v| !v.is_string()) {
                    problems.push(format!("metadata.{map}: every value must be a string"));
                }
            }
            Some(_) => problems.push(format!("metadata.{map}: must be a map of strings")),
        }
    }
}

/// The JSON type a schema `type` names, in words.
fn type_matches(value: &Value, type_: &str) -> bool {
    match type_ {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn article(type_: &str) -> &'static str {
    match type_ {
        "object" => "an object (a map)",
        "array" => "a list",
        "string" => "a string",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        _ => "another type",
    }
}

/// Checks `value` against the subset of OpenAPI v3 the CRD uses (a unit test keeps the CRD to
/// that subset). Problems name the path, never the value. `root`: apiVersion, kind and metadata
/// are checked elsewhere.
fn check_schema(
    value: &Value,
    schema: &JSONSchemaProps,
    path: &str,
    root: bool,
    problems: &mut Vec<String>,
) {
    const MAX_PROBLEMS: usize = 50;
    if problems.len() >= MAX_PROBLEMS {
        return;
    }
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if value.is_null() {
        if !root && schema.nullable != Some(true) && schema.default.is_none() {
            problems.push(format!("{path}: must not be null"));
        }
        return;
    }
    if let Some(type_) = &schema.type_
        && !type_matches(value, type_)
    {
        problems.push(format!("{}: must be {}", display(path), article(type_)));
        return;
    }
    if let (Some(max), Some(text)) = (schema.max_length, value.as_str())
        && text.chars().count() as u64 > max.max(0) as u64
    {
        problems.push(format!(
            "{}: {} characters, over the limit of {max}",
            display(path),
            text.chars().count()
        ));
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let names: Vec<String> = allowed
            .iter()
            .filter(|a| !a.0.is_null())
            .map(|a| a.0.to_string())
            .collect();
        problems.push(format!(
            "{}: must be one of {}",
            display(path),
            names.join(", ")
        ));
    }
    if let Some(items) = value.as_array()
        && let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items
    {
        for (i, item) in items.iter().enumerate() {
            check_schema(item, item_schema, &format!("{path}[{i}]"), false, problems);
        }
    }
    let Some(object) = value.as_object() else {
        return;
    };
    if let Some(max) = schema.max_properties
        && object.len() as u64 > max.max(0) as u64
    {
        problems.push(format!(
            "{}: {} entries, over the limit of {max}",
            display(path),
            object.len()
        ));
    }
    for required in schema.required.iter().flatten() {
        if !object.contains_key(required) {
            problems.push(format!("{}: missing", at(required)));
        }
    }
    let properties = schema.properties.as_ref();
    for (key, child) in object {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let shown = at(&crate::text::bounded(key, 80));
        if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
            check_schema(child, child_schema, &shown, false, problems);
        } else {
            match &schema.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(child_schema)) => {
                    check_schema(child, child_schema, &shown, false, problems)
                }
                Some(JSONSchemaPropsOrBool::Bool(true)) => {}
                _ if schema.x_kubernetes_preserve_unknown_fields == Some(true) => {}
                _ => problems.push(format!(
                    "{shown}: unknown field (the API server would drop it; kubectl apply refuses it)"
                )),
            }
        }
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() { "the object" } else { path }
}

/// One YAML document, read without keeping the values of a plain Secret.
enum Doc {
    /// Any other document (a scalar, a list, an empty document).
    Other,
    Object(Object),
}

struct Object {
    /// Every top-level field but `data`, `stringData` and `items`.
    fields: Map<String, Value>,
    /// `data` and `stringData`, if present: how many entries each has (values never kept).
    secret_data: BTreeMap<String, usize>,
    /// `items`, if it is a list (a `List`'s objects).
    items: Option<Vec<Doc>>,
}

/// The `visit_*` methods for scalars and nulls of a visitor that takes any of them as `$value`
/// (they carry nothing these readers keep).
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocVisitor;
        impl<'de> Visitor<'de> for DocVisitor {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a YAML document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
                let mut object = Object {
                    fields: Map::new(),
                    secret_data: BTreeMap::new(),
                    items: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "data" | "stringData" => {
                            let Count(n) = map.next_value()?;
                            object.secret_data.insert(key, n);
                        }
                        "items" => {
                            let Items(items) = map.next_value()?;
                            object.items = items;
                        }
                        _ => {
                            let value: Value = map.next_value()?;
                            object.fields.insert(key, value);
                        }
                    }
                }
                Ok(Doc::Object(object))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Doc::Other)
            }
            scalars_are!(Doc::Other);
        }
        deserializer.deserialize_any(DocVisitor)
    }
}

/// How many entries a map has; its values are skipped, not kept. 0 for anything else.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(0))
            }
            scalars_are!(Count(0));
        }
        deserializer.deserialize_any(CountVisitor)
    }
}

/// A `List`'s `items`: its documents if it is a list.
struct Items(Option<Vec<Doc>>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(doc) = seq.next_element::<Doc>()? {
                    items.push(doc);
                }
                Ok(Items(Some(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Items(None))
            }
            scalars_are!(Items(None));
        }
        deserializer.deserialize_any(ItemsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema check implements only some OpenAPI keywords; the CRD must use no others, or
    /// `validate` would accept what the API server refuses.
    #[test]
    fn the_crd_uses_only_keywords_the_schema_check_implements() {
        fn walk(schema: &JSONSchemaProps, path: &str) {
            let unsupported = [
                ("pattern", schema.pattern.is_some()),
                ("minimum", schema.minimum.is_some()),
                ("maximum", schema.maximum.is_some()),
                ("minLength", schema.min_length.is_some()),
                ("minItems", schema.min_items.is_some()),
                ("maxItems", schema.max_items.is_some()),
                ("minProperties", schema.min_properties.is_some()),
                ("uniqueItems", schema.unique_items.is_some()),
                ("multipleOf", schema.multiple_of.is_some()),
                ("oneOf", schema.one_of.is_some()),
                ("anyOf", schema.any_of.is_some()),
                ("allOf", schema.all_of.is_some()),
                ("not", schema.not.is_some()),
                ("patternProperties", schema.pattern_properties.is_some()),
                (
                    "x-kubernetes-validations",
                    schema.x_kubernetes_validations.is_some(),
                ),
                (
                    "x-kubernetes-int-or-string",
                    schema.x_kubernetes_int_or_string.is_some(),
                ),
                (
                    "x-kubernetes-embedded-resource",
                    schema.x_kubernetes_embedded_resource.is_some(),
                ),
                (
                    "items as a list",
                    matches!(schema.items, Some(JSONSchemaPropsOrArray::Schemas(_))),
                ),
            ];
            for (keyword, used) in unsupported {
                assert!(
                    !used,
                    "{path}: the CRD uses {keyword}; teach check_schema it"
                );
            }
            for (key, child) in schema.properties.iter().flatten() {
                walk(child, &format!("{path}.{key}"));
            }
            if let Some(JSONSchemaPropsOrBool::Schema(child)) = &schema.additional_properties {
                walk(child, &format!("{path}.*"));
            }
            if let Some(JSONSchemaPropsOrArray::Schema(child)) = &schema.items {
                walk(child, &format!("{path}[]"));
            }
        }
        let schema = crd_schema();
        assert!(
            schema
                .properties
                .as_ref()
                .is_some_and(|p| p.contains_key("spec"))
        );
        walk(schema, "");
    }

    #[test]
    fn schema_problems_name_the_path_never_the_value() {
        let value = serde_json::json!({
            "spec": {
                "encryptedData": {"a": 5, "b": null},
                "keyId": "k".repeat(3000),
                "template": {"immutable": "hunter2", "metadata": {"labels": {"x": 1}}},
                "extra": "hunter2",
            },
            "status": {"conditions": [{"type": "Ready"}, {"status": "True"}, 7]},
        });
        let mut problems = Vec::new();
        check_schema(&value, crd_schema(), "", true, &mut problems);
        assert_eq!(
            problems,
            [
                "spec.encryptedData.a: must be a string",
                "spec.encryptedData.b: must not be null",
                "spec.extra: unknown field (the API server would drop it; kubectl apply refuses it)",
                "spec.keyId: 3000 characters, over the limit of 2048",
                "spec.template.immutable: must be true or false",
                "spec.template.metadata.labels.x: must be a string",
                "status.conditions[0].status: missing",
                "status.conditions[1].type: missing",
                "status.conditions[2]: must be an object (a map)",
            ]
        );
        assert!(!problems.iter().any(|p| p.contains("hunter2")));
    }

    #[test]
    fn plain_secret_values_are_counted_not_kept() {
        let docs: Vec<Doc> = serde_saphyr::from_multiple(
            "kind: Secret\ndata: {a: eA==, b: eQ==}\nstringData: {c: hunter2}\n---\n---\n- 1\n",
        )
        .unwrap();
        // The empty document is skipped by the parser.
        assert_eq!(docs.len(), 2);
        let Doc::Object(object) = &docs[0] else {
            panic!("an object")
        };
        assert_eq!(object.secret_data["data"], 2);
        assert_eq!(object.secret_data["stringData"], 1);
        assert!(!object.fields.contains_key("data"));
        assert!(matches!(docs[1], Doc::Other));
    }
}
