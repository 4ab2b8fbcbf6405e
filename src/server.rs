//! `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// The router: `/healthz` is always OK while the process serves; `/readyz` once `ready` is set
/// (the initial sync is done); `/metrics` in the OpenMetrics text format.
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, ready })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "initial sync not done")
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Binds the ops listener. The default, `[::]`, takes IPv4 and IPv6 connections on Linux
/// (dual stack), so probes work on IPv4, IPv6 and dual-stack clusters alike; on a node whose
/// kernel has IPv6 turned off it falls back to `0.0.0.0` on the same port.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(address).await {
        Err(e) if address.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let ipv4 = SocketAddr::from(([0, 0, 0, 0], address.port()));
            tracing::info!(error = %e, %ipv4, "IPv6 is not available here; serving on IPv4 only");
            tokio::net::TcpListener::bind(ipv4).await
        }
        other => other,
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind(address).await?;
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.managed_objects.set(3);
        let ready = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(metrics, ready.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(address, "/metrics").await;
        assert!(metrics.contains("kmseal_managed_objects 3"), "{metrics}");
        assert!(metrics.contains("openmetrics-text"), "{metrics}");
    }

    /// The default address serves probes over both IP versions (on this machine's kernel,
    /// which has IPv6; the fallback is for kernels without it).
    #[tokio::test]
    async fn the_default_address_serves_ipv4_and_ipv6() {
        let listener = bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = router(Arc::new(Metrics::new()), Arc::new(AtomicBool::new(true)));
        tokio::spawn(async move { axum::serve(listener, app).await });
        for host in ["127.0.0.1", "[::1]"] {
            let address: SocketAddr = format!("{host}:{port}").parse().unwrap();
            assert!(
                get(address, "/healthz").await.starts_with("HTTP/1.1 200"),
                "{host}"
            );
        }
    }
}
