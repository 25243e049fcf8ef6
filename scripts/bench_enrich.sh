#!/usr/bin/env bash
# Enrichment quota use (a benchmark, not a test): the AWS stand-in answers after a fixed
# latency; the pipeline may make RPS calls per second of up to 25 documents. Quota use =
# documents/s ÷ (RPS × 25). Run clean, with 30% of calls throttled at random, and against a
# service whose own token bucket allows only 80% of RPS (the pipeline is told RPS): AIMD has to
# find the real quota. Then embeddings: EMBED_ROWS (default 480) rows through Cohere Embed on
# the stand-in, 96 texts a call against one text a call, at the same RPS and latency.
# Usage: scripts/bench_enrich.sh [rows] [rps] [latency_ms]   (defaults 10000 10 50)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-10000}; RPS=${2:-10}; LAT=${3:-50}
need_mariadb
need_tansu_release
# BENCH_BIN: a binary built before (say which commit it is when recording figures).
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --locked -q
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cdc-enricher
fi
W=$PWD/.bench-enrich
rm -rf "$W"; mkdir -p "$W/pipelines"
DAEMON=; STANDIN=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  [ -n "$STANDIN" ] && kill "$STANDIN" 2>/dev/null
  stop_pidfile "$W/db/server.pid"; stop_pidfile "$W/kafka/tansu.pid"
}
trap cleanup EXIT
P=$(free_port); KP=$(free_port)
start_mariadb "$W/db" "$P"
start_tansu "$W/kafka" "$KP"
python3 tests/aws_standin/standin.py 0 > "$W/standin.port" & STANDIN=$!
until grep -q PORT "$W/standin.port" 2>/dev/null; do sleep 0.1; done
SP=$(cut -d' ' -f2 "$W/standin.port")
ctl() { python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$SP/$1', data=b'$2'))" >/dev/null; }
q "CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT);
   CREATE TABLE shop.products_a (id INT PRIMARY KEY, description TEXT);
   CREATE TABLE shop.products_b (id INT PRIMARY KEY, description TEXT);"
EMBED_ROWS=${EMBED_ROWS:-480}
cat > "$W/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: 778, heartbeat_ms: 1000}
kafka: {brokers: "127.0.0.1:$KP"}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 50}
YAML
cat > "$W/pipelines/feedback.yaml" <<YAML
name: feedback
table: shop.support
enrichment:
  comprehend: {operation: sentiment, text: message}
  endpoint_url: "http://127.0.0.1:$SP"
  requests_per_second: $RPS
  max_wait_ms: 100
sink: {kafka: {topic: feedback}}
YAML
# embed NAME TABLE BATCH: Cohere Embed on TABLE, BATCH texts a call.
embed() {
  cat > "$W/pipelines/$1.yaml" <<YAML
name: $1
table: shop.$2
enrichment:
  embedding: {model: cohere.embed-english-v3, text: "{description}"}
  endpoint_url: "http://127.0.0.1:$SP"
  requests_per_second: $RPS
  max_batch_size: $3
  max_wait_ms: 100
sink: {kafka: {topic: $1}}
YAML
}
embed embed_batched products_a 96
embed embed_single products_b 1
export AWS_ACCESS_KEY_ID=AKIDSTANDIN AWS_SECRET_ACCESS_KEY=standin-secret AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true
( cd "$W" && exec "$BIN" run -c cdc-enricher.yaml 2>daemon.log ) & DAEMON=$!
sleep 2

# timed SQL: runs the INSERT, prints the seconds until the checkpoint covers it.
timed() {
  q "$1"
  local start; start=$(date +%s.%N)
  local end; end=$(q "SHOW MASTER STATUS" | cut -f2)
  until python3 -c "import json,sys; p=json.load(open('$W/cp.json'))['position']; sys.exit(0 if p['pos']>=$end else 1)" 2>/dev/null; do sleep 0.05; done
  python3 -c "import time; print(time.time() - $start)"
}
# run LABEL FIRST_ID: ROWS rows into shop.support, timed.
run() {
  timed "INSERT INTO shop.support SELECT seq, CONCAT('good review number ', seq) FROM shop.seq_${2}_to_$(($2 + ROWS - 1))"
}
# timed_insert TABLE: EMBED_ROWS rows into TABLE, timed.
timed_insert() {
  timed "INSERT INTO shop.$1 SELECT seq, CONCAT('a sturdy oak chair, model ', seq) FROM shop.seq_1_to_$EMBED_ROWS"
}
ctl _control "{\"delay_ms\": $LAT}"
log "clean: $ROWS rows, $RPS calls/s, ${LAT} ms latency"
clean=$(run clean 1)
calls_clean=$(python3 -c "import json,urllib.request; print(len(json.load(urllib.request.urlopen('http://127.0.0.1:$SP/_log'))))")
ctl _reset ""
ctl _control "{\"delay_ms\": $LAT, \"throttle_rate\": 0.3, \"seed\": 3}"
log "throttled: 30% of calls"
thr=$(run throttled $((ROWS + 1)))
calls_thr=$(python3 -c "import json,urllib.request; l=json.load(urllib.request.urlopen('http://127.0.0.1:$SP/_log')); print(len(l), sum(1 for e in l if e['status']==400))")

ctl _reset ""
REAL=$(python3 -c "print($RPS * 0.8)")
ctl _control "{\"delay_ms\": $LAT, \"bucket\": {\"rate\": $REAL, \"burst\": 1}}"
log "service bucket: the service allows $REAL calls/s, the pipeline is told $RPS"
bkt=$(run bucket $((2 * ROWS + 1)))
calls_bkt=$(python3 -c "import json,urllib.request; l=json.load(urllib.request.urlopen('http://127.0.0.1:$SP/_log')); print(len(l), sum(1 for e in l if e['status']==400))")
# The bucket run's calls (arrival time, status), for a look at where its time went.
python3 -c "import urllib.request; open('$W/standin-bucket.json', 'wb').write(urllib.request.urlopen('http://127.0.0.1:$SP/_log').read())"

ctl _reset ""
ctl _control "{\"delay_ms\": $LAT}"
log "embeddings: $EMBED_ROWS rows, Cohere 96 texts a call, then one text a call"
emb96=$(timed_insert products_a)
emb1=$(timed_insert products_b)
python3 - "$EMBED_ROWS" "$emb96" "$emb1" <<'PY'
import sys
n, a, b = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print()
print("| embeddings (Cohere Embed) | rows | seconds | rows/s |")
print("|---|---|---|---|")
print(f"| 96 texts a call | {n} | {a:.2f} | {n/a:,.0f} |")
print(f"| one text a call | {n} | {b:.2f} | {n/b:,.0f} |")
print(f"| batched ÷ one a call | | | {b/a:.1f}x |")
PY
python3 - "$ROWS" "$RPS" "$clean" "$thr" "$calls_clean" $calls_thr "$bkt" $calls_bkt <<'PY'
import sys
rows, rps, clean, thr, calls_clean, calls_thr, throttled = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
bkt, calls_bkt, throttled_bkt = float(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
print()
print(f"| run | rows | seconds | documents/s | calls | quota use = docs/s ÷ ({rps:g} × 25) |")
print("|---|---|---|---|---|---|")
print(f"| clean | {rows} | {clean:.1f} | {rows/clean:,.0f} | {calls_clean} | {rows/clean/(rps*25):.2f} |")
print(f"| 30% throttled | {rows} | {thr:.1f} | {rows/thr:,.0f} | {calls_thr} ({throttled} throttled) | {rows/thr/(rps*25):.2f} |")
print(f"| service allows {rps*0.8:g}/s | {rows} | {bkt:.1f} | {rows/bkt:,.0f} | {calls_bkt} ({throttled_bkt} throttled) | {rows/bkt/(rps*25):.2f} ({rows/bkt/(rps*0.8*25):.2f} of the real quota) |")
PY
# Where the limiter settles: the bucket run's accepted calls per second over its second half
# (the service's own log of arrivals), as a share of what the service allows.
python3 - "$W/standin-bucket.json" "$REAL" <<'PY'
import json, sys
log, real = json.load(open(sys.argv[1])), float(sys.argv[2])
ok = sorted(e["t"] for e in log if e["status"] == 200)
half = [t for t in ok if t >= (ok[0] + ok[-1]) / 2]
rate = (len(half) - 1) / (half[-1] - half[0])
print(f"\nsettled (the bucket run's second half): {rate:.2f} accepted calls/s = {rate / real:.3f} of the real quota; "
      f"throttled there: {sum(1 for e in log if e['status'] != 200 and e['t'] >= half[0])}")
PY
