//! Every column type with edge values, NULLs, emoji, a latin1 column and a 20 MB LONGBLOB,
//! read back from Kafka as byte-exact JSON.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;

const PIPELINE: &str = "name: types\ntable: t.types\nsink:\n  kafka:\n    topic: types\n";
const BIG: &str = "name: big\ntable: t.big\nsink:\n  kafka:\n    topic: big\n";

#[test]
fn type_matrix_is_byte_exact() {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    block_on(db.exec(
        "CREATE DATABASE t;
         CREATE TABLE t.types (
           id INT PRIMARY KEY,
           ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
           mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
           de DECIMAL(30,10), de0 DECIMAL(5,0), fl FLOAT, db DOUBLE,
           d DATE, dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME, tm3 TIME(3), y YEAR,
           c CHAR(10), vc VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1, tx TEXT, mt MEDIUMTEXT,
           bn BINARY(4), vb VARBINARY(10), bl BLOB,
           js JSON, e ENUM('x','y','z'), s SET('a','b','c'), b1 BIT(1), b64 BIT(64), g GEOMETRY
         );
         CREATE TABLE t.big (id INT PRIMARY KEY, payload LONGBLOB);",
    ));
    let mut d = Daemon::with_config(&db, Some(&kafka), &[("types", PIPELINE), ("big", BIG)], "");
    // Large records: raise the producer's message size limit.
    let cfg = std::fs::read_to_string(d.config()).unwrap().replace(
        "    linger.ms: \"2\"\n",
        "    linger.ms: \"2\"\n    message.max.bytes: \"100000000\"\n",
    );
    std::fs::write(d.config(), cfg).unwrap();
    d.spawn();
    block_on(db.exec(
        "SET time_zone = '+00:00';
         INSERT INTO t.types VALUES (1,
           -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
           -9223372036854775808, 18446744073709551615,
           -12345678901234567890.0123456789, -99999, -0.1, -1.7976931348623157e308,
           '1000-01-01', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000001',
           '-838:59:59', '-00:00:00.5', 1901,
           'abc', CONCAT(REPEAT('é', 299), '😀'), 'café', 'héllo 😀 世界', 'tab\\there \"quoted\" \\\\ back',
           X'01020304', X'FF00', X'',
           '{\"k\": [1, \"x\", null, true], \"n\": 1.5}', 'z', 'a,c', b'1', b'1111111111111111111111111111111111111111111111111111111111111111',
           ST_GeomFromText('POINT(1 2)'));
         INSERT INTO t.types VALUES (2,
           127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0,
           99999999999999999999.9999999999, 0, 1.5, 2.5e-300,
           '9999-12-31', '9999-12-31 23:59:59', '2024-02-29 12:00:00.000001', '2038-01-19 03:14:07.999999',
           '838:59:59', '12:34:56.789', 2155,
           '', '', '', '', '',
           X'00000000', X'', X'00FF',
           '[]', 'x', '', b'0', b'0',
           ST_GeomFromText('LINESTRING(0 0, 1 1)'));
         INSERT INTO t.types (id) VALUES (3);",
    ));
    let recs = kafka.read("types", 3, Duration::from_secs(30));
    d.assert_running();
    assert_eq!(recs.len(), 3, "{}", d.log());
    // The raw bytes of `after`, as the daemon wrote them.
    let after: Vec<String> = recs
        .iter()
        .map(|r| {
            let v = r.value.as_deref().unwrap();
            let start = v.find(r#","after":"#).unwrap() + r#","after":"#.len();
            let end = v.find(r#","source":"#).unwrap();
            v[start..end].to_string()
        })
        .collect();

    let expected_1 = concat!(
        r#"{"id":1,"ti":-128,"tiu":255,"si":-32768,"siu":65535,"mi":-8388608,"miu":16777215,"i":-2147483648,"iu":4294967295,"#,
        r#""bi":-9223372036854775808,"biu":18446744073709551615,"de":"-12345678901234567890.0123456789","de0":"-99999","#,
        r#""fl":-0.1,"db":-1.7976931348623157e+308,"d":"1000-01-01","dt":"1000-01-01T00:00:00","dt6":"9999-12-31T23:59:59.999999","#,
        r#""ts":"1970-01-01T00:00:01.000001Z","tm":"-838:59:59","tm3":"-00:00:00.500","y":"1901","c":"abc","#,
    );
    let vc = format!(r#""vc":"{}😀","#, "é".repeat(299));
    let expected_1 = format!(
        "{expected_1}{vc}{}",
        concat!(
            r#""l1":"café","tx":"héllo 😀 世界","mt":"tab\there \"quoted\" \\ back","bn":"AQIDBA==","vb":"/wA=","bl":"","#,
            r#""js":{"k":[1,"x",null,true],"n":1.5},"e":"z","s":"a,c","b1":1,"b64":18446744073709551615,"#,
            r#""g":"AQEAAAAAAAAAAADwPwAAAAAAAABA"}"#
        )
    );
    assert_eq!(after[0], expected_1);
    assert_eq!(
        after[1],
        concat!(
            r#"{"id":2,"ti":127,"tiu":0,"si":32767,"siu":0,"mi":8388607,"miu":0,"i":2147483647,"iu":0,"#,
            r#""bi":9223372036854775807,"biu":0,"de":"99999999999999999999.9999999999","de0":"0","fl":1.5,"db":2.5e-300,"#,
            r#""d":"9999-12-31","dt":"9999-12-31T23:59:59","dt6":"2024-02-29T12:00:00.000001","ts":"2038-01-19T03:14:07.999999Z","#,
            r#""tm":"838:59:59","tm3":"12:34:56.789","y":"2155","c":"","vc":"","l1":"","tx":"","mt":"","#,
            r#""bn":"AAAAAA==","vb":"","bl":"AP8=","js":[],"e":"x","s":"","b1":0,"b64":0,"#,
            r#""g":"AQIAAAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAPA/AAAAAAAA8D8="}"#
        )
    );
    let nulls: Vec<&str> = [
        "ti", "tiu", "si", "siu", "mi", "miu", "i", "iu", "bi", "biu", "de", "de0", "fl", "db",
        "d", "dt", "dt6", "ts", "tm", "tm3", "y", "c", "vc", "l1", "tx", "mt", "bn", "vb", "bl",
        "js", "e", "s", "b1", "b64", "g",
    ]
    .to_vec();
    let expected_3 = format!(
        "{{\"id\":3,{}}}",
        nulls
            .iter()
            .map(|c| format!("\"{c}\":null"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(after[2], expected_3);

    // A 20 MB LONGBLOB row arrives whole.
    block_on(db.exec("INSERT INTO t.big VALUES (1, REPEAT(X'00FF7F80', 5 * 1024 * 1024))"));
    let big = kafka.read("big", 1, Duration::from_secs(60));
    assert_eq!(big.len(), 1, "{}", d.log());
    let v = big[0].json();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["after"]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload.len(), 20 * 1024 * 1024);
    assert!(payload.chunks(4).all(|c| c == [0x00, 0xff, 0x7f, 0x80]));
    assert_eq!(d.terminate(), 0);
}
