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
use crate::seal::{OfflineKey, PlainSecret, Wrapper};

mod files;
mod iam_policy;
mod keys;
mod pubkey;
mod repo;
mod rewrap;
mod seal;
mod unseal;
mod validate;
mod verify;
use files::*;
pub use files::{EncryptedInput, ManifestPaths};
pub use keys::KeysArgs;
pub use pubkey::{PubkeyArgs, parse_public_key, read_public_key};
pub use repo::RepoArgs;
pub use rewrap::RewrapArgs;
pub use seal::SealArgs;
use seal::seal_command;
pub use unseal::UnsealArgs;
use validate::validate_command;
pub use validate::{ReportFormat, ValidateArgs};
pub use verify::VerifyArgs;

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

const EXAMPLES: &str = "\
Examples:
  # Seal a Secret manifest under a KMS key
  kubectl create secret generic db -n prod --from-literal=password=s3cr3t \\
    --dry-run=client -o yaml | kmseal seal --key alias/kmseal -w db.encrypted.yaml

  # Seal from literals and files directly
  kmseal seal --name db -n prod --key alias/kmseal \\
    --from-literal password=s3cr3t --from-file tls.key=./key.pem

  # Add or replace items in an existing sealed file (needs no decrypt permission)
  kmseal seal --name db -n prod --key alias/kmseal \\
    --from-literal password=n3w --merge-into db.encrypted.yaml

  # One value for a Helm values file (prints only the sealed value)
  printf %s \"$PASSWORD\" | kmseal seal --raw --item password \\
    --name db -n prod --key alias/kmseal

  # Offline sealing with an RSA KMS key's public key
  kmseal pubkey --key alias/kmseal-rsa --out kmseal.pem
  kmseal seal -f secret.yaml --public-key kmseal.pem -w db.encrypted.yaml

  # Check manifests offline (no KMS, no credentials), e.g. in CI or a pre-commit hook
  kmseal validate deploy/ --key-policy key-policy.yaml

  # Check every item through KMS without printing plaintext; then recover the Secret
  kmseal verify -f db.encrypted.yaml
  kmseal unseal -f db.encrypted.yaml

Exit codes: 0 success, 1 failure (message on stderr; for validate: a file could not be read,
or a path holds no manifest), 2 usage error, 3 verify found bad items, validate found errors, or
rewrap left stale values (with --check: found any), 4 verify, rewrap or keys could not check
items (credentials, network, KMS access: fix that and run it again).
AWS: credentials from the SDK's default chain (IRSA web identity, profiles, environment);
region from --region, AWS_REGION or the profile, or the key ARN; endpoint from --endpoint,
AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL; retries from AWS_MAX_ATTEMPTS and AWS_RETRY_MODE.";

/// Seal Kubernetes Secrets with AWS KMS into EncryptedSecret manifests that are safe to commit.
#[derive(Debug, Parser)]
#[command(name = "kmseal", version, after_long_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
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
    /// Print the IAM policy the controller's role (or a tenant's role, with --namespace) needs
    /// for a key policy: least privilege, limited to namespaces by encryption context.
    IamPolicy(iam_policy::IamPolicyArgs),
    /// Print the EncryptedSecret CustomResourceDefinition.
    Crd,
    /// Print a shell completion script, e.g. `source <(kmseal completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Argument checks that need no I/O, done before any AWS configuration is loaded. (Which
    /// key `seal` uses can depend on the repository config, so that is checked later.)
    fn check(&self) -> Result<(), CliError> {
        Ok(())
    }

    /// The AWS settings to connect to KMS with, for a command that calls it.
    fn kms_settings(&self) -> Option<&AwsArgs> {
        match self {
            Command::Seal(args) => args.public_key.is_none().then_some(&args.aws),
            Command::Verify(args) => Some(&args.aws),
            Command::Unseal(args) => Some(&args.aws),
            Command::Pubkey(args) => Some(&args.aws),
            Command::Rewrap(args) => Some(&args.aws),
            Command::Keys(args) => (!args.offline).then_some(&args.aws),
            Command::Crd
            | Command::Completion { .. }
            | Command::Validate(_)
            | Command::IamPolicy(_) => None,
        }
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
    } else if let Some(aws) = cli.command.kms_settings() {
        match AwsKms::connect(&aws.settings()).await {
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
        Command::Pubkey(args) => pubkey::pubkey(need_kms()?, args, io).await,
        Command::Seal(args) => {
            let offline = match &args.public_key {
                Some(path) => Some(read_public_key(
                    path,
                    args.key.as_deref(),
                    args.key_from_env,
                )?),
                None => None,
            };
            seal_command(kms, offline.as_ref(), args, io).await
        }
        Command::Verify(args) => verify::verify(need_kms()?, args, io).await,
        Command::Validate(args) => validate_command(args, io),
        Command::IamPolicy(args) => iam_policy::iam_policy_command(args, io),
        Command::Rewrap(args) => rewrap::rewrap(need_kms()?, args, io).await,
        Command::Keys(args) => keys::keys(kms, args, io).await,
        Command::Unseal(args) => unseal::unseal(need_kms()?, args, io).await,
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, CliError> {
    let crd = EncryptedSecret::crd();
    manifest::write(&[crd], Format::Yaml).map_err(fail)
}

/// `--key` as clap parses it: refused before anything is read or sent when it cannot name a
/// key (see [`crate::arn::check_key_name`]).
fn key_name(key: &str) -> Result<String, String> {
    crate::arn::check_key_name(key).map(|()| key.to_owned())
}

fn target_of<'a>(
    es: &'a EncryptedSecret,
    namespace_flag: Option<&'a str>,
) -> Result<(&'a str, &'a str), CliError> {
    let name = es.metadata.name.as_deref().unwrap_or("");
    let namespace = match (es.metadata.namespace.as_deref(), namespace_flag) {
        (Some(manifest), Some(flag)) if manifest != flag => {
            return Err(usage(format!(
                "the manifest's EncryptedSecret {name} is in namespace {manifest}, but -n says {flag}; drop -n (its values are bound to {manifest}), or remove metadata.namespace from the manifest to check it for {flag}"
            )));
        }
        (Some(ns), _) | (None, Some(ns)) => ns,
        (None, None) => "",
    };
    Ok((namespace, name))
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
