#!/usr/bin/env bash
# The README's "run it" command: ./scripts/quickstart.sh
#
# Builds kmseal, starts a local KMS (moto's server on loopback, no AWS account needed), creates
# a key, and walks through seal -> verify -> unseal, then shows a value refusing to decrypt
# after being moved to another namespace. Everything it starts is stopped on exit.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
EMU_DIR=${KMSEAL_EMULATOR_DIR:-$REPO_ROOT/.emulators}
WORK=$(mktemp -d)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building kmseal (the first build takes a few minutes)"
cargo build --locked --bin kmseal
KMSEAL=$REPO_ROOT/target/debug/kmseal

step "Installing moto (a local KMS emulator) into $EMU_DIR"
bash scripts/emulators.sh install moto

PORT=$("$EMU_DIR/moto-venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOTO_ACCOUNT_ID=000000000000 "$EMU_DIR/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
    >"$WORK/moto.log" 2>&1 </dev/null &
MOTO_PID=$!
cleanup() {
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    rm -rf "$WORK"
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

step "kmseal seal --key alias/kmseal-quickstart -f secret.yaml   (safe to commit)"
"$KMSEAL" seal --key alias/kmseal-quickstart -f "$WORK/secret.yaml" >"$WORK/sealed.yaml"
cat "$WORK/sealed.yaml"

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
[[ $code -eq 3 ]] || { echo "expected exit code 3, got $code" >&2; exit 1; }

step "Done. Next: eval \"\$(scripts/local-kms.sh)\" for a local KMS of your own; README.md (usage, IAM, offline sealing) and docs/format.md"
