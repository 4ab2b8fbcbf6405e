//! `kmseal verify`: every item through KMS, ok or why not, no plaintext printed.

use super::*;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub input: EncryptedInput,
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

pub(super) async fn verify<K: Kms>(
    kms: &K,
    args: &VerifyArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let text = read_manifest(&args.input.file, io)?;
    let objects = manifest::read_encrypted_secrets(&text)?;
    let (mut ok, mut failed, mut unchecked) = (0usize, 0usize, 0usize);
    for es in &objects {
        let (namespace, name) = target_of(es, args.input.namespace.as_deref())?;
        let shown = if namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{namespace}/{name}")
        };
        if es.spec.encrypted_data.is_empty() {
            writeln!(io.stdout, "empty   {shown}: no items")?;
        }
        for (item, outcome) in open::open_each(kms, es, namespace, name, cli_rules()).await {
            match outcome {
                Ok(opened) => {
                    ok += 1;
                    writeln!(
                        io.stdout,
                        "ok      {shown} {item}: {} bytes, key {}, {}",
                        opened.plaintext.len(),
                        opened.key_arn,
                        describe(&opened.format)
                    )?;
                }
                Err(open::OpenError::Kms(e)) if e.is_environment() => {
                    unchecked += 1;
                    writeln!(
                        io.stdout,
                        "UNCHECKED {shown} {item} [{}]: {e}",
                        e.category()
                    )?;
                }
                Err(e) => {
                    failed += 1;
                    writeln!(io.stdout, "FAILED  {shown} {item} [{}]: {e}", e.category())?;
                }
            }
        }
    }
    writeln!(
        io.stdout,
        "{ok} ok, {failed} failed, {unchecked} not checked"
    )?;
    Ok(if unchecked > 0 {
        // What was not checked may be bad too: the environment comes first.
        EXIT_VERIFY_UNCHECKED
    } else if failed > 0 {
        EXIT_VERIFY_FAILED
    } else {
        EXIT_OK
    })
}
