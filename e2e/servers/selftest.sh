#!/usr/bin/env bash
# Check that the servers started by start.sh answer the way the tests expect.
#
#   e2e/servers/selftest.sh            # quick checks (a few seconds)
#   e2e/servers/selftest.sh --outage   # also stop/start each server with
#                                      # ctl.sh and check its data survived
#
# S3: sigv4 put/get, unsigned request refused, If-None-Match:* create-only
# put refused on an existing key (412), If-Match on a stale ETag refused.
# Kafka: create a topic, produce and consume one message (confluent-kafka).
# Prometheus: /-/ready, a file_sd target is picked up and scraped.
# PostgreSQL: login as sluice/sluice over TCP, create a table, select.
# TLS: the Kafka TLS proxy and PostgreSQL verify against the test CA and are
# refused with the unrelated one.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

outage=0
for arg in "$@"; do
    case "$arg" in
        --outage) outage=1 ;;
        *) die "usage: selftest.sh [--outage]" ;;
    esac
done

[ -f "$SLUICE_RUN_DIR/env.sh" ] || die "no $SLUICE_RUN_DIR/env.sh: run e2e/servers/start.sh first"
# shellcheck source=/dev/null
source "$SLUICE_RUN_DIR/env.sh"

failures=0
ok() { printf '[selftest] ok   %s\n' "$*"; }
bad() {
    printf '[selftest] FAIL %s\n' "$*" >&2
    failures=$((failures + 1))
}
expect() { # expect WHAT WANT GOT
    if [ "$2" = "$3" ]; then ok "$1 ($3)"; else bad "$1: wanted $2, got $3"; fi
}

work=$(mktemp -d)
stamp="$(date +%s)-$$"
topics=()

# Leave nothing behind that a test listing a bucket, the topics or the
# tables could trip over.
cleanup() {
    local k
    for k in "_selftest/$stamp.txt" "_selftest/$stamp.txt.new"; do
        s3_curl -o /dev/null -X DELETE "$SLUICE_TEST_S3_ENDPOINT/$SLUICE_TEST_S3_BUCKET/$k" 2>/dev/null || true
    done
    pg_q -c 'drop table if exists selftest' >/dev/null 2>&1 || true
    if [ "${#topics[@]}" -gt 0 ] && [ -x "$VENV_PY" ]; then
        "$VENV_PY" - "$SLUICE_TEST_KAFKA" "${topics[@]}" >/dev/null 2>&1 <<'PY' || true
import sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
for f in a.delete_topics(sys.argv[2:], operation_timeout=5).values():
    try:
        f.result(10)
    except Exception:
        pass
PY
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ S3 -----
s3_checks() {
    local base="$SLUICE_TEST_S3_ENDPOINT/$SLUICE_TEST_S3_BUCKET" key="_selftest/$stamp.txt" etag
    printf 'hello %s\n' "$stamp" >"$work/obj"
    expect "s3 signed PUT" 200 "$(s3_curl -o /dev/null -w '%{http_code}' -T "$work/obj" "$base/$key")"
    if s3_curl -o "$work/got" "$base/$key" && cmp -s "$work/obj" "$work/got"; then
        ok "s3 signed GET returns the object"
    else
        bad "s3 signed GET did not return the object"
    fi
    expect "s3 unsigned GET refused" 403 "$(curl -sS -o /dev/null -w '%{http_code}' "$base/$key")"
    expect "s3 wrong secret refused" 403 "$(curl -sS -o /dev/null -w '%{http_code}' \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:wrong" "$base/$key")"
    expect "s3 If-None-Match:* on existing key" 412 "$(s3_curl -o /dev/null -w '%{http_code}' \
        -H 'If-None-Match: *' -T "$work/obj" "$base/$key")"
    expect "s3 If-None-Match:* on new key" 200 "$(s3_curl -o /dev/null -w '%{http_code}' \
        -H 'If-None-Match: *' -T "$work/obj" "$base/$key.new")"
    etag=$(s3_curl -I "$base/$key" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p' | head -n1)
    expect "s3 If-Match with current ETag" 200 "$(s3_curl -o /dev/null -w '%{http_code}' \
        -H "If-Match: $etag" -T "$work/obj" "$base/$key")"
    expect "s3 If-Match with stale ETag" 412 "$(s3_curl -o /dev/null -w '%{http_code}' \
        -H 'If-Match: "00000000000000000000000000000000"' -T "$work/obj" "$base/$key")"
    expect "s3 checkpoint bucket exists" 200 "$(s3_curl -o /dev/null -w '%{http_code}' \
        "$SLUICE_TEST_S3_ENDPOINT/$SLUICE_TEST_S3_CKPT_BUCKET?list-type=2")"
}

# --------------------------------------------------------------- Kafka -----
kafka_roundtrip() { # kafka_roundtrip TOPIC [produce|consume|both]
    "$VENV_PY" - "$SLUICE_TEST_KAFKA" "$1" "${2:-both}" <<'PY'
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, mode = sys.argv[1:4]
if mode in ("produce", "both"):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        f.result(10)
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, key=b"k", value=b"sluice-selftest")
    if p.flush(10) != 0:
        sys.exit("produce: message not delivered")
if mode in ("consume", "both"):
    # assign(), not subscribe(): tansu holds a JoinGroup for the whole
    # rebalance timeout (max.poll.interval.ms, 300 s by default).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "selftest-" + topic,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    deadline = time.time() + 15
    try:
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                sys.exit("consume: %s" % m.error())
            if m.value() != b"sluice-selftest":
                sys.exit("consume: unexpected value %r" % m.value())
            sys.exit(0)
        sys.exit("consume: no message within 15 s")
    finally:
        c.close()
PY
}

kafka_checks() {
    if [ ! -x "$VENV_PY" ]; then
        if port_open "${SLUICE_TEST_KAFKA##*:}"; then ok "kafka port open (no python client to go further)"; else bad "kafka port closed"; fi
        return
    fi
    topics+=("selftest-$stamp")
    if kafka_roundtrip "selftest-$stamp"; then
        ok "kafka create topic, produce, consume"
    else
        bad "kafka produce/consume"
    fi
}

# ---------------------------------------------------------- Prometheus -----
prom_checks() {
    expect "prometheus /-/ready" 200 "$(curl -sS -o /dev/null -w '%{http_code}' "$SLUICE_TEST_PROMETHEUS/-/ready")"
    # Scrape Prometheus itself through file_sd, the way tests register workers.
    local f="$SLUICE_PROMETHEUS_SD_DIR/selftest-$stamp.json" i found=0
    printf '[{"targets": ["%s"], "labels": {"selftest": "%s"}}]\n' \
        "${SLUICE_TEST_PROMETHEUS#http://}" "$stamp" >"$f"
    for ((i = 0; i < 50; i++)); do
        if curl -sS -G "$SLUICE_TEST_PROMETHEUS/api/v1/query" \
            --data-urlencode "query=up{selftest=\"$stamp\"} == 1" | grep -q '"value"'; then
            found=1
            break
        fi
        sleep 0.2
    done
    rm -f "$f"
    if [ "$found" = 1 ]; then ok "prometheus scrapes a file_sd target within $((i / 5))s"; else bad "prometheus did not scrape the file_sd target in 10s"; fi
}

# ---------------------------------------------------------- PostgreSQL -----
pg_q() { PGOPTIONS='-c client_min_messages=warning' "$SLUICE_PG_BIN_DIR/psql" -X -q -tA -v ON_ERROR_STOP=1 "$SLUICE_TEST_PG_URL" "$@"; }

pg_checks() {
    expect "postgres select 1 as sluice" 1 "$(pg_q -c 'select 1' 2>&1)"
    if pg_q -c "create table if not exists selftest(x text); insert into selftest values ('$stamp')"; then
        ok "postgres create table + insert"
    else
        bad "postgres create table + insert"
    fi
}

tls_checks() {
    [ -n "${SLUICE_TEST_TLS_CA:-}" ] || return 0
    local v
    if [ -n "${SLUICE_TEST_KAFKA_TLS:-}" ]; then
        v=$(openssl s_client -connect "$SLUICE_TEST_KAFKA_TLS" -CAfile "$SLUICE_TEST_TLS_CA" \
            -verify_return_error -brief </dev/null 2>&1 | grep -c 'Verification: OK' || true)
        expect "kafka TLS proxy verifies with the test CA" 1 "$v"
        if openssl s_client -connect "$SLUICE_TEST_KAFKA_TLS" -CAfile "$SLUICE_TEST_TLS_WRONG_CA" \
            -verify_return_error -brief </dev/null >/dev/null 2>&1; then
            bad "kafka TLS proxy accepted with an unrelated CA"
        else
            ok "kafka TLS proxy refused with an unrelated CA"
        fi
    fi
    if [ -n "${SLUICE_TEST_PG_URL:-}" ]; then
        v=$(PGSSLMODE=verify-full PGSSLROOTCERT="$SLUICE_TEST_TLS_CA" pg_q \
            -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' 2>&1 || true)
        expect "postgres verify-full with the test CA is encrypted" t "$v"
    fi
}

s3_checks
kafka_checks
prom_checks
pg_checks
tls_checks

if [ "$outage" = 1 ]; then
    ctl="$SERVERS_DIR/ctl.sh"
    key="$SLUICE_TEST_S3_ENDPOINT/$SLUICE_TEST_S3_BUCKET/_selftest/$stamp.txt"
    "$ctl" stop s3
    expect "s3 down during outage" 000 "$(curl -s -o /dev/null -w '%{http_code}' "$key" || true)"
    "$ctl" start s3
    if s3_curl -o "$work/got" "$key" && cmp -s "$work/obj" "$work/got"; then
        ok "s3 object survives ctl.sh stop/start"
    else
        bad "s3 object lost across ctl.sh stop/start"
    fi

    "$ctl" kill postgres
    "$ctl" start postgres
    expect "postgres row survives SIGKILL + start" "$stamp" "$(pg_q -c "select x from selftest where x = '$stamp'")"

    if [ "$(cat "$(server_dir kafka)/storage-mode" 2>/dev/null)" = s3 ]; then
        "$ctl" restart kafka
        if kafka_roundtrip "selftest-$stamp" consume; then ok "kafka topic survives restart (s3 storage)"; else bad "kafka topic lost across restart"; fi
    else
        "$ctl" restart kafka
        topics+=("selftest-$stamp-2")
        if kafka_roundtrip "selftest-$stamp-2"; then ok "kafka works after restart (memory storage: old topics are gone)"; else bad "kafka after restart"; fi
    fi

    "$ctl" restart prometheus
    prom_checks
fi

if [ "$failures" -gt 0 ]; then
    die "$failures server check(s) failed"
fi
printf '[selftest] all server checks passed\n'
