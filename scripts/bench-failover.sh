#!/usr/bin/env bash
# Failover RTO of walferry (witness + agents) beside pg_auto_failover 2.0 (Debian package
# postgresql-15-auto-failover) and Patroni 3.0.2 with etcd 3.4 (Debian packages patroni,
# etcd-server), on this machine, in one run, every tool with its default timings.
#
# Each tool runs a primary and one streaming standby on 127.0.0.1 (pg_auto_failover adds its
# monitor, Patroni a single-member etcd, walferry its witness). Two load clients each try one
# INSERT every ~50 ms through libpq's multi-host conninfo
#   host=127.0.0.1,127.0.0.1 port=P1,P2 target_session_attrs=read-write connect_timeout=1
# (one lists the nodes in each order, so that once a node is promoted one client asks it
# first), and note every acknowledged id with the port that took it. libpq 15 rounds
# connect_timeout=1 up to 2 s, and a frozen server accepts the TCP connection: while one node
# is frozen every attempt waits those 2 s, so sigstop RTOs include up to ~2 s of it (the same
# for every tool). Then a fault hits the node that takes the writes:
#
#  postgres-kill9  kill -9 of every postgres process of the primary; the tool's own process
#                  (walferry agent, pg_autoctl, patroni) lives on. pg_autoctl and Patroni
#                  restart a crashed postgres in place rather than failing over: whichever
#                  node takes the first write is named.
#  node-death      kill -9 of the tool's process on the primary and all its postgres processes
#                  at once: the stand-in for a host's death. After the trial the node's tool
#                  process is started again (the host comes back) and the tool rejoins it.
#  sigstop         SIGSTOP of every postgres process of the primary (the tool's process runs
#                  on). A trial waits SIGSTOP_RTO_TIMEOUT (45 s) for a write; then the
#                  processes get SIGCONT, and after a failover the old primary is offered
#                  writes directly (its own port) for SIGSTOP_WATCH seconds: any it
#                  acknowledges is counted ("old primary acked"; for walferry it must stay 0).
#  blip            SIGSTOP of the primary's tool process and postgres for 2 s, then SIGCONT:
#                  a short stall that should fail nothing over. "failovers" counts the trials
#                  after which another node takes the writes.
#
# RTO = from the fault (taken just before the kill) to the first acknowledged INSERT that a
# client started after the fault. After each trial every acknowledged id is looked up on the
# node that takes writes, and again once the tool has settled; missing ones are "lost". The cluster of a tool is reused from trial
# to trial (the primary alternates); before each trial the script waits until the tool again
# has a primary and a streaming standby it could promote, and builds a fresh one if it does
# not get there in READY_TIMEOUT seconds; then both nodes are checkpointed (see settle).
# Every process of a tool runs as the postgres user; the peers' packages are installed with
# apt-get at the start, and a peer that cannot be installed or set up is reported and skipped.
#
#   bash scripts/bench-failover.sh                                  # TRIALS=10, all tools
#   TRIALS=2 bash scripts/bench-failover.sh                         # smoke run
#   TOOLS=walferry FAULTS="node-death blip" bash scripts/bench-failover.sh
#   TOOLS=walferry-sync FAULTS=postgres-kill9 bash scripts/bench-failover.sh   # lost commits, sync
#   LOGS_TO=/tmp/x                                                  # keep the tools' logs
#   BENCH_DIR=/dev/shm/x                                            # clusters off the disk
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/lib/pg.sh
export PGOPTIONS="-c client_min_messages=warning"

TRIALS=${TRIALS:-10}
TOOLS=${TOOLS:-walferry pg_auto_failover patroni}
FAULTS=${FAULTS:-postgres-kill9 node-death sigstop blip}
# Seconds to wait for the first write after a fault, and for a tool to be ready again.
RTO_TIMEOUT=${RTO_TIMEOUT:-180}
# A tool may never fail a frozen primary over (pg_auto_failover does not while its keeper
# lives): sigstop trials wait less, then resume the primary.
SIGSTOP_RTO_TIMEOUT=${SIGSTOP_RTO_TIMEOUT:-45}
READY_TIMEOUT=${READY_TIMEOUT:-240}
# Seconds of writes before the fault, and after the first write once the fault is over.
WARMUP=${WARMUP:-1}
AFTER=${AFTER:-1}
SIGSTOP_WATCH=${SIGSTOP_WATCH:-5}
# 0: no CHECKPOINT on both nodes before each trial (see settle; shows a walferry bug).
SETTLE=${SETTLE:-1}
BLIP_SECONDS=${BLIP_SECONDS:-2}
# Every tool's nodes keep this much WAL after a checkpoint. pg_rewind of a primary killed
# with kill -9 first runs its crash recovery, whose checkpoint otherwise recycles the segment
# holding the last checkpoint before the divergence, and then cannot find it (the walferry
# agent then copies the node from the new primary with pg_basebackup: slower to get ready
# again). It changes nothing about when a failover happens.
WAL_KEEP=${WAL_KEEP:-512MB}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench}
# A directory to copy the tools' logs into at the end (they go with the work directory).
LOGS_TO=${LOGS_TO:-}

for f in $FAULTS; do
    case "$f" in postgres-kill9 | node-death | sigstop | blip) ;; *)
        echo "FAULTS: unknown fault '$f' (postgres-kill9, node-death, sigstop, blip)" >&2
        exit 2
        ;;
    esac
done
for t in $TOOLS; do
    case "$t" in walferry | walferry-sync | pg_auto_failover | patroni) ;; *)
        echo "TOOLS: unknown tool '$t' (walferry, walferry-sync, pg_auto_failover, patroni)" >&2
        exit 2
        ;;
    esac
done
want_tool() { [[ " $TOOLS " == *" $1 "* ]]; }
# The shell functions of a tool: walferry-sync -> walferry_sync_setup, ...
fn() { echo "${1//-/_}_$2"; }

bash scripts/setup.sh >/dev/null
echo "==> building walferry (release)"
cargo build --release --bin walferry
WALFERRY=$REPO/target/release/walferry

# --- the peers' packages ----------------------------------------------------------------
declare -A UNAVAILABLE
if want_tool pg_auto_failover || want_tool patroni; then
    pkgs=()
    want_tool pg_auto_failover && pkgs+=(postgresql-15-auto-failover)
    want_tool patroni && pkgs+=(patroni etcd-server)
    echo "==> installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}" >/dev/null; }; then
        echo "WARNING: apt-get could not install ${pkgs[*]}; the peers it lacks are skipped" >&2
    fi
fi
if want_tool pg_auto_failover && ! command -v pg_autoctl >/dev/null; then
    UNAVAILABLE[pg_auto_failover]="pg_autoctl is not installed (package postgresql-15-auto-failover)"
fi
if want_tool patroni; then
    if ! [ -x /usr/bin/patroni ] || ! [ -x /usr/bin/python3 ]; then
        UNAVAILABLE[patroni]="patroni is not installed (package patroni)"
    elif ! command -v etcd >/dev/null; then
        UNAVAILABLE[patroni]="etcd is not installed (package etcd-server)"
    fi
fi
for t in "${!UNAVAILABLE[@]}"; do echo "WARNING: $t is not measured: ${UNAVAILABLE[$t]}" >&2; done

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/failover-XXXXXX")
chown postgres: "$WORK"
chmod 0755 "$WORK"
cd "$WORK"
LOGS=$WORK/logs
mkdir "$LOGS"
chown postgres: "$LOGS"

# --- processes ----------------------------------------------------------------------------
# Long-running processes of the postgres user are started with setpriv (which execs, so $!
# is the process itself, not a runuser waiting for it) and remembered for the cleanup.
STARTED=()
as_pg_exec() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "$@"; }

descendants() { # PID...: these processes and all their descendants
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1
            do { changed = 0
                 for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            } while (changed)
            for (p in keep) print p }'
}
alive() { local p out=(); for p in "$@"; do kill -0 "$p" 2>/dev/null && out+=("$p"); done; echo "${out[*]:-}"; }
postmaster_of() { # PGDATA: the running postmaster's pid, or nothing
    local pid
    pid=$(head -1 "$1/postmaster.pid" 2>/dev/null) || return 0
    [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = postgres ] && echo "$pid"
    return 0
}
# PGDATA: every postgres process working in it (postgres runs in its data directory): the postmaster,
# its children, and any orphan of an earlier postmaster (a backend killed postmasters leave
# waiting on a lock holds the shared memory, and no new postmaster starts there).
postgres_pids() {
    local d p comm
    d=$(realpath "$1" 2>/dev/null) || return 0
    while read -r p; do
        p=${p%/cwd}
        comm=
        { read -r comm <"$p/comm"; } 2>/dev/null || true
        [ "$comm" = postgres ] && echo "${p#/proc/}"
    done < <(find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$d" 2>/dev/null)
    return 0
}
stop_postgres_dir() { # PGDATA: stop whatever postgres runs there, at once
    local pids
    [ -d "$1" ] || return 0
    pids=$(postgres_pids "$1")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -CONT $pids 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$1" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    pids=$(alive $pids)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}
kill_tree() { # PID...: SIGCONT then SIGKILL to them and their descendants
    local pids
    pids=$(descendants "$@" | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    # shellcheck disable=SC2086
    kill -CONT $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
}

LOAD_PIDS=()
ALL_PGDATA=()
cleanup() {
    local rc=$? pid d
    trap - EXIT INT TERM
    set +e
    [ -d "$WORK" ] && touch "$WORK/load.stop"
    for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for t in walferry pg_auto_failover patroni; do "$(fn "$t" teardown)" 2>/dev/null || true; done
    [ -z "$LOGS_TO" ] || { mkdir -p "$LOGS_TO" && cp -r "$LOGS"/. "$LOGS_TO"/; }
    [ ${#STARTED[@]} -eq 0 ] || kill_tree "${STARTED[@]}"
    for d in "${ALL_PGDATA[@]}"; do stop_postgres_dir "$d"; done
    wait 2>/dev/null || true
    cd /
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- ports ----------------------------------------------------------------------------------
TAKEN=" "
NEXT_PORT=$((20000 + RANDOM % 9000))
free_port() { # VAR: a port nobody listens on and not handed out yet
    local p=$NEXT_PORT
    while port_in_use "$p" || [[ "$TAKEN" == *" $p "* ]]; do p=$((p + 1)); done
    TAKEN+="$p "
    NEXT_PORT=$((p + 1))
    printf -v "$1" '%s' "$p"
}

# --- SQL ----------------------------------------------------------------------------------
# As a client would connect: TCP, user postgres (every tool's nodes trust 127.0.0.1).
sql_port() { # PORT SQL: one value; fails when the server does not answer within 3 s
    PGCONNECT_TIMEOUT=2 timeout -k 1 3 "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$1 user=postgres dbname=postgres" -c "$2" 2>/dev/null
}
# The node that takes writes now (by SQL), among N1 and N2: its name, or nothing.
NODES=(n1 n2)
declare -A NODE_PORT NODE_PGDATA SUP_PID
writer_node() {
    local n
    for n in "${NODES[@]}"; do
        [ "$(sql_port "${NODE_PORT[$n]}" "SELECT NOT pg_is_in_recovery()")" = t ] && echo "$n" && return 0
    done
    return 0
}
node_of_port() { local n; for n in "${NODES[@]}"; do [ "${NODE_PORT[$n]}" = "$1" ] && echo "$n" && return 0; done; echo "port$1"; }
other_node() { if [ "$1" = n1 ]; then echo n2; else echo n1; fi; }
# Postgres-level readiness: exactly one writer, the other node streaming from it.
pg_pair_ready() {
    local w s
    w=$(writer_node)
    [ -n "$w" ] || return 1
    s=$(other_node "$w")
    [ "$(sql_port "${NODE_PORT[$s]}" "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")" = t ] || return 1
    [ "$(sql_port "${NODE_PORT[$w]}" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" -ge 1 ] 2>/dev/null
}
wait_for() { # SECONDS WHAT CMD...: until CMD succeeds
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        "$@" && return 0
        sleep 0.5
    done
    echo "    timed out after ${secs}s waiting for $what" >&2
    return 1
}

# --- load -----------------------------------------------------------------------------------
# load_client FILE FIRST_ID PORTS: INSERTs until $WORK/load.stop exists (at most RTO_TIMEOUT +
# 120 s); each acknowledged one is noted as "id started_at acked_at port".
load_client() {
    local file=$1 id=$2 ports=$3 started port end=$((SECONDS + RTO_TIMEOUT + 120))
    local conninfo="host=127.0.0.1,127.0.0.1 port=$ports user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=1"
    while [ ! -e "$WORK/load.stop" ] && ((SECONDS < end)); do
        started=$EPOCHREALTIME
        if port=$(timeout -k 1 5 "$PG_BIN/psql" -X -A -t -q "$conninfo" \
            -c "INSERT INTO rto_probe (id) VALUES ($id) RETURNING inet_server_port()" 2>/dev/null); then
            echo "$id $started $EPOCHREALTIME $port" >>"$file"
        fi
        id=$((id + 1))
        sleep 0.05
    done
}
start_load() { # TRIAL_BASE_ID
    rm -f "$WORK/load.stop" "$WORK"/acked.*
    : >"$WORK/acked.1"
    : >"$WORK/acked.2"
    load_client "$WORK/acked.1" "$(($1 + 1))" "${NODE_PORT[n1]},${NODE_PORT[n2]}" &
    LOAD_PIDS=($!)
    load_client "$WORK/acked.2" "$(($1 + 500000))" "${NODE_PORT[n2]},${NODE_PORT[n1]}" &
    LOAD_PIDS+=($!)
}
stop_load() {
    local pid
    touch "$WORK/load.stop"
    for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    LOAD_PIDS=()
}
# first_ack_after T: "seconds port" of the first acknowledged INSERT started at or after T.
first_ack_after() {
    cat "$WORK"/acked.* | awk -v t="$1" '$2 >= t && (best == "" || $3 < best) { best = $3; port = $4 }
        END { if (best != "") printf "%.3f %s\n", best - t, port }'
}

# --- results ----------------------------------------------------------------------------------
declare -A RTOS LOST LOST_IDS NODES_TOOK OLDW FAILOVERS TRIALS_DONE SKIPPED
record() { # TOOL FAULT RTO|- LOSTCOUNT LOSTIDS NODE OLDWRITES FAILEDOVER
    local k="$1/$2"
    RTOS[$k]+="$3 "
    LOST[$k]=$((${LOST[$k]:-0} + $4))
    [ -z "$5" ] || LOST_IDS[$k]+="$5 "
    NODES_TOOK[$k]+="$6 "
    OLDW[$k]=$((${OLDW[$k]:-0} + $7))
    FAILOVERS[$k]=$((${FAILOVERS[$k]:-0} + $8))
    TRIALS_DONE[$k]=$((${TRIALS_DONE[$k]:-0} + 1))
}

# =============================== walferry ===================================================
WF=$WORK/walferry
WF_WITNESS_PID=
WF_WITNESS_ADDR=
# walferry-sync: the witness --synchronous, and every node's synchronous_standby_names names
# the other one (ANY 1 of both: a primary is not its own standby).
WF_SYNC=0
WF_SYNC_NAMES="ANY 1 (n1, n2)"
wf_node_start_pg() { # NODE
    as_pg "$PG_BIN/pg_ctl" -D "${NODE_PGDATA[$1]}" -l "$WF/$1/server.log" -w -t 60 start >/dev/null
}
wf_agent() { # NODE: start its agent
    local n=$1
    as_pg_exec "$WALFERRY" -v agent --node "$n" -D "${NODE_PGDATA[$n]}" \
        --local-conninfo "host=$WF/$n port=${NODE_PORT[$n]} user=postgres dbname=postgres" \
        --address "host=127.0.0.1 port=${NODE_PORT[$n]}" \
        --witness "$WF_WITNESS_ADDR" --secret-file "$WF/secret" \
        --state-file "$WF/$n/agent.json" --log-file "$WF/$n/server.log" \
        "${WF_AGENT_FLAGS[@]}" >>"$LOGS/walferry-agent-$n.log" 2>&1 &
    SUP_PID[$n]=$!
    STARTED+=($!)
    disown $!
}
walferry_setup() {
    local witness_flags=()
    WF_AGENT_FLAGS=()
    if [ "$WF_SYNC" = 1 ]; then
        witness_flags=(--synchronous)
        WF_AGENT_FLAGS=(--synchronous-standby-names "$WF_SYNC_NAMES")
    fi
    rm -rf "$WF"
    mkdir -p "$WF/n1" "$WF/n2" "$WF/witness"
    chown -R postgres: "$WF"
    printf 'a-secret-for-the-failover-bench-%s\n' "$RANDOM$RANDOM" >"$WF/secret"
    chmod 0600 "$WF/secret"
    chown postgres: "$WF/secret"
    as_pg_exec "$WALFERRY" witness --listen 127.0.0.1:0 --data "$WF/witness/data" \
        --secret-file "$WF/secret" "${witness_flags[@]}" >"$WF/witness/out" 2>>"$LOGS/walferry-witness.log" &
    WF_WITNESS_PID=$!
    STARTED+=($!)
    disown $!
    local i
    for i in $(seq 1 100); do
        WF_WITNESS_ADDR=$(sed -n 's/^listening on //p' "$WF/witness/out")
        [ -n "$WF_WITNESS_ADDR" ] && break
        sleep 0.1
    done
    [ -n "$WF_WITNESS_ADDR" ] || { echo "    the witness did not start; see $LOGS/walferry-witness.log" >&2; return 1; }
    local n
    for n in n1 n2; do
        free_port "NODE_PORT[$n]"
        NODE_PGDATA[$n]=$WF/$n/data
        ALL_PGDATA+=("${NODE_PGDATA[$n]}")
    done
    as_pg "$PG_BIN/initdb" -D "$WF/n1/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        --no-instructions >/dev/null
    cat >>"$WF/n1/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = ${NODE_PORT[n1]}
unix_socket_directories = '$WF/n1'
wal_log_hints = on
wal_receiver_status_interval = 1s
wal_keep_size = '$WAL_KEEP'
logging_collector = off
CONF
    [ "$WF_SYNC" = 0 ] || echo "synchronous_standby_names = '$WF_SYNC_NAMES'" >>"$WF/n1/data/postgresql.conf"
    wf_node_start_pg n1
    sql_port "${NODE_PORT[n1]}" "CREATE TABLE rto_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())" >/dev/null
    as_pg "$PG_BIN/pg_basebackup" -D "$WF/n2/data" -h "$WF/n1" -p "${NODE_PORT[n1]}" -U postgres \
        -X stream -c fast -R >/dev/null
    cat >>"$WF/n2/data/postgresql.conf" <<CONF
port = ${NODE_PORT[n2]}
unix_socket_directories = '$WF/n2'
CONF
    wf_node_start_pg n2
    wf_agent n1
    wf_agent n2
}
wf_status() {
    as_pg "$WALFERRY" status --json --witness "$WF_WITNESS_ADDR" --secret-file "$WF/secret" --timeout 2 2>/dev/null
}
walferry_ready() {
    pg_pair_ready || return 1
    wf_status | jq -e '.primary as $p | $p != null
        and ([.nodes[] | select(.health == "ok" and (.stale | not))] | length) == 2
        and ([.candidates[] | select(.node != $p and .eligible)] | length) >= 1' >/dev/null 2>&1
}
walferry_restart_node() { wf_agent "$1"; }
walferry_sync_setup() { WF_SYNC=1 && walferry_setup; }
walferry_sync_ready() { walferry_ready; }
walferry_sync_restart_node() { walferry_restart_node "$1"; }
walferry_sync_teardown() { walferry_teardown; }
walferry_teardown() {
    local n
    for n in n1 n2; do
        [ -n "${SUP_PID[$n]:-}" ] && kill_tree "${SUP_PID[$n]}"
        SUP_PID[$n]=
    done
    [ -n "$WF_WITNESS_PID" ] && kill_tree "$WF_WITNESS_PID"
    WF_WITNESS_PID=
    for n in n1 n2; do stop_postgres_dir "$WF/$n/data"; done
}

# ============================ pg_auto_failover ==============================================
PA=$WORK/pgaf
PA_MONITOR_PORT=
PA_MONITOR_PID=
pa_env() {
    as_pg_exec env PATH="$PG_BIN:$PATH" XDG_CONFIG_HOME="$PA/xdg/config" XDG_DATA_HOME="$PA/xdg/data" \
        PG_CONFIG="$PG_BIN/pg_config" "$@"
}
pa_monitor_sql() {
    PGCONNECT_TIMEOUT=2 timeout -k 1 5 "$PG_BIN/psql" -X -A -t -q \
        "host=127.0.0.1 port=$PA_MONITOR_PORT user=autoctl_node dbname=pg_auto_failover" -c "$1" 2>/dev/null
}
pa_node_run() { # NODE: pg_autoctl run (the keeper and its postgres)
    local n=$1
    pa_env pg_autoctl run --pgdata "${NODE_PGDATA[$n]}" >>"$LOGS/pgaf-$n.log" 2>&1 &
    SUP_PID[$n]=$!
    STARTED+=($!)
    disown $!
}
pa_node_create() { # NODE: pg_autoctl create postgres --run (a first node initdb's, a second clones)
    local n=$1
    pa_env pg_autoctl create postgres --pgdata "${NODE_PGDATA[$n]}" --pgport "${NODE_PORT[$n]}" \
        --hostname 127.0.0.1 --name "$n" --auth trust --no-ssl \
        --pgctl "$PG_BIN/pg_ctl" \
        --monitor "postgres://autoctl_node@127.0.0.1:$PA_MONITOR_PORT/pg_auto_failover?sslmode=disable" \
        --run >>"$LOGS/pgaf-$n.log" 2>&1 &
    SUP_PID[$n]=$!
    STARTED+=($!)
    disown $!
}
pa_states() { pa_monitor_sql "SELECT string_agg(nodename || ':' || reportedstate || '/' || goalstate, ' ' ORDER BY nodename) FROM pgautofailover.node"; }
pa_state_is() { [ "$(pa_states)" = "$1" ]; }
pg_auto_failover_setup() {
    rm -rf "$PA"
    mkdir -p "$PA/xdg/config" "$PA/xdg/data"
    chown -R postgres: "$PA"
    free_port PA_MONITOR_PORT
    local n
    for n in n1 n2; do
        free_port "NODE_PORT[$n]"
        NODE_PGDATA[$n]=$PA/$n
        ALL_PGDATA+=("${NODE_PGDATA[$n]}")
    done
    ALL_PGDATA+=("$PA/monitor")
    pa_env pg_autoctl create monitor --pgdata "$PA/monitor" --pgport "$PA_MONITOR_PORT" \
        --hostname 127.0.0.1 --auth trust --no-ssl --pgctl "$PG_BIN/pg_ctl" \
        >>"$LOGS/pgaf-monitor.log" 2>&1
    pa_env pg_autoctl run --pgdata "$PA/monitor" >>"$LOGS/pgaf-monitor.log" 2>&1 &
    PA_MONITOR_PID=$!
    STARTED+=($!)
    disown $!
    wait_for 60 "the pg_auto_failover monitor" pa_monitor_sql "SELECT 1" >/dev/null || return 1
    pa_node_create n1
    wait_for 120 "pg_auto_failover node n1 to be single" pa_state_is "n1:single/single" || return 1
    # The clients connect as postgres over TCP; what pg_autoctl wrote into pg_hba.conf is
    # for its own users. The standby's copy comes with its base backup.
    echo "host all postgres 127.0.0.1/32 trust" >>"$PA/n1/pg_hba.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$PA/n1" reload >/dev/null
    wait_for 30 "n1 to take SQL" sql_port "${NODE_PORT[n1]}" "SELECT 1" >/dev/null || return 1
    sql_port "${NODE_PORT[n1]}" "ALTER SYSTEM SET wal_keep_size = '$WAL_KEEP'" >/dev/null
    sql_port "${NODE_PORT[n1]}" "SELECT pg_reload_conf()" >/dev/null
    sql_port "${NODE_PORT[n1]}" "CREATE TABLE rto_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())" >/dev/null
    pa_node_create n2
}
pg_auto_failover_ready() {
    pg_pair_ready || return 1
    local s
    s=$(pa_states)
    [ "$s" = "n1:primary/primary n2:secondary/secondary" ] || [ "$s" = "n1:secondary/secondary n2:primary/primary" ]
}
pg_auto_failover_restart_node() { pa_node_run "$1"; }
pg_auto_failover_teardown() {
    local n
    for n in n1 n2; do
        [ -n "${SUP_PID[$n]:-}" ] && kill_tree "${SUP_PID[$n]}"
        SUP_PID[$n]=
    done
    [ -n "$PA_MONITOR_PID" ] && kill_tree "$PA_MONITOR_PID"
    PA_MONITOR_PID=
    for n in n1 n2 monitor; do stop_postgres_dir "$PA/$n"; done
}

# ================================ Patroni ===================================================
PT=$WORK/patroni
PT_ETCD_PID=
PT_ETCD_PORT=
declare -A PT_API
pt_node_run() { # NODE
    local n=$1
    as_pg_exec /usr/bin/python3 /usr/bin/patroni "$PT/$n.yml" >>"$LOGS/patroni-$n.log" 2>&1 &
    SUP_PID[$n]=$!
    STARTED+=($!)
    disown $!
}
pt_config() { # NODE
    local n=$1
    cat >"$PT/$n.yml" <<YAML
scope: walferry-bench
namespace: /walferry-bench/
name: $n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${PT_API[$n]}
  connect_address: 127.0.0.1:${PT_API[$n]}
etcd3:
  hosts: 127.0.0.1:$PT_ETCD_PORT
bootstrap:
  dcs:
    postgresql:
      use_pg_rewind: true
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:${NODE_PORT[$n]}
  connect_address: 127.0.0.1:${NODE_PORT[$n]}
  data_dir: ${NODE_PGDATA[$n]}
  bin_dir: $PG_BIN
  pgpass: $PT/pgpass-$n
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: '$PT/sock-$n'
    wal_log_hints: 'on'
    wal_keep_size: '$WAL_KEEP'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
YAML
    mkdir -p "$PT/sock-$n"
    chown postgres: "$PT/$n.yml" "$PT/sock-$n"
}
pt_http() { curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/$2" 2>/dev/null || true; }
patroni_setup() {
    rm -rf "$PT"
    mkdir -p "$PT/etcd"
    chown -R postgres: "$PT"
    local peer n
    free_port PT_ETCD_PORT
    free_port peer
    as_pg_exec etcd --name bench --data-dir "$PT/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$PT_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$PT_ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" --initial-cluster-state new \
        >>"$LOGS/etcd.log" 2>&1 &
    PT_ETCD_PID=$!
    STARTED+=($!)
    disown $!
    wait_for 60 "etcd" bash -c "curl -s -m 2 http://127.0.0.1:$PT_ETCD_PORT/health | grep -q true" || return 1
    for n in n1 n2; do
        free_port "NODE_PORT[$n]"
        free_port "PT_API[$n]"
        NODE_PGDATA[$n]=$PT/$n
        ALL_PGDATA+=("${NODE_PGDATA[$n]}")
        pt_config "$n"
    done
    pt_node_run n1
    wait_for 120 "Patroni node n1 to lead" bash -c "[ \"\$(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:${PT_API[n1]}/primary)\" = 200 ]" || return 1
    wait_for 30 "n1 to take SQL" sql_port "${NODE_PORT[n1]}" "SELECT 1" >/dev/null || return 1
    sql_port "${NODE_PORT[n1]}" "CREATE TABLE rto_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())" >/dev/null
    pt_node_run n2
}
patroni_ready() {
    pg_pair_ready || return 1
    local a b
    a=$(pt_http "${PT_API[n1]}" primary)$(pt_http "${PT_API[n2]}" replica)
    b=$(pt_http "${PT_API[n1]}" replica)$(pt_http "${PT_API[n2]}" primary)
    [ "$a" = 200200 ] || [ "$b" = 200200 ]
}
patroni_restart_node() { pt_node_run "$1"; }
patroni_teardown() {
    local n
    for n in n1 n2; do
        [ -n "${SUP_PID[$n]:-}" ] && kill_tree "${SUP_PID[$n]}"
        SUP_PID[$n]=
    done
    for n in n1 n2; do stop_postgres_dir "$PT/$n"; done
    [ -n "$PT_ETCD_PID" ] && kill_tree "$PT_ETCD_PID"
    PT_ETCD_PID=
}

# ================================= trials ===================================================
# Every trial starts from checkpointed nodes: CHECKPOINT on the primary, and once the standby
# has replayed it, on the standby (a restartpoint: its pg_control then names the timeline it
# replays). Without this the walferry agent of a standby rejoined by pg_rewind reports the
# old timeline (from pg_control) as soon as its WAL receiver has lost the primary, and the
# witness refuses to promote it ("it is on timeline 1, the primary on 2"): a node death right
# after a failover would never be failed over. Same for every tool; no timing changes.
settle() {
    local w s lsn
    w=$(writer_node)
    [ -n "$w" ] || { echo "    settle: no node takes writes" >&2; return 1; }
    s=$(other_node "$w")
    sql_port "${NODE_PORT[$w]}" "CHECKPOINT" >/dev/null || { echo "    settle: CHECKPOINT on $w failed or took over 3 s" >&2; return 1; }
    lsn=$(sql_port "${NODE_PORT[$w]}" "SELECT pg_current_wal_lsn()") || return 1
    wait_for 30 "the standby to replay the checkpoint" \
        sql_true "${NODE_PORT[$s]}" "SELECT pg_last_wal_replay_lsn() >= '$lsn'" || return 1
    sql_port "${NODE_PORT[$s]}" "CHECKPOINT" >/dev/null || { echo "    settle: CHECKPOINT on $s failed or took over 3 s" >&2; return 1; }
}
sql_true() { [ "$(sql_port "$1" "$2")" = t ]; }

TRIAL_SEQ=0
# missing_ids NODE BASE: the acknowledged ids of this trial that NODE does not have.
missing_ids() {
    local got
    cat "$WORK"/acked.* | awk '{print $1}' | sort -n >"$WORK/ids.acked"
    if ! got=$(sql_port "${NODE_PORT[$1]}" "SELECT id FROM rto_probe WHERE id >= $2 AND id < $(($2 + 1000000)) ORDER BY id"); then
        echo "    could not read the rows back from $1" >&2
        return 1
    fi
    echo "$got" | sort -n >"$WORK/ids.present"
    comm -23 "$WORK/ids.acked" "$WORK/ids.present" | tr '\n' ' '
}
# run_trial TOOL FAULT: one fault on the node that takes writes; records the outcome.
run_trial() {
    local tool=$1 fault=$2 base primary pids t0 res rto port took i
    TRIAL_SEQ=$((TRIAL_SEQ + 1))
    base=$((TRIAL_SEQ * 1000000))
    primary=$(writer_node)
    [ -n "$primary" ] || { echo "    no writer before the fault" >&2; return 1; }
    start_load "$base"
    sleep "$WARMUP"
    if [ -z "$(first_ack_after 0)" ]; then
        stop_load
        echo "    the load clients got no write acknowledged before the fault" >&2
        return 1
    fi
    local pgdata=${NODE_PGDATA[$primary]} sup=${SUP_PID[$primary]}
    case "$fault" in
    postgres-kill9 | sigstop) pids=$(postgres_pids "$pgdata" | tr '\n' ' ') ;;
    node-death | blip) pids="$(descendants "$sup" | tr '\n' ' ') $(postgres_pids "$pgdata" | tr '\n' ' ')" ;;
    esac
    local sig=-9
    [ "$fault" = sigstop ] || [ "$fault" = blip ] && sig=-STOP
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2086
    kill $sig $pids 2>/dev/null || true
    # A second pass: a backend forked for a client between the listing and the signal.
    local late
    late=$(postgres_pids "$pgdata" | tr '\n' ' ')
    # shellcheck disable=SC2086
    [ -z "${late// /}" ] || kill $sig $late 2>/dev/null || true
    pids+=" $late"
    if [ "$fault" = blip ]; then
        sleep "$BLIP_SECONDS"
        # shellcheck disable=SC2086
        kill -CONT $pids 2>/dev/null || true
    fi
    local wait_max=$RTO_TIMEOUT
    [ "$fault" = sigstop ] && wait_max=$SIGSTOP_RTO_TIMEOUT
    res=
    for ((i = 0; i < wait_max * 10; i++)); do
        res=$(first_ack_after "$t0")
        [ -n "$res" ] && break
        sleep 0.1
    done
    rto=-
    took=none
    if [ -n "$res" ]; then
        read -r rto port <<<"$res"
        took=$(node_of_port "$port")
        sleep "$AFTER"
    fi
    if [ "$fault" = blip ]; then
        # Long enough for any tool to have decided to fail over (and done it) or not.
        sleep 8
    fi
    stop_load

    # sigstop without a failover: the primary resumes, then its rows are counted.
    local other
    other=$(other_node "$primary")
    if [ "$fault" = sigstop ] && [ "$took" != "$other" ]; then
        # shellcheck disable=SC2086
        kill -CONT $pids 2>/dev/null || true
        wait_for 60 "a writer after SIGCONT" bash -c "[ -n \"\$(PGCONNECT_TIMEOUT=2 timeout 3 $PG_BIN/psql -X -A -t -q 'host=127.0.0.1,127.0.0.1 port=${NODE_PORT[n1]},${NODE_PORT[n2]} user=postgres dbname=postgres target_session_attrs=read-write' -c 'SELECT 1' 2>/dev/null)\" ]" || true
    fi

    # Every acknowledged id, on the node that takes writes now.
    local writer lost=0 lost_ids=""
    writer=$(writer_node)
    if [ -n "$writer" ]; then
        lost_ids=$(missing_ids "$writer" "$base")
        lost=$(wc -w <<<"$lost_ids")
    else
        echo "    no node takes writes after the trial: lost commits not counted yet" >&2
    fi

    # sigstop with a failover: the old primary comes back; does it acknowledge writes?
    local oldw=0
    if [ "$fault" = sigstop ] && [ "$took" = "$other" ]; then
        # shellcheck disable=SC2086
        kill -CONT $pids 2>/dev/null || true
        local end=$((SECONDS + SIGSTOP_WATCH)) k=0
        while ((SECONDS < end)); do
            k=$((k + 1))
            sql_port "${NODE_PORT[$primary]}" "INSERT INTO rto_probe (id) VALUES ($((base + 900000 + k)))" >/dev/null 2>&1 && oldw=$((oldw + 1))
            sleep 0.2
        done
    fi
    local failed_over=0
    if [ -n "$writer" ] && [ "$writer" != "$primary" ]; then failed_over=1; fi
    if [ "$fault" = node-death ]; then "$(fn "$tool" restart_node)" "$primary"; fi

    # Once the tool has settled (the old primary back as a standby, or back as the primary:
    # Patroni's resumed old primary can take the leader key back), the same count again:
    # writes the interim primary acknowledged may have gone with its demotion.
    local settled_ids
    if wait_for "$READY_TIMEOUT" "$tool to settle after the trial" "$(fn "$tool" ready)"; then
        writer=$(writer_node)
        # What is missing now is lost for good (an id the interim primary lacked may be back).
        if [ -n "$writer" ] && settled_ids=$(missing_ids "$writer" "$base"); then
            lost_ids=$settled_ids
            lost=$(wc -w <<<"$lost_ids")
        fi
    fi

    local who=none
    [ "$took" = "$primary" ] && who=old-primary
    [ "$took" = "$other" ] && who=standby
    record "$tool" "$fault" "$rto" "$lost" "${lost_ids% }" "$who" "$oldw" "$failed_over"
    local extra=
    [ "$fault" = sigstop ] && extra=", old primary acknowledged $oldw direct write(s) after SIGCONT"
    [ "$fault" = blip ] && extra=", writer afterwards: ${writer:-none}"
    printf '    %s on %s: first write after %s s on %s, lost %d%s%s\n' "$fault" "$primary" "$rto" "$took" \
        "$lost" "${lost_ids:+ (ids $(cut -d' ' -f1-8 <<<"${lost_ids% }")$([ "$lost" -le 8 ] || echo " ..."))}" "$extra"
}

run_tool() {
    local tool=$1 fault trial ok
    echo "==> $tool"
    if [ -n "${UNAVAILABLE[$tool]:-}" ]; then
        SKIPPED[$tool]=${UNAVAILABLE[$tool]}
        return 0
    fi
    local t_setup=$SECONDS
    if ! "$(fn "$tool" setup)" || ! wait_for "$READY_TIMEOUT" "$tool to be ready" "$(fn "$tool" ready)"; then
        SKIPPED[$tool]="its set-up failed (logs: $LOGS)"
        echo "    $tool: set-up failed; last lines of its logs:" >&2
        tail -n 15 "$LOGS"/*"${tool%%_*}"* >&2 2>/dev/null || true
        "$(fn "$tool" teardown)" || true
        return 0
    fi
    echo "    set up in $((SECONDS - t_setup)) s: n1 on port ${NODE_PORT[n1]}, n2 on port ${NODE_PORT[n2]}"
    for fault in $FAULTS; do
        for ((trial = 1; trial <= TRIALS; trial++)); do
            ok=1
            if ! wait_for "$READY_TIMEOUT" "$tool to be ready again" "$(fn "$tool" ready)"; then
                echo "    $tool did not get ready again: building a fresh set-up" >&2
                "$(fn "$tool" teardown)" || true
                ok=0
                if "$(fn "$tool" setup)" && wait_for "$READY_TIMEOUT" "$tool to be ready" "$(fn "$tool" ready)"; then ok=1; fi
            fi
            if ((ok)) && { [ "$SETTLE" = 0 ] || settle; } && wait_for 30 "$tool to be ready" "$(fn "$tool" ready)" &&
                run_trial "$tool" "$fault"; then continue; fi
            echo "    $tool $fault trial $trial failed" >&2
            record "$tool" "$fault" fail 0 "" none 0 0
        done
    done
    "$(fn "$tool" teardown)" || true
}

for tool in $TOOLS; do run_tool "$tool"; done

# ================================= summary ==================================================
# stats LIMIT < "rto rto - fail ...": "n median worst min" over the trials that ran; a trial
# with no write within LIMIT ("-") counts as slower than any other (">LIMIT").
stats() {
    tr ' ' '\n' | grep -v -e '^$' -e '^fail$' | awk -v lim="$1" '
        { n++; v[n] = ($1 == "-") ? 1e9 : $1 }
        function show(x) { return x >= 1e9 ? ">" lim : sprintf("%.2f", x) }
        END {
            if (n == 0) { print "0 - - -"; exit }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            if (n % 2) m = show(v[(n + 1) / 2])
            else if (v[n / 2 + 1] >= 1e9) m = ">" lim
            else m = sprintf("%.2f", (v[n / 2] + v[n / 2 + 1]) / 2)
            printf "%d %s %s %s\n", n, m, show(v[n]), show(v[1]) }'
}
tally() { tr ' ' '\n' | grep -v '^$' | sort | uniq -c | awk '{printf "%s%s x%d", (NR > 1 ? ", " : ""), $2, $1}'; }
count_of() { tr ' ' '\n' | grep -c -x -e "$1" || true; }
limit_of() { if [ "$1" = sigstop ]; then echo "$SIGSTOP_RTO_TIMEOUT"; else echo "$RTO_TIMEOUT"; fi; }

echo
echo "failover RTO: from the fault to the first acknowledged INSERT started after it, seconds"
echo "($(nproc) cores, clusters on $(df --output=fstype "$WORK" | tail -1), TRIALS=$TRIALS, every tool with its default timings, asynchronous"
echo " walferry, pg_auto_failover's default synchronous standby, Patroni asynchronous; walferry-sync: witness"
echo " --synchronous, synchronous_standby_names = '$WF_SYNC_NAMES' on both nodes)"
for t in "${!SKIPPED[@]}"; do echo "  $t NOT MEASURED: ${SKIPPED[$t]}"; done
printf '  %-15s %-17s %6s %8s %8s %8s %5s  %-28s %s\n' fault tool trials median worst min lost "first write taken by" notes
declare -A MED
for fault in $FAULTS; do
    limit=$(limit_of "$fault")
    for tool in $TOOLS; do
        k="$tool/$fault"
        [ -n "${TRIALS_DONE[$k]:-}" ] || continue
        read -r n med worst min <<<"$(echo "${RTOS[$k]}" | stats "$limit")"
        MED[$k]=$med
        notes=()
        to=$(echo "${RTOS[$k]}" | count_of -)
        failed=$(echo "${RTOS[$k]}" | count_of fail)
        [ "$to" -eq 0 ] || notes+=("no write within ${limit} s: $to")
        [ "$failed" -eq 0 ] || notes+=("trials that could not run: $failed")
        [ "$fault" != sigstop ] || notes+=("old primary acked ${OLDW[$k]} direct writes")
        [ "$fault" != blip ] || notes+=("failovers: ${FAILOVERS[$k]}")
        printf '  %-15s %-17s %6s %8s %8s %8s %5s  %-28s %s\n' "$fault" "$tool" "$n" "$med" "$worst" "$min" \
            "${LOST[$k]}" "$(echo "${NODES_TOOK[$k]}" | tally)" "$(IFS=';'; echo "${notes[*]:-}" | sed 's/;/; /g')"
        [ -z "${LOST_IDS[$k]:-}" ] || echo "      lost acknowledged ids: $(cut -d' ' -f1-16 <<<"${LOST_IDS[$k]}")$([ "${LOST[$k]}" -le 16 ] || echo " ...")"
    done
done
echo
echo "ratios of medians (walferry / peer; these machines are shared and noisy):"
for fault in $FAULTS; do
    wf=${MED[walferry/$fault]:-}
    [ -n "$wf" ] && [ "$wf" != - ] || continue
    line="  $fault: walferry median $wf s"
    for tool in pg_auto_failover patroni; do
        p=${MED[$tool/$fault]:-}
        [ -n "$p" ] && [ "$p" != - ] || continue
        name=$tool
        [ "$tool" = patroni ] && name=Patroni
        line+=$(awk -v a="$wf" -v b="$p" -v n="$name" 'BEGIN {
            if (b ~ /^>/) { printf ", %s %s s (<%.2fx)", n, b, a / substr(b, 2) }
            else if (a ~ /^>/) printf ", %s %s s (>%.2fx)", n, b, substr(a, 2) / b
            else printf ", %s %s s (%.2fx)", n, b, (b > 0 ? a / b : 0) }')
    done
    echo "$line"
done
echo
echo "walferry targets: median <= 5 s, worst <= 10 s, no failover from the ${BLIP_SECONDS} s blip, no acknowledged commit lost in synchronous mode (walferry-sync)"
