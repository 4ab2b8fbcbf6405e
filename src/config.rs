//! `kmseal-controller` flags. Nearly every flag has a matching environment variable, so the
//! Helm chart and a local run configure it the same way; the AWS SDK's own variables
//! (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_PROFILE`) stand in for `--region`, `--endpoint` and
//! `--profile`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::kms::aws::AwsArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The kmseal controller: turns EncryptedSecrets into Secrets, decrypting with AWS KMS.
#[derive(Debug, Clone, Parser)]
#[command(name = "kmseal-controller", version, max_term_width = 100)]
pub struct ControllerArgs {
    /// Watch only this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace", env = "KMSEAL_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Only EncryptedSecrets matching this label selector (to shard a large cluster between
    /// controller instances), e.g. `shard=a` or `team in (payments,web)`.
    #[arg(long, env = "KMSEAL_SELECTOR")]
    pub selector: Option<String>,

    /// Kubeconfig to use (default: in-cluster, then KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KMSEAL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// KMS keys any watched namespace may use: key ARNs, alias ARNs or multi-region key ids
    /// (mrk-…), comma-separated. With --key-policy, in addition to its rules.
    #[arg(
        long,
        env = "KMSEAL_ALLOWED_KEYS",
        value_delimiter = ',',
        value_name = "KEYS"
    )]
    pub allowed_keys: Vec<String>,

    /// A key policy file: which namespaces may use which keys (see docs/multi-tenancy.md).
    /// Re-read when it changes.
    #[arg(long, env = "KMSEAL_KEY_POLICY", value_name = "FILE")]
    pub key_policy: Option<PathBuf>,

    /// Allow every namespace any key the controller's AWS role may use: for single-tenant
    /// clusters only.
    #[arg(long, env = "KMSEAL_ALLOW_ANY_KEY", conflicts_with_all = ["allowed_keys", "key_policy"])]
    pub allow_any_key: bool,

    /// Per-tenant AWS identity: an EncryptedSecret may name spec.serviceAccountName, and its
    /// KMS calls then go out under the IAM role of that ServiceAccount of its namespace (its
    /// eks.amazonaws.com/role-arn annotation), never the controller's (see
    /// docs/multi-tenancy.md#per-tenant-aws-identity).
    #[arg(long, env = "KMSEAL_TENANT_IDENTITY")]
    pub tenant_identity: bool,

    /// With --tenant-identity: the ServiceAccount (in the object's own namespace) whose role
    /// every object uses that names none and whose namespace's policy rule gives no default.
    /// No object then uses the controller's role.
    #[arg(
        long,
        env = "KMSEAL_DEFAULT_SERVICE_ACCOUNT",
        value_name = "NAME",
        requires = "tenant_identity",
        value_parser = service_account_name
    )]
    pub default_service_account: Option<String>,

    /// With --tenant-identity: every object of a namespace that no key policy identity rule
    /// matches must use a ServiceAccount's role (its own or --default-service-account), never
    /// the controller's.
    #[arg(
        long,
        env = "KMSEAL_REQUIRE_SERVICE_ACCOUNT",
        requires = "tenant_identity"
    )]
    pub require_service_account: bool,

    /// With --tenant-identity: client-side limit on STS AssumeRoleWithWebIdentity calls per
    /// second, shared fairly between namespaces (0: unlimited).
    #[arg(long, env = "KMSEAL_STS_REQUESTS_PER_SECOND", default_value_t = 5.0)]
    pub sts_requests_per_second: f64,

    /// Allow plain KMS ciphertext items with cluster scope (kmseal.dev/namespace=*): any
    /// namespace that may use the key can then open any such ciphertext.
    #[arg(long, env = "KMSEAL_ALLOW_CLUSTER_SCOPE_PLAIN_ITEMS")]
    pub allow_cluster_scope_plain_items: bool,

    /// Secret types EncryptedSecrets may produce, comma-separated (default: Opaque, basic-auth,
    /// ssh-auth, tls, dockerconfigjson, dockercfg). kubernetes.io/service-account-token is
    /// never allowed.
    #[arg(
        long,
        env = "KMSEAL_ALLOWED_SECRET_TYPES",
        value_delimiter = ',',
        value_name = "TYPES"
    )]
    pub allowed_secret_types: Vec<String>,

    /// Client-side limit on KMS requests per second, shared fairly between namespaces
    /// (0: unlimited).
    #[arg(long, env = "KMSEAL_KMS_REQUESTS_PER_SECOND", default_value_t = 50.0)]
    pub kms_requests_per_second: f64,

    /// What to do with values that are not under their current key and key material, for
    /// objects whose spec.rotation.policy is empty and that no GitOps tool applies: `rewrap`
    /// moves them with kms:ReEncrypt, `report` only sets the KeyCurrent condition.
    #[arg(
        long,
        env = "KMSEAL_ROTATION_POLICY",
        value_enum,
        default_value = "rewrap"
    )]
    pub rotation_policy: crate::api::RotationPolicy,

    /// The re-wrap budget: kms:ReEncrypt requests per second, one at a time, on top of which
    /// they take their turn in --kms-requests-per-second like any namespace (0: unlimited).
    #[arg(
        long,
        env = "KMSEAL_REWRAP_REQUESTS_PER_SECOND",
        default_value_t = 10.0
    )]
    pub rewrap_requests_per_second: f64,

    /// How often KMS is asked again about the keys in use and the key policy's aliases, in
    /// seconds (DescribeKey, ListKeyRotations): how soon a moved alias or rotated key
    /// material is seen.
    #[arg(long, env = "KMSEAL_KEY_REFRESH_INTERVAL", default_value_t = 300)]
    pub key_refresh_interval: u64,

    /// How many decrypted data keys to keep in memory.
    #[arg(long, env = "KMSEAL_DATA_KEY_CACHE_SIZE", default_value_t = 4096)]
    pub data_key_cache_size: usize,

    /// How long to keep a decrypted data key, in seconds.
    #[arg(long, env = "KMSEAL_DATA_KEY_CACHE_TTL", default_value_t = 3600)]
    pub data_key_cache_ttl: u64,

    /// How often an unchanged object is checked again, in seconds (costs no KMS call).
    #[arg(long, env = "KMSEAL_RESYNC_INTERVAL", default_value_t = 600)]
    pub resync_interval: u64,

    /// How many EncryptedSecrets are reconciled at once.
    #[arg(long, env = "KMSEAL_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Address for /healthz, /readyz and /metrics; `[::]` serves IPv4 and IPv6 (falling back
    /// to `0.0.0.0` where IPv6 is off).
    #[arg(long, env = "KMSEAL_METRICS_ADDRESS", default_value = "[::]:8080")]
    pub metrics_address: SocketAddr,

    /// Serve the validating admission webhook for EncryptedSecrets (POST /validate, HTTPS) on
    /// this address; off unless set.
    #[arg(long, env = "KMSEAL_WEBHOOK_ADDRESS", value_name = "ADDR")]
    pub webhook_address: Option<SocketAddr>,

    /// Directory with the webhook's serving certificate and key, tls.crt and tls.key (as a
    /// kubernetes.io/tls Secret or cert-manager mounts them); re-read when they change.
    #[arg(
        long,
        env = "KMSEAL_WEBHOOK_CERT_DIR",
        value_name = "DIR",
        default_value = "/etc/kmseal/webhook-tls"
    )]
    pub webhook_cert_dir: PathBuf,

    /// Let the controller make and keep the webhook's CA and serving certificate itself, in
    /// this Secret of its namespace (shared by every replica), instead of --webhook-cert-dir.
    /// Needs --webhook-configuration and --webhook-hosts.
    #[arg(long, env = "KMSEAL_WEBHOOK_SECRET", value_name = "NAME", requires_all = ["webhook_configuration", "webhook_hosts"])]
    pub webhook_secret: Option<String>,

    /// The ValidatingWebhookConfiguration whose caBundle the controller sets to its own CA
    /// (with --webhook-secret).
    #[arg(long, env = "KMSEAL_WEBHOOK_CONFIGURATION", value_name = "NAME")]
    pub webhook_configuration: Option<String>,

    /// The names the API server calls the webhook by, for its certificate (with
    /// --webhook-secret), comma-separated: e.g. kmseal-webhook.kmseal.svc; IP addresses too.
    #[arg(
        long,
        env = "KMSEAL_WEBHOOK_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub webhook_hosts: Vec<String>,

    /// Log format (filter with RUST_LOG, e.g. `info,kmseal=debug`).
    #[arg(long, env = "KMSEAL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Elect a leader through a coordination.k8s.io Lease; only the leader reconciles.
    #[arg(long, env = "KMSEAL_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "KMSEAL_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "KMSEAL_LEADER_ELECTION_LEASE",
        default_value = "kmseal-controller"
    )]
    pub leader_election_lease: String,

    /// Seconds a leader's lease lasts without renewal; a standby takes over after it.
    #[arg(long, env = "KMSEAL_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// This instance's name, for the Lease holder and events (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Check KMS access with this key (GenerateDataKey and Decrypt) and exit, without
    /// touching Kubernetes: a quick test of IRSA and key policy from inside the pod.
    #[arg(long, value_name = "KEY")]
    pub check_kms_key: Option<String>,
}

fn service_account_name(name: &str) -> Result<String, String> {
    if crate::identity::valid_service_account_name(name) {
        Ok(name.to_owned())
    } else {
        Err("not a ServiceAccount name: use lowercase letters, digits, '-' and '.'".to_owned())
    }
}

/// Why the controller's flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no KMS key is allowed: set --allowed-keys (KMSEAL_ALLOWED_KEYS) to the key ARNs, alias ARNs or mrk- ids the controller may decrypt with, or --key-policy FILE to say which namespaces may use which key; --allow-any-key allows every key, for single-tenant clusters only (see docs/multi-tenancy.md)"
    )]
    NoKeysAllowed,
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
}

impl ControllerArgs {
    /// The key policy the flags describe (reading the policy file, if any).
    pub fn key_policy(&self) -> Result<crate::policy::KeyPolicy, ConfigError> {
        use crate::policy::KeyPolicy;
        let mut identities = vec![];
        let mut policy = if self.allow_any_key {
            KeyPolicy::any_key()
        } else {
            let (rules, identity_rules) =
                KeyPolicy::rules_from_flags(&self.allowed_keys, self.key_policy.as_deref())?;
            identities = identity_rules;
            if rules.is_empty() && self.key_policy.is_none() {
                return Err(ConfigError::NoKeysAllowed);
            }
            KeyPolicy::from_rules(rules)
        };
        policy.allow_cluster_scope_plain_items = self.allow_cluster_scope_plain_items;
        policy.identity = crate::identity::IdentitySettings {
            enabled: self.tenant_identity,
            default_service_account: self.default_service_account.clone(),
            required_by_default: self.require_service_account,
            rules: identities,
        };
        Ok(policy)
    }

    /// The Secret types tenants may ask for.
    pub fn secret_types(&self) -> Result<crate::policy::SecretTypes, ConfigError> {
        if self.allowed_secret_types.is_empty() {
            Ok(crate::policy::SecretTypes::default())
        } else {
            Ok(crate::policy::SecretTypes::new(&self.allowed_secret_types)?)
        }
    }

    /// The namespace of the leader-election Lease.
    pub fn lease_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent_and_default_sensibly() {
        ControllerArgs::command().debug_assert();
        let args = ControllerArgs::try_parse_from([
            "kmseal-controller",
            "--namespace",
            "a",
            "--namespace",
            "b,c",
            "--selector",
            "shard=1",
        ])
        .unwrap();
        assert_eq!(args.namespaces, ["a", "b", "c"]);
        assert_eq!(args.selector.as_deref(), Some("shard=1"));
        assert_eq!(args.resync_interval, 600);
        assert!(!args.leader_election);
        assert_eq!(args.log_format, LogFormat::Text);
    }

    fn parse(flags: &[&str]) -> ControllerArgs {
        ControllerArgs::try_parse_from(
            std::iter::once("kmseal-controller").chain(flags.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn starting_without_any_allowed_key_says_what_to_set() {
        let err = parse(&[]).key_policy().unwrap_err().to_string();
        for flag in ["--allowed-keys", "--key-policy", "--allow-any-key"] {
            assert!(err.contains(flag), "{err}");
        }
        let key = "arn:aws:kms:eu-west-1:111122223333:key/k";
        let policy = parse(&["--allowed-keys", key]).key_policy().unwrap();
        assert!(policy.rules().is_some_and(|r| r.len() == 1));
        assert!(!policy.allow_cluster_scope_plain_items);
        assert!(policy.require_plain_key_id);
        let any = parse(&["--allow-any-key"]).key_policy().unwrap();
        assert!(any.rules().is_none());
        assert!(any.require_plain_key_id, "plain items still name their key");
        assert!(
            ControllerArgs::try_parse_from([
                "kmseal-controller",
                "--allow-any-key",
                "--allowed-keys",
                key
            ])
            .is_err(),
            "any key and a list contradict each other"
        );
        let bad = parse(&["--allowed-keys", "alias/kmseal"])
            .key_policy()
            .unwrap_err();
        assert!(bad.to_string().contains("alias ARN"), "{bad}");
    }

    #[test]
    fn a_policy_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("kmseal-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(
            &path,
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n  - key: mrk-0123456789abcdef0123456789abcdef\n    namespaces: [team-a]\n",
        )
        .unwrap();
        let policy = parse(&["--key-policy", path.to_str().unwrap()])
            .key_policy()
            .unwrap();
        assert_eq!(policy.rules().unwrap().len(), 1);
        std::fs::write(&path, "keys: [").unwrap();
        let err = parse(&["--key-policy", path.to_str().unwrap()])
            .key_policy()
            .unwrap_err();
        assert!(err.to_string().contains("--key-policy"), "{err}");
        let missing = parse(&["--key-policy", "/nonexistent/policy.yaml"]).key_policy();
        assert!(missing.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_types_flag() {
        assert!(parse(&[]).secret_types().unwrap().check("Opaque").is_ok());
        assert!(
            parse(&[
                "--allowed-secret-types",
                "kubernetes.io/service-account-token"
            ])
            .secret_types()
            .is_err()
        );
        let custom = parse(&["--allowed-secret-types", "Opaque,example.com/x"])
            .secret_types()
            .unwrap();
        assert!(custom.check("example.com/x").is_ok());
        assert!(custom.check("kubernetes.io/tls").is_err());
    }
}
