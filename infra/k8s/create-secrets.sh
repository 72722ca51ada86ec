#!/usr/bin/env bash
# Makes the five Secrets the manifests reference, in namespace "moe" (or $NAMESPACE), without writing any secret into
# this repository:
#   moe-cluster-token  token   the data plane's bearer token (DISTRIBUTED_CLUSTER_TOKEN), 32 random bytes
#   moe-admin-token    token   the admin API's bearer token (DISTRIBUTED_ADMIN_TOKEN), 32 random bytes
#   moe-api-key        key     the OpenAI API's key (DISTRIBUTED_API_KEY; clients send it as their apiKey), 32 random bytes
#   moe-metrics-token  token   the /metrics scrape token of every pod (DISTRIBUTED_METRICS_TOKEN; give it to Prometheus
#                              as authorization.credentials_file), 32 random bytes
#   moe-cluster-tls    ca.crt, tls.crt, tls.key   the cluster CA and one member certificate every pod presents (mutual TLS)
# The CA's private key stays in $PKI_DIR (default ./moe-pki, created 0700) on the machine that runs this: keep it
# there (or offline) to renew the member certificate; it never goes into the cluster.
#
#   infra/k8s/create-secrets.sh            # first time
#   ROTATE=1 infra/k8s/create-secrets.sh   # new tokens and a new member certificate (same CA); then restart the pods
#   DRY_RUN=1 infra/k8s/create-secrets.sh  # print the Secrets as YAML instead of applying them
set -euo pipefail
NAMESPACE=${NAMESPACE:-moe}
PKI_DIR=${PKI_DIR:-./moe-pki}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
command -v openssl >/dev/null || { echo "error: openssl is required" >&2; exit 1; }
[ "${DRY_RUN:-0}" = 1 ] || command -v kubectl >/dev/null || { echo "error: kubectl is required (or DRY_RUN=1)" >&2; exit 1; }

bash "$ROOT/infra/make-cluster-certs.sh" "$PKI_DIR" "moe-cluster-member=moe-coordinator,moe-expert-worker" >&2
secret() { # secret NAME ARGS...
  if [ "${DRY_RUN:-0}" = 1 ]; then
    kubectl create secret generic "$@" --namespace "$NAMESPACE" --dry-run=client -o yaml 2>/dev/null \
      || { echo "# (kubectl not found: would create secret $1)"; }
    echo "---"
  elif [ "${ROTATE:-0}" = 1 ] || ! kubectl get secret "$1" --namespace "$NAMESPACE" >/dev/null 2>&1; then
    kubectl create secret generic "$@" --namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  else
    echo "secret $1 exists (ROTATE=1 replaces it)" >&2
  fi
}
secret moe-cluster-token --from-literal=token="$(openssl rand -base64 32 | tr -d '\n=' | tr '+/' '-_')"
secret moe-admin-token --from-literal=token="$(openssl rand -base64 32 | tr -d '\n=' | tr '+/' '-_')"
secret moe-api-key --from-literal=key="$(openssl rand -base64 32 | tr -d '\n=' | tr '+/' '-_')"
secret moe-metrics-token --from-literal=token="$(openssl rand -base64 32 | tr -d '\n=' | tr '+/' '-_')"
secret moe-cluster-tls --from-file=ca.crt="$PKI_DIR/ca.pem" --from-file=tls.crt="$PKI_DIR/moe-cluster-member.pem" \
  --from-file=tls.key="$PKI_DIR/moe-cluster-member.key"
