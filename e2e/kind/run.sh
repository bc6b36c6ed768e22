#!/usr/bin/env bash
# Sluice end-to-end suite on a local kind cluster (needs docker, kind, kubectl, helm).
#
#   e2e/kind/run.sh            # create cluster, run everything, delete cluster
#   KEEP_CLUSTER=1 e2e/kind/run.sh
#
# Steps: create a kind cluster; build and load the operator and worker images; helm install the
# chart; deploy manifests/dev (Kafka, MinIO, Prometheus); apply manifests/examples/iot-alerts.yaml;
# wait for Ready; produce IoT readings to Kafka; check Parquet output objects in MinIO; change the
# SQL and watch the new generation roll out after the old pods stopped; an incompatible change is
# refused (the StatefulSet untouched); a broken image rolls back to the last stable spec; `kubectl
# scale` through the /scale subresource rescales at a batch boundary; a steady query's status stays
# quiet; the Lease is released when the leader stops; delete the query and check checkpoint
# retention.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${CLUSTER:-sluice-e2e}
NS=${NS:-default}
TAG=${TAG:-e2e}
TIMEOUT=${TIMEOUT:-300s}
QUERY=iot-alerts

log() { printf '\n[kind-e2e] %s\n' "$*" >&2; }
die() { printf '[kind-e2e] FAILED: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (see e2e/kind/README.md)"
done

cleanup() {
    if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
        log "deleting cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# Runs the AWS CLI (in a throwaway pod) against MinIO; prints its output.
mc() {
    kubectl -n sluice-dev run "mc-$RANDOM" --rm -i --restart=Never --quiet \
        --image=minio/mc:RELEASE.2025-04-16T18-13-26Z --command -- /bin/sh -c \
        "mc alias set dev http://minio:9000 sluice sluice-secret >/dev/null && $*"
}

# Waits until `kubectl get sq` shows the given phase.
wait_phase() {
    local phase=$1 deadline=$((SECONDS + 300))
    until [ "$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.phase}' 2>/dev/null)" = "$phase" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { kubectl -n "$NS" describe sq "$QUERY"; die "phase $phase not reached"; }
        sleep 3
    done
}

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 120s

log "building and loading images"
docker build -f "$ROOT/operator/Dockerfile" -t "sluice-operator:$TAG" "$ROOT"
# The release profile: the shipped `dist` build (fat LTO) would add ~30 min for no functional change.
docker build -f "$ROOT/worker/Dockerfile" --build-arg "PROFILE=${SLUICE_WORKER_PROFILE:-release}" \
  -t "sluice-worker:$TAG" "$ROOT"
kind load docker-image --name "$CLUSTER" "sluice-operator:$TAG" "sluice-worker:$TAG"

log "deploying Kafka, MinIO, Prometheus (manifests/dev)"
kubectl apply -f "$ROOT/manifests/dev/namespace.yaml"
kubectl apply -f "$ROOT/manifests/dev/"
kubectl -n sluice-dev rollout status statefulset/kafka --timeout="$TIMEOUT"
kubectl -n sluice-dev rollout status deployment/minio --timeout="$TIMEOUT"
kubectl -n sluice-dev rollout status deployment/prometheus --timeout="$TIMEOUT"
# Workers read S3 credentials from this Secret (spec.storageSecretRef).
kubectl -n sluice-dev get secret minio-credentials -o yaml \
    | sed -e "s/namespace: sluice-dev/namespace: $NS/" -e '/resourceVersion/d' -e '/uid:/d' \
    | kubectl apply -f -

log "installing the chart"
kubectl create namespace sluice-system --dry-run=client -o yaml | kubectl apply -f -
kubectl -n sluice-dev get secret minio-credentials -o yaml \
    | sed -e 's/namespace: sluice-dev/namespace: sluice-system/' -e '/resourceVersion/d' -e '/uid:/d' \
    | kubectl apply -f -
helm upgrade --install sluice "$ROOT/charts/sluice" --namespace sluice-system --wait --timeout "$TIMEOUT" \
    --set image.repository=sluice-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set workerImage.repository=sluice-worker --set workerImage.tag="$TAG" \
    --set checkpoint.defaultLocation=s3://checkpoints/ \
    --set checkpoint.credentialsSecret=minio-credentials \
    --set prometheus.url=http://prometheus.sluice-dev.svc:9090

log "applying $QUERY"
kubectl -n "$NS" apply -f "$ROOT/manifests/examples/iot-alerts.yaml"
kubectl -n "$NS" wait sq/"$QUERY" --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NS" get sq "$QUERY"
generation=$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.generation}')
location=$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.checkpointLocation}')
[ -n "$location" ] || die "status.checkpointLocation is empty"

log "producing IoT readings to Kafka topic iot"
now=$(date -u +%s)
{
    for i in $(seq 1 2000); do
        printf '{"deviceId":"dev-%d","temperature":%d.5,"danger_level":"HIGH","timestamp":"%s"}\n' \
            $((i % 10)) $((20 + i % 30)) "$(date -u -d "@$((now - 180 + i / 20))" +%Y-%m-%dT%H:%M:%SZ)"
    done
    # Late enough readings to push the watermark past the earlier windows.
    printf '{"deviceId":"dev-0","temperature":1.0,"danger_level":"LOW","timestamp":"%s"}\n' \
        "$(date -u -d "@$((now + 120))" +%Y-%m-%dT%H:%M:%SZ)"
} | kubectl -n sluice-dev exec -i kafka-0 -- /opt/kafka/bin/kafka-console-producer.sh \
    --bootstrap-server localhost:9092 --topic iot

log "waiting for Parquet output in s3://lake/iot-alerts/"
deadline=$((SECONDS + 300))
until mc "mc ls --recursive dev/lake/iot-alerts/" | grep -q '\.parquet'; do
    [ "$SECONDS" -lt "$deadline" ] || die "no output objects in MinIO"
    sleep 10
done
mc "mc ls --recursive dev/lake/iot-alerts/"

log "changing the SQL compatibly (same state: one more output column; a new generation)"
kubectl -n "$NS" patch sq "$QUERY" --type merge -p \
    '{"spec":{"sql":"SELECT window(\"timestamp\", '"'"'1 minute'"'"') AS window, deviceId, avg(temperature) AS avg_temp, count(*) AS n, '"'"'v2'"'"' AS version FROM events WHERE danger_level = '"'"'HIGH'"'"' GROUP BY window(\"timestamp\", '"'"'1 minute'"'"'), deviceId"}}'
deadline=$((SECONDS + 300))
until [ "$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.generation}')" -gt "$generation" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "no new generation after the SQL change"
    sleep 3
done
wait_phase Running
kubectl -n "$NS" get events --field-selector involvedObject.name="$QUERY" | grep -q UpgradeStarted \
    || die "no UpgradeStarted event"

kubectl -n "$NS" get events --field-selector involvedObject.name="$QUERY" | grep -q RescaleDowntime \
    || die "no RescaleDowntime event (the new generation starts only after the old pods stopped)"
kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.lastRescaleDowntimeSeconds}' | grep -q . \
    || die "status.lastRescaleDowntimeSeconds is empty"

log "an incompatible change (GROUP BY without deviceId) is refused by the check; the StatefulSet is untouched"
sts_version=$(kubectl -n "$NS" get statefulset "sluice-$QUERY" -o jsonpath='{.metadata.resourceVersion}')
generation=$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.generation}')
kubectl -n "$NS" patch sq "$QUERY" --type merge -p \
    '{"spec":{"sql":"SELECT window(\"timestamp\", '"'"'1 minute'"'"') AS window, max(temperature) AS max_temp, count(*) AS n FROM events WHERE danger_level = '"'"'HIGH'"'"' GROUP BY window(\"timestamp\", '"'"'1 minute'"'"')"}}'
deadline=$((SECONDS + 120))
until kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}' | grep -q UpgradeRefused; do
    [ "$SECONDS" -lt "$deadline" ] || { kubectl -n "$NS" describe sq "$QUERY"; die "no UpgradeRefused"; }
    sleep 3
done
[ "$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.generation}')" = "$generation" ] || die "a refused spec rolled out"
[ "$(kubectl -n "$NS" get statefulset "sluice-$QUERY" -o jsonpath='{.metadata.resourceVersion}')" = "$sts_version" ] \
    || die "the StatefulSet was touched by a refused upgrade"
kubectl -n "$NS" get jobs -l sluice.dev/query="$QUERY" 2>/dev/null || true

log "a broken image is not Ready in time and rolls back to the last stable spec"
operator=$(kubectl -n sluice-system get deployment -l app.kubernetes.io/name=sluice -o name | head -1)
kubectl -n sluice-system set env "$operator" SLUICE_READY_TIMEOUT=60
kubectl -n sluice-system rollout status "$operator" --timeout="$TIMEOUT"
kubectl -n "$NS" patch sq "$QUERY" --type merge -p '{"spec":{"image":"sluice-worker:does-not-exist"}}'
deadline=$((SECONDS + 300))
until kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}' | grep -q SpecRejected; do
    [ "$SECONDS" -lt "$deadline" ] || { kubectl -n "$NS" describe sq "$QUERY"; die "no rollback"; }
    sleep 5
done
wait_phase Running
kubectl -n "$NS" get events --field-selector involvedObject.name="$QUERY" | grep -q RolledBack || die "no RolledBack event"
kubectl -n "$NS" patch sq "$QUERY" --type json -p '[{"op":"remove","path":"/spec/image"}]'
wait_phase Running

log "kubectl scale drives spec.parallelism.replicas through the /scale subresource"
kubectl -n "$NS" scale sq "$QUERY" --replicas=2
deadline=$((SECONDS + 300))
until [ "$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.replicas}')" = "2" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { kubectl -n "$NS" describe sq "$QUERY"; die "not scaled to 2"; }
    sleep 3
done
kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.status.selector}' | grep -q "sluice.dev/query=$QUERY" \
    || die "status.selector is missing"
wait_phase Running

log "a steady query's status stays quiet (at most 2 writes in 2 minutes)"
versions=()
for _ in $(seq 1 12); do
    versions+=("$(kubectl -n "$NS" get sq "$QUERY" -o jsonpath='{.metadata.resourceVersion}')")
    sleep 10
done
changes=$(printf '%s\n' "${versions[@]}" | sort -u | wc -l)
[ "$changes" -le 3 ] || die "status written $((changes - 1)) times in 2 minutes"

log "the leader releases its Lease when it stops"
holder=$(kubectl -n sluice-system get lease sluice-operator-leader -o jsonpath='{.spec.holderIdentity}')
kubectl -n sluice-system delete pod "$holder" --wait=false
deadline=$((SECONDS + 10))
until current=$(kubectl -n sluice-system get lease sluice-operator-leader -o jsonpath='{.spec.holderIdentity}'); [ "$current" != "$holder" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "the Lease was not released within 10 s"
    sleep 1
done

log "deleting the query (retention: Delete) and checking the checkpoint is gone"
prefix=${location#s3://}
mc "mc ls --recursive dev/${prefix}" | grep -q 'owner.json' || die "no ownership marker at $location"
kubectl -n "$NS" delete sq "$QUERY" --wait --timeout="$TIMEOUT"
if mc "mc ls --recursive dev/${prefix}" | grep -q .; then
    die "checkpoint objects left under $location despite retention: Delete"
fi
kubectl -n "$NS" get statefulset "sluice-$QUERY" >/dev/null 2>&1 && die "worker StatefulSet not garbage-collected"

log "all kind e2e checks passed"
