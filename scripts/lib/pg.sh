# Shared by the demo and bench scripts: a throwaway PostgreSQL 15 server on a loopback port,
# run as the postgres user when we are root. Source it, then call pg_start WORK [CONF...].
# Sets PGDATA_DIR, PORT, LOG, PM_JOB; pg_stop stops it. The postmaster is a child of the
# calling script (not detached by pg_ctl), so it is reaped here rather than left to PID 1.

PG_BIN=${WALFERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
SEG=$((16 * 1024 * 1024))

# Prefix for a long-running tool a bench measures against PostgreSQL's own processes:
# start it in a session of its own, as a service manager would and as PostgreSQL starts
# every backend, walsender and walreceiver (each calls setsid). Under the kernel's autogroup
# scheduling (/proc/sys/kernel/sched_autogroup_enabled) a tool left in the bench's session
# shares one CPU share with pgbench's client threads while each PostgreSQL process has one
# of its own. Used as `"${OWN_SESSION[@]}" tool ... &`: setsid then runs in the background
# job's own process, which is no process group leader, so it execs the tool in place and $!
# is the tool's pid.
OWN_SESSION=(setsid)

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The first port from $1 on that nothing listens on.
free_port_from() {
    local p=$1
    while port_in_use "$p"; do p=$((p + 1)); done
    echo "$p"
}

# stop_server VAR DATADIR [MODE]: stop the postgres started as background job $VAR (pg_ctl
# stop -m MODE, fast by default; kill -9 if that fails), then empty VAR.
stop_server() {
    local var=$1 dir=$2 mode=${3:-fast} job
    job=${!var:-}
    [ -n "$job" ] || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m "$mode" -w stop >/dev/null 2>&1 ||
        kill -9 "$job" 2>/dev/null || true
    wait "$job" 2>/dev/null || true
    printf -v "$var" '%s' ""
}

# For the restore benches: stop the restored server started as job $RS_JOB (data in $RS_DIR).
stop_restored() { stop_server RS_JOB "$RS_DIR" immediate; }

# pg_start WORK [extra postgresql.conf lines...]
pg_start() {
    local work=$1
    shift
    PGDATA_DIR=$work/data
    LOG=$work/server.log
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; fi
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        --no-instructions >/dev/null
    PM_JOB=
    PORT=
    local candidate line
    for _ in $(seq 1 20); do
        candidate=$((20000 + RANDOM % 10000))
        port_in_use "$candidate" && continue
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "port = $candidate"
            echo "unix_socket_directories = '$work'"
            echo "wal_level = replica"
            echo "max_wal_senders = 10"
            echo "max_replication_slots = 10"
            echo "logging_collector = off"
            for line in "$@"; do echo "$line"; done
        } >>"$PGDATA_DIR/postgresql.conf"
        as_pg "$PG_BIN/postgres" -D "$PGDATA_DIR" >>"$LOG" 2>&1 &
        PM_JOB=$!
        for _ in $(seq 1 600); do
            kill -0 "$PM_JOB" 2>/dev/null || break
            if as_pg "$PG_BIN/pg_isready" -q -h "$work" -p "$candidate"; then
                PORT=$candidate
                break
            fi
            sleep 0.1
        done
        [ -n "$PORT" ] && break
        wait "$PM_JOB" || true
        PM_JOB=
        grep -q "could not bind" "$LOG" || { echo "the server did not start; see $LOG" >&2; return 1; }
    done
    [ -n "$PORT" ] || { echo "no free port found" >&2; return 1; }
    PG_SOCKET_DIR=$work
}

pg_stop() { stop_server PM_JOB "$PGDATA_DIR"; }

psql_pg() { as_pg "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PORT" -U postgres -d postgres "$@"; }
lsn_to_int() { local hi=${1%/*} lo=${1#*/}; echo $(((0x$hi << 32) | 0x$lo)); }
seg_name() { local segno=$(($1 / SEG)); printf '%08X%08X%08X' 1 $((segno / 256)) $((segno % 256)); }

# fill_wal MB: commit batches of 1000 rows until MB MiB of WAL were written.
fill_wal() {
    psql_pg <<SQL
CREATE TABLE IF NOT EXISTS filler (id bigserial PRIMARY KEY, pad text);
DO \$\$
DECLARE start_lsn pg_lsn := pg_current_wal_insert_lsn();
BEGIN
  WHILE pg_current_wal_insert_lsn() - start_lsn < $1 * 1048576 LOOP
    INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 1000);
    COMMIT;
  END LOOP;
END \$\$;
SQL
}

# For the synchronous-standby benches: make APP the only synchronous standby ("" for none),
# wait until APP is it, run pgbench (SECONDS_PER_RUN, CLIENTS) and print its TPS.
set_sync_name() {
    psql_pg -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
wait_sync() {
    for _ in $(seq 1 300); do
        [ "$(psql_pg -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$1' AND sync_state = 'sync'")" = 1 ] && return 0
        sleep 0.1
    done
    echo "$1 never became the synchronous standby" >&2
    return 1
}
run_pgbench() {
    as_pg "$PG_BIN/pgbench" -n -T "$SECONDS_PER_RUN" -c "$CLIENTS" -j 2 -h "$PG_SOCKET_DIR" -p "$PORT" -U postgres postgres 2>/dev/null |
        awk '/^tps/ {printf "%d", $3}'
}
# The median of the numbers on standard input (separated by blanks or newlines).
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# check_choices NAME "WORDS" CHOICE...: every one of WORDS is one of the CHOICEs, or say which
# is not and exit 2 (for the BENCH_* variables that list parts or methods).
check_choices() {
    local name=$1 words=$2 w
    shift 2
    for w in $words; do
        [[ " $* " == *" $w "* ]] || {
            echo "$name: unknown value '$w' (one of: $*)" >&2
            exit 2
        }
    done
}
