//! `kmseal validate`: manifests checked offline (see [`crate::validate`]).

use super::*;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub manifests: ManifestPaths,
    /// Namespace of objects that name none (as `kubectl apply -n`); needed to check the key
    /// policy for them.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub keys: PolicyFlags,
    /// Accept plain KMS ciphertext items with cluster scope (the controller's flag of the same
    /// name).
    #[arg(long, help_heading = "Key policy")]
    pub allow_cluster_scope_plain_items: bool,
    /// Secret types that may be produced (the controller's --allowed-secret-types).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "TYPES",
        help_heading = "Key policy"
    )]
    pub allowed_secret_types: Vec<String>,
    /// Report plain Secrets with data as warnings rather than errors.
    #[arg(long)]
    pub allow_plain_secrets: bool,
    /// Succeed when a directory holds no manifest (by default that fails: a check pointed at
    /// the wrong folder must not pass).
    #[arg(long)]
    pub allow_empty: bool,
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
}

/// How `validate` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

/// The key policy `validate` checks against: like the controller's, but with no flags any key
/// (its `--allow-any-key`), since a repository may be checked before a policy exists.
/// The controller's key policy as `validate` and `iam-policy` take it.
#[derive(Debug, Args)]
pub struct PolicyFlags {
    /// The controller's key policy file (its keys, and its identities rules).
    #[arg(long, value_name = "FILE", help_heading = "Key policy")]
    pub key_policy: Option<PathBuf>,
    /// Keys every namespace may use (the controller's --allowed-keys), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "KEYS",
        help_heading = "Key policy"
    )]
    pub allowed_keys: Vec<String>,
}

impl PolicyFlags {
    pub fn is_empty(&self) -> bool {
        self.key_policy.is_none() && self.allowed_keys.is_empty()
    }

    /// The key rules and identity rules the flags give: a bad `--allowed-keys` is a usage
    /// error, a bad file is not.
    pub fn rules(
        &self,
    ) -> Result<(Vec<crate::policy::Rule>, Vec<crate::identity::IdentityRule>), CliError> {
        KeyPolicy::rules_from_flags(&self.allowed_keys, self.key_policy.as_deref()).map_err(|e| {
            match e {
                crate::policy::PolicyError::File { .. } => e.into(),
                other => usage(format!("--allowed-keys: {other}")),
            }
        })
    }
}

pub(super) fn validate_policy(args: &ValidateArgs) -> Result<KeyPolicy, CliError> {
    let mut policy = if args.keys.is_empty() {
        KeyPolicy::any_key()
    } else {
        let (rules, identities) = args.keys.rules()?;
        let mut policy = KeyPolicy::from_rules(rules);
        policy.identity.rules = identities;
        policy
    };
    policy.allow_cluster_scope_plain_items = args.allow_cluster_scope_plain_items;
    // Whether the cluster has per-tenant identity on is not known here: a ServiceAccount name
    // is checked, and the policy file's `identity: required` rules.
    policy.identity.enabled = true;
    Ok(policy)
}

pub(super) fn validate_command(args: &ValidateArgs, io: &mut Io<'_>) -> Result<i32, CliError> {
    use crate::validate::{Options, Validator};
    let paths = args.manifests.named(
        "name the files or directories to check (or - for stdin), e.g. kmseal validate deploy/",
    )?;
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
        repo: None,
    };
    let mut configs = super::repo::Configs::new(&args.repo)?;
    let mut validator = Validator::new();
    let mut incomplete = false;
    for path in paths {
        let files = match files_of(path) {
            Ok(files) => files,
            Err(e) => {
                validator.file_error(
                    &path.display().to_string(),
                    "unreadable",
                    format!("cannot read it: {e}"),
                );
                incomplete = true;
                continue;
            }
        };
        if files.is_empty() && !args.allow_empty {
            validator.path_error(
                &path.display().to_string(),
                "no_manifests",
                format!(
                    "no manifests found under {} (files ending .yaml, .yml or .json, hidden ones skipped); check the path, or pass --allow-empty if none is expected",
                    path.display()
                ),
            );
            incomplete = true;
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
                    Ok(text) => {
                        let place = configs.checked_place(&file, &shown, io)?;
                        let repo = match &place {
                            super::repo::Place::Inside(config, path) => {
                                Some(crate::validate::RepoRules {
                                    config: &config.config,
                                    path,
                                    shown: &config.shown,
                                })
                            }
                            _ => None,
                        };
                        validator.check_text(&shown, &text, &Options { repo, ..options })
                    }
                    Err(e) => validator.file_error(&shown, "not_a_manifest", e.to_string()),
                },
                Err(e) => {
                    incomplete = true;
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
    Ok(if incomplete {
        EXIT_ERROR
    } else if report.errors > 0 {
        EXIT_VERIFY_FAILED
    } else {
        EXIT_OK
    })
}
