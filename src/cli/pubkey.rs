//! `kmseal pubkey`: an RSA KMS key's public key saved for offline sealing, and reading it back.

use super::*;

pub(super) const MAX_PUBLIC_KEY_FILE: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The RSA KMS key (ENCRYPT_DECRYPT): key id, ARN, alias or alias ARN.
    #[arg(long, env = "KMSEAL_KEY", value_name = "KEY", value_parser = super::key_name, help_heading = "The key")]
    pub key: String,
    /// Write the key to FILE, only once it was fetched and checked (a shell redirect would
    /// leave an empty file behind on failure). Default: stdout.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub(super) const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";

pub(super) const PEM_END: &str = "-----END PUBLIC KEY-----";

pub(super) const PEM_KEY_ARN: &str = "# key-arn:";

pub(super) async fn pubkey<K: Kms>(
    kms: &K,
    args: &PubkeyArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let info = kms.public_key(&args.key).await?;
    if !info.key_spec.starts_with("RSA_")
        || info.key_usage != "ENCRYPT_DECRYPT"
        || !info
            .encryption_algorithms
            .iter()
            .any(|a| a == WrapAlgorithm::RsaOaepSha256.kms_name())
    {
        let or_unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_owned()
            } else {
                s.to_owned()
            }
        };
        return Err(fail(format!(
            "key {} has key spec {} and key usage {}; offline sealing needs an RSA key with key usage ENCRYPT_DECRYPT (RSAES_OAEP_SHA_256)",
            info.key_arn,
            or_unknown(&info.key_spec),
            or_unknown(&info.key_usage)
        )));
    }
    // Parse it now so a file that `seal` would reject is never written.
    OfflineKey::from_der(&info.key_arn, &info.der)?;
    let body = BASE64.encode(&info.der);
    let mut pem = format!(
        "# kmseal public key, for offline sealing: kmseal seal --public-key FILE\n{PEM_KEY_ARN} {}\n# key-spec: {}\n{PEM_BEGIN}\n",
        info.key_arn, info.key_spec
    );
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    match &args.out {
        Some(path) => {
            write_atomically(path, pem.as_bytes())?;
            writeln!(
                io.stderr,
                "{}: public key of {}",
                path.display(),
                info.key_arn
            )?;
        }
        None => io.stdout.write_all(pem.as_bytes())?,
    }
    Ok(EXIT_OK)
}

/// Reads a public key file written by `kmseal pubkey` (or any SPKI PEM, with `--key ARN`).
/// `key_from_env`: `key_arn` came from KMSEAL_KEY, which a file naming its own key overrides
/// (the variable is usually set for online sealing); a `--key` that names another key than
/// the file's is refused, since the values could only be sealed for one of them.
pub fn read_public_key(
    path: &Path,
    key_arn: Option<&str>,
    key_from_env: bool,
) -> Result<OfflineKey, CliError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PUBLIC_KEY_FILE).read_to_string(&mut text))
        .map_err(|e| fail(format!("cannot read public key {}: {e}", path.display())))?;
    let key_arn = match (key_arn, named_key_arn(&text)) {
        (Some(given), Some(named)) if given != named => {
            if key_from_env {
                None
            } else {
                return Err(usage(format!(
                    "--key {given} and the public key file {} (for {named}) name different keys; --public-key seals for the file's key: drop --key",
                    path.display()
                )));
            }
        }
        (given, _) => given,
    };
    parse_public_key(&text, key_arn).map_err(|e| fail(format!("{}: {}", path.display(), e.message)))
}

/// The `# key-arn:` line of a public key file, if it has one.
pub(super) fn named_key_arn(text: &str) -> Option<&str> {
    text.lines()
        .take_while(|l| l.trim() != PEM_BEGIN)
        .find_map(|l| l.trim().strip_prefix(PEM_KEY_ARN).map(str::trim))
}

/// Parses the text of a public key file.
pub fn parse_public_key(text: &str, key_arn: Option<&str>) -> Result<OfflineKey, CliError> {
    let arn = key_arn.or(named_key_arn(text)).ok_or_else(|| {
        fail("the file does not name its KMS key (a `# key-arn:` line); pass --key ARN or export it again with `kmseal pubkey`")
    })?;
    let (_, after_begin) = text.split_once(PEM_BEGIN).ok_or_else(|| {
        fail(format!(
            "no {PEM_BEGIN} line; export the key with `kmseal pubkey`"
        ))
    })?;
    let (body, _) = after_begin
        .split_once(PEM_END)
        .ok_or_else(|| fail(format!("no {PEM_END} line: the file is truncated")))?;
    let body: String = body.split_whitespace().collect();
    let der = BASE64
        .decode(body)
        .map_err(|_| fail("the public key is not valid base64 PEM"))?;
    Ok(OfflineKey::from_der(arn, &der)?)
}
