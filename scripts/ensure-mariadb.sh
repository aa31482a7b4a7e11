#!/usr/bin/env bash
# Makes sure MariaDB (or MySQL) server binaries are installed, installing
# MariaDB's with the system's package manager if not. db-test starts its
# own private server from them (socket only, data under its cache dir);
# nothing is configured, and the system service is never started: on Debian
# and Ubuntu a temporary policy-rc.d keeps the package from starting it.
set -euo pipefail

have_binaries() {
    local d
    if [ -n "${DB_TEST_MYSQL_BIN:-}" ]; then
        if [ -f "$DB_TEST_MYSQL_BIN" ] || [ -x "$DB_TEST_MYSQL_BIN/mariadbd" ] || [ -x "$DB_TEST_MYSQL_BIN/mysqld" ]; then
            return 0
        fi
    fi
    if command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1; then return 0; fi
    for d in /usr/sbin /usr/libexec /usr/local/sbin /usr/local/mysql/bin /usr/local/bin; do
        if [ -x "$d/mariadbd" ] || [ -x "$d/mysqld" ]; then return 0; fi
    done
    return 1
}

if have_binaries; then exit 0; fi

echo "db-test: MariaDB/MySQL server binaries not found; installing MariaDB's." >&2
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [ ! -e "$policy" ]; then
        # 101: "action not allowed": the package installs without starting
        # the mariadb service.
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        created_policy=1
    fi
    cleanup() { if [ -n "$created_policy" ]; then $sudo rm -f "$policy"; fi; }
    trap cleanup EXIT
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        mariadb-server mariadb-client >/dev/null
elif command -v dnf >/dev/null 2>&1; then
    $sudo dnf install -y mariadb-server
elif command -v brew >/dev/null 2>&1; then
    brew install mariadb
elif command -v apk >/dev/null 2>&1; then
    $sudo apk add mariadb mariadb-client
else
    echo "db-test: cannot install MariaDB here; install it (or set DB_TEST_MYSQL_URL) and retry." >&2
    exit 1
fi
have_binaries || { echo "db-test: MariaDB installed but its server binary was not found." >&2; exit 1; }
