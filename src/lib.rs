//! cdc-enricher: binlog → pipelines → enrichment → sinks.
//!
//! Data flow, one folder per concern, imports running one way (no circles):
//! [`source`] (the binlog: `SourceEvent`s) → `pipeline` (route, project, filter; the stage
//! loop) → `enrich` (batching, calls, retries, in order) → `backend` (Comprehend, SageMaker,
//! Bedrock, each owning its config) → [`sink`] (Kafka, JSONL, MySQL write-back), with
//! `checkpoint`, [`config`], `metrics`, `precheck`, `snapshot` (backfills) and `ratelimit`
//! beside them; [`model`] is the leaf they share (positions, values, the change record);
//! [`app`] wires them and [`cli`] parses the commands. Only what the binary and the
//! benchmarks use is public.

#![warn(clippy::too_many_lines)]

pub mod app;
pub(crate) mod backend;
pub(crate) mod checkpoint;
pub mod cli;
pub mod config;
pub(crate) mod enrich;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod pipeline;
pub(crate) mod precheck;
pub(crate) mod ratelimit;
pub mod sink;
pub(crate) mod snapshot;
pub mod source;
