//! The admission webhook's HTTPS listener: `POST /validate` with an AdmissionReview, answered
//! by [`crate::webhook::review`] against the live key policy ([`Admission`]). The serving
//! certificate and key are read from a directory (`tls.crt`, `tls.key`) and read again when
//! they change, so a rotated certificate is served without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

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

use super::admission::Admission;
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
        "cannot read the webhook's serving certificate in {dir}: {message}; mount a kubernetes.io/tls Secret there (tls.crt, tls.key), or set --webhook-cert-dir"
    )]
    Certificate { dir: String, message: String },
    #[error("cannot listen for the webhook on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The serving certificate, swapped whole when the files change.
#[derive(Debug)]
struct Certificates {
    dir: PathBuf,
    current: RwLock<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl Certificates {
    fn load(dir: &Path) -> Result<Self, WebhookError> {
        let (stamp, key) = read_pair(dir)?;
        Ok(Certificates {
            dir: dir.to_path_buf(),
            current: RwLock::new((stamp, Arc::new(key))),
        })
    }

    /// Reads the files again if they changed; a bad new pair keeps the old one (and is logged).
    fn refresh(&self) {
        let stamp = stamp(&self.dir);
        if stamp == crate::sync::read(&self.current).0 {
            return;
        }
        match read_pair(&self.dir) {
            Ok((stamp, key)) => {
                *crate::sync::write(&self.current) = (stamp, Arc::new(key));
                tracing::info!(dir = %self.dir.display(), "webhook serving certificate reloaded");
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

/// The later of the two files' modification times (None when either is missing).
fn stamp(dir: &Path) -> Option<SystemTime> {
    let modified = |name: &str| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    Some(modified("tls.crt")?.max(modified("tls.key")?))
}

fn read_pair(dir: &Path) -> Result<(Option<SystemTime>, CertifiedKey), WebhookError> {
    let fail = |message: String| WebhookError::Certificate {
        dir: dir.display().to_string(),
        message,
    };
    let stamp = stamp(dir);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .map_err(|e| fail(format!("tls.crt: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(fail("tls.crt holds no certificate".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key"))
        .map_err(|e| fail(format!("tls.key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| fail(format!("tls.key: {e}")))?;
    Ok((stamp, CertifiedKey::new(chain, signing)))
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
    cert_dir: &Path,
    admission: Arc<Admission>,
    types: SecretTypes,
    metrics: Arc<Metrics>,
    shutdown: futures::future::Shared<BoxFuture<'static, ()>>,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let certificates = Arc::new(Certificates::load(cert_dir)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Certificate {
        dir: cert_dir.display().to_string(),
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = crate::server::bind(address)
        .await
        .map_err(|source| WebhookError::Listen { address, source })?;
    tracing::info!(%address, dir = %cert_dir.display(), "admission webhook listening (HTTPS)");
    let router = Router::new()
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_LEN))
        .with_state(AppState {
            admission,
            types: Arc::new(types),
            metrics,
        });
    Ok(tokio::spawn(async move {
        let mut refresh = tokio::time::interval(CERT_CHECK_INTERVAL);
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = refresh.tick() => certificates.refresh(),
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
