//! `kmseal rewrap`: moves the sealed values in files to the key and key material they should be
//! under, with KMS `ReEncrypt`. The data keys never leave KMS, so a rotation bot needs no
//! decrypt permission, and only the changed value strings differ in the files.
//!
//! The key a value should be under is its object's `spec.keyId` (an alias there is followed to
//! the key it points to now), else `--key`, else the key it is under (then only rotated key
//! material makes it stale). The decisions are [`crate::rotation`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;

use super::{
    CliError, EXIT_ERROR, EXIT_OK, EXIT_VERIFY_FAILED, EXIT_VERIFY_UNCHECKED, Io, ManifestPaths,
    fail, files_of, manifest_text, read_capped, usage, write_atomically,
};
use crate::api::EncryptedSecret;
use crate::binding::Scope;
use crate::envelope::{Envelope, Header};
use crate::kms::KeyFacts;
use crate::kms::aws::AwsArgs;
use crate::kms::{Kms, KmsError};
use crate::open::{self, Decoded};
use crate::rotation::{self, Fix, RewrapGroup, Stale, ValueState};

#[derive(Debug, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    pub manifests: ManifestPaths,
    /// The key for objects whose spec.keyId is empty. To move values to another key, change
    /// spec.keyId (or the alias it names) and run rewrap.
    #[arg(long, value_name = "KEY", value_parser = super::key_name, help_heading = "The key")]
    pub key: Option<String>,
    /// Namespace of objects that name none (their values are bound to it).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Change nothing; list stale values and exit 3 if there are any (a CI gate).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub repo: super::RepoArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// What KMS says about each key, asked once per key per run.
pub(super) struct Facts<'k, K> {
    kms: &'k K,
    known: HashMap<String, Result<KeyFacts, KmsError>>,
}

impl<'k, K: Kms> Facts<'k, K> {
    pub(super) fn new(kms: &'k K) -> Self {
        Facts {
            kms,
            known: HashMap::new(),
        }
    }

    pub(super) async fn get(&mut self, key_id: &str) -> Result<KeyFacts, KmsError> {
        if let Some(known) = self.known.get(key_id) {
            return known.clone();
        }
        let facts = crate::kms::key_facts(self.kms, key_id).await;
        if let Ok(f) = &facts {
            self.known.insert(f.key_arn.clone(), facts.clone());
        }
        self.known.insert(key_id.to_owned(), facts.clone());
        facts
    }
}

#[derive(Default)]
struct Tally {
    values: usize,
    stale: usize,
    rewrapped: usize,
    cannot: usize,
    failed: usize,
    unchecked: usize,
    /// Values under a disabled key or one pending deletion, that stay there.
    at_risk: usize,
}

/// Where a value is, for messages.
struct Place<'a> {
    file: &'a str,
    object: String,
    item: &'a str,
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.file, self.object, self.item)
    }
}

/// Opened values by item name, kept zeroized.
type Plaintexts = BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>;

struct Run<'r, 'k, 'io, K> {
    facts: Facts<'k, K>,
    configs: super::repo::Configs,
    tally: Tally,
    args: &'r RewrapArgs,
    io: &'r mut Io<'io>,
}

pub async fn rewrap<K: Kms>(kms: &K, args: &RewrapArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    let paths = args.manifests.named(
        "name the files or directories to rewrap, e.g. kmseal rewrap deploy/ (add --check to only report)",
    )?;
    if paths.iter().any(|p| p.as_path() == Path::new("-")) {
        return Err(usage(
            "rewrap changes files in place and cannot read stdin; name the files",
        ));
    }
    let mut run = Run {
        facts: Facts::new(kms),
        configs: super::repo::Configs::new(&args.repo)?,
        tally: Tally::default(),
        args,
        io,
    };
    for path in paths {
        let files =
            files_of(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        for file in files {
            run.file(&file).await?;
        }
    }
    let t = &run.tally;
    writeln!(
        run.io.stdout,
        "{} value(s): {} stale, {} rewrapped, {} to seal again, {} on a key at risk, {} failed, {} blocked (credentials, network or KMS access)",
        t.values, t.stale, t.rewrapped, t.cannot, t.at_risk, t.failed, t.unchecked
    )?;
    // What is left for a person: stale values rewrap cannot move (or, with --check, any), and
    // values on a key that is disabled or about to be deleted.
    let left_stale = t.at_risk + if args.check { t.stale } else { t.cannot };
    Ok(if t.unchecked > 0 {
        EXIT_VERIFY_UNCHECKED
    } else if t.failed > 0 {
        EXIT_ERROR
    } else if left_stale > 0 {
        EXIT_VERIFY_FAILED
    } else {
        EXIT_OK
    })
}

impl<K: Kms> Run<'_, '_, '_, K> {
    async fn file(&mut self, path: &Path) -> Result<(), CliError> {
        let shown = path.display().to_string();
        // A config that cannot be read fails the run, even for a file it would not matter to.
        self.configs.place_of(path)?;
        let (bytes, size) = read_capped(path, self.io.stdin)
            .map_err(|e| fail(format!("cannot read {shown}: {e}")))?;
        let text = match manifest_text(bytes, size)
            .and_then(|text| crate::validate::encrypted_secret_documents(&text).map(|d| (text, d)))
        {
            Ok(found) => found,
            Err(e) => {
                writeln!(self.io.stderr, "skipped {shown}: {e}")?;
                return Ok(());
            }
        };
        let (text, documents) = text;
        let mut replacements: Vec<(String, String)> = Vec::new();
        for document in documents {
            match serde_json::from_value::<EncryptedSecret>(document) {
                Ok(es) => self.object(path, &shown, &es, &mut replacements).await?,
                Err(_) => {
                    self.tally.failed += 1;
                    writeln!(
                        self.io.stdout,
                        "FAILED  {shown}: an EncryptedSecret that is not valid; run kmseal validate {shown}"
                    )?;
                }
            }
        }
        if replacements.is_empty() {
            return Ok(());
        }
        let mut updated = text.to_string();
        for (old, new) in &replacements {
            // Values are unique (random nonces and data keys); anything else is a file this
            // command should not guess about.
            if updated.matches(old.as_str()).count() != 1 {
                return Err(fail(format!(
                    "{shown}: a sealed value is not written as one string on one line (or appears twice), so it cannot be replaced in place; nothing in this file was changed"
                )));
            }
            updated = updated.replacen(old.as_str(), new, 1);
        }
        write_atomically(path, updated.as_bytes())
    }

    async fn object(
        &mut self,
        path: &Path,
        file: &str,
        es: &EncryptedSecret,
        replacements: &mut Vec<(String, String)>,
    ) -> Result<(), CliError> {
        let name = es.metadata.name.clone().unwrap_or_default();
        let namespace = es
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| self.args.namespace.clone())
            .unwrap_or_default();
        let object = if namespace.is_empty() {
            name.clone()
        } else {
            format!("{namespace}/{name}")
        };
        let applied = self.configs.rule_for(
            path,
            Some(namespace.as_str()).filter(|n| !n.is_empty()),
            self.io,
        )?;
        let rule_key = applied.as_ref().and_then(|a| a.rule.key.clone());
        let spec_key = es
            .spec
            .key_id
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        if let (Some(spec), Some(want), Some(applied)) = (&spec_key, &rule_key, &applied)
            && crate::repo_config::same_key(want, spec) == Some(false)
        {
            self.tally.failed += 1;
            writeln!(
                self.io.stdout,
                "FAILED  {file}: {object}: spec.keyId is {spec}, but {} of {} says key {want}; set spec.keyId to {want} and run kmseal rewrap again to move the values there, or change the rule",
                applied.rule.shown(),
                applied.config.shown
            )?;
            return Ok(());
        }
        let desired_id = spec_key.or_else(|| self.args.key.clone()).or(rule_key);
        let mut groups: Vec<RewrapGroup<(String, String, Box<Envelope>)>> = Vec::new();
        let mut upgrades: Vec<(String, String, Stale)> = Vec::new();
        for (item, value) in &es.spec.encrypted_data {
            let place = Place {
                file,
                object: object.clone(),
                item,
            };
            let envelope = match open::decode_item(value) {
                Ok(Decoded::Envelope(envelope)) => envelope,
                Ok(Decoded::Plain(_)) => {
                    writeln!(
                        self.io.stdout,
                        "skipped {place}: plain KMS ciphertext; re-encrypt it with aws kms re-encrypt, or seal it with kmseal seal"
                    )?;
                    continue;
                }
                Err(e) => {
                    writeln!(
                        self.io.stdout,
                        "skipped {place}: not a valid sealed value ({e}); run kmseal validate"
                    )?;
                    continue;
                }
            };
            self.tally.values += 1;
            let header = &envelope.header;
            if namespace.is_empty() && header.scope != Scope::Cluster {
                self.tally.failed += 1;
                writeln!(
                    self.io.stdout,
                    "FAILED  {place}: the value is bound to a namespace and the manifest names none; pass -n/--namespace"
                )?;
                continue;
            }
            let own = match self.facts.get(&header.key_arn).await {
                Ok(own) => own,
                Err(e) => {
                    self.kms_failure(&place, &e)?;
                    continue;
                }
            };
            let target = match &desired_id {
                Some(id) => match self.facts.get(id).await {
                    Ok(target) => target,
                    Err(e) => {
                        self.kms_failure(&place, &e)?;
                        continue;
                    }
                },
                None => own.clone(),
            };
            let (reason, fix) = match rotation::classify(header, &own, &target, self.io.now) {
                ValueState::Current => continue,
                ValueState::AtRisk(risk) => {
                    self.tally.at_risk += 1;
                    writeln!(
                        self.io.stdout,
                        "RISK    {place} [{}]: under {}: {risk}",
                        risk.reason(),
                        header.key_arn
                    )?;
                    continue;
                }
                ValueState::Stale(reason, fix) => (reason, fix),
            };
            self.tally.stale += 1;
            match fix {
                // v1 authenticates its wrapping, so it cannot be moved: it is opened and
                // sealed again as v2 instead (below), which needs kms:Decrypt.
                Fix::SealV1Again if self.args.check => writeln!(
                    self.io.stdout,
                    "STALE   {place} [{reason}]: {}; it is envelope v1, which rewrap seals again as v2 (that needs kms:Decrypt and kms:GenerateDataKey)",
                    describe_move(reason, header, &target)
                )?,
                Fix::SealV1Again => upgrades.push((item.clone(), value.clone(), reason)),
                Fix::SealAgain(why) => {
                    self.tally.cannot += 1;
                    writeln!(
                        self.io.stdout,
                        "SEAL    {place} [{reason}]: stale, and rewrap cannot move it: {why}"
                    )?;
                }
                Fix::Move if self.args.check => writeln!(
                    self.io.stdout,
                    "STALE   {place} [{reason}]: {}",
                    describe_move(reason, header, &target)
                )?,
                Fix::Move => rotation::add_to_group(
                    &mut groups,
                    reason,
                    &envelope.header.clone(),
                    &target,
                    (item.clone(), value.clone(), envelope),
                ),
            }
        }
        if !upgrades.is_empty() {
            self.upgrade(
                file,
                es,
                &namespace,
                &object,
                desired_id.as_deref(),
                &upgrades,
                replacements,
            )
            .await?;
        }
        for group in groups {
            let target = &group.target;
            let moved = self.move_group(&group, &namespace, &name, target).await;
            for (item, old, envelope) in &group.items {
                let place = Place {
                    file,
                    object: object.clone(),
                    item,
                };
                match &moved {
                    Ok(header) => match envelope.rewrapped(header) {
                        Ok(bytes) => {
                            self.tally.rewrapped += 1;
                            writeln!(
                                self.io.stdout,
                                "rewrapped {place} [{}]: {}",
                                group.reason,
                                describe_move(group.reason, &group.header, target)
                            )?;
                            replacements.push((old.clone(), BASE64.encode(bytes)));
                        }
                        Err(e) => {
                            self.tally.failed += 1;
                            writeln!(self.io.stdout, "FAILED  {place}: {e}")?;
                        }
                    },
                    Err(e) => self.kms_failure(&place, e)?,
                }
            }
        }
        Ok(())
    }

    /// One `ReEncrypt` for a group: the new wrapping, checked to be under the target key.
    async fn move_group(
        &mut self,
        group: &RewrapGroup<(String, String, Box<Envelope>)>,
        namespace: &str,
        name: &str,
        target: &KeyFacts,
    ) -> Result<Header, KmsError> {
        crate::rotation::move_data_key(
            self.facts.kms,
            &group.header,
            namespace,
            name,
            &target.key_arn,
            self.io.now,
            crate::kms::Principal::CONTROLLER,
        )
        .await
    }

    /// Stale envelope v1 values of one object, sealed again as v2 under the key they should be
    /// under: opened (one `Decrypt` per data key) and sealed with one new data key
    /// (`GenerateDataKey`). The only path of rewrap that sees plaintext, which it keeps in
    /// zeroized memory and never prints.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(
        &mut self,
        file: &str,
        es: &EncryptedSecret,
        namespace: &str,
        object: &str,
        desired_id: Option<&str>,
        upgrades: &[(String, String, Stale)],
        replacements: &mut Vec<(String, String)>,
    ) -> Result<(), CliError> {
        let name = es.metadata.name.clone().unwrap_or_default();
        fn place<'p>(file: &'p str, object: &str, item: &'p str) -> Place<'p> {
            Place {
                file,
                object: object.to_owned(),
                item,
            }
        }
        let mut subset = es.clone();
        subset.spec.encrypted_data = upgrades
            .iter()
            .map(|(item, value, _)| (item.clone(), value.clone()))
            .collect();
        let mut by_scope: BTreeMap<(Scope, String), Plaintexts> = BTreeMap::new();
        let opened = open::open_each(
            self.facts.kms,
            &subset,
            namespace,
            &name,
            super::cli_rules(),
        )
        .await;
        for ((item, value, _), (_, outcome)) in upgrades.iter().zip(opened) {
            let Ok(Decoded::Envelope(envelope)) = open::decode_item(value) else {
                continue;
            };
            match outcome {
                Ok(o) => {
                    let target = desired_id.unwrap_or(&envelope.header.key_arn).to_owned();
                    by_scope
                        .entry((envelope.header.scope, target))
                        .or_default()
                        .insert(item.clone(), o.plaintext);
                }
                Err(e) => {
                    let p = place(file, object, item);
                    if let open::OpenError::Kms(kms) = &e
                        && kms.is_environment()
                    {
                        self.tally.unchecked += 1;
                    } else {
                        self.tally.failed += 1;
                    }
                    writeln!(
                        self.io.stdout,
                        "FAILED  {p}: it is envelope v1, which rewrap seals again as v2; that needs kms:Decrypt on its key and kms:GenerateDataKey on the target key: {e}"
                    )?;
                }
            }
        }
        for ((scope, target), items) in by_scope {
            let wrapper = crate::seal::Wrapper::Kms {
                kms: self.facts.kms,
                key_id: &target,
            };
            let ns = (!namespace.is_empty()).then_some(namespace);
            let sealed = crate::seal::seal_items(
                &wrapper,
                scope,
                ns,
                &name,
                &items,
                &mut crate::random::OsRandom,
                self.io.now,
            )
            .await;
            match sealed {
                Ok((key_arn, values)) => {
                    for (item, new) in values {
                        let Some((_, old, reason)) = upgrades.iter().find(|(i, _, _)| *i == item)
                        else {
                            continue;
                        };
                        self.tally.rewrapped += 1;
                        writeln!(
                            self.io.stdout,
                            "upgraded {} [{reason}]: envelope v1 sealed again as v2 under {key_arn} (this used kms:Decrypt and kms:GenerateDataKey)",
                            place(file, object, &item)
                        )?;
                        replacements.push((old.clone(), new));
                    }
                }
                Err(e) => {
                    for item in items.keys() {
                        self.tally.failed += 1;
                        writeln!(
                            self.io.stdout,
                            "FAILED  {}: sealing it again as v2 failed: {e}",
                            place(file, object, item)
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn kms_failure(&mut self, place: &Place<'_>, e: &KmsError) -> Result<(), CliError> {
        // Credentials, network or KMS access: the values may be fine, the run is not.
        if e.is_environment() {
            self.tally.unchecked += 1;
        } else {
            self.tally.failed += 1;
        }
        writeln!(self.io.stdout, "FAILED  {place} [{}]: {e}", e.category())?;
        Ok(())
    }
}

fn describe_move(reason: Stale, header: &Header, target: &KeyFacts) -> String {
    match reason {
        Stale::KeyChanged => format!(
            "under {}, should be under {}",
            header.key_arn, target.key_arn
        ),
        Stale::MaterialRotated => format!(
            "under older key material of {} (current: {})",
            target.key_arn,
            target
                .current_material_id
                .as_deref()
                .unwrap_or("rotated since the value was wrapped")
        ),
    }
}
