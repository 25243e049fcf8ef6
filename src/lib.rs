//! cdc-enricher: binlog → pipelines → enrichment → sinks.
//!
//! Data flow, one folder per concern, imports running one way (no circles):
//! `source` (the binlog: `SourceEvent`s) → `pipeline` (route, project, filter; the stage
//! loop) → `enrich` (batching, calls, retries, in order) → `backend` (Comprehend, SageMaker,
//! Bedrock, each owning its config) → `sink` (Kafka, JSONL, MySQL write-back), with
//! `checkpoint`, `config`, `metrics`, `precheck`, `snapshot` (backfills) and `ratelimit`
//! beside them; `model` is the leaf they share (positions, values, the change record);
//! `app` wires them and `cli` parses the commands.
//!
//! Every module is private to the crate. The public surface is what the binary, the
//! benchmarks and the tests that decode fixture binlogs use, re-exported here: [`main`] (the
//! command line), the configuration types ([`Config`] and the parts the benchmarks build by
//! hand), [`decode_file`] and [`MysqlSource`] (the binlog decoder from a file and from a
//! server), the events they yield ([`SourceEvent`], [`BinlogPosition`], [`ColumnValue`]) and
//! [`create_topics`].

#![warn(clippy::too_many_lines)]
#![warn(missing_docs)]

mod app;
mod backend;
mod checkpoint;
mod cli;
mod config;
mod enrich;
mod metrics;
mod model;
mod pipeline;
mod precheck;
mod ratelimit;
mod sink;
mod snapshot;
mod source;

pub use cli::main;
pub use config::{
    Config, KafkaConfig, PipelineConfig, SinkConfig, SourceConfig, StartFrom, TlsConfig,
};
pub use model::{BinlogPosition, ColumnValue};
pub use sink::kafka::create_topics;
pub use source::mysql::file::{decode_file, FileError};
pub use source::mysql::stream::{MysqlSource, Start};
pub use source::SourceEvent;
