//! `kmseal-controller` flags. Every flag has a matching environment variable, so the Helm chart
//! and a local run configure it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::cli::AwsArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The kmseal controller: turns EncryptedSecrets into Secrets, decrypting with AWS KMS.
#[derive(Debug, Parser)]
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

    /// Client-side limit on KMS requests per second (0: unlimited).
    #[arg(long, env = "KMSEAL_KMS_REQUESTS_PER_SECOND", default_value_t = 50.0)]
    pub kms_requests_per_second: f64,

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

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "KMSEAL_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

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

impl ControllerArgs {
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
}
