//! `kmseal verify`: every item through KMS, ok or why not, no plaintext printed.

use super::*;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub input: EncryptedInput,
    /// Output format: text, or json (per item: ok, bad or unchecked, with the reason).
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        help_heading = "Output"
    )]
    pub output: ReportFormat,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub(super) fn describe(format: &ItemFormat) -> String {
    match format {
        ItemFormat::Envelope {
            version,
            scope,
            algorithm,
            wrapped_at,
            ..
        } => {
            let wrap = match algorithm {
                WrapAlgorithm::KmsSymmetric => "kms",
                WrapAlgorithm::RsaOaepSha256 => "rsa-oaep-sha256",
            };
            format!(
                "envelope {version}, scope {scope}, {wrap}, wrapped {}",
                crate::time::rfc3339(*wrapped_at)
            )
        }
        ItemFormat::PlainKms { scope } => format!("plain KMS ciphertext, scope {scope}"),
    }
}

/// What `verify` found for one item.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum ItemResult {
    /// It decrypts: its size, the key that opened it and how it is sealed.
    Ok {
        bytes: usize,
        key: String,
        format: String,
    },
    /// It does not decrypt, for a reason that is in the item (tampered, another binding, a key
    /// that is gone, ...).
    Bad {
        reason: &'static str,
        message: String,
    },
    /// It could not be checked from here (credentials, network, KMS access): it may be fine.
    Unchecked {
        reason: &'static str,
        message: String,
    },
}

#[derive(Debug, serde::Serialize)]
struct ItemReport {
    item: String,
    #[serde(flatten)]
    result: ItemResult,
}

#[derive(Debug, serde::Serialize)]
struct ObjectReport {
    namespace: String,
    name: String,
    items: Vec<ItemReport>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Counts {
    ok: usize,
    bad: usize,
    unchecked: usize,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    objects: Vec<ObjectReport>,
    summary: Counts,
}

pub(super) async fn verify<K: Kms>(
    kms: &K,
    args: &VerifyArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let text = read_manifest(&args.input.file, io)?;
    let objects = manifest::read_encrypted_secrets(&text)?;
    let mut report = Report {
        objects: Vec::with_capacity(objects.len()),
        summary: Counts::default(),
    };
    for es in &objects {
        let (namespace, name) = target_of(es, args.input.namespace.as_deref())?;
        let mut items = Vec::with_capacity(es.spec.encrypted_data.len());
        for (item, outcome) in open::open_each(kms, es, namespace, name, cli_rules()).await {
            let result = match outcome {
                Ok(opened) => {
                    report.summary.ok += 1;
                    ItemResult::Ok {
                        bytes: opened.plaintext.len(),
                        key: opened.key_arn.clone(),
                        format: describe(&opened.format),
                    }
                }
                Err(open::OpenError::Kms(e)) if e.is_environment() => {
                    report.summary.unchecked += 1;
                    ItemResult::Unchecked {
                        reason: e.category().as_str(),
                        message: e.to_string(),
                    }
                }
                Err(e) => {
                    report.summary.bad += 1;
                    ItemResult::Bad {
                        reason: e.category().as_str(),
                        message: e.to_string(),
                    }
                }
            };
            items.push(ItemReport {
                item: item.to_owned(),
                result,
            });
        }
        report.objects.push(ObjectReport {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            items,
        });
    }
    match args.output {
        ReportFormat::Json => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| fail(e.to_string()))?;
            writeln!(io.stdout, "{json}")?;
        }
        ReportFormat::Text => print_text(&report, io.stdout)?,
    }
    let counts = &report.summary;
    Ok(if counts.unchecked > 0 {
        // What was not checked may be bad too: the environment comes first.
        EXIT_VERIFY_UNCHECKED
    } else if counts.bad > 0 {
        EXIT_VERIFY_FAILED
    } else {
        EXIT_OK
    })
}

fn print_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for object in &report.objects {
        let shown = if object.namespace.is_empty() {
            object.name.clone()
        } else {
            format!("{}/{}", object.namespace, object.name)
        };
        if object.items.is_empty() {
            writeln!(out, "empty   {shown}: no items")?;
        }
        for ItemReport { item, result } in &object.items {
            match result {
                ItemResult::Ok { bytes, key, format } => writeln!(
                    out,
                    "ok      {shown} {item}: {bytes} bytes, key {key}, {format}"
                )?,
                ItemResult::Unchecked { reason, message } => {
                    writeln!(out, "UNCHECKED {shown} {item} [{reason}]: {message}")?
                }
                ItemResult::Bad { reason, message } => {
                    writeln!(out, "FAILED  {shown} {item} [{reason}]: {message}")?
                }
            }
        }
    }
    let Counts { ok, bad, unchecked } = &report.summary;
    writeln!(out, "{ok} ok, {bad} failed, {unchecked} not checked")
}
