#!/usr/bin/env bash
# Benchmarks (never timed tests): builds 1M-row binlogs on a throwaway MariaDB and prints a
# table for this machine and this run:
#   decode  : cdc-enricher's decoder into a null sink (one core, from the file)
#   stream  : the same binlog over the replication protocol into a null sink
#   floor   : mariadb-binlog --read-from-remote-server reading the same binlog
#   e2e     : binlog -> daemon -> Kafka (tansu), until the checkpoint covers every row
#   ceiling : an rdkafka producer sending the same records with no source
#   rss     : peak RSS of the daemon while one 1M-row transaction flows to Kafka (held in a
#             spill file until its end, then emitted), while a 1M-row group that ends in
#             ROLLBACK is held and dropped, and while a transaction flows to a slow enrichment
#             backend (the AWS stand-in at 50 ms, 10 calls/s)
#   peer    : python-mysql-replication (PyPI) reading the same binlogs (PEER_ROWS rows of each)
#   latency : commit -> Kafka record at a steady 2,000 rows/s, p50 / p99 / max
#   instr   : instructions per row of the decode path under valgrind --tool=callgrind
# Usage: scripts/bench.sh [rows]   (default 1000000; PEER_ROWS default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-1000000}
PEER_ROWS=${PEER_ROWS:-200000}
need_mariadb
need_tansu_release
PEER_VENV=$HOME/.cache/cdc-enricher/peer-venv
if [ ! -x "$PEER_VENV/bin/python" ] || ! "$PEER_VENV/bin/python" -c 'import pymysqlreplication' 2>/dev/null; then
  log "installing the Python peer (mysql-replication from PyPI) into $PEER_VENV"
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install -q mysql-replication==1.0.17
fi
command -v valgrind >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
log "building (release)"
cargo build --release --locked -q
cargo bench --locked --bench binlog --no-run -q 2>/dev/null
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$PWD/target}"/release/deps/binlog-* | grep -v '\.d$' | head -1)
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cdc-enricher

W=$PWD/.bench
rm -rf "$W"; mkdir -p "$W"
DAEMON=
STANDIN=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  [ -n "$STANDIN" ] && kill "$STANDIN" 2>/dev/null
  stop_pidfile "$W/db/server.pid"; stop_pidfile "$W/kafka/tansu.pid"
}
trap cleanup EXIT
P=$(free_port); KP=$(free_port)
start_mariadb "$W/db" "$P"
start_tansu "$W/kafka" "$KP"

q "CREATE DATABASE bench;
   CREATE TABLE bench.t6 (id INT PRIMARY KEY, a INT, b BIGINT, c VARCHAR(32), d DOUBLE, e DATETIME(6));
   CREATE TABLE bench.t30 (id INT PRIMARY KEY,
     i1 INT, i2 INT UNSIGNED, i3 BIGINT, i4 SMALLINT, i5 TINYINT, i6 MEDIUMINT,
     d1 DECIMAL(12,2), d2 DECIMAL(20,6), f1 FLOAT, f2 DOUBLE,
     s1 VARCHAR(32), s2 VARCHAR(64), s3 CHAR(8), s4 VARCHAR(16) CHARACTER SET latin1, t1 TEXT,
     b1 VARBINARY(16), j1 JSON,
     dt1 DATETIME, dt2 DATETIME(6), ts1 TIMESTAMP(3) NULL, da DATE, tm TIME(3), y YEAR,
     e1 ENUM('new','paid','shipped'), st SET('a','b','c'), bt BIT(8), n1 INT NULL, n2 VARCHAR(8) NULL, z INT);"

# fill TABLE SELECT-EXPR: ROWS rows in transactions of 10,000, in a binlog file of their own.
fill() {
  q "FLUSH BINARY LOGS"
  local file; file=$(q "SHOW MASTER STATUS" | cut -f1)
  local step=10000 i
  for ((i = 0; i < ROWS; i += step)); do
    local hi=$((i + step < ROWS ? i + step : ROWS))
    echo "INSERT INTO bench.$1 SELECT $2 FROM bench.seq_$((i + 1))_to_$hi;"
  done | mariadb --no-defaults -h127.0.0.1 -P"$P" -uadmin -padminpw
  q "FLUSH BINARY LOGS"
  echo "$file"
}
log "writing $ROWS rows into bench.t6 and bench.t30"
F6=$(fill t6 "seq, seq*7, seq*1000003, CONCAT('row-', seq), seq/3, '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND")
F30=$(fill t30 "seq, seq, seq*3, seq*1000003, seq % 30000, seq % 100, seq % 8000000, seq/7, seq/13, seq/3, seq/11,
  CONCAT('name-', seq), MD5(seq), 'fixed', 'café', REPEAT('x', 40), UNHEX(MD5(seq)), JSON_OBJECT('k', seq, 'v', 'x'),
  '2024-01-01 00:00:00' + INTERVAL seq SECOND, '2024-01-01 00:00:00.5' + INTERVAL seq SECOND,
  '2024-01-01 00:00:00.25' + INTERVAL seq SECOND, '2024-01-01' + INTERVAL (seq % 3000) DAY, '12:34:56.789',
  2024, ELT(1 + seq % 3, 'new', 'paid', 'shipped'), 'a,c', seq % 256, NULL, NULL, seq")
cp "$W/db/data/$F6" "$W/t6.bin"; cp "$W/db/data/$F30" "$W/t30.bin"

best() { sort -n | head -1; }
secs() { grep -o '"seconds":[0-9.e-]*' | cut -d: -f2; }
rate() { python3 -c "import sys; print(f'{$1/$2:,.0f}')"; }
mbs() { python3 -c "print(f'{$1/$2/1e6:,.1f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# wait_checkpoint START FILE POS: one long-running poller (never a process per poll: on 2 cores
# that steals the CPU it measures) waits until the checkpoint is in a later file than FILE or
# at POS or beyond, and prints the seconds since START (a `date +%s.%N`).
wait_checkpoint() {
  python3 - "$W/e2e/cp.json" "$@" <<'PY'
import json, sys, time
cp, start, file, pos = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while True:
    try:
        with open(cp) as f:
            p = json.load(f)["position"]
        if (file and p["file"] != file) or p["pos"] >= pos:
            break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.02)
print(time.time() - start)
PY
}

declare -A R
for t in t6 t30; do
  f=$W/$t.bin; size=$(stat -c %s "$f"); file=$([ $t = t6 ] && echo "$F6" || echo "$F30")
  log "$t: decode (1 core), stream, floor"
  d=$(for _ in 1 2 3; do taskset -c 0 "$BENCH" decode-file "$f" | secs; done | best)
  s=$(for _ in 1 2 3; do taskset -c 0 "$BENCH" stream 127.0.0.1 "$P" cdc cdc-secret "$file" 4 "$ROWS" | secs; done | best)
  fl=$(for _ in 1 2 3; do /usr/bin/time -f %e mariadb-binlog --no-defaults --read-from-remote-server -h127.0.0.1 -P"$P" \
        -ucdc -pcdc-secret "$file" 2>&1 >/dev/null | tail -1; done | best)
  log "$t: python-mysql-replication peer ($PEER_ROWS rows)"
  pe=$("$PEER_VENV/bin/python" scripts/bench/peer.py 127.0.0.1 "$P" cdc cdc-secret "$file" "$PEER_ROWS" | secs)
  log "$t: instructions per row (callgrind)"
  ir=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BENCH" decode-file "$f" 2>&1 >/dev/null \
        | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p')
  R[$t]="$size $d $s $fl $pe $ir"
done

# End to end into Kafka: the daemon starts at the t6 binlog (a checkpoint written for it).
log "e2e: binlog -> daemon -> Kafka"
mkdir -p "$W/e2e/pipelines"
cat > "$W/e2e/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: 777, heartbeat_ms: 1000}
kafka: {brokers: "127.0.0.1:$KP", properties: {linger.ms: "5", batch.num.messages: "10000"}}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 50}
YAML
echo 'name: t6
table: bench.t6
sink: {kafka: {topic: bench6}}' > "$W/e2e/pipelines/t6.yaml"
echo "{\"version\":1,\"position\":{\"file\":\"$F6\",\"pos\":4}}" > "$W/e2e/cp.json"
end6=$(( $(stat -c %s "$W/t6.bin") - 100 ))
start=$(date +%s.%N)
( cd "$W/e2e" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon.log ) & DAEMON=$!
e2e=$(wait_checkpoint "$start" "$F6" "$end6")
kill -TERM $DAEMON; wait $DAEMON || true; DAEMON=
log "ceiling: rdkafka producer alone"
ceil=$("$BENCH" produce "127.0.0.1:$KP" ceiling6 "$W/t6.bin" | secs)

# Peak RSS while one 1M-row transaction flows to Kafka.
log "rss: one $ROWS-row transaction"
q "CREATE TABLE bench.big LIKE bench.t6"
sed -i 's/table: bench.t6/table: bench.big/; s/topic: bench6/topic: big/' "$W/e2e/pipelines/t6.yaml"
rm -f "$W/e2e/cp.json"
sed -i "s/heartbeat_ms: 1000}/heartbeat_ms: 1000, start: latest}/" "$W/e2e/cdc-enricher.yaml"
( cd "$W/e2e" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon-rss.log ) & DAEMON=$!
sleep 1.5
q "INSERT INTO bench.big SELECT * FROM bench.t6"
# The group is whole in the binlog once the INSERT returns: from there until the checkpoint
# covers it, the daemon holds it (a spill file beyond source.transaction_buffer_mb), then
# emits it.
big_start=$(date +%s.%N)
endpos=$(q "SHOW MASTER STATUS" | cut -f2)
big=$(wait_checkpoint "$big_start" "" "$endpos")
# The kernel's high-water mark of the daemon's resident set.
rss_kb=$(awk '/^VmHWM/ {print $2}' /proc/$DAEMON/status)
kill -TERM $DAEMON; wait $DAEMON || true; DAEMON=

# A 1M-row group that ends in ROLLBACK (MariaDB logs it: a temporary table was touched): held,
# then dropped; nothing reaches Kafka.
log "held: one $ROWS-row group that ends in ROLLBACK"
q "CREATE TABLE bench.gone LIKE bench.t6"
sed -i 's/table: bench.big/table: bench.gone/; s/topic: big/topic: gone/' "$W/e2e/pipelines/t6.yaml"
rm -f "$W/e2e/cp.json"
( cd "$W/e2e" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon-held.log ) & DAEMON=$!
sleep 1.5
q "BEGIN; CREATE TEMPORARY TABLE bench.tmp (k INT); INSERT INTO bench.gone SELECT * FROM bench.t6; ROLLBACK;"
held_start=$(date +%s.%N)
endpos=$(q "SHOW MASTER STATUS" | cut -f2)
held=$(wait_checkpoint "$held_start" "" "$endpos")
rss_held_kb=$(awk '/^VmHWM/ {print $2}' /proc/$DAEMON/status)
kill -TERM $DAEMON; wait $DAEMON || true; DAEMON=

# Peak RSS while a 1M-row transaction flows to a slow enrichment backend (60 s of it: the
# backend would take hours; memory must stay bounded by back-pressure all the same).
log "rss: one $ROWS-row transaction to a slow backend (60 s)"
start_standin "$W"
python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('$STANDIN_URL/_control', data=b'{\"delay_ms\": 50}'))" >/dev/null
q "CREATE TABLE bench.slow LIKE bench.t6"
rm -f "$W/e2e/pipelines/t6.yaml" "$W/e2e/cp.json"
cat > "$W/e2e/pipelines/slow.yaml" <<YAML
name: slow
table: bench.slow
enrichment:
  comprehend: {operation: sentiment, text: c}
  endpoint_url: "$STANDIN_URL"
  requests_per_second: 10
sink: {kafka: {topic: slow}}
YAML
( cd "$W/e2e" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon-slow.log ) & DAEMON=$!
sleep 1.5
q "INSERT INTO bench.slow SELECT * FROM bench.t6"
sleep 60
rss_slow_kb=$(awk '/^VmHWM/ {print $2}' /proc/$DAEMON/status)
kill -9 $DAEMON; wait $DAEMON 2>/dev/null || true; DAEMON=
rm -f "$W/e2e/pipelines/slow.yaml" "$W/e2e/cp.json"

# Latency: a steady 2,000 rows/s, one row per transaction, commit -> Kafka record.
log "latency: 2,000 rows/s for 20 s"
q "CREATE TABLE bench.lat (id INT PRIMARY KEY, t BIGINT)"
printf 'name: lat\ntable: bench.lat\nsink: {kafka: {topic: lat}}\n' > "$W/e2e/pipelines/lat.yaml"
( cd "$W/e2e" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon-lat.log ) & DAEMON=$!
sleep 2
lat=$("$BENCH" latency 127.0.0.1 "$P" admin adminpw "127.0.0.1:$KP" lat 2000 20)
kill -TERM $DAEMON; wait $DAEMON || true; DAEMON=
field() { python3 -c "import json,sys; print(f'{json.loads(sys.argv[1])[sys.argv[2]]:.1f}')" "$1" "$2"; }

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo
echo "cdc-enricher benchmarks — $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), MariaDB $(q 'SELECT VERSION()'), $ROWS rows"
echo
echo "| binlog | size MB | decode rows/s (1 core) | decode MB/s | stream rows/s | stream MB/s | floor MB/s (mariadb-binlog) | stream / floor |"
echo "|---|---|---|---|---|---|---|---|"
for t in t6 t30; do
  read -r size d s fl _ _ <<< "${R[$t]}"
  echo "| $t ($([ $t = t6 ] && echo 6 || echo 30) columns) | $(mbs "$size" 1) | $(rate "$ROWS" "$d") | $(mbs "$size" "$d") | $(rate "$ROWS" "$s") | $(mbs "$size" "$s") | $(mbs "$size" "$fl") | $(ratio "$fl" "$s") |"
done
echo
echo "| end to end | rows/s |"
echo "|---|---|"
echo "| binlog -> daemon -> Kafka (t6, until checkpointed) | $(rate "$ROWS" "$e2e") |"
echo "| rdkafka producer alone, same records (ceiling) | $(rate "$ROWS" "$ceil") |"
echo "| e2e / ceiling | $(ratio "$ceil" "$e2e") |"
echo
echo "| memory | value |"
echo "|---|---|"
echo "| peak RSS, one $ROWS-row transaction to Kafka (held in a spill file, then emitted) | $((rss_kb / 1024)) MB |"
echo "| the same transaction, whole in the binlog -> checkpointed | $(rate "$ROWS" "$big") rows/s |"
echo "| peak RSS, one $ROWS-row group that ends in ROLLBACK (held, dropped) | $((rss_held_kb / 1024)) MB |"
echo "| the same group, whole in the binlog -> checkpoint past it | $(rate "$ROWS" "$held") rows/s |"
echo "| peak RSS, the same transaction to a slow backend (first 60 s) | $((rss_slow_kb / 1024)) MB |"
echo
echo "| latency, commit -> Kafka record at 2,000 rows/s (one row per transaction) | ms |"
echo "|---|---|"
echo "| p50 | $(field "$lat" p50_ms) |"
echo "| p99 | $(field "$lat" p99_ms) |"
echo "| max | $(field "$lat" max_ms) |"
echo
echo "| peer and instructions | t6 | t30 |"
echo "|---|---|---|"
read -r _ _ s6 _ pe6 ir6 <<< "${R[t6]}"; read -r _ _ s30 _ pe30 ir30 <<< "${R[t30]}"
echo "| python-mysql-replication rows/s ($PEER_ROWS rows, replication protocol) | $(rate "$PEER_ROWS" "$pe6") | $(rate "$PEER_ROWS" "$pe30") |"
echo "| cdc-enricher stream rows/s ÷ peer rows/s | $(python3 -c "print(f'{($ROWS/$s6)/($PEER_ROWS/$pe6):.0f}x')") | $(python3 -c "print(f'{($ROWS/$s30)/($PEER_ROWS/$pe30):.0f}x')") |"
echo "| decode instructions per row (callgrind) | $(python3 -c "print(f'{$ir6/$ROWS:,.0f}')") | $(python3 -c "print(f'{$ir30/$ROWS:,.0f}')") |"
