#!/usr/bin/env bash
# The main job, end to end on a throwaway server: start a PostgreSQL 15 primary on a loopback
# port, write some WAL, let `walferry receive` stream it into an archive up to --endpos, and
# prove every complete segment is byte-identical to the primary's pg_wal (and the .partial one
# up to the end position). Everything lives in one temp dir, removed on exit.
#
#   bash scripts/demo.sh                 # walferry (release build)
#   DEMO_RECEIVER=pg_receivewal bash scripts/demo.sh   # the same run with PostgreSQL's own tool
#   DEMO_WAL_MB=64 bash scripts/demo.sh  # more WAL
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

WAL_MB=${DEMO_WAL_MB:-40}
RECEIVER=${DEMO_RECEIVER:-walferry}
source scripts/lib/pg.sh
SLOT=walferry_demo

bash scripts/setup.sh >/dev/null

if [ "$RECEIVER" = walferry ]; then
    echo "==> building walferry (release)"
    cargo build --release --bin walferry
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/walferry-demo-XXXXXX")
PGDATA_DIR=$WORK/data
ARCHIVE=$WORK/archive
LOG=$WORK/server.log
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -f "$LOG" ]; then
        echo "---- server log (last 40 lines) ----" >&2
        tail -n 40 "$LOG" >&2 || true
    fi
    pg_stop
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
mkdir -p "$ARCHIVE"
cd "$WORK"  # postgres must be able to enter the cwd
echo "==> starting a throwaway primary in $WORK"
pg_start "$WORK" "wal_keep_size = '1GB'" "fsync = off"
echo "==> primary running on 127.0.0.1:$PORT"

# A slot that reserves WAL now makes the receiver start here (READ_REPLICATION_SLOT), so the
# WAL written next lands in complete segments.
START_LSN=$(psql_pg -c "SELECT lsn FROM pg_create_physical_replication_slot('$SLOT', true)")
echo "==> slot $SLOT reserves WAL from $START_LSN; writing ${WAL_MB} MiB of WAL"
fill_wal "$WAL_MB"
END_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
# pg_receivewal stops once it has received WAL *past* --endpos: write a little more now rather
# than wait for the next background record.
psql_pg -c "INSERT INTO filler (pad) VALUES ('after endpos')"
echo "==> WAL now at $END_LSN"

CONNINFO="host=127.0.0.1 port=$PORT user=postgres"
if [ "$RECEIVER" = walferry ]; then
    RECV=("$REPO/target/release/walferry" receive)
else
    RECV=("$PG_BIN/pg_receivewal")
fi
echo "==> ${RECV[*]} -D $ARCHIVE -d \"$CONNINFO\" -S $SLOT --endpos $END_LSN -v"
started=${EPOCHREALTIME/./}
timeout 300 "${RECV[@]}" -D "$ARCHIVE" -d "$CONNINFO" -S "$SLOT" --endpos "$END_LSN" -v
elapsed_ms=$(((${EPOCHREALTIME/./} - started) / 1000))

echo "==> archive:"
ls -l "$ARCHIVE"

start_int=$(lsn_to_int "$START_LSN")
end_int=$(lsn_to_int "$END_LSN")
first_seg=$((start_int / SEG))
last_seg=$((end_int / SEG))
complete=0
failures=0
for ((segno = first_seg; segno < last_seg; segno++)); do
    name=$(seg_name $((segno * SEG)))
    if [ ! -f "$ARCHIVE/$name" ]; then
        echo "MISSING  $name" >&2
        failures=$((failures + 1))
    elif cmp -s "$ARCHIVE/$name" "$PGDATA_DIR/pg_wal/$name"; then
        echo "OK       $name (identical to pg_wal)"
        complete=$((complete + 1))
    else
        echo "DIFFERS  $name" >&2
        failures=$((failures + 1))
    fi
done
partial_bytes=$((end_int % SEG))
if [ "$partial_bytes" -gt 0 ]; then
    name=$(seg_name "$end_int")
    if [ -f "$ARCHIVE/$name.partial" ]; then
        if cmp -s -n "$partial_bytes" "$ARCHIVE/$name.partial" "$PGDATA_DIR/pg_wal/$name"; then
            echo "OK       $name.partial (first $partial_bytes bytes identical)"
        else
            echo "DIFFERS  $name.partial in its first $partial_bytes bytes" >&2
            failures=$((failures + 1))
        fi
    else
        echo "MISSING  $name.partial" >&2
        failures=$((failures + 1))
    fi
fi

total=$((end_int - (first_seg * SEG)))
echo
echo "summary: $RECEIVER received $START_LSN..$END_LSN ($((total / 1048576)) MiB) in ${elapsed_ms} ms:" \
    "$complete complete segment(s) identical, $failures problem(s)"
[ "$failures" -eq 0 ] && [ "$complete" -gt 0 ]
