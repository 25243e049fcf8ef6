//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cdc-enricher",
    version,
    about = "Tails the MySQL/MariaDB row binlog, routes rows through YAML pipelines and delivers JSON change records"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    All,
    Source,
    Worker,
}

impl From<RoleArg> for crate::app::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::All => crate::app::Role::All,
            RoleArg::Source => crate::app::Role::Source,
            RoleArg::Worker => crate::app::Role::Worker,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (runs `check` first).
    Run {
        #[arg(long, short, default_value = "cdc-enricher.yaml")]
        config: PathBuf,
        /// `all`: everything in this process; `source`: read the binlog and publish each read
        /// table's changes to its change topic; `worker`: run the pipelines on the change
        /// topics, in the config's consumer group.
        #[arg(long, value_enum, default_value_t = RoleArg::All)]
        role: RoleArg,
    },
    /// Verify the server settings, grants, tables, columns and checkpoint; exit 2 on a problem.
    Check {
        #[arg(long, short, default_value = "cdc-enricher.yaml")]
        config: PathBuf,
    },
    /// Ask the running daemon to backfill a pipeline's table (through the signal table).
    Backfill {
        #[arg(long, short, default_value = "cdc-enricher.yaml")]
        config: PathBuf,
        /// The pipeline whose table is read again.
        pipeline: String,
        /// Only rows matching this filter (the pipelines' filter language).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Read the rows and print what they would take (rows, calls, tokens, cost); send
        /// nothing and request nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask the running daemon to enrich a pipeline's rows again after its model, prompt or
    /// parameters changed: the rows whose stored lineage differs (a write-back storing
    /// `/lineage` in the source row), else every row.
    Reenrich {
        #[arg(long, short, default_value = "cdc-enricher.yaml")]
        config: PathBuf,
        /// The pipeline to enrich again.
        pipeline: String,
        /// Only rows matching this filter (the pipelines' filter language).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Read the rows and print what they would take (rows, calls, tokens, cost); send
        /// nothing and request nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Decode binlog files and print their rows as JSON lines.
    DecodeFile { files: Vec<PathBuf> },
    /// Print a Kafka topic's records as JSON lines (key, value, partition, offset).
    Tail {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        topic: String,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<usize>,
        /// Stop when no record came for this long.
        #[arg(long, default_value_t = 5000)]
        idle_ms: u64,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// The `cdc-enricher` command line (`run`, `check`, `backfill`, `reenrich`, `decode-file`,
/// `tail`): parses
/// the arguments, starts the logs and the async runtime, runs the command. Exit code 0 when
/// it ends well, 2 for a configuration problem found before anything ran (config, preflight,
/// the metrics address), 1 for the rest (the error is printed as `error: …` on stderr).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.cmd {
        Cmd::Run { config, role } => finish(rt.block_on(crate::app::run(&config, role.into()))),
        Cmd::Check { config } => finish(rt.block_on(crate::app::check(&config))),
        Cmd::Backfill {
            config,
            pipeline,
            filter,
            dry_run,
        } => finish(rt.block_on(crate::app::backfill(
            &config,
            &pipeline,
            filter.as_deref(),
            dry_run,
        ))),
        Cmd::Reenrich {
            config,
            pipeline,
            filter,
            dry_run,
        } => finish(rt.block_on(crate::app::reenrich(
            &config,
            &pipeline,
            filter.as_deref(),
            dry_run,
        ))),
        Cmd::DecodeFile { files } => decode_files(&files),
        Cmd::Tail {
            brokers,
            topic,
            count,
            idle_ms,
        } => tail(&brokers, &topic, count, Duration::from_millis(idle_ms)),
    }
}

fn finish(r: Result<(), crate::app::AppError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn decode_files(files: &[PathBuf]) -> ExitCode {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut code = ExitCode::SUCCESS;
    for f in files {
        let path = f.display().to_string();
        let mut failed = false;
        let r = crate::source::mysql::file::decode_file(&path, |ev| {
            if let crate::source::SourceEvent::TableFailed {
                error, position, ..
            } = &ev
            {
                eprintln!("error: {error} (at {position}); the table's later rows are left out");
                failed = true;
            }
            if let crate::source::SourceEvent::Row(r) = ev {
                let shown: Vec<usize> = r.table.visible().collect();
                let names: Arc<[String]> = shown
                    .iter()
                    .map(|i| r.table.columns[*i].name.clone())
                    .collect();
                let img = |v: Option<Vec<crate::model::ColumnValue>>| {
                    v.map(|values| crate::pipeline::Image {
                        names: names.clone(),
                        values: shown.iter().map(|i| values[*i].clone()).collect(),
                    })
                };
                let line = serde_json::json!({
                    "op": r.op.code(),
                    "db": r.table.db,
                    "table": r.table.table,
                    "gtid": r.position.gtid.as_deref(),
                    "file": &*r.position.file,
                    "pos": r.position.pos,
                    "event": r.position.event,
                    "row": r.position.row,
                    "before": img(r.before),
                    "after": img(r.after),
                });
                let _ = writeln!(out, "{line}");
            }
        });
        if let Err(e) = r {
            let _ = out.flush();
            eprintln!("error: {e}");
            code = ExitCode::from(1);
        }
        if failed {
            code = ExitCode::from(1);
        }
    }
    let _ = out.flush();
    code
}

fn tail(brokers: &str, topic: &str, count: Option<usize>, idle: Duration) -> ExitCode {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("cdc-enricher-tail-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot create a Kafka consumer for {brokers}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = consumer.subscribe(&[topic]) {
        eprintln!("error: cannot subscribe to {topic}: {e}");
        return ExitCode::from(1);
    }
    let mut n = 0;
    let mut last = std::time::Instant::now();
    while count.is_none_or(|c| n < c) && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                n += 1;
                let as_json = |b: Option<&[u8]>| -> serde_json::Value {
                    match b {
                        None => serde_json::Value::Null,
                        Some(b) => serde_json::from_slice(b).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                        }),
                    }
                };
                println!(
                    "{}",
                    serde_json::json!({"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp().to_millis(), "key": as_json(m.key()), "value": as_json(m.payload())})
                );
            }
        }
    }
    ExitCode::SUCCESS
}
