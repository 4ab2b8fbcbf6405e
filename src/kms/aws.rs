//! AWS KMS through the AWS SDK.
//!
//! Credentials come from the SDK's default chain (environment, web identity / IRSA, shared
//! config and profiles, container and instance metadata), optionally with a role assumed on
//! top. Retries use the SDK's standard or adaptive modes, which honour `AWS_MAX_ATTEMPTS` and
//! `AWS_RETRY_MODE`. One rustls + ring TLS stack serves every HTTP client in the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use zeroize::Zeroizing;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, KmsErrorKind, Principal,
    PublicKeyInfo, ReEncryptRequest, ReEncrypted,
};
use crate::arn::KmsArn;
use crate::binding::EncryptionContext;
use crate::envelope::{DataKey, WrapAlgorithm};

/// How to reach KMS. Anything left `None` comes from the SDK's usual environment and files.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// The region for key ids and aliases, and for the replica of a multi-region key.
    pub region: Option<String>,
    /// An endpoint URL for KMS and STS (LocalStack, moto).
    pub endpoint: Option<String>,
    /// A role to assume on top of the default credentials, e.g. for a key in another account.
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
    /// A named profile from the shared config files.
    pub profile: Option<String>,
}

/// [`AwsSettings`] as the CLI and the controller take them on the command line (the flags of
/// every subcommand that calls KMS, and of the controller), under their own help heading.
#[derive(Debug, clap::Args, Clone, Default)]
#[command(next_help_heading = "AWS")]
pub struct AwsArgs {
    /// AWS region for key ids and aliases (default: AWS_REGION or the profile's region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// KMS/STS endpoint URL, e.g. http://localhost:4566 for LocalStack.
    #[arg(long, value_name = "URL", value_parser = endpoint_url)]
    pub endpoint: Option<String>,
    /// Assume this IAM role on top of the default credentials (e.g. for a key in another account).
    #[arg(long, env = "KMSEAL_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Session name for --role-arn.
    #[arg(long, env = "KMSEAL_ROLE_SESSION_NAME", default_value = "kmseal")]
    pub role_session_name: String,
    /// Named profile from the AWS config files (default: AWS_PROFILE).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

/// `--endpoint` as clap parses it: a URL with its scheme.
pub fn endpoint_url(url: &str) -> Result<String, String> {
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(url.to_owned()),
        _ => {
            let shown = crate::text::bounded(url, 120);
            Err(format!(
                "{shown:?} is not an http(s) URL; give its scheme, e.g. http://{shown}"
            ))
        }
    }
}

impl AwsArgs {
    pub fn settings(&self) -> AwsSettings {
        AwsSettings {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            role_arn: self.role_arn.clone(),
            role_session_name: Some(self.role_session_name.clone()),
            profile: self.profile.clone(),
        }
    }
}

pub const DEFAULT_ROLE_SESSION_NAME: &str = "kmseal";

/// KMS through the AWS SDK. Cheap to share; clients are kept per region.
pub struct AwsKms {
    sdk: SdkConfig,
    default_region: Option<String>,
    clients: Mutex<HashMap<String, aws_sdk_kms::Client>>,
    attempts: Option<AttemptObserver>,
}

/// Told the operation (`Decrypt`, `GenerateDataKey`, `GetPublicKey`, `DescribeKey`, `other`)
/// of every HTTP attempt the SDK makes, retries included.
pub type AttemptObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

/// An SDK interceptor that reports every attempt.
#[derive(Clone)]
struct CountAttempts(AttemptObserver);

impl std::fmt::Debug for CountAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountAttempts")
    }
}

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "kmseal-count-attempts"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = match cfg.load::<Metadata>().map(Metadata::name) {
            Some("Decrypt") => "Decrypt",
            Some("GenerateDataKey") => "GenerateDataKey",
            Some("GetPublicKey") => "GetPublicKey",
            Some("DescribeKey") => "DescribeKey",
            _ => "other",
        };
        (self.0)(operation);
        Ok(())
    }
}

/// The HTTPS client for every AWS call: rustls with ring, like the Kubernetes client, so the
/// process has one TLS stack and no process-wide CryptoProvider ambiguity.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl AwsKms {
    /// Resolves configuration and credentials providers; makes no network call by itself. A
    /// named profile (`settings.profile`, else `AWS_PROFILE`) that the shared files do not
    /// define is refused here, before anything is sent.
    pub async fn connect(settings: &AwsSettings) -> Result<Self, super::profiles::ProfileNotFound> {
        let named = settings
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()));
        if let Some(profile) = &named {
            super::profiles::check(profile, &super::profiles::SharedFiles::read())?;
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    // KMS answers in milliseconds; a reconcile waiting on a hung connection
                    // waits 3 attempts of this (plus backoff) before it fails over to backoff.
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile.clone());
        }
        let mut sdk = loader.load().await;
        if let Some(role_arn) = &settings.role_arn {
            let session = settings
                .role_session_name
                .clone()
                .unwrap_or_else(|| DEFAULT_ROLE_SESSION_NAME.to_owned());
            let mut provider = AssumeRoleProvider::builder(role_arn.clone())
                .session_name(session)
                .configure(&sdk);
            if sdk.region().is_none() {
                // STS needs some region; its global partition endpoint answers for all.
                provider = provider.region(Region::new("us-east-1"));
            }
            let provider = provider.build().await;
            sdk = sdk
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }
        Ok(AwsKms::from_sdk_config(sdk))
    }

    /// Uses an already loaded SDK configuration (credentials, region, endpoint, retries).
    pub fn from_sdk_config(sdk: SdkConfig) -> Self {
        let default_region = sdk.region().map(|r| r.as_ref().to_owned());
        AwsKms {
            sdk,
            default_region,
            clients: Mutex::new(HashMap::new()),
            attempts: None,
        }
    }

    /// Reports every HTTP attempt (an operation the SDK retries makes several).
    pub fn with_attempt_observer(
        mut self,
        observe: impl Fn(&'static str) + Send + Sync + 'static,
    ) -> Self {
        self.attempts = Some(Arc::new(observe));
        self
    }

    /// The region a call about `key_id` goes to, and the key id to send there.
    ///
    /// A key ARN selects its own region, except a multi-region key, which is used through its
    /// replica in the configured region (no cross-region call). Ids and aliases use the
    /// configured region.
    fn route(&self, action: &'static str, key_id: &str) -> Result<(String, String), KmsError> {
        match KmsArn::parse(key_id) {
            Some(arn) => match &self.default_region {
                Some(region) if arn.is_multi_region() && region != arn.region => {
                    Ok((region.clone(), arn.in_region(region)))
                }
                _ => Ok((arn.region.to_owned(), key_id.to_owned())),
            },
            None => match &self.default_region {
                Some(region) => Ok((region.clone(), key_id.to_owned())),
                None => Err(KmsError::new(
                    KmsErrorKind::Configuration,
                    action,
                    Some(key_id),
                    "no AWS region is configured; pass --region, set AWS_REGION, or name the key by its ARN",
                )),
            },
        }
    }

    fn client(&self, region: &str) -> aws_sdk_kms::Client {
        let mut clients = crate::sync::lock(&self.clients);
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let mut config = aws_sdk_kms::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_owned()));
                if let Some(observe) = &self.attempts {
                    config = config.interceptor(CountAttempts(observe.clone()));
                }
                let config = config.build();
                aws_sdk_kms::Client::from_conf(config)
            })
            .clone()
    }
}

impl Kms for AwsKms {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        const ACTION: &str = "kms:GenerateDataKey";
        let (region, routed_key) = self.route(ACTION, key_id)?;
        let output = self
            .client(&region)
            .generate_data_key()
            .key_id(&routed_key)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context((!context.is_empty()).then(|| to_hash_map(context)))
            .send()
            .await
            .map_err(|e| map_error(ACTION, key_id, &region, e))?;
        let plaintext = output
            .plaintext
            .as_ref()
            .ok_or_else(|| malformed(ACTION, key_id, &region, "no Plaintext"))?;
        let plaintext = DataKey::from_slice(plaintext.as_ref())
            .map_err(|_| malformed(ACTION, key_id, &region, "data key is not 32 bytes"))?;
        let wrapped = output
            .ciphertext_blob
            .ok_or_else(|| malformed(ACTION, key_id, &region, "no CiphertextBlob"))?
            .into_inner();
        let key_material_id = output.key_material_id.filter(|id| !id.is_empty());
        let key_arn = output
            .key_id
            .ok_or_else(|| malformed(ACTION, key_id, &region, "no KeyId"))?;
        Ok(GeneratedKey {
            key_arn,
            key_material_id,
            plaintext,
            wrapped,
        })
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        const ACTION: &str = "kms:Decrypt";
        let shown_key = request.key_id.unwrap_or("(from the ciphertext)");
        let (region, routed_key) = match request.key_id {
            Some(key_id) => {
                let (region, routed) = self.route(ACTION, key_id)?;
                (region, Some(routed))
            }
            None => (
                self.default_region.clone().ok_or_else(|| {
                    KmsError::new(
                        KmsErrorKind::Configuration,
                        ACTION,
                        None,
                        "no AWS region is configured; pass --region or set AWS_REGION",
                    )
                })?,
                None,
            ),
        };
        let algorithm = match request.algorithm {
            WrapAlgorithm::KmsSymmetric => EncryptionAlgorithmSpec::SymmetricDefault,
            WrapAlgorithm::RsaOaepSha256 => EncryptionAlgorithmSpec::RsaesOaepSha256,
        };
        let output = self
            .client(&region)
            .decrypt()
            .set_key_id(routed_key)
            .ciphertext_blob(Blob::new(request.ciphertext))
            .encryption_algorithm(algorithm)
            .set_encryption_context(
                (!request.context.is_empty()).then(|| to_hash_map(request.context)),
            )
            .customize()
            .config_override(as_principal(request.principal))
            .send()
            .await
            .map_err(|e| map_error(ACTION, shown_key, &region, e))?;
        let key_arn = output
            .key_id
            .ok_or_else(|| malformed(ACTION, shown_key, &region, "no KeyId"))?;
        let plaintext = Zeroizing::new(
            output
                .plaintext
                .ok_or_else(|| malformed(ACTION, shown_key, &region, "no Plaintext"))?
                .into_inner(),
        );
        Ok(Decrypted { key_arn, plaintext })
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        const ACTION: &str = "kms:GetPublicKey";
        let (region, routed_key) = self.route(ACTION, key_id)?;
        let output = self
            .client(&region)
            .get_public_key()
            .key_id(&routed_key)
            .send()
            .await
            .map_err(|e| map_error(ACTION, key_id, &region, e))?;
        // KMS answers both; some emulators (moto) only the older CustomerMasterKeySpec.
        #[allow(deprecated)]
        let key_spec = output
            .key_spec
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .or_else(|| {
                output
                    .customer_master_key_spec
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
            })
            .unwrap_or_default();
        let Some(der) = output.public_key else {
            // AWS refuses GetPublicKey on symmetric keys; some emulators answer without a key.
            return Err(KmsError::new(
                KmsErrorKind::KeyUsage,
                ACTION,
                Some(key_id),
                format!("the key ({key_spec}) has no public key"),
            )
            .in_region(region));
        };
        let answered = output
            .key_id
            .ok_or_else(|| malformed(ACTION, key_id, &region, "no KeyId"))?;
        // KMS answers with the key's ARN; moto with its bare id, which the ARN asked for
        // names already.
        let key_arn = if KmsArn::parse(&answered).is_none()
            && key_id.ends_with(&format!(":key/{answered}"))
            && KmsArn::parse(key_id).is_some()
        {
            key_id.to_owned()
        } else {
            answered
        };
        Ok(PublicKeyInfo {
            key_arn,
            der: der.into_inner(),
            key_spec,
            key_usage: output
                .key_usage
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default(),
            encryption_algorithms: output
                .encryption_algorithms
                .unwrap_or_default()
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
        })
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        self.describe(key_id, Principal::CONTROLLER).await
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> Result<KeyFacts, KmsError> {
        self.describe(key_id, principal).await
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> Result<Option<u64>, KmsError> {
        self.rotations(key_id, principal).await
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        const ACTION: &str = "kms:ReEncrypt";
        let key_id = request.destination_key_id;
        let (region, destination) = self.route(ACTION, key_id)?;
        let (source_region, source) = self.route(ACTION, request.source_key_id)?;
        if source_region != region {
            return Err(KmsError::new(
                KmsErrorKind::Configuration,
                ACTION,
                Some(key_id),
                format!(
                    "the value is wrapped under a key in {source_region} and ReEncrypt cannot move it to {region}; seal it again under the new key"
                ),
            ));
        }
        let source_algorithm = match request.source_algorithm {
            WrapAlgorithm::KmsSymmetric => EncryptionAlgorithmSpec::SymmetricDefault,
            WrapAlgorithm::RsaOaepSha256 => EncryptionAlgorithmSpec::RsaesOaepSha256,
        };
        let output = self
            .client(&region)
            .re_encrypt()
            .ciphertext_blob(Blob::new(request.ciphertext))
            .source_key_id(source)
            .source_encryption_algorithm(source_algorithm)
            .set_source_encryption_context(
                (!request.source_context.is_empty()).then(|| to_hash_map(request.source_context)),
            )
            .destination_key_id(destination)
            .destination_encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .set_destination_encryption_context(
                (!request.destination_context.is_empty())
                    .then(|| to_hash_map(request.destination_context)),
            )
            .customize()
            .config_override(as_principal(request.principal))
            .send()
            .await
            .map_err(|e| map_error(ACTION, key_id, &region, e))?;
        Ok(ReEncrypted {
            key_arn: output
                .key_id
                .ok_or_else(|| malformed(ACTION, key_id, &region, "no KeyId"))?,
            key_material_id: output
                .destination_key_material_id
                .filter(|id| !id.is_empty()),
            wrapped: output
                .ciphertext_blob
                .ok_or_else(|| malformed(ACTION, key_id, &region, "no CiphertextBlob"))?
                .into_inner(),
        })
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.rotations(key_id, Principal::CONTROLLER).await
    }
}

impl AwsKms {
    async fn rotations(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> Result<Option<u64>, KmsError> {
        const ACTION: &str = "kms:ListKeyRotations";
        /// A bound on pages: a key rotated daily for decades has fewer.
        const MAX_PAGES: usize = 1000;
        let (region, routed_key) = self.route(ACTION, key_id)?;
        let mut latest: Option<u64> = None;
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let output = self
                .client(&region)
                .list_key_rotations()
                .key_id(&routed_key)
                .set_marker(marker.take())
                .customize()
                .config_override(as_principal(principal))
                .send()
                .await
                .map_err(|e| map_error(ACTION, key_id, &region, e))?;
            for rotation in output.rotations() {
                if let Some(date) = rotation.rotation_date()
                    && let Ok(secs) = u64::try_from(date.secs())
                {
                    latest = latest.max(Some(secs));
                }
            }
            match output.next_marker() {
                Some(next) if output.truncated() && !next.is_empty() => {
                    marker = Some(next.to_owned())
                }
                _ => return Ok(latest),
            }
        }
        Ok(latest)
    }

    async fn describe(&self, key_id: &str, principal: &Principal) -> Result<KeyFacts, KmsError> {
        const ACTION: &str = "kms:DescribeKey";
        let (region, routed_key) = self.route(ACTION, key_id)?;
        let output = self
            .client(&region)
            .describe_key()
            .key_id(&routed_key)
            .customize()
            .config_override(as_principal(principal))
            .send()
            .await
            .map_err(|e| map_error(ACTION, key_id, &region, e))?;
        let metadata = output
            .key_metadata
            .ok_or_else(|| malformed(ACTION, key_id, &region, "no KeyMetadata"))?;
        Ok(KeyFacts {
            key_arn: metadata
                .arn
                .ok_or_else(|| malformed(ACTION, key_id, &region, "no Arn"))?,
            state: metadata
                .key_state
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            current_material_id: metadata.current_key_material_id,
            last_rotation: None,
            deletion_date: metadata
                .deletion_date
                .and_then(|d| u64::try_from(d.secs()).ok()),
        })
    }
}

/// The configuration a call under `principal` overrides: a tenant's credentials instead of the
/// controller's; nothing for the controller's own.
fn as_principal(principal: &Principal) -> aws_sdk_kms::config::Builder {
    let builder = aws_sdk_kms::config::Builder::default();
    match principal {
        Principal::Controller => builder,
        Principal::Tenant(session) => builder.credentials_provider(session.credentials.clone()),
    }
}

fn to_hash_map(context: &EncryptionContext) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn malformed(action: &'static str, key: &str, region: &str, what: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::Other,
        action,
        Some(key),
        format!("malformed KMS response: {what}"),
    )
    .in_region(region)
}

/// Maps a KMS error code to a category.
pub fn kind_for_code(code: &str) -> KmsErrorKind {
    match code {
        "AccessDeniedException" => KmsErrorKind::AccessDenied,
        "NotFoundException" => KmsErrorKind::KeyNotFound,
        "DisabledException" | "KMSInvalidStateException" => KmsErrorKind::KeyDisabled,
        "KeyUnavailableException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "ServiceUnavailableException"
        | "InternalFailure" => KmsErrorKind::Unavailable,
        "InvalidCiphertextException" | "IncorrectKeyException" => KmsErrorKind::InvalidCiphertext,
        "InvalidKeyUsageException" | "UnsupportedOperationException" => KmsErrorKind::KeyUsage,
        "ThrottlingException"
        | "Throttling"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "LimitExceededException" => KmsErrorKind::Throttled,
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken" => KmsErrorKind::Credentials,
        "ValidationException" | "InvalidArnException" | "InvalidGrantTokenException" => {
            KmsErrorKind::InvalidRequest
        }
        _ => KmsErrorKind::Other,
    }
}

fn map_error<E, R>(action: &'static str, key: &str, region: &str, err: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            // A body that is no AWS error (a proxy's 500 page, say) has no code: say the
            // HTTP status instead of "Unknown".
            let status = (service.raw() as &dyn std::any::Any)
                .downcast_ref::<aws_smithy_runtime_api::http::Response>()
                .map(|r| r.status().as_u16());
            let (kind, code) = match e.code() {
                Some(code) => (kind_for_code(code), code.to_owned()),
                None => match status {
                    Some(s) if s >= 500 => (KmsErrorKind::Unavailable, format!("HTTP {s}")),
                    Some(s) => (KmsErrorKind::Other, format!("HTTP {s}")),
                    None => (
                        KmsErrorKind::Other,
                        "an answer that is no KMS error".to_owned(),
                    ),
                },
            };
            let message = e.message().unwrap_or("");
            let detail = if message.is_empty() {
                code
            } else {
                format!("{code}: {message}")
            };
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (KmsErrorKind::Unreachable, "timed out".to_owned()),
        SdkError::DispatchFailure(failure) => {
            // Classified on the whole chain, reported by its root cause: the SDK's wrappers
            // (DispatchFailure, ConnectorError, ...) tell an operator nothing.
            let text = DisplayErrorContext(&err).to_string();
            let cause = root_cause(&err);
            if failure.is_io() || failure.is_timeout() {
                (KmsErrorKind::Unreachable, cause)
            } else if mentions_credentials(&text) {
                (KmsErrorKind::Credentials, first_sentence(&cause))
            } else {
                (KmsErrorKind::Unreachable, cause)
            }
        }
        _ => {
            let text = DisplayErrorContext(&err).to_string();
            let cause = root_cause(&err);
            if mentions_credentials(&text) {
                (KmsErrorKind::Credentials, first_sentence(&cause))
            } else {
                (KmsErrorKind::Other, cause)
            }
        }
    };
    KmsError::new(kind, action, Some(key), crate::text::bounded(&detail, 400)).in_region(region)
}

/// The innermost error of `err`'s source chain, as its own message says it.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The first sentence: the SDK's credential chain lists every provider it tried after it.
fn first_sentence(text: &str) -> String {
    text.split_once(". ")
        .map_or(text, |(first, _)| first)
        .to_owned()
}

fn mentions_credentials(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("credential") || lower.contains("identity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_categories() {
        assert_eq!(
            kind_for_code("AccessDeniedException"),
            KmsErrorKind::AccessDenied
        );
        assert_eq!(
            kind_for_code("KMSInvalidStateException"),
            KmsErrorKind::KeyDisabled
        );
        assert_eq!(
            kind_for_code("ThrottlingException"),
            KmsErrorKind::Throttled
        );
        assert_eq!(
            kind_for_code("IncorrectKeyException"),
            KmsErrorKind::InvalidCiphertext
        );
        assert_eq!(kind_for_code("SomethingNew"), KmsErrorKind::Other);
    }

    #[tokio::test]
    async fn multi_region_keys_use_the_local_replica() {
        let kms = AwsKms::connect(&AwsSettings {
            region: Some("us-west-2".into()),
            ..AwsSettings::default()
        })
        .await
        .unwrap();
        let (region, key) = kms
            .route(
                "kms:Decrypt",
                "arn:aws:kms:us-east-1:111122223333:key/mrk-abc",
            )
            .unwrap();
        assert_eq!(region, "us-west-2");
        assert_eq!(key, "arn:aws:kms:us-west-2:111122223333:key/mrk-abc");
        // A single-region key only exists where its ARN says.
        let (region, key) = kms
            .route("kms:Decrypt", "arn:aws:kms:eu-west-1:111122223333:key/abc")
            .unwrap();
        assert_eq!(region, "eu-west-1");
        assert_eq!(key, "arn:aws:kms:eu-west-1:111122223333:key/abc");
        assert_eq!(
            kms.route("kms:Decrypt", "alias/app").unwrap().0,
            "us-west-2"
        );
    }
}
