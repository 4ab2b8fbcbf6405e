//! The end-to-end checks against a real cluster, as `kind/e2e.sh` runs them:
//!
//! cargo run --example e2e -- --namespace NS --kms-endpoint URL --region REGION \
//!     --allowed-key ARN --other-key ARN [--garbage-collection] [--alias alias/NAME --next-key ARN]
//!
//! The cluster is the current kubeconfig context (KUBECONFIG). KMS credentials come from the
//! SDK's default chain (any static pair works for the emulators). With `--alias` (pointing to
//! the allowed key, allowed by the controller's key policy) and `--next-key`, the rotation
//! check moves the alias. Exits 1 at the first failed check, naming it.

#[path = "../tests/common/e2e.rs"]
mod checks;

use std::time::Duration;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let required = |name: &str| {
        flag(&args, name).unwrap_or_else(|| {
            eprintln!("e2e: {name} is required");
            std::process::exit(2);
        })
    };
    let endpoint = required("--kms-endpoint");
    let region = required("--region");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(kmseal::kms::aws::https_client())
        .region(aws_config::Region::new(region))
        .endpoint_url(endpoint)
        .load()
        .await;
    let client = kube::Client::try_default().await.unwrap_or_else(|e| {
        eprintln!("e2e: no cluster: {e}");
        std::process::exit(1);
    });
    let target = checks::Target {
        client,
        kms: kmseal::kms::AwsKms::from_sdk_config(sdk.clone()),
        namespace: required("--namespace"),
        allowed_key: required("--allowed-key"),
        other_key: required("--other-key"),
        garbage_collection: args.iter().any(|a| a == "--garbage-collection"),
        timeout: Duration::from_secs(120),
        rotation: flag(&args, "--alias").map(|alias| checks::RotationTarget {
            alias,
            next_key: required("--next-key"),
            admin: aws_sdk_kms::Client::new(&sdk),
        }),
    };
    if let Err(failure) = checks::run_all(&target).await {
        eprintln!("e2e: FAILED: {failure}");
        std::process::exit(1);
    }
    println!("e2e: all checks passed");
}
