//! Bad configuration and failed preflight checks: exit code 2 and the exact messages.

mod common;

use common::*;

fn write(d: &Daemon, file: &str, body: &str) {
    std::fs::write(d.dir.path().join(file), body).unwrap();
}

const GOOD: &str = "name: a\ntable: shop.items\nsink:\n  jsonl:\n    path: out.jsonl\n";

fn server() -> MariaDb {
    let db = MariaDb::start();
    block_on(db.exec("CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, title VARCHAR(50), qty INT);"));
    db
}

#[test]
fn config_errors_name_file_line_and_column() {
    let db = server();
    let d = Daemon::new(&db, None, &[("a", GOOD)]);
    assert_eq!(d.check().0, 0, "{:?}", d.check());

    let cfg = std::fs::read_to_string(d.config()).unwrap();
    write(
        &d,
        "cdc-enricher.yaml",
        &cfg.replace("  user: cdc\n", "  user: cdc\n  hots: x\n"),
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: cdc-enricher.yaml:5:3: source: unknown field `hots`, expected one of `host`, `port`, `user`, `password`, \
         `password_file`, `server_id`, `heartbeat_ms`, `start`, `on_purged`, `tls`, `transaction_buffer_mb`, `spill_dir`\n"
    );

    write(
        &d,
        "cdc-enricher.yaml",
        &cfg.replace("${CDC_PASSWORD}", "${CDC_NO_SUCH_VAR}"),
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: cdc-enricher.yaml:5:13: environment variable CDC_NO_SUCH_VAR is not set (write `${CDC_NO_SUCH_VAR:-default}` for a default)\n"
    );

    write(
        &d,
        "cdc-enricher.yaml",
        &cfg.replace("server_id: 4242", "server_id: 0"),
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(err, "error: cdc-enricher.yaml: source.server_id must not be 0: pick a number no other replica of the server uses\n");

    write(&d, "cdc-enricher.yaml", &cfg);
    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: shop.items\ncolums: [id]\nsink:\n  jsonl:\n    path: out.jsonl\n",
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipelines/a.yaml:3:1: unknown field `colums`, expected one of `name`, `table`, `columns`, `key`, \
         `operations`, `filter`, `on_filter_exit`, `enrichment`, `key_changes`, `snapshot`, `sink`\n"
    );

    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: items\nsink:\n  jsonl:\n    path: out.jsonl\n",
    );
    let (_, _, err) = d.check();
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): table `items` must be written `database.table`\n"
    );

    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: shop.items\nfilter: \"qty >\"\nsink:\n  jsonl:\n    path: out.jsonl\n",
    );
    let (_, _, err) = d.check();
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): filter `qty >`: expected a value at the end\n"
    );

    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: shop.items\nsink:\n  kafka:\n    topic: x\n",
    );
    let (_, _, err) = d.check();
    assert_eq!(err, "error: pipeline `a` (pipelines/a.yaml): the sink is Kafka but the daemon config has no `kafka` section\n");

    write(&d, "pipelines/a.yaml", GOOD);
    write(&d, "pipelines/b.yaml", GOOD);
    let (_, _, err) = d.check();
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/b.yaml): the name is also used by pipelines/a.yaml\n"
    );
}

#[test]
fn preflight_failures_say_what_and_how_to_fix() {
    let db = server();
    let d = Daemon::new(
        &db,
        None,
        &[
            ("a", "name: a\ntable: shop.items\ncolumns: [id, nope]\nfilter: \"zzz = 1\"\nsink:\n  jsonl:\n    path: out.jsonl\n"),
            ("b", "name: b\ntable: shop.nosuch\nsink:\n  jsonl:\n    path: out.jsonl\n"),
        ],
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): columns names column `nope`, which `shop`.`items` does not have\n    \
         fix: use one of: id, title, qty\n\
         error: pipeline `a` (pipelines/a.yaml): filter names column `zzz`, which `shop`.`items` does not have\n    \
         fix: use one of: id, title, qty\n\
         error: pipeline `b` (pipelines/b.yaml): table `shop`.`nosuch` does not exist (or 'cdc'@'127.0.0.1' cannot see it)\n    \
         fix: create the table, fix `table:` in pipelines/b.yaml, or GRANT SELECT ON `shop`.`nosuch` TO 'cdc'@'127.0.0.1';\n\
         error: preflight check failed (3 problems, listed above)\n"
    );
}

#[test]
fn server_settings_grants_and_purged_checkpoint() {
    let db = server();
    block_on(db.exec(
        "SET GLOBAL binlog_format = 'STATEMENT'; SET GLOBAL binlog_row_image = 'MINIMAL';
         CREATE TABLE shop.nokey (a INT, b INT);
         CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'cdc-secret'; GRANT SELECT ON shop.* TO 'weak'@'127.0.0.1';",
    ));
    let d = Daemon::new(
        &db,
        None,
        &[(
            "a",
            "name: a\ntable: shop.nokey\nsink:\n  jsonl:\n    path: out.jsonl\n",
        )],
    );
    let cfg = std::fs::read_to_string(d.config()).unwrap();
    write(
        &d,
        "cdc-enricher.yaml",
        &cfg.replace("user: cdc", "user: weak"),
    );
    std::fs::create_dir_all(d.dir.path().join("state")).unwrap();
    write(
        &d,
        "state/checkpoint.json",
        r#"{"version": 1, "position": {"file": "binlog.000042", "pos": 4}}"#,
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: binlog_format is STATEMENT, not ROW\n    fix: SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in [mariadbd]\n\
         error: binlog_row_image is MINIMAL, not FULL: before images would lack columns\n    \
         fix: SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in [mariadbd]\n\
         error: 'weak'@'127.0.0.1' lacks the REPLICATION SLAVE privilege (needed to stream the binlog)\n    \
         fix: GRANT REPLICATION SLAVE ON *.* TO 'weak'@'127.0.0.1';\n\
         error: 'weak'@'127.0.0.1' lacks BINLOG MONITOR (needed for SHOW BINARY LOGS / SHOW MASTER STATUS)\n    \
         fix: GRANT BINLOG MONITOR ON *.* TO 'weak'@'127.0.0.1';\n\
         error: preflight check failed (4 problems, listed above)\n"
    );

    // With the grants in place, only the purged checkpoint is left.
    block_on(db.exec(
        "SET GLOBAL binlog_format = 'ROW'; SET GLOBAL binlog_row_image = 'FULL';
         GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'weak'@'127.0.0.1';",
    ));
    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: shop.nokey\nkey: [a]\nsink:\n  jsonl:\n    path: out.jsonl\n",
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: the saved checkpoint cannot be resumed: the binlog position binlog.000042:4 is no longer on the server \
         (binlog.000042 is not among the server's binary logs (oldest: binlog.000001)); restart from a newer position \
         (delete the checkpoint to start at the current end) or re-snapshot the tables\n    \
         fix: restore the purged binlog files; or set `source.on_purged: resnapshot` to start at the current end and backfill every pipeline; \
         or move the checkpoint away to start at the current end (rows changed in between are then not emitted)\n\
         error: preflight check failed (1 problem, listed above)\n"
    );
}

#[test]
fn enrichment_config_errors_name_the_setting() {
    let db = server();
    let d = Daemon::new(&db, None, &[("a", GOOD)]);
    let with = |enrichment: &str| {
        format!("name: a\ntable: shop.items\ncolumns: [id, title]\nenrichment:\n{enrichment}sink:\n  jsonl:\n    path: out.jsonl\n")
    };
    let bedrock =
        "  bedrock:\n    model: anthropic.claude-3-haiku-20240307-v1:0\n    max_tokens: 10\n";
    let cases = [
        (
            with("  comprehend: {operation: sentiment, text: title}\n  sagemaker: {endpoint: e, input: [id], returns: double}\n"),
            "enrichment needs exactly one backend: `comprehend`, `sagemaker`, `bedrock` or `embedding`",
        ),
        (
            with(&format!("{bedrock}    prompt: \"Summarize {{title\"\n")),
            "enrichment.bedrock.prompt: the brace at byte 10 is not closed; a literal brace is written `{{`",
        ),
        (
            with(&format!("{bedrock}    prompt: \"{{title}}\"\n    fields: [a]\n")),
            "enrichment.bedrock.fields needs `output: json`",
        ),
        (
            with("  bedrock:\n    model: meta.llama3\n    api: invoke\n    prompt: \"{title}\"\n    max_tokens: 5\n"),
            "enrichment.bedrock.model `meta.llama3`: no InvokeModel body is known for its family (anthropic.*, amazon.titan-text*); use `api: converse`",
        ),
        (
            with("  sagemaker: {endpoint: e, input: [id], returns: float}\n"),
            "enrichment.sagemaker.returns: `float` is not a type; use double, bigint, varchar(n) or json",
        ),
        (
            with("  sagemaker: {endpoint: e, input: [id], returns: double}\n  max_batch_bytes: 7000000\n"),
            "enrichment.max_batch_bytes 7000000 must be between 1 and 6000000 (SageMaker's body limit)",
        ),
        (
            with("  comprehend: {operation: sentiment, text: title}\n  budget: {window_seconds: 60}\n"),
            "enrichment.budget names neither `requests` nor `tokens`; leave it out for no budget",
        ),
        (
            with("  comprehend: {operation: sentiment, text: qty}\n"),
            "enrichment.comprehend.text `qty` must be one of the picked columns (id, title)",
        ),
        (
            with("  comprehend: {operation: sentiment, text: title}\n  max_batch_size: 30\n"),
            "enrichment.max_batch_size 30 must be between 1 and 25 for comprehend",
        ),
        (
            with("  comprehend: {operation: sentiment, text: title}\n  tokens_per_minute: 1000\n"),
            "enrichment.tokens_per_minute is for bedrock and embedding (only models count tokens)",
        ),
        (
            with(&format!("{bedrock}    prompt: \"Digest: {{title}}\"\n  window: {{rows: 5, row: \"{{title}}\"}}\n")),
            "enrichment.bedrock.prompt must name `{rows}`: the window's rows go there",
        ),
        (
            with(&format!("{bedrock}    prompt: \"{{rows}} {{title}}\"\n  window: {{rows: 5, row: \"{{title}}\"}}\n")),
            "enrichment.bedrock.prompt names `{title}`; a windowed prompt takes `{rows}`, `{count}` and the group column (row columns go in enrichment.window.row)",
        ),
        (
            with(&format!("{bedrock}    prompt: \"{{rows}}\"\n  window: {{every: 5 mnutes, row: \"{{title}}\"}}\n")),
            "enrichment.window.every `5 mnutes`: unknown time unit \"mnutes\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write `30s`, `5m`, `1h`)",
        ),
        (
            with(&format!("{bedrock}    prompt: \"{{rows}}\"\n  window: {{rows: 5, row: \"{{qty}}\"}}\n")),
            "enrichment.window.row `qty` must be one of the picked columns (id, title)",
        ),
        (
            with("  comprehend: {operation: sentiment, text: title}\n  window: {rows: 5, row: \"{title}\"}\n"),
            "enrichment.window is for bedrock and embedding (a prompt over rows), not comprehend",
        ),
        (
            "name: a\ntable: shop.items\ncolumns: [id, title]\nkey_changes: update\n\
             enrichment:\n  comprehend: {operation: sentiment, text: title}\n\
             sink:\n  mysql:\n    mode: upsert\n    user: w\n    password: p\n    table: shop.side\n    columns: {s: /sentiment}\n"
                .to_string(),
            "sink.mysql: `mode: upsert` with `key_changes: update` would keep the old key's side row (one `u` carries only the new key): use `key_changes: split` (the default), whose delete of the old key removes it",
        ),
        (
            "name: a\ntable: shop.items\non_filter_exit: ignore\nsink:\n  jsonl:\n    path: out.jsonl\n"
                .to_string(),
            "`on_filter_exit` says what a row leaving the `filter` emits: give a `filter`, or leave it out",
        ),
    ];
    for (body, message) in cases {
        write(&d, "pipelines/a.yaml", &body);
        let (code, _, err) = d.check();
        assert_eq!(code, 2, "{body}");
        assert_eq!(
            err,
            format!("error: pipeline `a` (pipelines/a.yaml): {message}\n"),
            "{body}"
        );
    }

    // An unknown key names its line and column.
    write(
        &d,
        "pipelines/a.yaml",
        &with("  comprehend: {operation: sentiment, text: title}\n  endpont_url: x\n"),
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: pipelines/a.yaml:6:3: enrichment: unknown field `endpont_url`, expected one of `comprehend`, `sagemaker`, `bedrock`, `embedding`, `region`, `endpoint_url`"),
        "{err}"
    );

    // Two upsert pipelines writing one side table.
    let upsert = |name: &str| {
        format!(
            "name: {name}\ntable: shop.items\ncolumns: [id, title]\n\
             enrichment:\n  comprehend: {{operation: sentiment, text: title}}\n\
             sink:\n  mysql:\n    mode: upsert\n    user: w\n    password: p\n    table: shop.side\n    columns: {{s: /sentiment}}\n"
        )
    };
    write(&d, "pipelines/a.yaml", &upsert("a"));
    write(&d, "pipelines/b.yaml", &upsert("b"));
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipeline `b` (pipelines/b.yaml): sink.mysql: the side table `shop.side` is also written by pipeline `a` (pipelines/a.yaml); each upsert pipeline needs a side table of its own\n"
    );
    std::fs::remove_file(d.dir.path().join("pipelines/b.yaml")).unwrap();

    // A prompt's column the table lacks: the preflight names it.
    write(
        &d,
        "pipelines/a.yaml",
        "name: a\ntable: shop.items\nenrichment:\n  bedrock:\n    model: anthropic.claude-3-haiku-20240307-v1:0\n    max_tokens: 10\n    prompt: \"About {title}: {summary}\"\nsink:\n  jsonl:\n    path: out.jsonl\n",
    );
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): enrichment.bedrock.prompt names column `summary`, which `shop`.`items` does not have\n    \
         fix: use one of: id, title, qty\n\
         error: preflight check failed (1 problem, listed above)\n"
    );
}

#[test]
fn write_backs_that_feed_each_other_are_refused_naming_the_loop() {
    // One pipeline writes a column another reads, which writes back what the first reads:
    // each answer would call the models again for ever.
    let db = server();
    let sink = |column: &str| {
        format!("sink:\n  mysql:\n    mode: update\n    user: w\n    password: p\n    columns: {{{column}: /result}}\n")
    };
    let a = format!(
        "name: a\ntable: shop.items\nenrichment:\n  bedrock: {{model: \"anthropic.claude-3-haiku-20240307-v1:0\", prompt: \"Tag {{title}}\", max_tokens: 50}}\n{}",
        sink("Note")
    );
    let b = format!(
        "name: b\ntable: shop.items\nenrichment:\n  bedrock: {{model: \"anthropic.claude-3-haiku-20240307-v1:0\", prompt: \"Reply to {{note}}\", max_tokens: 50}}\n{}",
        sink("title")
    );
    let d = Daemon::new(&db, None, &[("a", &a), ("b", &b)]);
    let (code, _, err) = d.check();
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): sink.mysql: the write-backs form a loop (`a` writes \
         shop.items.note, an input of `b`; `b` writes shop.items.title, an input of `a`): each answer \
         would call the models again for ever. Write to columns no pipeline in the loop reads\n"
    );
    // A chain is not a loop: `b` writing a column nobody reads passes the config checks (the
    // server's then say `shop.items` has neither column).
    write(
        &d,
        "pipelines/b.yaml",
        &b.replace("{title: /result}", "{reply: /result}"),
    );
    let (_, _, err) = d.check();
    assert!(
        !err.contains("loop") && err.contains("which `shop`.`items` does not have"),
        "{err}"
    );
}

#[test]
fn a_binary_column_given_to_an_enrichment_is_refused_naming_it() {
    // Bytes travel in records as base64: sent to a service as text, the answer would be about
    // the base64 text (a silent wrong result). A text column of the same table passes.
    let db = server();
    block_on(db.exec(
        "CREATE TABLE shop.docs (id INT PRIMARY KEY, raw VARBINARY(200), body TEXT, shape POINT);",
    ));
    let enrich = |name: &str, text: &str| {
        format!("name: {name}\ntable: shop.docs\nenrichment:\n  comprehend:\n    operation: sentiment\n    text: {text}\n  endpoint_url: http://127.0.0.1:9\nsink:\n  jsonl:\n    path: out.jsonl\n")
    };
    let (a, b, c) = (
        enrich("a", "raw"),
        enrich("b", "body"),
        enrich("c", "shape"),
    );
    let d = Daemon::new(&db, None, &[("a", &a), ("b", &b), ("c", &c)]);
    let (code, _, err) = d.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "error: pipeline `a` (pipelines/a.yaml): enrichment.comprehend.text names column `raw` of `shop`.`docs`, a VARBINARY column: its values are bytes, which records carry as base64, and the service would read the base64 text\n    \
         fix: give the enrichment a text column (a generated column `CONVERT(raw USING utf8mb4)` will do)\n\
         error: pipeline `c` (pipelines/c.yaml): enrichment.comprehend.text names column `shape` of `shop`.`docs`, a POINT column: its values are bytes, which records carry as base64, and the service would read the base64 text\n    \
         fix: give the enrichment a text column (a generated column `CONVERT(shape USING utf8mb4)` will do)\n\
         error: preflight check failed (2 problems, listed above)\n"
    );
}
