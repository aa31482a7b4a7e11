#!/usr/bin/env bash
# The main job: the example app's #[db_test] suite on the embedded PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
unset DATABASE_URL
exec cargo test -p example-app "$@"
