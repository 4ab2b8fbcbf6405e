//! Logging setup. Logs go to stderr; `RUST_LOG` filters them.
//!
//! HTTP and AWS SDK internals are capped at INFO whatever `RUST_LOG` says: at DEBUG and TRACE
//! they may print request and response bodies, and KMS response bodies carry plaintext data
//! keys. kube-client is capped at ERROR: it prints unparsable response bodies at WARN.

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// Targets whose verbose output may contain wire data.
const WIRE_TARGETS: &[&str] = &[
    "aws_smithy",
    "aws_sdk",
    "aws_config",
    "aws_runtime",
    "aws_credential_types",
    // Logs canonical requests (with their body hashes and headers) at TRACE.
    "aws_sigv4",
    "hyper",
    "h2",
    "rustls",
    "tower",
];

/// Targets that log whole response bodies even at WARN: kube-client prints the text of a
/// response it cannot parse, and the response to a Secret apply holds the Secret's data.
const BODY_AT_WARN_TARGETS: &[&str] = &["kube_client"];

/// Whether an event from `target` at `level` may be logged at all.
pub fn allowed(target: &str, level: &Level) -> bool {
    if BODY_AT_WARN_TARGETS.iter().any(|t| target.starts_with(t)) {
        return *level <= Level::ERROR;
    }
    let wire = WIRE_TARGETS.iter().any(|t| target.starts_with(t));
    !wire || *level <= Level::INFO
}

/// Logs to stderr with `default_filter` unless `RUST_LOG` is set.
pub fn init_stderr(default_filter: &str) {
    init(default_filter, false);
}

/// Logs to stderr, as text or as one JSON object per line, with `default_filter` unless
/// `RUST_LOG` is set.
pub fn init(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let wire = filter_fn(|meta| allowed(meta.target(), meta.level()));
    // Colours only for a person at a terminal, not for a log collector.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter).with_filter(wire))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter).with_filter(wire))
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_logs_are_capped_at_info() {
        assert!(!allowed("aws_smithy_runtime::client::http", &Level::DEBUG));
        assert!(!allowed("hyper_util::client", &Level::TRACE));
        assert!(!allowed("aws_sigv4::http_request::sign", &Level::TRACE));
        assert!(allowed("aws_smithy_runtime::client::retries", &Level::INFO));
        assert!(allowed("kmseal::cli", &Level::TRACE));
        assert!(!allowed("kube_client::client", &Level::WARN));
        assert!(allowed("kube_client::client::builder", &Level::ERROR));
        assert!(allowed("kube_runtime::watcher", &Level::WARN));
    }
}
