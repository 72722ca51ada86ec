#!/usr/bin/env bash
# Multi-host on one machine: four network namespaces ("hosts") joined by veth pairs on a private test subnet that
# exists only inside this machine, one address each:
#
#   <prefix>-c  SUBNET.1  coordinator + the cluster's store (membership, placement plan, operation log): redis-server,
#                         or PostgreSQL with --store postgres (the project's own schema, applied by the first worker);
#                         holds the bridge
#   <prefix>-a  SUBNET.2  expert worker a
#   <prefix>-b  SUBNET.3  expert worker b
#   <prefix>-d  SUBNET.4  expert worker c, started later (a host joining the running cluster)
#
# Every link uses mutual TLS with a cluster CA made here (infra/make-cluster-certs.sh): the Orleans silo and gateway
# ports and the workers' gRPC data plane; the data plane also requires the cluster token. The coordinator is never
# told where the workers are: `infer` and `serve` join the cluster through its store (--clustering Redis, or AdoNet
# with --store postgres) and follow its placement plan. The script checks, with --wire fp32 (exact) or bf16:
#   1. infer across the hosts == infer in-process (fp32: the JSON, logits included, byte for byte);
#   2. serve on the coordinator host answers a client on another host with the same greedy tokens;
#   3. JOIN: worker c starts on a fourth host, becomes Active with experts; the tokens stay the same;
#   4. SIGKILL of worker b while completions are in flight: none fails, the tokens stay the same;
#   5. DRAIN + STOP: worker c drained through the admin API, then SIGTERM; the tokens stay the same;
#   6. RESTART: serve stopped (SIGTERM, within 10 s) and started again resumes with the same plan version and tokens;
#   7. /metrics (with the metrics token, 401 without) and readiness of the coordinator and the workers answer across hosts.
# It prints the seconds each event took (join -> serving, kill -> recovered, drain -> completed, restart -> ready).
# Every namespace, process and link is removed on exit (trap), also on failure or Ctrl+C. Needs root (ip netns),
# iproute2, redis-server (or PostgreSQL's server binaries and setpriv with --store postgres), openssl, and a Release
# build of the solution.
#
#   infra/netns-cluster.sh --model tests/fixtures/tiny-maverick
#   infra/netns-cluster.sh --model DIR --prompt-ids 500,12,7 --max-new-tokens 8 --subnet 10.77.6 --keep-logs
#   infra/netns-cluster.sh --model tests/fixtures/tiny-maverick --store postgres
#
# The prompt's greedy continuation must not hit an end-of-sequence token within --max-new-tokens (serve stops there,
# infer does not).
#
# Exit codes: 0 every check passed; 1 a step failed (logs are printed); 2 bad usage; 77 this machine cannot create
# network namespaces or lacks a tool (not root, no ip, no redis-server / PostgreSQL, no openssl): nothing was changed.
set -euo pipefail

MODEL="" PROMPT="500" MAX_NEW=16 SUBNET="10.77.6" CONFIG="${CONFIG:-Release}" KEEP_LOGS=0 WIRE="fp32" STORE="redis"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --prompt-ids) PROMPT="$2"; shift 2 ;;
    --max-new-tokens) MAX_NEW="$2"; shift 2 ;;
    --subnet) SUBNET="$2"; shift 2 ;;
    --wire) WIRE="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "netns-cluster: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -n "$MODEL" && -d "$MODEL" ]] || { echo "netns-cluster: --model DIR is required (an existing directory)" >&2; exit 2; }
[[ "$PROMPT" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "netns-cluster: --prompt-ids must be comma-separated token ids" >&2; exit 2; }
[[ "$MAX_NEW" =~ ^[0-9]+$ ]] || { echo "netns-cluster: --max-new-tokens must be a non-negative integer" >&2; exit 2; }
[[ "$WIRE" == fp32 || "$WIRE" == bf16 ]] || { echo "netns-cluster: --wire must be fp32 or bf16" >&2; exit 2; }
[[ "$STORE" == redis || "$STORE" == postgres ]] || { echo "netns-cluster: --store must be redis or postgres" >&2; exit 2; }
# Only 10.x/24 test subnets: the addresses exist solely inside the namespaces made here and are never routed out.
[[ "$SUBNET" =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && (( BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 )) \
  || { echo "netns-cluster: --subnet must be the first three octets of a 10.x.y.0/24 test subnet, e.g. 10.77.6" >&2; exit 2; }

unsupported() { echo "netns-cluster: UNSUPPORTED: $1" >&2; exit 77; }
[[ "$(id -u)" -eq 0 ]] || unsupported "network namespaces need root (running as uid $(id -u))"
command -v ip >/dev/null || unsupported "iproute2 'ip' is not installed (apt-get install iproute2)"
if [[ "$STORE" == redis ]]; then
  REDIS_SERVER="$(command -v redis-server || true)"
  [[ -n "$REDIS_SERVER" ]] || unsupported "redis-server is not installed (apt-get install redis-server)"
else
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$PG_BIN" && -x "$PG_BIN/initdb" && -x "$PG_BIN/postgres" ]] || unsupported "PostgreSQL server binaries are not installed (apt-get install postgresql)"
  id postgres >/dev/null 2>&1 || unsupported "no 'postgres' user to run PostgreSQL as (it refuses root)"
  command -v setpriv >/dev/null || unsupported "setpriv (util-linux) is not installed"
  command -v psql >/dev/null || unsupported "psql is not installed (apt-get install postgresql-client)"
fi
command -v openssl >/dev/null || unsupported "openssl is not installed (apt-get install openssl)"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="$(cd "$MODEL" && pwd)"
WORKER_DLL="$ROOT/src/ExpertWorker/bin/$CONFIG/net10.0/Distributed.ExpertWorker.dll"
COORD_DLL="$ROOT/src/Coordinator/bin/$CONFIG/net10.0/Distributed.Coordinator.dll"
for dll in "$WORKER_DLL" "$COORD_DLL"; do
  [[ -f "$dll" ]] || { echo "netns-cluster: build first: $dll missing (dotnet build -c $CONFIG)" >&2; exit 2; }
done

PREFIX="moe$$"            # namespace and interface names stay unique per run and within IFNAMSIZ (15)
NS_C="$PREFIX-c" NS_A="$PREFIX-a" NS_B="$PREFIX-b" NS_D="$PREFIX-d"
IP_C="$SUBNET.1" IP_A="$SUBNET.2" IP_B="$SUBNET.3" IP_D="$SUBNET.4"
GRPC_PORT=50051 OPS_PORT=9090 SILO_PORT=11111 GATEWAY_PORT=30000 REDIS_PORT=6379 PG_PORT=5432
# The membership options every process of the cluster takes (workers, infer, serve).
if [[ "$STORE" == redis ]]; then
  MEMBERSHIP=(--clustering Redis --redis "$IP_C:$REDIS_PORT")
else
  MEMBERSHIP=(--clustering AdoNet --Cluster:AdoNetConnectionString "Host=$IP_C;Port=$PG_PORT;Username=postgres;Database=postgres;Timeout=5")
fi
LOG_DIR="$(mktemp -d -t netns-cluster-XXXXXX)"
CLUSTER_ID="netns-$$"
PIDS=()
CREATED=()
# The cluster's shared secrets (a test cluster's: made per run, never reused).
export DISTRIBUTED_CLUSTER_TOKEN="netns-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export DISTRIBUTED_ADMIN_TOKEN="admin-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export DISTRIBUTED_API_KEY="key-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export DISTRIBUTED_METRICS_TOKEN="metrics-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"

LAST_LOG=""
log() { LAST_LOG="$*"; echo "netns-cluster: $*" >&2; }

cleanup() {
  local rc=$?
  # Workers first (PIDS[1..]), so they leave the cluster while the membership store is still up; the store (PIDS[0]) last.
  stop_pids() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done; }
  if [[ ${#PIDS[@]} -gt 1 ]]; then stop_pids "${PIDS[@]:1}"; fi
  if [[ ${#PIDS[@]} -gt 0 ]]; then stop_pids "${PIDS[0]}"; fi
  wait 2>/dev/null || true
  [[ -n "${PG_DIR:-}" ]] && rm -rf "$PG_DIR"
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
ip netns add "$NS_D"; CREATED+=("$NS_D")
for ns in "$NS_C" "$NS_A" "$NS_B" "$NS_D"; do ip -n "$ns" link set lo up; done
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
attach "$NS_D" "$IP_D" d
log "hosts: $NS_C=$IP_C (coordinator, $STORE)  $NS_A=$IP_A (worker a)  $NS_B=$IP_B (worker b)  $NS_D=$IP_D (worker c, joins later)"

# --- the cluster's TLS credentials: one CA, one certificate per host -------------------------------------------
PKI="$LOG_DIR/pki"
bash "$ROOT/infra/make-cluster-certs.sh" "$PKI" coordinator="$IP_C" worker-a="$IP_A" worker-b="$IP_B" worker-c="$IP_D" > "$LOG_DIR/pki.log" 2>&1 \
  || { log "making the cluster certificates failed: $(tail -3 "$LOG_DIR/pki.log")"; exit 1; }
tls() { echo --tls-cert "$PKI/$1.pem" --tls-key "$PKI/$1.key" --tls-ca "$PKI/ca.pem"; }

wait_tcp() { # wait_tcp NS HOST PORT WHAT
  for _ in $(seq 1 100); do
    ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  log "$4 at $2:$3 not reachable from $1 after 10 s"; return 1
}

# --- membership store -----------------------------------------------------------------------------------------
if [[ "$STORE" == redis ]]; then
  ip netns exec "$NS_C" "$REDIS_SERVER" --bind "$IP_C" --port "$REDIS_PORT" --save "" --appendonly no --protected-mode no \
    > "$LOG_DIR/redis.log" 2>&1 &
  PIDS+=($!)
  STORE_PORT=$REDIS_PORT
else
  # A throw-away PostgreSQL cluster (trust authentication on the test subnet only, no fsync), run as 'postgres'
  # (setpriv execs it, so the PID cleanup signals is the postmaster's).
  PG_DIR="$(mktemp -d -t netns-cluster-pg-XXXXXX)"   # outside LOG_DIR (0700, root's): 'postgres' must reach it
  chown postgres: "$PG_DIR"
  setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --no-sync \
    > "$LOG_DIR/initdb.log" 2>&1 || { log "initdb failed: $(tail -3 "$LOG_DIR/initdb.log")"; exit 1; }
  echo "host all all $SUBNET.0/24 trust" >> "$PG_DIR/data/pg_hba.conf"
  ip netns exec "$NS_C" setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -k "$PG_DIR" \
    -c listen_addresses="$IP_C" -c fsync=off > "$LOG_DIR/postgres.log" 2>&1 &
  PIDS+=($!)
  STORE_PORT=$PG_PORT
fi
wait_tcp "$NS_A" "$IP_C" "$STORE_PORT" "$STORE (from worker a's host)"
wait_tcp "$NS_B" "$IP_C" "$STORE_PORT" "$STORE (from worker b's host)"

# --- helpers ---------------------------------------------------------------------------------------------------
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# http NS HOST PORT METHOD PATH [BODY] -> the raw HTTP response on stdout (bash /dev/tcp: no client tool needed)
http() {
  local ns="$1" host="$2" port="$3" method="$4" path="$5" body="${6:-}" token="${7-}"
  # The admin API takes the admin token, the OpenAI API the API key (serve listens off loopback: it requires one).
  if [[ $# -lt 7 ]]; then if [[ "$path" == /admin/* ]]; then token="$DISTRIBUTED_ADMIN_TOKEN"; else token="$DISTRIBUTED_API_KEY"; fi; fi
  ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$host/$port && printf '%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
    '$method' '$path' '$host' '$token' '${#body}' '$body' >&3 && timeout 120 cat <&3"
}
status_of() { head -1 | awk '{print $2}'; }
SERVE_PORT=8000
admin_cluster() { http "$NS_A" "$IP_C" "$SERVE_PORT" GET /admin/v1/cluster; }
# worker_field JSON WORKER FIELD -> the field of that worker's object in /admin/v1/cluster
worker_field() { grep -o "\"id\":\"$2\"[^}]*" <<< "$1" | grep -o "\"$3\":[^,}]*" | head -1 | cut -d: -f2 | tr -d '"'; }
complete() { # complete NS [MAX_TOKENS] -> greedy token ids of the prompt through serve, or FAIL
  local body="{\"model\":\"netns-model\",\"prompt\":[$PROMPT],\"max_tokens\":${2:-$MAX_NEW},\"temperature\":0,\"return_token_ids\":true}"
  local r; r=$(http "$1" "$IP_C" "$SERVE_PORT" POST /v1/completions "$body" 2>&1 || true)
  if [[ "$(status_of <<< "$r")" == 200 ]]; then grep -o '"token_ids":\[[0-9,]*\]' <<< "$r" | tail -1 | sed 's/"token_ids"/"new_tokens"/'; else echo "FAIL $(head -1 <<< "$r") $(tail -c 300 <<< "$r")"; fi
}

# --- workers ---------------------------------------------------------------------------------------------------
start_worker() { # start_worker NS IP NAME
  # shellcheck disable=SC2046
  ip netns exec "$1" dotnet "$WORKER_DLL" --model "$MODEL" --worker-id "$3" --threads 1 \
    --grpc-host "$2" --grpc-port "$GRPC_PORT" --ops-port "$OPS_PORT" "${MEMBERSHIP[@]}" --cluster-id "$CLUSTER_ID" \
    --silo-port "$SILO_PORT" --gateway-port "$GATEWAY_PORT" --advertised-address "$2" $(tls "$3") \
    --Placement:SettleDelay 00:00:00.5 --ExpertWorker:RetireDelay 00:00:02 --probe-timeout 00:00:01 --Cluster:NumMissedProbesLimit 2 \
    --Placement:ProbeTimeout 00:00:01 > "$LOG_DIR/$3.log" 2>&1 &
  WORKER_PIDS[$3]=$!
  PIDS+=($!)
}
wait_ready_line() { # wait_ready_line NAME -> the advertised gRPC address
  local line=""
  for _ in $(seq 1 900); do
    line=$(grep -m1 '^EXPERT_WORKER_READY' "$LOG_DIR/$1.log" || true)
    [[ -n "$line" ]] && break
    sleep 0.1
  done
  [[ -n "$line" ]] || { log "$1 not ready after 90 s"; exit 1; }
  sed -E 's/.*grpc=(https?:\/\/[^ ]+).*/\1/' <<< "$line"
}
declare -A WORKER_PIDS
start_worker "$NS_A" "$IP_A" worker-a
start_worker "$NS_B" "$IP_B" worker-b
ADDR_A=$(wait_ready_line worker-a)
ADDR_B=$(wait_ready_line worker-b)
[[ "$ADDR_A" == "https://$IP_A:$GRPC_PORT" && "$ADDR_B" == "https://$IP_B:$GRPC_PORT" ]] \
  || { log "workers advertise $ADDR_A and $ADDR_B, expected https://$IP_A:$GRPC_PORT and https://$IP_B:$GRPC_PORT"; exit 1; }
if [[ "$STORE" == redis ]]; then
  MEMBERS=$(ip netns exec "$NS_C" redis-cli -h "$IP_C" -p "$REDIS_PORT" --scan 2>/dev/null | grep -c "$CLUSTER_ID" || true)
else
  # Active silos (status 3) of this cluster in the project's own membership table.
  MEMBERS=$(ip netns exec "$NS_A" psql "host=$IP_C port=$PG_PORT user=postgres dbname=postgres connect_timeout=5" -tAc \
    "SELECT count(*) FROM distributed_membership WHERE cluster_id = '$CLUSTER_ID' AND status = 3" 2>"$LOG_DIR/psql.err" || true)
fi
log "workers a ($ADDR_A) and b ($ADDR_B) joined through $STORE ($MEMBERS membership entries for $CLUSTER_ID)"
[[ "$MEMBERS" =~ ^[0-9]+$ && "$MEMBERS" -ge 1 ]] || { log "no Orleans membership entry for $CLUSTER_ID in $STORE: $MEMBERS $(cat "$LOG_DIR/psql.err" 2>/dev/null)"; exit 1; }

# --- 1. one generation across the hosts (infer joins the cluster), and the same in-process ------------------------
# shellcheck disable=SC2046
ip netns exec "$NS_C" dotnet "$COORD_DLL" infer --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens "$MAX_NEW" \
  --threads 1 --json "${MEMBERSHIP[@]}" --cluster-id "$CLUSTER_ID" $(tls coordinator) --wire "$WIRE" \
  > "$LOG_DIR/distributed.json" 2> "$LOG_DIR/coordinator.log" || { log "distributed infer failed"; exit 1; }
ip netns exec "$NS_C" dotnet "$COORD_DLL" infer --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens "$MAX_NEW" \
  --threads 1 --json > "$LOG_DIR/in-process.json" 2> "$LOG_DIR/in-process.log" || { log "in-process infer failed"; exit 1; }
TOKENS=$(grep -o '"new_tokens":\[[0-9,]*\]' "$LOG_DIR/distributed.json" || true)
[[ -n "$TOKENS" ]] || { log "distributed output has no new_tokens"; exit 1; }
if [[ "$WIRE" == fp32 ]]; then
  cmp -s "$LOG_DIR/distributed.json" "$LOG_DIR/in-process.json" \
    || { log "fp32 distributed output differs from the in-process output"; exit 1; }
  log "MATCH: distributed (2 hosts, fp32 wire, TLS) == in-process, byte for byte; $TOKENS"
else
  [[ "$TOKENS" == "$(grep -o '"new_tokens":\[[0-9,]*\]' "$LOG_DIR/in-process.json")" ]] \
    || { log "bf16 distributed tokens differ from in-process tokens"; exit 1; }
  log "MATCH: distributed (2 hosts, bf16 wire, TLS) greedy tokens == in-process; $TOKENS"
fi

# --- 2. the OpenAI server on the coordinator host, following the cluster, asked by a client on another host ------
start_serve() {
  # shellcheck disable=SC2046
  ip netns exec "$NS_C" dotnet "$COORD_DLL" serve --model "$MODEL" --model-name netns-model --host "$IP_C" --port "$SERVE_PORT" --threads 1 \
    "${MEMBERSHIP[@]}" --cluster-id "$CLUSTER_ID" $(tls coordinator) --wire "$WIRE" \
    --Distribution:DispatchTimeout 00:00:20 > "$LOG_DIR/serve$1.out" 2> "$LOG_DIR/serve$1.log" &
  SERVE_PID=$!
  PIDS+=($!)
  for _ in $(seq 1 900); do grep -qs "^listening on http://$IP_C:$SERVE_PORT" "$LOG_DIR/serve$1.out" && break; sleep 0.1; done
  grep -q "^listening on http://$IP_C:$SERVE_PORT" "$LOG_DIR/serve$1.out" || { log "serve did not listen on $IP_C:$SERVE_PORT within 90 s"; exit 1; }
  for _ in $(seq 1 600); do [[ "$(http "$NS_A" "$IP_C" "$SERVE_PORT" GET /healthz/ready | status_of)" == 200 ]] && return 0; sleep 0.1; done
  log "serve not ready within 60 s: $(http "$NS_A" "$IP_C" "$SERVE_PORT" GET /healthz/ready | tail -1)"; exit 1
}
start_serve 1
[[ "$(http "$NS_A" "$IP_C" "$SERVE_PORT" GET /v1/models "" "wrong-key" | status_of)" == 401 ]] \
  || { log "serve's OpenAI API on $IP_C answered without its API key"; exit 1; }
SERVED=$(complete "$NS_A")
[[ "$SERVED" == "$TOKENS" ]] || { log "served completion $SERVED differs from infer $TOKENS"; exit 1; }
C=$(admin_cluster)
[[ "$(worker_field "$C" worker-a state)" == Active && "$(worker_field "$C" worker-b state)" == Active ]] \
  || { log "admin API does not list both workers Active: $(tail -1 <<< "$C")"; exit 1; }
log "MATCH: serve on $IP_C (following the cluster, no worker list) answered a client on $IP_A with the same greedy tokens"

# --- 3. a worker joins from a fourth host ---------------------------------------------------------------------------
T0=$(now)
start_worker "$NS_D" "$IP_D" worker-c
wait_ready_line worker-c > /dev/null
for _ in $(seq 1 600); do
  C=$(admin_cluster)
  [[ "$(worker_field "$C" worker-c state)" == Active && "$(worker_field "$C" worker-c experts_held)" -gt 0 ]] 2>/dev/null \
    && grep -q '"serving":true' <<< "$C" && break
  sleep 0.1
done
[[ "$(worker_field "$C" worker-c state)" == Active ]] || { log "worker c did not become Active with experts: $(tail -1 <<< "$C")"; exit 1; }
JOIN_S=$(secs "$T0" "$(now)")
[[ "$(complete "$NS_B")" == "$TOKENS" ]] || { log "tokens changed after worker c joined"; exit 1; }
log "JOIN: worker c on $IP_D Active with $(worker_field "$C" worker-c experts_held) experts ${JOIN_S} s after it was started; tokens unchanged"

# --- 4. SIGKILL of worker b while completions are in flight ---------------------------------------------------------
# Long completions (LONG_TOKENS) so that they are still generating when the worker dies; their baseline comes first.
LONG_TOKENS=96
LONG=$(complete "$NS_A" "$LONG_TOKENS")
[[ "$LONG" == '"new_tokens":['* ]] || { log "long baseline completion failed: $LONG"; exit 1; }
for i in 1 2 3 4; do (complete "$NS_A" "$LONG_TOKENS" > "$LOG_DIR/inflight-$i.txt") & done
for _ in $(seq 1 300); do
  http "$NS_A" "$IP_C" "$SERVE_PORT" GET /admin/v1/serving | grep -q '"running":[1-9]' && break
  sleep 0.05
done
http "$NS_A" "$IP_C" "$SERVE_PORT" GET /admin/v1/serving | grep -q '"running":[1-9]' || { log "the long completions never ran"; exit 1; }
T0=$(now)
kill -9 "${WORKER_PIDS[worker-b]}"
for i in 1 2 3 4; do for _ in $(seq 1 1200); do [[ -s "$LOG_DIR/inflight-$i.txt" ]] && break; sleep 0.1; done; done
KILL_S=$(secs "$T0" "$(now)")
for i in 1 2 3 4; do
  [[ "$(cat "$LOG_DIR/inflight-$i.txt")" == "$LONG" ]] || { log "in-flight completion $i after the kill: $(cat "$LOG_DIR/inflight-$i.txt")"; exit 1; }
done
for _ in $(seq 1 600); do
  C=$(admin_cluster)
  grep -q '"serving":true' <<< "$C" && [[ -z "$(worker_field "$C" worker-b state)" || "$(worker_field "$C" worker-b experts_assigned)" == 0 ]] && break
  sleep 0.1
done
REPAIR_S=$(secs "$T0" "$(now)")
[[ "$(complete "$NS_A")" == "$TOKENS" ]] || { log "tokens changed after worker b was killed"; exit 1; }
log "KILL: worker b SIGKILLed with 4 completions in flight; all 4 completed with the same tokens ${KILL_S} s after the kill; its experts re-placed (plan serving without it) after ${REPAIR_S} s"

# --- 5. drain worker c through the admin API, then stop it ---------------------------------------------------------
T0=$(now)
R=$(http "$NS_A" "$IP_C" "$SERVE_PORT" POST /admin/v1/workers/worker-c/drain "{}")
OP=$(grep -o '"id":"[^"]*"' <<< "$R" | head -1 | cut -d'"' -f4)
[[ -n "$OP" ]] || { log "drain refused: $(head -1 <<< "$R") $(tail -1 <<< "$R")"; exit 1; }
STATE=""
for _ in $(seq 1 600); do
  STATE=$(http "$NS_A" "$IP_C" "$SERVE_PORT" GET "/admin/v1/operations/$OP" | grep -o '"state":"[A-Za-z]*"' | cut -d'"' -f4)
  [[ "$STATE" == Completed || "$STATE" == Failed ]] && break
  sleep 0.1
done
[[ "$STATE" == Completed ]] || { log "drain operation $OP ended $STATE"; exit 1; }
DRAIN_S=$(secs "$T0" "$(now)")
for i in 1 2 3 4; do (complete "$NS_B" > "$LOG_DIR/drain-$i.txt") & done
kill -TERM "${WORKER_PIDS[worker-c]}"
for _ in $(seq 1 300); do kill -0 "${WORKER_PIDS[worker-c]}" 2>/dev/null || break; sleep 0.1; done
kill -0 "${WORKER_PIDS[worker-c]}" 2>/dev/null && { log "worker c did not exit within 30 s of SIGTERM"; exit 1; }
for i in 1 2 3 4; do
  for _ in $(seq 1 1200); do [[ -s "$LOG_DIR/drain-$i.txt" ]] && break; sleep 0.1; done
  [[ "$(cat "$LOG_DIR/drain-$i.txt")" == "$TOKENS" ]] || { log "completion $i around the drained worker's stop: $(cat "$LOG_DIR/drain-$i.txt")"; exit 1; }
done
log "DRAIN: worker c drained in ${DRAIN_S} s (operation $OP) and stopped; 4 completions around the stop kept their tokens"

# --- 6. restart serve -------------------------------------------------------------------------------------------------
VERSION=$(admin_cluster | grep -o '"plan_version":[0-9]*' | head -1 | cut -d: -f2)
T0=$(now)
kill -TERM "$SERVE_PID"
for _ in $(seq 1 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVE_PID" 2>/dev/null && { log "serve did not stop within 10 s of SIGTERM"; exit 1; }
STOP_S=$(secs "$T0" "$(now)")
T0=$(now)
start_serve 2
RESTART_S=$(secs "$T0" "$(now)")
VERSION2=$(admin_cluster | grep -o '"plan_version":[0-9]*' | head -1 | cut -d: -f2)
[[ -n "$VERSION" && "$VERSION2" == "$VERSION" ]] || { log "plan version $VERSION before the restart, $VERSION2 after"; exit 1; }
[[ "$(complete "$NS_A")" == "$TOKENS" ]] || { log "tokens changed after serve restarted"; exit 1; }
log "RESTART: serve stopped in ${STOP_S} s, ready again in ${RESTART_S} s with plan $VERSION and the same tokens"

# --- 7. operations endpoints across hosts: the coordinator's and each worker's /metrics and readiness ---------------
http_get() { # http_get NS HOST PORT PATH [TOKEN] -> response on stdout (TOKEN: sent as the bearer token)
  local auth=""; [[ -n "${5:-}" ]] && auth="Authorization: Bearer $5\r\n"
  ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3 && printf 'GET $4 HTTP/1.1\r\nHost: $2\r\n${auth}Connection: close\r\n\r\n' >&3 && timeout 30 cat <&3"
}
# /metrics across hosts answers only with the metrics token: without it, 401 from the coordinator and from a worker.
for target in "$NS_B $IP_C $SERVE_PORT coordinator" "$NS_C $IP_A $OPS_PORT worker-a"; do
  read -r ns host port name <<< "$target"
  http_get "$ns" "$host" "$port" /metrics > "$LOG_DIR/$name.anonymous.http" || { log "scraping $name without a token failed to connect"; exit 1; }
  head -1 "$LOG_DIR/$name.anonymous.http" | grep -q ' 401 ' || { log "$name served /metrics without the metrics token: $(head -1 "$LOG_DIR/$name.anonymous.http")"; exit 1; }
done
http_get "$NS_B" "$IP_C" "$SERVE_PORT" /metrics "$DISTRIBUTED_METRICS_TOKEN" > "$LOG_DIR/coordinator.metrics" || { log "scraping the coordinator from $NS_B failed"; exit 1; }
grep -q '^moe_requests_total{.*outcome="length"} [1-9]' "$LOG_DIR/coordinator.metrics" \
  && grep -Eq '^moe_worker_rows_total\{.*worker="worker-a"' "$LOG_DIR/coordinator.metrics" \
  || { log "coordinator /metrics lacks the request or per-worker series; it has: $(grep -E '^moe_(requests|worker_rows)_total' "$LOG_DIR/coordinator.metrics" | tr '\n' ' ')"; exit 1; }
# Each response goes to a file before it is read: with pipefail, `http_get | grep -q` fails whenever grep stops reading
# early and cat gets SIGPIPE, whatever the response said.
http_get "$NS_C" "$IP_A" "$OPS_PORT" /healthz/ready > "$LOG_DIR/ready-a.http" || { log "asking worker a for readiness failed"; exit 1; }
head -1 "$LOG_DIR/ready-a.http" | grep -q ' 200 ' || { log "worker a is not ready: $(tr '\r\n' '  ' < "$LOG_DIR/ready-a.http")"; exit 1; }
http_get "$NS_C" "$IP_A" "$OPS_PORT" /metrics "$DISTRIBUTED_METRICS_TOKEN" > "$LOG_DIR/worker-a.metrics" || { log "scraping worker a failed"; exit 1; }
grep -q '^moe_shard_ready{.*} 1' "$LOG_DIR/worker-a.metrics" || { log "worker a /metrics lacks moe_shard_ready 1"; exit 1; }
log "MATCH: coordinator and worker /metrics (with the metrics token; 401 without) and readiness answer across hosts"
echo "NETNS_CLUSTER_OK plan=$VERSION $TOKENS served=yes join_s=$JOIN_S kill_s=$KILL_S repair_s=$REPAIR_S drain_s=$DRAIN_S stop_s=$STOP_S restart_s=$RESTART_S"
