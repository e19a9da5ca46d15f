#!/usr/bin/env bash
# Digest REGISTER over UDP, driven by sipp, against Palisade and Kamailio in
# one run; then INVITE/BYE calls through admission on Palisade. See
# README.md next to this file.
#
#   bench/sip/run.sh                      # defaults below
#   RATES="1000 2000" DURATION=5 bench/sip/run.sh
#
# Needs: sipp (Debian sip-tester 3.6.1), kamailio (5.6), curl, jq, python3,
# and a release build of palisade (cargo build --release -p palisade).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PALISADE_BIN=${PALISADE_BIN:-$TARGET/release/palisade}
# Fixed sipp rates (registrations/s), each for DURATION seconds, per server.
RATES=${RATES:-"500 1000 2000 3000 4000 8000"}
DURATION=${DURATION:-10}
# Then a closed loop: MAX_INFLIGHT registrations in flight, as fast as the
# server answers, for DURATION seconds.
MAX_INFLIGHT=${MAX_INFLIGHT:-64}
USERS=${USERS:-500}
# Server worker threads (Palisade: tokio workers) / UDP worker processes
# (Kamailio: children).
WORKERS=${WORKERS:-2}
# Calls (Palisade only): rates (calls/s), each for CALL_DURATION seconds, each
# call held CALL_HOLD_MS between the ACK and the BYE.
CALL_RATES=${CALL_RATES:-"50 100 200 300"}
CALL_DURATION=${CALL_DURATION:-10}
CALL_HOLD_MS=${CALL_HOLD_MS:-1000}
CALL_USERS=${CALL_USERS:-100}
# Palisade's database: SQLite in the run's directory unless set.
PALISADE_DB_URL=${PALISADE_DB_URL:-}
# Palisade's abuse state (used nonces, failure counters): in the process
# unless set (e.g. redis://127.0.0.1:6379).
PALISADE_REDIS_URL=${PALISADE_REDIS_URL:-}
# Palisade's sip.bruteforce.threshold. Shipped: 5, counted per address
# before each check; from one address with more than a few authorizations
# in flight at once that blocks it (403 "blocked"), so the bench raises it
# (Kamailio has no such rule). BRUTEFORCE_THRESHOLD=5 shows the effect.
BRUTEFORCE_THRESHOLD=${BRUTEFORCE_THRESHOLD:-1000000}
SERVERS=${SERVERS:-"kamailio palisade"}
OUT=${OUT:-$(mktemp -d /tmp/sip-bench.XXXXXX)}
mkdir -p "$OUT"

has() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for tool in sipp curl jq python3 $(has kamailio && echo kamailio); do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 2; }
done
! has palisade || [ -x "$PALISADE_BIN" ] || { echo "run.sh: no $PALISADE_BIN (cargo build --release -p palisade)" >&2; exit 2; }

free_port() { # $1: udp or tcp
    python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=='udp' else socket.SOCK_STREAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

log() { echo "$*" | tee -a "$OUT/summary.txt"; }

# CPU seconds (user+system) used so far by a process and its children
# threads (Palisade: one process; Kamailio: the main process and its forks).
cpu_of() {
    local total=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

log "sip bench: $(date -u +%FT%TZ), $(nproc) cores, workers=$WORKERS, users=$USERS, rates=[$RATES] x ${DURATION}s, closed loop $MAX_INFLIGHT in flight"
log "load before: $(uptime)"

# --- Kamailio --------------------------------------------------------------
if has kamailio; then
KAM_PORT=$(free_port udp)
mkdir -p "$OUT/kamailio"
kamailio -f "$HERE/kamailio.cfg" -DD -E -Y "$OUT/kamailio" \
    -A "BENCH_LISTEN=udp:127.0.0.1:$KAM_PORT" -A "BENCH_CHILDREN=$WORKERS" \
    >"$OUT/kamailio/log" 2>&1 &
KAM_PID=$!
sleep 1
PIDS+=("$KAM_PID")
{
    echo SEQUENTIAL
    for i in $(seq 0 $((USERS - 1))); do
        u=$(printf 'kb%05d' "$i")
        pw=$(printf 'palisade-bench:%s' "$u" | md5sum | cut -c1-24)
        echo "$u;bench.invalid;[authentication username=$u password=$pw]"
    done
} >"$OUT/kamailio/users.csv"
fi

# --- Palisade --------------------------------------------------------------
if has palisade; then
P_HTTP=$(free_port tcp)
P_SIP=$(free_port udp)
MK=mk_dev_master_key_do_not_use_in_production_0000000
mkdir -p "$OUT/palisade/data"
cat >"$OUT/palisade/palisade.toml" <<EOF
mode = "dev"
[server]
listen = "127.0.0.1:$P_HTTP"
data_dir = "$OUT/palisade/data"
[admin]
master_key = "$MK"
[log]
level = "warn"
# A load test from one address: the per-address and per-tenant request
# limits off, the tenant's concurrent calls far above what the run holds.
[rate_limits]
ip_per_minute = 0
auth_ip_per_minute = 0
key_per_minute = 0
tenant_per_minute = 0
message_create_per_minute = 0
call_create_per_minute = 0
concurrent_calls_per_tenant = 100000
[carrier]
sandbox_delay_ms = 10
sandbox_call_secs = 600
[sip]
udp_listen = "127.0.0.1:$P_SIP"
digest_algorithms = ["MD5"]
# sipp is one source address: its flood guard and per-source cap raised
# far above the load (everything else as shipped).
max_transactions_per_source = 100000
[sip.pike]
window_ms = 1000
max_requests = 1000000000
[sip.bruteforce]
threshold = $BRUTEFORCE_THRESHOLD
EOF
if [ -n "$PALISADE_DB_URL" ]; then
    printf '[database]\nurl = "%s"\n' "$PALISADE_DB_URL" >>"$OUT/palisade/palisade.toml"
fi
if [ -n "$PALISADE_REDIS_URL" ]; then
    printf '[redis]\nurl = "%s"\nkey_prefix = "sipbench%s"\n' "$PALISADE_REDIS_URL" "$$" >>"$OUT/palisade/palisade.toml"
fi
(cd "$OUT/palisade" && TOKIO_WORKER_THREADS=$WORKERS exec "$PALISADE_BIN" --config "$OUT/palisade/palisade.toml" serve \
    >"$OUT/palisade/log" 2>&1) &
PAL_PID=$!
PIDS+=("$PAL_PID")
BASE="http://127.0.0.1:$P_HTTP"
for _ in $(seq 1 300); do
    curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || { echo "palisade did not start:"; tail -20 "$OUT/palisade/log"; exit 1; }
# The server is the process running the binary (the subshell exec'd it).
api() { # METHOD PATH TOKEN [BODY]
    curl -fsS -X "$1" "$BASE$2" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' ${4:+-d "$4"}
}
OWNER=owner-$$@bench.example.com
OWNER_PW="violet tram ocean ninety"
TENANT=$(api POST /sysadmin/v1/tenants "$MK" "{\"name\":\"Bench\",\"owner\":{\"email\":\"$OWNER\",\"password\":\"$OWNER_PW\"}}" | jq -r .id)
TOKEN=$(curl -fsS "$BASE/v1/auth/login" -H 'Content-Type: application/json' \
    -d "{\"email\":\"$OWNER\",\"password\":\"$OWNER_PW\"}" | jq -r .access_token)
api POST "/sysadmin/v1/tenants/$TENANT/credits" "$MK" '{"amount": 1000000000}' >/dev/null
CALLEE=+34612000222
N=$((USERS > CALL_USERS ? USERS : CALL_USERS))
echo SEQUENTIAL >"$OUT/palisade/users.csv"
REALM=
for i in $(seq 0 $((N - 1))); do
    id=$(api POST /v1/identities "$TOKEN" "{\"number\":\"+3461$(printf '%07d' "$i")\"}" | jq -r .id)
    # sipp 3.6.1 reads a password starting with 0x as hex: such a one is
    # revoked and made again.
    while :; do
        read -r user pw REALM < <(api POST "/v1/identities/$id/sip-credentials" "$TOKEN" '{}' | jq -r '"\(.username) \(.password) \(.realm)"')
        case "$pw" in
            0x* | 0X*) api DELETE "/v1/identities/$id/sip-credentials/$user" "$TOKEN" >/dev/null ;;
            *) break ;;
        esac
    done
    echo "$user;$REALM;[authentication username=$user password=$pw];$CALLEE" >>"$OUT/palisade/users.csv"
    [ "$i" != 0 ] || FIRST=("$user" "$pw")
done
head -n $((USERS + 1)) "$OUT/palisade/users.csv" >"$OUT/palisade/register-users.csv"
head -n $((CALL_USERS + 1)) "$OUT/palisade/users.csv" >"$OUT/palisade/call-users.csv"
fi

server_pids() { # the server's processes: Palisade's one, Kamailio's main process and forks
    if [ "$1" = kamailio ]; then echo "$KAM_PID $(ps -o pid= --ppid "$KAM_PID" | tr '\n' ' ')"; else echo "$PAL_PID"; fi
}

# One sipp run: NAME SERVER ADDR SCENARIO USERS_CSV, then sipp options.
run_sipp() {
    local name=$1 server=$2 addr=$3 scenario=$4 users=$5
    shift 5
    local dir="$OUT/runs/$name"
    mkdir -p "$dir"
    local pids cpu0 cpu1 t0 t1
    pids=$(server_pids "$server")
    # shellcheck disable=SC2086
    cpu0=$(cpu_of $pids)
    t0=$(date +%s.%N)
    (cd "$dir" && sipp "$addr" -sf "$HERE/$scenario" -inf "$users" -t u1 -i 127.0.0.1 -p "$SIPP_PORT" \
        -nostdin -trace_err -trace_rtt -rtt_freq 1 -trace_stat -fd 1 "$@" >stdout 2>stderr) || true
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    cpu1=$(cpu_of $pids)
    python3 "$HERE/summarize.py" "$dir" "$name" "$(python3 -c "print($t1 - $t0)")" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" \
        "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/summary.txt"
}

# One sipp port for every run: a user's Contact (sip:user@127.0.0.1:PORT)
# stays the same, so each registration refreshes its binding instead of
# adding one (both servers allow 5 contacts per user).
SIPP_PORT=$(free_port udp)

addr_of() { if [ "$1" = kamailio ]; then echo "127.0.0.1:$KAM_PORT"; else echo "127.0.0.1:$P_SIP"; fi; }
users_of() { if [ "$1" = kamailio ]; then echo "$OUT/kamailio/users.csv"; else echo "$OUT/palisade/register-users.csv"; fi; }

# Both refuse a replayed Authorization and accept the next nc.
if has kamailio; then
    log "kamailio replay check: $(python3 "$HERE/replay_check.py" "$KAM_PORT" kb00000 bench.invalid \
        "$(printf 'palisade-bench:kb00000' | md5sum | cut -c1-24)")"
fi
if has palisade; then
    log "palisade replay check: $(python3 "$HERE/replay_check.py" "$P_SIP" "${FIRST[0]}" "$REALM" "${FIRST[1]}")"
fi

log ""
log "REGISTER with digest MD5 (401, then the authorized REGISTER and its 200), UDP, $USERS users"
log "$(python3 "$HERE/summarize.py" --header)"
for r in $RATES; do
    for s in $SERVERS; do
        run_sipp "register-$s-$r" "$s" "$(addr_of "$s")" register.xml "$(users_of "$s")" \
            -r "$r" -m $((r * DURATION)) -timeout $((DURATION + 20))s
    done
done
for s in $SERVERS; do
    run_sipp "register-$s-max$MAX_INFLIGHT" "$s" "$(addr_of "$s")" register.xml "$(users_of "$s")" \
        -r 100000 -l "$MAX_INFLIGHT" -timeout "${DURATION}s"
done

if has palisade; then
    log ""
    log "Palisade INVITE/BYE through admission (407, authorized INVITE, 200 from the sandbox carrier (sandbox_delay_ms 10), ACK, ${CALL_HOLD_MS} ms, BYE), $CALL_USERS users"
    log "$(python3 "$HERE/summarize.py" --header)"
    for r in $CALL_RATES; do
        run_sipp "call-palisade-$r" palisade "127.0.0.1:$P_SIP" call.xml "$OUT/palisade/call-users.csv" \
            -r "$r" -m $((r * CALL_DURATION)) -d "$CALL_HOLD_MS" -auth_uri "$CALLEE@$REALM" \
            -timeout $((CALL_DURATION + 30))s
    done
fi
log ""
log "load after: $(uptime)"
log "results and logs: $OUT"
