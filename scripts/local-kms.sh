#!/usr/bin/env bash
# A local KMS to try kmseal with, after the quickstart: starts moto's server on loopback (no
# AWS account, no Docker), creates a key with the alias alias/kmseal-local, and prints the
# environment that points kmseal (and the bundled AWS CLI) at it:
#
#   eval "$(scripts/local-kms.sh)"          # start, and export the variables in this shell
#   kmseal seal --key alias/kmseal-local -f secret.yaml
#   scripts/local-kms.sh stop               # stop it
#
# The exports go to stdout, everything else to stderr. The server keeps running in the
# background until `stop`; its state (keys) is lost then.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EMU_DIR=${KMSEAL_EMULATOR_DIR:-$REPO_ROOT/.emulators}
[[ $EMU_DIR == /* ]] || EMU_DIR=$PWD/$EMU_DIR
PID_FILE=$EMU_DIR/local-kms.pid
ENV_FILE=$EMU_DIR/local-kms.env
ALIAS=alias/kmseal-local

log() { printf '[local-kms] %s\n' "$*" >&2; }

stop() {
    if [[ -f $PID_FILE ]]; then
        local pid
        pid=$(cat "$PID_FILE")
        # The server runs in its own process group (setsid).
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        rm -f "$PID_FILE" "$ENV_FILE"
        log "stopped (pid $pid)"
    fi
}

case "${1:-start}" in
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    echo "usage: scripts/local-kms.sh [start|stop]" >&2
    exit 2
    ;;
esac

stop
log "installing moto into $EMU_DIR (once)"
bash "$REPO_ROOT/scripts/emulators.sh" install moto >&2
PY=$EMU_DIR/moto-venv/bin/python
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOTO_ACCOUNT_ID=000000000000 setsid "$EMU_DIR/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
    >"$EMU_DIR/local-kms.log" 2>&1 </dev/null &
echo $! >"$PID_FILE"

# What kmseal and the AWS CLI need: dummy credentials, a region (AWS_DEFAULT_REGION for the
# bundled AWS CLI v1), and the endpoint.
EXPORTS="export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export KMSEAL_KEY=$ALIAS"
eval "$EXPORTS"
AWS=$EMU_DIR/moto-venv/bin/aws
for _ in $(seq 1 100); do
    "$AWS" kms list-keys >/dev/null 2>&1 && break
    sleep 0.2
done
"$AWS" kms list-keys >/dev/null || {
    stop
    log "moto did not answer; see $EMU_DIR/local-kms.log"
    exit 1
}
KEY=$("$AWS" kms create-key --description "kmseal local" --query KeyMetadata.Arn --output text)
"$AWS" kms create-alias --alias-name "$ALIAS" --target-key-id "$KEY"
printf '%s\n' "$EXPORTS" >"$ENV_FILE"
log "KMS on http://127.0.0.1:$PORT with key $KEY ($ALIAS); the AWS CLI is $AWS"
log "exports also in $ENV_FILE; stop it with: scripts/local-kms.sh stop"
printf '%s\n' "$EXPORTS"
