//! The change-event model shared by every stage: positions and column values. A leaf: it
//! imports nothing of the daemon.

pub mod json;
pub mod position;
pub mod value;

pub use position::BinlogPosition;
pub use value::{ColumnValue, JsonText};
