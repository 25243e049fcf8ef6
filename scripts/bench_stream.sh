#!/usr/bin/env bash
# Stream benchmark, A/B: the same 1M-row binlog (t6: 6 columns, transactions of 10,000 rows)
# read over the replication protocol into a null sink by this version's `binlog` bench and by
# another's, in turn (A B A B A B), the client pinned to one core. Prints rows/s and the ratio.
#
# Usage: scripts/bench_stream.sh OTHER_BENCH_BINARY [rows]
#   OTHER_BENCH_BINARY: the `binlog` bench of another version, e.g. `git worktree add /tmp/old
#   <rev>`, `cargo bench --bench binlog --no-run` there, and the `target/release/deps/binlog-*`
#   it prints (copied aside: the two builds share a file name).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
OTHER=$1
ROWS=${2:-1000000}
need_mariadb
log "building the binlog bench (release)"
cargo bench --locked --bench binlog --no-run -q 2>/dev/null
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$PWD/target}"/release/deps/binlog-* | grep -v '\.d$' | head -1)

W=$PWD/.bench-stream
rm -rf "$W"; mkdir -p "$W"
cleanup() { stop_pidfile "$W/db/server.pid"; }
trap cleanup EXIT
P=$(free_port)
start_mariadb "$W/db" "$P"
FILE=$(write_t6 "$P" "$ROWS")

secs() { grep -o '"seconds":[0-9.e-]*' | cut -d: -f2; }
run() { taskset -c 0 "$1" stream 127.0.0.1 "$P" cdc cdc-secret "$FILE" 4 "$ROWS" | secs; }
A=(); B=()
for _ in 1 2 3; do
  A+=("$(run "$BENCH")"); B+=("$(run "$OTHER")")
done
python3 - "$ROWS" "${A[*]}" "${B[*]}" <<'PY'
import statistics, sys
rows, a, b = int(sys.argv[1]), [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
print("| bench | seconds (median of 3) | stream rows/s |")
print("|---|---|---|")
print(f"| this version | {ma:.3f} | {rows/ma:,.0f} |")
print(f"| other | {mb:.3f} | {rows/mb:,.0f} |")
pairs = sorted(y / x for x, y in zip(a, b))
print(f"| speed, this ÷ other (median of the pairs) | {mb/ma:.2f} (pairs: {pairs[0]:.2f}–{pairs[-1]:.2f}) | |")
PY
