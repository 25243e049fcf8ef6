#!/usr/bin/env bash
# Scale-out on Kafka (a benchmark, not a test).
# 1. Enriched rows/s with 1, 2 and 3 workers: ROWS rows already in one source role's change
#    topic (6 partitions); the AWS stand-in answers Comprehend after 200 ms; each worker makes
#    at most 2 calls at a time of one document each, so the workers, not the quota (100/s), are
#    the bottleneck. Each count of workers is a fresh consumer group with its own output topic,
#    timed from its start to its last record.
# 2. The extra Kafka hop: LAT_ROWS rows written at 2,000 rows/s (a stamp NOW(6) in each), read
#    by one `--role all` process, then by a source role and one worker; commit→record latency
#    = the output record's Kafka timestamp − the row's stamp, p50 / p99 / max.
# BENCH_BIN: a binary built before (else a release build). Usage: scripts/bench_scale.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-300}; LAT_ROWS=${LAT_ROWS:-20000}
need_mariadb
need_tansu_release
bench_binary
W=$PWD/.bench-scale
rm -rf "$W"; mkdir -p "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_pidfile "$W/db/server.pid"; stop_pidfile "$W/kafka/tansu.pid"
}
trap cleanup EXIT
P=$(free_port); KP=$(free_port)
start_mariadb "$W/db" "$P"
start_tansu "$W/kafka" "$KP"
q() { mariadb --no-defaults -N -B -h127.0.0.1 -P"$P" -uadmin -padminpw -e "$1"; }
python3 tests/aws_standin/standin.py 0 > "$W/standin.port" & PIDS+=($!)
until grep -q PORT "$W/standin.port" 2>/dev/null; do sleep 0.1; done
SP=$(cut -d' ' -f2 "$W/standin.port")
python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$SP/_control', data=b'{\"delay_ms\": 200}'))"
export AWS_ACCESS_KEY_ID=AKIDSTANDIN AWS_SECRET_ACCESS_KEY=standin-secret AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true
q "SET GLOBAL time_zone = '+00:00'; CREATE DATABASE cdc_state; GRANT CREATE, INSERT, UPDATE, SELECT ON cdc_state.* TO 'cdc'@'127.0.0.1';
   CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT);
   CREATE TABLE shop.feed (id INT PRIMARY KEY, body VARCHAR(40), t0 DATETIME(6));"

# config DIR GROUP TOPIC_SUFFIX: a daemon folder (MySQL checkpoint store, 6 partitions).
config() {
  mkdir -p "$1/pipelines"
  cat > "$1/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: 4300, heartbeat_ms: 1000, start: latest}
kafka: {brokers: "127.0.0.1:$KP", topic_partitions: 6}
checkpoint: {store: {mysql: {table: cdc_state.checkpoints, name: $(basename "$1")}}, interval_ms: 100}
scale_out: {group_id: "$2"}
YAML
  cat > "$1/pipelines/mood.yaml" <<YAML
name: mood
table: shop.support
enrichment:
  comprehend: {operation: sentiment, text: message}
  endpoint_url: "http://127.0.0.1:$SP"
  requests_per_second: 100
  max_batch_size: 1
  max_wait_ms: 1
  concurrency: 2
sink: {kafka: {topic: "mood-$3"}}
YAML
  printf 'name: feed\ntable: shop.feed\nsink: {kafka: {topic: "feed-%s"}}\n' "$3" > "$1/pipelines/feed.yaml"
}
# start DIR ROLE: a daemon of ROLE in DIR (its pid in DIR/pid and in PIDS); stop DIR: SIGTERM.
start() {
  ( cd "$1" && exec "$BIN" run -c cdc-enricher.yaml --role "$2" 2>>daemon.log ) & PIDS+=($!)
  echo $! > "$1/pid"
}
stop() { kill -TERM "$(cat "$1/pid")" 2>/dev/null || true; }
# count TOPIC: records in TOPIC (all partitions), by a single reader.
count() { "$BIN" tail "$1" --brokers "127.0.0.1:$KP" --idle-ms 1500 | wc -l; }

log "scaling: $ROWS rows into the change topic"
config "$W/source" none src
start "$W/source" source
until grep -q "reading the binlog" "$W/source/daemon.log" 2>/dev/null; do sleep 0.1; done
q "INSERT INTO shop.support SELECT seq, CONCAT('a kind word number ', seq) FROM shop.seq_1_to_$ROWS"
sleep 3
declare -A RATE START
for n in 1 2 3; do
  t0=$(date +%s.%N)
  for i in $(seq 1 "$n"); do config "$W/w$n-$i" "g$n" "w$n"; start "$W/w$n-$i" worker; done
  until [ "$(count "mood-w$n")" -ge "$ROWS" ]; do sleep 1; done
  # From the records' own Kafka timestamps: the rate between the first and the last, and
  # how long the group took to start (its first record after the workers' start).
  read -r RATE[$n] START[$n] < <("$BIN" tail "mood-w$n" --brokers "127.0.0.1:$KP" --idle-ms 1500 | python3 -c "
import json, sys
ts = sorted(json.loads(l)['timestamp_ms'] for l in sys.stdin)
print(f'{(len(ts) - 1) / ((ts[-1] - ts[0]) / 1000):.1f}', f'{ts[0] / 1000 - $t0:.1f}')")
  log "$n worker(s): ${RATE[$n]} rows/s, first record ${START[$n]} s after the start"
  for i in $(seq 1 "$n"); do stop "$W/w$n-$i"; done
done

# latency MODE_DIRS...: writes LAT_ROWS rows at 2,000/s, prints p50 p99 max (ms) of feed-TOPIC.
latency() {
  local topic=$1
  python3 - "$P" "$LAT_ROWS" <<'PY'
import subprocess, sys, time
port, n = sys.argv[1], int(sys.argv[2])
# One client, fed a statement (20 rows) every 10 ms.
c = subprocess.Popen(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "-uadmin", "-padminpw"],
                     stdin=subprocess.PIPE, text=True)
start, batch = time.time(), 20
for i in range(0, n, batch):
    d = start + i / 2000 - time.time()
    if d > 0:
        time.sleep(d)
    vals = ",".join(f"({k}, 'row {k}', NOW(6))" for k in range(i + 1, min(n, i + batch) + 1))
    c.stdin.write(f"INSERT INTO shop.feed VALUES {vals};\n")
    c.stdin.flush()
c.stdin.close()
c.wait()
PY
  sleep 3
  "$BIN" tail "$topic" --brokers "127.0.0.1:$KP" --idle-ms 2000 | python3 -c "
import json, sys, datetime
lat = []
for line in sys.stdin:
    r = json.loads(line)
    t0 = datetime.datetime.fromisoformat(r['value']['after']['t0']).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
    lat.append(r['timestamp_ms'] - t0)
lat.sort()
print(len(lat), round(lat[len(lat)//2]), round(lat[int(len(lat)*0.99)]), round(lat[-1]))"
}
log "latency: one --role all process, $LAT_ROWS rows at 2,000/s"
stop "$W/source"; sleep 2
config "$W/all" none all
rm "$W/all/pipelines/mood.yaml"
start "$W/all" all
until grep -q "reading the binlog" "$W/all/daemon.log" 2>/dev/null; do sleep 0.1; done
ALL=$(latency feed-all)
stop "$W/all"; sleep 2
log "latency: a source role and one worker"
q "TRUNCATE shop.feed"
config "$W/source2" none src2
config "$W/lw" lat lat
rm "$W/lw/pipelines/mood.yaml"
start "$W/source2" source
until grep -q "reading the binlog" "$W/source2/daemon.log" 2>/dev/null; do sleep 0.1; done
start "$W/lw" worker
until grep -q "partitions assigned" "$W/lw/daemon.log" 2>/dev/null; do sleep 0.1; done
SPLIT=$(latency feed-lat)
echo
echo "| workers | enriched rows/s (first to last record) | × one worker | first record after start (s) |"
echo "|---|---|---|---|"
for n in 1 2 3; do
  echo "| $n | ${RATE[$n]} | $(python3 -c "print(f'{${RATE[$n]} / ${RATE[1]}:.2f}')") | ${START[$n]} |"
done
echo
echo "| mode | records | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
read -r n a b c <<<"$ALL"; echo "| --role all | $n | $a | $b | $c |"
read -r n a b c <<<"$SPLIT"; echo "| source + 1 worker | $n | $a | $b | $c |"
