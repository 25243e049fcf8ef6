#!/usr/bin/env bash
# The whole test suite: installs MariaDB (Debian) and the tansu broker where missing, then
# runs formatting, lints, unit and integration tests against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_mariadb
need_tansu
need_docker_compose
if [ ! -d ../shared/fixtures/mysql-binlogs ]; then
  echo "../shared/fixtures/mysql-binlogs is missing (the fixture binlogs live beside the project)" >&2
  exit 1
fi
log "docker-compose.yml is valid"
docker-compose -f docker-compose.yml config -q
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test"
cargo test --locked
