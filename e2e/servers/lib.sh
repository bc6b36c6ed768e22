#!/usr/bin/env bash
# Shared code for start.sh, stop.sh and ctl.sh. Source it; don't run it.
#
# Every server listens on 127.0.0.1 only, keeps its data in
# ${SLUICE_RUN_DIR}/<name>/ and its PID in ${SLUICE_RUN_DIR}/<name>.pid.
# Servers are stopped by that PID, never by process name.
#
# Environment (all optional):
#   SLUICE_CACHE         where install.sh put things (default $HOME/.cache/sluice)
#   SLUICE_RUN_DIR       data, logs, PID files (default /tmp/sluice-servers)
#   SLUICE_S3_PORT       (19000)  SeaweedFS S3 API; SeaweedFS's internal
#                        ports follow it: +1 (s3 grpc), +2/+3 (master),
#                        +4/+5 (volume), +6/+7 (filer), +8 and +8+10000
#                        (admin; its plugin worker dials admin.port+10000
#                        whatever -admin.port.grpc says). Another SLUICE_S3_PORT
#                        (and SLUICE_RUN_DIR) runs a second, independent set.
#   SLUICE_KAFKA_PORT    (19092)  tansu Kafka broker
#   SLUICE_PROM_PORT     (19090)  Prometheus
#   SLUICE_PG_PORT       (15432)  PostgreSQL (plain and TLS: ssl = on)
#   SLUICE_KAFKA_TLS_PORT (19093) Kafka over TLS: stunnel (server `tlsproxy`)
#                        terminating TLS in front of a second tansu broker
#                        (server `kafkatls`, on port +1, advertising this
#                        port), since tansu 0.6 has no working TLS listener.
#   TLS material: a throwaway CA and a server certificate for 127.0.0.1 and
#   localhost, made by openssl in ${SLUICE_RUN_DIR}/tls on first start; and a
#   second, unrelated CA (wrong-ca.crt) for refusal tests.
#   SLUICE_KAFKA_STORAGE memory (default: topics are lost when tansu stops)
#                        or s3 (topics kept in bucket sluice-kafka on the
#                        local SeaweedFS, so they survive `ctl.sh stop kafka`;
#                        needs s3 running first). `ctl.sh start kafka` reuses
#                        the mode kafka was last started with.
#   SLUICE_WEED_BIN, SLUICE_TANSU_BIN, SLUICE_PG_BIN_DIR  override binaries
#   SLUICE_SERVER_WAIT   seconds to wait for a server to be ready (60)

SERVERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
SLUICE_RUN_DIR=${SLUICE_RUN_DIR:-/tmp/sluice-servers}
ALL_SERVERS=(s3 kafka prometheus postgres kafkatls tlsproxy)

S3_PORT=${SLUICE_S3_PORT:-19000}
KAFKA_PORT=${SLUICE_KAFKA_PORT:-19092}
PROM_PORT=${SLUICE_PROM_PORT:-19090}
PG_PORT=${SLUICE_PG_PORT:-15432}
KAFKA_TLS_PORT=${SLUICE_KAFKA_TLS_PORT:-19093}
KAFKA_TLS_BACKEND_PORT=$((KAFKA_TLS_PORT + 1))
STUNNEL_BIN=${SLUICE_STUNNEL_BIN:-$(command -v stunnel4 || command -v stunnel || echo stunnel4)}
WAIT_SECS=${SLUICE_SERVER_WAIT:-60}

S3_ACCESS_KEY=sluice
S3_SECRET_KEY=sluice-secret
S3_REGION=us-east-1
S3_BUCKETS=(sluice-test sluice-ckpt)
KAFKA_S3_BUCKET=sluice-kafka

WEED_BIN=${SLUICE_WEED_BIN:-$SLUICE_CACHE/bin/weed}
TANSU_BIN=${SLUICE_TANSU_BIN:-$SLUICE_CACHE/bin/tansu}
VENV_PY=$SLUICE_CACHE/venv/bin/python

log() { printf '[servers] %s\n' "$*" >&2; }
warn() { printf '[servers] WARNING: %s\n' "$*" >&2; }
die() { printf '[servers] ERROR: %s\n' "$*" >&2; exit 1; }

# Refuse run dirs where wiping a subfolder would be a disaster.
check_run_dir() {
    case "$SLUICE_RUN_DIR" in
        "" | / | "$HOME" | "$HOME/") die "refusing SLUICE_RUN_DIR='$SLUICE_RUN_DIR'" ;;
        /*) ;;
        *) SLUICE_RUN_DIR="$(pwd)/$SLUICE_RUN_DIR" ;;
    esac
    mkdir -p "$SLUICE_RUN_DIR"
    chmod 755 "$SLUICE_RUN_DIR"
}

is_server() {
    local s
    for s in "${ALL_SERVERS[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

pid_file() { printf '%s/%s.pid' "$SLUICE_RUN_DIR" "$1"; }
server_dir() { printf '%s/%s' "$SLUICE_RUN_DIR" "$1"; }
server_log() {
    case "$1" in
        postgres) printf '%s/postgres/postgres.log' "$SLUICE_RUN_DIR" ;;
        *) printf '%s/%s/%s.log' "$SLUICE_RUN_DIR" "$1" "$1" ;;
    esac
}

# The PID recorded for a server if that process is still alive, else nothing.
live_pid() {
    local f pid
    f=$(pid_file "$1")
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie is not a running server.
    [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ] || return 1
    # Nor is a recycled PID (after a reboot, say): check the program name, so
    # that stop.sh never signals an unrelated process.
    local argv0
    argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || return 1
    [ "${argv0##*/}" = "$(exe_name "$1")" ] || return 1
    printf '%s\n' "$pid"
}

exe_name() {
    case "$1" in
        s3) basename "$WEED_BIN" ;;
        kafka) basename "$TANSU_BIN" ;;
        prometheus) echo prometheus ;;
        postgres) echo postgres ;;
        kafkatls) basename "$TANSU_BIN" ;;
        tlsproxy) basename "$STUNNEL_BIN" ;;
    esac
}

is_running() { live_pid "$1" >/dev/null; }

port_of() {
    case "$1" in
        s3) echo "$S3_PORT" ;;
        kafka) echo "$KAFKA_PORT" ;;
        prometheus) echo "$PROM_PORT" ;;
        postgres) echo "$PG_PORT" ;;
        kafkatls) echo "$KAFKA_TLS_BACKEND_PORT" ;;
        tlsproxy) echo "$KAFKA_TLS_PORT" ;;
    esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fail early and clearly if someone else holds a port we need.
require_free_ports() {
    local name=$1 p
    shift
    for p in "$@"; do
        if port_open "$p"; then
            die "$name: port 127.0.0.1:$p is already in use by another process:
$(ss -ltnp 2>/dev/null | grep -E "[:.]$p\b" || true)"
        fi
    done
}

log_tail() {
    local f
    f=$(server_log "$1")
    if [ -f "$f" ]; then
        printf -- '----- last 40 lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2
        printf -- '-----\n' >&2
    else
        printf '(no log at %s)\n' "$f" >&2
    fi
}

# wait_ready NAME CMD...: poll CMD every 0.2 s until it succeeds, for at most
# $WAIT_SECS; fail with the log tail if the server dies or never gets ready.
wait_ready() {
    local name=$1 tries
    shift
    tries=$((WAIT_SECS * 5))
    while ! "$@" >/dev/null 2>&1; do
        if ! is_running "$name"; then
            log_tail "$name"
            die "$name exited while starting (log: $(server_log "$name"))"
        fi
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            log_tail "$name"
            die "$name not ready after ${WAIT_SECS}s (log: $(server_log "$name"))"
        fi
        sleep 0.2
    done
}

# Launch a long-running process in the background, record its PID.
spawn() {
    local name=$1 pid
    shift
    nohup "$@" >>"$(server_log "$name")" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$(pid_file "$name")"
}

# ------------------------------------------------------------------ S3 -----
s3_curl() {
    curl -sS --max-time 10 --aws-sigv4 "aws:amz:$S3_REGION:s3" \
        --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "$@"
}

s3_list_ok() {
    [ "$(s3_curl -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")" = 200 ]
}

s3_make_bucket() {
    local code
    code=$(s3_curl -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$S3_PORT/$1")
    case "$code" in
        200 | 409) return 0 ;; # 409: BucketAlreadyOwnedByYou
        *) return 1 ;;
    esac
}

# Upload with -T FILE: curl's --data-binary adds a form Content-Type that
# makes SeaweedFS reject the sigv4 signature (403 SignatureDoesNotMatch).
s3_put_probe() {
    local f
    f="$(server_dir s3)/probe.txt"
    printf 'probe\n' >"$f"
    [ "$(s3_curl -o /dev/null -w '%{http_code}' -T "$f" \
        "http://127.0.0.1:$S3_PORT/${S3_BUCKETS[0]}/_sluice/probe")" = 200 ]
}

start_s3() {
    local dir data
    dir=$(server_dir s3)
    data="$dir/data"
    [ -x "$WEED_BIN" ] || die "s3: weed not found at $WEED_BIN (run e2e/servers/install.sh)"
    local p=$S3_PORT
    require_free_ports s3 "$p" $((p + 1)) $((p + 2)) $((p + 3)) $((p + 4)) $((p + 5)) \
        $((p + 6)) $((p + 7)) $((p + 8)) $((p + 10008))
    mkdir -p "$data"
    cat >"$dir/identities.json" <<EOF
{
  "identities": [
    {
      "name": "$S3_ACCESS_KEY",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
    # Volume count and size are fixed: by default `weed mini` derives both from the free disk space
    # at start (1 GiB volumes, free space / 1 GiB of them), so on a machine whose disk the build has
    # filled it has no volume left for a new bucket and answers PUTs with 500 ("No writable
    # volumes"). Volumes are sparse files: 400 x 64 MiB reserves nothing up front.
    spawn s3 "$WEED_BIN" mini -dir="$data" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$S3_PORT" -s3.port.grpc=$((S3_PORT + 1)) \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.config="$dir/identities.json" \
        -s3.localSocket="$dir/s3.sock" \
        -master.port=$((p + 2)) -master.port.grpc=$((p + 3)) \
        -volume.port=$((p + 4)) -volume.port.grpc=$((p + 5)) \
        -volume.max=400 -master.volumeSizeLimitMB=64 \
        -filer.port=$((p + 6)) -filer.port.grpc=$((p + 7)) \
        -filer.localSocket="$dir/filer.sock" \
        -admin.ui=false -admin.port=$((p + 8)) -admin.port.grpc=$((p + 10008)) \
        -webdav=false
    wait_ready s3 s3_list_ok
    local b
    for b in "${S3_BUCKETS[@]}"; do
        wait_ready s3 s3_make_bucket "$b"
    done
    # The volume server may need a moment after the API answers.
    wait_ready s3 s3_put_probe
}

# Checks that object_store relies on. Warn, don't fail: the tests will say more.
check_s3_semantics() {
    local url="http://127.0.0.1:$S3_PORT/${S3_BUCKETS[0]}/_sluice/probe" code
    code=$(s3_curl -o /dev/null -w '%{http_code}' -H 'If-None-Match: *' \
        -T "$(server_dir s3)/probe.txt" "$url")
    if [ "$code" = 412 ]; then
        log "s3: conditional PUT (If-None-Match: *) on an existing key refused with 412: ok"
    else
        warn "s3: conditional PUT (If-None-Match: *) on an existing key returned $code, not 412;" \
            "object_store's PutMode::Create will not be safe against this server"
    fi
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/${S3_BUCKETS[0]}/_sluice/probe")
    if [ "$code" = 403 ]; then
        log "s3: unsigned request refused with 403: credentials are enforced"
    else
        warn "s3: unsigned GET returned $code, not 403: credentials are not enforced"
    fi
    # Leave the test bucket empty.
    s3_curl -o /dev/null -X DELETE "$url" || true
}

# --------------------------------------------------------------- Kafka -----
kafka_metadata_ok() {
    # A real Kafka Metadata round trip when the python client is installed.
    if [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import confluent_kafka' 2>/dev/null; then
        "$VENV_PY" - "127.0.0.1:$KAFKA_PORT" <<'PY'
import sys
from confluent_kafka.admin import AdminClient
AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=5)
PY
    else
        port_open "$KAFKA_PORT"
    fi
}

start_kafka() {
    local dir storage mode
    dir=$(server_dir kafka)
    [ -x "$TANSU_BIN" ] || die "kafka: tansu not found at $TANSU_BIN (run e2e/servers/install.sh)"
    require_free_ports kafka "$KAFKA_PORT"
    mkdir -p "$dir"
    mode=${SLUICE_KAFKA_STORAGE:-}
    if [ -z "$mode" ] && [ -f "$dir/storage-mode" ]; then mode=$(cat "$dir/storage-mode"); fi
    mode=${mode:-memory}
    printf '%s\n' "$mode" >"$dir/storage-mode"
    case "$mode" in
        memory) storage="memory://tansu/" ;;
        s3)
            is_running s3 || die "kafka: SLUICE_KAFKA_STORAGE=s3 needs the s3 server running first"
            s3_make_bucket "$KAFKA_S3_BUCKET" || die "kafka: cannot create bucket $KAFKA_S3_BUCKET"
            storage="s3://$KAFKA_S3_BUCKET/"
            ;;
        *) die "kafka: SLUICE_KAFKA_STORAGE must be memory or s3, not '$mode'" ;;
    esac
    (
        cd "$dir" || exit 1
        export AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" \
            AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION="$S3_REGION" \
            AWS_REGION="$S3_REGION" AWS_ALLOW_HTTP=true
        spawn kafka "$TANSU_BIN" broker \
            --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --storage-engine "$storage"
    )
    wait_ready kafka port_open "$KAFKA_PORT"
    wait_ready kafka kafka_metadata_ok
}

# ----------------------------------------------------------------- TLS -----
tls_dir() { printf '%s/tls' "$SLUICE_RUN_DIR"; }

# make_tls: a throwaway CA, a server certificate signed by it for 127.0.0.1
# and localhost, and an unrelated CA; kept across restarts of one run dir.
make_tls() {
    local d
    d=$(tls_dir)
    [ -f "$d/server.crt" ] && [ -f "$d/wrong-ca.crt" ] && return 0
    command -v openssl >/dev/null 2>&1 || die "tls: openssl not found (run e2e/servers/install.sh)"
    rm -rf "$d"
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Sluice test CA" \
            -keyout ca.key -out ca.crt
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Unrelated test CA" \
            -keyout wrong-ca.key -out wrong-ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
            'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.crt
        chmod 644 ./*.crt
        chmod 600 ./*.key
    ) >>"$SLUICE_RUN_DIR/tls.log" 2>&1 || {
        tail -n 20 "$SLUICE_RUN_DIR/tls.log" >&2
        die "tls: openssl failed (log: $SLUICE_RUN_DIR/tls.log)"
    }
    log "tls: throwaway CA and server certificate in $d"
}

# A second tansu for TLS clients: it advertises the stunnel port, so clients
# that bootstrap through stunnel keep talking TLS to it.
start_kafkatls() {
    local dir
    dir=$(server_dir kafkatls)
    [ -x "$TANSU_BIN" ] || die "kafkatls: tansu not found at $TANSU_BIN (run e2e/servers/install.sh)"
    require_free_ports kafkatls "$KAFKA_TLS_BACKEND_PORT"
    mkdir -p "$dir"
    (
        cd "$dir" || exit 1
        spawn kafkatls "$TANSU_BIN" broker \
            --listener-url "tcp://127.0.0.1:$KAFKA_TLS_BACKEND_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_TLS_PORT" \
            --storage-engine "memory://tansu/"
    )
    wait_ready kafkatls port_open "$KAFKA_TLS_BACKEND_PORT"
}

# A real TLS handshake with certificate verification against the test CA.
tls_handshake_ok() {
    openssl s_client -connect "127.0.0.1:$KAFKA_TLS_PORT" -CAfile "$(tls_dir)/ca.crt" \
        -verify_return_error -brief </dev/null 2>&1 | grep -q 'Verification: OK'
}

start_tlsproxy() {
    local dir
    dir=$(server_dir tlsproxy)
    command -v "$STUNNEL_BIN" >/dev/null 2>&1 || die "tlsproxy: stunnel4 not found (run e2e/servers/install.sh)"
    require_free_ports tlsproxy "$KAFKA_TLS_PORT"
    make_tls
    mkdir -p "$dir"
    cat >"$dir/stunnel.conf" <<EOF
; Written by e2e/servers/lib.sh: TLS on 127.0.0.1:$KAFKA_TLS_PORT in front of
; the kafkatls broker on 127.0.0.1:$KAFKA_TLS_BACKEND_PORT.
foreground = yes
pid =
debug = notice
[kafka]
accept = 127.0.0.1:$KAFKA_TLS_PORT
connect = 127.0.0.1:$KAFKA_TLS_BACKEND_PORT
cert = $(tls_dir)/server.crt
key = $(tls_dir)/server.key
EOF
    spawn tlsproxy "$STUNNEL_BIN" "$dir/stunnel.conf"
    wait_ready tlsproxy port_open "$KAFKA_TLS_PORT"
    wait_ready tlsproxy tls_handshake_ok
}

# ---------------------------------------------------------- Prometheus -----
prom_ready() {
    [ "$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROM_PORT/-/ready")" = 200 ]
}

start_prometheus() {
    local dir
    dir=$(server_dir prometheus)
    command -v prometheus >/dev/null 2>&1 || die "prometheus not on PATH (run e2e/servers/install.sh)"
    require_free_ports prometheus "$PROM_PORT"
    mkdir -p "$dir/data" "$dir/targets"
    cat >"$dir/prometheus.yml" <<EOF
# Written by e2e/servers/lib.sh. Tests add scrape targets by writing
# file_sd JSON files to $dir/targets/*.json, e.g.
#   [{"targets": ["127.0.0.1:9464"], "labels": {"job": "sluice-worker"}}]
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sluice
    file_sd_configs:
      - files: ["$dir/targets/*.json"]
        refresh_interval: 1s
EOF
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$dir/prometheus.yml" >/dev/null \
            || die "prometheus: promtool rejects $dir/prometheus.yml"
    fi
    spawn prometheus prometheus \
        --config.file="$dir/prometheus.yml" \
        --storage.tsdb.path="$dir/data" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="127.0.0.1:$PROM_PORT" \
        --web.enable-lifecycle \
        --web.enable-admin-api
    wait_ready prometheus prom_ready
}

# ---------------------------------------------------------- PostgreSQL -----
pg_bin_dir() {
    if [ -n "${SLUICE_PG_BIN_DIR:-}" ]; then
        printf '%s\n' "$SLUICE_PG_BIN_DIR"
        return
    fi
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        printf '%s\n' "$d"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

# Postgres refuses to run as root: as root, run its tools as the OS user
# `postgres`; otherwise as ourselves.
pg_user() {
    if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_psql() {
    local bin
    bin=$(pg_bin_dir)
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$(server_dir postgres)" -p "$PG_PORT" -U postgres "$@"
}

pg_ready() {
    "$(pg_bin_dir)/pg_isready" -q -h "$(server_dir postgres)" -p "$PG_PORT" -U postgres -d postgres
}

pg_url() { printf 'postgres://sluice:sluice@127.0.0.1:%s/sluice' "$PG_PORT"; }

pg_login_ok() {
    PGPASSWORD=sluice "$(pg_bin_dir)/psql" -X -q -tA "$(pg_url)" -c 'select 1' | grep -qx 1
}

start_postgres() {
    local dir data bin pid
    dir=$(server_dir postgres)
    data="$dir/data"
    bin=$(pg_bin_dir)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
        die "postgres: initdb/pg_ctl not found (run e2e/servers/install.sh, or set SLUICE_PG_BIN_DIR)"
    fi
    require_free_ports postgres "$PG_PORT"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "postgres: OS user 'postgres' missing (it comes with Debian's postgresql package)"
    fi
    mkdir -p "$dir"
    # pg_ctl -l appends to the log as the postgres user: it must own it.
    touch "$(server_log postgres)"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir" "$(server_log postgres)"; fi
    chmod 700 "$dir"
    as_pg test -w "$dir" || die "postgres: $dir is not writable by $(pg_user) (is a parent directory closed to it?)"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "postgres: initdb $data"
        rm -rf "$data"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync \
            >>"$(server_log postgres)" 2>&1 || {
            log_tail postgres
            die "postgres: initdb failed"
        }
        # Test-only server: durability against OS crashes is not needed, so
        # fsync is off. synchronous_commit stays on: a committed transaction
        # must survive `ctl.sh kill postgres` (SIGKILL), which crash tests use.
        cat >>"$data/postgresql.conf" <<EOF

# --- added by e2e/servers/lib.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
fsync = off
full_page_writes = off
max_connections = 200
EOF
    fi
    # TLS with the throwaway CA (plain connections keep working: pg_hba's
    # `host` lines match both). Set on every start so an old data dir gets it.
    make_tls
    cp "$(tls_dir)/server.crt" "$data/server.crt"
    cp "$(tls_dir)/server.key" "$data/server.key"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$data/server.crt" "$data/server.key"; fi
    chmod 600 "$data/server.key"
    if ! grep -q '^ssl = on' "$data/postgresql.conf"; then
        printf '%s\n' "ssl = on" "ssl_cert_file = 'server.crt'" "ssl_key_file = 'server.key'" \
            >>"$data/postgresql.conf"
    fi
    # After a crash (ctl.sh kill postgres) the old postmaster may linger as an
    # unreaped zombie and its children may take a moment to notice and exit;
    # postgres refuses to start until they are gone, so retry for a while.
    local tries=$((WAIT_SECS * 2))
    until as_pg "$bin/pg_ctl" -D "$data" -l "$(server_log postgres)" -w -t "$WAIT_SECS" start \
        >"$dir/pg_ctl.out" 2>&1; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ] || ! grep -qE 'another server might be running|could not start server' "$dir/pg_ctl.out"; then
            cat "$dir/pg_ctl.out" >&2
            log_tail postgres
            die "postgres: pg_ctl start failed"
        fi
        sleep 0.5
    done
    pid=$(head -n1 "$data/postmaster.pid")
    printf '%s\n' "$pid" >"$(pid_file postgres)"
    wait_ready postgres pg_ready
    pg_psql -d postgres >/dev/null <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sluice') THEN
    CREATE ROLE sluice LOGIN CREATEDB PASSWORD 'sluice';
  END IF;
END
$$;
SQL
    if [ "$(pg_psql -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = 'sluice'")" != 1 ]; then
        pg_psql -d postgres -c 'CREATE DATABASE sluice OWNER sluice'
    fi
    wait_ready postgres pg_login_ok
}

# --------------------------------------------------------- start / stop ----
# start_server NAME: start one server unless it is running; keeps its data.
start_server() {
    local name=$1 t0=$SECONDS pid
    if pid=$(live_pid "$name"); then
        log "$name: already running (pid $pid)"
        return
    fi
    rm -f "$(pid_file "$name")"
    "start_$name"
    log "$name: ready on 127.0.0.1:$(port_of "$name") (pid $(live_pid "$name"), $((SECONDS - t0))s)"
}

# stop_server NAME [SIGNAL]: signal the recorded PID, wait for it to exit
# (SIGKILL after 30 s), remove the PID file.
stop_server() {
    local name=$1 sig=${2:-TERM} pid i
    if ! pid=$(live_pid "$name"); then
        log "$name: not running"
        rm -f "$(pid_file "$name")"
        return
    fi
    # Postgres: SIGINT is its "fast" shutdown (SIGTERM waits for clients).
    if [ "$name" = postgres ] && [ "$sig" = TERM ]; then sig=INT; fi
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        # An exited child of this shell stays a zombie until reaped.
        [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ] && break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; then
        warn "$name: pid $pid still running after 30s; sending SIGKILL"
        kill -s KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    # SIGKILL leaves postgres backends behind for a moment; wait for the port.
    for ((i = 0; i < 50; i++)); do
        port_open "$(port_of "$name")" || break
        sleep 0.2
    done
    rm -f "$(pid_file "$name")"
    log "$name: stopped (pid $pid, SIG$sig)"
}

# Write ${SLUICE_RUN_DIR}/env.sh for the servers that are running now.
write_env() {
    local f="$SLUICE_RUN_DIR/env.sh" tmp all=1 s
    tmp="$f.tmp"
    {
        echo "# Written by e2e/servers/start.sh: source it to run tests against the servers."
        q SLUICE_RUN_DIR "$SLUICE_RUN_DIR"
        q SLUICE_SERVERS_CTL "$SERVERS_DIR/ctl.sh"
        if is_running s3; then
            q SLUICE_TEST_S3_ENDPOINT "http://127.0.0.1:$S3_PORT"
            q SLUICE_TEST_S3_BUCKET "${S3_BUCKETS[0]}"
            q SLUICE_TEST_S3_CKPT_BUCKET "${S3_BUCKETS[1]}"
            q AWS_ACCESS_KEY_ID "$S3_ACCESS_KEY"
            q AWS_SECRET_ACCESS_KEY "$S3_SECRET_KEY"
            q AWS_REGION "$S3_REGION"
            q AWS_DEFAULT_REGION "$S3_REGION"
            q AWS_ENDPOINT_URL "http://127.0.0.1:$S3_PORT"
            q AWS_ALLOW_HTTP true
            q SLUICE_WEED_BIN "$WEED_BIN"
        fi
        if is_running kafka; then
            q SLUICE_TEST_KAFKA "127.0.0.1:$KAFKA_PORT"
            q SLUICE_TANSU_BIN "$TANSU_BIN"
        fi
        if is_running prometheus; then
            q SLUICE_TEST_PROMETHEUS "http://127.0.0.1:$PROM_PORT"
            q SLUICE_PROMETHEUS_SD_DIR "$(server_dir prometheus)/targets"
        fi
        if is_running postgres; then
            q SLUICE_TEST_PG_URL "$(pg_url)"
            q PGPASSWORD sluice
            q SLUICE_PG_BIN_DIR "$(pg_bin_dir)"
        fi
        if is_running tlsproxy && is_running kafkatls; then
            q SLUICE_TEST_KAFKA_TLS "127.0.0.1:$KAFKA_TLS_PORT"
        fi
        if [ -f "$(tls_dir)/ca.crt" ]; then
            q SLUICE_TEST_TLS_CA "$(tls_dir)/ca.crt"
            q SLUICE_TEST_TLS_WRONG_CA "$(tls_dir)/wrong-ca.crt"
        fi
        for s in "${ALL_SERVERS[@]}"; do is_running "$s" || all=0; done
        # Tests skip when a server's variable is unset, unless this is 1.
        if [ "$all" = 1 ]; then q SLUICE_REQUIRE_SERVERS 1; fi
    } >"$tmp"
    mv "$tmp" "$f"
}

# q NAME VALUE: one `export NAME='VALUE'` line, safely quoted.
q() { printf "export %s=%q\n" "$1" "$2"; }
