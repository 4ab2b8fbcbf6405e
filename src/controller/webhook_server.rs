//! The admission webhook's HTTPS listener: `POST /validate` with an AdmissionReview, answered
//! by [`crate::webhook::review`] against the live key policy ([`Admission`]). The serving
//! certificate and key are read from a directory (`tls.crt`, `tls.key`) and read again when
//! they change, so a rotated certificate is served without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use zeroize::Zeroizing;

use super::admission::Admission;
use super::webhook_certs::SelfManaged;
use crate::metrics::{Metrics, ResultLabels};
use crate::policy::SecretTypes;
use crate::validate::Options;

/// How often the certificate files are looked at for a change.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The largest review read: an update carries the object twice, each at most etcd's 1.5 MiB.
const MAX_REVIEW_LEN: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "cannot read the webhook's serving certificate in {dir}: {message}; mount a kubernetes.io/tls Secret there (tls.crt, tls.key), set --webhook-cert-dir, or let the controller make its own (--webhook-secret)"
    )]
    Certificate { dir: String, message: String },
    #[error(
        "cannot keep the webhook's own certificate in Secret {secret}: {source}; the controller needs get, create and update on it in its namespace (the chart's RBAC grants them)"
    )]
    SelfManaged { secret: String, source: kube::Error },
    #[error("cannot listen for the webhook on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Where the serving certificate comes from.
pub enum CertSource {
    /// `tls.crt` and `tls.key` in a directory (a mounted Secret), looked at every 2 s.
    Files(PathBuf),
    /// Made and kept by the controller itself in a Secret, its CA published in the webhook
    /// configuration; looked at every minute.
    SelfManaged(SelfManaged),
}

/// How often the Secret of a self-managed certificate is read again (another replica may have
/// renewed it) and the caBundle checked.
const SECRET_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The serving certificate, swapped whole when its source changes; `marker` tells whether it
/// did (the files' modification time, or the certificate's text).
#[derive(Debug)]
struct Certificates {
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl Certificates {
    fn new(marker: String, key: CertifiedKey) -> Self {
        Certificates {
            current: RwLock::new((marker, Arc::new(key))),
        }
    }

    fn set_if_changed(&self, marker: String, key: impl FnOnce() -> Result<CertifiedKey, String>) {
        if marker == crate::sync::read(&self.current).0 {
            return;
        }
        match key() {
            Ok(key) => {
                *crate::sync::write(&self.current) = (marker, Arc::new(key));
                tracing::info!("webhook serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate not reloaded; serving the previous one")
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::read(&self.current).1.clone())
    }
}

/// The later of the two files' modification times, as a marker ("" when either is missing).
fn stamp(dir: &Path) -> String {
    let modified = |name: &str| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    match (modified("tls.crt"), modified("tls.key")) {
        (Some(a), Some(b)) => format!("{:?}", a.max(b)),
        _ => String::new(),
    }
}

fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

fn read_pair(dir: &Path) -> Result<CertifiedKey, String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map(Zeroizing::new)
            .map_err(|e| format!("{name}: {e}"))
    };
    let cert = read("tls.crt")?;
    let key = read("tls.key")?;
    certified(&cert, &key)
}

#[derive(Clone)]
struct AppState {
    admission: Arc<Admission>,
    types: Arc<SecretTypes>,
    metrics: Arc<Metrics>,
}

async fn validate(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let started = Instant::now();
    let count = |result: &'static str| {
        state
            .metrics
            .admission_reviews
            .get_or_create(&ResultLabels { result })
            .inc();
    };
    let review: Result<AdmissionReview<DynamicObject>, _> = serde_json::from_slice(&body);
    let request: Result<AdmissionRequest<DynamicObject>, _> = match review {
        Ok(review) => review.try_into().map_err(|_| ()),
        Err(_) => Err(()),
    };
    let Ok(request) = request else {
        count("invalid");
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({"error": "not an admission.k8s.io/v1 AdmissionReview with a request"}),
            ),
        );
    };
    let snapshot = state.admission.snapshot();
    let options = Options {
        rules: snapshot.rules(),
        types: &state.types,
        namespace: None,
        allow_plain_secrets: false,
        repo: None,
    };
    let (response, verdict) = crate::webhook::review(&request, &options);
    count(verdict.as_str());
    state
        .metrics
        .admission_duration
        .observe(started.elapsed().as_secs_f64());
    let body = serde_json::to_value(response.into_review()).unwrap_or_default();
    (StatusCode::OK, axum::Json(body))
}

/// Serves the webhook on `address` with the certificate in `cert_dir` until `shutdown`.
/// Returns once listening (the certificate is read first: a missing one fails the start).
pub async fn start(
    address: SocketAddr,
    source: CertSource,
    admission: Arc<Admission>,
    types: SecretTypes,
    metrics: Arc<Metrics>,
    shutdown: futures::future::Shared<BoxFuture<'static, ()>>,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let (certificates, shown) = match &source {
        CertSource::Files(dir) => {
            let fail = |message| WebhookError::Certificate {
                dir: dir.display().to_string(),
                message,
            };
            let key = read_pair(dir).map_err(fail)?;
            (
                Certificates::new(stamp(dir), key),
                dir.display().to_string(),
            )
        }
        CertSource::SelfManaged(own) => {
            let issued = own
                .ensure(crate::time::unix_now())
                .await
                .map_err(|source| WebhookError::SelfManaged {
                    secret: own.secret.clone(),
                    source,
                })?;
            if let Err(e) = own.publish(&issued.ca_bundle).await {
                tracing::warn!(error = %e, "cannot set the webhook caBundle yet; trying again in a minute");
            }
            let key = certified(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).map_err(
                |message| WebhookError::Certificate {
                    dir: format!("Secret {}", own.secret),
                    message,
                },
            )?;
            (
                Certificates::new(issued.cert_pem.clone(), key),
                format!("Secret {}/{}", own.namespace, own.secret),
            )
        }
    };
    let certificates = Arc::new(certificates);
    let cert_dir = shown;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Certificate {
        dir: cert_dir.clone(),
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = crate::server::bind(address)
        .await
        .map_err(|source| WebhookError::Listen { address, source })?;
    tracing::info!(%address, certificate = %cert_dir, "admission webhook listening (HTTPS)");
    let router = Router::new()
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_LEN))
        .with_state(AppState {
            admission,
            types: Arc::new(types),
            metrics,
        });
    tokio::spawn(refresh(source, certificates.clone(), shutdown.clone()));
    Ok(tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (acceptor, router) = (acceptor.clone(), router.clone());
                    tokio::spawn(async move {
                        // A handshake that stalls is dropped; the API server retries.
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                        else {
                            return;
                        };
                        let service = TowerToHyperService::new(router);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        }
    }))
}

/// Keeps the served certificate current: the files' every 2 s; the Secret's every minute,
/// renewing it when due and setting the caBundle where it differs.
async fn refresh(
    source: CertSource,
    certificates: Arc<Certificates>,
    shutdown: futures::future::Shared<BoxFuture<'static, ()>>,
) {
    let every = match &source {
        CertSource::Files(_) => CERT_CHECK_INTERVAL,
        CertSource::SelfManaged(_) => SECRET_CHECK_INTERVAL,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        match &source {
            CertSource::Files(dir) => {
                certificates.set_if_changed(stamp(dir), || read_pair(dir));
            }
            CertSource::SelfManaged(own) => match own.ensure(crate::time::unix_now()).await {
                Ok(issued) => {
                    certificates.set_if_changed(issued.cert_pem.clone(), || {
                        certified(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
                    });
                    if let Err(e) = own.publish(&issued.ca_bundle).await {
                        tracing::warn!(error = %e, "cannot set the webhook caBundle; trying again in a minute");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook certificate Secret; serving the current one")
                }
            },
        }
    }
}
