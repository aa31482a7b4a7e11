#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are
# installed, installing them with the system's package manager if not.
# db-test starts its own private server from them; nothing is configured.
set -euo pipefail

have_binaries() {
    local d
    if [ -n "${DB_TEST_PG_BIN:-}" ] && [ -x "$DB_TEST_PG_BIN/initdb" ]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then return 0; fi
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then return 0; fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then return 0; fi
    done
    return 1
}

if have_binaries; then exit 0; fi

echo "db-test: PostgreSQL server binaries not found; installing them." >&2
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql postgresql-client >/dev/null
elif command -v dnf >/dev/null 2>&1; then
    $sudo dnf install -y postgresql-server postgresql
elif command -v brew >/dev/null 2>&1; then
    brew install postgresql
elif command -v apk >/dev/null 2>&1; then
    $sudo apk add postgresql postgresql-client
else
    echo "db-test: cannot install PostgreSQL here; install it (or set DATABASE_URL) and retry." >&2
    exit 1
fi
have_binaries || { echo "db-test: PostgreSQL installed but its binaries were not found." >&2; exit 1; }
