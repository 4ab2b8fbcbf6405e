//! `kmseal keys`: an inventory of sealed files: which keys and key materials their values are
//! under, since when, and how many are stale and why. Reads only the clear headers; asks KMS
//! about each key once (`DescribeKey`, `ListKeyRotations`) unless `--offline`.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;

use crate::kms::aws::AwsArgs;
use serde::Serialize;

use super::rewrap::Facts;
use super::{
    CliError, EXIT_OK, EXIT_VERIFY_UNCHECKED, Io, ManifestPaths, ReportFormat, fail, files_of,
    manifest_text, read_capped,
};
use crate::api::EncryptedSecret;
use crate::envelope::{Version, WrapAlgorithm};
use crate::kms::Kms;
use crate::open::{self, Decoded};
use crate::rotation;
use crate::time::rfc3339;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub manifests: ManifestPaths,
    /// Only what the files say: no KMS call, no credentials (no key states, no staleness).
    #[arg(long)]
    pub offline: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        help_heading = "Output"
    )]
    pub output: ReportFormat,
    #[command(flatten)]
    pub repo: super::RepoArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// One key's line of the inventory.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUse {
    pub key_arn: String,
    /// From `DescribeKey`; absent offline or when KMS did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub objects: usize,
    pub values: usize,
    pub oldest_wrap: String,
    pub newest_wrap: String,
    /// Key material ids recorded in the values (where KMS reported one when they were wrapped).
    pub material_ids: BTreeSet<String>,
    /// Values by format: `v1`, `v2`, `v2-rsa`.
    pub formats: BTreeMap<&'static str, usize>,
    /// Stale values by reason (`KeyChanged`, `MaterialRotated`); absent offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<BTreeMap<&'static str, usize>>,
    #[serde(skip)]
    oldest: u64,
    #[serde(skip)]
    newest: u64,
    #[serde(skip)]
    seen_objects: BTreeSet<(String, String)>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Files with at least one EncryptedSecret.
    pub files: usize,
    pub encrypted_secrets: usize,
    /// Plain KMS ciphertext items (their key is `spec.keyId`; not in the table).
    pub plain_kms_values: usize,
    pub keys: Vec<KeyUse>,
}

pub async fn keys<K: Kms>(
    kms: Option<&K>,
    args: &KeysArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let paths = args
        .manifests
        .named("name the files or directories, e.g. kmseal keys deploy/")?;
    let mut inventory = Inventory::default();
    let mut by_key: BTreeMap<String, KeyUse> = BTreeMap::new();
    // (key ARN of the values, the key they should be under, the header) for staleness.
    let mut headers = Vec::new();
    let mut configs = super::repo::Configs::new(&args.repo)?;
    for path in paths {
        let files =
            files_of(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        for file in files {
            // A config that cannot be read fails the run, even for a file it would not matter to.
            configs.place_of(&file)?;
            let (bytes, size) = read_capped(&file, io.stdin)
                .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
            let Ok(documents) = manifest_text(bytes, size)
                .and_then(|text| crate::validate::encrypted_secret_documents(&text))
            else {
                continue;
            };
            if !documents.is_empty() {
                inventory.files += 1;
            }
            for document in documents {
                let Ok(es) = serde_json::from_value::<EncryptedSecret>(document) else {
                    continue;
                };
                inventory.encrypted_secrets += 1;
                let object = (
                    es.metadata.namespace.clone().unwrap_or_default(),
                    es.metadata.name.clone().unwrap_or_default(),
                );
                // Where the values should be: spec.keyId, else the repository config's key.
                let rule_key = match configs.rule_for(
                    &file,
                    es.metadata.namespace.as_deref().filter(|n| !n.is_empty()),
                    io,
                )? {
                    Some(applied) => applied.rule.key,
                    None => None,
                };
                let desired = es
                    .spec
                    .key_id
                    .clone()
                    .filter(|k| !k.trim().is_empty())
                    .or(rule_key);
                for value in es.spec.encrypted_data.values() {
                    let envelope = match open::decode_item(value) {
                        Ok(Decoded::Envelope(envelope)) => envelope,
                        Ok(Decoded::Plain(_)) => {
                            inventory.plain_kms_values += 1;
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let header = envelope.header;
                    let entry = by_key
                        .entry(header.key_arn.clone())
                        .or_insert_with(|| KeyUse {
                            key_arn: header.key_arn.clone(),
                            oldest: u64::MAX,
                            ..KeyUse::default()
                        });
                    entry.values += 1;
                    entry.seen_objects.insert(object.clone());
                    entry.oldest = entry.oldest.min(header.wrapped_at);
                    entry.newest = entry.newest.max(header.wrapped_at);
                    if let Some(id) = &header.key_material_id {
                        entry.material_ids.insert(id.clone());
                    }
                    let format = match (header.version, header.algorithm) {
                        (Version::V1, _) => "v1",
                        (Version::V2, WrapAlgorithm::KmsSymmetric) => "v2",
                        (Version::V2, WrapAlgorithm::RsaOaepSha256) => "v2-rsa",
                    };
                    *entry.formats.entry(format).or_default() += 1;
                    headers.push((desired.clone(), header));
                }
            }
        }
    }
    let mut unchecked = false;
    if !args.offline {
        let kms = kms.ok_or_else(|| fail("this command needs KMS access (or --offline)"))?;
        let mut facts = Facts::new(kms);
        for entry in by_key.values_mut() {
            match facts.get(&entry.key_arn).await {
                Ok(f) => {
                    if let Some(date) = f.deletion_date {
                        entry.deletion_date = Some(rfc3339(date));
                    }
                    entry.state = Some(f.state);
                    entry.stale = Some(BTreeMap::new());
                }
                Err(e) => {
                    unchecked |= e.is_environment();
                    entry.error = Some(e.to_string());
                }
            }
        }
        for (desired, header) in &headers {
            let target = match desired {
                Some(id) => facts.get(id).await,
                None => facts.get(&header.key_arn).await,
            };
            let (Ok(target), Some(entry)) = (target, by_key.get_mut(&header.key_arn)) else {
                continue;
            };
            if let (Some(reason), Some(stale)) =
                (rotation::staleness(header, &target), entry.stale.as_mut())
            {
                *stale.entry(reason.reason()).or_default() += 1;
            }
        }
    }
    for mut entry in by_key.into_values() {
        entry.objects = entry.seen_objects.len();
        entry.oldest_wrap = rfc3339(entry.oldest);
        entry.newest_wrap = rfc3339(entry.newest);
        inventory.keys.push(entry);
    }
    match args.output {
        ReportFormat::Json => {
            let json = serde_json::to_string_pretty(&inventory).map_err(|e| fail(e.to_string()))?;
            writeln!(io.stdout, "{json}")?;
        }
        ReportFormat::Text => print_text(&inventory, io)?,
    }
    Ok(if unchecked {
        EXIT_VERIFY_UNCHECKED
    } else {
        EXIT_OK
    })
}

fn print_text(inventory: &Inventory, io: &mut Io<'_>) -> Result<(), CliError> {
    for key in &inventory.keys {
        let state = match (&key.state, &key.error) {
            (Some(state), _) => state.clone(),
            (None, Some(_)) => "unknown".to_owned(),
            (None, None) => "not asked".to_owned(),
        };
        writeln!(io.stdout, "{}", key.key_arn)?;
        writeln!(
            io.stdout,
            "  state {state}{}; {} value(s) in {} object(s); wrapped {} to {}",
            key.deletion_date
                .as_ref()
                .map(|d| format!(", deletion on {d}"))
                .unwrap_or_default(),
            key.values,
            key.objects,
            key.oldest_wrap,
            key.newest_wrap
        )?;
        let formats: Vec<String> = key
            .formats
            .iter()
            .map(|(f, n)| format!("{n} {f}"))
            .collect();
        writeln!(
            io.stdout,
            "  formats: {}; key materials recorded: {}",
            formats.join(", "),
            key.material_ids.len()
        )?;
        match (&key.stale, &key.error) {
            (Some(stale), _) if stale.is_empty() => writeln!(io.stdout, "  stale: none")?,
            (Some(stale), _) => {
                let reasons: Vec<String> = stale.iter().map(|(r, n)| format!("{n} {r}")).collect();
                writeln!(
                    io.stdout,
                    "  stale: {} (kmseal rewrap moves them)",
                    reasons.join(", ")
                )?
            }
            (None, Some(error)) => writeln!(io.stdout, "  KMS: {error}")?,
            (None, None) => {}
        }
    }
    writeln!(
        io.stdout,
        "{} key(s), {} EncryptedSecret(s) in {} file(s), {} plain KMS value(s)",
        inventory.keys.len(),
        inventory.encrypted_secrets,
        inventory.files,
        inventory.plain_kms_values
    )?;
    Ok(())
}
