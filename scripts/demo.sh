#!/usr/bin/env bash
# The demo: a throwaway MariaDB (row binlog) and a tansu Kafka broker on free ports, the
# daemon with the repository's cdc-enricher.yaml and pipelines/, some writes, and the
# records they became. Everything lives in .demo/ and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_mariadb
need_tansu
log "building cdc-enricher (release)"
cargo build --release --locked
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cdc-enricher

DEMO=$PWD/.demo
rm -rf "$DEMO"; mkdir -p "$DEMO"
cleanup() {
  [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  [ -n "${STANDIN:-}" ] && kill "$STANDIN" 2>/dev/null
  stop_pidfile "$DEMO/db/server.pid"; stop_pidfile "$DEMO/kafka/tansu.pid"
}
trap cleanup EXIT

export MYSQL_PORT=$(free_port) KAFKA_PORT=$(free_port)
log "starting MariaDB on 127.0.0.1:$MYSQL_PORT and tansu on 127.0.0.1:$KAFKA_PORT"
start_mariadb "$DEMO/db" "$MYSQL_PORT"
start_tansu "$DEMO/kafka" "$KAFKA_PORT"
# The local AWS stand-in (tests/aws_standin): Comprehend, SageMaker and Bedrock wire protocols, SigV4 checked.
# For real AWS instead: leave AWS_ENDPOINT_URL unset and give real credentials and region.
python3 tests/aws_standin/standin.py 0 > "$DEMO/standin.port" & STANDIN=$!
until grep -q PORT "$DEMO/standin.port" 2>/dev/null; do sleep 0.1; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cut -d' ' -f2 "$DEMO/standin.port")
export AWS_ACCESS_KEY_ID=AKIDSTANDIN AWS_SECRET_ACCESS_KEY=standin-secret AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true
log "AWS stand-in on $AWS_ENDPOINT_URL"
sql . "$MYSQL_PORT" "
  CREATE DATABASE shop;
  CREATE TABLE shop.support (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(50),
    message TEXT, created_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6),
    sentiment VARCHAR(20), sentiment_confidence DOUBLE);
  CREATE TABLE shop.orders (id INT PRIMARY KEY, customer VARCHAR(50), total DECIMAL(10,2),
    items INT DEFAULT 1, status ENUM('new','paid','shipped'));
  CREATE TABLE shop.articles (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200), body TEXT);
  CREATE TABLE shop.products (id INT PRIMARY KEY, name VARCHAR(100), features TEXT, description TEXT);
  CREATE USER 'cdc_writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
  GRANT SELECT, UPDATE ON shop.support TO 'cdc_writer'@'127.0.0.1';
  GRANT SELECT, UPDATE ON shop.products TO 'cdc_writer'@'127.0.0.1';
  GRANT SELECT, INSERT, UPDATE, CREATE ON shop.cdc_enricher_writeback TO 'cdc_writer'@'127.0.0.1';
  GRANT SELECT, INSERT, UPDATE, CREATE ON shop.cdc_enricher_dead_letters TO 'cdc_writer'@'127.0.0.1';"

export CDC_PASSWORD=cdc-secret CDC_WRITER_PASSWORD=writer-secret KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT CHECKPOINT_PATH=$DEMO/checkpoint.json
export METRICS_ADDRESS=127.0.0.1:$(free_port)
log "cdc-enricher check"
$BIN check -c cdc-enricher.yaml
log "cdc-enricher run (logs in .demo/daemon.log)"
$BIN run -c cdc-enricher.yaml 2>"$DEMO/daemon.log" &
DAEMON=$!
sleep 2

log "writing rows"
sql . "$MYSQL_PORT" "
  INSERT INTO shop.support (customer, message) VALUES
    ('ana', 'The delivery was fast and the product is great 😀'),
    ('ben', 'Terrible support, I waited two weeks.'),
    ('cem', '');
  UPDATE shop.support SET message = 'Support answered after all, thanks!' WHERE customer = 'ben';
  INSERT INTO shop.orders VALUES (1, 'ana', 19.90, 2, 'new'), (2, 'ben', 5.00, 1, 'new'), (3, 'cem', 980.00, 40, 'new');
  INSERT INTO shop.articles (title, body) VALUES
    ('Binlogs', 'Row based binary logs carry every changed row with its before and after image'),
    ('Quotas', 'Rate limits keep a shared quota busy without tripping the service');
  INSERT INTO shop.products (id, name, features) VALUES
    (1, 'Trail lamp', 'waterproof 400 lumen lamp with a USB-C battery'),
    (2, 'Desk fan', 'quiet three-speed fan with a clip mount');
  UPDATE shop.orders SET status = 'paid' WHERE id = 1;
  DELETE FROM shop.orders WHERE id = 2;"

log "records in cdc.shop.support (with their sentiment)"
$BIN tail --brokers "$KAFKA_BROKERS" cdc.shop.support --count 3 --idle-ms 10000
log "records in cdc.shop.orders"
$BIN tail --brokers "$KAFKA_BROKERS" cdc.shop.orders --count 6 --idle-ms 10000
log "records in ml.order_anomaly (a SageMaker score per order)"
$BIN tail --brokers "$KAFKA_BROKERS" ml.order_anomaly --count 4 --idle-ms 10000
log "records in ml.article_summaries (a Bedrock summary per article, as JSON, with tokens)"
$BIN tail --brokers "$KAFKA_BROKERS" ml.article_summaries --count 2 --idle-ms 10000
log "records in ml.support_digest (one Bedrock call per window of support messages; it closes 15 s into the stream)"
$BIN tail --brokers "$KAFKA_BROKERS" ml.support_digest --count 1 --idle-ms 30000

# show_when COUNT_SQL N SHOW_SQL: waits (up to 20 s) until COUNT_SQL says N, then shows SHOW_SQL.
show_when() {
  for _ in $(seq 1 100); do
    [ "$(sql . "$MYSQL_PORT" "$1" | tail -1)" = "$2" ] && break
    sleep 0.2
  done
  sql . "$MYSQL_PORT" "$3"
}
log "shop.support with the sentiment written back (sink: mysql)"
show_when "SELECT COUNT(*) FROM shop.support WHERE sentiment IS NOT NULL" 2 \
  "SELECT id, customer, message, sentiment, sentiment_confidence FROM shop.support ORDER BY id"
log "shop.products with descriptions generated by Bedrock and written back"
show_when "SELECT COUNT(*) FROM shop.products WHERE description IS NOT NULL" 2 \
  "SELECT id, name, description FROM shop.products ORDER BY id"

log "metrics (http://$METRICS_ADDRESS/metrics)"
python3 -c "import urllib.request; print(''.join(l for l in urllib.request.urlopen('http://$METRICS_ADDRESS/metrics').read().decode().splitlines(True) if not l.startswith('#')), end='')"

log "stopping the daemon (SIGTERM: flush, checkpoint, exit 0)"
kill -TERM "$DAEMON"; wait "$DAEMON"; DAEMON=
cat "$DEMO/checkpoint.json"; echo
