#!/usr/bin/env bash
# Write-back throughput (a benchmark, not a test): ROWS rows inserted at once into shop.support;
# Comprehend sentiment from the AWS stand-in (no added latency, a quota high enough not to
# bind) written back into each row by `sink: mysql`. Timed from the INSERT until every row holds
# its sentiment, for two transaction sizes.
# Usage: scripts/bench_writeback.sh [rows]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-20000}
need_mariadb
cargo build --release --locked -q
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cdc-enricher
W=$PWD/.bench-writeback
rm -rf "$W"; mkdir -p "$W/pipelines"
DAEMON=; STANDIN=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  [ -n "$STANDIN" ] && kill "$STANDIN" 2>/dev/null
  stop_pidfile "$W/db/server.pid"
}
trap cleanup EXIT
P=$(free_port)
start_mariadb "$W/db" "$P"
start_standin "$W"
q "CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, sentiment VARCHAR(20), confidence DOUBLE);
   CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
   GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON shop.* TO 'writer'@'127.0.0.1';"
cat > "$W/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: 779, heartbeat_ms: 1000}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 100}
YAML

# run BATCH FIRST_ID: seconds until ROWS rows starting at FIRST_ID all hold their sentiment.
run() {
  cat > "$W/pipelines/s.yaml" <<YAML
name: s
table: shop.support
columns: [id, message]
enrichment:
  comprehend: {operation: sentiment, text: message}
  endpoint_url: "$STANDIN_URL"
  requests_per_second: 1000
  concurrency: 4
  max_wait_ms: 20
sink:
  mysql: {mode: update, user: writer, password: writer-secret, batch_size: $1, columns: {sentiment: /sentiment, confidence: /confidence}}
YAML
  ( cd "$W" && exec "$BIN" run -c cdc-enricher.yaml 2>>daemon.log ) & DAEMON=$!
  sleep 2
  local last=$(($2 + ROWS - 1))
  local start; start=$(date +%s.%N)
  q "INSERT INTO shop.support (id, message) SELECT seq, CONCAT('good review number ', seq) FROM shop.seq_$2_to_$last"
  until [ "$(q "SELECT COUNT(*) FROM shop.support WHERE id >= $2 AND sentiment IS NOT NULL")" = "$ROWS" ]; do sleep 0.05; done
  python3 -c "import time; print(time.time() - $start)"
  kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
}
log "write-back: $ROWS rows, transactions of 50"
t50=$(run 50 1)
log "write-back: $ROWS rows, transactions of 500"
t500=$(run 500 $((ROWS + 1)))
echo
echo "| write-back ($ROWS rows, sentiment + confidence per row) | seconds | rows/s |"
echo "|---|---|---|"
python3 -c "print(f'| transactions of 50 rows | {$t50:.1f} | {$ROWS/$t50:,.0f} |'); print(f'| transactions of 500 rows | {$t500:.1f} | {$ROWS/$t500:,.0f} |')"
