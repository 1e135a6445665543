#!/usr/bin/env bash
# Synchronous-standby bench: pgbench TPS on a primary whose synchronous standby is, in turn,
#   walferry receive --synchronous, a real PostgreSQL standby, pg_receivewal --synchronous,
# and two references (examples/sync_floor.rs): a ceiling that acknowledges each message as
# it arrives and keeps nothing (no standby can give more TPS), and a plain durable receiver
# that writes each group into a preallocated file and fdatasyncs before acknowledging.
# BENCH_FLOORS=0 leaves both out.
# With synchronous_commit=on every commit waits until the standby reports it flushed, so TPS
# measures how fast each one makes WAL durable and says so. Phases rotate within one run
# (BENCH_ROUNDS times) and medians are compared. A warm-up run comes first and every phase
# starts after a CHECKPOINT: otherwise the writes left over from pgbench -i and earlier
# phases make TPS climb through the run (seen here: 900 -> 2300 tps within one run).
# BENCH_DIR on tmpfs (e.g. /dev/shm/x) measures the protocol path without the disk.
#
#   bash scripts/bench-sync.sh
#   BENCH_SECONDS=10 BENCH_CLIENTS=4 BENCH_ROUNDS=1 bash scripts/bench-sync.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/lib/pg.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-15}
CLIENTS=${BENCH_CLIENTS:-8}
ROUNDS=${BENCH_ROUNDS:-5}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench}

bash scripts/setup.sh >/dev/null
echo "==> building walferry (release)"
cargo build --release --bin walferry
WALFERRY=${BENCH_WALFERRY:-$REPO/target/release/walferry} # another build, for A/B runs
FLOORS=${BENCH_FLOORS:-1}
[ "$FLOORS" = 1 ] && cargo build --release --example sync_floor

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/sync-XXXXXX")
RECEIVER_PID=
STANDBY_JOB=
stop_receiver() {
    if [ -n "$RECEIVER_PID" ]; then
        kill -INT "$RECEIVER_PID" 2>/dev/null || true
        wait "$RECEIVER_PID" 2>/dev/null || true
        RECEIVER_PID=
    fi
}
stop_standby() { stop_server STANDBY_JOB "$WORK/standby"; }
cleanup() {
    local rc=$?
    stop_receiver
    stop_standby
    pg_stop
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
cd "$WORK"
pg_start "$WORK" "fsync = on" "synchronous_commit = on" "shared_buffers = '256MB'" \
    "wal_keep_size = '2GB'" "max_wal_size = '4GB'"
echo "==> primary on 127.0.0.1:$PORT; pgbench -i -s 10"
as_pg "$PG_BIN/pgbench" -i -q -s 10 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1

CONNINFO="host=127.0.0.1 port=$PORT user=postgres"
STANDBY_PORT=$(free_port_from $((PORT + 1)))
echo "==> real standby: pg_basebackup to port $STANDBY_PORT"
as_pg "$PG_BIN/pg_basebackup" -D "$WORK/standby" -h "$WORK" -p "$PORT" -U postgres -X stream -c fast \
    -R -d "application_name=standby1" >/dev/null
cat >>"$WORK/standby/postgresql.conf" <<CONF
port = $STANDBY_PORT
listen_addresses = ''
CONF

declare -A TPS
phase() {
    local name=$1 round=$2 dir=$WORK/archive-$1-$2
    case "$name" in
    walferry)
        mkdir "$dir"
        "${OWN_SESSION[@]}" "$WALFERRY" receive -D "$dir" -d "$CONNINFO" --synchronous &
        RECEIVER_PID=$!
        ;;
    pg_receivewal)
        mkdir "$dir"
        "${OWN_SESSION[@]}" "$PG_BIN/pg_receivewal" -D "$dir" -d "$CONNINFO" --synchronous &
        RECEIVER_PID=$!
        ;;
    floor)
        "${OWN_SESSION[@]}" "$REPO/target/release/examples/sync_floor" "$CONNINFO application_name=floor" &
        RECEIVER_PID=$!
        ;;
    floor_durable)
        mkdir "$dir"
        "${OWN_SESSION[@]}" "$REPO/target/release/examples/sync_floor" "$CONNINFO application_name=floor_durable" \
            --durable "$dir/ring" &
        RECEIVER_PID=$!
        ;;
    standby)
        as_pg "$PG_BIN/postgres" -D "$WORK/standby" >>"$WORK/standby.log" 2>&1 &
        STANDBY_JOB=$!
        ;;
    esac
    local app=$name
    [ "$name" = standby ] && app=standby1
    set_sync_name "$app"
    wait_sync "$app"
    psql_pg -c "CHECKPOINT" >/dev/null
    local tps
    tps=$(run_pgbench)
    printf '%-14s round %d: %6d tps\n' "$name" "$round" "$tps"
    TPS[$name]+="$tps "
    set_sync_name ""
    stop_receiver
    stop_standby
    rm -rf "$dir"
}

# TPS drifts within a run (caches warm, checkpoints come and go), so the order rotates each
# round: nobody always goes first.
echo "==> warm-up: pgbench without a synchronous standby"
run_pgbench >/dev/null
ORDER=(walferry standby pg_receivewal)
[ "$FLOORS" = 1 ] && ORDER+=(floor floor_durable)
# BENCH_ORDER="standby floor_durable" runs only those (the summary then lacks the others).
[ -n "${BENCH_ORDER:-}" ] && read -r -a ORDER <<<"$BENCH_ORDER"
N=${#ORDER[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < N; i++)); do
        phase "${ORDER[(i + round - 1) % N]}" "$round"
    done
done

for name in walferry standby pg_receivewal floor floor_durable; do
    [ -n "${TPS[$name]:-}" ] || TPS[$name]="0 "
done
wf=$(echo "${TPS[walferry]}" | median)
sb=$(echo "${TPS[standby]}" | median)
pr=$(echo "${TPS[pg_receivewal]}" | median)
echo
echo "pgbench TPS, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, median of $ROUNDS round(s):"
printf '  walferry --synchronous:       %6d tps\n' "$wf"
printf '  real standby:                 %6d tps\n' "$sb"
printf '  pg_receivewal --synchronous:  %6d tps\n' "$pr"
# Ratios; "n/a" for a contender BENCH_ORDER left out.
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x > 0 && y > 0) printf "%.2fx", x / y; else printf "n/a" }'; }
echo "  walferry / real standby: $(ratio "$wf" "$sb"); walferry / pg_receivewal: $(ratio "$wf" "$pr") (target >= 1.05x both)"
if [ "$FLOORS" = 1 ]; then
    fl=$(echo "${TPS[floor]}" | median)
    fd=$(echo "${TPS[floor_durable]}" | median)
    printf '  ceiling, acknowledges unwritten:  %6d tps\n' "$fl"
    printf '  plain write + fdatasync per group: %5d tps\n' "$fd"
    echo "  the ceiling over real standby / pg_receivewal: $(ratio "$fl" "$sb") / $(ratio "$fl" "$pr") (no receiver can do better); walferry / plain: $(ratio "$wf" "$fd")"
fi
