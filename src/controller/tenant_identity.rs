//! Per-tenant AWS identity, the I/O side: the credentials of a ServiceAccount's IAM role, for
//! the objects that use it (which ones, and which ServiceAccount, is [`crate::identity`]'s
//! decision, made before anything here runs).
//!
//! For a ServiceAccount it reads the ServiceAccount (its `eks.amazonaws.com/role-arn` and
//! `eks.amazonaws.com/audience` annotations), asks the API server for a token of it
//! (TokenRequest, the shortest expiry the API server allows), and trades the token with STS
//! (`AssumeRoleWithWebIdentity`) for the role's credentials. The credentials are kept per
//! [`TenantIdentity`] (namespace, ServiceAccount, role, audience, STS endpoint) until a margin
//! before they expire; the objects of one ServiceAccount wait for one another's call instead of
//! making their own, so a cold start of N objects costs one TokenRequest and one STS call. STS
//! calls have their own budget, shared fairly between namespaces ([`Gate`]), and a namespace
//! may hold only so many ServiceAccounts' credentials, so none can push out another's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::identity::{self, IdentityError, RoleTarget, TenantIdentity};
use crate::kms::fair::Gate;
use crate::kms::{Principal, TenantSession};
use crate::time::unix_now;

/// The shortest token the API server issues (TokenRequest's minimum `expirationSeconds`):
/// the token only has to reach STS.
pub const TOKEN_SECONDS: i64 = 600;
/// How long the role's credentials are asked for.
pub const SESSION_SECONDS: i32 = 3600;
/// Credentials are renewed this long before they expire.
pub const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// A ServiceAccount's annotations are read again after this long.
pub const SERVICE_ACCOUNT_TTL: Duration = Duration::from_secs(60);
/// At most this many ServiceAccounts' credentials are kept in all, and this many per
/// namespace.
pub const MAX_IDENTITIES: usize = 1000;
pub const MAX_IDENTITIES_PER_NAMESPACE: usize = 32;

/// Why the API server could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    NotFound,
    Forbidden,
    /// Unreachable, or answered with a server error; `throttled` for 429.
    Unavailable {
        throttled: bool,
        detail: String,
    },
}

/// What the API server is asked for.
pub trait IdentityApi: Send + Sync {
    /// The annotations of ServiceAccount `namespace/name`, `None` if it does not exist.
    fn service_account<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, ApiFailure>>;

    /// A token of ServiceAccount `namespace/name` for `audience`, valid `seconds`.
    fn request_token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        audience: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<Zeroizing<String>, ApiFailure>>;
}

/// One `AssumeRoleWithWebIdentity`.
pub struct AssumeRequest<'a> {
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub token: &'a str,
    pub duration_seconds: i32,
}

/// Credentials STS issued.
pub struct Issued {
    pub credentials: aws_credential_types::Credentials,
    /// Unix seconds.
    pub expires: u64,
}

/// Why STS did not issue credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsFailure {
    /// STS refused (the trust policy, the token): `detail` is STS's own words, for the log.
    Denied(String),
    Unavailable {
        throttled: bool,
        detail: String,
    },
    Configuration(String),
}

/// The STS operation kmseal needs.
pub trait Sts: Send + Sync {
    fn assume_role_with_web_identity<'a>(
        &'a self,
        request: AssumeRequest<'a>,
    ) -> BoxFuture<'a, Result<Issued, StsFailure>>;

    /// Where the calls go (part of what credentials are kept per).
    fn endpoint(&self) -> String;
}

/// One ServiceAccount's state: what its annotations said, and its credentials.
#[derive(Default)]
struct SlotState {
    target: Option<(RoleTarget, Instant)>,
    session: Option<Arc<TenantSession>>,
}

struct Slot {
    /// Held while the ServiceAccount is looked up and its credentials fetched: the objects of
    /// one ServiceAccount wait here for one another's calls.
    state: tokio::sync::Mutex<SlotState>,
    last_used: AtomicU64,
}

type SlotKey = (String, String);

/// Counts of the calls made, for tests and metrics.
#[derive(Debug, Default)]
pub struct IdentityCalls {
    pub service_account_reads: AtomicU64,
    pub token_requests: AtomicU64,
    pub assume_role_calls: AtomicU64,
}

/// The credentials of tenants' ServiceAccounts, kept and shared.
pub struct TenantIdentities {
    api: Arc<dyn IdentityApi>,
    sts: Arc<dyn Sts>,
    gate: Arc<Gate>,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
    tick: AtomicU64,
    pub calls: IdentityCalls,
    observe: Option<Observer>,
}

/// Told (operation, outcome) of every TokenRequest and STS call: fixed words only.
pub type Observer = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

impl TenantIdentities {
    /// `sts_per_second`: the STS budget (0: unlimited), shared fairly between namespaces.
    pub fn new(api: Arc<dyn IdentityApi>, sts: Arc<dyn Sts>, sts_per_second: f64) -> Self {
        TenantIdentities {
            api,
            sts,
            // One STS call at a time per ServiceAccount already; a few at once in all, a few
            // namespaces' worth waiting.
            gate: Gate::new(sts_per_second, 4, 4, 256),
            slots: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            calls: IdentityCalls::default(),
            observe: None,
        }
    }

    pub fn with_observer(mut self, observe: Observer) -> Self {
        self.observe = Some(observe);
        self
    }

    /// How many ServiceAccounts' credentials are kept.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.slots).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn note(&self, operation: &'static str, outcome: &'static str) {
        if let Some(observe) = &self.observe {
            observe(operation, outcome);
        }
    }

    /// The slot of `namespace/service_account`, made room for: a namespace at its share gives
    /// up its least recently used; a full table, the least recently used of the namespace
    /// holding the most.
    fn slot(&self, namespace: &str, service_account: &str) -> Arc<Slot> {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut slots = crate::sync::lock(&self.slots);
        let key = (namespace.to_owned(), service_account.to_owned());
        if let Some(slot) = slots.get(&key) {
            slot.last_used.store(now, Ordering::Relaxed);
            return slot.clone();
        }
        let oldest_of = |slots: &HashMap<SlotKey, Arc<Slot>>, ns: &str| {
            slots
                .iter()
                .filter(|((n, _), _)| n == ns)
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        };
        let held = slots.keys().filter(|(n, _)| n == namespace).count();
        let evictee = if held >= MAX_IDENTITIES_PER_NAMESPACE {
            oldest_of(&slots, namespace)
        } else if slots.len() >= MAX_IDENTITIES {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for (n, _) in slots.keys() {
                *counts.entry(n.as_str()).or_default() += 1;
            }
            let most = counts
                .into_iter()
                .max_by_key(|(_, c)| *c)
                .map(|(n, _)| n.to_owned());
            most.and_then(|ns| oldest_of(&slots, &ns))
        } else {
            None
        };
        if let Some(evictee) = evictee {
            slots.remove(&evictee);
        }
        let slot = Arc::new(Slot {
            state: tokio::sync::Mutex::new(SlotState::default()),
            last_used: AtomicU64::new(now),
        });
        slots.insert(key, slot.clone());
        slot
    }

    /// The credentials of ServiceAccount `namespace/service_account` for a call made for the
    /// object `name` (its session name in CloudTrail when a new session is needed).
    pub async fn principal(
        &self,
        namespace: &str,
        service_account: &str,
        name: &str,
    ) -> Result<Principal, IdentityError> {
        let slot = self.slot(namespace, service_account);
        let mut state = slot.state.lock().await;
        let target = match &state.target {
            Some((target, read)) if read.elapsed() < SERVICE_ACCOUNT_TTL => target.clone(),
            _ => {
                let target = self.read_target(namespace, service_account).await?;
                state.target = Some((target.clone(), Instant::now()));
                target
            }
        };
        let identity = TenantIdentity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            role_arn: target.role_arn.clone(),
            audience: target.audience.clone(),
            sts_endpoint: self.sts.endpoint(),
        };
        let now = unix_now();
        if let Some(session) = &state.session
            && session.identity == identity
            && session.expires > now + RENEW_MARGIN.as_secs()
        {
            return Ok(Principal::Tenant(session.clone()));
        }
        let session = Arc::new(self.fetch(identity, name).await?);
        state.session = Some(session.clone());
        Ok(Principal::Tenant(session))
    }

    async fn read_target(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<RoleTarget, IdentityError> {
        self.calls
            .service_account_reads
            .fetch_add(1, Ordering::Relaxed);
        match self.api.service_account(namespace, service_account).await {
            Ok(Some(annotations)) => {
                identity::role_target(namespace, service_account, &annotations)
            }
            Ok(None) | Err(ApiFailure::NotFound) => Err(IdentityError::ServiceAccountNotFound {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            }),
            Err(ApiFailure::Forbidden) => Err(IdentityError::TokenRefused {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            }),
            Err(ApiFailure::Unavailable { throttled, detail }) => {
                tracing::warn!(
                    namespace,
                    service_account,
                    detail,
                    "reading a ServiceAccount failed"
                );
                Err(IdentityError::Unavailable {
                    what: "the Kubernetes API",
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                    throttled,
                })
            }
        }
    }

    /// A TokenRequest, then `AssumeRoleWithWebIdentity`, in the STS budget's turn.
    async fn fetch(
        &self,
        identity: TenantIdentity,
        name: &str,
    ) -> Result<TenantSession, IdentityError> {
        let namespace = identity.namespace.clone();
        let service_account = identity.service_account.clone();
        let unavailable = |what, throttled| IdentityError::Unavailable {
            what,
            namespace: namespace.clone(),
            service_account: service_account.clone(),
            throttled,
        };
        let _permit = self
            .gate
            .try_acquire(&namespace)
            .await
            .map_err(|_| IdentityError::Deferred(namespace.clone()))?;
        self.calls.token_requests.fetch_add(1, Ordering::Relaxed);
        let token = self
            .api
            .request_token(
                &namespace,
                &service_account,
                &identity.audience,
                TOKEN_SECONDS,
            )
            .await;
        let token = match token {
            Ok(token) => {
                self.note("TokenRequest", "ok");
                token
            }
            Err(failure) => {
                self.note("TokenRequest", "failed");
                return Err(match failure {
                    ApiFailure::NotFound => IdentityError::ServiceAccountNotFound {
                        namespace,
                        service_account,
                    },
                    ApiFailure::Forbidden => IdentityError::TokenRefused {
                        namespace,
                        service_account,
                    },
                    ApiFailure::Unavailable { throttled, detail } => {
                        tracing::warn!(namespace, service_account, detail, "TokenRequest failed");
                        unavailable("the Kubernetes API", throttled)
                    }
                });
            }
        };
        self.calls.assume_role_calls.fetch_add(1, Ordering::Relaxed);
        let session_name = identity::session_name(&namespace, name);
        let issued = self
            .sts
            .assume_role_with_web_identity(AssumeRequest {
                role_arn: &identity.role_arn,
                session_name: &session_name,
                token: &token,
                duration_seconds: SESSION_SECONDS,
            })
            .await;
        drop(token);
        match issued {
            Ok(issued) => {
                self.note("AssumeRoleWithWebIdentity", "ok");
                tracing::info!(
                    namespace,
                    service_account,
                    role = identity.role_arn,
                    session_name,
                    "assumed a tenant's role"
                );
                Ok(TenantSession {
                    identity,
                    credentials: issued.credentials,
                    expires: issued.expires,
                })
            }
            Err(failure) => {
                self.note("AssumeRoleWithWebIdentity", "failed");
                Err(match failure {
                    StsFailure::Denied(detail) => {
                        tracing::warn!(
                            namespace,
                            service_account,
                            role = identity.role_arn,
                            detail,
                            "STS refused AssumeRoleWithWebIdentity"
                        );
                        IdentityError::AssumeRoleDenied {
                            namespace,
                            service_account,
                            role_arn: identity.role_arn,
                            audience: identity.audience,
                        }
                    }
                    StsFailure::Unavailable { throttled, detail } => {
                        tracing::warn!(namespace, service_account, detail, "STS failed");
                        unavailable("STS", throttled)
                    }
                    StsFailure::Configuration(detail) => IdentityError::Configuration(detail),
                })
            }
        }
    }
}

/// [`IdentityApi`] on a real API server.
pub struct KubeIdentityApi {
    client: kube::Client,
}

impl KubeIdentityApi {
    pub fn new(client: kube::Client) -> Self {
        KubeIdentityApi { client }
    }
}

fn api_failure(e: kube::Error) -> ApiFailure {
    match &e {
        kube::Error::Api(status) if status.code == 404 => ApiFailure::NotFound,
        kube::Error::Api(status) if status.code == 403 => ApiFailure::Forbidden,
        kube::Error::Api(status) => ApiFailure::Unavailable {
            throttled: status.code == 429,
            detail: crate::text::bounded(&status.message, 300),
        },
        other => ApiFailure::Unavailable {
            throttled: false,
            detail: crate::text::bounded(&other.to_string(), 300),
        },
    }
}

impl IdentityApi for KubeIdentityApi {
    fn service_account<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, ApiFailure>> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                kube::Api::namespaced(self.client.clone(), namespace);
            let found = api.get_metadata_opt(name).await.map_err(api_failure)?;
            Ok(found.map(|meta| meta.metadata.annotations.unwrap_or_default()))
        })
    }

    fn request_token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        audience: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<Zeroizing<String>, ApiFailure>> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                kube::Api::namespaced(self.client.clone(), namespace);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.to_owned()],
                    expiration_seconds: Some(seconds),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api
                .create_token_request(name, &Default::default(), &request)
                .await
                .map_err(api_failure)?;
            let token = answer
                .status
                .map(|s| Zeroizing::new(s.token))
                .filter(|t| !t.is_empty())
                .ok_or(ApiFailure::Unavailable {
                    throttled: false,
                    detail: "the TokenRequest answer holds no token".into(),
                })?;
            Ok(token)
        })
    }
}

/// [`Sts`] through the AWS SDK: unsigned calls (the token is the credential), to the regional
/// endpoint of the controller's region, or `--endpoint`.
pub struct AwsSts {
    client: Option<aws_sdk_sts::Client>,
    endpoint: String,
}

impl AwsSts {
    pub fn new(settings: &crate::kms::AwsSettings) -> Self {
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty());
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_STS").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        let Some(region) = region else {
            return AwsSts {
                client: None,
                endpoint: endpoint.unwrap_or_default(),
            };
        };
        let shown = endpoint
            .clone()
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let mut config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(region))
            .http_client(crate::kms::aws::https_client())
            .timeout_config(
                aws_sdk_sts::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        AwsSts {
            client: Some(aws_sdk_sts::Client::from_conf(config.build())),
            endpoint: shown,
        }
    }
}

impl Sts for AwsSts {
    fn assume_role_with_web_identity<'a>(
        &'a self,
        request: AssumeRequest<'a>,
    ) -> BoxFuture<'a, Result<Issued, StsFailure>> {
        use aws_sdk_sts::error::ProvideErrorMetadata;
        Box::pin(async move {
            let Some(client) = &self.client else {
                return Err(StsFailure::Configuration(
                    "no AWS region is configured; set --region or AWS_REGION".into(),
                ));
            };
            let answer = client
                .assume_role_with_web_identity()
                .role_arn(request.role_arn)
                .role_session_name(request.session_name)
                .web_identity_token(request.token)
                .duration_seconds(request.duration_seconds)
                .send()
                .await;
            let output = match answer {
                Ok(output) => output,
                Err(aws_sdk_sts::error::SdkError::ServiceError(e)) => {
                    let err = e.err();
                    let code = err.code().unwrap_or("").to_owned();
                    let detail = format!(
                        "{code}: {}",
                        crate::text::bounded(err.message().unwrap_or(""), 300)
                    );
                    return Err(match code.as_str() {
                        "IDPCommunicationError" | "ServiceUnavailable" | "InternalFailure" => {
                            StsFailure::Unavailable {
                                throttled: false,
                                detail,
                            }
                        }
                        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
                            StsFailure::Unavailable {
                                throttled: true,
                                detail,
                            }
                        }
                        _ => StsFailure::Denied(detail),
                    });
                }
                Err(other) => {
                    return Err(StsFailure::Unavailable {
                        throttled: false,
                        detail: crate::text::bounded(
                            &aws_sdk_sts::error::DisplayErrorContext(&other).to_string(),
                            300,
                        ),
                    });
                }
            };
            let c = output.credentials.ok_or(StsFailure::Unavailable {
                throttled: false,
                detail: "STS answered without credentials".into(),
            })?;
            let expires = u64::try_from(c.expiration.secs()).unwrap_or(0);
            Ok(Issued {
                credentials: aws_credential_types::Credentials::new(
                    c.access_key_id,
                    c.secret_access_key,
                    Some(c.session_token),
                    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(expires)),
                    "kmseal-tenant",
                ),
                expires,
            })
        })
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

/// In-memory doubles of the API server's ServiceAccounts and of STS, for tests and benchmarks
/// (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod memory {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use zeroize::Zeroizing;

    use super::{ApiFailure, AssumeRequest, IdentityApi, Issued, Sts, StsFailure};

    /// ServiceAccounts and their tokens. A token says whose it is, so [`MemorySts`] can check
    /// it the way STS checks `sub` and `aud`.
    #[derive(Default)]
    pub struct MemoryIdentityApi {
        accounts: Mutex<HashMap<(String, String), BTreeMap<String, String>>>,
        pub refuse_tokens: AtomicBool,
        latency: Duration,
        issued: AtomicU64,
    }

    impl MemoryIdentityApi {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn with_latency(mut self, latency: Duration) -> Self {
            self.latency = latency;
            self
        }

        /// Adds (or replaces) a ServiceAccount, with the IRSA role annotation if `role` is set.
        pub fn add(&self, namespace: &str, name: &str, role: Option<&str>) {
            let annotations = role
                .map(|r| {
                    BTreeMap::from([(
                        crate::identity::ROLE_ARN_ANNOTATION.to_owned(),
                        r.to_owned(),
                    )])
                })
                .unwrap_or_default();
            crate::sync::lock(&self.accounts)
                .insert((namespace.to_owned(), name.to_owned()), annotations);
        }

        pub fn remove(&self, namespace: &str, name: &str) {
            crate::sync::lock(&self.accounts).remove(&(namespace.to_owned(), name.to_owned()));
        }

        fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
            crate::sync::lock(&self.accounts)
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }
    }

    impl IdentityApi for MemoryIdentityApi {
        fn service_account<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, ApiFailure>> {
            Box::pin(async move {
                tokio::time::sleep(self.latency).await;
                Ok(self.get(namespace, name))
            })
        }

        fn request_token<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
            audience: &'a str,
            _seconds: i64,
        ) -> BoxFuture<'a, Result<Zeroizing<String>, ApiFailure>> {
            Box::pin(async move {
                tokio::time::sleep(self.latency).await;
                if self.refuse_tokens.load(Ordering::Relaxed) {
                    return Err(ApiFailure::Forbidden);
                }
                if self.get(namespace, name).is_none() {
                    return Err(ApiFailure::NotFound);
                }
                let n = self.issued.fetch_add(1, Ordering::Relaxed);
                Ok(Zeroizing::new(format!(
                    "memory-token|system:serviceaccount:{namespace}:{name}|{audience}|{n}"
                )))
            })
        }
    }

    /// STS: a role trusts the `sub`s it was told to, for audience `sts.amazonaws.com`.
    #[derive(Default)]
    pub struct MemorySts {
        trust: Mutex<HashMap<String, HashSet<String>>>,
        /// (role ARN, session name) of every call, in order.
        calls: Mutex<Vec<(String, String)>>,
        latency: Duration,
        issued: AtomicU64,
        /// How long issued credentials last, if not what was asked.
        lifetime: Option<u64>,
    }

    impl MemorySts {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn with_latency(mut self, latency: Duration) -> Self {
            self.latency = latency;
            self
        }

        /// Issued credentials last `seconds` whatever is asked (to test their renewal).
        pub fn with_lifetime(mut self, seconds: u64) -> Self {
            self.lifetime = Some(seconds);
            self
        }

        /// Lets ServiceAccount `namespace/name` assume `role`.
        pub fn trust(&self, role: &str, namespace: &str, name: &str) {
            crate::sync::lock(&self.trust)
                .entry(role.to_owned())
                .or_default()
                .insert(format!("system:serviceaccount:{namespace}:{name}"));
        }

        pub fn calls(&self) -> Vec<(String, String)> {
            crate::sync::lock(&self.calls).clone()
        }
    }

    impl Sts for MemorySts {
        fn assume_role_with_web_identity<'a>(
            &'a self,
            request: AssumeRequest<'a>,
        ) -> BoxFuture<'a, Result<Issued, StsFailure>> {
            Box::pin(async move {
                crate::sync::lock(&self.calls)
                    .push((request.role_arn.to_owned(), request.session_name.to_owned()));
                tokio::time::sleep(self.latency).await;
                let mut parts = request.token.split('|');
                let (Some("memory-token"), Some(sub), Some(audience)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(StsFailure::Denied(
                        "InvalidIdentityToken: not a token".into(),
                    ));
                };
                let trusted = crate::sync::lock(&self.trust)
                    .get(request.role_arn)
                    .is_some_and(|subs| subs.contains(sub));
                if !trusted || audience != crate::identity::DEFAULT_AUDIENCE {
                    return Err(StsFailure::Denied(
                        "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity"
                            .into(),
                    ));
                }
                let n = self.issued.fetch_add(1, Ordering::Relaxed);
                let expires = crate::time::unix_now()
                    + self.lifetime.unwrap_or(request.duration_seconds as u64);
                Ok(Issued {
                    credentials: aws_credential_types::Credentials::new(
                        format!("ASIAMEMORY{n:010}"),
                        "memory-secret",
                        Some("memory-session".into()),
                        None,
                        "memory-sts",
                    ),
                    expires,
                })
            })
        }

        fn endpoint(&self) -> String {
            "memory-sts".into()
        }
    }
}
