#!/usr/bin/env bash
# The real kmseal-controller binary over 10,000 EncryptedSecrets (examples/controller_binary_bench.rs):
# builds the release binaries, starts the KMS emulators (moto is the KMS), and prints API
# requests and writes per object, KMS calls, time and the controller's memory for a cold start
# and a restart. A benchmark: it prints figures and asserts nothing.
#
# Usage: scripts/bench-controller-binary.sh [--objects N] [--namespaces N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked --bin kmseal-controller --example controller_binary_bench

emulators() { bash scripts/emulators.sh "$@"; }
emulators install
trap 'emulators stop' EXIT
emulators start
eval "$(emulators env)"

target/release/examples/controller_binary_bench --moto "$KMSEAL_TEST_MOTO_URL" "$@"
