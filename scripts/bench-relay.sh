#!/usr/bin/env bash
# End-to-end bench of walferry relay against real PostgreSQL 15 standbys, in one run, three
# parts (BENCH_PARTS selects them), each printing ratios measured in the same run:
#
#  fanout  The same WAL (fill_wal: bulk INSERTs, BENCH_WAL_MB MiB) served to 4 standbys
#          (a) by the primary's 4 walsenders, (b) through one relay that is the primary's
#          only walsender (physical slot "relay"). CPU is utime+stime from /proc/PID/stat,
#          sampled before the load and once every standby has replayed all of it: in (a)
#          the 4 walsenders, in (b) the relay process (all its threads: receiving,
#          validating, archiving, serving four) and the primary's one walsender. Wall time
#          is from the start of the load to the last standby's replay.
#  lag     Under pgbench (BENCH_LAG_CLIENTS clients), one standby attached directly and
#          one through the relay; a probe (examples/relay_lag_probe.rs) commits a number on
#          the primary every BENCH_LAG_INTERVAL_MS and polls both standbys in turn until
#          they show it: end-to-end commit-to-visible-on-standby delay, measured the same
#          way for both. Also PostgreSQL's replay_lag for the direct standby. A third
#          standby cascades from the direct one (BENCH_LAG_CASCADE=0 leaves it out): what
#          PostgreSQL's own relay, a cascading standby, adds under the same rule (it serves
#          only WAL it has flushed), to judge the relay's added lag against. Added lag is
#          given two ways: the difference of each standby's median and p99, and the median
#          and p99 of the per-commit difference to the direct standby (common stalls cancel).
#          BENCH_LAG_CLIENTS=0: no pgbench, the probe's commits only (the idle floor).
#  sync    pgbench TPS (BENCH_SYNC_CLIENTS clients, synchronous_commit = on) with
#          walferry relay --synchronous as the synchronous standby vs a real standby, as
#          bench-sync.sh does: warm-up, CHECKPOINT before each phase, order alternated per
#          round, medians compared.
#
# All servers share the postgresql.conf the primary starts with (standbys are made with
# pg_basebackup -R and switched between primary and relay by appending primary_conninfo to
# postgresql.auto.conf), so fsync and synchronous_commit are identical in every phase.
#
#   bash scripts/bench-relay.sh
#   BENCH_PARTS=lag bash scripts/bench-relay.sh
#   BENCH_WAL_MB=128 BENCH_LAG_SECONDS=8 BENCH_SYNC_SECONDS=5 BENCH_SYNC_ROUNDS=1 \
#       bash scripts/bench-relay.sh                                # quick
#   BENCH_RELAY_FLAGS=--no-validate bash scripts/bench-relay.sh   # extra relay flags (fanout, lag)
#   BENCH_FSYNC=off / BENCH_DIR=/dev/shm/x                        # without the disk
#   BENCH_TLS=1 bash scripts/bench-relay.sh   # every TCP replication connection over TLS
#       (a self-signed certificate: the primary with ssl = on, the relay with --tls-cert,
#       standbys asking the relay for sslmode=require; the cascade's socket stays plain)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/lib/pg.sh
# No NOTICEs ("relation already exists, skipping") in the output.
export PGOPTIONS="-c client_min_messages=warning"

PARTS=${BENCH_PARTS:-fanout lag sync}
WAL_MB=${BENCH_WAL_MB:-1024}
FANOUT_ROUNDS=${BENCH_FANOUT_ROUNDS:-2}
LAG_SECONDS=${BENCH_LAG_SECONDS:-20}
LAG_CLIENTS=${BENCH_LAG_CLIENTS:-4}
LAG_INTERVAL_MS=${BENCH_LAG_INTERVAL_MS:-50}
LAG_CASCADE=${BENCH_LAG_CASCADE:-1}
SYNC_SECONDS=${BENCH_SYNC_SECONDS:-15}
SYNC_CLIENTS=${BENCH_SYNC_CLIENTS:-8}
SYNC_ROUNDS=${BENCH_SYNC_ROUNDS:-5}
FSYNC=${BENCH_FSYNC:-on}
TLS=${BENCH_TLS:-0}
read -r -a RELAY_FLAGS <<<"${BENCH_RELAY_FLAGS:-}"
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench}

want() { [[ " $PARTS " == *" $1 "* ]]; }
check_choices BENCH_PARTS "$PARTS" fanout lag sync
NSTANDBYS=0
want sync && NSTANDBYS=1
want lag && NSTANDBYS=$((LAG_CASCADE == 1 ? 3 : 2))
want fanout && NSTANDBYS=4

bash scripts/setup.sh >/dev/null
echo "==> building walferry (release)"
cargo build --release --bin walferry
if want lag; then
    cargo build --release --example relay_lag_probe
fi
WALFERRY=${BENCH_WALFERRY:-$REPO/target/release/walferry}  # BENCH_WALFERRY: another build, for A/B runs
PROBE=$REPO/target/release/examples/relay_lag_probe
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/relay-XXXXXX")
declare -a SB_JOB SB_PORT
RELAY_PID=
RELAY_PORT=
BG_PIDS=()

stop_relay() {
    if [ -n "$RELAY_PID" ]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
    fi
}
stop_standby() { stop_server "SB_JOB[$1]" "$WORK/s$1"; }
cleanup() {
    local rc=$? pid i
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ((i = 1; i <= NSTANDBYS; i++)); do stop_standby "$i"; done
    stop_relay
    pg_stop
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
cd "$WORK"

# The primary keeps what a direct standby may still need after sitting out a relay phase
# (and the relay's slot what the relay needs after sitting out a direct phase).
TLS_CONF=()
RELAY_SSLMODE=
if [ "$TLS" = 1 ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.crt" \
        -days 2 -subj /CN=127.0.0.1 2>/dev/null
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK/tls.key" "$WORK/tls.crt"; fi
    chmod 600 "$WORK/tls.key"
    TLS_CONF=("ssl = on" "ssl_cert_file = '$WORK/tls.crt'" "ssl_key_file = '$WORK/tls.key'")
    RELAY_FLAGS+=(--tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key")
    RELAY_SSLMODE=" sslmode=require"
fi
pg_start "$WORK" "fsync = $FSYNC" "synchronous_commit = on" "shared_buffers = '256MB'" \
    "wal_keep_size = '$((2 * WAL_MB + 1024))MB'" "max_wal_size = '4GB'" "${TLS_CONF[@]}"
CONNINFO="host=127.0.0.1 port=$PORT user=postgres"
echo "==> primary on 127.0.0.1:$PORT (fsync = $FSYNC), work directory $WORK"

# free_port VAR FROM: set VAR to the first port from FROM that nobody listens on and this
# script has not handed out yet (standbys listen only on their socket, so port_in_use cannot
# see them). Not in a $(...) subshell: TAKEN must remember.
TAKEN=" $PORT "
free_port() {
    local p=$2
    while port_in_use "$p" || [[ "$TAKEN" == *" $p "* ]]; do p=$((p + 1)); done
    TAKEN+="$p "
    printf -v "$1" '%s' "$p"
}
psql_at() {
    local port=$1
    shift
    as_pg "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$port" -U postgres -d postgres "$@"
}

# The relay's slot exists before the base backups, so the relay (which starts at the slot's
# restart_lsn and resumes from its archive after that) has all WAL any standby could ask for.
if want fanout || want lag; then
    psql_pg -c "SELECT pg_create_physical_replication_slot('relay', true)" >/dev/null
    mkdir "$WORK/relay-archive"
    free_port RELAY_PORT $((PORT + 10))
fi

for ((i = 1; i <= NSTANDBYS; i++)); do
    free_port "SB_PORT[$i]" $((PORT + i))
    as_pg "$PG_BIN/pg_basebackup" -D "$WORK/s$i" -h "$WORK" -p "$PORT" -U postgres -X stream -c fast \
        -R -d "application_name=s$i" >/dev/null
    cat >>"$WORK/s$i/postgresql.conf" <<CONF
port = ${SB_PORT[i]}
listen_addresses = ''
CONF
done
echo "==> $NSTANDBYS standby(s) made with pg_basebackup -R (ports ${SB_PORT[*]:1})"

start_relay() {
    [ -n "$RELAY_PID" ] && return 0
    "${OWN_SESSION[@]}" "$WALFERRY" relay -D "$WORK/relay-archive" -d "$CONNINFO" -S relay \
        --listen "127.0.0.1:$RELAY_PORT" "${RELAY_FLAGS[@]}" 2>>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 1 300); do
        kill -0 "$RELAY_PID" 2>/dev/null || { echo "the relay exited; see $WORK/relay.log" >&2; cat "$WORK/relay.log" >&2; return 1; }
        port_in_use "$RELAY_PORT" && break
        sleep 0.1
    done
    port_in_use "$RELAY_PORT" || { echo "the relay never listened on $RELAY_PORT" >&2; return 1; }
    # Standbys asking for WAL the relay has not archived yet would be refused and retry only
    # every wal_retrieval_retry_interval: let it catch up with what its slot kept first.
    local lsn
    lsn=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    for _ in $(seq 1 6000); do
        [ "$(psql_pg -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walferry' AND flush_lsn >= '$lsn'")" = 1 ] && return 0
        sleep 0.1
    done
    echo "the relay did not catch up to $lsn in 10 minutes" >&2
    return 1
}

# attach I direct|relay|cascade: (re)start standby I streaming from the primary, from the
# relay, or from standby 1 (through its socket: standbys do not listen on TCP).
attach() {
    local i=$1 mode=$2 port host=127.0.0.1
    stop_standby "$i"
    case "$mode" in
    direct) port=$PORT ;;
    relay) port=$RELAY_PORT ;;
    cascade) port=${SB_PORT[1]} host=$WORK ;;
    esac
    local tls=
    [ "$mode" = relay ] && tls=$RELAY_SSLMODE
    echo "primary_conninfo = 'host=$host port=$port user=postgres application_name=s$i$tls'" \
        >>"$WORK/s$i/postgresql.auto.conf"
    as_pg "$PG_BIN/postgres" -D "$WORK/s$i" >>"$WORK/s$i.log" 2>&1 &
    SB_JOB[i]=$!
    for _ in $(seq 1 600); do
        if [ "$(psql_at "${SB_PORT[i]}" -c "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_port = $port" 2>/dev/null)" = 1 ]; then
            return 0
        fi
        kill -0 "${SB_JOB[i]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "standby s$i never streamed from port $port; see $WORK/s$i.log" >&2
    tail -20 "$WORK/s$i.log" >&2
    return 1
}

# wait_replay LSN I...: until each standby I has replayed up to LSN.
wait_replay() {
    local lsn=$1 i
    shift
    for i in "$@"; do
        for _ in $(seq 1 6000); do
            [ "$(psql_at "${SB_PORT[i]}" -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && continue 2
            sleep 0.1
        done
        echo "standby s$i did not replay up to $lsn in 10 minutes" >&2
        return 1
    done
}

# CPU ticks (utime + stime) of a process, all its threads.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $((${12} + ${13}))
}
sum_ticks() {
    local pid total=0
    for pid in "$@"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}
walsender_pids() { psql_pg -c "SELECT pid FROM pg_stat_replication ORDER BY pid" | tr '\n' ' '; }
# The middle value; with an even count the mean of the two middle ones (two rounds are usual).
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR % 2) print a[m]; else printf "%d\n", (a[m]+a[m+1])/2}'; }
ms() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN { printf "%d", t * 1000 / h }'; }

# --- fanout ---------------------------------------------------------------------------
declare -A FAN
fanout_phase() {
    local mode=$1 round=$2 i
    if [ "$mode" = direct ]; then stop_relay; else start_relay; fi
    for i in 1 2 3 4; do attach "$i" "$mode"; done
    psql_pg -c "CREATE TABLE IF NOT EXISTS filler (id bigserial PRIMARY KEY, pad text)" \
        -c "TRUNCATE filler" -c "CHECKPOINT" >/dev/null
    wait_replay "$(psql_pg -c "SELECT pg_current_wal_lsn()")" 1 2 3 4

    local senders n
    senders=$(walsender_pids)
    n=$(wc -w <<<"$senders")
    local expected=4
    [ "$mode" = relay ] && expected=1
    if [ "$n" != "$expected" ]; then
        echo "fanout $mode: unexpected walsenders on the primary: $(psql_pg -c "SELECT pid, application_name FROM pg_stat_replication")" >&2
        return 1
    fi
    local measured=$senders
    [ "$mode" = relay ] && measured="$RELAY_PID $senders"
    local c0 s0 t0
    # shellcheck disable=SC2086
    c0=$(sum_ticks $measured)
    # shellcheck disable=SC2086
    s0=$(sum_ticks $senders)
    t0=${EPOCHREALTIME/./}
    local lsn0 lsn1
    lsn0=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    fill_wal "$WAL_MB" >/dev/null
    lsn1=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    wait_replay "$lsn1" 1 2 3 4
    local t1 c1 s1
    t1=${EPOCHREALTIME/./}
    # shellcheck disable=SC2086
    c1=$(sum_ticks $measured)
    # shellcheck disable=SC2086
    s1=$(sum_ticks $senders)
    if [ "$(walsender_pids)" != "$senders" ]; then
        echo "fanout $mode: the walsenders changed during the load (a standby or the relay reconnected)" >&2
        return 1
    fi
    local mb=$((($(lsn_to_int "$lsn1") - $(lsn_to_int "$lsn0")) / 1048576))
    local wall=$(((t1 - t0) / 1000)) cpu senders_cpu
    cpu=$(ms $((c1 - c0)))
    senders_cpu=$(ms $((s1 - s0)))
    FAN[$mode-wall]+="$wall "
    FAN[$mode-senders]+="$senders_cpu "
    if [ "$mode" = direct ]; then
        printf '  (a) direct, round %d: %d MiB to 4 standbys in %6d ms; 4 walsenders cpu %6d ms\n' \
            "$round" "$mb" "$wall" "$senders_cpu"
    else
        FAN[relay-cpu]+="$((cpu - senders_cpu)) "
        printf '  (b) relay,  round %d: %d MiB to 4 standbys in %6d ms; relay cpu %6d ms, primary walsender cpu %6d ms\n' \
            "$round" "$mb" "$wall" "$((cpu - senders_cpu))" "$senders_cpu"
    fi
}

if want fanout; then
    echo "==> fanout: ${WAL_MB} MiB of bulk INSERTs to 4 standbys, $FANOUT_ROUNDS round(s)"
    for ((round = 1; round <= FANOUT_ROUNDS; round++)); do
        # Alternate which goes first: caches and the disk's state favour neither.
        if ((round % 2)); then order=(direct relay); else order=(relay direct); fi
        for mode in "${order[@]}"; do fanout_phase "$mode" "$round"; done
    done
    for i in 3 4; do stop_standby "$i"; done
    psql_pg -c "DROP TABLE filler" -c "CHECKPOINT" >/dev/null
fi

# --- lag ------------------------------------------------------------------------------
PGBENCH_READY=
pgbench_init() {
    if [ -z "$PGBENCH_READY" ]; then
        as_pg "$PG_BIN/pgbench" -i -q -s 10 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
        PGBENCH_READY=1
    fi
}
run_pgbench() { # CLIENTS SECONDS -> tps
    as_pg "$PG_BIN/pgbench" -n -T "$2" -c "$1" -j 2 -h "$WORK" -p "$PORT" -U postgres postgres 2>/dev/null |
        awk '/^tps/ {printf "%d", $3}'
}

if want lag; then
    echo "==> lag: pgbench $LAG_CLIENTS clients ${LAG_SECONDS}s; s1 streams from the primary, s2 from the relay"
    start_relay
    attach 1 direct
    attach 2 relay
    LAG_STANDBYS=(1 2)
    CASCADE_ARG=()
    if [ "$LAG_CASCADE" = 1 ]; then
        attach 3 cascade
        LAG_STANDBYS+=(3)
        CASCADE_ARG=(--standby "cascade=host=$WORK port=${SB_PORT[3]} user=postgres dbname=postgres")
    fi
    pgbench_init
    psql_pg -c "DROP TABLE IF EXISTS lag_probe" -c "CREATE TABLE lag_probe (id int PRIMARY KEY, v bigint)" \
        -c "INSERT INTO lag_probe VALUES (1, 0)" -c "CHECKPOINT" >/dev/null
    wait_replay "$(psql_pg -c "SELECT pg_current_wal_lsn()")" "${LAG_STANDBYS[@]}"
    : >"$WORK/lag-pgbench.txt"
    if [ "$LAG_CLIENTS" -gt 0 ]; then
        as_pg "$PG_BIN/pgbench" -n -T "$LAG_SECONDS" -c "$LAG_CLIENTS" -j 2 -h "$WORK" -p "$PORT" -U postgres postgres \
            >"$WORK/lag-pgbench.txt" 2>&1 &
    else
        sleep "$LAG_SECONDS" &
    fi
    BG_PIDS+=($!)
    # The probe runs inside the pgbench window: a second after it starts, a second before it ends.
    sleep 1
    "$PROBE" --primary "host=$WORK port=$PORT user=postgres dbname=postgres" \
        --standby "direct=host=$WORK port=${SB_PORT[1]} user=postgres dbname=postgres" \
        --standby "relay=host=$WORK port=${SB_PORT[2]} user=postgres dbname=postgres" \
        "${CASCADE_ARG[@]}" \
        --seconds $((LAG_SECONDS > 3 ? LAG_SECONDS - 2 : 1)) --interval-ms "$LAG_INTERVAL_MS" \
        --stat-app s1 >"$WORK/lag-probe.txt"
    wait "${BG_PIDS[-1]}"
    unset 'BG_PIDS[-1]'
    LAG_TPS=$(awk '/^tps/ {printf "%d", $3}' "$WORK/lag-pgbench.txt")
    LAG_TPS=${LAG_TPS:-0}
    field() { grep "^$1 $2 " "$WORK/lag-probe.txt" | tr ' ' '\n' | awk -F= -v k="$3" '$1 == k {print $2}'; }
    echo "  pgbench: $LAG_TPS tps; probe:"
    sed 's/^/    /' "$WORK/lag-probe.txt"
    stop_standby 2
    [ "$LAG_CASCADE" = 1 ] && stop_standby 3
    stop_relay
fi

# --- sync -----------------------------------------------------------------------------
declare -A TPS
SYNC_RELAY_PID=
SYNC_RELAY_PORT=
sync_phase() {
    local name=$1 round=$2 app dir=$WORK/sync-archive
    case "$name" in
    relay)
        mkdir "$dir"
        [ -n "$SYNC_RELAY_PORT" ] || free_port SYNC_RELAY_PORT $((PORT + 20))
        "${OWN_SESSION[@]}" "$WALFERRY" relay -D "$dir" -d "$CONNINFO" --synchronous \
            --listen "127.0.0.1:$SYNC_RELAY_PORT" 2>>"$WORK/sync-relay.log" &
        SYNC_RELAY_PID=$!
        BG_PIDS+=("$SYNC_RELAY_PID")
        app=walferry
        ;;
    standby)
        attach 1 direct
        app=s1
        ;;
    esac
    set_sync_name "$app"
    wait_sync "$app"
    psql_pg -c "CHECKPOINT" >/dev/null
    local tps
    tps=$(run_pgbench "$SYNC_CLIENTS" "$SYNC_SECONDS")
    printf '  %-8s round %d: %6d tps\n' "$name" "$round" "$tps"
    TPS[$name]+="$tps "
    set_sync_name ""
    if [ "$name" = relay ]; then
        kill -TERM "$SYNC_RELAY_PID" 2>/dev/null || true
        wait "$SYNC_RELAY_PID" 2>/dev/null || true
        unset 'BG_PIDS[-1]'
        rm -rf "$dir"
    else
        stop_standby 1
    fi
}

if want sync; then
    echo "==> sync: pgbench $SYNC_CLIENTS clients ${SYNC_SECONDS}s, $SYNC_ROUNDS round(s)"
    for ((i = 1; i <= NSTANDBYS; i++)); do stop_standby "$i"; done
    stop_relay
    # Nothing else streams from the primary meanwhile; the relay's slot is not needed.
    if want fanout || want lag; then psql_pg -c "SELECT pg_drop_replication_slot('relay')" >/dev/null; fi
    pgbench_init
    echo "  warm-up: pgbench without a synchronous standby"
    run_pgbench "$SYNC_CLIENTS" "$SYNC_SECONDS" >/dev/null
    for ((round = 1; round <= SYNC_ROUNDS; round++)); do
        if ((round % 2)); then order=(relay standby); else order=(standby relay); fi
        for name in "${order[@]}"; do sync_phase "$name" "$round"; done
    done
fi

# --- summary --------------------------------------------------------------------------
echo
echo "walferry relay bench (archive and clusters on $(df --output=fstype "$WORK" | tail -1), fsync = $FSYNC, tls = $TLS, relay flags: ${RELAY_FLAGS[*]:-none}):"
if want fanout; then
    dw=$(echo "${FAN[direct-wall]}" | median)
    ds=$(echo "${FAN[direct-senders]}" | median)
    rw=$(echo "${FAN[relay-wall]}" | median)
    rc=$(echo "${FAN[relay-cpu]}" | median)
    rs=$(echo "${FAN[relay-senders]}" | median)
    echo " fanout, ${WAL_MB} MiB to 4 standbys (median of $FANOUT_ROUNDS round(s)); CPU from the start of the load to the last standby's replay:"
    printf '   (a) 4 walsenders:                       cpu %6d ms, wall %6d ms\n' "$ds" "$dw"
    printf '   (b) relay:                              cpu %6d ms, wall %6d ms\n' "$rc" "$rw"
    printf '   (b) the primary'"'"'s one walsender:       cpu %6d ms\n' "$rs"
    awk -v r="$rc" -v s="$rs" -v d="$ds" -v rw="$rw" -v dw="$dw" 'BEGIN {
        printf "   relay cpu / (a) walsenders cpu:             %.2fx (target <= 1.0x)\n", r / d
        printf "   (b) primary walsender cpu / (a) walsenders: %.2fx (target <= 0.3x)\n", s / d
        printf "   wall (b) / (a):                             %.2fx\n", rw / dw }'
fi
if want lag; then
    dm=$(field probe direct median_us)
    dp=$(field probe direct p99_us)
    rm_=$(field probe relay median_us)
    rp=$(field probe relay p99_us)
    echo " lag under pgbench ($LAG_CLIENTS clients, $LAG_TPS tps), a commit every ${LAG_INTERVAL_MS} ms: from the commit"
    echo " returning on the primary to the row visible on the standby (includes each standby's polling"
    echo " round trip, the same for both; standbys polled in turn, order alternated):"
    awk -v dm="$dm" -v dp="$dp" -v rm="$rm_" -v rp="$rp" 'BEGIN {
        printf "   direct standby:       median %7.2f ms, p99 %7.2f ms\n", dm / 1000, dp / 1000
        printf "   standby via relay:    median %7.2f ms, p99 %7.2f ms\n", rm / 1000, rp / 1000
        printf "   added by the relay:   median %+7.2f ms (target <= 1 ms), p99 %+7.2f ms (target <= 5 ms)\n", (rm - dm) / 1000, (rp - dp) / 1000 }'
    if [ "$LAG_CASCADE" = 1 ]; then
        awk -v dm="$dm" -v dp="$dp" -v cm="$(field probe cascade median_us)" -v cp="$(field probe cascade p99_us)" -v rm="$rm_" -v rp="$rp" 'BEGIN {
            printf "   standby cascading from the direct one: median %7.2f ms, p99 %7.2f ms\n", cm / 1000, cp / 1000
            printf "   added by the cascade: median %+7.2f ms, p99 %+7.2f ms; relay / cascade added: median %.2fx\n", (cm - dm) / 1000, (cp - dp) / 1000, (cm > dm ? (rm - dm) / (cm - dm) : 0) }'
    fi
    echo " per commit, paired with the direct standby (how much later it showed there; a stall on the"
    echo " primary or in the probe, which both paths share, cancels out):"
    for who in relay cascade; do
        [ "$who" = cascade ] && [ "$LAG_CASCADE" != 1 ] && continue
        awk -v w="$who" -v m="$(field paired "$who" median_us)" -v p="$(field paired "$who" p99_us)" -v n="$(field paired "$who" samples)" 'BEGIN {
            printf "   %-8s median %+7.2f ms, p99 %+7.2f ms (%d commits)\n", w ":", m / 1000, p / 1000, n }'
    done
    awk -v m="$(field replay_lag s1 median_us)" -v p="$(field replay_lag s1 p99_us)" -v n="$(field replay_lag s1 samples)" 'BEGIN {
        printf "   pg_stat_replication.replay_lag of the direct standby: median %.2f ms, p99 %.2f ms (%d samples)\n", m / 1000, p / 1000, n }'
fi
if want sync; then
    rt=$(echo "${TPS[relay]}" | median)
    st=$(echo "${TPS[standby]}" | median)
    echo " sync, pgbench $SYNC_CLIENTS clients, ${SYNC_SECONDS}s per run, median of $SYNC_ROUNDS round(s):"
    printf '   walferry relay --synchronous: %6d tps\n' "$rt"
    printf '   real standby:                 %6d tps\n' "$st"
    awk -v a="$rt" -v b="$st" 'BEGIN { printf "   relay / real standby: %.2fx (target >= 1.0x)\n", a / b }'
fi
