#!/usr/bin/env bash
# Idempotent machine set-up for a fresh Debian bookworm (or a machine that already has it all):
# PostgreSQL 15 server + client programs, openssl, etcd (the failover state's other backend,
# for its tests), and cargo-nextest. Safe to run repeatedly.
# Tests start their own clusters; the Debian-managed cluster is neither needed nor touched.
set -euo pipefail

PG_BIN=${WALFERRY_PG_BIN:-/usr/lib/postgresql/15/bin}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "setup.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

need_packages=0
[ -x "$PG_BIN/postgres" ] || need_packages=1
[ -x "$PG_BIN/psql" ] || command -v psql >/dev/null 2>&1 || need_packages=1
command -v openssl >/dev/null 2>&1 || need_packages=1
command -v etcd >/dev/null 2>&1 || [ "${WALFERRY_SETUP_NO_ETCD:-}" = 1 ] || need_packages=1

if [ "$need_packages" -eq 1 ]; then
    echo "setup.sh: installing postgresql-15, postgresql-client-15, openssl, etcd-server"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends \
        postgresql-15 postgresql-client-15 openssl
    if [ "${WALFERRY_SETUP_NO_ETCD:-}" != 1 ]; then
        as_root apt-get install -y -q --no-install-recommends etcd-server
        # The package starts a system etcd on the default ports; the tests run their own.
        as_root systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

if ! getent passwd postgres >/dev/null 2>&1; then
    echo "setup.sh: no 'postgres' system user after install; the tests need it when run as root" >&2
    exit 1
fi

# The test runner only: scripts/demo.sh, which runs no tests, sets WALFERRY_SETUP_NO_NEXTEST=1.
if cargo nextest --version >/dev/null 2>&1 || [ "${WALFERRY_SETUP_NO_NEXTEST:-}" = 1 ]; then
    :
else
    echo "setup.sh: installing cargo-nextest (cargo install --locked)"
    if ! cargo install cargo-nextest --locked; then
        echo "setup.sh: cargo-nextest could not be installed; scripts/test.sh falls back to cargo test" >&2
    fi
fi

# The S3-compatible server the object-storage tests run (tests/s3_repo.rs): s3s-fs, built
# from crates.io into ~/.cargo/bin once and kept there. scripts/demo.sh sets
# WALFERRY_SETUP_NO_S3=1.
S3S_FS_VERSION=0.14.1
if [ "${WALFERRY_SETUP_NO_S3:-}" = 1 ] || "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --version 2>/dev/null | grep -q " $S3S_FS_VERSION"; then
    :
else
    echo "setup.sh: installing s3s-fs $S3S_FS_VERSION (cargo install --locked; a few minutes, once)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi

echo "setup.sh: postgres $("$PG_BIN/postgres" --version | awk '{print $3}'), $(openssl version | awk '{print $1, $2}'), $(cargo nextest --version 2>/dev/null | head -n1 || echo 'no cargo-nextest')"
