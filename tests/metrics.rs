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
                && value(&body, "cdc_enricher_pipeline_lag_seconds{pipeline=\"items\"}") == Some(0.0)
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
        value(
            &body,
            "cdc_enricher_pipeline_lag_seconds{pipeline=\"items\"}"
        ),
        Some(0.0)
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
        value(
            &body,
            "cdc_enricher_pipeline_lag_seconds{pipeline=\"slow\"}"
        ),
        Some(0.0)
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

/// Every series of a scrape, checked line by line with the `prometheus-parse` crate's parser:
/// each line is a comment or a sample of a family declared once (`# TYPE`), with a number for
/// value; no series (name and labels) appears twice, and none has an empty `pipeline` label.
/// Returns the series, name and labels, in order.
fn series_of(body: &str) -> Vec<String> {
    use prometheus_parse::{LineInfo, SampleType};
    let mut types = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut series = Vec::new();
    for line in body.lines() {
        match LineInfo::parse(line) {
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                // The parser names a histogram's family by its `_bucket` series.
                let family = metric_alias.unwrap_or(metric_name);
                assert!(
                    types.insert(family.clone(), sample_type).is_none(),
                    "second TYPE line for {family}"
                );
            }
            LineInfo::Sample {
                metric_name,
                labels,
                value,
                ..
            } => {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        let base = metric_name.strip_suffix(s)?;
                        (types.get(base) == Some(&SampleType::Histogram)).then_some(base)
                    })
                    .unwrap_or(metric_name);
                assert!(types.contains_key(family), "{line}: no TYPE line before it");
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
                let s = format!("{metric_name}{{{}}}", labels.unwrap_or(""));
                assert!(
                    !s.contains("pipeline=\"\""),
                    "{line}: a spare slot's series"
                );
                assert!(seen.insert(s.clone()), "duplicate series: {s}");
                series.push(s);
            }
            LineInfo::Doc { .. } | LineInfo::Empty => {}
            LineInfo::Ignored => panic!("not a line of the text format: {line}"),
        }
    }
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())));
    assert!(parsed.is_ok(), "{parsed:?}");
    series
}

#[test]
fn a_scrape_parses_with_no_duplicate_series() {
    let db = MariaDb::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.a (id INT PRIMARY KEY); CREATE TABLE shop.b (id INT PRIMARY KEY);",
    ));
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        None,
        &[
            (
                "a",
                "name: a\ntable: shop.a\nsink:\n  jsonl:\n    path: a.jsonl\n",
            ),
            (
                "b",
                "name: b\ntable: shop.b\nsink:\n  jsonl:\n    path: b.jsonl\n",
            ),
        ],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.spawn();
    block_on(db.exec("INSERT INTO shop.a VALUES (1); INSERT INTO shop.b VALUES (1), (2);"));
    let start = Instant::now();
    let body = loop {
        let (_, body) = http_get(port, "/metrics");
        if sample(&body, "cdc_enricher_records_total{pipeline=\"b\"}") == Some("2") {
            break body;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let series = series_of(&body);
    // Each pipeline's histograms once (not once per spare slot), every bucket and +Inf.
    for p in ["a", "b"] {
        for h in [
            "cdc_enricher_enrichment_batch_size",
            "cdc_enricher_ml_call_seconds",
        ] {
            let n = series
                .iter()
                .filter(|s| s.starts_with(&format!("{h}_bucket{{pipeline=\"{p}\",")))
                .count();
            assert_eq!(n, if h.ends_with("seconds") { 11 } else { 10 }, "{h} {p}");
        }
    }
    assert_eq!(
        sample(&body, "cdc_enricher_records_total{pipeline=\"a\"}"),
        Some("1")
    );
    assert_eq!(d.terminate(), 0);
}
