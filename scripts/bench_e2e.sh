#!/usr/bin/env bash
# End-to-end benchmark, side by side in one run: binlog -> daemon -> Kafka (tansu, release
# build) against the rdkafka producer alone sending the same records (the ceiling), in turn
# (E C E C E C), on the same 1M-row binlog (t6: 6 columns, transactions of 10,000 rows).
# Every measurement starts on a fresh, empty broker (tansu's memory storage keeps every
# record: a broker holding the earlier runs' millions would slow the later runs).
# Prints rows/s and e2e / ceiling (median of the pairs), for the daemon's whole run and since
# its "reading the binlog" log line (its start done, as the ceiling's clock starts after its
# producer and topic are made). With OTHER=path/to/cdc-enricher a
# second daemon build runs in the same rotation (E O C ...) and the two are compared; with
# OTHER_PROPS='"queue.buffering.max.messages": "100000"' (YAML map entries) the second daemon
# (OTHER, or this build) runs with those producer properties added.
# With PERF=1 one more e2e run is recorded by `perf record -g` (report in .bench-e2e/perf.txt).
#
# Usage: scripts/bench_e2e.sh [rows]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS=${1:-1000000}
need_mariadb
need_tansu_release
log "building (release)"
cargo build --release --locked -q
cargo bench --locked --bench binlog --no-run -q 2>/dev/null
T=${CARGO_TARGET_DIR:-$PWD/target}
BENCH=$(ls -t "$T"/release/deps/binlog-* | grep -v '\.d$' | head -1)
BIN=$T/release/cdc-enricher

W=$PWD/.bench-e2e
rm -rf "$W"; mkdir -p "$W"
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  stop_pidfile "$W/db/server.pid"; stop_pidfile "$W/kafka/tansu.pid"
}
trap cleanup EXIT
P=$(free_port)
start_mariadb "$W/db" "$P"
# fresh_broker: a new empty broker on a new port (KP).
fresh_broker() {
  stop_pidfile "$W/kafka/tansu.pid"
  KP=$(free_port)
  start_tansu "$W/kafka" "$KP"
}
FILE=$(write_t6 "$P" "$ROWS")
cp "$W/db/data/$FILE" "$W/t6.bin"
END=$(( $(stat -c %s "$W/t6.bin") - 100 ))

secs() { grep -o '"seconds":[0-9.e-]*' | cut -d: -f2; }
# cpu PID: CPU seconds (user + system) the process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { print a - b }'; }
MARIADB_PID=$(cat "$W/db/server.pid")
# e2e BINARY N [PROPS]: the daemon from the binlog's start until its checkpoint passes the last row
# (one long-running poller of the checkpoint file: never a process per poll). Topic e2e-N.
e2e() {
  local bin=$1 n=$2 props=${3:+, $3} d=$W/e2e-$2
  fresh_broker
  mkdir -p "$d/pipelines"
  cat > "$d/cdc-enricher.yaml" <<YAML
source: {host: 127.0.0.1, port: $P, user: cdc, password: cdc-secret, server_id: $((700 + n)), heartbeat_ms: 1000}
kafka: {brokers: "127.0.0.1:$KP", properties: {linger.ms: "5", batch.num.messages: "10000"$props}}
checkpoint: {store: {file: {path: cp.json}}, interval_ms: 50}
YAML
  printf 'name: t6\ntable: bench.t6\nsink: {kafka: {topic: e2e-%s}}\n' "$n" > "$d/pipelines/t6.yaml"
  echo "{\"version\":1,\"position\":{\"file\":\"$FILE\",\"pos\":4}}" > "$d/cp.json"
  local start k0 m0; start=$(date +%s.%N)
  k0=$(cpu "$(cat "$W/kafka/tansu.pid")"); m0=$(cpu "$MARIADB_PID")
  ( cd "$d" && exec ${PREFIX:-} "$bin" run -c cdc-enricher.yaml 2>daemon.log ) & DAEMON=$!
  python3 - "$d/cp.json" "$start" "$FILE" "$END" <<'PY'
import json, sys, time
cp, start, file, pos = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while True:
    try:
        with open(cp) as f:
            p = json.load(f)["position"]
        if p["file"] != file or p["pos"] >= pos:
            break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.02)
print(time.time() - start, time.time())
PY
  # CPU seconds of the run: daemon, broker, MariaDB (the cores they share).
  echo "$(cpu "$DAEMON") $(minus "$(cpu "$(cat "$W/kafka/tansu.pid")")" "$k0") $(minus "$(cpu "$MARIADB_PID")" "$m0")" > "$d/cpu"
  for t in /proc/"$DAEMON"/task/*; do
    printf '%s %s (%s waits)\n' "$(cpu "$DAEMON/task/${t##*/}")" "$(cat "$t/comm")" \
      "$(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")"
  done | sort -rn > "$d/threads"
  kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
}
# since_open LOG END: seconds from the daemon's "reading the binlog" line (its start done:
# preflight, producer, topics, the replica connection) to END (epoch seconds).
since_open() {
  python3 - "$1" "$2" <<'PY'
import datetime, re, sys
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "reading the binlog" in line:
        t = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        print(f"{float(sys.argv[2]) - t:.4f}")
        break
else:
    print("nan")  # a build that does not log the line
PY
}
# e2e_run BINARY N [PROPS]: "whole-run-seconds seconds-since-the-binlog-opened".
e2e_run() {
  local out; out=$(e2e "$@")
  echo "${out% *} $(since_open "$W/e2e-$2/daemon.log" "${out#* }")"
}
ceiling() {
  fresh_broker
  local k0; k0=$(cpu "$(cat "$W/kafka/tansu.pid")")
  "$BENCH" produce "127.0.0.1:$KP" "ceiling-$1" "$W/t6.bin" | secs
  minus "$(cpu "$(cat "$W/kafka/tansu.pid")")" "$k0" > "$W/ceiling-$1.cpu"
}

[ -n "${OTHER_PROPS:-}" ] && OTHER=${OTHER:-$BIN}
E=(); ES=(); O=(); OS=(); C=()
for i in 1 2 3; do
  log "round $i"
  read -r whole open < <(e2e_run "$BIN" "$i")
  E+=("$whole"); ES+=("$open")
  if [ -n "${OTHER:-}" ]; then
    read -r whole open < <(e2e_run "$OTHER" "$((i + 10))" "${OTHER_PROPS:-}")
    O+=("$whole"); OS+=("$open")
  fi
  C+=("$(ceiling "$i")")
done
if [ -n "${PERF:-}" ]; then
  log "perf record of one more e2e run"
  PREFIX="perf record -g -o $W/perf.data" e2e "$BIN" 99 >/dev/null
  perf report -i "$W/perf.data" --no-children --sort dso,sym --stdio > "$W/perf.txt" 2>/dev/null || true
  log "profile: $W/perf.txt"
fi
log "seconds: e2e ${E[*]} (since the binlog opened: ${ES[*]}); other ${O[*]:-none} (${OS[*]:-}); ceiling ${C[*]}"
echo "CPU seconds of the last round (daemon, broker, MariaDB), e2e: $(cat "$W/e2e-3/cpu");" \
  "ceiling's broker: $(cat "$W/ceiling-3.cpu") (the producer's own CPU is not counted: it reads the binlog first)"
echo "the daemon's threads, CPU seconds and voluntary context switches (last round): $(head -6 "$W/e2e-3/threads" | tr '\n' ';')"
python3 - "$ROWS" "${E[*]}" "${ES[*]}" "${O[*]:-}" "${OS[*]:-}" "${C[*]}" <<'PY'
import statistics, sys
rows = int(sys.argv[1])
num = lambda a: [float(x) for x in a.split()]
e, es, o, os_, c = (num(a) for a in sys.argv[2:7])
med = statistics.median
# The ceiling's clock starts once its producer exists and its topic is made; "since the binlog
# opened" starts the daemon's clock at the same point of its own run (preflight, producer,
# topics and replica connection done). The whole run is the process from its start.
print("| run | seconds (median of 3) | rows/s |")
print("|---|---|---|")
print(f"| binlog -> daemon -> Kafka (this build), whole run | {med(e):.3f} | {rows/med(e):,.0f} |")
known = lambda xs: [x for x in xs if x == x]  # without the runs of builds with no such line
if known(es):
    print(f"| the same, since the binlog opened | {med(known(es)):.3f} | {rows/med(known(es)):,.0f} |")
if o:
    print(f"| binlog -> daemon -> Kafka (OTHER), whole run | {med(o):.3f} | {rows/med(o):,.0f} |")
    if known(os_):
        print(f"| the same, since the binlog opened | {med(known(os_)):.3f} | {rows/med(known(os_)):,.0f} |")
print(f"| rdkafka producer alone, same records (ceiling) | {med(c):.3f} | {rows/med(c):,.0f} |")
def ratio(label, a, b):
    pairs = sorted(y / x for x, y in zip(a, b) if x == x and y == y)
    if not pairs:
        return
    print(f"| {label} (median of the pairs) | {med(pairs):.2f} (pairs: {pairs[0]:.2f}–{pairs[-1]:.2f}) | |")
ratio("e2e / ceiling, whole run", e, c)
ratio("e2e / ceiling, since the binlog opened", es, c)
if o:
    ratio("this ÷ OTHER, speed, whole run", e, o)
    ratio("this ÷ OTHER, speed, since the binlog opened", es, os_)
PY
