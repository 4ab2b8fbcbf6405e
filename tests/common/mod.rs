//! Helpers for tests that run against the KMS/STS emulators started by `scripts/test.sh`.
#![allow(dead_code)]

pub mod cluster;

use std::path::PathBuf;
use std::process::Output;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// One running emulator.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub name: &'static str,
    pub url: String,
}

fn emulator(name: &'static str, var: &str) -> Option<Emulator> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(Emulator { name, url }),
        _ if std::env::var_os("KMSEAL_REQUIRE_EMULATORS").is_some() => {
            panic!(
                "{var} is not set, but KMSEAL_REQUIRE_EMULATORS is: start the emulators with scripts/emulators.sh start"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: {name} is not running ({var} unset). Run ./scripts/test.sh, which starts it, to run this test."
            );
            None
        }
    }
}

/// moto's server: fast, checks encryption contexts, fakes RSA, key states and replicas.
pub fn moto() -> Option<Emulator> {
    emulator("moto", "KMSEAL_TEST_MOTO_URL")
}

/// LocalStack: real RSA, key states and multi-region replicas.
pub fn localstack() -> Option<Emulator> {
    emulator("LocalStack", "KMSEAL_TEST_LOCALSTACK_URL")
}

/// SDK configuration with the emulators' static test credentials.
pub async fn sdk_config(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(kmseal::kms::aws::https_client())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kmseal-tests",
        )))
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// A plain KMS client for test setup (creating, disabling, replicating keys).
pub async fn admin(endpoint: &str, region: &str) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config(endpoint, region).await)
}

pub async fn create_symmetric_key(admin: &aws_sdk_kms::Client) -> String {
    admin
        .create_key()
        .description("kmseal test key")
        .send()
        .await
        .expect("create_key")
        .key_metadata
        .unwrap()
        .arn
        .unwrap()
}

/// One of the crate's binaries, with an environment cut off from this machine's AWS files and
/// metadata service, and with static test credentials if `credentials`.
pub fn isolated(binary: &str, credentials: bool) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin(binary).unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Empty config files: nothing from this machine's ~/.aws leaks into a test.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "2");
    if credentials {
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
    }
    cmd
}

/// The `kmseal` CLI, isolated (see [`isolated`]).
pub fn kmseal(credentials: bool) -> assert_cmd::Command {
    isolated("kmseal", credentials)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn secret_manifest(namespace: &str, name: &str, items: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: Opaque\nstringData:\n"
    );
    for (k, v) in items {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out
}

pub fn temp_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A projected service-account token, as EKS mounts it for IRSA (any token works for moto).
pub fn service_account_token(dir: &tempfile::TempDir) -> PathBuf {
    temp_file(
        dir,
        "token",
        b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a21zZWFsIn0.c2ln",
    )
}

/// The environment EKS gives a pod under IRSA: a role and a token file, no static keys. The
/// web-identity provider's STS client reads its endpoint from the environment too.
pub fn irsa<'a>(
    cmd: &'a mut assert_cmd::Command,
    token: &std::path::Path,
    endpoint: &str,
    region: &str,
) -> &'a mut assert_cmd::Command {
    cmd.env(
        "AWS_ROLE_ARN",
        "arn:aws:iam::000000000000:role/kmseal-controller",
    )
    .env("AWS_WEB_IDENTITY_TOKEN_FILE", token)
    .env("AWS_ROLE_SESSION_NAME", "kmseal-irsa-test")
    .env("AWS_REGION", region)
    .env("AWS_ENDPOINT_URL", endpoint)
}

/// What an in-process CLI run gave.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the CLI in-process with `kms` and `stdin`, as `cli::run` would (without spawning).
pub async fn run(kms: &kmseal::kms::MemoryKms, args: &[&str], stdin: &str) -> Outcome {
    run_on(kms, args, stdin, false).await
}

/// `terminal`: whether stdin counts as a terminal.
pub async fn run_on(
    kms: &kmseal::kms::MemoryKms,
    args: &[&str],
    stdin: &str,
    terminal: bool,
) -> Outcome {
    let mut argv = vec!["kmseal"];
    argv.extend_from_slice(args);
    let cli = <kmseal::cli::Cli as clap::Parser>::try_parse_from(argv).expect("arguments parse");
    execute_on(kms, &cli, stdin, terminal).await
}

/// Runs a parsed command line in-process (for what parsing alone cannot set up).
#[allow(dead_code)]
pub async fn execute(kms: &kmseal::kms::MemoryKms, cli: &kmseal::cli::Cli, stdin: &str) -> Outcome {
    execute_on(kms, cli, stdin, false).await
}

async fn execute_on(
    kms: &kmseal::kms::MemoryKms,
    cli: &kmseal::cli::Cli,
    stdin: &str,
    terminal: bool,
) -> Outcome {
    let mut input = std::io::Cursor::new(stdin.as_bytes().to_vec());
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut rng = kmseal::random::OsRandom;
    let mut io = kmseal::cli::Io {
        stdin: &mut input,
        stdout: &mut stdout,
        stderr: &mut stderr,
        now: 1_764_000_000,
        rng: &mut rng,
        stdin_is_terminal: terminal,
    };
    let code = match kmseal::cli::execute(cli, Some(kms), &mut io).await {
        Ok(code) => code,
        Err(e) => {
            io.stderr.write_all(e.message.as_bytes()).unwrap();
            e.code
        }
    };
    Outcome {
        code,
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// pre-commit, installed by `scripts/emulators.sh` in the moto venv.
pub fn pre_commit() -> Option<PathBuf> {
    emulator("pre-commit", "KMSEAL_TEST_PRE_COMMIT").map(|e| PathBuf::from(e.url))
}

/// A tool installed by `scripts/tools.sh` (helm, kubernetes-validate, shellcheck), named by the
/// variable its `env` exports. Like the emulators: skipped when absent, unless the run requires
/// them (`KMSEAL_REQUIRE_EMULATORS`, set by `scripts/test.sh`).
pub fn tool(name: &'static str, var: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("KMSEAL_REQUIRE_EMULATORS").is_some() => {
            panic!(
                "{var} is not set, but KMSEAL_REQUIRE_EMULATORS is: install the tools with scripts/tools.sh install and eval \"$(scripts/tools.sh env)\""
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: {name} is not installed ({var} unset). Run ./scripts/test.sh, which installs it, to run this test."
            );
            None
        }
    }
}

/// Values as kmseal 0.1 sealed them (envelope v1, v1 encryption context, strict scope) for
/// `namespace`/`name`, under one new data key of `key`: (item, envelope bytes).
pub async fn sealed_v1(
    kms: &kmseal::kms::MemoryKms,
    key: &str,
    namespace: &str,
    name: &str,
    items: &[(&str, &[u8])],
) -> Vec<(String, Vec<u8>)> {
    use kmseal::binding::{Binding, Scope};
    use kmseal::envelope::{self, Header, Version, WrapAlgorithm};
    use kmseal::kms::Kms;
    let binding = Binding::new(Scope::Strict, namespace, name);
    let generated = kms
        .generate_data_key(key, &binding.context_v1())
        .await
        .unwrap();
    let header = Header {
        version: Version::V1,
        scope: Scope::Strict,
        algorithm: WrapAlgorithm::KmsSymmetric,
        wrapped_at: 1_700_000_000,
        key_arn: generated.key_arn.clone(),
        key_material_id: None,
        wrapped_key: generated.wrapped.clone(),
    };
    items
        .iter()
        .zip(1u8..)
        .map(|((item, plaintext), nonce)| {
            let sealed = envelope::seal(
                &header,
                &generated.plaintext,
                [nonce; 12],
                &binding,
                item,
                plaintext,
            )
            .unwrap();
            ((*item).to_owned(), sealed)
        })
        .collect()
}
