#!/usr/bin/env bash
# Creates the Secret `grafana-admin` (keys admin-user, admin-password) in the namespace Grafana runs in
# (mili-system), with a random password, unless it exists. Grafana reads its admin credentials from it
# (manifests/grafana/deployment.yaml) and will not start without it, so no install runs as admin/admin.
#   scripts/grafana-admin-secret.sh [NAMESPACE]
#   kubectl -n mili-system get secret grafana-admin -o jsonpath='{.data.admin-password}' | base64 -d
set -euo pipefail

namespace="${1:-mili-system}"
if kubectl -n "$namespace" get secret grafana-admin >/dev/null 2>&1; then
  echo "secret $namespace/grafana-admin exists; keeping it"
  exit 0
fi
kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)"
kubectl -n "$namespace" create secret generic grafana-admin \
  --from-literal=admin-user=admin --from-literal=admin-password="$password"
echo "created secret $namespace/grafana-admin (user admin, random password)"
