//! `kmseal-controller`: turns EncryptedSecrets into Secrets, decrypting with AWS KMS.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kmseal::config::{ControllerArgs, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ControllerArgs::parse();
    kmseal::telemetry::init("info,aws_config=warn", args.log_format == LogFormat::Json);
    if let Some(key) = &args.check_kms_key {
        return match kmseal::controller::runtime::check_kms(&args, key).await {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match kmseal::controller::runtime::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, through the log (JSON with --log-format json), not a second time raw.
            tracing::error!(error = %e, "kmseal-controller stopped");
            ExitCode::FAILURE
        }
    }
}
