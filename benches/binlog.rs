//! Benchmark modes driven by `scripts/bench.sh` (which prints the table):
//!
//! - `decode-file FILE`: decode a binlog file into a null sink, on one thread.
//! - `stream HOST PORT USER PASS FILE POS ROWS`: the replication stream into a null sink.
//! - `produce BROKERS TOPIC FILE`: the Kafka ceiling: an rdkafka producer sending the same
//!   records (decoded beforehand) with no source.
//!
//! - `latency HOST PORT USER PASS BROKERS TOPIC RATE SECONDS`: inserts one row per transaction
//!   into `bench.lat` at a steady RATE per second while a consumer reads TOPIC (the running
//!   daemon's output): the time from each commit to its record, p50 / p99 / max.
//!
//! Each prints one line of JSON.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_enricher::decode_file;
use cdc_enricher::MysqlSource;
use cdc_enricher::{BinlogPosition, SourceEvent};
use cdc_enricher::{SourceConfig, StartFrom, TlsConfig};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("decode-file") => decode(&args[1]),
        Some("stream") => stream(&args[1..]),
        Some("produce") => produce(&args[1], &args[2], &args[3]),
        Some("latency") => latency(&args[1..]),
        _ => eprintln!("usage: binlog decode-file FILE | stream HOST PORT USER PASS FILE POS ROWS | produce BROKERS TOPIC FILE \
                        | latency HOST PORT USER PASS BROKERS TOPIC RATE SECONDS"),
    }
}

fn decode(file: &str) {
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    // Warm the page cache, then time the decode alone.
    let _ = std::fs::read(file);
    let start = Instant::now();
    let mut rows = 0u64;
    decode_file(file, |ev| {
        if let SourceEvent::Row(r) = ev {
            rows += 1;
            std::hint::black_box(r);
        }
    })
    .expect("decode");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": "decode-file", "rows": rows, "bytes": bytes, "seconds": secs})
    );
}

fn stream(a: &[String]) {
    let cfg = SourceConfig {
        host: a[0].clone(),
        port: a[1].parse().unwrap(),
        user: a[2].clone(),
        password: Some(a[3].clone()),
        password_file: None,
        server_id: 9999,
        heartbeat_ms: 1000,
        start: StartFrom::Latest,
        on_purged: Default::default(),
        tls: TlsConfig::default(),
        transaction_buffer_mb: 32,
        spill_dir: None,
    };
    let start_pos = BinlogPosition::new(a[4].clone(), a[5].parse().unwrap());
    let want: u64 = a[6].parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let src = MysqlSource {
            cfg,
            metrics: None,
            tables: Default::default(),
            filter: None,
            history: Default::default(),
            tables_added: Default::default(),
        };
        let t0 = Instant::now();
        let start = cdc_enricher::Start {
            position: start_pos,
            legacy_rows: 0,
            open_xa: Vec::new(),
        };
        let task = tokio::spawn(src.run(start, tx, stop_rx));
        let mut rows = 0u64;
        while rows < want {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(batch)) => {
                    for ev in batch {
                        if let SourceEvent::Row(r) = ev {
                            rows += 1;
                            std::hint::black_box(r);
                        }
                    }
                }
                _ => break,
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        let _ = task.await;
        println!(
            "{}",
            serde_json::json!({"mode": "stream", "rows": rows, "seconds": secs})
        );
    });
}

fn produce(brokers: &str, topic: &str, file: &str) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    // The records the daemon would send, made beforehand: the ceiling has no source cost.
    let mut recs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    decode_file(file, |ev| {
        if let SourceEvent::Row(r) = ev {
            let key = serde_json::to_vec(&serde_json::json!({"id": r.after.as_ref().map(|v| v[0].clone())})).unwrap();
            let names: Vec<&str> = r.table.columns.iter().map(|c| c.name.as_str()).collect();
            let after: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|n| n.to_string())
                .zip(r.after.clone().unwrap_or_default().iter().map(|v| v.to_json_value()))
                .collect();
            let val = serde_json::to_vec(&serde_json::json!({"op": "c", "before": null, "after": after,
                "source": {"pipeline": "bench", "server_id": 1, "db": r.table.db, "table": r.table.table,
                "gtid": r.position.gtid.as_deref(), "file": &*r.position.file, "pos": r.position.pos,
                "event": r.position.event, "row": r.position.row, "ts_ms": r.ts_ms},
                "enrichment": {}})).unwrap();
            recs.push((key, val));
        }
    })
    .expect("decode");
    // tansu does not create topics on first use.
    let kcfg = cdc_enricher::KafkaConfig {
        brokers: brokers.to_string(),
        properties: Default::default(),
        create_topics: true,
        topic_partitions: 1,
        topic_replication: 1,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cdc_enricher::create_topics(&kcfg, &[topic.to_string()]))
        .expect("create topic");
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "0")
        .create()
        .unwrap();
    let t0 = Instant::now();
    for (k, v) in &recs {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .key(k.as_slice())
            .payload(v.as_slice());
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(300)).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": "produce", "rows": recs.len(), "seconds": secs})
    );
}

fn latency(a: &[String]) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let (host, port, user, pass) = (
        a[0].clone(),
        a[1].parse::<u16>().unwrap(),
        a[2].clone(),
        a[3].clone(),
    );
    let (brokers, topic) = (a[4].clone(), a[5].clone());
    let rate: u64 = a[6].parse().unwrap();
    let seconds: u64 = a[7].parse().unwrap();
    let total = (rate * seconds) as usize;
    let commits: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; total + 1]));

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "latency-bench")
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    // Join the group before the first insert.
    let t0 = Instant::now();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0
        && t0.elapsed() < Duration::from_secs(20)
    {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let c = commits.clone();
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use mysql_async::prelude::Queryable;
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host)
                .tcp_port(port)
                .user(Some(user))
                .pass(Some(pass));
            let mut conn = mysql_async::Conn::new(opts).await.expect("connect");
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for id in 1..=total {
                tick.tick().await;
                // Timed from before the INSERT (a conservative start: the commit is later).
                c.lock().unwrap()[id] = Some(Instant::now());
                conn.query_drop(format!("INSERT INTO bench.lat VALUES ({id}, 0)"))
                    .await
                    .expect("insert");
            }
        });
    });
    let mut lat: Vec<f64> = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while lat.len() < total && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let now = Instant::now();
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        let Some(id) = v["after"]["id"].as_u64() else {
            continue;
        };
        if let Some(Some(t)) = commits.lock().unwrap().get(id as usize) {
            lat.push(now.saturating_duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    writer.join().unwrap();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({"mode": "latency", "rows": lat.len(), "rate": rate,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": lat.last().copied().unwrap_or(f64::NAN)})
    );
}
