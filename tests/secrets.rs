//! No secret ever appears in a log line or an error: debug-level logs of runs that succeed and
//! of runs that fail (wrong passwords, a refused AWS signature, an outage) are searched for
//! every configured secret.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WRITER_SECRET: &str = "writer-pass-8d1f";
const USER_SECRET: &str = "app-user-pass-77c2";

#[test]
fn no_configured_secret_reaches_the_logs() {
    let db = MariaDb::start();
    let aws = AwsStandin::start();
    block_on(db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, sentiment VARCHAR(20));
         CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY '{WRITER_SECRET}';
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON shop.* TO 'writer'@'127.0.0.1';"
    )));
    let pipeline = |writer_password: &str| {
        format!(
            "name: s\ntable: shop.support\ncolumns: [id, message]\n\
             enrichment:\n  comprehend: {{operation: sentiment, text: message}}\n  endpoint_url: {}\n  max_wait_ms: 50\n  timeout_ms: 2000\n\
             sink:\n  mysql:\n    mode: update\n    user: writer\n    password: {writer_password}\n    columns: {{sentiment: /sentiment}}\n",
            aws.url()
        )
    };
    let mut logs = String::new();

    // A working run at debug level; the binlog it reads carries a CREATE USER … IDENTIFIED BY
    // in clear, and an AWS outage is retried.
    let mut d = Daemon::new(&db, None, &[("s", &pipeline(WRITER_SECRET))]);
    d.env = AwsStandin::env();
    d.env.push(("RUST_LOG".into(), "debug".into()));
    d.spawn();
    wait_log(&mut d, "starting", 1, 60);
    block_on(db.exec(&format!(
        "CREATE USER 'app'@'%' IDENTIFIED BY '{USER_SECRET}'; INSERT INTO shop.support (id, message) VALUES (1, 'good')"
    )));
    aws.control(r#"{"status": 503, "times": 2}"#);
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (2, 'bad')"));
    let start = Instant::now();
    loop {
        let n: Vec<i64> =
            block_on(db.query("SELECT COUNT(*) FROM shop.support WHERE sentiment IS NOT NULL"));
        if n[0] == 2 {
            break;
        }
        d.assert_running();
        assert!(start.elapsed() < Duration::from_secs(60), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.log().contains("DDL"),
        "the CREATE USER was logged (without its secret)"
    );
    assert_eq!(d.terminate(), 0);
    logs.push_str(&d.log());

    // A wrong source password, a wrong writer password, a refused AWS signature.
    let mut bad_source = Daemon::new(&db, None, &[("s", &pipeline(WRITER_SECRET))]);
    bad_source.env = AwsStandin::env();
    bad_source
        .env
        .push(("CDC_PASSWORD".into(), "wrong-source-pass-31ab".into()));
    bad_source.env.push(("RUST_LOG".into(), "debug".into()));
    let (code, out, err) = bad_source.check();
    assert_eq!(code, 1, "{out}{err}");
    logs.push_str(&out);
    logs.push_str(&err);

    let bad_writer = Daemon::new(&db, None, &[("s", &pipeline("wrong-writer-pass-09fe"))]);
    let (code, out, err) = bad_writer.check();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("sink.mysql cannot connect as 'writer'"),
        "{err}"
    );
    logs.push_str(&out);
    logs.push_str(&err);

    let mut bad_aws = Daemon::new(&db, None, &[("s", &pipeline(WRITER_SECRET))]);
    bad_aws.env = AwsStandin::env();
    for (k, v) in bad_aws.env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-aws-secret-5e5e".into();
        }
    }
    bad_aws.env.push(("RUST_LOG".into(), "debug".into()));
    bad_aws.spawn();
    block_on(db.exec("INSERT INTO shop.support (id, message) VALUES (3, 'fine')"));
    wait_log(&mut bad_aws, "InvalidSignatureException", 1, 60);
    bad_aws.kill9();
    logs.push_str(&bad_aws.log());

    assert!(
        logs.len() > 10_000,
        "debug logs were written: {} bytes",
        logs.len()
    );
    for secret in [
        CDC_PASSWORD,
        WRITER_SECRET,
        USER_SECRET,
        "standin-secret",
        "wrong-source-pass-31ab",
        "wrong-writer-pass-09fe",
        "wrong-aws-secret-5e5e",
    ] {
        assert!(
            !logs.contains(secret),
            "`{secret}` appears in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
