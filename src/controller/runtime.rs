//! Wiring: Kubernetes client, watches, leader election, the ops server and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{self as kube_controller, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Config, Resource};

use super::key_facts::{KEY_FACTS_CHECK, KeyFactsCache};
use super::secret_index::SecretIndex;
use super::watched::{Watched, still_current};
use super::{Admission, KubeClusterApi, ReconcileError, Reconciler};
use crate::config::{ConfigError, ControllerArgs};
use crate::kms::fair::Gate;
use crate::kms::{AwsKms, CachingKms, FairKms, HealthKms, Kms, KmsHealth};
use crate::metrics::{CacheLabels, MeteredKms, Metrics};
use crate::reconcile::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The KMS stack the controller uses: cache, then the fair rate limit, then the health record,
/// then metrics, then AWS.
pub type ControllerKms = Arc<CachingKms<FairKms<HealthKms<MeteredKms<AwsKms>>>>>;

/// How often the policy file is checked for changes (the policy's aliases are resolved again
/// every `--key-refresh-interval`: an alias may be moved to another key).
const POLICY_FILE_CHECK: Duration = Duration::from_secs(10);
/// How long the start waits for the aliases to resolve before it goes on without them.
const ALIAS_FIRST_RESOLVE: Duration = Duration::from_secs(10);
/// How often objects that found KMS unavailable are checked for a retry, and how often KMS is
/// asked whether it is back while they wait and nothing else asks.
const RECOVERY_CHECK: Duration = Duration::from_secs(2);
const RECOVERY_PROBE: Duration = Duration::from_secs(15);

type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot reach Kubernetes: {0}; check --kubeconfig / KUBECONFIG or the in-cluster service account"
    )]
    Kube(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot serve /healthz, /readyz and /metrics on {address}: {source}")]
    Server {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election failed: {0}")]
    Lease(String),
    #[error("lost the leader-election Lease; exiting so a standby takes over")]
    LostLease,
    #[error("{0}")]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    Profile(#[from] crate::kms::profiles::ProfileNotFound),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Webhook(#[from] super::webhook_server::WebhookError),
}

/// The KMS budget from the flags: the rate limit, shared round-robin between namespaces. A
/// namespace may have at most a quarter of the reconcile slots waiting for KMS, and all
/// namespaces together at most half of them waiting or in flight: the other half stays free
/// for reconciles that need no KMS call, however slow KMS is.
pub fn kms_gate(args: &ControllerArgs) -> Arc<Gate> {
    let slots = usize::from(args.concurrency);
    Gate::new(
        args.kms_requests_per_second,
        0,
        (slots / 4).max(1),
        (slots / 2).max(1),
    )
}

/// What the runtime needs to know of its KMS stack besides calling it.
#[derive(Clone)]
pub struct KmsParts {
    /// The record of the stack's outcomes (a [`HealthKms`] layer in it), to retry objects
    /// waiting for KMS as soon as it answers again.
    pub health: Arc<KmsHealth>,
    /// The stack's budget (a [`FairKms`] layer), to bring deferred objects back when it has
    /// room; without one, deferred objects come back at their fallback delay.
    pub gate: Option<Arc<Gate>>,
}

/// A background task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per-tenant identity's credentials, shared by every scope (one STS budget), when
/// `--tenant-identity` is on.
fn tenant_identities(
    args: &ControllerArgs,
    client: &Client,
    metrics: &Arc<Metrics>,
) -> Option<Arc<super::tenant_identity::TenantIdentities>> {
    use super::tenant_identity::{AwsSts, KubeIdentityApi, TenantIdentities};
    if !args.tenant_identity {
        return None;
    }
    let metrics = metrics.clone();
    Some(Arc::new(
        TenantIdentities::new(
            Arc::new(KubeIdentityApi::new(client.clone())),
            Arc::new(AwsSts::new(&args.aws.settings())),
            args.sts_requests_per_second,
        )
        .with_observer(Arc::new(move |operation, outcome| {
            metrics
                .identity_requests
                .get_or_create(&crate::metrics::KmsLabels { operation, outcome })
                .inc();
        })),
    ))
}

/// Builds the controller's KMS stack from its flags.
pub async fn kms_stack(
    args: &ControllerArgs,
    metrics: &Arc<Metrics>,
) -> Result<(ControllerKms, KmsParts), RunError> {
    let attempt_metrics = metrics.clone();
    let aws = AwsKms::connect(&args.aws.settings())
        .await?
        .with_attempt_observer(move |operation| {
            attempt_metrics
                .kms_attempts
                .get_or_create(&crate::metrics::OperationLabels { operation })
                .inc();
        });
    let cache_metrics = metrics.clone();
    let health = KmsHealth::new();
    let gate = kms_gate(args);
    let kms = CachingKms::new(
        FairKms::new(
            HealthKms::new(MeteredKms::new(aws, metrics.clone()), health.clone()),
            gate.clone(),
        ),
        args.data_key_cache_size,
        Duration::from_secs(args.data_key_cache_ttl),
    )
    .on_lookup(move |hit| {
        cache_metrics
            .data_key_cache
            .get_or_create(&CacheLabels {
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    });
    Ok((
        Arc::new(kms),
        KmsParts {
            health,
            gate: Some(gate),
        },
    ))
}

/// `--check-kms-key`: one GenerateDataKey and one Decrypt under the key, as the controller
/// would make them. Returns a line to print.
pub async fn check_kms(args: &ControllerArgs, key: &str) -> Result<String, RunError> {
    let metrics = Arc::new(Metrics::new());
    let (kms, _) = kms_stack(args, &metrics).await?;
    let context = crate::binding::Binding::new(
        crate::binding::Scope::Strict,
        "kmseal-check",
        "kmseal-check",
    )
    .context_v2();
    let generated = kms.generate_data_key(key, &context).await?;
    let decrypted = kms
        .decrypt(crate::kms::DecryptRequest::new(
            Some(&generated.key_arn),
            &generated.wrapped,
            crate::envelope::WrapAlgorithm::KmsSymmetric,
            &context,
            crate::kms::fair::OPERATOR,
        ))
        .await?;
    let round_trip = decrypted.plaintext.as_slice() == generated.plaintext.expose();
    if !round_trip {
        return Err(RunError::Lease("KMS returned a different data key".into()));
    }
    Ok(format!(
        "KMS access ok: kms:GenerateDataKey and kms:Decrypt on {}",
        generated.key_arn
    ))
}

async fn client(args: &ControllerArgs) -> Result<Client, RunError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| RunError::Kube(Box::new(e)))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| RunError::Kube(Box::new(e)))?
        }
        None => Config::infer()
            .await
            .map_err(|e| RunError::Kube(Box::new(e)))?,
    };
    Client::try_from(config).map_err(|e| RunError::Kube(Box::new(e)))
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> Shutdown {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutting down");
    }
    .boxed()
    .shared()
}

type Ctx<K> = Reconciler<K, KubeClusterApi>;

/// Asks a controller to reconcile one object now.
type RetrySender = futures::channel::mpsc::UnboundedSender<reflector::ObjectRef<Watched>>;

async fn reconcile<K: Kms>(
    watched: Arc<Watched>,
    ctx: Arc<Ctx<K>>,
) -> Result<Action, ReconcileError> {
    let es = match watched.object() {
        Ok(es) => es,
        Err(why) => {
            // Skipped until it changes; every other object goes on.
            tracing::warn!(
                namespace = watched.meta().namespace.as_deref().unwrap_or(""),
                name = watched.meta().name.as_deref().unwrap_or(""),
                error = %why,
                "skipping an EncryptedSecret that does not match kmseal's schema; fix it (kubectl explain encryptedsecret.spec)"
            );
            return Ok(Action::await_change());
        }
    };
    let (outcome, action) = match &*watched {
        Watched::Settled(settled) => ctx.reconcile_settled(settled).await?,
        Watched::Compact(compact) => ctx.reconcile(&compact.whole()).await?,
        _ => ctx.reconcile(es).await?,
    };
    tracing::debug!(
        namespace = es.metadata.namespace.as_deref().unwrap_or(""),
        name = es.metadata.name.as_deref().unwrap_or(""),
        ?outcome,
        "reconciled"
    );
    Ok(action)
}

fn error_policy<K: Kms>(watched: Arc<Watched>, error: &ReconcileError, ctx: Arc<Ctx<K>>) -> Action {
    tracing::warn!(
        namespace = watched.meta().namespace.as_deref().unwrap_or(""),
        name = watched.meta().name.as_deref().unwrap_or(""),
        error = %error,
        "reconcile failed; retrying with backoff"
    );
    match watched.object() {
        Ok(es) => Action::requeue(ctx.error_backoff(es)),
        Err(_) => Action::await_change(),
    }
}

/// What the controller keeps of a watched EncryptedSecret: the metadata it reads, and the spec
/// and status.
fn slim(watched: &mut Watched) {
    let meta = watched.meta_mut();
    *meta = crate::reconcile::encrypted_meta_read(std::mem::take(meta));
    if matches!(watched, Watched::Valid(_)) {
        let placeholder = Watched::Malformed {
            metadata: Box::default(),
            error: String::new(),
        };
        if let Watched::Valid(es) = std::mem::replace(watched, placeholder) {
            *watched = Watched::settle(Arc::unwrap_or_clone(es));
        }
    }
}

/// What decides the Secret: the object (uid), its spec (generation) and the scope annotation for
/// plain items. Status writes, other annotations and labels change none of it.
fn decisive_change(watched: &Watched) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    watched.meta().uid.hash(&mut hasher);
    predicates::generation(watched).hash(&mut hasher);
    watched
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::PLAIN_SCOPE_ANNOTATION))
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// One controller over one scope (all namespaces, or one namespace).
struct Watching<K> {
    controller: Controller<Watched>,
    reconciler: Arc<Ctx<Arc<K>>>,
    secrets: Arc<SecretIndex>,
    secret_stream: futures::stream::BoxStream<'static, ()>,
}

/// What every scope's reconciler shares besides KMS: the key facts (looked up once, whoever
/// uses them) and tenants' credentials (one STS budget).
struct Common {
    key_facts: Arc<KeyFactsCache>,
    identities: Option<Arc<super::tenant_identity::TenantIdentities>>,
}

fn scope<K: Kms>(
    client: &Client,
    namespace: Option<&str>,
    args: &ControllerArgs,
    kms: &Arc<K>,
    metrics: &Arc<Metrics>,
    admission: &Arc<Admission>,
    common: &Common,
) -> Watching<K> {
    // `Api<PartialObjectMeta<Secret>>` makes metadata-only requests: no Secret data is ever
    // listed or watched.
    let (es_api, secret_api): (Api<Watched>, Api<PartialObjectMeta<Secret>>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Metadata only, and only Secrets kmseal manages: memory does not grow with the cluster.
    let secret_config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let secrets = Arc::new(SecretIndex::new());
    let index = secrets.clone();
    let secret_events = watcher(secret_api, secret_config)
        .default_backoff()
        .modify(|meta: &mut PartialObjectMeta<Secret>| {
            meta.metadata = crate::reconcile::secret_meta_read(std::mem::take(&mut meta.metadata));
        })
        .map_ok(move |event| {
            let relisted = index.apply(&event);
            (event, relisted)
        })
        .boxed();
    let mut es_config = watcher::Config::default();
    if let Some(selector) = &args.selector {
        es_config = es_config.labels(selector);
    }
    // Only changes that decide the Secret trigger a reconcile: not the controller's own status
    // writes, which would otherwise retry a failed object at once, before its backoff.
    let (es_store, es_writer) = reflector::store::<Watched>();
    let es_events = watcher(es_api, es_config)
        .default_backoff()
        .modify(slim)
        .reflect(es_writer)
        .applied_objects()
        .predicate_filter(decisive_change, PredicateConfig::default());
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let controller = Controller::for_stream(es_events, es_store.clone())
        .owns_stream(trigger_rx)
        .with_config(kube_controller::Config::default().concurrency(args.concurrency));
    let listed = es_store.clone();
    let current = Arc::new(move |es: &crate::api::EncryptedSecret| {
        let key = reflector::ObjectRef::<Watched>::new(es.metadata.name.as_deref().unwrap_or(""))
            .within(es.metadata.namespace.as_deref().unwrap_or(""));
        still_current(es, es_store.get(&key).as_deref())
    });
    let api = KubeClusterApi::new(client.clone(), Some(secrets.clone()), args.pod_name.clone())
        .with_current_check(current);
    let reconciler = Arc::new(Reconciler::with(
        Arc::clone(kms),
        api,
        super::Shared {
            metrics: metrics.clone(),
            admission: Arc::clone(admission),
            key_facts: common.key_facts.clone(),
            rotation: Arc::new(super::rewrap::Rotation::new(args.rotation_policy)),
            identities: common.identities.clone(),
        },
    ));
    // The Secret store must see every event; the controller gets the owned Secrets as
    // triggers, except the echo of its own writes.
    let recent = reconciler.recent.clone();
    let index = secrets.clone();
    let secret_stream = secret_events
        .filter_map(move |event| {
            let tx = trigger_tx.clone();
            let recent = recent.clone();
            let missing = match &event {
                // The watch was away: Secrets deleted meanwhile come back at once, not when
                // the resync sweep reaches their owners.
                Ok((_, true)) => without_secret(&listed, &index),
                _ => Vec::new(),
            };
            async move {
                let Ok((event, _)) = event else {
                    return Some(());
                };
                for meta in missing {
                    let _ = tx.unbounded_send(Ok(meta));
                }
                let trigger = match event {
                    watcher::Event::Apply(meta) => {
                        let own = recent.is_own_secret_write(
                            meta.metadata.namespace.as_deref().unwrap_or(""),
                            meta.metadata.name.as_deref().unwrap_or(""),
                            meta.metadata.resource_version.as_deref().unwrap_or(""),
                        );
                        (!own).then_some(meta)
                    }
                    watcher::Event::Delete(meta) | watcher::Event::InitApply(meta) => Some(meta),
                    watcher::Event::Init | watcher::Event::InitDone => None,
                };
                if let Some(meta) = trigger {
                    let _ = tx.unbounded_send(Ok(meta));
                }
                Some(())
            }
        })
        .boxed();
    Watching {
        controller,
        reconciler,
        secrets,
        secret_stream,
    }
}

/// For every watched EncryptedSecret whose Secret the index does not have, a stand-in for
/// that Secret owned by it: sent as a trigger, it has the owner reconciled.
fn without_secret(
    store: &reflector::Store<Watched>,
    index: &SecretIndex,
) -> Vec<PartialObjectMeta<Secret>> {
    store
        .state()
        .iter()
        .filter_map(|watched| {
            let meta = watched.meta();
            let namespace = meta.namespace.as_deref()?;
            let name = meta.name.as_deref()?;
            if index.get(namespace, name).is_some() {
                return None;
            }
            Some(PartialObjectMeta::<Secret> {
                metadata: kube::api::ObjectMeta {
                    namespace: Some(namespace.to_owned()),
                    name: Some(name.to_owned()),
                    owner_references: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: crate::api::API_VERSION.to_owned(),
                            kind: crate::api::KIND.to_owned(),
                            name: name.to_owned(),
                            uid: meta.uid.clone().unwrap_or_default(),
                            controller: Some(true),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                },
                ..PartialObjectMeta::default()
            })
        })
        .collect()
}

/// Waits for the Lease; resolves to an error when leadership is lost.
async fn lead(
    client: &Client,
    args: &ControllerArgs,
) -> Result<BoxFuture<'static, RunError>, RunError> {
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("kmseal-{}", std::process::id()));
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.leader_election_lease)
            .with_namespace(args.lease_namespace())
            .with_identity(identity)
            .with_duration(args.lease_duration)
            .with_grace((args.lease_duration / 3).max(1))
            .build()
            .await
            .map_err(|e| RunError::Lease(e.to_string()))?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(lease = %args.leader_election_lease, "waiting to become the leader");
    while !*leader.borrow_and_update() {
        leader
            .changed()
            .await
            .map_err(|_| RunError::Lease("the lease manager stopped".into()))?;
    }
    tracing::info!("became the leader");
    Ok(async move {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                drop(task);
                return RunError::LostLease;
            }
        }
    }
    .boxed())
}

/// Runs the controller until SIGTERM/SIGINT (Ok) or a fatal error.
pub async fn run(args: ControllerArgs) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown_signal();
    let server = {
        let (address, metrics, ready, shutdown) = (
            args.metrics_address,
            metrics.clone(),
            ready.clone(),
            shutdown.clone(),
        );
        let listener = crate::server::bind(address)
            .await
            .map_err(|source| RunError::Server { address, source })?;
        tokio::spawn(async move {
            axum::serve(listener, crate::server::router(metrics, ready))
                .with_graceful_shutdown(shutdown)
                .await
        })
    };
    // Refuse to start without a key policy before touching Kubernetes or AWS.
    args.key_policy()?;
    args.secret_types()?;
    let client = client(&args).await?;
    let (kms, parts) = kms_stack(&args, &metrics).await?;
    let result = run_with(client, kms, parts, &args, metrics, ready, shutdown.boxed()).await;
    let _ = server.await;
    result
}

/// The controller proper, on a given client and KMS, until `shutdown` resolves (Ok) or a fatal
/// error. `ready` is set once every watch has listed, and cleared on the way out.
/// `parts` describes `kms`'s health record and budget.
pub async fn run_with<K: Kms + 'static>(
    client: Client,
    kms: Arc<K>,
    parts: KmsParts,
    args: &ControllerArgs,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: BoxFuture<'static, ()>,
) -> Result<(), RunError> {
    let shutdown = shutdown.shared();
    let admission = Arc::new(Admission::new(args.key_policy()?, args.secret_types()?));
    // Every replica answers admission reviews, the standby too: the Service spreads them.
    let _webhook = match args.webhook_address {
        Some(address) => Some(
            super::webhook_server::start(
                address,
                match &args.webhook_secret {
                    Some(secret) => super::webhook_server::CertSource::SelfManaged(
                        super::webhook_certs::SelfManaged {
                            client: client.clone(),
                            namespace: args.lease_namespace(),
                            secret: secret.clone(),
                            configuration: args.webhook_configuration.clone().unwrap_or_default(),
                            hosts: args.webhook_hosts.clone(),
                        },
                    ),
                    None => super::webhook_server::CertSource::Files(args.webhook_cert_dir.clone()),
                },
                admission.clone(),
                args.secret_types()?,
                metrics.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    // Every key in use is asked about at least once per resync (and per key refresh): a key
    // nobody asked about for three of the longer is no longer in use.
    let idle = 3 * Duration::from_secs(args.resync_interval.max(args.key_refresh_interval));
    let key_facts = Arc::new(KeyFactsCache::new(idle));
    let lost_lease: BoxFuture<'static, RunError> = if args.leader_election {
        // A standby has nothing to sync and is healthy: it must count as ready, or a rolling
        // update of a Deployment with several replicas would wait for it forever.
        ready.store(true, Ordering::Relaxed);
        // A standby's webhook reviews with the live policy too: the file re-read, its aliases
        // resolved (and kept resolved) as the leader does. The leader's own upkeep replaces it.
        let _standby_upkeep = args.webhook_address.is_some().then(|| {
            AbortOnDrop(tokio::spawn(policy_upkeep(
                args.clone(),
                admission.clone(),
                kms.clone(),
                vec![],
                usize::MAX,
            )))
        });
        let standby = tokio::select! {
            led = lead(&client, args) => Some(led?),
            _ = shutdown.clone() => None,
        };
        let Some(lost) = standby else {
            ready.store(false, Ordering::Relaxed);
            return Ok(());
        };
        // The new leader is ready again once its watches have listed.
        ready.store(false, Ordering::Relaxed);
        lost
    } else {
        future::pending().boxed()
    };

    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    // Resolve the policy's aliases before the first reconcile, so values under their keys are
    // not refused while KMS is reachable. A slow or failing KMS does not hold the start up:
    // what is not resolved by then is retried in the background, and objects are checked again
    // once it is.
    let unresolved = tokio::time::timeout(ALIAS_FIRST_RESOLVE, admission.resolve_aliases(&*kms))
        .await
        .unwrap_or(usize::MAX);
    let (policy_changed_tx, policy_changed_rx): (Vec<_>, Vec<_>) = namespaces
        .iter()
        .map(|_| futures::channel::mpsc::unbounded::<()>())
        .unzip();
    let (retry_tx, retry_rx): (Vec<_>, Vec<_>) = namespaces
        .iter()
        .map(|_| futures::channel::mpsc::unbounded::<reflector::ObjectRef<Watched>>())
        .unzip();
    let policy_upkeep = policy_upkeep(
        args.clone(),
        admission.clone(),
        kms.clone(),
        policy_changed_tx,
        unresolved,
    );
    let common = Common {
        key_facts: key_facts.clone(),
        identities: tenant_identities(args, &client, &metrics),
    };
    let scopes: Vec<Watching<K>> = namespaces
        .iter()
        .map(|ns| {
            scope(
                &client,
                ns.as_deref(),
                args,
                &kms,
                &metrics,
                &admission,
                &common,
            )
        })
        .collect();

    let es_stores: Vec<_> = scopes.iter().map(|s| s.controller.store()).collect();
    let reconcilers: Vec<_> = scopes.iter().map(|s| s.reconciler.clone()).collect();
    let retry: Vec<_> = reconcilers.iter().cloned().zip(retry_tx).collect();
    let recovery = kms_recovery(parts.health.clone(), retry.clone(), kms.clone());
    // What KMS says about the keys in use, for KeyCurrent: looked up in the background; when
    // it changes (a key newly known, a moved alias, rotated material), the resync sweep judges
    // every object again within a few seconds (no KMS call for that: the judgement reads clear
    // headers).
    let catch_up = Arc::new(AtomicBool::new(false));
    let key_upkeep = {
        let (key_facts, kms, catch_up) = (key_facts.clone(), kms.clone(), catch_up.clone());
        let ttl = Duration::from_secs(args.key_refresh_interval);
        let identities = common.identities.clone();
        // A key a tenant's objects use is looked up with their ServiceAccount's role, never the
        // controller's (its credentials are usually cached from the object's reconcile).
        let resolve = move |whose: &super::key_facts::Whose| -> BoxFuture<'static, Option<crate::kms::Principal>> {
            use super::key_facts::Whose;
            match (whose.clone(), identities.clone()) {
                (Whose::Controller, _) => Box::pin(async { Some(crate::kms::Principal::Controller) }),
                (Whose::ServiceAccount { namespace, name }, Some(identities)) => Box::pin(async move {
                    identities
                        .principal(&namespace, &name, "key-lookup")
                        .await
                        .ok()
                }),
                (Whose::ServiceAccount { .. }, None) => Box::pin(async { None }),
            }
        };
        async move {
            loop {
                tokio::time::sleep(KEY_FACTS_CHECK).await;
                let (_, changed) = key_facts.refresh_with(&*kms, ttl, &resolve).await;
                if changed {
                    catch_up.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let readmission = readmit_deferred(parts.gate.clone(), retry.clone());
    let rewraps = rewrap_worker(retry.clone(), args.rewrap_requests_per_second);
    let resync = resync_sweep(
        es_stores.clone(),
        retry,
        Duration::from_secs(args.resync_interval),
        catch_up,
    );
    let secret_stores: Vec<_> = scopes.iter().map(|s| s.secrets.clone()).collect();
    // Ready once every watch has listed: before that a reconcile might GET each Secret.
    let readiness = {
        let (ready, metrics, es_stores) = (ready.clone(), metrics.clone(), es_stores.clone());
        async move {
            for store in &es_stores {
                let _ = store.wait_until_ready().await;
            }
            for store in &secret_stores {
                let _ = store.wait_until_ready().await;
            }
            ready.store(true, Ordering::Relaxed);
            tracing::info!("initial sync done");
            loop {
                let managed: usize = es_stores.iter().map(|s| s.state().len()).sum();
                metrics.managed_objects.set(managed as i64);
                for (store, reconciler) in es_stores.iter().zip(&reconcilers) {
                    let lookup = |namespace: &str, name: &str| {
                        store.get(&reflector::ObjectRef::new(name).within(namespace))
                    };
                    reconciler.prune_failures(|namespace, name| lookup(namespace, name).is_some());
                    reconciler
                        .recent
                        .forget_shown_statuses(|namespace, name, status| {
                            lookup(namespace, name).is_some_and(|w| {
                                w.object().ok().and_then(|es| es.status.as_ref()) == Some(status)
                            })
                        });
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };

    let mut controllers = Vec::new();
    let mut watches = Vec::new();
    for ((scope, policy_changed), retry) in scopes.into_iter().zip(policy_changed_rx).zip(retry_rx)
    {
        watches.push(scope.secret_stream.for_each(|()| future::ready(())));
        controllers.push(
            scope
                .controller
                .reconcile_all_on(policy_changed)
                .reconcile_on(retry)
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile, error_policy, scope.reconciler)
                .for_each(|_| future::ready(())),
        );
    }
    tracing::info!(
        namespaces = ?args.namespaces,
        selector = args.selector.as_deref().unwrap_or(""),
        "kmseal-controller started"
    );
    let work = future::join(future::join_all(controllers), async {
        tokio::select! {
            _ = future::join_all(watches) => {},
            _ = shutdown.clone() => {},
        }
    });
    let result = tokio::select! {
        _ = work => Ok(()),
        _ = readiness => Ok(()),
        _ = policy_upkeep => Ok(()),
        _ = recovery => Ok(()),
        _ = readmission => Ok(()),
        _ = resync => Ok(()),
        _ = key_upkeep => Ok(()),
        _ = rewraps => Ok(()),
        error = lost_lease => Err(error),
    };
    ready.store(false, Ordering::Relaxed);
    result
}

/// Keeps the key policy current: re-reads the policy file when it changes (a bad edit is
/// logged and the last good policy kept), resolves the policy's aliases again every
/// `--key-refresh-interval` (every [`POLICY_FILE_CHECK`] while some could not be resolved), and asks
/// for every object to be reconciled when either changes what is allowed.
async fn policy_upkeep<K: Kms + 'static>(
    args: ControllerArgs,
    admission: Arc<Admission>,
    kms: Arc<K>,
    changed: Vec<futures::channel::mpsc::UnboundedSender<()>>,
    mut unresolved: usize,
) {
    let file = args.key_policy.clone();
    let mut last_text = file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok());
    let mut since_resolve = Duration::ZERO;
    let alias_refresh = Duration::from_secs(args.key_refresh_interval);
    loop {
        tokio::time::sleep(POLICY_FILE_CHECK).await;
        since_resolve += POLICY_FILE_CHECK;
        let before = admission.snapshot();
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).ok();
            if text != last_text {
                last_text = text;
                match args.key_policy() {
                    Ok(policy) => {
                        tracing::info!(file = %path.display(), "key policy reloaded");
                        admission.set_policy(policy);
                        since_resolve = alias_refresh;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the changed key policy is invalid; keeping the previous one");
                    }
                }
            }
        }
        if since_resolve >= alias_refresh || unresolved > 0 {
            since_resolve = Duration::ZERO;
            unresolved = admission.resolve_aliases(&*kms).await;
        }
        let after = admission.snapshot();
        if before.policy != after.policy || before.aliases != after.aliases {
            for scope in &changed {
                let _ = scope.unbounded_send(());
            }
        }
    }
}

/// Looks at every valid object again once per resync interval, a slice each second (see
/// [`super::resync`]); and, when `catch_up` is set, every object once more within
/// [`super::resync::CATCH_UP_TICKS`] seconds. Objects backing off after a failure keep to
/// their backoff.
async fn resync_sweep<K: Kms + 'static>(
    stores: Vec<Store<Watched>>,
    scopes: Vec<(Arc<Ctx<Arc<K>>>, RetrySender)>,
    interval: Duration,
    catch_up: Arc<AtomicBool>,
) {
    use super::resync::CATCH_UP_TICKS;
    let round = super::resync::ticks_per_round(interval);
    let mut tick: u64 = 0;
    // The tick a catch-up round started at.
    let mut catching_up: Option<u64> = None;
    loop {
        tokio::time::sleep(super::resync::TICK).await;
        tick = tick.wrapping_add(1);
        if catching_up.is_none() && catch_up.swap(false, Ordering::Relaxed) {
            catching_up = Some(tick);
        }
        let catch_up_due = |uid: &str| {
            catching_up.is_some_and(|start| super::resync::due(uid, tick - start, CATCH_UP_TICKS))
        };
        for (store, (reconciler, retry)) in stores.iter().zip(&scopes) {
            for watched in store.state() {
                let (Ok(_), meta) = (watched.object(), watched.meta()) else {
                    continue;
                };
                let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
                    continue;
                };
                let uid = meta.uid.as_deref().unwrap_or(name);
                if (super::resync::due(uid, tick, round) || catch_up_due(uid))
                    && !reconciler.backing_off(namespace, name)
                {
                    let _ = retry.unbounded_send(reflector::ObjectRef::new(name).within(namespace));
                }
            }
        }
        if catching_up.is_some_and(|start| tick - start + 1 >= CATCH_UP_TICKS) {
            catching_up = None;
        }
    }
}

/// Retries the objects that found KMS unavailable as soon as KMS answers again (any request,
/// or a `DescribeKey` probe every [`RECOVERY_PROBE`] while they wait and KMS looks down),
/// instead of each at the end of its backoff, which may be minutes. The retries go through the
/// KMS budget like any reconcile.
async fn kms_recovery<K: Kms + 'static>(
    health: Arc<KmsHealth>,
    scopes: Vec<(Arc<Ctx<Arc<K>>>, RetrySender)>,
    kms: Arc<K>,
) {
    let mut last_probe: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(RECOVERY_CHECK).await;
        let mut retried = 0usize;
        for (reconciler, retry) in &scopes {
            for (namespace, name) in reconciler.recovered(&health) {
                retried += 1;
                let _ = retry.unbounded_send(reflector::ObjectRef::new(&name).within(&namespace));
            }
        }
        if retried > 0 {
            tracing::info!(
                objects = retried,
                "KMS answers again; retrying the objects that were waiting for it"
            );
        }
        let probe_key = scopes.iter().find_map(|(r, _)| r.waiting_key());
        let due = last_probe.is_none_or(|at| at.elapsed() >= RECOVERY_PROBE);
        if let Some(key) = probe_key
            && health.is_down()
            && due
        {
            last_probe = Some(tokio::time::Instant::now());
            if let Some(key) = key {
                // The outcome is recorded by the stack's health layer; the next check acts on it.
                let _ = kms.describe_key(&key).await;
            }
        }
    }
}

/// How often the re-wrap worker looks for queued objects when it found none.
const REWRAP_CHECK: Duration = Duration::from_secs(1);

/// Key rotation in the cluster: one data key at a time, the objects' re-wraps taking turns
/// per data key between scopes (and, in each, between namespaces), the `ReEncrypt` requests
/// paced at `per_second`; when an object is done, asks for a reconcile of it, which its
/// reconciles stood aside for meanwhile.
async fn rewrap_worker<K: Kms + 'static>(
    scopes: Vec<(Arc<Ctx<Arc<K>>>, RetrySender)>,
    per_second: f64,
) {
    use super::rewrap::Turn;
    let mut pacer = super::rewrap::Pacer::new(per_second);
    loop {
        let mut any = false;
        for (reconciler, retry) in &scopes {
            match reconciler.rewrap_turn(&mut pacer).await {
                Turn::Idle => {}
                Turn::Moved => any = true,
                Turn::Done((namespace, name), _) => {
                    any = true;
                    let _ =
                        retry.unbounded_send(reflector::ObjectRef::new(&name).within(&namespace));
                }
            }
        }
        if !any {
            tokio::time::sleep(REWRAP_CHECK).await;
        }
    }
}

/// Brings objects the KMS budget turned away back as it frees room, round-robin between
/// namespaces (and between scopes), as many as it has room for; and every
/// [`super::DEFERRED_RETRY`] in any case, should an object have been deferred just after the
/// last room was freed.
async fn readmit_deferred<K: Kms + 'static>(
    gate: Option<Arc<Gate>>,
    scopes: Vec<(Arc<Ctx<Arc<K>>>, RetrySender)>,
) {
    let Some(gate) = gate else {
        return future::pending().await;
    };
    loop {
        tokio::select! {
            () = gate.room_freed() => {},
            () = tokio::time::sleep(super::DEFERRED_RETRY) => {},
        }
        // Twice the room: an object takes a moment to come back through the controller's
        // queue, and the budget should not run dry meanwhile. One that finds it full again
        // waits again (no API request: the absence of its Secret is remembered).
        let mut room = gate.room().saturating_mul(2);
        while room > 0 {
            let mut any = false;
            for (reconciler, retry) in &scopes {
                if room == 0 {
                    break;
                }
                if let Some((namespace, name)) = reconciler.deferred.next() {
                    any = true;
                    room -= 1;
                    let _ =
                        retry.unbounded_send(reflector::ObjectRef::new(&name).within(&namespace));
                }
            }
            if !any {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EncryptedSecret, PLAIN_SCOPE_ANNOTATION};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn watched(annotations: &[(&str, &str)]) -> Watched {
        let mut es = EncryptedSecret::with_name(Some("a"), "n", Default::default());
        es.metadata.uid = Some("u".into());
        es.metadata.generation = Some(1);
        es.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        es.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        Watched::Valid(Arc::new(es))
    }

    #[test]
    fn the_cache_keeps_only_what_the_controller_reads() {
        let mut w = watched(&[
            (PLAIN_SCOPE_ANNOTATION, "namespace"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            (
                "argocd.argoproj.io/tracking-id",
                "app:kmseal.dev/EncryptedSecret:a/n",
            ),
        ]);
        w.meta_mut().labels = Some(
            [("kustomize.toolkit.fluxcd.io/name", "apps"), ("team", "x")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        slim(&mut w);
        let meta = w.meta();
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["argocd.argoproj.io/tracking-id", PLAIN_SCOPE_ANNOTATION]
        );
        // What decides the rotation policy stays: the GitOps tools' marks.
        assert_eq!(
            meta.labels.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["kustomize.toolkit.fluxcd.io/name"]
        );
        let mut other = watched(&[("team", "x")]);
        slim(&mut other);
        assert_eq!(other.meta().annotations, None);
    }

    #[test]
    fn only_changes_that_decide_the_secret_trigger_a_reconcile() {
        let base = decisive_change(&watched(&[]));
        let mut status_written = watched(&[]);
        status_written.meta_mut().resource_version = Some("99".into());
        assert_eq!(decisive_change(&status_written), base);
        let mut labelled = watched(&[("team", "x")]);
        labelled.meta_mut().labels = Some([("a".to_owned(), "b".to_owned())].into());
        assert_eq!(decisive_change(&labelled), base);
        let mut new_spec = watched(&[]);
        new_spec.meta_mut().generation = Some(2);
        assert_ne!(decisive_change(&new_spec), base);
        assert_ne!(
            decisive_change(&watched(&[(PLAIN_SCOPE_ANNOTATION, "cluster")])),
            base
        );
        let mut recreated = watched(&[]);
        recreated.meta_mut().uid = Some("u2".into());
        assert_ne!(decisive_change(&recreated), base);
    }
}
