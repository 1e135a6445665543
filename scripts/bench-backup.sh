#!/usr/bin/env bash
# walferry backup / restore / archive-get against pgBackRest 2.45, in one run, on one
# throwaway PostgreSQL 15 cluster (pgbench -i -s BENCH_SCALE, ~2 GiB at 130). Three parts
# (BENCH_PARTS selects them), each printing ratios measured in the same run:
#
#  backup   Full backups, same compression and parallelism: walferry backup -Z lz4 vs
#           pgbackrest backup --compress-type=lz4, walferry -Z zstd:1 vs --compress-type=zst
#           --compress-level=1; walferry -j BENCH_JOBS, pgBackRest --process-max=BENCH_JOBS.
#           walferry once per method of BENCH_BACKUP_METHODS (default "pgdata protocol"):
#           pgdata = --pgdata PGDATA (reads the files itself, as pgBackRest does), protocol =
#           BASE_BACKUP (the server's walsender sends them); a ratio for each.
#           Both archivers run all along: archive_command = pgbackrest archive-push (what
#           pgBackRest's backup waits for) and walferry receive -S walferry into REPO/wal
#           (what walferry's waits for). BENCH_ROUNDS rounds, order alternated, medians.
#  restore  Laying out PGDATA from those backups: walferry restore -j N vs pgbackrest restore
#           --process-max=N, both compressions; walferry restore --delta on the PGDATA it has
#           just laid out (unchanged) vs the full restore; pgbackrest restore --delta beside
#           it for reference. Then one restored directory is started and checked.
#  replay   After a walferry backup, pgbench writes BENCH_REPLAY_MB MiB of WAL; one layout
#           of that backup is then recovered (from starting the postmaster to "ready to
#           accept connections" after the promotion at the end of the archive) with
#           restore_command = walferry archive-get (as walferry restore writes it), cp from
#           an uncompressed copy of the same WAL (the floor), and pgBackRest's asynchronous
#           archive-get (archive-async, --process-max=N). Same base, same WAL: only the
#           restore_command differs. Then walferry again with other recovery settings
#           (recovery_prefetch, maintenance_io_concurrency + wal_decode_buffer_size,
#           shared_buffers), and the per-segment cost of each restore_command called in a
#           loop outside PostgreSQL.
#
# Both archives hold WAL compressed as BENCH_WAL_COMPRESS (lz4: walferry receive -Z lz4,
# pgBackRest compress-type=lz4 for archive-push). The database fits in the page cache, so
# backups read it from memory: this compares the tools' own costs, not the disk's.
#
#   bash scripts/bench-backup.sh
#   BENCH_SCALE=10 BENCH_REPLAY_MB=128 BENCH_ROUNDS=1 bash scripts/bench-backup.sh   # quick
#   BENCH_PARTS=replay BENCH_REPLAY_VARIANTS=0 bash scripts/bench-backup.sh
#   BENCH_DIR=/dev/shm/x                                                   # without the disk
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
source scripts/lib/pg.sh
export PGOPTIONS="-c client_min_messages=warning"

PARTS=${BENCH_PARTS:-backup restore replay}
SCALE=${BENCH_SCALE:-130}
JOBS=${BENCH_JOBS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
REPLAY_MB=${BENCH_REPLAY_MB:-1024}
REPLAY_ROUNDS=${BENCH_REPLAY_ROUNDS:-3}
REPLAY_VARIANTS=${BENCH_REPLAY_VARIANTS:-1}
WAL_COMPRESS=${BENCH_WAL_COMPRESS:-lz4}
FSYNC=${BENCH_FSYNC:-on}
BACKUP_METHODS=${BENCH_BACKUP_METHODS:-pgdata protocol}
BENCH_DIR=${BENCH_DIR:-$REPO_ROOT/target/bench}

want() { [[ " $PARTS " == *" $1 "* ]]; }
check_choices BENCH_PARTS "$PARTS" backup restore replay
check_choices BENCH_BACKUP_METHODS "$BACKUP_METHODS" pgdata protocol
case "$WAL_COMPRESS" in
lz4) PGBR_WAL_COMPRESS=lz4 ;;
none) PGBR_WAL_COMPRESS=none ;;
*)
    echo "BENCH_WAL_COMPRESS: lz4 or none" >&2
    exit 2
    ;;
esac

bash scripts/setup.sh >/dev/null
if ! command -v pgbackrest >/dev/null 2>&1; then
    echo "==> installing pgbackrest"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null
fi
echo "==> building walferry (release)"
cargo build --release --bin walferry
WALFERRY=$REPO_ROOT/target/release/walferry

# A prefix running a command as the postgres user by exec (no runuser parent, no subshell
# as a function would be in the background): "${AS_PG_EXEC[@]}" cmd & leaves its pid in $!.
AS_PG_EXEC=()
if [ "$(id -u)" -eq 0 ]; then AS_PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/backup-XXXXXX")
chmod 755 "$WORK"
RECEIVER_PID=
RS_JOB=
RS_DIR=
cleanup() {
    local rc=$?
    stop_restored
    if [ -n "$RECEIVER_PID" ]; then
        kill -TERM "$RECEIVER_PID" 2>/dev/null || true
        wait "$RECEIVER_PID" 2>/dev/null || true

    fi
    pg_stop
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM
cd "$WORK"

# --- the cluster, both repositories, both archivers -------------------------------------
PGBR_CONF=$WORK/pgbackrest.conf
PGBR_REPO=$WORK/pgbr-repo
WF_REPO=$WORK/wf-repo
pgbr() { as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench "$@"; }
# CPU (user + system) of a command and of the descendants it waits for (pgBackRest's local
# processes, walferry's threads): "${CPU[@]}" cmd..., then cpu_ms. Not the server's.
CPU_FILE=$WORK/cpu.txt
CPU=(/usr/bin/time -o "$CPU_FILE" -f '%U %S')
cpu_ms() { awk 'END { printf "%d", ($1 + $2) * 1000 }' "$CPU_FILE"; }

# pgbench -i writes ~2 GiB of WAL at scale 130: it runs before either archiver starts (the
# archive_command discards it), so both archives start at the same point after it.
pg_start "$WORK" "fsync = $FSYNC" "shared_buffers = '256MB'" "max_wal_size = '4GB'" \
    "archive_mode = on" "archive_command = '/bin/true'" "checkpoint_timeout = '30min'"
CONNINFO="host=$WORK port=$PORT user=postgres"
echo "==> cluster on port $PORT (fsync = $FSYNC), work directory $WORK"
echo "==> pgbench -i -s $SCALE"
t0=${EPOCHREALTIME/./}
as_pg "$PG_BIN/pgbench" -i -q -I dtGvp -s "$SCALE" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
t1=${EPOCHREALTIME/./}
DB_MB=$(psql_pg -c "SELECT pg_database_size('postgres') / 1048576")
echo "    $DB_MB MiB in $(((t1 - t0) / 1000000)) s"
psql_pg -c "CHECKPOINT" >/dev/null

mkdir -p "$PGBR_REPO" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool" "$WF_REPO"
cat >"$PGBR_CONF" <<CONF
[global]
repo1-path=$PGBR_REPO
repo1-retention-full=100
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
log-level-console=warn
log-level-file=info
start-fast=y
compress-type=$PGBR_WAL_COMPRESS

[bench]
pg1-path=$PGDATA_DIR
pg1-port=$PORT
pg1-socket-path=$WORK
pg1-user=postgres
CONF
chmod 644 "$PGBR_CONF"
chown -R postgres: "$PGBR_REPO" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool" "$WF_REPO"
pgbr stanza-create >/dev/null
psql_pg -c "ALTER SYSTEM SET archive_command = 'pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p'" \
    -c "SELECT pg_reload_conf()" >/dev/null

mkdir -p "$WF_REPO/wal" "$WF_REPO/backups"
chown postgres: "$WF_REPO/wal" "$WF_REPO/backups"
as_pg "$WALFERRY" receive -D "$WF_REPO/wal" -d "$CONNINFO" -S walferry --create-slot 2>/dev/null
"${AS_PG_EXEC[@]}" "$WALFERRY" receive -D "$WF_REPO/wal" -d "$CONNINFO" -S walferry -Z "$WAL_COMPRESS" \
    2>>"$WORK/receive.log" &
RECEIVER_PID=$!
pgbr check >/dev/null
echo "==> archivers: pgbackrest archive-push (compress-type=$PGBR_WAL_COMPRESS) and walferry receive -Z $WAL_COMPRESS"

failed() { # WHAT LOG
    echo "$1 failed; the end of its log:" >&2
    tail -20 "$2" >&2
    exit 1
}
ms_since() { echo $(((${EPOCHREALTIME/./} - $1) / 1000)); }
# The middle value; with an even count the mean of the two middle ones.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR % 2) print a[m]; else printf "%d\n", (a[m]+a[m+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
du_mb() { du -sm "$1" | awk '{print $1}'; }

declare -A T          # timings, ms, space-separated per key
declare -A WF_ID PGBR_LABEL SIZE

# --- backup ----------------------------------------------------------------------------
# backup_one TOOL COMP: TOOL walferry-pgdata|walferry-protocol|pgbackrest, COMP lz4|zstd.
backup_one() {
    local tool=$1 comp=$2 t0 ms id before cpu
    psql_pg -c "CHECKPOINT" >/dev/null
    sync
    if [[ "$tool" == walferry-* ]]; then
        local z=lz4 method=()
        [ "$comp" = zstd ] && z=zstd:1
        [ "$tool" = walferry-pgdata ] && method=(--pgdata "$PGDATA_DIR")
        t0=${EPOCHREALTIME/./}
        id=$(as_pg "${CPU[@]}" "$WALFERRY" backup --repo "$WF_REPO" -d "$CONNINFO" -Z "$z" -j "$JOBS" "${method[@]}" 2>>"$WORK/backup.log") ||
            failed "walferry backup" "$WORK/backup.log"
        ms=$(ms_since "$t0")
        WF_ID[$comp]=$id
        SIZE[$tool-$comp]=$(du_mb "$WF_REPO/backups/$id")
    else
        local c=(--compress-type=lz4)
        [ "$comp" = zstd ] && c=(--compress-type=zst --compress-level=1)
        before=$(ls "$PGBR_REPO/backup/bench" 2>/dev/null | grep F$ || true)
        t0=${EPOCHREALTIME/./}
        as_pg "${CPU[@]}" pgbackrest --config="$PGBR_CONF" --stanza=bench backup --type=full "${c[@]}" --process-max="$JOBS" >>"$WORK/backup.log" 2>&1 ||
            failed "pgbackrest backup" "$WORK/backup.log"
        ms=$(ms_since "$t0")
        id=$(ls "$PGBR_REPO/backup/bench" | grep F$ | grep -vxF "$before" | tail -1)
        PGBR_LABEL[$comp]=$id
        SIZE[pgbackrest-$comp]=$(du_mb "$PGBR_REPO/backup/bench/$id")
    fi
    cpu=$(cpu_ms)
    T[backup-$tool-$comp]+="$ms "
    T[backup-cpu-$tool-$comp]+="$cpu "
    printf '  %-10s %-4s %7d ms, cpu %7d ms  %s (%s MiB)\n' "$tool" "$comp" "$ms" "$cpu" "$id" "${SIZE[$tool-$comp]}"
}

if want backup; then
    echo "==> backup: $DB_MB MiB database, -j / --process-max $JOBS, $ROUNDS round(s), order alternated, walferry methods: $BACKUP_METHODS (load average $(cut -d" " -f1-3 /proc/loadavg))"
    for ((round = 1; round <= ROUNDS; round++)); do
        echo "  round $round"
        order=()
        for m in $BACKUP_METHODS; do order+=("walferry-$m"); done
        if ((round % 2)); then order+=(pgbackrest); else order=(pgbackrest "${order[@]}"); fi
        for comp in lz4 zstd; do
            for tool in "${order[@]}"; do backup_one "$tool" "$comp"; done
        done
    done
fi

# The restore and replay parts need a backup of each kind; taken here when the backup part
# did not run.
need_backups() {
    [ -n "${WF_ID[lz4]:-}" ] || backup_one "walferry-${BACKUP_METHODS%% *}" lz4 >/dev/null
    [ -n "${PGBR_LABEL[lz4]:-}" ] || backup_one pgbackrest lz4 >/dev/null
}

# --- restore ---------------------------------------------------------------------------
restore_one() { # TOOL COMP DIR [--delta]
    local tool=$1 comp=$2 dir=$3 delta=${4:-} t0 ms cpu
    sync
    t0=${EPOCHREALTIME/./}
    if [ "$tool" = walferry ]; then
        as_pg "${CPU[@]}" "$WALFERRY" restore --repo "$WF_REPO" --pgdata "$dir" --backup "${WF_ID[$comp]}" -j "$JOBS" \
            $delta >>"$WORK/restore.log" 2>&1 || failed "walferry restore" "$WORK/restore.log"
    else
        [ -d "$dir" ] || as_pg mkdir -m 700 "$dir"
        as_pg "${CPU[@]}" pgbackrest --config="$PGBR_CONF" --stanza=bench restore --pg1-path="$dir" --set="${PGBR_LABEL[$comp]}" --process-max="$JOBS" $delta \
            >>"$WORK/restore.log" 2>&1 || failed "pgbackrest restore" "$WORK/restore.log"
    fi
    ms=$(ms_since "$t0")
    local key=restore-$tool-$comp
    [ -n "$delta" ] && key=delta-$tool-$comp
    cpu=$(cpu_ms)
    T[$key]+="$ms "
    T[cpu-$key]+="$cpu "
    printf '  %-10s %-4s %-7s %7d ms, cpu %7d ms\n' "$tool" "$comp" "${delta:-full}" "$ms" "$cpu"
}

# start_restored DIR [postgresql.auto.conf lines...]: start a laid-out data directory (no
# archiving, its own port); returns once the postmaster runs. RS_LOG is its log.
RS_PORT=
start_restored() {
    local dir=$1 line
    shift
    RS_DIR=$dir
    RS_LOG=$WORK/restored.log
    : >"$RS_LOG"
    chown postgres: "$RS_LOG"
    RS_PORT=$(free_port_from $((PORT + 1)))
    {
        echo "port = $RS_PORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$WORK'"
        echo "archive_mode = off"
        for line in "$@"; do echo "$line"; done
    } >>"$dir/postgresql.auto.conf"
    as_pg "$PG_BIN/postgres" -D "$dir" >>"$RS_LOG" 2>&1 &
    RS_JOB=$!
}
# wait_promoted: until the restored server has ended recovery (or died).
wait_promoted() {
    while :; do
        grep -q "database system is ready to accept connections" "$RS_LOG" && return 0
        if ! kill -0 "$RS_JOB" 2>/dev/null; then
            echo "the restored server exited; see its log:" >&2
            tail -20 "$RS_LOG" >&2
            return 1
        fi
        sleep 0.02
    done
}

if want restore; then
    need_backups
    echo "==> restore: -j / --process-max $JOBS, $ROUNDS round(s), order alternated"
    for ((round = 1; round <= ROUNDS; round++)); do
        echo "  round $round"
        if ((round % 2)); then order=(walferry pgbackrest); else order=(pgbackrest walferry); fi
        for comp in lz4 zstd; do
            [ -n "${WF_ID[$comp]:-}" ] && [ -n "${PGBR_LABEL[$comp]:-}" ] || continue
            for tool in "${order[@]}"; do
                rm -rf "$WORK/r-$tool"
                restore_one "$tool" "$comp" "$WORK/r-$tool"
                # The delta runs on what was just laid out, untouched.
                restore_one "$tool" "$comp" "$WORK/r-$tool" --delta
            done
        done
    done
    rm -rf "$WORK/r-pgbackrest"
    echo "==> starting the directory walferry laid out"
    start_restored "$WORK/r-walferry"
    wait_promoted
    rows=$(as_pg "$PG_BIN/psql" -X -A -t -h "$WORK" -p "$RS_PORT" -U postgres -d postgres \
        -c "SELECT count(*) FROM pgbench_accounts")
    stop_restored
    RESTORE_CHECK="started, recovered and promoted; pgbench_accounts has $rows rows (expected $((SCALE * 100000)))"
    [ "$rows" = $((SCALE * 100000)) ] || RESTORE_CHECK="MISMATCH: $RESTORE_CHECK"
    echo "  $RESTORE_CHECK"
    rm -rf "$WORK/r-walferry"
fi

# --- replay ----------------------------------------------------------------------------
# The segment holding LSN (an X/X) is in both archives, complete.
archived_both() {
    local seg
    seg=$(seg_name "$(lsn_to_int "$1")")
    compgen -G "$WF_REPO/wal/$seg" >/dev/null || compgen -G "$WF_REPO/wal/$seg.*[!l]" >/dev/null || return 1
    [ -n "$(find "$PGBR_REPO/archive" -name "$seg-*" -print -quit)" ]
}

declare -A REDO
replay_one() { # NAME [postgresql.auto.conf lines...]
    local name=$1 dir=$WORK/replay t0 ms
    shift
    rm -rf "$dir"
    cp -a "$WORK/replay-template" "$dir"
    sync
    start_restored "$dir" "$@"
    t0=${EPOCHREALTIME/./}
    wait_promoted
    ms=$(ms_since "$t0")
    local redo
    redo=$(grep -o 'redo done at.*' "$RS_LOG" | sed 's/.*system usage: //')
    REDO[$name]=$redo
    stop_restored
    T[replay-$name]+="$ms "
    printf '  %-14s %7d ms   (%s)\n' "$name" "$ms" "$redo"
    # A prefetch worker of walferry archive-get may outlive the server for a moment.
    sleep 0.2
    rm -rf "$dir"
}

if want replay; then
    [ -n "${WF_ID[lz4]:-}${WF_ID[zstd]:-}" ] || backup_one "walferry-${BACKUP_METHODS%% *}" lz4 >/dev/null
    echo "==> replay: writing $REPLAY_MB MiB of WAL with pgbench after the backup"
    lsn0=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    t0=${EPOCHREALTIME/./}
    # synchronous_commit off: the WAL is what counts here, not the commit rate.
    while :; do
        PGOPTIONS="$PGOPTIONS -c synchronous_commit=off" as_pg "$PG_BIN/pgbench" -n -T 5 -c 4 -j 2 \
            -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
        [ "$(psql_pg -c "SELECT pg_current_wal_lsn() - '$lsn0' >= $REPLAY_MB * 1048576::numeric")" = t ] && break
    done
    lsn1=$(psql_pg -c "SELECT pg_current_wal_lsn()")
    psql_pg -c "SELECT pg_switch_wal()" >/dev/null
    REPLAY_WAL_MB=$((($(lsn_to_int "$lsn1") - $(lsn_to_int "$lsn0")) / 1048576))
    echo "    $REPLAY_WAL_MB MiB ($lsn0 .. $lsn1) in $(($(ms_since "$t0") / 1000)) s; waiting for both archives"
    for _ in $(seq 1 3000); do archived_both "$lsn1" && break; sleep 0.1; done
    archived_both "$lsn1" || { echo "the archives did not get $lsn1 in 5 minutes" >&2; exit 1; }

    # The floor's archive: the same WAL, uncompressed, in plain files.
    mkdir "$WORK/plain-wal"
    for f in "$WF_REPO"/wal/*; do
        b=$(basename "$f")
        case "$b" in
        *.partial* | .*) ;;
        *.lz4) lz4 -d -q "$f" "$WORK/plain-wal/${b%.lz4}" ;;
        *.zst) zstd -d -q "$f" -o "$WORK/plain-wal/${b%.zst}" ;;
        *.gz) gzip -dc "$f" >"$WORK/plain-wal/${b%.gz}" ;;
        *) cp "$f" "$WORK/plain-wal/$b" ;;
        esac
    done
    chown -R postgres: "$WORK/plain-wal"

    # One layout, copied for each run: all runs recover the same base over the same WAL.
    t0=${EPOCHREALTIME/./}
    as_pg "$WALFERRY" restore --repo "$WF_REPO" --pgdata "$WORK/replay-template" -j "$JOBS" >>"$WORK/restore.log" 2>&1 ||
        failed "walferry restore" "$WORK/restore.log"
    echo "    walferry restore laid out the base in $(ms_since "$t0") ms (checks the archive first)"
    WF_RESTORE_COMMAND=$(grep "^restore_command" "$WORK/replay-template/postgresql.auto.conf" | tail -1)
    # Segments replayed: from the one backup_label names to the last one written.
    FIRST_SEG=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]*\))$/\1/p' "$WORK/replay-template/backup_label")
    LAST_SEG=$(seg_name "$(lsn_to_int "$lsn1")")
    NSEG=$((0x${LAST_SEG:16} - 0x${FIRST_SEG:16} + 256 * (0x${LAST_SEG:8:8} - 0x${FIRST_SEG:8:8}) + 1))

    CP_CMD="restore_command = 'cp $WORK/plain-wal/%f %p'"
    PGBR_CMD="restore_command = 'pgbackrest --config=$PGBR_CONF --stanza=bench --archive-async --spool-path=$WORK/pgbr-spool --process-max=$JOBS --pg1-path=$WORK/replay archive-get %f \"%p\"'"
    NAMES=(walferry cp pgbackrest)
    # Other recovery settings for walferry (the restored conf has the primary's
    # shared_buffers = 256MB), and cp with the largest shared_buffers as their floor.
    [ "$REPLAY_VARIANTS" = 1 ] && NAMES+=(wf-noprefetch wf-io64 wf-sb1g cp-sb1g)
    echo "==> replay: $NSEG segments ($FIRST_SEG .. $LAST_SEG), $REPLAY_ROUNDS round(s), order rotated"
    echo "    walferry's $WF_RESTORE_COMMAND"
    # Not counted: the first recovery after the layout runs with colder caches than the rest.
    echo "  warm-up"
    replay_one warmup "$CP_CMD"
    for ((round = 1; round <= REPLAY_ROUNDS; round++)); do
        echo "  round $round"
        for ((i = 0; i < ${#NAMES[@]}; i++)); do
            name=${NAMES[(i + round - 1) % ${#NAMES[@]}]}
            rm -rf "$WORK/pgbr-spool"/*
            case "$name" in
            walferry) replay_one walferry ;;
            cp) replay_one cp "$CP_CMD" ;;
            pgbackrest) replay_one pgbackrest "$PGBR_CMD" ;;
            wf-noprefetch) replay_one "$name" "recovery_prefetch = off" ;;
            wf-io64) replay_one "$name" "maintenance_io_concurrency = 64" "wal_decode_buffer_size = '4MB'" ;;
            wf-sb1g) replay_one "$name" "shared_buffers = '1GB'" ;;
            cp-sb1g) replay_one "$name" "$CP_CMD" "shared_buffers = '1GB'" ;;
            esac
        done
    done

    # Per segment, outside PostgreSQL: each restore_command called in a loop over the
    # archive's segments, in a directory holding the cluster's global/pg_control (as a
    # data directory would), the output removed after each call.
    echo "==> per-segment cost of each restore_command, every segment of the archive in a loop"
    LOOP=$WORK/loop
    mkdir -p "$LOOP/global" "$LOOP/pg_wal"
    cp "$PGDATA_DIR/global/pg_control" "$LOOP/global/"
    chown -R postgres: "$LOOP"
    SEGS=$(ls "$WORK/plain-wal" | grep '^[0-9A-F]\{24\}$' | tr '\n' ' ')
    NLOOP=$(wc -w <<<"$SEGS")
    loop_cost() { # NAME COMMAND-TEMPLATE (%f, %p)
        local name=$1 tmpl=$2 t0 cmd f
        rm -rf "$LOOP/pg_wal"/* "$WORK/pgbr-spool"/*
        t0=${EPOCHREALTIME/./}
        for f in $SEGS; do
            cmd=${tmpl//%f/$f}
            cmd=${cmd//%p/pg_wal/RECOVERYXLOG}
            (cd "$LOOP" && as_pg sh -c "$cmd") >/dev/null 2>>"$WORK/loop.log" || {
                echo "$name failed on $f" >&2
                return 1
            }
            rm -f "$LOOP/pg_wal/RECOVERYXLOG"
        done
        local us=$((${EPOCHREALTIME/./} - t0))
        T[seg-$name]=$((us / NLOOP))
        printf '  %-28s %6.1f ms per segment (%d)\n' "$name" "$(awk -v u="$us" -v n="$NLOOP" 'BEGIN{print u/n/1000}')" "$NLOOP"
    }
    loop_cost cp "cp $WORK/plain-wal/%f %p"
    loop_cost "walferry --prefetch 0" "$WALFERRY archive-get --repo $WF_REPO --prefetch 0 %f %p"
    loop_cost "walferry (prefetch 8)" "$WALFERRY archive-get --repo $WF_REPO %f %p"
    loop_cost "pgbackrest (sync)" "pgbackrest --config=$PGBR_CONF --stanza=bench --pg1-path=$LOOP archive-get %f %p"
    loop_cost "pgbackrest (async)" "pgbackrest --config=$PGBR_CONF --stanza=bench --archive-async --spool-path=$WORK/pgbr-spool --process-max=$JOBS --pg1-path=$LOOP archive-get %f %p"
    sleep 0.5
    rm -rf "$WORK/replay-template"
fi

# --- summary ---------------------------------------------------------------------------
med() { echo "${T[$1]:-}" | median; }
echo
echo "walferry vs pgBackRest $(pgbackrest version | awk '{print $2}') ($(df --output=fstype "$WORK" | tail -1), fsync = $FSYNC, -j / --process-max $JOBS, pgbench scale $SCALE = $DB_MB MiB):"
if want backup; then
    echo " full backup, median of $ROUNDS round(s) (target: walferry <= 0.8x pgBackRest):"
    for comp in lz4 zstd; do
        b=$(med backup-pgbackrest-$comp)
        bc=$(med backup-cpu-pgbackrest-$comp)
        label=$comp
        [ "$comp" = zstd ] && label="zstd:1"
        for m in $BACKUP_METHODS; do
            w=$(med backup-walferry-$m-$comp)
            printf '   %-7s walferry (%-8s) %7d ms (%5s MiB), pgBackRest %7d ms (%5s MiB): %s\n' "$label" "$m" "$w" \
                "${SIZE[walferry-$m-$comp]}" "$b" "${SIZE[pgbackrest-$comp]}" "$(ratio "$w" "$b")"
            wc_=$(med backup-cpu-walferry-$m-$comp)
            printf '           cpu of the tool (not the server'"'"'s): walferry %7d ms, pgBackRest %7d ms: %s\n' "$wc_" "$bc" "$(ratio "$wc_" "$bc")"
        done
    done
    echo "   load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
if want restore; then
    echo " restore (laying out PGDATA), median of $ROUNDS round(s) (targets: walferry <= 0.8x pgBackRest; delta <= 0.3x full):"
    for comp in lz4 zstd; do
        [ -n "${T[restore-walferry-$comp]:-}" ] || continue
        w=$(med restore-walferry-$comp)
        b=$(med restore-pgbackrest-$comp)
        wd=$(med delta-walferry-$comp)
        bd=$(med delta-pgbackrest-$comp)
        printf '   %-5s walferry %7d ms, pgBackRest %7d ms: %s (cpu %d vs %d ms: %s)\n' "$comp" "$w" "$b" "$(ratio "$w" "$b")" \
            "$(med cpu-restore-walferry-$comp)" "$(med cpu-restore-pgbackrest-$comp)" \
            "$(ratio "$(med cpu-restore-walferry-$comp)" "$(med cpu-restore-pgbackrest-$comp)")"
        printf '   %-5s walferry --delta, unchanged PGDATA %7d ms: %s of its full restore (pgBackRest --delta %d ms: %s of its own)\n' \
            "$comp" "$wd" "$(ratio "$wd" "$w")" "$bd" "$(ratio "$bd" "$b")"
    done
    echo "   restored directory: $RESTORE_CHECK"
fi
if want replay; then
    w=$(med replay-walferry)
    c=$(med replay-cp)
    b=$(med replay-pgbackrest)
    echo " replay of $REPLAY_WAL_MB MiB of WAL ($NSEG segments, archives: $WAL_COMPRESS) through restore_command, from starting"
    echo " the postmaster to the end of recovery, median of $REPLAY_ROUNDS round(s) (target: walferry within 5% of cp):"
    printf '   walferry archive-get:        %7d ms: %s of cp\n' "$w" "$(ratio "$w" "$c")"
    printf '   cp (uncompressed copy):      %7d ms\n' "$c"
    printf '   pgBackRest async archive-get %7d ms: %s of cp; walferry / pgBackRest %s\n' "$b" "$(ratio "$b" "$c")" "$(ratio "$w" "$b")"
    awk -v w="$w" -v c="$c" -v n="$NSEG" 'BEGIN { printf "   walferry - cp, per segment replayed: %+.1f ms\n", (w - c) / n }'
    if [ "$REPLAY_VARIANTS" = 1 ]; then
        echo "   other recovery settings (median of $REPLAY_ROUNDS), against walferry's median above:"
        for v in wf-noprefetch wf-io64 wf-sb1g cp-sb1g; do
            printf '     %-14s %7d ms: %s  (%s)\n' "$v" "$(med replay-$v)" "$(ratio "$(med replay-$v)" "$w")" "${REDO[$v]}"
        done
    fi
    echo "   per segment, called in a loop outside PostgreSQL:"
    for k in cp "walferry --prefetch 0" "walferry (prefetch 8)" "pgbackrest (sync)" "pgbackrest (async)"; do
        printf '     %-24s %6.1f ms\n' "$k" "$(awk -v u="${T[seg-$k]}" 'BEGIN{print u/1000}')"
    done
fi
