//! MySQL / MariaDB binlog reading: the live replication stream and binlog files.

pub mod charset;
pub mod decode;
pub mod decoder;
pub mod file;
pub mod jsonpatch;
pub mod schema;
pub mod snapshot;
pub mod stream;
pub mod temporal;
