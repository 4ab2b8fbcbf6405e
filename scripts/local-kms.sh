#!/usr/bin/env bash
# A local KMS to try kmseal with, after the quickstart: starts moto's server on loopback (no
# AWS account, no Docker), creates a key with the alias alias/kmseal-local, and prints the
# environment that points kmseal (and the bundled AWS CLI) at it:
#
#   eval "$(scripts/local-kms.sh)"          # start, and export the variables in this shell
#   kmseal seal --key alias/kmseal-local -f secret.yaml
#   scripts/local-kms.sh stop               # stop it
#
# With --localstack it runs LocalStack's KMS instead (its own instance, beside any the tests
# run), and also creates an RSA key, alias/kmseal-local-rsa, for offline sealing with
# `kmseal pubkey` and `kmseal seal --public-key`: moto's RSA public keys do not belong to its
# private keys, so what is sealed with one never opens there.
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
RSA_ALIAS=alias/kmseal-local-rsa
MODE=moto

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
--localstack) MODE=localstack ;;
*)
    echo "usage: scripts/local-kms.sh [start|--localstack|stop]" >&2
    exit 2
    ;;
esac

stop
PY=$EMU_DIR/moto-venv/bin/python
if [[ $MODE == moto ]]; then
    log "installing moto into $EMU_DIR (once)"
    bash "$REPO_ROOT/scripts/emulators.sh" install moto >&2
else
    log "installing moto and LocalStack into $EMU_DIR (once; LocalStack needs Python 3.12+)"
    bash "$REPO_ROOT/scripts/emulators.sh" install >&2
fi
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [[ $MODE == moto ]]; then
    MOTO_ACCOUNT_ID=000000000000 setsid "$EMU_DIR/moto-venv/bin/moto_server" -H 127.0.0.1 \
        -p "$PORT" >"$EMU_DIR/local-kms.log" 2>&1 </dev/null &
else
    # As scripts/emulators.sh starts it (see there why it needs its own certificate), with
    # its own port, state and certificate.
    fs=$EMU_DIR/local-kms-fs cert=$EMU_DIR/local-kms-cert
    rm -rf "$fs" "$cert"
    mkdir -p "$fs" "$cert"
    openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 2 \
        -keyout "$cert/key.pem" -out "$cert/cert.pem" 2>"$cert/openssl.log" ||
        { cat "$cert/openssl.log" >&2; exit 1; }
    cat "$cert/key.pem" "$cert/cert.pem" >"$cert/server.pem"
    OVERRIDE_IN_DOCKER=0 GATEWAY_LISTEN=127.0.0.1:$PORT SERVICES=kms,sts \
        EAGER_SERVICE_LOADING=0 DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        FILESYSTEM_ROOT=$fs CUSTOM_SSL_CERT_PATH=$cert/server.pem \
        setsid "$EMU_DIR/localstack-venv/bin/python" -m localstack.runtime.main \
        >"$EMU_DIR/local-kms.log" 2>&1 </dev/null &
fi
echo $! >"$PID_FILE"

# What kmseal and the AWS CLI need: dummy credentials, a region (AWS_DEFAULT_REGION for the
# bundled AWS CLI v1), and the endpoint.
EXPORTS="export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export KMSEAL_KEY=$ALIAS"
eval "$EXPORTS"
AWS=$EMU_DIR/moto-venv/bin/aws
# moto answers within a second or two, LocalStack within about ten.
for _ in $(seq 1 300); do
    "$AWS" kms list-keys >/dev/null 2>&1 && break
    sleep 0.2
done
"$AWS" kms list-keys >/dev/null || {
    stop
    log "$MODE did not answer; see $EMU_DIR/local-kms.log"
    exit 1
}
KEY=$("$AWS" kms create-key --description "kmseal local" --query KeyMetadata.Arn --output text)
"$AWS" kms create-alias --alias-name "$ALIAS" --target-key-id "$KEY"
if [[ $MODE == localstack ]]; then
    RSA=$("$AWS" kms create-key --description "kmseal local RSA" --key-spec RSA_2048 \
        --key-usage ENCRYPT_DECRYPT --query KeyMetadata.Arn --output text)
    "$AWS" kms create-alias --alias-name "$RSA_ALIAS" --target-key-id "$RSA"
    log "RSA key $RSA ($RSA_ALIAS): kmseal pubkey --key $RSA_ALIAS --out local.pem"
fi
printf '%s\n' "$EXPORTS" >"$ENV_FILE"
log "KMS ($MODE) on http://127.0.0.1:$PORT with key $KEY ($ALIAS); the AWS CLI is $AWS"
log "exports also in $ENV_FILE; stop it with: scripts/local-kms.sh stop"
printf '%s\n' "$EXPORTS"
