#!/usr/bin/env bash
# The real kmseal-controller binary over 10,000 EncryptedSecrets (examples/controller_binary_bench.rs):
# builds the release binaries, starts the KMS emulators (moto is the KMS), and prints API
# requests and writes per object, KMS calls, time and the controller's memory for a cold start
# and a restart. A benchmark: it prints figures and asserts nothing.
#
# Usage: scripts/bench-controller-binary.sh [--real] [--objects N] [--namespaces N] [--no-rotation]
#
#   --real  against a real kube-apiserver (scripts/control-plane.sh, a control plane of its own
#           in .tools/control-plane/bench) instead of the tests' fake API server; the requests
#           are then counted from the API server's audit log, and the controller runs as a
#           ServiceAccount of its own (cluster-admin) so its requests are told from the bench's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

real=false
for arg in "$@"; do
    [[ $arg == --real ]] && real=true
done

cargo build --release --locked --bin kmseal-controller --example controller_binary_bench

emulators() { bash scripts/emulators.sh "$@"; }
emulators install
export KMSEAL_CONTROL_PLANE_DIR=$PWD/.tools/control-plane/bench
cleanup() {
    emulators stop
    if $real; then
        bash scripts/control-plane.sh stop
    fi
}
trap cleanup EXIT
emulators start
eval "$(emulators env)"

extra=()
if $real; then
    bash scripts/control-plane.sh install
    bash scripts/control-plane.sh start
    eval "$(bash scripts/control-plane.sh env)"
    kubectl apply -f crds/encryptedsecrets.kmseal.dev.yaml
    kubectl wait --for condition=established --timeout=60s crd/encryptedsecrets.kmseal.dev
    kubectl create serviceaccount kmseal-bench -n kube-system
    kubectl create clusterrolebinding kmseal-bench --clusterrole=cluster-admin \
        --serviceaccount=kube-system:kmseal-bench
    token=$(kubectl create token kmseal-bench -n kube-system --duration=24h)
    controller_kubeconfig=$KMSEAL_CONTROL_PLANE_DIR/controller.kubeconfig
    cat >"$controller_kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: $KMSEAL_CONTROL_PLANE_SERVER
    certificate-authority-data: $(base64 -w0 <"$KMSEAL_CONTROL_PLANE_CA_FILE")
users:
- name: kmseal-bench
  user:
    token: $token
contexts:
- name: bench
  context: {cluster: bench, user: kmseal-bench}
current-context: bench
YAML
    chmod 600 "$controller_kubeconfig"
    extra=(--admin-kubeconfig "$KMSEAL_CONTROL_PLANE_KUBECONFIG"
        --controller-kubeconfig "$controller_kubeconfig"
        --audit-log "$KMSEAL_CONTROL_PLANE_AUDIT_LOG"
        --controller-user system:serviceaccount:kube-system:kmseal-bench)
fi

target/release/examples/controller_binary_bench --moto "$KMSEAL_TEST_MOTO_URL" "${extra[@]}" "$@"
