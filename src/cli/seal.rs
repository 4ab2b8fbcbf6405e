//! `kmseal seal`: a Secret (a manifest, or literals and files) into an EncryptedSecret, or
//! items added to a sealed file in place (`--merge-into`).

use super::repo::Applied;
use super::*;

#[derive(Debug, Args)]
pub struct SealArgs {
    /// Secret manifest(s), YAML or JSON; `-` for stdin (the default without --from-*).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        help_heading = "The Secret"
    )]
    pub file: Option<PathBuf>,
    /// Name of the Secret to build from --from-literal / --from-file.
    #[arg(long, help_heading = "The Secret")]
    pub name: Option<String>,
    /// Namespace of the Secret (fills in a manifest's missing namespace).
    #[arg(short = 'n', long, help_heading = "The Secret")]
    pub namespace: Option<String>,
    /// An item as KEY=VALUE (repeatable).
    #[arg(
        long = "from-literal",
        value_name = "KEY=VALUE",
        help_heading = "The Secret"
    )]
    pub literals: Vec<String>,
    /// An item from a file, as KEY=PATH or PATH (key = file name) (repeatable).
    #[arg(
        long = "from-file",
        value_name = "[KEY=]PATH",
        help_heading = "The Secret"
    )]
    pub files: Vec<String>,
    /// Secret type for --from-*, e.g. kubernetes.io/tls (default Opaque).
    #[arg(long = "type", value_name = "TYPE", help_heading = "The Secret")]
    pub type_: Option<String>,
    /// Set spec.serviceAccountName: the cluster decrypts the values with this ServiceAccount's
    /// IAM role (per-tenant identity), not the controller's.
    #[arg(
        long,
        value_name = "NAME",
        value_parser = service_account,
        conflicts_with = "merge_into",
        help_heading = "The Secret"
    )]
    pub service_account: Option<String>,
    /// KMS key to seal under: key id, key ARN, alias (alias/NAME) or alias ARN. With
    /// --public-key: the key's ARN, when the file does not name it.
    #[arg(long, env = "KMSEAL_KEY", value_name = "KEY", value_parser = super::key_name, help_heading = "The key")]
    pub key: Option<String>,
    /// Seal offline with a public key saved by `kmseal pubkey` (no KMS call). The file's
    /// key wins over KMSEAL_KEY; a --key that names another key is refused.
    #[arg(long, value_name = "PEM", help_heading = "The key")]
    pub public_key: Option<PathBuf>,
    /// Whether `key` came from KMSEAL_KEY rather than the command line.
    #[arg(skip)]
    pub key_from_env: bool,
    /// What the values are bound to: strict (namespace and name), namespace, or cluster.
    /// Default: strict. With --merge-into, the file's items must have this scope.
    #[arg(long, value_parser = ScopeParser, help_heading = "The key")]
    pub scope: Option<Scope>,
    /// Output format. (With --merge-into the file keeps its own.)
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "yaml",
        conflicts_with = "merge_into",
        help_heading = "Output"
    )]
    pub output: Format,
    /// Write the EncryptedSecret(s) to FILE, only once sealing succeeded (a shell redirect
    /// would leave an empty file behind on failure). Default: stdout.
    #[arg(
        short = 'w',
        long,
        value_name = "FILE",
        conflicts_with = "merge_into",
        help_heading = "Output"
    )]
    pub write: Option<PathBuf>,
    /// Add or replace items in this EncryptedSecret file, in place; other items keep their
    /// exact ciphertext.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub merge_into: Option<PathBuf>,
    /// Seal one value read from stdin and print only it (kubeseal's --raw), e.g. for a Helm
    /// values file: needs --item and --name, and -n unless --scope cluster. The bytes are
    /// sealed as read: use `printf %s`, not `echo`, to leave out a newline.
    #[arg(
        long,
        requires_all = ["item", "name"],
        conflicts_with_all = ["file", "literals", "files", "type_", "merge_into", "output", "service_account"],
        help_heading = "Output"
    )]
    pub raw: bool,
    /// The item the --raw value is for (it is bound to it, as to the namespace and name).
    #[arg(long, value_name = "KEY", requires = "raw", help_heading = "Output")]
    pub item: Option<String>,
    #[command(flatten)]
    pub repo: super::RepoArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Parses `--scope` as [`Scope`]'s `FromStr` does (aliases included), and lists its values for
/// help and completions.
#[derive(Clone)]
pub(super) struct ScopeParser;

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

pub(super) const NO_KEY: &str = "no key: pass --key (a KMS key id, ARN or alias), add a rule with a key to .kmseal.yaml, set KMSEAL_KEY, or use --public-key";

/// What seals: the offline public key, or KMS under the key the command line, the repository
/// config's rule or KMSEAL_KEY names, in that order.
struct KeyChoice<'a, K> {
    kms: Option<&'a K>,
    offline: Option<&'a OfflineKey>,
    args: &'a SealArgs,
}

impl<'a, K: Kms> KeyChoice<'a, K> {
    fn command_line_key(&self) -> Option<&'a str> {
        self.args.key.as_deref().filter(|_| !self.args.key_from_env)
    }

    fn wrapper<'w>(&self, applied: Option<&'w Applied>) -> Result<Wrapper<'w, K>, CliError>
    where
        'a: 'w,
    {
        let rule_key = applied.and_then(|a| a.rule.key.as_deref());
        if let Some(offline) = self.offline {
            if let (Some(want), None, Some(applied)) = (rule_key, self.command_line_key(), applied)
                && crate::repo_config::same_key(want, &offline.key_arn) == Some(false)
            {
                return Err(usage(format!(
                    "the public key file is for {}, but {} of {} says key {want}; save that key's public key with kmseal pubkey, or pass --key to override the rule",
                    offline.key_arn,
                    applied.rule.shown(),
                    applied.config.shown
                )));
            }
            return Ok(Wrapper::Offline(offline));
        }
        let key_id = self
            .command_line_key()
            .or(rule_key)
            .or(self.args.key.as_deref())
            .ok_or_else(|| usage(NO_KEY))?;
        let kms = self
            .kms
            .ok_or_else(|| fail("this command needs KMS access"))?;
        Ok(Wrapper::Kms { kms, key_id })
    }

    /// `--scope`, else the rule's, else strict.
    fn scope(&self, applied: Option<&Applied>) -> Scope {
        self.args
            .scope
            .or(applied.and_then(|a| a.rule.scope))
            .unwrap_or(Scope::Strict)
    }
}

/// The file the repository config's rules are matched against: the one written, else the one
/// read, else `-` in the current directory.
fn rule_target(args: &SealArgs) -> PathBuf {
    args.merge_into
        .clone()
        .or_else(|| args.write.clone())
        .or_else(|| args.file.clone().filter(|f| f.as_path() != Path::new("-")))
        .unwrap_or_else(|| PathBuf::from("-"))
}

/// `-n` and `--name` fill in what a manifest leaves out; where it says otherwise, they conflict
/// and nothing is sealed (as `kubectl apply -n` refuses a manifest of another namespace):
/// sealing binds the values to the namespace and name, so a silent choice would bind them to
/// the wrong one.
pub(super) fn flags_agree(secret: &mut PlainSecret, args: &SealArgs) -> Result<(), CliError> {
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

/// The `--merge-into` file: its text and its EncryptedSecrets.
pub(super) struct MergeTarget<'p> {
    pub path: &'p Path,
    pub text: Zeroizing<String>,
    pub objects: Vec<EncryptedSecret>,
}

impl<'p> MergeTarget<'p> {
    pub(super) fn read(path: &'p Path, io: &mut Io<'_>) -> Result<Self, CliError> {
        let text = read_manifest(path, io)?;
        let objects = manifest::read_encrypted_secrets(&text)?;
        Ok(MergeTarget {
            path,
            text,
            objects,
        })
    }

    /// Which EncryptedSecret to merge into: the only one, or the one named `name`.
    pub(super) fn pick(&self, name: Option<&str>) -> Result<usize, CliError> {
        if let [_] = self.objects.as_slice() {
            return Ok(0);
        }
        let names: Vec<&str> = self
            .objects
            .iter()
            .map(|o| o.metadata.name.as_deref().unwrap_or(""))
            .collect();
        let listed = || {
            let mut shown: Vec<&str> = names.iter().copied().take(10).collect();
            if names.len() > 10 {
                shown.push("…");
            }
            shown.join(", ")
        };
        let Some(name) = name else {
            return Err(usage(format!(
                "{} holds {} EncryptedSecrets ({}); pass --name to say which one to merge into",
                self.path.display(),
                names.len(),
                listed()
            )));
        };
        let mut found = names.iter().enumerate().filter(|(_, n)| **n == name);
        match (found.next(), found.next()) {
            (Some((index, _)), None) => Ok(index),
            (Some(_), Some(_)) => Err(fail(format!(
                "{} holds several EncryptedSecrets named {name}; merge into a file that holds one",
                self.path.display()
            ))),
            (None, _) => Err(usage(format!(
                "{} holds no EncryptedSecret named {name} (it holds {})",
                self.path.display(),
                listed()
            ))),
        }
    }
}

/// `default_name`: the name of the object `--merge-into` adds to, which names the Secret.
pub(super) fn secret_from_flags(
    args: &SealArgs,
    default_name: Option<&str>,
) -> Result<PlainSecret, CliError> {
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
                if let Err(e) = crate::binding::validate_item_key(&key) {
                    return Err(usage(format!(
                        "--from-file {spec}: the file name is not a valid item name ({e}); name the item: --from-file KEY={spec}"
                    )));
                }
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
                "--from-file {}: the file is {size}, over the limit of {} bytes (1 MiB) for one item, and a Secret cannot hold it; keep the file elsewhere (an image, a volume, an object store) and seal what finds it (a URL, a path, a credential)",
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

pub(super) fn insert_item(
    data: &mut BTreeMap<String, Zeroizing<Vec<u8>>>,
    key: &str,
    value: Zeroizing<Vec<u8>>,
) -> Result<(), CliError> {
    if data.insert(key.to_owned(), value).is_some() {
        return Err(fail(format!("item {key:?} is given twice")));
    }
    Ok(())
}

pub(super) async fn seal_command<K: Kms>(
    kms: Option<&K>,
    offline: Option<&OfflineKey>,
    args: &SealArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let keys = KeyChoice { kms, offline, args };
    let mut configs = super::repo::Configs::new(&args.repo)?;
    let rule_path = rule_target(args);
    if args.raw {
        let applied = configs.rule_for(&rule_path, args.namespace.as_deref(), io)?;
        let wrapper = keys.wrapper(applied.as_ref())?;
        return seal_raw(&wrapper, keys.scope(applied.as_ref()), args, io).await;
    }
    let from_flags = !args.literals.is_empty() || !args.files.is_empty();
    if from_flags && args.file.is_some() {
        return Err(usage(
            "use either -f or --from-literal/--from-file, not both",
        ));
    }
    // Read once: it also names a Secret built from flags.
    let merge_target = match &args.merge_into {
        Some(path) => Some(MergeTarget::read(path, io)?),
        None => None,
    };
    let secrets = if from_flags {
        let merge_name = match &merge_target {
            Some(target) => {
                let index = target.pick(args.name.as_deref())?;
                target.objects[index].metadata.name.as_deref()
            }
            None => None,
        };
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
    if let Some(target) = merge_target {
        let [secret] = secrets.as_slice() else {
            return Err(fail("--merge-into takes a single Secret"));
        };
        let index = target.pick(
            Some(&secret.name)
                .filter(|n| !n.is_empty())
                .map(String::as_str),
        )?;
        let existing = &target.objects[index];
        if let (Some(flag), Some(file)) = (&args.namespace, &existing.metadata.namespace)
            && flag != file
        {
            return Err(usage(format!(
                "{} is in namespace {file}, but -n says {flag}; drop -n, or seal into a new file for {flag}",
                target.path.display()
            )));
        }
        let namespace = existing
            .metadata
            .namespace
            .as_deref()
            .or(args.namespace.as_deref());
        let applied = configs.rule_for(&rule_path, namespace, io)?;
        let wrapper = keys.wrapper(applied.as_ref())?;
        // The file's headers are not authenticated until KMS opens them: they never choose
        // the scope. A mismatch is refused rather than mixing scopes in one object.
        let scope = keys.scope(applied.as_ref());
        if let Some(theirs) = open::common_scope(existing)
            && theirs != scope
        {
            return Err(usage(format!(
                "the items in {} are sealed in {theirs} scope, and this would add one in {scope} scope; pass --scope {theirs} to add to it (or re-seal the whole Secret in {scope} scope)",
                target.path.display()
            )));
        }
        let merged = crate::seal::merge_into(
            &wrapper,
            existing.clone(),
            secret,
            scope,
            &mut io.rng,
            io.now,
        )
        .await?;
        let edited = manifest::edit_encrypted_secret(&target.text, &target.objects, index, &merged)
            .map_err(fail)?;
        write_atomically(target.path, edited.text.as_bytes())?;
        let items: Vec<&str> = secret.data.keys().map(String::as_str).collect();
        writeln!(
            io.stderr,
            "{}: sealed {}; other items unchanged",
            target.path.display(),
            items.join(", ")
        )?;
        if let Some(why) = edited.rewritten {
            writeln!(io.stderr, "{}: {why}", target.path.display())?;
        }
        return Ok(EXIT_OK);
    }
    let mut sealed = Vec::with_capacity(secrets.len());
    for secret in &secrets {
        let applied = configs.rule_for(&rule_path, secret.namespace.as_deref(), io)?;
        let wrapper = keys.wrapper(applied.as_ref())?;
        let scope = keys.scope(applied.as_ref());
        let mut object =
            crate::seal::seal_secret(&wrapper, secret, scope, &mut io.rng, io.now).await?;
        if let Some(policy) = applied.as_ref().and_then(|a| a.rule.rotation) {
            object.spec.rotation = Some(crate::api::RotationSpec {
                policy: Some(policy),
            });
        }
        object.spec.service_account_name = args.service_account.clone();
        sealed.push(object);
    }
    let out = manifest::write(&sealed, args.output).map_err(fail)?;
    match &args.write {
        Some(path) => write_atomically(path, out.as_bytes())?,
        None => io.stdout.write_all(out.as_bytes())?,
    }
    Ok(EXIT_OK)
}

/// `seal --raw`: one value from stdin, sealed for `--item` of `-n`/`--name`, printed alone.
async fn seal_raw<K: Kms>(
    wrapper: &Wrapper<'_, K>,
    scope: Scope,
    args: &SealArgs,
    io: &mut Io<'_>,
) -> Result<i32, CliError> {
    let (Some(item), Some(name)) = (&args.item, &args.name) else {
        return Err(usage("--raw needs --item and --name"));
    };
    if let Err(e) = crate::binding::validate_item_key(item) {
        return Err(usage(format!("--item: not a valid item name ({e})")));
    }
    if io.stdin_is_terminal {
        writeln!(
            io.stderr,
            "reading the value of {item} from stdin (end with Ctrl-D, twice after text with no newline)"
        )?;
    }
    let limit = crate::envelope::MAX_PLAINTEXT_LEN as u64 + 1;
    let mut value = Zeroizing::new(Vec::new());
    (&mut *io.stdin)
        .take(limit)
        .read_to_end(&mut value)
        .map_err(|e| fail(format!("cannot read the value from stdin: {e}")))?;
    if value.len() > crate::envelope::MAX_PLAINTEXT_LEN {
        return Err(fail(format!(
            "the value on stdin is over the limit of {} bytes (1 MiB) for one item, and a Secret cannot hold it; keep it elsewhere (a volume, an object store) and seal what finds it (a URL, a path, a credential)",
            crate::envelope::MAX_PLAINTEXT_LEN
        )));
    }
    let mut data = BTreeMap::new();
    data.insert(item.clone(), value);
    let secret = PlainSecret {
        namespace: args.namespace.clone(),
        name: name.clone(),
        data,
        ..PlainSecret::default()
    };
    let sealed = crate::seal::seal_secret(wrapper, &secret, scope, &mut io.rng, io.now).await?;
    let sealed_value = sealed
        .spec
        .encrypted_data
        .get(item)
        .ok_or_else(|| fail("sealing returned no value for the item"))?;
    let out = format!("{sealed_value}\n");
    match &args.write {
        Some(path) => write_atomically(path, out.as_bytes())?,
        None => io.stdout.write_all(out.as_bytes())?,
    }
    Ok(EXIT_OK)
}

/// `--service-account` as clap parses it.
fn service_account(name: &str) -> Result<String, String> {
    if crate::identity::valid_service_account_name(name) {
        Ok(name.to_owned())
    } else {
        Err("not a ServiceAccount name: use lowercase letters, digits, '-' and '.'".to_owned())
    }
}
