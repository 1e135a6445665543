#!/usr/bin/env bash
# walferry with its repository in S3-compatible object storage vs on a local disk, in one
# run, against s3s-fs (installed by scripts/setup.sh: a real S3 server over HTTP with SigV4,
# storing into a directory) on 127.0.0.1. Two parts (BENCH_PARTS selects them):
#
#  catchup  A throwaway primary keeps about BENCH_WAL_MB MiB (default 1024) of WAL. Each
#           round times walferry receive --endpos into a local directory and into the
#           store (-D s3://... --spool DIR: segments are fsynced into the spool, uploaded in
#           the background, and the receiver exits at --endpos only after draining its
#           uploads). The S3 time runs until the receiver has exited with every segment in
#           the store (checked byte for byte against pg_wal); the time to the last object
#           written is printed beside it. CPU (user+sys) of walferry and, apart, of s3s-fs.
#  restore  A cluster with pgbench -i -s BENCH_SCALE (default 20, ~300 MiB) archived by two
#           receivers (local repository and store), a backup into each (-Z lz4, WAL -Z lz4),
#           then BENCH_RESTORE_WAL_MB MiB (default 256) of pgbench WAL after it. Each round:
#           walferry restore + start + recovery to the end of the archive + promotion, timed
#           from the command's start until the restored server commits a write. The S3
#           restore starts each round with an empty cache directory (what a new host has).
#
# Rounds alternate the order (local first, then S3 first, ...); medians of BENCH_ROUNDS
# (default 3). Every command is bounded by BENCH_TIMEOUT seconds (default 600).
#
#   bash scripts/bench-s3.sh
#   BENCH_WAL_MB=256 BENCH_SCALE=5 BENCH_RESTORE_WAL_MB=64 BENCH_ROUNDS=1 bash scripts/bench-s3.sh  # quick
#   BENCH_PARTS=restore bash scripts/bench-s3.sh
#   BENCH_DIR=/some/disk bash scripts/bench-s3.sh   # where archives, spool and the store go
#   BENCH_KEEP=1 ...                                # keep the work directory and its logs
#   BENCH_PERF=1 BENCH_PARTS=catchup ...   # also profile walferry's S3 catch-up (perf record -g
#                                          # into target/perf-s3.data; its times then include
#                                          # perf's overhead)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
source scripts/lib/pg.sh
export PGOPTIONS="-c client_min_messages=warning"

PARTS=${BENCH_PARTS:-catchup restore}
WAL_MB=${BENCH_WAL_MB:-1024}
ROUNDS=${BENCH_ROUNDS:-3}
SCALE=${BENCH_SCALE:-20}
RESTORE_WAL_MB=${BENCH_RESTORE_WAL_MB:-256}
JOBS=${BENCH_JOBS:-2}
TIMEOUT=${BENCH_TIMEOUT:-600}
BENCH_DIR=${BENCH_DIR:-$REPO_ROOT/target/bench}

want() { [[ " $PARTS " == *" $1 "* ]]; }
check_choices BENCH_PARTS "$PARTS" catchup restore

bash scripts/setup.sh >/dev/null
S3S_FS=${WALFERRY_S3S_FS:-${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs}
[ -x "$S3S_FS" ] || { echo "no s3s-fs at $S3S_FS (scripts/setup.sh installs it)" >&2; exit 1; }
echo "==> building walferry (release)"
cargo build --release --bin walferry
WALFERRY=$REPO_ROOT/target/release/walferry

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/s3-XXXXXX")
chmod 755 "$WORK"
# The restored servers put their sockets here.
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK"; fi
S3_PID=
RECEIVERS=()
RS_JOB=
RS_DIR=
cleanup() {
    local rc=$?
    stop_restored
    for pid in "${RECEIVERS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pg_stop
    if [ -n "$S3_PID" ]; then
        kill -TERM "$S3_PID" 2>/dev/null || true
        wait "$S3_PID" 2>/dev/null || true
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
cd "$WORK"

failed() { # WHAT LOG
    echo "$1 failed; the end of its log:" >&2
    tail -20 "$2" >&2
    exit 1
}
now_us() { echo "${EPOCHREALTIME/./}"; }
ms_since() { echo $((($(now_us) - $1) / 1000)); }
# The middle value; with an even count the mean of the two middle ones.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR % 2) print a[m]; else printf "%d\n", (a[m]+a[m+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
declare -A T

# --- the object store -------------------------------------------------------------------
BUCKET=walferry-bench
S3_ROOT=$WORK/s3
mkdir -p "$S3_ROOT/$BUCKET"
KEY_ID=walferry-bench
SECRET=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
CREDS=$WORK/s3.credentials
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$KEY_ID" "$SECRET" >"$CREDS"
chmod 600 "$CREDS"
chown postgres: "$CREDS" 2>/dev/null || true
for _ in $(seq 1 20); do
    S3_PORT=$((30000 + RANDOM % 10000))
    port_in_use "$S3_PORT" && continue
    "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$KEY_ID" --secret-key "$SECRET" \
        "$S3_ROOT" >"$WORK/s3s-fs.log" 2>&1 &
    S3_PID=$!
    for _ in $(seq 1 100); do
        port_in_use "$S3_PORT" && break
        kill -0 "$S3_PID" 2>/dev/null || break
        sleep 0.05
    done
    port_in_use "$S3_PORT" && break
    wait "$S3_PID" 2>/dev/null || true
    S3_PID=
done
[ -n "$S3_PID" ] || failed "starting s3s-fs" "$WORK/s3s-fs.log"
s3_url() { echo "s3://$BUCKET/$1?endpoint=http://127.0.0.1:$S3_PORT&credentials_file=$CREDS"; }
# CPU time (ms) s3s-fs has used so far.
TICK=$(getconf CLK_TCK)
s3_cpu_ms() { awk -v t="$TICK" '{ printf "%d", ($14 + $15) * 1000 / t }' "/proc/$S3_PID/stat"; }
echo "==> s3s-fs $("$S3S_FS" --version | awk '{print $2}') on 127.0.0.1:$S3_PORT, storing into $S3_ROOT ($(df --output=fstype "$WORK" | tail -1))"

CPU_FILE=$WORK/cpu.txt
CPU=(/usr/bin/time -o "$CPU_FILE" -f '%U %S')
cpu_ms() { awk 'END { printf "%d", ($1 + $2) * 1000 }' "$CPU_FILE"; }

# --- catch-up ---------------------------------------------------------------------------
if want catchup; then
    mkdir "$WORK/catchup"
    pg_start "$WORK/catchup" "wal_keep_size = '4GB'" "max_wal_size = '8GB'" "fsync = off" "shared_buffers = '256MB'"
    echo "==> catch-up: primary on 127.0.0.1:$PORT"
    psql_pg -c "SELECT pg_create_physical_replication_slot('bench_retain', true)" >/dev/null
    psql_pg -c "SELECT pg_switch_wal()" >/dev/null
    START_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    start_int=$(lsn_to_int "$START_LSN")
    SEED_SEG=$(seg_name $(((start_int / SEG - 1) * SEG)))
    echo "    writing ${WAL_MB} MiB of WAL from $START_LSN"
    fill_wal "$WAL_MB"
    psql_pg -c "SELECT pg_switch_wal()" >/dev/null
    END_LSN=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    psql_pg -c "CHECKPOINT" >/dev/null
    end_int=$(lsn_to_int "$END_LSN")
    NSEG=$((end_int / SEG - start_int / SEG))
    MB=$((NSEG * 16))
    echo "    retained WAL: $START_LSN .. $END_LSN ($NSEG segments, $MB MiB); seed segment $SEED_SEG"
    CONNINFO="host=127.0.0.1 port=$PORT user=postgres"

    # Every segment of the range in DIR identical to pg_wal.
    check_segments() { # WHAT DIR
        local segno name problems=0
        for ((segno = start_int / SEG; segno < end_int / SEG; segno++)); do
            name=$(seg_name $((segno * SEG)))
            cmp -s "$1/$name" "$PGDATA_DIR/pg_wal/$name" || problems=$((problems + 1))
        done
        if [ "$problems" -ne 0 ]; then
            echo "$1: $problems of $NSEG segment(s) missing or different after the $2 run" >&2
            exit 1
        fi
    }

    catchup_one() { # local|s3 ROUND
        local kind=$1 round=$2 dir=$WORK/c-$1-$2 log=$WORK/c-$1-$2.log target t0 t1 t2 wall cpu s3cpu0 s3cpu=0 last
        mkdir "$dir"
        cp "$PGDATA_DIR/pg_wal/$SEED_SEG" "$dir/"
        target=$dir
        local spool_args=()
        if [ "$kind" = s3 ]; then
            target=$(s3_url "catchup-$round/wal")
            spool_args=(--spool "$dir")
        fi
        sync
        s3cpu0=$(s3_cpu_ms)
        t0=$(now_us)
        local perf=()
        if [ "$kind" = s3 ] && [ -n "${BENCH_PERF:-}" ]; then
            perf=(perf record -q -F 1999 -g -o "$REPO_ROOT/target/perf-s3.data")
        fi
        "${CPU[@]}" timeout "$TIMEOUT" "${perf[@]}" "$WALFERRY" receive -D "$target" "${spool_args[@]}" -d "$CONNINFO" \
            --endpos "$END_LSN" -n -v 2>"$log" || failed "walferry receive into $kind" "$log"
        t1=$(now_us)
        # The write-back of what is still dirty counts (the local archive's, the store's).
        sync
        t2=$(now_us)
        cpu=$(cpu_ms)
        wall=$(((t2 - t0) / 1000))
        if [ "$kind" = s3 ]; then
            s3cpu=$(($(s3_cpu_ms) - s3cpu0))
            local store=$S3_ROOT/$BUCKET/catchup-$round/wal
            check_segments "$store" s3
            # When the last object was written, from the store's files.
            last=$(find "$store" -type f -printf '%T@\n' | sort -n | tail -1)
            last=$(awk -v l="$last" -v t="$t0" 'BEGIN { printf "%d", l * 1000 - t / 1000 }')
            T[s3-last]+="$last "
            T[s3-server-cpu]+="$s3cpu "
            local left
            left=$(find "$dir" -maxdepth 1 -name '0*' ! -name '*.partial' | wc -l)
            printf '  %-5s round %d: wall %6d ms (receiver exited at %6d ms, last object at %6d ms)  cpu %6d ms, s3s-fs cpu %6d ms  %4d MB/s  (%d segment(s) left in the spool)\n' \
                "$kind" "$round" "$wall" $(((t1 - t0) / 1000)) "$last" "$cpu" "$s3cpu" $((MB * 1000 / (wall + 1))) "$left"
            rm -rf "$S3_ROOT/$BUCKET/catchup-$round"
        else
            check_segments "$dir" local
            printf '  %-5s round %d: wall %6d ms (receiver exited at %6d ms)  cpu %6d ms  %4d MB/s\n' \
                "$kind" "$round" "$wall" $(((t1 - t0) / 1000)) "$cpu" $((MB * 1000 / (wall + 1)))
        fi
        T[catchup-$kind]+="$wall "
        T[catchup-cpu-$kind]+="$cpu "
        rm -rf "$dir"
    }

    echo "==> catch-up of $MB MiB: $ROUNDS round(s), order alternated"
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order=(local s3); else order=(s3 local); fi
        for kind in "${order[@]}"; do catchup_one "$kind" "$round"; done
    done
    pg_stop
    rm -rf "$WORK/catchup"
fi

# --- restore ----------------------------------------------------------------------------
# start_restored DIR: start a laid-out data directory (no archiving, its own port and
# socket directory); RS_PORT, RS_LOG.
start_restored() {
    local dir=$1
    RS_DIR=$dir
    RS_LOG=$WORK/restored.log
    : >"$RS_LOG"
    chown postgres: "$RS_LOG" 2>/dev/null || true
    RS_PORT=$(free_port_from $((PORT + 1)))
    {
        echo "port = $RS_PORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$WORK'"
        echo "archive_mode = off"
    } >>"$dir/postgresql.auto.conf"
    as_pg "$PG_BIN/postgres" -D "$dir" >>"$RS_LOG" 2>&1 &
    RS_JOB=$!
}
# wait_writable: until the restored server commits a write (or dies, or BENCH_TIMEOUT).
wait_writable() {
    local t0=$SECONDS
    while :; do
        as_pg "$PG_BIN/psql" -X -A -t -q -h "$WORK" -p "$RS_PORT" -U postgres -d postgres \
            -c "CREATE TABLE restored_bench_probe (x int)" >/dev/null 2>&1 && return 0
        if ! kill -0 "$RS_JOB" 2>/dev/null; then
            echo "the restored server exited; see its log:" >&2
            tail -20 "$RS_LOG" >&2
            return 1
        fi
        if ((SECONDS - t0 > TIMEOUT)); then
            echo "the restored server accepted no write in $TIMEOUT s; see its log:" >&2
            tail -20 "$RS_LOG" >&2
            return 1
        fi
        sleep 0.02
    done
}

if want restore; then
    mkdir "$WORK/restore"
    pg_start "$WORK/restore" "shared_buffers = '256MB'" "max_wal_size = '4GB'" "checkpoint_timeout = '30min'"
    CONNINFO="host=$WORK/restore port=$PORT user=postgres"
    echo "==> restore: cluster on port $PORT; pgbench -i -s $SCALE"
    as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h "$WORK/restore" -p "$PORT" -U postgres postgres >/dev/null 2>&1
    DB_MB=$(psql_pg -c "SELECT pg_database_size('postgres') / 1048576")
    psql_pg -c "CHECKPOINT" >/dev/null
    LOCAL_REPO=$WORK/repo
    SPOOL=$WORK/spool
    mkdir -p "$LOCAL_REPO/wal" "$LOCAL_REPO/backups" "$SPOOL"
    chown -R postgres: "$LOCAL_REPO" "$SPOOL"
    S3_REPO=$(s3_url restore)
    as_pg "$WALFERRY" receive -D "$LOCAL_REPO/wal" -d "$CONNINFO" -S wf_local --create-slot 2>/dev/null
    as_pg "$WALFERRY" receive -D "$SPOOL" -d "$CONNINFO" -S wf_s3 --create-slot 2>/dev/null
    AS_PG_EXEC=()
    # (HOME too: walferry reads ~/.aws/config, and root's is not the postgres user's to read.)
    if [ "$(id -u)" -eq 0 ]; then
        AS_PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups -- env "HOME=$(getent passwd postgres | cut -d: -f6)")
    fi
    "${AS_PG_EXEC[@]}" "$WALFERRY" receive -D "$LOCAL_REPO/wal" -d "$CONNINFO" -S wf_local -Z lz4 2>>"$WORK/recv-local.log" &
    RECEIVERS+=($!)
    "${AS_PG_EXEC[@]}" "$WALFERRY" receive -D "$(s3_url restore/wal)" --spool "$SPOOL" -d "$CONNINFO" -S wf_s3 -Z lz4 \
        2>>"$WORK/recv-s3.log" &
    RECEIVERS+=($!)
    export WALFERRY_CACHE_DIR=$WORK/cache-backup
    for repo in "$LOCAL_REPO" "$S3_REPO"; do
        as_pg env WALFERRY_CACHE_DIR="$WALFERRY_CACHE_DIR" timeout "$TIMEOUT" "$WALFERRY" backup --repo "$repo" -d "$CONNINFO" -Z lz4 -j "$JOBS" \
            >>"$WORK/backup.log" 2>&1 || failed "walferry backup" "$WORK/backup.log"
    done
    echo "    $DB_MB MiB database backed up into both repositories; writing $RESTORE_WAL_MB MiB of WAL after the backups"
    lsn0=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    while :; do
        PGOPTIONS="$PGOPTIONS -c synchronous_commit=off" as_pg "$PG_BIN/pgbench" -n -T 5 -c 4 -j 2 \
            -h "$WORK/restore" -p "$PORT" -U postgres postgres >/dev/null 2>&1
        [ "$(psql_pg -c "SELECT pg_current_wal_lsn() - '$lsn0' >= $RESTORE_WAL_MB * 1048576::numeric")" = t ] && break
    done
    psql_pg -c "SELECT pg_switch_wal()" >/dev/null
    psql_pg -c "SELECT txid_current()" >/dev/null
    lsn1=$(psql_pg -c "SELECT pg_current_wal_flush_lsn()")
    ACCOUNTS_SUM=$(psql_pg -c "SELECT sum(abalance) FROM pgbench_accounts")
    # Both receivers have flushed everything, then stop (the S3 one drains its uploads and
    # puts the .partial up).
    for _ in $(seq 1 $((TIMEOUT * 10))); do
        n=$(psql_pg -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('wf_local', 'wf_s3') AND restart_lsn >= '$lsn1'")
        [ "$n" = 2 ] && break
        sleep 0.1
    done
    [ "$n" = 2 ] || { echo "the receivers did not reach $lsn1" >&2; exit 1; }
    for pid in "${RECEIVERS[@]}"; do
        kill -TERM "$pid"
        wait "$pid" || true
    done
    RECEIVERS=()
    pg_stop
    WAL_SEGS_LOCAL=$(find "$LOCAL_REPO/wal" -maxdepth 1 -name '0*' | wc -l)
    WAL_OBJS_S3=$(find "$S3_ROOT/$BUCKET/restore/wal" -maxdepth 1 -name '0*' | wc -l)
    echo "    archives: $WAL_SEGS_LOCAL WAL file(s) local, $WAL_OBJS_S3 in the store, to $lsn1; primary stopped"

    restore_one() { # local|s3 ROUND
        local kind=$1 round=$2 dir=$WORK/r-$1 repo=$LOCAL_REPO t0 laid wall cpu s3cpu0 s3cpu sum
        [ "$kind" = s3 ] && repo=$S3_REPO
        rm -rf "$dir" "$WORK/cache-restore"
        mkdir -m 700 "$WORK/cache-restore"
        chown postgres: "$WORK/cache-restore"
        : >"$CPU_FILE"
        chown postgres: "$CPU_FILE" 2>/dev/null || true
        sync
        s3cpu0=$(s3_cpu_ms)
        t0=$(now_us)
        as_pg env WALFERRY_CACHE_DIR="$WORK/cache-restore" "${CPU[@]}" timeout "$TIMEOUT" "$WALFERRY" restore \
            --repo "$repo" --pgdata "$dir" -j "$JOBS" >>"$WORK/restore.log" 2>&1 || failed "walferry restore ($kind)" "$WORK/restore.log"
        laid=$(ms_since "$t0")
        cpu=$(cpu_ms)
        start_restored "$dir"
        wait_writable
        wall=$(ms_since "$t0")
        s3cpu=$(($(s3_cpu_ms) - s3cpu0))
        sum=$(as_pg "$PG_BIN/psql" -X -A -t -q -h "$WORK" -p "$RS_PORT" -U postgres -d postgres \
            -c "SELECT sum(abalance) FROM pgbench_accounts")
        stop_restored
        [ "$sum" = "$ACCOUNTS_SUM" ] || { echo "$kind restore: sum(abalance) $sum, expected $ACCOUNTS_SUM" >&2; exit 1; }
        T[restore-$kind]+="$wall "
        T[restore-laid-$kind]+="$laid "
        T[restore-cpu-$kind]+="$cpu "
        [ "$kind" = s3 ] && T[restore-server-cpu]+="$s3cpu "
        printf '  %-5s round %d: writable after %6d ms (restore command %6d ms, cpu %6d ms; recovery %6d ms)%s\n' \
            "$kind" "$round" "$wall" "$laid" "$cpu" $((wall - laid)) \
            "$([ "$kind" = s3 ] && echo ", s3s-fs cpu $s3cpu ms")"
        # A prefetch worker of walferry archive-get may outlive the server for a moment.
        sleep 0.2
        rm -rf "$dir" "$WORK/cache-restore"
    }
    echo "==> restore + recovery to the end + promotion, $ROUNDS round(s), order alternated"
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order=(local s3); else order=(s3 local); fi
        for kind in "${order[@]}"; do restore_one "$kind" "$round"; done
    done
fi

# --- summary ----------------------------------------------------------------------------
med() { echo "${T[$1]:-}" | median; }
echo
echo "walferry, repository in s3s-fs on 127.0.0.1 vs on local disk ($(df --output=fstype "$WORK" | tail -1)), median of $ROUNDS round(s):"
if want catchup; then
    l=$(med catchup-local)
    s=$(med catchup-s3)
    lc=$(med catchup-cpu-local)
    sc=$(med catchup-cpu-s3)
    echo " catch-up of $MB MiB ($NSEG segments) with walferry receive --endpos:"
    printf '   local directory: wall %6d ms, cpu %6d ms (%d MB/s)\n' "$l" "$lc" $((MB * 1000 / (l + 1)))
    printf '   object store:    wall %6d ms, cpu %6d ms (%d MB/s uploaded; last object at %d ms); s3s-fs cpu %d ms\n' \
        "$s" "$sc" $((MB * 1000 / (s + 1))) "$(med s3-last)" "$(med s3-server-cpu)"
    printf '   ratio S3/local: wall %s, walferry cpu %s\n' "$(ratio "$s" "$l")" "$(ratio "$sc" "$lc")"
fi
if want restore; then
    l=$(med restore-local)
    s=$(med restore-s3)
    echo " restore of a $DB_MB MiB database (backup -Z lz4) + $RESTORE_WAL_MB MiB of WAL, until the restored server commits a write:"
    printf '   local repository: %6d ms (restore command %6d ms, cpu %6d ms)\n' "$l" "$(med restore-laid-local)" "$(med restore-cpu-local)"
    printf '   object store:     %6d ms (restore command %6d ms, cpu %6d ms); s3s-fs cpu %d ms\n' "$s" "$(med restore-laid-s3)" \
        "$(med restore-cpu-s3)" "$(med restore-server-cpu)"
    printf '   ratio S3/local: %s (restore command alone %s)\n' "$(ratio "$s" "$l")" \
        "$(ratio "$(med restore-laid-s3)" "$(med restore-laid-local)")"
fi
