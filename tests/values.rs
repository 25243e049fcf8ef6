//! Wider than the fidelity cases: every byte of every single-byte charset and every valid
//! character of every multi-byte charset against the server's own conversion, temporal values
//! of every precision in both storage formats against the server's text, every column kind the
//! server makes for itself, MariaDB's INET4/INET6/UUID, a value that cannot be decoded, and
//! rows typed with the definition they were written under.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

/// Streams `table` (the daemon reading the binlog from its start) and returns each record's
/// after image by id.
fn stream_table(
    db: &MariaDb,
    kafka: &Kafka,
    table: &str,
    n: usize,
) -> (Daemon, HashMap<i64, Value>) {
    let topic = table.replace('.', "_");
    let p = format!("name: p\ntable: {table}\nsink:\n  kafka:\n    topic: {topic}\n");
    let mut d = Daemon::new(db, Some(kafka), &[("p", &p)]);
    // Long texts: raise the producer's message size limit.
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        "    linger.ms: \"2\"\n",
        "    linger.ms: \"2\"\n    message.max.bytes: \"100000000\"\n",
    );
    std::fs::write(d.config(), cfg).unwrap();
    d.spawn();
    let mut tail = kafka.tail(&topic);
    wait_records(&mut d, &mut tail, n, 120);
    let by_id = tail
        .records
        .iter()
        .map(|r| {
            let a = r.json()["after"].clone();
            (a["id"].as_i64().unwrap(), a)
        })
        .collect();
    (d, by_id)
}

/// Unicode scalars from the HEX of a UTF-32 string.
fn scalars(hex: &str) -> Vec<u32> {
    (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[8 * i..8 * i + 8], 16).unwrap())
        .collect()
}

const SINGLE_BYTE: [&str; 25] = [
    "armscii8", "ascii", "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "dec8",
    "geostd8", "greek", "hebrew", "hp8", "keybcs2", "koi8r", "koi8u", "latin1", "latin2", "latin5",
    "latin7", "macce", "macroman", "swe7", "tis620",
];

#[test]
fn every_byte_of_every_single_byte_charset_as_the_server_converts_it() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let cols: Vec<String> = SINGLE_BYTE
        .iter()
        .map(|c| format!("`{c}` VARCHAR(1) CHARACTER SET {c}"))
        .collect();
    let vals: Vec<String> = SINGLE_BYTE
        .iter()
        .map(|c| format!("CAST(UNHEX(LPAD(HEX(seq), 2, '0')) AS CHAR CHARACTER SET {c})"))
        .collect();
    block_on(db.exec(&format!(
        "SET SESSION sql_mode = ''; CREATE DATABASE t;
         CREATE TABLE t.sb (id INT PRIMARY KEY, {});
         INSERT INTO t.sb SELECT seq, {} FROM t.seq_0_to_255;",
        cols.join(", "),
        vals.join(", ")
    )));
    let (_d, got) = stream_table(&db, &kafka, "t.sb", 256);
    let conv: Vec<String> = SINGLE_BYTE
        .iter()
        .map(|c| format!("HEX(CONVERT(`{c}` USING utf32)), HEX(`{c}`)"))
        .collect();
    let rows: Vec<mysql_async::Row> = block_on(db.query(&format!(
        "SELECT id, {} FROM t.sb ORDER BY id",
        conv.join(", ")
    )));
    let mut checked = 0;
    for row in rows {
        let id: i64 = row.get(0).unwrap();
        for (i, cs) in SINGLE_BYTE.iter().enumerate() {
            let server: String = row.get(1 + 2 * i).unwrap();
            let stored: String = row.get(2 + 2 * i).unwrap();
            let ours: Vec<u32> = got[&id][cs]
                .as_str()
                .unwrap()
                .chars()
                .map(|c| c as u32)
                .collect();
            let mut want = scalars(&server);
            // Where the server has no character for the stored byte it prints `?`; the
            // daemon says so with U+FFFD (and a warning) instead of inventing a `?`.
            if want == [0x3f] && stored != "3F" {
                want = vec![0xfffd];
            }
            assert_eq!(ours, want, "{cs} byte {stored} (row {id})");
            checked += 1;
        }
    }
    assert_eq!(checked, 256 * SINGLE_BYTE.len());
}

#[test]
fn every_valid_character_of_every_multi_byte_charset_as_the_server_converts_it() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let sets = [
        "cp932", "sjis", "eucjpms", "ujis", "big5", "gbk", "gb2312", "euckr",
    ];
    let cols: Vec<String> = sets
        .iter()
        .map(|c| format!("`{c}` MEDIUMTEXT CHARACTER SET {c}"))
        .collect();
    let mut sql = format!(
        "SET SESSION group_concat_max_len = 100000000; SET SESSION sql_mode = ''; CREATE DATABASE t;
         CREATE TABLE t.mb (id INT PRIMARY KEY, {});
         CREATE TABLE t.seqs (b VARBINARY(3) PRIMARY KEY);
         INSERT INTO t.seqs SELECT UNHEX(LPAD(HEX(seq), 2, '0')) FROM t.seq_128_to_255;
         INSERT INTO t.seqs SELECT UNHEX(CONCAT(HEX(a.seq), LPAD(HEX(c.seq), 2, '0')))
           FROM t.seq_129_to_254 a, t.seq_48_to_254 c;
         INSERT INTO t.seqs SELECT UNHEX(CONCAT('8F', HEX(a.seq), HEX(c.seq)))
           FROM t.seq_161_to_254 a, t.seq_161_to_254 c;",
        cols.join(", ")
    );
    for (i, cs) in sets.iter().enumerate() {
        // Every byte sequence the server reads as one character it can convert.
        sql.push_str(&format!(
            "INSERT INTO t.mb (id, `{cs}`) SELECT {}, CAST(GROUP_CONCAT(b ORDER BY b SEPARATOR '') AS CHAR CHARACTER SET {cs})
               FROM t.seqs WHERE CHAR_LENGTH(CAST(b AS CHAR CHARACTER SET {cs})) = 1
               AND HEX(CONVERT(CAST(b AS CHAR CHARACTER SET {cs}) USING utf32)) <> '0000003F';",
            i + 1
        ));
        // And every one the server stores but has no character for (its SELECT prints `?`),
        // apart (a space between, so that none joins the next).
        sql.push_str(&format!(
            "INSERT INTO t.mb (id, `{cs}`) SELECT {}, CAST(GROUP_CONCAT(b ORDER BY b SEPARATOR ' ') AS CHAR CHARACTER SET {cs})
               FROM t.seqs WHERE CHAR_LENGTH(CAST(b AS CHAR CHARACTER SET {cs})) = 1 AND b <> '?'
               AND HEX(CONVERT(CAST(b AS CHAR CHARACTER SET {cs}) USING utf32)) = '0000003F';",
            i + 101
        ));
    }
    block_on(db.exec(&sql));
    let (_d, got) = stream_table(&db, &kafka, "t.mb", 2 * sets.len());
    // Each sequence as it was stored (the server keeps some as they are and turns others into
    // `?` on the way in): a stored `?` is one, the rest are U+FFFD, as its SELECT shows `?`.
    let mut replaced = 0;
    for (i, cs) in sets.iter().enumerate() {
        let id = i as i64 + 101;
        let (hex, converted) = block_on(db.query::<(String, String)>(&format!(
            "SELECT HEX(`{cs}`), HEX(CONVERT(`{cs}` USING utf8mb4)) FROM t.mb WHERE id = {id}"
        )))[0]
            .clone();
        let stored: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
            .collect();
        let pieces: Vec<&[u8]> = stored.split(|b| *b == b' ').collect();
        assert!(pieces.len() > 50, "{cs}: {} sequences", pieces.len());
        assert_eq!(converted, vec!["3F"; pieces.len()].join("20"), "{cs}");
        let ours: Vec<&str> = got[&id][cs].as_str().unwrap().split(' ').collect();
        assert_eq!(ours.len(), pieces.len(), "{cs}");
        for (p, o) in pieces.iter().zip(&ours) {
            let want = if *p == b"?" { "?" } else { "\u{fffd}" };
            assert_eq!(*o, want, "{cs}: the stored bytes {p:02X?}");
            replaced += usize::from(want != "?");
        }
    }
    assert!(
        replaced > 5000,
        "{replaced} sequences stored without a character"
    );
    for (i, cs) in sets.iter().enumerate() {
        let id = i as i64 + 1;
        let server: Vec<String> = block_on(db.query(&format!(
            "SELECT HEX(CONVERT(`{cs}` USING utf32)) FROM t.mb WHERE id = {id}"
        )));
        let want = scalars(&server[0]);
        let ours: Vec<u32> = got[&id][cs]
            .as_str()
            .unwrap()
            .chars()
            .map(|c| c as u32)
            .collect();
        assert!(want.len() > 1000, "{cs}: {} characters", want.len());
        if let Some(k) = (0..want.len().min(ours.len())).find(|k| want[*k] != ours[*k]) {
            panic!(
                "{cs}: character {k} is U+{:04X}, the server says U+{:04X}",
                ours[k], want[k]
            );
        }
        assert_eq!(ours.len(), want.len(), "{cs}");
    }
}

/// Deterministic pseudo-random numbers (xorshift), so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn temporal_rows(rng: &mut Rng, n: usize) -> Vec<String> {
    (1..=n)
        .map(|id| {
            let time = |r: &mut Rng| {
                let sign = if r.next(2) == 0 { "-" } else { "" };
                let h = if r.next(5) == 0 { 838 } else { r.next(839) };
                let (m, s) = if h == 838 {
                    (r.next(60).min(59), r.next(60))
                } else {
                    (r.next(60), r.next(60))
                };
                let frac = match r.next(4) {
                    0 => 0,
                    1 => 999_999,
                    _ => r.next(1_000_000),
                };
                format!("'{sign}{h}:{m:02}:{s:02}.{frac:06}'")
            };
            let dt = |r: &mut Rng| {
                format!(
                    "'{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}'",
                    1000 + r.next(8999),
                    1 + r.next(12),
                    1 + r.next(28),
                    r.next(24),
                    r.next(60),
                    r.next(60),
                    r.next(1_000_000)
                )
            };
            let ts = |r: &mut Rng| {
                format!(
                    "FROM_UNIXTIME({}.{:06})",
                    1 + r.next(2_147_483_646),
                    r.next(1_000_000)
                )
            };
            let mut v = vec![id.to_string()];
            v.extend((0..7).map(|_| time(rng)));
            v.extend((0..7).map(|_| dt(rng)));
            v.extend((0..7).map(|_| ts(rng)));
            format!("({})", v.join(", "))
        })
        .collect()
}

fn temporal_columns() -> Vec<(String, String)> {
    let mut c = Vec::new();
    for (prefix, ty) in [("t", "TIME"), ("d", "DATETIME"), ("s", "TIMESTAMP")] {
        for p in 0..=6 {
            c.push((
                format!("{prefix}{p}"),
                format!("{ty}({p}){}", if ty == "TIMESTAMP" { " NULL" } else { "" }),
            ));
        }
    }
    c
}

#[test]
fn temporal_values_of_every_precision_in_both_storage_formats_match_the_server() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let cols = temporal_columns();
    let defs: Vec<String> = cols.iter().map(|(n, t)| format!("{n} {t}")).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rows = temporal_rows(&mut rng, 300);
    // `cur` in MySQL 5.6's format (TIME2…), `old` in MariaDB 5.3's (the old type codes, whose
    // fractional digits the binlog does not carry).
    block_on(db.exec(&format!(
        "SET time_zone = '+00:00'; CREATE DATABASE t;
         CREATE TABLE t.cur (id INT PRIMARY KEY, {0});
         SET GLOBAL mysql56_temporal_format = OFF;
         CREATE TABLE t.old (id INT PRIMARY KEY, {0});
         SET GLOBAL mysql56_temporal_format = ON;
         INSERT INTO t.cur VALUES {1}; INSERT INTO t.old SELECT * FROM t.cur;",
        defs.join(", "),
        rows.join(", ")
    )));
    let types: Vec<String> = block_on(db.query(
        "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_NAME = 'old' AND COLUMN_NAME = 't3'",
    ));
    assert_eq!(types, ["time(3) /* mariadb-5.3 */"]);
    for table in ["cur", "old"] {
        let (_d, got) = stream_table(&db, &kafka, &format!("t.{table}"), 300);
        let text: Vec<String> = cols
            .iter()
            .map(|(n, _)| format!("CAST({n} AS CHAR)"))
            .collect();
        let server: Vec<mysql_async::Row> = block_on(async {
            let mut c = db.conn().await;
            c.query_drop("SET time_zone = '+00:00'").await.unwrap();
            c.query(format!(
                "SELECT id, {} FROM t.{table} ORDER BY id",
                text.join(", ")
            ))
            .await
            .unwrap()
        });
        for row in server {
            let id: i64 = row.get(0).unwrap();
            for (i, (name, _)) in cols.iter().enumerate() {
                let s: Option<String> = row.get(1 + i).unwrap();
                let want = s.map(|s| match name.as_bytes()[0] {
                    b't' => s,
                    b'd' => s.replace(' ', "T"),
                    _ => format!("{}Z", s.replace(' ', "T")),
                });
                assert_eq!(
                    got[&id][name].as_str(),
                    want.as_deref(),
                    "{table} row {id} {name}"
                );
            }
        }
    }
}

#[test]
fn columns_the_server_makes_for_itself_stay_out_of_records() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.hidden (
           id INT PRIMARY KEY,
           body TEXT,
           secret INT INVISIBLE,
           `DB_ROW_HASH_1` INT,
           v INT,
           UNIQUE KEY (body)
         ) WITH SYSTEM VERSIONING;
         INSERT INTO t.hidden (id, body, secret, `DB_ROW_HASH_1`, v) VALUES (1, 'a', 7, 8, 9), (2, NULL, NULL, NULL, NULL);",
    ));
    // The binlog carries the long-unique hash column (named DB_ROW_HASH_2: the user took 1)
    // and the implicit row_start / row_end; SELECT * shows none of them; the user's INVISIBLE
    // column and the user's own `DB_ROW_HASH_1` are the user's, and stay.
    let (_d, got) = stream_table(&db, &kafka, "t.hidden", 2);
    assert_eq!(
        got[&1],
        json!({"id": 1, "body": "a", "secret": 7, "DB_ROW_HASH_1": 8, "v": 9})
    );
    assert_eq!(
        got[&2],
        json!({"id": 2, "body": null, "secret": null, "DB_ROW_HASH_1": null, "v": null})
    );
    let names: Vec<String> = block_on(db.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_NAME = 'hidden' ORDER BY ORDINAL_POSITION",
    ));
    assert_eq!(names, ["id", "body", "secret", "DB_ROW_HASH_1", "v"]);
}

#[test]
fn mariadb_inet_and_uuid_as_the_server_prints_them() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.net (id INT PRIMARY KEY, a INET6, b INET4, u UUID);
         INSERT INTO t.net VALUES (1, '::1', '10.0.0.1', '123e4567-e89b-12d3-a456-426655440000'),
           (2, '::ffff:1.2.3.4', '255.255.255.255', '00000000-0000-0000-0000-000000000001'),
           (3, '2001:db8::ff00:42:8329', '0.0.0.0', '6ccd780c-baba-1026-9564-5b8c656024db'),
           (4, 'fe80::', '1.0.0.0', 'ffffffff-ffff-ffff-ffff-ffffffffffff'), (5, NULL, NULL, NULL);",
    ));
    // INET6 as MariaDB prints it, not as RFC 5952 does: IPv4-compatible and -mapped tails in
    // dotted form, a single zero word shortened, the first of equal zero runs.
    let more = [
        "::1:2",
        "::0.1.0.0",
        "::10.0.0.1",
        "::1.0.0.0",
        "::",
        "::ffff",
        "::ffff:0",
        "::ffff:1:2",
        "::ffff:0.0.0.0",
        "1:0:2:3:4:5:6:7",
        "1:0:0:2:0:0:3:4",
        "1:0:0:2:3:0:0:0",
        "0:0:1:0:0:0:0:1",
        "0:0:0:0:0:1:0:0",
        "0:1::",
        "1::",
        "0:0:0:0:1:ffff:a:b",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    let rows: Vec<String> = more
        .iter()
        .enumerate()
        .map(|(i, a)| format!("({}, '{a}', NULL, NULL)", 6 + i))
        .collect();
    block_on(db.exec(&format!("INSERT INTO t.net VALUES {};", rows.join(", "))));
    let (_d, got) = stream_table(&db, &kafka, "t.net", 5 + more.len());
    type Texts = (i64, Option<String>, Option<String>, Option<String>);
    let server: Vec<Texts> = block_on(db.query(
        "SELECT id, CAST(a AS CHAR), CAST(b AS CHAR), CAST(u AS CHAR) FROM t.net ORDER BY id",
    ));
    for (id, a, b, u) in server {
        assert_eq!(
            got[&id],
            json!({"id": id, "a": a, "b": b, "u": u}),
            "row {id}"
        );
    }
}

#[test]
fn rows_logged_with_partial_images_stop_their_pipeline_alone_with_the_reason() {
    // A session with binlog_row_image=MINIMAL logs an update's before image as the key alone:
    // the other columns' values are unknown, and a null there would be a value the row never
    // held. Its pipeline stops at that row, naming the columns and the setting; the other
    // pipeline goes on.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.m (id INT PRIMARY KEY, a VARCHAR(10), b INT, bl BLOB);
         CREATE TABLE t.other (id INT PRIMARY KEY, v INT);",
    ));
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[
            ("m", "name: m\ntable: t.m\nsink:\n  kafka:\n    topic: m\n"),
            (
                "other",
                "name: other\ntable: t.other\nsink:\n  kafka:\n    topic: other\n",
            ),
        ],
    );
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.m VALUES (1, 'one', 10, 'blob1'), (2, 'two', 20, 'blob2');
         INSERT INTO t.other VALUES (1, 1);
         SET SESSION binlog_row_image = MINIMAL;
         UPDATE t.m SET b = 11 WHERE id = 1;
         SET SESSION binlog_row_image = FULL;
         INSERT INTO t.other VALUES (2, 2);
         UPDATE t.m SET b = 21 WHERE id = 2;",
    ));
    let mut other = kafka.tail("other");
    wait_records(&mut d, &mut other, 2, 60);
    wait_log(&mut d, "pipeline stopped", 1, 30);
    let m = kafka.read("m", 3, Duration::from_secs(5));
    let ids: Vec<Value> = m.iter().map(|r| r.json()["after"]["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![json!(1), json!(2)],
        "the inserts, nothing from the partial update on"
    );
    let log = d.log();
    assert!(
        log.contains("the rows event's before image leaves out column(s) a, b, bl")
            && log.contains("binlog_row_image=MINIMAL or NOBLOB"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_partial_image_stops_only_the_pipelines_that_read_a_column_it_leaves_out() {
    // binlog_row_image=NOBLOB logs no BLOB/TEXT column an update or delete does not need. A
    // pipeline that reads none of them (its columns, key and filter) takes those rows whole;
    // one that reads them stops at the first such row, naming the columns; one that reads a
    // TEXT column only through its filter stops too.
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.p (id INT PRIMARY KEY, name VARCHAR(20), n INT, body TEXT, extra BLOB);",
    ));
    let slim = "name: slim\ntable: t.p\ncolumns: [id, name, n]\nfilter: n > 0\n\
                sink:\n  kafka:\n    topic: slim\n";
    let full = "name: full\ntable: t.p\nsink:\n  kafka:\n    topic: full\n";
    let by_body = "name: by_body\ntable: t.p\ncolumns: [id]\nfilter: body LIKE 't%'\n\
                   sink:\n  kafka:\n    topic: by_body\n";
    let mut d = Daemon::new(
        &db,
        Some(&kafka),
        &[("slim", slim), ("full", full), ("by_body", by_body)],
    );
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.p VALUES (1, 'a', 1, 'text1', 'b1'), (2, 'b', 2, 'text2', 'b2');
         SET SESSION binlog_row_image = NOBLOB;
         UPDATE t.p SET name = 'a2', n = 10 WHERE id = 1;
         DELETE FROM t.p WHERE id = 2;
         SET SESSION binlog_row_image = FULL;
         UPDATE t.p SET n = 11 WHERE id = 1;",
    ));
    let mut tail = kafka.tail("slim");
    wait_records(&mut d, &mut tail, 4, 60);
    wait_log(&mut d, "pipeline stopped", 2, 30);
    let got: Vec<Value> = kafka
        .read("slim", 5, Duration::from_secs(3))
        .iter()
        .map(|r| {
            let v = r.json();
            json!([v["op"], v["before"], v["after"]])
        })
        .collect();
    assert_eq!(
        got,
        vec![
            json!(["c", null, {"id": 1, "name": "a", "n": 1}]),
            json!(["c", null, {"id": 2, "name": "b", "n": 2}]),
            json!(["u", {"id": 1, "name": "a", "n": 1}, {"id": 1, "name": "a2", "n": 10}]),
            json!(["d", {"id": 2, "name": "b", "n": 2}, null]),
            json!(["u", {"id": 1, "name": "a2", "n": 10}, {"id": 1, "name": "a2", "n": 11}]),
        ],
        "every row whole: the columns left out are none the pipeline reads"
    );
    let ops = |topic: &str| -> Vec<Value> {
        kafka
            .read(topic, 4, Duration::from_secs(3))
            .iter()
            .map(|r| r.json()["op"].clone())
            .collect()
    };
    assert_eq!(
        ops("full"),
        vec![json!("c"), json!("c")],
        "stopped at the update"
    );
    assert_eq!(
        ops("by_body"),
        vec![json!("c"), json!("c")],
        "stopped at the update"
    );
    let log = d.log();
    assert!(
        log.contains("pipeline `full`: table `t.p`: the rows event's before image leaves out column(s) body, extra")
            && log.contains("pipeline `by_body`: table `t.p`: the rows event's before image leaves out column(s) body:")
            && log.contains("binlog_row_image=MINIMAL or NOBLOB")
            && !log.contains("pipeline `slim`:"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_value_that_cannot_be_decoded_stops_its_pipeline_alone() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.docs (id INT PRIMARY KEY, doc JSON);
         CREATE TABLE t.other (id INT PRIMARY KEY, v INT);",
    ));
    let port = free_port();
    let mut d = Daemon::with_config(
        &db,
        Some(&kafka),
        &[
            (
                "docs",
                "name: docs\ntable: t.docs\nsink:\n  kafka:\n    topic: docs\n",
            ),
            (
                "other",
                "name: other\ntable: t.other\nsink:\n  kafka:\n    topic: other\n",
            ),
        ],
        &format!("metrics:\n  address: 127.0.0.1:{port}\n"),
    );
    d.spawn();
    // A JSON column holding text that is not JSON (its CHECK turned off for the session).
    block_on(db.exec(
        "INSERT INTO t.docs VALUES (1, '{\"a\": 1}'); INSERT INTO t.other VALUES (1, 1);
         SET SESSION check_constraint_checks = 0;
         INSERT INTO t.docs VALUES (2, '{not json'); INSERT INTO t.other VALUES (2, 2);
         SET SESSION check_constraint_checks = 1;
         INSERT INTO t.docs VALUES (3, '[3]'); INSERT INTO t.other VALUES (3, 3);",
    ));
    let mut other = kafka.tail("other");
    wait_records(&mut d, &mut other, 3, 60);
    wait_log(&mut d, "pipeline stopped", 1, 30);
    let docs = kafka.read("docs", 1, Duration::from_secs(10));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].json()["after"], json!({"id": 1, "doc": {"a": 1}}));
    let log = d.log();
    assert!(
        log.contains("a row of `t`.`docs`, column `doc` (JSON) cannot be decoded: the column is JSON but its value is not a JSON document (invalid JSON at byte 1: expected a member name)"),
        "{log}"
    );
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"docs\"}"),
        Some("1")
    );
    assert_eq!(
        sample(&body, "cdc_enricher_pipeline_stopped{pipeline=\"other\"}"),
        Some("0")
    );
    d.assert_running();
    assert_eq!(d.terminate(), 0);
}

#[test]
fn rows_written_before_an_alter_keep_the_definition_they_were_written_under() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.a (id INT PRIMARY KEY, doc LONGTEXT);
         CREATE TABLE t.b (id INT PRIMARY KEY, doc JSON);",
    ));
    let pipes = [
        ("a", "name: a\ntable: t.a\nsink:\n  kafka:\n    topic: a\n"),
        ("b", "name: b\ntable: t.b\nsink:\n  kafka:\n    topic: b\n"),
    ];
    let mut d = Daemon::new(&db, Some(&kafka), &pipes);
    d.spawn();
    block_on(db.exec(
        "INSERT INTO t.a VALUES (1, '{\"n\": 1}'); INSERT INTO t.b VALUES (1, '{\"n\": 1}');",
    ));
    let mut a = kafka.tail("a");
    wait_records(&mut d, &mut a, 1, 30);
    assert_eq!(d.terminate(), 0);
    // While the daemon is down: rows under the old definition, then the ALTERs (LONGTEXT →
    // JSON and JSON → LONGTEXT), then rows under the new one.
    block_on(db.exec(
        "INSERT INTO t.a VALUES (2, '{\"n\": 2}'); INSERT INTO t.b VALUES (2, '{\"n\": 2}');
         ALTER TABLE t.a MODIFY doc JSON; ALTER TABLE t.b MODIFY doc LONGTEXT;
         INSERT INTO t.a VALUES (3, '{\"n\": 3}'); INSERT INTO t.b VALUES (3, '{\"n\": 3}');",
    ));
    d.spawn();
    wait_records(&mut d, &mut a, 3, 30);
    let b = kafka.read("b", 3, Duration::from_secs(30));
    let docs = |recs: &[Record]| -> Vec<Value> {
        recs.iter()
            .map(|r| r.json()["after"]["doc"].clone())
            .collect()
    };
    assert_eq!(
        docs(&a.records),
        [json!("{\"n\": 1}"), json!("{\"n\": 2}"), json!({"n": 3})]
    );
    assert_eq!(
        docs(&b),
        [json!({"n": 1}), json!({"n": 2}), json!("{\"n\": 3}")]
    );
    assert!(
        !d.log().contains("schema history cannot tell"),
        "{}",
        d.log()
    );
    assert_eq!(d.terminate(), 0);

    // A daemon with no history (a fresh checkpoint) reading the same binlog from its start:
    // the rows before the ALTER cannot be typed with certainty, and it says so instead of
    // typing them with today's definition.
    let mut fresh = Daemon::new(
        &db,
        Some(&kafka),
        &[("a", "name: a\ntable: t.a\nsink:\n  kafka:\n    topic: a2\n")],
    );
    fresh.spawn();
    let mut a2 = kafka.tail("a2");
    wait_records(&mut fresh, &mut a2, 3, 30);
    assert_eq!(
        docs(&a2.records),
        [json!("{\"n\": 1}"), json!("{\"n\": 2}"), json!({"n": 3})]
    );
    assert!(
        fresh
            .log()
            .contains("the schema history cannot tell this table's definition here"),
        "{}",
        fresh.log()
    );
}
