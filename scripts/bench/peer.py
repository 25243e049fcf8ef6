#!/usr/bin/env python3
"""The Python peer for scripts/bench.sh: python-mysql-replication (PyPI `mysql-replication`)
reading the same binlog over the replication protocol, decoding every row into Python values.

Usage: peer.py HOST PORT USER PASSWORD FILE ROWS   → one JSON line: rows, seconds
"""
import json
import sys
import time

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

host, port, user, password, log_file, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
stream = BinLogStreamReader(
    connection_settings={"host": host, "port": port, "user": user, "passwd": password},
    server_id=31337, log_file=log_file, log_pos=4, resume_stream=True, blocking=True,
    only_events=[WriteRowsEvent], is_mariadb=True)
rows = 0
start = time.monotonic()
for event in stream:
    for row in event.rows:
        rows += 1
        _ = row["values"]
    if rows >= want:
        break
secs = time.monotonic() - start
stream.close()
print(json.dumps({"mode": "peer", "rows": rows, "seconds": secs}, separators=(",", ":")))
