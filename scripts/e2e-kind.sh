#!/usr/bin/env bash
# The e2e suite on a real cluster (`make e2e`): create a kind cluster, build and load the three images,
# install the CRD, operator, Prometheus and Grafana with `kubectl apply -k manifests/`, run
# tests/e2e in kind mode, delete the cluster (also on failure; KEEP_CLUSTER=1 keeps it).
#
# Needs docker, kind and kubectl on PATH. Settings (environment):
#   CLUSTER_NAME   kind cluster name                     [mili-e2e]
#   KIND_IMAGE     node image, e.g. kindest/node:v1.31.0 [kind's default]
#   PYTHON         interpreter with the test extra      [.venv/bin/python, else python3]
#   TORCH_SPEC     torch for the worker's CPU image      [Dockerfile.worker's default]
#   PYTEST_ARGS    extra pytest arguments
#   KEEP_CLUSTER   1: leave the cluster running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME="${CLUSTER_NAME:-mili-e2e}"
OPERATOR_IMAGE="mili-operator:0.1.0"
ROUTER_IMAGE="mili-router:0.1.0"  # the operator's default --router-image
WORKER_IMAGE="mili-worker:0.1.0"
NAMESPACE="mili-e2e"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is not installed" >&2; exit 2; }
done

log() { printf '\n== %s\n' "$*"; }

cleanup() {
  local status=$?
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    log "keeping cluster $CLUSTER_NAME (kind delete cluster --name $CLUSTER_NAME)"
  else
    log "deleting cluster $CLUSTER_NAME"
    kind delete cluster --name "$CLUSTER_NAME" || true
  fi
  exit "$status"
}

log "building images"
docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
docker build -f Dockerfile.operator --target router -t "$ROUTER_IMAGE" .
worker_args=(-f Dockerfile.worker --target cpu -t "$WORKER_IMAGE")
if [[ -n "${TORCH_SPEC:-}" ]]; then worker_args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC"); fi
docker build "${worker_args[@]}" .

log "creating kind cluster $CLUSTER_NAME"
create_args=(--name "$CLUSTER_NAME" --wait 120s)
if [[ -n "${KIND_IMAGE:-}" ]]; then create_args+=(--image "$KIND_IMAGE"); fi
kind create cluster "${create_args[@]}"
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER_NAME"

log "loading images into the cluster"
kind load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$ROUTER_IMAGE" "$WORKER_IMAGE"

log "installing MILI (CRD, operator, Prometheus, Grafana)"
# The CRD first, so the rest (and the samples) can refer to its kind once it is established.
kubectl apply -k crds/
kubectl wait --for=condition=Established --timeout=60s crd/milideployments.mili.dev
scripts/grafana-admin-secret.sh mili-system
kubectl apply -k manifests/
# The operator's default worker image (manifests/operator/deployment.yaml) is the one loaded above.
for deployment in mili-operator prometheus grafana; do
  kubectl -n mili-system rollout status "deployment/$deployment" --timeout=300s
done

log "running tests/e2e in kind mode"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose
MILI_E2E_MODE=kind MILI_E2E_NAMESPACE="$NAMESPACE" "$PYTHON" -I -m pytest tests/e2e ${PYTEST_ARGS:-}
