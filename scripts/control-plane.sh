#!/usr/bin/env bash
# Build, start and stop a real Kubernetes control plane for kmseal's tests, on
# loopback only: etcd, kube-apiserver and kube-controller-manager, all built
# from Go modules (no Docker, no kind, no release tarballs).
#
# Usage: scripts/control-plane.sh install|start|stop|env|restart-apiserver [SECONDS]|update-modules|vet
#
#   install            build the three binaries once per version into
#                      .tools/control-plane/<version>/ (idempotent: a no-op
#                      when they exist and report the expected versions)
#   start              (re)start etcd, kube-apiserver and kube-controller-manager
#                      on free 127.0.0.1 ports with fresh state and fresh certs
#                      (installing first if needed), wait until the API server's
#                      /readyz is ok and the controller manager has created the
#                      `default` ServiceAccount, then write the env file
#   stop               stop what `start` started (idempotent); keeps the logs
#   env                print the env file written by `start` (`export NAME=value`
#                      lines, for `eval`)
#   restart-apiserver [SECONDS]
#                      stop kube-apiserver only, wait SECONDS (default 0), start
#                      it again on the same port with the same flags and certs,
#                      and wait for /readyz; etcd (so all objects) and
#                      kube-controller-manager keep running
#   update-modules     regenerate tools/control-plane/go.mod (and etcd/go.mod)
#                      for $KMSEAL_K8S_VERSION / $KMSEAL_ETCD_VERSION (to bump)
#   vet                go vet the two build modules
#
# The Go modules under tools/control-plane/ pin what is built:
#   go.mod       k8s.io/kubernetes, with every staging module (k8s.io/api, ...)
#                replaced by its published v0.X.Y version: the ./staging/...
#                replaces of k8s.io/kubernetes do not apply to a module that
#                requires it, which is why `go install k8s.io/kubernetes/...@v`
#                cannot work.
#   etcd/go.mod  go.etcd.io/etcd/server/v3 (its own module, so that its build
#                list does not move the etcd client libraries kubernetes links).
# Builds reuse Go's module and build caches (GOMODCACHE/GOCACHE), so a fresh
# clone on the same machine only links.
#
# Environment:
#   KMSEAL_K8S_VERSION         Kubernetes version to build/run (default: the one
#                              tools/control-plane/go.mod requires). Another
#                              version is built from a module generated under
#                              .tools/control-plane/modules/ (needs the proxy).
#   KMSEAL_ETCD_VERSION        etcd version (default: tools/control-plane/etcd/go.mod)
#   KMSEAL_CONTROL_PLANE_DIR   state dir of a running control plane (default
#                              .tools/control-plane/run); use one per concurrent run
#   KMSEAL_CONTROL_PLANE_READY_TIMEOUT  seconds to wait for each component (90)
#   KMSEAL_GO                  the go command (default: go on PATH, else
#                              /usr/local/go/bin/go)
#
# Files in the state dir while it runs: admin.kubeconfig (certs embedded,
# user "kubernetes-admin" in group system:masters), audit.log (JSON lines, one
# audit event per line, written synchronously: for each request a
# "RequestReceived" event is written before the request is handled and a
# "ResponseComplete" one, with the status code, after it; watches also get a
# "ResponseStarted"), pki/, etcd-data/, and one <component>.log per process.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_PATH=$REPO_ROOT/scripts/control-plane.sh
MODULE_DIR=$REPO_ROOT/tools/control-plane
ETCD_MODULE_DIR=$MODULE_DIR/etcd
TOOLS_DIR=$REPO_ROOT/.tools/control-plane
RUN_DIR=${KMSEAL_CONTROL_PLANE_DIR:-$TOOLS_DIR/run}
[[ $RUN_DIR == /* ]] || RUN_DIR=$PWD/$RUN_DIR

READY_TIMEOUT=${KMSEAL_CONTROL_PLANE_READY_TIMEOUT:-90}

# Fixed cluster settings (the service IP range is only used for the
# `kubernetes` Service's ClusterIP; nothing routes to it).
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
SA_ISSUER=https://kubernetes.default.svc.cluster.local
ADMIN_USER=kubernetes-admin
KCM_USER=system:kube-controller-manager
# Controllers the tests rely on: ServiceAccounts and their tokens in every
# namespace, kube-root-ca.crt ConfigMaps, garbage collection of owned objects,
# namespace deletion, and the aggregated admin/edit/view ClusterRoles.
KCM_CONTROLLERS=serviceaccount-token-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,garbage-collector-controller,namespace-controller,clusterrole-aggregation-controller

log() { printf '[control-plane] %s\n' "$*" >&2; }
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

# --- versions ---------------------------------------------------------------

# module_version GO_MOD MODULE: the version GO_MOD requires of MODULE (either
# `require MODULE vX` or a line of a require block).
module_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v[0-9]/ { print $2; exit }
    ' "$1"
}

DEFAULT_K8S_VERSION=$(module_version "$MODULE_DIR/go.mod" k8s.io/kubernetes)
DEFAULT_ETCD_VERSION=$(module_version "$ETCD_MODULE_DIR/go.mod" go.etcd.io/etcd/server/v3)
K8S_VERSION=${KMSEAL_K8S_VERSION:-$DEFAULT_K8S_VERSION}
ETCD_VERSION=${KMSEAL_ETCD_VERSION:-$DEFAULT_ETCD_VERSION}
[[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] ||
    die "KMSEAL_K8S_VERSION must look like v1.37.2, not '$K8S_VERSION'"
K8S_MINOR=${BASH_REMATCH[1]}
# The staging modules (k8s.io/api, ...) are tagged v0.MINOR.PATCH alongside v1.MINOR.PATCH.
STAGING_VERSION=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}
[[ $ETCD_VERSION =~ ^v3\.[0-9]+\.[0-9]+$ ]] ||
    die "KMSEAL_ETCD_VERSION must look like v3.7.3, not '$ETCD_VERSION'"

CERT_MANAGER_VERSION=${KMSEAL_CERT_MANAGER_VERSION:-v1.21.2}

BIN_DIR=$TOOLS_DIR/$K8S_VERSION
ETCD_BIN=$BIN_DIR/etcd
APISERVER_BIN=$BIN_DIR/kube-apiserver
KCM_BIN=$BIN_DIR/kube-controller-manager

PKI_DIR=$RUN_DIR/pki
ETCD_DATA=$RUN_DIR/etcd-data
ENV_FILE=$RUN_DIR/env
STATE_FILE=$RUN_DIR/state
AUDIT_LOG=$RUN_DIR/audit.log
AUDIT_POLICY=$RUN_DIR/audit-policy.yaml
ADMIN_KUBECONFIG=$RUN_DIR/admin.kubeconfig
KCM_KUBECONFIG=$RUN_DIR/kube-controller-manager.kubeconfig

# --- locks ------------------------------------------------------------------

# Serialise builds (fd 8, per tools dir) and start/stop (fd 9, per state dir):
# two concurrent test runs would otherwise trample each other's binaries or
# pid files. Started processes get both fds closed (8>&- 9>&-), or they would
# hold the locks for as long as they run.
take_install_lock() {
    mkdir -p "$TOOLS_DIR"
    exec 8>"$TOOLS_DIR/.install.lock"
    flock -w 3600 8 || die "could not lock $TOOLS_DIR/.install.lock within 3600s"
}

release_install_lock() { exec 8>&-; }

take_lock() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock -w 600 9 || die "could not lock $RUN_DIR/.lock within 600s"
}

# --- go ---------------------------------------------------------------------

GO=
find_go() {
    [[ -z $GO ]] || return 0
    if [[ -n ${KMSEAL_GO:-} ]]; then
        GO=$KMSEAL_GO
    elif command -v go >/dev/null 2>&1; then
        GO=$(command -v go)
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        die "no go command found (PATH, /usr/local/go/bin/go); set KMSEAL_GO"
    fi
}

# Run go with a predictable environment: no workspace, no stray GOFLAGS, and
# static binaries. GOMODCACHE/GOCACHE stay at their defaults (shared).
run_go() {
    GOWORK=off GOFLAGS='' CGO_ENABLED=0 "$GO" "$@"
}

# --- modules ----------------------------------------------------------------

# cert_manager_crds: the directory of cert-manager's CRDs (deploy/crds of its Go
# module, from the module proxy), which the chart's cert-manager objects are
# checked against. Only its CRDs: cert-manager's binaries are separate modules
# (cmd/controller, cmd/cainjector) that the module proxy does not serve here.
cert_manager_crds() {
    local dir
    find_go
    dir=$(cd "${TMPDIR:-/tmp}" && run_go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [[ -n $dir && -d $dir/deploy/crds ]] ||
        die "could not download the CRDs of cert-manager $CERT_MANAGER_VERSION"
    printf '%s\n' "$dir/deploy/crds"
}

# go_mod_path MODULE@VERSION: the go.mod of a module version, from the module
# cache (downloading it through the proxy if needed).
go_mod_path() {
    local gomod
    gomod=$(cd "${TMPDIR:-/tmp}" && run_go mod download -json "$1" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -n $gomod && -f $gomod ]] || die "could not download the go.mod of $1"
    printf '%s\n' "$gomod"
}

# write_k8s_module DIR: a go.mod requiring k8s.io/kubernetes $K8S_VERSION with
# each of its ./staging/ replaces turned into the published $STAGING_VERSION,
# then `go mod tidy` (which writes go.sum).
write_k8s_module() {
    local dir=$1 upstream go_line godebug_line replaces
    upstream=$(go_mod_path "k8s.io/kubernetes@$K8S_VERSION")
    go_line=$(grep -m1 -E '^go [0-9]' "$upstream")
    godebug_line=$(grep -m1 -E '^godebug ' "$upstream" || true)
    replaces=$(sed -n "s#^[[:space:]]*\\(k8s.io/[A-Za-z0-9._-]*\\) => \\./staging/.*#\\t\\1 => \\1 $STAGING_VERSION#p" "$upstream")
    [[ -n $replaces ]] || die "no ./staging replaces found in $upstream"
    mkdir -p "$dir"
    {
        printf '%s\n' \
            '// Builds kube-apiserver and kube-controller-manager for kmseal'"'"'s tests' \
            '// (scripts/control-plane.sh). k8s.io/kubernetes replaces its staging modules' \
            '// with ./staging/... paths, which do not apply to a module that requires it,' \
            '// so every staging module is replaced here by its published version.' \
            '// Regenerate with: KMSEAL_K8S_VERSION=vX.Y.Z scripts/control-plane.sh update-modules' \
            'module github.com/kmseal/kmseal/tools/control-plane' \
            '' "$go_line" ''
        [[ -z $godebug_line ]] || printf '%s\n\n' "$godebug_line"
        printf '%s\n' 'tool (' \
            '	k8s.io/kubernetes/cmd/kube-apiserver' \
            '	k8s.io/kubernetes/cmd/kube-controller-manager' \
            ')' '' "require k8s.io/kubernetes $K8S_VERSION" '' 'replace ('
        printf '%s\n' "$replaces"
        printf ')\n'
    } >"$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && run_go mod tidy)
}

# write_etcd_module DIR: a go.mod whose tool is etcd's main package
# (go.etcd.io/etcd/server/v3) at $ETCD_VERSION, then `go mod tidy`.
write_etcd_module() {
    local dir=$1 upstream go_line
    upstream=$(go_mod_path "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    go_line=$(grep -m1 -E '^go [0-9]' "$upstream")
    mkdir -p "$dir"
    {
        printf '%s\n' \
            '// Builds etcd for kmseal'"'"'s tests (scripts/control-plane.sh). A module of its' \
            '// own: k8s.io/kubernetes pins the etcd libraries it links to, and sharing a' \
            '// build list would move them.' \
            '// Regenerate with: KMSEAL_ETCD_VERSION=vX.Y.Z scripts/control-plane.sh update-modules' \
            'module github.com/kmseal/kmseal/tools/control-plane/etcd' \
            '' "$go_line" '' 'tool go.etcd.io/etcd/server/v3' '' \
            "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    } >"$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && run_go mod tidy)
}

# The modules to build from: the checked-in ones for the default versions,
# otherwise ones generated under .tools/control-plane/modules/.
K8S_MOD=
ETCD_MOD=
resolve_modules() {
    if [[ $K8S_VERSION == "$DEFAULT_K8S_VERSION" ]]; then
        K8S_MOD=$MODULE_DIR
    else
        K8S_MOD=$TOOLS_DIR/modules/kubernetes-$K8S_VERSION
        if [[ ! -f $K8S_MOD/go.sum ]]; then
            log "generating a module for k8s.io/kubernetes $K8S_VERSION in $K8S_MOD"
            write_k8s_module "$K8S_MOD"
        fi
    fi
    if [[ $ETCD_VERSION == "$DEFAULT_ETCD_VERSION" ]]; then
        ETCD_MOD=$ETCD_MODULE_DIR
    else
        ETCD_MOD=$TOOLS_DIR/modules/etcd-$ETCD_VERSION
        if [[ ! -f $ETCD_MOD/go.sum ]]; then
            log "generating a module for etcd $ETCD_VERSION in $ETCD_MOD"
            write_etcd_module "$ETCD_MOD"
        fi
    fi
}

cmd_update_modules() {
    find_go
    take_install_lock
    log "regenerating $MODULE_DIR/go.mod for k8s.io/kubernetes $K8S_VERSION (staging $STAGING_VERSION)"
    write_k8s_module "$MODULE_DIR"
    log "regenerating $ETCD_MODULE_DIR/go.mod for etcd $ETCD_VERSION"
    write_etcd_module "$ETCD_MODULE_DIR"
    (cd "$MODULE_DIR" && run_go vet ./...)
    (cd "$ETCD_MODULE_DIR" && run_go vet ./...)
}

# --- install ----------------------------------------------------------------

# What the binaries in $BIN_DIR were built from; a different stamp rebuilds.
stamp_text() {
    printf 'kubernetes=%s\netcd=%s\n' "$K8S_VERSION" "$ETCD_VERSION"
    if [[ $K8S_VERSION == "$DEFAULT_K8S_VERSION" ]]; then
        (cd "$MODULE_DIR" && sha256sum go.mod go.sum)
    fi
    if [[ $ETCD_VERSION == "$DEFAULT_ETCD_VERSION" ]]; then
        (cd "$ETCD_MODULE_DIR" && sha256sum go.mod go.sum | sed 's#  #  etcd/#')
    fi
}

# check_versions DIR: the binaries in DIR run and report the wanted versions.
check_versions() {
    local dir=$1 out
    out=$("$dir/kube-apiserver" --version 2>&1) || return 1
    [[ $out == "Kubernetes $K8S_VERSION" ]] || { log "kube-apiserver --version: $out" && return 1; }
    out=$("$dir/kube-controller-manager" --version 2>&1) || return 1
    [[ $out == "Kubernetes $K8S_VERSION" ]] || { log "kube-controller-manager --version: $out" && return 1; }
    out=$("$dir/etcd" --version 2>&1) || return 1
    [[ $out == *"etcd Version: ${ETCD_VERSION#v}"* ]] || { log "etcd --version: $out" && return 1; }
}

installed() {
    [[ -x $ETCD_BIN && -x $APISERVER_BIN && -x $KCM_BIN && -f $BIN_DIR/.stamp ]] &&
        [[ $(<"$BIN_DIR/.stamp") == "$(stamp_text)" ]] &&
        check_versions "$BIN_DIR"
}

# -X values for k8s.io/component-base/version (what the servers report) and
# k8s.io/client-go/pkg/version, as hack/lib/version.sh sets them. Without
# them the servers say v0.0.0. The build date is the release's time in the
# proxy, so that builds are reproducible.
k8s_ldflags() {
    local build_date pkg flags='-s -w'
    build_date=$(cd "$K8S_MOD" && run_go list -m -json k8s.io/kubernetes |
        sed -n 's/^[[:space:]]*"Time": "\(.*\)",\{0,1\}$/\1/p')
    [[ -n $build_date ]] || build_date=1970-01-01T00:00:00Z
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    printf '%s\n' "$flags"
}

build_all() {
    local out=$1 ldflags t0
    # nice: the build is long and CPU-bound; let interactive work and other
    # builds on the machine go first.
    t0=$(now_ms)
    log "building etcd $ETCD_VERSION"
    (cd "$ETCD_MOD" && nice -n 10 env GOWORK=off GOFLAGS= CGO_ENABLED=0 "$GO" build \
        -mod=readonly -trimpath -buildvcs=false -ldflags '-s -w' \
        -o "$out/etcd" go.etcd.io/etcd/server/v3) </dev/null || return
    log "etcd built in $(elapsed "$t0")"
    ldflags=$(k8s_ldflags) || return
    t0=$(now_ms)
    log "building kube-apiserver and kube-controller-manager $K8S_VERSION (the first build takes long)"
    (cd "$K8S_MOD" && nice -n 10 env GOWORK=off GOFLAGS= CGO_ENABLED=0 "$GO" build \
        -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" \
        -o "$out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager) </dev/null || return
    log "kube-apiserver and kube-controller-manager built in $(elapsed "$t0")"
}

cmd_install() {
    take_install_lock
    if installed; then
        log "$K8S_VERSION (etcd $ETCD_VERSION) is installed in $BIN_DIR"
        release_install_lock
        return 0
    fi
    find_go
    local t0 tmp name
    t0=$(now_ms)
    log "installing Kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $BIN_DIR with $("$GO" version)"
    resolve_modules
    mkdir -p "$BIN_DIR"
    tmp=$(mktemp -d "$BIN_DIR/.build.XXXXXX")
    if ! build_all "$tmp" || ! check_versions "$tmp"; then
        rm -rf "$tmp"
        die "building the control plane failed"
    fi
    rm -f "$BIN_DIR/.stamp"
    for name in etcd kube-apiserver kube-controller-manager; do
        mv -f "$tmp/$name" "$BIN_DIR/$name"
    done
    rm -rf "$tmp"
    stamp_text >"$BIN_DIR/.stamp"
    log "installed in $(elapsed "$t0"): $(du -sh "$BIN_DIR" | cut -f1) in $BIN_DIR"
    release_install_lock
}

# --- processes --------------------------------------------------------------

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

# stop_one NAME: stop the process recorded in $RUN_DIR/NAME.pid, if it is
# still the one we started (its command line names our state dir).
stop_one() {
    local name=$1 pidfile=$RUN_DIR/$1.pid pid i
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if is_ours "$pid" "$RUN_DIR/"; then
        log "stopping $name (pid $pid)"
        # Each process runs in its own session (setsid), so its pid is also
        # its process-group id.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name did not exit within 15s of SIGTERM; sending SIGKILL"
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
    # Remove the env file first so nothing picks up a dead server.
    rm -f "$ENV_FILE"
    stop_one kube-controller-manager
    stop_one kube-apiserver
    stop_one etcd
}

# Everything `start` creates except the logs (kept for post-mortems until the
# next start).
remove_state() {
    rm -rf "$PKI_DIR" "$ETCD_DATA" "$STATE_FILE" "$AUDIT_POLICY" \
        "$ADMIN_KUBECONFIG" "$KCM_KUBECONFIG"
}

cmd_stop() {
    take_lock
    stop_all
    remove_state
}

# launch NAME ARG...: run ARG... detached (own session, no stdin, no lock fds)
# with output appended to $RUN_DIR/NAME.log, and record its pid.
launch() {
    local name=$1
    shift
    printf '==== %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$RUN_DIR/$name.log"
    setsid "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null 8>&- 9>&- &
    printf '%s\n' "$!" >"$RUN_DIR/$name.pid"
}

pid_of() { cat "$RUN_DIR/$1.pid"; }

show_log_tail() {
    log "last 40 lines of $RUN_DIR/$1.log:"
    tail -n 40 "$RUN_DIR/$1.log" >&2 || true
}

# --- ports ------------------------------------------------------------------

# port_in_use PORT: some TCP socket (any state, IPv4 or IPv6) has this local port.
port_in_use() {
    local hex
    printf -v hex '%04X' "$1"
    grep -qsE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6
}

# pick_ports N: N distinct ports below the ephemeral range that no socket uses.
# There is a window between picking and binding; a start that loses it is
# retried with new ports.
pick_ports() {
    local n=$1 port ports=() tries=0
    while ((${#ports[@]} < n)); do
        ((++tries < 1000)) || die "could not find $n free ports"
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        port_in_use "$port" && continue
        [[ " ${ports[*]} " == *" $port "* ]] && continue
        ports+=("$port")
    done
    printf '%s\n' "${ports[*]}"
}

# --- certificates -----------------------------------------------------------

# EC P-256 keys in PKCS#8 PEM ("BEGIN PRIVATE KEY"), which rustls/ring, Go and
# OpenSSL all load.
gen_ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign_cert NAME SUBJECT EXTENSIONS...: $PKI_DIR/NAME.{key,crt}, signed by the CA.
sign_cert() {
    local name=$1 subject=$2
    shift 2
    gen_ec_key "$PKI_DIR/$name.key"
    printf '%s\n' '[v3]' 'basicConstraints = critical, CA:FALSE' \
        'keyUsage = critical, digitalSignature' \
        'subjectKeyIdentifier = hash' 'authorityKeyIdentifier = keyid' "$@" >"$PKI_DIR/$name.ext"
    openssl req -new -config "$PKI_DIR/req.cnf" -key "$PKI_DIR/$name.key" -subj "$subject" \
        -out "$PKI_DIR/$name.csr"
    openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
        -set_serial "0x$(openssl rand -hex 15)" -days 365 -sha256 \
        -extfile "$PKI_DIR/$name.ext" -extensions v3 -out "$PKI_DIR/$name.crt" 2>/dev/null
    rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

make_pki() {
    rm -rf "$PKI_DIR"
    mkdir -p "$PKI_DIR"
    chmod 700 "$PKI_DIR"
    printf '%s\n' '[req]' 'distinguished_name = dn' 'prompt = no' '[dn]' \
        '[v3]' 'basicConstraints = critical, CA:TRUE' \
        'keyUsage = critical, keyCertSign, cRLSign, digitalSignature' \
        'subjectKeyIdentifier = hash' >"$PKI_DIR/req.cnf"
    gen_ec_key "$PKI_DIR/ca.key"
    openssl req -x509 -new -config "$PKI_DIR/req.cnf" -extensions v3 -key "$PKI_DIR/ca.key" \
        -subj /CN=kmseal-test-ca -days 365 -sha256 -set_serial "0x$(openssl rand -hex 15)" \
        -out "$PKI_DIR/ca.crt"
    sign_cert apiserver /CN=kube-apiserver 'extendedKeyUsage = serverAuth' \
        "subjectAltName = IP:127.0.0.1, DNS:localhost, IP:$SERVICE_IP, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
    sign_cert admin "/O=system:masters/CN=$ADMIN_USER" 'extendedKeyUsage = clientAuth'
    sign_cert kube-controller-manager "/CN=$KCM_USER" 'extendedKeyUsage = clientAuth'
    # The ServiceAccount token signing key: RSA 2048 (RS256 tokens, what AWS
    # STS and every OIDC verifier accept).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/sa.key" 2>/dev/null
    openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub"
    rm -f "$PKI_DIR/req.cnf"
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE USER CERT_NAME: a kubeconfig with everything embedded.
write_kubeconfig() {
    local file=$1 user=$2 name=$3
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kmseal-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI_DIR/$name.crt")
    client-key-data: $(b64 "$PKI_DIR/$name.key")
contexts:
- name: kmseal-test
  context:
    cluster: kmseal-test
    user: $user
current-context: kmseal-test
EOF
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
}

write_audit_policy() {
    cat >"$AUDIT_POLICY" <<'EOF'
# Every request, at Metadata level (who, what, when, status; no bodies).
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF
}

# --- component flags --------------------------------------------------------

ETCD_CLIENT_PORT=
ETCD_PEER_PORT=
APISERVER_PORT=

save_state() {
    printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' \
        "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" >"$STATE_FILE"
}

load_state() {
    [[ -f $STATE_FILE ]] || die "$STATE_FILE does not exist; run: $0 start"
    local key value
    while IFS='=' read -r key value; do
        case $key in
        ETCD_CLIENT_PORT) ETCD_CLIENT_PORT=$value ;;
        ETCD_PEER_PORT) ETCD_PEER_PORT=$value ;;
        APISERVER_PORT) APISERVER_PORT=$value ;;
        esac
    done <"$STATE_FILE"
    [[ -n $APISERVER_PORT && -n $ETCD_CLIENT_PORT ]] || die "$STATE_FILE is incomplete"
}

etcd_args() {
    local client=http://127.0.0.1:$ETCD_CLIENT_PORT peer=http://127.0.0.1:$ETCD_PEER_PORT
    ETCD_ARGS=(
        --name=kmseal-test
        --data-dir="$ETCD_DATA"
        --listen-client-urls="$client"
        --advertise-client-urls="$client"
        --listen-peer-urls="$peer"
        --initial-advertise-peer-urls="$peer"
        --initial-cluster="kmseal-test=$peer"
        --initial-cluster-state=new
        --unsafe-no-fsync
        --log-level=warn
    )
}

apiserver_args() {
    APISERVER_ARGS=(
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT"
        --bind-address=127.0.0.1
        --advertise-address=127.0.0.1
        --secure-port="$APISERVER_PORT"
        --tls-cert-file="$PKI_DIR/apiserver.crt"
        --tls-private-key-file="$PKI_DIR/apiserver.key"
        --client-ca-file="$PKI_DIR/ca.crt"
        --authorization-mode=RBAC
        --service-cluster-ip-range="$SERVICE_CIDR"
        --service-account-issuer="$SA_ISSUER"
        --service-account-key-file="$PKI_DIR/sa.pub"
        --service-account-signing-key-file="$PKI_DIR/sa.key"
        --allow-privileged=true
        # The `kubernetes` Service's Endpoints would name 127.0.0.1, which
        # Endpoints validation rejects; nothing here routes to it anyway.
        --endpoint-reconciler-type=none
        # On SIGTERM, drain the in-flight requests (new ones get 429 +
        # Retry-After), then close the server within 2s. Without it the
        # shutdown waits up to --request-timeout (60s) for open watches.
        --shutdown-send-retry-after=true
        --audit-policy-file="$AUDIT_POLICY"
        --audit-log-path="$AUDIT_LOG"
        --audit-log-format=json
        --audit-log-mode=blocking
        # 0: one plain append-only file, never rotated (the default rotates
        # at 100 MB).
        --audit-log-maxsize=0
    )
}

kcm_args() {
    KCM_ARGS=(
        --kubeconfig="$KCM_KUBECONFIG"
        --controllers="$KCM_CONTROLLERS"
        --service-account-private-key-file="$PKI_DIR/sa.key"
        --root-ca-file="$PKI_DIR/ca.crt"
        --use-service-account-credentials=true
        --leader-elect=false
        --secure-port=0
    )
}

# --- readiness --------------------------------------------------------------

# wait_for NAME TIMEOUT CHECK...: poll CHECK until it succeeds, or fail (with
# the tail of NAME's log) when NAME's process exits or TIMEOUT seconds pass.
# Returns 75 when the process died because its port was taken.
wait_for() {
    local name=$1 timeout=$2 pid deadline
    shift 2
    pid=$(pid_of "$name")
    deadline=$(($(now_ms) + timeout * 1000))
    while ! "$@"; do
        if ! alive "$pid"; then
            if grep -qs 'address already in use' "$RUN_DIR/$name.log"; then
                log "$name lost its port to another process"
                return 75
            fi
            log "$name (pid $pid) exited before it was ready"
            show_log_tail "$name"
            return 1
        fi
        if (($(now_ms) >= deadline)); then
            log "$name was not ready within ${timeout}s"
            show_log_tail "$name"
            return 1
        fi
        sleep 0.2
    done
}

etcd_healthy() {
    curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null |
        grep -q '"health":"true"'
}

# api_get PATH: GET PATH from the API server as the admin, verifying its cert.
api_get() {
    curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" \
        --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}

apiserver_ready() { [[ $(api_get /readyz) == ok ]]; }

# The serviceaccount controller of kube-controller-manager is working.
kcm_ready() { api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null; }

start_apiserver() {
    apiserver_args
    launch kube-apiserver "$APISERVER_BIN" "${APISERVER_ARGS[@]}"
    wait_for kube-apiserver "$READY_TIMEOUT" apiserver_ready
}

# One attempt at bringing the whole control plane up; 75 = port clash, retry.
# (Called in an || list, so `set -e` does not apply: every step checks.)
start_once() {
    local ports rc=0
    ports=$(pick_ports 3) || return
    read -r ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT <<<"$ports"
    [[ -n $APISERVER_PORT ]] || return
    save_state || return

    rm -rf "$ETCD_DATA" && mkdir -p "$ETCD_DATA" && chmod 700 "$ETCD_DATA" || return
    etcd_args
    launch etcd "$ETCD_BIN" "${ETCD_ARGS[@]}"
    wait_for etcd "$READY_TIMEOUT" etcd_healthy || return
    log "etcd ready on 127.0.0.1:$ETCD_CLIENT_PORT after $(elapsed "$T0")"

    start_apiserver || return
    log "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT after $(elapsed "$T0")"

    write_kubeconfig "$ADMIN_KUBECONFIG" "$ADMIN_USER" admin || return
    write_kubeconfig "$KCM_KUBECONFIG" "$KCM_USER" kube-controller-manager || return
    kcm_args
    launch kube-controller-manager "$KCM_BIN" "${KCM_ARGS[@]}"
    wait_for kube-controller-manager "$READY_TIMEOUT" kcm_ready || rc=$?
    return "$rc"
}

write_env_file() {
    # Written last (atomically), so its presence means everything is up.
    {
        printf 'export %s=%q\n' \
            KUBECONFIG "$ADMIN_KUBECONFIG" \
            KMSEAL_CONTROL_PLANE_KUBECONFIG "$ADMIN_KUBECONFIG" \
            KMSEAL_CONTROL_PLANE_SERVER "https://127.0.0.1:$APISERVER_PORT" \
            KMSEAL_CONTROL_PLANE_AUDIT_LOG "$AUDIT_LOG" \
            KMSEAL_CONTROL_PLANE_DIR "$RUN_DIR" \
            KMSEAL_CONTROL_PLANE_SCRIPT "$SCRIPT_PATH" \
            KMSEAL_CONTROL_PLANE_VERSION "$K8S_VERSION" \
            KMSEAL_CONTROL_PLANE_ADMIN_USER "$ADMIN_USER" \
            KMSEAL_CONTROL_PLANE_SA_ISSUER "$SA_ISSUER" \
            KMSEAL_CONTROL_PLANE_CA_FILE "$PKI_DIR/ca.crt" \
            KMSEAL_CONTROL_PLANE_ETCD_URL "http://127.0.0.1:$ETCD_CLIENT_PORT" \
            KMSEAL_CONTROL_PLANE_CERT_MANAGER_CRDS "$CERT_MANAGER_CRDS"
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

cmd_start() {
    command -v openssl >/dev/null || die "openssl is needed to make the certificates"
    command -v curl >/dev/null || die "curl is needed to probe the servers"
    cmd_install
    CERT_MANAGER_CRDS=$(cert_manager_crds)
    take_lock
    stop_all # a restart must not leave the previous control plane running
    remove_state
    rm -f "$RUN_DIR"/*.log "$AUDIT_LOG"

    T0=$(now_ms)
    make_pki
    write_audit_policy
    local attempt rc
    for attempt in 1 2 3; do
        rc=0
        start_once || rc=$?
        ((rc == 0)) && break
        stop_all
        if ((rc != 75 || attempt == 3)); then
            remove_state
            die "the control plane did not start (logs in $RUN_DIR)"
        fi
        log "retrying with other ports"
        rm -f "$RUN_DIR"/*.log "$AUDIT_LOG"
    done
    write_env_file
    log "control plane $K8S_VERSION ready after $(elapsed "$T0"); KUBECONFIG=$ADMIN_KUBECONFIG"
}

cmd_restart_apiserver() {
    local down=${1:-0}
    [[ $down =~ ^[0-9]+([.][0-9]+)?$ ]] || die "restart-apiserver: SECONDS must be a number, not '$down'"
    take_lock
    [[ -x $APISERVER_BIN ]] || die "$APISERVER_BIN does not exist; run: $0 start"
    load_state
    [[ -f $ENV_FILE ]] || die "the control plane is not running; run: $0 start"
    T0=$(now_ms)
    stop_one kube-apiserver
    sleep "$down"
    local rc=0
    start_apiserver || rc=$?
    ((rc == 0)) || die "kube-apiserver did not come back on port $APISERVER_PORT (log $RUN_DIR/kube-apiserver.log)"
    log "kube-apiserver restarted and ready after $(elapsed "$T0")"
}

# go vet of the build modules (they hold no code, but their go.mod/go.sum must
# stay consistent: vet loads the module graph).
cmd_vet() {
    find_go
    (cd "$MODULE_DIR" && run_go vet ./...)
    (cd "$ETCD_MODULE_DIR" && run_go vet ./...)
    log "go vet: clean"
}

cmd_env() {
    [[ -f $ENV_FILE ]] || die "$ENV_FILE does not exist; run: $0 start"
    cat "$ENV_FILE"
}

usage() {
    printf 'usage: %s install|start|stop|env|restart-apiserver [SECONDS]|update-modules|vet\n' "$0" >&2
    exit 2
}

main() {
    [[ $# -ge 1 ]] || usage
    case $1 in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    restart-apiserver) cmd_restart_apiserver "${2:-0}" ;;
    update-modules) cmd_update_modules ;;
    vet) cmd_vet ;;
    *) usage ;;
    esac
}

main "$@"
