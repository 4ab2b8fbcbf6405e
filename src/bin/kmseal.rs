//! `kmseal`: seal Secrets with AWS KMS. Also works as the kubectl plugin `kubectl-kmseal`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // IMDS lookups fail noisily off EC2; the real error, if any, comes from the KMS call.
    kmseal::telemetry::init_stderr("warn,aws_config=error");
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
