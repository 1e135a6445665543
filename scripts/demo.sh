#!/usr/bin/env bash
# The whole lab in one command, on throwaway local PostgreSQL 15 clusters, narrated with
# timestamps:
#   1. lab: primary a, synchronous standby b, and an asynchronous standby c fed through
#      `walferry relay`, which archives into a repository; a base backup; a witness and an
#      agent per node
#   2. clients: two sessions writing continuously through a libpq multi-host conninfo
#      (target_session_attrs=read-write), each recording the commits it saw acknowledged
#   3. fault: a named restore point, then the primary fails (--fault)
#   4. failover: automatic; the clients carry on against b; c follows
#   5. rejoin: the old primary comes back as a standby, rebuilt by its agent
#   6. switchover: back to the original layout (a primary)
#   7. pitr: a copy restored to the restore point and compared row for row
#   8. check: every acknowledged commit is on every node
# then a summary: RTO of the failover and of the switchover (from the fault, or the start of
# the switchover, to the first commit the new primary acknowledged to a client; beside it,
# when b finished its promotion), acknowledged commits, how many were lost (must be 0), WAL
# bytes the relay archived, and the time of each step. Everything it starts is stopped and
# removed on exit, on error and on Ctrl-C (agents first, so that no agent restarts a server
# being stopped). A walferry misbehaviour it detects is a PROBLEM (the step fails, the story
# goes on where it can); what it does by hand around one is a WORKAROUND, listed in the
# summary.
#
#   bash scripts/demo.sh                      # default fault: kill -9 of the primary's processes
#   bash scripts/demo.sh --fault pgdata-deleted   # rm -rf of the primary's data directory
#   bash scripts/demo.sh --fault disk-full    # the primary's pg_wal file system fills up (root)
#   bash scripts/demo.sh --fault isolate      # the primary cut off the network (root, ip netns)
#   bash scripts/demo.sh --json               # one JSON object on stdout, narration on stderr
#   bash scripts/demo.sh --keep               # leave it all running (a failed run too); prints
#                                             # the connection strings and how to look and stop
#   bash scripts/demo.sh --stop DIR           # stop and remove what --keep left in DIR
#
# WALFERRY_BIN=/path/to/walferry skips the release build (CI passes its debug binary).
# Exit status: 0 every step ok; 1 a step failed (the summary says which); 2 invalid command
# line; 3 the fault needs something this machine does not allow (the message says what).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.', sort and comm byte-wise
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
source scripts/lib/pg.sh

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

FAULT=kill9
JSON=0
KEEP=0
STOP_DIR=
while [ $# -gt 0 ]; do
    case $1 in
    --fault)
        [ $# -ge 2 ] || { echo "demo.sh: --fault needs a value" >&2; exit 2; }
        FAULT=$2
        shift 2
        ;;
    --fault=*) FAULT=${1#--fault=}; shift ;;
    --json) JSON=1; shift ;;
    --keep) KEEP=1; shift ;;
    --stop)
        [ $# -ge 2 ] || { echo "demo.sh: --stop needs the directory --keep printed" >&2; exit 2; }
        STOP_DIR=$2
        shift 2
        ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $FAULT in
kill9 | kill-9) FAULT=kill9 ;;
pgdata-deleted | disk-full | isolate) ;;
*) echo "demo.sh: unknown fault '$FAULT': kill9, pgdata-deleted, disk-full or isolate" >&2; exit 2 ;;
esac

# ---- teardown: everything the demo started is listed in its work dir ----

# stop_lab DIR: writers, agents, witness, then the servers (whoever started them last),
# the relay, then the fault's mounts and namespace, then DIR itself. Every wait is bounded.
stop_lab() {
    local dir=$1 kind name pid d
    set +e
    [ -f "$dir/pids" ] || { rm -rf "$dir"; return 0; }
    : >"$dir/stop-writers"
    for kind in writer agent witness; do
        while read -r k name pid; do
            [ "$k" = "$kind" ] || continue
            # writers are process groups (setsid), the others single processes.
            if [ "$k" = writer ]; then kill -TERM -- "-$pid" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
        done <"$dir/pids"
        while read -r k name pid; do
            [ "$k" = "$kind" ] || continue
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if [ "$k" = writer ]; then kill -KILL -- "-$pid" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
            wait "$pid" 2>/dev/null
        done <"$dir/pids"
    done
    for d in "$dir"/*/data; do
        [ -f "$d/postmaster.pid" ] || continue
        pid=$(head -n 1 "$d/postmaster.pid")
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w -t 20 stop >/dev/null 2>&1 ||
            { [ -n "$pid" ] && kill -KILL "$pid" $(pgrep -P "$pid") 2>/dev/null; }
        [ -n "$pid" ] && wait "$pid" 2>/dev/null
    done
    # A postmaster whose data directory was deleted under it has no postmaster.pid left.
    while read -r k name pid; do
        [ "$k" = postgres ] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" $(pgrep -P "$pid") 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done <"$dir/pids"
    while read -r k name pid; do
        [ "$k" = relay ] || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done <"$dir/pids"
    if [ -f "$dir/mounts" ]; then
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done <"$dir/mounts"
    fi
    if [ -f "$dir/netns" ]; then
        while read -r ns veth; do
            ip link del "$veth" 2>/dev/null
            ip netns del "$ns" 2>/dev/null
        done <"$dir/netns"
    fi
    rm -rf "$dir"
    return 0
}

if [ -n "$STOP_DIR" ]; then
    [ -f "$STOP_DIR/pids" ] || { echo "demo.sh: $STOP_DIR is not a directory left by demo.sh --keep" >&2; exit 2; }
    stop_lab "$STOP_DIR"
    echo "stopped and removed $STOP_DIR"
    exit 0
fi

# ---- output: narration on stdout (stderr with --json, whose stdout is one JSON object) ----
if [ "$JSON" = 1 ]; then
    exec 3>&1 1>&2
else
    exec 3>&1
fi
T0=${EPOCHREALTIME/./}
# secs MICROSECONDS [DECIMALS]: "12.3"
secs() {
    local us=$1 dec=${2:-1}
    if [ "$dec" = 2 ]; then
        printf '%d.%02d' $((us / 1000000)) $(((us % 1000000) / 10000))
    else
        printf '%d.%d' $((us / 1000000)) $(((us % 1000000) / 100000))
    fi
}
say() {
    local us=$((${EPOCHREALTIME/./} - T0))
    printf '[%6ss] %s\n' "$(secs "$us")" "$*"
}

# ---- preflight: what the fault needs ----
unavailable() {
    echo "demo.sh: --fault $FAULT is not available in this demo on this machine: $*" >&2
    exit 3
}
if [ "$FAULT" = disk-full ] || [ "$FAULT" = isolate ]; then
    [ "$(id -u)" -eq 0 ] || unavailable "it needs root (to mount a small file system / to create a network namespace)"
fi
if [ "$FAULT" = isolate ]; then
    if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
        unavailable "it needs iproute2 (ip, tc)"
    fi
fi

say "walferry demo: fault '$FAULT'$([ "$KEEP" = 1 ] && echo ', --keep')"
WALFERRY_SETUP_NO_NEXTEST=1 WALFERRY_SETUP_NO_ETCD=1 WALFERRY_SETUP_NO_S3=1 bash scripts/setup.sh >/dev/null
if [ -n "${WALFERRY_BIN:-}" ]; then
    WF=$WALFERRY_BIN
    [ -x "$WF" ] || { echo "demo.sh: WALFERRY_BIN=$WF is not an executable" >&2; exit 2; }
else
    say "building walferry (cargo build --release --bin walferry)"
    cargo build --release --bin walferry
    WF=$REPO_ROOT/target/release/walferry
fi
say "using $WF ($("$WF" --version 2>/dev/null || echo '?'))"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/walferry-demo-XXXXXX")
chmod 755 "$WORK"
: >"$WORK/pids"
SOCK=$WORK/sock
REPO=$WORK/repo
SECRET=$WORK/secret
SLOT=walferry_demo
mkdir -p "$SOCK" "$REPO/wal"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"
cd "$WORK" # the postgres user must be able to enter the cwd

# ---- steps, failure and the summary ----
STEP_NAMES=()
STEP_OK=()
STEP_SECS=()
CUR_STEP=
CUR_START=0
CUR_OK=true
ERROR=
PROBLEMS=()
WORKAROUNDS=()
RTO_FAILOVER=null
PROMOTED_S=null
RTO_SWITCHOVER=null
ACKED=0
LOST=null
BYTES_ARCHIVED=null
REJOIN_HOW=
FINISHED=0

step() { # step NAME TEXT: closes the open step (ok) and opens the next
    step_close true
    CUR_STEP=$1
    CUR_START=${EPOCHREALTIME/./}
    CUR_OK=true
    say "step $((${#STEP_NAMES[@]} + 1)): $2"
}
step_close() { # step_close true|false: false, or a problem met in it, fails the step
    [ -n "$CUR_STEP" ] || return 0
    STEP_NAMES+=("$CUR_STEP")
    if [ "$1" = true ] && [ "$CUR_OK" = true ]; then STEP_OK+=(true); else STEP_OK+=(false); fi
    STEP_SECS+=("$(secs $((${EPOCHREALTIME/./} - CUR_START)))")
    CUR_STEP=
}

# problem TEXT: the step fails but the story goes on (what follows is still worth seeing).
problem() {
    PROBLEMS+=("$*")
    CUR_OK=false
    say "  PROBLEM: $*"
}

json_str() { # a JSON string literal
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

summary() {
    local ok=true i n=${#STEP_NAMES[@]}
    [ -z "$ERROR" ] || ok=false
    if [ "$JSON" = 1 ]; then
        {
            printf '{"ok":%s,"fault":"%s","rto_failover_s":%s,"promoted_s":%s,"rto_switchover_s":%s,' \
                "$ok" "$FAULT" "$RTO_FAILOVER" "$PROMOTED_S" "$RTO_SWITCHOVER"
            printf '"acknowledged":%s,"lost":%s,"bytes_archived":%s,' "$ACKED" "$LOST" "$BYTES_ARCHIVED"
            printf '"rejoin":%s,"steps":[' "$(json_str "$REJOIN_HOW")"
            for ((i = 0; i < n; i++)); do
                [ "$i" -eq 0 ] || printf ','
                printf '{"name":"%s","ok":%s,"seconds":%s}' "${STEP_NAMES[$i]}" "${STEP_OK[$i]}" "${STEP_SECS[$i]}"
            done
            printf ']'
            [ -z "$ERROR" ] || printf ',"error":%s' "$(json_str "$ERROR")"
            printf ',"problems":['
            for ((i = 0; i < ${#PROBLEMS[@]}; i++)); do
                [ "$i" -eq 0 ] || printf ','
                json_str "${PROBLEMS[$i]}"
            done
            printf '],"workarounds":['
            for ((i = 0; i < ${#WORKAROUNDS[@]}; i++)); do
                [ "$i" -eq 0 ] || printf ','
                json_str "${WORKAROUNDS[$i]}"
            done
            printf ']'
            if [ "$KEEP" = 1 ] && [ -z "$ERROR" ]; then
                printf ',"work_dir":%s' "$(json_str "$WORK")"
            fi
            printf '}\n'
        } >&3
        return
    fi
    echo
    if [ -z "$ERROR" ]; then
        echo "walferry demo, fault '$FAULT': every step ok"
    else
        echo "walferry demo, fault '$FAULT': FAILED: $ERROR"
    fi
    printf '  %-26s %s\n' "RTO failover" "$([ "$RTO_FAILOVER" = null ] && echo - || echo "$RTO_FAILOVER s")"
    printf '  %-26s %s\n' "  (b promoted after)" "$([ "$PROMOTED_S" = null ] && echo - || echo "$PROMOTED_S s")"
    printf '  %-26s %s\n' "RTO switchover" "$([ "$RTO_SWITCHOVER" = null ] && echo - || echo "$RTO_SWITCHOVER s")"
    printf '  %-26s %s\n' "acknowledged commits" "$ACKED"
    printf '  %-26s %s\n' "acknowledged commits lost" "$([ "$LOST" = null ] && echo - || echo "$LOST")"
    printf '  %-26s %s\n' "bytes archived" "$([ "$BYTES_ARCHIVED" = null ] && echo - || echo "$BYTES_ARCHIVED")"
    [ -z "$REJOIN_HOW" ] || printf '  %-26s %s\n' "old primary rejoined by" "$REJOIN_HOW"
    for ((i = 0; i < ${#WORKAROUNDS[@]}; i++)); do
        printf '  %-26s %s\n' "workaround" "${WORKAROUNDS[$i]}"
    done
    printf '  %-26s %7s  %s\n' "step" "seconds" "result"
    for ((i = 0; i < n; i++)); do
        printf '  %-26s %7s  %s\n' "$((i + 1)) ${STEP_NAMES[$i]}" "${STEP_SECS[$i]}" \
            "$([ "${STEP_OK[$i]}" = true ] && echo ok || echo FAILED)"
    done
}

diagnostics() {
    local f
    for f in "$WORK"/*/agent.log "$WORK"/*/server.log "$WORK/relay.log" "$WORK/witness.log" "$WORK"/client-*.log; do
        [ -s "$f" ] || continue
        echo "---- $f (last 25 lines) ----"
        tail -n 25 "$f"
    done
    echo "---- walferry status ----"
    wf_status 2>&1 || true
}

fail() {
    # In a command substitution (ERR traps are inherited, set -E) only its status counts.
    [ "$BASHPID" = "$$" ] || exit 1
    trap - ERR
    ERROR=$*
    say "FAILED: $*"
    step_close false
    diagnostics || true
    exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR
set -E

on_exit() {
    local rc=$?
    trap - ERR EXIT INT TERM
    set +e
    if [ "$FINISHED" = 0 ] && [ -z "$ERROR" ] && [ "$rc" -ne 0 ]; then
        ERROR=${INTERRUPTED:-"exit status $rc"}
        step_close false
    fi
    [ "$FINISHED" = 1 ] || summary
    # --keep keeps a failed lab too, to look at; a Ctrl-C stops it all.
    if [ "$KEEP" = 1 ] && [ -z "${INTERRUPTED:-}" ]; then
        [ "$FINISHED" = 1 ] || echo "left running for a look (--keep): stop it with: bash $REPO_ROOT/scripts/demo.sh --stop $WORK"
        exit "$rc"
    fi
    say "stopping everything the demo started and removing $WORK"
    stop_lab "$WORK"
    exit "$rc"
}
trap on_exit EXIT
trap 'INTERRUPTED="interrupted"; exit 130' INT TERM

# ---- helpers ----

# spawn KIND NAME LOG NETNS CMD...: CMD in the background as postgres (in network namespace
# NETNS unless empty), in its own session (a Ctrl-C reaches only the script, which tears down
# in order); recorded in pids. setpriv and setsid exec (a background job is no process-group
# leader), so $! is CMD's own pid.
spawn() {
    local kind=$1 name=$2 log=$3 ns=$4
    shift 4
    local pre=()
    [ -z "$ns" ] || pre=(ip netns exec "$ns")
    # The log is opened here, by the shell; the agent's pg_ctl appends to a server's log too.
    touch "$log"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$log"
    if [ "$(id -u)" -eq 0 ]; then
        setsid "${pre[@]}" setpriv --reuid=postgres --regid=postgres --init-groups "$@" >>"$log" 2>&1 </dev/null &
    else
        setsid "${pre[@]}" "$@" >>"$log" 2>&1 </dev/null &
    fi
    BG_PID=$!
    echo "$kind $name $BG_PID" >>"$WORK/pids"
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s; false (with a message) on timeout.
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((${EPOCHREALTIME/./} + secs * 1000000))
    while [ "${EPOCHREALTIME/./}" -lt "$deadline" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out after ${secs}s waiting for $what" >&2
    return 1
}

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((21000 + RANDOM % 9000))
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    return 1
}

declare -A PORT DATA NODE_HOST NODE_NS
PSQL=("$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1)
sql() { # sql NODE SQL...: on the node's socket, as the postgres role
    local n=$1
    shift
    local args=()
    for s in "$@"; do args+=(-c "$s"); done
    "${PSQL[@]}" -h "$SOCK" -p "${PORT[$n]}" -U postgres -d postgres "${args[@]}"
}
sql_is() { [ "$(sql "$1" "$2" 2>/dev/null)" = "$3" ]; }
is_primary() { sql_is "$1" "SELECT pg_is_in_recovery()" f; }
is_standby() { sql_is "$1" "SELECT pg_is_in_recovery()" t; }
replayed() { sql_is "$1" "SELECT pg_last_wal_replay_lsn() >= '$2'::pg_lsn" t; }
on_timeline() { sql_is "$1" "SELECT received_tli FROM pg_stat_wal_receiver" "$2"; }
# primary_tli NODE: the timeline a primary writes on.
primary_tli() { sql "$1" "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"; }
ready() { as_pg "$PG_BIN/pg_isready" -q -h "$SOCK" -p "${PORT[$1]}"; }

wf() { as_pg "$WF" "$@"; }
wf_status() { wf status --witness "$WITNESS" --secret-file "$SECRET" "$@"; }

# status_get PATH: one value from `walferry status --json` (pretty printed: one key per
# line), PATH being a top-level key (primary, epoch, ...) or NODE.KEY (a.role, b.health).
STATUS_TEXT=
status_fetch() { STATUS_TEXT=$(wf_status --json 2>/dev/null); }
status_get() {
    printf '%s\n' "$STATUS_TEXT" | awk -v want="$1" '
        function val(s) { sub(/^[^:]*: */, "", s); sub(/,$/, "", s); gsub(/^"|"$/, "", s); return s }
        /^  "[a-z_]+": / { key = $1; gsub(/[":]/, "", key); sec = key; if (want == key) { print val($0); exit } next }
        sec == "nodes" && /^      "name": / { node = val($0); next }
        sec == "nodes" && /^      "[a-z_]+": / { key = $1; gsub(/[":]/, "", key); if (want == node "." key) { print val($0); exit } }
    '
}
status_is() { # status_is PATH VALUE [PATH VALUE...]: all hold in a fresh status
    status_fetch || return 1
    while [ $# -ge 2 ]; do
        [ "$(status_get "$1")" = "$2" ] || return 1
        shift 2
    done
}

# node_conf NODE: the settings that are the node's own (agents keep *.conf through a rewind).
node_conf() {
    local n=$1
    {
        echo "port = ${PORT[$n]}"
        echo "listen_addresses = '${NODE_HOST[$n]}'"
        echo "unix_socket_directories = '$SOCK'"
    } >"${DATA[$n]}/node.conf"
    [ "$(id -u)" -ne 0 ] || chown postgres: "${DATA[$n]}/node.conf"
}

# start_node NODE: the postmaster as our child (reaped by this shell after a kill -9); a
# port that turns out taken is replaced on the first start.
start_node() {
    local n=$1 pid
    for _ in 1 2 3 4 5; do
        node_conf "$n"
        spawn postgres "$n" "$WORK/$n/server.log" "${NODE_NS[$n]:-}" "$PG_BIN/postgres" -D "${DATA[$n]}"
        pid=$BG_PID
        for _ in $(seq 1 600); do
            kill -0 "$pid" 2>/dev/null || break
            ready "$n" && return 0
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; wait "$pid" 2>/dev/null || true; }
        wait "$pid" 2>/dev/null || true
        grep -q "could not bind\|could not create any TCP/IP sockets" "$WORK/$n/server.log" ||
            fail "node $n did not start; see $WORK/$n/server.log"
        PORT[$n]=$(free_port)
    done
    fail "node $n: no free port"
}

# Settings of every node: pg_rewind works (wal_log_hints), standbys reply every second (the
# agent's fence check counts them) and retry streaming quickly.
COMMON_CONF=(
    "wal_level = replica"
    "max_wal_senders = 10"
    "max_replication_slots = 10"
    "wal_log_hints = on"
    "wal_receiver_status_interval = 1s"
    "wal_retrieve_retry_interval = '500ms'"
    "hot_standby = on"
    "shared_buffers = '32MB'"
    "max_connections = 50"
    "logging_collector = off"
    "log_line_prefix = '%m [%p] %q%a '"
)

HOST_IP=127.0.0.1 # where the host side (b, c, relay, witness) listens
A_IP=127.0.0.1
NETNS=
if [ "$FAULT" = isolate ]; then
    # Node a lives in its own network namespace, reached over a veth pair; the fault makes
    # both ends drop every packet they send (a root qdisc pfifo of length 0: built into
    # every kernel, where netem may be missing), a real partition for TCP on both sides.
    subnet=$((100 + RANDOM % 100))
    NETNS=wfdemo$$
    VETH_H=wfd$$h
    VETH_A=wfd$$a
    HOST_IP=10.213.$subnet.1
    A_IP=10.213.$subnet.2
    {
        ip netns add "$NETNS" &&
            echo "$NETNS $VETH_H" >>"$WORK/netns" &&
            ip link add "$VETH_H" type veth peer name "$VETH_A" &&
            ip link set "$VETH_A" netns "$NETNS" &&
            ip addr add "$HOST_IP/24" dev "$VETH_H" &&
            ip link set "$VETH_H" up &&
            ip netns exec "$NETNS" ip addr add "$A_IP/24" dev "$VETH_A" &&
            ip netns exec "$NETNS" ip link set "$VETH_A" up &&
            ip netns exec "$NETNS" ip link set lo up &&
            tc qdisc add dev "$VETH_H" root pfifo limit 0 &&
            tc qdisc del dev "$VETH_H" root
    } 2>"$WORK/netns.err" || {
        err=$(tr '\n' ' ' <"$WORK/netns.err")
        stop_lab "$WORK"
        WORK=
        trap - EXIT
        unavailable "ip netns, veth or tc qdisc failed: $err"
    }
    NODE_NS[a]=$NETNS
fi
NODE_HOST[a]=$A_IP
NODE_HOST[b]=$HOST_IP
NODE_HOST[c]=$HOST_IP

# ======================================================================================
step lab "primary a, synchronous standby b, relay + repository, async standby c (via the relay), backup, witness, agents"

for n in a b c; do
    DATA[$n]=$WORK/$n/data
    mkdir -p "$WORK/$n"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$WORK/$n"
done
PORT[a]=$(free_port)

initdb_args=(-D "${DATA[a]}" -U postgres -A trust -E UTF8 --locale=C --no-instructions)
fault_conf=("wal_keep_size = '256MB'")
if [ "$FAULT" = disk-full ]; then
    # a's pg_wal on its own small file system, as many installations put it.
    WALFS=$WORK/a/walfs
    mkdir -p "$WALFS"
    mount -t tmpfs -o "size=192m,mode=0700,uid=$(id -u postgres),gid=$(id -g postgres)" tmpfs "$WALFS" ||
        unavailable "cannot mount a tmpfs for a's pg_wal"
    echo "$WALFS" >>"$WORK/mounts"
    initdb_args+=(-X "$WALFS/pg_wal")
    fault_conf=("wal_keep_size = 0" "max_wal_size = '64MB'" "min_wal_size = '32MB'")
fi
as_pg "$PG_BIN/initdb" "${initdb_args[@]}" >"$WORK/a/initdb.log"
{
    for line in "${COMMON_CONF[@]}" "${fault_conf[@]}"; do echo "$line"; done
    echo "include 'node.conf'"
} >>"${DATA[a]}/postgresql.conf"
if [ "$FAULT" = isolate ]; then
    echo "host all all 10.213.0.0/16 trust" >>"${DATA[a]}/pg_hba.conf"
    echo "host replication all 10.213.0.0/16 trust" >>"${DATA[a]}/pg_hba.conf"
fi
start_node a
sql a "SELECT pg_create_physical_replication_slot('$SLOT', true)" >/dev/null
say "  a: primary on ${NODE_HOST[a]}:${PORT[a]}${NETNS:+ (network namespace $NETNS)}"

basebackup() { # basebackup NODE: a copy of a, its own node.conf, a standby of UPSTREAM
    as_pg "$PG_BIN/pg_basebackup" -D "${DATA[$1]}" -h "$SOCK" -p "${PORT[a]}" -U postgres -X stream -c fast
    echo "primary_conninfo = '$2 application_name=$1'" >>"${DATA[$1]}/postgresql.auto.conf"
    as_pg touch "${DATA[$1]}/standby.signal"
}
PORT[b]=$(free_port)
basebackup b "host=${NODE_HOST[a]} port=${PORT[a]} user=postgres"
start_node b
# The relay's slot must exist wherever the relay may find the primary.
sql b "SELECT pg_create_physical_replication_slot('$SLOT', true)" >/dev/null
say "  b: standby of a on $HOST_IP:${PORT[b]}"

# The relay follows whichever of a and b is writable (so it starts once their ports are
# final); keepalives make it notice a primary that went silent (a partition) rather than
# wait on a dead TCP connection.
RELAY_UPSTREAM="host=${NODE_HOST[a]},${NODE_HOST[b]} port=${PORT[a]},${PORT[b]} user=postgres target_session_attrs=read-write connect_timeout=2 keepalives_idle=2 keepalives_interval=1 keepalives_count=3 tcp_user_timeout=5000"
relay_listening() { kill -0 "$RELAY_PID" && (exec 3<>"/dev/tcp/$HOST_IP/$RPORT"); }
for attempt in 1 2 3; do
    RPORT=$(free_port)
    MPORT=$(free_port)
    spawn relay relay "$WORK/relay.log" "" "$WF" -v relay -D "$REPO/wal" -d "$RELAY_UPSTREAM" -S "$SLOT" \
        --listen "$HOST_IP:$RPORT" --metrics "127.0.0.1:$MPORT"
    RELAY_PID=$BG_PID
    wait_until 60 "the relay to listen" relay_listening && break
    # A port taken meanwhile (a shared machine): the relay exits; try other ports.
    kill -0 "$RELAY_PID" 2>/dev/null || [ "$attempt" = 3 ] || continue
    fail "the relay did not start; see $WORK/relay.log"
done
say "  relay: archives into $REPO/wal, serves standbys on $HOST_IP:$RPORT"
PORT[c]=$(free_port)
basebackup c "host=$HOST_IP port=$RPORT user=postgres"
start_node c
say "  c: standby of the relay on $HOST_IP:${PORT[c]}"

# RPO 0: a commit returns once b has it; the relay takes over that role if b is gone.
sql a "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (b, walferry)'" "SELECT pg_reload_conf()" >/dev/null
sync_ok() {
    sql_is a "SELECT string_agg(application_name || '=' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication" \
        "b=sync,walferry=potential"
}
wait_until 60 "b as a's synchronous standby and the relay as its potential one" sync_ok ||
    fail "replication did not come up: $(sql a 'SELECT application_name, state, sync_state FROM pg_stat_replication' | tr '\n' ' ')"
say "  a's synchronous_standby_names = 'FIRST 1 (b, walferry)': b is synchronous, the relay next in line"

BACKUP_ID=$(wf backup --repo "$REPO" -d "host=$SOCK port=${PORT[a]} user=postgres" -Z zstd)
say "  walferry backup: $BACKUP_ID in $REPO/backups"

printf 'a-shared-secret-of-the-walferry-demo-%s\n' "$RANDOM$RANDOM" >"$SECRET"
chmod 600 "$SECRET"
[ "$(id -u)" -ne 0 ] || chown postgres: "$SECRET"
spawn witness witness "$WORK/witness.log" "" "$WF" witness --listen "$HOST_IP:0" --data "$WORK/witness" \
    --secret-file "$SECRET" --synchronous
witness_up() { grep -q "^listening on " "$WORK/witness.log"; }
wait_until 30 "the witness" witness_up || fail "the witness did not start; see $WORK/witness.log"
WITNESS=$(sed -n 's/^listening on //p' "$WORK/witness.log" | head -n 1)
say "  witness on $WITNESS (--synchronous: it promotes only a standby holding every acknowledged commit)"

agent() { # agent NODE EXTRA...
    local n=$1
    shift
    spawn agent "$n" "$WORK/$n/agent.log" "${NODE_NS[$n]:-}" "$WF" -v agent --node "$n" -D "${DATA[$n]}" \
        --local-conninfo "host=$SOCK port=${PORT[$n]} user=postgres dbname=postgres" \
        --address "host=${NODE_HOST[$n]} port=${PORT[$n]}" \
        --witness "$WITNESS" --secret-file "$SECRET" --state-file "$WORK/$n/agent.json" \
        --log-file "$WORK/$n/server.log" --repo "$REPO" "$@"
}
agent a --synchronous-standby-names "FIRST 1 (b, walferry)"
agent b --synchronous-standby-names "FIRST 1 (a, walferry)"
# c streams from the relay whoever is the primary, and is never promoted (priority 0).
agent c --upstream "host=$HOST_IP port=$RPORT user=postgres" --priority 0
wait_until 60 "a primary at epoch 1, b and c healthy standbys" status_is primary a epoch 1 \
    b.role standby b.health ok c.role standby c.health ok || fail "the agents did not settle"
say "  agents on a, b, c; walferry status: a primary (epoch 1), b and c standbys"

# ======================================================================================
step clients "two client sessions writing through 'target_session_attrs=read-write'"
sql a "CREATE TABLE acks (session int, seq int, at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (session, seq))"
CLIENT_CONNINFO="host=${NODE_HOST[a]},${NODE_HOST[b]} port=${PORT[a]},${PORT[b]} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2 keepalives_idle=2 keepalives_interval=1 keepalives_count=3 tcp_user_timeout=3000"
# One commit per psql: "acknowledged" means psql reported success; the row's session and
# sequence number, the server port that acknowledged it and the time are appended then.
# shellcheck disable=SC2016 # expanded by the writer's own bash
WRITER='
id=$1 conninfo=$2 dir=$3 psql=$4
seq=0
while [ ! -e "$dir/stop-writers" ]; do
    seq=$((seq + 1))
    if port=$(timeout --foreground 10 "$psql" "$conninfo application_name=client$id" -X -A -t -q \
        -v ON_ERROR_STOP=1 -c "INSERT INTO acks (session, seq) VALUES ($id, $seq) RETURNING inet_server_port()" \
        2>"$dir/client-$id.err"); then
        echo "$id $seq $port ${EPOCHREALTIME/./}" >>"$dir/acks-$id"
    else
        t=$(date +%T.%3N)
        sed "s/^/$t seq $seq: /" "$dir/client-$id.err" >>"$dir/client-$id.log"
    fi
    sleep 0.05
done'
for id in 1 2; do
    : >"$WORK/acks-$id"
    setsid bash -c "$WRITER" writer "$id" "$CLIENT_CONNINFO" "$WORK" "$PG_BIN/psql" </dev/null >>"$WORK/client-$id.log" 2>&1 &
    echo "writer client$id $!" >>"$WORK/pids"
done
acks() { cat "$WORK/acks-1" "$WORK/acks-2" | wc -l; }
both_writing() { [ "$(wc -l <"$WORK/acks-1")" -ge "$1" ] && [ "$(wc -l <"$WORK/acks-2")" -ge "$1" ]; }
wait_until 60 "both clients to commit" both_writing 20 || fail "the clients do not commit; see $WORK/client-*.log"
say "  client1 and client2: $(acks) commits acknowledged so far (conninfo: $CLIENT_CONNINFO)"

# ======================================================================================
step fault "a named restore point, then the fault: $FAULT on the primary a"
# Writers wait on the lock for a moment: the restore point then falls between two commits,
# so the rows it holds are exactly those read here.
sql a "SET lock_timeout = '20s'" "BEGIN" "LOCK TABLE acks IN EXCLUSIVE MODE" \
    "SELECT pg_create_restore_point('before_fault')" \
    "\\copy (SELECT session, seq, at FROM acks ORDER BY session, seq) TO '$WORK/at_restore_point.txt'" \
    "COMMIT" >/dev/null
say "  restore point 'before_fault' with $(wc -l <"$WORK/at_restore_point.txt") rows in acks"
sleep 1
OLD_TLI=$(primary_tli a)
case $FAULT in
kill9)
    pm=$(head -n 1 "${DATA[a]}/postmaster.pid")
    T_FAULT=${EPOCHREALTIME/./}
    kill -KILL "$pm" $(pgrep -P "$pm")
    wait "$pm" 2>/dev/null || true
    say "  kill -9 of a's postmaster ($pm) and all its processes (its agent stays up)"
    ;;
pgdata-deleted)
    T_FAULT=${EPOCHREALTIME/./}
    rm -rf "${DATA[a]}"
    say "  rm -rf ${DATA[a]} under the running server"
    ;;
disk-full)
    T_FAULT=${EPOCHREALTIME/./}
    dd if=/dev/zero of="$WALFS/ballast" bs=1M status=none 2>/dev/null || true
    say "  a's pg_wal file system is full ($(df -h --output=used,size "$WALFS" | tail -n 1 | awk '{ print $1 " of " $2 }') used); a batch job writes WAL"
    sql a "CREATE TABLE batch (pad text)" 2>/dev/null || true
    ("${PSQL[@]}" -h "$SOCK" -p "${PORT[a]}" -U postgres -d postgres \
        -c "INSERT INTO batch SELECT repeat('x', 1000) FROM generate_series(1, 400000)" >/dev/null 2>&1 || true) &
    ;;
isolate)
    T_FAULT=${EPOCHREALTIME/./}
    tc qdisc add dev "$VETH_H" root pfifo limit 0
    ip netns exec "$NETNS" tc qdisc add dev "$VETH_A" root pfifo limit 0
    say "  a cut off: both ends of its link drop every packet (tc qdisc pfifo limit 0); a and its agent run on"
    ;;
esac

# ======================================================================================
step failover "automatic failover"
new_primary_b() { status_is primary b && [ "$(status_get epoch)" -ge 2 ] && is_primary b; }
wait_until 60 "b to be promoted" new_primary_b || fail "no failover to b"
status_fetch
EPOCH=$(status_get epoch)
# When b took writes, from its server log (the server side of the RTO below): the first
# "ready to accept connections" after it chose its new timeline.
stamp=$(awk '/selected new timeline ID/ { p = 1 } p && /ready to accept connections/ { print $1 " " $2 " " $3; exit }' \
    "$WORK/b/server.log")
[ -z "$stamp" ] || PROMOTED_S=$(secs $(($(date -d "$stamp" +%s%6N) - T_FAULT)) 2)
say "  b is the primary (epoch $EPOCH) after $(secs $((${EPOCHREALTIME/./} - T_FAULT)) 2) s"
case $FAULT in
disk-full) say "  a's server log: $(grep -m 1 'PANIC' "$WORK/a/server.log" | sed 's/^.*PANIC: */PANIC: /')" ;;
isolate)
    # When a's agent stopped a, and when b's agent promoted b, from their logs' timestamps.
    fence_line() { grep -m 1 'fencing:' "$WORK/a/agent.log"; }
    log_us() { date -d "$1" +%s%6N; }
    if wait_until 20 "a's agent to fence a" fence_line; then
        line=$(fence_line)
        fence_us=$(log_us "${line%% *}")
        say "  a's agent, cut off too, stopped a $(secs $((fence_us - T_FAULT)) 2) s after the fault: ${line#*fencing: }"
        line=$(grep -m 1 'promoting the local server' "$WORK/b/agent.log" || true)
        if [ -n "$line" ] && [ "$fence_us" -gt "$(log_us "${line%% *}")" ]; then
            promote_us=$(log_us "${line%% *}")
            by_a=$(cat "$WORK/acks-1" "$WORK/acks-2" | awk -v p="${PORT[a]}" -v t="$T_FAULT" '$3 == p && $4 > t' | wc -l)
            problem "walferry bug: b was promoted $(secs $((promote_us - T_FAULT)) 2) s after the fault but the isolated a was fenced only after $(secs $((fence_us - T_FAULT)) 2) s: for $(secs $((fence_us - promote_us)) 2) s both ran as primaries (the clients saw $by_a commit(s) acknowledged by a after the fault; synchronous replication holds a's commits while its standbys are out of reach). The agent counts a standby as heard while pg_stat_replication shows a reply within the last --fence-timeout, and then waits a full --fence-timeout from that moment, so it fences up to twice the timeout after the last reply, later than the witness's --failover-timeout"
        fi
    else
        problem "a's agent did not fence the isolated primary within 20 s"
    fi
    ;;
esac
# first_ack_on PORT SINCE_US: the earliest acknowledgement by that server port after SINCE.
first_ack_on() {
    cat "$WORK/acks-1" "$WORK/acks-2" | awk -v p="$1" -v t="$2" \
        '$3 == p && $4 > t && (min == "" || $4 < min) { min = $4 } END { if (min != "") print min }'
}
acked_by_both_since() { # acked_by_both_since PORT SINCE
    local id
    for id in 1 2; do
        awk -v p="$1" -v t="$2" '$3 == p && $4 > t { found = 1 } END { exit !found }' "$WORK/acks-$id" || return 1
    done
}
wait_until 60 "both clients to commit on b" acked_by_both_since "${PORT[b]}" "$T_FAULT" ||
    fail "the clients do not commit on b; see $WORK/client-*.log"
RTO_FAILOVER=$(secs $(($(first_ack_on "${PORT[b]}" "$T_FAULT") - T_FAULT)) 2)
say "  the clients carry on against b: first commit acknowledged by b $RTO_FAILOVER s after the fault"
NEW_TLI=$(primary_tli b)
LSN=$(sql b "SELECT pg_current_wal_lsn()")
c_follows() { on_timeline c "$1" && replayed c "$2"; }
wait_until 60 "c to follow b through the relay" c_follows "$NEW_TLI" "$LSN" ||
    fail "c does not follow the new timeline"
say "  c follows through the relay: timeline $OLD_TLI -> $NEW_TLI, replayed $LSN"

# repair_stuck_rewind: what a DBA does by hand for a standby stuck past the fork: with a's
# agent stopped, CHECKPOINT b (its control file then names its timeline, as pg_rewind on
# PostgreSQL 15 needs), stop a, pg_rewind it from b keeping a's own *.conf, start it as a
# standby and its agent again.
repair_stuck_rewind() {
    local k n pid
    say "  WORKAROUND: stopping a's agent, CHECKPOINT on b, pg_rewind of a from b, a and its agent started again"
    while read -r k n pid; do
        [ "$k $n" != "agent a" ] || { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
    done <"$WORK/pids"
    sql b "CHECKPOINT"
    as_pg "$PG_BIN/pg_ctl" -D "${DATA[a]}" -m fast -w -t 60 stop >/dev/null
    mkdir -p "$WORK/a/conf"
    cp -p "${DATA[a]}"/*.conf "$WORK/a/conf/"
    as_pg "$PG_BIN/pg_rewind" -D "${DATA[a]}" --source-server="host=$SOCK port=${PORT[b]} user=postgres dbname=postgres" \
        >>"$WORK/a/pg_rewind.log" 2>&1 || fail "pg_rewind of a failed; see $WORK/a/pg_rewind.log"
    say "    $(grep -m 1 'diverged' "$WORK/a/pg_rewind.log" | sed 's/^pg_rewind: //')"
    cp -p "$WORK/a/conf/"*.conf "${DATA[a]}/"
    as_pg touch "${DATA[a]}/standby.signal"
    start_node a
    agent a --synchronous-standby-names "FIRST 1 (b, walferry)"
}

# ======================================================================================
step rejoin "the old primary a comes back as a standby of b"
a_rejoined() { status_is primary b a.role standby a.health ok && is_standby a; }
case $FAULT in
disk-full)
    if a_rejoined; then
        say "  a is already back as a standby, its pg_wal file system still full"
    fi
    rm -f "$WALFS/ballast"
    say "  the DBA frees a's pg_wal file system (the ballast file is removed)"
    ;;
isolate)
    tc qdisc del dev "$VETH_H" root
    ip netns exec "$NETNS" tc qdisc del dev "$VETH_A" root
    say "  the network comes back"
    ;;
esac
wait_until 180 "a to rejoin as a standby" a_rejoined || fail "a did not rejoin"
REJOIN_HOW=$(sed -n 's/.*rejoined as a standby (\(.*\)).*/\1/p' "$WORK/a/agent.log" | tail -n 1)
[ -n "$REJOIN_HOW" ] || REJOIN_HOW="(its agent did not say)"
# A standby whose WAL went past the point where b's timeline forked can never follow b.
stuck() { grep -q "forked off current database system timeline" "$WORK/a/server.log"; }
caught_up_or_stuck() { replayed a "$1" || stuck; }
LSN=$(sql b "SELECT pg_current_wal_lsn()")
wait_until 60 "a to catch up" caught_up_or_stuck "$LSN" || fail "a does not catch up with b"
if stuck; then
    problem "walferry bug: a's agent reported 'rejoined as a standby ($REJOIN_HOW)' but a's WAL goes past the fork of b's timeline (server log: 'new timeline forked off ... before current recovery point'): pg_rewind ran before b's first checkpoint after its promotion, so PostgreSQL 15's pg_rewind read timeline 1 in b's control file and found nothing to rewind"
    repair_stuck_rewind
    REJOIN_HOW="$REJOIN_HOW, then a manual pg_rewind (walferry bug)"
    wait_until 60 "a to catch up" replayed a "$LSN" || fail "a does not catch up with b even after the repair"
fi
say "  a's agent rebuilt it ($REJOIN_HOW); a streams from b and has replayed $LSN"
if [ "$FAULT" = disk-full ] && [ ! -L "${DATA[a]}/pg_wal" ]; then
    problem "walferry bug: a's pg_wal was a symbolic link to its own file system ($WALFS/pg_wal); the agent's 'walferry restore --delta' replaced it with a directory inside PGDATA (src/restore/layout.rs make_dir removes a link where the backup has a directory), so a now writes its WAL on the data file system and the WAL file system is silently left unused"
fi
ensure_slot() {
    sql_is "$1" "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT'" 1 ||
        sql "$1" "SELECT pg_create_physical_replication_slot('$SLOT', true)" >/dev/null
}
ensure_slot a

# ======================================================================================
step switchover "switchover back to the original layout (a primary)"
T_SWITCH=${EPOCHREALTIME/./}
wf switchover --to a --witness "$WITNESS" --secret-file "$SECRET" --wait 60 2>&1 | sed 's/^/    /' ||
    fail "walferry switchover failed"
say "  walferry switchover --to a returned after $(secs $((${EPOCHREALTIME/./} - T_SWITCH)) 2) s"
wait_until 60 "both clients to commit on a" acked_by_both_since "${PORT[a]}" "$T_SWITCH" ||
    fail "the clients do not commit on a"
RTO_SWITCHOVER=$(secs $(($(first_ack_on "${PORT[a]}" "$T_SWITCH") - T_SWITCH)) 2)
say "  the clients carry on against a: first commit acknowledged by a $RTO_SWITCHOVER s after the switchover began"
wait_until 60 "b back as a standby" status_is primary a b.role standby b.health ok || fail "b is not a standby of a"
ensure_slot b
TLI=$(primary_tli a)
LSN=$(sql a "SELECT pg_current_wal_lsn()")
wait_until 60 "c to follow a" c_follows "$TLI" "$LSN" || fail "c does not follow a"
status_fetch
say "  a is the primary (epoch $(status_get epoch), timeline $TLI); b and c are its standbys"

# ======================================================================================
step pitr "a copy restored to the restore point 'before_fault', compared row for row"
PORT[pitr]=$(free_port)
DATA[pitr]=$WORK/pitr/data
NODE_HOST[pitr]=127.0.0.1
mkdir -p "$WORK/pitr"
[ "$(id -u)" -ne 0 ] || chown postgres: "$WORK/pitr"
wf restore --repo "$REPO" --pgdata "${DATA[pitr]}" --target-name before_fault 2>&1 | sed 's/^/    /'
# A copy for reading: no synchronous standby to wait for, no agent.
echo "synchronous_standby_names = ''" >>"${DATA[pitr]}/postgresql.auto.conf"
start_node pitr
wait_until 180 "the copy to reach the restore point" is_primary pitr ||
    fail "the restored copy did not reach the restore point; see $WORK/pitr/server.log"
sql pitr "\\copy (SELECT session, seq, at FROM acks ORDER BY session, seq) TO '$WORK/pitr_rows.txt'"
ROWS=$(wc -l <"$WORK/at_restore_point.txt")
if ! cmp -s "$WORK/at_restore_point.txt" "$WORK/pitr_rows.txt"; then
    diff "$WORK/at_restore_point.txt" "$WORK/pitr_rows.txt" | head -n 20
    fail "the restored copy differs from the table at the restore point"
fi
say "  restored from backup $BACKUP_ID + the archive: $ROWS rows, identical row for row to acks at the restore point"
as_pg "$PG_BIN/pg_ctl" -D "${DATA[pitr]}" -m fast -w -t 60 stop >/dev/null

# ======================================================================================
step check "every acknowledged commit on every node"
: >"$WORK/stop-writers"
writers_done() {
    local k n pid
    while read -r k n pid; do
        [ "$k" != writer ] || ! kill -0 "$pid" 2>/dev/null || return 1
    done <"$WORK/pids"
}
wait_until 30 "the clients to stop" writers_done || true
cat "$WORK/acks-1" "$WORK/acks-2" | awk '{ print $1, $2 }' | sort >"$WORK/acknowledged.txt"
ACKED=$(wc -l <"$WORK/acknowledged.txt")
LSN=$(sql a "SELECT pg_current_wal_lsn()")
: >"$WORK/missing.txt"
for n in a b c; do
    [ "$n" = a ] || wait_until 60 "$n to replay $LSN" replayed "$n" "$LSN" || fail "$n does not replay $LSN"
    sql "$n" "\\copy (SELECT session, seq FROM acks) TO '$WORK/rows-$n.txt' (DELIMITER ' ')"
    sort -o "$WORK/rows-$n.txt" "$WORK/rows-$n.txt"
    missing=$(comm -23 "$WORK/acknowledged.txt" "$WORK/rows-$n.txt" | tee -a "$WORK/missing.txt" | wc -l)
    say "  $n: $(wc -l <"$WORK/rows-$n.txt") rows; of the $ACKED acknowledged commits, $missing missing"
done
LOST=$(sort -u "$WORK/missing.txt" | wc -l)
# The relay's own count of WAL made durable in the archive (its Prometheus endpoint).
metrics() {
    # shellcheck disable=SC2016
    timeout 5 bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1" && printf "GET /metrics HTTP/1.0\r\n\r\n" >&5 && cat <&5' _ "$MPORT"
}
BYTES_ARCHIVED=$(metrics 2>/dev/null | awk '$1 == "walferry_archived_bytes_total" { printf "%d", $2 }' || true)
[ -n "$BYTES_ARCHIVED" ] || BYTES_ARCHIVED=null
[ "$LOST" -eq 0 ] || fail "$LOST acknowledged commits lost"
step_close true
FINISHED=1
if [ ${#PROBLEMS[@]} -gt 0 ]; then
    ERROR="${#PROBLEMS[@]} problem(s): $(printf '%s; ' "${PROBLEMS[@]}")"
    ERROR=${ERROR%; }
fi
summary
if [ "$KEEP" = 1 ]; then
    cat <<EOF

Left running (--keep), all in $WORK:
  a (primary)   psql 'host=${NODE_HOST[a]} port=${PORT[a]} user=postgres dbname=postgres'
  b (standby)   psql 'host=${NODE_HOST[b]} port=${PORT[b]} user=postgres dbname=postgres'
  c (standby)   psql 'host=${NODE_HOST[c]} port=${PORT[c]} user=postgres dbname=postgres'
  clients use   psql '$CLIENT_CONNINFO'
  relay         host=$HOST_IP port=$RPORT (archive $REPO/wal, metrics http://127.0.0.1:$MPORT/metrics)
  status        $([ "$(id -u)" -eq 0 ] && echo 'runuser -u postgres -- ')$WF status --witness $WITNESS --secret-file $SECRET
  logs          $WORK/{a,b,c}/{server,agent}.log $WORK/relay.log $WORK/witness.log
  stop it all   bash $REPO_ROOT/scripts/demo.sh --stop $WORK
EOF
fi
[ -z "$ERROR" ] || exit 1
