#!/usr/bin/env bash
# The main job, end to end on a throwaway server: start a PostgreSQL 15 primary on a loopback
# port, write some WAL, let `walferry receive` stream it into an archive up to --endpos, and
# prove every complete segment is byte-identical to the primary's pg_wal (and the .partial one
# up to the end position). Then (walferry only) act 2: that archive becomes a repository;
# `walferry relay --synchronous` archives into it as the primary's synchronous standby and
# feeds a real standby; `walferry backup` takes a base backup; rows are committed; the
# primary is killed and its data directory deleted; `walferry restore` rebuilds it from the
# backup plus the archive, and every acknowledged row is back. Everything lives in one temp
# dir, removed on exit.
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
EXTRA_JOBS=()
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        for f in "$LOG" "$WORK/standby.log" "$WORK/relay.log"; do
            [ -f "$f" ] || continue
            echo "---- $f (last 30 lines) ----" >&2
            tail -n 30 "$f" >&2 || true
        done
    fi
    # SIGINT: walferry stops cleanly, postgres fast-stops.
    for job in "${EXTRA_JOBS[@]}"; do
        kill -INT "$job" 2>/dev/null || true
    done
    for job in "${EXTRA_JOBS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$job" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$job" 2>/dev/null || true
        wait "$job" 2>/dev/null || true
    done
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
[ "$RECEIVER" = walferry ] || exit 0

# ---- act 2: relay, backup, the primary lost, restore ----
WF=$REPO/target/release/walferry
# spawn_pg LOGFILE CMD...: CMD in the background as postgres; BG_PID is CMD's own pid
# (setpriv execs it), so signals reach it and not a wrapper.
spawn_pg() {
    local log=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups "$@" >>"$log" 2>&1 &
    else
        "$@" >>"$log" 2>&1 &
    fi
    BG_PID=$!
    EXTRA_JOBS+=("$BG_PID")
}
STORE=$WORK/repo
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((30000 + RANDOM % 10000))
        port_in_use "$p" || { echo "$p"; return; }
    done
    return 1
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq 1 $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out waiting for $what" >&2
    return 1
}
echo
echo "==> act 2: the archive becomes the repository $STORE (wal/ and backups/)"
mkdir -p "$STORE"
mv "$ARCHIVE" "$STORE/wal"
if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$STORE"; fi

RPORT=$(free_port)
echo "==> walferry relay --synchronous: archives into $STORE/wal, serves standbys on 127.0.0.1:$RPORT"
spawn_pg "$WORK/relay.log" "$WF" relay -D "$STORE/wal" -d "$CONNINFO" -S "$SLOT" \
    --listen "127.0.0.1:$RPORT" --synchronous
RELAY_JOB=$BG_PID
wait_for 60 "the relay" port_in_use "$RPORT"
psql_pg -c "ALTER SYSTEM SET synchronous_standby_names = 'walferry'" -c "SELECT pg_reload_conf()" >/dev/null
echo "==> the relay is the primary's synchronous standby: a commit returns once it is durable in the archive"

SPORT=$(free_port)
echo "==> a real standby (pg_basebackup) streaming from the relay, on port $SPORT"
as_pg "$PG_BIN/pg_basebackup" -D "$WORK/standby" -h "$WORK" -p "$PORT" -U postgres -X stream -c fast \
    --no-sync >/dev/null
{
    echo "port = $SPORT"
    echo "primary_conninfo = 'host=127.0.0.1 port=$RPORT user=postgres application_name=demo_standby'"
} >>"$WORK/standby/postgresql.auto.conf"
touch "$WORK/standby/standby.signal"
if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$WORK/standby"; fi
spawn_pg "$WORK/standby.log" "$PG_BIN/postgres" -D "$WORK/standby"
wait_for 60 "the standby" as_pg "$PG_BIN/pg_isready" -q -h "$WORK" -p "$SPORT"

echo "==> walferry backup --repo $STORE -Z zstd"
BACKUP_ID=$(as_pg "$WF" backup --repo "$STORE" -d "$CONNINFO" -Z zstd)
echo "    backup $BACKUP_ID"
echo "==> committing 20 transactions of 500 orders after the backup"
psql_pg -c "CREATE TABLE orders (id int PRIMARY KEY, amount numeric)"
for i in $(seq 0 19); do
    psql_pg -c "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series($((i * 500 + 1)), $(((i + 1) * 500))) g"
done
ACKED=$(psql_pg -c "SELECT count(*) FROM orders")
standby_count() { as_pg "$PG_BIN/psql" -X -A -t -q -h "$WORK" -p "$SPORT" -U postgres -d postgres -c "SELECT count(*) FROM orders" 2>/dev/null; }
standby_caught_up() { [ "$(standby_count)" = "$ACKED" ]; }
wait_for 60 "the standby to replay" standby_caught_up
echo "==> $ACKED orders acknowledged; the standby, fed by the relay, has $(standby_count)"

echo "==> disaster: kill -9 the primary's processes and delete its data directory"
postmaster=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
pkill -9 -P "$postmaster" 2>/dev/null || true
kill -9 "$postmaster"
wait "$PM_JOB" 2>/dev/null || true
PM_JOB=
rm -rf "$PGDATA_DIR"
# The relay's archive holds every acknowledged commit; it stops (SIGINT: clean).
kill -INT "$RELAY_JOB"
wait "$RELAY_JOB" || { echo "the relay did not stop cleanly; see $WORK/relay.log" >&2; exit 1; }

echo "==> walferry list --repo $STORE"
as_pg "$WF" list --repo "$STORE" | sed 's/^/    /'
echo "==> walferry restore --repo $STORE --pgdata $PGDATA_DIR"
as_pg "$WF" restore --repo "$STORE" --pgdata "$PGDATA_DIR"
echo "port = $PORT" >>"$PGDATA_DIR/postgresql.auto.conf"
as_pg "$PG_BIN/postgres" -D "$PGDATA_DIR" >>"$LOG" 2>&1 &
PM_JOB=$!
recovered() { [ "$(psql_pg -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null)" = t ]; }
wait_for 120 "recovery to end" recovered
RESTORED=$(psql_pg -c "SELECT count(*) FROM orders")
echo
echo "summary, act 2: $ACKED orders acknowledged before the primary was lost, $RESTORED restored" \
    "from backup $BACKUP_ID plus the archive"
[ "$RESTORED" = "$ACKED" ]
