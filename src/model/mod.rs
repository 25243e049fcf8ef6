//! The change-event model shared by every stage: operations, positions, column values and the change record. A leaf: it
//! imports nothing of the daemon.

pub mod clock;
pub mod filter;
pub mod hash;
pub mod json;
pub mod op;
pub mod position;
pub mod record;
pub mod value;

pub use op::Op;
pub use position::BinlogPosition;
pub use value::{ColumnValue, JsonText};
