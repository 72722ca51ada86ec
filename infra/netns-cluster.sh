#!/usr/bin/env bash
# Multi-host on one machine: three network namespaces ("hosts") joined by veth pairs on a private test subnet that
# exists only inside this machine, one address each:
#
#   <prefix>-c  SUBNET.1  coordinator + redis-server (Orleans membership store); holds the bridge the others plug into
#   <prefix>-a  SUBNET.2  expert worker a (Orleans silo + gRPC data plane)
#   <prefix>-b  SUBNET.3  expert worker b
#
# The workers join through Redis membership and split the experts by the placement plan; the coordinator, in its own
# namespace, runs one generation across them over the veth links (infer --workers, placement from the handshakes)
# and compares it with the same generation run in-process: with --wire fp32 the two JSON results must be identical
# byte for byte (logits, routing, tokens). Then the coordinator host runs `serve` against the same workers and a
# client on worker a's host asks it for a greedy completion over HTTP: the tokens must be the same again. Every namespace, process and link is removed on exit (trap), also on
# failure or Ctrl+C. Needs root (ip netns), iproute2, redis-server, and a Release build of the solution.
#
#   infra/netns-cluster.sh --model tests/fixtures/tiny-maverick
#   infra/netns-cluster.sh --model DIR --prompt-ids 500,12,7 --max-new-tokens 8 --subnet 10.77.6 --keep-logs
#
# The prompt's greedy continuation must not hit an end-of-sequence token within --max-new-tokens (serve stops there,
# infer does not).
#
# Exit codes: 0 the distributed result matched; 1 a step failed (logs are printed); 2 bad usage; 77 this machine
# cannot create network namespaces (not root, no ip, no redis-server): nothing was changed.
set -euo pipefail

MODEL="" PROMPT="500" MAX_NEW=16 SUBNET="10.77.6" CONFIG="${CONFIG:-Release}" KEEP_LOGS=0 WIRE="fp32"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --prompt-ids) PROMPT="$2"; shift 2 ;;
    --max-new-tokens) MAX_NEW="$2"; shift 2 ;;
    --subnet) SUBNET="$2"; shift 2 ;;
    --wire) WIRE="$2"; shift 2 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "netns-cluster: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -n "$MODEL" && -d "$MODEL" ]] || { echo "netns-cluster: --model DIR is required (an existing directory)" >&2; exit 2; }
[[ "$PROMPT" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "netns-cluster: --prompt-ids must be comma-separated token ids" >&2; exit 2; }
[[ "$MAX_NEW" =~ ^[0-9]+$ ]] || { echo "netns-cluster: --max-new-tokens must be a non-negative integer" >&2; exit 2; }
[[ "$WIRE" == fp32 || "$WIRE" == bf16 ]] || { echo "netns-cluster: --wire must be fp32 or bf16" >&2; exit 2; }
# Only 10.x/24 test subnets: the addresses exist solely inside the namespaces made here and are never routed out.
[[ "$SUBNET" =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && (( BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 )) \
  || { echo "netns-cluster: --subnet must be the first three octets of a 10.x.y.0/24 test subnet, e.g. 10.77.6" >&2; exit 2; }

unsupported() { echo "netns-cluster: UNSUPPORTED: $1" >&2; exit 77; }
[[ "$(id -u)" -eq 0 ]] || unsupported "network namespaces need root (running as uid $(id -u))"
command -v ip >/dev/null || unsupported "iproute2 'ip' is not installed (apt-get install iproute2)"
REDIS_SERVER="$(command -v redis-server || true)"
[[ -n "$REDIS_SERVER" ]] || unsupported "redis-server is not installed (apt-get install redis-server)"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="$(cd "$MODEL" && pwd)"
WORKER_DLL="$ROOT/src/ExpertWorker/bin/$CONFIG/net10.0/Distributed.ExpertWorker.dll"
COORD_DLL="$ROOT/src/Coordinator/bin/$CONFIG/net10.0/Distributed.Coordinator.dll"
for dll in "$WORKER_DLL" "$COORD_DLL"; do
  [[ -f "$dll" ]] || { echo "netns-cluster: build first: $dll missing (dotnet build -c $CONFIG)" >&2; exit 2; }
done

# The cluster credential every worker requires and the coordinator sends on the data plane (docs/OPERATIONS.md,
# "Security"): the caller's, else a fresh one for this run. Exported, so `ip netns exec` children inherit it.
export DISTRIBUTED_CLUSTER_TOKEN="${DISTRIBUTED_CLUSTER_TOKEN:-$(head -c 32 /dev/urandom | base64 -w0)}"

PREFIX="moe$$"            # namespace and interface names stay unique per run and within IFNAMSIZ (15)
NS_C="$PREFIX-c" NS_A="$PREFIX-a" NS_B="$PREFIX-b"
IP_C="$SUBNET.1" IP_A="$SUBNET.2" IP_B="$SUBNET.3"
GRPC_PORT=50051 OPS_PORT=9090 SILO_PORT=11111 GATEWAY_PORT=30000 REDIS_PORT=6379
LOG_DIR="$(mktemp -d -t netns-cluster-XXXXXX)"
CLUSTER_ID="netns-$$"
PIDS=()
CREATED=()

LAST_LOG=""
log() { LAST_LOG="$*"; echo "netns-cluster: $*" >&2; }

cleanup() {
  local rc=$?
  # Workers first (PIDS[1..]), so they leave the cluster while the membership store is still up; redis (PIDS[0]) last.
  stop_pids() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done; }
  if [[ ${#PIDS[@]} -gt 1 ]]; then stop_pids "${PIDS[@]:1}"; fi
  if [[ ${#PIDS[@]} -gt 0 ]]; then stop_pids "${PIDS[0]}"; fi
  wait 2>/dev/null || true
  for ns in "${CREATED[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    for f in "$LOG_DIR"/*.log; do [[ -f "$f" ]] && { echo "----- $(basename "$f") (last 40 lines)" >&2; tail -40 "$f" >&2; }; done
    # Repeated after the logs, so that a caller showing only the tail sees why it failed.
    echo "netns-cluster: FAILED (exit $rc) after: ${LAST_LOG:-<no step logged>}" >&2
  fi
  if [[ $KEEP_LOGS -eq 1 ]]; then log "logs kept in $LOG_DIR"; else rm -rf "$LOG_DIR"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the three hosts -------------------------------------------------------------------------------------------
if ! ip netns add "$NS_C" 2>"$LOG_DIR/netns-probe.err"; then
  unsupported "ip netns add failed: $(tr '\n' ' ' < "$LOG_DIR/netns-probe.err")"
fi
CREATED+=("$NS_C")
ip netns add "$NS_A"; CREATED+=("$NS_A")
ip netns add "$NS_B"; CREATED+=("$NS_B")
for ns in "$NS_C" "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
# A bridge inside the coordinator's namespace; each worker's veth peer is plugged into it. Nothing of the subnet
# exists in the root namespace, so no packet of this test can leave the machine.
ip -n "$NS_C" link add br0 type bridge
ip -n "$NS_C" addr add "$IP_C/24" dev br0
ip -n "$NS_C" link set br0 up
attach() { # attach NS IP SUFFIX
  local ns="$1" addr="$2" end="v$$$3"
  ip link add "$end" netns "$ns" type veth peer name "${end}p" netns "$NS_C"
  ip -n "$ns" link set "$end" name eth0
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$NS_C" link set "${end}p" master br0
  ip -n "$NS_C" link set "${end}p" up
}
attach "$NS_A" "$IP_A" a
attach "$NS_B" "$IP_B" b
log "hosts: $NS_C=$IP_C (coordinator, redis)  $NS_A=$IP_A (worker a)  $NS_B=$IP_B (worker b)"

wait_tcp() { # wait_tcp NS HOST PORT WHAT
  for _ in $(seq 1 100); do
    ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  log "$4 at $2:$3 not reachable from $1 after 10 s"; return 1
}

# --- membership store -----------------------------------------------------------------------------------------
ip netns exec "$NS_C" "$REDIS_SERVER" --bind "$IP_C" --port "$REDIS_PORT" --save "" --appendonly no --protected-mode no \
  > "$LOG_DIR/redis.log" 2>&1 &
PIDS+=($!)
wait_tcp "$NS_A" "$IP_C" "$REDIS_PORT" "redis (from worker a's host)"
wait_tcp "$NS_B" "$IP_C" "$REDIS_PORT" "redis (from worker b's host)"

# --- workers ---------------------------------------------------------------------------------------------------
start_worker() { # start_worker NS IP NAME
  ip netns exec "$1" dotnet "$WORKER_DLL" --model "$MODEL" --worker-id "$3" --threads 1 \
    --grpc-host "$2" --grpc-port "$GRPC_PORT" --ops-port "$OPS_PORT" --clustering Redis --redis "$IP_C:$REDIS_PORT" --cluster-id "$CLUSTER_ID" \
    --silo-port "$SILO_PORT" --gateway-port "$GATEWAY_PORT" --Cluster:AdvertisedAddress "$2" --Placement:SettleDelay 00:00:00.5 \
    > "$LOG_DIR/$3.log" 2>&1 &
  PIDS+=($!)
}
start_worker "$NS_A" "$IP_A" worker-a
start_worker "$NS_B" "$IP_B" worker-b
ADDRESSES=()
for name in worker-a worker-b; do
  LINE=""
  for _ in $(seq 1 900); do
    LINE=$(grep -m1 '^EXPERT_WORKER_READY' "$LOG_DIR/$name.log" || true)
    [[ -n "$LINE" ]] && break
    sleep 0.1
  done
  [[ -n "$LINE" ]] || { log "$name not ready after 90 s"; exit 1; }
  ADDRESSES+=("$(sed -E 's/.*grpc=http:\/\/([^ ]+).*/\1/' <<< "$LINE")")
done
[[ "${ADDRESSES[0]}" == "$IP_A:$GRPC_PORT" && "${ADDRESSES[1]}" == "$IP_B:$GRPC_PORT" ]] \
  || { log "workers advertise ${ADDRESSES[*]}, expected $IP_A:$GRPC_PORT and $IP_B:$GRPC_PORT"; exit 1; }

# Both silos joined through Redis; the plan settles once both registered. Wait until both serve the same version.
VERSION=""
for _ in $(seq 1 900); do
  VA=$(grep -h "Shard serves plan" "$LOG_DIR/worker-a.log" | sed -E 's/.*plan ([0-9]+).*/\1/' | tail -1 || true) 
  VB=$(grep -h "Shard serves plan" "$LOG_DIR/worker-b.log" | sed -E 's/.*plan ([0-9]+).*/\1/' | tail -1 || true) 
  if [[ -n "$VA" && "$VA" == "$VB" ]] && grep -q "Shard serves plan $VA: [1-9][0-9]* experts" "$LOG_DIR/worker-a.log" \
     && grep -q "Shard serves plan $VA: [1-9][0-9]* experts" "$LOG_DIR/worker-b.log"; then
    VERSION="$VA"; break
  fi
  sleep 0.1
done
[[ -n "$VERSION" ]] || { log "the two workers did not settle on one plan serving experts on both within 90 s"; exit 1; }
MEMBERS=$(ip netns exec "$NS_C" redis-cli -h "$IP_C" -p "$REDIS_PORT" --scan 2>/dev/null | grep -c "$CLUSTER_ID" || true)
log "plan $VERSION served by worker a ($IP_A) and worker b ($IP_B); redis holds $MEMBERS membership key(s) for $CLUSTER_ID"
[[ "$MEMBERS" -ge 1 ]] || { log "no Orleans membership entry for $CLUSTER_ID in redis"; exit 1; }

# --- one generation across the hosts, and the same in-process --------------------------------------------------
WORKERS="$(IFS=,; echo "${ADDRESSES[*]}")"
ip netns exec "$NS_C" dotnet "$COORD_DLL" infer --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens "$MAX_NEW" \
  --threads 1 --json --workers "$WORKERS" --wire "$WIRE" > "$LOG_DIR/distributed.json" 2> "$LOG_DIR/coordinator.log" \
  || { log "distributed infer failed"; exit 1; }
grep -q "worker worker-a at http://$IP_A:$GRPC_PORT" "$LOG_DIR/coordinator.log" \
  && grep -q "worker worker-b at http://$IP_B:$GRPC_PORT" "$LOG_DIR/coordinator.log" \
  || { log "the coordinator did not hand-shake with both workers over the veth links"; exit 1; }
ip netns exec "$NS_C" dotnet "$COORD_DLL" infer --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens "$MAX_NEW" \
  --threads 1 --json > "$LOG_DIR/in-process.json" 2> "$LOG_DIR/in-process.log" || { log "in-process infer failed"; exit 1; }

TOKENS=$(grep -o '"new_tokens":\[[0-9,]*\]' "$LOG_DIR/distributed.json" || true)
[[ -n "$TOKENS" ]] || { log "distributed output has no new_tokens"; exit 1; }
if [[ "$WIRE" == fp32 ]]; then
  cmp -s "$LOG_DIR/distributed.json" "$LOG_DIR/in-process.json" \
    || { log "fp32 distributed output differs from the in-process output"; exit 1; }
  log "MATCH: distributed (2 hosts, fp32 wire) == in-process, byte for byte; $TOKENS"
else
  [[ "$TOKENS" == "$(grep -o '"new_tokens":\[[0-9,]*\]' "$LOG_DIR/in-process.json")" ]] \
    || { log "bf16 distributed tokens differ from in-process tokens"; exit 1; }
  log "MATCH: distributed (2 hosts, bf16 wire) greedy tokens == in-process; $TOKENS"
fi
# --- the OpenAI server on the coordinator host, asked by a client on another host ---------------------------------
SERVE_PORT=8000
ip netns exec "$NS_C" dotnet "$COORD_DLL" serve --model "$MODEL" --model-name netns-model --host "$IP_C" --port "$SERVE_PORT" --threads 1 \
  --workers "$WORKERS" --wire "$WIRE" > "$LOG_DIR/serve.out" 2> "$LOG_DIR/serve.log" &
PIDS+=($!)
for _ in $(seq 1 900); do grep -q "^listening on http://$IP_C:$SERVE_PORT" "$LOG_DIR/serve.out" && break; sleep 0.1; done
grep -q "^listening on http://$IP_C:$SERVE_PORT" "$LOG_DIR/serve.out" || { log "serve did not listen on $IP_C:$SERVE_PORT within 90 s"; exit 1; }
BODY="{\"model\":\"netns-model\",\"prompt\":[$PROMPT],\"max_tokens\":$MAX_NEW,\"temperature\":0,\"return_token_ids\":true}"
# A plain HTTP/1.1 request through bash's /dev/tcp from worker a's namespace: no client tool needed on the host.
ip netns exec "$NS_A" bash -c "exec 3<>/dev/tcp/$IP_C/$SERVE_PORT && printf 'POST /v1/completions HTTP/1.1\r\nHost: $IP_C\r\nContent-Type: application/json\r\nContent-Length: ${#BODY}\r\nConnection: close\r\n\r\n%s' '$BODY' >&3 && timeout 120 cat <&3" \
  > "$LOG_DIR/completion.http" 2>> "$LOG_DIR/serve.log" || { log "completion request from $NS_A failed"; exit 1; }
head -1 "$LOG_DIR/completion.http" | grep -q " 200 " || { log "completion answered: $(head -1 "$LOG_DIR/completion.http")"; exit 1; }
SERVED=$(grep -o '"token_ids":\[[0-9,]*\]' "$LOG_DIR/completion.http" | tail -1 | sed 's/"token_ids"/"new_tokens"/')
[[ "$SERVED" == "$TOKENS" ]] || { log "served completion $SERVED differs from infer $TOKENS"; exit 1; }
log "MATCH: serve on $IP_C answered a client on $IP_A with the same greedy tokens"

# --- operations endpoints across hosts: the coordinator's and each worker's /metrics and readiness ---------------
http_get() { # http_get NS HOST PORT PATH -> response on stdout
  ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3 && printf 'GET $4 HTTP/1.1\r\nHost: $2\r\nConnection: close\r\n\r\n' >&3 && timeout 30 cat <&3"
}
http_get "$NS_B" "$IP_C" "$SERVE_PORT" /metrics > "$LOG_DIR/coordinator.metrics" || { log "scraping the coordinator from $NS_B failed"; exit 1; }
grep -q '^moe_requests_total{.*outcome="length"} 1' "$LOG_DIR/coordinator.metrics" \
  && grep -Eq "^moe_worker_rows_total\{.*worker=\"(worker-a|$IP_A:$GRPC_PORT)\"\}" "$LOG_DIR/coordinator.metrics" \
  && grep -Eq "^moe_worker_rows_total\{.*worker=\"(worker-b|$IP_B:$GRPC_PORT)\"\}" "$LOG_DIR/coordinator.metrics" \
  || { log "coordinator /metrics lacks the request or per-worker series; it has: $(grep -E '^moe_(requests|worker_rows)_total' "$LOG_DIR/coordinator.metrics" | tr '\n' ' ')"; exit 1; }
# Each response goes to a file before it is read: with pipefail, `http_get | grep -q` fails whenever grep stops reading
# early and cat gets SIGPIPE, whatever the response said.
for target in "$IP_A" "$IP_B"; do
  http_get "$NS_C" "$target" "$OPS_PORT" /healthz/ready > "$LOG_DIR/ready-$target.http" || { log "asking worker $target:$OPS_PORT for readiness failed"; exit 1; }
  head -1 "$LOG_DIR/ready-$target.http" | grep -q ' 200 ' || { log "worker $target:$OPS_PORT is not ready: $(tr '\r\n' '  ' < "$LOG_DIR/ready-$target.http")"; exit 1; }
  http_get "$NS_C" "$target" "$OPS_PORT" /metrics > "$LOG_DIR/worker-$target.metrics" || { log "scraping worker $target:$OPS_PORT failed"; exit 1; }
  grep -q '^moe_shard_ready{.*} 1' "$LOG_DIR/worker-$target.metrics" || { log "worker $target /metrics lacks moe_shard_ready 1: $(grep '^moe_shard_ready' "$LOG_DIR/worker-$target.metrics" | tr '\n' ' ')"; exit 1; }
done
log "MATCH: coordinator and worker /metrics and readiness answer across hosts"
echo "NETNS_CLUSTER_OK plan=$VERSION workers=$WORKERS $TOKENS served=yes"
