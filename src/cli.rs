//! The `kmseal` command line. `run` takes its arguments and streams as parameters so it can be
//! tested without spawning a process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, CommandFactory, Parser, Subcommand};
use kube::CustomResourceExt;
use zeroize::Zeroizing;

use crate::api::EncryptedSecret;
use crate::binding::Scope;
use crate::envelope::WrapAlgorithm;
use crate::kms::aws::AwsArgs;
use crate::kms::{AwsKms, Kms};
use crate::manifest::{self, Format};
use crate::open::{self, ItemFormat, Rules};
use crate::policy::{KeyPolicy, ResolvedAliases};
use crate::random::{OsRandom, Random};
use crate::seal::{self, OfflineKey, PlainSecret, Wrapper};

mod keys;
mod rewrap;
pub use keys::KeysArgs;
pub use rewrap::RewrapArgs;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the command failed (bad input, KMS error, ...); stderr says why.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the command line itself is wrong.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `verify` found at least one item that does not decrypt; `validate` found at least
/// one error in the manifests.
pub const EXIT_VERIFY_FAILED: i32 = 3;
/// Exit code: `verify` could not check some items because of where it runs (no credentials,
/// KMS unreachable or unavailable, throttled, access denied): the items may be fine.
pub const EXIT_VERIFY_UNCHECKED: i32 = 4;

const MAX_PUBLIC_KEY_FILE: u64 = 64 * 1024;

const EXAMPLES: &str = "\
Examples:
  # Seal a Secret manifest under a KMS key
  kubectl create secret generic db -n prod --from-literal=password=s3cr3t --dry-run=client -o yaml \\
    | kmseal seal --key alias/kmseal > db.encrypted.yaml

  # Seal from literals and files directly
  kmseal seal --name db -n prod --from-literal password=s3cr3t --from-file tls.key=./key.pem --key alias/kmseal

  # Add or replace items in an existing sealed file (needs no decrypt permission)
  kmseal seal --name db -n prod --from-literal password=n3w --key alias/kmseal --merge-into db.encrypted.yaml

  # Offline sealing with an RSA KMS key's public key
  kmseal pubkey --key alias/kmseal-rsa > kmseal.pem
  kmseal seal -f secret.yaml --public-key kmseal.pem > db.encrypted.yaml

  # Check manifests offline (no KMS, no credentials), e.g. in CI or a pre-commit hook
  kmseal validate deploy/ --key-policy key-policy.yaml

  # Check every item through KMS without printing plaintext; then recover the Secret
  kmseal verify -f db.encrypted.yaml
  kmseal unseal -f db.encrypted.yaml

Exit codes: 0 success, 1 failure (message on stderr; for validate: a file could not be read),
2 usage error, 3 verify found bad items or validate found errors, 4 verify could not check items
(credentials, network, KMS access: fix that and run it again).
AWS: credentials from the SDK's default chain (IRSA web identity, profiles, environment);
region from --region, AWS_REGION or the profile, or the key ARN; endpoint from --endpoint,
AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL; retries from AWS_MAX_ATTEMPTS and AWS_RETRY_MODE.";

/// Seal Kubernetes Secrets with AWS KMS into EncryptedSecret manifests that are safe to commit.
#[derive(Debug, Parser)]
#[command(name = "kmseal", version, after_long_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seal a Secret (manifest, or literals and files) into an EncryptedSecret.
    Seal(SealArgs),
    /// Check that every item decrypts through KMS, without printing plaintext.
    Verify(VerifyArgs),
    /// Decrypt an EncryptedSecret and print the Secret (needs kms:Decrypt).
    Unseal(UnsealArgs),
    /// Save the public key of an RSA KMS key for `seal --public-key`.
    Pubkey(PubkeyArgs),
    /// Move sealed values in files to the key and key material they should be under (KMS
    /// ReEncrypt: no decrypt permission needed); --check only reports.
    Rewrap(RewrapArgs),
    /// Inventory of sealed files: keys, key materials, wrap times, stale values.
    Keys(KeysArgs),
    /// Check EncryptedSecret manifests offline (no KMS, no credentials): schema, envelopes,
    /// sizes, key policy; and refuse plain Secrets with data.
    Validate(ValidateArgs),
    /// Print the EncryptedSecret CustomResourceDefinition.
    Crd,
    /// Print a shell completion script, e.g. `source <(kmseal completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct SealArgs {
    /// Secret manifest(s), YAML or JSON; `-` for stdin (the default without --from-*).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name of the Secret to build from --from-literal / --from-file.
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the Secret (fills in a manifest's missing namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// An item as KEY=VALUE (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// An item from a file, as KEY=PATH or PATH (key = file name) (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub files: Vec<String>,
    /// Secret type for --from-*, e.g. kubernetes.io/tls (default Opaque).
    #[arg(long = "type", value_name = "TYPE")]
    pub type_: Option<String>,
    /// KMS key to seal under: key id, key ARN, alias (alias/NAME) or alias ARN. With
    /// --public-key: the key's ARN, when the file does not name it.
    #[arg(long, env = "KMSEAL_KEY", value_name = "KEY")]
    pub key: Option<String>,
    /// Seal offline with a public key saved by `kmseal pubkey` (no KMS call). The file's
    /// key wins over KMSEAL_KEY; a --key that names another key is refused.
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
    /// Whether `key` came from KMSEAL_KEY rather than the command line.
    #[arg(skip)]
    pub key_from_env: bool,
    /// What the values are bound to: strict (namespace and name), namespace, or cluster.
    /// Default: strict. With --merge-into, the file's items must have this scope.
    #[arg(long, value_parser = ScopeParser)]
    pub scope: Option<Scope>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
    /// Add or replace items in this EncryptedSecret file, in place; other items keep their
    /// exact ciphertext.
    #[arg(long, value_name = "FILE")]
    pub merge_into: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// EncryptedSecret manifest(s); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// Namespace to check against when the manifest has none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or directories to check; a directory means every .yaml, .yml and .json file in
    /// it and below (hidden ones and symlinked directories skipped); `-` for stdin.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// A file or directory to check, as with kubectl (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Namespace of objects that name none (as `kubectl apply -n`); needed to check the key
    /// policy for them.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The controller's key policy file: check that each namespace uses only keys it may.
    #[arg(long, value_name = "FILE")]
    pub key_policy: Option<PathBuf>,
    /// Keys every namespace may use (the controller's --allowed-keys), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "KEYS")]
    pub allowed_keys: Vec<String>,
    /// Accept plain KMS ciphertext items with cluster scope (the controller's flag of the same
    /// name).
    #[arg(long)]
    pub allow_cluster_scope_plain_items: bool,
    /// Secret types that may be produced (the controller's --allowed-secret-types).
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    pub allowed_secret_types: Vec<String>,
    /// Report plain Secrets with data as warnings rather than errors.
    #[arg(long)]
    pub allow_plain_secrets: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: ReportFormat,
}

/// How `validate` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// EncryptedSecret manifest(s); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// Namespace to decrypt for when the manifest has none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The RSA KMS key (ENCRYPT_DECRYPT): key id, ARN, alias or alias ARN.
    #[arg(long, env = "KMSEAL_KEY", value_name = "KEY")]
    pub key: String,
    /// Write the key to FILE, only once it was fetched and checked (a shell redirect would
    /// leave an empty file behind on failure). Default: stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

impl Command {
    /// Argument checks that need no I/O, done before any AWS configuration is loaded.
    fn check(&self) -> Result<(), CliError> {
        if let Command::Seal(args) = self
            && args.public_key.is_none()
            && args.key.is_none()
        {
            return Err(usage(NO_KEY));
        }
        Ok(())
    }

    fn needs_kms(&self) -> bool {
        match self {
            Command::Seal(args) => args.public_key.is_none(),
            Command::Verify(_) | Command::Unseal(_) | Command::Pubkey(_) | Command::Rewrap(_) => {
                true
            }
            Command::Keys(args) => !args.offline,
            Command::Crd | Command::Completion { .. } | Command::Validate(_) => false,
        }
    }
}

/// Parses `--scope` as [`Scope`]'s `FromStr` does (aliases included), and lists its values for
/// help and completions.
#[derive(Clone)]
struct ScopeParser;

impl clap::builder::TypedValueParser for ScopeParser {
    type Value = Scope;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Scope, clap::Error> {
        let invalid = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{message}\n"))
                .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("--scope is not valid UTF-8".to_owned()))?;
        text.parse().map_err(invalid)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            Scope::ALL
                .into_iter()
                .map(|s| clap::builder::PossibleValue::new(s.as_str())),
        ))
    }
}

/// A failure that ends the command.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            message: e.to_string(),
            code: EXIT_ERROR,
        }
    }
}

fn fail(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code: EXIT_ERROR,
    }
}

/// A command line that cannot be carried out as given (exit code 2).
fn usage(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code: EXIT_USAGE,
    }
}

const NO_KEY: &str =
    "no key: pass --key (a KMS key id, ARN or alias), set KMSEAL_KEY, or use --public-key";

/// Streams and environment of one run.
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Seconds since the Unix epoch, recorded in sealed values.
    pub now: u64,
    pub rng: &'a mut dyn Random,
    /// Whether stdin is a terminal: reading from it then says so, rather than seem to hang.
    pub stdin_is_terminal: bool,
}

impl Random for &mut dyn Random {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), crate::random::RandomError> {
        (**self).fill(buf)
    }
}

/// The name kubectl runs for completing `kubectl kmseal ...` (a link to this binary).
pub const PLUGIN_COMPLETION_NAME: &str = "kubectl_complete-kmseal";

/// The file name this binary was run as.
fn invoked_as(args: &[OsString]) -> &str {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("kmseal")
}

/// The command's name as invoked: `kubectl kmseal` when run as a kubectl plugin.
fn bin_name(args: &[OsString]) -> &'static str {
    if invoked_as(args).starts_with("kubectl-kmseal") {
        "kubectl kmseal"
    } else {
        "kmseal"
    }
}

/// Parses the command line and runs it against AWS KMS. Returns the process exit code.
pub async fn run(
    args: Vec<OsString>,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    if invoked_as(&args).starts_with(PLUGIN_COMPLETION_NAME) {
        let words: Vec<String> = args
            .iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let answer = crate::plugin_completion::render(&Cli::command(), &words);
        return match stdout.write_all(answer.as_bytes()) {
            Ok(()) => EXIT_OK,
            Err(_) => EXIT_ERROR,
        };
    }
    let command = Cli::command().bin_name(bin_name(&args));
    let cli = match command.try_get_matches_from(&args).and_then(|m| {
        let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&m)?;
        if let (Command::Seal(seal), Some(sub)) = (&mut cli.command, m.subcommand_matches("seal")) {
            seal.key_from_env =
                sub.value_source("key") == Some(clap::parser::ValueSource::EnvVariable);
        }
        Ok(cli)
    }) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let text = e.render().to_string();
            let _ = if e.use_stderr() {
                write!(stderr, "{text}")
            } else {
                write!(stdout, "{text}")
            };
            return code;
        }
    };
    let now = crate::time::unix_now();
    let mut rng = OsRandom;
    let mut io = Io {
        stdin,
        stdout,
        stderr,
        now,
        rng: &mut rng,
        stdin_is_terminal,
    };
    let result = if let Err(e) = cli.command.check() {
        Err(e)
    } else if cli.command.needs_kms() {
        match AwsKms::connect(&cli.aws.settings()).await {
            Ok(kms) => execute(&cli, Some(&kms), &mut io).await,
            Err(e) => Err(CliError::from(e)),
        }
    } else {
        execute::<AwsKms>(&cli, None, &mut io).await
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {}", e.message);
            e.code
        }
    }
}

/// Runs a parsed command. `kms` must be given for every command but `crd` and offline `seal`.
pub async fn execute<K: Kms>(cli: &Cli, kms: Option<&K>, io: &mut Io<'_>) -> Result<i32, CliError> {
    let need_kms = || kms.ok_or_else(|| fail("this command needs KMS access"));
    match &cli.command {
        Command::Completion { shell } => {
            // For `kmseal`; kubectl's plugin completion is another mechanism.
            let mut command = Cli::command();
            let name = command.get_name().to_owned();
            clap_complete::generate(*shell, &mut command, name, io.stdout);
            Ok(EXIT_OK)
        }
        Command::Crd => {
            io.stdout.write_all(crd_yaml()?.as_bytes())?;
            Ok(EXIT_OK)
        }
        Command::Pubkey(args) => pubkey(need_kms()?, args, io).await,
        Command::Seal(args) => {
            let offline = match &args.public_key {
                Some(path) => Some(read_public_key(
                    path,
                    args.key.as_deref(),
                    args.key_from_env,
                )?),
                None => None,
            };
            match &offline {
                Some(key) => seal_command(&Wrapper::<K>::Offline(key), args, io).await,
                None => {
                    let key_id = args.key.as_deref().ok_or_else(|| usage(NO_KEY))?;
                    let kms = need_kms()?;
                    seal_command(&Wrapper::Kms { kms, key_id }, args, io).await
                }
            }
        }
        Command::Verify(args) => verify(need_kms()?, args, io).await,
        Command::Validate(args) => validate_command(args, io),
        Command::Rewrap(args) => rewrap::rewrap(need_kms()?, args, io).await,
        Command::Keys(args) => keys::keys(kms, args, io).await,
        Command::Unseal(args) => unseal(need_kms()?, args, io).await,
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, CliError> {
    let crd = EncryptedSecret::crd();
    manifest::write(&[crd], Format::Yaml).map_err(fail)
}

/// [`read_input`] with `io`'s stdin, saying so first when that is a terminal.
fn read_manifest(path: &Path, io: &mut Io<'_>) -> Result<Zeroizing<String>, CliError> {
    if path == Path::new("-") && io.stdin_is_terminal {
        writeln!(
            io.stderr,
            "reading the manifest from stdin (end with Ctrl-D; or pass -f FILE)"
        )?;
    }
    read_input(path, io.stdin)
}

fn read_input(path: &Path, stdin: &mut dyn Read) -> Result<Zeroizing<String>, CliError> {
    let (bytes, size) = read_capped(path, stdin)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    Ok(manifest_text(bytes, size)?)
}

/// The bytes of a file (or of stdin for `-`), read up to just over the manifest limit, and the
/// file's size where known. `Err` only for I/O failures.
fn read_capped(path: &Path, stdin: &mut dyn Read) -> std::io::Result<(Vec<u8>, Option<u64>)> {
    let limit = manifest::MAX_INPUT_LEN as u64 + 1;
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        stdin.take(limit).read_to_end(&mut bytes)?;
        Ok((bytes, None))
    } else {
        let file = std::fs::File::open(path)?;
        let size = file.metadata().map(|m| m.len()).ok();
        file.take(limit).read_to_end(&mut bytes)?;
        Ok((bytes, size))
    }
}

/// [`manifest::text`], reporting a too-large file with its real size.
fn manifest_text(
    bytes: Vec<u8>,
    size: Option<u64>,
) -> Result<Zeroizing<String>, manifest::ManifestError> {
    if bytes.len() > manifest::MAX_INPUT_LEN {
        let _ = Zeroizing::new(bytes);
        return Err(manifest::ManifestError::TooLarge(size));
    }
    manifest::text(bytes)
}

/// `-n` and `--name` fill in what a manifest leaves out; where it says otherwise, they conflict
/// and nothing is sealed (as `kubectl apply -n` refuses a manifest of another namespace):
/// sealing binds the values to the namespace and name, so a silent choice would bind them to
/// the wrong one.
fn flags_agree(secret: &mut PlainSecret, args: &SealArgs) -> Result<(), CliError> {
    if let Some(flag) = &args.namespace {
        match &secret.namespace {
            Some(manifest) if manifest != flag => {
                return Err(usage(format!(
                    "the manifest's Secret {} is in namespace {manifest}, but -n says {flag}; drop -n, or remove metadata.namespace from the manifest to seal it for {flag}",
                    secret.name
                )));
            }
            Some(_) => {}
            None => secret.namespace = Some(flag.clone()),
        }
    }
    if let Some(flag) = &args.name
        && *flag != secret.name
    {
        return Err(usage(format!(
            "the manifest's Secret is named {}, but --name says {flag}; drop --name, or change metadata.name in the manifest",
            secret.name
        )));
    }
    Ok(())
}

/// The `--merge-into` file: its text (for its format) and its one EncryptedSecret.
fn read_merge_target(
    target: &Path,
    io: &mut Io<'_>,
) -> Result<(Zeroizing<String>, EncryptedSecret), CliError> {
    let text = read_manifest(target, io)?;
    let mut existing = manifest::read_encrypted_secrets(&text)?;
    if existing.len() != 1 {
        return Err(fail(format!(
            "{} holds {} EncryptedSecrets; --merge-into needs exactly one",
            target.display(),
            existing.len()
        )));
    }
    Ok((text, existing.remove(0)))
}

/// `default_name`: the name of the object `--merge-into` adds to, which names the Secret.
fn secret_from_flags(args: &SealArgs, default_name: Option<&str>) -> Result<PlainSecret, CliError> {
    let name = args
        .name
        .clone()
        .or_else(|| default_name.map(str::to_owned))
        .ok_or_else(|| usage("--from-literal and --from-file need --name"))?;
    let mut data = BTreeMap::new();
    for literal in &args.literals {
        let (key, value) = literal
            .split_once('=')
            .ok_or_else(|| fail("--from-literal takes KEY=VALUE (the value was not printed)"))?;
        insert_item(&mut data, key, Zeroizing::new(value.as_bytes().to_vec()))?;
    }
    for spec in &args.files {
        let (key, path) = match spec.split_once('=') {
            Some((key, path)) => (key.to_owned(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(spec);
                let key = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        fail(format!(
                            "--from-file {spec}: cannot derive a key from the path; use KEY=PATH"
                        ))
                    })?
                    .to_owned();
                (key, path)
            }
        };
        let limit = crate::envelope::MAX_PLAINTEXT_LEN as u64 + 1;
        let mut value = Zeroizing::new(Vec::new());
        let file = std::fs::File::open(&path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let size = file.metadata().map(|m| m.len()).ok();
        file.take(limit)
            .read_to_end(&mut value)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        if value.len() > crate::envelope::MAX_PLAINTEXT_LEN {
            let size = manifest::size_text(size);
            return Err(fail(format!(
                "--from-file {}: the file is {size}, over the limit of {} bytes (1 MiB) for one item",
                path.display(),
                crate::envelope::MAX_PLAINTEXT_LEN
            )));
        }
        insert_item(&mut data, &key, value)?;
    }
    Ok(PlainSecret {
        namespace: args.namespace.clone(),
        name,
        type_: args.type_.clone(),
        data,
        ..PlainSecret::default()
    })
}

fn insert_item(
    data: &mut BTreeMap<String, Zeroizing<Vec<u8>>>,
    key: &str,
    value: Zeroizing<Vec<u8>>,
) -> Result<(), CliError> {
    if data.insert(key.to_owned(), value).is_some() {
        return Err(fail(format!("item {key:?} is given twice")));
    }
    Ok(())
}

async fn seal_command<K: Kms>(
    wrapper: &Wrapper<'_, K>,
    args: &SealArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let from_flags = !args.literals.is_empty() || !args.files.is_empty();
    if from_flags && args.file.is_some() {
        return Err(usage(
            "use either -f or --from-literal/--from-file, not both",
        ));
    }
    // Read once: it also names a Secret built from flags.
    let merge_target = match &args.merge_into {
        Some(target) => Some((target, read_merge_target(target, io)?)),
        None => None,
    };
    let secrets = if from_flags {
        let merge_name = merge_target
            .as_ref()
            .and_then(|(_, (_, existing))| existing.metadata.name.as_deref());
        vec![secret_from_flags(args, merge_name)?]
    } else {
        let path = args.file.clone().unwrap_or_else(|| PathBuf::from("-"));
        let text = read_manifest(&path, io)?;
        let mut secrets = manifest::read_secrets(&text, None)?;
        for secret in &mut secrets {
            flags_agree(secret, args)?;
        }
        if args.name.is_some() && secrets.len() > 1 {
            return Err(usage(
                "--name applies to a single Secret, but the input has several",
            ));
        }
        if let Some(type_) = &args.type_ {
            secrets
                .iter_mut()
                .for_each(|s| s.type_ = Some(type_.clone()));
        }
        secrets
    };
    if let Some((target, (text, existing))) = merge_target {
        let [secret] = secrets.as_slice() else {
            return Err(fail("--merge-into takes a single Secret"));
        };
        // The file's headers are not authenticated until KMS opens them: they never choose
        // the scope. A mismatch is refused rather than mixing scopes in one object.
        let scope = args.scope.unwrap_or(Scope::Strict);
        if let Some(theirs) = open::common_scope(&existing)
            && theirs != scope
        {
            return Err(usage(format!(
                "the items in {} are sealed in {theirs} scope, and this would add one in {scope} scope; pass --scope {theirs} to add to it (or re-seal the whole Secret in {scope} scope)",
                target.display()
            )));
        }
        let merged =
            seal::merge_into(wrapper, existing, secret, scope, &mut io.rng, io.now).await?;
        let format = if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        };
        let out = manifest::write(&[merged], format).map_err(fail)?;
        write_atomically(target, out.as_bytes())?;
        let items: Vec<&str> = secret.data.keys().map(String::as_str).collect();
        writeln!(
            io.stderr,
            "{}: sealed {}; other items unchanged",
            target.display(),
            items.join(", ")
        )?;
        return Ok(EXIT_OK);
    }
    let mut sealed = Vec::with_capacity(secrets.len());
    for secret in &secrets {
        let scope = args.scope.unwrap_or(Scope::Strict);
        sealed.push(seal::seal_secret(wrapper, secret, scope, &mut io.rng, io.now).await?);
    }
    io.stdout.write_all(
        manifest::write(&sealed, args.output)
            .map_err(fail)?
            .as_bytes(),
    )?;
    Ok(EXIT_OK)
}

/// Replaces `path` without a window in which it is half written.
/// Replaces `path` whole, so a reader never sees half a file: the new contents go to a temp
/// file beside it, created new with a random name (never one that exists, never through a
/// symlink someone placed there), which then takes the file's place. A symlink at `path`
/// stays a symlink: the file it points to is replaced.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    let cannot = |e: &dyn std::fmt::Display| fail(format!("cannot write {}: {e}", path.display()));
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        // A new file: in its directory as it really is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .ok_or_else(|| fail(format!("{} is not a file", path.display())))?;
            std::fs::canonicalize(dir)
                .map_err(|e| cannot(&e))?
                .join(name)
        }
        Err(e) => return Err(cannot(&e)),
    };
    let dir = target
        .parent()
        .ok_or_else(|| fail(format!("{} is not a file", path.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kmseal-")
        .tempfile_in(dir)
        .map_err(|e| cannot(&e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| cannot(&e))?;
    if let Ok(meta) = std::fs::metadata(&target) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.persist(&target).map_err(|e| cannot(&e.error))?;
    Ok(())
}

fn target_of<'a>(es: &'a EncryptedSecret, namespace_flag: Option<&'a str>) -> (&'a str, &'a str) {
    let namespace = es
        .metadata
        .namespace
        .as_deref()
        .or(namespace_flag)
        .unwrap_or("");
    (namespace, es.metadata.name.as_deref().unwrap_or(""))
}

fn describe(format: &ItemFormat) -> String {
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

/// The CLI decrypts with its user's own credentials, whose IAM policy decides which keys they
/// may use: it needs no key policy of its own.
fn cli_rules() -> Rules<'static> {
    static UNRESTRICTED: std::sync::LazyLock<(KeyPolicy, ResolvedAliases)> =
        std::sync::LazyLock::new(|| (KeyPolicy::unrestricted(), ResolvedAliases::new()));
    Rules {
        policy: &UNRESTRICTED.0,
        aliases: &UNRESTRICTED.1,
    }
}

/// How deep `validate` walks into directories.
const MAX_DIRECTORY_DEPTH: usize = 32;

/// The files `validate` checks for `path`: the path itself, or for a directory its manifest
/// files, sorted. Hidden entries and symlinked directories are skipped (no loops).
fn manifest_files(path: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let is_dir = if depth == 0 {
        std::fs::metadata(path)?.is_dir()
    } else {
        std::fs::symlink_metadata(path)?.is_dir()
    };
    if !is_dir {
        out.push(path.to_owned());
        return Ok(());
    }
    if depth >= MAX_DIRECTORY_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if meta.is_dir() {
            manifest_files(&entry, depth + 1, out)?;
        } else if !meta.file_type().is_symlink()
            || std::fs::metadata(&entry).is_ok_and(|m| m.is_file())
        {
            let manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest {
                out.push(entry);
            }
        }
    }
    Ok(())
}

/// The key policy `validate` checks against: like the controller's, but with no flags any key
/// (its `--allow-any-key`), since a repository may be checked before a policy exists.
fn validate_policy(args: &ValidateArgs) -> Result<KeyPolicy, CliError> {
    let mut policy = if args.key_policy.is_none() && args.allowed_keys.is_empty() {
        KeyPolicy::any_key()
    } else {
        let mut rules = KeyPolicy::rules_for_all_namespaces(&args.allowed_keys)
            .map_err(|e| usage(format!("--allowed-keys: {e}")))?;
        if let Some(path) = &args.key_policy {
            rules.extend(KeyPolicy::read_rules(path)?);
        }
        KeyPolicy::from_rules(rules)
    };
    policy.allow_cluster_scope_plain_items = args.allow_cluster_scope_plain_items;
    Ok(policy)
}

fn validate_command(args: &ValidateArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    use crate::validate::{Options, Validator};
    let paths: Vec<&PathBuf> = args.paths.iter().chain(&args.files).collect();
    if paths.is_empty() {
        return Err(usage(
            "name the files or directories to check (or - for stdin), e.g. kmseal validate deploy/",
        ));
    }
    if let Some(ns) = &args.namespace {
        crate::binding::validate_namespace(ns).map_err(|e| usage(format!("--namespace: {e}")))?;
    }
    let policy = validate_policy(args)?;
    let types = if args.allowed_secret_types.is_empty() {
        crate::policy::SecretTypes::default()
    } else {
        crate::policy::SecretTypes::new(&args.allowed_secret_types)
            .map_err(|e| usage(format!("--allowed-secret-types: {e}")))?
    };
    let aliases = ResolvedAliases::new();
    let options = Options {
        rules: Rules {
            policy: &policy,
            aliases: &aliases,
        },
        types: &types,
        namespace: args.namespace.as_deref(),
        allow_plain_secrets: args.allow_plain_secrets,
    };
    let mut validator = Validator::new();
    let mut unreadable = false;
    for path in paths {
        let mut files = Vec::new();
        if path.as_path() == Path::new("-") {
            files.push(path.clone());
        } else if let Err(e) = manifest_files(path, 0, &mut files) {
            validator.file_error(
                &path.display().to_string(),
                "unreadable",
                format!("cannot read it: {e}"),
            );
            unreadable = true;
            continue;
        }
        for file in files {
            let shown = if file.as_path() == Path::new("-") {
                "<stdin>".to_owned()
            } else {
                file.display().to_string()
            };
            if file.as_path() == Path::new("-") && io.stdin_is_terminal {
                writeln!(io.stderr, "reading manifests from stdin (end with Ctrl-D)")?;
            }
            match read_capped(&file, io.stdin) {
                Ok((bytes, size)) => match manifest_text(bytes, size) {
                    Ok(text) => validator.check_text(&shown, &text, &options),
                    Err(e) => validator.file_error(&shown, "not_a_manifest", e.to_string()),
                },
                Err(e) => {
                    unreadable = true;
                    validator.file_error(&shown, "unreadable", format!("cannot read it: {e}"));
                }
            }
        }
    }
    let report = validator.finish();
    match args.output {
        ReportFormat::Json => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| fail(e.to_string()))?;
            writeln!(io.stdout, "{json}")?;
        }
        ReportFormat::Text => {
            for finding in &report.findings {
                writeln!(io.stdout, "{finding}")?;
            }
            writeln!(io.stdout, "{}", report.summary())?;
        }
    }
    Ok(if unreadable {
        EXIT_ERROR
    } else if report.errors > 0 {
        EXIT_VERIFY_FAILED
    } else {
        EXIT_OK
    })
}

async fn verify<K: Kms>(kms: &K, args: &VerifyArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    let text = read_manifest(&args.file, io)?;
    let objects = manifest::read_encrypted_secrets(&text)?;
    let (mut ok, mut failed, mut unchecked) = (0usize, 0usize, 0usize);
    for es in &objects {
        let (namespace, name) = target_of(es, args.namespace.as_deref());
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

async fn unseal<K: Kms>(kms: &K, args: &UnsealArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    let text = read_manifest(&args.file, io)?;
    let objects = manifest::read_encrypted_secrets(&text)?;
    let mut secrets = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for es in &objects {
        let (namespace, name) = target_of(es, args.namespace.as_deref());
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

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";
const PEM_KEY_ARN: &str = "# key-arn:";

async fn pubkey<K: Kms>(kms: &K, args: &PubkeyArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
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
fn named_key_arn(text: &str) -> Option<&str> {
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
