#!/usr/bin/env bash
# Memory of one large XA transaction (a benchmark, not a test): the daemon's peak RSS (VmHWM)
# while ROWS rows are prepared (XA PREPARE: held, in a spill file past
# source.transaction_buffer_mb) and then committed (XA COMMIT: decoded again and sent to
# Kafka), until its checkpoint covers the commit; with the seconds from XA COMMIT to there.
# With OTHER=path/to/cdc-enricher a second build runs the same, in turn (B O B O).
# Usage: scripts/bench_xa.sh [rows]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-1000000}
need_mariadb
need_tansu_release
bench_binary
bench_servers "$PWD/.bench-xa"
q "CREATE DATABASE bench;
   CREATE TABLE bench.xa (id INT PRIMARY KEY, a INT, b BIGINT, c VARCHAR(32), d DOUBLE, e DATETIME(6));"

# run BINARY N: "peak-RSS-MB seconds" for one ROWS-row XA transaction (table emptied first).
run() {
  local bin=$1 n=$2 d=$W/run-$2
  mkdir -p "$d/pipelines"
  q "TRUNCATE bench.xa"
  cat > "$d/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: $((800 + n)), heartbeat_ms: 1000, start: latest}
kafka: {brokers: "127.0.0.1:$KP"}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 50}
YAML
  printf 'name: xa\ntable: bench.xa\nsink: {kafka: {topic: xa-%s}}\n' "$n" > "$d/pipelines/xa.yaml"
  ( cd "$d" && exec "$bin" run -c cdc-enricher.yaml 2>daemon.log ) & DAEMON=$!
  until grep -q "reading the binlog" "$d/daemon.log" 2>/dev/null; do
    kill -0 "$DAEMON" 2>/dev/null || { cat "$d/daemon.log" >&2; exit 1; }
    sleep 0.1
  done
  q "XA START 'big'; INSERT INTO bench.xa SELECT seq, seq*7, seq*1000003, CONCAT('row-', seq), seq/3,
       '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND FROM bench.seq_1_to_$ROWS;
     XA END 'big'; XA PREPARE 'big';"
  local start; start=$(date +%s.%N)
  q "XA COMMIT 'big'"
  local end; end=$(q "SHOW MASTER STATUS" | cut -f2)
  python3 - "$d/cp.json" "$end" <<'PY'
import json, sys, time
while True:
    try:
        with open(sys.argv[1]) as f:
            p = json.load(f)
        if p["position"]["pos"] >= int(sys.argv[2]) and not p.get("open_xa"):
            break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.05)
PY
  local secs; secs=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
  local kb; kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$DAEMON/status")
  kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
  echo "$((kb / 1024)) $secs"
}

B=(); O=()
for i in 1 2; do
  log "round $i"
  B+=("$(run "$BIN" "$i")")
  [ -n "${OTHER:-}" ] && O+=("$(run "$OTHER" "$((i + 10))")")
done
echo
echo "| build | peak RSS MB, seconds (XA COMMIT -> checkpointed), per round |"
echo "|---|---|"
echo "| this build | ${B[*]} |"
[ -n "${OTHER:-}" ] && echo "| OTHER | ${O[*]} |"
