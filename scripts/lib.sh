# Shared helpers for the demo, CI and benchmark scripts: install what is missing, start a
# throwaway MariaDB with a row binlog and a tansu Kafka broker on free 127.0.0.1 ports.
# Never touches the machine's own server on 3306.

TANSU_VERSION=0.6.0
TANSU_BIN=${TANSU_BIN:-$HOME/.cache/cdc-enricher/tansu-$TANSU_VERSION/bin/tansu}
export TANSU_BIN

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_mariadb() {
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    log "installing MariaDB from Debian"
    apt-get update -qq
    # The package's own service is not wanted: tests start their own server.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
  export PATH="$PATH:/usr/sbin"
}

# need_tansu_release: benchmarks measure against a release build of the broker (tests use the
# debug build, which builds in half the time; its produce path is what dominates latency).
# BENCH_TANSU_BIN overrides it (say which broker ran when recording figures).
need_tansu_release() {
  if [ -n "${BENCH_TANSU_BIN:-}" ]; then
    TANSU_BIN=$BENCH_TANSU_BIN
    export TANSU_BIN
    log "broker for this benchmark: $TANSU_BIN (BENCH_TANSU_BIN)"
    return
  fi
  local root=$HOME/.cache/cdc-enricher/tansu-$TANSU_VERSION-release
  if [ ! -x "$root/bin/tansu" ]; then
    log "building the tansu Kafka broker $TANSU_VERSION in release mode, for benchmarks (once; cached in $root)"
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo install tansu --version "$TANSU_VERSION" --locked \
      --features dynostore --root "$root" >&2
  fi
  TANSU_BIN=$root/bin/tansu
  export TANSU_BIN
}

# Debian's docker-compose checks a compose file without a container engine.
need_docker_compose() {
  if ! command -v docker-compose >/dev/null 2>&1; then
    log "installing docker-compose from Debian (to validate docker-compose.yml)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  fi
}

need_tansu() {
  if [ ! -x "$TANSU_BIN" ]; then
    log "building the tansu Kafka broker $TANSU_VERSION (once; cached in $(dirname "$(dirname "$TANSU_BIN")"))"
    CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version "$TANSU_VERSION" --locked --debug \
      --features dynostore --root "$(dirname "$(dirname "$TANSU_BIN")")" >&2
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_mariadb DIR PORT: a server with log_bin, ROW format, FULL image and metadata;
# users admin/adminpw (all) and cdc/cdc-secret (replication + SELECT).
start_mariadb() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat > "$dir/init.sql" <<SQL
CREATE USER IF NOT EXISTS 'admin'@'127.0.0.1' IDENTIFIED BY 'adminpw';
GRANT ALL ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'cdc'@'127.0.0.1' IDENTIFIED BY 'cdc-secret';
GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'cdc'@'127.0.0.1';
SQL
  if [ ! -d "$dir/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/data" --user=root --skip-test-db \
      --auth-root-authentication-method=normal >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; return 1; }
  fi
  mariadbd --no-defaults --user=root --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/error.log" \
    --log-bin="$dir/data/binlog" --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL \
    --server-id=1 --skip-name-resolve --init-file="$dir/init.sql" --innodb-buffer-pool-size=128M \
    --max-allowed-packet=64M --character-set-server=utf8mb4 >/dev/null 2>&1 &
  echo $! > "$dir/server.pid"
  for _ in $(seq 1 100); do
    if mariadb --no-defaults -h127.0.0.1 -P"$port" -uadmin -padminpw -e 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  echo "MariaDB did not start; see $dir/error.log" >&2
  tail -20 "$dir/error.log" >&2
  return 1
}

# sql DIR PORT "statements"
sql() {
  mariadb --no-defaults --default-character-set=utf8mb4 -h127.0.0.1 -P"$2" -uadmin -padminpw -e "$3"
}

# start_tansu DIR PORT
start_tansu() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  echo $! > "$dir/tansu.pid"
  for _ in $(seq 1 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "tansu did not start; see $dir/tansu.log" >&2
  return 1
}

# write_t6 PORT ROWS: creates bench.t6 (6 columns) on the benchmark server at PORT and writes
# ROWS rows into it in transactions of 10,000, in a binlog file of their own; prints its name.
write_t6() {
  local port=$1 rows=$2 i hi file
  local q=(mariadb --no-defaults -N -B -h127.0.0.1 -P"$port" -uadmin -padminpw -e)
  "${q[@]}" "CREATE DATABASE bench;
     CREATE TABLE bench.t6 (id INT PRIMARY KEY, a INT, b BIGINT, c VARCHAR(32), d DOUBLE, e DATETIME(6));
     FLUSH BINARY LOGS;"
  file=$("${q[@]}" "SHOW MASTER STATUS" | cut -f1)
  log "writing $rows rows into bench.t6"
  for ((i = 0; i < rows; i += 10000)); do
    hi=$((i + 10000 < rows ? i + 10000 : rows))
    echo "INSERT INTO bench.t6 SELECT seq, seq*7, seq*1000003, CONCAT('row-', seq), seq/3,
      '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND FROM bench.seq_$((i + 1))_to_$hi;"
  done | mariadb --no-defaults -h127.0.0.1 -P"$port" -uadmin -padminpw
  "${q[@]}" "FLUSH BINARY LOGS"
  echo "$file"
}

stop_pidfile() {
  [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null; rm -f "$1"
}

# start_standin DIR: the local AWS stand-in on a free port (pid in STANDIN, address in
# STANDIN_URL), and the environment the SDK needs to sign requests it accepts — nothing else of
# AWS's default chain (no profile files, no instance metadata).
start_standin() {
  python3 tests/aws_standin/standin.py 0 > "$1/standin.port" & STANDIN=$!
  until grep -q PORT "$1/standin.port" 2>/dev/null; do sleep 0.1; done
  STANDIN_URL=http://127.0.0.1:$(cut -d' ' -f2 "$1/standin.port")
  export AWS_ACCESS_KEY_ID=AKIDSTANDIN AWS_SECRET_ACCESS_KEY=standin-secret AWS_REGION=us-east-1
  export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true
}

# bench_binary: the daemon a benchmark runs, in BIN: BENCH_BIN (a build made before; say which
# commit it is when recording figures), or a release build of this checkout.
bench_binary() {
  if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
  else
    log "building (release)"
    cargo build --release --locked -q
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cdc-enricher
  fi
}

# bench_servers DIR: a fresh DIR holding a MariaDB (port P) and a tansu broker (port KP), both
# stopped on exit with the daemon whose pid is in DAEMON (when set); `q SQL` runs SQL there.
bench_servers() {
  W=$1
  rm -rf "$W"; mkdir -p "$W"
  DAEMON=
  trap '[ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; stop_pidfile "$W/db/server.pid"; stop_pidfile "$W/kafka/tansu.pid"' EXIT
  P=$(free_port); KP=$(free_port)
  start_mariadb "$W/db" "$P"
  start_tansu "$W/kafka" "$KP"
}
# q SQL: runs SQL on the benchmark server at port P.
q() { mariadb --no-defaults -N -B -h127.0.0.1 -P"$P" -uadmin -padminpw -e "$1"; }
