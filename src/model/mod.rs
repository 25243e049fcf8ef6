//! The change-event model shared by every stage: operations, positions and column values. A leaf: it
//! imports nothing of the daemon.

pub mod json;
pub mod op;
pub mod position;
pub mod value;

pub use op::Op;
pub use position::BinlogPosition;
pub use value::{ColumnValue, JsonText};
