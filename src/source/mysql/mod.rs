//! MySQL / MariaDB binlog reading: the live replication stream and binlog files.
//!
//! The event path: [`stream`] (replication connection) or [`file`] (binlog files) →
//! [`decoder`] (events by type: transactions, positions, table maps) → [`table_map`] +
//! [`plan`] (per-table decode plans) → [`rows`] (row images) → [`values`] (one value per
//! column, with [`charset`], [`temporal`] and [`mysql_json`]).

pub mod charset;
mod charset_collations;
mod charset_mb_overrides;
mod charset_tables;
pub mod cursor;
pub mod ddl;
pub mod decimal;
pub mod decoder;
pub mod event_type;
pub mod file;
pub mod held;
pub mod mysql_json;
pub mod plan;
pub mod query;
pub mod rows;
pub mod schema;
pub mod schema_history;
pub mod sql;
pub mod stream;
pub mod table_map;
pub mod temporal;
pub mod values;
pub mod xa;
