//! `kmseal unseal`: the Secret back, for debugging and recovery.

use super::*;

#[derive(Debug, Args)]
pub struct UnsealArgs {
    #[command(flatten)]
    pub input: EncryptedInput,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "yaml",
        help_heading = "Output"
    )]
    pub output: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub(super) async fn unseal<K: Kms>(
    kms: &K,
    args: &UnsealArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let text = read_manifest(&args.input.file, io)?;
    let objects = manifest::read_encrypted_secrets(&text)?;
    let mut secrets = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for es in &objects {
        let (namespace, name) = target_of(es, args.input.namespace.as_deref())?;
        let mut data = BTreeMap::new();
        for (item, outcome) in open::open_each(kms, es, namespace, name, cli_rules()).await {
            match outcome {
                Ok(opened) => {
                    data.insert(item, opened.plaintext);
                }
                Err(e) => errors.push(format!("{namespace}/{name} {item}: {e}")),
            }
        }
        secrets.push(manifest::secret_manifest(es, data));
    }
    // A partial Secret, applied by mistake, would silently drop items: print all or nothing.
    if !errors.is_empty() {
        return Err(fail(format!(
            "{} item(s) could not be decrypted, nothing printed:\n  {}",
            errors.len(),
            errors.join("\n  ")
        )));
    }
    let out = Zeroizing::new(manifest::write(&secrets, args.output).map_err(fail)?);
    io.stdout.write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}
