#!/usr/bin/env bash
# What --synchronous-remote costs: pgbench TPS on a primary whose synchronous standby is
# walferry receive, in turn
#   --synchronous into a local directory,
#   --synchronous into an object store (spool + background uploads: the flush reported means
#     durable in the spool),
#   --synchronous-remote into the object store (the flush reported means the store holds it),
# the store being s3s-fs on 127.0.0.1 (a filesystem-backed S3 server: no network latency, so
# the figures are a floor for what a real store costs). Phases rotate each round; medians.
#
#   bash scripts/bench-sync-remote.sh
#   BENCH_SECONDS=10 BENCH_CLIENTS=8 BENCH_ROUNDS=3 bash scripts/bench-sync-remote.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/lib/pg.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench}

bash scripts/setup.sh >/dev/null
echo "==> building walferry (release)"
cargo build --release --bin walferry
S3S_FS=${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/sync-remote-XXXXXX")
RECEIVER_PID=
S3_PID=
stop_receiver() {
    if [ -n "$RECEIVER_PID" ]; then
        kill -INT "$RECEIVER_PID" 2>/dev/null || true
        wait "$RECEIVER_PID" 2>/dev/null || true
        RECEIVER_PID=
    fi
}
cleanup() {
    local rc=$?
    stop_receiver
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
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

S3_PORT=$(free_port_from $((PORT + 1)))
mkdir -p "$WORK/s3/bench"
"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 &
S3_PID=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
echo "==> s3s-fs on 127.0.0.1:$S3_PORT"

declare -A TPS
phase() {
    local name=$1 round=$2 dir=$WORK/spool-$1-$2
    local url="s3://bench/$name-$round/wal?endpoint=http://127.0.0.1:$S3_PORT"
    mkdir "$dir"
    case "$name" in
    local) "$REPO/target/release/walferry" receive -D "$dir" -d "$CONNINFO" -S wf --synchronous & ;;
    s3) "$REPO/target/release/walferry" receive -D "$url" --spool "$dir" -d "$CONNINFO" -S wf --synchronous & ;;
    s3-remote) "$REPO/target/release/walferry" receive -D "$url" --spool "$dir" -d "$CONNINFO" -S wf --synchronous-remote & ;;
    esac
    RECEIVER_PID=$!
    set_sync_name walferry
    wait_sync walferry
    psql_pg -c "CHECKPOINT" >/dev/null
    local tps
    tps=$(run_pgbench)
    printf '%-10s round %d: %6d tps\n' "$name" "$round" "$tps"
    TPS[$name]+="$tps "
    set_sync_name ""
    stop_receiver
    rm -rf "$dir" "$WORK/s3/bench/$name-$round"
    # The next phase starts from the primary's current position, not the slot's.
    psql_pg -c "SELECT pg_drop_replication_slot('wf')" -c "SELECT pg_create_physical_replication_slot('wf', true)" >/dev/null
}

psql_pg -c "SELECT pg_create_physical_replication_slot('wf', true)" >/dev/null
echo "==> warm-up: pgbench without a synchronous standby"
run_pgbench >/dev/null
ORDER=(local s3 s3-remote)
for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < 3; i++)); do
        phase "${ORDER[(i + round - 1) % 3]}" "$round"
    done
done

lo=$(echo "${TPS[local]}" | median)
s3=$(echo "${TPS[s3]}" | median)
sr=$(echo "${TPS[s3-remote]}" | median)
echo
echo "pgbench TPS, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, median of $ROUNDS round(s):"
printf '  --synchronous, local directory:         %6d tps\n' "$lo"
printf '  --synchronous, object store (spool):    %6d tps\n' "$s3"
printf '  --synchronous-remote, object store:     %6d tps\n' "$sr"
awk -v a="$lo" -v b="$s3" -v c="$sr" \
    'BEGIN { printf "  spool / local: %.2fx; synchronous-remote / local: %.2fx\n", b/a, c/a }'
