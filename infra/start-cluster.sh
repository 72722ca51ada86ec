#!/usr/bin/env bash
# Starts N expert workers (one Orleans localhost cluster, gRPC data plane on loopback) for a model, prints the options
# a coordinator joins their cluster with (serve/infer --clustering ... ; the coordinator then follows the placement
# plan, as with any cluster), and optionally runs one `infer` that joins it. Ctrl+C (or the end of --infer) stops them.
# The workers and the coordinator share the cluster token DISTRIBUTED_CLUSTER_TOKEN (made here unless already set;
# export the printed value in the shell that runs serve).
#
#   infra/start-cluster.sh --model tests/fixtures/tiny-maverick --workers 2
#   infra/start-cluster.sh --model tests/fixtures/tiny-maverick --workers 3 --infer "--prompt-ids 500,17,300 --wire fp32"
#   infra/start-cluster.sh --model DIR --workers 2 --redis 127.0.0.1:6379     # Redis membership instead of localhost
#   infra/start-cluster.sh --model DIR --workers 7 --gpus 1,2,3,4,5,6,7       # one GPU per worker (worker i: --gpu of entry i)
#
# Workers log to $LOG_DIR/worker-<i>.log (default: a temp dir). Requires a built solution
# (dotnet build -c Release) or set CONFIG=Debug.
set -euo pipefail

MODEL="" WORKERS=2 INFER="" REDIS="" THREADS=1 GPUS="" CONFIG="${CONFIG:-Release}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --infer) INFER="$2"; shift 2 ;;
    --redis) REDIS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -n "$MODEL" && -d "$MODEL" ]] || { echo "--model DIR is required (an existing directory)" >&2; exit 2; }
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "--workers must be a positive integer" >&2; exit 2; }
GPU_LIST=()
if [[ -n "$GPUS" ]]; then
  IFS=, read -r -a GPU_LIST <<< "$GPUS"
  [[ ${#GPU_LIST[@]} -eq $WORKERS ]] || { echo "--gpus lists ${#GPU_LIST[@]} device(s) for $WORKERS worker(s): give one GPU per worker" >&2; exit 2; }
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORKER_DLL="$ROOT/src/ExpertWorker/bin/$CONFIG/net10.0/Distributed.ExpertWorker.dll"
COORD_DLL="$ROOT/src/Coordinator/bin/$CONFIG/net10.0/Distributed.Coordinator.dll"
[[ -f "$WORKER_DLL" ]] || { echo "build first: $WORKER_DLL missing (dotnet build -c $CONFIG)" >&2; exit 2; }
LOG_DIR="${LOG_DIR:-$(mktemp -d -t expert-cluster-XXXXXX)}"
mkdir -p "$LOG_DIR"
CLUSTER_ID="manual-$$"

# A silo must be told its port before it binds, so ports are probed from below the kernel's ephemeral range, where no
# outgoing connection or port-0 listener can take them between the probe and the bind; none handed out twice.
TAKEN=" "
PORT=0
free_port() {   # sets PORT (not in a subshell, so TAKEN keeps what was handed out)
  local p
  p=$(python3 - "$TAKEN" <<'PY'
import random, socket, sys
taken = set(map(int, sys.argv[1].split()))
try:
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    lo = 0
for _ in range(256):
    port = random.randrange(20000, lo) if lo - 20000 >= 1024 else 0
    if port in taken:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        port = s.getsockname()[1]
    if port not in taken:
        print(port)
        sys.exit(0)
sys.exit("no free port found")
PY
) || { echo "no free loopback port" >&2; exit 1; }
  TAKEN+="$p "
  PORT=$p
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [[ -z "${DISTRIBUTED_CLUSTER_TOKEN:-}" ]]; then
  DISTRIBUTED_CLUSTER_TOKEN="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
fi
export DISTRIBUTED_CLUSTER_TOKEN
PRIMARY=0
ADDRESSES=()
GATEWAYS=()
for ((i = 0; i < WORKERS; i++)); do
  free_port; SILO=$PORT; free_port; GATEWAY=$PORT
  [[ $i -eq 0 ]] && PRIMARY=$SILO
  ARGS=(--model "$MODEL" --worker-id "worker-$i" --threads "$THREADS" --cluster-id "$CLUSTER_ID"
        --silo-port "$SILO" --gateway-port "$GATEWAY")
  [[ ${#GPU_LIST[@]} -gt 0 ]] && ARGS+=(--gpu "${GPU_LIST[$i]}")
  if [[ -n "$REDIS" ]]; then
    ARGS+=(--clustering Redis --redis "$REDIS")
  else
    ARGS+=(--primary-silo-port "$([[ $i -eq 0 ]] && echo 0 || echo "$PRIMARY")")
  fi
  dotnet "$WORKER_DLL" "${ARGS[@]}" > "$LOG_DIR/worker-$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    LINE=$(grep -m1 '^EXPERT_WORKER_READY' "$LOG_DIR/worker-$i.log" || true)
    [[ -n "$LINE" ]] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "worker-$i exited:"; tail -20 "$LOG_DIR/worker-$i.log"; exit 1; }
    sleep 0.1
  done
  [[ -n "$LINE" ]] || { echo "worker-$i not ready after 60 s (log: $LOG_DIR/worker-$i.log)" >&2; exit 1; }
  ADDR=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$LINE")
  ADDRESSES+=("$ADDR")
  GATEWAYS+=("$GATEWAY")
  echo "worker-$i: grpc $ADDR silo $SILO gateway $GATEWAY (log $LOG_DIR/worker-$i.log)"
done

# The plan is rebuilt once registrations settle; wait until every worker reports its shard serving.
for _ in $(seq 1 300); do
  READY=$(grep -h "Shard serves plan" "$LOG_DIR"/worker-*.log | sed -E 's/.*plan ([0-9]+).*/\1/' | sort -n | tail -1)
  COUNT=$(grep -l "Shard serves plan ${READY:-x}:" "$LOG_DIR"/worker-*.log 2>/dev/null | wc -l)
  [[ "$COUNT" -eq "$WORKERS" ]] && break
  sleep 0.1
done
if [[ -n "$REDIS" ]]; then
  JOIN=(--clustering Redis --redis "$REDIS" --cluster-id "$CLUSTER_ID")
else
  JOIN=(--clustering Localhost --gateways "$(IFS=,; echo "${GATEWAYS[*]}")" --cluster-id "$CLUSTER_ID")
fi
echo "cluster $CLUSTER_ID serving; join it with: ${JOIN[*]}"
echo "export DISTRIBUTED_CLUSTER_TOKEN=$DISTRIBUTED_CLUSTER_TOKEN"

if [[ -n "$INFER" ]]; then
  # shellcheck disable=SC2086
  dotnet "$COORD_DLL" infer --model "$MODEL" "${JOIN[@]}" $INFER
else
  echo "Ctrl+C stops the cluster."
  wait
fi
