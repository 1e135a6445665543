#!/usr/bin/env bash
# End-to-end catch-up bench: walferry receive vs pg_receivewal on the same retained WAL.
#
# A throwaway primary keeps about BENCH_WAL_MB MiB (default 1024) of WAL. Each round gives
# each tool a fresh archive directory on disk, seeded with the one complete segment before
# the retained range (so both tools start right after it, as when resuming), and times the
# catch-up to --endpos. Tools alternate (walferry, pg_receivewal, walferry, ...) so both see
# the same machine conditions; medians of wall and CPU (user+sys) time are compared. A third
# contender, walferry --no-validate, shows what in-stream WAL validation costs; a fourth,
# examples/catchup_floor.rs, only reads the stream and throws it away: the CPU floor of
# any receiver on this socket.
#
#   bash scripts/bench-catchup.sh
#   BENCH_WAL_MB=256 BENCH_ROUNDS=2 bash scripts/bench-catchup.sh   # quicker
#   BENCH_DIR=/some/disk bash scripts/bench-catchup.sh             # where archives go
#   BENCH_PERF=1 bash scripts/bench-catchup.sh   # also profile walferry (perf record -g into
#                                                 # target/perf-catchup.data; its times then
#                                                 # include perf's overhead)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/lib/pg.sh

WAL_MB=${BENCH_WAL_MB:-1024}
ROUNDS=${BENCH_ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench}

bash scripts/setup.sh >/dev/null
echo "==> building walferry (release)"
cargo build --release --bin walferry --example catchup_floor
WALFERRY=${BENCH_WALFERRY:-$REPO/target/release/walferry} # another build, for A/B runs

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/catchup-XXXXXX")
cleanup() {
    local rc=$?
    pg_stop
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
cd "$WORK"
pg_start "$WORK" "wal_keep_size = '4GB'" "max_wal_size = '8GB'" "fsync = off" "shared_buffers = '256MB'"
echo "==> primary on 127.0.0.1:$PORT"

psql_pg -c "SELECT pg_create_physical_replication_slot('bench_retain', true)" >/dev/null
psql_pg -c "SELECT pg_switch_wal()" >/dev/null
START_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
start_int=$(lsn_to_int "$START_LSN")
SEED_SEG=$(seg_name $(((start_int / SEG - 1) * SEG)))
echo "==> writing ${WAL_MB} MiB of WAL from $START_LSN"
fill_wal "$WAL_MB"
psql_pg -c "SELECT pg_switch_wal()" >/dev/null
END_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
psql_pg -c "CHECKPOINT" >/dev/null
end_int=$(lsn_to_int "$END_LSN")
MB=$(((end_int - start_int) / 1048576))
echo "==> retained WAL: $START_LSN .. $END_LSN ($MB MiB); seed segment $SEED_SEG"

CONNINFO="host=127.0.0.1 port=$PORT user=postgres"
declare -A WALL CPU
run_one() {
    local tool=$1 round=$2 dir=$WORK/$1-$2
    mkdir "$dir"
    cp "$PGDATA_DIR/pg_wal/$SEED_SEG" "$dir/"
    sync
    local cmd
    if [ "$tool" = walferry ] && [ -n "${BENCH_PERF:-}" ]; then
        cmd=(perf record -q -F 1999 -g -o "$REPO/target/perf-catchup.data" "$WALFERRY" receive)
    elif [ "$tool" = walferry ]; then
        cmd=("$WALFERRY" receive)
    elif [ "$tool" = walferry-novalidate ]; then
        cmd=("$WALFERRY" receive --no-validate)
    elif [ "$tool" = floor ]; then
        cmd=()
    else
        cmd=("$PG_BIN/pg_receivewal")
    fi
    local t0=${EPOCHREALTIME/./}
    if [ "$tool" = floor ]; then
        /usr/bin/time -f "%U %S" -o "$WORK/time.txt" \
            "$REPO/target/release/examples/catchup_floor" "$CONNINFO" "$START_LSN" "$END_LSN" >/dev/null
    else
        /usr/bin/time -f "%U %S" -o "$WORK/time.txt" \
            "${cmd[@]}" -D "$dir" -d "$CONNINFO" --endpos "$END_LSN" -n
    fi
    local t1=${EPOCHREALTIME/./}
    # Include the write-back of what is still dirty, so page-cache tricks do not count.
    sync
    local t2=${EPOCHREALTIME/./}
    local wall_ms=$(((t2 - t0) / 1000))
    local cpu_ms
    cpu_ms=$(awk '{printf "%d", ($1 + $2) * 1000}' "$WORK/time.txt")
    # Check the result before it counts: every segment of the range identical to pg_wal
    # (the floor keeps nothing to check).
    local segno problems=0 first=$((start_int / SEG))
    [ "$tool" = floor ] && first=$((end_int / SEG))
    for ((segno = first; segno < end_int / SEG; segno++)); do
        local name
        name=$(seg_name $((segno * SEG)))
        cmp -s "$dir/$name" "$PGDATA_DIR/pg_wal/$name" || problems=$((problems + 1))
    done
    if [ "$problems" -ne 0 ]; then
        echo "$tool round $round: $problems segment(s) missing or different" >&2
        exit 1
    fi
    printf '%-20s round %d: wall %6d ms (stream %6d ms)  cpu %6d ms  %5d MB/s\n' \
        "$tool" "$round" "$wall_ms" $(((t1 - t0) / 1000)) "$cpu_ms" $((MB * 1000 / (wall_ms + 1)))
    WALL[$tool]+="$wall_ms "
    CPU[$tool]+="$cpu_ms "
    rm -rf "$dir"
}

for ((round = 1; round <= ROUNDS; round++)); do
    run_one walferry "$round"
    run_one pg_receivewal "$round"
    run_one walferry-novalidate "$round"
    run_one floor "$round"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wf_wall=$(echo "${WALL[walferry]}" | median)
pr_wall=$(echo "${WALL[pg_receivewal]}" | median)
wf_cpu=$(echo "${CPU[walferry]}" | median)
nv_wall=$(echo "${WALL[walferry-novalidate]}" | median)
nv_cpu=$(echo "${CPU[walferry-novalidate]}" | median)
pr_cpu=$(echo "${CPU[pg_receivewal]}" | median)
fl_cpu=$(echo "${CPU[floor]}" | median)
echo
echo "catch-up of $MB MiB, median of $ROUNDS rounds each (archive on $(df --output=fstype "$WORK" | tail -1)):"
printf '  walferry:      wall %6d ms  cpu %6d ms  (%d MB/s)\n' "$wf_wall" "$wf_cpu" $((MB * 1000 / (wf_wall + 1)))
printf '  walferry --no-validate: wall %6d ms  cpu %6d ms\n' "$nv_wall" "$nv_cpu"
printf '  pg_receivewal: wall %6d ms  cpu %6d ms  (%d MB/s)\n' "$pr_wall" "$pr_cpu" $((MB * 1000 / (pr_wall + 1)))
awk -v a="$wf_wall" -v b="$pr_wall" -v c="$wf_cpu" -v d="$pr_cpu" \
    'BEGIN { printf "  ratio walferry/pg_receivewal, validation on (default): wall %.2fx (target <= 0.75x), cpu %.2fx (target <= 0.30x)\n", a/b, c/d }'
awk -v a="$nv_wall" -v b="$pr_wall" -v c="$nv_cpu" -v d="$pr_cpu" \
    'BEGIN { printf "  ratio walferry/pg_receivewal, --no-validate:        wall %.2fx, cpu %.2fx\n", a/b, c/d }'
printf '  floor (read and discard, examples/catchup_floor.rs): cpu %6d ms\n' "$fl_cpu"
awk -v a="$fl_cpu" -v b="$pr_cpu" \
    'BEGIN { printf "  ratio floor/pg_receivewal: cpu %.2fx (no receiver that reads the same socket goes below it)\n", a/b }'
awk -v a="$wf_cpu" -v b="$nv_cpu" -v c="$wf_wall" -v d="$nv_wall" \
    'BEGIN { printf "  cost of in-stream validation: cpu %+.0f%%, wall %+.0f%%\n", (a/b-1)*100, (c/d-1)*100 }'
