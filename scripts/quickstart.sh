#!/usr/bin/env bash
# The README's "run it" command: ./scripts/quickstart.sh [--cli]
#
# Runs the product on this machine, with no AWS account and no Docker: builds kmseal and
# kmseal-controller, starts a local KMS (moto's server on loopback) and a real Kubernetes
# control plane (etcd, kube-apiserver and kube-controller-manager, built from Go modules by
# scripts/control-plane.sh; the first build takes ~20 minutes on 2 cores), applies the CRD,
# starts the controller, seals a Secret, `kubectl apply`s the EncryptedSecret and shows the
# Secret the controller wrote, values decoded. Then it shows the same values refused in another
# namespace, and stops everything it started.
#
#   --cli   only the CLI: seal -> verify -> unseal against the local KMS (no cluster, quick)
#
# KMSEAL_QUICKSTART_BIN=DIR uses the binaries in DIR instead of building them (the tests do).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
EMU_DIR=${KMSEAL_EMULATOR_DIR:-$REPO_ROOT/.emulators}
WORK=$(mktemp -d)
# A control plane of its own, so a test run elsewhere in this checkout is not disturbed.
export KMSEAL_CONTROL_PLANE_DIR=${KMSEAL_QUICKSTART_CONTROL_PLANE_DIR:-$REPO_ROOT/.tools/control-plane/quickstart}

CLI_ONLY=false
case ${1:-} in
--cli) CLI_ONLY=true ;;
"") ;;
*)
    echo "usage: scripts/quickstart.sh [--cli]" >&2
    exit 2
    ;;
esac

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
started=$(date +%s)

if [[ -n ${KMSEAL_QUICKSTART_BIN:-} ]]; then
    BIN=$KMSEAL_QUICKSTART_BIN
else
    step "Building kmseal and kmseal-controller (the first build takes a few minutes)"
    cargo build --locked --bin kmseal --bin kmseal-controller
    BIN=$REPO_ROOT/target/debug
fi
KMSEAL=$BIN/kmseal

step "Installing moto (a local KMS emulator) into $EMU_DIR"
bash scripts/emulators.sh install moto

PORT=$("$EMU_DIR/moto-venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOTO_ACCOUNT_ID=000000000000 "$EMU_DIR/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
    >"$WORK/moto.log" 2>&1 </dev/null &
MOTO_PID=$!
CONTROLLER_PID=
PLANE_STARTED=false
cleanup() {
    local rc=$?
    [[ -n $CONTROLLER_PID ]] && kill "$CONTROLLER_PID" 2>/dev/null && wait "$CONTROLLER_PID" 2>/dev/null
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    if $PLANE_STARTED; then
        bash scripts/control-plane.sh stop >/dev/null 2>&1 || true
    fi
    if [[ $rc -ne 0 && -f $WORK/controller.log ]]; then
        echo "--- the controller's log ---" >&2
        tail -n 30 "$WORK/controller.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# Everything below talks to the emulator with dummy credentials, as it would to AWS.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
AWS=$EMU_DIR/moto-venv/bin/aws
for _ in $(seq 1 100); do
    "$AWS" kms list-keys >/dev/null 2>&1 && break
    sleep 0.2
done

step "Creating a KMS key with the alias alias/kmseal-quickstart"
KEY=$("$AWS" kms create-key --description "kmseal quickstart" --query KeyMetadata.Arn --output text)
"$AWS" kms create-alias --alias-name alias/kmseal-quickstart --target-key-id "$KEY"
ALIAS_ARN=${KEY%%key/*}alias/kmseal-quickstart
echo "$KEY"

step "A Secret, as kubectl would print it (kubectl create secret ... --dry-run=client -o yaml)"
cat >"$WORK/secret.yaml" <<'YAML'
apiVersion: v1
kind: Secret
metadata:
  name: db-credentials
  namespace: prod
type: kubernetes.io/basic-auth
stringData:
  username: app
  password: correct-horse-battery-staple
YAML
cat "$WORK/secret.yaml"

step "kmseal seal --key $ALIAS_ARN -f secret.yaml   (safe to commit)"
"$KMSEAL" seal --key "$ALIAS_ARN" -f "$WORK/secret.yaml" >"$WORK/sealed.yaml"
cat "$WORK/sealed.yaml"

if $CLI_ONLY; then
    step "kmseal verify -f sealed.yaml   (every item through KMS, no plaintext printed)"
    "$KMSEAL" verify -f "$WORK/sealed.yaml"
    step "kmseal unseal -f sealed.yaml   (recovery; needs kms:Decrypt)"
    "$KMSEAL" unseal -f "$WORK/sealed.yaml"
    step "The same file moved to namespace 'dev' does not decrypt (exit code 3)"
    sed 's/namespace: prod/namespace: dev/' "$WORK/sealed.yaml" >"$WORK/moved.yaml"
    set +e
    "$KMSEAL" verify -f "$WORK/moved.yaml"
    code=$?
    set -e
    [[ $code -eq 3 ]] || {
        echo "expected exit code 3, got $code" >&2
        exit 1
    }
    step "Done in $(($(date +%s) - started)) s. Next: ./scripts/quickstart.sh without --cli runs the controller on a real API server"
    exit 0
fi

step "Building and starting a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager; the first build takes ~20 minutes)"
bash scripts/control-plane.sh install
PLANE_STARTED=true
bash scripts/control-plane.sh start
eval "$(bash scripts/control-plane.sh env)"
kubectl version 2>/dev/null | grep -i server || true

step "kubectl apply -f crds/encryptedsecrets.kmseal.dev.yaml; kubectl create namespace prod"
kubectl apply -f crds/encryptedsecrets.kmseal.dev.yaml
kubectl wait --for condition=established --timeout=60s crd/encryptedsecrets.kmseal.dev
kubectl create namespace prod
kubectl create namespace dev

step "Starting kmseal-controller (KMS: the local moto; the key policy: alias/kmseal-quickstart for every namespace)"
METRICS_PORT=$("$EMU_DIR/moto-venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/kmseal-controller" --kubeconfig "$KUBECONFIG" --allowed-keys "$ALIAS_ARN" \
    --metrics-address "127.0.0.1:$METRICS_PORT" >"$WORK/controller.log" 2>&1 </dev/null &
CONTROLLER_PID=$!
for _ in $(seq 1 150); do
    [[ $(curl -s "http://127.0.0.1:$METRICS_PORT/readyz" || true) == ready ]] && break
    sleep 0.2
done
grep -m1 "kmseal-controller started" "$WORK/controller.log" || true

step "kubectl apply -f sealed.yaml"
kubectl apply -f "$WORK/sealed.yaml"
kubectl wait --for condition=Ready --timeout=60s -n prod encryptedsecret/db-credentials
kubectl get encryptedsecret -n prod db-credentials

step "The Secret the controller wrote: kubectl get secret -n prod db-credentials -o yaml"
kubectl get secret -n prod db-credentials -o yaml
step "Its values, decoded"
# shellcheck disable=SC2016 # a Go template, not a shell expansion
kubectl get secret -n prod db-credentials \
    -o go-template='{{range $k, $v := .data}}{{$k}}: {{$v | base64decode}}{{"\n"}}{{end}}'

step "The same sealed file applied in namespace 'dev': refused, no Secret written"
sed 's/namespace: prod/namespace: dev/' "$WORK/sealed.yaml" | kubectl apply -f -
for _ in $(seq 1 100); do
    reason=$(kubectl get encryptedsecret -n dev db-credentials -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
    [[ -n $reason ]] && break
    sleep 0.2
done
kubectl get encryptedsecret -n dev db-credentials \
    -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
[[ $reason == DecryptFailed ]] || {
    echo "expected DecryptFailed in dev, got '$reason'" >&2
    exit 1
}
if kubectl get secret -n dev db-credentials >/dev/null 2>&1; then
    echo "a Secret was written in dev" >&2
    exit 1
fi

step "Done in $(($(date +%s) - started)) s; stopping the controller, the control plane and the KMS. Next: docs/aws.md (install on EKS), docs/multi-tenancy.md (the key policy), docs/rotation.md"
