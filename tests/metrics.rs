//! `/metrics` and the health endpoints, scraped over HTTP while the daemon runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn metrics_and_health_over_http() {
    let db = MariaDb::start();
    block_on(db.exec("CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, n INT); CREATE TABLE shop.other (id INT PRIMARY KEY);"));
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        None,
        &[("items", "name: items\ntable: shop.items\nfilter: \"n > 0\"\nsink:\n  jsonl:\n    path: out.jsonl\n")],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.spawn();
    block_on(db.exec(
        "INSERT INTO shop.items VALUES (1, 1), (2, 2), (3, 0);
         INSERT INTO shop.other VALUES (1);
         UPDATE shop.items SET n = 5 WHERE id = 1;",
    ));
    let start = Instant::now();
    let body = loop {
        d.assert_running();
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = http_get(port, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK");
            if sample(&body, "cdc_enricher_records_total{pipeline=\"items\"}") == Some("3")
                && sample(&body, "cdc_enricher_in_flight") == Some("0")
                && sample(&body, "cdc_enricher_checkpoint_age_seconds").is_some()
                // Idle and caught up (a heartbeat came after the last event): no lag.
                && sample(&body, "cdc_enricher_pipeline_lag_seconds{pipeline=\"items\"}") == Some("0")
            {
                break body;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    // 4 rows of shop.items were read; the filter let 3 through; shop.other is not read.
    assert_eq!(sample(&body, "cdc_enricher_rows_read_total"), Some("4"));
    // Setup: 4 statements of the init file + CREATE DATABASE + 2 CREATE TABLE; then 3 transactions.
    assert_eq!(sample(&body, "cdc_enricher_transactions_total"), Some("10"));
    assert_eq!(sample(&body, "cdc_enricher_source_connected"), Some("1"));
    assert_eq!(sample(&body, "cdc_enricher_reconnects_total"), Some("0"));
    assert_eq!(sample(&body, "cdc_enricher_checkpoint_row"), Some("0"));
    assert!(body.contains("# TYPE cdc_enricher_records_total counter\n"));
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_pipeline_rows_in_total{pipeline=\"items\"}"
        ),
        Some("3")
    );
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_pipeline_lag_seconds{pipeline=\"items\"}"
        ),
        Some("0")
    );
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"items\"}"),
        Some("0")
    );
    let age: f64 = sample(&body, "cdc_enricher_checkpoint_age_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..30.0).contains(&age), "{age}");
    assert!(body.contains("cdc_enricher_checkpoint_position{file=\"binlog.000001\"} "));
    assert_eq!(
        http_get(port, "/health/live"),
        ("HTTP/1.1 200 OK".into(), "live\n".into())
    );
    assert_eq!(
        http_get(port, "/health/ready"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    assert_eq!(http_get(port, "/nope").0, "HTTP/1.1 404 Not Found");
    assert_eq!(d.terminate(), 0);

    // A metrics address that cannot be bound is a start-up error (exit 2).
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bport = busy.local_addr().unwrap().port();
    let cfg = std::fs::read_to_string(d.config())
        .unwrap()
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{bport}"));
    std::fs::write(d.config(), cfg).unwrap();
    let out = d
        .command(&["run", "-c", "cdc-enricher.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.ends_with(&format!(
            "error: cannot serve metrics on 127.0.0.1:{bport}: Address already in use (os error 98); change `metrics.address`\n"
        )),
        "{err}"
    );
}

#[test]
fn a_lagging_pipeline_makes_the_daemon_not_ready_until_it_catches_up() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let aws = AwsStandin::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT);",
    ));
    let port = free_port();
    let p = format!(
        "name: slow\ntable: shop.support\nenrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 20\n  max_batch_size: 5\nsink:\n  kafka:\n    topic: slow\n",
        aws.url()
    );
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[("slow", &p)],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n  ready_max_lag_seconds: 2\n"),
    );
    d.env = AwsStandin::env();
    d.spawn();
    let start = Instant::now();
    while http_get(port, "/health/ready").1 != "ready\n" {
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every call throttled for a while: the rows wait, the lag grows past the threshold.
    aws.control(r#"{"throttle": 1000000}"#);
    block_on(
        db.exec("INSERT INTO shop.support SELECT seq, CONCAT('good ', seq) FROM shop.seq_1_to_20"),
    );
    let start = Instant::now();
    let why = loop {
        let (status, body) = http_get(port, "/health/ready");
        if status == "HTTP/1.1 503 Service Unavailable" {
            break body;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        why.starts_with("pipeline `slow` lags ") && why.ends_with(" s (more than 2 s)\n"),
        "{why}"
    );
    let (_, body) = http_get(port, "/metrics");
    let lag: f64 = sample(
        &body,
        "cdc_enricher_pipeline_lag_seconds{pipeline=\"slow\"}",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!(lag > 2.0, "{lag}");
    assert!(sample(
        &body,
        "cdc_enricher_ml_call_errors_total{pipeline=\"slow\",kind=\"throttled\"}"
    )
    .is_some_and(|n| n != "0"));
    // The service recovers: everything drains, the daemon is ready again with no lag.
    aws.control(r#"{"throttle": 0}"#);
    assert_eq!(kafka.read("slow", 20, Duration::from_secs(60)).len(), 20);
    let start = Instant::now();
    while http_get(port, "/health/ready").1 != "ready\n" {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_pipeline_lag_seconds{pipeline=\"slow\"}"
        ),
        Some("0")
    );
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_pipeline_rows_in_total{pipeline=\"slow\"}"
        ),
        Some("20")
    );
    // 20 rows in batches of 5: the batch-size histogram counted 4 batches of 5.
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_enrichment_batch_size_bucket{pipeline=\"slow\",le=\"5\"}"
        ),
        Some("4")
    );
    assert_eq!(
        sample(
            &body,
            "cdc_enricher_enrichment_batch_size_count{pipeline=\"slow\"}"
        ),
        Some("4")
    );
    assert_eq!(d.terminate(), 0);
}
