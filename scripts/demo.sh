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

PG_BIN=${WALFERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
WAL_MB=${DEMO_WAL_MB:-40}
RECEIVER=${DEMO_RECEIVER:-walferry}
SEG=$((16 * 1024 * 1024))
SLOT=walferry_demo

bash scripts/setup.sh >/dev/null

if [ "$RECEIVER" = walferry ]; then
    echo "==> building walferry (release)"
    cargo build --release --bin walferry
fi

# postgres refuses to run as root: as root, run the server side as the postgres user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

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
    if [ -n "${PM_JOB:-}" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1 ||
            kill -9 "$PM_JOB" 2>/dev/null || true
        wait "$PM_JOB" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
mkdir -p "$ARCHIVE"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK"; fi
cd "$WORK"  # postgres must be able to enter the cwd

echo "==> initdb in $PGDATA_DIR"
as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    --no-instructions >/dev/null

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The postmaster runs as a child of this script (not detached by pg_ctl start), so that it is
# reaped here when it exits instead of being left to PID 1.
PM_JOB=
PORT=
for _ in $(seq 1 20); do
    candidate=$((20000 + RANDOM % 10000))
    port_in_use "$candidate" && continue
    cat >>"$PGDATA_DIR/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $candidate
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '1GB'
fsync = off
logging_collector = off
CONF
    as_pg "$PG_BIN/postgres" -D "$PGDATA_DIR" >>"$LOG" 2>&1 &
    PM_JOB=$!
    for _ in $(seq 1 600); do
        kill -0 "$PM_JOB" 2>/dev/null || break
        if as_pg "$PG_BIN/pg_isready" -q -h "$WORK" -p "$candidate"; then
            PORT=$candidate
            break
        fi
        sleep 0.1
    done
    [ -n "$PORT" ] && break
    wait "$PM_JOB" || true
    PM_JOB=
    grep -q "could not bind" "$LOG" || { echo "demo: the server did not start" >&2; exit 1; }
done
[ -n "$PORT" ] || { echo "demo: no free port found" >&2; exit 1; }
echo "==> primary running on 127.0.0.1:$PORT"

psql_pg() { as_pg "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres "$@"; }
lsn_to_int() { local hi=${1%/*} lo=${1#*/}; echo $(((0x$hi << 32) | 0x$lo)); }
seg_name() { local segno=$(($1 / SEG)); printf '%08X%08X%08X' 1 $((segno / 256)) $((segno % 256)); }

# A slot that reserves WAL now makes the receiver start here (READ_REPLICATION_SLOT), so the
# WAL written next lands in complete segments.
START_LSN=$(psql_pg -c "SELECT lsn FROM pg_create_physical_replication_slot('$SLOT', true)")
echo "==> slot $SLOT reserves WAL from $START_LSN; writing ${WAL_MB} MiB of WAL"
psql_pg <<SQL
CREATE TABLE demo_filler (id bigserial PRIMARY KEY, pad text);
DO \$\$
DECLARE start_lsn pg_lsn := pg_current_wal_insert_lsn();
BEGIN
  WHILE pg_current_wal_insert_lsn() - start_lsn < $WAL_MB * 1048576 LOOP
    INSERT INTO demo_filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 1000);
    COMMIT;
  END LOOP;
END \$\$;
SQL
END_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
# pg_receivewal stops once it has received WAL *past* --endpos: write a little more now rather
# than wait for the next background record.
psql_pg -c "INSERT INTO demo_filler (pad) VALUES ('after endpos')"
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
