//! cdc-enricher: binlog → pipelines → sinks.
//!
//! Data flow: [`source`] (binlog) → [`pipeline`] (route, project, filter) → [`sink`]
//! (Kafka, JSONL), with [`checkpoint`] and [`config`] beside them; [`app`] wires them.

#![warn(clippy::too_many_lines)]

pub mod app;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod precheck;
pub mod ratelimit;
pub mod sink;
pub mod snapshot;
pub mod source;
