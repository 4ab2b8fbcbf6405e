#!/usr/bin/env bash
# End to end in a real cluster: kind, a KMS emulator in it, the controller image built here and
# installed with the chart (IRSA emulated through the emulator's STS), keys created in the
# emulator, then the end-to-end checks (examples/e2e.rs, the same ones tests/e2e.rs runs on
# every CI run against the fake API server and moto), including garbage collection.
#
# Usage: KMS_EMULATOR=moto|localstack kind/e2e.sh
#   LocalStack needs LOCALSTACK_AUTH_TOKEN; KEEP_CLUSTER=1 keeps the cluster afterwards.
# Needs docker (with an engine), kind, kubectl, helm, the AWS CLI and cargo; it runs in GitHub
# Actions (.github/workflows/e2e.yml).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

EMULATOR=${KMS_EMULATOR:-moto}
CLUSTER=${KIND_CLUSTER:-kmseal-e2e}
LOCAL_PORT=${KMSEAL_E2E_KMS_PORT:-14566}
REGION=us-east-1

log() { printf '[e2e] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

missing=()
for tool in docker kind kubectl helm aws cargo; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "kind/e2e.sh needs docker, kind, kubectl, helm, the AWS CLI and cargo; missing: ${missing[*]}. It runs in GitHub Actions (.github/workflows/e2e.yml); without Docker, tests/e2e.rs runs the same checks against the fake API server and moto (scripts/test.sh)."
fi
docker info >/dev/null 2>&1 || die "docker is installed but no Docker engine answers; start one, or run the checks without Docker through scripts/test.sh"

case $EMULATOR in
moto)
    manifest=kind/moto.yaml service=moto port=5000
    ;;
localstack)
    [[ -n ${LOCALSTACK_AUTH_TOKEN:-} ]] || die "KMS_EMULATOR=localstack needs LOCALSTACK_AUTH_TOKEN (recent LocalStack images refuse to start without one); or use KMS_EMULATOR=moto"
    manifest=kind/localstack.yaml service=localstack port=4566
    ;;
*) die "KMS_EMULATOR must be moto or localstack, not $EMULATOR" ;;
esac

forward=""
cleanup() {
    local rc=$?
    [[ -n $forward ]] && kill "$forward" 2>/dev/null
    if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
        log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
    else
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config kind/cluster.yaml --wait 180s

log "building and loading the controller image"
docker build -t kmseal-controller:e2e .
kind load docker-image kmseal-controller:e2e --name "$CLUSTER"

log "starting $EMULATOR in namespace kms"
kubectl create namespace kms
if [[ $EMULATOR == localstack ]]; then
    kubectl -n kms create secret generic localstack-auth --from-literal=token="$LOCALSTACK_AUTH_TOKEN"
fi
kubectl apply -f "$manifest"
kubectl -n kms rollout status "deploy/$service" --timeout=300s
kubectl -n kms port-forward "svc/$service" "$LOCAL_PORT:$port" >/dev/null &
forward=$!

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=$REGION AWS_DEFAULT_REGION=$REGION
export AWS_ENDPOINT_URL=http://127.0.0.1:$LOCAL_PORT
for _ in $(seq 60); do
    aws kms list-keys >/dev/null 2>&1 && break
    sleep 1
done
allowed=$(aws kms create-key --description "kmseal e2e" --query KeyMetadata.Arn --output text)
other=$(aws kms create-key --description "kmseal e2e, not allowed" --query KeyMetadata.Arn --output text)
next=$(aws kms create-key --description "kmseal e2e, rotation target" --query KeyMetadata.Arn --output text)
# The namespace may use the alias, whichever key it points to; the rotation check moves it.
aws kms create-alias --alias-name alias/kmseal-e2e --target-key-id "${allowed##*/}"
alias_arn="${allowed%%:key/*}:alias/kmseal-e2e"
log "keys: allowed $allowed, other $other, rotation $alias_arn -> $next"

log "installing the chart"
helm install kmseal charts/kmseal --namespace kmseal --create-namespace --wait --timeout 300s \
    --set image.repository=kmseal-controller --set image.tag=e2e --set image.pullPolicy=Never \
    --set irsaEmulation.enabled=true \
    --set irsaEmulation.roleArn=arn:aws:iam::000000000000:role/kmseal-controller \
    --set "aws.endpoint=http://$service.kms:$port" --set aws.region=$REGION \
    --set "kms.allowedKeys={$allowed,$alias_arn}" --set controller.logFormat=text \
    --set controller.keyRefreshInterval=2 --set controller.resyncInterval=5

log "checking the IAM wiring from inside the pod (as the install notes say)"
kubectl -n kmseal exec deploy/kmseal -- /usr/local/bin/kmseal-controller --check-kms-key "$allowed"

log "running the end-to-end checks"
kubectl create namespace e2e
cargo run --locked --example e2e -- --namespace e2e --kms-endpoint "$AWS_ENDPOINT_URL" \
    --region "$REGION" --allowed-key "$allowed" --other-key "$other" --garbage-collection \
    --alias alias/kmseal-e2e --next-key "$next"
