//! `kmseal`: seal Secrets with AWS KMS. Also works as the kubectl plugin `kubectl-kmseal`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // The CLI says what went wrong in its own words; the SDK's log lines (IMDS lookups off
    // EC2, profile parsing) only when RUST_LOG asks for them.
    kmseal::telemetry::init_stderr("off");
    let args: Vec<_> = std::env::args_os().collect();
    let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let code = kmseal::cli::run(
        args,
        &mut std::io::stdin().lock(),
        stdin_is_terminal,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
    .await;
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
