#!/usr/bin/env bash
# Install, start and stop the two AWS KMS/STS emulators that kmseal's
# integration tests run against, both on loopback only:
#
#   moto        (moto_server, Python 3.11 venv; the same venv carries boto3,
#                the AWS CLI v1 and pre-commit, which the tests drive)
#   LocalStack  (localstack-core in host mode, Python >= 3.12 venv)
#
# Usage: scripts/emulators.sh install [moto]|start|stop|env
#
#   install  create/refresh the virtualenvs (idempotent, pinned versions)
#   start    (re)start both emulators on free ports (installing them first if
#            needed), wait until each answers a real KMS call, write
#            $KMSEAL_EMULATOR_DIR/env
#   stop     stop both emulators (idempotent)
#   env      print the env file written by `start`
#
# Everything lives under $KMSEAL_EMULATOR_DIR (default <repo>/.emulators,
# git-ignored). Nothing here needs Docker or any network but PyPI.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EMU_DIR=${KMSEAL_EMULATOR_DIR:-$REPO_ROOT/.emulators}
[[ $EMU_DIR == /* ]] || EMU_DIR=$PWD/$EMU_DIR
PYENV_VERSIONS_DIR=${PYENV_ROOT:-$HOME/.pyenv}/versions

MOTO_VENV=$EMU_DIR/moto-venv
LS_VENV=$EMU_DIR/localstack-venv
ENV_FILE=$EMU_DIR/env

MOTO_READY_TIMEOUT=${KMSEAL_MOTO_READY_TIMEOUT:-20}
LS_READY_TIMEOUT=${KMSEAL_LOCALSTACK_READY_TIMEOUT:-60}

# Exact top-level pins, taken from `pip freeze` of a working install, so CI is
# reproducible. awscli v1 pins botocore exactly; boto3 1.44.5 wants the same
# botocore 1.44.x and moto accepts it, so the three share one venv.
MOTO_REQUIREMENTS=(
    'moto[server]==5.2.5'
    'boto3==1.44.5'
    'botocore==1.44.5'
    'awscli==1.46.3'
    'pre-commit==4.7.0'
)
# localstack-core 2026.x needs Python >= 3.12. cbor2 is held below 6 for this
# localstack release; service-identity is what twisted (LocalStack's gateway)
# uses for TLS hostname verification and warns about when it is missing.
LS_REQUIREMENTS=(
    'localstack-core[runtime]==2026.3.0'
    'cbor2==5.9.0'
    'service-identity==26.1.0'
)

log() { printf '[emulators] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

now_ms() { date +%s%3N; }

# Print the elapsed time since $1 (a now_ms value) as seconds with 1 decimal.
elapsed() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# Serialise install/start/stop: two concurrent test runs sharing one emulator
# dir would otherwise trample each other's venvs and pid files.
take_lock() {
    mkdir -p "$EMU_DIR"
    exec 9>"$EMU_DIR/.lock"
    if ! flock -w 600 9; then
        die "could not lock $EMU_DIR/.lock within 600s"
    fi
}

# --- interpreters -----------------------------------------------------------

# python_minor PY -> prints "3.N" for the interpreter, or nothing if unusable.
python_minor() {
    "$1" -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

# Highest patch release of pyenv's 3.MINOR, if present.
pyenv_python() {
    local minor=$1 candidate
    # sort -V so that e.g. 3.11.10 beats 3.11.9; the glob may match nothing.
    candidate=$(printf '%s\n' "$PYENV_VERSIONS_DIR"/3."$minor".*/bin/python |
        grep -E "/3\\.$minor\\.[0-9]+/bin/python\$" | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate ]]; then
        printf '%s\n' "$candidate"
    fi
}

# The moto venv wants 3.11 (the machine's default and what moto is exercised
# with); any 3.11+ python3 on PATH is accepted as a fallback.
find_moto_python() {
    local py minor
    if [[ -n ${KMSEAL_MOTO_PYTHON:-} ]]; then
        printf '%s\n' "$KMSEAL_MOTO_PYTHON"
        return
    fi
    py=$(pyenv_python 11)
    if [[ -n $py && -n $(python_minor "$py") ]]; then
        printf '%s\n' "$py"
        return
    fi
    if py=$(command -v python3); then
        minor=$(python_minor "$py")
        if [[ -n $minor ]] && ((${minor#3.} >= 11)); then
            printf '%s\n' "$py"
            return
        fi
    fi
    die "no Python 3.11+ found for moto (looked in $PYENV_VERSIONS_DIR/3.11.* and python3 on PATH); set KMSEAL_MOTO_PYTHON"
}

# LocalStack 2026.x needs >= 3.12; prefer 3.13 (tested), then 3.12.
find_localstack_python() {
    local py minor
    if [[ -n ${KMSEAL_LOCALSTACK_PYTHON:-} ]]; then
        printf '%s\n' "$KMSEAL_LOCALSTACK_PYTHON"
        return
    fi
    for minor in 13 12; do
        py=$(pyenv_python "$minor")
        if [[ -n $py && -n $(python_minor "$py") ]]; then
            printf '%s\n' "$py"
            return
        fi
    done
    die "LocalStack needs Python >= 3.12, but none was found under $PYENV_VERSIONS_DIR (looked for 3.13.*, 3.12.*); install one with pyenv or set KMSEAL_LOCALSTACK_PYTHON"
}

# --- install ----------------------------------------------------------------

# The stamp records the interpreter and the exact requirement set; a venv whose
# stamp differs (new pins, other interpreter) or whose python no longer runs is
# rebuilt from scratch.
stamp_text() {
    local py=$1
    shift
    printf 'python=%s\n' "$("$py" -c 'import sys; print(sys.version.split()[0])')"
    printf '%s\n' "$@"
}

venv_is_current() {
    local venv=$1 wanted=$2
    [[ -x $venv/bin/python && -f $venv/.kmseal-stamp ]] &&
        "$venv/bin/python" -c 'pass' 2>/dev/null &&
        [[ $(<"$venv/.kmseal-stamp") == "$wanted" ]]
}

# ensure_venv NAME VENV PYTHON SANITY_CMD REQUIREMENT...
ensure_venv() {
    local name=$1 venv=$2 py=$3 sanity=$4
    shift 4
    local wanted t0
    wanted=$(stamp_text "$py" "$@")
    if venv_is_current "$venv" "$wanted"; then
        log "$name venv up to date ($venv)"
        return
    fi
    t0=$(now_ms)
    log "installing $name venv with $py: $*"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    # -q keeps the log short; errors and the resolver's complaints still print.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "$@"
    # Fail here, not half-way through a test run, if the install is unusable.
    "$venv/bin/python" -c "$sanity"
    printf '%s\n' "$wanted" >"$venv/.kmseal-stamp"
    log "$name venv installed in $(elapsed "$t0")"
}

# install [moto]: both emulators, or only moto (enough for scripts/quickstart.sh).
cmd_install() {
    local only=${1:-}
    take_lock
    local moto_py ls_py
    moto_py=$(find_moto_python)
    ensure_venv moto "$MOTO_VENV" "$moto_py" \
        'import moto.server, boto3, awscli, pre_commit' "${MOTO_REQUIREMENTS[@]}"
    "$MOTO_VENV/bin/aws" --version >/dev/null
    [[ $only == moto ]] && return 0
    ls_py=$(find_localstack_python)
    ensure_venv localstack "$LS_VENV" "$ls_py" \
        'import localstack.runtime.main, cbor2, service_identity' "${LS_REQUIREMENTS[@]}"
}

# --- start / stop -----------------------------------------------------------

installed() {
    [[ -f $MOTO_VENV/.kmseal-stamp && -f $LS_VENV/.kmseal-stamp ]]
}

require_installed() {
    installed || die "the emulators are not installed; run: $0 install"
}

# is_ours PID PATTERN: the pid is alive and its command line mentions PATTERN
# (guards against killing an unrelated process that reused a stale pid).
is_ours() {
    local pid=$1 pattern=$2 cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmdline=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
    [[ $cmdline == *"$pattern"* ]]
}

alive() {
    local pid=$1 state
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# stop_one NAME PATTERN
stop_one() {
    local name=$1 pattern=$2 pidfile=$EMU_DIR/$1.pid pid i
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if is_ours "$pid" "$pattern"; then
        log "stopping $name (pid $pid)"
        # Each emulator runs in its own session (setsid), so its pid is also
        # its process-group id: signal the whole group to catch any children.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name did not exit within 10s of SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$pidfile"
}

stop_all() {
    # Remove the env file first so nothing picks up URLs of dead servers.
    rm -f "$ENV_FILE"
    stop_one moto "$MOTO_VENV/bin/"
    stop_one localstack "$LS_VENV/bin/"
}

cmd_stop() {
    take_lock
    stop_all
}

# Two distinct free ports on 127.0.0.1 (both sockets are held open together so
# the kernel cannot hand out the same port twice).
pick_ports() {
    "$MOTO_VENV/bin/python" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
'
}

# wait_ready NAME URL PID TIMEOUT LOG: poll with a signed boto3 KMS ListKeys.
# An unsigned probe is not enough: moto routes requests by the SigV4
# credential scope and answers an unsigned request as if it were S3.
wait_ready() {
    local name=$1 url=$2 pid=$3 timeout=$4 logfile=$5 rc=0
    env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$MOTO_VENV/bin/python" - "$url" "$pid" "$timeout" <<'PY' || rc=$?
import sys, time
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

kms = boto3.client(
    "kms", endpoint_url=url, region_name="us-east-1",
    aws_access_key_id="test", aws_secret_access_key="test",
    config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
)
# The deadline is checked between attempts, so one slow attempt (LocalStack
# loads its KMS provider lazily on the first call) may overrun it by up to
# read_timeout.
deadline = time.monotonic() + timeout
last = None
while True:
    if not alive():
        print(f"process {pid} exited before answering", file=sys.stderr)
        sys.exit(2)
    try:
        kms.list_keys(Limit=1)
        sys.exit(0)
    except (BotoCoreError, ClientError) as e:
        last = e
    if time.monotonic() >= deadline:
        print(f"no KMS answer within {timeout:g}s; last error: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
PY
    if ((rc != 0)); then
        log "$name at $url is not ready; last 40 lines of $logfile:"
        tail -n 40 "$logfile" >&2 || true
        return 1
    fi
}

# LocalStack's gateway serves HTTP and HTTPS on the same port, so it needs a
# certificate at start-up. Its own generator fails with pyOpenSSL 26, so hand
# it one via CUSTOM_SSL_CERT_PATH: a single PEM with the private key followed
# by the certificate (localstack/utils/crypto.py splits it on the BEGIN/END
# markers and writes <path>.key and <path>.crt beside it, so the directory
# must be writable).
make_localstack_cert() {
    local dir=$1 tmp
    mkdir -p "$dir"
    tmp=$(mktemp -d "$dir/gen.XXXXXX")
    openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 2 \
        -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>"$tmp/openssl.log" ||
        {
            cat "$tmp/openssl.log" >&2
            die "openssl could not create the LocalStack certificate"
        }
    rm -f "$dir"/server.pem*
    cat "$tmp/key.pem" "$tmp/cert.pem" >"$dir/server.pem"
    rm -rf "$tmp"
    printf '%s\n' "$dir/server.pem"
}

cmd_start() {
    if ! installed; then
        log "not installed yet: installing first"
        cmd_install
    fi
    take_lock
    require_installed
    stop_all # a restart must not leave the previous pair running

    local moto_port ls_port moto_log ls_log ls_fs ls_pem moto_pid ls_pid t0 ports
    ports=$(pick_ports)
    read -r moto_port ls_port <<<"$ports"
    [[ -n $moto_port && -n $ls_port ]] || die "could not pick free ports"

    moto_log=$EMU_DIR/moto.log
    ls_log=$EMU_DIR/localstack.log
    ls_fs=$EMU_DIR/localstack-fs
    # Fresh state every start: tests must not see keys from an earlier run.
    rm -rf "$ls_fs"
    mkdir -p "$ls_fs"
    ls_pem=$(make_localstack_cert "$EMU_DIR/localstack-cert")

    t0=$(now_ms)
    # setsid: own session and process group, detached from the caller's
    # terminal, so it outlives this script and `stop` can signal the group.
    # 9>&-: the servers must not inherit the lock fd, or they would hold the
    # lock for as long as they run.
    MOTO_ACCOUNT_ID=000000000000 \
        setsid "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port" \
        >"$moto_log" 2>&1 </dev/null 9>&- &
    moto_pid=$!
    printf '%s\n' "$moto_pid" >"$EMU_DIR/moto.pid"

    OVERRIDE_IN_DOCKER=0 \
        GATEWAY_LISTEN=127.0.0.1:$ls_port \
        SERVICES=kms,sts \
        EAGER_SERVICE_LOADING=0 \
        DNS_ADDRESS=0 \
        DISABLE_EVENTS=1 \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        FILESYSTEM_ROOT=$ls_fs \
        CUSTOM_SSL_CERT_PATH=$ls_pem \
        setsid "$LS_VENV/bin/python" -m localstack.runtime.main \
        >"$ls_log" 2>&1 </dev/null 9>&- &
    ls_pid=$!
    printf '%s\n' "$ls_pid" >"$EMU_DIR/localstack.pid"

    local moto_url=http://127.0.0.1:$moto_port ls_url=http://127.0.0.1:$ls_port
    # Both start concurrently; the waits overlap.
    if ! wait_ready moto "$moto_url" "$moto_pid" "$MOTO_READY_TIMEOUT" "$moto_log"; then
        stop_all
        die "moto did not become ready"
    fi
    log "moto ready at $moto_url after $(elapsed "$t0") (pid $moto_pid, log $moto_log)"
    if ! wait_ready localstack "$ls_url" "$ls_pid" "$LS_READY_TIMEOUT" "$ls_log"; then
        stop_all
        die "LocalStack did not become ready"
    fi
    log "LocalStack ready at $ls_url after $(elapsed "$t0") (pid $ls_pid, log $ls_log)"

    # Written last (atomically), so its presence means both are up.
    cat >"$ENV_FILE.tmp" <<EOF
export KMSEAL_TEST_MOTO_URL=$moto_url
export KMSEAL_TEST_LOCALSTACK_URL=$ls_url
export KMSEAL_TEST_PYTHON=$MOTO_VENV/bin/python
export KMSEAL_TEST_AWS_CLI=$MOTO_VENV/bin/aws
export KMSEAL_TEST_PRE_COMMIT=$MOTO_VENV/bin/pre-commit
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    log "wrote $ENV_FILE"
}

cmd_env() {
    [[ -f $ENV_FILE ]] || die "$ENV_FILE does not exist; run: $0 start"
    cat "$ENV_FILE"
}

usage() {
    printf 'usage: %s install [moto]|start|stop|env\n' "$0" >&2
    exit 2
}

main() {
    [[ $# -ge 1 ]] || usage
    case $1 in
    install) cmd_install "${2:-}" ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    *) usage ;;
    esac
}

main "$@"
