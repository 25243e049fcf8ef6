#!/usr/bin/env bash
# Isolation benchmark: a binlog where 90% of the rows belong to tables no pipeline reads (two
# wide tables, 900,000 rows) and 10% to the one a pipeline reads (100,000 rows), interleaved in
# transactions of 10,000. The daemon streams it to Kafka (a release build of tansu) until its
# checkpoint covers the binlog; the figure is the read table's rows per second.
#
# Usage: scripts/bench_unread.sh [OTHER_BINARY]
#   With OTHER_BINARY (a build of another version, e.g. `git worktree add /tmp/old <rev>` and
#   `cargo build --release` there), the two run in turn, A B A B A B, and the ratio is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
OTHER=${1:-}
need_mariadb
need_tansu_release
BENCH_BIN= bench_binary
bench_servers "$PWD/.bench-unread"

wide="i1 INT, i2 INT UNSIGNED, i3 BIGINT, d1 DECIMAL(12,2), f1 DOUBLE, s1 VARCHAR(32), s2 VARCHAR(64),
  t1 TEXT, b1 VARBINARY(16), j1 JSON, dt1 DATETIME(6), e1 ENUM('new','paid','shipped'), z INT"
wval="seq, seq, seq, seq*3, seq/7, seq/3, CONCAT('name-', seq), MD5(seq), REPEAT('x', 40), UNHEX(MD5(seq)),
  JSON_OBJECT('k', seq), '2024-01-01 00:00:00.5' + INTERVAL seq SECOND, ELT(1 + seq % 3, 'new', 'paid', 'shipped'), seq"
q "CREATE DATABASE bench;
   CREATE TABLE bench.r (id INT PRIMARY KEY, a INT, b BIGINT, c VARCHAR(32), d DOUBLE, e DATETIME(6));
   CREATE TABLE bench.u1 (id INT PRIMARY KEY, $wide);
   CREATE TABLE bench.u2 (id INT PRIMARY KEY, $wide);
   FLUSH BINARY LOGS;"
FILE=$(q "SHOW MASTER STATUS" | cut -f1)
log "writing 100,000 read rows and 900,000 unread rows"
for ((i = 0; i < 100; i++)); do
  r=$((i * 1000)); u=$((i * 4500))
  echo "BEGIN;
    INSERT INTO bench.u1 SELECT $wval FROM bench.seq_$((u + 1))_to_$((u + 4500));
    INSERT INTO bench.r SELECT seq, seq*7, seq*1000003, CONCAT('row-', seq), seq/3, '2024-01-01' + INTERVAL seq SECOND FROM bench.seq_$((r + 1))_to_$((r + 1000));
    INSERT INTO bench.u2 SELECT $wval FROM bench.seq_$((u + 1))_to_$((u + 4500));
    COMMIT;"
done | mariadb --no-defaults -h127.0.0.1 -P"$P" -uadmin -padminpw
q "FLUSH BINARY LOGS"
END=$(stat -c %s "$W/db/data/$FILE")

# run BINARY N: the daemon from the binlog's start until its checkpoint covers it; prints seconds.
run() {
  local dir=$W/run-$2
  mkdir -p "$dir/pipelines"
  cat > "$dir/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: $((800 + $2)), heartbeat_ms: 1000}
kafka: {brokers: "127.0.0.1:$KP", properties: {linger.ms: "5", batch.num.messages: "10000"}}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 50}
YAML
  printf 'name: r\ntable: bench.r\nsink: {kafka: {topic: r%s}}\n' "$2" > "$dir/pipelines/r.yaml"
  echo "{\"version\":1,\"position\":{\"file\":\"$FILE\",\"pos\":4}}" > "$dir/cp.json"
  local start; start=$(date +%s.%N)
  ( cd "$dir" && exec "$1" run -c cdc-enricher.yaml 2>daemon.log ) & DAEMON=$!
  until python3 -c "import json,sys; p=json.load(open('$dir/cp.json'))['position']; sys.exit(0 if p['file']!='$FILE' or p['pos']>=$END-100 else 1)" 2>/dev/null; do sleep 0.02; done
  python3 -c "import time; print(time.time() - $start)"
  kill -TERM $DAEMON; wait $DAEMON || true; DAEMON=
}

A=(); B=()
for round in 1 2 3; do
  log "round $round"
  A+=("$(run "$BIN" "$round")")
  [ -n "$OTHER" ] && B+=("$(run "$OTHER" "$((round + 10))")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
a=$(median "${A[@]}")
echo
echo "isolation benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, MariaDB $(q 'SELECT VERSION()'), binlog $((END / 1000000)) MB"
echo
echo "| daemon | seconds (median of 3) | read-table rows/s |"
echo "|---|---|---|"
echo "| this version | $a | $(python3 -c "print(f'{100000/$a:,.0f}')") |"
if [ -n "$OTHER" ]; then
  b=$(median "${B[@]}")
  echo "| $OTHER | $b | $(python3 -c "print(f'{100000/$b:,.0f}')") |"
  pairs=$(python3 -c "a=[$(IFS=,; echo "${A[*]}")]; b=[$(IFS=,; echo "${B[*]}")]; r=sorted(y/x for x,y in zip(a,b)); print(f'{r[1]:.2f} (pairs: {min(r):.2f}–{max(r):.2f})')")
  echo "| speed-up, other ÷ this (median of the pairs) | $pairs | |"
fi
