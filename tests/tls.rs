//! The replication connection over TLS: MariaDB requires secure transport, the daemon connects
//! with `tls.mode: required` and with `verify_ca` against the CA that signed the server's
//! certificate, and delivers records.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replication_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );

    let db = MariaDb::start_with(&[
        &format!("--ssl-cert={}", d.join("server.pem").display()),
        &format!("--ssl-key={}", d.join("server.key").display()),
        &format!("--ssl-ca={}", d.join("ca.pem").display()),
        "--require-secure-transport=ON",
    ]);
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, title VARCHAR(20));",
    ));

    for (i, tls) in [
        "  tls:\n    mode: required\n".to_string(),
        format!(
            "  tls:\n    mode: verify_ca\n    ca_file: {}\n",
            d.join("ca.pem").display()
        ),
    ]
    .iter()
    .enumerate()
    {
        let topic = format!("items{i}");
        let mut dm = Daemon::new(
            &db,
            Some(&kafka),
            &[(
                "items",
                &format!("name: items\ntable: shop.items\nsink:\n  kafka:\n    topic: {topic}\n"),
            )],
        );
        let cfg = std::fs::read_to_string(dm.config())
            .unwrap()
            .replace("  start: earliest\n", &format!("  start: earliest\n{tls}"));
        std::fs::write(dm.config(), cfg).unwrap();
        let (code, out, err) = dm.check();
        assert_eq!(code, 0, "{out}{err}");
        dm.spawn();
        block_on(db.exec(&format!(
            "INSERT INTO shop.items VALUES ({}, 'secure')",
            10 + i
        )));
        let recs = kafka.read(&topic, 1 + i, Duration::from_secs(30));
        dm.assert_running();
        assert_eq!(recs.len(), 1 + i, "{}", dm.log());
        assert_eq!(
            recs[i].json()["after"],
            serde_json::json!({"id": 10 + i, "title": "secure"})
        );
        assert_eq!(dm.terminate(), 0);
    }

    // Without TLS the server refuses the login (MariaDB answers 1045), and `check` says so.
    let dm = Daemon::new(
        &db,
        None,
        &[(
            "items",
            "name: items\ntable: shop.items\nsink:\n  jsonl:\n    path: out.jsonl\n",
        )],
    );
    let (code, _, err) = dm.check();
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot connect to MySQL at 127.0.0.1:{}: Server error: `ERROR 1045 (28000): Access denied for user \
             'cdc'@'127.0.0.1' (using password: YES)'\n",
            db.port
        )
    );
}
